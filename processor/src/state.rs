//! The exactly-once state of partitions as stored beside their table: where each partition
//! resumes, found in bounded time whatever else happened to the table.
//!
//! Owns [`StoredState`] (the versioned document), [`StateStore`] (its objects under the
//! table's root) and the two `txn` application ids of a partition ([`offset_app_id`],
//! [`state_app_id`]). A commit writes one state object holding the checkpoint of every
//! partition in it, at `_pgtrail/state/<group>/<id>.json` (`id`: 16 hex digits of a random
//! 63-bit number), *before* the Delta commit; the commit carries, per partition, a `txn` whose
//! version is the last Kafka offset covered and a second `txn` whose version is the state
//! object's id. `txn` actions are part of the table's snapshot: they survive Delta checkpoints,
//! log cleanup and any number of other commits, so resuming reads two `txn`s and one object.
//! Invariants:
//! - a state object is written once under a fresh id and never changed (a reader never sees
//!   a partial one: object stores put whole objects);
//! - an object is deleted only when no partition's state `txn` names it any more;
//! - the state id also fences: every commit of a partition changes it, so an instance that
//!   finds another id than the one it last read or wrote knows another instance committed.
//!
//! Must not: decide anything about Kafka offsets or rows (the committer and the partition do).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::ObjectStore;
use deltalake::Path;
use deltalake::logstore::object_store::ObjectStoreExt as _;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::error::ProcessorError;
use crate::partition::PartitionCheckpoint;
use crate::topic_partition::TopicPartition;

/// The `txn` application id whose version is `tp`'s last Kafka offset written (the truth of
/// where it resumes, and what lag tools read).
pub fn offset_app_id(group: &str, tp: &TopicPartition) -> String {
    format!("pgtrail-{group}-{}-{}", tp.topic, tp.partition)
}

/// The `txn` application id whose version is the id of `tp`'s state object.
pub fn state_app_id(group: &str, tp: &TopicPartition) -> String {
    format!("{}.state", offset_app_id(group, tp))
}

/// A state object: the checkpoints of the partitions one commit covered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum StoredState {
    /// The first layout.
    V1(StateV1),
}

/// Layout 1 of a state object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateV1 {
    /// Consumer group.
    pub group: String,
    /// The instance that wrote it (host and process id, for people).
    pub writer: String,
    /// When it was written.
    pub written_at: DateTime<Utc>,
    /// One checkpoint per partition of the commit.
    pub partitions: Vec<PartitionCheckpoint>,
}

impl StoredState {
    /// A state of the current layout.
    pub fn new(group: &str, writer: &str, partitions: Vec<PartitionCheckpoint>) -> StoredState {
        StoredState::V1(StateV1 {
            group: group.to_owned(),
            writer: writer.to_owned(),
            written_at: Utc::now(),
            partitions,
        })
    }

    /// The checkpoints it holds.
    pub fn partitions(&self) -> &[PartitionCheckpoint] {
        match self {
            StoredState::V1(s) => &s.partitions,
        }
    }

    /// `tp`'s checkpoint.
    pub fn partition(&self, tp: &TopicPartition) -> Option<&PartitionCheckpoint> {
        self.partitions().iter().find(|c| c.tp == *tp)
    }
}

/// A fresh state id: 63 random bits (never 0, never negative: `txn` versions are longs).
pub fn new_state_id() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    ((h.finish() >> 1) as i64).max(1)
}

/// The state objects of one group under a table's root.
#[derive(Clone)]
pub struct StateStore {
    store: Arc<dyn ObjectStore>,
    table: String,
    dir: Path,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("table", &self.table)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn state_err(table: &str, reason: String) -> ProcessorError {
    ProcessorError::State {
        table: table.to_owned(),
        reason,
    }
}

impl StateStore {
    /// The store of `group` in the table at `table` whose root is `store`.
    pub fn new(store: Arc<dyn ObjectStore>, table: &str, group: &str) -> StateStore {
        let dir = Path::from_iter(["_pgtrail", "state", group]);
        StateStore {
            store,
            table: table.to_owned(),
            dir,
        }
    }

    fn path(&self, id: i64) -> Path {
        self.dir.clone().join(format!("{id:016x}.json"))
    }

    /// Writes `state` as object `id`.
    pub async fn write(&self, id: i64, state: &StoredState) -> Result<(), ProcessorError> {
        let bytes = serde_json::to_vec(state)
            .map_err(|e| state_err(&self.table, format!("encode state {id:016x}: {e}")))?;
        self.store
            .put(&self.path(id), bytes.into())
            .await
            .map(drop)
            .map_err(|e| self.io("write", id, e))
    }

    /// Object `id`; `None` when there is none.
    pub async fn read(&self, id: i64) -> Result<Option<StoredState>, ProcessorError> {
        let got = match self.store.get(&self.path(id)).await {
            Ok(got) => got,
            Err(deltalake::ObjectStoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.io("read", id, e)),
        };
        let bytes = got.bytes().await.map_err(|e| self.io("read", id, e))?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| state_err(&self.table, format!("state {id:016x} is not readable: {e}")))
    }

