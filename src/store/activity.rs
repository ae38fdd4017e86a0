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
    /// The typed record the event also is (tool call, message), written in
    /// the same transaction.
    pub record: Option<Record>,
}

/// A typed record carried by an activity event: the columns that are
/// filtered, counted and summed (the text stays in the event's payload).
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A row of `tool_calls`.
    ToolCall(ToolCallRecord),
    /// A row of `messages` (and its conversation's counters).
    Message(MessageRecord),
}

/// A tool call as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallRecord {
    /// The tool.
    pub tool_id: String,
    /// `ok`, `error`, `denied` or `timeout`.
    pub status: String,
    /// Tokens it used.
    pub tokens: i64,
    /// What it cost, in millionths of a dollar.
    pub cost_micros: i64,
}

/// A conversation message as reported.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRecord {
    /// The conversation (the runtime's id, unique per agent).
    pub conversation_id: String,
    /// The conversation's title, when this message sets it.
    pub title: Option<String>,
    /// Tokens it used.
    pub tokens: i64,
}

impl NewActivity {
    /// Bytes this row weighs in a flush (payload and names).
    pub fn weight(&self) -> usize {
        self.payload.len()
            + self.kind.len()
            + self.org_id.len()
            + self.agent_id.as_ref().map_or(0, String::len)
            + if self.record.is_some() { 64 } else { 0 }
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

/// One stored tool call.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCallRow {
    /// The activity event's id (also the page cursor).
    pub id: i64,
    /// The runtime's id of the call.
    pub call_id: Option<serde_json::Value>,
    /// The tool.
    pub tool_id: String,
    /// Arguments, secrets redacted.
    pub arguments: serde_json::Value,
    /// What came back, in short.
    pub result_summary: Option<serde_json::Value>,
    /// `ok`, `error`, `denied` or `timeout`.
    pub status: String,
    /// How long it took.
    pub duration_ms: i64,
    /// Tokens it used.
    pub tokens: i64,
    /// What it cost (USD).
    pub cost_usd: f64,
    /// When it happened (RFC 3339).
    pub at: String,
}

/// Filters of a tool-call read.
#[derive(Debug, Clone, Default)]
pub struct ToolCallFilter {
    /// Only this tool's.
    pub tool: Option<String>,
    /// Only with this status.
    pub status: Option<String>,
    /// Happened at or after (unix ms).
    pub since: Option<i64>,
    /// Happened before (unix ms).
    pub until: Option<i64>,
}

/// One stored conversation.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ConversationRow {
    /// Page cursor (order of first appearance).
    #[serde(skip)]
    pub seq: i64,
    /// The runtime's id.
    pub id: String,
    /// Title, if a message gave one.
    pub title: Option<String>,
    /// First message (RFC 3339).
    pub started_at: String,
    /// Latest message (RFC 3339).
    pub last_at: String,
    /// Messages in it.
    pub messages: i64,
    /// Tokens its messages used.
    pub tokens: i64,
}

/// One stored message.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MessageRow {
    /// The activity event's id (also the page cursor).
    pub id: i64,
    /// `user`, `assistant`, `system` or `tool`.
    pub role: serde_json::Value,
    /// The text.
    pub content: serde_json::Value,
    /// Tokens it used.
    pub tokens: i64,
    /// When it was said (RFC 3339).
    pub at: String,
}

/// Counts of one hour (or a whole day) of an agent's timeline.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TimelineCounts {
    /// Activity events of every kind.
    pub events: i64,
    /// Tool calls.
    pub tool_calls: i64,
    /// Tool calls whose status is not `ok`.
    pub tool_errors: i64,
    /// Tokens the tool calls used.
    pub tool_tokens: i64,
    /// What the tool calls cost (USD).
    pub tool_cost_usd: f64,
    /// Conversation messages.
    pub messages: i64,
    /// Tokens the messages used.
    pub message_tokens: i64,
}

/// An agent's day: totals, 24 hourly buckets and events by kind.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Timeline {
    /// The day's totals.
    pub totals: TimelineCounts,
    /// Hours 0–23 (UTC).
    pub hours: Vec<TimelineCounts>,
    /// Events of the day by kind.
    pub kinds: std::collections::BTreeMap<String, i64>,
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Activity rows (their tool calls and messages with them).
    pub activity: u64,
    /// Conversations.
    pub conversations: u64,
    full: bool,
}

