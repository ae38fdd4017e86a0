//! The runtime's task loop: for each task the control plane hands over, a
//! tool-calling conversation with the model provider. Every model call is
//! preceded by a budget reservation and followed by a usage report; every
//! tool call is asked of the control plane (permission engine, approvals)
//! and executed only on `allow`. Each model call and tool call is a step,
//! reported as it completes.
//!
//! The loop talks to the connection through a [`Bus`]: questions carry a
//! stable id (`task-<task>-<seq>[-<k>]`) and are asked again on every new
//! connection until answered, so a reconnect (or a control-plane restart)
//! finds the same approval request and its decision.

use crate::llm::{Call, Provider, ToolResult, ToolSpec, Turn};
use crate::protocol::{RuntimeMessage, ServerMessage};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// What the loop hands the connection: a question (or report) to send,
/// and re-send after every reconnect, until answered.
#[derive(Debug)]
pub struct Out {
    /// Its id (`call_id`, `reservation_id`, or a report's [`report_id`]).
    pub id: String,
    /// The task it belongs to.
    pub task: String,
    /// The frame.
    pub msg: RuntimeMessage,
    /// Where the answer goes; `None` for a notice sent once and not
    /// tracked (streamed text: live only, the step carries all of it).
    pub tx: Option<oneshot::Sender<ServerMessage>>,
}

/// The loop's side of the connection.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: mpsc::UnboundedSender<Out>,
}

impl Bus {
    /// A bus and the connection's end of it.
    pub fn new() -> (Bus, mpsc::UnboundedReceiver<Out>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Bus { tx }, rx)
    }

    async fn ask(&self, id: String, task: &str, msg: RuntimeMessage) -> Option<ServerMessage> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Out {
                id,
                task: task.to_string(),
                msg,
                tx: Some(tx),
            })
            .ok()?;
        rx.await.ok()
    }

    /// A report sent (and re-sent on every new connection) until the
    /// control plane acknowledges it: `id` is what its acknowledgement names
    /// ([`report_id`]). The loop does not wait for it.
    fn report(&self, id: String, task: &str, msg: RuntimeMessage) {
        let (tx, _) = oneshot::channel();
        let _ = self.tx.send(Out {
            id,
            task: task.to_string(),
            msg,
            tx: Some(tx),
        });
    }

    /// Streamed text of model step `seq`, sent once if connected.
    fn delta(&self, task: &str, seq: u32, text: String) {
        let _ = self.tx.send(Out {
            id: String::new(),
            task: task.to_string(),
            msg: RuntimeMessage::TaskDelta {
                task_id: task.to_string(),
                seq,
                text,
            },
            tx: None,
        });
    }

    fn state(&self, task: &str, state: &str, result: Option<String>, error: Option<String>) {
        self.report(
            format!("state-{task}-{state}"),
            task,
            RuntimeMessage::TaskState {
                task_id: task.to_string(),
                state: state.to_string(),
                result,
                error,
            },
        );
    }

    fn usage(&self, task: &str, rid: &str, model: &str, input: u64, output: u64) {
        self.report(
            format!("usage-{rid}"),
            task,
            RuntimeMessage::Usage {
                report_id: rid.to_string(),
                model: model.to_string(),
                input_tokens: input,
                output_tokens: output,
                reservation_id: Some(rid.to_string()),
            },
        );
    }

    fn step(&self, task: &str, seq: u32, kind: &str, body: Value, tokens: u64, latency_ms: u64) {
        self.report(
            format!("step-{task}-{seq}"),
            task,
            RuntimeMessage::TaskStep {
                task_id: task.to_string(),
                seq,
                kind: kind.to_string(),
                body,
                tokens,
                latency_ms,
            },
        );
    }
}

