//! Model providers for the runtime's task loop, over reqwest: an
//! OpenAI-compatible chat-completions API (OpenAI, vLLM, Ollama, LM Studio,
//! LiteLLM) and the Anthropic Messages API. One conversation type, two wire
//! formats; tool ids of the catalog (`files.read`) travel as `files__read`,
//! since both APIs allow only `[A-Za-z0-9_-]` in tool names.

use crate::deploy::local::LlmSettings;
use serde_json::{Value, json};
use std::time::Duration;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Turn {
    /// The user's words (the task's instruction and input).
    User(String),
    /// The model's answer: words and tool calls.
    Assistant {
        /// Its text, if any.
        text: Option<String>,
        /// Its tool calls, in order.
        calls: Vec<Call>,
    },
    /// Results of the previous turn's tool calls.
    Results(Vec<ToolResult>),
}

/// A tool call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// The provider's call id.
    pub id: String,
    /// The catalog's tool id (`files.read`).
    pub tool: String,
    /// Its arguments.
    pub arguments: Value,
}

/// A tool call's result for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// The provider's call id.
    pub call_id: String,
    /// What the tool returned (or why it did not run).
    pub content: String,
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// The catalog's tool id.
    pub tool: String,
    /// What it does.
    pub description: String,
    /// JSON schema of its arguments.
    pub parameters: Value,
}

/// The model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// Text, if any.
    pub text: Option<String>,
    /// Tool calls, in order.
    pub calls: Vec<Call>,
    /// Tokens the provider counted.
    pub input_tokens: u64,
    /// Tokens it generated.
    pub output_tokens: u64,
}

fn wire_name(tool: &str) -> String {
    tool.replace('.', "__")
}

fn catalog_name(wire: &str) -> String {
    wire.replace("__", ".")
}

