//! Tests of [`Committer`] on local tables: faults injected at every step of a commit, a zombie
//! instance, resume state that survives checkpoints, log cleanup and other commits.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::AsArray;
use deltalake::arrow::datatypes::Int64Type;

use super::*;
use crate::delta::{LakeRow, test_row, to_batch};
use crate::failpoint::Failpoints;
use crate::partition::{FileMark, PartitionCheckpoint};
use crate::status::read_table;

const TOPIC: &str = "pgaudit.raw.primary";

fn tp(p: i32) -> TopicPartition {
    TopicPartition::new(TOPIC, p)
}

/// Rows of `tp` for Kafka offsets `offsets`.
fn batch(p: i32, offsets: std::ops::Range<i64>) -> RecordBatch {
    let rows: Vec<LakeRow> = offsets
        .map(|i| {
            let mut r = test_row(i);
            r.kafka.topic = TOPIC.into();
            r.kafka.partition = p;
            r
        })
        .collect();
    to_batch(&rows).expect("batch")
}

fn checkpoint(p: i32, version: i64, last: i64) -> PartitionCheckpoint {
    PartitionCheckpoint {
        tp: tp(p),
        version,
        last,
        pending: ((version + 1)..=last).collect(),
        files: vec![FileMark {
            file: "00ff".into(),
            hwm: last * 100,
            seen: last,
        }],
        anchor: None,
        clock: Default::default(),
        released: Vec::new(),
        heartbeat: None,
    }
}

fn part(p: i32, expected: Token, version: i64, rows: std::ops::Range<i64>) -> PartitionCommit {
    PartitionCommit {
        tp: tp(p),
        checkpoint: checkpoint(p, version, rows.end - 1),
        expected,
        batches: vec![batch(p, rows)],
        tally: crate::job::JobTally {
            consumed: 3,
            ..Default::default()
        },
    }
}

async fn open(dir: &std::path::Path, group: &str, failpoints: &str) -> Committer {
    let uri = dir.join("t").to_string_lossy().into_owned();
    Committer::open(
        &uri,
        group,
        10,
        Arc::new(Failpoints::parse(failpoints).expect("spec")),
    )
    .await
    .expect("open")
}

/// Kafka offsets of every row in the table, sorted.
async fn offsets(dir: &std::path::Path) -> Vec<i64> {
    let uri = dir.join("t").to_string_lossy().into_owned();
    let table = AuditTable::open_existing(&uri).await.unwrap().unwrap();
    let mut out: Vec<i64> = read_table(&table)
        .await
        .unwrap()
        .iter()
        .flat_map(|b| {
            let col = b
                .column_by_name("kafka_offset")
                .unwrap()
                .as_primitive::<Int64Type>();
            (0..col.len()).map(|i| col.value(i)).collect::<Vec<_>>()
        })
        .collect();
    out.sort_unstable();
    out
}

/// Item 2 of issue 17: a commit whose log entry was written but which reported an error
/// (a failing post-commit step, a lost reply) was committed again. Every step of a commit
/// fails once here; each commit must land exactly once.
#[tokio::test]
async fn a_fault_at_any_step_of_a_commit_lands_it_once() {
    for step in [
        "commit.state_write",
        "commit.upload",
        "commit.before_log",
        "commit.after_log",
        "commit.post_commit",
        "commit.gc",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = open(dir.path(), "g", &format!("{step}=error@1;{step}=error@2")).await;
        let metrics = Metrics::default();
        let first = c
            .commit(vec![part(0, Token::default(), 9, 0..10)], &metrics)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        assert!(first.fenced.is_empty(), "{step}");
        let token = first.committed[0].1;
        let second = c
            .commit(vec![part(0, token, 19, 10..20)], &metrics)
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
        assert!(
            second.fenced.is_empty(),
            "{step}: our own commit is not another's"
        );
        assert_eq!(
            offsets(dir.path()).await,
            (0..20).collect::<Vec<_>>(),
            "{step}"
        );
        let resumed = c.resume(&tp(0)).await.unwrap();
        assert_eq!(resumed.token, second.committed[0].1, "{step}");
        assert_eq!(resumed.checkpoint.map(|c| c.version), Some(19), "{step}");
    }
}

/// Item 3 of issue 17: fencing compared only the `txn` version, which does not move while a
/// held record pins it; a zombie whose commit was prepared on the same version wrote rows the
/// new owner had written. The state id moves with every commit.
#[tokio::test]
async fn a_zombie_is_fenced_although_the_version_did_not_move() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::default();
    let mut first = open(dir.path(), "g", "").await;
    let landed = first
        .commit(vec![part(0, Token::default(), 4, 0..10)], &metrics)
        .await
        .unwrap();
    let read = landed.committed[0].1;
    // The zombie and the new owner both read the partition at this token.
    let mut zombie = open(dir.path(), "g", "").await;
    let mut owner = open(dir.path(), "g", "").await;
    assert_eq!(owner.resume(&tp(0)).await.unwrap().token, read);
    // The new owner commits rows 10..20, the version still pinned at 4 by a held record.
    let owned = owner
        .commit(vec![part(0, read, 4, 10..20)], &metrics)
        .await
        .unwrap();
    assert_eq!(owned.committed.len(), 1);
    // The zombie's commit of the same rows, prepared on the same token, is fenced.
    let z = zombie
        .commit(
            vec![part(0, read, 4, 10..20), part(1, Token::default(), 2, 0..3)],
            &metrics,
        )
        .await
        .unwrap();
    assert_eq!(z.fenced, vec![tp(0)]);
    assert_eq!(z.committed.len(), 1, "its other partition is written");
    let mut want: Vec<i64> = (0..20).collect();
    want.extend(0..3);
    want.sort_unstable();
    assert_eq!(offsets(dir.path()).await, want, "no row twice");
}

