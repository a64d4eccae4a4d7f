//! Delta commits of the worker, overlapped with parsing: at most one commit per table runs on
//! the runtime while the consumer thread goes on handling messages.
//!
//! Owns [`Slot`] (a table's committer and its commit in flight) and the worker's commit
//! methods. Invariants: a table's next commit, a partition assignment or reset (which read the
//! table) and a revocation first *settle* the commit in flight, so tokens and resume points
//! are those of a table with no commit of ours running; what a commit did (committed tokens,
//! fenced partitions, totals, the advisory Kafka offset commit) is applied on the consumer
//! thread when it is settled, never by the task; a commit is never abandoned: past a
//! revocation's deadline it goes on in the background and is settled later (its outcome is
//! read from the table by whoever resumes its partitions), and its rows never go back into a
//! buffer; a partition found fenced is read again from the table and consumed from there.
//! Must not: poll the consumer, or let the task touch the worker's state.

use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Worker, schema_err};
use crate::committer::{Committer, Landed, PartitionCommit};
use crate::error::ProcessorError;
use crate::members::Beacon;

/// A server's table: its committer (`None` while a commit owns it) and the commit in flight.
#[derive(Default)]
pub(super) struct Slot {
    committer: Option<Committer>,
    inflight: Option<JoinHandle<(Committer, Result<Landed, ProcessorError>)>>,
    /// This instance's member record beside the table (`members.rs`).
    beacon: Option<Beacon>,
}

impl Worker {
    /// `topic`'s committer, opening its table on first use. The commit in flight must have
    /// been settled.
    pub(super) fn committer(&mut self, topic: &str) -> Result<&mut Committer, ProcessorError> {
        let slot = self.tables.entry(topic.to_owned()).or_default();
        if slot.inflight.is_some() {
            return Err(ProcessorError::Internal {
                reason: format!("the table of {topic} was used with a commit in flight"),
            });
        }
        if slot.committer.is_none() {
            let uri = self.cfg.table_for_topic(topic);
            // Secrets are read again for each table opened (a rotated key file is picked up).
            let options = crate::lake::Lake::from_section(&self.cfg.storage)?.options_for(&uri);
            let committer = self.rt.block_on(Committer::open_with(
                &uri,
                options,
                &self.cfg.group,
                self.cfg.checkpoint_interval,
                self.failpoints.clone(),
                self.cfg.allow_new_group,
            ))?;
            info!(topic, table = uri, "Table ready.");
            slot.beacon = Some(Beacon::new(
                committer.object_store(),
                &self.cfg.group,
                committer.writer(),
                &self.rt,
            ));
            slot.committer = Some(committer);
        }
        slot.committer
            .as_mut()
            .ok_or_else(|| ProcessorError::Internal {
                reason: format!("no committer for {topic}"),
            })
    }

    /// Rewrites this instance's member record beside each open table (when a beat is due)
    /// with the partitions it holds.
    pub(super) fn beat_members(&mut self) {
        for (topic, slot) in &mut self.tables {
            if let Some(beacon) = &mut slot.beacon {
                let held = self
                    .parts
                    .keys()
                    .filter(|tp| *tp.topic == **topic)
                    .cloned()
                    .collect();
                beacon.beat(&self.rt, held);
            }
        }
    }

    /// Deletes this instance's member records (a graceful stop).
    pub fn leave_members(&mut self) {
        for slot in self.tables.values_mut() {
            if let Some(beacon) = slot.beacon.take() {
                beacon.leave(&self.rt);
            }
        }
    }

    /// Whether `topic`'s table has a commit in flight.
    pub(super) fn committing(&self, topic: &str) -> bool {
        self.tables.get(topic).is_some_and(|s| s.inflight.is_some())
    }

