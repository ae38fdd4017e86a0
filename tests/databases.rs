//! The three dialects' migrations: the folders agree, each applies to a real
//! server (a database of its own per test, random name, dropped after) and
//! gives the same tables, columns and named indexes as SQLite, and the
//! rules the schema itself enforces (append-only audit log, unique names
//! among live agents) hold on each.
//!
//! Servers: `CADRE_TEST_POSTGRES_URL` (default
//! `postgres://cadre:cadre@127.0.0.1:5432/postgres`) and
//! `CADRE_TEST_MYSQL_URL` (default `mysql://cadre:cadre@127.0.0.1:3306/mysql`),
//! logins that may create and drop databases; `.ci/services` installs and
//! starts both. A server that cannot be reached skips its test, unless
//! `CADRE_REQUIRE_SERVICES=1`, which makes it fail.

mod support;

use cadre::store::backend::{self, Backend, MYSQL, POSTGRES, SQLITE};
use sqlx::{Connection, Executor, MySqlConnection, PgConnection, Row, SqliteConnection};
use std::collections::BTreeSet;
use support::{MYSQL_URL, POSTGRES_URL, on_fresh_database, server};

/// `(version, description)` of every migration file in a folder.
fn folder(dialect: &str) -> Vec<(i64, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dialect);
    let mut out: Vec<(i64, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .map(|name| {
            let stem = name
                .strip_suffix(".sql")
                .unwrap_or_else(|| panic!("{dialect}/{name} is not a .sql file"));
            let (version, description) = stem
                .split_once('_')
                .unwrap_or_else(|| panic!("{dialect}/{name}: expected <version>_<name>.sql"));
            (
                version
                    .parse()
                    .unwrap_or_else(|_| panic!("{dialect}/{name}: version is not a number")),
                description.to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_three_migration_folders_agree() {
    let sqlite = folder("sqlite");
    assert!(sqlite.len() >= 9, "{sqlite:?}");
    assert_eq!(folder("postgres"), sqlite, "postgres/ and sqlite/ differ");
    assert_eq!(folder("mysql"), sqlite, "mysql/ and sqlite/ differ");
    // And what each build embeds.
    let embedded = |m: &sqlx::migrate::Migrator| -> Vec<(i64, String)> {
        m.iter()
            .map(|m| (m.version, m.description.replace(' ', "_")))
            .collect()
    };
    assert_eq!(embedded(&SQLITE), sqlite);
    assert_eq!(embedded(&POSTGRES), sqlite);
    assert_eq!(embedded(&MYSQL), sqlite);
}

/// `(table, column)` pairs and index names, read on `conn` by two queries
/// (columns `t` and `c`; one index name a row).
macro_rules! schema {
    ($conn:expr, $columns:expr, $indexes:expr) => {{
        let conn = $conn;
        let columns: BTreeSet<(String, String)> = sqlx::query($columns)
            .fetch_all(&mut *conn)
            .await
            .expect("columns")
            .iter()
            .map(|r| (r.get("t"), r.get("c")))
            .collect();
        let indexes: BTreeSet<String> = sqlx::query_scalar($indexes)
            .fetch_all(&mut *conn)
            .await
            .expect("indexes")
            .into_iter()
            .collect();
        (columns, indexes)
    }};
}

/// `(table, column)` of SQLite's schema after every migration, and its
/// explicitly named indexes.
async fn sqlite_schema() -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let report = backend::migrate(&url).await.expect("sqlite migrations");
    assert_eq!(report.applied.len(), SQLITE.iter().count());
    let mut c = SqliteConnection::connect(&url).await.expect("sqlite");
    schema!(
        &mut c,
        "SELECT m.name AS t, p.name AS c FROM sqlite_master m, pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name <> '_sqlx_migrations'",
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'"
    )
}

/// Migrates `url` twice (the second run applies nothing) and checks that
/// its tables and columns are SQLite's and that it has every named index.
async fn migrates_like_sqlite(url: &str, backend: Backend) {
    let first = backend::migrate(url).await.expect("migrate");
    assert_eq!(first.backend, backend);
    let all: Vec<i64> = SQLITE.iter().map(|m| m.version).collect();
    assert_eq!(first.applied, all, "{first}");
    assert!(first.already.is_empty(), "{first}");
    let again = backend::migrate(url).await.expect("migrate again");
    assert!(again.applied.is_empty(), "{again}");
    assert_eq!(again.already, all);
    assert!(
        again.to_string().contains("0 migration(s) applied"),
        "{again}"
    );

    let (want_columns, want_indexes) = sqlite_schema().await;
    let (columns, indexes) = match backend {
        Backend::Postgres => schema!(
            &mut PgConnection::connect(url).await.expect("connect"),
            "SELECT table_name::text AS t, column_name::text AS c FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name <> '_sqlx_migrations'",
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = 'public'"
        ),
        _ => {
            let (columns, indexes) = schema!(
                &mut MySqlConnection::connect(url).await.expect("connect"),
                "SELECT CAST(table_name AS CHAR) AS t, CAST(column_name AS CHAR) AS c \
                 FROM information_schema.columns \
                 WHERE table_schema = DATABASE() AND table_name <> '_sqlx_migrations'",
                "SELECT DISTINCT CAST(index_name AS CHAR) FROM information_schema.statistics \
                 WHERE table_schema = DATABASE()"
            );
            // The generated column that stands in for SQLite's partial
            // unique index on live agents' names.
            let columns = columns
                .into_iter()
                .filter(|(t, c)| !(t == "agents" && c == "live_name"))
                .collect();
            (columns, indexes)
        }
    };
    let missing: Vec<_> = want_columns.difference(&columns).collect();
    let extra: Vec<_> = columns.difference(&want_columns).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{}: columns missing {missing:?}, not in SQLite {extra:?}",
        backend.dialect()
    );
    let missing: Vec<_> = want_indexes.difference(&indexes).collect();
    assert!(
        missing.is_empty(),
        "{}: indexes missing {missing:?}",
        backend.dialect()
    );
}

/// The rules the schema enforces by itself, in any dialect: the audit log
/// is append-only, and a name is unique among an organization's live agents
/// (a deleted agent's name can be taken again). Plain SQL that every
/// dialect reads alike.
async fn schema_rules_hold<C>(conn: &mut C, dialect: &str)
where
    for<'c> &'c mut C: Executor<'c>,
{
    conn.execute("INSERT INTO orgs (id, name, created_at) VALUES ('o1', 'Org', 1)")
        .await
        .expect("org");
    conn.execute(
        "INSERT INTO audit_log (org_id, actor, action, target, summary, at) \
         VALUES ('o1', 'user:u', 'x', 'y', '{}', 1)",
    )
    .await
    .expect("audit insert");
    let Err(update) = conn.execute("UPDATE audit_log SET actor = 'forged'").await else {
        panic!("{dialect}: an audit entry was changed");
    };
    assert!(
        update.to_string().contains("append-only"),
        "{dialect}: {update}"
    );
    let Err(delete) = conn.execute("DELETE FROM audit_log").await else {
        panic!("{dialect}: an audit entry was deleted");
    };
    assert!(
        delete.to_string().contains("append-only"),
        "{dialect}: {delete}"
    );

    let agent = |id: &str| {
        format!(
            "INSERT INTO agents (id, org_id, name, target, state, usage_period, epoch, created_at, updated_at) \
             VALUES ('{id}', 'o1', 'same', 'local', 'draft', '2026-11', 1, 1, 1)"
        )
    };
    conn.execute(agent("a1").as_str())
        .await
        .expect("first agent");
    assert!(
        conn.execute(agent("a2").as_str()).await.is_err(),
        "{dialect}: two live agents of one organization shared a name"
    );
    conn.execute("UPDATE agents SET deleted_at = 2 WHERE id = 'a1'")
        .await
        .expect("delete");
    conn.execute(agent("a2").as_str())
        .await
        .expect("a deleted agent's name is free again");
}

#[tokio::test]
async fn sqlite_schema_rules_hold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("r.db").display());
    backend::migrate(&url).await.expect("migrate");
    let mut c = SqliteConnection::connect(&url).await.expect("connect");
    schema_rules_hold(&mut c, "sqlite").await;
}

