//! `pgtrail-processor replay`: derive a table's rows again from the raw records still in
//! Kafka, with the configuration given now, and replace the rows that came from them.
//!
//! Owns [`ReplayArgs`], [`Report`] and [`replay`]; planning in `plan`, reading in `read`, the
//! table operations in `table`, the comparison in `diff`, the commit in `commit`. The steps:
//! plan each partition's range (clamped to the table's `txn` version, and for `--into` to the
//! position of a group continuing that table; refused where Kafka deleted offsets unless
//! `--allow-partial`), derive the range's rows, drop rows whose record was first shipped (and
//! written) before the range, compare with what the range holds, and, unless `--dry-run`,
//! send the range's dead letters, then replace the range in one commit (`mode: historical`
//! job facts). Invariants: one commit per replay (readers see the old rows or the new, never
//! both or neither; killed before it, the table is untouched and a rerun does it all);
//! replaying a range twice leaves the same rows (but for `ingest_ts`: when they were written);
//! the live group's `txn` versions and state are never changed. Must not: run on the
//! consumer's path, or log record contents.

mod commit;
mod coverage;
mod diff;
mod plan;
mod read;
mod table;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::info;

pub use diff::{Change, Diff};
pub use plan::{Bounds, PartitionPlan, plan_partition};

use crate::config::{Config, RunArgs, TargetArgs};
use crate::delta::AuditTable;
use crate::error::ProcessorError;
use crate::job::{JobMode, PartitionFacts};
use crate::lake::Lake;
use crate::state::{StateStore, offset_app_id};
use crate::topic_partition::TopicPartition;
use commit::Derivation;

/// Attempts of a replay's commit that conflicted with another (a table maintenance, another
/// replay; live appends do not conflict: `AuditTable::upload`).
const COMMIT_ATTEMPTS: u32 = 10;

/// Broker time read before a range beyond the outcome window: shipping delay allowed for.
const CONTEXT_MARGIN: std::time::Duration = std::time::Duration::from_secs(60);

/// What a time window applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TimeBasis {
    /// The broker's timestamps of the records.
    Kafka,
    /// `event_time` of the rows the table holds now (their offsets, first to last).
    Event,
}

/// Flags of `replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Config file, brokers, group (whose table positions bound the replay), lake.
    #[command(flatten)]
    pub target: TargetArgs,
    /// The topic whose table is replayed.
    #[arg(long)]
    pub topic: String,
    /// Partitions, comma separated. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub partition: Vec<i32>,
    /// First offset replayed. Default: the first.
    #[arg(long)]
    pub from_offset: Option<i64>,
    /// Last offset replayed. Default (and at most): the table's position.
    #[arg(long)]
    pub to_offset: Option<i64>,
    /// Start of a time window (RFC 3339), instead of offsets.
    #[arg(long, requires = "to_time", conflicts_with_all = ["from_offset", "to_offset"])]
    pub from_time: Option<DateTime<Utc>>,
    /// End of the time window (RFC 3339, exclusive).
    #[arg(long, requires = "from_time")]
    pub to_time: Option<DateTime<Utc>>,
    /// What the window applies to: `kafka` (broker timestamps) or `event` (`event_time` of
    /// the table's rows: every offset from the first to the last of them is replayed).
    #[arg(long, value_enum, default_value = "kafka")]
    pub time: TimeBasis,
    /// Records read before the range for context (outcomes, stderr continuation lines).
    #[arg(long, default_value_t = 10_000)]
    pub context: i64,
    /// Broker time read before the range for context as well (whichever reaches further).
    /// Default: the outcome window and 60 s of shipping delay; `0s`: records only.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub context_time: Option<std::time::Duration>,
    /// Replay what Kafka still has when some offsets were deleted by retention (their rows
    /// stay as they are). Default: refuse, naming them (exit 7).
    #[arg(long)]
    pub allow_partial: bool,
    /// Print the plan and the difference it would make; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the replayed rows into this table (created if missing) instead of in place.
    #[arg(long)]
    pub into: Option<String>,
    /// Hand the `--into` table over to this consumer group at the range's end: the commit
    /// carries the group's checkpoint there, so a processor of the group started on the table
    /// continues it live (records still undecided at the end are left to it).
    #[arg(long, requires = "into")]
    pub continue_as: Option<String>,
    /// Changed rows named in the report.
    #[arg(long, default_value_t = 10)]
    pub sample: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl ReplayArgs {
    /// The `run` flags these override.
    pub fn run_args(&self) -> RunArgs {
        RunArgs {
            target: self.target.clone(),
            ..RunArgs::default()
        }
    }
}

