//! Tasks end to end: a real `cadre runtime` runs the tool-calling loop
//! against a local server that speaks the OpenAI chat-completions protocol
//! (LLM providers cannot be reached from here), driven by a script of
//! responses per test; the tests assert on the requests the runtime sent.

use crate::common::{TestApp, add_user, eventually, spawn_app_with};
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// A local chat-completions server: answers each request with the next
/// scripted response and records what it was sent.
/// A request as the fake provider saw it: its Authorization header and body.
pub(crate) type Seen = (Option<String>, Value);

#[derive(Clone, Default)]
pub(crate) struct FakeLlm {
    script: Arc<Mutex<VecDeque<Value>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeLlm {
    pub(crate) async fn start(script: Vec<Value>) -> (FakeLlm, String) {
        let fake = FakeLlm {
            script: Arc::new(Mutex::new(script.into())),
            seen: Arc::default(),
        };
        // Both protocols: OpenAI chat completions and Anthropic Messages.
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(complete))
            .route("/v1/messages", axum::routing::post(complete))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (fake, url)
    }

    pub(crate) fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn complete(
    State(fake): State<FakeLlm>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // The credential as sent: `authorization` (OpenAI) or `x-api-key`
    // with its API version (Anthropic).
    let auth = headers
        .get("authorization")
        .or_else(|| headers.get("x-api-key"))
        .and_then(|v| v.to_str().ok())
        .map(|v| match headers.get("anthropic-version") {
            Some(version) => format!("{v} ({})", version.to_str().unwrap_or("?")),
            None => v.to_string(),
        });
    let stream = body["stream"] == true;
    fake.seen.lock().expect("lock").push((auth, body));
    let Some(r) = fake.script.lock().expect("lock").pop_front() else {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": { "message": "script exhausted" } })),
        )
            .into_response();
    };
    if !stream {
        return Json(r).into_response();
    }
    // Streamed: the scripted response as the provider's server-sent
    // events, cut into 7-byte pieces so events and lines straddle reads.
    let text = if r.get("content").is_some() {
        anthropic_events(&r)
    } else {
        openai_chunks(&r)
    };
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = text
        .into_bytes()
        .chunks(7)
        .map(|c| Ok(c.to_vec()))
        .collect();
    (
        [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
        axum::body::Body::from_stream(futures_util::stream::iter(pieces)),
    )
        .into_response()
}

/// Splits text into a few deltas.
fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(4).map(|c| c.iter().collect()).collect()
}

/// A chat completion as OpenAI streams it (`stream_options.include_usage`).
fn openai_chunks(r: &Value) -> String {
    let msg = &r["choices"][0]["message"];
    let mut events = Vec::new();
    let chunk = |delta: Value| json!({ "object": "chat.completion.chunk", "choices": [{ "index": 0, "delta": delta, "finish_reason": null }] });
    events.push(chunk(json!({ "role": "assistant", "content": "" })));
    for p in pieces(msg["content"].as_str().unwrap_or("")) {
        events.push(chunk(json!({ "content": p })));
    }
    for (i, c) in msg["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        events.push(chunk(json!({ "tool_calls": [{ "index": i, "id": c["id"], "type": "function", "function": { "name": c["function"]["name"], "arguments": "" } }] })));
        for p in pieces(c["function"]["arguments"].as_str().unwrap_or("")) {
            events.push(chunk(
                json!({ "tool_calls": [{ "index": i, "function": { "arguments": p } }] }),
            ));
        }
    }
    events.push(json!({ "object": "chat.completion.chunk", "choices": [], "usage": r["usage"] }));
    let mut out: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    out.push_str("data: [DONE]\n\n");
    out
}

/// A message as Anthropic streams it.
fn anthropic_events(r: &Value) -> String {
    let mut events = vec![
        json!({ "type": "message_start", "message": { "role": "assistant", "content": [], "usage": { "input_tokens": r["usage"]["input_tokens"], "output_tokens": 1 } } }),
    ];
    for (i, b) in r["content"].as_array().into_iter().flatten().enumerate() {
        if b["type"] == "text" {
            events.push(json!({ "type": "content_block_start", "index": i, "content_block": { "type": "text", "text": "" } }));
            for p in pieces(b["text"].as_str().unwrap_or("")) {
                events.push(json!({ "type": "content_block_delta", "index": i, "delta": { "type": "text_delta", "text": p } }));
            }
        } else {
            events.push(json!({ "type": "content_block_start", "index": i, "content_block": { "type": "tool_use", "id": b["id"], "name": b["name"], "input": {} } }));
            for p in pieces(&b["input"].to_string()) {
                events.push(json!({ "type": "content_block_delta", "index": i, "delta": { "type": "input_json_delta", "partial_json": p } }));
            }
        }
        events.push(json!({ "type": "content_block_stop", "index": i }));
    }
    events.push(json!({ "type": "message_delta", "delta": { "stop_reason": r["stop_reason"] }, "usage": { "output_tokens": r["usage"]["output_tokens"] } }));
    events.push(json!({ "type": "message_stop" }));
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect()
}

