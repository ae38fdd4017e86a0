//! Scheduled tasks: `POST/GET /agents/{id}/schedules`, `GET/PATCH/DELETE
//! /schedules/{id}`. Changes go to the scheduler actor (which persists them
//! with their audit entries and re-arms its timer); reads come from the
//! store.

use super::agents::agent_id;
use super::error::{ApiError, ApiJson};
use super::guard::Routes;
use super::state::AppState;
use super::tasks::{LimitsIn, instruction, limits};
use crate::cron::Cron;
use crate::identity::{Action, Principal};
use crate::schedule::{SchedulePatch, next_run};
use crate::store::Schedule;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cadre_actors::domain::rfc3339;
use serde::Deserialize;
use serde_json::{Value, json};

/// Schedules an agent may have.
const MAX_PER_AGENT: usize = 100;

fn schedule_json(s: &Schedule) -> Value {
    json!({
        "id": s.id,
        "agent_id": s.agent_id,
        "cron": s.cron,
        "timezone": s.timezone,
        "instruction": s.instruction,
        "input": s.input,
        "limits": s.limits,
        "enabled": s.enabled,
        "next_run_at": s.next_run_at.map(rfc3339),
        "last_run_at": s.last_run_at.map(rfc3339),
        "last_task_id": s.last_task_id,
        "last_error": s.last_error,
        "created_by": s.created_by,
        "created_at": rfc3339(s.created_at),
        "updated_at": rfc3339(s.updated_at),
    })
}

fn cron(raw: &str) -> Result<String, ApiError> {
    let c = raw.trim();
    if c.len() > 200 {
        return Err(ApiError::invalid("cron", "at most 200 characters"));
    }
    Cron::parse(c).map_err(|e| ApiError::invalid("cron", e))?;
    Ok(c.to_string())
}

fn timezone(raw: &str) -> Result<String, ApiError> {
    jiff::tz::TimeZone::get(raw)
        .map(|_| raw.to_string())
        .map_err(|_| {
            ApiError::invalid(
                "timezone",
                format!("unknown time zone {raw:?} (IANA names, e.g. Europe/Oslo)"),
            )
        })
}

/// A schedule that can never run again is refused rather than kept idle.
fn runs(s: &Schedule) -> Result<(), ApiError> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    if s.enabled && next_run(s, now).is_none() {
        return Err(ApiError::invalid(
            "cron",
            "the expression never matches a future time",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleIn {
    cron: String,
    timezone: Option<String>,
    instruction: String,
    #[serde(default)]
    input: Value,
    limits: Option<LimitsIn>,
    enabled: Option<bool>,
}

async fn create(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ScheduleIn>,
) -> Result<Response, ApiError> {
    let agent = agent_id(&id)?;
    let cron = cron(&body.cron)?;
    // The organization's time zone unless the schedule names one.
    let tz = match &body.timezone {
        Some(t) => timezone(t)?,
        None => state
            .store
            .tables()
            .org(p.org.as_str())
            .await?
            .map(|o| o.timezone)
            .unwrap_or_else(|| "UTC".into()),
    };
    let instruction = instruction("instruction", &body.instruction)?;
    let limits = limits(body.limits, state.config.tasks.default_limits)?;
    if state.cadre.get_agent(&p.org, &agent).await.is_err() {
        return Err(ApiError::not_found("agent"));
    }
    if state
        .store
        .tables()
        .agent_schedules(p.org.as_str(), agent.as_str())
        .await?
        .len()
        >= MAX_PER_AGENT
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "limit_reached",
            format!("an agent has at most {MAX_PER_AGENT} schedules"),
        ));
    }
    let s = Schedule {
        id: uuid::Uuid::now_v7().to_string(),
        org_id: p.org.to_string(),
        agent_id: agent.to_string(),
        cron,
        timezone: tz,
        instruction,
        input: body.input,
        limits,
        enabled: body.enabled.unwrap_or(true),
        next_run_at: None,
        last_run_at: None,
        last_task_id: None,
        last_error: None,
        created_by: p.who().to_text(),
        created_at: 0,
        updated_at: 0,
    };
    runs(&s)?;
    let s = state.scheduler.create(s, p.who()).await?;
    Ok((StatusCode::CREATED, Json(schedule_json(&s))).into_response())
}

async fn list(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let agent = agent_id(&id)?;
    if state.cadre.get_agent(&p.org, &agent).await.is_err() {
        return Err(ApiError::not_found("agent"));
    }
    let items: Vec<Value> = state
        .store
        .tables()
        .agent_schedules(p.org.as_str(), agent.as_str())
        .await?
        .iter()
        .map(schedule_json)
        .collect();
    Ok(Json(json!({ "items": items })).into_response())
}

async fn find(state: &AppState, p: &Principal, raw: &str) -> Result<Schedule, ApiError> {
    let id = super::input::path_id("schedule", raw)?;
    state
        .store
        .tables()
        .schedule(p.org.as_str(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("schedule"))
}

async fn get_one(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(schedule_json(&find(&state, &p, &id).await?)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchIn {
    cron: Option<String>,
    timezone: Option<String>,
    instruction: Option<String>,
    enabled: Option<bool>,
}

async fn patch(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchIn>,
) -> Result<Response, ApiError> {
    let current = find(&state, &p, &id).await?;
    let patch = SchedulePatch {
        cron: body.cron.as_deref().map(cron).transpose()?,
        timezone: body.timezone.as_deref().map(timezone).transpose()?,
        instruction: body
            .instruction
            .as_deref()
            .map(|i| instruction("instruction", i))
            .transpose()?,
        enabled: body.enabled,
    };
    let mut preview = current.clone();
    if let Some(c) = &patch.cron {
        preview.cron = c.clone();
    }
    if let Some(t) = &patch.timezone {
        preview.timezone = t.clone();
    }
    if let Some(e) = patch.enabled {
        preview.enabled = e;
    }
    runs(&preview)?;
    let s = state
        .scheduler
        .update(&p.org, &current.id, patch, p.who())
        .await?;
    Ok(Json(schedule_json(&s)).into_response())
}

async fn delete(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let current = find(&state, &p, &id).await?;
    state.scheduler.delete(&p.org, &current.id, p.who()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The routes.
pub fn routes(r: Routes) -> Routes {
    r.add(
        Method::POST,
        "/agents/{id}/schedules",
        Action::AgentsWrite,
        post(create),
    )
    .add(
        Method::GET,
        "/agents/{id}/schedules",
        Action::AgentsRead,
        get(list),
    )
    .add(
        Method::GET,
        "/schedules/{id}",
        Action::AgentsRead,
        get(get_one),
    )
    .add(
        Method::PATCH,
        "/schedules/{id}",
        Action::AgentsWrite,
        axum::routing::patch(patch),
    )
    .add(
        Method::DELETE,
        "/schedules/{id}",
        Action::AgentsWrite,
        axum::routing::delete(delete),
    )
}
