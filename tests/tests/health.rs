//! `/healthz` and `/readyz` from real state. The shipper is not ready while Kafka does not
//! answer, and not alive once its start-up has been stuck longer than `liveness_timeout_ms`;
//! it is ready once it holds its state lock and Kafka answered. The processor is ready once
//! the lake was checked and it joined its group.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pgtrail_tests::broker::{Broker, free_port};
use pgtrail_tests::lake::processor_args;
use pgtrail_tests::process::{Shipper, shipper_args};
use pgtrail_tests::tempdir;

/// Polls `path` until its status is `code`; panics with the last answer after 60 s.
fn wait_for(p: &Shipper, path: &str, code: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((c, body)) = p.http_get(path) {
            if c == code {
                return body;
            }
            last = Some((c, body));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{path} never answered {code}; last {last:?}\n{}",
        p.log_text()
    );
}

#[test]
fn readiness_and_liveness_follow_real_state() {
    let work = tempdir("health");
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("a.csv"), "").unwrap();
    let config = work.path().join("shipper.toml");
    std::fs::write(&config, "liveness_timeout_ms = 3000\n").unwrap();
    let args = |brokers: &str, state: &str| {
        let mut a = shipper_args(
            "primary",
            &[format!("{}/*.csv", logs.display())],
            brokers,
            &work.path().join(state),
            "%m [%p] ",
        );
        a.extend(["--config".into(), config.to_string_lossy().into_owned()]);
        a
    };

    // No broker listens: Kafka never answers, start-up never ends.
    let closed = format!("127.0.0.1:{}", free_port());
    let stuck = Shipper::spawn(&args(&closed, "s1"), &work.path().join("stuck.log"));
    let body = wait_for(&stuck, "/readyz", 503);
    assert!(body.contains("kafka"), "{body}");
    let body = wait_for(&stuck, "/healthz", 503);
    assert!(body.contains("no progress"), "{body}");
    drop(stuck);

    let broker = Broker::start();
    let shipper = Shipper::spawn(
        &args(&broker.bootstrap(), "s2"),
        &work.path().join("ok.log"),
    );
    wait_for(&shipper, "/readyz", 200);
    std::thread::sleep(Duration::from_secs(4));
    wait_for(&shipper, "/healthz", 200);

    broker.create_topic("pgaudit.raw.primary", 1);
    let args = processor_args(
        &broker.bootstrap(),
        &work.path().join("lake"),
        "health",
        &["pgaudit.raw.primary"],
    );
    let processor = Shipper::processor(&args, &[], &work.path().join("processor.log"));
    let body = wait_for(&processor, "/readyz", 200);
    assert!(body.contains("ready"), "{body}");
    wait_for(&processor, "/healthz", 200);
}
