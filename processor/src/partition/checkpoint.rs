//! What a partition's commit records so that a resume decides as the run before it: the
//! checkpoint (position, pending records, dedup memory, clocks, sessions' released
//! transactions) and the per-message state it is taken from.
//!
//! Owns [`PartitionCheckpoint`] (stored in the state object, `state.rs`; fields added since the
//! first release default when absent, so older checkpoints still read), [`Anchor`], [`Clock`],
//! and [`Before`] (the state before a message, kept per pending record). Must not: decide anything; the
//! rules are `partition.rs`'s.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::FileMark;
use crate::audit::outcome::ReleasedTx;
use crate::topic_partition::TopicPartition;

/// What a partition's commit records (in its state object, `state.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCheckpoint {
    /// The partition (stored as `topic` and `partition`).
    #[serde(flatten)]
    pub tp: TopicPartition,
    /// The `txn` version: every record up to here is fully handled.
    pub version: i64,
    /// Last offset processed when committing (≥ version).
    pub last: i64,
    /// Offsets in (version, last] whose outputs were not written yet.
    pub pending: Vec<i64>,
    /// Dedup memory as of `version`: per file, the highest byte offset seen and when (Kafka
    /// offset). Checkpoints of older processors hold a map of file → highest offset.
    #[serde(deserialize_with = "super::dedup::deserialize_files")]
    pub files: Vec<FileMark>,
    /// The last message at or below `version`, to verify on resume that the topic is the one
    /// read (absent in checkpoints of older processors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Anchor>,
    /// The clocks as of `version` (absent in checkpoints of older processors: a replay then
    /// starts them from the records it reads).
    #[serde(default, skip_serializing_if = "Clock::is_unset")]
    pub clock: Clock,
    /// Per session, the newest transaction released as of `version` (absent in checkpoints
    /// of older processors: an error of such a transaction after the resume was then an
    /// unaudited failure).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<ReleasedTx>,
    /// When the newest shipper heartbeat at or below `version` was sent, µs since the epoch
    /// (end-to-end freshness; absent before the first heartbeat and in checkpoints of older
    /// processors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<i64>,
}

impl PartitionCheckpoint {
    /// A checkpoint at `version` with nothing known before it, whose records up to `last`
    /// count as handled already (their outputs are not emitted, they are never pending): what
    /// a replay reading context before its range resumes from.
    pub fn before_range(tp: &TopicPartition, version: i64, last: i64) -> PartitionCheckpoint {
        PartitionCheckpoint {
            tp: tp.clone(),
            version,
            last: last.max(version),
            pending: Vec::new(),
            files: Vec::new(),
            anchor: None,
            clock: Clock::default(),
            released: Vec::new(),
            heartbeat: None,
        }
    }
}

/// A partition's newest log times: they decide when outcome windows close and when an open
/// stderr record counts as complete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// Newest log time the outcome tracker saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_time: Option<DateTime<Utc>>,
    /// Newest log time of a stderr record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr_time: Option<DateTime<Utc>>,
}

impl Clock {
    pub(super) fn is_unset(&self) -> bool {
        self.log_time.is_none() && self.stderr_time.is_none()
    }
}

/// What a checkpoint at the offset just before a message records besides the dedup memory:
/// the message before it and the clocks as of then.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Before {
    pub(super) anchor: Option<Anchor>,
    pub(super) clock: Clock,
}

/// A message of a partition: its offset and a hash of its key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Kafka offset.
    pub offset: i64,
    /// [`message_hash`] of the message.
    pub hash: u64,
}

/// xxh3 of a message's value and key (what tells one message from another at an offset).
pub fn message_hash(key: Option<&[u8]>, payload: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(payload);
    if let Some(k) = key {
        h.update(&[0xff]);
        h.update(k);
    }
    h.digest()
}
