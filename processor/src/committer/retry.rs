//! How long a commit waits before its next attempt, by what failed.
//!
//! Owns the retry delays of [`super::Committer`]'s commit loop. Invariants: a conflict waits
//! at most [`CONFLICT_DELAY_MAX`]; a store error never waits more than 30 s. Must not: decide
//! whether to retry (the error's class does).

use std::time::{Duration, Instant};

/// The longest wait before another attempt after a conflict.
pub(super) const CONFLICT_DELAY_MAX: Duration = Duration::from_millis(250);

/// How long to wait after failed attempt `attempt` (1 for the first). A conflict means another
/// commit landed first: the table moved on, not the store failed, so the next attempt comes
/// after a short random delay, up to 25 ms per attempt so far and at most
/// [`CONFLICT_DELAY_MAX`], which spreads instances racing each other and widens as more of
/// them race. Doubling it instead let instances committing back to back starve another one
/// for tens of seconds; a window of the same 50 ms for every attempt thrashed with 16
/// instances on a fast store (`benches/commits.rs`, `bench/RESULTS.md`). A store error doubles
/// the wait from 100 ms up to 25.6 s.
pub(super) fn retry_delay(attempt: u32, conflict: bool) -> Duration {
    if conflict {
        use std::hash::BuildHasher;
        let most = (25 * u64::from(attempt.max(1))).min(CONFLICT_DELAY_MAX.as_millis() as u64);
        let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
        Duration::from_millis(random % (most + 1))
    } else {
        Duration::from_millis(50 << attempt.min(9)).min(Duration::from_secs(30))
    }
}
