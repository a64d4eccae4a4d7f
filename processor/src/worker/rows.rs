//! Arrow building beside the consumer: rows are appended to their partition's Arrow builders on
//! a thread of their own, so the consumer thread (the pipeline's critical path) decodes, parses
//! and tracks outcomes while the previous rows are being built.
//!
//! Owns [`RowBuilder`] (the thread and its bounded queue) and [`Rows`] (one partition's rows:
//! the small chunk being filled on the consumer thread, and the partition's `RowBuffer`, which
//! the thread fills). Invariants:
//! - a partition's rows reach its `RowBuffer` in the order they were pushed (one queue, one
//!   thread);
//! - [`Rows::take`] returns every row pushed before it: it hands over the chunk being filled,
//!   then waits until the thread has built everything queued before;
//! - chunks are small and the queue is bounded: rows are built while they are still in cache,
//!   and the consumer waits rather than holding more than `QUEUE_CHUNKS` chunks unbuilt;
//! - built chunks go back to the consumer thread, which frees their rows (it allocated them)
//!   and fills the emptied vectors again;
//! - without the thread (`row_thread = false`, or it could not be started) rows are built on
//!   the consumer thread.
//!
//! Must not: touch anything of a partition but its rows; decide when to commit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;
use tracing::warn;

use crate::audit::AuditRow;
use crate::delta::RowBuffer;

/// Rows handed to the thread at once: small enough to be built while still in cache.
const CHUNK_ROWS: usize = 256;

/// Chunks queued before the consumer waits for the thread.
const QUEUE_CHUNKS: usize = 16;

/// A row waiting to be built.
struct Pending {
    row: AuditRow,
    ingest_ts: DateTime<Utc>,
    offset: i64,
}

/// A partition's Arrow buffer, filled by the thread.
struct Shared {
    topic: String,
    partition: i32,
    /// The buffer, and the first error building met (rows that do not fit the schema: fatal).
    buffer: Mutex<(RowBuffer, Option<ArrowError>)>,
    /// `RowBuffer::bytes` after the last chunk built.
    bytes: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, (RowBuffer, Option<ArrowError>)> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Builds `rows` and gives them back (to be freed by the thread that made them).
    fn build(&self, rows: Vec<Pending>) -> Vec<Pending> {
        let mut guard = self.lock();
        let (buffer, failed) = &mut *guard;
        for p in &rows {
            if failed.is_some() {
                break;
            }
            let r = buffer.push(&p.row, p.ingest_ts, &self.topic, self.partition, p.offset);
            if let Err(e) = r {
                *failed = Some(e);
            }
        }
        self.bytes.store(buffer.bytes(), Ordering::Relaxed);
        rows
    }
}

enum Job {
    Build(Arc<Shared>, Vec<Pending>),
    /// Answered once every job queued before it is done.
    Sync(SyncSender<()>),
}

/// The thread that builds rows, or none (rows are then built on the consumer thread).
pub(super) struct RowBuilder {
    queue: Option<SyncSender<Job>>,
    /// Chunks built, back to the consumer thread: their rows are freed where they were
    /// allocated, and the vectors are reused.
    done: Option<Receiver<Vec<Pending>>>,
}

impl RowBuilder {
    /// Starts the thread; without it (it cannot be started) rows are built inline.
    pub(super) fn start() -> RowBuilder {
        let (tx, rx) = sync_channel::<Job>(QUEUE_CHUNKS);
        let (back, done) = channel();
        let started = std::thread::Builder::new()
            .name("pgtrail-rows".into())
            .spawn(move || serve(rx, back));
        match started {
            Ok(_) => RowBuilder {
                queue: Some(tx),
                done: Some(done),
            },
            Err(e) => {
                warn!(error = %e, "Cannot start the row-building thread; building rows inline.");
                RowBuilder::inline()
            }
        }
    }

    /// Rows built on the calling thread.
    pub(super) fn inline() -> RowBuilder {
        RowBuilder {
            queue: None,
            done: None,
        }
    }

    /// An empty chunk: one given back by the thread (its rows freed here), or a new one.
    fn chunk(&self) -> Vec<Pending> {
        let mut spare = None;
        if let Some(done) = &self.done {
            while let Ok(mut v) = done.try_recv() {
                v.clear();
                spare = Some(v);
            }
        }
        spare.unwrap_or_else(|| Vec::with_capacity(CHUNK_ROWS))
    }

    fn send(&self, job: Job) -> Result<(), ArrowError> {
        match &self.queue {
            Some(q) => q.send(job).map_err(|_| stopped()),
            None => {
                run(job, None);
                Ok(())
            }
        }
    }

    /// Waits until every job queued so far is done.
    fn sync(&self) -> Result<(), ArrowError> {
        if self.queue.is_none() {
            return Ok(());
        }
        let (tx, rx) = sync_channel(1);
        self.send(Job::Sync(tx))?;
        rx.recv().map_err(|_| stopped())
    }
}

fn stopped() -> ArrowError {
    ArrowError::ComputeError("the row-building thread stopped".into())
}

fn run(job: Job, back: Option<&Sender<Vec<Pending>>>) {
    match job {
        Job::Build(shared, rows) => {
            let rows = shared.build(rows);
            if let Some(back) = back {
                let _ = back.send(rows);
            }
        }
        Job::Sync(done) => {
            let _ = done.send(());
        }
    }
}

