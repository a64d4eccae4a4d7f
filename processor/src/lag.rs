//! `pgtrail-processor lag`: consumer lag read from the truth (the tables' `txn` positions and
//! the broker's watermarks), evaluated by Burrow-style rules, independent of whether any
//! processor runs. `--once` prints a report and exits 0 / 1 / 2 (OK / warning / critical;
//! 3: the monitor could not run); `--serve` observes every `interval`, exports
//! `pgtrail_lag_*` metrics and sends alert webhooks on changes.
//!
//! Owns [`Monitor`] (history per partition, evaluation, alerts) and the metrics of `--serve`
//! ([`LagMetrics`]). Invariants: the monitor reads only (it never joins the group, never
//! commits, never writes the lake); a round that fails is reported ERR, never as lag 0.
//! Must not: log record contents or receivers' URLs.

pub mod alert;
pub mod config;
pub mod jobwatch;
pub mod probe;
pub mod report;
pub mod status;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use self::alert::{Alerter, Sender};
use self::probe::{Probe, Round};
use self::report::{Freshness, PartitionLine, Report, ServerLine, TableLine};
use self::status::{Reading, Rules, Status, evaluate};
use crate::config::Config;
use crate::topic_partition::TopicPartition;

/// Labels of a partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: String,
}

/// Labels of a partition's status (a state set: 1 for the current status, 0 for the others).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// Consumer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition (`all` for the group's status of the topic).
    pub partition: String,
    /// Status name.
    pub status: String,
}

/// Labels of a server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// Server name.
    pub server: String,
}

/// Labels of a consumer group.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// Consumer group.
    pub group: String,
}

/// Labels of a webhook receiver.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabels {
    /// Receiver name.
    pub receiver: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The metrics of `lag --serve` (`pgtrail_lag_*`).
#[derive(Default, Clone)]
pub struct LagMetrics {
    offset_lag: Family<PartitionLabels, Gauge>,
    time_lag: Family<PartitionLabels, FloatGauge>,
    position: Family<PartitionLabels, Gauge>,
    committed: Family<PartitionLabels, Gauge>,
    low: Family<PartitionLabels, Gauge>,
    high: Family<PartitionLabels, Gauge>,
    lost: Family<PartitionLabels, Gauge>,
    status: Family<StatusLabels, Gauge>,
    freshness: Family<ServerLabels, FloatGauge>,
    heartbeat: Family<ServerLabels, FloatGauge>,
    rounds: Counter,
    round_errors: Counter,
    last_round: FloatGauge,
    webhooks_sent: Family<ReceiverLabels, Counter>,
    webhook_failures: Family<ReceiverLabels, Counter>,
    job_runs_failed: Family<GroupLabels, Gauge>,
    job_commits_unreconciled: Family<GroupLabels, Gauge>,
}

impl LagMetrics {
    /// Registers every metric under `pgtrail_lag_`.
    pub fn register(&self, r: &mut Registry) {
        let r = r.sub_registry_with_prefix("pgtrail_lag");
        r.register(
            "offset_lag_messages",
            "Records in the topic not durably in the table",
            self.offset_lag.clone(),
        );
        r.register(
            "time_lag_seconds",
            "Age of the first record not in the table (0: none waiting)",
            self.time_lag.clone(),
        );
        r.register(
            "table_position_offset",
            "The table's txn version + 1: first offset not written",
            self.position.clone(),
        );
        r.register(
            "committed_offset",
            "The group's committed Kafka offset (advisory)",
            self.committed.clone(),
        );
        r.register(
            "low_watermark_offset",
            "The broker's low watermark",
            self.low.clone(),
        );
        r.register(
            "high_watermark_offset",
            "The broker's high watermark",
            self.high.clone(),
        );
        r.register(
            "lost_messages",
            "Records deleted by retention before they were written (LOSS)",
            self.lost.clone(),
        );
        r.register("status", "Status per partition (partition=all: the group's for the topic); 1 for the current status", self.status.clone());
        r.register(
            "freshness_seconds",
            "Age of the newest shipper heartbeat durably in the lake, per server",
            self.freshness.clone(),
        );
        r.register(
            "heartbeat_timestamp_seconds",
            "When the newest heartbeat in the lake was sent",
            self.heartbeat.clone(),
        );
        r.register("rounds", "Observation rounds", self.rounds.clone());
        r.register(
            "round_errors",
            "Rounds that could not list the topics",
            self.round_errors.clone(),
        );
        r.register(
            "last_round_timestamp_seconds",
            "When the last round ended",
            self.last_round.clone(),
        );
        r.register(
            "webhooks_sent",
            "Alert notices delivered",
            self.webhooks_sent.clone(),
        );
        r.register(
            "webhook_failures",
            "Alert notices not delivered after every retry",
            self.webhook_failures.clone(),
        );
        r.register(
            "job_runs_failed",
            "Runs of the group that ended failed within [lag] jobs_window (job-audit table)",
            self.job_runs_failed.clone(),
        );
        r.register(
            "job_commits_unreconciled",
            "Commits of the group whose job facts do not reconcile within [lag] jobs_window",
            self.job_commits_unreconciled.clone(),
        );
    }

