//! Shipper scenarios against Tansu with real PostgreSQL log records: rotation, rename, delete,
//! truncation and `log_truncate_on_rotation` reuse while running; Kafka unavailable for a
//! while (backpressure, checkpoints hold still) then back; bad input (invalid UTF-8, an
//! oversized record, a binary file matched by the glob).

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pgtrail_tests::broker::Broker;
use pgtrail_tests::consume::{Shipped, consume_all};
use pgtrail_tests::pglogs::{PgLogs, expected_records};
use pgtrail_tests::process::{Shipper, run_shipper_once, shipper_args};
use pgtrail_tests::tempdir;

/// Real csvlog records of a generated primary, each unique; generated once per test binary.
fn records() -> Vec<Vec<u8>> {
    static RECORDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    RECORDS
        .get_or_init(|| {
            let logs = PgLogs::generate(100);
            let recs: Vec<Vec<u8>> = expected_records(&logs.server_dir("primary"))
                .into_iter()
                .filter(|r| r.path.ends_with(".csv"))
                .map(|r| r.data)
                .collect();
            assert!(recs.len() > 600, "generated {} csv records", recs.len());
            recs
        })
        .clone()
}

fn append(path: &Path, recs: &[Vec<u8>]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for r in recs {
        f.write_all(r).unwrap();
    }
}

fn config(dir: &Path, extra: &str) -> String {
    let p = dir.join("shipper.toml");
    std::fs::write(
        &p,
        format!("scan_interval_ms = 200\npoll_interval_ms = 50\ncheckpoint_interval_ms = 200\npartial_record_timeout_ms = 700\n{extra}"),
    )
    .unwrap();
    p.to_string_lossy().into_owned()
}

fn data_set(shipped: &[Shipped]) -> HashSet<Vec<u8>> {
    shipped.iter().map(|s| s.record.data.clone()).collect()
}

fn assert_all_shipped(want: &[Vec<u8>], got: &HashSet<Vec<u8>>, log: &str) {
    let missing: Vec<String> = want
        .iter()
        .filter(|r| !got.contains(*r))
        .take(3)
        .map(|r| String::from_utf8_lossy(&r[..r.len().min(120)]).into_owned())
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} records missing, e.g. {missing:?}\nlog:\n{log}",
        want.iter().filter(|r| !got.contains(*r)).count(),
        want.len()
    );
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn checkpoint_offsets(state: &Path) -> Vec<u64> {
    let Ok(bytes) = std::fs::read(state.join("checkpoints.json")) else {
        return vec![];
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut o: Vec<u64> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["offset"].as_u64().unwrap())
        .collect();
    o.sort_unstable();
    o
}

#[test]
fn rotation_rename_delete_truncation_and_reuse_while_running() {
    let broker = Broker::start();
    let recs = records();
    let logs = tempdir("rotation");
    let state = tempdir("state");
    let d = logs.path();
    let mut args = shipper_args(
        "rot",
        &[format!("{}/postgresql-*.csv", d.display())],
        &broker.bootstrap(),
        state.path(),
        "%m [%p] ",
    );
    args.extend(["--config".into(), config(state.path(), "")]);
    let shipper = Shipper::spawn(&args, &state.path().join("shipper.log"));
    let pause = || std::thread::sleep(Duration::from_millis(1500));

    let a = d.join("postgresql-1.csv");
    append(&a, &recs[0..50]);
    pause();
    // Rotation: the old file gets its last records and is renamed out of the glob at once; a
    // new file appears; a third gets records and is deleted at once.
    append(&a, &recs[50..100]);
    std::fs::rename(&a, d.join("postgresql-1.csv.old")).unwrap();
    let b = d.join("postgresql-2.csv");
    append(&b, &recs[100..150]);
    pause();
    append(&b, &recs[150..200]);
    std::fs::remove_file(&b).unwrap();
    // Truncation: a file shrinks and gets new content.
    let c = d.join("postgresql-3.csv");
    append(&c, &recs[200..260]);
    pause();
    std::fs::File::create(&c).unwrap();
    append(&c, &recs[260..280]);
    // log_truncate_on_rotation: the same name is reused, new content longer than the old.
    let e = d.join("postgresql-4.csv");
    append(&e, &recs[280..300]);
    pause();
    {
        let mut f = std::fs::File::create(&e).unwrap();
        for r in &recs[300..400] {
            f.write_all(r).unwrap();
        }
    }
    // A new file whose last record never gets its newline.
    let f = d.join("postgresql-5.csv");
    append(&f, &recs[400..450]);
    let last = &recs[450][..recs[450].len() - 1];
    append(&f, &[last.to_vec()]);

    let mut want: Vec<Vec<u8>> = recs[0..450].to_vec();
    want.push(last.to_vec());
    let shipped = consume_all(
        &broker.bootstrap(),
        "pgaudit.raw.rot",
        want.len(),
        Duration::from_secs(30),
    );
    let log = shipper.log_text();
    assert_all_shipped(&want, &data_set(&shipped), &log);
    assert!(log.contains("File left the globs"), "{log}");
    assert!(
        log.contains("File truncated or rewritten in place"),
        "{log}"
    );
    assert!(
        log.matches("File truncated or rewritten in place").count() >= 2,
        "shrink and reuse: {log}"
    );
    assert!(
        log.contains("Final record has no terminating newline"),
        "{log}"
    );
    let status = shipper.terminate(Duration::from_secs(30));
    assert!(status.success());
}

