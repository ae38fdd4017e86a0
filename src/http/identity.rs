//! Organizations, users, API keys and the audit log.
//!
//! Handlers validate, hash passwords off the async workers, send one message
//! to the identity actor and map the answer. Reads (lists, usage, audit) use
//! the store's read API, always filtered by the principal's organization.

use super::agents::{json_response, page_limit, text};
use super::error::{ApiError, ApiJson, ApiQuery};
use super::guard::org_id;
use super::input;
use super::state::AppState;
use crate::config::Limits;
use crate::identity::actor::{KeySpec, NewOrg, UserSpec, UserUpdate};
use crate::identity::{Credential, Principal};
use crate::store::{AuditFilter, KeyRecord, OrgRow, UserRecord};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cadre_actors::budget::PeriodKind;
use cadre_actors::domain::{OrgId, rfc3339};
use cadre_actors::ports::{Clock, SystemClock};
use serde::Deserialize;
use serde_json::{Value, json};

fn org_json(state: &AppState, row: &OrgRow) -> Value {
    let overrides: Limits = serde_json::from_str(&row.limits).unwrap_or_default();
    let dir = state.identity.directory();
    json!({
        "id": row.id,
        "name": row.name,
        "slug": row.slug,
        "plan": row.plan,
        "suspended": row.suspended_at.is_some(),
        "suspended_at": row.suspended_at.map(rfc3339),
        "created_at": rfc3339(row.created_at),
        "limits": dir.effective_limits(&row.plan, &overrides),
        "limit_overrides": overrides,
        "activity_retention_days": row
            .activity_retention_days
            .unwrap_or(i64::from(state.config.activity.retention_days)),
        "activity_retention_default": row.activity_retention_days.is_none(),
        "timezone": row.timezone,
        "budget_period": row.budget_period,
        "instructions": row.instructions,
        "delegation": row.delegation,
    })
}

fn user_json(u: &UserRecord) -> Value {
    json!({
        "id": u.id,
        "email": u.email,
        "name": u.name,
        "role": u.role,
        "created_at": rfc3339(u.created_at),
    })
}

fn key_json(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "prefix": format!("cadre_{}", k.id),
        "scopes": k.scopes,
        "created_by": k.created_by,
        "created_at": rfc3339(k.created_at),
        "expires_at": k.expires_at.map(rfc3339),
        "last_used_at": k.last_used_at.map(rfc3339),
        "revoked_at": k.revoked_at.map(rfc3339),
        "revoked": k.revoked_at.is_some(),
    })
}

pub(super) fn page<T>(
    mut rows: Vec<T>,
    limit: usize,
    id: impl Fn(&T) -> String,
    json: impl Fn(&T) -> Value,
) -> Response {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().map(&id) } else { None };
    let items: Vec<Value> = rows.iter().map(json).collect();
    Json(json!({ "items": items, "next_cursor": next })).into_response()
}

