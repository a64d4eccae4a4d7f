//! What a replay changes: the rows a range holds now against the rows derived again, matched
//! by `event_id` (a function of the record's source coordinates, so the same record keeps its
//! id whatever the parser makes of it).
//!
//! Owns [`RowDigest`], [`digests`], [`Diff`] and [`diff`] (pure: unit-tested). A row is
//! compared on every column but `ingest_ts` and `ingest_date` (when the replay wrote it). The
//! sample names the columns that changed, with the class and result before and after, never
//! other values (statements hold passwords and personal data). Must not: do I/O.

use std::collections::{BTreeMap, HashMap};

use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int64Type};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::Serialize;

/// Columns not compared (when the row was written).
const WRITE_TIME: [&str; 2] = ["ingest_ts", "ingest_date"];

/// One row, reduced to what a comparison needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowDigest {
    /// `event_id`.
    pub event_id: String,
    /// `kafka_offset`.
    pub offset: i64,
    /// `audit_class/result`.
    pub outcome: String,
    /// Per compared column (names in [`digests`]' order), a hash of its value.
    pub values: Vec<(String, u64)>,
}

fn text(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, ArrowError> {
    let Some(col) = batch.column_by_name(name) else {
        return Ok(vec![None; batch.num_rows()]);
    };
    let col = cast(col, &DataType::Utf8)?;
    let s = col.as_string::<i32>();
    Ok((0..s.len())
        .map(|i| s.is_valid(i).then(|| s.value(i).to_owned()))
        .collect())
}

/// The digests of `batches`' rows (any column order; string columns in any Arrow layout).
pub fn digests(batches: &[RecordBatch]) -> Result<Vec<RowDigest>, ArrowError> {
    let options = FormatOptions::default().with_null("∅");
    let mut out = Vec::new();
    for b in batches {
        let ids = text(b, "event_id")?;
        let classes = text(b, "audit_class")?;
        let results = text(b, "result")?;
        let offsets = match b.column_by_name("kafka_offset") {
            Some(c) => cast(c, &DataType::Int64)?
                .as_primitive::<Int64Type>()
                .values()
                .to_vec(),
            None => vec![-1; b.num_rows()],
        };
        let schema = b.schema();
        let mut columns: Vec<(&str, ArrayFormatter<'_>)> = Vec::new();
        for (field, col) in schema.fields().iter().zip(b.columns()) {
            if !WRITE_TIME.contains(&field.name().as_str()) {
                columns.push((
                    field.name(),
                    ArrayFormatter::try_new(col.as_ref(), &options)?,
                ));
            }
        }
        columns.sort_by(|a, b| a.0.cmp(b.0));
        for i in 0..b.num_rows() {
            let values = columns
                .iter()
                .map(|(name, f)| {
                    let v = f.value(i).to_string();
                    ((*name).to_owned(), xxhash_rust::xxh3::xxh3_64(v.as_bytes()))
                })
                .collect();
            out.push(RowDigest {
                event_id: ids[i].clone().unwrap_or_default(),
                offset: offsets[i],
                outcome: format!(
                    "{}/{}",
                    classes[i].as_deref().unwrap_or("-"),
                    results[i].as_deref().unwrap_or("-")
                ),
                values,
            });
        }
    }
    Ok(out)
}

/// A changed row, for people: where it is and what changed (no values but class and result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `event_id`.
    pub event_id: String,
    /// `kafka_offset`.
    pub offset: i64,
    /// Columns whose values changed.
    pub columns: Vec<String>,
    /// `audit_class/result` before.
    pub before: String,
    /// `audit_class/result` after.
    pub after: String,
}

/// The difference a replay makes to a range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// Rows the range holds now.
    pub rows_before: u64,
    /// Rows it will hold.
    pub rows_after: u64,
    /// Rows removed (no row of that `event_id` any more), per `audit_class/result`.
    pub removed: BTreeMap<String, u64>,
    /// Rows added (a new `event_id`), per `audit_class/result`.
    pub added: BTreeMap<String, u64>,
    /// Rows changed, per `class/result before -> after`.
    pub changed: BTreeMap<String, u64>,
    /// Rows the same but for when they were written.
    pub unchanged: u64,
    /// The first changed rows.
    pub sample: Vec<Change>,
}

