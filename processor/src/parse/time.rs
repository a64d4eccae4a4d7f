//! PostgreSQL log timestamps to UTC.
//!
//! Owns [`parse_pg_time`] (`2026-11-23 08:57:28.127 UTC`, `... 08:57:28 CEST`, `... +0530`)
//! and [`parse_epoch`] (`%n`), and [`parse_session_start`] (the same, remembered per thread for
//! the repeats of a session). Zone abbreviations other than UTC/GMT resolve through the
//! server's configured IANA zone; an ambiguous local time (DST fall-back) takes the offset whose
//! abbreviation matches. Must not: guess a zone: no configured zone is an error, not UTC.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use chrono_tz::{OffsetName, Tz};

/// A zone abbreviation as PostgreSQL writes it (`CEST`, `EST`, `-03`): quoted in errors;
/// anything else is not (a misaligned field can hold statement text, which can hold
/// passwords).
fn abbreviation_text(a: &str) -> &str {
    let plausible = (1..=6).contains(&a.len())
        && a.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'+' || b == b'-');
    if plausible { a } else { "(not a zone)" }
}

/// Parses a timestamp as PostgreSQL writes it in logs. Errors describe the value (its length,
/// a zone abbreviation) but never quote it.
pub fn parse_pg_time(s: &str, zone: Option<Tz>) -> Result<DateTime<Utc>, String> {
    let (local, abbrev) = s
        .trim()
        .rsplit_once(' ')
        .ok_or_else(|| format!("timestamp of {} bytes has no zone", s.len()))?;
    let naive = match fast_naive(local) {
        Some(n) => n,
        None => NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S%.f").map_err(|e| {
            format!(
                "timestamp of {} bytes is not YYYY-MM-DD HH:MM:SS[.f]: {e}",
                s.len()
            )
        })?,
    };
    match abbrev {
        "UTC" | "GMT" | "Z" | "UCT" => return Ok(naive.and_utc()),
        _ => {}
    }
    if let Some(offset) = numeric_offset(abbrev) {
        return offset
            .from_local_datetime(&naive)
            .single()
            .map(|d| d.with_timezone(&Utc))
            .ok_or_else(|| "timestamp: invalid local time".to_owned());
    }
    let shown = abbreviation_text(abbrev);
    let tz = zone.ok_or_else(|| {
        format!("timestamp: zone abbreviation {shown} needs the server's IANA time zone (shipper `log_timezone` or processor `timezone`)")
    })?;
    let candidates: Vec<DateTime<Tz>> = tz
        .from_local_datetime(&naive)
        .earliest()
        .into_iter()
        .chain(tz.from_local_datetime(&naive).latest())
        .collect();
    if candidates.is_empty() {
        return Err(format!("timestamp does not exist in {tz} (DST gap)"));
    }
    // Never a guess: an abbreviation that is not the zone's at that time means the zone
    // configured is not the server's.
    candidates
        .iter()
        .find(|d| d.offset().abbreviation() == Some(abbrev))
        .map(|d| d.with_timezone(&Utc))
        .ok_or_else(|| {
            format!("timestamp: zone abbreviation {shown} is not {tz}'s at that time (is {tz} the server's log_timezone?)")
        })
}

/// A timestamp parser of this module ([`parse_pg_time`], [`parse_session_start`]).
pub type TimeParser = fn(&str, Option<Tz>) -> Result<DateTime<Utc>, String>;

thread_local! {
    /// The last session start read and its value: every record of a session repeats it.
    static SESSION_START: std::cell::RefCell<(String, Option<Tz>, DateTime<Utc>)> =
        const { std::cell::RefCell::new((String::new(), None, DateTime::<Utc>::MIN_UTC)) };
}

/// [`parse_pg_time`] of a session start (csvlog `session_start_time`, jsonlog
/// `session_start`, `%s`): read once per session, a repeat is a string comparison.
pub fn parse_session_start(s: &str, zone: Option<Tz>) -> Result<DateTime<Utc>, String> {
    SESSION_START.with_borrow_mut(|(text, z, value)| {
        if text.is_empty() || text.as_str() != s || *z != zone {
            *value = parse_pg_time(s, zone)?;
            text.clear();
            text.push_str(s);
            *z = zone;
        }
        Ok(*value)
    })
}

