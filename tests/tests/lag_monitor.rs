//! `pgtrail-processor lag` against a real broker (Tansu), real PostgreSQL logs and real
//! processors (issue 19): a processor stopped while the shipper keeps producing is STOP
//! within the window and alerted once, resolved once after it caught up; a processor whose
//! commits block is STALL; idle partitions and an empty topic stay OK with lag 0 over
//! several windows; records deleted by retention before they were written are LOSS naming
//! the offsets (a librdkafka mock cluster: Tansu cannot delete records); a stopped shipper
//! makes its server's freshness STALE while consumer lag stays 0.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pgtrail_tests::WorkDir;
use pgtrail_tests::broker::Broker;
use pgtrail_tests::lagmon::{MockBroker, Receiver, lag_args, lag_once};
use pgtrail_tests::lake::processor_args;
use pgtrail_tests::pglogs::PgCluster;
use pgtrail_tests::process::{
    Processor, Shipper, process_until_idle, run_shipper_once, shipper_args,
};

const TOPIC: &str = "pgaudit.raw.primary";

fn write_config(work: &WorkDir, lag: &str) -> std::path::PathBuf {
    let path = work.path().join("processor.toml");
    std::fs::write(
        &path,
        format!("[lag]\nmetrics_addr = \"127.0.0.1:0\"\n{lag}"),
    )
    .unwrap();
    path
}

fn shipper_config(work: &WorkDir, heartbeat_ms: u64) -> Vec<String> {
    let path = work.path().join("shipper.toml");
    std::fs::write(&path, format!("heartbeat_interval_ms = {heartbeat_ms}\n")).unwrap();
    vec!["--config".into(), path.to_string_lossy().into_owned()]
}

/// `lag --once --json`: exit code and report.
fn once_json(args: &[String]) -> (i32, serde_json::Value) {
    let mut a = args.to_vec();
    a.push("--json".into());
    let (code, out) = lag_once(&a);
    let json = out
        .find('{')
        .and_then(|i| serde_json::from_str(&out[i..out.rfind('}').unwrap() + 1]).ok())
        .unwrap_or_else(|| panic!("no JSON report:\n{out}"));
    (code, json)
}

