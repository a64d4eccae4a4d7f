//! Delta commits of the worker, overlapped with parsing: at most one commit per table runs on
//! the runtime while the consumer thread goes on handling messages.
//!
//! Owns [`Table`] (a table's sink and its commit in flight) and the worker's commit methods.
//! Invariants: a table's next commit, a partition assignment (which reads the table to resume)
//! and a revocation first *settle* the commit in flight, so versions, fencing and resume points
//! are those of a table with no commit running; what a commit did (committed versions, fenced
//! partitions, totals, the advisory Kafka offset commit) is applied on the consumer thread when
//! it is settled, never by the task; a commit abandoned at a deadline or failed puts its rows
//! back in front of their partitions' buffers (Arrow batches are shared, the copy is cheap) and
//! the table is opened again before its next use. Must not: poll the consumer, or let the task
//! touch the worker's state.

use std::time::{Duration, Instant};

use deltalake::arrow::record_batch::RecordBatch;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Worker, schema_err};
use crate::error::ProcessorError;
use crate::partition::PartitionCheckpoint;
use crate::sink::{CommitResult, PartitionCommit, TableSink};

/// A server's table: its sink (`None` while a commit owns it, or after one was abandoned) and
/// the commit in flight.
#[derive(Default)]
pub(super) struct Table {
    sink: Option<TableSink>,
    inflight: Option<InFlight>,
}

/// A commit running on the runtime.
struct InFlight {
    task: JoinHandle<(TableSink, Result<Landed, ProcessorError>)>,
    /// The rows it carries per partition, to put back if it is abandoned.
    rows: Vec<(i32, Vec<RecordBatch>)>,
}

/// What a finished commit did.
struct Landed {
    /// The checkpoints committed (empty when every partition was fenced) and their rows.
    committed: Vec<(PartitionCheckpoint, usize)>,
    /// Partitions another instance wrote: dropped unwritten.
    fenced: Vec<i32>,
}

/// Commits `commits` through `sink`, dropping fenced partitions and committing the rest again.
async fn commit_task(
    mut sink: TableSink,
    mut commits: Vec<PartitionCommit>,
    attempts: u32,
    metrics: crate::telemetry::Metrics,
) -> (TableSink, Result<Landed, ProcessorError>) {
    let mut fenced = Vec::new();
    loop {
        match sink.commit(&commits, attempts, &metrics).await {
            Ok(CommitResult::Committed(_)) => break,
            Ok(CommitResult::Fenced(lost)) => {
                commits.retain(|c| !lost.contains(&c.checkpoint.partition));
                fenced.extend(lost);
                if commits.is_empty() {
                    break;
                }
            }
            Err(e) => return (sink, Err(e)),
        }
    }
    let committed = commits
        .into_iter()
        .map(|c| {
            let rows = c.rows();
            (c.checkpoint, rows)
        })
        .collect();
    (sink, Ok(Landed { committed, fenced }))
}

impl Worker {
    /// `topic`'s table sink, opening the table when it is not open (first use, or the last
    /// commit was abandoned). The commit in flight must have been settled.
    pub(super) fn sink(&mut self, topic: &str) -> Result<&mut TableSink, ProcessorError> {
        let table = self.tables.entry(topic.to_owned()).or_default();
        if table.sink.is_none() {
            let uri = self.cfg.table_for_topic(topic);
            let sink = self.rt.block_on(TableSink::open(
                &uri,
                &self.cfg.group,
                self.cfg.checkpoint_interval,
            ))?;
            info!(topic, table = uri, "Table ready.");
            table.sink = Some(sink);
        }
        table.sink.as_mut().ok_or_else(|| ProcessorError::Config {
            reason: format!("no table for {topic}"),
        })
    }

