//! Malformed input lands in the dead-letter topic with its reason and Kafka coordinates, and
//! the good records around it land in the table: a truncated CSV record, invalid JSON, a
//! stderr line that does not match the prefix, binary garbage, and an Avro message of an
//! unknown schema, between real pgaudit records of the committed sample.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pgtrail_avro::{Encoder, LogFormat, RawRecord, RecordSource};
use pgtrail_tests::broker::Broker;
use pgtrail_tests::consume::consume_raw;
use pgtrail_tests::lake::{processor_args, read_rows, table_uri};
use pgtrail_tests::pglogs::expected_records;
use pgtrail_tests::process::Processor;
use pgtrail_tests::{tempdir, workspace_root};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn envelope(format: LogFormat, file: &str, offset: i64, data: &[u8]) -> Vec<u8> {
    Encoder::single_object().encode_record(&RawRecord {
        source: RecordSource {
            server: "dlq".into(),
            host: "test".into(),
            shipper_version: "test".into(),
            format,
            source_path: format!("/logs/{file}").into(),
            file_id: file.into(),
            log_line_prefix: None,
            log_timezone: None,
            kind: pgtrail_avro::RecordKind::Log,
        },
        offset,
        data: data.to_vec(),
        read_at_micros: 0,
        truncated: false,
        original_length: None,
    })
}

#[test]
fn malformed_records_go_to_the_dead_letter_topic_with_reasons() {
    let broker = Broker::start();
    let work = tempdir("dlq");
    let sample = workspace_root().join("tests/fixtures/sample/primary");
    let audits: Vec<_> = expected_records(&sample)
        .into_iter()
        .filter(|r| {
            r.path.ends_with(".csv") && String::from_utf8_lossy(&r.data).contains("AUDIT: ")
        })
        .take(3)
        .collect();
    assert_eq!(audits.len(), 3);
    let good = |i: usize| {
        envelope(
            LogFormat::Csvlog,
            "a.csv",
            audits[i].offset as i64,
            &audits[i].data,
        )
    };
    let truncated = &audits[1].data[..audits[1].data.len() / 2];
    let mut wrong_schema = vec![0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8];
    wrong_schema.extend_from_slice(b"\x02xy");
    let messages: Vec<(Vec<u8>, &str)> = vec![
        (good(0), "good"),
        (envelope(LogFormat::Csvlog, "b.csv", 0, truncated), "parse"),
        (
            envelope(
                LogFormat::Jsonlog,
                "c.json",
                0,
                b"{\"timestamp\": \"2026-11-23 10:00:00 UTC\", \n",
            ),
            "parse",
        ),
        (good(1), "good"),
        (
            envelope(
                LogFormat::Stderr,
                "d.log",
                0,
                b"this line has no log_line_prefix\n",
            ),
            "parse",
        ),
        (
            vec![
                0xff, 0xfe, 0x00, 0x13, 0x37, 0x42, 0x99, 0x10, 0x20, 0x30, 0x40, 0x50,
            ],
            "decode",
        ),
        (wrong_schema, "decode"),
        (good(2), "good"),
    ];
    let topic = "pgaudit.raw.dlq";
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .unwrap();
    broker.create_topic(topic, 1);
    for (payload, _) in &messages {
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(topic)
                    .key(b"k".as_slice())
                    .payload(payload),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let lake = work.path().join("lake");
    let mut args = processor_args(&broker.bootstrap(), &lake, "dlq", &[topic]);
    args.extend(["--exit-when-idle".into(), "5s".into()]);
    let log = work.path().join("processor.log");
    let status = Processor::processor(&args, &[], &log).wait(Duration::from_secs(120));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");

    let dead = consume_raw(
        &broker.bootstrap(),
        "pgaudit.deadletter",
        5,
        Duration::from_secs(10),
    );
    let expected: Vec<(String, &str)> = messages
        .iter()
        .enumerate()
        .filter(|(_, (_, k))| *k != "good")
        .map(|(i, (_, k))| (i.to_string(), *k))
        .collect();
    let got: Vec<(String, &str)> = dead
        .iter()
        .map(|d| {
            assert_eq!(d.headers["pgtrail.source.topic"], topic);
            assert_eq!(d.headers["pgtrail.source.partition"], "0");
            assert!(!d.headers["pgtrail.error.reason"].is_empty());
            let offset = d.headers["pgtrail.source.offset"].clone();
            let i: usize = offset.parse().unwrap();
            assert_eq!(
                d.payload, messages[i].0,
                "the value is the original message"
            );
            (offset, d.headers["pgtrail.error.kind"].as_str())
        })
        .map(|(o, k)| (o, if k == "decode" { "decode" } else { "parse" }))
        .collect();
    assert_eq!(got, expected, "dead letters: {dead:#?}");
    for d in &dead {
        eprintln!(
            "{} {}: {}",
            d.headers["pgtrail.source.offset"],
            d.headers["pgtrail.error.kind"],
            d.headers["pgtrail.error.reason"]
        );
    }
    let rows = read_rows(&table_uri(&lake, "dlq"));
    assert_eq!(rows.len(), 3, "the good records around them");
    assert!(rows.iter().all(|r| r.result == "SUCCESS"));
}
