//! Dedup memory of one partition: which records of each source file were already handled, so a
//! file re-shipped by a restarted shipper yields no second row.
//!
//! Owns [`DedupMemory`]. Per file identity: the highest byte offset seen in this partition and
//! the Kafka offset of the file's last record here (its recency). A record at or below its
//! file's highest offset is a duplicate: the shipper delivers each file's records to a
//! partition in file order (gapless idempotent producer), and re-ships from its checkpoint in
//! file order. Invariants:
//! - the memory committed with a checkpoint is the one *as of* the checkpoint's version (the
//!   changes after it are kept in a log and applied when the version passes them), so a replay
//!   from that version rebuilds exactly the live memory;
//! - at most `capacity` files are kept as of a version, plus the files seen after it; the
//!   least recently seen are forgotten first (never the file being written: it is the most
//!   recent), the same way live and in a replay;
//! - file identities are compared by their fingerprint (see [`file_key`]), so identities
//!   written by older shippers (`dev:ino:fingerprint`) match the current ones.
//!
//! Must not: do I/O.

use std::collections::VecDeque;
use std::sync::Arc;

use foldhash::{HashMap, HashSet};
use serde::{Deserialize, Serialize};

/// Files remembered per partition as of a checkpoint.
pub const DEDUP_FILES: usize = 512;

/// What is remembered of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Highest byte offset of a record of the file seen in this partition.
    pub hwm: i64,
    /// Kafka offset of the file's last record in this partition (its recency).
    pub seen: i64,
}

/// One file's entry in a stored checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMark {
    /// File identity key (see [`file_key`]).
    pub file: String,
    /// See [`Mark::hwm`].
    pub hwm: i64,
    /// See [`Mark::seen`].
    pub seen: i64,
}

/// Reads a checkpoint's files: a list of [`FileMark`]s, or (checkpoints of older processors)
/// a map of file identity → highest byte offset, whose recency is unknown (-1).
pub fn deserialize_files<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<FileMark>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Files {
        Marks(Vec<FileMark>),
        Legacy(std::collections::BTreeMap<String, i64>),
    }
    Ok(match Files::deserialize(d)? {
        Files::Marks(m) => m,
        Files::Legacy(map) => map
            .into_iter()
            .map(|(file, hwm)| FileMark {
                file,
                hwm,
                seen: -1,
            })
            .collect(),
    })
}

