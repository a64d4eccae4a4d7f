//! A replay's one commit: the rows derived again replace their ranges in the target table
//! (the table read, or the `--into` table), with the replay's job facts and `txn`s.
//!
//! Owns [`Derivation`] (what the derivation hands to the commit) and [`commit`]. `--into`
//! tables record, per partition, the last offset replayed under the replay's own `txn`
//! identity. Handing over (`--continue-as G`), the commit also carries group G's two `txn`s of
//! each handed-over partition and names G's state object, written first with the checkpoints
//! at the ranges' ends: a processor of group G on that table resumes from them as from its own
//! commit. Invariants: the live group's `txn`s and state in the table read are never written;
//! a commit that raced another is retried with the same `txn`s and state object. Must not:
//! decide what is replayed (planning does) or derive rows.

use chrono::{DateTime, Utc};
use deltalake::kernel::Transaction;
use serde_json::json;

use super::plan::PartitionPlan;
use super::{COMMIT_ATTEMPTS, ReplayArgs, Report, table};
use crate::config::Config;
use crate::delta::AuditTable;
use crate::error::ProcessorError;
use crate::job::{CommitFacts, JobMode, PartitionFacts, job_facts, writer_id};
use crate::lake::Lake;
use crate::partition::{DeadLetter, PartitionCheckpoint};
use crate::state::{StateStore, StoredState, new_state_id, offset_app_id, state_app_id};

/// What deriving the plans' ranges gave.
#[derive(Debug, Default)]
pub struct Derivation {
    /// The rows, as Arrow batches.
    pub batches: Vec<deltalake::arrow::array::RecordBatch>,
    /// Each partition's job facts.
    pub parts: Vec<PartitionFacts>,
    /// The ranges' dead letters.
    pub dead: Vec<DeadLetter>,
    /// The checkpoints at the ends of the ranges handed over.
    pub handover: Vec<PartitionCheckpoint>,
}

/// Replaces the plans' ranges in the target table with the derived rows in one commit
/// (retried on the new version when another commit raced it); the table after it.
pub async fn commit(
    cfg: &Config,
    args: &ReplayArgs,
    lake: &Lake,
    plans: &[PartitionPlan],
    derived: Derivation,
    report: &Report,
    started: DateTime<Utc>,
) -> Result<deltalake::DeltaTable, ProcessorError> {
    let uri = &report.table;
    let open_target = || async {
        match &args.into {
            None => AuditTable::open_existing_with(uri, lake.options_for(uri))
                .await?
                .ok_or_else(|| ProcessorError::Config {
                    reason: format!("no Delta table at {uri} any more"),
                }),
            Some(into) => {
                AuditTable::open_or_create_with(
                    into,
                    lake.options_for(into),
                    cfg.checkpoint_interval,
                )
                .await
            }
        }
    };
    let target = open_target().await?;
    let handed_to = args
        .continue_as
        .as_deref()
        .filter(|_| !derived.handover.is_empty());
    let txns = txns(args, plans, handed_to, &derived.handover, &target).await?;
    let uri_written = target.uri().to_owned();
    let mut target = Some(target);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let t = match target.take() {
            Some(t) => t,
            None => open_target().await?,
        };
        if let Some(group) = handed_to {
            refuse_if_continued(&t, group, &derived.handover).await?;
        }
        let written = Written {
            plans,
            derived: &derived,
            report,
            handed_to,
            started,
            attempt,
        };
        let metadata = written.metadata(cfg, args, &t).await?;
        let r = table::replace(
            t.into_delta(),
            plans,
            derived.batches.clone(),
            metadata,
            txns.clone(),
        )
        .await;
        match r {
            Err(e) if attempt < COMMIT_ATTEMPTS && e.class() == crate::ErrorClass::Retryable => {
                tracing::warn!(table = %uri_written, attempt, error = %e, "The replay's commit raced another; trying again on the new version.");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            r => return r,
        }
    }
}

/// What one attempt of the commit writes, for its job facts.
struct Written<'a> {
    plans: &'a [PartitionPlan],
    derived: &'a Derivation,
    report: &'a Report,
    handed_to: Option<&'a str>,
    started: DateTime<Utc>,
    attempt: u32,
}

