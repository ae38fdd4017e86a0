//! The gate every request passes: request id and client address, per-client
//! and per-principal rate limits, authentication, the policy check of the
//! route's declared action, and security headers on the way out.
//!
//! Routes are only added through [`Routes::add`], which requires an
//! [`Action`]: a route without one cannot be written, and the matrix test
//! walks [`Routes::specs`] to check every route against every kind of caller.

use super::error::ApiError;
use super::state::AppState;
use crate::identity::{Action, Credential, Principal, authorize};
use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header::{AUTHORIZATION, HeaderName};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use cadre_actors::domain::OrgId;
use cadre_actors::ports::{Clock, SystemClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

/// `X-Request-Id`.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// One declared route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Method.
    pub method: Method,
    /// Path template under `/api/v1` (axum syntax).
    pub path: &'static str,
    /// What it does.
    pub action: Action,
}

/// A router whose every route declares its action.
pub struct Routes {
    router: Router<AppState>,
    specs: Vec<RouteSpec>,
    state: AppState,
}

impl Routes {
    /// An empty set.
    pub fn new(state: AppState) -> Routes {
        Routes {
            router: Router::new(),
            specs: Vec::new(),
            state,
        }
    }

    /// Adds `handler` for `method path`, guarded by `action`.
    pub fn add(
        mut self,
        method: Method,
        path: &'static str,
        action: Action,
        handler: MethodRouter<AppState>,
    ) -> Routes {
        let guarded = handler.route_layer(middleware::from_fn_with_state(
            self.state.clone(),
            move |s: State<AppState>, req: Request, next: Next| guard(s, action, req, next),
        ));
        self.router = self.router.route(path, guarded);
        self.specs.push(RouteSpec {
            method,
            path,
            action,
        });
        self
    }

    /// The declared routes.
    pub fn specs(&self) -> &[RouteSpec] {
        &self.specs
    }

    /// The router.
    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}

/// Request id and client address, set by [`context`] on every request.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    /// Request id.
    pub id: String,
    /// Client address.
    pub client: IpAddr,
}

fn valid_request_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The client address: the socket's peer, unless the peer is a trusted proxy,
/// in which case the right-most `X-Forwarded-For` entry that is not itself a
/// trusted proxy. A forged header from an untrusted peer changes nothing.
pub fn client_addr(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    proxies: &[ipnet::IpNet],
) -> IpAddr {
    let trusted = |ip: &IpAddr| proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text.split(',').rev() {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) if trusted(&ip) => client = ip,
                Ok(ip) => return ip,
                Err(_) => return client,
            }
        }
    }
    client
}

/// Token buckets per client address and per principal.
pub struct Limiters {
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_principal: Option<DefaultKeyedRateLimiter<String>>,
    proxies: Vec<ipnet::IpNet>,
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters").finish_non_exhaustive()
    }
}

fn quota(l: crate::config::RateLimit) -> Option<Quota> {
    let rate = NonZeroU32::new(l.per_second)?;
    let burst = NonZeroU32::new(l.burst.max(1)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl Limiters {
    /// From `[http]`.
    pub fn new(c: &crate::config::HttpConfig) -> Limiters {
        Limiters {
            per_client: quota(c.rate_limit_per_client).map(RateLimiter::dashmap),
            per_principal: quota(c.rate_limit_per_principal).map(RateLimiter::dashmap),
            proxies: c.proxies(),
        }
    }

    fn too_many(wait: std::time::Duration, what: &str) -> Response {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut resp = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests from this {what}; retry after {secs} s"),
        )
        .with("retry_after_secs", serde_json::json!(secs.max(1)))
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }

    /// `Err(wait)` when the client address is over its limit.
    fn check_client(&self, ip: IpAddr) -> Result<(), std::time::Duration> {
        match &self.per_client {
            Some(l) => l.check_key(&ip).map_err(|n| {
                n.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ))
            }),
            None => Ok(()),
        }
    }

    /// `Err(wait)` when the principal is over its limit.
    fn check_principal(&self, key: String) -> Result<(), std::time::Duration> {
        match &self.per_principal {
            Some(l) => l.check_key(&key).map_err(|n| {
                n.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ))
            }),
            None => Ok(()),
        }
    }

    /// Drops idle buckets (called periodically).
    pub fn shrink(&self) {
        if let Some(l) = &self.per_client {
            l.retain_recent();
        }
        if let Some(l) = &self.per_principal {
            l.retain_recent();
        }
    }
}

