//! PostgreSQL: the actors' ports (`Store`, `GovStore`) over the schema of
//! `migrations/postgres/`.
//!
//! This is the first part of the PostgreSQL backend: agents (inserts under
//! the plan limit, fenced writes, usage reports counted once, claims,
//! hydration pages), approvals and their compare-and-swap, votes, grants,
//! governance documents and kill switches. It passes the port conformance
//! suite (`tests/ports.rs`) that SQLite's store passes, concurrency tests
//! included. `cadre serve` does not run on it yet: the identity, activity,
//! task and schedule stores and the HTTP layer's reads are still SQLite's
//! (`docs/databases.md`).
//!
//! Where SQLite serializes every write through one connection, PostgreSQL
//! runs transactions side by side, so each guarantee rests on a row lock
//! instead: the organization's row for the agent limit (`UPDATE … WHERE
//! agent_count + 1 <= max`), the agent's row for fencing (`WHERE epoch =`),
//! the approval's row for the compare-and-swap (`UPDATE … WHERE state =
//! 'pending' AND level =` re-checks its condition once a concurrent writer
//! commits), and the usage report's primary key, inserted first with
//! `ON CONFLICT DO NOTHING`, for counting a report once.
//!
//! Reads cast what PostgreSQL stores as `BOOLEAN` or `JSONB` to integers and
//! text, so the row decoders of the SQLite store serve here too; writes bind
//! flags as booleans and JSON documents as text cast to `JSONB`. Paging by
//! id compares with `COLLATE "C"`, byte order, as SQLite does.

use super::governance::{approval_row, grant_row};
use super::sqlite::{AgentRow, agent_from_row};
use super::{DecodeRow, to_i64};
use async_trait::async_trait;
use cadre_actors::approval::{ApprovalRecord, ApprovalState, Vote};
use cadre_actors::audit::AuditEntry;
use cadre_actors::domain::{AgentEvent, AgentId, AgentRecord, OrgId, Transition};
use cadre_actors::governance::{Grant, HaltScope};
use cadre_actors::ports::{
    AgentInsert, AgentWrite, Cas, GovDoc, GovStore, Store, StoreError, WriteOutcome,
};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use std::time::Duration;

/// [`super::sqlite::AGENT_COLUMNS`], read back as text and integers.
const AGENT_COLUMNS: &str = "id, org_id, name, role, model, target, health_interval_ms, \
    health_failure_threshold, budget_tokens, budget_cost_micros, state, state_reason, restart_count, \
    usage_tokens, usage_cost_micros, usage_period, usage_warned::INT::BIGINT AS usage_warned, \
    deployment_ref, runtime_token_hash, epoch, created_at, updated_at, profile, budget_period, \
    runtime::TEXT AS runtime";

/// [`super::governance::APPROVAL_COLS`], likewise.
const APPROVAL_COLUMNS: &str = "id, org_id, agent_id, call_id, tool, args_hash, \
    arguments::TEXT AS arguments, trigger, policy, levels::TEXT AS levels, level, state, \
    outcome::INT::BIGINT AS outcome, requested_by, created_at, expires_at, decided_by, decided_at, \
    comment, grant_id";

const GRANT_COLUMNS: &str =
    "id, org_id, agent_id, tool, args_hash, approval_id, granted_by, created_at, expires_at";

/// The actors' ports on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn classify(e: sqlx::Error) -> StoreError {
    if let Some(db) = e.as_database_error()
        && db.is_unique_violation()
    {
        return StoreError::Conflict(db.message().to_string());
    }
    unavailable(e)
}

/// An agent's runtime settings as stored: NULL for the defaults.
fn runtime_json(r: &cadre_actors::domain::RuntimeSpec) -> Option<String> {
    (!r.is_default())
        .then(|| serde_json::to_string(r).ok())
        .flatten()
}

impl PgStore {
    /// Connects to `url` (`postgres://…`) with at most `connections`
    /// connections. Migrations are applied by [`PgStore::migrate`].
    pub async fn connect(url: &str, connections: u32) -> Result<PgStore, sqlx::Error> {
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await?;
        Ok(PgStore { pool })
    }