impl Expired {
    /// Whether a batch was full, so there may be more to delete.
    pub fn more(&self) -> bool {
        self.full
    }
}

const HOUR_MS: i64 = 3_600_000;

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

/// Writes the typed records of a flush's rows (ids from `first_id` on):
/// tool calls and messages in multi-row inserts, one upsert per
/// conversation and per (agent, hour, kind) with the flush's rows added up.
async fn write_records(
    tx: &mut sqlx::SqliteConnection,
    first_id: i64,
    rows: &[&NewActivity],
    now: i64,
) -> Result<(), StoreError> {
    use std::collections::BTreeMap;
    struct Conv<'a> {
        org: &'a str,
        title: Option<&'a str>,
        first: i64,
        last: i64,
        messages: i64,
        tokens: i64,
    }
    #[derive(Default)]
    struct Hour<'a> {
        org: &'a str,
        events: i64,
        errors: i64,
        tokens: i64,
        cost: i64,
    }
    let mut calls = Vec::new();
    let mut messages = Vec::new();
    let mut hours: BTreeMap<(&str, i64, &str), Hour<'_>> = BTreeMap::new();
    let mut convs: BTreeMap<(&str, &str), Conv<'_>> = BTreeMap::new();
    for (id, r) in (first_id..).zip(rows) {
        let Some(agent) = r.agent_id.as_deref() else {
            continue; // organization events have no timeline
        };
        let h = hours
            .entry((agent, r.at.div_euclid(HOUR_MS) * HOUR_MS, r.kind.as_str()))
            .or_default();
        h.org = &r.org_id;
        h.events += 1;
        match &r.record {
            Some(Record::ToolCall(t)) => {
                h.errors += i64::from(t.status != "ok");
                h.tokens += t.tokens;
                h.cost += t.cost_micros;
                calls.push((id, agent, t));
            }
            Some(Record::Message(m)) => {
                h.tokens += m.tokens;
                let c = convs
                    .entry((agent, m.conversation_id.as_str()))
                    .or_insert(Conv {
                        org: &r.org_id,
                        title: None,
                        first: r.at,
                        last: r.at,
                        messages: 0,
                        tokens: 0,
                    });
                c.title = m.title.as_deref().or(c.title);
                c.first = c.first.min(r.at);
                c.last = c.last.max(r.at);
                c.messages += 1;
                c.tokens += m.tokens;
                messages.push((id, agent, m));
            }
            None => {}
        }
    }
    // 4 and 3 parameters a row: well under SQLite's 32766.
    for chunk in calls.chunks(CHUNK) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO tool_calls (agent_id, activity_id, tool_id, status) ",
        );
        q.push_values(chunk, |mut b, (id, agent, t)| {
            b.push_bind(*agent)
                .push_bind(*id)
                .push_bind(t.tool_id.as_str())
                .push_bind(t.status.as_str());
        });
        q.build().execute(&mut *tx).await.map_err(unavailable)?;
    }
    for chunk in messages.chunks(CHUNK) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO messages (agent_id, conversation_id, activity_id) ",
        );
        q.push_values(chunk, |mut b, (id, agent, m)| {
            b.push_bind(*agent)
                .push_bind(m.conversation_id.as_str())
                .push_bind(*id);
        });
        q.build().execute(&mut *tx).await.map_err(unavailable)?;
    }
    for ((agent, id), c) in convs {
        sqlx::query(
            "INSERT INTO conversations (org_id, agent_id, id, title, started_at, last_at, \
             messages, tokens, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (agent_id, id) DO UPDATE SET \
               title = COALESCE(excluded.title, title), \
               started_at = MIN(started_at, excluded.started_at), \
               last_at = MAX(last_at, excluded.last_at), \
               messages = messages + excluded.messages, \
               tokens = tokens + excluded.tokens, \
               recorded_at = excluded.recorded_at",
        )
        .bind(c.org)
        .bind(agent)
        .bind(id)
        .bind(c.title)
        .bind(c.first)
        .bind(c.last)
        .bind(c.messages)
        .bind(c.tokens)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    }
    for ((agent, hour, kind), h) in hours {
        sqlx::query(
            "INSERT INTO activity_hours (agent_id, hour, kind, org_id, events, errors, tokens, \
             cost_micros) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (agent_id, hour, kind) DO UPDATE SET \
               events = events + excluded.events, errors = errors + excluded.errors, \
               tokens = tokens + excluded.tokens, cost_micros = cost_micros + excluded.cost_micros",
        )
        .bind(agent)
        .bind(hour)
        .bind(kind)
        .bind(h.org)
        .bind(h.events)
        .bind(h.errors)
        .bind(h.tokens)
        .bind(h.cost)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    }
    Ok(())
}

