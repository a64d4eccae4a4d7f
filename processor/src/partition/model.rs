//! Model test of [`Partition`]: random PostgreSQL sessions logged in csvlog, jsonlog and stderr
//! (audited statements, failures with DETAIL and STATEMENT lines, unaudited failures,
//! multi-line statements, second errors of aborted transactions), random log-time gaps against
//! a short outcome window (statements released before their error: late outcomes), files
//! re-shipped from earlier offsets, and a consumer that commits at random points, releases
//! everything when idle, crashes at random points and resumes from its last checkpoint. Every
//! source record's rows must appear exactly once, with the outcome a run without crashes gives
//! (idle releases at the same records), whatever the interleaving; every dead letter at least
//! once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pgtrail_avro::LogFormat;
use proptest::prelude::*;

use super::tests::{OnePrefix, record};
use super::{Incoming, Outputs, Partition, PartitionCheckpoint, message_hash};
use crate::parse::ServerFormat;
use crate::telemetry::Metrics;

const PREFIX: &str = "%m [%p] %c %l %v %e ";

/// One logged event of a session.
#[derive(Debug, Clone)]
enum Event {
    /// A pgaudit entry (statement id, substatement id, its text or `None`: previously logged).
    Audit(u32, u32, Option<String>),
    /// An ERROR with the failing statement's text; `true`: a statement refused because its
    /// transaction is aborted (`25P02`).
    Error(String, bool),
    /// Any other LOG record.
    Log,
    /// The session ends.
    Disconnect,
    /// Bytes that are no log record (a dead letter).
    Garbage,
}

/// A session: what it does, in transactions of statements.
#[derive(Debug, Clone)]
struct Session {
    format: LogFormat,
    /// Per transaction: statements (audit entries each: 0 = not audited), whether the last
    /// one fails (1), and then another is refused (2).
    transactions: Vec<(Vec<u8>, u8)>,
    /// Whether garbage follows the session's first record.
    garbage: bool,
}

fn session() -> impl Strategy<Value = Session> {
    (
        prop::sample::select(LogFormat::ALL.to_vec()),
        prop::collection::vec(
            (
                prop::collection::vec(0u8..3, 1..4),
                prop_oneof![7 => Just(0u8), 2 => Just(1), 1 => Just(2)],
            ),
            1..4,
        ),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(format, transactions, garbage)| Session {
            format,
            transactions,
            garbage,
        })
}

/// Events logged at one moment, with their virtual transaction ids.
type Burst = Vec<(Event, String)>;

/// Session `s`'s events in bursts: a statement's audit entries are logged together (a
/// `<previously logged>` entry right after the statement's first, see `outcome.rs`).
fn events(s: usize, session: &Session) -> Vec<Burst> {
    let none = String::new;
    let mut out = vec![vec![(Event::Log, none())]];
    if session.garbage {
        out.push(vec![(Event::Garbage, none())]);
    }
    let mut id = 0;
    for (n, (statements, fails)) in session.transactions.iter().enumerate() {
        let vxid = format!("{}/{n}", s + 3);
        for (k, entries) in statements.iter().enumerate() {
            id += 1;
            // Every third statement spans lines.
            let text = if id % 3 == 0 {
                format!("UPDATE t{s}\n   SET n = {id}")
            } else {
                format!("UPDATE t{s} SET n = {id}")
            };
            let burst: Burst = (1..=u32::from(*entries))
                .map(|sub| {
                    let logged = (sub == 1).then(|| text.clone());
                    (Event::Audit(id, sub, logged), vxid.clone())
                })
                .collect();
            if !burst.is_empty() {
                out.push(burst);
            }
            if *fails > 0 && k + 1 == statements.len() {
                out.push(vec![(Event::Error(text, false), vxid.clone())]);
                if *fails > 1 {
                    let refused = format!("SELECT {id}");
                    out.push(vec![(Event::Error(refused, true), vxid.clone())]);
                }
            }
        }
    }
    out.push(vec![(Event::Disconnect, none())]);
    out
}

