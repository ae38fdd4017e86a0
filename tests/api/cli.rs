//! The `cadre` binary's commands, run as a user would.

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
        store.org_count().await.expect("orgs table exists"),
        0,
        "migrate bootstraps nothing"
    );
}
