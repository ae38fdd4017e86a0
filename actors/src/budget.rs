//! Budget arithmetic: pricing usage, the monthly period, warning and limit.
//!
//! Money is counted in integer micro-dollars so that sums never drift; the
//! API converts to dollars at the edge.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// How long a budget period lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeriodKind {
    /// A calendar day.
    Daily,
    /// An ISO week (Monday to Sunday).
    Weekly,
    /// A calendar month.
    #[default]
    Monthly,
}

impl PeriodKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Daily => "daily",
            PeriodKind::Weekly => "weekly",
            PeriodKind::Monthly => "monthly",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<PeriodKind> {
        match s {
            "daily" => Some(PeriodKind::Daily),
            "weekly" => Some(PeriodKind::Weekly),
            "monthly" => Some(PeriodKind::Monthly),
            _ => None,
        }
    }
}

/// A budget period: a day, ISO week or month, starting on `start` in the
/// organization's time zone. Shown as `2026-11-21`, `2026-W47` or `2026-11`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Period {
    /// Its length.
    pub kind: PeriodKind,
    /// Its first day (a Monday for weeks, the 1st for months).
    pub start: jiff::civil::Date,
}

impl Period {
    /// The monthly period containing `unix_ms`, in UTC.
    pub fn of(unix_ms: i64) -> Period {
        Period::at(unix_ms, PeriodKind::Monthly, &jiff::tz::TimeZone::UTC)
    }

    /// The period of `kind` containing `unix_ms` in time zone `tz`.
    pub fn at(unix_ms: i64, kind: PeriodKind, tz: &jiff::tz::TimeZone) -> Period {
        let ts = jiff::Timestamp::from_millisecond(unix_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        Period::containing(tz.to_datetime(ts).date(), kind)
    }

    /// The period of `kind` containing the civil date `d`.
    pub fn containing(d: jiff::civil::Date, kind: PeriodKind) -> Period {
        let start = match kind {
            PeriodKind::Daily => d,
            PeriodKind::Weekly => {
                let back = i64::from(d.weekday().to_monday_zero_offset());
                d.checked_sub(jiff::Span::new().days(back)).unwrap_or(d)
            }
            PeriodKind::Monthly => d.first_of_month(),
        };
        Period { kind, start }
    }

    /// Parses `YYYY-MM-DD` (daily), `YYYY-Www` (weekly) or `YYYY-MM` (monthly).
    pub fn parse(s: &str) -> Option<Period> {
        if let Some((y, w)) = s.split_once("-W") {
            let week = jiff::civil::ISOWeekDate::new(
                y.parse().ok()?,
                w.parse().ok()?,
                jiff::civil::Weekday::Monday,
            )
            .ok()?;
            return Some(Period {
                kind: PeriodKind::Weekly,
                start: week.date(),
            });
        }
        let parts: Vec<&str> = s.split('-').collect();
        let num = |i: usize| parts.get(i).and_then(|p| p.parse::<i16>().ok());
        match parts.len() {
            2 => Some(Period {
                kind: PeriodKind::Monthly,
                start: jiff::civil::Date::new(num(0)?, i8::try_from(num(1)?).ok()?, 1).ok()?,
            }),
            3 => Some(Period {
                kind: PeriodKind::Daily,
                start: jiff::civil::Date::new(
                    num(0)?,
                    i8::try_from(num(1)?).ok()?,
                    i8::try_from(num(2)?).ok()?,
                )
                .ok()?,
            }),
            _ => None,
        }
    }

    /// Its first day after it (the start of the next period).
    pub fn end(&self) -> jiff::civil::Date {
        let span = match self.kind {
            PeriodKind::Daily => jiff::Span::new().days(1),
            PeriodKind::Weekly => jiff::Span::new().weeks(1),
            PeriodKind::Monthly => jiff::Span::new().months(1),
        };
        self.start.checked_add(span).unwrap_or(self.start)
    }

    /// The parts a chart of the period shows, as `[start, end)` unix ms in
    /// `tz`: its hours for a day (23 or 25 on a day clocks change), its days
    /// for a week or a month.
    pub fn parts(&self, tz: &jiff::tz::TimeZone) -> Vec<(i64, i64)> {
        let midnight = |d: jiff::civil::Date| {
            tz.to_ambiguous_zoned(d.to_datetime(jiff::civil::Time::midnight()))
                .compatible()
                .map(|z| z.timestamp().as_millisecond())
                .unwrap_or(0)
        };
        let (from, to) = (midnight(self.start), midnight(self.end()));
        match self.kind {
            PeriodKind::Daily => (0..)
                .map(|h| from + h * 3_600_000)
                .take_while(|s| *s < to)
                .map(|s| (s, (s + 3_600_000).min(to)))
                .collect(),
            _ => {
                let mut out = Vec::new();
                let mut day = self.start;
                while day < self.end() {
                    let next = day.tomorrow().unwrap_or(self.end());
                    out.push((midnight(day), midnight(next)));
                    day = next;
                }
                out
            }
        }
    }

    /// Whether `self` began after `other` (same kind), or is of another kind.
    fn replaces(&self, other: &Period) -> bool {
        self.kind != other.kind || self.start > other.start
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.start;
        match self.kind {
            PeriodKind::Daily => write!(f, "{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
            PeriodKind::Weekly => {
                let w = d.iso_week_date();
                write!(f, "{:04}-W{:02}", w.year(), w.week())
            }
            PeriodKind::Monthly => write!(f, "{:04}-{:02}", d.year(), d.month()),
        }
    }
}

/// Limits per budget period; `None` means unlimited. (The fields keep their
/// `monthly_` names from when every period was a month: they are the limits
/// per `period`.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BudgetLimits {
    /// Tokens per period.
    pub monthly_tokens: Option<u64>,
    /// Micro-dollars per period.
    pub monthly_cost_micros: Option<u64>,
    /// The period.
    pub period: PeriodKind,
}

/// Usage in one period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Tokens (input + output).
    pub tokens: u64,
    /// Cost in micro-dollars.
    pub cost_micros: u64,
    /// The period these counters belong to.
    pub period: Period,
    /// Whether the 80 % warning was raised in this period.
    pub warned: bool,
}

