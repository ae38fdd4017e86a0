//! Identity and audit tables: organizations, users, sessions (refresh-token
//! families), API keys, login throttling and the audit log.
//!
//! Every mutation here runs in one transaction together with its audit entry,
//! on the single writer connection. Plan limits (users) are checked inside
//! that transaction, so concurrent requests can never exceed them.

use super::sqlite::{classify, unavailable};
use super::{SqlStore, to_i64, to_u64};
use cadre_actors::audit::AuditEntry;
use cadre_actors::ports::StoreError;
use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

fn get<'r, T>(r: &'r SqliteRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    r.try_get(col).map_err(unavailable)
}

/// Writes one audit entry on `conn` (inside the caller's transaction).
pub(crate) async fn insert_audit(
    conn: &mut SqliteConnection,
    a: &AuditEntry,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO audit_log (org_id, actor, action, target, summary, request_id, client, at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(a.org_id.as_str())
    .bind(&a.actor)
    .bind(&a.action)
    .bind(&a.target)
    .bind(a.summary.to_string())
    .bind(a.request_id.as_deref())
    .bind(a.client.as_deref())
    .bind(a.at)
    .execute(conn)
    .await
    .map(|_| ())
}

/// An organization row.
#[derive(Debug, Clone)]
pub struct OrgRow {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Unique slug.
    pub slug: String,
    /// Plan name.
    pub plan: String,
    /// Limit overrides (JSON object).
    pub limits: String,
    /// When it was suspended.
    pub suspended_at: Option<i64>,
    /// Created.
    pub created_at: i64,
    /// Days of activity kept (`None`: the configured default).
    pub activity_retention_days: Option<i64>,
    /// IANA time zone: budget periods roll over at its midnight.
    pub timezone: String,
    /// `daily`, `weekly` or `monthly`: the period of the organization's limits.
    pub budget_period: String,
}

/// A user row (without the password hash unless asked).
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// Id.
    pub id: String,
    /// Organization.
    pub org_id: String,
    /// Email.
    pub email: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Instance admin.
    pub instance_admin: bool,
    /// Access tokens issued before this (unix seconds) are refused.
    pub sessions_after: i64,
    /// Argon2 PHC string.
    pub password_hash: String,
    /// Created.
    pub created_at: i64,
}

/// An API key row (never the secret).
#[derive(Debug, Clone)]
pub struct KeyRecord {
    /// Id.
    pub id: String,
    /// Organization.
    pub org_id: String,
    /// Name.
    pub name: String,
    /// SHA-256 of the secret.
    pub secret_hash: String,
    /// Scopes (JSON array).
    pub scopes: Vec<String>,
    /// Creator's user id.
    pub created_by: String,
    /// Created.
    pub created_at: i64,
    /// Expiry.
    pub expires_at: Option<i64>,
    /// Last use.
    pub last_used_at: Option<i64>,
    /// Revocation.
    pub revoked_at: Option<i64>,
}

/// One audit entry as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    /// Monotonic id (the cursor).
    pub id: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub target: String,
    /// Redacted summary.
    pub summary: serde_json::Value,
    /// Request id.
    pub request_id: Option<String>,
    /// Client address.
    pub client: Option<String>,
    /// RFC 3339.
    pub at: String,
}

/// Filters of an audit query.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Exact actor (`user:<id>`, `key:<id>`, …).
    pub actor: Option<String>,
    /// Exact action, or a prefix ending in `.` (`agent.`).
    pub action: Option<String>,
    /// Exact target.
    pub target: Option<String>,
    /// Entries with id below this (newest first paging).
    pub before: Option<i64>,
}

/// Organization usage this month.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct OrgUsage {
    /// Live agents.
    pub agents: i64,
    /// Users.
    pub users: i64,
    /// Tokens counted this month.
    pub tokens: i64,
    /// Cost this month in micro-dollars.
    pub cost_micros: i64,
}

/// What a refresh-token rotation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// Rotated: the token's user and organization.
    Rotated {
        /// User.
        user_id: String,
        /// Organization.
        org_id: String,
        /// The family the new token continues.
        family: String,
    },
    /// The token had been used or revoked already: its family is now revoked.
    Reused {
        /// User.
        user_id: String,
        /// Organization.
        org_id: String,
    },
    /// Unknown or expired.
    Invalid,
}

