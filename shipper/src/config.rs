//! Shipper configuration: the TOML file, the command-line flags that override it, validation.
//!
//! Owns [`Config`] (every field documented with unit and default) and [`Cli`]. Invariants: the
//! file is parsed with `deny_unknown_fields`; a flag given on the command line wins over the
//! file; environment variables are read only where the file names them (secrets) and
//! `PGTRAIL_LOG` (log filter, in `main.rs`). Must not: read secrets (they are read when
//! clients are built), open sockets or Kafka connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pgtrail_avro::LogFormat;
use serde::Deserialize;

use pgtrail_connect::{KafkaSection, RegistrySection};

use crate::error::ShipperError;

/// `pgtrail-shipper`: tails PostgreSQL log files and ships whole records to Kafka.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(name = "pgtrail-shipper", version, about)]
pub struct Cli {
    /// TOML configuration file; flags override its values.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Logical server name (`primary`, `replica`, ...): names the topic and every record.
    #[arg(long)]
    pub server: Option<String>,
    /// Glob of log files to ship; repeat for several (e.g. `/var/log/postgresql/*.csv`).
    #[arg(long = "logs")]
    pub logs: Vec<String>,
    /// Log format of every matched file; `auto` decides by extension (.csv, .json, else stderr).
    #[arg(long)]
    pub format: Option<FormatChoice>,
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Topic to produce to (default `pgaudit.raw.<server>`).
    #[arg(long)]
    pub topic: Option<String>,
    /// Directory for checkpoints and the lock file.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Confluent Schema Registry URL; without it messages use Avro single-object encoding.
    #[arg(long)]
    pub registry_url: Option<String>,
    /// Ship everything present, wait for Kafka to acknowledge it all, then exit 0.
    #[arg(long)]
    pub once: bool,
    /// Records per second at most (0 = unlimited).
    #[arg(long)]
    pub max_records_per_sec: Option<u32>,
    /// The server's `log_line_prefix` (locates the session id in stderr logs; sent with them).
    #[arg(long)]
    pub log_line_prefix: Option<String>,
    /// IANA name of the server's `log_timezone` (e.g. `Europe/Berlin`), sent with every record.
    #[arg(long)]
    pub log_timezone: Option<String>,
    /// Address of the Prometheus metrics endpoint, `none` to disable.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Ship into an in-process Kafka (librdkafka mock cluster) instead of `--brokers`, and
    /// print what landed in the topic at the end. For trying pgtrail and dry runs only.
    #[arg(long)]
    pub embedded_kafka: bool,
    /// Log output: `text` or `json`.
    #[arg(long, default_value = "text")]
    pub log_format: String,
}

/// Which parser framing to use for matched files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FormatChoice {
    /// By extension: `.csv` csvlog, `.json` jsonlog, anything else stderr.
    #[default]
    Auto,
    /// Every file is csvlog.
    Csvlog,
    /// Every file is jsonlog.
    Jsonlog,
    /// Every file is stderr.
    Stderr,
}

impl FormatChoice {
    /// The format of the file at `path`.
    pub fn for_path(self, path: &std::path::Path) -> LogFormat {
        match self {
            FormatChoice::Auto => LogFormat::from_path(path),
            FormatChoice::Csvlog => LogFormat::Csvlog,
            FormatChoice::Jsonlog => LogFormat::Jsonlog,
            FormatChoice::Stderr => LogFormat::Stderr,
        }
    }
}

