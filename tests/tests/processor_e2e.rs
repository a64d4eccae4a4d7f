//! End to end: real PostgreSQL 15 + pgaudit logs (primary csvlog, replica stderr) shipped to
//! Tansu, processed with `--exit-when-idle` into Delta tables. Row counts equal an independent
//! count (the `csv` crate over the csvlog files) of AUDIT records plus unaudited failures;
//! every workload failure is FAILURE with its SQLSTATE; event ids are unique; a second run
//! adds nothing; records re-shipped with new Kafka offsets (lost shipper state) add nothing.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use pgtrail_tests::broker::Broker;
use pgtrail_tests::lake::{WORKLOAD_FAILURES, expected_rows, processor_args, read_rows, table_uri};
use pgtrail_tests::pglogs::PgLogs;
use pgtrail_tests::process::{binary, process_until_idle, run_shipper_once, shipper_args};
use pgtrail_tests::replay::{assert_job_rows, commit_facts, job_rows};
use pgtrail_tests::tempdir;

fn process(args: &[String], config: &std::path::Path, log: &std::path::Path) -> String {
    let mut a = args.to_vec();
    a.extend(["--config".into(), config.to_string_lossy().into_owned()]);
    process_until_idle(&a, "6s", log)
}

#[test]
fn shipped_logs_become_exactly_the_expected_rows() {
    let broker = Broker::start();
    let logs = PgLogs::generate(30);
    let prefix = logs.log_line_prefix();
    let work = tempdir("e2e");
    let ship = |server: &str, glob: &str, state: &str| {
        let args = shipper_args(
            server,
            &[format!("{}/{glob}", logs.server_dir(server).display())],
            &broker.bootstrap(),
            &work.path().join(state),
            &prefix,
        );
        run_shipper_once(
            &args,
            &work.path().join(format!("{state}.log")),
            Duration::from_secs(120),
        );
    };
    ship("primary", "*.csv", "state-primary");
    ship("replica", "*.log", "state-replica");

    let lake = work.path().join("lake");
    let config = work.path().join("processor.toml");
    std::fs::write(
        &config,
        format!("[servers.replica]\nlog_line_prefix = {prefix:?}\n"),
    )
    .unwrap();
    let args = processor_args(
        &broker.bootstrap(),
        &lake,
        "e2e",
        &["pgaudit.raw.primary", "pgaudit.raw.replica"],
    );
    let log = process(&args, &config, &work.path().join("processor-1.log"));
    assert!(log.contains("Committed Delta version."), "{log}");

    let check = |server: &str| -> usize {
        let expected = expected_rows(&logs.server_dir(server));
        let rows = read_rows(&table_uri(&lake, server));
        assert!(expected.audit > 30, "{server}: {expected:?}");
        let unaudited = rows.iter().filter(|r| r.unaudited).count();
        assert_eq!(
            (rows.len() - unaudited, unaudited),
            (expected.audit, expected.unaudited_failures),
            "{server}: audited rows and unaudited failures vs the csvlog count"
        );
        let ids: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(ids.len(), rows.len(), "{server}: event_id unique");
        for (_, stmt, state, audited) in WORKLOAD_FAILURES.iter().filter(|f| f.0 == server) {
            let row = rows
                .iter()
                .find(|r| r.statement.as_deref() == Some(*stmt) && r.result == "FAILURE")
                .unwrap_or_else(|| panic!("{server}: no FAILURE row for {stmt:?}"));
            assert_eq!(row.error_code.as_deref(), Some(*state), "{server}: {stmt}");
            assert_eq!(row.unaudited, !audited, "{server}: {stmt} audited?");
        }
        let src = if server == "primary" {
            "csvlog"
        } else {
            "stderr"
        };
        assert!(rows.iter().all(|r| r.src == src), "{server}: src column");
        rows.len()
    };
    let counts = (check("primary"), check("replica"));
    eprintln!("rows: primary {} replica {}", counts.0, counts.1);

    // status reports the tables and the offsets committed with them.
    let out = std::process::Command::new(binary("pgtrail-processor"))
        .args(["status", "--lake", &lake.to_string_lossy(), "--summary"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("rows {}", counts.0)) && text.contains("e2e/pgaudit.raw.primary/"),
        "{text}"
    );

    // A second run resumes from the tables: nothing new.
    process(&args, &config, &work.path().join("processor-2.log"));
    // The primary's shipper loses its state: every record is shipped again with new offsets,
    // and recognised by its source coordinates.
    ship("primary", "*.csv", "state-primary-lost");
    let log = process(&args, &config, &work.path().join("processor-3.log"));
    assert!(
        log.contains("Committed Delta version."),
        "the re-shipped offsets are committed"
    );
    assert_eq!(
        (
            read_rows(&table_uri(&lake, "primary")).len(),
            read_rows(&table_uri(&lake, "replica")).len()
        ),
        counts,
        "restart and re-shipping add no row"
    );
    // Every commit has its row in the job-audit table, and every one reconciles (the
    // re-shipped records count as duplicates, the replica's stderr lines as continuations).
    let jobs = lake.join("pgtrail_jobs").to_string_lossy().into_owned();
    for server in ["primary", "replica"] {
        let n = assert_job_rows(&table_uri(&lake, server), &jobs);
        assert!(n >= 2, "{server}: {n} commits with job rows");
    }
    let runs = job_rows(&jobs)
        .values()
        .filter(|(kind, f)| kind == "run_end" && f["status"] == "succeeded")
        .count();
    assert_eq!(runs, 3, "each of the three runs has its end row");
}

