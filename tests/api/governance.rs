//! Governance end to end, with real `cadre runtime` processes following a
//! script: tool calls parked until a human decides (approve, deny, each
//! timeout action, escalation), who may decide, exactly-once decisions,
//! pending approvals across a server restart, sandbox mode, grants, budget
//! reservations and the kill switch.

use crate::common::{TestApp, add_user, eventually, org_id, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn put(app: &TestApp, path: &str, body: Value) -> Value {
    let (s, v) = app.call(Method::PUT, path, Some(body)).await;
    assert!(
        s == StatusCode::CREATED || s == StatusCode::OK,
        "{path}: {s} {v}"
    );
    v
}

/// An approval policy for `tools`, approved by `roles`/`users`.
fn policy(tools: &[&str], levels: Value) -> Value {
    json!({ "tools": tools, "levels": levels })
}

fn level(roles: &[&str], users: &[&str], timeout: u64, on_timeout: &str) -> Value {
    json!({ "approvers": { "roles": roles, "users": users }, "timeout_seconds": timeout, "on_timeout": on_timeout })
}

/// Creates an agent with `profile` and `script`, deploys it, returns its id.
async fn scripted(app: &TestApp, name: &str, profile: &str, script: &[Value]) -> String {
    let id = app
        .create_id(json!({ "name": name, "role": "r", "model": "m", "profile": profile }))
        .await;
    app.script(&id, script);
    let (s, v) = app.command(&id, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    id
}

async fn decide(app: &TestApp, token: &str, id: &str, body: Value) -> (StatusCode, Value) {
    app.call_as(
        Some(token),
        Method::POST,
        &format!("/api/v1/approvals/{id}/decide"),
        Some(body),
    )
    .await
}

async fn activity_kinds(app: &TestApp, agent: &str) -> Vec<String> {
    let (s, v) = app
        .call(
            Method::GET,
            &format!("/api/v1/activity?agent={agent}&limit=200"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["kind"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_runtime_waits_for_a_human_and_proceeds_only_on_approval() {
    let app = spawn_app().await;
    let (admin_id, admin) = add_user(&app, "admin@x.test", "admin").await;
    let (_, member) = add_user(&app, "member@x.test", "member").await;
    let (_, viewer) = add_user(&app, "viewer@x.test", "viewer").await;
    put(
        &app,
        "/api/v1/approval-policies/writes",
        policy(
            &["files.write"],
            json!([level(&["admin"], &[], 60, "deny")]),
        ),
    )
    .await;
    let id = scripted(
        &app,
        "writer",
        "developer",
        &[
            json!({ "tool": "files.write", "arguments": { "path": "a.txt", "content": "hello" } }),
            json!({ "tool": "files.write", "arguments": { "path": "b.txt", "content": "nope" } }),
        ],
    )
    .await;
    let pending = app
        .approvals(&format!("state=pending&agent_id={id}"), 1)
        .await;
    let a = pending[0].clone();
    let aid = a["id"].as_str().expect("id").to_string();
    assert_eq!(a["tool"], "files.write");
    assert_eq!(a["call_id"], "step-0");
    assert_eq!(a["policy"], "writes");
    // Parked: nothing was executed.
    assert_eq!(app.workspace_file(&id, "a.txt"), None);

    // Who may decide: a viewer never, a member not under this policy, and a
    // name in the body is not a decider (unknown field).
    let (s, v) = decide(&app, &viewer, &aid, json!({ "decision": "approve" })).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = decide(&app, &member, &aid, json!({ "decision": "approve" })).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["code"], "forbidden");
    let (s, v) = decide(
        &app,
        &member,
        &aid,
        json!({ "decision": "approve", "decided_by": admin_id }),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = decide(&app, &admin, &aid, json!({ "decision": "maybe" })).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // Still pending after all of that.
    let (_, now) = app
        .call(Method::GET, &format!("/api/v1/approvals/{aid}"), None)
        .await;
    assert_eq!(now["state"], "pending");

    let (s, v) = decide(
        &app,
        &admin,
        &aid,
        json!({ "decision": "approve", "comment": "go ahead" }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "approved");
    assert_eq!(v["decided_by"], format!("user:{admin_id}"));
    // A second decision loses.
    let (s, v) = decide(&app, &admin, &aid, json!({ "decision": "deny" })).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "already_decided");

    // The runtime proceeded: the file exists and the tool call carries the comment.
    let calls = app.tool_calls(&id, 1).await;
    assert_eq!(calls[0]["status"], "ok", "{calls:?}");
    assert!(
        calls[0]["result_summary"]
            .as_str()
            .is_some_and(|r| r.contains("go ahead")),
        "{calls:?}"
    );
    assert_eq!(app.workspace_file(&id, "a.txt").as_deref(), Some("hello"));

    // The second call is denied, with the reason handed back; nothing written.
    let pending = app
        .approvals(&format!("state=pending&agent_id={id}"), 1)
        .await;
    let bid = pending[0]["id"].as_str().expect("id").to_string();
    assert_ne!(bid, aid);
    let (s, v) = decide(
        &app,
        &admin,
        &bid,
        json!({ "decision": "deny", "comment": "not that file" }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let calls = app.tool_calls(&id, 2).await;
    assert_eq!(calls[1]["status"], "denied", "{calls:?}");
    assert!(
        calls[1]["result_summary"]
            .as_str()
            .is_some_and(|r| r.contains("not that file")),
        "{calls:?}"
    );
    assert_eq!(app.workspace_file(&id, "b.txt"), None);

    // Every request and decision is an activity event and an audit entry.
    eventually("approval events on the agent's activity", || async {
        let kinds = activity_kinds(&app, &id).await;
        ["approval.requested", "approval.approved", "approval.denied"]
            .iter()
            .all(|k| kinds.iter().any(|x| x == k))
    })
    .await;
    let (_, audit) = app
        .call(Method::GET, "/api/v1/audit?action=approval.&limit=50", None)
        .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    for a in ["approval.request", "approval.approve", "approval.deny"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    // Filters.
    let (s, v) = app
        .call(Method::GET, "/api/v1/approvals?state=approved", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));
    let (s, v) = app
        .call(Method::GET, "/api/v1/approvals?state=bogus", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = app.call(Method::GET, "/api/v1/approvals/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn timeouts_deny_approve_or_escalate() {
    let app = spawn_app().await;
    let (boss_id, boss) = add_user(&app, "boss@x.test", "admin").await;
    let (_, other_admin) = add_user(&app, "other@x.test", "admin").await;
    put(
        &app,
        "/api/v1/approval-policies/deny-late",
        policy(&["files.write"], json!([level(&["owner"], &[], 1, "deny")])),
    )
    .await;
    put(
        &app,
        "/api/v1/approval-policies/approve-late",
        policy(&["echo"], json!([level(&["owner"], &[], 1, "approve")])),
    )
    .await;
    put(
        &app,
        "/api/v1/approval-policies/escalate",
        policy(
            &["files.delete"],
            json!([
                level(&["owner"], &[], 1, "escalate"),
                level(&[], &[&boss_id], 60, "deny")
            ]),
        ),
    )
    .await;
    let id = scripted(
        &app,
        "timer",
        "full_access",
        &[
            json!({ "tool": "files.write", "arguments": { "path": "late.txt", "content": "x" } }),
            json!({ "tool": "echo", "arguments": { "hi": 1 } }),
            json!({ "tool": "files.delete", "arguments": { "path": "late.txt" } }),
        ],
    )
    .await;
    // deny on timeout
    let calls = app.tool_calls(&id, 1).await;
    assert_eq!(calls[0]["status"], "denied", "{calls:?}");
    assert_eq!(app.workspace_file(&id, "late.txt"), None);
    // approve on timeout
    let calls = app.tool_calls(&id, 2).await;
    assert_eq!(calls[1]["status"], "ok", "{calls:?}");
    // escalate: level 1 belongs to the named user only
    let esc = loop {
        let p = app
            .approvals(&format!("state=pending&agent_id={id}"), 1)
            .await;
        if p[0]["level"] == 1 {
            break p[0].clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(esc["tool"], "files.delete");
    let eid = esc["id"].as_str().expect("id");
    let (s, v) = decide(&app, &other_admin, eid, json!({ "decision": "approve" })).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = decide(&app, &app.token, eid, json!({ "decision": "approve" })).await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "an owner is no approver at level 1: {v}"
    );
    let (s, v) = decide(
        &app,
        &boss,
        eid,
        json!({ "decision": "deny", "comment": "keep it" }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let calls = app.tool_calls(&id, 3).await;
    assert_eq!(calls[2]["status"], "denied", "{calls:?}");
    let all = app.approvals(&format!("agent_id={id}"), 3).await;
    let states: Vec<(&str, Value)> = all
        .iter()
        .map(|a| (a["state"].as_str().unwrap_or(""), a["approved"].clone()))
        .collect();
    assert!(states.contains(&("expired", json!(false))), "{states:?}");
    assert!(states.contains(&("expired", json!(true))), "{states:?}");
    assert!(states.contains(&("denied", json!(false))), "{states:?}");
    eventually("expiry and escalation events", || async {
        let kinds = activity_kinds(&app, &id).await;
        kinds.iter().any(|k| k == "approval.expired")
            && kinds.iter().any(|k| k == "approval.escalated")
    })
    .await;
}

#[tokio::test]
async fn concurrent_decisions_have_exactly_one_winner_and_grants_can_be_revoked() {
    let app = spawn_app().await;
    put(
        &app,
        "/api/v1/approval-policies/echo",
        policy(
            &["echo", "files.write"],
            json!([level(&["admin", "owner"], &[], 60, "deny")]),
        ),
    )
    .await;
    let mut admins = Vec::new();
    for i in 0..8 {
        admins.push(add_user(&app, &format!("a{i}@x.test"), "admin").await.1);
    }
    let id = scripted(
        &app,
        "racer",
        "full_access",
        &[
            json!({ "tool": "echo", "arguments": { "same": true } }),
            json!({ "tool": "echo", "arguments": { "same": true } }),
            json!({ "tool": "files.write", "arguments": { "path": "w", "content": "w" } }),
            json!({ "tool": "echo", "arguments": { "same": true } }),
        ],
    )
    .await;
    let pending = app
        .approvals(&format!("state=pending&agent_id={id}"), 1)
        .await;
    let aid = pending[0]["id"].as_str().expect("id").to_string();
    let tasks: Vec<_> = admins
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let (app, t, aid) = (&app, t.clone(), aid.clone());
            async move {
                let body = if i % 2 == 0 {
                    json!({ "decision": "approve", "scope": { "type": "same_arguments", "for_seconds": 600 } })
                } else {
                    json!({ "decision": "deny" })
                };
                decide(app, &t, &aid, body).await
            }
        })
        .collect();
    let results = futures_util::future::join_all(tasks).await;
    let ok: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .collect();
    let conflicts = results
        .iter()
        .filter(|(s, v)| *s == StatusCode::CONFLICT && v["code"] == "already_decided")
        .count();
    assert_eq!(ok.len(), 1, "{results:?}");
    assert_eq!(conflicts, admins.len() - 1, "{results:?}");
    let winner = ok[0].1.clone();
    if winner["state"] == "approved" {
        // The grant covers the same call again: step 1 runs without a request.
        let grant = winner["grant_id"].as_str().expect("grant").to_string();
        let calls = app.tool_calls(&id, 2).await;
        assert_eq!(calls[1]["status"], "ok", "{calls:?}");
        // Step 2 (another tool) waits for a human meanwhile.
        let write = app
            .approvals(&format!("state=pending&agent_id={id}"), 1)
            .await;
        assert_eq!(write[0]["call_id"], "step-2");
        let (_, g) = app.call(Method::GET, "/api/v1/grants", None).await;
        assert_eq!(g["items"][0]["id"], grant.as_str());
        assert_eq!(g["items"][0]["live"], true);
        // Revoked: the third identical call needs a human again.
        let (s, v) = app
            .call(Method::DELETE, &format!("/api/v1/grants/{grant}"), None)
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
        let (s, _) = app
            .call(Method::DELETE, &format!("/api/v1/grants/{grant}"), None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let wid = write[0]["id"].as_str().expect("id");
        let (s, v) = decide(&app, &app.token, wid, json!({ "decision": "approve" })).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let again = loop {
            let p = app
                .approvals(&format!("state=pending&agent_id={id}"), 1)
                .await;
            if p[0]["call_id"] == "step-3" {
                break p;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(again[0]["tool"], "echo");
    } else {
        let calls = app.tool_calls(&id, 1).await;
        assert_eq!(calls[0]["status"], "denied");
    }
}

#[tokio::test]
async fn pending_approvals_survive_a_restart_and_the_waiting_runtime_gets_its_answer() {
    let mut app = spawn_app().await;
    put(
        &app,
        "/api/v1/approval-policies/all-echo",
        policy(
            &["echo", "files.write"],
            json!([level(&["owner"], &[], 3600, "deny")]),
        ),
    )
    .await;
    // 500 parallel calls from one runtime, plus one more that will decide
    // whether the runtime proceeds after the restart.
    let id = scripted(
        &app,
        "many",
        "full_access",
        &[
            json!({ "tool": "echo", "repeat": 500 }),
            json!({ "tool": "files.write", "arguments": { "path": "after.txt", "content": "resumed" } }),
        ],
    )
    .await;
    let before = app.approvals("state=pending", 500).await;
    assert_eq!(before.len(), 500);
    app.restart().await;
    // All 500 are back (not a first page) and still decidable.
    let after = app.approvals("state=pending", 500).await;
    assert_eq!(after.len(), 500);
    use futures_util::StreamExt;
    let statuses: Vec<StatusCode> = futures_util::stream::iter(after.iter().map(|a| {
        let (app, aid) = (&app, a["id"].as_str().expect("id").to_string());
        async move {
            decide(app, &app.token, &aid, json!({ "decision": "approve" }))
                .await
                .0
        }
    }))
    .buffer_unordered(16)
    .collect()
    .await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    // The runtime (reconnected to the new server) got every answer and moved on.
    let calls = app.tool_calls(&id, 500).await;
    assert!(calls.iter().all(|c| c["status"] == "ok"));
    let next = app
        .approvals(&format!("state=pending&agent_id={id}"), 1)
        .await;
    assert_eq!(next[0]["call_id"], "step-1");
    let nid = next[0]["id"].as_str().expect("id").to_string();
    // Restart again while the runtime waits on this one; then decide.
    app.restart().await;
    let (s, v) = decide(&app, &app.token, &nid, json!({ "decision": "approve" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    eventually("the runtime resumed after the restart", || async {
        app.workspace_file(&id, "after.txt").as_deref() == Some("resumed")
    })
    .await;
}

#[tokio::test]
async fn sandbox_records_side_effects_and_never_executes_them() {
    let app = spawn_app().await;
    put(
        &app,
        "/api/v1/profiles/sandboxed",
        json!({ "allow_skills": ["core", "files"], "max_risk": "high", "sandbox": true }),
    )
    .await;
    let id = scripted(
        &app,
        "sand",
        "sandboxed",
        &[
            json!({ "tool": "files.write", "arguments": { "path": "s.txt", "content": "x" } }),
            json!({ "tool": "files.read", "arguments": { "path": "s.txt" } }),
            json!({ "tool": "shell.exec", "arguments": { "cmd": "true" } }),
        ],
    )
    .await;
    let calls = app.tool_calls(&id, 3).await;
    assert_eq!(calls[0]["status"], "ok");
    assert!(
        calls[0]["result_summary"]
            .as_str()
            .is_some_and(|r| r.contains("simulated")),
        "{calls:?}"
    );
    assert_eq!(
        app.workspace_file(&id, "s.txt"),
        None,
        "a simulated write wrote"
    );
    // Reading has no side effect to simulate: it really runs (and finds nothing).
    assert_eq!(calls[1]["status"], "error", "{calls:?}");
    // Deny still wins in a sandbox: the code skill is not allowed.
    assert_eq!(calls[2]["status"], "denied", "{calls:?}");
    assert!(
        calls[2]["result_summary"]
            .as_str()
            .is_some_and(|r| r.contains("allows neither")),
        "{calls:?}"
    );
}

#[tokio::test]
async fn model_calls_reserve_before_spending_and_never_overshoot() {
    let app = spawn_app().await;
    // Default pricing; 1,000 tokens for this agent. Each call holds
    // 100 + 200 = 300 and uses 100 + 150 = 250.
    let call = json!({ "model_call": { "model": "m", "input_tokens": 100, "max_output_tokens": 200, "output_tokens": 150 } });
    let id = app
        .create_id(json!({ "name": "spender", "role": "r", "model": "m", "budget": { "monthly_tokens": 1000 } }))
        .await;
    app.script(
        &id,
        &[call.clone(), call.clone(), call.clone(), call.clone(), call],
    );
    let (s, _) = app.command(&id, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    // Three calls fit (750 used); the fourth would hold 300 more than is
    // left and is refused before the model is called.
    eventually("three calls counted", || async {
        app.get(&id).await["usage"]["tokens"] == 750
    })
    .await;
    let reservations_refused = || async {
        let (_, m) = app.call(Method::GET, "/metrics", None).await;
        m.as_str().is_some_and(|t| {
            t.lines()
                .any(|l| l.starts_with("cadre_reservations_total{granted=\"false\"}"))
        })
    };
    eventually("the fourth reservation refused", reservations_refused).await;
    assert_eq!(app.get(&id).await["usage"]["tokens"], 750);
    // Nothing stopped the agent: 75 % is below its budget.
    assert_eq!(app.get(&id).await["state"], "running");

    // An exact fit reaches 100 %: the agent stops, naming the budget, and
    // cannot start again until the budget rises.
    let full = json!({ "model_call": { "model": "m", "input_tokens": 100, "max_output_tokens": 400, "output_tokens": 400 } });
    let id2 = app
        .create_id(json!({ "name": "filler", "role": "r", "model": "m", "budget": { "monthly_tokens": 1000 } }))
        .await;
    app.script(&id2, &[full.clone(), full.clone(), full]);
    let (s, _) = app.command(&id2, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let v = app.wait_state(&id2, "stopped").await;
    assert_eq!(v["state_reason"], "budget_exceeded");
    assert_eq!(v["usage"]["tokens"], 1000);
    let (s, v) = app.command(&id2, "start").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "budget_exceeded");
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{id2}"),
            Some(json!({ "budget": { "monthly_tokens": 5000 } })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app.command(&id2, "start").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
}

#[tokio::test]
async fn the_kill_switch_stops_agents_refuses_starts_and_is_reversible() {
    let app = spawn_app().await;
    let (_, admin) = add_user(&app, "admin@x.test", "admin").await;
    let a = scripted(&app, "ka", "read_only", &[]).await;
    let b = scripted(&app, "kb", "read_only", &[]).await;
    app.wait_state(&a, "running").await;
    app.wait_state(&b, "running").await;
    // Only an owner pulls it.
    let (s, _) = app
        .call_as(
            Some(&admin),
            Method::POST,
            "/api/v1/halt",
            Some(json!({ "scope": "org" })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // One agent.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/halt",
            Some(json!({ "scope": "agent", "agent_id": a, "reason": "looked odd" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = app.wait_state(&a, "stopped").await;
    assert_eq!(v["state_reason"], "halted (agent kill switch)");
    eventually("the runtime process is gone", || async {
        app.runtime_pid(&a).is_none_or(|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
        })
    })
    .await;
    assert_eq!(app.get(&b).await["state"], "running");
    let (s, v) = app.command(&a, "start").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "halted");
    // The whole organization.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/halt",
            Some(json!({ "scope": "org" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["org"], true);
    app.wait_state(&b, "stopped").await;
    // Visible on the stream.
    eventually("halt events", || async {
        let (_, v) = app
            .call(Method::GET, "/api/v1/activity?kind=halt.on&limit=10", None)
            .await;
        v["items"].as_array().is_some_and(|i| i.len() >= 2)
    })
    .await;
    // Reversible.
    let (s, v) = app
        .call(Method::DELETE, "/api/v1/halt?scope=org", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = app.command(&b, "start").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, v) = app.command(&a, "start").await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "the agent's own switch is still on: {v}"
    );
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/halt?scope=agent&agent_id={a}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app.command(&a, "start").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_state(&a, "running").await;
    // The instance switch is for instance admins; the bootstrap owner is one.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/halt",
            Some(json!({ "scope": "instance", "reason": "drill" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["instance"], true);
    app.wait_state(&a, "stopped").await;
    let (s, _) = app
        .call(Method::DELETE, "/api/v1/halt?scope=instance", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // Bad input.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/halt",
            Some(json!({ "scope": "agent" })),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/halt",
            Some(json!({ "scope": "galaxy" })),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn catalog_profiles_and_policies_are_validated_and_per_org() {
    let app = spawn_app().await;
    let (s, v) = app.call(Method::GET, "/api/v1/tools", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        v["items"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["id"] == "files.write"))
    );
    let (_, v) = app.call(Method::GET, "/api/v1/profiles", None).await;
    let names: Vec<&str> = v["items"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    for p in ["read_only", "support_agent", "developer", "full_access"] {
        assert!(names.contains(&p), "{names:?}");
    }
    // An organization adds a tool and a profile; another organization does not see them.
    put(
        &app,
        "/api/v1/tools/crm.update",
        json!({ "skill": "crm", "risk": "medium", "side_effects": ["writes_data"] }),
    )
    .await;
    let (_, skills) = app.call(Method::GET, "/api/v1/skills", None).await;
    assert!(skills["items"].as_array().is_some_and(|s| {
        s.iter()
            .any(|s| s["id"] == "crm" && s["tools"][0] == "crm.update")
    }));
    // Bad input changes nothing.
    for (path, body) in [
        (
            "/api/v1/tools/Bad Id",
            json!({ "skill": "x", "risk": "low" }),
        ),
        (
            "/api/v1/tools/t",
            json!({ "skill": "x", "risk": "extreme" }),
        ),
        (
            "/api/v1/profiles/p",
            json!({ "rate_limits": { "echo": { "calls": 0, "per_seconds": 1 } } }),
        ),
        (
            "/api/v1/profiles/p",
            json!({ "working_hours": { "timezone": "Mars/Olympus", "start": "09:00", "end": "17:00" } }),
        ),
        ("/api/v1/approval-policies/p", json!({ "levels": [] })),
        (
            "/api/v1/approval-policies/p",
            json!({ "levels": [level(&["viewer"], &[], 60, "deny")] }),
        ),
        (
            "/api/v1/approval-policies/p",
            json!({ "levels": [level(&["admin"], &[], 60, "escalate")] }),
        ),
    ] {
        let (s, v) = app.call(Method::PUT, path, Some(body)).await;
        assert!(
            s == StatusCode::UNPROCESSABLE_ENTITY || s == StatusCode::NOT_FOUND,
            "{path}: {s} {v}"
        );
    }
    let (s, v) = app
        .call(Method::PUT, "/api/v1/profiles/read_only", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = app.call(Method::GET, "/api/v1/profiles/p", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // An agent must name a profile that exists.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": "x", "profile": "nonexistent" })),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // Deleting: gone, then 404.
    let (s, _) = app
        .call(Method::DELETE, "/api/v1/tools/crm.update", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app
        .call(Method::DELETE, "/api/v1/tools/crm.update", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn approvers_are_notified_by_a_signed_retried_webhook() {
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<(String, String, String)>>>;
    let seen: Seen = Arc::default();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let router = {
        let (seen, calls) = (seen.clone(), calls.clone());
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let (seen, calls) = (seen.clone(), calls.clone());
                async move {
                    // The very first delivery fails: it must be retried.
                    if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    let h = |k: &str| {
                        headers
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    if let Ok(mut s) = seen.lock() {
                        s.push((h("x-cadre-event"), h("x-cadre-signature"), body));
                    }
                    StatusCode::NO_CONTENT
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let app = crate::common::spawn_app_with(|c| {
        c.governance.webhook.url = hook.clone();
        c.governance.webhook.secret = "hook-secret".into();
    })
    .await;
    put(
        &app,
        "/api/v1/approval-policies/echo",
        policy(&["echo"], json!([level(&["owner"], &[], 600, "deny")])),
    )
    .await;
    let id = scripted(&app, "hooked", "full_access", &[json!({ "tool": "echo" })]).await;
    let pending = app
        .approvals(&format!("state=pending&agent_id={id}"), 1)
        .await;
    let aid = pending[0]["id"].as_str().expect("id").to_string();
    let (s, _) = decide(
        &app,
        &app.token,
        &aid,
        json!({ "decision": "approve", "comment": "fine" }),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let got = |event: &'static str| {
        let seen = seen.clone();
        move || {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .map(|s| s.iter().any(|(e, _, _)| e == event))
                    .unwrap_or(false)
            }
        }
    };
    eventually(
        "the request notice (after a retry)",
        got("approval.requested"),
    )
    .await;
    eventually("the decision notice", got("approval.approved")).await;
    assert!(calls.load(std::sync::atomic::Ordering::SeqCst) >= 3);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, b"hook-secret");
    for (event, sig, body) in seen.lock().expect("lock").iter() {
        let hex = sig.strip_prefix("sha256=").expect("scheme");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        aws_lc_rs::hmac::verify(&key, body.as_bytes(), &bytes).expect("signature verifies");
        let v: Value = serde_json::from_str(body).expect("json body");
        assert_eq!(v["event"], event.as_str());
        assert_eq!(v["approval"]["approval_id"], aid.as_str());
        if event == "approval.approved" {
            assert_eq!(v["approval"]["comment"], "fine");
        }
    }
    server.abort();
}

#[tokio::test]
async fn a_level_can_need_several_distinct_approvers() {
    let app = spawn_app().await;
    let (_, first) = add_user(&app, "first@x.test", "admin").await;
    let (_, second) = add_user(&app, "second@x.test", "admin").await;
    put(
        &app,
        "/api/v1/approval-policies/two",
        policy(
            &["echo"],
            json!([{ "approvers": { "roles": ["admin"] }, "required": 2, "timeout_seconds": 600 }]),
        ),
    )
    .await;
    let id = scripted(&app, "pair", "full_access", &[json!({ "tool": "echo" })]).await;
    let pending = app
        .approvals(&format!("state=pending&agent_id={id}"), 1)
        .await;
    let aid = pending[0]["id"].as_str().expect("id").to_string();
    let (s, v) = decide(&app, &first, &aid, json!({ "decision": "approve" })).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "pending");
    assert_eq!(v["approvals"], 1);
    assert_eq!(v["required"], 2);
    // The same person twice does not make two approvals.
    let (s, v) = decide(&app, &first, &aid, json!({ "decision": "approve" })).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "already_voted");
    let (s, v) = decide(
        &app,
        &second,
        &aid,
        json!({ "decision": "approve", "comment": "both agree" }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "approved");
    let calls = app.tool_calls(&id, 1).await;
    assert_eq!(calls[0]["status"], "ok", "{calls:?}");
}

#[tokio::test]
async fn an_organizations_time_zone_and_budget_period_are_validated_and_shown() {
    let app = spawn_app().await;
    let (_, org) = app.call(Method::GET, "/api/v1/orgs/current", None).await;
    let org_id = org["id"].as_str().expect("id").to_string();
    assert_eq!(org["timezone"], "UTC");
    assert_eq!(org["budget_period"], "monthly");
    for bad in [
        json!({ "timezone": "Mars/Olympus" }),
        json!({ "budget_period": "hourly" }),
    ] {
        let (s, v) = app
            .call(Method::PATCH, &format!("/api/v1/orgs/{org_id}"), Some(bad))
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    }
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/orgs/{org_id}"),
            Some(json!({ "timezone": "Asia/Tokyo", "budget_period": "daily" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["timezone"], "Asia/Tokyo");
    let (_, org) = app.call(Method::GET, "/api/v1/orgs/current", None).await;
    // The organization's usage is now counted per day, in Tokyo.
    let period = org["usage"]["period"].as_str().expect("period").to_string();
    let tokyo_today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").expect("tz"))
        .date()
        .to_string();
    assert_eq!(period, tokyo_today);
    // An agent's own period follows the organization's time zone.
    let id = app
        .create_id(json!({ "name": "w", "budget": { "monthly_tokens": 10, "period": "weekly" } }))
        .await;
    let v = app.get(&id).await;
    assert_eq!(v["budget"]["period"], "weekly");
    assert!(
        v["usage"]["period"]
            .as_str()
            .is_some_and(|p| p.contains("-W")),
        "{v}"
    );
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": "x", "budget": { "period": "yearly" } })),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}

/// The approval actor is supervised: killed (or panicking) with a call
/// parked, its tenant supervisor starts a new one, which reloads every
/// pending request from the store. The runtime's wait is cut by the crash,
/// it asks again with the same call id, joins the same request, and the
/// decision made after the restart reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_approval_actor_is_restarted_and_the_waiting_runtime_gets_its_answer() {
    let app = spawn_app().await;
    let (_, admin) = add_user(&app, "admin@x.test", "admin").await;
    put(
        &app,
        "/api/v1/approval-policies/writes",
        policy(
            &["files.write"],
            json!([level(&["admin"], &[], 600, "deny")]),
        ),
    )
    .await;
    let id = scripted(
        &app,
        "writer",
        "developer",
        &[json!({ "tool": "files.write", "arguments": { "path": "a.txt", "content": "after the crash" } })],
    )
    .await;
    let pending = app
        .approvals(&format!("state=pending&agent_id={id}"), 1)
        .await;
    let aid = pending[0]["id"].as_str().expect("id").to_string();
    let org = org_id(&app).await;
    for mode in ["kill", "panic"] {
        let (s, v) = app
            .call(
                Method::POST,
                "/api/v1/admin/chaos/kill",
                Some(json!({ "target": "approvals", "id": org, "mode": mode })),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        // The replacement answers and still holds the request.
        eventually("the approval actor is back", || async {
            let (s, v) = app
                .call(Method::GET, &format!("/api/v1/approvals/{aid}"), None)
                .await;
            s == StatusCode::OK && v["state"] == "pending"
        })
        .await;
    }
    // Another organization's approval actor is not ours to break.
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/admin/chaos/kill",
            Some(json!({ "target": "approvals", "id": "00000000-0000-0000-0000-000000000000" })),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Deciding may meet the replacement still loading: retry until it is
    // decided (at most once: a second success would be a double decision).
    let mut decided = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while decided.is_none() {
        let (s, v) = decide(
            &app,
            &admin,
            &aid,
            json!({ "decision": "approve", "comment": "still here" }),
        )
        .await;
        match s {
            StatusCode::OK => decided = Some(v),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(std::time::Instant::now() < deadline, "never decidable: {v}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(decided.expect("decided")["state"], "approved");
    // The runtime, whose wait the crashes cut, asked again and proceeded.
    eventually("the runtime wrote the file", || async {
        app.workspace_file(&id, "a.txt").as_deref() == Some("after the crash")
    })
    .await;
    let calls = app.tool_calls(&id, 1).await;
    assert_eq!(calls[0]["status"], "ok", "{calls:?}");
}

#[tokio::test]
async fn an_owner_sets_their_organizations_settings_but_not_its_plan_or_limits() {
    let app = spawn_app().await;
    let (_, admin) = add_user(&app, "admin@x.test", "admin").await;
    let patch = |who: Option<String>, body: Value| {
        let app = &app;
        async move {
            app.call_as(
                who.as_deref(),
                Method::PATCH,
                "/api/v1/orgs/current",
                Some(body),
            )
            .await
        }
    };
    let before = app.call(Method::GET, "/api/v1/orgs/current", None).await.1;
    // Refused, and nothing changes: an admin (not the owner), a plan or
    // limits (the instance admin's), an unknown zone, a retention too long.
    let (s, v) = patch(Some(admin), json!({ "timezone": "Europe/Berlin" })).await;
    assert_eq!(
        (s, &v["code"]),
        (StatusCode::FORBIDDEN, &json!("forbidden")),
        "{v}"
    );
    for (bad, field) in [
        (json!({ "plan": "enterprise" }), "plan"),
        (json!({ "limits": { "max_agents": 1000 } }), "limits"),
    ] {
        let (s, v) = patch(Some(app.token.clone()), bad).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(field)),
            "{v}"
        );
    }
    for bad in [
        json!({ "timezone": "Mars/Olympus" }),
        json!({ "activity_retention_days": 4000 }),
        json!({}),
    ] {
        let (s, v) = patch(Some(app.token.clone()), bad).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["code"], "invalid", "{v}");
    }
    let after = app.call(Method::GET, "/api/v1/orgs/current", None).await.1;
    assert_eq!(after, before, "refusals change nothing");

    // The owner's change, shown and audited.
    let (s, v) = patch(
        Some(app.token.clone()),
        json!({ "timezone": "Europe/Berlin", "budget_period": "weekly", "activity_retention_days": 30 }),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let org = app.call(Method::GET, "/api/v1/orgs/current", None).await.1;
    assert_eq!(
        (
            &org["timezone"],
            &org["budget_period"],
            &org["activity_retention_days"]
        ),
        (&json!("Europe/Berlin"), &json!("weekly"), &json!(30)),
        "{org}"
    );
    assert_eq!(org["plan"], before["plan"]);
    assert_eq!(org["limits"], before["limits"]);
    let (_, audit) = app
        .call(Method::GET, "/api/v1/audit?action=org.update", None)
        .await;
    assert!(
        audit["items"].as_array().is_some_and(|i| !i.is_empty()),
        "{audit}"
    );
}

/// Who may decide and revoke, end to end on a real request and grant: a
/// viewer never (docs/governance.md), a key only with `approvals:decide`
/// (a plain `agents:write` key neither decides nor revokes), and a refused
/// revoke leaves the grant working.
#[tokio::test]
async fn only_deciders_decide_and_revoke_and_a_refusal_changes_nothing() {
    let app = spawn_app().await;
    put(
        &app,
        "/api/v1/approval-policies/echo",
        policy(
            &["echo"],
            json!([level(&["owner", "admin", "member"], &[], 60, "deny")]),
        ),
    )
    .await;
    let (_, viewer) = add_user(&app, "v@x.test", "viewer").await;
    let key = async |scopes: &[&str]| {
        let (s, k) = app
            .call(
                Method::POST,
                "/api/v1/api-keys",
                Some(json!({ "name": "k", "scopes": scopes })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{k}");
        k["key"].as_str().expect("key").to_string()
    };
    let decide_key = key(&["approvals:decide"]).await;
    let write_key = key(&["agents:write"]).await;
    let id = scripted(
        &app,
        "asker",
        "full_access",
        &[
            json!({ "tool": "echo", "arguments": { "n": 1 } }),
            json!({ "tool": "echo", "arguments": { "n": 1 } }),
        ],
    )
    .await;
    let pending = app
        .approvals(&format!("state=pending&agent_id={id}"), 1)
        .await;
    let aid = pending[0]["id"].as_str().expect("id").to_string();
    let approve =
        json!({ "decision": "approve", "scope": { "type": "same_arguments", "for_seconds": 600 } });
    for (who, token) in [("viewer", &viewer), ("agents:write key", &write_key)] {
        let (s, v) = decide(&app, token, &aid, approve.clone()).await;
        assert_eq!(
            (s, &v["code"]),
            (StatusCode::FORBIDDEN, &json!("forbidden")),
            "{who}: {v}"
        );
    }
    let (_, still) = app
        .call(Method::GET, &format!("/api/v1/approvals/{aid}"), None)
        .await;
    assert_eq!(still["state"], "pending", "{still}");
    let (s, v) = decide(&app, &decide_key, &aid, approve).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "approved", "{v}");
    let grant = v["grant_id"].as_str().expect("grant").to_string();
    // The grant lets the second identical call through.
    let calls = app.tool_calls(&id, 2).await;
    assert_eq!(calls[1]["status"], "ok", "{calls:?}");
    for (who, token) in [("viewer", &viewer), ("agents:write key", &write_key)] {
        let (s, v) = app
            .call_as(
                Some(token),
                Method::DELETE,
                &format!("/api/v1/grants/{grant}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{who}: {v}");
    }
    let (_, g) = app.call(Method::GET, "/api/v1/grants", None).await;
    assert_eq!(g["items"][0]["id"], grant.as_str(), "{g}");
    assert_eq!(
        g["items"][0]["live"], true,
        "a refused revoke changed the grant: {g}"
    );
    let (s, v) = app
        .call_as(
            Some(&decide_key),
            Method::DELETE,
            &format!("/api/v1/grants/{grant}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (_, g) = app.call(Method::GET, "/api/v1/grants", None).await;
    assert_eq!(g["items"][0]["live"], false, "{g}");
}
