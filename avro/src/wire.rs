//! Wire formats of a Kafka message value: Avro single-object encoding and Confluent framing.
//!
//! Owns [`Encoder`] (current schema, one of the two framings) and [`Decoder`] (accepts both,
//! resolves any known or registered writer schema into the current one).
//! Single-object: `c3 01` + 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint + datum.
//! Confluent: `00` + 4-byte big-endian registry schema id + datum.
//! Invariant: the decoder never guesses a schema; an unknown fingerprint or id is an error.
//! Must not: talk to Kafka.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;

use crate::error::AvroError;
use crate::record::{
    EncodedSource, KNOWN_SCHEMAS, RawRecord, RawRecordRef, RecordFields, SourceCache,
    current_schema, decode_current_datum_ref, decode_v3_datum_ref, encode_datum, record_from_value,
};
use crate::registry::Registry;

/// First two bytes of an Avro single-object encoded message.
pub const SINGLE_OBJECT_MARKER: [u8; 2] = [0xC3, 0x01];
/// First byte of a Confluent Schema Registry framed message.
pub const CONFLUENT_MAGIC: u8 = 0;

/// The 8 fingerprint bytes of a schema as carried in the single-object header.
pub fn fingerprint(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>().bytes;
    let mut out = [0u8; 8];
    out.copy_from_slice(&fp[..8]);
    out
}

/// Encodes envelopes in one framing: log records with schema version 3, heartbeats with
/// version 4 (see [`EncodedSource`]).
#[derive(Debug, Clone)]
pub struct Encoder {
    /// Header of log records (version 3).
    log: Vec<u8>,
    /// Header of heartbeats (version 4).
    heartbeat: Vec<u8>,
}

fn single_object_header(schema: &Schema) -> Vec<u8> {
    let mut header = SINGLE_OBJECT_MARKER.to_vec();
    header.extend_from_slice(&fingerprint(schema));
    header
}

fn confluent_header(schema_id: u32) -> Vec<u8> {
    let mut header = vec![CONFLUENT_MAGIC];
    header.extend_from_slice(&schema_id.to_be_bytes());
    header
}

impl Encoder {
    /// Single-object encoding: works without any registry.
    pub fn single_object() -> Self {
        Encoder {
            log: single_object_header(&KNOWN_SCHEMAS[2]),
            heartbeat: single_object_header(current_schema()),
        }
    }

    /// Confluent framing with the ids the registry gave schema versions 3 and 4
    /// ([`crate::Registry::register_envelope`]).
    pub fn confluent(ids: crate::registry::EnvelopeIds) -> Self {
        Encoder {
            log: confluent_header(ids.log),
            heartbeat: confluent_header(ids.heartbeat),
        }
    }

    fn header(&self, version: u8) -> &[u8] {
        if version >= 4 {
            &self.heartbeat
        } else {
            &self.log
        }
    }

    /// Encodes one message: header, then the datum of the file's pre-encoded source and fields.
    pub fn encode(&self, source: &EncodedSource, fields: RecordFields<'_>) -> Vec<u8> {
        let header = self.header(source.version());
        let mut out = Vec::with_capacity(header.len() + fields.data.len() + 256);
        out.extend_from_slice(header);
        encode_datum(&mut out, source, fields);
        out
    }

    /// Encodes a whole record (tests and tools).
    pub fn encode_record(&self, record: &RawRecord) -> Vec<u8> {
        let version = if record.source.kind == crate::RecordKind::Log {
            3
        } else {
            4
        };
        let mut out = self.header(version).to_vec();
        out.extend_from_slice(&crate::record::encode_record(record));
        out
    }
}

/// Decodes message values in either framing into current-schema records.
#[derive(Debug, Clone)]
pub struct Decoder {
    by_fingerprint: HashMap<[u8; 8], usize>,
    current: [u8; 8],
    /// Fingerprint of version 3 (log records, read by the fast decoder too).
    v3: [u8; 8],
    registry: Option<Registry>,
    /// Sources of recent current-schema datums (clones of a decoder share it).
    sources: Arc<Mutex<SourceCache>>,
}

