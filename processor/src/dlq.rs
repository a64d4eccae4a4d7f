//! The dead-letter topic: records that cannot be decoded or parsed, byte-exact, with the
//! reason and their Kafka coordinates in headers.
//!
//! Owns [`DeadLetters`]. Message value = the original message value (so a fixed parser can
//! replay it), key = the original key, headers `pgtrail.error.kind`, `pgtrail.error.reason`,
//! `pgtrail.source.topic`, `pgtrail.source.partition`, `pgtrail.source.offset`. Invariant:
//! [`DeadLetters::flush`] returns only after Kafka acknowledged every dead letter sent so
//! far, and the consumer calls it before the Delta commit covering those offsets (at least
//! once: a crash in between sends them again). Must not: log record contents.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pgtrail_connect::LogGate;
use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use crate::config::Config;
use crate::error::ProcessorError;
use crate::partition::DeadLetter;
use crate::telemetry::{Metrics, ReasonLabel};

/// Counts deliveries that failed; logs through the consumer's gate.
pub struct DlqContext {
    failed: AtomicU64,
    gate: Arc<LogGate>,
}

impl ClientContext for DlqContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.gate.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.gate.error(&error, reason);
    }
}

impl ProducerContext for DlqContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::error!(error = %e, "Dead letter not delivered.");
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Producer of the dead-letter topic.
pub struct DeadLetters {
    topic: String,
    producer: BaseProducer<DlqContext>,
    context: Arc<DlqContext>,
    unflushed: u64,
}

fn kafka_err(topic: &str, reason: impl std::fmt::Display) -> ProcessorError {
    ProcessorError::Kafka {
        what: format!("dead-letter topic {topic}"),
        reason: reason.to_string(),
    }
}

impl DeadLetters {
    /// A producer to the configured dead-letter topic (idempotent, acks=all) with the
    /// `[kafka]` section's properties and security; its logs and errors go through `gate`.
    pub fn new(config: &Config, gate: Arc<LogGate>) -> Result<DeadLetters, ProcessorError> {
        let topic = config.dead_letter_topic.as_str();
        let mut cfg =
            config
                .kafka
                .client_config(&config.brokers)
                .map_err(|e| ProcessorError::Config {
                    reason: e.to_string(),
                })?;
        cfg.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "20");
        let producer = cfg
            .create_with_context::<DlqContext, BaseProducer<DlqContext>>(DlqContext {
                failed: AtomicU64::new(0),
                gate,
            })
            .map_err(|e| kafka_err(topic, pgtrail_connect::kafka_error(&e)))?;
        let context = producer.context().clone();
        Ok(DeadLetters {
            topic: topic.to_owned(),
            producer,
            context,
            unflushed: 0,
        })
    }

    /// Sends one dead letter (asynchronously; see [`DeadLetters::flush`]).
    pub fn send(&mut self, d: &DeadLetter, metrics: &Metrics) -> Result<(), ProcessorError> {
        let partition = d.tp.partition.to_string();
        let offset = d.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "pgtrail.error.kind",
                value: Some(d.kind),
            })
            .insert(Header {
                key: "pgtrail.error.reason",
                value: Some(d.reason.as_str()),
            })
            .insert(Header {
                key: "pgtrail.source.topic",
                value: Some(&*d.tp.topic),
            })
            .insert(Header {
                key: "pgtrail.source.partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "pgtrail.source.offset",
                value: Some(offset.as_str()),
            });
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic)
            .payload(d.payload.as_slice())
            .headers(headers);
        if let Some(k) = &d.key {
            record = record.key(k.as_slice());
        }
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) {
                        // Serving delivery reports makes room.
                        self.producer.poll(Duration::from_millis(10));
                        record = r;
                    } else {
                        return Err(kafka_err(&self.topic, e));
                    }
                }
            }
        }
        self.unflushed += 1;
        // Delivery reports are served here and by `flush`, so no polling thread: rdkafka's
        // `ThreadedProducer` thread took 0.6 s of CPU in an 8 s run with nothing to send
        // (reading the clock in its poll loop).
        self.producer.poll(Duration::ZERO);
        metrics
            .records_dead_lettered
            .get_or_create(&ReasonLabel {
                reason: d.kind.to_owned(),
            })
            .inc();
        tracing::warn!(
            topic = &*d.tp.topic,
            partition = d.tp.partition,
            offset = d.offset,
            kind = d.kind,
            reason = d.reason,
            "Record dead-lettered."
        );
        Ok(())
    }

    /// Waits until every dead letter sent is acknowledged.
    pub fn flush(&mut self, timeout: Duration) -> Result<(), ProcessorError> {
        if self.unflushed == 0 {
            return Ok(());
        }
        self.producer
            .flush(timeout)
            .map_err(|e| kafka_err(&self.topic, e))?;
        let failed = self.context.failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            return Err(kafka_err(
                &self.topic,
                format!("{failed} dead letters were not delivered"),
            ));
        }
        self.unflushed = 0;
        Ok(())
    }
}
