//! Rows straight into Arrow: a partition's released rows are appended to column builders the
//! moment they are routed, while their strings are still in cache, instead of being kept as
//! row structs and converted at commit time (that copy of cold rows, and dropping them, was a
//! quarter of the per-record time, and held every row twice in memory while it was written).
//!
//! Owns [`RowBuffer`] and [`to_batch`]; string columns are built in `text`. Invariants:
//! batches have exactly [`arrow_schema`]'s columns in order, at most [`BATCH_ROWS`] rows
//! and, from a [`RowBuffer`], one `ingest_date` (the Delta partition); [`RowBuffer::len`]
//! counts every row pushed and not taken;
//! [`RowBuffer::bytes`] never under-counts what the buffer holds by more than the builders'
//! growth slack it already adds. Must not: reorder rows, or talk to Kafka or Delta.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deltalake::arrow::array::{
    ArrayRef, Date32Builder, Int32Builder, Int64Builder, MapArray, StringArray, StructArray,
    TimestampMicrosecondBuilder,
};
use deltalake::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;

use super::{LakeRow, arrow_schema};
use crate::audit::{AuditRow, Key};

mod text;

use text::TextColumn;

/// Rows per Arrow batch handed to the Parquet writer.
pub const BATCH_ROWS: usize = 8192;

/// Rows the first builder of a quiet partition has room for (it grows by doubling up to
/// [`BATCH_ROWS`]; later builders are sized by what the partition filled before).
const FIRST_ROWS: usize = 256;

/// Arrow buffer bytes per row besides the strings: offsets, validity, fixed-width columns.
const ROW_OVERHEAD: usize = 128;

/// Per `extra` entry besides its text: two offsets and the map's share.
const ENTRY_OVERHEAD: usize = 12;

/// The UTC date of `d` as Arrow's Date32 (days since 1970-01-01).
fn days(d: DateTime<Utc>) -> i32 {
    d.timestamp().div_euclid(86_400) as i32
}

/// The string columns, by index into [`Builders::text`].
const DB_NAME: usize = 0;
const USER_NAME: usize = 1;
const CLIENT_ADDR: usize = 2;
const SESSION_ID: usize = 3;
const COMMAND_TAG: usize = 4;
const OBJECT_TYPE: usize = 5;
const OBJECT_NAME: usize = 6;
const STATEMENT: usize = 7;
const AUDIT_CLASS: usize = 8;
const RESULT: usize = 9;
const ERROR_CODE: usize = 10;
const SRC: usize = 11;
const RAW: usize = 12;
const EVENT_ID: usize = 13;
const KAFKA_TOPIC: usize = 14;
const TEXT: usize = 15;

/// Bytes per row of each string column (and of `extra`'s values, entries per row)
/// in the last batch: the next builders' capacities, so a busy partition's builders never
/// regrow (each regrowth copies everything appended so far).
#[derive(Debug, Clone, Copy)]
struct Sizes {
    text: [usize; TEXT],
    values: usize,
    entries: usize,
}

impl Default for Sizes {
    /// A guess for the first batch.
    fn default() -> Self {
        let mut text = [16; TEXT];
        text[STATEMENT] = 256;
        text[RAW] = 512;
        text[EVENT_ID] = 32;
        Sizes {
            text,
            values: 14 * 16,
            entries: 14,
        }
    }
}

/// The builders of one batch being filled.
struct Builders {
    event_time: TimestampMicrosecondBuilder,
    text: [TextColumn; TEXT],
    /// `extra`'s keys, one per entry (their names are written at the end, in one pass).
    extra_keys: Vec<Key>,
    /// Bytes of those names.
    extra_key_bytes: usize,
    /// `extra`'s values.
    extra_values: TextColumn,
    /// Where each row's entries start in `extra_keys`, and the end.
    extra_offsets: Vec<i32>,
    ingest_ts: TimestampMicrosecondBuilder,
    ingest_date: Date32Builder,
    kafka_partition: Int32Builder,
    kafka_offset: Int64Builder,
    rows: usize,
}

impl Builders {
    fn new(rows: usize, sizes: &Sizes) -> Self {
        // 1/8 more than last time: the next batch's rows vary a little.
        let cap = |per_row: usize| rows * per_row + rows * per_row / 8;
        Builders {
            event_time: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            text: std::array::from_fn(|i| TextColumn::with_capacity(rows, cap(sizes.text[i]))),
            extra_keys: Vec::with_capacity(cap(sizes.entries)),
            extra_key_bytes: 0,
            extra_values: TextColumn::with_capacity(cap(sizes.entries), cap(sizes.values)),
            extra_offsets: {
                let mut v = Vec::with_capacity(rows + 1);
                v.push(0);
                v
            },
            ingest_ts: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ingest_date: Date32Builder::with_capacity(rows),
            kafka_partition: Int32Builder::with_capacity(rows),
            kafka_offset: Int64Builder::with_capacity(rows),
            rows: 0,
        }
    }

