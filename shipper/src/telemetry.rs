//! Every metric of the shipper, declared in one place, and the `/metrics` endpoint.
//!
//! Owns [`Metrics`] (names `pgtrail_shipper_<noun>_<unit>`, labels of low cardinality: format,
//! reason, and the log file name for per-file lag, whose series is removed when the file is
//! closed) and [`serve`]. Must not: label by session, statement or anything unbounded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::error::ShipperError;

/// Label: log format.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatLabel {
    /// csvlog, jsonlog or stderr.
    pub format: String,
}

/// Label: a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: String,
}

/// Label: a log file (base name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabel {
    /// File name without directory.
    pub file: String,
}

/// All shipper metrics.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Records framed from log files.
    pub records_read: Family<FormatLabel, Counter>,
    /// Bytes of framed records.
    pub bytes_read: Family<FormatLabel, Counter>,
    /// Records Kafka acknowledged.
    pub records_shipped: Family<FormatLabel, Counter>,
    /// Bytes of acknowledged records (record bytes, not message bytes).
    pub bytes_shipped: Family<FormatLabel, Counter>,
    /// Records longer than `max_record_bytes`, shipped cut and flagged.
    pub records_truncated: Family<FormatLabel, Counter>,
    /// Last records of a file shipped without a terminating newline after the timeout.
    pub partial_records_flushed: Family<FormatLabel, Counter>,
    /// Delivery errors reported by Kafka, by error code (non-permanent ones make the shipper
    /// replace its producer and ship again from the acknowledged offsets).
    pub delivery_errors: Family<ReasonLabel, Counter>,
    /// Producers replaced after a failed delivery or a fatal producer error.
    pub producer_recoveries: Counter,
    /// Heartbeats Kafka acknowledged.
    pub heartbeats_sent: Counter,
    /// Heartbeats not sent or not delivered.
    pub heartbeat_failures: Counter,
    /// Files skipped (binary content...).
    pub files_skipped: Family<ReasonLabel, Counter>,
    /// Files found shrunk or rewritten in place and read again from the start.
    pub files_truncated: Counter,
    /// Bytes of each open file not yet acknowledged by Kafka.
    pub file_lag_bytes: Family<FileLabel, Gauge>,
    /// Files currently tailed.
    pub files_open: Gauge,
    /// Records produced and not yet acknowledged.
    pub in_flight_records: Gauge,
    /// Message bytes produced and not yet acknowledged.
    pub in_flight_bytes: Gauge,
    /// 1 while reading is paused because Kafka does not acknowledge fast enough.
    pub backpressure: Gauge,
    /// 0 after librdkafka reported all brokers down, 1 after the next acknowledgement.
    pub kafka_up: Gauge,
    /// Seconds since the checkpoint file was last written.
    pub checkpoint_age_seconds: Gauge<f64, AtomicU64>,
    /// Checkpoint file writes.
    pub checkpoint_writes: Counter,
    /// Times the rate limiter delayed reading.
    pub rate_limited: Counter,
}

impl Metrics {
    /// Registers every metric under `pgtrail_shipper_`.
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("pgtrail_shipper");
        r.register(
            "records_read",
            "Records framed from log files",
            self.records_read.clone(),
        );
        r.register(
            "read_bytes",
            "Bytes of records framed from log files",
            self.bytes_read.clone(),
        );
        r.register(
            "heartbeats_sent",
            "Heartbeats acknowledged by Kafka",
            self.heartbeats_sent.clone(),
        );
        r.register(
            "heartbeat_failures",
            "Heartbeats not sent or not delivered",
            self.heartbeat_failures.clone(),
        );
        r.register(
            "records_shipped",
            "Records acknowledged by Kafka",
            self.records_shipped.clone(),
        );
        r.register(
            "shipped_bytes",
            "Bytes of records acknowledged by Kafka",
            self.bytes_shipped.clone(),
        );
        r.register(
            "records_truncated",
            "Oversized records shipped cut and flagged",
            self.records_truncated.clone(),
        );
        r.register(
            "partial_records_flushed",
            "Final records without newline shipped after the timeout",
            self.partial_records_flushed.clone(),
        );
        r.register(
            "delivery_errors",
            "Delivery errors reported by Kafka",
            self.delivery_errors.clone(),
        );
        r.register(
            "producer_recoveries",
            "Producers replaced after a failed delivery (files shipped again from acknowledged offsets)",
            self.producer_recoveries.clone(),
        );
        r.register(
            "files_skipped",
            "Matched files skipped",
            self.files_skipped.clone(),
        );
        r.register(
            "files_truncated",
            "Files found truncated or rewritten in place",
            self.files_truncated.clone(),
        );
        r.register(
            "file_lag_bytes",
            "Bytes of a file not yet acknowledged",
            self.file_lag_bytes.clone(),
        );
        r.register(
            "files_open",
            "Files currently tailed",
            self.files_open.clone(),
        );
        r.register(
            "in_flight_records",
            "Records produced, not yet acknowledged",
            self.in_flight_records.clone(),
        );
        r.register(
            "in_flight_bytes",
            "Message bytes produced, not yet acknowledged",
            self.in_flight_bytes.clone(),
        );
        r.register(
            "backpressure",
            "1 while reading waits for Kafka acknowledgements",
            self.backpressure.clone(),
        );
        r.register(
            "kafka_up",
            "0 after all brokers were reported down",
            self.kafka_up.clone(),
        );
        r.register(
            "checkpoint_age_seconds",
            "Seconds since the checkpoint file was last written",
            self.checkpoint_age_seconds.clone(),
        );
        r.register(
            "checkpoint_writes",
            "Checkpoint file writes",
            self.checkpoint_writes.clone(),
        );
        r.register(
            "rate_limited",
            "Times the rate limiter delayed reading",
            self.rate_limited.clone(),
        );
    }

    /// The per-format label.
    pub fn format(format: pgtrail_avro::LogFormat) -> FormatLabel {
        FormatLabel {
            format: format.to_string(),
        }
    }
}

/// Serves `GET /metrics` (Prometheus text format), `GET /healthz` (503 when the main loop is
/// hung) and `GET /readyz` (503 until the state lock is held and Kafka answers, and while all
/// brokers are down) until `cancel`. Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: &Metrics,
    health: Arc<pgtrail_connect::Health>,
    cancel: CancellationToken,
) -> Result<SocketAddr, ShipperError> {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let registry = Arc::new(registry);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ShipperError::Metrics {
            addr: addr.to_string(),
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ShipperError::Metrics {
            addr: addr.to_string(),
            source,
        })?;
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