fn max_time_lag_ms(report: &serde_json::Value) -> i64 {
    report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["time_lag_ms"].as_i64().unwrap())
        .max()
        .unwrap_or(0)
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn kinds(r: &Receiver) -> Vec<(String, String)> {
    r.bodies()
        .iter()
        .map(|b| {
            (
                b["kind"].as_str().unwrap_or("").to_owned(),
                b["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn ship_args(cluster: &PgCluster, broker: &str, work: &WorkDir) -> Vec<String> {
    shipper_args(
        "primary",
        &[format!("{}/*.csv", cluster.server_dir("primary").display())],
        broker,
        &work.path().join("state"),
        &cluster.log_line_prefix(),
    )
}

fn start_shipper(cluster: &PgCluster, broker: &str, work: &WorkDir, heartbeat_ms: u64) -> Shipper {
    let mut ship = ship_args(cluster, broker, work);
    ship.extend(shipper_config(work, heartbeat_ms));
    Shipper::spawn(&ship, &work.path().join("shipper.log"))
}

#[test]
fn a_stopped_processor_is_stop_alerted_once_and_resolved_once() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 3);
    let mut cluster = PgCluster::start();
    let work = WorkDir::new("lag-stop");
    let receiver = Receiver::start();
    let config = write_config(
        &work,
        &format!(
            "interval = \"1s\"\nwindow = \"8s\"\nwarn_time_lag = \"1h\"\nfreshness = \"1h\"\nalert_on = \"critical\"\n[[lag.webhooks]]\nname = \"test\"\nurl = \"{}\"\n",
            receiver.url
        ),
    );
    let lake = work.path().join("lake");
    let run = processor_args(&broker.bootstrap(), &lake, "lagstop", &[TOPIC]);
    let lag = lag_args(&config, &broker.bootstrap(), &lake, "lagstop", &[TOPIC]);
    cluster.stream_at(120, Some(20));
    let shipper = start_shipper(&cluster, &broker.bootstrap(), &work, 1000);
    let mut a = Processor::processor(&run, &[], &work.path().join("a.log"));
    assert!(
        a.wait_for_log("Committed Delta version.", Duration::from_secs(90)),
        "{}",
        a.log_text()
    );
    let mut serve = lag.clone();
    serve.insert(0, "--serve".into());
    serve.insert(0, "lag".into());
    let mut monitor = Processor::processor(&serve, &[], &work.path().join("monitor.log"));
    assert!(
        monitor.wait_for_log("Lag observed.", Duration::from_secs(30)),
        "{}",
        monitor.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        kinds(&receiver),
        vec![],
        "nothing while the processor keeps up"
    );

    let status = a.terminate(Duration::from_secs(60));
    assert!(status.success(), "A stopped: {status}");
    let stopped = Instant::now();
    wait_until("a firing notice", Duration::from_secs(60), || {
        !receiver.bodies().is_empty()
    });
    let elapsed = stopped.elapsed();
    assert!(
        elapsed < Duration::from_secs(8 + 15),
        "STOP within the window (+ a round): {elapsed:?}"
    );
    assert_eq!(kinds(&receiver), vec![("firing".into(), "STOP".into())]);
    let (code, first) = once_json(&lag);
    assert_eq!(
        (code, first["status"].as_str()),
        (2, Some("STOP")),
        "{first:#}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let (_, second) = once_json(&lag);
    let grew = max_time_lag_ms(&second) - max_time_lag_ms(&first);
    assert!(
        grew >= 2500,
        "time lag grows with the wall clock: {grew} ms"
    );
    let metrics = monitor.http_get("/metrics").unwrap().1;
    let stop_line = format!(
        "pgtrail_lag_status{{group=\"lagstop\",topic=\"{TOPIC}\",partition=\"all\",status=\"STOP\"}} 1"
    );
    assert!(metrics.contains(&stop_line), "{metrics}");

    let b = Processor::processor(&run, &[], &work.path().join("b.log"));
    wait_until("a resolved notice", Duration::from_secs(90), || {
        receiver.bodies().len() >= 2
    });
    // Resolved once below `alert_on` (critical): B starting up and catching up is OK or WARN.
    std::thread::sleep(Duration::from_secs(5));
    let got = kinds(&receiver);
    assert_eq!(got.len(), 2, "{:#?}", receiver.bodies());
    assert_eq!(got[0], ("firing".into(), "STOP".into()));
    assert_eq!(got[1].0, "resolved");
    assert!(["OK", "WARN"].contains(&got[1].1.as_str()), "{got:?}");
    assert_eq!(receiver.bodies()[1]["previous"], "STOP");
    drop((b, monitor, shipper));
    cluster.stop();
}

#[test]
fn a_processor_whose_commits_block_is_stall() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let mut cluster = PgCluster::start();
    let work = WorkDir::new("lag-stall");
    let config = write_config(
        &work,
        "window = \"6s\"\nwarn_time_lag = \"1h\"\nfreshness = \"1h\"\n",
    );
    let lake = work.path().join("lake");
    let run = processor_args(&broker.bootstrap(), &lake, "lagstall", &[TOPIC]);
    cluster.stream_at(60, Some(20));
    let shipper = start_shipper(&cluster, &broker.bootstrap(), &work, 1000);
    // The second commit waits far longer than the test.
    let mut a = Processor::processor(
        &run,
        &[("PGTRAIL_FAILPOINTS", "commit.before_log=sleep(600s)@2")],
        &work.path().join("a.log"),
    );
    assert!(
        a.wait_for_log("step=\"commit.before_log\"", Duration::from_secs(90)),
        "{}",
        a.log_text()
    );
    let lag = lag_args(&config, &broker.bootstrap(), &lake, "lagstall", &[TOPIC]);
    let mut last = serde_json::Value::Null;
    wait_until("STALL", Duration::from_secs(60), || {
        let (code, report) = once_json(&lag);
        last = report;
        code == 2 && last["status"] == "STALL"
    });
    let p = &last["partitions"][0];
    assert!(p["offset_lag"].as_i64().unwrap() > 0, "{last:#}");
    assert!(p["time_lag_ms"].as_i64().unwrap() > 6000, "{last:#}");
    drop((a, shipper));
    cluster.stop();
}

#[test]
fn idle_partitions_and_an_empty_topic_stay_ok_with_lag_zero() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 3);
    broker.create_topic("pgaudit.raw.empty", 2);
    let mut cluster = PgCluster::start();
    cluster.stop();
    let work = WorkDir::new("lag-idle");
    let receiver = Receiver::start();
    let config = write_config(
        &work,
        &format!(
            "interval = \"1s\"\nwindow = \"3s\"\nwarn_time_lag = \"2s\"\nfreshness = \"1h\"\n[[lag.webhooks]]\nname = \"test\"\nurl = \"{}\"\n",
            receiver.url
        ),
    );
    let lake = work.path().join("lake");
    let topics = [TOPIC, "pgaudit.raw.empty"];
    let ship = ship_args(&cluster, &broker.bootstrap(), &work);
    run_shipper_once(
        &ship,
        &work.path().join("shipper.log"),
        Duration::from_secs(300),
    );
    let run = processor_args(&broker.bootstrap(), &lake, "lagidle", &topics);
    process_until_idle(&run, "5s", &work.path().join("processor.log"));
    let lag = lag_args(&config, &broker.bootstrap(), &lake, "lagidle", &topics);
    // Several windows of an idle group with no processor running.
    let mut serve = lag.clone();
    serve.splice(0..0, ["lag".to_owned(), "--serve".to_owned()]);
    let mut monitor = Processor::processor(&serve, &[], &work.path().join("monitor.log"));
    assert!(monitor.wait_for_log("Lag observed.", Duration::from_secs(30)));
    std::thread::sleep(Duration::from_secs(12));
    let (code, text) = lag_once(&lag);
    assert_eq!(code, 0, "{text}");
    let (_, report) = once_json(&lag);
    let parts = report["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 5, "{report:#}");
    for p in parts {
        assert_eq!(
            (
                p["status"].as_str(),
                p["offset_lag"].as_i64(),
                p["time_lag_ms"].as_i64()
            ),
            (Some("OK"), Some(0), Some(0)),
            "{p}"
        );
    }
    assert!(
        parts.iter().any(|p| p["high"].as_i64().unwrap() > 0),
        "records were written"
    );
    assert_eq!(kinds(&receiver), vec![], "no alert over several windows");
    assert!(!monitor.log_text().contains("status=STOP"));
    println!("lag --once of an idle group:\n{text}");
}

#[test]
fn records_deleted_by_retention_before_being_written_are_loss() {
    // The mock cluster keeps at most 5 MB per partition.
    let broker = MockBroker::start(&[&format!("{TOPIC}:1"), "pgaudit.deadletter:1"]);
    let mut cluster = PgCluster::start();
    cluster.stop();
    let work = WorkDir::new("lag-loss");
    let config = write_config(&work, "");
    let lake = work.path().join("lake");
    let ship = ship_args(&cluster, broker.bootstrap(), &work);
    run_shipper_once(
        &ship,
        &work.path().join("shipper.log"),
        Duration::from_secs(300),
    );
    let run = processor_args(broker.bootstrap(), &lake, "lagloss", &[TOPIC]);
    process_until_idle(&run, "5s", &work.path().join("processor.log"));
    let lag = lag_args(&config, broker.bootstrap(), &lake, "lagloss", &[TOPIC]);
    let (code, report) = once_json(&lag);
    assert_eq!(code, 0, "{report:#}");
    let position = report["partitions"][0]["position"].as_i64().unwrap();
    // More than 5 MB of real records while no processor runs: the oldest are dropped.
    let files: Vec<String> = std::fs::read_dir(cluster.server_dir("primary"))
        .unwrap()
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".csv"))
        .collect();
    let mut produce =
        std::process::Command::new(pgtrail_tests::process::binary("pgtrail-baseline-producer"));
    produce
        .args(["--copies", "300", broker.bootstrap(), TOPIC])
        .args(&files);
    let out = produce.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, text) = lag_once(&lag);
    assert_eq!(code, 2, "{text}");
    let (_, report) = once_json(&lag);
    let p = &report["partitions"][0];
    let low = p["low"].as_i64().unwrap();
    assert!(low > position, "retention passed the table: {report:#}");
    assert_eq!(p["status"], "LOSS");
    assert_eq!(p["lost"], serde_json::json!([position, low - 1]));
    assert!(
        text.contains(&format!("lost offsets {position}..={}", low - 1)),
        "{text}"
    );
}

