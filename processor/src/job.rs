//! The job-audit facts of a Delta commit: what the pipeline did, recorded in the commit
//! itself (its `pgtrail` commit info, atomic with the data) so that auditors can ask the table
//! "which job wrote this, from which offsets, what was skipped and why".
//!
//! Owns [`Skip`] (why a record became no row), [`JobTally`] (a partition's counts since its
//! last commit) and [`job_facts`] (the `job` object of a commit). Invariants: a tally counts
//! messages handled by this instance since the partition's previous commit taken (records held
//! for their outcome are counted when consumed, their rows when written: per commit the
//! counts need not balance, across a run's commits they do); a fenced or failed commit's
//! tally is not carried over. Must not: decide anything about rows or offsets.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// Why a consumed record became no row (the `reason` of
/// `pgtrail_processor_records_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not an audit event (a plain log record).
    NotAudit,
    /// Shipped again (same file and byte offset).
    Duplicate,
    /// Its format is not wanted for its server.
    FormatFiltered,
    /// The outcome of a statement already written.
    LateOutcome,
    /// Written before a restart (a replay of what the table holds).
    Replayed,
    /// A shipper heartbeat.
    Heartbeat,
    /// A stderr line attached to the record it continues (its text is that record's).
    Continuation,
}

impl Skip {
    /// Every reason, in the order of [`JobTally::skipped`].
    pub const ALL: [Skip; 7] = [
        Skip::NotAudit,
        Skip::Duplicate,
        Skip::FormatFiltered,
        Skip::LateOutcome,
        Skip::Replayed,
        Skip::Heartbeat,
        Skip::Continuation,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotAudit => "not_audit",
            Skip::Duplicate => "duplicate",
            Skip::FormatFiltered => "format_filtered",
            Skip::LateOutcome => "late_outcome",
            Skip::Replayed => "replayed",
            Skip::Heartbeat => "heartbeat",
            Skip::Continuation => "continuation",
        }
    }
}

/// A partition's counts since its last commit. Every record handled ends in exactly one of:
/// a row, a skip reason, a dead letter, or still held (for its outcome or its stderr lines)
/// when the tally is cut; so `held_before + consumed = produced + skipped + dead_letters +
/// held_after` ([`JobTally::reconciled`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobTally {
    /// Messages handled.
    pub consumed: u64,
    /// Their bytes (message values).
    pub bytes: u64,
    /// Records sent to the dead-letter topic.
    pub dead_letters: u64,
    /// Records that became no row, per [`Skip::ALL`] reason.
    pub skipped: [u64; 7],
    /// Records that became a row (one row each).
    pub produced: u64,
    /// Records held when the previous tally was cut (handled, not yet decided).
    pub held_before: u64,
    /// Records held when this one was cut.
    pub held_after: u64,
}

impl JobTally {
    /// Counts `n` records skipped for `reason`.
    pub fn skip(&mut self, reason: Skip, n: u64) {
        if let Some(i) = Skip::ALL.iter().position(|r| *r == reason) {
            self.skipped[i] += n;
        }
    }

    /// Whether every record is accounted for (see [`JobTally`]).
    pub fn reconciled(&self) -> bool {
        self.held_before + self.consumed
            == self.produced
                + self.skipped.iter().sum::<u64>()
                + self.dead_letters
                + self.held_after
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &JobTally) {
        self.consumed += other.consumed;
        self.bytes += other.bytes;
        self.dead_letters += other.dead_letters;
        self.produced += other.produced;
        self.held_before += other.held_before;
        self.held_after += other.held_after;
        for (a, b) in self.skipped.iter_mut().zip(other.skipped) {
            *a += b;
        }
    }

    fn skipped_json(&self) -> Value {
        let map: serde_json::Map<String, Value> = Skip::ALL
            .iter()
            .zip(self.skipped)
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| (r.as_str().to_owned(), json!(n)))
            .collect();
        Value::Object(map)
    }
}

/// This process's run id (16 hex digits, random per start): the commits of one run share it.
pub static RUN_ID: LazyLock<String> = LazyLock::new(|| format!("{:016x}", rand_id()));

fn rand_id() -> u64 {
    let t = Utc::now().timestamp_nanos_opt().unwrap_or_default();
    xxhash_rust::xxh3::xxh3_64(
        &[t.to_le_bytes(), u64::from(std::process::id()).to_le_bytes()].concat(),
    )
}

/// This instance as job facts and state objects name it: host and process id.
pub fn writer_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}

/// One partition's part of a commit, for [`job_facts`].
#[derive(Debug, Clone)]
pub struct PartitionFacts {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset the commit covers (the previous `txn` version + 1).
    pub first_offset: i64,
    /// Last offset it covers (its new `txn` version).
    pub last_offset: i64,
    /// Rows it writes.
    pub rows: u64,
    /// Counts since the partition's previous commit.
    pub tally: JobTally,
}

