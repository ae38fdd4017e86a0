//! The agent's persisted record and the read model the actor publishes.
//!
//! These are owned, validated types: the HTTP layer parses its DTOs into them
//! at the edge, and the store maps them to rows. Nothing here does I/O.

use crate::budget::{BudgetLimits, Usage};
use crate::lifecycle::{Command, State, allowed_commands};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An agent's id (a UUIDv7, so ids sort by creation time).
    AgentId
);
id_type!(
    /// An organization's (tenant's) id.
    OrgId
);

/// The party behind a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Party {
    /// A user, by id.
    User(String),
    /// An API key, by id.
    ApiKey(String),
    /// An agent runtime, by agent id.
    Runtime(String),
    /// Cadre itself (health loop, budget, supervisor).
    System,
}

/// Who caused a change, and from where: what the history and the audit log
/// record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Who {
    /// The party.
    pub party: Party,
    /// The request that carried the change, if any.
    pub request_id: Option<String>,
    /// The client address the request came from, if any.
    pub client: Option<String>,
}

impl Who {
    /// Cadre itself.
    pub fn system() -> Who {
        Who::of(Party::System)
    }

    /// A user, with no request context.
    pub fn user(id: impl Into<String>) -> Who {
        Who::of(Party::User(id.into()))
    }

    /// A party, with no request context.
    pub fn of(party: Party) -> Who {
        Who {
            party,
            request_id: None,
            client: None,
        }
    }

    /// The stored form: `user:<id>`, `key:<id>`, `runtime:<agent>` or `system`.
    pub fn to_text(&self) -> String {
        match &self.party {
            Party::User(id) => format!("user:{id}"),
            Party::ApiKey(id) => format!("key:{id}"),
            Party::Runtime(id) => format!("runtime:{id}"),
            Party::System => "system".to_string(),
        }
    }
}

/// Where an agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeployTarget {
    /// A child process of the control plane (`cadre runtime`).
    #[default]
    Local,
    /// A container on a Docker engine (through its API).
    Docker,
    /// A process on a machine reached over SSH (systemd unit or a plain
    /// background process).
    Ssh,
    /// A Fly.io Machine (Machines API).
    Fly,
    /// A Railway service (public GraphQL API).
    Railway,
}

impl DeployTarget {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeployTarget::Local => "local",
            DeployTarget::Docker => "docker",
            DeployTarget::Ssh => "ssh",
            DeployTarget::Fly => "fly",
            DeployTarget::Railway => "railway",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<DeployTarget> {
        match s {
            "local" => Some(DeployTarget::Local),
            "docker" => Some(DeployTarget::Docker),
            "ssh" => Some(DeployTarget::Ssh),
            "fly" => Some(DeployTarget::Fly),
            "railway" => Some(DeployTarget::Railway),
            _ => None,
        }
    }
}

/// Per-agent health settings; `None` fields take the global default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthOverrides {
    /// Probe interval in milliseconds.
    pub interval_ms: Option<u64>,
    /// Consecutive failed probes before auto-recovery.
    pub failure_threshold: Option<u32>,
}

/// What the operator described: the desired configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentSpec {
    /// Display name, unique within the organization.
    pub name: String,
    /// The agent's job.
    pub role: Option<String>,
    /// The model it uses.
    pub model: Option<String>,
    /// Where it runs.
    pub target: DeployTarget,
    /// Health overrides.
    pub health: HealthOverrides,
    /// Budget per period.
    pub budget: BudgetLimits,
    /// Permission profile (a preset or one of the organization's); `None`
    /// takes the configured default.
    pub profile: Option<String>,
    /// How its runtime works: model provider settings and MCP servers.
    pub runtime: RuntimeSpec,
    /// Its job description, persona and manager.
    pub job: Job,
}

/// Who an agent reports to: another agent of its organization or a person.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Manager {
    /// An agent (its id).
    Agent(String),
    /// A user (their id).
    User(String),
}

/// What makes an agent an employee beyond its tools: the job it is told,
/// how it speaks, and who it reports to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Its job description (free text, part of every system prompt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Tone and language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persona: Option<String>,
    /// Its manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reports_to: Option<Manager>,
}

impl Job {
    /// Whether nothing is set (stored as NULL).
    pub fn is_default(&self) -> bool {
        *self == Job::default()
    }
}

/// The agent's own model provider settings; every field left out takes
/// the server's `[llm]` default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSpec {
    /// `openai` (any chat-completions API) or `anthropic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Base URL of the API (`https://api.openai.com/v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Name of the organization secret holding the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret: Option<String>,
    /// Output tokens per call at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Seconds per model response at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Stream responses (forwarded live as task events).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
}

