//! Identity, tenancy and audit: the authorization matrix over every route,
//! atomic plan limits under concurrency, token tampering and confusion,
//! lockout, sessions, API-key scopes, an audit entry for every mutating
//! route, suspension, rate limits and bad input on the new endpoints.

use crate::common::{PASSWORD, TestApp, add_user, spawn_app_with};
use cadre::identity::Action;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const SECRET: &str = "test-secret-test-secret-test-secret-42";
const OWNER: &str = "admin@localhost";
const NOBODY: &str = "00000000-0000-7000-8000-000000000000";

async fn app() -> TestApp {
    spawn_app_with(|c| c.auth.jwt_secret = SECRET.into()).await
}

async fn add_key(app: &TestApp, token: &str, scopes: &[&str]) -> (StatusCode, Value) {
    app.call_as(
        Some(token),
        Method::POST,
        "/api/v1/api-keys",
        Some(json!({ "name": "k", "scopes": scopes })),
    )
    .await
}

/// A second organization (instance admin creates it); returns id and its owner's token.
pub(crate) async fn other_org(app: &TestApp, slug: &str, plan: &str) -> (String, String) {
    let email = format!("owner@{slug}.test");
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/orgs",
            Some(json!({ "name": slug, "slug": slug, "plan": plan,
                         "owner": { "email": email, "password": PASSWORD, "name": "O" } })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, token, _) = app.sign_in(&email, PASSWORD).await;
    assert_eq!(s, StatusCode::OK);
    (v["id"].as_str().expect("id").to_string(), token)
}

fn jwt(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn concrete(path: &str) -> String {
    path.replace("{id}", NOBODY)
        .replace("{command}", "start")
        .replace("{name}", "nobody")
        .replace("{memory_id}", NOBODY)
        .replace("{n}", "1")
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Allowed,
    Forbidden,
}

/// Who may call each route, written by hand from README.md ("Roles, keys
/// and the audit log", the route tables) and docs/governance.md, never from
/// the policy code: the lowest role, and the scope an API key needs. Role
/// `any` is every signed-in principal; `instance` is the instance admin
/// user only (never a key). Scope `admin` means the key must hold `admin`
/// itself; any other scope is also covered by `admin`.
const DOCUMENTED: &[(&str, &str, &str)] = &[
    ("GET /me", "any", ""),
    // Instance administration.
    ("POST /orgs", "instance", ""),
    ("GET /orgs", "instance", ""),
    ("GET /orgs/{id}", "instance", ""),
    ("PATCH /orgs/{id}", "instance", ""),
    ("POST /orgs/{id}/suspend", "instance", ""),
    ("POST /orgs/{id}/resume", "instance", ""),
    ("POST /knowledge/rebuild", "instance", ""),
    ("POST /admin/unlock", "instance", ""),
    ("GET /knowledge/status", "instance", ""),
    // The organization.
    ("GET /orgs/current", "viewer", "org:read"),
    ("GET /orgs/current/spend", "viewer", "org:read"),
    ("PATCH /orgs/current", "owner", "admin"),
    // Users, keys, audit: admins.
    ("POST /users", "admin", "users:write"),
    ("GET /users", "admin", "users:read"),
    ("GET /users/{id}", "admin", "users:read"),
    ("PATCH /users/{id}", "admin", "users:write"),
    ("DELETE /users/{id}", "admin", "users:write"),
    ("POST /api-keys", "admin", "keys:write"),
    ("GET /api-keys", "admin", "keys:read"),
    ("DELETE /api-keys/{id}", "admin", "keys:write"),
    ("GET /audit", "admin", "audit:read"),
    ("GET /audit/export", "admin", "audit:read"),
    // Agents: viewers read, members operate.
    ("POST /agents", "member", "agents:write"),
    ("GET /agents", "viewer", "agents:read"),
    ("GET /agents/{id}", "viewer", "agents:read"),
    ("PATCH /agents/{id}", "member", "agents:write"),
    ("DELETE /agents/{id}", "member", "agents:write"),
    ("GET /agents/{id}/history", "viewer", "agents:read"),
    ("GET /agents/{id}/events", "viewer", "agents:read"),
    ("GET /agents/{id}/logs", "viewer", "agents:read"),
    ("GET /agents/{id}/config", "viewer", "agents:read"),
    // What the model is told carries the organization's handbook: not a
    // viewer's (docs/employees.md).
    ("GET /agents/{id}/prompt", "member", "agents:read"),
    ("GET /org-chart", "viewer", "agents:read"),
    ("GET /agents/{id}/versions", "viewer", "agents:read"),
    ("GET /agents/{id}/versions/{n}", "viewer", "agents:read"),
    (
        "GET /agents/{id}/versions/{n}/diff",
        "viewer",
        "agents:read",
    ),
    (
        "POST /agents/{id}/versions/{n}/restore",
        "member",
        "agents:write",
    ),
    ("POST /agents/{id}/conversations", "member", "chat"),
    ("POST /conversations/{id}/messages", "member", "chat"),
    ("GET /agents/{id}/spend", "viewer", "agents:read"),
    ("POST /agents/{id}/{command}", "member", "agents:write"),
    // Activity.
    ("POST /activity", "member", "activity:write"),
    ("GET /activity", "viewer", "activity:read"),
    ("GET /events", "viewer", "activity:read"),
    ("GET /stream", "viewer", "activity:read"),
    ("GET /agents/{id}/tool-calls", "viewer", "activity:read"),
    ("GET /agents/{id}/conversations", "viewer", "activity:read"),
    (
        "GET /agents/{id}/conversations/{conversation}/messages",
        "viewer",
        "activity:read",
    ),
    ("GET /agents/{id}/timeline", "viewer", "activity:read"),
    // Operator tools: owners.
    ("POST /admin/chaos/kill", "owner", "admin"),
    ("POST /halt", "owner", "admin"),
    ("DELETE /halt", "owner", "admin"),
    ("GET /halt", "viewer", "agents:read"),
    // Governance: everyone reads the catalog; admins change it.
    ("GET /tools", "viewer", "agents:read"),
    ("PUT /tools/{id}", "admin", "admin"),
    ("DELETE /tools/{id}", "admin", "admin"),
    ("GET /skills", "viewer", "agents:read"),
    ("GET /profiles", "viewer", "agents:read"),
    ("GET /profiles/{name}", "viewer", "agents:read"),
    ("PUT /profiles/{name}", "admin", "admin"),
    ("DELETE /profiles/{name}", "admin", "admin"),
    ("GET /approval-policies", "viewer", "agents:read"),
    ("PUT /approval-policies/{name}", "admin", "admin"),
    ("DELETE /approval-policies/{name}", "admin", "admin"),
    ("GET /secrets", "admin", "admin"),
    ("PUT /secrets/{name}", "admin", "admin"),
    ("DELETE /secrets/{name}", "admin", "admin"),
    // Approvals: viewers read; members decide (a viewer never does) and
    // revoke grants, keys with `approvals:decide`; admins withdraw.
    ("GET /approvals", "viewer", "agents:read"),
    ("GET /approvals/{id}", "viewer", "agents:read"),
    ("POST /approvals/{id}/decide", "member", "approvals:decide"),
    ("POST /approvals/{id}/cancel", "admin", "admin"),
    ("GET /grants", "viewer", "agents:read"),
    ("DELETE /grants/{id}", "member", "approvals:decide"),
    // Knowledge: viewers read and search, members write.
    ("POST /knowledge-bases", "member", "agents:write"),
    ("GET /knowledge-bases", "viewer", "agents:read"),
    ("GET /knowledge-bases/{id}", "viewer", "agents:read"),
    ("PATCH /knowledge-bases/{id}", "member", "agents:write"),
    ("DELETE /knowledge-bases/{id}", "member", "agents:write"),
    (
        "POST /knowledge-bases/{id}/documents",
        "member",
        "agents:write",
    ),
    (
        "GET /knowledge-bases/{id}/documents",
        "viewer",
        "agents:read",
    ),
    ("GET /documents/{id}", "viewer", "agents:read"),
    ("PUT /documents/{id}", "member", "agents:write"),
    ("DELETE /documents/{id}", "member", "agents:write"),
    ("POST /knowledge/search", "viewer", "agents:read"),
    ("GET /agents/{id}/memories", "viewer", "agents:read"),
    ("POST /agents/{id}/memories", "member", "agents:write"),
    (
        "DELETE /agents/{id}/memories/{memory_id}",
        "member",
        "agents:write",
    ),
    // Tasks and schedules: viewers read, members give work.
    ("POST /agents/{id}/tasks", "member", "agents:write"),
    ("GET /agents/{id}/tasks", "viewer", "agents:read"),
    ("GET /tasks/{id}", "viewer", "agents:read"),
    ("GET /tasks/{id}/steps", "viewer", "agents:read"),
    ("POST /tasks/{id}/cancel", "member", "agents:write"),
    ("POST /tasks/{id}/replay", "member", "agents:write"),
    ("POST /agents/{id}/schedules", "member", "agents:write"),
    ("GET /agents/{id}/schedules", "viewer", "agents:read"),
    ("GET /schedules/{id}", "viewer", "agents:read"),
    ("PATCH /schedules/{id}", "member", "agents:write"),
    ("DELETE /schedules/{id}", "member", "agents:write"),
];

/// A caller of the matrix: a user of a role (`instance` marks the instance
/// admin), or an API key with its creator's role and its scopes.
struct Caller {
    name: &'static str,
    role: &'static str,
    instance_admin: bool,
    key_scopes: Option<&'static [&'static str]>,
}

