//! End-to-end benchmarks of the core runtime (figures in BENCHMARKS.md).
//!
//! `cargo bench --bench api` runs every scenario several times and prints
//! medians; `cargo bench --bench api -- --test` is the CI smoke run (tiny
//! sizes, one round, no targets checked). The load generator runs in this
//! process on the same two cores as the server, so figures are conservative.
//!
//! Scenarios:
//! - create: `POST /api/v1/agents` at concurrency 8, each a durable commit.
//! - list: `GET /api/v1/agents?limit=50` at concurrency 8 with 1,000 agents.
//! - kill: an agent actor is killed; time until its replacement answers.
//! - hydrate: `cadre serve` on a database of N agents; time to /readyz and peak RSS.
//! - ingest: `POST /api/v1/activity` with batches of 1,000 events (c=8) and
//!   with single events (c=64), each answered after its commit
//!   (`cargo bench --bench api -- ingest` runs only this one).
//! - fan-out: 1,000 WebSocket clients of one organization's stream (plus
//!   100 that never read) while events are posted; deliveries per second
//!   and the server process's memory (`cargo bench --bench api -- fanout`).
//! - login storm: `/healthz` latency while 50 logins per second (Argon2id) run
//!   (`cargo bench --bench api -- storm` runs only this one).

#[path = "support/mod.rs"]
mod support;

use cadre::app;
use cadre_actors::domain::{AgentId, OrgId};
use cadre_actors::{ChaosMode, ChaosTarget};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{config, login, median};

const CONCURRENCY: usize = 8;

struct Sizes {
    rounds: usize,
    load_for: Duration,
    list_agents: usize,
    kills: usize,
    hydrate_agents: usize,
}

/// `/healthz` latency (p50, p99 in µs) while 50 logins per second run.
async fn healthz_under_logins(dur: Duration) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = app::start(config(dir.path())).await.expect("start");
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let _ = login(&client, &base).await; // warm the decoy hash and pools
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = {
        let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (c, b) = (client.clone(), base.clone());
                n += 1;
                tokio::spawn(async move {
                    // Alternate right and wrong passwords on two emails so no lock builds up.
                    // Half right, half wrong on ever-new emails: every login
                    // hashes, and no lock builds up to short-cut the work.
                    let (email, pw) = if n.is_multiple_of(2) {
                        ("admin@localhost".to_string(), "bench-password")
                    } else {
                        (format!("nobody{n}@bench"), "wrong")
                    };
                    let _ = c
                        .post(format!("{b}/api/v1/auth/login"))
                        .json(&json!({ "email": email, "password": pw }))
                        .send()
                        .await;
                });
            }
        })
    };
    let mut lat = Vec::new();
    let end = Instant::now() + dur;
    while Instant::now() < end {
        let t = Instant::now();
        let ok = client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = storm.await;
    running.shutdown().await;
    lat.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    (at(0.5), at(0.99))
}

/// Runs `CONCURRENCY` loops of `request` for `dur`; returns successful requests per second.
async fn load<F, Fut>(dur: Duration, request: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    load_at(CONCURRENCY, dur, request).await
}

