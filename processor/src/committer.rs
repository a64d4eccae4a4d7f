//! One server's table as one consumer group writes it: where each partition resumes, and
//! commits that land exactly once.
//!
//! Owns [`Committer`]. A partition's entry in the table is its [`Token`]: the `txn` version
//! (last Kafka offset written) and the id of its state object (`state.rs`), which every commit
//! of the partition changes. A commit:
//! 1. writes the state object of its partitions under a fresh id;
//! 2. re-reads the table and compares each partition's token with the one this instance last
//!    read or wrote: a partition whose token shows this very commit means an earlier attempt
//!    landed (its outcome was unknown: an error after the log entry was written, a lost
//!    reply); any other difference means another instance committed it since, and the
//!    partition is *fenced*: nothing of it is written and the caller re-reads it;
//! 3. uploads the Parquet files of the partitions left, and writes the log entry with their
//!    files and both `txn`s per partition as the version after the snapshot checked in 2 (one
//!    attempt: Delta's put-if-absent makes check and write atomic);
//! 4. on any retryable failure goes back to 2 (so an outcome-unknown commit is resolved by
//!    reading the table, never by writing again), with backoff, until it lands;
//! 5. after landing: table maintenance (Delta checkpoint, log cleanup) and deletion of the
//!    state objects no partition names any more, both best effort, never part of the outcome.
//!
//! Invariants: a partition is written only while the table holds the token this instance
//! last read or wrote for it; a commit's attempts carry the same state id; nothing here
//! decides Kafka positions. Must not: talk to Kafka.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::Action;
use serde_json::json;
use tracing::{info, warn};

use crate::delta::AuditTable;
use crate::error::{ErrorClass, ProcessorError};
use crate::failpoint::Failpoints;
use crate::job::{CommitFacts, JobTally, PartitionFacts, job_facts};
use crate::partition::PartitionCheckpoint;
use crate::state::{StateStore, StoredState, new_state_id, offset_app_id, state_app_id};
use crate::telemetry::Metrics;
use crate::topic_partition::TopicPartition;
#[cfg(test)]
use retry::CONFLICT_DELAY_MAX;
use retry::retry_delay;

/// Commits searched for a checkpoint of a table written before state objects existed.
const LEGACY_HISTORY: usize = 2000;

/// A state object older than this is written again before a commit attempt, so the sweep of
/// another instance never finds an object a commit is about to name.
const REWRITE_AGE: Duration = Duration::from_secs(3600);

/// What the table holds for a partition of this group (`None`: never written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Token {
    /// The `txn` version: the last Kafka offset whose record is fully handled.
    pub version: Option<i64>,
    /// The id of the partition's state object.
    pub state: Option<i64>,
}

/// Where a partition resumes.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// The partition's token now.
    pub token: Token,
    /// The checkpoint committed with it (`None`: never written, or written by a processor
    /// whose checkpoint is no longer in the table's history).
    pub checkpoint: Option<PartitionCheckpoint>,
}

/// One partition's part of a commit.
#[derive(Debug)]
pub struct PartitionCommit {
    /// The partition.
    pub tp: TopicPartition,
    /// Its checkpoint (the `version` becomes its `txn` version).
    pub checkpoint: PartitionCheckpoint,
    /// The token this instance last read or wrote for it.
    pub expected: Token,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
    /// Its counts since its previous commit (job facts).
    pub tally: JobTally,
}

impl PartitionCommit {
    /// Rows in the commit.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// What a commit did.
#[derive(Debug, Default)]
pub struct Landed {
    /// The Delta version it landed as (`None` when nothing was written, or when an earlier
    /// attempt was found to have landed).
    pub version: Option<u64>,
    /// The partitions written: their new token and rows.
    pub committed: Vec<(TopicPartition, Token, usize)>,
    /// Partitions another instance committed since this one last read or wrote them: nothing
    /// of them was written; their state must be read again.
    pub fenced: Vec<TopicPartition>,
}

/// What one attempt found.
enum Attempt {
    /// Landed as this version (`None`: an earlier attempt had landed).
    Landed(Option<u64>),
    /// Every partition was fenced.
    Nothing,
}

/// A table written by one consumer group.
pub struct Committer {
    table: AuditTable,
    group: String,
    /// This instance (host and process id), recorded in its state objects.
    writer: String,
    states: StateStore,
    failpoints: Arc<Failpoints>,
    /// Whether old unnamed state objects were swept since this committer was opened.
    swept: bool,
    /// Write partitions of a topic another group wrote into this table (`allow_new_group`).
    allow_new_group: bool,
    /// The commit under way: when it started and its attempt (job facts).
    job: (chrono::DateTime<Utc>, u32),
}

impl Committer {
    /// Opens (or creates) the table at `uri` for `group`.
    pub async fn open(
        uri: &str,
        group: &str,
        checkpoint_interval: u64,
        failpoints: Arc<Failpoints>,
    ) -> Result<Committer, ProcessorError> {
        Self::open_with(
            uri,
            HashMap::new(),
            group,
            checkpoint_interval,
            failpoints,
            false,
        )
        .await
    }

