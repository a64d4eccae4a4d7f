//! One Kafka partition's processing: decode result in, audit rows and dead letters out, plus
//! the exactly-once bookkeeping that goes into each Delta commit.
//!
//! Owns [`Partition`] and [`PartitionCheckpoint`]. Per message, in offset order: re-shipped
//! records are dropped by source coordinates (`partition/dedup.rs`), then parse, stderr
//! assembly and outcome tracking. Invariants:
//! - the committed offset ([`Partition::safe_offset`]) is below every record still *pending*
//!   (an audit entry held for its outcome, an open stderr record waiting for its continuation
//!   lines), so nothing unwritten is ever behind it; a continuation line attached to an open
//!   record is handled once read (its output is its record's);
//! - rows from records after the safe offset may already be written: the checkpoint lists the
//!   last offset processed and the pending ones, and a replay after a crash emits outputs only
//!   for records past that last offset or pending then (each record's output exactly once);
//! - the dedup memory, the clocks (newest log times) and the sessions' released transactions
//!   committed are the ones as of the safe offset, so a replay makes the same decisions (a
//!   late outcome stays late, an outcome window closes at the same record).
//!
//! Must not: do I/O (the caller writes rows and dead letters).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use foldhash::HashSet;
use pgtrail_avro::{LogFormat, RawRecordRef, RecordKind, RecordSource};

mod checkpoint;
mod dedup;

use checkpoint::Before;
pub use checkpoint::{Anchor, Clock, PartitionCheckpoint, message_hash};
pub use dedup::{DEDUP_FILES, DedupMemory, FileMark, file_key};

use crate::audit::outcome::{Disposition, OutcomeTracker};
use crate::audit::{AuditRow, Outcome, Source};
use crate::job::{JobTally, Skip};
use crate::parse::stderr::{LineKind, Pushed, StderrAssembler};
use crate::parse::{LogRecord, ServerFormat, parse_record};
use crate::telemetry::Metrics;
use crate::topic_partition::TopicPartition;

/// How far behind the newest stderr log time an open record is considered complete.
const STDERR_SETTLE: chrono::Duration = chrono::Duration::seconds(2);

/// A record for the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Topic-partition of the record.
    pub tp: TopicPartition,
    /// Offset.
    pub offset: i64,
    /// `decode`, `parse` or `audit`.
    pub kind: &'static str,
    /// Why.
    pub reason: String,
    /// The message key, as consumed.
    pub key: Option<Vec<u8>>,
    /// The message value, as consumed.
    pub payload: Vec<u8>,
}

/// Where a record's outputs go.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Rows with the offset of the record they came from.
    pub rows: Vec<(AuditRow, i64)>,
    /// Dead letters.
    pub dead: Vec<DeadLetter>,
    /// Records that became no row, by reason (its `skipped` counts only).
    pub skipped: JobTally,
}

impl Outputs {
    /// Counts a record that became no row (the metric and the commit's job facts).
    fn skip(&mut self, reason: Skip, metrics: &Metrics) {
        metrics.skipped(reason.as_str());
        self.skipped.skip(reason, 1);
    }
}

/// A consumed message's coordinates and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value.
    pub payload: &'a [u8],
    /// When it was consumed (the poll loop reads the clock every few messages; see `consumer.rs`).
    pub at: Instant,
}

/// A parsed record's coordinates (`source.origin` is its Kafka offset) and text.
#[derive(Debug, Clone)]
struct Tag {
    source: Source,
    raw: String,
}

/// The per-server view a partition needs.
pub trait Servers {
    /// Parsing settings of a record's server (its name, its format, and the `log_line_prefix`
    /// and `log_timezone` the record carries).
    fn format(&mut self, source: &RecordSource) -> Result<&ServerFormat, String>;
    /// Whether records of `format` from `server` become rows.
    fn accepts(&self, server: &str, format: LogFormat) -> bool;
}

/// State of one assigned topic-partition.
pub struct Partition {
    /// The partition.
    pub tp: TopicPartition,
    /// The `txn` version this instance last read or committed (fencing: another value in the
    /// table means another instance wrote this partition).
    pub committed: Option<i64>,
    replay_last: i64,
    replay_pending: HashSet<i64>,
    dedup: DedupMemory,
    assembler: StderrAssembler<Tag>,
    tracker: OutcomeTracker,
    pending: BTreeMap<i64, u32>,
    /// Per pending offset, the state just before it (what a checkpoint whose version is the
    /// offset before records); entries of offsets no longer pending are dropped at
    /// checkpoints.
    befores: BTreeMap<i64, Before>,
    /// The last message pushed, and the state before it (while the current one is handled).
    newest: Option<Anchor>,
    before: Before,
    last: Option<i64>,
    last_activity: Instant,
    stderr_watermark: Option<DateTime<Utc>>,
    /// Rows the tracker released for the record at hand (empty between records; kept for
    /// its allocation).
    released: Vec<AuditRow>,
    /// Shipper heartbeats past the last checkpoint: (offset, sent at, µs since the epoch).
    heartbeats: Vec<(i64, i64)>,
    /// The newest heartbeat at or below the last checkpoint's version.
    heartbeat: Option<i64>,
}

