//! The runtime protocol, version 1: JSON text frames over the WebSocket at
//! `/api/v1/runtime/connect` (documented in `docs/runtime-protocol.md`).
//!
//! Both sides ignore unknown fields so that a newer peer can add fields
//! without breaking an older one; a new message type or a changed meaning
//! needs a new protocol version.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Runtime → control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RuntimeMessage {
    /// First frame after connecting.
    Hello {
        /// Protocol version the runtime speaks.
        protocol: u32,
        /// Runtime build version.
        runtime_version: String,
        /// OS process id.
        pid: u32,
    },
    /// Liveness, every `heartbeat_interval_ms`.
    Heartbeat {
        /// Increasing sequence number.
        seq: u64,
    },
    /// Token usage of one model call.
    Usage {
        /// Idempotency key: resending the same id never counts twice.
        report_id: String,
        /// Model name (priced from the pricing table).
        model: String,
        /// Prompt tokens.
        input_tokens: u64,
        /// Completion tokens.
        output_tokens: u64,
        /// The reservation this report settles (its hold is released).
        #[serde(default)]
        reservation_id: Option<String>,
    },
    /// May I run this tool? Answered by `tool_decision`, after a
    /// `tool_pending` when a human must decide first. Asking again with the
    /// same `call_id` (after a reconnect) never creates a second request.
    ToolRequest {
        /// Unique per agent (1–200 characters).
        call_id: String,
        /// Tool id from the catalog.
        tool: String,
        /// The call's arguments (secrets are redacted before they are stored).
        #[serde(default)]
        arguments: serde_json::Value,
        /// Estimated cost in USD (for cost-triggered approval policies).
        #[serde(default)]
        estimated_cost_usd: Option<f64>,
    },
    /// Hold budget for a model call before making it: the prompt tokens
    /// plus the call's maximum output tokens, priced from the pricing table.
    /// Settle with a `usage` report naming the reservation.
    Reserve {
        /// Idempotency key (1–200 characters).
        reservation_id: String,
        /// Model.
        model: String,
        /// Prompt tokens.
        input_tokens: u64,
        /// The call's maximum output tokens.
        max_output_tokens: u64,
    },
    /// A batch of activity events (at most 5000).
    Activity {
        /// The runtime's batch number (echoed in the answer).
        batch: u64,
        /// The events.
        events: Vec<RuntimeEvent>,
    },
    /// A task's new state (`running`, `waiting_approval`, `succeeded`,
    /// `failed`), with its result or why it failed.
    TaskState {
        /// The task.
        task_id: String,
        /// Its new state.
        state: String,
        /// The result (`succeeded`).
        #[serde(default)]
        result: Option<String>,
        /// Why (`failed`): a stable code, a colon, words.
        #[serde(default)]
        error: Option<String>,
    },
    /// One step of a task, recorded once per `(task_id, seq)`.
    TaskStep {
        /// The task.
        task_id: String,
        /// 1, 2, …
        seq: u32,
        /// `model` or `tool`.
        kind: String,
        /// What happened (see docs/runtime-protocol.md).
        body: serde_json::Value,
        /// Tokens used (model steps).
        #[serde(default)]
        tokens: u64,
        /// Milliseconds taken.
        #[serde(default)]
        latency_ms: u64,
    },
    /// The tools of the agent's MCP servers (sent after every welcome):
    /// the control plane adds those its organization's catalog lacks.
    Tools {
        /// The tools.
        tools: Vec<DiscoveredTool>,
    },
    /// The `agent.message` tool, allowed: give another agent of the same
    /// organization a task. Asked again until answered; the same `call_id`
    /// never creates a second task.
    AgentMessage {
        /// The tool call's id.
        call_id: String,
        /// The task it comes from.
        task_id: String,
        /// The other agent, by name (or id).
        to: String,
        /// What to tell it (its task's instruction).
        message: String,
    },
    /// A tool the control plane runs for the agent (`knowledge.search`,
    /// `memory.store`, `memory.recall`), after its `tool_request` was
    /// allowed. Asked again until answered; the same `call_id` never
    /// stores a second memory.
    Knowledge {
        /// The tool call's id.
        call_id: String,
        /// The task it comes from.
        task_id: String,
        /// The tool.
        tool: String,
        /// Its arguments.
        #[serde(default)]
        arguments: serde_json::Value,
    },
    /// Text the model is streaming for step `seq` of a task: published as
    /// a `task.delta` event, not acknowledged (the step carries it all).
    TaskDelta {
        /// The task.
        task_id: String,
        /// The model step it belongs to.
        seq: u32,
        /// The text since the previous delta.
        text: String,
    },
}

