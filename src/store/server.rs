//! PostgreSQL and MySQL / MariaDB: the actors' ports (`Store`, `GovStore`,
//! `TaskStore`)
//! over the schemas of `migrations/postgres/` and `migrations/mysql/`, one
//! implementation for both servers ([`ServerStore`], generic over the
//! [`Dialect`] that says where their SQL differs).
//!
//! This is the first part of those backends: agents (inserts under the plan
//! limit, fenced writes, usage reports counted once, claims, hydration
//! pages), approvals and their compare-and-swap, votes, grants, governance
//! documents and kill switches (`GovStore`), tasks and their steps
//! (`TaskStore`). It passes the port conformance suite
//! (`tests/ports.rs`) that SQLite's store passes, concurrency tests
//! included. The identity and audit tables ([`super::Tables`]) run on
//! every [`Dialect`], SQLite's among them. `cadre serve` does not run on the
//! servers yet: the activity and schedule stores and the HTTP layer's reads
//! (tasks' pages among them) are still SQLite's (`docs/databases.md`).
//!
//! A write that loses its connection (or meets a deadlock) before its
//! commit is tried again on a new connection (`retry`); a commit whose
//! answer is lost is not, since it may have been applied.
//!
//! Where SQLite serializes every write through one connection, a server runs
//! transactions side by side, so each guarantee rests on a row lock
//! instead: the organization's row for the agent limit (`UPDATE … WHERE
//! agent_count + 1 <= max`), the agent's row for fencing (`WHERE epoch =`),
//! the approval's row for the compare-and-swap (`UPDATE … WHERE state =
//! 'pending' AND level =` re-checks its condition once a concurrent writer
//! commits), and the usage report's primary key, inserted first, for
//! counting a report once (the second of two concurrent inserts waits for
//! the first and then meets the duplicate key).
//!
//! Reads cast what a server stores as `BOOLEAN` or `JSON(B)` to integers and
//! text, so the row decoders of the SQLite store serve here too; writes bind
//! flags as booleans and JSON documents as text (cast to `JSONB` on
//! PostgreSQL). Paging by id compares in byte order, as SQLite does
//! (`COLLATE "C"` on PostgreSQL; MySQL's columns are `utf8mb4_bin`).

use super::governance::grant_row;
use super::sqlite::{AgentRow, agent_from_row, classify, unavailable};
use super::{DecodeRow, to_i64};
use cadre_actors::approval::{ApprovalRecord, Vote};
use cadre_actors::audit::AuditEntry;
use cadre_actors::domain::{AgentEvent, AgentId, AgentRecord, OrgId, Transition};
use cadre_actors::governance::{Grant, HaltScope};
use cadre_actors::ports::{
    AgentInsert, AgentWrite, Cas, GovDoc, GovStore, Store, StoreError, WriteOutcome,
};
use cadre_actors::task::{TaskRecord, TaskStep, TaskStore};
use sqlx::pool::PoolOptions;
use sqlx::{Database, Pool};
use std::time::Duration;

/// Where the SQL of PostgreSQL and MySQL differs. Statements are written
/// with `?` placeholders and these fragments.
pub trait Dialect: Database {
    /// The backend's name in errors.
    const NAME: &'static str;
    /// Follows a placeholder that carries a JSON document.
    const JSON: &'static str;
    /// Follows an id that is compared or ordered by: byte order.
    const BYTES: &'static str;
    /// The `trigger` column (a reserved word in MySQL).
    const TRIGGER: &'static str;
    /// Whether `UPDATE … RETURNING` exists.
    const RETURNING: bool;
    /// Follows `FROM agents` in a hydration page.
    const BY_ORG_AND_ID: &'static str;
    /// Follows a `SELECT` whose rows the transaction goes on to change:
    /// locks them until it ends (SQLite's one writer needs no lock).
    const FOR_UPDATE: &'static str;
    /// A statement's placeholders as the dialect writes them.
    fn sql(statement: &str) -> String;
    /// A flag column read back as a 64-bit integer, named as itself.
    fn flag(column: &str) -> String;
    /// A JSON column read back as text, named as itself.
    fn json(column: &str) -> String;
    /// An integer expression (a count, a sum) read back as a 64-bit
    /// integer (sums are `NUMERIC` on PostgreSQL, `DECIMAL` on MySQL).
    fn int(expr: &str) -> String;
    /// What follows `INSERT …` to update the row whose key is taken.
    fn upsert(keys: &str) -> String;
    /// The value an upsert tried to insert into `column`.
    fn inserted(column: &str) -> String;
    /// What follows `INSERT …` to keep the row whose key is taken as it is
    /// (`column` is any column of the table).
    fn keep_existing(keys: &str, column: &str) -> String;
    /// Rows a statement changed (or matched).
    fn rows_affected(result: &Self::QueryResult) -> u64;
    /// The embedded migrations.
    fn migrator() -> &'static sqlx::migrate::Migrator;
    /// How the activity table's ids are handed out.
    const SERIAL: Serial;
    /// The text of the top-level `key` of the JSON `column`.
    fn json_text(column: &str, key: &str) -> String;
}

/// How a dialect hands out the increasing ids of a serial column (the
/// activity table's): the flush reserves a consecutive run and inserts its
/// rows with explicit ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serial {
    /// SQLite's `AUTOINCREMENT`: an explicit id advances `sqlite_sequence`,
    /// which holds the highest id ever used; the one writer connection
    /// serializes flushes.
    SqliteSequence,
    /// PostgreSQL's identity sequence: explicit ids do not advance it, so the
    /// flush takes the run with `nextval` and `setval` under a transaction
    /// advisory lock (two processes never take overlapping runs).
    PgSequence,
    /// MySQL's `AUTO_INCREMENT`: the first row is inserted without an id and
    /// `LAST_INSERT_ID()` names it; explicit ids after it advance the
    /// counter. A concurrent writer in another process that takes an id of
    /// the run makes the flush fail on the key (it is retried, not lost).
    AutoIncrement,
}