/// Largest release buffer kept between records, in rows.
const RELEASED_KEPT: usize = 256;

impl Partition {
    /// A partition resuming from `checkpoint` (or from the start when `None`).
    pub fn new(
        tp: TopicPartition,
        committed: Option<i64>,
        checkpoint: Option<PartitionCheckpoint>,
        outcome_window: Duration,
    ) -> Partition {
        let cp = checkpoint.unwrap_or_else(|| {
            let at = committed.unwrap_or(-1);
            PartitionCheckpoint::before_range(&tp, at, at)
        });
        let tracker =
            OutcomeTracker::resumed(outcome_window, cp.version, cp.clock.log_time, cp.released);
        Partition {
            tp,
            committed,
            replay_last: cp.last,
            replay_pending: cp.pending.into_iter().collect(),
            dedup: DedupMemory::new(cp.files, DEDUP_FILES),
            assembler: StderrAssembler::default(),
            tracker,
            pending: BTreeMap::new(),
            befores: BTreeMap::new(),
            newest: cp.anchor,
            before: Before::default(),
            last: committed,
            last_activity: Instant::now(),
            stderr_watermark: cp.clock.stderr_time,
            released: Vec::new(),
            heartbeats: Vec::new(),
            heartbeat: cp.heartbeat,
        }
    }

    /// The offset to resume consuming at.
    pub fn resume_offset(&self) -> i64 {
        self.committed.map_or(0, |v| v + 1)
    }

    fn emits(&self, offset: i64) -> bool {
        offset > self.replay_last || self.replay_pending.contains(&offset)
    }

    fn add_pending(&mut self, offset: i64) {
        // A record is first pending while its own message is handled (an open stderr record,
        // a held entry, an unaudited failure); pending again (a stderr record completed, then
        // held), it keeps that state.
        let before = self.before;
        self.befores.entry(offset).or_insert(before);
        *self.pending.entry(offset).or_default() += 1;
    }

