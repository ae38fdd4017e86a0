//! Agents as employees: the job and the company's handbook reach the model
//! (through a real `cadre runtime` and a local server that records what it
//! is sent), the tools offered follow the profile, and the org chart:
//! managers, cycles, a stopped manager holding its reports, delegation
//! along the chart.

use crate::common::{TestApp, add_user, spawn_app};
use crate::tasks::{
    FakeLlm, answer, app_with_llm, approve_pending, give, park_writes, running_agent, tool_call,
    wait_task,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The system prompt of a recorded chat-completions request.
fn system(req: &Value) -> String {
    assert_eq!(req["messages"][0]["role"], "system", "{req}");
    req["messages"][0]["content"]
        .as_str()
        .expect("system text")
        .to_string()
}

/// The prompt without its clock line (the minute may turn between two
/// compositions).
fn timeless(prompt: &str) -> String {
    prompt
        .lines()
        .filter(|l| !l.starts_with("It is "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The items of the list at `path` once it holds at least `n` (what the
/// activity bridge records lands a moment after the work).
async fn at_least(app: &TestApp, path: &str, n: usize) -> Vec<Value> {
    crate::common::eventually_some(&format!("{n} items at {path}"), || async {
        let (_, v) = app.call(Method::GET, path, None).await;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        (items.len() >= n).then_some(items)
    })
    .await
}

/// Opens a conversation with `agent` (titled); its id.
async fn open_chat(app: &TestApp, agent: &str, title: &str) -> String {
    let (s, conv) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/conversations"),
            Some(json!({ "title": title })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{conv}");
    conv["id"].as_str().expect("id").to_string()
}

/// Says `content` in conversation `cid` and waits for the whole reply.
async fn say(app: &TestApp, cid: &str, content: &str) -> Value {
    let (s, reply) = app
        .call(
            Method::POST,
            &format!("/api/v1/conversations/{cid}/messages"),
            Some(json!({ "content": content })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{reply}");
    reply
}

async fn patch(app: &TestApp, agent: &str, body: Value) -> (StatusCode, Value) {
    app.call(
        Method::PATCH,
        &format!("/api/v1/agents/{agent}"),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn the_handbook_and_the_job_reach_the_model_and_a_change_reaches_the_next_task_only() {
    let (llm, url) = FakeLlm::start(vec![
        answer("done 1"),
        tool_call(
            "call_w",
            "files__write",
            json!({ "path": "a.txt", "content": "x" }),
        ),
        answer("done 2"),
        answer("done 3"),
    ])
    .await;
    let app = app_with_llm(&url, |_| {}).await;
    park_writes(&app).await;
    let (s, org) = app
        .call(
            Method::PATCH,
            "/api/v1/orgs/current",
            Some(json!({ "instructions": "HANDBOOK: never share customer data.", "timezone": "Europe/Berlin" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{org}");
    assert_eq!(org["instructions"], "HANDBOOK: never share customer data.");
    let agent = running_agent(
        &app,
        "ada",
        json!({ "role": "billing clerk", "instructions": "JOB-V1: reconcile the invoices.", "persona": "Terse, in English." }),
    )
    .await;
    let view = app.get(&agent).await;
    assert_eq!(view["instructions"], "JOB-V1: reconcile the invoices.");
    assert_eq!(view["persona"], "Terse, in English.");

    let t1 = give(&app, &agent, json!({ "instruction": "first" })).await;
    wait_task(&app, &t1, "succeeded").await;
    let first = system(&llm.requests()[0].1);
    let at = |needle: &str| {
        first
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} is not in the system prompt:\n{first}"))
    };
    // In the documented order: handbook, role, instructions, persona, the
    // time in the organization's zone, the task rules.
    let order = [
        at("HANDBOOK: never share customer data."),
        at("billing clerk"),
        at("JOB-V1: reconcile the invoices."),
        at("Terse, in English."),
        at("Europe/Berlin"),
        at("task__finish"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{first}");

    // What an operator audits is what the model was sent.
    let (s, p) = app
        .call(Method::GET, &format!("/api/v1/agents/{agent}/prompt"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(
        timeless(p["system"].as_str().expect("system")),
        timeless(&first)
    );
    let offered: Vec<String> = llm.requests()[0].1["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .map(|n| n.replace("__", "."))
        .collect();
    assert_eq!(p["tools"], json!(offered));

    // A change while a task runs: the running task keeps its prompt, the
    // next one gets the new one.
    let t2 = give(&app, &agent, json!({ "instruction": "second" })).await;
    wait_task(&app, &t2, "waiting_approval").await;
    let (s, v) = patch(
        &app,
        &agent,
        json!({ "instructions": "JOB-V2: chase the late payers." }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    approve_pending(&app, &agent).await;
    wait_task(&app, &t2, "succeeded").await;
    let t3 = give(&app, &agent, json!({ "instruction": "third" })).await;
    wait_task(&app, &t3, "succeeded").await;
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 4);
    for (i, r) in reqs.iter().enumerate().take(3).skip(1) {
        let s = system(&r.1);
        assert!(
            s.contains("JOB-V1") && !s.contains("JOB-V2"),
            "request {i}: {s}"
        );
    }
    let last = system(&reqs[3].1);
    assert!(
        last.contains("JOB-V2") && !last.contains("JOB-V1"),
        "{last}"
    );
    // Removing the instructions removes them from the prompt.
    let (s, v) = patch(&app, &agent, json!({ "instructions": null })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["instructions"], Value::Null);
    let (_, p) = app
        .call(Method::GET, &format!("/api/v1/agents/{agent}/prompt"), None)
        .await;
    assert!(
        !p["system"].as_str().unwrap_or("JOB").contains("JOB"),
        "{p}"
    );
}

#[tokio::test]
async fn the_model_is_offered_only_what_the_profile_can_allow_and_a_call_outside_it_is_refused() {
    let (llm, url) = FakeLlm::start(vec![
        tool_call("call_s", "shell__exec", json!({ "command": "touch pwned" })),
        answer("could not"),
    ])
    .await;
    let app = app_with_llm(&url, |_| {}).await;
    let agent = running_agent(&app, "reader", json!({ "profile": "read_only" })).await;
    let t = give(&app, &agent, json!({ "instruction": "look around" })).await;
    wait_task(&app, &t, "succeeded").await;
    let reqs = llm.requests();
    let tools: Vec<&str> = reqs[0].1["tools"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["function"]["name"].as_str())
        .collect();
    // read_only (config/governance.toml): reading skills, no side effect
    // but reading; no http host is named, so no http tool either.
    for absent in [
        "shell__exec",
        "files__write",
        "files__delete",
        "http__get",
        "http__request",
        "agent__message",
    ] {
        assert!(!tools.contains(&absent), "{absent} offered: {tools:?}");
    }
    for present in ["files__read", "files__list", "task__finish"] {
        assert!(tools.contains(&present), "{present} not offered: {tools:?}");
    }
    // The model called shell.exec anyway: judged and refused, not run.
    let (_, steps) = app
        .call(Method::GET, &format!("/api/v1/tasks/{t}/steps"), None)
        .await;
    assert_eq!(steps["items"][1]["body"]["tool"], "shell.exec", "{steps}");
    assert_eq!(steps["items"][1]["body"]["decision"], "deny", "{steps}");
    assert_eq!(app.workspace_file(&agent, "pwned"), None);
    // A viewer may read the agent but not what its model is told.
    let (_, viewer) = add_user(&app, "viewer@example.com", "viewer").await;
    let (s, v) = app
        .call_as(
            Some(&viewer),
            Method::GET,
            &format!("/api/v1/agents/{agent}/prompt"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
}

#[tokio::test]
async fn bad_job_and_manager_input_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let boss = app
        .create_id(json!({ "name": "boss", "role": "lead", "model": "m" }))
        .await;
    let worker = app
        .create_id(
            json!({ "name": "worker", "role": "r", "model": "m", "reports_to": { "agent": boss } }),
        )
        .await;
    let before = app.get(&worker).await;
    let big = "x".repeat(32 * 1024 + 1);
    let cases = [
        (json!({ "instructions": big }), "instructions"),
        (json!({ "instructions": "   " }), "instructions"),
        (json!({ "instructions": "a\u{0}b" }), "instructions"),
        (json!({ "persona": "p".repeat(5000) }), "persona"),
        (
            json!({ "reports_to": { "agent": "00000000-0000-0000-0000-000000000000" } }),
            "reports_to.agent",
        ),
        (
            json!({ "reports_to": { "user": "00000000-0000-0000-0000-000000000000" } }),
            "reports_to.user",
        ),
        (
            json!({ "reports_to": { "agent": "boss" } }),
            "reports_to.agent",
        ),
        (
            json!({ "reports_to": { "agent": worker } }),
            "reports_to.agent",
        ),
    ];
    for (body, field) in cases {
        let (s, v) = patch(&app, &worker, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["field"], field, "{body}: {v}");
    }
    for body in [
        json!({ "reports_to": { "robot": boss } }),
        json!({ "reports_to": "boss" }),
        json!({ "reports_to": { "agent": boss, "user": boss } }),
    ] {
        let (s, v) = patch(&app, &worker, body.clone()).await;
        assert!(s.is_client_error(), "{body}: {s} {v}");
        assert!(v["code"].is_string(), "{body}: {v}");
    }
    // A cycle: boss → worker → boss, named.
    let (s, v) = patch(&app, &boss, json!({ "reports_to": { "agent": worker } })).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "reports_to_cycle");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("boss → worker → boss")),
        "{v}"
    );
    assert_eq!(app.get(&worker).await, before);
    assert_eq!(app.get(&boss).await["reports_to"], Value::Null);
    // An organization's instructions are bounded the same way.
    let (s, v) = app
        .call(
            Method::PATCH,
            "/api/v1/orgs/current",
            Some(json!({ "instructions": "y".repeat(32 * 1024 + 1) })),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = app
        .call(
            Method::PATCH,
            "/api/v1/orgs/current",
            Some(json!({ "delegation": "sideways" })),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (_, org) = app.call(Method::GET, "/api/v1/orgs/current", None).await;
    assert_eq!(org["instructions"], Value::Null);
    assert_eq!(org["delegation"], "chart");
    // An unknown mode of the prompt.
    let (s, v) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{worker}/prompt?mode=poem"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn the_org_chart_shows_the_tree_and_a_stopped_or_halted_manager_holds_its_reports() {
    let app = spawn_app().await;
    let (owner_id, _) = {
        let (_, me) = app.call(Method::GET, "/api/v1/me", None).await;
        (me["id"].as_str().expect("me").to_string(), ())
    };
    let lead = app
        .create_id(json!({ "name": "lead", "role": "head of support", "model": "m", "reports_to": { "user": owner_id } }))
        .await;
    let a = app
        .create_id(
            json!({ "name": "a", "role": "triage", "model": "m", "reports_to": { "agent": lead } }),
        )
        .await;
    let b = app
        .create_id(json!({ "name": "b", "role": "refunds", "model": "m" }))
        .await;
    let (s, v) = patch(&app, &b, json!({ "reports_to": { "agent": a } })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["reports_to"], json!({ "agent": a }));
    let loner = app
        .create_id(json!({ "name": "loner", "role": "r", "model": "m" }))
        .await;

    let (s, chart) = app.call(Method::GET, "/api/v1/org-chart", None).await;
    assert_eq!(s, StatusCode::OK, "{chart}");
    assert_eq!(chart["agents"], 4);
    let roots = chart["roots"].as_array().expect("roots");
    assert_eq!(roots.len(), 2, "{chart}");
    let person = &roots[0];
    assert_eq!(person["type"], "user");
    assert_eq!(person["id"], owner_id.as_str());
    assert_eq!(person["reports"][0]["id"], lead.as_str());
    assert_eq!(person["reports"][0]["reports"][0]["id"], a.as_str());
    assert_eq!(
        person["reports"][0]["reports"][0]["reports"][0]["name"],
        "b"
    );
    assert_eq!(
        person["reports"][0]["reports"][0]["reports"][0]["state"],
        "draft"
    );
    assert_eq!(roots[1]["id"], loner.as_str());
    assert_eq!(roots[1]["reports"], json!([]));

    // A stopped manager holds its reports' new work.
    for id in [&lead, &a] {
        let (s, v) = app.command(id, "deploy").await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        app.wait_state(id, "running").await;
    }
    let task = |agent: String| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                &format!("/api/v1/agents/{agent}/tasks"),
                Some(json!({ "instruction": "work" })),
            )
            .await
        }
    };
    let (s, v) = task(a.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app.command(&lead, "stop").await;
    assert!(s.is_success(), "{v}");
    app.wait_state(&lead, "stopped").await;
    let (s, v) = task(a.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "manager_unavailable");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("lead")),
        "{v}"
    );
    // Only the direct manager counts: b's manager is a, which runs.
    let (s, v) = task(b.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Back at work: its reports take work again.
    let (s, v) = app.command(&lead, "start").await;
    assert!(s.is_success(), "{v}");
    app.wait_state(&lead, "running").await;
    let (s, v) = task(a.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Halting the manager holds them too.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/halt",
            Some(json!({ "scope": "agent", "agent_id": lead, "reason": "audit" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = task(a.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "manager_unavailable");
}

#[tokio::test]
async fn agents_give_work_down_the_chart_but_not_up_unless_the_org_allows_it() {
    // Each agent has a model server of its own, so their scripts do not
    // interleave.
    let (_lead_llm, lead_url) = FakeLlm::start(vec![
        tool_call(
            "m1",
            "agent__message",
            json!({ "agent": "report", "message": "file the report" }),
        ),
        answer("delegated"),
        answer("the lead did it"),
    ])
    .await;
    let (_report_llm, report_url) = FakeLlm::start(vec![
        tool_call(
            "m2",
            "agent__message",
            json!({ "agent": "lead", "message": "do my work" }),
        ),
        answer("refused"),
        tool_call(
            "m3",
            "agent__message",
            json!({ "agent": "lead", "message": "do my work, please" }),
        ),
        answer("sent up"),
    ])
    .await;
    let app = app_with_llm(&lead_url, |_| {}).await;
    // full_access: messages to other agents need no approval.
    let lead = running_agent(&app, "lead", json!({ "profile": "full_access" })).await;
    let report = running_agent(
        &app,
        "report",
        json!({ "profile": "full_access", "reports_to": { "agent": lead }, "llm": { "base_url": report_url } }),
    )
    .await;
    let steps = |t: String| {
        let app = &app;
        async move {
            let (_, steps) = app
                .call(Method::GET, &format!("/api/v1/tasks/{t}/steps"), None)
                .await;
            steps["items"][1]["body"]["result"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
    };
    // Down: the report gets the task, and tries to hand it up: refused.
    let t = give(&app, &lead, json!({ "instruction": "delegate" })).await;
    wait_task(&app, &t, "succeeded").await;
    let sent = steps(t.clone()).await;
    assert!(sent.starts_with("sent:"), "{sent}");
    let (_, tasks) = app
        .call(Method::GET, &format!("/api/v1/agents/{report}/tasks"), None)
        .await;
    let delegated = tasks["items"][0]["id"].as_str().expect("id").to_string();
    wait_task(&app, &delegated, "succeeded").await;
    let up = steps(delegated).await;
    assert!(up.contains("org chart"), "{up}");
    let (_, lead_tasks) = app
        .call(Method::GET, &format!("/api/v1/agents/{lead}/tasks"), None)
        .await;
    assert_eq!(lead_tasks["items"].as_array().map(Vec::len), Some(1));
    // The organization allows any delegation: up is sent.
    let (s, v) = app
        .call(
            Method::PATCH,
            "/api/v1/orgs/current",
            Some(json!({ "delegation": "any" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let t = give(&app, &report, json!({ "instruction": "again" })).await;
    wait_task(&app, &t, "succeeded").await;
    let sent = steps(t).await;
    assert!(sent.starts_with("sent:"), "{sent}");
}

#[tokio::test]
async fn a_task_and_a_chat_land_in_the_activity_tables_exactly_with_a_steps_wait_apart() {
    let (_llm, url) = FakeLlm::start(vec![
        tool_call(
            "call_w",
            "files__write",
            json!({ "path": "notes.txt", "content": "hello", "api_key": "sk-SECRET" }),
        ),
        tool_call("call_l", "files__list", json!({})),
        answer("all filed"),
        answer("Nothing else today."),
    ])
    .await;
    let app = app_with_llm(&url, |_| {}).await;
    park_writes(&app).await;
    let agent = running_agent(&app, "clerk", json!({})).await;
    let t = give(&app, &agent, json!({ "instruction": "File the notes" })).await;
    wait_task(&app, &t, "waiting_approval").await;
    // A person takes their time: the step must say it waited, apart from
    // how long the write ran.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    approve_pending(&app, &agent).await;
    wait_task(&app, &t, "succeeded").await;

    let (_, steps) = app
        .call(Method::GET, &format!("/api/v1/tasks/{t}/steps"), None)
        .await;
    let write = &steps["items"][1];
    assert_eq!(write["body"]["tool"], "files.write", "{steps}");
    let waited = write["body"]["waited_ms"].as_u64().expect("waited_ms");
    assert!(waited >= 1500, "{write}");
    assert!(
        write["latency_ms"].as_u64().expect("latency") < 1500,
        "{write}"
    );
    // And one chat.
    let cid = open_chat(&app, &agent, "check-in").await;
    let reply = say(&app, &cid, "Anything else?").await;
    assert_eq!(reply["content"], "Nothing else today.");

    // Exactly the two tool calls, newest first, with secrets redacted.
    let calls = at_least(&app, &format!("/api/v1/agents/{agent}/tool-calls"), 2).await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["tool_id"], "files.list");
    assert_eq!(calls[0]["status"], "ok");
    assert_eq!(calls[1]["tool_id"], "files.write");
    assert_eq!(calls[1]["status"], "ok");
    assert_eq!(calls[1]["arguments"]["path"], "notes.txt");
    assert_eq!(calls[1]["arguments"]["api_key"], "[redacted]");
    assert!(
        calls[1]["result_summary"]
            .as_str()
            .is_some_and(|r| r.contains("wrote 5 bytes")),
        "{}",
        calls[1]
    );
    // The task's conversation: the instruction, then what the model said.
    let convs = crate::common::eventually_some("the task's conversation", || async {
        let (_, v) = app
            .call(
                Method::GET,
                &format!("/api/v1/agents/{agent}/conversations"),
                None,
            )
            .await;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        let full = |id: &str, n: i64| items.iter().any(|c| c["id"] == id && c["messages"] == n);
        (full(&t, 2) && full(&cid, 3)).then_some(items)
    })
    .await;
    // Exactly the task's and the chat's, the chat started last.
    assert_eq!(convs.len(), 2, "{convs:?}");
    assert_eq!(convs[0]["id"], cid.as_str());
    assert_eq!(convs[0]["title"], "check-in");
    assert_eq!(convs[1]["id"], t.as_str());
    assert_eq!(convs[1]["title"], "File the notes");
    let (_, msgs) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/conversations/{t}/messages"),
            None,
        )
        .await;
    let said: Vec<(&str, &str)> = msgs["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or(""),
                m["content"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        said,
        [("user", "File the notes"), ("assistant", "all filed")]
    );
    let (_, day) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/timeline"),
            None,
        )
        .await;
    // Two tool calls; the task's two messages and the chat's three (its
    // opening line, the question, the answer).
    assert_eq!(day["totals"]["tool_calls"], 2, "{day}");
    assert_eq!(day["totals"]["messages"], 5, "{day}");
}

/// Reads a Server-Sent Events response until its `done` or `error` event:
/// (event name, data) in order; `on` sees each as it comes.
async fn sse_until_done(
    mut resp: reqwest::Response,
    mut on: impl AsyncFnMut(&str, &Value),
) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    let mut buf = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        assert!(std::time::Instant::now() < deadline, "no end: {seen:?}");
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(60), resp.chunk())
            .await
            .expect("a chunk in time")
            .expect("stream");
        let Some(chunk) = chunk else { return seen };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if name.is_empty() {
                continue;
            }
            let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
            on(&name, &data).await;
            let end = name == "done" || name == "error";
            seen.push((name, data));
            if end {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn a_person_talks_to_a_running_agent_which_answers_with_the_conversation_and_its_tools() {
    let (llm, url) = FakeLlm::start(vec![
        answer("Hello, I am ada."),
        tool_call(
            "call_w",
            "files__write",
            json!({ "path": "memo.txt", "content": "remember" }),
        ),
        answer("Written down."),
    ])
    .await;
    let app = app_with_llm(&url, |c| c.llm.stream = true).await;
    park_writes(&app).await;
    let agent = running_agent(
        &app,
        "ada",
        json!({ "instructions": "JOB: greet visitors." }),
    )
    .await;
    let cid = open_chat(&app, &agent, "First day").await;

    // Answered when complete.
    let reply = say(&app, &cid, "Who are you?").await;
    assert_eq!(reply["content"], "Hello, I am ada.");
    assert_eq!(reply["conversation_id"], cid.as_str());
    let first = &llm.requests()[0].1;
    let sys = system(first);
    assert!(
        sys.contains("conversation with a person") && sys.contains("JOB: greet visitors."),
        "{sys}"
    );
    assert_eq!(first["messages"][1]["content"], "Who are you?");

    // Streamed: the tool call waits for a person, the stream says so; the
    // approval lets it finish.
    let resp = app
        .client
        .post(app.url(&format!("/api/v1/conversations/{cid}/messages")))
        .bearer_auth(&app.token)
        .header("accept", "text/event-stream")
        .json(&json!({ "content": "Write it down, please." }))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream")
    );
    let app_ref = &app;
    let agent_ref = &agent;
    let events = sse_until_done(resp, async |name: &str, _data: &Value| {
        if name == "waiting_approval" {
            approve_pending(app_ref, agent_ref).await;
        }
    })
    .await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"accepted"), "{events:?}");
    assert!(names.contains(&"waiting_approval"), "{events:?}");
    assert!(names.contains(&"tool"), "{events:?}");
    assert!(names.contains(&"delta"), "{events:?}");
    let (last, done) = events.last().expect("events");
    assert_eq!(last, "done", "{events:?}");
    assert_eq!(done["content"], "Written down.");
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "delta")
        .filter_map(|(_, d)| d["text"].as_str())
        .collect();
    assert!(streamed.contains("Written down."), "{streamed}");
    // The second reply was given the conversation so far.
    let second = &llm.requests()[1].1;
    let said: Vec<(&str, &str)> = second["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .skip(1)
        .map(|m| {
            (
                m["role"].as_str().unwrap_or(""),
                m["content"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        said,
        [
            ("user", "Who are you?"),
            ("assistant", "Hello, I am ada."),
            ("user", "Write it down, please.")
        ]
    );
    assert_eq!(
        app.workspace_file(&agent, "memo.txt").as_deref(),
        Some("remember")
    );

    // Kept: the conversation with its title and every message; the tool
    // call with the others.
    let msgs = at_least(
        &app,
        &format!("/api/v1/agents/{agent}/conversations/{cid}/messages"),
        5,
    )
    .await;
    let roles: Vec<&str> = msgs.iter().filter_map(|m| m["role"].as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user", "assistant"]);
    assert_eq!(msgs[4]["content"], "Written down.");
    let (_, convs) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/conversations"),
            None,
        )
        .await;
    let chat = convs["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|c| c["id"] == cid.as_str())
        .cloned()
        .expect("the chat is listed");
    assert_eq!(chat["title"], "First day");
    let (_, calls) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/tool-calls"),
            None,
        )
        .await;
    assert_eq!(calls["items"][0]["tool_id"], "files.write", "{calls}");
}

#[tokio::test]
async fn talking_to_an_agent_that_cannot_answer_or_to_another_orgs_conversation_is_refused() {
    let app = spawn_app().await;
    let draft = app
        .create_id(json!({ "name": "idle", "role": "r", "model": "m" }))
        .await;
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{draft}/conversations"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "agent_not_running");
    let agent = app
        .create_id(json!({ "name": "talker", "role": "r", "model": "m" }))
        .await;
    let (s, v) = app.command(&agent, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_state(&agent, "running").await;
    let (s, conv) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/conversations"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{conv}");
    let cid = conv["id"].as_str().expect("id").to_string();
    let path = format!("/api/v1/conversations/{cid}/messages");
    for (body, status) in [
        (json!({ "content": "" }), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({ "content": "x".repeat(32 * 1024 + 1) }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({ "text": "hi" }), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (s, v) = app.call(Method::POST, &path, Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(v["code"].is_string(), "{v}");
    }
    for bad in [
        "00000000-0000-0000-0000-000000000000",
        "not-a-conversation",
        "x%20y",
    ] {
        let (s, v) = app
            .call(
                Method::POST,
                &format!("/api/v1/conversations/{bad}/messages"),
                Some(json!({ "content": "hi" })),
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{bad}: {v}");
    }
    // Another organization's people cannot see it, let alone write to it.
    let (_, other) = crate::identity::other_org(&app, "b-org", "team").await;
    let (s, v) = app
        .call_as(
            Some(&other),
            Method::POST,
            &path,
            Some(json!({ "content": "hi" })),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // A viewer may not talk.
    let (_, viewer) = add_user(&app, "v@x.test", "viewer").await;
    let (s, _) = app
        .call_as(
            Some(&viewer),
            Method::POST,
            &path,
            Some(json!({ "content": "hi" })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A stopped agent does not answer; nothing was given it.
    let (s, v) = app.command(&agent, "stop").await;
    assert!(s.is_success(), "{v}");
    app.wait_state(&agent, "stopped").await;
    let (s, v) = app
        .call(Method::POST, &path, Some(json!({ "content": "hi" })))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "agent_not_running");
    let (_, tasks) = app
        .call(Method::GET, &format!("/api/v1/agents/{agent}/tasks"), None)
        .await;
    assert_eq!(tasks["items"], json!([]), "{tasks}");
}

#[tokio::test]
async fn every_change_of_what_an_agent_is_makes_a_version_that_can_be_compared_and_restored() {
    let app = spawn_app().await;
    let agent = app
        .create_id(
            json!({ "name": "ver", "role": "clerk", "model": "m1", "instructions": "V1 text" }),
        )
        .await;
    let versions = |q: &'static str| {
        let app = &app;
        let agent = agent.clone();
        async move {
            let (s, v) = app
                .call(
                    Method::GET,
                    &format!("/api/v1/agents/{agent}/versions{q}"),
                    None,
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            v
        }
    };
    let v = versions("").await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["items"][0]["n"], 1);
    assert_eq!(v["items"][0]["definition"]["instructions"], "V1 text");
    // Two changes of its definition; a rename is not one.
    let (s, _) = patch(
        &app,
        &agent,
        json!({ "instructions": "V2 text", "persona": "Calm" }),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = patch(
        &app,
        &agent,
        json!({ "model": "m2", "budget": { "monthly_tokens": 5000 } }),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = patch(&app, &agent, json!({ "name": "renamed" })).await;
    assert_eq!(s, StatusCode::OK);
    let v = versions("").await;
    let ns: Vec<u64> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["n"].as_u64())
        .collect();
    assert_eq!(ns, [3, 2, 1], "{v}");
    assert!(
        v["items"][0]["by"]
            .as_str()
            .is_some_and(|b| b.starts_with("user:")),
        "{v}"
    );
    // Paging.
    let page = versions("?limit=2").await;
    assert_eq!(page["next_cursor"], "2", "{page}");
    let rest = versions("?cursor=2").await;
    assert_eq!(rest["items"][0]["n"], 1, "{rest}");
    // One version, and what changed between two.
    let (s, two) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/versions/2"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{two}");
    assert_eq!(two["definition"]["persona"], "Calm");
    let (_, d) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/versions/3/diff"),
            None,
        )
        .await;
    let fields: Vec<&str> = d["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert_eq!(fields, ["budget", "model"], "{d}");
    let (_, d) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/versions/3/diff?to=1"),
            None,
        )
        .await;
    let fields: Vec<&str> = d["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        ["budget", "instructions", "model", "persona"],
        "{d}"
    );
    // Restoring version 1 is itself a change: version 4, with 1's definition.
    let (s, a) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/versions/1/restore"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!(a["instructions"], "V1 text");
    assert_eq!(a["persona"], Value::Null);
    assert_eq!(a["model"], "m1");
    assert_eq!(a["name"], "renamed");
    let v = versions("").await;
    assert_eq!(v["items"][0]["n"], 4);
    let (_, one) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/versions/1"),
            None,
        )
        .await;
    assert_eq!(v["items"][0]["definition"], one["definition"]);
    // Unknown versions and agents.
    for path in [
        format!("/api/v1/agents/{agent}/versions/9"),
        format!("/api/v1/agents/{agent}/versions/0"),
        format!("/api/v1/agents/{agent}/versions/x"),
        "/api/v1/agents/00000000-0000-0000-0000-000000000000/versions".to_string(),
    ] {
        let (s, v) = app.call(Method::GET, &path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
    }
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/versions/9/restore"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(versions("").await["items"][0]["n"], 4);
}

#[tokio::test]
async fn a_task_records_its_version_and_a_replay_runs_with_the_originals_unless_told() {
    let (llm, url) = FakeLlm::start(vec![answer("one"), answer("two"), answer("three")]).await;
    let app = app_with_llm(&url, |_| {}).await;
    let agent = running_agent(&app, "replayer", json!({ "instructions": "JOB-V1" })).await;
    let t1 = give(&app, &agent, json!({ "instruction": "go" })).await;
    let done = wait_task(&app, &t1, "succeeded").await;
    assert_eq!(done["version"], 1, "{done}");
    let (s, v) = patch(&app, &agent, json!({ "instructions": "JOB-V2" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let replay = |body: Value| {
        let app = &app;
        let t1 = t1.clone();
        async move {
            app.call(
                Method::POST,
                &format!("/api/v1/tasks/{t1}/replay"),
                Some(body),
            )
            .await
        }
    };
    // The original's version by default: told what the agent was then.
    let (s, r) = replay(json!({ "from_step": 1 })).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    assert_eq!(r["version"], 1, "{r}");
    wait_task(&app, r["id"].as_str().expect("id"), "succeeded").await;
    let sys = system(&llm.requests()[1].1);
    assert!(sys.contains("JOB-V1") && !sys.contains("JOB-V2"), "{sys}");
    // Told otherwise: the current one.
    let (s, r) = replay(json!({ "from_step": 1, "version": "current" })).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    let r = wait_task(&app, r["id"].as_str().expect("id"), "succeeded").await;
    assert_eq!(r["version"], 2, "{r}");
    let sys = system(&llm.requests()[2].1);
    assert!(sys.contains("JOB-V2") && !sys.contains("JOB-V1"), "{sys}");
    // A version it never had.
    for bad in [json!(9), json!(0), json!("latest"), json!(true)] {
        let (s, v) = replay(json!({ "from_step": 1, "version": bad })).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {v}");
    }
}

#[tokio::test]
async fn an_approval_can_name_the_agents_manager_and_escalates_up_the_chart() {
    let (_llm, url) = FakeLlm::start(vec![
        tool_call(
            "w1",
            "files__write",
            json!({ "path": "a.txt", "content": "1" }),
        ),
        answer("written"),
        tool_call("d1", "files__delete", json!({ "path": "a.txt" })),
        answer("deleted"),
    ])
    .await;
    let app = app_with_llm(&url, |_| {}).await;
    let (boss, boss_token) = add_user(&app, "boss@x.test", "member").await;
    let (_, other) = add_user(&app, "other@x.test", "member").await;
    for (name, body) in [
        (
            "writes",
            json!({ "tools": ["files.write"], "levels": [{ "approvers": { "manager": 1 }, "timeout_seconds": 600 }] }),
        ),
        (
            "deletes",
            json!({ "tools": ["files.delete"], "levels": [
                { "approvers": { "manager": 1 }, "timeout_seconds": 1, "on_timeout": "escalate" },
                { "approvers": { "manager": 2 }, "timeout_seconds": 600 }
            ] }),
        ),
    ] {
        let (s, v) = app
            .call(
                Method::PUT,
                &format!("/api/v1/approval-policies/{name}"),
                Some(body),
            )
            .await;
        assert!(s.is_success(), "{v}");
    }
    // worker → lead (an agent) → boss (a person).
    let lead = app
        .create_id(
            json!({ "name": "lead", "role": "r", "model": "m", "reports_to": { "user": boss } }),
        )
        .await;
    let worker = running_agent(&app, "worker", json!({ "reports_to": { "agent": lead } })).await;
    let decide = |aid: String, token: String| {
        let app = &app;
        async move {
            app.call_as(
                Some(&token),
                Method::POST,
                &format!("/api/v1/approvals/{aid}/decide"),
                Some(json!({ "decision": "approve" })),
            )
            .await
        }
    };
    // Its manager is the person above its manager agent: only they decide.
    let t = give(&app, &worker, json!({ "instruction": "write" })).await;
    wait_task(&app, &t, "waiting_approval").await;
    let pending = app
        .approvals(&format!("state=pending&agent_id={worker}"), 1)
        .await;
    let aid = pending[0]["id"].as_str().expect("id").to_string();
    assert_eq!(
        pending[0]["approvers"]["users"],
        json!([boss]),
        "{}",
        pending[0]
    );
    let (s, v) = decide(aid.clone(), other.clone()).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = decide(aid.clone(), app.token.clone()).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "the owner is not its manager: {v}"
    );
    let (s, v) = decide(aid, boss_token.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_task(&app, &t, "succeeded").await;
    // Nobody answers in time: one step up the chart, where no other person
    // stands, so the owners decide and the manager no longer does.
    let t = give(&app, &worker, json!({ "instruction": "delete" })).await;
    wait_task(&app, &t, "waiting_approval").await;
    let pending = app
        .approvals(&format!("state=pending&agent_id={worker}"), 1)
        .await;
    let aid = pending[0]["id"].as_str().expect("id").to_string();
    let escalated = crate::common::eventually_some("the request escalates", || async {
        let (_, a) = app
            .call(Method::GET, &format!("/api/v1/approvals/{aid}"), None)
            .await;
        (a["level"] == 1).then_some(a)
    })
    .await;
    assert_eq!(
        escalated["approvers"]["roles"],
        json!(["owner"]),
        "{escalated}"
    );
    let (s, v) = decide(aid.clone(), boss_token).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = decide(aid, app.token.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_task(&app, &t, "succeeded").await;
    assert_eq!(app.workspace_file(&worker, "a.txt"), None);
}
