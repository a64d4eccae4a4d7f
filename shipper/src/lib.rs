//! pgtrail shipper: tails PostgreSQL log files (csvlog, jsonlog, stderr) and produces whole log
//! records to one Kafka topic per server, checkpointing only what Kafka acknowledged.
//!
//! Codemap: `config` (file + flags), `framer` (bytes → whole records), `key` (session key),
//! `tailer` (one file: identity, reading, acknowledgement frontier), `checkpoint` (atomic
//! state file), `kafka` (idempotent producer, delivery reports), `pipeline` (the main loop),
//! `telemetry` (metrics). Invariants: at-least-once, never a gap; the shipper never parses SQL
//! and never drops a record it read. Must not: depend on the processor.

pub mod checkpoint;
pub mod config;
pub mod embedded;
pub mod error;
pub mod framer;
pub mod kafka;
pub mod key;
pub mod pipeline;
pub mod tailer;
pub mod telemetry;

pub use config::{Cli, Config};
pub use error::ShipperError;
pub use pipeline::{RunSummary, run};