/// An open question of the loop, kept by the connection across reconnects.
#[derive(Debug)]
pub struct Asked {
    /// When it was asked (questions are re-sent in this order, so a task's
    /// steps reach the control plane before its final state).
    pub order: u64,
    /// The task.
    pub task: String,
    /// The frame to (re-)send.
    pub msg: RuntimeMessage,
    /// Where the answer goes.
    pub tx: oneshot::Sender<ServerMessage>,
    /// A tool call parked for approval.
    pub waiting: bool,
}

/// A task as the control plane handed it over.
#[derive(Debug, Clone)]
pub struct TaskOrder {
    /// Its id.
    pub id: String,
    /// What to do.
    pub instruction: String,
    /// Data.
    pub input: Value,
    /// Limits.
    pub limits: cadre_actors::task::TaskLimits,
    /// For a replay: the recorded steps to continue from.
    pub replay: Vec<Value>,
    /// Memories recalled for it (put in its context).
    pub memories: Vec<String>,
    /// The system prompt the control plane composed (`None`: [`SYSTEM`]).
    pub system: Option<String>,
    /// The tools to offer, by id (`None`: every tool this runtime has).
    pub tools: Option<Vec<String>>,
}

/// What tools need besides the file system.
#[derive(Debug, Clone)]
pub struct Kit {
    /// The HTTP tools' client (no redirects).
    pub http: reqwest::Client,
    /// MCP servers' tools.
    pub mcp: crate::mcp::Servers,
}

/// The loop's queue: tasks run one at a time, in the order received.
#[derive(Debug)]
pub struct Worker {
    tx: mpsc::UnboundedSender<TaskOrder>,
    seen: HashSet<String>,
    cancelled: Arc<Mutex<HashSet<String>>>,
}

impl Worker {
    /// Starts the loop; `provider` is why there is none when no model can
    /// be called (tasks then fail with `no_model_provider: <why>`).
    pub fn start(provider: Result<Provider, String>, kit: Kit, bus: Bus) -> Worker {
        let (tx, mut rx) = mpsc::unbounded_channel::<TaskOrder>();
        let cancelled = Arc::new(Mutex::new(HashSet::new()));
        let c = cancelled.clone();
        tokio::spawn(async move {
            while let Some(task) = rx.recv().await {
                let is_cancelled = || c.lock().map(|s| s.contains(&task.id)).unwrap_or(false);
                if is_cancelled() {
                    continue;
                }
                let (state, result, error) = match &provider {
                    Err(why) => ("failed", None, Some(format!("no_model_provider: {why}"))),
                    Ok(p) => run(p, &kit, &bus, &task, &is_cancelled).await,
                };
                if !is_cancelled() {
                    eprintln!("cadre runtime: task {} {state}", task.id);
                    bus.state(&task.id, state, result, error);
                }
            }
        });
        Worker {
            tx,
            seen: HashSet::new(),
            cancelled,
        }
    }

    /// Queues a task unless this process has it already.
    pub fn submit(&mut self, task: TaskOrder) {
        if self.seen.insert(task.id.clone()) {
            let _ = self.tx.send(task);
        }
    }

    /// Stops a task at its next step.
    pub fn cancel(&self, id: &str) {
        if let Ok(mut s) = self.cancelled.lock() {
            s.insert(id.to_string());
        }
    }
}

