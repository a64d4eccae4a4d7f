//! The lag rules: from what the broker and the table say about a partition, its offset lag,
//! time lag and status; and the group's status, the worst of its partitions'.
//!
//! Owns [`Reading`] (one observation), [`Rules`], [`Status`], [`Evaluation`] and [`evaluate`].
//! The rules, in order (README, "Monitoring and alerts"):
//! 1. ERR: the partition could not be read (broker or lake);
//! 2. LOSS: the broker's low watermark passed the table's position (retention deleted records
//!    never written);
//! 3. RESET: the high watermark fell below the table's position (topic recreated);
//! 4. REWIND: the table's position went back within the window;
//! 5. OK when nothing is waiting (offset lag 0): an idle partition never alarms;
//! 6. no progress: the oldest waiting record is older than the window and the table has not
//!    moved this partition within the window: STOP when no live instance holds it, STALL when
//!    one has held it for longer than the window (a younger one is starting up: rule 7);
//! 7. WARN: time lag over the warning threshold, or the offset lag grew at every observation
//!    across a full window (Burrow's "lag keeps growing");
//! 8. otherwise OK.
//!
//! Invariants: the position is the table's `txn` version + 1 (what is durably written), never
//! the consumer's committed offset; time lag is exact: now minus the broker timestamp of the
//! first record not in the table. Must not: do I/O or read the clock (`now` is given).

use std::time::Duration;

use serde::Serialize;

/// A partition's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Caught up, or catching up.
    Ok,
    /// Behind: time lag over the threshold, or lag growing over the window.
    Warn,
    /// An instance holds the partition but the table does not move.
    Stall,
    /// No live instance holds the partition and the table does not move.
    Stop,
    /// The table's position went back.
    Rewind,
    /// The partition could not be read.
    Err,
    /// The topic holds fewer records than the table has written (recreated or truncated).
    Reset,
    /// Retention deleted records before they were written.
    Loss,
}

/// How bad a status is: the exit code of `lag --once`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Exit 0.
    Ok = 0,
    /// Exit 1.
    Warning = 1,
    /// Exit 2.
    Critical = 2,
}

impl Status {
    /// Every status, least bad first (the order `worst` uses).
    pub const ALL: [Status; 8] = [
        Status::Ok,
        Status::Warn,
        Status::Stall,
        Status::Stop,
        Status::Rewind,
        Status::Err,
        Status::Reset,
        Status::Loss,
    ];

    /// The name (`OK`, `WARN`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Stall => "STALL",
            Status::Stop => "STOP",
            Status::Rewind => "REWIND",
            Status::Err => "ERR",
            Status::Reset => "RESET",
            Status::Loss => "LOSS",
        }
    }

    /// Its severity.
    pub fn severity(self) -> Severity {
        match self {
            Status::Ok => Severity::Ok,
            Status::Warn => Severity::Warning,
            _ => Severity::Critical,
        }
    }

    /// The worst of `statuses` (`OK` when empty).
    pub fn worst(statuses: impl IntoIterator<Item = Status>) -> Status {
        statuses.into_iter().max().unwrap_or(Status::Ok)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One observation of a partition (times in ms since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// When it was taken.
    pub at_ms: i64,
    /// The broker's low watermark (first offset still in the topic).
    pub low: i64,
    /// The broker's high watermark (offset of the next record produced).
    pub high: i64,
    /// The table's `txn` version + 1: the first offset not durably written (`None`: the group
    /// never wrote this partition).
    pub position: Option<i64>,
    /// Commit time of the table's newest commit that moved this partition.
    pub progressed_ms: Option<i64>,
    /// Broker timestamp of the first record not in the table (`None`: none, or unreadable).
    pub first_waiting_ms: Option<i64>,
    /// Since when a live processor instance holds the partition (when it opened the table;
    /// `None`: no live instance holds it).
    pub held_since_ms: Option<i64>,
}

impl Reading {
    /// Where the table stands: its position, or for a partition never written the low
    /// watermark (the processor starts there).
    pub fn effective_position(&self) -> i64 {
        self.position.unwrap_or(self.low)
    }

    /// Records in the topic not durably in the table.
    pub fn offset_lag(&self) -> i64 {
        (self.high - self.effective_position().max(self.low)).max(0)
    }
}

/// Thresholds of the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Rules 4, 6 and 7: the sliding window.
    pub window: Duration,
    /// Rule 7: time lag over this is WARN.
    pub warn_time_lag: Duration,
}

/// What the rules say about a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evaluation {
    /// Its status.
    pub status: Status,
    /// Records not durably in the table.
    pub offset_lag: i64,
    /// Milliseconds since the first record not in the table was produced (0: none).
    pub time_lag_ms: i64,
    /// Offsets deleted before they were written (LOSS), first and last.
    pub lost: Option<(i64, i64)>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Evaluates a partition from its observations within the window, oldest first; the last is
/// the current one. `Err` readings (the partition could not be read) are ERR.
pub fn evaluate(history: &[Result<Reading, String>], rules: Rules) -> Evaluation {
    let unreadable = Evaluation {
        status: Status::Err,
        offset_lag: 0,
        time_lag_ms: 0,
        lost: None,
    };
    let Some(Ok(now)) = history.last() else {
        return unreadable;
    };
    let readings: Vec<&Reading> = history.iter().filter_map(|r| r.as_ref().ok()).collect();
    let offset_lag = now.offset_lag();
    let time_lag_ms = match now.first_waiting_ms {
        Some(t) if offset_lag > 0 => (now.at_ms - t).max(0),
        _ => 0,
    };
    let done = |status, lost| Evaluation {
        status,
        offset_lag,
        time_lag_ms,
        lost,
    };
    if let Some(p) = now.position {
        if now.low > p {
            return done(Status::Loss, Some((p, now.low - 1)));
        }
        if now.high < p {
            return done(Status::Reset, None);
        }
    }
    let rewound = readings
        .windows(2)
        .any(|w| matches!((w[0].position, w[1].position), (Some(a), Some(b)) if b < a));
    if rewound {
        return done(Status::Rewind, None);
    }
    if offset_lag == 0 {
        return done(Status::Ok, None);
    }
    let window = ms(rules.window);
    let moved_recently = now.progressed_ms.is_some_and(|t| now.at_ms - t < window);
    let waited_long = now.first_waiting_ms.is_none_or(|t| now.at_ms - t > window);
    if !moved_recently && waited_long {
        match now.held_since_ms {
            None => return done(Status::Stop, None),
            Some(since) if now.at_ms - since >= window => return done(Status::Stall, None),
            Some(_) => {}
        }
    }
    let spans_window = readings
        .first()
        .is_some_and(|first| now.at_ms - first.at_ms >= window);
    let growing = readings.len() >= 3
        && spans_window
        && readings
            .windows(2)
            .all(|w| w[1].offset_lag() > w[0].offset_lag());
    if time_lag_ms > ms(rules.warn_time_lag) || growing {
        return done(Status::Warn, None);
    }
    done(Status::Ok, None)
}

#[cfg(test)]
mod tests;
