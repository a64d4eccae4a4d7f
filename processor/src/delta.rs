//! The Delta Lake side: the audit table schema, rows to Arrow batches, commits that carry one
//! `txn` action per Kafka topic-partition, and reading those versions back.
//!
//! Owns [`arrow_schema`] (the standard audit schema, columns in their fixed order, `ingest_date`
//! the partition column), [`LakeRow`] and [`AuditTable`]; rows become Arrow batches in `batch`.
//! Invariants: a commit and the Kafka offsets it covers are one atomic Delta version (the `txn`
//! actions are in the same commit as the data files); a commit is one attempt at the version
//! after the snapshot it was prepared on; [`AuditTable::txn_version`] is the only source of
//! truth for where a partition resumes. Must not: talk to Kafka, or retry a commit (the
//! committer decides whether one that failed may have landed).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::TableProperty;
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::scalars::ScalarExt;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, StructType, Transaction};
use deltalake::parquet::basic::{Compression, Encoding};
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};
use deltalake::{DeltaTable, DeltaTableError};

mod batch;

use crate::audit::AuditRow;
use crate::error::ProcessorError;

pub use batch::{BATCH_ROWS, RowBuffer, to_batch};

/// A sample row for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) use batch::tests::row as test_row;

/// The Arrow version the tables are written with (for readers such as tests).
pub use deltalake::arrow;

/// The Parquet version the tables are written with (for benchmarks).
pub use deltalake::parquet;

/// Key of the processor's checkpoint in a commit's info.
pub const METADATA_KEY: &str = "pgtrail";

/// The partition column.
pub const PARTITION_COLUMN: &str = "ingest_date";

/// Where a row came from in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaCoords {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A row as written: the audit row, when it was ingested, and its Kafka coordinates.
#[derive(Debug, Clone)]
pub struct LakeRow {
    /// The audit columns.
    pub row: AuditRow,
    /// Ingest time (UTC); `ingest_date` is its date.
    pub ingest_ts: DateTime<Utc>,
    /// Kafka coordinates of the record the row was parsed from.
    pub kafka: KafkaCoords,
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The standard audit schema, columns in their fixed order.
pub fn arrow_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, true);
    let map = DataType::Map(
        Arc::new(Field::new(
            "key_value",
            DataType::Struct(
                vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", DataType::Utf8, true),
                ]
                .into(),
            ),
            false,
        )),
        false,
    );
    Arc::new(Schema::new(vec![
        Field::new("event_time", ts(), true),
        s("db_name"),
        s("user_name"),
        s("client_addr"),
        s("session_id"),
        s("command_tag"),
        s("object_type"),
        s("object_name"),
        s("statement"),
        s("audit_class"),
        s("result"),
        s("error_code"),
        Field::new("extra", map, true),
        Field::new("ingest_ts", ts(), true),
        s("src"),
        s("raw"),
        Field::new(PARTITION_COLUMN, DataType::Date32, true),
        s("event_id"),
        s("kafka_topic"),
        Field::new("kafka_partition", DataType::Int32, true),
        Field::new("kafka_offset", DataType::Int64, true),
    ]))
}

/// Columns of long, mostly unique text: no dictionary (it never pays off and interning every
/// value was a tenth of a commit) and no min/max statistics (useless for skipping; comparing
/// long strings with common prefixes was another tenth).
const PLAIN_TEXT_COLUMNS: [&str; 3] = ["raw", "statement", "event_id"];

/// Rising 64-bit columns: delta-encoded (`DELTA_BINARY_PACKED`) instead of a dictionary of
/// nearly unique values. Measured on 48k csvlog rows: with the `extra` values below, encoding
/// took about a quarter less time and the file came out 1.4 % smaller. Readers need
/// `DELTA_BINARY_PACKED` (Spark 3.3+, Trino, DuckDB, Polars, delta-rs all read it).
const DELTA_COLUMNS: [&str; 3] = ["event_time", "ingest_ts", "kafka_offset"];

