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
type Seen = (Option<String>, Value);

#[derive(Clone, Default)]
struct FakeLlm {
    script: Arc<Mutex<VecDeque<Value>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeLlm {
    async fn start(script: Vec<Value>) -> (FakeLlm, String) {
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

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn complete(
    State(fake): State<FakeLlm>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
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
    fake.seen.lock().expect("lock").push((auth, body));
    match fake.script.lock().expect("lock").pop_front() {
        Some(r) => (axum::http::StatusCode::OK, Json(r)),
        None => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": { "message": "script exhausted" } })),
        ),
    }
}

/// A response calling one tool.
fn tool_call(id: &str, wire_name: &str, args: Value) -> Value {
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

async fn app_with_llm(url: &str, tweak: impl FnOnce(&mut cadre::config::Config)) -> TestApp {
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
async fn park_writes(app: &TestApp) {
    let (s, v) = app
        .call(
            Method::PUT,
            "/api/v1/approval-policies/writes",
            Some(json!({ "tools": ["files.write"], "levels": [{ "approvers": { "roles": ["owner"] }, "timeout_seconds": 120 }] })),
        )
        .await;
    assert!(s.is_success(), "{v}");
}

/// Creates an agent named `name` (`developer` profile, model `m`, plus
/// `extra` fields), deploys it and waits until it runs.
async fn running_agent(app: &TestApp, name: &str, extra: Value) -> String {
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
async fn give(app: &TestApp, agent: &str, body: Value) -> String {
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

async fn task(app: &TestApp, id: &str) -> Value {
    let (s, v) = app
        .call(Method::GET, &format!("/api/v1/tasks/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// Polls a task until it reaches `state` (30 s deadline).
async fn wait_task(app: &TestApp, id: &str, state: &str) -> Value {
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
