//! `/agents` routes: create, list, get, patch, delete, lifecycle commands,
//! history and events.
//!
//! Each handler validates its input into domain types, makes one call to the
//! actor tree (or one store read for history) and maps the answer. Agent
//! bodies are the JSON the owning actor rendered when it committed.

use super::error::{ApiError, ApiJson, ApiQuery};
use super::guard::Routes;
use super::state::AppState;
use crate::identity::{Action, Principal};
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete as delete_route, get, patch as patch_route, post};
use cadre_actors::agent::DeleteOutcome;
use cadre_actors::budget::{BudgetLimits, PeriodKind};
use cadre_actors::domain::{
    AgentId, AgentPatch, AgentSnapshot, AgentSpec, DeployTarget, DockerSpec, FlySpec,
    HealthOverrides, Job, KnowledgeSpec, LlmSpec, Manager, McpServerSpec, OrgId, RailwaySpec,
    RuntimeSpec, SshSpec,
};
use cadre_actors::lifecycle::{Command, State as AgentState};
use cadre_actors::tenant::ListQuery;
use serde::{Deserialize, Deserializer};
use std::sync::Arc;

const MAX_NAME: usize = 200;
const MAX_ROLE: usize = 4000;
const MAX_MODEL: usize = 200;
/// Instructions (an agent's or an organization's), in bytes.
pub(super) const MAX_INSTRUCTIONS: usize = 32 * 1024;
/// A persona, in bytes.
const MAX_PERSONA: usize = 4 * 1024;
const MAX_INTERVAL_MS: u64 = 24 * 3600 * 1000;
const MAX_COST_USD: f64 = 1e12;
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// `Some(None)` for an explicit `null`, `None` for an absent field.
pub(super) fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeploymentIn {
    target: Option<String>,
    docker: Option<DockerSpec>,
    ssh: Option<SshSpec>,
    fly: Option<FlySpec>,
    railway: Option<RailwaySpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HealthIn {
    interval_ms: Option<u64>,
    failure_threshold: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BudgetIn {
    #[serde(default, deserialize_with = "nullable")]
    monthly_tokens: Option<Option<u64>>,
    #[serde(default, deserialize_with = "nullable")]
    monthly_cost_usd: Option<Option<f64>>,
    /// `daily`, `weekly` or `monthly` (default).
    period: Option<String>,
}

fn period(p: Option<&str>) -> Result<Option<PeriodKind>, ApiError> {
    p.map(|p| {
        PeriodKind::parse(p)
            .ok_or_else(|| ApiError::invalid("budget.period", "one of daily, weekly, monthly"))
    })
    .transpose()
}

fn profile_name(p: Option<&str>) -> Result<Option<String>, ApiError> {
    p.map(|p| {
        if cadre_actors::governance::valid_id(p) {
            Ok(p.to_string())
        } else {
            Err(ApiError::invalid(
                "profile",
                "1-100 of a-z 0-9 _ . - (a preset or one of the organization's profiles)",
            ))
        }
    })
    .transpose()
}

/// Refuses a profile the organization does not have.
fn known_profile(state: &AppState, org: &OrgId, p: Option<&str>) -> Result<(), ApiError> {
    match p {
        Some(name)
            if !state
                .cadre
                .governance()
                .org(org)
                .profiles
                .contains_key(name) =>
        {
            Err(ApiError::invalid(
                "profile",
                format!("no profile {name:?}: GET /api/v1/profiles lists them"),
            ))
        }
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAgent {
    name: String,
    role: Option<String>,
    model: Option<String>,
    deployment: Option<DeploymentIn>,
    health: Option<HealthIn>,
    budget: Option<BudgetIn>,
    profile: Option<String>,
    llm: Option<LlmSpec>,
    mcp_servers: Option<Vec<McpServerSpec>>,
    knowledge: Option<KnowledgeSpec>,
    instructions: Option<String>,
    persona: Option<String>,
    reports_to: Option<Manager>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchAgent {
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    role: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    model: Option<Option<String>>,
    deployment: Option<DeploymentIn>,
    health: Option<HealthIn>,
    budget: Option<BudgetIn>,
    #[serde(default, deserialize_with = "nullable")]
    profile: Option<Option<String>>,
    llm: Option<LlmSpec>,
    mcp_servers: Option<Vec<McpServerSpec>>,
    knowledge: Option<KnowledgeSpec>,
    #[serde(default, deserialize_with = "nullable")]
    instructions: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    persona: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    reports_to: Option<Option<Manager>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `?cursor=&limit=` of a paged list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PageParams {
    pub(super) cursor: Option<String>,
    pub(super) limit: Option<usize>,
}

pub(super) fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("at most {max} characters"),
        ));
    }
    if v.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(v.to_string())
}

fn opt_text(field: &str, value: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    value.map(|v| text(field, v, max)).transpose()
}

/// Free text of up to `max` bytes (a job description, a handbook): kept as
/// written but for surrounding white space; no control characters but
/// line breaks and tabs.
fn long(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ApiError::invalid(
            field,
            "must not be empty (null removes it)",
        ));
    }
    if v.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("at most {max} bytes ({} given)", v.len()),
        ));
    }
    if v.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\t' | '\r'))
    {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(v.to_string())
}

