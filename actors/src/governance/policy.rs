//! Approval policies: which calls need a human, who decides, how many
//! approvals, and what happens when nobody answers in time.

use super::{Risk, SideEffect, ToolDef, valid_id};
use serde::{Deserialize, Serialize};

/// Roles that may be named as approvers (a viewer never decides).
pub const APPROVER_ROLES: [&str; 3] = ["owner", "admin", "member"];

/// What happens when a level times out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The request is denied (state `expired`, the call is refused).
    #[default]
    Deny,
    /// The request is approved (state `expired`, the call proceeds).
    Approve,
    /// The next level of the chain takes over with its own approvers and timeout.
    Escalate,
}

impl OnTimeout {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Deny => "deny",
            OnTimeout::Approve => "approve",
            OnTimeout::Escalate => "escalate",
        }
    }
}

/// Who may decide: any user with one of `roles`, or one of `users` (ids),
/// or the agent's manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Approvers {
    /// Roles (`owner`, `admin`, `member`).
    #[serde(default)]
    pub roles: Vec<String>,
    /// User ids.
    #[serde(default)]
    pub users: Vec<String>,
    /// The person this many steps up the org chart from the requesting
    /// agent: 1 is its manager (the manager user, or the person above a
    /// manager agent), 2 the next person above, … When the chart has no
    /// such person, the organization's owners decide. Resolved into
    /// `users` when the request is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<u32>,
}

impl Approvers {
    /// Names the person `managers[manager - 1]` (the people up the
    /// requesting agent's chart, nearest first), or the owners when there
    /// is none.
    pub fn resolve_manager(&mut self, managers: &[String]) {
        let Some(k) = self.manager else {
            return;
        };
        match managers.get(k.saturating_sub(1) as usize) {
            Some(person) => self.users.push(person.clone()),
            None if !self.roles.iter().any(|r| r == "owner") => self.roles.push("owner".into()),
            None => {}
        }
    }

    /// Whether a user with `role` and `user_id` may decide.
    pub fn allows(&self, user_id: &str, role: &str) -> bool {
        role != "viewer"
            && (self.roles.iter().any(|r| r == role) || self.users.iter().any(|u| u == user_id))
    }
}

fn one() -> u32 {
    1
}

/// One level of the escalation chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// Who decides at this level.
    pub approvers: Approvers,
    /// Approvals needed (distinct users); one denial denies.
    #[serde(default = "one")]
    pub required: u32,
    /// Seconds before the timeout action.
    pub timeout_seconds: u64,
    /// What happens then.
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

/// A policy as the organization writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDef {
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Triggers: these tools …
    #[serde(default)]
    pub tools: Vec<String>,
    /// … or tools of these skills …
    #[serde(default)]
    pub skills: Vec<String>,
    /// … or tools of at least this risk …
    #[serde(default)]
    pub min_risk: Option<Risk>,
    /// … or tools with any of these side effects …
    #[serde(default)]
    pub side_effects: Vec<SideEffect>,
    /// … or calls whose estimated cost reaches this many dollars.
    #[serde(default)]
    pub min_cost_usd: Option<f64>,
    /// The escalation chain: level 0 first.
    pub levels: Vec<Level>,
}

impl PolicyDef {
    /// Checks the values; `Err` names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.description.len() > 1000 {
            return Err("description: at most 1000 characters".into());
        }
        for t in self.tools.iter().chain(&self.skills) {
            if !valid_id(t) {
                return Err(format!("tools/skills: `{t}` is not a valid id"));
            }
        }
        if let Some(c) = self.min_cost_usd
            && !(c.is_finite() && c >= 0.0)
        {
            return Err("min_cost_usd: a number >= 0".into());
        }
        if self.levels.is_empty() || self.levels.len() > 5 {
            return Err("levels: 1 to 5 levels".into());
        }
        for (i, l) in self.levels.iter().enumerate() {
            let at = format!("levels[{i}]");
            if l.approvers.roles.is_empty()
                && l.approvers.users.is_empty()
                && l.approvers.manager.is_none()
            {
                return Err(format!(
                    "{at}.approvers: name at least one role, user or manager"
                ));
            }
            if l.approvers.manager.is_some_and(|k| !(1..=10).contains(&k)) {
                return Err(format!(
                    "{at}.approvers.manager: 1 (the agent's manager) to 10 steps up the org chart"
                ));
            }
            if let Some(r) = l
                .approvers
                .roles
                .iter()
                .find(|r| !APPROVER_ROLES.contains(&r.as_str()))
            {
                return Err(format!(
                    "{at}.approvers.roles: `{r}` is not one of owner, admin, member"
                ));
            }
            if l.approvers
                .users
                .iter()
                .any(|u| u.is_empty() || u.len() > 100)
            {
                return Err(format!("{at}.approvers.users: user ids"));
            }
            if !(1..=10).contains(&l.required) {
                return Err(format!("{at}.required: 1 to 10"));
            }
            if !(1..=30 * 86_400).contains(&l.timeout_seconds) {
                return Err(format!("{at}.timeout_seconds: 1 to 2592000"));
            }
            if l.on_timeout == OnTimeout::Escalate && i + 1 == self.levels.len() {
                return Err(format!(
                    "{at}.on_timeout: `escalate` needs a next level to escalate to"
                ));
            }
        }
        Ok(())
    }
}

/// A policy ready for matching.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its name.
    pub name: String,
    /// The definition (its levels travel with each request it triggers).
    pub def: PolicyDef,
    min_cost_micros: Option<u64>,
    effects: u8,
}

impl Policy {
    /// Compiles a (validated) definition.
    pub fn compile(name: &str, def: &PolicyDef) -> Policy {
        Policy {
            name: name.to_string(),
            def: def.clone(),
            min_cost_micros: def.min_cost_usd.map(|c| (c * 1_000_000.0).ceil() as u64),
            effects: SideEffect::mask(&def.side_effects),
        }
    }

    /// Why it matches a call of `tool` with this estimated cost, if it does.
    pub fn matches(&self, tool: &ToolDef, effects: u8, cost_micros: u64) -> Option<String> {
        let d = &self.def;
        if d.tools.contains(&tool.id) {
            Some(format!("policy {}: tool {}", self.name, tool.id))
        } else if d.skills.contains(&tool.skill) {
            Some(format!("policy {}: skill {}", self.name, tool.skill))
        } else if d.min_risk.is_some_and(|r| tool.risk >= r) {
            Some(format!("policy {}: risk {}", self.name, tool.risk.as_str()))
        } else if effects & self.effects != 0 {
            let e: Vec<_> = SideEffect::of_mask(effects & self.effects)
                .map(SideEffect::as_str)
                .collect();
            Some(format!("policy {}: side effect {}", self.name, e.join(",")))
        } else if self.min_cost_micros.is_some_and(|c| cost_micros >= c) {
            Some(format!("policy {}: estimated cost", self.name))
        } else {
            None
        }
    }
}