fn csv_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The records (one per Kafka message) PostgreSQL writes for `event` of session `s`; `ms` is
/// its log time (milliseconds after 09:00), `n` the global event number and `line` the
/// session's line counter.
fn render(
    s: usize,
    format: LogFormat,
    (ms, n): (u64, usize),
    line: &mut u32,
    event: &Event,
    vxid: &str,
) -> Vec<String> {
    let ts = format!(
        "2026-11-23 {:02}:{:02}:{:02}.{:03} UTC",
        9 + ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    );
    let pid = 20_000 + s;
    let sid = format!("6b04031f.{pid:x}");
    if let Event::Garbage = event {
        return vec![format!("garbage {n}, no log record\n")];
    }
    let (severity, state, message, query) = match event {
        Event::Audit(id, sub, text) => {
            let stmt = text
                .as_deref()
                .map_or("<previously logged>".to_owned(), csv_quote);
            let msg =
                format!("AUDIT: SESSION,{id},{sub},WRITE,UPDATE,TABLE,public.t{s},{stmt},<none>");
            ("LOG", "00000", msg, None)
        }
        Event::Error(text, false) => (
            "ERROR",
            "22012",
            "division by zero".to_owned(),
            Some(text.clone()),
        ),
        Event::Error(text, true) => (
            "ERROR",
            "25P02",
            "current transaction is aborted, commands ignored until end of transaction block"
                .to_owned(),
            Some(text.clone()),
        ),
        Event::Log => (
            "LOG",
            "00000",
            "connection authorized: user=postgres".to_owned(),
            None,
        ),
        Event::Garbage | Event::Disconnect => (
            "LOG",
            "00000",
            "disconnection: session time: 0:00:01.000 user=postgres".to_owned(),
            None,
        ),
    };
    *line += 1;
    match format {
        LogFormat::Csvlog => vec![format!(
            "{ts},\"postgres\",\"postgres\",{pid},\"[local]\",{sid},{line},\"UPDATE\",2026-11-23 09:00:00 UTC,{vxid},0,{severity},{state},{},{},,,,,{},,,\"psql\",\"client backend\",,0\n",
            csv_quote(&message),
            if query.is_some() {
                "\"detail here\""
            } else {
                ""
            },
            query.as_deref().map(csv_quote).unwrap_or_default(),
        )],
        LogFormat::Jsonlog => {
            let mut j = serde_json::json!({
                "timestamp": ts, "user": "postgres", "dbname": "postgres", "pid": pid,
                "remote_host": "[local]", "session_id": sid, "line_num": line, "ps": "UPDATE",
                "session_start": "2026-11-23 09:00:00 UTC", "vxid": vxid, "txid": 0,
                "error_severity": severity, "state_code": state, "message": message,
                "application_name": "psql", "backend_type": "client backend", "query_id": 0,
            });
            if let Some(q) = &query {
                j["detail"] = "detail here".into();
                j["statement"] = q.as_str().into();
            }
            vec![format!("{j}\n")]
        }
        LogFormat::Stderr => {
            let prefix = |line: u32| format!("{ts} [{pid}] {sid} {line} {vxid} {state} ");
            let cont = |s: &str| s.replace('\n', "\n\t");
            let mut out = vec![format!(
                "{}{severity}:  {}\n",
                prefix(*line),
                cont(&message)
            )];
            if let Some(q) = &query {
                *line += 1;
                out.push(format!("{}DETAIL:  detail here\n", prefix(*line)));
                *line += 1;
                out.push(format!("{}STATEMENT:  {}\n", prefix(*line), cont(q)));
            }
            out
        }
    }
}

/// A Kafka message: its file, byte offset and text.
#[derive(Debug, Clone)]
struct Message {
    format: LogFormat,
    file: String,
    offset: i64,
    text: String,
    /// A copy shipped again (a duplicate the partition drops).
    again: bool,
}

