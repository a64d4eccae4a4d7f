//! `pgtrail-processor status`: what each audit table holds — Delta version, row count, the
//! Kafka offset recorded per topic-partition, last commit time — and, on request, rows per
//! audit class and result.
//!
//! Owns [`TableStatus`], [`table_status`], [`find_tables`] and [`read_table`] (reads a
//! table's data files, local or in an object store; also used by tests and the quick start
//! summary). Invariant: the
//! offsets shown are the `txn` versions in the table (the source of truth), not Kafka's
//! committed offsets. Must not: write anything.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::Serialize;

use crate::delta::AuditTable;
use crate::error::ProcessorError;
use crate::lake::{Backend, Lake};
use crate::state::offset_app_id;
use crate::topic_partition::TopicPartition;
use deltalake::logstore::object_store::{ObjectStoreExt as _, path::Path as ObjectPath};

/// One table's state.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    /// Table URI.
    pub table: String,
    /// Delta version.
    pub version: Option<u64>,
    /// Rows (from file statistics).
    pub rows: u64,
    /// Last commit time.
    pub last_commit: Option<DateTime<Utc>>,
    /// `group/topic/partition` → last Kafka offset committed with the data.
    pub offsets: BTreeMap<String, i64>,
    /// `audit_class/result` → rows (with `--summary`).
    pub classes: Option<BTreeMap<String, u64>>,
}

impl std::fmt::Display for TableStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "table {}", self.table)?;
        let version = self.version.map_or("-".to_owned(), |v| v.to_string());
        let last = self.last_commit.map_or("-".to_owned(), |t| t.to_rfc3339());
        writeln!(
            f,
            "  version {version}, rows {}, last commit {last}",
            self.rows
        )?;
        for (tp, offset) in &self.offsets {
            writeln!(f, "  offset {tp} = {offset}")?;
        }
        if let Some(classes) = &self.classes {
            let failures: u64 = classes
                .iter()
                .filter(|(c, _)| c.ends_with("/FAILURE"))
                .map(|(_, n)| n)
                .sum();
            writeln!(f, "  rows per audit class/result ({failures} failures):")?;
            for (c, n) in classes {
                writeln!(f, "  {c:<24} {n:>10}")?;
            }
        }
        Ok(())
    }
}

/// Tables under `<lake>/pg_archive_sync/`, local or in an object store.
pub async fn find_tables(lake: &str, storage: &Lake) -> Result<Vec<String>, ProcessorError> {
    let root = format!("{}/pg_archive_sync", lake.trim_end_matches('/'));
    if Backend::of(lake)? == Backend::Local {
        let dir = root.strip_prefix("file://").unwrap_or(&root);
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("_delta_log").is_dir())
            .map(|e| e.path().to_string_lossy().into_owned())
            .collect();
        out.sort();
        return Ok(out);
    }
    let store = storage.store(&root)?;
    let listed = store
        .list_with_delimiter(None)
        .await
        .map_err(|e| ProcessorError::Lake {
            location: root.clone(),
            reason: crate::lake::object_store_reason(&e),
        })?;
    let mut out = Vec::new();
    for prefix in listed.common_prefixes {
        let Some(name) = prefix.filename() else {
            continue;
        };
        let log = ObjectPath::from(format!("{name}/_delta_log"));
        let has_log = store
            .list_with_delimiter(Some(&log))
            .await
            .is_ok_and(|l| !l.objects.is_empty());
        if has_log {
            out.push(format!("{root}/{name}"));
        }
    }
    out.sort();
    Ok(out)
}

/// Every row of a table (local or in an object store), as Arrow batches.
pub async fn read_table(table: &AuditTable) -> Result<Vec<RecordBatch>, ProcessorError> {
    let store = table.object_store();
    let mut out = Vec::new();
    for path in table.file_paths().await? {
        let err = |e: String| ProcessorError::Lake {
            location: format!("{}/{path}", table.uri()),
            reason: format!("reading: {e}"),
        };
        let bytes = match store.get(&path).await {
            Ok(got) => got.bytes().await.map_err(|e| err(e.to_string()))?,
            Err(e) => return Err(err(e.to_string())),
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| err(e.to_string()))?;
        for batch in reader {
            out.push(batch.map_err(|e| err(e.to_string()))?);
        }
    }
    Ok(out)
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Vec<Option<&'a str>> {
    match batch.column_by_name(name) {
        Some(c) => match c.as_string_opt::<i32>() {
            Some(a) => (0..a.len())
                .map(|i| a.is_valid(i).then(|| a.value(i)))
                .collect(),
            None => vec![None; batch.num_rows()],
        },
        None => vec![None; batch.num_rows()],
    }
}

/// Values of a string column across batches.
pub fn strings(batches: &[RecordBatch], name: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            string_column(b, name)
                .into_iter()
                .map(|s| s.map(str::to_owned))
        })
        .collect()
}

/// The status of the table at `uri` (`Ok(None)`: no table there).
pub async fn table_status(
    uri: &str,
    storage: &Lake,
    summary: bool,
) -> Result<Option<TableStatus>, ProcessorError> {
    let Some(table) = AuditTable::open_existing_with(uri, storage.options_for(uri)).await? else {
        return Ok(None);
    };
    let mut offsets = BTreeMap::new();
    // The commit info names the partitions (group, topic, partition); the `txn` version is the
    // truth of where each is.
    for (_, meta) in table.recent_metadata(2000).await? {
        let group = meta.get("group").and_then(|g| g.as_str()).unwrap_or("");
        let Some(parts) = meta.get("partitions").and_then(|p| p.as_array()) else {
            continue;
        };
        for p in parts {
            let (Some(topic), Some(partition)) = (
                p.get("topic").and_then(|t| t.as_str()),
                p.get("partition").and_then(|n| n.as_i64()),
            ) else {
                continue;
            };
            let tp = TopicPartition::new(topic, i32::try_from(partition).unwrap_or(-1));
            let key = format!("{group}/{tp}");
            if offsets.contains_key(&key) {
                continue;
            }
            if let Some(v) = table.txn_version(&offset_app_id(group, &tp)).await? {
                offsets.insert(key, v);
            }
        }
    }
    let classes = if summary {
        let batches = read_table(&table).await?;
        let mut counts = BTreeMap::new();
        let class = strings(&batches, "audit_class");
        let result = strings(&batches, "result");
        for (c, r) in class.iter().zip(&result) {
            let key = format!(
                "{}/{}",
                c.as_deref().unwrap_or("-"),
                r.as_deref().unwrap_or("-")
            );
            *counts.entry(key).or_insert(0u64) += 1;
        }
        Some(counts)
    } else {
        None
    };
    Ok(Some(TableStatus {
        table: uri.to_owned(),
        version: table.version(),
        rows: table.row_count()?,
        last_commit: table
            .last_commit_millis()
            .await?
            .and_then(DateTime::from_timestamp_millis),
        offsets,
        classes,
    }))
}
