//! Group commit: one writer task turns whatever agent writes are queued into
//! a single transaction, and answers each caller only after that transaction
//! committed.
//!
//! An acknowledgement means exactly what it meant with one transaction per
//! write (the change is durable at the configured `synchronous` level); the
//! commit overhead is shared by everything that arrived meanwhile. Each job's
//! first statement is the only one that can fail on a constraint (unique
//! name, fencing, duplicate usage report are all decided before anything is
//! written), and SQLite aborts just that statement, so a refused job does not
//! disturb its batch. Any other failure rolls the batch back and retries each
//! job in a transaction of its own, so one bad job cannot fail its neighbours.
//!
//! The queue is bounded: when it is full, writers wait (back-pressure), and
//! its depth is exported as `cadre_store_write_queue`.

use super::identity::insert_audit;
use super::sqlite::{classify, insert_transition, unavailable};
use super::to_i64;
use cadre_actors::audit::AuditEntry;
use cadre_actors::domain::{AgentEvent, AgentRecord, AgentVersion, Transition};
use cadre_actors::ports::{Charge, StoreError, WriteOutcome};
use sqlx::{SqliteConnection, SqlitePool};
use std::collections::BTreeMap;
use tokio::sync::{mpsc, oneshot};

/// Jobs waiting beyond this make writers wait.
pub const QUEUE_CAPACITY: usize = 4096;
/// Most jobs in one transaction (bounds how long one commit holds the lock).
const MAX_BATCH: usize = 512;

/// One queued write.
pub enum Job {
    /// A new agent and its creation entry.
    Insert {
        /// Record.
        record: AgentRecord,
        /// History entry.
        created: Transition,
        /// Audit entry.
        audit: AuditEntry,
        /// The organization's agent limit.
        max_agents: Option<u64>,
        /// Its first version.
        version: AgentVersion,
        /// Answer.
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// A fenced agent update.
    Write {
        /// Record.
        record: AgentRecord,
        /// History entries.
        transitions: Vec<Transition>,
        /// Event.
        event: Option<AgentEvent>,
        /// The usage report it counts: id, tokens, micro-dollars, the
        /// organization's period.
        usage: Option<(String, u64, u64, cadre_actors::budget::Period)>,
        /// Audit entry.
        audit: Option<AuditEntry>,
        /// New versions of its definition.
        versions: Vec<AgentVersion>,
        /// Answer.
        done: oneshot::Sender<Result<WriteOutcome, StoreError>>,
    },
    /// An approval request or settlement.
    Gov {
        /// The work.
        work: super::governance::GovWork,
        /// Answer.
        done: oneshot::Sender<Result<cadre_actors::ports::Cas, StoreError>>,
    },
    /// A fenced soft delete.
    Delete {
        /// Record.
        record: AgentRecord,
        /// When.
        at: i64,
        /// Audit entry.
        audit: AuditEntry,
        /// Answer.
        done: oneshot::Sender<Result<(), StoreError>>,
    },
}

enum Outcome {
    Unit(Result<(), StoreError>),
    Write(Result<WriteOutcome, StoreError>),
    Cas(Result<cadre_actors::ports::Cas, StoreError>),
}

impl Outcome {
    fn is_fatal(&self) -> bool {
        matches!(
            self,
            Outcome::Unit(Err(StoreError::Unavailable(_)))
                | Outcome::Write(Err(StoreError::Unavailable(_)))
                | Outcome::Cas(Err(StoreError::Unavailable(_)))
        )
    }
}

impl Job {
    fn answer(self, outcome: Outcome) {
        match (self, outcome) {
            (Job::Insert { done, .. } | Job::Delete { done, .. }, Outcome::Unit(r)) => {
                let _ = done.send(r);
            }
            (Job::Write { done, .. }, Outcome::Write(r)) => {
                let _ = done.send(r);
            }
            (Job::Gov { done, .. }, Outcome::Cas(r)) => {
                let _ = done.send(r);
            }
            (job, _) => job.fail(StoreError::Unavailable(
                "internal: mismatched outcome".into(),
            )),
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Job::Insert { done, .. } | Job::Delete { done, .. } => {
                let _ = done.send(Err(e));
            }
            Job::Write { done, .. } => {
                let _ = done.send(Err(e));
            }
            Job::Gov { done, .. } => {
                let _ = done.send(Err(e));
            }
        }
    }

