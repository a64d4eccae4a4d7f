//! The README's first command, `scripts/quickstart`, on the committed sample: embedded Kafka
//! in the processor, the shipper on both sample servers, the processor into a lake, then the
//! summary. The tables hold exactly the independent count of the sample's audit records and
//! unaudited failures, and the summary shows them.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use pgtrail_tests::lake::{expected_rows, read_rows, table_uri};
use pgtrail_tests::pglogs::expected_records;
use pgtrail_tests::process::binary;
use pgtrail_tests::{WorkDir, workspace_root};

#[test]
fn quickstart_runs_the_pipeline_on_the_sample_and_prints_the_summary() {
    let bin_dir = binary("pgtrail-processor").parent().unwrap().to_path_buf();
    let work = WorkDir::new("quickstart");
    let lake = work.path().join("lake");
    let out = Command::new(workspace_root().join("scripts/quickstart"))
        .env("PGTRAIL_BIN_DIR", &bin_dir)
        .env("PGTRAIL_LAKE", &lake)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quickstart failed:\n{stdout}\n{stderr}"
    );
    for server in ["primary", "replica"] {
        let rows = read_rows(&table_uri(&lake, server));
        let expected = expected_rows(&workspace_root().join("tests/fixtures/sample").join(server));
        let unaudited = rows.iter().filter(|r| r.unaudited).count();
        assert_eq!(
            (rows.len() - unaudited, unaudited),
            (expected.audit, expected.unaudited_failures),
            "{server}"
        );
        let failures = rows.iter().filter(|r| r.result == "FAILURE").count();
        assert!(failures > 0, "{server}: the sample's failures");
        let summary = stdout
            .split(&format!("{server}_postgresql_logs\n"))
            .nth(1)
            .unwrap_or_default();
        assert!(
            summary
                .lines()
                .next()
                .is_some_and(|l| l.starts_with("  version ")
                    && l.contains(&format!(", rows {}, last commit", rows.len()))),
            "summary of {server}:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!("({failures} failures)")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("To read them"), "{stdout}");
}

/// Runs `scripts/quickstart` on `dirs` into `lake` with `env`: its stdout (panics on failure).
fn quickstart(lake: &std::path::Path, dirs: &[&std::path::Path], env: &[(&str, &str)]) -> String {
    let bin_dir = binary("pgtrail-processor").parent().unwrap().to_path_buf();
    let mut cmd = Command::new(workspace_root().join("scripts/quickstart"));
    cmd.args(dirs)
        .env("PGTRAIL_BIN_DIR", &bin_dir)
        .env("PGTRAIL_LAKE", lake);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "quickstart failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Kafka offsets the table's partitions are at, summed as messages covered (position + 1).
fn covered(uri: &str) -> i64 {
    let out = Command::new(binary("pgtrail-processor"))
        .args(["status", "--table", uri, "--json"])
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    s[0]["offsets"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap() + 1)
        .sum()
}

/// Issue 17, items 11 and 12: a directory of one format each (csvlog, jsonlog, stderr) works
/// with no per-server configuration (the shipper sends the stderr prefix), and after the
/// drain every partition's position is its last offset; a stderr directory shipped with the
/// wrong prefix dead-letters every record, and still every position moves to its end.
#[test]
fn quickstart_reads_a_directory_of_each_format() {
    let work = WorkDir::new("quickstart-formats");
    let sample = workspace_root().join("tests/fixtures/sample/primary");
    let expected = expected_rows(&sample);
    for ext in ["csv", "json", "log"] {
        let dir = work.path().join(ext).join("primary");
        std::fs::create_dir_all(&dir).unwrap();
        for f in std::fs::read_dir(&sample).unwrap().flatten() {
            if f.path().extension().is_some_and(|e| e == ext) {
                std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
            }
        }
        let lake = work.path().join(format!("lake-{ext}"));
        quickstart(&lake, &[&dir], &[]);
        let uri = table_uri(&lake, "primary");
        let rows = read_rows(&uri);
        let unaudited = rows.iter().filter(|r| r.unaudited).count();
        assert_eq!(
            (rows.len() - unaudited, unaudited),
            (expected.audit, expected.unaudited_failures),
            "{ext}"
        );
        let messages = expected_records(&dir).len() as i64;
        assert_eq!(covered(&uri), messages, "{ext}: every position at its end");
    }
    let dir = work.path().join("log").join("primary");
    let lake = work.path().join("lake-wrong-prefix");
    quickstart(&lake, &[&dir], &[("PGTRAIL_LOG_LINE_PREFIX", "%t <%u> ")]);
    let uri = table_uri(&lake, "primary");
    assert!(read_rows(&uri).is_empty(), "every record dead-lettered");
    assert_eq!(
        covered(&uri),
        expected_records(&dir).len() as i64,
        "positions move without rows"
    );
}
