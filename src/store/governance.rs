//! Governance persistence: the organizations' documents, approval requests
//! and their votes, standing grants and kill switches (`GovStore`), plus the
//! read API the HTTP layer pages through.

use super::identity::insert_audit;
use super::sqlite::{SqlStore, classify, unavailable};
use super::writer::Job;
use async_trait::async_trait;
use cadre_actors::approval::{ApprovalRecord, ApprovalState, Vote};
use cadre_actors::audit::AuditEntry;
use cadre_actors::domain::{AgentId, OrgId};
use cadre_actors::governance::{Grant, HaltScope};
use cadre_actors::ports::{Cas, GovDoc, GovStore, StoreError};

fn bad(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("bad approval row: {what}"))
}

pub(super) fn approval_row<R: super::DecodeRow>(r: &R) -> Result<ApprovalRecord, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let g = |e: sqlx::Error| bad(e);
    let state: String = r.cell("state").map_err(g)?;
    let arguments: String = r.cell("arguments").map_err(g)?;
    let levels: String = r.cell("levels").map_err(g)?;
    Ok(ApprovalRecord {
        id: r.cell("id").map_err(g)?,
        org_id: OrgId(r.cell("org_id").map_err(g)?),
        agent_id: AgentId(r.cell("agent_id").map_err(g)?),
        call_id: r.cell("call_id").map_err(g)?,
        tool: r.cell("tool").map_err(g)?,
        args_hash: r.cell("args_hash").map_err(g)?,
        arguments: serde_json::from_str(&arguments).map_err(bad)?,
        trigger: r.cell("trigger").map_err(g)?,
        policy: r.cell("policy").map_err(g)?,
        levels: serde_json::from_str(&levels).map_err(bad)?,
        level: u32::try_from(r.cell::<i64, _>("level").map_err(g)?).unwrap_or(0),
        state: ApprovalState::parse(&state).ok_or_else(|| bad(format!("state {state:?}")))?,
        outcome: r
            .cell::<Option<i64>, _>("outcome")
            .map_err(g)?
            .map(|o| o != 0),
        requested_by: r.cell("requested_by").map_err(g)?,
        created_at: r.cell("created_at").map_err(g)?,
        expires_at: r.cell("expires_at").map_err(g)?,
        decided_by: r.cell("decided_by").map_err(g)?,
        decided_at: r.cell("decided_at").map_err(g)?,
        comment: r.cell("comment").map_err(g)?,
        grant_id: r.cell("grant_id").map_err(g)?,
        votes: Vec::new(),
    })
}

pub(super) fn grant_row<R: super::DecodeRow>(r: &R) -> Result<Grant, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let g = |e: sqlx::Error| StoreError::Unavailable(format!("bad grant row: {e}"));
    Ok(Grant {
        id: r.cell("id").map_err(g)?,
        org_id: OrgId(r.cell("org_id").map_err(g)?),
        agent_id: AgentId(r.cell("agent_id").map_err(g)?),
        tool: r.cell("tool").map_err(g)?,
        args_hash: r.cell("args_hash").map_err(g)?,
        approval_id: r.cell("approval_id").map_err(g)?,
        granted_by: r.cell("granted_by").map_err(g)?,
        created_at: r.cell("created_at").map_err(g)?,
        expires_at: r.cell("expires_at").map_err(g)?,
    })
}

/// Filters of the approvals list.
#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter {
    /// Only this state.
    pub state: Option<String>,
    /// Only this agent.
    pub agent: Option<String>,
    /// Only this tool.
    pub tool: Option<String>,
    /// Ids below this (newest first).
    pub before: Option<String>,
}

#[async_trait]
impl GovStore for SqlStore {
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
        let mut tx = self.write_pool().begin().await.map_err(unavailable)?;
        let n = match body {
            Some(b) => sqlx::query(
                "INSERT INTO gov_docs (org_id, kind, name, body, updated_at) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (org_id, kind, name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            )
            .bind(org.as_str())
            .bind(kind)
            .bind(name)
            .bind(b)
            .bind(audit.at)
            .execute(&mut *tx)
            .await,
            None => sqlx::query("DELETE FROM gov_docs WHERE org_id = ? AND kind = ? AND name = ?")
                .bind(org.as_str())
                .bind(kind)
                .bind(name)
                .execute(&mut *tx)
                .await,
        }
        .map_err(unavailable)?
        .rows_affected();
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(n > 0)
    }

