//! pgtrail processor: consumes the raw log record topics and writes Delta Lake audit tables.
//!
//! This crate so far holds the parsing layer (`parse`: csvlog, jsonlog and stderr records into
//! one [`parse::LogRecord`] shape, pgaudit entries into [`parse::pgaudit::AuditEntry`]) and the
//! audit layer (`audit`: rows of the standard audit schema, statement outcomes). The Kafka
//! consumer, Delta writer and binary come with the rest of the processor issue.
//! Must not: depend on the shipper.

pub mod audit;
pub mod delta;
pub mod error;
pub mod parse;

pub use error::{ErrorClass, ProcessorError};
