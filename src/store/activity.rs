//! Activity rows: the batched insert the activity writer runs (one
//! transaction per flush), the reads behind `GET /activity` and stream
//! resumes, and the retention delete, the same statements on every backend
//! ([`Tables`]). Only how a flush reserves its ids differs by dialect
//! ([`Serial`]).

use super::server::Serial;
use super::sqlite::unavailable;
use super::tables::{Arg, Built, Tables, placeholders};
use super::{DecodeRow, to_i64};
use cadre_actors::ports::StoreError;
use serde::Serialize;

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
const DAY_MS: i64 = 86_400_000;

/// Rows per INSERT statement (7 parameters each: well under SQLite's
/// 32,766 and the servers' 65,535).
const CHUNK: usize = 1000;

/// A transaction-level advisory lock key (PostgreSQL) that serializes id
/// reservations of activity flushes.
const ACTIVITY_LOCK: i64 = 0x6361_6472_6561_6374; // "cadreact"

/// `n` placeholders for an `IN` list.
fn list(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn bad(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::Unavailable(format!("bad {what}: {e}"))
}

fn activity_row<R: DecodeRow>(r: &R) -> Result<ActivityRow, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let bad = bad("activity row");
    let at: i64 = r.cell("at").map_err(&bad)?;
    let payload: String = r.cell("payload").map_err(&bad)?;
    Ok(ActivityRow {
        id: r.cell("id").map_err(&bad)?,
        agent_id: r.cell("agent_id").map_err(&bad)?,
        kind: r.cell("kind").map_err(&bad)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        at_ms: at,
        at: cadre_actors::domain::rfc3339(at),
    })
}

fn conversation_row<R: DecodeRow>(r: &R) -> Result<ConversationRow, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
{
    let bad = bad("conversation");
    Ok(ConversationRow {
        seq: r.cell("seq").map_err(&bad)?,
        id: r.cell("id").map_err(&bad)?,
        title: r.cell("title").map_err(&bad)?,
        started_at: cadre_actors::domain::rfc3339(r.cell("started_at").map_err(&bad)?),
        last_at: cadre_actors::domain::rfc3339(r.cell("last_at").map_err(&bad)?),
        messages: r.cell("messages").map_err(&bad)?,
        tokens: r.cell("tokens").map_err(&bad)?,
    })
}

/// What a flush adds to one conversation.
struct Conv<'a> {
    org: &'a str,
    title: Option<&'a str>,
    first: i64,
    last: i64,
    messages: i64,
    tokens: i64,
}

/// What a flush adds to one (agent, hour, kind).
#[derive(Default)]
struct Hour<'a> {
    org: &'a str,
    events: i64,
    errors: i64,
    tokens: i64,
    cost: i64,
}

impl Tables<sqlx::Sqlite> {
    /// [`Tables::write_activity`] on SQLite: the same rows, written by
    /// per-row statements on the writer connection's handle
    /// ([`super::direct`]) in one transaction, so a flush is one hand-off
    /// to SQLite's thread instead of one per statement.
    pub async fn write_activity_direct(
        &self,
        flush_id: i64,
        rows: &[&NewActivity],
        now: i64,
    ) -> Result<Flushed, StoreError> {
        let mut conn = self.write.acquire().await.map_err(unavailable)?;
        let flushed = super::direct::transaction(&mut conn, rows.len() * 2, |db| {
            write_flush(db, flush_id, rows, now).map_err(super::direct::unavailable)
        })
        .await?;
        Ok(flushed)
    }
}

