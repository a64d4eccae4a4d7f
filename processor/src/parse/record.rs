//! The format-independent view of one PostgreSQL log record.
//!
//! Owns [`LogRecord`]: every field csvlog, jsonlog and a stderr prefix can carry, named after
//! csvlog's columns, all optional except severity and message. Invariant: the three format
//! parsers fill the same fields with the same values for the same event (golden-tested on real
//! logs); timestamps are UTC. Must not: interpret the message (pgaudit parsing is separate).

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One PostgreSQL log record, whatever the format it was written in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    /// `log_time` / `timestamp` / `%m` `%t` `%n`, in UTC.
    pub log_time: Option<DateTime<Utc>>,
    /// `user_name` / `user` / `%u`.
    pub user_name: Option<String>,
    /// `database_name` / `dbname` / `%d`.
    pub database_name: Option<String>,
    /// `process_id` / `pid` / `%p`.
    pub process_id: Option<i64>,
    /// Client host (`[local]` for Unix sockets) / `remote_host` / `%h`.
    pub remote_host: Option<String>,
    /// Client port / `remote_port` / from `%r`.
    pub remote_port: Option<String>,
    /// `session_id` / `%c`.
    pub session_id: Option<String>,
    /// `session_line_num` / `line_num` / `%l`.
    pub session_line_num: Option<i64>,
    /// `command_tag` / `ps` / `%i`.
    pub command_tag: Option<String>,
    /// `session_start_time` / `session_start` / `%s`, UTC.
    pub session_start: Option<DateTime<Utc>>,
    /// `virtual_transaction_id` / `vxid` / `%v`.
    pub vxid: Option<String>,
    /// `transaction_id` / `txid` / `%x`.
    pub txid: Option<String>,
    /// `error_severity` (LOG, ERROR, ...; stderr: also DETAIL, STATEMENT... lines).
    pub severity: String,
    /// `sql_state_code` / `state_code` / `%e`; `None` where the format carries none.
    pub sql_state: Option<String>,
    /// The primary message.
    pub message: String,
    /// DETAIL.
    pub detail: Option<String>,
    /// HINT.
    pub hint: Option<String>,
    /// Internal query (QUERY).
    pub internal_query: Option<String>,
    /// Position in the internal query.
    pub internal_query_pos: Option<i64>,
    /// CONTEXT.
    pub context: Option<String>,
    /// The client's statement (`query` / `statement` / STATEMENT line).
    pub query: Option<String>,
    /// Position in the statement.
    pub query_pos: Option<i64>,
    /// Source location (LOCATION, verbose only).
    pub location: Option<String>,
    /// `application_name` / `%a`.
    pub application_name: Option<String>,
    /// `backend_type` / `%b` (PostgreSQL 13+).
    pub backend_type: Option<String>,
    /// `leader_pid` / `%P` (PostgreSQL 14+).
    pub leader_pid: Option<i64>,
    /// `query_id` / `%Q` (PostgreSQL 14+).
    pub query_id: Option<i64>,
}

/// Splits `host:port` (csvlog `connection_from`) or `host(port)` (stderr `%r`).
pub fn split_host_port(s: &str) -> (Option<String>, Option<String>) {
    if s.is_empty() {
        return (None, None);
    }
    if s.ends_with(')')
        && let Some(open) = s.rfind('(')
    {
        return (
            Some(s[..open].to_owned()),
            Some(s[open + 1..s.len() - 1].to_owned()),
        );
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            (Some(h.to_owned()), Some(p.to_owned()))
        }
        _ => (Some(s.to_owned()), None),
    }
}

/// `Some(s)` unless empty.
pub fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("10.0.0.1:5432"),
            (Some("10.0.0.1".into()), Some("5432".into()))
        );
        assert_eq!(
            split_host_port("::1(51234)"),
            (Some("::1".into()), Some("51234".into()))
        );
        assert_eq!(split_host_port("[local]"), (Some("[local]".into()), None));
        assert_eq!(split_host_port(""), (None, None));
    }
}
