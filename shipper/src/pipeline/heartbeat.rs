//! The shipper's heartbeat: every `heartbeat_interval_ms`, one `HEARTBEAT` envelope (no file,
//! no data, `read_at` = when sent) to the server's topic, on a partition the producer picks.
//! The processor writes no row for it; it records the newest one durable in the table, and
//! the lag monitor reports its age per server: end-to-end freshness covering shipper, Kafka
//! and processor together.
//!
//! Owns [`Shipper::heartbeat`] and the handling of its delivery reports. Invariants: a
//! heartbeat is best effort: its failure is counted and never starts a recovery or moves a
//! checkpoint; it goes through the same producer as records, so a shipper that cannot produce
//! sends none. Must not: carry anything of the logs.

use pgtrail_avro::record::encode_source;
use pgtrail_avro::{LogFormat, RecordFields, RecordKind, RecordSource};
use rdkafka::error::RDKafkaErrorCode;
use tracing::{debug, warn};

use super::{Shipper, now_micros};
use crate::kafka::{Delivery, Opaque};

/// The file key of a heartbeat's delivery reports (no file has it: keys count up from 0).
pub(super) const HEARTBEAT_KEY: u64 = u64::MAX;

impl Shipper {
    /// Sends one heartbeat (skipped while the producer's queue is full or a recovery runs).
    pub(super) fn heartbeat(&mut self) {
        if self.recovery.is_some() {
            return;
        }
        let source = encode_source(&RecordSource {
            server: self.info.server.as_str().into(),
            host: self.info.host.as_str().into(),
            shipper_version: env!("CARGO_PKG_VERSION").into(),
            format: LogFormat::Csvlog,
            source_path: "".into(),
            file_id: "".into(),
            log_line_prefix: None,
            log_timezone: None,
            kind: RecordKind::Heartbeat,
        });
        let payload = self.encoder.encode(
            &source,
            RecordFields {
                offset: 0,
                data: &[],
                read_at_micros: now_micros(),
                original_length: None,
            },
        );
        let opaque = Opaque {
            file_key: HEARTBEAT_KEY,
            seq: 0,
            end: 0,
            record_len: 0,
            format: LogFormat::Csvlog,
        };
        match self.sink.send_unkeyed(&payload, opaque) {
            Ok(()) => {
                self.in_flight_records += 1;
                self.in_flight_bytes += payload.len();
            }
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                debug!("Heartbeat skipped: the producer's queue is full.");
            }
            Err(e) => {
                self.metrics.heartbeat_failures.inc();
                warn!(error = %e, "Heartbeat not sent.");
            }
        }
    }

    /// Handles a heartbeat's delivery report (in-flight counts are already updated).
    pub(super) fn on_heartbeat_delivery(&mut self, d: &Delivery) {
        match &d.result {
            Ok(()) => {
                self.metrics.heartbeats_sent.inc();
            }
            Err(fail) => {
                self.metrics.heartbeat_failures.inc();
                warn!(error = %fail.error, "Heartbeat not delivered.");
            }
        }
    }
}