/// Instructions (an agent's or an organization's).
pub(super) fn long_text(field: &str, value: &str) -> Result<String, ApiError> {
    long(field, value, MAX_INSTRUCTIONS)
}

/// A manager as given: an id of the right shape (whether it exists is
/// checked against the organization by [`known_manager`]).
fn manager(m: Manager) -> Result<Manager, ApiError> {
    let (field, id) = match &m {
        Manager::Agent(id) => ("reports_to.agent", id),
        Manager::User(id) => ("reports_to.user", id),
    };
    let ok = id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if !ok {
        return Err(ApiError::invalid(field, format!("{id:?} is not an id")));
    }
    Ok(match m {
        Manager::Agent(id) => Manager::Agent(id.to_ascii_lowercase()),
        Manager::User(id) => Manager::User(id.to_ascii_lowercase()),
    })
}

/// The manager exists in the caller's organization: an agent of it, or a
/// user of it.
fn known_manager(state: &AppState, org: &OrgId, m: &Manager) -> Result<(), ApiError> {
    match m {
        Manager::Agent(id) if !state.cadre.has_agent(org, &AgentId(id.clone())) => {
            Err(ApiError::invalid(
                "reports_to.agent",
                format!("no agent {id} in this organization"),
            ))
        }
        Manager::User(id)
            if state
                .identity
                .directory()
                .user(id)
                .is_none_or(|u| &u.org != org) =>
        {
            Err(ApiError::invalid(
                "reports_to.user",
                format!("no user {id} in this organization"),
            ))
        }
        _ => Ok(()),
    }
}

fn target(name: &str) -> Result<DeployTarget, ApiError> {
    DeployTarget::parse(name).ok_or_else(|| {
        ApiError::invalid(
            "deployment.target",
            format!("unsupported target {name:?}; supported: local, docker, ssh, fly, railway"),
        )
    })
}

/// An image reference: `registry.example/team/agent:1.2`.
fn image_ref(field: &str, image: &str) -> Result<(), ApiError> {
    let ok = !image.is_empty()
        && image.len() <= 255
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
        && !image.starts_with(['-', '.', '/', ':', '@']);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "an image reference like registry.example/team/agent:1.2 (letters, digits and . _ - / : @)",
        ))
    }
}

/// A name of `alphabet` characters, 1 to `max` long, not starting with `-`
/// (so no remote command or API path can read it as an option).
fn plain(field: &str, v: &str, max: usize, alphabet: fn(char) -> bool) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > max || v.starts_with('-') || !v.chars().all(alphabet) {
        return Err(ApiError::invalid(
            field,
            format!("1-{max} characters of the allowed set, not starting with -"),
        ));
    }
    Ok(())
}

fn secret_name(field: &str, name: &str) -> Result<(), ApiError> {
    if cadre_actors::governance::valid_id(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "a secret name: 1-100 of a-z 0-9 _ . -",
        ))
    }
}

