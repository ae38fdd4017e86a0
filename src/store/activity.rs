//! Activity rows: the batched insert the activity writer runs (one
//! transaction per flush), the reads behind `GET /activity` and stream
//! resumes, and the retention delete.

use super::sqlite::unavailable;
use super::{SqlStore, to_i64};
use cadre_actors::ports::StoreError;
use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

/// One activity row to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewActivity {
    /// Organization.
    pub org_id: String,
    /// Agent (absent for organization-level events).
    pub agent_id: Option<String>,
    /// Kind (`tool_call`, `message`, `agent.state_changed`, …).
    pub kind: String,
    /// JSON payload, already serialized.
    pub payload: String,
    /// When it happened (unix ms).
    pub at: i64,
}

impl NewActivity {
    /// Bytes this row weighs in a flush (payload and names).
    pub fn weight(&self) -> usize {
        self.payload.len()
            + self.kind.len()
            + self.org_id.len()
            + self.agent_id.as_ref().map_or(0, String::len)
            + 32
    }
}

/// One stored activity row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ActivityRow {
    /// Event id: increasing, never reused; the stream's `Last-Event-ID`.
    pub id: i64,
    /// Agent.
    pub agent_id: Option<String>,
    /// Kind.
    pub kind: String,
    /// Payload.
    pub payload: serde_json::Value,
    /// When it happened (unix ms).
    #[serde(skip)]
    pub at_ms: i64,
    /// When it happened (RFC 3339).
    pub at: String,
}

/// Filters of an activity read.
#[derive(Debug, Clone, Default)]
pub struct ActivityFilter {
    /// Only this agent's.
    pub agent: Option<String>,
    /// Only these kinds (exact), or kinds starting with a prefix ending in `.`.
    pub kind: Option<String>,
    /// Happened at or after (unix ms).
    pub since: Option<i64>,
    /// Happened before (unix ms).
    pub until: Option<i64>,
}

/// What a flush committed: the id of its first row (the others follow in
/// order), or that this flush had been committed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Id of the first row.
    pub first_id: i64,
    /// `true` when the flush id had been committed already (a re-flush after
    /// the writer was replaced): nothing was written twice.
    pub replayed: bool,
}

/// Rows per INSERT statement (7 parameters each, well under SQLite's limit).
const CHUNK: usize = 1000;

fn activity_row(r: &SqliteRow) -> Result<ActivityRow, StoreError> {
    let bad = |e: sqlx::Error| StoreError::Unavailable(format!("bad activity row: {e}"));
    let at: i64 = r.try_get("at").map_err(bad)?;
    let payload: String = r.try_get("payload").map_err(bad)?;
    Ok(ActivityRow {
        id: r.try_get("id").map_err(bad)?,
        agent_id: r.try_get("agent_id").map_err(bad)?,
        kind: r.try_get("kind").map_err(bad)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        at_ms: at,
        at: cadre_actors::domain::rfc3339(at),
    })
}