/// [`load`] with `concurrency` loops.
async fn load_at<F, Fut>(concurrency: usize, dur: Duration, request: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let request = Arc::new(request);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (request, ok, failed, seq) =
                (request.clone(), ok.clone(), failed.clone(), seq.clone());
            tokio::spawn(async move {
                while start.elapsed() < dur {
                    if request(seq.fetch_add(1, Ordering::Relaxed)).await {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("load task");
    }
    let failed = failed.load(Ordering::Relaxed);
    assert_eq!(failed, 0, "{failed} requests failed under load");
    ok.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn create_and_list(sizes: &Sizes) -> (Vec<f64>, Vec<f64>) {
    let mut creates = Vec::new();
    let mut lists = Vec::new();
    for round in 0..sizes.rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = app::start(config(dir.path())).await.expect("start");
        let base = format!("http://{}", running.addr);
        let client = reqwest::Client::new();
        let token = Arc::new(login(&client, &base).await);

        let (c, b, t) = (client.clone(), base.clone(), token.clone());
        let create = load(sizes.load_for, move |n| {
            let (c, b, t) = (c.clone(), b.clone(), t.clone());
            async move {
                c.post(format!("{b}/api/v1/agents"))
                    .bearer_auth(&*t)
                    .json(&json!({ "name": format!("agent-{n}"), "role": "bench", "model": "gpt-4o" }))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 201)
            }
        })
        .await;
        creates.push(create);

        // Bring the organization to exactly `list_agents` agents for the list run.
        let fresh = tempfile::tempdir().expect("tempdir");
        running.shutdown().await;
        drop(dir);
        let running = app::start(config(fresh.path())).await.expect("start");
        let base = format!("http://{}", running.addr);
        let token = Arc::new(login(&client, &base).await);
        for i in 0..sizes.list_agents {
            let r = client
                .post(format!("{base}/api/v1/agents"))
                .bearer_auth(&*token)
                .json(&json!({ "name": format!("l-{i}") }))
                .send()
                .await
                .expect("create");
            assert_eq!(r.status(), 201);
        }
        let (c, b, t) = (client.clone(), base.clone(), token.clone());
        let list = load(sizes.load_for, move |_| {
            let (c, b, t) = (c.clone(), b.clone(), t.clone());
            async move {
                match c
                    .get(format!("{b}/api/v1/agents?limit=50"))
                    .bearer_auth(&*t)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => r.bytes().await.is_ok_and(|b| b.len() > 1000),
                    _ => false,
                }
            }
        })
        .await;
        lists.push(list);
        running.shutdown().await;
        eprintln!("round {round}: create {create:.0} req/s, list {list:.0} req/s");
    }
    (creates, lists)
}

async fn kill_replacement(sizes: &Sizes) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = app::start(config(dir.path())).await.expect("start");
    let org: OrgId = running.store.store().list_orgs().await.expect("orgs")[0].clone();
    let cadre = running.cadre.clone();
    let who = cadre_actors::domain::Who::system();
    // One kill per agent: a second kill inside the supervisor window meets the
    // crash-loop back-off by design, which is not what this measures.
    // The first kills after a burst of creates meet a cold page cache and the
    // WAL checkpoint of those inserts: warm up on separate agents, unmeasured.
    let warmup = sizes.kills / 10;
    let mut ids: Vec<AgentId> = Vec::new();
    for i in 0..sizes.kills + warmup {
        let spec = cadre_actors::domain::AgentSpec {
            name: format!("k-{i}"),
            role: None,
            model: None,
            target: Default::default(),
            health: Default::default(),
            budget: Default::default(),
            profile: None,
            runtime: Default::default(),
            job: Default::default(),
        };
        ids.push(
            cadre
                .create_agent(&org, spec, who.clone())
                .await
                .expect("create")
                .view()
                .id
                .clone(),
        );
    }
    let registry = cadre.ctx().registry.clone();
    let mut samples = Vec::with_capacity(sizes.kills);
    for (i, id) in ids.iter().enumerate() {
        let old = registry.agent(&org, id).expect("registered").actor.get_id();
        cadre
            .chaos(ChaosTarget::Agent, id.as_str(), ChaosMode::Kill)
            .expect("kill");
        let t = Instant::now();
        loop {
            // Only an answer from the replacement counts.
            let replaced = registry
                .agent(&org, id)
                .is_some_and(|h| h.actor.get_id() != old);
            if replaced && cadre.get_agent(&org, id).await.is_ok() {
                break;
            }
            tokio::task::yield_now().await;
        }
        if i >= warmup {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    running.shutdown().await;
    samples.sort_by(|a, b| a.total_cmp(b));
    let p = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    (p(0.5), p(0.99))
}

/// Builds a database with `n` agents (mixed idle states) and measures a real
/// `cadre serve` process hydrating it.
async fn hydrate(n: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path());
    // Bootstrap the org and owner, then bulk-insert agents in one transaction.
    app::start(cfg.clone())
        .await
        .expect("start")
        .shutdown()
        .await;
    let url = cfg.database_url();
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .expect("connect");
    let org: String = sqlx::query_scalar("SELECT id FROM orgs")
        .fetch_one(&mut conn)
        .await
        .expect("org");
    let mut tx = sqlx::Connection::begin(&mut conn).await.expect("tx");
    let states = ["draft", "stopped", "ready", "error", "configuring"];
    for i in 0..n {
        sqlx::query(
            "INSERT INTO agents (id, org_id, name, role, model, target, state, usage_period, usage_tokens, epoch, created_at, updated_at) \
             VALUES (?, ?, ?, 'bench', 'gpt-4o', 'local', ?, '2026-11', ?, 1, 0, 0)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&org)
        .bind(format!("h-{i}"))
        .bind(states[i % states.len()])
        .bind(i as i64)
        .execute(&mut *tx)
        .await
        .expect("insert");
    }
    tx.commit().await.expect("commit");
    drop(conn);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let start = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cadre"))
        .arg("serve")
        .env("CADRE_DATA_DIR", dir.path())
        .env("CADRE_LISTEN", format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn cadre serve");
    let client = reqwest::Client::new();
    loop {
        let ready = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "server never became ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let hwm_kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let _ = child.kill();
    let _ = child.wait();
    (secs, hwm_kib / 1024.0)
}

/// A `cadre serve` process on a fresh data dir, without rate limits.
struct Server {
    child: std::process::Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cadre"))
            .arg("serve")
            .env("CADRE_DATA_DIR", dir.path())
            .env("CADRE_LISTEN", format!("127.0.0.1:{port}"))
            .env("CADRE_BOOTSTRAP_PASSWORD", "bench-password")
            .env("CADRE_HTTP__RATE_LIMIT_PER_CLIENT__PER_SECOND", "0")
            .env("CADRE_HTTP__RATE_LIMIT_PER_PRINCIPAL__PER_SECOND", "0")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn cadre serve");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let start = Instant::now();
        while !client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "server never ready"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Server {
            child,
            base,
            _dir: dir,
        }
    }

    /// (VmRSS, VmHWM) of the server process, MiB.
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (kib("VmRSS:"), kib("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one fan-out run measured.
struct FanOut {
    deliveries_per_sec: f64,
    rss_before: f64,
    rss_after: f64,
    peak: f64,
}

/// `readers` WebSocket clients read the organization's stream and `stalled`
/// ones never read, while `events` are posted in batches of 100; done when
/// every reader has seen the last event (live, or after a `resync`).
async fn fan_out(readers: usize, stalled: usize, events: usize) -> FanOut {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let server = Server::start().await;
    let client = reqwest::Client::new();
    let token = login(&client, &server.base).await;
    let agent: serde_json::Value = client
        .post(format!("{}/api/v1/agents", server.base))
        .bearer_auth(&token)
        .json(&json!({ "name": "fan" }))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("agent");
    let agent = agent["id"].as_str().expect("id").to_string();
    let url = format!(
        "{}/api/v1/stream?kind=step",
        server.base.replace("http", "ws")
    );
    let (target_tx, target) = tokio::sync::watch::channel(i64::MAX);
    let mut held = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..readers + stalled {
        let mut req = url.as_str().into_client_request().expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        if i >= readers {
            held.push(ws);
            continue;
        }
        let mut target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut last = 0i64;
            // Event ids increase: the highest seen tells how far it got.
            while last < *target.borrow_and_update() {
                tokio::select! {
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(t))) => {
                            if let Some((_, rest)) = t.as_str().split_once("\"id\":") {
                                let digits: String =
                                    rest.chars().take_while(char::is_ascii_digit).collect();
                                last = last.max(digits.parse().unwrap_or(0));
                            }
                        }
                        Some(Ok(_)) => {}
                        other => panic!("stream ended: {other:?}"),
                    },
                    _ = target.changed() => {}
                }
            }
        }));
    }
    let (rss_before, _) = server.memory();
    let start = Instant::now();
    let mut last_id = 0;
    for b in 0..events / 100 {
        let batch: Vec<_> = (0..100)
            .map(|i| json!({ "agent_id": agent, "kind": "step", "payload": { "n": b * 100 + i, "text": "fan-out" } }))
            .collect();
        let v: serde_json::Value = client
            .post(format!("{}/api/v1/activity", server.base))
            .bearer_auth(&token)
            .json(&json!({ "events": batch }))
            .send()
            .await
            .expect("post")
            .json()
            .await
            .expect("ack");
        last_id = v["first_id"].as_i64().expect("first_id") + 99;
    }
    target_tx.send(last_id).expect("readers listen");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(300), t)
            .await
            .expect("every reader sees the last event")
            .expect("reader");
    }
    let secs = start.elapsed().as_secs_f64();
    let (rss_after, peak) = server.memory();
    drop(held);
    FanOut {
        deliveries_per_sec: (readers * (events / 100) * 100) as f64 / secs,
        rss_before,
        rss_after,
        peak,
    }
}