impl Diff {
    /// Whether the replay changes nothing.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty() && self.changed.is_empty()
    }
}

/// The difference between the rows `old` and the rows `new` (at most `sample` changes named).
pub fn diff(old: Vec<RowDigest>, new: Vec<RowDigest>, sample: usize) -> Diff {
    let mut d = Diff {
        rows_before: old.len() as u64,
        rows_after: new.len() as u64,
        ..Diff::default()
    };
    let mut before: HashMap<String, Vec<RowDigest>> = HashMap::new();
    for r in old {
        before.entry(r.event_id.clone()).or_default().push(r);
    }
    let mut new = new;
    new.sort_by_key(|r| r.offset);
    for r in new {
        let Some(o) = before.get_mut(&r.event_id).and_then(Vec::pop) else {
            *d.added.entry(r.outcome).or_default() += 1;
            continue;
        };
        let columns: Vec<String> = r
            .values
            .iter()
            .filter(|(name, hash)| !o.values.iter().any(|(n, h)| n == name && h == hash))
            .map(|(name, _)| name.clone())
            .collect();
        if columns.is_empty() {
            d.unchanged += 1;
            continue;
        }
        *d.changed
            .entry(format!("{} -> {}", o.outcome, r.outcome))
            .or_default() += 1;
        if d.sample.len() < sample {
            d.sample.push(Change {
                event_id: r.event_id,
                offset: r.offset,
                columns,
                before: o.outcome,
                after: r.outcome,
            });
        }
    }
    for r in before.into_values().flatten() {
        *d.removed.entry(r.outcome).or_default() += 1;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, offset: i64, outcome: &str, statement: u64) -> RowDigest {
        RowDigest {
            event_id: id.into(),
            offset,
            outcome: outcome.into(),
            values: vec![
                (
                    "result".into(),
                    xxhash_rust::xxh3::xxh3_64(outcome.as_bytes()),
                ),
                ("statement".into(), statement),
            ],
        }
    }

    #[test]
    fn rows_are_matched_by_event_id() {
        let old = vec![
            row("a", 1, "WRITE/SUCCESS", 1),
            row("b", 2, "READ/SUCCESS", 2),
            row("c", 3, "DDL/SUCCESS", 3),
        ];
        let new = vec![
            row("a", 1, "WRITE/FAILURE", 1),
            row("b", 2, "READ/SUCCESS", 2),
            row("d", 4, "MISC/SUCCESS", 4),
        ];
        let d = diff(old, new, 10);
        assert_eq!((d.rows_before, d.rows_after, d.unchanged), (3, 3, 1));
        assert_eq!(d.removed, BTreeMap::from([("DDL/SUCCESS".into(), 1)]));
        assert_eq!(d.added, BTreeMap::from([("MISC/SUCCESS".into(), 1)]));
        assert_eq!(
            d.changed,
            BTreeMap::from([("WRITE/SUCCESS -> WRITE/FAILURE".into(), 1)])
        );
        assert_eq!(d.sample[0].columns, vec!["result".to_owned()]);
        assert!(!d.is_empty());
        let same = diff(vec![row("a", 1, "X/Y", 1)], vec![row("a", 1, "X/Y", 1)], 10);
        assert!(same.is_empty());
    }

    #[test]
    fn digests_ignore_when_a_row_was_written() {
        use crate::delta::{test_row, to_batch};
        let mut a = test_row(7);
        let mut b = a.clone();
        b.ingest_ts += chrono::Duration::days(3);
        let (da, db) = (
            digests(&[to_batch(&[a.clone()]).unwrap()]).unwrap(),
            digests(&[to_batch(&[b]).unwrap()]).unwrap(),
        );
        assert!(diff(da.clone(), db, 1).is_empty());
        a.kafka.offset += 1;
        let moved = diff(da, digests(&[to_batch(&[a]).unwrap()]).unwrap(), 1);
        assert_eq!(moved.sample[0].columns, vec!["kafka_offset".to_owned()]);
    }
}