    /// Waits for `topic`'s commit in flight (until `deadline`) and applies what it did.
    /// Returns `false` when the deadline passed first: the commit is abandoned, its rows are
    /// back in their partitions' buffers.
    pub(super) fn settle<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        topic: &str,
        deadline: Option<Instant>,
        consumer: &C,
    ) -> Result<bool, ProcessorError> {
        let Some(table) = self.tables.get_mut(topic) else {
            return Ok(true);
        };
        let Some(mut inflight) = table.inflight.take() else {
            return Ok(true);
        };
        let waited = Instant::now();
        let joined = match deadline {
            None => Some(self.rt.block_on(&mut inflight.task)),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                self.rt
                    .block_on(tokio::time::timeout(left, &mut inflight.task))
                    .ok()
            }
        };
        let waited = waited.elapsed();
        self.metrics
            .commit_wait_seconds
            .inc_by(waited.as_secs_f64());
        self.totals.commit_wait_ms += waited.as_millis() as u64;
        let landed = match joined {
            None => {
                inflight.task.abort();
                warn!(
                    topic,
                    "Deadline passed during a Delta commit: abandoned; its rows stay buffered."
                );
                self.restore(topic, inflight.rows);
                return Ok(false);
            }
            Some(Err(e)) => Err(ProcessorError::Config {
                reason: format!("the commit task of {topic} failed: {e}"),
            }),
            Some(Ok((sink, landed))) => {
                table.sink = Some(sink);
                landed
            }
        };
        match landed {
            Ok(landed) => {
                self.apply(topic, landed, consumer);
                Ok(true)
            }
            Err(e) => {
                // Whoever handles the error (revocation logs it and goes on with the other
                // partitions), no row of a failed commit may go missing from its buffer.
                self.restore(topic, inflight.rows);
                Err(e)
            }
        }
    }

    /// Puts the rows of a commit that did not happen back in front of their partitions'
    /// buffers (partitions no longer assigned are skipped).
    fn restore(&mut self, topic: &str, rows: Vec<(i32, Vec<RecordBatch>)>) {
        for (p, batches) in rows {
            if let Some(a) = self.parts.get_mut(&(topic.to_owned(), p)) {
                a.rows.restore(batches);
            }
        }
    }

    /// Settles every table's commit that has finished (never waits).
    pub(super) fn settle_finished<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        consumer: &C,
    ) -> Result<(), ProcessorError> {
        let done: Vec<String> = self
            .tables
            .iter()
            .filter(|(_, t)| t.inflight.as_ref().is_some_and(|f| f.task.is_finished()))
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in done {
            self.settle(&topic, None, consumer)?;
        }
        Ok(())
    }

    /// Applies a settled commit: fenced partitions are forgotten and paused, committed ones
    /// learn their version, and the same offsets go to Kafka (advisory).
    fn apply<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        topic: &str,
        landed: Landed,
        consumer: &C,
    ) {
        if !landed.fenced.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for p in landed.fenced {
                self.parts.remove(&(topic.to_owned(), p));
                self.metrics.partitions_fenced.inc();
                tpl.add_partition(topic, p);
            }
            let _ = consumer.pause(&tpl);
            self.metrics
                .partitions_assigned
                .set(self.parts.len() as i64);
        }
        if landed.committed.is_empty() {
            return;
        }
        self.totals.commits += 1;
        self.metrics.last_commit_age_seconds.set(0.0);
        let mut tpl = TopicPartitionList::new();
        for (cp, rows) in &landed.committed {
            self.totals.rows += *rows as u64;
            if let Some(a) = self.parts.get_mut(&(topic.to_owned(), cp.partition)) {
                a.partition.committed = Some(cp.version);
            }
            let _ = tpl.add_partition_offset(topic, cp.partition, Offset::Offset(cp.version + 1));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            warn!(topic, error = %e, "Advisory Kafka offset commit failed (lag metrics only).");
        }
        self.update_gauges();
    }

    /// Commits every table and waits (what is held stays uncommitted and is re-consumed
    /// later). With a `deadline`, a commit still running then is abandoned.
    pub fn commit_all<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        deadline: Option<Instant>,
        consumer: &C,
    ) -> Result<(), ProcessorError> {
        let mut topics: std::collections::BTreeSet<String> =
            self.parts.keys().map(|(t, _)| t.clone()).collect();
        topics.extend(self.tables.keys().cloned());
        for topic in topics {
            self.commit_topic(&topic, deadline, true, consumer)?;
        }
        Ok(())
    }

    /// Commits `topic`'s partitions (rows and checkpoints) as one Delta version, after settling
    /// the table's previous commit; then the same offsets go to Kafka. With `wait` it returns
    /// once the commit is settled (with a `deadline`: abandoned if it passes first); without,
    /// the commit runs on while the caller goes on, and the next settle applies it.
    pub fn commit_topic<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        topic: &str,
        deadline: Option<Instant>,
        wait: bool,
        consumer: &C,
    ) -> Result<(), ProcessorError> {
        if !self.settle(topic, deadline, consumer)? {
            return Ok(());
        }
        let mut commits = Vec::new();
        for ((t, _), a) in self.parts.iter_mut() {
            if t != topic {
                continue;
            }
            let Some(checkpoint) = a.partition.checkpoint() else {
                continue;
            };
            if a.rows.is_empty() && Some(checkpoint.version) == a.partition.committed {
                continue;
            }
            let batches = a.rows.take(&self.builder).map_err(schema_err)?;
            commits.push(PartitionCommit {
                checkpoint,
                expected: a.partition.committed,
                batches,
            });
        }
        if commits.is_empty() {
            return Ok(());
        }
        self.dlq.flush(Duration::from_secs(60))?;
        // An error here is fatal: the rows taken are re-consumed after the restart.
        self.sink(topic)?;
        let rows = commits
            .iter()
            .map(|c| (c.checkpoint.partition, c.batches.clone()))
            .collect();
        let attempts = self.cfg.commit_attempts;
        let metrics = self.metrics.clone();
        let sink = self
            .tables
            .get_mut(topic)
            .and_then(|t| t.sink.take())
            .ok_or_else(|| ProcessorError::Config {
                reason: format!("no table for {topic}"),
            })?;
        let task = self.rt.spawn(commit_task(sink, commits, attempts, metrics));
        if let Some(t) = self.tables.get_mut(topic) {
            t.inflight = Some(InFlight { task, rows });
        }
        if wait {
            self.settle(topic, deadline, consumer)?;
        }
        Ok(())
    }
}
