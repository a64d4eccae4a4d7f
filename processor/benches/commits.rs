//! Commit contention on one table: `N` processor instances of one consumer group, each owning
//! one partition, commit through the real [`Committer`] (state object, token check, Parquet
//! upload, put-if-absent log entry, maintenance) to one Delta table whose object store answers
//! every request after a simulated latency (object_store's `ThrottledStore` around an
//! in-memory store: each get, put, list and delete waits `--latency`, as a round trip to S3 or
//! Azure would; at 0 ms the instances share this process's CPU, which then bounds the rate).
//!
//! Each instance commits `--rows` rows every `--interval` (`0s`: back to back, which measures
//! what the table can take) for `--seconds`. Printed per configuration: Delta commits landed
//! within `--seconds`, per second (the table's and the slowest instance's; commits still
//! running at the end are waited for but not counted), commit conflicts per landed commit,
//! and commit latency (median, p95, max) from a commit's start to its landing. The baseline
//! in the same run is one instance alone at the same latency (the first of `--instances`).
//!
//! Usage: `cargo bench --workspace --bench commits -- [--instances 1,2,4,8]
//! [--latency 0ms,25ms] [--interval 0s] [--seconds 15] [--rows 1000]`.
//! Must not: assert figures (it measures; `bench/RESULTS.md` keeps the results).

use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::DeltaResult;
use deltalake::logstore::object_store::memory::InMemory;
use deltalake::logstore::object_store::path::Path;
use deltalake::logstore::object_store::throttle::{ThrottleConfig, ThrottledStore};
use deltalake::logstore::object_store::{ObjectStore, ObjectStoreExt as _};
use deltalake::logstore::{ObjectStoreFactory, ObjectStoreRef, StorageConfig};
use processor::audit::{Source, audit_row};
use processor::committer::{Committer, PartitionCommit};
use processor::delta::arrow::record_batch::RecordBatch;
use processor::delta::{KafkaCoords, LakeRow, to_batch};
use processor::failpoint::Failpoints;
use processor::job::JobTally;
use processor::parse::LogRecord;
use processor::parse::pgaudit::parse_audit;
use processor::partition::PartitionCheckpoint;
use processor::telemetry::Metrics;
use processor::topic_partition::TopicPartition;
use url::Url;

/// The binary's allocator (see `main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOPIC: &str = "pgaudit.raw.bench";
const GROUP: &str = "bench";

/// `memory://` tables in one in-memory store shared by the instances of a run, every request
/// delayed by the same latency (the throttle cannot wrap the local file system's reads).
struct SlowStore(ObjectStoreRef);

impl SlowStore {
    fn new(store: Arc<InMemory>, d: Duration) -> SlowStore {
        let wait = ThrottleConfig {
            wait_delete_per_call: d,
            wait_get_per_call: d,
            wait_list_per_call: d,
            wait_list_with_delimiter_per_call: d,
            wait_put_per_call: d,
            ..ThrottleConfig::default()
        };
        SlowStore(Arc::new(ThrottledStore::new(store, wait)))
    }
}

impl ObjectStoreFactory for SlowStore {
    fn parse_url_opts(
        &self,
        url: &Url,
        _config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let path = Path::from_url_path(url.path())
            .map_err(|e| deltalake::DeltaTableError::Generic(e.to_string()))?;
        Ok((self.0.clone(), path))
    }
}

struct Args {
    instances: Vec<usize>,
    latencies: Vec<Duration>,
    interval: Duration,
    seconds: u64,
    rows: i64,
}

fn list<T>(s: &str, f: impl Fn(&str) -> T) -> Vec<T> {
    s.split(',').map(str::trim).map(f).collect()
}

