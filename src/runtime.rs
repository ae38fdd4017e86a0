//! `cadre runtime`: the process that runs on the deployment and connects back
//! to the control plane.
//!
//! It reads `runtime.json`, dials `/api/v1/runtime/connect` with its token,
//! says hello and sends heartbeats; it reconnects with back-off whenever the
//! connection drops (the control plane may be restarting) and exits on
//! SIGTERM, on a `stop` frame, or when its token is refused. The LLM loop
//! comes with its own issue; until then a runtime can follow a *script*
//! (`script` in runtime.json): tool calls and model calls, one JSON object
//! per line, each asked of the control plane first (the permission engine,
//! approvals, budget reservations) and executed only on `allow`. Step `n`
//! uses the call id `step-<n>`, so after a reconnect or a restart the same
//! question gets the same approval request and its decision.

use crate::deploy::RuntimeConfig;
use crate::protocol::{PROTOCOL_VERSION, RuntimeMessage, ServerMessage};
use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use std::path::Path;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// The task loop as the connection sees it (kept across reconnects).
struct Tasks {
    /// MCP tools to announce after each welcome.
    discovered: Vec<crate::protocol::DiscoveredTool>,
    worker: crate::agent_loop::Worker,
    outs: tokio::sync::mpsc::UnboundedReceiver<crate::agent_loop::Out>,
    asks: crate::agent_loop::Asks,
}

enum SessionEnd {
    /// Told to stop or refused: exit.
    Exit(String),
    /// Connection lost: dial again.
    Reconnect(String),
}

