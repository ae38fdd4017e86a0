//! Scheduled tasks (owned by the scheduler actor; the API reads them here).

use super::DecodeRow;
use super::server::{Dialect, at_commit, retry};
use super::sqlite::unavailable;
use super::tables::Tables;
use cadre_actors::audit::AuditEntry;
use cadre_actors::ports::StoreError;
use cadre_actors::task::TaskLimits;
use serde::Serialize;
use sqlx::ColumnIndex;

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

/// The columns after `id`, in the order [`Tables::save_schedule`] binds them.
const FIELDS: [&str; 15] = [
    "org_id",
    "agent_id",
    "cron",
    "timezone",
    "instruction",
    "input",
    "limits",
    "enabled",
    "next_run_at",
    "last_run_at",
    "last_task_id",
    "last_error",
    "created_by",
    "created_at",
    "updated_at",
];

fn columns<D: Dialect>() -> String {
    format!(
        "id, org_id, agent_id, cron, timezone, instruction, {}, {}, {}, next_run_at, \
         last_run_at, last_task_id, last_error, created_by, created_at, updated_at",
        D::json("input"),
        D::json("limits"),
        D::flag("enabled")
    )
}

fn bad(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("unreadable schedule row: {e}"))
}

fn row<R: DecodeRow>(r: &R) -> Result<Schedule, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    let input: String = r.cell("input").map_err(bad)?;
    let limits: String = r.cell("limits").map_err(bad)?;
    Ok(Schedule {
        id: r.cell("id").map_err(bad)?,
        org_id: r.cell("org_id").map_err(bad)?,
        agent_id: r.cell("agent_id").map_err(bad)?,
        cron: r.cell("cron").map_err(bad)?,
        timezone: r.cell("timezone").map_err(bad)?,
        instruction: r.cell("instruction").map_err(bad)?,
        input: serde_json::from_str(&input).map_err(bad)?,
        limits: serde_json::from_str(&limits).map_err(bad)?,
        enabled: r.cell::<i64, _>("enabled").map_err(bad)? != 0,
        next_run_at: r.cell("next_run_at").map_err(bad)?,
        last_run_at: r.cell("last_run_at").map_err(bad)?,
        last_task_id: r.cell("last_task_id").map_err(bad)?,
        last_error: r.cell("last_error").map_err(bad)?,
        created_by: r.cell("created_by").map_err(bad)?,
        created_at: r.cell("created_at").map_err(bad)?,
        updated_at: r.cell("updated_at").map_err(bad)?,
    })
}

on_dialects! {
    impl<D> Tables<D> {
        /// Creates or replaces a schedule, with the audit entry of an
        /// operator's change (none for the scheduler's own bookkeeping).
        pub async fn save_schedule(
            &self,
            s: &Schedule,
            audit: Option<&AuditEntry>,
        ) -> Result<(), StoreError> {
            let input = s.input.to_string();
            let limits = serde_json::to_string(&s.limits).map_err(bad)?;
            let (input, limits) = (input.as_str(), limits.as_str());
            let set = FIELDS
                .iter()
                .map(|c| format!("{c} = {}", D::inserted(c)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = D::sql(&format!(
                "INSERT INTO schedules (id, {}) VALUES (?, ?, ?, ?, ?, ?, ?{j}, ?{j}, ?, ?, ?, ?, ?, ?, ?, ?) \
                 {} {set}",
                FIELDS.join(", "),
                D::upsert("id"),
                j = D::JSON
            ));
            let sql = sql.as_str();
            retry(|| async move {
                let mut tx = self.begin().await?;
                let query = sqlx::query(sql)
                    .bind(s.id.as_str())
                    .bind(s.org_id.as_str())
                    .bind(s.agent_id.as_str())
                    .bind(s.cron.as_str())
                    .bind(s.timezone.as_str())
                    .bind(s.instruction.as_str())
                    .bind(input)
                    .bind(limits)
                    .bind(s.enabled)
                    .bind(s.next_run_at)
                    .bind(s.last_run_at)
                    .bind(s.last_task_id.as_deref())
                    .bind(s.last_error.as_deref())
                    .bind(s.created_by.as_str())
                    .bind(s.created_at)
                    .bind(s.updated_at);
                Self::run(&mut tx, query).await?;
                if let Some(a) = audit {
                    Self::audit_in(&mut tx, a).await?;
                }
                tx.commit().await.map_err(at_commit)
            })
            .await
        }

        /// Deletes a schedule with its audit entry; whether it existed.
        pub async fn delete_schedule(
            &self,
            org: &str,
            id: &str,
            audit: &AuditEntry,
        ) -> Result<bool, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql("DELETE FROM schedules WHERE org_id = ? AND id = ?");
                if Self::run(&mut tx, sqlx::query(&sql).bind(org).bind(id)).await? == 0 {
                    return Ok(false);
                }
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(true)
            })
            .await
        }

        /// Every enabled schedule (the scheduler's start).
        pub async fn enabled_schedules(&self) -> Result<Vec<Schedule>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT {} FROM schedules WHERE enabled = ?",
                columns::<D>()
            ));
            let rows = sqlx::query(&sql)
                .bind(true)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter().map(row).collect()
        }

        /// One schedule of an organization.
        pub async fn schedule(&self, org: &str, id: &str) -> Result<Option<Schedule>, StoreError> {
            let sql = format!(
                "SELECT {} FROM schedules WHERE org_id = ? AND id = ?",
                columns::<D>()
            );
            let r = self.row(&sql, &[org, id]).await?;
            r.as_ref().map(row).transpose()
        }

        /// An agent's schedules, oldest first.
        pub async fn agent_schedules(
            &self,
            org: &str,
            agent: &str,
        ) -> Result<Vec<Schedule>, StoreError> {
            let sql = format!(
                "SELECT {} FROM schedules WHERE org_id = ? AND agent_id = ? ORDER BY id{}",
                columns::<D>(),
                D::BYTES
            );
            let rows = self.rows(&sql, &[org, agent]).await?;
            rows.iter().map(row).collect()
        }
    }
}
