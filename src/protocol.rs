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
    },
    /// A batch of activity events (at most 5000).
    Activity {
        /// The runtime's batch number (echoed in the answer).
        batch: u64,
        /// The events.
        events: Vec<RuntimeEvent>,
    },
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
    /// The activity queue is full: the batch waits for room; send less
    /// often until it is acknowledged.
    SlowDown {
        /// The batch that waits.
        batch: u64,
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
