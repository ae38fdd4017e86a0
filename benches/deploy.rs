//! Deploy → `running` on the Docker target, against this machine's engine
//! (figures in BENCHMARKS.md).
//!
//! `cargo bench --bench deploy` builds the runtime image from this build's
//! `cadre` binary (`cadre image build`), then per round creates 20 agents
//! with target `docker` and measures, for each, the time from
//! `POST /agents/{id}/deploy` to the agent's state `running` (the runtime in
//! the container has connected and said hello). Agents are deployed one at
//! a time (`sequential`) and all 20 at once (`burst`); medians and p95 over
//! every agent of every round. `-- --test` is the CI smoke run (2 agents).
//!
//! Containers use the host network so that the runtime dials the server on
//! 127.0.0.1. Without an engine the bench fails under
//! `CADRE_REQUIRE_SERVICES=1` and skips otherwise.

#[path = "support/mod.rs"]
mod support;

use cadre::app;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{config, login};

const IMAGE: &str = "cadre-runtime:bench";

async fn agent(client: &reqwest::Client, base: &str, token: &str, id: &str) -> Value {
    client
        .get(format!("{base}/api/v1/agents/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

async fn wait_running(client: &reqwest::Client, base: &str, token: &str, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = agent(client, base, token, id).await;
        match v["state"].as_str() {
            Some("running") => return,
            Some("error") => panic!("agent {id} failed: {v}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "agent {id} not running: {v}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One round: `n` agents deployed one by one, then `n` at once; the
/// deploy → running times in seconds of each.
async fn round(n: usize) -> (Vec<f64>, Vec<f64>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path());
    c.deploy.docker.network = "host".into();
    c.deploy.docker.image = IMAGE.into();
    c.deploy.docker.pull = "never".into();
    c.deploy.docker.stop_grace_ms = 1000;
    let running = app::start(c).await.expect("start");
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let token = login(&client, &base).await;
    let mut all = Vec::new();
    let create = |prefix: &'static str| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move {
            let mut ids = Vec::new();
            for i in 0..n {
                let v: Value = client
                    .post(format!("{base}/api/v1/agents"))
                    .bearer_auth(&token)
                    .json(&json!({
                        "name": format!("{prefix}-{i}"), "role": "bench", "model": "m",
                        "deployment": { "target": "docker" },
                    }))
                    .send()
                    .await
                    .expect("create")
                    .json()
                    .await
                    .expect("json");
                ids.push(v["id"].as_str().expect("id").to_string());
            }
            ids
        }
    };
    let deploy = |id: String| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move {
            let t = Instant::now();
            let r = client
                .post(format!("{base}/api/v1/agents/{id}/deploy"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("deploy");
            assert_eq!(r.status(), 202);
            wait_running(&client, &base, &token, &id).await;
            t.elapsed().as_secs_f64()
        }
    };
    let mut sequential = Vec::new();
    let ids = create("seq").await;
    all.extend(ids.clone());
    for id in ids {
        sequential.push(deploy(id).await);
    }
    let ids = create("burst").await;
    all.extend(ids.clone());
    let tasks: Vec<_> = ids.into_iter().map(|id| tokio::spawn(deploy(id))).collect();
    let mut burst = Vec::new();
    for t in tasks {
        burst.push(t.await.expect("deploy task"));
    }
    // Remove the containers (destroy), so rounds do not pile up.
    for id in &all {
        let _ = client
            .post(format!("{base}/api/v1/agents/{id}/destroy"))
            .bearer_auth(&token)
            .send()
            .await;
    }
    for id in &all {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = agent(&client, &base, &token, id).await;
            if v["state"] == "ready" || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    running.shutdown().await;
    (sequential, burst)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

fn main() {
    cadre::init_tls();
    let test = std::env::args().any(|a| a == "--test");
    let (agents, rounds) = if test { (2, 1) } else { (20, 3) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let cfg = config(std::path::Path::new("/nonexistent")).deploy.docker;
        if let Err(e) = cadre::deploy::docker::connect(&cfg).await {
            if std::env::var("CADRE_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("CADRE_REQUIRE_SERVICES=1 but the Docker engine is unavailable: {e}");
            }
            println!("skipped: no Docker engine ({e})");
            return;
        }
        let t = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cadre"))
            .args(["image", "build", "--tag", IMAGE])
            .output()
            .expect("cadre image build");
        assert!(
            out.status.success(),
            "cadre image build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("cadre image build: {:.1} s", t.elapsed().as_secs_f64());
        let (mut seq, mut burst) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let (s, b) = round(agents).await;
            eprintln!(
                "round {r}: sequential p50 {:.3} s, burst p50 {:.3} s",
                quantile(&s, 0.5),
                quantile(&b, 0.5)
            );
            seq.extend(s);
            burst.extend(b);
        }
        if test {
            println!("smoke run (2 agents): figures below are not measurements; see BENCHMARKS.md");
        }
        println!(
            "docker deploy -> running, {agents} agents one at a time x {rounds} rounds: p50 {:.3} s, p95 {:.3} s (AgentPlane reference: p50 1.74 s, p95 2.73 s)",
            quantile(&seq, 0.5),
            quantile(&seq, 0.95)
        );
        println!(
            "docker deploy -> running, {agents} agents at once x {rounds} rounds: p50 {:.3} s, p95 {:.3} s",
            quantile(&burst, 0.5),
            quantile(&burst, 0.95)
        );
    });
}
