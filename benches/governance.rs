//! Governance benchmarks (figures in BENCHMARKS.md, "Governance").
//!
//! `cargo bench --bench governance` runs each scenario several times and
//! prints medians; `-- --test` is the CI smoke run (tiny sizes).
//!
//! - engine: permission checks per second on one thread, the shipped
//!   catalog and the `developer` profile with three organization policies,
//!   over a mix of tools (allow, deny, needs approval).
//! - resume: a parked tool call (a real SQLite store, an in-process server)
//!   and the time from an approval decision to the waiting caller holding
//!   the outcome: p50 and p99.
//! - http: pending approvals decided over HTTP by 64 concurrent clients
//!   (reqwest in this process); decisions per second (each persisted before
//!   its answer), and the rate counting until every decision's activity
//!   event and audit copy are written (what a sustained load needs).
//!   `BENCH_C=256` changes the concurrency of http and direct, `BENCH_N`
//!   their decisions per round (20,000).
//! - direct: the same decisions in-process, without HTTP (for the analysis).
//! - wrk: the same decisions over HTTP from `wrk` (an external load
//!   generator, `benches/wrk/decide.lua`) when it is installed; skipped
//!   with a note otherwise.
//!
//! Every scenario parks its calls first and waits until the parking's own
//! feed rows are written, so the timed part does not share the machine
//! with the setup's leftovers.

#[path = "support/mod.rs"]
mod support;

use cadre::app;
use cadre_actors::agent::ToolRequest;
use cadre_actors::client::ToolAnswer;
use cadre_actors::domain::{AgentId, OrgId};
use cadre_actors::governance::engine::{RateState, ToolCall, check};
use cadre_actors::governance::{OrgDocs, PolicyDef, compile};
use serde_json::json;
use std::time::{Duration, Instant};
use support::{config, login, median};

fn engine_checks(n: u64) -> f64 {
    let c = config(std::path::Path::new("/tmp"));
    let catalog = c.governance.catalog().expect("catalog");
    let policy = |tools: &[&str]| -> PolicyDef {
        serde_json::from_value(json!({
            "tools": tools,
            "levels": [{ "approvers": { "roles": ["admin"] }, "timeout_seconds": 60 }]
        }))
        .expect("policy")
    };
    let docs = OrgDocs {
        policies: [
            ("a".to_string(), policy(&["email.send"])),
            ("b".to_string(), policy(&["payments.refund"])),
            ("c".to_string(), policy(&["agent.message"])),
        ]
        .into(),
        ..Default::default()
    };
    let gov = compile(&catalog, docs, &c.governance.default_policy);
    let profile = gov.profiles.get("developer").map(|p| &**p);
    let tools = [
        "files.read",
        "files.write",
        "shell.exec",
        "http.get",
        "echo",
        "files.delete",
        "payments.refund",
        "agent.message",
    ];
    let mut rates = RateState::default();
    let mut allowed = 0u64;
    let started = Instant::now();
    for i in 0..n {
        let call = ToolCall {
            tool: tools[(i % tools.len() as u64) as usize],
            arguments: None,
            estimated_cost_micros: 0,
            now_ms: 1_795_262_400_000,
        };
        if matches!(
            check(&gov, profile, None, &call, &mut rates, || None),
            cadre_actors::governance::Verdict::Allow { .. }
        ) {
            allowed += 1;
        }
    }
    let per_sec = n as f64 / started.elapsed().as_secs_f64();
    assert!(allowed > 0 && allowed < n, "a mix of verdicts");
    per_sec
}

struct Parked {
    running: app::Running,
    org: OrgId,
    agent: AgentId,
    conn: u64,
    base: String,
    token: String,
    /// The frozen real runtime, killed at the end.
    frozen: Option<i32>,
    _dir: tempfile::TempDir,
}

