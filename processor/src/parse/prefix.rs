//! `log_line_prefix` parsing for stderr logs: every escape, padding, `%q`.
//!
//! Owns [`Prefix`]: compiled once per server from its `log_line_prefix`, it matches the start
//! of a line and fills [`LogRecord`] fields. Escapes with a fixed shape (%m %t %s %n %p %P %l
//! %x %c %v %e %Q) are matched by shape; free-text escapes (%u %d %a %r %h %b %i) end at the
//! next literal text, trying each occurrence (backtracking) until the rest of the prefix and a
//! `SEVERITY:  ` marker match; shortest values win, so two free-text escapes separated only
//! by a space are ambiguous when the first value contains spaces (choose delimiters such as
//! `%u@%d` or `[%a]`). `%q` ends the prefix for non-session processes. Must not:
//! guess values: a line the prefix does not match is an error.

use chrono_tz::Tz;

use std::borrow::Cow;

use super::record::{LogRecord, split_host_port};
use super::time::{parse_epoch, parse_pg_time, parse_session_start};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(String),
    Esc { kind: char, padded: bool },
    Quit,
}

/// A compiled `log_line_prefix`.
#[derive(Debug, Clone)]
pub struct Prefix {
    text: String,
    toks: Vec<Tok>,
    zone: Option<Tz>,
}

/// Values captured from one line, before conversion.
#[derive(Debug, Default)]
struct Captures<'a> {
    vals: Vec<(char, &'a str)>,
}

const SEVERITIES: [&str; 19] = [
    "DEBUG1",
    "DEBUG2",
    "DEBUG3",
    "DEBUG4",
    "DEBUG5",
    "DEBUG",
    "INFO",
    "NOTICE",
    "WARNING",
    "ERROR",
    "LOG",
    "FATAL",
    "PANIC",
    "DETAIL",
    "HINT",
    "QUERY",
    "CONTEXT",
    "LOCATION",
    "STATEMENT",
];

/// The severity word at the start of `s` when followed by `:  `, and its length with marker.
pub fn severity_at(s: &str) -> Option<(&str, usize)> {
    let colon = s.find(":  ")?;
    let word = &s[..colon];
    SEVERITIES.contains(&word).then_some((word, colon + 3))
}

impl Prefix {
    /// Compiles `log_line_prefix`; `zone` resolves zone abbreviations in %m %t %s.
    pub fn new(prefix: &str, zone: Option<Tz>) -> Result<Prefix, String> {
        let mut toks = Vec::new();
        let mut chars = prefix.chars().peekable();
        let mut lit = String::new();
        while let Some(c) = chars.next() {
            if c != '%' {
                lit.push(c);
                continue;
            }
            let mut padded = false;
            while let Some(&d) = chars.peek() {
                if d == '-' || d.is_ascii_digit() {
                    padded = true;
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(kind) = chars.next() else { break };
            if kind == '%' {
                lit.push('%');
                continue;
            }
            if !lit.is_empty() {
                toks.push(Tok::Lit(std::mem::take(&mut lit)));
            }
            match kind {
                'q' => toks.push(Tok::Quit),
                'a' | 'u' | 'd' | 'r' | 'h' | 'b' | 'p' | 'P' | 't' | 'm' | 'n' | 'i' | 'e'
                | 'c' | 'l' | 's' | 'v' | 'x' | 'Q' => toks.push(Tok::Esc { kind, padded }),
                other => return Err(format!("log_line_prefix escape %{other} is not supported")),
            }
        }
        if !lit.is_empty() {
            toks.push(Tok::Lit(lit));
        }
        Ok(Prefix {
            text: prefix.to_owned(),
            toks,
            zone,
        })
    }

    /// The `log_line_prefix` it was compiled from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What records parsed with this prefix cannot carry, and what that costs (for the
    /// warning logged when a server's stderr logs are first parsed with it).
    pub fn limitations(&self) -> Vec<&'static str> {
        let has = |k: char| {
            self.toks
                .iter()
                .any(|t| matches!(t, Tok::Esc { kind, .. } if *kind == k))
        };
        let mut out = Vec::new();
        if !has('v') {
            out.push(
                "no %v (virtual transaction id): outcomes are matched by session and statement \
                 order; a failed statement fails its own audit rows only (not the earlier \
                 statements of its transaction), and an error arriving after the outcome window \
                 is an extra unaudited FAILURE row instead of a late outcome",
            );
        }
        if !has('c') && !has('p') {
            out.push(
                "no %c or %p: records cannot be told apart by session: outcomes cannot be \
                 correlated and continuation lines attach to the last open record",
            );
        } else if !has('c') {
            out.push("no %c (session id): sessions are keyed by process id");
        }
        if !has('m') && !has('t') && !has('n') {
            out.push("no %m, %t or %n: rows have no event_time and the outcome window cannot pass");
        }
        if !has('e') {
            out.push("no %e: failures carry no SQLSTATE (error_code is empty)");
        }
        out
    }

    /// Matches the prefix at the start of `line`; fills `rec` and returns the byte offset of
    /// the severity word.
    pub fn parse_into<'a>(&self, line: &'a str, rec: &mut LogRecord<'a>) -> Result<usize, String> {
        let mut caps = Captures::default();
        let end = self.match_from(0, line, 0, &mut caps).ok_or_else(|| {
            format!(
                "a line of {} bytes does not match log_line_prefix {:?}",
                line.len(),
                self.text
            )
        })?;
        for (kind, raw) in caps.vals {
            self.apply(kind, raw.trim(), rec)?;
        }
        Ok(end)
    }

