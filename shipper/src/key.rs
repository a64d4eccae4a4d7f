//! Kafka message keys: the PostgreSQL session of a record, so that one session's records stay
//! ordered in one partition.
//!
//! Owns [`KeyExtractor`]: csvlog column 6 (`session_id`), the jsonlog `session_id` key, and for
//! stderr the `%c` (else `%p`) escape located through the server's `log_line_prefix`.
//! Invariant: the key depends only on session-constant text, so every record of a session,
//! including its DETAIL/STATEMENT lines, gets the same key; when none is found the caller keys
//! by file, which still keeps that file's order. Must not: parse anything else of a record
//! (the shipper never parses SQL).

use pgtrail_avro::LogFormat;

/// Finds the session key of a record of one format.
#[derive(Debug, Clone)]
pub enum KeyExtractor {
    /// csvlog: the sixth column.
    Csv,
    /// jsonlog: the `session_id` member.
    Json,
    /// stderr: located through the prefix.
    Stderr(PrefixKey),
}

impl KeyExtractor {
    /// The extractor for `format`; `log_line_prefix` matters only for stderr.
    pub fn new(format: LogFormat, log_line_prefix: &str) -> Self {
        match format {
            LogFormat::Csvlog => KeyExtractor::Csv,
            LogFormat::Jsonlog => KeyExtractor::Json,
            LogFormat::Stderr => KeyExtractor::Stderr(PrefixKey::new(log_line_prefix)),
        }
    }

    /// The session key of `record`, if it can be found.
    pub fn key<'a>(&self, record: &'a [u8]) -> Option<&'a [u8]> {
        match self {
            KeyExtractor::Csv => csv_field(record, 5).filter(|f| !f.is_empty()),
            KeyExtractor::Json => json_session_id(record),
            KeyExtractor::Stderr(p) => p.key(record),
        }
    }
}

/// The `n`-th (0-based) field of a CSV record, unquoted fields only (session ids never need
/// quotes); `None` for a quoted field or when the record has fewer fields.
fn csv_field(record: &[u8], n: usize) -> Option<&[u8]> {
    let mut field = 0;
    let mut i = 0;
    let mut in_quotes = false;
    let mut start = 0;
    while i < record.len() {
        match record[i] {
            b'"' => in_quotes = !in_quotes,
            b',' | b'\n' if !in_quotes => {
                if field == n {
                    return Some(&record[start..i]).filter(|f| !f.starts_with(b"\""));
                }
                if record[i] == b'\n' {
                    return None;
                }
                field += 1;
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The value of `"session_id":"..."`. Inside JSON strings quotes are escaped, so the first
/// unescaped occurrence of the member name is the member.
fn json_session_id(record: &[u8]) -> Option<&[u8]> {
    const NEEDLE: &[u8] = b"\"session_id\":\"";
    let at = memchr::memmem::find(record, NEEDLE)? + NEEDLE.len();
    let len = memchr::memchr(b'"', &record[at..])?;
    Some(&record[at..at + len]).filter(|v| !v.is_empty())
}

/// Locates `%c` and `%p` in stderr lines through the literal text around them in
/// `log_line_prefix`.
#[derive(Debug, Clone, Default)]
pub struct PrefixKey {
    session: Option<Anchor>,
    pid: Option<Anchor>,
}

#[derive(Debug, Clone)]
struct Anchor {
    /// Literal text right before the escape (may be empty when the escape starts the prefix).
    before: String,
    /// Literal text right after it (never empty: else the value's end is unknown).
    after: String,
}

impl PrefixKey {
    /// Builds the anchors from a `log_line_prefix` such as `%m [%p] %q%u@%d `.
    pub fn new(prefix: &str) -> Self {
        // Tokenize into literals and escapes; `%q` is zero-width, padding digits are skipped.
        enum Tok {
            Lit(String),
            Esc(char),
        }
        let mut toks: Vec<Tok> = Vec::new();
        let mut chars = prefix.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '%' {
                match toks.last_mut() {
                    Some(Tok::Lit(s)) => s.push(c),
                    _ => toks.push(Tok::Lit(c.to_string())),
                }
                continue;
            }
            while matches!(chars.peek(), Some(d) if d.is_ascii_digit() || *d == '-') {
                chars.next();
            }
            match chars.next() {
                Some('%') => match toks.last_mut() {
                    Some(Tok::Lit(s)) => s.push('%'),
                    _ => toks.push(Tok::Lit("%".into())),
                },
                Some('q') => {}
                Some(e) => toks.push(Tok::Esc(e)),
                None => {}
            }
        }
        let anchor = |which: char| -> Option<Anchor> {
            let i = toks
                .iter()
                .position(|t| matches!(t, Tok::Esc(e) if *e == which))?;
            let before = match i.checked_sub(1).map(|j| &toks[j]) {
                Some(Tok::Lit(s)) => s.clone(),
                Some(Tok::Esc(_)) => return None,
                None => String::new(),
            };
            let after = match toks.get(i + 1) {
                Some(Tok::Lit(s)) => s.clone(),
                _ => return None,
            };
            Some(Anchor { before, after })
        };
        PrefixKey {
            session: anchor('c'),
            pid: anchor('p'),
        }
    }

    /// The session id (`hex.hex`) when present, else the process id.
    pub fn key<'a>(&self, line: &'a [u8]) -> Option<&'a [u8]> {
        let session = self
            .session
            .as_ref()
            .and_then(|a| a.find(line))
            .filter(|v| {
                let mut parts = v.split(|b| *b == b'.');
                matches!((parts.next(), parts.next(), parts.next()), (Some(x), Some(y), None)
                if !x.is_empty() && !y.is_empty()
                    && x.iter().chain(y).all(u8::is_ascii_hexdigit))
            });
        session.or_else(|| {
            self.pid
                .as_ref()
                .and_then(|a| a.find(line))
                .filter(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit))
        })
    }
}

