//! Database servers for the tests: where they are, and a fresh database of
//! a test's own on each (random name, dropped after).

#![allow(dead_code)]

use cadre::store::backend::Backend;
use sqlx::{Connection, Executor, MySqlConnection, PgConnection};
use std::future::Future;

/// The PostgreSQL login the tests use by default (`.ci/services`).
pub const POSTGRES_URL: &str = "postgres://cadre:cadre@127.0.0.1:5432/postgres";
/// The MySQL / MariaDB login the tests use by default.
pub const MYSQL_URL: &str = "mysql://cadre:cadre@127.0.0.1:3306/mysql";

/// A server's admin URL from the environment, or `None` (skip) when it
/// cannot be reached and services are not required.
pub async fn server(var: &str, default: &str, backend: Backend) -> Option<String> {
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
pub fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("a URL with a database");
    format!("{base}/{name}")
}

/// Runs `body` on a fresh database of its own and drops it after, whether
/// the body passed or not.
pub async fn on_fresh_database<F, Fut>(backend: Backend, admin: &str, body: F)
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
