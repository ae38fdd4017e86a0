//! `GET /api/v1/runtime/connect`: the WebSocket the agent runtime dials.
//!
//! The token (`Authorization: Bearer <agent id>.<secret>`) is checked by the
//! agent's actor before the upgrade, so a bad token gets a plain 401. After
//! the upgrade each frame becomes one actor call; the connection waits for
//! the answer before reading the next frame, so one runtime can never have
//! more than one request queued at its actor.

use super::error::ApiError;
use super::state::AppState;
use crate::protocol::{PROTOCOL_VERSION, RuntimeMessage, ServerMessage};
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::Response;
use axum::routing::get;
use cadre_actors::Cadre;
use cadre_actors::agent::{HelloAck, ReserveRequest, ToolRequest, UsageReport};
use cadre_actors::client::ToolAnswer;
use cadre_actors::domain::{AgentId, OrgId};
use cadre_actors::task::{TaskOrder, TaskReport, TaskState, TaskStep};
use std::time::Duration;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Large enough for an activity batch.
const MAX_FRAME: usize = 4 * 1024 * 1024;

async fn connect(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthenticated("missing runtime token"))?
        .trim()
        .to_string();
    let agent = token
        .split_once('.')
        .map(|(id, _)| AgentId(id.to_string()))
        .ok_or_else(|| ApiError::unauthenticated("malformed runtime token"))?;
    let org = state
        .cadre
        .org_of(&agent)
        .ok_or_else(|| ApiError::unauthenticated("invalid runtime token"))?;
    let ack = state.cadre.runtime_hello(&org, &agent, &token).await?;
    let session = Session {
        cadre: state.cadre.clone(),
        knowledge: state.knowledge.clone(),
        working_ttl_hours: state.config.knowledge.working_ttl_hours,
        store: state.store.clone(),
        dir: state.identity.directory().clone(),
        activity: state.activity.clone(),
        shutdown: state.shutdown.clone(),
        limits: state.config.tasks.default_limits,
        org,
        agent,
        ack,
    };
    Ok(ws
        .max_message_size(MAX_FRAME)
        .on_upgrade(move |socket| serve(socket, session)))
}

/// One authenticated runtime connection.
struct Session {
    cadre: Cadre,
    knowledge: crate::knowledge::Knowledge,
    working_ttl_hours: u64,
    store: std::sync::Arc<crate::store::Db>,
    dir: std::sync::Arc<crate::identity::Directory>,
    activity: crate::activity::Activity,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Limits of tasks that agents give each other.
    limits: cadre_actors::task::TaskLimits,
    org: OrgId,
    agent: AgentId,
    ack: HelloAck,
}

async fn send(socket: &mut WebSocket, msg: &ServerMessage) -> bool {
    match serde_json::to_string(msg) {
        Ok(text) => socket.send(Message::Text(text.into())).await.is_ok(),
        Err(_) => false,
    }
}

fn stop(reason: &str) -> ServerMessage {
    ServerMessage::Stop {
        reason: reason.to_string(),
    }
}

fn error(code: &str, message: impl Into<String>) -> ServerMessage {
    ServerMessage::Error {
        code: code.to_string(),
        message: message.into(),
    }
}