/// A crash between a data commit and its job row: a processor killed before it copied its
/// commits' facts (the copy runs only every hour here) leaves commits without rows; the next
/// start copies them.
#[test]
fn commits_without_job_rows_get_them_at_the_next_start() {
    let broker = Broker::start();
    broker.create_topic("pgaudit.raw.primary", 2);
    let work = tempdir("jobs-repair");
    let sample = pgtrail_tests::workspace_root().join("tests/fixtures/sample/primary");
    let ship = shipper_args(
        "primary",
        &[format!("{}/*.csv", sample.display())],
        &broker.bootstrap(),
        &work.path().join("state"),
        "%m [%p] ",
    );
    run_shipper_once(
        &ship,
        &work.path().join("shipper.log"),
        Duration::from_secs(120),
    );
    let lake = work.path().join("lake");
    let table = table_uri(&lake, "primary");
    let jobs = lake.join("pgtrail_jobs").to_string_lossy().into_owned();
    let config = work.path().join("processor.toml");
    std::fs::write(&config, "[jobs]\nsync_interval = \"1h\"\n").unwrap();
    let mut args = processor_args(
        &broker.bootstrap(),
        &lake,
        "repair",
        &["pgaudit.raw.primary"],
    );
    args.extend(["--config".into(), config.to_string_lossy().into_owned()]);
    let p = pgtrail_tests::process::Processor::processor(&args, &[], &work.path().join("p1.log"));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while commit_facts(&table).is_empty() || !p.log_text().contains("Job rows written.") {
        assert!(std::time::Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Until every record is in the table, then one more second for a stray commit.
    let expected = expected_rows(&sample).audit;
    while read_rows(&table).iter().filter(|r| !r.unaudited).count() < expected {
        assert!(std::time::Instant::now() < deadline, "{}", p.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    p.kill9();
    let commits = commit_facts(&table);
    let rows = job_rows(&jobs);
    let missing: Vec<&i64> = commits
        .keys()
        .filter(|v| !rows.contains_key(&format!("commit/{table}/{v}")))
        .collect();
    assert!(
        !missing.is_empty(),
        "the killed run left commits without job rows"
    );
    assert!(
        !rows.values().any(|(kind, _)| kind == "run_end"),
        "a killed run has no end row"
    );
    process_until_idle(&args, "6s", &work.path().join("p2.log"));
    let n = assert_job_rows(&table, &jobs);
    println!(
        "{} commits were missing their job rows, all {n} have them now",
        missing.len()
    );
}
