//! The `ssh` target against a real OpenSSH server that each test starts on
//! 127.0.0.1 (its own host key, its own authorized key, SFTP through
//! `internal-sftp`). The login is the user running the tests; the agent's
//! files go to a directory of the test's. This machine does not run
//! systemd as PID 1, so these tests exercise the supervisor-less path; the
//! unit Cadre installs under systemd is the generated one, which
//! `systemd-analyze verify` checks in the Docker tests.
//!
//! Without `sshd` these tests skip, unless `CADRE_REQUIRE_SERVICES=1` (CI),
//! where a missing server fails them.

use crate::common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const SSHD: &str = "/usr/sbin/sshd";

/// An OpenSSH server of the test's own, killed when dropped.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) -> (String, String) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "cadre-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen runs");
    assert!(out.status.success(), "{out:?}");
    let private = std::fs::read_to_string(path).expect("private key");
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("public key");
    (private, public.trim().to_string())
}

impl Sshd {
    /// Starts a server accepting `authorized` keys; `None` (skip) when this
    /// machine has no sshd and services are not required.
    async fn start(authorized: &[&str]) -> Option<Sshd> {
        if !Path::new(SSHD).exists() {
            unavailable("OpenSSH's sshd", format!("{SSHD} is not installed"));
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        keygen(&dir.path().join("host_key"));
        Some(Sshd::on(dir, authorized, None).await)
    }

    async fn on(dir: tempfile::TempDir, authorized: &[&str], port: Option<u16>) -> Sshd {
        let p = dir.path();
        std::fs::write(p.join("authorized_keys"), authorized.join("\n") + "\n").expect("keys");
        // Privilege separation wants this directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port")
        });
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n\
             Subsystem sftp internal-sftp\nLogLevel ERROR\n",
            d = p.display()
        );
        std::fs::write(p.join("sshd_config"), config).expect("config");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(p.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sshd starts");
        let sshd = Sshd { child, port, dir };
        eventually("sshd listens", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        sshd
    }

    /// The same server with a new host key, on the same port.
    async fn with_new_host_key(mut self, authorized: &[&str]) -> Sshd {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        for f in ["host_key", "host_key.pub"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        keygen(&dir.path().join("host_key"));
        let port = self.port;
        drop(self);
        Sshd::on(dir, authorized, Some(port)).await
    }

    fn host_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("host_key.pub"))
            .expect("host key")
            .trim()
            .to_string()
    }
}

fn login_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn ssh_app() -> TestApp {
    spawn_app_with(|c| {
        c.deploy.ssh.runtime_bin = env!("CARGO_BIN_EXE_cadre").into();
        c.deploy.ssh.stop_grace_ms = 1000;
    })
    .await
}

/// Where agents' files go on the "remote" machine: a directory of the
/// server's, removed with it.
fn remote_base(sshd: &Sshd) -> PathBuf {
    sshd.dir.path().join("remote")
}

fn ssh_spec(sshd: &Sshd, extra: Value) -> Value {
    let mut spec = json!({
        "host": "127.0.0.1", "port": sshd.port, "user": login_user(),
        "key_secret": "deploy-key", "dir": remote_base(sshd).display().to_string(),
        "supervisor": "none",
    });
    if let (Some(m), Value::Object(e)) = (spec.as_object_mut(), extra) {
        m.extend(e);
    }
    spec
}

