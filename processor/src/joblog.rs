//! The job-audit table `pgtrail_jobs`: one row per commit of the audit tables and one per run
//! start and end, for auditors' first question ("show me that every record that came in was
//! written, when, by which job, and what failed").
//!
//! Owns [`JobLog`] (syncing and writing), [`JobRow`] and [`jobs_schema`]. Commit rows are
//! mirrored from the audit tables' own commit info (the job facts of `job.rs`, atomic with
//! the data), never written beside a data commit: a crash between a data commit and its row
//! is repaired by the next sync. Invariants: a table's commits are mirrored in version order;
//! the jobs table commit adding them carries the `txn` `pgtrail-jobs-<xxh3 of the table URI>`
//! whose version is the last version mirrored, so syncs that race (several processors) or
//! whose outcome was unknown never add a commit's row twice; run rows are keyed
//! `run/<run id>/<start|end>` and a retried write may add one twice (readers keep one per
//! `job_key`). Must not: be on the consumer's path (it runs beside it, best effort), or hold
//! record contents (job facts are counts and coordinates).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::Value;
use tracing::{info, warn};

use crate::delta::{AuditTable, METADATA_KEY};
use crate::error::ProcessorError;
use crate::lake::Lake;

/// `[jobs]`: the job-audit table.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// Where the table is (local directory or object-store URI), or `none` for no table (the
    /// commits still carry their facts). Default `<lake>/pgtrail_jobs`.
    pub table: Option<String>,
    /// Time between syncs of the table from the audit tables' commits while the processor
    /// runs (it also syncs at start and at a graceful stop). Default `30s`.
    #[serde(deserialize_with = "crate::lag::config::duration")]
    pub sync_interval: std::time::Duration,
}

impl Default for JobsSection {
    fn default() -> Self {
        JobsSection {
            table: None,
            sync_interval: std::time::Duration::from_secs(30),
        }
    }
}

impl JobsSection {
    /// The table's URI for a lake rooted at `lake` (`None`: turned off).
    pub fn uri(&self, lake: &str) -> Option<String> {
        match self.table.as_deref() {
            Some("none") => None,
            Some(t) => Some(t.to_owned()),
            None => Some(format!("{}/pgtrail_jobs", lake.trim_end_matches('/'))),
        }
    }
}

/// Commits of one table mirrored per sync at most (a long history is caught up over syncs).
const PER_SYNC: i64 = 2_000;

/// Attempts of a sync whose commit raced another writer of the jobs table.
const ATTEMPTS: u32 = 5;

/// The jobs table's schema.
pub fn jobs_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    let i = |n: &str| Field::new(n, DataType::Int64, true);
    let ts = |n: &str| {
        Field::new(
            n,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new("job_key", DataType::Utf8, false),
        s("kind"),
        ts("at"),
        s("job_id"),
        s("run_id"),
        s("mode"),
        s("host"),
        s("processor_version"),
        s("table_uri"),
        i("table_version"),
        s("status"),
        s("error"),
        i("records_consumed"),
        i("rows_written"),
        i("rows_removed"),
        i("dead_letters"),
        i("late_outcomes"),
        i("bytes"),
        i("rows_before"),
        i("rows_after"),
        ts("started"),
        ts("ended"),
        i("duration_ms"),
        i("retries"),
        Field::new("reconciled", DataType::Boolean, true),
        s("facts"),
    ]))
}

/// One row of the jobs table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobRow {
    /// `commit/<table>/<version>` or `run/<run id>/<start|end>`.
    pub job_key: String,
    /// `commit`, `run_start` or `run_end`.
    pub kind: String,
    /// When (commit time; run start or end).
    pub at: Option<DateTime<Utc>>,
    /// The facts (`job.rs`; for runs: what the run reports).
    pub facts: Value,
    /// The table (commits).
    pub table_uri: Option<String>,
    /// Its version (commits).
    pub table_version: Option<i64>,
}

impl JobRow {
    /// The row of `table`'s commit `version` whose commit info holds `facts`.
    pub fn commit(table: &str, version: i64, at: Option<DateTime<Utc>>, facts: Value) -> JobRow {
        JobRow {
            job_key: format!("commit/{table}/{version}"),
            kind: "commit".into(),
            at,
            facts,
            table_uri: Some(table.to_owned()),
            table_version: Some(version),
        }
    }

