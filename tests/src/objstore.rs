//! Object stores for tests: an S3-compatible server (PyPI `moto[server]`) and the Azure Blob
//! emulator (npm `azurite`), both installed by `scripts/install-deps` under the tools
//! directory (`PGTRAIL_TOOLS`, default `~/.cache/pgtrail`), with a bucket / container made.
//!
//! Owns [`Moto`] and [`Azurite`]. Invariant: each server is killed when its handle drops.
//! Must not: talk to real cloud endpoints.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::free_port;

/// Where `scripts/install-deps` put moto (a Python venv) and azurite (node_modules).
pub fn tools_dir() -> PathBuf {
    std::env::var_os("PGTRAIL_TOOLS").map_or_else(
        || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/pgtrail"),
        PathBuf::from,
    )
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 60 s (scripts/install-deps installs it)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The moto S3 server on a free port, with bucket `lake`.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

impl Moto {
    /// Starts moto and creates bucket `lake` (moto does not check signatures).
    pub fn start(log: &Path) -> Moto {
        let port = free_port();
        let file = std::fs::File::create(log).expect("moto log");
        let child = Command::new(tools_dir().join("venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("moto_server (scripts/install-deps installs moto[server])");
        wait_listening(port, "moto");
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("moto");
        write!(
            s,
            "PUT /lake HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("create bucket");
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "create bucket: {answer}"
        );
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The processor's `[storage.s3]` section for this server (secret key from `key_file`).
    pub fn storage_toml(&self, key_file: &Path) -> String {
        format!(
            "[storage.s3]\nendpoint = {:?}\nregion = \"us-east-1\"\nallow_http = true\naccess_key_id = \"testing\"\nsecret_access_key_file = {key_file:?}\n",
            self.endpoint
        )
    }

    /// deltalake storage options for reading tables back.
    pub fn options(&self) -> HashMap<String, String> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_region", "us-east-1"),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "testing"),
            ("aws_secret_access_key", "testing"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Azurite's well-known development account.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known development account key (public, documented by Microsoft).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The Azurite blob service on a free port, with container `lake`.
pub struct Azurite {
    child: Child,
    /// `http://127.0.0.1:<port>/devstoreaccount1`.
    pub endpoint: String,
}

impl Azurite {
    /// Starts Azurite with its data in `dir` and creates container `lake`.
    pub fn start(dir: &Path) -> Azurite {
        let port = free_port();
        let file = std::fs::File::create(dir.join("azurite.log")).expect("azurite log");
        let child = Command::new(tools_dir().join("node/node_modules/.bin/azurite-blob"))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--location", &dir.join("azurite").to_string_lossy()])
            .args(["--skipApiVersionCheck", "--silent"])
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("azurite-blob (scripts/install-deps installs azurite)");
        wait_listening(port, "azurite");
        let endpoint = format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}");
        let connection = format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
        );
        let out = Command::new(tools_dir().join("venv/bin/python"))
            .args([
                "-c",
                "import sys; from azure.storage.blob import BlobServiceClient as C; C.from_connection_string(sys.argv[1]).create_container('lake')",
                &connection,
            ])
            .stdout(Stdio::null())
            .output()
            .expect("python azure-storage-blob (scripts/install-deps)");
        assert!(
            out.status.success(),
            "create container: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Azurite { child, endpoint }
    }

    /// The processor's `[storage.azure]` section (account key from `key_file`).
    pub fn storage_toml(&self, key_file: &Path) -> String {
        format!(
            "[storage.azure]\naccount = {AZURITE_ACCOUNT:?}\nendpoint = {:?}\nallow_http = true\naccess_key_file = {key_file:?}\n",
            self.endpoint
        )
    }

    /// deltalake storage options for reading tables back.
    pub fn options(&self) -> HashMap<String, String> {
        [
            ("azure_storage_account_name", AZURITE_ACCOUNT),
            ("azure_storage_account_key", AZURITE_KEY),
            ("azure_storage_endpoint", self.endpoint.as_str()),
            ("azure_allow_http", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
