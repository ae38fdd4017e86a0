//! Activity: ingest (`POST /activity`), history (`GET /activity`), and the
//! live streams (`GET /events` as Server-Sent Events, `GET /stream` as a
//! WebSocket). Streams subscribe to the organization's broadcast before they
//! read the database, so a resume (`Last-Event-ID`) has no gap; a subscriber
//! that falls behind gets a `resync` message and then what it missed, from
//! the database, in order.

use super::agents::page_limit;
use super::error::{ApiError, ApiJson, ApiQuery};
use super::guard::Routes;
use super::input;
use super::state::AppState;
use crate::activity::hub::StreamEvent;
use crate::activity::records;
use crate::activity::spool::SpoolError;
use crate::identity::{Action, Principal};
use crate::store::{ActivityFilter, Db, NewActivity, ToolCallFilter};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, routing::post};
use cadre_actors::domain::{AgentId, OrgId};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Events per `POST /activity`.
pub const MAX_BATCH: usize = 5000;
/// Bytes of one event's payload.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// How far ahead of the server's clock an event's `at` may be.
pub const MAX_AHEAD_MS: i64 = 10 * 60 * 1000;
/// Rows per database page when a stream catches up.
const REPLAY_PAGE: i64 = 500;

/// A kind: 1–100 of `a-z 0-9 _ . : -`.
pub fn valid_kind(k: &str) -> bool {
    (1..=100).contains(&k.len())
        && k.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b':' | b'-')
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    events: Vec<InEvent>,
}

/// One reported event (also the runtime protocol's `activity` entries).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InEvent {
    /// The agent (absent for organization-level events).
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Kind.
    pub kind: String,
    /// Any JSON (default `{}`).
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    /// When it happened (RFC 3339; default: now).
    #[serde(default)]
    pub at: Option<String>,
}

/// Validates one event into a row of `org` (`agent` fixed for runtimes).
pub fn to_row(
    i: usize,
    ev: InEvent,
    org: &OrgId,
    agent: Option<&AgentId>,
    known: impl Fn(&AgentId) -> bool,
    now: i64,
    redact: &[String],
) -> Result<NewActivity, ApiError> {
    let field = |f: &str| format!("events[{i}].{f}");
    if !valid_kind(&ev.kind) {
        return Err(ApiError::invalid(
            &field("kind"),
            "1-100 characters of a-z, 0-9, _ . : -",
        ));
    }
    let agent_id = match (agent, ev.agent_id) {
        (Some(a), Some(given)) if given != a.as_str() => {
            return Err(ApiError::invalid(
                &field("agent_id"),
                "a runtime reports for its own agent only",
            ));
        }
        (Some(a), _) => Some(a.0.clone()),
        (None, Some(given)) => {
            let id = AgentId(given);
            if !known(&id) {
                return Err(ApiError::invalid(&field("agent_id"), "no such agent"));
            }
            Some(id.0)
        }
        (None, None) => None,
    };
    let payload = ev
        .payload
        .map_or_else(|| "{}".to_string(), |p| p.get().to_string());
    if payload.len() > MAX_PAYLOAD {
        return Err(ApiError::invalid(
            &field("payload"),
            format!("at most {MAX_PAYLOAD} bytes"),
        ));
    }
    let at = match ev.at.as_deref() {
        Some(t) => input::time(&field("at"), t)?,
        None => now,
    };
    // A time far ahead would never age out (retention counts from it) and
    // would sort above everything real; a clock a little fast is allowed.
    if at > now.saturating_add(MAX_AHEAD_MS) {
        return Err(ApiError::invalid(
            &field("at"),
            format!(
                "at most {} minutes ahead of the server's clock",
                MAX_AHEAD_MS / 60_000
            ),
        ));
    }
    let (record, payload) = match records::parse(&ev.kind, &payload, redact) {
        Ok(None) => (None, payload),
        Ok(Some((record, stored))) => {
            if agent_id.is_none() {
                return Err(ApiError::invalid(
                    &field("agent_id"),
                    format!("a {} belongs to an agent", ev.kind),
                ));
            }
            (Some(record), stored.unwrap_or(payload))
        }
        Err(e) => {
            let path = if e.field == "payload" {
                field("payload")
            } else {
                field(&format!("payload.{}", e.field))
            };
            return Err(ApiError::invalid(&path, e.message));
        }
    };
    Ok(NewActivity {
        org_id: org.0.clone(),
        agent_id,
        kind: ev.kind,
        payload,
        at,
        record,
    })
}

