//! [`AuditRow`]: one audit row, its texts kept in one buffer.
//!
//! Owns [`AuditRow`], [`Span`] and [`RowText`] (the buffer's builder). The buffer starts with
//! the raw record; a column whose text lies inside the raw record (most of them: the parsers
//! borrow fields from it) is only its range there, anything else is appended once. A row is
//! then one allocation for all its texts, where it was a dozen `String`s built, moved and
//! freed per record. Invariants: every span of a row lies within its buffer, on character
//! boundaries; a column reads back exactly the text it was given. Must not: parse anything.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::Outcome;
use super::extra::{Extra, ExtraView, Key};

/// A range of a row's text buffer, in 32 bits (rows are moved a few times each: small spans
/// keep them small). A record is far below 4 GiB (Kafka's message size); past that a span
/// reads as `""`, it never panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Self {
        let at = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
        Span {
            start: at(start),
            end: at(end),
        }
    }

    /// The text of this range of `text` (`""` if it is not a range of it).
    #[inline]
    pub fn get(self, text: &str) -> &str {
        text.get(self.start as usize..self.end as usize)
            .unwrap_or("")
    }
}

/// Appends `s` to a row's `text`; its range.
fn push(text: &mut String, s: &str) -> Span {
    let start = text.len();
    text.push_str(s);
    Span::new(start, text.len())
}

/// Builds a row's text buffer: the raw record first, then what does not lie inside it.
pub struct RowText<'r> {
    raw: &'r str,
    text: String,
}

impl<'r> RowText<'r> {
    /// A buffer holding `raw`, with room for `room` more bytes.
    pub fn new(raw: &'r str, room: usize) -> Self {
        let mut text = String::with_capacity(raw.len() + room);
        text.push_str(raw);
        RowText { raw, text }
    }

    /// The raw record's range.
    pub fn raw(&self) -> Span {
        Span::new(0, self.raw.len())
    }

    /// The range of `s`: where it lies inside the raw record when it is borrowed from it (the
    /// buffer starts with a copy), else where it was appended.
    #[inline]
    pub fn put(&mut self, s: &str) -> Span {
        // Addresses only: `s` is a slice of `raw` exactly when it starts inside it and fits.
        let off = (s.as_ptr() as usize).wrapping_sub(self.raw.as_ptr() as usize);
        if off <= self.raw.len() && s.len() <= self.raw.len() - off {
            return Span::new(off, off + s.len());
        }
        self.append(s)
    }

    /// [`RowText::put`] of an optional text.
    pub fn opt(&mut self, s: Option<&str>) -> Option<Span> {
        s.map(|s| self.put(s))
    }

    /// Appends `s`; its range.
    pub fn append(&mut self, s: &str) -> Span {
        push(&mut self.text, s)
    }

    /// Appends `parts` joined by `sep`; the range of the whole.
    pub fn append_joined(&mut self, parts: &[impl AsRef<str>], sep: &str) -> Span {
        let start = self.text.len();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                self.text.push_str(sep);
            }
            self.text.push_str(p.as_ref());
        }
        Span::new(start, self.text.len())
    }

    /// The finished buffer.
    pub fn finish(self) -> String {
        self.text
    }
}

/// One audit row (columns of the standard audit schema without the Kafka and ingest ones).
/// Texts are read through its methods.
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// When the statement was logged, UTC.
    pub event_time: Option<DateTime<Utc>>,
    /// Command (pgaudit's, or inferred for unaudited failures).
    pub command_tag: Cow<'static, str>,
    /// READ, WRITE, FUNCTION, ROLE, DDL, MISC, MISC_SET, UNKNOWN.
    pub audit_class: Cow<'static, str>,
    /// SUCCESS or FAILURE.
    pub result: Outcome,
    /// Log format the row was parsed from.
    pub src: &'static str,
    /// [`super::Source::origin`] of the record the row came from.
    pub origin: i64,
    pub(super) text: String,
    pub(super) db_name: Option<Span>,
    pub(super) user_name: Option<Span>,
    pub(super) client_addr: Option<Span>,
    pub(super) session_id: Option<Span>,
    pub(super) object_type: Option<Span>,
    pub(super) object_name: Option<Span>,
    pub(super) statement: Option<Span>,
    pub(super) error_code: Option<Span>,
    pub(super) extra: Extra,
    pub(super) raw: Span,
    pub(super) event_id: Span,
    pub(super) vxid: Option<Span>,
}

impl AuditRow {
    /// Bytes of text the row holds (every string column reads from it).
    pub fn text_len(&self) -> usize {
        self.text.len()
    }

    fn opt(&self, s: Option<Span>) -> Option<&str> {
        s.map(|s| s.get(&self.text))
    }

    /// Database.
    pub fn db_name(&self) -> Option<&str> {
        self.opt(self.db_name)
    }

    /// Role.
    pub fn user_name(&self) -> Option<&str> {
        self.opt(self.user_name)
    }

