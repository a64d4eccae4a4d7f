//! Input shared by the processor benches: the records of real PostgreSQL logs, split once
//! before measuring, and the parsing settings of the servers that wrote them.
//!
//! Input: `$PGTRAIL_BENCH_LOGS/{primary,replica}` (output of generate-pg-logs), else the
//! committed sample. Must not: be measured itself.

use std::path::PathBuf;

use pgtrail_avro::LogFormat;
use processor::parse::ServerFormat;

/// Where the logs are.
pub fn root() -> PathBuf {
    std::env::var_os("PGTRAIL_BENCH_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sample")
        })
}

/// Parsing settings with the generator's `log_line_prefix`.
pub fn server_format() -> ServerFormat {
    let prefix = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sample/log_line_prefix"),
    )
    .unwrap_or_else(|_| "%m [%p] ".into());
    match ServerFormat::new(prefix.trim_end_matches('\n'), None) {
        Ok(s) => s,
        Err(e) => panic!("prefix: {e}"),
    }
}

/// Every record of `format` in the logs, as (file, byte offset, bytes), in file order.
pub fn located_records(format: LogFormat) -> Vec<(String, i64, Vec<u8>)> {
    let mut out: Vec<(String, i64, Vec<u8>)> = Vec::new();
    for server in ["primary", "replica"] {
        let Ok(dir) = std::fs::read_dir(root().join(server)) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths
            .into_iter()
            .filter(|p| LogFormat::from_path(p) == format)
        {
            let file = p.to_string_lossy().into_owned();
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
                        out.push((file.clone(), start as i64, bytes[start..end].to_vec()));
                        start = end;
                    }
                }
                _ => {
                    let mut at = 0i64;
                    for line in bytes.split_inclusive(|b| *b == b'\n') {
                        if format == LogFormat::Stderr && line.first() == Some(&b'\t') {
                            if let Some(last) = out.last_mut() {
                                last.2.extend_from_slice(line);
                            }
                        } else {
                            out.push((file.clone(), at, line.to_vec()));
                        }
                        at += line.len() as i64;
                    }
                }
            }
        }
    }
    out
}

/// Every record of `format` in the logs.
#[allow(dead_code)] // Not every bench uses it.
pub fn records(format: LogFormat) -> Vec<Vec<u8>> {
    located_records(format).into_iter().map(|r| r.2).collect()
}