/// What a replay did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The table read.
    pub table: String,
    /// The table written (the same unless `--into`).
    pub target: String,
    /// Nothing written.
    pub dry_run: bool,
    /// The ranges replayed.
    pub plans: Vec<PartitionPlan>,
    /// Messages read (context and past the ranges included).
    pub messages_read: u64,
    /// Records in the ranges.
    pub records: u64,
    /// Rows dropped as first written before the range (records shipped again).
    pub reshipped: u64,
    /// Dead letters of the ranges.
    pub dead_letters: u64,
    /// Those sent to the dead-letter topic: records whose rows the replay removed (the others
    /// were dead letters already; none for `--into` or a dry run).
    pub dead_letters_sent: u64,
    /// The difference.
    pub diff: Diff,
    /// The Delta version written.
    pub version: Option<u64>,
}

/// Replays what `args` names with `cfg` (the parse settings to apply now); unless dry, the
/// run's start and end rows and its commit go to the job-audit table.
pub async fn replay(cfg: &Config, args: &ReplayArgs) -> Result<Report, ProcessorError> {
    let recorder = if args.dry_run {
        None
    } else {
        let metrics = crate::telemetry::Metrics::default();
        crate::joblog::Recorder::start(cfg, JobMode::Historical, metrics)?
    };
    let result = run(cfg, args).await;
    if let Some(recorder) = recorder {
        let target = args
            .into
            .clone()
            .unwrap_or_else(|| cfg.table_for_topic(&args.topic));
        let end = match &result {
            Ok(r) => crate::joblog::RunEnd {
                status: "succeeded",
                records_consumed: r.messages_read,
                rows_written: r.diff.rows_after,
                dead_letters: r.dead_letters,
                ..Default::default()
            },
            Err(e) => crate::joblog::RunEnd {
                status: "failed",
                error: Some(e.to_string()),
                exit_code: e.exit_code(),
                ..Default::default()
            },
        };
        recorder.finish(end, Some(vec![target])).await;
    }
    result
}

async fn run(cfg: &Config, args: &ReplayArgs) -> Result<Report, ProcessorError> {
    let started = Utc::now();
    let lake = Lake::from_section(&cfg.storage)?;
    let uri = cfg.table_for_topic(&args.topic);
    let source = AuditTable::open_existing_with(&uri, lake.options_for(&uri))
        .await?
        .ok_or_else(|| ProcessorError::Config {
            reason: format!("no Delta table at {uri} (the table of {})", args.topic),
        })?;
    let rt = tokio::runtime::Handle::current();
    let mut reader = tokio::task::block_in_place(|| read::Reader::new(cfg, rt))?;
    let into = match &args.into {
        Some(t) => AuditTable::open_existing_with(t, lake.options_for(t)).await?,
        None => None,
    };
    let plans = plans(cfg, args, &source, into.as_ref(), &reader).await?;
    drop(into);
    let mut report = Report {
        table: uri.clone(),
        target: args.into.clone().unwrap_or_else(|| uri.clone()),
        dry_run: args.dry_run,
        plans: plans.clone(),
        messages_read: 0,
        records: 0,
        reshipped: 0,
        dead_letters: 0,
        dead_letters_sent: 0,
        diff: Diff::default(),
        version: None,
    };
    for p in &plans {
        info!(partition = %p.tp, first = p.first, last = p.last, read_from = p.read_from, unreadable = ?p.unreadable, "Replay planned.");
    }
    let mut derived = derive(&mut reader, &source, &plans, &mut report).await?;
    let old = table::rows_in(source.delta(), &plans).await?;
    let digest = |b: &[deltalake::arrow::array::RecordBatch]| {
        diff::digests(b).map_err(|e| ProcessorError::Internal {
            reason: format!("comparing rows: {e}"),
        })
    };
    report.diff = diff::diff(digest(&old)?, digest(&derived.batches)?, args.sample);
    // In place, a replay that changes nothing writes nothing (`--into` always writes).
    if args.dry_run || plans.is_empty() || (args.into.is_none() && report.diff.is_empty()) {
        return Ok(report);
    }
    // Dead letters only for records that had rows the replay removes: a record without rows
    // was dead-lettered (or skipped) when first processed, and `--into` tables start empty,
    // so the topic gets no second copy of what it has.
    let had_rows = table::row_offsets(&old).map_err(|e| ProcessorError::Internal {
        reason: format!("reading the range's rows: {e}"),
    })?;
    let dead: Vec<_> = std::mem::take(&mut derived.dead)
        .into_iter()
        .filter(|d| args.into.is_none() && had_rows.contains(&(d.tp.partition, d.offset)))
        .collect();
    report.dead_letters_sent = dead.len() as u64;
    if !dead.is_empty() {
        send_dead_letters(cfg, &dead)?;
    }
    drop(source);
    let written = commit::commit(cfg, args, &lake, &plans, derived, &report, started).await?;
    report.version = written.version();
    // The range's rows in the table read, before and after (an `--into` table's own rows
    // removed are in the commit's job facts).
    info!(table = %report.target, version = ?report.version, range_rows_before = report.diff.rows_before, range_rows_after = report.diff.rows_after, "Replay committed.");
    Ok(report)
}

