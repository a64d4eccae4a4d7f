//! The lag rules, case by case and against a model over random observation sequences.

use super::*;
use proptest::prelude::*;

const RULES: Rules = Rules {
    window: Duration::from_secs(60),
    warn_time_lag: Duration::from_secs(30),
};

fn reading(at_s: i64, low: i64, high: i64, position: Option<i64>) -> Reading {
    Reading {
        at_ms: at_s * 1000,
        low,
        high,
        position,
        progressed_ms: Some(at_s * 1000),
        first_waiting_ms: (position.unwrap_or(low) < high).then_some(at_s * 1000),
        held_since_ms: Some(0),
    }
}

fn status(history: Vec<Reading>) -> Evaluation {
    let h: Vec<Result<Reading, String>> = history.into_iter().map(Ok).collect();
    evaluate(&h, RULES)
}

#[test]
fn idle_and_empty_partitions_are_ok_with_no_lag() {
    let idle = reading(1000, 0, 500, Some(500));
    let e = status(vec![idle.clone()]);
    assert_eq!((e.status, e.offset_lag, e.time_lag_ms), (Status::Ok, 0, 0));
    let empty = Reading {
        progressed_ms: None,
        ..reading(1000, 0, 0, None)
    };
    assert_eq!(status(vec![empty]).status, Status::Ok);
    // Idle for hours: the last commit long ago is no alarm when nothing waits.
    let old = Reading {
        progressed_ms: Some(0),
        held_since_ms: None,
        ..idle
    };
    assert_eq!(status(vec![old]).status, Status::Ok);
}

#[test]
fn retention_past_the_position_is_loss_naming_the_offsets() {
    let e = status(vec![reading(100, 700, 900, Some(650))]);
    assert_eq!(e.status, Status::Loss);
    assert_eq!(e.lost, Some((650, 699)));
    // A partition never written starts at the low watermark: no loss.
    assert_eq!(
        status(vec![reading(100, 700, 900, None)]).status,
        Status::Ok
    );
}

#[test]
fn a_topic_shorter_than_the_table_is_reset() {
    assert_eq!(
        status(vec![reading(100, 0, 10, Some(500))]).status,
        Status::Reset
    );
}

#[test]
fn a_position_going_back_is_rewind() {
    let e = status(vec![
        reading(100, 0, 900, Some(800)),
        reading(110, 0, 900, Some(300)),
    ]);
    assert_eq!(e.status, Status::Rewind);
}

#[test]
fn no_progress_for_the_window_is_stall_when_held_else_stop() {
    let stuck = |held: bool| Reading {
        progressed_ms: Some(0),
        first_waiting_ms: Some(10_000),
        held_since_ms: held.then_some(0),
        ..reading(100, 0, 900, Some(400))
    };
    let e = status(vec![stuck(true)]);
    assert_eq!(
        (e.status, e.offset_lag, e.time_lag_ms),
        (Status::Stall, 500, 90_000)
    );
    assert_eq!(status(vec![stuck(false)]).status, Status::Stop);
    // Held by an instance that started 20 s ago: starting up, not stalled (time lag: WARN).
    let starting = Reading {
        held_since_ms: Some(80_000),
        ..stuck(true)
    };
    assert_eq!(status(vec![starting]).status, Status::Warn);
    // The first waiting record is younger than the window: not yet.
    let fresh = Reading {
        first_waiting_ms: Some(90_000),
        ..stuck(false)
    };
    assert_eq!(status(vec![fresh]).status, Status::Ok);
    // Moved within the window: working on it.
    let moving = Reading {
        progressed_ms: Some(95_000),
        ..stuck(false)
    };
    assert_eq!(
        status(vec![moving]).status,
        Status::Warn,
        "time lag 90 s > 30 s"
    );
}

