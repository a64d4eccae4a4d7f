//! `pgtrail-shipper`: parse flags and config, set up tracing, run until SIGTERM/SIGINT (or, with
//! `--once`, until everything present is acknowledged), map errors to exit codes.
//!
//! Exit codes: 0 success, 1 other error, 2 configuration, 3 state directory, 4 Kafka.
//! Environment: `PGTRAIL_LOG` sets the log filter (default `info`). Must not: hold logic.

use std::process::ExitCode;

use clap::Parser;
use shipper::{Cli, Config};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn init_tracing(format: &str) {
    let filter = EnvFilter::try_from_env("PGTRAIL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
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
    let mut cfg = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Invalid configuration.");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let embedded = if cli.embedded_kafka {
        match shipper::embedded::EmbeddedKafka::start(&cfg.topic(), cfg.topic_partitions) {
            Ok(k) => {
                cfg.brokers = k.bootstrap();
                cfg.create_topic = false;
                tracing::info!(
                    brokers = cfg.brokers,
                    "Using embedded Kafka (in-process, not durable)."
                );
                Some(k)
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot start embedded Kafka.");
                return ExitCode::from(e.exit_code() as u8);
            }
        }
    } else {
        None
    };
    let topic = cfg.topic();
    let brokers = cfg.brokers.clone();
    match run(cfg) {
        Ok((code, shipped)) if embedded.is_some() => {
            match shipper::embedded::summarize(&brokers, &topic, shipped) {
                Ok(summary) => println!("Topic {topic} now holds:\n{summary}"),
                Err(e) => tracing::error!(error = %e, "Cannot read the embedded topic back."),
            }
            code
        }
        Ok((code, _)) => code,
        Err(e) => {
            tracing::error!(error = %e, "Shipper failed to start.");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: Config) -> anyhow::Result<(ExitCode, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
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
        Ok(match shipper::run(cfg, cancel).await {
            Ok(summary) => {
                tracing::info!(
                    records = summary.records_shipped,
                    drained = summary.drained,
                    "Shipper stopped."
                );
                (ExitCode::SUCCESS, summary.records_shipped)
            }
            Err(e) => {
                tracing::error!(error = %e, class = ?e.class(), "Shipper stopped on an error.");
                (ExitCode::from(e.exit_code() as u8), 0)
            }
        })
    })
}