/// Derives the rows of every plan's range (`report` takes the counts).
async fn derive(
    reader: &mut read::Reader,
    source: &AuditTable,
    plans: &[PartitionPlan],
    report: &mut Report,
) -> Result<Derivation, ProcessorError> {
    let mut out = Derivation::default();
    for p in plans {
        if p.is_empty() {
            let at = crate::partition::PartitionCheckpoint::before_range(&p.tp, p.last, p.last);
            out.handover.push(at);
            continue;
        }
        let total = (p.last - p.read_from + 1).max(1);
        let mut derived = tokio::task::block_in_place(|| {
            reader.derive(p, |at| {
                let done = ((at - p.read_from) * 100 / total).clamp(0, 100);
                info!(partition = %p.tp, offset = at, percent = done, "Replaying.");
            })
        })?;
        let first_written = table::ids_before(source.delta(), p, &derived.event_ids).await?;
        let rows = derived.rows.take().map_err(|e| ProcessorError::Internal {
            reason: format!("replayed rows of {}: {e}", p.tp),
        })?;
        let rows = table::without(rows, &first_written)?;
        let n: usize = rows.iter().map(|b| b.num_rows()).sum();
        report.messages_read += derived.tally.consumed;
        report.records += derived.in_range;
        report.reshipped += first_written.len() as u64;
        report.dead_letters += derived.dead.len() as u64;
        out.handover.extend(derived.checkpoint.take());
        out.parts.push(PartitionFacts {
            topic: p.tp.topic.to_string(),
            partition: p.tp.partition,
            first_offset: p.first,
            last_offset: p.last,
            rows: n as u64,
            tally: derived.tally,
        });
        out.dead.append(&mut derived.dead);
        out.batches.extend(rows);
    }
    Ok(out)
}

fn send_dead_letters(
    cfg: &Config,
    dead: &[crate::partition::DeadLetter],
) -> Result<(), ProcessorError> {
    let gate = std::sync::Arc::new(pgtrail_connect::LogGate::default());
    let mut dlq = crate::dlq::DeadLetters::new(cfg, gate)?;
    let metrics = crate::telemetry::Metrics::default();
    for d in dead {
        dlq.send(d, &metrics)?;
    }
    tokio::task::block_in_place(|| dlq.flush(std::time::Duration::from_secs(60)))
}

/// The first offset whose broker time is within `context_time` (default: the outcome window and
/// a margin for shipping delay) before the broker time of the range's first record: an error in the range can
/// decide a statement logged up to a window before it, which must be read for the replay to
/// decide as the live run did. Broker times are at or after log times, so the records left
/// out were logged before the window. `plan.first` when the times are not known.
async fn context_by_time(
    reader: &read::Reader,
    plan: &PartitionPlan,
    low: i64,
    context_time: Option<std::time::Duration>,
) -> Result<i64, ProcessorError> {
    let tp = &plan.tp;
    let back = context_time.unwrap_or(reader.window() + CONTEXT_MARGIN);
    if back.is_zero() {
        return Ok(plan.first);
    }
    let Some(at) = tokio::task::block_in_place(|| reader.timestamp_at(tp, plan.first, low))? else {
        return Ok(plan.first);
    };
    let back = chrono::Duration::from_std(back).unwrap_or(chrono::Duration::MAX);
    let since = at
        .checked_sub_signed(back)
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let found =
        tokio::task::block_in_place(|| reader.offsets_at(&tp.topic, &[tp.partition], since))?;
    Ok(found.first().and_then(|(_, o)| *o).unwrap_or(plan.first))
}

