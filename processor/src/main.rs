//! `pgtrail-processor`: parse flags and config, set up tracing and metrics, run the consumer
//! until SIGTERM/SIGINT (or, with `--exit-when-idle`, until the topics are drained), map
//! errors to exit codes; `status` prints what the tables hold; `jobs` lists the job-audit
//! rows; `replay` derives rows again from Kafka; `lag` monitors consumer lag.
//!
//! Exit codes: 0 success, 1 other error, 2 configuration, 3 internal error, 4 Kafka, 5 Delta,
//! 6 topic recreated or truncated, 7 offsets to replay deleted by Kafka; `lag --once`: 0 OK,
//! 1 warning, 2 critical, 3 could not run.
//! Environment: `PGTRAIL_LOG` sets the log filter (default [`processor::DEFAULT_LOG_FILTER`]).
//! Must not: hold logic.

/// mimalloc: the processor allocates and frees many short strings per record (fields, rows,
/// Arrow buffers); glibc's allocator spent about 45% of the pipeline bench in malloc/free.
/// Built with `no_thp` (no `MADV_HUGEPAGE` on its regions): Arrow buffers are freed a flush
/// at a time, and purging them out of transparent huge pages and faulting them back in cost
/// a fifth of the processor's CPU (633k page faults per million records, 9.2 s of CPU; without
/// THP 194k and 7.4 s). On hosts whose THP mode is `always` (not `madvise`), set
/// `MIMALLOC_ALLOW_THP=0` for the same effect. mimalloc 2 (feature `v2`), not 3: v3 keeps freed
/// memory for 1 s before giving it back, v2 for 10 ms; with rows built on a thread of their
/// own (three threads allocating), v3's peak RSS went past the 512 MB budget (480–523 MiB in
/// `bench/process-bench`), v2's stayed at 418–496 MiB, for somewhat more page faults.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use processor::config::{Command, JobsArgs, LagArgs, RunArgs, StatusArgs, TablesArgs};
use processor::consumer::{READY_GROUP, READY_REGISTRY};
use processor::telemetry::Metrics;
use processor::{Cli, Config};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn init_tracing(format: &str) {
    let filter = EnvFilter::try_from_env("PGTRAIL_LOG")
        .unwrap_or_else(|_| EnvFilter::new(processor::DEFAULT_LOG_FILTER));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the runtime.");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => rt.block_on(run(*args)),
        Command::Status(args) => rt.block_on(status(args)),
        Command::Lag(args) => rt.block_on(lag(args)),
        Command::Jobs(args) => rt.block_on(jobs(args)),
        Command::Replay(args) => rt.block_on(replay(*args)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "Processor failed.");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = match Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Invalid configuration.");
            return Ok(ExitCode::from(e.exit_code()));
        }
    };
    // The embedded cluster must outlive the consumer: it is dropped at the end of `run`.
    let _embedded = match &args.embedded_kafka {
        Some(file) => {
            let cluster = rdkafka::mocking::MockCluster::new(1)?;
            for t in cfg.topics.iter().filter(|t| !t.starts_with('^')) {
                cluster.create_topic(t, 3, 1)?;
            }
            cluster.create_topic(&cfg.dead_letter_topic, 1, 1)?;
            cfg.brokers = cluster.bootstrap_servers();
            std::fs::write(file, &cfg.brokers)?;
            tracing::info!(
                brokers = cfg.brokers,
                "Embedded Kafka (in-process, not durable)."
            );
            Some(cluster)
        }
        None => None,
    };
    let health = pgtrail_connect::Health::new(
        Config::ms(cfg.liveness_timeout_ms),
        &[READY_LAKE, READY_GROUP, READY_REGISTRY],
    );
    if let Err(e) = check_lake(&cfg).await {
        tracing::error!(error = %e, "The lake cannot be used.");
        return Ok(ExitCode::from(e.exit_code()));
    }
    health.report(READY_LAKE, true);
    let cancel = cancel_on_signals()?;
    let metrics = Metrics::default();
    if cfg.metrics_addr != "none" {
        let addr = cfg.metrics_addr.parse()?;
        let bound =
            processor::telemetry::serve(addr, &metrics, health.clone(), cancel.clone()).await?;
        tracing::info!(%bound, "Metrics at /metrics.");
    }
    let recorder = processor::joblog::Recorder::start(
        &cfg,
        processor::job::JobMode::Incremental,
        metrics.clone(),
    )
    .unwrap_or_else(|e| {
        tracing::warn!(error = %e, "The job-audit table cannot be written.");
        None
    });
    let handle = tokio::runtime::Handle::current();
    let worker_cancel = cancel.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        processor::consumer::run(cfg, metrics, health, worker_cancel, handle)
    })
    .await?;
    cancel.cancel();
    if let Some(recorder) = recorder {
        recorder.finish(run_end(&outcome), None).await;
    }
    Ok(match outcome {
        Ok(t) => {
            tracing::info!(
                messages = t.messages,
                rows = t.rows,
                dead_letters = t.dead_letters,
                commits = t.commits,
                commit_wait_ms = t.commit_wait_ms,
                "Processor stopped."
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, class = ?e.class(), "Processor stopped on an error.");
            ExitCode::from(e.exit_code())
        }
    })
}

