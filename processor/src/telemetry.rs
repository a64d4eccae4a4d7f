//! Every metric of the processor, declared in one place, and the `/metrics` endpoint.
//!
//! Owns [`Metrics`] (names `pgtrail_processor_<noun>_<unit>`; labels of low cardinality:
//! format, reason, table (one per server), topic and partition for lag). Must not: label by
//! session, statement, file or anything unbounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::error::ProcessorError;

/// Label: log format.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatLabel {
    /// csvlog, jsonlog, stderr, `heartbeat` (shipper heartbeats) or `unknown` (undecodable).
    pub format: String,
}

/// Label: a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// Label: a table (its server's name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// Table name (last path segment).
    pub table: String,
}

/// Label: a topic-partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: String,
}

fn commit_seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// All processor metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Messages consumed from Kafka.
    pub records_consumed: Family<FormatLabel, Counter>,
    /// Records that became no row, by reason (`not_audit`, `duplicate`, `format_filtered`,
    /// `late_outcome`, `replayed`, `heartbeat`, `continuation`).
    pub records_skipped: Family<ReasonLabel, Counter>,
    /// Records sent to the dead-letter topic, by reason (`decode`, `parse`, `audit`).
    pub records_dead_lettered: Family<ReasonLabel, Counter>,
    /// Rows committed to Delta tables.
    pub rows_written: Family<TableLabel, Counter>,
    /// Rows failed by a following error (FAILURE), audited or not.
    pub rows_failed: Family<TableLabel, Counter>,
    /// Commits whose job facts do not reconcile (records consumed ≠ rows + skipped + dead
    /// letters + held): a record is unaccounted for (a bug; alert).
    pub jobs_unreconciled: Family<TableLabel, Counter>,
    /// Syncs of the job-audit table that failed (retried at the next interval).
    pub job_log_failures: Counter,
    /// Audit events waiting for their outcome.
    pub rows_held: Gauge,
    /// Rows buffered, not yet committed.
    pub rows_buffered: Gauge,
    /// Delta commits.
    pub commits: Family<TableLabel, Counter>,
    /// Delta commit attempts that conflicted with another writer and were retried.
    pub commit_conflicts: Family<TableLabel, Counter>,
    /// Delta commit attempts that failed on the store (503 SlowDown, timeouts, I/O after
    /// object_store's own retries) and were retried.
    pub commit_store_errors: Family<TableLabel, Counter>,
    /// Seconds per Delta commit (write + commit, retries included).
    pub commit_duration_seconds: Family<TableLabel, Histogram, fn() -> Histogram>,
    /// Delta table version after the last commit.
    pub delta_version: Family<TableLabel, Gauge>,
    /// Messages in the partition after the last committed offset (high watermark − next).
    pub consumer_lag_messages: Family<PartitionLabel, Gauge>,
    /// Per assigned partition, the table's position: its `txn` version + 1.
    pub table_position_offset: Family<PartitionLabel, Gauge>,
    /// Per assigned partition, seconds since the oldest message consumed and not yet
    /// committed was produced (0: everything consumed is committed).
    pub time_lag_seconds: Family<PartitionLabel, Gauge<f64, AtomicU64>>,
    /// Per table, when the newest shipper heartbeat in it was sent (Unix seconds).
    pub heartbeat_timestamp_seconds: Family<TableLabel, Gauge<f64, AtomicU64>>,
    /// Partitions currently assigned.
    pub partitions_assigned: Gauge,
    /// Rebalance events, by kind (`assign`, `revoke`, `lost`).
    pub rebalances: Family<ReasonLabel, Counter>,
    /// Partitions another instance committed since this one read or wrote them: left out of
    /// a commit and read again from the table.
    pub partitions_fenced: Counter,
    /// Table maintenance after commits (Delta checkpoint, log cleanup, deleting superseded
    /// state objects) that failed; the commits stand.
    pub maintenance_errors: Family<TableLabel, Counter>,
    /// Partitions paused, by reason: `schema_registry` (away; `/readyz` answers 503 while any
    /// waits for it) or `delta_commit` (their table's previous commit still runs).
    pub partitions_waiting: Family<ReasonLabel, Gauge>,
    /// Schema Registry calls that failed and are retried (nothing is dead-lettered for them).
    pub registry_errors: Counter,
    /// Seconds since the last successful Delta commit.
    pub last_commit_age_seconds: Gauge<f64, AtomicU64>,
    /// Seconds the consumer waited for a table's commit in flight (back-pressure from the
    /// lake: high values mean commits are slower than parsing).
    pub commit_wait_seconds: Counter<f64, AtomicU64>,
    /// Handles of the per-record counters (`records_skipped` by reason, `records_consumed`
    /// by format), made once: a family lookup per record cost a lock, a hash and a label
    /// string.
    hot: Arc<Hot>,
}