impl SqlStore {
    /// Writes one flush in one transaction. `flush_id` makes a re-flush of
    /// the same batch (by a writer that replaced a killed one) a no-op that
    /// answers the ids of the first commit.
    pub async fn write_activity(
        &self,
        flush_id: i64,
        rows: &[&NewActivity],
        now: i64,
    ) -> Result<Flushed, StoreError> {
        let mut tx = self.write_pool().begin().await.map_err(unavailable)?;
        let before: Option<i64> =
            sqlx::query_scalar("SELECT first_id FROM activity_flushes WHERE id = ?")
                .bind(flush_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        if let Some(first_id) = before {
            return Ok(Flushed {
                first_id,
                replayed: true,
            });
        }
        // Ids are assigned here, under the single writer connection: the
        // next after the highest ever used (AUTOINCREMENT's sequence), so
        // they are increasing, never reused, and known without RETURNING.
        let last: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'activity'), 0)",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        let first_id = last + 1;
        let mut id = first_id;
        for chunk in rows.chunks(CHUNK) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO activity (id, org_id, agent_id, kind, payload, at, recorded_at) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(id)
                    .push_bind(r.org_id.as_str())
                    .push_bind(r.agent_id.as_deref())
                    .push_bind(r.kind.as_str())
                    .push_bind(r.payload.as_str())
                    .push_bind(r.at)
                    .push_bind(now);
                id += 1;
            });
            q.build().execute(&mut *tx).await.map_err(unavailable)?;
        }
        sqlx::query("INSERT INTO activity_flushes (id, first_id, count, at) VALUES (?, ?, ?, ?)")
            .bind(flush_id)
            .bind(first_id)
            .bind(to_i64(rows.len() as u64))
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Flushed {
            first_id,
            replayed: false,
        })
    }

    /// A page of `org`'s activity, newest first, with ids below `before`.
    pub async fn activity_page(
        &self,
        org: &str,
        f: &ActivityFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ActivityRow>, StoreError> {
        self.activity_rows(org, f, before.map(|b| ("<", b)), "DESC", limit)
            .await
    }

    /// `org`'s activity after event `after`, oldest first (stream resume).
    pub async fn activity_after(
        &self,
        org: &str,
        f: &ActivityFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ActivityRow>, StoreError> {
        self.activity_rows(org, f, Some((">", after)), "ASC", limit)
            .await
    }

    async fn activity_rows(
        &self,
        org: &str,
        f: &ActivityFilter,
        bound: Option<(&'static str, i64)>,
        order: &'static str,
        limit: i64,
    ) -> Result<Vec<ActivityRow>, StoreError> {
        let mut q = self.activity_query(org, f);
        if let Some((op, id)) = bound {
            q.push(format!(" AND id {op} ")).push_bind(id);
        }
        q.push(format!(" ORDER BY id {order} LIMIT "))
            .push_bind(limit);
        let rows = q
            .build()
            .fetch_all(self.read_pool())
            .await
            .map_err(unavailable)?;
        rows.iter().map(activity_row).collect()
    }

    /// The highest event id so far (0 when there is none).
    pub async fn last_activity_id(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'activity'), 0)",
        )
        .fetch_one(self.read_pool())
        .await
        .map_err(unavailable)
    }

    /// Number of `org`'s activity rows, of one kind if given (tests, usage).
    pub async fn activity_count(&self, org: &str, kind: Option<&str>) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM activity WHERE org_id = ? AND (? IS NULL OR kind = ?)",
        )
        .bind(org)
        .bind(kind)
        .bind(kind)
        .fetch_one(self.read_pool())
        .await
        .map_err(unavailable)
    }

    fn activity_query<'a>(
        &self,
        org: &'a str,
        f: &'a ActivityFilter,
    ) -> sqlx::QueryBuilder<'a, sqlx::Sqlite> {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT id, agent_id, kind, payload, at FROM activity WHERE org_id = ",
        );
        q.push_bind(org);
        if let Some(a) = &f.agent {
            q.push(" AND agent_id = ").push_bind(a.as_str());
        }
        match f.kind.as_deref() {
            Some(k) if k.ends_with('.') => {
                q.push(" AND substr(kind, 1, ")
                    .push_bind(k.len() as i64)
                    .push(") = ")
                    .push_bind(k);
            }
            Some(k) => {
                q.push(" AND kind = ").push_bind(k);
            }
            None => {}
        }
        if let Some(s) = f.since {
            q.push(" AND at >= ").push_bind(s);
        }
        if let Some(u) = f.until {
            q.push(" AND at < ").push_bind(u);
        }
        q
    }

    /// Deletes up to `batch` activity rows of organizations whose retention
    /// has passed (recorded before `now - days`), and flush markers older
    /// than a day. Returns the rows deleted; the caller repeats while it is
    /// `batch`. The audit log is a separate table and never touched here.
    pub async fn expire_activity(
        &self,
        now: i64,
        default_days: u32,
        batch: u32,
    ) -> Result<u64, StoreError> {
        const DAY_MS: i64 = 86_400_000;
        let deleted = sqlx::query(
            "DELETE FROM activity WHERE id IN ( \
               SELECT a.id FROM activity a LEFT JOIN orgs o ON o.id = a.org_id \
               WHERE a.recorded_at < ?1 - COALESCE(o.activity_retention_days, ?2) * ?3 \
               LIMIT ?4)",
        )
        .bind(now)
        .bind(i64::from(default_days))
        .bind(DAY_MS)
        .bind(i64::from(batch))
        .execute(self.write_pool())
        .await
        .map_err(unavailable)?
        .rows_affected();
        sqlx::query("DELETE FROM activity_flushes WHERE at < ?")
            .bind(now - DAY_MS)
            .execute(self.write_pool())
            .await
            .map_err(unavailable)?;
        Ok(deleted)
    }
}