/// An MCP server the agent's runtime starts (stdio) or calls (HTTP); its
/// tools join the catalog as `mcp.<name>.<tool>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// Short name (`a-z 0-9 _ -`), the middle part of its tool ids.
    pub name: String,
    /// Program to start, speaking MCP over stdin/stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Or: the URL of an MCP server over streamable HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// Where and how big the agent's container is (target `docker`); every
/// field left out takes the server's `[deploy.docker]` default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSpec {
    /// Image to run (must contain `cadre` at `/cadre`: `cadre image build`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// CPU limit in cores (`0.5` is half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
}

impl DockerSpec {
    /// Whether nothing is set.
    pub fn is_default(&self) -> bool {
        *self == DockerSpec::default()
    }
}

/// The machine an agent runs on (target `ssh`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSpec {
    /// Host name or address.
    pub host: String,
    /// Port (22 when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Login user.
    pub user: String,
    /// Name of the organization secret holding the private key (OpenSSH format).
    pub key_secret: String,
    /// The host's public key (`ssh-ed25519 AAAA…`); when left out the key
    /// seen at the first connection is pinned, and a changed key refuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// Directory on the host for binaries and agents (`.cadre` in the
    /// user's home when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// `auto` (systemd when the host runs it and the user is root), `systemd`
    /// or `none` (a background process with a pid file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<String>,
}

/// The Fly.io Machine an agent runs as (target `fly`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlySpec {
    /// The Fly app (created when missing).
    pub app: String,
    /// The Fly organization slug the app is created in (`personal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_slug: Option<String>,
    /// Region (Fly's choice when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Image in a registry Fly can pull (`registry.fly.io/app:tag`).
    pub image: String,
    /// Name of the organization secret holding the Fly API token.
    pub token_secret: String,
    /// Shared CPUs (1 when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Memory in MiB (256 when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
}

/// The Railway service an agent runs as (target `railway`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RailwaySpec {
    /// The Railway project id.
    pub project_id: String,
    /// The environment's name (`production` when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Image in a registry Railway can pull.
    pub image: String,
    /// Name of the organization secret holding the Railway API token.
    pub token_secret: String,
}

/// What an agent may read and how it remembers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeSpec {
    /// Knowledge bases (ids) its `knowledge.search` tool sees; none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bases: Vec<String>,
    /// Memories recalled into each task's context (the most relevant to
    /// its instruction); 0 (the default) recalls none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recall_memories: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl KnowledgeSpec {
    /// Whether nothing is set.
    pub fn is_default(&self) -> bool {
        *self == KnowledgeSpec::default()
    }
}

/// The runtime part of an agent's configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSpec {
    /// Model provider overrides.
    #[serde(default)]
    pub llm: LlmSpec,
    /// MCP servers.
    #[serde(default)]
    pub mcp_servers: Vec<McpServerSpec>,
    /// Container settings (target `docker`).
    #[serde(default, skip_serializing_if = "DockerSpec::is_default")]
    pub docker: DockerSpec,
    /// Machine settings (target `ssh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshSpec>,
    /// Fly.io settings (target `fly`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fly: Option<FlySpec>,
    /// Railway settings (target `railway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub railway: Option<RailwaySpec>,
    /// Knowledge bases it reads and memories it recalls.
    #[serde(default, skip_serializing_if = "KnowledgeSpec::is_default")]
    pub knowledge: KnowledgeSpec,
}

fn is_default_llm(l: &LlmSpec) -> bool {
    *l == LlmSpec::default()
}

impl RuntimeSpec {
    /// Whether nothing is set (stored as NULL).
    pub fn is_default(&self) -> bool {
        *self == RuntimeSpec::default()
    }

    /// The organization secrets these settings name, with the field that
    /// names each (the model key, an SSH key, a cloud token).
    pub fn secret_names(&self) -> Vec<(&'static str, &str)> {
        let mut names = Vec::new();
        if let Some(n) = &self.llm.api_key_secret {
            names.push(("llm.api_key_secret", n.as_str()));
        }
        if let Some(s) = &self.ssh {
            names.push(("deployment.ssh.key_secret", s.key_secret.as_str()));
        }
        if let Some(f) = &self.fly {
            names.push(("deployment.fly.token_secret", f.token_secret.as_str()));
        }
        if let Some(r) = &self.railway {
            names.push(("deployment.railway.token_secret", r.token_secret.as_str()));
        }
        names
    }