impl Decoder {
    /// A decoder; `registry` is needed only for Confluent-framed messages.
    pub fn new(registry: Option<Registry>) -> Self {
        let by_fingerprint = KNOWN_SCHEMAS
            .iter()
            .enumerate()
            .map(|(i, s)| (fingerprint(s), i))
            .collect();
        Decoder {
            by_fingerprint,
            current: fingerprint(current_schema()),
            v3: fingerprint(&KNOWN_SCHEMAS[2]),
            registry,
            sources: Arc::default(),
        }
    }

    /// A current-schema datum, its source shared with earlier records of the same file, its
    /// bytes borrowed from `datum`.
    fn decode_current_ref<'a>(&self, datum: &'a [u8]) -> Result<RawRecordRef<'a>, AvroError> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        decode_current_datum_ref(datum, &mut sources)
    }

    /// A version 3 datum (log records), by the same fast decoder.
    fn decode_v3_ref<'a>(&self, datum: &'a [u8]) -> Result<RawRecordRef<'a>, AvroError> {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        decode_v3_datum_ref(datum, &mut sources)
    }

    /// Decodes a message value of either framing.
    pub async fn decode(&self, msg: &[u8]) -> Result<RawRecord, AvroError> {
        self.decode_ref(msg).await.map(RawRecordRef::into_owned)
    }

    /// [`Decoder::decode`], the record's bytes borrowed from `msg` when it was written with
    /// the current schema.
    pub async fn decode_ref<'a>(&self, msg: &'a [u8]) -> Result<RawRecordRef<'a>, AvroError> {
        match msg.first() {
            Some(&CONFLUENT_MAGIC) => {
                let id_bytes: [u8; 4] = msg
                    .get(1..5)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(AvroError::TooShort { len: msg.len() })?;
                let schema_id = u32::from_be_bytes(id_bytes);
                let registry = self
                    .registry
                    .as_ref()
                    .ok_or(AvroError::NoRegistry { schema_id })?;
                let writer = registry.schema(schema_id).await?;
                let datum = &msg[5..];
                let fp = fingerprint(&writer);
                if fp == self.current {
                    self.decode_current_ref(datum)
                } else if fp == self.v3 {
                    self.decode_v3_ref(datum)
                } else {
                    resolve(&writer, datum, &format!("registry id {schema_id}"))
                        .map(RawRecordRef::from)
                }
            }
            _ => self.decode_single_object_ref(msg),
        }
    }

    /// Decodes a single-object encoded message without any I/O.
    pub fn decode_single_object(&self, msg: &[u8]) -> Result<RawRecord, AvroError> {
        self.decode_single_object_ref(msg)
            .map(RawRecordRef::into_owned)
    }

    /// [`Decoder::decode_single_object`], the record's bytes borrowed from `msg` when it was
    /// written with the current schema.
    pub fn decode_single_object_ref<'a>(
        &self,
        msg: &'a [u8],
    ) -> Result<RawRecordRef<'a>, AvroError> {
        if msg.len() < 10 {
            return Err(AvroError::TooShort { len: msg.len() });
        }
        if msg[..2] != SINGLE_OBJECT_MARKER {
            return Err(AvroError::UnknownWireFormat {
                first: msg[..2].to_vec(),
            });
        }
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&msg[2..10]);
        let datum = &msg[10..];
        if fp == self.current {
            return self.decode_current_ref(datum);
        }
        if fp == self.v3 {
            return self.decode_v3_ref(datum);
        }
        let index = self
            .by_fingerprint
            .get(&fp)
            .ok_or_else(|| AvroError::UnknownFingerprint {
                fingerprint: fp.iter().map(|b| format!("{b:02x}")).collect(),
            })?;
        resolve(&KNOWN_SCHEMAS[*index], datum, "known schema").map(RawRecordRef::from)
    }
}