/// Runs until told to stop. The configuration comes from the file
/// `config_path`, or without one from the environment variable
/// `CADRE_RUNTIME_CONFIG` (containers, where nothing is written to disk).
pub async fn run(config_path: Option<&Path>) -> anyhow::Result<()> {
    crate::init_tls();
    let (text, source) = match config_path {
        Some(path) => (
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            std::env::var(crate::deploy::CONFIG_ENV).with_context(|| {
                format!(
                    "no --config and no {} in the environment",
                    crate::deploy::CONFIG_ENV
                )
            })?,
            crate::deploy::CONFIG_ENV.to_string(),
        ),
    };
    let mut config: RuntimeConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {source}"))?;
    if config.token.is_empty() {
        config.token = std::env::var(crate::deploy::TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .with_context(|| {
                format!(
                    "{source} has no token and {} is not set",
                    crate::deploy::TOKEN_ENV
                )
            })?;
    }
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut script = match &config.script {
        Some(path) => Script::load(path)?,
        None => Script::default(),
    };
    // The task loop, with the model provider of `llm` (its key comes from
    // the environment, never from the file).
    let key = std::env::var("CADRE_LLM_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let provider = match &config.llm {
        Some(s) => match (&key, &s.key_from) {
            (None, Some(from)) => {
                let why = format!("no API key for the model provider: {from} is not set");
                eprintln!("cadre runtime: {why}; tasks will fail");
                Err(why)
            }
            _ => Ok(
                crate::llm::Provider::new(s.clone(), config.model.clone(), key)
                    .map_err(anyhow::Error::msg)?,
            ),
        },
        None => Err("this runtime has no [llm] settings".to_string()),
    };
    // MCP servers start with the runtime; their tools are announced to the
    // control plane on every connection (it adds the new ones to the
    // organization's catalog).
    let mcp = crate::mcp::Servers::start(&config.mcp_servers).await;
    let kit = crate::agent_loop::Kit {
        http: crate::tools::http_client().map_err(anyhow::Error::msg)?,
        mcp,
    };
    let (bus, outs) = crate::agent_loop::Bus::new();
    let mut tasks = Tasks {
        discovered: kit
            .mcp
            .specs()
            .into_iter()
            .map(|s| crate::protocol::DiscoveredTool {
                id: s.tool,
                description: s.description,
            })
            .collect(),
        worker: crate::agent_loop::Worker::start(provider, kit, bus),
        outs,
        asks: crate::agent_loop::Asks::default(),
    };
    let mut backoff = Duration::from_millis(50);
    // Never wait longer between dials than the control plane waits between
    // heartbeats, so a control-plane restart does not look like a dead agent.
    let max_backoff = Duration::from_millis(config.heartbeat_interval_ms)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    eprintln!(
        "cadre runtime: agent {} starting (pid {}), control plane at {}",
        config.agent_id,
        std::process::id(),
        config.connect_url
    );
    loop {
        let end = tokio::select! {
            _ = term.recv() => {
                eprintln!("cadre runtime: SIGTERM, exiting");
                return Ok(());
            }
            end = session(&config, &mut backoff, &mut script, &mut tasks) => end,
        };
        match end {
            SessionEnd::Exit(why) => {
                eprintln!("cadre runtime: exiting: {why}");
                return Ok(());
            }
            SessionEnd::Reconnect(why) => {
                eprintln!(
                    "cadre runtime: no connection to {} ({why}); retrying in {backoff:?}",
                    config.connect_url
                );
                tokio::select! {
                    _ = term.recv() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

async fn session(
    config: &RuntimeConfig,
    backoff: &mut Duration,
    script: &mut Script,
    tasks: &mut Tasks,
) -> SessionEnd {
    let mut request = match config.connect_url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return SessionEnd::Exit(format!("bad connect_url: {e}")),
    };
    let Ok(auth) = HeaderValue::from_str(&format!("Bearer {}", config.token)) else {
        return SessionEnd::Exit("token is not a valid header value".into());
    };
    request.headers_mut().insert("authorization", auth);
    let (mut ws, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status().as_u16() == 401 => {
            return SessionEnd::Exit("token refused (redeployed or removed)".into());
        }
        Err(e) => return SessionEnd::Reconnect(e.to_string()),
    };
    let hello = RuntimeMessage::Hello {
        protocol: PROTOCOL_VERSION,
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
    };
    if let Err(e) = send(&mut ws, &hello).await {
        return SessionEnd::Reconnect(e);
    }
    let mut interval = Duration::from_millis(config.heartbeat_interval_ms.max(10));
    let mut seq = 0u64;
    let mut ticker = tokio::time::interval(interval);
    // Whatever step was in flight is asked again on this connection.
    script.asked = false;
    script.welcomed = false;
    let mut resend = true;
    loop {
        if script.welcomed && resend {
            if !tasks.discovered.is_empty() {
                let msg = RuntimeMessage::Tools {
                    tools: tasks.discovered.clone(),
                };
                if let Err(e) = send(&mut ws, &msg).await {
                    return SessionEnd::Reconnect(e);
                }
            }
            for msg in tasks.asks.resend() {
                if let Err(e) = send(&mut ws, &msg).await {
                    return SessionEnd::Reconnect(e);
                }
            }
            resend = false;
        }
        if script.welcomed && !script.asked {
            for msg in script.next_requests() {
                if let Err(e) = send(&mut ws, &msg).await {
                    return SessionEnd::Reconnect(e);
                }
            }
            script.asked = true;
        }
        tokio::select! {
            Some(out) = tasks.outs.recv(), if script.welcomed => {
                let crate::agent_loop::Out { id, task, msg, tx } = out;
                if let Some(tx) = tx {
                    tasks.asks.insert(id, task, msg.clone(), tx);
                }
                if let Err(e) = send(&mut ws, &msg).await {
                    return SessionEnd::Reconnect(e);
                }
            }
            _ = ticker.tick() => {
                seq += 1;
                if let Err(e) = send(&mut ws, &RuntimeMessage::Heartbeat { seq }).await {
                    return SessionEnd::Reconnect(e);
                }
            }
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => return SessionEnd::Reconnect("closed by server".into()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return SessionEnd::Reconnect(e.to_string()),
                };
                match serde_json::from_str::<ServerMessage>(&text) {
                    Ok(ServerMessage::Welcome { heartbeat_interval_ms, .. }) => {
                        *backoff = Duration::from_millis(50);
                        script.welcomed = true;
                        let wanted = Duration::from_millis(heartbeat_interval_ms.max(10));
                        if wanted != interval {
                            interval = wanted;
                            ticker = tokio::time::interval(interval);
                        }
                    }
                    Ok(ServerMessage::Stop { reason }) => return SessionEnd::Exit(reason),
                    Ok(ServerMessage::Task { task_id, instruction, input, limits, replay, memories, system, tools }) => {
                        tasks.worker.submit(crate::agent_loop::TaskOrder { id: task_id, instruction, input, limits, replay, memories, system, tools });
                    }
                    Ok(ServerMessage::CancelTask { task_id }) => {
                        eprintln!("cadre runtime: task {task_id} cancelled");
                        tasks.worker.cancel(&task_id);
                        tasks.asks.cancel(&task_id);
                    }
                    Ok(msg @ (ServerMessage::TaskAck { .. } | ServerMessage::UsageAck { .. })) => {
                        if let Some(id) = crate::agent_loop::report_id(&msg) {
                            tasks.asks.answer(&id, msg);
                        }
                    }
                    Ok(ServerMessage::ToolPending { ref call_id, .. }) if tasks.asks.open.contains_key(call_id) => {
                        if let Some(msg) = tasks.asks.pending(call_id)
                            && let Err(e) = send(&mut ws, &msg).await
                        {
                            return SessionEnd::Reconnect(e);
                        }
                    }
                    Ok(msg @ (ServerMessage::ToolDecision { .. } | ServerMessage::Reservation { .. } | ServerMessage::AgentMessageSent { .. } | ServerMessage::KnowledgeResult { .. }))
                        if crate::agent_loop::report_id(&msg).is_some_and(|id| tasks.asks.open.contains_key(&id)) =>
                    {
                        let id = crate::agent_loop::report_id(&msg).unwrap_or_default();
                        for m in tasks.asks.answer(&id, msg) {
                            if let Err(e) = send(&mut ws, &m).await {
                                return SessionEnd::Reconnect(e);
                            }
                        }
                    }
                    Ok(msg @ (ServerMessage::ToolDecision { .. } | ServerMessage::Reservation { .. })) => {
                        let before = script.next;
                        for out in script.answer(msg) {
                            if let Err(e) = send(&mut ws, &out).await {
                                return SessionEnd::Reconnect(e);
                            }
                        }
                        // The next step starts once this one is complete.
                        if script.next != before {
                            script.asked = false;
                        }
                    }
                    Ok(ServerMessage::ToolPending { call_id, approval_id }) => {
                        eprintln!("cadre runtime: {call_id} waits for approval {approval_id}");
                    }
                    Ok(ServerMessage::Error { code, message }) if code == "retry_tool_request" => {
                        eprintln!("cadre runtime: {message}");
                        script.asked = false;
                        resend = true;
                    }
                    // A re-asked call can meet an approval actor that is
                    // still reloading: ask again shortly (a script has one
                    // question out at a time, so this is the one).
                    Ok(ServerMessage::Error { code, message }) if code == "unavailable" && (script.asked || !tasks.asks.open.is_empty()) => {
                        eprintln!("cadre runtime: {message}; asking again");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        script.asked = false;
                        resend = true;
                    }
                    Ok(ServerMessage::Error { code, message }) if code == "unauthorized" || code == "unsupported_protocol" => {
                        return SessionEnd::Exit(format!("{code}: {message}"));
                    }
                    Ok(ServerMessage::Error { code, message }) => eprintln!("cadre runtime: server error {code}: {message}"),
                    Ok(_) => {}
                    Err(e) => eprintln!("cadre runtime: unreadable frame: {e}"),
                }
            }
        }
    }
}

async fn send<S>(ws: &mut S, msg: &RuntimeMessage) -> Result<(), String>
where
    S: SinkExt<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| e.to_string())
}

/// One scripted step.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StepIn {
    /// A tool call.
    tool: Option<String>,
    #[serde(default)]
    arguments: serde_json::Value,
    estimated_cost_usd: Option<f64>,
    /// Issue this many calls of the tool at once (a model's parallel tool
    /// calls); each gets `"n": k` added to its arguments.
    #[serde(default)]
    repeat: Option<u32>,
    /// A model call: reserve, then report usage.
    model_call: Option<ModelCall>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelCall {
    model: String,
    input_tokens: u64,
    max_output_tokens: u64,
    /// What the "model" then used.
    output_tokens: u64,
}

/// A script and how far it got (kept across reconnects).
#[derive(Debug, Default)]
struct Script {
    steps: Vec<StepIn>,
    next: usize,
    /// Calls of the current step still waiting for their answer.
    open: std::collections::BTreeMap<String, serde_json::Value>,
    welcomed: bool,
    asked: bool,
    batch: u64,
}

impl Script {
    fn load(path: &Path) -> anyhow::Result<Script> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Script::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut steps = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let step: StepIn = serde_json::from_str(line)
                .with_context(|| format!("{} line {}", path.display(), i + 1))?;
            if step.tool.is_some() == step.model_call.is_some() {
                anyhow::bail!(
                    "{} line {}: give either tool or model_call",
                    path.display(),
                    i + 1
                );
            }
            steps.push(step);
        }
        eprintln!("cadre runtime: script of {} steps", steps.len());
        Ok(Script {
            steps,
            ..Script::default()
        })
    }

    fn call_id(&self) -> String {
        format!("step-{}", self.next)
    }

    /// The questions of the current step still unanswered (all of them when
    /// the step starts), if any step is left.
    fn next_requests(&mut self) -> Vec<RuntimeMessage> {
        let Some(step) = self.steps.get(self.next).cloned() else {
            return Vec::new();
        };
        if self.open.is_empty() {
            match step.repeat {
                Some(n) if n > 0 => {
                    for k in 0..n {
                        let mut args = step.arguments.clone();
                        if let Some(m) = args.as_object_mut() {
                            m.insert("n".into(), k.into());
                        } else {
                            args = serde_json::json!({ "n": k });
                        }
                        self.open.insert(format!("{}.{k}", self.call_id()), args);
                    }
                }
                _ => {
                    self.open.insert(self.call_id(), step.arguments.clone());
                }
            }
        }
        self.open
            .iter()
            .map(|(id, args)| match (&step.tool, &step.model_call) {
                (_, Some(m)) => RuntimeMessage::Reserve {
                    reservation_id: id.clone(),
                    model: m.model.clone(),
                    input_tokens: m.input_tokens,
                    max_output_tokens: m.max_output_tokens,
                },
                (tool, None) => RuntimeMessage::ToolRequest {
                    call_id: id.clone(),
                    tool: tool.clone().unwrap_or_default(),
                    arguments: args.clone(),
                    estimated_cost_usd: step.estimated_cost_usd,
                },
            })
            .collect()
    }

    /// Done with one call of the current step; the step ends with its last.
    fn close(&mut self, id: &str) {
        self.open.remove(id);
        if self.open.is_empty() {
            self.next += 1;
        }
    }

    fn record(&mut self, payload: serde_json::Value) -> RuntimeMessage {
        self.batch += 1;
        RuntimeMessage::Activity {
            batch: self.batch,
            events: vec![crate::protocol::RuntimeEvent {
                kind: "tool_call".into(),
                payload: Some(payload),
                at: None,
            }],
        }
    }

    /// Handles the answer to the current step; returns frames to send.
    fn answer(&mut self, msg: ServerMessage) -> Vec<RuntimeMessage> {
        let Some(step) = self.steps.get(self.next).cloned() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        match msg {
            ServerMessage::ToolDecision {
                call_id,
                decision,
                reason,
                message,
                approval_id,
                decided_by,
                comment,
            } if self.open.contains_key(&call_id) => {
                let id = call_id;
                let args = self.open.get(&id).cloned().unwrap_or_default();
                let tool = step.tool.clone().unwrap_or_default();
                let (status, result) = match decision.as_str() {
                    // Executed only on an explicit allow.
                    "allow" => match execute(&tool, &args) {
                        Ok(r) => ("ok", r),
                        Err(e) => ("error", e),
                    },
                    "simulate" => (
                        "ok",
                        format!("simulated (sandbox): {tool} was not executed"),
                    ),
                    _ => ("denied", message.clone().unwrap_or_else(|| "denied".into())),
                };
                // The decider's comment goes back to the model with the result.
                let result = match &comment {
                    Some(c) => format!(
                        "{result} (comment from {}: {c})",
                        decided_by.as_deref().unwrap_or("the approver")
                    ),
                    None => result,
                };
                eprintln!("cadre runtime: {id} {tool}: {decision} -> {status}: {result}");
                out.push(self.record(serde_json::json!({
                    "tool_id": tool,
                    "call_id": id,
                    "status": status,
                    "arguments": args,
                    "result_summary": result,
                    "decision": decision,
                    "reason": reason,
                    "approval_id": approval_id,
                    "decided_by": decided_by,
                    "comment": comment,
                    "simulated": decision == "simulate",
                })));
                self.close(&id);
            }
            ServerMessage::Reservation {
                reservation_id,
                granted,
                reason,
                ..
            } if self.open.contains_key(&reservation_id) => {
                let id = reservation_id;
                let Some(m) = step.model_call.clone() else {
                    return out;
                };
                if granted {
                    out.push(RuntimeMessage::Usage {
                        report_id: id.clone(),
                        model: m.model.clone(),
                        input_tokens: m.input_tokens,
                        output_tokens: m.output_tokens,
                        reservation_id: Some(id.clone()),
                    });
                    eprintln!("cadre runtime: {id} model call made");
                    self.close(&id);
                } else {
                    // Never call the model without a reservation: the script
                    // stops here.
                    eprintln!(
                        "cadre runtime: {id} model call refused: {}",
                        reason.as_deref().unwrap_or("no reason")
                    );
                    self.steps.truncate(self.next);
                    self.open.clear();
                }
            }
            _ => {}
        }
        out
    }
}

