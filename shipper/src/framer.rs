//! Record framing: turns the byte stream of one log file into whole PostgreSQL log records.
//!
//! Owns [`Framer`] (buffering, offsets, truncation of oversized records) and the per-format
//! boundary scanners in `framer/`. Invariants: frames come out in file order; each frame's
//! `offset` is the file offset of its first byte; with no truncation the concatenation of all
//! frames equals the input; the result does not depend on how the input was split into chunks
//! (property-tested). Memory is bounded by `max_record_bytes` plus one chunk, whatever the
//! input. Must not: parse SQL or fields of a record (the session key lives in `key.rs`).

mod csv;
mod json;
mod stderr;

use pgtrail_avro::LogFormat;

/// One whole record, borrowed from the framer's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// File offset of the first byte.
    pub offset: u64,
    /// The record bytes (the first `max_record_bytes` of them when truncated).
    pub data: &'a [u8],
    /// Length of the whole record in the file.
    pub len: u64,
    /// Whether `data` is shorter than the record.
    pub truncated: bool,
}

/// A format's record boundary scanner: a tiny state machine over bytes.
trait Scanner {
    /// Scans `bytes`, which continue the stream where the last call stopped, and returns the
    /// length of the prefix that completes the current record, or `None` when all of `bytes`
    /// belongs to the current, still incomplete record.
    fn boundary(&mut self, bytes: &[u8]) -> Option<usize>;
    /// Whether the bytes scanned so far end exactly at a possible record end (a newline outside
    /// quotes), so that flushing them at end of input yields a whole record.
    fn at_record_end(&self) -> bool;
    /// Forgets all state (after a flush).
    fn reset(&mut self);
}

enum AnyScanner {
    Csv(csv::CsvScanner),
    Json(json::JsonScanner),
    Stderr(stderr::StderrScanner),
}

impl AnyScanner {
    fn get(&mut self) -> &mut dyn Scanner {
        match self {
            AnyScanner::Csv(s) => s,
            AnyScanner::Json(s) => s,
            AnyScanner::Stderr(s) => s,
        }
    }
    fn get_ref(&self) -> &dyn Scanner {
        match self {
            AnyScanner::Csv(s) => s,
            AnyScanner::Json(s) => s,
            AnyScanner::Stderr(s) => s,
        }
    }
}

/// Incremental framer for one file.
pub struct Framer {
    scanner: AnyScanner,
    max_record: usize,
    /// Bytes of the current incomplete record (at most `max_record` of them while truncating).
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_offset: u64,
    /// How many bytes of `buf` the scanner has seen.
    scanned: usize,
    /// Bytes of the current record dropped beyond `max_record` (truncation in progress).
    dropped: u64,
}

impl Framer {
    /// The largest record kept whole.
    pub fn max_record(&self) -> usize {
        self.max_record
    }

    /// A framer for `format` that starts at file offset `offset` (a record boundary).
    pub fn new(format: LogFormat, max_record_bytes: usize, offset: u64) -> Self {
        let scanner = match format {
            LogFormat::Csvlog => AnyScanner::Csv(csv::CsvScanner::default()),
            LogFormat::Jsonlog => AnyScanner::Json(json::JsonScanner),
            LogFormat::Stderr => AnyScanner::Stderr(stderr::StderrScanner::default()),
        };
        Framer {
            scanner,
            max_record: max_record_bytes.max(1),
            buf: Vec::new(),
            buf_offset: offset,
            scanned: 0,
            dropped: 0,
        }
    }

    /// File offset just past the last byte fed.
    pub fn end_offset(&self) -> u64 {
        self.buf_offset + self.buf.len() as u64 + self.dropped
    }

    /// Bytes fed but not yet part of an emitted frame.
    pub fn pending_bytes(&self) -> u64 {
        self.buf.len() as u64 + self.dropped
    }

    /// Whether the pending bytes end where a record may end (newline outside quotes), so that
    /// [`Framer::flush`] would emit a well-formed record.
    pub fn pending_is_terminated(&self) -> bool {
        self.pending_bytes() > 0 && self.scanner.get_ref().at_record_end()
    }

