//! Replay (issue 20): rows derived again from the raw records in Kafka after a parser setting
//! changed replace exactly the rows of the replayed range, while a live processor appends to
//! the same table; replaying twice changes nothing; `--dry-run` writes nothing; `--into`
//! builds a comparable table, which `--continue-as` hands over to a group that continues it
//! live; a replay killed at any moment leaves the table untouched or
//! fully replaced; offsets deleted by retention are refused. Expectations come from two
//! reference runs over the whole topic (the old and the new setting), never from the replay.
//!
//! The setting changed is the stderr `log_line_prefix` of the server: the live processor runs
//! with a wrong one (`%x` and `%v` swapped, as a misconfigured server entry would say), the
//! replay with none (the one the records carry, the right one).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use pgtrail_tests::broker::Broker;
use pgtrail_tests::lagmon::MockBroker;
use pgtrail_tests::lake::{Row, processor_args, read_rows, table_uri};
use pgtrail_tests::pglogs::PgLogs;
use pgtrail_tests::process::{
    Processor, Shipper, process_until_idle, run_shipper_once, shipper_args,
};
use pgtrail_tests::replay::{
    assert_job_rows, commit_facts, ends, event_times, job_rows, positions, replay, wait_caught_up,
};
use pgtrail_tests::{WorkDir, workspace_root};

const TOPIC: &str = "pgaudit.raw.primary";
const GROUP: &str = "live";
const WRONG_PREFIX: &str = "%m [%p] %q%c %l %u@%d %r %x %v %e %a: ";

/// The old (wrong prefix) and new (records' prefix) configurations.
fn configs(work: &Path) -> (PathBuf, PathBuf) {
    let wrong = work.join("wrong.toml");
    let right = work.join("right.toml");
    let jobs = "[jobs]\nsync_interval = \"1s\"\n";
    std::fs::write(
        &wrong,
        format!("[servers.primary]\nlog_line_prefix = {WRONG_PREFIX:?}\n{jobs}"),
    )
    .unwrap();
    std::fs::write(&right, jobs).unwrap();
    (wrong, right)
}

fn with_config(mut args: Vec<String>, config: &Path) -> Vec<String> {
    args.extend(["--config".into(), config.to_string_lossy().into_owned()]);
    args
}

fn replay_args(config: &Path, brokers: &str, lake: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--config",
        &config.to_string_lossy(),
        "--brokers",
        brokers,
        "--lake",
        &lake.to_string_lossy(),
        "--group",
        GROUP,
        "--topic",
        TOPIC,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a
}

