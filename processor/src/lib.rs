//! pgtrail processor: consumes the raw log record topics and writes one Delta Lake audit table
//! per server, exactly once.
//!
//! Layers, bottom up: `parse` (csvlog, jsonlog and stderr records into one
//! [`parse::LogRecord`] shape, pgaudit entries), `audit` (rows of the standard audit schema,
//! statement outcomes), `partition` (one Kafka partition: dedup of re-shipped records, the
//! exactly-once checkpoint), `delta` (the table), `state` (partitions' stored state) and
//! `committer` (resume points, fenced commits that land exactly once), `worker` and
//! `consumer` (Kafka, rebalances, flushing), `status` (what the tables hold), `job` / `joblog` /
//! `jobs` (job facts in each commit, the job-audit table, listing it), `replay` (rows derived
//! again from Kafka, replacing a range in one commit; feature `replay`, on by default, the only
//! user of deltalake's `datafusion`), `lag` (the lag monitor). `config`,
//! `telemetry` and `failpoint` serve the binary and its tests. Must not: depend on the
//! shipper.

pub mod audit;
pub mod committer;
pub mod config;
pub mod consumer;
pub mod delta;
pub mod dlq;
pub mod error;
pub mod failpoint;
pub mod job;
pub mod joblog;
pub mod jobs;
pub mod lag;
pub mod lake;
pub mod members;
pub mod parse;
pub mod partition;
#[cfg(feature = "replay")]
pub mod replay;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod topic_partition;
pub mod worker;

pub use config::{Cli, Config};
pub use error::{ErrorClass, ProcessorError};

/// Log filter without `PGTRAIL_LOG`: deltalake's kernel logs every snapshot at INFO, and at
/// ERROR that a table about to be created has no log yet; its real failures reach us as
/// errors and are logged with their table.
pub const DEFAULT_LOG_FILTER: &str = "info,buoyant_kernel=off,deltalake_core=warn";
