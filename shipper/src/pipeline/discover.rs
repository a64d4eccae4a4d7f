//! File lifecycle of the main loop: discovery through the globs, growth polling, truncation
//! and rewrite detection, end-of-file flushes, closing finished files, periodic checkpoints.
//!
//! Owns nothing of its own: these are `Shipper` methods kept apart from the produce path.
//! Invariants: a file is identified by (device, inode) while open and by [`FileId`] (its first
//! line) in checkpoints and messages, so a reboot, a remount or a copy to another device
//! resumes where its checkpoint says; of two files with one identity only one is shipped; a file that vanished from the globs is read to its end through its open
//! descriptor and closed only when every record is acknowledged; a truncated or rewritten
//! file is dropped and rediscovered from offset 0 under its new identity. Must not: send to
//! Kafka.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Shipper;
use crate::error::ShipperError;
use crate::tailer::{FileId, Head, IdentityRule, OpenedFile, TailedFile, read_head};
use crate::telemetry::{FileLabel, Metrics, ReasonLabel};

impl Shipper {
    /// Evaluates the globs: opens new files, notices renames and files that went away.
    pub(super) fn scan(&mut self) {
        let mut present = std::collections::HashSet::new();
        let mut skipped_seen = std::collections::HashSet::new();
        let mut copies_seen = std::collections::HashSet::new();
        let paths: Vec<PathBuf> = self
            .cfg
            .logs
            .iter()
            .filter_map(|g| glob::glob(g).ok())
            .flat_map(|paths| paths.filter_map(Result::ok))
            .collect();
        for path in paths {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let inode = (meta.dev(), meta.ino());
            if let Some(&key) = self.by_inode.get(&inode) {
                present.insert(key);
                if let Some(f) = self.files.get_mut(&key) {
                    if f.path != path {
                        info!(from = %f.path.display(), to = %path.display(), file_id = f.id_text, "File renamed; following it.");
                        f.renamed(path, &self.info);
                    }
                    f.gone = false;
                }
                continue;
            }
            if self.skipped.contains(&inode) {
                skipped_seen.insert(inode);
                continue;
            }
            if meta.len() == 0 {
                continue;
            }
            if let Some(key) = self.open_file(path, inode, meta.len()) {
                present.insert(key);
            } else if self.skipped.contains(&inode) {
                skipped_seen.insert(inode);
            } else if self.copies.contains(&inode) {
                copies_seen.insert(inode);
            }
        }
        self.skipped.retain(|i| skipped_seen.contains(i));
        self.copies.retain(|i| copies_seen.contains(i));
        for (key, f) in &mut self.files {
            if !present.contains(key) && !f.gone {
                info!(path = %f.path.display(), file_id = f.id_text, "File left the globs (rotated away or deleted); reading it to its end.");
                f.gone = true;
            }
            if !f.gone {
                self.checkpoints.touch(&f.id_text);
            }
        }
        self.scanned = true;
    }