async fn pid_of(agent_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(agent_dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i32) -> bool {
    // Signal 0 to the process group: does anything of it still run?
    Command::new("kill")
        .args(["-0", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn an_ssh_agent_runs_on_the_host_recovers_after_a_kill_and_is_removed_on_destroy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (private, public) = keygen(&dir.path().join("client"));
    let Some(sshd) = Sshd::start(&[&public]).await else {
        return;
    };
    let app = ssh_app().await;
    app.put_secret("deploy-key", &private).await;
    app.put_secret("model-key", "sk-ssh-secret-value").await;
    let id = app
        .create_id(json!({
            "name": "remote", "role": "r", "model": "m",
            "deployment": { "target": "ssh", "ssh": ssh_spec(&sshd, json!({})) },
            "llm": { "api_key_secret": "model-key" },
            "health": { "interval_ms": 300, "failure_threshold": 2 },
        }))
        .await;
    let (s, v) = app.command(&id, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let running = app.wait_state(&id, "running").await;
    let handle = running["deployment"]["ref"].as_str().unwrap_or_default();
    assert!(handle.starts_with("ssh:"), "{handle}");
    assert_eq!(running["deployment"]["ssh"]["port"], sshd.port);

    // The host key seen first is pinned in Cadre's own known-hosts file.
    let known =
        std::fs::read_to_string(app.config.data_dir.join("ssh_known_hosts")).expect("pinned");
    let host_key = sshd.host_key();
    let b64 = host_key.split_whitespace().nth(1).expect("key");
    assert!(
        known.contains(&format!("[127.0.0.1]:{} ", sshd.port)) && known.contains(b64),
        "{known}"
    );

    // The files on the host: the binary once, a config without the token,
    // an env file only its owner reads with the token and the named secret.
    let agent_dir = remote_base(&sshd).join("agents").join(&id);
    let config = std::fs::read_to_string(agent_dir.join("runtime.json")).expect("config");
    let config: Value = serde_json::from_str(&config).expect("json");
    assert_eq!(config["agent_id"], id.as_str());
    assert_eq!(config["token"], "");
    let env_path = agent_dir.join("env");
    let env = std::fs::read_to_string(&env_path).expect("env file");
    assert!(
        env.contains("CADRE_LLM_API_KEY='sk-ssh-secret-value'"),
        "{env}"
    );
    assert!(env.contains("CADRE_RUNTIME_TOKEN='"), "{env}");
    // Nothing else: none of the control plane's own secrets.
    assert_eq!(env.lines().count(), 2, "{env}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&env_path)
        .expect("env")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let bins: Vec<_> = std::fs::read_dir(remote_base(&sshd).join("bin"))
        .expect("bin dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cadre-") && !n.ends_with(".part"))
        .collect();
    assert_eq!(bins.len(), 1, "{bins:?}");

    // Logs come from the host.
    app.wait_runtime_log(&id).await;

    // Killed from outside: the health loop notices and starts it again.
    let first = pid_of(&agent_dir).await.expect("pid file");
    assert!(alive(first));
    let killed = Command::new("kill")
        .args(["-KILL", "--", &format!("-{first}")])
        .status()
        .expect("kill");
    assert!(killed.success());
    eventually("a new runtime process after the kill", || async {
        pid_of(&agent_dir)
            .await
            .is_some_and(|p| p != first && alive(p))
    })
    .await;
    let v = app.wait_state(&id, "running").await;
    assert!(v["restart_count"].as_u64().unwrap_or(0) >= 1, "{v}");
    let history = app.history(&id).await;
    assert!(
        history.iter().any(|h| h["to"] == "degraded")
            && history.iter().any(|h| h["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("auto-recovery"))),
        "{history:?}"
    );

    // Stop ends the process; destroy removes the agent's directory.
    let second = pid_of(&agent_dir).await.expect("pid");
    let (s, v) = app.command(&id, "stop").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    eventually("the runtime stopped on the host", || async {
        !alive(second)
    })
    .await;
    let (s, v) = app.command(&id, "destroy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_state(&id, "ready").await;
    eventually("the agent's directory removed", || async {
        !agent_dir.exists()
    })
    .await;
}

#[tokio::test]
async fn a_wrong_key_and_a_changed_host_key_fail_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, allowed) = keygen(&dir.path().join("allowed"));
    let (stranger, _) = keygen(&dir.path().join("stranger"));
    let (private, public) = keygen(&dir.path().join("client"));
    let Some(sshd) = Sshd::start(&[&allowed]).await else {
        return;
    };
    let app = ssh_app().await;

    // A key the server does not accept.
    app.put_secret("deploy-key", &stranger).await;
    let reason = app
        .deploy_fails(json!({
            "name": "wrong-key", "role": "r", "model": "m",
            "deployment": { "target": "ssh", "ssh": ssh_spec(&sshd, json!({})) },
        }))
        .await;
    assert!(
        reason.contains("refused the key") && reason.contains("deploy-key"),
        "{reason}"
    );

    // A configured host key that is not the server's.
    let (_, other_host) = keygen(&dir.path().join("other_host"));
    app.put_secret("deploy-key", &private).await;
    let sshd = sshd.with_new_host_key(&[&allowed, &public]).await;
    let reason = app.deploy_fails(json!({
            "name": "pinned-other", "role": "r", "model": "m",
            "deployment": { "target": "ssh", "ssh": ssh_spec(&sshd, json!({ "host_key": other_host })) },
        })).await;
    assert!(
        reason.contains("not the configured") && reason.contains("refusing"),
        "{reason}"
    );

    // Pinned at first use (the wrong-key attempt pinned the first host key;
    // the server has a new one now): a changed key refuses to connect.
    let reason = app
        .deploy_fails(json!({
            "name": "changed", "role": "r", "model": "m",
            "deployment": { "target": "ssh", "ssh": ssh_spec(&sshd, json!({})) },
        }))
        .await;
    assert!(
        reason.contains("changed") && reason.contains("refusing"),
        "{reason}"
    );

    // Naming the server's real key works.
    let id = app
        .create_id(json!({
            "name": "pinned-right", "role": "r", "model": "m",
            "deployment": { "target": "ssh", "ssh": ssh_spec(&sshd, json!({ "host_key": sshd.host_key() })) },
        }))
        .await;
    app.command(&id, "deploy").await;
    app.wait_state(&id, "running").await;
    app.command(&id, "destroy").await;
    app.wait_state(&id, "ready").await;
}

#[tokio::test]
async fn ssh_settings_are_checked_before_anything_is_stored() {
    let app = spawn_app().await;
    app.put_secret("deploy-key", "not used").await;
    let base = json!({ "host": "h.example", "user": "deploy", "key_secret": "deploy-key" });
    let cases = [
        (json!({ "host": "-oProxyCommand=x" }), "deployment.ssh.host"),
        (json!({ "host": "a b" }), "deployment.ssh.host"),
        (json!({ "user": "root;id" }), "deployment.ssh.user"),
        (json!({ "port": 0 }), "deployment.ssh.port"),
        (json!({ "dir": "/srv/../etc" }), "deployment.ssh.dir"),
        (json!({ "dir": "/srv/$(id)" }), "deployment.ssh.dir"),
        (
            json!({ "supervisor": "runit" }),
            "deployment.ssh.supervisor",
        ),
        (
            json!({ "host_key": "ssh-ed25519 nope" }),
            "deployment.ssh.host_key",
        ),
        (
            json!({ "key_secret": "missing" }),
            "deployment.ssh.key_secret",
        ),
    ];
    for (change, field) in cases {
        let mut spec = base.clone();
        if let (Some(m), Value::Object(c)) = (spec.as_object_mut(), change.clone()) {
            m.extend(c);
        }
        let (s, v) = app
            .call(
                Method::POST,
                "/api/v1/agents",
                Some(json!({
                    "name": "bad", "role": "r", "model": "m",
                    "deployment": { "target": "ssh", "ssh": spec },
                })),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{change}: {v}");
        assert_eq!(v["field"], field, "{change}: {v}");
    }
    let (_, list) = app.call(Method::GET, "/api/v1/agents", None).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");

    // Target ssh without its settings: the agent says what is missing and a
    // deploy waits in `configuring` until they are given.
    let id = app
        .create_id(json!({ "name": "bare", "role": "r", "model": "m",
                           "deployment": { "target": "ssh" } }))
        .await;
    let (_, v) = app
        .call(Method::GET, &format!("/api/v1/agents/{id}"), None)
        .await;
    assert!(
        v["missing_fields"]
            .as_array()
            .is_some_and(|m| m.contains(&json!("deployment.ssh"))),
        "{v}"
    );
    let (s, v) = app.command(&id, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let v = app.wait_state(&id, "configuring").await;
    assert_eq!(
        v["state_reason"], "missing required fields: deployment.ssh",
        "{v}"
    );
    assert_eq!(v["deployment"]["ref"], Value::Null);
}
