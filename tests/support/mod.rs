//! Database servers for the tests: where they are, and a fresh database of
//! a test's own on each (random name, dropped after); the agent records the
//! store tests and benches insert.

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
            // FORCE ends the test's own connections; an autovacuum worker
            // (another role's) cannot be ended by it, so the drop is tried
            // again until that worker has finished, within a deadline.
            let mut c = PgConnection::connect(admin).await.expect("admin");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                match c.execute(format!("{drop} WITH (FORCE)").as_str()).await {
                    Ok(_) => break,
                    Err(e) if std::time::Instant::now() < deadline => {
                        eprintln!("drop database {name}: {e}; trying again");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("drop database {name}: {e}"),
                }
            }
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

/// A draft agent `id` named `name` of `org`, at epoch 1, usage period
/// 2026-11: what the store tests and benches insert.
pub fn agent_record(
    org: &cadre_actors::domain::OrgId,
    id: &str,
    name: &str,
) -> cadre_actors::domain::AgentRecord {
    use cadre_actors::budget::{BudgetLimits, Period, Usage};
    use cadre_actors::domain::{AgentId, AgentRecord, AgentSpec, DeployTarget, HealthOverrides};
    AgentRecord {
        id: AgentId(id.into()),
        org_id: org.clone(),
        spec: AgentSpec {
            name: name.into(),
            role: Some("answers".into()),
            model: Some("gpt-4o".into()),
            target: DeployTarget::Local,
            health: HealthOverrides::default(),
            budget: BudgetLimits::default(),
            profile: None,
            runtime: Default::default(),
            job: Default::default(),
        },
        state: cadre_actors::lifecycle::State::Draft,
        state_reason: None,
        restart_count: 0,
        usage: Usage::empty(Period::parse("2026-11").expect("period")),
        deployment_ref: None,
        runtime_token_hash: None,
        epoch: 1,
        created_at: 1,
        updated_at: 1,
    }
}

/// The history entry of a new agent.
/// The first version of `rec`'s definition, as a create writes it.
pub fn first_version(
    rec: &cadre_actors::domain::AgentRecord,
) -> cadre_actors::domain::AgentVersion {
    cadre_actors::domain::AgentVersion {
        agent_id: rec.id.clone(),
        org_id: rec.org_id.clone(),
        n: 1,
        definition: cadre_actors::domain::definition(&rec.spec),
        by: "system".into(),
        at: 1,
    }
}

pub fn created() -> cadre_actors::domain::Transition {
    cadre_actors::domain::Transition {
        from: None,
        to: cadre_actors::lifecycle::State::Draft,
        reason: Some("created".into()),
        by: "system".into(),
        at: 1,
    }
}