/// The thread: builds until the worker (the queue's sender) is gone.
fn serve(rx: Receiver<Job>, back: Sender<Vec<Pending>>) {
    while let Ok(job) = rx.recv() {
        run(job, Some(&back));
    }
}

/// One partition's rows: pushed on the consumer thread, built on the builder's.
pub(super) struct Rows {
    shared: Arc<Shared>,
    chunk: Vec<Pending>,
    /// Text bytes of the chunk (its rows' estimated Arrow size).
    chunk_bytes: usize,
    /// Rows held (pushed, not taken).
    rows: usize,
}

impl Rows {
    pub(super) fn new(topic: &str, partition: i32) -> Rows {
        Rows {
            shared: Arc::new(Shared {
                topic: topic.to_owned(),
                partition,
                buffer: Mutex::new((RowBuffer::default(), None)),
                bytes: AtomicUsize::new(0),
            }),
            chunk: Vec::with_capacity(CHUNK_ROWS),
            chunk_bytes: 0,
            rows: 0,
        }
    }

    /// Appends a row (the Kafka offset of the record it came from; `ingest_ts`: now).
    pub(super) fn push(
        &mut self,
        builder: &RowBuilder,
        row: AuditRow,
        ingest_ts: DateTime<Utc>,
        offset: i64,
    ) -> Result<(), ArrowError> {
        self.chunk_bytes += row.text_len();
        self.chunk.push(Pending {
            row,
            ingest_ts,
            offset,
        });
        self.rows += 1;
        if self.chunk.len() >= CHUNK_ROWS {
            self.hand_over(builder)?;
        }
        Ok(())
    }

    fn hand_over(&mut self, builder: &RowBuilder) -> Result<(), ArrowError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, builder.chunk());
        self.chunk_bytes = 0;
        builder.send(Job::Build(Arc::clone(&self.shared), chunk))
    }

    /// Rows held.
    pub(super) fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is held.
    pub(super) fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Memory held: what the builders hold after the last chunk built, plus the rows not yet
    /// built (their text; queued chunks are at most `QUEUE_CHUNKS * CHUNK_ROWS` rows in all).
    pub(super) fn bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Relaxed) + 2 * self.chunk_bytes
    }

    /// Every row held, as batches; none are held afterwards.
    pub(super) fn take(&mut self, builder: &RowBuilder) -> Result<Vec<RecordBatch>, ArrowError> {
        self.hand_over(builder)?;
        builder.sync()?;
        let mut guard = self.shared.lock();
        let (buffer, failed) = &mut *guard;
        if let Some(e) = failed.take() {
            return Err(e);
        }
        let batches = buffer.take()?;
        self.shared.bytes.store(0, Ordering::Relaxed);
        self.rows = 0;
        Ok(batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::test_row;
    use deltalake::arrow::array::{Array, Int32Array, Int64Array};

    fn offsets(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let col = b.column_by_name("kafka_offset").expect("kafka_offset");
                let col = col.as_any().downcast_ref::<Int64Array>().expect("int64");
                (0..col.len()).map(|i| col.value(i)).collect::<Vec<_>>()
            })
            .collect()
    }

    fn push(rows: &mut Rows, builder: &RowBuilder, range: std::ops::Range<i64>) {
        for i in range {
            let r = test_row(i);
            rows.push(builder, r.row, r.ingest_ts, r.kafka.offset)
                .unwrap();
        }
    }

    #[test]
    fn take_returns_every_row_pushed_in_order() {
        for builder in [RowBuilder::start(), RowBuilder::inline()] {
            let (mut a, mut b) = (Rows::new("t", 0), Rows::new("t", 1));
            let n = 3 * CHUNK_ROWS as i64 + 7;
            // Interleaved partitions, chunks handed over mid-way and a partial chunk left.
            push(&mut a, &builder, 0..n);
            push(&mut b, &builder, 1000..1010);
            assert_eq!((a.len(), b.len()), (n as usize, 10));
            let taken = a.take(&builder).unwrap();
            assert_eq!(offsets(&taken), (0..n).collect::<Vec<_>>());
            assert!(a.is_empty() && a.bytes() == 0);
            // Every row is in the partition's own buffer (topic and partition columns).
            let parts = taken[0]
                .column_by_name("kafka_partition")
                .unwrap()
                .as_any()
                .downcast_ref::<Int32Array>()
                .unwrap()
                .value(0);
            assert_eq!(parts, 0);
            // Rows pushed after a take are the next take's.
            push(&mut a, &builder, n..n + 5);
            assert_eq!(a.len(), 5);
            assert!(a.bytes() > 0);
            assert_eq!(
                offsets(&a.take(&builder).unwrap()),
                (n..n + 5).collect::<Vec<_>>()
            );
            assert_eq!(
                offsets(&b.take(&builder).unwrap()),
                (1000..1010).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn bytes_grow_as_rows_are_built() {
        let builder = RowBuilder::start();
        let mut a = Rows::new("t", 0);
        push(&mut a, &builder, 0..CHUNK_ROWS as i64 * 4);
        builder.sync().unwrap();
        // Built rows are counted by the buffer: at least their 100-byte raw texts.
        assert!(a.bytes() >= CHUNK_ROWS * 4 * 100, "{}", a.bytes());
    }
}
