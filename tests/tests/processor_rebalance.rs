//! Two processor instances in one consumer group writing the same table, with rebalances in
//! the middle, while PostgreSQL (primary) is writing and the shipper is shipping: instance A
//! starts alone, B joins (the partitions are split, both commit to the same Delta table), A is
//! stopped with SIGTERM (its partitions move to B after A committed what it had), and B drains
//! the topic with `--exit-when-idle`. The table then holds exactly the rows of an undisturbed
//! single-instance run and of the independent count. Once with the cooperative-sticky
//! (incremental) assignor and once with an eager one (`range`), as two groups over the same
//! topic at the same time; the eager pair writes its table in an S3-compatible store (moto).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use pgtrail_tests::WorkDir;
use pgtrail_tests::broker::Broker;
use pgtrail_tests::lake::{assert_exact_with, expected_rows, processor_args, table_uri};
use pgtrail_tests::objstore::Moto;
use pgtrail_tests::pglogs::PgCluster;
use pgtrail_tests::process::{
    Processor, Shipper, binary, process_until_idle, run_shipper_once, shipper_args,
};

const TOPIC: &str = "pgaudit.raw.primary";

/// Commits logged by a processor.
fn commits(p: &Processor) -> usize {
    p.log_text().matches("Committed Delta version.").count()
}

/// One consumer group of two instances (A and B) and its lake.
struct Pair {
    strategy: &'static str,
    args: Vec<String>,
    lake: std::path::PathBuf,
    /// Storage options of an object-store lake (empty: local).
    options: HashMap<String, String>,
    a: Option<Processor>,
    b: Option<Processor>,
}

impl Pair {
    /// A pair whose lake is local, or in `s3` (moto) when given.
    fn new(broker: &Broker, work: &Path, strategy: &'static str, s3: Option<&Moto>) -> Pair {
        let (lake, options) = match s3 {
            Some(moto) => (
                std::path::PathBuf::from(format!("s3://lake/rebalance-{strategy}")),
                moto.options(),
            ),
            None => (work.join(format!("lake-{strategy}")), HashMap::new()),
        };
        let mut args = processor_args(
            &broker.bootstrap(),
            &lake,
            &format!("rebalance-{strategy}"),
            &[TOPIC],
        );
        args.extend([
            "--assignment-strategy".into(),
            strategy.into(),
            "--flush-rows".into(),
            "1000".into(),
        ]);
        if let Some(moto) = s3 {
            let key = work.join(format!("s3-key-{strategy}"));
            std::fs::write(&key, "testing").unwrap();
            let config = work.join(format!("processor-{strategy}.toml"));
            std::fs::write(&config, moto.storage_toml(&key)).unwrap();
            args.extend(["--config".into(), config.to_string_lossy().into_owned()]);
        }
        Pair {
            strategy,
            args,
            lake,
            options,
            a: None,
            b: None,
        }
    }

    fn log(&self, work: &Path, who: &str) -> std::path::PathBuf {
        work.join(format!("{}-{who}.log", self.strategy))
    }
}