/// What a row says: result, error code, statement.
type RowFacts = (String, Option<String>, Option<String>);

/// What a run wrote: rows by event id, dead-lettered offsets (as often as sent), the last
/// checkpoint and the messages before which it was idle.
#[derive(Debug, Default, PartialEq, Eq)]
struct Written {
    rows: BTreeMap<String, Vec<RowFacts>>,
    dead: Vec<i64>,
    last: Option<PartitionCheckpoint>,
    idle_at: Vec<usize>,
    /// Rows of `<previously logged>` entries.
    previously_logged: BTreeSet<String>,
}

impl Written {
    fn add(&mut self, out: Outputs) {
        for (row, _) in out.rows {
            if row.raw().contains("<previously logged>") {
                self.previously_logged.insert(row.event_id().to_owned());
            }
            self.rows
                .entry(row.event_id().to_owned())
                .or_default()
                .push((
                    row.result.as_str().to_owned(),
                    row.error_code().map(str::to_owned),
                    row.statement().map(str::to_owned),
                ));
        }
        self.dead.extend(out.dead.iter().map(|d| d.offset));
    }
}

/// A consumer step.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Handle the next `n` messages.
    Consume(u8),
    /// Commit what was emitted with the checkpoint.
    Commit,
    /// Lose everything since the last commit and resume from its checkpoint.
    Crash,
    /// Idle: release everything held, then commit (`Partition::release_idle`).
    Idle,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1u8..8).prop_map(Step::Consume),
        2 => Just(Step::Commit),
        1 => Just(Step::Crash),
        1 => Just(Step::Idle),
    ]
}

fn push(p: &mut Partition, servers: &mut OnePrefix, offset: i64, m: &Message, out: &mut Outputs) {
    let rec = record(m.format, &m.file, m.offset, &m.text);
    let msg = Incoming {
        offset,
        key: None,
        payload: m.text.as_bytes(),
        at: Instant::now(),
    };
    p.push(msg, Ok(rec), servers, &Metrics::default(), out);
}