/// SSH settings: a host name or address, a user, a key secret, a host key
/// that parses, a directory without `..`, a known supervisor.
fn ssh_spec(s: SshSpec) -> Result<SshSpec, ApiError> {
    plain("deployment.ssh.host", &s.host, 253, |c| {
        c.is_ascii_alphanumeric() || ".-:[]".contains(c)
    })?;
    plain("deployment.ssh.user", &s.user, 32, |c| {
        c.is_ascii_alphanumeric() || "._-".contains(c)
    })?;
    secret_name("deployment.ssh.key_secret", &s.key_secret)?;
    if s.port == Some(0) {
        return Err(ApiError::invalid(
            "deployment.ssh.port",
            "between 1 and 65535",
        ));
    }
    if let Some(k) = &s.host_key {
        crate::deploy::ssh::parse_host_key(k)
            .map_err(|e| ApiError::invalid("deployment.ssh.host_key", e))?;
    }
    if let Some(d) = &s.dir {
        plain("deployment.ssh.dir", d, 200, |c| {
            c.is_ascii_alphanumeric() || "._-/".contains(c)
        })?;
        if d.split('/').any(|part| part == "..") {
            return Err(ApiError::invalid(
                "deployment.ssh.dir",
                "must not contain ..",
            ));
        }
    }
    if let Some(v) = &s.supervisor
        && !matches!(v.as_str(), "auto" | "systemd" | "none")
    {
        return Err(ApiError::invalid(
            "deployment.ssh.supervisor",
            "auto, systemd or none",
        ));
    }
    Ok(s)
}

/// Fly.io settings: Fly's own name rules, an image, a token secret, a size
/// Fly offers.
fn fly_spec(f: FlySpec) -> Result<FlySpec, ApiError> {
    let lower = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    plain("deployment.fly.app", &f.app, 63, lower)?;
    if let Some(o) = &f.org_slug {
        plain("deployment.fly.org_slug", o, 63, lower)?;
    }
    if let Some(r) = &f.region {
        plain("deployment.fly.region", r, 8, |c| c.is_ascii_lowercase())?;
    }
    image_ref("deployment.fly.image", &f.image)?;
    secret_name("deployment.fly.token_secret", &f.token_secret)?;
    if f.cpus.is_some_and(|c| !(1..=16).contains(&c)) {
        return Err(ApiError::invalid("deployment.fly.cpus", "between 1 and 16"));
    }
    if f.memory_mb.is_some_and(|m| !(256..=131_072).contains(&m)) {
        return Err(ApiError::invalid(
            "deployment.fly.memory_mb",
            "between 256 and 131072 MiB",
        ));
    }
    Ok(f)
}

/// Railway settings: a project id, an environment name, an image, a token
/// secret.
fn railway_spec(r: RailwaySpec) -> Result<RailwaySpec, ApiError> {
    plain("deployment.railway.project_id", &r.project_id, 64, |c| {
        c.is_ascii_alphanumeric() || c == '-'
    })?;
    if let Some(e) = &r.environment {
        plain("deployment.railway.environment", e, 64, |c| {
            c.is_ascii_alphanumeric() || "_-".contains(c)
        })?;
    }
    image_ref("deployment.railway.image", &r.image)?;
    secret_name("deployment.railway.token_secret", &r.token_secret)?;
    Ok(r)
}

/// Container settings: an image reference, limits in range.
fn docker_spec(d: DockerSpec) -> Result<DockerSpec, ApiError> {
    if let Some(image) = &d.image {
        image_ref("deployment.docker.image", image)?;
    }
    if let Some(cpus) = d.cpus
        && !(0.01..=1024.0).contains(&cpus)
    {
        return Err(ApiError::invalid(
            "deployment.docker.cpus",
            "between 0.01 and 1024 cores",
        ));
    }
    if let Some(mb) = d.memory_mb
        && !(16..=1 << 20).contains(&mb)
    {
        return Err(ApiError::invalid(
            "deployment.docker.memory_mb",
            "between 16 and 1048576 MiB",
        ));
    }
    Ok(d)
}

fn health(h: &HealthIn) -> Result<HealthOverrides, ApiError> {
    if let Some(ms) = h.interval_ms
        && !(1..=MAX_INTERVAL_MS).contains(&ms)
    {
        return Err(ApiError::invalid(
            "health.interval_ms",
            format!("must be between 1 and {MAX_INTERVAL_MS}"),
        ));
    }
    if let Some(n) = h.failure_threshold
        && !(1..=1000).contains(&n)
    {
        return Err(ApiError::invalid(
            "health.failure_threshold",
            "must be between 1 and 1000",
        ));
    }
    Ok(HealthOverrides {
        interval_ms: h.interval_ms,
        failure_threshold: h.failure_threshold,
    })
}