impl Dialect for sqlx::Postgres {
    const NAME: &'static str = "postgres";
    const JSON: &'static str = "::JSONB";
    const BYTES: &'static str = " COLLATE \"C\"";
    const TRIGGER: &'static str = "trigger";
    const RETURNING: bool = true;
    const BY_ORG_AND_ID: &'static str = "";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    fn sql(statement: &str) -> String {
        let mut out = String::with_capacity(statement.len() + 16);
        let mut n = 0;
        for c in statement.chars() {
            if c == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(c);
            }
        }
        out
    }
    fn flag(column: &str) -> String {
        format!("{column}::INT::BIGINT AS {column}")
    }
    fn json(column: &str) -> String {
        format!("{column}::TEXT AS {column}")
    }
    fn int(expr: &str) -> String {
        format!("CAST({expr} AS BIGINT)")
    }
    fn upsert(keys: &str) -> String {
        format!("ON CONFLICT ({keys}) DO UPDATE SET")
    }
    fn inserted(column: &str) -> String {
        format!("EXCLUDED.{column}")
    }
    fn keep_existing(keys: &str, _column: &str) -> String {
        format!("ON CONFLICT ({keys}) DO NOTHING")
    }
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
    fn migrator() -> &'static sqlx::migrate::Migrator {
        &super::backend::POSTGRES
    }
    const SERIAL: Serial = Serial::PgSequence;
    fn json_text(column: &str, key: &str) -> String {
        format!("{column} ->> '{key}'")
    }
}

impl Dialect for sqlx::MySql {
    const NAME: &'static str = "mysql";
    const JSON: &'static str = "";
    const BYTES: &'static str = "";
    const TRIGGER: &'static str = "`trigger`";
    const RETURNING: bool = false;
    // MariaDB reads `org_id = ? AND id > ?` as a lookup of the whole
    // organization, filtered row by row, unless told to use the range: 9 ms
    // a page in the middle of 100,000 agents, 2.04 s for all (0.62 s with it).
    const BY_ORG_AND_ID: &'static str = " FORCE INDEX (agents_org_id)";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    fn sql(statement: &str) -> String {
        statement.to_string()
    }
    fn flag(column: &str) -> String {
        format!("CAST({column} AS SIGNED) AS {column}")
    }
    fn json(column: &str) -> String {
        format!("CAST({column} AS CHAR) AS {column}")
    }
    fn int(expr: &str) -> String {
        format!("CAST({expr} AS SIGNED)")
    }
    fn upsert(_keys: &str) -> String {
        "ON DUPLICATE KEY UPDATE".to_string()
    }
    fn inserted(column: &str) -> String {
        format!("VALUES({column})")
    }
    fn keep_existing(_keys: &str, column: &str) -> String {
        format!("ON DUPLICATE KEY UPDATE {column} = {column}")
    }
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        // sqlx asks for CLIENT_FOUND_ROWS: matched rows, not changed ones,
        // so a fenced write that changes nothing still counts.
        result.rows_affected()
    }
    fn migrator() -> &'static sqlx::migrate::Migrator {
        &super::backend::MYSQL
    }
    const SERIAL: Serial = Serial::AutoIncrement;
    fn json_text(column: &str, key: &str) -> String {
        format!("JSON_UNQUOTE(JSON_EXTRACT({column}, '$.{key}'))")
    }
}

/// SQLite: the SQL the statements are written in. Flags are integers and
/// JSON is text already; ids compare in byte order (`BINARY`) by default.
impl Dialect for sqlx::Sqlite {
    const NAME: &'static str = "sqlite";
    const JSON: &'static str = "";
    const BYTES: &'static str = "";
    const TRIGGER: &'static str = "trigger";
    const RETURNING: bool = true;
    const BY_ORG_AND_ID: &'static str = "";
    const FOR_UPDATE: &'static str = "";
    fn sql(statement: &str) -> String {
        statement.to_string()
    }
    fn flag(column: &str) -> String {
        column.to_string()
    }
    fn json(column: &str) -> String {
        column.to_string()
    }
    fn int(expr: &str) -> String {
        expr.to_string()
    }
    fn upsert(keys: &str) -> String {
        format!("ON CONFLICT ({keys}) DO UPDATE SET")
    }
    fn inserted(column: &str) -> String {
        format!("excluded.{column}")
    }
    fn keep_existing(keys: &str, _column: &str) -> String {
        format!("ON CONFLICT ({keys}) DO NOTHING")
    }
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }
    fn migrator() -> &'static sqlx::migrate::Migrator {
        &super::backend::SQLITE
    }
    const SERIAL: Serial = Serial::SqliteSequence;
    fn json_text(column: &str, key: &str) -> String {
        format!("json_extract({column}, '$.{key}')")
    }
}

/// The actors' ports on PostgreSQL.
pub type PgStore = ServerStore<sqlx::Postgres>;
/// The actors' ports on MySQL or MariaDB.
pub type MySqlStore = ServerStore<sqlx::MySql>;

/// The actors' ports on a database server.
#[derive(Debug)]
pub struct ServerStore<D: Database> {
    pool: Pool<D>,
}

impl<D: Database> ServerStore<D> {
    /// Its pool (the knowledge index's pgvector queries).
    pub fn pool(&self) -> &Pool<D> {
        &self.pool
    }
}

impl<D: Database> Clone for ServerStore<D> {
    fn clone(&self) -> Self {
        ServerStore {
            pool: self.pool.clone(),
        }
    }
}