    async fn apply(&self, conn: &mut SqliteConnection) -> Outcome {
        match self {
            Job::Insert {
                record,
                created,
                audit,
                max_agents,
                version,
                ..
            } => Outcome::Unit(insert(conn, (record, created, audit, version), *max_agents).await),
            Job::Write {
                record,
                transitions,
                event,
                usage,
                audit,
                versions,
                ..
            } => Outcome::Write(
                write(
                    conn,
                    record,
                    transitions,
                    event.as_ref(),
                    usage.as_ref().map(|(id, tokens, cost, period)| Charge {
                        report_id: id,
                        tokens: *tokens,
                        cost_micros: *cost,
                        org_period: *period,
                    }),
                    audit.as_ref(),
                    versions,
                )
                .await,
            ),
            Job::Delete {
                record, at, audit, ..
            } => Outcome::Unit(delete(conn, record, *at, audit).await),
            // Run on the connection's handle by `commit_batch`.
            Job::Gov { .. } => Outcome::Cas(Err(StoreError::Unavailable(
                "internal: approval work outside the batch".into(),
            ))),
        }
    }
}

/// Starts the writer task on `pool` (the single writer connection).
pub fn spawn(pool: SqlitePool) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    tokio::spawn(run(pool, rx));
    tx
}

async fn run(pool: SqlitePool, mut rx: mpsc::Receiver<Job>) {
    let depth = metrics::gauge!("cadre_store_write_queue");
    let sizes = metrics::histogram!("cadre_store_batch_size");
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        depth.set(rx.len() as f64);
        sizes.record(batch.len() as f64);
        commit_batch(&pool, batch).await;
    }
}

/// The approval work of a batch, in order.
fn gov_work(batch: &[Job]) -> Vec<&super::governance::GovWork> {
    batch
        .iter()
        .filter_map(|j| match j {
            Job::Gov { work, .. } => Some(work),
            _ => None,
        })
        .collect()
}

/// Runs approval work on `db` in order. After a failure other than a
/// refusal nothing more runs (the statement may have ended the
/// transaction): `Err`, and the caller rolls back.
fn apply_gov(
    db: &rusqlite::Connection,
    works: &[&super::governance::GovWork],
) -> Result<Vec<Result<cadre_actors::ports::Cas, StoreError>>, StoreError> {
    let mut out = Vec::with_capacity(works.len());
    for work in works {
        let r = work.apply(db);
        if let Err(e @ StoreError::Unavailable(_)) = &r {
            return Err(e.clone());
        }
        out.push(r);
    }
    Ok(out)
}

/// A batch of approval work only (what a stream of decisions queues): one
/// transaction on the connection's handle, a single hand-off to SQLite's
/// thread for the whole batch.
async fn commit_gov(pool: &SqlitePool, batch: Vec<Job>) {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(e) => {
            metrics::counter!("cadre_store_flush_failures_total").increment(1);
            let e = unavailable(e);
            batch.into_iter().for_each(|job| job.fail(e.clone()));
            return;
        }
    };
    let works = gov_work(&batch);
    let result =
        super::direct::transaction(&mut conn, works.len() * 4, |db| apply_gov(db, &works)).await;
    drop(works);
    drop(conn);
    match result {
        Ok(outcomes) => {
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                job.answer(Outcome::Cas(outcome));
            }
        }
        Err(e) => {
            // Rolled back: each job alone, so one bad job cannot fail its
            // neighbours; a job alone is answered with its failure.
            metrics::counter!("cadre_store_flush_failures_total").increment(1);
            tracing::warn!(error = %e, jobs = batch.len(), "approval batch failed; retrying one by one");
            if batch.len() == 1 {
                batch.into_iter().for_each(|job| job.fail(e.clone()));
                return;
            }
            for job in batch {
                Box::pin(commit_batch(pool, vec![job])).await;
            }
        }
    }
}