fn tokens(v: Option<u64>) -> Result<Option<u64>, ApiError> {
    match v {
        Some(t) if t > i64::MAX as u64 => {
            Err(ApiError::invalid("budget.monthly_tokens", "too large"))
        }
        other => Ok(other),
    }
}

fn cost_micros(v: Option<f64>) -> Result<Option<u64>, ApiError> {
    match v {
        None => Ok(None),
        Some(usd) if usd.is_finite() && (0.0..=MAX_COST_USD).contains(&usd) => {
            Ok(Some((usd * 1_000_000.0).round() as u64))
        }
        Some(_) => Err(ApiError::invalid(
            "budget.monthly_cost_usd",
            format!("must be between 0 and {MAX_COST_USD}"),
        )),
    }
}

fn http_url(field: &str, url: &str) -> Result<(), ApiError> {
    let ok = url.len() <= 500
        && (url.starts_with("http://") || url.starts_with("https://"))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            "an http:// or https:// URL of at most 500 characters",
        ))
    }
}

/// Checks an agent's model provider settings.
fn llm_spec(l: LlmSpec) -> Result<LlmSpec, ApiError> {
    if let Some(p) = &l.provider
        && !matches!(p.as_str(), "openai" | "anthropic")
    {
        return Err(ApiError::invalid("llm.provider", "openai or anthropic"));
    }
    if let Some(u) = &l.base_url {
        http_url("llm.base_url", u)?;
    }
    if let Some(s) = &l.api_key_secret {
        secret_name("llm.api_key_secret", s)?;
    }
    if l.max_output_tokens
        .is_some_and(|t| !(1..=1_000_000).contains(&t))
    {
        return Err(ApiError::invalid(
            "llm.max_output_tokens",
            "between 1 and 1000000",
        ));
    }
    if l.temperature
        .is_some_and(|t| !(t.is_finite() && (0.0..=2.0).contains(&t)))
    {
        return Err(ApiError::invalid("llm.temperature", "between 0 and 2"));
    }
    if l.timeout_seconds.is_some_and(|t| !(1..=3600).contains(&t)) {
        return Err(ApiError::invalid(
            "llm.timeout_seconds",
            "between 1 and 3600",
        ));
    }
    Ok(l)
}

/// Checks an agent's MCP servers: unique short names, a command or a URL.
fn mcp_servers(list: Vec<McpServerSpec>) -> Result<Vec<McpServerSpec>, ApiError> {
    if list.len() > 16 {
        return Err(ApiError::invalid("mcp_servers", "at most 16 servers"));
    }
    let mut names = std::collections::HashSet::new();
    for m in &list {
        let ok = !m.name.is_empty()
            && m.name.len() <= 32
            && m.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
        if !ok {
            return Err(ApiError::invalid("mcp_servers.name", "1-32 of a-z 0-9 _ -"));
        }
        if !names.insert(m.name.as_str()) {
            return Err(ApiError::invalid(
                "mcp_servers.name",
                format!("{:?} is named twice", m.name),
            ));
        }
        match (&m.command, &m.url) {
            (Some(c), None) => {
                text("mcp_servers.command", c, 500)?;
                if m.args.len() > 64 || m.args.iter().any(|a| a.len() > 1000 || a.contains('\0')) {
                    return Err(ApiError::invalid(
                        "mcp_servers.args",
                        "at most 64 arguments of at most 1000 bytes",
                    ));
                }
            }
            (None, Some(u)) if m.args.is_empty() => http_url("mcp_servers.url", u)?,
            _ => {
                return Err(ApiError::invalid(
                    "mcp_servers",
                    "each server has a command (with args) or a url",
                ));
            }
        }
    }
    Ok(list)
}

/// Every secret an agent's settings name must exist in its organization.
/// Knowledge settings: at most 50 knowledge bases (ids), at most 20
/// memories recalled per task.
fn knowledge_spec(k: KnowledgeSpec) -> Result<KnowledgeSpec, ApiError> {
    if k.bases.len() > 50 {
        return Err(ApiError::invalid(
            "knowledge.bases",
            "at most 50 knowledge bases",
        ));
    }
    let mut bases = Vec::with_capacity(k.bases.len());
    for b in &k.bases {
        let id = super::input::path_id("knowledge base", b).map_err(|_| {
            ApiError::invalid(
                "knowledge.bases",
                format!("{b:?} is not a knowledge base id"),
            )
        })?;
        if !bases.contains(&id) {
            bases.push(id);
        }
    }
    if k.recall_memories > 20 {
        return Err(ApiError::invalid("knowledge.recall_memories", "0-20"));
    }
    Ok(KnowledgeSpec {
        bases,
        recall_memories: k.recall_memories,
    })
}

