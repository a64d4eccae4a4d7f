//! Embedded Kafka for trying the shipper with no broker: librdkafka's in-process mock cluster,
//! and a summary of what landed in the topic.
//!
//! Owns [`EmbeddedKafka`] and [`summarize`]. Used by `--embedded-kafka` (quick start, dry runs
//! over a log directory). Invariant: the summary is read back from the topic, not from the
//! shipper's own counters. Must not: be used for anything durable: the cluster lives in memory
//! and dies with the process.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use pgtrail_avro::Decoder;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::ShipperError;

/// An in-process Kafka cluster.
pub struct EmbeddedKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedKafka {
    /// Starts a one-broker mock cluster with `topic` created (`partitions` partitions).
    pub fn start(topic: &str, partitions: i32) -> Result<EmbeddedKafka, ShipperError> {
        let setup = |e: rdkafka::error::KafkaError| ShipperError::KafkaSetup {
            topic: topic.to_owned(),
            reason: format!("embedded Kafka: {e}"),
        };
        let cluster = MockCluster::new(1).map_err(setup)?;
        cluster.create_topic(topic, partitions, 1).map_err(setup)?;
        Ok(EmbeddedKafka { cluster })
    }

    /// Bootstrap servers of the mock cluster.
    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}

/// What a topic holds, read back message by message.
#[derive(Debug, Default)]
pub struct TopicSummary {
    /// Messages read.
    pub messages: u64,
    /// Record bytes.
    pub bytes: u64,
    /// Messages per log format.
    pub by_format: BTreeMap<String, u64>,
    /// Messages per source file.
    pub by_file: BTreeMap<String, u64>,
    /// Distinct message keys (sessions).
    pub sessions: usize,
    /// Messages per partition.
    pub by_partition: BTreeMap<i32, u64>,
    /// Truncated records.
    pub truncated: u64,
}

impl std::fmt::Display for TopicSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "messages: {} ({} record bytes), sessions: {}, truncated: {}",
            self.messages, self.bytes, self.sessions, self.truncated
        )?;
        for (format, n) in &self.by_format {
            writeln!(f, "  format {format:<8} {n:>8}")?;
        }
        for (p, n) in &self.by_partition {
            writeln!(f, "  partition {p:<4} {n:>8}")?;
        }
        for (file, n) in &self.by_file {
            writeln!(f, "  file {file} {n}")?;
        }
        Ok(())
    }
}

/// Reads `expected` messages of `topic` from the beginning (or until 10 s pass without one).
pub fn summarize(
    bootstrap: &str,
    topic: &str,
    expected: u64,
) -> Result<TopicSummary, ShipperError> {
    let err = |e: rdkafka::error::KafkaError| ShipperError::KafkaSetup {
        topic: topic.to_owned(),
        reason: format!("reading back: {e}"),
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "pgtrail-embedded-summary")
        .set("enable.auto.commit", "false")
        .create()
        .map_err(err)?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(err)?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .map_err(err)?;
        }
    }
    consumer.assign(&tpl).map_err(err)?;
    let decoder = Decoder::new(None);
    let mut s = TopicSummary::default();
    let mut sessions = HashSet::new();
    let mut last = Instant::now();
    while s.messages < expected && last.elapsed() < Duration::from_secs(10) {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.map_err(err)?;
        last = Instant::now();
        s.messages += 1;
        *s.by_partition.entry(m.partition()).or_default() += 1;
        sessions.insert(m.key().unwrap_or_default().to_vec());
        if let Ok(r) = decoder.decode_single_object(m.payload().unwrap_or_default()) {
            s.bytes += r.data.len() as u64;
            s.truncated += u64::from(r.truncated);
            *s.by_format.entry(r.source.format.to_string()).or_default() += 1;
            *s.by_file
                .entry(r.source.source_path.to_string())
                .or_default() += 1;
        }
    }
    s.sessions = sessions.len();
    Ok(s)
}
