//! Processor configuration: the TOML file, the command-line flags that override it, validation,
//! and the topic → table and server → parsing mappings derived from it.
//!
//! Owns [`Cli`] (subcommands `run` and `status`), [`Config`] (every field documented with unit
//! and default) and [`ServerSettings`]. Invariants: the file is parsed with
//! `deny_unknown_fields`; a flag given on the command line wins over the file; environment
//! variables are read only where the file names them (secrets) and `PGTRAIL_LOG` (log
//! filter, in `main.rs`). Must not: read secrets (they are read when clients are built), open
//! sockets, Kafka connections or tables.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use pgtrail_avro::LogFormat;
use serde::Deserialize;

use pgtrail_connect::{KafkaSection, RegistrySection};

use crate::error::ProcessorError;
use crate::lake::StorageSection;
use crate::parse::ServerFormat;

/// `pgtrail-processor`: raw PostgreSQL log records from Kafka into Delta Lake audit tables.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "pgtrail-processor", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log output: `text` or `json`.
    #[arg(long, default_value = "text", global = true)]
    pub log_format: String,
}

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Consume the raw record topics and commit audit rows to the Delta tables.
    Run(Box<RunArgs>),
    /// Per table: Delta version, row count, Kafka offset per topic-partition, last commit.
    Status(StatusArgs),
    /// The job facts of the tables' commits, newest first.
    Jobs(JobsArgs),
    /// Derive rows again from the raw records still in Kafka (after a parser fix or a
    /// settings change) and replace the rows that came from them, in one commit per table.
    #[cfg(feature = "replay")]
    Replay(Box<crate::replay::ReplayArgs>),
    /// Consumer lag from the tables' positions and the broker (works with no processor
    /// running): `--once` prints and exits 0/1/2 (OK/warning/critical, 3: could not run),
    /// `--serve` exports `pgtrail_lag_*` metrics and sends alert webhooks.
    Lag(LagArgs),
}

/// Flags of `lag` (the same config file as `run`; its `[lag]` section).
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["once", "serve"])))]
pub struct LagArgs {
    /// Config file, brokers, group, topics, lake.
    #[command(flatten)]
    pub target: TargetArgs,
    /// One round: print the report and exit with its severity.
    #[arg(long)]
    pub once: bool,
    /// Observe every `[lag] interval`, export metrics, send alerts, until SIGTERM.
    #[arg(long)]
    pub serve: bool,
    /// Print JSON instead of text (`--once`).
    #[arg(long)]
    pub json: bool,
}

impl LagArgs {
    /// The `run` flags these override.
    pub fn run_args(&self) -> RunArgs {
        RunArgs {
            target: self.target.clone(),
            ..RunArgs::default()
        }
    }
}

/// Flags of `run` and `lag` naming what they work on (each overrides the config file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TargetArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Consumer group id (also names the Delta `txn` application ids).
    #[arg(long)]
    pub group: Option<String>,
    /// Topics, comma separated; an entry starting with `^` is a regular expression.
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    /// Lake root: a local directory or an object-store URI.
    #[arg(long)]
    pub lake: Option<String>,
}

/// Flags of `run` (each overrides the config file).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Config file, brokers, group, topics, lake.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Suffix of every default table name (`_uat` → `primary_postgresql_logs_uat`).
    #[arg(long)]
    pub table_suffix: Option<String>,
    /// Confluent Schema Registry URL (needed only for Confluent-framed messages).
    #[arg(long)]
    pub registry_url: Option<String>,
    /// Dead-letter topic.
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// Commit after this many rows are buffered for a table.
    #[arg(long)]
    pub flush_rows: Option<usize>,
    /// Commit when a table's buffered rows hold this many bytes (Arrow buffers).
    #[arg(long)]
    pub flush_bytes: Option<usize>,
    /// Commit at least this often while records arrive (e.g. `10s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub flush_interval: Option<Duration>,
    /// Exit 0 once every assigned partition has been idle this long (batch mode); exit 4 if
    /// no partition was assigned within this long + 60 s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub exit_when_idle: Option<Duration>,
    /// How long an audit event waits for its outcome, in log time (e.g. `60s`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub outcome_window: Option<Duration>,
    /// `cooperative-sticky` (incremental) or `range` / `roundrobin` (eager).
    #[arg(long)]
    pub assignment_strategy: Option<String>,
    /// Address of the Prometheus metrics endpoint, `none` to disable.
    #[arg(long)]
    pub metrics_addr: Option<String>,
    /// Run an in-process Kafka (librdkafka mock cluster) with the topics created, write its
    /// bootstrap address to this file, and consume from it. For the quick start only.
    #[arg(long)]
    pub embedded_kafka: Option<PathBuf>,
}

