//! Errors of the Avro contract: decoding, schema lookup and registry calls.
//!
//! Owns [`AvroError`] and [`ErrorClass`], the retryable / poison / fatal classification every
//! pgtrail crate uses. Must not: log, retry or decide policy; callers do that from the class.

/// How a caller must treat an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient: try again later (network, broker or registry unavailable).
    Retryable,
    /// The input itself is bad: send it to the dead-letter destination with the reason, go on.
    Poison,
    /// Misconfiguration or a broken invariant: stop the process.
    Fatal,
}

/// Errors of the Avro contract.
#[derive(Debug, thiserror::Error)]
pub enum AvroError {
    /// The Avro datum does not match its schema (truncated, bad varint, bad UTF-8...).
    #[error("malformed Avro datum: {reason}")]
    MalformedDatum {
        /// What was wrong.
        reason: String,
    },
    /// The message is shorter than its wire-format header.
    #[error("message of {len} bytes is too short for any pgtrail wire format")]
    TooShort {
        /// Length of the message.
        len: usize,
    },
    /// The message starts with neither the single-object marker nor the Confluent magic byte.
    #[error("unknown wire format: first bytes {first:02x?} (expected c3 01 or 00)")]
    UnknownWireFormat {
        /// The first bytes of the message.
        first: Vec<u8>,
    },
    /// Single-object encoding names a schema fingerprint this build does not know.
    #[error("unknown schema fingerprint {fingerprint} in single-object header")]
    UnknownFingerprint {
        /// Hex of the 8-byte Rabin fingerprint.
        fingerprint: String,
    },
    /// A registry-framed message arrived but no registry URL is configured.
    #[error("message uses Schema Registry id {schema_id} but no registry URL is configured")]
    NoRegistry {
        /// Schema id from the message header.
        schema_id: u32,
    },
    /// The writer schema cannot be resolved into the current record schema.
    #[error("schema {schema} cannot be read as the current envelope: {reason}")]
    Incompatible {
        /// Which schema (fingerprint or registry id).
        schema: String,
        /// Why resolution failed.
        reason: String,
    },
    /// A Schema Registry call failed.
    #[error("schema registry {operation} failed: {reason}")]
    Registry {
        /// What was attempted, e.g. `register subject pgaudit.raw.primary-value`.
        operation: String,
        /// The client's error text (never contains credentials).
        reason: String,
        /// Whether trying again may help.
        retryable: bool,
    },
}

impl AvroError {
    /// How the caller must treat this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            AvroError::Registry {
                retryable: true, ..
            } => ErrorClass::Retryable,
            AvroError::Registry {
                retryable: false, ..
            }
            | AvroError::NoRegistry { .. } => ErrorClass::Fatal,
            AvroError::MalformedDatum { .. }
            | AvroError::TooShort { .. }
            | AvroError::UnknownWireFormat { .. }
            | AvroError::UnknownFingerprint { .. }
            | AvroError::Incompatible { .. } => ErrorClass::Poison,
        }
    }
}