fn org_row(r: &SqliteRow) -> Result<OrgRow, StoreError> {
    Ok(OrgRow {
        id: get(r, "id")?,
        name: get(r, "name")?,
        slug: get(r, "slug")?,
        plan: get(r, "plan")?,
        limits: get(r, "limits")?,
        suspended_at: get(r, "suspended_at")?,
        created_at: get(r, "created_at")?,
        activity_retention_days: get(r, "activity_retention_days")?,
        timezone: get(r, "timezone")?,
        budget_period: get(r, "budget_period")?,
    })
}

fn user_row(r: &SqliteRow) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        id: get(r, "id")?,
        org_id: get(r, "org_id")?,
        email: get(r, "email")?,
        name: get(r, "name")?,
        role: get(r, "role")?,
        instance_admin: get::<i64>(r, "instance_admin")? != 0,
        sessions_after: get(r, "sessions_after")?,
        password_hash: get(r, "password_hash")?,
        created_at: get(r, "created_at")?,
    })
}

fn key_row(r: &SqliteRow) -> Result<KeyRecord, StoreError> {
    let scopes: String = get(r, "scopes")?;
    Ok(KeyRecord {
        id: get(r, "id")?,
        org_id: get(r, "org_id")?,
        name: get(r, "name")?,
        secret_hash: get(r, "secret_hash")?,
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
        created_by: get(r, "created_by")?,
        created_at: get(r, "created_at")?,
        expires_at: get(r, "expires_at")?,
        last_used_at: get(r, "last_used_at")?,
        revoked_at: get(r, "revoked_at")?,
    })
}

const ORG_COLS: &str = "id, name, slug, plan, limits, suspended_at, created_at, activity_retention_days, timezone, budget_period";
const USER_COLS: &str =
    "id, org_id, email, name, role, instance_admin, sessions_after, password_hash, created_at";
const KEY_COLS: &str = "id, org_id, name, secret_hash, scopes, created_by, created_at, expires_at, last_used_at, revoked_at";

/// A new user.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    /// Id.
    pub id: &'a str,
    /// Organization.
    pub org_id: &'a str,
    /// Email.
    pub email: &'a str,
    /// Name.
    pub name: &'a str,
    /// Role.
    pub role: &'a str,
    /// Argon2 PHC string.
    pub password_hash: &'a str,
    /// Instance admin.
    pub instance_admin: bool,
    /// Created.
    pub now: i64,
}

async fn insert_user(conn: &mut SqliteConnection, u: &NewUser<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO users (id, org_id, email, name, role, password_hash, instance_admin, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(u.id)
    .bind(u.org_id)
    .bind(u.email)
    .bind(u.name)
    .bind(u.role)
    .bind(u.password_hash)
    .bind(i64::from(u.instance_admin))
    .bind(u.now)
    .bind(u.now)
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(classify)
}

/// family, user, org, expires_at, used_at, revoked_at.
type RefreshRow = (String, String, String, i64, Option<i64>, Option<i64>);

/// A new refresh token.
#[derive(Debug, Clone, Copy)]
pub struct NewRefresh<'a> {
    /// SHA-256 of the token.
    pub hash: &'a str,
    /// Session family.
    pub family: &'a str,
    /// User.
    pub user: &'a str,
    /// Organization.
    pub org: &'a str,
    /// Now.
    pub now_ms: i64,
    /// Expiry.
    pub expires_ms: i64,
}

/// A change to a user.
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    /// New name.
    pub name: Option<String>,
    /// New role.
    pub role: Option<String>,
    /// New password hash.
    pub password_hash: Option<String>,
}