    /// Applies pending migrations (embedded in the binary).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        super::backend::POSTGRES.run(&self.pool).await
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The stored record of a live agent.
    pub async fn load_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1 AND deleted_at IS NULL"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.pool.begin().await.map_err(unavailable)
    }

    /// The approval where `column = value` and `org_id`/`agent_id` matches.
    async fn one_approval(
        &self,
        (k1, v1): (&str, &str),
        (k2, v2): (&str, &str),
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE {k1} = $1 AND {k2} = $2"
        ))
        .bind(v1)
        .bind(v2)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        match row {
            None => Ok(None),
            Some(r) => Ok(self.with_votes(vec![approval_row(&r)?]).await?.pop()),
        }
    }

    /// Attaches each request's votes (at its current level while pending).
    async fn with_votes(
        &self,
        mut rows: Vec<ApprovalRecord>,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        if rows.is_empty() {
            return Ok(rows);
        }
        let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        let votes = sqlx::query(
            "SELECT approval_id, level, user_id, approve::INT::BIGINT AS approve, comment, at \
             FROM approval_votes WHERE approval_id = ANY($1) ORDER BY at",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let mut by_id: std::collections::HashMap<String, Vec<Vote>> = Default::default();
        for r in &votes {
            let id: String = r.cell("approval_id").map_err(unavailable)?;
            by_id.entry(id).or_default().push(Vote {
                by: r.cell("user_id").map_err(unavailable)?,
                level: u32::try_from(r.cell::<i64, _>("level").map_err(unavailable)?).unwrap_or(0),
                approve: r.cell::<i64, _>("approve").map_err(unavailable)? != 0,
                comment: r.cell("comment").map_err(unavailable)?,
                at: r.cell("at").map_err(unavailable)?,
            });
        }
        for r in &mut rows {
            if let Some(v) = by_id.remove(&r.id) {
                r.votes = v
                    .into_iter()
                    .filter(|v| v.level == r.level || r.state != ApprovalState::Pending)
                    .collect();
            }
        }
        Ok(rows)
    }
}

async fn insert_audit(conn: &mut PgConnection, a: &AuditEntry) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (org_id, actor, action, target, summary, request_id, client, at) \
         VALUES ($1, $2, $3, $4, $5::JSONB, $6, $7, $8)",
    )
    .bind(a.org_id.as_str())
    .bind(&a.actor)
    .bind(&a.action)
    .bind(&a.target)
    .bind(a.summary.to_string())
    .bind(a.request_id.as_deref())
    .bind(a.client.as_deref())
    .bind(a.at)
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(unavailable)
}

async fn insert_transition(
    conn: &mut PgConnection,
    rec: &AgentRecord,
    t: &Transition,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO agent_transitions (agent_id, org_id, from_state, to_state, reason, by_who, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
    .map_err(unavailable)
}

async fn insert_event(
    conn: &mut PgConnection,
    rec: &AgentRecord,
    ev: &AgentEvent,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO agent_events (agent_id, org_id, kind, detail, at) \
         VALUES ($1, $2, $3, $4::JSONB, $5)",
    )
    .bind(rec.id.as_str())
    .bind(rec.org_id.as_str())
    .bind(&ev.kind)
    .bind(ev.detail.to_string())
    .bind(ev.at)
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(unavailable)
}

async fn insert_vote(conn: &mut PgConnection, id: &str, v: &Vote) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO approval_votes (approval_id, level, user_id, approve, comment, at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id)
    .bind(i64::from(v.level))
    .bind(&v.by)
    .bind(v.approve)
    .bind(&v.comment)
    .bind(v.at)
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(classify)
}