    /// A run's start (`end: false`) or end row; `facts` holds at least `id`, `run`, `mode`,
    /// `status` (`running`, `succeeded` or `failed`) and `error` when it failed.
    pub fn run(run: &str, end: bool, facts: Value) -> JobRow {
        let which = if end { "end" } else { "start" };
        JobRow {
            job_key: format!("run/{run}/{which}"),
            kind: format!("run_{which}"),
            at: Some(Utc::now()),
            facts,
            table_uri: None,
            table_version: None,
        }
    }
}

fn to_batch(rows: &[JobRow]) -> Result<RecordBatch, ProcessorError> {
    let text = |f: &dyn Fn(&JobRow) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let fact = |k: &'static str| -> ArrayRef {
        text(&move |r: &JobRow| r.facts.get(k).and_then(Value::as_str).map(str::to_owned))
    };
    let int = |k: &'static str| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(|r| r.facts.get(k).and_then(Value::as_i64))
                .collect::<Int64Array>(),
        )
    };
    let time = |f: &dyn Fn(&JobRow) -> Option<DateTime<Utc>>| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(|r| f(r).map(|t| t.timestamp_micros()))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        )
    };
    let parsed = |k: &'static str| {
        move |r: &JobRow| {
            r.facts
                .get(k)
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
        }
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|r| Some(r.job_key.clone())),
        text(&|r| Some(r.kind.clone())),
        time(&|r| r.at),
        fact("id"),
        fact("run"),
        fact("mode"),
        fact("host"),
        fact("processor_version"),
        text(&|r| r.table_uri.clone()),
        Arc::new(rows.iter().map(|r| r.table_version).collect::<Int64Array>()),
        fact("status"),
        fact("error"),
        int("records_consumed"),
        int("rows_written"),
        int("rows_removed"),
        int("dead_letters"),
        int("late_outcomes"),
        int("bytes"),
        int("rows_before"),
        int("rows_after"),
        time(&parsed("started")),
        time(&parsed("ended")),
        int("duration_ms"),
        int("retries"),
        Arc::new(
            rows.iter()
                .map(|r| r.facts.get("reconciled").and_then(Value::as_bool))
                .collect::<BooleanArray>(),
        ),
        text(&|r| Some(r.facts.to_string())),
    ];
    RecordBatch::try_new(jobs_schema(), columns).map_err(|e| ProcessorError::Internal {
        reason: format!("job rows: {e}"),
    })
}

/// The `txn` application id recording how far `table`'s commits are mirrored (one per table
/// whatever spelling of its location names it: `/lake/t`, `file:///lake/t/`).
pub fn mirror_app_id(table: &str) -> String {
    let url =
        deltalake::ensure_table_uri(table).map_or_else(|_| table.to_owned(), |u| u.to_string());
    format!(
        "pgtrail-jobs-{:016x}",
        xxhash_rust::xxh3::xxh3_64(url.trim_end_matches('/').as_bytes())
    )
}

/// The job facts and time of a commit entry (its newline-delimited actions).
fn commit_facts(entry: &[u8]) -> Option<(Option<DateTime<Utc>>, Value)> {
    for line in entry.split(|b| *b == b'\n') {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        let Some(info) = v.get("commitInfo") else {
            continue;
        };
        let at = info
            .get("timestamp")
            .and_then(Value::as_i64)
            .and_then(DateTime::from_timestamp_millis);
        let job = info.get(METADATA_KEY)?.get("job")?.clone();
        return Some((at, job));
    }
    None
}

/// The jobs table of a lake.
pub struct JobLog {
    uri: String,
    lake: Lake,
    /// Run rows waiting for the next write.
    queued: Vec<JobRow>,
}

impl JobLog {
    /// The jobs table at `uri`.
    pub fn new(uri: &str, lake: Lake) -> JobLog {
        JobLog {
            uri: uri.to_owned(),
            lake,
            queued: Vec::new(),
        }
    }

    /// Queues a run row for the next [`JobLog::sync`].
    pub fn queue(&mut self, row: JobRow) {
        self.queued.push(row);
    }

    async fn open(&self) -> Result<AuditTable, ProcessorError> {
        AuditTable::open_or_create_as(
            &self.uri,
            self.lake.options_for(&self.uri),
            &jobs_schema(),
            &[],
            10,
        )
        .await
    }

