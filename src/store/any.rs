//! The store `cadre serve` opens for any `database.url`: SQLite's own store
//! (`sqlite.rs`: group commit on one writer connection), or the server
//! store (`server.rs`) on PostgreSQL or MySQL/MariaDB. [`Db`] hands out the
//! actors' ports as trait objects and [`AnyTables`], which forwards each
//! table method to the backend's [`Tables`]; nothing above the store knows
//! which backend it runs on.

use super::backend::Backend;
use super::server::{MySqlStore, PgStore};
use super::*;
use cadre_actors::approval::ApprovalRecord;
use cadre_actors::audit::AuditEntry;
use cadre_actors::domain::AgentRecord;
use cadre_actors::governance::Grant;
use cadre_actors::ports::{GovStore, Store, StoreError};
use cadre_actors::task::{TaskRecord, TaskState, TaskStep, TaskStore};
use std::sync::Arc;

impl AnyTables {
    /// [`Tables::write_activity`] on this backend; on SQLite by direct
    /// statements ([`Tables::write_activity_direct`]).
    pub async fn write_activity(
        &self,
        flush_id: i64,
        rows: &[&NewActivity],
        now: i64,
    ) -> Result<Flushed, StoreError> {
        match self {
            AnyTables::Sqlite(t) => t.write_activity_direct(flush_id, rows, now).await,
            AnyTables::Postgres(t) => t.write_activity(flush_id, rows, now).await,
            AnyTables::MySql(t) => t.write_activity(flush_id, rows, now).await,
        }
    }
}

/// The tables of whichever backend the store runs on.
#[derive(Debug, Clone)]
pub enum AnyTables {
    /// SQLite's.
    Sqlite(Tables<sqlx::Sqlite>),
    /// PostgreSQL's.
    Postgres(Tables<sqlx::Postgres>),
    /// MySQL's or MariaDB's.
    MySql(Tables<sqlx::MySql>),
}