    /// Client address (`[local]` for Unix sockets).
    pub fn client_addr(&self) -> Option<&str> {
        self.opt(self.client_addr)
    }

    /// PostgreSQL session id.
    pub fn session_id(&self) -> Option<&str> {
        self.opt(self.session_id)
    }

    /// Object type.
    pub fn object_type(&self) -> Option<&str> {
        self.opt(self.object_type)
    }

    /// Object name.
    pub fn object_name(&self) -> Option<&str> {
        self.opt(self.object_name)
    }

    /// Normalized statement; `None` when not logged.
    pub fn statement(&self) -> Option<&str> {
        self.opt(self.statement)
    }

    /// SQLSTATE of the failure; `None` on success or where the format carries none.
    pub fn error_code(&self) -> Option<&str> {
        self.opt(self.error_code)
    }

    /// Sets the SQLSTATE of the failure.
    pub fn set_error_code(&mut self, code: Option<&str>) {
        self.error_code = code.map(|c| push(&mut self.text, c));
    }

    /// The record as logged.
    pub fn raw(&self) -> &str {
        self.raw.get(&self.text)
    }

    /// Deterministic id (see [`super::Source::event_id`]).
    pub fn event_id(&self) -> &str {
        self.event_id.get(&self.text)
    }

    /// Virtual transaction id (outcome matching; also in `extra`).
    pub fn vxid(&self) -> Option<&str> {
        self.opt(self.vxid)
    }

    /// The `extra` value of `key`.
    pub fn extra_get(&self, key: &str) -> Option<Cow<'_, str>> {
        self.extra.get(&self.text, key)
    }

    /// Whether `extra` has `key`.
    pub fn extra_contains(&self, key: &str) -> bool {
        self.extra.contains_key(key)
    }

    /// Calls `f` with each `extra` entry's key and text, in key order.
    pub fn for_each_extra(&self, f: impl FnMut(Key, &str)) {
        self.extra.for_each_key(&self.text, f);
    }

    /// The text columns, in schema order (for comparisons).
    fn texts(&self) -> [Option<&str>; 9] {
        [
            self.db_name(),
            self.user_name(),
            self.client_addr(),
            self.session_id(),
            self.object_type(),
            self.object_name(),
            self.statement(),
            self.error_code(),
            self.vxid(),
        ]
    }
}

/// Rows are equal when they read the same, however their buffers are laid out.
impl PartialEq for AuditRow {
    fn eq(&self, o: &Self) -> bool {
        let extra = |r: &AuditRow| {
            let mut v = Vec::new();
            r.for_each_extra(|k, x| v.push((k, x.to_owned())));
            v
        };
        (
            self.event_time,
            &self.command_tag,
            &self.audit_class,
            self.result,
        ) == (o.event_time, &o.command_tag, &o.audit_class, o.result)
            && (self.src, self.origin, self.raw(), self.event_id())
                == (o.src, o.origin, o.raw(), o.event_id())
            && self.texts() == o.texts()
            && extra(self) == extra(o)
    }
}

impl Eq for AuditRow {}

/// The columns in schema order, by name (snapshots and JSON output).
impl Serialize for AuditRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut r = s.serialize_struct("AuditRow", 16)?;
        r.serialize_field("event_time", &self.event_time)?;
        r.serialize_field("db_name", &self.db_name())?;
        r.serialize_field("user_name", &self.user_name())?;
        r.serialize_field("client_addr", &self.client_addr())?;
        r.serialize_field("session_id", &self.session_id())?;
        r.serialize_field("command_tag", &self.command_tag)?;
        r.serialize_field("object_type", &self.object_type())?;
        r.serialize_field("object_name", &self.object_name())?;
        r.serialize_field("statement", &self.statement())?;
        r.serialize_field("audit_class", &self.audit_class)?;
        r.serialize_field("result", &self.result)?;
        r.serialize_field("error_code", &self.error_code())?;
        r.serialize_field("extra", &ExtraView(&self.extra, &self.text))?;
        r.serialize_field("src", self.src)?;
        r.serialize_field("raw", self.raw())?;
        r.serialize_field("event_id", self.event_id())?;
        r.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_of_raw_are_ranges_and_the_rest_is_appended() {
        let raw = String::from("a,bc,d");
        let owned = String::from("bc");
        let mut t = RowText::new(&raw, 8);
        assert_eq!(t.put(&raw[2..4]), Span::new(2, 4));
        assert_eq!(t.put(&raw[6..]), Span::new(6, 6));
        assert_eq!(t.put(&owned), Span::new(6, 8));
        assert_eq!(t.put("static"), Span::new(8, 14));
        let joined = t.append_joined(&["x", "y"], ",");
        let text = t.finish();
        assert_eq!(text, "a,bc,dbcstaticx,y");
        assert_eq!(joined.get(&text), "x,y");
    }
}
