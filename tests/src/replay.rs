//! Helpers of the replay and job-audit tests: table positions, waiting for a live processor to
//! catch up, running `pgtrail-processor replay`, and checking the job-audit table against the
//! tables' own commits.
//!
//! Owns [`positions`], [`event_times`], [`wait_caught_up`], [`replay`] and [`assert_job_rows`]. Must not:
//! decide expectations with product code (the product is only used to read tables).

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use processor::delta::AuditTable;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::lake::runtime;
use crate::process::binary;

/// The table's `txn` version of each of `partitions` of `topic` for `group`.
pub fn positions(uri: &str, group: &str, topic: &str, partitions: &[i32]) -> Vec<Option<i64>> {
    let rt = runtime();
    let Some(table) = rt
        .block_on(AuditTable::open_existing(uri))
        .expect("open table")
    else {
        return vec![None; partitions.len()];
    };
    partitions
        .iter()
        .map(|p| {
            let tp = processor::topic_partition::TopicPartition::new(topic, *p);
            rt.block_on(table.txn_version(&processor::state::offset_app_id(group, &tp)))
                .expect("txn")
        })
        .collect()
}

/// Every row of the table at `uri` as (Kafka partition, offset, `event_time` in microseconds;
/// rows without one are left out).
pub fn event_times(uri: &str) -> Vec<(i32, i64, i64)> {
    use processor::delta::arrow::array::{Array, AsArray};
    use processor::delta::arrow::datatypes::{Int32Type, Int64Type, TimestampMicrosecondType};
    let rt = runtime();
    let table = rt
        .block_on(AuditTable::open_existing(uri))
        .expect("open table")
        .unwrap_or_else(|| panic!("no table at {uri}"));
    let batches = rt
        .block_on(processor::status::read_table(&table))
        .expect("read table");
    let mut out = Vec::new();
    for b in &batches {
        let column = |n: &str| b.column_by_name(n).unwrap_or_else(|| panic!("column {n}"));
        let (ps, os, ts) = (
            column("kafka_partition").as_primitive::<Int32Type>(),
            column("kafka_offset").as_primitive::<Int64Type>(),
            column("event_time").as_primitive::<TimestampMicrosecondType>(),
        );
        out.extend(
            (0..b.num_rows())
                .filter(|i| !ts.is_null(*i))
                .map(|i| (ps.value(i), os.value(i), ts.value(i))),
        );
    }
    out
}

/// The low watermarks of `partitions` of `topic`.
pub fn lows(brokers: &str, topic: &str, partitions: &[i32]) -> Vec<i64> {
    watermarks(brokers, topic, partitions)
        .into_iter()
        .map(|w| w.0)
        .collect()
}

/// The high watermarks of `partitions` of `topic` as Tansu reports them (0.6: the last
/// record batch's first offset + 1).
pub fn highs(brokers: &str, topic: &str, partitions: &[i32]) -> Vec<i64> {
    watermarks(brokers, topic, partitions)
        .into_iter()
        .map(|w| w.1)
        .collect()
}

/// One past the last offset of each of `partitions` of `topic`, read: the last record batch
/// (from the reported high watermark - 1) is read to its end.
pub fn ends(brokers: &str, topic: &str, partitions: &[i32]) -> Vec<i64> {
    use rdkafka::Message;
    let reported = highs(brokers, topic, partitions);
    partitions
        .iter()
        .zip(reported)
        .map(|(p, high)| {
            if high == 0 {
                return 0;
            }
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", "pgtrail-tests-ends")
                .set("enable.partition.eof", "true")
                .create()
                .expect("client");
            let mut tpl = rdkafka::TopicPartitionList::new();
            tpl.add_partition_offset(topic, *p, rdkafka::Offset::Offset(high - 1))
                .expect("offset");
            c.assign(&tpl).expect("assign");
            let mut last = high - 1;
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                match c.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => last = last.max(m.offset()),
                    Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                    _ => {}
                }
            }
            last + 1
        })
        .collect()
}

fn watermarks(brokers: &str, topic: &str, partitions: &[i32]) -> Vec<(i64, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("client");
    partitions
        .iter()
        .map(|p| {
            c.fetch_watermarks(topic, *p, Duration::from_secs(10))
                .expect("watermarks")
        })
        .collect()
}

