//! Baseline for the processing benchmark: joins a fresh consumer group with exactly the
//! processor's client settings (`processor::consumer::consumer_config`) and only reads the
//! messages (touches each payload), no decoding, parsing or writing. The clock starts before
//! the client is created and stops at the last expected message, like the processor's.
//!
//! Usage: `pgtrail-baseline-consumer BROKERS TOPIC GROUP EXPECTED_MESSAGES`. Prints one line:
//! `baseline_consumer records=N bytes=B seconds=S records_per_sec=R`.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, topic, group, expected] = args.as_slice() else {
        eprintln!("usage: pgtrail-baseline-consumer BROKERS TOPIC GROUP EXPECTED_MESSAGES");
        std::process::exit(2);
    };
    let expected: u64 = expected.parse().expect("EXPECTED_MESSAGES");
    let started = Instant::now();
    let cfg = processor::config::Config {
        brokers: brokers.clone(),
        group: group.clone(),
        topics: vec![topic.clone()],
        ..processor::config::Config::default()
    };
    let consumer: BaseConsumer = processor::consumer::consumer_config(&cfg)
        .expect("config")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut last = Instant::now();
    while n < expected {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                n += 1;
                bytes += m.payload().map_or(0, |p| p.len() as u64);
                last = Instant::now();
            }
            Some(Err(e)) => eprintln!("consumer error: {e}"),
            None => {
                if last.elapsed() > Duration::from_secs(120) {
                    eprintln!("only {n} of {expected} messages arrived");
                    std::process::exit(1);
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "baseline_consumer records={n} bytes={bytes} seconds={secs:.3} records_per_sec={:.0}",
        n as f64 / secs
    );
}
