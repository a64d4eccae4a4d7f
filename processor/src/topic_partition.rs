//! The name of one Kafka partition.
//!
//! Owns [`TopicPartition`]: a topic (shared text: one allocation per topic, cloned per
//! partition and per row batch) and a partition number, ordered by topic then partition,
//! displayed `topic/partition`. Must not: hold any state of the partition.

use std::sync::Arc;

/// A Kafka topic-partition.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TopicPartition {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: i32,
}

impl TopicPartition {
    /// `topic`'s partition `partition`.
    pub fn new(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: Arc::from(topic),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}
