//! `cadre export` and `cadre import`: an installation moved between
//! backends (or copied) as JSON lines, one file a table.
//!
//! An export is a directory: `<table>.jsonl` for every table of
//! [`TABLES`], one JSON object a row (column name → value), and
//! `manifest.json`, written last, naming the format, the schema version
//! (the last migration), the source backend and each table's row count and
//! id counter. Values are dialect-free: text is a string, integers and
//! unix-ms timestamps are numbers, flags are `true`/`false`, JSON documents
//! are strings holding the document's JSON text (so SQL NULL and the JSON
//! document `null` stay distinct), NULL is `null`.
//!
//! The export reads one consistent snapshot (a read transaction; repeatable
//! read on PostgreSQL), so it may run while Cadre serves. The import
//! applies the migrations, refuses a database that holds any row, a
//! manifest of another schema version or format, and any line that does not
//! fit its table, and writes everything in one transaction: a failed
//! import leaves the database empty. Id counters (activity, audit, history)
//! continue after the highest id ever handed out, deleted rows included,
//! so stream cursors and event ids stay unique after a move.
//!
//! One code path serves the three dialects (generic over sqlx's
//! `Database`); what differs is quoting, the casts that read each kind
//! back as one Rust type, and how an id counter is read and set.

use super::backend::{self, Backend, MigrateError};
use serde::{Deserialize, Serialize};
use sqlx::{
    ColumnIndex, Connection, Database, Decode, Encode, Executor, IntoArguments, MySqlConnection,
    PgConnection, Row, SqliteConnection, Type,
};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// How a column's values are stored and exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text (`TEXT`, `VARCHAR`).
    Text,
    /// A 64-bit integer (counters, unix-ms timestamps, micro-dollars).
    Int,
    /// A flag (`INTEGER` 0/1 in SQLite, `BOOLEAN` elsewhere).
    Bool,
    /// A JSON document (`TEXT` in SQLite, `JSONB`, `JSON`).
    Json,
}

/// One column of a table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: Kind,
}

/// One table that an export carries.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// Its name (and its file's: `<name>.jsonl`).
    pub name: &'static str,
    /// The column whose values the database hands out in increasing order
    /// (`AUTOINCREMENT`, identity, `AUTO_INCREMENT`), if any.
    pub serial: Option<&'static str>,
    /// Every column a migration created, in order.
    pub columns: &'static [Column],
}

const fn c(name: &'static str, kind: Kind) -> Column {
    Column { name, kind }
}

use Kind::{Bool, Int, Json, Text};

