//! File identity across a "reboot" (issue 17, item 6): device and inode numbers change across
//! reboots and remounts; here the same log files move to another device (a tmpfs) behind the
//! same path. The shipper must resume from its checkpoints: nothing is shipped again. A copy
//! of a log file beside it (same head) is shipped once; two stderr logs that merely begin
//! with the same unprefixed line are two files.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use pgtrail_tests::broker::Broker;
use pgtrail_tests::consume::consume_all;
use pgtrail_tests::pglogs::expected_records;
use pgtrail_tests::process::{run_shipper_once, shipper_args};
use pgtrail_tests::{WorkDir, workspace_root};

fn copy_logs(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap().flatten() {
        if f.path().extension().is_some_and(|e| e == "csv") {
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
}

#[test]
fn files_on_another_device_are_not_shipped_again() {
    let broker = Broker::start();
    let work = WorkDir::new("identity");
    let sample = workspace_root().join("tests/fixtures/sample/primary");
    let disk = work.path().join("disk");
    copy_logs(&sample, &disk);
    let logs = work.path().join("logs");
    std::os::unix::fs::symlink(&disk, &logs).unwrap();
    let ship = shipper_args(
        "identity",
        &[format!("{}/*.csv", logs.display())],
        &broker.bootstrap(),
        &work.path().join("state"),
        "%m [%p] ",
    );
    run_shipper_once(
        &ship,
        &work.path().join("shipper-1.log"),
        Duration::from_secs(60),
    );
    let records = expected_records(&disk).len();
    let topic = "pgaudit.raw.identity";
    assert_eq!(
        consume_all(&broker.bootstrap(), topic, records, Duration::from_secs(5)).len(),
        records
    );

    // After the "reboot": the same files on another device, behind the same path, and a copy
    // of one of them beside it.
    let shm = tempfile::Builder::new()
        .prefix("pgtrail-identity-")
        .tempdir_in("/dev/shm")
        .unwrap();
    copy_logs(&sample, shm.path());
    let first = std::fs::read_dir(shm.path())
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    std::fs::copy(&first, shm.path().join("copy-of-first.csv")).unwrap();
    std::fs::remove_file(&logs).unwrap();
    std::os::unix::fs::symlink(shm.path(), &logs).unwrap();
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    assert_ne!(dev(&disk), dev(shm.path()), "another device");
    let log = run_shipper_once(
        &ship,
        &work.path().join("shipper-2.log"),
        Duration::from_secs(60),
    );
    let shipped = consume_all(
        &broker.bootstrap(),
        topic,
        records + 1,
        Duration::from_secs(5),
    );
    assert_eq!(shipped.len(), records, "nothing shipped again:\n{log}");
    assert!(log.contains("a copy, not shipped twice"), "{log}");
}

/// Issue 17, item 10: after an outage longer than `checkpoint_retention_hours` every
/// checkpoint was older than the retention and was pruned before the first scan could mark
/// the files still present, which were then shipped again from offset 0.
#[test]
fn checkpoints_older_than_the_retention_of_present_files_are_kept() {
    use shipper::tailer::{Head, IdentityRule, read_head};
    let broker = Broker::start();
    let work = WorkDir::new("retention");
    let sample = workspace_root().join("tests/fixtures/sample/primary");
    let logs = work.path().join("logs");
    copy_logs(&sample, &logs);
    // Every file shipped, a week ago.
    let mut files = Vec::new();
    for f in std::fs::read_dir(&logs).unwrap().flatten() {
        let file = std::fs::File::open(f.path()).unwrap();
        let Head::Ready(fp) = read_head(&file, IdentityRule::FirstLine).unwrap() else {
            panic!("a first line")
        };
        files.push(serde_json::json!({
            "file_id": format!("{fp:016x}"),
            "path": f.path(),
            "offset": f.metadata().unwrap().len(),
            "updated_unix": 1_700_000_000u64,
        }));
    }
    let state = work.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        state.join("checkpoints.json"),
        serde_json::json!({"version": 2, "files": files}).to_string(),
    )
    .unwrap();
    let mut ship = shipper_args(
        "retention",
        &[format!("{}/*.csv", logs.display())],
        &broker.bootstrap(),
        &state,
        "%m [%p] ",
    );
    let config = work.path().join("shipper.toml");
    std::fs::write(
        &config,
        "checkpoint_retention_hours = 1\ncheckpoint_interval_ms = 50\n",
    )
    .unwrap();
    ship.extend(["--config".into(), config.to_string_lossy().into_owned()]);
    let log = run_shipper_once(
        &ship,
        &work.path().join("shipper.log"),
        Duration::from_secs(60),
    );
    let shipped = consume_all(
        &broker.bootstrap(),
        "pgaudit.raw.retention",
        1,
        Duration::from_secs(3),
    );
    assert!(
        shipped.is_empty(),
        "{} records shipped again:\n{log}",
        shipped.len()
    );
}

/// Review of issue 17: a standby whose `restore_command` fails writes the same unprefixed
/// `cp: cannot stat ...` line at the top of each new stderr log. The fingerprint of the first
/// line took every such file for a copy of the first one: none of their records was shipped.
#[test]
fn stderr_logs_beginning_with_the_same_child_output_are_two_files() {
    let broker = Broker::start();
    let work = WorkDir::new("identity-stderr");
    let sample = std::fs::read(
        workspace_root().join("tests/fixtures/sample/primary/postgresql-2026-11-23_091050.log"),
    )
    .unwrap();
    // Split the real log at a record boundary in its middle (a line not starting with a tab).
    let mut cut = sample.len() / 2;
    while !(sample[cut - 1] == b'\n' && sample[cut] != b'\t') {
        cut += 1;
    }
    let cp = b"cp: cannot stat '/archive/000000010000000000000007': No such file or directory\n";
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("a.log"), [&cp[..], &sample[..cut]].concat()).unwrap();
    std::fs::write(logs.join("b.log"), [&cp[..], &sample[cut..]].concat()).unwrap();
    let ship = shipper_args(
        "identity-stderr",
        &[format!("{}/*.log", logs.display())],
        &broker.bootstrap(),
        &work.path().join("state"),
        "%m [%p] ",
    );
    let log = run_shipper_once(
        &ship,
        &work.path().join("shipper.log"),
        Duration::from_secs(60),
    );
    let records = expected_records(&logs).len();
    let shipped = consume_all(
        &broker.bootstrap(),
        "pgaudit.raw.identity-stderr",
        records + 1,
        Duration::from_secs(5),
    );
    assert_eq!(shipped.len(), records, "both files, each once:\n{log}");
    assert!(!log.contains("a copy, not shipped twice"), "{log}");
}

