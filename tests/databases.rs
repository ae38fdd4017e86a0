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

use cadre::store::backend::{self, Backend, MYSQL, POSTGRES, SQLITE};
use sqlx::{Connection, Executor, MySqlConnection, PgConnection, Row, SqliteConnection};
use std::collections::BTreeSet;
use std::future::Future;

const POSTGRES_URL: &str = "postgres://cadre:cadre@127.0.0.1:5432/postgres";
const MYSQL_URL: &str = "mysql://cadre:cadre@127.0.0.1:3306/mysql";

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

/// A server's admin URL from the environment, or `None` (skip) when it
/// cannot be reached and services are not required.
async fn server(var: &str, default: &str, backend: Backend) -> Option<String> {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_string());
    let reached = match backend {
        Backend::Postgres => PgConnection::connect(&url).await.map(drop),
        Backend::Mysql => MySqlConnection::connect(&url).await.map(drop),
        Backend::Sqlite => Ok(()),
    };
    match reached {
        Ok(()) => Some(url),
        Err(e) if std::env::var("CADRE_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("{var}: {e} (CADRE_REQUIRE_SERVICES=1; run .ci/services)")
        }
        Err(e) => {
            eprintln!("skipped: no {} server at {var} ({e})", backend.dialect());
            None
        }
    }
}

/// The admin URL with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{name}")
}

/// Runs `body` on a fresh database of its own and drops it after, whether
/// the body passed or not.
async fn on_fresh_database<F, Fut>(backend: Backend, admin: &str, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    use futures_util::FutureExt;
    let name = format!(
        "cadre_test_{}",
        uuid::Uuid::now_v7()
            .simple()
            .to_string()
            .get(20..)
            .expect("uuid")
    );
    let create = format!("CREATE DATABASE {name}");
    let drop = format!("DROP DATABASE IF EXISTS {name}");
    match backend {
        Backend::Postgres => {
            let mut c = PgConnection::connect(admin).await.expect("admin");
            c.execute(create.as_str()).await.expect("create database");
        }
        _ => {
            let mut c = MySqlConnection::connect(admin).await.expect("admin");
            c.execute(create.as_str()).await.expect("create database");
        }
    }
    let outcome = std::panic::AssertUnwindSafe(body(with_database(admin, &name)))
        .catch_unwind()
        .await;
    match backend {
        Backend::Postgres => {
            let mut c = PgConnection::connect(admin).await.expect("admin");
            c.execute(format!("{drop} WITH (FORCE)").as_str())
                .await
                .expect("drop database");
        }
        _ => {
            let mut c = MySqlConnection::connect(admin).await.expect("admin");
            c.execute(drop.as_str()).await.expect("drop database");
        }
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
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

#[tokio::test]
async fn serve_refuses_a_backend_it_cannot_serve_yet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        (
            "CADRE_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        (
            "CADRE_DATABASE_URL".to_string(),
            "postgres://cadre:cadre@127.0.0.1:1/cadre".to_string(),
        ),
    ];
    let config = cadre::config::Config::load(None, env).expect("config");
    let Err(e) = cadre::app::open_store(&config).await else {
        panic!("served on a PostgreSQL URL");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("postgres database") && e.contains("cannot serve on it yet"),
        "{e}"
    );
}