/// Every table of the schema, parents before the tables whose foreign keys
/// name them. `tests/databases.rs` fails when a migration adds a table or
/// column this list does not have (or a kind differs from a dialect's type).
pub static TABLES: &[Table] = &[
    Table {
        name: "orgs",
        serial: None,
        columns: &[
            c("id", Text),
            c("name", Text),
            c("plan", Text),
            c("created_at", Int),
            c("slug", Text),
            c("limits", Json),
            c("suspended_at", Int),
            c("agent_count", Int),
            c("activity_retention_days", Int),
            c("timezone", Text),
            c("budget_period", Text),
            c("instructions", Text),
            c("delegation", Text),
        ],
    },
    Table {
        name: "users",
        serial: None,
        columns: &[
            c("id", Text),
            c("org_id", Text),
            c("email", Text),
            c("password_hash", Text),
            c("role", Text),
            c("created_at", Int),
            c("name", Text),
            c("instance_admin", Bool),
            c("sessions_after", Int),
            c("updated_at", Int),
        ],
    },
    Table {
        name: "agents",
        serial: None,
        columns: &[
            c("id", Text),
            c("org_id", Text),
            c("name", Text),
            c("role", Text),
            c("model", Text),
            c("target", Text),
            c("health_interval_ms", Int),
            c("health_failure_threshold", Int),
            c("budget_tokens", Int),
            c("budget_cost_micros", Int),
            c("state", Text),
            c("state_reason", Text),
            c("restart_count", Int),
            c("usage_tokens", Int),
            c("usage_cost_micros", Int),
            c("usage_period", Text),
            c("usage_warned", Bool),
            c("deployment_ref", Text),
            c("runtime_token_hash", Text),
            c("epoch", Int),
            c("created_at", Int),
            c("updated_at", Int),
            c("deleted_at", Int),
            c("profile", Text),
            c("budget_period", Text),
            c("runtime", Json),
            c("job", Json),
        ],
    },
    Table {
        name: "activity",
        serial: Some("id"),
        columns: &[
            c("id", Int),
            c("org_id", Text),
            c("agent_id", Text),
            c("kind", Text),
            c("payload", Json),
            c("at", Int),
            c("recorded_at", Int),
        ],
    },
    Table {
        name: "activity_flushes",
        serial: None,
        columns: &[
            c("id", Int),
            c("first_id", Int),
            c("count", Int),
            c("at", Int),
        ],
    },
    Table {
        name: "activity_hours",
        serial: None,
        columns: &[
            c("agent_id", Text),
            c("hour", Int),
            c("kind", Text),
            c("org_id", Text),
            c("events", Int),
            c("errors", Int),
            c("tokens", Int),
            c("cost_micros", Int),
        ],
    },
    Table {
        name: "agent_events",
        serial: Some("id"),
        columns: &[
            c("id", Int),
            c("agent_id", Text),
            c("org_id", Text),
            c("kind", Text),
            c("detail", Json),
            c("at", Int),
        ],
    },
    Table {
        name: "agent_versions",
        serial: None,
        columns: &[
            c("agent_id", Text),
            c("n", Int),
            c("org_id", Text),
            c("definition", Json),
            c("by_who", Text),
            c("at", Int),
        ],
    },
    Table {
        name: "agent_transitions",
        serial: Some("id"),
        columns: &[
            c("id", Int),
            c("agent_id", Text),
            c("org_id", Text),
            c("from_state", Text),
            c("to_state", Text),
            c("reason", Text),
            c("by_who", Text),
            c("at", Int),
        ],
    },
    Table {
        name: "api_keys",
        serial: None,
        columns: &[
            c("id", Text),
            c("org_id", Text),
            c("name", Text),
            c("secret_hash", Text),
            c("scopes", Json),
            c("created_by", Text),
            c("created_at", Int),
            c("expires_at", Int),
            c("last_used_at", Int),
            c("revoked_at", Int),
        ],
    },
    Table {
        name: "approval_votes",
        serial: None,
        columns: &[
            c("approval_id", Text),
            c("level", Int),
            c("user_id", Text),
            c("approve", Bool),
            c("comment", Text),
            c("at", Int),
        ],
    },
    Table {
        name: "approvals",
        serial: None,
        columns: &[
            c("id", Text),
            c("org_id", Text),
            c("agent_id", Text),
            c("call_id", Text),
            c("tool", Text),
            c("args_hash", Text),
            c("arguments", Json),
            c("trigger", Text),
            c("policy", Text),
            c("levels", Json),
            c("level", Int),
            c("state", Text),
            c("outcome", Bool),
            c("requested_by", Text),
            c("created_at", Int),
            c("expires_at", Int),
            c("decided_by", Text),
            c("decided_at", Int),
            c("comment", Text),
            c("grant_id", Text),
        ],
    },
    Table {
        name: "audit_log",
        serial: Some("id"),
        columns: &[
            c("id", Int),
            c("org_id", Text),
            c("actor", Text),
            c("action", Text),
            c("target", Text),
            c("summary", Json),
            c("request_id", Text),
            c("client", Text),
            c("at", Int),
        ],
    },
    Table {
        name: "conversations",
        serial: Some("seq"),
        columns: &[
            c("seq", Int),
            c("org_id", Text),
            c("agent_id", Text),
            c("id", Text),
            c("title", Text),
            c("started_at", Int),
            c("last_at", Int),
            c("messages", Int),
            c("tokens", Int),
            c("recorded_at", Int),
        ],
    },
    Table {
        name: "gov_docs",
        serial: None,
        columns: &[
            c("org_id", Text),
            c("kind", Text),
            c("name", Text),
            c("body", Json),
            c("updated_at", Int),
        ],
    },
    Table {
        name: "grants",
        serial: None,
        columns: &[
            c("id", Text),
            c("org_id", Text),
            c("agent_id", Text),
            c("tool", Text),
            c("args_hash", Text),
            c("approval_id", Text),
            c("granted_by", Text),
            c("created_at", Int),
            c("expires_at", Int),
            c("revoked_at", Int),
            c("revoked_by", Text),
        ],
    },
    Table {
        name: "halts",
        serial: None,
        columns: &[
            c("scope", Text),
            c("target", Text),
            c("org_id", Text),
            c("reason", Text),
            c("by_who", Text),
            c("at", Int),
        ],
    },
    Table {
        name: "kb_chunks",
        serial: None,
        columns: &[
            c("id", Text),
            c("org_id", Text),
            c("kb_id", Text),
            c("doc_id", Text),
            c("position", Int),
            c("start_offset", Int),
            c("end_offset", Int),
            c("tokens", Int),
            c("body", Text),
        ],
    },
    Table {
        name: "kb_documents",
        serial: None,
        columns: &[
            c("id", Text),
            c("org_id", Text),
            c("kb_id", Text),
            c("title", Text),
            c("source", Text),
            c("content_type", Text),
            c("metadata", Text),
            c("content", Text),
            c("content_hash", Text),
            c("bytes", Int),
            c("chunk_count", Int),
            c("version", Int),
            c("state", Text),
            c("created_by", Text),
            c("created_at", Int),
            c("updated_at", Int),
        ],
    },
    Table {
        name: "kb_vectors",
        serial: None,
        columns: &[
            c("id", Text),
            c("org_id", Text),
            c("scope", Text),
            c("owner_id", Text),
            c("doc_id", Text),
            c("expires_at", Int),
            c("vector", Text),
        ],
    },
    Table {
        name: "knowledge_bases",
        serial: None,
        columns: &[
            c("id", Text),
            c("org_id", Text),
            c("name", Text),
            c("description", Text),
            c("created_by", Text),
            c("created_at", Int),
            c("updated_at", Int),
        ],
    },
    Table {
        name: "login_locks",
        serial: None,
        columns: &[
            c("email", Text),
            c("client", Text),
            c("failures", Int),
            c("lockouts", Int),
            c("locked_until", Int),
            c("trusted_until", Int),
            c("updated_at", Int),
        ],
    },
    Table {
        name: "messages",
        serial: None,
        columns: &[
            c("agent_id", Text),
            c("conversation_id", Text),
            c("activity_id", Int),
        ],
    },
    Table {
        name: "memories",
        serial: None,
        columns: &[
            c("id", Text),
            c("org_id", Text),
            c("agent_id", Text),
            c("kind", Text),
            c("content", Text),
            c("importance", Int),
            c("source_task", Text),
            c("expires_at", Int),
            c("state", Text),
            c("created_at", Int),
        ],
    },
    Table {
        name: "org_usage",
        serial: None,
        columns: &[
            c("org_id", Text),
            c("period", Text),
            c("tokens", Int),
            c("cost_micros", Int),
        ],
    },
    Table {
        name: "refresh_tokens",
        serial: None,
        columns: &[
            c("hash", Text),
            c("family", Text),
            c("user_id", Text),
            c("org_id", Text),
            c("created_at", Int),
            c("expires_at", Int),
            c("used_at", Int),
            c("revoked_at", Int),
        ],
    },
    Table {
        name: "schedules",
        serial: None,
        columns: &[
            c("id", Text),
            c("org_id", Text),
            c("agent_id", Text),
            c("cron", Text),
            c("timezone", Text),
            c("instruction", Text),
            c("input", Json),
            c("limits", Json),
            c("enabled", Bool),
            c("next_run_at", Int),
            c("last_run_at", Int),
            c("last_task_id", Text),
            c("last_error", Text),
            c("created_by", Text),
            c("created_at", Int),
            c("updated_at", Int),
        ],
    },
    Table {
        name: "task_steps",
        serial: None,
        columns: &[
            c("task_id", Text),
            c("seq", Int),
            c("kind", Text),
            c("body", Json),
            c("tokens", Int),
            c("latency_ms", Int),
            c("at", Int),
        ],
    },
    Table {
        name: "tasks",
        serial: None,
        columns: &[
            c("id", Text),
            c("org_id", Text),
            c("agent_id", Text),
            c("instruction", Text),
            c("input", Json),
            c("state", Text),
            c("result", Text),
            c("error", Text),
            c("limits", Json),
            c("created_by", Text),
            c("created_at", Int),
            c("started_at", Int),
            c("finished_at", Int),
            c("runner_pid", Int),
            c("parent_id", Text),
            c("from_step", Int),
            c("version", Int),
        ],
    },
    Table {
        name: "tool_calls",
        serial: None,
        columns: &[
            c("agent_id", Text),
            c("activity_id", Int),
            c("tool_id", Text),
            c("status", Text),
        ],
    },
    Table {
        name: "usage_reports",
        serial: None,
        columns: &[
            c("agent_id", Text),
            c("report_id", Text),
            c("at", Int),
            c("org_id", Text),
            c("tokens", Int),
            c("cost_micros", Int),
        ],
    },
];