    /// Mirrors the commits of `tables` not yet in the jobs table, and writes the queued run
    /// rows, in one commit; the number of rows written.
    pub async fn sync(&mut self, tables: &[String]) -> Result<usize, ProcessorError> {
        let mut jobs = self.open().await?;
        for attempt in 1..=ATTEMPTS {
            jobs.refresh().await?;
            let mut rows = std::mem::take(&mut self.queued);
            let queued = rows.len();
            let mut txns = BTreeMap::new();
            for table in tables {
                let id = mirror_app_id(table);
                let last = jobs.txn_version(&id).await?.unwrap_or(-1);
                if let Some(upto) = self.mirror(table, last, &mut rows).await? {
                    txns.insert(id, upto);
                }
            }
            if rows.is_empty() && txns.is_empty() {
                return Ok(0);
            }
            let n = rows.len();
            let adds = jobs.upload(&[to_batch(&rows)?]).await?;
            let meta = serde_json::json!({"jobs_sync": {"rows": n}});
            match jobs.commit_log(adds, &txns, meta).await {
                Ok(version) => {
                    if let Err(e) = jobs.maintain(version).await {
                        warn!(table = %self.uri, error = %e, "Jobs table maintenance failed (retried at the next checkpoint).");
                    }
                    info!(table = %self.uri, version, rows = n, "Job rows written.");
                    return Ok(n);
                }
                Err(e) if attempt < ATTEMPTS && e.class() == crate::ErrorClass::Retryable => {
                    rows.truncate(queued);
                    self.queued = rows;
                    warn!(table = %self.uri, attempt, error = %e, "Job rows raced another writer; trying again.");
                }
                Err(e) => {
                    rows.truncate(queued);
                    self.queued = rows;
                    return Err(e);
                }
            }
        }
        Ok(0)
    }

    /// Appends to `rows` the commit rows of `table`'s versions after `last`; the last version
    /// looked at (`None`: nothing new, or no table).
    async fn mirror(
        &self,
        table: &str,
        last: i64,
        rows: &mut Vec<JobRow>,
    ) -> Result<Option<i64>, ProcessorError> {
        let Some(source) =
            AuditTable::open_existing_with(table, self.lake.options_for(table)).await?
        else {
            return Ok(None);
        };
        let Some(current) = source.version().and_then(|v| i64::try_from(v).ok()) else {
            return Ok(None);
        };
        if current <= last {
            return Ok(None);
        }
        let upto = current.min(last + PER_SYNC);
        let store = source.delta().log_store();
        for version in (last + 1)..=upto {
            let entry = store.read_commit_entry(version as u64).await.map_err(|e| {
                ProcessorError::Delta {
                    table: table.to_owned(),
                    operation: "read commit",
                    source: Box::new(e),
                }
            })?;
            // Entries removed by log cleanup, and commits without job facts (creation,
            // maintenance), have no row.
            if let Some((at, mut facts)) = entry.as_deref().and_then(commit_facts) {
                facts["table_version"] = Value::from(version);
                rows.push(JobRow::commit(table, version, at, facts));
            }
        }
        Ok(Some(upto))
    }
}

/// The audit tables of `cfg`: those named in `[tables]` and every table under the lake.
pub async fn audit_tables(cfg: &crate::Config, lake: &Lake) -> Result<Vec<String>, ProcessorError> {
    let mut tables: Vec<String> = cfg.tables.values().cloned().collect();
    tables.extend(crate::status::find_tables(&cfg.lake, lake).await?);
    tables.sort();
    tables.dedup();
    Ok(tables)
}

/// What a run reports in its start and end rows.
#[derive(Debug, Clone, Default)]
pub struct RunEnd {
    /// `succeeded` or `failed`.
    pub status: &'static str,
    /// The error of a failed run (errors carry coordinates and reasons, never contents).
    pub error: Option<String>,
    /// The process exit code.
    pub exit_code: u8,
    /// Messages consumed.
    pub records_consumed: u64,
    /// Rows written.
    pub rows_written: u64,
    /// Dead letters.
    pub dead_letters: u64,
}

/// A run's job rows: its start row at once, the audit tables' commits every `[jobs]
/// sync_interval` beside the consumer, and its end row at [`Recorder::finish`].
pub struct Recorder {
    log: Arc<tokio::sync::Mutex<JobLog>>,
    facts: Value,
    started: DateTime<Utc>,
    stop: tokio_util::sync::CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    cfg: crate::Config,
}

