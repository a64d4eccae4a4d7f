//! Model test of a tailed file: a log file that grows while it is read in chunks of any size,
//! framed, produced, acknowledged out of order, with failed deliveries (the file is read
//! again from its acknowledged offset, as a recovery does), checkpoints and crashes (a restart
//! from the last checkpoint written). At every step the acknowledged offset and every
//! checkpoint are record boundaries with every record before them acknowledged; at the end
//! every record was acknowledged, and what a partition received keeps file order (the
//! processor's dedup by highest offset keeps each record exactly once).

use std::collections::BTreeSet;
use std::io::Write;

use proptest::prelude::*;

use super::{FileId, OpenedFile, SourceInfo, TailedFile};
use pgtrail_avro::LogFormat;

#[derive(Debug, Clone)]
enum Op {
    /// PostgreSQL appends `n` records (the last one maybe cut mid-way, completed later).
    Append(u8, bool),
    /// The shipper reads a chunk of this many bytes and produces what it frames.
    Read(u16),
    /// Kafka acknowledges the oldest record in flight of a partition (partitions acknowledge
    /// out of order with each other, in order within each).
    Ack(u8),
    /// A delivery fails: the file is read again from its acknowledged offset.
    Fail,
    /// The checkpoint is written.
    Checkpoint,
    /// The shipper crashes and restarts from its last checkpoint.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..5, any::<bool>()).prop_map(|(n, cut)| Op::Append(n, cut)),
        4 => (1u16..400).prop_map(Op::Read),
        4 => any::<u8>().prop_map(Op::Ack),
        1 => Just(Op::Fail),
        2 => Just(Op::Checkpoint),
        1 => Just(Op::Crash),
    ]
}

/// The `n`-th csvlog record (quoted newlines in every third).
fn record(n: usize) -> String {
    let message = if n.is_multiple_of(3) {
        format!("line one of {n}\nline two, \"\"quoted\"\"")
    } else {
        format!("message {n}")
    };
    format!(
        "2026-11-23 09:10:55.{:03} UTC,\"postgres\",{n},LOG,\"{message}\"\n",
        n % 1000
    )
}

fn info() -> SourceInfo {
    SourceInfo {
        server: "s".into(),
        host: "h".into(),
        log_line_prefix: "%m [%p] ".into(),
        log_timezone: None,
        max_record_bytes: 1 << 20,
    }
}

fn open(path: &std::path::Path, offset: u64) -> TailedFile {
    let file = std::fs::File::open(path).expect("open");
    let size = file.metadata().expect("stat").len();
    let opened = OpenedFile {
        file,
        path: path.to_owned(),
        inode: (0, 0),
        size,
    };
    TailedFile::new(
        FileId { fingerprint: 1 },
        opened,
        LogFormat::Csvlog,
        offset,
        &info(),
    )
}

