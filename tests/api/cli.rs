//! The `cadre` binary's commands, run as a user would.

use crate::common::eventually;
use std::process::Command;

fn cadre() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cadre"));
    // Only what each test sets: no CADRE_* from the environment running the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("CADRE_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn a_bad_config_value_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = cadre()
        .arg("serve")
        .env("CADRE_DATA_DIR", dir.path())
        .env("CADRE_LISTEN", "127.0.0.1:0")
        .env("CADRE_HEALTH__INTERVAL_MS", "soon")
        .output()
        .expect("run cadre serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("health.interval_ms"), "{stderr}");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[server]\nlisten = \"not an address\"\n").expect("write");
    let out = cadre()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.listen"));
    assert!(!dir.path().join("cadre.db").exists(), "nothing was created");
}

#[tokio::test]
async fn migrate_creates_the_schema_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    for _ in 0..2 {
        let out = cadre()
            .arg("migrate")
            .env("CADRE_DATA_DIR", dir.path())
            .output()
            .expect("run cadre migrate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let url = format!("sqlite://{}", dir.path().join("cadre.db").display());
    let store = cadre::store::SqlStore::open(&url, cadre::store::Durability::Normal, 1)
        .await
        .expect("open");
    assert_eq!(
        store.tables().org_count().await.expect("orgs table exists"),
        0,
        "migrate bootstraps nothing"
    );
}

/// `cadre serve` with stderr not a terminal logs JSON lines; a request's
/// lines carry its request id and, once signed in, its organization; an
/// agent's lines carry the organization and agent.
#[tokio::test]
async fn logs_are_json_lines_with_request_and_organization_fields() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    /// Kills the server however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(
        cadre()
            .arg("serve")
            .env("CADRE_DATA_DIR", dir.path())
            .env("CADRE_LISTEN", format!("127.0.0.1:{port}"))
            .env("CADRE_BOOTSTRAP_PASSWORD", "log-test-password")
            .env("CADRE_LOG__LEVEL", "info")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    cadre::init_tls();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    eventually("the server answers", || async {
        client.get(format!("{base}/readyz")).send().await.is_ok()
    })
    .await;
    let login: serde_json::Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({ "email": "admin@localhost", "password": "log-test-password" }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = login["access_token"].as_str().expect("token");
    let resp = client
        .get(format!("{base}/api/v1/agents"))
        .bearer_auth(token)
        .header("x-request-id", "log-test-0001")
        .send()
        .await
        .expect("list");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    // The access log line of that request, as JSON with its span's fields.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            break None;
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        seen.push(line);
        let in_request = v["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&v["span"]))
            .find(|s| s["request_id"] == "log-test-0001")
            .cloned();
        if let Some(span) = in_request
            && v["fields"]["message"] == "request"
        {
            break Some((v, span));
        }
    };
    drop(child);
    let (line, span) = found.unwrap_or_else(|| panic!("no access log line: {seen:#?}"));
    assert_eq!(line["fields"]["path"], "/api/v1/agents", "{line}");
    assert_eq!(line["fields"]["status"], 200, "{line}");
    assert!(
        span["org"].as_str().is_some_and(|o| o.len() == 36),
        "the organization is on the request's span: {line}"
    );
    assert!(
        span["principal"]
            .as_str()
            .is_some_and(|p| p.starts_with("user:")),
        "{line}"
    );
}

#[tokio::test]
async fn knowledge_rebuild_reindexes_the_database_into_a_new_index() {
    use reqwest::{Method, StatusCode};
    use serde_json::json;
    let mut app = crate::common::spawn_app().await;
    let (s, kb) = app
        .call(
            Method::POST,
            "/api/v1/knowledge-bases",
            Some(json!({ "name": "kb" })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{kb}");
    let (s, d) = app
        .call(
            Method::POST,
            &format!(
                "/api/v1/knowledge-bases/{}/documents",
                kb["id"].as_str().expect("id")
            ),
            Some(json!({ "title": "Canoes", "content": "Canoe paddles hang in aisle four." })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    app.stop().await;
    // An index damaged beyond opening: the command replaces it.
    let index = app.config.data_dir.join("knowledge").join("index");
    std::fs::write(index.join("meta.json"), "not json").expect("damage");
    let mut cmd = cadre();
    cmd.args(["knowledge", "rebuild"])
        .env("CADRE_DATA_DIR", &app.config.data_dir);
    if !app.config.database.url.is_empty() {
        cmd.env("CADRE_DATABASE_URL", &app.config.database.url);
    }
    let out = cmd.output().expect("run cadre knowledge rebuild");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 documents (1 chunks), 0 memories"),
        "{stdout}"
    );
    app.start().await;
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/knowledge/search",
            Some(json!({ "query": "canoe paddles" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["items"][0]["document_id"], d["id"], "{v}");
}
