//! The README's first command, `scripts/quickstart`, on the committed sample: embedded Kafka
//! in the processor, the shipper on both sample servers, the processor into a lake, then the
//! summary. The tables hold exactly the independent count of the sample's audit records and
//! unaudited failures, and the summary shows them.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use pgtrail_tests::lake::{expected_rows, read_rows, table_uri};
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
