//! Governance routes: the catalog (`/tools`, `/skills`), permission profiles
//! (`/profiles`), approval policies (`/approval-policies`), approval
//! requests (`/approvals`), grants (`/grants`) and the kill switch (`/halt`).
//!
//! Changes go to the organization's approval actor (documents, decisions,
//! grants) or through the actor tree's kill switch; lists are store reads.

use super::error::{ApiError, ApiJson, ApiQuery};
use super::guard::Routes;
use super::identity::page;
use super::state::AppState;
use crate::identity::{Action, Credential, Principal};
use crate::store::ApprovalFilter;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use cadre_actors::approval::{ApprovalRecord, Decider, Decision, Doc, GrantScope};
use cadre_actors::domain::{AgentId, rfc3339};
use cadre_actors::governance::{
    HaltScope, PolicyDef, ProfileDef, SideEffect, ToolDef, valid_id, validate_profile,
};
use serde::Deserialize;
use serde_json::{Value, json};

fn name(raw: &str, field: &str) -> Result<String, ApiError> {
    if valid_id(raw) {
        Ok(raw.to_string())
    } else {
        Err(ApiError::invalid(field, "1-100 of a-z 0-9 _ . -"))
    }
}

fn tool_json(t: &ToolDef, own: bool) -> Value {
    json!({
        "id": t.id,
        "skill": t.skill,
        "description": t.description,
        "risk": t.risk,
        "side_effects": t.side_effects,
        "source": if own { "organization" } else { "catalog" },
    })
}

async fn list_tools(State(state): State<AppState>, p: Principal) -> Response {
    let gov = state.cadre.governance().org(&p.org);
    let items: Vec<Value> = gov
        .tools
        .iter()
        .map(|t| tool_json(t, gov.docs.tools.contains_key(&t.id)))
        .collect();
    Json(json!({ "items": items })).into_response()
}

async fn list_skills(State(state): State<AppState>, p: Principal) -> Response {
    let gov = state.cadre.governance().org(&p.org);
    let items: Vec<Value> = gov
        .skills
        .iter()
        .map(|s| {
            let tools: Vec<&str> = gov
                .tools
                .iter()
                .filter(|t| t.skill == s.id)
                .map(|t| t.id.as_str())
                .collect();
            json!({ "id": s.id, "description": s.description, "tools": tools })
        })
        .collect();
    Json(json!({ "items": items })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolIn {
    skill: String,
    #[serde(default)]
    description: String,
    risk: cadre_actors::governance::Risk,
    #[serde(default)]
    side_effects: Vec<SideEffect>,
}

async fn put_tool(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ToolIn>,
) -> Result<Response, ApiError> {
    let id = name(&id, "id")?;
    let skill = name(&body.skill, "skill")?;
    if body.description.len() > 1000 {
        return Err(ApiError::invalid("description", "at most 1000 characters"));
    }
    let tool = ToolDef {
        id: id.clone(),
        skill,
        description: body.description,
        risk: body.risk,
        side_effects: body.side_effects,
    };
    save(
        &state,
        &p,
        "tool",
        &id,
        Doc::Tool(tool.clone()),
        tool_json(&tool, true),
    )
    .await
}

/// Creates or replaces a document through the approval actor: 201 when it
/// is new, 200 when it replaced one; `view` is the body answered.
async fn save(
    state: &AppState,
    p: &Principal,
    kind: &'static str,
    name: &str,
    doc: Doc,
    view: Value,
) -> Result<Response, ApiError> {
    let existed = state
        .cadre
        .put_doc(&p.org, kind, name, Some(doc), p.who())
        .await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view)).into_response())
}

