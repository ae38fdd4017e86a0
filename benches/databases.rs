//! The actors' ports on each backend: SQLite (a file), PostgreSQL and
//! MariaDB/MySQL (a fresh database each, dropped after).
//!
//! - create: `Store::insert_agent` (the agent, its history entry and audit
//!   entry in one transaction under the plan limit), one at a time (latency)
//!   and 64 in flight (throughput);
//! - hydrate: walk 100,000 live agents with `Store::org_page` in pages of
//!   500, as the supervisors do at start (the rows are seeded by plain
//!   multi-row inserts first);
//! - ingest: the activity writer's durable flush (`Tables::write_activity`,
//!   one transaction each, committed before it returns), 100,000 events of
//!   ~200 bytes with their typed records (a quarter tool calls, a quarter
//!   conversation messages), in flushes of 2,000 (a full batch, the
//!   writer's limit) and of 100 (light load);
//! - begin (servers only): an empty transaction (`BEGIN`, `COMMIT`) begun
//!   with sqlx's `pool.begin()` and with `cadre::store::begin`, which runs
//!   the `BEGIN` on a task of its own (see its docs): one at a time and 16
//!   in flight, the two ways alternating round by round;
//!
//! `cargo bench --bench databases` prints medians of 3 rounds;
//! `cargo bench --bench databases -- --test` is the CI smoke run (tiny
//! sizes). A server that cannot be reached is skipped with a note, unless
//! `CADRE_REQUIRE_SERVICES=1`. Servers: `CADRE_TEST_POSTGRES_URL`,
//! `CADRE_TEST_MYSQL_URL` (the tests' defaults otherwise).

#[path = "../tests/support/mod.rs"]
mod db;

use cadre::store::backend::Backend;
use cadre::store::server::{MySqlStore, PgStore};
use cadre::store::{Db, Durability, MessageRecord, NewActivity, Record, SqlStore, ToolCallRecord};
use cadre_actors::audit::AuditEntry;
use cadre_actors::domain::{AgentId, AgentRecord, OrgId, Who};
use cadre_actors::ports::{AgentInsert, Store};
use sqlx::{Connection, Executor, MySqlConnection, PgConnection, SqliteConnection};
use std::sync::Arc;
use std::time::Instant;

struct Sizes {
    serial: usize,
    concurrent: usize,
    hydrate: usize,
    ingest: usize,
    rounds: usize,
}

/// `n` activity events of organization `bench` as agents report them.
fn activity(n: usize, round: usize) -> Vec<NewActivity> {
    (0..n)
        .map(|i| {
            let agent = format!("bench-agent-{}", i % 50);
            let (kind, record) = match i % 4 {
                0 => (
                    "tool_call",
                    Some(Record::ToolCall(ToolCallRecord {
                        tool_id: "http_get".into(),
                        status: if i % 20 == 0 { "error" } else { "ok" }.into(),
                        tokens: 120,
                        cost_micros: 40,
                    })),
                ),
                1 => (
                    "message",
                    Some(Record::Message(MessageRecord {
                        conversation_id: format!("conv-{round}-{}", i % 200),
                        title: None,
                        tokens: 60,
                    })),
                ),
                _ => ("step", None),
            };
            NewActivity {
                org_id: "bench".into(),
                agent_id: Some(agent),
                kind: kind.into(),
                payload: serde_json::json!({
                    "i": i,
                    "round": round,
                    "text": "the agent looked the order up and answered the customer",
                    "arguments": { "url": "https://example.com/orders/12345" },
                })
                .to_string(),
                at: 1_764_000_000_000 + i as i64,
                record,
            }
        })
        .collect()
}

