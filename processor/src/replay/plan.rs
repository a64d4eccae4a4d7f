//! What a replay re-derives, per partition: the offsets asked for, clamped to what the table
//! holds and what Kafka still has, and where reading starts for context.
//!
//! Owns [`Bounds`], [`PartitionPlan`] and [`plan_partition`] (pure: unit-tested). Invariants:
//! a plan never reaches past the table's `txn` version for the partition (later offsets belong
//! to the live processor); offsets Kafka deleted are refused, or with `allow_partial` left out
//! of the range and named, so their rows stay as they are. Must not: do I/O.

use serde::Serialize;

use crate::error::ProcessorError;
use crate::topic_partition::TopicPartition;

/// What is known of a partition before planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// First offset Kafka still has (low watermark).
    pub low: i64,
    /// The table's `txn` version of the partition (every record up to it is written); `None`
    /// when the group never wrote it.
    pub position: Option<i64>,
}

/// One partition's part of a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionPlan {
    /// The partition.
    pub tp: TopicPartition,
    /// First offset whose rows are replaced.
    pub first: i64,
    /// Last offset whose rows are replaced (at most the table's position).
    pub last: i64,
    /// First offset read: `context` records before `first`, or from the outcome window
    /// before it in broker time if that reaches further (outcomes and stderr continuation
    /// lines of records in the range depend on them); no row comes from them.
    pub read_from: i64,
    /// Offsets asked for that Kafka no longer has (kept as they are, `--allow-partial`).
    pub unreadable: Option<(i64, i64)>,
    /// The range ends at a checkpoint handed to a live group (`--continue-as`): records
    /// still undecided at `last` are that group's to write.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub handover: bool,
}

impl PartitionPlan {
    /// A hand-over of `tp` after offset `last` with no record to replay (nothing of the range
    /// is in it): the group continues from `last + 1`.
    pub fn at(tp: &TopicPartition, last: i64) -> PartitionPlan {
        PartitionPlan {
            tp: tp.clone(),
            first: last + 1,
            last,
            read_from: last + 1,
            unreadable: None,
            handover: true,
        }
    }

    /// Whether it has offsets to replay.
    pub fn is_empty(&self) -> bool {
        self.first > self.last
    }
}

/// Plans `tp` for the offsets `from..=to` (`None`: its first / the table's position), with
/// `context` records read before the range. `Ok(None)`: nothing to replay (the group never
/// wrote the partition, or the range is empty once clamped).
pub fn plan_partition(
    tp: &TopicPartition,
    from: Option<i64>,
    to: Option<i64>,
    bounds: Bounds,
    context: i64,
    allow_partial: bool,
) -> Result<Option<PartitionPlan>, ProcessorError> {
    let Some(position) = bounds.position else {
        return Ok(None);
    };
    let last = to.map_or(position, |t| t.min(position));
    let first = from.unwrap_or(0).max(0);
    if first > last {
        return Ok(None);
    }
    let mut plan = PartitionPlan {
        tp: tp.clone(),
        first,
        last,
        read_from: first,
        unreadable: None,
        handover: false,
    };
    if first < bounds.low {
        let gone = (first, (bounds.low - 1).min(last));
        if !allow_partial {
            return Err(ProcessorError::Unreadable {
                tp: tp.clone(),
                first: gone.0,
                last: gone.1,
            });
        }
        plan.unreadable = Some(gone);
        if bounds.low > last {
            return Ok(None);
        }
        plan.first = bounds.low;
    }
    plan.read_from = (plan.first - context.max(0)).max(bounds.low);
    Ok(Some(plan))
}

/// The first offset of a Kafka-time window, given the offset Kafka found for its start and the
/// partition's low watermark. Kafka answers a time before its first kept record with that
/// record: when that is the low watermark and offsets before it were deleted, the window may
/// begin in them, so it starts at the partition's beginning (`None`), which planning refuses
/// unless `allow_partial`.
pub fn window_start(found: Option<i64>, low: i64) -> Option<i64> {
    found.filter(|f| !(low > 0 && *f == low))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp() -> TopicPartition {
        TopicPartition::new("pgaudit.raw.primary", 1)
    }

    fn plan(
        from: Option<i64>,
        to: Option<i64>,
        low: i64,
        position: Option<i64>,
        partial: bool,
    ) -> Result<Option<PartitionPlan>, ProcessorError> {
        plan_partition(&tp(), from, to, Bounds { low, position }, 100, partial)
    }

    #[test]
    fn a_range_is_clamped_to_the_tables_position() {
        let p = plan(Some(500), Some(9_000), 0, Some(1_000), false)
            .unwrap()
            .unwrap();
        assert_eq!((p.first, p.last, p.read_from), (500, 1_000, 400));
        // Past the position: the live processor's offsets, nothing to replay.
        assert!(
            plan(Some(1_001), None, 0, Some(1_000), false)
                .unwrap()
                .is_none()
        );
        // Never written by the group.
        assert!(plan(None, None, 0, None, false).unwrap().is_none());
    }

    #[test]
    fn a_time_window_from_the_first_kept_record_may_begin_in_deleted_offsets() {
        assert_eq!(
            window_start(Some(120), 120),
            None,
            "refused, or named with --allow-partial"
        );
        assert_eq!(window_start(Some(121), 120), Some(121));
        assert_eq!(window_start(Some(0), 0), Some(0), "nothing deleted");
        let err = plan(window_start(Some(20), 20), Some(50), 20, Some(60), false).unwrap_err();
        assert_eq!(err.exit_code(), 7);
    }

    #[test]
    fn context_stops_at_what_kafka_has() {
        let p = plan(Some(30), Some(50), 10, Some(60), false)
            .unwrap()
            .unwrap();
        assert_eq!((p.first, p.read_from), (30, 10));
        let whole = plan(None, None, 0, Some(60), false).unwrap().unwrap();
        assert_eq!((whole.first, whole.last, whole.read_from), (0, 60, 0));
    }

    #[test]
    fn deleted_offsets_are_refused_or_kept_with_allow_partial() {
        let err = plan(None, Some(50), 20, Some(60), false).unwrap_err();
        assert!(
            err.to_string().contains("offsets 0..=19"),
            "names the offsets: {err}"
        );
        assert_eq!(err.exit_code(), 7);
        let p = plan(None, Some(50), 20, Some(60), true).unwrap().unwrap();
        assert_eq!((p.first, p.last, p.unreadable), (20, 50, Some((0, 19))));
        // Everything asked for is gone.
        assert!(
            plan(Some(0), Some(10), 20, Some(60), true)
                .unwrap()
                .is_none()
        );
    }
}