    fn match_from<'a>(
        &self,
        ti: usize,
        line: &'a str,
        pos: usize,
        caps: &mut Captures<'a>,
    ) -> Option<usize> {
        let Some(tok) = self.toks.get(ti) else {
            return severity_at(&line[pos..]).map(|_| pos);
        };
        match tok {
            Tok::Lit(l) => line[pos..]
                .starts_with(l.as_str())
                .then_some(())
                .and_then(|()| self.match_from(ti + 1, line, pos + l.len(), caps)),
            Tok::Quit => {
                let mark = caps.vals.len();
                if let Some(end) = self.match_from(ti + 1, line, pos, caps) {
                    return Some(end);
                }
                caps.vals.truncate(mark);
                severity_at(&line[pos..]).map(|_| pos)
            }
            Tok::Esc { kind, padded } => {
                let start = if *padded {
                    pos + spaces(&line[pos..])
                } else {
                    pos
                };
                for len in candidates(*kind, &line[start..], self.toks.get(ti + 1)) {
                    let mut end = start + len;
                    if *padded {
                        end += spaces(&line[end..]);
                    }
                    let mark = caps.vals.len();
                    caps.vals.push((*kind, &line[start..start + len]));
                    if let Some(e) = self.match_from(ti + 1, line, end, caps) {
                        return Some(e);
                    }
                    caps.vals.truncate(mark);
                }
                None
            }
        }
    }

    fn apply<'a>(&self, kind: char, v: &'a str, rec: &mut LogRecord<'a>) -> Result<(), String> {
        let text = || (!v.is_empty() && v != "[unknown]").then_some(Cow::Borrowed(v));
        let int = || -> Result<Option<i64>, String> {
            if v.is_empty() {
                Ok(None)
            } else {
                v.parse()
                    .map(Some)
                    .map_err(|_| format!("%{kind} is not a number ({} bytes)", v.len()))
            }
        };
        match kind {
            'm' | 't' => rec.log_time = Some(parse_pg_time(v, self.zone)?),
            'n' => rec.log_time = Some(parse_epoch(v)?),
            's' => rec.session_start = Some(parse_session_start(v, self.zone)?),
            'u' => rec.user_name = text(),
            'd' => rec.database_name = text(),
            'a' => rec.application_name = text(),
            'b' => rec.backend_type = text(),
            'i' => rec.command_tag = text(),
            'h' => rec.remote_host = text(),
            'r' => (rec.remote_host, rec.remote_port) = split_host_port(Cow::Borrowed(v)),
            'p' => rec.process_id = int()?,
            'P' => rec.leader_pid = int()?,
            'l' => rec.session_line_num = int()?,
            'Q' => rec.query_id = int()?,
            'c' => rec.session_id = text(),
            'v' => rec.vxid = text(),
            'x' => rec.txid = text(),
            'e' => rec.sql_state = text(),
            _ => {}
        }
        Ok(())
    }
}