async fn commit_batch(pool: &SqlitePool, batch: Vec<Job>) {
    if batch.iter().all(|j| matches!(j, Job::Gov { .. })) {
        return commit_gov(pool, batch).await;
    }
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            metrics::counter!("cadre_store_flush_failures_total").increment(1);
            let e = unavailable(e);
            batch.into_iter().for_each(|job| job.fail(e.clone()));
            return;
        }
    };
    // Creates first, as multi-row statements: sqlx-sqlite runs every statement
    // as a round trip to its worker thread, and per-row inserts made those
    // hand-offs the bottleneck of create throughput.
    let inserted = insert_many(&mut tx, &batch).await;
    // Approval work on the connection's handle, in this transaction.
    let gov = gov_work(&batch);
    let gov_outcomes = if gov.is_empty() {
        Vec::new()
    } else {
        // A failure marks every approval job failed: the batch is rolled
        // back below and each job retried alone.
        super::direct::within(&mut tx, gov.len() * 4, |db| apply_gov(db, &gov))
            .await
            .unwrap_or_else(|e| vec![Err(e); gov.len()])
    };
    let mut gov_outcomes = gov_outcomes.into_iter();
    drop(gov);
    let mut outcomes = Vec::with_capacity(batch.len());
    for job in &batch {
        outcomes.push(match (job, &inserted) {
            (Job::Insert { .. }, Some(result)) => Outcome::Unit(result.clone()),
            (Job::Gov { .. }, _) => Outcome::Cas(gov_outcomes.next().unwrap_or_else(|| {
                Err(StoreError::Unavailable("internal: approval count".into()))
            })),
            _ => job.apply(&mut tx).await,
        });
    }
    if outcomes.iter().any(Outcome::is_fatal) {
        // Something other than a refusal went wrong: nothing of the batch
        // is kept (a job may have written part of its rows), and each job
        // is done alone; a job alone is answered with its failure.
        let _ = tx.rollback().await;
        metrics::counter!("cadre_store_flush_failures_total").increment(1);
        if batch.len() == 1 {
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                job.answer(outcome);
            }
            return;
        }
        for job in batch {
            Box::pin(commit_batch(pool, vec![job])).await;
        }
        return;
    }
    match tx.commit().await {
        Ok(()) => {
            for (job, outcome) in batch.into_iter().zip(outcomes) {
                job.answer(outcome);
            }
        }
        Err(e) => {
            metrics::counter!("cadre_store_flush_failures_total").increment(1);
            let e = unavailable(e);
            batch.into_iter().for_each(|job| job.fail(e.clone()));
        }
    }
}

