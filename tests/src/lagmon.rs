//! Helpers of the lag monitor's tests: a webhook receiver (a plain HTTP server recording the
//! JSON bodies it is sent), `pgtrail-processor lag --once`, and a librdkafka mock cluster in a
//! process of its own (its partitions keep at most 5 MB: retention that tests can trigger).
//!
//! Owns [`Receiver`], [`lag_once`] and [`MockBroker`]. Must not: evaluate lag itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// An HTTP server recording every JSON body posted to it; answers 200.
pub struct Receiver {
    /// Its URL.
    pub url: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    /// Starts it on a free local port.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let sink = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice(&body)
                {
                    sink.lock().expect("bodies").push(v);
                }
                let mut stream = reader.into_inner();
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Receiver { url, bodies }
    }

    /// The bodies received so far.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().expect("bodies").clone()
    }
}

/// Runs `pgtrail-processor lag --once` with `args` (after `lag`); returns its exit code and
/// standard output.
pub fn lag_once(args: &[String]) -> (i32, String) {
    let out = Command::new(crate::process::binary("pgtrail-processor"))
        .arg("lag")
        .arg("--once")
        .args(args)
        .env("PGTRAIL_LOG", "warn")
        .output()
        .expect("run lag --once");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `lag` flags for a test: its config file, brokers, lake, group and topics.
pub fn lag_args(
    config: &Path,
    brokers: &str,
    lake: &Path,
    group: &str,
    topics: &[&str],
) -> Vec<String> {
    vec![
        "--config".into(),
        config.to_string_lossy().into_owned(),
        "--brokers".into(),
        brokers.into(),
        "--lake".into(),
        lake.to_string_lossy().into_owned(),
        "--group".into(),
        group.into(),
        "--topics".into(),
        topics.join(","),
    ]
}

/// A librdkafka mock cluster (one broker) in a child process (`pgtrail-mock-broker`).
pub struct MockBroker {
    child: Child,
    bootstrap: String,
}

impl MockBroker {
    /// Starts it with `topics` (`name:partitions`).
    pub fn start(topics: &[&str]) -> MockBroker {
        let mut child = Command::new(crate::process::binary("pgtrail-mock-broker"))
            .args(topics)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mock broker");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("bootstrap line");
        MockBroker {
            child,
            bootstrap: line.trim().to_owned(),
        }
    }

    /// Its bootstrap address.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
