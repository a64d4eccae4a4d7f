//! The consumer's state between polls: assigned partitions, their buffered rows, the tables,
//! the dead-letter producer; message handling, assignment, revocation and commits.
//!
//! Owns [`Worker`]. Runs on the consumer's thread (blocking; Delta operations run on the tokio
//! runtime through a handle, a table's commit as a task beside parsing: `worker/commit.rs`;
//! released rows are appended to Arrow builders on the row thread: `worker/rows.rs`).
//! Invariants: a partition's rows are committed only with its
//! checkpoint, in one Delta version, after the dead letters before them were acknowledged;
//! a revoked partition is committed within the revocation deadline or dropped unwritten, and
//! never written after; the Kafka offset commit (advisory) follows the Delta commit. Must
//! not: poll the consumer (the loop in `consumer.rs` does, and rebalance callbacks call in).

mod commit;
mod flush;
mod probe;
mod rows;
pub(crate) mod servers;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use pgtrail_avro::{Decoder, RawRecordRef};
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::committer::Token;
use crate::config::Config;
use crate::dlq::DeadLetters;
use crate::error::{ErrorClass, ProcessorError};
use crate::failpoint::Failpoints;
use crate::job::JobTally;
use crate::partition::{Incoming, Outputs, Partition};
use crate::telemetry::Metrics;
use crate::topic_partition::TopicPartition;

/// The label of partitions waiting for the Schema Registry.
fn wait_label() -> crate::telemetry::ReasonLabel {
    crate::telemetry::ReasonLabel {
        reason: crate::telemetry::WAIT_REGISTRY.to_owned(),
    }
}

/// Moves the gauge of partitions waiting for the Schema Registry by `delta`.
fn count_registry_waits(metrics: &Metrics, delta: i64) {
    metrics
        .partitions_waiting
        .get_or_create(&wait_label())
        .inc_by(delta);
}

/// Rows that Arrow rejects: the code and the schema disagree (a bug, never a record's fault).
fn schema_err(e: deltalake::arrow::error::ArrowError) -> ProcessorError {
    ProcessorError::Internal {
        reason: format!("rows do not fit the audit schema: {e}"),
    }
}

struct Assigned {
    partition: Partition,
    /// The partition's token in its table as this instance last read or wrote it.
    token: Token,
    rows: rows::Rows,
    /// Skipped offsets (`probe.rs`).
    probe: probe::OffsetProbe,
    /// Waiting for the Schema Registry.
    waiting: Option<RegistryWait>,
    /// Broker timestamp (ms) of the first message consumed since everything consumed was
    /// committed (the processor's time lag; `None`: nothing consumed waits).
    waiting_since: Option<i64>,
    /// Counts since the partition's last commit (the commit's job facts).
    tally: JobTally,
}

/// A consumed message, as the worker handles it.
#[derive(Debug, Clone, Copy)]
pub struct Consumed<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value.
    pub payload: &'a [u8],
    /// Broker timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

/// A partition's wait for the Schema Registry.
#[derive(Debug, Clone, Copy)]
struct RegistryWait {
    /// Paused until then; `None`: resumed to read the message again.
    until: Option<Instant>,
    /// The current wait (doubling up to `REGISTRY_WAIT_MAX`).
    wait: std::time::Duration,
}

impl Assigned {
    /// The registry answered (a Confluent-framed record decoded): the partition waits no
    /// more.
    fn registry_answers(&mut self, tp: &TopicPartition, metrics: &Metrics) {
        if self.waiting.take().is_some() {
            info!(
                topic = &*tp.topic,
                partition = tp.partition,
                "The schema registry answers again."
            );
            count_registry_waits(metrics, -1);
        }
    }

    /// The registry cannot be reached to decode the message at `offset`: the partition waits
    /// (0.5 s, doubling to 30 s) and reads that message again (the caller seeks and pauses).
    fn wait_for_registry(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        e: &pgtrail_avro::AvroError,
        metrics: &Metrics,
    ) {
        let wait = self
            .waiting
            .map_or(REGISTRY_WAIT, |w| (w.wait * 2).min(REGISTRY_WAIT_MAX));
        if self.waiting.is_none() {
            count_registry_waits(metrics, 1);
        }
        self.waiting = Some(RegistryWait {
            until: Some(Instant::now() + wait),
            wait,
        });
        self.probe.retry_at(offset);
        self.probe.set_paused(true);
        metrics.registry_errors.inc();
        warn!(topic = &*tp.topic, partition = tp.partition, offset, retry_in_ms = wait.as_millis() as u64, error = %e, "The schema registry cannot be reached: waiting, then reading this message again.");
    }
}