fn spaces(s: &str) -> usize {
    s.bytes().take_while(|b| *b == b' ').count()
}

/// Possible lengths of an escape's value, most likely first, found as they are tried: an
/// escape followed by a literal is matched at the literal's first occurrence in almost every
/// line, so the later ones (in a stderr record's statement text) are never searched for.
enum Candidates<'s, 'p> {
    /// Known from the escape's own syntax.
    Fixed(std::option::IntoIter<usize>),
    /// Every occurrence of the next literal, in order.
    Lit(std::str::MatchIndices<'s, &'p str>),
    /// Every length (followed by another escape, `%q` or the end), shortest first.
    Every(std::ops::RangeInclusive<usize>, &'s str),
}

impl Iterator for Candidates<'_, '_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::Fixed(v) => v.next(),
            Candidates::Lit(m) => m.next().map(|(i, _)| i),
            Candidates::Every(r, s) => r.find(|i| s.is_char_boundary(*i)),
        }
    }
}

/// Possible lengths of the value of escape `kind` at the start of `s`, most likely first.
fn candidates<'s, 'p>(kind: char, s: &'s str, next: Option<&'p Tok>) -> Candidates<'s, 'p> {
    match (kind, next) {
        ('m' | 't' | 's' | 'n' | 'p' | 'l' | 'x' | 'P' | 'Q' | 'c' | 'v' | 'e', _) => {
            Candidates::Fixed(fixed_candidates(kind, s).into_iter())
        }
        (_, Some(Tok::Lit(l))) => Candidates::Lit(s.match_indices(l.as_str())),
        _ => Candidates::Every(0..=s.len(), s),
    }
}

/// [`candidates`] of the escapes whose value has a syntax of its own: one length at most.
fn fixed_candidates(kind: char, s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let run =
        |ok: fn(u8) -> bool, from: usize| from + b[from..].iter().take_while(|c| ok(**c)).count();
    let digits = |c: u8| c.is_ascii_digit();
    match kind {
        'm' | 't' | 's' => timestamp_len(s),
        'n' => {
            let i = run(digits, 0);
            let j = if b.get(i) == Some(&b'.') {
                run(digits, i + 1)
            } else {
                i
            };
            Some(j)
        }
        'p' | 'l' | 'x' => Some(run(digits, 0)),
        'P' | 'Q' => {
            let sign = usize::from(b.first() == Some(&b'-'));
            Some(run(digits, sign))
        }
        'c' => {
            let hex = |c: u8| c.is_ascii_hexdigit();
            let i = run(hex, 0);
            if b.get(i) == Some(&b'.') {
                Some(run(hex, i + 1))
            } else {
                Some(0)
            }
        }
        'v' => Some(run(|c| c.is_ascii_digit() || c == b'/' || c == b'-', 0)),
        'e' => Some(run(|c| c.is_ascii_alphanumeric(), 0).min(5)),
        _ => None,
    }
}

/// Length of `YYYY-MM-DD HH:MM:SS[.fff] ZONE`.
fn timestamp_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.len() < 21 || b[4] != b'-' || b[10] != b' ' || b[13] != b':' {
        return None;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1 + b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
    }
    if b.get(i) != Some(&b' ') {
        return None;
    }
    let zone = b[i + 1..]
        .iter()
        .take_while(|c| !c.is_ascii_whitespace())
        .count();
    (zone > 0).then_some(i + 1 + zone)
}

#[cfg(test)]
mod tests {