/// The whole shipper configuration (TOML file + flags).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Logical server name. Required (file or `--server`).
    pub server: String,
    /// Host name written into every record. Default: the machine's host name.
    pub host: Option<String>,
    /// Globs of log files. Required (file or `--logs`).
    pub logs: Vec<String>,
    /// Format of matched files. Default `auto`.
    pub format: FormatChoice,
    /// The server's `log_line_prefix`, sent with every stderr record. Default `%m [%p] `
    /// (PostgreSQL's own default).
    pub log_line_prefix: String,
    /// IANA name of the server's `log_timezone`, sent with every record (the processor
    /// resolves zone abbreviations with it). Default none.
    pub log_timezone: Option<String>,
    /// Kafka bootstrap servers. Default `localhost:9092`.
    pub brokers: String,
    /// Topic. Default `pgaudit.raw.<server>`.
    pub topic: Option<String>,
    /// Create the topic when it does not exist. Default `true`.
    pub create_topic: bool,
    /// Partitions of a created topic. Default 6.
    pub topic_partitions: i32,
    /// Replication factor of a created topic. Default 1 (use 3 in production).
    pub topic_replication_factor: i32,
    /// `[kafka]`: librdkafka producer properties passed through (values never logged; the
    /// delivery guarantees `enable.idempotence`, `enable.gapless.guarantee`, `acks`,
    /// `message.timeout.ms` cannot be overridden; secrets are refused by value), and
    /// `[kafka.security]`: TLS, mutual TLS and SASL with secrets from files or environment
    /// variables (README, "Secured Kafka"). Default: plaintext.
    pub kafka: KafkaSection,
    /// Older spelling of `[kafka]`'s passthrough properties, merged into them. Default none.
    pub kafka_properties: BTreeMap<String, String>,
    /// Schema Registry URL. Default none: single-object encoding.
    pub registry_url: Option<String>,
    /// `[registry]`: Schema Registry basic auth and CA. Default none.
    pub registry: RegistrySection,
    /// Checkpoint directory. Default `/var/lib/pgtrail-shipper`.
    pub state_dir: PathBuf,
    /// Records per second at most; 0 = unlimited. Default 20000.
    pub max_records_per_sec: u32,
    /// Records allowed in one burst above the rate. Default: a tenth of the rate, at least 100.
    pub burst_records: Option<u32>,
    /// Largest record shipped whole, bytes; longer ones are cut and flagged `truncated`.
    /// Default 900000 (under Kafka's default 1 MB message limit).
    pub max_record_bytes: usize,
    /// Bytes read from a file at a time. Default 65536.
    pub read_chunk_bytes: usize,
    /// Produced but unacknowledged bytes before reading pauses (backpressure). Default 16 MiB.
    pub max_in_flight_bytes: usize,
    /// How often the globs are evaluated again, milliseconds. Default 1000.
    pub scan_interval_ms: u64,
    /// How often files at their end are checked for growth, milliseconds. Default 200.
    pub poll_interval_ms: u64,
    /// How often checkpoints are written when they moved, milliseconds. Default 1000.
    pub checkpoint_interval_ms: u64,
    /// How often a heartbeat goes to the topic (end-to-end freshness, see the README's
    /// "Monitoring and alerts"), milliseconds; 0 turns heartbeats off. Not sent with `once`.
    /// Default 30000.
    pub heartbeat_interval_ms: u64,
    /// How long an unterminated last record waits for its end before it is shipped as it is,
    /// milliseconds. Default 5000.
    pub partial_record_timeout_ms: u64,
    /// How long a checkpoint of a file that is gone is kept, hours. Default 168.
    pub checkpoint_retention_hours: u64,
    /// On SIGTERM, how long to wait for in-flight records to be acknowledged, seconds.
    /// Default 30.
    pub drain_timeout_secs: u64,
    /// Prometheus endpoint address (also `/healthz` and `/readyz`); `none` disables it.
    /// Default `127.0.0.1:9898`.
    pub metrics_addr: String,
    /// Milliseconds the main loop may go without progress before `/healthz` fails (a hung
    /// loop is restarted). Default 300000.
    pub liveness_timeout_ms: u64,
    /// Ship what is there, wait for acknowledgements, exit. Default false.
    pub once: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: String::new(),
            host: None,
            logs: Vec::new(),
            format: FormatChoice::Auto,
            log_line_prefix: "%m [%p] ".into(),
            log_timezone: None,
            brokers: "localhost:9092".into(),
            topic: None,
            create_topic: true,
            topic_partitions: 6,
            topic_replication_factor: 1,
            kafka: KafkaSection::default(),
            kafka_properties: BTreeMap::new(),
            registry_url: None,
            registry: RegistrySection::default(),
            state_dir: PathBuf::from("/var/lib/pgtrail-shipper"),
            max_records_per_sec: 20_000,
            burst_records: None,
            max_record_bytes: 900_000,
            read_chunk_bytes: 64 * 1024,
            max_in_flight_bytes: 16 << 20,
            scan_interval_ms: 1000,
            poll_interval_ms: 200,
            checkpoint_interval_ms: 1000,
            heartbeat_interval_ms: 30_000,
            partial_record_timeout_ms: 5000,
            checkpoint_retention_hours: 168,
            drain_timeout_secs: 30,
            metrics_addr: "127.0.0.1:9898".into(),
            liveness_timeout_ms: 300_000,
            once: false,
        }
    }
}

