//! The Kafka side: an idempotent producer whose delivery reports come back as a channel.
//!
//! Owns [`KafkaSink`] (librdkafka `ThreadedProducer` with `enable.idempotence`,
//! `enable.gapless.guarantee`, `acks=all`, infinite `message.timeout.ms` so librdkafka never
//! expires a record on its own), topic
//! creation, and the translation of librdkafka callbacks into [`Delivery`] values and tracing
//! events. Invariant: every record handed to [`KafkaSink::send`] yields exactly one
//! [`Delivery`], success or error, so the pipeline can keep exact in-flight accounting.
//! Must not: decide retries or checkpoints; never log property values (they may hold secrets).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgtrail_connect::{GateContext, KafkaSection, LogGate};
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

/// librdkafka callbacks → channel + tracing (through the log gate).
pub struct SinkContext {
    tx: mpsc::UnboundedSender<Delivery>,
    brokers_down: Arc<AtomicBool>,
    gate: Arc<LogGate>,
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.gate.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown)
            && !self.brokers_down.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(%reason, "All Kafka brokers are down; records wait in memory and reading pauses when the in-flight limit is reached.");
        }
        self.gate.error(&error, reason);
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
            self.gate.established();
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
    gate: Arc<LogGate>,
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
    /// The `[kafka]` section: passthrough properties and security.
    pub kafka: KafkaSection,
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
            kafka: cfg.kafka.clone(),
        }
    }
}

/// The librdkafka producer configuration the shipper uses (also used by the benchmark's
/// baseline producer, so both send with exactly the same settings).
pub fn producer_config(s: &SinkSettings) -> Result<ClientConfig, ShipperError> {
    if let Some(k) = s
        .kafka
        .properties
        .keys()
        .find(|k| PROTECTED.contains(&k.as_str()))
    {
        return Err(ShipperError::Config {
            reason: format!("kafka property {k} cannot be overridden"),
        });
    }
    let mut cfg = client_config(&s.brokers, &s.kafka)?;
    cfg.set("client.id", &s.client_id)
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

/// A client configuration for `brokers` with the `[kafka]` section applied (secrets read).
fn client_config(brokers: &str, kafka: &KafkaSection) -> Result<ClientConfig, ShipperError> {
    kafka
        .client_config(brokers)
        .map_err(|e| ShipperError::Config {
            reason: e.to_string(),
        })
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
        let gate = Arc::new(LogGate::default());
        let ctx = SinkContext {
            tx,
            brokers_down: brokers_down.clone(),
            gate: gate.clone(),
        };
        let producer = cfg
            .create_with_context::<_, ThreadedProducer<SinkContext>>(ctx)
            .map_err(|e| setup(pgtrail_connect::kafka_error(&e)))?;
        Ok((
            KafkaSink {
                producer,
                topic: s.topic.clone(),
                brokers_down,
                gate,
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

    /// Hands one message without a key to librdkafka (its partitioner picks the partition).
    pub fn send_unkeyed(&self, payload: &[u8], opaque: Opaque) -> Result<(), KafkaError> {
        let record =
            BaseRecord::<(), [u8], Box<Opaque>>::with_opaque_to(&self.topic, Box::new(opaque))
                .payload(payload);
        self.producer.send(record).map_err(|(e, _)| e)
    }

    /// A failure no retry fixes (authentication, TLS, a listener of another security
    /// protocol), naming the broker, if one was reported.
    pub fn connect_failure(&self) -> Option<String> {
        self.gate.connect_failure()
    }

    /// Marks the connection as established (a producer replacing one whose settings worked).
    pub fn established(&self) {
        self.gate.established();
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
    /// Looks up for up to 10 s, in 1 s steps so that a connect failure ends it early.
    async fn topic_exists(&self, cfg: &ClientConfig) -> bool {
        let cfg = cfg.clone();
        let topic = self.topic.clone();
        let gate = self.gate.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            let client: rdkafka::consumer::BaseConsumer<GateContext> =
                cfg.create_with_context(GateContext(gate.clone())).ok()?;
            for _ in 0..10 {
                if let Ok(md) = client.fetch_metadata(Some(&topic), Duration::from_secs(1)) {
                    gate.established();
                    return Some(md.topics().iter().any(|t| {
                        t.name() == topic && t.error().is_none() && !t.partitions().is_empty()
                    }));
                }
                // The client's logs and errors reach the gate when it is polled, one queued
                // event per call.
                for _ in 0..64 {
                    let _ = client.poll(Duration::ZERO);
                }
                if gate.connect_failure().is_some() {
                    return None;
                }
            }
            None
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
        kafka: &KafkaSection,
        partitions: i32,
        replication: i32,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), ShipperError> {
        let setup = |reason: String| ShipperError::KafkaSetup {
            topic: self.topic.clone(),
            reason,
        };
        let cfg = client_config(brokers, kafka)?;
        if self.topic_exists(&cfg).await {
            return Ok(());
        }
        let admin: AdminClient<_> = cfg
            .create_with_context(GateContext(self.gate.clone()))
            .map_err(|e| setup(pgtrail_connect::kafka_error(&e)))?;
        let mut delay = Duration::from_millis(200);
        loop {
            if let Some(reason) = self.gate.connect_failure() {
                return Err(setup(reason));
            }
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