/// Data page size limit, in bytes (Parquet's default is 1 MiB). The writer builds each page
/// in buffers that grow to its size and are freed when it is written: at 1 MiB they come
/// fresh from the OS, page by page, and page faults were a sixth of a commit's CPU time. At
/// 128 KiB the allocator reuses them. Measured with `bench/process-bench`, alternating both
/// binaries, 3 runs each, on a loaded machine: system CPU 1.36–1.39 s → 0.95–1.07 s, user
/// CPU 6.6–7.5 s → 5.5–6.5 s, page faults 212k–238k → 175k–185k (on a quiet machine later,
/// throughput and user CPU were the same within noise; all under mimalloc 3, whose blocks
/// above 512 KiB are pages of their own). Files come out 0.8 % (csvlog) to 1.0 %
/// (jsonlog) larger (page headers); readers can skip at a finer grain with the page index.
const DATA_PAGE_BYTES: usize = 128 << 10;

/// The leaf columns of `extra` (`key` or `value`).
fn extra_leaf(leaf: &str) -> ColumnPath {
    ColumnPath::new(vec!["extra".into(), "key_value".into(), leaf.into()])
}

/// Parquet settings of the data files: Snappy (as deltalake's default), the columns above
/// plain or delta-encoded, `extra`'s values without a dictionary (most are unique per row:
/// line numbers, transaction ids, fingerprints), no min/max statistics on `extra`'s keys and
/// values (a file's min/max over all its entries says nothing about any one key, so no
/// reader can skip files by them, and Delta's Spark writer collects none for map columns;
/// comparing every entry twice was a fifth of the encoding time), data pages of
/// [`DATA_PAGE_BYTES`], everything else as the Parquet default (dictionary, page statistics).
pub fn writer_properties() -> WriterProperties {
    let b = WriterProperties::builder()
        .set_created_by(format!("pgtrail {}", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::SNAPPY)
        .set_data_page_size_limit(DATA_PAGE_BYTES)
        .set_column_dictionary_enabled(extra_leaf("value"), false)
        .set_column_statistics_enabled(extra_leaf("key"), EnabledStatistics::None)
        .set_column_statistics_enabled(extra_leaf("value"), EnabledStatistics::None);
    let b = PLAIN_TEXT_COLUMNS.iter().fold(b, |b, c| {
        let path = ColumnPath::from(*c);
        b.set_column_dictionary_enabled(path.clone(), false)
            .set_column_statistics_enabled(path, EnabledStatistics::None)
    });
    DELTA_COLUMNS
        .iter()
        .fold(b, |b, c| {
            let path = ColumnPath::from(*c);
            b.set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED)
        })
        .build()
}

/// The partition values of `batch` when every row has the same `ingest_date` (`S` is the
/// kernel's scalar type, which deltalake does not re-export by name).
fn single_partition<S: ScalarExt>(batch: &RecordBatch) -> Option<indexmap::IndexMap<String, S>> {
    use deltalake::arrow::array::{Array, Date32Array};
    let col = batch.column_by_name(PARTITION_COLUMN)?;
    let days = col.as_any().downcast_ref::<Date32Array>()?;
    if days.is_empty() || days.null_count() > 0 {
        return None;
    }
    let first = days.value(0);
    if days.values().iter().any(|d| *d != first) {
        return None;
    }
    let value = ScalarExt::from_array(col.as_ref(), 0)?;
    Some(indexmap::IndexMap::from([(
        PARTITION_COLUMN.to_owned(),
        value,
    )]))
}

/// The Kafka topic and partition of `batch`'s first row (`None`: no such columns or rows).
fn kafka_partition_of(batch: &RecordBatch) -> Option<(String, i32)> {
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::Int32Type;
    let topic = batch
        .column_by_name("kafka_topic")?
        .as_string_opt::<i32>()?;
    let partition = batch
        .column_by_name("kafka_partition")?
        .as_primitive_opt::<Int32Type>()?;
    (!topic.is_empty() && topic.is_valid(0) && partition.is_valid(0))
        .then(|| (topic.value(0).to_owned(), partition.value(0)))
}

