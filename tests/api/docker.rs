//! The `docker` target against the real Docker engine of this machine: the
//! runtime image is built from this build's `cadre` binary by
//! `cadre image build` (no registry is reachable), agents run as real
//! containers, and the containers are killed and inspected through the
//! Engine API. Containers use the host network so that the runtime can dial
//! the test server on 127.0.0.1.
//!
//! Without an engine these tests skip, unless `CADRE_REQUIRE_SERVICES=1`
//! (CI), where a missing engine fails them.

use crate::common::*;
use bollard::Docker;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::OnceLock;

const IMAGE: &str = "cadre-runtime:test";

/// The engine, with the runtime image built once per test run; `None`
/// (skip) when there is no engine and services are not required.
async fn engine() -> Option<Docker> {
    let cfg = test_config(std::path::Path::new("/nonexistent"))
        .deploy
        .docker;
    let docker = match cadre::deploy::docker::connect(&cfg).await {
        Ok(d) => d,
        Err(e) => {
            unavailable("the Docker engine", e);
            return None;
        }
    };
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cadre"))
            .args(["image", "build", "--tag", IMAGE])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    if let Err(e) = built {
        panic!("cadre image build failed: {e}");
    }
    Some(docker)
}

async fn docker_app() -> TestApp {
    spawn_app_with(|c| {
        c.deploy.docker.network = "host".into();
        c.deploy.docker.image = IMAGE.into();
        c.deploy.docker.stop_grace_ms = 2000;
    })
    .await
}

