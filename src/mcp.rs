//! A Model Context Protocol client for the runtime: the agent's MCP servers
//! (stdio: a child process speaking newline-delimited JSON-RPC; HTTP: the
//! streamable-HTTP transport, JSON or server-sent-event answers) are started
//! and asked for their tools when the runtime starts. Their tools are
//! offered to the model as `mcp.<server>.<tool>` and, like every tool, run
//! only after the control plane allowed the call.

use crate::llm::ToolSpec;
use cadre_actors::domain::McpServerSpec;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, oneshot};

/// The protocol revision this client speaks.
const PROTOCOL: &str = "2025-06-18";
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(60);

type Waiters = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

#[derive(Debug)]
enum Transport {
    Stdio {
        stdin: Mutex<tokio::process::ChildStdin>,
        waiters: Waiters,
        _child: Box<tokio::process::Child>,
    },
    Http {
        client: reqwest::Client,
        url: String,
        session: std::sync::Mutex<Option<String>>,
    },
}

/// One connected server.
#[derive(Debug)]
struct Server {
    name: String,
    transport: Transport,
    next: AtomicU64,
}

/// A discovered tool: its catalog id and where it lives.
#[derive(Debug, Clone)]
struct Tool {
    spec: ToolSpec,
    server: usize,
    name: String,
}

/// The agent's MCP servers and their tools.
#[derive(Debug, Clone, Default)]
pub struct Servers {
    servers: Arc<Vec<Server>>,
    tools: Arc<Vec<Tool>>,
}

/// A tool name as a catalog id part: `a-z 0-9 _ -`, no `__` (the wire
/// format's separator).
fn id_part(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    while s.contains("__") {
        s = s.replace("__", "_");
    }
    s
}

impl Server {
    async fn connect(spec: &McpServerSpec) -> Result<Server, String> {
        let transport = match (&spec.command, &spec.url) {
            (Some(command), _) => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(&spec.args)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::inherit())
                    .kill_on_drop(true);
                for k in crate::tools::HIDDEN_ENV {
                    cmd.env_remove(k);
                }
                let mut child = cmd
                    .spawn()
                    .map_err(|e| format!("starting {command}: {e}"))?;
                let stdin = child.stdin.take().ok_or("no stdin")?;
                let stdout = child.stdout.take().ok_or("no stdout")?;
                let waiters: Waiters = Arc::default();
                let w = waiters.clone();
                let name = spec.name.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stdout).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                            eprintln!("cadre runtime: mcp {name}: unreadable line");
                            continue;
                        };
                        // Answers carry the id of their request; requests
                        // and notifications from the server are ignored.
                        if msg.get("method").is_none()
                            && let Some(id) = msg.get("id").and_then(Value::as_u64)
                            && let Some(tx) = w.lock().ok().and_then(|mut m| m.remove(&id))
                        {
                            let _ = tx.send(msg);
                        }
                    }
                    // The process ended: whoever waits gets no answer.
                    if let Ok(mut m) = w.lock() {
                        m.clear();
                    }
                });
                Transport::Stdio {
                    stdin: Mutex::new(stdin),
                    waiters,
                    _child: Box::new(child),
                }
            }
            (None, Some(url)) => Transport::Http {
                client: crate::tools::http_client()?,
                url: url.clone(),
                session: std::sync::Mutex::new(None),
            },
            (None, None) => return Err("neither command nor url".into()),
        };
        let server = Server {
            name: spec.name.clone(),
            transport,
            next: AtomicU64::new(1),
        };
        server
            .request(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL,
                    "capabilities": {},
                    "clientInfo": { "name": "cadre", "version": env!("CARGO_PKG_VERSION") },
                }),
            )
            .await?;
        server.notify("notifications/initialized").await?;
        Ok(server)
    }

    async fn send(&self, msg: &Value, id: Option<u64>) -> Result<Option<Value>, String> {
        match &self.transport {
            Transport::Stdio { stdin, waiters, .. } => {
                let rx = id.map(|id| {
                    let (tx, rx) = oneshot::channel();
                    if let Ok(mut m) = waiters.lock() {
                        m.insert(id, tx);
                    }
                    rx
                });
                let mut line = msg.to_string();
                line.push('\n');
                stdin
                    .lock()
                    .await
                    .write_all(line.as_bytes())
                    .await
                    .map_err(|e| format!("writing to the server: {e}"))?;
                match rx {
                    None => Ok(None),
                    Some(rx) => match tokio::time::timeout(TIMEOUT, rx).await {
                        Ok(Ok(v)) => Ok(Some(v)),
                        Ok(Err(_)) => Err("the server ended".into()),
                        Err(_) => Err(format!("no answer within {} s", TIMEOUT.as_secs())),
                    },
                }
            }
            Transport::Http {
                client,
                url,
                session,
            } => {
                let mut req = client
                    .post(url)
                    .timeout(TIMEOUT)
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-protocol-version", PROTOCOL)
                    .json(msg);
                if let Some(s) = session.lock().ok().and_then(|s| s.clone()) {
                    req = req.header("mcp-session-id", s);
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| format!("request failed: {e}"))?;
                if let Some(s) = resp
                    .headers()
                    .get("mcp-session-id")
                    .and_then(|v| v.to_str().ok())
                    && let Ok(mut slot) = session.lock()
                {
                    *slot = Some(s.to_string());
                }
                let status = resp.status();
                if !status.is_success() {
                    return Err(format!("the server answered {status}"));
                }
                let Some(id) = id else { return Ok(None) };
                let sse = resp
                    .headers()
                    .get(reqwest::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("text/event-stream"));
                let text = resp
                    .text()
                    .await
                    .map_err(|e| format!("reading the answer: {e}"))?;
                let answers: Vec<Value> = if sse {
                    text.lines()
                        .filter_map(|l| l.strip_prefix("data:"))
                        .filter_map(|d| serde_json::from_str(d.trim()).ok())
                        .collect()
                } else {
                    vec![
                        serde_json::from_str(&text)
                            .map_err(|e| format!("unreadable answer: {e}"))?,
                    ]
                };
                answers
                    .into_iter()
                    .find(|a| a.get("id").and_then(Value::as_u64) == Some(id))
                    .map(Some)
                    .ok_or_else(|| "no answer to the request".into())
            }
        }
    }

    async fn request(&self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let msg = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let answer = self.send(&msg, Some(id)).await?.ok_or("no answer")?;
        if let Some(e) = answer.get("error") {
            return Err(format!(
                "{method}: {}",
                e.get("message").and_then(Value::as_str).unwrap_or("error")
            ));
        }
        Ok(answer.get("result").cloned().unwrap_or(Value::Null))
    }

    async fn notify(&self, method: &str) -> Result<(), String> {
        let msg = json!({ "jsonrpc": "2.0", "method": method });
        self.send(&msg, None).await.map(|_| ())
    }

    async fn list_tools(&self) -> Result<Vec<(String, String, Value)>, String> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let params = match &cursor {
                Some(c) => json!({ "cursor": c }),
                None => json!({}),
            };
            let r = self.request("tools/list", params).await?;
            for t in r
                .get("tools")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(name) = t.get("name").and_then(Value::as_str) else {
                    continue;
                };
                out.push((
                    name.to_string(),
                    t.get("description")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    t.get("inputSchema")
                        .cloned()
                        .unwrap_or_else(|| json!({ "type": "object" })),
                ));
            }
            cursor = r
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_string);
            if cursor.is_none() || out.len() > 1000 {
                return Ok(out);
            }
        }
    }
}