/// One server's audit table.
pub struct AuditTable {
    uri: String,
    table: DeltaTable,
}

/// Maps a deltalake error to [`ProcessorError::Delta`] naming the table and operation.
fn delta_err<'a>(
    table: &'a str,
    operation: &'static str,
) -> impl Fn(DeltaTableError) -> ProcessorError + 'a {
    move |source| ProcessorError::Delta {
        table: table.to_owned(),
        operation,
        source: Box::new(source),
    }
}

impl AuditTable {
    /// Opens the table at `uri` (a local directory or object-store URL), creating it with the
    /// audit schema when it does not exist (checkpoints every 10 versions).
    pub async fn open_or_create(uri: &str) -> Result<AuditTable, ProcessorError> {
        Self::open_or_create_with(uri, HashMap::new(), 10).await
    }

    /// Opens an existing table; `Ok(None)` when there is none at `uri`.
    pub async fn open_existing(uri: &str) -> Result<Option<AuditTable>, ProcessorError> {
        Self::open_existing_with(uri, HashMap::new()).await
    }

    /// [`AuditTable::open_existing`] with the table's storage `options` (`lake.rs`).
    pub async fn open_existing_with(
        uri: &str,
        options: HashMap<String, String>,
    ) -> Result<Option<AuditTable>, ProcessorError> {
        let url = deltalake::ensure_table_uri(uri).map_err(delta_err(uri, "resolve location"))?;
        let table = DeltaTable::try_from_url_with_storage_options(url, options)
            .await
            .map_err(delta_err(uri, "open"))?;
        Ok(table.version().is_some().then(|| AuditTable {
            uri: uri.to_owned(),
            table,
        }))
    }

    /// As [`AuditTable::open_or_create`], a created table writing a Delta checkpoint every
    /// `checkpoint_interval` versions.
    pub async fn open_or_create_with(
        uri: &str,
        options: HashMap<String, String>,
        checkpoint_interval: u64,
    ) -> Result<AuditTable, ProcessorError> {
        Self::open_or_create_as(
            uri,
            options,
            &arrow_schema(),
            &[PARTITION_COLUMN],
            checkpoint_interval,
        )
        .await
    }

    /// As [`AuditTable::open_or_create_with`], a created table having `schema` and
    /// `partition_columns` (the job-audit table, `joblog.rs`).
    pub async fn open_or_create_as(
        uri: &str,
        options: HashMap<String, String>,
        schema: &Schema,
        partition_columns: &[&str],
        checkpoint_interval: u64,
    ) -> Result<AuditTable, ProcessorError> {
        if !uri.contains("://") {
            std::fs::create_dir_all(uri).map_err(|e| {
                delta_err(uri, "create directory")(DeltaTableError::Generic(e.to_string()))
            })?;
        }
        let url = deltalake::ensure_table_uri(uri).map_err(delta_err(uri, "resolve location"))?;
        let table = DeltaTable::try_from_url_with_storage_options(url, options)
            .await
            .map_err(delta_err(uri, "open"))?;
        if table.version().is_some() {
            return Ok(AuditTable {
                uri: uri.to_owned(),
                table,
            });
        }
        let schema: StructType = schema
            .try_into_kernel()
            .map_err(|e| delta_err(uri, "convert schema")(DeltaTableError::from(e)))?;
        let table = table
            .create()
            .with_columns(schema.fields().cloned())
            .with_partition_columns(partition_columns.iter().copied())
            .with_configuration_property(
                TableProperty::CheckpointInterval,
                Some(checkpoint_interval.max(1).to_string()),
            )
            .await
            .map_err(delta_err(uri, "create"))?;
        Ok(AuditTable {
            uri: uri.to_owned(),
            table,
        })
    }

    /// The table version.
    pub fn version(&self) -> Option<u64> {
        self.table.version()
    }

    /// The last Kafka offset committed for `app_id`, if any.
    pub async fn txn_version(&self, app_id: &str) -> Result<Option<i64>, ProcessorError> {
        let log_store = self.table.log_store();
        let snapshot = self
            .table
            .snapshot()
            .map_err(delta_err(&self.uri, "read snapshot"))?;
        snapshot
            .transaction_version(log_store.as_ref(), app_id)
            .await
            .map_err(delta_err(&self.uri, "read txn"))
    }