#[test]
fn lag_growing_over_a_full_window_is_warn() {
    let at = |s: i64, high: i64, pos: i64| Reading {
        first_waiting_ms: Some(s * 1000 - 5_000),
        ..reading(s, 0, high, Some(pos))
    };
    let growing = vec![at(0, 100, 50), at(30, 200, 120), at(60, 300, 190)];
    assert_eq!(status(growing).status, Status::Warn);
    let shrinking = vec![at(0, 100, 50), at(30, 200, 160), at(60, 300, 190)];
    assert_eq!(status(shrinking).status, Status::Ok);
    let short = vec![at(0, 100, 50), at(20, 200, 120), at(40, 300, 190)];
    assert_eq!(status(short).status, Status::Ok, "not a full window yet");
}

#[test]
fn an_unreadable_partition_is_err_and_the_group_is_its_worst() {
    let e = evaluate(&[Err("broker down".into())], RULES);
    assert_eq!(e.status, Status::Err);
    assert_eq!(
        Status::worst([Status::Ok, Status::Warn, Status::Stop]),
        Status::Stop
    );
    assert_eq!(Status::worst([]), Status::Ok);
    assert_eq!(Status::Loss.severity(), Severity::Critical);
    assert_eq!(Status::Warn.severity(), Severity::Warning);
}

/// A partition's life: records produced, written, deleted by retention, the topic recreated.
#[derive(Debug, Clone)]
enum Op {
    Produce(i64),
    Write(i64),
    Retain(i64),
    Recreate,
    Wait(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1i64..50).prop_map(Op::Produce),
        (1i64..50).prop_map(Op::Write),
        (1i64..50).prop_map(Op::Retain),
        Just(Op::Recreate),
        (1i64..40).prop_map(Op::Wait),
    ]
}

proptest! {
    /// Against a model of the partition: LOSS exactly when retention passed the table, RESET
    /// exactly when the topic is shorter than the table, the offset lag is exactly what was
    /// produced and not written, and a partition with nothing waiting is OK.
    #[test]
    fn statuses_agree_with_a_model(ops in proptest::collection::vec(op(), 1..60)) {
        let (mut now, mut low, mut high, mut pos) = (0i64, 0i64, 0i64, None::<i64>);
        let mut produced_at: Vec<i64> = Vec::new();
        let mut progressed = None;
        for op in ops {
            match op {
                Op::Produce(n) => {
                    for _ in 0..n { produced_at.push(now); }
                    high += n;
                }
                Op::Write(n) => {
                    let p = pos.unwrap_or(low).max(low);
                    let to = (p + n).min(high);
                    if to > p { pos = Some(to); progressed = Some(now); }
                }
                Op::Retain(n) => low = (low + n).min(high),
                Op::Recreate => { low = 0; high = 0; produced_at.clear(); }
                Op::Wait(s) => now += s * 1000,
            }
            let p = pos.unwrap_or(low);
            let waiting = usize::try_from(p.max(low)).ok().and_then(|i| produced_at.get(i)).copied();
            let r = Reading {
                at_ms: now, low, high, position: pos, progressed_ms: progressed,
                first_waiting_ms: waiting, held_since_ms: None,
            };
            let e = evaluate(&[Ok(r)], RULES);
            let loss = pos.is_some_and(|p| low > p);
            let reset = !loss && pos.is_some_and(|p| high < p);
            prop_assert_eq!(e.status == Status::Loss, loss);
            prop_assert_eq!(e.status == Status::Reset, reset);
            if loss { prop_assert_eq!(e.lost, Some((p, low - 1))); }
            prop_assert_eq!(e.offset_lag, (high - p.max(low)).max(0));
            if !loss && !reset && e.offset_lag == 0 {
                prop_assert_eq!(e.status, Status::Ok);
                prop_assert_eq!(e.time_lag_ms, 0);
            }
            if e.offset_lag > 0 && let Some(t) = waiting {
                prop_assert_eq!(e.time_lag_ms, now - t);
            }
        }
    }
}