/// The answer to a failed submit.
pub fn spool_error(e: SpoolError) -> ApiError {
    match e {
        SpoolError::TooLarge(..) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            e.to_string(),
        ),
        SpoolError::Closed => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

async fn ingest(
    State(state): State<AppState>,
    p: Principal,
    ApiJson(batch): ApiJson<Batch>,
) -> Result<Response, ApiError> {
    let n = batch.events.len();
    if n == 0 || n > MAX_BATCH {
        return Err(ApiError::invalid(
            "events",
            format!("1 to {MAX_BATCH} events per request"),
        ));
    }
    let now = crate::activity::now_ms();
    let rows = batch
        .events
        .into_iter()
        .enumerate()
        .map(|(i, ev)| {
            to_row(
                i,
                ev,
                &p.org,
                None,
                |a| state.cadre.has_agent(&p.org, a),
                now,
                state.activity.redact_keys(),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let first_id = state.activity.submit(rows).await.map_err(spool_error)?;
    Ok(Json(json!({ "accepted": n, "first_id": first_id })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    agent: Option<String>,
    kind: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
}

fn filter(agent: Option<String>, kind: Option<String>) -> Result<ActivityFilter, ApiError> {
    if let Some(a) = &agent
        && (a.is_empty() || a.len() > 64)
    {
        return Err(bad_query("agent must be an agent id"));
    }
    if let Some(k) = &kind
        && !valid_kind(k)
    {
        return Err(bad_query(
            "kind must be 1-100 characters of a-z, 0-9, _ . : - (end with . for a prefix)",
        ));
    }
    Ok(ActivityFilter {
        agent,
        kind,
        ..ActivityFilter::default()
    })
}

fn event_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| bad_query(format!("{what} must be an event id")))
}

async fn list(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<ListParams>,
) -> Result<Response, ApiError> {
    let limit = page_limit(q.limit)?;
    let mut f = filter(q.agent, q.kind)?;
    f.since = time_param(q.since, "since")?;
    f.until = time_param(q.until, "until")?;
    let before = cursor_id(q.cursor.as_deref())?;
    let rows = state
        .store
        .tables()
        .activity_page(p.org.as_str(), &f, before, limit as i64 + 1)
        .await?;
    Ok(json_page(rows, limit, |r| r.id))
}

/// What a stream delivers next.
enum Item {
    Event(Arc<StreamEvent>),
    /// The subscriber fell behind: what follows from `from` on comes from the
    /// database until it is live again.
    Resync {
        from: i64,
    },
}

/// A subscriber's view of its organization's events.
struct Feed {
    store: Arc<Db>,
    org: OrgId,
    filter: ActivityFilter,
    rx: broadcast::Receiver<Arc<StreamEvent>>,
    /// The last id delivered (or the resume point).
    last: i64,
    backlog: VecDeque<Arc<StreamEvent>>,
    replaying: bool,
}

impl Feed {
    fn matches(&self, ev: &StreamEvent) -> bool {
        if let Some(a) = &self.filter.agent
            && ev.agent_id.as_deref() != Some(a.as_str())
        {
            return false;
        }
        match self.filter.kind.as_deref() {
            Some(k) if k.ends_with('.') => ev.kind.starts_with(k),
            Some(k) => ev.kind == k,
            None => true,
        }
    }

    /// The next item; `None` ends the stream (the client resumes with the
    /// last id it saw).
    async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(ev) = self.backlog.pop_front() {
                self.last = ev.id;
                return Some(Item::Event(ev));
            }
            if self.replaying {
                let rows = self
                    .store
                    .tables()
                    .activity_after(self.org.as_str(), &self.filter, self.last, REPLAY_PAGE)
                    .await
                    .ok()?;
                if rows.is_empty() {
                    self.replaying = false;
                } else {
                    self.backlog
                        .extend(rows.iter().map(|r| Arc::new(StreamEvent::from_row(r))));
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(ev) if ev.id > self.last && self.matches(&ev) => {
                    self.last = ev.id;
                    return Some(Item::Event(ev));
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    metrics::counter!("cadre_stream_resyncs_total").increment(1);
                    self.replaying = true;
                    return Some(Item::Resync {
                        from: self.last + 1,
                    });
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamParams {
    agent: Option<String>,
    kind: Option<String>,
    /// Resume after this event id (SSE clients may send `Last-Event-ID`).
    after: Option<String>,
}

async fn feed(
    state: &AppState,
    org: OrgId,
    q: StreamParams,
    resume: Option<&str>,
) -> Result<Feed, ApiError> {
    let filter = filter(q.agent, q.kind)?;
    let after = match resume.or(q.after.as_deref()) {
        Some(raw) => Some(event_id(raw, "after")?),
        None => None,
    };
    // Subscribe first, then read the database: nothing falls in between.
    let rx = state.activity.hub().subscribe(&org);
    let (last, replaying) = match after {
        Some(a) => (a, true),
        None => (state.store.tables().last_activity_id().await?, false),
    };
    Ok(Feed {
        store: state.store.clone(),
        org,
        filter,
        rx,
        last,
        backlog: VecDeque::new(),
        replaying,
    })
}

/// Counts a connected stream client while it lives.
struct ClientGauge(&'static str);

impl ClientGauge {
    fn new(transport: &'static str) -> ClientGauge {
        metrics::gauge!("cadre_stream_clients", "transport" => transport).increment(1.0);
        ClientGauge(transport)
    }
}

impl Drop for ClientGauge {
    fn drop(&mut self) {
        metrics::gauge!("cadre_stream_clients", "transport" => self.0).decrement(1.0);
    }
}

fn resync_json(from: i64) -> String {
    json!({ "type": "resync", "from": from }).to_string()
}

async fn sse(
    State(state): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamParams>,
) -> Result<Response, ApiError> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let feed = feed(&state, p.org.clone(), q, resume.as_deref()).await?;
    let mut shutdown = state.shutdown.clone();
    let gauge = ClientGauge::new("sse");
    let stream = futures_util::stream::unfold((feed, gauge), move |(mut feed, gauge)| async move {
        let item = feed.next().await?;
        let ev = match item {
            Item::Event(ev) => SseEvent::default()
                .id(ev.id.to_string())
                .event("activity")
                .data(ev.json.as_str()),
            Item::Resync { from } => SseEvent::default().event("resync").data(resync_json(from)),
        };
        Some((Ok::<_, Infallible>(ev), (feed, gauge)))
    })
    .take_until(async move {
        let _ = shutdown.wait_for(|closing| *closing).await;
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn ws(
    State(state): State<AppState>,
    p: Principal,
    ApiQuery(q): ApiQuery<StreamParams>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let feed = feed(&state, p.org.clone(), q, None).await?;
    let ping = Duration::from_secs(state.config.activity.ping_secs);
    let idle = Duration::from_secs(state.config.activity.idle_secs);
    let shutdown = state.shutdown.clone();
    // A stream client only sends pongs and a close: a small read buffer.
    // Writes go out at 16 KiB (or at once when the feed has nothing more);
    // a client that stops reading holds at most that plus the socket's own
    // buffer, then falls behind the broadcast and gets a resync.
    Ok(upgrade
        .max_message_size(4096)
        .read_buffer_size(4096)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .on_upgrade(move |socket| serve_ws(socket, feed, ping, idle, shutdown)))
}

async fn serve_ws(
    socket: WebSocket,
    mut feed: Feed,
    ping: Duration,
    idle: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let _gauge = ClientGauge::new("websocket");
    let (mut tx, mut rx) = socket.split();
    let mut ticker = tokio::time::interval(ping);
    ticker.tick().await;
    let mut seen = Instant::now();
    loop {
        tokio::select! {
            item = feed.next() => {
                let text = match item {
                    Some(Item::Event(ev)) => ev.json.clone(),
                    Some(Item::Resync { from }) => resync_json(from),
                    None => break,
                };
                // A client that stops reading is cut off after the idle
                // timeout; until then it only falls behind (and resyncs).
                match tokio::time::timeout(idle, tx.send(Message::Text(text.into()))).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
            frame = rx.next() => match frame {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => seen = Instant::now(),
            },
            _ = ticker.tick() => {
                if seen.elapsed() > idle {
                    break;
                }
                if tx.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    let _ = tx.send(Message::Close(None)).await;
}

/// The agent of a path, which must be one of `p`'s organization's.
fn own_agent(state: &AppState, p: &Principal, raw: &str) -> Result<AgentId, ApiError> {
    let id = super::agents::agent_id(raw)?;
    if state.cadre.has_agent(&p.org, &id) {
        Ok(id)
    } else {
        Err(ApiError::not_found("agent"))
    }
}

/// A `{"items","next_cursor"}` page of stored rows, as they serialize;
/// the cursor is the last row's numeric key.
fn json_page<T: serde::Serialize>(rows: Vec<T>, limit: usize, key: impl Fn(&T) -> i64) -> Response {
    super::identity::page(
        rows,
        limit,
        |r| key(r).to_string(),
        |r| serde_json::to_value(r).unwrap_or_default(),
    )
}

fn cursor_id(raw: Option<&str>) -> Result<Option<i64>, ApiError> {
    input::numeric_cursor(raw)
}

fn time_param(raw: Option<String>, what: &str) -> Result<Option<i64>, ApiError> {
    raw.map(|t| {
        input::time(what, &t).map_err(|_| bad_query(format!("{what} must be an RFC 3339 time")))
    })
    .transpose()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolCallParams {
    tool: Option<String>,
    status: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn tool_calls(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ToolCallParams>,
) -> Result<Response, ApiError> {
    let agent = own_agent(&state, &p, &id)?;
    let limit = page_limit(q.limit)?;
    if let Some(s) = &q.status
        && !records::STATUSES.contains(&s.as_str())
    {
        return Err(bad_query(format!(
            "status must be one of {}",
            records::STATUSES.join(", ")
        )));
    }
    if let Some(t) = &q.tool
        && (t.is_empty() || t.len() > 200)
    {
        return Err(bad_query("tool must be a tool id"));
    }
    let f = ToolCallFilter {
        tool: q.tool,
        status: q.status,
        since: time_param(q.since, "since")?,
        until: time_param(q.until, "until")?,
    };
    let rows = state
        .store
        .tables()
        .tool_calls_page(
            p.org.as_str(),
            agent.as_str(),
            &f,
            cursor_id(q.cursor.as_deref())?,
            limit as i64 + 1,
        )
        .await?;
    Ok(json_page(rows, limit, |r| r.id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageOnly {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn conversations(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<PageOnly>,
) -> Result<Response, ApiError> {
    let agent = own_agent(&state, &p, &id)?;
    let limit = page_limit(q.limit)?;
    let rows = state
        .store
        .tables()
        .conversations_page(
            p.org.as_str(),
            agent.as_str(),
            cursor_id(q.cursor.as_deref())?,
            limit as i64 + 1,
        )
        .await?;
    Ok(json_page(rows, limit, |r| r.seq))
}

async fn messages(
    State(state): State<AppState>,
    p: Principal,
    Path((id, conversation)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<PageOnly>,
) -> Result<Response, ApiError> {
    let agent = own_agent(&state, &p, &id)?;
    let limit = page_limit(q.limit)?;
    let Some(c) = state
        .store
        .tables()
        .conversation(p.org.as_str(), agent.as_str(), &conversation)
        .await?
    else {
        return Err(ApiError::not_found("conversation"));
    };
    let rows = state
        .store
        .tables()
        .messages_page(
            p.org.as_str(),
            agent.as_str(),
            &c.id,
            cursor_id(q.cursor.as_deref())?,
            limit as i64 + 1,
        )
        .await?;
    Ok(json_page(rows, limit, |r| r.id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineParams {
    date: Option<String>,
}

/// Unix ms of midnight UTC of a `YYYY-MM-DD` day.
fn day_start(raw: &str) -> Option<i64> {
    let t = input::time("date", &format!("{raw}T00:00:00Z")).ok()?;
    (raw.len() == 10).then_some(t)
}

async fn timeline(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<TimelineParams>,
) -> Result<Response, ApiError> {
    const DAY: i64 = 86_400_000;
    let agent = own_agent(&state, &p, &id)?;
    let from = match q.date.as_deref() {
        Some(d) => day_start(d).ok_or_else(|| bad_query("date must be a day, YYYY-MM-DD"))?,
        None => crate::activity::now_ms().div_euclid(DAY) * DAY,
    };
    let t = state
        .store
        .tables()
        .timeline(p.org.as_str(), agent.as_str(), from)
        .await?;
    // State changes from the agent's history (kept beyond activity's
    // retention), at most a page's worth.
    let states = state
        .store
        .tables()
        .history_between(p.org.as_str(), agent.as_str(), 0, (from, from + DAY), 1000)
        .await?;
    let date = cadre_actors::domain::rfc3339(from);
    Ok(Json(json!({
        "agent_id": agent.as_str(),
        "date": date.get(..10).unwrap_or(&date),
        "from": date,
        "until": cadre_actors::domain::rfc3339(from + DAY),
        "totals": t.totals,
        "hours": t.hours.iter().enumerate().map(|(h, c)| {
            let mut v = serde_json::to_value(c).unwrap_or_default();
            v["hour"] = json!(h);
            v
        }).collect::<Vec<_>>(),
        "kinds": t.kinds,
        "states": states,
    }))
    .into_response())
}

/// `/activity`, `/events`, `/stream`, and an agent's tool calls,
/// conversations, messages and daily timeline.
pub fn routes(r: Routes) -> Routes {
    r.add(
        Method::POST,
        "/activity",
        Action::ActivityWrite,
        post(ingest),
    )
    .add(Method::GET, "/activity", Action::ActivityRead, get(list))
    .add(Method::GET, "/events", Action::ActivityRead, get(sse))
    .add(Method::GET, "/stream", Action::ActivityRead, get(ws))
    .add(
        Method::GET,
        "/agents/{id}/tool-calls",
        Action::ActivityRead,
        get(tool_calls),
    )
    .add(
        Method::GET,
        "/agents/{id}/conversations",
        Action::ActivityRead,
        get(conversations),
    )
    .add(
        Method::GET,
        "/agents/{id}/conversations/{conversation}/messages",
        Action::ActivityRead,
        get(messages),
    )
    .add(
        Method::GET,
        "/agents/{id}/timeline",
        Action::ActivityRead,
        get(timeline),
    )
}