    /// Re-reads the log (another writer may have committed).
    pub async fn refresh(&mut self) -> Result<(), ProcessorError> {
        let AuditTable { uri, table } = self;
        table
            .update_incremental(None)
            .await
            .map_err(delta_err(uri, "refresh"))
    }

    /// Writes `batches` as Parquet data files under the table; their `add` actions. The files
    /// are not part of the table until a commit adds them (a file no commit adds is removed
    /// by `VACUUM`). Consecutive batches of one Kafka partition (what a partition's
    /// `RowBuffer` gives) share files, and no file holds two partitions' rows: a file's
    /// statistics then bound one partition's offsets, so a replay's `replaceWhere` is never
    /// failed by a live commit racing it (deltalake's conflict check prunes the winner's files
    /// by their statistics) and readers skip files by partition and offset.
    pub async fn upload(&self, batches: &[RecordBatch]) -> Result<Vec<Action>, ProcessorError> {
        let mut writer = RecordBatchWriter::for_table(&self.table)
            .map_err(delta_err(&self.uri, "prepare writer"))?
            .with_writer_properties(writer_properties());
        let mut adds = Vec::new();
        let mut source = None;
        for batch in batches {
            let this = kafka_partition_of(batch);
            if source.is_some() && source != this {
                adds.extend(
                    writer
                        .flush()
                        .await
                        .map_err(delta_err(&self.uri, "upload"))?,
                );
            }
            source = this;
            // A batch of one `ingest_date` (what `RowBuffer` makes) goes to its partition
            // directly; the generic path would copy every column to split it by date.
            match single_partition(batch) {
                Some(values) => writer
                    .write_partition(batch.clone(), &values, WriteMode::Default)
                    .await
                    .map(drop),
                None => writer.write(batch.clone()).await,
            }
            .map_err(delta_err(&self.uri, "write"))?;
        }
        adds.extend(
            writer
                .flush()
                .await
                .map_err(delta_err(&self.uri, "upload"))?,
        );
        Ok(adds.into_iter().map(Action::Add).collect())
    }

    /// Commits `adds` with the `txns` (app id → version) and `metadata` (under `pgtrail` in
    /// the commit info) as the version after this table's snapshot: one attempt, which fails
    /// when any other commit came first (the caller re-checks what it expects of the table
    /// and tries again). Delta checkpoints and log cleanup are not run here (see
    /// [`AuditTable::maintain`]). Returns the version; once the log entry is written the
    /// commit is reported landed even if reading the new snapshot fails.
    pub async fn commit_log(
        &mut self,
        adds: Vec<Action>,
        txns: &BTreeMap<String, i64>,
        metadata: serde_json::Value,
    ) -> Result<u64, ProcessorError> {
        let props = CommitProperties::default()
            .with_max_retries(0)
            .with_create_checkpoint(false)
            .with_cleanup_expired_logs(Some(false))
            .with_application_transactions(
                txns.iter()
                    .map(|(id, v)| Transaction::new(id, *v))
                    .collect(),
            )
            // It adds files and reads none: a blind append (a replay racing it need not
            // read its files again).
            .with_metadata([
                (METADATA_KEY.to_owned(), metadata),
                ("isBlindAppend".to_owned(), serde_json::Value::Bool(true)),
            ]);
        let AuditTable { uri, table } = self;
        let snapshot = table.snapshot().map_err(delta_err(uri, "read snapshot"))?;
        let operation = DeltaOperation::Write {
            mode: SaveMode::Append,
            partition_by: Some(snapshot.metadata().partition_columns().to_vec()),
            predicate: None,
        };
        let prepared = CommitBuilder::from(props)
            .with_actions(adds)
            .build(Some(snapshot), table.log_store(), operation)
            .into_prepared_commit_future()
            .await
            .map_err(delta_err(uri, "prepare commit"))?;
        let landed = prepared.await.map_err(delta_err(uri, "commit"))?;
        let version = landed.version;
        match landed.await {
            Ok(finalized) => table.state = Some(finalized.snapshot()),
            Err(e) => {
                tracing::warn!(table = %uri, version, error = %e, "Committed; reading the new snapshot failed (read again on next use).");
            }
        }
        Ok(version)
    }

