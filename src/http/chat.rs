//! Conversations with people: `POST /agents/{id}/conversations` opens one,
//! `POST /conversations/{id}/messages` sends a message and answers with
//! the agent's reply (streamed as Server-Sent Events with `Accept:
//! text/event-stream`).
//!
//! A reply is a task of the agent's (its input names the conversation and
//! carries the earlier messages), so it runs through the same runtime loop
//! as any task: the model call reserves budget, every tool call is judged
//! and may wait for an approval, the steps are recorded, and the
//! conversation's messages land in the activity tables from those steps
//! (`activity::records_of`). The handler sends one message to the agent's
//! actor (the task) and streams what the actors broadcast about it.

use super::error::{ApiError, ApiJson};
use super::guard::Routes;
use super::state::AppState;
use crate::identity::{Action, Principal};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use cadre_actors::domain::{AgentId, OrgId};
use cadre_actors::events::Event;
use cadre_actors::lifecycle::State as AgentState;
use cadre_actors::task::TaskRecord;
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;

/// A message, in bytes.
const MAX_MESSAGE: usize = 32 * 1024;
/// The earlier messages a reply is given, estimated at four bytes a token:
/// the newest that fit (docs/employees.md).
pub const HISTORY_TOKENS: usize = 8_000;
/// Earlier turns read to choose from.
const HISTORY_READ: u32 = 250;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Open {
    title: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Say {
    content: String,
}

/// The agent must run, and its manager must not hold it.
async fn ready(state: &AppState, org: &OrgId, agent: &AgentId) -> Result<(), ApiError> {
    let snap = state.cadre.get_agent(org, agent).await?;
    if !matches!(snap.state, AgentState::Running | AgentState::Degraded) {
        let v = snap.view();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "agent_not_running",
            format!(
                "{} is {}: only a running agent can talk (deploy or start it first)",
                v.name,
                snap.state.as_str()
            ),
        ));
    }
    state.cadre.manager_available(org, agent).await?;
    Ok(())
}

