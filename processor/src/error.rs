//! Errors of the processor, each with its context and class.
//!
//! Owns [`ProcessorError`]. Parse and decode failures are poison (dead-letter the record with
//! the reason and its Kafka coordinates); Delta conflicts and I/O are retryable; configuration
//! and broken invariants are fatal. Must not: carry secrets (storage credentials).

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
    /// A message value that is not a pgtrail envelope.
    #[error("message at {topic}/{partition}@{offset} cannot be decoded: {source}")]
    Decode {
        /// Kafka topic.
        topic: String,
        /// Kafka partition.
        partition: i32,
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
}

impl ProcessorError {
    /// How the caller must treat this error.
    pub fn class(&self) -> ErrorClass {
        use deltalake::DeltaTableError as D;
        match self {
            ProcessorError::Parse { .. } => ErrorClass::Poison,
            ProcessorError::Decode { source, .. } => source.class(),
            ProcessorError::Delta { source, .. } => match source.as_ref() {
                D::VersionAlreadyExists(_)
                | D::Transaction { .. }
                | D::ObjectStore { .. }
                | D::Io { .. } => ErrorClass::Retryable,
                _ => ErrorClass::Fatal,
            },
            ProcessorError::Config { .. } | ProcessorError::Kafka { .. } => ErrorClass::Fatal,
        }
    }

    /// The process exit code for this error: 2 configuration, 4 Kafka, 5 Delta, 1 other.
    pub fn exit_code(&self) -> u8 {
        match self {
            ProcessorError::Config { .. } => 2,
            ProcessorError::Kafka { .. } | ProcessorError::Decode { .. } => 4,
            ProcessorError::Delta { .. } => 5,
            ProcessorError::Parse { .. } => 1,
        }
    }
}