impl Written<'_> {
    /// The commit's `pgtrail` metadata on `target` as it is now: the job facts with the rows
    /// the replacement removes from the target (for `--into`, the target's own rows in the
    /// ranges, not the source's) and the replay's summary. The facts are as of the snapshot
    /// this attempt read: when deltalake's own retry lands the commit after a live append,
    /// the version and row counts are those of the snapshot, not of the version written.
    async fn metadata(
        &self,
        cfg: &Config,
        args: &ReplayArgs,
        target: &AuditTable,
    ) -> Result<serde_json::Value, ProcessorError> {
        let report = self.report;
        // A figure of the facts, not a condition of the commit: a count that fails leaves it
        // unknown (null) rather than failing the replay.
        let removed = match args.into {
            Some(_) => match table::count_in(target.delta(), self.plans).await {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(table = target.uri(), error = %e, "Counting the rows the replay replaces failed; its job facts leave them unknown.");
                    None
                }
            },
            None => Some(report.diff.rows_before),
        };
        let commit = CommitFacts {
            mode: JobMode::Historical,
            group: &cfg.group,
            writer: &writer_id(),
            table: target.uri(),
            version: target.version().map_or(0, |v| v + 1),
            rows_before: target.row_count()?,
            started: self.started,
            attempt: self.attempt,
        };
        let mut facts = job_facts(&commit, &self.derived.parts, Utc::now());
        facts["rows_removed"] = json!(removed);
        facts["rows_after"] =
            json!(removed.map(|r| (commit.rows_before + report.diff.rows_after).saturating_sub(r)));
        // `group` and `partitions` as live commits name them: a processor of another group
        // started on an `--into` table finds the topic written by this one and refuses to
        // write it all again.
        let group = self
            .handed_to
            .map_or_else(|| format!("replay:{}", cfg.group), str::to_owned);
        Ok(json!({
            "group": group,
            "partitions": self
                .plans
                .iter()
                .map(|p| json!({"topic": &*p.tp.topic, "partition": p.tp.partition}))
                .collect::<Vec<_>>(),
            "job": facts,
            "replay": {
                "source": report.table,
                "ranges": self.plans,
                "rows_removed": removed,
                "rows_added": report.diff.rows_after,
                "reshipped": report.reshipped,
                "continue_as": self.handed_to,
            },
        }))
    }
}

/// The commit's `txn`s: none in place; for `--into`, per partition the last offset replayed
/// under the replay's own identity, or, handing over to `group`, the group's two `txn`s per
/// partition handed over (alone: a group named `replay` would read the replay's own as its
/// position), after writing the state object they name.
async fn txns(
    args: &ReplayArgs,
    plans: &[PartitionPlan],
    group: Option<&str>,
    handover: &[PartitionCheckpoint],
    target: &AuditTable,
) -> Result<Vec<Transaction>, ProcessorError> {
    if args.into.is_none() {
        return Ok(Vec::new());
    }
    let Some(group) = group else {
        return Ok(plans
            .iter()
            .map(|p| {
                Transaction::new(
                    format!("pgtrail-replay-{}-{}", p.tp.topic, p.tp.partition),
                    p.last,
                )
            })
            .collect());
    };
    let id = new_state_id();
    let state = StoredState::new(group, &writer_id(), handover.to_vec());
    StateStore::new(target.object_store(), target.uri(), group)
        .write(id, &state)
        .await?;
    let mut txns = Vec::new();
    for cp in handover {
        txns.push(Transaction::new(offset_app_id(group, &cp.tp), cp.version));
        txns.push(Transaction::new(state_app_id(group, &cp.tp), id));
    }
    Ok(txns)
}

/// Fails when `group` committed to `target` meanwhile (a processor of it started before the
/// hand-over landed): writing the checkpoint would move the group back and make it write its
/// records again.
async fn refuse_if_continued(
    target: &AuditTable,
    group: &str,
    handover: &[PartitionCheckpoint],
) -> Result<(), ProcessorError> {
    let groups = [group.to_owned()];
    for cp in handover {
        if let Some(v) = super::continued_to(target, &groups, &cp.tp).await? {
            return Err(ProcessorError::Config {
                reason: format!(
                    "group {group} wrote {} of {} (up to offset {v}) while the replay ran; start its processors after the hand-over, or hand over into a new table",
                    cp.tp,
                    target.uri()
                ),
            });
        }
    }
    Ok(())
}