/// Every knowledge base the settings name is the organization's.
async fn known_bases(state: &AppState, org: &OrgId, k: &KnowledgeSpec) -> Result<(), ApiError> {
    for b in &k.bases {
        if state.store.tables().kb(org.as_str(), b).await?.is_none() {
            return Err(ApiError::invalid(
                "knowledge.bases",
                format!("no knowledge base {b:?}: GET /api/v1/knowledge-bases lists them"),
            ));
        }
    }
    Ok(())
}

fn known_secrets(state: &AppState, org: &OrgId, spec: &RuntimeSpec) -> Result<(), ApiError> {
    let gov = state.cadre.governance().org(org);
    match spec
        .secret_names()
        .into_iter()
        .find(|(_, name)| !gov.docs.secrets.contains_key(*name))
    {
        Some((field, name)) => Err(ApiError::invalid(
            field,
            format!("no secret {name:?}: PUT /api/v1/secrets/{name} sets it"),
        )),
        None => Ok(()),
    }
}

impl CreateAgent {
    fn into_spec(self) -> Result<AgentSpec, ApiError> {
        let budget = self.budget.unwrap_or_default();
        let target = self
            .deployment
            .as_ref()
            .and_then(|d| d.target.as_deref())
            .map(target)
            .transpose()?
            .unwrap_or_default();
        let dep = self.deployment.unwrap_or_default();
        Ok(AgentSpec {
            name: text("name", &self.name, MAX_NAME)?,
            role: opt_text("role", self.role.as_deref(), MAX_ROLE)?,
            model: opt_text("model", self.model.as_deref(), MAX_MODEL)?,
            target,
            health: self
                .health
                .as_ref()
                .map(health)
                .transpose()?
                .unwrap_or_default(),
            budget: BudgetLimits {
                monthly_tokens: tokens(budget.monthly_tokens.flatten())?,
                monthly_cost_micros: cost_micros(budget.monthly_cost_usd.flatten())?,
                period: period(budget.period.as_deref())?.unwrap_or_default(),
            },
            profile: profile_name(self.profile.as_deref())?,
            runtime: RuntimeSpec {
                llm: self.llm.map(llm_spec).transpose()?.unwrap_or_default(),
                mcp_servers: self
                    .mcp_servers
                    .map(mcp_servers)
                    .transpose()?
                    .unwrap_or_default(),
                docker: dep.docker.map(docker_spec).transpose()?.unwrap_or_default(),
                ssh: dep.ssh.map(ssh_spec).transpose()?,
                fly: dep.fly.map(fly_spec).transpose()?,
                railway: dep.railway.map(railway_spec).transpose()?,
                knowledge: self
                    .knowledge
                    .map(knowledge_spec)
                    .transpose()?
                    .unwrap_or_default(),
            },
            job: Job {
                instructions: self
                    .instructions
                    .map(|i| long_text("instructions", &i))
                    .transpose()?,
                persona: self
                    .persona
                    .map(|p| long("persona", &p, MAX_PERSONA))
                    .transpose()?,
                reports_to: self.reports_to.map(manager).transpose()?,
            },
        })
    }
}

