//! The permission engine: `allow`, `deny(reason)` or `needs_approval(policy)`
//! for one tool call of one agent.
//!
//! The order is fixed and documented (docs/governance.md); every deny comes
//! before anything that could allow, so a deny always wins:
//!
//! 1. `halted` — a kill switch covers the agent, its organization or the instance.
//! 2. `unknown_profile` — the agent names a profile that does not exist.
//! 3. `unknown_tool` — the tool is not in the organization's catalog.
//! 4. `tool_blocked` — the profile blocks the tool.
//! 5. `skill_blocked` — the profile blocks the tool's skill.
//! 6. `not_allowed` — neither the tool nor its skill is allowed.
//! 7. `side_effect_blocked` — the tool has a side effect the profile blocks.
//! 8. `outside_working_hours` — not within the profile's working hours.
//! 9. `rate_limited` — the tool's rate limit is used up (the call counts).
//!
//! (Between 7 and 8: `host_not_allowed` — an `http.*` tool's `url` names a
//! host that is not on the profile's `http_hosts`.)
//! 10. sandbox: a tool with side effects other than reading is allowed as a
//!     *simulation* (recorded, never executed); approval is moot.
//! 11. a standing grant for this tool and these arguments → allow.
//! 12. risk above the profile's `max_risk`, or a side effect the profile
//!     sends to approval, or an organization policy matching the call →
//!     needs approval (the first matching organization policy decides who
//!     approves; the default policy when none matches).
//! 13. allow.
//!
//! The static part (steps 3–7 and the profile's approval triggers) is
//! precomputed per tool when a profile is compiled, so a check is a hash
//! lookup and a few comparisons.

use super::policy::Policy;
use super::{ACTING, OrgGov, Profile, ProfileDef, SideEffect, ToolDef, WorkingHours};
use std::collections::HashMap;
use std::sync::Arc;

/// Why a call is denied (the stable `reason` code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// A kill switch is on.
    Halted,
    /// The agent's profile does not exist.
    UnknownProfile,
    /// Not in the catalog.
    UnknownTool,
    /// Blocked by tool.
    ToolBlocked,
    /// Blocked by skill.
    SkillBlocked,
    /// Not allowed by the profile.
    NotAllowed,
    /// A blocked side effect.
    SideEffectBlocked,
    /// Outside working hours.
    OutsideWorkingHours,
    /// Rate limit used up.
    RateLimited,
    /// An `http.*` call to a host the profile does not allow.
    HostNotAllowed,
}

impl DenyReason {
    /// The stable code.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::Halted => "halted",
            DenyReason::UnknownProfile => "unknown_profile",
            DenyReason::UnknownTool => "unknown_tool",
            DenyReason::ToolBlocked => "tool_blocked",
            DenyReason::SkillBlocked => "skill_blocked",
            DenyReason::NotAllowed => "not_allowed",
            DenyReason::SideEffectBlocked => "side_effect_blocked",
            DenyReason::OutsideWorkingHours => "outside_working_hours",
            DenyReason::RateLimited => "rate_limited",
            DenyReason::HostNotAllowed => "host_not_allowed",
        }
    }
}

/// The engine's answer.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// Go ahead (`simulate`: record it, do not execute it).
    Allow {
        /// Sandbox mode: simulate.
        simulate: bool,
        /// The standing grant that allowed it, if one did.
        grant: Option<String>,
    },
    /// Refused.
    Deny {
        /// The code.
        reason: DenyReason,
        /// A human explanation.
        message: String,
    },
    /// A human must decide first.
    NeedsApproval {
        /// The policy that says who decides.
        policy: Arc<Policy>,
        /// What triggered it.
        trigger: String,
    },
}

/// The part of a verdict that depends only on the tool and the profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Static {
    Deny(DenyReason),
    Go {
        /// Risk above the profile's maximum.
        risky: bool,
        /// Side effects the profile sends to approval.
        approval_effects: u8,
        /// Side effects other than reading (simulated in sandbox mode).
        acting: bool,
    },
}

