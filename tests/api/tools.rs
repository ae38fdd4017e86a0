//! The runtime's tools end to end: built-in HTTP (host allow-list, no
//! redirects), shell, file listing and agent-to-agent messages, and tools of
//! MCP servers (a stdio server in Python, an HTTP one in-process), each
//! judged by the control plane before it runs.

use crate::common::{TestApp, eventually};
use crate::tasks::{
    FakeLlm, answer, app_with_llm, give, running_agent, task, task_events, wait_task,
};
use axum::Json;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

/// A response calling several tools at once.
fn calls(list: &[(&str, &str, Value)]) -> Value {
    let calls: Vec<Value> = list
        .iter()
        .map(|(id, name, args)| json!({ "id": id, "type": "function", "function": { "name": name, "arguments": args.to_string() } }))
        .collect();
    json!({
        "choices": [{ "index": 0, "finish_reason": "tool_calls", "message": { "role": "assistant", "content": null, "tool_calls": calls } }],
        "usage": { "prompt_tokens": 100, "completion_tokens": 20 }
    })
}

/// The tool results the model got in a request, by call id.
fn results(req: &Value) -> std::collections::HashMap<String, String> {
    req["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap_or("").to_string(),
                m["content"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn put_profile(app: &TestApp, name: &str, body: Value) {
    let (s, v) = app
        .call(Method::PUT, &format!("/api/v1/profiles/{name}"), Some(body))
        .await;
    assert!(s.is_success(), "{v}");
}

/// An HTTP server for the agent to reach: `/data` answers, `/bounce`
/// redirects to another host name; it counts `/data` hits.
async fn target() -> (u16, Arc<Mutex<u32>>) {
    let hits = Arc::new(Mutex::new(0u32));
    let h = hits.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new()
        .route(
            "/data",
            axum::routing::get(move || {
                let h = h.clone();
                async move {
                    *h.lock().expect("lock") += 1;
                    "hello from the allowed host"
                }
            }),
        )
        .route(
            "/bounce",
            axum::routing::get(move || async move {
                (
                    axum::http::StatusCode::FOUND,
                    [(
                        axum::http::header::LOCATION,
                        format!("http://localhost:{port}/data"),
                    )],
                )
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, hits)
}

#[tokio::test]
async fn built_in_tools_reach_allowed_hosts_run_commands_and_message_other_agents() {
    let (port, hits) = target().await;
    let (llm, url) = FakeLlm::start(vec![
        calls(&[
            ("c1", "http__get", json!({ "url": format!("http://127.0.0.1:{port}/data") })),
            ("c2", "http__get", json!({ "url": format!("http://localhost:{port}/data") })),
            ("c3", "http__get", json!({ "url": format!("http://127.0.0.1:{port}/bounce") })),
            (
                "c4",
                "shell__exec",
                json!({ "command": "echo made > made.txt; echo out; echo err >&2; echo key=${CADRE_LLM_API_KEY:-none}" }),
            ),
            ("c5", "files__list", json!({})),
            ("c6", "agent__message", json!({ "agent": "helper", "message": "please summarize the data" })),
            ("c7", "agent__message", json!({ "agent": "nobody", "message": "hello?" })),
            ("c8", "shell__exec", json!({ "command": "yes | head -c 100000" })),
        ]),
        answer("all done"),
    ])
    .await;
    let app = app_with_llm(&url, |_| {}).await;
    put_profile(
        &app,
        "worker",
        json!({ "allow_skills": ["core", "files", "web", "code", "messaging"], "max_risk": "high", "http_hosts": ["127.0.0.1"] }),
    )
    .await;
    // Bad host entries are refused.
    let (s, v) = app
        .call(
            Method::PUT,
            "/api/v1/profiles/bad",
            Some(json!({ "http_hosts": ["https://example.com/path"] })),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // The agent messages are for: created, never deployed (its task waits).
    let helper = app
        .create_id(json!({ "name": "helper", "role": "r", "model": "m" }))
        .await;
    let worker = running_agent(&app, "worker", json!({ "profile": "worker" })).await;
    let tid = give(&app, &worker, json!({ "instruction": "use your tools" })).await;
    let done = wait_task(&app, &tid, "succeeded").await;
    assert_eq!(done["result"], "all done");

    let reqs = llm.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let offered: Vec<&str> = reqs[0].1["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    for t in [
        "http__get",
        "http__request",
        "shell__exec",
        "files__list",
        "agent__message",
    ] {
        assert!(offered.contains(&t), "{t} not offered: {offered:?}");
    }
    let r = results(&reqs[1].1);
    assert!(r["c1"].starts_with("HTTP 200"), "{}", r["c1"]);
    assert!(r["c1"].contains("hello from the allowed host"));
    assert!(r["c2"].starts_with("denied:"), "{}", r["c2"]);
    assert!(r["c2"].contains("localhost"), "{}", r["c2"]);
    assert!(r["c3"].starts_with("HTTP 302"), "{}", r["c3"]);
    assert!(r["c3"].contains("not followed"), "{}", r["c3"]);
    assert_eq!(*hits.lock().expect("lock"), 1, "the redirect was followed");
    assert!(r["c4"].starts_with("exit 0"), "{}", r["c4"]);
    assert!(r["c4"].contains("out") && r["c4"].contains("err"));
    // The runtime's model key is not in a command's environment.
    assert!(r["c4"].contains("key=none"), "{}", r["c4"]);
    assert_eq!(
        app.workspace_file(&worker, "made.txt").as_deref(),
        Some("made\n")
    );
    assert!(r["c5"].lines().any(|l| l == "made.txt"), "{}", r["c5"]);
    assert!(r["c6"].starts_with("sent:"), "{}", r["c6"]);
    assert!(r["c7"].contains("no agent named"), "{}", r["c7"]);
    // Output past 64 KiB is counted, not kept.
    assert!(r["c8"].contains("more bytes]"), "{}", &r["c8"][..200]);
    assert!(r["c8"].len() < 70_000, "{}", r["c8"].len());

    // The message is a task of the other agent, waiting for it to run.
    let sent = r["c6"].rsplit(' ').next().expect("task id").to_string();
    let t = task(&app, &sent).await;
    assert_eq!(t["agent_id"], helper.as_str());
    assert_eq!(t["state"], "queued");
    assert_eq!(t["instruction"], "please summarize the data");
    assert_eq!(t["input"]["from_agent"], worker.as_str());
    assert_eq!(t["input"]["from_task"], tid.as_str());
    assert_eq!(t["created_by"], format!("runtime:{worker}"));

    // The denial is in the step log with the engine's reason.
    let (_, steps) = app
        .call(Method::GET, &format!("/api/v1/tasks/{tid}/steps"), None)
        .await;
    let c2 = steps["items"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["body"]["provider_call_id"] == "c2")
        .expect("c2 step")
        .clone();
    assert_eq!(c2["body"]["decision"], "deny", "{c2}");
    task_events(&app, "task.created", &sent, 1).await;
}

/// An MCP server over streamable HTTP: answers `initialize` with a session
/// id, `tools/list` as JSON and `tools/call` as server-sent events; records
/// the session id each call carried.
async fn http_mcp() -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let sessions: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen = sessions.clone();
    let handler = move |headers: HeaderMap, Json(msg): Json<Value>| {
        let seen = seen.clone();
        async move {
            let method = msg["method"].as_str().unwrap_or("").to_string();
            seen.lock().expect("lock").push(
                headers
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            );
            let id = msg["id"].clone();
            match method.as_str() {
                "initialize" => (
                    [("mcp-session-id", "session-7")],
                    Json(json!({ "jsonrpc": "2.0", "id": id, "result": { "protocolVersion": "2025-06-18", "capabilities": { "tools": {} }, "serverInfo": { "name": "web", "version": "1" } } })),
                )
                    .into_response(),
                "notifications/initialized" => axum::http::StatusCode::ACCEPTED.into_response(),
                "tools/list" => Json(json!({ "jsonrpc": "2.0", "id": id, "result": { "tools": [
                    { "name": "weather", "description": "Weather in a city", "inputSchema": { "type": "object", "properties": { "city": { "type": "string" } } } }
                ] } }))
                .into_response(),
                _ => {
                    let city = msg["params"]["arguments"]["city"].as_str().unwrap_or("?");
                    let answer = json!({ "jsonrpc": "2.0", "id": id, "result": { "content": [{ "type": "text", "text": format!("sunny in {city}") }] } });
                    (
                        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
                        format!("event: message\ndata: {answer}\n\n"),
                    )
                        .into_response()
                }
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route("/mcp", axum::routing::post(handler));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, sessions)
}

#[tokio::test]
async fn mcp_tools_join_the_catalog_with_a_default_risk_the_org_changes_and_run_when_allowed() {
    let (mcp_url, sessions) = http_mcp().await;
    let (llm, url) = FakeLlm::start(vec![
        calls(&[
            ("m1", "mcp__dict__lookup", json!({ "q": "cadre" })),
            ("m2", "mcp__web__weather", json!({ "city": "Oslo" })),
            ("m3", "mcp__dict__break_it", json!({})),
        ]),
        answer("looked it up"),
        calls(&[("m4", "mcp__dict__lookup", json!({ "q": "again" }))]),
    ])
    .await;
    let app = app_with_llm(&url, |_| {}).await;
    put_profile(
        &app,
        "mcp-user",
        json!({ "allow_skills": ["core", "mcp"], "max_risk": "high" }),
    )
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("mcp.log");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp_stdio.py");
    let agent = running_agent(
        &app,
        "mcp-agent",
        json!({ "profile": "mcp-user", "mcp_servers": [
            { "name": "dict", "command": "python3", "args": [fixture, log.display().to_string()] },
            { "name": "web", "url": mcp_url },
            { "name": "broken", "command": "/nonexistent/mcp-server" }
        ] }),
    )
    .await;

    // Discovered at start, in the catalog as mcp.<server>.<tool>, medium.
    eventually("the MCP tools are in the catalog", || async {
        let (_, v) = app.call(Method::GET, "/api/v1/tools", None).await;
        v.to_string().contains("mcp.web.weather")
    })
    .await;
    let (_, tools) = app.call(Method::GET, "/api/v1/tools", None).await;
    let tool = |id: &str| {
        tools["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    for id in ["mcp.dict.lookup", "mcp.dict.break_it", "mcp.web.weather"] {
        assert_eq!(tool(id)["risk"], "medium", "{id}: {tools}");
        assert_eq!(tool(id)["skill"], "mcp");
        assert_eq!(tool(id)["source"], "organization");
    }

    let tid = give(&app, &agent, json!({ "instruction": "look things up" })).await;
    let done = wait_task(&app, &tid, "succeeded").await;
    assert_eq!(done["result"], "looked it up");
    let reqs = llm.requests();
    let offered = reqs[0].1["tools"].to_string();
    assert!(offered.contains("mcp__dict__lookup"), "{offered}");
    assert!(offered.contains("Weather in a city"), "{offered}");
    let r = results(&reqs[1].1);
    assert_eq!(r["m1"], "found: cadre");
    assert_eq!(r["m2"], "sunny in Oslo");
    assert_eq!(r["m3"], "error: it broke");
    // The HTTP transport kept its session; the stdio server saw the whole
    // conversation and no model key in its environment.
    let s = sessions.lock().expect("lock").clone();
    assert_eq!(s.last().cloned().flatten().as_deref(), Some("session-7"));
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(log.contains("env CADRE_LLM_API_KEY=absent"), "{log}");
    for m in [
        "initialize",
        "notifications/initialized",
        "tools/list",
        "tools/call",
    ] {
        assert!(log.lines().any(|l| l == m), "{m} missing: {log}");
    }

    // The organization raises a tool's risk: the next call needs approval.
    let (s, v) = app
        .call(
            Method::PUT,
            "/api/v1/tools/mcp.dict.lookup",
            Some(json!({ "skill": "mcp", "risk": "critical" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let second = give(&app, &agent, json!({ "instruction": "once more" })).await;
    wait_task(&app, &second, "waiting_approval").await;
    // A runtime announcing its tools again (a reconnect) changes nothing.
    let (s, _) = app.command(&agent, "restart").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    app.wait_state(&agent, "running").await;
    let (_, tools) = app.call(Method::GET, "/api/v1/tools", None).await;
    let lookup = tools["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|t| t["id"] == "mcp.dict.lookup")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(lookup["risk"], "critical", "{lookup}");
}
