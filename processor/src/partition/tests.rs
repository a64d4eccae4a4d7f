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
        },
        offset,
        data: std::borrow::Cow::Borrowed(text.as_bytes()),
        read_at_micros: 0,
        truncated: false,
        original_length: None,
    }
}

/// Pushes `lines` (one stderr record each, Kafka offsets from `first`) into `p`.
fn push_stderr(p: &mut Partition, servers: &mut OnePrefix, first: i64, lines: &[&str]) -> Outputs {
    let metrics = Metrics::default();
    let mut out = Outputs::default();
    let mut byte = first * 1000;
    for (i, line) in lines.iter().enumerate() {
        let offset = first + i as i64;
        let rec = record(LogFormat::Stderr, "f.log", byte, line);
        byte += line.len() as i64;
        let msg = Incoming {
            offset,
            key: None,
            payload: line.as_bytes(),
            at: Instant::now(),
        };
        p.push(msg, Ok(rec), servers, &metrics, &mut out);
    }
    out
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
