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
