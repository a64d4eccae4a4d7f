//! One server's table as the consumer sees it: where each partition resumes, and commits that
//! are fenced against other instances and retried on conflicts.
//!
//! Owns [`TableSink`]. Invariants: a commit includes a partition only while the table still
//! holds the `txn` version this instance last read or wrote for it (otherwise another instance
//! owns it now: the partition is reported fenced and nothing of it is written); a conflicting
//! commit is re-checked and retried, never blindly repeated; Delta's own conflict checker also
//! rejects a concurrent `txn` for the same application id. Must not: talk to Kafka.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use deltalake::arrow::record_batch::RecordBatch;
use serde_json::json;
use tracing::{info, warn};

use crate::delta::{AuditTable, app_id};
use crate::error::{ErrorClass, ProcessorError};
use crate::partition::PartitionCheckpoint;
use crate::telemetry::Metrics;

/// Commits searched for a partition's checkpoint on assignment.
const HISTORY_LIMIT: usize = 2000;

/// One partition's part of a commit.
#[derive(Debug)]
pub struct PartitionCommit {
    /// The checkpoint (its `version` becomes the `txn` version).
    pub checkpoint: PartitionCheckpoint,
    /// The `txn` version this instance expects the table to hold now.
    pub expected: Option<i64>,
    /// The partition's rows.
    pub batches: Vec<RecordBatch>,
}

impl PartitionCommit {
    /// Rows in the commit.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// What a commit did.
#[derive(Debug, PartialEq, Eq)]
pub enum CommitResult {
    /// Committed as this Delta version.
    Committed(u64),
    /// These partitions were written by another instance: nothing was committed; drop them
    /// and commit the rest again.
    Fenced(Vec<i32>),
}

/// A server's audit table.
pub struct TableSink {
    table: AuditTable,
    group: String,
    /// Commits since this sink was opened.
    pub commits: u64,
}

impl TableSink {
    /// Opens (or creates) the table at `uri`.
    pub async fn open(
        uri: &str,
        group: &str,
        checkpoint_interval: u64,
    ) -> Result<TableSink, ProcessorError> {
        Ok(TableSink {
            table: AuditTable::open_or_create_with(uri, checkpoint_interval).await?,
            group: group.to_owned(),
            commits: 0,
        })
    }

    /// The table URI.
    pub fn uri(&self) -> &str {
        self.table.uri()
    }

    /// Where `topic`/`partition` resumes: the `txn` version in the table and the checkpoint
    /// committed with it (`None` when the table has none for it, e.g. log cleaned up).
    pub async fn resume(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<(Option<i64>, Option<PartitionCheckpoint>), ProcessorError> {
        self.table.refresh().await?;
        let version = self
            .table
            .txn_version(&app_id(&self.group, topic, partition))
            .await?;
        let Some(v) = version else {
            return Ok((None, None));
        };
        for (_, meta) in self.table.recent_metadata(HISTORY_LIMIT).await? {
            if meta.get("group").and_then(|g| g.as_str()) != Some(self.group.as_str()) {
                continue;
            }
            let Some(parts) = meta.get("partitions").and_then(|p| p.as_array()) else {
                continue;
            };
            for p in parts {
                if let Ok(cp) = serde_json::from_value::<PartitionCheckpoint>(p.clone())
                    && cp.topic == topic
                    && cp.partition == partition
                    && cp.version == v
                {
                    return Ok((Some(v), Some(cp)));
                }
            }
        }
        warn!(
            topic,
            partition,
            version = v,
            "No checkpoint found with the txn version: resuming without dedup memory."
        );
        Ok((Some(v), None))
    }

    /// Commits `parts` as one Delta version, fenced and retried (`attempts` at most).
    pub async fn commit(
        &mut self,
        parts: &[PartitionCommit],
        attempts: u32,
        metrics: &Metrics,
    ) -> Result<CommitResult, ProcessorError> {
        let label = Metrics::table(self.uri());
        let started = Instant::now();
        let mut txns = BTreeMap::new();
        let mut checkpoints = Vec::new();
        let mut batches: Vec<RecordBatch> = Vec::new();
        for p in parts {
            let cp = &p.checkpoint;
            txns.insert(app_id(&self.group, &cp.topic, cp.partition), cp.version);
            checkpoints.push(cp);
            batches.extend(p.batches.iter().cloned());
        }
        let rows: usize = parts.iter().map(PartitionCommit::rows).sum();
        let metadata = json!({ "group": self.group, "partitions": checkpoints });
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Fencing: the table must still hold what this instance last saw for each partition.
            self.table.refresh().await?;
            let mut lost = Vec::new();
            for p in parts {
                let id = app_id(&self.group, &p.checkpoint.topic, p.checkpoint.partition);
                let now = self.table.txn_version(&id).await?;
                if now != p.expected {
                    warn!(
                        topic = p.checkpoint.topic,
                        partition = p.checkpoint.partition,
                        expected = ?p.expected,
                        found = ?now,
                        "Another instance committed this partition: dropping it unwritten."
                    );
                    lost.push(p.checkpoint.partition);
                }
            }
            if !lost.is_empty() {
                return Ok(CommitResult::Fenced(lost));
            }
            match self
                .table
                .commit(batches.clone(), &txns, Some(metadata.clone()))
                .await
            {
                Ok(version) => {
                    failpoint_after_commit();
                    self.commits += 1;
                    metrics.commits.get_or_create(&label).inc();
                    metrics
                        .rows_written
                        .get_or_create(&label)
                        .inc_by(rows as u64);
                    metrics
                        .delta_version
                        .get_or_create(&label)
                        .set(i64::try_from(version).unwrap_or(i64::MAX));
                    metrics
                        .commit_duration_seconds
                        .get_or_create(&label)
                        .observe(started.elapsed().as_secs_f64());
                    let offsets: Vec<String> = checkpoints
                        .iter()
                        .map(|c| format!("{}:{}", c.partition, c.version))
                        .collect();
                    info!(
                        table = self.uri(),
                        version,
                        rows,
                        duration_ms = started.elapsed().as_millis() as u64,
                        offsets = offsets.join(","),
                        "Committed Delta version."
                    );
                    return Ok(CommitResult::Committed(version));
                }
                Err(e) if e.class() == ErrorClass::Retryable && attempt < attempts => {
                    metrics.commit_conflicts.get_or_create(&label).inc();
                    warn!(table = self.uri(), attempt, error = %e, "Commit failed; retrying.");
                    let backoff = Duration::from_millis(50 * u64::from(attempt.min(20)));
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Fault injection for crash tests: `PGTRAIL_FAILPOINT=abort_after_commit:N` aborts the
/// process right after its N-th Delta commit landed, before anything else learns of it (the
/// advisory Kafka commit, the in-memory versions). Never set in production.
fn failpoint_after_commit() {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Ok(spec) = std::env::var("PGTRAIL_FAILPOINT") else {
        return;
    };
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if spec
        .strip_prefix("abort_after_commit:")
        .and_then(|v| v.parse::<u64>().ok())
        == Some(n)
    {
        warn!(commit = n, "Failpoint abort_after_commit: aborting.");
        std::process::abort();
    }
}