    fn set(&self, report: &Report) {
        for f in [
            &self.offset_lag,
            &self.position,
            &self.committed,
            &self.low,
            &self.high,
            &self.lost,
        ] {
            f.clear();
        }
        self.time_lag.clear();
        self.status.clear();
        for p in &report.partitions {
            let l = PartitionLabels {
                group: report.group.clone(),
                topic: p.topic.clone(),
                partition: p.partition.to_string(),
            };
            self.offset_lag.get_or_create(&l).set(p.eval.offset_lag);
            self.time_lag
                .get_or_create(&l)
                .set(p.eval.time_lag_ms as f64 / 1000.0);
            self.lost
                .get_or_create(&l)
                .set(p.eval.lost.map_or(0, |(a, b)| b - a + 1));
            for (family, v) in [
                (&self.position, p.position),
                (&self.committed, p.committed),
                (&self.low, p.low),
                (&self.high, p.high),
            ] {
                if let Some(v) = v {
                    family.get_or_create(&l).set(v);
                }
            }
            self.set_status(&report.group, &p.topic, &l.partition, p.eval.status);
        }
        for t in &report.tables {
            let topic = report
                .partitions
                .iter()
                .find(|p| p.table == t.table)
                .map_or(String::new(), |p| p.topic.clone());
            self.set_status(&report.group, &topic, "all", t.status);
        }
        for s in &report.servers {
            let l = ServerLabels {
                server: s.server.clone(),
            };
            if let Some(age) = s.heartbeat_age_ms {
                self.freshness.get_or_create(&l).set(age as f64 / 1000.0);
                let sent = report.at.timestamp_millis() - age;
                self.heartbeat.get_or_create(&l).set(sent as f64 / 1000.0);
            }
        }
        self.rounds.inc();
        if report.error.is_some() {
            self.round_errors.inc();
        }
        self.last_round
            .set(report.at.timestamp_millis() as f64 / 1000.0);
    }

    fn set_status(&self, group: &str, topic: &str, partition: &str, current: Status) {
        for s in Status::ALL {
            self.status
                .get_or_create(&StatusLabels {
                    group: group.to_owned(),
                    topic: topic.to_owned(),
                    partition: partition.to_owned(),
                    status: s.as_str().to_owned(),
                })
                .set(i64::from(s == current));
        }
    }
}

/// The lag monitor.
pub struct Monitor {
    cfg: Config,
    probe: Probe,
    history: BTreeMap<TopicPartition, VecDeque<Result<Reading, String>>>,
    alerter: Alerter,
    senders: Vec<Sender>,
    jobs: jobwatch::JobWatch,
    /// Metrics of `--serve`.
    pub metrics: LagMetrics,
}

impl Monitor {
    /// A monitor of `cfg` (its `[lag]` section, topics, group and tables).
    pub fn new(cfg: Config) -> Result<Monitor, crate::error::ProcessorError> {
        let mut senders = Vec::new();
        for w in &cfg.lag.webhooks {
            let url = w
                .resolve_url()
                .map_err(|reason| crate::error::ProcessorError::Config { reason })?;
            senders.push(Sender::new(&w.name, url, w.format, w.retries, w.timeout));
        }
        Ok(Monitor {
            probe: Probe::new(cfg.clone())?,
            jobs: jobwatch::JobWatch::new(&cfg, crate::lake::Lake::from_section(&cfg.storage)?),
            alerter: Alerter::new(cfg.lag.alert_on.severity(), cfg.lag.repeat_interval),
            cfg,
            history: BTreeMap::new(),
            senders,
            metrics: LagMetrics::default(),
        })
    }

    fn rules(&self) -> Rules {
        Rules {
            window: self.cfg.lag.window,
            warn_time_lag: self.cfg.lag.warn_time_lag,
        }
    }