/// Flags of `status` and `jobs` choosing the tables to read.
#[derive(Debug, Clone, clap::Args)]
pub struct TablesArgs {
    /// TOML configuration file: its `[storage]` section reaches object-store lakes; without
    /// `--lake` or `--table`, its `lake` and `[tables]` are read (a lake without tables yet
    /// is not an error).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Lake root (local directory or object-store URI): every table under
    /// `<lake>/pg_archive_sync/`.
    #[arg(long)]
    pub lake: Option<String>,
    /// A table URI; repeat for several.
    #[arg(long)]
    pub table: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `jobs`.
#[derive(Debug, Clone, clap::Args)]
pub struct JobsArgs {
    /// The tables.
    #[command(flatten)]
    pub tables: TablesArgs,
    /// Only jobs of the last this long (e.g. `24h`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Only failed runs and commits whose facts do not reconcile.
    #[arg(long)]
    pub failed: bool,
    /// The job-audit table. Default: the config's `[jobs] table`, else `<lake>/pgtrail_jobs`
    /// (without one, commits are read from the tables' histories).
    #[arg(long)]
    pub jobs_table: Option<String>,
}

/// Flags of `status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The tables.
    #[command(flatten)]
    pub tables: TablesArgs,
    /// Also count rows per audit class and result (reads the data files).
    #[arg(long)]
    pub summary: bool,
}

/// Parsing settings of one server (the `server` field of the records).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// The server's `log_line_prefix` (stderr logs). Default: the one its records carry (the
    /// shipper sends it), else `default_log_line_prefix`. Set it only to override the records.
    pub log_line_prefix: Option<String>,
    /// IANA zone resolving zone abbreviations in its log times (`Europe/Berlin`). Default: the
    /// one its records carry (the shipper's `log_timezone`), else none: only UTC/GMT and
    /// numeric offsets are accepted, anything else is dead-lettered.
    pub timezone: Option<String>,
    /// Log formats to turn into rows. Default all; records of other formats are skipped and
    /// counted (ship one format per server, or name it here, so events are not tripled).
    pub formats: Option<Vec<LogFormat>>,
}

