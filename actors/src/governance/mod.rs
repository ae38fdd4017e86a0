//! Governance: the tool and skill catalog, permission profiles, approval
//! policies and the permission engine that judges every tool call.
//!
//! The catalog ships as data (`config/governance.toml`); each organization
//! can add or override tools and add profiles and approval policies. The
//! documents are owned by the organization's [`ApprovalActor`]
//! (`crate::approval`), which persists every change and then publishes the
//! compiled result here ([`Governance::publish`]). Agent actors read the
//! compiled form without a message round trip: the engine is a pure
//! function over it ([`engine::check`]).

pub mod engine;
pub mod policy;

use crate::domain::{AgentId, OrgId};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub use engine::{DenyReason, ToolCall, Verdict};
pub use policy::{Approvers, Level, OnTimeout, PolicyDef};

/// How dangerous a tool is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Harmless.
    #[default]
    Low,
    /// Changes something the agent owns.
    Medium,
    /// Changes something outside the agent, or is hard to undo.
    High,
    /// Irreversible, external, or costs money.
    Critical,
}

impl Risk {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
            Risk::Critical => "critical",
        }
    }
}

/// What a tool does beyond computing an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SideEffect {
    /// Reads data.
    ReadsData,
    /// Creates or changes data.
    WritesData,
    /// Sends something outside the organization.
    SendsExternal,
    /// Spends or moves money.
    SpendsMoney,
    /// Deletes data.
    DeletesData,
    /// Runs code.
    RunsCode,
}

impl SideEffect {
    /// Every side effect.
    pub const ALL: [SideEffect; 6] = [
        SideEffect::ReadsData,
        SideEffect::WritesData,
        SideEffect::SendsExternal,
        SideEffect::SpendsMoney,
        SideEffect::DeletesData,
        SideEffect::RunsCode,
    ];

    /// Its bit in a mask.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SideEffect::ReadsData => "reads_data",
            SideEffect::WritesData => "writes_data",
            SideEffect::SendsExternal => "sends_external",
            SideEffect::SpendsMoney => "spends_money",
            SideEffect::DeletesData => "deletes_data",
            SideEffect::RunsCode => "runs_code",
        }
    }

    /// A mask of `effects`.
    pub fn mask(effects: &[SideEffect]) -> u8 {
        effects.iter().fold(0, |m, e| m | e.bit())
    }

    /// The side effects in `mask`, in declaration order.
    pub fn of_mask(mask: u8) -> impl Iterator<Item = SideEffect> {
        SideEffect::ALL
            .into_iter()
            .filter(move |e| mask & e.bit() != 0)
    }
}

/// Side effects that make a tool "act" rather than "look": in sandbox mode
/// these are simulated.
pub const ACTING: u8 = !(1 << (SideEffect::ReadsData as u8));

/// One tool of the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDef {
    /// Stable id (`files.write`, `mcp.<server>.<tool>`).
    pub id: String,
    /// The skill it belongs to.
    pub skill: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// How dangerous it is.
    pub risk: Risk,
    /// What it does beyond answering.
    #[serde(default)]
    pub side_effects: Vec<SideEffect>,
}

/// One skill of the catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkillDef {
    /// Stable id.
    pub id: String,
    /// What it covers.
    #[serde(default)]
    pub description: String,
}

/// `calls` per `per_seconds`, bursts up to `calls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Calls allowed per window (≥ 1).
    pub calls: u32,
    /// The window in seconds (≥ 1).
    pub per_seconds: u32,
}

/// When an agent may use tools at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkingHours {
    /// IANA time zone (`Europe/Berlin`).
    pub timezone: String,
    /// Days (`mon` … `sun`); empty means every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// Start, `HH:MM` (inclusive).
    pub start: String,
    /// End, `HH:MM` (exclusive); before `start` means overnight.
    pub end: String,
}

/// A permission profile (a preset or an organization's own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProfileDef {
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Skills whose tools are allowed (`*` = all).
    #[serde(default)]
    pub allow_skills: Vec<String>,
    /// Further tools allowed individually.
    #[serde(default)]
    pub allow_tools: Vec<String>,
    /// Skills whose tools are denied (wins over any allow).
    #[serde(default)]
    pub block_skills: Vec<String>,
    /// Tools denied (wins over any allow).
    #[serde(default)]
    pub block_tools: Vec<String>,
    /// Highest risk allowed without approval.
    #[serde(default)]
    pub max_risk: Risk,
    /// Side effects that always need approval.
    #[serde(default)]
    pub approval_side_effects: Vec<SideEffect>,
    /// Side effects that are always denied.
    #[serde(default)]
    pub blocked_side_effects: Vec<SideEffect>,
    /// Per-tool rate limits.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RateLimit>,
    /// When tools may be used (absent: always).
    #[serde(default)]
    pub working_hours: Option<WorkingHours>,
    /// Simulate (record, never execute) tools with side effects.
    #[serde(default)]
    pub sandbox: bool,
    /// Hosts `http.*` tools may reach: exact names or `*.example.com`
    /// (empty: none).
    #[serde(default)]
    pub http_hosts: Vec<String>,
}

