//! The processor's per-record work, per format, on real PostgreSQL logs: Kafka message value
//! (Avro single-object, as the shipper writes it) → decode → parse + pgaudit + outcome
//! tracking + dedup (`Partition::push`, the code the consumer runs) → rows appended to Arrow
//! builders of the table schema as the consumer routes them (`delta::RowBuffer`), taken as
//! `RecordBatch`es of 8192 rows. Records/s per core, beside a baseline
//! that only decodes the same messages (the floor: no parsing, no rows).
//!
//! Target: ≥ 250k records/s per core for csvlog. Input as in `parse` (`$PGTRAIL_BENCH_LOGS`).
//!
//! `encode_<format>`: the commit's CPU work on those batches, Parquet encoding with the table's
//! writer properties (`delta::writer_properties`) beside deltalake's default (Snappy, dictionary
//! and statistics on every column), into memory: rows/s per core.

#[path = "common/input.rs"]
mod input;

use std::time::Duration;

use chrono::Utc;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pgtrail_avro::{Decoder, Encoder, LogFormat, RawRecord, RecordSource};
use processor::delta::arrow::record_batch::RecordBatch;
use processor::delta::parquet::arrow::ArrowWriter;
use processor::delta::parquet::basic::Compression;
use processor::delta::parquet::file::properties::WriterProperties;
use processor::delta::{BATCH_ROWS, RowBuffer, arrow_schema, writer_properties};
use processor::parse::ServerFormat;
use processor::partition::{Incoming, Outputs, Partition, Servers};
use processor::telemetry::Metrics;

/// The binary's allocator (see `main.rs`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct OneServer(ServerFormat);

impl Servers for OneServer {
    fn format(&mut self, _: &RecordSource) -> Result<&ServerFormat, String> {
        Ok(&self.0)
    }
    fn accepts(&self, _server: &str, _format: LogFormat) -> bool {
        true
    }
}

/// The messages the shipper would have produced for these records.
fn messages(format: LogFormat) -> Vec<Vec<u8>> {
    let encoder = Encoder::single_object();
    input::located_records(format)
        .into_iter()
        .map(|(file, offset, data)| {
            encoder.encode_record(&RawRecord {
                source: RecordSource {
                    server: "bench".into(),
                    host: "bench".into(),
                    shipper_version: "bench".into(),
                    format,
                    source_path: file.as_str().into(),
                    file_id: file.into(),
                    log_line_prefix: None,
                    log_timezone: None,
                    kind: pgtrail_avro::RecordKind::Log,
                },
                offset,
                data,
                read_at_micros: 0,
                truncated: false,
                original_length: None,
            })
        })
        .collect()
}

/// Runs the whole per-record path over `msgs` on a fresh partition; returns the rows written.
fn pipeline(
    msgs: &[Vec<u8>],
    decoder: &Decoder,
    servers: &mut OneServer,
    metrics: &Metrics,
    rows: &mut RowBuffer,
) -> usize {
    pipeline_into(msgs, decoder, servers, metrics, rows, &mut |_| ())
}

