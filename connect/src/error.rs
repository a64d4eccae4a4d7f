//! Errors of the connection settings: all are the operator's to fix (configuration class).
//!
//! Owns [`ConnectError`]. Must not: carry a secret's value (only the key and where it was
//! to come from).

use std::path::PathBuf;

/// A connection setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A secret's file cannot be read or its environment variable is unset.
    #[error("{key}: {source_desc}: {reason}")]
    Secret {
        /// The config key (`kafka.security.sasl.password_file`).
        key: String,
        /// Where it was to come from (`file /run/secrets/x`, `environment variable X`).
        source_desc: String,
        /// Why it cannot be read.
        reason: String,
    },
    /// A file named by a key (CA bundle, certificate) does not exist.
    #[error("{key}: file {path}: {reason}")]
    File {
        /// The config key.
        key: String,
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// Keys that do not go together, or a required key that is missing.
    #[error("{0}")]
    Invalid(String),
}
