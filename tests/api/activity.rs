//! The activity pipeline end to end: ingest acknowledged only once committed,
//! history pages, live streams (SSE resume, WebSocket resync), a killed
//! writer, a locked database.

use crate::common::*;
use cadre::store::backend::Backend;
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
    // The creation's audit entry reaches the stream on the audit bridge's
    // next poll; let it land first so that the page below is only ours.
    eventually("the creation's audit event", || async {
        let (_, v) = app
            .call(
                Method::GET,
                "/api/v1/activity?kind=audit.agent.create",
                None,
            )
            .await;
        v["items"].as_array().is_some_and(|i| !i.is_empty())
    })
    .await;
    let (s, v) = post(
        &app,
        json!([
            { "agent_id": agent, "kind": "step", "payload": { "tool": "search" } },
            { "agent_id": agent, "kind": "note", "payload": { "text": "hi" }, "at": "2026-01-02T03:04:05Z" },
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
            .tables()
            .activity_count(&org, Some("step"))
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
    assert_eq!(items[1]["kind"], "note");
    assert_eq!(items[1]["at"], "2026-01-02T03:04:05Z");
    let cursor = page["next_cursor"].as_str().expect("more pages");
    let (_, next) = app
        .call(
            Method::GET,
            &format!("/api/v1/activity?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(next["items"][0]["kind"], "step", "{next}");
    // Filters: agent, kind, kind prefix, time range.
    let (_, by_kind) = app
        .call(Method::GET, "/api/v1/activity?kind=note", None)
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
        // Typed records: a tool call names its tool and a known status, a
        // message its conversation and role; both belong to an agent.
        (
            json!([{ "kind": "tool_call", "agent_id": agent, "payload": { "status": "ok" } }]),
            "events[0].payload.tool_id",
        ),
        (
            json!([{ "kind": "tool_call", "agent_id": agent,
                     "payload": { "tool_id": "t", "status": "ok", "duration_ms": -3 } }]),
            "events[0].payload.duration_ms",
        ),
        (
            json!([{ "kind": "tool_call", "payload": { "tool_id": "t", "status": "ok" } }]),
            "events[0].agent_id",
        ),
        (
            json!([{ "kind": "message", "agent_id": agent,
                     "payload": { "conversation_id": "c", "role": "bot", "content": "x" } }]),
            "events[0].payload.role",
        ),
        (
            json!([{ "kind": "message", "agent_id": agent, "payload": "text" }]),
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
    // Nothing of the refused batches was written (other events, such as
    // the audit log's, keep arriving on their own).
    for kind in ["k", "tool_call", "message"] {
        assert_eq!(
            app.store()
                .tables()
                .activity_count(&org, Some(kind))
                .await
                .expect("count"),
            0,
            "{kind}"
        );
    }
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
        .get(app.url("/api/v1/events?kind=step"))
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

    // The other organization's stream (of the same kind) carried none of
    // it: post one of its own and it is the first thing that stream sees.
    let theirs = app
        .call_as(
            Some(&other_token),
            Method::POST,
            "/api/v1/activity",
            Some(json!({ "events": [{ "kind": "step", "payload": { "theirs": true } }] })),
        )
        .await;
    assert_eq!(theirs.0, StatusCode::OK, "{}", theirs.1);
    let seen = sse_events(other, 1).await;
    assert_eq!(seen[0].2["payload"]["theirs"], true, "{seen:?}");
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
    // Each acknowledged batch has consecutive ids; other events (the audit
    // of the agent's creation) may take ids between batches.
    let mut expected = Vec::new();
    // Far more than socket buffers hold while the client does not read.
    for _ in 0..20 {
        let (s, v) = post(&app, events(&agent, "bulk", 500, 1000)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let f = v["first_id"].as_i64().expect("first_id");
        first.get_or_insert(f);
        last = f + 499;
        expected.extend(f..=last);
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
        .tables()
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
    // Another process holds the write lock: every flush waits (SQLite's
    // fails after its busy timeout and is tried again).
    let mut lock = app.direct().await;
    let (take, release): (&[&str], &[&str]) = match crate::common::test_backend() {
        Backend::Sqlite => (&["BEGIN EXCLUSIVE"], &["ROLLBACK"]),
        Backend::Postgres => (
            &["BEGIN", "LOCK TABLE activity IN EXCLUSIVE MODE"],
            &["ROLLBACK"],
        ),
        Backend::Mysql => (&["LOCK TABLES activity WRITE"], &["UNLOCK TABLES"]),
    };
    for sql in take {
        lock.execute(sql).await.expect("lock");
    }
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
    for sql in release {
        lock.execute(sql).await.expect("unlock");
    }
    drop(lock);
    for p in posts {
        assert_eq!(p.await.expect("post"), StatusCode::OK);
    }
    assert_eq!(
        app.store()
            .tables()
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

#[tokio::test]
async fn tool_calls_conversations_messages_and_the_daily_timeline() {
    let app = spawn_app().await;
    let agent = app
        .create_id(json!({ "name": "a", "role": "r", "model": "m" }))
        .await;
    let idle = app.create_id(json!({ "name": "b" })).await;
    let call = |tool: &str, status: &str, at: &str, extra: Value| {
        let mut p = json!({ "tool_id": tool, "status": status, "duration_ms": 100, "tokens": 10 });
        if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        json!({ "agent_id": agent, "kind": "tool_call", "at": at, "payload": p })
    };
    let say = |conv: &str, role: &str, text: &str, at: &str, extra: Value| {
        let mut p = json!({ "conversation_id": conv, "role": role, "content": text, "tokens": 5 });
        if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        json!({ "agent_id": agent, "kind": "message", "at": at, "payload": p })
    };
    let (s, v) = post(
        &app,
        json!([
            say("c-1", "user", "open an issue", "2026-03-04T10:00:00Z", json!({ "title": "Triage" })),
            call("github.create_issue", "ok", "2026-03-04T10:15:00Z", json!({
                "call_id": "call-1",
                "arguments": { "repo": "acme/app", "token": "ghp_SECRET1",
                               "headers": { "Authorization": "Bearer SECRET2" }, "max_tokens": 5 },
                "result_summary": "created #12", "cost_usd": 0.002, "tokens": 50
            })),
            say("c-1", "assistant", "done: #12", "2026-03-04T10:01:00Z", json!({ "tokens": 20 })),
            call("web.search", "error", "2026-03-04T10:45:00Z", json!({ "arguments": { "q": "x" } })),
            call("web.search", "ok", "2026-03-04T13:05:00Z", json!({})),
            say("c-2", "user", "later", "2026-03-04T13:00:00Z", json!({})),
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Tool calls: newest first, secrets redacted wherever they are read.
    let base = format!("/api/v1/agents/{agent}");
    let (s, calls) = app
        .call(Method::GET, &format!("{base}/tool-calls"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{calls}");
    let items = calls["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{calls}");
    let first = &items[2];
    assert_eq!(first["tool_id"], "github.create_issue");
    assert_eq!(first["call_id"], "call-1");
    assert_eq!(first["status"], "ok");
    assert_eq!(first["result_summary"], "created #12");
    assert_eq!(first["tokens"], 50);
    assert_eq!(first["cost_usd"], 0.002);
    assert_eq!(first["at"], "2026-03-04T10:15:00Z");
    assert_eq!(first["arguments"]["token"], "[redacted]");
    assert_eq!(first["arguments"]["headers"]["Authorization"], "[redacted]");
    assert_eq!(first["arguments"]["max_tokens"], 5);
    assert_eq!(first["arguments"]["repo"], "acme/app");
    let (_, history) = app.call(Method::GET, "/api/v1/activity", None).await;
    for body in [calls.to_string(), history.to_string()] {
        assert!(!body.contains("SECRET"), "a secret was stored: {body}");
    }
    let (_, errors) = app
        .call(
            Method::GET,
            &format!("{base}/tool-calls?status=error"),
            None,
        )
        .await;
    assert_eq!(
        errors["items"].as_array().map(Vec::len),
        Some(1),
        "{errors}"
    );
    let (_, page) = app
        .call(
            Method::GET,
            &format!("{base}/tool-calls?tool=web.search&limit=1"),
            None,
        )
        .await;
    assert_eq!(page["items"][0]["at"], "2026-03-04T13:05:00Z", "{page}");
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let (_, page) = app
        .call(
            Method::GET,
            &format!("{base}/tool-calls?tool=web.search&limit=1&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page["items"][0]["status"], "error", "{page}");
    assert_eq!(page["next_cursor"], Value::Null);

    // Conversations: the latest started first, with counters; messages
    // in the order they were said.
    let (s, convs) = app
        .call(Method::GET, &format!("{base}/conversations"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{convs}");
    assert_eq!(convs["items"][0]["id"], "c-2", "{convs}");
    let c1 = &convs["items"][1];
    assert_eq!(
        (
            c1["id"].as_str(),
            c1["title"].as_str(),
            c1["messages"].as_i64(),
            c1["tokens"].as_i64()
        ),
        (Some("c-1"), Some("Triage"), Some(2), Some(25)),
        "{convs}"
    );
    assert_eq!(c1["started_at"], "2026-03-04T10:00:00Z");
    assert_eq!(c1["last_at"], "2026-03-04T10:01:00Z");
    let (s, msgs) = app
        .call(
            Method::GET,
            &format!("{base}/conversations/c-1/messages"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{msgs}");
    let roles: Vec<_> = msgs["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| (m["role"].clone(), m["content"].clone()))
        .collect();
    assert_eq!(
        roles,
        vec![
            (json!("user"), json!("open an issue")),
            (json!("assistant"), json!("done: #12"))
        ]
    );

    // The day: hourly buckets, totals, kinds.
    let (s, day) = app
        .call(
            Method::GET,
            &format!("{base}/timeline?date=2026-03-04"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{day}");
    assert_eq!(day["date"], "2026-03-04");
    assert_eq!(day["hours"].as_array().map(Vec::len), Some(24));
    assert_eq!(day["totals"]["events"], 6, "{day}");
    assert_eq!(day["totals"]["tool_calls"], 3);
    assert_eq!(day["totals"]["tool_errors"], 1);
    assert_eq!(day["totals"]["tool_tokens"], 70);
    assert_eq!(day["totals"]["messages"], 3);
    assert_eq!(day["totals"]["message_tokens"], 30);
    assert_eq!(day["hours"][10]["tool_calls"], 2);
    assert_eq!(day["hours"][10]["messages"], 2);
    assert_eq!(day["hours"][13]["events"], 2);
    assert_eq!(day["hours"][12]["events"], 0);
    assert_eq!(day["kinds"], json!({ "message": 3, "tool_call": 3 }));
    // Today (the default day) holds the agent's state changes, in order.
    app.command(&agent, "deploy").await;
    eventually("the deploy reaches today's timeline", || async {
        let (s, today) = app
            .call(Method::GET, &format!("{base}/timeline"), None)
            .await;
        let states: Vec<_> = today["states"]
            .as_array()
            .map(|s| s.iter().map(|h| h["to"].clone()).collect())
            .unwrap_or_default();
        s == StatusCode::OK
            && states.get(..2) == Some(&[json!("draft"), json!("configuring")][..])
            && today["totals"]["tool_calls"] == 0
            && today["kinds"]["agent.state_changed"].as_i64() >= Some(1)
    })
    .await;

    // Bad input, unknown things, other organizations.
    for (path, status, code) in [
        (
            format!("{base}/tool-calls?status=maybe"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            format!("{base}/tool-calls?cursor=x"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            format!("{base}/timeline?date=2026-3-4"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            format!("{base}/conversations/nope/messages"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/api/v1/agents/not-an-agent/tool-calls".into(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ] {
        let (s, v) = app.call(Method::GET, &path, None).await;
        assert_eq!((s, v["code"].as_str()), (status, Some(code)), "{path}: {v}");
    }
    let (_, none) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{idle}/tool-calls"),
            None,
        )
        .await;
    assert_eq!(none["items"], json!([]));
    let (_, theirs) = other_org_owner(&app).await;
    for path in [
        format!("{base}/tool-calls"),
        format!("{base}/conversations"),
        format!("{base}/conversations/c-1/messages"),
        format!("{base}/timeline"),
    ] {
        let (s, v) = app.call_as(Some(&theirs), Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
    }
}

#[tokio::test]
async fn an_organizations_retention_is_set_through_the_api_and_honoured() {
    let app = spawn_app().await;
    let (other, theirs) = other_org_owner(&app).await;
    let ours = org_id(&app).await;
    let agent = app.create_id(json!({ "name": "a" })).await;
    let (s, v) = post(&app, events(&agent, "step", 3, 10)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app
        .call_as(
            Some(&theirs),
            Method::POST,
            "/api/v1/activity",
            Some(json!({ "events": [{ "kind": "note" }, { "kind": "note" }] })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let patch = |body: Value| {
        let path = format!("/api/v1/orgs/{other}");
        let app = &app;
        async move { app.call(Method::PATCH, &path, Some(body)).await }
    };
    // Bad values are refused and change nothing.
    for (bad, code) in [
        (json!(0), "invalid"),
        (json!(4000), "invalid"),
        (json!("week"), "invalid_body"),
        (json!(-1), "invalid_body"),
    ] {
        let (s, v) = patch(json!({ "activity_retention_days": bad })).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {v}");
        assert_eq!(v["code"], code, "{v}");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("activity_retention_days")),
            "{v}"
        );
    }
    let (_, org) = app
        .call(Method::GET, &format!("/api/v1/orgs/{other}"), None)
        .await;
    assert_eq!(
        (
            org["activity_retention_days"].as_i64(),
            org["activity_retention_default"].as_bool()
        ),
        (Some(90), Some(true)),
        "{org}"
    );
    let (s, org) = patch(json!({ "activity_retention_days": 1 })).await;
    assert_eq!(s, StatusCode::OK, "{org}");
    assert_eq!(org["activity_retention_days"], 1);
    assert_eq!(org["activity_retention_default"], false);
    let audit = app
        .store()
        .tables()
        .audit_page(&other, &Default::default(), 100)
        .await
        .expect("audit");
    assert!(
        audit
            .iter()
            .any(|a| a.action == "org.update" && a.summary["activity_retention_days"] == 1),
        "the change is audited in the organization it changed: {audit:?}"
    );

    // Two days on, the retention job deletes the other organization's
    // activity (1 day) and keeps ours (the default 90).
    let later = cadre::activity::now_ms() + 2 * 86_400_000;
    while app
        .store()
        .tables()
        .expire_activity(later, 90, 1)
        .await
        .expect("expire")
        .more()
    {}
    assert_eq!(
        app.store()
            .tables()
            .activity_count(&other, Some("note"))
            .await
            .expect("count"),
        0
    );
    assert_eq!(
        app.store()
            .tables()
            .activity_count(&ours, Some("step"))
            .await
            .expect("count"),
        3
    );

    // null goes back to the default.
    let (s, org) = patch(json!({ "activity_retention_days": null })).await;
    assert_eq!(s, StatusCode::OK, "{org}");
    assert_eq!(
        (
            org["activity_retention_days"].as_i64(),
            org["activity_retention_default"].as_bool()
        ),
        (Some(90), Some(true))
    );
    // Only the instance admin sets it.
    let (s, _) = app
        .call_as(
            Some(&theirs),
            Method::PATCH,
            &format!("/api/v1/orgs/{other}"),
            Some(json!({ "activity_retention_days": 30 })),
        )
        .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
        "{s}"
    );
}

#[tokio::test]
async fn audited_changes_reach_the_stream_and_the_history() {
    let app = spawn_app().await;
    let mut ws = stream(&app, "?kind=audit.").await;
    let agent = app.create_id(json!({ "name": "audited" })).await;
    // The next event of `kind` (the sign-in of the test's own login came
    // before).
    async fn next_of(ws: &mut Ws, kind: &str) -> Value {
        loop {
            let m = next_json(ws).await;
            if m["kind"] == kind {
                return m;
            }
        }
    }
    // The agent's creation, as its organization's stream shows it.
    let m = next_of(&mut ws, "audit.agent.create").await;
    assert_eq!(
        (m["kind"].as_str(), m["agent_id"].as_str()),
        (Some("audit.agent.create"), Some(agent.as_str())),
        "{m}"
    );
    assert_eq!(m["payload"]["target"], format!("agent:{agent}"));
    assert!(
        m["payload"]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("user:"))
    );
    // An identity change too; and another organization's never shows.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(json!({ "name": "ci", "scopes": ["agents:read"] })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let _ = other_org_owner(&app).await;
    let m = next_of(&mut ws, "audit.api_key.create").await;
    assert_eq!(m["payload"]["summary"]["name"], "ci", "{m}");
    // The other organization's owner creation and sign-in never show here.
    let (_, page) = app
        .call(Method::GET, "/api/v1/activity?kind=audit.&limit=200", None)
        .await;
    let org = org_id(&app).await;
    for e in page["items"].as_array().expect("items") {
        assert_ne!(
            e["kind"], "audit.org.create",
            "another organization's event: {e}"
        );
    }
    assert!(!org.is_empty());
    eventually("the audit events are in the history", || async {
        let (_, page) = app
            .call(Method::GET, "/api/v1/activity?kind=audit.", None)
            .await;
        let kinds: Vec<_> = page["items"]
            .as_array()
            .map(|i| i.iter().map(|e| e["kind"].clone()).collect())
            .unwrap_or_default();
        kinds.contains(&json!("audit.api_key.create"))
            && kinds.contains(&json!("audit.agent.create"))
    })
    .await;
}
