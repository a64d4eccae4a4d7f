//! Errors of the processor, each with its context and class.
//!
//! Owns [`ProcessorError`]. Parse and decode failures are poison (dead-letter the record with
//! the reason and its Kafka coordinates); Delta conflicts, lake and registry I/O are retryable
//! (waited for, never turned into dead letters or skipped offsets); configuration, broken
//! invariants and a topic that no longer holds what the table says was read are fatal. Exit
//! codes: 1 other, 2 configuration, 3 internal error (a bug), 4 Kafka, 5 Delta or its state,
//! 6 topic recreated or truncated, 7
//! a replay's offsets deleted by Kafka. Must not: carry secrets (storage credentials) or record
//! contents (statements).

use crate::topic_partition::TopicPartition;

pub use pgtrail_avro::ErrorClass;

/// Errors of the processor.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// A record that cannot be parsed.
    #[error("{format} record at {topic}/{partition}@{offset} cannot be parsed: {reason}")]
    Parse {
        /// Log format.
        format: pgtrail_avro::LogFormat,
        /// Kafka topic.
        topic: String,
        /// Kafka partition.
        partition: i32,
        /// Kafka offset.
        offset: i64,
        /// Why.
        reason: String,
    },
    /// A message value that cannot be decoded: poison (not a pgtrail envelope), retryable
    /// (the Schema Registry is unreachable) or fatal (registry-framed without a registry).
    #[error("message at {tp}@{offset} cannot be decoded: {source}")]
    Decode {
        /// Kafka topic-partition.
        tp: TopicPartition,
        /// Kafka offset.
        offset: i64,
        /// The decoder's error.
        source: pgtrail_avro::AvroError,
    },
    /// A Delta table operation failed.
    #[error("delta table {table}: {operation}: {source}")]
    Delta {
        /// Table URI.
        table: String,
        /// What was attempted.
        operation: &'static str,
        /// deltalake's error (boxed: it is large).
        source: Box<deltalake::DeltaTableError>,
    },
    /// The exactly-once state of a table cannot be used.
    #[error("delta table {table}: exactly-once state: {reason}")]
    State {
        /// Table URI.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a state object failed.
    #[error("delta table {table}: {what}: {source}")]
    StateIo {
        /// Table URI.
        table: String,
        /// What was attempted.
        what: String,
        /// The object store's error.
        source: Box<deltalake::ObjectStoreError>,
    },
    /// A replay asked for offsets Kafka no longer has (deleted by retention or compaction).
    #[error(
        "{tp}: offsets {first}..={last} are no longer in Kafka (deleted by retention or compaction); their rows cannot be derived again (--allow-partial replays the rest and keeps these rows as they are)"
    )]
    Unreadable {
        /// The topic-partition.
        tp: TopicPartition,
        /// First offset missing.
        first: i64,
        /// Last offset missing.
        last: i64,
    },
    /// The topic no longer holds the offsets the table says were read: it was recreated or
    /// truncated. Going on would skip or re-read records silently.
    #[error(
        "{tp}: the table holds offsets below {position} of another topic of this name (recreated or truncated, seen at offset {got}); refusing to skip or re-read records (process the new topic into a new table or group)"
    )]
    TopicReset {
        /// The topic-partition.
        tp: TopicPartition,
        /// The next offset the table expects.
        position: i64,
        /// The offset at which it showed (a message, or the topic's end).
        got: i64,
    },
    /// The lake location cannot be used: unreachable, credentials refused, or an S3 store
    /// that does not honour conditional writes.
    #[error("lake {location}: {reason}")]
    Lake {
        /// The lake root or table URI.
        location: String,
        /// What is wrong (the store's answer).
        reason: String,
    },
    /// Kafka client setup or a Kafka operation that must not fail (dead letters).
    #[error("kafka: {what}: {reason}")]
    Kafka {
        /// What was attempted.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// Invalid configuration.
    #[error("configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A broken invariant or a failed internal task: a bug, not the operator's doing.
    #[error("internal error: {reason}")]
    Internal {
        /// What broke.
        reason: String,
    },
    /// A failure injected by a test (`failpoint.rs`).
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

impl ProcessorError {
    /// Whether this is another writer having taken the Delta version (not a store failure,
    /// nor a table this writer cannot write).
    pub fn is_conflict(&self) -> bool {
        use deltalake::DeltaTableError as D;
        use deltalake::kernel::transaction::TransactionError as T;
        matches!(
            self,
            ProcessorError::Delta { source, .. }
                if matches!(
                    source.as_ref(),
                    D::VersionAlreadyExists(_)
                        | D::Transaction {
                            source: T::VersionAlreadyExists(_)
                                | T::CommitConflict(_)
                                | T::MaxCommitAttempts(_)
                        }
                )
        )
    }

    /// How the caller must treat this error.
    pub fn class(&self) -> ErrorClass {
        use deltalake::DeltaTableError as D;
        use deltalake::ObjectStoreError as O;
        use deltalake::kernel::transaction::TransactionError as T;
        match self {
            ProcessorError::Parse { .. } => ErrorClass::Poison,
            ProcessorError::Decode { source, .. } => source.class(),
            ProcessorError::Delta { source, .. } => match source.as_ref() {
                // A table whose protocol or settings this writer cannot meet: no retry helps.
                D::Transaction {
                    source:
                        T::DeltaTableAppendOnly
                        | T::UnsupportedTableFeatures(_)
                        | T::TableFeaturesRequired(_),
                } => ErrorClass::Fatal,
                D::VersionAlreadyExists(_)
                | D::Transaction { .. }
                | D::ObjectStore { .. }
                | D::Io { .. } => ErrorClass::Retryable,
                _ => ErrorClass::Fatal,
            },
            ProcessorError::StateIo { source, .. } => match source.as_ref() {
                O::NotFound { .. }
                | O::AlreadyExists { .. }
                | O::Precondition { .. }
                | O::NotSupported { .. }
                | O::PermissionDenied { .. }
                | O::Unauthenticated { .. }
                | O::InvalidPath { .. } => ErrorClass::Fatal,
                _ => ErrorClass::Retryable,
            },
            ProcessorError::Injected(_) => ErrorClass::Retryable,
            ProcessorError::State { .. }
            | ProcessorError::Lake { .. }
            | ProcessorError::TopicReset { .. }
            | ProcessorError::Unreadable { .. }
            | ProcessorError::Config { .. }
            | ProcessorError::Kafka { .. }
            | ProcessorError::Internal { .. } => ErrorClass::Fatal,
        }
    }

    /// The process exit code for this error (see the module documentation).
    pub fn exit_code(&self) -> u8 {
        match self {
            ProcessorError::Config { .. } => 2,
            ProcessorError::Decode { source, .. } => match source {
                pgtrail_avro::AvroError::NoRegistry { .. }
                | pgtrail_avro::AvroError::Registry { .. } => 2,
                _ => 4,
            },
            ProcessorError::Internal { .. } => 3,
            ProcessorError::Kafka { .. } => 4,
            ProcessorError::Delta { .. }
            | ProcessorError::State { .. }
            | ProcessorError::StateIo { .. }
            | ProcessorError::Lake { .. } => 5,
            ProcessorError::TopicReset { .. } => 6,
            ProcessorError::Unreadable { .. } => 7,
            ProcessorError::Parse { .. } | ProcessorError::Injected(_) => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(source: deltalake::DeltaTableError) -> ProcessorError {
        ProcessorError::Delta {
            table: "t".into(),
            operation: "commit",
            source: Box::new(source),
        }
    }

    #[test]
    fn conflicts_and_store_failures_are_told_apart_and_both_retried() {
        let conflict = delta(deltalake::DeltaTableError::VersionAlreadyExists(3));
        let store = delta(deltalake::DeltaTableError::ObjectStore {
            source: deltalake::ObjectStoreError::Generic {
                store: "S3",
                source: "503 SlowDown".into(),
            },
        });
        assert!(conflict.is_conflict() && !store.is_conflict());
        use deltalake::kernel::transaction::TransactionError as T;
        let lost = delta(deltalake::DeltaTableError::Transaction {
            source: T::VersionAlreadyExists(4),
        });
        assert!(lost.is_conflict() && lost.class() == ErrorClass::Retryable);
        // Not a race: a table this writer cannot write is not retried as one.
        let protocol = delta(deltalake::DeltaTableError::Transaction {
            source: T::DeltaTableAppendOnly,
        });
        assert!(!protocol.is_conflict());
        assert_eq!(protocol.class(), ErrorClass::Fatal);
        assert_eq!(conflict.class(), ErrorClass::Retryable);
        assert_eq!(store.class(), ErrorClass::Retryable);
        let lake = ProcessorError::Lake {
            location: "s3://b".into(),
            reason: "the store ignores conditional writes".into(),
        };
        assert_eq!((lake.class(), lake.exit_code()), (ErrorClass::Fatal, 5));
    }
}
