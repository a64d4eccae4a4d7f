//! Framer throughput per format on real PostgreSQL logs: records/s and MB/s.
//!
//! Input: the log files under `$PGTRAIL_BENCH_LOGS` (e.g. the output of
//! `tests/fixtures/generate-pg-logs`), else the committed sample. Each format is framed in
//! 64 KiB chunks as the shipper reads them; the baseline is a plain newline split (memchr) of
//! the same bytes, the floor any framer pays.

use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pgtrail_avro::LogFormat;
use shipper::framer::Framer;

fn load(format: LogFormat) -> Vec<u8> {
    let root = std::env::var_os("PGTRAIL_BENCH_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sample")
        });
    let mut all = Vec::new();
    for server in ["primary", "replica"] {
        let Ok(dir) = std::fs::read_dir(root.join(server)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if LogFormat::from_path(&p) == format {
                all.extend(std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    all
}

fn frame(format: LogFormat, data: &[u8]) -> u64 {
    let mut f = Framer::new(format, 900_000, 0);
    let mut n = 0u64;
    let mut emit = |fr: shipper::framer::Frame<'_>| {
        n += 1;
        std::hint::black_box(fr.data);
    };
    for chunk in data.chunks(64 * 1024) {
        f.feed(chunk, &mut emit);
    }
    f.flush(&mut emit);
    n
}

fn bench(c: &mut Criterion) {
    for format in LogFormat::ALL {
        let data = load(format);
        if data.is_empty() {
            continue;
        }
        let records = frame(format, &data);
        println!(
            "{format}: {} bytes, {records} records, {:.0} bytes/record",
            data.len(),
            data.len() as f64 / records as f64
        );
        let mut g = c.benchmark_group(format!("frame_{format}"));
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::new("bytes", "framer"), &data, |b, d| {
            b.iter(|| frame(format, d))
        });
        g.bench_with_input(
            BenchmarkId::new("bytes", "baseline_newline_split"),
            &data,
            |b, d| b.iter(|| memchr::memchr_iter(b'\n', d).count()),
        );
        g.throughput(Throughput::Elements(records));
        g.bench_with_input(BenchmarkId::new("records", "framer"), &data, |b, d| {
            b.iter(|| frame(format, d))
        });
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