/// A token cancelled by SIGTERM or SIGINT.
/// A run's end row from its outcome.
fn run_end(
    outcome: &Result<processor::worker::Totals, processor::ProcessorError>,
) -> processor::joblog::RunEnd {
    match outcome {
        Ok(t) => processor::joblog::RunEnd {
            status: "succeeded",
            error: None,
            exit_code: 0,
            records_consumed: t.messages,
            rows_written: t.rows,
            dead_letters: t.dead_letters,
        },
        Err(e) => processor::joblog::RunEnd {
            status: "failed",
            error: Some(e.to_string()),
            exit_code: e.exit_code(),
            ..Default::default()
        },
    }
}

fn cancel_on_signals() -> std::io::Result<CancellationToken> {
    let cancel = CancellationToken::new();
    let signals = cancel.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received."),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received."),
        }
        signals.cancel();
    });
    Ok(cancel)
}

/// Readiness condition: the lake locations were checked at start-up.
const READY_LAKE: &str = "lake";

/// The lake root and every explicitly mapped table location: reachable with the configured
/// credentials, and committing safely (`lake.rs`).
async fn check_lake(cfg: &Config) -> Result<(), processor::error::ProcessorError> {
    let lake = processor::lake::Lake::from_section(&cfg.storage)?;
    let mut locations: Vec<&str> = vec![&cfg.lake];
    locations.extend(cfg.tables.values().map(String::as_str));
    for location in locations {
        lake.check(location).await?;
        tracing::info!(location, "Lake reachable.");
    }
    Ok(())
}

/// The storage settings and the table URIs `t` names (`Err`: the exit code, after saying
/// why).
async fn select_tables(
    command: &str,
    t: &TablesArgs,
) -> anyhow::Result<Result<(processor::lake::Lake, Vec<String>), ExitCode>> {
    let loaded = Config::read(t.config.as_deref())
        .and_then(|cfg| Ok((processor::lake::Lake::from_section(&cfg.storage)?, cfg)));
    let (storage, cfg) = match loaded {
        Ok(both) => both,
        Err(e) => {
            tracing::error!(error = %e, "Invalid configuration.");
            return Ok(Err(ExitCode::from(e.exit_code())));
        }
    };
    let mut tables = t.table.clone();
    if let Some(lake) = &t.lake {
        tables.extend(processor::status::find_tables(lake, &storage).await?);
    } else if tables.is_empty() && t.config.is_some() {
        // The config's lake and `[tables]`: reached (listed) even when it holds no table yet.
        tables.extend(processor::status::find_tables(&cfg.lake, &storage).await?);
        tables.extend(cfg.tables.values().cloned());
        tables.sort();
        tables.dedup();
        if tables.is_empty() {
            eprintln!("{command}: no tables under {} yet", cfg.lake);
            return Ok(Err(ExitCode::SUCCESS));
        }
    }
    if tables.is_empty() {
        eprintln!("{command}: no tables (give --lake or --table)");
        return Ok(Err(ExitCode::from(2)));
    }
    Ok(Ok((storage, tables)))
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (storage, tables) = match select_tables("status", &args.tables).await? {
        Ok(selected) => selected,
        Err(code) => return Ok(code),
    };
    let mut all = Vec::new();
    for t in &tables {
        match processor::status::table_status(t, &storage, args.summary).await? {
            Some(s) => all.push(s),
            None => eprintln!("status: no Delta table at {t}"),
        }
    }
    if args.tables.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for s in &all {
            print!("{s}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(args: processor::replay::ReplayArgs) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(&args.run_args()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Invalid configuration.");
            return Ok(ExitCode::from(e.exit_code()));
        }
    };
    match processor::replay::replay(&cfg, &args).await {
        Ok(report) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            tracing::error!(error = %e, class = ?e.class(), "Replay failed; the table is as it was.");
            Ok(ExitCode::from(e.exit_code()))
        }
    }
}