/// Runs `messages` through a partition that commits, crashes and resumes as `steps` say, then
/// drains; returns what was committed.
fn run(messages: &[Message], steps: &[Step]) -> Written {
    let window = Duration::from_secs(5);
    let mut servers = OnePrefix(ServerFormat::new(PREFIX, None).expect("prefix"));
    let mut committed = Written::default();
    let mut sent_dead = Vec::new();
    let mut checkpoint: Option<PartitionCheckpoint> = None;
    let mut p = Partition::new(
        crate::topic_partition::TopicPartition::new("t", 0),
        None,
        None,
        window,
    );
    let mut uncommitted = Outputs::default();
    let mut next = 0usize;
    let mut consumed = 0usize;
    let commit = |p: &mut Partition,
                  out: &mut Outputs,
                  committed: &mut Written,
                  cp: &mut Option<PartitionCheckpoint>| {
        if let Some(c) = p.checkpoint() {
            // The anchor is the last message at or below the version, as it was read.
            assert_eq!(c.anchor.is_some(), c.version >= 0, "{:?}", c.anchor);
            if let Some(a) = c.anchor {
                let m = &messages[a.offset as usize];
                assert!(a.offset <= c.version, "{a:?} {}", c.version);
                assert_eq!(a.hash, message_hash(None, m.text.as_bytes()), "{a:?}");
            }
            p.committed = Some(c.version);
            *cp = Some(c);
            committed.add(std::mem::take(out));
        }
    };
    for s in steps.iter().copied().chain([Step::Consume(u8::MAX); 64]) {
        match s {
            Step::Consume(n) => {
                for _ in 0..n {
                    let Some(m) = messages.get(next) else { break };
                    let mut out = Outputs::default();
                    push(&mut p, &mut servers, next as i64, m, &mut out);
                    sent_dead.extend(out.dead.iter().map(|d| d.offset));
                    uncommitted.rows.extend(out.rows);
                    next += 1;
                    consumed = consumed.max(next);
                }
            }
            Step::Commit => commit(&mut p, &mut uncommitted, &mut committed, &mut checkpoint),
            // Idle at the live edge only: an idle release while replaying decides records
            // the first pass decided otherwise (each still written once, but no run without
            // crashes matches it). A statement's entries are logged together: never idle
            // between them (a `<previously logged>` entry after a resume past its statement
            // has no text).
            Step::Idle
                if next >= consumed
                    && messages[next..]
                        .iter()
                        .find(|m| !m.again)
                        .is_none_or(|m| !m.text.contains("<previously logged>")) =>
            {
                let mut out = Outputs::default();
                p.finish(&Metrics::default(), &mut out);
                uncommitted.rows.extend(out.rows);
                commit(&mut p, &mut uncommitted, &mut committed, &mut checkpoint);
                committed.idle_at.push(next);
            }
            Step::Idle => {}
            Step::Crash => {
                uncommitted = Outputs::default();
                let version = checkpoint.as_ref().map(|c| c.version);
                p = Partition::new(
                    crate::topic_partition::TopicPartition::new("t", 0),
                    version,
                    checkpoint.clone(),
                    window,
                );
                next = p.resume_offset() as usize;
            }
        }
    }
    let mut out = Outputs::default();
    p.finish(&Metrics::default(), &mut out);
    uncommitted.rows.extend(out.rows);
    commit(&mut p, &mut uncommitted, &mut committed, &mut checkpoint);
    committed.dead = sent_dead;
    committed.last = checkpoint;
    committed.idle_at.dedup();
    committed
}

/// `w`'s rows, the statement of `<previously logged>` rows left out: a resume after the
/// release of the statement's first entry has no text for them (a limitation the README
/// states; a stderr entry can complete after its first entry's outcome window closed when
/// other formats' records move the clock).
fn without_lost_statements(w: &Written) -> BTreeMap<String, Vec<RowFacts>> {
    let mut rows = w.rows.clone();
    for id in &w.previously_logged {
        for facts in rows.get_mut(id).into_iter().flatten() {
            facts.2 = None;
        }
    }
    rows
}

/// The steps of a run without crashes that is idle before the messages `idle_at`.
fn idle_steps(idle_at: &[usize]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut at = 0;
    for &i in idle_at {
        while at < i {
            let n = (i - at).min(usize::from(u8::MAX));
            steps.push(Step::Consume(n as u8));
            at += n;
        }
        steps.push(Step::Idle);
    }
    steps
}