impl Anchor {
    fn find<'a>(&self, line: &'a [u8]) -> Option<&'a [u8]> {
        let line = &line[..memchr::memchr(b'\n', line).unwrap_or(line.len())];
        let start = if self.before.is_empty() {
            0
        } else {
            memchr::memmem::find(line, self.before.as_bytes())? + self.before.len()
        };
        let len = memchr::memmem::find(&line[start..], self.after.as_bytes())?;
        Some(&line[start..start + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "%m [%p] %q%c %l %u@%d %r %v %x %e %a: ";

    #[test]
    fn csv_session_id_is_column_six() {
        let rec = b"2026-11-23 08:57:31.727 UTC,\"postgres\",\"postgres\",6388,\"[local]\",6b03fffb.18f4,3,\"SELECT\",2026,2/2,0,LOG,00000,\"AUDIT: SESSION,1,1,READ,SELECT,,,\"\"x,y\"\"\",,,,,,,,,\"psql\",client backend,,0\n";
        assert_eq!(KeyExtractor::Csv.key(rec), Some(&b"6b03fffb.18f4"[..]));
        assert_eq!(KeyExtractor::Csv.key(b"a,b,c\n"), None);
    }

    #[test]
    fn json_session_id_member() {
        let rec = br#"{"timestamp":"2026","message":"x \"session_id\":\"evil\"","session_id":"6b03fff8.1861","pid":1}"#;
        assert_eq!(KeyExtractor::Json.key(rec), Some(&b"6b03fff8.1861"[..]));
        assert_eq!(KeyExtractor::Json.key(b"{\"pid\":1}"), None);
    }

    #[test]
    fn stderr_session_or_pid_through_the_prefix() {
        let k = KeyExtractor::new(LogFormat::Stderr, PREFIX);
        let session_line = b"2026-11-23 08:57:31.727 UTC [6388] 6b03fffb.18f4 3 postgres@postgres [local] 2/2 0 00000 psql: LOG:  AUDIT: x\n";
        assert_eq!(k.key(session_line), Some(&b"6b03fffb.18f4"[..]));
        // %q cuts the prefix for background processes: fall back to the pid.
        let bg = b"2026-11-23 08:57:28.127 UTC [6241] LOG:  starting PostgreSQL 15\n";
        assert_eq!(k.key(bg), Some(&b"6241"[..]));
        let default = KeyExtractor::new(LogFormat::Stderr, "%m [%p] ");
        assert_eq!(default.key(bg), Some(&b"6241"[..]));
        assert_eq!(default.key(b"no prefix at all\n"), None);
        let padded = KeyExtractor::new(LogFormat::Stderr, "%t [%-8p]: %%x ");
        assert_eq!(padded.key(b"2026-11-23 UTC [42      ]: %x LOG:  y"), None);
        let padded = KeyExtractor::new(LogFormat::Stderr, "%t [%p]: ");
        assert_eq!(
            padded.key(b"2026-11-23 UTC [42]: LOG:  y"),
            Some(&b"42"[..])
        );
    }
}
