//! csvlog boundaries: a record ends at a newline outside double quotes.
//!
//! PostgreSQL quotes every text field that may hold a newline and doubles embedded quotes, so
//! quote parity decides whether a newline ends the record (`""` flips twice). Must not: split
//! fields; malformed quoting is bounded by the framer's maximum record size.

use super::Scanner;

#[derive(Default)]
pub(super) struct CsvScanner {
    in_quotes: bool,
}

impl Scanner for CsvScanner {
    fn boundary(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while let Some(p) = memchr::memchr2(b'"', b'\n', &bytes[i..]) {
            let at = i + p;
            i = at + 1;
            if bytes[at] == b'"' {
                self.in_quotes = !self.in_quotes;
            } else if !self.in_quotes {
                return Some(i);
            }
        }
        None
    }

    fn at_record_end(&self) -> bool {
        // A newline outside quotes is returned as a boundary at once: pending bytes never end
        // in one.
        false
    }

    fn reset(&mut self) {
        *self = CsvScanner::default();
    }
}
