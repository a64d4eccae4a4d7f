//! Unit tests of [`Worker`]'s bookkeeping around revocations and resets (no broker: the
//! clients point at a closed port and are never asked to reach it).

use std::sync::Arc;

use rdkafka::ClientConfig;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::BaseConsumer;

use super::*;

fn worker(rt: &tokio::runtime::Runtime) -> Worker {
    let cfg = Config {
        brokers: "127.0.0.1:1".into(),
        ..Config::default()
    };
    let dlq = DeadLetters::new(&cfg, Default::default()).expect("producer");
    Worker::new(
        Config::default(),
        rt.handle().clone(),
        Metrics::default(),
        Decoder::new(None),
        dlq,
        Arc::new(Failpoints::none()),
    )
}

fn assigned(tp: &TopicPartition) -> Assigned {
    Assigned {
        partition: Partition::new(tp.clone(), None, None, std::time::Duration::from_secs(60)),
        token: Token::default(),
        rows: rows::Rows::new(&tp.topic, tp.partition),
        probe: probe::OffsetProbe::resuming(None, None).0,
        waiting: None,
        waiting_since: None,
        tally: Default::default(),
    }
}

fn waiting_gauge(w: &Worker) -> i64 {
    w.metrics
        .partitions_waiting
        .get_or_create(&wait_label())
        .get()
}

/// Review of issue 17: a commit settled during a revocation can find a partition fenced and
/// queue its reset (a seek). The partition is gone once the revocation ends, and the loop's
/// seek on it failed: the processor exited.
#[test]
fn a_revoked_partition_leaves_no_seek_or_pause_behind() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut w = worker(&rt);
    let gone = TopicPartition::new("pgaudit.raw.a", 0);
    let kept = TopicPartition::new("pgaudit.raw.a", 1);
    for tp in [&gone, &kept] {
        w.parts.insert(tp.clone(), assigned(tp));
        w.seeks.push((tp.clone(), 5));
        w.pauses.push((tp.clone(), true));
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:1")
        .set("group.id", "g")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&gone.topic, gone.partition);
    w.revoke(&tpl, true, &consumer);
    assert_eq!(w.seeks, vec![(kept.clone(), 5)]);
    assert_eq!(w.pauses, vec![(kept, true)]);
}

/// Review of issue 17: a partition waiting for the Schema Registry (paused) that is reset
/// (fenced) or assigned again lost its wait state with its entry: it stayed paused for good
/// and the waiting gauge never came down.
#[test]
fn a_reset_ends_the_wait_for_the_registry() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut w = worker(&rt);
    let tp = TopicPartition::new("pgaudit.raw.a", 0);
    let mut old = assigned(&tp);
    let e = pgtrail_avro::AvroError::Registry {
        operation: "fetch schema 1".into(),
        reason: "connection refused".into(),
        retryable: true,
    };
    old.wait_for_registry(&tp, 7, &e, &w.metrics);
    w.parts.insert(tp.clone(), old);
    assert_eq!(waiting_gauge(&w), 1);
    w.install(tp.clone(), assigned(&tp));
    assert_eq!(waiting_gauge(&w), 0);
    assert_eq!(w.pauses, vec![(tp.clone(), false)], "resumed");
    assert_eq!(w.waiting(), 0);
}

/// Review of issue 17: librdkafka keeps a partition's pause across a revocation and a new
/// assignment. A partition revoked while its table was paused (a commit in flight) came back
/// paused, and nothing resumed it: the new entry has no pause to undo.
#[test]
fn an_assignment_resumes_the_partition_whatever_paused_it_before() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut w = worker(&rt);
    let tp = TopicPartition::new("pgaudit.raw.a", 0);
    w.install(tp.clone(), assigned(&tp));
    assert_eq!(w.pauses, vec![(tp, false)]);
}

/// Review of issue 17: a partition whose wait for the registry ended (resumed to read its
/// message again) and whose table was paused before that message came stayed paused until
/// the next registry retry, 50 minutes on: the table's resumption skipped it as waiting.
#[test]
fn a_table_resumes_a_partition_that_reads_its_message_again() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut w = worker(&rt);
    let tp = TopicPartition::new("pgaudit.raw.a", 0);
    let mut a = assigned(&tp);
    a.waiting = Some(RegistryWait {
        until: None,
        wait: std::time::Duration::from_secs(1),
    });
    w.parts.insert(tp.clone(), a);
    w.pause_table("pgaudit.raw.a");
    w.pauses.clear();
    w.resume_tables();
    assert_eq!(w.pauses, vec![(tp, false)]);
}
