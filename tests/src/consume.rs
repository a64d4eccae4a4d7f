//! Reads topics back for assertions: every message from the beginning of every partition.
//!
//! Owns [`consume_all`] and [`Shipped`]. It stops when `expected` distinct records arrived, or
//! when nothing new arrived for `idle`; it never trusts the broker's reported high watermark.
//! Must not: commit offsets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgtrail_avro::{Decoder, RawRecord};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// One consumed message.
#[derive(Debug, Clone)]
pub struct Shipped {
    /// Partition.
    pub partition: i32,
    /// Kafka offset.
    pub kafka_offset: i64,
    /// Message key.
    pub key: Vec<u8>,
    /// Decoded envelope.
    pub record: RawRecord,
}

/// Partitions of `topic`, waiting for it to exist.
pub fn partitions(brokers: &str, topic: &str) -> Vec<i32> {
    let consumer = consumer(brokers);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))
            && let Some(t) = md.topics().iter().find(|t| t.name() == topic)
            && !t.partitions().is_empty()
        {
            return t.partitions().iter().map(|p| p.id()).collect();
        }
        assert!(Instant::now() < deadline, "topic {topic} did not appear");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn consumer(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "pgtrail-tests")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("consumer")
}

/// A consumer assigned every partition of `topic` from its beginning (no group offsets).
fn from_beginning(brokers: &str, topic: &str) -> BaseConsumer {
    let consumer = consumer(brokers);
    let mut tpl = TopicPartitionList::new();
    for p in partitions(brokers, topic) {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// Every log record message of `topic` (heartbeats left out), decoded. Stops at `expected`
/// distinct (file, offset) records or after `idle` without a new message.
pub fn consume_all(brokers: &str, topic: &str, expected: usize, idle: Duration) -> Vec<Shipped> {
    let consumer = from_beginning(brokers, topic);
    let decoder = Decoder::new(None);
    let mut out = Vec::new();
    let mut distinct = HashMap::new();
    let mut last_new = Instant::now();
    while last_new.elapsed() < idle && distinct.len() < expected {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let payload = m.payload().unwrap_or_default();
                let record = decoder
                    .decode_single_object(payload)
                    .expect("shipped message decodes");
                // Shipper heartbeats are no log records (and no progress).
                if record.source.kind == pgtrail_avro::RecordKind::Heartbeat {
                    continue;
                }
                distinct.insert((record.source.file_id.clone(), record.offset), ());
                out.push(Shipped {
                    partition: m.partition(),
                    kafka_offset: m.offset(),
                    key: m.key().unwrap_or_default().to_vec(),
                    record,
                });
                last_new = Instant::now();
            }
            Some(Err(e)) => eprintln!("consume error (retrying): {e}"),
            None => {}
        }
    }
    out
}

/// A raw message with its headers.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Value bytes.
    pub payload: Vec<u8>,
    /// Headers (UTF-8 lossy).
    pub headers: HashMap<String, String>,
}

/// Every message of `topic` without decoding; stops at `expected` or after `idle`.
pub fn consume_raw(brokers: &str, topic: &str, expected: usize, idle: Duration) -> Vec<RawMessage> {
    use rdkafka::message::Headers;
    let consumer = from_beginning(brokers, topic);
    let mut out = Vec::new();
    let mut last_new = Instant::now();
    while last_new.elapsed() < idle && out.len() < expected {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(RawMessage {
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
            last_new = Instant::now();
        }
    }
    out
}
