//! A log file's identity: a fingerprint of its head, which survives rename, reboot, remount
//! and a copy to another device, and changes when a file name is reused or a file is
//! rewritten in place.
//!
//! Owns [`FileId`], [`Head`], [`IdentityRule`] and [`read_head`]. The head a fingerprint
//! covers is a prefix of the file that, once complete, never changes as the file grows: the
//! first line (csvlog, jsonlog: it starts with a millisecond timestamp and a process id), or
//! for stderr logs everything up to and including the first line that carries a timestamp.
//! A stderr log can begin with lines PostgreSQL did not prefix (a failing `restore_command`'s
//! `cp: cannot stat ...` on every new file of a standby), and two different files beginning
//! with the same such line must not be taken for copies of one. Must not: read past
//! [`HEAD_MAX`] (a head is read again at every rewrite check: only files still without a
//! timestamped line cost more than a line).

use std::fs::File;
use std::os::unix::fs::FileExt;

use pgtrail_avro::LogFormat;

/// Bytes of a first line that the fingerprint covers at most.
pub const FINGERPRINT_BYTES: usize = 1024;

/// Bytes of a stderr log that may come before its first timestamped line; a head this long
/// without one is fingerprinted whole (a standby retrying a missing WAL segment writes about
/// 80 bytes every 5 s: a day of it before two files look alike).
pub const HEAD_MAX: usize = 1 << 20;

/// How far into a line a timestamp is looked for (the `log_line_prefix` is at its start).
const PREFIX_SPAN: usize = 256;

/// Identity of a log file: what it holds, not where it lives. Device and inode numbers change
/// across reboots and remounts (device-mapper minors, NFS, overlay) and when files are copied
/// to another device, while a PostgreSQL log's first timestamped line (a timestamp and, with
/// the usual prefixes, a process id) does not. Two files with the same head are copies of one
/// log: shipped once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    /// xxh3 of the head (see [`read_head`]).
    pub fingerprint: u64,
}

impl std::fmt::Display for FileId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.fingerprint)
    }
}

/// What the first bytes of a file say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Not enough bytes yet for a fingerprint (the head is not complete).
    NotReady,
    /// Contains NUL bytes: not a PostgreSQL text log.
    Binary,
    /// The fingerprint.
    Ready(u64),
}

/// Which head a file's fingerprint covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityRule {
    /// The first line (at most [`FINGERPRINT_BYTES`]).
    FirstLine,
    /// Up to and including the first line with a timestamp in its first bytes (at most
    /// [`HEAD_MAX`] in all; a first line that has one is covered as by `FirstLine`).
    FirstTimestampedLine,
}

impl IdentityRule {
    /// The rule for a file of `format` from a server logging with `log_line_prefix`: stderr
    /// logs whose prefix has a time escape (`%m`, `%t`, `%n`) look for their first
    /// timestamped line; without one no line is known to be PostgreSQL's own.
    pub fn for_file(format: LogFormat, log_line_prefix: &str) -> IdentityRule {
        if format == LogFormat::Stderr && prefix_has_time(log_line_prefix) {
            IdentityRule::FirstTimestampedLine
        } else {
            IdentityRule::FirstLine
        }
    }
}

/// Whether `log_line_prefix` writes a timestamp (`%m`, `%t` or `%n`, not escaped as `%%`).
pub fn prefix_has_time(log_line_prefix: &str) -> bool {
    let mut chars = log_line_prefix.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            // Padding digits may come between `%` and the escape letter.
            let escape = chars.by_ref().find(|c| !c.is_ascii_digit() && *c != '-');
            if matches!(escape, Some('m' | 't' | 'n')) {
                return true;
            }
        }
    }
    false
}

/// Whether `line` has a timestamp near its start: `YYYY-MM-DD HH:MM:SS` (`%m`, `%t`) or
/// seconds since the epoch with milliseconds (`%n`, ten digits, a dot, three digits).
fn timestamped(line: &[u8]) -> bool {
    let head = &line[..line.len().min(PREFIX_SPAN)];
    let digit = |i: usize| head.get(i).is_some_and(u8::is_ascii_digit);
    let at = |i: usize, b: u8| head.get(i) == Some(&b);
    (0..head.len()).any(|i| {
        let date = (0..4).all(|k| digit(i + k))
            && at(i + 4, b'-')
            && digit(i + 5)
            && digit(i + 6)
            && at(i + 7, b'-')
            && digit(i + 8)
            && digit(i + 9)
            && at(i + 10, b' ')
            && digit(i + 11)
            && digit(i + 12)
            && at(i + 13, b':');
        let epoch =
            (0..10).all(|k| digit(i + k)) && at(i + 10, b'.') && (11..14).all(|k| digit(i + k));
        date || epoch
    })
}

