//! `/metrics`: what it reports about agents and organizations, and how it
//! is protected (a token, or a listener of its own).

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn scrape(app: &TestApp, url: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut req = app.client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("scrape");
    (resp.status(), resp.text().await.expect("body"))
}

/// The value of the sample whose name and labels start with `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_agents_by_organization_and_state_and_time_probes() {
    let app = spawn_app().await;
    let (_, org) = app.call(Method::GET, "/api/v1/orgs/current", None).await;
    let org = org["id"].as_str().expect("org").to_string();
    app.create_id(json!({ "name": "idle" })).await;
    let busy = app
        .create_id(json!({ "name": "busy", "role": "r", "model": "gpt-4o" }))
        .await;
    app.command(&busy, "deploy").await;
    app.wait_state(&busy, "running").await;
    let url = app.url("/metrics");
    let series = |state: &str| format!("cadre_agents{{org=\"{org}\",state=\"{state}\"}}");
    eventually("the running agent is counted and probed", || async {
        let (s, text) = scrape(&app, &url, None).await;
        s == StatusCode::OK
            && sample(&text, &series("running")) == Some(1.0)
            && sample(&text, &series("draft")) == Some(1.0)
            && text.contains("cadre_probe_duration_seconds_bucket")
            && sample(&text, &format!("cadre_org_usage_tokens{{org=\"{org}\"}}")) == Some(0.0)
    })
    .await;
    // A state the organization no longer has reads 0, not its last value.
    app.command(&busy, "stop").await;
    app.wait_state(&busy, "stopped").await;
    eventually("the stopped agent moves between the series", || async {
        let (_, text) = scrape(&app, &url, None).await;
        sample(&text, &series("running")) == Some(0.0)
            && sample(&text, &series("stopped")) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn a_metrics_token_is_required_when_configured() {
    let app = spawn_app_with(|c| c.metrics.token = "scrape-secret".into()).await;
    let url = app.url("/metrics");
    for token in [None, Some("wrong"), Some(app.token.as_str())] {
        let (s, body) = scrape(&app, &url, token).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json error");
        assert_eq!(v["code"], "unauthenticated");
    }
    let (s, text) = scrape(&app, &url, Some("scrape-secret")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(text.contains("cadre_http_requests_total"), "{text}");
}

#[tokio::test]
async fn a_separate_metrics_listener_takes_metrics_off_the_api_port() {
    let app = spawn_app_with(|c| c.metrics.listen = "127.0.0.1:0".into()).await;
    let (s, _) = scrape(&app, &app.url("/metrics"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "not on the API's listener");
    let addr = app
        .running
        .as_ref()
        .and_then(|r| r.metrics_addr)
        .expect("a metrics listener");
    let (s, text) = scrape(&app, &format!("http://{addr}/metrics"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(text.contains("cadre_http_requests_total"), "{text}");
    let (s, _) = scrape(&app, &format!("http://{addr}/api/v1/agents"), None).await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "and the API is not on the metrics listener"
    );
}

/// The shipped Grafana dashboard is valid JSON and uses only metrics that
/// `docs/metrics.md` lists (so it cannot drift from what Cadre records).
#[test]
fn the_grafana_dashboard_uses_documented_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/docs/grafana/cadre.json")).expect("dashboard"),
    )
    .expect("valid JSON");
    let documented = std::fs::read_to_string(format!("{root}/docs/metrics.md")).expect("docs");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for p in panels {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            let names: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("cadre_"))
                .collect();
            assert!(!names.is_empty(), "{expr}");
            for n in names {
                let base = n.strip_suffix("_bucket").unwrap_or(n);
                assert!(
                    documented.contains(&format!("`{base}`")),
                    "{base} (panel {}) is not in docs/metrics.md",
                    p["title"]
                );
            }
        }
    }
}
