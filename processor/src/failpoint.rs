//! Fault injection for tests: named steps of the processor where a test can abort the process,
//! make the step fail, or slow it down.
//!
//! Owns [`Failpoints`]. A spec is `name=action[@n]` entries separated by `;`, from the
//! environment variable `PGTRAIL_FAILPOINTS` (end-to-end tests) or built in-process (unit
//! tests): `action` is `abort` (the process aborts, as `kill -9` would leave it), `error` (the
//! step returns an injected error, classed retryable), or `sleep(<duration>)` (humantime, e.g.
//! `sleep(20s)`); `@n` fires on the step's n-th hit only (counted from 1), without it on every
//! hit. The steps are listed in [`STEPS`]. Invariant: with no spec every step is a no-op
//! costing one check of an empty list. Must not: be configured in production (nothing but
//! tests sets the variable; an unknown step name is an error at start-up).

use std::sync::Mutex;
use std::time::Duration;

/// The steps a spec may name.
pub const STEPS: [&str; 7] = [
    // Writing the state object of a commit (before anything else of it).
    "commit.state_write",
    // Uploading a commit's Parquet files.
    "commit.upload",
    // After the files are uploaded, before the Delta log entry is written.
    "commit.before_log",
    // Right after the Delta log entry is written: the commit landed, nobody knows yet.
    "commit.after_log",
    // The maintenance after a commit (Delta checkpoint, log cleanup).
    "commit.post_commit",
    // Reading a partition's resume state.
    "resume.read_state",
    // Deleting superseded state objects.
    "commit.gc",
];

/// What a failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `std::process::abort()`.
    Abort,
    /// The step fails with an injected (retryable) error.
    Error,
    /// The step waits this long first.
    Sleep(Duration),
}

#[derive(Debug)]
struct Point {
    step: String,
    nth: Option<u64>,
    action: Action,
}

/// The failpoints of one process (or of one test).
#[derive(Debug, Default)]
pub struct Failpoints {
    points: Vec<Point>,
    hits: Mutex<Vec<(String, u64)>>,
}

/// A failpoint's injected error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected failure at {step}")]
pub struct Injected {
    /// The step.
    pub step: String,
}

impl Failpoints {
    /// No failpoint.
    pub fn none() -> Failpoints {
        Failpoints::default()
    }

    /// The spec in `PGTRAIL_FAILPOINTS`, if set.
    pub fn from_env() -> Result<Failpoints, String> {
        match std::env::var("PGTRAIL_FAILPOINTS") {
            Ok(spec) => Failpoints::parse(&spec),
            Err(_) => Ok(Failpoints::none()),
        }
    }

    /// Parses a spec (see the module documentation).
    pub fn parse(spec: &str) -> Result<Failpoints, String> {
        let mut points = Vec::new();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (step, rest) = entry
                .split_once('=')
                .ok_or_else(|| format!("failpoint {entry:?}: expected name=action"))?;
            if !STEPS.contains(&step) {
                return Err(format!(
                    "failpoint {step:?}: no such step ({})",
                    STEPS.join(", ")
                ));
            }
            let (action, nth) = match rest.rsplit_once('@') {
                Some((a, n)) => {
                    let n = n
                        .parse::<u64>()
                        .map_err(|_| format!("failpoint {entry:?}: @{n} is not a number"))?;
                    (a, Some(n))
                }
                None => (rest, None),
            };
            let action = match action {
                "abort" => Action::Abort,
                "error" => Action::Error,
                a => {
                    let d = a
                        .strip_prefix("sleep(")
                        .and_then(|d| d.strip_suffix(')'))
                        .ok_or_else(|| format!("failpoint {entry:?}: unknown action {a:?}"))?;
                    Action::Sleep(
                        humantime::parse_duration(d)
                            .map_err(|e| format!("failpoint {entry:?}: {e}"))?,
                    )
                }
            };
            points.push(Point {
                step: step.to_owned(),
                nth,
                action,
            });
        }
        Ok(Failpoints {
            points,
            hits: Mutex::default(),
        })
    }

    /// Whether any failpoint is set.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Passes `step`: does what a failpoint set on it says.
    pub async fn hit(&self, step: &'static str) -> Result<(), Injected> {
        if self.points.is_empty() {
            return Ok(());
        }
        let n = {
            let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
            match hits.iter_mut().find(|(s, _)| s == step) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    hits.push((step.to_owned(), 1));
                    1
                }
            }
        };
        for p in self.points.iter().filter(|p| p.step == step) {
            if p.nth.is_some_and(|k| k != n) {
                continue;
            }
            tracing::warn!(step, hit = n, action = ?p.action, "Failpoint.");
            match p.action {
                Action::Abort => std::process::abort(),
                Action::Error => {
                    return Err(Injected {
                        step: step.to_owned(),
                    });
                }
                Action::Sleep(d) => tokio::time::sleep(d).await,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn specs_fire_on_their_hit() {
        let f = Failpoints::parse("commit.upload=error@2; commit.gc=sleep(1ms)").unwrap();
        assert!(f.hit("commit.upload").await.is_ok());
        assert!(f.hit("commit.upload").await.is_err());
        assert!(f.hit("commit.upload").await.is_ok());
        assert!(f.hit("commit.gc").await.is_ok());
        assert!(f.hit("commit.after_log").await.is_ok());
        assert!(Failpoints::parse("commit.nope=error").is_err());
        assert!(Failpoints::parse("commit.gc=explode").is_err());
        assert!(Failpoints::parse("commit.gc=error@x").is_err());
        assert!(Failpoints::none().is_empty());
    }
}