impl PatchAgent {
    fn into_patch(self) -> Result<AgentPatch, ApiError> {
        let budget = self.budget.unwrap_or_default();
        let target = self
            .deployment
            .as_ref()
            .and_then(|d| d.target.as_deref())
            .map(target)
            .transpose()?;
        let dep = self.deployment.unwrap_or_default();
        Ok(AgentPatch {
            name: self
                .name
                .as_deref()
                .map(|n| text("name", n, MAX_NAME))
                .transpose()?,
            role: self
                .role
                .map(|r| opt_text("role", r.as_deref(), MAX_ROLE))
                .transpose()?,
            model: self
                .model
                .map(|m| opt_text("model", m.as_deref(), MAX_MODEL))
                .transpose()?,
            target,
            health: self.health.as_ref().map(health).transpose()?,
            monthly_tokens: budget.monthly_tokens.map(tokens).transpose()?,
            monthly_cost_micros: budget.monthly_cost_usd.map(cost_micros).transpose()?,
            budget_period: period(budget.period.as_deref())?,
            profile: self
                .profile
                .map(|p| profile_name(p.as_deref()))
                .transpose()?,
            llm: self.llm.map(llm_spec).transpose()?,
            mcp_servers: self.mcp_servers.map(mcp_servers).transpose()?,
            docker: dep.docker.map(docker_spec).transpose()?,
            ssh: dep.ssh.map(ssh_spec).transpose()?,
            fly: dep.fly.map(fly_spec).transpose()?,
            railway: dep.railway.map(railway_spec).transpose()?,
            knowledge: self.knowledge.map(knowledge_spec).transpose()?,
            instructions: self
                .instructions
                .map(|i| i.map(|i| long_text("instructions", &i)).transpose())
                .transpose()?,
            persona: self
                .persona
                .map(|p| p.map(|p| long("persona", &p, MAX_PERSONA)).transpose())
                .transpose()?,
            reports_to: self
                .reports_to
                .map(|m| m.map(manager).transpose())
                .transpose()?,
        })
    }
}

/// Agent ids are UUIDs; anything else cannot exist.
pub(super) fn agent_id(raw: &str) -> Result<AgentId, ApiError> {
    if raw.len() == 36 && raw.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        Ok(AgentId(raw.to_ascii_lowercase()))
    } else {
        Err(ApiError::not_found("agent"))
    }
}

pub(super) fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        )),
    }
}

pub(super) fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn agent_response(status: StatusCode, snap: &Arc<AgentSnapshot>) -> Response {
    json_response(status, snap.json.to_string())
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(body): ApiJson<CreateAgent>,
) -> Result<Response, ApiError> {
    let spec = body.into_spec()?;
    if let Some(m) = &spec.job.reports_to {
        known_manager(&state, &principal.org, m)?;
    }
    known_profile(&state, &principal.org, spec.profile.as_deref())?;
    known_secrets(&state, &principal.org, &spec.runtime)?;
    known_bases(&state, &principal.org, &spec.runtime.knowledge).await?;
    let snap = state
        .cadre
        .create_agent(&principal.org, spec, principal.who())
        .await?;
    let mut resp = agent_response(StatusCode::CREATED, &snap);
    if let Ok(loc) = format!("/api/v1/agents/{}", snap.id).parse() {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let filter = params
        .state
        .as_deref()
        .map(|s| {
            AgentState::parse(s).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("unknown state {s:?}"),
                )
            })
        })
        .transpose()?;
    let query = ListQuery {
        state: filter,
        cursor: Some(super::input::cursor(params.cursor.as_deref())?)
            .filter(|c| !c.is_empty())
            .map(AgentId),
        limit: page_limit(params.limit)?,
    };
    let page = state.cadre.list_agents(&principal.org, query).await?;
    let mut body =
        String::with_capacity(64 + page.items.iter().map(|s| s.json.len() + 1).sum::<usize>());
    body.push_str("{\"items\":[");
    for (i, snap) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&snap.json);
    }
    body.push_str("],\"next_cursor\":");
    body.push_str(&serde_json::to_string(&page.next_cursor).map_err(ApiError::internal)?);
    body.push('}');
    Ok(json_response(StatusCode::OK, body))
}

async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let snap = state
        .cadre
        .get_agent(&principal.org, &agent_id(&id)?)
        .await?;
    Ok(agent_response(StatusCode::OK, &snap))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigParams {
    format: Option<String>,
    runtime_bin: Option<String>,
}

