//! The Kafka side of the processor: the consumer with manual offsets, its rebalance callbacks,
//! and the poll loop.
//!
//! Owns [`run`] and the consumer context. Each partition starts at the `txn` version its
//! table holds + 1, written into the assignment inside the rebalance callback (eager and
//! cooperative-sticky alike); Kafka's committed offsets are never read. Revocation commits
//! what is in hand (or drops it) before the partitions are given up. Invariants: the loop
//! checks cancellation every poll (≤ 100 ms); SIGTERM stops intake, commits within the drain
//! deadline and returns. Must not: parse records or touch tables itself (the worker does).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pgtrail_avro::{Decoder, Registry};
use pgtrail_connect::{GateContext, Health, LogGate};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::dlq::DeadLetters;
use crate::error::ProcessorError;
use crate::failpoint::Failpoints;
use crate::telemetry::{Metrics, PartitionLabel, ReasonLabel};
use crate::worker::{Totals, Worker};

/// Readiness condition: the consumer joined its group (a first assignment, maybe empty).
pub const READY_GROUP: &str = "consumer_group";
/// Readiness condition: no partition waits for the Schema Registry.
pub const READY_REGISTRY: &str = "schema_registry";

/// The consumer context: rebalance callbacks reach the worker through it.
pub struct Ctx {
    worker: Mutex<Worker>,
    metrics: Metrics,
    gate: Arc<LogGate>,
    health: Arc<Health>,
}

impl Ctx {
    fn worker(&self) -> MutexGuard<'_, Worker> {
        self.worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.gate.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.gate.error(&error, reason);
    }

    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag_messages
                        .get_or_create(&PartitionLabel {
                            topic: topic.clone(),
                            partition: p.to_string(),
                        })
                        .set(s.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let mut w = self.worker();
        let kind = |k: &str| ReasonLabel { reason: k.into() };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.metrics.rebalances.get_or_create(&kind("assign")).inc();
                self.health.report(READY_GROUP, true);
                if let Err(e) = w.assign(tpl, consumer) {
                    error!(error = %e, "Cannot resume the assigned partitions.");
                    w.failed = Some(e);
                    return;
                }
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    error!(error = %e, "Assign failed.");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                let k = if lost { "lost" } else { "revoke" };
                self.metrics.rebalances.get_or_create(&kind(k)).inc();
                w.revoke(tpl, lost, consumer);
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    error!(error = %e, "Unassign failed.");
                }
            }
            other => {
                error!(code = ?other, "Rebalance error.");
                let _ = consumer.unassign();
            }
        }
    }
}

/// How long `exit_when_idle` waits beyond its duration while no partition is assigned.
/// (A killed instance stays a group member until the coordinator gives up on it; Tansu takes
/// up to the rebalance timeout, `max.poll.interval.ms`.)
const NO_ASSIGNMENT_GRACE: Duration = Duration::from_secs(60);

/// Messages handled per clock read in the poll loop.
const CLOCK_EVERY: u32 = 32;

/// How often the loop logs its totals.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

