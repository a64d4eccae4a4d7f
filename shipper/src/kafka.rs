//! The Kafka side: an idempotent producer whose delivery reports come back as a channel.
//!
//! Owns [`KafkaSink`] (librdkafka `ThreadedProducer` with `enable.idempotence`,
//! `enable.gapless.guarantee`, `acks=all`, infinite `message.timeout.ms` so librdkafka never
//! expires a record on its own), topic
//! creation, and the translation of librdkafka callbacks into [`Delivery`] values and tracing
//! events. Invariant: every record handed to [`KafkaSink::send`] yields exactly one
//! [`Delivery`], success or error, so the pipeline can keep exact in-flight accounting.
//! Must not: decide retries or checkpoints; never log property values (they may hold secrets).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::mpsc;

use crate::error::ShipperError;

/// Which record a delivery report is about.
#[derive(Debug, Clone, Copy)]
pub struct Opaque {
    /// The tailed file instance.
    pub file_key: u64,
    /// Sequence number in that file's [`crate::tailer::AckTracker`].
    pub seq: u64,
    /// End offset of the record in its file.
    pub end: u64,
    /// Bytes of the record itself (for metrics).
    pub record_len: u32,
    /// Format of its file (for metrics).
    pub format: pgtrail_avro::LogFormat,
}

/// A delivery report.
#[derive(Debug)]
pub struct Delivery {
    /// The record.
    pub opaque: Opaque,
    /// Bytes of the message value (for in-flight accounting).
    pub message_len: usize,
    /// `Ok` or the error with what is needed to send it again.
    pub result: Result<(), DeliveryFailure>,
}

/// A failed delivery.
#[derive(Debug)]
pub struct DeliveryFailure {
    /// librdkafka's error.
    pub error: KafkaError,
    /// Whether sending again cannot help.
    pub permanent: bool,
}

/// librdkafka callbacks → channel + tracing.
pub struct SinkContext {
    tx: mpsc::UnboundedSender<Delivery>,
    brokers_down: Arc<AtomicBool>,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            if !self.brokers_down.swap(true, Ordering::Relaxed) {
                tracing::warn!(%reason, "All Kafka brokers are down; records wait in memory and reading pauses when the in-flight limit is reached.");
            }
        } else {
            tracing::warn!(%error, %reason, "Kafka client error.");
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Opaque>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (message_len, result) = match result {
            Ok(m) => (m.payload_len(), Ok(())),
            Err((error, m)) => (
                m.payload_len(),
                Err(DeliveryFailure {
                    permanent: is_permanent(error),
                    error: error.clone(),
                }),
            ),
        };
        if result.is_ok() {
            self.brokers_down.store(false, Ordering::Relaxed);
        }
        // The receiver lives as long as the pipeline; after it is gone nothing needs reports.
        let _ = self.tx.send(Delivery {
            opaque: *opaque,
            message_len,
            result,
        });
    }
}

/// Whether sending the record again cannot help (the broker refuses this record or this
/// producer). A fatal producer is not: it is replaced (`pipeline/recover.rs`).
fn is_permanent(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::InvalidRecord
        )
    )
}

/// Properties the shipper's guarantees depend on; a config may not override them.
const PROTECTED: [&str; 5] = [
    "enable.idempotence",
    "enable.gapless.guarantee",
    "acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
];

/// The producer.
pub struct KafkaSink {
    producer: ThreadedProducer<SinkContext>,
    topic: String,
    brokers_down: Arc<AtomicBool>,
}

/// Settings for [`KafkaSink::new`].
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic.
    pub topic: String,
    /// `client.id`.
    pub client_id: String,
    /// Largest message value, bytes.
    pub max_message_bytes: usize,
    /// librdkafka queue budget, bytes.
    pub queue_bytes: usize,
    /// Extra properties.
    pub properties: BTreeMap<String, String>,
}

impl SinkSettings {
    /// The settings a shipper with configuration `cfg` uses.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        SinkSettings {
            brokers: cfg.brokers.clone(),
            topic: cfg.topic(),
            client_id: format!("pgtrail-shipper-{}", cfg.server),
            max_message_bytes: cfg.max_record_bytes + 64 * 1024,
            queue_bytes: cfg.max_in_flight_bytes * 2,
            properties: cfg.kafka_properties.clone(),
        }
    }
}