/// The built-in tools offered to the model (each is in the tool catalog,
/// and each call is judged by the control plane first).
pub fn builtin_tools() -> Vec<ToolSpec> {
    let path = json!({ "type": "object", "properties": { "path": { "type": "string", "description": "relative path inside the workspace" } }, "required": ["path"] });
    let url =
        json!({ "type": "string", "description": "http:// or https:// URL on an allowed host" });
    vec![
        ToolSpec {
            tool: "files.list".into(),
            description: "List the files of the agent's workspace (or of one folder).".into(),
            parameters: json!({ "type": "object", "properties": { "path": { "type": "string" } } }),
        },
        ToolSpec {
            tool: "http.get".into(),
            description: "GET a URL on an allowed host; answers the status and body.".into(),
            parameters: json!({ "type": "object", "properties": { "url": url }, "required": ["url"] }),
        },
        ToolSpec {
            tool: "http.request".into(),
            description: "Any HTTP method to an allowed host, with headers and a body.".into(),
            parameters: json!({ "type": "object", "properties": { "url": url, "method": { "type": "string" }, "headers": { "type": "object" }, "body": {} }, "required": ["url", "method"] }),
        },
        ToolSpec {
            tool: "shell.exec".into(),
            description:
                "Run a shell command inside the workspace; answers the exit status and output."
                    .into(),
            parameters: json!({ "type": "object", "properties": { "command": { "type": "string" }, "timeout_seconds": { "type": "integer" } }, "required": ["command"] }),
        },
        ToolSpec {
            tool: "agent.message".into(),
            description: "Give another agent of the organization a task (by its name).".into(),
            parameters: json!({ "type": "object", "properties": { "agent": { "type": "string" }, "message": { "type": "string" } }, "required": ["agent", "message"] }),
        },
        ToolSpec {
            tool: "files.read".into(),
            description: "Read a text file of the agent's workspace.".into(),
            parameters: path.clone(),
        },
        ToolSpec {
            tool: "files.write".into(),
            description: "Write a text file in the agent's workspace.".into(),
            parameters: json!({ "type": "object", "properties": { "path": { "type": "string" }, "content": { "type": "string" } }, "required": ["path", "content"] }),
        },
        ToolSpec {
            tool: "files.delete".into(),
            description: "Delete a file of the agent's workspace.".into(),
            parameters: path,
        },
        ToolSpec {
            tool: "knowledge.search".into(),
            description: "Search the knowledge bases this agent may read; answers the best passages with their sources.".into(),
            parameters: json!({ "type": "object", "properties": { "query": { "type": "string" }, "limit": { "type": "integer" } }, "required": ["query"] }),
        },
        ToolSpec {
            tool: "memory.store".into(),
            description: "Remember something across tasks: kind episodic (what happened), semantic (a fact), procedural (how to do something) or working (short-lived).".into(),
            parameters: json!({ "type": "object", "properties": { "kind": { "type": "string", "enum": ["episodic", "semantic", "procedural", "working"] }, "content": { "type": "string" }, "importance": { "type": "number" }, "ttl_seconds": { "type": "integer" } }, "required": ["kind", "content"] }),
        },
        ToolSpec {
            tool: "memory.recall".into(),
            description: "Recall what you remember about something (the most relevant memories first).".into(),
            parameters: json!({ "type": "object", "properties": { "query": { "type": "string" }, "kind": { "type": "string" }, "limit": { "type": "integer" } }, "required": ["query"] }),
        },
        ToolSpec {
            tool: "echo".into(),
            description: "Return the arguments (a harmless test tool).".into(),
            parameters: json!({ "type": "object" }),
        },
        ToolSpec {
            tool: "task.finish".into(),
            description: "Finish the task with its result.".into(),
            parameters: json!({ "type": "object", "properties": { "result": { "type": "string" } }, "required": ["result"] }),
        },
    ]
}

/// The system prompt when the control plane sends none (an older server).
pub const SYSTEM: &str = "You are an agent of an organization, working on one task. Use the tools \
                      to do it; call task__finish with the result when done.";

