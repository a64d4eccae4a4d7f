//! pgtrail processor: consumes the raw log record topics and writes Delta Lake audit tables.
//!
//! Placeholder until the processor issue lands: the crate exists so the workspace layout is
//! final. Must not: depend on the shipper.