fn conversation_row(r: &SqliteRow) -> Result<ConversationRow, StoreError> {
    let bad = |e: sqlx::Error| StoreError::Unavailable(format!("bad conversation: {e}"));
    Ok(ConversationRow {
        seq: r.try_get("seq").map_err(bad)?,
        id: r.try_get("id").map_err(bad)?,
        title: r.try_get("title").map_err(bad)?,
        started_at: cadre_actors::domain::rfc3339(r.try_get("started_at").map_err(bad)?),
        last_at: cadre_actors::domain::rfc3339(r.try_get("last_at").map_err(bad)?),
        messages: r.try_get("messages").map_err(bad)?,
        tokens: r.try_get("tokens").map_err(bad)?,
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
        write_records(&mut tx, first_id, rows, now).await?;
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

    /// A page of an agent's tool calls, newest first, ids below `before`.
    pub async fn tool_calls_page(
        &self,
        org: &str,
        agent: &str,
        f: &ToolCallFilter,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ToolCallRow>, StoreError> {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT t.activity_id, t.tool_id, t.status, a.at, a.payload FROM tool_calls t \
             JOIN activity a ON a.id = t.activity_id WHERE t.agent_id = ",
        );
        q.push_bind(agent).push(" AND a.org_id = ").push_bind(org);
        if let Some(t) = &f.tool {
            q.push(" AND t.tool_id = ").push_bind(t.as_str());
        }
        if let Some(s) = &f.status {
            q.push(" AND t.status = ").push_bind(s.as_str());
        }
        if let Some(s) = f.since {
            q.push(" AND a.at >= ").push_bind(s);
        }
        if let Some(u) = f.until {
            q.push(" AND a.at < ").push_bind(u);
        }
        if let Some(b) = before {
            q.push(" AND t.activity_id < ").push_bind(b);
        }
        q.push(" ORDER BY t.activity_id DESC LIMIT ")
            .push_bind(limit);
        let rows = q
            .build()
            .fetch_all(self.read_pool())
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let bad = |e: sqlx::Error| StoreError::Unavailable(format!("bad tool call: {e}"));
                let payload: String = r.try_get("payload").map_err(bad)?;
                let p: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
                let some = |k: &str| p.get(k).filter(|v| !v.is_null()).cloned();
                let num = |k: &str| p.get(k).and_then(serde_json::Value::as_i64).unwrap_or(0);
                Ok(ToolCallRow {
                    id: r.try_get("activity_id").map_err(bad)?,
                    call_id: some("call_id"),
                    tool_id: r.try_get("tool_id").map_err(bad)?,
                    arguments: some("arguments").unwrap_or_else(|| serde_json::json!({})),
                    result_summary: some("result_summary"),
                    status: r.try_get("status").map_err(bad)?,
                    duration_ms: num("duration_ms"),
                    tokens: num("tokens"),
                    cost_usd: p
                        .get("cost_usd")
                        .and_then(serde_json::Value::as_f64)
                        .unwrap_or(0.0),
                    at: cadre_actors::domain::rfc3339(r.try_get("at").map_err(bad)?),
                })
            })
            .collect()
    }

    /// A page of an agent's conversations, the latest started first.
    pub async fn conversations_page(
        &self,
        org: &str,
        agent: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, id, title, started_at, last_at, messages, tokens FROM conversations \
             WHERE agent_id = ? AND org_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
        )
        .bind(agent)
        .bind(org)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(self.read_pool())
        .await
        .map_err(unavailable)?;
        rows.iter().map(conversation_row).collect()
    }

    /// One conversation of an agent.
    pub async fn conversation(
        &self,
        org: &str,
        agent: &str,
        id: &str,
    ) -> Result<Option<ConversationRow>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, id, title, started_at, last_at, messages, tokens FROM conversations \
             WHERE agent_id = ? AND id = ? AND org_id = ?",
        )
        .bind(agent)
        .bind(id)
        .bind(org)
        .fetch_optional(self.read_pool())
        .await
        .map_err(unavailable)?;
        row.as_ref().map(conversation_row).transpose()
    }

    /// A page of a conversation's messages, oldest first, ids above `after`.
    pub async fn messages_page(
        &self,
        org: &str,
        agent: &str,
        conversation: &str,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.activity_id, a.at, a.payload FROM messages m \
             JOIN activity a ON a.id = m.activity_id \
             WHERE m.agent_id = ? AND m.conversation_id = ? AND a.org_id = ? \
             AND m.activity_id > ? ORDER BY m.activity_id ASC LIMIT ?",
        )
        .bind(agent)
        .bind(conversation)
        .bind(org)
        .bind(after.unwrap_or(0))
        .bind(limit)
        .fetch_all(self.read_pool())
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let bad = |e: sqlx::Error| StoreError::Unavailable(format!("bad message: {e}"));
                let payload: String = r.try_get("payload").map_err(bad)?;
                let mut p: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
                let mut take = |k: &str| {
                    p.get_mut(k)
                        .map(serde_json::Value::take)
                        .unwrap_or_default()
                };
                Ok(MessageRow {
                    id: r.try_get("activity_id").map_err(bad)?,
                    role: take("role"),
                    content: take("content"),
                    tokens: take("tokens").as_i64().unwrap_or(0),
                    at: cadre_actors::domain::rfc3339(r.try_get("at").map_err(bad)?),
                })
            })
            .collect()
    }

    /// An agent's activity from `from` for 24 hours (unix ms), by hour.
    pub async fn timeline(
        &self,
        org: &str,
        agent: &str,
        from: i64,
    ) -> Result<Timeline, StoreError> {
        let bad = |e: sqlx::Error| StoreError::Unavailable(format!("bad timeline row: {e}"));
        let rows = sqlx::query(
            "SELECT hour, kind, events, errors, tokens, cost_micros FROM activity_hours \
             WHERE agent_id = ? AND hour >= ? AND hour < ? AND org_id = ?",
        )
        .bind(agent)
        .bind(from)
        .bind(from + 24 * HOUR_MS)
        .bind(org)
        .fetch_all(self.read_pool())
        .await
        .map_err(unavailable)?;
        let mut hours = vec![TimelineCounts::default(); 24];
        let mut kinds = std::collections::BTreeMap::new();
        for r in &rows {
            let hour: i64 = r.try_get("hour").map_err(bad)?;
            let kind: String = r.try_get("kind").map_err(bad)?;
            let events: i64 = r.try_get("events").map_err(bad)?;
            let tokens: i64 = r.try_get("tokens").map_err(bad)?;
            let Some(b) = usize::try_from((hour - from) / HOUR_MS)
                .ok()
                .and_then(|h| hours.get_mut(h))
            else {
                continue;
            };
            b.events += events;
            match kind.as_str() {
                "tool_call" => {
                    b.tool_calls += events;
                    b.tool_errors += r.try_get::<i64, _>("errors").map_err(bad)?;
                    b.tool_tokens += tokens;
                    b.tool_cost_usd +=
                        r.try_get::<i64, _>("cost_micros").map_err(bad)? as f64 / 1_000_000.0;
                }
                "message" => {
                    b.messages += events;
                    b.message_tokens += tokens;
                }
                _ => {}
            }
            *kinds.entry(kind).or_insert(0) += events;
        }
        let mut totals = TimelineCounts::default();
        for h in &hours {
            totals.events += h.events;
            totals.tool_calls += h.tool_calls;
            totals.tool_errors += h.tool_errors;
            totals.tool_tokens += h.tool_tokens;
            totals.tool_cost_usd += h.tool_cost_usd;
            totals.messages += h.messages;
            totals.message_tokens += h.message_tokens;
        }
        Ok(Timeline {
            totals,
            hours,
            kinds,
        })
    }

    /// Deletes up to `batch` activity rows of organizations whose retention
    /// has passed (recorded before `now - days`) with their tool calls and
    /// messages, up to `batch` conversations idle as long and hourly
    /// counts as old, and flush markers older than a day. The caller
    /// repeats while [`Expired::more`]. The audit log is a separate table
    /// and never touched here.
    pub async fn expire_activity(
        &self,
        now: i64,
        default_days: u32,
        batch: u32,
    ) -> Result<Expired, StoreError> {
        const DAY_MS: i64 = 86_400_000;
        // One transaction: the expired events, then each one's tool-call or
        // message row (looked up by its primary key), then the events.
        let mut tx = self.write_pool().begin().await.map_err(unavailable)?;
        let victims: Vec<(i64, Option<String>, String, Option<String>)> = sqlx::query_as(
            "SELECT a.id, a.agent_id, a.kind, \
               CASE a.kind WHEN 'message' THEN json_extract(a.payload, '$.conversation_id') END \
             FROM activity a LEFT JOIN orgs o ON o.id = a.org_id \
             WHERE a.recorded_at < ?1 - COALESCE(o.activity_retention_days, ?2) * ?3 \
             LIMIT ?4",
        )
        .bind(now)
        .bind(i64::from(default_days))
        .bind(DAY_MS)
        .bind(i64::from(batch))
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        for (id, agent, kind, conversation) in &victims {
            let Some(agent) = agent else { continue };
            match (kind.as_str(), conversation) {
                ("tool_call", _) => {
                    sqlx::query("DELETE FROM tool_calls WHERE agent_id = ? AND activity_id = ?")
                        .bind(agent)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                }
                ("message", Some(c)) => {
                    sqlx::query(
                        "DELETE FROM messages \
                         WHERE agent_id = ? AND conversation_id = ? AND activity_id = ?",
                    )
                    .bind(agent)
                    .bind(c)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                }
                _ => {}
            }
        }
        for chunk in victims.chunks(CHUNK) {
            let mut q =
                sqlx::QueryBuilder::<sqlx::Sqlite>::new("DELETE FROM activity WHERE id IN (");
            let mut ids = q.separated(", ");
            for (id, ..) in chunk {
                ids.push_bind(*id);
            }
            q.push(")");
            q.build().execute(&mut *tx).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        let deleted = victims.len() as u64;
        // Conversations whose last message is past retention (their
        // messages went with their activity rows), and hourly counts.
        let conversations = sqlx::query(
            "DELETE FROM conversations WHERE seq IN ( \
               SELECT c.seq FROM conversations c LEFT JOIN orgs o ON o.id = c.org_id \
               WHERE c.recorded_at < ?1 - COALESCE(o.activity_retention_days, ?2) * ?3 \
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
        // An hour's counts go when the whole hour is past retention.
        let hours = sqlx::query(
            "DELETE FROM activity_hours WHERE (agent_id, hour, kind) IN ( \
               SELECT h.agent_id, h.hour, h.kind FROM activity_hours h \
               LEFT JOIN orgs o ON o.id = h.org_id \
               WHERE h.hour + ?5 <= ?1 - COALESCE(o.activity_retention_days, ?2) * ?3 \
               LIMIT ?4)",
        )
        .bind(now)
        .bind(i64::from(default_days))
        .bind(DAY_MS)
        .bind(i64::from(batch))
        .bind(HOUR_MS)
        .execute(self.write_pool())
        .await
        .map_err(unavailable)?
        .rows_affected();
        sqlx::query("DELETE FROM activity_flushes WHERE at < ?")
            .bind(now - DAY_MS)
            .execute(self.write_pool())
            .await
            .map_err(unavailable)?;
        Ok(Expired {
            activity: deleted,
            conversations,
            full: [deleted, conversations, hours].contains(&u64::from(batch)),
        })
    }
}
