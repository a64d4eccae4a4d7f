//! String columns of a batch being filled: Arrow's string builder behind appends that fail
//! instead of panicking when a batch's text passes what 32-bit offsets can address.
//!
//! Owns [`TextColumn`]. Invariants: a column reads exactly the strings appended to it; an
//! append that would pass `i32::MAX` bytes is refused and appends nothing. Must not: validate
//! what it already holds as `&str` again (the builder's `finish` does not, where building
//! the array from raw buffers re-checked every byte as UTF-8: a fiftieth of the consumer's
//! time).

use deltalake::arrow::array::{StringArray, StringBuilder};
use deltalake::arrow::error::ArrowError;

/// One string column being filled.
pub struct TextColumn {
    builder: StringBuilder,
}

impl TextColumn {
    /// Room for `rows` strings of `bytes` bytes in all.
    pub fn with_capacity(rows: usize, bytes: usize) -> Self {
        TextColumn {
            builder: StringBuilder::with_capacity(rows, bytes),
        }
    }

    /// Appends `s`.
    #[inline]
    pub fn append_value(&mut self, s: &str) -> Result<(), ArrowError> {
        if self.values_len() + s.len() > i32::MAX as usize {
            return Err(ArrowError::ComputeError(
                "more than 2 GiB of text in one batch".into(),
            ));
        }
        self.builder.append_value(s);
        Ok(())
    }

    /// Appends `s`, or a null.
    #[inline]
    pub fn append_option(&mut self, s: Option<&str>) -> Result<(), ArrowError> {
        match s {
            Some(s) => self.append_value(s),
            None => {
                self.builder.append_null();
                Ok(())
            }
        }
    }

    /// The bytes appended.
    pub fn values_len(&self) -> usize {
        self.builder.values_slice().len()
    }

    /// The column.
    pub fn finish(mut self) -> StringArray {
        self.builder.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_read_back() {
        let mut c = TextColumn::with_capacity(3, 8);
        c.append_value("a").unwrap();
        c.append_option(None).unwrap();
        c.append_value("çé").unwrap();
        assert_eq!(c.values_len(), 5);
        let array = c.finish();
        assert_eq!(
            array.iter().collect::<Vec<_>>(),
            [Some("a"), None, Some("çé")]
        );
    }
}
