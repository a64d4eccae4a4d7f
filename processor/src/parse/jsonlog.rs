//! jsonlog records (PostgreSQL 15+) into [`LogRecord`].
//!
//! Owns [`parse_jsonlog`]. Keys with NULL values are absent (`state_code` for 00000, `user`
//! and `dbname` for background processes): absent keys become `None`, and an absent
//! `state_code` means `00000`, as csvlog writes it. Must not: accept anything but one object.

use chrono_tz::Tz;
use serde::Deserialize;

use super::record::LogRecord;
use super::time::{TimeParser, parse_pg_time, parse_session_start};

#[derive(Deserialize)]
struct Json {
    timestamp: Option<String>,
    user: Option<String>,
    dbname: Option<String>,
    pid: Option<i64>,
    remote_host: Option<String>,
    remote_port: Option<i64>,
    session_id: Option<String>,
    line_num: Option<i64>,
    ps: Option<String>,
    session_start: Option<String>,
    vxid: Option<String>,
    txid: Option<serde_json::Value>,
    error_severity: Option<String>,
    state_code: Option<String>,
    message: Option<String>,
    detail: Option<String>,
    hint: Option<String>,
    internal_query: Option<String>,
    internal_position: Option<i64>,
    context: Option<String>,
    statement: Option<String>,
    cursor_position: Option<i64>,
    func_name: Option<String>,
    file_name: Option<String>,
    file_line_num: Option<i64>,
    application_name: Option<String>,
    backend_type: Option<String>,
    leader_pid: Option<i64>,
    query_id: Option<i64>,
}

/// Empty strings are absent values, as csvlog writes them (jsonlog writes `"dbname":""` for a
/// walsender, where csvlog leaves the column empty).
fn ne(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// Parses one jsonlog record.
pub fn parse_jsonlog(data: &[u8], zone: Option<Tz>) -> Result<LogRecord, String> {
    let j: Json = serde_json::from_slice(data).map_err(|e| format!("jsonlog: {e}"))?;
    let time =
        |v: &Option<String>, parse: TimeParser| v.as_deref().map(|s| parse(s, zone)).transpose();
    let location = match (&j.func_name, &j.file_name, j.file_line_num) {
        (Some(f), Some(file), Some(line)) => Some(format!("{f}, {file}:{line}")),
        _ => None,
    };
    Ok(LogRecord {
        log_time: time(&j.timestamp, parse_pg_time)?,
        user_name: ne(j.user),
        database_name: ne(j.dbname),
        process_id: j.pid,
        remote_host: ne(j.remote_host),
        remote_port: j.remote_port.map(|p| p.to_string()),
        session_id: ne(j.session_id),
        session_line_num: j.line_num,
        command_tag: ne(j.ps),
        session_start: time(&j.session_start, parse_session_start)?,
        vxid: ne(j.vxid),
        txid: j.txid.map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }),
        severity: j.error_severity.ok_or("jsonlog: no error_severity")?,
        sql_state: Some(j.state_code.unwrap_or_else(|| "00000".into())),
        message: j.message.unwrap_or_default(),
        detail: ne(j.detail),
        hint: ne(j.hint),
        internal_query: ne(j.internal_query),
        internal_query_pos: j.internal_position,
        context: ne(j.context),
        query: ne(j.statement),
        query_pos: j.cursor_position,
        location,
        application_name: ne(j.application_name),
        backend_type: ne(j.backend_type),
        leader_pid: j.leader_pid,
        query_id: j.query_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_keys_and_state_code() {
        let bg = br#"{"timestamp":"2026-11-23 08:57:28.127 UTC","pid":6241,"session_id":"6b03fff8.1861","line_num":1,"session_start":"2026-11-23 08:57:28 UTC","txid":0,"error_severity":"LOG","message":"starting","backend_type":"postmaster","query_id":0}"#;
        let r = parse_jsonlog(bg, None).unwrap();
        assert_eq!(r.user_name, None);
        assert_eq!(r.sql_state.as_deref(), Some("00000"));
        assert_eq!(r.txid.as_deref(), Some("0"));
        assert!(
            parse_jsonlog(b"{\"message\":\"x\"", None)
                .unwrap_err()
                .starts_with("jsonlog")
        );
        assert!(parse_jsonlog(b"[1]", None).is_err());
    }
}