impl Servers {
    /// Connects to every server and lists its tools; a server that fails is
    /// left out (and said so in the runtime's log).
    pub async fn start(specs: &[McpServerSpec]) -> Servers {
        // All at once, each within 20 s: the runtime says hello only after
        // this, and the control plane waits `health.start_timeout_ms` (60 s
        // by default) for that.
        let started = futures_util::future::join_all(specs.iter().map(|spec| async move {
            let run = async {
                let server = Server::connect(spec).await?;
                let listed = server.list_tools().await?;
                Ok::<_, String>((server, listed))
            };
            match tokio::time::timeout(Duration::from_secs(20), run).await {
                Ok(r) => r,
                Err(_) => Err("no answer within 20 s".into()),
            }
        }))
        .await;
        let mut servers = Vec::new();
        let mut tools = Vec::new();
        for (spec, r) in specs.iter().zip(started) {
            match r {
                Ok((server, listed)) => {
                    let idx = servers.len();
                    eprintln!("cadre runtime: mcp {}: {} tools", server.name, listed.len());
                    for (name, description, schema) in listed {
                        tools.push(Tool {
                            spec: ToolSpec {
                                tool: format!("mcp.{}.{}", id_part(&server.name), id_part(&name)),
                                description,
                                parameters: schema,
                            },
                            server: idx,
                            name,
                        });
                    }
                    servers.push(server);
                }
                Err(e) => eprintln!("cadre runtime: mcp {}: left out: {e}", spec.name),
            }
        }
        Servers {
            servers: Arc::new(servers),
            tools: Arc::new(tools),
        }
    }

    /// The tools, as offered to the model.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.iter().map(|t| t.spec.clone()).collect()
    }

    /// Calls a tool by its catalog id; its text content.
    pub async fn call(&self, id: &str, args: &Value) -> Result<String, String> {
        let tool = self
            .tools
            .iter()
            .find(|t| t.spec.tool == id)
            .ok_or_else(|| format!("{id} is not a tool of this agent's MCP servers"))?;
        let server = self.servers.get(tool.server).ok_or("no such server")?;
        let arguments = if args.is_object() {
            args.clone()
        } else {
            json!({})
        };
        let r = server
            .request(
                "tools/call",
                json!({ "name": tool.name, "arguments": arguments }),
            )
            .await?;
        let text: Vec<String> = r
            .get("content")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| match c.get("text").and_then(Value::as_str) {
                Some(t) => t.to_string(),
                None => c.to_string(),
            })
            .collect();
        let text = text.join("\n");
        if r.get("isError").and_then(Value::as_bool) == Some(true) {
            Err(text)
        } else {
            Ok(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names_become_catalog_id_parts() {
        assert_eq!(id_part("read_file"), "read_file");
        assert_eq!(id_part("Get.Weather"), "get_weather");
        assert_eq!(id_part("a__b"), "a_b");
        assert_eq!(id_part("x y"), "x_y");
    }
}
