//! The tables every backend keeps with the same statements: one generic
//! [`Tables`] over the [`Dialect`], whose methods live beside their tables'
//! types (`identity.rs`: organizations, users, sessions, keys, the audit
//! log; `schedules.rs`; the HTTP layer's reads of agents, approvals and
//! tasks in `reads.rs`). SQLite's store and the server store each hand one
//! out (`SqlStore::tables`, `ServerStore::tables`).
//!
//! On SQLite reads go to the reader pool and writes to the one writer
//! connection; on a server one pool serves both. Writes that lose their
//! connection before the commit are tried again (`server::retry`). What
//! SQLite's single writer guarantees by serializing, a server gets from row
//! locks taken in the same transaction (`Dialect::FOR_UPDATE`).

use super::server::{Attempt, stmt};
use super::sqlite::unavailable;
use cadre_actors::audit::AuditEntry;
use cadre_actors::ports::StoreError;
use sqlx::{Database, Pool};

/// The generic tables of one database.
#[derive(Debug)]
pub struct Tables<D: Database> {
    pub(super) read: Pool<D>,
    pub(super) write: Pool<D>,
}

impl<D: Database> Clone for Tables<D> {
    fn clone(&self) -> Self {
        Tables {
            read: self.read.clone(),
            write: self.write.clone(),
        }
    }
}

impl<D: Database> Tables<D> {
    /// Reads on `read`, writes on `write` (the same pool on a server).
    pub fn new(read: Pool<D>, write: Pool<D>) -> Tables<D> {
        Tables { read, write }
    }
}

/// The statement type every method builds.
pub(super) type Query<'q, D> = sqlx::query::Query<'q, D, <D as Database>::Arguments<'q>>;

/// A value bound to a statement built at run time (filters, multi-row
/// inserts): `sqlx::QueryBuilder` over a generic dialect cannot be run
/// without borrowing itself for its arguments' whole lifetime.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    /// Text.
    Text(&'a str),
    /// Text or NULL.
    MaybeText(Option<&'a str>),
    /// A 64-bit integer.
    Int(i64),
    /// A 64-bit integer or NULL.
    MaybeInt(Option<i64>),
}

/// A statement built at run time: its text with `?` placeholders and the
/// values bound to them, in order.
#[derive(Debug, Clone)]
pub(super) struct Built<'a> {
    sql: String,
    args: Vec<Arg<'a>>,
}

impl<'a> Built<'a> {
    /// `sql` with `args` for its placeholders so far.
    pub(super) fn new(sql: impl Into<String>, args: impl IntoIterator<Item = Arg<'a>>) -> Self {
        Built {
            sql: sql.into(),
            args: args.into_iter().collect(),
        }
    }

    /// Appends `clause` (text with one `?`) bound to `arg`.
    pub(super) fn push(&mut self, clause: &str, arg: Arg<'a>) -> &mut Self {
        self.sql.push_str(clause);
        self.args.push(arg);
        self
    }

    /// Appends `clause` when there is an `arg` (an optional filter).
    pub(super) fn filter(&mut self, clause: &str, arg: Option<Arg<'a>>) -> &mut Self {
        if let Some(arg) = arg {
            self.push(clause, arg);
        }
        self
    }
}

/// `rows` groups of `columns` placeholders, `(?, ?), (?, ?)`; `json`
/// names the column (0-based) whose placeholder takes `D::JSON` after it.
pub(super) fn placeholders(rows: usize, columns: usize, json: Option<(usize, &str)>) -> String {
    let one: Vec<String> = (0..columns)
        .map(|c| match json {
            Some((j, cast)) if j == c => format!("?{cast}"),
            _ => "?".to_string(),
        })
        .collect();
    let one = format!("({})", one.join(", "));
    vec![one; rows].join(", ")
}