/// Inserts every `Insert` job of the batch with one statement per table.
/// `None` when there are fewer than two; `Some(Err)` when a statement failed
/// (a duplicate name, say): that marks the batch failed, so it is rolled back
/// and every job retried in a transaction of its own, and only the offending
/// create is refused. No savepoint: its sub-journal cost more than it saved.
async fn insert_many(conn: &mut SqliteConnection, batch: &[Job]) -> Option<Result<(), StoreError>> {
    let mut jobs: Vec<NewAgent<'_>> = Vec::new();
    // Per organization: how many agents the batch adds, and the tightest limit.
    let mut per_org: BTreeMap<&str, (u64, Option<u64>)> = BTreeMap::new();
    for job in batch {
        if let Job::Insert {
            record,
            created,
            audit,
            max_agents,
            version,
            ..
        } = job
        {
            jobs.push((record, created, audit, version));
            let e = per_org.entry(record.org_id.as_str()).or_insert((0, None));
            e.0 += 1;
            e.1 = match (e.1, *max_agents) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    if jobs.len() < 2 {
        return None;
    }
    for (org, (n, max)) in per_org {
        match count_agents(conn, org, n, max).await {
            Ok(true) => {}
            // Over the limit as a whole: the per-job retry decides which fit.
            Ok(false) => return Some(Err(StoreError::Unavailable("batch over a limit".into()))),
            Err(e) => return Some(Err(unavailable(e))),
        }
    }
    Some(
        insert_rows(conn, &jobs)
            .await
            .map_err(|e| StoreError::Unavailable(format!("batched insert failed: {e}"))),
    )
}

/// Adds `n` to the organization's live-agent count if that keeps it within
/// `max`; `false` (and nothing changed) otherwise. This row update is what
/// makes the limit atomic: concurrent inserts serialize on it.
async fn count_agents(
    conn: &mut SqliteConnection,
    org: &str,
    n: u64,
    max: Option<u64>,
) -> Result<bool, sqlx::Error> {
    let n = to_i64(n);
    let done = sqlx::query(
        "UPDATE orgs SET agent_count = agent_count + ? WHERE id = ? AND (? IS NULL OR agent_count + ? <= ?)",
    )
    .bind(n)
    .bind(org)
    .bind(max.map(to_i64))
    .bind(n)
    .bind(max.map(to_i64))
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A new agent: record, creation entry, audit entry, first version.
type NewAgent<'a> = (
    &'a AgentRecord,
    &'a Transition,
    &'a AuditEntry,
    &'a AgentVersion,
);

/// Inserts versions of agents' definitions.
async fn insert_versions<'a>(
    conn: &mut SqliteConnection,
    versions: impl Iterator<Item = &'a AgentVersion>,
) -> Result<(), sqlx::Error> {
    let versions: Vec<&AgentVersion> = versions.collect();
    if versions.is_empty() {
        return Ok(());
    }
    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO agent_versions (agent_id, n, org_id, definition, by_who, at) ",
    );
    q.push_values(versions, |mut b, v| {
        b.push_bind(v.agent_id.as_str())
            .push_bind(i64::from(v.n))
            .push_bind(v.org_id.as_str())
            .push_bind(v.definition.to_string())
            .push_bind(&v.by)
            .push_bind(v.at);
    });
    q.build().execute(&mut *conn).await.map(|_| ())
}

/// An agent's runtime settings as stored: NULL for the defaults.
fn runtime_json(r: &cadre_actors::domain::RuntimeSpec) -> Option<String> {
    (!r.is_default())
        .then(|| serde_json::to_string(r).ok())
        .flatten()
}