    /// Feeds the next bytes of the file; calls `emit` for each record they complete.
    pub fn feed<F: FnMut(Frame<'_>) + ?Sized>(&mut self, mut chunk: &[u8], emit: &mut F) {
        while self.dropped > 0 && !chunk.is_empty() {
            // Truncating an oversized record: scan without keeping the bytes.
            match self.scanner.get().boundary(chunk) {
                Some(n) => {
                    self.dropped += n as u64;
                    self.emit_pending(emit);
                    chunk = &chunk[n..];
                }
                None => {
                    self.dropped += chunk.len() as u64;
                    return;
                }
            }
        }
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while self.scanned < self.buf.len() {
            match self.scanner.get().boundary(&self.buf[self.scanned..]) {
                Some(n) => {
                    let end = self.scanned + n;
                    let record = &self.buf[start..end];
                    emit(frame(
                        self.buf_offset + start as u64,
                        record,
                        record.len() as u64,
                        self.max_record,
                    ));
                    start = end;
                    self.scanned = end;
                }
                None => self.scanned = self.buf.len(),
            }
        }
        self.buf.drain(..start);
        self.buf_offset += start as u64;
        self.scanned -= start;
        if self.buf.len() > self.max_record {
            self.dropped = (self.buf.len() - self.max_record) as u64;
            self.buf.truncate(self.max_record);
            self.scanned = self.buf.len();
        }
    }

    /// Emits the pending bytes as one record (end of a file, or a final record that never got
    /// its newline). Does nothing when nothing is pending. When the bytes do not end where a
    /// record may end (a record cut mid-way, e.g. inside a quoted csvlog field), the scanner
    /// keeps its state: should the writer complete the record after all, the rest is framed
    /// as the rest of that record (quote state included), and the records after it as
    /// before.
    pub fn flush<F: FnMut(Frame<'_>) + ?Sized>(&mut self, emit: &mut F) {
        if self.pending_bytes() > 0 {
            let complete = self.scanner.get_ref().at_record_end();
            self.emit(emit, complete);
        }
    }

    fn emit_pending<F: FnMut(Frame<'_>) + ?Sized>(&mut self, emit: &mut F) {
        self.emit(emit, true);
    }

    /// Emits the pending bytes; `complete`: they end at a record boundary (the scanner starts
    /// over).
    fn emit<F: FnMut(Frame<'_>) + ?Sized>(&mut self, emit: &mut F, complete: bool) {
        let len = self.buf.len() as u64 + self.dropped;
        emit(frame(self.buf_offset, &self.buf, len, self.max_record));
        self.buf_offset += len;
        self.buf.clear();
        self.scanned = 0;
        self.dropped = 0;
        if complete {
            self.scanner.get().reset();
        }
    }
}

