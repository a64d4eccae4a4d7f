//! jsonlog records (PostgreSQL 15+) into [`LogRecord`].
//!
//! Owns [`parse_jsonlog`]. Keys with NULL values are absent (`state_code` for 00000, `user`
//! and `dbname` for background processes): absent keys become `None`, and an absent
//! `state_code` means `00000`, as csvlog writes it. Must not: accept anything but one object.

use std::borrow::Cow;

use chrono_tz::Tz;
use serde::Deserialize;

use super::record::{LogRecord, Text};
use super::time::{TimeParser, parse_pg_time, parse_session_start};

#[derive(Deserialize)]
struct Json<'a> {
    #[serde(borrow)]
    timestamp: Option<Text<'a>>,
    #[serde(borrow)]
    user: Option<Text<'a>>,
    #[serde(borrow)]
    dbname: Option<Text<'a>>,
    pid: Option<i64>,
    #[serde(borrow)]
    remote_host: Option<Text<'a>>,
    remote_port: Option<i64>,
    #[serde(borrow)]
    session_id: Option<Text<'a>>,
    line_num: Option<i64>,
    #[serde(borrow)]
    ps: Option<Text<'a>>,
    #[serde(borrow)]
    session_start: Option<Text<'a>>,
    #[serde(borrow)]
    vxid: Option<Text<'a>>,
    txid: Option<serde_json::Value>,
    #[serde(borrow)]
    error_severity: Option<Text<'a>>,
    #[serde(borrow)]
    state_code: Option<Text<'a>>,
    #[serde(borrow)]
    message: Option<Text<'a>>,
    #[serde(borrow)]
    detail: Option<Text<'a>>,
    #[serde(borrow)]
    hint: Option<Text<'a>>,
    #[serde(borrow)]
    internal_query: Option<Text<'a>>,
    internal_position: Option<i64>,
    #[serde(borrow)]
    context: Option<Text<'a>>,
    #[serde(borrow)]
    statement: Option<Text<'a>>,
    cursor_position: Option<i64>,
    #[serde(borrow)]
    func_name: Option<Text<'a>>,
    #[serde(borrow)]
    file_name: Option<Text<'a>>,
    file_line_num: Option<i64>,
    #[serde(borrow)]
    application_name: Option<Text<'a>>,
    #[serde(borrow)]
    backend_type: Option<Text<'a>>,
    leader_pid: Option<i64>,
    query_id: Option<i64>,
}

/// Empty strings are absent values, as csvlog writes them (jsonlog writes `"dbname":""` for a
/// walsender, where csvlog leaves the column empty).
fn ne(v: Option<Text<'_>>) -> Option<Text<'_>> {
    v.filter(|s| !s.is_empty())
}

/// What is wrong with a jsonlog record, and where; never a value (serde_json's own messages
/// quote the value of a field of the wrong type, which can be a statement).
fn json_err(e: serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not JSON",
        Category::Data => "a field of the wrong type",
        Category::Eof => "cut short",
    };
    format!("jsonlog: {what} at line {} column {}", e.line(), e.column())
}

/// Parses one jsonlog record (texts without escapes borrow from `data`).
pub fn parse_jsonlog(data: &str, zone: Option<Tz>) -> Result<LogRecord<'_>, String> {
    let j: Json = serde_json::from_str(data).map_err(json_err)?;
    let time =
        |v: &Option<Text<'_>>, parse: TimeParser| v.as_deref().map(|s| parse(s, zone)).transpose();
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
        remote_port: j.remote_port.map(|p| Cow::Owned(p.to_string())),
        session_id: ne(j.session_id),
        session_line_num: j.line_num,
        command_tag: ne(j.ps),
        session_start: time(&j.session_start, parse_session_start)?,
        vxid: ne(j.vxid),
        txid: j.txid.map(|v| {
            Cow::Owned(match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            })
        }),
        severity: j.error_severity.ok_or("jsonlog: no error_severity")?,
        sql_state: Some(j.state_code.unwrap_or(Cow::Borrowed("00000"))),
        message: j.message.unwrap_or_default(),
        detail: ne(j.detail),
        hint: ne(j.hint),
        internal_query: ne(j.internal_query),
        internal_query_pos: j.internal_position,
        context: ne(j.context),
        query: ne(j.statement),
        query_pos: j.cursor_position,
        location: location.map(Cow::Owned),
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
        let bg = r#"{"timestamp":"2026-11-23 08:57:28.127 UTC","pid":6241,"session_id":"6b03fff8.1861","line_num":1,"session_start":"2026-11-23 08:57:28 UTC","txid":0,"error_severity":"LOG","message":"starting","backend_type":"postmaster","query_id":0}"#;
        let r = parse_jsonlog(bg, None).unwrap();
        assert_eq!(r.user_name, None);
        assert_eq!(r.sql_state.as_deref(), Some("00000"));
        assert_eq!(r.txid.as_deref(), Some("0"));
        assert!(
            parse_jsonlog("{\"message\":\"x\"", None)
                .unwrap_err()
                .starts_with("jsonlog")
        );
        assert!(parse_jsonlog("[1]", None).is_err());
    }
}
