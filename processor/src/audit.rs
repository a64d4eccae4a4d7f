//! Audit rows: the standard audit schema's columns built from parsed log records.
//!
//! Owns [`AuditRow`] (one row of a server's table, before Kafka coordinates and ingest time
//! are added by the writer), [`Source`] (where a record came from) and the row builders for
//! pgaudit entries and for failed statements pgaudit never logged. `outcome` decides SUCCESS
//! or FAILURE. Invariant: `event_id` is a deterministic function of the source coordinates
//! (server, file identity, byte offset), so a record shipped twice yields the same id.
//! Must not: do I/O.

mod classify;
mod extra;
pub mod outcome;

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use pgtrail_avro::LogFormat;
use serde::Serialize;

use crate::parse::LogRecord;
use crate::parse::pgaudit::{AuditEntry, Parameters, Statement, normalize_statement};

pub use classify::classify;
pub use extra::{Extra, Key};

/// Where a log record came from (the shipper's envelope; texts shared by every record of a
/// file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    /// Logical server name.
    pub server: Arc<str>,
    /// Host the shipper ran on.
    pub host: Arc<str>,
    /// Log format of the file.
    pub format: LogFormat,
    /// File path.
    pub path: Arc<str>,
    /// File identity.
    pub file_id: Arc<str>,
    /// Byte offset of the record in the file.
    pub offset: i64,
    /// The caller's position of the record (the processor: its Kafka offset), carried into
    /// the row's `origin`; not part of the event's identity.
    pub origin: i64,
}