#[tokio::test]
async fn postgres_migrations_apply_and_match_sqlite() {
    let Some(admin) = server("CADRE_TEST_POSTGRES_URL", POSTGRES_URL, Backend::Postgres).await
    else {
        return;
    };
    on_fresh_database(Backend::Postgres, &admin, |url| async move {
        migrates_like_sqlite(&url, Backend::Postgres).await;
        let mut c = PgConnection::connect(&url).await.expect("connect");
        schema_rules_hold(&mut c, "postgres").await;
    })
    .await;
}

#[tokio::test]
async fn mysql_migrations_apply_and_match_sqlite() {
    let Some(admin) = server("CADRE_TEST_MYSQL_URL", MYSQL_URL, Backend::Mysql).await else {
        return;
    };
    on_fresh_database(Backend::Mysql, &admin, |url| async move {
        migrates_like_sqlite(&url, Backend::Mysql).await;
        // MariaDB's own scheme works as well.
        let mariadb = url.replacen("mysql:", "mariadb:", 1);
        let again = backend::migrate(&mariadb).await.expect("mariadb: URL");
        assert!(again.applied.is_empty(), "{again}");
        let mut c = MySqlConnection::connect(&url).await.expect("connect");
        schema_rules_hold(&mut c, "mysql").await;
    })
    .await;
}

