//! Every gauge docs/metrics.md lists, read from a real `cadre serve`
//! process before and after it is restarted: each is reported, and each
//! holds its value (a gauge says how things are, and a restart changes
//! nothing of that). A separate process, because metrics are process-wide:
//! an app restarted inside the test binary would still show the old values.

use crate::common::{ServerDatabase, eventually, test_backend};
use crate::served::Served;
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
            (cells.len() > 3 && cells[2] == "gauge")
                .then(|| cells[1].trim_matches('`').to_string())
        })
        .collect()
}

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

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text")
    }
}

async fn sign_in(base: &str) -> Client {
    cadre::init_tls();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "email": "admin@localhost", "password": "gauge-test-password" }))
        .send()
        .await
        .expect("login");
    assert!(resp.status().is_success(), "{}", resp.status());
    let v: Value = resp.json().await.expect("json");
    let token = v["access_token"].as_str().expect("token").to_string();
    Client {
        http,
        base: base.to_string(),
        token,
    }
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
    let c = sign_in(&base).await;
    use reqwest::Method;

    // Something for every gauge to count: an agent that runs and waits on a
    // human for a tool call, an organization budget with a limit.
    c.call(
        Method::PUT,
        "/api/v1/approval-policies/echo",
        Some(json!({ "tools": ["echo"], "levels": [{ "approvers": { "roles": ["owner"] }, "timeout_seconds": 3600 }] })),
    )
    .await;
    let agent = c
        .call(
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": "asker", "role": "r", "model": "m", "profile": "full_access" })),
        )
        .await;
    let id = agent["id"].as_str().expect("id").to_string();
    std::fs::write(
        dir.path().join("scripts").join(format!("{id}.jsonl")),
        json!({ "tool": "echo", "arguments": { "n": 1 } }).to_string() + "\n",
    )
    .expect("script");
    c.call(Method::POST, &format!("/api/v1/agents/{id}/deploy"), None)
        .await;
    eventually("the agent waits on a human", || async {
        let v = c
            .call(Method::GET, "/api/v1/approvals?state=pending", None)
            .await;
        v["items"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    let org = c.call(Method::GET, "/api/v1/me", None).await["org"]["id"]
        .as_str()
        .expect("org")
        .to_string();
    c.call(
        Method::PATCH,
        &format!("/api/v1/orgs/{org}"),
        Some(json!({ "limits": { "monthly_tokens": 1000 } })),
    )
    .await;

    let before = series(&c.metrics().await, &gauges);
    for g in &gauges {
        assert!(
            before.keys().any(|s| s.split('{').next() == Some(g.as_str())),
            "{g} is documented but not reported: {before:#?}"
        );
    }
    let pending = format!("cadre_approvals_pending{{org=\"{org}\"}}");
    assert_eq!(before.get(&pending), Some(&1.0), "{before:#?}");

    server.restart();
    let base = server.base();
    let c = sign_in(&base).await;
    // The runtime reconnects and asks again, joining its request: then the
    // process is where it was, and so must every gauge be.
    let mut after = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        after = series(&c.metrics().await, &gauges);
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
    assert!(differ.is_empty(), "gauges changed by a restart: {differ:#?}");
    drop(server);
    drop(database);
}