    /// [`Committer::open`] with the table's storage `options` (`lake.rs`); `allow_new_group`:
    /// write partitions of a topic that another consumer group wrote into this table.
    pub async fn open_with(
        uri: &str,
        options: HashMap<String, String>,
        group: &str,
        checkpoint_interval: u64,
        failpoints: Arc<Failpoints>,
        allow_new_group: bool,
    ) -> Result<Committer, ProcessorError> {
        let table = AuditTable::open_or_create_with(uri, options, checkpoint_interval).await?;
        let states = StateStore::new(table.object_store(), uri, group);
        Ok(Committer {
            table,
            group: group.to_owned(),
            writer: crate::job::writer_id(),
            states,
            failpoints,
            swept: false,
            allow_new_group,
            job: (Utc::now(), 0),
        })
    }

    /// The table URI.
    pub fn uri(&self) -> &str {
        self.table.uri()
    }

    /// The table's object store, rooted at the table.
    pub fn object_store(&self) -> Arc<dyn deltalake::ObjectStore> {
        self.table.object_store()
    }

    /// This instance (host and process id).
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// `tp`'s token in the table as last read.
    async fn token(&self, tp: &TopicPartition) -> Result<Token, ProcessorError> {
        Ok(Token {
            version: self
                .table
                .txn_version(&offset_app_id(&self.group, tp))
                .await?,
            state: self
                .table
                .txn_version(&state_app_id(&self.group, tp))
                .await?,
        })
    }