/// `POST /agents/{id}/conversations` (`{}` or `{"title"}`).
async fn open(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let agent = super::agents::agent_id(&id)?;
    let body: Open = if body.iter().all(u8::is_ascii_whitespace) {
        Open::default()
    } else {
        // As the JSON extractor answers: malformed 400, wrong shape 422.
        serde_json::from_slice(&body).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                e.to_string(),
            ),
            _ => ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()),
        })?
    };
    let title = body
        .title
        .map(|t| super::agents::text("title", &t, 200))
        .transpose()?;
    let conversation = uuid::Uuid::now_v7().to_string();
    state
        .cadre
        .open_conversation(&p.org, &agent, &conversation, title.clone(), p.who())
        .await?;
    let who = p.who().to_text();
    // Opened: a system line that starts the conversation's record (the
    // conversation exists, titled, before its first message), answered once
    // committed.
    let mut payload = json!({
        "conversation_id": conversation,
        "role": "system",
        "content": format!("Conversation opened by {who}"),
        "opened_by": who,
    });
    if let Some(t) = &title {
        payload["title"] = json!(t);
    }
    let text = payload.to_string();
    let (record, _) = crate::activity::records::parse(
        crate::activity::records::MESSAGE,
        &text,
        state.activity.redact_keys(),
    )
    .map_err(|e| ApiError::invalid(e.field, e.message))?
    .ok_or_else(|| ApiError::internal("a message makes a record"))?;
    let now = crate::activity::now_ms();
    state
        .activity
        .submit(vec![crate::store::NewActivity {
            org_id: p.org.to_string(),
            agent_id: Some(agent.to_string()),
            kind: crate::activity::records::MESSAGE.into(),
            payload: text,
            at: now,
            record: Some(record),
        }])
        .await
        .map_err(super::activity::spool_error)?;
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({
            "id": conversation,
            "agent_id": agent.as_str(),
            "title": title,
            "started_at": cadre_actors::domain::rfc3339(now),
        })),
    )
        .into_response();
    if let Ok(loc) = format!("/api/v1/agents/{agent}/conversations/{conversation}").parse() {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

/// The earlier messages a reply is given: the conversation's earlier
/// turns (each reply's task: the person's message, the agent's answer),
/// the newest that fit in [`HISTORY_TOKENS`], oldest first, and how many
/// were dropped. Read from the tasks, which are committed before their
/// reply is answered (the activity tables catch up a moment later).
async fn history(
    state: &AppState,
    org: &OrgId,
    agent: &AgentId,
    conversation: &str,
) -> Result<(Vec<Value>, usize), ApiError> {
    let tasks = state
        .store
        .tables()
        .conversation_tasks(org.as_str(), agent.as_str(), conversation, HISTORY_READ)
        .await
        .map_err(ApiError::internal)?;
    // Newest first: (assistant, user) per turn.
    let mut all = Vec::new();
    for t in &tasks {
        if let Some(answer) = t.result.as_deref().filter(|r| !r.is_empty()) {
            all.push(("assistant", answer));
        }
        all.push(("user", t.instruction.as_str()));
    }
    let mut kept = Vec::new();
    let mut budget = HISTORY_TOKENS * 4;
    for (role, content) in &all {
        if content.len() > budget {
            break;
        }
        budget -= content.len();
        kept.push(json!({ "role": role, "content": content }));
    }
    let dropped = all.len() - kept.len();
    kept.reverse();
    Ok((kept, dropped))
}

/// What the stream of a reply says, from the actors' events about its task
/// (`None`: not about it).
fn said(ev: &Event, task: &str) -> Option<(&'static str, Value)> {
    let Event::Task { kind, detail, .. } = ev else {
        return None;
    };
    if detail["task_id"] != task {
        return None;
    }
    Some(match kind.as_str() {
        "task.delta" => ("delta", json!({ "text": detail["text"] })),
        "task.step" if detail["kind"] == "tool" => (
            "tool",
            json!({
                "tool": detail["tool"],
                "decision": detail["decision"],
                "approval_id": detail["approval_id"],
                "result": detail["result"],
                "waited_ms": detail["waited_ms"],
            }),
        ),
        "task.waiting_approval" => (
            "waiting_approval",
            json!({ "message": "a tool call waits for a person's approval (see the approvals inbox)" }),
        ),
        "task.running" => ("running", json!({})),
        "task.succeeded" => ("done", json!({})),
        "task.failed" | "task.cancelled" => ("error", json!({ "error": detail["error"] })),
        _ => return None,
    })
}

/// The reply as answered: the task's full result (the event carries its
/// start only).
async fn reply_of(state: &AppState, org: &OrgId, conversation: &str, task: &str) -> Value {
    let t = state
        .store
        .tables()
        .task(org.as_str(), task)
        .await
        .ok()
        .flatten();
    json!({
        "conversation_id": conversation,
        "task_id": task,
        "role": "assistant",
        "state": t.as_ref().map(|t| t.state.as_str()),
        "content": t.as_ref().and_then(|t| t.result.clone()),
        "error": t.as_ref().and_then(|t| t.error.clone()),
    })
}

/// `POST /conversations/{id}/messages` `{"content"}`.
async fn say(
    State(state): State<AppState>,
    p: Principal,
    headers: HeaderMap,
    Path(conversation): Path<String>,
    ApiJson(body): ApiJson<Say>,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found("conversation");
    if conversation.len() > 64
        || !conversation
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '-')
    {
        return Err(missing());
    }
    let content = body.content.trim();
    if content.is_empty() || content.len() > MAX_MESSAGE {
        return Err(ApiError::invalid(
            "content",
            format!("1 to {MAX_MESSAGE} bytes of text"),
        ));
    }
    let agent = state
        .store
        .tables()
        .conversation_agent(p.org.as_str(), &conversation)
        .await
        .map_err(ApiError::internal)?
        .map(AgentId)
        .ok_or_else(missing)?;
    ready(&state, &p.org, &agent).await?;
    let (earlier, dropped) = history(&state, &p.org, &agent, &conversation).await?;
    let task = TaskRecord::queued(
        p.org.as_str(),
        agent.as_str(),
        content.to_string(),
        json!({ "conversation_id": conversation, "history": earlier, "dropped": dropped }),
        state.config.tasks.default_limits,
        p.who().to_text(),
    );
    // Listening before the task exists: nothing it says is missed.
    let mut events = state.cadre.ctx().events.subscribe();
    let t = state
        .cadre
        .submit_task(&p.org, &agent, task, &p.who())
        .await?;
    let streamed = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let task_id = t.id.clone();
    if !streamed {
        // The whole reply (a long wait for an approval meets the request
        // timeout: stream instead).
        loop {
            match events.recv().await {
                Ok(ev) => {
                    if let Some(("done" | "error", _)) = said(&ev, &task_id) {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Missed events: the task's state says where it is.
                    if let Ok(Some(t)) = state.store.tables().task(p.org.as_str(), &task_id).await
                        && t.state.is_final()
                    {
                        break;
                    }
                }
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the server is shutting down",
                    ));
                }
            }
        }
        let reply = reply_of(&state, &p.org, &conversation, &task_id).await;
        return Ok(Json(reply).into_response());
    }
    let start = SseEvent::default().event("accepted").data(
        json!({ "conversation_id": conversation, "task_id": task_id, "dropped": dropped })
            .to_string(),
    );
    let st = state.clone();
    let org = p.org.clone();
    let stream = futures_util::stream::unfold(
        (Some(start), events, false),
        move |(first, mut events, ended)| {
            let (st, org, conversation, task_id) = (
                st.clone(),
                org.clone(),
                conversation.clone(),
                task_id.clone(),
            );
            async move {
                if let Some(first) = first {
                    return Some((Ok::<_, Infallible>(first), (None, events, false)));
                }
                if ended {
                    return None;
                }
                loop {
                    let ev = match events.recv().await {
                        Ok(ev) => ev,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            // Missed events: the task's state says whether
                            // the end was among them.
                            let t = st.store.tables().task(org.as_str(), &task_id).await;
                            let Ok(Some(t)) = t else { continue };
                            if !t.state.is_final() {
                                continue;
                            }
                            let name = if t.state == cadre_actors::task::TaskState::Succeeded {
                                "done"
                            } else {
                                "error"
                            };
                            let reply = reply_of(&st, &org, &conversation, &task_id).await;
                            let out = SseEvent::default().event(name).data(reply.to_string());
                            return Some((Ok(out), (None, events, true)));
                        }
                        Err(_) => return None,
                    };
                    let Some((name, data)) = said(&ev, &task_id) else {
                        continue;
                    };
                    if name == "done" || name == "error" {
                        let reply = reply_of(&st, &org, &conversation, &task_id).await;
                        let out = SseEvent::default().event(name).data(reply.to_string());
                        return Some((Ok(out), (None, events, true)));
                    }
                    let out = SseEvent::default().event(name).data(data.to_string());
                    return Some((Ok(out), (None, events, false)));
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The conversation routes.
pub fn routes(r: Routes) -> Routes {
    r.add(
        Method::POST,
        "/agents/{id}/conversations",
        Action::Chat,
        post(open),
    )
    .add(
        Method::POST,
        "/conversations/{id}/messages",
        Action::Chat,
        post(say),
    )
}
