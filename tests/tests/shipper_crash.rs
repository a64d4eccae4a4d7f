//! Crash test: ship while PostgreSQL (primary + replica) is writing, `kill -9` each shipper
//! twice mid-stream, restart it, and check that no record is missing. Duplicates are allowed
//! (at-least-once) and reported.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use pgtrail_tests::broker::Broker;
use pgtrail_tests::consume::consume_all;
use pgtrail_tests::pglogs::{PgCluster, expected_records};
use pgtrail_tests::process::{Shipper, run_shipper_once, shipper_args};
use pgtrail_tests::tempdir;

#[test]
fn kill_9_twice_while_postgres_writes_loses_nothing() {
    let broker = Broker::start();
    let mut cluster = PgCluster::start();
    let prefix = cluster.log_line_prefix();
    let servers = ["primary", "replica"];
    let states: Vec<_> = servers.iter().map(|_| tempdir("state")).collect();
    let args: Vec<Vec<String>> = servers
        .iter()
        .zip(&states)
        .map(|(server, state)| {
            let mut a = shipper_args(
                &format!("crash-{server}"),
                &[format!("{}/*", cluster.server_dir(server).display())],
                &broker.bootstrap(),
                state.path(),
                &prefix,
            );
            // Checkpoint often so that kills land between checkpoints and between acks.
            let cfg = state.path().join("shipper.toml");
            std::fs::write(
                &cfg,
                "checkpoint_interval_ms = 300\npoll_interval_ms = 50\nscan_interval_ms = 300\n",
            )
            .unwrap();
            a.extend(["--config".into(), cfg.to_string_lossy().into_owned()]);
            a
        })
        .collect();
    let spawn_all = |round: usize| -> Vec<Shipper> {
        args.iter()
            .zip(&states)
            .map(|(a, s)| Shipper::spawn(a, &s.path().join(format!("shipper-{round}.log"))))
            .collect()
    };

    cluster.stream(14);
    for (round, wait) in [(0, 3), (1, 4)] {
        let running = spawn_all(round);
        std::thread::sleep(Duration::from_secs(wait));
        for s in running {
            s.kill9();
        }
    }
    let running = spawn_all(2);
    cluster.stop();
    std::thread::sleep(Duration::from_secs(2));
    for s in running {
        s.kill9();
    }
    // Final catch-up after the last crash, from the checkpoints.
    for (i, (a, s)) in args.iter().zip(&states).enumerate() {
        let log = s.path().join("shipper-final.log");
        let text = run_shipper_once(a, &log, Duration::from_secs(300));
        assert!(
            text.contains("Shipped everything present"),
            "{}: {text}",
            servers[i]
        );
    }

    for server in servers {
        let expected = expected_records(&cluster.server_dir(server));
        let want: BTreeSet<(String, u64, Vec<u8>)> = expected
            .iter()
            .map(|r| (r.path.clone(), r.offset, r.data.clone()))
            .collect();
        let shipped = consume_all(
            &broker.bootstrap(),
            &format!("pgaudit.raw.crash-{server}"),
            want.len(),
            Duration::from_secs(20),
        );
        let mut copies: HashMap<(String, u64, Vec<u8>), usize> = HashMap::new();
        for s in &shipped {
            *copies
                .entry((
                    s.record.source.source_path.to_string(),
                    s.record.offset as u64,
                    s.record.data.clone(),
                ))
                .or_default() += 1;
        }
        let got: BTreeSet<_> = copies.keys().cloned().collect();
        let missing = want.difference(&got).count();
        let unexpected = got.difference(&want).count();
        let duplicates: usize = copies.values().map(|c| c - 1).sum();
        println!(
            "{server}: {} records in the files, {} messages, {duplicates} duplicates, {missing} missing",
            want.len(),
            shipped.len()
        );
        assert_eq!(missing, 0, "{server}: records lost after kill -9");
        assert_eq!(
            unexpected, 0,
            "{server}: shipped records that are not in the files"
        );
        assert!(
            want.len() > 1000,
            "{server}: the workload wrote {} records",
            want.len()
        );
    }
}