/// Compiled working hours.
#[derive(Debug, Clone)]
pub struct Hours {
    tz: jiff::tz::TimeZone,
    /// Bit 0 = Monday.
    days: u8,
    start: u16,
    end: u16,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn minutes(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
}

impl Hours {
    /// Compiles working hours; `Err` says what is wrong.
    pub fn compile(h: &WorkingHours) -> Result<Hours, String> {
        let tz = jiff::tz::TimeZone::get(&h.timezone)
            .map_err(|_| format!("unknown time zone `{}`", h.timezone))?;
        let mut days = 0u8;
        for d in &h.days {
            let i = DAYS
                .iter()
                .position(|x| x.eq_ignore_ascii_case(d))
                .ok_or_else(|| format!("day `{d}` is not one of mon … sun"))?;
            days |= 1 << i;
        }
        if days == 0 {
            days = 0x7f;
        }
        let start = minutes(&h.start).ok_or("start: HH:MM")?;
        let end = minutes(&h.end).ok_or("end: HH:MM")?;
        if start == end {
            return Err("start and end must differ".into());
        }
        Ok(Hours {
            tz,
            days,
            start,
            end,
        })
    }

    /// Whether `now_ms` is within the hours.
    pub fn contains(&self, now_ms: i64) -> bool {
        let Ok(ts) = jiff::Timestamp::from_millisecond(now_ms) else {
            return false;
        };
        let dt = self.tz.to_datetime(ts);
        let day = dt.weekday().to_monday_zero_offset() as u8;
        let m = dt.hour() as u16 * 60 + dt.minute() as u16;
        let on = |d: u8| self.days & (1 << (d % 7)) != 0;
        if self.start < self.end {
            on(day) && (self.start..self.end).contains(&m)
        } else {
            // Overnight: the evening belongs to today, the morning to yesterday.
            (m >= self.start && on(day)) || (m < self.end && on(day + 6))
        }
    }
}

/// Compiles `def` against a catalog.
pub(crate) fn compile_profile(
    name: &str,
    def: &ProfileDef,
    tools: &[ToolDef],
    index: &HashMap<String, u32>,
) -> Profile {
    let all = def.allow_skills.iter().any(|s| s == "*");
    let blocked_effects = SideEffect::mask(&def.blocked_side_effects);
    let approval_effects = SideEffect::mask(&def.approval_side_effects);
    let verdicts = tools
        .iter()
        .map(|t| {
            let effects = SideEffect::mask(&t.side_effects);
            if def.block_tools.contains(&t.id) {
                Static::Deny(DenyReason::ToolBlocked)
            } else if def.block_skills.contains(&t.skill) {
                Static::Deny(DenyReason::SkillBlocked)
            } else if !(all
                || def.allow_skills.contains(&t.skill)
                || def.allow_tools.contains(&t.id))
            {
                Static::Deny(DenyReason::NotAllowed)
            } else if effects & blocked_effects != 0 {
                Static::Deny(DenyReason::SideEffectBlocked)
            } else {
                Static::Go {
                    risky: t.risk > def.max_risk,
                    approval_effects: effects & approval_effects,
                    acting: effects & ACTING != 0,
                }
            }
        })
        .collect();
    let rates = def
        .rate_limits
        .iter()
        .filter_map(|(tool, r)| index.get(tool).map(|&i| (i, *r)))
        .collect();
    Profile {
        name: name.to_string(),
        def: def.clone(),
        verdicts,
        rates,
        hours: def
            .working_hours
            .as_ref()
            .and_then(|h| Hours::compile(h).ok()),
    }
}

/// One agent's rate-limit counters (GCRA: one "theoretical arrival time"
/// per limited tool, in microseconds).
#[derive(Debug, Default)]
pub struct RateState {
    generation: u64,
    tat: HashMap<u32, i64>,
}

impl RateState {
    /// Counts a call; `Err(retry_after_ms)` when the limit is used up.
    fn take(
        &mut self,
        generation: u64,
        tool: u32,
        limit: crate::governance::RateLimit,
        now_ms: i64,
    ) -> Result<(), i64> {
        if self.generation != generation {
            self.generation = generation;
            self.tat.clear();
        }
        let period = i64::from(limit.per_seconds) * 1_000_000;
        let t = period / i64::from(limit.calls).max(1);
        let tau = period - t;
        let now = now_ms.saturating_mul(1000);
        let tat = self.tat.get(&tool).copied().unwrap_or(now).max(now);
        if tat - now > tau {
            return Err((tat - now - tau).div_euclid(1000).max(1));
        }
        self.tat.insert(tool, tat + t);
        Ok(())
    }
}

/// A call to judge.
#[derive(Clone, Copy, Debug)]
pub struct ToolCall<'a> {
    /// Tool id.
    pub tool: &'a str,
    /// Its arguments (an `http.*` call's `url` is checked against the
    /// profile's `http_hosts`).
    pub arguments: Option<&'a serde_json::Value>,
    /// Estimated cost of the call (for cost-triggered policies).
    pub estimated_cost_micros: u64,
    /// Now, unix ms.
    pub now_ms: i64,
}