/// The whole processor configuration (TOML file + flags).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Kafka bootstrap servers. Default `localhost:9092`.
    pub brokers: String,
    /// Consumer group id; also part of every `txn` application id. Default
    /// `pgtrail-processor`. A table's positions and dedup memory belong to the group that
    /// wrote them: a new group starts the topics from their beginning and would write every
    /// row the table holds again, so the processor refuses to write a topic's partitions into
    /// a table another group writes (see `allow_new_group`).
    pub group: String,
    /// Write a topic's partitions into a table that holds rows of that topic from another
    /// consumer group (they are written again: duplicates, unless the table was emptied).
    /// Default false.
    pub allow_new_group: bool,
    /// Topics; entries starting with `^` are regular expressions. Default
    /// `["^pgaudit\\.raw\\..*"]`.
    pub topics: Vec<String>,
    /// Prefix stripped from a topic to name its server's table. Default `pgaudit.raw.`.
    pub topic_prefix: String,
    /// Lake root: local directory or object-store URI. Default `./lake`.
    pub lake: String,
    /// Appended to every default table name. Default empty.
    pub table_suffix: String,
    /// Explicit topic → table URI mapping (wins over the default name). Default none.
    pub tables: BTreeMap<String, String>,
    /// Confluent Schema Registry URL. Default none (single-object encoded messages only).
    pub registry_url: Option<String>,
    /// Dead-letter topic: undecodable and unparseable records with reason and coordinates.
    /// Default `pgaudit.deadletter`.
    pub dead_letter_topic: String,
    /// Rows buffered per table before a commit. Default 100000.
    pub flush_rows: usize,
    /// Memory of the rows buffered per table before a commit, in bytes: their Arrow buffers
    /// (the batch being filled counted twice for its builders' growth). Default 67108864
    /// (64 MiB).
    pub flush_bytes: usize,
    /// Milliseconds between commits while records arrive. Default 10000.
    pub flush_interval_ms: u64,
    /// Milliseconds of log time an audit event waits for its outcome. Default 60000. A
    /// partition idle this long in wall time releases what it holds as SUCCESS.
    pub outcome_window_ms: u64,
    /// Delta checkpoint every this many versions. Default 10.
    pub checkpoint_interval: u64,
    /// Milliseconds a revoked partition may take to commit what is in hand; after that it is
    /// dropped unwritten and re-consumed by its new owner. Default 10000.
    pub revoke_deadline_ms: u64,
    /// Attempts of a Delta commit that conflicts with another writer. Default 20.
    pub commit_attempts: u32,
    /// `cooperative-sticky`, `range` or `roundrobin`. Default `cooperative-sticky`.
    pub assignment_strategy: String,
    /// Build the Arrow batches on a thread beside the consumer's. Faster when a core is free
    /// (`bench/process-bench` on 2 cores shared with the broker: 10–27 % while the machine was
    /// quiet, within noise while it was busy), for 15–25 % more CPU in all; `false` builds
    /// them on the consumer thread, the least CPU per record (for pods whose CPU limit is the
    /// bottleneck). Default true.
    pub row_thread: bool,
    /// Exit 0 after every assigned partition was idle this many milliseconds; exit 4 (Kafka)
    /// when no partition was assigned within this + 60 s. Default none (run until SIGTERM).
    pub exit_when_idle_ms: Option<u64>,
    /// Milliseconds SIGTERM may take to flush and commit. Default 30000.
    pub drain_deadline_ms: u64,
    /// Prometheus endpoint address or `none`; also serves `/healthz` and `/readyz`. Default
    /// `127.0.0.1:9188`.
    pub metrics_addr: String,
    /// Milliseconds the poll loop may go without progress before `/healthz` fails (a hung
    /// loop is restarted). Longer than a slow commit wait. Default 300000.
    pub liveness_timeout_ms: u64,
    /// `log_line_prefix` of servers with none of their own here whose records carry none
    /// (shippers older than the envelope's version 3). Default `%m [%p] `.
    pub default_log_line_prefix: String,
    /// Per-server parsing settings, keyed by server name. Default none.
    pub servers: BTreeMap<String, ServerSettings>,
    /// `[kafka]`: librdkafka client properties passed through (values never logged;
    /// `enable.auto.commit`, `enable.auto.offset.store`, `group.id` and
    /// `partition.assignment.strategy` cannot be overridden, secrets are refused by value), and
    /// `[kafka.security]`: TLS, mutual TLS and SASL with secrets from files or environment
    /// variables (README, "Secured Kafka"). Default: plaintext.
    pub kafka: KafkaSection,
    /// `[registry]`: Schema Registry basic auth and CA. Default none.
    pub registry: RegistrySection,
    /// `[storage]`: object-store settings of the lake (S3, Azure, GCS), credentials from files,
    /// environment variables or the providers' standard chains (README, "Object-store
    /// lakes"). Default: each store's own defaults and credential chain.
    pub storage: StorageSection,
    /// `[lag]`: the lag monitor, `pgtrail-processor lag` (README, "Monitoring and alerts").
    /// Default: see each key.
    pub lag: crate::lag::config::LagSection,
    /// `[jobs]`: the job-audit table `pgtrail_jobs` (README, "Job audit"). Default: see each
    /// key.
    pub jobs: crate::joblog::JobsSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            brokers: "localhost:9092".into(),
            group: "pgtrail-processor".into(),
            allow_new_group: false,
            topics: vec![r"^pgaudit\.raw\..*".into()],
            topic_prefix: "pgaudit.raw.".into(),
            lake: "./lake".into(),
            table_suffix: String::new(),
            tables: BTreeMap::new(),
            registry_url: None,
            dead_letter_topic: "pgaudit.deadletter".into(),
            flush_rows: 100_000,
            flush_bytes: 64 << 20,
            flush_interval_ms: 10_000,
            outcome_window_ms: 60_000,
            checkpoint_interval: 10,
            revoke_deadline_ms: 10_000,
            commit_attempts: 20,
            assignment_strategy: "cooperative-sticky".into(),
            row_thread: true,
            exit_when_idle_ms: None,
            drain_deadline_ms: 30_000,
            metrics_addr: "127.0.0.1:9188".into(),
            liveness_timeout_ms: 300_000,
            default_log_line_prefix: "%m [%p] ".into(),
            servers: BTreeMap::new(),
            kafka: KafkaSection::default(),
            registry: RegistrySection::default(),
            storage: StorageSection::default(),
            lag: crate::lag::config::LagSection::default(),
            jobs: crate::joblog::JobsSection::default(),
        }
    }
}