/// A path inside the workspace (the working directory), or why not.
pub(crate) fn workspace_path(args: &serde_json::Value) -> Result<std::path::PathBuf, String> {
    let p = args
        .get("path")
        .and_then(|p| p.as_str())
        .ok_or("arguments.path (a string) is required")?;
    let path = Path::new(p);
    if p.is_empty()
        || path.is_absolute()
        || path
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(format!("{p:?} is not a relative path inside the workspace"));
    }
    Ok(Path::new("workspace").join(path))
}

/// The built-in tools this runtime can execute.
pub(crate) fn execute(tool: &str, args: &serde_json::Value) -> Result<String, String> {
    match tool {
        "echo" => Ok(args.to_string()),
        "files.write" => {
            let path = workspace_path(args)?;
            let content = args.get("content").and_then(|c| c.as_str()).unwrap_or("");
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            std::fs::write(&path, content).map_err(|e| e.to_string())?;
            Ok(format!(
                "wrote {} bytes to {}",
                content.len(),
                path.display()
            ))
        }
        "files.read" => {
            let path = workspace_path(args)?;
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        }
        "files.delete" => {
            let path = workspace_path(args)?;
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(format!("deleted {}", path.display()))
        }
        other => Err(format!("{other} is not implemented by this runtime")),
    }
}