    /// Takes a round, evaluates it against the history and updates the metrics.
    pub async fn observe(&mut self) -> Report {
        let at = Utc::now();
        let round = self.probe.round().await;
        let report = match round {
            Ok(round) => self.evaluate(round, at),
            Err(e) => Report {
                at,
                group: self.cfg.group.clone(),
                status: Status::Err,
                partitions: Vec::new(),
                tables: Vec::new(),
                servers: Vec::new(),
                error: Some(e),
            },
        };
        self.metrics.set(&report);
        let jobs = self.jobs.observe().await;
        let group = GroupLabels {
            group: self.cfg.group.clone(),
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.metrics
            .job_runs_failed
            .get_or_create(&group)
            .set(gauge(jobs.runs_failed));
        self.metrics
            .job_commits_unreconciled
            .get_or_create(&group)
            .set(gauge(jobs.commits_unreconciled));
        report
    }

    fn evaluate(&mut self, round: Round, at: chrono::DateTime<Utc>) -> Report {
        let rules = self.rules();
        let keep = chrono::Duration::from_std(rules.window).unwrap_or_default();
        let mut partitions = Vec::new();
        for p in round.partitions {
            let h = self.history.entry(p.tp.clone()).or_default();
            h.push_back(p.reading.clone());
            // The window's observations plus the one just before it.
            while h.len() > 2
                && h.get(1)
                    .and_then(|r| r.as_ref().ok())
                    .is_some_and(|r| at.timestamp_millis() - r.at_ms > keep.num_milliseconds())
            {
                h.pop_front();
            }
            let eval = evaluate(h.make_contiguous(), rules);
            let ok = p.reading.as_ref().ok();
            partitions.push(PartitionLine {
                topic: p.tp.topic.to_string(),
                partition: p.tp.partition,
                table: p.table,
                low: ok.map(|r| r.low),
                high: ok.map(|r| r.high),
                committed: p.committed,
                position: ok.and_then(|r| r.position),
                eval,
                error: p.reading.err(),
            });
        }
        let mut tables = Vec::new();
        let mut servers = Vec::new();
        for (table, t) in round.tables {
            let mine: Vec<&PartitionLine> =
                partitions.iter().filter(|p| p.table == table).collect();
            tables.push(TableLine {
                table: table.clone(),
                server: t.server.clone(),
                status: Status::worst(mine.iter().map(|p| p.eval.status)),
                offset_lag: mine.iter().map(|p| p.eval.offset_lag).sum(),
                time_lag_ms: mine.iter().map(|p| p.eval.time_lag_ms).max().unwrap_or(0),
            });
            let age = t.heartbeat_ms.map(|h| (at.timestamp_millis() - h).max(0));
            let threshold = i64::try_from(self.cfg.lag.freshness.as_millis()).unwrap_or(i64::MAX);
            servers.push(ServerLine {
                server: t.server,
                table,
                heartbeat_age_ms: age,
                freshness: match age {
                    None => Freshness::Unknown,
                    Some(a) if a > threshold => Freshness::Stale,
                    Some(_) => Freshness::Fresh,
                },
            });
        }
        Report {
            at,
            group: self.cfg.group.clone(),
            status: Status::worst(partitions.iter().map(|p| p.eval.status)),
            partitions,
            tables,
            servers,
            error: None,
        }
    }

    /// Sends the notices `report` calls for to every receiver.
    pub async fn alert(&mut self, report: &Report) {
        for (subject, condition) in report.conditions() {
            let Some(notice) = self.alerter.decide(&subject, condition, report.at) else {
                continue;
            };
            tracing::info!(
                subject,
                kind = ?notice.kind,
                status = notice.condition.status,
                previous = notice.previous,
                "Alert."
            );
            for s in &self.senders {
                let label = ReceiverLabels {
                    receiver: s.name.clone(),
                };
                if let Err(reason) = s.send(&notice, &self.cfg.group).await {
                    self.metrics.webhook_failures.get_or_create(&label).inc();
                    tracing::error!(receiver = s.name, reason, "Alert webhook not delivered.");
                } else {
                    self.metrics.webhooks_sent.get_or_create(&label).inc();
                }
            }
        }
    }
}

/// Serves `metrics` on `addr` with health routes (see `telemetry.rs`).
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: &LagMetrics,
    health: Arc<pgtrail_connect::Health>,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<std::net::SocketAddr, crate::error::ProcessorError> {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    crate::telemetry::serve_registry(addr, registry, health, cancel).await
}
