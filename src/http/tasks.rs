//! Tasks: `POST /agents/{id}/tasks`, lists, one task, its steps, cancel.
//! Creating and cancelling go to the agent's actor (which persists before
//! answering and delivers to the runtime); reads come from the store.

use super::agents::{agent_id, page_limit};
use super::error::{ApiError, ApiJson, ApiQuery};
use super::guard::Routes;
use super::identity::page;
use super::state::AppState;
use crate::identity::{Action, Principal};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cadre_actors::domain::{AgentId, OrgId, rfc3339};
use cadre_actors::task::{TaskLimits, TaskRecord, TaskState, TaskStep};
use serde::Deserialize;
use serde_json::{Value, json};

/// The JSON of a task.
pub fn task_json(t: &TaskRecord) -> Value {
    json!({
        "id": t.id,
        "agent_id": t.agent_id,
        "instruction": t.instruction,
        "input": t.input,
        "state": t.state.as_str(),
        "result": t.result,
        "error": t.error,
        "limits": t.limits,
        "created_by": t.created_by,
        "created_at": rfc3339(t.created_at),
        "started_at": t.started_at.map(rfc3339),
        "finished_at": t.finished_at.map(rfc3339),
        "parent_id": t.parent_id,
        "from_step": t.from_step,
        "version": t.version,
    })
}

