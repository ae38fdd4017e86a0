//! SQLite backend (the embedded default).
//!
//! WAL mode with one writer connection and a pool of read-only connections:
//! SQLite serializes writers anyway, and a single writer connection means no
//! `SQLITE_BUSY` between our own writers. `synchronous` is configurable:
//! `NORMAL` (default) keeps every acknowledged commit across a crash or kill
//! of the process; `FULL` also across a power loss.

use super::to_u64;
use super::writer::{self, Job};
use async_trait::async_trait;
use cadre_actors::audit::AuditEntry;
use cadre_actors::budget::{BudgetLimits, Period, PeriodKind, Usage};
use cadre_actors::domain::{
    AgentId, AgentRecord, AgentSpec, DeployTarget, HealthOverrides, OrgId, Transition,
};
use cadre_actors::lifecycle::State;
use cadre_actors::ports::{AgentInsert, AgentWrite, Store, StoreError, WriteOutcome};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How hard a commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// WAL + `synchronous=NORMAL`: survives a process crash or kill.
    Normal,
    /// WAL + `synchronous=FULL`: also survives power loss.
    Full,
}

/// The SQL store.
#[derive(Debug, Clone)]
pub struct SqlStore {
    write: SqlitePool,
    read: SqlitePool,
    /// Group-commit queue for agent writes (`writer.rs`).
    jobs: mpsc::Sender<Job>,
    /// The WAL checkpointer's own connection.
    checkpoint: SqlitePool,
    /// The tables kept the same way on every backend.
    tables: super::tables::Tables<sqlx::Sqlite>,
}

/// When the background checkpointer works.
#[derive(Debug, Clone, Copy)]
pub struct Checkpoints {
    /// How often it copies the WAL into the database.
    pub every: Duration,
    /// WAL frames (pages) beyond which it also rewinds the log.
    pub restart_frames: i64,
    /// The hard cap: a WAL file larger than this when a write has just
    /// finished is checkpointed and truncated by the writer itself before
    /// the next write may start (back-pressure). The background
    /// checkpointer keeps the log far smaller as long as it gets its turns;
    /// this bounds the file when it does not (a loaded machine, slow disk).
    pub truncate_bytes: u64,
}

impl Default for Checkpoints {
    fn default() -> Self {
        Checkpoints {
            every: Duration::from_millis(250),
            restart_frames: 2048,
            truncate_bytes: JOURNAL_SIZE_LIMIT,
        }
    }
}
/// `journal_size_limit`: a rewound WAL file is trimmed to this size.
const JOURNAL_SIZE_LIMIT: u64 = 64 * 1024 * 1024;
/// How long the writer's own truncating checkpoint waits for readers.
const TRUNCATE_WAIT_MS: u64 = 1_000;
/// The writer's usual busy timeout.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restarting checkpoint may wait for the writer and readers.
const RESTART_WAIT: Duration = Duration::from_millis(20);

pub(super) fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn classify(e: sqlx::Error) -> StoreError {
    if let Some(db) = e.as_database_error()
        && db.is_unique_violation()
    {
        return StoreError::Conflict(db.message().to_string());
    }
    unavailable(e)
}

/// An agent's job (instructions, persona, manager) as stored: NULL when
/// none is set.
pub(super) fn job_json(j: &cadre_actors::domain::Job) -> Option<String> {
    (!j.is_default())
        .then(|| serde_json::to_string(j).ok())
        .flatten()
}

pub(super) const AGENT_COLUMNS: &str = "id, org_id, name, role, model, target, health_interval_ms, \
    health_failure_threshold, budget_tokens, budget_cost_micros, state, state_reason, restart_count, \
    usage_tokens, usage_cost_micros, usage_period, usage_warned, deployment_ref, runtime_token_hash, \
    epoch, created_at, updated_at, profile, budget_period, runtime, job";

/// An `agents` row in column order ([`AGENT_COLUMNS`]). Deserializable from
/// a JSON array too, which is how hydration reads whole pages at once.
#[derive(serde::Deserialize)]
pub(super) struct AgentRow(
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    String,
    Option<String>,
    i64,
    i64,
    i64,
    String,
    i64,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
);