/// Runs one task to its end: (state, result, error).
async fn run(
    p: &Provider,
    kit: &Kit,
    bus: &Bus,
    task: &TaskOrder,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> (&'static str, Option<String>, Option<String>) {
    let fail = |why: String| ("failed", None, Some(why));
    bus.state(&task.id, "running", None, None);
    let started = Instant::now();
    let mut tools = builtin_tools();
    tools.extend(kit.mcp.specs());
    // In the order the control plane lists them (its `/prompt` shows it).
    if let Some(offered) = &task.tools {
        let mut by_id: std::collections::HashMap<String, ToolSpec> =
            tools.into_iter().map(|t| (t.tool.clone(), t)).collect();
        tools = offered.iter().filter_map(|id| by_id.remove(id)).collect();
    }
    let system = task.system.as_deref().unwrap_or(SYSTEM);
    // A conversation's turn: the earlier messages as turns (the control
    // plane bounded them), the person's new message last.
    let history = chat_history(&task.input);
    let mut user = task.instruction.clone();
    if history.is_none() && !task.input.is_null() {
        user.push_str(&format!("\n\nInput:\n{}", task.input));
    }
    if !task.memories.is_empty() {
        user.push_str("\n\nWhat you remember that may help:");
        for m in &task.memories {
            user.push_str(&format!("\n- {m}"));
        }
    }
    let mut turns = history.unwrap_or_default();
    match turns.last_mut() {
        // A message whose answer never came: the new one joins it.
        Some(Turn::User(t)) => {
            t.push_str("\n\n");
            t.push_str(&user);
        }
        _ => turns.push(Turn::User(user)),
    }
    let mut seq = 0u32;
    let mut model_calls = 0u32;
    let mut tokens = 0u64;
    // A replay: the conversation as its recorded steps left it.
    let mut results = Vec::new();
    for step in &task.replay {
        seq = step["seq"]
            .as_u64()
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(seq + 1);
        tokens += step["tokens"].as_u64().unwrap_or(0);
        let body = &step["body"];
        if step["kind"] == "model" {
            if !results.is_empty() {
                turns.push(Turn::Results(std::mem::take(&mut results)));
            }
            model_calls += 1;
            match p.parse(&body["response"]) {
                Ok(r) => turns.push(Turn::Assistant {
                    text: r.text,
                    calls: r.calls,
                }),
                Err(e) => return fail(format!("replay_unreadable: step {seq}: {e}")),
            }
        } else {
            results.push(ToolResult {
                call_id: body["provider_call_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                content: body["result"].as_str().unwrap_or_default().to_string(),
            });
        }
    }
    if !results.is_empty() {
        turns.push(Turn::Results(results));
    }
    loop {
        if cancelled() {
            return fail("cancelled".into());
        }
        if model_calls >= task.limits.max_steps {
            return fail(format!(
                "max_steps: the task made {model_calls} model calls, its limit"
            ));
        }
        let left = Duration::from_secs(task.limits.max_seconds).saturating_sub(started.elapsed());
        if left.is_zero() {
            return fail(format!(
                "max_seconds: the task ran {} s, its limit",
                task.limits.max_seconds
            ));
        }
        if tokens >= task.limits.max_tokens {
            return fail(format!(
                "max_tokens: the task used {tokens} tokens, its limit {}",
                task.limits.max_tokens
            ));
        }
        let body = p.body(system, &turns, &tools);
        let text = body.to_string();
        // Four bytes a token: a cautious estimate for the reservation, which
        // is settled to the provider's own count afterwards.
        let estimate = (text.len() as u64).div_ceil(4);
        seq += 1;
        model_calls += 1;
        let rid = format!("task-{}-{seq}", task.id);
        let reserve = RuntimeMessage::Reserve {
            reservation_id: rid.clone(),
            model: p.model().to_string(),
            input_tokens: estimate,
            max_output_tokens: p.max_output_tokens(),
        };
        match bus.ask(rid.clone(), &task.id, reserve).await {
            Some(ServerMessage::Reservation { granted: true, .. }) => {}
            Some(ServerMessage::Reservation { reason, .. }) => {
                return fail(format!(
                    "budget_exceeded: the model call was refused its reservation ({})",
                    reason.as_deref().unwrap_or("no reason given")
                ));
            }
            _ => return fail("cancelled".into()),
        }
        let t0 = Instant::now();
        // Streamed text goes out in pieces of at most 50 ms or 512 bytes.
        let mut pending = String::new();
        let mut flushed = Instant::now();
        let mut on_text = |t: &str| {
            pending.push_str(t);
            if pending.len() >= 512 || flushed.elapsed() >= Duration::from_millis(50) {
                bus.delta(&task.id, seq, std::mem::take(&mut pending));
                flushed = Instant::now();
            }
        };
        let answer = tokio::time::timeout(left, p.complete(&body, &mut on_text)).await;
        if !pending.is_empty() {
            bus.delta(&task.id, seq, pending);
        }
        let latency = t0.elapsed().as_millis() as u64;
        let (reply, raw) = match answer {
            Ok(Ok(ok)) => ok,
            other => {
                // Release the reservation: nothing was used that we know of.
                bus.usage(&task.id, &rid, p.model(), 0, 0);
                return fail(match other {
                    Ok(Err(e)) => format!("model_error: {e}"),
                    _ => format!(
                        "max_seconds: the task ran {} s, its limit",
                        task.limits.max_seconds
                    ),
                });
            }
        };
        bus.usage(
            &task.id,
            &rid,
            p.model(),
            reply.input_tokens,
            reply.output_tokens,
        );
        let used = reply.input_tokens + reply.output_tokens;
        tokens += used;
        bus.step(
            &task.id,
            seq,
            "model",
            json!({
                "reservation_id": rid,
                "request": body,
                "response": raw,
                "input_tokens": reply.input_tokens,
                "output_tokens": reply.output_tokens,
                // What the model said, for the task's conversation.
                "text": reply.text,
            }),
            used,
            latency,
        );
        if reply.calls.is_empty() {
            return ("succeeded", Some(reply.text.unwrap_or_default()), None);
        }
        turns.push(Turn::Assistant {
            text: reply.text.clone(),
            calls: reply.calls.clone(),
        });
        let mut results = Vec::new();
        let mut finished = None;
        for (k, call) in reply.calls.iter().enumerate() {
            seq += 1;
            // An approval wait counts against the task's wall time too.
            let left =
                Duration::from_secs(task.limits.max_seconds).saturating_sub(started.elapsed());
            let Ok((content, step, finish)) =
                tokio::time::timeout(left, tool_call(kit, bus, task, seq, k, call)).await
            else {
                return fail(format!(
                    "max_seconds: the task ran {} s, its limit (waiting for {})",
                    task.limits.max_seconds, call.tool
                ));
            };
            // The step's latency is how long the tool ran; how long it
            // waited for a person is `waited_ms` in its body.
            let ran = step["ran_ms"].as_u64().unwrap_or(0);
            bus.step(&task.id, seq, "tool", step, 0, ran);
            if finish.is_some() {
                finished = finish;
            }
            results.push(ToolResult {
                call_id: call.id.clone(),
                content,
            });
        }
        if let Some(result) = finished {
            return ("succeeded", Some(result), None);
        }
        turns.push(Turn::Results(results));
    }
}

/// The turns of a conversation's earlier messages (`input.history`:
/// `[{"role": "user"|"assistant", "content"}]`), consecutive turns of one
/// side joined (providers want them alternating); `None` for a task.
fn chat_history(input: &Value) -> Option<Vec<Turn>> {
    input.get("conversation_id")?;
    let mut turns: Vec<Turn> = Vec::new();
    for m in input["history"].as_array().into_iter().flatten() {
        let text = m["content"].as_str().unwrap_or_default().to_string();
        match (m["role"].as_str(), turns.last_mut()) {
            (Some("user"), Some(Turn::User(t))) => {
                t.push_str("\n\n");
                t.push_str(&text);
            }
            (Some("user"), _) => turns.push(Turn::User(text)),
            (Some("assistant"), Some(Turn::Assistant { text: Some(t), .. })) => {
                t.push_str("\n\n");
                t.push_str(&text);
            }
            (Some("assistant"), _) => turns.push(Turn::Assistant {
                text: Some(text),
                calls: Vec::new(),
            }),
            _ => {}
        }
    }
    // A conversation starts with the person.
    if matches!(turns.first(), Some(Turn::Assistant { .. })) {
        turns.insert(0, Turn::User("(the conversation so far)".into()));
    }
    Some(turns)
}

/// Asks for one tool call and runs it when allowed: (what the model is
/// told, the step's record, the result when it was `task.finish`).
async fn tool_call(
    kit: &Kit,
    bus: &Bus,
    task: &TaskOrder,
    seq: u32,
    k: usize,
    call: &Call,
) -> (String, Value, Option<String>) {
    let call_id = format!("task-{}-{seq}-{k}", task.id);
    let ask = RuntimeMessage::ToolRequest {
        call_id: call_id.clone(),
        tool: call.tool.clone(),
        arguments: call.arguments.clone(),
        estimated_cost_usd: None,
    };
    let t0 = Instant::now();
    let answer = bus.ask(call_id.clone(), &task.id, ask).await;
    // Judged (and, when parked, decided by a person): the wait ends here.
    let waited = t0.elapsed();
    let t1 = Instant::now();
    let mut finish = None;
    let (decision, content, approval_id, decided_by, comment) = match answer {
        Some(ServerMessage::ToolDecision {
            decision,
            message,
            approval_id,
            decided_by,
            comment,
            ..
        }) => {
            let content = match decision.as_str() {
                "allow" if call.tool == "task.finish" => {
                    let r = call
                        .arguments
                        .get("result")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| call.arguments.to_string());
                    finish = Some(r.clone());
                    r
                }
                "allow" => match execute(kit, bus, task, &call_id, call).await {
                    Ok(r) => r,
                    Err(e) => format!("error: {e}"),
                },
                "simulate" => format!("simulated (sandbox): {} was not executed", call.tool),
                _ => format!(
                    "denied: {}",
                    message.clone().unwrap_or_else(|| "not allowed".into())
                ),
            };
            // The decider's comment goes back to the model with the result.
            let content = match &comment {
                Some(c) => format!(
                    "{content} (comment from {}: {c})",
                    decided_by.as_deref().unwrap_or("the approver")
                ),
                None => content,
            };
            (decision, content, approval_id, decided_by, comment)
        }
        _ => (
            "cancelled".to_string(),
            "the call was not answered".to_string(),
            None,
            None,
            None,
        ),
    };
    let step = json!({
        "call_id": call_id,
        "provider_call_id": call.id,
        "tool": call.tool,
        "arguments": call.arguments,
        "decision": decision,
        "approval_id": approval_id,
        "decided_by": decided_by,
        "comment": comment,
        "result": content,
        "latency_ms": t0.elapsed().as_millis() as u64,
        "waited_ms": waited.as_millis() as u64,
        "ran_ms": t1.elapsed().as_millis() as u64,
    });
    (content, step, finish)
}

/// Runs an allowed tool call.
async fn execute(
    kit: &Kit,
    bus: &Bus,
    task: &TaskOrder,
    call_id: &str,
    call: &Call,
) -> Result<String, String> {
    let args = &call.arguments;
    match call.tool.as_str() {
        "http.get" | "http.request" => crate::tools::http(&kit.http, &call.tool, args).await,
        "shell.exec" => crate::tools::shell(args).await,
        "files.list" => crate::tools::list(args),
        "agent.message" => {
            let field = |k: &str| {
                args.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let ask = RuntimeMessage::AgentMessage {
                call_id: call_id.to_string(),
                task_id: task.id.clone(),
                to: field("agent"),
                message: field("message"),
            };
            match bus.ask(format!("msg-{call_id}"), &task.id, ask).await {
                Some(ServerMessage::AgentMessageSent {
                    task_id: Some(t), ..
                }) => Ok(format!("sent: the agent has it as task {t}")),
                Some(ServerMessage::AgentMessageSent { error, .. }) => {
                    Err(error.unwrap_or_else(|| "not sent".into()))
                }
                _ => Err("not sent (the task was cancelled)".into()),
            }
        }
        "knowledge.search" | "memory.store" | "memory.recall" => {
            let ask = RuntimeMessage::Knowledge {
                call_id: call_id.to_string(),
                task_id: task.id.clone(),
                tool: call.tool.clone(),
                arguments: args.clone(),
            };
            match bus.ask(format!("kn-{call_id}"), &task.id, ask).await {
                Some(ServerMessage::KnowledgeResult {
                    output: Some(o), ..
                }) => Ok(o),
                Some(ServerMessage::KnowledgeResult { error, .. }) => {
                    Err(error.unwrap_or_else(|| "no answer".into()))
                }
                _ => Err("no answer (the task was cancelled)".into()),
            }
        }
        t if t.starts_with("mcp.") => kit.mcp.call(t, args).await,
        other => crate::runtime::execute(other, args),
    }
}

/// The connection's bookkeeping of the loop's open questions.
#[derive(Debug, Default)]
pub struct Asks {
    /// Open questions by id.
    pub open: BTreeMap<String, Asked>,
    next: u64,
}

impl Asks {
    /// Records a question before it is sent.
    pub fn insert(
        &mut self,
        id: String,
        task: String,
        msg: RuntimeMessage,
        tx: oneshot::Sender<ServerMessage>,
    ) {
        self.next += 1;
        self.open.insert(
            id,
            Asked {
                order: self.next,
                task,
                msg,
                tx,
                waiting: false,
            },
        );
    }

    /// Frames to send again on a new connection (or after a retry hint), in
    /// the order they were first asked.
    pub fn resend(&self) -> Vec<RuntimeMessage> {
        let mut open: Vec<&Asked> = self.open.values().collect();
        open.sort_by_key(|a| a.order);
        open.into_iter().map(|a| a.msg.clone()).collect()
    }

    /// Routes an answer to its question; frames to send (a task back to
    /// `running` after its approval wait). Empty when it is not ours.
    pub fn answer(&mut self, id: &str, msg: ServerMessage) -> Vec<RuntimeMessage> {
        let Some(a) = self.open.remove(id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if a.waiting {
            out.push(RuntimeMessage::TaskState {
                task_id: a.task.clone(),
                state: "running".into(),
                result: None,
                error: None,
            });
        }
        let _ = a.tx.send(msg);
        out
    }

    /// A question was parked for approval: the frame that says so.
    pub fn pending(&mut self, id: &str) -> Option<RuntimeMessage> {
        let a = self.open.get_mut(id)?;
        if a.waiting {
            return None;
        }
        a.waiting = true;
        Some(RuntimeMessage::TaskState {
            task_id: a.task.clone(),
            state: "waiting_approval".into(),
            result: None,
            error: None,
        })
    }

    /// Drops a cancelled task's questions (its loop then stops).
    pub fn cancel(&mut self, task: &str) {
        self.open.retain(|_, a| a.task != task);
    }
}

/// The question an acknowledgement answers: `usage_ack` and `task_ack`
/// settle the reports of [`Bus`]; decisions and reservations their asks.
pub fn report_id(msg: &ServerMessage) -> Option<String> {
    match msg {
        ServerMessage::ToolDecision { call_id, .. } => Some(call_id.clone()),
        ServerMessage::Reservation { reservation_id, .. } => Some(reservation_id.clone()),
        ServerMessage::AgentMessageSent { call_id, .. } => Some(format!("msg-{call_id}")),
        ServerMessage::KnowledgeResult { call_id, .. } => Some(format!("kn-{call_id}")),
        ServerMessage::UsageAck { report_id, .. } => Some(format!("usage-{report_id}")),
        ServerMessage::TaskAck {
            task_id,
            seq: Some(seq),
            ..
        } => Some(format!("step-{task_id}-{seq}")),
        ServerMessage::TaskAck {
            task_id,
            state,
            seq: None,
        } => Some(format!("state-{task_id}-{state}")),
        _ => None,
    }
}
