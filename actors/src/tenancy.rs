//! What the actor tree must know about each organization: its agent limit,
//! its monthly budget, whether it is suspended, and what it has spent this
//! month. The identity service owns the standing and publishes it here after
//! each committed change; the agents add to the spend after each committed
//! usage report (the store holds the durable total, loaded at start).

use crate::budget::{BudgetLimits, Period, PeriodKind, Usage};
use crate::domain::OrgId;
use dashmap::DashMap;

/// An organization's standing as the actors need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgStanding {
    /// Its time zone: budget periods roll over at its midnight.
    pub tz: jiff::tz::TimeZone,
    /// Most live agents allowed (`None` = unlimited). Enforced again by the
    /// store in the insert's transaction, so the check is atomic.
    pub max_agents: Option<u64>,
    /// The organization's monthly token and cost limits, over all its agents
    /// (deleted ones included).
    pub budget: BudgetLimits,
    /// A suspended organization's agents are stopped and cannot start.
    pub suspended: bool,
}

impl Default for OrgStanding {
    fn default() -> OrgStanding {
        OrgStanding {
            tz: jiff::tz::TimeZone::UTC,
            max_agents: None,
            budget: BudgetLimits::default(),
            suspended: false,
        }
    }
}

/// An organization's committed spend in its current period and what is
/// held for model calls in flight.
#[derive(Clone, Copy, Debug)]
struct Ledger {
    usage: Usage,
    reserved: (u64, u64),
}

/// Standing and spend of every organization (unknown ones: unlimited,
/// active, nothing spent).
#[derive(Debug, Default)]
pub struct Tenancy {
    orgs: DashMap<OrgId, OrgStanding>,
    spend: DashMap<OrgId, Ledger>,
}

impl Tenancy {
    /// Publishes an organization's standing.
    pub fn set(&self, org: &OrgId, standing: OrgStanding) {
        self.orgs.insert(org.clone(), standing);
    }

    /// An organization's standing.
    pub fn get(&self, org: &OrgId) -> OrgStanding {
        self.orgs.get(org).map(|s| s.clone()).unwrap_or_default()
    }

    /// Sets `cadre_org_usage_tokens`, `cadre_org_usage_cost_usd` and
    /// `cadre_org_budget_used_ratio` for every organization known.
    pub fn record_gauges(&self, now_ms: i64) {
        for entry in self.orgs.iter() {
            let org = entry.key().0.clone();
            let limits = entry.value().budget;
            let period = Period::at(now_ms, limits.period, &entry.value().tz);
            let used = self.spent(entry.key(), period);
            metrics::gauge!("cadre_org_usage_tokens", "org" => org.clone()).set(used.tokens as f64);
            metrics::gauge!("cadre_org_usage_cost_usd", "org" => org.clone())
                .set(used.cost_micros as f64 / 1_000_000.0);
            for (budget, used, limit) in [
                ("tokens", used.tokens, limits.monthly_tokens),
                ("cost", used.cost_micros, limits.monthly_cost_micros),
            ] {
                if let Some(limit) = limit {
                    let ratio = if limit == 0 {
                        1.0
                    } else {
                        used as f64 / limit as f64
                    };
                    metrics::gauge!("cadre_org_budget_used_ratio", "org" => org.clone(), "budget" => budget)
                        .set(ratio);
                }
            }
        }
    }

    /// Sets an organization's committed spend (at start, from the store).
    pub fn load_spend(&self, org: &OrgId, usage: Usage) {
        self.spend.insert(
            org.clone(),
            Ledger {
                usage,
                reserved: (0, 0),
            },
        );
    }

    /// The organization's budget period at `now_ms` (its kind, its time zone).
    pub fn period(&self, org: &OrgId, now_ms: i64) -> Period {
        let s = self.get(org);
        Period::at(now_ms, s.budget.period, &s.tz)
    }

    /// An agent's budget period of `kind` at `now_ms` in its organization's time zone.
    pub fn agent_period(&self, org: &OrgId, kind: PeriodKind, now_ms: i64) -> Period {
        Period::at(now_ms, kind, &self.get(org).tz)
    }

    /// What an organization has spent in `period` (nothing once it rolled over).
    pub fn spent(&self, org: &OrgId, period: Period) -> Usage {
        match self.spend.get(org) {
            Some(l) if l.usage.period == period => l.usage,
            _ => Usage::empty(period),
        }
    }

