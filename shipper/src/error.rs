//! Errors of the shipper, each with the context an operator needs and its class.
//!
//! Owns [`ShipperError`]. Every variant names the file, topic or setting involved and says
//! whether it is retryable, poison or fatal ([`ShipperError::class`]). Must not: carry secrets
//! (librdkafka property values are never put into errors).

use std::path::PathBuf;

pub use pgtrail_avro::ErrorClass;

/// Errors of the shipper.
#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    /// Invalid configuration file or flags.
    #[error("configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// Another shipper holds the state directory.
    #[error("state directory {dir} is locked by another pgtrail-shipper")]
    StateLocked {
        /// The state directory.
        dir: PathBuf,
    },
    /// Reading or writing the checkpoint file failed.
    #[error("checkpoint file {path}: {source}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The checkpoint file exists but cannot be understood.
    #[error("checkpoint file {path} is unreadable ({reason}); move it away to start over")]
    CheckpointCorrupt {
        /// The checkpoint file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// Reading a log file failed.
    #[error("log file {path}: {source}")]
    LogFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Creating the Kafka client or the topic failed.
    #[error("kafka setup for topic {topic}: {reason}")]
    KafkaSetup {
        /// The topic.
        topic: String,
        /// librdkafka's message.
        reason: String,
    },
    /// Kafka refused a record permanently (too large, not authorized, unknown topic...).
    #[error("kafka refused record {file}@{offset} on topic {topic}: {reason}")]
    DeliveryRefused {
        /// The topic.
        topic: String,
        /// Source file id.
        file: String,
        /// Byte offset of the record.
        offset: u64,
        /// librdkafka's message.
        reason: String,
    },
    /// The Avro contract failed (registry unreachable at start...).
    #[error(transparent)]
    Avro(#[from] pgtrail_avro::AvroError),
    /// The metrics endpoint could not bind.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ShipperError {
    /// How the caller must treat this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            ShipperError::LogFile { .. } => ErrorClass::Retryable,
            ShipperError::Avro(e) => e.class(),
            ShipperError::Config { .. }
            | ShipperError::StateLocked { .. }
            | ShipperError::Checkpoint { .. }
            | ShipperError::CheckpointCorrupt { .. }
            | ShipperError::KafkaSetup { .. }
            | ShipperError::DeliveryRefused { .. }
            | ShipperError::Metrics { .. } => ErrorClass::Fatal,
        }
    }

    /// Process exit code for `main`: 2 configuration, 3 state, 4 Kafka, 1 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ShipperError::Config { .. } => 2,
            ShipperError::StateLocked { .. }
            | ShipperError::Checkpoint { .. }
            | ShipperError::CheckpointCorrupt { .. } => 3,
            ShipperError::KafkaSetup { .. } | ShipperError::DeliveryRefused { .. } => 4,
            _ => 1,
        }
    }
}