fn frame(offset: u64, data: &[u8], len: u64, max: usize) -> Frame<'_> {
    let kept = &data[..data.len().min(max)];
    Frame {
        offset,
        data: kept,
        len,
        truncated: (kept.len() as u64) < len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Issue 17, item 10: an idle flush of a csvlog record cut inside a quoted field reset the
    /// quote state; when the writer then completed the record, its rest and the records
    /// after it were framed with the quotes inverted.
    #[test]
    fn a_record_completed_after_an_idle_flush_keeps_its_quote_state() {
        let mut f = Framer::new(LogFormat::Csvlog, 1 << 20, 0);
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut emit = |fr: Frame<'_>| out.push(fr.data.to_vec());
        f.feed(b"0,\"a\"\n1,\"b\nc", &mut emit);
        f.flush(&mut emit);
        f.feed(b"d\",x\n2,\"e\nf\",y\n", &mut emit);
        let texts: Vec<&[u8]> = out.iter().map(Vec::as_slice).collect();
        assert_eq!(
            texts,
            [
                &b"0,\"a\"\n"[..],
                b"1,\"b\nc",
                b"d\",x\n",
                b"2,\"e\nf\",y\n"
            ]
        );
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Owned {
        offset: u64,
        data: Vec<u8>,
        len: u64,
        truncated: bool,
    }

    fn frame_all(format: LogFormat, input: &[u8], splits: &[usize], max: usize) -> Vec<Owned> {
        let mut f = Framer::new(format, max, 0);
        let mut out = Vec::new();
        let mut emit = |fr: Frame<'_>| {
            out.push(Owned {
                offset: fr.offset,
                data: fr.data.to_vec(),
                len: fr.len,
                truncated: fr.truncated,
            })
        };
        let mut cuts: Vec<usize> = splits.iter().map(|s| s % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut prev = 0;
        for c in cuts.into_iter().chain([input.len()]) {
            f.feed(&input[prev..c], &mut emit);
            prev = c;
        }
        f.flush(&mut emit);
        out
    }

    fn records(format: LogFormat, input: &[u8]) -> Vec<String> {
        frame_all(format, input, &[], usize::MAX)
            .into_iter()
            .map(|o| String::from_utf8(o.data).unwrap())
            .collect()
    }

    #[test]
    fn csv_quoted_newlines_stay_in_one_record() {
        let input = b"a,\"x\ny\",1\nb,\"he said \"\"hi\"\"\n\",2\nc,3\n";
        assert_eq!(
            records(LogFormat::Csvlog, input),
            ["a,\"x\ny\",1\n", "b,\"he said \"\"hi\"\"\n\",2\n", "c,3\n"]
        );
    }

    #[test]
    fn json_one_object_per_line() {
        assert_eq!(
            records(LogFormat::Jsonlog, b"{\"a\":\"x\\ny\"}\n{}\n"),
            ["{\"a\":\"x\\ny\"}\n", "{}\n"]
        );
    }

    #[test]
    fn stderr_tab_continuations_belong_to_the_record_above() {
        let input =
            b"L1 LOG:  AUDIT: x\n\tmore\n\tand more\nL2 ERROR:  boom\nL3 STATEMENT:  select\n\t1\n";
        assert_eq!(
            records(LogFormat::Stderr, input),
            [
                "L1 LOG:  AUDIT: x\n\tmore\n\tand more\n",
                "L2 ERROR:  boom\n",
                "L3 STATEMENT:  select\n\t1\n"
            ]
        );
    }

    #[test]
    fn incomplete_record_waits_until_flushed() {
        let mut f = Framer::new(LogFormat::Csvlog, 1 << 20, 100);
        let mut got = Vec::new();
        f.feed(b"a,1\nb,\"open", &mut |fr| {
            got.push((fr.offset, fr.data.to_vec()))
        });
        assert_eq!(got, [(100, b"a,1\n".to_vec())]);
        assert!(!f.pending_is_terminated());
        assert_eq!(f.pending_bytes(), 7);
        f.flush(&mut |fr| got.push((fr.offset, fr.data.to_vec())));
        assert_eq!(got[1], (104, b"b,\"open".to_vec()));
        assert_eq!(f.end_offset(), 111);
    }

    #[test]
    fn stderr_last_line_is_terminated_but_pending() {
        let mut f = Framer::new(LogFormat::Stderr, 1 << 20, 0);
        let mut n = 0;
        f.feed(b"x LOG:  a\n", &mut |_| n += 1);
        assert_eq!(n, 0, "a continuation line may still follow");
        assert!(f.pending_is_terminated());
    }

    #[test]
    fn oversized_records_are_truncated_with_their_length() {
        let mut input = b"short\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 5000));
        input.extend_from_slice(b"\nafter\n");
        for splits in [vec![], vec![10, 100, 3000, 4999]] {
            let out = frame_all(LogFormat::Jsonlog, &input, &splits, 1000);
            assert_eq!(out.len(), 3, "{splits:?}");
            assert_eq!(out[1].offset, 6);
            assert_eq!(out[1].data.len(), 1000);
            assert_eq!(out[1].len, 5001);
            assert!(out[1].truncated);
            assert_eq!(out[2].offset, 5007);
            assert_eq!(out[2].data, b"after\n");
        }
    }

    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"\n".to_vec()),
            Just(b"\t".to_vec()),
            Just(b"\"".to_vec()),
            Just(b",".to_vec()),
            Just(b"\"\"".to_vec()),
            "[a-z é]{1,12}".prop_map(String::into_bytes),
        ];
        proptest::collection::vec(piece, 0..80).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn split_points_do_not_change_records(
            f in 0usize..3,
            input in arb_stream(),
            splits in proptest::collection::vec(any::<usize>(), 0..12),
            max in prop_oneof![Just(usize::MAX), 1usize..64],
        ) {
            let format = LogFormat::ALL[f];
            let whole = frame_all(format, &input, &[], max);
            let split = frame_all(format, &input, &splits, max);
            prop_assert_eq!(&whole, &split);
            // Offsets are contiguous and lengths cover the whole input.
            let mut next = 0;
            for o in &whole {
                prop_assert_eq!(o.offset, next);
                next += o.len;
            }
            prop_assert_eq!(next, input.len() as u64);
            if max == usize::MAX {
                let joined: Vec<u8> = whole.iter().flat_map(|o| o.data.clone()).collect();
                prop_assert_eq!(joined, input);
            }
        }
    }
}
