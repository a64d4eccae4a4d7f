//! Probe of a broker quirk: Tansu 0.6 answers a fetch from inside a record batch with the next
//! batch. Run: `cargo run -p tests --example tansu_seek_probe`. Prints, per seek offset, what
//! arrives (measured: seek 50 into a 100-record batch yields offsets from 100).

#![allow(clippy::unwrap_used, missing_docs)]
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;
fn main() {
    let broker = pgtrail_tests::broker::Broker::start();
    broker.create_topic("probe", 1);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "200")
        .create()
        .unwrap();
    for round in 0..3 {
        for i in 0..100 {
            p.send(
                BaseRecord::<[u8], [u8]>::to("probe").payload(format!("{round}-{i}").as_bytes()),
            )
            .unwrap();
        }
        p.flush(Duration::from_secs(10)).unwrap();
    }
    for start in [0i64, 50, 150, 299] {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("group.id", "probe")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("probe", 0, Offset::Offset(start))
            .unwrap();
        c.assign(&tpl).unwrap();
        let mut got = Vec::new();
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_secs(4) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                got.push(m.offset());
            }
        }
        println!(
            "seek {start}: {} messages, first {:?}, last {:?}",
            got.len(),
            got.first(),
            got.last()
        );
    }
}
