//! The HTTP surface: routes, fallbacks, limits and request metrics.
//!
//! Handlers only authenticate, validate, send one message to the actor tree
//! (or read history from the store) and map the answer.

pub mod admin;
pub mod agents;
pub mod auth;
pub mod error;
pub mod runtime;
pub mod state;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use error::ApiError;
use state::AppState;
use std::time::Instant;

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    use cadre_actors::ports::Store;
    let store = state.store.ping().await.is_ok();
    let supervisors = state.cadre.is_ready().await;
    let status = if store && supervisors {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if status == StatusCode::OK { "ready" } else { "unavailable" },
        "checks": { "store": store, "supervisors": supervisors },
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
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
/// which would explode label cardinality).
async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("cadre_http_requests_total", "method" => method.clone(), "path" => path.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("cadre_http_request_duration_seconds", "method" => method, "path" => path)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.server.max_body_bytes;
    let api = Router::new()
        .merge(auth::router())
        .merge(agents::router())
        .merge(runtime::router())
        .merge(admin::router());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(track))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