#[test]
fn two_instances_with_rebalances_write_exactly_the_expected_rows() {
    let broker = Broker::start();
    let mut cluster = PgCluster::start();
    let work = WorkDir::new("rebalance");
    let ship = shipper_args(
        "primary",
        &[format!("{}/*.csv", cluster.server_dir("primary").display())],
        &broker.bootstrap(),
        &work.path().join("state"),
        &cluster.log_line_prefix(),
    );
    broker.create_topic(TOPIC, 6);
    binary("pgtrail-processor");
    cluster.stream_at(75, Some(60));
    let shipper = Shipper::spawn(&ship, &work.path().join("shipper.log"));
    // The range pair writes its table in an S3-compatible store (moto).
    let moto = Moto::start(&work.path().join("moto.log"));
    let mut pairs = [
        Pair::new(&broker, work.path(), "cooperative-sticky", None),
        Pair::new(&broker, work.path(), "range", Some(&moto)),
    ];

    // A alone, until it committed something.
    for pair in &mut pairs {
        let mut a = Processor::processor(&pair.args, &[], &pair.log(work.path(), "a"));
        assert!(
            a.wait_for_log("Partition assigned", Duration::from_secs(60)),
            "{}: A got no partition:\n{}",
            pair.strategy,
            a.log_text()
        );
        pair.a = Some(a);
    }
    wait_until("A committed", Duration::from_secs(60), || {
        pairs
            .iter()
            .all(|p| p.a.as_ref().is_some_and(|a| commits(a) > 0))
    });

    // B joins: the group rebalances and splits the partitions.
    for pair in &mut pairs {
        let mut a = pair.args.clone();
        a.extend(["--exit-when-idle".into(), "10s".into()]);
        let b = Processor::processor(&a, &[], &pair.log(work.path(), "b"));
        pair.b = Some(b);
    }
    for pair in &mut pairs {
        let b = pair.b.as_mut().unwrap();
        assert!(
            b.wait_for_log("Partition assigned", Duration::from_secs(90)),
            "{}: B got no partition; broker log {}:\n{}",
            pair.strategy,
            broker.log_path().display(),
            b.log_text()
        );
    }
    // Both write the same table for a while.
    wait_until("B committed", Duration::from_secs(60), || {
        pairs
            .iter()
            .all(|p| p.b.as_ref().is_some_and(|b| commits(b) > 0))
    });
    for pair in &pairs {
        let split = assigned_partitions(&pair.b.as_ref().unwrap().log_text());
        assert!(
            !split.is_empty() && split.len() < 6,
            "{}: the partitions are split between A and B (B has {split:?})",
            pair.strategy
        );
    }
    let a_commits_before: Vec<usize> = pairs
        .iter()
        .map(|p| commits(p.a.as_ref().unwrap()))
        .collect();
    sleep(Duration::from_secs(4));
    for (pair, before) in pairs.iter().zip(&a_commits_before) {
        let a = pair.a.as_ref().unwrap();
        assert!(
            a.log_text().contains("Partition revoked")
                || a.log_text().contains("Partitions revoked"),
            "{}: A gave partitions to B:\n{}",
            pair.strategy,
            a.log_text()
        );
        println!(
            "{}: A committed {} times before B's first commit, {} in all so far; B {}",
            pair.strategy,
            before,
            commits(a),
            commits(pair.b.as_ref().unwrap())
        );
    }

    // A stops (SIGTERM): it commits what it holds and leaves; B takes over its partitions.
    let writing = cluster.streaming();
    for pair in &mut pairs {
        let status = pair.a.take().unwrap().terminate(Duration::from_secs(60));
        assert!(
            status.success(),
            "{}: A exited with {status}",
            pair.strategy
        );
    }
    println!("A stopped (PostgreSQL still writing: {writing})");

    cluster.wait_stream();
    cluster.stop();
    shipper.kill9();
    run_shipper_once(
        &ship,
        &work.path().join("shipper-final.log"),
        Duration::from_secs(300),
    );

    for pair in &mut pairs {
        let b = pair.b.as_ref().unwrap();
        wait_until("B owns every partition", Duration::from_secs(60), || {
            assigned_partitions(&b.log_text()).len() == 6
        });
        let status = pair.b.take().unwrap().wait(Duration::from_secs(600));
        let log = std::fs::read_to_string(pair.log(work.path(), "b")).unwrap();
        assert!(
            status.success(),
            "{}: B exited with {status}:\n{log}",
            pair.strategy
        );
    }

    let reference_lake = work.path().join("reference");
    process_until_idle(
        &processor_args(&broker.bootstrap(), &reference_lake, "reference", &[TOPIC]),
        "8s",
        &work.path().join("reference.log"),
    );
    let expected = expected_rows(&cluster.server_dir("primary"));
    for pair in &pairs {
        println!("{}:", pair.strategy);
        assert_exact_with(
            &table_uri(&pair.lake, "primary"),
            pair.options.clone(),
            &table_uri(&reference_lake, "primary"),
            &expected,
        );
    }
}

/// Partitions a processor's log says it was assigned, over its whole life.
fn assigned_partitions(log: &str) -> std::collections::BTreeSet<u32> {
    log.lines()
        .filter(|l| l.contains("Partition assigned."))
        .filter_map(|l| {
            l.split(" partition=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        sleep(Duration::from_millis(200));
    }
}
