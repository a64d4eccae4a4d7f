//! Time-driven work of the worker: flushes due by rows, bytes or interval, partitions that
//! wait (for a table's commit, for the Schema Registry, to be nudged), held rows released at
//! the end of input, gauges.
//!
//! Owns nothing of its own: `Worker` methods. Invariants: a table has at most one commit in
//! flight; a flush due while it runs pauses the table's partitions instead of blocking the
//! consumer thread, and they resume once that commit settled (a lake that is slow or away is
//! waited for while heartbeats, rebalances and other tables go on); a partition paused for the
//! registry is resumed only by its own wait. Must not: poll the consumer.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::Utc;
use rdkafka::consumer::{Consumer, ConsumerContext};
use tracing::{info, warn};

use super::{Worker, probe};
use crate::config::Config;
use crate::error::ProcessorError;
use crate::partition::{Outputs, Partition};
use crate::telemetry::{Metrics, PartitionLabel, ReasonLabel};

/// The label of partitions paused while their table's previous commit runs.
fn commit_label() -> ReasonLabel {
    ReasonLabel {
        reason: "delta_commit".to_owned(),
    }
}

impl Worker {
    /// Time-driven work: releases idle partitions' held rows and commits tables that reached
    /// a flush threshold (rows, bytes, interval).
    pub fn tick<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        consumer: &C,
    ) -> Result<(), ProcessorError> {
        self.clock = (Instant::now(), Utc::now());
        self.settle_finished(consumer)?;
        self.resume_tables();
        self.nudge(consumer)?;
        // Partitions whose wait for the registry is over are read again (and wait longer if
        // it is still away).
        let now = Instant::now();
        for (tp, a) in self.parts.iter_mut() {
            if let Some(w) = &mut a.waiting
                && w.until.is_some_and(|until| until <= now)
            {
                w.until = None;
                a.probe.set_paused(false);
                self.pauses.push((tp.clone(), false));
            }
        }
        let window = Config::ms(self.cfg.outcome_window_ms);
        self.release_each(|p, metrics, out| p.release_idle(window, metrics, out))?;
        self.update_gauges();
        self.beat_members();
        let interval_due = self.last_commit.elapsed() >= Config::ms(self.cfg.flush_interval_ms);
        let mut due: Vec<String> = Vec::new();
        let mut per_topic: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (tp, a) in &self.parts {
            let e = per_topic.entry(&*tp.topic).or_default();
            e.0 += a.rows.len();
            e.1 += a.rows.bytes();
        }
        for (topic, (rows, bytes)) in per_topic {
            if interval_due || rows >= self.cfg.flush_rows || bytes >= self.cfg.flush_bytes {
                due.push(topic.to_owned());
            }
        }
        for topic in due {
            if self.committing(&topic) {
                // The table's previous commit still runs: its partitions are paused until it
                // settles (backpressure), and the consumer goes on polling (heartbeats,
                // rebalances, other tables) instead of waiting for the lake.
                self.pause_table(&topic);
                continue;
            }
            // In the background: parsing goes on; the table's next commit waits for it.
            self.commit_topic(&topic, None, false, consumer)?;
        }
        if interval_due {
            self.last_commit = Instant::now();
        }
        Ok(())
    }

    /// Pauses the partitions of `topic` (a flush is due while its previous commit runs).
    pub(super) fn pause_table(&mut self, topic: &str) {
        if self.paused_tables.contains_key(topic) {
            return;
        }
        let paused: Vec<_> = self
            .parts
            .keys()
            .filter(|tp| *tp.topic == *topic)
            .cloned()
            .collect();
        for tp in &paused {
            if let Some(a) = self.parts.get_mut(tp) {
                a.probe.set_paused(true);
            }
            self.pauses.push((tp.clone(), true));
        }
        self.metrics
            .partitions_waiting
            .get_or_create(&commit_label())
            .inc_by(paused.len() as i64);
        self.paused_tables.insert(topic.to_owned(), paused);
    }

    /// Resumes the paused tables whose commit settled: the partitions still assigned, but for
    /// those waiting for the registry.
    pub(super) fn resume_tables(&mut self) {
        let settled: Vec<String> = self
            .paused_tables
            .keys()
            .filter(|t| !self.committing(t))
            .cloned()
            .collect();
        for topic in settled {
            let paused = self.paused_tables.remove(&topic).unwrap_or_default();
            for tp in &paused {
                // A partition whose wait for the registry is over (reading its message again)
                // is resumed too; one still waiting is resumed when its wait ends.
                if let Some(a) = self.parts.get_mut(tp)
                    && a.waiting.is_none_or(|w| w.until.is_none())
                {
                    a.probe.set_paused(false);
                    self.pauses.push((tp.clone(), false));
                }
            }
            self.metrics
                .partitions_waiting
                .get_or_create(&commit_label())
                .dec_by(paused.len() as i64);
        }
    }

    /// Partitions positioned a while ago that received nothing: asks the broker where they
    /// end and seeks there when the broker cannot serve what is wanted (`probe.rs`).
    fn nudge<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        consumer: &C,
    ) -> Result<(), ProcessorError> {
        for (tp, a) in self.parts.iter_mut().filter(|(_, a)| a.probe.nudge_due()) {
            let timeout = std::time::Duration::from_secs(2);
            let high = match consumer.fetch_watermarks(&tp.topic, tp.partition, timeout) {
                Ok((_, high)) => high,
                Err(e) => {
                    warn!(topic = &*tp.topic, partition = tp.partition, error = %e, "Cannot read the partition's watermarks.");
                    continue;
                }
            };
            match a.probe.idle(high, a.partition.last_offset()) {
                Some(probe::Verdict::Seek(to)) => {
                    info!(
                        topic = &*tp.topic,
                        partition = tp.partition,
                        high,
                        seek = to,
                        "Nothing arrived where the partition was positioned; reading from the broker's reported end."
                    );
                    self.seeks.push((tp.clone(), to));
                }
                Some(probe::Verdict::Reset { position }) => {
                    return Err(ProcessorError::TopicReset {
                        tp: tp.clone(),
                        position,
                        got: high,
                    });
                }
                Some(_) | None => {}
            }
        }
        Ok(())
    }

    /// Releases everything held (end of input) and commits every table.
    pub fn finish_all<C: Consumer<X>, X: ConsumerContext>(
        &mut self,
        consumer: &C,
    ) -> Result<(), ProcessorError> {
        self.release_each(Partition::finish)?;
        self.commit_all(None, consumer)
    }

    /// Lets `release` free held records of every partition and routes what it released.
    pub(super) fn release_each(
        &mut self,
        release: impl Fn(&mut Partition, &Metrics, &mut Outputs),
    ) -> Result<(), ProcessorError> {
        let now = Utc::now();
        for (tp, a) in self.parts.iter_mut() {
            let topic = &tp.topic;
            let mut out = Outputs::default();
            release(&mut a.partition, &self.metrics, &mut out);
            Self::route(
                &self.builder,
                a,
                topic,
                out,
                &mut self.dlq,
                &self.metrics,
                &mut self.totals,
                now,
            )?;
        }
        Ok(())
    }

    pub(super) fn update_gauges(&self) {
        let (held, buffered) = self.parts.values().fold((0, 0), |(h, b), a| {
            (h + a.partition.held(), b + a.rows.len())
        });
        self.metrics.rows_held.set(held as i64);
        self.metrics.rows_buffered.set(buffered as i64);
        let now_ms = chrono::Utc::now().timestamp_millis();
        // Only assigned partitions: a revoked one's figures are its new owner's.
        self.metrics.table_position_offset.clear();
        self.metrics.time_lag_seconds.clear();
        for (tp, a) in &self.parts {
            let label = PartitionLabel {
                topic: tp.topic.to_string(),
                partition: tp.partition.to_string(),
            };
            if let Some(v) = a.token.version {
                self.metrics
                    .table_position_offset
                    .get_or_create(&label)
                    .set(v + 1);
            }
            let lag = a.waiting_since.map_or(0, |t| (now_ms - t).max(0));
            self.metrics
                .time_lag_seconds
                .get_or_create(&label)
                .set(lag as f64 / 1000.0);
        }
    }
}