fn rank(role: &str) -> i32 {
    match role {
        "viewer" => 0,
        "member" => 1,
        "admin" => 2,
        "owner" => 3,
        other => panic!("no role {other}"),
    }
}

/// The documented answer for `caller` on a route that needs `(role, scope)`.
fn expect((role, scope): (&str, &str), caller: &Caller) -> Expect {
    use Expect::*;
    let allowed = match role {
        "any" => true,
        "instance" => caller.instance_admin && caller.key_scopes.is_none(),
        need => {
            rank(caller.role) >= rank(need)
                && caller.key_scopes.is_none_or(|scopes| {
                    scopes.contains(&scope) || (scope != "admin" && scopes.contains(&"admin"))
                })
        }
    };
    if allowed { Allowed } else { Forbidden }
}

#[tokio::test]
async fn authorization_matrix_covers_every_route_and_caller() {
    let app = app().await;
    let routes = app.running.as_ref().expect("running").routes.clone();
    let (_, admin) = add_user(&app, "admin@x.test", "admin").await;
    let (_, member) = add_user(&app, "member@x.test", "member").await;
    let (_, viewer) = add_user(&app, "viewer@x.test", "viewer").await;
    let key = async |token: &str, scopes: &[&str]| {
        let (s, k) = add_key(&app, token, scopes).await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        k["key"].as_str().expect("key").to_string()
    };
    let read_key = key(&app.token, &["agents:read"]).await;
    let admin_key = key(&app.token, &["admin"]).await;
    let decide_key = key(&app.token, &["approvals:decide"]).await;
    let write_key = key(&app.token, &["agents:write"]).await;
    let admins_admin_key = key(&admin, &["admin"]).await;
    let (_, other_owner) = other_org(&app, "other", "team").await;
    let (_, _, refresh) = app.sign_in(OWNER, PASSWORD).await;
    let now = jsonwebtoken::get_current_timestamp();
    let me = app.call(Method::GET, "/api/v1/me", None).await.1;
    let claims = |exp: u64, typ: &str, aud: &str| {
        json!({ "sub": me["id"], "org": me["org"]["id"], "role": "owner", "typ": typ, "aud": aud,
                "iss": "cadre", "sid": "s", "iat": now - 7200, "ims": 0, "exp": exp })
    };
    let expired = jwt(SECRET, claims(now - 3600, "access", "cadre-api"));
    let foreign = jwt(
        "another-secret-another-secret-another",
        claims(now + 600, "access", "cadre-api"),
    );
    let wrong_type = jwt(SECRET, claims(now + 600, "refresh", "cadre-api"));
    let wrong_aud = jwt(SECRET, claims(now + 600, "access", "elsewhere"));
    let alg_none = {
        use base64::Engine;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            e.encode(br#"{"alg":"none","typ":"JWT"}"#),
            e.encode(claims(now + 600, "access", "cadre-api").to_string())
        )
    };
    let user = |name, role, instance_admin| Caller {
        name,
        role,
        instance_admin,
        key_scopes: None,
    };
    let key_of = |name, role, scopes| Caller {
        name,
        role,
        instance_admin: false,
        key_scopes: Some(scopes),
    };
    let good: Vec<(Caller, &str)> = vec![
        (user("owner", "owner", true), &app.token),
        (user("admin", "admin", false), &admin),
        (user("member", "member", false), &member),
        (user("viewer", "viewer", false), &viewer),
        (user("other_owner", "owner", false), &other_owner),
        (key_of("read_key", "owner", &["agents:read"]), &read_key),
        (key_of("admin_key", "owner", &["admin"]), &admin_key),
        (
            key_of("decide_key", "owner", &["approvals:decide"]),
            &decide_key,
        ),
        (key_of("write_key", "owner", &["agents:write"]), &write_key),
        (
            key_of("admins_admin_key", "admin", &["admin"]),
            &admins_admin_key,
        ),
    ];
    // The table and the served routes are the same set: a new route needs
    // its documented answer here.
    let served: BTreeSet<String> = routes
        .iter()
        .filter(|r| !matches!(r.action, Action::Public | Action::Runtime))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let documented: BTreeSet<String> = DOCUMENTED.iter().map(|(r, _, _)| r.to_string()).collect();
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "served routes without a documented answer"
    );
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "documented routes that are not served"
    );
    let bad: Vec<(&str, Option<&str>)> = vec![
        ("no token", None),
        ("garbage", Some("garbage")),
        ("expired", Some(&expired)),
        ("other secret", Some(&foreign)),
        ("refresh as access", Some(&refresh)),
        ("typ refresh", Some(&wrong_type)),
        ("other audience", Some(&wrong_aud)),
        ("alg none", Some(&alg_none)),
        (
            "unknown key",
            Some("cadre_0123456789abcdef0123456789abcdef_nope"),
        ),
    ];
    let mut cells = 0;
    for r in &routes {
        if matches!(r.action, Action::Public | Action::Runtime) {
            continue;
        }
        let path = format!("/api/v1{}", concrete(r.path));
        let body = matches!(r.method, Method::POST | Method::PATCH).then(|| json!({}));
        for (name, token) in &bad {
            let (s, v) = app
                .call_as(*token, r.method.clone(), &path, body.clone())
                .await;
            assert_eq!(
                s,
                StatusCode::UNAUTHORIZED,
                "{} {path} with {name}: {v}",
                r.method
            );
            cells += 1;
        }
        let need = DOCUMENTED
            .iter()
            .find(|(route, _, _)| *route == format!("{} {}", r.method, r.path))
            .map(|(_, role, scope)| (*role, *scope))
            .expect("documented");
        for (caller, token) in &good {
            let name = caller.name;
            let (s, v) = app
                .call_as(Some(token), r.method.clone(), &path, body.clone())
                .await;
            match expect(need, caller) {
                Expect::Forbidden => {
                    assert_eq!(
                        s,
                        StatusCode::FORBIDDEN,
                        "{} {path} as {name}: {v}",
                        r.method
                    );
                    assert_eq!(v["code"], "forbidden");
                }
                Expect::Allowed => assert!(
                    !matches!(s.as_u16(), 401 | 403 | 405) && s.as_u16() < 500,
                    "{} {path} as {name}: {s} {v}",
                    r.method
                ),
            }
            cells += 1;
        }
    }
    assert!(cells > 300, "the matrix walked {cells} cells");
}

