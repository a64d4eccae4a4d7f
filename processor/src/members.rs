//! Which processor instances are alive and which partitions each holds, as each writes it
//! beside a table: `_pgtrail/members/<group>/<writer>.json`, rewritten every [`BEAT`] while
//! the instance's poll loop runs. The lag monitor reads them to tell a *stalled* partition (a
//! live instance holds it, the table does not move) from a *stopped* one (no live instance
//! holds it), from the lake alone, whatever the broker's group coordinator reports.
//!
//! Owns [`MemberRecord`] (versioned, tagged by `format`), [`Beacon`] (an instance's writer for
//! one table) and [`live_partitions`]. Invariants: a record is one whole object (a put); it is
//! written only from the poll loop's tick, so a hung loop stops refreshing it; a record older
//! than [`LIVE_FOR`] is dead. Must not: fail the processor (a failed write is retried at the
//! next beat) or decide anything about positions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deltalake::ObjectStore;
use deltalake::Path;
use deltalake::logstore::object_store::ObjectStoreExt as _;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::topic_partition::TopicPartition;

/// How often an instance rewrites its record.
pub const BEAT: Duration = Duration::from_secs(10);

/// A record older than this is of an instance no longer alive (three beats missed).
pub const LIVE_FOR: Duration = Duration::from_secs(30);

/// Records unchanged for this long are deleted by the next instance starting (instances that
/// were killed leave theirs).
const SWEEP_AGE: Duration = Duration::from_secs(24 * 3600);

/// One instance's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum MemberRecord {
    /// Version 1.
    V1 {
        /// The instance (host and process id).
        writer: String,
        /// When written.
        at: DateTime<Utc>,
        /// When the instance opened the table (a partition held by an instance younger than
        /// the monitor's window is starting up, not stalled).
        since: DateTime<Utc>,
        /// The partitions of the table's topic it holds.
        partitions: Vec<TopicPartition>,
    },
}

fn dir(group: &str) -> Path {
    Path::from_iter(["_pgtrail", "members", group])
}

/// An instance's record writer for one table.
pub struct Beacon {
    store: Arc<dyn ObjectStore>,
    path: Path,
    writer: String,
    since: DateTime<Utc>,
    last: Option<Instant>,
    inflight: Option<JoinHandle<()>>,
}

impl Beacon {
    /// The beacon of `writer` in `group` for the table whose root is `store`; deletes records
    /// of instances gone for a day (best effort, in the background).
    pub fn new(store: Arc<dyn ObjectStore>, group: &str, writer: &str, rt: &Handle) -> Beacon {
        let name: String = writer
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let sweep = store.clone();
        let group_dir = dir(group);
        rt.spawn(async move {
            let old: Vec<deltalake::ObjectMeta> = sweep
                .list(Some(&group_dir))
                .try_collect()
                .await
                .unwrap_or_default();
            let cutoff = Utc::now() - SWEEP_AGE;
            for m in old.into_iter().filter(|m| m.last_modified < cutoff) {
                let _ = sweep.delete(&m.location).await;
            }
        });
        Beacon {
            store,
            path: dir(group).join(format!("{name}.json")),
            writer: writer.to_owned(),
            since: Utc::now(),
            last: None,
            inflight: None,
        }
    }

    /// Writes the record in the background when a beat is due and the previous write is done.
    pub fn beat(&mut self, rt: &Handle, partitions: Vec<TopicPartition>) {
        if self.last.is_some_and(|l| l.elapsed() < BEAT)
            || self.inflight.as_ref().is_some_and(|h| !h.is_finished())
        {
            return;
        }
        self.last = Some(Instant::now());
        let record = MemberRecord::V1 {
            writer: self.writer.clone(),
            at: Utc::now(),
            since: self.since,
            partitions,
        };
        let Ok(bytes) = serde_json::to_vec(&record) else {
            return;
        };
        let (store, path) = (self.store.clone(), self.path.clone());
        self.inflight = Some(rt.spawn(async move {
            if let Err(e) = store.put(&path, bytes.into()).await {
                tracing::debug!(error = %e, "Member record not written; next beat retries.");
            }
        }));
    }

    /// Deletes the record (a graceful stop) after the write in flight, if any, waiting up
    /// to 2 s in all.
    pub fn leave(self, rt: &Handle) {
        let (store, path, inflight) = (self.store, self.path, self.inflight);
        let _ = rt.block_on(tokio::time::timeout(Duration::from_secs(2), async move {
            if let Some(h) = inflight {
                let _ = h.await;
            }
            let _ = store.delete(&path).await;
        }));
    }
}

/// The partitions held by instances of `group` alive at `now`, from the records beside the
/// table whose root is `store`, each with the time its holder opened the table.
pub async fn live_partitions(
    store: &Arc<dyn ObjectStore>,
    group: &str,
    now: DateTime<Utc>,
) -> Result<BTreeMap<TopicPartition, DateTime<Utc>>, String> {
    let metas: Vec<deltalake::ObjectMeta> = store
        .list(Some(&dir(group)))
        .try_collect()
        .await
        .map_err(|e| format!("list members: {e}"))?;
    let mut held = BTreeMap::new();
    for m in metas {
        let Ok(got) = store.get(&m.location).await else {
            continue;
        };
        let Ok(bytes) = got.bytes().await else {
            continue;
        };
        match serde_json::from_slice::<MemberRecord>(&bytes) {
            Ok(MemberRecord::V1 {
                at,
                since,
                partitions,
                ..
            }) => {
                if now - at < chrono::Duration::from_std(LIVE_FOR).unwrap_or_default() {
                    for tp in partitions {
                        let e = held.entry(tp).or_insert(since);
                        *e = (*e).min(since);
                    }
                }
            }
            Err(_) => continue,
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn live_records_name_their_partitions_and_stale_ones_none() {
        let store: Arc<dyn ObjectStore> =
            Arc::new(deltalake::logstore::object_store::memory::InMemory::new());
        let rt = Handle::current();
        let mut beacon = Beacon::new(store.clone(), "g", "db-1:42", &rt);
        let tp = TopicPartition::new("pgaudit.raw.primary", 2);
        beacon.beat(&rt, vec![tp.clone()]);
        if let Some(h) = beacon.inflight.take() {
            h.await.unwrap();
        }
        let held = live_partitions(&store, "g", Utc::now()).await.unwrap();
        assert_eq!(held.keys().cloned().collect::<Vec<_>>(), vec![tp]);
        assert!(held.values().all(|since| *since <= Utc::now()));
        let later = Utc::now() + chrono::Duration::seconds(31);
        assert!(
            live_partitions(&store, "g", later)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            live_partitions(&store, "other", Utc::now())
                .await
                .unwrap()
                .is_empty()
        );
        tokio::task::spawn_blocking(move || beacon.leave(&rt))
            .await
            .unwrap();
        assert!(
            live_partitions(&store, "g", Utc::now())
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_record_layout_is_tagged() {
        let r = MemberRecord::V1 {
            writer: "db-1:42".into(),
            at: DateTime::from_timestamp(1_764_650_000, 0).unwrap(),
            since: DateTime::from_timestamp(1_764_649_000, 0).unwrap(),
            partitions: vec![TopicPartition::new("t", 0)],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"format":"v1","writer":"db-1:42","at":"2025-12-02T04:33:20Z","since":"2025-12-02T04:16:40Z","partitions":[{"topic":"t","partition":0}]}"#
        );
    }
}