    /// Waits for `topic`'s commit in flight (until `deadline`) and applies what it did.
    /// Returns `false` when the deadline passed first: the commit goes on in the background
    /// and is settled later.
    pub(super) fn settle<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        topic: &str,
        deadline: Option<Instant>,
        consumer: &C,
    ) -> Result<bool, ProcessorError> {
        let Some(slot) = self.tables.get_mut(topic) else {
            return Ok(true);
        };
        let Some(mut task) = slot.inflight.take() else {
            return Ok(true);
        };
        let waited = Instant::now();
        let joined = match deadline {
            None => Some(self.rt.block_on(&mut task)),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                self.rt.block_on(tokio::time::timeout(left, &mut task)).ok()
            }
        };
        let waited = waited.elapsed();
        self.metrics
            .commit_wait_seconds
            .inc_by(waited.as_secs_f64());
        self.totals.commit_wait_ms += waited.as_millis() as u64;
        let (committer, landed) = match joined {
            None => {
                warn!(
                    topic,
                    "Deadline passed during a Delta commit: it goes on in the background (whoever resumes its partitions reads its outcome from the table)."
                );
                slot.inflight = Some(task);
                return Ok(false);
            }
            Some(Err(e)) => {
                return Err(ProcessorError::Internal {
                    reason: format!("the commit task of {topic} failed: {e}"),
                });
            }
            Some(Ok(done)) => done,
        };
        slot.committer = Some(committer);
        self.apply(topic, landed?, consumer)?;
        Ok(true)
    }

    /// Settles every table's commit that has finished (never waits).
    pub(super) fn settle_finished<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        consumer: &C,
    ) -> Result<(), ProcessorError> {
        let done: Vec<String> = self
            .tables
            .iter()
            .filter(|(_, s)| s.inflight.as_ref().is_some_and(JoinHandle::is_finished))
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in done {
            self.settle(&topic, None, consumer)?;
        }
        Ok(())
    }

    /// Applies a settled commit: committed partitions learn their token, fenced ones are read
    /// again from the table, and the committed offsets go to Kafka (advisory).
    fn apply<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        topic: &str,
        landed: Landed,
        consumer: &C,
    ) -> Result<(), ProcessorError> {
        for tp in &landed.fenced {
            if self.parts.contains_key(tp) {
                self.reset(tp, consumer)?;
            }
        }
        if landed.committed.is_empty() {
            return Ok(());
        }
        self.totals.commits += 1;
        self.metrics.last_commit_age_seconds.set(0.0);
        let mut tpl = TopicPartitionList::new();
        for (tp, token, rows) in &landed.committed {
            self.totals.rows += *rows as u64;
            // A partition revoked meanwhile is its new owner's now.
            if let Some(a) = self.parts.get_mut(tp) {
                a.token = *token;
                a.partition.committed = token.version;
                // Everything consumed is committed: nothing waits. Otherwise the oldest
                // waiting message is not known exactly; the earlier time stands (an
                // overestimate, never an underestimate).
                if a.partition.last_offset() == token.version {
                    a.waiting_since = None;
                }
                if let Some(v) = token.version {
                    let _ = tpl.add_partition_offset(topic, tp.partition, Offset::Offset(v + 1));
                }
            }
        }
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
        {
            warn!(topic, error = %e, "Advisory Kafka offset commit failed (lag metrics only).");
        }
        self.update_gauges();
        Ok(())
    }

    /// Commits every table and waits (what is held stays uncommitted and is re-consumed
    /// later). With a `deadline`, a commit still running then goes on in the background.
    pub fn commit_all<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        deadline: Option<Instant>,
        consumer: &C,
    ) -> Result<(), ProcessorError> {
        let mut topics: std::collections::BTreeSet<String> =
            self.parts.keys().map(|tp| tp.topic.to_string()).collect();
        topics.extend(self.tables.keys().cloned());
        for topic in topics {
            self.commit_topic(&topic, deadline, true, consumer)?;
        }
        Ok(())
    }

    /// Commits `topic`'s partitions (rows and checkpoints) as one Delta version, after settling
    /// the table's previous commit. With `wait` it returns once the commit is settled (with a
    /// `deadline`: or once that passed); without, the commit runs on while the caller goes
    /// on, and the next settle applies it.
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
        for (tp, a) in self.parts.iter_mut() {
            if *tp.topic != *topic {
                continue;
            }
            let Some(checkpoint) = a.partition.checkpoint() else {
                continue;
            };
            if a.rows.is_empty() && Some(checkpoint.version) == a.token.version {
                continue;
            }
            let batches = a.rows.take(&self.builder).map_err(schema_err)?;
            // What is undecided now is the next tally's starting point.
            let held = a.partition.undecided();
            let mut tally = std::mem::take(&mut a.tally);
            tally.held_after = held;
            a.tally.held_before = held;
            if !tally.reconciled() {
                self.metrics
                    .jobs_unreconciled
                    .get_or_create(&crate::telemetry::Metrics::table(topic))
                    .inc();
                warn!(partition = %tp, ?tally, "Job facts do not reconcile: a record is unaccounted for.");
            }
            commits.push(PartitionCommit {
                tp: tp.clone(),
                checkpoint,
                expected: a.token,
                batches,
                tally,
            });
        }
        if commits.is_empty() {
            return Ok(());
        }
        // Dead letters before the commit covering them: at least once.
        self.dlq.flush(Duration::from_secs(60))?;
        self.committer(topic)?;
        let metrics = self.metrics.clone();
        let mut committer = self
            .tables
            .get_mut(topic)
            .and_then(|s| s.committer.take())
            .ok_or_else(|| ProcessorError::Internal {
                reason: format!("no committer for {topic}"),
            })?;
        let task = self.rt.spawn(async move {
            let landed = committer.commit(commits, &metrics).await;
            (committer, landed)
        });
        if let Some(slot) = self.tables.get_mut(topic) {
            slot.inflight = Some(task);
        }
        if wait {
            self.settle(topic, deadline, consumer)?;
        }
        Ok(())
    }
}
