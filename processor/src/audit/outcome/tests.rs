//! Tests of [`OutcomeTracker`]: examples, and random sessions against a simple model of
//! pgaudit_analyze's rules.

use super::*;
use pgtrail_avro::LogFormat;

fn rec(
    t: i64,
    vxid: &str,
    severity: &str,
    message: &str,
    query: Option<&str>,
    state: &str,
) -> LogRecord<'static> {
    LogRecord {
        log_time: DateTime::from_timestamp(t, 0),
        session_id: Some("s1".into()),
        process_id: Some(1),
        vxid: Some(vxid.to_owned().into()),
        severity: severity.to_owned().into(),
        message: message.to_owned().into(),
        query: query.map(|q| q.to_owned().into()),
        sql_state: Some(state.to_owned().into()),
        ..LogRecord::default()
    }
}

fn src(offset: i64) -> Source {
    Source {
        server: "p".into(),
        host: "h".into(),
        format: LogFormat::Csvlog,
        path: "/l".into(),
        file_id: "f".into(),
        offset,
        origin: offset,
    }
}

#[test]
fn error_in_the_same_transaction_fails_every_held_statement() {
    let mut t = OutcomeTracker::new(std::time::Duration::from_secs(60));
    let mut out = Vec::new();
    t.push(
        &rec(
            1,
            "4/1",
            "LOG",
            "AUDIT: SESSION,1,1,MISC,BEGIN,,,BEGIN;,<none>",
            None,
            "00000",
        ),
        &src(0),
        "",
        &mut out,
    );
    t.push(
        &rec(
            1,
            "4/1",
            "LOG",
            "AUDIT: SESSION,2,1,WRITE,UPDATE,,,\"UPDATE a SET b = b / 0\",<none>",
            None,
            "00000",
        ),
        &src(1),
        "",
        &mut out,
    );
    assert_eq!(t.held(), 2);
    let d = t.push(
        &rec(
            1,
            "4/1",
            "ERROR",
            "division by zero",
            Some("UPDATE a SET b = b / 0;"),
            "22012",
        ),
        &src(2),
        "",
        &mut out,
    );
    assert_eq!(
        d,
        Disposition::Skipped,
        "the failing statement was audited: no extra row"
    );
    assert_eq!(out.len(), 2);
    assert!(
        out.iter()
            .all(|r| r.result == Outcome::Failure && r.error_code() == Some("22012"))
    );
    // A later statement in another transaction succeeds when the session moves on.
    t.push(
        &rec(
            2,
            "4/2",
            "LOG",
            "AUDIT: SESSION,3,1,READ,SELECT,,,SELECT 1,<none>",
            None,
            "00000",
        ),
        &src(3),
        "",
        &mut out,
    );
    t.push(
        &rec(
            2,
            "4/3",
            "LOG",
            "AUDIT: SESSION,4,1,READ,SELECT,,,<previously logged>,<none>",
            None,
            "00000",
        ),
        &src(4),
        "",
        &mut out,
    );
    assert_eq!(out[2].result, Outcome::Success);
    let mut rest = Vec::new();
    t.finish(&mut rest);
    assert_eq!(
        rest[0].statement(),
        None,
        "statement 4 was never logged with text"
    );
}

#[test]
fn unaudited_failures_late_outcomes_and_the_window() {
    let mut t = OutcomeTracker::new(std::time::Duration::from_secs(5));
    let mut out = Vec::new();
    let d = t.push(
        &rec(
            1,
            "4/9",
            "ERROR",
            "syntax error at or near \"SELEC\"",
            Some("SELEC broken syntax;"),
            "42601",
        ),
        &src(0),
        "",
        &mut out,
    );
    assert_eq!(d, Disposition::UnauditedFailure);
    assert_eq!(
        (
            &*out[0].audit_class,
            out[0].extra_get("audit_logged").as_deref()
        ),
        ("UNKNOWN", Some("false"))
    );
    out.clear();
    t.push(
        &rec(
            10,
            "4/10",
            "LOG",
            "AUDIT: SESSION,5,1,READ,SELECT,,,SELECT pg_sleep(10),<none>",
            None,
            "00000",
        ),
        &src(1),
        "",
        &mut out,
    );
    // Another session's records advance log time past the window: released as SUCCESS.
    let mut other = rec(16, "5/1", "LOG", "connection received", None, "00000");
    other.session_id = Some("s2".into());
    t.push(&other, &src(2), "", &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].result, Outcome::Success);
    let d = t.push(
        &rec(
            17,
            "4/10",
            "ERROR",
            "canceling statement",
            Some("SELECT pg_sleep(10)"),
            "57014",
        ),
        &src(3),
        "",
        &mut out,
    );
    assert_eq!(d, Disposition::LateOutcome);
    assert_eq!(out.len(), 1, "a late error adds no row");
    let d = t.push(
        &rec(17, "4/11", "LOG", "AUDIT: SESSION,x", None, "00000"),
        &src(4),
        "",
        &mut out,
    );
    assert!(matches!(d, Disposition::Poison(_)));
}

