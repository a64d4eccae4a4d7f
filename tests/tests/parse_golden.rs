//! Golden test of the processor's parsers on real PostgreSQL 15 + pgaudit logs: the csvlog,
//! jsonlog and stderr files of the same run give the same records and the same audit entries
//! (except what a format cannot carry: stderr has no session id for non-session processes and
//! counts `%l` over DETAIL/STATEMENT lines too). Runs on the committed sample and on a fresh
//! run of the generator (primary + replica).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use pgtrail_avro::LogFormat;
use pgtrail_tests::pglogs::{PgLogs, expected_records};
use pgtrail_tests::workspace_root;
use processor::audit::outcome::{Disposition, OutcomeTracker};
use processor::audit::{AuditRow, Outcome, Source};
use processor::parse::pgaudit::{AuditEntry, parse_audit};
use processor::parse::stderr::{LineKind, StderrAssembler};
use processor::parse::{LogRecord, ServerFormat, parse_record};

/// One record parsed, its texts owned (kept beyond the record's bytes).
fn parse_owned(
    format: LogFormat,
    data: &[u8],
    server: &ServerFormat,
) -> Result<(LogRecord<'static>, LineKind), String> {
    let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    parse_record(format, text, None, server).map(|(r, k)| (r.into_owned(), k))
}

fn parse_dir(dir: &Path, server: &ServerFormat) -> BTreeMap<LogFormat, Vec<LogRecord<'static>>> {
    let mut out: BTreeMap<LogFormat, Vec<LogRecord<'static>>> = BTreeMap::new();
    let mut assembler = StderrAssembler::default();
    for r in expected_records(dir) {
        let format = LogFormat::from_path(Path::new(&r.path));
        let (rec, kind) = parse_owned(format, &r.data, server).unwrap_or_else(|e| {
            panic!(
                "{}@{}: {e}: {:?}",
                r.path,
                r.offset,
                String::from_utf8_lossy(&r.data)
            )
        });
        let done = if format == LogFormat::Stderr {
            assembler.push(rec, kind, ()).into_completed()
        } else {
            Some((rec, ()))
        };
        out.entry(format)
            .or_default()
            .extend(done.into_iter().map(|(r, ())| r));
    }
    out.entry(LogFormat::Stderr)
        .or_default()
        .extend(assembler.finish().into_iter().map(|(r, ())| r));
    out
}

