//! Login and the `Principal` extractor that guards every other `/api/v1` route.

use super::error::{ApiError, ApiJson};
use super::state::AppState;
use axum::extract::{FromRequestParts, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::routing::post;
use axum::{Json, Router};
use cadre_actors::domain::{OrgId, Who};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// User id.
    pub user_id: String,
    /// Organization.
    pub org: OrgId,
    /// Role (`owner`, `admin`, `member`, `viewer`).
    pub role: String,
}

impl Principal {
    /// As the actors record it.
    pub fn who(&self) -> Who {
        Who::User(self.user_id.clone())
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or_else(|| ApiError::unauthenticated("expected Authorization: Bearer <token>"))?;
        let claims = state
            .jwt
            .verify(token.trim())
            .ok_or_else(|| ApiError::unauthenticated("invalid or expired token"))?;
        Ok(Principal {
            user_id: claims.sub,
            org: OrgId(claims.org),
            role: claims.role,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Serialize)]
struct LoginResponse {
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

async fn login(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    if req.email.len() > 320 || req.password.len() > 1024 {
        return Err(ApiError::invalid("email", "too long"));
    }
    let user = state.store.user_by_email(req.email.trim()).await?;
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| decoy_hash().to_string());
    let password = req.password;
    let ok = tokio::task::spawn_blocking(move || crate::auth::verify_password(&password, &hash))
        .await
        .map_err(ApiError::internal)?;
    let user = match user {
        Some(u) if ok => u,
        _ => {
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "wrong email or password",
            ));
        }
    };
    let token = state
        .jwt
        .issue(&user.id, &user.org_id, &user.role)
        .map_err(ApiError::internal)?;
    Ok(Json(LoginResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: state.jwt.ttl_secs(),
    }))
}

/// `/auth` routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/auth/login", post(login))
}
