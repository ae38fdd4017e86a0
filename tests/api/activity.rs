//! The activity pipeline end to end: ingest acknowledged only once committed,
//! history pages, live streams (SSE resume, WebSocket resync), a killed
//! writer, a locked database.

use crate::common::*;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn post(app: &TestApp, events: Value) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        "/api/v1/activity",
        Some(json!({ "events": events })),
    )
    .await
}

async fn org_id(app: &TestApp) -> String {
    let (_, org) = app.call(Method::GET, "/api/v1/orgs/current", None).await;
    org["id"].as_str().expect("org id").to_string()
}

fn events(agent: &str, kind: &str, n: usize, pad: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({ "agent_id": agent, "kind": kind, "payload": { "i": i, "pad": "x".repeat(pad) } }))
            .collect(),
    )
}

#[tokio::test]
async fn ingest_is_acknowledged_once_committed_and_pages_newest_first() {
    let app = spawn_app().await;
    let agent = app.create_id(json!({ "name": "a" })).await;
    let (s, v) = post(
        &app,
        json!([
            { "agent_id": agent, "kind": "tool_call", "payload": { "tool": "search" } },
            { "agent_id": agent, "kind": "message", "payload": { "text": "hi" }, "at": "2026-01-02T03:04:05Z" },
            { "kind": "org.note" },
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accepted"], 3);
    // Acknowledged means committed: readable at once, no flush needed.
    let org = org_id(&app).await;
    assert_eq!(
        app.store()
            .activity_count(&org, Some("tool_call"))
            .await
            .expect("count"),
        1
    );
    let (s, page) = app
        .call(Method::GET, "/api/v1/activity?limit=2", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["kind"], "org.note", "newest first: {page}");
    assert_eq!(items[1]["kind"], "message");
    assert_eq!(items[1]["at"], "2026-01-02T03:04:05Z");
    let cursor = page["next_cursor"].as_str().expect("more pages");
    let (_, next) = app
        .call(
            Method::GET,
            &format!("/api/v1/activity?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(next["items"][0]["kind"], "tool_call", "{next}");
    // Filters: agent, kind, kind prefix, time range.
    let (_, by_kind) = app
        .call(Method::GET, "/api/v1/activity?kind=message", None)
        .await;
    assert_eq!(by_kind["items"].as_array().map(Vec::len), Some(1));
    let (_, states) = app
        .call(
            Method::GET,
            &format!("/api/v1/activity?agent={agent}&kind=agent."),
            None,
        )
        .await;
    assert!(
        states["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["kind"].as_str().is_some_and(|k| k.starts_with("agent."))),
        "{states}"
    );
    let (_, old) = app
        .call(
            Method::GET,
            "/api/v1/activity?until=2026-02-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(old["items"].as_array().map(Vec::len), Some(1), "{old}");

    // Bad input changes nothing.
    let before = app.store().activity_count(&org, None).await.expect("count");
    let (_, other) = {
        let (_, token) = other_org_owner(&app).await;
        let id = {
            let (s, v) = app
                .call_as(
                    Some(&token),
                    Method::POST,
                    "/api/v1/agents",
                    Some(json!({ "name": "theirs" })),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            v["id"].as_str().expect("id").to_string()
        };
        (token, id)
    };
    for (bad, field) in [
        (json!([]), "events"),
        (json!([{ "kind": "BAD KIND" }]), "events[0].kind"),
        (
            json!([{ "kind": "k", "agent_id": "nope" }]),
            "events[0].agent_id",
        ),
        // Another organization's agent reads as unknown.
        (
            json!([{ "kind": "k", "agent_id": other }]),
            "events[0].agent_id",
        ),
        (
            json!([{ "kind": "k" }, { "kind": "k", "at": "yesterday" }]),
            "events[1].at",
        ),
        (
            json!([{ "kind": "k", "payload": { "x": "y".repeat(70_000) } }]),
            "events[0].payload",
        ),
    ] {
        let (s, v) = post(&app, bad).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["field"], field, "{v}");
    }
    let (s, v) = app
        .call(Method::GET, "/api/v1/activity?cursor=abc", None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query"))
    );
    assert_eq!(
        app.store().activity_count(&org, None).await.expect("count"),
        before
    );
}

/// Creates a second organization; answers (org id, owner token).
async fn other_org_owner(app: &TestApp) -> (String, String) {
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/orgs",
            Some(json!({ "name": "Other", "slug": "other", "plan": "team",
                          "owner": { "email": "o@other.test", "password": "other-password-1", "name": "O" } })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, token, _) = app.sign_in("o@other.test", "other-password-1").await;
    assert_eq!(s, StatusCode::OK);
    (v["id"].as_str().expect("id").to_string(), token)
}

/// Reads SSE frames (`id`, `event`, `data`) until `n` events arrived.
async fn sse_events(mut resp: reqwest::Response, n: usize) -> Vec<(Option<i64>, String, Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(LIMIT, resp.chunk())
            .await
            .expect("event in time")
            .expect("chunk")
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::new(), String::new());
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !data.is_empty() {
                out.push((id, event, serde_json::from_str(&data).expect("json data")));
            }
        }
    }
    out
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_then_streams_live_for_its_org_only() {
    let app = spawn_app().await;
    let agent = app.create_id(json!({ "name": "s" })).await;
    let (_, v) = post(&app, events(&agent, "step", 3, 0)).await;
    let first = v["first_id"].as_i64().expect("first_id");
    let (_, other_token) = other_org_owner(&app).await;
    let other = app
        .client
        .get(app.url("/api/v1/events"))
        .bearer_auth(&other_token)
        .send()
        .await
        .expect("other stream");
    assert_eq!(other.status(), StatusCode::OK);

    // Resume after the first: the other two come from the database.
    let resp = app
        .client
        .get(app.url("/api/v1/events?kind=step"))
        .bearer_auth(&app.token)
        .header("last-event-id", first.to_string())
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let reader = tokio::spawn(sse_events(resp, 3));
    // Then live ones (and nothing of another kind: the filter holds).
    let (_, v) = post(
        &app,
        json!([{ "agent_id": agent, "kind": "noise" }, { "agent_id": agent, "kind": "step", "payload": { "i": 9 } }]),
    )
    .await;
    let live_id = v["first_id"].as_i64().expect("first_id") + 1;
    let got = reader.await.expect("reader");
    let ids: Vec<Option<i64>> = got.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(
        ids,
        [Some(first + 1), Some(first + 2), Some(live_id)],
        "{got:?}"
    );
    assert!(
        got.iter()
            .all(|(_, e, d)| e == "activity" && d["kind"] == "step")
    );
    assert_eq!(got[2].2["payload"]["i"], 9);

    // The other organization's stream carried none of it: post one of its
    // own and it is the first thing that stream sees.
    let theirs = app
        .call_as(
            Some(&other_token),
            Method::POST,
            "/api/v1/activity",
            Some(json!({ "events": [{ "kind": "their.own" }] })),
        )
        .await;
    assert_eq!(theirs.0, StatusCode::OK, "{}", theirs.1);
    let seen = sse_events(other, 1).await;
    assert_eq!(seen[0].2["kind"], "their.own", "{seen:?}");
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn stream(app: &TestApp, query: &str) -> Ws {
    let mut req = format!("ws://{}/api/v1/stream{query}", app.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", app.token).parse().expect("header"),
    );
    tokio_tungstenite::connect_async(req)
        .await
        .expect("stream connects")
        .0
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(LIMIT, ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("json"),
            Some(Ok(_)) => continue,
            other => panic!("stream ended: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_slow_websocket_consumer_gets_resync_then_everything_in_order() {
    let app = spawn_app_with(|c| c.activity.stream_buffer = 16).await;
    let agent = app.create_id(json!({ "name": "w" })).await;
    let mut ws = stream(&app, "?kind=bulk").await;
    // The socket is open before anything is posted (the server subscribes
    // before it answers the upgrade).
    let mut first = None;
    let mut last = 0;
    // Far more than socket buffers hold while the client does not read.
    for _ in 0..20 {
        let (s, v) = post(&app, events(&agent, "bulk", 500, 1000)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let f = v["first_id"].as_i64().expect("first_id");
        first.get_or_insert(f);
        last = f + 499;
    }
    let first = first.expect("posted");
    let mut seen = Vec::new();
    let mut resyncs = 0;
    while seen.last().copied() != Some(last) {
        let m = next_json(&mut ws).await;
        match m["type"].as_str() {
            Some("resync") => {
                resyncs += 1;
                let from = m["from"].as_i64().expect("from");
                match seen.last() {
                    Some(l) => assert_eq!(from, l + 1, "{m}"),
                    None => assert!(from <= first, "{m}"),
                }
            }
            Some("activity") => seen.push(m["id"].as_i64().expect("id")),
            _ => panic!("unexpected {m}"),
        }
    }
    assert!(resyncs >= 1, "the consumer fell behind and was told so");
    let expected: Vec<i64> = (first..=last).collect();
    assert_eq!(seen.len(), expected.len(), "no gap and no duplicate");
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn killing_the_writer_during_ingest_loses_nothing_acknowledged() {
    let app = spawn_app_with(|c| c.activity.flush_rows = 50).await;
    let agent = app.create_id(json!({ "name": "k" })).await;
    let org = org_id(&app).await;
    let activity = app.running.as_ref().expect("running").activity.clone();
    let acked = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for _ in 0..4 {
        let client = app.client.clone();
        let url = app.url("/api/v1/activity");
        let token = app.token.clone();
        let acked = acked.clone();
        let batch = json!({ "events": events(&agent, "ingest", 20, 10) });
        producers.push(tokio::spawn(async move {
            for _ in 0..40 {
                let resp = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&batch)
                    .send()
                    .await
                    .expect("post");
                if resp.status() == StatusCode::OK {
                    let v: Value = resp.json().await.expect("json");
                    acked.fetch_add(v["accepted"].as_u64().expect("n"), Ordering::SeqCst);
                }
            }
        }));
    }
    let mut kills = 0;
    while !producers.iter().all(|p| p.is_finished()) {
        if activity.kill_writer(kills % 2 == 1) {
            kills += 1;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    for p in producers {
        p.await.expect("producer");
    }
    assert!(kills >= 3, "the writer was killed {kills} times");
    assert!(activity.flush(LIMIT).await, "flushed");
    let stored = app
        .store()
        .activity_count(&org, Some("ingest"))
        .await
        .expect("count");
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked > 0);
    assert_eq!(
        stored as u64, acked,
        "written exactly what was acknowledged"
    );
}

#[tokio::test]
async fn a_locked_database_holds_producers_back_then_everything_lands() {
    let app = spawn_app_with(|c| {
        c.activity.queue_rows = 100;
        c.activity.flush_rows = 50;
        c.activity.stall_ms = 100;
        c.activity.retry_max_ms = 200;
    })
    .await;
    let agent = app.create_id(json!({ "name": "l" })).await;
    let org = org_id(&app).await;
    let (s, _) = app.call(Method::GET, "/readyz", None).await;
    assert_eq!(s, StatusCode::OK);
    // Another process holds the write lock: every flush waits, then fails.
    let mut lock = {
        use sqlx::Connection;
        sqlx::SqliteConnection::connect(&app.config.database_url())
            .await
            .expect("lock connection")
    };
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .expect("lock");
    let mut posts = Vec::new();
    for _ in 0..6 {
        let client = app.client.clone();
        let url = app.url("/api/v1/activity");
        let token = app.token.clone();
        let batch = json!({ "events": events(&agent, "held", 40, 10) });
        posts.push(tokio::spawn(async move {
            let resp = client
                .post(&url)
                .bearer_auth(&token)
                .json(&batch)
                .send()
                .await
                .expect("post");
            resp.status()
        }));
    }
    eventually("readyz reports the stalled writer", || async {
        let (s, v) = app.call(Method::GET, "/readyz", None).await;
        s == StatusCode::SERVICE_UNAVAILABLE && v["checks"]["activity_writer"] == false
    })
    .await;
    // 240 rows against a queue of 100: producers are held back, none answered.
    assert!(
        posts.iter().all(|p| !p.is_finished()),
        "nothing acknowledged while locked"
    );
    sqlx::query("ROLLBACK")
        .execute(&mut lock)
        .await
        .expect("unlock");
    drop(lock);
    for p in posts {
        assert_eq!(p.await.expect("post"), StatusCode::OK);
    }
    assert_eq!(
        app.store()
            .activity_count(&org, Some("held"))
            .await
            .expect("count"),
        240
    );
    eventually("readyz recovers", || async {
        app.call(Method::GET, "/readyz", None).await.0 == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn state_changes_reach_the_stream_and_the_history() {
    let app = spawn_app().await;
    let mut ws = stream(&app, "?kind=agent.").await;
    let agent = app
        .create_id(json!({ "name": "t", "role": "r", "model": "m" }))
        .await;
    app.command(&agent, "deploy").await;
    let m = next_json(&mut ws).await;
    assert_eq!(
        (
            m["kind"].as_str(),
            m["agent_id"].as_str(),
            m["payload"]["to"].as_str()
        ),
        (
            Some("agent.state_changed"),
            Some(agent.as_str()),
            Some("configuring")
        ),
        "{m}"
    );
    // The same event, with the same id, is in the history.
    let id = m["id"].as_i64().expect("id");
    let (_, page) = app
        .call(
            Method::GET,
            &format!("/api/v1/activity?agent={agent}&kind=agent.state_changed&limit=200"),
            None,
        )
        .await;
    assert!(
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .any(|i| i["id"] == id && i["payload"]["to"] == "configuring"),
        "{page}"
    );
}