/// The part of a shipper's file identity that identifies the file: its first-line fingerprint
/// (identities were `dev:ino:fingerprint` before shippers dropped device and inode, which
/// change across reboots and remounts).
pub fn file_key(file_id: &str) -> &str {
    file_id.rsplit(':').next().unwrap_or(file_id)
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct DedupMemory {
    capacity: usize,
    /// As of the last checkpoint's version.
    base: HashMap<Arc<str>, Mark>,
    /// Records after that version: (Kafka offset, file, byte offset), in offset order.
    log: VecDeque<(i64, Arc<str>, i64)>,
    /// `base` with `log` applied: what decides now.
    now: HashMap<Arc<str>, Mark>,
}

impl DedupMemory {
    /// A memory as of a checkpoint holding `files`, keeping `capacity` files.
    pub fn new(files: impl IntoIterator<Item = FileMark>, capacity: usize) -> DedupMemory {
        let mut base: HashMap<Arc<str>, Mark> = HashMap::default();
        for f in files {
            let key: Arc<str> = Arc::from(file_key(&f.file));
            let mark = Mark {
                hwm: f.hwm,
                seen: f.seen,
            };
            // Two old identities of one file (device or inode changed): the higher mark.
            let e = base.entry(key).or_insert(mark);
            e.hwm = e.hwm.max(mark.hwm);
            e.seen = e.seen.max(mark.seen);
        }
        DedupMemory {
            capacity: capacity.max(1),
            now: base.clone(),
            base,
            log: VecDeque::new(),
        }
    }

    /// Whether the record of `file` at byte `offset` was handled already. Either way the file
    /// is remembered as seen at Kafka offset `kafka` (with `offset` as its highest when it is
    /// new).
    pub fn check(&mut self, kafka: i64, file: &Arc<str>, offset: i64) -> bool {
        let key = file_key(file);
        let (key, mark, duplicate) = match self.now.get_key_value(key) {
            Some((k, m)) => (Arc::clone(k), *m, m.hwm >= offset),
            // Identities from current shippers are their own key: no copy.
            None if key.len() == file.len() => {
                (Arc::clone(file), Mark { hwm: -1, seen: -1 }, false)
            }
            None => (Arc::from(key), Mark { hwm: -1, seen: -1 }, false),
        };
        let hwm = if duplicate { mark.hwm } else { offset };
        self.now.insert(Arc::clone(&key), Mark { hwm, seen: kafka });
        self.log.push_back((kafka, key, hwm));
        duplicate
    }

    /// Moves the base to `version`: applies the records up to it and forgets the least
    /// recently seen files beyond the capacity (in the base, and in what decides now unless a
    /// record after `version` was seen of them).
    pub fn advance_to(&mut self, version: i64) {
        while self.log.front().is_some_and(|(o, _, _)| *o <= version) {
            if let Some((seen, file, hwm)) = self.log.pop_front() {
                self.base.insert(file, Mark { hwm, seen });
            }
        }
        if self.base.len() <= self.capacity {
            return;
        }
        // A file seen after `version` is kept: a replay from `version` must decide its
        // records as they were decided live.
        let later: HashSet<&str> = self.log.iter().map(|(_, f, _)| &**f).collect();
        let mut by_recency: Vec<(i64, Arc<str>)> = self
            .base
            .iter()
            .filter(|(f, _)| !later.contains(&***f))
            .map(|(f, m)| (m.seen, Arc::clone(f)))
            .collect();
        // Oldest first; ties (checkpoints of older processors carry no recency) by name.
        by_recency.sort();
        let excess = self.base.len() - self.capacity;
        for (_, f) in by_recency.iter().take(excess) {
            self.base.remove(f);
            self.now.remove(f);
        }
    }

    /// The memory as of the last [`DedupMemory::advance_to`], sorted by file.
    pub fn stored(&self) -> Vec<FileMark> {
        let mut files: Vec<FileMark> = self
            .base
            .iter()
            .map(|(f, m)| FileMark {
                file: f.to_string(),
                hwm: m.hwm,
                seen: m.seen,
            })
            .collect();
        files.sort_by(|a, b| a.file.cmp(&b.file));
        files
    }

    /// Files that decide now.
    pub fn len(&self) -> usize {
        self.now.len()
    }

    /// Whether no file is remembered.
    pub fn is_empty(&self) -> bool {
        self.now.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    /// Item 8 of issue 17: eviction sorted by byte offset forgot the newest file (small
    /// offsets) first; the least recently seen must go.
    #[test]
    fn the_file_being_written_is_never_forgotten() {
        let mut m = DedupMemory::new([], 2);
        assert!(!m.check(0, &id("old-a"), 900_000));
        assert!(!m.check(1, &id("old-b"), 800_000));
        assert!(!m.check(2, &id("new"), 10));
        m.advance_to(2);
        assert!(m.check(3, &id("new"), 10), "the newest file is remembered");
        assert!(m.check(4, &id("old-b"), 800_000));
        assert!(
            !m.check(5, &id("old-a"), 900_000),
            "the least recent was forgotten"
        );
        assert_eq!(m.stored().len(), 2);
    }

    /// `now` is trimmed with the base: it holds the capacity plus files seen since.
    #[test]
    fn what_decides_now_is_bounded() {
        let mut m = DedupMemory::new([], 4);
        for i in 0..100 {
            m.check(i, &id(&format!("f{i}")), 1);
            m.advance_to(i);
        }
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn old_identities_match_current_ones() {
        let mut m = DedupMemory::new(
            [
                FileMark {
                    file: "803:1a2b:00ff".into(),
                    hwm: 100,
                    seen: -1,
                },
                FileMark {
                    file: "804:77:00ff".into(),
                    hwm: 300,
                    seen: -1,
                },
            ],
            8,
        );
        assert!(
            m.check(0, &id("00ff"), 300),
            "same fingerprint, after a remount"
        );
        assert!(!m.check(1, &id("00ff"), 301));
        assert_eq!(m.stored()[0].file, "00ff");
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A record of file `f` (of 6) at byte `b`.
        Record(u8, u16),
        /// A checkpoint at the last offset minus `behind`.
        Checkpoint(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6, 0u16..50).prop_map(|(f, b)| Op::Record(f, b)),
            1 => (0u8..4).prop_map(Op::Checkpoint),
        ]
    }

    proptest! {
        /// Random records and checkpoints: a memory rebuilt from any checkpoint, fed the
        /// records after it and moved at the same later checkpoints, decides every record as
        /// the live memory did.
        #[test]
        fn a_replay_from_a_checkpoint_decides_as_live(ops in prop::collection::vec(op(), 1..120)) {
            enum Step { Record(i64, Arc<str>, i64, bool), Advance(i64) }
            let mut live = DedupMemory::new([], 3);
            let mut steps = Vec::new();
            let mut records = 0i64;
            let mut checkpoints: Vec<(usize, i64, Vec<FileMark>)> = vec![(0, -1, Vec::new())];
            for op in ops {
                match op {
                    Op::Record(f, b) => {
                        let file = id(&format!("file{f}"));
                        let dup = live.check(records, &file, i64::from(b));
                        steps.push(Step::Record(records, file, i64::from(b), dup));
                        records += 1;
                    }
                    Op::Checkpoint(behind) => {
                        let version = records - 1 - i64::from(behind);
                        if version > checkpoints.last().map_or(-1, |c| c.1) {
                            live.advance_to(version);
                            steps.push(Step::Advance(version));
                            checkpoints.push((steps.len(), version, live.stored()));
                        }
                    }
                }
            }
            for (at, version, files) in checkpoints {
                let mut replay = DedupMemory::new(files, 3);
                // A replay re-reads from the record after the version.
                let first = steps.iter().position(|s| matches!(s, Step::Record(k, ..) if *k > version)).unwrap_or(steps.len());
                for step in &steps[first.min(at)..] {
                    match step {
                        Step::Record(k, file, b, dup) if *k > version => {
                            prop_assert_eq!(replay.check(*k, file, *b), *dup, "record {} after {}", k, version);
                        }
                        Step::Record(..) => {}
                        Step::Advance(v) if *v > version => replay.advance_to(*v),
                        Step::Advance(_) => {}
                    }
                }
            }
        }
    }
}