impl Usage {
    /// Empty usage for `period`.
    pub fn empty(period: Period) -> Usage {
        Usage {
            tokens: 0,
            cost_micros: 0,
            period,
            warned: false,
        }
    }

    /// The usage as of `now`: counters reset when the period rolled over
    /// (or the budget's period kind changed).
    pub fn rolled_to(self, now: Period) -> Usage {
        if now.replaces(&self.period) {
            Usage::empty(now)
        } else {
            self
        }
    }

    /// Adds a priced report (saturating: a hostile report cannot wrap a counter).
    pub fn add(self, tokens: u64, cost_micros: u64) -> Usage {
        Usage {
            tokens: self.tokens.saturating_add(tokens),
            cost_micros: self.cost_micros.saturating_add(cost_micros),
            ..self
        }
    }

    /// The highest fraction of any limit used, in per-mille (1000 = 100 %).
    pub fn permille_of(&self, limits: &BudgetLimits) -> u64 {
        let ratio = |used: u64, limit: Option<u64>| match limit {
            None => 0,
            Some(0) => 1000,
            Some(l) => (u128::from(used) * 1000 / u128::from(l)).min(u128::from(u64::MAX)) as u64,
        };
        ratio(self.tokens, limits.monthly_tokens)
            .max(ratio(self.cost_micros, limits.monthly_cost_micros))
    }

    /// Whether any limit is reached.
    pub fn is_exhausted(&self, limits: &BudgetLimits) -> bool {
        self.permille_of(limits) >= 1000
    }
}

/// Where usage stands against the limits after a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BudgetLevel {
    /// Below 80 %, or already warned.
    Ok,
    /// Crossed 80 % for the first time this period.
    Warn,
    /// At or above 100 %.
    Exceeded,
}

/// Classifies `usage` (warned flag as it was before the report).
pub fn level(usage: &Usage, limits: &BudgetLimits) -> BudgetLevel {
    let p = usage.permille_of(limits);
    if p >= 1000 {
        BudgetLevel::Exceeded
    } else if p >= 800 && !usage.warned {
        BudgetLevel::Warn
    } else {
        BudgetLevel::Ok
    }
}

/// Price of one model, in USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// Input (prompt) tokens.
    pub input_per_mtok: f64,
    /// Output (completion) tokens.
    pub output_per_mtok: f64,
}

/// The pricing table (`config/pricing.toml`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pricing {
    /// Price used for models not in the table.
    pub default: ModelPrice,
    /// Prices by model name.
    #[serde(default)]
    pub models: HashMap<String, ModelPrice>,
}