#[tokio::test]
async fn another_orgs_resources_answer_404() {
    let app = app().await;
    let (_, other) = other_org(&app, "b-org", "team").await;
    let agent = app.create_id(json!({ "name": "mine" })).await;
    let (uid, _) = add_user(&app, "m@x.test", "member").await;
    for (m, p) in [
        (Method::GET, format!("/api/v1/agents/{agent}")),
        (Method::PATCH, format!("/api/v1/agents/{agent}")),
        (Method::DELETE, format!("/api/v1/agents/{agent}")),
        (Method::POST, format!("/api/v1/agents/{agent}/deploy")),
        (Method::GET, format!("/api/v1/agents/{agent}/history")),
        (Method::GET, format!("/api/v1/users/{uid}")),
        (Method::PATCH, format!("/api/v1/users/{uid}")),
        (Method::DELETE, format!("/api/v1/users/{uid}")),
    ] {
        let body = matches!(m, Method::PATCH).then(|| json!({ "name": "x" }));
        let (s, v) = app.call_as(Some(&other), m.clone(), &p, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {p}: {v}");
    }
    // Lists only show the caller's own organization.
    let (_, list) = app
        .call_as(Some(&other), Method::GET, "/api/v1/agents", None)
        .await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0));
    assert_eq!(app.get(&agent).await["name"], "mine");
}

