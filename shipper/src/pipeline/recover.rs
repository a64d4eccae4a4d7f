//! Recovery from a failed delivery: the producer is replaced and every file is read again from
//! its acknowledged offset, so each partition keeps receiving each file's records in file
//! order.
//!
//! Owns nothing of its own: `Shipper` methods and [`Recovery`]. Why not send the failed record
//! again: by then records after it may be delivered to its partition (librdkafka's idempotent
//! producer lets later batches through after a failed one unless `enable.gapless.guarantee`
//! is set; measured on its mock cluster: a batch refused with POLICY_VIOLATION failed, the
//! next batches landed), and the processor drops a record that arrives after a later one of
//! the same file in its partition as a duplicate. With the gapless guarantee, the first
//! failure makes the producer fatal (nothing after it lands); re-shipping from the
//! acknowledged offsets then delivers the rest of every file in order, and what landed before
//! is dropped by the processor as re-shipped. Invariants: while recovering nothing is sent;
//! the new producer starts once every message of the old one was reported (or after
//! [`DRAIN_WAIT`]); checkpoints never move back (acknowledged offsets are where reading
//! resumes). Must not: drop a record: a permanent refusal still stops the shipper.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Shipper;
use crate::error::ShipperError;
use crate::kafka::{KafkaSink, SinkSettings};

/// Longest wait for the old producer's outstanding reports before it is replaced anyway.
pub(super) const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// Longest pause between two recoveries that did not get a record acknowledged.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A recovery under way.
#[derive(Debug, Clone, Copy)]
pub(super) struct Recovery {
    /// When the failure was seen.
    since: Instant,
    /// Not before then (backoff after recoveries that did not help).
    not_before: Instant,
}

impl Shipper {
    /// A delivery failed (not permanently) or the producer became fatal: stop sending; the
    /// loop replaces the producer once the old one has reported everything.
    pub(super) fn start_recovery(&mut self, why: &str) {
        if self.recovery.is_some() {
            return;
        }
        let backoff = Duration::from_secs(1 << self.recoveries.min(6)).min(MAX_BACKOFF);
        let now = Instant::now();
        warn!(
            reason = why,
            in_flight = self.in_flight_records,
            retry_in_ms = backoff.as_millis() as u64,
            "Kafka refused a delivery: replacing the producer and shipping again from the acknowledged offsets (file order kept)."
        );
        self.metrics.producer_recoveries.inc();
        self.recovery = Some(Recovery {
            since: now,
            not_before: now + backoff,
        });
    }

    /// Whether a recovery is under way.
    pub(super) fn recovering(&self) -> bool {
        self.recovery.is_some()
    }

    /// When the recovery can go on (the loop wakes then).
    pub(super) fn recovery_due(&self) -> Option<Instant> {
        let r = self.recovery?;
        let drained = self.in_flight_records == 0 || r.since.elapsed() >= DRAIN_WAIT;
        Some(if drained {
            r.not_before
        } else {
            (r.since + DRAIN_WAIT).max(r.not_before)
        })
    }

    /// Replaces the producer and reads every file again from its acknowledged offset, when
    /// the recovery is due; the new delivery reports come through `self.fresh_deliveries`.
    pub(super) fn recover(&mut self) -> Result<(), ShipperError> {
        let Some(due) = self.recovery_due() else {
            return Ok(());
        };
        if Instant::now() < due {
            return Ok(());
        }
        let (sink, deliveries) = KafkaSink::new(&SinkSettings::from_config(&self.cfg))?;
        // The settings worked for the old producer: the new one's errors are transient.
        if self.sink.connect_failure().is_none() {
            sink.established();
        }
        // The old producer is dropped here (its queue, if any is left, purged): records not
        // acknowledged are read again below.
        self.sink = sink;
        self.fresh_deliveries = Some(deliveries);
        self.ready.clear();
        self.in_flight_records = 0;
        self.in_flight_bytes = 0;
        let mut rewound = 0;
        for f in self.files.values_mut() {
            if f.rewind() {
                rewound += 1;
            }
        }
        self.recoveries += 1;
        self.recovery = None;
        info!(
            files = rewound,
            "New producer; shipping again from the acknowledged offsets."
        );
        Ok(())
    }

    /// A record was acknowledged: recoveries helped, the next one starts without backoff.
    pub(super) fn delivered(&mut self) {
        self.recoveries = 0;
    }
}
