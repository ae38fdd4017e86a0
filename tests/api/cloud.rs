//! The `fly` and `railway` targets against local servers that speak the
//! subset of each provider's API Cadre uses. Fly.io and Railway cannot be
//! reached from here; the request and answer shapes follow the Fly Machines
//! API reference (docs.machines.dev, `/v1`, as published in 2026) and
//! Railway's public GraphQL API v2 (backboard.railway.com/graphql/v2, 2026).
//!
//! Where the provider would run the agent's image, these servers start
//! this build's `cadre runtime` with exactly the environment Cadre gave the
//! machine or service, so an agent reaching `running` shows the delivered
//! configuration and secrets are complete.

use crate::common::*;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode as HttpStatus, Uri};
use axum::response::{IntoResponse, Response};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    auth: String,
    body: Value,
}

/// A runtime the fake provider runs, killed when dropped.
struct Machine {
    env: BTreeMap<String, String>,
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
}

impl Machine {
    fn launch(&mut self) {
        self.halt();
        let log = std::fs::File::create(&self.log).expect("log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cadre"))
            .arg("runtime")
            .env_clear()
            .envs(&self.env)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("runtime starts");
        self.child = Some(child);
    }

    fn halt(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.halt();
    }
}

#[derive(Default)]
struct Fake {
    seen: Vec<Seen>,
    /// Answers given before any real handling: (status, Retry-After).
    fail: VecDeque<(u16, Option<u64>)>,
    /// Answer every request with this status (after `fail`).
    always: Option<u16>,
    token: String,
    apps: BTreeMap<String, ()>,
    secrets: BTreeMap<String, String>,
    machines: BTreeMap<String, (String, String, Value, Machine)>,
    dir: Option<std::path::PathBuf>,
    // Railway.
    variables: BTreeMap<String, String>,
    services: BTreeMap<String, (String, Option<Machine>)>,
    deployments: Vec<(String, String, String)>,
}

type Shared = Arc<Mutex<Fake>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Fake> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