    /// Table maintenance after a commit: a Delta checkpoint when the version is a multiple
    /// of the table's `delta.checkpointInterval`, then expired log cleanup when the table
    /// allows it. Never part of a commit's outcome.
    pub async fn maintain(&mut self, version: u64) -> Result<bool, ProcessorError> {
        let AuditTable { uri, table } = self;
        let config = table
            .snapshot()
            .map_err(delta_err(uri, "read snapshot"))?
            .table_config();
        let interval = config.checkpoint_interval().get();
        let cleanup = config.enable_expired_log_cleanup();
        if version == 0 || !version.is_multiple_of(interval) {
            return Ok(false);
        }
        deltalake::checkpoints::create_checkpoint(table, None)
            .await
            .map_err(delta_err(uri, "create checkpoint"))?;
        if cleanup {
            deltalake::checkpoints::cleanup_metadata(table, None)
                .await
                .map_err(delta_err(uri, "clean up log"))?;
        }
        Ok(true)
    }

    /// The table's object store, rooted at the table.
    pub fn object_store(&self) -> std::sync::Arc<dyn deltalake::ObjectStore> {
        self.table.object_store()
    }

    /// The `pgtrail` metadata of the newest commits, newest first (at most `limit` commits),
    /// with each commit's timestamp (ms since the epoch).
    pub async fn recent_metadata(
        &self,
        limit: usize,
    ) -> Result<Vec<(Option<i64>, serde_json::Value)>, ProcessorError> {
        use futures::TryStreamExt;
        let infos: Vec<deltalake::kernel::CommitInfo> = self
            .table
            .history(Some(limit))
            .try_collect()
            .await
            .map_err(delta_err(&self.uri, "read history"))?;
        Ok(infos
            .into_iter()
            .filter_map(|mut i| i.info.remove(METADATA_KEY).map(|m| (i.timestamp, m)))
            .collect())
    }

    /// Timestamp (ms since the epoch) of the newest commit.
    pub async fn last_commit_millis(&self) -> Result<Option<i64>, ProcessorError> {
        use futures::TryStreamExt;
        let infos: Vec<deltalake::kernel::CommitInfo> = self
            .table
            .history(Some(1))
            .try_collect()
            .await
            .map_err(delta_err(&self.uri, "read history"))?;
        Ok(infos.first().and_then(|i| i.timestamp))
    }

    /// Rows in the table (from the data files' statistics).
    pub fn row_count(&self) -> Result<u64, ProcessorError> {
        let snapshot = self
            .table
            .snapshot()
            .map_err(delta_err(&self.uri, "read snapshot"))?;
        Ok(snapshot
            .log_data()
            .into_iter()
            .filter_map(|f| f.num_records())
            .map(|n| n as u64)
            .sum())
    }

    /// The deltalake table (for replay's operations, `replay/table.rs`).
    pub fn delta(&self) -> &DeltaTable {
        &self.table
    }

    /// The deltalake table, for an operation that takes it by value.
    pub fn into_delta(self) -> DeltaTable {
        self.table
    }

    /// The table URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Paths of the table's data files (for tests and status).
    pub async fn file_paths(
        &self,
    ) -> Result<Vec<deltalake::logstore::object_store::path::Path>, ProcessorError> {
        self.table
            .get_files_by_partitions(&[])
            .await
            .map_err(delta_err(&self.uri, "list files"))
    }

    /// The URIs of the table's data files.
    pub fn file_uris(&self) -> Result<Vec<String>, ProcessorError> {
        Ok(self
            .table
            .get_file_uris()
            .map_err(delta_err(&self.uri, "list files"))?
            .collect())
    }
}
