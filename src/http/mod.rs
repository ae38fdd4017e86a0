//! The HTTP surface: routes, fallbacks, limits and request metrics.
//!
//! Handlers only authenticate, validate, send one message to the actor tree
//! (or read history from the store) and map the answer.

pub mod activity;
pub mod admin;
pub mod agents;
pub mod auth;
mod chart;
mod chat;
pub mod dashboard;
pub mod error;
mod governance;
pub mod guard;
pub mod identity;
pub mod input;
pub mod knowledge;
pub mod runtime;
pub mod schedules;
mod spend;
pub mod state;
pub mod tasks;
mod versions;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use error::ApiError;
use state::AppState;
use std::time::{Duration, Instant};

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    // A server that does not answer (down, not refusing) would hold the
    // probe for the pool's acquire timeout; a probe wants an answer.
    let store = matches!(
        tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await,
        Ok(Ok(()))
    );
    let supervisors = state.cadre.is_ready().await;
    let activity = state.activity.healthy();
    let status = if store && supervisors && activity {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if status == StatusCode::OK { "ready" } else { "unavailable" },
        "checks": { "store": store, "supervisors": supervisors, "activity_writer": activity },
    });
    (status, Json(body)).into_response()
}

/// `/metrics`, with `metrics.token` when one is configured. Gauges that
/// are read rather than pushed (agents by state, actor mailboxes) are
/// refreshed here, at scrape time.
async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<String, ApiError> {
    let want = &state.config.metrics.token;
    if !want.is_empty() {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !cadre_actors::ports::constant_time_eq(given, want) {
            return Err(ApiError::unauthenticated(
                "/metrics needs Authorization: Bearer <metrics.token>",
            ));
        }
    }
    state.cadre.record_gauges();
    record_agent_states(&state).await;
    Ok(state.metrics.render())
}

/// Sets `cadre_agents{org,state}` from the store, and zero for the pairs
/// reported before that have no agent now (a gauge that vanished would
/// keep its last value in Prometheus until it went stale).
async fn record_agent_states(state: &AppState) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static SEEN: OnceLock<Mutex<HashSet<(String, String)>>> = OnceLock::new();
    let counts = match state.store.tables().agent_state_counts().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "agents by state not readable for /metrics");
            return;
        }
    };
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let now: HashSet<(String, String)> = counts
        .iter()
        .map(|(o, s, _)| (o.clone(), s.clone()))
        .collect();
    for (org, st) in seen.difference(&now) {
        metrics::gauge!("cadre_agents", "org" => org.clone(), "state" => st.clone()).set(0.0);
    }
    for (org, st, n) in counts {
        metrics::gauge!("cadre_agents", "org" => org, "state" => st).set(n as f64);
    }
    seen.extend(now);
}

/// The router of a separate metrics listener (`metrics.listen`).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// Only the runtimes' connect route (`/api/v1/runtime/connect`), for a
/// listener on an address that containers can reach while the API itself
/// listens on loopback only: nothing else of the API is served there.
pub fn runtime_router(state: AppState) -> Router {
    let api = runtime::routes(guard::Routes::new(state.clone())).into_router();
    Router::new()
        .nest("/api/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(track))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::context,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Counts requests and their latency by route template (never by raw path,
/// which would explode label cardinality), and writes the access log.
async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let ctx = req.extensions().get::<guard::RequestCtx>().cloned();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let code = resp.status().as_u16();
    tracing::info!(
        target: "cadre::access",
        method = %method,
        path = %path,
        status = code,
        micros = start.elapsed().as_micros() as u64,
        request_id = ctx.as_ref().map(|c| c.id.as_str()).unwrap_or(""),
        client = %ctx.as_ref().map(|c| c.client.to_string()).unwrap_or_default(),
        "request"
    );
    let status = code.to_string();
    metrics::counter!("cadre_http_requests_total", "method" => method.clone(), "path" => path.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("cadre_http_request_duration_seconds", "method" => method, "path" => path)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// Answers 413 at once when a request declares (`Content-Length`) a body
/// larger than `server.max_body_bytes`, instead of waiting for a body that
/// would be refused anyway (or for the request timeout, when none comes).
async fn declared_size(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        let mut resp = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is too large (at most {limit} bytes, server.max_body_bytes)"),
        )
        .into_response();
        // The body is not read: the connection cannot carry another request.
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return resp;
    }
    next.run(req).await
}

/// Answers `503 request_timeout` when a request takes longer than
/// `http.request_timeout_ms` (a slow client's body included). Work an actor
/// already accepted goes on; only the wait ends, so the caller should read
/// the resource's state before retrying.
async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            format!(
                "the request took longer than {} ms; retry it",
                limit.as_millis()
            ),
        )
        .into_response(),
    }
}

