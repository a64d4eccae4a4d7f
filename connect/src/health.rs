//! Liveness and readiness, as both binaries serve them: `GET /healthz` fails when the main
//! loop has not beaten for longer than its timeout (a hung loop is restarted by Kubernetes),
//! `GET /readyz` fails while any readiness condition is unmet (not in the consumer group yet,
//! Kafka unreachable, lake not checked, waiting for the Schema Registry...).
//!
//! Owns [`Health`] and [`health_routes`]. Invariants: a condition is unmet from the moment it
//! is declared until it is reported met; the answer names every unmet condition. Must not:
//! block (the HTTP handlers read atomics and a short mutex).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

/// The health state of one process.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` of the main loop's last beat.
    last_beat_ms: AtomicU64,
    stall_after: Duration,
    /// Readiness conditions: name → met.
    conditions: Mutex<BTreeMap<&'static str, bool>>,
}

impl Health {
    /// Health of a process whose main loop is stalled after `stall_after` without a beat,
    /// not ready until each of `conditions` is reported met.
    pub fn new(stall_after: Duration, conditions: &[&'static str]) -> Arc<Health> {
        Arc::new(Health {
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            stall_after,
            conditions: Mutex::new(conditions.iter().map(|c| (*c, false)).collect()),
        })
    }

    fn ms_since_start(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_millis() as u64
    }

    /// The main loop made progress at `now`.
    pub fn beat(&self, now: Instant) {
        self.last_beat_ms
            .fetch_max(self.ms_since_start(now), Ordering::Relaxed);
    }

    /// Reports readiness condition `name` as met or not.
    pub fn report(&self, name: &'static str, met: bool) {
        self.conditions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name, met);
    }

    /// `Err` with how long the loop has not beaten when that is longer than allowed.
    pub fn liveness(&self, now: Instant) -> Result<(), String> {
        let last = self.last_beat_ms.load(Ordering::Relaxed);
        let silent = Duration::from_millis(self.ms_since_start(now).saturating_sub(last));
        if silent > self.stall_after {
            Err(format!(
                "main loop made no progress for {} s (limit {} s)",
                silent.as_secs(),
                self.stall_after.as_secs()
            ))
        } else {
            Ok(())
        }
    }

    /// `Err` naming every unmet readiness condition.
    pub fn readiness(&self) -> Result<(), String> {
        let unmet: Vec<&str> = self
            .conditions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|(_, met)| !**met)
            .map(|(name, _)| *name)
            .collect();
        if unmet.is_empty() {
            Ok(())
        } else {
            Err(format!("not ready: {}", unmet.join(", ")))
        }
    }
}

fn answer(r: Result<(), String>, ok: &str) -> (StatusCode, String) {
    match r {
        Ok(()) => (StatusCode::OK, ok.to_owned()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// `GET /healthz` and `GET /readyz` answered from `health`.
pub fn health_routes(health: Arc<Health>) -> axum::Router {
    let live = health.clone();
    axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(move || {
                let r = live.liveness(Instant::now());
                async move { answer(r, "ok") }
            }),
        )
        .route(
            "/readyz",
            axum::routing::get(move || {
                let r = health.readiness();
                async move { answer(r, "ready") }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_loop_is_not_alive_and_unmet_conditions_are_named() {
        let h = Health::new(Duration::from_secs(10), &["kafka", "lake"]);
        let t0 = h.started;
        h.beat(t0 + Duration::from_secs(5));
        assert!(h.liveness(t0 + Duration::from_secs(14)).is_ok());
        let e = h.liveness(t0 + Duration::from_secs(16)).unwrap_err();
        assert!(e.contains("11 s"), "{e}");
        h.beat(t0 + Duration::from_secs(16));
        assert!(h.liveness(t0 + Duration::from_secs(16)).is_ok());
        assert_eq!(h.readiness().unwrap_err(), "not ready: kafka, lake");
        h.report("kafka", true);
        assert_eq!(h.readiness().unwrap_err(), "not ready: lake");
        h.report("lake", true);
        assert!(h.readiness().is_ok());
        h.report("kafka", false);
        assert!(h.readiness().is_err());
    }
}