fn fetch(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(200) + 1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PageParams {
    cursor: Option<String>,
    limit: Option<usize>,
}

impl PageParams {
    /// The validated cursor (id to start after) and page size.
    pub(super) fn window(&self) -> Result<(String, usize), ApiError> {
        Ok((
            input::cursor(self.cursor.as_deref())?,
            page_limit(self.limit)?,
        ))
    }
}

// ---------- organizations ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OwnerIn {
    email: String,
    password: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateOrg {
    name: String,
    slug: String,
    plan: Option<String>,
    owner: OwnerIn,
}

fn plan(state: &AppState, raw: &str) -> Result<String, ApiError> {
    if state.config.plans.limits(raw).is_some() {
        Ok(raw.to_string())
    } else {
        Err(ApiError::invalid(
            "plan",
            "expected free, team, enterprise or self_hosted",
        ))
    }
}

pub(super) async fn create_org(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(body): ApiJson<CreateOrg>,
) -> Result<Response, ApiError> {
    let req = NewOrg {
        name: text("name", &body.name, 200)?,
        slug: input::slug("slug", &body.slug)?,
        plan: plan(&state, body.plan.as_deref().unwrap_or("free"))?,
        owner_email: input::email("owner.email", &body.owner.email)?,
        owner_name: text("owner.name", &body.owner.name, 200)?,
        owner_hash: input::hash(input::password("owner.password", &body.owner.password)?).await?,
    };
    let row = state.identity.create_org(req, p.who()).await?;
    state.cadre.ensure_tenant(&OrgId(row.id.clone())).await?;
    let mut resp = (StatusCode::CREATED, Json(org_json(&state, &row))).into_response();
    if let Ok(loc) = format!("/api/v1/orgs/{}", row.id).parse() {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

pub(super) async fn list_orgs(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    let (after, limit) = q.window()?;
    let rows = state.store.tables().orgs_page(&after, fetch(limit)).await?;
    Ok(page(rows, limit, |r| r.id.clone(), |r| org_json(&state, r)))
}

async fn org_with_usage(state: &AppState, org: &OrgId) -> Result<Value, ApiError> {
    let row = state
        .store
        .tables()
        .org(org.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("organization"))?;
    let period = state.cadre.org_period(org).to_string();
    let usage = state
        .store
        .tables()
        .org_usage(org.as_str(), &period)
        .await?;
    let mut body = org_json(state, &row);
    body["usage"] = json!({
        "period": period,
        "agents": usage.agents,
        "users": usage.users,
        "tokens": usage.tokens,
        "cost_usd": usage.cost_micros as f64 / 1_000_000.0,
    });
    Ok(body)
}

pub(super) async fn current_org(
    State(state): State<AppState>,
    p: Principal,
) -> Result<Response, ApiError> {
    Ok(Json(org_with_usage(&state, &p.org).await?).into_response())
}

pub(super) async fn get_org(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(org_with_usage(&state, &org_id(&id)?).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchOrg {
    plan: Option<String>,
    limits: Option<Limits>,
    /// Days of activity kept; `null` goes back to the configured default.
    #[serde(default, deserialize_with = "super::agents::nullable")]
    activity_retention_days: Option<Option<u32>>,
    /// IANA time zone (budget periods roll over at its midnight).
    timezone: Option<String>,
    /// `daily`, `weekly` or `monthly`.
    budget_period: Option<String>,
    /// The handbook every agent of it is told; `null` removes it.
    #[serde(default, deserialize_with = "super::agents::nullable")]
    instructions: Option<Option<String>>,
    /// `chart` (down the org chart and to peers) or `any`.
    delegation: Option<String>,
}

/// Activity retention an organization may set: a day to ten years.
const RETENTION_DAYS: std::ops::RangeInclusive<u32> = 1..=3650;

pub(super) async fn patch_org(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchOrg>,
) -> Result<Response, ApiError> {
    let org = org_id(&id)?;
    update_org(&state, &p, &org, body).await
}

/// What an organization's owner may change of it: not its plan or limits
/// (an instance admin's), only how it runs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchOwnOrg {
    #[serde(default, deserialize_with = "super::agents::nullable")]
    activity_retention_days: Option<Option<u32>>,
    timezone: Option<String>,
    budget_period: Option<String>,
    #[serde(default, deserialize_with = "super::agents::nullable")]
    instructions: Option<Option<String>>,
    delegation: Option<String>,
}

/// `PATCH /orgs/current`: the owner's settings of their own organization.
pub(super) async fn patch_own_org(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(body): ApiJson<PatchOwnOrg>,
) -> Result<Response, ApiError> {
    if body.activity_retention_days.is_none()
        && body.timezone.is_none()
        && body.budget_period.is_none()
        && body.instructions.is_none()
        && body.delegation.is_none()
    {
        return Err(ApiError::invalid(
            "timezone",
            "nothing to change: give timezone, budget_period, instructions, delegation and/or activity_retention_days",
        ));
    }
    let org = p.org.clone();
    let body = PatchOrg {
        plan: None,
        limits: None,
        activity_retention_days: body.activity_retention_days,
        timezone: body.timezone,
        budget_period: body.budget_period,
        instructions: body.instructions,
        delegation: body.delegation,
    };
    update_org(&state, &p, &org, body).await
}

/// Checks a change of an organization, then makes it (audited).
async fn update_org(
    state: &AppState,
    p: &Principal,
    org: &OrgId,
    body: PatchOrg,
) -> Result<Response, ApiError> {
    let plan = body.plan.as_deref().map(|x| plan(state, x)).transpose()?;
    if let Some(l) = &body.limits
        && l.monthly_cost_usd
            .is_some_and(|c| !c.is_finite() || c < 0.0)
    {
        return Err(ApiError::invalid(
            "limits.monthly_cost_usd",
            "must be a non-negative number",
        ));
    }
    if let Some(Some(days)) = body.activity_retention_days
        && !RETENTION_DAYS.contains(&days)
    {
        return Err(ApiError::invalid(
            "activity_retention_days",
            format!(
                "{} to {} days, or null for the default",
                RETENTION_DAYS.start(),
                RETENTION_DAYS.end()
            ),
        ));
    }
    if let Some(tz) = &body.timezone
        && (tz.len() > 64 || jiff::tz::TimeZone::get(tz).is_err())
    {
        return Err(ApiError::invalid(
            "timezone",
            format!("unknown time zone {tz:?}: use an IANA name such as Europe/Berlin"),
        ));
    }
    let budget_period = body
        .budget_period
        .as_deref()
        .map(|p| {
            PeriodKind::parse(p)
                .ok_or_else(|| ApiError::invalid("budget_period", "one of daily, weekly, monthly"))
        })
        .transpose()?;
    if plan.is_none()
        && body.limits.is_none()
        && body.activity_retention_days.is_none()
        && body.timezone.is_none()
        && budget_period.is_none()
        && body.instructions.is_none()
        && body.delegation.is_none()
    {
        return Err(ApiError::invalid(
            "plan",
            "nothing to change: give plan, limits, activity_retention_days, timezone, budget_period, instructions and/or delegation",
        ));
    }
    if let Some(d) = &body.delegation
        && !matches!(d.as_str(), "chart" | "any")
    {
        return Err(ApiError::invalid(
            "delegation",
            "chart (down the org chart and to peers with the same manager) or any",
        ));
    }
    let instructions = body
        .instructions
        .map(|i| {
            i.map(|t| super::agents::long_text("instructions", &t))
                .transpose()
        })
        .transpose()?;
    let change = crate::identity::OrgChange {
        plan,
        limits: body.limits,
        activity_retention_days: body.activity_retention_days,
        timezone: body.timezone,
        budget_period,
        instructions,
        delegation: body.delegation,
    };
    let row = state.identity.update_org(org, change, p.who()).await?;
    // Lowered monthly limits take effect at once.
    state.cadre.enforce_org_budget(org);
    Ok(Json(org_json(state, &row)).into_response())
}

async fn set_suspended(
    state: AppState,
    p: Principal,
    id: String,
    on: bool,
) -> Result<Response, ApiError> {
    let org = org_id(&id)?;
    if on && org == p.org {
        return Err(ApiError::invalid(
            "id",
            "an instance admin cannot suspend their own organization",
        ));
    }
    let row = state.identity.suspend_org(&org, on, p.who()).await?;
    let stopped = if on {
        state.cadre.stop_org_agents(&org, p.who()).await
    } else {
        0
    };
    let mut body = org_json(&state, &row);
    body["agents_stopped"] = json!(stopped);
    Ok(Json(body).into_response())
}

pub(super) async fn suspend_org(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_suspended(state, p, id, true).await
}

pub(super) async fn resume_org(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_suspended(state, p, id, false).await
}

// ---------- users ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    email: String,
    name: String,
    password: String,
    role: String,
}

pub(super) async fn create_user(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<Response, ApiError> {
    let spec = UserSpec {
        email: input::email("email", &body.email)?,
        name: text("name", &body.name, 200)?,
        role: input::role("role", &body.role)?,
        password_hash: input::hash(input::password("password", &body.password)?).await?,
    };
    let user = state
        .identity
        .create_user(&p.org, spec, p.role, p.who())
        .await?;
    Ok((StatusCode::CREATED, Json(user_json(&user))).into_response())
}

pub(super) async fn list_users(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    let (after, limit) = q.window()?;
    let rows = state
        .store
        .tables()
        .users_page(p.org.as_str(), &after, fetch(limit))
        .await?;
    Ok(page(rows, limit, |u| u.id.clone(), user_json))
}

pub(super) async fn get_user(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = input::path_id("user", &id)?;
    let user = state
        .store
        .tables()
        .user(p.org.as_str(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(Json(user_json(&user)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchUser {
    name: Option<String>,
    role: Option<String>,
    password: Option<String>,
}

pub(super) async fn patch_user(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchUser>,
) -> Result<Response, ApiError> {
    let id = input::path_id("user", &id)?;
    let up = UserUpdate {
        name: body
            .name
            .as_deref()
            .map(|n| text("name", n, 200))
            .transpose()?,
        role: body
            .role
            .as_deref()
            .map(|r| input::role("role", r))
            .transpose()?,
        password_hash: match body.password.as_deref() {
            Some(pw) => Some(input::hash(input::password("password", pw)?).await?),
            None => None,
        },
    };
    if up.name.is_none() && up.role.is_none() && up.password_hash.is_none() {
        return Err(ApiError::invalid(
            "name",
            "nothing to change: give name, role and/or password",
        ));
    }
    let user = state
        .identity
        .update_user(&p.org, &id, up, p.role, p.who())
        .await?;
    Ok(Json(user_json(&user)).into_response())
}

pub(super) async fn delete_user(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = input::path_id("user", &id)?;
    state
        .identity
        .delete_user(&p.org, &id, p.role, p.who())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---------- API keys ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
    name: String,
    scopes: Vec<String>,
    expires_at: Option<String>,
}

pub(super) async fn create_key(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<Response, ApiError> {
    let spec = KeySpec {
        name: text("name", &body.name, 200)?,
        scopes: input::scopes("scopes", &body.scopes)?,
        expires_at: body
            .expires_at
            .as_deref()
            .map(|t| input::future_time("expires_at", t, SystemClock.now_ms()))
            .transpose()?,
    };
    let creator = match &p.credential {
        Credential::User { user_id, .. } => user_id.clone(),
        Credential::ApiKey { created_by, .. } => created_by.clone(),
    };
    let (rec, plain) = state
        .identity
        .create_key(&p.org, spec, &creator, p.role, p.who())
        .await?;
    let mut body = key_json(&rec);
    body["key"] = json!(plain);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub(super) async fn list_keys(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<PageParams>,
) -> Result<Response, ApiError> {
    let (after, limit) = q.window()?;
    let rows = state
        .store
        .tables()
        .keys_page(p.org.as_str(), &after, fetch(limit))
        .await?;
    Ok(page(rows, limit, |k| k.id.clone(), key_json))
}

pub(super) async fn revoke_key(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = input::path_id("api key", &id)?;
    let rec = state.identity.revoke_key(&p.org, &id, p.who()).await?;
    Ok(Json(key_json(&rec)).into_response())
}

// ---------- audit ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditParams {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

impl AuditParams {
    fn filter(&self) -> Result<AuditFilter, ApiError> {
        let short = |name: &str, v: &Option<String>| -> Result<Option<String>, ApiError> {
            match v {
                Some(s) if s.len() > 200 => Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("{name} is too long"),
                )),
                other => Ok(other.clone()),
            }
        };
        Ok(AuditFilter {
            actor: short("actor", &self.actor)?,
            action: short("action", &self.action)?,
            target: short("target", &self.target)?,
            before: match self.cursor.as_deref() {
                None => None,
                Some(c) => Some(c.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "invalid cursor")
                })?),
            },
        })
    }
}

pub(super) async fn audit(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit)?;
    let rows = state
        .store
        .tables()
        .audit_page(p.org.as_str(), &q.filter()?, fetch(limit))
        .await?;
    let more = rows.len() > limit;
    let rows: Vec<_> = rows.into_iter().take(limit).collect();
    let next = if more {
        rows.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(Json(json!({ "items": rows, "next_cursor": next })).into_response())
}

/// Export as JSON lines, newest first, in pages of 1,000 (bounded memory).
pub(super) async fn audit_export(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<Response, ApiError> {
    let mut filter = q.filter()?;
    let mut out = String::new();
    loop {
        let rows = state
            .store
            .tables()
            .audit_page(p.org.as_str(), &filter, 1000)
            .await?;
        for r in &rows {
            out.push_str(&serde_json::to_string(r).map_err(ApiError::internal)?);
            out.push('\n');
        }
        match rows.last() {
            Some(last) if rows.len() == 1000 => filter.before = Some(last.id),
            _ => break,
        }
    }
    let mut resp = json_response(StatusCode::OK, out);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        axum::http::HeaderValue::from_static("attachment; filename=\"audit.jsonl\""),
    );
    Ok(resp)
}