fn kafka(what: &str, e: impl std::fmt::Display) -> ProcessorError {
    ProcessorError::Kafka {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

/// The message decoder of `cfg`: with its Schema Registry client when one is configured.
pub fn decoder(cfg: &Config) -> Result<Decoder, ProcessorError> {
    let registry = match cfg.registry_url.as_deref() {
        Some(url) => {
            let config = |reason: String| ProcessorError::Config { reason };
            let auth = cfg.registry.auth().map_err(|e| config(e.to_string()))?;
            let registry =
                Registry::with_auth(url, auth).map_err(|e| config(format!("registry_url: {e}")))?;
            Some(registry)
        }
        None => None,
    };
    Ok(Decoder::new(registry))
}

/// The consumer's client configuration.
pub fn consumer_config(cfg: &Config) -> Result<ClientConfig, ProcessorError> {
    let mut c = ClientConfig::new();
    c.set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "30000")
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("auto.offset.reset", "earliest")
        .set("statistics.interval.ms", "5000")
        .set("fetch.wait.max.ms", "100")
        // Prefetched messages wait in librdkafka's queue; the processor is slower than the
        // fetcher, so the default 64 MiB would fill up and count against the memory budget.
        .set("queued.max.messages.kbytes", "16384")
        // ... and with a full queue librdkafka postpones the partition's next fetch by this
        // much: its default (1 s) starved the processor once it had drained 16 MiB (measured:
        // a bare consumer read 82k messages/s with 1 s, 440k/s with the default queue size).
        .set("fetch.queue.backoff.ms", "20");
    cfg.kafka
        .apply(&mut c)
        .map_err(|e| ProcessorError::Config {
            reason: e.to_string(),
        })?;
    c.set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &cfg.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("partition.assignment.strategy", &cfg.assignment_strategy);
    Ok(c)
}

/// Makes sure `topic` exists: looks it up first (creating needs an ACL that a processor in
/// production may not have, and librdkafka's mock cluster does not answer CreateTopics), and
/// creates it (1 partition) only when it is missing.
fn ensure_topic(
    cfg: &Config,
    topic: &str,
    rt: &Handle,
    gate: &Arc<LogGate>,
) -> Result<(), ProcessorError> {
    let c = cfg
        .kafka
        .client_config(&cfg.brokers)
        .map_err(|e| ProcessorError::Config {
            reason: e.to_string(),
        })?;
    if topic_exists(&c, topic, gate)? {
        return Ok(());
    }
    let admin: AdminClient<GateContext> = c
        .create_with_context(GateContext(gate.clone()))
        .map_err(|e| kafka("admin client", pgtrail_connect::kafka_error(&e)))?;
    let result = create_topic(&admin, topic, rt);
    // Destroying a client waits for its threads: not on the way to the first message.
    std::thread::spawn(move || drop(admin));
    result
}

/// Looks `topic` up with a client of its own, in 1 s steps for up to 15 s, serving the
/// client's events between steps so that a connect failure no retry fixes ends the wait.
fn topic_exists(
    c: &ClientConfig,
    topic: &str,
    gate: &Arc<LogGate>,
) -> Result<bool, ProcessorError> {
    let client: BaseConsumer<GateContext> = c
        .create_with_context(GateContext(gate.clone()))
        .map_err(|e| kafka("metadata client", pgtrail_connect::kafka_error(&e)))?;
    let mut attempt = 0;
    let metadata = loop {
        attempt += 1;
        match client.fetch_metadata(Some(topic), Duration::from_secs(1)) {
            Ok(m) => {
                gate.established();
                break m;
            }
            Err(e) => {
                // One queued event (log line, error) is served per call.
                for _ in 0..64 {
                    let _ = client.poll(Duration::ZERO);
                }
                if let Some(reason) = gate.connect_failure() {
                    return Err(kafka("connect", reason));
                }
                if attempt >= 15 {
                    return Err(kafka(&format!("metadata of {topic}"), e));
                }
            }
        }
    };
    let exists = metadata
        .topics()
        .iter()
        .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
    std::thread::spawn(move || drop(client));
    Ok(exists)
}

fn create_topic(
    admin: &AdminClient<GateContext>,
    topic: &str,
    rt: &Handle,
) -> Result<(), ProcessorError> {
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = rt
        .block_on(admin.create_topics([&new], &opts))
        .map_err(|e| kafka(&format!("create topic {topic}"), e))?;
    for r in results {
        match r {
            Ok(name) => info!(topic = %name, "Created dead-letter topic."),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(kafka(&format!("create topic {name}"), format!("{code:?}")));
            }
        }
    }
    Ok(())
}

/// Makes the seeks, then the pauses and resumptions, the worker asked for.
fn seek(consumer: &BaseConsumer<Ctx>, w: &mut Worker) -> Result<(), ProcessorError> {
    for (tp, offset) in std::mem::take(&mut w.seeks) {
        let to = rdkafka::Offset::Offset(offset);
        if let Err(e) = consumer.seek(&tp.topic, tp.partition, to, Duration::from_secs(10)) {
            return Err(kafka(&format!("seek {tp}"), e));
        }
    }
    for (tp, pause) in std::mem::take(&mut w.pauses) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.topic, tp.partition);
        let r = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        if let Err(e) = r {
            return Err(kafka(&format!("pause {tp}"), e));
        }
    }
    Ok(())
}

