//! Audit rows: the standard audit schema's columns built from parsed log records.
//!
//! Owns [`AuditRow`] (one row of a server's table, before Kafka coordinates and ingest time
//! are added by the writer), [`Source`] (where a record came from) and the row builders for
//! pgaudit entries and for failed statements pgaudit never logged. `outcome` decides SUCCESS
//! or FAILURE. Invariant: `event_id` is a deterministic function of the source coordinates
//! (server, file identity, byte offset), so a record shipped twice yields the same id.
//! Must not: do I/O.

mod classify;
pub mod outcome;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use pgtrail_avro::LogFormat;
use serde::Serialize;

use crate::parse::LogRecord;
use crate::parse::pgaudit::{AuditEntry, Parameters, Statement, normalize_statement};

pub use classify::classify;

/// Where a log record came from (the shipper's envelope).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// Logical server name.
    pub server: String,
    /// Host the shipper ran on.
    pub host: String,
    /// Log format of the file.
    pub format: LogFormat,
    /// File path.
    pub path: String,
    /// File identity.
    pub file_id: String,
    /// Byte offset of the record in the file.
    pub offset: i64,
}

impl Source {
    /// Deterministic id of the event from these coordinates (one log record yields at most one
    /// row).
    pub fn event_id(&self) -> String {
        let key = format!("{}\u{1f}{}\u{1f}{}", self.server, self.file_id, self.offset);
        format!("{:032x}", xxhash_rust::xxh3::xxh3_128(key.as_bytes()))
    }
}

/// SUCCESS or FAILURE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// No error followed in the statement's transaction.
    #[serde(rename = "SUCCESS")]
    Success,
    /// An ERROR, FATAL or PANIC followed in the same session and transaction.
    #[serde(rename = "FAILURE")]
    Failure,
}

impl Outcome {
    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "SUCCESS",
            Outcome::Failure => "FAILURE",
        }
    }
}

/// One audit row (columns of the standard audit schema without the Kafka and ingest ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    /// When the statement was logged, UTC.
    pub event_time: Option<DateTime<Utc>>,
    /// Database.
    pub db_name: Option<String>,
    /// Role.
    pub user_name: Option<String>,
    /// Client address (`[local]` for Unix sockets).
    pub client_addr: Option<String>,
    /// PostgreSQL session id.
    pub session_id: Option<String>,
    /// Command (pgaudit's, or inferred for unaudited failures).
    pub command_tag: String,
    /// Object type.
    pub object_type: Option<String>,
    /// Object name.
    pub object_name: Option<String>,
    /// Normalized statement; `None` when not logged.
    pub statement: Option<String>,
    /// READ, WRITE, FUNCTION, ROLE, DDL, MISC, MISC_SET, UNKNOWN.
    pub audit_class: String,
    /// SUCCESS or FAILURE.
    pub result: Outcome,
    /// SQLSTATE of the failure; `None` on success or where the format carries none.
    pub error_code: Option<String>,
    /// Everything without a column.
    pub extra: BTreeMap<String, String>,
    /// Log format the row was parsed from.
    pub src: String,
    /// The record as logged.
    pub raw: String,
    /// Deterministic id (see [`Source::event_id`]).
    pub event_id: String,
    /// Virtual transaction id (outcome matching; also in `extra`).
    #[serde(skip)]
    pub vxid: Option<String>,
}

impl AuditRow {
    /// Approximate memory the row holds (heap bytes of every string plus allocation and
    /// map-node overhead): what the flush budget `flush_bytes` counts.
    pub fn approx_bytes(&self) -> usize {
        const STRING: usize = 32; // header + allocator rounding
        const ENTRY: usize = 96; // BTreeMap node share + two string headers
        let opt = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len() + STRING);
        std::mem::size_of::<Self>()
            + opt(&self.db_name)
            + opt(&self.user_name)
            + opt(&self.client_addr)
            + opt(&self.session_id)
            + opt(&self.object_type)
            + opt(&self.object_name)
            + opt(&self.statement)
            + opt(&self.error_code)
            + opt(&self.vxid)
            + [
                &self.command_tag,
                &self.audit_class,
                &self.src,
                &self.raw,
                &self.event_id,
            ]
            .iter()
            .map(|s| s.len() + STRING)
            .sum::<usize>()
            + self
                .extra
                .iter()
                .map(|(k, v)| k.len() + v.len() + ENTRY)
                .sum::<usize>()
    }
}