/// The statements of one SQLite flush (see [`Tables::write_activity`]).
fn write_flush(
    db: &rusqlite::Connection,
    flush_id: i64,
    rows: &[&NewActivity],
    now: i64,
) -> rusqlite::Result<Flushed> {
    use rusqlite::{OptionalExtension, params};
    let before: Option<i64> = db
        .prepare_cached("SELECT first_id FROM activity_flushes WHERE id = ?")?
        .query_row([flush_id], |r| r.get(0))
        .optional()?;
    if let Some(first_id) = before {
        return Ok(Flushed {
            first_id,
            replayed: true,
        });
    }
    let last: i64 = db
        .prepare_cached(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'activity'), 0)",
        )?
        .query_row([], |r| r.get(0))?;
    let first_id = last + 1;
    if rows.is_empty() {
        return Ok(Flushed {
            first_id,
            replayed: false,
        });
    }
    let mut insert = db.prepare_cached(
        "INSERT INTO activity (id, org_id, agent_id, kind, payload, at, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )?;
    for (id, r) in (first_id..).zip(rows) {
        insert.execute(params![
            id, r.org_id, r.agent_id, r.kind, r.payload, r.at, now
        ])?;
    }
    let (calls, messages, convs, hours) = records(first_id, rows);
    if !calls.is_empty() {
        let mut st = db.prepare_cached(
            "INSERT INTO tool_calls (agent_id, activity_id, tool_id, status) VALUES (?, ?, ?, ?)",
        )?;
        for (id, agent, t) in calls {
            st.execute(params![agent, id, t.tool_id, t.status])?;
        }
    }
    if !messages.is_empty() {
        let mut st = db.prepare_cached(
            "INSERT INTO messages (agent_id, conversation_id, activity_id) VALUES (?, ?, ?)",
        )?;
        for (id, agent, m) in messages {
            st.execute(params![agent, m.conversation_id, id])?;
        }
    }
    if !convs.is_empty() {
        let mut st = db.prepare_cached(
            "INSERT INTO conversations (org_id, agent_id, id, title, started_at, last_at, messages, tokens, recorded_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, id) DO UPDATE SET \
               title = COALESCE(excluded.title, conversations.title), \
               started_at = CASE WHEN excluded.started_at < conversations.started_at THEN excluded.started_at ELSE conversations.started_at END, \
               last_at = CASE WHEN excluded.last_at > conversations.last_at THEN excluded.last_at ELSE conversations.last_at END, \
               messages = conversations.messages + excluded.messages, \
               tokens = conversations.tokens + excluded.tokens, \
               recorded_at = excluded.recorded_at",
        )?;
        for ((agent, id), c) in convs {
            st.execute(params![
                c.org, agent, id, c.title, c.first, c.last, c.messages, c.tokens, now
            ])?;
        }
    }
    let mut st = db.prepare_cached(
        "INSERT INTO activity_hours (agent_id, hour, kind, org_id, events, errors, tokens, cost_micros) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, hour, kind) DO UPDATE SET \
           events = activity_hours.events + excluded.events, errors = activity_hours.errors + excluded.errors, \
           tokens = activity_hours.tokens + excluded.tokens, cost_micros = activity_hours.cost_micros + excluded.cost_micros",
    )?;
    for ((agent, hour, kind), h) in hours {
        st.execute(params![
            agent, hour, kind, h.org, h.events, h.errors, h.tokens, h.cost
        ])?;
    }
    let n = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    db.prepare_cached(
        "INSERT INTO activity_flushes (id, first_id, count, at) VALUES (?, ?, ?, ?)",
    )?
    .execute(params![flush_id, first_id, n, now])?;
    Ok(Flushed {
        first_id,
        replayed: false,
    })
}

