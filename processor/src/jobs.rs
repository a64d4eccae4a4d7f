//! `pgtrail-processor jobs`: the job facts the tables' commits record (`job.rs`), newest
//! first, as a table or JSON: which run wrote which offsets of which partition, when, how
//! many records it consumed, skipped and dead-lettered, and how many rows it wrote.
//!
//! Owns [`JobLine`] and [`table_jobs`]. Invariants: read from the Delta history only (the
//! commits are the truth; nothing else is consulted). Must not: write anything.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::delta::AuditTable;
use crate::error::ProcessorError;
use crate::lake::Lake;

/// Commits of a table's history read at most.
const HISTORY: usize = 10_000;

/// One commit's job facts.
#[derive(Debug, Clone, Serialize)]
pub struct JobLine {
    /// Table URI.
    pub table: String,
    /// Commit time.
    pub at: Option<DateTime<Utc>>,
    /// The `job` object of the commit (`job.rs`).
    pub job: Value,
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
            table: uri.to_owned(),
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
        let table = self.table.rsplit('/').next().unwrap_or(&self.table);
        writeln!(
            f,
            "{at} {table} v{} run {} {} {}: consumed {} rows {} skipped {} dead {} in {} ms, retries {} [{}]",
            j["table_version"],
            j["run"].as_str().unwrap_or("-"),
            j["mode"].as_str().unwrap_or("-"),
            j["status"].as_str().unwrap_or("-"),
            j["records_consumed"],
            j["rows_written"],
            j["skipped"],
            j["dead_letters"],
            j["duration_ms"],
            j["retries"],
            offsets(j),
        )
    }
}
