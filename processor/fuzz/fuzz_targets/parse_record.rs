//! Fuzz target: the csvlog, jsonlog, stderr (generator's prefix) and pgaudit parsers never
//! panic, whatever the bytes (invalid UTF-8 included, read as the processor reads it).
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use pgtrail_avro::LogFormat;
use processor::parse::{ServerFormat, parse_record, pgaudit::parse_audit};

fuzz_target!(|data: &[u8]| {
    let server = ServerFormat::new("%m [%p] %q%c %l %u@%d %r %v %x %e %a: ", Some("Europe/Berlin"))
        .expect("valid prefix");
    let (text, invalid) = match std::str::from_utf8(data) {
        Ok(t) => (Cow::Borrowed(t), None),
        Err(e) => (String::from_utf8_lossy(data), Some(e)),
    };
    for format in LogFormat::ALL {
        if let Ok((rec, _)) = parse_record(format, &text, invalid, &server) {
            let _ = parse_audit(&rec.message);
        }
    }
    let _ = parse_audit(&text);
});