fn step_json(s: &TaskStep) -> Value {
    json!({
        "seq": s.seq,
        "kind": s.kind,
        "tokens": s.tokens,
        "latency_ms": s.latency_ms,
        "at": rfc3339(s.at),
        "body": s.body,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsIn {
    max_steps: Option<u32>,
    max_seconds: Option<u64>,
    max_tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskIn {
    instruction: String,
    #[serde(default)]
    input: Value,
    limits: Option<LimitsIn>,
}

/// Limits from the body over the configured defaults, each within bounds.
pub(super) fn limits(given: Option<LimitsIn>, default: TaskLimits) -> Result<TaskLimits, ApiError> {
    let Some(l) = given else { return Ok(default) };
    let check = |field: &str, v: Option<u64>, max: u64, d: u64| match v {
        None => Ok(d),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::invalid(
            &format!("limits.{field}"),
            format!("1 to {max}"),
        )),
    };
    Ok(TaskLimits {
        max_steps: u32::try_from(check(
            "max_steps",
            l.max_steps.map(u64::from),
            1_000,
            u64::from(default.max_steps),
        )?)
        .unwrap_or(default.max_steps),
        max_seconds: check("max_seconds", l.max_seconds, 86_400, default.max_seconds)?,
        max_tokens: check("max_tokens", l.max_tokens, 100_000_000, default.max_tokens)?,
    })
}

/// An instruction, trimmed: 1 to 100,000 characters.
pub(super) fn instruction(field: &str, raw: &str) -> Result<String, ApiError> {
    let i = raw.trim();
    if i.is_empty() || i.chars().count() > 100_000 {
        return Err(ApiError::invalid(field, "1 to 100000 characters"));
    }
    Ok(i.to_string())
}

async fn create(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<TaskIn>,
) -> Result<Response, ApiError> {
    let agent = agent_id(&id)?;
    let instruction = instruction("instruction", &body.instruction)?;
    let limits = limits(body.limits, state.config.tasks.default_limits)?;
    let task = TaskRecord::queued(
        p.org.as_str(),
        agent.as_str(),
        instruction,
        body.input,
        limits,
        p.who().to_text(),
    );
    let t = state
        .cadre
        .submit_task(&p.org, &agent, task, &p.who())
        .await?;
    Ok((StatusCode::CREATED, Json(task_json(&t))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let agent = agent_id(&id)?;
    let filter = match q.state.as_deref() {
        None => None,
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "state: one of queued, running, waiting_approval, succeeded, failed, cancelled",
            )
        })?),
    };
    let limit = page_limit(q.limit)?;
    let cursor = super::input::cursor(q.cursor.as_deref())?;
    if state.cadre.get_agent(&p.org, &agent).await.is_err() {
        return Err(ApiError::not_found("agent"));
    }
    let rows = state
        .store
        .tables()
        .tasks_page(
            p.org.as_str(),
            agent.as_str(),
            filter,
            (!cursor.is_empty()).then_some(cursor.as_str()),
            u32::try_from(limit).unwrap_or(200) + 1,
        )
        .await?;
    Ok(page(rows, limit, |t| t.id.clone(), task_json))
}

/// Task ids are UUIDs; anything else cannot exist.
async fn find(state: &AppState, org: &OrgId, raw: &str) -> Result<TaskRecord, ApiError> {
    let id = super::input::path_id("task", raw)?;
    state
        .store
        .tables()
        .task(org.as_str(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("task"))
}

async fn get_task(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let t = find(&state, &p.org, &id).await?;
    Ok(Json(task_json(&t)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepParams {
    /// Steps after this sequence number.
    after: Option<u32>,
    limit: Option<usize>,
}

async fn steps(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<StepParams>,
) -> Result<Response, ApiError> {
    let t = find(&state, &p.org, &id).await?;
    let limit = page_limit(q.limit)?;
    let mut rows = state
        .store
        .tables()
        .task_steps(
            &t.id,
            q.after.unwrap_or(0),
            u32::try_from(limit).unwrap_or(200) + 1,
        )
        .await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|s| s.seq)
    } else {
        None
    };
    Ok(Json(json!({
        "task": task_json(&t),
        "items": rows.iter().map(step_json).collect::<Vec<_>>(),
        "next_after": next,
    }))
    .into_response())
}

async fn cancel(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let t = find(&state, &p.org, &id).await?;
    if t.state.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "task_finished",
            format!("task {} is {} already", t.id, t.state.as_str()),
        ));
    }
    let t = state
        .cadre
        .cancel_task(&p.org, &AgentId(t.agent_id.clone()), &t.id, &p.who())
        .await?;
    Ok(Json(task_json(&t)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditsIn {
    /// A new instruction for the branch.
    instruction: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayIn {
    from_step: u32,
    edits: Option<EditsIn>,
    /// The version of the agent's definition to run with: `"original"`
    /// (the default: the original run's), `"current"`, or a number.
    version: Option<Value>,
}

/// Starts a branch of a task: the recorded steps before `from_step` (a
/// model step) are reused, and the runtime runs live from there, with the
/// instruction edited when asked.
async fn replay(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ReplayIn>,
) -> Result<Response, ApiError> {
    let parent = find(&state, &p.org, &id).await?;
    let steps = state
        .store
        .tables()
        .task_steps(&parent.id, 0, 10_000)
        .await?;
    let from = body.from_step;
    match steps.iter().find(|s| s.seq == from) {
        Some(s) if s.kind == "model" => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "from_step",
                format!("step {from} is a tool step; replay from a model step"),
            ));
        }
        None => {
            return Err(ApiError::invalid(
                "from_step",
                format!("task {} has no step {from}", parent.id),
            ));
        }
    }
    let instruction = match body.edits.and_then(|e| e.instruction) {
        Some(i) => instruction("edits.instruction", &i)?,
        None => parent.instruction.clone(),
    };
    let version = match body.version {
        None => parent.version,
        Some(Value::String(s)) if s == "original" => parent.version,
        // Set by the agent's actor to its newest.
        Some(Value::String(s)) if s == "current" => None,
        Some(Value::Number(n)) => {
            let n = n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| ApiError::invalid("version", "a version number (1, 2, …)"))?;
            let known = state
                .store
                .tables()
                .versions_page(Some(p.org.as_str()), &parent.agent_id, i64::from(n) + 1, 1)
                .await
                .map_err(ApiError::internal)?
                .first()
                .is_some_and(|v| v.n == n);
            if !known {
                return Err(ApiError::invalid(
                    "version",
                    format!("the agent has no version {n}"),
                ));
            }
            Some(n)
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "version",
                "\"original\", \"current\" or a version number",
            ));
        }
    };
    let task = TaskRecord {
        version,
        parent_id: Some(parent.id.clone()),
        from_step: Some(from),
        ..TaskRecord::queued(
            p.org.as_str(),
            &parent.agent_id,
            instruction,
            parent.input.clone(),
            parent.limits,
            p.who().to_text(),
        )
    };
    let t = state
        .cadre
        .submit_task(&p.org, &AgentId(parent.agent_id), task, &p.who())
        .await?;
    Ok((StatusCode::CREATED, Json(task_json(&t))).into_response())
}

/// The task routes.
pub fn routes(r: Routes) -> Routes {
    r.add(
        Method::POST,
        "/agents/{id}/tasks",
        Action::AgentsWrite,
        post(create),
    )
    .add(
        Method::GET,
        "/agents/{id}/tasks",
        Action::AgentsRead,
        get(list),
    )
    .add(
        Method::GET,
        "/tasks/{id}",
        Action::AgentsRead,
        get(get_task),
    )
    .add(
        Method::GET,
        "/tasks/{id}/steps",
        Action::AgentsRead,
        get(steps),
    )
    .add(
        Method::POST,
        "/tasks/{id}/cancel",
        Action::AgentsWrite,
        post(cancel),
    )
    .add(
        Method::POST,
        "/tasks/{id}/replay",
        Action::AgentsWrite,
        post(replay),
    )
}