async fn serve(mut socket: WebSocket, session: Session) {
    let Session {
        cadre,
        knowledge,
        working_ttl_hours,
        store,
        dir,
        activity,
        mut shutdown,
        limits,
        org,
        agent,
        ack:
            HelloAck {
                conn,
                heartbeat_interval_ms,
                should_run,
            },
    } = session;
    // The first frame must be a hello in a protocol version we speak.
    let first = tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await;
    let hello = match first {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<RuntimeMessage>(&t).ok(),
        _ => None,
    };
    let pid = match hello {
        Some(RuntimeMessage::Hello { protocol, pid, .. }) if protocol == PROTOCOL_VERSION => pid,
        Some(RuntimeMessage::Hello { protocol, .. }) => {
            let _ = send(
                &mut socket,
                &error(
                    "unsupported_protocol",
                    format!(
                        "protocol {protocol} unsupported; this server speaks {PROTOCOL_VERSION}"
                    ),
                ),
            )
            .await;
            return;
        }
        _ => {
            let _ = send(
                &mut socket,
                &error("bad_message", "the first frame must be a hello"),
            )
            .await;
            return;
        }
    };
    let welcome = ServerMessage::Welcome {
        protocol: PROTOCOL_VERSION,
        conn,
        heartbeat_interval_ms,
    };
    if !send(&mut socket, &welcome).await {
        return;
    }
    if !should_run {
        let _ = send(&mut socket, &stop("agent is not supposed to run")).await;
        return;
    }
    // Decisions on parked tool calls arrive here while the connection keeps
    // serving heartbeats and other frames.
    let (decided_tx, mut decided) = tokio::sync::mpsc::channel::<ServerMessage>(MAX_PARKED);
    let parked = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_PARKED));
    // Task orders from the agent actor (queued tasks at once, new ones as
    // they come, cancellations).
    let (task_tx, mut orders) = tokio::sync::mpsc::channel(TASK_ORDERS);
    if let Err(e) = cadre.attach_tasks(&org, &agent, conn, pid, task_tx) {
        let _ = send(&mut socket, &error("unavailable", e.to_string())).await;
        return;
    }
    loop {
        let frame = tokio::select! {
            frame = socket.recv() => frame,
            Some(order) = orders.recv() => {
                let msg = match order {
                    TaskOrder::Run(t) => {
                        // A replay continues from its copied steps.
                        let replay = match t.from_step {
                            Some(from) if from > 1 => match store.tables().task_steps(&t.id, 0, from - 1).await {
                                Ok(steps) => steps
                                    .into_iter()
                                    .map(|s| serde_json::json!({ "seq": s.seq, "kind": s.kind, "body": s.body, "tokens": s.tokens }))
                                    .collect(),
                                Err(e) => {
                                    let _ = send(&mut socket, &error("unavailable", e.to_string())).await;
                                    return;
                                }
                            },
                            _ => Vec::new(),
                        };
                        let memories = recall_for_task(&cadre, &knowledge, &org, &agent, &t.instruction).await;
                        // Composed as the task leaves: a later change of the
                        // agent's instructions reaches the next task, not this one.
                        let mode = match t.input.get("conversation_id") {
                            Some(_) => crate::prompt::Mode::Chat,
                            None => crate::prompt::Mode::Task,
                        };
                        let prompt = match crate::prompt::prompt_for(&cadre, &dir, &store, (&org, &agent), mode, t.version).await {
                            Ok(p) => p,
                            Err(e) => {
                                let _ = send(&mut socket, &error("unavailable", e.to_string())).await;
                                return;
                            }
                        };
                        ServerMessage::Task {
                            task_id: t.id,
                            instruction: t.instruction,
                            input: t.input,
                            limits: t.limits,
                            replay,
                            memories,
                            system: Some(prompt.system),
                            tools: Some(prompt.tools),
                        }
                    }
                    TaskOrder::Cancel(task_id) => ServerMessage::CancelTask { task_id },
                };
                if !send(&mut socket, &msg).await {
                    return;
                }
                continue;
            }
            Some(msg) = decided.recv() => {
                if !send(&mut socket, &msg).await {
                    return;
                }
                continue;
            }
            // The server is shutting down: close, so the runtime reconnects
            // to whichever control plane comes next.
            _ = shutdown.changed() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        };
        let Some(frame) = frame else { return };
        let text = match frame {
            Ok(Message::Text(t)) => t,
            Ok(Message::Close(_)) | Err(_) => return,
            Ok(_) => continue,
        };
        let reply = match serde_json::from_str::<RuntimeMessage>(&text) {
            Err(e) => error("bad_message", e.to_string()),
            Ok(RuntimeMessage::Hello { .. }) => error("bad_message", "already said hello"),
            Ok(RuntimeMessage::Activity { batch, events }) => {
                match ingest(&mut socket, &activity, &org, &agent, batch, events).await {
                    Some(reply) => reply,
                    None => return,
                }
            }
            Ok(RuntimeMessage::Heartbeat { seq }) => {
                match cadre.runtime_heartbeat(&org, &agent, conn).await {
                    Ok(true) => ServerMessage::HeartbeatAck { seq },
                    Ok(false) => stop("agent is not supposed to run"),
                    Err(cadre_actors::Error::Unauthorized) => {
                        error("unauthorized", "connection superseded")
                    }
                    Err(e) => error("unavailable", e.to_string()),
                }
            }
            Ok(RuntimeMessage::ToolRequest {
                call_id,
                tool,
                arguments,
                estimated_cost_usd,
            }) => {
                let Ok(permit) = parked.clone().try_acquire_owned() else {
                    let reply = error(
                        "too_many_pending",
                        format!(
                            "at most {MAX_PARKED} tool calls may wait for approval per connection"
                        ),
                    );
                    if !send(&mut socket, &reply).await {
                        return;
                    }
                    continue;
                };
                // Each call is judged (and, when it must wait, parked) in a
                // task of its own: a model's parallel tool calls reach the
                // approval actor together and their requests share commits,
                // and the connection keeps serving heartbeats meanwhile.
                // Answers (`tool_pending`, then `tool_decision`) come back
                // through the connection's outbox, in order per call.
                let (cadre, activity, org, agent, tx) = (
                    cadre.clone(),
                    activity.clone(),
                    org.clone(),
                    agent.clone(),
                    decided_tx.clone(),
                );
                tokio::spawn(async move {
                    let step = tool_request(
                        &cadre,
                        &activity,
                        &org,
                        &agent,
                        conn,
                        call_id,
                        tool,
                        arguments,
                        estimated_cost_usd,
                    )
                    .await;
                    match step {
                        Ok(Step::Now(reply)) | Err(reply) => {
                            let _ = tx.send(reply).await;
                        }
                        Ok(Step::Later { pending, wait }) => {
                            if tx.send(pending).await.is_ok() {
                                let _ = tx.send(wait.await).await;
                            }
                        }
                    }
                    drop(permit);
                });
                continue;
            }
            Ok(RuntimeMessage::TaskState {
                task_id,
                state,
                result,
                error: why,
            }) => match TaskState::parse(&state) {
                Some(s) if s != TaskState::Queued && s != TaskState::Cancelled => {
                    let report = TaskReport::State {
                        task_id: task_id.clone(),
                        state: s,
                        result,
                        error: why,
                    };
                    task_report(&cadre, &org, &agent, conn, report).await
                }
                _ => error(
                    "bad_message",
                    "state must be running, waiting_approval, succeeded or failed",
                ),
            },
            Ok(RuntimeMessage::Tools { tools }) => {
                use cadre_actors::governance::{Risk, ToolDef, valid_id};
                let ok = tools.len() <= 500
                    && tools
                        .iter()
                        .all(|t| t.id.starts_with("mcp.") && valid_id(&t.id));
                if ok {
                    let defs = tools
                        .into_iter()
                        .map(|t| ToolDef {
                            id: t.id,
                            skill: "mcp".into(),
                            description: t.description.chars().take(1000).collect(),
                            risk: Risk::Medium,
                            side_effects: Vec::new(),
                        })
                        .collect();
                    let by = cadre_actors::domain::Who::of(cadre_actors::domain::Party::Runtime(
                        agent.to_string(),
                    ));
                    match cadre.discover_tools(&org, defs, by).await {
                        Ok(added) => ServerMessage::ToolsAck { added },
                        Err(e) => error("unavailable", e.to_string()),
                    }
                } else {
                    error(
                        "bad_message",
                        "at most 500 tools, each `mcp.<server>.<tool>` of a-z 0-9 _ . -",
                    )
                }
            }
            Ok(RuntimeMessage::AgentMessage {
                call_id,
                task_id,
                to,
                message,
            }) => {
                let rule = dir.org(&org).map(|o| o.row.delegation).unwrap_or_default();
                let (task_id, why) = match agent_message(
                    &cadre, &store, &org, &agent, limits, &call_id, &task_id, &to, &message, &rule,
                )
                .await
                {
                    Ok(id) => (Some(id), None),
                    Err(why) => (None, Some(why)),
                };
                ServerMessage::AgentMessageSent {
                    call_id,
                    task_id,
                    error: why,
                }
            }
            Ok(RuntimeMessage::Knowledge {
                call_id,
                task_id,
                tool,
                arguments,
            }) => {
                let (output, why) = match knowledge_tool(
                    &cadre,
                    &knowledge,
                    &store,
                    &org,
                    &agent,
                    working_ttl_hours,
                    (&call_id, &task_id),
                    &tool,
                    arguments,
                )
                .await
                {
                    Ok(o) => (Some(o), None),
                    Err(e) => (None, Some(e)),
                };
                ServerMessage::KnowledgeResult {
                    call_id,
                    output,
                    error: why,
                }
            }
            Ok(RuntimeMessage::TaskDelta { task_id, seq, text }) => {
                if text.len() > 64 * 1024 {
                    error("bad_message", "a delta carries at most 64 KiB")
                } else {
                    // Not acknowledged: only an error goes back.
                    match task_report(
                        &cadre,
                        &org,
                        &agent,
                        conn,
                        TaskReport::Delta { task_id, seq, text },
                    )
                    .await
                    {
                        ServerMessage::TaskAck { .. } => continue,
                        other => other,
                    }
                }
            }
            Ok(RuntimeMessage::TaskStep {
                task_id,
                seq,
                kind,
                body,
                tokens,
                latency_ms,
            }) => {
                if seq == 0 || !matches!(kind.as_str(), "model" | "tool") {
                    error("bad_message", "seq starts at 1; kind is model or tool")
                } else {
                    let step = TaskStep {
                        task_id,
                        seq,
                        kind,
                        body,
                        tokens,
                        latency_ms,
                        // Set by the agent actor's clock.
                        at: 0,
                    };
                    task_report(&cadre, &org, &agent, conn, TaskReport::Step(Box::new(step))).await
                }
            }
            Ok(RuntimeMessage::Reserve {
                reservation_id,
                model,
                input_tokens,
                max_output_tokens,
            }) => {
                if reservation_id.is_empty() || reservation_id.len() > 200 || model.len() > 200 {
                    error(
                        "bad_message",
                        "reservation_id must be 1-200 characters, model at most 200",
                    )
                } else {
                    let req = ReserveRequest {
                        reservation_id: reservation_id.clone(),
                        model,
                        input_tokens,
                        max_output_tokens,
                    };
                    match cadre.reserve(&org, &agent, conn, req).await {
                        Ok(ack) => ServerMessage::Reservation {
                            reservation_id,
                            granted: ack.granted,
                            tokens: ack.tokens,
                            cost_usd: ack.cost_micros as f64 / 1_000_000.0,
                            reason: ack.reason,
                        },
                        Err(cadre_actors::Error::Unauthorized) => {
                            error("unauthorized", "connection superseded")
                        }
                        Err(e) => error("unavailable", e.to_string()),
                    }
                }
            }
            Ok(RuntimeMessage::Usage {
                report_id,
                model,
                input_tokens,
                output_tokens,
                reservation_id,
            }) => {
                if report_id.is_empty() || report_id.len() > 200 || model.len() > 200 {
                    error(
                        "bad_message",
                        "report_id must be 1-200 characters, model at most 200",
                    )
                } else {
                    let report = UsageReport {
                        report_id: report_id.clone(),
                        model,
                        input_tokens,
                        output_tokens,
                        reservation_id,
                    };
                    match cadre.runtime_usage(&org, &agent, conn, report).await {
                        Ok(ack) => {
                            let msg = ServerMessage::UsageAck {
                                report_id,
                                counted: ack.counted,
                            };
                            if !send(&mut socket, &msg).await {
                                return;
                            }
                            if ack.should_run {
                                continue;
                            }
                            stop(ack.stop_reason.as_deref().unwrap_or("stopped"))
                        }
                        Err(cadre_actors::Error::Unauthorized) => {
                            error("unauthorized", "connection superseded")
                        }
                        Err(e) => error("unavailable", e.to_string()),
                    }
                }
            }
        };
        let end = matches!(&reply, ServerMessage::Stop { .. })
            || matches!(&reply, ServerMessage::Error { code, .. } if code == "unauthorized");
        if !send(&mut socket, &reply).await || end {
            return;
        }
    }
}