/// Durable activity ingest: events per second from batches of `BATCH`
/// (half tool calls, half messages) at concurrency 8, and single-event
/// `POST`s per second at concurrency 64 (each answered only after its
/// commit).
async fn ingest(sizes: &Sizes) -> (Vec<f64>, Vec<f64>) {
    const BATCH: usize = 1000;
    let mut batches = Vec::new();
    let mut singles = Vec::new();
    for _ in 0..sizes.rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let running = app::start(config(dir.path())).await.expect("start");
        let base = format!("http://{}", running.addr);
        let client = reqwest::Client::new();
        let token = login(&client, &base).await;
        let agent: serde_json::Value = client
            .post(format!("{base}/api/v1/agents"))
            .bearer_auth(&token)
            .json(&json!({ "name": "ingest" }))
            .send()
            .await
            .expect("create agent")
            .json()
            .await
            .expect("agent json");
        let agent = agent["id"].as_str().expect("agent id").to_string();
        // What runtimes send most: tool calls (a row in activity and one in
        // tool_calls, arguments redacted) and conversation messages.
        let events: Vec<_> = (0..BATCH)
            .map(|i| {
                if i % 2 == 0 {
                    json!({ "agent_id": agent, "kind": "tool_call", "payload": {
                        "tool_id": "web.search", "call_id": format!("c-{i}"), "status": "ok",
                        "arguments": { "q": "quarterly revenue by region", "api_key": "k-123" },
                        "result_summary": "10 results", "duration_ms": 120, "tokens": 40, "cost_usd": 0.0004 } })
                } else {
                    json!({ "agent_id": agent, "kind": "message", "payload": {
                        "conversation_id": format!("conv-{}", i % 10), "role": "assistant",
                        "content": "Revenue grew 12% in EMEA.", "tokens": 20 } })
                }
            })
            .collect();
        let body = bytes::Bytes::from(json!({ "events": events }).to_string());
        let post = {
            let (client, url, token) = (
                client.clone(),
                format!("{base}/api/v1/activity"),
                token.clone(),
            );
            move |body: bytes::Bytes| {
                let req = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body);
                async move { matches!(req.send().await, Ok(r) if r.status().is_success()) }
            }
        };
        let p = post.clone();
        let rps = load(sizes.load_for, move |_| p(body.clone())).await;
        batches.push(rps * BATCH as f64);
        let one = bytes::Bytes::from(
            json!({ "events": [{ "agent_id": agent, "kind": "step", "payload": { "text": "hello" } }] })
                .to_string(),
        );
        if !std::env::args().any(|a| a == "batches") {
            singles.push(load_at(64, sizes.load_for, move |_| post(one.clone())).await);
        }
        running.shutdown().await;
    }
    (batches, singles)
}