/// An in-process server with one agent whose runtime connection is ours
/// (its real runtime is frozen, not killed: a runtime that exits is
/// replaced at once, and its replacement would take the connection back;
/// probes are off for the run), and a policy that sends `echo` to its owner.
async fn parked_server() -> Parked {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path());
    c.health.interval_ms = 3_600_000;
    c.deploy.local.runtime_bin = env!("CARGO_BIN_EXE_cadre").into();
    let running = app::start(c.clone()).await.expect("start");
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let token = login(&client, &base).await;
    let put = client
        .put(format!("{base}/api/v1/approval-policies/echo"))
        .bearer_auth(&token)
        .json(&json!({ "tools": ["echo"], "levels": [{ "approvers": { "roles": ["owner"] }, "timeout_seconds": 3600 }] }))
        .send()
        .await
        .expect("policy");
    assert!(put.status().is_success());
    let v: serde_json::Value = client
        .post(format!("{base}/api/v1/agents"))
        .bearer_auth(&token)
        .json(&json!({ "name": "bench", "role": "r", "model": "m", "profile": "full_access" }))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let agent = AgentId(v["id"].as_str().expect("id").to_string());
    let org = OrgId(v["org_id"].as_str().expect("org").to_string());
    client
        .post(format!("{base}/api/v1/agents/{}/deploy", agent.0))
        .bearer_auth(&token)
        .send()
        .await
        .expect("deploy");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snap = running.cadre.get_agent(&org, &agent).await.expect("get");
        if snap.state == cadre_actors::lifecycle::State::Running {
            break;
        }
        assert!(Instant::now() < deadline, "agent never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let agent_dir = c.data_dir.join("agents").join(&agent.0);
    let frozen = std::fs::read_to_string(agent_dir.join("runtime.pid"))
        .ok()
        .and_then(|pid| pid.trim().parse::<i32>().ok());
    if let Some(pid) = frozen {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        );
    }
    let rc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(agent_dir.join("runtime.json")).expect("runtime.json"),
    )
    .expect("json");
    let conn = running
        .cadre
        .runtime_hello(&org, &agent, rc["token"].as_str().expect("token"))
        .await
        .expect("hello")
        .conn;
    Parked {
        running,
        org,
        agent,
        conn,
        base,
        token,
        frozen,
        _dir: dir,
    }
}

fn call(i: u64) -> ToolRequest {
    ToolRequest {
        call_id: format!("c{i}"),
        tool: "echo".into(),
        arguments: json!({ "i": i }),
        args_hash: format!("{i:064}"),
        estimated_cost_micros: 0,
    }
}

/// Parked calls: their approval ids and outcome receivers.
type ParkedCalls = Vec<(
    String,
    tokio::sync::oneshot::Receiver<cadre_actors::approval::Outcome>,
)>;

/// Parks `n` calls.
async fn park(p: &Parked, from: u64, n: u64) -> ParkedCalls {
    use futures_util::StreamExt;
    futures_util::stream::iter(from..from + n)
        .map(|i| async move {
            match p
                .running
                .cadre
                .tool_call(&p.org, &p.agent, p.conn, call(i))
                .await
                .expect("tool call")
            {
                ToolAnswer::Waiting { approval_id, rx } => (approval_id, rx),
                other => panic!("expected a parked call, got {other:?}"),
            }
        })
        .buffer_unordered(64)
        .collect()
        .await
}

/// The bench's decider: the owner who signed in.
fn bench_decider() -> cadre_actors::approval::Decider {
    cadre_actors::approval::Decider {
        id: "bench".into(),
        role: "owner".into(),
        who: cadre_actors::domain::Who::user("bench"),
    }
}

/// Approve or deny this call only, without a comment.
fn bench_decision(approve: bool) -> cadre_actors::approval::Decision {
    cadre_actors::approval::Decision {
        approve,
        comment: None,
        scope: cadre_actors::approval::GrantScope::Call,
    }
}

