//! Sessions: login, refresh (cookie), logout and `/me`.
//!
//! Login answers a short-lived access token in the body and sets the refresh
//! token as an HttpOnly, SameSite=Strict cookie scoped to `/api/v1/auth`
//! (Secure behind TLS). Refresh rotates the cookie; a reused refresh token
//! revokes its whole family. Failed logins lock an email (known or not, so
//! the answer never tells whether it exists).

use super::error::{ApiError, ApiJson};
use super::guard::RequestCtx;
use super::state::AppState;
use crate::identity::{Credential, Principal};
use crate::store::UserRecord;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cadre_actors::domain::{Party, Who};
use cadre_actors::ports::{Clock, SystemClock};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Name of the refresh cookie.
pub const REFRESH_COOKIE: &str = "cadre_refresh";
const COOKIE_PATH: &str = "/api/v1/auth";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

/// A hash to verify against when the email is unknown, so that a missing user
/// takes as long as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY
        .get_or_init(|| crate::auth::hash_password("decoy password for timing").unwrap_or_default())
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "wrong email or password",
    )
}

fn locked(until_ms: i64, now_ms: i64) -> Response {
    let secs = ((until_ms - now_ms).max(0) + 999) / 1000;
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "login_locked",
        format!("too many failed sign-ins for this email; retry in {secs} s"),
    )
    .with("retry_after_secs", serde_json::json!(secs.max(1)))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

fn cookie(state: &AppState, value: &str, max_age: u64) -> Option<HeaderValue> {
    let secure = if state.config.cookie_secure() {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{REFRESH_COOKIE}={value}; Path={COOKIE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

fn refresh_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == REFRESH_COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty() && v.len() <= 256)
}

fn session_response(
    state: &AppState,
    user: &str,
    org: &str,
    role: &str,
    sid: &str,
    refresh: &str,
) -> Result<Response, ApiError> {
    let token = state
        .jwt
        .issue(user, org, role, sid)
        .map_err(ApiError::internal)?;
    let mut resp = Json(TokenResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: state.jwt.ttl_secs(),
    })
    .into_response();
    if let Some(c) = cookie(state, refresh, state.config.auth.refresh_ttl_secs) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

pub(super) async fn login(
    State(state): State<AppState>,
    ctx: RequestCtx,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    if req.email.len() > 320 || req.password.len() > 1024 {
        return Err(ApiError::invalid("email", "too long"));
    }
    let email = req.email.trim().to_lowercase();
    let now = SystemClock.now_ms();
    let client = ctx.client.to_string();
    if let Some(until) = state
        .store
        .tables()
        .login_lock(&email, &client, now)
        .await?
    {
        return Ok(locked(until, now));
    }
    let user: Option<UserRecord> = state.store.tables().user_record_by_email(&email).await?;
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| decoy_hash().to_string());
    let password = req.password;
    // Argon2 runs on the blocking pool: a storm of logins never stalls the
    // async workers that serve every other request.
    let ok = tokio::task::spawn_blocking(move || crate::auth::verify_password(&password, &hash))
        .await
        .map_err(ApiError::internal)?;
    let Some(user) = user.filter(|_| ok) else {
        return match state.identity.login_failed(&email, &client).await? {
            Some(until) => Ok(locked(until, now)),
            None => Err(invalid_credentials()),
        };
    };
    let org = cadre_actors::domain::OrgId(user.org_id.clone());
    if state.identity.directory().suspended(&org) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "org_suspended",
            "the organization is suspended",
        ));
    }
    let who = Who {
        party: Party::User(user.id.clone()),
        request_id: Some(ctx.id),
        client: Some(ctx.client.to_string()),
    };
    let (id, org_id, role) = (user.id.clone(), user.org_id.clone(), user.role.clone());
    let session = state.identity.login_succeeded(&email, user, who).await?;
    session_response(
        &state,
        &id,
        &org_id,
        &role,
        &session.family,
        &session.refresh_token,
    )
}

pub(super) async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = refresh_cookie(&headers)
        .ok_or_else(|| ApiError::unauthenticated("missing refresh cookie; sign in again"))?;
    let session = state.identity.refresh(&token).await.map_err(|e| match e {
        crate::identity::IdentityError::Unavailable(_) => ApiError::from(e),
        _ => ApiError::unauthenticated("invalid, expired or revoked refresh token; sign in again"),
    })?;
    let dir = state.identity.directory();
    let user = dir
        .user(&session.user_id)
        .ok_or_else(|| ApiError::unauthenticated("the user no longer exists"))?;
    if dir.suspended(&user.org) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "org_suspended",
            "the organization is suspended",
        ));
    }
    session_response(
        &state,
        &session.user_id,
        user.org.as_str(),
        user.role.as_str(),
        &session.family,
        &session.refresh_token,
    )
}

pub(super) async fn logout(
    State(state): State<AppState>,
    ctx: RequestCtx,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = refresh_cookie(&headers) {
        let who = Who {
            party: Party::System,
            request_id: Some(ctx.id),
            client: Some(ctx.client.to_string()),
        };
        state.identity.logout(&token, who).await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if let Some(c) = cookie(&state, "", 0) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(resp)
}

pub(super) async fn me(State(state): State<AppState>, p: Principal) -> Result<Response, ApiError> {
    let org = state.identity.directory().org(&p.org);
    let (kind, id, user, scopes) = match &p.credential {
        Credential::User {
            user_id,
            instance_admin,
        } => {
            let u = state.store.tables().user(p.org.as_str(), user_id).await?;
            (
                "user",
                user_id.clone(),
                u.map(|u| serde_json::json!({ "email": u.email, "name": u.name, "instance_admin": instance_admin })),
                None,
            )
        }
        Credential::ApiKey { key_id, scopes, .. } => (
            "api_key",
            key_id.clone(),
            None,
            Some(scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
        ),
    };
    Ok(Json(serde_json::json!({
        "kind": kind,
        "id": id,
        "role": p.role,
        "user": user,
        "scopes": scopes,
        "org": org.map(|o| serde_json::json!({ "id": o.row.id, "name": o.row.name, "slug": o.row.slug, "plan": o.row.plan })),
    }))
    .into_response())
}