    fn remove_pending(&mut self, offset: i64) {
        if let Some(n) = self.pending.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(&offset);
            }
        }
    }

    /// Records handled and not yet decided (held for their outcome, open stderr records).
    pub fn undecided(&self) -> u64 {
        self.pending.len() as u64
    }

    /// Rows held for their outcome.
    pub fn held(&self) -> usize {
        self.tracker.held()
    }

    /// Time since the last message.
    pub fn idle_for(&self) -> Duration {
        self.last_activity.elapsed()
    }

    /// The last offset consumed.
    pub fn last_offset(&self) -> Option<i64> {
        self.last
    }

    /// The last message pushed (after a resume: the checkpoint's anchor until one is).
    pub fn newest(&self) -> Option<Anchor> {
        self.newest
    }

    /// Handles one message. `record` is the decode result.
    pub fn push(
        &mut self,
        msg: Incoming<'_>,
        record: Result<RawRecordRef<'_>, String>,
        servers: &mut dyn Servers,
        metrics: &Metrics,
        out: &mut Outputs,
    ) {
        let Incoming {
            offset,
            key,
            payload,
            at,
        } = msg;
        self.last = Some(offset);
        self.before = Before {
            anchor: self.newest.replace(Anchor {
                offset,
                hash: message_hash(key, payload),
            }),
            clock: self.clock(),
        };
        let idle_since = std::mem::replace(&mut self.last_activity, at);
        let dead = |kind: &'static str, reason: String| DeadLetter {
            tp: self.tp.clone(),
            offset,
            kind,
            reason,
            key: key.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
        };
        let rec = match record {
            Ok(r) => r,
            Err(reason) => {
                if self.emits(offset) {
                    out.dead.push(dead("decode", reason));
                } else {
                    out.skip(Skip::Replayed, metrics);
                }
                return;
            }
        };
        if rec.source.kind == RecordKind::Heartbeat {
            // Not a log record: no row, no dedup, no activity (an idle partition that
            // receives only heartbeats releases what it holds); it counts once a checkpoint
            // covers it.
            self.last_activity = idle_since;
            self.heartbeats.push((offset, rec.read_at_micros));
            out.skip(Skip::Heartbeat, metrics);
            return;
        }
        // File ids are shared (`Arc`) by the decoder and the memory: no copy per record.
        if self.dedup.check(offset, &rec.source.file_id, rec.offset) {
            out.skip(Skip::Duplicate, metrics);
            return;
        }
        let format = rec.source.format;
        if !servers.accepts(&rec.source.server, format) {
            out.skip(Skip::FormatFiltered, metrics);
            return;
        }
        // The record's text, validated once and read in place (in the message): the parsers
        // borrow their fields from it and a row copies it whole (one copy instead of a dozen
        // field strings).
        let data = rec.data;
        let (raw, invalid) = match std::str::from_utf8(&data) {
            Ok(text) => (Cow::Borrowed(text), None),
            Err(e) => (String::from_utf8_lossy(&data), Some(e)),
        };
        let parsed = servers
            .format(&rec.source)
            .and_then(|server| parse_record(format, &raw, invalid, server));
        let (log, kind) = match parsed {
            Ok(p) => p,
            Err(reason) => {
                let reason = if rec.truncated {
                    format!("{reason} (record truncated by the shipper)")
                } else {
                    reason
                };
                if self.emits(offset) {
                    out.dead.push(dead("parse", reason));
                } else {
                    out.skip(Skip::Replayed, metrics);
                }
                return;
            }
        };
        let source = Source {
            server: rec.source.server,
            host: rec.source.host,
            format,
            path: rec.source.source_path,
            file_id: rec.source.file_id,
            offset: rec.offset,
            origin: offset,
        };
        // The outcome window's clock moves as messages arrive (a stderr record may complete
        // messages later) and rows past it are released once per message: a replay from any
        // message meets the same windows at the same messages.
        if let Some(t) = log.log_time {
            self.tracker.observe(t);
        }
        if format == LogFormat::Stderr {
            // Held until its auxiliary lines arrived: the record owns its texts.
            let log = log.into_owned();
            let tag = Tag {
                source,
                raw: raw.into_owned(),
            };
            self.push_stderr(offset, log, kind, tag, metrics, out);
        } else {
            self.track(&log, &source, &raw, key, payload, metrics, out);
        }
        let mut released = std::mem::take(&mut self.released);
        self.tracker.sweep(&mut released);
        self.emit(released, metrics, out);
    }

    /// Handles a stderr record (message `offset`) and the records it completes.
    fn push_stderr(
        &mut self,
        offset: i64,
        log: LogRecord<'static>,
        kind: LineKind,
        tag: Tag,
        metrics: &Metrics,
        out: &mut Outputs,
    ) {
        if let Some(t) = log.log_time {
            self.stderr_watermark = Some(self.stderr_watermark.map_or(t, |w| w.max(t)));
        }
        // Only an open record is pending (until it is complete); a line attached to an open
        // record has no output of its own, so its offset is handled once it is read.
        let (mut completed, orphan) = match self.assembler.push(log, kind, tag) {
            Pushed::Opened(previous) => {
                self.add_pending(offset);
                (previous.into_iter().collect::<Vec<_>>(), None)
            }
            Pushed::Attached => {
                out.skip(Skip::Continuation, metrics);
                (Vec::new(), None)
            }
            Pushed::Orphan(line) => (Vec::new(), Some(line)),
        };
        if let Some(w) = self.stderr_watermark {
            completed.extend(self.assembler.finish_before(w - STDERR_SETTLE));
        }
        // In a replayable order (not the map's).
        completed.sort_by_key(|(l, t)| (l.log_time, t.source.origin));
        // Lines of a stderr record span messages: dead letters carry the record's text.
        for (log, tag) in completed.into_iter().chain(orphan) {
            self.remove_pending(tag.source.origin);
            self.track(&log, &tag.source, &tag.raw, None, &[], metrics, out);
        }
    }

    /// Hands a parsed record (`raw`: its text) to the outcome tracker and emits what that
    /// released; an unparseable audit entry is dead-lettered.
    #[allow(clippy::too_many_arguments)]
    fn track(
        &mut self,
        log: &LogRecord<'_>,
        source: &Source,
        raw: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        metrics: &Metrics,
        out: &mut Outputs,
    ) {
        let mut released = std::mem::take(&mut self.released);
        let offset = source.origin;
        let disposition = self.tracker.push_record(log, source, raw, &mut released);
        match disposition {
            // Every row emitted releases one pending count of its origin.
            Disposition::Held | Disposition::UnauditedFailure => self.add_pending(offset),
            Disposition::Poison(reason) if self.emits(offset) => {
                out.dead.push(DeadLetter {
                    tp: self.tp.clone(),
                    offset,
                    kind: "audit",
                    reason,
                    key: key.map(<[u8]>::to_vec),
                    payload: if payload.is_empty() {
                        raw.as_bytes().to_vec()
                    } else {
                        payload.to_vec()
                    },
                });
            }
            Disposition::Skipped => out.skip(Skip::NotAudit, metrics),
            Disposition::LateOutcome => out.skip(Skip::LateOutcome, metrics),
            Disposition::Poison(_) => out.skip(Skip::Replayed, metrics),
        }
        self.emit(released, metrics, out);
    }

    /// Moves released `rows` to the outputs, or counts them as replayed; keeps their buffer
    /// for the next release (`self.released`) unless a large release grew it.
    fn emit(&mut self, mut rows: Vec<AuditRow>, metrics: &Metrics, out: &mut Outputs) {
        for row in rows.drain(..) {
            let offset = row.origin;
            self.remove_pending(offset);
            if self.emits(offset) {
                out.rows.push((row, offset));
            } else {
                out.skip(Skip::Replayed, metrics);
            }
        }
        if rows.capacity() <= RELEASED_KEPT {
            self.released = rows;
        }
    }

    /// Releases what waits on time: every pending record when the partition was idle longer
    /// than `idle` (end of input, or a quiet server), else rows past the outcome window.
    pub fn release_idle(&mut self, idle: Duration, metrics: &Metrics, out: &mut Outputs) {
        if self.pending.is_empty() || self.last_activity.elapsed() < idle {
            return;
        }
        self.finish(metrics, out);
    }

    /// Releases every pending record (end of input).
    pub fn finish(&mut self, metrics: &Metrics, out: &mut Outputs) {
        let mut open = self.assembler.finish();
        open.sort_by_key(|(l, t)| (l.log_time, t.source.origin));
        for (log, tag) in open {
            self.remove_pending(tag.source.origin);
            self.track(&log, &tag.source, &tag.raw, None, &[], metrics, out);
        }
        let mut released = std::mem::take(&mut self.released);
        self.tracker.finish(&mut released);
        self.emit(released, metrics, out);
    }

    /// The offset every record up to which is fully handled (`None`: nothing consumed).
    pub fn safe_offset(&self) -> Option<i64> {
        match self.pending.keys().next() {
            Some(&first) => Some(first - 1),
            None => self.last,
        }
    }

    fn clock(&self) -> Clock {
        Clock {
            log_time: self.tracker.watermark(),
            stderr_time: self.stderr_watermark,
        }
    }

    /// The checkpoint of a commit at [`Partition::safe_offset`]; advances the dedup memory.
    pub fn checkpoint(&mut self) -> Option<PartitionCheckpoint> {
        let version = self.safe_offset()?;
        let pending = &self.pending;
        self.befores.retain(|o, _| pending.contains_key(o));
        let before = if Some(version) == self.last {
            Before {
                anchor: self.newest,
                clock: self.clock(),
            }
        } else {
            self.befores
                .get(&(version + 1))
                .copied()
                .unwrap_or_default()
        };
        let anchor = before.anchor.filter(|a| a.offset <= version);
        self.dedup.advance_to(version);
        // Pending now and meant to be written, plus the previous run's pending records this
        // run has not reached yet; a replay emits exactly these within (version, last].
        let current = self.last.unwrap_or(version);
        let last = current.max(self.replay_last);
        let mut pending: BTreeSet<i64> = self
            .pending
            .keys()
            .copied()
            .filter(|o| self.emits(*o))
            .collect();
        pending.extend(self.replay_pending.iter().filter(|o| **o > current));
        pending.retain(|o| *o > version && *o <= last);
        let covered = self.heartbeats.iter().filter(|(o, _)| *o <= version);
        self.heartbeat = covered.map(|(_, at)| *at).chain(self.heartbeat).max();
        self.heartbeats.retain(|(o, _)| *o > version);
        Some(PartitionCheckpoint {
            tp: self.tp.clone(),
            version,
            last,
            pending: pending.into_iter().collect(),
            files: self.dedup.stored(),
            anchor,
            clock: before.clock,
            released: self.tracker.released_as_of(version),
            heartbeat: self.heartbeat,
        })
    }

    /// Rows of the result FAILURE among `rows` (for metrics).
    pub fn failures(rows: &[(AuditRow, i64)]) -> u64 {
        rows.iter()
            .filter(|(r, _)| r.result == Outcome::Failure)
            .count() as u64
    }
}

#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod model;