fn common_extra(rec: &LogRecord, src: &Source) -> BTreeMap<String, String> {
    let mut e = BTreeMap::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            e.insert(k.to_owned(), v);
        }
    };
    put("application_name", rec.application_name.clone());
    put("backend_type", rec.backend_type.clone());
    put("vxid", rec.vxid.clone());
    put("txid", rec.txid.clone());
    put("leader_pid", rec.leader_pid.map(|v| v.to_string()));
    put("query_id", rec.query_id.map(|v| v.to_string()));
    put(
        "session_line_num",
        rec.session_line_num.map(|v| v.to_string()),
    );
    put("process_id", rec.process_id.map(|v| v.to_string()));
    put("source_file", Some(src.path.clone()));
    put("host", Some(src.host.clone()));
    e
}

/// A SUCCESS row with the record's columns and no audit fields yet.
fn base_row(rec: &LogRecord, src: &Source, raw: &str, extra: BTreeMap<String, String>) -> AuditRow {
    AuditRow {
        event_time: rec.log_time,
        db_name: rec.database_name.clone(),
        user_name: rec.user_name.clone(),
        client_addr: rec.remote_host.clone(),
        session_id: rec.session_id.clone(),
        command_tag: String::new(),
        object_type: None,
        object_name: None,
        statement: None,
        audit_class: String::new(),
        result: Outcome::Success,
        error_code: None,
        extra,
        src: src.format.to_string(),
        raw: raw.to_owned(),
        event_id: src.event_id(),
        vxid: rec.vxid.clone(),
    }
}

/// Fingerprint of a statement: xxh3 of its lower-cased, whitespace-collapsed text.
pub fn statement_fingerprint(statement: &str) -> String {
    // One buffer; ASCII words lower-cased in place, others through `str::to_lowercase` (its
    // final-sigma rule included), so fingerprints stay what they always were.
    let mut folded = String::with_capacity(statement.len());
    for (i, word) in statement.split_whitespace().enumerate() {
        if i > 0 {
            folded.push(' ');
        }
        if word.is_ascii() {
            folded.extend(word.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        } else {
            folded.push_str(&word.to_lowercase());
        }
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(folded.as_bytes()))
}

/// The row of a pgaudit entry; `statement` is the entry's statement after
/// `<previously logged>` was filled (`None` when not logged).
pub fn audit_row(
    rec: &LogRecord,
    entry: &AuditEntry,
    statement: Option<String>,
    src: &Source,
    raw: &str,
) -> AuditRow {
    let mut extra = common_extra(rec, src);
    extra.insert("audit_type".into(), entry.audit_type.clone());
    extra.insert("statement_id".into(), entry.statement_id.to_string());
    extra.insert("substatement_id".into(), entry.substatement_id.to_string());
    match &entry.parameters {
        Parameters::Values(v) => {
            extra.insert("parameters".into(), v.join(","));
        }
        Parameters::NotLogged => {
            extra.insert("parameters".into(), "<not logged>".into());
        }
        Parameters::PreviouslyLogged => {
            extra.insert("parameters".into(), "<previously logged>".into());
        }
        Parameters::None => {}
    }
    if let Some(rows) = entry.rows {
        extra.insert("rows".into(), rows.to_string());
    }
    if entry.statement == Statement::NotLogged {
        extra.insert("statement_logged".into(), "false".into());
    }
    if let Some(s) = &statement {
        extra.insert("statement_fingerprint".into(), statement_fingerprint(s));
    }
    AuditRow {
        command_tag: entry.command.clone(),
        object_type: entry.object_type.clone(),
        object_name: entry.object_name.clone(),
        statement,
        audit_class: entry.class.clone(),
        ..base_row(rec, src, raw, extra)
    }
}

/// The row of a failed statement pgaudit never logged, from its ERROR/FATAL record.
pub fn unaudited_failure_row(
    rec: &LogRecord,
    statement: &str,
    src: &Source,
    raw: &str,
) -> AuditRow {
    let statement = normalize_statement(statement);
    let (class, command) = classify(&statement);
    let mut extra = common_extra(rec, src);
    extra.insert("audit_logged".into(), "false".into());
    extra.insert("error_message".into(), rec.message.clone());
    extra.insert(
        "statement_fingerprint".into(),
        statement_fingerprint(&statement),
    );
    AuditRow {
        command_tag: command,
        statement: Some(statement),
        audit_class: class.to_owned(),
        result: Outcome::Failure,
        error_code: rec.sql_state.clone(),
        ..base_row(rec, src, raw, extra)
    }
}