on_dialects! {
    impl<D> Tables<D> {
        /// Writes one audit entry on `conn` (inside the caller's transaction).
        pub(crate) async fn insert_audit(
            conn: &mut D::Connection,
            a: &AuditEntry,
        ) -> Result<(), sqlx::Error> {
            let sql = D::sql(&format!(
                "INSERT INTO audit_log (org_id, actor, action, target, summary, request_id, client, at) \
                 VALUES (?, ?, ?, ?, ?{}, ?, ?, ?)",
                D::JSON
            ));
            sqlx::query(&sql)
                .bind(a.org_id.as_str())
                .bind(a.actor.as_str())
                .bind(a.action.as_str())
                .bind(a.target.as_str())
                .bind(a.summary.to_string())
                .bind(a.request_id.as_deref())
                .bind(a.client.as_deref())
                .bind(a.at)
                .execute(conn)
                .await
                .map(|_| ())
        }

        /// [`Tables::insert_audit`] inside a retried write.
        pub(super) async fn audit_in(conn: &mut D::Connection, a: &AuditEntry) -> Result<(), Attempt> {
            Self::insert_audit(conn, a).await.map_err(stmt)
        }

        /// Runs a statement on `conn`, returning the rows it changed (matched
        /// on MySQL).
        pub(super) async fn run<'q>(conn: &mut D::Connection, query: Query<'q, D>) -> Result<u64, Attempt> {
            let done = query.execute(conn).await.map_err(stmt)?;
            Ok(D::rows_affected(&done))
        }

        /// The rows `sql` (with `?` placeholders) selects on the reader, each
        /// placeholder bound to the text in `args`, in order.
        pub(super) async fn rows(&self, sql: &str, args: &[&str]) -> Result<Vec<D::Row>, StoreError> {
            Self::rows_on(&self.read, sql, args).await
        }

        /// Like [`Tables::rows`], on `pool`.
        pub(super) async fn rows_on(
            pool: &Pool<D>,
            sql: &str,
            args: &[&str],
        ) -> Result<Vec<D::Row>, StoreError> {
            let sql = D::sql(sql);
            let mut query = sqlx::query(&sql);
            for a in args {
                query = query.bind(*a);
            }
            query.fetch_all(pool).await.map_err(unavailable)
        }

        /// The first row `sql` selects on the reader, if any (see [`Tables::rows`]).
        pub(super) async fn row(&self, sql: &str, args: &[&str]) -> Result<Option<D::Row>, StoreError> {
            Self::row_on(&self.read, sql, args).await
        }

        /// Like [`Tables::row`], on `pool`.
        pub(super) async fn row_on(
            pool: &Pool<D>,
            sql: &str,
            args: &[&str],
        ) -> Result<Option<D::Row>, StoreError> {
            let sql = D::sql(sql);
            let mut query = sqlx::query(&sql);
            for a in args {
                query = query.bind(*a);
            }
            query.fetch_optional(pool).await.map_err(unavailable)
        }

        /// The one row `sql` selects inside a write's transaction (see
        /// [`Tables::rows`]).
        pub(super) async fn row_in(
            conn: &mut D::Connection,
            sql: &str,
            args: &[&str],
        ) -> Result<D::Row, Attempt> {
            let sql = D::sql(sql);
            let mut query = sqlx::query(&sql);
            for a in args {
                query = query.bind(*a);
            }
            query.fetch_one(conn).await.map_err(stmt)
        }

        /// `query` with `args` bound in order.
        pub(super) fn bind_all<'q>(mut query: Query<'q, D>, args: &[Arg<'q>]) -> Query<'q, D> {
            for a in args {
                query = match *a {
                    Arg::Text(v) => query.bind(v),
                    Arg::MaybeText(v) => query.bind(v),
                    Arg::Int(v) => query.bind(v),
                    Arg::MaybeInt(v) => query.bind(v),
                };
            }
            query
        }

        /// The rows a [`Built`] statement selects on the reader.
        pub(super) async fn fetch(&self, b: &Built<'_>) -> Result<Vec<D::Row>, StoreError> {
            let sql = D::sql(&b.sql);
            Self::bind_all(sqlx::query(&sql), &b.args)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)
        }

        /// Runs `sql` (with `?` placeholders) bound to `args` on `conn`:
        /// the rows it changed (matched on MySQL).
        pub(super) async fn exec(conn: &mut D::Connection, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
            let sql = D::sql(sql);
            let done = Self::bind_all(sqlx::query(&sql), args)
                .execute(conn)
                .await
                .map_err(unavailable)?;
            Ok(D::rows_affected(&done))
        }

        /// The rows `sql` bound to `args` selects on `conn`.
        pub(super) async fn select(conn: &mut D::Connection, sql: &str, args: &[Arg<'_>]) -> Result<Vec<D::Row>, StoreError> {
            let sql = D::sql(sql);
            Self::bind_all(sqlx::query(&sql), args)
                .fetch_all(conn)
                .await
                .map_err(unavailable)
        }

        /// A write transaction.
        pub(super) async fn begin(&self) -> Result<sqlx::Transaction<'static, D>, Attempt> {
            super::begin(&self.write).await.map_err(stmt)
        }
    }
}
