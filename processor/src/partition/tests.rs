//! Unit tests of [`Partition`]: the safe offset, pending records and replays.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtrail_avro::{LogFormat, RawRecordRef, RecordSource};

use super::{Incoming, Outputs, Partition, Servers};
use crate::parse::ServerFormat;
use crate::telemetry::Metrics;

/// Every server parses with one prefix.
pub(crate) struct OnePrefix(pub ServerFormat);

impl Servers for OnePrefix {
    fn format(&mut self, _: &RecordSource) -> Result<&ServerFormat, String> {
        Ok(&self.0)
    }
    fn accepts(&self, _: &str, _: LogFormat) -> bool {
        true
    }
}

/// A record of `file` at byte `offset` holding `text`.
pub(crate) fn record<'a>(
    format: LogFormat,
    file: &str,
    offset: i64,
    text: &'a str,
) -> RawRecordRef<'a> {
    RawRecordRef {
        source: RecordSource {
            server: "primary".into(),
            host: "db1".into(),
            shipper_version: "test".into(),
            format,
            source_path: Arc::from(format!("/log/{file}")),
            file_id: Arc::from(file),
            log_line_prefix: None,
            log_timezone: None,
            kind: pgtrail_avro::RecordKind::Log,
        },
        offset,
        data: std::borrow::Cow::Borrowed(text.as_bytes()),
        read_at_micros: 0,
        truncated: false,
        original_length: None,
    }
}

/// Pushes `records` (one message each, Kafka offsets from `first`, bytes of one file) into `p`.
fn push_records(
    p: &mut Partition,
    servers: &mut OnePrefix,
    format: LogFormat,
    first: i64,
    records: &[impl AsRef<str>],
) -> Outputs {
    let metrics = Metrics::default();
    let mut out = Outputs::default();
    let mut byte = first * 1000;
    for (i, text) in records.iter().map(AsRef::as_ref).enumerate() {
        let offset = first + i as i64;
        let rec = record(format, "f.log", byte, text);
        byte += text.len() as i64;
        let msg = Incoming {
            offset,
            key: None,
            payload: text.as_bytes(),
            at: Instant::now(),
        };
        p.push(msg, Ok(rec), servers, &metrics, &mut out);
    }
    out
}

/// Pushes `lines` (one stderr record each, Kafka offsets from `first`) into `p`.
fn push_stderr(p: &mut Partition, servers: &mut OnePrefix, first: i64, lines: &[&str]) -> Outputs {
    push_records(p, servers, LogFormat::Stderr, first, lines)
}

const ERROR_WITH_STATEMENT: [&str; 5] = [
    "2026-11-23 09:10:51.000 UTC [7] 3/1 00000 LOG:  AUDIT: SESSION,1,1,WRITE,INSERT,,,\"INSERT INTO t VALUES (1)\",<none>\n",
    "2026-11-23 09:10:51.001 UTC [7] 3/1 23505 ERROR:  duplicate key value violates unique constraint \"t_pkey\"\n",
    "2026-11-23 09:10:51.001 UTC [7] 3/1 23505 DETAIL:  Key (id)=(1) already exists.\n",
    "2026-11-23 09:10:51.001 UTC [7] 3/1 23505 STATEMENT:  INSERT INTO t VALUES (1)\n",
    "2026-11-23 09:10:55.000 UTC [8] 4/1 00000 LOG:  connection received: host=[local]\n",
];

/// Item 1 of issue 17: DETAIL and STATEMENT lines attached to an open ERROR record were left
/// pending forever, so the safe offset (the `txn` version) never moved past them.
#[test]
fn attached_continuation_lines_do_not_pin_the_safe_offset() {
    let mut servers = OnePrefix(ServerFormat::new("%m [%p] %v %e ", None).expect("prefix"));
    let mut p = Partition::new(
        crate::topic_partition::TopicPartition::new("t", 0),
        None,
        None,
        Duration::from_secs(60),
    );
    let out = push_stderr(&mut p, &mut servers, 0, &ERROR_WITH_STATEMENT);
    // The last record (offset 4) is open until its process writes again: everything before
    // it is handled, the audited INSERT failed.
    assert_eq!(p.safe_offset(), Some(3));
    assert_eq!(out.rows.len(), 1);
    assert_eq!(out.rows[0].0.result, crate::audit::Outcome::Failure);
    assert_eq!(out.rows[0].0.error_code(), Some("23505"));
    let mut out = Outputs::default();
    p.finish(&Metrics::default(), &mut out);
    assert_eq!(p.safe_offset(), Some(4), "nothing pending after the end");
    let cp = p.checkpoint().expect("checkpoint");
    assert_eq!((cp.version, cp.last, cp.pending), (4, 4, vec![]));
}