/// Task orders buffered per connection (more than an agent may have open
/// by default; the rest would be delivered on the next connection).
const TASK_ORDERS: usize = 1024;

/// The `agent.message` tool: a task for another agent of the organization,
/// created once per call (its id derives from the call, so the runtime
/// asking again after a reconnect finds the same task).
#[allow(clippy::too_many_arguments)]
async fn agent_message(
    cadre: &Cadre,
    store: &crate::store::Db,
    org: &OrgId,
    from: &AgentId,
    limits: cadre_actors::task::TaskLimits,
    call_id: &str,
    from_task: &str,
    to: &str,
    message: &str,
    rule: &str,
) -> Result<String, String> {
    let id = crate::derived_uuid(&format!("message\n{org}\n{from}\n{call_id}"));
    if let Ok(Some(t)) = store.tables().task(org.as_str(), &id).await {
        return Ok(t.id);
    }
    let message = message.trim();
    if message.is_empty() || message.chars().count() > 20_000 {
        return Err("the message must have 1 to 20000 characters".into());
    }
    let target = store
        .tables()
        .agent_id_by_name(org.as_str(), to)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no agent named {to:?} in this organization"))?;
    if target == from.as_str() {
        return Err("an agent cannot message itself".into());
    }
    // The organization's delegation rule: `chart` (the default) lets an
    // agent give work down the chart and to peers with the same manager.
    if rule != "any" {
        let all = cadre.all_agents(org).await.map_err(|e| e.to_string())?;
        if !cadre_actors::chart::may_delegate(&all, from, &AgentId(target.clone())) {
            return Err(format!(
                "{to:?} is neither below you in the org chart nor a peer with your manager; \
                 the organization's delegation rule (chart) allows only those"
            ));
        }
    }
    let mut task = cadre_actors::task::TaskRecord::queued(
        org.as_str(),
        &target,
        message.to_string(),
        serde_json::json!({ "from_agent": from.as_str(), "from_task": from_task }),
        limits,
        format!("runtime:{from}"),
    );
    task.id = id;
    let by = cadre_actors::domain::Who::of(cadre_actors::domain::Party::Runtime(from.to_string()));
    cadre
        .submit_task(org, &AgentId(target), task, &by)
        .await
        .map(|t| t.id)
        .map_err(|e| e.to_string())
}

