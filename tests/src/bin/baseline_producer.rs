//! Baseline for the shipping benchmark: sends the same records as the shipper, with the same
//! producer settings (`shipper::kafka::producer_config`) and message encoding, but with no framing, no checkpointing and no rate
//! limiting. Records are split and encoded before the clock starts; the clock stops when
//! Kafka acknowledged the last one.
//!
//! Usage: `pgtrail-baseline-producer [--copies N] [--prefix P] [--partitions P] [--spread]
//! BROKERS TOPIC FILE...`: `*.csv`
//! csvlog, `*.json` jsonlog, other files stderr with `log_line_prefix` P (records framed and
//! keyed by the shipper's own framer and key extractor, as the shipper would send them).
//! Prints one line: `baseline records=N seconds=S records_per_sec=R partitions=P:N,...` (the
//! acknowledged messages per partition: the shipper keys by session, so a workload of few
//! sessions fills few partitions). `--copies N` sends the
//! files' records N times, each copy as another file (file identity `<path>#<k>`), which is
//! how the processing bench preloads a topic with a million distinct records of real logs.
//! `--partitions P` creates the topic with P partitions (default 6, as the shipper does);
//! `--spread` deals the keys (sessions) of every copy over the partitions, largest first, each
//! to the partition holding the fewest records so far, instead of by hash (each session's
//! records of a copy still in one partition, in order): the scaling bench's even load over a
//! few partitions, which hashing a workload of a few dozen sessions does not give.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgtrail_avro::{Encoder, LogFormat, RecordFields, RecordSource};
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};

/// Counts acknowledged messages per partition.
#[derive(Default)]
struct Counting(Mutex<BTreeMap<i32, u64>>);

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                *self
                    .0
                    .lock()
                    .expect("counts")
                    .entry(m.partition())
                    .or_default() += 1
            }
            Err((e, _)) => eprintln!("delivery failed: {e}"),
        }
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut copies = 1;
    let mut prefix = String::new();
    let mut partitions = 6;
    let mut spread = false;
    while args.len() > 1 && args[0].starts_with("--") {
        if args[0] == "--spread" {
            spread = true;
            args.remove(0);
            continue;
        }
        match args[0].as_str() {
            "--copies" => copies = args[1].parse::<usize>().expect("--copies N"),
            "--prefix" => prefix = args[1].clone(),
            "--partitions" => partitions = args[1].parse::<i32>().expect("--partitions P"),
            other => panic!("unknown flag {other}"),
        }
        args.drain(..2);
    }
    let [brokers, topic, files @ ..] = args.as_slice() else {
        eprintln!(
            "usage: pgtrail-baseline-producer [--copies N] [--prefix P] [--partitions P] [--spread] BROKERS TOPIC FILE..."
        );
        std::process::exit(2);
    };
    let encoder = Encoder::single_object();
    let mut messages: Vec<(Vec<u8>, Vec<u8>, Option<i32>)> = Vec::new();
    for (copy, path) in (0..copies).flat_map(|c| files.iter().map(move |f| (c, f))) {
        let bytes = std::fs::read(path).expect("read file");
        let format = match std::path::Path::new(path)
            .extension()
            .and_then(|e| e.to_str())
        {
            Some("csv") => LogFormat::Csvlog,
            Some("json") => LogFormat::Jsonlog,
            _ => LogFormat::Stderr,
        };
        let source = pgtrail_avro::record::encode_source(&RecordSource {
            server: "baseline".into(),
            host: "bench".into(),
            shipper_version: "baseline".into(),
            format,
            source_path: path.as_str().into(),
            file_id: if copies == 1 {
                path.as_str().into()
            } else {
                format!("{path}#{copy}").into()
            },
            log_line_prefix: (format == LogFormat::Stderr).then(|| prefix.as_str().into()),
            log_timezone: None,
            kind: pgtrail_avro::RecordKind::Log,
        });
        let keys = shipper::key::KeyExtractor::new(format, &prefix);
        // The shipper's own record limit, and its key for records without a session: the file.
        let limit = shipper::Config::default().max_record_bytes;
        let mut framer = shipper::framer::Framer::new(format, limit, 0);
        let file_key = if copies == 1 {
            path.clone()
        } else {
            format!("{path}#{copy}")
        };
        let mut emit = |f: shipper::framer::Frame<'_>| {
            let mut key = keys.key(f.data).unwrap_or(file_key.as_bytes()).to_vec();
            if spread {
                key.splice(0..0, format!("{copy}:").into_bytes());
            }
            let payload = encoder.encode(
                &source,
                RecordFields {
                    offset: f.offset as i64,
                    data: f.data,
                    read_at_micros: 0,
                    original_length: f.truncated.then_some(f.len as i64),
                },
            );
            messages.push((key, payload, None));
        };
        framer.feed(&bytes, &mut emit);
        framer.flush(&mut emit);
    }
    // Exactly the shipper's producer settings, from the shipper's own code.
    let cfg = shipper::Config {
        server: "baseline".into(),
        brokers: brokers.clone(),
        topic: Some(topic.clone()),
        ..shipper::Config::default()
    };
    let producer: ThreadedProducer<Counting> =
        shipper::kafka::producer_config(&shipper::kafka::SinkSettings::from_config(&cfg))
            .expect("producer settings")
            .create_with_context(Counting::default())
            .expect("producer");
    // Same topic layout as the shipper creates by default.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let created = rt.block_on(admin.create_topics(
        [&NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(1),
        )],
        // librdkafka's mock cluster does not answer CreateTopics: do not wait a minute for it.
        &AdminOptions::new().request_timeout(Some(Duration::from_secs(5))),
    ));
    if let Err(e) = created {
        eprintln!("create topic: {e}");
    }
    if spread {
        deal(&mut messages, partitions);
    }
    let started = Instant::now();
    for (key, payload, partition) in &messages {
        let mut record = BaseRecord::to(topic).key(key).payload(payload);
        if let Some(p) = partition {
            record = record.partition(*p);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(600)).expect("flush");
    let secs = started.elapsed().as_secs_f64();
    let partitions = producer.context().0.lock().expect("counts").clone();
    let spread: Vec<String> = partitions.iter().map(|(p, n)| format!("{p}:{n}")).collect();
    println!(
        "baseline records={} seconds={secs:.3} records_per_sec={:.0} partitions={}",
        messages.len(),
        messages.len() as f64 / secs,
        spread.join(",")
    );
}

/// Sets each message's partition: keys dealt largest first, each to the partition with the
/// fewest records so far.
fn deal(messages: &mut [(Vec<u8>, Vec<u8>, Option<i32>)], partitions: i32) {
    let mut sizes: std::collections::HashMap<Vec<u8>, usize> = Default::default();
    for (key, _, _) in messages.iter() {
        *sizes.entry(key.clone()).or_default() += 1;
    }
    let mut keys: Vec<(Vec<u8>, usize)> = sizes.into_iter().collect();
    keys.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut load = vec![0usize; partitions.max(1) as usize];
    let mut to: std::collections::HashMap<Vec<u8>, i32> = Default::default();
    for (key, n) in keys {
        let (p, _) = load
            .iter()
            .enumerate()
            .min_by_key(|(_, l)| **l)
            .expect("a partition");
        load[p] += n;
        to.insert(key, p as i32);
    }
    for (key, _, partition) in messages.iter_mut() {
        *partition = to.get(key).copied();
    }
}