/// A stderr log that begins with unprefixed output, shipped part way by a build that
/// identified files by their first line alone: its checkpoint (same path) is taken up under
/// the new identity, not shipped again from byte 0.
#[test]
fn a_checkpoint_under_the_first_line_identity_is_taken_up() {
    use shipper::tailer::{Head, IdentityRule, read_head};
    let broker = Broker::start();
    let work = WorkDir::new("identity-legacy");
    let sample = std::fs::read(
        workspace_root().join("tests/fixtures/sample/primary/postgresql-2026-11-23_091050.log"),
    )
    .unwrap();
    let cp = b"cp: cannot stat '/archive/000000010000000000000007': No such file or directory\n";
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let path = logs.join("a.log");
    std::fs::write(&path, [&cp[..], &sample[..]].concat()).unwrap();
    let all = expected_records(&logs);
    let shipped_before = all.len() / 2;
    let offset = all[shipped_before].offset;
    let file = std::fs::File::open(&path).unwrap();
    let Head::Ready(fp) = read_head(&file, IdentityRule::FirstLine).unwrap() else {
        panic!("a first line")
    };
    let state = work.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let entry = serde_json::json!({
        "file_id": format!("{fp:016x}"),
        "path": path,
        "offset": offset,
        "updated_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    });
    std::fs::write(
        state.join("checkpoints.json"),
        serde_json::json!({"version": 2, "files": [entry]}).to_string(),
    )
    .unwrap();
    let ship = shipper_args(
        "identity-legacy",
        &[format!("{}/*.log", logs.display())],
        &broker.bootstrap(),
        &state,
        "%m [%p] ",
    );
    let log = run_shipper_once(
        &ship,
        &work.path().join("shipper.log"),
        Duration::from_secs(60),
    );
    let want = all.len() - shipped_before;
    let shipped = consume_all(
        &broker.bootstrap(),
        "pgaudit.raw.identity-legacy",
        want + 1,
        Duration::from_secs(5),
    );
    assert_eq!(shipped.len(), want, "from the checkpoint on:\n{log}");
}
