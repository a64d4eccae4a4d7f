//! One CSV row split into fields, fast: a `csv_core` reader built once per thread and reset
//! per row, instead of a new `csv::Reader` (whose DFA construction dominated parsing time).
//!
//! Owns [`CsvRow`] and [`read_row`]. Invariant: fields are exactly what the `csv` crate reads
//! for the same bytes (property-tested); bytes that are not UTF-8 are replaced (U+FFFD), the
//! raw record keeps them. Must not: accept a second row silently.

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

thread_local! {
    static READER: RefCell<Reader> = RefCell::new(Reader::new());
}

/// Reads exactly one row from `input` (a trailing newline is allowed).
pub fn read_row(input: &[u8]) -> Result<CsvRow, String> {
    READER.with(|r| {
        let mut rdr = r.borrow_mut();
        rdr.reset();
        let mut out = vec![0u8; input.len() + 16];
        let mut ends = vec![0usize; 32];
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

    proptest! {
        #[test]
        fn agrees_with_the_csv_crate(fields in proptest::collection::vec("[a-z,\"\n ]{0,8}", 1..6)) {
            let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
            w.write_record(&fields).unwrap();
            let bytes = w.into_inner().unwrap();
            let row = read_row(&bytes).unwrap();
            let mut rd = csv::ReaderBuilder::new().has_headers(false).from_reader(&bytes[..]);
            let mut expected = csv::StringRecord::new();
            rd.read_record(&mut expected).unwrap();
            prop_assert_eq!(row.iter().collect::<Vec<_>>(), expected.iter().collect::<Vec<_>>());
        }
    }
}
