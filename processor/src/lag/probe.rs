//! One round of observations: for every partition of the configured topics, what the broker
//! says (watermarks, the group's committed offset, the timestamp of the first record not in
//! the table) and what the table says (its `txn` position, when it last moved the partition,
//! which live instance holds it, the newest shipper heartbeat it holds).
//!
//! Owns [`Probe`] and [`Round`]. Invariants: the probe never joins the consumer group and
//! never commits (its client only assigns partitions to read one record each, with
//! auto-commit off); a partition it cannot read is an `Err` reading (ERR), never a guess.
//! Must not: write to Kafka or the lake; log record contents.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::status::Reading;
use crate::config::Config;
use crate::delta::AuditTable;
use crate::lake::Lake;
use crate::state::offset_app_id;
use crate::topic_partition::TopicPartition;

/// Timeout of each broker request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a round waits for the first waiting record of each lagging partition.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Commits of a table's history searched for the last one that moved each partition.
const HISTORY: usize = 200;

/// A partition's observation.
#[derive(Debug, Clone)]
pub struct PartitionRound {
    /// The partition.
    pub tp: TopicPartition,
    /// Its table (URI).
    pub table: String,
    /// What was observed (`Err`: why it could not be).
    pub reading: Result<Reading, String>,
    /// The group's committed Kafka offset (advisory; the table is the truth).
    pub committed: Option<i64>,
}

/// A table's observation.
#[derive(Debug, Clone, Default)]
pub struct TableRound {
    /// Its server (the topic without its prefix).
    pub server: String,
    /// When the newest shipper heartbeat durably in it was sent (ms since the epoch).
    pub heartbeat_ms: Option<i64>,
}

/// One round.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Per partition, ordered by topic and partition.
    pub partitions: Vec<PartitionRound>,
    /// Per table URI.
    pub tables: BTreeMap<String, TableRound>,
}

/// What the table says about one topic's partitions.
#[derive(Default)]
struct TableView {
    positions: BTreeMap<i32, i64>,
    progressed: BTreeMap<i32, i64>,
    held: BTreeMap<TopicPartition, chrono::DateTime<Utc>>,
    heartbeat_ms: Option<i64>,
}

/// The monitor's reader.
pub struct Probe {
    cfg: Config,
    lake: Lake,
    client: BaseConsumer,
}

fn kafka_text(e: &rdkafka::error::KafkaError) -> String {
    pgtrail_connect::kafka_error(e)
}

