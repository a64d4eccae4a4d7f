//! A commit that outlives its instance's ownership (issue 17, items 2 and 3), while PostgreSQL
//! writes and the shipper ships. Instance A's third commit passes its fencing check and then
//! waits before writing its log entry (failpoint); meanwhile instance B takes A's partitions:
//! - a *zombie*: A is stopped (SIGSTOP) longer than its Kafka session, the group gives all its
//!   partitions to B;
//! - a *revocation deadline*: B joins, the group takes some partitions from A, and A's
//!   revocation deadline (2 s) passes while the commit waits: the commit goes on in the
//!   background instead of being aborted and its rows written again.
//!
//! Either way A's commit goes on: it must not write what B wrote since (A finds B's commits
//! and leaves those partitions out), or, when it lands first, B must find it and read the
//! partitions again. B then drains the topic; the table holds exactly the rows of an
//! undisturbed run and of an independent count.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pgtrail_tests::WorkDir;
use pgtrail_tests::broker::Broker;
use pgtrail_tests::lake::{assert_exact, expected_rows, processor_args, table_uri};
use pgtrail_tests::pglogs::PgCluster;
use pgtrail_tests::process::{
    Processor, Shipper, process_until_idle, run_shipper_once, shipper_args,
};

/// What happens to A while its commit waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Disturbance {
    /// A stops longer than its session: B gets every partition.
    Zombie,
    /// B joins: A gives some partitions up past its revocation deadline.
    Revocation,
}

fn run(disturbance: Disturbance) {
    let broker = Broker::start();
    let mut cluster = PgCluster::start();
    let name = match disturbance {
        Disturbance::Zombie => "zombie",
        Disturbance::Revocation => "revocation",
    };
    let work = WorkDir::new(name);
    let ship = shipper_args(
        "primary",
        &[format!("{}/*.csv", cluster.server_dir("primary").display())],
        &broker.bootstrap(),
        &work.path().join("state"),
        &cluster.log_line_prefix(),
    );
    // Heartbeats five times a second reach every partition: A's blocked commit holds each of
    // them, whichever the group takes from A (sessions alone leave some partitions sparse, and
    // a partition with nothing new is left out of a commit: nothing to fence).
    let ship_config = work.path().join("shipper.toml");
    std::fs::write(&ship_config, "heartbeat_interval_ms = 200\n").unwrap();
    let mut ship = ship;
    ship.extend([
        "--config".into(),
        ship_config.to_string_lossy().into_owned(),
    ]);
    broker.create_topic("pgaudit.raw.primary", 3);
    let lake = work.path().join("lake");
    let config = work.path().join("processor.toml");
    std::fs::write(
        &config,
        "flush_interval_ms = 300\nflush_rows = 500\nrevoke_deadline_ms = 2000\n",
    )
    .unwrap();
    let mut args = processor_args(&broker.bootstrap(), &lake, name, &["pgaudit.raw.primary"]);
    args.extend(["--config".into(), config.to_string_lossy().into_owned()]);
    pgtrail_tests::process::binary("pgtrail-processor");

    cluster.stream_at(75, Some(60));
    let shipper = Shipper::spawn(&ship, &work.path().join("shipper.log"));
    // A's third commit waits 25 s between its fencing check and its log entry.
    let mut a = Processor::processor(
        &args,
        &[("PGTRAIL_FAILPOINTS", "commit.before_log=sleep(25s)@3")],
        &work.path().join("a.log"),
    );
    assert!(
        a.wait_for_log("step=\"commit.before_log\"", Duration::from_secs(90)),
        "A reached its third commit:\n{}",
        a.log_text()
    );
    if disturbance == Disturbance::Zombie {
        a.signal("STOP");
        // B joins once A's 10 s session has expired: Tansu 0.6 then expels A at B's JoinGroup
        // and B leads the group. Joining earlier makes B a follower of A, and A's expulsion
        // between B's JoinGroup and SyncGroup leaves B with an empty assignment (the Tansu
        // trap in ARCHITECTURE.md; a real Kafka coordinator reassigns).
        std::thread::sleep(Duration::from_secs(12));
    }
    // B drains the topic at the end: it exits once every partition it has is idle.
    let mut b_args = args.clone();
    b_args.extend(["--exit-when-idle".into(), "10s".into()]);
    let mut b = Processor::processor(&b_args, &[], &work.path().join("b.log"));
    assert!(
        b.wait_for_log("Committed Delta version.", Duration::from_secs(90)),
        "B took over and committed:\n{}",
        b.log_text()
    );
    if disturbance == Disturbance::Zombie {
        a.signal("CONT");
    } else {
        assert!(
            a.wait_for_log(
                "Deadline passed during a Delta commit",
                Duration::from_secs(30)
            ),
            "A's revocation deadline passed during its commit:\n{}",
            a.log_text()
        );
    }
    // A's commit goes on; one of them finds the other's commit.
    let found = |a: &Processor, b: &Processor| {
        a.log_text()
            .contains("Another instance committed this partition")
            || b.log_text()
                .contains("Another instance committed this partition")
    };
    let start = std::time::Instant::now();
    while !found(&a, &b) && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        found(&a, &b),
        "a fenced commit:\nA:\n{}\nB:\n{}",
        a.log_text(),
        b.log_text()
    );
    // A has done its part. The zombie is killed: B takes its partitions back once its session
    // expired (B already holds them all). A that gave up partitions stops gracefully and hands
    // the rest to B through a rebalance (Tansu 0.6 can leave a member without partitions when
    // another is expelled around a rebalance, see ARCHITECTURE.md).
    match disturbance {
        Disturbance::Zombie => a.kill9(),
        Disturbance::Revocation => {
            let status = a.terminate(Duration::from_secs(60));
            assert!(status.success(), "A stopped: {status}");
        }
    }
    cluster.wait_stream();
    cluster.stop();
    shipper.kill9();
    run_shipper_once(
        &ship,
        &work.path().join("shipper-final.log"),
        Duration::from_secs(300),
    );
    let b_log = b.log.clone();
    let status = b.wait(Duration::from_secs(300));
    assert!(
        status.success(),
        "B drained the topic: {status}\n{}",
        std::fs::read_to_string(b_log).unwrap_or_default()
    );
    let reference_lake = work.path().join("reference");
    let reference = processor_args(
        &broker.bootstrap(),
        &reference_lake,
        "reference",
        &["pgaudit.raw.primary"],
    );
    process_until_idle(&reference, "8s", &work.path().join("reference.log"));
    assert_exact(
        &table_uri(&lake, "primary"),
        &table_uri(&reference_lake, "primary"),
        &expected_rows(&cluster.server_dir("primary")),
    );
}

#[test]
fn a_zombie_commit_never_writes_what_the_new_owner_wrote() {
    run(Disturbance::Zombie);
}

#[test]
fn a_commit_past_the_revocation_deadline_goes_on_and_lands_once() {
    run(Disturbance::Revocation);
}