/// The agent's knowledge settings (from its actor's published view).
async fn knowledge_of(
    cadre: &Cadre,
    org: &OrgId,
    agent: &AgentId,
) -> Result<cadre_actors::domain::KnowledgeSpec, String> {
    let snap = cadre
        .get_agent(org, agent)
        .await
        .map_err(|e| e.to_string())?;
    Ok(snap.view().knowledge)
}

/// The memories recalled into a task's context: the agent's
/// `recall_memories` most relevant to the instruction (none on error: a
/// task is not held up by its context).
async fn recall_for_task(
    cadre: &Cadre,
    knowledge: &crate::knowledge::Knowledge,
    org: &OrgId,
    agent: &AgentId,
    instruction: &str,
) -> Vec<String> {
    let Ok(k) = knowledge_of(cadre, org, agent).await else {
        return Vec::new();
    };
    if k.recall_memories == 0 {
        return Vec::new();
    }
    use cadre_actors::ports::Clock;
    let q = crate::knowledge::index::MemoryQuery {
        org: org.to_string(),
        agent: agent.to_string(),
        text: instruction.chars().take(2000).collect(),
        kinds: Vec::new(),
        now: cadre_actors::ports::SystemClock.now_ms(),
        limit: k.recall_memories as usize,
    };
    let mode = crate::knowledge::Mode::pick(None, knowledge.has_vectors())
        .unwrap_or(crate::knowledge::Mode::Lexical);
    match knowledge.recall(q, mode).await {
        Ok(hits) => hits
            .into_iter()
            .map(|h| format!("[{}] {}", h.kind, h.content))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "recalling memories for a task");
            Vec::new()
        }
    }
}