impl AgentRow {
    /// Reads a row of [`AGENT_COLUMNS`] in any dialect whose select casts
    /// its columns to text and 64-bit integers (`postgres::AGENT_COLUMNS`).
    pub(super) fn from_sql<R: super::DecodeRow>(row: &R) -> Result<AgentRow, sqlx::Error>
    where
        usize: sqlx::ColumnIndex<R>,
    {
        Ok(AgentRow(
            row.cell(0)?,
            row.cell(1)?,
            row.cell(2)?,
            row.cell(3)?,
            row.cell(4)?,
            row.cell(5)?,
            row.cell(6)?,
            row.cell(7)?,
            row.cell(8)?,
            row.cell(9)?,
            row.cell(10)?,
            row.cell(11)?,
            row.cell(12)?,
            row.cell(13)?,
            row.cell(14)?,
            row.cell(15)?,
            row.cell(16)?,
            row.cell(17)?,
            row.cell(18)?,
            row.cell(19)?,
            row.cell(20)?,
            row.cell(21)?,
            row.cell(22)?,
            row.cell(23)?,
            row.cell(24)?,
            row.cell(25)?,
        ))
    }

    pub(super) fn into_record(self) -> Result<AgentRecord, StoreError> {
        let AgentRow(
            id,
            org_id,
            name,
            role,
            model,
            target,
            interval,
            threshold,
            budget_tokens,
            budget_cost,
            state,
            state_reason,
            restart_count,
            usage_tokens,
            usage_cost,
            period,
            warned,
            deployment_ref,
            runtime_token_hash,
            epoch,
            created_at,
            updated_at,
            profile,
            budget_period,
            runtime,
            job,
        ) = self;
        let bad = |what: String| StoreError::Unavailable(format!("bad agent row {id}: {what}"));
        Ok(AgentRecord {
            spec: AgentSpec {
                name,
                role,
                model,
                target: DeployTarget::parse(&target)
                    .ok_or_else(|| bad(format!("unknown target {target:?}")))?,
                health: HealthOverrides {
                    interval_ms: interval.map(to_u64),
                    failure_threshold: threshold.map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
                },
                budget: BudgetLimits {
                    monthly_tokens: budget_tokens.map(to_u64),
                    monthly_cost_micros: budget_cost.map(to_u64),
                    period: PeriodKind::parse(&budget_period)
                        .ok_or_else(|| bad(format!("bad budget period {budget_period:?}")))?,
                },
                profile,
                runtime: match runtime {
                    Some(r) => serde_json::from_str(&r)
                        .map_err(|e| bad(format!("bad runtime settings: {e}")))?,
                    None => Default::default(),
                },
                job: match job {
                    Some(j) => serde_json::from_str(&j)
                        .map_err(|e| bad(format!("bad job settings: {e}")))?,
                    None => Default::default(),
                },
            },
            state: State::parse(&state).ok_or_else(|| bad(format!("unknown state {state:?}")))?,
            state_reason,
            restart_count: u32::try_from(restart_count).unwrap_or(u32::MAX),
            usage: Usage {
                tokens: to_u64(usage_tokens),
                cost_micros: to_u64(usage_cost),
                period: Period::parse(&period)
                    .ok_or_else(|| bad(format!("bad period {period:?}")))?,
                warned: warned != 0,
            },
            deployment_ref,
            runtime_token_hash,
            epoch,
            created_at,
            updated_at,
            org_id: OrgId(org_id),
            id: AgentId(id),
        })
    }
}

pub(super) fn agent_from_row<R: super::DecodeRow>(row: &R) -> Result<AgentRecord, StoreError>
where
    usize: sqlx::ColumnIndex<R>,
{
    AgentRow::from_sql(row)
        .map_err(|e| StoreError::Unavailable(format!("bad agent row: {e}")))?
        .into_record()
}