    async fn insert_approval(
        &self,
        a: &ApprovalRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let work = GovWork::Insert(Box::new((a.clone(), audit.clone())));
        self.submit(|done| Job::Gov { work, done })
            .await
            .map(|_| ())
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
        let mut tx = self.write_pool().begin().await.map_err(unavailable)?;
        let still = sqlx::query_scalar::<_, i64>(
            "SELECT 1 FROM approvals WHERE id = ? AND state = 'pending' AND level = ?",
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
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
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
        let work = GovWork::Settle(Box::new(Settle {
            rec: a.clone(),
            from_level,
            vote: vote.cloned(),
            grant: grant.cloned(),
            audit: audit.clone(),
        }));
        self.submit(|done| Job::Gov { work, done }).await
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
        let mut tx = self.write_pool().begin().await.map_err(unavailable)?;
        let row = sqlx::query(
            "UPDATE grants SET revoked_at = ?, revoked_by = ? WHERE org_id = ? AND id = ? AND revoked_at IS NULL \
             RETURNING id, org_id, agent_id, tool, args_hash, approval_id, granted_by, created_at, expires_at",
        )
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
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
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
        let mut tx = self.write_pool().begin().await.map_err(unavailable)?;
        match on {
            Some(reason) => sqlx::query(
                "INSERT INTO halts (scope, target, org_id, reason, by_who, at) VALUES (?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (scope, target) DO UPDATE SET reason = excluded.reason, by_who = excluded.by_who, at = excluded.at",
            )
            .bind(scope.kind())
            .bind(scope.target())
            .bind(org)
            .bind(reason)
            .bind(by)
            .bind(at)
            .execute(&mut *tx)
            .await,
            None => sqlx::query("DELETE FROM halts WHERE scope = ? AND target = ?")
                .bind(scope.kind())
                .bind(scope.target())
                .execute(&mut *tx)
                .await,
        }
        .map_err(unavailable)?;
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn halts(&self) -> Result<Vec<HaltScope>, StoreError> {
        self.tables().halts().await
    }
}

async fn insert_vote(
    tx: &mut sqlx::SqliteConnection,
    id: &str,
    v: &Vote,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO approval_votes (approval_id, level, user_id, approve, comment, at) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(id)
    .bind(i64::from(v.level))
    .bind(&v.by)
    .bind(i64::from(v.approve))
    .bind(&v.comment)
    .bind(v.at)
    .execute(tx)
    .await
    .map_err(classify)?;
    Ok(())
}

/// A settlement of an approval, as the group-commit writer runs it.
#[derive(Debug)]
pub struct Settle {
    rec: ApprovalRecord,
    from_level: u32,
    vote: Option<Vote>,
    grant: Option<Grant>,
    audit: AuditEntry,
}

/// Approval writes that go through the group-commit writer: many decisions
/// (or requests) arriving together share one transaction.
#[derive(Debug)]
pub enum GovWork {
    /// A new request (`Conflict` when its call id was seen).
    Insert(Box<(ApprovalRecord, AuditEntry)>),
    /// A compare-and-swap from pending.
    Settle(Box<Settle>),
}

impl GovWork {
    /// Runs on the writer's connection handle ([`super::direct`]), inside its
    /// transaction. The first statement is the only one that can be refused
    /// (a duplicate call id, a lost compare-and-swap), and a refusal writes
    /// nothing.
    pub(super) fn apply(&self, db: &rusqlite::Connection) -> Result<Cas, StoreError> {
        match self {
            GovWork::Insert(b) => {
                let (a, audit) = &**b;
                insert_approval_direct(db, a, audit).map(|()| Cas::Applied)
            }
            GovWork::Settle(s) => settle_direct(db, s),
        }
    }
}

fn insert_approval_direct(
    db: &rusqlite::Connection,
    a: &ApprovalRecord,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    let levels = serde_json::to_string(&a.levels).map_err(bad)?;
    db.prepare_cached(
        "INSERT INTO approvals (id, org_id, agent_id, call_id, tool, args_hash, arguments, trigger, policy, levels, \
         level, state, requested_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
    )
    .and_then(|mut st| {
        st.execute(rusqlite::params![
            a.id,
            a.org_id.as_str(),
            a.agent_id.as_str(),
            a.call_id,
            a.tool,
            a.args_hash,
            a.arguments.to_string(),
            a.trigger,
            a.policy,
            levels,
            i64::from(a.level),
            a.requested_by,
            a.created_at,
            a.expires_at,
        ])
    })
    .map_err(super::direct::classify)?;
    super::direct::insert_audit(db, audit)
}

/// The compare-and-swap of one settlement: the row changes only while it is
/// still pending at the level the decision was made at; only then are its
/// vote, grant and audit entry written. Two settlements of one approval in
/// a batch: the first wins, the second finds it settled.
fn settle_direct(db: &rusqlite::Connection, s: &Settle) -> Result<Cas, StoreError> {
    use super::direct::unavailable;
    let a = &s.rec;
    let changed = db
        .prepare_cached(
            "UPDATE approvals SET state = ?, outcome = ?, level = ?, expires_at = ?, decided_by = ?, \
             decided_at = ?, comment = ?, grant_id = ? WHERE id = ? AND state = 'pending' AND level = ?",
        )
        .and_then(|mut st| {
            st.execute(rusqlite::params![
                a.state.as_str(),
                a.outcome.map(i64::from),
                i64::from(a.level),
                a.expires_at,
                a.decided_by,
                a.decided_at,
                a.comment,
                a.grant_id,
                a.id,
                i64::from(s.from_level),
            ])
        })
        .map_err(unavailable)?;
    if changed == 0 {
        return Ok(Cas::Lost);
    }
    if let Some(v) = &s.vote {
        db.prepare_cached(
            "INSERT INTO approval_votes (approval_id, level, user_id, approve, comment, at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .and_then(|mut st| {
            st.execute(rusqlite::params![
                a.id,
                i64::from(v.level),
                v.by,
                i64::from(v.approve),
                v.comment,
                v.at,
            ])
        })
        .map_err(unavailable)?;
    }
    if let Some(g) = &s.grant {
        db.prepare_cached(
            "INSERT INTO grants (id, org_id, agent_id, tool, args_hash, approval_id, granted_by, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .and_then(|mut st| {
            st.execute(rusqlite::params![
                g.id,
                g.org_id.as_str(),
                g.agent_id.as_str(),
                g.tool,
                g.args_hash,
                g.approval_id,
                g.granted_by,
                g.created_at,
                g.expires_at,
            ])
        })
        .map_err(unavailable)?;
    }
    super::direct::insert_audit(db, &s.audit)?;
    Ok(Cas::Applied)
}