/// The export format's name and version in the manifest.
pub const FORMAT: &str = "cadre-export";
/// The current format version.
pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
/// Bound parameters per `INSERT` (below every dialect's limit).
const PARAMS_PER_INSERT: usize = 8_000;

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// The schema: the version of the last migration applied.
    pub schema: i64,
    /// The backend it was read from (`sqlite`, `postgres`, `mysql`).
    pub source: String,
    /// When (unix ms).
    pub exported_at: i64,
    /// Each table's rows and id counter.
    pub tables: BTreeMap<String, TableInfo>,
}

/// One table in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// Rows in its file.
    pub rows: u64,
    /// The highest id handed out so far (deleted rows included), for a
    /// table with a serial column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_id: Option<i64>,
}

impl Manifest {
    /// Rows in all tables.
    pub fn rows(&self) -> u64 {
        self.tables.values().map(|t| t.rows).sum()
    }
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// Where it went.
    pub backend: Backend,
    /// The export's manifest.
    pub manifest: Manifest,
}

impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: imported {} rows of {} tables (exported from {} at schema {:04})",
            self.backend.dialect(),
            self.manifest.rows(),
            self.manifest.tables.len(),
            self.manifest.source,
            self.manifest.schema
        )
    }
}

/// Why an export or import failed. Nothing was written to the database.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Not a URL of a known backend, or a bad one.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// The source's migrations are not this build's.
    #[error(
        "the {dialect} database is at schema {found:04}, this build's is {want:04}:          {advice}"
    )]
    Schema {
        /// The backend.
        dialect: &'static str,
        /// The database's last migration (0: none).
        found: i64,
        /// This build's.
        want: i64,
        /// What to do.
        advice: &'static str,
    },
    /// A statement failed.
    #[error("{dialect} database, table {table}: {source}")]
    Database {
        /// The backend.
        dialect: &'static str,
        /// The table being read or written.
        table: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The export directory holds something already.
    #[error("{}: not empty; an export goes into a new or empty directory", .0.display())]
    NotEmptyDir(PathBuf),
    /// The target database holds rows.
    #[error(
        "the {dialect} database is not empty (table {table} has {rows} rows):          an import goes into a new database"
    )]
    NotEmpty {
        /// The backend.
        dialect: &'static str,
        /// The first table found with rows.
        table: &'static str,
        /// How many.
        rows: i64,
    },
    /// The manifest is missing, unreadable or of another format or schema.
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A line of a table's file does not fit the table.
    #[error("{}, line {line}: {message}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