/// A configured provider.
#[derive(Clone)]
pub struct Provider {
    settings: LlmSettings,
    model: String,
    api_key: Option<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("settings", &self.settings)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Provider {
    /// A provider for `model` (the key is never logged: `Debug` shows
    /// whether one is set, not what it is).
    pub fn new(
        settings: LlmSettings,
        model: String,
        api_key: Option<String>,
    ) -> Result<Provider, String> {
        if !matches!(settings.provider.as_str(), "openai" | "anthropic") {
            return Err(format!(
                "unknown provider {:?}: openai or anthropic",
                settings.provider
            ));
        }
        // reqwest on rustls panics without a process-wide crypto provider.
        crate::init_tls();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_seconds.max(1)))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Provider {
            settings,
            model,
            api_key: api_key.filter(|k| !k.is_empty()),
            client,
        })
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Output tokens per call at most.
    pub fn max_output_tokens(&self) -> u64 {
        self.settings.max_output_tokens
    }

    /// The request body for `turns` (what is sent, and recorded in the step
    /// log).
    pub fn body(&self, system: &str, turns: &[Turn], tools: &[ToolSpec]) -> Value {
        if self.settings.provider == "anthropic" {
            self.anthropic_body(system, turns, tools)
        } else {
            self.openai_body(system, turns, tools)
        }
    }

    fn openai_body(&self, system: &str, turns: &[Turn], tools: &[ToolSpec]) -> Value {
        let mut messages = vec![json!({ "role": "system", "content": system })];
        for t in turns {
            match t {
                Turn::User(text) => messages.push(json!({ "role": "user", "content": text })),
                Turn::Assistant { text, calls } => {
                    let mut m = json!({ "role": "assistant", "content": text });
                    if !calls.is_empty() {
                        m["tool_calls"] = calls
                            .iter()
                            .map(|c| {
                                json!({
                                    "id": c.id,
                                    "type": "function",
                                    "function": {
                                        "name": wire_name(&c.tool),
                                        "arguments": c.arguments.to_string(),
                                    },
                                })
                            })
                            .collect();
                    }
                    messages.push(m);
                }
                Turn::Results(results) => {
                    for r in results {
                        messages.push(json!({
                            "role": "tool",
                            "tool_call_id": r.call_id,
                            "content": r.content,
                        }));
                    }
                }
            }
        }
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": self.settings.max_output_tokens,
            "tools": tools.iter().map(|t| json!({
                "type": "function",
                "function": {
                    "name": wire_name(&t.tool),
                    "description": t.description,
                    "parameters": t.parameters,
                },
            })).collect::<Vec<_>>(),
        });
        if let Some(temp) = self.settings.temperature {
            body["temperature"] = json!(temp);
        }
        body
    }

    fn anthropic_body(&self, system: &str, turns: &[Turn], tools: &[ToolSpec]) -> Value {
        let mut messages = Vec::new();
        for t in turns {
            match t {
                Turn::User(text) => messages.push(json!({
                    "role": "user",
                    "content": [{ "type": "text", "text": text }],
                })),
                Turn::Assistant { text, calls } => {
                    let mut content = Vec::new();
                    if let Some(text) = text.as_ref().filter(|t| !t.is_empty()) {
                        content.push(json!({ "type": "text", "text": text }));
                    }
                    for c in calls {
                        content.push(json!({
                            "type": "tool_use",
                            "id": c.id,
                            "name": wire_name(&c.tool),
                            "input": c.arguments,
                        }));
                    }
                    messages.push(json!({ "role": "assistant", "content": content }));
                }
                Turn::Results(results) => messages.push(json!({
                    "role": "user",
                    "content": results.iter().map(|r| json!({
                        "type": "tool_result",
                        "tool_use_id": r.call_id,
                        "content": r.content,
                    })).collect::<Vec<_>>(),
                })),
            }
        }
        let mut body = json!({
            "model": self.model,
            "system": system,
            "messages": messages,
            "max_tokens": self.settings.max_output_tokens,
            "tools": tools.iter().map(|t| json!({
                "name": wire_name(&t.tool),
                "description": t.description,
                "input_schema": t.parameters,
            })).collect::<Vec<_>>(),
        });
        if let Some(temp) = self.settings.temperature {
            body["temperature"] = json!(temp);
        }
        body
    }

    /// Sends `body` (from [`Provider::body`]); the reply and the raw
    /// response. With `stream` set the provider is asked to stream: text is
    /// handed to `on_text` as it arrives, and the raw response returned is
    /// assembled into the provider's non-streaming shape, so the step log
    /// and replays read it like any other.
    pub async fn complete(
        &self,
        body: &Value,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(Reply, Value), String> {
        let base = self.settings.base_url.trim_end_matches('/');
        let anthropic = self.settings.provider == "anthropic";
        let url = if anthropic {
            format!("{base}/messages")
        } else {
            format!("{base}/chat/completions")
        };
        let mut body = body.clone();
        if self.settings.stream {
            body["stream"] = json!(true);
            if !anthropic {
                body["stream_options"] = json!({ "include_usage": true });
            }
        }
        let mut req = self.client.post(&url).json(&body);
        if anthropic {
            req = req.header("anthropic-version", "2023-06-01");
            if let Some(k) = &self.api_key {
                req = req.header("x-api-key", k);
            }
        } else if let Some(k) = &self.api_key {
            req = req.bearer_auth(k);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| format!("model request to {url} failed: {e}"))?;
        let status = resp.status();
        let streamed = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let raw: Value = if status.is_success() && streamed {
            let mut sse = Sse::default();
            let mut acc = if anthropic {
                Assembler::Anthropic(AnthropicStream::default())
            } else {
                Assembler::OpenAi(OpenAiStream::default())
            };
            loop {
                let chunk = resp
                    .chunk()
                    .await
                    .map_err(|e| format!("model stream from {url} broke: {e}"))?;
                let Some(chunk) = chunk else { break };
                for data in sse.feed(&chunk) {
                    if data == "[DONE]" {
                        continue;
                    }
                    let event: Value = serde_json::from_str(&data)
                        .map_err(|e| format!("model stream from {url} unreadable: {e}"))?;
                    acc.event(&event, on_text)?;
                }
            }
            acc.finish()
        } else {
            resp.json()
                .await
                .map_err(|e| format!("model response from {url} unreadable: {e}"))?
        };
        if !status.is_success() {
            let msg = raw
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return Err(format!("model provider answered {status}: {msg}"));
        }
        let reply = self.parse(&raw)?;
        Ok((reply, raw))
    }

    /// Reads a raw response of this provider (a live one, or one recorded
    /// in a step that a replay reuses).
    pub fn parse(&self, raw: &Value) -> Result<Reply, String> {
        if self.settings.provider == "anthropic" {
            parse_anthropic(raw)
        } else {
            parse_openai(raw)
        }
    }
}

/// Server-sent events: splits a byte stream into the `data` of its events.
#[derive(Default)]
struct Sse {
    buf: Vec<u8>,
    data: String,
}

impl Sse {
    /// Feeds bytes; the data of every event they complete.
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(std::mem::take(&mut self.data));
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        out
    }
}

/// Builds a complete response out of streamed events.
enum Assembler {
    OpenAi(OpenAiStream),
    Anthropic(AnthropicStream),
}

