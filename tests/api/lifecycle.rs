//! The lifecycle through the real HTTP server and real runtime processes.

use crate::common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.trim_start().chars().next());
    kill(Pid::from_raw(pid), None).is_ok() && !matches!(state, Some('Z') | None)
}

fn states(history: &[Value]) -> Vec<String> {
    history
        .iter()
        .map(|h| h["to"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[tokio::test]
async fn full_lifecycle_with_a_real_runtime() {
    let app = spawn_app().await;
    let agent = app
        .create(json!({ "name": "support", "role": "answers tickets", "model": "gpt-4o" }))
        .await;
    assert_eq!(agent["state"], "draft");
    assert_eq!(agent["deployment"]["target"], "local");
    assert_eq!(agent["health"]["interval_ms"], 300);
    let id = agent["id"].as_str().expect("id").to_string();

    let (s, v) = app.command(&id, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_state(&id, "running").await;
    let pid = app.runtime_pid(&id).expect("pid file");
    assert!(alive(pid), "runtime process {pid} is running");
    assert_eq!(
        states(&app.history(&id).await),
        [
            "draft",
            "configuring",
            "ready",
            "provisioning",
            "deploying",
            "starting",
            "running"
        ]
    );

    let (s, v) = app.command(&id, "stop").await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::ACCEPTED, Some("stopped"))
    );
    eventually("runtime exits after stop", || async { !alive(pid) }).await;

    let (s, _) = app.command(&id, "start").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    app.wait_state(&id, "running").await;

    let (s, _) = app.command(&id, "restart").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let v = app.wait_state(&id, "running").await;
    assert_eq!(v["restart_count"], 1);

    let (s, _) = app.command(&id, "destroy").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let v = app.wait_state(&id, "ready").await;
    assert_eq!(v["deployment"]["ref"], Value::Null);
    assert!(!app.agent_dir(&id).exists(), "deployment directory removed");

    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/agents/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app
        .call(Method::GET, &format!("/api/v1/agents/{id}"), None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    // History outlives the agent.
    let (s, _) = app
        .call(Method::GET, &format!("/api/v1/agents/{id}/history"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn sigkill_of_the_runtime_degrades_then_recovers() {
    let app = spawn_app().await;
    let id = app
        .create_id(json!({ "name": "k", "role": "r", "model": "m" }))
        .await;
    app.command(&id, "deploy").await;
    app.wait_state(&id, "running").await;
    let pid = app.runtime_pid(&id).expect("pid");
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("SIGKILL");
    // The exit is known at once, so recovery starts at once: `degraded`
    // may be too short to be polled, but the history keeps it.
    eventually("the killed runtime is replaced", || async {
        let v = app.get(&id).await;
        v["state"] == "running" && v["restart_count"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let new_pid = app.runtime_pid(&id).expect("new pid");
    assert_ne!(new_pid, pid);
    assert!(alive(new_pid));
    let h = states(&app.history(&id).await);
    let i = h
        .iter()
        .position(|s| s == "degraded")
        .expect("degraded in history");
    assert_eq!(&h[i..i + 3], ["degraded", "starting", "running"]);
    let reasons: Vec<String> = app
        .history(&id)
        .await
        .iter()
        .filter(|t| t["to"] == "degraded")
        .map(|t| t["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("killed by signal 9 (SIGKILL)")),
        "the reason says how the runtime ended: {reasons:?}"
    );
}

#[tokio::test]
async fn deleting_a_stopped_agent_tears_down_then_removes_it() {
    let app = spawn_app().await;
    let id = app
        .create_id(json!({ "name": "d", "role": "r", "model": "m" }))
        .await;
    app.command(&id, "deploy").await;
    app.wait_state(&id, "running").await;
    let (s, v) = app
        .call(Method::DELETE, &format!("/api/v1/agents/{id}"), None)
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "running agents must be stopped first: {v}"
    );
    assert_eq!(v["code"], "illegal_transition");
    app.command(&id, "stop").await;
    let (s, v) = app
        .call(Method::DELETE, &format!("/api/v1/agents/{id}"), None)
        .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::ACCEPTED, Some("destroying"))
    );
    eventually("agent removed", || async {
        app.call(Method::GET, &format!("/api/v1/agents/{id}"), None)
            .await
            .0
            == StatusCode::NOT_FOUND
    })
    .await;
    assert!(!app.agent_dir(&id).exists());
    // The name is free again.
    app.create(json!({ "name": "d" })).await;
}

#[tokio::test]
async fn server_restart_keeps_states_and_never_moves_idle_agents() {
    let mut app = spawn_app().await;
    let draft = app.create_id(json!({ "name": "draft" })).await;
    let stopped = app
        .create_id(json!({ "name": "stopped", "role": "r", "model": "m" }))
        .await;
    let running = app
        .create_id(json!({ "name": "running", "role": "r", "model": "m" }))
        .await;
    app.command(&stopped, "deploy").await;
    app.command(&running, "deploy").await;
    app.wait_state(&stopped, "running").await;
    app.wait_state(&running, "running").await;
    app.command(&stopped, "stop").await;
    let pid = app.runtime_pid(&running).expect("pid");
    let draft_history = app.history(&draft).await.len();
    let stopped_history = app.history(&stopped).await.len();
    let before_running = app.get(&running).await;
    let running_history = app.history(&running).await.len();

    app.restart().await;

    assert_eq!(app.get(&draft).await["state"], "draft");
    assert_eq!(app.get(&stopped).await["state"], "stopped");
    let after = app.wait_state(&running, "running").await;
    assert_eq!(after["restart_count"], before_running["restart_count"]);
    assert_eq!(
        app.runtime_pid(&running),
        Some(pid),
        "re-attached to the same process"
    );
    assert!(alive(pid));
    // Watch for 5 probe intervals: idle agents must not move.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(app.get(&draft).await["state"], "draft");
    assert_eq!(app.get(&stopped).await["state"], "stopped");
    assert_eq!(app.history(&draft).await.len(), draft_history);
    assert_eq!(app.history(&stopped).await.len(), stopped_history);
    assert_eq!(
        app.runtime_pid(&stopped),
        None,
        "a stopped agent's runtime stays down"
    );
    // The running agent's runtime reconnected to the new control plane in
    // time: no probe failed, nothing was restarted.
    let after = app.get(&running).await;
    assert_eq!(after["state"], "running");
    assert_eq!(after["restart_count"], before_running["restart_count"]);
    assert_eq!(app.runtime_pid(&running), Some(pid));
    let history = app.history(&running).await;
    assert_eq!(history.len(), running_history, "{history:?}");
}

#[tokio::test]
async fn list_paginates_with_a_cursor_and_filters_by_state() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(app.create_id(json!({ "name": format!("a{i}") })).await);
    }
    for id in &ids[..3] {
        let (s, v) = app.command(id, "deploy").await;
        assert_eq!(
            (s, v["state"].as_str()),
            (StatusCode::ACCEPTED, Some("configuring"))
        );
        assert_eq!(v["state_reason"], "missing required fields: role, model");
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("/api/v1/agents?limit=3&cursor={c}"),
            None => "/api/v1/agents?limit=3".to_string(),
        };
        let (s, v) = app.call(Method::GET, &q, None).await;
        assert_eq!(s, StatusCode::OK);
        pages += 1;
        for item in v["items"].as_array().expect("items") {
            seen.push(item["id"].as_str().expect("id").to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every agent once, in creation order");
    let (_, v) = app
        .call(Method::GET, "/api/v1/agents?state=configuring", None)
        .await;
    let filtered: Vec<&str> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(
        filtered,
        ids[..3].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let (_, v) = app
        .call(Method::GET, "/api/v1/agents?state=running", None)
        .await;
    assert_eq!(v["items"], json!([]));
    assert_eq!(v["next_cursor"], Value::Null);
}

#[tokio::test]
async fn patch_updates_fields_and_rolls_out_to_a_running_agent() {
    let app = spawn_app().await;
    let id = app
        .create_id(json!({ "name": "p", "role": "r", "model": "m1" }))
        .await;
    let path = format!("/api/v1/agents/{id}");
    let (s, v) = app
        .call(
            Method::PATCH,
            &path,
            Some(json!({ "name": "p2", "budget": { "monthly_cost_usd": 12.5 } })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["budget"]["monthly_cost_usd"].as_f64()),
        (Some("p2"), Some(12.5))
    );
    let (_, v) = app
        .call(Method::PATCH, &path, Some(json!({ "role": null })))
        .await;
    assert_eq!(v["role"], Value::Null);
    assert_eq!(v["missing_fields"], json!(["role"]));
    app.call(Method::PATCH, &path, Some(json!({ "role": "r" })))
        .await;
    app.command(&id, "deploy").await;
    app.wait_state(&id, "running").await;
    let pid = app.runtime_pid(&id).expect("pid");
    let (s, v) = app
        .call(Method::PATCH, &path, Some(json!({ "model": "m2" })))
        .await;
    assert_eq!((s, v["state"].as_str()), (StatusCode::OK, Some("updating")));
    let v = app.wait_state(&id, "running").await;
    assert_eq!(v["model"], "m2");
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(app.agent_dir(&id).join("runtime.json")).expect("runtime.json"),
    )
    .expect("json");
    assert_eq!(config["model"], "m2");
    assert_ne!(
        app.runtime_pid(&id),
        Some(pid),
        "runtime restarted with the new configuration"
    );
}
