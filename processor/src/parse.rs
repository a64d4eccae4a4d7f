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