/// Decision → waiting caller resumed, in µs: (p50, p99).
async fn resume_latency(p: &Parked, from: u64, n: u64) -> (f64, f64) {
    let parked = park_settled(p, from, n).await;
    let decider = bench_decider();
    let mut lat = Vec::with_capacity(parked.len());
    for (id, rx) in parked {
        let decision = bench_decision(true);
        let started = Instant::now();
        let waiter = async move {
            let o = rx.await.expect("outcome");
            assert!(o.approved);
            started.elapsed()
        };
        let decide = p
            .running
            .cadre
            .decide(&p.org, &id, decision, decider.clone());
        let (took, decided) = tokio::join!(waiter, decide);
        decided.expect("decide");
        lat.push(took.as_secs_f64() * 1e6);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    (pct(0.5), pct(0.99))
}

/// Pending approvals decided in-process (no HTTP) at concurrency 64.
async fn direct_decisions(p: &Parked, from: u64, n: u64) -> Round {
    let parked = park_settled(p, from, n).await;
    decided_round(p, n, || {
        rate(parked, |id| async move {
            p.running
                .cadre
                .decide(&p.org, &id, bench_decision(true), bench_decider())
                .await
                .is_ok()
        })
    })
    .await
}

/// Where the feed ends now: the id its next rows come after.
async fn feed_end(p: &Parked) -> i64 {
    p.running
        .store
        .tables()
        .last_activity_id()
        .await
        .expect("last activity id")
}

/// Reads the bench organization's feed after `after`, as a stream client
/// would (each poll reads only rows it has not seen), until it has seen `n`
/// rows of each of `kinds`; then waits until the activity queue is written.
/// Answers how long that took.
async fn feed_holds(p: &Parked, mut after: i64, kinds: &[&str], n: u64) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let everything = cadre::store::ActivityFilter::default();
    let mut seen = vec![0u64; kinds.len()];
    while seen.iter().any(|&s| s < n) {
        let rows = p
            .running
            .store
            .tables()
            .activity_after(&p.org.0, &everything, after, 1000)
            .await
            .expect("feed");
        for r in &rows {
            if let Some(i) = kinds.iter().position(|k| *k == r.kind) {
                seen[i] += 1;
            }
        }
        match rows.last() {
            Some(last) => after = last.id,
            None => {
                assert!(
                    Instant::now() < deadline,
                    "the feed never caught up: {seen:?} of {n} each of {kinds:?}"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    assert!(
        p.running.activity.flush(Duration::from_secs(60)).await,
        "the activity queue was not written"
    );
    started.elapsed()
}

/// [`park`], then waits until the parking's own feed rows (each request's
/// event and its audit copy) are written, so that the timed decisions do
/// not share the machine with the setup's leftovers.
async fn park_settled(p: &Parked, from: u64, n: u64) -> ParkedCalls {
    let after = feed_end(p).await;
    let parked = park(p, from, n).await;
    feed_holds(
        p,
        after,
        &["approval.requested", "audit.approval.request"],
        n,
    )
    .await;
    parked
}

/// One timed round of decisions.
struct Round {
    /// Decisions answered per second.
    rate: f64,
    /// Decisions per second counting until the feed holds every decision's
    /// event and audit copy (what a sustained load must keep up with).
    sustained: f64,
    /// How long after the last answer the feed caught up, ms.
    catch_up_ms: f64,
}

/// Times `decide` (which decides `n` approvals and answers decisions/s),
/// then how long until their feed rows are written.
async fn decided_round<F, Fut>(p: &Parked, n: u64, decide: F) -> Round
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let after = feed_end(p).await;
    let rate = decide().await;
    let catch_up = feed_holds(
        p,
        after,
        &["approval.approved", "audit.approval.approve"],
        n,
    )
    .await
    .as_secs_f64();
    let decide_secs = n as f64 / rate;
    Round {
        rate,
        sustained: n as f64 / (decide_secs + catch_up),
        catch_up_ms: catch_up * 1e3,
    }
}

/// A positive count from the environment variable `name`, else `default`.
fn env_count<T: std::str::FromStr + Default + PartialOrd>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|c| *c > T::default())
        .unwrap_or(default)
}

/// Callers in flight for the decision scenarios: `BENCH_C`, else 64.
fn concurrency() -> usize {
    env_count("BENCH_C", 64)
}

/// Runs `decide` on every parked approval, [`concurrency`] at a time: decisions/s.
async fn rate<F, Fut>(parked: ParkedCalls, decide: F) -> f64
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    use futures_util::StreamExt;
    let n = parked.len();
    let started = Instant::now();
    let ok: usize = futures_util::stream::iter(parked)
        .map(|(id, _rx)| decide(id))
        .buffer_unordered(concurrency())
        .fold(0, |a, b| async move { a + usize::from(b) })
        .await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(ok, n, "every decision succeeded");
    n as f64 / secs
}