/// See [`Metrics::hot`]: the same counters as in the families.
#[derive(Debug)]
struct Hot {
    skipped: Vec<(&'static str, Counter)>,
    consumed: Vec<(&'static str, Counter)>,
}

/// Increments `family`'s counter for `value`: through its cached handle in `hot` when there
/// is one, else by a lookup with the label `label(value)`.
fn hot_inc<L: Clone + std::hash::Hash + Eq>(
    hot: &[(&'static str, Counter)],
    family: &Family<L, Counter>,
    value: &str,
    label: impl FnOnce(String) -> L,
) {
    match hot.iter().find(|(v, _)| *v == value) {
        Some((_, c)) => {
            c.inc();
        }
        None => {
            family.get_or_create(&label(value.to_owned())).inc();
        }
    }
}

/// The formats [`Metrics::consumed`] is called with.
const FORMATS: [&str; 5] = ["csvlog", "jsonlog", "stderr", "unknown", "heartbeat"];

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            records_consumed: Family::default(),
            records_skipped: Family::default(),
            records_dead_lettered: Family::default(),
            rows_written: Family::default(),
            rows_failed: Family::default(),
            jobs_unreconciled: Family::default(),
            job_log_failures: Counter::default(),
            rows_held: Gauge::default(),
            rows_buffered: Gauge::default(),
            commits: Family::default(),
            commit_conflicts: Family::default(),
            commit_store_errors: Family::default(),
            commit_duration_seconds: Family::new_with_constructor(commit_seconds),
            delta_version: Family::default(),
            consumer_lag_messages: Family::default(),
            table_position_offset: Family::default(),
            time_lag_seconds: Family::default(),
            heartbeat_timestamp_seconds: Family::default(),
            partitions_assigned: Gauge::default(),
            rebalances: Family::default(),
            partitions_fenced: Counter::default(),
            maintenance_errors: Family::default(),
            partitions_waiting: Family::default(),
            registry_errors: Counter::default(),
            last_commit_age_seconds: Gauge::default(),
            commit_wait_seconds: Counter::default(),
            hot: Arc::new(Hot {
                skipped: Vec::new(),
                consumed: Vec::new(),
            }),
        };
        let reason = |r: &str| ReasonLabel {
            reason: r.to_owned(),
        };
        let format = |f: &str| FormatLabel {
            format: f.to_owned(),
        };
        m.hot = Arc::new(Hot {
            // Every reason a record is skipped for: a label not made here is allocated on
            // each call.
            skipped: crate::job::Skip::ALL
                .iter()
                .map(|s| s.as_str())
                .map(|r| (r, m.records_skipped.get_or_create(&reason(r)).clone()))
                .collect(),
            consumed: FORMATS
                .iter()
                .map(|f| (*f, m.records_consumed.get_or_create(&format(f)).clone()))
                .collect(),
        });
        m
    }
}

impl Metrics {
    /// Registers every metric under `pgtrail_processor_`.
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("pgtrail_processor");
        r.register(
            "records_consumed",
            "Messages consumed",
            self.records_consumed.clone(),
        );
        r.register(
            "jobs_unreconciled",
            "Commits whose job facts do not reconcile (a record unaccounted for)",
            self.jobs_unreconciled.clone(),
        );
        r.register(
            "job_log_failures",
            "Failed syncs of the job-audit table",
            self.job_log_failures.clone(),
        );
        r.register(
            "records_skipped",
            "Records that became no row",
            self.records_skipped.clone(),
        );
        r.register(
            "records_dead_lettered",
            "Records sent to the dead-letter topic",
            self.records_dead_lettered.clone(),
        );
        r.register(
            "rows_written",
            "Rows committed to Delta",
            self.rows_written.clone(),
        );
        r.register(
            "rows_failed",
            "FAILURE rows committed",
            self.rows_failed.clone(),
        );
        r.register(
            "rows_held",
            "Audit events waiting for their outcome",
            self.rows_held.clone(),
        );
        r.register(
            "rows_buffered",
            "Rows not yet committed",
            self.rows_buffered.clone(),
        );
        r.register("commits", "Delta commits", self.commits.clone());
        r.register(
            "commit_conflicts",
            "Delta commit conflicts retried",
            self.commit_conflicts.clone(),
        );
        r.register(
            "commit_store_errors",
            "Delta commit attempts failed on the object store and retried",
            self.commit_store_errors.clone(),
        );
        r.register(
            "commit_duration_seconds",
            "Seconds per Delta commit",
            self.commit_duration_seconds.clone(),
        );
        r.register(
            "delta_version",
            "Delta table version",
            self.delta_version.clone(),
        );
        r.register(
            "consumer_lag_messages",
            "Messages after the last committed offset",
            self.consumer_lag_messages.clone(),
        );
        r.register(
            "table_position_offset",
            "The table's txn version + 1 per assigned partition",
            self.table_position_offset.clone(),
        );
        r.register(
            "time_lag_seconds",
            "Age of the oldest consumed message not yet committed",
            self.time_lag_seconds.clone(),
        );
        r.register(
            "heartbeat_timestamp_seconds",
            "When the newest shipper heartbeat committed to the table was sent",
            self.heartbeat_timestamp_seconds.clone(),
        );
        r.register(
            "partitions_assigned",
            "Partitions currently assigned",
            self.partitions_assigned.clone(),
        );
        r.register("rebalances", "Rebalance events", self.rebalances.clone());
        r.register(
            "partitions_fenced",
            "Partitions another instance committed: left out of a commit and read again",
            self.partitions_fenced.clone(),
        );
        r.register(
            "maintenance_errors",
            "Table maintenance after commits that failed (the commits stand)",
            self.maintenance_errors.clone(),
        );
        r.register(
            "partitions_waiting",
            "Partitions paused waiting for a dependency",
            self.partitions_waiting.clone(),
        );
        r.register(
            "registry_errors",
            "Schema Registry calls that failed and are retried",
            self.registry_errors.clone(),
        );
        r.register(
            "last_commit_age_seconds",
            "Seconds since the last Delta commit",
            self.last_commit_age_seconds.clone(),
        );
        r.register(
            "commit_wait_seconds",
            "Seconds the consumer waited for a Delta commit in flight",
            self.commit_wait_seconds.clone(),
        );
    }

