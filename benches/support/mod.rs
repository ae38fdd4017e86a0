//! What the benchmarks share: the in-process server configuration, login, medians.

#![allow(dead_code)]

use cadre::config::Config;
use serde_json::json;

/// A configuration for an in-process server in `dir`.
pub fn config(dir: &std::path::Path) -> Config {
    let env = [
        ("CADRE_DATA_DIR", dir.display().to_string()),
        ("CADRE_LISTEN", "127.0.0.1:0".to_string()),
        ("CADRE_BOOTSTRAP_PASSWORD", "bench-password".to_string()),
        ("CADRE_CHAOS__ENABLED", "true".to_string()),
        ("CADRE_SUPERVISOR__MAX_RESTARTS", "100000000".to_string()),
    ];
    // `CADRE_*` variables of the bench's own environment apply on top (to
    // compare settings, e.g. `CADRE_ACTIVITY__FLUSH_MS=0`).
    let own = std::env::vars().filter(|(k, _)| k.starts_with("CADRE_"));
    let mut c = Config::load(
        None,
        env.into_iter().map(|(k, v)| (k.to_string(), v)).chain(own),
    )
    .expect("bench config");
    // One client drives thousands of requests per second here.
    c.http.rate_limit_per_client.per_second = 0;
    c.http.rate_limit_per_principal.per_second = 0;
    c
}

/// Signs the bootstrap owner in; returns the access token.
pub async fn login(client: &reqwest::Client, base: &str) -> String {
    let v: serde_json::Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "email": "admin@localhost", "password": "bench-password" }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login json");
    v["access_token"].as_str().expect("token").to_string()
}

/// The median (upper middle) of `v`.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
