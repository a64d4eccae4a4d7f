//! What one evaluated round says: per partition, per table (the group's status of a topic)
//! and per server (end-to-end freshness); printed as a table by `lag --once`, as JSON with
//! `--json`, exported as metrics and turned into alert conditions by `--serve`.
//!
//! Owns [`Report`] and its rows. Invariants: a table's status is the worst of its
//! partitions'; the report's severity is the worst of every status and freshness in it (the
//! exit code of `--once`). Must not: do I/O.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::alert::Condition;
use super::status::{Evaluation, Severity, Status};

/// One partition's line.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLine {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Table URI.
    pub table: String,
    /// Low watermark (`None`: unreadable).
    pub low: Option<i64>,
    /// High watermark.
    pub high: Option<i64>,
    /// The group's committed Kafka offset (advisory).
    pub committed: Option<i64>,
    /// The table's position (`txn` version + 1).
    pub position: Option<i64>,
    /// What the rules say.
    #[serde(flatten)]
    pub eval: Evaluation,
    /// Why the partition could not be read (ERR).
    pub error: Option<String>,
}

/// A topic's (table's) line: the group's status for it.
#[derive(Debug, Clone, Serialize)]
pub struct TableLine {
    /// Table URI.
    pub table: String,
    /// Its server.
    pub server: String,
    /// Worst partition status.
    pub status: Status,
    /// Sum of the partitions' offset lags.
    pub offset_lag: i64,
    /// Largest time lag of its partitions, ms.
    pub time_lag_ms: i64,
}

/// End-to-end freshness of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Freshness {
    /// The newest heartbeat in the lake is younger than the threshold.
    Fresh,
    /// Older: shipper, Kafka or processor stopped carrying the server's logs.
    Stale,
    /// No heartbeat in the table's recent history (shippers before envelope version 4, or
    /// heartbeats off).
    Unknown,
}

impl Freshness {
    /// The name (`FRESH`, `STALE`, `UNKNOWN`).
    pub fn as_str(self) -> &'static str {
        match self {
            Freshness::Fresh => "FRESH",
            Freshness::Stale => "STALE",
            Freshness::Unknown => "UNKNOWN",
        }
    }
}

/// A server's line.
#[derive(Debug, Clone, Serialize)]
pub struct ServerLine {
    /// Server name.
    pub server: String,
    /// Table URI.
    pub table: String,
    /// Age of the newest heartbeat durably in the lake, ms.
    pub heartbeat_age_ms: Option<i64>,
    /// What that age means.
    pub freshness: Freshness,
}

/// One evaluated round.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When.
    pub at: DateTime<Utc>,
    /// Consumer group.
    pub group: String,
    /// Worst status of every partition.
    pub status: Status,
    /// Per partition.
    pub partitions: Vec<PartitionLine>,
    /// Per table.
    pub tables: Vec<TableLine>,
    /// Per server.
    pub servers: Vec<ServerLine>,
    /// Why the round could not list the topics (everything is then ERR).
    pub error: Option<String>,
}

impl Report {
    /// The worst severity in the report.
    pub fn severity(&self) -> Severity {
        let stale = self.servers.iter().any(|s| s.freshness == Freshness::Stale);
        let fresh = if stale {
            Severity::Critical
        } else {
            Severity::Ok
        };
        self.status.severity().max(fresh)
    }

    /// Per table (`lag/<table>`) and per server (`freshness/<server>`): the alert conditions.
    pub fn conditions(&self) -> Vec<(String, Condition)> {
        let mut out = Vec::new();
        for t in &self.tables {
            let bad: Vec<_> = self
                .partitions
                .iter()
                .filter(|p| p.table == t.table && p.eval.status != Status::Ok)
                .map(|p| {
                    json!({"topic": p.topic, "partition": p.partition, "status": p.eval.status,
                           "offset_lag": p.eval.offset_lag, "time_lag_seconds": p.eval.time_lag_ms / 1000,
                           "lost": p.eval.lost})
                })
                .collect();
            let name = t.table.rsplit('/').next().unwrap_or(&t.table);
            out.push((
                format!("lag/{name}"),
                Condition {
                    status: t.status.as_str().to_owned(),
                    severity: t.status.severity(),
                    summary: format!(
                        "{name}: {} (offset lag {}, time lag {} s)",
                        t.status,
                        t.offset_lag,
                        t.time_lag_ms / 1000
                    ),
                    details: json!({"table": t.table, "server": t.server, "partitions": bad}),
                },
            ));
        }
        for s in &self.servers {
            let (status, severity) = match s.freshness {
                Freshness::Stale => ("STALE", Severity::Critical),
                Freshness::Fresh | Freshness::Unknown => ("OK", Severity::Ok),
            };
            let age = s
                .heartbeat_age_ms
                .map_or("-".to_owned(), |a| format!("{} s", a / 1000));
            out.push((
                format!("freshness/{}", s.server),
                Condition {
                    status: status.to_owned(),
                    severity,
                    summary: format!("{}: newest heartbeat in the lake {age} old", s.server),
                    details: json!({"table": s.table, "heartbeat_age_seconds": s.heartbeat_age_ms.map(|a| a / 1000)}),
                },
            ));
        }
        out
    }
}

fn opt(v: Option<i64>) -> String {
    v.map_or("-".to_owned(), |v| v.to_string())
}

fn secs(ms: i64) -> String {
    format!("{:.1}", ms as f64 / 1000.0)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "group {}  status {}  at {}",
            self.group,
            self.status,
            self.at.to_rfc3339()
        )?;
        if let Some(e) = &self.error {
            writeln!(f, "error: {e}")?;
        }
        writeln!(
            f,
            "{:<28} {:>4} {:<28} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}  STATUS",
            "TOPIC", "PART", "TABLE", "LOW", "HIGH", "COMMITTED", "POSITION", "LAG", "TIME_LAG_S"
        )?;
        for p in &self.partitions {
            let table = p.table.rsplit('/').next().unwrap_or(&p.table);
            write!(
                f,
                "{:<28} {:>4} {:<28} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}  {}",
                p.topic,
                p.partition,
                table,
                opt(p.low),
                opt(p.high),
                opt(p.committed),
                opt(p.position),
                p.eval.offset_lag,
                secs(p.eval.time_lag_ms),
                p.eval.status
            )?;
            if let Some((first, last)) = p.eval.lost {
                write!(f, "  lost offsets {first}..={last}")?;
            }
            if let Some(e) = &p.error {
                write!(f, "  {e}")?;
            }
            writeln!(f)?;
        }
        for s in &self.servers {
            let age = s.heartbeat_age_ms.map_or("-".to_owned(), secs);
            writeln!(
                f,
                "server {:<20} heartbeat age {age:>8} s  freshness {}",
                s.server,
                s.freshness.as_str()
            )?;
        }
        Ok(())
    }
}
