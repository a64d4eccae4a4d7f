//! The raw log record envelope: the typed Rust view of `schemas/raw_record.v4.avsc` and its
//! fast binary codec.
//!
//! Owns: [`RawRecord`], [`LogFormat`], [`RecordKind`], the embedded schema texts, a
//! hand-rolled encoder and decoder for exactly versions 3 (log records) and 4 (heartbeats),
//! which skip `apache_avro::Value` on the hot path, and
//! [`SourceCache`] (records of one file share one decoded, `Arc`-shared source).
//! Invariant: [`encode_datum`] produces bytes that `apache-avro` decodes with the schema of
//! [`EncodedSource::version`] to the same record (proptest in this file), and the fast
//! decoders accept exactly what `apache-avro` accepts for versions 3 and 4. Records written
//! with any other schema go through schema resolution in `wire.rs`. Must not: know about Kafka, files or the registry.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};

use apache_avro::Schema;
use apache_avro::types::Value;

use crate::error::AvroError;

/// Schema text of version 1 of the envelope (kept to test that old data stays readable).
pub const RAW_RECORD_SCHEMA_V1: &str = include_str!("../schemas/raw_record.v1.avsc");
/// Schema text of version 2 of the envelope (likewise).
pub const RAW_RECORD_SCHEMA_V2: &str = include_str!("../schemas/raw_record.v2.avsc");
/// Schema text of version 3 of the envelope (likewise).
pub const RAW_RECORD_SCHEMA_V3: &str = include_str!("../schemas/raw_record.v3.avsc");
/// Schema text of the current version (4) of the envelope.
pub const RAW_RECORD_SCHEMA: &str = include_str!("../schemas/raw_record.v4.avsc");

/// Every envelope schema version ever published, oldest first. Never remove an entry: old
/// messages in a topic keep naming these schemas by fingerprint.
pub static KNOWN_SCHEMAS: LazyLock<Vec<Schema>> = LazyLock::new(|| {
    [
        RAW_RECORD_SCHEMA_V1,
        RAW_RECORD_SCHEMA_V2,
        RAW_RECORD_SCHEMA_V3,
        RAW_RECORD_SCHEMA,
    ]
    .iter()
    .map(|text| Schema::parse_str(text).expect("embedded schema is valid (tested)"))
    .collect()
});

/// The current envelope schema.
pub fn current_schema() -> &'static Schema {
    KNOWN_SCHEMAS
        .last()
        .expect("at least one schema is embedded")
}

/// PostgreSQL log destination format of a source file.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `log_destination = csvlog`: one CSV record per log record, quoted newlines allowed.
    Csvlog,
    /// `log_destination = jsonlog` (PostgreSQL 15+): one JSON object per line.
    Jsonlog,
    /// `log_destination = stderr`: prefixed lines, continuation lines start with a tab.
    Stderr,
}

impl LogFormat {
    /// The name (`csvlog`, `jsonlog`, `stderr`): PostgreSQL's `log_destination` word.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Csvlog => "csvlog",
            LogFormat::Jsonlog => "jsonlog",
            LogFormat::Stderr => "stderr",
        }
    }

    /// All formats, in the order of the Avro enum symbols.
    pub const ALL: [LogFormat; 3] = [LogFormat::Csvlog, LogFormat::Jsonlog, LogFormat::Stderr];

    /// The Avro enum symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            LogFormat::Csvlog => "CSVLOG",
            LogFormat::Jsonlog => "JSONLOG",
            LogFormat::Stderr => "STDERR",
        }
    }

    fn index(self) -> i64 {
        match self {
            LogFormat::Csvlog => 0,
            LogFormat::Jsonlog => 1,
            LogFormat::Stderr => 2,
        }
    }

    fn from_index(i: i64) -> Option<Self> {
        usize::try_from(i)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// The format PostgreSQL gives a file of this extension (`.csv`, `.json`, anything else is
    /// stderr output of the logging collector).
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => LogFormat::Csvlog,
            Some("json") => LogFormat::Jsonlog,
            _ => LogFormat::Stderr,
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "csv" | "csvlog" => Ok(LogFormat::Csvlog),
            "json" | "jsonlog" => Ok(LogFormat::Jsonlog),
            "stderr" | "log" => Ok(LogFormat::Stderr),
            other => Err(format!(
                "unknown log format {other:?} (csvlog, jsonlog, stderr)"
            )),
        }
    }
}