/// A continuation line without an open record of its process is a record of its own: not
/// pending once handled.
#[test]
fn orphan_continuation_lines_are_not_pending() {
    let mut servers = OnePrefix(ServerFormat::new("%m [%p] %v %e ", None).expect("prefix"));
    let mut p = Partition::new(
        crate::topic_partition::TopicPartition::new("t", 0),
        None,
        None,
        Duration::from_secs(60),
    );
    push_stderr(
        &mut p,
        &mut servers,
        0,
        &[
            "2026-11-23 09:10:51.001 UTC [9] 3/1 00000 DETAIL:  a detail without its record\n",
            "2026-11-23 09:10:51.002 UTC [9] 3/1 00000 HINT:  and a hint\n",
        ],
    );
    assert_eq!(p.safe_offset(), Some(1));
}

/// A csvlog record of process `pid` (session `6b04031f.<pid>`).
fn csv(ts: &str, pid: u32, vxid: &str, severity: &str, message: &str, query: &str) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let query = if query.is_empty() {
        String::new()
    } else {
        q(query)
    };
    format!(
        "2026-11-23 09:{ts} UTC,\"postgres\",\"postgres\",{pid},\"[local]\",6b04031f.{pid:x},1,\"UPDATE\",2026-11-23 09:00:00 UTC,{vxid},0,{severity},{},{},,,,,,{query},,,\"psql\",\"client backend\",,0\n",
        if severity == "LOG" { "00000" } else { "25P02" },
        q(message),
    )
}

/// Pushes csvlog `records` (Kafka offsets from `first`) into `p`.
fn push_csv(p: &mut Partition, servers: &mut OnePrefix, first: i64, records: &[String]) -> Outputs {
    push_records(p, servers, LogFormat::Csvlog, first, records)
}

/// Review of issue 17: the sessions' released transactions were not part of the checkpoint,
/// so an error arriving after a restart for a transaction released before it (its statement
/// outlived the outcome window; or a second error in a transaction an error already decided,
/// `25P02`) became an extra unaudited FAILURE row instead of a late outcome.
#[test]
fn a_late_outcome_stays_late_across_a_restart() {
    let window = Duration::from_secs(5);
    let records = [
        // Process 7: an audited UPDATE, released SUCCESS when process 8 logs 10 s later.
        csv(
            "10:50.000",
            7,
            "3/1",
            "LOG",
            "AUDIT: SESSION,1,1,WRITE,UPDATE,,,\"UPDATE t SET n = 1\",<none>",
            "",
        ),
        csv(
            "11:00.000",
            8,
            "4/1",
            "LOG",
            "connection authorized: user=postgres",
            "",
        ),
        // Process 9: an audited INSERT that fails, decided FAILURE by its error.
        csv(
            "11:01.000",
            9,
            "5/1",
            "LOG",
            "AUDIT: SESSION,1,1,WRITE,INSERT,,,\"INSERT INTO t VALUES (1)\",<none>",
            "",
        ),
        csv(
            "11:01.001",
            9,
            "5/1",
            "ERROR",
            "division by zero",
            "INSERT INTO t VALUES (1)",
        ),
        csv(
            "11:01.500",
            8,
            "4/1",
            "LOG",
            "checkpoint starting: time",
            "",
        ),
        // After the restart: the UPDATE's late failure, and the next statement of the
        // aborted transaction refused.
        csv(
            "11:02.000",
            7,
            "3/1",
            "ERROR",
            "canceling statement due to statement timeout",
            "UPDATE t SET n = 1",
        ),
        csv(
            "11:02.001",
            9,
            "5/1",
            "ERROR",
            "current transaction is aborted",
            "SELECT 1",
        ),
        csv("11:09.000", 8, "4/1", "LOG", "checkpoint complete", ""),
    ];
    let prefix = || OnePrefix(ServerFormat::new("%m [%p] ", None).expect("prefix"));
    let tp = || crate::topic_partition::TopicPartition::new("t", 0);
    let metrics = Metrics::default();
    let rows = |out: &Outputs| -> Vec<(i64, String)> {
        out.rows
            .iter()
            .map(|(r, o)| (*o, r.result.as_str().to_owned()))
            .collect()
    };

    let mut undisturbed = Partition::new(tp(), None, None, window);
    let mut out = push_csv(&mut undisturbed, &mut prefix(), 0, &records);
    undisturbed.finish(&metrics, &mut out);
    let expected = rows(&out);
    assert_eq!(
        expected,
        [(0, "SUCCESS".to_owned()), (2, "FAILURE".to_owned())],
        "late outcomes are counted, never rows"
    );

    let mut first = Partition::new(tp(), None, None, window);
    let mut servers = prefix();
    let before = push_csv(&mut first, &mut servers, 0, &records[..5]);
    let cp = first.checkpoint().expect("checkpoint");
    assert_eq!((cp.version, cp.last), (4, 4), "nothing pending");
    let json = serde_json::to_string(&cp).expect("json");
    let cp: super::PartitionCheckpoint = serde_json::from_str(&json).expect("back");
    let mut resumed = Partition::new(tp(), Some(cp.version), Some(cp), window);
    let mut after = push_csv(&mut resumed, &mut servers, 5, &records[5..]);
    resumed.finish(&metrics, &mut after);
    let mut got = rows(&before);
    got.extend(rows(&after));
    assert_eq!(got, expected, "a restart changes no row");
}

