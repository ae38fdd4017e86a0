//! What a new user meets first, done literally: `cadre serve` from an
//! empty directory with no `CADRE_*` variables (data in the default relative
//! `./data`), the README's login, create and deploy, and the agent reaching
//! `running`; a runtime that crashes at once, noticed when it exits and
//! reaped; and the modes of everything Cadre writes.

use crate::common::test_backend;
use crate::served::Served;
use cadre::store::backend::Backend;
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The README's curl flow, as HTTP calls: sign in, create the README's
/// agent, deploy it. Returns the token and the agent's id.
async fn readme_flow(client: &reqwest::Client, base: &str, password: &str) -> (String, String) {
    let login: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .header("content-type", "application/json")
        .body(json!({ "email": "admin@localhost", "password": password }).to_string())
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login json");
    let token = login["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token: {login}"))
        .to_string();
    let created: Value = client
        .post(format!("{base}/api/v1/agents"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(r#"{"name":"support","role":"answers tickets","model":"gpt-4o","budget":{"monthly_cost_usd":50}}"#)
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("create json");
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {created}"))
        .to_string();
    let deploy = client
        .post(format!("{base}/api/v1/agents/{id}/deploy"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("deploy");
    assert_eq!(deploy.status(), reqwest::StatusCode::ACCEPTED);
    (token, id)
}

async fn agent(client: &reqwest::Client, base: &str, token: &str, id: &str) -> Value {
    client
        .get(format!("{base}/api/v1/agents/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("get agent")
        .json()
        .await
        .expect("agent json")
}

/// Polls the agent until `done` holds for it, or fails with its last view.
async fn wait_agent(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = agent(client, base, token, id).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every directory under `root` is 0700 and every file 0600.
fn assert_private_tree(root: &Path) {
    let mut seen = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("metadata");
        if meta.is_dir() {
            assert_eq!(mode(&p), 0o700, "{} is not 0700", p.display());
            stack.extend(std::fs::read_dir(&p).expect("read_dir").flatten().map(|e| e.path()));
        } else if meta.is_file() {
            assert_eq!(mode(&p), 0o600, "{} is not 0600", p.display());
        }
        seen += 1;
    }
    assert!(seen > 1, "{} is empty", root.display());
}

/// The README, literally: an empty directory, `cadre serve` (port 8080, data
/// in `./data`), the password it printed, login, create, deploy, `running`.
/// Then what it wrote is its owner's only, and so is an export.
#[tokio::test]
async fn the_readme_flow_from_an_empty_directory_reaches_running() {
    if test_backend() != Backend::Sqlite {
        return; // The README's first run is the embedded SQLite one.
    }
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        std::net::TcpListener::bind("127.0.0.1:8080").is_ok(),
        "port 8080 is taken: the README's flow needs it"
    );
    let mut server = Served::start(dir.path(), &[]);
    let password = server.generated_password();
    server.wait_line("listening on http://127.0.0.1:8080");
    // No model key in this shell: said at start, naming the variable.
    let warned = server.wait_line("llm.api_key_env names OPENAI_API_KEY");
    assert!(warned.contains("no_model_provider"), "{warned}");
    cadre::init_tls();
    let client = reqwest::Client::new();
    let base = "http://localhost:8080";
    let (token, id) = readme_flow(&client, base, &password).await;
    let v = wait_agent(&client, base, &token, &id, Duration::from_secs(60), |v| {
        v["state"] == "running"
    })
    .await;
    assert_eq!(v["state_reason"], Value::Null, "{v}");
    // The runtime was handed absolute paths and runs in its own folder.
    let agent_dir = dir.path().join("data/agents").join(&id);
    let runtime: Value = serde_json::from_slice(
        &std::fs::read(agent_dir.join("runtime.json")).expect("runtime.json"),
    )
    .expect("runtime json");
    assert!(runtime["connect_url"].as_str().is_some(), "{runtime}");

    // Everything under ./data is the owner's only: the database and its
    // WAL and SHM, the keys, the search index, the agent's files.
    let data = dir.path().join("data");
    for f in ["cadre.db", "cadre.db-wal", "cadre.db-shm", "jwt_secret", "secrets.key"] {
        assert!(data.join(f).exists(), "{f} missing");
    }
    assert_private_tree(&data);

    // An export, as the README says to make one, is private too.
    let out = Command::new(env!("CARGO_BIN_EXE_cadre"))
        .args(["export", "--out", "backup"])
        .current_dir(dir.path())
        .env_remove("CADRE_DATA_DIR")
        .env_remove("CADRE_DATABASE_URL")
        .output()
        .expect("cadre export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_private_tree(&dir.path().join("backup"));

    // Stopped through the API, the runtime exits and is reaped.
    let stop = client
        .post(format!("{base}/api/v1/agents/{id}/stop"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("stop");
    assert_eq!(stop.status(), reqwest::StatusCode::ACCEPTED);
    crate::common::eventually("the stopped runtime is gone, not a zombie", || async {
        server.children().is_empty()
    })
    .await;
}

/// A runtime that exits at once: the agent says why (exit status, what it
/// printed) as soon as it exits, long before the start timeout, it is
/// recovered, and no exited runtime is left unreaped.
#[tokio::test]
async fn a_runtime_that_crashes_at_once_is_noticed_with_its_reason_and_reaped() {
    if test_backend() != Backend::Sqlite {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("crash.sh"),
        "#!/bin/sh\necho \"runtime: cannot open ./nowhere.json\" >&2\nexit 3\n",
    )
    .expect("script");
    std::fs::set_permissions(
        dir.path().join("crash.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    // The shipped defaults (a 60 s start timeout, probes 30 s apart), but a
    // free port and the crashing runtime; relative paths, as a user writes.
    std::fs::write(
        dir.path().join("cadre.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[deploy.local]\nruntime_bin = \"./crash.sh\"\n",
    )
    .expect("config");
    let mut server = Served::start(dir.path(), &["--config", "cadre.toml"]);
    let password = server.generated_password();
    let base = server.base();
    cadre::init_tls();
    let client = reqwest::Client::new();
    let deployed = Instant::now();
    let (token, id) = readme_flow(&client, &base, &password).await;
    let v = wait_agent(&client, &base, &token, &id, Duration::from_secs(60), |v| {
        v["state"] == "degraded"
    })
    .await;
    assert!(
        deployed.elapsed() < Duration::from_secs(30),
        "noticed after {:?}, not when the runtime exited",
        deployed.elapsed()
    );
    let reason = v["state_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("exited with status 3"), "{v}");
    assert!(reason.contains("cannot open ./nowhere.json"), "{v}");
    // Recovered at once, not after five failed probes 30 s apart.
    wait_agent(&client, &base, &token, &id, Duration::from_secs(60), |v| {
        v["restart_count"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let history: Value = client
        .get(format!("{base}/api/v1/agents/{id}/history"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("history json");
    let reasons: Vec<&str> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|t| t["to"] == "starting")
        .filter_map(|t| t["reason"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("auto-recovery attempt 1") && r.contains("status 3")),
        "{history}"
    );
    // Each crashed runtime was reaped: no zombie child lingers.
    crate::common::eventually("no exited runtime is left a zombie", || async {
        server.children().iter().all(|(_, state)| *state != 'Z')
    })
    .await;
    let _ = client
        .post(format!("{base}/api/v1/agents/{id}/stop"))
        .bearer_auth(&token)
        .send()
        .await;
    crate::common::eventually("nothing is left of the runtimes", || async {
        server.children().is_empty()
    })
    .await;
}