/// A tool a runtime found on an MCP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredTool {
    /// `mcp.<server>.<tool>`.
    pub id: String,
    /// What the server says it does.
    #[serde(default)]
    pub description: String,
}

/// One event of an `activity` batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuntimeEvent {
    /// Kind (1–100 of `a-z 0-9 _ . : -`).
    pub kind: String,
    /// Any JSON (default `{}`).
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// When it happened (RFC 3339; default: when it arrived).
    #[serde(default)]
    pub at: Option<String>,
}

/// Control plane → runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `hello`.
    Welcome {
        /// Protocol version in use.
        protocol: u32,
        /// Connection number.
        conn: u64,
        /// How often to send heartbeats.
        heartbeat_interval_ms: u64,
    },
    /// Answer to a heartbeat.
    HeartbeatAck {
        /// The heartbeat's sequence number.
        seq: u64,
    },
    /// Answer to a usage report.
    UsageAck {
        /// The report id.
        report_id: String,
        /// `false` when this id had been counted before.
        counted: bool,
    },
    /// An `activity` batch is committed.
    ActivityAck {
        /// The batch number.
        batch: u64,
        /// Events written.
        accepted: usize,
        /// Event id of the first (the others follow in order).
        first_id: i64,
    },
    /// The verdict on a `tool_request`. `decision` is `allow`, `simulate`
    /// (sandbox: record it, do not execute it) or `deny`; a runtime executes
    /// a tool only on `allow`.
    ToolDecision {
        /// The call.
        call_id: String,
        /// `allow`, `simulate` or `deny`.
        decision: String,
        /// Why it was denied (a stable code: `tool_blocked`, `approval_denied`, …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// A human explanation, for the model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// The approval request, when a human decided.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval_id: Option<String>,
        /// Who decided (`user:<id>`, `system` for a timeout).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decided_by: Option<String>,
        /// The decider's comment, handed back to the model.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    /// The call waits for a human (a `tool_decision` follows).
    ToolPending {
        /// The call.
        call_id: String,
        /// The approval request.
        approval_id: String,
    },
    /// The answer to `reserve`.
    Reservation {
        /// The reservation.
        reservation_id: String,
        /// Whether the call may be made.
        granted: bool,
        /// Tokens held.
        tokens: u64,
        /// USD held.
        cost_usd: f64,
        /// Why not: `budget_exceeded`, `org_budget_exceeded`, `halted`, …
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The activity queue is full: the batch waits for room; send less
    /// often until it is acknowledged.
    SlowDown {
        /// The batch that waits.
        batch: u64,
    },
    /// Run this task (a runtime ignores a task it runs already).
    Task {
        /// The task.
        task_id: String,
        /// What to do.
        instruction: String,
        /// Data for it.
        input: serde_json::Value,
        /// Its limits.
        limits: cadre_actors::task::TaskLimits,
        /// For a replay: the recorded steps before the first live one
        /// (`{"seq", "kind", "body", "tokens"}`), to continue from.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replay: Vec<serde_json::Value>,
        /// The agent's memories most relevant to the instruction (when its
        /// `knowledge.recall_memories` is set), for the task's context.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        memories: Vec<String>,
        /// The system prompt, composed by the control plane (absent from
        /// an older server: the runtime's generic one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system: Option<String>,
        /// The tools to offer the model, by catalog id (absent: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tools: Option<Vec<String>>,
    },
    /// Stop working on this task: an operator cancelled it.
    CancelTask {
        /// The task.
        task_id: String,
    },
    /// Answer to `tools`: how many joined the catalog.
    ToolsAck {
        /// Tools added (the others were there already).
        added: usize,
    },
    /// Answer to `agent_message`: the task created, or why none was.
    AgentMessageSent {
        /// The tool call's id.
        call_id: String,
        /// The other agent's new task.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_id: Option<String>,
        /// Why no task was created.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Answer to `knowledge`: the tool's output, or why it failed.
    KnowledgeResult {
        /// The tool call's id.
        call_id: String,
        /// What the model is given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        output: Option<String>,
        /// Why it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A task report was recorded.
    TaskAck {
        /// The task.
        task_id: String,
        /// Its state now.
        state: String,
        /// The step recorded, when the report was a step.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u32>,
    },
    /// The agent must not run (stopped, budget exceeded, superseded): exit.
    Stop {
        /// Why.
        reason: String,
    },
    /// A frame could not be handled.
    Error {
        /// Stable code.
        code: String,
        /// Human message.
        message: String,
    },
}