/// The Kafka messages of `sessions`, interleaved by `order`, log time advancing by `gaps`
/// (milliseconds, in turn) between bursts, with the re-ships `reships` (at message index, of
/// file, from its record number) inserted.
fn messages(
    sessions: &[Session],
    order: &[usize],
    gaps: &[u64],
    reships: &[(usize, usize, usize)],
) -> (Vec<Message>, Vec<Message>) {
    let mut queues: Vec<std::vec::IntoIter<Burst>> = sessions
        .iter()
        .enumerate()
        .map(|(s, x)| events(s, x).into_iter())
        .collect();
    let mut lines = vec![0u32; sessions.len()];
    let mut bytes: BTreeMap<LogFormat, i64> = BTreeMap::new();
    let mut files: BTreeMap<LogFormat, Vec<Message>> = BTreeMap::new();
    let mut plain = Vec::new();
    let mut n = 0;
    let mut ms = 0;
    let picks = order.iter().copied().chain(0..);
    for pick in picks {
        let live: Vec<usize> = (0..queues.len()).filter(|i| queues[*i].len() > 0).collect();
        let Some(&s) = live.get(pick % live.len().max(1)) else {
            break;
        };
        let Some(burst) = queues[s].next() else {
            continue;
        };
        let format = sessions[s].format;
        ms += gaps.get(n % gaps.len().max(1)).copied().unwrap_or(1);
        let texts = burst
            .iter()
            .flat_map(|(event, vxid)| render(s, format, (ms, n), &mut lines[s], event, vxid));
        for text in texts.collect::<Vec<_>>() {
            let at = bytes.entry(format).or_default();
            let m = Message {
                format,
                file: format!("file-{format}"),
                offset: *at,
                text,
                again: false,
            };
            *at += m.text.len() as i64;
            files.entry(format).or_default().push(m.clone());
            plain.push(m);
        }
        n += 1;
    }
    // Re-ships: from a record of a file up to what was shipped of it by then.
    let mut with = plain.clone();
    // Inserted from the last position back, so positions in `plain` stay positions in `with`.
    let mut reships: Vec<(usize, usize, usize)> = reships
        .iter()
        .map(|&(at, file, from)| (at % (plain.len() + 1), file, from))
        .collect();
    reships.sort();
    for &(at, file, from) in reships.iter().rev() {
        let formats: Vec<LogFormat> = files.keys().copied().collect();
        let Some(format) = formats.get(file % formats.len().max(1)) else {
            continue;
        };
        let shipped: Vec<Message> = plain[..at]
            .iter()
            .filter(|m| m.format == *format)
            .cloned()
            .collect();
        if shipped.is_empty() {
            continue;
        }
        let from = from % shipped.len();
        for (i, m) in shipped[from..].iter().enumerate() {
            with.insert(
                at + i,
                Message {
                    again: true,
                    ..m.clone()
                },
            );
        }
    }
    (plain, with)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_record_once_whatever_the_crashes(
        sessions in prop::collection::vec(session(), 1..4),
        order in prop::collection::vec(0usize..4, 0..120),
        gaps in prop::collection::vec(prop_oneof![3 => 0u64..50, 1 => 1000u64..4000], 1..40),
        reships in prop::collection::vec((0usize..400, 0usize..3, 0usize..50), 0..3),
        steps in prop::collection::vec(step(), 0..80),
    ) {
        let (plain, with_reships) = messages(&sessions, &order, &gaps, &reships);
        let undisturbed = run(&plain, &[]);
        let garbage: Vec<i64> = plain
            .iter()
            .enumerate()
            .filter(|(_, m)| m.text.starts_with("garbage"))
            .map(|(i, _)| i as i64)
            .collect();
        prop_assert_eq!(&undisturbed.dead, &garbage);
        let reshipped = run(&with_reships, &[]);
        prop_assert_eq!(&reshipped.rows, &undisturbed.rows, "re-shipped records are dropped");
        let crashed = run(&with_reships, &steps);
        let uncrashed = run(&with_reships, &idle_steps(&crashed.idle_at));
        prop_assert_eq!(
            without_lost_statements(&crashed),
            without_lost_statements(&uncrashed),
            "crashes and resumes change nothing"
        );
        // Dead letters at least once; after the drain the position is the last offset.
        let mut dead = crashed.dead.clone();
        dead.sort_unstable();
        dead.dedup();
        let garbage: Vec<i64> = with_reships
            .iter()
            .enumerate()
            .filter(|(_, m)| m.text.starts_with("garbage"))
            .map(|(i, _)| i as i64)
            .collect();
        // Re-shipped garbage is a duplicate: dead-lettered once, at its first offset.
        prop_assert!(dead.iter().all(|d| garbage.contains(d)), "{:?} {:?}", dead, garbage);
        prop_assert_eq!(dead.len(), undisturbed.dead.len());
        let last = crashed.last.expect("a checkpoint");
        prop_assert_eq!((last.version, last.last, last.pending.len()), (with_reships.len() as i64 - 1, with_reships.len() as i64 - 1, 0));
    }
}
