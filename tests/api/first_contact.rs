//! What a new user meets first, done literally: `cadre serve` from an
//! empty directory with no `CADRE_*` variables (data in the default relative
//! `./data`), the README's login, create and deploy, and the agent reaching
//! `running`; a runtime that crashes at once, noticed when it exits and
//! reaped; and the modes of everything Cadre writes.

use crate::common::test_backend;
use crate::served::{Api, Served};
use cadre::store::backend::Backend;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The README's curl flow, as HTTP calls with its bodies: sign in, create
/// the README's agent, deploy it. Returns the signed-in API and the id.
async fn readme_flow(base: &str, password: &str) -> (Api, String) {
    let api = Api::sign_in(base, "admin@localhost", password).await;
    let (s, created) = api
        .call(
            Method::POST,
            "/api/v1/agents",
            Some(r#"{"name":"support","role":"answers tickets","model":"gpt-4o","budget":{"monthly_cost_usd":50}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let (s, v) = api
        .call(Method::POST, &format!("/api/v1/agents/{id}/deploy"), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    (api, id)
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
            stack.extend(
                std::fs::read_dir(&p)
                    .expect("read_dir")
                    .flatten()
                    .map(|e| e.path()),
            );
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
    let (api, id) = readme_flow("http://localhost:8080", &password).await;
    let v = api
        .wait(
            &format!("/api/v1/agents/{id}"),
            Duration::from_secs(60),
            |v| v["state"] == "running",
        )
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
    for f in [
        "cadre.db",
        "cadre.db-wal",
        "cadre.db-shm",
        "jwt_secret",
        "secrets.key",
    ] {
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
    let (s, v) = api
        .call(Method::POST, &format!("/api/v1/agents/{id}/stop"), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
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
    let deployed = Instant::now();
    let (api, id) = readme_flow(&base, &password).await;
    let agent = format!("/api/v1/agents/{id}");
    let v = api
        .wait(&agent, Duration::from_secs(60), |v| {
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
    api.wait(&agent, Duration::from_secs(60), |v| {
        v["restart_count"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    let (_, history) = api
        .call(Method::GET, &format!("{agent}/history"), None)
        .await;
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
    api.call(Method::POST, &format!("{agent}/stop"), None).await;
    crate::common::eventually("nothing is left of the runtimes", || async {
        server.children().is_empty()
    })
    .await;
}

/// Organization secrets are sealed with the instance's key. A start whose
/// key cannot open them (an export imported without its secrets.key, a
/// wrong key) is refused, saying what to do, unless told to proceed; and no
/// key is ever generated over sealed secrets.
#[tokio::test]
async fn a_start_whose_key_cannot_open_the_stored_secrets_is_refused() {
    let mut app = crate::common::spawn_app().await;
    app.put_secret("openai", "sk-test-123").await;

    // The README's move: export, import elsewhere, forget secrets.key.
    if test_backend() == Backend::Sqlite {
        let moved = tempfile::tempdir().expect("tempdir");
        let run = |args: &[&str], data: &Path| {
            let out = Command::new(env!("CARGO_BIN_EXE_cadre"))
                .args(args)
                .env("CADRE_DATA_DIR", data)
                .env_remove("CADRE_SECRETS_KEY")
                .env_remove("CADRE_DATABASE_URL")
                .env("CADRE_LISTEN", "127.0.0.1:0")
                .output()
                .expect("cadre");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        let export = moved.path().join("export");
        let export_arg = export.display().to_string();
        let (ok, err) = run(&["export", "--out", &export_arg], &app.config.data_dir);
        assert!(ok, "{err}");
        let data = moved.path().join("data");
        let (ok, err) = run(&["import", "--from", &export_arg], &data);
        assert!(ok, "{err}");
        let (ok, err) = run(&["serve"], &data);
        assert!(!ok, "cadre serve started without the key of its secrets");
        assert!(
            err.contains("no secrets key")
                && err.contains("secrets.key")
                && err.contains("CADRE_SECRETS_KEY"),
            "{err}"
        );
        assert!(
            !data.join("secrets.key").exists(),
            "a key was generated over sealed secrets"
        );
    }

    app.stop().await;
    let key_file = app.config.data_dir.join("secrets.key");
    let right = std::fs::read(&key_file).expect("the key");
    std::fs::remove_file(&key_file).expect("remove");
    let err = cadre::app::start(app.config.clone())
        .await
        .err()
        .expect("refused without its key");
    assert!(format!("{err:#}").contains("no secrets key"), "{err:#}");
    assert!(
        !key_file.exists(),
        "a key was generated over sealed secrets"
    );

    // A wrong key: refused, unless told to proceed.
    std::fs::write(&key_file, "ab".repeat(32)).expect("wrong key");
    let err = cadre::app::start(app.config.clone())
        .await
        .err()
        .expect("refused with a wrong key");
    let text = format!("{err:#}");
    assert!(
        text.contains("does not open") && text.contains("CADRE_SECRETS__ALLOW_UNREADABLE"),
        "{text}"
    );
    let mut told = app.config.clone();
    told.secrets.allow_unreadable = true;
    let running = cadre::app::start(told).await.expect("starts when told to");
    running.shutdown().await;

    // The right key back: it starts and the secret is there.
    std::fs::write(&key_file, right).expect("right key");
    app.start().await;
    let (_, list) = app
        .call(reqwest::Method::GET, "/api/v1/secrets", None)
        .await;
    assert_eq!(list["items"][0]["name"], "openai", "{list}");
}