fn audits(records: &[LogRecord<'static>]) -> Vec<(Option<String>, AuditEntry<'static>)> {
    let mut v: Vec<_> = records
        .iter()
        .filter_map(|r| {
            parse_audit(&r.message).map(|a| {
                (
                    r.session_id.as_deref().map(str::to_owned),
                    a.unwrap().into_owned(),
                )
            })
        })
        .collect();
    v.sort_by_key(|(s, a)| format!("{s:?}{a:?}"));
    v
}

fn check(dir: &Path, prefix: &str, name: &str) -> Vec<(Option<String>, AuditEntry<'static>)> {
    let server = ServerFormat::new(prefix, None).unwrap();
    let parsed = parse_dir(dir, &server);
    let (csv, json, stderr) = (
        &parsed[&LogFormat::Csvlog],
        &parsed[&LogFormat::Jsonlog],
        &parsed[&LogFormat::Stderr],
    );
    assert!(csv.len() > 50, "{name}: {} csv records", csv.len());
    assert_eq!(
        csv.len(),
        json.len(),
        "{name}: csvlog and jsonlog record counts"
    );
    // Concurrent backends may reach the two destinations in different orders: compare sorted.
    let sorted = |v: &[LogRecord<'static>]| {
        let mut v = v.to_vec();
        v.sort_by_key(|r| {
            (
                r.session_id.clone(),
                r.session_line_num,
                r.process_id,
                r.log_time,
                r.message.clone(),
            )
        });
        v
    };
    for (c, j) in sorted(csv).iter().zip(&sorted(json)) {
        assert_eq!(c, j, "{name}: csvlog and jsonlog disagree");
    }
    assert_eq!(
        stderr.len(),
        csv.len(),
        "{name}: stderr records after attaching DETAIL/STATEMENT lines"
    );
    // Same time, process and message can repeat (one process, one millisecond): match in order.
    let mut by_key: BTreeMap<_, std::collections::VecDeque<&LogRecord<'static>>> = BTreeMap::new();
    for s in stderr {
        by_key
            .entry((s.log_time, s.process_id, s.message.clone()))
            .or_default()
            .push_back(s);
    }
    for c in csv {
        let s = by_key
            .get_mut(&(c.log_time, c.process_id, c.message.clone()))
            .and_then(|q| q.pop_front())
            .unwrap_or_else(|| panic!("{name}: no stderr record for {c:?}"));
        if s.session_id.is_some() {
            assert_eq!(
                (
                    &s.session_id,
                    &s.user_name,
                    &s.database_name,
                    &s.vxid,
                    &s.txid,
                    &s.sql_state,
                    &s.application_name,
                    &s.remote_host
                ),
                (
                    &c.session_id,
                    &c.user_name,
                    &c.database_name,
                    &c.vxid,
                    &c.txid,
                    &c.sql_state,
                    &c.application_name,
                    &c.remote_host
                ),
                "{name}: prefix fields of {c:?}"
            );
        }
        assert_eq!(
            (
                &s.severity,
                &s.detail,
                &s.hint,
                &s.context,
                &s.query,
                s.query_pos,
                &s.internal_query,
                s.internal_query_pos
            ),
            (
                &c.severity,
                &c.detail,
                &c.hint,
                &c.context,
                &c.query,
                c.query_pos,
                &c.internal_query,
                c.internal_query_pos
            ),
            "{name}: {c:?}"
        );
    }
    let (a_csv, a_json, a_stderr) = (audits(csv), audits(json), audits(stderr));
    assert_eq!(a_csv, a_json, "{name}: audit entries csvlog vs jsonlog");
    assert_eq!(a_csv, a_stderr, "{name}: audit entries csvlog vs stderr");
    println!(
        "{name}: {} records, {} audit entries, identical in all three formats",
        csv.len(),
        a_csv.len()
    );
    a_csv
}

#[test]
fn committed_sample_is_identical_across_formats() {
    let root = workspace_root().join("tests/fixtures/sample");
    let prefix = std::fs::read_to_string(root.join("log_line_prefix")).unwrap();
    let primary = check(
        &root.join("primary"),
        prefix.trim_end_matches('\n'),
        "sample primary",
    );
    let replica = check(
        &root.join("replica"),
        prefix.trim_end_matches('\n'),
        "sample replica",
    );
    let mut classes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, a) in primary.iter().chain(&replica) {
        *classes
            .entry(format!("{} {} {}", a.audit_type, a.class, a.command))
            .or_default() += 1;
    }
    for class in [
        "READ", "WRITE", "DDL", "ROLE", "FUNCTION", "MISC", "MISC_SET",
    ] {
        assert!(
            classes.keys().any(|k| k.split(' ').nth(1) == Some(class)),
            "class {class} in {classes:?}"
        );
    }
    assert!(
        classes.keys().any(|k| k.starts_with("OBJECT ")),
        "OBJECT entries (pgaudit.role)"
    );
    assert!(
        replica.iter().any(|(_, a)| a.rows.is_some()),
        "replica logs rows (10-field entries)"
    );
    assert!(
        primary.iter().all(|(_, a)| a.rows.is_none()),
        "primary logs 9-field entries"
    );
    // Everything but pgbench's repetitive statements, as parsed: reviewed snapshot.
    let interesting: Vec<_> = primary
        .iter()
        .filter(|(_, a)| {
            !a.object_name
                .as_deref()
                .unwrap_or("")
                .starts_with("public.pgbench")
        })
        .map(|(_, a)| a)
        .collect();
    insta::assert_json_snapshot!("sample_primary_audit_entries", interesting);
    insta::assert_json_snapshot!("sample_audit_class_counts", classes);
}

#[test]
fn fresh_primary_and_replica_are_identical_across_formats() {
    let logs = PgLogs::generate(50);
    let prefix = logs.log_line_prefix();
    for server in ["primary", "replica"] {
        let entries = check(&logs.server_dir(server), &prefix, server);
        assert!(!entries.is_empty());
    }
}

