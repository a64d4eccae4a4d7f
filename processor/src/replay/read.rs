//! Reading a replay's records from Kafka and deriving their rows again, with the settings of
//! the configuration given now (the point of a replay: a parser fix, another outcome window).
//!
//! Owns [`Reader`] and [`Derived`]. Per partition: a fresh [`Partition`] reads from the plan's
//! `read_from` (context before the range), on past the range until every record of the range
//! is decided (its outcome known, its stderr lines complete), or to the end of the partition,
//! where what is still held is released as the live processor releases an idle partition.
//! A plan that hands over (`--continue-as`) stops at the range's last offset instead and
//! returns the partition's checkpoint there: what is undecided then is the live group's to
//! decide, exactly as after a restart (context records are before that checkpoint's range, so
//! they are never the group's to emit).
//! Invariants: every offset of the range is read, or the replay fails naming it (`coverage`: a
//! seek answered from a later batch rewinds); only rows, dead letters and tallies of records
//! inside the range are kept; a registry that cannot be reached is waited for (the message is
//! decoded again), never a dead letter. Must not: write anything (the caller decides), or log
//! record contents.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use pgtrail_avro::{Decoder, RawRecordRef};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tracing::{info, warn};

use super::coverage::{Coverage, Step};
use super::plan::PartitionPlan;
use crate::config::Config;
use crate::delta::RowBuffer;
use crate::error::{ErrorClass, ProcessorError};
use crate::job::JobTally;
use crate::partition::{DeadLetter, Incoming, Outputs, Partition, PartitionCheckpoint};
use crate::telemetry::Metrics;
use crate::topic_partition::TopicPartition;
use crate::worker::servers::ServerCache;

/// No message for this long at or past the range's end: the partition's end is reached.
const END_IDLE: Duration = Duration::from_secs(3);

/// Longest wait for the first record of a batch read to find a partition's end.
const FIRST_WAIT: Duration = Duration::from_secs(30);

/// No message for this long before the range's end: the broker is not delivering.
const STALL: Duration = Duration::from_secs(120);

/// Longest wait for an unreachable Schema Registry between attempts.
const REGISTRY_WAIT_MAX: Duration = Duration::from_secs(30);

/// What a partition's records in the range derive to now.
#[derive(Debug, Default)]
pub struct Derived {
    /// Their rows as Arrow batches (`ingest_ts`: when the replay started).
    pub rows: RowBuffer,
    /// The rows' `event_id`s.
    pub event_ids: HashSet<String>,
    /// Their dead letters.
    pub dead: Vec<DeadLetter>,
    /// The counts of every record read (context and past the range included: a replay's
    /// job facts account for all it read; nothing is held at the end).
    pub tally: JobTally,
    /// Records inside the range.
    pub in_range: u64,
    /// The checkpoint at the range's last offset, for a plan that hands over.
    pub checkpoint: Option<PartitionCheckpoint>,
}

/// Reads partitions for a replay (one at a time).
pub struct Reader {
    client: BaseConsumer,
    decoder: Decoder,
    rt: Handle,
    servers: ServerCache,
    metrics: Metrics,
    window: Duration,
    ingest_ts: DateTime<Utc>,
}

fn kafka(what: &str, e: &KafkaError) -> ProcessorError {
    ProcessorError::Kafka {
        what: what.into(),
        reason: pgtrail_connect::kafka_error(e),
    }
}

impl Reader {
    /// A reader of `cfg`'s Kafka with `cfg`'s parse settings (never joins a group, never
    /// commits offsets).
    pub fn new(cfg: &Config, rt: Handle) -> Result<Reader, ProcessorError> {
        let mut c = crate::consumer::consumer_config(cfg)?;
        c.set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error")
            .set("statistics.interval.ms", "0");
        let client: BaseConsumer = c.create().map_err(|e| kafka("replay client", &e))?;
        Ok(Reader {
            client,
            decoder: crate::consumer::decoder(cfg)?,
            rt,
            servers: ServerCache::new(cfg.clone()),
            metrics: Metrics::default(),
            window: Config::ms(cfg.outcome_window_ms),
            ingest_ts: Utc::now(),
        })
    }