    /// Deletes object `id` (gone already is fine).
    pub async fn delete(&self, id: i64) -> Result<(), ProcessorError> {
        match self.store.delete(&self.path(id)).await {
            Ok(()) | Err(deltalake::ObjectStoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.io("delete", id, e)),
        }
    }

    /// Every object's id and when it was written.
    pub async fn list(&self) -> Result<Vec<(i64, DateTime<Utc>)>, ProcessorError> {
        let metas: Vec<deltalake::ObjectMeta> = self
            .store
            .list(Some(&self.dir))
            .try_collect()
            .await
            .map_err(|e| self.io("list", 0, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?;
                let id = i64::from_str_radix(name.strip_suffix(".json")?, 16).ok()?;
                Some((id, m.last_modified))
            })
            .collect())
    }

    /// The other consumer groups with state objects beside this table whose newest object
    /// holds a partition of `topic` (their partitions of it are theirs).
    pub async fn other_groups_of(&self, topic: &str) -> Result<Vec<String>, ProcessorError> {
        let own = self.dir.filename().unwrap_or_default().to_owned();
        let mut groups = self.groups_of(topic).await?;
        groups.retain(|g| *g != own);
        Ok(groups)
    }

    /// Every consumer group, this one included, with state objects beside this table whose
    /// newest object holds a partition of `topic`.
    pub async fn groups_of(&self, topic: &str) -> Result<Vec<String>, ProcessorError> {
        let root = Path::from_iter(["_pgtrail", "state"]);
        let listed = self
            .store
            .list_with_delimiter(Some(&root))
            .await
            .map_err(|e| self.io("list groups", 0, e))?;
        let mut out = Vec::new();
        for prefix in listed.common_prefixes {
            let Some(group) = prefix.filename().map(str::to_owned) else {
                continue;
            };
            let other = StateStore {
                store: Arc::clone(&self.store),
                table: self.table.clone(),
                dir: prefix,
            };
            let newest = other.list().await?.into_iter().max_by_key(|(_, at)| *at);
            if let Some((id, _)) = newest
                && let Some(state) = other.read(id).await?
                && state.partitions().iter().any(|c| *c.tp.topic == *topic)
            {
                out.push(group);
            }
        }
        Ok(out)
    }

    fn io(&self, what: &str, id: i64, e: deltalake::ObjectStoreError) -> ProcessorError {
        ProcessorError::StateIo {
            table: self.table.clone(),
            what: format!("{what} state {id:016x}"),
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::FileMark;

    fn checkpoint(partition: i32) -> PartitionCheckpoint {
        PartitionCheckpoint {
            tp: TopicPartition::new("pgaudit.raw.primary", partition),
            version: 41,
            last: 44,
            pending: vec![43],
            files: vec![FileMark {
                file: "00ff".into(),
                hwm: 4096,
                seen: 40,
            }],
            anchor: Some(crate::partition::Anchor {
                offset: 41,
                hash: 0x1234_5678_9abc_def0,
            }),
            clock: crate::partition::Clock {
                log_time: chrono::DateTime::from_timestamp(1_764_650_000, 0),
                stderr_time: None,
            },
            released: vec![crate::audit::outcome::ReleasedTx {
                session: "6b04031f.4e20".into(),
                vxid: 0xfeed_beef_dead_0001,
                last_seen: chrono::DateTime::from_timestamp(1_764_649_990, 0),
            }],
            heartbeat: Some(1_764_650_001_000_000),
        }
    }

    #[tokio::test]
    async fn objects_round_trip_and_list() {
        let store: Arc<dyn ObjectStore> =
            Arc::new(deltalake::logstore::object_store::memory::InMemory::new());
        let s = StateStore::new(store, "mem://t", "g");
        let state = StoredState::new("g", "host:1", vec![checkpoint(0), checkpoint(3)]);
        s.write(7, &state).await.unwrap();
        assert_eq!(s.read(7).await.unwrap(), Some(state.clone()));
        assert_eq!(s.read(8).await.unwrap(), None);
        let tp = TopicPartition::new("pgaudit.raw.primary", 3);
        assert_eq!(state.partition(&tp).map(|c| c.last), Some(44));
        assert_eq!(
            s.list()
                .await
                .unwrap()
                .iter()
                .map(|l| l.0)
                .collect::<Vec<_>>(),
            [7]
        );
        s.delete(7).await.unwrap();
        s.delete(7).await.unwrap();
        assert!(s.list().await.unwrap().is_empty());
    }

    #[test]
    fn the_layout_is_tagged_and_stable() {
        let state = StoredState::V1(StateV1 {
            group: "g".into(),
            writer: "host:1".into(),
            written_at: "2026-11-23T10:00:00Z".parse().unwrap(),
            partitions: vec![checkpoint(0)],
        });
        insta::assert_snapshot!(serde_json::to_string_pretty(&state).unwrap());
    }

    #[test]
    fn ids_are_positive_and_differ() {
        let a = new_state_id();
        let b = new_state_id();
        assert!(a > 0 && b > 0);
        assert_ne!(a, b);
    }
}