fn duration(s: &str) -> Duration {
    humantime::parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn args() -> Args {
    let mut a = Args {
        instances: vec![1, 2, 4, 8],
        latencies: vec![Duration::ZERO, Duration::from_millis(25)],
        interval: Duration::ZERO,
        seconds: 15,
        rows: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench` to every bench binary.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--instances" => a.instances = list(&value, |n| n.parse().expect("instances")),
            "--latency" => a.latencies = list(&value, duration),
            "--interval" => a.interval = duration(&value),
            "--seconds" => a.seconds = value.parse().expect("seconds"),
            "--rows" => a.rows = value.parse().expect("rows"),
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

/// `n` rows of partition `p` (offsets from 0) with realistic texts.
fn batch(p: i32, n: i64) -> RecordBatch {
    let rows: Vec<LakeRow> = (0..n)
        .map(|i| {
            let rec = LogRecord {
                log_time: chrono::DateTime::from_timestamp(1_795_000_000 + i, 0),
                database_name: Some("app".into()),
                session_id: Some(format!("6745a1b2.{p:x}").into()),
                vxid: Some(format!("3/{i}").into()),
                ..LogRecord::default()
            };
            let statement = format!("SELECT * FROM accounts WHERE id = {i}");
            let message = format!("AUDIT: SESSION,{i},1,READ,SELECT,,,{statement},<none>");
            let entry = parse_audit(&message)
                .expect("pgaudit")
                .expect("an audit entry");
            let src = Source {
                server: "primary".into(),
                host: "db-1".into(),
                format: pgtrail_avro::LogFormat::Csvlog,
                path: "/var/log/postgresql/postgresql.csv".into(),
                file_id: "f".into(),
                offset: i * 200,
                origin: i * 200,
            };
            LakeRow {
                row: audit_row(&rec, &entry, Some(&statement), &src, &message),
                ingest_ts: chrono::Utc::now(),
                kafka: KafkaCoords {
                    topic: TOPIC.into(),
                    partition: p,
                    offset: i,
                },
            }
        })
        .collect();
    to_batch(&rows).expect("rows fit the schema")
}

/// What one instance measured.
#[derive(Default)]
struct Instance {
    latencies: Vec<Duration>,
    /// Commits landed before the end of the run.
    in_time: usize,
}

/// One instance: partition `p`, committing until `until`.
async fn instance(uri: String, p: i32, args: Arc<Args>, until: Instant) -> Instance {
    let failpoints = Arc::new(Failpoints::parse("").expect("no failpoints"));
    let mut committer = Committer::open(&uri, GROUP, 10, failpoints)
        .await
        .expect("open the table");
    let tp = TopicPartition::new(TOPIC, p);
    let mut token = committer.resume(&tp).await.expect("resume").token;
    let rows = batch(p, args.rows);
    let metrics = Metrics::default();
    let mut out = Instance::default();
    let mut tick = Instant::now();
    let mut last = -1;
    while Instant::now() < until {
        last += args.rows;
        let part = PartitionCommit {
            tp: tp.clone(),
            checkpoint: PartitionCheckpoint::before_range(&tp, last, last),
            expected: token,
            batches: vec![rows.clone()],
            tally: JobTally {
                consumed: args.rows as u64,
                ..JobTally::default()
            },
        };
        let started = Instant::now();
        let landed = committer
            .commit(vec![part], &metrics)
            .await
            .expect("a commit lands");
        out.latencies.push(started.elapsed());
        if Instant::now() <= until {
            out.in_time += 1;
        }
        assert!(landed.fenced.is_empty(), "{tp} fenced: one owner only");
        token = landed.committed[0].1;
        if !args.interval.is_zero() {
            tick += args.interval;
            tokio::time::sleep_until(tick.into()).await;
        }
    }
    out
}

/// The commit attempts that failed because another commit landed first, summed over the
/// `retries` of every log entry's job facts (read from the store, not through the delay).
async fn conflicts(store: &InMemory) -> u64 {
    use futures::TryStreamExt as _;
    let log = Path::from("t/_delta_log");
    let entries: Vec<_> = store.list(Some(&log)).try_collect().await.expect("list");
    let mut retries = 0;
    for e in entries
        .iter()
        .filter(|e| e.location.as_ref().ends_with(".json"))
    {
        let bytes = store
            .get(&e.location)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("read");
        for line in String::from_utf8_lossy(&bytes).lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            if let Some(r) = v.pointer("/commitInfo/pgtrail/job/retries") {
                retries += r.as_u64().unwrap_or(0);
            }
        }
    }
    retries
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

async fn run(args: Arc<Args>, n: usize, latency: Duration) {
    let memory = Arc::new(InMemory::new());
    deltalake::logstore::object_store_factories().insert(
        Url::parse("memory://").expect("url"),
        Arc::new(SlowStore::new(memory.clone(), latency)),
    );
    let uri = "memory:///t".to_owned();
    // Created once, before the instances race to open it.
    drop(
        Committer::open(
            &uri,
            GROUP,
            10,
            Arc::new(Failpoints::parse("").expect("none")),
        )
        .await
        .expect("create"),
    );
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..n)
        .map(|p| tokio::spawn(instance(uri.clone(), p as i32, args.clone(), until)))
        .collect();
    let mut all = Vec::new();
    let mut slowest = usize::MAX;
    let mut in_time = 0;
    for t in tasks {
        let i = t.await.expect("instance");
        slowest = slowest.min(i.in_time);
        in_time += i.in_time;
        all.extend(i.latencies);
    }
    let elapsed = args.seconds as f64;
    all.sort();
    let commits = all.len();
    let retries = conflicts(&memory).await;
    println!(
        "instances {n:>2}  latency {:>4} ms  interval {:>5} ms: {:>6.2} commits/s ({:>5.2}/s the slowest instance), {:.2} retries per commit, latency median {:>5} ms, p95 {:>5} ms, max {:>5} ms, {:.0} rows/s",
        latency.as_millis(),
        args.interval.as_millis(),
        in_time as f64 / elapsed,
        slowest as f64 / elapsed,
        retries as f64 / commits.max(1) as f64,
        percentile(&all, 0.5).as_millis(),
        percentile(&all, 0.95).as_millis(),
        all.last().copied().unwrap_or_default().as_millis(),
        in_time as f64 * args.rows as f64 / elapsed,
    );
}

fn main() {
    let args = Arc::new(args());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for &latency in &args.latencies {
        for &n in &args.instances {
            rt.block_on(run(args.clone(), n, latency));
        }
    }
}