    /// The low and high watermarks of `topic`'s partition `partition`.
    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), ProcessorError> {
        self.client
            .fetch_watermarks(topic, partition, Duration::from_secs(30))
            .map_err(|e| kafka(&format!("watermarks of {topic}/{partition}"), &e))
    }

    /// One past the last offset of `tp`, whose watermarks are `low` and `high`. Tansu 0.6
    /// reports the first offset of the last record batch + 1 as the high watermark: the end
    /// is confirmed by reading that batch.
    pub fn end_offset(
        &self,
        tp: &TopicPartition,
        low: i64,
        high: i64,
    ) -> Result<i64, ProcessorError> {
        if high <= low {
            return Ok(high);
        }
        self.assign(tp, high - 1)?;
        let mut last = None;
        let started = Instant::now();
        let mut quiet_since = started;
        // The batch's first record may take a while (a slow broker); then quiet means done.
        while started.elapsed() < FIRST_WAIT && (last.is_none() || quiet_since.elapsed() < END_IDLE)
        {
            match self.client.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    last = last.max(Some(m.offset()));
                    quiet_since = Instant::now();
                }
                Some(Err(KafkaError::PartitionEOF(_))) if last.is_some() => break,
                _ => {}
            }
        }
        let _ = self.client.unassign();
        match last {
            Some(l) => Ok((l + 1).max(high)),
            None => Err(ProcessorError::Kafka {
                what: format!("the end of {tp}"),
                reason: format!(
                    "no record from offset {} (the reported high watermark - 1) within {} s",
                    high - 1,
                    FIRST_WAIT.as_secs()
                ),
            }),
        }
    }

    /// The partitions of `topic`.
    pub fn partitions(&self, topic: &str) -> Result<Vec<i32>, ProcessorError> {
        let md = self
            .client
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .map_err(|e| kafka(&format!("metadata of {topic}"), &e))?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect())
    }

    /// Per partition, the first offset whose broker timestamp is at or after `at` (`None`:
    /// none is).
    pub fn offsets_at(
        &self,
        topic: &str,
        partitions: &[i32],
        at: DateTime<Utc>,
    ) -> Result<Vec<(i32, Option<i64>)>, ProcessorError> {
        let mut list = TopicPartitionList::new();
        for p in partitions {
            list.add_partition_offset(topic, *p, Offset::Offset(at.timestamp_millis()))
                .map_err(|e| kafka("offsets for times", &e))?;
        }
        let found = self
            .client
            .offsets_for_times(list, Duration::from_secs(30))
            .map_err(|e| kafka(&format!("offsets of {topic} at {at}"), &e))?;
        Ok(found
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => (e.partition(), Some(o)),
                _ => (e.partition(), None),
            })
            .collect())
    }

    /// The broker timestamp of the message at `offset` of `topic`/`partition` (`None`: no
    /// message there within a few seconds).
    pub fn timestamp_at(
        &self,
        tp: &TopicPartition,
        offset: i64,
        low: i64,
    ) -> Result<Option<DateTime<Utc>>, ProcessorError> {
        // A seek inside a record batch is answered with the next batch or nothing (Tansu
        // 0.6): read from earlier until reading begins at or before the offset.
        let mut from = offset;
        loop {
            self.assign(tp, from)?;
            let deadline = Instant::now() + END_IDLE;
            let (mut began, mut answer) = (None, None);
            while Instant::now() < deadline {
                match self.client.poll(Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        began.get_or_insert(m.offset());
                        if m.offset() >= offset {
                            let t = m.timestamp().to_millis();
                            answer = Some(t.and_then(DateTime::from_timestamp_millis));
                            break;
                        }
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => break,
                    _ => {}
                }
            }
            let _ = self.client.unassign();
            // From at or before the offset, the first record at or after it is the answer
            // (the offset itself unless it is missing).
            if began.is_some_and(|b| b <= offset) || from <= low {
                return Ok(answer.flatten());
            }
            from = (from - super::coverage::REWIND).max(low);
        }
    }

    /// The outcome window the records are derived with.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Reads `plan`'s partition and derives the rows of its range; `progress` is called with
    /// the offset reached every few thousand messages.
    pub fn derive(
        &mut self,
        plan: &PartitionPlan,
        mut progress: impl FnMut(i64),
    ) -> Result<Derived, ProcessorError> {
        let tp = &plan.tp;
        let (low, _) = self.watermarks(&tp.topic, tp.partition)?;
        let mut coverage = Coverage::new(plan.first, plan.last, plan.read_from, low);
        let mut part = self.start_at(plan, plan.read_from)?;
        let mut out = Derived::default();
        let mut quiet_since = Instant::now();
        let done = |p: &Partition| {
            p.last_offset().is_some_and(|l| l >= plan.last)
                && (plan.handover || p.safe_offset().is_some_and(|s| s >= plan.last))
        };
        while !done(&part) {
            let at_end = part.last_offset().is_some_and(|l| l >= plan.last);
            let m = match self.client.poll(Duration::from_millis(200)) {
                None => {
                    if at_end && quiet_since.elapsed() >= END_IDLE {
                        break;
                    }
                    if quiet_since.elapsed() >= END_IDLE {
                        let step = coverage.silence();
                        if step != Step::Take {
                            let answer = "nothing";
                            self.follow(plan, step, answer, &mut part, &mut out, &mut quiet_since)?;
                            continue;
                        }
                    }
                    if quiet_since.elapsed() >= STALL {
                        return Err(ProcessorError::Kafka {
                            what: format!("replay of {tp}"),
                            reason: format!(
                                "no record after offset {:?} within {} s (the range ends at {})",
                                part.last_offset(),
                                STALL.as_secs(),
                                plan.last
                            ),
                        });
                    }
                    continue;
                }
                Some(Err(KafkaError::PartitionEOF(_))) if at_end => break,
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    let (step, answer) = (coverage.end(), "the partition's end");
                    self.follow(plan, step, answer, &mut part, &mut out, &mut quiet_since)?;
                    continue;
                }
                Some(Err(e)) => {
                    warn!(partition = %tp, error = %pgtrail_connect::kafka_error(&e), "Kafka error while replaying (retried).");
                    continue;
                }
                Some(Ok(m)) => m,
            };
            // A message fetched for the partition read before (gone with its assignment).
            if m.partition() != tp.partition || m.topic() != &*tp.topic {
                continue;
            }
            quiet_since = Instant::now();
            let offset = m.offset();
            let (step, answer) = (coverage.step(offset), "a later offset");
            if !self.follow(plan, step, answer, &mut part, &mut out, &mut quiet_since)? {
                continue;
            }
            if out.tally.consumed.is_multiple_of(5_000) {
                progress(offset);
            }
            let payload = m.payload().unwrap_or_default();
            let decoded = self.decode(tp, offset, payload)?;
            let mut outputs = Outputs::default();
            part.push(
                Incoming {
                    offset,
                    key: m.key(),
                    payload,
                    at: Instant::now(),
                },
                decoded,
                &mut self.servers,
                &self.metrics,
                &mut outputs,
            );
            out.tally.consumed += 1;
            out.tally.bytes += payload.len() as u64;
            if plan.first <= offset && offset <= plan.last {
                out.in_range += 1;
            }
            self.keep(plan, outputs, &mut out)?;
        }
        if plan.handover {
            out.tally.held_after = part.undecided();
            out.checkpoint = part.checkpoint();
        } else {
            let mut rest = Outputs::default();
            part.finish(&self.metrics, &mut rest);
            self.keep(plan, rest, &mut out)?;
        }
        let _ = self.client.unassign();
        info!(partition = %tp, first = plan.first, last = plan.last, read = out.tally.consumed, rows = out.rows.len(), dead_letters = out.dead.len(), "Replay derived its rows.");
        Ok(out)
    }

    /// Does what a coverage `step` asks: `Ok(true)` reads the message on; a rewind starts the
    /// partition again from earlier (`answer`: what the broker answered the seek with); a
    /// missing range fails the replay, naming it.
    fn follow(
        &self,
        plan: &PartitionPlan,
        step: Step,
        answer: &'static str,
        part: &mut Partition,
        out: &mut Derived,
        quiet_since: &mut Instant,
    ) -> Result<bool, ProcessorError> {
        match step {
            Step::Take => Ok(true),
            Step::Skip => Ok(false),
            Step::Rewind(at) => {
                info!(partition = %plan.tp, asked = plan.read_from, answer, rewind_to = at, "The broker answered the seek late: reading from earlier.");
                *part = self.start_at(plan, at)?;
                *out = Derived::default();
                *quiet_since = Instant::now();
                Ok(false)
            }
            Step::Missing(first, last) => Err(ProcessorError::Unreadable {
                tp: plan.tp.clone(),
                first,
                last,
            }),
        }
    }

    /// Assigns `tp` from `offset`.
    fn assign(&self, tp: &TopicPartition, offset: i64) -> Result<(), ProcessorError> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(offset))
            .map_err(|e| kafka("replay assignment", &e))?;
        self.client
            .assign(&list)
            .map_err(|e| kafka("replay assignment", &e))
    }

    /// Assigns `plan`'s partition from `offset`; a fresh partition state that resumes there
    /// (handing over: one that emits nothing of the context, as if its records were written).
    fn start_at(&self, plan: &PartitionPlan, offset: i64) -> Result<Partition, ProcessorError> {
        let tp = &plan.tp;
        self.assign(tp, offset)?;
        let committed = (offset > 0).then(|| offset - 1);
        let context = plan
            .handover
            .then(|| PartitionCheckpoint::before_range(tp, offset - 1, plan.first - 1));
        Ok(Partition::new(tp.clone(), committed, context, self.window))
    }

    /// Decodes a message, waiting out an unreachable registry.
    fn decode<'p>(
        &self,
        tp: &TopicPartition,
        offset: i64,
        payload: &'p [u8],
    ) -> Result<Result<RawRecordRef<'p>, String>, ProcessorError> {
        let mut wait = Duration::from_millis(500);
        loop {
            match crate::worker::decode(&self.rt, &self.decoder, payload) {
                Ok(r) => return Ok(Ok(r)),
                Err(e) => match e.class() {
                    ErrorClass::Poison => return Ok(Err(e.to_string())),
                    ErrorClass::Retryable => {
                        warn!(partition = %tp, offset, retry_in_ms = wait.as_millis() as u64, error = %e, "The schema registry cannot be reached: waiting, then decoding this message again.");
                        std::thread::sleep(wait);
                        wait = (wait * 2).min(REGISTRY_WAIT_MAX);
                    }
                    ErrorClass::Fatal => {
                        return Err(ProcessorError::Decode {
                            tp: tp.clone(),
                            offset,
                            source: e,
                        });
                    }
                },
            }
        }
    }

    /// Keeps the outputs of records inside the range.
    fn keep(
        &self,
        plan: &PartitionPlan,
        outputs: Outputs,
        out: &mut Derived,
    ) -> Result<(), ProcessorError> {
        let inside = |o: i64| plan.first <= o && o <= plan.last;
        out.tally.add(&outputs.skipped);
        out.tally.produced += outputs.rows.len() as u64;
        out.tally.dead_letters += outputs.dead.len() as u64;
        out.dead
            .extend(outputs.dead.into_iter().filter(|d| inside(d.offset)));
        for (row, offset) in outputs.rows.into_iter().filter(|(_, o)| inside(*o)) {
            out.event_ids.insert(row.event_id().to_owned());
            out.rows
                .push(
                    &row,
                    self.ingest_ts,
                    &plan.tp.topic,
                    plan.tp.partition,
                    offset,
                )
                .map_err(|e| ProcessorError::Internal {
                    reason: format!("replayed row of {}@{offset}: {e}", plan.tp),
                })?;
        }
        Ok(())
    }
}