/// Exit code of `lag --once` when the monitor cannot run (Nagios' UNKNOWN).
const LAG_UNKNOWN: u8 = 3;

async fn lag(args: LagArgs) -> anyhow::Result<ExitCode> {
    let cfg = match Config::load(&args.run_args()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Invalid configuration.");
            return Ok(ExitCode::from(if args.once {
                LAG_UNKNOWN
            } else {
                e.exit_code()
            }));
        }
    };
    let mut monitor = match processor::lag::Monitor::new(cfg.clone()) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "The lag monitor cannot start.");
            return Ok(ExitCode::from(if args.once {
                LAG_UNKNOWN
            } else {
                e.exit_code()
            }));
        }
    };
    if args.once {
        let report = monitor.observe().await;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{report}");
        }
        return Ok(ExitCode::from(report.severity() as u8));
    }
    let cancel = cancel_on_signals()?;
    let interval = cfg.lag.interval;
    // Alive while rounds keep coming (a hung round is restarted); ready after the first.
    let health =
        pgtrail_connect::Health::new(interval * 4 + Duration::from_secs(60), &[READY_ROUND]);
    if cfg.lag.metrics_addr != "none" {
        let addr = cfg.lag.metrics_addr.parse()?;
        let bound =
            processor::lag::serve_metrics(addr, &monitor.metrics, health.clone(), cancel.clone())
                .await?;
        tracing::info!(%bound, "Lag metrics at /metrics.");
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let report = monitor.observe().await;
        health.beat(std::time::Instant::now());
        health.report(READY_ROUND, true);
        tracing::info!(
            status = %report.status,
            partitions = report.partitions.len(),
            offset_lag = report.tables.iter().map(|t| t.offset_lag).sum::<i64>(),
            error = report.error.as_deref().unwrap_or(""),
            "Lag observed."
        );
        monitor.alert(&report).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Readiness condition of `lag --serve`: a round was observed.
const READY_ROUND: &str = "round";

async fn jobs(args: JobsArgs) -> anyhow::Result<ExitCode> {
    let t = &args.tables;
    let cfg = match Config::read(t.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Invalid configuration.");
            return Ok(ExitCode::from(e.exit_code()));
        }
    };
    let storage = processor::lake::Lake::from_section(&cfg.storage)?;
    let since = args
        .since
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .map(|d| chrono::Utc::now() - d);
    let lake = t.lake.clone().unwrap_or_else(|| cfg.lake.clone());
    let log = args.jobs_table.clone().or_else(|| cfg.jobs.uri(&lake));
    let logged = match &log {
        Some(uri) => processor::jobs::logged_jobs(uri, &storage, since).await?,
        None => None,
    };
    let mut all = match logged {
        Some(lines) => lines,
        None => {
            eprintln!("jobs: no job-audit table; reading the tables' histories (commits only)");
            let (storage, tables) = match select_tables("jobs", t).await? {
                Ok(selected) => selected,
                Err(code) => return Ok(code),
            };
            let mut all = Vec::new();
            for uri in &tables {
                match processor::jobs::table_jobs(uri, &storage, since).await? {
                    Some(lines) => all.extend(lines),
                    None => eprintln!("jobs: no Delta table at {uri}"),
                }
            }
            all
        }
    };
    all.retain(|l| {
        (t.table.is_empty() || l.table.as_ref().is_none_or(|u| t.table.contains(u)))
            && (!args.failed || l.failed())
    });
    all.sort_by_key(|line| std::cmp::Reverse(line.at));
    if t.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        for line in &all {
            print!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
