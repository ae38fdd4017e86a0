//! Budget arithmetic: pricing usage, the monthly period, warning and limit.
//!
//! Money is counted in integer micro-dollars so that sums never drift; the
//! API converts to dollars at the edge.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// A calendar month in UTC: the budget period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    /// Year.
    pub year: i32,
    /// Month, 1–12.
    pub month: u8,
}

impl Period {
    /// The period containing `unix_ms`.
    pub fn of(unix_ms: i64) -> Period {
        let nanos = i128::from(unix_ms) * 1_000_000;
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        Period {
            year: t.year(),
            month: u8::from(t.month()),
        }
    }

    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Option<Period> {
        let (y, m) = s.split_once('-')?;
        let year = y.parse().ok()?;
        let month: u8 = m.parse().ok()?;
        (1..=12).contains(&month).then_some(Period { year, month })
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// Monthly limits; `None` means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BudgetLimits {
    /// Tokens per month.
    pub monthly_tokens: Option<u64>,
    /// Micro-dollars per month.
    pub monthly_cost_micros: Option<u64>,
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

    /// The usage as of `now`: counters reset when the month rolled over.
    pub fn rolled_to(self, now: Period) -> Usage {
        if now > self.period {
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
            monthly_cost_micros: None,
        };
        let u = Usage::empty(Period {
            year: 2026,
            month: 11,
        });
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
        };
        assert_eq!(level(&u.add(1, 100), &both), BudgetLevel::Exceeded);
        // unlimited never trips, a zero limit always does
        assert_eq!(
            level(&u.add(u64::MAX, u64::MAX), &BudgetLimits::default()),
            BudgetLevel::Ok
        );
        let zero = BudgetLimits {
            monthly_tokens: Some(0),
            monthly_cost_micros: None,
        };
        assert!(u.is_exhausted(&zero));
        assert_eq!(u.add(u64::MAX, 0).add(5, 0).tokens, u64::MAX);
    }

    #[test]
    fn month_rollover_resets_usage() {
        let nov = Period::parse("2026-11").unwrap_or(Period { year: 0, month: 1 });
        let dec = Period {
            year: 2026,
            month: 12,
        };
        let jan = Period {
            year: 2027,
            month: 1,
        };
        let u = Usage {
            warned: true,
            ..Usage::empty(nov).add(500, 7)
        };
        assert_eq!(u.rolled_to(nov), u);
        assert_eq!(u.rolled_to(dec), Usage::empty(dec));
        assert_eq!(u.rolled_to(jan).period.to_string(), "2027-01");
        // a clock that goes backwards never resurrects or clears counters
        assert_eq!(
            u.rolled_to(Period {
                year: 2026,
                month: 10
            }),
            u
        );
        // 2026-11-30T23:59:59.999Z and the next millisecond
        assert_eq!(Period::of(1_796_083_199_999), nov);
        assert_eq!(Period::of(1_796_083_200_000), dec);
        assert_eq!(Period::parse("2026-13"), None);
        assert_eq!(Period::parse("nope"), None);
    }
}