/// Item 7 of issue 17: stderr logs without `%v` (PostgreSQL's default prefix `%m [%p] `). A
/// failed audited statement was a SUCCESS row plus an unaudited FAILURE row.
#[test]
fn without_vxids_a_failed_statement_is_one_failure_row() {
    let mut t = OutcomeTracker::new(std::time::Duration::from_secs(60));
    let mut out = Vec::new();
    let no_vxid = |mut r: LogRecord<'static>| {
        r.vxid = None;
        r
    };
    let audit = |id: i64, text: &str| {
        format!("AUDIT: SESSION,{id},1,WRITE,UPDATE,TABLE,public.a,\"{text}\",<none>")
    };
    t.push(
        &no_vxid(rec(
            1,
            "",
            "LOG",
            &audit(1, "UPDATE a SET b = 1"),
            None,
            "00000",
        )),
        &src(0),
        "",
        &mut out,
    );
    t.push(
        &no_vxid(rec(
            1,
            "",
            "LOG",
            &audit(2, "UPDATE a SET b = b / 0"),
            None,
            "00000",
        )),
        &src(1),
        "",
        &mut out,
    );
    assert_eq!(out.len(), 1, "the next statement decides the first");
    assert_eq!(out[0].result, Outcome::Success);
    let d = t.push(
        &no_vxid(rec(
            1,
            "",
            "ERROR",
            "division by zero",
            Some("UPDATE a SET b = b / 0"),
            "22012",
        )),
        &src(2),
        "",
        &mut out,
    );
    assert_eq!(d, Disposition::Skipped, "the failing statement was audited");
    assert_eq!(out.len(), 2);
    assert_eq!(
        (out[1].result, out[1].error_code()),
        (Outcome::Failure, Some("22012"))
    );
    // An error naming another statement: the held one succeeded, the error is its own row.
    t.push(
        &no_vxid(rec(2, "", "LOG", &audit(3, "SELECT 1"), None, "00000")),
        &src(3),
        "",
        &mut out,
    );
    let d = t.push(
        &no_vxid(rec(
            2,
            "",
            "ERROR",
            "syntax error",
            Some("SELEC 2"),
            "42601",
        )),
        &src(4),
        "",
        &mut out,
    );
    assert_eq!(d, Disposition::UnauditedFailure);
    let results: Vec<(Outcome, bool)> = out[2..]
        .iter()
        .map(|r| (r.result, r.extra_contains("audit_logged")))
        .collect();
    assert_eq!(
        results,
        [(Outcome::Success, false), (Outcome::Failure, true)]
    );
}

mod model {
    //! Random sessions against a model of the rules: every audit entry is released exactly
    //! once, FAILURE exactly when an error ended its transaction (with vxids) or its statement
    //! (without), and every failed statement pgaudit did not log is one FAILURE row of its own.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::{rec, src};
    use crate::audit::Outcome;
    use crate::audit::outcome::OutcomeTracker;
    use crate::parse::LogRecord;

    /// One statement of a transaction: audit entries logged (0: pgaudit did not log it).
    #[derive(Debug, Clone)]
    struct Statement {
        entries: u8,
    }

    /// A transaction: statements, and whether its last one fails (ending it).
    #[derive(Debug, Clone)]
    struct Transaction {
        statements: Vec<Statement>,
        fails: bool,
    }

    fn transaction() -> impl Strategy<Value = Transaction> {
        (
            prop::collection::vec((0u8..4).prop_map(|entries| Statement { entries }), 1..4),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(statements, fails)| Transaction { statements, fails })
    }