/// The librdkafka producer configuration the shipper uses (also used by the benchmark's
/// baseline producer, so both send with exactly the same settings).
pub fn producer_config(s: &SinkSettings) -> Result<ClientConfig, ShipperError> {
    let mut cfg = ClientConfig::new();
    for (k, v) in &s.properties {
        if PROTECTED.contains(&k.as_str()) {
            return Err(ShipperError::KafkaSetup {
                topic: s.topic.clone(),
                reason: format!("kafka property {k} cannot be overridden"),
            });
        }
        cfg.set(k, v);
    }
    cfg.set("bootstrap.servers", &s.brokers)
        .set("client.id", &s.client_id)
        .set("enable.idempotence", "true")
        // A failed batch makes the producer fatal instead of letting later batches of the
        // partition through (a gap the processor would take for re-shipped records).
        .set("enable.gapless.guarantee", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set(
            "queue.buffering.max.kbytes",
            (s.queue_bytes / 1024).max(1024).to_string(),
        )
        .set(
            "message.max.bytes",
            s.max_message_bytes.max(1_000_000).to_string(),
        );
    Ok(cfg)
}

impl KafkaSink {
    /// Creates the producer; delivery reports go to the returned receiver.
    pub fn new(
        s: &SinkSettings,
    ) -> Result<(KafkaSink, mpsc::UnboundedReceiver<Delivery>), ShipperError> {
        let setup = |reason: String| ShipperError::KafkaSetup {
            topic: s.topic.clone(),
            reason,
        };
        let cfg = producer_config(s)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let brokers_down = Arc::new(AtomicBool::new(false));
        let ctx = SinkContext {
            tx,
            brokers_down: brokers_down.clone(),
        };
        let producer = cfg
            .create_with_context::<_, ThreadedProducer<SinkContext>>(ctx)
            .map_err(|e| setup(e.to_string()))?;
        Ok((
            KafkaSink {
                producer,
                topic: s.topic.clone(),
                brokers_down,
            },
            rx,
        ))
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether librdkafka reported all brokers down since the last acknowledgement.
    pub fn brokers_down(&self) -> bool {
        self.brokers_down.load(Ordering::Relaxed)
    }

    /// Hands one message to librdkafka. On a full local queue the message is handed back.
    pub fn send(&self, key: &[u8], payload: &[u8], opaque: Opaque) -> Result<(), KafkaError> {
        let record = BaseRecord::with_opaque_to(&self.topic, Box::new(opaque))
            .key(key)
            .payload(payload);
        self.producer.send(record).map_err(|(e, _)| e)
    }

    /// librdkafka's fatal error, if the producer became unusable (idempotence violated...).
    pub fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, msg)| format!("{code:?}: {msg}"))
    }

    /// Whether the topic exists with partitions (a metadata lookup, which needs no
    /// CreateTopics permission; librdkafka's mock cluster does not answer CreateTopics).
    async fn topic_exists(&self, cfg: &ClientConfig) -> bool {
        let cfg = cfg.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            let client: rdkafka::consumer::BaseConsumer = cfg.create().ok()?;
            let md = client
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .ok()?;
            Some(
                md.topics().iter().any(|t| {
                    t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                }),
            )
        })
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
    }

    /// Creates the topic unless it exists. Waits (retrying) while Kafka is unreachable.
    pub async fn ensure_topic(
        &self,
        brokers: &str,
        properties: &BTreeMap<String, String>,
        partitions: i32,
        replication: i32,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), ShipperError> {
        let setup = |reason: String| ShipperError::KafkaSetup {
            topic: self.topic.clone(),
            reason,
        };
        let mut cfg = ClientConfig::new();
        for (k, v) in properties {
            if !PROTECTED.contains(&k.as_str()) {
                cfg.set(k, v);
            }
        }
        cfg.set("bootstrap.servers", brokers);
        if self.topic_exists(&cfg).await {
            return Ok(());
        }
        let admin: AdminClient<_> = cfg.create().map_err(|e| setup(e.to_string()))?;
        let mut delay = Duration::from_millis(200);
        loop {
            let topic = NewTopic::new(
                &self.topic,
                partitions,
                TopicReplication::Fixed(replication),
            );
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            match admin.create_topics([&topic], &opts).await {
                Ok(results) => {
                    for r in results {
                        match r {
                            Ok(name) => tracing::info!(topic = %name, partitions, "Created topic."),
                            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                            Err((name, code)) => {
                                return Err(setup(format!("creating topic {name}: {code:?}")));
                            }
                        }
                    }
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "Kafka unreachable while checking the topic; retrying.");
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // Anything still queued is unacknowledged and will be read again after a restart.
        let _ = self.producer.flush(Duration::from_millis(100));
    }
}
