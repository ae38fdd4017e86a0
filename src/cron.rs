//! Cron expressions, evaluated in a time zone (jiff's bundled database).
//!
//! Five fields (`minute hour day-of-month month day-of-week`) or six with
//! seconds first; `*`, lists (`1,15`), ranges (`1-5`), steps (`*/15`,
//! `10-50/20`), month and day names (`JAN`, `MON-FRI`), `7` for Sunday, and
//! `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly`, `@yearly`
//! (`@annually`). When both day fields are restricted a day matches either
//! (the classic cron rule).
//!
//! Times are matched on the wall clock of the zone: a time skipped by a
//! daylight-saving change runs at the first instant after the gap, and a
//! time that occurs twice runs once (the first time).

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Both day fields restricted: a day matches either.
    day_or: bool,
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

fn value(s: &str, names: &[&str], base: u32) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let upper = s.to_ascii_uppercase();
    names
        .iter()
        .position(|n| *n == upper)
        .map(|i| i as u32 + base)
}

/// Parses one field into a bit set of the values in `min..=max`.
fn field(spec: &str, name: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let bad = |why: &str| format!("{name} field {spec:?}: {why}");
    let mut set = 0u64;
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| bad("a step is a positive number"))?,
            ),
            None => (part, 1),
        };
        let base = if names.len() == 12 { 1 } else { 0 };
        let (lo, hi) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = value(a, names, base).ok_or_else(|| bad("not a number or name"))?;
            let b = value(b, names, base).ok_or_else(|| bad("not a number or name"))?;
            (a, b)
        } else {
            let a = value(range, names, base).ok_or_else(|| bad("not a number or name"))?;
            // `5/15` means from 5 to the end in steps of 15.
            (a, if part.contains('/') { max } else { a })
        };
        if lo < min || hi > max || lo > hi {
            return Err(bad(&format!("values run from {min} to {max}")));
        }
        let mut v = lo;
        while v <= hi {
            set |= 1 << v;
            v += step;
        }
    }
    Ok(set)
}

fn has(set: u64, v: i8) -> bool {
    v >= 0 && set & (1 << v) != 0
}

impl Cron {
    /// Parses an expression.
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let expr = expr.trim();
        let expanded = match expr.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *".to_string(),
            "@monthly" => "0 0 1 * *".to_string(),
            "@weekly" => "0 0 * * 0".to_string(),
            "@daily" | "@midnight" => "0 0 * * *".to_string(),
            "@hourly" => "0 * * * *".to_string(),
            s if s.starts_with('@') => return Err(format!("unknown macro {expr:?}")),
            _ => expr.to_string(),
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        let (sec, rest) = match parts.len() {
            5 => ("0", &parts[..]),
            6 => (parts[0], &parts[1..]),
            n => {
                return Err(format!(
                    "{n} fields: a cron expression has 5 (minute hour day month weekday) or 6 (seconds first)"
                ));
            }
        };
        let mut weekdays = field(rest[4], "day-of-week", 0, 7, &DAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        let dom_star = rest[2] == "*" || rest[2] == "?";
        let dow_star = rest[4] == "*" || rest[4] == "?";
        Ok(Cron {
            seconds: field(sec, "seconds", 0, 59, &[])?,
            minutes: field(rest[0], "minute", 0, 59, &[])?,
            hours: field(rest[1], "hour", 0, 23, &[])?,
            days: field(&rest[2].replace('?', "*"), "day-of-month", 1, 31, &[])?,
            months: field(rest[3], "month", 1, 12, &MONTHS)?,
            weekdays: if dow_star { 0x7f } else { weekdays },
            day_or: !dom_star && !dow_star,
            dom_star,
            dow_star,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = has(self.days, d.day());
        let dow = has(self.weekdays, d.weekday().to_sunday_zero_offset());
        if self.day_or {
            dom || dow
        } else {
            (self.dom_star || dom) && (self.dow_star || dow)
        }
    }

    /// The first time strictly after `after` that matches, on the wall clock
    /// of `tz` (`None` if nothing matches within eight years, e.g. 30 Feb).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        // The next whole second.
        let mut t = start
            .with()
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.second())
            .ok()?;
        let limit = start.checked_add(8.years()).ok()?;
        while t < limit {
            let d = t.date();
            if !has(self.months, d.month()) {
                t = first_of_next_month(d)?;
                continue;
            }
            if !self.day_matches(d) {
                t = d.tomorrow().ok()?.to_datetime(Time::midnight());
                continue;
            }
            if !has(self.hours, t.hour()) {
                t = next_hour(t)?;
                continue;
            }
            if !has(self.minutes, t.minute()) {
                t = next_minute(t)?;
                continue;
            }
            if !has(self.seconds, t.second()) {
                t = t.checked_add(1.second()).ok()?;
                continue;
            }
            // A wall-clock time skipped by a DST change maps to the instant
            // after the gap; one that occurs twice to its first occurrence.
            let at = tz.to_ambiguous_zoned(t).compatible().ok()?.timestamp();
            if at > after {
                return Some(at);
            }
            t = t.checked_add(1.second()).ok()?;
        }
        None
    }
}