impl Config {
    /// Reads the file named by `--config` (if any), applies the flags, validates.
    pub fn load(cli: &Cli) -> Result<Config, ShipperError> {
        let mut cfg = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ShipperError::Config {
                    reason: format!("cannot read {}: {e}", path.display()),
                })?;
                Config::from_toml(&text)?
            }
            None => Config::default(),
        };
        cfg.apply(cli);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Config, ShipperError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ShipperError::Config {
            reason: pgtrail_connect::toml_error(text, &e),
        })?;
        for (k, v) in std::mem::take(&mut cfg.kafka_properties) {
            if cfg.kafka.properties.insert(k.clone(), v).is_some() {
                return Err(ShipperError::Config {
                    reason: format!(
                        "kafka property {k} is set in both [kafka] and [kafka_properties]"
                    ),
                });
            }
        }
        Ok(cfg)
    }

    fn apply(&mut self, cli: &Cli) {
        let c = cli.clone();
        if let Some(v) = c.server {
            self.server = v;
        }
        if !c.logs.is_empty() {
            self.logs = c.logs;
        }
        if let Some(v) = c.format {
            self.format = v;
        }
        if let Some(v) = c.brokers {
            self.brokers = v;
        }
        if c.topic.is_some() {
            self.topic = c.topic;
        }
        if let Some(v) = c.state_dir {
            self.state_dir = v;
        }
        if c.registry_url.is_some() {
            self.registry_url = c.registry_url;
        }
        if c.once {
            self.once = true;
        }
        if let Some(v) = c.max_records_per_sec {
            self.max_records_per_sec = v;
        }
        if let Some(v) = c.log_line_prefix {
            self.log_line_prefix = v;
        }
        if c.log_timezone.is_some() {
            self.log_timezone = c.log_timezone;
        }
        if let Some(v) = c.metrics_addr {
            self.metrics_addr = v;
        }
    }

    /// Checks required fields and ranges.
    pub fn validate(&self) -> Result<(), ShipperError> {
        let fail = |reason: &str| {
            Err(ShipperError::Config {
                reason: reason.into(),
            })
        };
        if self.server.is_empty() {
            return fail("server is required (--server or `server = ...`)");
        }
        if !self
            .server
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return fail("server may hold only ASCII letters, digits, '.', '_' and '-'");
        }
        if self.logs.is_empty() {
            return fail("at least one log glob is required (--logs or `logs = [...]`)");
        }
        for g in &self.logs {
            if let Err(e) = glob::Pattern::new(g) {
                return fail(&format!("bad glob {g:?}: {e}"));
            }
        }
        if self.max_record_bytes < 1024 {
            return fail("max_record_bytes must be at least 1024");
        }
        if self.read_chunk_bytes < 512 || self.max_in_flight_bytes < self.read_chunk_bytes {
            return fail("read_chunk_bytes must be >= 512 and <= max_in_flight_bytes");
        }
        let url = self.registry_url.as_deref();
        if let Err(e) = pgtrail_connect::validate(&self.kafka, &self.registry, url) {
            return fail(&e.to_string());
        }
        if self.metrics_addr != "none" && self.metrics_addr.parse::<SocketAddr>().is_err() {
            return fail(&format!(
                "metrics_addr {:?} is not host:port or none",
                self.metrics_addr
            ));
        }
        Ok(())
    }

    /// The topic records go to.
    pub fn topic(&self) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("pgaudit.raw.{}", self.server))
    }

    /// Burst size of the rate limiter.
    pub fn burst(&self) -> u32 {
        self.burst_records
            .unwrap_or((self.max_records_per_sec / 10).max(100))
            .max(1)
    }

    /// The metrics address, if enabled.
    pub fn metrics_socket(&self) -> Option<SocketAddr> {
        self.metrics_addr.parse().ok()
    }

    /// Milliseconds → duration helpers.
    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_override_file_and_unknown_keys_fail() {
        let mut cfg = Config::from_toml(
            "server = \"primary\"\nlogs = [\"/l/*.csv\"]\nbrokers = \"a:1\"\nmax_records_per_sec = 5\n",
        )
        .unwrap();
        let cli = Cli::parse_from(["x", "--brokers", "b:2", "--once"]);
        cfg.apply(&cli);
        cfg.validate().unwrap();
        assert_eq!(cfg.brokers, "b:2");
        assert_eq!(cfg.max_records_per_sec, 5);
        assert!(cfg.once);
        assert_eq!(cfg.topic(), "pgaudit.raw.primary");
        let err = Config::from_toml("server = \"p\"\nbrokerz = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("brokerz"), "{err}");
    }

    #[test]
    fn example_config_is_valid_and_matches_defaults() {
        let text = include_str!("../pgtrail-shipper.example.toml");
        let cfg = Config::from_toml(text).unwrap();
        cfg.validate().unwrap();
        let d = Config::default();
        assert_eq!(cfg.max_records_per_sec, d.max_records_per_sec);
        assert_eq!(cfg.max_record_bytes, d.max_record_bytes);
        assert_eq!(cfg.max_in_flight_bytes, d.max_in_flight_bytes);
        assert_eq!(cfg.partial_record_timeout_ms, d.partial_record_timeout_ms);
        assert_eq!(cfg.metrics_addr, d.metrics_addr);
        assert_eq!(cfg.topic_partitions, d.topic_partitions);
    }

    /// Item 10 of issue 17: TOML errors quoted the offending line, which can hold a secret.
    #[test]
    fn config_errors_quote_no_value() {
        for text in [
            "max_records_per_sec = \"hunter2\"\n",
            "[kafka_properties]\n\"sasl.password\" = hunter2\n",
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let cfg = Config {
            logs: vec!["/x/*.csv".into()],
            ..Config::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("server is required")
        );
        let cfg = Config {
            server: "a b".into(),
            ..cfg
        };
        assert!(cfg.validate().is_err());
    }
}