/// `YYYY-MM-DD HH:MM:SS[.f{1,9}]`, the only shape PostgreSQL writes, read directly (chrono's
/// format-string parser was a tenth of the per-record time). `None` for anything else (leap
/// seconds, other widths, invalid dates): the caller falls back to chrono, which decides.
fn fast_naive(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let nanos = match &b[19..] {
        [] => 0,
        [b'.', frac @ ..] if (1..=9).contains(&frac.len()) => {
            let n = num(20..b.len())?;
            n * 10u32.pow(9 - frac.len() as u32)
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    let time =
        chrono::NaiveTime::from_hms_nano_opt(num(11..13)?, num(14..16)?, num(17..19)?, nanos)?;
    Some(date.and_time(time))
}

/// `+03`, `-0530`, `+05:30` → offset.
fn numeric_offset(s: &str) -> Option<FixedOffset> {
    let sign = match s.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = s[1..].chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = if digits.len() <= 2 {
        (&digits[..], "0")
    } else {
        digits.split_at(digits.len() - 2)
    };
    let secs = h.parse::<i32>().ok()? * 3600 + m.parse::<i32>().ok()? * 60;
    FixedOffset::east_opt(sign * secs)
}

/// `%n`: seconds since the epoch with milliseconds.
pub fn parse_epoch(s: &str) -> Result<DateTime<Utc>, String> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    let bad = || format!("epoch of {} bytes is not seconds.milliseconds", s.len());
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let millis: u32 = format!("{frac:0<3}")[..3].parse().map_err(|_| bad())?;
    DateTime::from_timestamp(secs, millis * 1_000_000)
        .ok_or_else(|| "epoch out of range".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The direct reader agrees with chrono wherever it answers, and answers for every
        /// valid timestamp of PostgreSQL's shape.
        #[test]
        fn fast_path_agrees_with_chrono(s in "[0-9]{4}-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-6][0-9]:[0-6][0-9](\\.[0-9]{1,10})?") {
            let chrono = NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f").ok();
            match fast_naive(&s) {
                Some(n) => prop_assert_eq!(Some(n), chrono),
                None => prop_assert!(chrono.is_none() || s.len() > 29 || s.contains(":60"), "{s}: {chrono:?}"),
            }
        }
    }

    fn t(s: &str) -> String {
        s.to_owned()
    }

    #[test]
    fn utc_and_numeric_zones() {
        let d = parse_pg_time("2026-11-23 08:57:28.127 UTC", None).unwrap();
        assert_eq!(d.to_rfc3339(), t("2026-11-23T08:57:28.127+00:00"));
        let d = parse_pg_time("2026-11-23 10:57:28 +02", None).unwrap();
        assert_eq!(d.to_rfc3339(), t("2026-11-23T08:57:28+00:00"));
        let d = parse_pg_time("2026-11-23 14:27:28 +0530", None).unwrap();
        assert_eq!(d.to_rfc3339(), t("2026-11-23T08:57:28+00:00"));
        assert_eq!(
            parse_epoch("1795000000.123").unwrap().timestamp_millis(),
            1_795_000_000_123
        );
    }

    #[test]
    fn session_starts_are_remembered_per_text_and_zone() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let cases = [
            ("2026-07-01 10:00:00 CEST", Some(berlin)),
            ("2026-07-01 10:00:00 CEST", Some(berlin)),
            ("2026-07-01 10:00:00 CEST", Some(Tz::Europe__Paris)),
            ("2026-07-01 10:00:00 CEST", None),
            ("2026-07-01 10:00:00 +02", None),
            ("", None),
            ("2026-07-01 10:00:00 +02", None),
        ];
        for (s, zone) in cases {
            assert_eq!(
                parse_session_start(s, zone),
                parse_pg_time(s, zone),
                "{s} {zone:?}"
            );
        }
    }

    #[test]
    fn abbreviations_need_and_use_the_configured_zone() {
        assert!(
            parse_pg_time("2026-07-01 10:00:00 CEST", None)
                .unwrap_err()
                .contains("IANA")
        );
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let d = parse_pg_time("2026-07-01 10:00:00.5 CEST", Some(berlin)).unwrap();
        assert_eq!(d.to_rfc3339(), t("2026-07-01T08:00:00.500+00:00"));
        // 02:30 on the fall-back night happens twice; the abbreviation decides.
        let first = parse_pg_time("2026-10-25 02:30:00 CEST", Some(berlin)).unwrap();
        let second = parse_pg_time("2026-10-25 02:30:00 CET", Some(berlin)).unwrap();
        assert_eq!((second - first).num_minutes(), 60);
        let chicago: Tz = "America/Chicago".parse().unwrap();
        let d = parse_pg_time("2026-01-15 06:00:00 CST", Some(chicago)).unwrap();
        assert_eq!(d.to_rfc3339(), t("2026-01-15T12:00:00+00:00"));
        assert!(
            parse_pg_time("2026-03-29 02:30:00 CET", Some(berlin))
                .unwrap_err()
                .contains("gap")
        );
    }

    /// Item 10 of issue 17: an abbreviation that is not the configured zone's fell back to the
    /// zone's offset silently, although this module promises never to guess.
    #[test]
    fn an_abbreviation_of_another_zone_is_an_error() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let err = parse_pg_time("2026-01-15 06:00:00 EST", Some(berlin)).unwrap_err();
        assert!(err.contains("EST is not Europe/Berlin's"), "{err}");
        // Words that are no zone are not quoted.
        let err = parse_pg_time("2026-01-15 06:00:00 hunter2", Some(berlin)).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