fn unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|db| db.is_unique_violation())
}

/// How one try of a write ended, when not in success.
pub(super) enum Attempt {
    /// Failed before its commit was sent, for a reason that passes (the
    /// connection was lost, the server restarted, a deadlock was broken):
    /// nothing of it was committed, so it is tried again.
    Retry(sqlx::Error),
    /// The answer to give.
    Done(StoreError),
}

impl From<StoreError> for Attempt {
    fn from(e: StoreError) -> Self {
        Attempt::Done(e)
    }
}

/// Whether an error means the connection or the transaction was lost,
/// not that the statement was refused: I/O and protocol errors, SQLSTATE
/// class 08 (connection exception), 57P01-57P03 (PostgreSQL shutting down
/// or terminating the backend), 70100 (MariaDB: connection killed), 40001
/// and 40P01 (serialization failure, deadlock: rolled back).
fn passing(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || matches!(
                    &*code,
                    "57P01" | "57P02" | "57P03" | "70100" | "40001" | "40P01"
                )
        }),
        _ => false,
    }
}

/// A statement's error inside a write: retried when it passes.
pub(super) fn stmt(e: sqlx::Error) -> Attempt {
    if passing(&e) {
        Attempt::Retry(e)
    } else {
        Attempt::Done(unavailable(e))
    }
}

/// Like [`stmt`], a unique key violation being a `Conflict`.
pub(super) fn stmt_classify(e: sqlx::Error) -> Attempt {
    if passing(&e) {
        Attempt::Retry(e)
    } else {
        Attempt::Done(classify(e))
    }
}

/// A commit's error is never retried: the commit may have reached the
/// server, and the caller hears `Unavailable` (the actors treat it as a
/// failed write and reload what the database holds).
pub(super) fn at_commit(e: sqlx::Error) -> Attempt {
    Attempt::Done(unavailable(e))
}

/// Tries before a passing failure is given up as `Unavailable`.
const TRIES: u32 = 4;

/// Runs a write, trying it again (after 20, 80, 320 ms) while it fails
/// before its commit for a reason that passes.
pub(super) async fn retry<T, F, Fut>(op: F) -> Result<T, StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Attempt>>,
{
    let mut wait = Duration::from_millis(20);
    let mut tries = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(Attempt::Done(e)) => return Err(e),
            Err(Attempt::Retry(e)) if tries < TRIES => {
                metrics::counter!("cadre_store_retries_total").increment(1);
                tracing::warn!(error = %e, tries, "database connection lost during a write; trying again");
                tokio::time::sleep(wait).await;
                wait *= 4;
                tries += 1;
            }
            Err(Attempt::Retry(e)) => return Err(unavailable(e)),
        }
    }
}

/// An agent's runtime settings as stored: NULL for the defaults.
fn runtime_json(r: &cadre_actors::domain::RuntimeSpec) -> Option<String> {
    (!r.is_default())
        .then(|| serde_json::to_string(r).ok())
        .flatten()
}

fn agent_columns<D: Dialect>() -> String {
    format!(
        "id, org_id, name, role, model, target, health_interval_ms, health_failure_threshold, \
         budget_tokens, budget_cost_micros, state, state_reason, restart_count, usage_tokens, \
         usage_cost_micros, usage_period, {}, deployment_ref, runtime_token_hash, epoch, \
         created_at, updated_at, profile, budget_period, {}, {}",
        D::flag("usage_warned"),
        D::json("runtime"),
        D::json("job")
    )
}

pub(super) fn approval_columns<D: Dialect>() -> String {
    format!(
        "id, org_id, agent_id, call_id, tool, args_hash, {}, {}, policy, {}, level, state, {}, \
         requested_by, created_at, expires_at, decided_by, decided_at, comment, grant_id",
        D::json("arguments"),
        D::TRIGGER,
        D::json("levels"),
        D::flag("outcome")
    )
}

pub(super) const GRANT_COLUMNS: &str =
    "id, org_id, agent_id, tool, args_hash, approval_id, granted_by, created_at, expires_at";

/// The task columns with JSON read back as text.
pub(super) fn task_columns<D: Dialect>() -> String {
    super::tasks::COLUMNS
        .replace("input,", &format!("{},", D::json("input")))
        .replace("limits,", &format!("{},", D::json("limits")))
}

use super::tables::Query;