proptest! {
    #[test]
    fn checkpoints_never_pass_an_unacknowledged_record(ops in prop::collection::vec(op(), 1..150)) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("log.csv");
        let mut writer = std::fs::File::create(&path).expect("create");
        // Record boundaries of the file: start offsets, and the end of the last whole record.
        let mut starts: Vec<u64> = Vec::new();
        let mut written = 0u64;
        let mut cut: Option<String> = None;
        let mut next = 0usize;
        let mut f = open(&path, 0);
        // Per partition (a record's by its start offset, as a session key would place it):
        // (seq, start) in flight, in produce order, and record starts delivered, in order.
        const PARTITIONS: usize = 3;
        let partition = |start: u64| (start as usize / 7) % PARTITIONS;
        let mut in_flight: Vec<std::collections::VecDeque<(u64, u64)>> = vec![Default::default(); PARTITIONS];
        let mut delivered: Vec<Vec<u64>> = vec![Vec::new(); PARTITIONS];
        let mut acked: BTreeSet<u64> = BTreeSet::new(); // record starts acknowledged
        let mut checkpoint = 0u64;
        let mut buf = Vec::new();
        let boundary = |starts: &[u64], written: u64, at: u64| at == 0 || starts.contains(&at) || at == written;
        for op in ops {
            match op {
                Op::Append(n, cut_last) => {
                    if let Some(rest) = cut.take() {
                        writer.write_all(rest.as_bytes()).expect("write");
                        written += rest.len() as u64;
                    }
                    for i in 0..n {
                        let text = record(next);
                        next += 1;
                        starts.push(written);
                        if cut_last && i + 1 == n {
                            let half = text.len() / 2;
                            writer.write_all(&text.as_bytes()[..half]).expect("write");
                            written += half as u64;
                            cut = Some(text[half..].to_owned());
                        } else {
                            writer.write_all(text.as_bytes()).expect("write");
                            written += text.len() as u64;
                        }
                    }
                }
                Op::Read(size) => {
                    f.refresh_size().expect("stat");
                    f.read_chunk(&mut buf, usize::from(size)).expect("read");
                    let chunk = std::mem::take(&mut buf);
                    let TailedFile { framer, acks, .. } = &mut f;
                    framer.feed(&chunk, &mut |fr: crate::framer::Frame<'_>| {
                        let seq = acks.push(fr.offset + fr.len);
                        in_flight[partition(fr.offset)].push_back((seq, fr.offset));
                    });
                    buf = chunk;
                }
                Op::Ack(i) => {
                    let p = usize::from(i) % PARTITIONS;
                    if let Some((seq, start)) = in_flight[p].pop_front() {
                        acked.insert(start);
                        delivered[p].push(start);
                        f.acks.ack(seq);
                    }
                }
                Op::Fail => {
                    // With the gapless guarantee nothing after the failed record lands: the
                    // records in flight are lost, the file is read again.
                    in_flight.iter_mut().for_each(std::collections::VecDeque::clear);
                    f.rewind();
                }
                Op::Checkpoint => checkpoint = f.acks.acked_offset(),
                Op::Crash => {
                    in_flight.iter_mut().for_each(std::collections::VecDeque::clear);
                    f = open(&path, checkpoint);
                }
            }
            let a = f.acks.acked_offset();
            prop_assert!(boundary(&starts, written, a), "acked offset {} is no boundary", a);
            for s in starts.iter().filter(|s| **s < checkpoint.max(a)) {
                prop_assert!(acked.contains(s), "record at {} before the checkpoint {} / ack {} never acknowledged", s, checkpoint, a);
            }
        }
        // Drain: the writer finishes, the shipper reads everything, Kafka acknowledges all.
        if let Some(rest) = cut.take() {
            writer.write_all(rest.as_bytes()).expect("write");
            written += rest.len() as u64;
        }
        loop {
            f.refresh_size().expect("stat");
            if f.read_chunk(&mut buf, 4096).expect("read") == 0 {
                break;
            }
            let chunk = std::mem::take(&mut buf);
            let TailedFile { framer, acks, .. } = &mut f;
            framer.feed(&chunk, &mut |fr: crate::framer::Frame<'_>| {
                let seq = acks.push(fr.offset + fr.len);
                in_flight[partition(fr.offset)].push_back((seq, fr.offset));
            });
            buf = chunk;
        }
        for (p, queue) in in_flight.iter_mut().enumerate() {
            for (seq, start) in queue.drain(..) {
                acked.insert(start);
                delivered[p].push(start);
                f.acks.ack(seq);
            }
        }
        prop_assert_eq!(f.acks.acked_offset(), written);
        let all: BTreeSet<u64> = starts.iter().copied().collect();
        prop_assert_eq!(&acked, &all, "every record acknowledged");
        // The processor's dedup by highest offset per partition keeps each record exactly
        // once only if each partition got the file's records in order, re-sent runs apart.
        let mut kept = BTreeSet::new();
        for d in &delivered {
            let mut highest = -1i64;
            for s in d {
                if *s as i64 > highest {
                    highest = *s as i64;
                    prop_assert!(kept.insert(*s), "record at {} kept twice", s);
                }
            }
        }
        prop_assert_eq!(kept, all, "dedup keeps every record");
    }
}