#[tokio::test]
async fn unknown_schemes_and_unreachable_servers_are_clear_errors() {
    let e = backend::migrate("mongodb://127.0.0.1/x")
        .await
        .expect_err("unknown scheme");
    assert!(e.to_string().contains("unknown scheme"), "{e}");
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let e = backend::migrate(&format!("postgres://cadre:cadre@127.0.0.1:{port}/x"))
        .await
        .expect_err("nothing listens");
    assert!(
        e.to_string()
            .starts_with("connecting to the postgres database"),
        "{e}"
    );
}

/// `cadre serve`'s store on a server URL: an unreachable one is named in
/// the error without its password; a reachable one is opened and migrated,
/// and answers for PostgreSQL and MariaDB alike.
#[tokio::test]
async fn serve_opens_a_server_url_and_names_an_unreachable_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |url: &str| {
        let env = [
            (
                "CADRE_DATA_DIR".to_string(),
                dir.path().display().to_string(),
            ),
            ("CADRE_DATABASE_URL".to_string(), url.to_string()),
        ];
        cadre::config::Config::load(None, env).expect("config")
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    // Reported at once, not after the pool's 30 s of trying again.
    let Ok(Err(e)) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        cadre::app::open_store(&config(&format!(
            "postgres://cadre:hunter2@127.0.0.1:{port}/cadre"
        ))),
    )
    .await
    else {
        panic!("opened a database nothing serves, or took more than 10 s to say it could not");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains(&format!(
            "opening database postgres://cadre:***@127.0.0.1:{port}/cadre"
        )),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "the password leaked: {e}");
    for (backend, var, default) in [
        (Backend::Postgres, "CADRE_TEST_POSTGRES_URL", POSTGRES_URL),
        (Backend::Mysql, "CADRE_TEST_MYSQL_URL", MYSQL_URL),
    ] {
        let Some(admin) = server(var, default, backend).await else {
            continue;
        };
        on_fresh_database(backend, &admin, |url| {
            let config = config(&url);
            async move {
                let db = cadre::app::open_store(&config).await.expect("open");
                assert_eq!(db.backend(), backend);
                assert_eq!(db.tables().org_count().await.expect("orgs"), 0, "migrated");
                db.ping().await.expect("ping");
                db.close().await;
            }
        })
        .await;
    }
}