on_dialects! {
    impl<D> ServerStore<D> {
        /// Connects to `url` with at most `connections` connections.
        /// Migrations are applied by [`ServerStore::migrate`].
        pub async fn connect(url: &str, connections: u32) -> Result<Self, sqlx::Error> {
            // One connection of its own first: an unreachable server or a
            // refused login is reported at once, where the pool would keep
            // trying for its whole acquire timeout.
            let url = &super::backend::mysql_url(url);
            sqlx::Connection::close(<D::Connection as sqlx::Connection>::connect(url).await?).await?;
            let pool = PoolOptions::<D>::new()
                .max_connections(connections.max(2))
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?;
            Ok(ServerStore { pool })
        }

        /// Applies pending migrations (embedded in the binary).
        pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError>
        where
            D::Connection: sqlx::migrate::Migrate,
        {
            D::migrator().run(&self.pool).await
        }

        /// The tables kept the same way on every backend (identity, audit,
        /// schedules, the HTTP layer's reads).
        pub fn tables(&self) -> super::tables::Tables<D> {
            super::tables::Tables::new(self.pool.clone(), self.pool.clone())
        }

        /// Closes the pool.
        pub async fn close(&self) {
            self.pool.close().await;
        }

        /// The stored record of a live agent.
        pub async fn load_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
            let sql = format!(
                "SELECT {} FROM agents WHERE id = ? AND deleted_at IS NULL",
                agent_columns::<D>()
            );
            let row = super::tables::Tables::<D>::row_on(&self.pool, &sql, &[id]).await?;
            row.as_ref().map(agent_from_row).transpose()
        }

        async fn begin(&self) -> Result<sqlx::Transaction<'static, D>, Attempt> {
            super::begin(&self.pool).await.map_err(stmt)
        }

        /// Runs a statement, returning the rows it changed.
        async fn run<'q>(conn: &mut D::Connection, query: Query<'q, D>) -> Result<u64, sqlx::Error> {
            let done = query.execute(conn).await?;
            Ok(D::rows_affected(&done))
        }



        async fn insert_audit(conn: &mut D::Connection, a: &AuditEntry) -> Result<(), Attempt> {
            super::tables::Tables::<D>::insert_audit(conn, a)
                .await
                .map_err(stmt)
        }

        async fn insert_version(
            conn: &mut D::Connection,
            v: &cadre_actors::domain::AgentVersion,
        ) -> Result<(), Attempt> {
            let sql = D::sql(&format!(
                "INSERT INTO agent_versions (agent_id, n, org_id, definition, by_who, at) \
                 VALUES (?, ?, ?, ?{}, ?, ?)",
                D::JSON
            ));
            let query = sqlx::query(&sql)
                .bind(v.agent_id.as_str())
                .bind(i64::from(v.n))
                .bind(v.org_id.as_str())
                .bind(v.definition.to_string())
                .bind(v.by.as_str())
                .bind(v.at);
            Self::run(conn, query).await.map(|_| ()).map_err(stmt)
        }

        async fn insert_transition(
            conn: &mut D::Connection,
            rec: &AgentRecord,
            t: &Transition,
        ) -> Result<(), Attempt> {
            let sql = D::sql(
                "INSERT INTO agent_transitions (agent_id, org_id, from_state, to_state, reason, by_who, at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            );
            let query = sqlx::query(&sql)
                .bind(rec.id.as_str())
                .bind(rec.org_id.as_str())
                .bind(t.from.map(|s| s.as_str()))
                .bind(t.to.as_str())
                .bind(t.reason.as_deref())
                .bind(t.by.as_str())
                .bind(t.at);
            Self::run(conn, query).await.map(|_| ()).map_err(stmt)
        }

        async fn insert_event(
            conn: &mut D::Connection,
            rec: &AgentRecord,
            ev: &AgentEvent,
        ) -> Result<(), Attempt> {
            let sql = D::sql(&format!(
                "INSERT INTO agent_events (agent_id, org_id, kind, detail, at) VALUES (?, ?, ?, ?{}, ?)",
                D::JSON
            ));
            let query = sqlx::query(&sql)
                .bind(rec.id.as_str())
                .bind(rec.org_id.as_str())
                .bind(ev.kind.as_str())
                .bind(ev.detail.to_string())
                .bind(ev.at);
            Self::run(conn, query).await.map(|_| ()).map_err(stmt)
        }

        async fn insert_vote(conn: &mut D::Connection, id: &str, v: &Vote) -> Result<(), Attempt> {
            let sql = D::sql(
                "INSERT INTO approval_votes (approval_id, level, user_id, approve, comment, at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            );
            let query = sqlx::query(&sql)
                .bind(id)
                .bind(i64::from(v.level))
                .bind(v.by.as_str())
                .bind(v.approve)
                .bind(v.comment.as_deref())
                .bind(v.at);
            Self::run(conn, query)
                .await
                .map(|_| ())
                .map_err(stmt_classify)
        }

        /// The agent row's columns after `id`, as an `UPDATE … SET` or in
        /// `INSERT` order, bound on `query`.
        fn bind_spec<'q>(query: Query<'q, D>, rec: &'q AgentRecord) -> Query<'q, D> {
            query
                .bind(rec.spec.name.as_str())
                .bind(rec.spec.role.as_deref())
                .bind(rec.spec.model.as_deref())
                .bind(rec.spec.target.as_str())
                .bind(rec.spec.health.interval_ms.map(to_i64))
                .bind(rec.spec.health.failure_threshold.map(i64::from))
                .bind(rec.spec.budget.monthly_tokens.map(to_i64))
                .bind(rec.spec.budget.monthly_cost_micros.map(to_i64))
                .bind(rec.state.as_str())
                .bind(rec.state_reason.as_deref())
                .bind(i64::from(rec.restart_count))
                .bind(to_i64(rec.usage.tokens))
                .bind(to_i64(rec.usage.cost_micros))
                .bind(rec.usage.period.to_string())
                .bind(rec.usage.warned)
                .bind(rec.deployment_ref.as_deref())
                .bind(rec.runtime_token_hash.as_deref())
                .bind(rec.updated_at)
                .bind(rec.spec.profile.as_deref())
                .bind(rec.spec.budget.period.as_str())
                .bind(runtime_json(&rec.spec.runtime))
                .bind(super::sqlite::job_json(&rec.spec.job))
        }
    }
}

/// The columns [`ServerStore::bind_spec`] binds, in its order.
const SPEC_COLUMNS: [&str; 22] = [
    "name",
    "role",
    "model",
    "target",
    "health_interval_ms",
    "health_failure_threshold",
    "budget_tokens",
    "budget_cost_micros",
    "state",
    "state_reason",
    "restart_count",
    "usage_tokens",
    "usage_cost_micros",
    "usage_period",
    "usage_warned",
    "deployment_ref",
    "runtime_token_hash",
    "updated_at",
    "profile",
    "budget_period",
    "runtime",
    "job",
];