    /// Where `tp` resumes: its token and the checkpoint committed with it, read from the
    /// table as it is now.
    pub async fn resume(&mut self, tp: &TopicPartition) -> Result<Resume, ProcessorError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.table.refresh().await?;
            let token = self.token(tp).await?;
            let Some(version) = token.version else {
                self.check_no_other_group(tp).await?;
                return Ok(Resume::default());
            };
            let Some(id) = token.state else {
                let checkpoint = self.legacy_checkpoint(tp, version).await?;
                return Ok(Resume { token, checkpoint });
            };
            self.failpoints.hit("resume.read_state").await?;
            let Some(state) = self.states.read(id).await? else {
                // Superseded and deleted since the table was read: read the table again.
                if attempt < 3 {
                    continue;
                }
                return Err(self.state_err(format!(
                    "{tp}: state object {id:016x} named by the table is missing (restore \
                     _pgtrail/ beside _delta_log/ from where the table came from)"
                )));
            };
            let checkpoint = state.partition(tp).cloned().ok_or_else(|| {
                self.state_err(format!(
                    "{tp}: state object {id:016x} has no checkpoint of it"
                ))
            })?;
            if checkpoint.version != version {
                return Err(self.state_err(format!(
                    "{tp}: state object {id:016x} is of version {}, the table's is {version}",
                    checkpoint.version
                )));
            }
            return Ok(Resume {
                token,
                checkpoint: Some(checkpoint),
            });
        }
    }

    /// A partition this group never wrote: refuses when another group wrote its topic into
    /// this table (this group would start from the topic's beginning and write every row
    /// again), unless `allow_new_group`.
    async fn check_no_other_group(&self, tp: &TopicPartition) -> Result<(), ProcessorError> {
        if self.allow_new_group || self.table.version().is_none_or(|v| v == 0) {
            return Ok(());
        }
        let mut others = self.states.other_groups_of(&tp.topic).await?;
        // A replay of this group's own table names itself `replay:<group>`; a table the group
        // never wrote (an `--into` table) is another group's.
        let own_replay = format!("replay:{}", self.group);
        let wrote_here = !self.states.list().await?.is_empty();
        // Tables written before state objects: the commit info names group and topic.
        for (_, meta) in self.table.recent_metadata(LEGACY_HISTORY).await? {
            let group = meta
                .get("group")
                .and_then(|g| g.as_str())
                .unwrap_or_default();
            let has_topic = meta
                .get("partitions")
                .and_then(|p| p.as_array())
                .is_some_and(|ps| {
                    ps.iter()
                        .any(|p| p.get("topic").and_then(|t| t.as_str()) == Some(&*tp.topic))
                });
            let ours = group == self.group || (wrote_here && group == own_replay);
            if has_topic && !ours && !others.iter().any(|o| o == group) {
                others.push(group.to_owned());
            }
        }
        if others.is_empty() {
            return Ok(());
        }
        Err(ProcessorError::Config {
            reason: format!(
                "table {} holds rows of {} written by consumer group {}; group {} would write them again. Process it with that group, into another table (table_suffix, [tables]), or set allow_new_group = true",
                self.uri(),
                tp.topic,
                others.join(", "),
                self.group
            ),
        })
    }

    fn state_err(&self, reason: String) -> ProcessorError {
        ProcessorError::State {
            table: self.uri().to_owned(),
            reason,
        }
    }

    /// The checkpoint of version `version` of `tp` committed by processors older than state
    /// objects (in the commit info), if still in the table's recent history.
    async fn legacy_checkpoint(
        &self,
        tp: &TopicPartition,
        version: i64,
    ) -> Result<Option<PartitionCheckpoint>, ProcessorError> {
        for (_, meta) in self.table.recent_metadata(LEGACY_HISTORY).await? {
            if meta.get("group").and_then(|g| g.as_str()) != Some(self.group.as_str()) {
                continue;
            }
            let parts = meta.get("partitions").and_then(|p| p.as_array());
            for p in parts.into_iter().flatten() {
                if let Ok(cp) = serde_json::from_value::<PartitionCheckpoint>(p.clone())
                    && cp.tp == *tp
                    && cp.version == version
                {
                    return Ok(Some(cp));
                }
            }
        }
        warn!(
            topic = &*tp.topic,
            partition = tp.partition,
            version,
            "No checkpoint of this version in the table's history: resuming without dedup memory."
        );
        Ok(None)
    }

    /// Commits `parts` as one Delta version (see the module documentation): returns once it
    /// landed, or with a fatal error. Partitions found fenced are left out.
    pub async fn commit(
        &mut self,
        mut parts: Vec<PartitionCommit>,
        metrics: &Metrics,
    ) -> Result<Landed, ProcessorError> {
        let started = Instant::now();
        let label = Metrics::table(self.uri());
        let id = new_state_id();
        let superseded: BTreeSet<i64> = parts.iter().filter_map(|p| p.expected.state).collect();
        let state = StoredState::new(
            &self.group,
            &self.writer,
            parts.iter().map(|p| p.checkpoint.clone()).collect(),
        );
        let mut written: Option<Instant> = None;
        let mut uploaded: Option<(Vec<TopicPartition>, Vec<Action>)> = None;
        let mut fenced = Vec::new();
        let started_at = Utc::now();
        let mut attempt = 0u32;
        let outcome = loop {
            attempt += 1;
            self.job = (started_at, attempt);
            let step = self
                .attempt(
                    id,
                    &state,
                    &mut written,
                    &mut parts,
                    &mut uploaded,
                    &mut fenced,
                )
                .await;
            match step {
                Ok(a) => break a,
                Err(e) if e.class() == ErrorClass::Retryable => {
                    let counter = if e.is_conflict() {
                        &metrics.commit_conflicts
                    } else {
                        &metrics.commit_store_errors
                    };
                    counter.get_or_create(&label).inc();
                    let backoff = retry_delay(attempt, e.is_conflict());
                    warn!(
                        table = self.uri(),
                        attempt,
                        retry_in_ms = backoff.as_millis() as u64,
                        error = %e,
                        "Commit attempt failed; checking the table and trying again."
                    );
                    tokio::time::sleep(backoff).await;
                }
                Err(e) => return Err(e),
            }
        };
        let version = match outcome {
            Attempt::Nothing => {
                metrics.partitions_fenced.inc_by(fenced.len() as u64);
                return Ok(Landed {
                    version: None,
                    committed: Vec::new(),
                    fenced,
                });
            }
            Attempt::Landed(version) => version,
        };
        let token = |p: &PartitionCommit| Token {
            version: Some(p.checkpoint.version),
            state: Some(id),
        };
        let committed: Vec<(TopicPartition, Token, usize)> = parts
            .iter()
            .map(|p| (p.tp.clone(), token(p), p.rows()))
            .collect();
        let rows: usize = committed.iter().map(|c| c.2).sum();
        metrics.commits.get_or_create(&label).inc();
        metrics
            .rows_written
            .get_or_create(&label)
            .inc_by(rows as u64);
        metrics.partitions_fenced.inc_by(fenced.len() as u64);
        if let Some(at) = parts.iter().filter_map(|p| p.checkpoint.heartbeat).max() {
            metrics
                .heartbeat_timestamp_seconds
                .get_or_create(&label)
                .set(at as f64 / 1e6);
        }
        if let Some(v) = version {
            metrics
                .delta_version
                .get_or_create(&label)
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
        metrics
            .commit_duration_seconds
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        let offsets: Vec<String> = parts
            .iter()
            .map(|p| format!("{}:{}", p.tp.partition, p.checkpoint.version))
            .collect();
        let (ms, offsets) = (started.elapsed().as_millis() as u64, offsets.join(","));
        match version {
            Some(version) => info!(
                table = self.uri(),
                version,
                rows,
                duration_ms = ms,
                offsets,
                "Committed Delta version."
            ),
            None => info!(
                table = self.uri(),
                rows,
                duration_ms = ms,
                offsets,
                "Committed Delta version (an earlier attempt had landed)."
            ),
        }
        self.after_landing(version, superseded, metrics).await;
        Ok(Landed {
            version,
            committed,
            fenced,
        })
    }

    /// One attempt: steps 1 to 3 of the module documentation.
    async fn attempt(
        &mut self,
        id: i64,
        state: &StoredState,
        written: &mut Option<Instant>,
        parts: &mut Vec<PartitionCommit>,
        uploaded: &mut Option<(Vec<TopicPartition>, Vec<Action>)>,
        fenced: &mut Vec<TopicPartition>,
    ) -> Result<Attempt, ProcessorError> {
        if written.is_none_or(|at| at.elapsed() >= REWRITE_AGE) {
            self.failpoints.hit("commit.state_write").await?;
            self.states.write(id, state).await?;
            *written = Some(Instant::now());
        }
        self.table.refresh().await?;
        let mut landed_before = false;
        let mut kept = Vec::with_capacity(parts.len());
        for p in parts.drain(..) {
            let now = self.token(&p.tp).await?;
            let mine = Token {
                version: Some(p.checkpoint.version),
                state: Some(id),
            };
            if now == mine {
                landed_before = true;
                kept.push(p);
            } else if now == p.expected {
                kept.push(p);
            } else {
                warn!(
                    topic = &*p.tp.topic,
                    partition = p.tp.partition,
                    expected = ?p.expected,
                    found = ?now,
                    "Another instance committed this partition: leaving it out, to be read again."
                );
                fenced.push(p.tp);
            }
        }
        *parts = kept;
        if landed_before {
            info!(table = self.uri(), state = %format!("{id:016x}"), "An earlier attempt of this commit had landed.");
            return Ok(Attempt::Landed(None));
        }
        if parts.is_empty() {
            return Ok(Attempt::Nothing);
        }
        let tps: Vec<TopicPartition> = parts.iter().map(|p| p.tp.clone()).collect();
        if uploaded.as_ref().is_none_or(|(u, _)| *u != tps) {
            self.failpoints.hit("commit.upload").await?;
            let batches: Vec<RecordBatch> = parts
                .iter()
                .flat_map(|p| p.batches.iter().cloned())
                .collect();
            *uploaded = Some((tps, self.table.upload(&batches).await?));
        }
        let adds = uploaded.as_ref().map(|u| u.1.clone()).unwrap_or_default();
        let mut txns = BTreeMap::new();
        let mut summary = Vec::new();
        for p in parts.iter() {
            txns.insert(offset_app_id(&self.group, &p.tp), p.checkpoint.version);
            txns.insert(state_app_id(&self.group, &p.tp), id);
            summary.push(json!({
                "topic": &*p.tp.topic,
                "partition": p.tp.partition,
                "version": p.checkpoint.version,
            }));
        }
        // For people reading the history, and the lag monitor (`heartbeat_at`: the newest
        // shipper heartbeat this commit makes durable, µs); resuming reads the `txn`s and the
        // state object.
        let mut metadata = json!({
            "group": self.group,
            "state": format!("{id:016x}"),
            "writer": self.writer,
            "partitions": summary,
        });
        if let Some(at) = parts.iter().filter_map(|p| p.checkpoint.heartbeat).max() {
            metadata["heartbeat_at"] = json!(at);
        }
        metadata["job"] = self.job_facts(parts);
        self.failpoints.hit("commit.before_log").await?;
        let version = self.table.commit_log(adds, &txns, metadata).await?;
        self.failpoints.hit("commit.after_log").await?;
        Ok(Attempt::Landed(Some(version)))
    }

    /// The `job` facts of the attempt writing `parts` (`job.rs`).
    fn job_facts(&self, parts: &[PartitionCommit]) -> serde_json::Value {
        let facts: Vec<PartitionFacts> = parts
            .iter()
            .map(|p| PartitionFacts {
                topic: p.tp.topic.to_string(),
                partition: p.tp.partition,
                first_offset: p.expected.version.map_or(0, |v| v + 1),
                last_offset: p.checkpoint.version,
                rows: p.rows() as u64,
                tally: p.tally,
            })
            .collect();
        let commit = CommitFacts {
            mode: crate::job::JobMode::Incremental,
            group: &self.group,
            writer: &self.writer,
            table: self.table.uri(),
            version: self.table.version().map_or(0, |v| v + 1),
            rows_before: self.table.row_count().unwrap_or(0),
            started: self.job.0,
            attempt: self.job.1,
        };
        job_facts(&commit, &facts, Utc::now())
    }
}

mod garbage;
mod retry;
#[cfg(test)]
mod tests;
