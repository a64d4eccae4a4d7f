//! The shipper binary's command line: a configuration error is reported with its cause and exit
//! code 2 before anything starts. Also the reason this package has an integration test at all:
//! it makes `cargo test` build `pgtrail-shipper`, which the end-to-end tests in `tests/` run.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pgtrail-shipper");

/// Runs the shipper with `args`; its exit code and everything it printed.
fn run(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("PGTRAIL_LOG", "error")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn unknown_config_key_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("shipper.toml");
    std::fs::write(&cfg, "server = \"primary\"\nbogus_key = 1\n").unwrap();
    let (code, text) = run(&["--config".as_ref(), cfg.as_os_str()]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("unknown field `bogus_key`"), "{text}");
}

#[test]
fn missing_config_file_exits_2_naming_the_file() {
    let missing = "/nonexistent/pgtrail-shipper.toml";
    let (code, text) = run(&["--config".as_ref(), missing.as_ref()]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains(missing), "{text}");
}
