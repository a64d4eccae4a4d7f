//! `pgtrail-processor jobs`: the job rows (`joblog.rs`), newest first, as a table or JSON:
//! which run wrote which offsets of which partition, when, how many records it consumed,
//! skipped and dead-lettered, how many rows it wrote, whether that reconciles; and each run's
//! start and end, with the error of a failed one.
//!
//! Owns [`JobLine`], [`logged_jobs`] (from the job-audit table) and [`table_jobs`] (from a
//! table's history, when there is no job-audit table). Invariants: one line per `job_key`.
//! Must not: write anything.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::delta::AuditTable;
use crate::error::ProcessorError;
use crate::lake::Lake;

/// Commits of a table's history read at most.
const HISTORY: usize = 10_000;

/// One job row.
#[derive(Debug, Clone, Serialize)]
pub struct JobLine {
    /// `commit`, `run_start` or `run_end`.
    pub kind: String,
    /// Table URI (commits).
    pub table: Option<String>,
    /// When.
    pub at: Option<DateTime<Utc>>,
    /// The facts (`job.rs`; a run's for run rows).
    pub job: Value,
}

impl JobLine {
    /// A failed run, or a commit whose facts do not reconcile.
    pub fn failed(&self) -> bool {
        self.job["status"] == "failed" || self.job["reconciled"] == false
    }
}

/// The rows of the job-audit table at `uri` newer than `since` (`Ok(None)`: no table).
pub async fn logged_jobs(
    uri: &str,
    storage: &Lake,
    since: Option<DateTime<Utc>>,
) -> Result<Option<Vec<JobLine>>, ProcessorError> {
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::TimestampMicrosecondType;
    let Some(table) = AuditTable::open_existing_with(uri, storage.options_for(uri)).await? else {
        return Ok(None);
    };
    let batches = crate::status::read_table(&table).await?;
    let text = |n: &str| crate::status::strings(&batches, n);
    let (keys, kinds, tables, facts) = (
        text("job_key"),
        text("kind"),
        text("table_uri"),
        text("facts"),
    );
    let mut times = Vec::new();
    for b in &batches {
        if let Some(c) = b.column_by_name("at") {
            let t = c.as_primitive::<TimestampMicrosecondType>();
            times.extend((0..t.len()).map(|i| {
                t.is_valid(i)
                    .then(|| DateTime::from_timestamp_micros(t.value(i)))
                    .flatten()
            }));
        }
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for i in 0..keys.len() {
        let at = times.get(i).copied().flatten();
        if since.is_some_and(|s| at.is_some_and(|a| a < s)) || !seen.insert(keys[i].clone()) {
            continue;
        }
        out.push(JobLine {
            kind: kinds[i].clone().unwrap_or_default(),
            table: tables[i].clone(),
            at,
            job: facts[i]
                .as_deref()
                .and_then(|f| serde_json::from_str(f).ok())
                .unwrap_or(Value::Null),
        });
    }
    Ok(Some(out))
}

/// The job facts of `uri`'s commits newer than `since`, newest first (`Ok(None)`: no table).
pub async fn table_jobs(
    uri: &str,
    storage: &Lake,
    since: Option<DateTime<Utc>>,
) -> Result<Option<Vec<JobLine>>, ProcessorError> {
    let Some(table) = AuditTable::open_existing_with(uri, storage.options_for(uri)).await? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (ts, mut meta) in table.recent_metadata(HISTORY).await? {
        let at = ts.and_then(DateTime::from_timestamp_millis);
        if since.is_some_and(|s| at.is_some_and(|a| a < s)) {
            break;
        }
        let job = meta
            .as_object_mut()
            .and_then(|m| m.remove("job"))
            .unwrap_or(Value::Null);
        if job.is_null() {
            continue;
        }
        out.push(JobLine {
            kind: "commit".into(),
            table: Some(uri.to_owned()),
            at,
            job,
        });
    }
    Ok(Some(out))
}

fn offsets(job: &Value) -> String {
    job["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{}:{}..={}",
                p["partition"], p["first_offset"], p["last_offset"]
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl std::fmt::Display for JobLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let j = &self.job;
        let at = self.at.map_or("-".to_owned(), |a| a.to_rfc3339());
        let s = |k: &str| j[k].as_str().unwrap_or("-").to_owned();
        if self.kind != "commit" {
            let what = self.kind.strip_prefix("run_").unwrap_or(&self.kind);
            write!(
                f,
                "{at} {} run {} {} {what} {}",
                s("id"),
                s("run"),
                s("mode"),
                s("status")
            )?;
            if what == "end" {
                write!(
                    f,
                    ": consumed {} rows {} dead {} in {} ms, exit {}",
                    j["records_consumed"],
                    j["rows_written"],
                    j["dead_letters"],
                    j["duration_ms"],
                    j["exit_code"]
                )?;
            }
            if let Some(e) = j["error"].as_str() {
                write!(f, " error: {e}")?;
            }
            return writeln!(f);
        }
        let table = self.table.as_deref().unwrap_or("-");
        let table = table.rsplit('/').next().unwrap_or(table);
        writeln!(
            f,
            "{at} {table} v{} run {} {} {}: consumed {} rows {} skipped {} dead {} held {}->{} reconciled {} in {} ms, retries {} [{}]",
            j["table_version"],
            s("run"),
            s("mode"),
            s("status"),
            j["records_consumed"],
            j["rows_written"],
            j["skipped"],
            j["dead_letters"],
            j["held_before"],
            j["held_after"],
            j["reconciled"],
            j["duration_ms"],
            j["retries"],
            offsets(j),
        )
    }
}