pub(super) async fn insert_transition(
    conn: &mut sqlx::SqliteConnection,
    rec: &AgentRecord,
    t: &Transition,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO agent_transitions (agent_id, org_id, from_state, to_state, reason, by_who, at) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(rec.id.as_str())
    .bind(rec.org_id.as_str())
    .bind(t.from.map(|s| s.as_str()))
    .bind(t.to.as_str())
    .bind(t.reason.as_deref())
    .bind(&t.by)
    .bind(t.at)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The background checkpointer. A passive checkpoint copies what it can
/// without stopping anyone; but under a steady stream of commits the log is
/// never entirely copied when the writer starts its next transaction, so
/// SQLite never rewinds it and the WAL file grows without bound (it reached
/// 1.4 GB in 25 s of approval decisions), every commit then extending the
/// file. So once the log holds more than `restart_frames` pages, it takes
/// the writer connection's place in line (all writes go through that one
/// connection, so holding it means no write is in progress, and no
/// deferred transaction of ours can meet the lock half-way) and runs a
/// `RESTART` checkpoint: it copies only what was written since the passive
/// one, and the next commit starts the log from its beginning again. It
/// waits at most [`RESTART_WAIT`] for readers, otherwise it tries again on
/// the next tick; `journal_size_limit` trims the file after a rewind.
async fn checkpoints(pool: SqlitePool, writer: SqlitePool, when: Checkpoints) {
    let mut tick = tokio::time::interval(when.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !pool.is_closed() {
        tick.tick().await;
        let passive: Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&pool)
                .await;
        let result = match passive {
            Ok((_, log, _)) if log > when.restart_frames => restart(&pool, &writer).await,
            other => other.map(|_| ()),
        };
        if let Err(e) = result {
            if pool.is_closed() || writer.is_closed() {
                return;
            }
            metrics::counter!("cadre_store_checkpoint_failures_total").increment(1);
            tracing::warn!(error = %e, "WAL checkpoint failed; retrying");
        }
    }
}

/// A `RESTART` checkpoint while holding the writer connection.
async fn restart(pool: &SqlitePool, writer: &SqlitePool) -> Result<(), sqlx::Error> {
    let _no_writes = writer.acquire().await?;
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(RESTART)")
        .fetch_one(pool)
        .await?;
    let outcome = if busy == 0 { "restarted" } else { "busy" };
    metrics::counter!("cadre_store_checkpoint_restarts_total", "outcome" => outcome).increment(1);
    Ok(())
}

/// Run each time the writer connection goes back to its pool, that is after
/// every write: when the WAL file has grown past the hard cap, the writer
/// checkpoints and truncates it before anyone may write again. The file
/// only grows when frames are appended past its end, so its size is a
/// faithful measure of the log here (a truncated file starts from zero);
/// the check is one `stat`. Readers get [`TRUNCATE_WAIT_MS`] to finish;
/// a checkpoint that fails or finds them busy is counted and retried after
/// the next write, and never closes the writer.
async fn cap_wal(conn: &mut sqlx::SqliteConnection, wal: &std::path::Path, cap: u64) {
    let size = match std::fs::metadata(wal) {
        Ok(m) => m.len(),
        Err(_) => return,
    };
    if size <= cap {
        return;
    }
    let wait = format!("PRAGMA busy_timeout = {TRUNCATE_WAIT_MS}");
    let restore = format!("PRAGMA busy_timeout = {}", BUSY_TIMEOUT.as_millis());
    let result: Result<(i64, i64, i64), sqlx::Error> = async {
        sqlx::query(&wait).execute(&mut *conn).await?;
        let checkpoint = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut *conn)
            .await;
        sqlx::query(&restore).execute(&mut *conn).await?;
        checkpoint
    }
    .await;
    let outcome = match result {
        Ok((0, _, _)) => "truncated",
        Ok(_) => "busy",
        Err(e) => {
            tracing::warn!(error = %e, wal_bytes = size, "truncating the WAL failed; retrying after the next write");
            "failed"
        }
    };
    metrics::counter!("cadre_store_wal_truncations_total", "outcome" => outcome).increment(1);
}