fn resolve(writer: &Schema, datum: &[u8], which: &str) -> Result<RawRecord, AvroError> {
    let incompatible = |e: apache_avro::Error| AvroError::Incompatible {
        schema: which.into(),
        reason: e.to_string(),
    };
    let reader = GenericDatumReader::builder(writer)
        .reader_schema(current_schema())
        .build()
        .map_err(incompatible)?;
    let mut slice = datum;
    let value = reader
        .read_value(&mut slice)
        .map_err(|e| AvroError::MalformedDatum {
            reason: format!("{which}: {e}"),
        })?;
    if !slice.is_empty() {
        return Err(AvroError::MalformedDatum {
            reason: format!("{which}: trailing bytes"),
        });
    }
    record_from_value(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{LogFormat, RecordSource};
    use apache_avro::types::Value;

    fn sample() -> RawRecord {
        RawRecord {
            source: RecordSource {
                server: "primary".into(),
                host: "db1".into(),
                shipper_version: "0.1.0".into(),
                format: LogFormat::Csvlog,
                source_path: "/var/log/postgresql/postgresql.csv".into(),
                file_id: "00000000000000ff".into(),
                log_line_prefix: Some("%m [%p] %q%c %v %e ".into()),
                log_timezone: Some("Europe/Berlin".into()),
                kind: crate::RecordKind::Log,
            },
            offset: 4096,
            data: b"2026-11-23 08:57:28.127 UTC,,,6241,,6b03fff8.1861,1,,...\n".to_vec(),
            read_at_micros: 1_795_000_000_000_000,
            truncated: false,
            original_length: None,
        }
    }

    #[test]
    fn single_object_round_trip() {
        let msg = Encoder::single_object().encode_record(&sample());
        assert_eq!(&msg[..2], &SINGLE_OBJECT_MARKER);
        assert_eq!(
            Decoder::new(None).decode_single_object(&msg).unwrap(),
            sample()
        );
        // The borrowing decode reads the record's bytes in place, and the same record.
        let r = Decoder::new(None).decode_single_object_ref(&msg).unwrap();
        let std::borrow::Cow::Borrowed(data) = &r.data else {
            panic!("current-schema bytes are borrowed");
        };
        assert!(msg.as_ptr_range().contains(&data.as_ptr()));
        assert_eq!(r.into_owned(), sample());
    }

    #[test]
    fn record_written_with_v1_schema_is_readable() {
        // Written by apache-avro itself with the previous schema version: no truncation fields.
        let v1 = &KNOWN_SCHEMAS[0];
        let s = sample();
        let value = Value::Record(vec![
            ("server".into(), Value::String(s.source.server.to_string())),
            ("host".into(), Value::String(s.source.host.to_string())),
            ("shipper_version".into(), Value::String("0.0.9".into())),
            ("format".into(), Value::Enum(0, "CSVLOG".into())),
            (
                "source_path".into(),
                Value::String(s.source.source_path.to_string()),
            ),
            (
                "file_id".into(),
                Value::String(s.source.file_id.to_string()),
            ),
            ("offset".into(), Value::Long(s.offset)),
            ("data".into(), Value::Bytes(s.data.clone())),
            ("read_at".into(), Value::TimestampMicros(s.read_at_micros)),
        ]);
        let mut msg = SINGLE_OBJECT_MARKER.to_vec();
        msg.extend_from_slice(&fingerprint(v1));
        msg.extend_from_slice(
            &apache_avro::writer::datum::GenericDatumWriter::builder(v1)
                .build()
                .unwrap()
                .write_value_to_vec(value)
                .unwrap(),
        );
        let decoded = Decoder::new(None).decode_single_object(&msg).unwrap();
        assert_eq!(&*decoded.source.shipper_version, "0.0.9");
        assert_eq!(decoded.data, s.data);
        assert!(!decoded.truncated, "default of the new field applies");
        assert_eq!(decoded.original_length, None);
    }

    /// Written by apache-avro with schema version 2 (before the server's log settings).
    #[test]
    fn record_written_with_v2_schema_is_readable() {
        let v2 = &KNOWN_SCHEMAS[1];
        let s = sample();
        let value = Value::Record(vec![
            ("server".into(), Value::String(s.source.server.to_string())),
            ("host".into(), Value::String(s.source.host.to_string())),
            ("shipper_version".into(), Value::String("0.1.0".into())),
            ("format".into(), Value::Enum(2, "STDERR".into())),
            (
                "source_path".into(),
                Value::String(s.source.source_path.to_string()),
            ),
            ("file_id".into(), Value::String("803:1a2b:00ff".into())),
            ("offset".into(), Value::Long(s.offset)),
            ("data".into(), Value::Bytes(s.data.clone())),
            ("read_at".into(), Value::TimestampMicros(s.read_at_micros)),
            ("truncated".into(), Value::Boolean(false)),
            (
                "original_length".into(),
                Value::Union(0, Box::new(Value::Null)),
            ),
        ]);
        let mut msg = SINGLE_OBJECT_MARKER.to_vec();
        msg.extend_from_slice(&fingerprint(v2));
        msg.extend_from_slice(
            &apache_avro::writer::datum::GenericDatumWriter::builder(v2)
                .build()
                .unwrap()
                .write_value_to_vec(value)
                .unwrap(),
        );
        let decoded = Decoder::new(None).decode_single_object(&msg).unwrap();
        assert_eq!(&*decoded.source.file_id, "803:1a2b:00ff");
        assert_eq!(decoded.source.format, LogFormat::Stderr);
        assert_eq!(
            (decoded.source.log_line_prefix, decoded.source.log_timezone),
            (None, None),
            "defaults of the new fields apply"
        );
    }

    /// Written by apache-avro with schema version 3 (before record kinds): a log record.
    #[test]
    fn record_written_with_v3_schema_is_readable() {
        let v3 = &KNOWN_SCHEMAS[2];
        let mut s = sample();
        // Log records are written with version 3 (a v4 datum is a v3 datum plus the kind).
        let datum = crate::record::encode_record(&s);
        let mut msg = SINGLE_OBJECT_MARKER.to_vec();
        msg.extend_from_slice(&fingerprint(v3));
        msg.extend_from_slice(&datum);
        let decoded = Decoder::new(None).decode_single_object(&msg).unwrap();
        s.source.kind = crate::RecordKind::Log;
        assert_eq!(decoded, s, "the default of the new field applies");
        // And apache-avro agrees that the datum is a v3 datum.
        apache_avro::reader::datum::GenericDatumReader::builder(v3)
            .build()
            .unwrap()
            .read_value(&mut &datum[..])
            .unwrap();
    }

    #[test]
    fn heartbeat_round_trips() {
        let mut s = sample();
        s.source.kind = crate::RecordKind::Heartbeat;
        s.data.clear();
        let msg = Encoder::single_object().encode_record(&s);
        assert_eq!(Decoder::new(None).decode_single_object(&msg).unwrap(), s);
    }

    #[test]
    fn unknown_fingerprint_and_garbage_are_poison() {
        let mut msg = Encoder::single_object().encode_record(&sample());
        msg[5] ^= 0xff;
        let err = Decoder::new(None).decode_single_object(&msg).unwrap_err();
        assert!(matches!(err, AvroError::UnknownFingerprint { .. }), "{err}");
        assert_eq!(err.class(), crate::ErrorClass::Poison);
        let err = Decoder::new(None)
            .decode_single_object(b"{\"not\":\"avro\"}")
            .unwrap_err();
        assert!(matches!(err, AvroError::UnknownWireFormat { .. }), "{err}");
        let mut cut = Encoder::single_object().encode_record(&sample());
        cut.truncate(cut.len() - 3);
        let err = Decoder::new(None).decode_single_object(&cut).unwrap_err();
        assert!(matches!(err, AvroError::MalformedDatum { .. }), "{err}");
    }

    #[tokio::test]
    async fn confluent_frame_without_registry_is_an_error() {
        let msg = Encoder::confluent(crate::registry::EnvelopeIds {
            log: 7,
            heartbeat: 8,
        })
        .encode_record(&sample());
        let err = Decoder::new(None).decode(&msg).await.unwrap_err();
        assert!(
            matches!(err, AvroError::NoRegistry { schema_id: 7 }),
            "{err}"
        );
    }
}
