//! Checkpoints: per file identity, the offset up to which Kafka acknowledged every record.
//!
//! Owns the checkpoint file `<state_dir>/checkpoints.json` (versioned JSON: `{"version": 2,
//! "files": [...]}`; version 1 files, keyed by `device:inode:fingerprint`, are read and
//! rewritten keyed by the fingerprint), its atomic replacement (temp file, fsync, rename, fsync
//! of the directory) and the state-directory lock.
//! Invariants: an offset is only ever a record boundary whose records, and all before it, were
//! acknowledged (the caller's [`crate::tailer::AckTracker`] guarantees it); a file on disk is
//! always a complete earlier or later version, never a torn one. Must not: advance offsets on
//! its own or read log files.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::ShipperError;

/// Version of the checkpoint file layout written by this build (2: files keyed by their
/// first-line fingerprint; 1: by `device:inode:fingerprint`, read and converted).
pub const CHECKPOINT_VERSION: u32 = 2;

/// The checkpoint of one file identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    /// File identity (its first-line fingerprint, see `tailer::FileId`).
    pub file_id: String,
    /// Last path the file was seen at (informational).
    pub path: String,
    /// Next byte to read: every record before it was acknowledged by Kafka.
    pub offset: u64,
    /// When this entry last changed or its file was last seen, seconds since the epoch.
    pub updated_unix: u64,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    files: Vec<FileCheckpoint>,
}

/// Entries of a version 1 file keyed by their fingerprint (the part after the last `:`);
/// entries of one file under several devices or inodes keep the furthest offset.
fn from_v1(files: Vec<FileCheckpoint>) -> HashMap<String, FileCheckpoint> {
    let mut out: HashMap<String, FileCheckpoint> = HashMap::new();
    for mut f in files {
        let key = f
            .file_id
            .rsplit(':')
            .next()
            .unwrap_or(&f.file_id)
            .to_owned();
        f.file_id.clone_from(&key);
        match out.get_mut(&key) {
            Some(e) if e.offset >= f.offset => e.updated_unix = e.updated_unix.max(f.updated_unix),
            _ => {
                out.insert(key, f);
            }
        }
    }
    out
}

