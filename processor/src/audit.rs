//! Audit rows: the standard audit schema's columns built from parsed log records.
//!
//! Owns [`Source`] (where a record came from) and the row builders for pgaudit entries and for
//! failed statements pgaudit never logged; [`AuditRow`] (one row of a server's table, before
//! Kafka coordinates and ingest time are added by the writer) lives in `row`. `outcome` decides SUCCESS
//! or FAILURE. Invariant: `event_id` is a deterministic function of the source coordinates
//! (server, file identity, byte offset), so a record shipped twice yields the same id.
//! Must not: do I/O.

mod classify;
mod extra;
pub mod outcome;
mod row;

use std::borrow::Cow;
use std::sync::Arc;

use pgtrail_avro::LogFormat;
use serde::Serialize;

use crate::parse::LogRecord;
use crate::parse::pgaudit::{AuditEntry, Parameters, Statement, normalize_statement};

pub use classify::classify;
pub use extra::{Extra, ExtraView, Key, Value};
pub use row::{AuditRow, RowText, Span};

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
        let mut digits = [0u8; 32];
        hex(self.event_hash(), 32, &mut digits).to_owned()
    }

    /// [`Source::event_id`]'s hash.
    fn event_hash(&self) -> u128 {
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
        if len <= stack.len() {
            let mut at = 0;
            for p in parts {
                stack[at..at + p.len()].copy_from_slice(p);
                at += p.len();
            }
            xxhash_rust::xxh3::xxh3_128(&stack[..len])
        } else {
            xxhash_rust::xxh3::xxh3_128(&parts.concat())
        }
    }
}

