//! A real Kafka-protocol broker for tests: Tansu in a child process, behind a TCP proxy that a
//! test can cut to make Kafka unreachable and restore.
//!
//! Owns [`Broker`]. Tansu listens on one free port and advertises the proxy's port, so every
//! client connection, including the ones librdkafka opens after metadata, goes through the
//! proxy. Invariant: dropping a [`Broker`] kills Tansu. Must not: rely on Tansu's reported
//! high watermark (it is the base offset of the last batch in Tansu 0.6).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Finds the `tansu` binary: `$TANSU_BIN`, then `~/.cargo/bin/tansu`, then `PATH`.
pub fn tansu_binary() -> String {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return p;
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = std::path::Path::new(&home).join(".cargo/bin/tansu");
        if p.exists() {
            return p.to_string_lossy().into_owned();
        }
    }
    "tansu".into()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Tansu plus the cuttable proxy in front of it.
pub struct Broker {
    child: Child,
    proxy_addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    log: std::path::PathBuf,
}

impl Broker {
    /// Starts Tansu with in-memory storage and waits until it answers through the proxy.
    pub fn start() -> Broker {
        let tansu_port = free_port();
        let proxy_listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let proxy_addr = proxy_listener.local_addr().expect("proxy addr");
        let log = std::env::temp_dir().join(format!("tansu-{tansu_port}.log"));
        let log_file = std::fs::File::create(&log).expect("tansu log file");
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{tansu_port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{}", proxy_addr.port()),
                "--storage-engine",
                "memory://tansu/",
            ])
            // Group coordination is what tests most often need to look into afterwards.
            .env(
                "RUST_LOG",
                std::env::var("PGTRAIL_TANSU_LOG")
                    .unwrap_or_else(|_| "warn,tansu_broker::coordinator=info".into()),
            )
            .env("NO_COLOR", "1")
            // Tansu's tracing output goes to stdout.
            .stdout(log_file.try_clone().expect("tansu log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start Tansu ({}): {e}; install it: cargo install tansu --locked --features dynostore", tansu_binary())
            });
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let target: SocketAddr = format!("127.0.0.1:{tansu_port}").parse().expect("addr");
        {
            let up = up.clone();
            let generation = generation.clone();
            std::thread::spawn(move || proxy_loop(proxy_listener, target, up, generation));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(target).is_err() {
            assert!(
                Instant::now() < deadline,
                "Tansu did not listen within 30 s; see {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Broker {
            child,
            proxy_addr,
            up,
            generation,
            log,
        }
    }

    /// Tansu's log file (`PGTRAIL_TANSU_LOG` sets its filter; default: group coordination).
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    /// Bootstrap servers for clients (the proxy).
    pub fn bootstrap(&self) -> String {
        self.proxy_addr.to_string()
    }

    /// Creates `topic` with `partitions` partitions (already existing is fine). A request
    /// that gets no answer is sent again, up to four times 15 s: once, in CI, a busy Tansu
    /// left the first CreateTopics unanswered past librdkafka's 60 s default.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::config::ClientConfig::new()
                .set("bootstrap.servers", self.bootstrap())
                .create()
                .expect("admin client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(15)));
        let mut attempt = 1;
        let results = loop {
            match rt.block_on(admin.create_topics([&new], &opts)) {
                Ok(results) => break results,
                Err(e) if attempt < 4 => {
                    eprintln!("create topic {topic}, attempt {attempt}: {e}; again");
                    attempt += 1;
                }
                Err(e) => panic!("create topic {topic}: {e}"),
            }
        };
        for r in results {
            if let Err((name, code)) = r {
                assert_eq!(
                    code,
                    rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                    "creating {name}"
                );
            }
        }
    }

    /// Makes Kafka unreachable: open connections are cut and new ones are closed at once.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Makes Kafka reachable again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proxy_loop(
    listener: TcpListener,
    target: SocketAddr,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        if !up.load(Ordering::SeqCst) {
            let _ = client.shutdown(std::net::Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(target) else {
            let _ = client.shutdown(std::net::Shutdown::Both);
            continue;
        };
        let born = generation.load(Ordering::SeqCst);
        for (from, to) in [
            (client.try_clone(), server.try_clone()),
            (server.try_clone(), client.try_clone()),
        ] {
            let (Ok(mut from), Ok(to)) = (from, to) else {
                continue;
            };
            let generation = generation.clone();
            std::thread::spawn(move || pipe(&mut from, to, born, &generation));
        }
    }
}

fn pipe(from: &mut TcpStream, mut to: TcpStream, born: u64, generation: &AtomicU64) {
    use std::io::{Read, Write};
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if generation.load(Ordering::SeqCst) != born {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}