/// All checkpoints of one shipper, plus the lock on its state directory.
pub struct Checkpoints {
    path: PathBuf,
    entries: HashMap<String, FileCheckpoint>,
    dirty: bool,
    last_write: Option<SystemTime>,
    _lock: File,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Checkpoints {
    /// Locks `state_dir` (creating it) and loads its checkpoint file, if any.
    pub fn open(state_dir: &Path) -> Result<Checkpoints, ShipperError> {
        let path = state_dir.join("checkpoints.json");
        let io = |source| ShipperError::Checkpoint {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(state_dir.join("lock"))
            .map_err(io)?;
        if lock.try_lock().is_err() {
            return Err(ShipperError::StateLocked {
                dir: state_dir.to_owned(),
            });
        }
        let (entries, migrated) = match std::fs::read(&path) {
            Ok(bytes) => {
                let disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| {
                    ShipperError::CheckpointCorrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                match disk.version {
                    1 => (from_v1(disk.files), true),
                    CHECKPOINT_VERSION => (
                        disk.files
                            .into_iter()
                            .map(|f| (f.file_id.clone(), f))
                            .collect(),
                        false,
                    ),
                    v => {
                        return Err(ShipperError::CheckpointCorrupt {
                            path,
                            reason: format!(
                                "version {v} (this build reads 1 and {CHECKPOINT_VERSION})"
                            ),
                        });
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HashMap::new(), false),
            Err(e) => return Err(io(e)),
        };
        Ok(Checkpoints {
            path,
            entries,
            dirty: migrated,
            last_write: None,
            _lock: lock,
        })
    }

    /// The checkpoint of `file_id`.
    pub fn get(&self, file_id: &str) -> Option<&FileCheckpoint> {
        self.entries.get(file_id)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records that every record of `file_id` before `offset` is acknowledged.
    pub fn set(&mut self, file_id: &str, path: &str, offset: u64) {
        let e = self
            .entries
            .entry(file_id.to_owned())
            .or_insert_with(|| FileCheckpoint {
                file_id: file_id.to_owned(),
                path: path.to_owned(),
                offset,
                updated_unix: 0,
            });
        if e.offset != offset || e.path != path || e.updated_unix == 0 {
            e.offset = offset;
            e.path = path.to_owned();
            e.updated_unix = now_unix();
            self.dirty = true;
        }
    }

    /// Marks `file_id` as still present (so retention does not expire it).
    pub fn touch(&mut self, file_id: &str) {
        if let Some(e) = self.entries.get_mut(file_id) {
            let now = now_unix();
            if now.saturating_sub(e.updated_unix) > 3600 {
                e.updated_unix = now;
                self.dirty = true;
            }
        }
    }

    /// Forgets `file_id` (its file was truncated: the offset no longer means anything).
    pub fn remove(&mut self, file_id: &str) {
        if self.entries.remove(file_id).is_some() {
            self.dirty = true;
        }
    }

    /// Drops entries not updated or seen for `retention`.
    pub fn prune(&mut self, retention: Duration) {
        let cutoff = now_unix().saturating_sub(retention.as_secs());
        let before = self.entries.len();
        self.entries.retain(|_, e| e.updated_unix >= cutoff);
        if self.entries.len() != before {
            self.dirty = true;
        }
    }

    /// Writes the file if anything changed since the last write. Atomic: temp file, fsync,
    /// rename over the old file, fsync the directory.
    pub fn write_if_dirty(&mut self) -> Result<bool, ShipperError> {
        if !self.dirty {
            return Ok(false);
        }
        let io = |source| ShipperError::Checkpoint {
            path: self.path.clone(),
            source,
        };
        let mut files: Vec<FileCheckpoint> = self.entries.values().cloned().collect();
        files.sort_by(|a, b| a.file_id.cmp(&b.file_id));
        let bytes = serde_json::to_vec_pretty(&OnDisk {
            version: CHECKPOINT_VERSION,
            files,
        })
        .map_err(|e| io(std::io::Error::other(e)))?;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        self.dirty = false;
        self.last_write = Some(SystemTime::now());
        Ok(true)
    }

    /// Seconds since the last successful write (0 before the first one).
    pub fn age_secs(&self) -> f64 {
        self.last_write
            .and_then(|t| t.elapsed().ok())
            .map_or(0.0, |d| d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoints::open(dir.path()).unwrap();
        assert!(matches!(
            Checkpoints::open(dir.path()),
            Err(ShipperError::StateLocked { .. })
        ));
        c.set("1:2:ab", "/l/a.csv", 42);
        assert!(c.write_if_dirty().unwrap());
        assert!(!c.write_if_dirty().unwrap(), "nothing changed");
        drop(c);
        let c = Checkpoints::open(dir.path()).unwrap();
        assert_eq!(c.get("1:2:ab").unwrap().offset, 42);
        assert!(!dir.path().join("checkpoints.json.tmp").exists());
    }

    #[test]
    fn corrupt_or_future_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("checkpoints.json"),
            b"{\"version\":9,\"files\":[]}",
        )
        .unwrap();
        let err = Checkpoints::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("version 9"), "{err}");
        std::fs::write(dir.path().join("checkpoints.json"), b"{trunc").unwrap();
        assert!(matches!(
            Checkpoints::open(dir.path()),
            Err(ShipperError::CheckpointCorrupt { .. })
        ));
    }

    /// Item 6 of issue 17: version 1 keyed files by device and inode too, which change across
    /// reboots and remounts; its entries are read keyed by the fingerprint alone.
    #[test]
    fn version_1_files_are_keyed_by_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("checkpoints.json"),
            br#"{"version":1,"files":[
                {"file_id":"803:1a2b:00000000000000ff","path":"/l/a.csv","offset":42,"updated_unix":5},
                {"file_id":"fd01:77:00000000000000ff","path":"/l/a.csv","offset":40,"updated_unix":9},
                {"file_id":"803:9:0000000000000abc","path":"/l/b.csv","offset":7,"updated_unix":5}]}"#,
        )
        .unwrap();
        let mut c = Checkpoints::open(dir.path()).unwrap();
        assert_eq!(
            c.get("00000000000000ff")
                .map(|f| (f.offset, f.updated_unix)),
            Some((42, 9))
        );
        assert_eq!(c.get("0000000000000abc").map(|f| f.offset), Some(7));
        assert!(c.write_if_dirty().unwrap(), "rewritten as version 2");
        let text = std::fs::read_to_string(dir.path().join("checkpoints.json")).unwrap();
        assert!(text.contains("\"version\": 2"), "{text}");
    }

    #[test]
    fn prune_drops_old_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpoints::open(dir.path()).unwrap();
        c.set("a", "/a", 1);
        c.entries.get_mut("a").unwrap().updated_unix = 1;
        c.set("b", "/b", 1);
        c.prune(Duration::from_secs(3600));
        assert!(c.get("a").is_none());
        assert!(c.get("b").is_some());
    }
}