/// Inserts agents and their creation entries: one statement per table.
async fn insert_rows(
    conn: &mut SqliteConnection,
    rows: &[NewAgent<'_>],
) -> Result<(), sqlx::Error> {
    let mut agents = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO agents (id, org_id, name, role, model, target, health_interval_ms, health_failure_threshold, \
         budget_tokens, budget_cost_micros, state, state_reason, restart_count, usage_tokens, usage_cost_micros, \
         usage_period, usage_warned, deployment_ref, runtime_token_hash, epoch, created_at, updated_at, \
         profile, budget_period, runtime, job) ",
    );
    agents.push_values(rows, |mut b, (rec, _, _, _)| {
        b.push_bind(rec.id.as_str())
            .push_bind(rec.org_id.as_str())
            .push_bind(&rec.spec.name)
            .push_bind(rec.spec.role.as_deref())
            .push_bind(rec.spec.model.as_deref())
            .push_bind(rec.spec.target.as_str())
            .push_bind(rec.spec.health.interval_ms.map(to_i64))
            .push_bind(rec.spec.health.failure_threshold.map(i64::from))
            .push_bind(rec.spec.budget.monthly_tokens.map(to_i64))
            .push_bind(rec.spec.budget.monthly_cost_micros.map(to_i64))
            .push_bind(rec.state.as_str())
            .push_bind(rec.state_reason.as_deref())
            .push_bind(i64::from(rec.restart_count))
            .push_bind(to_i64(rec.usage.tokens))
            .push_bind(to_i64(rec.usage.cost_micros))
            .push_bind(rec.usage.period.to_string())
            .push_bind(i64::from(rec.usage.warned))
            .push_bind(rec.deployment_ref.as_deref())
            .push_bind(rec.runtime_token_hash.as_deref())
            .push_bind(rec.epoch)
            .push_bind(rec.created_at)
            .push_bind(rec.updated_at)
            .push_bind(rec.spec.profile.as_deref())
            .push_bind(rec.spec.budget.period.as_str())
            .push_bind(runtime_json(&rec.spec.runtime))
            .push_bind(super::sqlite::job_json(&rec.spec.job));
    });
    agents.build().execute(&mut *conn).await?;
    let mut history = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO agent_transitions (agent_id, org_id, from_state, to_state, reason, by_who, at) ",
    );
    history.push_values(rows, |mut b, (rec, t, _, _)| {
        b.push_bind(rec.id.as_str())
            .push_bind(rec.org_id.as_str())
            .push_bind(t.from.map(|s| s.as_str()))
            .push_bind(t.to.as_str())
            .push_bind(t.reason.as_deref())
            .push_bind(&t.by)
            .push_bind(t.at);
    });
    history.build().execute(&mut *conn).await?;
    let mut audit = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO audit_log (org_id, actor, action, target, summary, request_id, client, at) ",
    );
    audit.push_values(rows, |mut b, (_, _, a, _)| {
        b.push_bind(a.org_id.as_str())
            .push_bind(&a.actor)
            .push_bind(&a.action)
            .push_bind(&a.target)
            .push_bind(a.summary.to_string())
            .push_bind(a.request_id.as_deref())
            .push_bind(a.client.as_deref())
            .push_bind(a.at);
    });
    audit.build().execute(&mut *conn).await?;
    insert_versions(conn, rows.iter().map(|r| r.3)).await
}

async fn insert(
    conn: &mut SqliteConnection,
    new: NewAgent<'_>,
    max_agents: Option<u64>,
) -> Result<(), StoreError> {
    let org = new.0.org_id.as_str();
    if !count_agents(conn, org, 1, max_agents)
        .await
        .map_err(unavailable)?
    {
        return Err(StoreError::LimitReached(format!(
            "the organization's plan allows at most {} agents",
            max_agents.unwrap_or(0)
        )));
    }
    match insert_rows(conn, &[new]).await {
        Ok(()) => Ok(()),
        Err(e) => {
            // A refused create (a duplicate name) is answered and its batch
            // committed: give its slot back, or the count drifts up with
            // every refusal until the plan's limit refuses creates falsely.
            sqlx::query("UPDATE orgs SET agent_count = agent_count - 1 WHERE id = ?")
                .bind(org)
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            Err(classify(e))
        }
    }
}