on_dialects! {
    impl<D> Store for ServerStore<D> {
        async fn insert_agent(&self, ins: AgentInsert<'_>) -> Result<(), StoreError> {
            retry(|| async move {
                let rec = ins.record;
                let mut tx = self.begin().await?;
                // The organization's row is the lock concurrent creates queue on.
                let sql = D::sql(
                    "UPDATE orgs SET agent_count = agent_count + 1 \
                     WHERE id = ? AND (? IS NULL OR agent_count + 1 <= ?)",
                );
                let max = ins.max_agents.map(to_i64);
                let counted = Self::run(
                    &mut tx,
                    sqlx::query(&sql)
                        .bind(rec.org_id.as_str())
                        .bind(max)
                        .bind(max),
                )
                .await
                .map_err(stmt)?;
                if counted != 1 {
                    return Err(Attempt::Done(StoreError::LimitReached(format!(
                        "the organization's plan allows at most {} agents",
                        ins.max_agents.unwrap_or(0)
                    ))));
                }
                let marks = vec!["?"; SPEC_COLUMNS.len() - 2].join(", ");
                let sql = D::sql(&format!(
                    "INSERT INTO agents (id, org_id, epoch, created_at, {}) VALUES (?, ?, ?, ?, {marks}, ?{json}, ?{json})",
                    SPEC_COLUMNS.join(", "),
                    json = D::JSON
                ));
                let query = sqlx::query(&sql)
                    .bind(rec.id.as_str())
                    .bind(rec.org_id.as_str())
                    .bind(rec.epoch)
                    .bind(rec.created_at);
                Self::run(&mut tx, Self::bind_spec(query, rec))
                    .await
                    .map_err(stmt_classify)?;
                Self::insert_transition(&mut tx, rec, ins.created).await?;
                Self::insert_audit(&mut tx, ins.audit).await?;
                Self::insert_version(&mut tx, ins.version).await?;
                tx.commit().await.map_err(at_commit)
                    })
                .await
        }

        async fn write_agent(&self, w: AgentWrite<'_>) -> Result<WriteOutcome, StoreError> {
            retry(|| async move {
                let rec = w.record;
                let mut tx = self.begin().await?;
                // The report's key first: of two concurrent writes of one report,
                // the second waits on the first's row and then meets its key.
                if let Some(charge) = w.usage {
                    let sql = D::sql(
                        "INSERT INTO usage_reports \
                         (agent_id, report_id, at, org_id, tokens, cost_micros) \
                         VALUES (?, ?, ?, ?, ?, ?)",
                    );
                    let query = sqlx::query(&sql)
                        .bind(rec.id.as_str())
                        .bind(charge.report_id)
                        .bind(rec.updated_at)
                        .bind(rec.org_id.as_str())
                        .bind(to_i64(charge.tokens))
                        .bind(to_i64(charge.cost_micros));
                    match Self::run(&mut tx, query).await {
                        Ok(_) => {}
                        Err(e) if unique_violation(&e) => return Ok(WriteOutcome::Duplicate),
                        Err(e) => return Err(stmt(e)),
                    }
                }
                let set: Vec<String> = SPEC_COLUMNS
                    .iter()
                    .map(|c| {
                        let json = if matches!(*c, "runtime" | "job") { D::JSON } else { "" };
                        format!("{c} = ?{json}")
                    })
                    .collect();
                let sql = D::sql(&format!(
                    "UPDATE agents SET {} WHERE id = ? AND epoch = ? AND deleted_at IS NULL",
                    set.join(", ")
                ));
                let query = Self::bind_spec(sqlx::query(&sql), rec)
                    .bind(rec.id.as_str())
                    .bind(rec.epoch);
                if Self::run(&mut tx, query).await.map_err(stmt_classify)? == 0 {
                    return Err(Attempt::Done(StoreError::Fenced));
                }
                if let Some(charge) = w.usage {
                    // The organization's spend outlives its agents (deleting agents
                    // does not reset the period); it saturates instead of failing.
                    let add = |c: &str| {
                        format!(
                            "{c} = CASE WHEN org_usage.{c} > 9223372036854775807 - {new} \
                             THEN 9223372036854775807 ELSE org_usage.{c} + {new} END",
                            new = D::inserted(c)
                        )
                    };
                    let sql = D::sql(&format!(
                        "INSERT INTO org_usage (org_id, period, tokens, cost_micros) VALUES (?, ?, ?, ?) {} {}, {}",
                        D::upsert("org_id, period"),
                        add("tokens"),
                        add("cost_micros")
                    ));
                    let query = sqlx::query(&sql)
                        .bind(rec.org_id.as_str())
                        .bind(charge.org_period.to_string())
                        .bind(to_i64(charge.tokens))
                        .bind(to_i64(charge.cost_micros));
                    Self::run(&mut tx, query).await.map_err(stmt)?;
                }
                for t in w.transitions {
                    Self::insert_transition(&mut tx, rec, t).await?;
                }
                if let Some(ev) = w.event {
                    Self::insert_event(&mut tx, rec, ev).await?;
                }
                if let Some(a) = w.audit {
                    Self::insert_audit(&mut tx, a).await?;
                }
                for v in w.versions {
                    Self::insert_version(&mut tx, v).await?;
                }
                tx.commit().await.map_err(at_commit)?;
                Ok(WriteOutcome::Written)
                    })
                .await
        }

        async fn latest_version(
            &self,
            agent: &cadre_actors::domain::AgentId,
        ) -> Result<Option<cadre_actors::domain::AgentVersion>, StoreError> {
            self.tables().latest_version(agent.as_str()).await
        }

        async fn delete_agent(
            &self,
            rec: &AgentRecord,
            at: i64,
            audit: &AuditEntry,
        ) -> Result<(), StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(
                    "UPDATE agents SET deleted_at = ?, updated_at = ? \
                     WHERE id = ? AND epoch = ? AND deleted_at IS NULL",
                );
                let query = sqlx::query(&sql)
                    .bind(at)
                    .bind(at)
                    .bind(rec.id.as_str())
                    .bind(rec.epoch);
                if Self::run(&mut tx, query).await.map_err(stmt_classify)? == 0 {
                    return Err(Attempt::Done(StoreError::Fenced));
                }
                let deleted = Transition {
                    from: Some(rec.state),
                    to: rec.state,
                    reason: Some("deleted".into()),
                    by: "system".into(),
                    at,
                };
                Self::insert_transition(&mut tx, rec, &deleted).await?;
                let sql =
                    D::sql("UPDATE orgs SET agent_count = GREATEST(agent_count - 1, 0) WHERE id = ?");
                Self::run(&mut tx, sqlx::query(&sql).bind(rec.org_id.as_str()))
                    .await
                    .map_err(stmt)?;
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)
            })
            .await
        }

        async fn claim_agent(
            &self,
            org: &OrgId,
            id: &AgentId,
        ) -> Result<Option<AgentRecord>, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let bump = "UPDATE agents SET epoch = epoch + 1 WHERE id = ? AND org_id = ? AND deleted_at IS NULL";
                let row = if D::RETURNING {
                    let sql = D::sql(&format!("{bump} RETURNING {}", agent_columns::<D>()));
                    sqlx::query(&sql)
                        .bind(id.as_str())
                        .bind(org.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(stmt)?
                } else {
                    // The bump locks the row until the commit, so the read after it
                    // sees exactly the claimed record.
                    let sql = D::sql(bump);
                    let claimed = Self::run(
                        &mut tx,
                        sqlx::query(&sql).bind(id.as_str()).bind(org.as_str()),
                    )
                    .await
                    .map_err(stmt)?;
                    if claimed == 0 {
                        None
                    } else {
                        let sql = D::sql(&format!(
                            "SELECT {} FROM agents WHERE id = ?",
                            agent_columns::<D>()
                        ));
                        sqlx::query(&sql)
                            .bind(id.as_str())
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(stmt)?
                    }
                };
                let record = row.as_ref().map(agent_from_row).transpose()?;
                tx.commit().await.map_err(at_commit)?;
                Ok(record)
                    })
                .await
        }

        async fn claim_org(&self, org: &OrgId) -> Result<(), StoreError> {
            retry(|| async move {
                let sql = D::sql(
                    "UPDATE agents SET epoch = epoch + 1 WHERE org_id = ? AND deleted_at IS NULL",
                );
                sqlx::query(&sql)
                    .bind(org.as_str())
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err(stmt)
            })
            .await
        }

        async fn org_page(
            &self,
            org: &OrgId,
            after: Option<&AgentId>,
            limit: usize,
        ) -> Result<Vec<AgentRecord>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT {} FROM agents{} WHERE org_id = ? AND deleted_at IS NULL AND id{c} > ? \
                 ORDER BY id{c} LIMIT ?",
                agent_columns::<D>(),
                D::BY_ORG_AND_ID,
                c = D::BYTES
            ));
            let rows = sqlx::query(&sql)
                .bind(org.as_str())
                .bind(after.map(AgentId::as_str).unwrap_or(""))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    AgentRow::from_sql(r)
                        .map_err(|e| StoreError::Unavailable(format!("bad agent row: {e}")))?
                        .into_record()
                })
                .collect()
        }

        async fn list_orgs(&self) -> Result<Vec<OrgId>, StoreError> {
            let sql = format!("SELECT id FROM orgs ORDER BY id{}", D::BYTES);
            let rows = super::tables::Tables::<D>::rows_on(&self.pool, &sql, &[]).await?;
            rows.iter()
                .map(|r| r.cell::<String, _>(0usize).map(OrgId).map_err(unavailable))
                .collect()
        }

        async fn ping(&self) -> Result<(), StoreError> {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(unavailable)
        }
    }
}

