//! The librdkafka log gate: librdkafka's log lines and error callbacks into `tracing`, each
//! distinct message at most once per window with a count of the ones held back, and the
//! errors that no retry can fix (authentication, TLS, a listener of another security
//! protocol) kept as the client's connect failure for the caller to stop on — until a request
//! was answered once ([`LogGate::established`]): after that the settings are known to work, and
//! the same errors (a broker restarting mid-handshake, an identity provider failing a token
//! refresh) are left to librdkafka's retries.
//!
//! Owns [`LogGate`] and [`GateContext`]. Invariants: a message is told apart from another
//! by its text with digits masked (`after 4ms`, `1/3 brokers`), so a burst of one failure
//! repeated by every broker thread is one line; the first connect failure is kept and never
//! replaced. Must not: decide what the caller does (it reads [`LogGate::connect_failure`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Distinct messages remembered before the memory is cleared (a flood of distinct lines is
/// then logged again rather than remembered without bound).
const MAX_KEYS: usize = 512;

/// librdkafka's log lines and errors, rate limited per message.
#[derive(Debug)]
pub struct LogGate {
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Per masked message: when it was last let through, and how many were held back since.
    seen: HashMap<String, (Instant, u64)>,
    connect_failure: Option<String>,
    /// Connections dropped by the broker before it answered ApiVersion.
    dropped_before_answer: u32,
    /// A request was answered: the settings work, later failures are taken as transient.
    established: bool,
}

/// Connections a broker may drop before answering the first request before the listener is
/// taken for one of another security protocol (a TLS listener resets a plaintext client; a
/// restarting broker refuses connections instead). Counted only until the first answer.
const DROPS_BEFORE_FAILURE: u32 = 3;

impl Default for LogGate {
    fn default() -> Self {
        LogGate::new(Duration::from_secs(60))
    }
}

/// Why an error is one no retry can fix, if it is.
fn connect_failure_cause(code: Option<RDKafkaErrorCode>, reason: &str) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    match code {
        Some(C::Authentication | C::SaslAuthenticationFailed) => Some("authentication failed"),
        Some(C::SSL) => Some("TLS failed"),
        // TLS 1.3 servers refuse a client certificate after the handshake: an alert read
        // as a transport failure ("tlsv13 alert certificate required").
        _ if reason.contains("SSL alert") || reason.contains("SSL handshake failed") => {
            Some("TLS failed")
        }
        Some(C::UnsupportedSASLMechanism | C::IllegalSASLState) => {
            Some("the broker does not accept this SASL mechanism")
        }
        _ if reason.contains("incorrect security.protocol") => {
            Some("the broker's listener speaks another security protocol (TLS?)")
        }
        _ => None,
    }
}