/// A response calling one tool.
pub(crate) fn tool_call(id: &str, wire_name: &str, args: Value) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion",
        "choices": [{ "index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null,
            "tool_calls": [{ "id": id, "type": "function", "function": { "name": wire_name, "arguments": args.to_string() } }]
        } }],
        "usage": { "prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150 }
    })
}

/// The key the runtime must send: the control plane's `api_key_env` names
/// a variable cargo sets for every test process.
const KEY_ENV: &str = "CARGO_PKG_NAME";

pub(crate) async fn app_with_llm(
    url: &str,
    tweak: impl FnOnce(&mut cadre::config::Config),
) -> TestApp {
    let url = url.to_string();
    spawn_app_with(move |c| {
        c.llm.base_url = url;
        c.llm.provider = "openai".into();
        c.llm.api_key_env = KEY_ENV.into();
        c.llm.max_output_tokens = 200;
        tweak(c);
    })
    .await
}

/// The policy that parks every `files.write` until an owner decides.
pub(crate) async fn park_writes(app: &TestApp) {
    let (s, v) = app
        .call(
            Method::PUT,
            "/api/v1/approval-policies/writes",
            Some(json!({ "tools": ["files.write"], "levels": [{ "approvers": { "roles": ["owner"] }, "timeout_seconds": 120 }] })),
        )
        .await;
    assert!(s.is_success(), "{v}");
}