/// The error of a statement on `table`.
fn failed(
    dialect: &'static str,
    table: &'static str,
) -> impl Fn(sqlx::Error) -> TransferError + Copy {
    move |source| TransferError::Database {
        dialect,
        table,
        source,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// This build's schema version.
pub fn schema_version() -> i64 {
    backend::SQLITE.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Exports the database `url` names into `dir` (created when missing; it
/// must be empty) and returns the manifest written.
pub async fn export(url: &str, dir: &Path) -> Result<Manifest, TransferError> {
    let backend = Backend::of_url(url).ok_or(MigrateError::Scheme)?;
    let name = backend.dialect();
    let connect = |e| TransferError::Migrate(MigrateError::Connect(name, e));
    prepare_dir(dir)?;
    match backend {
        Backend::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .map_err(connect)?
                .read_only(true);
            let mut conn = SqliteConnection::connect_with(&options)
                .await
                .map_err(connect)?;
            export_from::<sqlx::Sqlite>(&mut conn, backend, dir).await
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(url).await.map_err(connect)?;
            export_from::<sqlx::Postgres>(&mut conn, backend, dir).await
        }
        Backend::Mysql => {
            let mut conn = MySqlConnection::connect(&backend::mysql_url(url))
                .await
                .map_err(connect)?;
            export_from::<sqlx::MySql>(&mut conn, backend, dir).await
        }
    }
}

/// Imports the export in `dir` into the database `url` names, which must
/// hold no rows (its migrations are applied first).
pub async fn import(url: &str, dir: &Path) -> Result<ImportReport, TransferError> {
    let backend = Backend::of_url(url).ok_or(MigrateError::Scheme)?;
    let manifest = read_manifest(dir)?;
    backend::migrate(url).await?;
    let name = backend.dialect();
    let connect = |e| TransferError::Migrate(MigrateError::Connect(name, e));
    match backend {
        Backend::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .map_err(connect)?
                .foreign_keys(true);
            let mut conn = SqliteConnection::connect_with(&options)
                .await
                .map_err(connect)?;
            import_into::<sqlx::Sqlite>(&mut conn, backend, dir, &manifest).await?;
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(url).await.map_err(connect)?;
            import_into::<sqlx::Postgres>(&mut conn, backend, dir, &manifest).await?;
        }
        Backend::Mysql => {
            let mut conn = MySqlConnection::connect(&backend::mysql_url(url))
                .await
                .map_err(connect)?;
            import_into::<sqlx::MySql>(&mut conn, backend, dir, &manifest).await?;
        }
    }
    Ok(ImportReport { backend, manifest })
}

fn prepare_dir(dir: &Path) -> Result<(), TransferError> {
    crate::files::private_dir(dir).map_err(io(dir))?;
    if std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
        return Err(TransferError::NotEmptyDir(dir.to_path_buf()));
    }
    Ok(())
}

fn read_manifest(dir: &Path) -> Result<Manifest, TransferError> {
    let path = dir.join(MANIFEST);
    let bad = |message: String| TransferError::Manifest {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        bad(format!(
            "{e} (an export is complete only once its manifest is written)"
        ))
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| bad(format!("not a Cadre export manifest: {e}")))?;
    if manifest.format != FORMAT || manifest.version != FORMAT_VERSION {
        return Err(bad(format!(
            "format {} version {}; this build reads {FORMAT} version {FORMAT_VERSION}",
            manifest.format, manifest.version
        )));
    }
    if manifest.schema != schema_version() {
        return Err(bad(format!(
            "exported at schema {:04}, this build's is {:04}: import with the Cadre version              that exported it, migrate there, and export again",
            manifest.schema,
            schema_version()
        )));
    }
    for table in TABLES {
        if !manifest.tables.contains_key(table.name) {
            return Err(bad(format!("table {} is missing", table.name)));
        }
    }
    if let Some(extra) = manifest
        .tables
        .keys()
        .find(|k| !TABLES.iter().any(|t| t.name == k.as_str()))
    {
        return Err(bad(format!("unknown table {extra}")));
    }
    Ok(manifest)
}

fn quote(backend: Backend, ident: &str) -> String {
    match backend {
        Backend::Mysql => format!("`{ident}`"),
        _ => format!("\"{ident}\""),
    }
}

/// The expression that reads a column back as its kind's one Rust type
/// (`i64`, `bool`, `String`) in every dialect.
fn read_expr(backend: Backend, column: &Column) -> String {
    let q = quote(backend, column.name);
    match (backend, column.kind) {
        (Backend::Postgres, Int) => format!("{q}::BIGINT"),
        (Backend::Postgres, Json) => format!("{q}::TEXT"),
        (Backend::Mysql, Int) => format!("CAST({q} AS SIGNED)"),
        // `utf8mb4_bin` text reaches sqlx flagged binary (VARBINARY),
        // which it will not decode as a string; MariaDB's JSON is text.
        (Backend::Mysql, Text | Json) => format!("CAST({q} AS CHAR)"),
        _ => q,
    }
}

/// The highest id a serial column has handed out (deleted rows included).
fn last_id_sql(backend: Backend, table: &str, column: &str) -> String {
    match backend {
        Backend::Sqlite => format!("SELECT seq FROM sqlite_sequence WHERE name = '{table}'"),
        Backend::Postgres => format!(
            "SELECT pg_sequence_last_value(pg_get_serial_sequence('{table}', '{column}')::regclass)"
        ),
        Backend::Mysql => format!(
            "SELECT CAST(AUTO_INCREMENT AS SIGNED) - 1 FROM information_schema.tables \
             WHERE table_schema = DATABASE() AND table_name = '{table}'"
        ),
    }
}

/// Statements that make a serial column continue after `last`.
fn set_last_id_sql(backend: Backend, table: &str, column: &str, last: i64) -> Vec<String> {
    match backend {
        Backend::Sqlite => vec![
            format!("UPDATE sqlite_sequence SET seq = MAX(seq, {last}) WHERE name = '{table}'"),
            format!(
                "INSERT INTO sqlite_sequence (name, seq) SELECT '{table}', {last} \
                 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = '{table}')"
            ),
        ],
        Backend::Postgres => vec![format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
             GREATEST({last}, (SELECT COALESCE(MAX(\"{column}\"), 0) FROM \"{table}\"), 1), \
             {last} > 0 OR EXISTS (SELECT 1 FROM \"{table}\"))"
        )],
        Backend::Mysql => vec![format!(
            "ALTER TABLE `{table}` AUTO_INCREMENT = {}",
            last.saturating_add(1)
        )],
    }
}

async fn export_from<DB>(
    conn: &mut DB::Connection,
    backend: Backend,
    dir: &Path,
) -> Result<Manifest, TransferError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    use futures_util::TryStreamExt;
    let dialect = backend.dialect();
    let failed = |table| failed(dialect, table);
    // The bookkeeping table is read, never created: the source may be
    // opened read-only, and a database without it is simply unmigrated.
    let found: i64 = match sqlx::query_scalar::<DB, Option<i64>>(
        "SELECT MAX(version) FROM _sqlx_migrations WHERE success = TRUE",
    )
    .fetch_one(&mut *conn)
    .await
    {
        Ok(version) => version.unwrap_or(0),
        Err(e) if e.as_database_error().is_some() => 0,
        Err(e) => return Err(failed("_sqlx_migrations")(e)),
    };
    if found != schema_version() {
        return Err(TransferError::Schema {
            dialect,
            found,
            want: schema_version(),
            advice: if found < schema_version() {
                "run `cadre migrate` on it first"
            } else {
                "export it with the newer Cadre that migrated it"
            },
        });
    }
    let mut tx = conn.begin().await.map_err(failed("(begin)"))?;
    if backend == Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(failed("(begin)"))?;
    }
    if backend == Backend::Mysql {
        // MySQL 8 caches AUTO_INCREMENT in information_schema for a day
        // by default; MariaDB has no such setting, hence no error check.
        let _ = sqlx::query("SET SESSION information_schema_stats_expiry = 0")
            .execute(&mut *tx)
            .await;
    }
    let mut tables = BTreeMap::new();
    for table in TABLES {
        let fail = failed(table.name);
        let columns: Vec<String> = table
            .columns
            .iter()
            .map(|c| read_expr(backend, c))
            .collect();
        let mut sql = format!(
            "SELECT {} FROM {}",
            columns.join(", "),
            quote(backend, table.name)
        );
        if let Some(serial) = table.serial {
            sql.push_str(&format!(" ORDER BY {}", quote(backend, serial)));
        }
        let path = dir.join(format!("{}.jsonl", table.name));
        let file = crate::files::create_private(&path).map_err(io(&path))?;
        let mut out = std::io::BufWriter::new(file);
        let mut rows = 0u64;
        let mut max_id = 0i64;
        {
            let mut stream = sqlx::query(&sql).fetch(&mut *tx);
            while let Some(row) = stream.try_next().await.map_err(fail)? {
                let mut object = serde_json::Map::with_capacity(table.columns.len());
                for (i, column) in table.columns.iter().enumerate() {
                    let value = read_cell::<DB>(&row, i, column.kind).map_err(fail)?;
                    if Some(column.name) == table.serial
                        && let serde_json::Value::Number(n) = &value
                    {
                        max_id = max_id.max(n.as_i64().unwrap_or(0));
                    }
                    object.insert(column.name.to_string(), value);
                }
                serde_json::to_writer(&mut out, &object)
                    .map_err(|e| io(&path)(std::io::Error::other(e)))?;
                out.write_all(b"\n").map_err(io(&path))?;
                rows += 1;
            }
        }
        out.flush().map_err(io(&path))?;
        let last_id = match table.serial {
            Some(serial) => {
                let counter: Option<Option<i64>> =
                    sqlx::query_scalar(&last_id_sql(backend, table.name, serial))
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(failed(table.name))?;
                Some(counter.flatten().unwrap_or(0).max(max_id))
            }
            None => None,
        };
        tables.insert(table.name.to_string(), TableInfo { rows, last_id });
    }
    tx.commit().await.map_err(failed("(commit)"))?;
    let manifest = Manifest {
        format: FORMAT.to_string(),
        version: FORMAT_VERSION,
        schema: schema_version(),
        source: dialect.to_string(),
        exported_at: time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
        tables,
    };
    let path = dir.join(MANIFEST);
    let text =
        serde_json::to_vec_pretty(&manifest).map_err(|e| io(&path)(std::io::Error::other(e)))?;
    std::io::Write::write_all(
        &mut crate::files::create_private(&path).map_err(io(&path))?,
        &text,
    )
    .map_err(io(&path))?;
    Ok(manifest)
}

/// One value of a row as the export writes it.
fn read_cell<DB>(row: &DB::Row, i: usize, kind: Kind) -> Result<serde_json::Value, sqlx::Error>
where
    DB: Database,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    use serde_json::Value;
    Ok(match kind {
        Text | Json => row
            .try_get::<Option<String>, _>(i)?
            .map_or(Value::Null, Value::String),
        Int => row
            .try_get::<Option<i64>, _>(i)?
            .map_or(Value::Null, Value::from),
        Bool => row
            .try_get::<Option<bool>, _>(i)?
            .map_or(Value::Null, Value::Bool),
    })
}

/// One value of a line, checked against its column's kind.
#[derive(Debug)]
enum Cell {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
    Json(Option<String>),
}

fn parse_cell(column: &Column, value: serde_json::Value) -> Result<Cell, String> {
    use serde_json::Value;
    let wrong = |what: &str| format!("column {}: expected {what}", column.name);
    Ok(match (column.kind, value) {
        (Text, Value::Null) => Cell::Text(None),
        (Text, Value::String(s)) => Cell::Text(Some(s)),
        (Text, _) => return Err(wrong("a string or null")),
        (Int, Value::Null) => Cell::Int(None),
        (Int, Value::Number(n)) => Cell::Int(Some(
            n.as_i64()
                .ok_or_else(|| wrong("a 64-bit integer or null"))?,
        )),
        (Int, _) => return Err(wrong("a 64-bit integer or null")),
        (Bool, Value::Null) => Cell::Bool(None),
        (Bool, Value::Bool(b)) => Cell::Bool(Some(b)),
        (Bool, _) => return Err(wrong("true, false or null")),
        (Json, Value::Null) => Cell::Json(None),
        (Json, Value::String(s)) => {
            serde_json::from_str::<serde::de::IgnoredAny>(&s)
                .map_err(|e| format!("column {}: not a JSON document: {e}", column.name))?;
            Cell::Json(Some(s))
        }
        (Json, _) => return Err(wrong("a string holding a JSON document, or null")),
    })
}

/// A line of `<table>.jsonl` as the table's cells, in column order.
fn parse_line(table: &Table, line: &str) -> Result<Vec<Cell>, String> {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    let cells = table
        .columns
        .iter()
        .map(|column| {
            let value = object
                .remove(column.name)
                .ok_or_else(|| format!("column {} is missing", column.name))?;
            parse_cell(column, value)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(extra) = object.keys().next() {
        return Err(format!("unknown column {extra}"));
    }
    Ok(cells)
}

async fn import_into<DB>(
    conn: &mut DB::Connection,
    backend: Backend,
    dir: &Path,
    manifest: &Manifest,
) -> Result<(), TransferError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'a> Option<i64>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<bool>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<String>: Encode<'a, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    let dialect = backend.dialect();
    let failed = |table| failed(dialect, table);
    let mut tx = conn.begin().await.map_err(failed("(begin)"))?;
    for table in TABLES {
        let rows: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM {}",
            quote(backend, table.name)
        ))
        .fetch_one(&mut *tx)
        .await
        .map_err(failed(table.name))?;
        if rows > 0 {
            return Err(TransferError::NotEmpty {
                dialect,
                table: table.name,
                rows,
            });
        }
    }
    let per_insert = |table: &Table| (PARAMS_PER_INSERT / table.columns.len().max(1)).max(1);
    for table in TABLES {
        let path = dir.join(format!("{}.jsonl", table.name));
        let file = std::fs::File::open(&path).map_err(io(&path))?;
        let mut batch: Vec<Vec<Cell>> = Vec::with_capacity(per_insert(table));
        let mut line_no = 0u64;
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(io(&path))?;
            line_no += 1;
            if line.trim().is_empty() {
                return Err(TransferError::Line {
                    path,
                    line: line_no,
                    message: "empty line".into(),
                });
            }
            let cells = parse_line(table, &line).map_err(|message| TransferError::Line {
                path: path.clone(),
                line: line_no,
                message,
            })?;
            batch.push(cells);
            if batch.len() == per_insert(table) {
                insert::<DB>(&mut tx, backend, table, std::mem::take(&mut batch))
                    .await
                    .map_err(failed(table.name))?;
            }
        }
        if !batch.is_empty() {
            insert::<DB>(&mut tx, backend, table, batch)
                .await
                .map_err(failed(table.name))?;
        }
        let want = manifest.tables.get(table.name).map_or(0, |t| t.rows);
        if line_no != want {
            return Err(TransferError::Line {
                path,
                line: line_no,
                message: format!(
                    "the file ends after {line_no} rows, the manifest says {want} \
                     (a truncated or changed export)"
                ),
            });
        }
    }
    tx.commit().await.map_err(failed("(commit)"))?;
    // Id counters: after the commit (MySQL's `ALTER TABLE` would commit
    // the transaction half-way). A failure here leaves the data in place
    // and says so; running the statements again is harmless.
    for table in TABLES {
        let (Some(serial), Some(last)) = (
            table.serial,
            manifest.tables.get(table.name).and_then(|t| t.last_id),
        ) else {
            continue;
        };
        for sql in set_last_id_sql(backend, table.name, serial, last) {
            sqlx::query(&sql)
                .execute(&mut *conn)
                .await
                .map_err(failed(table.name))?;
        }
    }
    Ok(())
}

