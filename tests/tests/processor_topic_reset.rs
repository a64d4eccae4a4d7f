//! A topic recreated under a table (issue 17, item 10): the table's offsets belong to records
//! of the old topic. Whether the new topic is shorter than the table's position (the broker
//! moves the consumer back to its start) or has grown past it (another message stands at the
//! checkpoint's anchor), the processor must stop with exit code 6 and say why, never skip or
//! re-read records silently. The topic lives in the processor's embedded Kafka (librdkafka's
//! mock cluster, with Kafka's out-of-range behaviour); a second embedded Kafka is the
//! recreated topic. A replay of the table against a truncated topic is refused the same way.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use pgtrail_tests::lagmon::MockBroker;
use pgtrail_tests::process::{Processor, run_shipper_once, shipper_args};
use pgtrail_tests::replay::replay;
use pgtrail_tests::{WorkDir, workspace_root};

/// Runs the processor with an embedded Kafka on `lake`, ships the csvlog files of `logs` into
/// it, and waits for the processor to exit: its status and log.
fn run(work: &Path, name: &str, lake: &Path, logs: &Path, idle: &str) -> (ExitStatus, String) {
    let brokers = work.join(format!("{name}.brokers"));
    let log = work.join(format!("{name}.log"));
    let processor = Processor::processor(
        &[
            "run".into(),
            "--embedded-kafka".into(),
            brokers.to_string_lossy().into_owned(),
            "--group".into(),
            "reset".into(),
            "--lake".into(),
            lake.to_string_lossy().into_owned(),
            "--topics".into(),
            "pgaudit.raw.primary".into(),
            "--exit-when-idle".into(),
            idle.into(),
            "--flush-interval".into(),
            "1s".into(),
            "--metrics-addr".into(),
            "none".into(),
        ],
        &[],
        &log,
    );
    let start = Instant::now();
    while std::fs::read_to_string(&brokers).map_or(true, |b| b.is_empty()) {
        assert!(start.elapsed() < Duration::from_secs(60), "embedded Kafka");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ship = shipper_args(
        "primary",
        &[format!("{}/*.csv", logs.display())],
        &std::fs::read_to_string(&brokers).unwrap(),
        &work.join(format!("{name}.state")),
        "%m [%p] ",
    );
    run_shipper_once(
        &ship,
        &work.join(format!("{name}.shipper.log")),
        Duration::from_secs(60),
    );
    let status = processor.wait(Duration::from_secs(120));
    (status, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn a_recreated_topic_stops_the_processor() {
    let work = WorkDir::new("topic-reset");
    let sample = workspace_root().join("tests/fixtures/sample/primary");
    // The first records of the sample: a shorter topic.
    let short = work.path().join("short");
    std::fs::create_dir_all(&short).unwrap();
    for f in std::fs::read_dir(&sample).unwrap().flatten() {
        if f.path().extension().is_some_and(|e| e == "csv") {
            let text = std::fs::read_to_string(f.path()).unwrap();
            let head: String = text.split_inclusive('\n').take(12).collect();
            std::fs::write(short.join(f.file_name()), head).unwrap();
        }
    }
    for (case, recreated) in [("grown", &sample), ("truncated", &short)] {
        let lake = work.path().join(format!("lake-{case}"));
        let (status, log) = run(work.path(), &format!("{case}-1"), &lake, &sample, "5s");
        assert!(status.success(), "{case}: first run: {status}\n{log}");
        // The same topic name in a new Kafka: other records at the table's offsets.
        // Longer: a topic ending before the table's position shows after two quiet spells.
        let (status, log) = run(work.path(), &format!("{case}-2"), &lake, recreated, "15s");
        assert_eq!(status.code(), Some(6), "{case}: exit code 6:\n{log}");
        assert!(
            log.contains("recreated or truncated"),
            "{case}: the reason:\n{log}"
        );
    }
    // A replay of the table refuses the truncated topic too, before reading anything (issue 20).
    let broker = MockBroker::start(&["pgaudit.raw.primary:1", "pgaudit.deadletter:1"]);
    let ship = shipper_args(
        "primary",
        &[format!("{}/*.csv", short.display())],
        broker.bootstrap(),
        &work.path().join("replay.state"),
        "%m [%p] ",
    );
    run_shipper_once(
        &ship,
        &work.path().join("replay.shipper.log"),
        Duration::from_secs(60),
    );
    let lake = work.path().join("lake-truncated");
    let (code, out, err) = replay(&[
        "--brokers".into(),
        broker.bootstrap().into(),
        "--lake".into(),
        lake.to_string_lossy().into_owned(),
        "--group".into(),
        "reset".into(),
        "--topic".into(),
        "pgaudit.raw.primary".into(),
    ]);
    assert_eq!(code, 6, "replay: exit code 6:\n{out}\n{err}");
    assert!(
        err.contains("recreated or truncated"),
        "replay: the reason:\n{err}"
    );
}