/// Review of issue 17: the safe offset must follow a session that runs statement after
/// statement (each releases the one before), not wait for a moment with nothing held; a first
/// version of the late-outcome fix kept it at the last quiet moment.
#[test]
fn the_safe_offset_follows_a_steady_stream_of_statements() {
    let records: Vec<String> = (1..=50)
        .map(|n| {
            csv(
                &format!("10:{:02}.000", n % 60),
                7,
                &format!("3/{n}"),
                "LOG",
                &format!("AUDIT: SESSION,{n},1,WRITE,UPDATE,,,\"UPDATE t SET n = {n}\",<none>"),
                "",
            )
        })
        .collect();
    let mut servers = OnePrefix(ServerFormat::new("%m [%p] ", None).expect("prefix"));
    let mut p = Partition::new(
        crate::topic_partition::TopicPartition::new("t", 0),
        None,
        None,
        Duration::from_secs(60),
    );
    let out = push_csv(&mut p, &mut servers, 0, &records);
    assert_eq!(out.rows.len(), 49, "each statement released by the next");
    assert_eq!(p.safe_offset(), Some(48), "only the last one is held");
    let cp = p.checkpoint().expect("checkpoint");
    assert_eq!((cp.version, cp.released.len()), (48, 1));
}

/// A shipper heartbeat is no row and no dead letter; the checkpoint records the newest one
/// once its offset is covered (not while an earlier record is pending), and a resume keeps it.
#[test]
fn heartbeats_make_no_rows_and_are_recorded_once_covered() {
    let mut servers = OnePrefix(ServerFormat::new("%m [%p] %v %e ", None).expect("prefix"));
    let tp = crate::topic_partition::TopicPartition::new("t", 0);
    let mut p = Partition::new(tp.clone(), None, None, Duration::from_secs(60));
    // Offsets 0..=3: an ERROR record (open: it waits for its continuation lines) at 0..=3,
    // then the heartbeat at 5 after a record of another process at 4.
    let out = push_stderr(&mut p, &mut servers, 0, &ERROR_WITH_STATEMENT);
    let metrics = Metrics::default();
    let mut beat = record(LogFormat::Csvlog, "", 0, "");
    beat.source.kind = pgtrail_avro::RecordKind::Heartbeat;
    beat.read_at_micros = 1_800_000_000_000_000;
    let mut hb_out = Outputs::default();
    let idle = p.idle_for();
    std::thread::sleep(Duration::from_millis(20));
    let msg = Incoming {
        offset: 5,
        key: None,
        payload: b"hb",
        at: Instant::now(),
    };
    p.push(msg, Ok(beat), &mut servers, &metrics, &mut hb_out);
    assert!(hb_out.rows.is_empty() && hb_out.dead.is_empty());
    assert!(
        p.idle_for() >= idle + Duration::from_millis(20),
        "a heartbeat is no activity: idle releases still happen"
    );
    // Record 4 is still open: the safe offset is 3, the heartbeat at 5 is not covered.
    let cp = p.checkpoint().expect("checkpoint");
    assert_eq!((cp.version, cp.heartbeat), (3, None));
    let mut end = Outputs::default();
    p.finish(&metrics, &mut end);
    assert_eq!(
        out.rows.len() + end.rows.len(),
        1,
        "the audited INSERT only"
    );
    let cp = p.checkpoint().expect("checkpoint");
    assert_eq!((cp.version, cp.heartbeat), (5, Some(1_800_000_000_000_000)));
    // A resume from that checkpoint keeps it.
    let mut resumed = Partition::new(tp, Some(5), Some(cp), Duration::from_secs(60));
    resumed.finish(&metrics, &mut Outputs::default());
    assert_eq!(
        resumed.checkpoint().and_then(|c| c.heartbeat),
        Some(1_800_000_000_000_000)
    );
}

