//! Statement outcomes: pgaudit_analyze's model. An audited statement failed when an ERROR,
//! FATAL or PANIC record follows it in the same session and virtual transaction.
//!
//! Owns [`OutcomeTracker`]: it holds each session's audit rows until their outcome is known
//! and releases them when (a) an error decides FAILURE, (b) the session moves to another
//! virtual transaction or disconnects (SUCCESS), or (c) they are older than the outcome window
//! relative to the newest log time seen (SUCCESS). An error that arrives for an already
//! released transaction is a *late outcome*: counted, never turned into a second row. Failed
//! statements pgaudit never logged become FAILURE rows of their own. Invariants: every audit
//! entry pushed is released exactly once; [`OutcomeTracker::held`] says how many are held, so
//! the writer can keep Kafka offsets below the oldest held record. Must not: do I/O.

use std::borrow::Cow;
use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};
use foldhash::HashMap;

use super::{AuditRow, Outcome, Source, audit_row, unaudited_failure_row};
use crate::parse::LogRecord;
use crate::parse::pgaudit::{Statement, normalize_statement, parse_audit};

/// What happened to a pushed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// An audit entry, now held until its outcome is known.
    Held,
    /// A failed statement pgaudit never logged: a FAILURE row was released.
    UnauditedFailure,
    /// An error whose statement(s) were already released (outcome window passed).
    LateOutcome,
    /// A record that is not an audit event (connections, checkpoints, ...).
    Skipped,
    /// An `AUDIT:` message that cannot be parsed: dead-letter it with this reason.
    Poison(String),
}

#[derive(Debug, Default)]
struct Session {
    held: VecDeque<AuditRow>,
    /// The last statement pgaudit logged in full (id, text): `<previously logged>` refers to
    /// the statement being run, never an older one.
    last_statement: Option<(i64, String)>,
    /// xxh3 of the session's last released vxids (integers compare fast; a collision could
    /// at worst count an unaudited failure as a late outcome, at odds of 2^-64).
    released_vxids: VecDeque<u64>,
    /// Newest log time of the session's records.
    last_seen: Option<DateTime<Utc>>,
}

/// Largest buffer a session keeps for its last statement beyond that statement's own size.
const STATEMENT_KEPT: usize = 64 << 10;

impl Session {
    /// Remembers the statement being run, reusing the buffer of the one before (no
    /// allocation per entry; a buffer far larger than the statement is not kept).
    fn remember_statement(&mut self, id: i64, statement: &str) {
        match &mut self.last_statement {
            Some((last_id, text)) if text.capacity() <= STATEMENT_KEPT.max(2 * statement.len()) => {
                *last_id = id;
                text.clear();
                text.push_str(statement);
            }
            last => *last = Some((id, statement.to_owned())),
        }
    }

    fn release_all(&mut self, out: &mut Vec<AuditRow>) {
        while let Some(row) = self.held.pop_front() {
            self.remember(row.vxid());
            out.push(row);
        }
    }

    /// Remembers a released transaction (the last 64 per session). Rows are released in
    /// transaction order, so the newest entry is checked first: the common repeat is O(1).
    fn remember(&mut self, vxid: Option<&str>) {
        let Some(v) = vxid.map(vxid_hash) else {
            return;
        };
        if self.released_vxids.back() == Some(&v) || self.released_vxids.contains(&v) {
            return;
        }
        self.released_vxids.push_back(v);
        if self.released_vxids.len() > 64 {
            self.released_vxids.pop_front();
        }
    }
}

/// Holds audit rows until their outcome is known.
#[derive(Debug)]
pub struct OutcomeTracker {
    window: Duration,
    sessions: HashMap<String, Session>,
    watermark: Option<DateTime<Utc>>,
    /// Second of log time of the last sweep.
    swept_at: Option<i64>,
}

fn vxid_hash(vxid: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(vxid.as_bytes())
}

/// How long a session without held rows is remembered after its last record (log time).
const SESSION_MEMORY: Duration = Duration::hours(1);

fn session_key<'a>(rec: &'a LogRecord<'_>) -> Cow<'a, str> {
    match (&rec.session_id, rec.process_id) {
        (Some(s), _) => Cow::Borrowed(&**s),
        (None, Some(pid)) => Cow::Owned(format!("pid:{pid}")),
        (None, None) => Cow::Borrowed(""),
    }
}

impl OutcomeTracker {
    /// A tracker holding rows at most `window` of log time.
    pub fn new(window: std::time::Duration) -> Self {
        OutcomeTracker {
            window: Duration::from_std(window).unwrap_or(Duration::MAX),
            sessions: HashMap::default(),
            watermark: None,
            swept_at: None,
        }
    }

