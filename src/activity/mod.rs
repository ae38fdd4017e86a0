//! The activity pipeline: batched durable writes, the live broadcast per
//! organization, the bridge that records the actors' own events, and the
//! retention job.
//!
//! ```text
//! producers ──reserve/push──▶ Spool ──take──▶ ActivityWriter ──one tx──▶ SQLite
//!   (POST /activity,            (bounded,       (supervised;        │
//!    runtime sockets,           outside the      replaceable)       ▼
//!    the actor bridge)          actor)                        Hub (per org) ──▶ streams
//! ```
//!
//! A producer's answer (the id of its first row) comes only after the commit;
//! see [`spool`] for why a killed writer loses nothing.

pub mod hub;
pub mod records;
pub mod spool;
pub mod writer;

use crate::config::ActivityConfig;
use crate::store::{Db, NewActivity};
use cadre_actors::events::Event;
use hub::Hub;
use ractor::{Actor, ActorRef};
use spool::{Policy, Spool, SpoolError};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::broadcast;
use writer::{Shared, SupervisorMsg, WriterMsg, WriterSupervisor};

/// Wall-clock unix milliseconds (the one place this module reads the clock).
pub fn now_ms() -> i64 {
    cadre_actors::ports::Clock::now_ms(&cadre_actors::ports::SystemClock)
}

/// Handle on the running pipeline (cheap to clone).
#[derive(Clone)]
pub struct Activity {
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
    stall: Duration,
    redact: Arc<[String]>,
}

impl std::fmt::Debug for Activity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activity").finish_non_exhaustive()
    }
}

impl Activity {
    /// Starts the writer under its supervisor.
    pub async fn start(
        store: Arc<Db>,
        config: &ActivityConfig,
    ) -> Result<Activity, ractor::SpawnErr> {
        let shared = Arc::new(Shared {
            spool: Arc::new(Spool::new(Policy {
                rows: config.flush_rows,
                bytes: config.flush_bytes,
                delay: Duration::from_millis(config.flush_ms),
                capacity: config.queue_rows,
            })),
            hub: Arc::new(Hub::new(config.stream_buffer)),
            store,
            retry_base: Duration::from_millis(config.retry_base_ms.max(1)),
            retry_max: Duration::from_millis(config.retry_max_ms.max(1)),
            writer: std::sync::Mutex::new(None),
        });
        let (supervisor, _) = Actor::spawn(None, WriterSupervisor, shared.clone()).await?;
        Ok(Activity {
            shared,
            supervisor,
            stall: Duration::from_millis(config.stall_ms),
            redact: config.redact_keys.clone().into(),
        })
    }

    /// The queue (producers reserve room and push here).
    pub fn spool(&self) -> &Spool {
        &self.shared.spool
    }

    /// Argument names redacted in tool calls besides the built-in ones.
    pub fn redact_keys(&self) -> &[String] {
        &self.redact
    }

