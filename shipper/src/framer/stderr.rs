//! stderr boundaries: a line, plus the following lines that start with a tab.
//!
//! PostgreSQL writes a newline inside a message as newline + tab, so a record is complete only
//! when the first byte of the next line is known and is not a tab. The last line of a file
//! therefore stays pending until more bytes arrive or the framer is flushed. DETAIL, HINT,
//! STATEMENT... lines have their own prefix and are records of their own; the processor
//! attaches them. Must not: interpret the prefix.

use super::Scanner;

#[derive(Default)]
pub(super) struct StderrScanner {
    /// The last byte scanned was a newline whose successor is not known yet.
    after_newline: bool,
}

impl Scanner for StderrScanner {
    fn boundary(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        loop {
            if self.after_newline {
                let &next = bytes.get(i)?;
                self.after_newline = false;
                if next != b'\t' {
                    return Some(i);
                }
            }
            let p = memchr::memchr(b'\n', &bytes[i..])?;
            i += p + 1;
            self.after_newline = true;
        }
    }

    fn at_record_end(&self) -> bool {
        self.after_newline
    }

    fn reset(&mut self) {
        self.after_newline = false;
    }
}