/// Runs `knowledge.search`, `memory.store` or `memory.recall` for an
/// agent: its output for the model. A search sees only the knowledge bases
/// the agent's definition lists; memories are the agent's own.
#[allow(clippy::too_many_arguments)]
async fn knowledge_tool(
    cadre: &Cadre,
    knowledge: &crate::knowledge::Knowledge,
    store: &crate::store::Db,
    org: &OrgId,
    agent: &AgentId,
    working_ttl_hours: u64,
    (call_id, task_id): (&str, &str),
    tool: &str,
    args: serde_json::Value,
) -> Result<String, String> {
    use cadre_actors::ports::Clock;
    let now = cadre_actors::ports::SystemClock.now_ms();
    let words = |args: &serde_json::Value| -> Result<String, String> {
        args.get("query")
            .and_then(|q| q.as_str())
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(|q| q.chars().take(2000).collect())
            .ok_or_else(|| "arguments.query (a non-empty string) is required".to_string())
    };
    let limit = |args: &serde_json::Value, default: u64| {
        args.get("limit")
            .and_then(|l| l.as_u64())
            .unwrap_or(default)
            .clamp(1, 20) as usize
    };
    let mode = crate::knowledge::Mode::pick(None, knowledge.has_vectors())?;
    match tool {
        "knowledge.search" => {
            let k = knowledge_of(cadre, org, agent).await?;
            if k.bases.is_empty() {
                return Err(
                    "this agent may read no knowledge base (its knowledge.bases is empty)".into(),
                );
            }
            let hits = knowledge
                .search(
                    crate::knowledge::index::ChunkQuery {
                        org: org.to_string(),
                        text: words(&args)?,
                        kbs: k.bases,
                        doc: None,
                        meta: Vec::new(),
                        limit: limit(&args, 5),
                    },
                    mode,
                )
                .await
                .map_err(|e| e.to_string())?;
            if hits.is_empty() {
                return Ok("no passage matches".into());
            }
            let out: Vec<String> = hits
                .iter()
                .map(|h| format!("[{} — {} #{}]\n{}", h.title, h.source, h.position, h.text))
                .collect();
            Ok(out.join("\n\n"))
        }
        "memory.store" => {
            // One memory per call, however often it is asked.
            let id = crate::derived_uuid(&format!("memory\n{org}\n{agent}\n{call_id}"));
            if let Ok(Some(m)) = store
                .tables()
                .memory(org.as_str(), agent.as_str(), &id)
                .await
            {
                return Ok(format!("remembered ({}, {})", m.kind, m.id));
            }
            let input: crate::http::knowledge::MemoryIn =
                serde_json::from_value(args).map_err(|e| format!("arguments: {e}"))?;
            let mut m = input
                .into_memory(org.as_str(), agent.as_str(), working_ttl_hours, now)
                .map_err(|e| e.message().to_string())?;
            m.id = id;
            // The task it came from, when the runtime names a real one.
            if m.source_task.is_none()
                && let Ok(Some(t)) = store.tables().task(org.as_str(), task_id).await
            {
                m.source_task = Some(t.id);
            }
            knowledge
                .store_memory(m.clone(), None)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!("remembered ({}, {})", m.kind, m.id))
        }
        "memory.recall" => {
            let kinds = match args.get("kind").and_then(|k| k.as_str()) {
                Some(k) if crate::knowledge::KINDS.contains(&k) => vec![k.to_string()],
                Some(k) => return Err(format!("no memory kind {k:?}")),
                None => Vec::new(),
            };
            let hits = knowledge
                .recall(
                    crate::knowledge::index::MemoryQuery {
                        org: org.to_string(),
                        agent: agent.to_string(),
                        text: words(&args)?,
                        kinds,
                        now,
                        limit: limit(&args, 5),
                    },
                    mode,
                )
                .await
                .map_err(|e| e.to_string())?;
            if hits.is_empty() {
                return Ok("nothing remembered about that".into());
            }
            Ok(hits
                .iter()
                .map(|h| format!("- [{}] {}", h.kind, h.content))
                .collect::<Vec<_>>()
                .join("\n"))
        }
        other => Err(format!("{other} is not a knowledge tool")),
    }
}