/// A flush's typed records (ids from `first_id` on): tool calls and
/// messages as rows, conversations and hours added up.
#[allow(clippy::type_complexity)]
fn records<'a>(
    first_id: i64,
    rows: &[&'a NewActivity],
) -> (
    Vec<(i64, &'a str, &'a ToolCallRecord)>,
    Vec<(i64, &'a str, &'a MessageRecord)>,
    std::collections::BTreeMap<(&'a str, &'a str), Conv<'a>>,
    std::collections::BTreeMap<(&'a str, i64, &'a str), Hour<'a>>,
) {
    let mut calls = Vec::new();
    let mut messages = Vec::new();
    let mut hours = std::collections::BTreeMap::new();
    let mut convs = std::collections::BTreeMap::new();
    for (id, r) in (first_id..).zip(rows.iter().copied()) {
        let Some(agent) = r.agent_id.as_deref() else {
            continue; // organization events have no timeline
        };
        let h: &mut Hour<'a> = hours
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
    (calls, messages, convs, hours)
}

on_dialects! {
    impl<D> Tables<D> {
        /// Writes one flush in one transaction. `flush_id` makes a re-flush of
        /// the same batch (by a writer that replaced a killed one) a no-op that
        /// answers the ids of the first commit. Ids are consecutive from
        /// `first_id`, increasing, never reused; per organization they also
        /// increase in commit order, as one writer flushes an organization's
        /// activity (one process runs it).
        pub async fn write_activity(
            &self,
            flush_id: i64,
            rows: &[&NewActivity],
            now: i64,
        ) -> Result<Flushed, StoreError> {
            let mut tx = super::begin(&self.write).await.map_err(unavailable)?;
            let sql = D::sql("SELECT first_id FROM activity_flushes WHERE id = ?");
            let before = sqlx::query(&sql)
                .bind(flush_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
            if let Some(row) = before {
                return Ok(Flushed {
                    first_id: row.cell(0).map_err(bad("flush"))?,
                    replayed: true,
                });
            }
            let Some((head, rest)) = rows.split_first() else {
                return Ok(Flushed { first_id: self.last_activity_id().await? + 1, replayed: false });
            };
            let n = to_i64(rows.len() as u64);
            let (first_id, explicit) = match D::SERIAL {
                Serial::SqliteSequence => {
                    let sql = "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'activity'), 0)";
                    let row = sqlx::query(sql).fetch_one(&mut *tx).await.map_err(unavailable)?;
                    (row.cell::<i64, _>(0).map_err(bad("sequence"))? + 1, rows)
                }
                Serial::PgSequence => {
                    let sql = D::sql("SELECT pg_advisory_xact_lock(?)");
                    sqlx::query(&sql).bind(ACTIVITY_LOCK).execute(&mut *tx).await.map_err(unavailable)?;
                    let sql = D::sql(
                        "SELECT setval(s, nextval(s) + ? - 1) AS last FROM \
                         (SELECT pg_get_serial_sequence('activity', 'id')::regclass AS s) q",
                    );
                    let row = sqlx::query(&sql).bind(n).fetch_one(&mut *tx).await.map_err(unavailable)?;
                    (row.cell::<i64, _>(0).map_err(bad("sequence"))? - n + 1, rows)
                }
                Serial::AutoIncrement => {
                    let sql = D::sql(&format!(
                        "INSERT INTO activity (org_id, agent_id, kind, payload, at, recorded_at) \
                         VALUES (?, ?, ?, ?{}, ?, ?)",
                        D::JSON
                    ));
                    sqlx::query(&sql)
                        .bind(head.org_id.as_str())
                        .bind(head.agent_id.as_deref())
                        .bind(head.kind.as_str())
                        .bind(head.payload.as_str())
                        .bind(head.at)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                    let row = sqlx::query("SELECT CAST(LAST_INSERT_ID() AS SIGNED)")
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                    (row.cell::<i64, _>(0).map_err(bad("insert id"))?, rest)
                }
            };
            let mut id = first_id + (n - to_i64(explicit.len() as u64));
            for chunk in explicit.chunks(CHUNK) {
                let sql = format!(
                    "INSERT INTO activity (id, org_id, agent_id, kind, payload, at, recorded_at) VALUES {}",
                    placeholders(chunk.len(), 7, Some((4, D::JSON)))
                );
                let mut args = Vec::with_capacity(chunk.len() * 7);
                for r in chunk {
                    args.extend([
                        Arg::Int(id),
                        Arg::Text(&r.org_id),
                        Arg::MaybeText(r.agent_id.as_deref()),
                        Arg::Text(&r.kind),
                        Arg::Text(&r.payload),
                        Arg::Int(r.at),
                        Arg::Int(now),
                    ]);
                    id += 1;
                }
                Self::exec(&mut *tx, &sql, &args).await?;
            }
            Self::write_records(&mut tx, first_id, rows, now).await?;
            Self::exec(
                &mut tx,
                "INSERT INTO activity_flushes (id, first_id, count, at) VALUES (?, ?, ?, ?)",
                &[Arg::Int(flush_id), Arg::Int(first_id), Arg::Int(n), Arg::Int(now)],
            )
            .await?;
            tx.commit().await.map_err(unavailable)?;
            Ok(Flushed {
                first_id,
                replayed: false,
            })
        }

        /// Writes the typed records of a flush's rows (ids from `first_id` on):
        /// tool calls and messages in multi-row inserts, one upsert per
        /// conversation and per (agent, hour, kind) with the flush's rows added up.
        async fn write_records(
            tx: &mut D::Connection,
            first_id: i64,
            rows: &[&NewActivity],
            now: i64,
        ) -> Result<(), StoreError> {
            let (calls, messages, convs, hours) = records(first_id, rows);
            for chunk in calls.chunks(CHUNK) {
                let sql = format!(
                    "INSERT INTO tool_calls (agent_id, activity_id, tool_id, status) VALUES {}",
                    placeholders(chunk.len(), 4, None)
                );
                let args: Vec<Arg<'_>> = chunk
                    .iter()
                    .flat_map(|(id, agent, t)| {
                        [Arg::Text(agent), Arg::Int(*id), Arg::Text(&t.tool_id), Arg::Text(&t.status)]
                    })
                    .collect();
                Self::exec(&mut *tx, &sql, &args).await?;
            }
            for chunk in messages.chunks(CHUNK) {
                let sql = format!(
                    "INSERT INTO messages (agent_id, conversation_id, activity_id) VALUES {}",
                    placeholders(chunk.len(), 3, None)
                );
                let args: Vec<Arg<'_>> = chunk
                    .iter()
                    .flat_map(|(id, agent, m)| [Arg::Text(agent), Arg::Text(&m.conversation_id), Arg::Int(*id)])
                    .collect();
                Self::exec(&mut *tx, &sql, &args).await?;
            }
            // One multi-row upsert per chunk (a flush adds up its rows per
            // key first, so no key is twice in a statement): a round trip per
            // conversation and per hour made small flushes on a server 4× slower.
            let new = |c: &str| D::inserted(c);
            let convs: Vec<_> = convs.into_iter().collect();
            for chunk in convs.chunks(CHUNK) {
                let sql = format!(
                    "INSERT INTO conversations (org_id, agent_id, id, title, started_at, last_at, \
                     messages, tokens, recorded_at) VALUES {} {} \
                       title = COALESCE({}, conversations.title), \
                       started_at = CASE WHEN {s} < conversations.started_at THEN {s} ELSE conversations.started_at END, \
                       last_at = CASE WHEN {l} > conversations.last_at THEN {l} ELSE conversations.last_at END, \
                       messages = conversations.messages + {}, \
                       tokens = conversations.tokens + {}, \
                       recorded_at = {}",
                    placeholders(chunk.len(), 9, None),
                    D::upsert("agent_id, id"),
                    new("title"),
                    new("messages"),
                    new("tokens"),
                    new("recorded_at"),
                    s = new("started_at"),
                    l = new("last_at"),
                );
                let args: Vec<Arg<'_>> = chunk
                    .iter()
                    .flat_map(|((agent, id), c)| {
                        [
                            Arg::Text(c.org),
                            Arg::Text(agent),
                            Arg::Text(id),
                            Arg::MaybeText(c.title),
                            Arg::Int(c.first),
                            Arg::Int(c.last),
                            Arg::Int(c.messages),
                            Arg::Int(c.tokens),
                            Arg::Int(now),
                        ]
                    })
                    .collect();
                Self::exec(&mut *tx, &sql, &args).await?;
            }
            let add = |c: &str| format!("{c} = activity_hours.{c} + {}", new(c));
            let hours: Vec<_> = hours.into_iter().collect();
            for chunk in hours.chunks(CHUNK) {
                let sql = format!(
                    "INSERT INTO activity_hours (agent_id, hour, kind, org_id, events, errors, tokens, \
                     cost_micros) VALUES {} {} {}, {}, {}, {}",
                    placeholders(chunk.len(), 8, None),
                    D::upsert("agent_id, hour, kind"),
                    add("events"),
                    add("errors"),
                    add("tokens"),
                    add("cost_micros"),
                );
                let args: Vec<Arg<'_>> = chunk
                    .iter()
                    .flat_map(|((agent, hour, kind), h)| {
                        [
                            Arg::Text(agent),
                            Arg::Int(*hour),
                            Arg::Text(kind),
                            Arg::Text(h.org),
                            Arg::Int(h.events),
                            Arg::Int(h.errors),
                            Arg::Int(h.tokens),
                            Arg::Int(h.cost),
                        ]
                    })
                    .collect();
                Self::exec(&mut *tx, &sql, &args).await?;
            }
            Ok(())
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
            let mut q = Built::new(
                format!("SELECT id, agent_id, kind, {}, at FROM activity WHERE org_id = ?", D::json("payload")),
                [Arg::Text(org)],
            );
            q.filter(" AND agent_id = ?", f.agent.as_deref().map(Arg::Text));
            match f.kind.as_deref() {
                // The length is ours (a number), so it is written, not bound:
                // PostgreSQL has no substr taking a 64-bit length.
                Some(k) if k.ends_with('.') => q.push(&format!(" AND substr(kind, 1, {}) = ?", k.len()), Arg::Text(k)),
                Some(k) => q.push(" AND kind = ?", Arg::Text(k)),
                None => &mut q,
            };
            q.filter(" AND at >= ?", f.since.map(Arg::Int))
                .filter(" AND at < ?", f.until.map(Arg::Int))
                .filter(&format!(" AND id {} ?", bound.map_or("", |b| b.0)), bound.map(|b| Arg::Int(b.1)))
                .push(&format!(" ORDER BY id {order} LIMIT ?"), Arg::Int(limit));
            self.fetch(&q).await?.iter().map(activity_row).collect()
        }

        /// The highest event id so far (0 when there is none) on SQLite; on a
        /// server the highest stored (retention may have removed later
        /// ones). Either is a lower bound of the ids still to come, which is
        /// what a live stream starts from.
        pub async fn last_activity_id(&self) -> Result<i64, StoreError> {
            let sql = match D::SERIAL {
                Serial::SqliteSequence => {
                    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'activity'), 0)"
                }
                Serial::PgSequence | Serial::AutoIncrement => "SELECT COALESCE(MAX(id), 0) FROM activity",
            };
            let row = sqlx::query(sql).fetch_one(&self.read).await.map_err(unavailable)?;
            row.cell(0).map_err(bad("sequence"))
        }

        /// Number of `org`'s activity rows, of one kind if given (tests, usage).
        pub async fn activity_count(&self, org: &str, kind: Option<&str>) -> Result<i64, StoreError> {
            let mut q = Built::new(format!("SELECT {} FROM activity WHERE org_id = ?", D::int("COUNT(*)")), [Arg::Text(org)]);
            q.filter(" AND kind = ?", kind.map(Arg::Text));
            let rows = self.fetch(&q).await?;
            rows.first().map_or(Ok(0), |r| r.cell(0).map_err(bad("count")))
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
            // `payload` unqualified: tool_calls has no column of that name, and
            // the dialect's cast names the result as the column.
            let mut q = Built::new(
                format!(
                    "SELECT t.activity_id, t.tool_id, t.status, a.at, {} FROM tool_calls t \
                     JOIN activity a ON a.id = t.activity_id WHERE t.agent_id = ? AND a.org_id = ?",
                    D::json("payload")
                ),
                [Arg::Text(agent), Arg::Text(org)],
            );
            q.filter(" AND t.tool_id = ?", f.tool.as_deref().map(Arg::Text))
                .filter(" AND t.status = ?", f.status.as_deref().map(Arg::Text))
                .filter(" AND a.at >= ?", f.since.map(Arg::Int))
                .filter(" AND a.at < ?", f.until.map(Arg::Int))
                .filter(" AND t.activity_id < ?", before.map(Arg::Int))
                .push(" ORDER BY t.activity_id DESC LIMIT ?", Arg::Int(limit));
            self.fetch(&q)
                .await?
                .iter()
                .map(|r| {
                    let bad = bad("tool call");
                    let payload: String = r.cell("payload").map_err(&bad)?;
                    let p: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
                    let some = |k: &str| p.get(k).filter(|v| !v.is_null()).cloned();
                    let num = |k: &str| p.get(k).and_then(serde_json::Value::as_i64).unwrap_or(0);
                    Ok(ToolCallRow {
                        id: r.cell("activity_id").map_err(&bad)?,
                        call_id: some("call_id"),
                        tool_id: r.cell("tool_id").map_err(&bad)?,
                        arguments: some("arguments").unwrap_or_else(|| serde_json::json!({})),
                        result_summary: some("result_summary"),
                        status: r.cell("status").map_err(&bad)?,
                        duration_ms: num("duration_ms"),
                        tokens: num("tokens"),
                        cost_usd: p
                            .get("cost_usd")
                            .and_then(serde_json::Value::as_f64)
                            .unwrap_or(0.0),
                        at: cadre_actors::domain::rfc3339(r.cell("at").map_err(&bad)?),
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
            let q = Built::new(
                "SELECT seq, id, title, started_at, last_at, messages, tokens FROM conversations \
                 WHERE agent_id = ? AND org_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                [Arg::Text(agent), Arg::Text(org), Arg::Int(before.unwrap_or(i64::MAX)), Arg::Int(limit)],
            );
            self.fetch(&q).await?.iter().map(conversation_row).collect()
        }

        /// The agent a conversation of the organization belongs to.
        pub async fn conversation_agent(
            &self,
            org: &str,
            id: &str,
        ) -> Result<Option<String>, StoreError> {
            let row = self
                .row(
                    "SELECT agent_id FROM conversations WHERE id = ? AND org_id = ?",
                    &[id, org],
                )
                .await?;
            row.as_ref()
                .map(|r| -> Result<String, StoreError> {
                    r.cell("agent_id").map_err(bad("conversation"))
                })
                .transpose()
        }

        /// One conversation of an agent.
        pub async fn conversation(
            &self,
            org: &str,
            agent: &str,
            id: &str,
        ) -> Result<Option<ConversationRow>, StoreError> {
            let row = self
                .row(
                    "SELECT seq, id, title, started_at, last_at, messages, tokens FROM conversations \
                     WHERE agent_id = ? AND id = ? AND org_id = ?",
                    &[agent, id, org],
                )
                .await?;
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
            let q = Built::new(
                format!(
                    "SELECT m.activity_id, a.at, {} FROM messages m \
                     JOIN activity a ON a.id = m.activity_id \
                     WHERE m.agent_id = ? AND m.conversation_id = ? AND a.org_id = ? \
                     AND m.activity_id > ? ORDER BY m.activity_id ASC LIMIT ?",
                    D::json("payload")
                ),
                [Arg::Text(agent), Arg::Text(conversation), Arg::Text(org), Arg::Int(after.unwrap_or(0)), Arg::Int(limit)],
            );
            self.fetch(&q)
                .await?
                .iter()
                .map(|r| {
                    let bad = bad("message");
                    let payload: String = r.cell("payload").map_err(&bad)?;
                    let mut p: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
                    let mut take = |k: &str| {
                        p.get_mut(k)
                            .map(serde_json::Value::take)
                            .unwrap_or_default()
                    };
                    Ok(MessageRow {
                        id: r.cell("activity_id").map_err(&bad)?,
                        role: take("role"),
                        content: take("content"),
                        tokens: take("tokens").as_i64().unwrap_or(0),
                        at: cadre_actors::domain::rfc3339(r.cell("at").map_err(&bad)?),
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
            let bad = bad("timeline row");
            let rows = self
                .fetch(&Built::new(
                    "SELECT hour, kind, events, errors, tokens, cost_micros FROM activity_hours \
                     WHERE agent_id = ? AND hour >= ? AND hour < ? AND org_id = ?",
                    [Arg::Text(agent), Arg::Int(from), Arg::Int(from + 24 * HOUR_MS), Arg::Text(org)],
                ))
                .await?;
            let mut hours = vec![TimelineCounts::default(); 24];
            let mut kinds = std::collections::BTreeMap::new();
            for r in &rows {
                let hour: i64 = r.cell("hour").map_err(&bad)?;
                let kind: String = r.cell("kind").map_err(&bad)?;
                let events: i64 = r.cell("events").map_err(&bad)?;
                let tokens: i64 = r.cell("tokens").map_err(&bad)?;
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
                        b.tool_errors += r.cell::<i64, _>("errors").map_err(&bad)?;
                        b.tool_tokens += tokens;
                        b.tool_cost_usd +=
                            r.cell::<i64, _>("cost_micros").map_err(&bad)? as f64 / 1_000_000.0;
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
        ///
        /// Each step selects its keys, then deletes them: MySQL takes no
        /// `LIMIT` in a subquery of the table it deletes from.
        pub async fn expire_activity(
            &self,
            now: i64,
            default_days: u32,
            batch: u32,
        ) -> Result<Expired, StoreError> {
            let bad = bad("expired row");
            // Recorded before the organization's retention (or the default).
            let past = [Arg::Int(now), Arg::Int(i64::from(default_days)), Arg::Int(DAY_MS), Arg::Int(i64::from(batch))];
            // One transaction: the expired events, then each one's tool-call or
            // message row (looked up by its primary key), then the events.
            let mut tx = super::begin(&self.write).await.map_err(unavailable)?;
            let sql = format!(
                "SELECT a.id, a.agent_id, a.kind, \
                   CASE a.kind WHEN 'message' THEN {} END AS conversation \
                 FROM activity a LEFT JOIN orgs o ON o.id = a.org_id \
                 WHERE a.recorded_at < ? - COALESCE(o.activity_retention_days, ?) * ? \
                 LIMIT ?",
                D::json_text("a.payload", "conversation_id")
            );
            let mut victims: Vec<(i64, Option<String>, String, Option<String>)> = Vec::new();
            for r in &Self::select(&mut tx, &sql, &past).await? {
                victims.push((
                    r.cell(0).map_err(&bad)?,
                    r.cell(1).map_err(&bad)?,
                    r.cell(2).map_err(&bad)?,
                    r.cell(3).map_err(&bad)?,
                ));
            }
            for (id, agent, kind, conversation) in &victims {
                let Some(agent) = agent else { continue };
                match (kind.as_str(), conversation) {
                    ("tool_call", _) => {
                        let sql = "DELETE FROM tool_calls WHERE agent_id = ? AND activity_id = ?";
                        Self::exec(&mut tx, sql, &[Arg::Text(agent), Arg::Int(*id)]).await?;
                    }
                    ("message", Some(c)) => {
                        let sql = "DELETE FROM messages WHERE agent_id = ? AND conversation_id = ? AND activity_id = ?";
                        Self::exec(&mut tx, sql, &[Arg::Text(agent), Arg::Text(c), Arg::Int(*id)]).await?;
                    }
                    _ => {}
                }
            }
            for chunk in victims.chunks(CHUNK) {
                let sql = format!("DELETE FROM activity WHERE id IN ({})", list(chunk.len()));
                let ids: Vec<Arg<'_>> = chunk.iter().map(|v| Arg::Int(v.0)).collect();
                Self::exec(&mut tx, &sql, &ids).await?;
            }
            tx.commit().await.map_err(unavailable)?;
            let deleted = victims.len() as u64;
            let mut conn = self.write.acquire().await.map_err(unavailable)?;
            // Conversations whose last message is past retention (their
            // messages went with their activity rows).
            let sql = "SELECT c.seq FROM conversations c LEFT JOIN orgs o ON o.id = c.org_id \
                       WHERE c.recorded_at < ? - COALESCE(o.activity_retention_days, ?) * ? LIMIT ?";
            let seqs = Self::select(&mut conn, sql, &past).await?;
            let mut conversations = 0;
            for chunk in seqs.chunks(CHUNK) {
                let sql = format!("DELETE FROM conversations WHERE seq IN ({})", list(chunk.len()));
                let ids = chunk
                    .iter()
                    .map(|r| r.cell::<i64, _>(0).map(Arg::Int).map_err(&bad))
                    .collect::<Result<Vec<_>, _>>()?;
                conversations += Self::exec(&mut conn, &sql, &ids).await?;
            }
            // An hour's counts go when the whole hour is past retention.
            let sql = "SELECT h.agent_id, h.hour, h.kind FROM activity_hours h \
                       LEFT JOIN orgs o ON o.id = h.org_id \
                       WHERE h.hour + ? <= ? - COALESCE(o.activity_retention_days, ?) * ? LIMIT ?";
            let hour_args: Vec<Arg<'_>> = std::iter::once(Arg::Int(HOUR_MS)).chain(past).collect();
            let hours = Self::select(&mut conn, sql, &hour_args).await?;
            for r in &hours {
                let (agent, hour, kind): (String, i64, String) =
                    (r.cell(0).map_err(&bad)?, r.cell(1).map_err(&bad)?, r.cell(2).map_err(&bad)?);
                let sql = "DELETE FROM activity_hours WHERE agent_id = ? AND hour = ? AND kind = ?";
                Self::exec(&mut conn, sql, &[Arg::Text(&agent), Arg::Int(hour), Arg::Text(&kind)]).await?;
            }
            Self::exec(&mut conn, "DELETE FROM activity_flushes WHERE at < ?", &[Arg::Int(now - DAY_MS)]).await?;
            Ok(Expired {
                activity: deleted,
                conversations,
                full: [deleted, conversations, hours.len() as u64].contains(&u64::from(batch)),
            })
        }
    }
}
