//! Bad input gets a clear error (status, stable code, message) and changes nothing.

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn agent_count(app: &TestApp) -> usize {
    let (_, v) = app
        .call(Method::GET, "/api/v1/agents?limit=200", None)
        .await;
    v["items"].as_array().map(Vec::len).unwrap_or(0)
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["code"], want_code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message present: {body}"
    );
}

#[tokio::test]
async fn requests_without_a_valid_token_are_refused() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/api/v1/agents"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        resp.headers().get("www-authenticate").map(|h| h.as_bytes()),
        Some(&b"Bearer"[..])
    );
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "unauthenticated");
    for bad in ["Bearer nope", "Basic abc", "Bearer "] {
        let resp = app
            .client
            .post(app.url("/api/v1/agents"))
            .header("authorization", bad)
            .json(&json!({ "name": "x" }))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bad}");
    }
    let resp = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({ "email": "admin@localhost", "password": "wrong" }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "invalid_credentials");
    let resp = app
        .client
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({ "email": "nobody@example.com", "password": PASSWORD }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(agent_count(&app).await, 0);
}

#[tokio::test]
async fn malformed_bodies_get_4xx_and_change_nothing() {
    let app = spawn_app().await;
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            json!({ "name": "x", "bogus": 1 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({ "name": 42 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (
            json!({ "name": "   " }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({ "name": "x".repeat(201) }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({ "name": "a\u{0007}b" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({ "name": "x", "deployment": { "target": "mars" } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({ "name": "x", "health": { "interval_ms": 0 } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({ "name": "x", "health": { "interval_ms": -5 } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({ "name": "x", "budget": { "monthly_cost_usd": -1 } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({ "name": "x", "budget": { "monthly_tokens": u64::MAX } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!([1, 2]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let (s, v) = app
            .call(Method::POST, "/api/v1/agents", Some(body.clone()))
            .await;
        assert_error(s, &v, status, code);
    }
    // Field errors name the field.
    let (_, v) = app
        .call(Method::POST, "/api/v1/agents", Some(json!({ "name": "" })))
        .await;
    assert_eq!(v["field"], "name");

    let raw = |body: &'static str, ctype: Option<&'static str>| {
        let mut req = app
            .client
            .post(app.url("/api/v1/agents"))
            .bearer_auth(&app.token)
            .body(body);
        if let Some(c) = ctype {
            req = req.header("content-type", c);
        }
        req.send()
    };
    let resp = raw("{\"name\": ", Some("application/json"))
        .await
        .expect("send");
    let s = resp.status();
    assert_error(
        s,
        &resp.json().await.expect("json"),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    );
    let resp = raw("{\"name\": \"x\"}", None).await.expect("send");
    let s = resp.status();
    assert_error(
        s,
        &resp.json().await.expect("json"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let resp = app
        .client
        .post(app.url("/api/v1/agents"))
        .bearer_auth(&app.token)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .expect("send");
    let s = resp.status();
    assert_error(
        s,
        &resp.json().await.expect("json"),
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );

    assert_eq!(agent_count(&app).await, 0, "nothing was created");
}

#[tokio::test]
async fn unknown_things_and_illegal_commands() {
    let app = spawn_app().await;
    let id = app.create_id(json!({ "name": "x" })).await;
    let (s, v) = app
        .call(
            Method::GET,
            "/api/v1/agents/00000000-0000-7000-8000-000000000000",
            None,
        )
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = app
        .call(Method::GET, "/api/v1/agents/not-an-id", None)
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = app.command(&id, "explode").await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "unknown_command");
    let (s, v) = app.command(&id, "start").await;
    assert_error(s, &v, StatusCode::CONFLICT, "illegal_transition");
    assert_eq!(v["state"], "draft");
    assert_eq!(v["allowed"], json!(["deploy", "delete"]));
    let (s, v) = app
        .call(Method::GET, "/api/v1/agents?state=flying", None)
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_query");
    let (s, v) = app.call(Method::GET, "/api/v1/agents?limit=0", None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_query");
    let (s, v) = app
        .call(Method::GET, "/api/v1/agents?limit=abc", None)
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_query");
    let (s, v) = app
        .call(Method::GET, "/api/v1/agents?sort=name", None)
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_query");
    let (s, v) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{id}/history?cursor=-3"),
            None,
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_query");
    let (s, v) = app.call(Method::GET, "/api/v1/nothing-here", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = app.call(Method::PUT, "/api/v1/agents", None).await;
    assert_error(s, &v, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let (s, v) = app
        .call(Method::POST, "/api/v1/agents", Some(json!({ "name": "x" })))
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "name_taken");
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{id}"),
            Some(json!({ "health": { "failure_threshold": 0 } })),
        )
        .await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
    // None of that changed the agent.
    let v = app.get(&id).await;
    assert_eq!(
        (
            v["state"].as_str(),
            v["health"]["failure_threshold"].as_u64()
        ),
        (Some("draft"), Some(3))
    );
    assert_eq!(app.history(&id).await.len(), 1);
}

#[tokio::test]
async fn chaos_hook_is_off_by_default_and_liveness_endpoints_answer() {
    let app = spawn_app_with(|c| c.chaos.enabled = false).await;
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/admin/chaos/kill",
            Some(json!({ "target": "tenant", "id": "x" })),
        )
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let resp = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body["checks"],
        json!({ "store": true, "supervisors": true, "activity_writer": true })
    );
    app.create(json!({ "name": "m" })).await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(text.contains("cadre_http_requests_total"), "{text}");
    assert!(text.contains("cadre_mailbox_inflight"), "{text}");
}

/// README "Rough edges": a body declared too large is refused at once, not
/// after the request timeout; identifiers with control characters, an
/// activity time far ahead and an oversized cursor are refused as names
/// are, and nothing is written.
#[tokio::test]
async fn edge_inputs_are_refused_at_once_and_change_nothing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let agent = app
        .create_id(json!({ "name": "edges", "role": "r", "model": "m" }))
        .await;

    // A Content-Length over the limit with no body: 413 at once.
    let mut tcp = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v1/agents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n",
        app.token
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut answer))
        .await
        .expect("answered before the request timeout")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(agent_count(&app).await, 1);

    // Identifiers with control characters, and a time far ahead. The
    // create's audit entry reaches the agent's activity through the audit
    // bridge, which polls: it first, or its late arrival would read as
    // written by the refused requests.
    let before = crate::common::eventually_some("the create's activity", || async {
        let (_, v) = app
            .call(
                Method::GET,
                &format!("/api/v1/activity?agent={agent}"),
                None,
            )
            .await;
        let kinds: Vec<&str> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["kind"].as_str())
            .collect();
        kinds.contains(&"audit.agent.create").then_some(v.clone())
    })
    .await;
    let ahead = (time::OffsetDateTime::now_utc() + time::Duration::days(3650))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("time");
    for (event, field) in [
        (
            json!({ "agent_id": agent, "kind": "message", "payload": { "conversation_id": "c\u{0}1", "role": "user", "content": "hi" } }),
            "events[0].payload.conversation_id",
        ),
        (
            json!({ "agent_id": agent, "kind": "tool_call", "payload": { "tool_id": "files.read\nrm", "status": "ok" } }),
            "events[0].payload.tool_id",
        ),
        (
            json!({ "agent_id": agent, "kind": "note", "at": ahead }),
            "events[0].at",
        ),
    ] {
        let (s, v) = app
            .call(
                Method::POST,
                "/api/v1/activity",
                Some(json!({ "events": [event] })),
            )
            .await;
        assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, "invalid");
        assert_eq!(v["field"], field, "{v}");
    }
    let (_, after) = app
        .call(
            Method::GET,
            &format!("/api/v1/activity?agent={agent}"),
            None,
        )
        .await;
    assert_eq!(before["items"], after["items"], "nothing was written");

    // One cursor rule for every list: 64 safe characters at most.
    let long = "a".repeat(5000);
    for path in [
        format!("/api/v1/agents?cursor={long}"),
        format!("/api/v1/agents/{agent}/history?cursor={long}"),
        format!("/api/v1/activity?cursor={long}"),
        format!("/api/v1/users?cursor={long}"),
        format!("/api/v1/approvals?cursor={long}"),
        format!("/api/v1/knowledge-bases?cursor={long}"),
    ] {
        let (s, v) = app.call(Method::GET, &path, None).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_query");
    }
}
