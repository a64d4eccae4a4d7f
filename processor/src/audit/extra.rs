//! The `extra` column's value: the few key/value pairs of a row that have no column.
//!
//! Owns [`Extra`], [`Key`] and [`Value`] (numbers and fixed texts stay unformatted until
//! written; texts are mostly ranges of the row's buffer, read through it). Invariants: keys
//! are unique and kept in ascending order of their names (the order the table's map column,
//! serialization and snapshots see, the same as a `BTreeMap`'s); keys are the closed set
//! [`Key`], whose variants are declared in name order so comparing variants compares names
//! (tested). Must not: hold anything but [`Key`]s — it is one slot per key, built for the dozen
//! entries of one row (a `BTreeMap` of owned strings cost a fifth of the per-record time in
//! allocation and drops; a sorted vector, a twentieth in inserting).

use std::borrow::Cow;
use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::row::Span;

/// The names `extra` can hold, declared in name order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[allow(missing_docs)] // Each is its name.
pub enum Key {
    ApplicationName,
    AuditLogged,
    AuditType,
    BackendType,
    ErrorMessage,
    Host,
    LeaderPid,
    Parameters,
    ProcessId,
    QueryId,
    Rows,
    SessionLineNum,
    SourceFile,
    StatementFingerprint,
    StatementId,
    StatementLogged,
    SubstatementId,
    Txid,
    Vxid,
}

impl Key {
    /// Every key, in order.
    pub const ALL: [Key; 19] = [
        Key::ApplicationName,
        Key::AuditLogged,
        Key::AuditType,
        Key::BackendType,
        Key::ErrorMessage,
        Key::Host,
        Key::LeaderPid,
        Key::Parameters,
        Key::ProcessId,
        Key::QueryId,
        Key::Rows,
        Key::SessionLineNum,
        Key::SourceFile,
        Key::StatementFingerprint,
        Key::StatementId,
        Key::StatementLogged,
        Key::SubstatementId,
        Key::Txid,
        Key::Vxid,
    ];

    /// The name in the map column.
    pub fn as_str(self) -> &'static str {
        match self {
            Key::ApplicationName => "application_name",
            Key::AuditLogged => "audit_logged",
            Key::AuditType => "audit_type",
            Key::BackendType => "backend_type",
            Key::ErrorMessage => "error_message",
            Key::Host => "host",
            Key::LeaderPid => "leader_pid",
            Key::Parameters => "parameters",
            Key::ProcessId => "process_id",
            Key::QueryId => "query_id",
            Key::Rows => "rows",
            Key::SessionLineNum => "session_line_num",
            Key::SourceFile => "source_file",
            Key::StatementFingerprint => "statement_fingerprint",
            Key::StatementId => "statement_id",
            Key::StatementLogged => "statement_logged",
            Key::SubstatementId => "substatement_id",
            Key::Txid => "txid",
            Key::Vxid => "vxid",
        }
    }
}

/// A value: text, or what becomes text only when it is written (no allocation per row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Text.
    Text(String),
    /// Text shared with other rows (the file's host and path).
    Shared(Arc<str>),
    /// A number, written in decimal.
    Int(i64),
    /// A fixed text.
    Const(&'static str),
    /// A range of the row's text buffer (see [`super::row`]).
    Span(Span),
}

impl From<Span> for Value {
    fn from(s: Span) -> Self {
        Value::Span(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<Arc<str>> for Value {
    fn from(s: Arc<str>) -> Self {
        Value::Shared(s)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<&'static str> for Value {
    fn from(s: &'static str) -> Self {
        Value::Const(s)
    }
}

impl Value {
    /// The text, formatting a number in `buf`, a span read from the row's `text`.
    fn as_str<'a>(&'a self, text: &'a str, buf: &'a mut itoa::Buffer) -> &'a str {
        match self {
            Value::Text(s) => s,
            Value::Shared(s) => s,
            Value::Int(v) => buf.format(*v),
            Value::Const(s) => s,
            Value::Span(s) => s.get(text),
        }
    }
}

/// One slot per key, in key order (a boxed array: setting an entry is one store, no search and
/// no shifting; iterating skips the empty slots).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    slots: Box<[Option<Value>; Key::ALL.len()]>,
    len: u8,
}

impl Default for Extra {
    fn default() -> Self {
        Extra {
            slots: Box::new([const { None }; Key::ALL.len()]),
            len: 0,
        }
    }
}

impl Extra {
    /// Sets `key` to `value` (replacing an earlier value).
    #[inline]
    pub fn insert(&mut self, key: Key, value: impl Into<Value>) {
        let slot = &mut self.slots[key as usize];
        if slot.is_none() {
            self.len += 1;
        }
        *slot = Some(value.into());
    }

