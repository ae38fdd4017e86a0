//! Every gauge docs/metrics.md lists, read from a real `cadre serve`
//! process before and after it is restarted: each is reported, and each
//! holds its value (a gauge says how things are, and a restart changes
//! nothing of that). A separate process, because metrics are process-wide:
//! an app restarted inside the test binary would still show the old values.

use crate::common::{ServerDatabase, test_backend};
use crate::served::{Api, Served};
use cadre::store::backend::Backend;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// The gauges of docs/metrics.md (its table's `gauge` rows).
fn documented_gauges() -> Vec<String> {
    let doc = include_str!("../../docs/metrics.md");
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() > 3 && cells[2] == "gauge").then(|| cells[1].trim_matches('`').to_string())
        })
        .collect()
}

/// The documented gauges that count work in flight (0 when idle).
const TRANSIENT: [&str; 4] = [
    "cadre_mailbox_inflight",
    "cadre_store_write_queue",
    "cadre_activity_queue_rows",
    "cadre_stream_clients",
];

/// Every series of `names` in a Prometheus text body: series → value.
fn series(text: &str, names: &[String]) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            names
                .iter()
                .any(|n| n == name)
                .then(|| (series.to_string(), value.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

#[tokio::test]
async fn every_documented_gauge_is_reported_and_holds_its_value_after_a_restart() {
    let gauges = documented_gauges();
    assert!(gauges.len() >= 10, "{gauges:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let database = match test_backend() {
        Backend::Sqlite => None,
        backend => Some(ServerDatabase::create(backend).await),
    };
    let url = database.as_ref().map(ServerDatabase::url);
    std::fs::create_dir(dir.path().join("scripts")).expect("scripts");
    std::fs::write(
        dir.path().join("cadre.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [auth]\nbootstrap_password = \"gauge-test-password\"\n\
         [deploy.local]\nscript_dir = \"scripts\"\n",
    )
    .expect("config");
    let env: Vec<(&str, &str)> = url
        .as_deref()
        .map(|u| vec![("CADRE_DATABASE_URL", u)])
        .unwrap_or_default();
    let mut server = Served::start_with(dir.path(), &["--config", "cadre.toml"], &env);
    let base = server.base();
    let c = Api::sign_in(&base, "admin@localhost", "gauge-test-password").await;
    let ok = |(s, v): (reqwest::StatusCode, Value)| {
        assert!(s.is_success(), "{s} {v}");
        v
    };
    use reqwest::Method;

    // Something for every gauge to count: an agent that runs and waits on a
    // human for a tool call, an organization budget with a limit.
    ok(c.call(
        Method::PUT,
        "/api/v1/approval-policies/echo",
        Some(&json!({ "tools": ["echo"], "levels": [{ "approvers": { "roles": ["owner"] }, "timeout_seconds": 3600 }] }).to_string()),
    )
    .await);
    let agent = ok(c
        .call(
            Method::POST,
            "/api/v1/agents",
            Some(
                &json!({ "name": "asker", "role": "r", "model": "m", "profile": "full_access" })
                    .to_string(),
            ),
        )
        .await);
    let id = agent["id"].as_str().expect("id").to_string();
    std::fs::write(
        dir.path().join("scripts").join(format!("{id}.jsonl")),
        json!({ "tool": "echo", "arguments": { "n": 1 } }).to_string() + "\n",
    )
    .expect("script");
    ok(
        c.call(Method::POST, &format!("/api/v1/agents/{id}/deploy"), None)
            .await,
    );
    c.wait(
        "/api/v1/approvals?state=pending",
        Duration::from_secs(60),
        |v| v["items"].as_array().is_some_and(|a| a.len() == 1),
    )
    .await;
    let org = ok(c.call(Method::GET, "/api/v1/me", None).await)["org"]["id"]
        .as_str()
        .expect("org")
        .to_string();
    ok(c.call(
        Method::PATCH,
        &format!("/api/v1/orgs/{org}"),
        Some(&json!({ "limits": { "monthly_tokens": 1000 } }).to_string()),
    )
    .await);

    // Queues and calls in flight are 0 when nothing happens: the state to
    // compare is an idle one (a heartbeat may be passing at a scrape).
    let idle = |s: &BTreeMap<String, f64>| {
        s.iter().all(|(k, v)| {
            let name = k.split('{').next().unwrap_or_default();
            !TRANSIENT.contains(&name) || *v == 0.0
        })
    };
    let mut before = series(&c.text("/metrics").await, &gauges);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !idle(&before) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        before = series(&c.text("/metrics").await, &gauges);
    }
    assert!(idle(&before), "never idle: {before:#?}");
    for g in &gauges {
        assert!(
            before
                .keys()
                .any(|s| s.split('{').next() == Some(g.as_str())),
            "{g} is documented but not reported: {before:#?}"
        );
    }
    let pending = format!("cadre_approvals_pending{{org=\"{org}\"}}");
    assert_eq!(before.get(&pending), Some(&1.0), "{before:#?}");

    server.restart();
    let base = server.base();
    let c = Api::sign_in(&base, "admin@localhost", "gauge-test-password").await;
    // The runtime reconnects and asks again, joining its request: then the
    // process is where it was, and so must every gauge be.
    let mut after = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        after = series(&c.text("/metrics").await, &gauges);
        if after == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let differ: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|s| before.get(*s) != after.get(*s))
        .map(|s| format!("{s}: {:?} before, {:?} after", before.get(s), after.get(s)))
        .collect();
    assert!(
        differ.is_empty(),
        "gauges changed by a restart: {differ:#?}"
    );
    drop(server);
    drop(database);
}