    /// The settings `target` needs that are missing, by their API names.
    pub fn missing_for(&self, target: DeployTarget) -> Option<&'static str> {
        match target {
            DeployTarget::Ssh if self.ssh.is_none() => Some("deployment.ssh"),
            DeployTarget::Fly if self.fly.is_none() => Some("deployment.fly"),
            DeployTarget::Railway if self.railway.is_none() => Some("deployment.railway"),
            _ => None,
        }
    }
}

impl AgentSpec {
    /// Fields a deploy needs that are not set yet, by their API names.
    pub fn missing_fields(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.role.as_deref().is_none_or(|r| r.trim().is_empty()) {
            missing.push("role");
        }
        if self.model.as_deref().is_none_or(|m| m.trim().is_empty()) {
            missing.push("model");
        }
        if let Some(m) = self.runtime.missing_for(self.target) {
            missing.push(m);
        }
        missing
    }
}

/// A change to an agent's configuration (PATCH); `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentPatch {
    /// New name.
    pub name: Option<String>,
    /// New role; `Some(None)` clears it.
    pub role: Option<Option<String>>,
    /// New model; `Some(None)` clears it.
    pub model: Option<Option<String>>,
    /// New deployment target.
    pub target: Option<DeployTarget>,
    /// New health overrides (replace the old ones).
    pub health: Option<HealthOverrides>,
    /// New monthly token budget; `Some(None)` removes the limit.
    pub monthly_tokens: Option<Option<u64>>,
    /// New monthly cost budget in micro-dollars; `Some(None)` removes the limit.
    pub monthly_cost_micros: Option<Option<u64>>,
    /// New budget period.
    pub budget_period: Option<crate::budget::PeriodKind>,
    /// New permission profile; `Some(None)` returns to the default.
    pub profile: Option<Option<String>>,
    /// New model provider settings (replace the old ones).
    pub llm: Option<LlmSpec>,
    /// New MCP servers (replace the old ones).
    pub mcp_servers: Option<Vec<McpServerSpec>>,
    /// New container settings (replace the old ones).
    pub docker: Option<DockerSpec>,
    /// New SSH settings (replace the old ones).
    pub ssh: Option<SshSpec>,
    /// New Fly.io settings (replace the old ones).
    pub fly: Option<FlySpec>,
    /// New Railway settings (replace the old ones).
    pub railway: Option<RailwaySpec>,
    /// New knowledge settings (replace the old ones).
    pub knowledge: Option<KnowledgeSpec>,
    /// New instructions; `Some(None)` clears them.
    pub instructions: Option<Option<String>>,
    /// New persona; `Some(None)` clears it.
    pub persona: Option<Option<String>>,
    /// New manager; `Some(None)` removes it.
    pub reports_to: Option<Option<Manager>>,
}

impl AgentPatch {
    /// What the patch changes, for the audit log (field names and new values;
    /// an agent's spec holds no secrets).
    pub fn summary(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if let Some(n) = &self.name {
            m.insert("name".into(), n.as_str().into());
        }
        if let Some(r) = &self.role {
            m.insert(
                "role".into(),
                r.as_deref()
                    .map(|r| r.chars().take(200).collect::<String>())
                    .into(),
            );
        }
        if let Some(mo) = &self.model {
            m.insert("model".into(), mo.clone().into());
        }
        if let Some(t) = self.target {
            m.insert("target".into(), t.as_str().into());
        }
        if let Some(h) = self.health {
            m.insert(
                "health".into(),
                serde_json::json!({ "interval_ms": h.interval_ms, "failure_threshold": h.failure_threshold }),
            );
        }
        if let Some(t) = self.monthly_tokens {
            m.insert("monthly_tokens".into(), t.into());
        }
        if let Some(c) = self.monthly_cost_micros {
            m.insert("monthly_cost_micros".into(), c.into());
        }
        if let Some(p) = self.budget_period {
            m.insert("budget_period".into(), p.as_str().into());
        }
        if let Some(p) = &self.profile {
            m.insert("profile".into(), p.clone().into());
        }
        // Settings name their secrets; values never appear here.
        if let Some(l) = &self.llm {
            m.insert(
                "llm".into(),
                serde_json::to_value(l).unwrap_or(serde_json::Value::Null),
            );
        }
        if let Some(s) = &self.mcp_servers {
            m.insert(
                "mcp_servers".into(),
                serde_json::to_value(s).unwrap_or(serde_json::Value::Null),
            );
        }
        let mut put = |k: &str, v: serde_json::Result<serde_json::Value>| {
            m.insert(k.into(), v.unwrap_or(serde_json::Value::Null));
        };
        if let Some(d) = &self.docker {
            put("docker", serde_json::to_value(d));
        }
        if let Some(d) = &self.ssh {
            put("ssh", serde_json::to_value(d));
        }
        if let Some(d) = &self.fly {
            put("fly", serde_json::to_value(d));
        }
        if let Some(d) = &self.railway {
            put("railway", serde_json::to_value(d));
        }
        if let Some(k) = &self.knowledge {
            put("knowledge", serde_json::to_value(k));
        }
        // Long texts are summarized by their size: the version history
        // keeps them whole.
        let size = |t: &Option<String>| {
            serde_json::json!(
                t.as_ref()
                    .map(|t| format!("{} characters", t.chars().count()))
            )
        };
        if let Some(i) = &self.instructions {
            put("instructions", Ok(size(i)));
        }
        if let Some(p) = &self.persona {
            put("persona", Ok(size(p)));
        }
        if let Some(r) = &self.reports_to {
            put("reports_to", serde_json::to_value(r));
        }
        serde_json::Value::Object(m)
    }