/// Decodes a message value in place. Only the Confluent framing may need the registry (I/O,
/// on the runtime); the other needs none.
pub(crate) fn decode<'p>(
    rt: &Handle,
    decoder: &Decoder,
    payload: &'p [u8],
) -> Result<RawRecordRef<'p>, pgtrail_avro::AvroError> {
    if payload.first() == Some(&0) {
        rt.block_on(decoder.decode_ref(payload))
    } else {
        decoder.decode_single_object_ref(payload)
    }
}

/// First wait of a partition for an unreachable Schema Registry; doubled up to
/// [`REGISTRY_WAIT_MAX`].
const REGISTRY_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Longest wait for an unreachable Schema Registry between attempts.
const REGISTRY_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Totals of a run.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Messages consumed.
    pub messages: u64,
    /// Rows committed.
    pub rows: u64,
    /// Dead letters sent.
    pub dead_letters: u64,
    /// Delta commits.
    pub commits: u64,
    /// Milliseconds the consumer waited for commits in flight.
    pub commit_wait_ms: u64,
}

/// Everything the consumer thread owns besides the consumer.
pub struct Worker {
    cfg: Config,
    rt: Handle,
    metrics: Metrics,
    decoder: Decoder,
    servers: servers::ServerCache,
    failpoints: Arc<Failpoints>,
    tables: HashMap<String, commit::Slot>,
    parts: BTreeMap<TopicPartition, Assigned>,
    /// The topics of the partitions assigned so far (one allocation per topic).
    topics: Vec<Arc<str>>,
    dlq: DeadLetters,
    /// Builds the partitions' Arrow batches beside this thread.
    builder: rows::RowBuilder,
    last_commit: Instant,
    /// A reading of both clocks, renewed every tick: rows' `ingest_ts` is derived from the
    /// message's monotonic time (no wall-clock read per message).
    clock: (Instant, DateTime<Utc>),
    /// Last message or assignment change (for `exit_when_idle`).
    pub last_activity: Instant,
    /// Totals so far.
    pub totals: Totals,
    /// A fatal error raised inside a rebalance callback, for the loop to return.
    pub failed: Option<ProcessorError>,
    /// Tables whose partitions are paused until their commit in flight settles, and those
    /// partitions.
    paused_tables: BTreeMap<String, Vec<TopicPartition>>,
    /// Seeks the loop must make.
    pub seeks: Vec<(TopicPartition, i64)>,
    /// Partitions the loop must pause (`true`) or resume (`false`), after the seeks.
    pub pauses: Vec<(TopicPartition, bool)>,
}

impl Worker {
    /// A worker with no partitions.
    pub fn new(
        cfg: Config,
        rt: Handle,
        metrics: Metrics,
        decoder: Decoder,
        dlq: DeadLetters,
        failpoints: Arc<Failpoints>,
    ) -> Worker {
        let builder = if cfg.row_thread {
            rows::RowBuilder::start()
        } else {
            rows::RowBuilder::inline()
        };
        Worker {
            servers: servers::ServerCache::new(cfg.clone()),
            cfg,
            rt,
            metrics,
            decoder,
            failpoints,
            tables: HashMap::default(),
            parts: BTreeMap::new(),
            topics: Vec::new(),
            dlq,
            builder,
            last_commit: Instant::now(),
            clock: (Instant::now(), Utc::now()),
            last_activity: Instant::now(),
            totals: Totals::default(),
            failed: None,
            paused_tables: BTreeMap::new(),
            seeks: Vec::new(),
            pauses: Vec::new(),
        }
    }

    /// Wall-clock time of the monotonic instant `at` (at or after the last tick).
    fn wall(&self, at: Instant) -> DateTime<Utc> {
        let since = at.saturating_duration_since(self.clock.0);
        self.clock.1 + chrono::TimeDelta::from_std(since).unwrap_or_default()
    }

    /// Partitions assigned.
    pub fn assigned(&self) -> usize {
        self.parts.len()
    }

    /// Partitions waiting for the Schema Registry.
    pub fn waiting(&self) -> usize {
        self.parts.values().filter(|a| a.waiting.is_some()).count()
    }

    /// `topic`'s partition `partition`, its topic shared with the others of the topic.
    fn key(&mut self, topic: &str, partition: i32) -> TopicPartition {
        let topic = match self.topics.iter().find(|t| ***t == *topic) {
            Some(t) => Arc::clone(t),
            None => {
                let t: Arc<str> = Arc::from(topic);
                self.topics.push(Arc::clone(&t));
                t
            }
        };
        TopicPartition { topic, partition }
    }