    #[test]
    fn limitations_name_what_a_prefix_cannot_carry() {
        let full = Prefix::new("%m [%p] %q%c %l %u@%d %r %v %x %e %a: ", None).unwrap();
        assert!(full.limitations().is_empty());
        let default = Prefix::new("%m [%p] ", None).unwrap();
        let l = default.limitations();
        assert_eq!(l.len(), 3, "{l:?}");
        assert!(l[0].starts_with("no %v"));
        assert!(l[1].starts_with("no %c"));
        assert!(l[2].starts_with("no %e"));
        let bare = Prefix::new("", None).unwrap();
        assert!(
            bare.limitations()
                .iter()
                .any(|l| l.starts_with("no %c or %p"))
        );
    }
    use super::*;

    fn parse<'a>(prefix: &str, line: &'a str) -> (LogRecord<'a>, String) {
        let p = Prefix::new(prefix, None).unwrap();
        let mut r = LogRecord::default();
        let at = p.parse_into(line, &mut r).unwrap();
        (r, line[at..].to_owned())
    }

    #[test]
    fn generator_prefix_session_and_background_lines() {
        let pfx = "%m [%p] %q%c %l %u@%d %r %v %x %e %a: ";
        let (r, rest) = parse(
            pfx,
            "2026-11-23 09:10:55.631 UTC [20747] 6b04031f.510b 5 postgres@postgres [local] 4/39 742 23505 psql: DETAIL:  Key (id)=(1) already exists.",
        );
        assert_eq!(r.process_id, Some(20747));
        assert_eq!(r.session_id.as_deref(), Some("6b04031f.510b"));
        assert_eq!(r.session_line_num, Some(5));
        assert_eq!(
            (r.user_name.as_deref(), r.database_name.as_deref()),
            (Some("postgres"), Some("postgres"))
        );
        assert_eq!(r.remote_host.as_deref(), Some("[local]"));
        assert_eq!(
            (r.vxid.as_deref(), r.txid.as_deref(), r.sql_state.as_deref()),
            (Some("4/39"), Some("742"), Some("23505"))
        );
        assert_eq!(r.application_name.as_deref(), Some("psql"));
        assert!(rest.starts_with("DETAIL:  Key"));
        let (r, rest) = parse(
            pfx,
            "2026-11-23 09:10:50.860 UTC [20701] LOG:  starting PostgreSQL 15.18",
        );
        assert_eq!(r.process_id, Some(20701));
        assert_eq!(r.session_id, None);
        assert_eq!(rest, "LOG:  starting PostgreSQL 15.18");
    }

    #[test]
    fn free_text_with_spaces_padding_and_all_escapes() {
        let pfx = "%t %n [%-8p] %Q %P|%b|%i|%u@%d %h %r %s %e %%: ";
        let line = "2026-01-02 03:04:05 UTC 1767323045.123 [42      ] -77 |client backend|CREATE TABLE|alice@mydb 10.0.0.1 10.0.0.1(5432) 2026-01-02 03:00:00 UTC 42P01 %: ERROR:  x";
        let (r, rest) = parse(pfx, line);
        assert_eq!(r.process_id, Some(42));
        assert_eq!(r.query_id, Some(-77));
        assert_eq!(r.leader_pid, None);
        assert_eq!(r.backend_type.as_deref(), Some("client backend"));
        assert_eq!(r.command_tag.as_deref(), Some("CREATE TABLE"));
        assert_eq!(r.database_name.as_deref(), Some("mydb"));
        assert_eq!(r.remote_port.as_deref(), Some("5432"));
        assert_eq!(r.sql_state.as_deref(), Some("42P01"));
        assert_eq!(r.log_time.unwrap().timestamp_millis(), 1_767_323_045_123);
        assert!(r.session_start.is_some());
        assert_eq!(rest, "ERROR:  x");
    }

    #[test]
    fn mismatch_is_an_error_and_unknown_escape_is_rejected() {
        let p = Prefix::new("%m [%p] ", None).unwrap();
        assert!(
            p.parse_into("garbage line", &mut LogRecord::default())
                .is_err()
        );
        assert!(Prefix::new("%k", None).is_err());
        let (r, _) = parse("%u %d ", "[unknown] [unknown] LOG:  x");
        assert_eq!((r.user_name, r.database_name), (None, None));
    }
}