/// Events per second through durable flushes of `batch` rows, and the
/// median flush.
async fn ingest(db: &Db, sizes: &Sizes, batch: usize, flush_ids: &mut i64) -> (f64, f64) {
    let (mut rates, mut p50s) = (Vec::new(), Vec::new());
    for round in 0..sizes.rounds {
        let rows = activity(sizes.ingest, round);
        let mut latencies = Vec::new();
        let started = Instant::now();
        for chunk in rows.chunks(batch) {
            let refs: Vec<&NewActivity> = chunk.iter().collect();
            *flush_ids += 1;
            let t = Instant::now();
            let f = db
                .tables()
                .write_activity(*flush_ids, &refs, 1)
                .await
                .expect("flush");
            assert!(!f.replayed);
            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        rates.push(sizes.ingest as f64 / started.elapsed().as_secs_f64());
        p50s.push(median(latencies));
    }
    (median(rates), median(p50s))
}

fn record(org: &OrgId, i: usize, round: usize) -> AgentRecord {
    db::agent_record(
        org,
        &format!("bench-{round}-{i:07}"),
        &format!("agent {round}-{i}"),
    )
}

async fn create(store: &dyn Store, rec: &AgentRecord) {
    let created = db::created();
    let audit = AuditEntry::new(
        &rec.org_id,
        &Who::system(),
        "agent.create",
        format!("agent:{}", rec.id),
        serde_json::json!({ "name": rec.spec.name }),
        1,
    );
    store
        .insert_agent(AgentInsert {
            record: rec,
            created: &created,
            audit: &audit,
            max_agents: Some(10_000_000),
            version: &db::first_version(rec),
        })
        .await
        .expect("insert");
}

/// Runs raw SQL on a connection of its own.
async fn execute(backend: Backend, url: &str, sql: &str) {
    match backend {
        Backend::Sqlite => {
            let mut c = SqliteConnection::connect(url).await.expect("connect");
            c.execute(sql).await.expect("sql");
        }
        Backend::Postgres => {
            let mut c = PgConnection::connect(url).await.expect("connect");
            c.execute(sql).await.expect("sql");
        }
        Backend::Mysql => {
            let mut c = MySqlConnection::connect(url).await.expect("connect");
            c.execute(sql).await.expect("sql");
        }
    }
}

/// Seeds `n` live agents of organization `org` by multi-row inserts.
async fn seed(backend: Backend, url: &str, org: &str, n: usize) {
    execute(
        backend,
        url,
        &format!(
            "INSERT INTO orgs (id, name, created_at, slug) VALUES ('{org}', '{org}', 1, '{org}')"
        ),
    )
    .await;
    for start in (0..n).step_by(1000) {
        let rows: Vec<String> = (start..(start + 1000).min(n))
            .map(|i| {
                format!(
                    "('{org}-{i:07}', '{org}', 'agent {i}', 'answers', 'gpt-4o', 'local', 'running', \
                     '2026-12', 1, 1, 1)"
                )
            })
            .collect();
        execute(
            backend,
            url,
            &format!(
                "INSERT INTO agents (id, org_id, name, role, model, target, state, usage_period, \
                 epoch, created_at, updated_at) VALUES {}",
                rows.join(", ")
            ),
        )
        .await;
    }
    execute(
        backend,
        url,
        &format!("UPDATE orgs SET agent_count = {n} WHERE id = '{org}'"),
    )
    .await;
}

/// Empty transactions per second, `n` of them over `width` tasks, begun
/// with `pool.begin()` (`spawned == false`) or `cadre::store::begin`.
async fn begins<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    n: usize,
    width: usize,
    spawned: bool,
) -> f64 {
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..width {
        let (pool, next) = (pool.clone(), next.clone());
        tasks.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let tx = if spawned {
                    cadre::store::begin(&pool).await
                } else {
                    pool.begin().await
                };
                tx.expect("begin").commit().await.expect("commit");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// `begins` both ways, one at a time and 16 in flight, alternating.
async fn measure_begins<DB: sqlx::Database>(name: &str, url: &str, sizes: &Sizes) {
    let pool = sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(16)
        .connect(url)
        .await
        .expect("connect");
    let mut figures = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..sizes.rounds {
        for (i, (width, spawned)) in [(1, false), (1, true), (16, false), (16, true)]
            .into_iter()
            .enumerate()
        {
            let n = sizes.serial * width.min(4);
            figures[i].push(begins(&pool, n, width, spawned).await);
        }
    }
    let [a, b, c, d] = figures.map(median);
    println!(
        "{name}: empty transactions one at a time {a:.0}/s with pool.begin(), {b:.0}/s with \
         cadre::store::begin ({:.2}x); 16 in flight {c:.0}/s and {d:.0}/s ({:.2}x)",
        b / a,
        d / c
    );
    pool.close().await;
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The figures of one backend.
async fn measure(name: &str, db: Db, backend: Backend, url: &str, sizes: &Sizes) {
    let store = db.store();
    let org = OrgId("bench".into());
    execute(
        backend,
        url,
        "INSERT INTO orgs (id, name, created_at, slug) VALUES ('bench', 'bench', 1, 'bench')",
    )
    .await;
    let (mut serial, mut p50s, mut parallel) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..sizes.rounds {
        let mut latencies = Vec::with_capacity(sizes.serial);
        let started = Instant::now();
        for i in 0..sizes.serial {
            let rec = record(&org, i, round);
            let t = Instant::now();
            create(&*store, &rec).await;
            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        serial.push(sizes.serial as f64 / started.elapsed().as_secs_f64());
        p50s.push(median(latencies));

        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..64 {
            let (store, next, org) = (store.clone(), next.clone(), org.clone());
            let total = sizes.concurrent;
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    create(&*store, &record(&org, 1_000_000 + i, round)).await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task");
        }
        parallel.push(sizes.concurrent as f64 / started.elapsed().as_secs_f64());
    }

    let hydrated = OrgId("hydrate".into());
    seed(backend, url, "hydrate", sizes.hydrate).await;
    let mut walks = Vec::new();
    for _ in 0..sizes.rounds {
        let started = Instant::now();
        let mut after: Option<AgentId> = None;
        let mut seen = 0;
        loop {
            let page = store
                .org_page(&hydrated, after.as_ref(), 500)
                .await
                .expect("page");
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            seen += page.len();
        }
        assert_eq!(seen, sizes.hydrate, "every agent read once");
        walks.push(started.elapsed().as_secs_f64());
    }
    let mut flush_ids = 0;
    let (full, full_p50) = ingest(&db, sizes, 2_000, &mut flush_ids).await;
    let (light, light_p50) = ingest(&db, sizes, 100, &mut flush_ids).await;
    let stored = db
        .tables()
        .activity_count("bench", None)
        .await
        .expect("count");
    assert_eq!(
        stored as usize,
        2 * sizes.rounds * sizes.ingest,
        "every event stored once"
    );
    println!(
        "{name}: create one at a time {:.0}/s (p50 {:.2} ms), 64 in flight {:.0}/s; \
         hydrate {} agents {:.2} s; ingest {:.0} events/s in flushes of 2,000 (p50 {:.1} ms), \
         {:.0}/s in flushes of 100 (p50 {:.2} ms)",
        median(serial),
        median(p50s),
        median(parallel),
        sizes.hydrate,
        median(walks),
        full,
        full_p50,
        light,
        light_p50
    );
    db.close().await;
}

fn main() {
    let test = std::env::args().any(|a| a == "--test");
    let sizes = if test {
        println!("smoke run (tiny sizes): figures below are not measurements; see BENCHMARKS.md");
        Sizes {
            serial: 20,
            concurrent: 100,
            hydrate: 1_500,
            ingest: 4_000,
            rounds: 1,
        }
    } else {
        Sizes {
            serial: 1_000,
            concurrent: 5_000,
            hydrate: 100_000,
            ingest: 100_000,
            rounds: 3,
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        let store = SqlStore::open(&url, Durability::Normal, 4)
            .await
            .expect("open");
        store.migrate().await.expect("migrate");
        measure("sqlite", store.into(), Backend::Sqlite, &url, &sizes).await;

        if let Some(admin) = db::server(
            "CADRE_TEST_POSTGRES_URL",
            db::POSTGRES_URL,
            Backend::Postgres,
        )
        .await
        {
            let sizes = &sizes;
            db::on_fresh_database(Backend::Postgres, &admin, |url| async move {
                let store = PgStore::connect(&url, 16).await.expect("connect");
                store.migrate().await.expect("migrate");
                measure("postgres", store.into(), Backend::Postgres, &url, sizes).await;
                measure_begins::<sqlx::Postgres>("postgres", &url, sizes).await;
            })
            .await;
        }
        if let Some(admin) = db::server("CADRE_TEST_MYSQL_URL", db::MYSQL_URL, Backend::Mysql).await
        {
            let sizes = &sizes;
            db::on_fresh_database(Backend::Mysql, &admin, |url| async move {
                let store = MySqlStore::connect(&url, 16).await.expect("connect");
                store.migrate().await.expect("migrate");
                measure("mysql", store.into(), Backend::Mysql, &url, sizes).await;
                measure_begins::<sqlx::MySql>("mysql", &url, sizes).await;
            })
            .await;
        }
    });
}