    /// `tp` as its table says it resumes, and the offset to position it at: its state read
    /// from the table (whose commit in flight is settled first).
    fn start<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        tp: &TopicPartition,
        consumer: &C,
    ) -> Result<(Assigned, i64), ProcessorError> {
        self.settle(&tp.topic, None, consumer)?;
        let window = Config::ms(self.cfg.outcome_window_ms);
        let rt = self.rt.clone();
        let committer = self.committer(&tp.topic)?;
        let resume = rt.block_on(committer.resume(tp))?;
        let anchor = resume.checkpoint.as_ref().and_then(|c| c.anchor);
        let (probe, at) = probe::OffsetProbe::resuming(resume.token.version, anchor);
        let partition = Partition::new(tp.clone(), resume.token.version, resume.checkpoint, window);
        info!(
            topic = &*tp.topic,
            partition = tp.partition,
            version = ?resume.token.version,
            resume_at = partition.resume_offset(),
            "Partition resumes from its table."
        );
        let assigned = Assigned {
            probe,
            partition,
            token: resume.token,
            rows: rows::Rows::new(&tp.topic, tp.partition),
            waiting: None,
            waiting_since: None,
            tally: JobTally::default(),
        };
        Ok((assigned, at))
    }

    /// Sets up `tpl`'s partitions and writes into `tpl` where each resumes (from its table).
    pub fn assign<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        tpl: &mut TopicPartitionList,
        consumer: &C,
    ) -> Result<(), ProcessorError> {
        self.last_activity = Instant::now();
        for tp in self.keys(tpl) {
            let (assigned, at) = self.start(&tp, consumer)?;
            info!(
                topic = &*tp.topic,
                partition = tp.partition,
                "Partition assigned."
            );
            let offset = match assigned.partition.committed {
                Some(_) => Offset::Offset(at),
                None => Offset::Beginning,
            };
            tpl.set_partition_offset(&tp.topic, tp.partition, offset)
                .map_err(|e| ProcessorError::Kafka {
                    what: format!("seek {tp}"),
                    reason: e.to_string(),
                })?;
            self.install(tp, assigned);
        }
        self.metrics
            .partitions_assigned
            .set(self.parts.len() as i64);
        Ok(())
    }

    /// Reads `tp` again from its table and consumes it from there (another instance
    /// committed it): rows buffered of it are dropped; dead letters already sent may be sent
    /// again.
    fn reset<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        tp: &TopicPartition,
        consumer: &C,
    ) -> Result<(), ProcessorError> {
        let (assigned, offset) = self.start(tp, consumer)?;
        warn!(
            topic = &*tp.topic,
            partition = tp.partition,
            resume_at = offset,
            "Another instance committed this partition: consuming it again from what the table holds."
        );
        self.install(tp.clone(), assigned);
        self.seeks.push((tp.clone(), offset));
        Ok(())
    }

    /// Puts `assigned` in `tp`'s place. The entry it replaces waits for the registry no
    /// more (its gauge is given back). The partition is resumed unless its table is paused
    /// (then it stays paused until the table resumes): librdkafka keeps a partition's pause
    /// across a revocation and a new assignment, and the entry paused may be gone.
    fn install(&mut self, tp: TopicPartition, mut assigned: Assigned) {
        let table_paused = self
            .paused_tables
            .get(&*tp.topic)
            .is_some_and(|paused| paused.contains(&tp));
        assigned.probe.set_paused(table_paused);
        self.pauses.push((tp.clone(), table_paused));
        let old = self.parts.insert(tp, assigned);
        self.forget(old);
    }

    /// Gives back the wait gauge of an entry no longer in `parts`, if it was waiting.
    fn forget(&self, old: Option<Assigned>) {
        if old.is_some_and(|a| a.waiting.is_some()) {
            count_registry_waits(&self.metrics, -1);
        }
    }

    /// `tpl`'s partitions, their topics shared (see [`Worker::key`]).
    fn keys(&mut self, tpl: &TopicPartitionList) -> Vec<TopicPartition> {
        tpl.elements()
            .iter()
            .map(|el| self.key(el.topic(), el.partition()))
            .collect()
    }

    /// Revokes `tpl`'s partitions: commits them within the deadline unless `lost`, then
    /// forgets them.
    pub fn revoke<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        tpl: &TopicPartitionList,
        lost: bool,
        consumer: &C,
    ) {
        self.last_activity = Instant::now();
        let mut revoked = self.keys(tpl);
        revoked.retain(|tp| self.parts.contains_key(tp));
        let deadline = Instant::now() + Config::ms(self.cfg.revoke_deadline_ms);
        let topics: std::collections::BTreeSet<Arc<str>> =
            revoked.iter().map(|tp| Arc::clone(&tp.topic)).collect();
        for topic in topics {
            // A commit in flight began while the partitions were ours: it is settled (or left
            // to finish in the background at the deadline); a lost assignment starts no new one.
            let r = if lost {
                self.settle(&topic, Some(deadline), consumer).map(drop)
            } else {
                self.commit_topic(&topic, Some(deadline), true, consumer)
            };
            if let Err(e) = r {
                warn!(%topic, error = %e, "Commit on revocation failed; the new owner re-consumes.");
                if e.class() == crate::error::ErrorClass::Fatal {
                    self.failed.get_or_insert(e);
                }
            }
        }
        // A commit settled above may have found a partition fenced and queued its reset
        // (a seek): the partition is no longer ours, and seeking it would fail.
        self.seeks.retain(|(tp, _)| !revoked.contains(tp));
        self.pauses.retain(|(tp, _)| !revoked.contains(tp));
        for tp in &revoked {
            let old = self.parts.remove(tp);
            self.forget(old);
            info!(
                topic = &*tp.topic,
                partition = tp.partition,
                lost,
                "Partition revoked."
            );
        }
        self.metrics
            .partitions_assigned
            .set(self.parts.len() as i64);
        self.update_gauges();
    }

    /// Handles one consumed message.
    pub fn handle(&mut self, m: Consumed<'_>, now: Instant) -> Result<(), ProcessorError> {
        let Consumed {
            topic,
            partition,
            offset,
            key,
            payload,
            timestamp_ms,
        } = m;
        // Shipper heartbeats are not activity: a partition that receives only them is idle
        // (held rows are released, `--exit-when-idle` ends).
        let idle_since = self.last_activity;
        self.last_activity = now;
        self.totals.messages += 1;
        let wall = self.wall(now);
        let tp = self.key(topic, partition);
        let Some(a) = self.parts.get_mut(&tp) else {
            return Ok(()); // Revoked: not ours.
        };
        let hash = || crate::partition::message_hash(key, payload);
        let (last, newest) = (a.partition.last_offset(), a.partition.newest());
        match a.probe.check(&tp, offset, hash, last, newest) {
            probe::Verdict::Handle => {
                if a.waiting_since.is_none() {
                    a.waiting_since = timestamp_ms;
                }
            }
            probe::Verdict::Skip => return Ok(()),
            probe::Verdict::Seek(to) => {
                self.seeks.push((tp, to));
                return Ok(());
            }
            probe::Verdict::Reset { position } => {
                return Err(ProcessorError::TopicReset {
                    tp,
                    position,
                    got: offset,
                });
            }
        }
        let decoded: Result<RawRecordRef<'_>, String> =
            match decode(&self.rt, &self.decoder, payload) {
                Ok(r) => {
                    a.registry_answers(&tp, &self.metrics);
                    Ok(r)
                }
                Err(e) => match e.class() {
                    ErrorClass::Poison => Err(e.to_string()),
                    // The registry is away: this message waits (read again later), never a
                    // dead letter, never skipped.
                    ErrorClass::Retryable => {
                        a.wait_for_registry(&tp, offset, &e, &self.metrics);
                        self.seeks.push((tp.clone(), offset));
                        self.pauses.push((tp, true));
                        return Ok(());
                    }
                    ErrorClass::Fatal => {
                        return Err(ProcessorError::Decode {
                            tp,
                            offset,
                            source: e,
                        });
                    }
                },
            };
        // Counted once decoded or poison (a message waiting for the registry is read again).
        a.tally.consumed += 1;
        a.tally.bytes += payload.len() as u64;
        match &decoded {
            Ok(r) if r.source.kind == pgtrail_avro::RecordKind::Heartbeat => {
                self.last_activity = idle_since;
                self.metrics.consumed("heartbeat");
            }
            Ok(r) => self.metrics.consumed(r.source.format.as_str()),
            Err(_) => self.metrics.consumed("unknown"),
        }
        let mut out = Outputs::default();
        a.partition.push(
            Incoming {
                offset,
                key,
                payload,
                at: now,
            },
            decoded,
            &mut self.servers,
            &self.metrics,
            &mut out,
        );
        Self::route(
            &self.builder,
            a,
            topic,
            out,
            &mut self.dlq,
            &self.metrics,
            &mut self.totals,
            wall,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn route(
        builder: &rows::RowBuilder,
        a: &mut Assigned,
        topic: &str,
        out: Outputs,
        dlq: &mut DeadLetters,
        metrics: &Metrics,
        totals: &mut Totals,
        now: DateTime<Utc>,
    ) -> Result<(), ProcessorError> {
        a.tally.add(&out.skipped);
        for d in &out.dead {
            dlq.send(d, metrics)?;
            totals.dead_letters += 1;
            a.tally.dead_letters += 1;
        }
        if out.rows.is_empty() {
            return Ok(());
        }
        a.tally.produced += out.rows.len() as u64;
        let failures = Partition::failures(&out.rows);
        if failures > 0 {
            metrics
                .rows_failed
                .get_or_create(&Metrics::table(topic))
                .inc_by(failures);
        }
        for (row, offset) in out.rows {
            a.rows.push(builder, row, now, offset).map_err(schema_err)?;
        }
        Ok(())
    }
}