fn answer(status: u16, body: Value) -> Response {
    (
        HttpStatus::from_u16(status).unwrap_or(HttpStatus::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

/// Records the request and gives an injected failure, if one is due.
fn record(
    fake: &mut Fake,
    method: &HttpMethod,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Response> {
    fake.seen.push(Seen {
        method: method.to_string(),
        path: uri.to_string(),
        auth: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
    });
    if let Some((status, after)) = fake.fail.pop_front().or(fake.always.map(|s| (s, None))) {
        let mut r = answer(status, json!({ "error": "injected" }));
        if let Some(a) = after
            && let Ok(v) = a.to_string().parse()
        {
            r.headers_mut().insert("retry-after", v);
        }
        return Some(r);
    }
    None
}

/// Records the request; then an injected failure, or `refused` without the
/// right bearer token, or the JSON body to handle.
fn admit(
    fake: &mut Fake,
    method: &HttpMethod,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    refused: Response,
) -> Result<Value, Box<Response>> {
    if let Some(r) = record(fake, method, uri, headers, body) {
        return Err(Box::new(r));
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {}", fake.token))
    {
        return Err(Box::new(refused));
    }
    Ok(serde_json::from_slice(body).unwrap_or(Value::Null))
}

// ---- Fly Machines API ----

async fn fly(
    State(s): State<Shared>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut f = lock(&s);
    let refused = answer(401, json!({ "error": "unauthorized" }));
    let body = match admit(&mut f, &method, &uri, &headers, &body, refused) {
        Ok(body) => body,
        Err(r) => return *r,
    };
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let query = uri.query().unwrap_or_default().to_string();
    let m = method.as_str();
    match (m, parts.as_slice()) {
        ("POST", ["v1", "apps"]) => {
            let name = body["app_name"].as_str().unwrap_or_default().to_string();
            f.apps.insert(name, ());
            answer(201, json!({ "id": "app-1", "created_at": 0 }))
        }
        ("GET", ["v1", "apps", app]) => {
            if f.apps.contains_key(*app) {
                answer(
                    200,
                    json!({ "name": app, "organization": { "slug": "personal" } }),
                )
            } else {
                answer(404, json!({ "error": "app not found" }))
            }
        }
        ("POST", ["v1", "apps", _, "secrets", name]) => {
            let value = body["value"].as_str().unwrap_or_default().to_string();
            f.secrets.insert(name.to_string(), value);
            answer(201, json!({ "name": name }))
        }
        ("DELETE", ["v1", "apps", _, "secrets", name]) => match f.secrets.remove(*name) {
            Some(_) => answer(200, json!({})),
            None => answer(404, json!({ "error": "secret not found" })),
        },
        ("GET", ["v1", "apps", _, "machines"]) => {
            let list: Vec<Value> = f
                .machines
                .iter()
                .map(|(id, (name, state, _, _))| json!({ "id": id, "name": name, "state": state }))
                .collect();
            answer(200, json!(list))
        }
        ("POST", ["v1", "apps", _, "machines"]) => {
            let id = format!("m{}", f.machines.len() + 1);
            let name = body["name"].as_str().unwrap_or_default().to_string();
            let log = f.dir.clone().unwrap_or_default().join(format!("{id}.log"));
            let machine = Machine {
                env: BTreeMap::new(),
                child: None,
                log,
            };
            f.machines.insert(
                id.clone(),
                (
                    name.clone(),
                    "created".into(),
                    body["config"].clone(),
                    machine,
                ),
            );
            answer(200, json!({ "id": id, "name": name, "state": "created" }))
        }
        ("POST", ["v1", "apps", _, "machines", id]) => match f.machines.get_mut(*id) {
            Some(entry) => {
                entry.2 = body["config"].clone();
                answer(200, json!({ "id": id, "state": entry.1 }))
            }
            None => answer(404, json!({ "error": "machine not found" })),
        },
        ("POST", ["v1", "apps", _, "machines", id, "start"]) => {
            let secrets = f.secrets.clone();
            match f.machines.get_mut(*id) {
                Some(entry) => {
                    // Fly gives a machine its config env and the app secrets.
                    let mut env = secrets;
                    if let Some(e) = entry.2["env"].as_object() {
                        for (k, v) in e {
                            env.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
                        }
                    }
                    entry.3.env = env;
                    entry.3.launch();
                    entry.1 = "started".into();
                    answer(200, json!({ "previous_state": "created" }))
                }
                None => answer(404, json!({ "error": "machine not found" })),
            }
        }
        ("POST", ["v1", "apps", _, "machines", id, "stop"]) => match f.machines.get_mut(*id) {
            Some(entry) => {
                entry.3.halt();
                entry.1 = "stopped".into();
                answer(200, json!({ "ok": true }))
            }
            None => answer(404, json!({ "error": "machine not found" })),
        },
        ("GET", ["v1", "apps", _, "machines", id, "wait"]) => match f.machines.get(*id) {
            Some(entry) if query.contains(&format!("state={}", entry.1)) => {
                answer(200, json!({ "ok": true }))
            }
            Some(_) => answer(408, json!({ "error": "deadline exceeded" })),
            None => answer(404, json!({ "error": "machine not found" })),
        },
        ("DELETE", ["v1", "apps", _, "machines", id]) => match f.machines.remove(*id) {
            Some(_) => answer(200, json!({ "ok": true })),
            None => answer(404, json!({ "error": "machine not found" })),
        },
        _ => answer(
            404,
            json!({ "error": format!("no route {m} {}", uri.path()) }),
        ),
    }
}

async fn fly_server(token: &str, dir: &std::path::Path) -> (Shared, String) {
    let state: Shared = Arc::default();
    {
        let mut f = lock(&state);
        f.token = token.to_string();
        f.dir = Some(dir.to_path_buf());
    }
    let url = serve(axum::Router::new().fallback(fly).with_state(state.clone())).await;
    (state, url)
}

fn calls(state: &Shared) -> Vec<String> {
    lock(state)
        .seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect()
}

#[tokio::test]
async fn a_fly_agent_runs_as_a_machine_with_its_secrets_and_retries_429_and_5xx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fake, url) = fly_server("fo1_test_token", dir.path()).await;
    // The first two answers: rate limited (Retry-After 0), then unavailable.
    lock(&fake).fail.extend([(429, Some(0)), (503, None)]);
    let app = spawn_app_with(|c| {
        c.deploy.fly.api_url = url.clone();
        c.deploy.fly.retry_base_ms = 10;
    })
    .await;
    app.put_secret("fly-token", "fo1_test_token").await;
    app.put_secret("model-key", "sk-fly-model").await;
    let id = app
        .create_id(json!({
            "name": "flyer", "role": "r", "model": "m",
            "deployment": { "target": "fly", "fly": {
                "app": "cadre-flyer", "image": "registry.fly.io/cadre-flyer:1",
                "token_secret": "fly-token", "region": "ams", "memory_mb": 512,
            } },
            "llm": { "api_key_secret": "model-key" },
        }))
        .await;
    let (s, v) = app.command(&id, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_state(&id, "running").await;

    // The exact requests, in order, up to the machine being started.
    let seen = calls(&fake);
    let want = [
        "GET /v1/apps/cadre-flyer".to_string(),
        "GET /v1/apps/cadre-flyer".into(),
        "GET /v1/apps/cadre-flyer".into(),
        "POST /v1/apps".into(),
        "GET /v1/apps/cadre-flyer/machines".into(),
        "POST /v1/apps/cadre-flyer/secrets/CADRE_LLM_API_KEY".into(),
        "POST /v1/apps/cadre-flyer/secrets/CADRE_RUNTIME_TOKEN".into(),
        "GET /v1/apps/cadre-flyer/machines".into(),
        "POST /v1/apps/cadre-flyer/machines".into(),
        "GET /v1/apps/cadre-flyer/machines".into(),
        "POST /v1/apps/cadre-flyer/machines/m1/start".into(),
        "GET /v1/apps/cadre-flyer/machines/m1/wait?state=started&timeout=60".into(),
    ];
    assert_eq!(seen[..want.len()], want[..], "{seen:#?}");
    {
        let f = lock(&fake);
        assert!(f.seen.iter().all(|s| s.auth == "Bearer fo1_test_token"));
        assert_eq!(f.seen[3].body["org_slug"], "personal");
        assert_eq!(
            f.secrets.get("CADRE_LLM_API_KEY").map(String::as_str),
            Some("sk-fly-model")
        );
        let create = &f.seen[8].body;
        assert_eq!(create["name"], format!("cadre-{id}"));
        assert_eq!(create["region"], "ams");
        assert_eq!(create["skip_launch"], true);
        let config = &create["config"];
        assert_eq!(config["image"], "registry.fly.io/cadre-flyer:1");
        assert_eq!(config["restart"]["policy"], "no");
        assert_eq!(config["guest"]["memory_mb"], 512);
        assert_eq!(config["metadata"]["cadre_agent"], id.as_str());
        // The runtime's configuration holds no secret: no token, no key.
        let runtime: Value = serde_json::from_str(
            config["env"]["CADRE_RUNTIME_CONFIG"]
                .as_str()
                .unwrap_or("{}"),
        )
        .expect("runtime config");
        assert_eq!(runtime["agent_id"], id.as_str());
        assert_eq!(runtime["token"], "");
        let text = config.to_string();
        assert!(
            !text.contains("sk-fly-model") && !text.contains("fo1_test_token"),
            "{text}"
        );
    }

    // Logs are not in the Machines API: a clear answer, not an empty one.
    let (s, v) = app
        .call(Method::GET, &format!("/api/v1/agents/{id}/logs"), None)
        .await;
    assert!(!s.is_success(), "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("fly logs -a cadre-flyer")),
        "{v}"
    );

    // Stop stops the machine (and the runtime in it); destroy removes it
    // and its token secret.
    app.command(&id, "stop").await;
    eventually("the machine stopped", || async {
        let mut f = lock(&fake);
        f.machines
            .get_mut("m1")
            .is_some_and(|m| m.1 == "stopped" && !m.3.running())
    })
    .await;
    app.command(&id, "destroy").await;
    app.wait_state(&id, "ready").await;
    let f = lock(&fake);
    assert!(f.machines.is_empty());
    assert!(!f.secrets.contains_key("CADRE_RUNTIME_TOKEN"));
}

#[tokio::test]
async fn fly_refusals_are_not_retried_and_lasting_outages_give_up_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (fake, url) = fly_server("the-right-token", dir.path()).await;
    let app = spawn_app_with(|c| {
        c.deploy.fly.api_url = url.clone();
        c.deploy.fly.retry_base_ms = 5;
        c.deploy.fly.max_retries = 2;
    })
    .await;
    app.put_secret("fly-token", "a-wrong-token").await;
    let spec =
        json!({ "app": "cadre-x", "image": "registry.fly.io/x:1", "token_secret": "fly-token" });
    let reason = app
        .deploy_fails(json!({ "name": "x", "role": "r", "model": "m",
                           "deployment": { "target": "fly", "fly": spec } }))
        .await;
    assert!(
        reason.contains("401") && reason.contains("check the token secret"),
        "{reason}"
    );
    assert_eq!(calls(&fake).len(), 1, "a 401 is not retried");

    // Always 503: the first attempt and two retries, then a clear error.
    lock(&fake).always = Some(503);
    lock(&fake).seen.clear();
    app.put_secret("fly-token", "the-right-token").await;
    let reason = app
        .deploy_fails(json!({ "name": "y", "role": "r", "model": "m",
                           "deployment": { "target": "fly", "fly": spec } }))
        .await;
    assert!(
        reason.contains("503") && reason.contains("after 3 attempts"),
        "{reason}"
    );
    assert_eq!(calls(&fake).len(), 3);
}

// ---- Railway GraphQL API ----

async fn railway(
    State(s): State<Shared>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut f = lock(&s);
    // GraphQL: a refusal is a 200 with an error.
    let refused = answer(
        200,
        json!({ "errors": [{ "message": "Not Authorized" }], "data": null }),
    );
    let body = match admit(&mut f, &method, &uri, &headers, &body, refused) {
        Ok(body) => body,
        Err(r) => return *r,
    };
    let q = body["query"].as_str().unwrap_or_default();
    let v = &body["variables"];
    let data = if q.contains("project(") {
        if v["id"] != "proj-1" {
            return answer(
                200,
                json!({ "errors": [{ "message": "Project not found" }] }),
            );
        }
        let services: Vec<Value> = f
            .services
            .iter()
            .map(|(id, (name, _))| json!({ "node": { "id": id, "name": name } }))
            .collect();
        json!({ "project": { "id": "proj-1",
            "environments": { "edges": [
                { "node": { "id": "env-staging", "name": "staging" } },
                { "node": { "id": "env-prod", "name": "production" } } ] },
            "services": { "edges": services } } })
    } else if q.contains("serviceCreate") {
        let id = format!("svc-{}", f.services.len() + 1);
        let name = v["input"]["name"].as_str().unwrap_or_default().to_string();
        f.services.insert(id.clone(), (name, None));
        json!({ "serviceCreate": { "id": id } })
    } else if q.contains("variableCollectionUpsert") {
        f.variables = v["input"]["variables"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        json!({ "variableCollectionUpsert": true })
    } else if q.contains("serviceInstanceUpdate") {
        json!({ "serviceInstanceUpdate": true })
    } else if q.contains("serviceInstanceDeployV2") {
        let service = v["serviceId"].as_str().unwrap_or_default().to_string();
        let id = format!("dep-{}", f.deployments.len() + 1);
        let env = f.variables.clone();
        let log = f.dir.clone().unwrap_or_default().join(format!("{id}.log"));
        if let Some(entry) = f.services.get_mut(&service) {
            let mut m = Machine {
                env,
                child: None,
                log,
            };
            m.launch();
            entry.1 = Some(m);
        }
        f.deployments
            .insert(0, (id.clone(), service, "SUCCESS".into()));
        json!({ "serviceInstanceDeployV2": id })
    } else if q.contains("deploymentLogs") {
        let dep = v["deploymentId"].as_str().unwrap_or_default();
        let log = f.dir.clone().unwrap_or_default().join(format!("{dep}.log"));
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<Value> = text.lines().map(|l| json!({ "message": l })).collect();
        json!({ "deploymentLogs": lines })
    } else if q.contains("deploymentStop") {
        let dep = v["id"].as_str().unwrap_or_default().to_string();
        let mut service = None;
        for d in f.deployments.iter_mut().filter(|d| d.0 == dep) {
            d.2 = "REMOVED".into();
            service = Some(d.1.clone());
        }
        if let Some(Some(m)) = service
            .and_then(|s| f.services.get_mut(&s))
            .map(|e| e.1.as_mut())
        {
            m.halt();
        }
        json!({ "deploymentStop": true })
    } else if q.contains("deployments(") {
        let service = v["input"]["serviceId"].as_str().unwrap_or_default();
        if !f.services.contains_key(service) {
            return answer(
                200,
                json!({ "errors": [{ "message": "Service not found" }] }),
            );
        }
        let edges: Vec<Value> = f
            .deployments
            .iter()
            .filter(|d| d.1 == service)
            .take(1)
            .map(|d| json!({ "node": { "id": d.0, "status": d.2 } }))
            .collect();
        json!({ "deployments": { "edges": edges } })
    } else if q.contains("serviceDelete") {
        let id = v["id"].as_str().unwrap_or_default();
        if f.services.remove(id).is_none() {
            return answer(
                200,
                json!({ "errors": [{ "message": "Service not found" }] }),
            );
        }
        json!({ "serviceDelete": true })
    } else {
        return answer(
            400,
            json!({ "errors": [{ "message": "unknown operation" }] }),
        );
    };
    answer(200, json!({ "data": data }))
}

/// The GraphQL operations seen, by the root field each one names.
fn operations(state: &Shared) -> Vec<String> {
    const ROOTS: &[&str] = &[
        "serviceInstanceDeployV2",
        "serviceInstanceUpdate",
        "variableCollectionUpsert",
        "serviceCreate",
        "serviceDelete",
        "deploymentStop",
        "deploymentLogs",
        "deployments(",
        "project(",
    ];
    lock(state)
        .seen
        .iter()
        .map(|s| {
            let q = s.body["query"].as_str().unwrap_or_default();
            ROOTS
                .iter()
                .find(|r| q.contains(*r))
                .map_or("?", |r| r.trim_end_matches('('))
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn a_railway_agent_runs_as_a_service_with_its_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state: Shared = Arc::default();
    {
        let mut f = lock(&state);
        f.token = "rw-token".into();
        f.dir = Some(dir.path().to_path_buf());
        f.fail.push_back((502, None));
    }
    let url = serve(
        axum::Router::new()
            .fallback(railway)
            .with_state(state.clone()),
    )
    .await;
    let app = spawn_app_with(|c| {
        c.deploy.railway.api_url = format!("{url}/graphql/v2");
        c.deploy.railway.retry_base_ms = 10;
    })
    .await;
    app.put_secret("railway-token", "rw-token").await;
    let id = app
        .create_id(json!({
            "name": "rail", "role": "r", "model": "m",
            "deployment": { "target": "railway", "railway": {
                "project_id": "proj-1", "image": "ghcr.io/acme/cadre:1", "token_secret": "railway-token",
            } },
        }))
        .await;
    app.command(&id, "deploy").await;
    app.wait_state(&id, "running").await;
    let ops = operations(&state);
    assert_eq!(
        ops[..6],
        [
            "project",
            "project",
            "serviceCreate",
            "variableCollectionUpsert",
            "serviceInstanceUpdate",
            "serviceInstanceDeployV2"
        ],
        "{ops:?}"
    );
    {
        let f = lock(&state);
        assert!(
            f.seen
                .iter()
                .all(|s| s.auth == "Bearer rw-token" && s.path == "/graphql/v2")
        );
        let create = &f.seen[2].body["variables"]["input"];
        assert_eq!(create["name"], format!("cadre-{id}"));
        assert_eq!(create["source"]["image"], "ghcr.io/acme/cadre:1");
        let upsert = &f.seen[3].body["variables"]["input"];
        assert_eq!(upsert["environmentId"], "env-prod");
        assert_eq!(upsert["skipDeploys"], true);
        assert!(
            upsert["variables"]["CADRE_RUNTIME_TOKEN"]
                .as_str()
                .is_some_and(|t| t.starts_with(&id))
        );
        let update = &f.seen[4].body["variables"]["input"];
        assert_eq!(update["restartPolicyType"], "NEVER");
    }
    // Logs come from the deployment.
    app.wait_runtime_log(&id).await;
    app.command(&id, "stop").await;
    eventually("the deployment stopped", || async {
        operations(&state).iter().any(|o| o == "deploymentStop")
    })
    .await;
    app.command(&id, "destroy").await;
    app.wait_state(&id, "ready").await;
    assert!(lock(&state).services.is_empty());
}

#[tokio::test]
async fn railway_errors_name_the_cause() {
    let state: Shared = Arc::default();
    lock(&state).token = "rw-token".into();
    let url = serve(
        axum::Router::new()
            .fallback(railway)
            .with_state(state.clone()),
    )
    .await;
    let app = spawn_app_with(|c| c.deploy.railway.api_url = url.clone()).await;
    app.put_secret("railway-token", "stale").await;
    let spec = json!({ "project_id": "proj-1", "image": "ghcr.io/acme/cadre:1", "token_secret": "railway-token" });
    let reason = app
        .deploy_fails(json!({ "name": "a", "role": "r", "model": "m",
                           "deployment": { "target": "railway", "railway": spec } }))
        .await;
    assert!(
        reason.contains("Not Authorized") && reason.contains("check the token secret"),
        "{reason}"
    );

    app.put_secret("railway-token", "rw-token").await;
    let mut spec = spec;
    spec["environment"] = json!("qa");
    let reason = app
        .deploy_fails(json!({ "name": "b", "role": "r", "model": "m",
                           "deployment": { "target": "railway", "railway": spec } }))
        .await;
    assert!(reason.contains("no environment \"qa\""), "{reason}");
}

#[tokio::test]
async fn cloud_settings_are_checked_before_anything_is_stored() {
    let app = spawn_app().await;
    app.put_secret("tok", "x").await;
    let cases = [
        (
            json!({ "target": "fly", "fly": { "app": "Bad_App", "image": "i:1", "token_secret": "tok" } }),
            "deployment.fly.app",
        ),
        (
            json!({ "target": "fly", "fly": { "app": "a", "image": "-i", "token_secret": "tok" } }),
            "deployment.fly.image",
        ),
        (
            json!({ "target": "fly", "fly": { "app": "a", "image": "i:1", "token_secret": "nope" } }),
            "deployment.fly.token_secret",
        ),
        (
            json!({ "target": "fly", "fly": { "app": "a", "image": "i:1", "token_secret": "tok", "memory_mb": 1 } }),
            "deployment.fly.memory_mb",
        ),
        (
            json!({ "target": "railway", "railway": { "project_id": "p/../x", "image": "i:1", "token_secret": "tok" } }),
            "deployment.railway.project_id",
        ),
        (
            json!({ "target": "railway", "railway": { "project_id": "p", "image": "i:1", "token_secret": "tok", "environment": "a b" } }),
            "deployment.railway.environment",
        ),
    ];
    for (deployment, field) in cases {
        let (s, v) = app
            .call(
                Method::POST,
                "/api/v1/agents",
                Some(json!({ "name": "bad", "role": "r", "model": "m", "deployment": deployment })),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{deployment}: {v}");
        assert_eq!(v["field"], field, "{deployment}: {v}");
    }
}