#[tokio::test]
async fn concurrent_creates_never_exceed_plan_limits() {
    let app = app().await;
    // free: 3 agents, 3 users (the owner is one).
    let (org, owner) = other_org(&app, "tight", "free").await;
    let creates = (0..20).map(|i| {
        app.call_as(
            Some(&owner),
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": format!("a{i}") })),
        )
    });
    let results = futures_util::future::join_all(creates).await;
    let ok = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let limited = results
        .iter()
        .filter(|(s, v)| *s == StatusCode::CONFLICT && v["code"] == "limit_reached")
        .count();
    assert_eq!((ok, limited), (3, 17), "{results:?}");
    let users = (0..10).map(|i| {
        app.call_as(
            Some(&owner),
            Method::POST,
            "/api/v1/users",
            Some(json!({ "email": format!("u{i}@t.test"), "name": "u", "password": PASSWORD, "role": "viewer" })),
        )
    });
    let results = futures_util::future::join_all(users).await;
    let ok = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(ok, 2, "{results:?}");
    let (_, cur) = app
        .call_as(Some(&owner), Method::GET, "/api/v1/orgs/current", None)
        .await;
    assert_eq!(cur["usage"]["agents"], 3, "{cur}");
    assert_eq!(cur["usage"]["users"], 3, "{cur}");
    assert_eq!(cur["limits"]["max_agents"], 3);
    // An instance admin raises the limit for this org only.
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/orgs/{org}"),
            Some(json!({ "limits": { "max_agents": 4 } })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = app
        .call_as(
            Some(&owner),
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": "fourth" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = app
        .call_as(
            Some(&owner),
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": "fifth" })),
        )
        .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::CONFLICT, json!("limit_reached"))
    );
    // Deleting one frees a slot.
    let (_, list) = app
        .call_as(Some(&owner), Method::GET, "/api/v1/agents", None)
        .await;
    let id = list["items"][0]["id"].as_str().expect("id").to_string();
    let (s, _) = app
        .call_as(
            Some(&owner),
            Method::DELETE,
            &format!("/api/v1/agents/{id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app
        .call_as(
            Some(&owner),
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": "fifth" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn lockout_is_the_same_for_known_and_unknown_emails() {
    let app = app().await;
    for email in [OWNER, "nobody@nowhere.test"] {
        for i in 0..5 {
            let (s, _, _) = app.sign_in(email, "wrong password").await;
            let want = if i < 4 {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            assert_eq!(s, want, "{email} attempt {i}");
        }
        let resp = app
            .client
            .post(app.url("/api/v1/auth/login"))
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .expect("login");
        assert_eq!(
            resp.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "{email} locked even with the right password"
        );
        assert!(resp.headers().contains_key("retry-after"));
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["code"], "login_locked");
    }
    // The lock survives a restart (it is stored, not in memory).
    let mut app = app;
    app.restart().await;
    let (s, _, _) = app.sign_in(OWNER, PASSWORD).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
}

/// A sign-in from client address `from` (the app trusts 127.0.0.1 as its
/// proxy, so `X-Forwarded-For` is the client).
async fn sign_in_from(app: &TestApp, from: &str, email: &str, password: &str) -> StatusCode {
    app.client
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", from)
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("login")
        .status()
}

/// The lock-out of README "Signing in": failures from one address lock that
/// address only; many addresses together lock the email for addresses it
/// never signed in from; the owner's own address stays open throughout;
/// known and unknown emails answer alike; the instance admin unlocks.
#[tokio::test]
async fn an_attackers_failures_never_lock_the_owner_out_of_their_own_address() {
    let app = spawn_app_with(|c| {
        c.auth.jwt_secret = SECRET.into();
        c.http.trusted_proxies = vec!["127.0.0.1".into()];
        c.auth.lockout_threshold = 3;
        c.auth.lockout_email_threshold = 7;
    })
    .await;
    let home = "10.0.0.1";
    assert_eq!(
        sign_in_from(&app, home, OWNER, PASSWORD).await,
        StatusCode::OK
    );
    let ok = StatusCode::OK;
    let no = StatusCode::UNAUTHORIZED;
    let locked = StatusCode::TOO_MANY_REQUESTS;
    // The same attack on the owner and on an email nobody has.
    let mut seen = Vec::new();
    for email in [OWNER, "nobody@nowhere.test"] {
        let mut answers = Vec::new();
        // One address: its third failure locks it, and only it.
        for _ in 0..3 {
            answers.push(sign_in_from(&app, "10.9.9.1", email, "wrong").await);
        }
        answers.push(sign_in_from(&app, "10.9.9.1", email, PASSWORD).await);
        // More addresses: together they reach the email-wide limit (7).
        for i in 2..6 {
            answers.push(sign_in_from(&app, &format!("10.9.9.{i}"), email, "wrong").await);
        }
        // An address the owner never used is locked out now, even with the
        // right password...
        answers.push(sign_in_from(&app, "10.7.7.7", email, PASSWORD).await);
        seen.push(answers);
        // ...and the owner, from their own address, is not.
        if email == OWNER {
            assert_eq!(sign_in_from(&app, home, OWNER, PASSWORD).await, ok);
        }
    }
    assert_eq!(
        seen[0],
        vec![no, no, locked, locked, no, no, no, locked, locked],
        "the owner's answers"
    );
    let unknown: Vec<StatusCode> = seen[1].clone();
    assert_eq!(
        unknown,
        vec![no, no, locked, locked, no, no, no, locked, locked],
        "an unknown email answers as a known one"
    );
    // Only the instance admin unlocks; it is audited in the owner's organization.
    let (_, admin) = add_user(&app, "admin@x.test", "admin").await;
    let (s, v) = app
        .call_as(
            Some(&admin),
            Method::POST,
            "/api/v1/admin/unlock",
            Some(json!({ "email": OWNER })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/admin/unlock",
            Some(json!({ "email": "not an email" })),
        )
        .await;
    assert_eq!(
        (s, &v["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("invalid")),
        "{v}"
    );
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/admin/unlock",
            Some(json!({ "email": "Admin@Localhost" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({ "email": OWNER, "was_locked": true }));
    assert_eq!(sign_in_from(&app, "10.7.7.7", OWNER, PASSWORD).await, ok);
    assert_eq!(sign_in_from(&app, "10.9.9.1", OWNER, PASSWORD).await, ok);
    let (_, audit) = app
        .call(Method::GET, "/api/v1/audit?action=auth.unlock", None)
        .await;
    assert_eq!(
        audit["items"][0]["target"],
        format!("login:{OWNER}"),
        "{audit}"
    );
}

async fn refresh(app: &TestApp, cookie: &str) -> (StatusCode, String, String) {
    let resp = app
        .client
        .post(app.url("/api/v1/auth/refresh"))
        .header("cookie", format!("cadre_refresh={cookie}"))
        .send()
        .await
        .expect("refresh");
    let status = resp.status();
    let set = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let next = set
        .split(';')
        .next()
        .and_then(|kv| kv.strip_prefix("cadre_refresh="))
        .unwrap_or_default()
        .to_string();
    if status == StatusCode::OK {
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/api/v1/auth"] {
            assert!(set.contains(attr), "cookie {set} lacks {attr}");
        }
    }
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        next,
    )
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = app().await;
    let (_, access, c1) = app.sign_in(OWNER, PASSWORD).await;
    let (s, access2, c2) = refresh(&app, &c1).await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(c1, c2);
    let (s, _) = app
        .call_as(Some(&access2), Method::GET, "/api/v1/me", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // Replaying the used token revokes the family: the new one and every
    // access token of the session stop working.
    let (s, _, _) = refresh(&app, &c1).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = refresh(&app, &c2).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    for t in [&access, &access2] {
        let (s, _) = app.call_as(Some(t), Method::GET, "/api/v1/me", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    // Other sessions are untouched.
    let (s, _) = app.call(Method::GET, "/api/v1/me", None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn logout_and_password_or_role_changes_revoke_sessions() {
    let app = app().await;
    let (_, access, cookie) = app.sign_in(OWNER, PASSWORD).await;
    let resp = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .header("cookie", format!("cadre_refresh={cookie}"))
        .send()
        .await
        .expect("logout");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let (s, _) = app
        .call_as(Some(&access), Method::GET, "/api/v1/me", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(refresh(&app, &cookie).await.0, StatusCode::UNAUTHORIZED);

    let (id, member) = add_user(&app, "m@x.test", "member").await;
    let (_, _, member_cookie) = app.sign_in("m@x.test", PASSWORD).await;
    let (s, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{id}"),
            Some(json!({ "password": "a-new-password" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .call_as(Some(&member), Method::GET, "/api/v1/me", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refresh(&app, &member_cookie).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (s, member, _) = app.sign_in("m@x.test", "a-new-password").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{id}"),
            Some(json!({ "role": "viewer" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .call_as(Some(&member), Method::GET, "/api/v1/me", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn api_keys_act_with_their_scopes_and_never_above_their_creator() {
    let app = app().await;
    let (s, k) = add_key(&app, &app.token, &["agents:read"]).await;
    assert_eq!(s, StatusCode::CREATED);
    let key = k["key"].as_str().expect("key shown once").to_string();
    assert!(key.starts_with("cadre_"));
    let (_, list) = app.call(Method::GET, "/api/v1/api-keys", None).await;
    assert!(
        list.to_string().find(&key).is_none(),
        "the key is never shown again"
    );
    assert_eq!(
        app.call_as(Some(&key), Method::GET, "/api/v1/agents", None)
            .await
            .0,
        StatusCode::OK
    );
    let (s, _) = app
        .call_as(
            Some(&key),
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": "x" })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Revoked: refused at once.
    let id = k["id"].as_str().expect("id");
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/api-keys/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        app.call_as(Some(&key), Method::GET, "/api/v1/agents", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // A tampered secret is refused.
    let (_, k2) = add_key(&app, &app.token, &["agents:read"]).await;
    let mut bad = k2["key"].as_str().expect("key").to_string();
    bad.pop();
    bad.push('x');
    assert_eq!(
        app.call_as(Some(&bad), Method::GET, "/api/v1/agents", None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // An admin's admin-scoped key loses user management when the admin is demoted.
    let (admin_id, admin) = add_user(&app, "a@x.test", "admin").await;
    let (s, k) = add_key(&app, &admin, &["admin"]).await;
    assert_eq!(s, StatusCode::CREATED);
    let admin_key = k["key"].as_str().expect("key").to_string();
    assert_eq!(
        app.call_as(Some(&admin_key), Method::GET, "/api/v1/users", None)
            .await
            .0,
        StatusCode::OK
    );
    let (s, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/users/{admin_id}"),
            Some(json!({ "role": "member" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        app.call_as(Some(&admin_key), Method::GET, "/api/v1/users", None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    // A member cannot mint keys, and an admin cannot grant an owner role.
    let (_, member) = add_user(&app, "m@x.test", "member").await;
    assert_eq!(
        add_key(&app, &member, &["agents:read"]).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, admin2) = add_user(&app, "a2@x.test", "admin").await;
    let (s, _) = app
        .call_as(
            Some(&admin2),
            Method::POST,
            "/api/v1/users",
            Some(
                json!({ "email": "o@x.test", "name": "o", "password": PASSWORD, "role": "owner" }),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

async fn audit_actions(app: &TestApp, org: &str) -> Vec<String> {
    app.store()
        .tables()
        .audit_page(org, &Default::default(), 10_000)
        .await
        .expect("audit")
        .into_iter()
        .map(|r| r.action)
        .collect()
}

#[tokio::test]
async fn every_mutating_route_writes_an_audit_entry() {
    let app = app().await;
    let routes = app.running.as_ref().expect("running").routes.clone();
    let me = app.call(Method::GET, "/api/v1/me", None).await.1;
    let home = me["org"]["id"].as_str().expect("org").to_string();
    let mut covered: BTreeSet<(String, &str)> = BTreeSet::new();
    let mut check = |m: Method, p: &'static str, action: &str, org: &str, actions: &[String]| {
        assert!(
            actions.iter().any(|a| a == action),
            "{m} {p}: no {action} in {actions:?} of {org}"
        );
        covered.insert((m.to_string(), p));
    };
    // Identity.
    let (_, _, cookie) = app.sign_in(OWNER, PASSWORD).await;
    check(
        Method::POST,
        "/auth/login",
        "auth.login",
        &home,
        &audit_actions(&app, &home).await,
    );
    let resp = app
        .client
        .post(app.url("/api/v1/auth/logout"))
        .header("cookie", format!("cadre_refresh={cookie}"))
        .send()
        .await
        .expect("logout");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    check(
        Method::POST,
        "/auth/logout",
        "auth.logout",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (s, _) = app
        .call(
            Method::PATCH,
            "/api/v1/orgs/current",
            Some(json!({ "timezone": "Europe/Oslo" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    check(
        Method::PATCH,
        "/orgs/current",
        "org.update",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (org, _) = other_org(&app, "audited", "team").await;
    check(
        Method::POST,
        "/orgs",
        "org.create",
        &org,
        &audit_actions(&app, &org).await,
    );
    let (s, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/orgs/{org}"),
            Some(json!({ "plan": "enterprise" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    check(
        Method::PATCH,
        "/orgs/{id}",
        "org.update",
        &org,
        &audit_actions(&app, &org).await,
    );
    let (s, _) = app
        .call(Method::POST, &format!("/api/v1/orgs/{org}/suspend"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    check(
        Method::POST,
        "/orgs/{id}/suspend",
        "org.suspend",
        &org,
        &audit_actions(&app, &org).await,
    );
    let (s, _) = app
        .call(Method::POST, &format!("/api/v1/orgs/{org}/resume"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    check(
        Method::POST,
        "/orgs/{id}/resume",
        "org.resume",
        &org,
        &audit_actions(&app, &org).await,
    );
    let (uid, _) = add_user(&app, "u@x.test", "viewer").await;
    check(
        Method::POST,
        "/users",
        "user.create",
        &home,
        &audit_actions(&app, &home).await,
    );
    app.call(
        Method::PATCH,
        &format!("/api/v1/users/{uid}"),
        Some(json!({ "name": "N" })),
    )
    .await;
    check(
        Method::PATCH,
        "/users/{id}",
        "user.update",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/users/{uid}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    check(
        Method::DELETE,
        "/users/{id}",
        "user.delete",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (_, k) = add_key(&app, &app.token, &["agents:read"]).await;
    check(
        Method::POST,
        "/api-keys",
        "api_key.create",
        &home,
        &audit_actions(&app, &home).await,
    );
    app.call(
        Method::DELETE,
        &format!("/api/v1/api-keys/{}", k["id"].as_str().expect("id")),
        None,
    )
    .await;
    check(
        Method::DELETE,
        "/api-keys/{id}",
        "api_key.revoke",
        &home,
        &audit_actions(&app, &home).await,
    );
    // Agents.
    let id = app.create_id(json!({ "name": "a" })).await;
    check(
        Method::POST,
        "/agents",
        "agent.create",
        &home,
        &audit_actions(&app, &home).await,
    );
    app.call(
        Method::PATCH,
        &format!("/api/v1/agents/{id}"),
        Some(json!({ "role": "r", "model": "gpt-4o" })),
    )
    .await;
    check(
        Method::PATCH,
        "/agents/{id}",
        "agent.update",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (s, v) = app.command(&id, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    check(
        Method::POST,
        "/agents/{id}/{command}",
        "agent.deploy",
        &home,
        &audit_actions(&app, &home).await,
    );
    app.wait_state(&id, "running").await;
    let (s, _) = app.command(&id, "stop").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    app.wait_state(&id, "stopped").await;
    let (s, v) = app
        .call(Method::DELETE, &format!("/api/v1/agents/{id}"), None)
        .await;
    assert!(s.is_success(), "{s} {v}");
    check(
        Method::DELETE,
        "/agents/{id}",
        "agent.delete",
        &home,
        &audit_actions(&app, &home).await,
    );
    // System-caused state changes are audited too.
    assert!(
        audit_actions(&app, &home)
            .await
            .iter()
            .any(|a| a == "agent.state_changed")
    );

    // Governance: documents, decisions, grants, the kill switch.
    for (path, body, action) in [
        (
            "/api/v1/tools/crm.note",
            json!({ "skill": "crm", "risk": "low" }),
            "tool.put",
        ),
        (
            "/api/v1/profiles/mine",
            json!({ "allow_skills": ["*"] }),
            "profile.put",
        ),
        (
            "/api/v1/approval-policies/echo",
            json!({ "tools": ["echo"], "levels": [{ "approvers": { "roles": ["owner"] }, "timeout_seconds": 600 }] }),
            "policy.put",
        ),
        (
            "/api/v1/secrets/model-key",
            json!({ "value": "sk-test" }),
            "secret.put",
        ),
    ] {
        let (s, v) = app.call(Method::PUT, path, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let route: &'static str = match action {
            "tool.put" => "/tools/{id}",
            "profile.put" => "/profiles/{name}",
            "secret.put" => "/secrets/{name}",
            _ => "/approval-policies/{name}",
        };
        check(
            Method::PUT,
            route,
            action,
            &home,
            &audit_actions(&app, &home).await,
        );
    }
    let agent = app
        .create_id(json!({ "name": "gov", "role": "r", "model": "m", "profile": "mine" }))
        .await;
    app.script(&agent, &[json!({ "tool": "echo", "repeat": 2 })]);
    let (s, _) = app.command(&agent, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let pending = app.approvals("state=pending", 2).await;
    let (first, second) = (
        pending[0]["id"].as_str().expect("id"),
        pending[1]["id"].as_str().expect("id"),
    );
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/approvals/{first}/decide"),
            Some(json!({ "decision": "approve", "scope": { "type": "same_arguments", "for_seconds": 60 } })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check(
        Method::POST,
        "/approvals/{id}/decide",
        "approval.approve",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/approvals/{second}/cancel"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check(
        Method::POST,
        "/approvals/{id}/cancel",
        "approval.cancel",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (_, grants) = app.call(Method::GET, "/api/v1/grants", None).await;
    let gid = grants["items"][0]["id"]
        .as_str()
        .expect("grant")
        .to_string();
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/grants/{gid}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    check(
        Method::DELETE,
        "/grants/{id}",
        "grant.revoke",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/halt",
            Some(json!({ "scope": "org" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    check(
        Method::POST,
        "/halt",
        "halt.on",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (s, _) = app
        .call(Method::DELETE, "/api/v1/halt?scope=org", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    check(
        Method::DELETE,
        "/halt",
        "halt.off",
        &home,
        &audit_actions(&app, &home).await,
    );
    for (path, route, action) in [
        ("/api/v1/tools/crm.note", "/tools/{id}", "tool.delete"),
        (
            "/api/v1/secrets/model-key",
            "/secrets/{name}",
            "secret.delete",
        ),
        (
            "/api/v1/approval-policies/echo",
            "/approval-policies/{name}",
            "policy.delete",
        ),
    ] {
        let (s, _) = app.call(Method::DELETE, path, None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        check(
            Method::DELETE,
            route,
            action,
            &home,
            &audit_actions(&app, &home).await,
        );
    }
    let (s, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{agent}"),
            Some(json!({ "profile": null })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .call(Method::DELETE, "/api/v1/profiles/mine", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    check(
        Method::DELETE,
        "/profiles/{name}",
        "profile.delete",
        &home,
        &audit_actions(&app, &home).await,
    );
    let idle = app.create_id(json!({ "name": "idle" })).await;
    let (s, t) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{idle}/tasks"),
            Some(json!({ "instruction": "later" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    check(
        Method::POST,
        "/agents/{id}/tasks",
        "task.create",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (s, sc) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{idle}/schedules"),
            Some(json!({ "cron": "@daily", "instruction": "report" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{sc}");
    check(
        Method::POST,
        "/agents/{id}/schedules",
        "schedule.create",
        &home,
        &audit_actions(&app, &home).await,
    );
    let sid = sc["id"].as_str().expect("schedule id");
    let (s, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/schedules/{sid}"),
            Some(json!({ "enabled": false })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    check(
        Method::PATCH,
        "/schedules/{id}",
        "schedule.update",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/schedules/{sid}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    check(
        Method::DELETE,
        "/schedules/{id}",
        "schedule.delete",
        &home,
        &audit_actions(&app, &home).await,
    );
    let tid = t["id"].as_str().expect("task id");
    let (s, _) = app
        .call(Method::POST, &format!("/api/v1/tasks/{tid}/cancel"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    check(
        Method::POST,
        "/tasks/{id}/cancel",
        "task.cancel",
        &home,
        &audit_actions(&app, &home).await,
    );
    // A replay needs a recorded model step to start from.
    cadre_actors::task::TaskStore::add_step(
        &*app.store().tasks(),
        &cadre_actors::task::TaskStep {
            task_id: tid.to_string(),
            seq: 1,
            kind: "model".into(),
            body: json!({}),
            tokens: 0,
            latency_ms: 0,
            at: 0,
        },
    )
    .await
    .expect("step");
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{tid}/replay"),
            Some(json!({ "from_step": 1 })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    check(
        Method::POST,
        "/tasks/{id}/replay",
        "task.create",
        &home,
        &audit_actions(&app, &home).await,
    );

    // Mutating routes that change no record: refresh rotation is recorded in
    // the session table itself (reuse is audited), chaos kills an actor, and
    // reported activity is itself the record of what agents did.
    // Knowledge.
    let (s, kb) = app
        .call(
            Method::POST,
            "/api/v1/knowledge-bases",
            Some(json!({ "name": "kb" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{kb}");
    let kb = kb["id"].as_str().expect("id").to_string();
    check(
        Method::POST,
        "/knowledge-bases",
        "knowledge_base.create",
        &home,
        &audit_actions(&app, &home).await,
    );
    app.call(
        Method::PATCH,
        &format!("/api/v1/knowledge-bases/{kb}"),
        Some(json!({ "name": "kb2" })),
    )
    .await;
    check(
        Method::PATCH,
        "/knowledge-bases/{id}",
        "knowledge_base.update",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (s, d) = app
        .call(
            Method::POST,
            &format!("/api/v1/knowledge-bases/{kb}/documents"),
            Some(json!({ "title": "t", "content": "words" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    let d = d["id"].as_str().expect("id").to_string();
    check(
        Method::POST,
        "/knowledge-bases/{id}/documents",
        "document.create",
        &home,
        &audit_actions(&app, &home).await,
    );
    app.call(
        Method::PUT,
        &format!("/api/v1/documents/{d}"),
        Some(json!({ "content": "more words" })),
    )
    .await;
    check(
        Method::PUT,
        "/documents/{id}",
        "document.update",
        &home,
        &audit_actions(&app, &home).await,
    );
    app.call(Method::DELETE, &format!("/api/v1/documents/{d}"), None)
        .await;
    check(
        Method::DELETE,
        "/documents/{id}",
        "document.delete",
        &home,
        &audit_actions(&app, &home).await,
    );
    app.call(
        Method::DELETE,
        &format!("/api/v1/knowledge-bases/{kb}"),
        None,
    )
    .await;
    check(
        Method::DELETE,
        "/knowledge-bases/{id}",
        "knowledge_base.delete",
        &home,
        &audit_actions(&app, &home).await,
    );
    app.call(Method::POST, "/api/v1/knowledge/rebuild", None)
        .await;
    check(
        Method::POST,
        "/knowledge/rebuild",
        "knowledge.rebuild",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/admin/unlock",
            Some(json!({ "email": OWNER })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check(
        Method::POST,
        "/admin/unlock",
        "auth.unlock",
        &home,
        &audit_actions(&app, &home).await,
    );
    let agent = app.create_id(json!({ "name": "rememberer" })).await;
    let (s, m) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/memories"),
            Some(json!({ "kind": "semantic", "content": "a fact" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{m}");
    check(
        Method::POST,
        "/agents/{id}/memories",
        "memory.create",
        &home,
        &audit_actions(&app, &home).await,
    );
    app.call(
        Method::DELETE,
        &format!(
            "/api/v1/agents/{agent}/memories/{}",
            m["id"].as_str().expect("id")
        ),
        None,
    )
    .await;
    check(
        Method::DELETE,
        "/agents/{id}/memories/{memory_id}",
        "memory.delete",
        &home,
        &audit_actions(&app, &home).await,
    );

    // A conversation with a running agent, a message, a restored version.
    let talker = app
        .create_id(json!({ "name": "talker", "role": "r", "model": "m" }))
        .await;
    let (s, v) = app.command(&talker, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_state(&talker, "running").await;
    let (s, c) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{talker}/conversations"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    check(
        Method::POST,
        "/agents/{id}/conversations",
        "agent.conversation_open",
        &home,
        &audit_actions(&app, &home).await,
    );
    // Its reply fails (no model here) but the message was given as a task.
    let (s, v) = app
        .call(
            Method::POST,
            &format!(
                "/api/v1/conversations/{}/messages",
                c["id"].as_str().expect("id")
            ),
            Some(json!({ "content": "hello" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check(
        Method::POST,
        "/conversations/{id}/messages",
        "task.create",
        &home,
        &audit_actions(&app, &home).await,
    );
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{talker}/versions/1/restore"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    check(
        Method::POST,
        "/agents/{id}/versions/{n}/restore",
        "agent.update",
        &home,
        &audit_actions(&app, &home).await,
    );

    let exempt = [
        ("POST", "/auth/refresh"),
        ("POST", "/admin/chaos/kill"),
        ("POST", "/activity"),
        // A search is a read that takes its query as a body.
        ("POST", "/knowledge/search"),
    ];
    let mutating: BTreeSet<(String, &str)> = routes
        .iter()
        .filter(|r| {
            matches!(
                r.method,
                Method::POST | Method::PUT | Method::PATCH | Method::DELETE
            )
        })
        .map(|r| (r.method.to_string(), r.path))
        .filter(|(m, p)| !exempt.contains(&(m.as_str(), p)))
        .collect();
    assert_eq!(
        mutating, covered,
        "every mutating route must be checked here"
    );

    // Entries are listed newest first with filters, and export as JSON lines.
    let (s, page) = app
        .call(
            Method::GET,
            "/api/v1/audit?action=user.create&limit=5",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let items = page["items"].as_array().expect("items");
    assert!(!items.is_empty() && items.iter().all(|i| i["action"] == "user.create"));
    assert!(
        items[0]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert!(
        items[0]["client"]
            .as_str()
            .is_some_and(|c| c == "127.0.0.1")
    );
    let resp = app
        .client
        .get(app.url("/api/v1/audit/export"))
        .bearer_auth(&app.token)
        .send()
        .await
        .expect("export");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.expect("text");
    assert!(text.lines().count() >= 10);
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok())
    );
}

#[tokio::test]
async fn the_audit_log_is_append_only_in_the_database() {
    let app = app().await;
    let mut db = app.direct().await;
    for sql in ["UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"] {
        let err = db.execute(sql).await.expect_err("refused");
        assert!(err.to_string().contains("append-only"), "{err}");
    }
}

#[tokio::test]
async fn a_suspended_org_stops_its_agents_and_its_users_cannot_sign_in() {
    let app = app().await;
    let (org, owner) = other_org(&app, "sus", "team").await;
    let (_, v) = app
        .call_as(
            Some(&owner),
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": "w", "role": "r", "model": "gpt-4o" })),
        )
        .await;
    let id = v["id"].as_str().expect("id").to_string();
    let (s, _) = app
        .call_as(
            Some(&owner),
            Method::POST,
            &format!("/api/v1/agents/{id}/deploy"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    crate::common::eventually("agent running", || async {
        app.call_as(
            Some(&owner),
            Method::GET,
            &format!("/api/v1/agents/{id}"),
            None,
        )
        .await
        .1["state"]
            == "running"
    })
    .await;
    let (s, v) = app
        .call(Method::POST, &format!("/api/v1/orgs/{org}/suspend"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["agents_stopped"], 1);
    let rec = app
        .store()
        .load_agent(&id)
        .await
        .expect("load")
        .expect("agent");
    assert!(
        matches!(rec.state, cadre_actors::lifecycle::State::Stopped),
        "{:?}",
        rec.state
    );
    let (s, _) = app
        .call_as(Some(&owner), Method::GET, "/api/v1/agents", None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _, _) = app.sign_in("owner@sus.test", PASSWORD).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .call(Method::POST, &format!("/api/v1/orgs/{org}/resume"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = app.sign_in("owner@sus.test", PASSWORD).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn rate_limits_answer_429_and_ignore_forged_forwarded_for() {
    let app = spawn_app_with(|c| {
        c.http.rate_limit_per_client = cadre::config::RateLimit {
            per_second: 1,
            burst: 5,
        };
    })
    .await;
    // Login spent one request of the burst.
    let mut limited = None;
    for i in 0..10 {
        let resp = app
            .client
            .get(app.url("/api/v1/me"))
            .bearer_auth(&app.token)
            .header("x-forwarded-for", format!("10.0.0.{i}"))
            .send()
            .await
            .expect("request");
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("a forged X-Forwarded-For does not escape the per-client limit");
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "rate_limited");
    // Health checks are never limited.
    let resp = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[test]
fn trusted_proxies_are_the_only_source_of_forwarded_addresses() {
    use cadre::http::guard::client_addr;
    let mut h = axum::http::HeaderMap::new();
    h.insert("x-forwarded-for", "1.2.3.4, 10.0.0.9".parse().expect("hv"));
    let peer: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
    assert_eq!(client_addr(peer, &h, &[]), peer);
    let proxies = vec!["10.0.0.0/8".parse().expect("net")];
    assert_eq!(client_addr(peer, &h, &proxies).to_string(), "1.2.3.4");
    let outsider: std::net::IpAddr = "8.8.8.8".parse().expect("ip");
    assert_eq!(client_addr(outsider, &h, &proxies), outsider);
}

#[tokio::test]
async fn responses_carry_request_ids_and_security_headers() {
    let app = app().await;
    let resp = app
        .client
        .get(app.url("/api/v1/me"))
        .bearer_auth(&app.token)
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("me");
    let h = resp.headers();
    assert_eq!(h["x-request-id"], "abc-123");
    assert!(
        h["content-security-policy"]
            .to_str()
            .expect("csp")
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.contains_key("referrer-policy"));
    assert!(
        !h.contains_key("access-control-allow-origin"),
        "CORS is off by default"
    );
    let resp = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert!(resp.headers().get("x-request-id").is_some());
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let app = spawn_app_with(|c| c.http.cors_origins = vec!["https://dash.example".into()]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, app.url("/api/v1/agents"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let ok = preflight("https://dash.example").await.expect("preflight");
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://dash.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .expect("methods")
            .contains("POST")
    );
    let other = preflight("https://evil.example").await.expect("preflight");
    assert!(
        !other.headers().contains_key("access-control-allow-origin"),
        "an origin not on the list gets no CORS grant"
    );
    // A real request from the listed origin can read the response and its id.
    let resp = app
        .client
        .get(app.url("/api/v1/me"))
        .bearer_auth(&app.token)
        .header("origin", "https://dash.example")
        .send()
        .await
        .expect("me");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://dash.example"
    );
    assert!(
        resp.headers()["access-control-expose-headers"]
            .to_str()
            .expect("expose")
            .contains("x-request-id")
    );
}

#[tokio::test]
async fn a_request_that_outlives_the_timeout_gets_503_request_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Long enough for the test's own sign-in (Argon2id in a debug build).
    let app = spawn_app_with(|c| c.http.request_timeout_ms = 5000).await;
    // A client that announces a body and never finishes sending it holds
    // the request open; the server must give up, not wait forever.
    let mut tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v1/agents HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"name\":",
        app.addr, app.token
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = tcp.read(&mut chunk).await.expect("read");
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 || String::from_utf8_lossy(&buf).contains("\"request_timeout\"") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&buf);
    assert!(read.is_ok(), "no answer before the deadline: {text}");
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    // Nothing was created.
    let (_, v) = app.call(Method::GET, "/api/v1/agents", None).await;
    assert_eq!(v["items"], json!([]), "{v}");
    // Quick requests are unaffected.
    let (s, _) = app.call(Method::GET, "/api/v1/me", None).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_on_identity_endpoints_gets_a_stable_4xx() {
    let app = app().await;
    let routes = app.running.as_ref().expect("running").routes.clone();
    let huge = "x".repeat(2 * 1024 * 1024);
    for r in routes
        .iter()
        .filter(|r| matches!(r.method, Method::POST | Method::PATCH))
    {
        if matches!(r.path, "/auth/logout" | "/auth/refresh")
            || r.path.ends_with("/suspend")
            || r.path.ends_with("/resume")
            || r.path == "/agents/{id}/{command}"
            || r.path == "/knowledge/rebuild"
        {
            continue; // no body
        }
        // Paths with ids use a real resource where one is cheap to find.
        let path = format!("/api/v1{}", concrete(r.path));
        let send = |body: String| {
            app.client
                .request(r.method.clone(), app.url(&path))
                .bearer_auth(&app.token)
                .header("content-type", "application/json")
                .body(body)
                .send()
        };
        let resp = send("{".into()).await.expect("send");
        let s = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            s == StatusCode::BAD_REQUEST || s == StatusCode::NOT_FOUND,
            "{path} malformed: {s} {v}"
        );
        assert!(v["code"].is_string(), "{path}: {v}");
        let resp = send(huge.clone()).await.expect("send");
        assert!(
            matches!(resp.status().as_u16(), 413 | 404),
            "{path} huge: {}",
            resp.status()
        );
        if !path.contains(NOBODY) {
            for body in [
                json!({ "unknown_field": 1 }),
                json!([1, 2]),
                json!({ "name": 5, "email": false }),
            ] {
                let resp = send(body.to_string()).await.expect("send");
                let s = resp.status();
                let v: Value = resp.json().await.unwrap_or(Value::Null);
                assert!(matches!(s.as_u16(), 400 | 422), "{path} {body}: {s} {v}");
                assert!(v["code"].is_string());
            }
        }
    }
    // Field validation with a field name.
    for (path, body, field) in [
        (
            "/api/v1/users",
            json!({ "email": "not-an-email", "name": "n", "password": PASSWORD, "role": "viewer" }),
            "email",
        ),
        (
            "/api/v1/users",
            json!({ "email": "a@b.c", "name": "n", "password": "short", "role": "viewer" }),
            "password",
        ),
        (
            "/api/v1/users",
            json!({ "email": "a@b.c", "name": "n", "password": PASSWORD, "role": "god" }),
            "role",
        ),
        (
            "/api/v1/api-keys",
            json!({ "name": "k", "scopes": ["everything"] }),
            "scopes",
        ),
        (
            "/api/v1/api-keys",
            json!({ "name": "k", "scopes": [] }),
            "scopes",
        ),
        (
            "/api/v1/api-keys",
            json!({ "name": "k", "scopes": ["admin"], "expires_at": "2001-01-01T00:00:00Z" }),
            "expires_at",
        ),
        (
            "/api/v1/orgs",
            json!({ "name": "n", "slug": "Bad Slug", "owner": { "email": "a@b.c", "password": PASSWORD, "name": "n" } }),
            "slug",
        ),
        (
            "/api/v1/orgs",
            json!({ "name": "n", "slug": "ok-slug", "plan": "platinum", "owner": { "email": "a@b.c", "password": PASSWORD, "name": "n" } }),
            "plan",
        ),
    ] {
        let (s, v) = app.call(Method::POST, path, Some(body.clone())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{path} {body}: {v}");
        assert_eq!(v["field"], field, "{v}");
    }
    // Duplicates are conflicts, and nothing changed.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({ "email": OWNER, "name": "n", "password": PASSWORD, "role": "viewer" })),
        )
        .await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::CONFLICT, json!("email_taken"))
    );
    let (_, users) = app.call(Method::GET, "/api/v1/users", None).await;
    assert_eq!(users["items"].as_array().map(Vec::len), Some(1));
}