    /// Whether the change must be rolled out to a live deployment.
    pub fn touches_deployment(&self, spec: &AgentSpec) -> bool {
        self.model.as_ref().is_some_and(|m| *m != spec.model)
            || self.target.is_some_and(|t| t != spec.target)
            || self.llm.as_ref().is_some_and(|l| *l != spec.runtime.llm)
            || self
                .mcp_servers
                .as_ref()
                .is_some_and(|m| *m != spec.runtime.mcp_servers)
            || self
                .docker
                .as_ref()
                .is_some_and(|d| *d != spec.runtime.docker)
            || self.ssh.is_some() && self.ssh != spec.runtime.ssh
            || self.fly.is_some() && self.fly != spec.runtime.fly
            || self.railway.is_some() && self.railway != spec.runtime.railway
    }

    /// The spec with this patch applied.
    pub fn apply(&self, spec: &AgentSpec) -> AgentSpec {
        let mut s = spec.clone();
        if let Some(n) = &self.name {
            s.name = n.clone();
        }
        if let Some(r) = &self.role {
            s.role = r.clone();
        }
        if let Some(m) = &self.model {
            s.model = m.clone();
        }
        if let Some(t) = self.target {
            s.target = t;
        }
        if let Some(h) = self.health {
            s.health = h;
        }
        if let Some(t) = self.monthly_tokens {
            s.budget.monthly_tokens = t;
        }
        if let Some(c) = self.monthly_cost_micros {
            s.budget.monthly_cost_micros = c;
        }
        if let Some(p) = self.budget_period {
            s.budget.period = p;
        }
        if let Some(p) = &self.profile {
            s.profile = p.clone();
        }
        if let Some(l) = &self.llm {
            s.runtime.llm = l.clone();
        }
        if let Some(m) = &self.mcp_servers {
            s.runtime.mcp_servers = m.clone();
        }
        if let Some(d) = &self.docker {
            s.runtime.docker = d.clone();
        }
        if self.ssh.is_some() {
            s.runtime.ssh = self.ssh.clone();
        }
        if self.fly.is_some() {
            s.runtime.fly = self.fly.clone();
        }
        if self.railway.is_some() {
            s.runtime.railway = self.railway.clone();
        }
        if let Some(k) = &self.knowledge {
            s.runtime.knowledge = k.clone();
        }
        if let Some(i) = &self.instructions {
            s.job.instructions = i.clone();
        }
        if let Some(p) = &self.persona {
            s.job.persona = p.clone();
        }
        if let Some(r) = &self.reports_to {
            s.job.reports_to = r.clone();
        }
        s
    }
}

/// What defines an agent's behaviour: the fields a version keeps (its
/// name, target, health and manager are not part of it).
pub fn definition(spec: &AgentSpec) -> serde_json::Value {
    serde_json::json!({
        "role": spec.role,
        "instructions": spec.job.instructions,
        "persona": spec.job.persona,
        "model": spec.model,
        "llm": spec.runtime.llm,
        "profile": spec.profile,
        "knowledge": spec.runtime.knowledge,
        "mcp_servers": spec.runtime.mcp_servers,
        "budget": {
            "monthly_tokens": spec.budget.monthly_tokens,
            "monthly_cost_micros": spec.budget.monthly_cost_micros,
            "period": spec.budget.period.as_str(),
        },
    })
}