on_dialects! {
    impl<D> GovStore for ServerStore<D> {
        async fn docs(&self, org: &OrgId) -> Result<Vec<GovDoc>, StoreError> {
            self.tables().docs(org).await
        }

        async fn put_doc(
            &self,
            org: &OrgId,
            kind: &str,
            name: &str,
            body: Option<&str>,
            audit: &AuditEntry,
        ) -> Result<bool, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let n = match body {
                    Some(b) => {
                        let sql = D::sql(&format!(
                            "INSERT INTO gov_docs (org_id, kind, name, body, updated_at) \
                             VALUES (?, ?, ?, ?{}, ?) {} body = {}, updated_at = {}",
                            D::JSON,
                            D::upsert("org_id, kind, name"),
                            D::inserted("body"),
                            D::inserted("updated_at")
                        ));
                        let query = sqlx::query(&sql)
                            .bind(org.as_str())
                            .bind(kind)
                            .bind(name)
                            .bind(b)
                            .bind(audit.at);
                        Self::run(&mut tx, query).await
                    }
                    None => {
                        let sql =
                            D::sql("DELETE FROM gov_docs WHERE org_id = ? AND kind = ? AND name = ?");
                        Self::run(
                            &mut tx,
                            sqlx::query(&sql).bind(org.as_str()).bind(kind).bind(name),
                        )
                        .await
                    }
                }
                .map_err(stmt)?;
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(n > 0)
            })
            .await
        }

        async fn insert_approval(
            &self,
            a: &ApprovalRecord,
            audit: &AuditEntry,
        ) -> Result<(), StoreError> {
            retry(|| async move {
                let levels = serde_json::to_string(&a.levels)
                    .map_err(|e| StoreError::Unavailable(format!("approval levels: {e}")))?;
                let mut tx = self.begin().await?;
                let sql = D::sql(&format!(
                    "INSERT INTO approvals (id, org_id, agent_id, call_id, tool, args_hash, arguments, \
                     {}, policy, levels, level, state, requested_by, created_at, expires_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?{j}, ?, ?, ?{j}, ?, 'pending', ?, ?, ?)",
                    D::TRIGGER,
                    j = D::JSON
                ));
                let query = sqlx::query(&sql)
                    .bind(a.id.as_str())
                    .bind(a.org_id.as_str())
                    .bind(a.agent_id.as_str())
                    .bind(a.call_id.as_str())
                    .bind(a.tool.as_str())
                    .bind(a.args_hash.as_str())
                    .bind(a.arguments.to_string())
                    .bind(a.trigger.as_str())
                    .bind(a.policy.as_str())
                    .bind(levels)
                    .bind(i64::from(a.level))
                    .bind(a.requested_by.as_str())
                    .bind(a.created_at)
                    .bind(a.expires_at);
                Self::run(&mut tx, query).await.map_err(stmt_classify)?;
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)
            })
            .await
        }

        async fn approval_by_call(
            &self,
            agent: &AgentId,
            call_id: &str,
        ) -> Result<Option<ApprovalRecord>, StoreError> {
            self.tables().approval_by_call(agent, call_id).await
        }

        async fn approval(&self, org: &OrgId, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
            self.tables().approval(org, id).await
        }

        async fn pending_approvals(&self, org: &OrgId) -> Result<Vec<ApprovalRecord>, StoreError> {
            self.tables().pending_approvals(org).await
        }

        async fn add_vote(
            &self,
            a: &ApprovalRecord,
            vote: &Vote,
            audit: &AuditEntry,
        ) -> Result<Cas, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                // Locks the request's row: a settlement racing this vote either
                // committed before (the vote is lost) or waits for it.
                let sql = D::sql(
                    "SELECT id FROM approvals WHERE id = ? AND state = 'pending' AND level = ? FOR UPDATE",
                );
                let still = sqlx::query(&sql)
                    .bind(a.id.as_str())
                    .bind(i64::from(a.level))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(stmt)?;
                if still.is_none() {
                    return Ok(Cas::Lost);
                }
                Self::insert_vote(&mut tx, &a.id, vote).await?;
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(Cas::Applied)
                    })
                .await
        }

        async fn settle_approval(
            &self,
            a: &ApprovalRecord,
            from_level: u32,
            vote: Option<&Vote>,
            grant: Option<&Grant>,
            audit: &AuditEntry,
        ) -> Result<Cas, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                // The compare-and-swap: of concurrent settlements the first to
                // commit wins; the others re-check the condition and match nothing.
                let sql = D::sql(
                    "UPDATE approvals SET state = ?, outcome = ?, level = ?, expires_at = ?, \
                     decided_by = ?, decided_at = ?, comment = ?, grant_id = ? \
                     WHERE id = ? AND state = 'pending' AND level = ?",
                );
                let query = sqlx::query(&sql)
                    .bind(a.state.as_str())
                    .bind(a.outcome)
                    .bind(i64::from(a.level))
                    .bind(a.expires_at)
                    .bind(a.decided_by.as_deref())
                    .bind(a.decided_at)
                    .bind(a.comment.as_deref())
                    .bind(a.grant_id.as_deref())
                    .bind(a.id.as_str())
                    .bind(i64::from(from_level));
                if Self::run(&mut tx, query).await.map_err(stmt)? == 0 {
                    return Ok(Cas::Lost);
                }
                if let Some(v) = vote {
                    Self::insert_vote(&mut tx, &a.id, v).await?;
                }
                if let Some(g) = grant {
                    let sql = D::sql(&format!(
                        "INSERT INTO grants ({GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    ));
                    let query = sqlx::query(&sql)
                        .bind(g.id.as_str())
                        .bind(g.org_id.as_str())
                        .bind(g.agent_id.as_str())
                        .bind(g.tool.as_str())
                        .bind(g.args_hash.as_str())
                        .bind(g.approval_id.as_str())
                        .bind(g.granted_by.as_str())
                        .bind(g.created_at)
                        .bind(g.expires_at);
                    Self::run(&mut tx, query).await.map_err(stmt_classify)?;
                }
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(Cas::Applied)
            })
            .await
        }

        async fn live_grants(&self, now_ms: i64) -> Result<Vec<Grant>, StoreError> {
            self.tables().live_grants(now_ms).await
        }

        async fn revoke_grant(
            &self,
            org: &OrgId,
            id: &str,
            by: &str,
            at: i64,
            audit: &AuditEntry,
        ) -> Result<Option<Grant>, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(
                    "UPDATE grants SET revoked_at = ?, revoked_by = ? \
                     WHERE org_id = ? AND id = ? AND revoked_at IS NULL",
                );
                let query = sqlx::query(&sql)
                    .bind(at)
                    .bind(by)
                    .bind(org.as_str())
                    .bind(id);
                if Self::run(&mut tx, query).await.map_err(stmt)? == 0 {
                    return Ok(None);
                }
                let sql = D::sql(&format!(
                    "SELECT {GRANT_COLUMNS} FROM grants WHERE org_id = ? AND id = ?"
                ));
                let row = sqlx::query(&sql)
                    .bind(org.as_str())
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(stmt)?;
                let grant = grant_row(&row)?;
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(Some(grant))
            })
            .await
        }

        async fn set_halt(
            &self,
            scope: &HaltScope,
            on: Option<&str>,
            by: &str,
            at: i64,
            audit: &AuditEntry,
        ) -> Result<(), StoreError> {
            retry(|| async move {
                let org = match scope {
                    HaltScope::Instance => None,
                    HaltScope::Org(o) | HaltScope::Agent(o, _) => Some(o.as_str()),
                };
                let mut tx = self.begin().await?;
                match on {
                    Some(reason) => {
                        let sql = D::sql(&format!(
                            "INSERT INTO halts (scope, target, org_id, reason, by_who, at) \
                             VALUES (?, ?, ?, ?, ?, ?) {} reason = {}, by_who = {}, at = {}",
                            D::upsert("scope, target"),
                            D::inserted("reason"),
                            D::inserted("by_who"),
                            D::inserted("at")
                        ));
                        let query = sqlx::query(&sql)
                            .bind(scope.kind())
                            .bind(scope.target())
                            .bind(org)
                            .bind(reason)
                            .bind(by)
                            .bind(at);
                        Self::run(&mut tx, query).await
                    }
                    None => {
                        let sql = D::sql("DELETE FROM halts WHERE scope = ? AND target = ?");
                        Self::run(
                            &mut tx,
                            sqlx::query(&sql).bind(scope.kind()).bind(scope.target()),
                        )
                        .await
                    }
                }
                .map_err(stmt)?;
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)
            })
            .await
        }

        async fn halts(&self) -> Result<Vec<HaltScope>, StoreError> {
            self.tables().halts().await
        }
    }
}

