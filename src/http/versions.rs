//! Versions of an agent's definition: `GET /agents/{id}/versions`, one
//! version, a diff between two, and `POST …/versions/{n}/restore` (a
//! change like any other, so itself a new version). The versions are
//! written by the agent's actor in the transaction of the change that made
//! each; these handlers read them, and a restore sends the actor a patch.

use super::error::{ApiError, ApiQuery};
use super::guard::Routes;
use super::state::AppState;
use crate::identity::{Action, Principal};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cadre_actors::domain::{AgentId, AgentPatch, AgentVersion, OrgId, rfc3339};
use serde::Deserialize;
use serde_json::{Value, json};

use super::agents::PageParams;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffParams {
    /// The version to compare with (default: the one before).
    to: Option<u32>,
}

fn version_json(v: &AgentVersion) -> Value {
    json!({
        "n": v.n,
        "agent_id": v.agent_id,
        "definition": v.definition,
        "by": v.by,
        "at": rfc3339(v.at),
    })
}

/// The agent, when it is the caller's organization's.
fn agent(state: &AppState, org: &OrgId, id: &str) -> Result<AgentId, ApiError> {
    let id = super::agents::agent_id(id)?;
    if !state.cadre.has_agent(org, &id) {
        return Err(ApiError::not_found("agent"));
    }
    Ok(id)
}

fn number(raw: &str) -> Result<u32, ApiError> {
    raw.parse::<u32>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| ApiError::not_found("version"))
}

async fn one(
    state: &AppState,
    org: &OrgId,
    agent: &AgentId,
    n: u32,
) -> Result<AgentVersion, ApiError> {
    state
        .store
        .tables()
        .versions_page(Some(org.as_str()), agent.as_str(), i64::from(n) + 1, 1)
        .await
        .map_err(ApiError::internal)?
        .pop()
        .filter(|v| v.n == n)
        .ok_or_else(|| ApiError::not_found("version"))
}

async fn list(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    let agent = agent(&state, &p.org, &id)?;
    let limit = super::agents::page_limit(q.limit)?;
    let before = super::input::numeric_cursor(q.cursor.as_deref())?.unwrap_or(i64::MAX);
    let mut rows = state
        .store
        .tables()
        .versions_page(
            Some(p.org.as_str()),
            agent.as_str(),
            before,
            limit as i64 + 1,
        )
        .await
        .map_err(ApiError::internal)?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = more.then(|| rows.last().map(|v| v.n.to_string())).flatten();
    Ok(Json(json!({
        "items": rows.iter().map(version_json).collect::<Vec<_>>(),
        "next_cursor": next,
    }))
    .into_response())
}

async fn get_one(
    State(state): State<AppState>,
    p: Principal,
    Path((id, n)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let agent = agent(&state, &p.org, &id)?;
    let v = one(&state, &p.org, &agent, number(&n)?).await?;
    Ok(Json(version_json(&v)).into_response())
}

/// The fields of two definitions that differ: `[{field, from, to}]`, in
/// field order.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let empty = serde_json::Map::new();
    let a = from.as_object().unwrap_or(&empty);
    let b = to.as_object().unwrap_or(&empty);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            json!({
                "field": k,
                "from": a.get(k).cloned().unwrap_or(Value::Null),
                "to": b.get(k).cloned().unwrap_or(Value::Null),
            })
        })
        .collect()
}

async fn diff_route(
    State(state): State<AppState>,
    p: Principal,
    Path((id, n)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<DiffParams>,
) -> Result<Response, ApiError> {
    let agent = agent(&state, &p.org, &id)?;
    let n = number(&n)?;
    let other = match q.to {
        Some(m) => m,
        None if n > 1 => n - 1,
        None => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "version 1 has none before it: give to=<n>",
            ));
        }
    };
    let from = one(&state, &p.org, &agent, other).await?;
    let to = one(&state, &p.org, &agent, n).await?;
    Ok(Json(json!({
        "from": other,
        "to": n,
        "changes": diff(&from.definition, &to.definition),
    }))
    .into_response())
}

/// The patch that makes an agent's definition `d` again.
fn patch_of(d: &Value) -> Result<AgentPatch, ApiError> {
    let text = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_string);
    fn parse<T: serde::de::DeserializeOwned>(d: &Value, k: &str) -> Result<T, ApiError> {
        serde_json::from_value(d.get(k).cloned().unwrap_or(Value::Null))
            .map_err(|e| ApiError::internal(format!("stored version unreadable ({k}): {e}")))
    }
    let budget = &d["budget"];
    Ok(AgentPatch {
        role: Some(text("role")),
        instructions: Some(text("instructions")),
        persona: Some(text("persona")),
        model: Some(text("model")),
        llm: Some(parse(d, "llm")?),
        profile: Some(text("profile")),
        knowledge: Some(parse(d, "knowledge")?),
        mcp_servers: Some(parse(d, "mcp_servers")?),
        monthly_tokens: Some(budget["monthly_tokens"].as_u64()),
        monthly_cost_micros: Some(budget["monthly_cost_micros"].as_u64()),
        budget_period: budget["period"]
            .as_str()
            .and_then(cadre_actors::budget::PeriodKind::parse),
        ..AgentPatch::default()
    })
}

async fn restore(
    State(state): State<AppState>,
    p: Principal,
    Path((id, n)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let agent = agent(&state, &p.org, &id)?;
    let v = one(&state, &p.org, &agent, number(&n)?).await?;
    let patch = patch_of(&v.definition)?;
    let snap = state
        .cadre
        .patch_agent(&p.org, &agent, patch, p.who())
        .await?;
    Ok(super::agents::json_response(
        StatusCode::OK,
        snap.json.to_string(),
    ))
}

/// The version routes.
pub fn routes(r: Routes) -> Routes {
    r.add(
        Method::GET,
        "/agents/{id}/versions",
        Action::AgentsRead,
        get(list),
    )
    .add(
        Method::GET,
        "/agents/{id}/versions/{n}",
        Action::AgentsRead,
        get(get_one),
    )
    .add(
        Method::GET,
        "/agents/{id}/versions/{n}/diff",
        Action::AgentsRead,
        get(diff_route),
    )
    .add(
        Method::POST,
        "/agents/{id}/versions/{n}/restore",
        Action::AgentsWrite,
        post(restore),
    )
}