/// Consumes until cancelled (or idle, with `exit_when_idle_ms`). Blocking: call from a thread
/// outside the runtime `rt` belongs to (e.g. `spawn_blocking`).
pub fn run(
    cfg: Config,
    metrics: Metrics,
    health: Arc<Health>,
    cancel: CancellationToken,
    rt: Handle,
) -> Result<Totals, ProcessorError> {
    let consumer = connect(&cfg, &metrics, health, &rt)?;
    let mut poll = PollLoop::new(&cfg);
    let outcome = loop {
        if cancel.is_cancelled() {
            info!("Draining: committing what is in hand.");
            let deadline = Instant::now() + Config::ms(cfg.drain_deadline_ms);
            let r = consumer
                .context()
                .worker()
                .commit_all(Some(deadline), &consumer);
            break r;
        }
        poll.poll(&consumer)?;
        if let Some(finished) = poll.tick(&consumer, &metrics)? {
            break finished;
        }
    };
    let totals = consumer.context().worker().totals.clone();
    if outcome.is_ok() {
        consumer.context().worker().leave_members();
    }
    consumer.unsubscribe();
    outcome.map(|()| totals)
}

/// The worker, the consumer subscribed to the topics, the dead-letter topic made sure of.
fn connect(
    cfg: &Config,
    metrics: &Metrics,
    health: Arc<Health>,
    rt: &Handle,
) -> Result<BaseConsumer<Ctx>, ProcessorError> {
    let gate = Arc::new(LogGate::default());
    let dlq = DeadLetters::new(cfg, gate.clone())?;
    let failpoints = Failpoints::from_env().map_err(|reason| ProcessorError::Config { reason })?;
    let worker = Worker::new(
        cfg.clone(),
        rt.clone(),
        metrics.clone(),
        decoder(cfg)?,
        dlq,
        std::sync::Arc::new(failpoints),
    );
    let ctx = Ctx {
        worker: Mutex::new(worker),
        metrics: metrics.clone(),
        gate: gate.clone(),
        health,
    };
    let consumer: BaseConsumer<Ctx> = consumer_config(cfg)?
        .create_with_context(ctx)
        .map_err(|e| kafka("consumer", pgtrail_connect::kafka_error(&e)))?;
    let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| kafka("subscribe", e))?;
    info!(
        group = cfg.group,
        topics = cfg.topics.join(","),
        "Subscribed."
    );
    // While librdkafka joins the group in the background: nothing is dead-lettered before
    // the first poll.
    ensure_topic(cfg, &cfg.dead_letter_topic, rt, &gate)?;
    Ok(consumer)
}

/// The poll loop's own state: clocks, progress, idleness.
struct PollLoop {
    idle_exit: Option<Duration>,
    topics: String,
    group: String,
    started: Instant,
    ever_assigned: bool,
    last_tick: Instant,
    /// The clock as last read, and messages handled since.
    now: Instant,
    clock_age: u32,
    last_progress: (Instant, Totals),
    /// The last poll returned a message (the next one does not wait).
    busy: bool,
}

impl PollLoop {
    fn new(cfg: &Config) -> PollLoop {
        PollLoop {
            idle_exit: cfg.exit_when_idle_ms.map(Config::ms),
            topics: cfg.topics.join(","),
            group: cfg.group.clone(),
            started: Instant::now(),
            ever_assigned: false,
            last_tick: Instant::now(),
            now: Instant::now(),
            clock_age: 0,
            last_progress: (Instant::now(), Totals::default()),
            busy: false,
        }
    }