/// The shipped catalog file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// Skills.
    pub skills: Vec<SkillDef>,
    /// Tools.
    pub tools: Vec<ToolDef>,
    /// Presets by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileDef>,
}

/// An organization's own additions, as persisted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OrgDocs {
    /// Tools added or overridden.
    pub tools: BTreeMap<String, ToolDef>,
    /// Own profiles.
    pub profiles: BTreeMap<String, ProfileDef>,
    /// Approval policies.
    pub policies: BTreeMap<String, PolicyDef>,
    /// Secrets, sealed (only a deployer can open them).
    pub secrets: BTreeMap<String, SecretDoc>,
}

/// An organization's secret as kept: its sealed value (never the plain one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretDoc {
    /// The value, sealed for the organization.
    pub sealed: String,
    /// When it was set (unix ms).
    pub updated_at: i64,
}

/// Checks an identifier: 1–100 of `a-z 0-9 _ . -`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

impl CatalogFile {
    /// Checks ids, skill references and profiles.
    pub fn validate(&self) -> Result<(), String> {
        let file = self;
        let mut skills = std::collections::HashSet::new();
        for s in &file.skills {
            if !valid_id(&s.id) || !skills.insert(s.id.as_str()) {
                return Err(format!("skill `{}`: invalid or duplicate id", s.id));
            }
        }
        let mut tools = std::collections::HashSet::new();
        for t in &file.tools {
            if !valid_id(&t.id) || !tools.insert(t.id.as_str()) {
                return Err(format!("tool `{}`: invalid or duplicate id", t.id));
            }
            if !skills.contains(t.skill.as_str()) {
                return Err(format!("tool `{}`: unknown skill `{}`", t.id, t.skill));
            }
        }
        for (name, p) in &file.profiles {
            if !valid_id(name) {
                return Err(format!("profile `{name}`: invalid name"));
            }
            validate_profile(p).map_err(|e| format!("profile `{name}`: {e}"))?;
        }
        Ok(())
    }
}

/// Checks a profile's values (not the names it mentions: a profile may name
/// a tool that an organization adds later).
pub fn validate_profile(p: &ProfileDef) -> Result<(), String> {
    for (tool, r) in &p.rate_limits {
        if r.calls == 0 || r.per_seconds == 0 {
            return Err(format!(
                "rate_limits.{tool}: calls and per_seconds must be at least 1"
            ));
        }
    }
    if let Some(h) = &p.working_hours {
        engine::Hours::compile(h).map_err(|e| format!("working_hours: {e}"))?;
    }
    if p.description.len() > 1000 {
        return Err("description: at most 1000 characters".into());
    }
    if p.http_hosts.len() > 200 {
        return Err("http_hosts: at most 200 hosts".into());
    }
    for h in &p.http_hosts {
        let name = h.strip_prefix("*.").unwrap_or(h);
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:_".contains(&b));
        if !ok {
            return Err(format!(
                "http_hosts: {h:?} is not a host name (`api.example.com` or `*.example.com`, no scheme or path)"
            ));
        }
    }
    Ok(())
}

/// A profile compiled against one organization's catalog.
#[derive(Debug)]
pub struct Profile {
    /// Its name.
    pub name: String,
    /// The definition.
    pub def: ProfileDef,
    /// The static verdict for each tool of the catalog (by index).
    pub(crate) verdicts: Vec<engine::Static>,
    /// Rate limits by tool index.
    pub(crate) rates: HashMap<u32, RateLimit>,
    /// Working hours.
    pub(crate) hours: Option<engine::Hours>,
}