/// Issue 20, `replay --into --continue-as`: a replay reads context before its range, stops at
/// the range's last offset and hands its checkpoint to a live group. The records of the range
/// then get exactly the rows of an undisturbed run between the replay and the group resuming
/// from that checkpoint, and the context's records none (a context record still held at the
/// hand-over is not the group's to write).
#[test]
fn a_handover_checkpoint_continues_the_range_as_an_undisturbed_run() {
    let window = Duration::from_secs(60);
    let records = [
        // Context: an audited UPDATE, failed by its error at offset 5, after the hand-over.
        csv(
            "10:50.000",
            7,
            "3/1",
            "LOG",
            "AUDIT: SESSION,1,1,WRITE,UPDATE,,,\"UPDATE t SET n = 1\",<none>",
            "",
        ),
        csv("10:51.000", 8, "4/1", "LOG", "connection authorized", ""),
        // The range, 2..=4: an audited INSERT (held at the hand-over, decided after it)
        // and an UPDATE decided inside the range.
        csv(
            "11:01.000",
            9,
            "5/1",
            "LOG",
            "AUDIT: SESSION,1,1,WRITE,INSERT,,,\"INSERT INTO t VALUES (1)\",<none>",
            "",
        ),
        csv(
            "11:01.100",
            10,
            "6/1",
            "LOG",
            "AUDIT: SESSION,1,1,WRITE,UPDATE,,,\"UPDATE t SET n = 2\",<none>",
            "",
        ),
        csv(
            "11:01.200",
            10,
            "6/1",
            "ERROR",
            "division by zero",
            "UPDATE t SET n = 2",
        ),
        // After the hand-over: the context UPDATE's and the INSERT's errors.
        csv(
            "11:02.000",
            7,
            "3/1",
            "ERROR",
            "canceling statement due to statement timeout",
            "UPDATE t SET n = 1",
        ),
        csv(
            "11:02.001",
            9,
            "5/1",
            "ERROR",
            "duplicate key value",
            "INSERT INTO t VALUES (1)",
        ),
        csv("11:09.000", 8, "4/1", "LOG", "checkpoint complete", ""),
    ];
    let prefix = || OnePrefix(ServerFormat::new("%m [%p] ", None).expect("prefix"));
    let tp = || crate::topic_partition::TopicPartition::new("t", 0);
    let metrics = Metrics::default();
    let rows = |out: &Outputs| -> Vec<(i64, String)> {
        let mut r: Vec<_> = out
            .rows
            .iter()
            .map(|(r, o)| (*o, r.result.as_str().to_owned()))
            .collect();
        r.sort();
        r
    };
    let mut undisturbed = Partition::new(tp(), None, None, window);
    let mut out = push_csv(&mut undisturbed, &mut prefix(), 0, &records);
    undisturbed.finish(&metrics, &mut out);
    let expected: Vec<_> = rows(&out).into_iter().filter(|(o, _)| *o >= 2).collect();
    assert_eq!(
        expected,
        [(2, "FAILURE".to_owned()), (3, "FAILURE".to_owned())]
    );

    let (first, last) = (2, 4);
    let handing = |context: Option<super::PartitionCheckpoint>| {
        let mut replay = Partition::new(tp(), None, context, window);
        let mut servers = prefix();
        let during = push_csv(&mut replay, &mut servers, 0, &records[..=last as usize]);
        let cp = replay.checkpoint().expect("checkpoint");
        let mut live = Partition::new(tp(), Some(cp.version), Some(cp.clone()), window);
        let from = (cp.version + 1) as usize;
        let mut after = push_csv(&mut live, &mut servers, from as i64, &records[from..]);
        live.finish(&metrics, &mut after);
        // The replay keeps the outputs of the range's records only (`replay/read.rs`).
        let mut got: Vec<_> = rows(&during)
            .into_iter()
            .filter(|(o, _)| (first..=last).contains(o))
            .collect();
        got.extend(rows(&after));
        got.sort();
        (cp, got)
    };
    let (cp, got) = handing(Some(super::PartitionCheckpoint::before_range(
        &tp(),
        -1,
        first - 1,
    )));
    assert_eq!(
        (cp.version, cp.last, cp.pending.clone()),
        (-1, 4, vec![2]),
        "the held context record pins the version; only the range's record is pending"
    );
    assert_eq!(
        got, expected,
        "the range's rows, each once; none of the context"
    );
    let (_, unmarked) = handing(None);
    assert!(
        unmarked.iter().any(|(o, _)| *o < first),
        "without the context marked, the group would write a context record: {unmarked:?}"
    );
}