/// With the shipped `[deploy.docker]` defaults (the `bridge` network, no
/// `connect_url`) and the server on loopback, as `cadre serve` starts: the
/// container is told an address of the control plane it can reach, the
/// agent runs, its logs are what the runtime printed (the URL it dials
/// among them), and a container killed from outside is recovered at once,
/// not after `failure_threshold` probes a minute apart.
#[tokio::test]
async fn a_docker_agent_runs_with_the_shipped_defaults_and_is_recovered_at_once() {
    let Some(docker) = engine().await else { return };
    let app = spawn_app_with(|c| {
        c.deploy.docker.image = IMAGE.into();
        c.deploy.docker.stop_grace_ms = 2000;
    })
    .await;
    let shipped = cadre::config::Config::load(None, Vec::new()).expect("defaults");
    assert_eq!(
        app.config.deploy.docker.network,
        shipped.deploy.docker.network
    );
    assert_eq!(
        app.config.deploy.docker.connect_url,
        shipped.deploy.docker.connect_url
    );
    assert!(app.addr.ip().is_loopback());
    let id = app
        .create_id(json!({
            "name": "bridged", "role": "r", "model": "m",
            "deployment": { "target": "docker" },
            "health": { "interval_ms": 60000, "failure_threshold": 5 },
        }))
        .await;
    let (s, v) = app.command(&id, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let v = app.wait_state(&id, "running").await;
    assert_eq!(v["state_reason"], Value::Null, "{v}");
    let name = container(&id);
    let info = inspect(&docker, &name).await.expect("container exists");
    assert_eq!(
        info.host_config.and_then(|h| h.network_mode).as_deref(),
        Some("bridge")
    );

    // The logs are the runtime's own output, and `lines` counts them.
    let (s, logs) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{id}/logs?lines=50"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{logs}");
    let text = logs["text"].as_str().expect("text");
    assert!(
        text.contains(&format!("agent {id} starting")) && text.contains("control plane at ws://"),
        "{logs}"
    );
    assert_eq!(
        logs["lines"].as_u64(),
        Some(text.lines().count() as u64),
        "{logs}"
    );
    assert!(logs["lines"].as_u64() < Some(50), "{logs}");

    // `docker kill`: known from the engine's die event, recovered at once
    // (five failed probes a minute apart would take five minutes).
    let killed = std::time::Instant::now();
    docker
        .kill_container(
            &name,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .expect("kill");
    eventually("the killed container's agent to be recovered", || async {
        let v = app.get(&id).await;
        v["state"] == "running" && v["restart_count"].as_u64() >= Some(1)
    })
    .await;
    assert!(
        killed.elapsed() < std::time::Duration::from_secs(50),
        "recovered after {:?}",
        killed.elapsed()
    );
    let history = app.history(&id).await;
    assert!(
        history.iter().any(|h| h["to"] == "starting"
            && h["reason"]
                .as_str()
                .is_some_and(|r| r.contains("exit code 137"))),
        "the recovery names the container's exit: {history:?}"
    );
    app.command(&id, "destroy").await;
    app.wait_state(&id, "ready").await;
}

/// A container told a URL nothing answers at: its logs are what the
/// runtime printed, why it cannot connect and where it dials included, and
/// when the start times out the agent's reason quotes them.
#[tokio::test]
async fn a_runtime_that_cannot_connect_says_where_it_dials_in_its_logs_and_reason() {
    let Some(_docker) = engine().await else {
        return;
    };
    let app = spawn_app_with(|c| {
        c.deploy.docker.image = IMAGE.into();
        c.deploy.docker.stop_grace_ms = 1000;
        // Port 9 (discard): nothing listens there.
        c.deploy.docker.connect_url = "ws://127.0.0.1:9/api/v1/runtime/connect".into();
        c.health.start_timeout_ms = 4000;
    })
    .await;
    let id = app
        .create_id(json!({
            "name": "lost", "role": "r", "model": "m",
            "deployment": { "target": "docker" },
        }))
        .await;
    let (s, v) = app.command(&id, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let logs = eventually_some("the runtime's failed dials in its logs", || async {
        let (_, logs) = app
            .call(Method::GET, &format!("/api/v1/agents/{id}/logs"), None)
            .await;
        logs["text"]
            .as_str()
            .is_some_and(|t| t.contains("no connection to ws://127.0.0.1:9/api/v1/runtime/connect"))
            .then_some(logs)
    })
    .await;
    assert_eq!(
        logs["lines"].as_u64(),
        logs["text"].as_str().map(|t| t.lines().count() as u64),
        "{logs}"
    );
    let reason = eventually_some("the start to time out with the runtime's words", || async {
        let v = app.get(&id).await;
        v["state_reason"]
            .as_str()
            .filter(|r| r.contains("did not say hello"))
            .map(str::to_string)
    })
    .await;
    assert!(
        reason.contains("no connection to ws://127.0.0.1:9"),
        "{reason}"
    );
    app.command(&id, "destroy").await;
}

fn container(id: &str) -> String {
    format!("cadre-{id}")
}

async fn inspect(docker: &Docker, name: &str) -> Option<bollard::models::ContainerInspectResponse> {
    docker.inspect_container(name, None).await.ok()
}

#[tokio::test]
async fn a_docker_agent_runs_hardened_is_recovered_after_a_kill_and_is_removed_on_destroy() {
    let Some(docker) = engine().await else { return };
    let app = docker_app().await;
    // A long probe interval: only the engine's `die` event can make the
    // control plane notice the kill within the test's time limit.
    let id = app
        .create_id(json!({
            "name": "boxed", "role": "r", "model": "m",
            "deployment": { "target": "docker", "docker": { "cpus": 0.5, "memory_mb": 256 } },
            "health": { "interval_ms": 60000, "failure_threshold": 1 },
        }))
        .await;
    let (s, v) = app.command(&id, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let running = app.wait_state(&id, "running").await;
    let name = container(&id);
    assert_eq!(running["deployment"]["target"], "docker");
    assert_eq!(running["deployment"]["ref"], format!("docker:{name}"));
    assert_eq!(running["deployment"]["docker"]["memory_mb"], 256);

    // The container as the engine sees it.
    let info = inspect(&docker, &name).await.expect("container exists");
    let config = info.config.clone().expect("config");
    let labels = config.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("cadre.agent").map(String::as_str),
        Some(id.as_str())
    );
    assert_eq!(
        labels.get("cadre.org").map(String::as_str),
        Some(org_id(&app).await.as_str())
    );
    assert_eq!(config.user.as_deref(), Some("65534:65534"));
    let host = info.host_config.clone().expect("host config");
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges:true".to_string()])
    );
    assert_eq!(host.memory, Some(256 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(
        host.restart_policy
            .and_then(|p| p.name)
            .map(|n| n.to_string())
            .as_deref(),
        Some("no")
    );
    let mounts = info.mounts.clone().unwrap_or_default();
    assert!(
        mounts
            .iter()
            .any(|m| m.destination.as_deref() == Some("/agent")
                && m.name.as_deref() == Some(format!("{name}-workspace").as_str())
                && m.rw == Some(true)),
        "{mounts:?}"
    );
    // The runtime's token is in the container's environment, but never the
    // control plane's own secrets.
    let env = config.env.clone().unwrap_or_default();
    assert!(env.iter().any(|e| e.starts_with("CADRE_RUNTIME_CONFIG=")));
    assert!(
        !env.iter()
            .any(|e| e.contains("SECRETS_KEY") || e.contains("JWT")),
        "{env:?}"
    );
    let first_start = info
        .state
        .clone()
        .and_then(|s| s.started_at)
        .expect("started_at");

    // Logs come from the engine.
    let (s, logs) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{id}/logs?lines=50"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{logs}");
    assert!(logs["text"].is_string(), "{logs}");

    // Killed from outside (`docker kill`, through the API).
    docker
        .kill_container(
            &name,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .expect("kill");
    eventually("the killed container to be started again", || async {
        let v = app.get(&id).await;
        let restarted = inspect(&docker, &name)
            .await
            .and_then(|i| i.state)
            .is_some_and(|s| {
                s.running == Some(true) && s.started_at.as_deref() > Some(first_start.as_str())
            });
        v["state"] == "running" && v["restart_count"].as_u64() >= Some(1) && restarted
    })
    .await;
    let history = app.history(&id).await;
    assert!(
        history.iter().any(|h| h["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exit code 137"))),
        "the recovery names the container's exit: {history:?}"
    );

    // Stop leaves the container stopped; destroy removes it and its volume.
    let (s, v) = app.command(&id, "stop").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_state(&id, "stopped").await;
    eventually("the container to stop (and stay)", || async {
        inspect(&docker, &name)
            .await
            .and_then(|i| i.state)
            .is_some_and(|s| s.running == Some(false))
    })
    .await;
    let (s, v) = app.command(&id, "destroy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_state(&id, "ready").await;
    assert!(inspect(&docker, &name).await.is_none(), "container removed");
    assert!(
        docker
            .inspect_volume(&format!("{name}-workspace"))
            .await
            .is_err(),
        "volume removed"
    );
}

#[tokio::test]
async fn a_broken_image_gives_an_error_state_with_the_engines_message() {
    let Some(docker) = engine().await else { return };
    let app = docker_app().await;
    let id = app
        .create_id(json!({
            "name": "no-image", "role": "r", "model": "m",
            "deployment": { "target": "docker", "docker": { "image": "cadre-no-such-image:never" } },
        }))
        .await;
    let (s, v) = app.command(&id, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let v = app.wait_state(&id, "error").await;
    let reason = v["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("cadre-no-such-image:never") && reason.contains("pulling it failed"),
        "{reason}"
    );
    // The engine's own words are in it (its pull error).
    assert!(
        reason.contains("engine status")
            || reason.contains("denied")
            || reason.contains("lookup")
            || reason.contains("not found"),
        "{reason}"
    );
    assert!(inspect(&docker, &container(&id)).await.is_none());
    let (s, v) = app.command(&id, "destroy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_state(&id, "ready").await;
}

#[tokio::test]
async fn an_unreachable_engine_is_a_clear_error_and_the_rest_of_cadre_works() {
    let app = spawn_app_with(|c| {
        c.deploy.docker.host = "unix:///nonexistent/docker.sock".into();
    })
    .await;
    let id = app
        .create_id(json!({
            "name": "nowhere", "role": "r", "model": "m",
            "deployment": { "target": "docker" },
        }))
        .await;
    app.command(&id, "deploy").await;
    let v = app.wait_state(&id, "error").await;
    let reason = v["state_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("docker deployer") && reason.contains("/nonexistent/docker.sock"),
        "{reason}"
    );
    // A local agent on the same server is unaffected.
    let local = app
        .create_id(json!({ "name": "here", "role": "r", "model": "m" }))
        .await;
    app.command(&local, "deploy").await;
    app.wait_state(&local, "running").await;
}

#[tokio::test]
async fn deployment_settings_are_validated_and_a_deployed_agent_keeps_its_target() {
    let app = spawn_app().await;
    for (body, field) in [
        (json!({ "target": "nomad" }), "deployment.target"),
        (
            json!({ "target": "docker", "docker": { "cpus": 0 } }),
            "deployment.docker.cpus",
        ),
        (
            json!({ "target": "docker", "docker": { "memory_mb": 1 } }),
            "deployment.docker.memory_mb",
        ),
        (
            json!({ "target": "docker", "docker": { "image": "bad image" } }),
            "deployment.docker.image",
        ),
        (
            json!({ "target": "docker", "docker": { "image": "-x" } }),
            "deployment.docker.image",
        ),
    ] {
        let (s, v) = app
            .call(
                Method::POST,
                "/api/v1/agents",
                Some(json!({ "name": "v", "deployment": body })),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {v}");
        assert_eq!(v["field"], field, "{v}");
    }
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/agents",
            Some(json!({ "name": "v", "deployment": { "target": "docker", "docker": { "unknown": 1 } } })),
        )
        .await;
    assert_eq!(s.as_u16() / 100, 4, "{v}");

    // Logs need a deployment.
    let id = app
        .create_id(json!({ "name": "mover", "role": "r", "model": "m" }))
        .await;
    let (s, v) = app
        .call(Method::GET, &format!("/api/v1/agents/{id}/logs"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "not_deployed");
    let (s, v) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{id}/logs?lines=0"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // A deployed agent cannot move to another target until it is destroyed.
    app.command(&id, "deploy").await;
    app.wait_state(&id, "running").await;
    let (s, v) = app
        .call(Method::GET, &format!("/api/v1/agents/{id}/logs"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let to_docker = json!({ "deployment": { "target": "docker" } });
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{id}"),
            Some(to_docker.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["code"], "target_in_use", "{v}");
    assert_eq!(app.get(&id).await["deployment"]["target"], "local");
    app.command(&id, "destroy").await;
    app.wait_state(&id, "ready").await;
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/agents/{id}"),
            Some(to_docker),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["deployment"]["target"], "docker");
    let _: Value = v;
}

/// Runs a checker program on a generated file; `None` when the program is
/// missing and services are not required.
fn check_with(program: &str, args: &[&str], dir: &std::path::Path) -> Option<std::process::Output> {
    match std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(out) => Some(out),
        Err(e) => {
            unavailable(program, e);
            None
        }
    }
}

#[tokio::test]
async fn generated_configs_are_valid_for_their_tools_and_hold_no_secret() {
    let app = spawn_app().await;
    let secret = "sk-generated-config-never-shows-this";
    let (s, v) = app
        .call(
            Method::PUT,
            "/api/v1/secrets/openai",
            Some(json!({ "value": secret })),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let id = app
        .create_id(json!({
            "name": "hand\nExecStartPre=/bin/false", "role": "r", "model": "gpt-4o",
            "deployment": { "target": "docker", "docker": { "cpus": 0.5, "memory_mb": 300 } },
            "llm": { "api_key_secret": "openai" },
            "budget": { "monthly_tokens": 5000 },
        }))
        .await;
    let get = |format: &str| {
        let url = format!(
            "/api/v1/agents/{id}/config?format={format}&runtime_bin={}",
            env!("CARGO_BIN_EXE_cadre")
        );
        let app = &app;
        let format = format.to_string();
        async move {
            let r = app
                .client
                .get(app.url(&url))
                .bearer_auth(&app.token)
                .send()
                .await
                .expect("config");
            let status = r.status();
            let disposition = r
                .headers()
                .get("content-disposition")
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = r.text().await.expect("body");
            assert_eq!(status, StatusCode::OK, "{format}: {body}");
            assert!(!body.contains(secret), "{format} leaks the secret");
            (disposition, body)
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");

    let (_, runtime) = get("runtime").await;
    let rt: Value = serde_json::from_str(&runtime).expect("runtime.json is JSON");
    assert_eq!(rt["agent_id"], id.as_str());
    assert_eq!(rt["token"], "");
    assert_eq!(
        rt["connect_url"],
        format!("ws://{}/api/v1/runtime/connect", app.addr)
    );
    assert_eq!(rt["model"], "gpt-4o");
    assert_eq!(rt["governed"]["memory_mb"], 300);
    assert_eq!(rt["governed"]["budget_tokens"], 5000);
    assert!(rt["governed"]["skills"].is_array());
    std::fs::write(dir.path().join("runtime.json"), &runtime).expect("write");

    let (_, env) = get("env").await;
    let vars: Vec<&str> = env.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        vars,
        ["CADRE_RUNTIME_TOKEN=", "CADRE_LLM_API_KEY="],
        "{env}"
    );
    std::fs::write(dir.path().join("runtime.env"), &env).expect("write");

    let (disposition, unit) = get("systemd").await;
    assert!(
        disposition.contains(&format!("cadre-agent-{id}.service")),
        "{disposition}"
    );
    for directive in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "DynamicUser=yes",
        "Restart=on-failure",
        "MemoryMax=300M",
        "CPUQuota=50%",
    ] {
        assert!(
            unit.lines().any(|l| l == directive),
            "{directive} missing: {unit}"
        );
    }
    let unit_file = dir.path().join(format!("cadre-agent-{id}.service"));
    std::fs::write(&unit_file, &unit).expect("write");
    if let Some(out) = check_with(
        "systemd-analyze",
        &["verify", &unit_file.display().to_string()],
        dir.path(),
    ) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze: {stderr}\n{unit}"
        );
    }

    let (_, compose) = get("compose").await;
    std::fs::write(dir.path().join("docker-compose.yml"), &compose).expect("write");
    if let Some(out) = check_with("docker-compose", &["config"], dir.path()) {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "docker-compose: {}\n{compose}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Compose read what we meant: the hardening survived its parser.
        for expected in [
            "read_only: true",
            "cap_drop:",
            "no-new-privileges:true",
            "cadre-runtime:latest",
        ] {
            assert!(
                stdout.contains(expected),
                "{expected} missing from: {stdout}"
            );
        }
    }

    let (s, v) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{id}/config?format=helm"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["code"], "invalid_query");
    let (s, _) = app
        .call(
            Method::GET,
            &format!("/api/v1/agents/{id}/config?format=systemd&runtime_bin=x;rm"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // A viewer may read them too (nothing secret in them).
    let (_, viewer) = add_user(&app, "viewer@example.com", "viewer").await;
    let (s, _) = app
        .call_as(
            Some(&viewer),
            Method::GET,
            &format!("/api/v1/agents/{id}/config"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
}
