//! One CSV row split into fields, fast: [`split_row`] splits the common shape in place (fields
//! borrow from the text, only a field with `""` inside is copied, unescaped); anything else is
//! read by [`read_row`], a `csv_core` reader built once per thread and reset per row (a new
//! `csv::Reader` per row spent most of its time building its DFA), writing into per-thread
//! buffers a dropped row hands back (no allocation per row).
//!
//! Owns [`CsvRow`], [`read_row`], [`Split`] and [`split_row`]. Invariant: fields are exactly
//! what the `csv` crate reads for the same bytes (property-tested); bytes that are not UTF-8
//! are replaced (U+FFFD), the raw record keeps them. Must not: accept a second row silently.

use std::borrow::Cow;
use std::cell::RefCell;

use csv_core::{ReadRecordResult, Reader};

/// A parsed row: the unescaped text of all fields and where each ends.
#[derive(Debug, Default)]
pub struct CsvRow {
    text: String,
    ends: Vec<usize>,
}

impl CsvRow {
    /// Number of fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the row has no field.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `i`, or `""` past the end.
    pub fn get(&self, i: usize) -> &str {
        let Some(&end) = self.ends.get(i) else {
            return "";
        };
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end).unwrap_or("")
    }

    /// All fields.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).map(|i| self.get(i))
    }
}

impl Drop for CsvRow {
    fn drop(&mut self) {
        let text = std::mem::take(&mut self.text).into_bytes();
        let ends = std::mem::take(&mut self.ends);
        // Keep the larger buffers, up to a bound (one huge record must not pin its size);
        // `try_with` because a thread may be exiting.
        let _ = SPARE.try_with(|s| {
            let mut s = s.borrow_mut();
            if text.capacity() > s.0.capacity() && text.capacity() <= SPARE_MAX {
                s.0 = text;
            }
            if ends.capacity() > s.1.capacity() {
                s.1 = ends;
            }
        });
    }
}

/// Largest text buffer kept for reuse, in bytes.
const SPARE_MAX: usize = 1 << 20;

thread_local! {
    static READER: RefCell<Reader> = RefCell::new(Reader::new());
    /// Output buffers of a dropped row, reused by the next one.
    static SPARE: RefCell<(Vec<u8>, Vec<usize>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Reads exactly one row from `input` (a trailing newline is allowed), any shape.
pub fn read_row(input: &[u8]) -> Result<CsvRow, String> {
    let (mut out, mut ends) = SPARE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    split_csv_core(input, &mut out, &mut ends)?;
    let text = match String::from_utf8(out) {
        Ok(t) => t,
        Err(e) => {
            // Replace invalid bytes field by field so that field ends stay right.
            let bytes = e.into_bytes();
            let mut text = String::with_capacity(bytes.len());
            let mut start = 0;
            for end in ends.iter_mut() {
                text.push_str(&String::from_utf8_lossy(&bytes[start..*end]));
                start = *end;
                *end = text.len();
            }
            text
        }
    };
    Ok(CsvRow { text, ends })
}

/// Most fields a borrowed split holds (csvlog has 26, a pgaudit entry 10); a row with more is
/// read by [`read_row`].
const MAX_FIELDS: usize = 32;

/// One row's fields: borrowed from the text when it has the common shape, else copied.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // The large variant is the common one: boxing it would
// allocate per row, which is what it exists to avoid.
pub enum Split<'a> {
    /// Fields as ranges of the text (32-bit: the split is returned by value).
    Borrowed {
        /// The row's text.
        text: &'a str,
        /// Field ranges; only the first `len` are set.
        spans: [(u32, u32); MAX_FIELDS],
        /// Bit `i`: field `i` has `""` inside, to be made `"`.
        escaped: u32,
        /// Number of fields.
        len: usize,
    },
    /// Any other row, read by [`read_row`].
    Owned(CsvRow),
}

impl<'a> Split<'a> {
    /// Number of fields.
    pub fn len(&self) -> usize {
        match self {
            Split::Borrowed { len, .. } => *len,
            Split::Owned(row) => row.len(),
        }
    }

    /// Whether the row has no field.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Field `i` (`""` past the end): borrowed unless it had to be unescaped or copied.
    /// Inlined: called for every field, the call itself was a third of its cost.
    #[inline]
    pub fn get(&self, i: usize) -> Cow<'a, str> {
        match self {
            Split::Borrowed {
                text,
                spans,
                escaped,
                len,
            } => {
                let Some(&(start, end)) = spans[..*len].get(i) else {
                    return Cow::Borrowed("");
                };
                let field = text.get(start as usize..end as usize).unwrap_or("");
                if escaped & (1 << i) != 0 {
                    Cow::Owned(unescape(field))
                } else {
                    Cow::Borrowed(field)
                }
            }
            Split::Owned(row) => Cow::Owned(row.get(i).to_owned()),
        }
    }
}

