//! pgtrail's Avro message contract, shared by the shipper and the processor.
//!
//! Owns the `.avsc` schemas under `schemas/`, the typed envelope ([`RawRecord`]), and the two
//! wire formats: Avro single-object encoding (no registry needed) and the Confluent Schema
//! Registry framing. Invariants: every schema version ever published stays in
//! [`record::KNOWN_SCHEMAS`]; new fields carry defaults, so old data stays readable (see
//! `schemas/README.md`). Must not: depend on rdkafka, read files, or parse PostgreSQL logs.

pub mod error;
pub mod record;
pub mod registry;
pub mod wire;

pub use error::{AvroError, ErrorClass};
pub use record::{
    EncodedSource, LogFormat, RawRecord, RawRecordRef, RecordFields, RecordKind, RecordSource,
};
pub use registry::{Registry, RegistryAuth};
pub use wire::{Decoder, Encoder};
