//! Defence against brokers that skip offsets: decides, per consumed message of a partition,
//! whether to handle it, skip it (handled before) or re-read the partition from earlier.
//!
//! Owns [`OffsetProbe`]. Tansu 0.6 answers a fetch from inside a record batch with the *next*
//! batch (measured: a seek to 50 in a 100-record batch returns offsets from 100); librdkafka
//! can restart a fetch inside a batch too (seen once around a cooperative rebalance). So when
//! the first message after a resume, or any message after the last one handled, is further on
//! than expected, the partition is read again from earlier (1000 offsets back, then 8 times
//! further each time) and what was handled before is skipped; a gap still there after
//! re-reading (compaction, transaction markers, retention) is real and accepted once.
//! Invariants: no message past the expected offset is handled while earlier ones may exist;
//! a message at or below the last handled one is never handled again. Must not: talk to
//! Kafka (the caller seeks).

use tracing::{info, warn};

use crate::topic_partition::TopicPartition;

/// First step back when a partition must be read again from earlier.
const FIRST_STEP: i64 = 1000;

/// What to do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Handle,
    /// Handled before (re-read while probing): skip it.
    Skip,
    /// Offsets before it may be missing: seek the partition to this offset (skip this one).
    Seek(i64),
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    /// The first offset wanted.
    target: i64,
    /// How far back the next seek goes.
    step: i64,
    /// The last seek went to offset 0.
    reached_start: bool,
}

/// One partition's probe.
#[derive(Debug, Clone, Default)]
pub struct OffsetProbe {
    probe: Option<Probe>,
    /// The last offset before a gap that re-reading showed to be real: not probed again.
    accepted_gap: Option<i64>,
}

impl OffsetProbe {
    /// A probe for a partition resuming at `next` (`None`: from its beginning).
    pub fn resuming_at(next: Option<i64>) -> OffsetProbe {
        OffsetProbe {
            probe: next.map(|target| Probe {
                target,
                step: FIRST_STEP,
                reached_start: false,
            }),
            accepted_gap: None,
        }
    }

    /// What to do with the message at `offset` of `tp`, whose last handled offset is `last`.
    pub fn check(&mut self, tp: &TopicPartition, offset: i64, last: Option<i64>) -> Verdict {
        if self.probe.is_none()
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
            self.probe = Some(Probe {
                target: last + 1,
                step: FIRST_STEP,
                reached_start: false,
            });
        }
        if let Some(pr) = self.probe {
            if offset <= pr.target || pr.reached_start {
                if offset > pr.target {
                    warn!(
                        topic = &*tp.topic,
                        partition = tp.partition,
                        wanted = pr.target,
                        first = offset,
                        "Records before the first available offset are gone (retention?)."
                    );
                }
                self.probe = None;
            } else {
                let to = (pr.target - pr.step).max(0);
                info!(
                    topic = &*tp.topic,
                    partition = tp.partition,
                    wanted = pr.target,
                    got = offset,
                    seek = to,
                    "Broker skipped past the resume offset; re-reading from earlier."
                );
                self.probe = Some(Probe {
                    target: pr.target,
                    step: pr.step.saturating_mul(8),
                    reached_start: to == 0,
                });
                return Verdict::Seek(to);
            }
        }
        if last.is_some_and(|l| offset <= l) {
            return Verdict::Skip;
        }
        Verdict::Handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        TopicPartition::new("t", 0)
    }

    /// Resuming at 5000 on a broker that answers with the next batch (at 5100): read again
    /// from 4000, whose batch starts at 3900; skip what was handled, handle from 5000.
    #[test]
    fn a_resume_past_the_target_reads_again_from_earlier() {
        let mut p = OffsetProbe::resuming_at(Some(5000));
        assert_eq!(p.check(&tp(), 5100, Some(4999)), Verdict::Seek(4000));
        assert_eq!(p.check(&tp(), 3900, Some(4999)), Verdict::Skip);
        assert_eq!(p.check(&tp(), 4999, Some(4999)), Verdict::Skip);
        assert_eq!(p.check(&tp(), 5000, Some(4999)), Verdict::Handle);
        assert_eq!(p.check(&tp(), 5001, Some(5000)), Verdict::Handle);
    }

    /// Each seek goes 8 times further back, down to 0; from there what comes is accepted.
    #[test]
    fn seeks_go_further_back_until_the_start() {
        let mut p = OffsetProbe::resuming_at(Some(20_000));
        assert_eq!(p.check(&tp(), 20_500, Some(19_999)), Verdict::Seek(19_000));
        assert_eq!(p.check(&tp(), 20_500, Some(19_999)), Verdict::Seek(12_000));
        assert_eq!(p.check(&tp(), 20_500, Some(19_999)), Verdict::Seek(0));
        // Retention deleted everything before 20_500: accepted.
        assert_eq!(p.check(&tp(), 20_500, Some(19_999)), Verdict::Handle);
    }

    /// A gap mid-stream is probed once; still there after re-reading, it is accepted.
    #[test]
    fn a_gap_is_probed_once_then_accepted() {
        let mut p = OffsetProbe::resuming_at(None);
        assert_eq!(p.check(&tp(), 0, None), Verdict::Handle);
        assert_eq!(p.check(&tp(), 1, Some(0)), Verdict::Handle);
        assert_eq!(p.check(&tp(), 9, Some(1)), Verdict::Seek(0));
        assert_eq!(p.check(&tp(), 9, Some(1)), Verdict::Handle, "a real gap");
        assert_eq!(
            p.check(&tp(), 30, Some(9)),
            Verdict::Seek(0),
            "a new gap is probed"
        );
    }

    /// A fresh partition handles what comes; nothing at or below the last handled offset is
    /// handled again.
    #[test]
    fn nothing_is_handled_twice() {
        let mut p = OffsetProbe::resuming_at(None);
        assert_eq!(p.check(&tp(), 0, None), Verdict::Handle);
        assert_eq!(p.check(&tp(), 0, Some(0)), Verdict::Skip);
    }
}
