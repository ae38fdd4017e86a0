//! Durable storage: the `Store` port for the actors plus the read API the
//! HTTP layer may use for historical reads (history pages, login lookups).
//!
//! `cadre serve` opens a [`Db`] (`any.rs`) for any `database.url`: SQLite's
//! store (`sqlite.rs`, group commit on one writer connection) or the server
//! store on PostgreSQL or MySQL / MariaDB (`server.rs`, the actors' ports
//! over a [`server::Dialect`]). Every other table has one implementation
//! for all three, [`Tables`] (`tables.rs`: identity and audit, activity,
//! schedules, the HTTP layer's reads); the schemas and migrations are in
//! `backend.rs` and `migrations/<dialect>/`, export / import in
//! `transfer.rs`. Nothing here knows about actors or HTTP.

/// Writes an impl over every [`server::Dialect`] with the bounds sqlx
/// needs to run our statements, bind our values and read our rows: `impl<D>
/// Type<D> { … }` for inherent methods, `impl<D> Port for Type<D> { … }` for
/// a port (an `async_trait`). Rust does not imply where-clauses from a trait,
/// so without this each impl would repeat them.
macro_rules! on_dialects {
    (impl<D> $port:ident for $ty:ident<D> { $($body:tt)* }) => {
        on_dialects!(@with [#[::async_trait::async_trait] impl<D> $port for $ty<D>] { $($body)* });
    };
    (impl<D> $ty:ident<D> { $($body:tt)* }) => {
        on_dialects!(@with [impl<D> $ty<D>] { $($body)* });
    };
    (@with [$($head:tt)*] { $($body:tt)* }) => {
        $($head)*
        where
            D: $crate::store::server::Dialect,
            for<'c> &'c mut D::Connection: ::sqlx::Executor<'c, Database = D>,
            for<'a> D::Arguments<'a>: ::sqlx::IntoArguments<'a, D>,
            for<'q> &'q str: ::sqlx::Encode<'q, D> + ::sqlx::Type<D>,
            for<'q> Option<&'q str>: ::sqlx::Encode<'q, D> + ::sqlx::Type<D>,
            for<'q> String: ::sqlx::Encode<'q, D> + ::sqlx::Type<D>,
            for<'q> Option<String>: ::sqlx::Encode<'q, D> + ::sqlx::Type<D>,
            for<'q> i64: ::sqlx::Encode<'q, D> + ::sqlx::Type<D>,
            for<'q> Option<i64>: ::sqlx::Encode<'q, D> + ::sqlx::Type<D>,
            for<'q> bool: ::sqlx::Encode<'q, D> + ::sqlx::Type<D>,
            for<'q> Option<bool>: ::sqlx::Encode<'q, D> + ::sqlx::Type<D>,
            D::Row: $crate::store::DecodeRow,
            usize: ::sqlx::ColumnIndex<D::Row>,
            for<'a> &'a str: ::sqlx::ColumnIndex<D::Row>,
        {
            $($body)*
        }
    };
}

mod activity;
mod any;
pub mod backend;
mod direct;
mod governance;
mod identity;
mod knowledge;
mod reads;
mod schedules;
pub mod server;
mod sqlite;
mod tables;
mod tasks;
pub mod transfer;
mod writer;

pub use activity::{
    ActivityFilter, ActivityRow, ConversationRow, Expired, Flushed, MessageRecord, MessageRow,
    NewActivity, Record, Timeline, TimelineCounts, ToolCallFilter, ToolCallRecord, ToolCallRow,
};
pub use any::{AnyTables, Db};
pub use governance::ApprovalFilter;
pub use identity::{
    AuditFilter, AuditRow, AuditSince, KeyRecord, LoginLimits, NewRefresh, NewUser, OrgRow,
    OrgSettings, OrgUsage, Rotation, UserChange, UserRecord,
};
pub use knowledge::{Chunk, Document, KnowledgeBase, Memory, VectorRow};
pub use reads::HaltRow;
pub use schedules::Schedule;
pub use sqlite::{Checkpoints, Durability, SqlStore};
pub use tables::Tables;

use serde::Serialize;

/// `pool.begin()`, carried to the end even when the caller is cancelled.
///
/// sqlx (0.8.6, and 0.9.0 too) is not cancel-safe here on PostgreSQL and
/// MySQL: it counts a transaction as open only once `BEGIN` has answered, so
/// a future dropped while `BEGIN` is in flight (an actor killed by its
/// supervisor, a request that timed out) queues no `ROLLBACK`, and the pool
/// takes the connection back still inside that transaction
/// (transact-rs/sqlx#4393). Every later statement on it then runs inside
/// the stale transaction: what they write holds its row locks and stays
/// uncommitted until some later `COMMIT` on that connection publishes all of
/// it at once. Cadre saw both under its chaos test on PostgreSQL: a tenant's
/// claim of its agents waited forever on such a lock, and a claim that
/// surfaced late fenced a live agent out of the registry.
///
/// Here the `BEGIN` runs on a task of its own: if the caller goes away, the
/// task still finishes it and drops the transaction it made, and that drop
/// queues the `ROLLBACK` the pool flushes before it reuses the connection.
pub async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.begin().await })
        .await
        .unwrap_or_else(|e| Err(sqlx::Error::Protocol(format!("BEGIN task failed: {e}"))))
}

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

/// A value every dialect decodes: text, 64-bit integers and their
/// `Option`s (every select of ours reads its columns back as these, casting
/// where a dialect stores another type), so that one decoder of an agent or
/// approval row serves each backend.
pub trait Cell:
    Sized
    + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
    + sqlx::Type<sqlx::Sqlite>
    + for<'r> sqlx::Decode<'r, sqlx::Postgres>
    + sqlx::Type<sqlx::Postgres>
    + for<'r> sqlx::Decode<'r, sqlx::MySql>
    + sqlx::Type<sqlx::MySql>
{
}

impl<T> Cell for T where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
        + for<'r> sqlx::Decode<'r, sqlx::MySql>
        + sqlx::Type<sqlx::MySql>
{
}

/// A row of any of our dialects, read through [`Cell`]s.
pub trait DecodeRow: sqlx::Row {
    /// `try_get` for a [`Cell`].
    fn cell<T: Cell, I: sqlx::ColumnIndex<Self>>(&self, index: I) -> Result<T, sqlx::Error>;
}

impl DecodeRow for sqlx::sqlite::SqliteRow {
    fn cell<T: Cell, I: sqlx::ColumnIndex<Self>>(&self, index: I) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, index)
    }
}

impl DecodeRow for sqlx::postgres::PgRow {
    fn cell<T: Cell, I: sqlx::ColumnIndex<Self>>(&self, index: I) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, index)
    }
}

impl DecodeRow for sqlx::mysql::MySqlRow {
    /// Unchecked: text in `utf8mb4_bin` columns comes flagged binary, which
    /// sqlx's check refuses for `String` although the bytes are UTF-8 text
    /// (decoding still fails on bytes that are not). Every select casts
    /// flags and JSON to `SIGNED` and `CHAR`, so the types are ours.
    fn cell<T: Cell, I: sqlx::ColumnIndex<Self>>(&self, index: I) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get_unchecked(self, index)
    }
}

/// Saturating conversion for counters stored in signed 64-bit columns.
pub(crate) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reads a non-negative column back.
pub(crate) fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}
