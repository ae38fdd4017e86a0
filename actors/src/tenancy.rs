//! What the actor tree must know about each organization: its agent limit,
//! its monthly budget, whether it is suspended, and what it has spent this
//! month. The identity service owns the standing and publishes it here after
//! each committed change; the agents add to the spend after each committed
//! usage report (the store holds the durable total, loaded at start).

use crate::budget::{BudgetLimits, Period, Usage};
use crate::domain::OrgId;
use dashmap::DashMap;

/// An organization's standing as the actors need it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrgStanding {
    /// Most live agents allowed (`None` = unlimited). Enforced again by the
    /// store in the insert's transaction, so the check is atomic.
    pub max_agents: Option<u64>,
    /// The organization's monthly token and cost limits, over all its agents
    /// (deleted ones included).
    pub budget: BudgetLimits,
    /// A suspended organization's agents are stopped and cannot start.
    pub suspended: bool,
}

/// Standing and spend of every organization (unknown ones: unlimited,
/// active, nothing spent).
#[derive(Debug, Default)]
pub struct Tenancy {
    orgs: DashMap<OrgId, OrgStanding>,
    spend: DashMap<OrgId, Usage>,
}

impl Tenancy {
    /// Publishes an organization's standing.
    pub fn set(&self, org: &OrgId, standing: OrgStanding) {
        self.orgs.insert(org.clone(), standing);
    }

    /// An organization's standing.
    pub fn get(&self, org: &OrgId) -> OrgStanding {
        self.orgs.get(org).map(|s| *s).unwrap_or_default()
    }

    /// Sets `cadre_org_usage_tokens`, `cadre_org_usage_cost_usd` and
    /// `cadre_org_budget_used_ratio` for every organization known.
    pub fn record_gauges(&self, period: Period) {
        for entry in self.orgs.iter() {
            let org = entry.key().0.clone();
            let limits = entry.value().budget;
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
        self.spend.insert(org.clone(), usage);
    }

    /// What an organization has spent in `period` (nothing once the month
    /// rolled over).
    pub fn spent(&self, org: &OrgId, period: Period) -> Usage {
        match self.spend.get(org) {
            Some(u) if u.period == period => *u,
            _ => Usage::empty(period),
        }
    }

    /// Adds a committed charge to an organization's spend and returns the new
    /// total. Called after the charge's transaction committed, so two agents
    /// charging at once both count (the map entry serializes them).
    pub fn charge(&self, org: &OrgId, period: Period, tokens: u64, cost_micros: u64) -> Usage {
        let mut entry = self
            .spend
            .entry(org.clone())
            .or_insert_with(|| Usage::empty(period));
        if entry.period < period {
            *entry = Usage::empty(period);
        }
        if entry.period == period {
            *entry = entry.add(tokens, cost_micros);
            *entry
        } else {
            // A charge for a month already past the stored one cannot count
            // against the current month.
            Usage::empty(period).add(tokens, cost_micros)
        }
    }

    /// Whether an organization's monthly budget is used up in `period`.
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
        let nov = Period {
            year: 2026,
            month: 11,
        };
        let dec = Period {
            year: 2026,
            month: 12,
        };
        t.set(
            &org(),
            OrgStanding {
                budget: BudgetLimits {
                    monthly_tokens: Some(100),
                    monthly_cost_micros: None,
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
    }
}
