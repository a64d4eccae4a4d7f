//! End to end against Tansu with real PostgreSQL logs: `--once` ships exactly the records in
//! the files of a primary and a streaming replica; SIGTERM drains and checkpoints.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use pgtrail_avro::LogFormat;
use pgtrail_tests::broker::{Broker, free_port};
use pgtrail_tests::consume::consume_all;
use pgtrail_tests::pglogs::{PgLogs, expected_records};
use pgtrail_tests::process::{Shipper, run_shipper_once, shipper_args};
use pgtrail_tests::tempdir;

#[test]
fn once_ships_exactly_the_records_of_primary_and_replica() {
    let broker = Broker::start();
    let logs = PgLogs::generate(100);
    let prefix = logs.log_line_prefix();
    for server in ["primary", "replica"] {
        let dir = logs.server_dir(server);
        let state = tempdir("state");
        let args = shipper_args(
            server,
            &[format!("{}/*", dir.display())],
            &broker.bootstrap(),
            state.path(),
            &prefix,
        );
        run_shipper_once(
            &args,
            &state.path().join("shipper.log"),
            Duration::from_secs(180),
        );

        let expected = expected_records(&dir);
        let by_format: BTreeMap<LogFormat, usize> =
            expected.iter().fold(BTreeMap::new(), |mut m, r| {
                *m.entry(LogFormat::from_path(std::path::Path::new(&r.path)))
                    .or_default() += 1;
                m
            });
        assert_eq!(
            by_format.len(),
            3,
            "{server}: all three formats present: {by_format:?}"
        );
        let shipped = consume_all(
            &broker.bootstrap(),
            &format!("pgaudit.raw.{server}"),
            expected.len(),
            Duration::from_secs(20),
        );
        let got: BTreeSet<(String, u64, Vec<u8>)> = shipped
            .iter()
            .map(|s| {
                (
                    s.record.source.source_path.to_string(),
                    s.record.offset as u64,
                    s.record.data.clone(),
                )
            })
            .collect();
        let want: BTreeSet<(String, u64, Vec<u8>)> = expected
            .iter()
            .map(|r| (r.path.clone(), r.offset, r.data.clone()))
            .collect();
        let missing: Vec<_> = want.difference(&got).take(3).collect();
        let extra: Vec<_> = got.difference(&want).take(3).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{server}: {} expected, {} shipped; missing e.g. {missing:?}; unexpected e.g. {extra:?}",
            want.len(),
            got.len()
        );
        assert_eq!(
            shipped.len(),
            want.len(),
            "{server}: a clean run ships no duplicate"
        );
        println!(
            "{server}: {} records shipped and verified, by format {by_format:?}",
            want.len()
        );

        // Envelope facts and keys: one session → one partition.
        let mut session_partition: HashMap<Vec<u8>, i32> = HashMap::new();
        for s in &shipped {
            assert_eq!(&*s.record.source.server, server);
            assert!(!s.record.truncated);
            assert_eq!(
                s.record.source.format,
                LogFormat::from_path(std::path::Path::new(&*s.record.source.source_path))
            );
            let p = *session_partition
                .entry(s.key.clone())
                .or_insert(s.partition);
            assert_eq!(
                p,
                s.partition,
                "session {:?} spread over partitions",
                String::from_utf8_lossy(&s.key)
            );
        }
        let sessions = session_partition
            .keys()
            .filter(|k| k.contains(&b'.'))
            .count();
        assert!(
            sessions > 3,
            "{server}: records are keyed by session id ({sessions} sessions)"
        );
        // The checkpoint covers every file to its end.
        let ckpt: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.path().join("checkpoints.json")).unwrap())
                .unwrap();
        let files = ckpt["files"].as_array().unwrap();
        for f in files {
            let path = f["path"].as_str().unwrap();
            let len = std::fs::metadata(path).unwrap().len();
            assert_eq!(
                f["offset"].as_u64().unwrap(),
                len,
                "checkpoint of {path} at its end"
            );
        }
    }
}

#[test]
fn sigterm_drains_and_a_restart_ships_nothing_twice() {
    let broker = Broker::start();
    let sample = pgtrail_tests::workspace_root().join("tests/fixtures/sample/primary");
    let state = tempdir("state");
    let prefix = std::fs::read_to_string(
        pgtrail_tests::workspace_root().join("tests/fixtures/sample/log_line_prefix"),
    )
    .unwrap()
    .trim_end_matches('\n')
    .to_owned();
    let mut args = shipper_args(
        "sigterm",
        &[format!("{}/*", sample.display())],
        &broker.bootstrap(),
        state.path(),
        &prefix,
    );
    let metrics_port = free_port();
    let at = args.iter().position(|a| a == "127.0.0.1:0").unwrap();
    args[at] = format!("127.0.0.1:{metrics_port}");
    let log = state.path().join("shipper.log");
    let expected = expected_records(&sample);
    let shipper = Shipper::spawn(&args, &log);
    // Follow mode: wait until everything arrived, then stop it.
    let first = consume_all(
        &broker.bootstrap(),
        "pgaudit.raw.sigterm",
        expected.len(),
        Duration::from_secs(30),
    );
    assert_eq!(first.len(), expected.len());
    // The metrics endpoint counts what was read and acknowledged, per format.
    let count = |f: &str| {
        expected
            .iter()
            .filter(|r| LogFormat::from_path(std::path::Path::new(&r.path)).to_string() == f)
            .count()
    };
    let shipped_csv = format!(
        "pgtrail_shipper_records_shipped_total{{format=\"csvlog\"}} {}",
        count("csvlog")
    );
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = http_get(metrics_port, "/metrics");
        if metrics.contains(&shipped_csv) && metrics.contains("pgtrail_shipper_in_flight_records 0")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for f in ["csvlog", "jsonlog", "stderr"] {
        for name in ["records_read_total", "records_shipped_total"] {
            let line = format!("pgtrail_shipper_{name}{{format=\"{f}\"}} {}", count(f));
            assert!(metrics.contains(&line), "missing {line:?} in\n{metrics}");
        }
    }
    for name in [
        "pgtrail_shipper_file_lag_bytes{file=",
        "pgtrail_shipper_checkpoint_age_seconds",
        "pgtrail_shipper_kafka_up 1",
        "pgtrail_shipper_backpressure 0",
        "pgtrail_shipper_in_flight_records 0",
    ] {
        assert!(metrics.contains(name), "missing {name:?} in\n{metrics}");
    }
    assert_eq!(http_get(metrics_port, "/healthz"), "ok");
    let status = shipper.terminate(Duration::from_secs(40));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}\n{text}");
    assert!(text.contains("Drained; checkpoint written."), "{text}");
    // A restart resumes from the checkpoint: nothing new is produced.
    let mut again = args.clone();
    again.push("--once".into());
    let status = Shipper::spawn(&again, &log).wait(Duration::from_secs(60));
    assert!(status.success());
    let second = consume_all(
        &broker.bootstrap(),
        "pgaudit.raw.sigterm",
        usize::MAX,
        Duration::from_secs(5),
    );
    assert_eq!(
        second.len(),
        expected.len(),
        "no record shipped twice after a clean stop"
    );
}

/// A minimal HTTP/1.0 GET; returns the body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