/// One immutable, numbered version of an agent's definition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentVersion {
    /// The agent.
    pub agent_id: AgentId,
    /// Its organization.
    pub org_id: OrgId,
    /// 1, 2, … in the order they were made.
    pub n: u32,
    /// [`definition`] as it became.
    pub definition: serde_json::Value,
    /// Who made the change (`user:<id>`, `system`, …).
    pub by: String,
    /// When (unix ms).
    pub at: i64,
}

/// The persisted agent: everything needed to rebuild its actor.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRecord {
    /// Id.
    pub id: AgentId,
    /// Owning organization.
    pub org_id: OrgId,
    /// Desired configuration.
    pub spec: AgentSpec,
    /// Lifecycle state.
    pub state: State,
    /// Why it is in that state (e.g. `budget_exceeded`).
    pub state_reason: Option<String>,
    /// Restarts of the deployment so far (auto-recovery and operator restarts).
    pub restart_count: u32,
    /// Usage this month.
    pub usage: Usage,
    /// The deployer's handle on the deployment, when one exists.
    pub deployment_ref: Option<String>,
    /// Hash of the runtime token issued at deploy time.
    pub runtime_token_hash: Option<String>,
    /// Fencing token: each actor incarnation claims a new epoch, and writes from
    /// an older incarnation are refused by the store.
    pub epoch: i64,
    /// Creation time, unix milliseconds.
    pub created_at: i64,
    /// Last change, unix milliseconds.
    pub updated_at: i64,
}

/// One row of the state history.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    /// Previous state; `None` for the creation entry.
    pub from: Option<State>,
    /// New state.
    pub to: State,
    /// Why.
    pub reason: Option<String>,
    /// Who caused it (`user:<id>` or `system`).
    pub by: String,
    /// When, unix milliseconds.
    pub at: i64,
}

/// Something notable that happened to an agent, persisted with the change
/// that caused it (budget warnings, supervisor escalations).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AgentEvent {
    /// A stable kind, e.g. `budget_warning`.
    pub kind: String,
    /// Details as JSON.
    pub detail: serde_json::Value,
    /// When, unix milliseconds.
    pub at: i64,
}

/// Effective health settings (overrides merged with the global defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    /// Probe interval in milliseconds.
    pub interval_ms: u64,
    /// Consecutive failures before auto-recovery.
    pub failure_threshold: u32,
}

/// The deployment part of the view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentView {
    /// Target name.
    pub target: String,
    /// The deployer's handle, once deployed.
    #[serde(rename = "ref")]
    pub deployment_ref: Option<String>,
    /// Container settings (target `docker`).
    #[serde(default, skip_serializing_if = "DockerSpec::is_default")]
    pub docker: DockerSpec,
    /// Machine settings (target `ssh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshSpec>,
    /// Fly.io settings (target `fly`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fly: Option<FlySpec>,
    /// Railway settings (target `railway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub railway: Option<RailwaySpec>,
}

/// The budget part of the view.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetView {
    /// Monthly token limit.
    pub monthly_tokens: Option<u64>,
    /// Monthly cost limit in USD.
    pub monthly_cost_usd: Option<f64>,
    /// The period the limits apply to (`daily`, `weekly`, `monthly`).
    pub period: crate::budget::PeriodKind,
}

/// The usage part of the view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageView {
    /// Tokens used this period.
    pub tokens: u64,
    /// Cost this period in USD.
    pub cost_usd: f64,
    /// The period: `YYYY-MM`, `YYYY-Www` or `YYYY-MM-DD` in the
    /// organization's time zone.
    pub period: String,
}

