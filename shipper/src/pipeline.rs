//! The shipper's main loop: discover files, read, frame, rate limit, produce, track
//! acknowledgements, checkpoint, drain on shutdown.
//!
//! Owns [`Shipper`] and [`run`]. Invariants: a checkpoint moves only when Kafka acknowledged
//! every record before it (at-least-once, never a gap); reading pauses while unacknowledged
//! bytes exceed `max_in_flight_bytes` (backpressure), so memory stays bounded whatever Kafka
//! does; a failed delivery is never dropped nor sent out of file order: the producer is
//! replaced and files are read again from their acknowledged offsets (`pipeline/recover.rs`);
//! one `select! { biased; }` loop on one thread owns all state. Must not: parse records beyond
//! framing and session keys.

mod discover;
mod heartbeat;
mod recover;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use pgtrail_avro::{Encoder, LogFormat, RecordFields, Registry};
use pgtrail_connect::Health;
use rdkafka::error::RDKafkaErrorCode;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, FormatChoice};
use crate::error::ShipperError;
use crate::framer::Frame;
use crate::kafka::{Delivery, KafkaSink, Opaque, SinkSettings};
use crate::tailer::{SourceInfo, TailedFile};
use crate::telemetry::{Metrics, ReasonLabel};

/// What a finished run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Records acknowledged by Kafka in this run.
    pub records_shipped: u64,
    /// Files tailed in this run.
    pub files_seen: usize,
    /// Whether every produced record was acknowledged before exit.
    pub drained: bool,
}

/// A framed record waiting to be produced (or produced again after an error).
struct Outgoing {
    file_key: u64,
    seq: Option<u64>,
    offset: u64,
    end: u64,
    format: LogFormat,
    record_len: u32,
    key: Vec<u8>,
    payload: Vec<u8>,
}