    /// The entries, in key order.
    fn entries(&self) -> impl Iterator<Item = (Key, &Value)> {
        Key::ALL
            .iter()
            .zip(self.slots.iter())
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
    }

    /// The value of the key named `key` (spans read from the row's `text`).
    pub fn get<'a>(&'a self, text: &'a str, key: &str) -> Option<Cow<'a, str>> {
        self.entries()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| match v {
                Value::Text(s) => Cow::Borrowed(s.as_str()),
                Value::Shared(s) => Cow::Borrowed(&**s),
                Value::Const(s) => Cow::Borrowed(*s),
                Value::Int(i) => Cow::Owned(i.to_string()),
                Value::Span(s) => Cow::Borrowed(s.get(text)),
            })
    }

    /// Whether `key` is set.
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries().any(|(k, _)| k.as_str() == key)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f` with each entry's name and text (spans read from the row's `text`), in key
    /// order.
    pub fn for_each(&self, text: &str, mut f: impl FnMut(&'static str, &str)) {
        self.for_each_key(text, |k, v| f(k.as_str(), v));
    }

    /// [`Extra::for_each`] with the keys themselves.
    pub fn for_each_key(&self, text: &str, mut f: impl FnMut(Key, &str)) {
        let mut buf = itoa::Buffer::new();
        for (k, v) in self.entries() {
            f(k, v.as_str(text, &mut buf));
        }
    }
}

/// An [`Extra`] with the row text its spans read from, serialized as a map.
pub struct ExtraView<'a>(pub &'a Extra, pub &'a str);

impl Serialize for ExtraView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        let mut buf = itoa::Buffer::new();
        for (k, v) in self.0.entries() {
            m.serialize_entry(k.as_str(), v.as_str(self.1, &mut buf))?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn keys_are_declared_in_name_order() {
        let names: Vec<&str> = Key::ALL.iter().map(|k| k.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(names, sorted);
        assert!(Key::ALL.windows(2).all(|w| w[0] < w[1]));
        // A key's slot is its place in `ALL`.
        assert!(Key::ALL.iter().enumerate().all(|(i, k)| *k as usize == i));
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreemap(ops in proptest::collection::vec((0..Key::ALL.len(), "[a-z]{0,4}", any::<Option<i64>>()), 0..30)) {
            let mut extra = Extra::default();
            let mut model = BTreeMap::new();
            for (k, v, int) in ops {
                match int {
                    Some(i) => extra.insert(Key::ALL[k], i),
                    None => extra.insert(Key::ALL[k], v.clone()),
                }
                model.insert(Key::ALL[k].as_str(), int.map_or(v, |i| i.to_string()));
            }
            prop_assert_eq!(extra.len(), model.len());
            let mut entries = Vec::new();
            extra.for_each("", |k, v| entries.push((k, v.to_owned())));
            prop_assert!(entries.iter().map(|(k, v)| (*k, v.as_str())).eq(model.iter().map(|(k, v)| (*k, v.as_str()))));
            for k in Key::ALL {
                let got = extra.get("", k.as_str());
                prop_assert_eq!(got.as_deref(), model.get(k.as_str()).map(String::as_str));
            }
            prop_assert_eq!(serde_json::to_string(&ExtraView(&extra, "")).unwrap(), serde_json::to_string(&model).unwrap());
        }
    }
}
