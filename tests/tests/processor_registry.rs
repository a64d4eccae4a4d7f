//! The Schema Registry away while the processor starts (issue 17, item 4): registry-framed
//! records wait for it (the processor is not ready, counts the failed calls, retries with
//! backoff) and are processed once it is back: nothing is dead-lettered, no offset skipped,
//! the table holds exactly the expected rows. Registry-framed records with no registry
//! configured stop the processor (exit 2), again dead-lettering nothing.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pgtrail_tests::broker::Broker;
use pgtrail_tests::consume::consume_raw;
use pgtrail_tests::lake::{expected_rows, processor_args, read_rows, table_uri};
use pgtrail_tests::process::{Processor, run_shipper_once, shipper_args};
use pgtrail_tests::registry::FakeRegistry;
use pgtrail_tests::{WorkDir, workspace_root};

#[test]
fn records_wait_for_the_schema_registry_and_none_is_dead_lettered() {
    let broker = Broker::start();
    let registry = FakeRegistry::start();
    let work = WorkDir::new("registry");
    let sample = workspace_root().join("tests/fixtures/sample/primary");
    broker.create_topic("pgaudit.raw.primary", 3);
    let mut ship = shipper_args(
        "primary",
        &[format!("{}/*.csv", sample.display())],
        &broker.bootstrap(),
        &work.path().join("state"),
        "%m [%p] ",
    );
    ship.extend(["--registry-url".into(), registry.url().to_owned()]);
    run_shipper_once(
        &ship,
        &work.path().join("shipper.log"),
        Duration::from_secs(120),
    );

    registry.set_up(false);
    let lake = work.path().join("lake");
    let mut args = processor_args(
        &broker.bootstrap(),
        &lake,
        "registry",
        &["pgaudit.raw.primary"],
    );
    args.extend([
        "--registry-url".into(),
        registry.url().to_owned(),
        "--exit-when-idle".into(),
        "5s".into(),
    ]);
    let mut p = Processor::processor(&args, &[], &work.path().join("processor.log"));
    assert!(
        p.wait_for_log(
            "The schema registry cannot be reached",
            Duration::from_secs(90)
        ),
        "{}",
        p.log_text()
    );
    // Longer than the idle exit: a partition waiting for the registry is not idle.
    std::thread::sleep(Duration::from_secs(8));
    assert!(p.running(), "still waiting:\n{}", p.log_text());
    let (code, body) = p.http_get("/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    let (_, metrics) = p.http_get("/metrics").unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("pgtrail_processor_registry_errors_total ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    assert!(!p.log_text().contains("Record dead-lettered"));
    assert!(registry.refused() > 3, "retried: {}", registry.refused());

    registry.set_up(true);
    let log = p.log.clone();
    let started = Instant::now();
    let status = p.wait(Duration::from_secs(120));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}:\n{text}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "went on once the registry was back"
    );
    assert!(
        text.contains("The schema registry answers again."),
        "{text}"
    );
    let rows = read_rows(&table_uri(&lake, "primary"));
    let expected = expected_rows(&sample);
    let unaudited = rows.iter().filter(|r| r.unaudited).count();
    assert_eq!(
        (rows.len() - unaudited, unaudited),
        (expected.audit, expected.unaudited_failures)
    );
    let dead = consume_raw(
        &broker.bootstrap(),
        "pgaudit.deadletter",
        1,
        Duration::from_secs(3),
    );
    assert!(dead.is_empty(), "{} dead letters", dead.len());

    // Registry-framed records and no registry configured: stop, dead-letter nothing.
    let mut args = processor_args(
        &broker.bootstrap(),
        &work.path().join("lake-2"),
        "registry-2",
        &["pgaudit.raw.primary"],
    );
    args.extend(["--exit-when-idle".into(), "5s".into()]);
    let p = Processor::processor(&args, &[], &work.path().join("processor-2.log"));
    let log = p.log.clone();
    let status = p.wait(Duration::from_secs(120));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(text.contains("no registry URL is configured"), "{text}");
    assert!(!text.contains("Record dead-lettered"), "{text}");
}