    /// What a record is expected to yield.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Expect {
        /// An audit entry's row with this result.
        Entry(Outcome),
        /// An error that is a failed statement pgaudit did not log: a FAILURE row.
        Unaudited,
        /// No row.
        Nothing,
    }

    /// The records of session `s` (in order) with what each is expected to yield.
    fn script(s: usize, txs: &[Transaction], vxids: bool) -> Vec<(LogRecord<'static>, Expect)> {
        let mut out = Vec::new();
        let mut id = 0;
        for (n, tx) in txs.iter().enumerate() {
            let vxid = format!("{s}/{n}");
            for (k, st) in tx.statements.iter().enumerate() {
                id += 1;
                let text = format!("UPDATE t{s} SET n = {id}");
                let last = k + 1 == tx.statements.len();
                let failed = last && tx.fails;
                // With vxids the whole transaction fails; without, the statement.
                let tx_failed = tx.fails && (vxids || last);
                for sub in 1..=st.entries {
                    let statement = if sub == 1 {
                        format!("\"{text}\"")
                    } else {
                        "<previously logged>".into()
                    };
                    let message = format!(
                        "AUDIT: SESSION,{id},{sub},WRITE,UPDATE,TABLE,public.t,{statement},<none>"
                    );
                    let result = if tx_failed {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    };
                    out.push((
                        rec(0, &vxid, "LOG", &message, None, "00000"),
                        Expect::Entry(result),
                    ));
                }
                if failed {
                    let expect = if st.entries == 0 {
                        Expect::Unaudited
                    } else {
                        Expect::Nothing
                    };
                    out.push((
                        rec(0, &vxid, "ERROR", "division by zero", Some(&text), "22012"),
                        expect,
                    ));
                }
            }
        }
        let end = format!("{s}/end");
        out.push((
            rec(
                0,
                &end,
                "LOG",
                "disconnection: session time: 0:00:01.000",
                None,
                "00000",
            ),
            Expect::Nothing,
        ));
        for (r, _) in &mut out {
            r.session_id = Some(format!("session-{s}").into());
            r.process_id = Some(1000 + s as i64);
            if !vxids {
                r.vxid = None;
            }
        }
        out
    }

    proptest! {
        #[test]
        fn random_sessions_follow_the_model(
            sessions in prop::collection::vec(prop::collection::vec(transaction(), 1..5), 1..5),
            order in prop::collection::vec(0usize..5, 0..200),
            vxids in any::<bool>(),
        ) {
            let mut scripts: Vec<std::vec::IntoIter<(LogRecord<'static>, Expect)>> = sessions
                .iter()
                .enumerate()
                .map(|(s, txs)| script(s, txs, vxids).into_iter())
                .collect();
            // Interleave the sessions as `order` says, then the rest in turn.
            let mut records = Vec::new();
            let picks = order.into_iter().chain((0..).take(10_000));
            for pick in picks {
                if scripts.iter().all(|s| s.len() == 0) {
                    break;
                }
                let n = scripts.len();
                let s = (0..n).map(|i| (pick + i) % n).find(|i| scripts[*i].len() > 0);
                if let Some(r) = s.and_then(|s| scripts[s].next()) {
                    records.push(r);
                }
            }
            let mut t = OutcomeTracker::new(std::time::Duration::from_secs(3600));
            let mut rows = Vec::new();
            for (i, (mut r, _)) in records.clone().into_iter().enumerate() {
                r.log_time = chrono::DateTime::from_timestamp(1_700_000_000 + i as i64 / 100, 0);
                t.push(&r, &src(i as i64), "", &mut rows);
            }
            t.finish(&mut rows);
            let mut got: BTreeMap<i64, Vec<(Outcome, bool)>> = BTreeMap::new();
            for row in &rows {
                got.entry(row.origin)
                    .or_default()
                    .push((row.result, row.extra_contains("audit_logged")));
            }
            for (i, (_, expect)) in records.iter().enumerate() {
                let rows = got.remove(&(i as i64)).unwrap_or_default();
                let want = match expect {
                    Expect::Entry(result) => vec![(*result, false)],
                    Expect::Unaudited => vec![(Outcome::Failure, true)],
                    Expect::Nothing => vec![],
                };
                prop_assert_eq!(rows, want, "record {} ({:?})", i, expect);
            }
        }
    }
}
