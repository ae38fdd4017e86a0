//! Cadre served on a database server that goes away under load and comes
//! back: `/readyz` says so while it is gone, every acknowledged write is
//! stored once, and service resumes without a restart.

use crate::common::*;
use crate::support;
use cadre::store::backend::Backend;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// PostgreSQL refuses new connections to the app's database and ends the
/// open ones (`ALLOW_CONNECTIONS false`, `pg_terminate_backend`) while
/// four clients post activity and create agents; then it lets them in
/// again. The server process stays up, so this is the outage a failover or
/// a network cut gives: every connection lost at once, none possible for a
/// while.
#[tokio::test]
async fn a_lost_postgres_shows_in_readyz_and_service_resumes_without_a_restart() {
    if support::server(
        "CADRE_TEST_POSTGRES_URL",
        support::POSTGRES_URL,
        Backend::Postgres,
    )
    .await
    .is_none()
    {
        return;
    }
    let app = spawn_app_on(Backend::Postgres, |c| {
        c.activity.retry_max_ms = 200;
    })
    .await;
    let agent = app.create_id(json!({ "name": "steady" })).await;
    let org = org_id(&app).await;
    let (s, v) = app.call(Method::GET, "/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for client in 0..4 {
        let (http, url, token) = (
            app.client.clone(),
            app.url("/api/v1/activity"),
            app.token.clone(),
        );
        let (stop, acked, agent) = (stop.clone(), acked.clone(), agent.clone());
        load.push(tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Acquire) {
                let events: Vec<_> = (0..10)
                    .map(|i| json!({ "agent_id": agent, "kind": "load", "payload": { "client": client, "round": round, "i": i } }))
                    .collect();
                let resp = http
                    .post(&url)
                    .bearer_auth(&token)
                    .timeout(std::time::Duration::from_secs(120))
                    .json(&json!({ "events": events }))
                    .send()
                    .await
                    .expect("post");
                // Ingest waits for the commit, however long the outage.
                assert_eq!(resp.status(), StatusCode::OK, "ingest answered before it was stored");
                acked.fetch_add(10, Ordering::AcqRel);
                round += 1;
            }
        }));
    }
    eventually("load is flowing", || async {
        acked.load(Ordering::Acquire) >= 200
    })
    .await;
    let db = app.database().expect("a server database");
    db.admin("ALTER DATABASE {db} ALLOW_CONNECTIONS false")
        .await;
    db.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()")
        .await;
    eventually("readyz reports the lost database", || async {
        let (s, v) = app.call(Method::GET, "/readyz", None).await;
        s == StatusCode::SERVICE_UNAVAILABLE && v["checks"]["store"] == false
    })
    .await;
    // A write that needs the database now gets a clear answer, not a hang.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": "during", "role": "r", "model": "gpt-4o" })),
        )
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
    let during = acked.load(Ordering::Acquire);
    db.admin("ALTER DATABASE {db} ALLOW_CONNECTIONS true").await;
    eventually("readyz recovers", || async {
        app.call(Method::GET, "/readyz", None).await.0 == StatusCode::OK
    })
    .await;
    eventually("ingest goes on", || async {
        acked.load(Ordering::Acquire) >= during + 200
    })
    .await;
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": "after", "role": "r", "model": "gpt-4o" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    stop.store(true, Ordering::Release);
    for l in load {
        l.await.expect("load client");
    }
    let stored = app
        .store()
        .tables()
        .activity_count(&org, Some("load"))
        .await
        .expect("count");
    assert_eq!(
        stored as u64,
        acked.load(Ordering::Acquire),
        "every acknowledged event stored, once"
    );
}
