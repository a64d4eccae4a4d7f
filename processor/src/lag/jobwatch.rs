//! The lag monitor's view of the job-audit table: failed runs and commits that do not
//! reconcile, recently, for the monitored group (a failed run cannot report itself: its
//! process has ended; the monitor runs when processors do not).
//!
//! Owns [`JobWatch`]. Reads the table at most every [`EVERY`]; a table that cannot be read
//! keeps the last counts and says why in the log. Must not: write anything.

use std::time::{Duration, Instant};

use chrono::Utc;

use crate::config::Config;
use crate::lake::Lake;

/// Least time between reads of the job-audit table.
const EVERY: Duration = Duration::from_secs(300);

/// Recent failures in the job-audit table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobCounts {
    /// Runs of the group that ended failed within the window.
    pub runs_failed: u64,
    /// Commits of the group whose facts do not reconcile within the window.
    pub commits_unreconciled: u64,
}

/// Watches the job-audit table of the monitored group.
pub struct JobWatch {
    uri: Option<String>,
    lake: Lake,
    group: String,
    window: Duration,
    read_at: Option<Instant>,
    /// The counts as last read.
    pub counts: JobCounts,
}

impl JobWatch {
    /// The watch of `cfg`'s job-audit table (`[jobs] table`) over `[lag] jobs_window`.
    pub fn new(cfg: &Config, lake: Lake) -> JobWatch {
        JobWatch {
            uri: cfg.jobs.uri(&cfg.lake),
            lake,
            group: cfg.group.clone(),
            window: cfg.lag.jobs_window,
            read_at: None,
            counts: JobCounts::default(),
        }
    }

    /// Reads the table again when due; the counts.
    pub async fn observe(&mut self) -> JobCounts {
        let (Some(uri), due) = (
            self.uri.clone(),
            self.read_at.is_none_or(|t| t.elapsed() >= EVERY),
        ) else {
            return self.counts;
        };
        if !due {
            return self.counts;
        }
        self.read_at = Some(Instant::now());
        let since = Utc::now() - chrono::Duration::from_std(self.window).unwrap_or_default();
        match crate::jobs::logged_jobs(&uri, &self.lake, Some(since)).await {
            Ok(lines) => {
                let ours = |j: &serde_json::Value| {
                    j["id"]
                        .as_str()
                        .is_some_and(|id| id.rsplit_once('/').is_some_and(|(_, g)| g == self.group))
                };
                let lines = lines.unwrap_or_default();
                self.counts = JobCounts {
                    runs_failed: lines
                        .iter()
                        .filter(|l| {
                            l.kind == "run_end" && l.job["status"] == "failed" && ours(&l.job)
                        })
                        .count() as u64,
                    commits_unreconciled: lines
                        .iter()
                        .filter(|l| {
                            l.kind == "commit" && l.job["reconciled"] == false && ours(&l.job)
                        })
                        .count() as u64,
                };
            }
            Err(e) => {
                tracing::warn!(table = %uri, error = %e, "The job-audit table cannot be read (counts kept).")
            }
        }
        self.counts
    }
}