    fn push(
        &mut self,
        row: &AuditRow,
        (ingest_ts, day): (DateTime<Utc>, i32),
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), ArrowError> {
        let t = &mut self.text;
        self.event_time
            .append_option(row.event_time.map(|t| t.timestamp_micros()));
        t[DB_NAME].append_option(row.db_name())?;
        t[USER_NAME].append_option(row.user_name())?;
        t[CLIENT_ADDR].append_option(row.client_addr())?;
        t[SESSION_ID].append_option(row.session_id())?;
        t[COMMAND_TAG].append_value(&row.command_tag)?;
        t[OBJECT_TYPE].append_option(row.object_type())?;
        t[OBJECT_NAME].append_option(row.object_name())?;
        t[STATEMENT].append_option(row.statement())?;
        t[AUDIT_CLASS].append_value(&row.audit_class)?;
        t[RESULT].append_value(row.result.as_str())?;
        t[ERROR_CODE].append_option(row.error_code())?;
        let (keys, values) = (&mut self.extra_keys, &mut self.extra_values);
        let key_bytes = &mut self.extra_key_bytes;
        let mut appended = Ok(());
        row.for_each_extra(|k, v| {
            keys.push(k);
            if let Err(e) = values.append_value(v) {
                appended = Err(e);
            }
            *key_bytes += k.as_str().len();
        });
        appended?;
        self.extra_offsets
            .push(i32::try_from(self.extra_keys.len()).map_err(|_| {
                ArrowError::ComputeError("more than 2^31 extra entries in one batch".into())
            })?);
        self.ingest_ts.append_value(ingest_ts.timestamp_micros());
        t[SRC].append_value(row.src)?;
        t[RAW].append_value(row.raw())?;
        self.ingest_date.append_value(day);
        t[EVENT_ID].append_value(row.event_id())?;
        t[KAFKA_TOPIC].append_value(topic)?;
        self.kafka_partition.append_value(partition);
        self.kafka_offset.append_value(offset);
        self.rows += 1;
        Ok(())
    }

    /// What this batch holds per row (capacity hints for the next one).
    fn sizes(&mut self) -> Sizes {
        let rows = self.rows.max(1);
        let per_row = |bytes: usize| bytes.div_ceil(rows);
        Sizes {
            text: std::array::from_fn(|i| per_row(self.text[i].values_len())),
            values: per_row(self.extra_values.values_len()),
            entries: per_row(self.extra_keys.len()),
        }
    }

    /// Bytes of what was appended: the strings, plus per row and per `extra` entry what Arrow
    /// keeps beside them (offsets, validity, fixed-width columns).
    fn content_bytes(&self) -> usize {
        self.text.iter().map(TextColumn::values_len).sum::<usize>()
            + self.extra_key_bytes
            + self.extra_values.values_len()
            + self.extra_keys.len() * ENTRY_OVERHEAD
            + self.rows * ROW_OVERHEAD
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let text = self.text.map(|c| Arc::new(c.finish()) as ArrayRef);
        let t = |i: usize| Arc::clone(&text[i]);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_time.finish()),
            t(DB_NAME),
            t(USER_NAME),
            t(CLIENT_ADDR),
            t(SESSION_ID),
            t(COMMAND_TAG),
            t(OBJECT_TYPE),
            t(OBJECT_NAME),
            t(STATEMENT),
            t(AUDIT_CLASS),
            t(RESULT),
            t(ERROR_CODE),
            Arc::new(extra_map(
                &self.extra_keys,
                self.extra_key_bytes,
                self.extra_values.finish(),
                std::mem::take(&mut self.extra_offsets),
            )?),
            Arc::new(self.ingest_ts.finish()),
            t(SRC),
            t(RAW),
            Arc::new(self.ingest_date.finish()),
            t(EVENT_ID),
            t(KAFKA_TOPIC),
            Arc::new(self.kafka_partition.finish()),
            Arc::new(self.kafka_offset.finish()),
        ];
        RecordBatch::try_new(arrow_schema(), columns)
    }
}

