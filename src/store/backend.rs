//! Which database a URL names, and the migrations of each dialect.
//!
//! `database.url` (`CADRE_DATABASE_URL`) picks the backend by its scheme:
//! `sqlite:` (the default, a file in the data directory), `postgres:` /
//! `postgresql:`, `mysql:` / `mariadb:` (MariaDB speaks the MySQL protocol).
//! Every dialect has its migrations under `migrations/<dialect>/` with the
//! same version numbers and names; `tests/databases.rs` fails when the
//! folders disagree, and applies each dialect to a real server.
//!
//! `cadre migrate` prepares any of the three, and `cadre serve` runs on any
//! of them (`any.rs`).

use sqlx::migrate::{Migrate, Migrator};
use sqlx::{Connection, MySqlConnection, PgConnection, SqliteConnection};
use std::str::FromStr;

/// The embedded migrations of each dialect.
pub static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
/// PostgreSQL's.
pub static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");
/// MySQL's and MariaDB's.
pub static MYSQL: Migrator = sqlx::migrate!("migrations/mysql");

/// A database backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

impl Backend {
    /// The backend a URL names by its scheme; `None` for any other.
    pub fn of_url(url: &str) -> Option<Backend> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "mysql" | "mariadb" => Some(Backend::Mysql),
            _ => None,
        }
    }

    /// The name of its migrations folder.
    pub fn dialect(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }

    /// Its embedded migrations.
    pub fn migrator(self) -> &'static Migrator {
        match self {
            Backend::Sqlite => &SQLITE,
            Backend::Postgres => &POSTGRES,
            Backend::Mysql => &MYSQL,
        }
    }
}

/// What `cadre migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// The backend.
    pub backend: Backend,
    /// Versions applied now, in order.
    pub applied: Vec<i64>,
    /// Versions that were applied before.
    pub already: Vec<i64>,
}

impl std::fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[i64]| {
            v.iter()
                .map(|n| format!("{n:04}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "{}: {} migration(s) applied",
            self.backend.dialect(),
            self.applied.len()
        )?;
        if !self.applied.is_empty() {
            write!(f, " ({})", list(&self.applied))?;
        }
        write!(f, ", {} already applied", self.already.len())
    }
}

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Not a URL of a known backend.
    #[error("database URL: unknown scheme (expected sqlite:, postgres: or mysql:)")]
    Scheme,
    /// The server could not be reached or refused the login.
    #[error("connecting to the {0} database: {1}")]
    Connect(&'static str, #[source] sqlx::Error),
    /// A migration failed, or the database holds migrations this build
    /// does not know (a newer Cadre ran on it).
    #[error("migrating the {0} database: {1}")]
    Migrate(&'static str, #[source] sqlx::migrate::MigrateError),
}

/// Applies the migrations of the backend `url` names, reporting what was new.
pub async fn migrate(url: &str) -> Result<MigrateReport, MigrateError> {
    let backend = Backend::of_url(url).ok_or(MigrateError::Scheme)?;
    let name = backend.dialect();
    let connect = |e| MigrateError::Connect(name, e);
    let fail = |e| MigrateError::Migrate(name, e);
    let migrator = backend.migrator();
    let before = match backend {
        Backend::Sqlite => {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .map_err(connect)?
                .create_if_missing(true);
            let mut conn = SqliteConnection::connect_with(&options)
                .await
                .map_err(connect)?;
            let before = applied(&mut conn).await.map_err(fail)?;
            migrator.run(&mut conn).await.map_err(fail)?;
            before
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(url).await.map_err(connect)?;
            let before = applied(&mut conn).await.map_err(fail)?;
            migrator.run(&mut conn).await.map_err(fail)?;
            before
        }
        Backend::Mysql => {
            let mut conn = MySqlConnection::connect(&mysql_url(url))
                .await
                .map_err(connect)?;
            let before = applied(&mut conn).await.map_err(fail)?;
            migrator.run(&mut conn).await.map_err(fail)?;
            before
        }
    };
    Ok(MigrateReport {
        backend,
        applied: migrator
            .iter()
            .map(|m| m.version)
            .filter(|v| !before.contains(v))
            .collect(),
        already: before,
    })
}

/// sqlx knows MariaDB's URLs by the `mysql:` scheme only.
pub fn mysql_url(url: &str) -> String {
    match url.split_once(':') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("mariadb") => format!("mysql:{rest}"),
        _ => url.to_string(),
    }
}

/// `url` with the password of its user part (`scheme://user:password@…`)
/// replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user, host)) if user.contains(':') => {
            let name = user.split_once(':').map_or(user, |(n, _)| n);
            format!("{scheme}://{name}:***@{host}{path}")
        }
        _ => url.to_string(),
    }
}

/// The versions a database has applied (creating the bookkeeping table).
async fn applied<C: Migrate>(conn: &mut C) -> Result<Vec<i64>, sqlx::migrate::MigrateError> {
    conn.ensure_migrations_table().await?;
    Ok(conn
        .list_applied_migrations()
        .await?
        .into_iter()
        .map(|m| m.version)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://cadre:s3cr%40t@db.example:5432/cadre?sslmode=require"),
            "postgres://cadre:***@db.example:5432/cadre?sslmode=require"
        );
        assert_eq!(
            redact("mysql://root@127.0.0.1/x"),
            "mysql://root@127.0.0.1/x"
        );
        assert_eq!(
            redact("sqlite:///var/lib/cadre/cadre.db"),
            "sqlite:///var/lib/cadre/cadre.db"
        );
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn schemes_pick_backends() {
        assert_eq!(Backend::of_url("sqlite://x.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of_url("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(
            Backend::of_url("postgres://u@h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::of_url("PostgreSQL://u@h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("mysql://u@h/db"), Some(Backend::Mysql));
        assert_eq!(Backend::of_url("mariadb://u@h/db"), Some(Backend::Mysql));
        assert_eq!(Backend::of_url("mongodb://h"), None);
        assert_eq!(Backend::of_url("cadre.db"), None);
        assert_eq!(mysql_url("mariadb://u@h/db"), "mysql://u@h/db");
        assert_eq!(mysql_url("mysql://u@h/db"), "mysql://u@h/db");
    }
}
