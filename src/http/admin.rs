//! Operator tools: the chaos hook (only with `chaos.enabled = true`) and
//! the instance admin's unlock of an email's login locks.

use super::error::{ApiError, ApiJson};
use super::guard::Routes;
use super::state::AppState;
use crate::identity::{Action, Principal};
use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cadre_actors::domain::AgentId;
use cadre_actors::{ChaosMode, ChaosTarget};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KillRequest {
    target: String,
    id: String,
    #[serde(default)]
    mode: Option<String>,
}

async fn kill(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<KillRequest>,
) -> Result<Response, ApiError> {
    if !state.config.chaos.enabled {
        return Err(ApiError::not_found("route"));
    }
    let target = match req.target.as_str() {
        "agent" => ChaosTarget::Agent,
        "tenant" => ChaosTarget::Tenant,
        "approvals" => ChaosTarget::Approvals,
        other => {
            return Err(ApiError::invalid(
                "target",
                format!("expected \"agent\", \"tenant\" or \"approvals\", got {other:?}"),
            ));
        }
    };
    let mode = match req.mode.as_deref() {
        None | Some("kill") => ChaosMode::Kill,
        Some("panic") => ChaosMode::Panic,
        Some(other) => {
            return Err(ApiError::invalid(
                "mode",
                format!("expected \"kill\" or \"panic\", got {other:?}"),
            ));
        }
    };
    // Owners may only break their own organization.
    let own = match target {
        ChaosTarget::Agent => state
            .cadre
            .org_of(&AgentId(req.id.clone()))
            .is_some_and(|o| o == principal.org),
        ChaosTarget::Tenant | ChaosTarget::Approvals => req.id == principal.org.as_str(),
    };
    if !own {
        return Err(ApiError::not_found(&req.target));
    }
    state.cadre.chaos(target, &req.id, mode)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "target": req.target, "id": req.id })),
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnlockRequest {
    email: String,
}

/// What an unlock did.
#[derive(serde::Serialize)]
struct Unlocked {
    email: String,
    /// Whether a lock was in force.
    was_locked: bool,
}

/// Lifts every login lock of an email (the instance admin's; audited).
async fn unlock(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<UnlockRequest>,
) -> Result<Response, ApiError> {
    let email = super::input::email("email", &req.email)?;
    let was_locked = state
        .identity
        .unlock(&email, &principal.org, principal.who())
        .await?;
    Ok(Json(Unlocked { email, was_locked }).into_response())
}

/// `/admin` routes.
pub fn routes(r: Routes) -> Routes {
    r.add(
        Method::POST,
        "/admin/chaos/kill",
        Action::OrgOwner,
        post(kill),
    )
    .add(
        Method::POST,
        "/admin/unlock",
        Action::InstanceAdmin,
        post(unlock),
    )
}
