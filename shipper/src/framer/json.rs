//! jsonlog boundaries: one JSON object per line.
//!
//! PostgreSQL escapes newlines inside strings as `\n`, so every raw newline ends a record.
//! Must not: parse the JSON (the processor does).

use super::Scanner;

pub(super) struct JsonScanner;

impl Scanner for JsonScanner {
    fn boundary(&mut self, bytes: &[u8]) -> Option<usize> {
        memchr::memchr(b'\n', bytes).map(|p| p + 1)
    }

    fn at_record_end(&self) -> bool {
        // A boundary is returned as soon as a newline is seen, so pending bytes never end in one.
        false
    }

    fn reset(&mut self) {}
}