/// The plan of every partition `args` names.
async fn plans(
    cfg: &Config,
    args: &ReplayArgs,
    source: &AuditTable,
    into: Option<&AuditTable>,
    reader: &read::Reader,
) -> Result<Vec<PartitionPlan>, ProcessorError> {
    let topic = &args.topic;
    let continuing = match into {
        Some(t) => {
            StateStore::new(t.object_store(), t.uri(), &cfg.group)
                .groups_of(topic)
                .await?
        }
        None => Vec::new(),
    };
    check_handover(args, &continuing)?;
    let partitions = if args.partition.is_empty() {
        tokio::task::block_in_place(|| reader.partitions(topic))?
    } else {
        args.partition.clone()
    };
    let ranges: BTreeMap<i32, (Option<i64>, Option<i64>)> = match (args.from_time, args.to_time) {
        (Some(from), Some(to)) if args.time == TimeBasis::Kafka => {
            let starts =
                tokio::task::block_in_place(|| reader.offsets_at(topic, &partitions, from))?;
            let ends = tokio::task::block_in_place(|| reader.offsets_at(topic, &partitions, to))?;
            let ends: BTreeMap<i32, Option<i64>> = ends.into_iter().collect();
            starts
                .into_iter()
                .filter_map(|(p, s)| {
                    // No record at or after the window's start: nothing to replay, but a
                    // hand-over still needs the partition's point (its position then).
                    let s = s.or(args.continue_as.as_ref().map(|_| i64::MAX))?;
                    let e = ends.get(&p).copied().flatten().map(|e| e - 1);
                    Some((p, (Some(s), e)))
                })
                .collect()
        }
        (Some(from), Some(to)) => table::offsets_by_event_time(source.delta(), topic, from, to)
            .await?
            .into_iter()
            .filter(|(p, _, _)| partitions.contains(p))
            .map(|(p, lo, hi)| (p, (Some(lo), Some(hi))))
            .collect(),
        _ => partitions
            .iter()
            .map(|p| (*p, (args.from_offset, args.to_offset)))
            .collect(),
    };
    let by_kafka_time = args.from_time.is_some() && args.time == TimeBasis::Kafka;
    let mut plans = Vec::new();
    for (partition, (mut from, to)) in ranges {
        let tp = TopicPartition::new(topic, partition);
        let (low, high) = tokio::task::block_in_place(|| reader.watermarks(topic, partition))?;
        let position = source.txn_version(&offset_app_id(&cfg.group, &tp)).await?;
        // The table read offsets the topic does not have: another topic of this name.
        if let Some(p) = position.filter(|p| *p >= high) {
            let end = tokio::task::block_in_place(|| reader.end_offset(&tp, low, high))?;
            if p >= end {
                return Err(ProcessorError::TopicReset {
                    tp,
                    position: p + 1,
                    got: end,
                });
            }
        }
        if by_kafka_time {
            from = plan::window_start(from, low);
        }
        // Offsets past a live group's position in the `--into` table are that group's.
        let held = match into {
            Some(t) => continued_to(t, &continuing, &tp).await?,
            None => None,
        };
        let position = position.map(|p| held.map_or(p, |h| p.min(h)));
        let bounds = Bounds { low, position };
        let handover = args.continue_as.is_some() && held.is_none();
        let plan = match plan_partition(&tp, from, to, bounds, args.context, args.allow_partial)? {
            Some(mut p) => {
                p.handover = handover;
                let by_time = context_by_time(reader, &p, low, args.context_time).await?;
                p.read_from = p.read_from.min(by_time.max(low));
                Some(p)
            }
            // A partition with nothing in the range is still handed over, at the range's end:
            // the group would otherwise write it from its first offset.
            None if handover => position
                .map(|p| to.map_or(p, |t| t.min(p)))
                .filter(|e| *e >= 0)
                .map(|e| PartitionPlan::at(&tp, e)),
            None => None,
        };
        if let Some(p) = plan {
            if handover && let Some(t) = into {
                refuse_rows_after(t, &p).await?;
            }
            plans.push(p);
        }
    }
    Ok(plans)
}

