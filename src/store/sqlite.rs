//! SQLite backend (the embedded default).
//!
//! WAL mode with one writer connection and a pool of read-only connections:
//! SQLite serializes writers anyway, and a single writer connection means no
//! `SQLITE_BUSY` between our own writers. `synchronous` is configurable:
//! `NORMAL` (default) keeps every acknowledged commit across a crash or kill
//! of the process; `FULL` also across a power loss.

use super::{EventRow, HistoryRow, UserRow, to_i64, to_u64};
use async_trait::async_trait;
use cadre_actors::budget::{BudgetLimits, Period, Usage};
use cadre_actors::domain::{
    AgentId, AgentRecord, AgentSpec, DeployTarget, HealthOverrides, OrgId, Transition, rfc3339,
};
use cadre_actors::lifecycle::State;
use cadre_actors::ports::{AgentWrite, Store, StoreError, WriteOutcome};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

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
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn classify(e: sqlx::Error) -> StoreError {
    if let Some(db) = e.as_database_error() {
        if db.is_unique_violation() {
            return StoreError::Conflict(db.message().to_string());
        }
    }
    unavailable(e)
}

const AGENT_COLUMNS: &str = "id, org_id, name, role, model, target, health_interval_ms, \
    health_failure_threshold, budget_tokens, budget_cost_micros, state, state_reason, restart_count, \
    usage_tokens, usage_cost_micros, usage_period, usage_warned, deployment_ref, runtime_token_hash, \
    epoch, created_at, updated_at";

fn agent_from_row(row: &SqliteRow) -> Result<AgentRecord, StoreError> {
    let get_err = |e: sqlx::Error| StoreError::Unavailable(format!("bad agent row: {e}"));
    let state: String = row.try_get("state").map_err(get_err)?;
    let target: String = row.try_get("target").map_err(get_err)?;
    let period: String = row.try_get("usage_period").map_err(get_err)?;
    let opt_u64 = |col: &str| -> Result<Option<u64>, StoreError> {
        Ok(row.try_get::<Option<i64>, _>(col).map_err(get_err)?.map(to_u64))
    };
    Ok(AgentRecord {
        id: AgentId(row.try_get("id").map_err(get_err)?),
        org_id: OrgId(row.try_get("org_id").map_err(get_err)?),
        spec: AgentSpec {
            name: row.try_get("name").map_err(get_err)?,
            role: row.try_get("role").map_err(get_err)?,
            model: row.try_get("model").map_err(get_err)?,
            target: DeployTarget::parse(&target)
                .ok_or_else(|| StoreError::Unavailable(format!("unknown target {target:?}")))?,
            health: HealthOverrides {
                interval_ms: opt_u64("health_interval_ms")?,
                failure_threshold: opt_u64("health_failure_threshold")?.map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
            },
            budget: BudgetLimits {
                monthly_tokens: opt_u64("budget_tokens")?,
                monthly_cost_micros: opt_u64("budget_cost_micros")?,
            },
        },
        state: State::parse(&state).ok_or_else(|| StoreError::Unavailable(format!("unknown state {state:?}")))?,
        state_reason: row.try_get("state_reason").map_err(get_err)?,
        restart_count: u32::try_from(row.try_get::<i64, _>("restart_count").map_err(get_err)?).unwrap_or(u32::MAX),
        usage: Usage {
            tokens: to_u64(row.try_get("usage_tokens").map_err(get_err)?),
            cost_micros: to_u64(row.try_get("usage_cost_micros").map_err(get_err)?),
            period: Period::parse(&period).ok_or_else(|| StoreError::Unavailable(format!("bad period {period:?}")))?,
            warned: row.try_get::<i64, _>("usage_warned").map_err(get_err)? != 0,
        },
        deployment_ref: row.try_get("deployment_ref").map_err(get_err)?,
        runtime_token_hash: row.try_get("runtime_token_hash").map_err(get_err)?,
        epoch: row.try_get("epoch").map_err(get_err)?,
        created_at: row.try_get("created_at").map_err(get_err)?,
        updated_at: row.try_get("updated_at").map_err(get_err)?,
    })
}