async fn write(
    conn: &mut SqliteConnection,
    rec: &AgentRecord,
    transitions: &[Transition],
    event: Option<&AgentEvent>,
    usage: Option<Charge<'_>>,
    audit: Option<&AuditEntry>,
    versions: &[AgentVersion],
) -> Result<WriteOutcome, StoreError> {
    // Decide duplicates before writing anything (see the module docs).
    if let Some(report) = usage.map(|c| c.report_id) {
        let seen: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM usage_reports WHERE agent_id = ? AND report_id = ?")
                .bind(rec.id.as_str())
                .bind(report)
                .fetch_optional(&mut *conn)
                .await
                .map_err(unavailable)?;
        if seen.is_some() {
            return Ok(WriteOutcome::Duplicate);
        }
    }
    let updated = sqlx::query(
        "UPDATE agents SET name = ?, role = ?, model = ?, target = ?, health_interval_ms = ?, \
         health_failure_threshold = ?, budget_tokens = ?, budget_cost_micros = ?, state = ?, state_reason = ?, \
         restart_count = ?, usage_tokens = ?, usage_cost_micros = ?, usage_period = ?, usage_warned = ?, \
         deployment_ref = ?, runtime_token_hash = ?, updated_at = ?, profile = ?, budget_period = ?, runtime = ?, \
         job = ? WHERE id = ? AND epoch = ? AND deleted_at IS NULL",
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
    .bind(rec.spec.profile.as_deref())
    .bind(rec.spec.budget.period.as_str())
    .bind(runtime_json(&rec.spec.runtime))
    .bind(super::sqlite::job_json(&rec.spec.job))
    .bind(rec.id.as_str())
    .bind(rec.epoch)
    .execute(&mut *conn)
    .await
    .map_err(classify)?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::Fenced);
    }
    if let Some(charge) = usage {
        sqlx::query(
            "INSERT INTO usage_reports (agent_id, report_id, at, org_id, tokens, cost_micros) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(rec.id.as_str())
        .bind(charge.report_id)
        .bind(rec.updated_at)
        .bind(rec.org_id.as_str())
        .bind(i64::try_from(charge.tokens).unwrap_or(i64::MAX))
        .bind(i64::try_from(charge.cost_micros).unwrap_or(i64::MAX))
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
        // The organization's spend survives the agent's deletion, so an
        // organization cannot reset its month by deleting agents.
        sqlx::query(
            "INSERT INTO org_usage (org_id, period, tokens, cost_micros) VALUES (?, ?, ?, ?) \
             ON CONFLICT (org_id, period) DO UPDATE SET \
               tokens = CASE WHEN tokens > 9223372036854775807 - excluded.tokens \
                 THEN 9223372036854775807 ELSE tokens + excluded.tokens END, \
               cost_micros = CASE WHEN cost_micros > 9223372036854775807 - excluded.cost_micros \
                 THEN 9223372036854775807 ELSE cost_micros + excluded.cost_micros END",
        )
        .bind(rec.org_id.as_str())
        .bind(charge.org_period.to_string())
        .bind(to_i64(charge.tokens))
        .bind(to_i64(charge.cost_micros))
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    }
    for t in transitions {
        insert_transition(conn, rec, t).await.map_err(unavailable)?;
    }
    if let Some(ev) = event {
        sqlx::query(
            "INSERT INTO agent_events (agent_id, org_id, kind, detail, at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(rec.id.as_str())
        .bind(rec.org_id.as_str())
        .bind(&ev.kind)
        .bind(ev.detail.to_string())
        .bind(ev.at)
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    }
    if let Some(a) = audit {
        insert_audit(conn, a).await.map_err(unavailable)?;
    }
    insert_versions(conn, versions.iter())
        .await
        .map_err(unavailable)?;
    Ok(WriteOutcome::Written)
}

async fn delete(
    conn: &mut SqliteConnection,
    rec: &AgentRecord,
    at: i64,
    audit: &AuditEntry,
) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE agents SET deleted_at = ?, updated_at = ? WHERE id = ? AND epoch = ? AND deleted_at IS NULL")
        .bind(at)
        .bind(at)
        .bind(rec.id.as_str())
        .bind(rec.epoch)
        .execute(&mut *conn)
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
    insert_transition(conn, rec, &deleted)
        .await
        .map_err(unavailable)?;
    sqlx::query("UPDATE orgs SET agent_count = MAX(agent_count - 1, 0) WHERE id = ?")
        .bind(rec.org_id.as_str())
        .execute(&mut *conn)
        .await
        .map_err(unavailable)?;
    insert_audit(conn, audit).await.map_err(unavailable)
}
