//! The format-independent view of one PostgreSQL log record.
//!
//! Owns [`LogRecord`]: every field csvlog, jsonlog and a stderr prefix can carry, named after
//! csvlog's columns, all optional except severity and message. Texts borrow from the record's
//! bytes where the format allows (a record is parsed, turned into a row and dropped while its
//! message is at hand: copying two dozen fields per record was most of the parsers' time).
//! Invariant: the three format parsers fill the same fields with the same values for the same
//! event (golden-tested on real logs); timestamps are UTC. Must not: interpret the message
//! (pgaudit parsing is separate).

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A text field: borrowed from the record's bytes, or owned where it had to be rewritten.
pub type Text<'a> = Cow<'a, str>;

/// One PostgreSQL log record, whatever the format it was written in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogRecord<'a> {
    /// `log_time` / `timestamp` / `%m` `%t` `%n`, in UTC.
    pub log_time: Option<DateTime<Utc>>,
    /// `user_name` / `user` / `%u`.
    pub user_name: Option<Text<'a>>,
    /// `database_name` / `dbname` / `%d`.
    pub database_name: Option<Text<'a>>,
    /// `process_id` / `pid` / `%p`.
    pub process_id: Option<i64>,
    /// Client host (`[local]` for Unix sockets) / `remote_host` / `%h`.
    pub remote_host: Option<Text<'a>>,
    /// Client port / `remote_port` / from `%r`.
    pub remote_port: Option<Text<'a>>,
    /// `session_id` / `%c`.
    pub session_id: Option<Text<'a>>,
    /// `session_line_num` / `line_num` / `%l`.
    pub session_line_num: Option<i64>,
    /// `command_tag` / `ps` / `%i`.
    pub command_tag: Option<Text<'a>>,
    /// `session_start_time` / `session_start` / `%s`, UTC.
    pub session_start: Option<DateTime<Utc>>,
    /// `virtual_transaction_id` / `vxid` / `%v`.
    pub vxid: Option<Text<'a>>,
    /// `transaction_id` / `txid` / `%x`.
    pub txid: Option<Text<'a>>,
    /// `error_severity` (LOG, ERROR, ...; stderr: also DETAIL, STATEMENT... lines).
    pub severity: Text<'a>,
    /// `sql_state_code` / `state_code` / `%e`; `None` where the format carries none.
    pub sql_state: Option<Text<'a>>,
    /// The primary message.
    pub message: Text<'a>,
    /// DETAIL.
    pub detail: Option<Text<'a>>,
    /// HINT.
    pub hint: Option<Text<'a>>,
    /// Internal query (QUERY).
    pub internal_query: Option<Text<'a>>,
    /// Position in the internal query.
    pub internal_query_pos: Option<i64>,
    /// CONTEXT.
    pub context: Option<Text<'a>>,
    /// The client's statement (`query` / `statement` / STATEMENT line).
    pub query: Option<Text<'a>>,
    /// Position in the statement.
    pub query_pos: Option<i64>,
    /// Source location (LOCATION, verbose only).
    pub location: Option<Text<'a>>,
    /// `application_name` / `%a`.
    pub application_name: Option<Text<'a>>,
    /// `backend_type` / `%b` (PostgreSQL 13+).
    pub backend_type: Option<Text<'a>>,
    /// `leader_pid` / `%P` (PostgreSQL 14+).
    pub leader_pid: Option<i64>,
    /// `query_id` / `%Q` (PostgreSQL 14+).
    pub query_id: Option<i64>,
}

impl LogRecord<'_> {
    /// The record with every text owned (to be held beyond its bytes).
    pub fn into_owned(self) -> LogRecord<'static> {
        let own = |t: Option<Text<'_>>| t.map(owned);
        LogRecord {
            log_time: self.log_time,
            user_name: own(self.user_name),
            database_name: own(self.database_name),
            process_id: self.process_id,
            remote_host: own(self.remote_host),
            remote_port: own(self.remote_port),
            session_id: own(self.session_id),
            session_line_num: self.session_line_num,
            command_tag: own(self.command_tag),
            session_start: self.session_start,
            vxid: own(self.vxid),
            txid: own(self.txid),
            severity: owned(self.severity),
            sql_state: own(self.sql_state),
            message: owned(self.message),
            detail: own(self.detail),
            hint: own(self.hint),
            internal_query: own(self.internal_query),
            internal_query_pos: self.internal_query_pos,
            context: own(self.context),
            query: own(self.query),
            query_pos: self.query_pos,
            location: own(self.location),
            application_name: own(self.application_name),
            backend_type: own(self.backend_type),
            leader_pid: self.leader_pid,
            query_id: self.query_id,
        }
    }
}

/// Splits `host:port` (csvlog `connection_from`) or `host(port)` (stderr `%r`).
pub fn split_host_port<'a>(s: Text<'a>) -> (Option<Text<'a>>, Option<Text<'a>>) {
    if s.is_empty() {
        return (None, None);
    }
    let (host, port) = if s.ends_with(')')
        && let Some(open) = s.rfind('(')
    {
        (open, Some((open + 1, s.len() - 1)))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                (h.len(), Some((h.len() + 1, s.len())))
            }
            _ => (s.len(), None),
        }
    };
    (
        Some(part(&s, |t| &t[..host])),
        port.map(|(a, z)| part(&s, |t| &t[a..z])),
    )
}

/// The part of `t` that `pick` returns: borrowed from what `t` borrows, else copied.
pub fn part<'a>(t: &Text<'a>, pick: impl FnOnce(&str) -> &str) -> Text<'a> {
    match t {
        Cow::Borrowed(b) => Cow::Borrowed(pick(b)),
        Cow::Owned(o) => Cow::Owned(pick(o).to_owned()),
    }
}

/// `t` owned (to be held beyond the bytes it borrowed from).
pub fn owned(t: Text<'_>) -> Text<'static> {
    Cow::Owned(t.into_owned())
}

/// `Some(s)` unless empty.
pub fn non_empty(s: Text<'_>) -> Option<Text<'_>> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let split = |s: &'static str| {
            let (h, p) = split_host_port(s.into());
            // Borrowed and owned input split alike.
            let (oh, op) = split_host_port(Cow::Owned(s.to_owned()));
            assert_eq!((&h, &p), (&oh, &op));
            (h.map(Cow::into_owned), p.map(Cow::into_owned))
        };
        assert_eq!(
            split("10.0.0.1:5432"),
            (Some("10.0.0.1".into()), Some("5432".into()))
        );
        assert_eq!(
            split("::1(51234)"),
            (Some("::1".into()), Some("51234".into()))
        );
        assert_eq!(split("[local]"), (Some("[local]".into()), None));
        assert_eq!(split(""), (None, None));
    }
}
