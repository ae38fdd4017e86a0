//! Durable storage: the `Store` port for the actors plus the read API the
//! HTTP layer may use for historical reads (history pages, login lookups).
//!
//! The store that serves is SQLite's (`sqlite.rs`). PostgreSQL and MySQL /
//! MariaDB have their schemas and migrations (`backend.rs`,
//! `migrations/<dialect>/`) but no store yet. Nothing here knows about
//! actors or HTTP.

mod activity;
pub mod backend;
mod governance;
mod identity;
mod schedules;
mod sqlite;
mod tasks;
pub mod transfer;
mod writer;

pub use activity::{
    ActivityFilter, ActivityRow, ConversationRow, Expired, Flushed, MessageRecord, MessageRow,
    NewActivity, Record, Timeline, TimelineCounts, ToolCallFilter, ToolCallRecord, ToolCallRow,
};
pub use governance::ApprovalFilter;
pub use identity::{
    AuditFilter, AuditRow, KeyRecord, NewRefresh, NewUser, OrgRow, OrgUsage, Rotation, UserChange,
    UserRecord,
};
pub use schedules::Schedule;
pub use sqlite::{Checkpoints, Durability, SqlStore};

use serde::Serialize;

/// One history entry as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    /// Monotonic id (the cursor).
    pub id: i64,
    /// Previous state (null for creation).
    pub from: Option<String>,
    /// New state.
    pub to: String,
    /// Why.
    pub reason: Option<String>,
    /// `user:<id>` or `system`.
    pub by: String,
    /// RFC 3339.
    pub at: String,
}

/// One agent event as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    /// Monotonic id.
    pub id: i64,
    /// Kind.
    pub kind: String,
    /// Details.
    pub detail: serde_json::Value,
    /// RFC 3339.
    pub at: String,
}

/// Saturating conversion for counters stored in signed 64-bit columns.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reads a non-negative column back.
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
