//! pgtrail processor: consumes the raw log record topics and writes Delta Lake audit tables.
//!
//! This crate so far holds the parsing layer (`parse`): csvlog, jsonlog and stderr records into
//! one [`parse::LogRecord`] shape, and pgaudit entries into [`parse::pgaudit::AuditEntry`]. The
//! Kafka consumer, outcome tracking, Delta writer and binary come with the processor issue.
//! Must not: depend on the shipper.

pub mod parse;