fn main() {
    cadre::init_tls();
    let test = std::env::args().any(|a| a == "--test");
    let sizes = if test {
        Sizes {
            rounds: 1,
            load_for: Duration::from_millis(200),
            list_agents: 60,
            kills: 50,
            hydrate_agents: 1000,
        }
    } else {
        Sizes {
            // `rounds=N` on the command line for quicker comparisons.
            rounds: std::env::args()
                .find_map(|a| a.strip_prefix("rounds=").and_then(|n| n.parse().ok()))
                .unwrap_or(5),
            load_for: Duration::from_secs(3),
            list_agents: 1000,
            kills: 2000,
            hydrate_agents: 100_000,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if test {
        println!("smoke run (tiny sizes): figures below are not measurements; see BENCHMARKS.md");
    }
    let only_ingest = std::env::args().any(|a| a == "ingest" || a == "batches");
    let only_fanout = std::env::args().any(|a| a == "fanout");
    let only_storm = std::env::args().any(|a| a == "storm");
    rt.block_on(async {
        let (readers, stalled, events) = if test { (20, 5, 500) } else { (1000, 100, 10_000) };
        let mut runs = Vec::new();
        for _ in 0..if test { 1 } else if only_ingest || only_storm { 0 } else { 3 } {
            runs.push(fan_out(readers, stalled, events).await);
        }
        if !runs.is_empty() {
        println!(
            "stream fan-out, {readers} readers + {stalled} stalled clients, {events} events: \
             median {:.0} deliveries/s; server RSS median {:.0} MiB before, {:.0} MiB after, peak {:.0} MiB",
            median(runs.iter().map(|r| r.deliveries_per_sec).collect()),
            median(runs.iter().map(|r| r.rss_before).collect()),
            median(runs.iter().map(|r| r.rss_after).collect()),
            median(runs.iter().map(|r| r.peak).collect()),
        );
        }
        if only_fanout {
            return;
        }
        let (batches, singles) = ingest(&sizes).await;
        println!(
            "activity ingest, batches of 1000, c={CONCURRENCY}: median {:.0} events/s (target >= 100000)",
            median(batches)
        );
        if !singles.is_empty() {
            println!(
                "activity single-event POST, c=64: median {:.0} req/s (target >= 10000)",
                median(singles)
            );
        }
        if only_ingest {
            return;
        }
        let mut storms = Vec::new();
        for _ in 0..sizes.rounds.min(3) {
            storms.push(healthz_under_logins(sizes.load_for * 2).await);
        }
        println!(
            "/healthz while 50 logins/s run: p50 median {:.0} us, p99 median {:.0} us (target p99 < 5000 us)",
            median(storms.iter().map(|s| s.0).collect()),
            median(storms.iter().map(|s| s.1).collect())
        );
        if only_storm {
            return;
        }
        let (creates, lists) = create_and_list(&sizes).await;
        let (p50, p99) = kill_replacement(&sizes).await;
        let mut hydrations = Vec::new();
        let mut rss = Vec::new();
        for _ in 0..if test { 1 } else { 3 } {
            let (s, mib) = hydrate(sizes.hydrate_agents).await;
            eprintln!("hydrate {}: {s:.2} s, peak RSS {mib:.0} MiB", sizes.hydrate_agents);
            hydrations.push(s);
            rss.push(mib);
        }
        println!("create agent (durable), c={CONCURRENCY}: median {:.0} req/s (target >= 5000)", median(creates));
        println!("list page of 50 at {} agents, c={CONCURRENCY}: median {:.0} req/s (target >= 20000)", sizes.list_agents, median(lists));
        println!("actor killed -> replacement answers: p50 {p50:.0} us, p99 {p99:.0} us (target p99 < 1000 us)");
        println!(
            "hydrate {} agents: median {:.2} s (target < 3 s), peak RSS median {:.0} MiB (target < 1229 MiB)",
            sizes.hydrate_agents,
            median(hydrations),
            median(rss)
        );
    });
}
