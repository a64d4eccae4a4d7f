//! Object-store lakes, end to end with real PostgreSQL logs through Tansu: two processors
//! writing one table in an S3-compatible store (moto) at the same time (two servers' topics
//! mapped to one table) commit every row exactly once (put-if-absent commits, conflicts retried); `status` reads the table
//! there; a store without conditional writes is refused at start-up; the same two writers on
//! an Azure Blob lake (Azurite). Credentials come from files.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use pgtrail_tests::broker::Broker;
use pgtrail_tests::lake::{Row, expected_rows, processor_args, read_rows_with};
use pgtrail_tests::objstore::{AZURITE_KEY, Azurite, Moto};
use pgtrail_tests::pglogs::PgLogs;
use pgtrail_tests::process::{Shipper, binary, shipper_args};
use pgtrail_tests::tempdir;
use processor::delta::AuditTable;

fn run_args(broker: &Broker, lake: &str, group: &str, config: &Path) -> Vec<String> {
    let mut a = processor_args(
        &broker.bootstrap(),
        Path::new(lake),
        group,
        &["pgaudit.raw.primary"],
    );
    a.extend([
        "--config".into(),
        config.to_string_lossy().into_owned(),
        // Long enough for the second processor's assignment and its shipper's first records.
        "--exit-when-idle".into(),
        "20s".into(),
    ]);
    a
}

fn assert_exact(rows: &[Row], logs: &PgLogs, server: &str) {
    let expected = expected_rows(&logs.server_dir(server));
    let unaudited = rows.iter().filter(|r| r.unaudited).count();
    assert!(expected.audit > 10, "{expected:?}");
    assert_eq!(
        (rows.len() - unaudited, unaudited),
        (expected.audit, expected.unaudited_failures),
        "{server}: exactly the expected rows"
    );
    let ids: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "event_id unique");
}

/// Ships both servers, then runs one processor per server's topic, both writing `table` in
/// `lake` at once, and checks the rows and that their commits interleaved. Returns the rows.
fn two_writers(
    work: &Path,
    broker: &Broker,
    logs: &PgLogs,
    lake: &str,
    storage_toml: &str,
    options: HashMap<String, String>,
) -> Vec<Row> {
    for server in ["primary", "replica"] {
        broker.create_topic(&format!("pgaudit.raw.{server}"), 3);
    }
    let table = format!("{lake}/pg_archive_sync/servers_postgresql_logs");
    let config = work.join("processor.toml");
    // Both servers' topics into one table, one processor each: two writers committing to
    // one table at the same time (a commit a second each while records arrive).
    std::fs::write(
        &config,
        format!(
            "flush_rows = 5\n[tables]\n\"pgaudit.raw.primary\" = {table:?}\n\"pgaudit.raw.replica\" = {table:?}\n[servers.replica]\nlog_line_prefix = {:?}\n{storage_toml}",
            logs.log_line_prefix(),
        ),
    )
    .unwrap();
    let run = |server: &str| {
        let mut args = run_args(broker, lake, &format!("w-{server}"), &config);
        let topics = args.iter().position(|a| a == "--topics").unwrap() + 1;
        args[topics] = format!("pgaudit.raw.{server}");
        let mut p = Shipper::processor(&args, &[], &work.join(format!("processor-{server}.log")));
        assert!(
            p.wait_for_log("Partition assigned", Duration::from_secs(120)),
            "{server}: no partition\n{}",
            p.log_text()
        );
        p
    };
    let (a, b) = (run("primary"), run("replica"));
    // Both shippers at once, throttled: records reach both processors for several seconds.
    let shippers = [("primary", "*.csv"), ("replica", "*.log")].map(|(server, glob)| {
        let mut args = shipper_args(
            server,
            &[format!("{}/{glob}", logs.server_dir(server).display())],
            &broker.bootstrap(),
            &work.join(format!("state-{server}")),
            &logs.log_line_prefix(),
        );
        let rate = args
            .iter()
            .position(|a| a == "--max-records-per-sec")
            .unwrap()
            + 1;
        args[rate] = "40".into();
        args.push("--once".into());
        (
            server,
            Shipper::spawn(&args, &work.join(format!("shipper-{server}.log"))),
        )
    });
    for (server, shipper) in shippers {
        let status = shipper.wait(Duration::from_secs(300));
        assert!(status.success(), "shipper {server}: {status}");
    }
    for (p, name) in [(a, "primary"), (b, "replica")] {
        let status = p.wait(Duration::from_secs(600));
        let log = std::fs::read_to_string(work.join(format!("processor-{name}.log"))).unwrap();
        assert!(status.success(), "processor {name}: {status}\n{log}");
        assert!(
            log.contains("Lake reachable.") && log.contains("Committed Delta version."),
            "{log}"
        );
    }
    let rows = read_rows_with(&table, options.clone());
    let (primary, replica): (Vec<Row>, Vec<Row>) =
        rows.iter().cloned().partition(|r| r.src == "csvlog");
    assert_exact(&primary, logs, "primary");
    assert_exact(&replica, logs, "replica");
    // The writers' commits, oldest first: they alternate (both wrote while the other did).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let metadata = rt.block_on(async {
        let t = AuditTable::open_existing_with(&table, options)
            .await
            .unwrap()
            .unwrap();
        t.recent_metadata(10_000).await.unwrap()
    });
    let groups: Vec<String> = metadata
        .iter()
        .rev()
        .filter_map(|(_, m)| m.get("group").and_then(|g| g.as_str()).map(str::to_owned))
        .collect();
    let switches = groups.windows(2).filter(|w| w[0] != w[1]).count();
    eprintln!("{} commits, writer switched {switches} times", groups.len());
    assert!(switches >= 2, "the writers' commits interleave: {groups:?}");
    rows
}