/// Waits until the table holds every record of `topic` (to its end when called: the topic must
/// not grow meanwhile) for `group`; the positions then.
pub fn wait_caught_up(
    uri: &str,
    group: &str,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Vec<i64> {
    let parts = crate::consume::partitions(brokers, topic);
    let deadline = Instant::now() + timeout;
    // The true ends, read once (the topic does not grow meanwhile): Tansu's reported high
    // watermark (the last batch's first offset + 1) let this return before the table had
    // read the last batch.
    let high = ends(brokers, topic, &parts);
    loop {
        let pos = positions(uri, group, topic, &parts);
        if pos
            .iter()
            .zip(&high)
            .all(|(p, h)| p.is_some_and(|p| p + 1 >= *h))
        {
            return pos.into_iter().map(|p| p.unwrap_or(-1)).collect();
        }
        assert!(
            Instant::now() < deadline,
            "not caught up: positions {pos:?}, highs {high:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs `pgtrail-processor replay` with `args`: exit code, standard output, standard error.
pub fn replay(args: &[String]) -> (i32, String, String) {
    let out = Command::new(binary("pgtrail-processor"))
        .arg("replay")
        .args(args)
        .env("PGTRAIL_LOG", "info,buoyant_kernel=off,deltalake_core=warn")
        .stdin(Stdio::null())
        .output()
        .expect("run replay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The job facts of every commit of the table at `uri` that has them: version → facts, read
/// from the log entries themselves.
pub fn commit_facts(uri: &str) -> BTreeMap<i64, serde_json::Value> {
    let dir = std::path::Path::new(uri).join("_delta_log");
    let mut out = BTreeMap::new();
    // No table yet: no commits.
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(v) = name
            .strip_suffix(".json")
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        let text = std::fs::read_to_string(e.path()).expect("log entry");
        for line in text.lines() {
            let v_json: serde_json::Value = serde_json::from_str(line).expect("json line");
            if let Some(job) = v_json.pointer("/commitInfo/pgtrail/job") {
                out.insert(v, job.clone());
            }
        }
    }
    out
}

/// The rows of the job-audit table at `jobs`: job key → (kind, facts).
pub fn job_rows(jobs: &str) -> HashMap<String, (String, serde_json::Value)> {
    let rt = runtime();
    let table = rt
        .block_on(AuditTable::open_existing(jobs))
        .expect("open jobs table")
        .unwrap_or_else(|| panic!("no job-audit table at {jobs}"));
    let batches = rt
        .block_on(processor::status::read_table(&table))
        .expect("read");
    let keys = processor::status::strings(&batches, "job_key");
    let kinds = processor::status::strings(&batches, "kind");
    let facts = processor::status::strings(&batches, "facts");
    let mut out = HashMap::new();
    for i in 0..keys.len() {
        let key = keys[i].clone().expect("job_key");
        let f = serde_json::from_str(facts[i].as_deref().unwrap_or("null")).expect("facts");
        out.insert(key, (kinds[i].clone().unwrap_or_default(), f));
    }
    out
}

/// Every commit of the table at `uri` with job facts has exactly its row in the job-audit
/// table at `jobs`, and every one reconciles; returns the number of commits checked.
pub fn assert_job_rows(uri: &str, jobs: &str) -> usize {
    let commits = commit_facts(uri);
    let rows = job_rows(jobs);
    let table_url = format!("commit/{uri}/");
    let mirrored: Vec<&String> = rows.keys().filter(|k| k.starts_with(&table_url)).collect();
    assert_eq!(
        mirrored.len(),
        commits.len(),
        "one job row per commit of {uri}: {} rows, {} commits",
        mirrored.len(),
        commits.len()
    );
    for (v, facts) in &commits {
        let key = format!("commit/{uri}/{v}");
        let (kind, row) = rows.get(&key).unwrap_or_else(|| panic!("no job row {key}"));
        assert_eq!(kind, "commit");
        assert_eq!(row["records_consumed"], facts["records_consumed"], "{key}");
        assert_eq!(row["table_version"], *v, "{key}");
        assert_eq!(
            facts["reconciled"], true,
            "commit {v} of {uri} reconciles: {facts:#}"
        );
    }
    commits.len()
}