/// The `extra` map column from its keys (written here, name by name, in one pass: appending
/// each name to a string builder was a twentieth of the per-row time), values and row offsets.
fn extra_map(
    keys: &[Key],
    key_bytes: usize,
    values: StringArray,
    offsets: Vec<i32>,
) -> Result<MapArray, ArrowError> {
    let mut names = TextColumn::with_capacity(keys.len(), key_bytes);
    for k in keys {
        names.append_value(k.as_str())?;
    }
    let keys = names.finish();
    let DataType::Map(entry, ordered) =
        arrow_schema().field_with_name("extra")?.data_type().clone()
    else {
        return Err(ArrowError::SchemaError("extra is not a map".into()));
    };
    let DataType::Struct(fields) = entry.data_type().clone() else {
        return Err(ArrowError::SchemaError(
            "extra's entries are not a struct".into(),
        ));
    };
    let entries = StructArray::try_new(fields, vec![Arc::new(keys), Arc::new(values)], None)?;
    MapArray::try_new(
        entry,
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        entries,
        None,
        ordered,
    )
}

/// A partition's rows not yet committed, as Arrow batches and one batch being filled.
#[derive(Default)]
pub struct RowBuffer {
    open: Option<Builders>,
    done: Vec<RecordBatch>,
    done_rows: usize,
    done_bytes: usize,
    /// Rows the next builder is created for (0: [`FIRST_ROWS`]).
    next_rows: usize,
    /// Per-row sizes of the last batch (`None`: none yet, guess).
    sizes: Option<Sizes>,
}