/// Runs a replay that must succeed; its JSON report.
fn replay_ok(args: &[String]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json".into());
    let (code, out, err) = replay(&a);
    assert_eq!(code, 0, "replay failed:\n{out}\n{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A reference run over the whole topic with `config` into a lake of its own.
fn reference(work: &Path, name: &str, brokers: &str, config: &Path) -> Vec<Row> {
    let lake = work.join(format!("lake-{name}"));
    let args = with_config(processor_args(brokers, &lake, name, &[TOPIC]), config);
    process_until_idle(&args, "6s", &work.join(format!("{name}.log")));
    sorted(read_rows(&table_uri(&lake, "primary")))
}

fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
    rows.sort();
    rows
}

/// The ranges of a replay report: (partition, first, last).
fn ranges(report: &serde_json::Value) -> Vec<(i32, i64, i64)> {
    report["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["tp"]["partition"].as_i64().unwrap() as i32,
                p["first"].as_i64().unwrap(),
                p["last"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// `old` outside `ranges` and `new` inside them, sorted.
fn spliced(old: &[Row], new: &[Row], ranges: &[(i32, i64, i64)]) -> Vec<Row> {
    let mut rows: Vec<Row> = old.iter().filter(|r| !inside(ranges, r)).cloned().collect();
    rows.extend(new.iter().filter(|r| inside(ranges, r)).cloned());
    sorted(rows)
}

/// `got` holds exactly the rows of `expected`, each once (`what` says what that means).
fn assert_same_rows(expected: &[Row], got: &[Row], what: &str) {
    let missing: Vec<&Row> = expected.iter().filter(|r| !got.contains(r)).collect();
    let extra: Vec<&Row> = got.iter().filter(|r| !expected.contains(r)).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && got.len() == expected.len(),
        "{what}; missing {} e.g. {:?}, unexpected {} e.g. {:?}",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
}

fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn inside(ranges: &[(i32, i64, i64)], r: &Row) -> bool {
    ranges
        .iter()
        .any(|(p, a, b)| r.kafka.0 == *p && *a <= r.kafka.1 && r.kafka.1 <= *b)
}

fn ship(logs: &PgLogs, glob: &str, brokers: &str, work: &Path, name: &str, rate: &str) -> Shipper {
    let mut args = shipper_args(
        "primary",
        &[format!("{}/{glob}", logs.server_dir("primary").display())],
        brokers,
        &work.join(format!("state-{name}")),
        &logs.log_line_prefix(),
    );
    let i = args
        .iter()
        .position(|a| a == "--max-records-per-sec")
        .unwrap();
    args[i + 1] = rate.into();
    args.push("--once".into());
    Shipper::spawn(&args, &work.join(format!("{name}.log")))
}

/// A broker with the topic, real logs (`new`: their stderr records shipped), and the two
/// configurations.
struct Setup {
    _broker: Broker,
    brokers: String,
    logs: PgLogs,
    work: WorkDir,
    wrong: PathBuf,
    right: PathBuf,
    lake: PathBuf,
    table: String,
}

impl Setup {
    fn new(name: &str, partitions: i32) -> Setup {
        let setup = Setup::empty(name, partitions);
        let shipped = ship(
            &setup.logs,
            "*.log",
            &setup.brokers,
            setup.work.path(),
            "stderr",
            "0",
        );
        assert!(shipped.wait(Duration::from_secs(120)).success());
        setup
    }

    /// The broker with an empty topic, the logs and the configurations.
    fn empty(name: &str, partitions: i32) -> Setup {
        let broker = Broker::start();
        broker.create_topic(TOPIC, partitions);
        let brokers = broker.bootstrap();
        let logs = PgLogs::generate(60);
        let work = WorkDir::new(name);
        let (wrong, right) = configs(work.path());
        let lake = work.path().join("lake");
        let table = table_uri(&lake, "primary");
        Setup {
            _broker: broker,
            brokers,
            logs,
            work,
            wrong,
            right,
            lake,
            table,
        }
    }
}

#[test]
fn a_replay_replaces_exactly_its_range_while_the_live_processor_appends() {
    let Setup {
        _broker,
        brokers,
        logs,
        work,
        wrong,
        right,
        lake,
        table,
    } = Setup::new("replay", 2);
    let live_args = with_config(processor_args(&brokers, &lake, GROUP, &[TOPIC]), &wrong);
    let live = Processor::processor(&live_args, &[], &work.path().join("live.log"));
    let pos = wait_caught_up(&table, GROUP, &brokers, TOPIC, Duration::from_secs(120));
    // The csvlog records arrive while the replays run: the live processor keeps appending.
    let csv = ship(&logs, "*.csv", &brokers, work.path(), "csvlog", "150");
    let (a, b) = ((pos[0] / 4).to_string(), (pos[0] / 2).to_string());
    let range_args = replay_args(
        &right,
        &brokers,
        &lake,
        &["--partition", "0", "--from-offset", &a, "--to-offset", &b],
    );
    let first = replay_ok(&range_args);
    let whole = replay_ok(&replay_args(&right, &brokers, &lake, &["--partition", "1"]));
    println!("range replay: {first:#}\nwhole partition replay: {whole:#}");
    assert!(first["version"].is_u64() && whole["version"].is_u64());
    // The wrong prefix made the live processor dead-letter the stderr records: the fixed
    // one turns them into rows.
    assert!(
        !first["diff"]["added"].as_object().unwrap().is_empty(),
        "{first:#}"
    );
    let mut replayed = ranges(&first);
    replayed.extend(ranges(&whole));
    assert_eq!(replayed[0], (0, pos[0] / 4, pos[0] / 2));
    assert_eq!(
        replayed[1].1, 0,
        "a whole partition starts at its first offset"
    );
    assert!(replayed[1].2 >= pos[1], "up to the table's position then");
    assert!(csv.wait(Duration::from_secs(300)).success());
    wait_caught_up(&table, GROUP, &brokers, TOPIC, Duration::from_secs(120));
    assert!(live.terminate(Duration::from_secs(60)).success());
    let after = sorted(read_rows(&table));

    let old = reference(work.path(), "ref-old", &brokers, &wrong);
    let new = reference(work.path(), "ref-new", &brokers, &right);
    let in_range = |rows: &[Row]| -> Vec<Row> {
        rows.iter()
            .filter(|r| inside(&replayed, r))
            .cloned()
            .collect()
    };
    assert!(
        in_range(&old) != in_range(&new),
        "the setting changes rows of the ranges (else this test shows nothing)"
    );
    let mut expected: Vec<Row> = old
        .iter()
        .filter(|r| !inside(&replayed, r))
        .cloned()
        .collect();
    expected.extend(in_range(&new));
    let expected = sorted(expected);
    assert_same_rows(
        &expected,
        &after,
        "the table = old rows outside the ranges + new rows inside them",
    );
    let ids: std::collections::HashSet<&str> = after.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), after.len(), "no duplicate rows");

    // A dry run writes nothing and sees nothing to change; a second replay changes nothing.
    let version = positions(&table, GROUP, TOPIC, &[0, 1]);
    let dry = {
        let mut a = range_args.clone();
        a.push("--dry-run".into());
        replay_ok(&a)
    };
    assert!(dry["version"].is_null(), "{dry:#}");
    assert_eq!(
        dry["diff"]["unchanged"], dry["diff"]["rows_before"],
        "{dry:#}"
    );
    assert!(
        sorted(read_rows(&table)) == after,
        "a dry run writes nothing"
    );
    let again = replay_ok(&range_args);
    assert_eq!(
        again["diff"]["unchanged"], again["diff"]["rows_after"],
        "{again:#}"
    );
    assert!(
        sorted(read_rows(&table)) == after,
        "replaying twice = the same rows"
    );
    assert_eq!(
        positions(&table, GROUP, TOPIC, &[0, 1]),
        version,
        "live positions untouched"
    );

    // `--into`: the range's new rows in a table of their own.
    let into = work.path().join("compare").to_string_lossy().into_owned();
    let mut into_args = range_args.clone();
    into_args.extend(["--into".into(), into.clone()]);
    let into_report = replay_ok(&into_args);
    assert_eq!(
        into_report["dead_letters_sent"], 0,
        "--into sends no dead letters: {into_report:#}"
    );
    let range0 = [replayed[0]];
    let new0: Vec<Row> = new.iter().filter(|r| inside(&range0, r)).cloned().collect();
    let into_rows = read_rows(&into).len();
    assert!(
        sorted(read_rows(&into)) == sorted(new0),
        "--into holds the range's new rows"
    );
    // Its job facts count the target's rows: a new table had none to remove.
    let into_facts = commit_facts(&into);
    let (_, into_commit) = into_facts.iter().next_back().expect("--into commit facts");
    assert_eq!(
        (&into_commit["rows_removed"], &into_commit["rows_after"]),
        (&serde_json::json!(0), &serde_json::json!(into_rows)),
        "--into job facts: {into_commit:#}"
    );

    // A processor started on the `--into` table refuses to write the topic again from its
    // start (another group, `replay:live`, wrote it).
    let into_cfg = work.path().join("into.toml");
    std::fs::write(&into_cfg, format!("[tables]\n{TOPIC:?} = {into:?}\n")).unwrap();
    let onto = with_config(processor_args(&brokers, &lake, GROUP, &[TOPIC]), &into_cfg);
    let refused = Processor::processor(&onto, &[], &work.path().join("onto-into.log"));
    let status = refused.wait(Duration::from_secs(120));
    let text = std::fs::read_to_string(work.path().join("onto-into.log")).unwrap();
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(text.contains("replay:live"), "{text}");

    // Handing over at the end of a range needs the table to hold nothing after it.
    let mid = ((pos[0] / 4 + pos[0] / 2) / 2).to_string();
    let mut early = replay_args(
        &right,
        &brokers,
        &lake,
        &["--partition", "0", "--from-offset", &a, "--to-offset", &mid],
    );
    early.extend([
        "--into".into(),
        into.clone(),
        "--continue-as".into(),
        "x".into(),
    ]);
    let (code, _, err) = replay(&early);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("after the range's end"), "{err}");

    // `--continue-as`: a table handed over at the range's end is continued live by that
    // group: the range's new rows, every later record of partition 0 and all of partition 1,
    // each once, as the new-settings reference run has them.
    let moved = work.path().join("moved").to_string_lossy().into_owned();
    let mut hand = range_args.clone();
    hand.extend([
        "--into".into(),
        moved.clone(),
        "--continue-as".into(),
        "moved".into(),
    ]);
    let handed = replay_ok(&hand);
    assert_eq!(handed["plans"][0]["handover"], true, "{handed:#}");
    let moved_cfg = work.path().join("moved.toml");
    let right_text = std::fs::read_to_string(&right).unwrap();
    std::fs::write(
        &moved_cfg,
        format!("{right_text}[tables]\n{TOPIC:?} = {moved:?}\n"),
    )
    .unwrap();
    let cont_args = with_config(
        processor_args(&brokers, &lake, "moved", &[TOPIC]),
        &moved_cfg,
    );
    process_until_idle(&cont_args, "6s", &work.path().join("moved.log"));
    let from_range = |r: &Row| r.kafka.0 == 1 || r.kafka.1 >= pos[0] / 4;
    let expected: Vec<Row> = new.iter().filter(|r| from_range(r)).cloned().collect();
    assert_same_rows(
        &expected,
        &read_rows(&moved),
        "handed over and continued = the new rows from the range on",
    );

    // A partition with nothing in the range is handed over at the range's end as well (the
    // group would otherwise write it from its first offset): here both, at their positions.
    let tail = work.path().join("tail").to_string_lossy().into_owned();
    let mut late = replay_args(&right, &brokers, &lake, &["--from-offset", "1000000000"]);
    late.extend([
        "--into".into(),
        tail.clone(),
        "--continue-as".into(),
        "tail".into(),
    ]);
    let report = replay_ok(&late);
    assert_eq!(report["plans"].as_array().unwrap().len(), 2, "{report:#}");
    let tail_cfg = work.path().join("tail.toml");
    std::fs::write(
        &tail_cfg,
        format!("{right_text}[tables]\n{TOPIC:?} = {tail:?}\n"),
    )
    .unwrap();
    let tail_args = with_config(processor_args(&brokers, &lake, "tail", &[TOPIC]), &tail_cfg);
    process_until_idle(&tail_args, "6s", &work.path().join("tail.log"));
    assert!(
        read_rows(&tail).is_empty(),
        "nothing after the hand-over, so no row"
    );

    // Every commit has its job row and reconciles; replays are historical runs.
    let jobs = lake.join("pgtrail_jobs").to_string_lossy().into_owned();
    let commits = assert_job_rows(&table, &jobs);
    assert_job_rows(&into, &jobs);
    assert_job_rows(&moved, &jobs);
    let rows = job_rows(&jobs);
    let historical = rows
        .values()
        .filter(|(kind, f)| kind == "commit" && f["mode"] == "historical")
        .count();
    assert_eq!(
        historical, 5,
        "two replays, --into and two hand-overs committed (the repeat had nothing to change)"
    );
    let runs_ended = rows
        .values()
        .filter(|(kind, f)| kind == "run_end" && f["status"] == "succeeded")
        .count();
    assert!(
        runs_ended >= 5,
        "the live run and every replay ended: {runs_ended}"
    );
    println!("{commits} commits, each with its job row");
}

/// A Kafka-time window replays the offsets the broker stamped inside it (known here from the
/// high watermarks between batches shipped a second apart); an `event_time` window replays
/// each partition from the first to the last offset of the table's rows inside it (computed
/// here from the rows read back). Both replace exactly those ranges.
#[test]
fn time_windows_replay_the_offsets_of_their_records() {
    let Setup {
        _broker,
        brokers,
        logs,
        work,
        wrong,
        right,
        lake,
        table,
    } = Setup::empty("replay-time", 2);
    let parts = [0, 1];
    let pause = || std::thread::sleep(Duration::from_millis(1500));
    let ship_all = |glob: &str, name: &str| {
        let shipped = ship(&logs, glob, &brokers, work.path(), name, "0");
        assert!(shipped.wait(Duration::from_secs(120)).success());
        ends(&brokers, TOPIC, &parts)
    };
    // csvlog, then stderr inside the window, then jsonlog.
    let before = ship_all("*.csv", "csvlog");
    pause();
    let from = chrono::Utc::now();
    pause();
    let window = ship_all("*.log", "stderr");
    pause();
    let to = chrono::Utc::now();
    pause();
    ship_all("*.json", "jsonlog");
    let expected_ranges: Vec<(i32, i64, i64)> = parts
        .iter()
        .filter(|p| window[**p as usize] > before[**p as usize])
        .map(|p| (*p, before[*p as usize], window[*p as usize] - 1))
        .collect();
    assert!(!expected_ranges.is_empty(), "stderr records were shipped");

    let live = with_config(processor_args(&brokers, &lake, GROUP, &[TOPIC]), &wrong);
    process_until_idle(&live, "6s", &work.path().join("live.log"));
    let old = reference(work.path(), "ref-old", &brokers, &wrong);
    let new = reference(work.path(), "ref-new", &brokers, &right);
    assert!(
        sorted(read_rows(&table)) == old,
        "the live run = the old reference"
    );

    let by_kafka = replay_ok(&replay_args(
        &right,
        &brokers,
        &lake,
        &["--from-time", &rfc3339(from), "--to-time", &rfc3339(to)],
    ));
    assert_eq!(ranges(&by_kafka), expected_ranges, "{by_kafka:#}");
    let after_kafka = sorted(read_rows(&table));
    assert!(
        after_kafka != old,
        "the window's stderr records became rows"
    );
    assert!(
        after_kafka == spliced(&old, &new, &expected_ranges),
        "the Kafka-time window's rows are new, the others old"
    );

    // An event-time window over the middle of the rows, replayed with the old setting again.
    let mut times = event_times(&table);
    times.sort_by_key(|t| t.2);
    let (lo, hi) = (times[times.len() * 3 / 10].2, times[times.len() * 6 / 10].2);
    let mut by_partition: std::collections::BTreeMap<i32, (i64, i64)> = Default::default();
    for (p, o, _) in times.iter().filter(|t| lo <= t.2 && t.2 < hi) {
        let e = by_partition.entry(*p).or_insert((*o, *o));
        *e = (e.0.min(*o), e.1.max(*o));
    }
    let event_ranges: Vec<(i32, i64, i64)> = by_partition
        .into_iter()
        .map(|(p, (a, b))| (p, a, b))
        .collect();
    let at = |us: i64| rfc3339(chrono::DateTime::from_timestamp_micros(us).unwrap());
    let by_event = replay_ok(&replay_args(
        &wrong,
        &brokers,
        &lake,
        &[
            "--time",
            "event",
            "--from-time",
            &at(lo),
            "--to-time",
            &at(hi),
        ],
    ));
    assert_eq!(ranges(&by_event), event_ranges, "{by_event:#}");
    let (dead, sent) = (
        by_event["dead_letters"].as_u64().unwrap(),
        by_event["dead_letters_sent"].as_u64().unwrap(),
    );
    assert!(
        0 < sent && sent <= dead,
        "dead letters sent for the records that lost their rows only: {by_event:#}"
    );
    assert_eq!(by_kafka["dead_letters_sent"], 0, "{by_kafka:#}");
    assert!(
        sorted(read_rows(&table)) == spliced(&after_kafka, &old, &event_ranges),
        "the event-time window's offsets hold the old setting's rows again, the others stay"
    );
    let jobs = lake.join("pgtrail_jobs").to_string_lossy().into_owned();
    assert_job_rows(&table, &jobs);
}

/// A range starting inside a record batch (the shipper sends up to a burst of records per
/// batch; Tansu answers a seek inside a batch with the next batch, or with nothing when it is
/// the last) loses none of its rows: the replay reads from earlier instead of starting late.
#[test]
fn a_range_starting_inside_a_batch_keeps_every_row() {
    let Setup {
        _broker,
        brokers,
        logs,
        work,
        wrong: _,
        right,
        lake,
        table,
    } = Setup::empty("replay-seek", 1);
    // Rate-limited: bursts of 100 records, so batches end inside the partition.
    let shipped = ship(&logs, "*.log", &brokers, work.path(), "stderr", "400");
    assert!(shipped.wait(Duration::from_secs(120)).success());
    let args = with_config(processor_args(&brokers, &lake, GROUP, &[TOPIC]), &right);
    process_until_idle(&args, "6s", &work.path().join("live.log"));
    let before = read_rows(&table);
    let position = positions(&table, GROUP, TOPIC, &[0])[0].unwrap();
    let mut rewinds = 0;
    for start in [position / 3 + 1, position / 2 + 7, position - 40] {
        let end = (start + 300).min(position);
        let mut a = replay_args(
            &right,
            &brokers,
            &lake,
            &[
                "--from-offset",
                &start.to_string(),
                "--to-offset",
                &end.to_string(),
                "--context",
                "0",
                "--context-time",
                "0s",
            ],
        );
        a.push("--json".into());
        let (code, out, err) = replay(&a);
        assert_eq!(code, 0, "replay failed:\n{out}\n{err}");
        rewinds += err.matches("reading from earlier").count();
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(ranges(&report), [(0, start, end)], "{report:#}");
        let after: std::collections::HashSet<String> =
            read_rows(&table).into_iter().map(|r| r.event_id).collect();
        let lost: Vec<&Row> = before
            .iter()
            .filter(|r| start <= r.kafka.1 && r.kafka.1 <= end && !after.contains(&r.event_id))
            .collect();
        assert!(
            lost.is_empty(),
            "rows of {start}..={end} lost: {} (first {:?})",
            lost.len(),
            lost.first().map(|r| r.kafka)
        );
    }
    assert!(
        rewinds > 0,
        "no range started inside a batch: the test showed nothing"
    );
}

#[test]
fn a_replay_killed_at_any_moment_leaves_the_table_old_or_new() {
    let Setup {
        _broker,
        brokers,
        logs: _,
        work,
        wrong,
        right,
        lake,
        table,
    } = Setup::new("replay-kill", 1);
    let args = with_config(processor_args(&brokers, &lake, GROUP, &[TOPIC]), &wrong);
    process_until_idle(&args, "6s", &work.path().join("live.log"));
    let old = sorted(read_rows(&table));
    let new = reference(work.path(), "ref-new", &brokers, &right);
    assert!(old != new, "the setting changes rows");
    let whole = replay_args(&right, &brokers, &lake, &[]);
    let mut seen = (0, 0);
    for delay_ms in [150, 300, 450, 600, 750, 900, 1200] {
        let mut child =
            std::process::Command::new(pgtrail_tests::process::binary("pgtrail-processor"))
                .arg("replay")
                .args(&whole)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let rows = sorted(read_rows(&table));
        if rows == old {
            seen.0 += 1;
        } else {
            assert!(
                rows == new,
                "killed after {delay_ms} ms: the table is old or new, nothing between"
            );
            seen.1 += 1;
        }
    }
    println!(
        "kills that left the old rows: {}, the new: {}",
        seen.0, seen.1
    );
    let done = replay_ok(&whole);
    assert!(
        sorted(read_rows(&table)) == new,
        "a rerun completes it: {done:#}"
    );
}

#[test]
fn offsets_deleted_by_retention_are_refused_unless_allow_partial() {
    // The mock cluster keeps at most 5 MB per partition.
    let broker = MockBroker::start(&[&format!("{TOPIC}:1"), "pgaudit.deadletter:1"]);
    let brokers = broker.bootstrap().to_owned();
    let work = WorkDir::new("replay-retention");
    let (_, right) = configs(work.path());
    let lake = work.path().join("lake");
    let table = table_uri(&lake, "primary");
    let sample = workspace_root().join("tests/fixtures/sample/primary");
    let csv: Vec<String> = std::fs::read_dir(&sample)
        .unwrap()
        .flatten()
        .map(|e| e.path().to_string_lossy().into_owned())
        .filter(|p| p.ends_with(".csv"))
        .collect();
    let ship = shipper_args(
        "primary",
        &csv,
        &brokers,
        &work.path().join("state"),
        "%m [%p] ",
    );
    run_shipper_once(
        &ship,
        &work.path().join("shipper.log"),
        Duration::from_secs(120),
    );
    let args = with_config(processor_args(&brokers, &lake, GROUP, &[TOPIC]), &right);
    process_until_idle(&args, "5s", &work.path().join("p1.log"));
    // More than 5 MB of copies (re-shipped records: no rows): the first records are deleted.
    let out =
        std::process::Command::new(pgtrail_tests::process::binary("pgtrail-baseline-producer"))
            .args(["--copies", "300", &brokers, TOPIC])
            .args(&csv)
            .output()
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    process_until_idle(&args, "5s", &work.path().join("p2.log"));
    let rows = sorted(read_rows(&table));
    let low = pgtrail_tests::replay::lows(&brokers, TOPIC, &[0])[0];
    assert!(low > 0, "retention deleted the first offsets");
    let whole = replay_args(&right, &brokers, &lake, &[]);
    let (code, out, err) = replay(&whole);
    assert_eq!(code, 7, "refused:\n{out}\n{err}");
    assert!(
        err.contains(&format!("offsets 0..={} are no longer in Kafka", low - 1)),
        "names the offsets: {err}"
    );
    assert!(sorted(read_rows(&table)) == rows, "nothing written");
    let mut partial = whole.clone();
    partial.push("--allow-partial".into());
    let report = replay_ok(&partial);
    assert_eq!(report["plans"][0]["first"], low, "{report:#}");
    assert_eq!(
        report["plans"][0]["unreadable"],
        serde_json::json!([0, low - 1])
    );
    // Rows of the deleted offsets as they were; the rest as a run over what Kafka still has
    // (the records right after the deleted ones are derived without what came before them).
    let after = sorted(read_rows(&table));
    let below =
        |rows: &[Row]| -> Vec<Row> { rows.iter().filter(|r| r.kafka.1 < low).cloned().collect() };
    assert!(
        !below(&rows).is_empty(),
        "rows below the low watermark before"
    );
    assert!(
        below(&after) == below(&rows),
        "rows of deleted offsets kept as they were"
    );
    let now = reference(work.path(), "ref-now", &brokers, &right);
    let above: Vec<Row> = after.iter().filter(|r| r.kafka.1 >= low).cloned().collect();
    assert_eq!(
        above.len(),
        now.len(),
        "the rest = a run over what Kafka has"
    );
    assert!(above == now, "the rest = a run over what Kafka has");
}
