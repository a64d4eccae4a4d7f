//! What a partition's next message means for where it is read: handle it, skip it (handled
//! before), read the partition again from earlier, or stop because the topic is not the one
//! the table was written from.
//!
//! Owns [`OffsetProbe`]. What can go wrong between a broker and the offsets a table holds:
//! - brokers skip offsets: Tansu 0.6 answers a fetch from inside a record batch with the *next*
//!   batch (a seek to 50 in a 100-record batch returns offsets from 100) and nothing at all
//!   from inside the last batch; librdkafka restarted a fetch inside a batch once around a
//!   rebalance. A message further on than wanted makes the partition be read again from
//!   earlier (1000 offsets back, then 8 times further each time, down to 0), skipping what was
//!   handled; a gap still there after re-reading (compaction, retention) is accepted once. A
//!   partition that receives nothing where it was positioned is nudged back to the broker's
//!   reported end ([`OffsetProbe::idle`]).
//! - brokers deliver again what was handled (Tansu re-sends a batch from its start): a message
//!   below where the partition stands is skipped, and the partition is *verified*;
//! - the topic was recreated or truncated under the table. A partition is verified by seeing
//!   a message it handled again, with the same bytes: a resume is positioned at its
//!   checkpoint's anchor (the last offset at or below the version, with a hash of its bytes),
//!   and a message arriving below where the partition stood (a broker resetting an
//!   out-of-range position to the earliest offset, or re-sending) makes it wait for the last
//!   message it handled. Another message at that offset, or a topic that ends before it
//!   (nothing more after a nudge to the broker's end), is a recreated topic: stop.
//!
//! Invariants: no message past the wanted offset is handled while earlier ones may exist or
//! while a verification is open; a message at or below the last handled one is never handled
//! again. Must not: talk to Kafka (the caller seeks and fetches watermarks).

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use crate::partition::Anchor;
use crate::topic_partition::TopicPartition;

/// First step back when a partition must be read again from earlier.
const FIRST_STEP: i64 = 1000;

/// How long a positioned partition may receive nothing before it is nudged.
pub const IDLE_NUDGE: Duration = Duration::from_secs(3);

/// What to do with a message (or with a partition that receives none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Handle,
    /// Handled before: skip it.
    Skip,
    /// Seek the partition to this offset (skip the message).
    Seek(i64),
    /// The topic is not the one the table was written from (recreated or truncated): stop.
    /// `position` is the first offset the table expects.
    Reset {
        /// The first offset the table expects.
        position: i64,
    },
}

/// Positioning in progress: offsets are read (again) until what is wanted was seen.
#[derive(Debug, Clone, Copy)]
struct Want {
    /// The first offset wanted.
    target: i64,
    /// A message handled before, to see again with the same bytes before anything after it
    /// is handled.
    verify: Option<Anchor>,
    /// How far back the next seek goes.
    step: i64,
    /// The last seek went to offset 0.
    reached_start: bool,
    /// The partition was nudged to the broker's end and nothing verified it since.
    nudged: bool,
}

impl Want {
    fn at(target: i64, verify: Option<Anchor>) -> Want {
        Want {
            target,
            verify,
            step: FIRST_STEP,
            reached_start: false,
            nudged: false,
        }
    }

    /// The offset a message must be at or below for positioning to be done.
    fn need(&self) -> i64 {
        self.verify
            .map_or(self.target, |a| a.offset.min(self.target))
    }
}

/// One partition's probe.
#[derive(Debug, Clone)]
pub struct OffsetProbe {
    want: Option<Want>,
    /// Where the partition stands: where it was last positioned, then past each message
    /// handled. A message below it was not asked for.
    floor: i64,
    /// When a message last arrived, or the partition was last positioned.
    quiet_since: Instant,
    /// The last offset before a gap that re-reading showed to be real: not probed again.
    accepted_gap: Option<i64>,
    /// Paused by the worker (its table's commit in flight, the Schema Registry away): it
    /// receives nothing because it asks for nothing, which says nothing about the topic.
    paused: bool,
}

impl OffsetProbe {
    /// A probe for a partition whose last handled offset is `version` (`None`: none), with
    /// `anchor` to verify. Returns it and the offset to position the partition at.
    pub fn resuming(version: Option<i64>, anchor: Option<Anchor>) -> (OffsetProbe, i64) {
        let next = version.map_or(0, |v| v + 1);
        let anchor = version.and(anchor).filter(|a| a.offset < next);
        let at = anchor.map_or(next, |a| a.offset);
        let probe = OffsetProbe {
            want: version.map(|_| Want::at(next, anchor)),
            floor: at,
            quiet_since: Instant::now(),
            accepted_gap: None,
            paused: false,
        };
        (probe, at)
    }

