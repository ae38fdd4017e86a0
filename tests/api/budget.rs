//! Budget enforcement with usage reported over the runtime protocol.
//!
//! The test speaks the protocol itself, with the agent's token read from its
//! `runtime.json`. The agent's probe interval is long so that the real
//! runtime, superseded by the test's connection, is not restarted meanwhile.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_as_runtime(app: &TestApp, token: &str) -> Result<Ws, StatusCode> {
    let mut req = format!("ws://{}/api/v1/runtime/connect", app.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let mut ws = match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            return Err(StatusCode::from_u16(resp.status().as_u16()).expect("status"));
        }
        Err(e) => panic!("connect: {e}"),
    };
    send(
        &mut ws,
        json!({ "type": "hello", "protocol": 1, "runtime_version": "test", "pid": 1 }),
    )
    .await;
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    Ok(ws)
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("json frame"),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

async fn usage(ws: &mut Ws, report_id: &str, tokens: u64) -> Value {
    send(ws, json!({ "type": "usage", "report_id": report_id, "model": "gpt-4o", "input_tokens": tokens, "output_tokens": 0 })).await;
    recv(ws).await
}

fn token_of(app: &TestApp, id: &str) -> String {
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(app.agent_dir(id).join("runtime.json")).expect("runtime.json"),
    )
    .expect("json");
    config["token"].as_str().expect("token").to_string()
}

async fn running_with_budget(app: &TestApp, name: &str, tokens: u64) -> String {
    let v = app
        .create(json!({
            "name": name, "role": "r", "model": "gpt-4o",
            "health": { "interval_ms": 600000 },
            "budget": { "monthly_tokens": tokens },
        }))
        .await;
    let id = v["id"].as_str().expect("id").to_string();
    app.command(&id, "deploy").await;
    app.wait_state(&id, "running").await;
    // The test speaks for the runtime from here on: the real one would
    // reconnect and supersede the test's connection. It is frozen, not
    // killed: a runtime that exits is recovered at once, while a frozen one
    // is a live process whose probes are 10 minutes apart.
    if let Some(pid) = app.runtime_pid(&id) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        );
    }
    id
}