/// Pending approvals decided over HTTP at concurrency 64.
async fn http_decisions(p: &Parked, from: u64, n: u64) -> Round {
    let parked = park_settled(p, from, n).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("client");
    let (client, base, token) = (&client, &p.base, &p.token);
    decided_round(p, n, || {
        rate(parked, |id| async move {
            client
                .post(format!("{base}/api/v1/approvals/{id}/decide"))
                .bearer_auth(token)
                .json(&json!({ "decision": "approve" }))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
    })
    .await
}

/// Pending approvals decided over HTTP by `wrk` (an external C load
/// generator, so the figure is the server's and not reqwest's), one thread,
/// 64 connections, for `secs` seconds: decisions/s, or `None` when wrk is not
/// installed. `n` must exceed what can be decided in that time.
async fn wrk_decisions(p: &Parked, from: u64, n: u64, secs: u64) -> Option<f64> {
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        return None;
    }
    let parked = park_settled(p, from, n).await;
    let ids = tempfile::NamedTempFile::new().expect("ids file");
    let list: Vec<&str> = parked.iter().map(|(id, _)| id.as_str()).collect();
    std::fs::write(ids.path(), list.join("\n")).expect("write ids");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/wrk/decide.lua");
    let out = tokio::process::Command::new("wrk")
        .args(["-t1", "-c64", &format!("-d{secs}s"), "-s", script, &p.base])
        .env("TOKEN", &p.token)
        .env("THREADS", "1")
        .env("IDS", ids.path())
        .output()
        .await
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    // "12345 requests in 3.00s, ..." and the script's "decided: N, other: M".
    let took: f64 = text
        .lines()
        .find_map(|l| l.split_once(" requests in ").map(|(_, r)| r))
        .and_then(|r| r.split(['s', ',']).next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk said: {text}"));
    let decided: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("decided: "))
        .and_then(|r| r.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk said: {text}"));
    if decided == n {
        println!("  (wrk decided every parked approval: the rate below is a lower bound)");
    }
    // Deny what wrk left pending, so later rounds start from the same state.
    use futures_util::StreamExt;
    futures_util::stream::iter(parked)
        .for_each_concurrent(64, |(id, _rx)| async move {
            let _ = p
                .running
                .cadre
                .decide(&p.org, &id, bench_decision(false), bench_decider())
                .await;
        })
        .await;
    Some(decided as f64 / took)
}

/// Prints a scenario's medians: answered decisions/s, and the rate counting
/// until the feed caught up.
fn report(what: &str, rounds: Vec<Round>, target: &str) {
    let sustained = median(rounds.iter().map(|r| r.sustained).collect());
    let catch_up = median(rounds.iter().map(|r| r.catch_up_ms).collect());
    println!(
        "{what}: median {:.0} per second{target}; counting until every decision's event and audit copy are in the feed: median {sustained:.0} per second (the feed caught up {catch_up:.0} ms after the last answer)",
        median(rounds.into_iter().map(|r| r.rate).collect()),
    );
}

fn main() {
    cadre::init_tls();
    let test = std::env::args().any(|a| a == "--test");
    // `cargo bench --bench governance -- http` runs the scenarios whose name
    // contains a given word (engine, resume, http, direct); none runs all.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let run = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o.as_str()));
    let (rounds, checks, resumes, decisions) = if test {
        (1, 10_000, 50, 200)
    } else {
        // `BENCH_N` changes the decisions per round of http and direct.
        (5, 5_000_000, 2_000, env_count("BENCH_N", 20_000u64))
    };
    if test {
        println!("smoke run (tiny sizes): figures below are not measurements; see BENCHMARKS.md");
    }
    if run("engine") {
        let engine: Vec<f64> = (0..rounds).map(|_| engine_checks(checks)).collect();
        println!(
            "permission checks, one thread: median {:.0} per second (target >= 1000000)",
            median(engine)
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let p = parked_server().await;
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        let mut rates = Vec::new();
        let mut direct = Vec::new();
        let mut wrk = Vec::new();
        for round in 0..rounds as u64 {
            if run("resume") {
                let (p50, p99) = resume_latency(&p, 10_000_000 * round, resumes).await;
                p50s.push(p50);
                p99s.push(p99);
            }
            let from = 10_000_000 * round + 5_000_000;
            if run("http") {
                rates.push(http_decisions(&p, from, decisions).await);
            }
            if run("direct") {
                direct.push(direct_decisions(&p, from + 2_500_000, decisions).await);
            }
            if run("wrk") {
                let (n, secs) = if test { (200, 1) } else { (45_000, 3) };
                if let Some(r) = wrk_decisions(&p, from + 4_000_000, n, secs).await {
                    wrk.push(r);
                }
            }
        }
        if !p50s.is_empty() {
            println!(
                "approval decision -> waiting caller resumed (in-process, SQLite): p50 median {:.0} us, p99 median {:.0} us (target p99 < 5000 us)",
                median(p50s),
                median(p99s)
            );
        }
        if !rates.is_empty() {
            let what = format!("approval decisions over HTTP, c={}", concurrency());
            report(&what, rates, " (target >= 10000)");
        }
        if !direct.is_empty() {
            let what = format!("approval decisions in-process (no HTTP), c={}", concurrency());
            report(&what, direct, "");
        }
        if !wrk.is_empty() {
            println!(
                "approval decisions over HTTP from wrk, c=64: median {:.0} per second (target >= 10000)",
                median(wrk)
            );
        } else if run("wrk") {
            println!("approval decisions from wrk: skipped, wrk is not installed");
        }
        if let Some(pid) = p.frozen {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        p.running.shutdown().await;
    });
}