/// One multi-row `INSERT` of a batch.
async fn insert<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    backend: Backend,
    table: &Table,
    rows: Vec<Vec<Cell>>,
) -> Result<(), sqlx::Error>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> DB::Arguments<'a>: IntoArguments<'a, DB>,
    for<'a> Option<i64>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<bool>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<String>: Encode<'a, DB> + Type<DB>,
{
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|c| quote(backend, c.name))
        .collect();
    let mut sql = format!(
        "INSERT INTO {} ({}) VALUES ",
        quote(backend, table.name),
        columns.join(", ")
    );
    let mut n = 0usize;
    for (r, _) in rows.iter().enumerate() {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for (i, column) in table.columns.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            n += 1;
            match backend {
                Backend::Postgres => sql.push_str(&format!("${n}")),
                _ => sql.push('?'),
            }
            if backend == Backend::Postgres && column.kind == Json {
                sql.push_str("::JSONB");
            }
        }
        sql.push(')');
    }
    let mut query = sqlx::query::<DB>(&sql);
    for cell in rows.into_iter().flatten() {
        query = match cell {
            Cell::Text(v) | Cell::Json(v) => query.bind(v),
            Cell::Int(v) => query.bind(v),
            Cell::Bool(v) => query.bind(v),
        };
    }
    query.execute(&mut **tx).await.map(|_| ())
}
