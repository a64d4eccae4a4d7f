//! String columns built from plain vectors whose value bytes are recycled: the buffers of a
//! committed batch come back ([`recycle`]) and later batches fill them, instead of the
//! allocator handing out fresh memory for every batch (each fresh page faulted in, and a
//! freed buffer counted in RSS until the allocator returned it to the OS a second later).
//!
//! Owns [`TextColumn`] and the process-wide pool of value buffers. Invariants: the pool holds
//! at most [`POOL_MAX_BYTES`] of capacity; a buffer is taken back only when nothing else refers
//! to it (`Buffer::into_vec` checks); a column reads exactly the strings appended to it.
//! Must not: hold a buffer some array still uses.

use std::sync::{Mutex, PoisonError};

use deltalake::arrow::array::{Array, ArrayRef, MapArray, NullBufferBuilder, StringArray};
use deltalake::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;

/// Capacity the pool keeps at most, in bytes (more than the text columns of one flush at the
/// default flush size ask for).
const POOL_MAX_BYTES: usize = 128 << 20;

/// Value buffers of committed batches, empty, waiting for the next columns.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty buffer of at least `capacity` bytes: the smallest pooled one that fits, else new.
fn take(capacity: usize) -> Vec<u8> {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let best = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= capacity)
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i);
    match best {
        Some(i) => pool.swap_remove(i),
        None => Vec::with_capacity(capacity),
    }
}

/// Takes back the value buffers of `batches` that nothing else holds (call once they are
/// written and their writer is gone).
pub fn recycle(batches: Vec<RecordBatch>) {
    let freed = reclaim(batches);
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let mut total: usize = pool.iter().map(Vec::capacity).sum();
    for v in freed {
        if total + v.capacity() <= POOL_MAX_BYTES {
            total += v.capacity();
            pool.push(v);
        }
    }
}

/// The string value buffers of `batches` that nothing else holds, emptied.
fn reclaim(batches: Vec<RecordBatch>) -> Vec<Vec<u8>> {
    let mut freed = Vec::new();
    for batch in batches {
        let (_, columns, _) = batch.into_parts();
        for column in columns {
            collect(column, &mut freed);
        }
    }
    for v in &mut freed {
        v.clear();
    }
    freed
}

/// The value buffers of a string column (or of a map's strings) when they are not shared.
fn collect(column: ArrayRef, out: &mut Vec<Vec<u8>>) {
    let data = column.to_data();
    // The array's own reference goes: the buffers are then held by `data` alone.
    drop(column);
    match data.data_type() {
        DataType::Utf8 => {
            let (_, values, _) = StringArray::from(data).into_parts();
            if let Ok(v) = values.into_vec::<u8>() {
                out.push(v);
            }
        }
        DataType::Map(..) => {
            let (_, _, entries, _, _) = MapArray::from(data).into_parts();
            let (_, arrays, _) = entries.into_parts();
            for a in arrays {
                collect(a, out);
            }
        }
        _ => {}
    }
}

/// One string column being filled.
pub struct TextColumn {
    values: Vec<u8>,
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl TextColumn {
    /// Room for `rows` strings of `bytes` bytes in all (the bytes from the pool).
    pub fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        TextColumn {
            values: take(bytes),
            offsets,
            nulls: NullBufferBuilder::new(rows),
        }
    }

    fn end(&self) -> Result<i32, ArrowError> {
        i32::try_from(self.values.len())
            .map_err(|_| ArrowError::ComputeError("more than 2 GiB of text in one batch".into()))
    }

    /// Appends `s`.
    #[inline]
    pub fn append_value(&mut self, s: &str) -> Result<(), ArrowError> {
        self.values.extend_from_slice(s.as_bytes());
        let end = self.end()?;
        self.offsets.push(end);
        self.nulls.append_non_null();
        Ok(())
    }

    /// Appends `s`, or a null.
    #[inline]
    pub fn append_option(&mut self, s: Option<&str>) -> Result<(), ArrowError> {
        match s {
            Some(s) => self.append_value(s),
            None => {
                let end = self.end()?;
                self.offsets.push(end);
                self.nulls.append_null();
                Ok(())
            }
        }
    }

    /// The bytes appended.
    pub fn values_len(&self) -> usize {
        self.values.len()
    }

    /// The column.
    pub fn finish(mut self) -> Result<StringArray, ArrowError> {
        let nulls = self.nulls.finish();
        StringArray::try_new(
            OffsetBuffer::new(ScalarBuffer::from(self.offsets)),
            Buffer::from_vec(self.values),
            nulls,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn columns_read_back_and_written_buffers_come_back() {
        let mut c = TextColumn::with_capacity(3, 1 << 20);
        c.append_value("a").unwrap();
        c.append_option(None).unwrap();
        c.append_value("çé").unwrap();
        let array = c.finish().unwrap();
        assert_eq!(
            array.iter().collect::<Vec<_>>(),
            [Some("a"), None, Some("çé")]
        );
        let ptr = array.values().as_ptr();
        let schema = Arc::new(deltalake::arrow::datatypes::Schema::new(vec![
            deltalake::arrow::datatypes::Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(array)]).unwrap();
        // Still shared: nothing comes back.
        let held = batch.clone();
        assert!(reclaim(vec![batch]).is_empty());
        // The last reference: its buffer comes back, empty, with its capacity.
        let back = reclaim(vec![held]);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].as_ptr(), ptr);
        assert!(back[0].is_empty() && back[0].capacity() >= 1 << 20);
    }
}
