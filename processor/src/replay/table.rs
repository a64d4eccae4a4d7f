//! The table side of a replay, through deltalake's own operations (its `datafusion`
//! feature): the rows a range holds now, the `event_id`s of rows before it, and the
//! replacement: one `replaceWhere` write whose single commit removes the range's rows
//! (rewriting files that hold rows outside it too) and adds the rows derived again.
//!
//! Owns [`range_predicate`], [`rows_in`], [`ids_before`], [`last_offset`] and [`replace`].
//! Invariants: the predicate names exactly the plans' topic-partitions and offset ranges, so
//! rows outside them, including those the live processor appends meanwhile, are untouched;
//! deltalake's conflict checker retries a commit that raced one whose files the predicate cannot match.
//! Must not: be called from the consumer's path (this is the only user of datafusion).

use std::collections::HashSet;

use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::DataType;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt;

use super::plan::PartitionPlan;
use crate::delta::{METADATA_KEY, PARTITION_COLUMN, arrow_schema, writer_properties};
use crate::error::ProcessorError;

/// Attempts of the replacement commit when other commits land first.
const COMMIT_RETRIES: usize = 50;

fn err(table: &DeltaTable, operation: &'static str, e: impl ToString) -> ProcessorError {
    ProcessorError::Delta {
        table: table.table_url().to_string(),
        operation,
        source: Box::new(DeltaTableError::Generic(e.to_string())),
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The SQL predicate of `plans`' ranges (rows of any of them).
pub fn range_predicate(plans: &[PartitionPlan]) -> String {
    plans
        .iter()
        .map(|p| {
            format!(
                "(kafka_topic = {} AND kafka_partition = {} AND kafka_offset >= {} AND kafka_offset <= {})",
                quote(&p.tp.topic),
                p.tp.partition,
                p.first,
                p.last
            )
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

async fn query(
    table: &DeltaTable,
    sql_where: &str,
    columns: &str,
) -> Result<deltalake::datafusion::dataframe::DataFrame, ProcessorError> {
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| err(table, "prepare scan", e))?;
    let provider = table
        .table_provider()
        .await
        .map_err(|e| err(table, "prepare scan", e))?;
    ctx.register_table("audit", provider)
        .map_err(|e| err(table, "prepare scan", e))?;
    ctx.sql(&format!("SELECT {columns} FROM audit WHERE {sql_where}"))
        .await
        .map_err(|e| err(table, "plan scan", e))
}

/// Every row of `plans`' ranges as the table holds them now.
pub async fn rows_in(
    table: &DeltaTable,
    plans: &[PartitionPlan],
) -> Result<Vec<RecordBatch>, ProcessorError> {
    if plans.is_empty() {
        return Ok(Vec::new());
    }
    query(table, &range_predicate(plans), "*")
        .await?
        .collect()
        .await
        .map_err(|e| err(table, "scan", e))
}

/// How many rows of `plans`' ranges the table holds now (what replacing them removes).
pub async fn count_in(table: &DeltaTable, plans: &[PartitionPlan]) -> Result<u64, ProcessorError> {
    if plans.is_empty() {
        return Ok(0);
    }
    let n = aggregate(table, &range_predicate(plans), "count(*)").await?;
    Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

/// The `event_id`s among `wanted` of rows of `plan`'s partition below its range (a record
/// shipped again inside the range whose first shipment was written before it: its row is
/// the earlier one).
pub async fn ids_before(
    table: &DeltaTable,
    plan: &PartitionPlan,
    wanted: &HashSet<String>,
) -> Result<HashSet<String>, ProcessorError> {
    let mut found = HashSet::new();
    if wanted.is_empty() || plan.first == 0 {
        return Ok(found);
    }
    let sql_where = format!(
        "kafka_topic = {} AND kafka_partition = {} AND kafka_offset < {}",
        quote(&plan.tp.topic),
        plan.tp.partition,
        plan.first
    );
    let mut stream = query(table, &sql_where, "event_id")
        .await?
        .execute_stream()
        .await
        .map_err(|e| err(table, "scan", e))?;
    while let Some(batch) = stream.try_next().await.map_err(|e| err(table, "scan", e))? {
        let ids = cast(batch.column(0), &DataType::Utf8).map_err(|e| err(table, "scan", e))?;
        let ids = ids.as_string::<i32>();
        for i in (0..ids.len()).filter(|i| ids.is_valid(*i)) {
            if wanted.contains(ids.value(i)) {
                found.insert(ids.value(i).to_owned());
            }
        }
    }
    Ok(found)
}

/// Replaces the rows of `plans`' ranges with `batches` in one commit carrying `metadata`
/// (under `pgtrail` in the commit info) and `txns`; the table after it.
pub async fn replace(
    table: DeltaTable,
    plans: &[PartitionPlan],
    batches: Vec<RecordBatch>,
    metadata: serde_json::Value,
    txns: Vec<Transaction>,
) -> Result<DeltaTable, ProcessorError> {
    let url = table.table_url().to_string();
    let fail = |e: DeltaTableError| ProcessorError::Delta {
        table: url.clone(),
        operation: "replace rows",
        source: Box::new(e),
    };
    let batches = if batches.is_empty() {
        vec![RecordBatch::new_empty(arrow_schema())]
    } else {
        batches
    };
    let props = CommitProperties::default()
        .with_max_retries(COMMIT_RETRIES)
        .with_application_transactions(txns)
        .with_metadata([(METADATA_KEY.to_owned(), metadata)]);
    table
        .write(batches)
        .with_save_mode(SaveMode::Overwrite)
        .with_replace_where(range_predicate(plans))
        .with_partition_columns([PARTITION_COLUMN])
        .with_writer_properties(writer_properties())
        .with_commit_properties(props)
        .await
        .map_err(fail)
}

/// Keeps only the rows of `batches` whose `event_id` is not in `drop`.
pub fn without(
    batches: Vec<RecordBatch>,
    drop: &HashSet<String>,
) -> Result<Vec<RecordBatch>, ProcessorError> {
    if drop.is_empty() {
        return Ok(batches);
    }
    let internal = |e: deltalake::arrow::error::ArrowError| ProcessorError::Internal {
        reason: format!("filtering replayed rows: {e}"),
    };
    batches
        .into_iter()
        .map(|b| {
            let ids = b
                .column_by_name("event_id")
                .ok_or_else(|| {
                    internal(deltalake::arrow::error::ArrowError::SchemaError(
                        "event_id".into(),
                    ))
                })?
                .as_string::<i32>();
            let keep: deltalake::arrow::array::BooleanArray = (0..ids.len())
                .map(|i| Some(!drop.contains(ids.value(i))))
                .collect();
            deltalake::arrow::compute::filter_record_batch(&b, &keep).map_err(internal)
        })
        .collect()
}

/// The (Kafka partition, offset) of every row of `batches`.
pub fn row_offsets(
    batches: &[RecordBatch],
) -> Result<std::collections::HashSet<(i32, i64)>, deltalake::arrow::error::ArrowError> {
    use deltalake::arrow::datatypes::{Int32Type, Int64Type};
    let mut out = std::collections::HashSet::new();
    for b in batches {
        let column = |n: &str| {
            b.column_by_name(n).ok_or_else(|| {
                deltalake::arrow::error::ArrowError::SchemaError(format!("no column {n}"))
            })
        };
        let p = cast(column("kafka_partition")?, &DataType::Int32)?;
        let o = cast(column("kafka_offset")?, &DataType::Int64)?;
        let (p, o) = (p.as_primitive::<Int32Type>(), o.as_primitive::<Int64Type>());
        out.extend((0..b.num_rows()).map(|i| (p.value(i), o.value(i))));
    }
    Ok(out)
}

/// The highest Kafka offset of `tp`'s rows (`None`: it has none).
pub async fn last_offset(
    table: &DeltaTable,
    tp: &crate::topic_partition::TopicPartition,
) -> Result<Option<i64>, ProcessorError> {
    let sql_where = format!(
        "kafka_topic = {} AND kafka_partition = {}",
        quote(&tp.topic),
        tp.partition
    );
    aggregate(table, &sql_where, "max(kafka_offset)").await
}

/// The value of one integer aggregate `expr` over the rows matching `sql_where` (`None`: SQL
/// null, as `max` of no rows).
async fn aggregate(
    table: &DeltaTable,
    sql_where: &str,
    expr: &str,
) -> Result<Option<i64>, ProcessorError> {
    use deltalake::arrow::datatypes::Int64Type;
    let batches = query(table, sql_where, expr)
        .await?
        .collect()
        .await
        .map_err(|e| err(table, "scan", e))?;
    let mut out = None;
    for b in batches {
        let v = cast(b.column(0), &DataType::Int64).map_err(|e| err(table, "scan", e))?;
        let v = v.as_primitive::<Int64Type>();
        out = (0..b.num_rows())
            .filter(|i| v.is_valid(*i))
            .map(|i| v.value(i))
            .chain(out)
            .max();
    }
    Ok(out)
}

/// Per partition of `topic`, the first and last Kafka offset of the rows whose `event_time`
/// is in `[from, to)`.
pub async fn offsets_by_event_time(
    table: &DeltaTable,
    topic: &str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<(i32, i64, i64)>, ProcessorError> {
    use deltalake::arrow::datatypes::{Int32Type, Int64Type};
    let sql_where = format!(
        "kafka_topic = {} AND event_time >= TIMESTAMP '{}' AND event_time < TIMESTAMP '{}' GROUP BY kafka_partition",
        quote(topic),
        from.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
        to.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
    );
    let batches = query(
        table,
        &sql_where,
        "kafka_partition, min(kafka_offset), max(kafka_offset)",
    )
    .await?
    .collect()
    .await
    .map_err(|e| err(table, "scan", e))?;
    let mut out = Vec::new();
    for b in batches {
        let p = cast(b.column(0), &DataType::Int32).map_err(|e| err(table, "scan", e))?;
        let lo = cast(b.column(1), &DataType::Int64).map_err(|e| err(table, "scan", e))?;
        let hi = cast(b.column(2), &DataType::Int64).map_err(|e| err(table, "scan", e))?;
        let (p, lo, hi) = (
            p.as_primitive::<Int32Type>(),
            lo.as_primitive::<Int64Type>(),
            hi.as_primitive::<Int64Type>(),
        );
        out.extend((0..b.num_rows()).map(|i| (p.value(i), lo.value(i), hi.value(i))));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::delta::{AuditTable, LakeRow, test_row, to_batch};
    use crate::topic_partition::TopicPartition;

    fn rows(partition: i32, offsets: std::ops::Range<i64>) -> Vec<LakeRow> {
        offsets
            .map(|i| {
                let mut r = test_row(i + 1000 * i64::from(partition));
                r.kafka.partition = partition;
                r.kafka.offset = i;
                r
            })
            .collect()
    }

    /// A live commit: one batch per Kafka partition, as the partitions' row buffers give them.
    async fn live_commit(table: &mut AuditTable, parts: &[Vec<LakeRow>]) {
        let batches: Vec<_> = parts.iter().map(|p| to_batch(p).unwrap()).collect();
        let adds = table.upload(&batches).await.unwrap();
        table
            .commit_log(adds, &BTreeMap::new(), serde_json::json!({}))
            .await
            .unwrap();
    }

    /// A live append landing while a replay commits does not fail the replay, even when the
    /// live commit holds a partition lagging behind the replayed range: its files hold one
    /// Kafka partition each, so their statistics rule the range out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_append_racing_a_replay_does_not_fail_it() {
        let dir = tempfile::tempdir().unwrap();
        let uri = dir.path().join("t").to_string_lossy().into_owned();
        let mut live = AuditTable::open_or_create(&uri).await.unwrap();
        // Partition 0 lags behind partition 1: a live file's offsets span the replayed range.
        live_commit(&mut live, &[rows(0, 0..3), rows(1, 0..10)]).await;
        let stale = AuditTable::open_existing(&uri).await.unwrap().unwrap();
        live_commit(&mut live, &[rows(0, 3..6), rows(1, 10..20)]).await;
        let plan = PartitionPlan {
            tp: TopicPartition::new("t", 1),
            first: 0,
            last: 9,
            read_from: 0,
            unreadable: None,
            handover: false,
        };
        let new = to_batch(&rows(1, 0..5)).unwrap();
        let written = replace(
            stale.into_delta(),
            &[plan],
            vec![new],
            serde_json::json!({}),
            Vec::new(),
        )
        .await
        .unwrap();
        assert!(written.version() >= Some(3), "{:?}", written.version());
        let table = AuditTable::open_existing(&uri).await.unwrap().unwrap();
        let batches = crate::status::read_table(&table).await.unwrap();
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(
            n,
            26 - 10 + 5,
            "the range's 10 rows became 5; the other 16 stay"
        );
    }
}