/// The export catalog names every table and column the migrations create
/// (SQLite's schema) and no other, and its kinds are PostgreSQL's types;
/// MySQL has the same columns (the test above) plus its generated one.
#[tokio::test]
async fn the_export_catalog_is_the_schema() {
    use cadre::store::transfer::{Kind, TABLES};
    let (sqlite, _) = sqlite_schema().await;
    let catalog: BTreeSet<(String, String)> = TABLES
        .iter()
        .flat_map(|t| {
            t.columns
                .iter()
                .map(|c| (t.name.to_string(), c.name.to_string()))
        })
        .collect();
    let missing: Vec<_> = sqlite.difference(&catalog).collect();
    let extra: Vec<_> = catalog.difference(&sqlite).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "transfer::TABLES lacks {missing:?} and has {extra:?} that the schema does not"
    );
    let Some(admin) = server("CADRE_TEST_POSTGRES_URL", POSTGRES_URL, Backend::Postgres).await
    else {
        return;
    };
    on_fresh_database(Backend::Postgres, &admin, |url| async move {
        backend::migrate(&url).await.expect("migrate");
        let mut c = PgConnection::connect(&url).await.expect("connect");
        for table in TABLES {
            for column in table.columns {
                let ty: String = sqlx::query_scalar(
                    "SELECT data_type::text FROM information_schema.columns \
                     WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
                )
                .bind(table.name)
                .bind(column.name)
                .fetch_one(&mut c)
                .await
                .expect("column type");
                let want = match column.kind {
                    Kind::Text => "text",
                    Kind::Int => "bigint",
                    Kind::Bool => "boolean",
                    Kind::Json => "jsonb",
                };
                assert_eq!(ty, want, "{}.{}", table.name, column.name);
            }
        }
    })
    .await;
}

/// An export read back: each table's rows, JSON documents parsed (a
/// PostgreSQL export prints `{"a": 1}` where SQLite kept `{"a":1}`), sorted.
fn read_export(
    dir: &std::path::Path,
) -> (
    cadre::store::transfer::Manifest,
    std::collections::BTreeMap<String, Vec<String>>,
) {
    use cadre::store::transfer::{Kind, TABLES};
    let manifest: cadre::store::transfer::Manifest = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let mut tables = std::collections::BTreeMap::new();
    for table in TABLES {
        let text =
            std::fs::read_to_string(dir.join(format!("{}.jsonl", table.name))).expect("table file");
        let mut rows: Vec<String> = text
            .lines()
            .map(|line| {
                let mut row: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(line).expect("row");
                for column in table.columns.iter().filter(|c| c.kind == Kind::Json) {
                    if let Some(serde_json::Value::String(doc)) = row.get(column.name) {
                        let doc: serde_json::Value = serde_json::from_str(doc).expect("json doc");
                        row.insert(column.name.to_string(), doc);
                    }
                }
                serde_json::Value::Object(row).to_string()
            })
            .collect();
        rows.sort();
        tables.insert(table.name.to_string(), rows);
    }
    (manifest, tables)
}

/// Two exports hold the same rows and id counters.
fn same_export(a: &std::path::Path, b: &std::path::Path, what: &str) {
    let (ma, ta) = read_export(a);
    let (mb, tb) = read_export(b);
    assert_eq!(
        ma.tables, mb.tables,
        "{what}: row counts or id counters differ"
    );
    for (table, rows) in &ta {
        assert_eq!(Some(rows), tb.get(table), "{what}: table {table} differs");
    }
}

const PASSWORD: &str = "correct-horse-battery";

/// A server on `dir` (SQLite in it), signed in as the bootstrap owner.
async fn serve(dir: &std::path::Path) -> (cadre::app::Running, reqwest::Client, String, String) {
    cadre::init_tls();
    let env = [
        ("CADRE_DATA_DIR", dir.display().to_string()),
        ("CADRE_LISTEN", "127.0.0.1:0".to_string()),
        ("CADRE_BOOTSTRAP_PASSWORD", PASSWORD.to_string()),
        ("CADRE_LOG__LEVEL", "warn".to_string()),
    ];
    let config =
        cadre::config::Config::load(None, env.map(|(k, v)| (k.to_string(), v))).expect("config");
    let running = cadre::app::start(config).await.expect("app starts");
    let base = format!("http://{}/api/v1", running.addr);
    let client = reqwest::Client::new();
    let login: serde_json::Value = client
        .post(format!("{base}/auth/login"))
        .json(&serde_json::json!({ "email": "admin@localhost", "password": PASSWORD }))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login json");
    let token = login["access_token"].as_str().expect("token").to_string();
    (running, client, base, token)
}