    /// Adds a committed charge to an organization's spend and returns the new
    /// total. Called after the charge's transaction committed, so two agents
    /// charging at once both count (the map entry serializes them).
    pub fn charge(&self, org: &OrgId, period: Period, tokens: u64, cost_micros: u64) -> Usage {
        let mut entry = self.spend.entry(org.clone()).or_insert_with(|| Ledger {
            usage: Usage::empty(period),
            reserved: (0, 0),
        });
        entry.usage = entry.usage.rolled_to(period);
        if entry.usage.period == period {
            entry.usage = entry.usage.add(tokens, cost_micros);
            entry.usage
        } else {
            // A charge for a period already past the stored one cannot
            // count against the current one.
            Usage::empty(period).add(tokens, cost_micros)
        }
    }

    /// Holds `tokens` and `cost_micros` of the organization's budget for a
    /// model call, if spend plus everything held plus this fits its limits.
    /// The check and the hold are one step under the organization's entry
    /// lock, so concurrent reservations from all its agents never overshoot.
    pub fn try_reserve(&self, org: &OrgId, period: Period, tokens: u64, cost_micros: u64) -> bool {
        let limits = self.get(org).budget;
        let mut entry = self.spend.entry(org.clone()).or_insert_with(|| Ledger {
            usage: Usage::empty(period),
            reserved: (0, 0),
        });
        let rolled = entry.usage.rolled_to(period);
        if rolled.period != entry.usage.period {
            entry.usage = rolled;
        }
        let fits = |used: u64, held: u64, more: u64, limit: Option<u64>| {
            limit.is_none_or(|l| {
                u128::from(used) + u128::from(held) + u128::from(more) <= u128::from(l)
            })
        };
        let (held_tokens, held_cost) = entry.reserved;
        if fits(
            entry.usage.tokens,
            held_tokens,
            tokens,
            limits.monthly_tokens,
        ) && fits(
            entry.usage.cost_micros,
            held_cost,
            cost_micros,
            limits.monthly_cost_micros,
        ) {
            entry.reserved = (
                held_tokens.saturating_add(tokens),
                held_cost.saturating_add(cost_micros),
            );
            true
        } else {
            false
        }
    }

    /// Releases a hold taken by [`try_reserve`](Self::try_reserve).
    pub fn release(&self, org: &OrgId, tokens: u64, cost_micros: u64) {
        if let Some(mut entry) = self.spend.get_mut(org) {
            entry.reserved = (
                entry.reserved.0.saturating_sub(tokens),
                entry.reserved.1.saturating_sub(cost_micros),
            );
        }
    }

    /// Tokens and micro-dollars currently held for an organization.
    pub fn reserved(&self, org: &OrgId) -> (u64, u64) {
        self.spend.get(org).map(|l| l.reserved).unwrap_or((0, 0))
    }

    /// Whether an organization's budget is used up in `period`.
    pub fn budget_exhausted(&self, org: &OrgId, period: Period) -> bool {
        self.spent(org, period).is_exhausted(&self.get(org).budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> OrgId {
        OrgId("o".into())
    }

    #[test]
    fn charges_add_up_and_roll_over_with_the_month() {
        let t = Tenancy::default();
        let nov = Period::parse("2026-11").expect("period");
        let dec = Period::parse("2026-12").expect("period");
        t.set(
            &org(),
            OrgStanding {
                budget: BudgetLimits {
                    monthly_tokens: Some(100),
                    ..Default::default()
                },
                ..OrgStanding::default()
            },
        );
        assert_eq!(t.charge(&org(), nov, 60, 1).tokens, 60);
        assert!(!t.budget_exhausted(&org(), nov));
        assert_eq!(t.charge(&org(), nov, 40, 1).tokens, 100);
        assert!(t.budget_exhausted(&org(), nov));
        // A new month starts from nothing.
        assert_eq!(t.spent(&org(), dec).tokens, 0);
        assert!(!t.budget_exhausted(&org(), dec));
        assert_eq!(t.charge(&org(), dec, 5, 0).tokens, 5);
        // Unknown organizations are unlimited.
        let other = OrgId("p".into());
        t.charge(&other, dec, u64::MAX, u64::MAX);
        assert!(!t.budget_exhausted(&other, dec));
        // Holds count against the limit until released.
        assert!(t.try_reserve(&org(), dec, 90, 0));
        assert!(!t.try_reserve(&org(), dec, 6, 0));
        assert!(t.try_reserve(&org(), dec, 5, 0));
        assert_eq!(t.reserved(&org()), (95, 0));
        t.release(&org(), 90, 0);
        assert!(t.try_reserve(&org(), dec, 90, 0));
    }
}