impl Probe {
    /// A probe of `cfg`'s topics, group and tables.
    pub fn new(cfg: Config) -> Result<Probe, crate::error::ProcessorError> {
        let mut c = crate::consumer::consumer_config(&cfg)?;
        // Reads one record per lagging partition; never commits, never joins the group.
        c.set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "0");
        let client: BaseConsumer = c
            .create()
            .map_err(|e| crate::error::ProcessorError::Kafka {
                what: "lag monitor client".into(),
                reason: kafka_text(&e),
            })?;
        let lake = Lake::from_section(&cfg.storage)?;
        Ok(Probe { cfg, lake, client })
    }

    /// The configured topics present on the broker (`^` entries are regular expressions).
    fn topics(&self) -> Result<BTreeMap<String, i32>, String> {
        let md = self
            .client
            .fetch_metadata(None, REQUEST_TIMEOUT)
            .map_err(|e| format!("metadata: {}", kafka_text(&e)))?;
        let patterns: Vec<Result<regex::Regex, String>> = self
            .cfg
            .topics
            .iter()
            .map(|t| match t.strip_prefix('^') {
                Some(_) => regex::Regex::new(t).map_err(|e| e.to_string()),
                None => Err(t.clone()),
            })
            .collect();
        let wanted = |name: &str| {
            patterns.iter().any(|p| match p {
                Ok(re) => re.is_match(name),
                Err(exact) => exact == name,
            })
        };
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && wanted(t.name()))
            .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
            .collect())
    }

    /// Takes one round of observations.
    pub async fn round(&self) -> Result<Round, String> {
        let topics = tokio::task::block_in_place(|| self.topics())?;
        let mut round = Round::default();
        for (topic, count) in topics {
            let table = self.cfg.table_for_topic(&topic);
            let server = topic
                .strip_prefix(&self.cfg.topic_prefix)
                .unwrap_or(&topic)
                .to_owned();
            let view = self.table_view(&topic, count, &table).await;
            let tps: Vec<TopicPartition> =
                (0..count).map(|p| TopicPartition::new(&topic, p)).collect();
            let committed = tokio::task::block_in_place(|| self.committed(&tps));
            let mut readings = Vec::new();
            for tp in &tps {
                let reading = match &view {
                    Err(e) => Err(e.clone()),
                    Ok(v) => tokio::task::block_in_place(|| self.reading(tp, v)),
                };
                readings.push(reading);
            }
            tokio::task::block_in_place(|| self.complete(&tps, &mut readings));
            if let Ok(v) = &view {
                round.tables.insert(
                    table.clone(),
                    TableRound {
                        server,
                        heartbeat_ms: v.heartbeat_ms,
                    },
                );
            }
            for (tp, reading) in tps.into_iter().zip(readings) {
                round.partitions.push(PartitionRound {
                    committed: committed.get(&tp.partition).copied(),
                    tp,
                    table: table.clone(),
                    reading,
                });
            }
        }
        Ok(round)
    }

    /// Positions, progress times, live holders and the newest heartbeat of `topic` in
    /// `table`. A table not created yet holds nothing.
    async fn table_view(&self, topic: &str, count: i32, uri: &str) -> Result<TableView, String> {
        let Some(table) = AuditTable::open_existing_with(uri, self.lake.options_for(uri))
            .await
            .map_err(|e| format!("table: {e}"))?
        else {
            return Ok(TableView::default());
        };
        let mut view = TableView::default();
        let group = &self.cfg.group;
        for (ts, meta) in table
            .recent_metadata(HISTORY)
            .await
            .map_err(|e| format!("table history: {e}"))?
        {
            if let Some(at) = meta.get("heartbeat_at").and_then(|v| v.as_i64()) {
                let at_ms = at / 1000;
                view.heartbeat_ms = Some(view.heartbeat_ms.map_or(at_ms, |h| h.max(at_ms)));
            }
            if meta.get("group").and_then(|g| g.as_str()) != Some(group.as_str()) {
                continue;
            }
            let parts = meta.get("partitions").and_then(|p| p.as_array());
            for p in parts.into_iter().flatten() {
                let same_topic = p.get("topic").and_then(|t| t.as_str()) == Some(topic);
                let partition = p.get("partition").and_then(|n| n.as_i64());
                if let (true, Some(n), Some(ts)) = (same_topic, partition, ts) {
                    // Newest first: the first commit seen is the last that moved it.
                    view.progressed.entry(n as i32).or_insert(ts);
                }
            }
        }
        for p in 0..count {
            let tp = TopicPartition::new(topic, p);
            let version = table
                .txn_version(&offset_app_id(group, &tp))
                .await
                .map_err(|e| format!("table position: {e}"))?;
            if let Some(v) = version {
                view.positions.insert(p, v + 1);
            }
        }
        view.held = crate::members::live_partitions(&table.object_store(), group, Utc::now())
            .await
            .map_err(|e| format!("table members: {e}"))?;
        Ok(view)
    }

    fn committed(&self, tps: &[TopicPartition]) -> BTreeMap<i32, i64> {
        let mut list = TopicPartitionList::new();
        for tp in tps {
            list.add_partition(&tp.topic, tp.partition);
        }
        let Ok(got) = self.client.committed_offsets(list, REQUEST_TIMEOUT) else {
            return BTreeMap::new();
        };
        got.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }

    fn reading(&self, tp: &TopicPartition, view: &TableView) -> Result<Reading, String> {
        let (low, high) = self
            .client
            .fetch_watermarks(&tp.topic, tp.partition, REQUEST_TIMEOUT)
            .map_err(|e| format!("watermarks: {}", kafka_text(&e)))?;
        Ok(Reading {
            at_ms: Utc::now().timestamp_millis(),
            low,
            high,
            position: view.positions.get(&tp.partition).copied(),
            progressed_ms: view.progressed.get(&tp.partition).copied(),
            first_waiting_ms: None,
            held_since_ms: view.held.get(tp).map(chrono::DateTime::timestamp_millis),
        })
    }

    /// Reads records of several partitions: from each `from` offset until one at or past
    /// its `until` offset arrived or [`READ_TIMEOUT`]; per index, the first record's
    /// timestamp and the highest offset seen.
    fn read(
        &self,
        wants: &[(usize, &TopicPartition, i64, i64)],
    ) -> BTreeMap<usize, (Option<i64>, i64)> {
        let mut seen = BTreeMap::new();
        let mut list = TopicPartitionList::new();
        let mut open: BTreeMap<i32, (usize, i64)> = BTreeMap::new();
        for &(i, tp, from, until) in wants {
            if list
                .add_partition_offset(&tp.topic, tp.partition, Offset::Offset(from))
                .is_ok()
            {
                open.insert(tp.partition, (i, until));
            }
        }
        if open.is_empty() || self.client.assign(&list).is_err() {
            return seen;
        }
        let deadline = std::time::Instant::now() + READ_TIMEOUT;
        while !open.is_empty() && std::time::Instant::now() < deadline {
            let Some(Ok(m)) = self.client.poll(Duration::from_millis(200)) else {
                continue;
            };
            let Some(&(i, until)) = open.get(&m.partition()) else {
                continue;
            };
            let e = seen
                .entry(i)
                .or_insert((m.timestamp().to_millis(), m.offset()));
            e.1 = e.1.max(m.offset());
            if m.offset() >= until {
                open.remove(&m.partition());
            }
        }
        let _ = self.client.unassign();
        seen
    }

    /// Corrects the high watermarks and reads the first waiting records. A high watermark
    /// below the table's position is confirmed by reading from its last batch (Tansu 0.6
    /// reports the last batch's first offset + 1 and answers nothing from inside it): the
    /// records up to the position are there (no RESET) unless the topic really ends before.
    /// Then the first record not in the table of every lagging partition is read: its broker
    /// timestamp starts the exact time lag.
    fn complete(&self, tps: &[TopicPartition], readings: &mut [Result<Reading, String>]) {
        let mut ends = Vec::new();
        for (i, (tp, r)) in tps.iter().zip(readings.iter()).enumerate() {
            if let Ok(r) = r
                && let Some(p) = r.position
                && r.high < p
                && r.high > r.low
            {
                ends.push((i, tp, r.high - 1, p - 1));
            }
        }
        for (i, (_, last)) in self.read(&ends) {
            if let Some(Ok(r)) = readings.get_mut(i) {
                r.high = r.high.max(last + 1);
            }
        }
        let mut waiting = Vec::new();
        for (i, (tp, r)) in tps.iter().zip(readings.iter()).enumerate() {
            if let Ok(r) = r
                && r.offset_lag() > 0
            {
                let from = r.effective_position().max(r.low);
                waiting.push((i, tp, from, from));
            }
        }
        for (i, (first, _)) in self.read(&waiting) {
            if let Some(Ok(r)) = readings.get_mut(i) {
                r.first_waiting_ms = first;
            }
        }
    }
}
