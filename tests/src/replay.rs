//! Helpers of the replay and job-audit tests: table positions, waiting for a live processor to
//! catch up, running `pgtrail-processor replay`, and checking the job-audit table against the
//! tables' own commits.
//!
//! Owns [`positions`], [`wait_caught_up`], [`replay`] and [`assert_job_rows`]. Must not:
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

/// The low watermarks of `partitions` of `topic`.
pub fn lows(brokers: &str, topic: &str, partitions: &[i32]) -> Vec<i64> {
    watermarks(brokers, topic, partitions)
        .into_iter()
        .map(|w| w.0)
        .collect()
}

/// The high watermarks of `partitions` of `topic`.
pub fn highs(brokers: &str, topic: &str, partitions: &[i32]) -> Vec<i64> {
    watermarks(brokers, topic, partitions)
        .into_iter()
        .map(|w| w.1)
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

/// Waits until the table holds every record of `topic` up to the high watermark (as Tansu
/// reports it) for `group`; the positions then.
pub fn wait_caught_up(
    uri: &str,
    group: &str,
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Vec<i64> {
    let parts = crate::consume::partitions(brokers, topic);
    let deadline = Instant::now() + timeout;
    loop {
        let pos = positions(uri, group, topic, &parts);
        let high = highs(brokers, topic, &parts);
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