/// Records a runtime's task report; the answer for the runtime.
async fn task_report(
    cadre: &cadre_actors::client::Cadre,
    org: &cadre_actors::domain::OrgId,
    agent: &cadre_actors::domain::AgentId,
    conn: u64,
    report: TaskReport,
) -> ServerMessage {
    let seq = match &report {
        TaskReport::Step(s) => Some(s.seq),
        TaskReport::State { .. } | TaskReport::Delta { .. } => None,
    };
    match cadre.task_report(org, agent, conn, report).await {
        Ok(t) => ServerMessage::TaskAck {
            task_id: t.id,
            state: t.state.as_str().to_string(),
            seq,
        },
        Err(cadre_actors::Error::Unauthorized) => error("unauthorized", "connection superseded"),
        Err(cadre_actors::Error::Conflict(code, message)) => error(code, message),
        Err(e) => error("unavailable", e.to_string()),
    }
}

/// Tool calls one connection may have waiting for approval at once.
const MAX_PARKED: usize = 1024;

/// How a tool request is answered.
enum Step {
    /// At once.
    Now(ServerMessage),
    /// `pending` now, the decision when `wait` completes.
    Later {
        pending: ServerMessage,
        wait: std::pin::Pin<Box<dyn std::future::Future<Output = ServerMessage> + Send>>,
    },
}

