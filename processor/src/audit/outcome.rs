//! Statement outcomes: pgaudit_analyze's model. An audited statement failed when an ERROR,
//! FATAL or PANIC record follows it in the same session and virtual transaction.
//!
//! Records without a virtual transaction id (stderr logs whose `log_line_prefix` has no `%v`)
//! are correlated as far as what is logged allows: by session and statement order. A
//! session's held rows then belong to its current statement (pgaudit's statement id); the next
//! audited statement decides them SUCCESS; an error decides them FAILURE unless the error's
//! STATEMENT text is another statement's (then they succeeded, and the error is an unaudited
//! failure of its own). What cannot be known without `%v`: statements earlier in a transaction
//! that a later error rolled back are SUCCESS, and an error arriving after its statement left
//! the outcome window is an unaudited FAILURE row rather than a late outcome.
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
    /// Without virtual transaction ids: the pgaudit statement id of the held rows.
    held_statement: Option<i64>,
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
        self.held_statement = None;
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
        // Rows of earlier transactions of this session are decided: no error followed them.
        // Without vxids the unit is the statement, decided below.
        let same_unit = |row: &AuditRow| match (row.vxid(), tx) {
            (Some(held), Some(now)) => held == now,
            (None, None) => true,
            _ => false,
        };
        while session.held.front().is_some_and(|r| !same_unit(r)) {
            if let Some(row) = session.held.pop_front() {
                session.remember(row.vxid());
                out.push(row);
            }
        }
        let disposition = match parse_audit(&rec.message) {
            Some(Err(reason)) => Disposition::Poison(reason),
            Some(Ok(entry)) => {
                if tx.is_none() {
                    // The session moved on to another statement: the held one succeeded.
                    if session.held_statement != Some(entry.statement_id) {
                        session.release_all(out);
                    }
                    session.held_statement = Some(entry.statement_id);
                }
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
                if tx.is_none() && failing.is_some() {
                    // Without vxids the error is the held statement's unless it names another.
                    let known = session.held.iter().any(|r| r.statement().is_some());
                    let theirs = session.held.iter().any(|r| r.statement() == failing);
                    if known && !theirs {
                        session.release_all(out);
                    }
                }
                let mut covered = false;
                session.held_statement = None;
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
mod tests;