/// [`pipeline`], handing each batch taken to `sink`.
fn pipeline_into(
    msgs: &[Vec<u8>],
    decoder: &Decoder,
    servers: &mut OneServer,
    metrics: &Metrics,
    rows: &mut RowBuffer,
    sink: &mut dyn FnMut(RecordBatch),
) -> usize {
    const TOPIC: &str = "pgaudit.raw.bench";
    let tp = processor::topic_partition::TopicPartition::new(TOPIC, 0);
    let mut part = Partition::new(tp, None, None, Duration::from_secs(60));
    let mut written = 0;
    let now = Utc::now();
    let mut flush = |rows: &mut RowBuffer, force: bool| {
        if rows.len() >= BATCH_ROWS || (force && !rows.is_empty()) {
            match rows.take() {
                Ok(batches) => {
                    for b in batches {
                        written += b.num_rows();
                        sink(b);
                    }
                }
                Err(e) => panic!("batches: {e}"),
            }
        }
    };
    let take = |out: Outputs, rows: &mut RowBuffer| {
        for (row, offset) in out.rows {
            if let Err(e) = rows.push(&row, now, TOPIC, 0, offset) {
                panic!("row: {e}");
            }
        }
    };
    for (offset, msg) in msgs.iter().enumerate() {
        let decoded = decoder
            .decode_single_object_ref(msg)
            .map_err(|e| e.to_string());
        let mut out = Outputs::default();
        part.push(
            Incoming {
                offset: offset as i64,
                key: None,
                payload: msg,
                at: std::time::Instant::now(),
            },
            decoded,
            servers,
            metrics,
            &mut out,
        );
        take(out, rows);
        flush(rows, false);
    }
    let mut out = Outputs::default();
    part.finish(metrics, &mut out);
    take(out, rows);
    flush(rows, true);
    written
}

fn bench(c: &mut Criterion) {
    let decoder = Decoder::new(None);
    let metrics = Metrics::default();
    let mut servers = OneServer(input::server_format());
    for format in LogFormat::ALL {
        let msgs = messages(format);
        if msgs.is_empty() {
            continue;
        }
        // The batches of one run: the rows check here, and the input of `encode`.
        let mut batches = Vec::new();
        let rows = pipeline_into(
            &msgs,
            &decoder,
            &mut servers,
            &metrics,
            &mut RowBuffer::default(),
            &mut |b| batches.push(b),
        );
        assert!(rows > 0, "{format}: no rows from {} records", msgs.len());
        eprintln!("{format}: {} records → {rows} rows", msgs.len());
        let mut g = c.benchmark_group(format!("pipeline_{format}"));
        g.throughput(Throughput::Elements(msgs.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("records", "decode_parse_arrow"),
            &msgs,
            |b, msgs| {
                // One buffer for the run, as a partition keeps its own while assigned.
                let mut rows = RowBuffer::default();
                b.iter(|| pipeline(msgs, &decoder, &mut servers, &metrics, &mut rows))
            },
        );
        g.bench_with_input(
            BenchmarkId::new("records", "baseline_decode_only"),
            &msgs,
            |b, msgs| {
                b.iter(|| {
                    msgs.iter()
                        .filter_map(|m| decoder.decode_single_object(m).ok())
                        .map(|r: RawRecord| r.data.len())
                        .sum::<usize>()
                })
            },
        );
        g.finish();
        encode(c, format, &batches);
    }
}

/// Parquet encoding of the format's batches, table settings vs. deltalake's default.
fn encode(c: &mut Criterion, format: LogFormat, batches: &[RecordBatch]) {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let write = |props: &WriterProperties| {
        let mut w = ArrowWriter::try_new(Vec::new(), arrow_schema(), Some(props.clone()))
            .unwrap_or_else(|e| panic!("writer: {e}"));
        for b in batches {
            w.write(b).unwrap_or_else(|e| panic!("write: {e}"));
        }
        w.into_inner()
            .unwrap_or_else(|e| panic!("close: {e}"))
            .len()
    };
    let ours = writer_properties();
    // deltalake's own default: Snappy, everything else Parquet's default.
    let default = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    eprintln!(
        "{format}: {rows} rows → Parquet {} bytes (table settings), {} bytes (deltalake default)",
        write(&ours),
        write(&default)
    );
    let mut g = c.benchmark_group(format!("encode_{format}"));
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function(BenchmarkId::new("rows", "table_settings"), |b| {
        b.iter(|| write(&ours))
    });
    g.bench_function(
        BenchmarkId::new("rows", "baseline_deltalake_default"),
        |b| b.iter(|| write(&default)),
    );
    g.finish();
}

#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, bench);
}
use group::benches;
criterion_main!(benches);
