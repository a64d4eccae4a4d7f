//! Fuzz target: the framers never panic, cover every input byte exactly once with contiguous
//! frames, and give the same frames whatever the chunking.
//! Input: byte 0 = format, byte 1 = max record size / 4, byte 2 = chunk size, rest = stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgtrail_avro::LogFormat;
use shipper::framer::Framer;

fn frames(format: LogFormat, max: usize, data: &[u8], chunk: usize) -> Vec<(u64, Vec<u8>, u64)> {
    let mut f = Framer::new(format, max, 0);
    let mut out = Vec::new();
    let mut emit = |fr: shipper::framer::Frame<'_>| out.push((fr.offset, fr.data.to_vec(), fr.len));
    for c in data.chunks(chunk.max(1)) {
        f.feed(c, &mut emit);
    }
    f.flush(&mut emit);
    out
}

fuzz_target!(|input: &[u8]| {
    let [f, m, c, data @ ..] = input else { return };
    let format = LogFormat::ALL[usize::from(*f) % 3];
    let max = usize::from(*m) * 4 + 1;
    let whole = frames(format, max, data, data.len());
    let chunked = frames(format, max, data, usize::from(*c));
    assert_eq!(whole, chunked);
    let mut next = 0;
    for (offset, kept, len) in &whole {
        assert_eq!(*offset, next);
        assert!(kept.len() as u64 <= *len && kept.len() <= max);
        assert_eq!(&kept[..], &data[*offset as usize..*offset as usize + kept.len()]);
        next += len;
    }
    assert_eq!(next, data.len() as u64);
});
