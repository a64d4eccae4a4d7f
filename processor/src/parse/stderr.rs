//! stderr records into [`LogRecord`]: prefix, severity, tab continuations, and the DETAIL,
//! HINT, QUERY, CONTEXT, LOCATION and STATEMENT lines attached to their record.
//!
//! Owns [`parse_stderr_line`] (one shipped stderr record: a line plus its tab continuations)
//! and [`StderrAssembler`] (per process, attaches auxiliary lines to the record they follow).
//! Invariant: the assembler emits every primary record it was given, with the tag (source
//! coordinates) it came with, in arrival order per process; an auxiliary line without a parent
//! is emitted on its own with its own tag. Must not: drop a line.

use std::borrow::Cow;
use std::collections::HashMap;

use super::prefix::{Prefix, severity_at};
use super::record::LogRecord;

/// What a stderr line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A record of its own (LOG, ERROR, ...).
    Primary,
    /// A line that belongs to the record before it from the same process.
    Auxiliary,
}

/// Parses one shipped stderr record (terminating newline allowed); texts borrow from `text`.
pub fn parse_stderr_line<'a>(
    text: &'a str,
    prefix: &Prefix,
) -> Result<(LogRecord<'a>, LineKind), String> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut rec = LogRecord::default();
    let at = prefix.parse_into(text, &mut rec)?;
    let (word, len) = severity_at(&text[at..]).ok_or("stderr: no severity after the prefix")?;
    rec.severity = Cow::Borrowed(word);
    let message = &text[at + len..];
    rec.message = if message.contains("\n\t") {
        Cow::Owned(message.replace("\n\t", "\n"))
    } else {
        Cow::Borrowed(message)
    };
    let kind = match word {
        "DETAIL" | "HINT" | "QUERY" | "CONTEXT" | "LOCATION" | "STATEMENT" => LineKind::Auxiliary,
        _ => LineKind::Primary,
    };
    // stderr appends the cursor position to the message; csvlog keeps it in its own column.
    if kind == LineKind::Primary
        && let Some((msg, pos)) = rec.message.rsplit_once(" at character ")
        && let Ok(pos) = pos.parse::<i64>()
    {
        rec.query_pos = Some(pos);
        let len = msg.len();
        match &mut rec.message {
            Cow::Borrowed(m) => *m = &m[..len],
            Cow::Owned(m) => m.truncate(len),
        }
    }
    Ok((rec, kind))
}

