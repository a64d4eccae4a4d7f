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
//! the writer can keep Kafka offsets below the oldest held record; a tracker restored from
//! [`OutcomeTracker::released_as_of`] and the watermark as of a Kafka offset decides every
//! record after that offset as the original did (a late outcome stays late across a restart).
//! Must not: do I/O.

use std::borrow::Cow;
use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};
use foldhash::HashMap;
use serde::{Deserialize, Serialize};

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
    /// at worst count an unaudited failure as a late outcome, at odds of 2^-64), each with the
    /// Kafka offset of the record that released it (a row released, or an error): a resume
    /// after that offset no longer has the record, so it starts with the memory.
    released_vxids: VecDeque<(u64, i64)>,
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
            self.remember(row.vxid(), row.origin);
            out.push(row);
        }
    }

    fn released(&self, v: u64) -> bool {
        self.released_vxids.iter().rev().any(|(h, _)| *h == v)
    }

    /// Remembers a released transaction (the last 64 per session) as of Kafka offset `at`
    /// (the record that released it). Rows are released in transaction order, so the newest
    /// entry is checked first: the common repeat is O(1).
    fn remember(&mut self, vxid: Option<&str>, at: i64) {
        let Some(v) = vxid.map(vxid_hash) else {
            return;
        };
        if self.released(v) {
            return;
        }
        self.released_vxids.push_back((v, at));
        if self.released_vxids.len() > 64 {
            self.released_vxids.pop_front();
        }
    }
}

/// A session's newest released transaction as of a Kafka offset: what a resumed tracker needs
/// to tell a late outcome from an unaudited failure as the original run did. Stored as a
/// JSON array `[session, vxid hash, last seen in µs since the epoch or null]`: a checkpoint
/// holds one per session remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "ReleasedTxRepr", from = "ReleasedTxRepr")]
pub struct ReleasedTx {
    /// The session (`%c`, or `pid:` and the process id).
    pub session: String,
    /// xxh3 of the transaction's vxid.
    pub vxid: u64,
    /// The session's newest log time (when a quiet session is forgotten).
    pub last_seen: Option<DateTime<Utc>>,
}

type ReleasedTxRepr = (String, u64, Option<i64>);

impl From<ReleasedTx> for ReleasedTxRepr {
    fn from(r: ReleasedTx) -> Self {
        (r.session, r.vxid, r.last_seen.map(|t| t.timestamp_micros()))
    }
}

impl From<ReleasedTxRepr> for ReleasedTx {
    fn from((session, vxid, last_seen): ReleasedTxRepr) -> Self {
        ReleasedTx {
            session,
            vxid,
            last_seen: last_seen.and_then(DateTime::from_timestamp_micros),
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

    /// A tracker resuming after Kafka offset `position`, as the one that had handled every
    /// record up to it had the newest log time `watermark` and the sessions' `released`.
    /// Sessions are otherwise new: a `<previously logged>` entry of a statement logged before
    /// `position` has no statement text.
    pub fn resumed(
        window: std::time::Duration,
        position: i64,
        watermark: Option<DateTime<Utc>>,
        released: Vec<ReleasedTx>,
    ) -> Self {
        let mut t = OutcomeTracker::new(window);
        t.watermark = watermark;
        // A sweep follows every record that moves the clock into another second, so the
        // original swept at this one.
        t.swept_at = watermark.map(|w| w.timestamp());
        for r in released {
            let s = t.sessions.entry(r.session).or_default();
            s.released_vxids.push_back((r.vxid, position));
            s.last_seen = r.last_seen;
        }
        t
    }

    /// Takes `t` into the newest log time seen (the reference of the outcome window),
    /// before the record carrying it is pushed or even complete.
    pub fn observe(&mut self, t: DateTime<Utc>) {
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
    }

    /// The newest log time seen.
    pub fn watermark(&self) -> Option<DateTime<Utc>> {
        self.watermark
    }

    /// Per session, the newest transaction released by a record at or before `offset` (all
    /// such records were handled: one not yet would be held, or open, so after `offset`).
    /// Sessions forgotten or ended since are absent, as are ones that began after (a replay
    /// from `offset` removes or begins them again at the same records); a session's
    /// `last_seen` is its newest, which decides its forgetting as the original did: it was
    /// not forgotten in between, or it would be new.
    pub fn released_as_of(&self, offset: i64) -> Vec<ReleasedTx> {
        let mut out: Vec<ReleasedTx> = self
            .sessions
            .iter()
            .filter_map(|(key, s)| {
                let (vxid, _) = s
                    .released_vxids
                    .iter()
                    .rev()
                    .find(|(_, at)| *at <= offset)?;
                Some(ReleasedTx {
                    session: key.clone(),
                    vxid: *vxid,
                    last_seen: s.last_seen,
                })
            })
            .collect();
        out.sort_unstable_by(|a, b| a.session.cmp(&b.session));
        out
    }

    /// Rows held now.
    pub fn held(&self) -> usize {
        self.sessions.values().map(|s| s.held.len()).sum()
    }

    /// Adds one parsed record (in per-session order; `raw` is its text as logged) and
    /// releases what is past the outcome window; appends released rows to `out`.
    pub fn push(
        &mut self,
        rec: &LogRecord<'_>,
        src: &Source,
        raw: &str,
        out: &mut Vec<AuditRow>,
    ) -> Disposition {
        let disposition = self.push_record(rec, src, raw, out);
        self.sweep(out);
        disposition
    }

    /// [`OutcomeTracker::push`] without the release of what is past the outcome window (the
    /// caller sweeps at its own points: a partition once per Kafka message).
    pub fn push_record(
        &mut self,
        rec: &LogRecord<'_>,
        src: &Source,
        raw: &str,
        out: &mut Vec<AuditRow>,
    ) -> Disposition {
        if let Some(t) = rec.log_time {
            self.observe(t);
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
                session.remember(row.vxid(), row.origin);
                out.push(row);
            }
        }
        match parse_audit(&rec.message) {
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
                    .is_some_and(|v| session.released(vxid_hash(v)));
                session.remember(rec.vxid.as_deref(), src.origin);
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
        }
    }

    /// Releases rows past the outcome window when the newest log time entered another second
    /// since the last sweep. Sweeping every session on every record would cost O(sessions)
    /// per record: once per second of log time is enough.
    pub fn sweep(&mut self, out: &mut Vec<AuditRow>) {
        let second = self.watermark.map(|w| w.timestamp());
        if second != self.swept_at {
            self.swept_at = second;
            self.release_expired(out);
        }
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
                    s.remember(row.vxid(), row.origin);
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