/// A hand-over needs one group to continue the `--into` table, from a point every partition
/// has: not another group than one already continuing it, nor an `event_time` window (it does
/// not say where a partition without rows in it ends).
fn check_handover(args: &ReplayArgs, continuing: &[String]) -> Result<(), ProcessorError> {
    let Some(group) = &args.continue_as else {
        return Ok(());
    };
    if let Some(other) = continuing.iter().find(|g| *g != group) {
        return Err(ProcessorError::Config {
            reason: format!(
                "group {other} continues {}; handing it over to {group} as well would leave partitions to two groups",
                args.into.as_deref().unwrap_or_default()
            ),
        });
    }
    if args.from_time.is_some() && args.time == TimeBasis::Event {
        return Err(ProcessorError::Config {
            reason: "--continue-as takes offsets or a Kafka-time window: an event_time window does not say where a partition without rows in it ends".into(),
        });
    }
    Ok(())
}

/// The lowest position of the groups `continuing` in the `--into` table `into` for `tp`
/// (`None`: no group continues it there).
async fn continued_to(
    into: &AuditTable,
    continuing: &[String],
    tp: &TopicPartition,
) -> Result<Option<i64>, ProcessorError> {
    let mut lowest: Option<i64> = None;
    for group in continuing {
        if let Some(v) = into.txn_version(&offset_app_id(group, tp)).await? {
            lowest = Some(lowest.map_or(v, |l| l.min(v)));
        }
    }
    Ok(lowest)
}

/// A hand-over at `plan`'s end needs the `--into` table to hold no row of the partition after
/// it: the group continuing there would write those records again.
async fn refuse_rows_after(into: &AuditTable, plan: &PartitionPlan) -> Result<(), ProcessorError> {
    match table::last_offset(into.delta(), &plan.tp).await? {
        Some(o) if o > plan.last => Err(ProcessorError::Config {
            reason: format!(
                "{}: table {} holds rows up to offset {o}, after the range's end {}; a group continuing from there would write them again (hand over at the table's end, or into a new table)",
                plan.tp,
                into.uri(),
                plan.last
            ),
        }),
        _ => Ok(()),
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.diff;
        writeln!(
            f,
            "replay of {} into {}{}",
            self.table,
            self.target,
            if self.dry_run {
                " (dry run: nothing written)"
            } else {
                ""
            }
        )?;
        for p in &self.plans {
            if p.is_empty() {
                writeln!(
                    f,
                    "  {} nothing in the range, handed over after offset {}",
                    p.tp, p.last
                )?;
                continue;
            }
            write!(
                f,
                "  {} offsets {}..={} (read from {})",
                p.tp, p.first, p.last, p.read_from
            )?;
            if let Some((a, b)) = p.unreadable {
                write!(f, ", {a}..={b} no longer in Kafka: rows kept")?;
            }
            if p.handover {
                write!(f, ", handed over at its end")?;
            }
            writeln!(f)?;
        }
        if self.plans.is_empty() {
            writeln!(
                f,
                "  nothing to replay (no offsets of the table in the range)"
            )?;
        }
        writeln!(
            f,
            "  records {} (read {}), rows {} -> {}: unchanged {}, shipped again {}, dead letters {} ({} sent)",
            self.records,
            self.messages_read,
            d.rows_before,
            d.rows_after,
            d.unchanged,
            self.reshipped,
            self.dead_letters,
            self.dead_letters_sent
        )?;
        for (what, map) in [
            ("removed", &d.removed),
            ("added", &d.added),
            ("changed", &d.changed),
        ] {
            for (k, n) in map {
                writeln!(f, "  {what:<8} {n:>8}  {k}")?;
            }
        }
        for c in &d.sample {
            writeln!(
                f,
                "  e.g. {} @{}: {} -> {} ({})",
                c.event_id,
                c.offset,
                c.before,
                c.after,
                c.columns.join(", ")
            )?;
        }
        match self.version {
            Some(v) => writeln!(f, "  committed version {v}")?,
            None if !self.dry_run => writeln!(f, "  nothing changes: nothing written")?,
            None => {}
        }
        Ok(())
    }
}
