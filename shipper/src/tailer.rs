//! One tailed log file: identity, reading, framing and the acknowledgement frontier.
//!
//! Owns [`AckTracker`] (the in-order frontier of acknowledged records) and [`TailedFile`]
//! (which also knows its device and inode: they tell open files apart while running, and are
//! never persisted). Invariants: `read_pos` only
//! grows, except through [`TailedFile::check_rewritten`] which reports that the file must be
//! dropped; the acknowledged offset is always a record boundary with every record before it
//! acknowledged. Must not: talk to Kafka or write checkpoints (the pipeline does both).

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use pgtrail_avro::LogFormat;
use pgtrail_avro::record::{EncodedSource, RecordSource, encode_source};

use crate::framer::Framer;
use crate::key::KeyExtractor;

/// Tracks produced records of one file in file order and advances the acknowledged offset
/// only across a contiguous prefix of acknowledged records.
#[derive(Debug)]
pub struct AckTracker {
    base_seq: u64,
    /// End offsets of produced records from `base_seq` on, with their acknowledged flag.
    slots: VecDeque<(u64, bool)>,
    acked_offset: u64,
}

impl AckTracker {
    /// A tracker whose records before `offset` are already acknowledged.
    pub fn new(offset: u64) -> Self {
        AckTracker {
            base_seq: 0,
            slots: VecDeque::new(),
            acked_offset: offset,
        }
    }

    /// Registers the next produced record, which ends at `end`; returns its sequence number.
    pub fn push(&mut self, end: u64) -> u64 {
        self.slots.push_back((end, false));
        self.base_seq + self.slots.len() as u64 - 1
    }

    /// Marks `seq` acknowledged; returns the new acknowledged offset when it moved.
    pub fn ack(&mut self, seq: u64) -> Option<u64> {
        let idx = usize::try_from(seq.checked_sub(self.base_seq)?).ok()?;
        self.slots.get_mut(idx)?.1 = true;
        let before = self.acked_offset;
        while let Some(&(end, true)) = self.slots.front() {
            self.acked_offset = end;
            self.slots.pop_front();
            self.base_seq += 1;
        }
        (self.acked_offset != before).then_some(self.acked_offset)
    }

    /// Every record before this offset is acknowledged.
    pub fn acked_offset(&self) -> u64 {
        self.acked_offset
    }

    /// Records produced and not acknowledged, including acknowledged ones behind a gap.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }
}

/// A log file being shipped.
pub struct TailedFile {
    /// Identity.
    pub id: FileId,
    /// Which head `id` covers.
    pub identity: IdentityRule,
    /// Device and inode of the open file (this run only).
    pub inode: (u64, u64),
    /// `id` as text (checkpoint key and envelope `file_id`).
    pub id_text: String,
    /// Path it was last seen at.
    pub path: PathBuf,
    /// Format.
    pub format: LogFormat,
    /// The open file (kept open so a deleted or renamed file can be read to its end).
    pub file: File,
    /// Next byte to read.
    pub read_pos: u64,
    /// Size at the last stat.
    pub size: u64,
    /// When the file last grew (or was opened).
    pub last_growth: Instant,
    /// The path no longer matches any glob (renamed away or deleted).
    pub gone: bool,
    /// The last read returned nothing; set again by [`TailedFile::refresh_size`] on growth.
    pub eof: bool,
    /// Framer state.
    pub framer: Framer,
    /// Acknowledgement frontier.
    pub acks: AckTracker,
    /// Session key finder.
    pub keys: KeyExtractor,
    /// Pre-encoded per-file part of the Avro envelope.
    pub encoded_source: EncodedSource,
}

/// Per-shipper facts every file's envelope carries.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// Logical server name.
    pub server: String,
    /// Host name.
    pub host: String,
    /// The server's `log_line_prefix` (stderr keys; sent with stderr records).
    pub log_line_prefix: String,
    /// IANA name of the server's `log_timezone`, sent with every record when known.
    pub log_timezone: Option<String>,
    /// Largest record shipped whole.
    pub max_record_bytes: usize,
}

/// A log file just opened.
pub struct OpenedFile {
    /// The open file.
    pub file: File,
    /// Its path.
    pub path: PathBuf,
    /// Its device and inode.
    pub inode: (u64, u64),
    /// Its size.
    pub size: u64,
}

impl TailedFile {
    /// Starts tailing `opened` (identity `id`) at `offset` (a checkpoint or 0).
    pub fn new(
        id: FileId,
        opened: OpenedFile,
        format: LogFormat,
        offset: u64,
        info: &SourceInfo,
    ) -> Self {
        let OpenedFile {
            file,
            path,
            inode,
            size,
        } = opened;
        let id_text = id.to_string();
        let encoded_source = source_bytes(info, format, &path, &id_text);
        TailedFile {
            id,
            identity: IdentityRule::for_file(format, &info.log_line_prefix),
            inode,
            id_text,
            format,
            file,
            read_pos: offset,
            size,
            last_growth: Instant::now(),
            gone: false,
            eof: false,
            framer: Framer::new(format, info.max_record_bytes, offset),
            acks: AckTracker::new(offset),
            keys: KeyExtractor::new(format, &info.log_line_prefix),
            encoded_source,
            path,
        }
    }