/// Attaches auxiliary lines to the primary record before them from the same process. `T` is
/// carried with each primary record (its source coordinates) and given back with it. Records
/// are held across messages, so they own their texts.
#[derive(Debug)]
pub struct StderrAssembler<T> {
    open: HashMap<Option<i64>, (LogRecord<'static>, T)>,
}

impl<T> Default for StderrAssembler<T> {
    fn default() -> Self {
        StderrAssembler {
            open: HashMap::new(),
        }
    }
}

/// What became of a line given to [`StderrAssembler::push`].
#[derive(Debug)]
pub enum Pushed<T> {
    /// A primary record, now open until its process's next record (or a flush); the record it
    /// completed (the process's previous open one), if any.
    Opened(Option<(LogRecord<'static>, T)>),
    /// An auxiliary line, attached to its process's open record: it has no output of its own
    /// and its tag is dropped.
    Attached,
    /// An auxiliary line without an open record of its process: emitted on its own, with its
    /// tag.
    Orphan((LogRecord<'static>, T)),
}

impl<T> Pushed<T> {
    /// The record this push made complete: the one an opened record completed, or an
    /// orphan line.
    pub fn into_completed(self) -> Option<(LogRecord<'static>, T)> {
        match self {
            Pushed::Opened(previous) => previous,
            Pushed::Attached => None,
            Pushed::Orphan(line) => Some(line),
        }
    }
}

impl<T> StderrAssembler<T> {
    /// Adds a parsed line tagged `tag`.
    pub fn push(&mut self, rec: LogRecord<'static>, kind: LineKind, tag: T) -> Pushed<T> {
        let key = rec.process_id;
        match kind {
            LineKind::Primary => Pushed::Opened(self.open.insert(key, (rec, tag))),
            LineKind::Auxiliary => match self.open.get_mut(&key) {
                Some((parent, _)) => {
                    let slot = match &*rec.severity {
                        "DETAIL" => &mut parent.detail,
                        "HINT" => &mut parent.hint,
                        "QUERY" => {
                            // The position printed on the primary line was the internal one.
                            parent.internal_query_pos = parent.query_pos.take();
                            &mut parent.internal_query
                        }
                        "CONTEXT" => &mut parent.context,
                        "LOCATION" => &mut parent.location,
                        _ => &mut parent.query,
                    };
                    *slot = Some(rec.message);
                    Pushed::Attached
                }
                None => Pushed::Orphan((rec, tag)),
            },
        }
    }

    /// Tags of the records still open (waiting for more lines).
    pub fn open_tags(&self) -> impl Iterator<Item = &T> {
        self.open.values().map(|(_, t)| t)
    }

    /// Emits the open records logged before `cutoff`. PostgreSQL writes a record's lines in
    /// one piece, so once later lines arrived an older open record is complete.
    pub fn finish_before(
        &mut self,
        cutoff: chrono::DateTime<chrono::Utc>,
    ) -> Vec<(LogRecord<'static>, T)> {
        let keys: Vec<Option<i64>> = self
            .open
            .iter()
            .filter(|(_, (r, _))| r.log_time.is_none_or(|t| t < cutoff))
            .map(|(k, _)| *k)
            .collect();
        let mut out: Vec<(LogRecord<'static>, T)> =
            keys.iter().filter_map(|k| self.open.remove(k)).collect();
        out.sort_by_key(|(r, _)| r.log_time);
        out
    }

    /// Emits every open record.
    pub fn finish(&mut self) -> Vec<(LogRecord<'static>, T)> {
        let mut out: Vec<(LogRecord<'static>, T)> = self.open.drain().map(|(_, r)| r).collect();
        out.sort_by_key(|(r, _)| r.log_time);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_and_attachment() {
        let p = Prefix::new("%m [%p] ", None).unwrap();
        let mut a = StderrAssembler::default();
        let lines: [&[u8]; 4] = [
            b"2026-11-23 09:10:55.631 UTC [7] ERROR:  duplicate key at character 15\n",
            b"2026-11-23 09:10:55.631 UTC [7] DETAIL:  Key (id)=(1) already exists.\n",
            b"2026-11-23 09:10:55.631 UTC [7] STATEMENT:  INSERT INTO t\n\tVALUES (1);\n",
            b"2026-11-23 09:10:56.000 UTC [7] LOG:  next\n",
        ];
        let mut out = Vec::new();
        for (offset, l) in lines.into_iter().enumerate() {
            let (r, k) = parse_stderr_line(std::str::from_utf8(l).unwrap(), &p).unwrap();
            match a.push(r.into_owned(), k, offset) {
                Pushed::Opened(done) => out.extend(done.map(|(r, _)| r)),
                Pushed::Attached => {}
                Pushed::Orphan(_) => panic!("every line here has a parent"),
            }
        }
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].detail.as_deref(),
            Some("Key (id)=(1) already exists.")
        );
        assert_eq!(out[0].query.as_deref(), Some("INSERT INTO t\nVALUES (1);"));
        assert_eq!(
            (&*out[0].message, out[0].query_pos),
            ("duplicate key", Some(15))
        );
        let rest = a.finish();
        assert_eq!((&*rest[0].0.message, rest[0].1), ("next", 3), "its own tag");
        let (stray, k) = parse_stderr_line(std::str::from_utf8(lines[1]).unwrap(), &p).unwrap();
        assert!(
            matches!(a.push(stray.into_owned(), k, 9), Pushed::Orphan((_, 9))),
            "a parentless DETAIL keeps its tag"
        );
        assert!(parse_stderr_line("no prefix here\n", &p).is_err());
    }
}