/// One organization's compiled governance: catalog (shipped + own),
/// profiles (presets + own) and approval policies.
#[derive(Debug)]
pub struct OrgGov {
    /// Tools by index.
    pub tools: Vec<ToolDef>,
    /// Tool id → index.
    pub index: HashMap<String, u32>,
    /// Skills.
    pub skills: Vec<SkillDef>,
    /// Profiles by name.
    pub profiles: HashMap<String, Arc<Profile>>,
    /// Approval policies, in name order (the first that matches is used).
    pub policies: Vec<Arc<policy::Policy>>,
    /// The policy used when a profile demands approval and no policy matches.
    pub default_policy: Arc<policy::Policy>,
    /// The organization's documents this was compiled from.
    pub docs: OrgDocs,
    /// Changes whenever the catalog changes (rate-limit state keys on it).
    pub generation: u64,
}

impl OrgGov {
    /// The tool, by id.
    pub fn tool(&self, id: &str) -> Option<&ToolDef> {
        self.index.get(id).map(|&i| &self.tools[i as usize])
    }

    /// The tools `profile` can allow (now or after an approval), in catalog
    /// order: what a model working under it is offered. A tool the profile
    /// denies outright is left out, and so are the `http.*` tools when the
    /// profile names no host they may reach. Every call is still judged.
    pub fn offered<'a>(&'a self, profile: &'a Profile) -> impl Iterator<Item = &'a ToolDef> + 'a {
        self.tools.iter().enumerate().filter_map(move |(i, t)| {
            let go = matches!(profile.verdicts.get(i), Some(engine::Static::Go { .. }));
            let reachable = !t.id.starts_with("http.") || !profile.def.http_hosts.is_empty();
            (go && reachable).then_some(t)
        })
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

/// Compiles the shipped catalog with an organization's documents.
pub fn compile(base: &CatalogFile, docs: OrgDocs, default_policy: &PolicyDef) -> OrgGov {
    let mut tools: Vec<ToolDef> = Vec::with_capacity(base.tools.len() + docs.tools.len());
    let mut index = HashMap::new();
    for t in base.tools.iter().chain(docs.tools.values()) {
        match index.get(&t.id) {
            Some(&i) => tools[i as usize] = t.clone(),
            None => {
                index.insert(t.id.clone(), tools.len() as u32);
                tools.push(t.clone());
            }
        }
    }
    let mut skills = base.skills.clone();
    for t in &tools {
        if !skills.iter().any(|s| s.id == t.skill) {
            skills.push(SkillDef {
                id: t.skill.clone(),
                description: String::new(),
            });
        }
    }
    let mut profiles = HashMap::new();
    for (name, def) in base.profiles.iter().chain(docs.profiles.iter()) {
        profiles.insert(
            name.clone(),
            Arc::new(engine::compile_profile(name, def, &tools, &index)),
        );
    }
    let policies = docs
        .policies
        .iter()
        .map(|(name, def)| Arc::new(policy::Policy::compile(name, def)))
        .collect();
    OrgGov {
        tools,
        index,
        skills,
        profiles,
        policies,
        default_policy: Arc::new(policy::Policy::compile("default", default_policy)),
        docs,
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
    }
}

/// A standing grant: calls of `tool` with arguments hashing to `args_hash`
/// by `agent` are approved until `expires_at` (unix ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// Id.
    pub id: String,
    /// Organization.
    pub org_id: OrgId,
    /// Agent.
    pub agent_id: AgentId,
    /// Tool.
    pub tool: String,
    /// SHA-256 of the canonical arguments (hex).
    pub args_hash: String,
    /// The approval that created it.
    pub approval_id: String,
    /// Who granted it (`user:<id>`).
    pub granted_by: String,
    /// Creation, unix ms.
    pub created_at: i64,
    /// Expiry, unix ms.
    pub expires_at: i64,
}

type GrantKey = (OrgId, AgentId, String, String);

/// Everything the engine needs, shared by the whole tree: the shipped
/// catalog, each organization's compiled governance, standing grants and
/// the kill switches. Written only by the actors that persisted the change.
#[derive(Debug)]
pub struct Governance {
    base: CatalogFile,
    default_policy: PolicyDef,
    default_profile: String,
    orgs: DashMap<OrgId, Arc<OrgGov>>,
    grants: DashMap<GrantKey, Grant>,
    halted_instance: AtomicBool,
    halted_orgs: DashMap<OrgId, ()>,
    halted_agents: DashMap<AgentId, ()>,
}

/// Which switch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HaltScope {
    /// Every agent on the instance.
    Instance,
    /// Every agent of an organization.
    Org(OrgId),
    /// One agent.
    Agent(OrgId, AgentId),
}