async fn call(
    client: &reqwest::Client,
    token: &str,
    method: reqwest::Method,
    url: String,
    body: Option<serde_json::Value>,
) -> (reqwest::StatusCode, serde_json::Value) {
    let mut request = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// The ids of the organization's activity, newest first.
async fn activity_ids(client: &reqwest::Client, token: &str, base: &str) -> Vec<i64> {
    let (_, page) = call(
        client,
        token,
        reqwest::Method::GET,
        format!("{base}/activity?limit=200"),
        None,
    )
    .await;
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["id"].as_i64().expect("id"))
        .collect()
}

/// Runs the built `cadre` binary with the data directory `data`.
fn cadre_cli(data: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cadre"))
        .args(args)
        .env("CADRE_DATA_DIR", data)
        .env_remove("CADRE_DATABASE_URL")
        .env("CADRE_LOG__LEVEL", "warn")
        .output()
        .expect("cadre runs");
    assert!(
        out.status.success(),
        "cadre {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A team starts on SQLite and moves: an installation used through the API
/// is exported by `cadre export`, imported into PostgreSQL, exported from
/// there, imported into MariaDB, exported again, and imported by `cadre
/// import` into a new SQLite file. Every export holds exactly the rows and
/// id counters of the first, and Cadre serves the last one as it served the
/// first: same sign-in, agents, activity, secrets, API key; new event ids
/// continue after the old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installation_moves_from_sqlite_to_postgres_to_mysql_and_back() {
    use reqwest::{Method, StatusCode};
    use serde_json::json;
    let Some(pg_admin) = server("CADRE_TEST_POSTGRES_URL", POSTGRES_URL, Backend::Postgres).await
    else {
        return;
    };
    let Some(my_admin) = server("CADRE_TEST_MYSQL_URL", MYSQL_URL, Backend::Mysql).await else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let first = work.path().join("first");

    // Use an installation: agents, users, a key, a secret, activity of
    // each typed kind.
    let (running, client, base, token) = serve(&first).await;
    let mut agents = Vec::new();
    for name in ["support", "research"] {
        let (s, agent) = call(
            &client,
            &token,
            Method::POST,
            format!("{base}/agents"),
            Some(json!({ "name": name, "role": "answers", "model": "gpt-4o",
                         "budget": { "monthly_cost_usd": 50 } })),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{agent}");
        agents.push(agent["id"].as_str().expect("id").to_string());
    }
    let (s, v) = call(
        &client,
        &token,
        Method::POST,
        format!("{base}/users"),
        Some(
            json!({ "email": "viewer@example.com", "name": "V", "password": PASSWORD,
                     "role": "viewer" }),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, key) = call(
        &client,
        &token,
        Method::POST,
        format!("{base}/api-keys"),
        Some(json!({ "name": "ci", "scopes": ["agents:read"] })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{key}");
    let key = key["key"].as_str().expect("key").to_string();
    let (s, v) = call(
        &client,
        &token,
        Method::PUT,
        format!("{base}/secrets/model-key"),
        Some(json!({ "value": "sk-moving-day" })),
    )
    .await;
    assert!(s.is_success(), "{v}");
    let (s, sent) = call(
        &client,
        &token,
        Method::POST,
        format!("{base}/activity"),
        Some(json!({ "events": [
            { "agent_id": agents[0], "kind": "tool_call",
              "payload": { "tool_id": "echo", "status": "ok", "call_id": "c1",
                           "arguments": { "q": "ü \"quoted\"", "token": "hidden" } } },
            { "agent_id": agents[0], "kind": "message",
              "payload": { "conversation_id": "conv-1", "role": "user", "content": "hello",
                           "title": "First" } },
            { "agent_id": agents[1], "kind": "note", "payload": null },
        ] })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{sent}");
    let before_ids = activity_ids(&client, &token, &base).await;
    running.shutdown().await;

    // SQLite → export (the CLI).
    let export_a = work.path().join("a");
    let said = cadre_cli(
        &first,
        &["export", "--out", export_a.to_str().expect("path")],
    );
    assert!(said.starts_with("sqlite: exported "), "{said}");
    let (manifest, rows) = read_export(&export_a);
    assert_eq!(manifest.source, "sqlite");
    assert_eq!(rows["agents"].len(), 2);
    assert_eq!(rows["users"].len(), 2);
    assert_eq!(rows["tool_calls"].len(), 1);
    assert_eq!(rows["conversations"].len(), 1);
    assert!(rows["audit_log"].len() >= 5, "{:?}", rows["audit_log"]);
    assert!(
        !std::fs::read_to_string(export_a.join("gov_docs.jsonl"))
            .expect("gov_docs")
            .contains("sk-moving-day"),
        "a secret is exported sealed, never in plain text"
    );
    // An export goes into an empty directory only.
    let again = cadre::store::transfer::export(
        &format!("sqlite://{}", first.join("cadre.db").display()),
        &export_a,
    )
    .await
    .expect_err("a second export into the same directory");
    assert!(again.to_string().contains("not empty"), "{again}");

    // → PostgreSQL → export → MariaDB → export.
    let export_b = work.path().join("b");
    let export_c = work.path().join("c");
    {
        let (a, b) = (export_a.clone(), export_b.clone());
        on_fresh_database(Backend::Postgres, &pg_admin, |url| async move {
            let report = cadre::store::transfer::import(&url, &a)
                .await
                .expect("import into postgres");
            assert!(
                report.to_string().starts_with("postgres: imported "),
                "{report}"
            );
            // A second import finds it populated and changes nothing.
            let e = cadre::store::transfer::import(&url, &a)
                .await
                .expect_err("import into a populated database");
            assert!(e.to_string().contains("not empty"), "{e}");
            cadre::store::transfer::export(&url, &b)
                .await
                .expect("export from postgres");
        })
        .await;
    }
    same_export(&export_a, &export_b, "sqlite → postgres");
    {
        let (b, c) = (export_b.clone(), export_c.clone());
        on_fresh_database(Backend::Mysql, &my_admin, |url| async move {
            cadre::store::transfer::import(&url, &b)
                .await
                .expect("import into mysql");
            cadre::store::transfer::export(&url, &c)
                .await
                .expect("export from mysql");
        })
        .await;
    }
    same_export(&export_a, &export_c, "postgres → mysql");

    // → a new SQLite installation (the CLI), with the instance's secrets
    // key carried along as the docs say.
    let last = work.path().join("last");
    std::fs::create_dir_all(&last).expect("dir");
    std::fs::copy(first.join("secrets.key"), last.join("secrets.key")).expect("secrets key");
    let said = cadre_cli(
        &last,
        &["import", "--from", export_c.to_str().expect("path")],
    );
    assert!(said.starts_with("sqlite: imported "), "{said}");
    let export_d = work.path().join("d");
    cadre_cli(
        &last,
        &["export", "--out", export_d.to_str().expect("path")],
    );
    same_export(&export_a, &export_d, "mysql → sqlite");

    // Cadre serves the moved installation as before.
    let (running, client, base, token) = serve(&last).await;
    let (s, list) = call(&client, &key, Method::GET, format!("{base}/agents"), None).await;
    assert_eq!(s, StatusCode::OK, "the API key still works: {list}");
    let mut ids: Vec<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    agents.sort();
    assert_eq!(ids, agents);
    let after_ids = activity_ids(&client, &token, &base).await;
    assert_eq!(
        after_ids[after_ids.len() - before_ids.len()..],
        before_ids[..]
    );
    let (_, calls) = call(
        &client,
        &token,
        Method::GET,
        format!("{base}/agents/{}/tool-calls", agents_with(&list, "support")),
        None,
    )
    .await;
    assert_eq!(
        calls["items"][0]["arguments"]["token"], "[redacted]",
        "{calls}"
    );
    assert_eq!(
        calls["items"][0]["arguments"]["q"], "ü \"quoted\"",
        "{calls}"
    );
    let (_, secrets) = call(
        &client,
        &token,
        Method::GET,
        format!("{base}/secrets"),
        None,
    )
    .await;
    assert!(secrets.to_string().contains("model-key"), "{secrets}");
    let highest = *before_ids.iter().max().expect("events");
    let (s, sent) = call(
        &client,
        &token,
        Method::POST,
        format!("{base}/activity"),
        Some(json!({ "events": [{ "kind": "note" }] })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{sent}");
    assert!(
        sent["first_id"].as_i64().expect("first_id") > highest,
        "new ids continue after the old ones: {sent}, highest before {highest}"
    );
    running.shutdown().await;
}

/// The id of the agent named `name` in an agents page.
fn agents_with(list: &serde_json::Value, name: &str) -> String {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|a| a["name"] == name)
        .and_then(|a| a["id"].as_str())
        .expect("agent")
        .to_string()
}

/// What an import refuses, and that a refused import leaves the database
/// empty: a manifest of another schema, a missing manifest, a truncated
/// file, a line that does not fit its table. Nothing was written each time
/// (the next, good import succeeds).
#[tokio::test]
async fn a_bad_export_is_refused_and_changes_nothing() {
    use cadre::store::transfer::{export, import};
    let work = tempfile::tempdir().expect("tempdir");
    let source = format!("sqlite://{}", work.path().join("s.db").display());
    backend::migrate(&source).await.expect("migrate");
    {
        let mut c = SqliteConnection::connect(&source).await.expect("connect");
        c.execute(
            "INSERT INTO orgs (id, name, created_at, slug, limits) VALUES ('o1', 'Org', 1, 'o1', '{\"agents\":3}'); \
             INSERT INTO activity (org_id, kind, payload, at, recorded_at) VALUES ('o1', 'k', 'null', 1, 1), ('o1', 'k', '[1,2]', 2, 2);",
        )
        .await
        .expect("rows");
    }
    let good = work.path().join("good");
    let manifest = export(&source, &good).await.expect("export");
    assert_eq!(manifest.tables["orgs"].rows, 1);
    assert_eq!(manifest.tables["activity"].rows, 2);
    assert_eq!(manifest.tables["activity"].last_id, Some(2));

    let target = format!("sqlite://{}", work.path().join("t.db").display());
    let copy = |name: &str, edit: &dyn Fn(&std::path::Path)| {
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        for entry in std::fs::read_dir(&good).expect("read") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
        }
        edit(&dir);
        dir
    };
    let rewrite = |dir: &std::path::Path, file: &str, f: &dyn Fn(String) -> String| {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, f(text)).expect("write");
    };
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (
            copy("schema", &|d| {
                rewrite(d, "manifest.json", &|t| {
                    t.replace(&format!("\"schema\": {}", manifest.schema), "\"schema\": 3")
                })
            }),
            "exported at schema 0003",
        ),
        (
            copy("nomanifest", &|d| {
                std::fs::remove_file(d.join("manifest.json")).expect("rm")
            }),
            "complete only once its manifest is written",
        ),
        (
            copy("truncated", &|d| {
                rewrite(d, "activity.jsonl", &|t| {
                    t.lines().next().expect("line").to_string() + "\n"
                })
            }),
            "the manifest says 2",
        ),
        (
            copy("badkind", &|d| {
                rewrite(d, "activity.jsonl", &|t| {
                    t.replacen("\"at\":1", "\"at\":\"soon\"", 1)
                })
            }),
            "line 1: column at: expected a 64-bit integer",
        ),
        (
            copy("badjson", &|d| {
                rewrite(d, "orgs.jsonl", &|t| {
                    t.replace("{\\\"agents\\\":3}", "{not json")
                })
            }),
            "column limits: not a JSON document",
        ),
        (
            copy("extra", &|d| {
                rewrite(d, "orgs.jsonl", &|t| {
                    t.replacen("{", "{\"colour\":\"red\",", 1)
                })
            }),
            "unknown column colour",
        ),
    ];
    for (dir, want) in cases {
        let e = import(&target, &dir)
            .await
            .expect_err(&format!("{} was imported", dir.display()));
        assert!(e.to_string().contains(want), "{}: {e}", dir.display());
    }
    // Nothing of those reached the database: the good export imports.
    let report = import(&target, &good).await.expect("the good export");
    assert_eq!(report.manifest.rows(), manifest.rows());
    let back = work.path().join("back");
    export(&target, &back).await.expect("export again");
    same_export(&good, &back, "sqlite → sqlite");
    // An export needs a migrated source.
    let empty = format!("sqlite://{}?mode=rwc", work.path().join("e.db").display());
    SqliteConnection::connect(&empty).await.expect("create");
    let e = export(&empty, &work.path().join("none"))
        .await
        .expect_err("unmigrated");
    assert!(e.to_string().contains("cadre migrate"), "{e}");
}