impl std::fmt::Debug for RowBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowBuffer")
            .field("rows", &self.len())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl RowBuffer {
    /// Appends one row with its ingest time and Kafka coordinates.
    pub fn push(
        &mut self,
        row: &AuditRow,
        ingest_ts: DateTime<Utc>,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), ArrowError> {
        // One `ingest_date` per batch, so the table writer never splits a batch by partition.
        let day = days(ingest_ts);
        let last_day = |b: &Builders| b.ingest_date.values_slice().last().copied();
        if self
            .open
            .as_ref()
            .is_some_and(|b| last_day(b).is_some_and(|d| d != day))
        {
            self.seal()?;
        }
        let b = match &mut self.open {
            Some(b) => b,
            None => self.open.insert(Builders::new(
                self.next_rows.max(FIRST_ROWS),
                &self.sizes.unwrap_or_default(),
            )),
        };
        b.push(row, (ingest_ts, day), topic, partition, offset)?;
        if b.rows >= BATCH_ROWS {
            self.seal()?;
        }
        Ok(())
    }

    /// Appends a [`LakeRow`].
    pub fn push_lake(&mut self, r: &LakeRow) -> Result<(), ArrowError> {
        self.push(
            &r.row,
            r.ingest_ts,
            &r.kafka.topic,
            r.kafka.partition,
            r.kafka.offset,
        )
    }

    fn seal(&mut self) -> Result<(), ArrowError> {
        if let Some(mut b) = self.open.take() {
            // A busy partition gets full-size builders (no regrowth copies), a quiet one small:
            // a commit cutting a batch short halves the size at most.
            self.next_rows = (b.rows.next_power_of_two().max(self.next_rows / 2)).min(BATCH_ROWS);
            if b.rows >= FIRST_ROWS || self.sizes.is_none() {
                self.sizes = Some(b.sizes());
            }
            let batch = b.finish()?;
            self.done_rows += batch.num_rows();
            self.done_bytes += batch.get_array_memory_size();
            self.done.push(batch);
        }
        Ok(())
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.done_rows + self.open.as_ref().map_or(0, |b| b.rows)
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory held: finished batches as Arrow measures them, the open batch's content twice
    /// (its builders grow by doubling).
    pub fn bytes(&self) -> usize {
        self.done_bytes + 2 * self.open.as_ref().map_or(0, Builders::content_bytes)
    }

    /// Every row held, as batches (empty when none); the buffer is empty afterwards.
    pub fn take(&mut self) -> Result<Vec<RecordBatch>, ArrowError> {
        self.seal()?;
        self.done_rows = 0;
        self.done_bytes = 0;
        Ok(std::mem::take(&mut self.done))
    }
}

/// Rows → one Arrow batch of [`arrow_schema`] (any number of rows, of any dates).
pub fn to_batch<R: std::borrow::Borrow<LakeRow>>(rows: &[R]) -> Result<RecordBatch, ArrowError> {
    let mut b = Builders::new(rows.len(), &Sizes::default());
    for r in rows {
        let r = r.borrow();
        b.push(
            &r.row,
            (r.ingest_ts, days(r.ingest_ts)),
            &r.kafka.topic,
            r.kafka.partition,
            r.kafka.offset,
        )?;
    }
    b.finish()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::{Source, audit_row};
    use crate::delta::KafkaCoords;
    use crate::parse::LogRecord;
    use crate::parse::pgaudit::parse_audit;
    use pgtrail_avro::LogFormat;

    /// A row of offset `i` (topic `t`, partition 2) with a 100-byte raw text.
    pub(crate) fn row(i: i64) -> LakeRow {
        let raw = "x".repeat(100);
        let rec = LogRecord {
            log_time: DateTime::from_timestamp(1_795_000_000 + i, 0),
            database_name: Some("db".into()),
            session_id: Some("s".into()),
            vxid: Some(format!("3/{i}").into()),
            ..LogRecord::default()
        };
        let statement = format!("SELECT {i}");
        let message = format!("AUDIT: SESSION,1,1,READ,SELECT,,,{statement},<none>");
        let entry = parse_audit(&message).unwrap().unwrap();
        let src = Source {
            server: "p".into(),
            host: "h".into(),
            format: LogFormat::Csvlog,
            path: "/l".into(),
            file_id: "f".into(),
            offset: i,
            origin: i,
        };
        LakeRow {
            row: audit_row(&rec, &entry, Some(&statement), &src, &raw),
            ingest_ts: DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default(),
            kafka: KafkaCoords {
                topic: "t".into(),
                partition: 2,
                offset: i,
            },
        }
    }

    #[test]
    fn batches_of_the_schema_in_order() {
        let mut buf = RowBuffer::default();
        let n = BATCH_ROWS as i64 + 10;
        for i in 0..n {
            buf.push_lake(&row(i)).unwrap();
        }
        assert_eq!(buf.len(), n as usize);
        assert!(buf.bytes() > n as usize * 100, "{}", buf.bytes());
        let batches = buf.take().unwrap();
        assert!(buf.is_empty() && buf.bytes() == 0);
        assert_eq!(
            batches
                .iter()
                .map(RecordBatch::num_rows)
                .collect::<Vec<_>>(),
            [BATCH_ROWS, 10]
        );
        assert_eq!(batches[0].schema(), arrow_schema());
        let offsets: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                let col = b
                    .column_by_name("kafka_offset")
                    .and_then(|c| {
                        c.as_any()
                            .downcast_ref::<deltalake::arrow::array::Int64Array>()
                    })
                    .unwrap();
                col.values().to_vec()
            })
            .collect();
        assert_eq!(offsets, (0..n).collect::<Vec<_>>());
        // Same as converting the rows at once.
        let rows: Vec<LakeRow> = (0..3).map(row).collect();
        let mut buf = RowBuffer::default();
        rows.iter().for_each(|r| buf.push_lake(r).unwrap());
        assert_eq!(buf.take().unwrap(), vec![to_batch(&rows).unwrap()]);
    }

    #[test]
    fn extra_reads_back_as_the_rows_entries() {
        use deltalake::arrow::array::{Array, AsArray};
        let rows: Vec<LakeRow> = (0..3).map(row).collect();
        let batch = to_batch(&rows).unwrap();
        let map = batch
            .column_by_name("extra")
            .unwrap()
            .as_any()
            .downcast_ref::<MapArray>()
            .unwrap();
        assert_eq!(
            map.data_type(),
            arrow_schema().field_with_name("extra").unwrap().data_type()
        );
        for (i, r) in rows.iter().enumerate() {
            let entries = map.value(i);
            let keys = entries.column(0).as_string::<i32>();
            let values = entries.column(1).as_string::<i32>();
            let got: Vec<(String, String)> = (0..entries.len())
                .map(|j| (keys.value(j).to_owned(), values.value(j).to_owned()))
                .collect();
            let mut expected = Vec::new();
            r.row
                .for_each_extra(|k, v| expected.push((k.as_str().to_owned(), v.to_owned())));
            assert!(expected.len() > 5, "{expected:?}");
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn a_batch_never_spans_two_ingest_dates() {
        use deltalake::arrow::array::Date32Array;
        let midnight = 1_795_046_400; // 2026-11-18T00:00:00Z
        assert_eq!(midnight % 86_400, 0);
        let mut buf = RowBuffer::default();
        for (i, ts) in [midnight - 2, midnight - 1, midnight, midnight + 1]
            .into_iter()
            .enumerate()
        {
            let mut r = row(i as i64);
            r.ingest_ts = DateTime::from_timestamp(ts, 0).unwrap();
            buf.push_lake(&r).unwrap();
        }
        let dates: Vec<Vec<i32>> = buf
            .take()
            .unwrap()
            .iter()
            .map(|b| {
                let c = b.column_by_name("ingest_date").unwrap();
                let c = c.as_any().downcast_ref::<Date32Array>().unwrap();
                c.values().to_vec()
            })
            .collect();
        let d = i32::try_from(midnight / 86_400).unwrap();
        assert_eq!(dates, vec![vec![d - 1, d - 1], vec![d, d]]);
        // Before 1970 too (the date of a negative timestamp is the day before).
        let t = DateTime::from_timestamp(-1, 0).unwrap();
        assert_eq!(days(t), -1);
    }
}
