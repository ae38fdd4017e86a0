//! Chaos: kill agent and tenant actors every few milliseconds while API
//! mutations run; afterwards every acknowledged mutation must be in the
//! database and in the actors, and every agent's history must follow the
//! transition table.

use crate::common::*;
use cadre_actors::lifecycle::{State, TRANSITIONS};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RUN_FOR: Duration = Duration::from_secs(4);
const WORKERS: usize = 4;

#[derive(Default)]
struct Ledger {
    /// Agents whose creation was acknowledged.
    created: Vec<String>,
    /// Last acknowledged role per agent, and roles attempted after it without an answer.
    acked_role: HashMap<String, String>,
    maybe_roles: HashMap<String, HashSet<String>>,
    /// Agents whose deletion was acknowledged.
    deleted: HashSet<String>,
    /// Agents whose deletion may have happened.
    maybe_deleted: HashSet<String>,
    acked: usize,
    failed: usize,
}

async fn worker(app: Arc<TestApp>, w: usize, known: Arc<Mutex<Vec<String>>>) -> Ledger {
    let mut ledger = Ledger::default();
    let mut n = 0u64;
    let deadline = Instant::now() + RUN_FOR;
    while Instant::now() < deadline {
        n += 1;
        let live: Vec<String> = ledger
            .created
            .iter()
            .filter(|id| !ledger.deleted.contains(*id) && !ledger.maybe_deleted.contains(*id))
            .cloned()
            .collect();
        if live.is_empty() || n.is_multiple_of(5) {
            let (s, v) = app
                .call(
                    Method::POST,
                    "/api/v1/agents",
                    Some(json!({ "name": format!("w{w}-{n}") })),
                )
                .await;
            if s == StatusCode::CREATED {
                let id = v["id"].as_str().expect("id").to_string();
                known.lock().expect("lock").push(id.clone());
                ledger.created.push(id);
                ledger.acked += 1;
            } else {
                assert_eq!(
                    s,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "only 503 may fail a create under chaos: {v}"
                );
                ledger.failed += 1;
            }
            continue;
        }
        let id = live[(n as usize) % live.len()].clone();
        if n.is_multiple_of(23) {
            let (s, v) = app
                .call(Method::DELETE, &format!("/api/v1/agents/{id}"), None)
                .await;
            if s == StatusCode::NO_CONTENT {
                ledger.deleted.insert(id);
                ledger.acked += 1;
            } else {
                assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{id}: {v}");
                ledger.maybe_deleted.insert(id);
                ledger.failed += 1;
            }
            continue;
        }
        let role = format!("role-{w}-{n}");
        let (s, v) = app
            .call(
                Method::PATCH,
                &format!("/api/v1/agents/{id}"),
                Some(json!({ "role": role })),
            )
            .await;
        if s == StatusCode::OK {
            assert_eq!(v["role"], role);
            ledger.acked_role.insert(id.clone(), role);
            ledger.maybe_roles.remove(&id);
            ledger.acked += 1;
        } else {
            assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{id}: {v}");
            ledger.maybe_roles.entry(id).or_default().insert(role);
            ledger.failed += 1;
        }
    }
    ledger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_lose_no_acknowledged_write() {
    let app = Arc::new(
        spawn_app_with(|c| {
            // Keep restarting however often we kill: this test is about data, not escalation.
            c.supervisor.max_restarts = 1_000_000;
            c.supervisor.backoff_base_ms = 0;
            c.supervisor.backoff_max_ms = 5;
        })
        .await,
    );
    let org = {
        let token = app.token.split('.').nth(1).expect("jwt payload");
        use base64::Engine;
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .expect("b64");
        let claims: serde_json::Value = serde_json::from_slice(&claims).expect("claims");
        claims["org"].as_str().expect("org").to_string()
    };
    let known = Arc::new(Mutex::new(Vec::<String>::new()));
    let killer = {
        let app = app.clone();
        let known = known.clone();
        let org = org.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + RUN_FOR;
            let mut i = 0usize;
            let mut kills = 0usize;
            while Instant::now() < deadline {
                i += 1;
                let body = if i.is_multiple_of(15) {
                    json!({ "target": "tenant", "id": org })
                } else {
                    let ids = known.lock().expect("lock").clone();
                    if ids.is_empty() {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                    let mode = if i.is_multiple_of(2) { "kill" } else { "panic" };
                    json!({ "target": "agent", "id": ids[(i * 7919) % ids.len()], "mode": mode })
                };
                let (s, _) = app
                    .call(Method::POST, "/api/v1/admin/chaos/kill", Some(body))
                    .await;
                if s == StatusCode::ACCEPTED {
                    kills += 1;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            kills
        })
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(worker(app.clone(), w, known.clone())))
        .collect();
    let mut ledgers = Vec::new();
    for w in workers {
        ledgers.push(w.await.expect("worker"));
    }
    let kills = killer.await.expect("killer");
    let acked: usize = ledgers.iter().map(|l| l.acked).sum();
    let failed: usize = ledgers.iter().map(|l| l.failed).sum();
    eprintln!("chaos: {kills} kills, {acked} acknowledged mutations, {failed} refused");
    assert!(kills > 100, "the killer ran ({kills} kills)");
    assert!(acked > 100, "mutations got through ({acked})");

    // Polls by hand rather than with `eventually`, so that a timeout says
    // which check stayed false.
    let deadline = Instant::now() + LIMIT;
    loop {
        let (status, body) = match app.client.get(app.url("/readyz")).send().await {
            Ok(r) => (r.status(), r.text().await.unwrap_or_default()),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        if status == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready {LIMIT:?} after chaos: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for ledger in &ledgers {
        for id in &ledger.created {
            let path = format!("/api/v1/agents/{id}");
            // 503 while an actor is between incarnations; poll until it answers.
            let deadline = Instant::now() + LIMIT;
            let (status, view) = loop {
                let (s, v) = app.call(Method::GET, &path, None).await;
                if s == StatusCode::OK || s == StatusCode::NOT_FOUND {
                    break (s, v);
                }
                if Instant::now() >= deadline {
                    let stored = app.store().load_agent(id).await;
                    panic!(
                        "agent {id} unreachable: {v}; stored: {:?}; deleted: {}, maybe deleted: {}",
                        stored.map(|r| r.map(|r| (r.state, r.epoch))),
                        ledger.deleted.contains(id),
                        ledger.maybe_deleted.contains(id)
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            let stored = app.store().load_agent(id).await.expect("store read");
            if ledger.deleted.contains(id) {
                assert_eq!(
                    status,
                    StatusCode::NOT_FOUND,
                    "acknowledged delete of {id} lost"
                );
                assert!(
                    stored.is_none(),
                    "acknowledged delete of {id} not in the database"
                );
                continue;
            }
            if !ledger.maybe_deleted.contains(id) {
                assert_eq!(
                    status,
                    StatusCode::OK,
                    "acknowledged agent {id} missing from the actors"
                );
                assert!(
                    stored.is_some(),
                    "acknowledged agent {id} missing from the database"
                );
            }
            let Some(stored) = stored else { continue };
            assert_eq!(
                view["role"].as_str(),
                stored.spec.role.as_deref(),
                "actor and database agree on {id}"
            );
            if let Some(acked) = ledger.acked_role.get(id) {
                let role = stored.spec.role.clone().unwrap_or_default();
                let maybe = ledger.maybe_roles.get(id);
                assert!(
                    &role == acked || maybe.is_some_and(|m| m.contains(&role)),
                    "{id}: database has role {role:?}, last acknowledged {acked:?}"
                );
            }
            assert!(State::parse(view["state"].as_str().unwrap_or("")).is_some());
            for h in app.history(id).await {
                let (Some(from), Some(to)) = (h["from"].as_str(), h["to"].as_str()) else {
                    continue;
                };
                let (from, to) = (
                    State::parse(from).expect("state"),
                    State::parse(to).expect("state"),
                );
                assert!(
                    from == to || TRANSITIONS.iter().any(|(f, _, t)| *f == from && *t == to),
                    "{id}: {from} -> {to} is not in the table"
                );
            }
        }
    }
}