impl HaltScope {
    /// `instance`, `org` or `agent`.
    pub fn kind(&self) -> &'static str {
        match self {
            HaltScope::Instance => "instance",
            HaltScope::Org(_) => "org",
            HaltScope::Agent(..) => "agent",
        }
    }

    /// The target id (`*` for the instance).
    pub fn target(&self) -> String {
        match self {
            HaltScope::Instance => "*".into(),
            HaltScope::Org(o) => o.0.clone(),
            HaltScope::Agent(_, a) => a.0.clone(),
        }
    }
}

impl Governance {
    /// A registry over the shipped catalog.
    pub fn new(
        base: CatalogFile,
        default_policy: PolicyDef,
        default_profile: String,
    ) -> Governance {
        Governance {
            base,
            default_policy,
            default_profile,
            orgs: DashMap::new(),
            grants: DashMap::new(),
            halted_instance: AtomicBool::new(false),
            halted_orgs: DashMap::new(),
            halted_agents: DashMap::new(),
        }
    }

    /// The shipped catalog.
    pub fn base(&self) -> &CatalogFile {
        &self.base
    }

    /// The profile agents get when they name none.
    pub fn default_profile(&self) -> &str {
        &self.default_profile
    }

    /// The policy used when a profile demands approval and none matches.
    pub fn default_policy(&self) -> &PolicyDef {
        &self.default_policy
    }

    /// Compiles and publishes an organization's documents.
    pub fn publish(&self, org: &OrgId, docs: OrgDocs) -> Arc<OrgGov> {
        let gov = Arc::new(compile(&self.base, docs, &self.default_policy));
        self.orgs.insert(org.clone(), gov.clone());
        gov
    }

    /// An organization's compiled governance (the shipped catalog alone
    /// until its approval actor published).
    pub fn org(&self, org: &OrgId) -> Arc<OrgGov> {
        if let Some(g) = self.orgs.get(org) {
            return g.clone();
        }
        self.publish(org, OrgDocs::default())
    }

    /// Adds a grant (after it was persisted).
    pub fn add_grant(&self, grant: Grant) {
        let key = (
            grant.org_id.clone(),
            grant.agent_id.clone(),
            grant.tool.clone(),
            grant.args_hash.clone(),
        );
        self.grants.insert(key, grant);
    }

    /// Removes a grant (after its revocation was persisted).
    pub fn remove_grant(&self, grant: &Grant) {
        let key = (
            grant.org_id.clone(),
            grant.agent_id.clone(),
            grant.tool.clone(),
            grant.args_hash.clone(),
        );
        self.grants.remove_if(&key, |_, g| g.id == grant.id);
    }

    /// The live grant for a call, if any.
    pub fn grant_for(
        &self,
        org: &OrgId,
        agent: &AgentId,
        tool: &str,
        args_hash: &str,
        now_ms: i64,
    ) -> Option<String> {
        let key = (
            org.clone(),
            agent.clone(),
            tool.to_string(),
            args_hash.to_string(),
        );
        self.grants
            .get(&key)
            .filter(|g| g.expires_at > now_ms)
            .map(|g| g.id.clone())
    }

    /// Sets a switch (after it was persisted).
    pub fn set_halt(&self, scope: &HaltScope, on: bool) {
        match scope {
            HaltScope::Instance => self.halted_instance.store(on, Ordering::SeqCst),
            HaltScope::Org(o) => {
                if on {
                    self.halted_orgs.insert(o.clone(), ());
                } else {
                    self.halted_orgs.remove(o);
                }
            }
            HaltScope::Agent(_, a) => {
                if on {
                    self.halted_agents.insert(a.clone(), ());
                } else {
                    self.halted_agents.remove(a);
                }
            }
        }
    }

    /// Which switch, if any, halts `agent` of `org` (the widest first).
    pub fn halted(&self, org: &OrgId, agent: &AgentId) -> Option<&'static str> {
        if self.halted_instance.load(Ordering::SeqCst) {
            Some("instance")
        } else if self.halted_orgs.contains_key(org) {
            Some("org")
        } else if self.halted_agents.contains_key(agent) {
            Some("agent")
        } else {
            None
        }
    }

    /// Whether a switch is on.
    pub fn is_halted(&self, scope: &HaltScope) -> bool {
        match scope {
            HaltScope::Instance => self.halted_instance.load(Ordering::SeqCst),
            HaltScope::Org(o) => self.halted_orgs.contains_key(o),
            HaltScope::Agent(_, a) => self.halted_agents.contains_key(a),
        }
    }
}