/// A quoted field's content with each `""` made `"` (the split checked that every quote
/// inside is doubled).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(q) = memchr::memchr(b'"', rest.as_bytes()) {
        out.push_str(rest.get(..=q).unwrap_or(rest));
        rest = rest.get(q + 2..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

/// Splits exactly one row of `text` (a trailing newline is allowed), borrowing its fields in
/// the common shape (see [`split_spans`]), else through [`read_row`].
pub fn split_row(text: &str) -> Result<Split<'_>, String> {
    let mut spans = [(0, 0); MAX_FIELDS];
    match split_spans(text.as_bytes(), &mut spans) {
        Some((escaped, len)) => Ok(Split::Borrowed {
            text,
            spans,
            escaped,
            len,
        }),
        None => read_row(text.as_bytes()).map(Split::Owned),
    }
}

/// The common shape, fast: fields plain or quoted (`""` inside), one row ending in `\n` or at
/// the end, no `\r` anywhere. Quoted fields are found by `memchr`, plain ones eight bytes at a
/// time ([`plain_len`]). Writes the fields' ranges into `spans` and returns the escaped-field
/// bits and the number of fields; `None` at anything else (`\r`, a quote inside a plain field,
/// text after a closing quote, an unterminated quote, a second row, a leading blank line, more
/// than [`MAX_FIELDS`] fields, an input of 4 GiB), which `csv_core` then reads: it decides
/// every unusual case. Delimiters are ASCII, so every range is on UTF-8 boundaries.
fn split_spans(input: &[u8], spans: &mut [(u32, u32); MAX_FIELDS]) -> Option<(u32, usize)> {
    let n = input.len();
    if n == 0
        || u32::try_from(n).is_err()
        || input[0] == b'\n'
        || memchr::memchr(b'\r', input).is_some()
    {
        return None;
    }
    let mut escaped_bits = 0u32;
    let mut len = 0;
    let mut i = 0;
    loop {
        let span = if input.get(i) == Some(&b'"') {
            i += 1;
            let start = i;
            let mut escaped = false;
            loop {
                let q = memchr::memchr(b'"', &input[i..])?;
                i += q + 1;
                if input.get(i) == Some(&b'"') {
                    escaped = true;
                    i += 1;
                } else {
                    break;
                }
            }
            (start, i - 1, escaped)
        } else {
            let start = i;
            i += plain_len(&input[i..]);
            (start, i, false)
        };
        // In range: the input is below 4 GiB.
        *spans.get_mut(len)? = (span.0 as u32, span.1 as u32);
        if span.2 {
            escaped_bits |= 1 << len;
        }
        len += 1;
        match input.get(i) {
            None => return Some((escaped_bits, len)),
            Some(b',') => i += 1,
            Some(b'\n') => {
                return input[i + 1..]
                    .iter()
                    .all(u8::is_ascii_whitespace)
                    .then_some((escaped_bits, len));
            }
            Some(_) => return None,
        }
    }
}

/// Length of the plain field text at the start of `s`: up to the first `,`, `\n` or `"`.
/// Eight bytes per step (SWAR zero-byte test: exact for the first match, which is all that is
/// read), the tail byte by byte.
fn plain_len(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let hits = zero_bytes(w ^ (ONES * u64::from(b',')))
            | zero_bytes(w ^ (ONES * u64::from(b'\n')))
            | zero_bytes(w ^ (ONES * u64::from(b'"')));
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < s.len() && !matches!(s[i], b',' | b'\n' | b'"') {
        i += 1;
    }
    i
}