    fn open_file(&mut self, path: PathBuf, inode: (u64, u64), len: u64) -> Option<u64> {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "Cannot open log file; will retry.");
                return None;
            }
        };
        let format = self.cfg.format.for_path(&path);
        let rule = IdentityRule::for_file(format, &self.info.log_line_prefix);
        let fingerprint = match read_head(&file, rule) {
            Ok(Head::Ready(fp)) => fp,
            Ok(Head::NotReady) => return None,
            Ok(Head::Binary) => {
                warn!(path = %path.display(), "File matched by the globs holds binary data; skipping it.");
                self.metrics
                    .files_skipped
                    .get_or_create(&ReasonLabel {
                        reason: "binary".into(),
                    })
                    .inc();
                self.skipped.insert(inode);
                return None;
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "Cannot read log file head; will retry.");
                return None;
            }
        };
        let id = FileId { fingerprint };
        let id_text = id.to_string();
        if let Some(open) = self.files.values().find(|f| f.id == id) {
            // A copy of a file being shipped (a rotated copy, logs copied aside): the same
            // records under another name are shipped once; looked at again at every scan.
            if self.copies.insert(inode) {
                info!(path = %path.display(), same_as = %open.path.display(), file_id = id_text, "Same head as a file being shipped: a copy, not shipped twice.");
            }
            return None;
        }
        let mut offset = match self.checkpoints.get(&id_text) {
            Some(c) => c.offset,
            None => self.legacy_offset(&file, &path, rule).unwrap_or(0),
        };
        if offset > len {
            warn!(path = %path.display(), file_id = id_text, checkpoint = offset, size = len, "File is shorter than its checkpoint (truncated while stopped); starting over.");
            self.metrics.files_truncated.inc();
            offset = 0;
        }
        info!(path = %path.display(), file_id = id_text, %format, offset, size = len, "Tailing file.");
        let key = self.next_key;
        self.next_key += 1;
        self.files_seen += 1;
        let opened = OpenedFile {
            file,
            path,
            inode,
            size: len,
        };
        let f = TailedFile::new(id, opened, format, offset, &self.info);
        self.checkpoints
            .set(&id_text, &f.path.to_string_lossy(), offset);
        self.files.insert(key, f);
        self.by_inode.insert(inode, key);
        Some(key)
    }

    /// The checkpoint of `file` written when stderr logs were identified by their first line
    /// alone (before their first timestamped line), if one is kept for this very path: the
    /// file is taken up where it was, not shipped again under its new identity.
    fn legacy_offset(&self, file: &std::fs::File, path: &Path, rule: IdentityRule) -> Option<u64> {
        if rule == IdentityRule::FirstLine {
            return None;
        }
        let Ok(Head::Ready(fp)) = read_head(file, IdentityRule::FirstLine) else {
            return None;
        };
        let c = self
            .checkpoints
            .get(&FileId { fingerprint: fp }.to_string())?;
        (Path::new(&c.path) == path).then_some(c.offset)
    }

    /// Drops files that were truncated or rewritten in place; the next scan finds them again.
    pub(super) fn check_rewritten(&mut self) {
        let dropped: Vec<u64> = self
            .files
            .iter_mut()
            .filter(|(_, f)| !f.gone)
            .filter_map(|(key, f)| rewritten(f).then_some(*key))
            .collect();
        self.drop_rewritten(dropped);
    }

    fn drop_rewritten(&mut self, keys: Vec<u64>) {
        for key in keys {
            self.metrics.files_truncated.inc();
            self.close(key, true);
        }
    }

    fn close(&mut self, key: u64, forget: bool) {
        if let Some(f) = self.files.remove(&key) {
            self.by_inode.remove(&f.inode);
            self.metrics.file_lag_bytes.remove(&FileLabel {
                file: f.file_name(),
            });
            if forget {
                self.checkpoints.remove(&f.id_text);
            } else {
                info!(path = %f.path.display(), file_id = f.id_text, offset = f.acks.acked_offset(), "File shipped to its end; closed.");
            }
        }
    }

    /// Growth polling, end-of-file flushes of final records, closing of finished files.
    pub(super) fn poll_files(&mut self) {
        let timeout = Duration::from_millis(self.cfg.partial_record_timeout_ms);
        let once = self.cfg.once;
        let mut dropped = Vec::new();
        let mut flush = Vec::new();
        let mut finished = Vec::new();
        for (key, f) in &mut self.files {
            let was_at_end = f.read_pos >= f.size;
            match f.refresh_size() {
                // Grew after we reached its end: maybe a reused name. Check before reading on.
                Ok(true) if was_at_end && !f.gone && rewritten(f) => {
                    dropped.push(*key);
                    continue;
                }
                Ok(_) => {}
                Err(e) => warn!(path = %f.path.display(), error = %e, "Cannot stat log file."),
            }
            if f.eof && f.framer.pending_bytes() > 0 {
                let terminated = f.framer.pending_is_terminated();
                let idle = f.last_growth.elapsed() >= timeout;
                if f.gone || idle || (once && terminated) {
                    flush.push((*key, terminated));
                }
            }
            if f.gone && f.eof && f.is_drained() {
                finished.push(*key);
            }
        }
        self.drop_rewritten(dropped);
        for (key, terminated) in flush {
            if !terminated && let Some(f) = self.files.get(&key) {
                warn!(path = %f.path.display(), file_id = f.id_text, bytes = f.framer.pending_bytes(), "Final record has no terminating newline; shipping it as it is.");
                self.metrics
                    .partial_records_flushed
                    .get_or_create(&Metrics::format(f.format))
                    .inc();
            }
            self.frame(key, |framer, emit| framer.flush(emit));
        }
        for key in finished {
            self.close(key, false);
        }
    }

    /// Checkpoint tick: write moved checkpoints, refresh gauges, report progress, recover from
    /// a fatal producer error.
    pub(super) fn checkpoint(&mut self) -> Result<(), ShipperError> {
        if let Some(reason) = self.sink.connect_failure() {
            self.checkpoints.write_if_dirty()?;
            return Err(ShipperError::KafkaSetup {
                topic: self.sink.topic().to_owned(),
                reason,
            });
        }
        if let Some(reason) = self.sink.fatal_error() {
            self.start_recovery(&format!("producer failed fatally: {reason}"));
        }
        // Only once the globs were evaluated: after a long outage every checkpoint is older
        // than the retention, and the first scan marks those of files still present.
        if self.scanned {
            self.checkpoints.prune(Duration::from_secs(
                self.cfg.checkpoint_retention_hours * 3600,
            ));
        }
        if self.checkpoints.write_if_dirty()? {
            self.metrics.checkpoint_writes.inc();
        }
        let m = &self.metrics;
        m.checkpoint_age_seconds.set(self.checkpoints.age_secs());
        m.in_flight_records.set(self.in_flight_records as i64);
        m.in_flight_bytes.set(self.in_flight_bytes as i64);
        m.files_open.set(self.files.len() as i64);
        m.kafka_up.set(i64::from(!self.sink.brokers_down()));
        self.health
            .report(super::READY_KAFKA, !self.sink.brokers_down());
        let mut lag = 0u64;
        for f in self.files.values() {
            lag += f.lag_bytes();
            m.file_lag_bytes
                .get_or_create(&FileLabel {
                    file: f.file_name(),
                })
                .set(f.lag_bytes() as i64);
        }
        let pressed = self.in_flight_bytes >= self.cfg.max_in_flight_bytes;
        if pressed != self.backpressured {
            self.backpressured = pressed;
            m.backpressure.set(i64::from(pressed));
            if pressed {
                warn!(
                    in_flight_records = self.in_flight_records,
                    in_flight_bytes = self.in_flight_bytes,
                    "Kafka is not acknowledging; reading paused (backpressure)."
                );
            } else {
                info!("Kafka acknowledges again; reading resumed.");
            }
        }
        if self.last_progress.elapsed() >= Duration::from_secs(10) {
            self.last_progress = Instant::now();
            info!(
                read = self.read,
                shipped = self.shipped,
                in_flight = self.in_flight_records,
                lag_bytes = lag,
                files = self.files.len(),
                "Progress."
            );
        }
        Ok(())
    }
}

/// Whether `f` was truncated or rewritten in place (logged with the reason).
fn rewritten(f: &mut TailedFile) -> bool {
    match f.check_rewritten() {
        Ok(Some(why)) => {
            warn!(path = %f.path.display(), file_id = f.id_text, read = f.read_pos, reason = why, "File truncated or rewritten in place; starting over from its beginning.");
            true
        }
        Ok(None) => false,
        Err(e) => {
            warn!(path = %f.path.display(), error = %e, "Cannot stat log file.");
            false
        }
    }
}