/// Approves the agent's one pending approval (waiting for it); its id.
pub(crate) async fn approve_pending(app: &TestApp, agent: &str) -> String {
    let aid = app
        .approvals(&format!("state=pending&agent_id={agent}"), 1)
        .await[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/approvals/{aid}/decide"),
            Some(json!({ "decision": "approve" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    aid
}

/// Creates an agent named `name` (`developer` profile, model `m`, plus
/// `extra` fields), deploys it and waits until it runs.
pub(crate) async fn running_agent(app: &TestApp, name: &str, extra: Value) -> String {
    let mut body = json!({ "name": name, "role": "r", "model": "m", "profile": "developer" });
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    let agent = app.create_id(body).await;
    let (s, v) = app.command(&agent, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_state(&agent, "running").await;
    agent
}

/// Gives `agent` a task; its id.
pub(crate) async fn give(app: &TestApp, agent: &str, body: Value) -> String {
    let (s, t) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/tasks"),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    t["id"].as_str().expect("id").to_string()
}

pub(crate) async fn task(app: &TestApp, id: &str) -> Value {
    let (s, v) = app
        .call(Method::GET, &format!("/api/v1/tasks/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// Polls a task until it reaches `state` (30 s deadline).
pub(crate) async fn wait_task(app: &TestApp, id: &str, state: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let t = task(app, id).await;
        if t["state"] == state {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "task {id} never reached {state}: {t}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_task_runs_the_model_loop_waits_for_approval_and_records_its_steps() {
    let (llm, url) = FakeLlm::start(vec![
        tool_call(
            "call_a",
            "files__write",
            json!({ "path": "report.txt", "content": "hello" }),
        ),
        tool_call(
            "call_b",
            "task__finish",
            json!({ "result": "report written" }),
        ),
    ])
    .await;
    let app = app_with_llm(&url, |_| {}).await;
    park_writes(&app).await;
    let agent = app
        .create_id(
            json!({ "name": "writer", "role": "r", "model": "gpt-test", "profile": "developer" }),
        )
        .await;

    // Queued while the agent does not run; delivered once it does.
    let (s, t) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/tasks"),
            Some(json!({ "instruction": "Write the daily report", "input": { "day": "monday" } })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!(t["state"], "queued");
    let tid = t["id"].as_str().expect("id").to_string();
    assert_eq!(task(&app, &tid).await["state"], "queued");
    assert!(llm.requests().is_empty());

    let (s, v) = app.command(&agent, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    wait_task(&app, &tid, "waiting_approval").await;
    // Parked: the write did not happen.
    assert_eq!(app.workspace_file(&agent, "report.txt"), None);
    let pending = app
        .approvals(&format!("state=pending&agent_id={agent}"), 1)
        .await;
    assert_eq!(pending[0]["tool"], "files.write");
    let aid = pending[0]["id"].as_str().expect("id").to_string();
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/approvals/{aid}/decide"),
            Some(json!({ "decision": "approve", "comment": "fine" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let done = wait_task(&app, &tid, "succeeded").await;
    assert_eq!(done["result"], "report written");
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    assert_eq!(
        app.workspace_file(&agent, "report.txt").as_deref(),
        Some("hello")
    );

    // What the runtime sent the provider.
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let key = std::env::var(KEY_ENV).ok().map(|k| format!("Bearer {k}"));
    assert_eq!(
        reqs[0].0, key,
        "the API key from the control plane's environment"
    );
    let first = &reqs[0].1;
    assert_eq!(first["model"], "gpt-test");
    assert_eq!(first["max_tokens"], 200);
    assert_eq!(first["messages"][0]["role"], "system");
    assert_eq!(first["messages"][1]["role"], "user");
    let user = first["messages"][1]["content"].as_str().expect("user text");
    assert!(
        user.contains("Write the daily report") && user.contains("monday"),
        "{user}"
    );
    let tools: Vec<&str> = first["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    assert!(
        tools.contains(&"files__write") && tools.contains(&"task__finish"),
        "{tools:?}"
    );
    let second = &reqs[1].1;
    let msgs = second["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    assert_eq!(msgs[2]["tool_calls"][0]["id"], "call_a");
    assert_eq!(msgs[3]["role"], "tool");
    assert_eq!(msgs[3]["tool_call_id"], "call_a");
    let result = msgs[3]["content"].as_str().expect("tool result");
    assert!(
        result.contains("wrote 5 bytes") && result.contains("fine"),
        "{result}"
    );

    // The step log: model, tool (approved), model, tool (finish).
    let (s, steps) = app
        .call(Method::GET, &format!("/api/v1/tasks/{tid}/steps"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{steps}");
    let items = steps["items"].as_array().expect("items");
    let kinds: Vec<&str> = items.iter().filter_map(|i| i["kind"].as_str()).collect();
    assert_eq!(kinds, ["model", "tool", "model", "tool"], "{steps}");
    let seqs: Vec<u64> = items.iter().filter_map(|i| i["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(items[0]["tokens"], 150);
    assert_eq!(items[0]["body"]["request"]["model"], "gpt-test");
    assert_eq!(
        items[0]["body"]["response"]["choices"][0]["message"]["tool_calls"][0]["id"],
        "call_a"
    );
    assert_eq!(items[1]["body"]["tool"], "files.write");
    assert_eq!(items[1]["body"]["decision"], "allow");
    assert_eq!(items[1]["body"]["approval_id"], aid.as_str());
    assert_eq!(items[3]["body"]["tool"], "task.finish");
    // Paging through the steps.
    let (_, page) = app
        .call(
            Method::GET,
            &format!("/api/v1/tasks/{tid}/steps?limit=3"),
            None,
        )
        .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(page["next_after"], 3);
    let (_, rest) = app
        .call(
            Method::GET,
            &format!("/api/v1/tasks/{tid}/steps?after=3"),
            None,
        )
        .await;
    assert_eq!(rest["items"][0]["seq"], 4);

    // The model calls were reserved and settled: the agent's usage counts them.
    eventually("usage counted", || async {
        app.get(&agent).await["usage"]["tokens"].as_u64() == Some(300)
    })
    .await;
    // The agent's task list, newest first, filterable by state.
    let (s, list) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/tasks?state=succeeded"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["items"][0]["id"], tid.as_str());
    // A finished task cannot be cancelled.
    let (s, v) = app
        .call(Method::POST, &format!("/api/v1/tasks/{tid}/cancel"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "task_finished");
}

#[tokio::test]
async fn a_task_stops_before_a_model_call_that_would_overshoot_the_budget_and_at_its_step_limit() {
    // The model keeps calling a tool; the step limit ends the first task.
    let (llm, url) = FakeLlm::start(vec![
        tool_call("c1", "echo", json!({ "n": 1 })),
        tool_call("c2", "echo", json!({ "n": 2 })),
        // The third task's call, parked for approval past its wall time.
        tool_call("c3", "files__write", json!({ "path": "x", "content": "y" })),
    ])
    .await;
    let app = app_with_llm(&url, |_| {}).await;
    let agent = running_agent(&app, "looper", json!({})).await;
    let tid = give(
        &app,
        &agent,
        json!({ "instruction": "loop", "limits": { "max_steps": 2 } }),
    )
    .await;
    let failed = wait_task(&app, &tid, "failed").await;
    let why = failed["error"].as_str().expect("error");
    assert!(why.starts_with("max_steps:"), "{why}");
    assert_eq!(llm.requests().len(), 2);

    // A budget smaller than one call's reservation (prompt + 200 output
    // tokens): the call is refused before the provider is asked.
    let poor = running_agent(&app, "poor", json!({ "budget": { "monthly_tokens": 100 } })).await;
    let tid = give(&app, &poor, json!({ "instruction": "spend" })).await;
    let failed = wait_task(&app, &tid, "failed").await;
    let why = failed["error"].as_str().expect("error");
    assert!(why.starts_with("budget_exceeded:"), "{why}");
    assert_eq!(llm.requests().len(), 2, "the provider was not called again");

    // Waiting for a human counts against the task's wall time.
    park_writes(&app).await;
    let tid = give(
        &app,
        &agent,
        json!({ "instruction": "write", "limits": { "max_seconds": 1 } }),
    )
    .await;
    let failed = wait_task(&app, &tid, "failed").await;
    let why = failed["error"].as_str().expect("error");
    assert!(why.starts_with("max_seconds:"), "{why}");
    assert_eq!(llm.requests().len(), 3);
}

#[tokio::test]
async fn bad_task_requests_are_refused_and_change_nothing() {
    let (_llm, url) = FakeLlm::start(Vec::new()).await;
    let app = app_with_llm(&url, |c| c.tasks.max_open_per_agent = 2).await;
    let agent = app
        .create_id(json!({ "name": "idle", "role": "r", "model": "m" }))
        .await;
    let post = |body: Value| {
        let path = format!("/api/v1/agents/{agent}/tasks");
        let app = &app;
        async move { app.call(Method::POST, &path, Some(body)).await }
    };
    for body in [
        json!({ "instruction": "  " }),
        json!({ "instruction": "x", "limits": { "max_steps": 0 } }),
        json!({ "instruction": "x", "limits": { "max_seconds": 100000000 } }),
        json!({ "instruction": "x", "owner": "me" }),
        json!({ "input": {} }),
    ] {
        let (s, v) = post(body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
    }
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/agents/00000000-0000-0000-0000-000000000000/tasks",
            Some(json!({ "instruction": "x" })),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = app
        .call(Method::GET, "/api/v1/tasks/not-a-task", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/tasks?state=done"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Nothing was queued by any of those.
    let (_, list) = app
        .call(Method::GET, &format!("/api/v1/agents/{agent}/tasks"), None)
        .await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");

    // A viewer may read but not give work.
    let (_, viewer) = add_user(&app, "viewer@x.test", "viewer").await;
    let (s, _) = app
        .call_as(
            Some(&viewer),
            Method::POST,
            &format!("/api/v1/agents/{agent}/tasks"),
            Some(json!({ "instruction": "x" })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // The queue is bounded per agent; cancelling makes room.
    let (_, a) = post(json!({ "instruction": "one" })).await;
    let (_, _b) = post(json!({ "instruction": "two" })).await;
    let (s, v) = post(json!({ "instruction": "three" })).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "queue_full");
    let aid = a["id"].as_str().expect("id");
    let (s, v) = app
        .call(Method::POST, &format!("/api/v1/tasks/{aid}/cancel"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "cancelled");
    let (s, v) = post(json!({ "instruction": "three" })).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn a_task_whose_runtime_is_killed_fails_as_runtime_lost_and_the_next_task_runs() {
    let (llm, url) = FakeLlm::start(vec![
        tool_call(
            "w",
            "files__write",
            json!({ "path": "a.txt", "content": "x" }),
        ),
        // For the second task, on the replacement runtime.
        json!({
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "all done" } }],
            "usage": { "prompt_tokens": 10, "completion_tokens": 2 }
        }),
    ])
    .await;
    let app = app_with_llm(&url, |_| {}).await;
    park_writes(&app).await;
    let agent = app
        .create_id(json!({ "name": "victim", "role": "r", "model": "m", "profile": "developer" }))
        .await;
    let (s, v) = app.command(&agent, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_state(&agent, "running").await;
    let (_, t) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/tasks"),
            Some(json!({ "instruction": "write" })),
        )
        .await;
    let tid = t["id"].as_str().expect("id").to_string();
    wait_task(&app, &tid, "waiting_approval").await;

    // SIGKILL the runtime mid-task: the health loop starts a new process,
    // which holds none of the old one's state, so the task is failed with
    // `runtime_lost` (not resumed: see docs/tasks.md).
    let pid = app.runtime_pid(&agent).expect("runtime pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let lost = wait_task(&app, &tid, "failed").await;
    let why = lost["error"].as_str().expect("error");
    assert!(why.starts_with("runtime_lost:"), "{why}");
    assert_ne!(app.runtime_pid(&agent), Some(pid));

    // The replacement takes new work.
    let next = give(&app, &agent, json!({ "instruction": "say done" })).await;
    let done = wait_task(&app, &next, "succeeded").await;
    assert_eq!(done["result"], "all done");
    assert_eq!(llm.requests().len(), 2);
}

#[tokio::test]
async fn queued_tasks_survive_a_server_restart_and_run_when_the_agent_does() {
    let (llm, url) = FakeLlm::start(vec![json!({
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "42" } }],
        "usage": { "prompt_tokens": 10, "completion_tokens": 1 }
    })])
    .await;
    let mut app = app_with_llm(&url, |_| {}).await;
    let agent = app
        .create_id(json!({ "name": "later", "role": "r", "model": "m", "profile": "developer" }))
        .await;
    let tid = give(&app, &agent, json!({ "instruction": "answer" })).await;
    app.restart().await;
    assert_eq!(task(&app, &tid).await["state"], "queued");
    let (s, v) = app.command(&agent, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let done = wait_task(&app, &tid, "succeeded").await;
    assert_eq!(done["result"], "42");
    assert_eq!(llm.requests().len(), 1);
}

#[tokio::test]
async fn a_task_waiting_for_approval_finishes_after_a_control_plane_restart() {
    let (llm, url) = FakeLlm::start(vec![
        tool_call(
            "w",
            "files__write",
            json!({ "path": "kept.txt", "content": "ok" }),
        ),
        tool_call("f", "task__finish", json!({ "result": "kept" })),
    ])
    .await;
    let mut app = app_with_llm(&url, |_| {}).await;
    park_writes(&app).await;
    let agent = running_agent(&app, "steady", json!({})).await;
    let tid = give(&app, &agent, json!({ "instruction": "write" })).await;
    wait_task(&app, &tid, "waiting_approval").await;
    let pid = app.runtime_pid(&agent);

    // The same runtime process reconnects to the new server and asks its
    // question again; the reloaded approval answers it.
    app.restart().await;
    approve_pending(&app, &agent).await;
    let done = wait_task(&app, &tid, "succeeded").await;
    assert_eq!(done["result"], "kept");
    assert_eq!(app.runtime_pid(&agent), pid, "the same process finished it");
    let (_, steps) = app
        .call(Method::GET, &format!("/api/v1/tasks/{tid}/steps"), None)
        .await;
    let seqs: Vec<u64> = steps["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4], "{steps}");
    assert_eq!(llm.requests().len(), 2);
}

#[tokio::test]
async fn the_anthropic_messages_provider_is_a_config_change() {
    let (llm, url) = FakeLlm::start(vec![
        json!({
            "id": "msg_1", "type": "message", "role": "assistant",
            "content": [
                { "type": "text", "text": "Let me check." },
                { "type": "tool_use", "id": "toolu_1", "name": "echo", "input": { "q": "ping" } }
            ],
            "stop_reason": "tool_use",
            "usage": { "input_tokens": 40, "output_tokens": 9 }
        }),
        json!({
            "id": "msg_2", "type": "message", "role": "assistant",
            "content": [{ "type": "text", "text": "pong received" }],
            "stop_reason": "end_turn",
            "usage": { "input_tokens": 60, "output_tokens": 3 }
        }),
    ])
    .await;
    let app = app_with_llm(&url, |c| c.llm.provider = "anthropic".into()).await;
    let agent = running_agent(&app, "claude", json!({ "model": "claude-test" })).await;
    let tid = give(&app, &agent, json!({ "instruction": "ping it" })).await;
    let done = wait_task(&app, &tid, "succeeded").await;
    assert_eq!(done["result"], "pong received");

    let reqs = llm.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let key = std::env::var(KEY_ENV)
        .ok()
        .map(|k| format!("{k} (2023-06-01)"));
    assert_eq!(reqs[0].0, key, "x-api-key and anthropic-version");
    let first = &reqs[0].1;
    assert_eq!(first["model"], "claude-test");
    assert!(first["system"].is_string());
    assert_eq!(first["messages"][0]["content"][0]["text"], "ping it");
    assert!(
        first["tools"]
            .as_array()
            .expect("tools")
            .iter()
            .any(|t| t["name"] == "echo" && t["input_schema"].is_object())
    );
    // The tool result goes back as a user turn of tool_result blocks.
    let msgs = reqs[1].1["messages"].as_array().expect("messages");
    assert_eq!(msgs[1]["role"], "assistant");
    assert_eq!(msgs[1]["content"][1]["type"], "tool_use");
    assert_eq!(msgs[2]["role"], "user");
    assert_eq!(msgs[2]["content"][0]["type"], "tool_result");
    assert_eq!(msgs[2]["content"][0]["tool_use_id"], "toolu_1");
    let result = msgs[2]["content"][0]["content"].as_str().expect("result");
    assert!(result.contains("ping"), "{result}");
    eventually("usage counted", || async {
        app.get(&agent).await["usage"]["tokens"].as_u64() == Some(112)
    })
    .await;
}

#[tokio::test]
async fn a_replay_from_step_3_with_an_edit_reuses_the_first_steps_and_runs_live_from_there() {
    let (llm, url) = FakeLlm::start(vec![
        tool_call("e1", "echo", json!({ "n": 1 })),
        tool_call("e2", "echo", json!({ "n": 2 })),
        json!({ "choices": [{ "index": 0, "message": { "role": "assistant", "content": "first" } }],
                "usage": { "prompt_tokens": 30, "completion_tokens": 1 } }),
        // The branch's live call.
        json!({ "choices": [{ "index": 0, "message": { "role": "assistant", "content": "second" } }],
                "usage": { "prompt_tokens": 31, "completion_tokens": 1 } }),
    ])
    .await;
    let app = app_with_llm(&url, |_| {}).await;
    let agent = running_agent(&app, "brancher", json!({})).await;
    let parent = give(&app, &agent, json!({ "instruction": "first try" })).await;
    assert_eq!(
        wait_task(&app, &parent, "succeeded").await["result"],
        "first"
    );
    let steps = |id: String| {
        let app = &app;
        async move {
            let (_, v) = app
                .call(Method::GET, &format!("/api/v1/tasks/{id}/steps"), None)
                .await;
            v["items"].as_array().cloned().unwrap_or_default()
        }
    };
    let before = steps(parent.clone()).await;
    assert_eq!(before.len(), 5, "model, tool, model, tool, model");

    // Bad replays change nothing.
    for (body, why) in [
        (json!({ "from_step": 2 }), "a tool step"),
        (json!({ "from_step": 9 }), "no such step"),
        (
            json!({ "from_step": 3, "edits": { "instruction": " " } }),
            "empty edit",
        ),
        (
            json!({ "from_step": 3, "edits": { "system": "x" } }),
            "unknown edit",
        ),
    ] {
        let (s, v) = app
            .call(
                Method::POST,
                &format!("/api/v1/tasks/{parent}/replay"),
                Some(body),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{why}: {v}");
    }

    let (s, b) = app
        .call(
            Method::POST,
            &format!("/api/v1/tasks/{parent}/replay"),
            Some(json!({ "from_step": 3, "edits": { "instruction": "second try" } })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["parent_id"], parent.as_str());
    assert_eq!(b["from_step"], 3);
    assert_eq!(b["instruction"], "second try");
    let branch = b["id"].as_str().expect("id").to_string();
    assert_eq!(
        wait_task(&app, &branch, "succeeded").await["result"],
        "second"
    );

    // The branch's first steps are the parent's; step 3 ran live.
    let after = steps(branch.clone()).await;
    let seqs: Vec<u64> = after.iter().filter_map(|s| s["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    for i in 0..2 {
        assert_eq!(after[i]["kind"], before[i]["kind"]);
        assert_eq!(after[i]["body"], before[i]["body"], "step {}", i + 1);
    }
    assert_eq!(
        after[2]["body"]["response"]["choices"][0]["message"]["content"],
        "second"
    );
    // Only one live call; it carried the edit and the reused conversation.
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 4);
    let msgs = reqs[3].1["messages"].as_array().expect("messages");
    assert_eq!(msgs[1]["content"], "second try");
    assert_eq!(msgs[2]["tool_calls"][0]["id"], "e1");
    assert_eq!(msgs[3]["tool_call_id"], "e1");
    assert_eq!(msgs.len(), 4, "{msgs:?}");
}

/// A final answer without tool calls.
pub(crate) fn answer(text: &str) -> Value {
    json!({
        "id": "chatcmpl-9", "object": "chat.completion",
        "choices": [{ "index": 0, "finish_reason": "stop", "message": { "role": "assistant", "content": text } }],
        "usage": { "prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25 }
    })
}

#[tokio::test]
async fn an_agent_uses_its_own_provider_settings_with_a_key_from_an_org_secret_that_is_never_shown()
{
    // The server's default provider must not be called at all.
    let (default_llm, default_url) = FakeLlm::start(vec![]).await;
    let (own, own_url) = FakeLlm::start(vec![answer("done by my own provider")]).await;
    let app = app_with_llm(&default_url, |_| {}).await;
    const KEY: &str = "sk-agent-7f3a9c";

    // Secrets: set (sealed), listed by name only, admins only.
    let (s, v) = app
        .call(
            Method::PUT,
            "/api/v1/secrets/research-key",
            Some(json!({ "value": KEY })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(!v.to_string().contains(KEY), "{v}");
    let (s, v) = app.call(Method::GET, "/api/v1/secrets", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["items"][0]["name"], "research-key");
    assert!(!v.to_string().contains(KEY), "{v}");
    let (_, viewer) = add_user(&app, "viewer@example.com", "viewer").await;
    let (s, _) = app
        .call_as(Some(&viewer), Method::GET, "/api/v1/secrets", None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for (body, field) in [
        (json!({ "value": "" }), "value"),
        (json!({ "value": "x", "extra": 1 }), ""),
    ] {
        let (s, v) = app
            .call(Method::PUT, "/api/v1/secrets/other", Some(body))
            .await;
        assert!(s.is_client_error(), "{v}");
        if !field.is_empty() {
            assert_eq!(v["field"], field, "{v}");
        }
    }

    // Bad settings are refused, naming the field; nothing is created.
    for (llm, field) in [
        (json!({ "provider": "gemini" }), "llm.provider"),
        (json!({ "base_url": "ftp://x" }), "llm.base_url"),
        (json!({ "api_key_secret": "missing" }), "llm.api_key_secret"),
        (json!({ "temperature": 7.5 }), "llm.temperature"),
        (json!({ "max_output_tokens": 0 }), "llm.max_output_tokens"),
    ] {
        let (s, v) = app
            .call(
                Method::POST,
                "/api/v1/agents",
                Some(json!({ "name": "bad", "llm": llm })),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["field"], field, "{v}");
    }

    let agent = running_agent(
        &app,
        "researcher",
        json!({ "llm": {
            "base_url": own_url,
            "api_key_secret": "research-key",
            "max_output_tokens": 77,
            "temperature": 0.3
        } }),
    )
    .await;
    let view = app.get(&agent).await;
    assert_eq!(view["llm"]["api_key_secret"], "research-key");
    let tid = give(&app, &agent, json!({ "instruction": "research" })).await;
    let done = wait_task(&app, &tid, "succeeded").await;
    assert_eq!(done["result"], "done by my own provider");
    let reqs = own.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].0.as_deref(), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(reqs[0].1["max_tokens"], 77);
    assert_eq!(reqs[0].1["temperature"], 0.3);
    assert!(default_llm.requests().is_empty());

    // The key is nowhere to be read: not in the agent's files (runtime.json,
    // the sealed environment, the log), the audit log or the API.
    for entry in std::fs::read_dir(app.agent_dir(&agent)).expect("dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).expect("read");
            assert!(
                !String::from_utf8_lossy(&bytes).contains(KEY),
                "{} holds the key",
                path.display()
            );
        }
    }
    let (_, audit) = app.call(Method::GET, "/api/v1/audit?limit=200", None).await;
    let audit = audit.to_string();
    assert!(audit.contains("secret.put"), "{audit}");
    assert!(!audit.contains(KEY));
    assert!(!app.get(&agent).await.to_string().contains(KEY));

    // Deleting a secret: 204, then 404.
    let (s, _) = app
        .call(Method::DELETE, "/api/v1/secrets/research-key", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app
        .call(Method::DELETE, "/api/v1/secrets/research-key", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

/// The activity events of `kind` (a prefix when it ends with `.`) for one
/// task, oldest first, once `n` of them are recorded.
pub(crate) async fn task_events(app: &TestApp, kind: &str, task: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (s, v) = app
            .call(
                Method::GET,
                &format!("/api/v1/activity?kind={kind}&limit=200"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let mut items: Vec<Value> = v["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|e| e["payload"]["task_id"] == task)
            .cloned()
            .collect();
        items.sort_by_key(|e| e["id"].as_i64());
        if items.len() >= n {
            return items;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} {kind} events of {task} never came: {items:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn streamed_responses_are_forwarded_as_task_events_and_recorded_whole() {
    let openai = vec![
        json!({
            "choices": [{ "index": 0, "message": {
                "role": "assistant", "content": "Checking the echo tool first.",
                "tool_calls": [{ "id": "call_s1", "type": "function", "function": { "name": "echo", "arguments": "{\"q\":\"ping pong\"}" } }]
            } }],
            "usage": { "prompt_tokens": 50, "completion_tokens": 12 }
        }),
        answer("The echo answered: ping pong. Done."),
    ];
    let anthropic = vec![
        json!({
            "content": [
                { "type": "text", "text": "Checking the echo tool first." },
                { "type": "tool_use", "id": "toolu_s1", "name": "echo", "input": { "q": "ping pong" } }
            ],
            "stop_reason": "tool_use",
            "usage": { "input_tokens": 50, "output_tokens": 12 }
        }),
        json!({
            "content": [{ "type": "text", "text": "The echo answered: ping pong. Done." }],
            "stop_reason": "end_turn",
            "usage": { "input_tokens": 20, "output_tokens": 5 }
        }),
    ];
    for (provider, script) in [("openai", openai), ("anthropic", anthropic)] {
        let (llm, url) = FakeLlm::start(script).await;
        let app = app_with_llm(&url, |c| c.llm.provider = provider.into()).await;
        let agent = running_agent(&app, "streamer", json!({ "llm": { "stream": true } })).await;
        let tid = give(&app, &agent, json!({ "instruction": "check the echo" })).await;
        let done = wait_task(&app, &tid, "succeeded").await;
        assert_eq!(
            done["result"], "The echo answered: ping pong. Done.",
            "{provider}"
        );

        // The provider was asked to stream (OpenAI: with the usage chunk).
        let reqs = llm.requests();
        assert_eq!(reqs.len(), 2, "{provider}: {reqs:?}");
        assert_eq!(reqs[0].1["stream"], true, "{provider}");
        if provider == "openai" {
            assert_eq!(reqs[0].1["stream_options"]["include_usage"], true);
        }
        // The streamed tool call was assembled: its arguments reached the tool.
        let second = reqs[1].1.to_string();
        assert!(second.contains("ping pong"), "{provider}: {second}");

        // Live: the text of each model step, in order, as task.delta events.
        let deltas = task_events(&app, "task.delta", &tid, 2).await;
        let text_of = |seq: u64| -> String {
            deltas
                .iter()
                .filter(|e| e["payload"]["seq"].as_u64() == Some(seq))
                .map(|e| e["payload"]["text"].as_str().unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(text_of(1), "Checking the echo tool first.", "{provider}");
        assert_eq!(text_of(3), "The echo answered: ping pong. Done.");
        // Steps and states are on the stream too.
        let steps = task_events(&app, "task.step", &tid, 3).await;
        assert_eq!(steps[1]["payload"]["tool"], "echo");
        assert_eq!(steps[1]["payload"]["decision"], "allow");
        task_events(&app, "task.succeeded", &tid, 1).await;
        task_events(&app, "task.created", &tid, 1).await;

        // Recorded whole, in the provider's own shape, with the usage the
        // stream reported (so budgets and replays read it like any other).
        let (_, log) = app
            .call(Method::GET, &format!("/api/v1/tasks/{tid}/steps"), None)
            .await;
        let first = &log["items"][0];
        assert_eq!(first["tokens"], 62, "{provider}: {first}");
        assert_eq!(first["body"]["response"]["streamed"], true);
        // Priced by the control plane: 50 in × $3 + 12 out × $15 per Mtok.
        assert_eq!(first["body"]["cost_usd"], 0.00033, "{provider}");
        let recorded = first["body"]["response"].to_string();
        assert!(
            recorded.contains("Checking the echo tool first."),
            "{recorded}"
        );
        eventually("usage counted", || async {
            app.get(&agent).await["usage"]["tokens"].as_u64() == Some(62 + 25)
        })
        .await;
    }
}

/// `llm.api_key_env` naming a variable the control plane does not have: the
/// model is never asked without a key; the task fails with
/// `no_model_provider` naming the variable to set.
#[tokio::test]
async fn an_unset_api_key_variable_fails_tasks_naming_it() {
    const UNSET: &str = "CADRE_TEST_NEVER_SET_API_KEY";
    assert!(std::env::var(UNSET).is_err());
    let (llm, url) = FakeLlm::start(vec![]).await;
    let app = app_with_llm(&url, |c| c.llm.api_key_env = UNSET.into()).await;
    let agent = running_agent(&app, "keyless", json!({})).await;
    let tid = give(&app, &agent, json!({ "instruction": "Say hello" })).await;
    let failed = wait_task(&app, &tid, "failed").await;
    let why = failed["error"].as_str().expect("error");
    assert!(
        why.starts_with("no_model_provider:")
            && why.contains(UNSET)
            && why.contains("llm.api_key_env"),
        "{failed}"
    );
    assert!(
        llm.requests().is_empty(),
        "the provider was asked without a key"
    );
}