    /// Records a new path (renamed within the globs).
    pub fn renamed(&mut self, path: PathBuf, info: &SourceInfo) {
        self.encoded_source = source_bytes(info, self.format, &path, &self.id_text);
        self.path = path;
    }

    /// Reads the next chunk into `buf` (cleared first); returns the number of bytes.
    pub fn read_chunk(&mut self, buf: &mut Vec<u8>, max: usize) -> std::io::Result<usize> {
        buf.clear();
        buf.resize(max, 0);
        let n = self.file.read_at(buf, self.read_pos)?;
        buf.truncate(n);
        self.eof = n == 0;
        self.read_pos += n as u64;
        if self.read_pos > self.size {
            self.size = self.read_pos;
        }
        Ok(n)
    }

    /// Stats the open file; returns `true` when it has bytes not read yet.
    pub fn refresh_size(&mut self) -> std::io::Result<bool> {
        let len = self.file.metadata()?.len();
        if len > self.size {
            self.last_growth = Instant::now();
        }
        self.size = len;
        if len > self.read_pos {
            self.eof = false;
        }
        Ok(len > self.read_pos)
    }

    /// Whether the file was truncated or rewritten in place since it was opened: it shrank
    /// below what was read, or its first line changed (`log_truncate_on_rotation` reusing a
    /// name, which may already have grown past our position).
    pub fn check_rewritten(&mut self) -> std::io::Result<Option<&'static str>> {
        let meta = self.file.metadata()?;
        if meta.len() < self.read_pos {
            return Ok(Some("file shrank below the read position"));
        }
        if meta.ino() != self.inode.1 {
            return Ok(None);
        }
        match read_head(&self.file, self.identity)? {
            Head::Ready(fp) if fp != self.id.fingerprint => Ok(Some("first line changed")),
            Head::NotReady if self.read_pos > 0 => Ok(Some("first line is gone")),
            _ => Ok(None),
        }
    }

    /// Goes back to the acknowledged offset (a record boundary): what was read after it is
    /// read, framed and produced again. Returns whether anything is read again.
    pub fn rewind(&mut self) -> bool {
        let acked = self.acks.acked_offset();
        let moved = self.read_pos != acked || self.framer.pending_bytes() > 0;
        self.read_pos = acked;
        self.framer = Framer::new(self.format, self.framer.max_record(), acked);
        self.acks = AckTracker::new(acked);
        self.eof = false;
        moved
    }

    /// Unacknowledged bytes of this file.
    pub fn lag_bytes(&self) -> u64 {
        self.size.saturating_sub(self.acks.acked_offset())
    }

    /// Everything read was framed, produced and acknowledged.
    pub fn is_drained(&self) -> bool {
        self.read_pos >= self.size && self.framer.pending_bytes() == 0 && self.acks.in_flight() == 0
    }

    /// Base name for metric labels.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }
}

/// The per-file part of every message of the file: a source describes itself, so the
/// processor needs no per-server format settings (a stderr file carries its prefix).
fn source_bytes(info: &SourceInfo, format: LogFormat, path: &Path, id_text: &str) -> EncodedSource {
    encode_source(&RecordSource {
        server: info.server.as_str().into(),
        host: info.host.as_str().into(),
        shipper_version: env!("CARGO_PKG_VERSION").into(),
        format,
        source_path: path.to_string_lossy().into(),
        file_id: id_text.into(),
        log_line_prefix: (format == LogFormat::Stderr)
            .then(|| info.log_line_prefix.as_str().into()),
        log_timezone: info.log_timezone.as_deref().map(Into::into),
        kind: pgtrail_avro::RecordKind::Log,
    })
}

mod identity;
#[cfg(test)]
mod model;

pub use identity::{FileId, Head, IdentityRule, prefix_has_time, read_head};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_frontier_moves_only_over_contiguous_acks() {
        let mut t = AckTracker::new(10);
        let a = t.push(20);
        let b = t.push(35);
        let c = t.push(50);
        assert_eq!(t.ack(b), None, "b is behind the unacknowledged a");
        assert_eq!(t.acked_offset(), 10);
        assert_eq!(t.ack(a), Some(35));
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.ack(c), Some(50));
        assert_eq!(t.ack(c), None, "late duplicate ack is ignored");
        assert_eq!(t.in_flight(), 0);
    }
}