async fn delete_doc(
    state: &AppState,
    p: &Principal,
    kind: &'static str,
    raw: &str,
) -> Result<Response, ApiError> {
    let n = name(raw, "name")?;
    state.cadre.put_doc(&p.org, kind, &n, None, p.who()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn delete_tool(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    delete_doc(&state, &p, "tool", &id).await
}

fn profile_json(name: &str, def: &ProfileDef, own: bool) -> Value {
    let mut v = serde_json::to_value(def).unwrap_or(Value::Null);
    v["name"] = json!(name);
    v["source"] = json!(if own { "organization" } else { "preset" });
    v
}

async fn list_profiles(State(state): State<AppState>, p: Principal) -> Response {
    let gov = state.cadre.governance().org(&p.org);
    let mut names: Vec<&String> = gov.profiles.keys().collect();
    names.sort();
    let items: Vec<Value> = names
        .into_iter()
        .filter_map(|n| gov.profiles.get(n))
        .map(|pr| profile_json(&pr.name, &pr.def, gov.docs.profiles.contains_key(&pr.name)))
        .collect();
    Json(json!({ "items": items, "default": state.cadre.governance().default_profile() }))
        .into_response()
}

async fn get_profile(
    State(state): State<AppState>,
    p: Principal,
    Path(n): Path<String>,
) -> Result<Response, ApiError> {
    let gov = state.cadre.governance().org(&p.org);
    let pr = gov
        .profiles
        .get(&n)
        .ok_or_else(|| ApiError::not_found("profile"))?;
    Ok(Json(profile_json(
        &pr.name,
        &pr.def,
        gov.docs.profiles.contains_key(&n),
    ))
    .into_response())
}

async fn put_profile(
    State(state): State<AppState>,
    p: Principal,
    Path(n): Path<String>,
    ApiJson(body): ApiJson<ProfileDef>,
) -> Result<Response, ApiError> {
    let n = name(&n, "name")?;
    if state.cadre.governance().base().profiles.contains_key(&n) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "preset",
            format!("{n} is a preset; give your profile another name"),
        ));
    }
    validate_profile(&body).map_err(|e| ApiError::invalid("profile", e))?;
    save(
        &state,
        &p,
        "profile",
        &n,
        Doc::Profile(body.clone()),
        profile_json(&n, &body, true),
    )
    .await
}

async fn delete_profile(
    State(state): State<AppState>,
    p: Principal,
    Path(n): Path<String>,
) -> Result<Response, ApiError> {
    delete_doc(&state, &p, "profile", &n).await
}

fn policy_json(name: &str, def: &PolicyDef) -> Value {
    let mut v = serde_json::to_value(def).unwrap_or(Value::Null);
    v["name"] = json!(name);
    v
}

async fn list_policies(State(state): State<AppState>, p: Principal) -> Response {
    let gov = state.cadre.governance().org(&p.org);
    let items: Vec<Value> = gov
        .docs
        .policies
        .iter()
        .map(|(n, d)| policy_json(n, d))
        .collect();
    Json(json!({
        "items": items,
        "default": policy_json("default", state.cadre.governance().default_policy()),
    }))
    .into_response()
}

async fn put_policy(
    State(state): State<AppState>,
    p: Principal,
    Path(n): Path<String>,
    ApiJson(body): ApiJson<PolicyDef>,
) -> Result<Response, ApiError> {
    let n = name(&n, "name")?;
    body.validate()
        .map_err(|e| ApiError::invalid("policy", e))?;
    save(
        &state,
        &p,
        "policy",
        &n,
        Doc::Policy(body.clone()),
        policy_json(&n, &body),
    )
    .await
}

async fn delete_policy(
    State(state): State<AppState>,
    p: Principal,
    Path(n): Path<String>,
) -> Result<Response, ApiError> {
    delete_doc(&state, &p, "policy", &n).await
}