#[async_trait]
impl Store for PgStore {
    async fn insert_agent(&self, ins: AgentInsert<'_>) -> Result<(), StoreError> {
        let rec = ins.record;
        let mut tx = self.begin().await?;
        // The organization's row is the lock concurrent creates queue on.
        let counted = sqlx::query(
            "UPDATE orgs SET agent_count = agent_count + 1 \
             WHERE id = $1 AND ($2::BIGINT IS NULL OR agent_count + 1 <= $2)",
        )
        .bind(rec.org_id.as_str())
        .bind(ins.max_agents.map(to_i64))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if counted.rows_affected() != 1 {
            return Err(StoreError::LimitReached(format!(
                "the organization's plan allows at most {} agents",
                ins.max_agents.unwrap_or(0)
            )));
        }
        sqlx::query(
            "INSERT INTO agents (id, org_id, name, role, model, target, health_interval_ms, \
             health_failure_threshold, budget_tokens, budget_cost_micros, state, state_reason, \
             restart_count, usage_tokens, usage_cost_micros, usage_period, usage_warned, \
             deployment_ref, runtime_token_hash, epoch, created_at, updated_at, profile, \
             budget_period, runtime) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
             $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25::JSONB)",
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
        .bind(rec.usage.warned)
        .bind(rec.deployment_ref.as_deref())
        .bind(rec.runtime_token_hash.as_deref())
        .bind(rec.epoch)
        .bind(rec.created_at)
        .bind(rec.updated_at)
        .bind(rec.spec.profile.as_deref())
        .bind(rec.spec.budget.period.as_str())
        .bind(runtime_json(&rec.spec.runtime))
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        insert_transition(&mut tx, rec, ins.created).await?;
        insert_audit(&mut tx, ins.audit).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn write_agent(&self, w: AgentWrite<'_>) -> Result<WriteOutcome, StoreError> {
        let rec = w.record;
        let mut tx = self.begin().await?;
        // The report's key first: of two concurrent writes of one report,
        // the second waits on the first's row and then finds it taken.
        if let Some(charge) = w.usage {
            let fresh = sqlx::query(
                "INSERT INTO usage_reports (agent_id, report_id, at) VALUES ($1, $2, $3) \
                 ON CONFLICT (agent_id, report_id) DO NOTHING",
            )
            .bind(rec.id.as_str())
            .bind(charge.report_id)
            .bind(rec.updated_at)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            if fresh.rows_affected() == 0 {
                return Ok(WriteOutcome::Duplicate);
            }
        }
        let updated = sqlx::query(
            "UPDATE agents SET name = $1, role = $2, model = $3, target = $4, \
             health_interval_ms = $5, health_failure_threshold = $6, budget_tokens = $7, \
             budget_cost_micros = $8, state = $9, state_reason = $10, restart_count = $11, \
             usage_tokens = $12, usage_cost_micros = $13, usage_period = $14, usage_warned = $15, \
             deployment_ref = $16, runtime_token_hash = $17, updated_at = $18, profile = $19, \
             budget_period = $20, runtime = $21::JSONB \
             WHERE id = $22 AND epoch = $23 AND deleted_at IS NULL",
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
        .bind(rec.usage.warned)
        .bind(rec.deployment_ref.as_deref())
        .bind(rec.runtime_token_hash.as_deref())
        .bind(rec.updated_at)
        .bind(rec.spec.profile.as_deref())
        .bind(rec.spec.budget.period.as_str())
        .bind(runtime_json(&rec.spec.runtime))
        .bind(rec.id.as_str())
        .bind(rec.epoch)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::Fenced);
        }
        if let Some(charge) = w.usage {
            // The organization's spend outlives its agents (deleting agents
            // does not reset the period); it saturates instead of failing.
            sqlx::query(
                "INSERT INTO org_usage (org_id, period, tokens, cost_micros) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (org_id, period) DO UPDATE SET \
                   tokens = CASE WHEN org_usage.tokens > 9223372036854775807 - EXCLUDED.tokens \
                     THEN 9223372036854775807 ELSE org_usage.tokens + EXCLUDED.tokens END, \
                   cost_micros = CASE WHEN org_usage.cost_micros > 9223372036854775807 - EXCLUDED.cost_micros \
                     THEN 9223372036854775807 ELSE org_usage.cost_micros + EXCLUDED.cost_micros END",
            )
            .bind(rec.org_id.as_str())
            .bind(charge.org_period.to_string())
            .bind(to_i64(charge.tokens))
            .bind(to_i64(charge.cost_micros))
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        for t in w.transitions {
            insert_transition(&mut tx, rec, t).await?;
        }
        if let Some(ev) = w.event {
            insert_event(&mut tx, rec, ev).await?;
        }
        if let Some(a) = w.audit {
            insert_audit(&mut tx, a).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(WriteOutcome::Written)
    }

    async fn delete_agent(
        &self,
        rec: &AgentRecord,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE agents SET deleted_at = $1, updated_at = $1 \
             WHERE id = $2 AND epoch = $3 AND deleted_at IS NULL",
        )
        .bind(at)
        .bind(rec.id.as_str())
        .bind(rec.epoch)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Fenced);
        }
        let deleted = Transition {
            from: Some(rec.state),
            to: rec.state,
            reason: Some("deleted".into()),
            by: "system".into(),
            at,
        };
        insert_transition(&mut tx, rec, &deleted).await?;
        sqlx::query("UPDATE orgs SET agent_count = GREATEST(agent_count - 1, 0) WHERE id = $1")
            .bind(rec.org_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn claim_agent(
        &self,
        org: &OrgId,
        id: &AgentId,
    ) -> Result<Option<AgentRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE agents SET epoch = epoch + 1 \
             WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL RETURNING {AGENT_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(org.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(agent_from_row).transpose()
    }

    async fn claim_org(&self, org: &OrgId) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET epoch = epoch + 1 WHERE org_id = $1 AND deleted_at IS NULL")
            .bind(org.as_str())
            .execute(&self.pool)
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
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents \
             WHERE org_id = $1 AND deleted_at IS NULL AND id COLLATE \"C\" > $2 \
             ORDER BY id COLLATE \"C\" LIMIT $3"
        ))
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
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM orgs ORDER BY id COLLATE \"C\"")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(ids.into_iter().map(OrgId).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }
}