/// The low `digits` hex digits of `v`, zero-padded (`{:0digits$x}`), written into `out`:
/// without the formatting machinery or an allocation.
fn hex(v: u128, digits: usize, out: &mut [u8; 32]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(v.to_be_bytes()) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    // Only ASCII hex digits were written.
    std::str::from_utf8(&out[32 - digits.min(32)..]).unwrap_or_default()
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

/// Room for the texts a row appends after its raw record: the event id, the fingerprint and a
/// few short fields that are not inside the raw record.
const ROW_ROOM: usize = 96;

/// What a row's `extra` holds beyond the record's entries.
enum Specific<'e, 'a> {
    /// A pgaudit entry, and its statement's fingerprint.
    Audit(&'e AuditEntry<'a>, Option<Span>),
    /// A failed statement pgaudit never logged: its fingerprint and error message.
    Unaudited { fingerprint: Span, message: Span },
}

/// A row's `extra`, built in key order (each entry appended: inserting in the middle moved
/// the entries after it, a twentieth of the per-row time); texts as ranges of the row's buffer.
fn row_extra(
    rec: &LogRecord<'_>,
    src: &Source,
    t: &mut RowText<'_>,
    specific: &Specific<'_, '_>,
) -> Extra {
    let audit = match specific {
        Specific::Audit(entry, _) => Some(*entry),
        Specific::Unaudited { .. } => None,
    };
    let mut e = Extra::default();
    if let Some(v) = &rec.application_name {
        e.insert(Key::ApplicationName, t.put(v));
    }
    if audit.is_none() {
        e.insert(Key::AuditLogged, "false");
    }
    if let Some(entry) = audit {
        let audit_type = fixed(t, &entry.audit_type);
        e.insert(Key::AuditType, audit_type);
    }
    if let Some(v) = &rec.backend_type {
        e.insert(Key::BackendType, t.put(v));
    }
    if let Specific::Unaudited { message, .. } = specific {
        e.insert(Key::ErrorMessage, *message);
    }
    e.insert(Key::Host, Arc::clone(&src.host));
    if let Some(v) = rec.leader_pid {
        e.insert(Key::LeaderPid, v);
    }
    if let Some(entry) = audit {
        match &entry.parameters {
            Parameters::Values(v) => e.insert(Key::Parameters, t.append_joined(v, ",")),
            Parameters::NotLogged => e.insert(Key::Parameters, "<not logged>"),
            Parameters::PreviouslyLogged => e.insert(Key::Parameters, "<previously logged>"),
            Parameters::None => {}
        }
    }
    if let Some(v) = rec.process_id {
        e.insert(Key::ProcessId, v);
    }
    if let Some(v) = rec.query_id {
        e.insert(Key::QueryId, v);
    }
    if let Some(rows) = audit.and_then(|a| a.rows) {
        e.insert(Key::Rows, rows);
    }
    if let Some(v) = rec.session_line_num {
        e.insert(Key::SessionLineNum, v);
    }
    e.insert(Key::SourceFile, Arc::clone(&src.path));
    match specific {
        Specific::Audit(_, Some(f)) | Specific::Unaudited { fingerprint: f, .. } => {
            e.insert(Key::StatementFingerprint, *f);
        }
        Specific::Audit(_, None) => {}
    }
    if let Some(entry) = audit {
        e.insert(Key::StatementId, entry.statement_id);
        if entry.statement == Statement::NotLogged {
            e.insert(Key::StatementLogged, "false");
        }
        e.insert(Key::SubstatementId, entry.substatement_id);
    }
    if let Some(v) = &rec.txid {
        e.insert(Key::Txid, t.put(v));
    }
    if let Some(v) = &rec.vxid {
        e.insert(Key::Vxid, t.put(v));
    }
    e
}

/// What distinguishes the two kinds of rows.
struct Audit {
    command_tag: Cow<'static, str>,
    audit_class: Cow<'static, str>,
    object_type: Option<Span>,
    object_name: Option<Span>,
    statement: Option<Span>,
    result: Outcome,
    error_code: Option<Span>,
}

/// A row with the record's columns, `audit`'s and `extra`; finishes the buffer.
fn assemble(
    rec: &LogRecord<'_>,
    src: &Source,
    mut t: RowText<'_>,
    extra: Extra,
    audit: Audit,
) -> AuditRow {
    let mut id = [0u8; 32];
    let event_id = t.append(hex(src.event_hash(), 32, &mut id));
    AuditRow {
        event_time: rec.log_time,
        command_tag: audit.command_tag,
        audit_class: audit.audit_class,
        result: audit.result,
        src: src.format.as_str(),
        origin: src.origin,
        db_name: t.opt(rec.database_name.as_deref()),
        user_name: t.opt(rec.user_name.as_deref()),
        client_addr: t.opt(rec.remote_host.as_deref()),
        session_id: t.opt(rec.session_id.as_deref()),
        object_type: audit.object_type,
        object_name: audit.object_name,
        statement: audit.statement,
        error_code: audit.error_code,
        extra,
        raw: t.raw(),
        event_id,
        vxid: t.opt(rec.vxid.as_deref()),
        text: t.finish(),
    }
}

/// Fingerprint of a statement: xxh3 of its lower-cased, whitespace-collapsed text, as 16 hex
/// digits.
pub fn statement_fingerprint(statement: &str) -> String {
    let mut digits = [0u8; 32];
    hex(fingerprint_hash(statement), 16, &mut digits).to_owned()
}

/// [`statement_fingerprint`] appended to a row's buffer; its range.
fn fingerprint_span(t: &mut RowText<'_>, statement: &str) -> Span {
    let mut digits = [0u8; 32];
    t.append(hex(fingerprint_hash(statement), 16, &mut digits))
}

/// [`statement_fingerprint`]'s 64-bit hash.
fn fingerprint_hash(statement: &str) -> u128 {
    FOLDED.with_borrow_mut(|folded| {
        folded.clear();
        fold_statement(statement, folded);
        let hash = xxhash_rust::xxh3::xxh3_64(folded);
        if folded.capacity() > FOLDED_MAX {
            *folded = Vec::new();
        }
        u128::from(hash)
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
        // No double space (a finder built per statement cost more than this scan).
        && !memchr::memchr_iter(b' ', bytes).any(|i| bytes.get(i + 1) == Some(&b' '))
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

/// A `Cow<'static, str>` as an `extra` value: the static text, or a copy in the row's buffer.
#[allow(clippy::ptr_arg)] // Which variant it is matters: a static text is not copied.
fn fixed(t: &mut RowText<'_>, s: &Cow<'static, str>) -> Value {
    match s {
        Cow::Borrowed(s) => Value::Const(s),
        Cow::Owned(s) => Value::Span(t.append(s)),
    }
}

/// The row of a pgaudit entry; `statement` is the entry's statement after
/// `<previously logged>` was filled (`None` when not logged); `raw` the record as logged.
pub fn audit_row(
    rec: &LogRecord<'_>,
    entry: &AuditEntry<'_>,
    statement: Option<&str>,
    src: &Source,
    raw: &str,
) -> AuditRow {
    let mut t = RowText::new(raw, ROW_ROOM);
    let fingerprint = statement.map(|s| fingerprint_span(&mut t, s));
    let extra = row_extra(rec, src, &mut t, &Specific::Audit(entry, fingerprint));
    let audit = Audit {
        command_tag: entry.command.clone(),
        audit_class: entry.class.clone(),
        object_type: t.opt(entry.object_type.as_deref()),
        object_name: t.opt(entry.object_name.as_deref()),
        statement: t.opt(statement),
        result: Outcome::Success,
        error_code: None,
    };
    assemble(rec, src, t, extra, audit)
}

/// The row of a failed statement pgaudit never logged, from its ERROR/FATAL record;
/// `raw` the record as logged.
pub fn unaudited_failure_row(
    rec: &LogRecord<'_>,
    statement: &str,
    src: &Source,
    raw: &str,
) -> AuditRow {
    let statement = normalize_statement(statement);
    let (class, command) = classify(statement);
    let mut t = RowText::new(raw, ROW_ROOM);
    let fingerprint = fingerprint_span(&mut t, statement);
    let message = t.put(&rec.message);
    let extra = row_extra(
        rec,
        src,
        &mut t,
        &Specific::Unaudited {
            fingerprint,
            message,
        },
    );
    let audit = Audit {
        command_tag: Cow::Owned(command),
        audit_class: Cow::Borrowed(class),
        object_type: None,
        object_name: None,
        statement: Some(t.put(statement)),
        result: Outcome::Failure,
        error_code: t.opt(rec.sql_state.as_deref()),
    };
    assemble(rec, src, t, extra, audit)
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