    /// What to do with the message at `offset` of `tp` (`hash`: of its bytes, asked only to
    /// verify), whose last handled offset is `last` and last message pushed `newest`.
    pub fn check(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        hash: impl FnOnce() -> u64,
        last: Option<i64>,
        newest: Option<Anchor>,
    ) -> Verdict {
        self.quiet_since = Instant::now();
        let position = last.map_or(0, |l| l + 1);
        if offset < self.floor && self.want.is_none_or(|w| w.verify.is_none()) {
            warn!(
                topic = &*tp.topic,
                partition = tp.partition,
                stood_at = self.floor,
                got = offset,
                "A message below where the partition stood: verifying that the topic is the one read."
            );
            let target = self.want.map_or(position, |w| w.target);
            self.want = Some(Want::at(target, newest));
        }
        if self.want.is_none()
            && let Some(last) = last
            && offset > last + 1
            && self.accepted_gap != Some(last)
        {
            warn!(
                topic = &*tp.topic,
                partition = tp.partition,
                expected = last + 1,
                got = offset,
                "Offsets skipped; re-reading to make sure none is lost."
            );
            self.accepted_gap = Some(last);
            self.want = Some(Want::at(last + 1, None));
        }
        if let Some(mut w) = self.want {
            if let Some(a) = w.verify
                && offset == a.offset
            {
                if hash() != a.hash {
                    error!(
                        topic = &*tp.topic,
                        partition = tp.partition,
                        offset,
                        "Another message stands where one was handled: the topic was recreated."
                    );
                    return Verdict::Reset { position };
                }
                w.verify = None;
            }
            let need = w.need();
            if offset <= need {
                // Moving forward to what is wanted; done once the verification passed.
                self.want = w.verify.is_some().then_some(w);
            } else if w.reached_start {
                if w.verify.is_some() {
                    warn!(
                        topic = &*tp.topic,
                        partition = tp.partition,
                        wanted = need,
                        "The message to verify is gone (retention?): the topic cannot be verified."
                    );
                }
                if offset > w.target {
                    error!(
                        topic = &*tp.topic,
                        partition = tp.partition,
                        wanted = w.target,
                        first = offset,
                        "Records before the first available offset are gone (retention?): they cannot be written."
                    );
                }
                self.want = None;
            } else {
                let to = (need - w.step).max(0);
                info!(
                    topic = &*tp.topic,
                    partition = tp.partition,
                    wanted = need,
                    got = offset,
                    seek = to,
                    "Broker skipped past the wanted offset; re-reading from earlier."
                );
                w.step = w.step.saturating_mul(8);
                w.reached_start = to == 0;
                self.want = Some(w);
                return self.seek(to);
            }
        }
        if last.is_some_and(|l| offset <= l) {
            return Verdict::Skip;
        }
        self.floor = offset + 1;
        Verdict::Handle
    }

    /// The message at `offset` (handled as [`Verdict::Handle`] said) could not be, and the
    /// partition is sought back to it: it is read again from there.
    pub fn retry_at(&mut self, offset: i64) {
        self.floor = self.floor.min(offset);
        self.quiet_since = Instant::now();
    }

    fn seek(&mut self, to: i64) -> Verdict {
        self.floor = to;
        self.quiet_since = Instant::now();
        Verdict::Seek(to)
    }

    /// A partition being positioned that received nothing for [`IDLE_NUDGE`], whose broker reports
    /// `high` as its high watermark and whose last handled offset is `last`. When that end is
    /// not past what is wanted (Tansu 0.6 answers nothing from inside its last batch and
    /// reports the batch's first offset + 1): seek there; if it was sought there before and
    /// the message to verify still did not come, the topic ends before it: reset.
    pub fn idle(&mut self, high: i64, last: Option<i64>) -> Option<Verdict> {
        self.idle_after(high, last, IDLE_NUDGE)
    }

    /// Records that the partition is paused (nothing arrives, and it is never nudged) or
    /// resumed (it may receive nothing for [`IDLE_NUDGE`] from now before it is).
    pub fn set_paused(&mut self, paused: bool) {
        if self.paused && !paused {
            self.quiet_since = Instant::now();
        }
        self.paused = paused;
    }

    /// [`OffsetProbe::idle`] with `nudge` instead of [`IDLE_NUDGE`].
    fn idle_after(&mut self, high: i64, last: Option<i64>, nudge: Duration) -> Option<Verdict> {
        let mut w = self.want?;
        if self.paused || self.quiet_since.elapsed() < nudge {
            return None;
        }
        self.quiet_since = Instant::now();
        let need = w.need();
        if high > need {
            return None;
        }
        if w.nudged && w.verify.is_some() {
            error!(
                high,
                wanted = need,
                "The topic ends before the message to verify: it was recreated or truncated."
            );
            return Some(Verdict::Reset {
                position: last.map_or(0, |l| l + 1),
            });
        }
        w.nudged = true;
        self.want = Some(w);
        Some(self.seek((high - 1).max(0).min(self.floor)))
    }

    /// Whether the partition is being positioned and received nothing for [`IDLE_NUDGE`]
    /// (time to ask the broker for its end).
    pub fn nudge_due(&self) -> bool {
        self.want.is_some() && !self.paused && self.quiet_since.elapsed() >= IDLE_NUDGE
    }

    /// Whether the partition is being positioned.
    #[cfg(test)]
    fn waiting(&self) -> bool {
        self.want.is_some()
    }
}

#[cfg(test)]
mod tests;