    /// The live broadcasts.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.shared.hub
    }

    /// Queues rows and waits for their commit; answers the first row's id.
    pub async fn submit(&self, rows: Vec<NewActivity>) -> Result<i64, SpoolError> {
        self.shared.spool.submit(rows).await
    }

    fn writer(&self) -> Option<ActorRef<WriterMsg>> {
        self.shared
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes everything queued now and waits for it (tests, shutdown).
    /// Retries across writer replacements until `limit` passes.
    pub async fn flush(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(w) = self.writer() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if let Ok(ractor::rpc::CallResult::Success(())) =
                    w.call(WriterMsg::Flush, Some(left)).await
                    && self.shared.spool.is_empty()
                {
                    return true;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether the writer is alive and its flushes succeed in time (`/readyz`).
    pub fn healthy(&self) -> bool {
        let spool = &self.shared.spool;
        let started = spool.flush_started.load(Ordering::Acquire);
        let now = now_ms();
        let stalled = started != 0 && now - started > self.stall.as_millis() as i64;
        self.writer().is_some() && !spool.failing.load(Ordering::Acquire) && !stalled
    }

    /// Chaos: ends the current writer (its supervisor starts a new one).
    pub fn kill_writer(&self, panic: bool) -> bool {
        match self.writer() {
            Some(w) if panic => w.cast(WriterMsg::Panic).is_ok(),
            Some(w) => {
                w.kill();
                true
            }
            None => false,
        }
    }

    /// Refuses new rows, writes what is queued, stops the actors.
    pub async fn shutdown(&self, limit: Duration) {
        self.shared.spool.close();
        if !self.flush(limit).await {
            tracing::warn!(
                queued = self.shared.spool.queued(),
                "activity not flushed before shutdown"
            );
        }
        let _ = self.supervisor.stop_and_wait(None, Some(limit)).await;
        if let Some(w) = self.writer() {
            let _ = w.stop_and_wait(None, Some(limit)).await;
        }
    }
}

/// An event that is its kind and detail.
fn plain(
    org: &cadre_actors::domain::OrgId,
    agent: Option<&cadre_actors::domain::AgentId>,
    kind: &str,
    detail: &serde_json::Value,
    at: i64,
) -> NewActivity {
    NewActivity {
        org_id: org.0.clone(),
        agent_id: agent.map(|a| a.0.clone()),
        kind: kind.to_string(),
        payload: detail.to_string(),
        at,
        record: None,
    }
}

/// The activity row of an actor event.
pub fn row_of(ev: &Event) -> NewActivity {
    match ev {
        Event::Transition {
            org_id,
            agent_id,
            transition: t,
        } => NewActivity {
            org_id: org_id.0.clone(),
            agent_id: Some(agent_id.0.clone()),
            kind: "agent.state_changed".into(),
            payload: serde_json::json!({
                "from": t.from.map(|s| s.as_str()),
                "to": t.to.as_str(),
                "reason": t.reason,
                "by": t.by,
            })
            .to_string(),
            at: t.at,
            record: None,
        },
        Event::Agent {
            org_id,
            agent_id,
            event,
        } => NewActivity {
            org_id: org_id.0.clone(),
            agent_id: Some(agent_id.0.clone()),
            kind: format!("agent.{}", event.kind),
            payload: event.detail.to_string(),
            at: event.at,
            record: None,
        },
        Event::Governance {
            org_id,
            agent_id,
            kind,
            detail,
            at,
        } => plain(org_id, agent_id.as_ref(), kind, detail, *at),
        Event::Task {
            org_id,
            agent_id,
            kind,
            detail,
            at,
        } => plain(org_id, Some(agent_id), kind, detail, *at),
        Event::Deleted { org_id, agent_id } => NewActivity {
            org_id: org_id.0.clone(),
            agent_id: Some(agent_id.0.clone()),
            kind: "agent.deleted".into(),
            payload: "{}".into(),
            at: now_ms(),
            record: None,
        },
    }
}

/// The typed records an actor event also is: a task's tool step is a
/// `tool_call` (its arguments' secrets redacted), a model step is the
/// task's conversation (`conversation_id` = the task id, titled by its
/// instruction): the instruction as the user's message on the first step,
/// then what the model said.
pub fn records_of(ev: &Event, redact_keys: &[String]) -> Vec<NewActivity> {
    let Event::Task {
        org_id,
        agent_id,
        kind,
        detail: d,
        at,
    } = ev
    else {
        return Vec::new();
    };
    if kind != "task.step" {
        return Vec::new();
    }
    let task = d["task_id"].as_str().unwrap_or_default();
    // A task is a conversation of its own; a chat turn belongs to its chat.
    let chat = d["conversation_id"].as_str();
    let conversation = chat.unwrap_or(task);
    let mut out = Vec::new();
    let mut push = |kind: &str, payload: serde_json::Value| {
        let text = payload.to_string();
        match records::parse(kind, &text, redact_keys) {
            Ok(Some((record, redacted))) => out.push(NewActivity {
                org_id: org_id.0.clone(),
                agent_id: Some(agent_id.0.clone()),
                kind: kind.to_string(),
                payload: redacted.unwrap_or(text),
                at: *at,
                record: Some(record),
            }),
            // The runtime's step was stored as it came; a record that
            // cannot be made of it is said, not hidden.
            other => tracing::warn!(task, ?other, "a task step made no activity record"),
        }
    };
    if d["kind"] == "tool" {
        let result = d["result"].as_str().unwrap_or_default();
        let status = match d["decision"].as_str() {
            Some("allow" | "simulate") if result.starts_with("error: ") => "error",
            Some("allow" | "simulate") => "ok",
            Some("deny") => "denied",
            _ => "timeout",
        };
        push(
            records::TOOL_CALL,
            serde_json::json!({
                "tool_id": d["tool"],
                "call_id": d["call_id"],
                "arguments": d["arguments"],
                "result_summary": result,
                "status": status,
                "duration_ms": d["latency_ms"],
                "waited_ms": d["waited_ms"],
                "approval_id": d["approval_id"],
                "task_id": task,
            }),
        );
    } else {
        // A chat was titled when it was opened; a task by its instruction.
        let titled = |mut m: serde_json::Value| {
            if chat.is_none() {
                m["title"] = serde_json::json!(
                    d["instruction"]
                        .as_str()
                        .unwrap_or_default()
                        .chars()
                        .take(200)
                        .collect::<String>()
                );
            }
            m
        };
        if d["seq"] == 1 {
            push(
                records::MESSAGE,
                titled(serde_json::json!({
                    "conversation_id": conversation,
                    "role": "user",
                    "content": d["instruction"],
                    "task_id": task,
                })),
            );
        }
        if let Some(text) = d["text"].as_str().filter(|t| !t.is_empty()) {
            push(
                records::MESSAGE,
                titled(serde_json::json!({
                    "conversation_id": conversation,
                    "role": "assistant",
                    "content": text,
                    "tokens": d["tokens"],
                    "task_id": task,
                })),
            );
        }
    }
    out
}

/// Records the actors' committed events (state changes, budget alerts,
/// deletions) as activity, so streams carry them with resumable ids. The
/// events are already durable in the agents' history (an approval's in the
/// approvals table and the audit log, whose copy the audit bridge puts on
/// the stream); if this task ever falls behind the actors' broadcast it
/// counts what it missed (`cadre_activity_bridge_lagged_total`) and logs a
/// warning, never a silent gap.
pub fn spawn_bridge(
    activity: Activity,
    mut events: broadcast::Receiver<Arc<Event>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let first = match events.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics::counter!("cadre_activity_bridge_lagged_total").increment(n);
                    tracing::warn!(
                        missed = n,
                        "activity bridge fell behind the actors' events; they remain in each agent's history"
                    );
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let keys = activity.redact_keys().to_vec();
            let mut rows = vec![row_of(&first)];
            rows.extend(records_of(&first, &keys));
            while rows.len() < 512 {
                match events.try_recv() {
                    Ok(e) => {
                        rows.push(row_of(&e));
                        rows.extend(records_of(&e, &keys));
                    }
                    _ => break,
                }
            }
            // Wait for room (back-pressure), not for the commit: the bridge
            // must keep up with the actors.
            let spool = activity.spool();
            match spool.reserve(rows.len()).await {
                Ok(room) => drop(spool.push(room, rows)),
                Err(SpoolError::Closed) => return,
                Err(e) => tracing::error!(error = %e, "activity bridge could not queue events"),
            }
        }
    })
}