impl SqlStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path`).
    pub async fn open(
        url: &str,
        durability: Durability,
        read_connections: u32,
    ) -> Result<SqlStore, sqlx::Error> {
        Self::open_with(url, durability, read_connections, Checkpoints::default()).await
    }

    /// [`SqlStore::open`] with the checkpointer's timing spelled out.
    pub async fn open_with(
        url: &str,
        durability: Durability,
        read_connections: u32,
        checkpoints: Checkpoints,
    ) -> Result<SqlStore, sqlx::Error> {
        let base = SqliteConnectOptions::from_str(url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Full => SqliteSynchronous::Full,
            })
            .foreign_keys(true)
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT.to_string())
            .busy_timeout(BUSY_TIMEOUT);
        let wal = {
            let mut name = base.get_filename().as_os_str().to_owned();
            name.push("-wal");
            std::sync::Arc::new(std::path::PathBuf::from(name))
        };
        let cap = checkpoints.truncate_bytes;
        // The writer never checkpoints (a checkpoint fsyncs the database
        // file, and on the writer it stalls every commit queued behind it);
        // a connection of its own does it in the background, which WAL
        // allows concurrently with writes.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // An embedded connection cannot have gone away; the ping would be
            // a round trip to its thread before every write.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .after_release(move |conn, _| {
                let wal = wal.clone();
                Box::pin(async move {
                    cap_wal(conn, &wal, cap).await;
                    Ok(true)
                })
            })
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .pragma("wal_autocheckpoint", "0"),
            )
            .await?;
        let checkpoint = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base.clone().busy_timeout(RESTART_WAIT))
            .await?;
        tokio::spawn(self::checkpoints(
            checkpoint.clone(),
            write.clone(),
            checkpoints,
        ));
        let read = SqlitePoolOptions::new()
            .max_connections(read_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base.read_only(true))
            .await?;
        let jobs = writer::spawn(write.clone());
        Ok(SqlStore {
            tables: super::tables::Tables::new(read.clone(), write.clone()),
            write,
            read,
            jobs,
            checkpoint,
        })
    }

    /// Queues a job for the group-commit writer and waits for its commit.
    pub(super) async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (done, answer) = oneshot::channel();
        self.jobs
            .send(job(done))
            .await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("store writer stopped".into()))?
    }

    /// Applies pending migrations (embedded in the binary).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        super::backend::SQLITE.run(&self.write).await
    }

    /// Closes both pools (waits for in-flight queries).
    pub async fn close(&self) {
        self.checkpoint.close().await;
        self.write.close().await;
        self.read.close().await;
    }

    /// The tables kept the same way on every backend (identity, audit,
    /// schedules, the HTTP layer's reads).
    pub fn tables(&self) -> &super::tables::Tables<sqlx::Sqlite> {
        &self.tables
    }

    pub(crate) fn write_pool(&self) -> &SqlitePool {
        &self.write
    }

    /// The stored record of an agent (tests and diagnostics; actors hold the live copy).
    pub async fn load_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ? AND deleted_at IS NULL");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.read)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(agent_from_row).transpose()
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn insert_agent(&self, ins: AgentInsert<'_>) -> Result<(), StoreError> {
        self.submit(|done| Job::Insert {
            record: ins.record.clone(),
            created: ins.created.clone(),
            audit: ins.audit.clone(),
            max_agents: ins.max_agents,
            version: ins.version.clone(),
            done,
        })
        .await
    }

    async fn write_agent(&self, w: AgentWrite<'_>) -> Result<WriteOutcome, StoreError> {
        self.submit(|done| Job::Write {
            record: w.record.clone(),
            transitions: w.transitions.to_vec(),
            event: w.event.cloned(),
            usage: w.usage.map(|c| {
                (
                    c.report_id.to_string(),
                    c.tokens,
                    c.cost_micros,
                    c.org_period,
                )
            }),
            audit: w.audit.cloned(),
            versions: w.versions.to_vec(),
            done,
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
        self.submit(|done| Job::Delete {
            record: rec.clone(),
            at,
            audit: audit.clone(),
            done,
        })
        .await
    }

    async fn claim_agent(
        &self,
        org: &OrgId,
        id: &AgentId,
    ) -> Result<Option<AgentRecord>, StoreError> {
        let sql = format!(
            "UPDATE agents SET epoch = epoch + 1 WHERE id = ? AND org_id = ? AND deleted_at IS NULL RETURNING {AGENT_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .bind(org.as_str())
            .fetch_optional(&self.write)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn claim_org(&self, org: &OrgId) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET epoch = epoch + 1 WHERE org_id = ? AND deleted_at IS NULL")
            .bind(org.as_str())
            .execute(&self.write)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn org_page(
        &self,
        org: &OrgId,
        after: Option<&AgentId>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        // The whole page comes back as one JSON value: sqlx-sqlite hands rows
        // over from its worker thread one at a time, which made hydrating
        // 100,000 agents take seconds; SQLite builds the array in ~3 ms a page.
        // On the writer connection: it must see the epochs claim_org just bumped.
        let columns = AGENT_COLUMNS.replace(' ', "");
        let sql = format!(
            "SELECT json_group_array(json_array({columns})) FROM (SELECT {AGENT_COLUMNS} FROM agents \
             WHERE org_id = ? AND deleted_at IS NULL AND id > ? ORDER BY id LIMIT ?)"
        );
        let page: String = sqlx::query_scalar(&sql)
            .bind(org.as_str())
            .bind(after.map(AgentId::as_str).unwrap_or(""))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_one(&self.write)
            .await
            .map_err(unavailable)?;
        let rows: Vec<AgentRow> = serde_json::from_str(&page)
            .map_err(|e| StoreError::Unavailable(format!("bad agent page: {e}")))?;
        let mut records = rows
            .into_iter()
            .map(AgentRow::into_record)
            .collect::<Result<Vec<_>, _>>()?;
        // json_group_array keeps the subquery's order in practice; do not rely on it.
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    async fn list_orgs(&self) -> Result<Vec<OrgId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM orgs ORDER BY id")
            .fetch_all(&self.read)
            .await
            .map_err(unavailable)?;
        Ok(ids.into_iter().map(OrgId).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.write)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}
