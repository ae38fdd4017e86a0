//! Scheduled tasks: cron expressions in a time zone give an agent tasks;
//! schedules survive a restart; disabling and deleting stop them.

use crate::common::{TestApp, add_user, spawn_app};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The tasks a schedule gave `agent`.
async fn scheduled(app: &TestApp, agent: &str, schedule: &str) -> Vec<Value> {
    let (s, v) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{agent}/tasks?limit=200"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|t| t["created_by"] == format!("schedule:{schedule}"))
        .cloned()
        .collect()
}

/// Polls until the schedule has given at least `n` tasks (20 s deadline).
async fn wait_runs(app: &TestApp, agent: &str, schedule: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let tasks = scheduled(app, agent, schedule).await;
        if tasks.len() >= n {
            return tasks;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "schedule {schedule} gave {} tasks, not {n}",
            tasks.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn schedule(app: &TestApp, agent: &str, body: Value) -> Value {
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/agents/{agent}/schedules"),
            Some(body),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

#[tokio::test]
async fn schedules_give_tasks_at_their_times_survive_a_restart_and_stop_when_disabled_or_deleted() {
    let mut app = spawn_app().await;
    // Agents that are not deployed: their tasks wait in the queue, which is
    // what this test counts.
    let a = app
        .create_id(json!({ "name": "reporter", "role": "r", "model": "m" }))
        .await;
    let b = app
        .create_id(json!({ "name": "ticker", "role": "r", "model": "m" }))
        .await;
    let daily = schedule(
        &app,
        &a,
        json!({ "cron": "0 9 * * MON-FRI", "timezone": "Europe/Oslo", "instruction": "write the daily report", "limits": { "max_steps": 5 } }),
    )
    .await;
    assert_eq!(daily["timezone"], "Europe/Oslo");
    assert_eq!(daily["enabled"], true);
    let next = daily["next_run_at"].as_str().expect("next run");
    // 09:00 in Oslo is 08:00 or 07:00 UTC.
    assert!(
        next.contains("T08:00:00") || next.contains("T07:00:00"),
        "{next}"
    );
    // Without a time zone: the organization's (UTC unless changed).
    let every = schedule(
        &app,
        &a,
        json!({ "cron": "* * * * * *", "instruction": "tick a", "input": { "n": 1 } }),
    )
    .await;
    assert_eq!(every["timezone"], "UTC");
    let every_id = every["id"].as_str().expect("id").to_string();
    let ticker = schedule(
        &app,
        &b,
        json!({ "cron": "*/1 * * * * *", "timezone": "Asia/Tokyo", "instruction": "tick b" }),
    )
    .await;
    let ticker_id = ticker["id"].as_str().expect("id").to_string();

    // Every second, a task for the agent, made by the schedule.
    let runs = wait_runs(&app, &a, &every_id, 2).await;
    assert_eq!(runs[0]["instruction"], "tick a");
    assert_eq!(runs[0]["input"]["n"], 1);
    assert_eq!(runs[0]["state"], "queued");
    let (_, got) = app
        .call(Method::GET, &format!("/api/v1/schedules/{every_id}"), None)
        .await;
    assert!(got["last_run_at"].is_string(), "{got}");
    let last = got["last_task_id"].as_str().expect("last task");
    assert!(
        scheduled(&app, &a, &every_id)
            .await
            .iter()
            .any(|t| t["id"] == last)
    );

    // Disabled: no next run, and no more tasks while the other schedule
    // keeps running (its runs are the clock this test waits on).
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/schedules/{every_id}"),
            Some(json!({ "enabled": false })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["next_run_at"].is_null(), "{v}");
    let frozen = scheduled(&app, &a, &every_id).await.len();
    let seen = scheduled(&app, &b, &ticker_id).await.len();
    wait_runs(&app, &b, &ticker_id, seen + 2).await;
    assert_eq!(scheduled(&app, &a, &every_id).await.len(), frozen);

    // A restart: the schedules are still there and still run.
    app.restart().await;
    let seen = scheduled(&app, &b, &ticker_id).await.len();
    wait_runs(&app, &b, &ticker_id, seen + 2).await;
    let (_, list) = app
        .call(Method::GET, &format!("/api/v1/agents/{a}/schedules"), None)
        .await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2), "{list}");

    // Deleted: gone, and its runs stop.
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/schedules/{ticker_id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app
        .call(Method::GET, &format!("/api/v1/schedules/{ticker_id}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/schedules/{ticker_id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The audit log has every change.
    let (_, audit) = app.call(Method::GET, "/api/v1/audit?limit=200", None).await;
    let audit = audit.to_string();
    for action in ["schedule.create", "schedule.update", "schedule.delete"] {
        assert!(audit.contains(action), "{action} missing");
    }
}

#[tokio::test]
async fn bad_schedules_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let a = app
        .create_id(json!({ "name": "reporter", "role": "r", "model": "m" }))
        .await;
    for (body, field) in [
        (json!({ "cron": "61 * * * *", "instruction": "x" }), "cron"),
        (json!({ "cron": "* * *", "instruction": "x" }), "cron"),
        (json!({ "cron": "0 0 30 2 *", "instruction": "x" }), "cron"),
        (
            json!({ "cron": "@daily", "timezone": "Mars/Olympus", "instruction": "x" }),
            "timezone",
        ),
        (
            json!({ "cron": "@daily", "instruction": " " }),
            "instruction",
        ),
        (
            json!({ "cron": "@daily", "instruction": "x", "limits": { "max_steps": 0 } }),
            "limits.max_steps",
        ),
    ] {
        let (s, v) = app
            .call(
                Method::POST,
                &format!("/api/v1/agents/{a}/schedules"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["field"], field, "{body}: {v}");
    }
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/agents/00000000-0000-0000-0000-000000000000/schedules",
            Some(json!({ "cron": "@daily", "instruction": "x" })),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, list) = app
        .call(Method::GET, &format!("/api/v1/agents/{a}/schedules"), None)
        .await;
    assert_eq!(list["items"], json!([]));
    // Viewers read, never write.
    let (_, viewer) = add_user(&app, "viewer@example.com", "viewer").await;
    let (s, _) = app
        .call_as(
            Some(&viewer),
            Method::POST,
            &format!("/api/v1/agents/{a}/schedules"),
            Some(json!({ "cron": "@daily", "instruction": "x" })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .call_as(
            Some(&viewer),
            Method::GET,
            &format!("/api/v1/agents/{a}/schedules"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app
        .call(
            Method::PATCH,
            "/api/v1/schedules/not-an-id",
            Some(json!({ "enabled": false })),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}