/// Puts every audit entry on its organization's activity stream as
/// `audit.<action>` (payload: `audit_id`, `actor`, `target`, `summary`,
/// `request_id`), by following the audit log: every change Cadre audits —
/// identity, agents, runtimes — shows up without each writer knowing about
/// the stream. It starts at the log's end; entries written in the last poll
/// interval before a crash are in the audit log (the record of truth) but
/// not on the stream.
pub fn spawn_audit_bridge(
    store: Arc<Db>,
    activity: Activity,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    const PAGE: i64 = 500;
    tokio::spawn(async move {
        let mut last = loop {
            match store.tables().last_audit_id().await {
                Ok(id) => break id,
                Err(e) => {
                    tracing::warn!(error = %e, "audit bridge: log unreadable; retrying");
                    tokio::time::sleep(every).await;
                }
            }
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            loop {
                let entries = match store.tables().audit_since(last, PAGE).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "audit bridge: log unreadable; next poll retries");
                        break;
                    }
                };
                let Some(end) = entries.last().map(|e| e.0) else {
                    break;
                };
                let full = entries.len() as i64 == PAGE;
                let rows: Vec<NewActivity> = entries
                    .into_iter()
                    .map(
                        |(id, org, at, actor, action, target, summary, request_id)| {
                            let kind: String = format!("audit.{action}")
                                .chars()
                                .map(|c| match c {
                                    'a'..='z' | '0'..='9' | '_' | '.' | ':' | '-' => c,
                                    'A'..='Z' => c.to_ascii_lowercase(),
                                    _ => '_',
                                })
                                .take(100)
                                .collect();
                            let summary: serde_json::Value =
                                serde_json::from_str(&summary).unwrap_or(serde_json::Value::Null);
                            NewActivity {
                                org_id: org,
                                agent_id: target.strip_prefix("agent:").map(str::to_string),
                                kind,
                                payload: serde_json::json!({
                                    "audit_id": id,
                                    "actor": actor,
                                    "target": target,
                                    "summary": summary,
                                    "request_id": request_id,
                                })
                                .to_string(),
                                at,
                                record: None,
                            }
                        },
                    )
                    .collect();
                let spool = activity.spool();
                match spool.reserve(rows.len()).await {
                    Ok(room) => drop(spool.push(room, rows)),
                    Err(SpoolError::Closed) => return,
                    Err(e) => tracing::error!(error = %e, "audit bridge could not queue events"),
                }
                last = end;
                if !full {
                    break;
                }
            }
        }
    })
}

/// Deletes expired activity in batches, once per interval.
pub fn spawn_retention(store: Arc<Db>, config: &ActivityConfig) -> tokio::task::JoinHandle<()> {
    let days = config.retention_days;
    let batch = config.retention_batch;
    let every = Duration::from_secs(config.retention_interval_secs);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = now_ms();
            loop {
                match store.tables().expire_activity(now, days, batch).await {
                    Ok(n) => {
                        metrics::counter!("cadre_activity_rows_expired_total")
                            .increment(n.activity);
                        if !n.more() {
                            break;
                        }
                        // Small batches, with room for the writer in between.
                        tokio::task::yield_now().await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "activity retention failed; next run retries");
                        break;
                    }
                }
            }
        }
    })
}