/// The host of an `http://` or `https://` URL, lower-cased, without
/// credentials or port; `None` for anything else.
pub fn url_host(url: &str) -> Option<String> {
    let lower = url.trim().to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))?;
    // `\` ends the authority too: URL parsers (WHATWG, reqwest's) read it
    // as `/` in http(s) URLs, so `http://evil\@good/` goes to `evil`.
    let authority = rest.split(['/', '\\', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Whether `host` is on the list: an exact name, or `*.example.com` for
/// its subdomains (not the name itself).
pub fn host_allowed(list: &[String], host: &str) -> bool {
    list.iter().any(|h| {
        let h = h.to_ascii_lowercase();
        match h.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => h == host,
        }
    })
}

fn deny(reason: DenyReason, message: String) -> Verdict {
    Verdict::Deny { reason, message }
}

/// Judges `call` for an agent with `profile` in `gov`. `halted` names the
/// kill switch that covers the agent, if any; `grant` is asked for a
/// standing grant only when the call would otherwise need approval.
pub fn check(
    gov: &OrgGov,
    profile: Option<&Profile>,
    halted: Option<&str>,
    call: &ToolCall<'_>,
    rates: &mut RateState,
    grant: impl FnOnce() -> Option<String>,
) -> Verdict {
    if let Some(scope) = halted {
        return deny(
            DenyReason::Halted,
            format!("the {scope} kill switch is on: no tool calls"),
        );
    }
    let Some(profile) = profile else {
        return deny(
            DenyReason::UnknownProfile,
            "the agent's permission profile does not exist".into(),
        );
    };
    let Some(&i) = gov.index.get(call.tool) else {
        return deny(
            DenyReason::UnknownTool,
            format!("`{}` is not in the tool catalog", call.tool),
        );
    };
    let tool = &gov.tools[i as usize];
    let (risky, approval_effects, acting) = match profile.verdicts.get(i as usize) {
        Some(Static::Go {
            risky,
            approval_effects,
            acting,
        }) => (*risky, *approval_effects, *acting),
        Some(Static::Deny(reason)) => {
            let message = match reason {
                DenyReason::ToolBlocked => format!("profile {} blocks {}", profile.name, tool.id),
                DenyReason::SkillBlocked => {
                    format!("profile {} blocks skill {}", profile.name, tool.skill)
                }
                DenyReason::SideEffectBlocked => format!(
                    "profile {} blocks a side effect of {} ({})",
                    profile.name,
                    tool.id,
                    tool.side_effects
                        .iter()
                        .filter(|e| profile.def.blocked_side_effects.contains(e))
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                _ => format!(
                    "profile {} allows neither {} nor skill {}",
                    profile.name, tool.id, tool.skill
                ),
            };
            return deny(*reason, message);
        }
        // Compiled against another catalog generation: judge as unknown.
        None => {
            return deny(
                DenyReason::UnknownTool,
                format!("`{}` is not in the tool catalog", call.tool),
            );
        }
    };
    if tool.id.starts_with("http.") {
        let url = call
            .arguments
            .and_then(|a| a.get("url"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        match url_host(url) {
            Some(host) if host_allowed(&profile.def.http_hosts, &host) => {}
            Some(host) => {
                return deny(
                    DenyReason::HostNotAllowed,
                    format!(
                        "profile {} does not allow HTTP requests to {host} (http_hosts)",
                        profile.name
                    ),
                );
            }
            None => {
                return deny(
                    DenyReason::HostNotAllowed,
                    format!("{} needs an http:// or https:// url", tool.id),
                );
            }
        }
    }
    if let Some(h) = &profile.hours
        && !h.contains(call.now_ms)
    {
        return deny(
            DenyReason::OutsideWorkingHours,
            format!(
                "profile {} allows tools only in its working hours",
                profile.name
            ),
        );
    }
    if let Some(limit) = profile.rates.get(&i)
        && let Err(retry) = rates.take(gov.generation, i, *limit, call.now_ms)
    {
        return deny(
            DenyReason::RateLimited,
            format!(
                "{} allows {} calls per {} s; retry in {retry} ms",
                tool.id, limit.calls, limit.per_seconds
            ),
        );
    }
    if profile.def.sandbox && acting {
        return Verdict::Allow {
            simulate: true,
            grant: None,
        };
    }
    let effects = SideEffect::mask(&tool.side_effects);
    let matching = gov.policies.iter().find_map(|p| {
        p.matches(tool, effects, call.estimated_cost_micros)
            .map(|why| (p, why))
    });
    let trigger = if risky {
        Some(format!(
            "risk {} above the profile's {}",
            tool.risk.as_str(),
            profile.def.max_risk.as_str()
        ))
    } else if approval_effects != 0 {
        let e: Vec<_> = SideEffect::of_mask(approval_effects)
            .map(SideEffect::as_str)
            .collect();
        Some(format!("side effect {} needs approval", e.join(",")))
    } else {
        None
    };
    let needs = match (trigger, matching) {
        (None, None) => None,
        (Some(t), Some((p, _))) => Some((p.clone(), t)),
        (Some(t), None) => Some((gov.default_policy.clone(), t)),
        (None, Some((p, why))) => Some((p.clone(), why)),
    };
    match needs {
        None => Verdict::Allow {
            simulate: false,
            grant: None,
        },
        Some((policy, trigger)) => match grant() {
            Some(g) => Verdict::Allow {
                simulate: false,
                grant: Some(g),
            },
            None => Verdict::NeedsApproval { policy, trigger },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::policy::{Approvers, Level, OnTimeout, PolicyDef};
    use crate::governance::{CatalogFile, OrgDocs, RateLimit, Risk, SkillDef, compile};

    fn tool(id: &str, skill: &str, risk: Risk, effects: &[SideEffect]) -> ToolDef {
        ToolDef {
            id: id.into(),
            skill: skill.into(),
            description: String::new(),
            risk,
            side_effects: effects.to_vec(),
        }
    }

    fn policy(tools: &[&str]) -> PolicyDef {
        PolicyDef {
            description: String::new(),
            tools: tools.iter().map(|t| t.to_string()).collect(),
            skills: vec![],
            min_risk: None,
            side_effects: vec![],
            min_cost_usd: None,
            levels: vec![Level {
                approvers: Approvers {
                    roles: vec!["admin".into()],
                    users: vec![],
                    manager: None,
                },
                required: 1,
                timeout_seconds: 60,
                on_timeout: OnTimeout::Deny,
            }],
        }
    }

    fn base() -> CatalogFile {
        use SideEffect::*;
        CatalogFile {
            skills: ["core", "files", "web", "pay"]
                .iter()
                .map(|s| SkillDef {
                    id: s.to_string(),
                    description: String::new(),
                })
                .collect(),
            tools: vec![
                tool("echo", "core", Risk::Low, &[]),
                tool("files.read", "files", Risk::Low, &[ReadsData]),
                tool("files.write", "files", Risk::Medium, &[WritesData]),
                tool("files.delete", "files", Risk::High, &[DeletesData]),
                tool("http.post", "web", Risk::High, &[SendsExternal]),
                tool("refund", "pay", Risk::Critical, &[SpendsMoney]),
            ],
            profiles: Default::default(),
        }
    }

    fn gov(profile: ProfileDef, policies: &[(&str, PolicyDef)]) -> OrgGov {
        let docs = OrgDocs {
            profiles: [("p".to_string(), profile)].into(),
            policies: policies
                .iter()
                .map(|(n, p)| (n.to_string(), p.clone()))
                .collect(),
            ..Default::default()
        };
        compile(&base(), docs, &policy(&[]))
    }

    fn run(
        g: &OrgGov,
        tool: &str,
        halted: Option<&str>,
        rates: &mut RateState,
        now: i64,
    ) -> Verdict {
        check(
            g,
            g.profiles.get("p").map(|p| &**p),
            halted,
            &ToolCall {
                tool,
                arguments: None,
                estimated_cost_micros: 0,
                now_ms: now,
            },
            rates,
            || None,
        )
    }

    fn reason(v: &Verdict) -> &'static str {
        match v {
            Verdict::Allow { simulate: true, .. } => "simulate",
            Verdict::Allow { .. } => "allow",
            Verdict::Deny { reason, .. } => reason.as_str(),
            Verdict::NeedsApproval { .. } => "needs_approval",
        }
    }

    fn judge(profile: ProfileDef, tool: &str) -> &'static str {
        let g = gov(profile, &[]);
        reason(&run(&g, tool, None, &mut RateState::default(), 0))
    }

    fn open() -> ProfileDef {
        ProfileDef {
            allow_skills: vec!["*".into()],
            max_risk: Risk::Critical,
            ..Default::default()
        }
    }

    #[test]
    fn every_deny_reason() {
        let g = gov(open(), &[]);
        let mut r = RateState::default();
        assert_eq!(reason(&run(&g, "echo", Some("org"), &mut r, 0)), "halted");
        assert_eq!(
            reason(&check(
                &g,
                None,
                None,
                &ToolCall {
                    tool: "echo",
                    arguments: None,
                    estimated_cost_micros: 0,
                    now_ms: 0
                },
                &mut r,
                || None
            )),
            "unknown_profile"
        );
        assert_eq!(reason(&run(&g, "nope", None, &mut r, 0)), "unknown_tool");
        let blocked = ProfileDef {
            block_tools: vec!["files.write".into()],
            ..open()
        };
        assert_eq!(judge(blocked, "files.write"), "tool_blocked");
        let no_files = ProfileDef {
            block_skills: vec!["files".into()],
            ..open()
        };
        assert_eq!(judge(no_files, "files.read"), "skill_blocked");
        let core_only = ProfileDef {
            allow_skills: vec!["core".into()],
            allow_tools: vec!["files.read".into()],
            max_risk: Risk::Critical,
            ..Default::default()
        };
        assert_eq!(judge(core_only.clone(), "files.write"), "not_allowed");
        assert_eq!(judge(core_only, "files.read"), "allow");
        let no_money = ProfileDef {
            blocked_side_effects: vec![SideEffect::SpendsMoney],
            ..open()
        };
        assert_eq!(judge(no_money, "refund"), "side_effect_blocked");
        let hours = ProfileDef {
            working_hours: Some(WorkingHours {
                timezone: "Europe/Berlin".into(),
                days: vec![
                    "mon".into(),
                    "tue".into(),
                    "wed".into(),
                    "thu".into(),
                    "fri".into(),
                ],
                start: "09:00".into(),
                end: "17:00".into(),
            }),
            ..open()
        };
        let g = gov(hours, &[]);
        // Saturday 2026-11-21 12:00 UTC; Monday 2026-11-23 08:30 UTC = 09:30 Berlin.
        assert_eq!(
            reason(&run(&g, "echo", None, &mut r, 1_795_262_400_000)),
            "outside_working_hours"
        );
        assert_eq!(
            reason(&run(&g, "echo", None, &mut r, 1_795_422_600_000)),
            "allow"
        );
        // 07:30 UTC Monday is 08:30 in Berlin: before the start.
        assert_eq!(
            reason(&run(&g, "echo", None, &mut r, 1_795_419_000_000)),
            "outside_working_hours"
        );
        let limited = ProfileDef {
            rate_limits: [(
                "echo".to_string(),
                RateLimit {
                    calls: 2,
                    per_seconds: 10,
                },
            )]
            .into(),
            ..open()
        };
        let g = gov(limited, &[]);
        let mut r = RateState::default();
        assert_eq!(reason(&run(&g, "echo", None, &mut r, 1000)), "allow");
        assert_eq!(reason(&run(&g, "echo", None, &mut r, 1000)), "allow");
        assert_eq!(reason(&run(&g, "echo", None, &mut r, 1000)), "rate_limited");
        // One call's worth comes back after per_seconds / calls.
        assert_eq!(reason(&run(&g, "echo", None, &mut r, 6000)), "allow");
        assert_eq!(reason(&run(&g, "echo", None, &mut r, 6000)), "rate_limited");
        // Other tools are not limited.
        assert_eq!(reason(&run(&g, "files.read", None, &mut r, 6000)), "allow");
    }

    #[test]
    fn deny_wins_over_everything_in_a_fixed_order() {
        // Everything at once: halted first.
        let all = ProfileDef {
            allow_skills: vec![],
            block_tools: vec!["refund".into()],
            block_skills: vec!["pay".into()],
            blocked_side_effects: vec![SideEffect::SpendsMoney],
            sandbox: true,
            ..Default::default()
        };
        let g = gov(all.clone(), &[("p1", policy(&["refund"]))]);
        let mut r = RateState::default();
        assert_eq!(
            reason(&run(&g, "refund", Some("instance"), &mut r, 0)),
            "halted"
        );
        assert_eq!(reason(&run(&g, "refund", None, &mut r, 0)), "tool_blocked");
        let g = gov(
            ProfileDef {
                block_tools: vec![],
                ..all.clone()
            },
            &[],
        );
        assert_eq!(reason(&run(&g, "refund", None, &mut r, 0)), "skill_blocked");
        let g = gov(
            ProfileDef {
                block_tools: vec![],
                block_skills: vec![],
                ..all.clone()
            },
            &[],
        );
        assert_eq!(reason(&run(&g, "refund", None, &mut r, 0)), "not_allowed");
        let g = gov(
            ProfileDef {
                block_tools: vec![],
                block_skills: vec![],
                allow_skills: vec!["*".into()],
                ..all
            },
            &[],
        );
        // A blocked side effect is denied even in a sandbox.
        assert_eq!(
            reason(&run(&g, "refund", None, &mut r, 0)),
            "side_effect_blocked"
        );
        // A deny is never turned into an allow by a grant.
        let blocked = gov(
            ProfileDef {
                block_tools: vec!["echo".into()],
                ..open()
            },
            &[],
        );
        let v = check(
            &blocked,
            blocked.profiles.get("p").map(|p| &**p),
            None,
            &ToolCall {
                tool: "echo",
                arguments: None,
                estimated_cost_micros: 0,
                now_ms: 0,
            },
            &mut r,
            || Some("grant".into()),
        );
        assert_eq!(reason(&v), "tool_blocked");
    }

    #[test]
    fn approval_triggers_and_their_policy() {
        let risky = ProfileDef {
            allow_skills: vec!["*".into()],
            max_risk: Risk::Medium,
            approval_side_effects: vec![SideEffect::WritesData],
            ..Default::default()
        };
        let g = gov(risky.clone(), &[]);
        let mut r = RateState::default();
        assert_eq!(reason(&run(&g, "echo", None, &mut r, 0)), "allow");
        // Risk above the maximum → the default policy.
        match run(&g, "files.delete", None, &mut r, 0) {
            Verdict::NeedsApproval { policy, trigger } => {
                assert_eq!(policy.name, "default");
                assert!(trigger.contains("risk high"), "{trigger}");
            }
            v => panic!("{v:?}"),
        }
        match run(&g, "files.write", None, &mut r, 0) {
            Verdict::NeedsApproval { trigger, .. } => assert!(trigger.contains("writes_data")),
            v => panic!("{v:?}"),
        }
        // An organization policy matching the call decides who approves.
        let g = gov(risky, &[("writes", policy(&["files.write"]))]);
        match run(&g, "files.write", None, &mut r, 0) {
            Verdict::NeedsApproval { policy, .. } => assert_eq!(policy.name, "writes"),
            v => panic!("{v:?}"),
        }
        // A policy alone (the profile would allow) also parks the call.
        let g = gov(open(), &[("echo", policy(&["echo"]))]);
        assert_eq!(reason(&run(&g, "echo", None, &mut r, 0)), "needs_approval");
        // A grant allows what would need approval.
        let v = check(
            &g,
            g.profiles.get("p").map(|p| &**p),
            None,
            &ToolCall {
                tool: "echo",
                arguments: None,
                estimated_cost_micros: 0,
                now_ms: 0,
            },
            &mut r,
            || Some("g1".into()),
        );
        assert!(matches!(v, Verdict::Allow { grant: Some(ref g), simulate: false } if g == "g1"));
        // Cost-triggered policies.
        let mut costly = policy(&[]);
        costly.min_cost_usd = Some(1.5);
        let g = gov(open(), &[("costly", costly)]);
        let call = |cost| {
            reason(&check(
                &g,
                g.profiles.get("p").map(|p| &**p),
                None,
                &ToolCall {
                    tool: "echo",
                    arguments: None,
                    estimated_cost_micros: cost,
                    now_ms: 0,
                },
                &mut RateState::default(),
                || None,
            ))
        };
        assert_eq!(call(1_499_999), "allow");
        assert_eq!(call(1_500_000), "needs_approval");
    }

    #[test]
    fn sandbox_simulates_acting_tools_only() {
        let g = gov(
            ProfileDef {
                sandbox: true,
                ..open()
            },
            &[("all", policy(&["files.write"]))],
        );
        let mut r = RateState::default();
        assert_eq!(reason(&run(&g, "files.write", None, &mut r, 0)), "simulate");
        assert_eq!(reason(&run(&g, "refund", None, &mut r, 0)), "simulate");
        assert_eq!(reason(&run(&g, "files.read", None, &mut r, 0)), "allow");
        assert_eq!(reason(&run(&g, "echo", None, &mut r, 0)), "allow");
    }

    #[test]
    fn overnight_hours_wrap_past_midnight() {
        let h = Hours::compile(&WorkingHours {
            timezone: "UTC".into(),
            days: vec!["fri".into()],
            start: "22:00".into(),
            end: "06:00".into(),
        })
        .expect("hours");
        // Friday 2026-11-20 23:00 UTC: in; Saturday 05:00: still Friday's night; Saturday 23:00: out.
        assert!(h.contains(1_795_215_600_000));
        assert!(h.contains(1_795_237_200_000));
        assert!(!h.contains(1_795_302_000_000));
        assert!(
            Hours::compile(&WorkingHours {
                timezone: "UTC".into(),
                days: vec!["someday".into()],
                start: "09:00".into(),
                end: "10:00".into()
            })
            .is_err()
        );
        assert!(
            Hours::compile(&WorkingHours {
                timezone: "UTC".into(),
                days: vec![],
                start: "9:00".into(),
                end: "10:00".into()
            })
            .is_err()
        );
    }

    #[test]
    fn http_hosts_match_exact_names_and_subdomain_wildcards() {
        assert_eq!(
            url_host("https://API.example.com:8443/v1?q#f").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(
            url_host("http://user:pw@10.0.0.1/x").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(url_host("http://[::1]:80/").as_deref(), Some("::1"));
        assert_eq!(url_host("ftp://example.com"), None);
        assert_eq!(url_host("https://"), None);
        // The userinfo trick: the host is what follows the last `@`.
        assert_eq!(
            url_host("https://allowed.com@evil.com/").as_deref(),
            Some("evil.com")
        );
        assert_eq!(
            url_host("https://evil.com\\@allowed.com/").as_deref(),
            Some("evil.com")
        );
        let list = vec!["api.example.com".to_string(), "*.corp.test".to_string()];
        assert!(host_allowed(&list, "api.example.com"));
        assert!(!host_allowed(&list, "example.com"));
        assert!(!host_allowed(&list, "evilapi.example.com"));
        assert!(host_allowed(&list, "a.corp.test"));
        assert!(host_allowed(&list, "b.a.corp.test"));
        assert!(!host_allowed(&list, "corp.test"));
        assert!(!host_allowed(&list, "evilcorp.test"));
        assert!(!host_allowed(&[], "api.example.com"));
    }
}