impl SqlStore {
    async fn tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.write_pool().begin().await.map_err(unavailable)
    }

    /// Every organization.
    pub async fn all_orgs(&self) -> Result<Vec<OrgRow>, StoreError> {
        let sql = format!("SELECT {ORG_COLS} FROM orgs ORDER BY id");
        let rows = sqlx::query(&sql)
            .fetch_all(self.read_pool())
            .await
            .map_err(unavailable)?;
        rows.iter().map(org_row).collect()
    }

    /// One organization.
    pub async fn org(&self, id: &str) -> Result<Option<OrgRow>, StoreError> {
        let sql = format!("SELECT {ORG_COLS} FROM orgs WHERE id = ?");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.read_pool())
            .await
            .map_err(unavailable)?;
        row.as_ref().map(org_row).transpose()
    }

    /// Every user (for the in-memory session directory).
    pub async fn all_users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let sql = format!("SELECT {USER_COLS} FROM users");
        let rows = sqlx::query(&sql)
            .fetch_all(self.read_pool())
            .await
            .map_err(unavailable)?;
        rows.iter().map(user_row).collect()
    }

    /// Every API key (for the in-memory key directory).
    pub async fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = format!("SELECT {KEY_COLS} FROM api_keys");
        let rows = sqlx::query(&sql)
            .fetch_all(self.read_pool())
            .await
            .map_err(unavailable)?;
        rows.iter().map(key_row).collect()
    }

    /// A user by email (case-insensitive), for login.
    pub async fn user_record_by_email(
        &self,
        email: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE lower(email) = lower(?)");
        let row = sqlx::query(&sql)
            .bind(email)
            .fetch_optional(self.read_pool())
            .await
            .map_err(unavailable)?;
        row.as_ref().map(user_row).transpose()
    }

    /// A user of `org`.
    pub async fn user(&self, org: &str, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE org_id = ? AND id = ?");
        let row = sqlx::query(&sql)
            .bind(org)
            .bind(id)
            .fetch_optional(self.read_pool())
            .await
            .map_err(unavailable)?;
        row.as_ref().map(user_row).transpose()
    }

    /// A page of `org`'s users, in id order after `after`.
    pub async fn users_page(
        &self,
        org: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<UserRecord>, StoreError> {
        self.id_page(USER_COLS, "users", Some(org), after, limit, user_row)
            .await
    }

    /// A page of `org`'s API keys, in id order after `after`.
    pub async fn keys_page(
        &self,
        org: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.id_page(KEY_COLS, "api_keys", Some(org), after, limit, key_row)
            .await
    }

    /// A page of organizations (instance admins), in id order after `after`.
    pub async fn orgs_page(&self, after: &str, limit: i64) -> Result<Vec<OrgRow>, StoreError> {
        self.id_page(ORG_COLS, "orgs", None, after, limit, org_row)
            .await
    }

    /// Rows of `table` with ids after `after`, in id order; only `org`'s when
    /// given (every tenant table is filtered by its org).
    async fn id_page<T>(
        &self,
        cols: &str,
        table: &str,
        org: Option<&str>,
        after: &str,
        limit: i64,
        map: fn(&SqliteRow) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
            "SELECT {cols} FROM {table} WHERE id > "
        ));
        q.push_bind(after.to_string());
        if let Some(org) = org {
            q.push(" AND org_id = ").push_bind(org.to_string());
        }
        q.push(" ORDER BY id LIMIT ").push_bind(limit);
        let rows = q
            .build()
            .fetch_all(self.read_pool())
            .await
            .map_err(unavailable)?;
        rows.iter().map(map).collect()
    }

    /// Usage of `org` in `period` (`YYYY-MM`).
    pub async fn org_usage(&self, org: &str, period: &str) -> Result<OrgUsage, StoreError> {
        let row = sqlx::query(
            "SELECT \
               (SELECT agent_count FROM orgs WHERE id = ?1) AS agents, \
               (SELECT COUNT(*) FROM users WHERE org_id = ?1) AS users, \
               (SELECT COALESCE(SUM(tokens), 0) FROM org_usage WHERE org_id = ?1 AND period = ?2) AS tokens, \
               (SELECT COALESCE(SUM(cost_micros), 0) FROM org_usage WHERE org_id = ?1 AND period = ?2) AS cost",
        )
        .bind(org)
        .bind(period)
        .fetch_one(self.read_pool())
        .await
        .map_err(unavailable)?;
        Ok(OrgUsage {
            agents: get::<Option<i64>>(&row, "agents")?.unwrap_or(0),
            users: get(&row, "users")?,
            tokens: get(&row, "tokens")?,
            cost_micros: get(&row, "cost")?,
        })
    }

    /// Every organization's spend per period since the start of last year
    /// (periods are `YYYY-…`, so they compare as text): (org, period,
    /// tokens, micro-dollars). The caller picks each organization's current
    /// period, which depends on its time zone and period kind.
    pub async fn org_spend(&self) -> Result<Vec<(String, String, u64, u64)>, StoreError> {
        let since = time::OffsetDateTime::now_utc().year() - 1;
        let rows = sqlx::query(
            "SELECT org_id, period, tokens, cost_micros FROM org_usage WHERE period >= ?",
        )
        .bind(format!("{since:04}"))
        .fetch_all(self.read_pool())
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                Ok((
                    get(r, "org_id")?,
                    get(r, "period")?,
                    to_u64(get(r, "tokens")?),
                    to_u64(get(r, "cost_micros")?),
                ))
            })
            .collect()
    }

    /// A page of `org`'s audit log, newest first.
    pub async fn audit_page(
        &self,
        org: &str,
        f: &AuditFilter,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT id, actor, action, target, summary, request_id, client, at FROM audit_log WHERE org_id = ",
        );
        q.push_bind(org);
        if let Some(a) = &f.actor {
            q.push(" AND actor = ").push_bind(a.clone());
        }
        match f.action.as_deref() {
            Some(a) if a.ends_with('.') => {
                q.push(" AND substr(action, 1, ")
                    .push_bind(a.len() as i64)
                    .push(") = ")
                    .push_bind(a.to_string());
            }
            Some(a) => {
                q.push(" AND action = ").push_bind(a.to_string());
            }
            None => {}
        }
        if let Some(t) = &f.target {
            q.push(" AND target = ").push_bind(t.clone());
        }
        if let Some(b) = f.before {
            q.push(" AND id < ").push_bind(b);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
        let rows = q
            .build()
            .fetch_all(self.read_pool())
            .await
            .map_err(unavailable)?;
        rows.iter()
            .map(|r| {
                let summary: String = get(r, "summary")?;
                Ok(AuditRow {
                    id: get(r, "id")?,
                    actor: get(r, "actor")?,
                    action: get(r, "action")?,
                    target: get(r, "target")?,
                    summary: serde_json::from_str(&summary).unwrap_or(serde_json::Value::Null),
                    request_id: get(r, "request_id")?,
                    client: get(r, "client")?,
                    at: cadre_actors::domain::rfc3339(get(r, "at")?),
                })
            })
            .collect()
    }

    /// Audit entries of every organization after `after`, oldest first: `(id,
    /// org, at ms, actor, action, target, summary JSON, request id)` (the
    /// activity stream's audit bridge).
    #[allow(clippy::type_complexity)]
    pub async fn audit_since(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<
        Vec<(
            i64,
            String,
            i64,
            String,
            String,
            String,
            String,
            Option<String>,
        )>,
        StoreError,
    > {
        sqlx::query_as(
            "SELECT id, org_id, at, actor, action, target, summary, request_id FROM audit_log \
             WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.read_pool())
        .await
        .map_err(unavailable)
    }

    /// The highest audit entry id (0 when there is none).
    pub async fn last_audit_id(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM audit_log")
            .fetch_one(self.read_pool())
            .await
            .map_err(unavailable)
    }

    /// Writes an audit entry on its own (changes with no other row, e.g. a login).
    pub async fn append_audit(&self, a: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.tx().await?;
        insert_audit(&mut tx, a).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    /// Creates an organization and its owner.
    pub async fn create_org(
        &self,
        org: &OrgRow,
        owner: &NewUser<'_>,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.tx().await?;
        sqlx::query(
            "INSERT INTO orgs (id, name, slug, plan, limits, created_at, timezone, budget_period) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&org.id)
        .bind(&org.name)
        .bind(&org.slug)
        .bind(&org.plan)
        .bind(&org.limits)
        .bind(org.created_at)
        .bind(&org.timezone)
        .bind(&org.budget_period)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        insert_user(&mut tx, owner).await?;
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    /// Changes an organization's plan and/or limit overrides; `false` if it does not exist.
    /// `retention`: `Some(days)` sets the organization's activity
    /// retention (`Some(None)`: back to the default), `None` keeps it.
    pub async fn update_org(
        &self,
        id: &str,
        plan: Option<&str>,
        limits: Option<&str>,
        retention: Option<Option<i64>>,
        zone: (Option<&str>, Option<&str>),
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.tx().await?;
        let done = sqlx::query(
            "UPDATE orgs SET plan = COALESCE(?1, plan), limits = COALESCE(?2, limits), \
             activity_retention_days = CASE WHEN ?3 THEN ?4 ELSE activity_retention_days END, \
             timezone = COALESCE(?6, timezone), budget_period = COALESCE(?7, budget_period) \
             WHERE id = ?5",
        )
        .bind(plan)
        .bind(limits)
        .bind(retention.is_some())
        .bind(retention.flatten())
        .bind(id)
        .bind(zone.0)
        .bind(zone.1)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    /// Suspends (`Some(at)`) or resumes (`None`) an organization; `false` if it does not exist.
    pub async fn set_org_suspended(
        &self,
        id: &str,
        at: Option<i64>,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.tx().await?;
        let done = sqlx::query("UPDATE orgs SET suspended_at = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    /// Creates a user, refusing with `LimitReached` when the organization
    /// already has `max_users` (checked in the insert's transaction).
    pub async fn create_user(
        &self,
        user: &NewUser<'_>,
        max_users: Option<u64>,
        audit: &AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.tx().await?;
        if let Some(max) = max_users {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE org_id = ?")
                .bind(user.org_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
            if n >= to_i64(max) {
                return Err(StoreError::LimitReached(format!(
                    "the organization's plan allows at most {max} users"
                )));
            }
        }
        insert_user(&mut tx, user).await?;
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    /// Changes a user; a role or password change moves `sessions_after` to
    /// `now_ms` and revokes every refresh token of the user. `None` if the
    /// user is not in `org`.
    pub async fn update_user(
        &self,
        org: &str,
        id: &str,
        change: &UserChange,
        now_ms: i64,
        audit: &AuditEntry,
    ) -> Result<Option<UserRecord>, StoreError> {
        let mut tx = self.tx().await?;
        let revoke = change.role.is_some() || change.password_hash.is_some();
        let sql = format!(
            "UPDATE users SET name = COALESCE(?, name), role = COALESCE(?, role), \
             password_hash = COALESCE(?, password_hash), \
             sessions_after = CASE WHEN ? THEN ? ELSE sessions_after END, updated_at = ? \
             WHERE org_id = ? AND id = ? RETURNING {USER_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(change.name.as_deref())
            .bind(change.role.as_deref())
            .bind(change.password_hash.as_deref())
            .bind(revoke)
            .bind(now_ms)
            .bind(now_ms)
            .bind(org)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let user = user_row(&row)?;
        if revoke {
            revoke_user_tokens(&mut tx, id, now_ms).await?;
        }
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(user))
    }

    /// Deletes a user, their sessions, and revokes the API keys they created.
    /// `false` if the user is not in `org`.
    pub async fn delete_user(
        &self,
        org: &str,
        id: &str,
        now_ms: i64,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.tx().await?;
        let done = sqlx::query("DELETE FROM users WHERE org_id = ? AND id = ?")
            .bind(org)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        revoke_user_tokens(&mut tx, id, now_ms).await?;
        sqlx::query(
            "UPDATE api_keys SET revoked_at = ? WHERE created_by = ? AND revoked_at IS NULL",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    /// Stores a new API key.
    pub async fn create_key(&self, key: &KeyRecord, audit: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.tx().await?;
        sqlx::query(
            "INSERT INTO api_keys (id, org_id, name, secret_hash, scopes, created_by, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.id)
        .bind(&key.org_id)
        .bind(&key.name)
        .bind(&key.secret_hash)
        .bind(serde_json::to_string(&key.scopes).unwrap_or_else(|_| "[]".into()))
        .bind(&key.created_by)
        .bind(key.created_at)
        .bind(key.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    /// Revokes a key of `org` (idempotent); `None` if there is no such key.
    pub async fn revoke_key(
        &self,
        org: &str,
        id: &str,
        now_ms: i64,
        audit: &AuditEntry,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let mut tx = self.tx().await?;
        let sql = format!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE org_id = ? AND id = ? RETURNING {KEY_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(now_ms)
            .bind(org)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        let Some(row) = row else {
            return Ok(None);
        };
        insert_audit(&mut tx, audit).await.map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        key_row(&row).map(Some)
    }

    /// Families revoked since `since_ms` (access tokens of a family live at
    /// most one access-token lifetime, so older revocations no longer matter).
    pub async fn revoked_families(&self, since_ms: i64) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT DISTINCT family FROM refresh_tokens WHERE revoked_at IS NOT NULL AND revoked_at > ?",
        )
        .bind(since_ms)
        .fetch_all(self.read_pool())
        .await
        .map_err(unavailable)
    }

    /// The family of a refresh token.
    pub async fn family_of(&self, hash: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT family FROM refresh_tokens WHERE hash = ?")
            .bind(hash)
            .fetch_optional(self.write_pool())
            .await
            .map_err(unavailable)
    }

    /// Records a key's last use.
    pub async fn touch_key(&self, id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE api_keys SET last_used_at = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(self.write_pool())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// The lock of an email, if one is in force at `now_ms`: when it ends.
    pub async fn locked_until(&self, email: &str, now_ms: i64) -> Result<Option<i64>, StoreError> {
        let until: Option<i64> =
            sqlx::query_scalar("SELECT locked_until FROM login_throttle WHERE email = ?")
                .bind(email)
                .fetch_optional(self.read_pool())
                .await
                .map_err(unavailable)?;
        Ok(until.filter(|u| *u > now_ms))
    }

    /// Counts a failed login for `email`; at `threshold` failures the email
    /// is locked for `base_ms` doubled per earlier lock, at most `max_ms`.
    /// Returns the lock's end if this failure locked it.
    pub async fn login_failed(
        &self,
        email: &str,
        now_ms: i64,
        threshold: u32,
        base_ms: i64,
        max_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.tx().await?;
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT failures, lockouts FROM login_throttle WHERE email = ?")
                .bind(email)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        let (failures, lockouts) = row.unwrap_or((0, 0));
        let failures = failures + 1;
        let (failures, lockouts, until) = if failures >= i64::from(threshold) {
            let factor = 1i64
                .checked_shl(lockouts.clamp(0, 30) as u32)
                .unwrap_or(i64::MAX);
            let period = base_ms.saturating_mul(factor).min(max_ms);
            (0, lockouts + 1, now_ms + period)
        } else {
            (failures, lockouts, 0)
        };
        sqlx::query(
            "INSERT INTO login_throttle (email, failures, lockouts, locked_until, updated_at) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (email) DO UPDATE SET failures = excluded.failures, lockouts = excluded.lockouts, \
             locked_until = CASE WHEN excluded.locked_until > 0 THEN excluded.locked_until ELSE locked_until END, \
             updated_at = excluded.updated_at",
        )
        .bind(email)
        .bind(failures)
        .bind(lockouts)
        .bind(until)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok((until > 0).then_some(until))
    }

    /// Forgets an email's failed logins after a successful one.
    pub async fn login_succeeded(&self, email: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM login_throttle WHERE email = ?")
            .bind(email)
            .execute(self.write_pool())
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    /// Stores a new refresh token (hash) in its family, with the login's audit entry.
    pub async fn insert_refresh(
        &self,
        t: &NewRefresh<'_>,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let NewRefresh {
            hash,
            family,
            user,
            org,
            now_ms,
            expires_ms,
        } = *t;
        let mut tx = self.tx().await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (hash, family, user_id, org_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(hash)
        .bind(family)
        .bind(user)
        .bind(org)
        .bind(now_ms)
        .bind(expires_ms)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        if let Some(a) = audit {
            insert_audit(&mut tx, a).await.map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)
    }

    /// Uses a refresh token once: marks it used and stores its successor in
    /// the same family. A token used or revoked before revokes its family.
    pub async fn rotate_refresh(
        &self,
        hash: &str,
        new_hash: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<Rotation, StoreError> {
        let mut tx = self.tx().await?;
        let row: Option<RefreshRow> = sqlx::query_as(
            "SELECT family, user_id, org_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE hash = ?",
        )
        .bind(hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        let Some((family, user_id, org_id, expires_at, used, revoked)) = row else {
            return Ok(Rotation::Invalid);
        };
        if used.is_some() || revoked.is_some() {
            sqlx::query(
                "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE family = ?",
            )
            .bind(now_ms)
            .bind(&family)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            return Ok(Rotation::Reused { user_id, org_id });
        }
        if expires_at <= now_ms {
            return Ok(Rotation::Invalid);
        }
        sqlx::query("UPDATE refresh_tokens SET used_at = ? WHERE hash = ?")
            .bind(now_ms)
            .bind(hash)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO refresh_tokens (hash, family, user_id, org_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(new_hash)
        .bind(&family)
        .bind(&user_id)
        .bind(&org_id)
        .bind(now_ms)
        .bind(expires_ms)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Rotation::Rotated {
            user_id,
            org_id,
            family,
        })
    }

    /// Revokes the family of a refresh token (logout); returns its user and org.
    pub async fn revoke_refresh_family(
        &self,
        hash: &str,
        now_ms: i64,
        audit: impl FnOnce(&str, &str) -> AuditEntry,
    ) -> Result<Option<(String, String)>, StoreError> {
        let mut tx = self.tx().await?;
        let row: Option<(String, String, String)> =
            sqlx::query_as("SELECT family, user_id, org_id FROM refresh_tokens WHERE hash = ?")
                .bind(hash)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        let Some((family, user, org)) = row else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE family = ?",
        )
        .bind(now_ms)
        .bind(&family)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        insert_audit(&mut tx, &audit(&user, &org))
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Some((user, org)))
    }
}

async fn revoke_user_tokens(
    conn: &mut SqliteConnection,
    user: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE user_id = ? AND revoked_at IS NULL",
    )
    .bind(now_ms)
    .bind(user)
    .execute(conn)
    .await
    .map(|_| ())
    .map_err(unavailable)
}