#[tokio::test]
async fn usage_warns_at_80_percent_and_stops_at_100() {
    let app = spawn_app().await;
    let id = running_with_budget(&app, "b", 1000).await;
    let token = token_of(&app, &id);
    assert_eq!(
        connect_as_runtime(&app, "nope.nope").await.err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        connect_as_runtime(&app, &format!("{id}.wrong-secret"))
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    let mut ws = connect_as_runtime(&app, &token).await.expect("connect");

    let ack = usage(&mut ws, "r1", 850).await;
    assert_eq!(
        (ack["type"].as_str(), ack["counted"].as_bool()),
        (Some("usage_ack"), Some(true)),
        "{ack}"
    );
    let dup = usage(&mut ws, "r1", 850).await;
    assert_eq!(
        dup["counted"], false,
        "a resent report is not counted twice"
    );
    let v = app.get(&id).await;
    assert_eq!(v["usage"]["tokens"], 850);
    let (_, events) = app
        .call(Method::GET, &format!("/api/v1/agents/{id}/events"), None)
        .await;
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["budget_warning"]);

    let ack = usage(&mut ws, "r2", 200).await;
    assert_eq!(ack["type"], "usage_ack");
    let stop = recv(&mut ws).await;
    assert_eq!(
        (stop["type"].as_str(), stop["reason"].as_str()),
        (Some("stop"), Some("budget_exceeded"))
    );
    let v = app.get(&id).await;
    assert_eq!(
        (v["state"].as_str(), v["state_reason"].as_str()),
        (Some("stopped"), Some("budget_exceeded"))
    );
    let cost = v["usage"]["cost_usd"].as_f64().expect("cost");
    assert!(
        (cost - 1050.0 * 2.5 / 1e6).abs() < 1e-9,
        "priced from the table: {cost}"
    );

    refused_start(&app, &id, "budget_exceeded").await;
    let (s, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{id}"),
            Some(json!({ "budget": { "monthly_tokens": 5000 } })),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.command(&id, "start").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    app.wait_state(&id, "running").await;
}

#[tokio::test]
async fn usage_counters_survive_a_server_restart() {
    let mut app = spawn_app().await;
    let id = running_with_budget(&app, "u", 1_000_000).await;
    let token = token_of(&app, &id);
    let mut ws = connect_as_runtime(&app, &token).await.expect("connect");
    usage(&mut ws, "before-1", 1234).await;
    drop(ws);
    app.restart().await;
    let v = app.get(&id).await;
    assert_eq!(v["usage"]["tokens"], 1234);
    let mut ws = connect_as_runtime(&app, &token)
        .await
        .expect("reconnect after restart");
    let dup = usage(&mut ws, "before-1", 1234).await;
    assert_eq!(
        dup["counted"], false,
        "idempotency keys survive the restart too"
    );
    usage(&mut ws, "after-1", 1).await;
    assert_eq!(app.get(&id).await["usage"]["tokens"], 1235);
}

async fn org_limits(app: &TestApp, limits: Value) {
    let (s, org) = app.call(Method::GET, "/api/v1/orgs/current", None).await;
    assert_eq!(s, StatusCode::OK, "{org}");
    let id = org["id"].as_str().expect("org id");
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/orgs/{id}"),
            Some(json!({ "limits": limits })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn refused_start(app: &TestApp, id: &str, code: &str) {
    let (s, e) = app.command(id, "start").await;
    assert_eq!(
        (s, e["code"].as_str()),
        (StatusCode::CONFLICT, Some(code)),
        "{e}"
    );
}

async fn org_tokens(app: &TestApp) -> u64 {
    let (_, org) = app.call(Method::GET, "/api/v1/orgs/current", None).await;
    org["usage"]["tokens"].as_u64().expect("usage.tokens")
}

#[tokio::test]
async fn the_organizations_monthly_budget_stops_all_its_agents_and_survives_restarts() {
    let mut app = spawn_app().await;
    let a = running_with_budget(&app, "a", 1_000_000).await;
    let b = running_with_budget(&app, "b", 1_000_000).await;
    org_limits(&app, json!({ "monthly_tokens": 1000 })).await;
    let mut ws_a = connect_as_runtime(&app, &token_of(&app, &a))
        .await
        .expect("a connects");
    let mut ws_b = connect_as_runtime(&app, &token_of(&app, &b))
        .await
        .expect("b connects");

    // Each agent is well inside its own budget; together they cross the org's.
    assert_eq!(usage(&mut ws_a, "a1", 600).await["counted"], true);
    assert_eq!(app.get(&b).await["state"], "running");
    assert_eq!(usage(&mut ws_b, "b1", 500).await["counted"], true);
    let stop = recv(&mut ws_b).await;
    assert_eq!(
        (stop["type"].as_str(), stop["reason"].as_str()),
        (Some("stop"), Some("org_budget_exceeded")),
        "{stop}"
    );
    // The other agent is stopped too, without reporting anything itself.
    let v = app.wait_state(&a, "stopped").await;
    assert_eq!(v["state_reason"], "org_budget_exceeded");
    assert_eq!(org_tokens(&app).await, 1100);
    refused_start(&app, &a, "org_budget_exceeded").await;
    drop((ws_a, ws_b));

    // Deleting an agent does not give the organization its month back, and
    // neither does a restart.
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/agents/{b}"), None)
        .await;
    assert!(s.is_success(), "{s}");
    app.restart().await;
    assert_eq!(org_tokens(&app).await, 1100);
    refused_start(&app, &a, "org_budget_exceeded").await;

    // Raising the limit lets it start; lowering it below the spend stops it.
    org_limits(&app, json!({ "monthly_tokens": 5000 })).await;
    let (s, e) = app.command(&a, "start").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{e}");
    app.wait_state(&a, "running").await;
    org_limits(&app, json!({ "monthly_tokens": 1000 })).await;
    let v = app.wait_state(&a, "stopped").await;
    assert_eq!(v["state_reason"], "org_budget_exceeded");
}

/// `GET /agents/{id}/spend` and `/orgs/current/spend`: the period's spend
/// by day (by hour for a daily budget) in the organization's time zone,
/// against the budget, from the usage reports that were counted.
#[tokio::test]
async fn spend_is_shown_across_the_period_against_the_budget() {
    let app = spawn_app().await;
    let id = running_with_budget(&app, "spender", 1_000_000).await;
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{id}"),
            Some(json!({ "budget": { "monthly_cost_usd": 10.0 } })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut ws = connect_as_runtime(&app, &token_of(&app, &id))
        .await
        .expect("connects");
    assert_eq!(usage(&mut ws, "r1", 1000).await["counted"], true);
    assert_eq!(usage(&mut ws, "r2", 3000).await["counted"], true);
    // A report sent twice counts once, here as in the budget.
    assert_eq!(usage(&mut ws, "r2", 3000).await["counted"], false);

    let (s, v) = app
        .call(Method::GET, &format!("/api/v1/agents/{id}/spend"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let now = time::OffsetDateTime::now_utc();
    assert_eq!(v["unit"], "day");
    assert_eq!(v["timezone"], "UTC");
    assert_eq!(
        v["period"],
        format!("{:04}-{:02}", now.year(), u8::from(now.month()))
    );
    let parts = v["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), usize::from(now.month().length(now.year())));
    let today = parts
        .iter()
        .position(|p| {
            p["start"]
                .as_str()
                .is_some_and(|s| s.starts_with(&now.date().to_string()))
        })
        .expect("today is a part");
    assert_eq!(parts[today]["tokens"], 4000, "{v}");
    // 4,000 gpt-4o input tokens at 2.50 USD per million.
    assert_eq!(parts[today]["cost_usd"], 0.01, "{v}");
    let others: i64 = parts
        .iter()
        .map(|p| p["tokens"].as_i64().unwrap_or(0))
        .sum::<i64>()
        - 4000;
    assert_eq!(others, 0, "{v}");
    assert_eq!(
        (v["tokens"].clone(), v["cost_usd"].clone()),
        (json!(4000), json!(0.01))
    );
    assert_eq!(
        v["budget"],
        json!({ "tokens": 1_000_000, "cost_usd": 10.0 })
    );

    // The organization's, with its limit.
    org_limits(&app, json!({ "monthly_tokens": 50_000 })).await;
    let (s, o) = app
        .call(Method::GET, "/api/v1/orgs/current/spend", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{o}");
    assert_eq!(o["tokens"], 4000, "{o}");
    assert_eq!(o["budget"]["tokens"], 50_000, "{o}");

    // A daily budget is shown by hour; another organization sees nothing.
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{id}"),
            Some(json!({ "budget": { "period": "daily" } })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = app
        .call(Method::GET, &format!("/api/v1/agents/{id}/spend"), None)
        .await;
    assert_eq!(v["unit"], "hour", "{v}");
    assert_eq!(v["parts"].as_array().map(Vec::len), Some(24), "{v}");
    assert_eq!(v["tokens"], 4000, "{v}");
    let (s, _) = app
        .call(
            Method::GET,
            "/api/v1/agents/00000000-0000-7000-8000-000000000000/spend",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
