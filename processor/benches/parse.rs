//! Parser throughput per format on real PostgreSQL logs: records/s per core, parse to
//! `LogRecord` plus pgaudit, beside a baseline that only tokenizes the same records (one csv
//! crate reader streaming every row for csvlog, `serde_json::Value` for jsonlog, line split for stderr).
//!
//! Input: `$PGTRAIL_BENCH_LOGS/{primary,replica}` (output of generate-pg-logs), else the
//! committed sample. Records are split once before measuring.

use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pgtrail_avro::LogFormat;
use processor::parse::{ServerFormat, parse_record, pgaudit::parse_audit};

fn records(format: LogFormat) -> Vec<Vec<u8>> {
    let root = std::env::var_os("PGTRAIL_BENCH_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sample")
        });
    let mut out = Vec::new();
    for server in ["primary", "replica"] {
        let Ok(dir) = std::fs::read_dir(root.join(server)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths
            .into_iter()
            .filter(|p| LogFormat::from_path(p) == format)
        {
            let bytes = std::fs::read(&p).unwrap_or_default();
            match format {
                LogFormat::Csvlog => {
                    let mut r = csv::ReaderBuilder::new()
                        .has_headers(false)
                        .flexible(true)
                        .from_reader(&bytes[..]);
                    let mut rec = csv::ByteRecord::new();
                    let mut start = 0;
                    while r.read_byte_record(&mut rec).unwrap_or(false) {
                        let end = r.position().byte() as usize;
                        out.push(bytes[start..end].to_vec());
                        start = end;
                    }
                }
                _ => {
                    for line in bytes.split_inclusive(|b| *b == b'\n') {
                        if format == LogFormat::Stderr && line.first() == Some(&b'\t') {
                            if let Some(last) = out.last_mut() {
                                last.extend_from_slice(line);
                            }
                        } else {
                            out.push(line.to_vec());
                        }
                    }
                }
            }
        }
    }
    out
}

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
    let prefix = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sample/log_line_prefix"),
    )
    .unwrap_or_else(|_| "%m [%p] ".into());
    let server = match ServerFormat::new(prefix.trim_end_matches('\n'), None) {
        Ok(s) => s,
        Err(e) => panic!("prefix: {e}"),
    };
    for format in LogFormat::ALL {
        let recs = records(format);
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
                        if let Ok((rec, _)) = parse_record(format, r, &server) {
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