/// Item 9 of issue 17: the resume state was looked up in the last 2000 commits' info only,
/// so log cleanup or many other commits lost it. It now lives in a state object named by a
/// `txn`, which checkpoints keep.
#[tokio::test]
async fn resume_state_survives_checkpoints_log_cleanup_and_other_commits() {
    let dir = tempfile::tempdir().unwrap();
    let uri = dir.path().join("t").to_string_lossy().into_owned();
    // Checkpoint every commit and keep no log history beyond the last checkpoint.
    let table = deltalake::DeltaTable::try_from_url(deltalake::ensure_table_uri(&uri).unwrap())
        .await
        .unwrap();
    let schema: deltalake::kernel::StructType =
        deltalake::kernel::engine::arrow_conversion::TryIntoKernel::try_into_kernel(
            crate::delta::arrow_schema().as_ref(),
        )
        .unwrap();
    std::fs::create_dir_all(&uri).unwrap();
    table
        .create()
        .with_columns(schema.fields().cloned())
        .with_partition_columns([crate::delta::PARTITION_COLUMN])
        .with_configuration_property(deltalake::TableProperty::CheckpointInterval, Some("1"))
        .with_configuration_property(
            deltalake::TableProperty::LogRetentionDuration,
            Some("interval 0 seconds"),
        )
        .await
        .unwrap();
    let metrics = Metrics::default();
    let mut c = open(dir.path(), "g", "").await;
    c.commit(vec![part(0, Token::default(), 7, 0..10)], &metrics)
        .await
        .unwrap();
    let mut token = Token::default();
    for i in 0..30 {
        let l = c
            .commit(vec![part(1, token, i, i..i + 1)], &metrics)
            .await
            .unwrap();
        token = l.committed[0].1;
    }
    let log = std::fs::read_dir(dir.path().join("t/_delta_log")).unwrap();
    let commits = log
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .count();
    assert!(commits < 5, "log cleaned up: {commits} commit files left");
    let mut fresh = open(dir.path(), "g", "").await;
    let r = fresh.resume(&tp(0)).await.unwrap();
    let cp = r.checkpoint.expect("the checkpoint of partition 0");
    assert_eq!((cp.version, cp.last, cp.files.len()), (7, 9, 1));
}

/// A state object is deleted once no partition names it; the current ones stay.
#[tokio::test]
async fn superseded_state_objects_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::default();
    let mut c = open(dir.path(), "g", "").await;
    let a = c
        .commit(
            vec![
                part(0, Token::default(), 1, 0..2),
                part(1, Token::default(), 1, 0..2),
            ],
            &metrics,
        )
        .await
        .unwrap();
    let (t0, t1) = (a.committed[0].1, a.committed[1].1);
    // Partition 1 still names the first object after partition 0 moves on.
    let b = c
        .commit(vec![part(0, t0, 3, 2..4)], &metrics)
        .await
        .unwrap();
    let ids = |c: &Committer| {
        let s = c.states.clone();
        async move {
            let mut v: Vec<i64> = s.list().await.unwrap().into_iter().map(|l| l.0).collect();
            v.sort_unstable();
            v
        }
    };
    let mut want = vec![t0.state.unwrap(), b.committed[0].1.state.unwrap()];
    want.sort_unstable();
    assert_eq!(ids(&c).await, want);
    c.commit(vec![part(1, t1, 3, 2..4)], &metrics)
        .await
        .unwrap();
    assert_eq!(ids(&c).await.len(), 2, "the first object is gone");
}

/// A table written by processors that kept checkpoints in the commit info resumes from there.
#[tokio::test]
async fn tables_of_older_processors_resume_from_the_commit_info() {
    let dir = tempfile::tempdir().unwrap();
    let uri = dir.path().join("t").to_string_lossy().into_owned();
    let mut table = AuditTable::open_or_create(&uri).await.unwrap();
    let adds = table.upload(&[batch(0, 0..5)]).await.unwrap();
    let txns = BTreeMap::from([(offset_app_id("g", &tp(0)), 4)]);
    let legacy = json!({"group": "g", "partitions": [{
        "topic": TOPIC, "partition": 0, "version": 4, "last": 4, "pending": [],
        "files": {"803:1a2b:00ff": 400}
    }]});
    table.commit_log(adds, &txns, legacy).await.unwrap();
    let mut c = open(dir.path(), "g", "").await;
    let r = c.resume(&tp(0)).await.unwrap();
    assert_eq!(
        r.token,
        Token {
            version: Some(4),
            state: None
        }
    );
    let cp = r.checkpoint.expect("legacy checkpoint");
    assert_eq!(cp.files[0].hwm, 400);
    // The next commit takes it over.
    let l = c
        .commit(vec![part(0, r.token, 9, 5..10)], &Metrics::default())
        .await
        .unwrap();
    assert!(l.fenced.is_empty());
    assert_eq!(offsets(dir.path()).await, (0..10).collect::<Vec<_>>());
}

