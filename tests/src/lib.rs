//! Test harness for pgtrail's end-to-end tests: real broker, real PostgreSQL logs, real
//! processes.
//!
//! Owns: [`broker`] (Tansu behind a cuttable proxy), [`pglogs`] (log generation and an
//! independent record enumeration), [`consume`] (reading topics back), [`process`] (building
//! and running the binaries). Must not: reimplement product logic it checks.

pub mod broker;
pub mod consume;
pub mod lake;
pub mod pglogs;
pub mod process;

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
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