impl Source {
    /// Deterministic id of the event from these coordinates (one log record yields at most one
    /// row): 32 hex digits of xxh3-128 over `server \x1f file_id \x1f offset`.
    pub fn event_id(&self) -> String {
        let mut offset = itoa::Buffer::new();
        let parts = [
            self.server.as_bytes(),
            b"\x1f",
            self.file_id.as_bytes(),
            b"\x1f",
            offset.format(self.offset).as_bytes(),
        ];
        // The key on the stack when it fits (it nearly always does).
        let mut stack = [0u8; 256];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let hash = if len <= stack.len() {
            let mut at = 0;
            for p in parts {
                stack[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            xxhash_rust::xxh3::xxh3_128(&stack[..len])
        } else {
            xxhash_rust::xxh3::xxh3_128(&parts.concat())
        };
        hex(hash, 32)
    }
}

/// The low `digits` hex digits of `v`, zero-padded (`{:0digits$x}`), without the formatting
/// machinery.
fn hex(v: u128, digits: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (pair, b) in out.chunks_exact_mut(2).zip(v.to_be_bytes()) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(&out[32 - digits.min(32)..])
        .unwrap_or_default()
        .to_owned()
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
    pub command_tag: Cow<'static, str>,
    /// Object type.
    pub object_type: Option<String>,
    /// Object name.
    pub object_name: Option<String>,
    /// Normalized statement; `None` when not logged.
    pub statement: Option<String>,
    /// READ, WRITE, FUNCTION, ROLE, DDL, MISC, MISC_SET, UNKNOWN.
    pub audit_class: Cow<'static, str>,
    /// SUCCESS or FAILURE.
    pub result: Outcome,
    /// SQLSTATE of the failure; `None` on success or where the format carries none.
    pub error_code: Option<String>,
    /// Everything without a column.
    pub extra: Extra,
    /// Log format the row was parsed from.
    pub src: &'static str,
    /// The record as logged.
    pub raw: String,
    /// Deterministic id (see [`Source::event_id`]).
    pub event_id: String,
    /// Virtual transaction id (outcome matching; also in `extra`).
    #[serde(skip)]
    pub vxid: Option<String>,
    /// [`Source::origin`] of the record the row came from.
    #[serde(skip)]
    pub origin: i64,
}

/// Entries every row has, moved out of the record (one entry per `Some`), in key order.
fn common_extra(rec: &mut LogRecord, src: &Source, room: usize) -> Extra {
    let mut e = Extra::with_capacity(10 + room);
    if let Some(v) = rec.application_name.take() {
        e.insert(Key::ApplicationName, v);
    }
    if let Some(v) = rec.backend_type.take() {
        e.insert(Key::BackendType, v);
    }
    e.insert(Key::Host, Arc::clone(&src.host));
    if let Some(v) = rec.leader_pid {
        e.insert(Key::LeaderPid, v);
    }
    if let Some(v) = rec.process_id {
        e.insert(Key::ProcessId, v);
    }
    if let Some(v) = rec.query_id {
        e.insert(Key::QueryId, v);
    }
    if let Some(v) = rec.session_line_num {
        e.insert(Key::SessionLineNum, v);
    }
    e.insert(Key::SourceFile, Arc::clone(&src.path));
    if let Some(v) = rec.txid.take() {
        e.insert(Key::Txid, v);
    }
    if let Some(v) = rec.vxid.clone() {
        e.insert(Key::Vxid, v);
    }
    e
}

/// A SUCCESS row with the record's columns (moved out of it) and no audit fields yet.
fn base_row(rec: &mut LogRecord, src: &Source, raw: String, extra: Extra) -> AuditRow {
    AuditRow {
        event_time: rec.log_time,
        db_name: rec.database_name.take(),
        user_name: rec.user_name.take(),
        client_addr: rec.remote_host.take(),
        session_id: rec.session_id.take(),
        command_tag: Cow::Borrowed(""),
        object_type: None,
        object_name: None,
        statement: None,
        audit_class: Cow::Borrowed(""),
        result: Outcome::Success,
        error_code: None,
        extra,
        src: src.format.as_str(),
        raw,
        event_id: src.event_id(),
        vxid: rec.vxid.take(),
        origin: src.origin,
    }
}

/// Fingerprint of a statement: xxh3 of its lower-cased, whitespace-collapsed text.
pub fn statement_fingerprint(statement: &str) -> String {
    FOLDED.with_borrow_mut(|folded| {
        folded.clear();
        fold_statement(statement, folded);
        let hash = xxhash_rust::xxh3::xxh3_64(folded);
        if folded.capacity() > FOLDED_MAX {
            *folded = Vec::new();
        }
        hex(u128::from(hash), 16)
    })
}

/// Largest fold buffer kept for the next statement, in bytes.
const FOLDED_MAX: usize = 64 << 10;

thread_local! {
    /// The fold buffer of [`statement_fingerprint`], reused (no allocation per row).
    static FOLDED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Appends `statement` lower-cased with its whitespace runs collapsed to one space and trimmed.
fn fold_statement(statement: &str, folded: &mut Vec<u8>) {
    let bytes = statement.as_bytes();
    // ASCII `char::is_whitespace` is exactly these six.
    let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    if !statement.is_ascii() {
        // Words through `str::to_lowercase` (its final-sigma rule included).
        for (i, word) in statement.split_whitespace().enumerate() {
            if i > 0 {
                folded.push(b' ');
            }
            folded.extend_from_slice(word.to_lowercase().as_bytes());
        }
    } else if bytes.first().is_none_or(|b| !space(b))
        && bytes.last().is_none_or(|b| !space(b))
        // No `\t`..`\r` (9..=13): a branch-free pass the compiler vectorizes.
        && !bytes.iter().fold(false, |hit, b| hit | (b.wrapping_sub(9) < 5))
        && memchr::memmem::find(bytes, b"  ").is_none()
    {
        // Already collapsed (the common case): one copy, lower-cased in place.
        folded.extend_from_slice(bytes);
        folded.make_ascii_lowercase();
    } else {
        let words = bytes.split(space).filter(|w| !w.is_empty());
        for word in words {
            if !folded.is_empty() {
                folded.push(b' ');
            }
            let start = folded.len();
            folded.extend_from_slice(word);
            folded[start..].make_ascii_lowercase();
        }
    }
}

/// The row of a pgaudit entry; `statement` is the entry's statement after
/// `<previously logged>` was filled (`None` when not logged).
pub fn audit_row(
    mut rec: LogRecord,
    entry: AuditEntry,
    statement: Option<String>,
    src: &Source,
    raw: String,
) -> AuditRow {
    let mut extra = common_extra(&mut rec, src, 8);
    extra.insert(Key::AuditType, entry.audit_type);
    extra.insert(Key::StatementId, entry.statement_id);
    extra.insert(Key::SubstatementId, entry.substatement_id);
    match &entry.parameters {
        Parameters::Values(v) => extra.insert(Key::Parameters, v.join(",")),
        Parameters::NotLogged => extra.insert(Key::Parameters, "<not logged>"),
        Parameters::PreviouslyLogged => extra.insert(Key::Parameters, "<previously logged>"),
        Parameters::None => {}
    }
    if let Some(rows) = entry.rows {
        extra.insert(Key::Rows, rows);
    }
    if entry.statement == Statement::NotLogged {
        extra.insert(Key::StatementLogged, "false");
    }
    if let Some(s) = &statement {
        extra.insert(Key::StatementFingerprint, statement_fingerprint(s));
    }
    AuditRow {
        command_tag: entry.command,
        object_type: entry.object_type,
        object_name: entry.object_name,
        statement,
        audit_class: entry.class,
        ..base_row(&mut rec, src, raw, extra)
    }
}

/// The row of a failed statement pgaudit never logged, from its ERROR/FATAL record.
pub fn unaudited_failure_row(
    mut rec: LogRecord,
    statement: &str,
    src: &Source,
    raw: String,
) -> AuditRow {
    let statement = normalize_statement(statement);
    let (class, command) = classify(&statement);
    let mut extra = common_extra(&mut rec, src, 3);
    extra.insert(Key::AuditLogged, "false");
    extra.insert(Key::StatementFingerprint, statement_fingerprint(&statement));
    extra.insert(Key::ErrorMessage, std::mem::take(&mut rec.message));
    AuditRow {
        command_tag: Cow::Owned(command),
        statement: Some(statement),
        audit_class: Cow::Borrowed(class),
        result: Outcome::Failure,
        error_code: rec.sql_state.take(),
        ..base_row(&mut rec, src, raw, extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Ids and fingerprints in existing tables must not change: the allocation-free
        /// versions agree with the original `format!` formulas.
        #[test]
        fn ids_and_fingerprints_keep_their_original_formulas(
            server in "\\PC{0,12}", file_id in "\\PC{0,24}", offset in any::<i64>(),
            stmt in prop_oneof!["\\PC{0,40}", "[ \t\n\x0B\x0C\r\x1cA-Za-z0-9;ΣÉé]{0,40}", "[ \t\nA-Z;]{0,40}"],
        ) {
            let src = Source {
                server: server.as_str().into(),
                host: "h".into(),
                format: LogFormat::Csvlog,
                path: "/p".into(),
                file_id: file_id.as_str().into(),
                offset,
                origin: 0,
            };
            let key = format!("{server}\u{1f}{file_id}\u{1f}{offset}");
            prop_assert_eq!(
                src.event_id(),
                format!("{:032x}", xxhash_rust::xxh3::xxh3_128(key.as_bytes()))
            );
            let folded = stmt.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ");
            prop_assert_eq!(
                statement_fingerprint(&stmt),
                format!("{:016x}", xxhash_rust::xxh3::xxh3_64(folded.as_bytes()))
            );
        }
    }
}
