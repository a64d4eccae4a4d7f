//! Real PostgreSQL logs for tests, and an independent enumeration of the records in them.
//!
//! Owns [`PgLogs`] (runs `tests/fixtures/generate-pg-logs`: a primary and a streaming replica
//! with pgaudit, all three log formats), [`PgCluster`] (servers left running while a test
//! ships, for crash tests) and [`expected_records`], which finds record starts without the
//! shipper's framer: the `csv` crate for csvlog, lines for jsonlog, non-tab lines for stderr.
//! Must not: share code with the shipper's framer (it is what is being checked).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use pgtrail_avro::LogFormat;

/// The generator script.
pub fn generator() -> PathBuf {
    crate::workspace_root().join("tests/fixtures/generate-pg-logs")
}

/// Logs of a finished run: `<dir>/primary`, `<dir>/replica`.
pub struct PgLogs {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl PgLogs {
    /// Generates logs with `pgbench_tx` pgbench transactions per client.
    pub fn generate(pgbench_tx: u32) -> PgLogs {
        let dir = crate::tempdir("pglogs");
        let out = Command::new(generator())
            .args([
                "--out",
                &dir.path().to_string_lossy(),
                "--pgbench-tx",
                &pgbench_tx.to_string(),
            ])
            .stdout(Stdio::null())
            .output()
            .expect("run generate-pg-logs");
        assert!(
            out.status.success(),
            "generate-pg-logs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PgLogs { dir }
    }

    /// Log directory of `server`.
    pub fn server_dir(&self, server: &str) -> PathBuf {
        self.dir.path().join(server)
    }

    /// The stderr `log_line_prefix` the generator configured.
    pub fn log_line_prefix(&self) -> String {
        read_prefix(self.dir.path())
    }
}

fn read_prefix(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("log_line_prefix"))
        .map(|s| s.trim_end_matches('\n').to_owned())
        .expect("log_line_prefix written by the generator")
}

/// Servers still running; their logs grow while a test works.
pub struct PgCluster {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    stream: Option<Child>,
    stopped: bool,
}

impl PgCluster {
    /// Starts primary and replica and runs the fixed workload once.
    pub fn start() -> PgCluster {
        let dir = crate::tempdir("pgcluster");
        let d = dir.path().to_string_lossy().into_owned();
        for step in [
            vec!["start", "--out", &d],
            vec!["workload", "--out", &d, "--pgbench-tx", "20"],
        ] {
            let out = Command::new(generator())
                .args(&step)
                .stdout(Stdio::null())
                .output()
                .expect("generator");
            assert!(
                out.status.success(),
                "generator {step:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        PgCluster {
            dir,
            stream: None,
            stopped: false,
        }
    }

    /// Starts pgbench on both servers for `seconds` in the background.
    pub fn stream(&mut self, seconds: u32) {
        self.stream_at(seconds, None);
    }

    /// Like [`PgCluster::stream`], throttled to `rate` transactions/s per server.
    pub fn stream_at(&mut self, seconds: u32, rate: Option<u32>) {
        let mut args = vec![
            "stream".to_owned(),
            "--out".into(),
            self.dir.path().to_string_lossy().into_owned(),
            "--seconds".into(),
            seconds.to_string(),
        ];
        if let Some(r) = rate {
            args.extend(["--rate".into(), r.to_string()]);
        }
        let child = Command::new(generator())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("generator stream");
        self.stream = Some(child);
    }

    /// Whether the background workload is still running.
    pub fn streaming(&mut self) -> bool {
        self.stream
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the background workload to end.
    pub fn wait_stream(&mut self) {
        if let Some(mut c) = self.stream.take() {
            let _ = c.wait();
        }
    }

    /// Stops both servers; the logs stay.
    pub fn stop(&mut self) {
        self.wait_stream();
        if !self.stopped {
            let _ = Command::new(generator())
                .args(["stop", "--out", &self.dir.path().to_string_lossy()])
                .stdout(Stdio::null())
                .status();
            self.stopped = true;
        }
    }

    /// Log directory of `server`.
    pub fn server_dir(&self, server: &str) -> PathBuf {
        self.dir.path().join(server)
    }

    /// The stderr `log_line_prefix`.
    pub fn log_line_prefix(&self) -> String {
        read_prefix(self.dir.path())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut c) = self.stream.take() {
            let _ = c.kill();
        }
        self.stop();
    }
}

/// One record as found independently in a log file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExpectedRecord {
    /// File path.
    pub path: String,
    /// Byte offset of the record.
    pub offset: u64,
    /// Record bytes.
    pub data: Vec<u8>,
}

/// Every record in every log file of `dir`, by format, found without the shipper's framer.
pub fn expected_records(dir: &Path) -> Vec<ExpectedRecord> {
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("log dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    for path in paths {
        let bytes = std::fs::read(&path).expect("read log");
        let starts = match LogFormat::from_path(&path) {
            LogFormat::Csvlog => csv_starts(&path),
            LogFormat::Jsonlog => line_starts(&bytes, |_| true),
            LogFormat::Stderr => line_starts(&bytes, |first| first != Some(&b'\t')),
        };
        for (i, &s) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(bytes.len() as u64);
            out.push(ExpectedRecord {
                path: path.to_string_lossy().into_owned(),
                offset: s,
                data: bytes[s as usize..end as usize].to_vec(),
            });
        }
    }
    out
}

/// Record start offsets of a csvlog file, by the `csv` crate.
fn csv_starts(path: &Path) -> Vec<u64> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .expect("csv");
    let mut rec = csv::ByteRecord::new();
    let mut starts = Vec::new();
    loop {
        let pos = r.position().byte();
        match r.read_byte_record(&mut rec) {
            Ok(true) => {
                assert!(
                    rec.len() >= 23,
                    "{}: a csvlog record has at least 23 columns",
                    path.display()
                );
                starts.push(pos);
            }
            Ok(false) => break,
            Err(e) => panic!("{}: csv error {e}", path.display()),
        }
    }
    starts
}

fn line_starts(bytes: &[u8], starts_record: impl Fn(Option<&u8>) -> bool) -> Vec<u64> {
    let mut starts = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        if starts_record(bytes.get(at)) || starts.is_empty() {
            starts.push(at as u64);
        }
        at = bytes[at..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(bytes.len(), |p| at + p + 1);
    }
    starts
}
