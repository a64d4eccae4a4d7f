//! Parser throughput per format on real PostgreSQL logs: records/s per core, parse to
//! `LogRecord` plus pgaudit, beside a baseline that only tokenizes the same records (one csv
//! crate reader streaming every row for csvlog, `serde_json::Value` for jsonlog, line split for stderr).
//!
//! Input: `$PGTRAIL_BENCH_LOGS/{primary,replica}` (output of generate-pg-logs), else the
//! committed sample. Records are split once before measuring.

#[path = "common/input.rs"]
mod input;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pgtrail_avro::LogFormat;
use processor::parse::{parse_record, pgaudit::parse_audit};

fn baseline(format: LogFormat, recs: &[Vec<u8>], joined: &[u8]) -> usize {
    match format {
        // One csv reader streaming all rows: the floor of any csvlog parser.
        LogFormat::Csvlog => {
            let mut rd = csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .from_reader(joined);
            let mut rec = csv::ByteRecord::new();
            let mut n = 0;
            while rd.read_byte_record(&mut rec).unwrap_or(false) {
                n += rec.len();
            }
            n
        }
        LogFormat::Jsonlog => recs
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(r)
                    .map_or(0, |v| v.as_object().map_or(0, |o| o.len()))
            })
            .sum(),
        LogFormat::Stderr => recs.iter().map(|r| r.split(|b| *b == b' ').count()).sum(),
    }
}

fn bench(c: &mut Criterion) {
    let server = input::server_format();
    for format in LogFormat::ALL {
        let recs = input::records(format);
        if recs.is_empty() {
            continue;
        }
        let mut g = c.benchmark_group(format!("parse_{format}"));
        g.throughput(Throughput::Elements(recs.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("records", "parse_and_pgaudit"),
            &recs,
            |b, recs| {
                b.iter(|| {
                    let mut audits = 0usize;
                    for r in recs {
                        // The processor validates each record's text once, as here.
                        if let Ok(text) = std::str::from_utf8(r)
                            && let Ok((rec, _)) = parse_record(format, text, None, &server)
                        {
                            audits += usize::from(matches!(parse_audit(&rec.message), Some(Ok(_))));
                        }
                    }
                    audits
                })
            },
        );
        let joined = recs.concat();
        g.bench_with_input(
            BenchmarkId::new("records", "baseline_tokenize_only"),
            &recs,
            |b, recs| b.iter(|| baseline(format, recs, &joined)),
        );
        g.finish();
    }
}

#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, bench);
}
use group::benches;
criterion_main!(benches);