/// What an envelope carries (Avro enum `RecordKind`; absent in data of schema versions before
/// 4, which read as [`RecordKind::Log`]).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// A log record of a file.
    #[default]
    Log,
    /// The shipper is alive and reading its server's logs: `read_at` is when it was sent; no
    /// file, no data. Never an audit row.
    Heartbeat,
}

impl RecordKind {
    fn index(self) -> i64 {
        match self {
            RecordKind::Log => 0,
            RecordKind::Heartbeat => 1,
        }
    }

    fn from_index(i: i64) -> Option<Self> {
        match i {
            0 => Some(RecordKind::Log),
            1 => Some(RecordKind::Heartbeat),
            _ => None,
        }
    }
}

/// Where a record came from: everything that is the same for every record of one file.
/// Texts are shared (`Arc<str>`): a decoder hands the same source to every record of a file
/// ([`SourceCache`]), and the processor keeps them in its rows without copying.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RecordSource {
    /// Logical server name (`primary`, `replica`, ...).
    pub server: Arc<str>,
    /// Host name of the machine the shipper runs on.
    pub host: Arc<str>,
    /// Version of the shipper.
    pub shipper_version: Arc<str>,
    /// Format of the file.
    pub format: LogFormat,
    /// Path of the file when it was read.
    pub source_path: Arc<str>,
    /// File identity that survives rename, reboot and remount (first-line fingerprint).
    pub file_id: Arc<str>,
    /// The server's `log_line_prefix` as the shipper was told it (stderr files).
    pub log_line_prefix: Option<Arc<str>>,
    /// IANA name of the server's `log_timezone`, when the shipper was told it.
    pub log_timezone: Option<Arc<str>>,
    /// What the envelope carries (a heartbeat's source has no file: empty path and id).
    pub kind: RecordKind,
}

/// One raw log record, as carried in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RawRecord {
    /// Where the record came from.
    pub source: RecordSource,
    /// Byte offset of the first byte of the record in its file.
    pub offset: i64,
    /// Record bytes exactly as written (possibly cut to the shipper's maximum, see `truncated`).
    pub data: Vec<u8>,
    /// When the shipper read it, microseconds since the Unix epoch (UTC).
    pub read_at_micros: i64,
    /// Whether `data` holds only the first bytes of a longer record.
    pub truncated: bool,
    /// Whole length of a truncated record; `None` when not truncated.
    pub original_length: Option<i64>,
}

/// A [`RawRecord`] whose bytes may borrow from the message it was decoded from (the processor
/// reads them in place instead of copying every record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecordRef<'a> {
    /// Where the record came from.
    pub source: RecordSource,
    /// Byte offset of the first byte of the record in its file.
    pub offset: i64,
    /// Record bytes exactly as written (see [`RawRecord::data`]).
    pub data: Cow<'a, [u8]>,
    /// When the shipper read it, microseconds since the Unix epoch (UTC).
    pub read_at_micros: i64,
    /// Whether `data` holds only the first bytes of a longer record.
    pub truncated: bool,
    /// Whole length of a truncated record; `None` when not truncated.
    pub original_length: Option<i64>,
}

impl RawRecordRef<'_> {
    /// The record with its bytes owned.
    pub fn into_owned(self) -> RawRecord {
        RawRecord {
            source: self.source,
            offset: self.offset,
            data: self.data.into_owned(),
            read_at_micros: self.read_at_micros,
            truncated: self.truncated,
            original_length: self.original_length,
        }
    }
}

impl From<RawRecord> for RawRecordRef<'static> {
    fn from(r: RawRecord) -> Self {
        RawRecordRef {
            source: r.source,
            offset: r.offset,
            data: Cow::Owned(r.data),
            read_at_micros: r.read_at_micros,
            truncated: r.truncated,
            original_length: r.original_length,
        }
    }
}

/// The per-file parts of the envelope, encoded once per file: the fields before a record's
/// own and the fields after them.
///
/// Log records are written with schema version 3 (its fields are a prefix of version 4's:
/// processors that predate version 4 keep reading them, so shippers can be upgraded, and
/// processors rolled back, in any order); only heartbeats need version 4, whose last field
/// is the kind. The encoder frames each datum with the fingerprint or registry id of
/// [`EncodedSource::version`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedSource {
    head: Vec<u8>,
    tail: Vec<u8>,
    kind: RecordKind,
}