/// What a target needs to run the agent, for operators who deploy by hand
/// (`format` = runtime, env, compose or systemd). No secret is in any of them.
async fn config_file(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<ConfigParams>,
) -> Result<Response, ApiError> {
    use crate::deploy::generate::{FORMATS, Generator};
    let format = params.format.as_deref().unwrap_or("runtime");
    if !FORMATS.contains(&format) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("format must be one of {}", FORMATS.join(", ")),
        ));
    }
    let runtime_bin = params
        .runtime_bin
        .unwrap_or_else(|| "/usr/local/bin/cadre".to_string());
    if !runtime_bin.starts_with('/')
        || runtime_bin.len() > 255
        || !runtime_bin
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_.-".contains(c))
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "runtime_bin must be an absolute path of letters, digits and / _ . -",
        ));
    }
    let snap = state
        .cadre
        .get_agent(&principal.org, &agent_id(&id)?)
        .await?;
    let view: cadre_actors::domain::AgentView = serde_json::from_str(&snap.json)
        .map_err(|e| ApiError::internal(format!("agent view: {e}")))?;
    let config = &state.config;
    let profile = view
        .profile
        .clone()
        .unwrap_or_else(|| config.governance.default_profile.clone());
    let skills = state
        .cadre
        .governance()
        .org(&principal.org)
        .profiles
        .get(&profile)
        .map(|p| p.def.allow_skills.clone())
        .unwrap_or_default();
    let llm = crate::deploy::LlmSettings::from(&config.llm);
    let generator = Generator {
        view: &view,
        connect_url: &state.connect_url,
        llm: &llm,
        docker: &config.deploy.docker,
        profile,
        skills,
        runtime_bin: &runtime_bin,
    };
    let Some((media, file, body)) = generator.render(format) else {
        return Err(ApiError::internal("unknown format"));
    };
    Ok((
        [
            (header::CONTENT_TYPE, media.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogParams {
    lines: Option<usize>,
}

/// Lines a log request returns at most.
const MAX_LOG_LINES: usize = 5000;

/// The last lines of the agent's runtime log, read from its target (the
/// engine's log for a container, the log file for a local process).
/// `GET /agents/{id}/logs`.
#[derive(serde::Serialize)]
struct AgentLogs<'a> {
    agent_id: &'a str,
    /// Lines in `text`.
    lines: usize,
    text: &'a str,
}

async fn logs(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<LogParams>,
) -> Result<Response, ApiError> {
    let lines = match params.lines {
        None => 200,
        Some(n) if (1..=MAX_LOG_LINES).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("lines must be between 1 and {MAX_LOG_LINES}"),
            ));
        }
    };
    let id = agent_id(&id)?;
    let text = state.cadre.agent_logs(&principal.org, &id, lines).await?;
    Ok(axum::Json(AgentLogs {
        agent_id: id.as_str(),
        // What came back, not what was asked for.
        lines: text.lines().count(),
        text: &text,
    })
    .into_response())
}

async fn patch(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchAgent>,
) -> Result<Response, ApiError> {
    let id = agent_id(&id)?;
    let patch = body.into_patch()?;
    if let Some(Some(m)) = &patch.reports_to {
        if *m == Manager::Agent(id.to_string()) {
            return Err(ApiError::invalid(
                "reports_to.agent",
                "an agent cannot report to itself",
            ));
        }
        known_manager(&state, &principal.org, m)?;
    }
    if let Some(p) = &patch.profile {
        known_profile(&state, &principal.org, p.as_deref())?;
    }
    known_secrets(
        &state,
        &principal.org,
        &RuntimeSpec {
            llm: patch.llm.clone().unwrap_or_default(),
            ssh: patch.ssh.clone(),
            fly: patch.fly.clone(),
            railway: patch.railway.clone(),
            ..RuntimeSpec::default()
        },
    )?;
    if let Some(k) = &patch.knowledge {
        known_bases(&state, &principal.org, k).await?;
    }
    let snap = state
        .cadre
        .patch_agent(&principal.org, &id, patch, principal.who())
        .await?;
    Ok(agent_response(StatusCode::OK, &snap))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptParams {
    /// `task` (the default) or `chat`.
    mode: Option<String>,
}

/// `GET /agents/{id}/prompt`: the system prompt and tools the agent's
/// next task (or conversation) would be sent, composed now.
async fn prompt(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<PromptParams>,
) -> Result<Response, ApiError> {
    use crate::prompt::Mode;
    let id = agent_id(&id)?;
    let mode = match params.mode.as_deref() {
        None | Some("task") => Mode::Task,
        Some("chat") => Mode::Chat,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("mode must be task or chat, not {other:?}"),
            ));
        }
    };
    let p = crate::prompt::prompt_for(
        &state.cadre,
        state.identity.directory(),
        &state.store,
        (&principal.org, &id),
        mode,
        None,
    )
    .await?;
    Ok(axum::Json(serde_json::json!({
        "agent_id": id.as_str(),
        "mode": mode,
        "system": p.system,
        "tools": p.tools,
    }))
    .into_response())
}

