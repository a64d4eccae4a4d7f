//! Parsing of raw PostgreSQL log records: csvlog, jsonlog, stderr (with the server's
//! `log_line_prefix`), and the pgaudit entries inside them.
//!
//! Owns the format parsers in `parse/` and [`ServerFormat`], the per-server parsing settings.
//! Invariants: parsers are pure (bytes in, record or reason out) and never panic on any input
//! (property-tested, fuzzable); an unparseable record is an `Err` with a reason for the
//! dead-letter topic. Must not: do I/O or hold state across records (except
//! [`stderr::StderrAssembler`], explicitly).

pub mod csvlog;
pub mod csvrow;
pub mod jsonlog;
pub mod pgaudit;
pub mod prefix;
pub mod record;
pub mod stderr;
pub mod time;

use chrono_tz::Tz;
use pgtrail_avro::LogFormat;

pub use record::LogRecord;

/// How one server's logs are parsed.
#[derive(Debug, Clone)]
pub struct ServerFormat {
    /// IANA zone resolving zone abbreviations (`None`: only UTC/GMT/numeric accepted).
    pub zone: Option<Tz>,
    /// The server's compiled `log_line_prefix`.
    pub prefix: prefix::Prefix,
}

impl ServerFormat {
    /// Settings from the server's `log_line_prefix` and optional IANA zone name.
    pub fn new(log_line_prefix: &str, zone: Option<&str>) -> Result<Self, String> {
        let zone = zone
            .map(|z| z.parse::<Tz>().map_err(|e| format!("time zone {z:?}: {e}")))
            .transpose()?;
        Ok(ServerFormat {
            zone,
            prefix: prefix::Prefix::new(log_line_prefix, zone)?,
        })
    }
}

/// A parsed record: the log record (texts borrowed from `text`), and for stderr whether it is
/// an auxiliary line. `text` is the record as shipped; when it was not UTF-8, `invalid` says
/// why and `text` has the bad bytes replaced: csvlog reads it so (the field it hits keeps
/// U+FFFD), jsonlog and stderr reject it.
pub fn parse_record<'a>(
    format: LogFormat,
    text: &'a str,
    invalid: Option<std::str::Utf8Error>,
    server: &ServerFormat,
) -> Result<(LogRecord<'a>, stderr::LineKind), String> {
    if let Some(e) = invalid
        && format != LogFormat::Csvlog
    {
        return Err(format!("{}: invalid UTF-8: {e}", format.as_str()));
    }
    match format {
        LogFormat::Csvlog => {
            csvlog::parse_csvlog(text, server.zone).map(|r| (r, stderr::LineKind::Primary))
        }
        LogFormat::Jsonlog => {
            jsonlog::parse_jsonlog(text, server.zone).map(|r| (r, stderr::LineKind::Primary))
        }
        LogFormat::Stderr => stderr::parse_stderr_line(text, &server.prefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Records with `secret` in each field where a misaligned or broken record can carry
    /// statement text.
    fn broken_records(secret: &str) -> Vec<(LogFormat, String)> {
        let csv = "2026-11-23 09:10:55.178 UTC,\"postgres\",\"postgres\",20732,\"[local]\",6b04031f.50fc,3,\"SELECT\",2026-11-23 09:10:55 UTC,4/4,0,LOG,00000,\"AUDIT: SESSION,1,1,READ,SELECT,,,SELECT 1,<none>\",,,,,,,,,\"psql\",\"client backend\",,0\n";
        let mut out = Vec::new();
        let cols: Vec<&str> = csv.trim_end().split(',').collect();
        for i in 0..cols.len() {
            let mut c = cols.clone();
            c[i] = secret;
            out.push((LogFormat::Csvlog, c.join(",") + "\n"));
        }
        for field in [
            "timestamp",
            "pid",
            "line_num",
            "session_start",
            "txid",
            "query_id",
        ] {
            out.push((
                LogFormat::Jsonlog,
                format!("{{\"timestamp\":\"2026-11-23 09:10:55.178 UTC\",\"{field}\":\"{secret}\",\"error_severity\":\"LOG\",\"message\":\"x\"}}\n"),
            ));
        }
        out.push((LogFormat::Jsonlog, format!("{{\"message\": {secret}\n")));
        out.push((LogFormat::Stderr, format!("{secret} [7] LOG:  x\n")));
        out.push((
            LogFormat::Stderr,
            format!("2026-11-23 09:10:55.178 {secret} [7] LOG:  x\n"),
        ));
        out.push((
            LogFormat::Stderr,
            format!("2026-11-23 09:10:55.178 UTC [{secret}] LOG:  x\n"),
        ));
        out.push((
            LogFormat::Stderr,
            format!("2026-11-23 09:10:55.178 UTC [7] {secret}:  x\n"),
        ));
        out
    }

    proptest! {
        /// Item 10 of issue 17: a record's text never reaches an error's reason (dead-letter
        /// headers and logs): a stderr prefix mismatch copied up to 160 characters of the line.
        #[test]
        fn parse_errors_never_quote_the_record(secret in "zq[a-z]{10}") {
            let server = ServerFormat::new("%m [%p] ", Some("Europe/Berlin")).expect("prefix");
            for (format, text) in broken_records(&secret) {
                if let Err(reason) = parse_record(format, &text, None, &server) {
                    prop_assert!(!reason.contains(&secret), "{format}: {reason}");
                }
            }
            for body in [
                format!("AUDIT: SESSION,{secret},1,READ,SELECT,,,SELECT 1,<none>"),
                format!("AUDIT: SESSION,1,{secret},READ,SELECT,,,SELECT 1,<none>"),
                format!("AUDIT: SESSION,1,1,READ,SELECT,,,\"{secret}"),
            ] {
                if let Some(Err(reason)) = pgaudit::parse_audit(&body) {
                    prop_assert!(!reason.contains(&secret), "{reason}");
                }
            }
        }
    }
}
