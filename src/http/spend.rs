//! Spend across the current budget period, against its budget: an agent's
//! (`GET /agents/{id}/spend`) and the organization's (`GET
//! /orgs/current/spend`), by day (by hour for a daily budget) in the
//! organization's time zone. Read from the counted usage reports (one store
//! read); the periods and limits are the ones the actors judge budgets by.

use super::error::ApiError;
use super::guard::Routes;
use super::state::AppState;
use crate::identity::{Action, Principal};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cadre_actors::budget::Period;
use cadre_actors::ports::{Clock, SystemClock};
use serde::Serialize;

/// One day (or hour) of the period.
#[derive(Serialize)]
struct Part {
    /// Its start, RFC 3339.
    start: String,
    tokens: i64,
    cost_usd: f64,
}

/// The limits the period's spend is judged against (`null`: none).
#[derive(Serialize)]
struct Limits {
    tokens: Option<u64>,
    cost_usd: Option<f64>,
}

/// `GET …/spend`.
#[derive(Serialize)]
struct Spend {
    /// `2026-12`, `2026-W49` or `2026-12-07`.
    period: String,
    /// `day` or `hour`: what one of `parts` covers.
    unit: &'static str,
    /// The organization's time zone the parts are cut in.
    timezone: String,
    budget: Limits,
    /// Every part of the period, those still ahead with zeros.
    parts: Vec<Part>,
    /// Totals of the parts.
    tokens: i64,
    cost_usd: f64,
}

fn rfc3339(ms: i64) -> String {
    cadre_actors::domain::rfc3339(ms)
}

async fn spend(
    state: &AppState,
    org: &cadre_actors::domain::OrgId,
    agent: Option<&str>,
    period: Period,
    tz: &jiff::tz::TimeZone,
    budget: Limits,
) -> Result<Response, ApiError> {
    let parts = period.parts(tz);
    let (from, to) = match (parts.first(), parts.last()) {
        (Some(f), Some(l)) => (f.0, l.1),
        _ => (0, 0),
    };
    let slots = state
        .store
        .tables()
        .spend_slots(org.as_str(), agent, from, to)
        .await?;
    let mut out: Vec<Part> = parts
        .iter()
        .map(|(s, _)| Part {
            start: rfc3339(*s),
            tokens: 0,
            cost_usd: 0.0,
        })
        .collect();
    let mut micros = vec![0i64; parts.len()];
    for (slot, tokens, cost) in slots {
        if let Some(i) = parts.iter().position(|(s, e)| *s <= slot && slot < *e) {
            out[i].tokens += tokens;
            micros[i] += cost;
        }
    }
    for (p, m) in out.iter_mut().zip(&micros) {
        p.cost_usd = *m as f64 / 1_000_000.0;
    }
    Ok(Json(Spend {
        period: period.to_string(),
        unit: if period.kind == cadre_actors::budget::PeriodKind::Daily {
            "hour"
        } else {
            "day"
        },
        timezone: tz.iana_name().unwrap_or("UTC").to_string(),
        budget,
        tokens: out.iter().map(|p| p.tokens).sum(),
        cost_usd: micros.iter().sum::<i64>() as f64 / 1_000_000.0,
        parts: out,
    })
    .into_response())
}

async fn agent_spend(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = super::agents::agent_id(&id)?;
    let snap = state.cadre.get_agent(&p.org, &id).await?;
    let view = snap.view();
    let tz = state.cadre.standing(&p.org).tz;
    let period = Period::at(SystemClock.now_ms(), view.budget.period, &tz);
    let budget = Limits {
        tokens: view.budget.monthly_tokens,
        cost_usd: view.budget.monthly_cost_usd,
    };
    spend(&state, &p.org, Some(id.as_str()), period, &tz, budget).await
}

async fn org_spend(State(state): State<AppState>, p: Principal) -> Result<Response, ApiError> {
    let standing = state.cadre.standing(&p.org);
    let period = state.cadre.org_period(&p.org);
    let budget = Limits {
        tokens: standing.budget.monthly_tokens,
        cost_usd: standing
            .budget
            .monthly_cost_micros
            .map(|m| m as f64 / 1_000_000.0),
    };
    spend(&state, &p.org, None, period, &standing.tz, budget).await
}

/// The spend routes.
pub fn routes(r: Routes) -> Routes {
    r.add(
        Method::GET,
        "/agents/{id}/spend",
        Action::AgentsRead,
        get(agent_spend),
    )
    .add(
        Method::GET,
        "/orgs/current/spend",
        Action::OrgRead,
        get(org_spend),
    )
}