#[async_trait]
impl GovStore for PgStore {
    async fn docs(&self, org: &OrgId) -> Result<Vec<GovDoc>, StoreError> {
        let rows = sqlx::query(
            "SELECT kind, name, body::TEXT AS body FROM gov_docs WHERE org_id = $1 \
             ORDER BY kind COLLATE \"C\", name COLLATE \"C\"",
        )
        .bind(org.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok(GovDoc {
                    kind: r.cell("kind").map_err(unavailable)?,
                    name: r.cell("name").map_err(unavailable)?,
                    body: r.cell("body").map_err(unavailable)?,
                })
            })
            .collect()
    }

    async fn put_doc(
        &self,
        org: &OrgId,
        kind: &str,
        name: &str,
        body: Option<&str>,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let n = match body {
            Some(b) => sqlx::query(
                "INSERT INTO gov_docs (org_id, kind, name, body, updated_at) \
                 VALUES ($1, $2, $3, $4::JSONB, $5) ON CONFLICT (org_id, kind, name) \
                 DO UPDATE SET body = EXCLUDED.body, updated_at = EXCLUDED.updated_at",
            )
            .bind(org.as_str())
            .bind(kind)
            .bind(name)
            .bind(b)
            .bind(audit.at)
            .execute(&mut *tx)
            .await,
            None => {
                sqlx::query("DELETE FROM gov_docs WHERE org_id = $1 AND kind = $2 AND name = $3")
                    .bind(org.as_str())
                    .bind(kind)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
            }
        }
        .map_err(unavailable)?
        .rows_affected();
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn insert_approval(
        &self,
        a: &ApprovalRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let levels = serde_json::to_string(&a.levels)
            .map_err(|e| StoreError::Unavailable(format!("approval levels: {e}")))?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO approvals (id, org_id, agent_id, call_id, tool, args_hash, arguments, \
             trigger, policy, levels, level, state, requested_by, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7::JSONB, $8, $9, $10::JSONB, $11, 'pending', $12, \
             $13, $14)",
        )
        .bind(&a.id)
        .bind(a.org_id.as_str())
        .bind(a.agent_id.as_str())
        .bind(&a.call_id)
        .bind(&a.tool)
        .bind(&a.args_hash)
        .bind(a.arguments.to_string())
        .bind(&a.trigger)
        .bind(&a.policy)
        .bind(levels)
        .bind(i64::from(a.level))
        .bind(&a.requested_by)
        .bind(a.created_at)
        .bind(a.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn approval_by_call(
        &self,
        agent: &AgentId,
        call_id: &str,
    ) -> Result<Option<ApprovalRecord>, StoreError> {
        self.one_approval(("agent_id", agent.as_str()), ("call_id", call_id))
            .await
    }

    async fn approval(&self, org: &OrgId, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        self.one_approval(("org_id", org.as_str()), ("id", id)).await
    }

    async fn pending_approvals(&self, org: &OrgId) -> Result<Vec<ApprovalRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE org_id = $1 AND state = 'pending' \
             ORDER BY id COLLATE \"C\""
        ))
        .bind(org.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let rows = rows
            .iter()
            .map(approval_row)
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(500) {
            out.extend(self.with_votes(chunk.to_vec()).await?);
        }
        Ok(out)
    }

    async fn add_vote(
        &self,
        a: &ApprovalRecord,
        vote: &Vote,
        audit: &AuditEntry,
    ) -> Result<Cas, StoreError> {
        let mut tx = self.begin().await?;
        // Locks the request's row: a settlement racing this vote either
        // committed before (the vote is lost) or waits for it.
        let still: Option<i64> = sqlx::query_scalar(
            "SELECT 1::BIGINT FROM approvals WHERE id = $1 AND state = 'pending' AND level = $2 \
             FOR UPDATE",
        )
        .bind(&a.id)
        .bind(i64::from(a.level))
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        if still.is_none() {
            return Ok(Cas::Lost);
        }
        insert_vote(&mut tx, &a.id, vote).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Cas::Applied)
    }

    async fn settle_approval(
        &self,
        a: &ApprovalRecord,
        from_level: u32,
        vote: Option<&Vote>,
        grant: Option<&Grant>,
        audit: &AuditEntry,
    ) -> Result<Cas, StoreError> {
        let mut tx = self.begin().await?;
        // The compare-and-swap: of concurrent settlements the first to
        // commit wins; the others re-check the condition and match nothing.
        let won = sqlx::query(
            "UPDATE approvals SET state = $1, outcome = $2, level = $3, expires_at = $4, \
             decided_by = $5, decided_at = $6, comment = $7, grant_id = $8 \
             WHERE id = $9 AND state = 'pending' AND level = $10",
        )
        .bind(a.state.as_str())
        .bind(a.outcome)
        .bind(i64::from(a.level))
        .bind(a.expires_at)
        .bind(a.decided_by.as_deref())
        .bind(a.decided_at)
        .bind(a.comment.as_deref())
        .bind(a.grant_id.as_deref())
        .bind(&a.id)
        .bind(i64::from(from_level))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if won.rows_affected() == 0 {
            return Ok(Cas::Lost);
        }
        if let Some(v) = vote {
            insert_vote(&mut tx, &a.id, v).await?;
        }
        if let Some(g) = grant {
            sqlx::query(&format!(
                "INSERT INTO grants ({GRANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ))
            .bind(&g.id)
            .bind(g.org_id.as_str())
            .bind(g.agent_id.as_str())
            .bind(&g.tool)
            .bind(&g.args_hash)
            .bind(&g.approval_id)
            .bind(&g.granted_by)
            .bind(g.created_at)
            .bind(g.expires_at)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        }
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Cas::Applied)
    }

    async fn live_grants(&self, now_ms: i64) -> Result<Vec<Grant>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE revoked_at IS NULL AND expires_at > $1"
        ))
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(grant_row).collect()
    }

    async fn revoke_grant(
        &self,
        org: &OrgId,
        id: &str,
        by: &str,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<Option<Grant>, StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE grants SET revoked_at = $1, revoked_by = $2 \
             WHERE org_id = $3 AND id = $4 AND revoked_at IS NULL RETURNING {GRANT_COLUMNS}"
        ))
        .bind(at)
        .bind(by)
        .bind(org.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let grant = grant_row(&row)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(grant))
    }

    async fn set_halt(
        &self,
        scope: &HaltScope,
        on: Option<&str>,
        by: &str,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let org = match scope {
            HaltScope::Instance => None,
            HaltScope::Org(o) | HaltScope::Agent(o, _) => Some(o.as_str()),
        };
        let mut tx = self.begin().await?;
        match on {
            Some(reason) => sqlx::query(
                "INSERT INTO halts (scope, target, org_id, reason, by_who, at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope, target) DO UPDATE SET \
                 reason = EXCLUDED.reason, by_who = EXCLUDED.by_who, at = EXCLUDED.at",
            )
            .bind(scope.kind())
            .bind(scope.target())
            .bind(org)
            .bind(reason)
            .bind(by)
            .bind(at)
            .execute(&mut *tx)
            .await,
            None => sqlx::query("DELETE FROM halts WHERE scope = $1 AND target = $2")
                .bind(scope.kind())
                .bind(scope.target())
                .execute(&mut *tx)
                .await,
        }
        .map_err(unavailable)?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await.map_err(unavailable)
    }

    async fn halts(&self) -> Result<Vec<HaltScope>, StoreError> {
        let rows = sqlx::query("SELECT scope, target, org_id FROM halts ORDER BY at")
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let scope: String = r.cell("scope").map_err(unavailable)?;
            let target: String = r.cell("target").map_err(unavailable)?;
            let org: Option<String> = r.cell("org_id").map_err(unavailable)?;
            out.extend(match scope.as_str() {
                "instance" => Some(HaltScope::Instance),
                "org" => Some(HaltScope::Org(OrgId(target))),
                "agent" => org.map(|o| HaltScope::Agent(OrgId(o), AgentId(target))),
                _ => None,
            });
        }
        Ok(out)
    }
}