impl EncodedSource {
    /// The schema version its datums are written with: 3 for log records, 4 for heartbeats.
    pub fn version(&self) -> u8 {
        match self.kind {
            RecordKind::Log => 3,
            RecordKind::Heartbeat => 4,
        }
    }
}

/// Encodes the per-file parts of the envelope once; [`encode_datum`] puts a record's fields
/// between them.
pub fn encode_source(source: &RecordSource) -> EncodedSource {
    let mut head = Vec::with_capacity(128);
    put_bytes(&mut head, source.server.as_bytes());
    put_bytes(&mut head, source.host.as_bytes());
    put_bytes(&mut head, source.shipper_version.as_bytes());
    put_long(&mut head, source.format.index());
    put_bytes(&mut head, source.source_path.as_bytes());
    put_bytes(&mut head, source.file_id.as_bytes());
    let mut tail = Vec::new();
    for text in [&source.log_line_prefix, &source.log_timezone] {
        match text {
            None => put_long(&mut tail, 0),
            Some(t) => {
                put_long(&mut tail, 1);
                put_bytes(&mut tail, t.as_bytes());
            }
        }
    }
    if source.kind != RecordKind::Log {
        put_long(&mut tail, source.kind.index());
    }
    EncodedSource {
        head,
        tail,
        kind: source.kind,
    }
}

/// Per-record fields of the envelope, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RecordFields<'a> {
    /// Byte offset in the file.
    pub offset: i64,
    /// Record bytes (already cut when truncated).
    pub data: &'a [u8],
    /// Read time, microseconds since the epoch.
    pub read_at_micros: i64,
    /// Whole length when truncated.
    pub original_length: Option<i64>,
}

/// Appends the Avro datum of one record to `out`, given [`encode_source`] of its file, with
/// the schema version of [`EncodedSource::version`].
pub fn encode_datum(out: &mut Vec<u8>, source: &EncodedSource, fields: RecordFields<'_>) {
    out.reserve(source.head.len() + source.tail.len() + fields.data.len() + 40);
    out.extend_from_slice(&source.head);
    put_long(out, fields.offset);
    put_bytes(out, fields.data);
    put_long(out, fields.read_at_micros);
    out.push(u8::from(fields.original_length.is_some()));
    match fields.original_length {
        None => put_long(out, 0),
        Some(len) => {
            put_long(out, 1);
            put_long(out, len);
        }
    }
    out.extend_from_slice(&source.tail);
}

/// Encodes a whole record (schema version 3 for log records, 4 for heartbeats). Convenience
/// for tests and tools.
pub fn encode_record(record: &RawRecord) -> Vec<u8> {
    let mut out = Vec::new();
    encode_datum(
        &mut out,
        &encode_source(&record.source),
        RecordFields {
            offset: record.offset,
            data: &record.data,
            read_at_micros: record.read_at_micros,
            original_length: record.original_length,
        },
    );
    out
}

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn long(&mut self) -> Result<i64, AvroError> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| malformed("datum ends inside a long"))?;
            self.pos += 1;
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(malformed("varint longer than 10 bytes"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], AvroError> {
        let len = usize::try_from(self.long()?).map_err(|_| malformed("negative length"))?;
        let end = self
            .pos
            .checked_add(len)
            .ok_or_else(|| malformed("length overflow"))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or_else(|| malformed("datum ends inside bytes"))?;
        self.pos = end;
        Ok(s)
    }

    fn string(&mut self) -> Result<Arc<str>, AvroError> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(Arc::from)
            .map_err(|_| malformed("string is not UTF-8"))
    }

    fn optional_string(&mut self) -> Result<Option<Arc<str>>, AvroError> {
        match self.long()? {
            0 => Ok(None),
            1 => self.string().map(Some),
            _ => Err(malformed("union branch out of range")),
        }
    }

    fn boolean(&mut self) -> Result<bool, AvroError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| malformed("datum ends inside a boolean"))?;
        self.pos += 1;
        match b {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(malformed("boolean byte is neither 0 nor 1")),
        }
    }
}

fn malformed(what: &str) -> AvroError {
    AvroError::MalformedDatum {
        reason: what.to_owned(),
    }
}

