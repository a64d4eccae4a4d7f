//! What a commit leaves behind, cleaned up after it landed: table maintenance (Delta
//! checkpoint and log cleanup) and the state objects no partition names any more.
//!
//! Owns step 5 of [`super::Committer`]'s commit. Invariants: best effort only, a failure is
//! counted and logged and never changes a commit's outcome; a state object is deleted only
//! after the table was seen not to name it. Must not: write to the table's log.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::Utc;
use tracing::{debug, info, warn};

use super::Committer;
use crate::error::ProcessorError;
use crate::telemetry::Metrics;

/// State objects no partition names are deleted once they are this old (objects of commits
/// still in flight are younger).
const SWEEP_AGE: Duration = Duration::from_secs(24 * 3600);

impl Committer {
    /// Step 5 of the module documentation: maintenance and garbage, best effort.
    pub(super) async fn after_landing(
        &mut self,
        version: Option<u64>,
        superseded: BTreeSet<i64>,
        metrics: &Metrics,
    ) {
        let label = Metrics::table(self.uri());
        if let Some(v) = version {
            let maintained = match self.failpoints.hit("commit.post_commit").await {
                Ok(()) => self.table.maintain(v).await,
                Err(e) => Err(e.into()),
            };
            match maintained {
                Ok(true) => debug!(table = self.uri(), version = v, "Delta checkpoint written."),
                Ok(false) => {}
                Err(e) => {
                    metrics.maintenance_errors.get_or_create(&label).inc();
                    warn!(table = self.uri(), version = v, error = %e, "Table maintenance after a commit failed (the commit stands; retried at the next checkpoint interval).");
                }
            }
        }
        for id in superseded {
            if let Err(e) = self.drop_if_unnamed(id).await {
                metrics.maintenance_errors.get_or_create(&label).inc();
                warn!(table = self.uri(), state = %format!("{id:016x}"), error = %e, "Could not delete a superseded state object (swept later).");
            }
        }
        if !self.swept {
            self.swept = true;
            if let Err(e) = self.sweep().await {
                metrics.maintenance_errors.get_or_create(&label).inc();
                warn!(table = self.uri(), error = %e, "Sweeping old state objects failed.");
            }
        }
    }

    /// Deletes state object `id` when no partition it holds names it any more.
    async fn drop_if_unnamed(&mut self, id: i64) -> Result<bool, ProcessorError> {
        self.failpoints.hit("commit.gc").await?;
        let Some(state) = self.states.read(id).await? else {
            return Ok(true);
        };
        for cp in state.partitions() {
            if self.token(&cp.tp).await?.state == Some(id) {
                return Ok(false);
            }
        }
        self.states.delete(id).await?;
        Ok(true)
    }

    /// Deletes state objects older than [`SWEEP_AGE`] that no partition names (left by commits
    /// that never landed).
    async fn sweep(&mut self) -> Result<(), ProcessorError> {
        let cutoff = Utc::now() - chrono::Duration::from_std(SWEEP_AGE).unwrap_or_default();
        let mut dropped = 0;
        for (id, written) in self.states.list().await? {
            if written < cutoff && self.drop_if_unnamed(id).await? {
                dropped += 1;
            }
        }
        if dropped > 0 {
            info!(
                table = self.uri(),
                dropped, "Deleted old state objects no partition names."
            );
        }
        Ok(())
    }
}