    /// Rows held now.
    pub fn held(&self) -> usize {
        self.sessions.values().map(|s| s.held.len()).sum()
    }

    /// Adds one parsed record (in per-session order; `raw` is its text as logged); appends
    /// released rows to `out`.
    pub fn push(
        &mut self,
        rec: &LogRecord<'_>,
        src: &Source,
        raw: &str,
        out: &mut Vec<AuditRow>,
    ) -> Disposition {
        if let Some(t) = rec.log_time {
            self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        }
        let key = session_key(rec);
        let session = match self.sessions.get_mut(key.as_ref()) {
            Some(s) => s,
            None => self.sessions.entry(key.clone().into_owned()).or_default(),
        };
        if rec.log_time.is_some() {
            session.last_seen = session.last_seen.max(rec.log_time);
        }
        let tx = rec.vxid.as_deref();
        let same_tx = |row: &AuditRow| row.vxid().is_some() && row.vxid() == tx;
        // Rows of earlier transactions of this session are decided: no error followed them.
        while session.held.front().is_some_and(|r| !same_tx(r)) {
            if let Some(row) = session.held.pop_front() {
                session.remember(row.vxid());
                out.push(row);
            }
        }
        let disposition = match parse_audit(&rec.message) {
            Some(Err(reason)) => Disposition::Poison(reason),
            Some(Ok(entry)) => {
                let statement = match &entry.statement {
                    Statement::Text(s) => {
                        session.remember_statement(entry.statement_id, s);
                        Some(&**s)
                    }
                    Statement::PreviouslyLogged => session
                        .last_statement
                        .as_ref()
                        .filter(|(id, _)| *id == entry.statement_id)
                        .map(|(_, s)| s.as_str()),
                    Statement::NotLogged => None,
                };
                let row = audit_row(rec, &entry, statement, src, raw);
                session.held.push_back(row);
                Disposition::Held
            }
            None if matches!(&*rec.severity, "ERROR" | "FATAL" | "PANIC") => {
                let failing = rec.query.as_deref().map(normalize_statement);
                let mut covered = false;
                for mut row in session.held.drain(..) {
                    covered |= failing.is_some() && row.statement() == failing;
                    row.result = Outcome::Failure;
                    row.set_error_code(rec.sql_state.as_deref());
                    out.push(row);
                }
                let late = rec
                    .vxid
                    .as_deref()
                    .is_some_and(|v| session.released_vxids.contains(&vxid_hash(v)));
                session.remember(rec.vxid.as_deref());
                match (rec.query.is_some(), covered, late) {
                    (_, true, _) => Disposition::Skipped,
                    (_, false, true) => Disposition::LateOutcome,
                    (true, false, false) => {
                        let query = rec.query.as_deref().unwrap_or_default();
                        out.push(unaudited_failure_row(rec, query, src, raw));
                        Disposition::UnauditedFailure
                    }
                    (false, false, false) => Disposition::Skipped,
                }
            }
            None => {
                if rec.message.starts_with("disconnection:") {
                    session.release_all(out);
                    self.sessions.remove(key.as_ref());
                }
                Disposition::Skipped
            }
        };
        // Sweeping every session on every record would cost O(sessions) per record: once
        // per second of log time (aligned, so a replay sweeps at the same points) is enough.
        let second = self.watermark.map(|w| w.timestamp());
        if second != self.swept_at {
            self.swept_at = second;
            self.release_expired(out);
        }
        disposition
    }

    /// Releases rows older than the outcome window (relative to the newest log time seen).
    pub fn release_expired(&mut self, out: &mut Vec<AuditRow>) {
        let Some(w) = self.watermark else { return };
        let cutoff = w - self.window;
        for s in self.sessions.values_mut() {
            while s
                .held
                .front()
                .is_some_and(|r| r.event_time.is_none_or(|t| t < cutoff))
            {
                if let Some(row) = s.held.pop_front() {
                    s.remember(row.vxid());
                    out.push(row);
                }
            }
        }
        // A quiet session is forgotten after SESSION_MEMORY of log time (its released vxids
        // serve late-outcome detection until then).
        let forget = w - SESSION_MEMORY;
        self.sessions
            .retain(|_, s| !s.held.is_empty() || s.last_seen.is_some_and(|t| t >= forget));
    }

    /// Releases every held row (end of input).
    pub fn finish(&mut self, out: &mut Vec<AuditRow>) {
        for s in self.sessions.values_mut() {
            s.release_all(out);
        }
    }
}

#[cfg(test)]
mod tests {
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
}
