//! The HTTP layer's reads of agents (ids by name, history, events, counts
//! by state), approvals and grants, kill switches and tasks: the same
//! statements on every backend, on [`Tables`].

use super::governance::{ApprovalFilter, approval_row, grant_row};
use super::server::{GRANT_COLUMNS, approval_columns, task_columns};
use super::sqlite::unavailable;
use super::tables::Tables;
use super::tasks::task_row;
use super::{DecodeRow, EventRow, HistoryRow};
use cadre_actors::approval::{ApprovalRecord, ApprovalState, Vote};
use cadre_actors::domain::{AgentId, AgentVersion, OrgId, rfc3339};
use cadre_actors::governance::{Grant, HaltScope};
use cadre_actors::ports::{GovDoc, StoreError};
use cadre_actors::task::{TaskRecord, TaskState, TaskStep};

fn bad(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("unreadable row: {what}"))
}

/// A kill switch that is on: (scope, target, organization, reason, by, at).
pub type HaltRow = (String, String, Option<String>, Option<String>, String, i64);

on_dialects! {
    impl<D> Tables<D> {
        /// An agent's versions with numbers below `before`, newest first
        /// (of the organization `org` when given).
        pub async fn versions_page(
            &self,
            org: Option<&str>,
            agent: &str,
            before: i64,
            limit: i64,
        ) -> Result<Vec<AgentVersion>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT agent_id, {n} AS n, org_id, {}, by_who, at FROM agent_versions \
                 WHERE agent_id = ? AND (? IS NULL OR org_id = ?) AND n < ? ORDER BY n DESC LIMIT ?",
                D::json("definition"),
                n = D::int("n"),
            ));
            let rows = sqlx::query(&sql)
                .bind(agent)
                .bind(org)
                .bind(org)
                .bind(before)
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    let n: i64 = r.cell("n").map_err(bad)?;
                    let definition: String = r.cell("definition").map_err(bad)?;
                    Ok(AgentVersion {
                        agent_id: AgentId(r.cell("agent_id").map_err(bad)?),
                        org_id: OrgId(r.cell("org_id").map_err(bad)?),
                        n: u32::try_from(n).map_err(bad)?,
                        definition: serde_json::from_str(&definition).map_err(bad)?,
                        by: r.cell("by_who").map_err(bad)?,
                        at: r.cell("at").map_err(bad)?,
                    })
                })
                .collect()
        }

        /// An agent's newest version, if it has any.
        pub async fn latest_version(&self, agent: &str) -> Result<Option<AgentVersion>, StoreError> {
            Ok(self.versions_page(None, agent, i64::MAX, 1).await?.pop())
        }

        /// Number of organizations.
        pub async fn org_count(&self) -> Result<i64, StoreError> {
            let sql = format!("SELECT {} AS n FROM orgs", D::int("COUNT(*)"));
            let row = sqlx::query(&sql).fetch_one(&self.read).await.map_err(unavailable)?;
            row.cell("n").map_err(bad)
        }

        /// One stored organization secret per organization that has any:
        /// (organization, body). The start checks the secrets key opens them.
        pub async fn secret_samples(&self) -> Result<Vec<(String, String)>, StoreError> {
            let sql = format!(
                "SELECT org_id, {} FROM gov_docs g WHERE kind = 'secret' AND name = \
                 (SELECT MIN(name) FROM gov_docs h WHERE h.org_id = g.org_id AND h.kind = 'secret')",
                D::json("body"),
            );
            let rows = sqlx::query(&sql).fetch_all(&self.read).await.map_err(unavailable)?;
            rows.iter()
                .map(|r| Ok((r.cell("org_id").map_err(bad)?, r.cell("body").map_err(bad)?)))
                .collect()
        }

        /// Tokens and micro-dollars of counted usage reports in `[from, to)`
        /// by quarter hour (its start, unix ms), of an organization or of one
        /// of its agents. Quarter hours because every time zone's midnight
        /// falls on one: the caller adds them up into the days (or hours) of
        /// a budget period in its organization's time zone.
        pub async fn spend_slots(
            &self,
            org: &str,
            agent: Option<&str>,
            from: i64,
            to: i64,
        ) -> Result<Vec<(i64, i64, i64)>, StoreError> {
            let sql = format!(
                "SELECT at - (at % 900000) AS slot, {} AS tokens, {} AS cost FROM usage_reports \
                 WHERE org_id = ? AND at >= ? AND at < ?{} GROUP BY at - (at % 900000)",
                D::int("SUM(tokens)"),
                D::int("SUM(cost_micros)"),
                if agent.is_some() { " AND agent_id = ?" } else { "" },
            );
            let sql = D::sql(&sql);
            let mut query = sqlx::query(&sql).bind(org).bind(from).bind(to);
            if let Some(a) = agent {
                query = query.bind(a);
            }
            let rows = query.fetch_all(&self.read).await.map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.cell("slot").map_err(bad)?,
                        r.cell("tokens").map_err(bad)?,
                        r.cell("cost").map_err(bad)?,
                    ))
                })
                .collect()
        }

        /// A live agent's id by its name (or its id) in an organization.
        pub async fn agent_id_by_name(
            &self,
            org: &str,
            name: &str,
        ) -> Result<Option<String>, StoreError> {
            let sql = D::sql(
                "SELECT id FROM agents WHERE org_id = ? AND (name = ? OR id = ?) \
                 AND deleted_at IS NULL LIMIT 1",
            );
            let row = self.row(&sql, &[org, name, name]).await?;
            row.map(|r| r.cell("id").map_err(bad)).transpose()
        }

        /// Whether `agent` exists in `org` (deleted agents keep their history).
        pub async fn agent_exists(&self, org: &str, agent: &str) -> Result<bool, StoreError> {
            let row = self.row(
                "SELECT id FROM agents WHERE id = ? AND org_id = ?",
                &[agent, org],
            )
            .await?;
            Ok(row.is_some())
        }

        /// Live agents by organization and state (the `cadre_agents` gauge). The
        /// agents table is write-through, so this is what the actors hold.
        pub async fn agent_state_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
            let sql = format!(
                "SELECT org_id, state, {} AS n FROM agents WHERE deleted_at IS NULL \
                 GROUP BY org_id, state",
                D::int("COUNT(*)")
            );
            let rows = sqlx::query(&sql).fetch_all(&self.read).await.map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.cell("org_id").map_err(bad)?,
                        r.cell("state").map_err(bad)?,
                        r.cell("n").map_err(bad)?,
                    ))
                })
                .collect()
        }

        /// A page of an agent's state history, oldest first, after `cursor`.
        pub async fn history(
            &self,
            org: &str,
            agent: &str,
            after: i64,
            limit: i64,
        ) -> Result<Vec<HistoryRow>, StoreError> {
            self.history_between(org, agent, after, (i64::MIN, i64::MAX), limit)
                .await
        }

        /// Like [`Tables::history`], of the transitions made in `[from, until)`
        /// (unix ms).
        pub async fn history_between(
            &self,
            org: &str,
            agent: &str,
            after: i64,
            (from, until): (i64, i64),
            limit: i64,
        ) -> Result<Vec<HistoryRow>, StoreError> {
            let sql = D::sql(
                "SELECT id, from_state, to_state, reason, by_who, at FROM agent_transitions \
                 WHERE org_id = ? AND agent_id = ? AND id > ? AND at >= ? AND at < ? \
                 ORDER BY id LIMIT ?",
            );
            let rows = sqlx::query(&sql)
                .bind(org)
                .bind(agent)
                .bind(after)
                .bind(from)
                .bind(until)
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    Ok(HistoryRow {
                        id: r.cell("id").map_err(bad)?,
                        from: r.cell("from_state").map_err(bad)?,
                        to: r.cell("to_state").map_err(bad)?,
                        reason: r.cell("reason").map_err(bad)?,
                        by: r.cell("by_who").map_err(bad)?,
                        at: rfc3339(r.cell("at").map_err(bad)?),
                    })
                })
                .collect()
        }

        /// A page of an agent's events, oldest first, after `cursor`.
        pub async fn events(
            &self,
            org: &str,
            agent: &str,
            after: i64,
            limit: i64,
        ) -> Result<Vec<EventRow>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT id, kind, {}, at FROM agent_events \
                 WHERE org_id = ? AND agent_id = ? AND id > ? ORDER BY id LIMIT ?",
                D::json("detail")
            ));
            let rows = sqlx::query(&sql)
                .bind(org)
                .bind(agent)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    let detail: String = r.cell("detail").map_err(bad)?;
                    Ok(EventRow {
                        id: r.cell("id").map_err(bad)?,
                        kind: r.cell("kind").map_err(bad)?,
                        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                        at: rfc3339(r.cell("at").map_err(bad)?),
                    })
                })
                .collect()
        }

        /// Attaches each request's votes (at its current level while pending),
        /// read on `pool` (the writer's, where a caller must see its own writes).
        pub(super) async fn with_votes_on(
            pool: &sqlx::Pool<D>,
            mut rows: Vec<ApprovalRecord>,
        ) -> Result<Vec<ApprovalRecord>, StoreError> {
            if rows.is_empty() {
                return Ok(rows);
            }
            let marks = vec!["?"; rows.len()].join(", ");
            let sql = D::sql(&format!(
                "SELECT approval_id, level, user_id, {}, comment, at FROM approval_votes \
                 WHERE approval_id IN ({marks}) ORDER BY at",
                D::flag("approve")
            ));
            let mut query = sqlx::query(&sql);
            for r in &rows {
                query = query.bind(r.id.as_str());
            }
            let votes = query.fetch_all(pool).await.map_err(unavailable)?;
            let mut by_id: std::collections::HashMap<String, Vec<Vote>> = Default::default();
            for r in &votes {
                let id: String = r.cell("approval_id").map_err(unavailable)?;
                by_id.entry(id).or_default().push(Vote {
                    by: r.cell("user_id").map_err(unavailable)?,
                    level: u32::try_from(r.cell::<i64, _>("level").map_err(unavailable)?)
                        .unwrap_or(0),
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

        /// A page of an organization's approval requests, newest first.
        pub async fn approvals_page(
            &self,
            org: &str,
            f: &ApprovalFilter,
            limit: i64,
        ) -> Result<Vec<ApprovalRecord>, StoreError> {
            let mut sql = format!(
                "SELECT {} FROM approvals WHERE org_id = ?",
                approval_columns::<D>()
            );
            // `decided`: every state but `pending` (the inbox's history).
            let decided = f.state.as_deref() == Some("decided");
            let state = if decided { Some("pending") } else { f.state.as_deref() };
            for (given, clause) in [
                (decided, " AND state <> ?"),
                (f.state.is_some() && !decided, " AND state = ?"),
                (f.agent.is_some(), " AND agent_id = ?"),
                (f.tool.is_some(), " AND tool = ?"),
            ] {
                if given {
                    sql.push_str(clause);
                }
            }
            if f.before.is_some() {
                sql.push_str(&format!(" AND id{} < ?", D::BYTES));
            }
            sql.push_str(&format!(" ORDER BY id{} DESC LIMIT ?", D::BYTES));
            let sql = D::sql(&sql);
            let mut query = sqlx::query(&sql).bind(org);
            for v in [state, f.agent.as_deref(), f.tool.as_deref(), f.before.as_deref()]
                .into_iter()
                .flatten()
            {
                query = query.bind(v);
            }
            let rows = query
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            let rows = rows
                .iter()
                .map(approval_row)
                .collect::<Result<Vec<_>, _>>()?;
            Self::with_votes_on(&self.read, rows).await
        }

        /// A page of an organization's grants (live and revoked), newest
        /// first: each with when it was revoked.
        pub async fn grants_page(
            &self,
            org: &str,
            before: Option<&str>,
            limit: i64,
        ) -> Result<Vec<(Grant, Option<i64>)>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT {}, revoked_at FROM grants WHERE org_id = ? AND (? IS NULL OR id{b} < ?) \
                 ORDER BY id{b} DESC LIMIT ?",
                GRANT_COLUMNS,
                b = D::BYTES
            ));
            let rows = sqlx::query(&sql)
                .bind(org)
                .bind(before)
                .bind(before)
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| Ok((grant_row(r)?, r.cell("revoked_at").map_err(unavailable)?)))
                .collect()
        }

        /// Every kill switch that is on, oldest first.
        pub async fn halt_rows(&self) -> Result<Vec<HaltRow>, StoreError> {
            let rows = sqlx::query("SELECT scope, target, org_id, reason, by_who, at FROM halts ORDER BY at")
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.cell("scope").map_err(unavailable)?,
                        r.cell("target").map_err(unavailable)?,
                        r.cell("org_id").map_err(unavailable)?,
                        r.cell("reason").map_err(unavailable)?,
                        r.cell("by_who").map_err(unavailable)?,
                        r.cell("at").map_err(unavailable)?,
                    ))
                })
                .collect()
        }

        /// One task of `org`.
        pub async fn task(&self, org: &str, id: &str) -> Result<Option<TaskRecord>, StoreError> {
            let sql = format!(
                "SELECT {} FROM tasks WHERE org_id = ? AND id = ?",
                task_columns::<D>()
            );
            let row = self.row(&sql, &[org, id]).await?;
            row.as_ref().map(task_row).transpose()
        }

        /// The newest `limit` tasks of a conversation with an agent (its
        /// replies: their input names it), newest first.
        pub async fn conversation_tasks(
            &self,
            org: &str,
            agent: &str,
            conversation: &str,
            limit: u32,
        ) -> Result<Vec<TaskRecord>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT {} FROM tasks WHERE org_id = ? AND agent_id = ? AND {} = ? \
                 ORDER BY id{b} DESC LIMIT ?",
                task_columns::<D>(),
                D::json_text("input", "conversation_id"),
                b = D::BYTES
            ));
            let rows = sqlx::query(&sql)
                .bind(org)
                .bind(agent)
                .bind(conversation)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter().map(task_row).collect()
        }

        /// A page of an agent's tasks, newest first, with ids below `before`.
        pub async fn tasks_page(
            &self,
            org: &str,
            agent: &str,
            state: Option<TaskState>,
            before: Option<&str>,
            limit: u32,
        ) -> Result<Vec<TaskRecord>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT {} FROM tasks WHERE org_id = ? AND agent_id = ? \
                 AND (? IS NULL OR state = ?) AND (? IS NULL OR id{b} < ?) \
                 ORDER BY id{b} DESC LIMIT ?",
                task_columns::<D>(),
                b = D::BYTES
            ));
            let rows = sqlx::query(&sql)
                .bind(org)
                .bind(agent)
                .bind(state.map(TaskState::as_str))
                .bind(state.map(TaskState::as_str))
                .bind(before)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter().map(task_row).collect()
        }

        /// A task's steps in order (after `after`, at most `limit`).
        pub async fn task_steps(
            &self,
            task: &str,
            after: u32,
            limit: u32,
        ) -> Result<Vec<TaskStep>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT task_id, seq, kind, {}, tokens, latency_ms, at FROM task_steps \
                 WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                D::json("body")
            ));
            let rows = sqlx::query(&sql)
                .bind(task)
                .bind(i64::from(after))
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    let body: String = r.cell("body").map_err(bad)?;
                    let seq: i64 = r.cell("seq").map_err(bad)?;
                    let tokens: i64 = r.cell("tokens").map_err(bad)?;
                    let latency: i64 = r.cell("latency_ms").map_err(bad)?;
                    Ok(TaskStep {
                        task_id: r.cell("task_id").map_err(bad)?,
                        seq: u32::try_from(seq).map_err(bad)?,
                        kind: r.cell("kind").map_err(bad)?,
                        body: serde_json::from_str(&body).map_err(bad)?,
                        tokens: u64::try_from(tokens).unwrap_or(0),
                        latency_ms: u64::try_from(latency).unwrap_or(0),
                        at: r.cell("at").map_err(bad)?,
                    })
                })
                .collect()
        }
        // The ports' reads (`GovStore`, `TaskStore`), which both stores
        // answer from here; their writes stay each store's own.

        /// An organization's governance documents, by kind and name.
        pub(super) async fn docs(&self, org: &OrgId) -> Result<Vec<GovDoc>, StoreError> {
            let sql = format!(
                "SELECT kind, name, {} FROM gov_docs WHERE org_id = ? ORDER BY kind{c}, name{c}",
                D::json("body"),
                c = D::BYTES
            );
            let rows = self.rows(&sql, &[org.as_str()]).await?;
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

        /// The approval where `k1 = v1 AND k2 = v2` (our column names), with
        /// its votes; read where it was written when `fresh` (the caller has
        /// just lost an insert to this row).
        async fn approval_where(
            &self,
            (k1, v1): (&str, &str),
            (k2, v2): (&str, &str),
            fresh: bool,
        ) -> Result<Option<ApprovalRecord>, StoreError> {
            let pool = if fresh { &self.write } else { &self.read };
            let sql = format!(
                "SELECT {} FROM approvals WHERE {k1} = ? AND {k2} = ?",
                approval_columns::<D>()
            );
            let Some(row) = Self::row_on(pool, &sql, &[v1, v2]).await? else {
                return Ok(None);
            };
            Ok(Self::with_votes_on(pool, vec![approval_row(&row)?]).await?.pop())
        }

        /// The request for an agent's tool call.
        pub(super) async fn approval_by_call(
            &self,
            agent: &AgentId,
            call_id: &str,
        ) -> Result<Option<ApprovalRecord>, StoreError> {
            self.approval_where(("agent_id", agent.as_str()), ("call_id", call_id), true)
                .await
        }

        /// One request of an organization.
        pub(super) async fn approval(
            &self,
            org: &OrgId,
            id: &str,
        ) -> Result<Option<ApprovalRecord>, StoreError> {
            self.approval_where(("org_id", org.as_str()), ("id", id), false)
                .await
        }

        /// Every pending request of an organization (all of them: a restart
        /// re-parks each), with its votes.
        pub(super) async fn pending_approvals(
            &self,
            org: &OrgId,
        ) -> Result<Vec<ApprovalRecord>, StoreError> {
            let sql = format!(
                "SELECT {} FROM approvals WHERE org_id = ? AND state = 'pending' ORDER BY id{}",
                approval_columns::<D>(),
                D::BYTES
            );
            let rows = Self::rows_on(&self.write, &sql, &[org.as_str()]).await?;
            let rows = rows
                .iter()
                .map(approval_row)
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for chunk in rows.chunks(500) {
                out.extend(Self::with_votes_on(&self.read, chunk.to_vec()).await?);
            }
            Ok(out)
        }

        /// Grants neither revoked nor expired at `now_ms`.
        pub(super) async fn live_grants(&self, now_ms: i64) -> Result<Vec<Grant>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT {GRANT_COLUMNS} FROM grants WHERE revoked_at IS NULL AND expires_at > ?"
            ));
            let rows = sqlx::query(&sql)
                .bind(now_ms)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter().map(grant_row).collect()
        }

        /// The kill switches that are on.
        pub(super) async fn halts(&self) -> Result<Vec<HaltScope>, StoreError> {
            Ok(self
                .halt_rows()
                .await?
                .into_iter()
                .filter_map(|(scope, target, org, ..)| match scope.as_str() {
                    "instance" => Some(HaltScope::Instance),
                    "org" => Some(HaltScope::Org(OrgId(target))),
                    "agent" => Some(HaltScope::Agent(OrgId(org?), AgentId(target))),
                    _ => None,
                })
                .collect())
        }

        /// An agent's tasks that are not finished, in id order.
        pub(super) async fn open_tasks(
            &self,
            org: &str,
            agent: &str,
        ) -> Result<Vec<TaskRecord>, StoreError> {
            let sql = format!(
                "SELECT {} FROM tasks WHERE org_id = ? AND agent_id = ? \
                 AND state IN ('queued', 'running', 'waiting_approval') ORDER BY id{}",
                task_columns::<D>(),
                D::BYTES
            );
            let rows = self.rows(&sql, &[org, agent]).await?;
            rows.iter().map(task_row).collect()
        }
    }
}