async fn insert_transition(
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

impl SqlStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path`).
    pub async fn open(url: &str, durability: Durability, read_connections: u32) -> Result<SqlStore, sqlx::Error> {
        let base = SqliteConnectOptions::from_str(url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Normal => SqliteSynchronous::Normal,
                Durability::Full => SqliteSynchronous::Full,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base.clone().create_if_missing(true))
            .await?;
        let read = SqlitePoolOptions::new()
            .max_connections(read_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base.read_only(true))
            .await?;
        Ok(SqlStore { write, read })
    }

    /// Applies pending migrations (embedded in the binary).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.write).await
    }

    /// Closes both pools (waits for in-flight queries).
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// Number of organizations.
    pub async fn org_count(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM orgs")
            .fetch_one(&self.read)
            .await
            .map_err(unavailable)
    }

    /// Creates an organization with its owner in one transaction.
    pub async fn create_org_with_owner(
        &self,
        org_id: &str,
        org_name: &str,
        user_id: &str,
        email: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await.map_err(unavailable)?;
        sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES (?, ?, ?)")
            .bind(org_id)
            .bind(org_name)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        sqlx::query(
            "INSERT INTO users (id, org_id, email, password_hash, role, created_at) VALUES (?, ?, ?, ?, 'owner', ?)",
        )
        .bind(user_id)
        .bind(org_id)
        .bind(email)
        .bind(password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(unavailable)
    }

    /// A user by email (case-insensitive).
    pub async fn user_by_email(&self, email: &str) -> Result<Option<UserRow>, StoreError> {
        let row = sqlx::query("SELECT id, org_id, email, password_hash, role FROM users WHERE lower(email) = lower(?)")
            .bind(email)
            .fetch_optional(&self.read)
            .await
            .map_err(unavailable)?;
        row.map(|r| {
            Ok(UserRow {
                id: r.try_get("id").map_err(unavailable)?,
                org_id: r.try_get("org_id").map_err(unavailable)?,
                email: r.try_get("email").map_err(unavailable)?,
                password_hash: r.try_get("password_hash").map_err(unavailable)?,
                role: r.try_get("role").map_err(unavailable)?,
            })
        })
        .transpose()
    }

    /// Whether `agent` exists in `org` (deleted agents keep their history).
    pub async fn agent_exists(&self, org: &str, agent: &str) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agents WHERE id = ? AND org_id = ?")
            .bind(agent)
            .bind(org)
            .fetch_one(&self.read)
            .await
            .map_err(unavailable)?;
        Ok(n > 0)
    }

    /// A page of an agent's state history, oldest first, after `cursor`.
    pub async fn history(&self, org: &str, agent: &str, after: i64, limit: i64) -> Result<Vec<HistoryRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, from_state, to_state, reason, by_who, at FROM agent_transitions \
             WHERE org_id = ? AND agent_id = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(org)
        .bind(agent)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(HistoryRow {
                    id: r.try_get("id").map_err(unavailable)?,
                    from: r.try_get("from_state").map_err(unavailable)?,
                    to: r.try_get("to_state").map_err(unavailable)?,
                    reason: r.try_get("reason").map_err(unavailable)?,
                    by: r.try_get("by_who").map_err(unavailable)?,
                    at: rfc3339(r.try_get("at").map_err(unavailable)?),
                })
            })
            .collect()
    }

    /// A page of an agent's events, oldest first, after `cursor`.
    pub async fn events(&self, org: &str, agent: &str, after: i64, limit: i64) -> Result<Vec<EventRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, detail, at FROM agent_events WHERE org_id = ? AND agent_id = ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(org)
        .bind(agent)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail").map_err(unavailable)?;
                Ok(EventRow {
                    id: r.try_get("id").map_err(unavailable)?,
                    kind: r.try_get("kind").map_err(unavailable)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                    at: rfc3339(r.try_get("at").map_err(unavailable)?),
                })
            })
            .collect()
    }

    /// The stored record of an agent (tests and diagnostics; actors hold the live copy).
    pub async fn load_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = ? AND deleted_at IS NULL");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.read).await.map_err(unavailable)?;
        row.as_ref().map(agent_from_row).transpose()
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn insert_agent(&self, rec: &AgentRecord, created: &Transition) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await.map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO agents (id, org_id, name, role, model, target, health_interval_ms, health_failure_threshold, \
             budget_tokens, budget_cost_micros, state, state_reason, restart_count, usage_tokens, usage_cost_micros, \
             usage_period, usage_warned, deployment_ref, runtime_token_hash, epoch, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(rec.id.as_str())
        .bind(rec.org_id.as_str())
        .bind(&rec.spec.name)
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
        .bind(i64::from(rec.usage.warned))
        .bind(rec.deployment_ref.as_deref())
        .bind(rec.runtime_token_hash.as_deref())
        .bind(rec.epoch)
        .bind(rec.created_at)
        .bind(rec.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        insert_transition(&mut tx, rec, created).await.map_err(classify)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn write_agent(&self, w: AgentWrite<'_>) -> Result<WriteOutcome, StoreError> {
        let rec = w.record;
        let mut tx = self.write.begin().await.map_err(unavailable)?;
        if let Some(report) = w.usage_report {
            let fresh = sqlx::query("INSERT OR IGNORE INTO usage_reports (agent_id, report_id, at) VALUES (?, ?, ?)")
                .bind(rec.id.as_str())
                .bind(report)
                .bind(rec.updated_at)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
            if fresh.rows_affected() == 0 {
                tx.rollback().await.map_err(unavailable)?;
                return Ok(WriteOutcome::Duplicate);
            }
        }
        let updated = sqlx::query(
            "UPDATE agents SET name = ?, role = ?, model = ?, target = ?, health_interval_ms = ?, \
             health_failure_threshold = ?, budget_tokens = ?, budget_cost_micros = ?, state = ?, state_reason = ?, \
             restart_count = ?, usage_tokens = ?, usage_cost_micros = ?, usage_period = ?, usage_warned = ?, \
             deployment_ref = ?, runtime_token_hash = ?, updated_at = ? \
             WHERE id = ? AND epoch = ? AND deleted_at IS NULL",
        )
        .bind(&rec.spec.name)
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
        .bind(i64::from(rec.usage.warned))
        .bind(rec.deployment_ref.as_deref())
        .bind(rec.runtime_token_hash.as_deref())
        .bind(rec.updated_at)
        .bind(rec.id.as_str())
        .bind(rec.epoch)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        if updated.rows_affected() == 0 {
            tx.rollback().await.map_err(unavailable)?;
            return Err(StoreError::Fenced);
        }
        for t in w.transitions {
            insert_transition(&mut tx, rec, t).await.map_err(classify)?;
        }
        if let Some(ev) = w.event {
            sqlx::query("INSERT INTO agent_events (agent_id, org_id, kind, detail, at) VALUES (?, ?, ?, ?, ?)")
                .bind(rec.id.as_str())
                .bind(rec.org_id.as_str())
                .bind(&ev.kind)
                .bind(ev.detail.to_string())
                .bind(ev.at)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(WriteOutcome::Written)
    }

    async fn delete_agent(&self, rec: &AgentRecord, at: i64) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await.map_err(unavailable)?;
        let done = sqlx::query("UPDATE agents SET deleted_at = ?, updated_at = ? WHERE id = ? AND epoch = ? AND deleted_at IS NULL")
            .bind(at)
            .bind(at)
            .bind(rec.id.as_str())
            .bind(rec.epoch)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        if done.rows_affected() == 0 {
            tx.rollback().await.map_err(unavailable)?;
            return Err(StoreError::Fenced);
        }
        let deleted = Transition {
            from: Some(rec.state),
            to: rec.state,
            reason: Some("deleted".into()),
            by: "system".into(),
            at,
        };
        insert_transition(&mut tx, rec, &deleted).await.map_err(classify)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn claim_agent(&self, org: &OrgId, id: &AgentId) -> Result<Option<AgentRecord>, StoreError> {
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

    async fn claim_org(&self, org: &OrgId) -> Result<Vec<AgentRecord>, StoreError> {
        let mut tx = self.write.begin().await.map_err(unavailable)?;
        sqlx::query("UPDATE agents SET epoch = epoch + 1 WHERE org_id = ? AND deleted_at IS NULL")
            .bind(org.as_str())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE org_id = ? AND deleted_at IS NULL ORDER BY id");
        let rows = sqlx::query(&sql)
            .bind(org.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        rows.iter().map(agent_from_row).collect()
    }

    async fn list_orgs(&self) -> Result<Vec<OrgId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM orgs ORDER BY id")
            .fetch_all(&self.read)
            .await
            .map_err(unavailable)?;
        Ok(ids.into_iter().map(OrgId).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.write).await.map(|_| ()).map_err(unavailable)
    }
}