/// Each method once, forwarded to the backend's [`Tables`] (whose method of
/// the same name says what it does).
macro_rules! forward {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        impl AnyTables {
            $(
                #[doc = concat!("[`Tables::", stringify!($name), "`] on this backend.")]
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        AnyTables::Sqlite(t) => t.$name($($arg),*).await,
                        AnyTables::Postgres(t) => t.$name($($arg),*).await,
                        AnyTables::MySql(t) => t.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

forward! {
    fn all_orgs(&self) -> Result<Vec<OrgRow>, StoreError>;
    fn org(&self, id: &str) -> Result<Option<OrgRow>, StoreError>;
    fn all_users(&self) -> Result<Vec<UserRecord>, StoreError>;
    fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    fn user_record_by_email(&self, email: &str) -> Result<Option<UserRecord>, StoreError>;
    fn user(&self, org: &str, id: &str) -> Result<Option<UserRecord>, StoreError>;
    fn users_page(&self, org: &str, after: &str, limit: i64) -> Result<Vec<UserRecord>, StoreError>;
    fn keys_page(&self, org: &str, after: &str, limit: i64) -> Result<Vec<KeyRecord>, StoreError>;
    fn orgs_page(&self, after: &str, limit: i64) -> Result<Vec<OrgRow>, StoreError>;
    fn org_usage(&self, org: &str, period: &str) -> Result<OrgUsage, StoreError>;
    fn org_spend(&self) -> Result<Vec<(String, String, u64, u64)>, StoreError>;
    fn audit_page(&self, org: &str, f: &AuditFilter, limit: i64) -> Result<Vec<AuditRow>, StoreError>;
    fn audit_since(&self, after: i64, limit: i64) -> Result<Vec<AuditSince>, StoreError>;
    fn last_audit_id(&self) -> Result<i64, StoreError>;
    fn append_audit(&self, a: &AuditEntry) -> Result<(), StoreError>;
    fn create_org(&self, org: &OrgRow, owner: &NewUser<'_>, audit: &AuditEntry) -> Result<(), StoreError>;
    fn update_org(&self, id: &str, plan: Option<&str>, limits: Option<&str>, retention: Option<Option<i64>>, settings: OrgSettings<'_>, audit: &AuditEntry) -> Result<bool, StoreError>;
    fn set_org_suspended(&self, id: &str, at: Option<i64>, audit: &AuditEntry) -> Result<bool, StoreError>;
    fn create_user(&self, user: &NewUser<'_>, max_users: Option<u64>, audit: &AuditEntry) -> Result<(), StoreError>;
    fn update_user(&self, org: &str, id: &str, change: &UserChange, now_ms: i64, audit: &AuditEntry) -> Result<Option<UserRecord>, StoreError>;
    fn delete_user(&self, org: &str, id: &str, now_ms: i64, audit: &AuditEntry) -> Result<bool, StoreError>;
    fn create_key(&self, key: &KeyRecord, audit: &AuditEntry) -> Result<(), StoreError>;
    fn revoke_key(&self, org: &str, id: &str, now_ms: i64, audit: &AuditEntry) -> Result<Option<KeyRecord>, StoreError>;
    fn revoked_families(&self, since_ms: i64) -> Result<Vec<String>, StoreError>;
    fn family_of(&self, hash: &str) -> Result<Option<String>, StoreError>;
    fn touch_key(&self, id: &str, at: i64) -> Result<(), StoreError>;
    fn login_lock(&self, email: &str, client: &str, now_ms: i64) -> Result<Option<i64>, StoreError>;
    fn login_failed(&self, email: &str, client: &str, now_ms: i64, limits: &LoginLimits) -> Result<Option<i64>, StoreError>;
    fn login_succeeded(&self, email: &str, client: &str, now_ms: i64, trusted_until: i64) -> Result<(), StoreError>;
    fn unlock_login(&self, email: &str, now_ms: i64, audit: &AuditEntry) -> Result<bool, StoreError>;
    fn insert_refresh(&self, t: &NewRefresh<'_>, audit: Option<&AuditEntry>) -> Result<(), StoreError>;
    fn rotate_refresh(&self, hash: &str, new_hash: &str, now_ms: i64, expires_ms: i64) -> Result<Rotation, StoreError>;
    fn revoke_refresh_family(&self, hash: &str, now_ms: i64, audit: impl Fn(&str, &str) -> AuditEntry) -> Result<Option<(String, String)>, StoreError>;
    fn org_count(&self) -> Result<i64, StoreError>;
    fn secret_samples(&self) -> Result<Vec<(String, String)>, StoreError>;
    fn spend_slots(&self, org: &str, agent: Option<&str>, from: i64, to: i64) -> Result<Vec<(i64, i64, i64)>, StoreError>;
    fn agent_id_by_name(&self, org: &str, name: &str) -> Result<Option<String>, StoreError>;
    fn agent_exists(&self, org: &str, agent: &str) -> Result<bool, StoreError>;
    fn agent_state_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError>;
    fn history(&self, org: &str, agent: &str, after: i64, limit: i64) -> Result<Vec<HistoryRow>, StoreError>;
    fn history_between(&self, org: &str, agent: &str, after: i64, window: (i64, i64), limit: i64) -> Result<Vec<HistoryRow>, StoreError>;
    fn events(&self, org: &str, agent: &str, after: i64, limit: i64) -> Result<Vec<EventRow>, StoreError>;
    fn approvals_page(&self, org: &str, f: &ApprovalFilter, limit: i64) -> Result<Vec<ApprovalRecord>, StoreError>;
    fn grants_page(&self, org: &str, before: Option<&str>, limit: i64) -> Result<Vec<(Grant, Option<i64>)>, StoreError>;
    fn halt_rows(&self) -> Result<Vec<HaltRow>, StoreError>;
    fn task(&self, org: &str, id: &str) -> Result<Option<TaskRecord>, StoreError>;
    fn conversation_tasks(&self, org: &str, agent: &str, conversation: &str, limit: u32) -> Result<Vec<TaskRecord>, StoreError>;
    fn tasks_page(&self, org: &str, agent: &str, state: Option<TaskState>, before: Option<&str>, limit: u32) -> Result<Vec<TaskRecord>, StoreError>;
    fn task_steps(&self, task: &str, after: u32, limit: u32) -> Result<Vec<TaskStep>, StoreError>;
    fn save_schedule(&self, s: &Schedule, audit: Option<&AuditEntry>) -> Result<(), StoreError>;
    fn delete_schedule(&self, org: &str, id: &str, audit: &AuditEntry) -> Result<bool, StoreError>;
    fn enabled_schedules(&self) -> Result<Vec<Schedule>, StoreError>;
    fn schedule(&self, org: &str, id: &str) -> Result<Option<Schedule>, StoreError>;
    fn agent_schedules(&self, org: &str, agent: &str) -> Result<Vec<Schedule>, StoreError>;
    fn create_kb(&self, kb: &KnowledgeBase, audit: &AuditEntry) -> Result<(), StoreError>;
    fn update_kb(&self, kb: &KnowledgeBase, audit: &AuditEntry) -> Result<bool, StoreError>;
    fn delete_kb(&self, org: &str, id: &str, now: i64, audit: &AuditEntry) -> Result<bool, StoreError>;
    fn kb(&self, org: &str, id: &str) -> Result<Option<KnowledgeBase>, StoreError>;
    fn kbs_page(&self, org: &str, after: &str, limit: i64) -> Result<Vec<KnowledgeBase>, StoreError>;
    fn put_document(&self, doc: &Document, chunks: &[Chunk], vectors: &[VectorRow], audit: &AuditEntry) -> Result<bool, StoreError>;
    fn mark_document_deleting(&self, org: &str, id: &str, now: i64, audit: &AuditEntry) -> Result<bool, StoreError>;
    fn mark_document_indexed(&self, id: &str, version: i64) -> Result<(), StoreError>;
    fn drop_document(&self, id: &str) -> Result<(), StoreError>;
    fn document(&self, org: &str, id: &str) -> Result<Option<Document>, StoreError>;
    fn documents_page(&self, org: &str, kb: &str, after: &str, limit: i64) -> Result<Vec<Document>, StoreError>;
    fn documents_in(&self, state: &str, after: &str, limit: i64) -> Result<Vec<Document>, StoreError>;
    fn document_chunks(&self, doc: &str) -> Result<Vec<Chunk>, StoreError>;
    fn insert_memory(&self, m: &Memory, vector: Option<&VectorRow>, audit: Option<&AuditEntry>) -> Result<(), StoreError>;
    fn set_memories_state(&self, ids: &[String], state: &str, audit: Option<&AuditEntry>) -> Result<u64, StoreError>;
    fn drop_memories(&self, ids: &[String]) -> Result<(), StoreError>;
    fn memory(&self, org: &str, agent: &str, id: &str) -> Result<Option<Memory>, StoreError>;
    fn memories_by_id(&self, ids: &[String]) -> Result<Vec<Memory>, StoreError>;
    fn memories_page(&self, org: &str, agent: &str, kind: Option<&str>, before: Option<&str>, now: i64, limit: i64) -> Result<Vec<Memory>, StoreError>;
    fn memories_in(&self, state: &str, after: &str, limit: i64) -> Result<Vec<Memory>, StoreError>;
    fn vector_keys_page(&self, after: &str, limit: i64) -> Result<Vec<(String, String)>, StoreError>;
    fn vectors_by_id(&self, ids: &[String]) -> Result<Vec<VectorRow>, StoreError>;
    fn expired_memories(&self, now: i64, limit: i64) -> Result<Vec<String>, StoreError>;
    fn activity_page(&self, org: &str, f: &ActivityFilter, before: Option<i64>, limit: i64) -> Result<Vec<ActivityRow>, StoreError>;
    fn activity_after(&self, org: &str, f: &ActivityFilter, after: i64, limit: i64) -> Result<Vec<ActivityRow>, StoreError>;
    fn last_activity_id(&self) -> Result<i64, StoreError>;
    fn activity_count(&self, org: &str, kind: Option<&str>) -> Result<i64, StoreError>;
    fn tool_calls_page(&self, org: &str, agent: &str, f: &ToolCallFilter, before: Option<i64>, limit: i64) -> Result<Vec<ToolCallRow>, StoreError>;
    fn conversations_page(&self, org: &str, agent: &str, before: Option<i64>, limit: i64) -> Result<Vec<ConversationRow>, StoreError>;
    fn conversation(&self, org: &str, agent: &str, id: &str) -> Result<Option<ConversationRow>, StoreError>;
    fn conversation_agent(&self, org: &str, id: &str) -> Result<Option<String>, StoreError>;
    fn versions_page(&self, org: Option<&str>, agent: &str, before: i64, limit: i64) -> Result<Vec<cadre_actors::domain::AgentVersion>, StoreError>;
    fn messages_page(&self, org: &str, agent: &str, conversation: &str, after: Option<i64>, limit: i64) -> Result<Vec<MessageRow>, StoreError>;
    fn timeline(&self, org: &str, agent: &str, from: i64) -> Result<Timeline, StoreError>;
    fn expire_activity(&self, now: i64, default_days: u32, batch: u32) -> Result<Expired, StoreError>;
}

/// The backend's own store, shared with the actors.
#[derive(Debug, Clone)]
enum Ports {
    Sqlite(Arc<SqlStore>),
    Postgres(Arc<PgStore>),
    MySql(Arc<MySqlStore>),
}

/// The store of a running Cadre, on any backend.
#[derive(Debug, Clone)]
pub struct Db {
    ports: Ports,
    tables: AnyTables,
}

impl From<SqlStore> for Db {
    fn from(store: SqlStore) -> Db {
        let tables = AnyTables::Sqlite(store.tables().clone());
        Db {
            ports: Ports::Sqlite(Arc::new(store)),
            tables,
        }
    }
}

impl From<PgStore> for Db {
    fn from(store: PgStore) -> Db {
        Db {
            tables: AnyTables::Postgres(store.tables()),
            ports: Ports::Postgres(Arc::new(store)),
        }
    }
}

impl From<MySqlStore> for Db {
    fn from(store: MySqlStore) -> Db {
        Db {
            tables: AnyTables::MySql(store.tables()),
            ports: Ports::MySql(Arc::new(store)),
        }
    }
}

impl Db {
    /// Opens the database `url` names (see [`Backend::of_url`]): SQLite
    /// with `durability` and `read_connections` readers, a server with a
    /// pool of `server_connections`. Migrations are applied by [`Db::migrate`].
    pub async fn open(
        url: &str,
        durability: Durability,
        read_connections: u32,
        server_connections: u32,
    ) -> Result<Db, sqlx::Error> {
        Ok(match Backend::of_url(url) {
            Some(Backend::Postgres) => PgStore::connect(url, server_connections).await?.into(),
            Some(Backend::Mysql) => MySqlStore::connect(url, server_connections).await?.into(),
            // SQLite's own parser names any other URL's problem.
            _ => SqlStore::open(url, durability, read_connections)
                .await?
                .into(),
        })
    }

    /// Which backend it runs on.
    pub fn backend(&self) -> Backend {
        match self.ports {
            Ports::Sqlite(_) => Backend::Sqlite,
            Ports::Postgres(_) => Backend::Postgres,
            Ports::MySql(_) => Backend::Mysql,
        }
    }

    /// Applies pending migrations (embedded in the binary).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match &self.ports {
            Ports::Sqlite(s) => s.migrate().await,
            Ports::Postgres(s) => s.migrate().await,
            Ports::MySql(s) => s.migrate().await,
        }
    }

    /// The tables every backend keeps the same way (the HTTP layer's reads,
    /// identity, activity, schedules).
    pub fn tables(&self) -> &AnyTables {
        &self.tables
    }

    /// The agents' port.
    pub fn store(&self) -> Arc<dyn Store> {
        match &self.ports {
            Ports::Sqlite(s) => s.clone(),
            Ports::Postgres(s) => s.clone(),
            Ports::MySql(s) => s.clone(),
        }
    }

    /// The governance port (approvals, grants, kill switches, documents).
    pub fn gov(&self) -> Arc<dyn GovStore> {
        match &self.ports {
            Ports::Sqlite(s) => s.clone(),
            Ports::Postgres(s) => s.clone(),
            Ports::MySql(s) => s.clone(),
        }
    }

    /// The tasks' port.
    pub fn tasks(&self) -> Arc<dyn TaskStore> {
        match &self.ports {
            Ports::Sqlite(s) => s.clone(),
            Ports::Postgres(s) => s.clone(),
            Ports::MySql(s) => s.clone(),
        }
    }

    /// PostgreSQL's pool, when it runs on PostgreSQL (pgvector).
    pub fn postgres(&self) -> Option<sqlx::PgPool> {
        match &self.ports {
            Ports::Postgres(s) => Some(s.pool().clone()),
            _ => None,
        }
    }

    /// SQLite's store, when it runs on SQLite (its own checks and tests).
    pub fn sqlite(&self) -> Option<&SqlStore> {
        match &self.ports {
            Ports::Sqlite(s) => Some(s),
            _ => None,
        }
    }

    /// The stored record of a live agent (tests and diagnostics; the actors
    /// hold the live copy).
    pub async fn load_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        match &self.ports {
            Ports::Sqlite(s) => s.load_agent(id).await,
            Ports::Postgres(s) => s.load_agent(id).await,
            Ports::MySql(s) => s.load_agent(id).await,
        }
    }

    /// Whether the database answers (`/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.store().ping().await
    }

    /// Closes its connections.
    pub async fn close(&self) {
        match &self.ports {
            Ports::Sqlite(s) => s.close().await,
            Ports::Postgres(s) => s.close().await,
            Ports::MySql(s) => s.close().await,
        }
    }
}
