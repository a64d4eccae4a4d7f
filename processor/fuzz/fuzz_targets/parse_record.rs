//! Fuzz target: the csvlog, jsonlog, stderr (generator's prefix) and pgaudit parsers never
//! panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtrail_avro::LogFormat;
use processor::parse::{ServerFormat, parse_record, pgaudit::parse_audit};

fuzz_target!(|data: &[u8]| {
    let server = ServerFormat::new("%m [%p] %q%c %l %u@%d %r %v %x %e %a: ", Some("Europe/Berlin"))
        .expect("valid prefix");
    for format in LogFormat::ALL {
        if let Ok((rec, _)) = parse_record(format, data, &server) {
            let _ = parse_audit(&rec.message);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_audit(s);
    }
});