/// The count in librdkafka's "…, N identical error(s) suppressed)".
fn suppressed_before(message: &str) -> u32 {
    message
        .split_once(" identical error(s) suppressed")
        .and_then(|(before, _)| before.rsplit([' ', ',']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn mask(message: &str) -> String {
    message
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect()
}

impl LogGate {
    /// A gate letting each distinct message through once per `window`.
    pub fn new(window: Duration) -> LogGate {
        LogGate {
            window,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `message` is let through at `now`, and how many like it were held back since
    /// it last was.
    pub fn admit(&self, message: &str, now: Instant) -> Option<u64> {
        let mut s = self.state();
        if s.seen.len() >= MAX_KEYS {
            s.seen.clear();
        }
        match s.seen.entry(mask(message)) {
            Entry::Occupied(mut e) => {
                let (last, held) = e.get_mut();
                if now.duration_since(*last) < self.window {
                    *held += 1;
                    None
                } else {
                    *last = now;
                    Some(std::mem::take(held))
                }
            }
            Entry::Vacant(e) => {
                e.insert((now, 0));
                Some(0)
            }
        }
    }

    /// The first error no retry can fix, as `cause: librdkafka's reason` (which names the
    /// broker), if there was one before the connection was established.
    pub fn connect_failure(&self) -> Option<String> {
        let s = self.state();
        if s.established {
            return None;
        }
        s.connect_failure.clone()
    }

    /// A request was answered (metadata, a delivery): from now on errors are transient.
    pub fn established(&self) {
        self.state().established = true;
    }

    /// A librdkafka log line.
    pub fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if message.contains("Disconnected") && message.contains("in state APIVERSION_QUERY") {
            let mut s = self.state();
            // librdkafka's debug output repeats the line with another facility; one line
            // stands for itself and the identical ones librdkafka suppressed before it.
            if fac == "FAIL" {
                s.dropped_before_answer += 1 + suppressed_before(message);
            }
            if s.dropped_before_answer >= DROPS_BEFORE_FAILURE && s.connect_failure.is_none() {
                s.connect_failure = Some(format!(
                    "the broker's listener speaks another security protocol (TLS?), or nothing answers behind a proxy: it closed {DROPS_BEFORE_FAILURE} connections before answering: {message}"
                ));
            }
        }
        let Some(held_back) = self.admit(message, Instant::now()) else {
            return;
        };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", fac, held_back, "{message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", fac, held_back, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, held_back, "{message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", fac, held_back, "{message}")
            }
        }
    }

    /// A librdkafka error callback: logged (rate limited); kept when no retry can fix it.
    pub fn error(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if let Some(cause) = connect_failure_cause(code, reason) {
            let mut s = self.state();
            if s.connect_failure.is_none() {
                s.connect_failure = Some(format!("{cause}: {reason}"));
            }
        }
        if let Some(held_back) = self.admit(reason, Instant::now()) {
            let code = code.map(|c| format!("{c:?}")).unwrap_or_default();
            tracing::warn!(target: "librdkafka", code, held_back, "{reason}");
        }
    }
}

/// A client context that only routes librdkafka's logs and errors through a [`LogGate`] (for
/// admin clients and metadata lookups).
#[derive(Debug, Clone)]
pub struct GateContext(pub Arc<LogGate>);

impl ClientContext for GateContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.0.log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for GateContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_held_back_and_counted_per_window() {
        let gate = LogGate::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let down = "1/1 brokers are down";
        assert_eq!(gate.admit(down, t0), Some(0));
        for i in 0..200 {
            let msg = format!("{}/1 brokers are down", i % 3);
            assert_eq!(gate.admit(&msg, t0), None, "masked digits: same message");
        }
        assert_eq!(gate.admit("other", t0), Some(0));
        assert_eq!(gate.admit(down, t0 + Duration::from_secs(9)), None);
        assert_eq!(gate.admit(down, t0 + Duration::from_secs(11)), Some(201));
        assert_eq!(gate.admit(down, t0 + Duration::from_secs(12)), None);
    }

    #[test]
    fn only_failures_no_retry_fixes_are_kept_and_the_first_wins() {
        let gate = LogGate::default();
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        gate.error(&down, "1/1 brokers are down");
        assert_eq!(gate.connect_failure(), None);
        let transport = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        gate.error(&transport, "ssl://b:1/bootstrap: Connection refused");
        assert_eq!(gate.connect_failure(), None);
        gate.error(
            &transport,
            "b:1/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?)",
        );
        let auth = KafkaError::Global(RDKafkaErrorCode::Authentication);
        gate.error(&auth, "b:1/bootstrap: SASL authentication error");
        let kept = gate.connect_failure().unwrap();
        assert!(kept.starts_with("the broker's listener speaks another security protocol"));
        assert!(kept.contains("b:1/bootstrap"), "names the broker: {kept}");
        let g4 = LogGate::default();
        let reset = "[thrd:b:4/bootstrap]: b:4/bootstrap: Disconnected: connection reset by peer (after 9ms in state APIVERSION_QUERY)";
        for _ in 0..2 {
            g4.log(RDKafkaLogLevel::Info, "FAIL", reset);
        }
        assert_eq!(g4.connect_failure(), None, "twice may be a restart");
        g4.log(RDKafkaLogLevel::Info, "FAIL", reset);
        assert!(g4.connect_failure().unwrap().contains("b:4/bootstrap"));
        g4.established();
        assert_eq!(
            g4.connect_failure(),
            None,
            "after a first answer, errors are transient"
        );
        let g5 = LogGate::default();
        g5.log(RDKafkaLogLevel::Info, "FAIL", reset);
        g5.log(
            RDKafkaLogLevel::Info,
            "FAIL",
            "b:5/bootstrap: Disconnected: connection reset by peer (after 6ms in state APIVERSION_QUERY, 1 identical error(s) suppressed)",
        );
        assert!(g5.connect_failure().is_some(), "suppressed drops count");
        let g3 = LogGate::default();
        g3.error(
            &transport,
            "ssl://b:3/bootstrap: Receive failed: error:0A00045C:SSL routines::tlsv13 alert certificate required: SSL alert number 116",
        );
        assert!(
            g3.connect_failure()
                .unwrap()
                .starts_with("TLS failed: ssl://b:3")
        );
        let g2 = LogGate::default();
        g2.error(
            &KafkaError::Global(RDKafkaErrorCode::SSL),
            "b:2/bootstrap: SSL handshake failed",
        );
        assert!(g2.connect_failure().unwrap().starts_with("TLS failed: b:2"));
    }
}