    /// Polls once and hands a message to the worker.
    fn poll(&mut self, consumer: &BaseConsumer<Ctx>) -> Result<(), ProcessorError> {
        // Right after a message more are usually queued: a poll that does not wait reads the
        // clock less (librdkafka reads it twice per waiting poll, rdkafka twice more).
        let polled = consumer.poll(if self.busy {
            Duration::ZERO
        } else {
            Duration::from_millis(100)
        });
        self.busy = matches!(polled, Some(Ok(_)));
        // One clock read per CLOCK_EVERY messages (a read per message was 3 % of this thread's
        // time), and after every empty poll: a message's time (its rows' ingest_ts, the outcome
        // window's start) lags by at most a poll timeout plus that many messages' work.
        self.clock_age += 1;
        if polled.is_none() || self.clock_age >= CLOCK_EVERY {
            self.now = Instant::now();
            self.clock_age = 0;
        }
        match polled {
            Some(Ok(m)) => {
                let mut w = consumer.context().worker();
                let consumed = crate::worker::Consumed {
                    topic: m.topic(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key(),
                    payload: m.payload().unwrap_or(&[]),
                    timestamp_ms: m.timestamp().to_millis(),
                };
                w.handle(consumed, self.now)?;
                seek(consumer, &mut w)?;
            }
            Some(Err(e)) => warn!(error = %e, "Consumer error."),
            None => {}
        }
        Ok(())
    }

    /// Every 200 ms: the worker's tick, progress, and (batch mode) the idle exit, whose
    /// outcome is returned when it is time to stop.
    fn tick(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        metrics: &Metrics,
    ) -> Result<Option<Result<(), ProcessorError>>, ProcessorError> {
        if self.now.saturating_duration_since(self.last_tick) < Duration::from_millis(200) {
            return Ok(None);
        }
        self.last_tick = self.now;
        metrics
            .last_commit_age_seconds
            .set(metrics.last_commit_age_seconds.get() + 0.2);
        let ctx = consumer.context();
        if let Some(reason) = ctx.gate.connect_failure() {
            return Err(kafka("connect", reason));
        }
        ctx.health.beat(self.now);
        let waiting = metrics
            .partitions_waiting
            .get_or_create(&ReasonLabel {
                reason: crate::telemetry::WAIT_REGISTRY.to_owned(),
            })
            .get();
        ctx.health.report(READY_REGISTRY, waiting == 0);
        let mut w = consumer.context().worker();
        if let Some(e) = w.failed.take() {
            return Err(e);
        }
        w.tick(consumer)?;
        seek(consumer, &mut w)?;
        self.ever_assigned |= w.assigned() > 0;
        self.progress(&w);
        self.idle_exit(consumer, &mut w)
    }

    /// Logs the totals every [`PROGRESS_EVERY`].
    fn progress(&mut self, w: &Worker) {
        if self.last_progress.0.elapsed() < PROGRESS_EVERY {
            return;
        }
        let (t, before) = (&w.totals, &self.last_progress.1);
        let secs = self.last_progress.0.elapsed().as_secs_f64();
        info!(
            messages = t.messages,
            rows = t.rows,
            dead_letters = t.dead_letters,
            commits = t.commits,
            commit_wait_ms = t.commit_wait_ms,
            partitions = w.assigned(),
            messages_per_sec = ((t.messages - before.messages) as f64 / secs) as u64,
            "Progress."
        );
        self.last_progress = (Instant::now(), t.clone());
    }

    /// With `exit_when_idle`: once every assigned partition was idle that long, releases
    /// what is held and commits (the run's outcome); an error when no partition was ever
    /// assigned.
    fn idle_exit(
        &self,
        consumer: &BaseConsumer<Ctx>,
        w: &mut Worker,
    ) -> Result<Option<Result<(), ProcessorError>>, ProcessorError> {
        let Some(idle) = self.idle_exit else {
            return Ok(None);
        };
        // Without any partition (a rebalance may still wait for a dead member's session to
        // expire) idleness counts only after a grace period.
        let grace = if w.assigned() == 0 {
            NO_ASSIGNMENT_GRACE
        } else {
            Duration::ZERO
        };
        // A partition waiting for the registry is not idle: its records are still to come.
        if w.last_activity.elapsed() < idle + grace
            || self.started.elapsed() < idle + grace
            || w.waiting() > 0
        {
            return Ok(None);
        }
        if !self.ever_assigned {
            // A batch run that never got a partition processed nothing: say so.
            return Err(kafka(
                "exit-when-idle",
                format!(
                    "no partition of {} was assigned within {} s (group {})",
                    self.topics,
                    (idle + grace).as_secs(),
                    self.group
                ),
            ));
        }
        info!(
            idle_ms = idle.as_millis() as u64,
            partitions = w.assigned(),
            "Every assigned partition idle: finishing."
        );
        Ok(Some(w.finish_all(consumer)))
    }
}