fn first_of_next_month(d: Date) -> Option<DateTime> {
    let first = d.first_of_month();
    Some(
        first
            .checked_add(1.month())
            .ok()?
            .to_datetime(Time::midnight()),
    )
}

fn next_hour(t: DateTime) -> Option<DateTime> {
    let h = t.with().minute(0).second(0).build().ok()?;
    h.checked_add(1.hour()).ok()
}

fn next_minute(t: DateTime) -> Option<DateTime> {
    let m = t.with().second(0).build().ok()?;
    m.checked_add(1.minute()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str, tz: &str) -> Timestamp {
        let tz = TimeZone::get(tz).expect("tz");
        s.parse::<DateTime>()
            .expect("datetime")
            .to_zoned(tz)
            .expect("zoned")
            .timestamp()
    }

    fn next(expr: &str, after: &str, tz: &str) -> String {
        let zone = TimeZone::get(tz).expect("tz");
        let t = Cron::parse(expr)
            .expect("parse")
            .next_after(at(after, tz), &zone)
            .expect("next");
        t.to_zoned(zone)
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string()
    }

    #[test]
    fn next_times_follow_the_fields() {
        let ny = "America/New_York";
        assert_eq!(
            next("0 9 * * MON-FRI", "2026-11-20T09:00", ny),
            "2026-11-23 09:00:00 EST"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-11-20T09:07:30", ny),
            "2026-11-20 09:15:00 EST"
        );
        assert_eq!(
            next("0 0 31 * *", "2026-04-01T00:00", ny),
            "2026-05-31 00:00:00 EDT"
        );
        assert_eq!(
            next("@monthly", "2026-12-15T12:00", ny),
            "2027-01-01 00:00:00 EST"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00", ny),
            "2028-02-29 00:00:00 EST"
        );
        assert_eq!(
            next("*/10 * * * * *", "2026-11-20T09:00:05", ny),
            "2026-11-20 09:00:10 EST"
        );
        // Both day fields restricted: either matches (the 13th, or Fridays).
        assert_eq!(
            next("0 0 13 * FRI", "2026-11-07T00:00", ny),
            "2026-11-13 00:00:00 EST"
        );
        assert_eq!(
            next("0 0 13 * FRI", "2026-11-13T00:00", ny),
            "2026-11-20 00:00:00 EST"
        );
        // 7 is Sunday too.
        assert_eq!(
            next("0 12 * * 7", "2026-11-20T00:00", ny),
            "2026-11-22 12:00:00 EST"
        );
    }

    #[test]
    fn daylight_saving_changes_neither_skip_nor_double_a_daily_run() {
        let ny = "America/New_York";
        // 2027-03-14: 02:00 → 03:00; 02:30 does not exist that day.
        assert_eq!(
            next("30 2 * * *", "2027-03-13T03:00", ny),
            "2027-03-14 03:30:00 EDT"
        );
        assert_eq!(
            next("30 2 * * *", "2027-03-14T04:00", ny),
            "2027-03-15 02:30:00 EDT"
        );
        // 2026-11-01: 01:30 happens twice; the run is at the first.
        let zone = TimeZone::get(ny).expect("tz");
        let c = Cron::parse("30 1 * * *").expect("parse");
        let first = c
            .next_after(at("2026-11-01T00:00", ny), &zone)
            .expect("first");
        assert_eq!(
            first
                .to_zoned(zone.clone())
                .strftime("%H:%M %Z")
                .to_string(),
            "01:30 EDT"
        );
        let second = c.next_after(first, &zone).expect("second");
        assert_eq!(
            second
                .to_zoned(zone)
                .strftime("%Y-%m-%d %H:%M %Z")
                .to_string(),
            "2026-11-02 01:30 EST"
        );
        // A daily 09:00 in another zone is 09:00 there.
        assert_eq!(
            next("0 9 * * *", "2026-11-20T10:00", "Asia/Tokyo"),
            "2026-11-21 09:00:00 JST"
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (expr, needle) in [
            ("* * * *", "4 fields"),
            ("61 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day-of-month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day-of-week"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "minute"),
            ("@never", "macro"),
            ("x * * * *", "minute"),
        ] {
            let e = Cron::parse(expr).expect_err(expr);
            assert!(e.contains(needle), "{expr}: {e}");
        }
        assert!(
            Cron::parse("0 0 30 2 *")
                .expect("parse")
                .next_after(Timestamp::UNIX_EPOCH, &TimeZone::UTC)
                .is_none()
        );
        assert!(Cron::parse("0 9 * jan-mar mon,wed").is_ok());
    }
}