    /// Counts a skipped record.
    pub fn skipped(&self, reason: &str) {
        hot_inc(&self.hot.skipped, &self.records_skipped, reason, |reason| {
            ReasonLabel { reason }
        });
    }

    /// Counts a consumed record of `format` (`csvlog`, `jsonlog`, `stderr`, `unknown`).
    pub fn consumed(&self, format: &str) {
        hot_inc(
            &self.hot.consumed,
            &self.records_consumed,
            format,
            |format| FormatLabel { format },
        );
    }

    /// The label of a table URI.
    pub fn table(uri: &str) -> TableLabel {
        TableLabel {
            table: uri.rsplit('/').next().unwrap_or(uri).to_owned(),
        }
    }
}

/// Partitions waiting for the Schema Registry (a readiness failure).
pub const WAIT_REGISTRY: &str = "schema_registry";

/// Serves `GET /metrics` (OpenMetrics text), `GET /healthz` (503 when the poll loop is hung)
/// and `GET /readyz` (503 before the lake was checked and the group joined, and while a
/// partition waits for the Schema Registry) until `cancel`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: &Metrics,
    health: Arc<pgtrail_connect::Health>,
    cancel: CancellationToken,
) -> Result<SocketAddr, ProcessorError> {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    serve_registry(addr, registry, health, cancel).await
}

/// Serves `registry` on `/metrics` and the health routes at `addr` until `cancel`; returns
/// the bound address.
pub async fn serve_registry(
    addr: SocketAddr,
    registry: Registry,
    health: Arc<pgtrail_connect::Health>,
    cancel: CancellationToken,
) -> Result<SocketAddr, ProcessorError> {
    let registry = Arc::new(registry);
    let err = |e: std::io::Error| ProcessorError::Config {
        reason: format!("metrics address {addr}: {e}"),
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (
                            [(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        ),
                        Err(_) => (
                            [("content-type", "text/plain")],
                            "encoding failed".to_owned(),
                        ),
                    }
                }
            }),
        )
        .merge(pgtrail_connect::health_routes(health));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_handles_count_in_the_registered_families() {
        let m = Metrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.skipped("not_audit");
        m.skipped("not_audit");
        m.skipped("something_new");
        m.consumed("csvlog");
        m.consumed("unknown");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        for line in [
            "pgtrail_processor_records_skipped_total{reason=\"not_audit\"} 2",
            "pgtrail_processor_records_skipped_total{reason=\"something_new\"} 1",
            "pgtrail_processor_records_skipped_total{reason=\"duplicate\"} 0",
            "pgtrail_processor_records_consumed_total{format=\"csvlog\"} 1",
            "pgtrail_processor_records_consumed_total{format=\"unknown\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // Every skip reason has its counter from the start (no label allocated per record).
        for skip in crate::job::Skip::ALL {
            let line = format!(
                "pgtrail_processor_records_skipped_total{{reason=\"{}\"}} 0",
                skip.as_str()
            );
            let counted = ["not_audit"].contains(&skip.as_str());
            assert!(
                counted || text.lines().any(|l| l == line),
                "{line} not in\n{text}"
            );
        }
    }
}
