//! Secured Kafka for tests: certificates made with `openssl`, a TLS (optionally mutual TLS)
//! listener made by Debian's `stunnel4` in front of Tansu (Tansu 0.6 builds a TLS acceptor
//! but never uses it), and a Tansu that checks SCRAM credentials (its SQLite storage keeps
//! the users; memory storage drops them).
//!
//! Owns [`Certs`], [`TlsBroker`] and [`ScramBroker`]. Invariant: every process started here
//! is killed when its handle drops. Must not: be used by tests that do not need security
//! (they use `broker.rs`).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{free_port, tansu_binary};

/// PEM files: a CA, a server certificate for `127.0.0.1`/`localhost` signed by it, a client
/// certificate signed by it, and a second CA nobody signed with.
pub struct Certs {
    /// The CA the brokers' and clients' certificates are signed by.
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server: (PathBuf, PathBuf),
    /// Client certificate and key.
    pub client: (PathBuf, PathBuf),
    /// A CA that signed nothing here (an untrusted broker for clients trusting it).
    pub other_ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// Generates the certificates into `dir`.
    pub fn generate(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).expect("cert dir");
        for ca in ["ca", "other-ca"] {
            openssl(
                dir,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                ],
            );
        }
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("san");
        for (name, cn) in [("server", "localhost"), ("client", "pgtrail")] {
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={cn}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    "san.ext",
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        Certs {
            ca: dir.join("ca.pem"),
            server: (dir.join("server.pem"), dir.join("server.key")),
            client: (dir.join("client.pem"), dir.join("client.key")),
            other_ca: dir.join("other-ca.pem"),
        }
    }
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 30 s; see {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn_tansu(
    port: u16,
    advertised: u16,
    storage: &str,
    extra: &[&str],
    cwd: &Path,
    log: &Path,
) -> Killed {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("tansu log");
    let mut args = vec![
        "broker".to_owned(),
        "--listener-url".into(),
        format!("tcp://127.0.0.1:{port}"),
        "--advertised-listener-url".into(),
        format!("tcp://127.0.0.1:{advertised}"),
        "--storage-engine".into(),
        storage.into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let child = Command::new(tansu_binary())
        .args(&args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .expect("start tansu");
    let child = Killed(child);
    wait_listening(port, "Tansu", log);
    child
}

/// Tansu behind a TLS listener (stunnel), advertising the TLS port.
pub struct TlsBroker {
    _tansu: Killed,
    _stunnel: Killed,
    /// The TLS listener, `127.0.0.1:<port>`.
    pub bootstrap: String,
}

impl TlsBroker {
    /// Starts Tansu and stunnel in `dir`; with `mutual`, stunnel requires a client
    /// certificate signed by the CA.
    pub fn start(dir: &Path, certs: &Certs, mutual: bool) -> TlsBroker {
        let (tansu_port, tls_port) = (free_port(), free_port());
        let log = dir.join("tansu.log");
        let tansu = spawn_tansu(tansu_port, tls_port, "memory://tansu/", &[], dir, &log);
        let mut conf = format!(
            "foreground = yes\npid =\ndebug = notice\noutput = {}\n[kafka]\naccept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{tansu_port}\ncert = {}\nkey = {}\n",
            dir.join("stunnel.log").display(),
            certs.server.0.display(),
            certs.server.1.display()
        );
        if mutual {
            conf.push_str(&format!(
                "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                certs.ca.display()
            ));
        }
        let conf_path = dir.join("stunnel.conf");
        std::fs::write(&conf_path, conf).expect("stunnel.conf");
        let stunnel = Command::new("stunnel")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel (Debian package stunnel4; scripts/install-deps)");
        let stunnel = Killed(stunnel);
        wait_listening(tls_port, "stunnel", &dir.join("stunnel.log"));
        TlsBroker {
            _tansu: tansu,
            _stunnel: stunnel,
            bootstrap: format!("127.0.0.1:{tls_port}"),
        }
    }
}

/// Tansu requiring SASL SCRAM authentication, with users created before it was locked.
pub struct ScramBroker {
    _tansu: Killed,
    /// `127.0.0.1:<port>` (SASL_PLAINTEXT).
    pub bootstrap: String,
}

impl ScramBroker {
    /// Starts Tansu in `dir` with SQLite storage, creates `user` with `password` for both
    /// SCRAM-SHA-256 and SCRAM-SHA-512, and restarts it with authentication required.
    pub fn start(dir: &Path, user: &str, password: &str) -> ScramBroker {
        let port = free_port();
        let log = dir.join("tansu.log");
        let storage = "sqlite://tansu.db";
        {
            let _open = spawn_tansu(port, port, storage, &[], dir, &log);
            for mechanism in ["scram256", "scram512"] {
                let out = Command::new(tansu_binary())
                    .args([
                        "user",
                        "create",
                        "--broker",
                        &format!("tcp://127.0.0.1:{port}"),
                        "--mechanism",
                        mechanism,
                        user,
                        password,
                    ])
                    .output()
                    .expect("tansu user create");
                assert!(
                    out.status.success(),
                    "tansu user create: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let tansu = spawn_tansu(port, port, storage, &["--authentication"], dir, &log);
        ScramBroker {
            _tansu: tansu,
            bootstrap: format!("127.0.0.1:{port}"),
        }
    }
}