fn decision(call_id: &str, o: &cadre_actors::approval::Outcome) -> ServerMessage {
    ServerMessage::ToolDecision {
        call_id: call_id.to_string(),
        decision: if o.approved { "allow" } else { "deny" }.into(),
        reason: (!o.approved).then(|| format!("approval_{}", o.state.as_str())),
        message: (!o.approved).then(|| {
            format!(
                "approval {} was {}{}",
                o.approval_id,
                o.state.as_str(),
                o.comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            )
        }),
        approval_id: Some(o.approval_id.clone()),
        decided_by: o.decided_by.clone(),
        comment: o.comment.clone(),
    }
}

/// The SHA-256 (hex) of the arguments' canonical JSON (object keys sorted).
pub fn args_hash(arguments: &serde_json::Value) -> String {
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, arguments.to_string().as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[allow(clippy::too_many_arguments)]
async fn tool_request(
    cadre: &Cadre,
    activity: &crate::activity::Activity,
    org: &OrgId,
    agent: &AgentId,
    conn: u64,
    call_id: String,
    tool: String,
    arguments: serde_json::Value,
    estimated_cost_usd: Option<f64>,
) -> Result<Step, ServerMessage> {
    if call_id.is_empty() || call_id.len() > 200 || tool.is_empty() || tool.len() > 200 {
        return Err(error(
            "bad_message",
            "call_id and tool must be 1-200 characters",
        ));
    }
    let estimated_cost_micros = match estimated_cost_usd {
        None => 0,
        Some(c) if c.is_finite() && (0.0..=1e9).contains(&c) => (c * 1_000_000.0).ceil() as u64,
        Some(_) => {
            return Err(error(
                "bad_message",
                "estimated_cost_usd: a number from 0 to 1e9",
            ));
        }
    };
    let args_hash = args_hash(&arguments);
    let mut redacted = arguments;
    crate::activity::records::redact(&mut redacted, activity.redact_keys());
    let call = ToolRequest {
        call_id: call_id.clone(),
        tool,
        arguments: redacted,
        args_hash,
        estimated_cost_micros,
    };
    let answer = match cadre.tool_call(org, agent, conn, call).await {
        Ok(a) => a,
        Err(cadre_actors::Error::Unauthorized) => {
            return Err(error("unauthorized", "connection superseded"));
        }
        Err(e) => return Err(error("unavailable", e.to_string())),
    };
    Ok(match answer {
        ToolAnswer::Allow { simulate, grant } => Step::Now(ServerMessage::ToolDecision {
            call_id,
            decision: if simulate { "simulate" } else { "allow" }.into(),
            reason: None,
            message: simulate.then(|| "sandbox: record the call, do not execute it".into()),
            approval_id: None,
            decided_by: grant.map(|g| format!("grant:{g}")),
            comment: None,
        }),
        ToolAnswer::Deny { reason, message } => Step::Now(ServerMessage::ToolDecision {
            call_id,
            decision: "deny".into(),
            reason: Some(reason.to_string()),
            message: Some(message),
            approval_id: None,
            decided_by: None,
            comment: None,
        }),
        ToolAnswer::Decided(o) => Step::Now(decision(&call_id, &o)),
        ToolAnswer::Waiting { approval_id, rx } => Step::Later {
            pending: ServerMessage::ToolPending {
                call_id: call_id.clone(),
                approval_id: approval_id.clone(),
            },
            wait: Box::pin(async move {
                match rx.await {
                    Ok(o) => decision(&call_id, &o),
                    // The approval actor restarted: the runtime asks again
                    // with the same call id and gets the same request.
                    Err(_) => error(
                        "retry_tool_request",
                        format!(
                            "approval {approval_id} is being reloaded; ask again about call {call_id}"
                        ),
                    ),
                }
            }),
        },
    })
}

/// Validates and queues an `activity` batch; answers once it is committed.
/// `None`: the socket is gone.
async fn ingest(
    socket: &mut WebSocket,
    activity: &crate::activity::Activity,
    org: &OrgId,
    agent: &AgentId,
    batch: u64,
    events: Vec<crate::protocol::RuntimeEvent>,
) -> Option<ServerMessage> {
    use super::activity::{InEvent, MAX_BATCH, to_row};
    if events.is_empty() || events.len() > MAX_BATCH {
        return Some(error(
            "bad_message",
            format!("an activity batch holds 1 to {MAX_BATCH} events"),
        ));
    }
    let now = crate::activity::now_ms();
    let mut rows = Vec::with_capacity(events.len());
    for (i, ev) in events.into_iter().enumerate() {
        let payload = ev
            .payload
            .map(|p| serde_json::value::to_raw_value(&p))
            .transpose()
            .ok()
            .flatten();
        let input = InEvent {
            agent_id: None,
            kind: ev.kind,
            payload,
            at: ev.at,
        };
        match to_row(
            i,
            input,
            org,
            Some(agent),
            |_| true,
            now,
            activity.redact_keys(),
        ) {
            Ok(row) => rows.push(row),
            Err(e) => return Some(error("bad_message", e.message().to_string())),
        }
    }
    let spool = activity.spool();
    let room = match spool.try_reserve(rows.len()) {
        Ok(Some(room)) => room,
        Ok(None) => {
            // Back-pressure: say so, then wait for room.
            if !send(socket, &ServerMessage::SlowDown { batch }).await {
                return None;
            }
            match spool.reserve(rows.len()).await {
                Ok(room) => room,
                Err(e) => return Some(error("unavailable", e.to_string())),
            }
        }
        Err(e) => return Some(error("bad_message", e.to_string())),
    };
    let accepted = rows.len();
    match spool.push(room, rows).await {
        Ok(first_id) => Some(ServerMessage::ActivityAck {
            batch,
            accepted,
            first_id,
        }),
        Err(_) => Some(error(
            "unavailable",
            "the activity pipeline stopped; resend",
        )),
    }
}

/// `/runtime` routes.
pub fn routes(r: super::guard::Routes) -> super::guard::Routes {
    r.add(
        axum::http::Method::GET,
        "/runtime/connect",
        crate::identity::Action::Runtime,
        get(connect),
    )
}