/// Decodes a datum written with exactly the current schema.
pub fn decode_current_datum(datum: &[u8]) -> Result<RawRecord, AvroError> {
    decode_current_datum_cached(datum, &mut SourceCache::default())
}

/// Decodes a datum written with exactly schema version 3 (log records: its fields are a
/// prefix of the current schema's; the kind is `LOG`), its bytes borrowed from `datum`.
pub fn decode_v3_datum_ref<'a>(
    datum: &'a [u8],
    cache: &mut SourceCache,
) -> Result<RawRecordRef<'a>, AvroError> {
    decode_fast(datum, cache, false)
}

/// Decodes a datum written with exactly the current schema, taking its source from `cache`
/// when a recent datum had the same source bytes.
pub fn decode_current_datum_cached(
    datum: &[u8],
    cache: &mut SourceCache,
) -> Result<RawRecord, AvroError> {
    decode_current_datum_ref(datum, cache).map(RawRecordRef::into_owned)
}

/// [`decode_current_datum_cached`] with the record's bytes borrowed from `datum`.
pub fn decode_current_datum_ref<'a>(
    datum: &'a [u8],
    cache: &mut SourceCache,
) -> Result<RawRecordRef<'a>, AvroError> {
    decode_fast(datum, cache, true)
}

/// The fast decoder of version 4 datums (`with_kind`) and version 3 ones (without).
fn decode_fast<'a>(
    datum: &'a [u8],
    cache: &mut SourceCache,
    with_kind: bool,
) -> Result<RawRecordRef<'a>, AvroError> {
    let mut c = Cursor { buf: datum, pos: 0 };
    for _ in 0..3 {
        c.bytes()?;
    }
    c.long()?;
    c.bytes()?;
    c.bytes()?;
    let head = &datum[..c.pos];
    let offset = c.long()?;
    let data = Cow::Borrowed(c.bytes()?);
    let read_at_micros = c.long()?;
    let truncated = c.boolean()?;
    let original_length = match c.long()? {
        0 => None,
        1 => Some(c.long()?),
        _ => return Err(malformed("union branch out of range")),
    };
    let tail_start = c.pos;
    for _ in 0..2 {
        match c.long()? {
            0 => {}
            1 => {
                c.bytes()?;
            }
            _ => return Err(malformed("union branch out of range")),
        }
    }
    if with_kind {
        c.long()?;
    }
    if c.pos != datum.len() {
        return Err(malformed("trailing bytes after the datum"));
    }
    let tail = &datum[tail_start..];
    let source = match cache.get(head, tail) {
        Some(source) => source,
        None => {
            let mut source = decode_source(&mut Cursor { buf: datum, pos: 0 })?;
            let mut t = Cursor { buf: tail, pos: 0 };
            source.log_line_prefix = t.optional_string()?;
            source.log_timezone = t.optional_string()?;
            if with_kind {
                source.kind =
                    RecordKind::from_index(t.long()?).ok_or_else(|| malformed("unknown kind"))?;
            }
            cache.insert(head, tail, &source);
            source
        }
    };
    Ok(RawRecordRef {
        source,
        offset,
        data,
        read_at_micros,
        truncated,
        original_length,
    })
}

fn decode_source(c: &mut Cursor<'_>) -> Result<RecordSource, AvroError> {
    Ok(RecordSource {
        server: c.string()?,
        host: c.string()?,
        shipper_version: c.string()?,
        format: LogFormat::from_index(c.long()?).ok_or_else(|| malformed("unknown format"))?,
        source_path: c.string()?,
        file_id: c.string()?,
        log_line_prefix: None,
        log_timezone: None,
        kind: RecordKind::Log,
    })
}

/// The sources of recently decoded datums by their encoded bytes. Every record of one file
/// has the same source bytes (before and after its own fields), so a hit costs two
/// comparisons instead of seven strings validated and allocated per record. Bounded:
/// [`SourceCache::ENTRIES`] sources, the oldest replaced first.
#[derive(Debug, Default)]
pub struct SourceCache {
    entries: Vec<(Vec<u8>, Vec<u8>, RecordSource)>,
    /// Entry of the last hit or insert, checked first.
    last: usize,
    /// Entry the next insert replaces once full.
    next: usize,
}

impl SourceCache {
    /// Sources kept (a consumer reads a handful of files per partition at a time).
    pub const ENTRIES: usize = 16;