on_dialects! {
    impl<D> TaskStore for ServerStore<D> {
        async fn insert_task(&self, t: &TaskRecord, audit: &AuditEntry) -> Result<(), StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(&format!(
                    "INSERT INTO tasks ({}) VALUES (?, ?, ?, ?, ?{j}, ?, ?, ?, ?{j}, ?, ?, ?, ?, ?, ?, ?, ?)",
                    super::tasks::COLUMNS,
                    j = D::JSON
                ));
                let query = sqlx::query(&sql)
                    .bind(t.id.as_str())
                    .bind(t.org_id.as_str())
                    .bind(t.agent_id.as_str())
                    .bind(t.instruction.as_str())
                    .bind(super::tasks::json(&t.input)?)
                    .bind(t.state.as_str())
                    .bind(t.result.as_deref())
                    .bind(t.error.as_deref())
                    .bind(super::tasks::json(&t.limits)?)
                    .bind(t.created_by.as_str())
                    .bind(t.created_at)
                    .bind(t.started_at)
                    .bind(t.finished_at)
                    .bind(t.runner_pid.map(i64::from))
                    .bind(t.parent_id.as_deref())
                    .bind(t.from_step.map(i64::from))
                    .bind(t.version.map(i64::from));
                Self::run(&mut tx, query).await.map_err(stmt_classify)?;
                // A replay starts with copies of its parent's steps before from_step.
                if let (Some(parent), Some(from)) = (&t.parent_id, t.from_step) {
                    let sql = D::sql(
                        "INSERT INTO task_steps (task_id, seq, kind, body, tokens, latency_ms, at) \
                         SELECT ?, seq, kind, body, tokens, latency_ms, at FROM task_steps \
                         WHERE task_id = ? AND seq < ?",
                    );
                    let query = sqlx::query(&sql)
                        .bind(t.id.as_str())
                        .bind(parent.as_str())
                        .bind(i64::from(from));
                    Self::run(&mut tx, query).await.map_err(stmt)?;
                }
                Self::insert_audit(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)
                    })
                .await
        }

        async fn update_task(
            &self,
            t: &TaskRecord,
            audit: Option<&AuditEntry>,
        ) -> Result<(), StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(
                    "UPDATE tasks SET state = ?, result = ?, error = ?, started_at = ?, finished_at = ?, \
                     runner_pid = ? WHERE id = ?",
                );
                let query = sqlx::query(&sql)
                    .bind(t.state.as_str())
                    .bind(t.result.as_deref())
                    .bind(t.error.as_deref())
                    .bind(t.started_at)
                    .bind(t.finished_at)
                    .bind(t.runner_pid.map(i64::from))
                    .bind(t.id.as_str());
                Self::run(&mut tx, query).await.map_err(stmt)?;
                if let Some(a) = audit {
                    Self::insert_audit(&mut tx, a).await?;
                }
                tx.commit().await.map_err(at_commit)
                    })
                .await
        }

        async fn add_step(&self, st: &TaskStep) -> Result<bool, StoreError> {
            retry(|| async move {
                // A plain insert: its key's violation is how a step sent
                // again is told apart (MySQL's upsert counts a kept row as
                // changed under CLIENT_FOUND_ROWS).
                let sql = D::sql(&format!(
                    "INSERT INTO task_steps (task_id, seq, kind, body, tokens, latency_ms, at) \
                     VALUES (?, ?, ?, ?{}, ?, ?, ?)",
                    D::JSON,
                ));
                let query = sqlx::query(&sql)
                    .bind(st.task_id.as_str())
                    .bind(i64::from(st.seq))
                    .bind(st.kind.as_str())
                    .bind(super::tasks::json(&st.body)?)
                    .bind(i64::try_from(st.tokens).unwrap_or(i64::MAX))
                    .bind(i64::try_from(st.latency_ms).unwrap_or(i64::MAX))
                    .bind(st.at);
                match query.execute(&self.pool).await {
                    Ok(_) => Ok(true),
                    Err(e) if unique_violation(&e) => Ok(false),
                    Err(e) => Err(stmt(e)),
                }
            })
            .await
        }

        async fn open_tasks(&self, org: &str, agent: &str) -> Result<Vec<TaskRecord>, StoreError> {
            self.tables().open_tasks(org, agent).await
        }
    }
}