/// Reads the head of `file` as `rule` says and fingerprints it.
pub fn read_head(file: &File, rule: IdentityRule) -> std::io::Result<Head> {
    let max = match rule {
        IdentityRule::FirstLine => FINGERPRINT_BYTES,
        IdentityRule::FirstTimestampedLine => HEAD_MAX,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(FINGERPRINT_BYTES);
    let mut chunk = [0u8; FINGERPRINT_BYTES];
    // Bytes before `scanned` are whole lines without a timestamp.
    let mut scanned = 0;
    loop {
        let want = (max - buf.len()).min(chunk.len());
        let got = file.read_at(&mut chunk[..want], buf.len() as u64)?;
        if memchr::memchr(0, &chunk[..got]).is_some() {
            return Ok(Head::Binary);
        }
        buf.extend_from_slice(&chunk[..got]);
        while let Some(p) = memchr::memchr(b'\n', &buf[scanned..]) {
            let end = scanned + p + 1;
            if rule == IdentityRule::FirstLine || timestamped(&buf[scanned..end]) {
                // A first line is covered as it always was: at most FINGERPRINT_BYTES.
                let covered = if scanned == 0 {
                    end.min(FINGERPRINT_BYTES)
                } else {
                    end
                };
                return Ok(Head::Ready(xxhash_rust::xxh3::xxh3_64(&buf[..covered])));
            }
            scanned = end;
        }
        if buf.len() >= max {
            return Ok(Head::Ready(xxhash_rust::xxh3::xxh3_64(&buf[..max])));
        }
        if got == 0 {
            return Ok(Head::NotReady);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8], rule: IdentityRule) -> Head {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, bytes).unwrap();
        read_head(&File::open(&p).unwrap(), rule).unwrap()
    }

    #[test]
    fn head_fingerprint_needs_a_first_line_and_rejects_binary() {
        let rule = IdentityRule::FirstLine;
        assert_eq!(head(b"2026 LOG:  x", rule), Head::NotReady);
        let fp = head(b"2026 LOG:  x\nmore", rule);
        assert!(matches!(fp, Head::Ready(_)));
        assert_eq!(head(b"2026 LOG:  x\nother tail", rule), fp);
        assert_eq!(
            head(b"\x1f\x8b\x08\x00\x00\x00binary\n", rule),
            Head::Binary
        );
    }

    /// Review of issue 17: stderr logs of a standby whose `restore_command` fails begin with
    /// the same unprefixed line; the fingerprint of the first line took every such file for a
    /// copy of the first one, and its records were never shipped.
    #[test]
    fn stderr_files_beginning_alike_differ_by_their_first_timestamped_line() {
        let rule = IdentityRule::for_file(LogFormat::Stderr, "%m [%p] ");
        assert_eq!(rule, IdentityRule::FirstTimestampedLine);
        let cp =
            b"cp: cannot stat '/archive/000000010000000000000007': No such file or directory\n";
        let a = [&cp[..], b"2026-11-23 09:10:51.000 UTC [7] LOG:  a\n"].concat();
        let b = [&cp[..], b"2026-11-23 10:10:51.000 UTC [9] LOG:  b\n"].concat();
        assert_eq!(head(cp, rule), Head::NotReady, "no timestamped line yet");
        let (ha, hb) = (head(&a, rule), head(&b, rule));
        assert!(matches!(ha, Head::Ready(_)));
        assert_ne!(ha, hb);
        // Stable as the file grows; the first-line rule took them for one file.
        assert_eq!(head(&[&a[..], b"\tmore\nand more\n"].concat(), rule), ha);
        assert_eq!(
            head(&a, IdentityRule::FirstLine),
            head(&b, IdentityRule::FirstLine)
        );
        // A head that starts timestamped is fingerprinted as by its first line (checkpoints
        // written before keep their keys).
        assert_eq!(
            head(&b[cp.len()..], rule),
            head(&b[cp.len()..], IdentityRule::FirstLine)
        );
        // %n: epoch seconds.
        let n = [&cp[..], b"1764667851.000 [7] LOG:  a\n"].concat();
        assert!(matches!(head(&n, rule), Head::Ready(_)));
        // A head without any timestamped line is fingerprinted once HEAD_MAX long.
        let junk = cp.repeat(HEAD_MAX / cp.len() + 1);
        assert!(matches!(head(&junk, rule), Head::Ready(_)));
        assert_eq!(head(&junk[..HEAD_MAX - 1], rule), Head::NotReady);
    }

    #[test]
    fn time_escapes_are_recognised() {
        assert!(prefix_has_time("%m [%p] "));
        assert!(prefix_has_time("[%p] %t "));
        assert!(prefix_has_time("%-10n "));
        assert!(!prefix_has_time("[%p] %u@%d "));
        assert!(!prefix_has_time("%%m "));
        assert!(!prefix_has_time(""));
        assert_eq!(
            IdentityRule::for_file(LogFormat::Csvlog, "%m "),
            IdentityRule::FirstLine
        );
    }
}
