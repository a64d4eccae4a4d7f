//! csvlog records (PostgreSQL 13–17: 24 or 26 columns; 23 before 13) into [`LogRecord`].
//!
//! Owns [`parse_csvlog`]. Splits exactly one framed record with [`split_row`]: fields borrow
//! from the record's text. Invariant: a record that is not one CSV row of 23, 24 or 26
//! columns, or whose time or numbers do not parse, is an error (poison), never a half-filled
//! row. Must not: read the message.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::csvrow::split_row;
use super::record::{LogRecord, non_empty, split_host_port};
use super::time::{TimeParser, parse_pg_time, parse_session_start};

/// Parses one csvlog record (its text as shipped, bytes that are not UTF-8 replaced,
/// terminating newline allowed).
pub fn parse_csvlog(data: &str, zone: Option<Tz>) -> Result<LogRecord<'_>, String> {
    let row = split_row(data).map_err(|e| format!("csvlog: {e}"))?;
    if !matches!(row.len(), 23 | 24 | 26) {
        return Err(format!(
            "csvlog: {} columns (expected 23, 24 or 26)",
            row.len()
        ));
    }
    let col = |i: usize| row.get(i);
    let opt = |i: usize| non_empty(col(i));
    let int = |i: usize| -> Result<Option<i64>, String> {
        let v = col(i);
        if v.is_empty() {
            return Ok(None);
        }
        let v = &*v;
        v.parse()
            .map(Some)
            .map_err(|_| format!("csvlog column {} is not a number", i + 1))
    };
    let time = |i: usize, parse: TimeParser| -> Result<Option<DateTime<Utc>>, String> {
        let v = col(i);
        if v.is_empty() {
            Ok(None)
        } else {
            parse(&v, zone).map(Some)
        }
    };
    let (remote_host, remote_port) = split_host_port(col(4));
    Ok(LogRecord {
        log_time: time(0, parse_pg_time)?,
        user_name: opt(1),
        database_name: opt(2),
        process_id: int(3)?,
        remote_host,
        remote_port,
        session_id: opt(5),
        session_line_num: int(6)?,
        command_tag: opt(7),
        session_start: time(8, parse_session_start)?,
        vxid: opt(9),
        txid: opt(10),
        severity: col(11),
        sql_state: opt(12),
        message: col(13),
        detail: opt(14),
        hint: opt(15),
        internal_query: opt(16),
        internal_query_pos: int(17)?,
        context: opt(18),
        query: opt(19),
        query_pos: int(20)?,
        location: opt(21),
        application_name: opt(22),
        backend_type: if row.len() > 23 { opt(23) } else { None },
        leader_pid: if row.len() > 24 { int(24)? } else { None },
        query_id: if row.len() > 25 { int(25)? } else { None },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG15: &str = "2026-11-23 09:10:55.631 UTC,\"postgres\",\"postgres\",20747,\"[local]\",6b04031f.510b,4,\"INSERT\",2026-11-23 09:10:55 UTC,4/39,742,ERROR,23505,\"duplicate key value violates unique constraint \"\"account_pkey\"\"\",\"Key (id)=(1) already exists.\",,,,,\"INSERT INTO account VALUES (1, 'duplicate', 0);\",,,\"psql\",\"client backend\",,0\n";

    #[test]
    fn pg15_row() {
        let r = parse_csvlog(PG15, None).unwrap();
        assert_eq!(r.severity, "ERROR");
        assert_eq!(r.sql_state.as_deref(), Some("23505"));
        assert_eq!(
            r.message,
            "duplicate key value violates unique constraint \"account_pkey\""
        );
        assert_eq!(r.detail.as_deref(), Some("Key (id)=(1) already exists."));
        assert_eq!(
            r.query.as_deref(),
            Some("INSERT INTO account VALUES (1, 'duplicate', 0);")
        );
        assert_eq!(r.txid.as_deref(), Some("742"));
        assert_eq!(r.backend_type.as_deref(), Some("client backend"));
        assert_eq!(r.query_id, Some(0));
        assert_eq!(r.remote_host.as_deref(), Some("[local]"));
    }

    #[test]
    fn pg13_24_columns_and_bad_rows() {
        // PostgreSQL 13: no leader_pid / query_id.
        let pg13 = PG15.trim_end().rsplitn(3, ',').nth(2).unwrap().to_owned() + "\n";
        let r = parse_csvlog(&pg13, None).unwrap();
        assert_eq!(r.backend_type.as_deref(), Some("client backend"));
        assert_eq!(r.query_id, None);
        assert!(
            parse_csvlog("a,b,c\n", None)
                .unwrap_err()
                .contains("3 columns")
        );
        assert!(parse_csvlog("\"unterminated,1\n", None).is_err());
        let bad_pid = PG15.replacen("20747", "x", 1);
        assert!(
            parse_csvlog(&bad_pid, None)
                .unwrap_err()
                .contains("not a number")
        );
    }
}