/// An approval request as the API shows it.
pub fn approval_json(a: &ApprovalRecord) -> Value {
    let level = a.levels.get(a.level as usize);
    json!({
        "id": a.id,
        "agent_id": a.agent_id,
        "call_id": a.call_id,
        "tool": a.tool,
        "arguments": a.arguments,
        "args_hash": a.args_hash,
        "trigger": a.trigger,
        "policy": a.policy,
        "level": a.level,
        "levels": a.levels,
        "approvers": level.map(|l| &l.approvers),
        "required": level.map(|l| l.required),
        "approvals": a.votes.iter().filter(|v| v.approve).count(),
        "votes": a.votes,
        "state": a.state,
        "approved": a.approved(),
        "requested_by": a.requested_by,
        "created_at": rfc3339(a.created_at),
        "expires_at": rfc3339(a.expires_at),
        "decided_by": a.decided_by,
        "decided_at": a.decided_at.map(rfc3339),
        "comment": a.comment,
        "grant_id": a.grant_id,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalParams {
    state: Option<String>,
    agent_id: Option<String>,
    tool: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list_approvals(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<ApprovalParams>,
) -> Result<Response, ApiError> {
    if let Some(s) = &q.state
        && s != "decided"
        && cadre_actors::approval::ApprovalState::parse(s).is_none()
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "state: one of pending, approved, denied, expired, cancelled, decided (all but pending)",
        ));
    }
    let limit = super::agents::page_limit(q.limit)?;
    let cursor = super::input::cursor(q.cursor.as_deref())?;
    let filter = ApprovalFilter {
        state: q.state,
        agent: q.agent_id,
        tool: q.tool,
        before: (!cursor.is_empty()).then_some(cursor),
    };
    let rows = state
        .store
        .tables()
        .approvals_page(
            p.org.as_str(),
            &filter,
            i64::try_from(limit).unwrap_or(200) + 1,
        )
        .await?;
    Ok(page(rows, limit, |a| a.id.clone(), approval_json))
}

async fn get_approval(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let a = state
        .store
        .gov()
        .approval(&p.org, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("approval"))?;
    Ok(Json(approval_json(&a)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeIn {
    /// `call` (default) or `same_arguments`.
    #[serde(rename = "type")]
    kind: String,
    /// For `same_arguments`: how long (1 s to 30 days).
    for_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideIn {
    /// `approve` or `deny`.
    decision: String,
    comment: Option<String>,
    scope: Option<ScopeIn>,
}

async fn decide(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<DecideIn>,
) -> Result<Response, ApiError> {
    let approve = match body.decision.as_str() {
        "approve" => true,
        "deny" => false,
        _ => return Err(ApiError::invalid("decision", "approve or deny")),
    };
    if body.comment.as_ref().is_some_and(|c| c.len() > 4000) {
        return Err(ApiError::invalid("comment", "at most 4000 characters"));
    }
    let scope = match body.scope {
        None => GrantScope::Call,
        Some(s) if s.kind == "call" && s.for_seconds.is_none() => GrantScope::Call,
        Some(s) if s.kind == "same_arguments" => match s.for_seconds {
            Some(secs) if (1..=30 * 86_400).contains(&secs) => GrantScope::SameArguments {
                for_ms: i64::try_from(secs * 1000).unwrap_or(i64::MAX),
            },
            _ => {
                return Err(ApiError::invalid(
                    "scope.for_seconds",
                    "1 to 2592000 seconds for a same_arguments grant",
                ));
            }
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "scope.type",
                "call, or same_arguments with for_seconds",
            ));
        }
    };
    if scope != GrantScope::Call && !approve {
        return Err(ApiError::invalid("scope", "only an approval can be scoped"));
    }
    // The decider is the authenticated principal, never a name in the body.
    let decider = Decider {
        id: match &p.credential {
            Credential::User { user_id, .. } => user_id.clone(),
            Credential::ApiKey { key_id, .. } => key_id.clone(),
        },
        role: p.role.as_str().to_string(),
        who: p.who(),
    };
    let decision = Decision {
        approve,
        comment: body.comment,
        scope,
    };
    let a = state.cadre.decide(&p.org, &id, decision, decider).await?;
    Ok(Json(approval_json(&a)).into_response())
}

async fn cancel(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let a = state.cadre.cancel_approval(&p.org, &id, p.who()).await?;
    Ok(Json(approval_json(&a)).into_response())
}

async fn list_grants(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<super::identity::PageParams>,
) -> Result<Response, ApiError> {
    let (cursor, limit) = q.window()?;
    let rows = state
        .store
        .tables()
        .grants_page(
            p.org.as_str(),
            (!cursor.is_empty()).then_some(cursor.as_str()),
            i64::try_from(limit).unwrap_or(200) + 1,
        )
        .await?;
    let now = crate::activity::now_ms();
    Ok(page(
        rows,
        limit,
        |(g, _)| g.id.clone(),
        |(g, revoked)| {
            json!({
                "id": g.id,
                "agent_id": g.agent_id,
                "tool": g.tool,
                "args_hash": g.args_hash,
                "approval_id": g.approval_id,
                "granted_by": g.granted_by,
                "created_at": rfc3339(g.created_at),
                "expires_at": rfc3339(g.expires_at),
                "revoked_at": revoked.map(rfc3339),
                "live": revoked.is_none() && g.expires_at > now,
            })
        },
    ))
}

async fn revoke_grant(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.cadre.revoke_grant(&p.org, &id, p.who()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HaltIn {
    /// `agent`, `org` or `instance`.
    scope: String,
    agent_id: Option<String>,
    reason: Option<String>,
}

fn halt_scope(
    state: &AppState,
    p: &Principal,
    scope: &str,
    agent: Option<&str>,
) -> Result<HaltScope, ApiError> {
    match (scope, agent) {
        ("agent", Some(a)) => {
            let id = super::agents::agent_id(a)?;
            if !state.cadre.has_agent(&p.org, &id) {
                return Err(ApiError::not_found("agent"));
            }
            Ok(HaltScope::Agent(p.org.clone(), AgentId(id.0)))
        }
        ("agent", None) => Err(ApiError::invalid("agent_id", "required for scope agent")),
        ("org", None) => Ok(HaltScope::Org(p.org.clone())),
        ("instance", None) => match &p.credential {
            Credential::User {
                instance_admin: true,
                ..
            } => Ok(HaltScope::Instance),
            _ => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only an instance admin may halt the instance",
            )),
        },
        (_, Some(_)) => Err(ApiError::invalid("agent_id", "only for scope agent")),
        _ => Err(ApiError::invalid("scope", "agent, org or instance")),
    }
}

fn halts_json(state: &AppState, p: &Principal) -> Value {
    let g = state.cadre.governance();
    json!({
        "instance": g.is_halted(&HaltScope::Instance),
        "org": g.is_halted(&HaltScope::Org(p.org.clone())),
    })
}

async fn halt_on(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(body): ApiJson<HaltIn>,
) -> Result<Response, ApiError> {
    let scope = halt_scope(&state, &p, &body.scope, body.agent_id.as_deref())?;
    let reason = body.reason.unwrap_or_else(|| "kill switch".into());
    if reason.len() > 1000 {
        return Err(ApiError::invalid("reason", "at most 1000 characters"));
    }
    state.cadre.set_halt(scope, Some(reason), p.who()).await?;
    Ok(Json(halts_json(&state, &p)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HaltQuery {
    scope: String,
    agent_id: Option<String>,
}

async fn halt_off(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<HaltQuery>,
) -> Result<Response, ApiError> {
    let scope = halt_scope(&state, &p, &q.scope, q.agent_id.as_deref())?;
    state.cadre.set_halt(scope, None, p.who()).await?;
    Ok(Json(halts_json(&state, &p)).into_response())
}

async fn halt_get(State(state): State<AppState>, p: Principal) -> Response {
    Json(halts_json(&state, &p)).into_response()
}

/// Governance routes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretIn {
    value: String,
}

fn secret_json(name: &str, updated_at: i64) -> Value {
    json!({ "name": name, "updated_at": rfc3339(updated_at) })
}

/// Sets a secret: the value is sealed here and never returned, listed,
/// logged or audited (the audit entry names the secret only).
async fn put_secret(
    State(state): State<AppState>,
    p: Principal,
    Path(n): Path<String>,
    ApiJson(body): ApiJson<SecretIn>,
) -> Result<Response, ApiError> {
    let n = name(&n, "name")?;
    if body.value.is_empty() || body.value.len() > 16 * 1024 {
        return Err(ApiError::invalid("value", "1 to 16384 bytes"));
    }
    let sealed = state
        .sealer
        .seal(p.org.as_str(), &body.value)
        .map_err(|e| ApiError::internal(&e))?;
    let at = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let doc = Doc::Secret(cadre_actors::governance::SecretDoc {
        sealed,
        updated_at: at,
    });
    save(&state, &p, "secret", &n, doc, secret_json(&n, at)).await
}

async fn list_secrets(State(state): State<AppState>, p: Principal) -> Response {
    let gov = state.cadre.governance().org(&p.org);
    let items: Vec<Value> = gov
        .docs
        .secrets
        .iter()
        .map(|(n, s)| secret_json(n, s.updated_at))
        .collect();
    Json(json!({ "items": items })).into_response()
}

async fn delete_secret(
    State(state): State<AppState>,
    p: Principal,
    Path(n): Path<String>,
) -> Result<Response, ApiError> {
    delete_doc(&state, &p, "secret", &n).await
}

pub fn routes(r: Routes) -> Routes {
    r.add(Method::GET, "/tools", Action::AgentsRead, get(list_tools))
        .add(
            Method::GET,
            "/secrets",
            Action::GovernanceWrite,
            get(list_secrets),
        )
        .add(
            Method::PUT,
            "/secrets/{name}",
            Action::GovernanceWrite,
            put(put_secret),
        )
        .add(
            Method::DELETE,
            "/secrets/{name}",
            Action::GovernanceWrite,
            delete(delete_secret),
        )
        .add(
            Method::PUT,
            "/tools/{id}",
            Action::GovernanceWrite,
            put(put_tool),
        )
        .add(
            Method::DELETE,
            "/tools/{id}",
            Action::GovernanceWrite,
            delete(delete_tool),
        )
        .add(Method::GET, "/skills", Action::AgentsRead, get(list_skills))
        .add(
            Method::GET,
            "/profiles",
            Action::AgentsRead,
            get(list_profiles),
        )
        .add(
            Method::GET,
            "/profiles/{name}",
            Action::AgentsRead,
            get(get_profile),
        )
        .add(
            Method::PUT,
            "/profiles/{name}",
            Action::GovernanceWrite,
            put(put_profile),
        )
        .add(
            Method::DELETE,
            "/profiles/{name}",
            Action::GovernanceWrite,
            delete(delete_profile),
        )
        .add(
            Method::GET,
            "/approval-policies",
            Action::AgentsRead,
            get(list_policies),
        )
        .add(
            Method::PUT,
            "/approval-policies/{name}",
            Action::GovernanceWrite,
            put(put_policy),
        )
        .add(
            Method::DELETE,
            "/approval-policies/{name}",
            Action::GovernanceWrite,
            delete(delete_policy),
        )
        .add(
            Method::GET,
            "/approvals",
            Action::AgentsRead,
            get(list_approvals),
        )
        .add(
            Method::GET,
            "/approvals/{id}",
            Action::AgentsRead,
            get(get_approval),
        )
        .add(
            Method::POST,
            "/approvals/{id}/decide",
            Action::ApprovalsDecide,
            post(decide),
        )
        .add(
            Method::POST,
            "/approvals/{id}/cancel",
            Action::GovernanceWrite,
            post(cancel),
        )
        .add(Method::GET, "/grants", Action::AgentsRead, get(list_grants))
        .add(
            Method::DELETE,
            "/grants/{id}",
            Action::ApprovalsDecide,
            delete(revoke_grant),
        )
        .add(Method::GET, "/halt", Action::AgentsRead, get(halt_get))
        .add(Method::POST, "/halt", Action::OrgOwner, post(halt_on))
        .add(Method::DELETE, "/halt", Action::OrgOwner, delete(halt_off))
}