fn config_err(reason: impl Into<String>) -> ProcessorError {
    ProcessorError::Config {
        reason: reason.into(),
    }
}

impl Config {
    /// The file (if any) with the flags applied, validated.
    pub fn load(args: &RunArgs) -> Result<Config, ProcessorError> {
        let mut cfg = Self::read(args.target.config.as_deref())?;
        cfg.apply(args);
        cfg.validate()?;
        Ok(cfg)
    }

    /// The file at `path` parsed (the defaults without one), flags not applied.
    pub fn read(path: Option<&std::path::Path>) -> Result<Config, ProcessorError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| config_err(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| config_err(format!("{}: {e}", path.display())))
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| pgtrail_connect::toml_error(text, &e))
    }

    fn apply(&mut self, a: &RunArgs) {
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX)) as u64;
        let set = |dst: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                dst.clone_from(v);
            }
        };
        set(&mut self.brokers, &a.target.brokers);
        set(&mut self.group, &a.target.group);
        set(&mut self.lake, &a.target.lake);
        set(&mut self.table_suffix, &a.table_suffix);
        set(&mut self.dead_letter_topic, &a.dead_letter_topic);
        set(&mut self.assignment_strategy, &a.assignment_strategy);
        set(&mut self.metrics_addr, &a.metrics_addr);
        if !a.target.topics.is_empty() {
            self.topics.clone_from(&a.target.topics);
        }
        if a.registry_url.is_some() {
            self.registry_url.clone_from(&a.registry_url);
        }
        if let Some(v) = a.flush_rows {
            self.flush_rows = v;
        }
        if let Some(v) = a.flush_bytes {
            self.flush_bytes = v;
        }
        if let Some(d) = a.flush_interval {
            self.flush_interval_ms = ms(d);
        }
        if let Some(d) = a.outcome_window {
            self.outcome_window_ms = ms(d);
        }
        if let Some(d) = a.exit_when_idle {
            self.exit_when_idle_ms = Some(ms(d));
        }
    }

    /// Checks values and that every server's prefix and zone compile.
    pub fn validate(&self) -> Result<(), ProcessorError> {
        if self.group.is_empty() || self.brokers.is_empty() || self.lake.is_empty() {
            return Err(config_err("group, brokers and lake must not be empty"));
        }
        if self.topics.is_empty() {
            return Err(config_err("no topics"));
        }
        if self.flush_rows == 0 || self.flush_bytes == 0 {
            return Err(config_err("flush_rows and flush_bytes must be positive"));
        }
        if !matches!(
            self.assignment_strategy.as_str(),
            "cooperative-sticky" | "range" | "roundrobin"
        ) {
            return Err(config_err(format!(
                "assignment_strategy {:?}: expected cooperative-sticky, range or roundrobin",
                self.assignment_strategy
            )));
        }
        for key in [
            "enable.auto.commit",
            "enable.auto.offset.store",
            "group.id",
            "partition.assignment.strategy",
        ] {
            if self.kafka.properties.contains_key(key) {
                return Err(config_err(format!("kafka.{key} cannot be overridden")));
            }
        }
        pgtrail_connect::validate(&self.kafka, &self.registry, self.registry_url.as_deref())
            .map_err(|e| config_err(e.to_string()))?;
        self.storage.validate()?;
        self.server_format("default")?;
        for name in self.servers.keys() {
            self.server_format(name)?;
        }
        Ok(())
    }

    /// The table URI of a topic.
    pub fn table_for_topic(&self, topic: &str) -> String {
        if let Some(t) = self.tables.get(topic) {
            return t.clone();
        }
        let server = topic.strip_prefix(&self.topic_prefix).unwrap_or(topic);
        let server: String = server
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!(
            "{}/pg_archive_sync/{server}_postgresql_logs{}",
            self.lake.trim_end_matches('/'),
            self.table_suffix
        )
    }

    /// Parsing settings of `server` when its records carry no settings of their own.
    pub fn server_format(&self, server: &str) -> Result<ServerFormat, ProcessorError> {
        self.server_format_for(server, None, None)
    }

    /// Parsing settings of `server` for records that carry `sent_prefix` and `sent_zone` (the
    /// server's `log_line_prefix` and `log_timezone` as its shipper was told them): the
    /// server's settings here win, then what the records carry, then the defaults.
    pub fn server_format_for(
        &self,
        server: &str,
        sent_prefix: Option<&str>,
        sent_zone: Option<&str>,
    ) -> Result<ServerFormat, ProcessorError> {
        let s = self.servers.get(server);
        let prefix = s
            .and_then(|s| s.log_line_prefix.as_deref())
            .or(sent_prefix)
            .unwrap_or(&self.default_log_line_prefix);
        let zone = s.and_then(|s| s.timezone.as_deref()).or(sent_zone);
        ServerFormat::new(prefix, zone).map_err(|e| config_err(format!("server {server}: {e}")))
    }

    /// Whether rows are made from `format` records of `server`.
    pub fn accepts(&self, server: &str, format: LogFormat) -> bool {
        self.servers
            .get(server)
            .and_then(|s| s.formats.as_ref())
            .is_none_or(|f| f.contains(&format))
    }

    /// Duration helper.
    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Item 10 of issue 17: TOML errors quoted the offending line, which can hold a secret.
    #[test]
    fn config_errors_quote_no_value() {
        for text in [
            "flush_rows = \"hunter2\"\n",
            "[kafka]\n\"sasl.password\" = hunter2\n",
            "brokers = \"hunter2\nx",
        ] {
            let err = Config::from_toml(text).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.starts_with("line "), "{err}");
        }
        let err = Config::from_toml("group = \"g\"\nbrokerz = \"x\"\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("brokerz"), "{err}");
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../pgtrail-processor.example.toml");
        let c = Config::from_toml(text).unwrap();
        let d = Config::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    #[test]
    fn flags_override_the_file_and_unknown_keys_fail() {
        assert!(Config::from_toml("brokerz = \"x\"").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "group = \"g1\"\nflush_rows = 7\n[servers.primary]\nlog_line_prefix = \"%m %c \"\ntimezone = \"Europe/Berlin\"\nformats = [\"csvlog\"]\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "pgtrail-processor",
            "run",
            "-c",
            path.to_str().unwrap(),
            "--group",
            "g2",
            "--topics",
            "a,^b.*",
            "--exit-when-idle",
            "3s",
            "--table-suffix",
            "_uat",
            "--lake",
            "/lake/",
        ]);
        let Command::Run(args) = cli.command else {
            panic!("run")
        };
        let args = *args;
        let c = Config::load(&args).unwrap();
        assert_eq!(
            (c.group.as_str(), c.flush_rows, c.exit_when_idle_ms),
            ("g2", 7, Some(3000))
        );
        assert_eq!(c.topics, vec!["a", "^b.*"]);
        assert_eq!(
            c.table_for_topic("pgaudit.raw.primary"),
            "/lake/pg_archive_sync/primary_postgresql_logs_uat"
        );
        assert!(c.accepts("primary", LogFormat::Csvlog));
        assert!(!c.accepts("primary", LogFormat::Stderr));
        assert!(c.accepts("replica", LogFormat::Stderr));
        assert!(c.server_format("primary").unwrap().zone.is_some());
        std::fs::write(&path, "[servers.x]\ntimezone = \"Mars/Base\"\n").unwrap();
        assert!(Config::load(&args).is_err(), "unknown zone");
    }
}
