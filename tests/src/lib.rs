//! Test harness for pgtrail's end-to-end tests: real broker, real PostgreSQL logs, real
//! processes.
//!
//! Owns: [`broker`] (Tansu behind a cuttable proxy), [`pglogs`] (log generation and an
//! independent record enumeration), [`consume`] (reading topics back), [`process`] (building
//! and running the binaries), [`registry`] (a Schema Registry that can be taken down),
//! [`secure`] (TLS and SCRAM brokers), [`objstore`] (S3 and Azure emulators), [`lagmon`]
//! (webhook receiver, `lag --once`, a mock cluster with retention), [`replay`] (table
//! positions, `replay` runs, job-audit rows against the commits), [`chart`] (the Helm chart
//! rendered, its containers laid out and run here). Must not: reimplement product logic it
//! checks.

pub mod broker;
pub mod chart;
pub mod consume;
pub mod lagmon;
pub mod lake;
pub mod objstore;
pub mod pglogs;
pub mod process;
pub mod registry;
pub mod replay;
pub mod secure;

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A test's work directory: removed when the test passes, kept (and its path printed) when
/// the test panics, so the logs of the processes it ran can be read afterwards.
pub struct WorkDir(Option<tempfile::TempDir>);

impl WorkDir {
    /// A new work directory (see [`tempdir`]).
    pub fn new(prefix: &str) -> WorkDir {
        WorkDir(Some(tempdir(prefix)))
    }

    /// Its path.
    pub fn path(&self) -> &std::path::Path {
        self.0
            .as_ref()
            .map_or(std::path::Path::new("/"), |d| d.path())
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.0.take()
        {
            eprintln!("work directory kept: {}", d.keep().display());
        }
    }
}

/// A temporary directory readable by the `postgres` user (PostgreSQL writes logs into it).
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("pgtrail-{prefix}-"))
        .tempdir()
        .expect("tempdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}