impl Pricing {
    /// Checks that every price is a finite, non-negative number.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |p: &ModelPrice| {
            p.input_per_mtok.is_finite()
                && p.output_per_mtok.is_finite()
                && p.input_per_mtok >= 0.0
                && p.output_per_mtok >= 0.0
        };
        if !ok(&self.default) {
            return Err("pricing.default: prices must be finite and >= 0".into());
        }
        for (name, p) in &self.models {
            if !ok(p) {
                return Err(format!(
                    "pricing.models.{name}: prices must be finite and >= 0"
                ));
            }
        }
        Ok(())
    }

    /// Cost of a call in micro-dollars, rounded up so that usage is never under-counted.
    pub fn cost_micros(&self, model: &str, input_tokens: u64, output_tokens: u64) -> u64 {
        let p = self.models.get(model).unwrap_or(&self.default);
        // USD per Mtok == micro-USD per token.
        let micros =
            input_tokens as f64 * p.input_per_mtok + output_tokens as f64 * p.output_per_mtok;
        if micros >= u64::MAX as f64 {
            u64::MAX
        } else {
            micros.ceil() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pricing() -> Pricing {
        Pricing {
            default: ModelPrice {
                input_per_mtok: 1.0,
                output_per_mtok: 2.0,
            },
            models: HashMap::from([(
                "big".to_string(),
                ModelPrice {
                    input_per_mtok: 10.0,
                    output_per_mtok: 30.0,
                },
            )]),
        }
    }

    #[test]
    fn prices_by_model_with_default() {
        let p = pricing();
        assert_eq!(p.cost_micros("big", 1_000_000, 0), 10_000_000);
        assert_eq!(p.cost_micros("big", 1000, 1000), 40_000);
        assert_eq!(p.cost_micros("unknown", 1000, 1000), 3_000);
        // fractions of a micro-dollar round up
        assert_eq!(p.cost_micros("unknown", 1, 0), 1);
        assert_eq!(p.cost_micros("big", u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn warns_at_80_and_stops_at_100_percent() {
        let limits = BudgetLimits {
            monthly_tokens: Some(1000),
            ..Default::default()
        };
        let u = Usage::empty(p("2026-11"));
        assert_eq!(level(&u.add(799, 0), &limits), BudgetLevel::Ok);
        assert_eq!(level(&u.add(800, 0), &limits), BudgetLevel::Warn);
        let warned = Usage {
            warned: true,
            ..u.add(900, 0)
        };
        assert_eq!(level(&warned, &limits), BudgetLevel::Ok);
        assert_eq!(level(&u.add(1000, 0), &limits), BudgetLevel::Exceeded);
        // the cost limit counts as well, whichever is higher
        let both = BudgetLimits {
            monthly_tokens: Some(1_000_000),
            monthly_cost_micros: Some(100),
            ..Default::default()
        };
        assert_eq!(level(&u.add(1, 100), &both), BudgetLevel::Exceeded);
        // unlimited never trips, a zero limit always does
        assert_eq!(
            level(&u.add(u64::MAX, u64::MAX), &BudgetLimits::default()),
            BudgetLevel::Ok
        );
        let zero = BudgetLimits {
            monthly_tokens: Some(0),
            ..Default::default()
        };
        assert!(u.is_exhausted(&zero));
        assert_eq!(u.add(u64::MAX, 0).add(5, 0).tokens, u64::MAX);
    }

    fn p(s: &str) -> Period {
        Period::parse(s).unwrap_or_else(|| panic!("bad period {s}"))
    }

    #[test]
    fn a_period_is_charted_by_its_hours_or_days_in_its_time_zone() {
        let oslo = jiff::tz::TimeZone::get("Europe/Oslo").expect("tz");
        let date = |y, m, d| jiff::civil::Date::new(y, m, d).expect("date");
        let month = Period::containing(date(2026, 2, 10), PeriodKind::Monthly);
        let parts = month.parts(&oslo);
        assert_eq!(parts.len(), 28);
        // 2026-02-01 00:00 in Oslo is 2026-01-31 23:00 UTC.
        assert_eq!(parts[0].0, 1_769_900_400_000);
        assert!(parts.windows(2).all(|w| w[0].1 == w[1].0));
        let week = Period::containing(date(2026, 12, 9), PeriodKind::Weekly);
        assert_eq!(week.parts(&jiff::tz::TimeZone::UTC).len(), 7);
        // The day clocks go forward has 23 hours.
        let spring = Period::containing(date(2026, 3, 29), PeriodKind::Daily);
        let hours = spring.parts(&oslo);
        assert_eq!(hours.len(), 23);
        assert_eq!(hours[22].1 - hours[0].0, 23 * 3_600_000);
    }

    #[test]
    fn month_rollover_resets_usage() {
        let (nov, dec, jan) = (p("2026-11"), p("2026-12"), p("2027-01"));
        let u = Usage {
            warned: true,
            ..Usage::empty(nov).add(500, 7)
        };
        assert_eq!(u.rolled_to(nov), u);
        assert_eq!(u.rolled_to(dec), Usage::empty(dec));
        assert_eq!(u.rolled_to(jan).period.to_string(), "2027-01");
        // a clock that goes backwards never resurrects or clears counters
        assert_eq!(u.rolled_to(p("2026-10")), u);
        // 2026-11-30T23:59:59.999Z and the next millisecond
        assert_eq!(Period::of(1_796_083_199_999), nov);
        assert_eq!(Period::of(1_796_083_200_000), dec);
        assert_eq!(Period::parse("2026-13"), None);
        assert_eq!(Period::parse("nope"), None);
        assert_eq!(Period::parse("2026-W54"), None);
        // a changed period kind starts counting afresh
        assert_eq!(u.rolled_to(p("2026-11-21")), Usage::empty(p("2026-11-21")));
    }

    #[test]
    fn days_and_weeks_roll_over_in_the_organizations_time_zone() {
        let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").expect("tz");
        let ny = jiff::tz::TimeZone::get("America/New_York").expect("tz");
        let utc = jiff::tz::TimeZone::UTC;
        // 2026-11-21T14:59:59.999Z is 23:59:59.999 in Tokyo; the next ms is tomorrow there.
        let before = 1_795_273_199_999;
        assert_eq!(
            Period::at(before, PeriodKind::Daily, &tokyo).to_string(),
            "2026-11-21"
        );
        assert_eq!(
            Period::at(before + 1, PeriodKind::Daily, &tokyo).to_string(),
            "2026-11-22"
        );
        assert_eq!(
            Period::at(before + 1, PeriodKind::Daily, &utc).to_string(),
            "2026-11-21"
        );
        // In New York that instant is still the 21st, 09:59:59.999 EST.
        assert_eq!(
            Period::at(before, PeriodKind::Daily, &ny).to_string(),
            "2026-11-21"
        );
        // Sunday 2026-11-22 23:30 in Tokyo is week 47; its Monday is the 16th.
        let sunday_night = 1_795_357_800_000; // 2026-11-22T14:30:00Z
        let w = Period::at(sunday_night, PeriodKind::Weekly, &tokyo);
        assert_eq!(w.to_string(), "2026-W47");
        assert_eq!(w.start.to_string(), "2026-11-16");
        // 45 minutes later it is Monday in Tokyo (week 48) but still Sunday in UTC.
        let monday = sunday_night + 45 * 60_000;
        assert_eq!(
            Period::at(monday, PeriodKind::Weekly, &tokyo).to_string(),
            "2026-W48"
        );
        assert_eq!(
            Period::at(monday, PeriodKind::Weekly, &utc).to_string(),
            "2026-W47"
        );
        // ISO weeks across the year end: 2026-12-31 is in 2026-W53, 2027-01-04 starts W01.
        let d = |y, m, day| jiff::civil::Date::new(y, m, day).expect("date");
        assert_eq!(
            Period::containing(d(2026, 12, 31), PeriodKind::Weekly).to_string(),
            "2026-W53"
        );
        assert_eq!(
            Period::containing(d(2027, 1, 3), PeriodKind::Weekly).to_string(),
            "2026-W53"
        );
        assert_eq!(
            Period::containing(d(2027, 1, 4), PeriodKind::Weekly).to_string(),
            "2027-W01"
        );
        // Monthly in New York: 2026-12-01T04:59:59Z is still November there.
        assert_eq!(
            Period::at(1_796_101_199_000, PeriodKind::Monthly, &ny).to_string(),
            "2026-11"
        );
        assert_eq!(
            Period::at(1_796_101_200_000, PeriodKind::Monthly, &ny).to_string(),
            "2026-12"
        );
        // Every shape parses back to itself.
        for s in ["2026-11-21", "2026-W47", "2026-11", "2026-W53"] {
            assert_eq!(p(s).to_string(), s);
        }
        // Rolling over: the next day resets a daily budget, the same day does not.
        let u = Usage::empty(p("2026-11-21")).add(10, 10);
        assert_eq!(u.rolled_to(p("2026-11-21")), u);
        assert_eq!(u.rolled_to(p("2026-11-22")).tokens, 0);
    }
}