    fn get(&mut self, head: &[u8], tail: &[u8]) -> Option<RecordSource> {
        let hit = |(h, t, _): &(Vec<u8>, Vec<u8>, RecordSource)| h == head && t == tail;
        if let Some(e) = self.entries.get(self.last)
            && hit(e)
        {
            return Some(e.2.clone());
        }
        let i = self.entries.iter().position(hit)?;
        self.last = i;
        Some(self.entries[i].2.clone())
    }

    fn insert(&mut self, head: &[u8], tail: &[u8], source: &RecordSource) {
        let entry = (head.to_vec(), tail.to_vec(), source.clone());
        if self.entries.len() < Self::ENTRIES {
            self.last = self.entries.len();
            self.entries.push(entry);
        } else {
            self.last = self.next;
            self.entries[self.next] = entry;
            self.next = (self.next + 1) % Self::ENTRIES;
        }
    }
}

/// Converts a value already resolved to the current schema into a record.
pub fn record_from_value(value: Value) -> Result<RawRecord, AvroError> {
    let Value::Record(fields) = value else {
        return Err(malformed("not a record"));
    };
    let mut r = RawRecord {
        source: RecordSource {
            server: "".into(),
            host: "".into(),
            shipper_version: "".into(),
            format: LogFormat::Stderr,
            source_path: "".into(),
            file_id: "".into(),
            log_line_prefix: None,
            log_timezone: None,
            kind: RecordKind::Log,
        },
        offset: 0,
        data: Vec::new(),
        read_at_micros: 0,
        truncated: false,
        original_length: None,
    };
    for (name, v) in fields {
        match (name.as_str(), v) {
            ("server", Value::String(s)) => r.source.server = s.into(),
            ("host", Value::String(s)) => r.source.host = s.into(),
            ("shipper_version", Value::String(s)) => r.source.shipper_version = s.into(),
            ("format", Value::Enum(i, _)) => {
                r.source.format = LogFormat::from_index(i64::from(i))
                    .ok_or_else(|| malformed("unknown format"))?
            }
            ("source_path", Value::String(s)) => r.source.source_path = s.into(),
            ("file_id", Value::String(s)) => r.source.file_id = s.into(),
            ("offset", Value::Long(n)) => r.offset = n,
            ("data", Value::Bytes(b)) => r.data = b,
            ("read_at", Value::TimestampMicros(n) | Value::Long(n)) => r.read_at_micros = n,
            ("truncated", Value::Boolean(b)) => r.truncated = b,
            ("original_length", Value::Union(_, inner)) => {
                r.original_length = match *inner {
                    Value::Long(n) => Some(n),
                    _ => None,
                }
            }
            ("log_line_prefix", Value::Union(_, inner)) => {
                r.source.log_line_prefix = match *inner {
                    Value::String(s) => Some(s.into()),
                    _ => None,
                }
            }
            ("log_timezone", Value::Union(_, inner)) => {
                r.source.log_timezone = match *inner {
                    Value::String(s) => Some(s.into()),
                    _ => None,
                }
            }
            ("kind", Value::Enum(i, _)) => {
                r.source.kind =
                    RecordKind::from_index(i64::from(i)).ok_or_else(|| malformed("unknown kind"))?
            }
            (other, v) => {
                return Err(malformed(&format!("unexpected field {other} = {v:?}")));
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use proptest::prelude::*;

    pub(crate) fn arb_record() -> impl Strategy<Value = RawRecord> {
        (
            (
                "[a-z]{1,12}",
                ".{0,20}",
                "[0-9.]{1,8}",
                0usize..3,
                ".{0,60}",
                "[0-9a-f:-]{0,40}",
            ),
            any::<i64>(),
            proptest::collection::vec(any::<u8>(), 0..2000),
            any::<i64>(),
            proptest::option::of(any::<i64>()),
            (
                proptest::option::of(".{0,30}"),
                proptest::option::of("[A-Za-z/_]{0,20}"),
                any::<bool>(),
            ),
        )
            .prop_map(
                |(
                    (server, host, v, f, path, id),
                    offset,
                    data,
                    read_at,
                    orig,
                    (prefix, tz, beat),
                )| {
                    RawRecord {
                        source: RecordSource {
                            server: server.into(),
                            host: host.into(),
                            shipper_version: v.into(),
                            format: LogFormat::ALL[f],
                            source_path: path.into(),
                            file_id: id.into(),
                            log_line_prefix: prefix.map(Into::into),
                            log_timezone: tz.map(Into::into),
                            kind: if beat {
                                RecordKind::Heartbeat
                            } else {
                                RecordKind::Log
                            },
                        },
                        offset,
                        data,
                        read_at_micros: read_at,
                        truncated: orig.is_some(),
                        original_length: orig,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn fast_codec_agrees_with_apache_avro(record in arb_record()) {
            // Log records are version 3 datums, heartbeats version 4 ones.
            let datum = encode_record(&record);
            let version = encode_source(&record.source).version();
            let schema = &KNOWN_SCHEMAS[usize::from(version) - 1];
            let value = GenericDatumReader::builder(schema)
                .build()
                .unwrap()
                .read_value(&mut &datum[..])
                .unwrap();
            prop_assert_eq!(record_from_value(value).unwrap(), record.clone());
            prop_assert_eq!(decode_datum(&datum, version).unwrap(), record.clone());
            // A version 4 datum of a log record (kind written: what other writers may send).
            let mut v4 = encode_record(&record);
            if version == 3 {
                v4.push(0);
            }
            let value = GenericDatumReader::builder(current_schema())
                .build()
                .unwrap()
                .read_value(&mut &v4[..])
                .unwrap();
            prop_assert_eq!(record_from_value(value).unwrap(), record.clone());
            prop_assert_eq!(decode_current_datum(&v4).unwrap(), record);
        }

        /// A cache shared by records of many files (more than it holds, in any order) decodes
        /// each exactly as a fresh decode does.
        #[test]
        fn cached_decoding_agrees_with_uncached(
            records in proptest::collection::vec(arb_record(), 1..6),
            order in proptest::collection::vec(0usize..64, 1..80),
        ) {
            let mut cache = SourceCache::default();
            for (n, i) in order.iter().enumerate() {
                let mut record = records[i % records.len()].clone();
                // Many files: more distinct sources than the cache holds.
                let id = format!("{}-{}", record.source.file_id, i % 20);
                record.source.file_id = id.into();
                record.offset = n as i64;
                let datum = encode_record(&record);
                let version = encode_source(&record.source).version();
                let decoded = if version == 3 {
                    decode_v3_datum_ref(&datum, &mut cache).map(RawRecordRef::into_owned)
                } else {
                    decode_current_datum_cached(&datum, &mut cache)
                };
                prop_assert_eq!(decoded.unwrap(), record);
            }
            prop_assert!(cache.entries.len() <= SourceCache::ENTRIES);
        }

        #[test]
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_current_datum(&bytes);
            let _ = decode_v3_datum_ref(&bytes, &mut SourceCache::default());
        }
    }

    fn decode_datum(datum: &[u8], version: u8) -> Result<RawRecord, AvroError> {
        let mut cache = SourceCache::default();
        match version {
            3 => decode_v3_datum_ref(datum, &mut cache).map(RawRecordRef::into_owned),
            _ => decode_current_datum_cached(datum, &mut cache),
        }
    }

    #[test]
    fn schemas_parse_and_match_snapshot() {
        assert_eq!(KNOWN_SCHEMAS.len(), 4);
        insta::assert_snapshot!("canonical_v4", current_schema().canonical_form());
        insta::assert_snapshot!("canonical_v3", KNOWN_SCHEMAS[2].canonical_form());
        insta::assert_snapshot!("canonical_v2", KNOWN_SCHEMAS[1].canonical_form());
        insta::assert_snapshot!("canonical_v1", KNOWN_SCHEMAS[0].canonical_form());
    }

    #[test]
    fn format_from_extension() {
        use std::path::Path;
        assert_eq!(
            LogFormat::from_path(Path::new("/l/postgresql-1.csv")),
            LogFormat::Csvlog
        );
        assert_eq!(
            LogFormat::from_path(Path::new("/l/postgresql-1.json")),
            LogFormat::Jsonlog
        );
        assert_eq!(
            LogFormat::from_path(Path::new("/l/postgresql-1.log")),
            LogFormat::Stderr
        );
        assert_eq!("jsonlog".parse::<LogFormat>(), Ok(LogFormat::Jsonlog));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
