//! Fuzz target: session key extraction never panics and returns a slice of the record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtrail_avro::LogFormat;
use shipper::key::KeyExtractor;

fuzz_target!(|input: (String, Vec<u8>)| {
    let (prefix, record) = input;
    for format in LogFormat::ALL {
        let k = KeyExtractor::new(format, &prefix);
        if let Some(key) = k.key(&record) {
            assert!(key.len() <= record.len());
        }
    }
});
