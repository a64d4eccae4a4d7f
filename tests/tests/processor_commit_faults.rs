//! Faults around a Delta commit, end to end (issue 17, item 2): the table maintenance after a
//! commit fails (a Delta checkpoint cannot be written) after the commit landed. The processor
//! must treat the commit as landed: not write its rows again, not fence itself off its own
//! partitions. The committed sample (primary, csvlog) is shipped to Tansu and processed in
//! small flushes; every Delta checkpoint fails; the table then holds exactly the
//! independent count of rows, each once, and every partition's position is its last offset.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use pgtrail_tests::broker::Broker;
use pgtrail_tests::lake::{expected_rows, processor_args, read_rows, table_uri};
use pgtrail_tests::pglogs::expected_records;
use pgtrail_tests::process::{Processor, run_shipper_once, shipper_args};
use pgtrail_tests::{WorkDir, workspace_root};

/// Makes Delta checkpoints of versions `versions` of the table at `uri` impossible: a
/// directory stands where each checkpoint file would go.
fn block_checkpoints(uri: &str, versions: impl Iterator<Item = u64>) {
    for v in versions {
        let dir = std::path::Path::new(uri)
            .join("_delta_log")
            .join(format!("{v:020}.checkpoint.parquet"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("blocker"), b"not a checkpoint").unwrap();
    }
}

#[test]
fn a_commit_whose_maintenance_fails_is_written_once() {
    let broker = Broker::start();
    let work = WorkDir::new("commit-faults");
    let sample = workspace_root().join("tests/fixtures/sample/primary");
    broker.create_topic("pgaudit.raw.primary", 3);
    let mut ship = shipper_args(
        "primary",
        &[format!("{}/*.csv", sample.display())],
        &broker.bootstrap(),
        &work.path().join("state"),
        "%m [%p] ",
    );
    // A trickle (about 10 s of the sample), so the processor commits many small versions
    // (at 60 records/s it sometimes made only 5).
    let rate = ship
        .iter()
        .position(|a| a == "--max-records-per-sec")
        .unwrap()
        + 1;
    ship[rate] = "30".into();

    let lake = work.path().join("lake");
    let uri = table_uri(&lake, "primary");
    block_checkpoints(&uri, 1..=200);
    let config = work.path().join("processor.toml");
    // A Delta checkpoint every 3 versions.
    std::fs::write(&config, "checkpoint_interval = 3\nflush_rows = 10\n").unwrap();
    let mut args = processor_args(
        &broker.bootstrap(),
        &lake,
        "faults",
        &["pgaudit.raw.primary"],
    );
    args.extend([
        "--config".into(),
        config.to_string_lossy().into_owned(),
        "--exit-when-idle".into(),
        "6s".into(),
    ]);
    let processor = Processor::processor(&args, &[], &work.path().join("processor.log"));
    run_shipper_once(
        &ship,
        &work.path().join("shipper.log"),
        Duration::from_secs(120),
    );
    let log_path = processor.log.clone();
    let status = processor.wait(Duration::from_secs(120));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "processor: {status}\n{log}");
    let commits = log.matches("Committed Delta version.").count();
    assert!(commits >= 6, "{commits} commits");
    assert!(
        log.contains("Table maintenance after a commit failed"),
        "the checkpoints failed: {log}"
    );

    let rows = read_rows(&uri);
    let ids: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "no row twice");
    let expected = expected_rows(&sample);
    let unaudited = rows.iter().filter(|r| r.unaudited).count();
    assert_eq!(
        (rows.len() - unaudited, unaudited),
        (expected.audit, expected.unaudited_failures),
        "none missing"
    );
    // Every partition's position is its last offset: together they cover every message.
    let status = std::process::Command::new(pgtrail_tests::process::binary("pgtrail-processor"))
        .args(["status", "--table", &uri, "--json"])
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let covered: i64 = s[0]["offsets"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap() + 1)
        .sum();
    let messages = expected_records(&sample)
        .iter()
        .filter(|r| r.path.ends_with(".csv"))
        .count() as i64;
    assert_eq!(covered, messages, "positions: {s}");
}
