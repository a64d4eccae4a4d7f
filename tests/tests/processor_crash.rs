//! Crash test of the whole pipeline: while PostgreSQL (primary) is writing, the shipper is
//! `kill -9`'d twice and the processor five times at random moments — once from inside a
//! Delta commit (failpoint: right after the commit landed, before anything else learned of
//! it). At the end the table holds exactly the expected rows: no duplicate, none missing,
//! compared with an independent count and with an undisturbed reference run over the same
//! topic.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pgtrail_tests::broker::Broker;
use pgtrail_tests::lake::{expected_rows, processor_args, read_rows, table_uri};
use pgtrail_tests::pglogs::PgCluster;
use pgtrail_tests::process::{Processor, Shipper, run_shipper_once, shipper_args};
use pgtrail_tests::tempdir;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
#[ignore = "not passing yet: after kill -9 Tansu 0.6 keeps the dead member and assigns nothing for > 60 s (see issue 3 note)"]
fn kill_9_processor_five_times_and_shipper_twice_exact_rows() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let broker = Broker::start();
    let mut cluster = PgCluster::start();
    let work = tempdir("pcrash");
    let state = work.path().join("state");
    let mut ship = shipper_args(
        "primary",
        &[format!("{}/*.csv", cluster.server_dir("primary").display())],
        &broker.bootstrap(),
        &state,
        &cluster.log_line_prefix(),
    );
    let shipper_cfg = work.path().join("shipper.toml");
    std::fs::write(
        &shipper_cfg,
        "checkpoint_interval_ms = 300\npoll_interval_ms = 50\nscan_interval_ms = 300\n",
    )
    .unwrap();
    ship.extend([
        "--config".into(),
        shipper_cfg.to_string_lossy().into_owned(),
    ]);
    let lake = work.path().join("lake");
    let proc_cfg = work.path().join("processor.toml");
    std::fs::write(&proc_cfg, "flush_interval_ms = 300\nflush_rows = 2000\n").unwrap();
    let mut args = processor_args(
        &broker.bootstrap(),
        &lake,
        "crash",
        &["pgaudit.raw.primary"],
    );
    args.extend(["--config".into(), proc_cfg.to_string_lossy().into_owned()]);
    broker.create_topic("pgaudit.raw.primary", 6);

    cluster.stream(24);
    let mut shipper = Shipper::spawn(&ship, &work.path().join("shipper-0.log"));
    let failpoint_round = rng.below(5) as usize;
    for round in 0..5 {
        let log = work.path().join(format!("processor-{round}.log"));
        let env: Vec<(&str, &str)> = if round == failpoint_round {
            vec![("PGTRAIL_FAILPOINT", "abort_after_commit:2")]
        } else {
            vec![]
        };
        let mut p = Processor::processor(&args, &env, &log);
        // The failpoint round runs until its second commit aborts it.
        let life = if round == failpoint_round {
            Duration::from_secs(60)
        } else {
            Duration::from_millis(2500 + rng.below(3500))
        };
        let start = std::time::Instant::now();
        while start.elapsed() < life && p.running() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let aborted = !p.running();
        p.kill9();
        println!(
            "processor round {round}: killed after {life:?} (aborted by failpoint: {aborted})"
        );
        if round == failpoint_round {
            let text = std::fs::read_to_string(&log).unwrap();
            assert!(
                text.contains("Failpoint abort_after_commit"),
                "the failpoint fired:\n{text}"
            );
        }
        if round == 1 || round == 3 {
            shipper.kill9();
            println!("shipper killed");
            shipper = Shipper::spawn(&ship, &work.path().join(format!("shipper-{round}.log")));
        }
    }
    cluster.wait_stream();
    cluster.stop();
    shipper.kill9();
    let mut once = ship.clone();
    once.push("--once".into());
    run_shipper_once(
        &once,
        &work.path().join("shipper-final.log"),
        Duration::from_secs(300),
    );

    let finish = |args: &[String], name: &str| {
        let mut a = args.to_vec();
        a.extend(["--exit-when-idle".into(), "8s".into()]);
        let log = work.path().join(format!("{name}.log"));
        let status = Processor::processor(&a, &[], &log).wait(Duration::from_secs(600));
        assert!(
            status.success(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
    };
    finish(&args, "processor-final");
    let reference_lake = work.path().join("reference");
    let reference_args = processor_args(
        &broker.bootstrap(),
        &reference_lake,
        "reference",
        &["pgaudit.raw.primary"],
    );
    finish(&reference_args, "processor-reference");

    let rows = read_rows(&table_uri(&lake, "primary"));
    let reference = read_rows(&table_uri(&reference_lake, "primary"));
    let expected = expected_rows(&cluster.server_dir("primary"));
    let ids: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    let unaudited = rows.iter().filter(|r| r.unaudited).count();
    println!(
        "rows {} (unaudited {unaudited}), distinct {}, reference {}, expected {expected:?}",
        rows.len(),
        ids.len(),
        reference.len()
    );
    if rows.len() != reference.len() {
        let mut missing: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for r in &reference {
            if !ids.contains(r.event_id.as_str()) {
                missing.entry(r.kafka.0).or_default().push(r.kafka.1);
            }
        }
        for (p, mut offsets) in missing {
            offsets.sort();
            println!(
                "missing in partition {p}: {} rows, offsets {:?}..{:?}",
                offsets.len(),
                offsets.first(),
                offsets.last()
            );
        }
        println!("logs kept in {}", work.keep().display());
        return_failure();
    }
    assert_eq!(ids.len(), rows.len(), "no duplicate");
    assert_eq!(
        (rows.len() - unaudited, unaudited),
        (expected.audit, expected.unaudited_failures),
        "none missing (independent count)"
    );
    let by_id = |v: &[pgtrail_tests::lake::Row]| -> BTreeMap<String, (String, Option<String>)> {
        v.iter()
            .map(|r| (r.event_id.clone(), (r.result.clone(), r.error_code.clone())))
            .collect()
    };
    assert_eq!(
        by_id(&rows),
        by_id(&reference),
        "same rows and outcomes as an undisturbed run"
    );
}

fn return_failure() {
    panic!("rows differ from the reference run (see above)");
}
