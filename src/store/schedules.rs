//! Scheduled tasks (owned by the scheduler actor; the API reads them here).

use super::identity::insert_audit;
use super::sqlite::{SqlStore, unavailable};
use cadre_actors::audit::AuditEntry;
use cadre_actors::ports::StoreError;
use cadre_actors::task::TaskLimits;
use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

/// A schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    /// Id (UUID v7).
    pub id: String,
    /// Organization.
    pub org_id: String,
    /// The agent given the tasks.
    pub agent_id: String,
    /// Cron expression.
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub timezone: String,
    /// The tasks' instruction.
    pub instruction: String,
    /// The tasks' input.
    pub input: serde_json::Value,
    /// The tasks' limits.
    pub limits: TaskLimits,
    /// Whether it runs.
    pub enabled: bool,
    /// Next run (unix ms); `None` when disabled or never again.
    pub next_run_at: Option<i64>,
    /// Last run.
    pub last_run_at: Option<i64>,
    /// The task the last run created.
    pub last_task_id: Option<String>,
    /// Why the last run created no task.
    pub last_error: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
}

const COLUMNS: &str = "id, org_id, agent_id, cron, timezone, instruction, input, limits, enabled, \
    next_run_at, last_run_at, last_task_id, last_error, created_by, created_at, updated_at";

fn bad(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("unreadable schedule row: {e}"))
}

fn row(r: &SqliteRow) -> Result<Schedule, StoreError> {
    let input: String = r.try_get("input").map_err(bad)?;
    let limits: String = r.try_get("limits").map_err(bad)?;
    Ok(Schedule {
        id: r.try_get("id").map_err(bad)?,
        org_id: r.try_get("org_id").map_err(bad)?,
        agent_id: r.try_get("agent_id").map_err(bad)?,
        cron: r.try_get("cron").map_err(bad)?,
        timezone: r.try_get("timezone").map_err(bad)?,
        instruction: r.try_get("instruction").map_err(bad)?,
        input: serde_json::from_str(&input).map_err(bad)?,
        limits: serde_json::from_str(&limits).map_err(bad)?,
        enabled: r.try_get::<i64, _>("enabled").map_err(bad)? != 0,
        next_run_at: r.try_get("next_run_at").map_err(bad)?,
        last_run_at: r.try_get("last_run_at").map_err(bad)?,
        last_task_id: r.try_get("last_task_id").map_err(bad)?,
        last_error: r.try_get("last_error").map_err(bad)?,
        created_by: r.try_get("created_by").map_err(bad)?,
        created_at: r.try_get("created_at").map_err(bad)?,
        updated_at: r.try_get("updated_at").map_err(bad)?,
    })
}

impl SqlStore {
    /// Creates or replaces a schedule, with the audit entry of an
    /// operator's change (none for the scheduler's own bookkeeping).
    pub async fn save_schedule(
        &self,
        s: &Schedule,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_pool().begin().await.map_err(unavailable)?;
        sqlx::query(&format!(
            "INSERT OR REPLACE INTO schedules ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&s.id)
        .bind(&s.org_id)
        .bind(&s.agent_id)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.instruction)
        .bind(s.input.to_string())
        .bind(serde_json::to_string(&s.limits).map_err(bad)?)
        .bind(i64::from(s.enabled))
        .bind(s.next_run_at)
        .bind(s.last_run_at)
        .bind(&s.last_task_id)
        .bind(&s.last_error)
        .bind(&s.created_by)
        .bind(s.created_at)
        .bind(s.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if let Some(a) = audit {
            insert_audit(&mut tx, a).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
    }

    /// Deletes a schedule with its audit entry; whether it existed.
    pub async fn delete_schedule(
        &self,
        org: &str,
        id: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_pool().begin().await.map_err(unavailable)?;
        let n = sqlx::query("DELETE FROM schedules WHERE org_id = ? AND id = ?")
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?
            .rows_affected();
        if n > 0 {
            insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(n > 0)
    }

    /// Every enabled schedule (the scheduler's start).
    pub async fn enabled_schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE enabled = 1"
        ))
        .fetch_all(self.read_pool())
        .await
        .map_err(unavailable)?;
        rows.iter().map(row).collect()
    }

    /// One schedule of an organization.
    pub async fn schedule(&self, org: &str, id: &str) -> Result<Option<Schedule>, StoreError> {
        let r = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE org_id = ? AND id = ?"
        ))
        .bind(org)
        .bind(id)
        .fetch_optional(self.read_pool())
        .await
        .map_err(unavailable)?;
        r.as_ref().map(row).transpose()
    }

    /// An agent's schedules, oldest first.
    pub async fn agent_schedules(
        &self,
        org: &str,
        agent: &str,
    ) -> Result<Vec<Schedule>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE org_id = ? AND agent_id = ? ORDER BY id"
        ))
        .bind(org)
        .bind(agent)
        .fetch_all(self.read_pool())
        .await
        .map_err(unavailable)?;
        rows.iter().map(row).collect()
    }
}