/// The agent as the API shows it: the read model its actor publishes after
/// every committed change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentView {
    /// Id.
    pub id: AgentId,
    /// Organization.
    pub org_id: OrgId,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// State.
    pub state: State,
    /// Why it is in that state.
    pub state_reason: Option<String>,
    /// Commands accepted in this state.
    pub allowed_commands: Vec<Command>,
    /// Fields a deploy still needs.
    pub missing_fields: Vec<String>,
    /// Restarts so far.
    pub restart_count: u32,
    /// Deployment.
    pub deployment: DeploymentView,
    /// Effective health settings.
    pub health: HealthView,
    /// Budget.
    pub budget: BudgetView,
    /// Permission profile.
    pub profile: Option<String>,
    /// Model provider settings of its own (secrets by name only).
    #[serde(default, skip_serializing_if = "is_default_llm")]
    pub llm: LlmSpec,
    /// MCP servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<McpServerSpec>,
    /// Knowledge bases it reads, memories it recalls.
    #[serde(default)]
    pub knowledge: KnowledgeSpec,
    /// Its job description.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Tone and language.
    #[serde(default)]
    pub persona: Option<String>,
    /// Its manager: `{"agent": id}`, `{"user": id}` or null.
    #[serde(default)]
    pub reports_to: Option<Manager>,
    /// Usage.
    pub usage: UsageView,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl AgentView {
    /// Builds the view of `rec` with effective health `health`.
    pub fn of(rec: &AgentRecord, health: HealthView) -> AgentView {
        AgentView {
            id: rec.id.clone(),
            org_id: rec.org_id.clone(),
            name: rec.spec.name.clone(),
            role: rec.spec.role.clone(),
            model: rec.spec.model.clone(),
            state: rec.state,
            state_reason: rec.state_reason.clone(),
            allowed_commands: allowed_commands(rec.state),
            missing_fields: rec
                .spec
                .missing_fields()
                .into_iter()
                .map(String::from)
                .collect(),
            restart_count: rec.restart_count,
            deployment: DeploymentView {
                target: rec.spec.target.as_str().to_string(),
                deployment_ref: rec.deployment_ref.clone(),
                docker: rec.spec.runtime.docker.clone(),
                ssh: rec.spec.runtime.ssh.clone(),
                fly: rec.spec.runtime.fly.clone(),
                railway: rec.spec.runtime.railway.clone(),
            },
            health,
            budget: BudgetView {
                monthly_tokens: rec.spec.budget.monthly_tokens,
                monthly_cost_usd: rec.spec.budget.monthly_cost_micros.map(micros_to_usd),
                period: rec.spec.budget.period,
            },
            profile: rec.spec.profile.clone(),
            llm: rec.spec.runtime.llm.clone(),
            mcp_servers: rec.spec.runtime.mcp_servers.clone(),
            knowledge: rec.spec.runtime.knowledge.clone(),
            instructions: rec.spec.job.instructions.clone(),
            persona: rec.spec.job.persona.clone(),
            reports_to: rec.spec.job.reports_to.clone(),
            usage: UsageView {
                tokens: rec.usage.tokens,
                cost_usd: micros_to_usd(rec.usage.cost_micros),
                period: rec.usage.period.to_string(),
            },
            created_at: rfc3339(rec.created_at),
            updated_at: rfc3339(rec.updated_at),
        }
    }
}

/// A published view, kept as its JSON rendering only: list pages are built
/// by concatenation instead of re-serializing every agent on every request,
/// and an idle agent does not carry a dozen heap strings twice (100,000
/// agents stay resident). [`AgentSnapshot::view`] parses the typed view back
/// when a caller needs fields.
#[derive(Debug)]
pub struct AgentSnapshot {
    /// The agent.
    pub id: AgentId,
    /// Its state (list filters).
    pub state: State,
    /// Its manager (the org chart, without parsing the view).
    pub reports_to: Option<Manager>,
    /// `serde_json` rendering of the view.
    pub json: Box<str>,
}

impl AgentSnapshot {
    /// Renders `view`.
    pub fn new(view: AgentView) -> Arc<AgentSnapshot> {
        // Serializing a struct of plain fields cannot fail; fall back to an
        // empty object rather than panicking if that ever changes.
        let json = serde_json::to_string(&view).unwrap_or_else(|_| "{}".to_string());
        Arc::new(AgentSnapshot {
            id: view.id,
            state: view.state,
            reports_to: view.reports_to,
            json: json.into_boxed_str(),
        })
    }

    /// The typed view (parsed from the JSON; for callers that need fields).
    pub fn view(&self) -> AgentView {
        // The JSON was rendered from an AgentView, so it always parses back;
        // a failure would be a bug in this module, not bad input.
        serde_json::from_str(&self.json)
            .unwrap_or_else(|e| panic!("snapshot of {} does not parse: {e}", self.id))
    }
}

/// Micro-dollars to dollars.
pub fn micros_to_usd(micros: u64) -> f64 {
    micros as f64 / 1_000_000.0
}

/// Unix milliseconds as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The last `max` characters of `text`, marked with `…` when cut (log
/// tails quoted in a state reason stay readable and bounded).
pub fn clip_tail(text: &str, max: usize) -> String {
    let n = text.chars().count();
    if n <= max {
        return text.to_string();
    }
    format!("…{}", text.chars().skip(n - max).collect::<String>())
}