#[test]
fn two_processors_write_one_s3_table_exactly_once() {
    let work = tempdir("s3");
    let broker = Broker::start();
    let logs = PgLogs::generate(30);
    let moto = Moto::start(&work.path().join("moto.log"));
    let key = work.path().join("s3-secret-key");
    std::fs::write(&key, "testing\n").unwrap();
    let lake = "s3://lake/audit";
    let storage = moto.storage_toml(&key);
    let rows = two_writers(work.path(), &broker, &logs, lake, &storage, moto.options());

    let config = work.path().join("processor.toml");
    let out = std::process::Command::new(binary("pgtrail-processor"))
        .args([
            "status",
            "--config",
            &config.to_string_lossy(),
            "--lake",
            lake,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = format!("{lake}/pg_archive_sync/servers_postgresql_logs");
    assert!(
        text.contains(&table) && text.contains(&format!("rows {}", rows.len())),
        "status reads the S3 table: {text}"
    );
    assert!(
        !text.contains("testing"),
        "status prints no credential: {text}"
    );
}

#[test]
fn an_s3_store_without_conditional_writes_is_refused_at_start() {
    let work = tempdir("s3-unsafe");
    let broker = Broker::start();
    let moto = Moto::start(&work.path().join("moto.log"));
    let key = work.path().join("s3-secret-key");
    std::fs::write(&key, "testing").unwrap();
    let config = work.path().join("processor.toml");
    // object_store told the store has no conditional writes: put-if-absent is not possible.
    std::fs::write(
        &config,
        format!(
            "{}[storage.options]\naws_conditional_put = \"disabled\"\n",
            moto.storage_toml(&key)
        ),
    )
    .unwrap();
    let started = Instant::now();
    let log = work.path().join("processor.log");
    let status = Shipper::processor(
        &run_args(&broker, "s3://lake/unsafe", "u", &config),
        &[],
        &log,
    )
    .wait(Duration::from_secs(120));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(5), "{text}");
    assert!(started.elapsed() < Duration::from_secs(60), "{text}");
    assert!(
        text.contains("conditional write") && text.contains("single-writer"),
        "the error says why and what to do: {text}"
    );
    // A bucket that does not exist: refused at start-up too, not at the first assignment.
    std::fs::write(&config, moto.storage_toml(&key)).unwrap();
    let status = Shipper::processor(
        &run_args(&broker, "s3://no-such-bucket/x", "u", &config),
        &[],
        &log,
    )
    .wait(Duration::from_secs(120));
    assert_eq!(
        status.code(),
        Some(5),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}

#[test]
fn two_processors_write_one_azure_table_exactly_once() {
    let work = tempdir("azure");
    let broker = Broker::start();
    let logs = PgLogs::generate(10);
    let azurite = Azurite::start(work.path());
    let key = work.path().join("azure-key");
    std::fs::write(&key, AZURITE_KEY).unwrap();
    let storage = azurite.storage_toml(&key);
    two_writers(
        work.path(),
        &broker,
        &logs,
        "az://lake/audit",
        &storage,
        azurite.options(),
    );
    for server in ["primary", "replica"] {
        let log =
            std::fs::read_to_string(work.path().join(format!("processor-{server}.log"))).unwrap();
        assert!(!log.contains(AZURITE_KEY), "no credential in the log");
    }
}
