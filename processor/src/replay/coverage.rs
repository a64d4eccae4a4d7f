//! Whether a replay read every offset of its range: the check between the messages Kafka
//! delivers and the plan.
//!
//! Owns [`Coverage`] and [`Step`] (pure: unit- and model-tested). A replay removes every row of
//! its range and adds the rows it derived, so an offset of the range it never read would lose
//! its rows. Two ways that happens: a seek answered from a later offset (Tansu answers a seek
//! inside a record batch with the next batch, as `worker/probe.rs` describes), and offsets
//! missing from the partition (deleted, compacted). Invariants: a range offset is either
//! delivered or reported missing, never passed over; a first answer later than the planned
//! start rewinds the read (bounded by the low watermark) rather than shortening the range or
//! its context. Must not: do I/O.

/// Offsets to seek back each time the first answer came from past the range's start.
pub const REWIND: i64 = 1_000;

/// What to do with a delivered offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read it.
    Take,
    /// Already read (a duplicate delivery): ignore it.
    Skip,
    /// The first answer came from past the range's start: read again from this offset.
    Rewind(i64),
    /// These offsets of the range (first, last) are not in the partition.
    Missing(i64, i64),
}

/// The offsets read so far of one partition's replay.
#[derive(Debug, Clone)]
pub struct Coverage {
    first: i64,
    last: i64,
    low: i64,
    /// The planned start: the context is read from here on, whole.
    want: i64,
    read_from: i64,
    prev: Option<i64>,
}

impl Coverage {
    /// Coverage of the range `first..=last`, read from `read_from`; `low`: the first offset
    /// Kafka has.
    pub fn new(first: i64, last: i64, read_from: i64, low: i64) -> Coverage {
        Coverage {
            first,
            last,
            low,
            want: read_from,
            read_from,
            prev: None,
        }
    }

    /// Where reading (re)starts.
    #[cfg(test)]
    pub fn read_from(&self) -> i64 {
        self.read_from
    }

    /// Decides on the next delivered `offset` (and, unless it is skipped, records it).
    pub fn step(&mut self, offset: i64) -> Step {
        if self.prev.is_some_and(|p| offset <= p) {
            return Step::Skip;
        }
        let expected = self.prev.map_or(self.read_from, |p| p + 1);
        if offset > expected {
            if self.prev.is_none() && offset > self.want && self.read_from > self.low {
                self.read_from = (self.read_from - REWIND).max(self.low);
                return Step::Rewind(self.read_from);
            }
            let (a, b) = (expected.max(self.first), (offset - 1).min(self.last));
            if a <= b {
                return Step::Missing(a, b);
            }
        }
        self.prev = Some(offset);
        Step::Take
    }

    /// Nothing came for a while. Before any offset was read, the broker may be answering a
    /// seek inside a record batch with nothing at all (Tansu 0.6): rewind. Otherwise keep
    /// waiting (`Take`).
    pub fn silence(&mut self) -> Step {
        if self.prev.is_none() && self.read_from > self.low {
            self.read_from = (self.read_from - REWIND).max(self.low);
            return Step::Rewind(self.read_from);
        }
        Step::Take
    }