/// Every `/api/v1` route with the action it performs.
pub fn api_routes(state: &AppState) -> guard::Routes {
    use crate::identity::Action as A;
    use axum::http::Method as M;
    use axum::routing::{delete, patch, post};
    let r = guard::Routes::new(state.clone())
        .add(M::POST, "/auth/login", A::Public, post(auth::login))
        .add(M::POST, "/auth/refresh", A::Public, post(auth::refresh))
        .add(M::POST, "/auth/logout", A::Public, post(auth::logout))
        .add(M::GET, "/me", A::Authenticated, get(auth::me))
        .add(
            M::POST,
            "/orgs",
            A::InstanceAdmin,
            post(identity::create_org),
        )
        .add(M::GET, "/orgs", A::InstanceAdmin, get(identity::list_orgs))
        .add(
            M::GET,
            "/orgs/current",
            A::OrgRead,
            get(identity::current_org),
        )
        .add(
            M::PATCH,
            "/orgs/current",
            A::OrgOwner,
            patch(identity::patch_own_org),
        )
        .add(
            M::GET,
            "/orgs/{id}",
            A::InstanceAdmin,
            get(identity::get_org),
        )
        .add(
            M::PATCH,
            "/orgs/{id}",
            A::InstanceAdmin,
            patch(identity::patch_org),
        )
        .add(
            M::POST,
            "/orgs/{id}/suspend",
            A::InstanceAdmin,
            post(identity::suspend_org),
        )
        .add(
            M::POST,
            "/orgs/{id}/resume",
            A::InstanceAdmin,
            post(identity::resume_org),
        )
        .add(
            M::POST,
            "/users",
            A::UsersWrite,
            post(identity::create_user),
        )
        .add(M::GET, "/users", A::UsersRead, get(identity::list_users))
        .add(M::GET, "/users/{id}", A::UsersRead, get(identity::get_user))
        .add(
            M::PATCH,
            "/users/{id}",
            A::UsersWrite,
            patch(identity::patch_user),
        )
        .add(
            M::DELETE,
            "/users/{id}",
            A::UsersWrite,
            delete(identity::delete_user),
        )
        .add(
            M::POST,
            "/api-keys",
            A::KeysWrite,
            post(identity::create_key),
        )
        .add(M::GET, "/api-keys", A::KeysRead, get(identity::list_keys))
        .add(
            M::DELETE,
            "/api-keys/{id}",
            A::KeysWrite,
            delete(identity::revoke_key),
        )
        .add(M::GET, "/audit", A::AuditRead, get(identity::audit))
        .add(
            M::GET,
            "/audit/export",
            A::AuditRead,
            get(identity::audit_export),
        );
    let r = agents::routes(r);
    let r = runtime::routes(r);
    let r = activity::routes(r);
    let r = governance::routes(r);
    let r = tasks::routes(r);
    let r = schedules::routes(r);
    let r = knowledge::routes(r);
    let r = spend::routes(r);
    let r = chart::routes(r);
    let r = chat::routes(r);
    let r = versions::routes(r);
    admin::routes(r)
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.server.max_body_bytes;
    let timeout = std::time::Duration::from_millis(state.config.http.request_timeout_ms);
    let api = api_routes(&state).into_router();
    let mut app = Router::new()
        .route("/", get(dashboard::index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz));
    if state.config.metrics.listen.is_empty() {
        app = app.route("/metrics", get(metrics));
    }
    let mut app = app
        .nest("/api/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(timeout, deadline))
        .layer(middleware::from_fn(track))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(body_limit, declared_size));
    if !state.config.http.cors_origins.is_empty() {
        let origins: Vec<axum::http::HeaderValue> = state
            .config
            .http
            .cors_origins
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect();
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods(tower_http::cors::AllowMethods::mirror_request())
                .allow_headers([
                    axum::http::header::AUTHORIZATION,
                    axum::http::header::CONTENT_TYPE,
                    guard::REQUEST_ID,
                ])
                .allow_credentials(true)
                .expose_headers([guard::REQUEST_ID]),
        );
    }
    app.layer(middleware::from_fn_with_state(
        state.clone(),
        guard::context,
    ))
    .with_state(state)
}