/// All state of a running shipper.
pub struct Shipper {
    cfg: Config,
    info: SourceInfo,
    sink: KafkaSink,
    encoder: Encoder,
    checkpoints: crate::checkpoint::Checkpoints,
    metrics: Metrics,
    /// Liveness (the loop beats) and readiness (state lock, Kafka).
    health: Arc<Health>,
    files: BTreeMap<u64, TailedFile>,
    by_inode: HashMap<(u64, u64), u64>,
    skipped: HashSet<(u64, u64)>,
    /// Files with the identity of a file being shipped (copies): not opened.
    copies: HashSet<(u64, u64)>,
    next_key: u64,
    files_seen: usize,
    ready: VecDeque<Outgoing>,
    /// A recovery from a failed delivery under way.
    recovery: Option<recover::Recovery>,
    /// Recoveries since a record was last acknowledged (their backoff).
    recoveries: u32,
    /// The delivery reports of a producer that replaced the old one, for the loop to take.
    fresh_deliveries: Option<mpsc::UnboundedReceiver<Delivery>>,
    limiter: Option<DefaultDirectRateLimiter>,
    wait_until: Option<Instant>,
    in_flight_records: usize,
    in_flight_bytes: usize,
    backpressured: bool,
    cursor: u64,
    chunk: Vec<u8>,
    scanned: bool,
    shipped: u64,
    read: u64,
    fatal: Option<ShipperError>,
    last_progress: Instant,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Readiness condition: the state directory's lock is held.
const READY_STATE_LOCK: &str = "state_lock";
/// Readiness condition: Kafka answers (the topic was found or created; not all brokers down).
pub(crate) const READY_KAFKA: &str = "kafka";

/// Runs the shipper until `cancel` (or, with `once`, until everything present is shipped).
pub async fn run(cfg: Config, cancel: CancellationToken) -> Result<RunSummary, ShipperError> {
    let metrics = Metrics::default();
    metrics.kafka_up.set(1);
    let health = Health::new(
        Config::ms(cfg.liveness_timeout_ms),
        &[READY_STATE_LOCK, READY_KAFKA],
    );
    if let Some(addr) = cfg.metrics_socket() {
        let bound =
            crate::telemetry::serve(addr, &metrics, health.clone(), cancel.child_token()).await?;
        info!(%bound, "Serving Prometheus metrics on /metrics.");
    }
    let checkpoints = crate::checkpoint::Checkpoints::open(&cfg.state_dir)?;
    health.report(READY_STATE_LOCK, true);
    let topic = cfg.topic();
    let encoder = match &cfg.registry_url {
        Some(url) => {
            let auth = cfg.registry.auth().map_err(|e| ShipperError::Config {
                reason: e.to_string(),
            })?;
            let registry = Registry::with_auth(url, auth)?;
            let ids = register_with_retry(&registry, &topic, &cancel).await?;
            info!(
                topic,
                schema_id = ids.log,
                heartbeat_schema_id = ids.heartbeat,
                "Registered the envelope schemas; using Confluent framing."
            );
            Encoder::confluent(ids)
        }
        None => Encoder::single_object(),
    };
    let (sink, deliveries) = KafkaSink::new(&SinkSettings::from_config(&cfg))?;
    if cfg.create_topic {
        sink.ensure_topic(
            &cfg.brokers,
            &cfg.kafka,
            cfg.topic_partitions,
            cfg.topic_replication_factor,
            &cancel,
        )
        .await?;
        health.report(READY_KAFKA, true);
    }
    let host = cfg.host.clone().unwrap_or_else(hostname);
    let limiter = NonZeroU32::new(cfg.max_records_per_sec).map(|rate| {
        let burst = NonZeroU32::new(cfg.burst()).unwrap_or(rate);
        RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
    });
    info!(
        server = cfg.server,
        topic,
        globs = ?cfg.logs,
        checkpoints = checkpoints.len(),
        once = cfg.once,
        max_records_per_sec = cfg.max_records_per_sec,
        "Shipper starting."
    );
    if !matches!(cfg.format, FormatChoice::Csvlog | FormatChoice::Jsonlog)
        && !crate::tailer::prefix_has_time(&cfg.log_line_prefix)
    {
        warn!(
            "log_line_prefix has no time escape (%m, %t or %n): stderr logs are told apart by their first line only, so two that begin with the same line are taken for copies of one."
        );
    }
    let mut shipper = Shipper {
        info: SourceInfo {
            server: cfg.server.clone(),
            host,
            log_line_prefix: cfg.log_line_prefix.clone(),
            log_timezone: cfg.log_timezone.clone(),
            max_record_bytes: cfg.max_record_bytes,
        },
        chunk: Vec::with_capacity(cfg.read_chunk_bytes),
        cfg,
        sink,
        encoder,
        checkpoints,
        metrics,
        health,
        files: BTreeMap::new(),
        by_inode: HashMap::new(),
        skipped: HashSet::new(),
        copies: HashSet::new(),
        next_key: 0,
        files_seen: 0,
        ready: VecDeque::new(),
        recovery: None,
        recoveries: 0,
        fresh_deliveries: None,
        limiter,
        wait_until: None,
        in_flight_records: 0,
        in_flight_bytes: 0,
        backpressured: false,
        cursor: 0,
        scanned: false,
        shipped: 0,
        read: 0,
        fatal: None,
        last_progress: Instant::now(),
    };
    shipper.run_loop(deliveries, cancel).await
}

async fn register_with_retry(
    registry: &Registry,
    topic: &str,
    cancel: &CancellationToken,
) -> Result<pgtrail_avro::registry::EnvelopeIds, ShipperError> {
    let mut delay = Duration::from_millis(500);
    loop {
        match registry.register_envelope(topic).await {
            Ok(id) => return Ok(id),
            Err(e)
                if e.class() == pgtrail_avro::ErrorClass::Retryable && !cancel.is_cancelled() =>
            {
                warn!(error = %e, "Schema registry unavailable; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl Shipper {
    async fn run_loop(
        &mut self,
        mut deliveries: mpsc::UnboundedReceiver<Delivery>,
        cancel: CancellationToken,
    ) -> Result<RunSummary, ShipperError> {
        let mut scan = interval(Config::ms(self.cfg.scan_interval_ms));
        let mut poll = interval(Config::ms(self.cfg.poll_interval_ms));
        let mut ckpt = interval(Config::ms(self.cfg.checkpoint_interval_ms));
        // Heartbeats only while running as a service (not `once`), when enabled.
        let beats = self.cfg.heartbeat_interval_ms > 0 && !self.cfg.once;
        let mut beat = interval(Config::ms(self.cfg.heartbeat_interval_ms.max(1)));
        for t in [&mut scan, &mut poll, &mut ckpt, &mut beat] {
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        }
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let started = Instant::now();
        loop {
            self.health.beat(std::time::Instant::now());
            if let Some(e) = self.fatal.take() {
                self.checkpoints.write_if_dirty()?;
                return Err(e);
            }
            if self.cfg.once && self.scanned && self.all_shipped() {
                self.checkpoints.write_if_dirty()?;
                let secs = started.elapsed().as_secs_f64();
                info!(
                    records = self.shipped,
                    files = self.files_seen,
                    seconds = secs,
                    records_per_sec = (self.shipped as f64 / secs.max(1e-9)).round(),
                    "Shipped everything present; exiting."
                );
                return Ok(self.summary(true));
            }
            let pump = self.wants_pump();
            let wake = self.wait_until.unwrap_or(far);
            let recovery = self.recovery_due();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(d) = deliveries.recv() => {
                    self.on_delivery(d);
                    while let Ok(d) = deliveries.try_recv() {
                        self.on_delivery(d);
                    }
                }
                _ = ckpt.tick() => self.checkpoint()?,
                _ = beat.tick(), if beats => self.heartbeat(),
                _ = scan.tick() => {
                    self.scan();
                    self.check_rewritten();
                }
                _ = poll.tick() => self.poll_files(),
                _ = sleep_until(wake), if self.wait_until.is_some() => self.wait_until = None,
                _ = sleep_until(recovery.unwrap_or(far)), if recovery.is_some() => self.recover()?,
                _ = std::future::ready(()), if pump => self.pump()?,
            }
            if let Some(d) = self.fresh_deliveries.take() {
                deliveries = d;
            }
        }
        self.drain(&mut deliveries).await
    }

    fn summary(&self, drained: bool) -> RunSummary {
        RunSummary {
            records_shipped: self.shipped,
            files_seen: self.files_seen,
            drained,
        }
    }

    /// SIGTERM: stop reading, wait for in-flight acknowledgements up to the drain deadline,
    /// write the checkpoint.
    async fn drain(
        &mut self,
        deliveries: &mut mpsc::UnboundedReceiver<Delivery>,
    ) -> Result<RunSummary, ShipperError> {
        info!(
            in_flight = self.in_flight_records,
            "Stopping: reading stopped, draining in-flight records."
        );
        let deadline = Instant::now() + Duration::from_secs(self.cfg.drain_timeout_secs);
        while self.in_flight_records > 0 {
            tokio::select! {
                biased;
                d = deliveries.recv() => match d {
                    Some(d) => self.on_delivery(d),
                    None => break,
                },
                _ = sleep_until(deadline) => break,
            }
        }
        self.checkpoints.write_if_dirty()?;
        let drained = self.in_flight_records == 0 && !self.recovering();
        if drained {
            info!(records = self.shipped, "Drained; checkpoint written.");
        } else {
            warn!(
                in_flight = self.in_flight_records,
                "Drain deadline passed; unacknowledged records will be shipped again after restart."
            );
        }
        Ok(self.summary(drained))
    }

    fn all_shipped(&self) -> bool {
        self.ready.is_empty()
            && !self.recovering()
            && self.in_flight_records == 0
            && self.files.values().all(|f| f.eof && f.is_drained())
    }

    fn wants_pump(&self) -> bool {
        if self.wait_until.is_some()
            || self.recovering()
            || self.in_flight_bytes >= self.cfg.max_in_flight_bytes
        {
            return false;
        }
        !self.ready.is_empty() || self.files.values().any(|f| !f.eof)
    }

    /// Produces ready records and reads more, within a budget, without ever blocking.
    fn pump(&mut self) -> Result<(), ShipperError> {
        let mut budget = 4096usize;
        while budget > 0 {
            if self.in_flight_bytes >= self.cfg.max_in_flight_bytes {
                return Ok(());
            }
            if self.ready.is_empty() {
                if !self.read_next()? {
                    return Ok(());
                }
                continue;
            }
            if let Some(limiter) = &self.limiter
                && let Err(not_until) = limiter.check()
            {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                self.wait_until = Some(Instant::now() + wait);
                self.metrics.rate_limited.inc();
                return Ok(());
            }
            let Some(out) = self.ready.pop_front() else {
                continue;
            };
            if !self.send(out)? {
                return Ok(());
            }
            budget -= 1;
        }
        Ok(())
    }

    /// Hands a record to librdkafka. `Ok(false)`: its queue is full, the record was put back.
    fn send(&mut self, mut out: Outgoing) -> Result<bool, ShipperError> {
        let seq = match out.seq {
            Some(s) => s,
            // A file dropped after truncation: its records still ship, their acks are ignored.
            None => self
                .files
                .get_mut(&out.file_key)
                .map_or(u64::MAX, |f| f.acks.push(out.end)),
        };
        out.seq = Some(seq);
        let opaque = Opaque {
            file_key: out.file_key,
            seq,
            end: out.end,
            record_len: out.record_len,
            format: out.format,
        };
        match self.sink.send(&out.key, &out.payload, opaque) {
            Ok(()) => {
                self.in_flight_records += 1;
                self.in_flight_bytes += out.payload.len();
                Ok(true)
            }
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                self.ready.push_front(out);
                self.wait_until = Some(Instant::now() + Duration::from_millis(50));
                Ok(false)
            }
            // The producer is unusable: replaced, and the record read again from its file.
            Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) => {
                self.start_recovery(&e.to_string());
                Ok(false)
            }
            Err(e) => Err(ShipperError::DeliveryRefused {
                topic: self.sink.topic().to_owned(),
                file: self.file_text(out.file_key),
                offset: out.offset,
                reason: e.to_string(),
            }),
        }
    }

    fn file_text(&self, key: u64) -> String {
        self.files
            .get(&key)
            .map_or_else(|| format!("file#{key}"), |f| f.id_text.clone())
    }

    fn on_delivery(&mut self, d: Delivery) {
        self.in_flight_records = self.in_flight_records.saturating_sub(1);
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(d.message_len);
        let o = d.opaque;
        if o.file_key == heartbeat::HEARTBEAT_KEY {
            self.on_heartbeat_delivery(&d);
            return;
        }
        match d.result {
            Ok(()) => {
                self.shipped += 1;
                self.delivered();
                let label = Metrics::format(o.format);
                self.metrics.records_shipped.get_or_create(&label).inc();
                self.metrics
                    .bytes_shipped
                    .get_or_create(&label)
                    .inc_by(u64::from(o.record_len));
                if let Some(f) = self.files.get_mut(&o.file_key)
                    && let Some(offset) = f.acks.ack(o.seq)
                {
                    self.checkpoints
                        .set(&f.id_text, &f.path.to_string_lossy(), offset);
                }
            }
            Err(fail) => {
                let reason = format!("{:?}", fail.error.rdkafka_error_code());
                self.metrics
                    .delivery_errors
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                let file = self.file_text(o.file_key);
                let offset = o.end - u64::from(o.record_len);
                if fail.permanent {
                    self.fatal.get_or_insert(ShipperError::DeliveryRefused {
                        topic: self.sink.topic().to_owned(),
                        file,
                        offset,
                        reason: fail.error.to_string(),
                    });
                    return;
                }
                warn!(file, offset, error = %fail.error, "Delivery failed.");
                self.start_recovery(&fail.error.to_string());
            }
        }
    }

    /// Reads one chunk of the next file that has unread bytes and frames it.
    fn read_next(&mut self) -> Result<bool, ShipperError> {
        let next = self
            .files
            .range(self.cursor..)
            .chain(self.files.range(..self.cursor))
            .find(|(_, f)| !f.eof)
            .map(|(k, _)| *k);
        let Some(key) = next else { return Ok(false) };
        self.cursor = key + 1;
        let chunk_size = self.cfg.read_chunk_bytes;
        let Some(f) = self.files.get_mut(&key) else {
            return Ok(false);
        };
        let n = match f.read_chunk(&mut self.chunk, chunk_size) {
            Ok(n) => n,
            Err(source) => {
                warn!(path = %f.path.display(), error = %source, "Read failed; will retry.");
                f.eof = true;
                return Ok(true);
            }
        };
        if n == 0 {
            return Ok(true);
        }
        let chunk = std::mem::take(&mut self.chunk);
        let (read, bytes) = self.frame(key, |framer, emit| framer.feed(&chunk, emit));
        self.chunk = chunk;
        self.read += read;
        debug!(
            file_key = key,
            bytes = n,
            records = read,
            framed_bytes = bytes,
            "Read chunk."
        );
        Ok(true)
    }

    /// Runs `step` on a file's framer and turns emitted frames into ready records.
    fn frame(
        &mut self,
        file_key: u64,
        step: impl FnOnce(&mut crate::framer::Framer, &mut dyn FnMut(Frame<'_>)),
    ) -> (u64, u64) {
        let Some(f) = self.files.get_mut(&file_key) else {
            return (0, 0);
        };
        let (encoder, ready, metrics) = (&self.encoder, &mut self.ready, &self.metrics);
        let TailedFile {
            framer,
            keys,
            encoded_source,
            id_text,
            format,
            ..
        } = f;
        let label = Metrics::format(*format);
        let (mut n, mut bytes) = (0u64, 0u64);
        let read_at = now_micros();
        step(framer, &mut |fr: Frame<'_>| {
            n += 1;
            bytes += fr.len;
            if fr.truncated {
                metrics.records_truncated.get_or_create(&label).inc();
                warn!(file = %id_text, offset = fr.offset, len = fr.len, kept = fr.data.len(), "Record longer than max_record_bytes; shipping it truncated.");
            }
            let payload = encoder.encode(
                encoded_source,
                RecordFields {
                    offset: fr.offset as i64,
                    data: fr.data,
                    read_at_micros: read_at,
                    original_length: fr.truncated.then_some(fr.len as i64),
                },
            );
            let key = keys.key(fr.data).unwrap_or(id_text.as_bytes()).to_vec();
            ready.push_back(Outgoing {
                file_key,
                seq: None,
                offset: fr.offset,
                end: fr.offset + fr.len,
                format: *format,
                record_len: fr.len.min(u64::from(u32::MAX)) as u32,
                key,
                payload,
            });
        });
        self.metrics.records_read.get_or_create(&label).inc_by(n);
        self.metrics.bytes_read.get_or_create(&label).inc_by(bytes);
        (n, bytes)
    }
}