/// Any row, as the `csv` crate reads it.
fn split_csv_core(input: &[u8], out: &mut Vec<u8>, ends: &mut Vec<usize>) -> Result<(), String> {
    out.clear();
    ends.clear();
    // Contents are overwritten: only the length matters.
    out.resize(input.len() + 16, 0);
    ends.resize(32, 0);
    READER.with(|r| {
        let mut rdr = r.borrow_mut();
        rdr.reset();
        let (mut inp, mut nout, mut nend) = (input, 0usize, 0usize);
        let mut at_eof = false;
        loop {
            let (res, nin, o, e) = rdr.read_record(inp, &mut out[nout..], &mut ends[nend..]);
            inp = &inp[nin..];
            nout += o;
            nend += e;
            match res {
                ReadRecordResult::InputEmpty => {
                    if at_eof {
                        return Err("csv: no row".into());
                    }
                    at_eof = inp.is_empty();
                }
                ReadRecordResult::OutputFull => out.resize(out.len() * 2, 0),
                ReadRecordResult::OutputEndsFull => ends.resize(ends.len() * 2, 0),
                ReadRecordResult::Record => break,
                ReadRecordResult::End => return Err("csv: no row".into()),
            }
        }
        if inp.iter().any(|b| !b.is_ascii_whitespace()) {
            return Err("csv: more than one row in one record".into());
        }
        ends.truncate(nend);
        out.truncate(nout);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quoting_and_errors() {
        let r = read_row(b"a,\"b,\"\"c\"\"\nd\",,e\n").unwrap();
        assert_eq!(r.iter().collect::<Vec<_>>(), ["a", "b,\"c\"\nd", "", "e"]);
        assert!(
            read_row(b"a\nb\n")
                .unwrap_err()
                .contains("more than one row")
        );
        assert!(read_row(b"").is_err());
        let r = read_row(b"x,\xff\xfe,y").unwrap();
        assert_eq!(r.get(2), "y");
        assert_eq!(r.get(1), "\u{fffd}\u{fffd}");
    }

    fn via_csv_core(input: &[u8]) -> Result<(Vec<u8>, Vec<usize>), String> {
        let (mut out, mut ends) = (Vec::new(), Vec::new());
        split_csv_core(input, &mut out, &mut ends).map(|()| (out, ends))
    }

    proptest! {
        #[test]
        fn plain_len_finds_the_first_delimiter(s in proptest::collection::vec(prop_oneof![Just(b','), Just(b'\n'), Just(b'"'), any::<u8>()], 0..40)) {
            let expected = s.iter().position(|b| matches!(b, b',' | b'\n' | b'"')).unwrap_or(s.len());
            prop_assert_eq!(plain_len(&s), expected);
        }

        /// Wherever the fast path answers, it answers what csv_core does.
        #[test]
        fn fast_path_agrees_with_csv_core(input in "[ab,\"\n\r é]{0,24}") {
            if let Ok(split @ Split::Borrowed { .. }) = split_row(&input) {
                let (out, ends) = via_csv_core(input.as_bytes()).unwrap();
                let mut start = 0;
                let fields: Vec<String> = ends.iter().map(|&end| {
                    let f = String::from_utf8(out[start..end].to_vec()).unwrap();
                    start = end;
                    f
                }).collect();
                prop_assert_eq!((0..split.len()).map(|i| split.get(i).into_owned()).collect::<Vec<_>>(), fields, "{:?}", input);
            }
        }

        /// The borrowed split reads what the copying one reads, whatever the input.
        #[test]
        fn borrowed_split_agrees_with_read_row(input in "[ab,\"\n\r é]{0,24}") {
            let split = split_row(&input).map(|s| (0..s.len()).map(|i| s.get(i).into_owned()).collect::<Vec<_>>());
            let row = read_row(input.as_bytes()).map(|r| r.iter().map(str::to_owned).collect::<Vec<_>>());
            prop_assert_eq!(split, row, "{:?}", input);
        }

        #[test]
        fn agrees_with_the_csv_crate(fields in proptest::collection::vec("[a-z,\"\n ]{0,8}", 1..6)) {
            let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
            w.write_record(&fields).unwrap();
            let bytes = w.into_inner().unwrap();
            let row = read_row(&bytes).unwrap();
            let text = std::str::from_utf8(&bytes).unwrap();
            // Well-formed rows take the fast path.
            let split = split_row(text).unwrap();
            prop_assert!(matches!(split, Split::Borrowed { .. }), "{:?}", text);
            let mut rd = csv::ReaderBuilder::new().has_headers(false).from_reader(&bytes[..]);
            let mut expected = csv::StringRecord::new();
            rd.read_record(&mut expected).unwrap();
            prop_assert_eq!(row.iter().collect::<Vec<_>>(), expected.iter().collect::<Vec<_>>());
            prop_assert!((0..split.len()).map(|i| split.get(i)).eq(expected.iter()));
        }
    }
}