/// Issue 17, item 10: a new consumer group on the same table started the topic from its
/// beginning and wrote every row again (the config said its dedup memory would drop them).
#[tokio::test]
async fn another_group_is_refused_a_table_holding_its_topic() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::default();
    let mut a = open(dir.path(), "a", "").await;
    a.commit(vec![part(0, Token::default(), 4, 0..5)], &metrics)
        .await
        .unwrap();
    let mut b = open(dir.path(), "b", "").await;
    let err = b.resume(&tp(1)).await.unwrap_err();
    assert!(matches!(err, ProcessorError::Config { .. }), "{err}");
    assert!(err.to_string().contains("consumer group a"), "{err}");
    // The same group, and another group when allowed, go on.
    assert!(a.resume(&tp(1)).await.unwrap().checkpoint.is_none());
    let uri = dir.path().join("t").to_string_lossy().into_owned();
    let mut allowed = Committer::open_with(
        &uri,
        HashMap::new(),
        "b",
        10,
        Arc::new(Failpoints::none()),
        true,
    )
    .await
    .unwrap();
    assert!(allowed.resume(&tp(1)).await.is_ok());
}

/// Issue 20, job-audit facts: every commit records in its commit info what it covers (first
/// and last offset per partition), what it wrote and the table's size before and after; a
/// commit whose first attempt failed says so (`retries`).
#[tokio::test]
async fn each_commit_records_its_job_facts() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = open(dir.path(), "g", "commit.before_log=error@2").await;
    let metrics = Metrics::default();
    let first = c
        .commit(
            vec![
                part(0, Token::default(), 4, 0..5),
                part(1, Token::default(), 2, 0..3),
            ],
            &metrics,
        )
        .await
        .unwrap();
    let token = first.committed[0].1;
    c.commit(vec![part(0, token, 9, 5..10)], &metrics)
        .await
        .unwrap();
    let uri = dir.path().join("t").to_string_lossy().into_owned();
    let table = AuditTable::open_existing(&uri).await.unwrap().unwrap();
    let history = table.recent_metadata(10).await.unwrap();
    let jobs: Vec<&serde_json::Value> = history.iter().map(|(_, m)| &m["job"]).collect();
    assert_eq!(jobs.len(), 2, "{history:?}");
    let (second, first) = (jobs[0], jobs[1]);
    assert_eq!(first["mode"], "incremental");
    assert_eq!(first["id"], "pgtrail-processor/g");
    assert_eq!(first["run"], second["run"], "one run");
    assert_eq!(
        (first["rows_before"].as_u64(), first["rows_after"].as_u64()),
        (Some(0), Some(8))
    );
    assert_eq!(
        (
            second["rows_before"].as_u64(),
            second["rows_after"].as_u64()
        ),
        (Some(8), Some(13))
    );
    assert_eq!(
        first["records_consumed"], 6,
        "3 per partition (the test's tally)"
    );
    assert_eq!(second["table_version"], table.version().unwrap());
    assert_eq!(
        second["retries"], 1,
        "the second commit's first attempt failed"
    );
    let p = &second["partitions"][0];
    assert_eq!(
        (
            p["first_offset"].as_i64(),
            p["last_offset"].as_i64(),
            p["rows_written"].as_u64()
        ),
        (Some(5), Some(9), Some(5))
    );
    assert_eq!(first["partitions"][1]["first_offset"], 0);
    assert_eq!(first["status"], "committed");
    // `pgtrail-processor jobs` reads the same facts back, newest first; `--since` cuts.
    let lake = crate::lake::Lake::default();
    let lines = crate::jobs::table_jobs(&uri, &lake, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(&lines[0].job, second);
    let text = lines[0].to_string();
    assert!(
        text.contains("0:5..=9") && text.contains("retries 1"),
        "{text}"
    );
    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    let none = crate::jobs::table_jobs(&uri, &lake, Some(future))
        .await
        .unwrap()
        .unwrap();
    assert!(none.is_empty());
}

#[test]
fn a_conflict_is_retried_soon_and_a_store_error_backs_off() {
    for attempt in 1..40 {
        let d = retry_delay(attempt, true);
        assert!(d <= CONFLICT_DELAY_MAX, "attempt {attempt}: {d:?}");
        assert!(d <= Duration::from_millis(25 * u64::from(attempt)));
    }
    let waits: Vec<Duration> = (1..12).map(|a| retry_delay(a, false)).collect();
    assert_eq!(waits[0], Duration::from_millis(100));
    assert!(waits.windows(2).all(|w| w[1] >= w[0]));
    assert_eq!(waits[10], Duration::from_millis(25_600));
}