async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = agent_id(&id)?;
    match state
        .cadre
        .delete_agent(&principal.org, &id, principal.who())
        .await?
    {
        DeleteOutcome::Deleted => Ok(StatusCode::NO_CONTENT.into_response()),
        DeleteOutcome::Accepted(snap) => Ok(agent_response(StatusCode::ACCEPTED, &snap)),
    }
}

async fn command(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, command)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = agent_id(&id)?;
    let cmd = match Command::parse(&command) {
        Some(
            c @ (Command::Deploy
            | Command::Start
            | Command::Stop
            | Command::Restart
            | Command::Destroy),
        ) => c,
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_command",
                format!(
                    "unknown command {command:?}; expected deploy, start, stop, restart or destroy"
                ),
            ));
        }
    };
    let snap = state
        .cadre
        .command(&principal.org, &id, cmd, principal.who())
        .await?;
    Ok(agent_response(StatusCode::ACCEPTED, &snap))
}

fn cursor_id(cursor: Option<&str>) -> Result<i64, ApiError> {
    Ok(super::input::numeric_cursor(cursor)?.unwrap_or(0))
}

fn page_json<T: serde::Serialize>(
    mut rows: Vec<T>,
    limit: usize,
    id_of: impl Fn(&T) -> i64,
) -> Result<Response, ApiError> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|r| id_of(r).to_string())
    } else {
        None
    };
    let body = serde_json::json!({ "items": rows, "next_cursor": next });
    Ok(json_response(StatusCode::OK, body.to_string()))
}

/// A validated page request on an agent's history or events (the agent must
/// exist in the caller's org; deleted agents keep their records).
struct LogPage {
    id: AgentId,
    after: i64,
    limit: usize,
}

impl LogPage {
    async fn resolve(
        state: &AppState,
        principal: &Principal,
        id: &str,
        params: PageParams,
    ) -> Result<LogPage, ApiError> {
        let id = agent_id(id)?;
        let limit = page_limit(params.limit)?;
        let after = cursor_id(params.cursor.as_deref())?;
        if !state
            .store
            .tables()
            .agent_exists(principal.org.as_str(), id.as_str())
            .await?
        {
            return Err(ApiError::not_found("agent"));
        }
        Ok(LogPage { id, after, limit })
    }

    /// Rows to fetch: one more than the page, to know whether another follows.
    fn fetch(&self) -> i64 {
        self.limit as i64 + 1
    }
}

async fn history(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    let page = LogPage::resolve(&state, &principal, &id, params).await?;
    let org = principal.org.as_str();
    let rows = state
        .store
        .tables()
        .history(org, page.id.as_str(), page.after, page.fetch())
        .await?;
    page_json(rows, page.limit, |r| r.id)
}

async fn events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    let page = LogPage::resolve(&state, &principal, &id, params).await?;
    let org = principal.org.as_str();
    let rows = state
        .store
        .tables()
        .events(org, page.id.as_str(), page.after, page.fetch())
        .await?;
    page_json(rows, page.limit, |r| r.id)
}

/// `/agents` routes.
pub fn routes(r: Routes) -> Routes {
    r.add(Method::POST, "/agents", Action::AgentsWrite, post(create))
        .add(Method::GET, "/agents", Action::AgentsRead, get(list))
        .add(
            Method::GET,
            "/agents/{id}",
            Action::AgentsRead,
            get(get_one),
        )
        .add(
            Method::PATCH,
            "/agents/{id}",
            Action::AgentsWrite,
            patch_route(patch),
        )
        .add(
            Method::DELETE,
            "/agents/{id}",
            Action::AgentsWrite,
            delete_route(delete),
        )
        .add(
            Method::GET,
            "/agents/{id}/history",
            Action::AgentsRead,
            get(history),
        )
        .add(
            Method::GET,
            "/agents/{id}/events",
            Action::AgentsRead,
            get(events),
        )
        .add(
            Method::GET,
            "/agents/{id}/logs",
            Action::AgentsRead,
            get(logs),
        )
        .add(
            Method::GET,
            "/agents/{id}/config",
            Action::AgentsRead,
            get(config_file),
        )
        .add(
            Method::GET,
            "/agents/{id}/prompt",
            Action::PromptRead,
            get(prompt),
        )
        .add(
            Method::POST,
            "/agents/{id}/{command}",
            Action::AgentsWrite,
            post(command),
        )
}