#[derive(Default)]
struct OpenAiStream {
    text: String,
    /// By index: id, name, arguments so far.
    calls: std::collections::BTreeMap<u64, (String, String, String)>,
    usage: Value,
}

#[derive(Default)]
struct AnthropicStream {
    blocks: Vec<Value>,
    partial: std::collections::BTreeMap<usize, String>,
    input_tokens: u64,
    output_tokens: u64,
    stop_reason: Value,
}

impl Assembler {
    fn event(&mut self, e: &Value, on_text: &mut (dyn FnMut(&str) + Send)) -> Result<(), String> {
        if let Some(err) = e.get("error").filter(|v| !v.is_null()) {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            return Err(format!("model stream ended with an error: {msg}"));
        }
        match self {
            Assembler::OpenAi(s) => {
                if let Some(u) = e.get("usage").filter(|u| u.is_object()) {
                    s.usage = u.clone();
                }
                for choice in e
                    .get("choices")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let delta = &choice["delta"];
                    if let Some(t) = delta.get("content").and_then(Value::as_str)
                        && !t.is_empty()
                    {
                        s.text.push_str(t);
                        on_text(t);
                    }
                    for (k, tc) in delta
                        .get("tool_calls")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        let idx = tc.get("index").and_then(Value::as_u64).unwrap_or(k as u64);
                        let entry = s.calls.entry(idx).or_default();
                        if let Some(id) = tc.get("id").and_then(Value::as_str) {
                            entry.0 = id.to_string();
                        }
                        if let Some(n) = tc.pointer("/function/name").and_then(Value::as_str) {
                            entry.1.push_str(n);
                        }
                        if let Some(a) = tc.pointer("/function/arguments").and_then(Value::as_str) {
                            entry.2.push_str(a);
                        }
                    }
                }
            }
            Assembler::Anthropic(s) => {
                let index = e.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                match e.get("type").and_then(Value::as_str) {
                    Some("message_start") => {
                        s.input_tokens = tokens(&e["message"]["usage"], "input_tokens");
                    }
                    Some("content_block_start") => {
                        if s.blocks.len() <= index {
                            s.blocks.resize(index + 1, Value::Null);
                        }
                        s.blocks[index] = e["content_block"].clone();
                    }
                    Some("content_block_delta") => {
                        let d = &e["delta"];
                        match d.get("type").and_then(Value::as_str) {
                            Some("text_delta") => {
                                let t = d.get("text").and_then(Value::as_str).unwrap_or("");
                                if let Some(b) = s.blocks.get_mut(index) {
                                    let so_far = b["text"].as_str().unwrap_or("").to_string();
                                    b["text"] = json!(so_far + t);
                                }
                                if !t.is_empty() {
                                    on_text(t);
                                }
                            }
                            Some("input_json_delta") => s
                                .partial
                                .entry(index)
                                .or_default()
                                .push_str(d["partial_json"].as_str().unwrap_or("")),
                            _ => {}
                        }
                    }
                    Some("content_block_stop") => {
                        if let (Some(p), Some(b)) =
                            (s.partial.remove(&index), s.blocks.get_mut(index))
                            && !p.is_empty()
                        {
                            b["input"] = serde_json::from_str(&p).unwrap_or(Value::String(p));
                        }
                    }
                    Some("message_delta") => {
                        s.output_tokens = tokens(&e["usage"], "output_tokens");
                        s.stop_reason = e["delta"]["stop_reason"].clone();
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The response as the provider would have sent it unstreamed.
    fn finish(self) -> Value {
        match self {
            Assembler::OpenAi(s) => {
                let mut message = json!({
                    "role": "assistant",
                    "content": (!s.text.is_empty()).then_some(s.text),
                });
                if !s.calls.is_empty() {
                    message["tool_calls"] = s
                        .calls
                        .into_values()
                        .map(|(id, name, args)| {
                            json!({ "id": id, "type": "function", "function": { "name": name, "arguments": args } })
                        })
                        .collect();
                }
                json!({
                    "object": "chat.completion",
                    "choices": [{ "index": 0, "message": message }],
                    "usage": s.usage,
                    "streamed": true,
                })
            }
            Assembler::Anthropic(s) => json!({
                "type": "message",
                "role": "assistant",
                "content": s.blocks.into_iter().filter(|b| !b.is_null()).collect::<Vec<_>>(),
                "stop_reason": s.stop_reason,
                "usage": { "input_tokens": s.input_tokens, "output_tokens": s.output_tokens },
                "streamed": true,
            }),
        }
    }
}

fn tokens(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn parse_openai(raw: &Value) -> Result<Reply, String> {
    let msg = raw
        .pointer("/choices/0/message")
        .ok_or("chat completion without choices[0].message")?;
    let mut calls = Vec::new();
    for c in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = c.get("id").and_then(Value::as_str).unwrap_or_default();
        let name = c
            .pointer("/function/name")
            .and_then(Value::as_str)
            .ok_or("tool call without function.name")?;
        let args = c
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        // A model may produce arguments that are not JSON; the tool then
        // gets them as a string and says what is wrong.
        let arguments = serde_json::from_str(args).unwrap_or(Value::String(args.to_string()));
        calls.push(Call {
            id: id.to_string(),
            tool: catalog_name(name),
            arguments,
        });
    }
    let usage = raw.get("usage").cloned().unwrap_or(Value::Null);
    Ok(Reply {
        text: msg
            .get("content")
            .and_then(Value::as_str)
            .map(str::to_string),
        calls,
        input_tokens: tokens(&usage, "prompt_tokens"),
        output_tokens: tokens(&usage, "completion_tokens"),
    })
}

fn parse_anthropic(raw: &Value) -> Result<Reply, String> {
    let blocks = raw
        .get("content")
        .and_then(Value::as_array)
        .ok_or("message without content")?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(Call {
                id: b
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                tool: catalog_name(
                    b.get("name")
                        .and_then(Value::as_str)
                        .ok_or("tool_use without name")?,
                ),
                arguments: b.get("input").cloned().unwrap_or(Value::Null),
            }),
            _ => {}
        }
    }
    let usage = raw.get("usage").cloned().unwrap_or(Value::Null);
    Ok(Reply {
        text: (!text.is_empty()).then_some(text),
        calls,
        input_tokens: tokens(&usage, "input_tokens"),
        output_tokens: tokens(&usage, "output_tokens"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(kind: &str) -> Provider {
        let settings = LlmSettings {
            stream: false,
            provider: kind.into(),
            base_url: "http://127.0.0.1:1".into(),
            max_output_tokens: 100,
            temperature: None,
            timeout_seconds: 5,
            key_from: None,
        };
        Provider::new(settings, "m".into(), Some("sk-secret".into())).expect("provider")
    }

    fn turns() -> Vec<Turn> {
        vec![
            Turn::User("do it".into()),
            Turn::Assistant {
                text: None,
                calls: vec![Call {
                    id: "c1".into(),
                    tool: "files.read".into(),
                    arguments: json!({ "path": "a" }),
                }],
            },
            Turn::Results(vec![ToolResult {
                call_id: "c1".into(),
                content: "hello".into(),
            }]),
        ]
    }

    #[test]
    fn openai_wire_format_round_trips_tool_names() {
        let body = provider("openai").body("sys", &turns(), &[]);
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(
            body["messages"][2]["tool_calls"][0]["function"]["name"],
            "files__read"
        );
        assert_eq!(body["messages"][3]["role"], "tool");
        assert_eq!(body["messages"][3]["tool_call_id"], "c1");
        let reply = parse_openai(&json!({
            "choices": [{ "message": { "content": null, "tool_calls": [
                { "id": "x", "type": "function", "function": { "name": "task__finish", "arguments": "{\"result\":\"ok\"}" } }
            ] } }],
            "usage": { "prompt_tokens": 7, "completion_tokens": 3 }
        }))
        .expect("parse");
        assert_eq!(reply.calls[0].tool, "task.finish");
        assert_eq!(reply.calls[0].arguments["result"], "ok");
        assert_eq!((reply.input_tokens, reply.output_tokens), (7, 3));
    }

    #[test]
    fn anthropic_wire_format_uses_blocks() {
        let body = provider("anthropic").body("sys", &turns(), &[]);
        assert_eq!(body["system"], "sys");
        assert_eq!(body["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(body["messages"][2]["content"][0]["type"], "tool_result");
        let reply = parse_anthropic(&json!({
            "content": [{ "type": "text", "text": "hi" }, { "type": "tool_use", "id": "t", "name": "echo", "input": { "a": 1 } }],
            "usage": { "input_tokens": 5, "output_tokens": 2 }
        }))
        .expect("parse");
        assert_eq!(reply.text.as_deref(), Some("hi"));
        assert_eq!(reply.calls[0].tool, "echo");
        assert!(parse_anthropic(&json!({})).is_err());
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let p = provider("openai");
        let shown = format!("{p:?}");
        assert!(shown.contains("<set>"), "{shown}");
        assert!(!shown.contains("sk-secret"), "{shown}");
    }
}
