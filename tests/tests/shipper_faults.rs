//! Producer errors injected with librdkafka's mock cluster (issue 17, item 5): the broker
//! refuses some produce requests (POLICY_VIOLATION, not a permanent refusal of the record).
//! Whatever the shipper does about it, each partition must receive each file's records in
//! file order, possibly with re-shipped runs, so that the processor's dedup (per partition
//! and file, the highest byte offset seen) keeps every record exactly once. The previous
//! shipper sent a failed record again after later records of its file had landed in the same
//! partition, where that dedup dropped it.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgtrail_avro::Decoder;
use pgtrail_tests::pglogs::expected_records;
use pgtrail_tests::{WorkDir, workspace_root};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use shipper::config::Config;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "pgaudit.raw.faults";

/// Every message of the topic: per partition, (file id, byte offset, record bytes) in order.
fn consume(brokers: &str, expected: usize) -> HashMap<i32, Vec<(String, i64, Vec<u8>)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "check")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let decoder = Decoder::new(None);
    let mut out: HashMap<i32, Vec<(String, i64, Vec<u8>)>> = HashMap::new();
    let (mut n, mut last) = (0, Instant::now());
    while last.elapsed() < Duration::from_secs(3) || n < expected {
        assert!(
            last.elapsed() < Duration::from_secs(30),
            "{n} of {expected}"
        );
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let r = decoder.decode_single_object(m.payload().unwrap()).unwrap();
            out.entry(m.partition()).or_default().push((
                r.source.file_id.to_string(),
                r.offset,
                r.data,
            ));
            n += 1;
            last = Instant::now();
        }
    }
    out
}

#[test]
fn refused_batches_keep_every_file_in_order_in_its_partition() {
    let work = WorkDir::new("shipper-faults");
    let sample = workspace_root().join("tests/fixtures/sample/primary");
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, 3, 1).unwrap();
    let cfg = Config {
        server: "faults".into(),
        logs: vec![format!("{}/*.csv", sample.display())],
        brokers: mock.bootstrap_servers(),
        create_topic: false,
        state_dir: work.path().join("state"),
        once: true,
        max_records_per_sec: 150,
        metrics_addr: "none".into(),
        ..Config::default()
    };
    let shipper = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(shipper::pipeline::run(cfg, CancellationToken::new()))
    });
    // Refusals while the shipper produces, twice.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(600));
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_POLICY_VIOLATION; 3],
        );
    }
    let summary = shipper.join().unwrap().unwrap();
    assert!(summary.drained);

    let expected = expected_records(&sample);
    let expected: Vec<&[u8]> = expected
        .iter()
        .filter(|r| r.path.ends_with(".csv"))
        .map(|r| r.data.as_slice())
        .collect();
    let topic = consume(&mock.bootstrap_servers(), expected.len());
    // The processor's dedup: per partition and file, only records past the highest offset.
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut sent = 0;
    for messages in topic.values() {
        let mut highest: HashMap<&str, i64> = HashMap::new();
        for (file, offset, data) in messages {
            sent += 1;
            let h = highest.entry(file.as_str()).or_insert(-1);
            if *offset > *h {
                *h = *offset;
                kept.push(data);
            }
        }
    }
    let (mut kept, mut want) = (kept, expected);
    kept.sort_unstable();
    want.sort_unstable();
    assert_eq!(kept.len(), want.len(), "{sent} messages sent");
    assert!(kept == want, "every record exactly once after dedup");
}