impl Recorder {
    /// Starts recording `mode`'s run (`None` when `[jobs] table = "none"`).
    pub fn start(
        cfg: &crate::Config,
        mode: crate::job::JobMode,
        metrics: crate::telemetry::Metrics,
    ) -> Result<Option<Recorder>, ProcessorError> {
        let Some(uri) = cfg.jobs.uri(&cfg.lake) else {
            return Ok(None);
        };
        let lake = Lake::from_section(&cfg.storage)?;
        let started = Utc::now();
        let facts = serde_json::json!({
            "id": match mode {
                crate::job::JobMode::Incremental => format!("pgtrail-processor/{}", cfg.group),
                crate::job::JobMode::Historical => format!("pgtrail-replay/{}", cfg.group),
            },
            "run": *crate::job::RUN_ID,
            "mode": mode.as_str(),
            "processor_version": env!("CARGO_PKG_VERSION"),
            "host": crate::job::writer_id(),
            "started": started.to_rfc3339(),
            "status": "running",
        });
        let mut log = JobLog::new(&uri, lake.clone());
        log.queue(JobRow::run(&crate::job::RUN_ID, false, facts.clone()));
        let log = Arc::new(tokio::sync::Mutex::new(log));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = (mode == crate::job::JobMode::Incremental).then(|| {
            let (log, stop, cfg, interval) = (
                log.clone(),
                stop.clone(),
                cfg.clone(),
                cfg.jobs.sync_interval,
            );
            tokio::spawn(async move {
                loop {
                    sync_once(&log, &cfg, &lake, &metrics).await;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(interval) => {}
                    }
                }
            })
        });
        Ok(Some(Recorder {
            log,
            facts,
            started,
            stop,
            task,
            cfg: cfg.clone(),
        }))
    }

    /// Writes the end row and a last sync of `tables` (default: the configuration's), within
    /// 30 s (best effort: a lake that is away loses the end row, never a commit's row).
    pub async fn finish(mut self, end: RunEnd, tables: Option<Vec<String>>) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let ended = Utc::now();
        let mut facts = self.facts.clone();
        facts["status"] = Value::from(end.status);
        facts["error"] = end.error.map_or(Value::Null, Value::from);
        facts["exit_code"] = Value::from(end.exit_code);
        facts["records_consumed"] = Value::from(end.records_consumed);
        facts["rows_written"] = Value::from(end.rows_written);
        facts["dead_letters"] = Value::from(end.dead_letters);
        facts["ended"] = Value::from(ended.to_rfc3339());
        facts["duration_ms"] = Value::from((ended - self.started).num_milliseconds());
        let mut log = self.log.lock().await;
        log.queue(JobRow::run(&crate::job::RUN_ID, true, facts));
        let work = async {
            let lake = log.lake.clone();
            let tables = match tables {
                Some(t) => t,
                None => audit_tables(&self.cfg, &lake).await?,
            };
            log.sync(&tables).await
        };
        match tokio::time::timeout(std::time::Duration::from_secs(30), work).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "The run's end row could not be written."),
            Err(_) => warn!("The run's end row could not be written within 30 s."),
        }
    }
}

async fn sync_once(
    log: &tokio::sync::Mutex<JobLog>,
    cfg: &crate::Config,
    lake: &Lake,
    metrics: &crate::telemetry::Metrics,
) {
    let result = async {
        let tables = audit_tables(cfg, lake).await?;
        log.lock().await.sync(&tables).await
    }
    .await;
    if let Err(e) = result {
        metrics.job_log_failures.inc();
        warn!(error = %e, "Syncing the job-audit table failed (retried).");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_commit_entrys_facts_are_found() {
        let entry = br#"{"add":{"path":"a.parquet"}}
{"commitInfo":{"timestamp":1800000000000,"pgtrail":{"group":"g","job":{"id":"pgtrail-processor/g","records_consumed":5,"reconciled":true}}}}
"#;
        let (at, facts) = commit_facts(entry).unwrap();
        assert_eq!(at.unwrap().timestamp(), 1_800_000_000);
        assert_eq!(facts["records_consumed"], 5);
        assert!(commit_facts(br#"{"commitInfo":{"operation":"CREATE TABLE"}}"#).is_none());
    }

    #[test]
    fn rows_become_a_batch_of_the_schema() {
        let facts = json!({"id": "pgtrail-processor/g", "run": "ab", "mode": "incremental",
            "status": "committed", "records_consumed": 10, "rows_written": 3, "reconciled": true,
            "started": "2026-12-02T10:00:00Z", "ended": "2026-12-02T10:00:01Z"});
        let rows = vec![
            JobRow::commit("/lake/t", 4, None, facts),
            JobRow::run(
                "ab",
                true,
                json!({"status": "failed", "error": "Kafka: down"}),
            ),
        ];
        let b = to_batch(&rows).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(b.schema(), jobs_schema());
        let keys = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(keys.value(0), "commit//lake/t/4");
        assert_eq!(keys.value(1), "run/ab/end");
        assert_ne!(mirror_app_id("/a"), mirror_app_id("/b"));
        assert_eq!(mirror_app_id("/lake/t"), mirror_app_id("file:///lake/t/"));
    }
}