#[test]
fn kafka_unavailable_pauses_then_resumes_without_loss() {
    let broker = Broker::start();
    let recs = records();
    let logs = tempdir("outage");
    let state = tempdir("state");
    let a = logs.path().join("postgresql-1.csv");
    append(&a, &recs[0..50]);
    let mut args = shipper_args(
        "outage",
        &[format!("{}/*.csv", logs.path().display())],
        &broker.bootstrap(),
        state.path(),
        "%m [%p] ",
    );
    args.extend([
        "--config".into(),
        config(
            state.path(),
            "max_in_flight_bytes = 16384\nread_chunk_bytes = 4096\n",
        ),
    ]);
    let shipper = Shipper::spawn(&args, &state.path().join("shipper.log"));
    let first = consume_all(
        &broker.bootstrap(),
        "pgaudit.raw.outage",
        50,
        Duration::from_secs(30),
    );
    assert_eq!(data_set(&first).len(), 50);
    let size_before = std::fs::metadata(&a).unwrap().len();
    wait_for("checkpoint at end of file", Duration::from_secs(10), || {
        checkpoint_offsets(state.path()) == vec![size_before]
    });

    broker.cut();
    append(&a, &recs[50..600]);
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        checkpoint_offsets(state.path()),
        vec![size_before],
        "checkpoint must not move while Kafka is away"
    );
    let log = shipper.log_text();
    assert!(log.contains("reading paused (backpressure)"), "{log}");

    broker.restore();
    let size_after = std::fs::metadata(&a).unwrap().len();
    let all = consume_all(
        &broker.bootstrap(),
        "pgaudit.raw.outage",
        600,
        Duration::from_secs(60),
    );
    assert_all_shipped(&recs[0..600], &data_set(&all), &shipper.log_text());
    wait_for("checkpoint after recovery", Duration::from_secs(20), || {
        checkpoint_offsets(state.path()) == vec![size_after]
    });
    let log = shipper.log_text();
    assert!(log.contains("reading resumed"), "{log}");
    assert!(shipper.terminate(Duration::from_secs(30)).success());
}

#[test]
fn bad_input_is_shipped_or_skipped_without_losing_neighbours() {
    let broker = Broker::start();
    let recs = records();
    let logs = tempdir("bad");
    let state = tempdir("state");
    let a = logs.path().join("postgresql-1.csv");
    append(&a, &recs[0..20]);
    // Invalid UTF-8 inside a real record's message.
    let mut invalid = recs[20].clone();
    let at = invalid.len() / 2;
    invalid.splice(at..at, [0xff, 0xfe, 0xc3]);
    // A record far over max_record_bytes (a 20 kB statement in the message field).
    let big = String::from_utf8(recs[21].clone()).unwrap().replacen(
        ",LOG,",
        &format!(",LOG,00000,\"{}\",", "x".repeat(20_000)),
        1,
    );
    append(&a, &[invalid.clone(), big.clone().into_bytes()]);
    append(&a, &recs[22..40]);
    // A binary file that the glob also matches (a compressed old log).
    std::fs::write(
        logs.path().join("postgresql-0.csv.gz"),
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03binary\x00\n",
    )
    .unwrap();

    let mut args = shipper_args(
        "bad",
        &[format!("{}/postgresql-*", logs.path().display())],
        &broker.bootstrap(),
        state.path(),
        "%m [%p] ",
    );
    args.extend([
        "--config".into(),
        config(state.path(), "max_record_bytes = 4096\n"),
    ]);
    let log = run_shipper_once(
        &args,
        &state.path().join("shipper.log"),
        Duration::from_secs(60),
    );
    let shipped = consume_all(
        &broker.bootstrap(),
        "pgaudit.raw.bad",
        40,
        Duration::from_secs(15),
    );
    assert_eq!(
        shipped.len(),
        40,
        "38 good + invalid UTF-8 + oversized, nothing from the binary file"
    );
    let got = data_set(&shipped);
    assert_all_shipped(&recs[0..20], &got, &log);
    assert_all_shipped(&recs[22..40], &got, &log);
    assert!(
        got.contains(&invalid),
        "invalid UTF-8 shipped byte for byte"
    );
    let cut = shipped
        .iter()
        .find(|s| s.record.truncated)
        .expect("the oversized record");
    assert_eq!(cut.record.data, big.as_bytes()[..4096]);
    assert_eq!(cut.record.original_length, Some(big.len() as i64));
    assert!(
        shipped
            .iter()
            .all(|s| !s.record.source.source_path.ends_with(".gz"))
    );
    assert!(log.contains("binary data"), "{log}");
    assert!(log.contains("shipping it truncated"), "{log}");
}

#[test]
fn rate_limit_holds_records_per_second() {
    let broker = Broker::start();
    let recs = records();
    let logs = tempdir("rate");
    let state = tempdir("state");
    append(&logs.path().join("postgresql-1.csv"), &recs[0..600]);
    let mut args = shipper_args(
        "rate",
        &[format!("{}/*.csv", logs.path().display())],
        &broker.bootstrap(),
        state.path(),
        "%m [%p] ",
    );
    let at = args
        .iter()
        .position(|a| a == "--max-records-per-sec")
        .unwrap();
    args[at + 1] = "300".into();
    args.extend([
        "--config".into(),
        config(state.path(), "burst_records = 100\n"),
    ]);
    let log = run_shipper_once(
        &args,
        &state.path().join("shipper.log"),
        Duration::from_secs(60),
    );
    // 600 records at 300/s with a burst of 100 need at least (600 - 100) / 300 s.
    let line = log
        .lines()
        .find(|l| l.contains("Shipped everything present"))
        .expect("summary line");
    let secs: f64 = line
        .split("seconds=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no seconds in {line:?}"));
    assert!(secs >= 1.6, "600 records at 300/s took only {secs} s");
    let shipped = consume_all(
        &broker.bootstrap(),
        "pgaudit.raw.rate",
        600,
        Duration::from_secs(10),
    );
    assert_eq!(data_set(&shipped).len(), 600);
}