#[test]
fn a_stopped_shipper_is_stale_while_consumer_lag_stays_zero() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 2);
    let mut cluster = PgCluster::start();
    cluster.stop();
    let work = WorkDir::new("lag-fresh");
    let config = write_config(&work, "window = \"1h\"\nfreshness = \"6s\"\n");
    let lake = work.path().join("lake");
    let shipper = start_shipper(&cluster, &broker.bootstrap(), &work, 1000);
    let run = processor_args(&broker.bootstrap(), &lake, "lagfresh", &[TOPIC]);
    let processor = Processor::processor(&run, &[], &work.path().join("processor.log"));
    let lag = lag_args(&config, &broker.bootstrap(), &lake, "lagfresh", &[TOPIC]);
    let fresh = |r: &serde_json::Value| r["servers"][0]["freshness"].as_str().map(str::to_owned);
    let mut last = serde_json::Value::Null;
    wait_until("FRESH", Duration::from_secs(90), || {
        let (code, r) = once_json(&lag);
        last = r;
        code == 0 && fresh(&last).as_deref() == Some("FRESH")
    });
    shipper.kill9();
    wait_until("STALE", Duration::from_secs(60), || {
        let (code, r) = once_json(&lag);
        last = r;
        code == 2 && fresh(&last).as_deref() == Some("STALE")
    });
    for p in last["partitions"].as_array().unwrap() {
        assert_eq!(
            (p["status"].as_str(), p["offset_lag"].as_i64()),
            (Some("OK"), Some(0)),
            "{last:#}"
        );
    }
    assert!(last["servers"][0]["heartbeat_age_ms"].as_i64().unwrap() > 6000);
    drop(processor);
}