/// Outermost middleware: request id, client address, per-client rate limit
/// (not for health, readiness and metrics), security headers.
pub async fn context(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let client = client_addr(peer, req.headers(), &state.limiters.proxies);
    let path = req.uri().path().to_string();
    let exempt = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
    req.extensions_mut().insert(RequestCtx {
        id: id.clone(),
        client,
    });
    let limited = if exempt {
        Ok(())
    } else {
        state.limiters.check_client(client)
    };
    // Every log line of the request (the access log included) carries its
    // id, and its organization once the credential is known.
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        org = tracing::field::Empty,
        principal = tracing::field::Empty,
    );
    let mut resp = match limited {
        Ok(()) => tracing::Instrument::instrument(next.run(req), span).await,
        Err(wait) => Limiters::too_many(wait, "client address"),
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        h.insert(REQUEST_ID, v);
    }
    // The strict default; a page with inline code of its own (the
    // dashboard) sets a policy naming that code by hash instead.
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if state.config.tls() {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    if path.starts_with("/api/") && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer <token>"))?;
    header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthenticated("expected Authorization: Bearer <token>"))
}

/// Authenticates the request's bearer credential (access token or API key).
pub fn authenticate(state: &AppState, parts: &Parts) -> Result<Principal, ApiError> {
    let token = bearer(parts)?;
    let ctx = parts.extensions.get::<RequestCtx>();
    let dir = state.identity.directory();
    let now = SystemClock.now_ms();
    let (org, role, credential) = if let Some(rest) = token.strip_prefix("cadre_") {
        let invalid = || ApiError::unauthenticated("invalid, expired or revoked API key");
        let (id, secret) = rest.split_once('_').ok_or_else(invalid)?;
        let key = dir.key(id).ok_or_else(invalid)?;
        let hash = cadre_actors::ports::Secrets::hash_token(&crate::auth::AwsLcSecrets, secret);
        if !cadre_actors::ports::constant_time_eq(&hash, &key.secret_hash)
            || key.revoked
            || key.expires_at.is_some_and(|e| e <= now)
        {
            return Err(invalid());
        }
        // Never above the creator's current role; gone with the creator.
        let creator = dir.user(&key.created_by).ok_or_else(invalid)?;
        if key.touch_due(now) {
            state.identity.touch_key(id, now);
        }
        (
            key.org.clone(),
            creator.role,
            Credential::ApiKey {
                key_id: id.to_string(),
                scopes: key.scopes.clone(),
                created_by: key.created_by.clone(),
            },
        )
    } else {
        let invalid = || ApiError::unauthenticated("invalid or expired token");
        let claims = state.jwt.verify(token).ok_or_else(invalid)?;
        let user = dir.user(&claims.sub).ok_or_else(invalid)?;
        if claims.ims < user.sessions_after
            || user.org.as_str() != claims.org
            || dir.family_revoked(&claims.sid)
        {
            return Err(ApiError::unauthenticated(
                "the session was revoked; sign in again",
            ));
        }
        (
            user.org,
            user.role,
            Credential::User {
                user_id: claims.sub,
                instance_admin: user.instance_admin,
            },
        )
    };
    if dir.suspended(&org) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "org_suspended",
            "the organization is suspended",
        ));
    }
    Ok(Principal {
        org,
        role,
        credential,
        request_id: ctx.map(|c| c.id.clone()),
        client: ctx.map(|c| c.client.to_string()),
    })
}

async fn guard(
    State(state): State<AppState>,
    action: Action,
    req: Request,
    next: Next,
) -> Response {
    if matches!(action, Action::Public | Action::Runtime) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let principal = match authenticate(&state, &parts) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Err(wait) = state.limiters.check_principal(principal.rate_key()) {
        return Limiters::too_many(wait, "user or API key");
    }
    let span = tracing::Span::current();
    span.record("org", principal.org.as_str());
    span.record("principal", principal.who().to_text());
    if let Err(denied) = authorize(&principal, action) {
        return ApiError::forbidden(&denied.0).into_response();
    }
    parts.extensions.insert(principal);
    next.run(Request::from_parts(parts, body)).await
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError::internal("a handler asked for a principal on an unguarded route")
        })
    }
}

/// The request context (always present behind [`context`]).
impl FromRequestParts<AppState> for RequestCtx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestCtx>()
            .cloned()
            .unwrap_or(RequestCtx {
                id: uuid::Uuid::now_v7().to_string(),
                client: IpAddr::from([127, 0, 0, 1]),
            }))
    }
}

/// Shorthand: an organization id from a path segment (ids are UUIDs; anything
/// else cannot exist).
pub fn org_id(raw: &str) -> Result<OrgId, ApiError> {
    if raw.len() == 36 && raw.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        Ok(OrgId(raw.to_ascii_lowercase()))
    } else {
        Err(ApiError::not_found("organization"))
    }
}
