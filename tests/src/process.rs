//! Builds and runs pgtrail's binaries as child processes.
//!
//! Owns [`binary`] (builds the workspace binaries once per test process with the same cargo
//! profile) and [`Shipper`] (a running `pgtrail-shipper`, killable with SIGKILL). Must not:
//! call product code in-process; crash tests need real processes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of a workspace binary, built on first use (`cargo test --no-run --workspace`, which
/// builds a package's binaries only because each has an integration test: `shipper/tests/cli.rs`
/// exists for that too).
///
/// With `PGTRAIL_TEST_BIN_DIR` set, the binaries in that directory are used as they are (for
/// running a test against another build, e.g. to show that it fails without a fix).
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PGTRAIL_TEST_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    BUILT.get_or_init(|| {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // The same build as the test runner's (`cargo test --no-run`): `cargo build --bins`
        // alone resolves features without dev-dependencies and would rebuild half the
        // dependency tree each time the two alternate.
        cmd.args(["test", "--no-run", "--workspace", "--quiet"])
            .current_dir(crate::workspace_root());
        // Cargo sets these for the test process; build scripts that watch them (ring watches
        // CARGO_MANIFEST_DIR) would see a change and rebuild their crate and everything above
        // it (2 minutes here), and the next build from a shell would rebuild it back.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_MANIFEST_")
                || k.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&k.as_ref())
            {
                cmd.env_remove(k.as_ref());
            }
        }
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    profile_dir.join(name)
}

/// Runs `pgtrail-processor` with `args` and `--exit-when-idle idle` to its end (at most 10
/// minutes); panics with its log unless it exits 0. Returns the log.
pub fn process_until_idle(args: &[String], idle: &str, log: &Path) -> String {
    let mut a = args.to_vec();
    a.extend(["--exit-when-idle".into(), idle.into()]);
    let status = Shipper::processor(&a, &[], log).wait(Duration::from_secs(600));
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        status.success(),
        "processor exited with {status}; log:\n{text}"
    );
    text
}

/// A running pgtrail binary (shipper or processor).
pub struct Shipper {
    child: Child,
    /// Its log file.
    pub log: PathBuf,
}

/// A running processor (same handle as the shipper's).
pub type Processor = Shipper;

impl Shipper {
    /// Starts `pgtrail-shipper` with `args`; its stderr goes to `log`.
    pub fn spawn(args: &[String], log: &Path) -> Shipper {
        Self::spawn_bin("pgtrail-shipper", args, &[], log)
    }

    /// Starts `pgtrail-processor` with `args` and extra environment `env`.
    pub fn processor(args: &[String], env: &[(&str, &str)], log: &Path) -> Processor {
        Self::spawn_bin("pgtrail-processor", args, env, log)
    }

    /// Starts the binary `bin` of this build with `args` and extra environment `env`.
    pub fn spawn_bin(bin: &str, args: &[String], env: &[(&str, &str)], log: &Path) -> Shipper {
        Self::spawn_program(&binary(bin), args, env, log)
    }

    /// Starts `program` with `args` and extra environment `env`; its stderr goes to `log`.
    pub fn spawn_program(
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Shipper {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("PGTRAIL_LOG", "info,buoyant_kernel=off,deltalake_core=warn")
            .stdout(Stdio::null())
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn");
        Shipper {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for exit, at most `timeout`; panics with the log on timeout.
    pub fn wait(mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to it.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGKILL, no chance to flush or checkpoint.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait.
    pub fn terminate(mut self, timeout: Duration) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "shipper ignored SIGTERM; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until its log contains `needle` (true), it exits or `timeout` passes (false).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            if !self.running() {
                return self.log_text().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on the metrics address it logged (`bound=`): status code and body; `None`
    /// before it logged one or while it does not answer.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let log = self.log_text();
        let addr = log.split("bound=").nth(1)?.split_whitespace().next()?;
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split(' ').nth(1)?.parse().ok()?;
        Some((code, text))
    }

    /// The value of the first sample on `/metrics` whose name (with labels) is `sample`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, body) = self.http_get("/metrics")?;
        body.lines()
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(name, _)| *name == sample)
            .and_then(|(_, v)| v.parse().ok())
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the shipper with `args` and `--once` to completion; asserts it
/// exited 0 within `timeout` and returns its log.
pub fn run_shipper_once(args: &[String], log: &Path, timeout: Duration) -> String {
    let mut a = args.to_vec();
    a.push("--once".into());
    let status = Shipper::spawn(&a, log).wait(timeout);
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        status.success(),
        "shipper exited with {status}; log:\n{text}"
    );
    text
}

/// Common shipper arguments for a test.
pub fn shipper_args(
    server: &str,
    globs: &[String],
    brokers: &str,
    state: &Path,
    prefix: &str,
) -> Vec<String> {
    let mut a = vec![
        "--server".into(),
        server.into(),
        "--brokers".into(),
        brokers.into(),
        "--state-dir".into(),
        state.to_string_lossy().into_owned(),
        "--log-line-prefix".into(),
        prefix.into(),
        "--metrics-addr".into(),
        "127.0.0.1:0".into(),
        "--max-records-per-sec".into(),
        "0".into(),
    ];
    for g in globs {
        a.push("--logs".into());
        a.push(g.clone());
    }
    a
}