/// How a job runs (the `mode` of its facts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobMode {
    /// The live processor: new records as they arrive.
    Incremental,
    /// A replay: records already in the table derived again.
    Historical,
}

impl JobMode {
    /// Its name in the facts.
    pub fn as_str(self) -> &'static str {
        match self {
            JobMode::Incremental => "incremental",
            JobMode::Historical => "historical",
        }
    }
}

/// A commit's attempt, for [`job_facts`].
#[derive(Debug, Clone)]
pub struct CommitFacts<'a> {
    /// Live or replay.
    pub mode: JobMode,
    /// Consumer group (the job: `pgtrail-processor/<group>`, or `pgtrail-replay/<group>`).
    pub group: &'a str,
    /// This instance (host and process id).
    pub writer: &'a str,
    /// Table URI.
    pub table: &'a str,
    /// The Delta version this attempt writes.
    pub version: u64,
    /// Rows in the table before it (from file statistics).
    pub rows_before: u64,
    /// When the commit started.
    pub started: DateTime<Utc>,
    /// Its attempt (1 for the first).
    pub attempt: u32,
}

/// The `job` object of a commit's `pgtrail` commit info.
pub fn job_facts(c: &CommitFacts<'_>, parts: &[PartitionFacts], now: DateTime<Utc>) -> Value {
    let mut total = JobTally::default();
    let mut rows = 0;
    let partitions: Vec<Value> = parts
        .iter()
        .map(|p| {
            total.add(&p.tally);
            rows += p.rows;
            json!({
                "topic": p.topic,
                "partition": p.partition,
                "first_offset": p.first_offset,
                "last_offset": p.last_offset,
                "records_consumed": p.tally.consumed,
                "bytes": p.tally.bytes,
                "rows_written": p.rows,
                "skipped": p.tally.skipped_json(),
                "dead_letters": p.tally.dead_letters,
                "records_with_rows": p.tally.produced,
                "held_before": p.tally.held_before,
                "held_after": p.tally.held_after,
                "reconciled": p.tally.reconciled(),
            })
        })
        .collect();
    json!({
        "format": "v1",
        "id": match c.mode {
            JobMode::Incremental => format!("pgtrail-processor/{}", c.group),
            JobMode::Historical => format!("pgtrail-replay/{}", c.group),
        },
        "run": *RUN_ID,
        "mode": c.mode.as_str(),
        "processor_version": env!("CARGO_PKG_VERSION"),
        "host": c.writer,
        "table": c.table,
        "table_version": c.version,
        "partitions": partitions,
        "records_consumed": total.consumed,
        "bytes": total.bytes,
        "rows_written": rows,
        "skipped": total.skipped_json(),
        "dead_letters": total.dead_letters,
        "late_outcomes": total.skipped[3],
        "records_with_rows": total.produced,
        "held_before": total.held_before,
        "held_after": total.held_after,
        "reconciled": parts.iter().all(|p| p.tally.reconciled()),
        "rows_before": c.rows_before,
        "rows_after": c.rows_before + rows,
        "started": c.started.to_rfc3339(),
        "ended": now.to_rfc3339(),
        "duration_ms": (now - c.started).num_milliseconds(),
        "retries": c.attempt.saturating_sub(1),
        "status": "committed",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_sum_their_partitions() {
        let mut a = JobTally {
            consumed: 10,
            bytes: 1000,
            dead_letters: 1,
            ..JobTally::default()
        };
        a.skip(Skip::NotAudit, 6);
        a.skip(Skip::LateOutcome, 1);
        let mut b = JobTally {
            consumed: 5,
            bytes: 500,
            ..JobTally::default()
        };
        b.skip(Skip::Heartbeat, 2);
        let part = |partition, tally, rows| PartitionFacts {
            topic: "pgaudit.raw.primary".into(),
            partition,
            first_offset: 0,
            last_offset: 9,
            rows,
            tally,
        };
        let started = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let facts = job_facts(
            &CommitFacts {
                mode: JobMode::Incremental,
                group: "g",
                writer: "db-1:42",
                table: "/lake/t",
                version: 7,
                rows_before: 100,
                started,
                attempt: 2,
            },
            &[part(0, a, 2), part(1, b, 3)],
            started + chrono::Duration::milliseconds(250),
        );
        assert_eq!(facts["records_consumed"], 15);
        assert_eq!(facts["rows_written"], 5);
        assert_eq!(facts["rows_after"], 105);
        assert_eq!(
            facts["skipped"],
            json!({"not_audit": 6, "late_outcome": 1, "heartbeat": 2})
        );
        assert_eq!(facts["late_outcomes"], 1);
        assert_eq!(
            (facts["retries"].as_u64(), facts["duration_ms"].as_i64()),
            (Some(1), Some(250))
        );
        assert_eq!(facts["partitions"][1]["skipped"], json!({"heartbeat": 2}));
        assert_eq!(facts["run"].as_str().map(str::len), Some(16));
    }
}
