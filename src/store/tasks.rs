//! Tasks and their steps (the `TaskStore` port, and the reads of the API).

use super::identity::insert_audit;
use super::sqlite::{SqlStore, unavailable};
use async_trait::async_trait;
use cadre_actors::audit::AuditEntry;
use cadre_actors::ports::StoreError;
use cadre_actors::task::{TaskLimits, TaskRecord, TaskState, TaskStep, TaskStore};

pub(super) const COLUMNS: &str = "id, org_id, agent_id, instruction, input, state, result, error, limits, \
                       created_by, created_at, started_at, finished_at, runner_pid, parent_id, from_step, version";

fn bad(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("unreadable task row: {e}"))
}

/// A row of [`COLUMNS`] (JSON documents read back as text), in any dialect.
pub(super) fn task_row<R: super::DecodeRow>(r: &R) -> Result<TaskRecord, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let state: String = r.cell("state").map_err(bad)?;
    let input: String = r.cell("input").map_err(bad)?;
    let limits: String = r.cell("limits").map_err(bad)?;
    Ok(TaskRecord {
        id: r.cell("id").map_err(bad)?,
        org_id: r.cell("org_id").map_err(bad)?,
        agent_id: r.cell("agent_id").map_err(bad)?,
        instruction: r.cell("instruction").map_err(bad)?,
        input: serde_json::from_str(&input).map_err(bad)?,
        state: TaskState::parse(&state).ok_or_else(|| bad(format!("state {state}")))?,
        result: r.cell("result").map_err(bad)?,
        error: r.cell("error").map_err(bad)?,
        limits: serde_json::from_str::<TaskLimits>(&limits).map_err(bad)?,
        created_by: r.cell("created_by").map_err(bad)?,
        created_at: r.cell("created_at").map_err(bad)?,
        started_at: r.cell("started_at").map_err(bad)?,
        finished_at: r.cell("finished_at").map_err(bad)?,
        runner_pid: r
            .cell::<Option<i64>, _>("runner_pid")
            .map_err(bad)?
            .and_then(|p| u32::try_from(p).ok()),
        parent_id: r.cell("parent_id").map_err(bad)?,
        from_step: r
            .cell::<Option<i64>, _>("from_step")
            .map_err(bad)?
            .and_then(|s| u32::try_from(s).ok()),
        version: r
            .cell::<Option<i64>, _>("version")
            .map_err(bad)?
            .and_then(|s| u32::try_from(s).ok()),
    })
}

pub(super) fn json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Unavailable(e.to_string()))
}

#[async_trait]
impl TaskStore for SqlStore {
    async fn insert_task(&self, t: &TaskRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.write_pool().begin().await.map_err(unavailable)?;
        sqlx::query(&format!(
            "INSERT INTO tasks ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(&t.id)
        .bind(&t.org_id)
        .bind(&t.agent_id)
        .bind(&t.instruction)
        .bind(json(&t.input)?)
        .bind(t.state.as_str())
        .bind(&t.result)
        .bind(&t.error)
        .bind(json(&t.limits)?)
        .bind(&t.created_by)
        .bind(t.created_at)
        .bind(t.started_at)
        .bind(t.finished_at)
        .bind(t.runner_pid.map(i64::from))
        .bind(&t.parent_id)
        .bind(t.from_step.map(i64::from))
        .bind(t.version.map(i64::from))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        // A replay starts with copies of its parent's steps before from_step.
        if let (Some(parent), Some(from)) = (&t.parent_id, t.from_step) {
            sqlx::query(
                "INSERT INTO task_steps (task_id, seq, kind, body, tokens, latency_ms, at) \
                 SELECT ?, seq, kind, body, tokens, latency_ms, at FROM task_steps \
                 WHERE task_id = ? AND seq < ?",
            )
            .bind(&t.id)
            .bind(parent)
            .bind(i64::from(from))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn update_task(
        &self,
        t: &TaskRecord,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_pool().begin().await.map_err(unavailable)?;
        sqlx::query(
            "UPDATE tasks SET state = ?, result = ?, error = ?, started_at = ?, finished_at = ?, \
             runner_pid = ? WHERE id = ?",
        )
        .bind(t.state.as_str())
        .bind(&t.result)
        .bind(&t.error)
        .bind(t.started_at)
        .bind(t.finished_at)
        .bind(t.runner_pid.map(i64::from))
        .bind(&t.id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if let Some(a) = audit {
            insert_audit(&mut tx, a).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
    }

    async fn add_step(&self, s: &TaskStep) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO task_steps (task_id, seq, kind, body, tokens, latency_ms, at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id, seq) DO NOTHING",
        )
        .bind(&s.task_id)
        .bind(i64::from(s.seq))
        .bind(&s.kind)
        .bind(json(&s.body)?)
        .bind(i64::try_from(s.tokens).unwrap_or(i64::MAX))
        .bind(i64::try_from(s.latency_ms).unwrap_or(i64::MAX))
        .bind(s.at)
        .execute(self.write_pool())
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    async fn open_tasks(&self, org: &str, agent: &str) -> Result<Vec<TaskRecord>, StoreError> {
        self.tables().open_tasks(org, agent).await
    }
}
