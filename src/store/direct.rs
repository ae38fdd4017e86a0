//! Statements run directly on SQLite's writer connection, without a
//! thread hop per statement.
//!
//! sqlx-sqlite runs every statement as a round trip to the connection's
//! worker thread: a command over a channel, the statement, the result (and
//! each returned row) back over another channel, and a wake-up of the task
//! on either side. On two cores under load a round trip costs tens to
//! hundreds of microseconds, far more than SQLite's work on the row, so the
//! high-volume writes (approval settlements, activity flushes) spent most of
//! their time handing off, and held the one writer connection meanwhile
//! (measured in BENCHMARKS.md, "Governance").
//!
//! [`within`] takes the connection's SQLite handle out of its worker thread
//! (sqlx's `lock_handle`, made for direct SQLite calls) and runs a closure
//! of plain rusqlite statements on it, in the caller's open sqlx
//! transaction. The closure runs on the calling thread; large work moves
//! off the async worker with `block_in_place`. The transaction is still
//! sqlx's: begun, committed or rolled back (also when a panic unwinds
//! through the caller) as before.

use cadre_actors::audit::AuditEntry;
use cadre_actors::ports::StoreError;
use sqlx::SqliteConnection;

/// Work of more rows than this leaves the async worker thread while it runs
/// (`block_in_place`), so it cannot stall the tasks queued behind it.
const INLINE_ROWS: usize = 256;

/// Runs `work` on `conn`'s SQLite handle, inside the transaction `conn` is
/// in. `rows` is about how many rows `work` writes (see [`INLINE_ROWS`]).
#[allow(unsafe_code)]
pub(super) async fn within<T>(
    conn: &mut SqliteConnection,
    rows: usize,
    work: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut locked = conn
        .lock_handle()
        .await
        .map_err(|e| StoreError::Unavailable(format!("SQLite handle: {e}")))?;
    let raw = locked.as_raw_handle().as_ptr();
    // SAFETY: `raw` is the live handle of the connection `locked` holds: sqlx
    // guarantees nothing else uses it (its worker thread waits on the lock)
    // and that it stays open until `locked` is dropped. The rusqlite
    // connection made from it does not own it (`from_handle` never closes
    // it), is used only by `work` on this thread, and is dropped (its cached
    // statements finalized) before `locked` is. SQLite is built thread-safe
    // by libsqlite3-sys and sqlx opens connections without the shared
    // mutex, which allows a connection to be used from any one thread at a
    // time.
    let db = unsafe { rusqlite::Connection::from_handle(raw) }
        .map_err(|e| StoreError::Unavailable(format!("SQLite handle: {e}")))?;
    let heavy = rows > INLINE_ROWS
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let out = if heavy {
        tokio::task::block_in_place(|| work(&db))
    } else {
        work(&db)
    };
    drop(db);
    drop(locked);
    out
}

/// Runs `work` in a transaction of its own on `conn`'s handle: `BEGIN`,
/// the statements, and `COMMIT` when `work` returns `Ok` (a failed commit
/// is an error), `ROLLBACK` when it returns `Err` or panics. Nothing awaits
/// between `BEGIN` and its end, so a caller that goes away cannot leave the
/// connection inside the transaction (see `store::begin`).
pub(super) async fn transaction<T>(
    conn: &mut SqliteConnection,
    rows: usize,
    work: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    within(conn, rows, |db| {
        db.execute_batch("BEGIN").map_err(unavailable)?;
        let open = Open(db);
        let out = work(db)?;
        db.execute_batch("COMMIT").map_err(unavailable)?;
        drop(open);
        Ok(out)
    })
    .await
}

/// Rolls back a transaction [`transaction`] began and did not end (an
/// error or a panic in its work, a failed commit).
struct Open<'a>(&'a rusqlite::Connection);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        if !self.0.is_autocommit() && self.0.execute_batch("ROLLBACK").is_err() {
            tracing::error!("ROLLBACK of a direct transaction failed");
        }
    }
}

/// A failed statement: a unique or primary-key violation is a
/// [`StoreError::Conflict`], anything else unavailability.
pub(super) fn classify(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && matches!(
            f.extended_code,
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        )
    {
        return StoreError::Conflict(e.to_string());
    }
    StoreError::Unavailable(e.to_string())
}

/// Any failure as unavailability (for statements whose constraints were
/// decided before they ran).
pub(super) fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Writes one audit entry (the statement of `Tables::insert_audit`).
pub(super) fn insert_audit(db: &rusqlite::Connection, a: &AuditEntry) -> Result<(), StoreError> {
    db.prepare_cached(
        "INSERT INTO audit_log (org_id, actor, action, target, summary, request_id, client, at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .and_then(|mut s| {
        s.execute(rusqlite::params![
            a.org_id.as_str(),
            a.actor.as_str(),
            a.action.as_str(),
            a.target.as_str(),
            a.summary.to_string(),
            a.request_id.as_deref(),
            a.client.as_deref(),
            a.at,
        ])
    })
    .map(|_| ())
    .map_err(unavailable)
}