    /// The broker says the partition's end is reached. Before any offset was read, the seek
    /// was answered from past everything there is: rewind (with nothing left to rewind to, the
    /// range is missing); before the range's last offset was read, the rest of it is missing;
    /// otherwise reading is done (`Take`).
    pub fn end(&mut self) -> Step {
        match self.prev {
            None if self.read_from > self.low => {
                self.read_from = (self.read_from - REWIND).max(self.low);
                Step::Rewind(self.read_from)
            }
            None => Step::Missing(self.first, self.last),
            Some(p) if p < self.last => Step::Missing((p + 1).max(self.first), self.last),
            Some(_) => Step::Take,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_seek_answered_from_past_the_range_start_rewinds_to_the_low_watermark() {
        let mut c = Coverage::new(2_500, 3_000, 2_500, 100);
        assert_eq!(c.step(2_540), Step::Rewind(1_500));
        assert_eq!(c.step(1_520), Step::Take, "context after a rewind is fine");
        let mut c = Coverage::new(2_500, 3_000, 2_000, 100);
        assert_eq!(
            c.step(2_100),
            Step::Rewind(1_000),
            "the context is read whole too"
        );
        let mut c = Coverage::new(150, 3_000, 150, 100);
        assert_eq!(c.step(170), Step::Rewind(100));
        assert_eq!(c.step(120), Step::Take);
        let mut c = Coverage::new(150, 3_000, 100, 100);
        assert_eq!(
            c.step(170),
            Step::Missing(150, 169),
            "nothing left to rewind to"
        );
    }

    #[test]
    fn the_end_before_anything_was_read_rewinds_and_before_the_range_end_is_missing() {
        let mut c = Coverage::new(500, 600, 500, 0);
        assert_eq!(c.end(), Step::Rewind(0));
        assert_eq!(
            c.end(),
            Step::Missing(500, 600),
            "nothing at all from the low watermark"
        );
        let mut c = Coverage::new(500, 600, 400, 0);
        assert_eq!(c.step(400), Step::Take);
        assert_eq!(c.end(), Step::Missing(500, 600));
        let mut c = Coverage::new(5, 6, 5, 0);
        assert_eq!(
            (c.step(5), c.step(6), c.end()),
            (Step::Take, Step::Take, Step::Take)
        );
    }

    #[test]
    fn gaps_inside_the_range_are_reported_and_outside_it_ignored() {
        let mut c = Coverage::new(10, 20, 5, 0);
        assert_eq!(c.step(5), Step::Take);
        assert_eq!(c.step(8), Step::Take, "a gap in the context");
        assert_eq!(c.step(8), Step::Skip);
        assert_eq!(c.step(9), Step::Take);
        assert_eq!(c.step(12), Step::Missing(10, 11));
        let mut c = Coverage::new(10, 20, 5, 0);
        for o in 5..=20 {
            assert_eq!(c.step(o), Step::Take);
        }
        assert_eq!(c.step(30), Step::Take, "a gap past the range");
    }

    proptest! {
        /// Model: a partition holding the offsets `present`, read from the plan's `read_from`
        /// by a broker that answers a seek to anything but its first offset from `overshoot`
        /// offsets later, or (`silent`) not at all (a seek inside a record batch). Read until
        /// done, every range offset present is taken, and an absent one is reported, never
        /// passed over.
        #[test]
        fn every_range_offset_is_taken_or_reported(
            present in proptest::collection::btree_set(0i64..200, 1..150),
            first_at in 0usize..150,
            len in 0i64..60,
            context in 0i64..50,
            overshoot in 0i64..30,
            silent in any::<bool>(),
        ) {
            let low = *present.iter().next().unwrap();
            let high = *present.iter().next_back().unwrap();
            let first = *present.iter().nth(first_at % present.len()).unwrap();
            let last = (first + len).min(high);
            let want = (first - context).max(low);
            let mut c = Coverage::new(first, last, want, low);
            let mut taken = std::collections::BTreeSet::new();
            let mut missing = None;
            'read: for _ in 0..50 {
                let seek = c.read_from();
                taken.clear();
                // A seek past the first offset is answered from later, or (`silent`) with
                // nothing at all.
                if seek > low && silent {
                    match c.silence() {
                        Step::Rewind(_) => continue 'read,
                        other => prop_assert!(false, "silence before anything read: {:?}", other),
                    }
                }
                let start = if seek > low { seek + overshoot } else { seek };
                for &o in present.range(start..) {
                    match c.step(o) {
                        Step::Take => {
                            taken.insert(o);
                        }
                        Step::Skip => {}
                        Step::Rewind(_) => continue 'read,
                        Step::Missing(a, b) => {
                            missing = Some((a, b));
                            break 'read;
                        }
                    }
                }
                match c.end() {
                    Step::Rewind(_) => continue 'read,
                    Step::Missing(a, b) => missing = Some((a, b)),
                    Step::Take | Step::Skip => {}
                }
                break;
            }
            match missing {
                None => {
                    prop_assert!((first..=last).all(|o| taken.contains(&o)), "every range offset read");
                    prop_assert!(present.range(want..=last).all(|o| taken.contains(o)), "the context read whole");
                }
                Some((a, b)) => {
                    prop_assert!(first <= a && a <= b && b <= last);
                    prop_assert!((a..=b).all(|o| !present.contains(&o)), "only absent offsets reported");
                }
            }
        }
    }
}