/// Audit rows of one format of a server's log directory, through the outcome tracker.
fn audit_rows(dir: &Path, format: LogFormat, server: &ServerFormat) -> Vec<AuditRow> {
    let mut tracker = OutcomeTracker::new(std::time::Duration::from_secs(300));
    let mut assembler = StderrAssembler::default();
    let mut rows = Vec::new();
    let records: Vec<_> = expected_records(dir)
        .into_iter()
        .filter(|r| LogFormat::from_path(Path::new(&r.path)) == format)
        .collect();
    let mut feed = |rec: LogRecord<'static>,
                    r: &pgtrail_tests::pglogs::ExpectedRecord,
                    rows: &mut Vec<AuditRow>| {
        let src = Source {
            server: "golden".into(),
            host: "h".into(),
            format,
            path: r.path.as_str().into(),
            file_id: r.path.as_str().into(),
            offset: r.offset as i64,
            origin: r.offset as i64,
        };
        let raw = String::from_utf8_lossy(&r.data);
        let d = tracker.push(&rec, &src, &raw, rows);
        assert!(!matches!(d, Disposition::Poison(_)), "{d:?}");
    };
    for r in &records {
        let (rec, kind) = parse_owned(format, &r.data, server).unwrap();
        let done = if format == LogFormat::Stderr {
            assembler.push(rec, kind, r).into_completed()
        } else {
            Some((rec, r))
        };
        if let Some((rec, origin)) = done {
            feed(rec, origin, &mut rows);
        }
    }
    // Records still open at the end keep their own coordinates.
    for (rec, origin) in assembler.finish() {
        feed(rec, origin, &mut rows);
    }
    tracker.finish(&mut rows);
    rows
}

#[test]
fn workload_failures_get_failure_and_their_sqlstate_in_every_format() {
    let logs = PgLogs::generate(20);
    let server = ServerFormat::new(&logs.log_line_prefix(), None).unwrap();
    let expect_failed = pgtrail_tests::lake::WORKLOAD_FAILURES;
    let mut by_format: BTreeMap<LogFormat, Vec<String>> = BTreeMap::new();
    for name in ["primary", "replica"] {
        for format in LogFormat::ALL {
            let rows = audit_rows(&logs.server_dir(name), format, &server);
            let ids: std::collections::HashSet<_> = rows.iter().map(|r| r.event_id()).collect();
            assert_eq!(ids.len(), rows.len(), "{name} {format}: event_id unique");
            for (srv, stmt, state, audited) in expect_failed.iter().filter(|e| e.0 == name) {
                let row = rows
                    .iter()
                    .find(|r| r.statement() == Some(*stmt) && r.result == Outcome::Failure)
                    .unwrap_or_else(|| panic!("{srv} {format}: no FAILURE row for {stmt:?}"));
                assert_eq!(row.error_code(), Some(*state), "{srv} {format}: {stmt}");
                assert_eq!(
                    !row.extra_contains("audit_logged"),
                    *audited,
                    "{srv} {format}: {stmt} audited?"
                );
            }
            let ok = rows
                .iter()
                .find(|r| r.statement() == Some("SELECT count(*) FROM account"));
            assert!(
                ok.is_some_and(|r| r.result == Outcome::Success),
                "{name} {format}: a successful read"
            );
            let mut summary: Vec<String> = rows
                .iter()
                .map(|r| {
                    format!(
                        "{:?}|{:?}|{}|{}|{:?}|{:?}|{:?}",
                        r.session_id(),
                        r.statement(),
                        r.audit_class,
                        r.result.as_str(),
                        r.error_code(),
                        r.object_name(),
                        r.extra_get("statement_id")
                    )
                })
                .collect();
            summary.sort();
            if let Some(prev) = by_format
                .get(&LogFormat::Csvlog)
                .filter(|_| format != LogFormat::Csvlog)
            {
                assert_eq!(
                    prev, &summary,
                    "{name}: {format} rows differ from csvlog rows"
                );
            }
            by_format.insert(format, summary);
            println!(
                "{name} {format}: {} rows, {} failures",
                rows.len(),
                rows.iter().filter(|r| r.result == Outcome::Failure).count()
            );
        }
        by_format.clear();
    }
}
