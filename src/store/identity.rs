//! Identity and audit tables: organizations, users, sessions (refresh-token
//! families), API keys, login throttling and the audit log.
//!
//! Every mutation here runs in one transaction together with its audit entry,
//! on the single writer connection. Plan limits (users) are checked inside
//! that transaction, so concurrent requests can never exceed them.

use super::server::{Attempt, Dialect, at_commit, retry, stmt, stmt_classify};
use super::sqlite::unavailable;
use super::tables::Tables;
use super::{Cell, DecodeRow, to_i64, to_u64};
use cadre_actors::audit::AuditEntry;
use cadre_actors::ports::StoreError;
use serde::Serialize;
use sqlx::ColumnIndex;

fn get<R: DecodeRow, T: Cell>(r: &R, col: &str) -> Result<T, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    r.cell(col).map_err(unavailable)
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
    /// What every agent of it must know and obey (part of each system prompt).
    pub instructions: Option<String>,
    /// Whom its agents may give work: `chart` or `any`.
    pub delegation: String,
}

/// How an organization runs, as `update_org` changes it (`None`: as is).
#[derive(Debug, Clone, Copy, Default)]
pub struct OrgSettings<'a> {
    /// IANA time zone.
    pub timezone: Option<&'a str>,
    /// `daily`, `weekly` or `monthly`.
    pub budget_period: Option<&'a str>,
    /// Its instructions (`Some(None)`: none).
    pub instructions: Option<Option<&'a str>>,
    /// `chart` or `any`.
    pub delegation: Option<&'a str>,
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

fn org_row<R: DecodeRow>(r: &R) -> Result<OrgRow, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
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
        instructions: get(r, "instructions")?,
        delegation: get(r, "delegation")?,
    })
}

fn user_row<R: DecodeRow>(r: &R) -> Result<UserRecord, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
    Ok(UserRecord {
        id: get(r, "id")?,
        org_id: get(r, "org_id")?,
        email: get(r, "email")?,
        name: get(r, "name")?,
        role: get(r, "role")?,
        instance_admin: get::<_, i64>(r, "instance_admin")? != 0,
        sessions_after: get(r, "sessions_after")?,
        password_hash: get(r, "password_hash")?,
        created_at: get(r, "created_at")?,
    })
}

fn key_row<R: DecodeRow>(r: &R) -> Result<KeyRecord, StoreError>
where
    for<'a> &'a str: ColumnIndex<R>,
{
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

fn org_cols<D: Dialect>() -> String {
    format!(
        "id, name, slug, plan, {}, suspended_at, created_at, activity_retention_days, timezone, \
         budget_period, instructions, delegation",
        D::json("limits")
    )
}

fn user_cols<D: Dialect>() -> String {
    format!(
        "id, org_id, email, name, role, {}, sessions_after, password_hash, created_at",
        D::flag("instance_admin")
    )
}

fn key_cols<D: Dialect>() -> String {
    format!(
        "id, org_id, name, secret_hash, {}, created_by, created_at, expires_at, last_used_at, \
         revoked_at",
        D::json("scopes")
    )
}

/// The login lock-out's settings (`[auth]`).
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Failures of one client as one email that lock that pair.
    pub threshold: u32,
    /// Failures as one email over all clients that lock the email for the
    /// clients it does not trust.
    pub email_threshold: u32,
    /// The first lock of a counter.
    pub base_ms: i64,
    /// Its longest lock.
    pub max_ms: i64,
}

/// The lock a client meets: its own (`pair`: locked until, trusted until),
/// else the email-wide one (`wide`) unless the client is trusted.
fn lock_in_force((pair_until, trusted_until): (i64, i64), wide: i64, now_ms: i64) -> Option<i64> {
    if pair_until > now_ms {
        Some(pair_until)
    } else if wide > now_ms && trusted_until <= now_ms {
        Some(wide)
    } else {
        None
    }
}

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

on_dialects! {
    impl<D> Tables<D> {
        async fn insert_user(conn: &mut D::Connection, u: &NewUser<'_>) -> Result<(), Attempt> {
            let sql = D::sql(
                "INSERT INTO users (id, org_id, email, name, role, password_hash, instance_admin, \
                 created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            );
            sqlx::query(&sql)
                .bind(u.id)
                .bind(u.org_id)
                .bind(u.email)
                .bind(u.name)
                .bind(u.role)
                .bind(u.password_hash)
                .bind(u.instance_admin)
                .bind(u.now)
                .bind(u.now)
                .execute(conn)
                .await
                .map(|_| ())
                .map_err(stmt_classify)
        }

        async fn revoke_user_tokens(
            conn: &mut D::Connection,
            user: &str,
            now_ms: i64,
        ) -> Result<(), Attempt> {
            let sql = D::sql(
                "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, ?) \
                 WHERE user_id = ? AND revoked_at IS NULL",
            );
            Self::run(conn, sqlx::query(&sql).bind(now_ms).bind(user))
                .await
                .map(|_| ())
        }

        async fn revoke_family(
            conn: &mut D::Connection,
            family: &str,
            now_ms: i64,
        ) -> Result<(), Attempt> {
            let sql = D::sql(
                "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE family = ?",
            );
            Self::run(conn, sqlx::query(&sql).bind(now_ms).bind(family))
                .await
                .map(|_| ())
        }

        async fn insert_token(
            conn: &mut D::Connection,
            (hash, family, user, org): (&str, &str, &str, &str),
            now_ms: i64,
            expires_ms: i64,
        ) -> Result<(), Attempt> {
            let sql = D::sql(
                "INSERT INTO refresh_tokens (hash, family, user_id, org_id, created_at, expires_at) \
                 VALUES (?, ?, ?, ?, ?, ?)",
            );
            sqlx::query(&sql)
                .bind(hash)
                .bind(family)
                .bind(user)
                .bind(org)
                .bind(now_ms)
                .bind(expires_ms)
                .execute(conn)
                .await
                .map(|_| ())
                .map_err(stmt_classify)
        }

        /// Every organization.
        pub async fn all_orgs(&self) -> Result<Vec<OrgRow>, StoreError> {
            let sql = format!("SELECT {} FROM orgs ORDER BY id{}", org_cols::<D>(), D::BYTES);
            let rows = self.rows(&sql, &[]).await?;
            rows.iter().map(org_row).collect()
        }

        /// One organization.
        pub async fn org(&self, id: &str) -> Result<Option<OrgRow>, StoreError> {
            let sql = format!("SELECT {} FROM orgs WHERE id = ?", org_cols::<D>());
            let row = self.row(&sql, &[id]).await?;
            row.as_ref().map(org_row).transpose()
        }

        /// Every user (for the in-memory session directory).
        pub async fn all_users(&self) -> Result<Vec<UserRecord>, StoreError> {
            let sql = format!("SELECT {} FROM users", user_cols::<D>());
            let rows = self.rows(&sql, &[]).await?;
            rows.iter().map(user_row).collect()
        }

        /// Every API key (for the in-memory key directory).
        pub async fn all_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
            let sql = format!("SELECT {} FROM api_keys", key_cols::<D>());
            let rows = self.rows(&sql, &[]).await?;
            rows.iter().map(key_row).collect()
        }

        /// A user by email (case-insensitive), for login.
        pub async fn user_record_by_email(
            &self,
            email: &str,
        ) -> Result<Option<UserRecord>, StoreError> {
            let sql = format!(
                "SELECT {} FROM users WHERE lower(email) = lower(?)",
                user_cols::<D>()
            );
            let row = self.row(&sql, &[email]).await?;
            row.as_ref().map(user_row).transpose()
        }

        /// A user of `org`.
        pub async fn user(&self, org: &str, id: &str) -> Result<Option<UserRecord>, StoreError> {
            let sql = format!(
                "SELECT {} FROM users WHERE org_id = ? AND id = ?",
                user_cols::<D>()
            );
            let row = self.row(&sql, &[org, id]).await?;
            row.as_ref().map(user_row).transpose()
        }

        /// A page of `org`'s users, in id order after `after`.
        pub async fn users_page(
            &self,
            org: &str,
            after: &str,
            limit: i64,
        ) -> Result<Vec<UserRecord>, StoreError> {
            let rows = self.id_page(&user_cols::<D>(), "users", Some(org), after, limit).await?;
            rows.iter().map(user_row).collect()
        }

        /// A page of `org`'s API keys, in id order after `after`.
        pub async fn keys_page(
            &self,
            org: &str,
            after: &str,
            limit: i64,
        ) -> Result<Vec<KeyRecord>, StoreError> {
            let rows = self.id_page(&key_cols::<D>(), "api_keys", Some(org), after, limit).await?;
            rows.iter().map(key_row).collect()
        }

        /// A page of organizations (instance admins), in id order after `after`.
        pub async fn orgs_page(&self, after: &str, limit: i64) -> Result<Vec<OrgRow>, StoreError> {
            let rows = self.id_page(&org_cols::<D>(), "orgs", None, after, limit).await?;
            rows.iter().map(org_row).collect()
        }

        /// Rows of `table` with ids after `after`, in id (byte) order; only
        /// `org`'s when given (every tenant table is filtered by its org).
        async fn id_page(
            &self,
            cols: &str,
            table: &str,
            org: Option<&str>,
            after: &str,
            limit: i64,
        ) -> Result<Vec<D::Row>, StoreError> {
            let by_org = if org.is_some() { " AND org_id = ?" } else { "" };
            let sql = D::sql(&format!(
                "SELECT {cols} FROM {table} WHERE id{b} > ?{by_org} ORDER BY id{b} LIMIT ?",
                b = D::BYTES
            ));
            let mut query = sqlx::query(&sql).bind(after);
            if let Some(org) = org {
                query = query.bind(org);
            }
            query
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)
        }

        /// Usage of `org` in `period` (`YYYY-MM`).
        pub async fn org_usage(&self, org: &str, period: &str) -> Result<OrgUsage, StoreError> {
            let sql = D::sql(&format!(
                "SELECT {} AS agents, {} AS users, {} AS tokens, {} AS cost",
                D::int("(SELECT agent_count FROM orgs WHERE id = ?)"),
                D::int("(SELECT COUNT(*) FROM users WHERE org_id = ?)"),
                D::int(
                    "(SELECT COALESCE(SUM(tokens), 0) FROM org_usage WHERE org_id = ? AND period = ?)"
                ),
                D::int(
                    "(SELECT COALESCE(SUM(cost_micros), 0) FROM org_usage \
                     WHERE org_id = ? AND period = ?)"
                ),
            ));
            let row = sqlx::query(&sql)
                .bind(org)
                .bind(org)
                .bind(org)
                .bind(period)
                .bind(org)
                .bind(period)
                .fetch_one(&self.read)
                .await
                .map_err(unavailable)?;
            Ok(OrgUsage {
                agents: get::<_, Option<i64>>(&row, "agents")?.unwrap_or(0),
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
            let sql = D::sql(&format!(
                "SELECT org_id, period, {} AS tokens, {} AS cost_micros FROM org_usage \
                 WHERE period >= ?",
                D::int("tokens"),
                D::int("cost_micros")
            ));
            let rows = sqlx::query(&sql)
                .bind(format!("{since:04}"))
                .fetch_all(&self.read)
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
            let mut sql = format!(
                "SELECT id, actor, action, target, {}, request_id, client, at FROM audit_log \
                 WHERE org_id = ?",
                D::json("summary")
            );
            if f.actor.is_some() {
                sql.push_str(" AND actor = ?");
            }
            let prefix = f.action.as_deref().filter(|a| a.ends_with('.'));
            match (prefix, &f.action) {
                (Some(_), _) => sql.push_str(" AND substr(action, 1, CAST(? AS INTEGER)) = ?"),
                (None, Some(_)) => sql.push_str(" AND action = ?"),
                (None, None) => {}
            }
            if f.target.is_some() {
                sql.push_str(" AND target = ?");
            }
            if f.before.is_some() {
                sql.push_str(" AND id < ?");
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            let sql = D::sql(&sql);
            let mut query = sqlx::query(&sql).bind(org);
            if let Some(a) = &f.actor {
                query = query.bind(a.as_str());
            }
            if let Some(a) = prefix {
                query = query.bind(to_i64(a.len() as u64)).bind(a);
            } else if let Some(a) = &f.action {
                query = query.bind(a.as_str());
            }
            if let Some(t) = &f.target {
                query = query.bind(t.as_str());
            }
            if let Some(b) = f.before {
                query = query.bind(b);
            }
            let rows = query
                .bind(limit)
                .fetch_all(&self.read)
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

        /// Audit entries of every organization after `after`, oldest first (the
        /// activity stream's audit bridge).
        pub async fn audit_since(
            &self,
            after: i64,
            limit: i64,
        ) -> Result<Vec<AuditSince>, StoreError> {
            let sql = D::sql(&format!(
                "SELECT id, org_id, at, actor, action, target, {}, request_id FROM audit_log \
                 WHERE id > ? ORDER BY id LIMIT ?",
                D::json("summary")
            ));
            let rows = sqlx::query(&sql)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| {
                    Ok((
                        get(r, "id")?,
                        get(r, "org_id")?,
                        get(r, "at")?,
                        get(r, "actor")?,
                        get(r, "action")?,
                        get(r, "target")?,
                        get(r, "summary")?,
                        get(r, "request_id")?,
                    ))
                })
                .collect()
        }

        /// The highest audit entry id (0 when there is none).
        pub async fn last_audit_id(&self) -> Result<i64, StoreError> {
            let sql = format!("SELECT {} AS id", D::int("(SELECT COALESCE(MAX(id), 0) FROM audit_log)"));
            let row = sqlx::query(&sql)
                .fetch_one(&self.read)
                .await
                .map_err(unavailable)?;
            get(&row, "id")
        }

        /// Writes an audit entry on its own (changes with no other row, e.g. a login).
        pub async fn append_audit(&self, a: &AuditEntry) -> Result<(), StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                Self::audit_in(&mut tx, a).await?;
                tx.commit().await.map_err(at_commit)
            })
            .await
        }

        /// Creates an organization and its owner.
        pub async fn create_org(
            &self,
            org: &OrgRow,
            owner: &NewUser<'_>,
            audit: &AuditEntry,
        ) -> Result<(), StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(&format!(
                    "INSERT INTO orgs (id, name, slug, plan, limits, created_at, timezone, budget_period) \
                     VALUES (?, ?, ?, ?, ?{}, ?, ?, ?)",
                    D::JSON
                ));
                sqlx::query(&sql)
                    .bind(org.id.as_str())
                    .bind(org.name.as_str())
                    .bind(org.slug.as_str())
                    .bind(org.plan.as_str())
                    .bind(org.limits.as_str())
                    .bind(org.created_at)
                    .bind(org.timezone.as_str())
                    .bind(org.budget_period.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(stmt_classify)?;
                Self::insert_user(&mut tx, owner).await?;
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)
            })
            .await
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
            settings: OrgSettings<'_>,
            audit: &AuditEntry,
        ) -> Result<bool, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(&format!(
                    "UPDATE orgs SET plan = COALESCE(?, plan), limits = COALESCE(?{}, limits), \
                     activity_retention_days = CASE WHEN ? THEN ? ELSE activity_retention_days END, \
                     timezone = COALESCE(?, timezone), budget_period = COALESCE(?, budget_period), \
                     instructions = CASE WHEN ? THEN ? ELSE instructions END, \
                     delegation = COALESCE(?, delegation) WHERE id = ?",
                    D::JSON
                ));
                let query = sqlx::query(&sql)
                    .bind(plan)
                    .bind(limits)
                    .bind(retention.is_some())
                    .bind(retention.flatten())
                    .bind(settings.timezone)
                    .bind(settings.budget_period)
                    .bind(settings.instructions.is_some())
                    .bind(settings.instructions.flatten())
                    .bind(settings.delegation)
                    .bind(id);
                if Self::run(&mut tx, query).await? == 0 {
                    return Ok(false);
                }
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(true)
            })
            .await
        }

        /// Suspends (`Some(at)`) or resumes (`None`) an organization; `false` if it does not exist.
        pub async fn set_org_suspended(
            &self,
            id: &str,
            at: Option<i64>,
            audit: &AuditEntry,
        ) -> Result<bool, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql("UPDATE orgs SET suspended_at = ? WHERE id = ?");
                if Self::run(&mut tx, sqlx::query(&sql).bind(at).bind(id)).await? == 0 {
                    return Ok(false);
                }
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(true)
            })
            .await
        }

        /// Creates a user, refusing with `LimitReached` when the organization
        /// already has `max_users` (checked in the insert's transaction, under
        /// the organization row's lock on a server).
        pub async fn create_user(
            &self,
            user: &NewUser<'_>,
            max_users: Option<u64>,
            audit: &AuditEntry,
        ) -> Result<(), StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                if let Some(max) = max_users {
                    let lock = D::sql(&format!("SELECT id FROM orgs WHERE id = ?{}", D::FOR_UPDATE));
                    sqlx::query(&lock)
                        .bind(user.org_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(stmt)?;
                    let count = D::sql(&format!(
                        "SELECT {} AS n FROM users WHERE org_id = ?",
                        D::int("COUNT(*)")
                    ));
                    let row = sqlx::query(&count)
                        .bind(user.org_id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(stmt)?;
                    let n: i64 = get(&row, "n")?;
                    if n >= to_i64(max) {
                        return Err(StoreError::LimitReached(format!(
                            "the organization's plan allows at most {max} users"
                        ))
                        .into());
                    }
                }
                Self::insert_user(&mut tx, user).await?;
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)
            })
            .await
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
            let revoke = change.role.is_some() || change.password_hash.is_some();
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(
                    "UPDATE users SET name = COALESCE(?, name), role = COALESCE(?, role), \
                     password_hash = COALESCE(?, password_hash), \
                     sessions_after = CASE WHEN ? THEN ? ELSE sessions_after END, updated_at = ? \
                     WHERE org_id = ? AND id = ?",
                );
                let query = sqlx::query(&sql)
                    .bind(change.name.as_deref())
                    .bind(change.role.as_deref())
                    .bind(change.password_hash.as_deref())
                    .bind(revoke)
                    .bind(now_ms)
                    .bind(now_ms)
                    .bind(org)
                    .bind(id);
                if Self::run(&mut tx, query).await? == 0 {
                    return Ok(None);
                }
                let sql = format!(
                    "SELECT {} FROM users WHERE org_id = ? AND id = ?",
                    user_cols::<D>()
                );
                let row = Self::row_in(&mut tx, &sql, &[org, id]).await?;
                let user = user_row(&row)?;
                if revoke {
                    Self::revoke_user_tokens(&mut tx, id, now_ms).await?;
                }
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(Some(user))
            })
            .await
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
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql("DELETE FROM users WHERE org_id = ? AND id = ?");
                if Self::run(&mut tx, sqlx::query(&sql).bind(org).bind(id)).await? == 0 {
                    return Ok(false);
                }
                Self::revoke_user_tokens(&mut tx, id, now_ms).await?;
                let sql = D::sql(
                    "UPDATE api_keys SET revoked_at = ? WHERE created_by = ? AND revoked_at IS NULL",
                );
                Self::run(&mut tx, sqlx::query(&sql).bind(now_ms).bind(id)).await?;
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(true)
            })
            .await
        }

        /// Stores a new API key.
        pub async fn create_key(&self, key: &KeyRecord, audit: &AuditEntry) -> Result<(), StoreError> {
            let scopes = serde_json::to_string(&key.scopes).unwrap_or_else(|_| "[]".into());
            let scopes = scopes.as_str();
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(&format!(
                    "INSERT INTO api_keys (id, org_id, name, secret_hash, scopes, created_by, \
                     created_at, expires_at) VALUES (?, ?, ?, ?, ?{}, ?, ?, ?)",
                    D::JSON
                ));
                sqlx::query(&sql)
                    .bind(key.id.as_str())
                    .bind(key.org_id.as_str())
                    .bind(key.name.as_str())
                    .bind(key.secret_hash.as_str())
                    .bind(scopes)
                    .bind(key.created_by.as_str())
                    .bind(key.created_at)
                    .bind(key.expires_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(stmt_classify)?;
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)
            })
            .await
        }

        /// Revokes a key of `org` (idempotent); `None` if there is no such key.
        pub async fn revoke_key(
            &self,
            org: &str,
            id: &str,
            now_ms: i64,
            audit: &AuditEntry,
        ) -> Result<Option<KeyRecord>, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE org_id = ? AND id = ?",
                );
                if Self::run(&mut tx, sqlx::query(&sql).bind(now_ms).bind(org).bind(id)).await? == 0 {
                    return Ok(None);
                }
                let sql = format!(
                    "SELECT {} FROM api_keys WHERE org_id = ? AND id = ?",
                    key_cols::<D>()
                );
                let row = Self::row_in(&mut tx, &sql, &[org, id]).await?;
                let key = key_row(&row)?;
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(Some(key))
            })
            .await
        }

        /// Families revoked since `since_ms` (access tokens of a family live at
        /// most one access-token lifetime, so older revocations no longer matter).
        pub async fn revoked_families(&self, since_ms: i64) -> Result<Vec<String>, StoreError> {
            let sql = D::sql(
                "SELECT DISTINCT family FROM refresh_tokens \
                 WHERE revoked_at IS NOT NULL AND revoked_at > ?",
            );
            let rows = sqlx::query(&sql)
                .bind(since_ms)
                .fetch_all(&self.read)
                .await
                .map_err(unavailable)?;
            rows.iter().map(|r| get(r, "family")).collect()
        }

        /// The family of a refresh token (read where it was written).
        pub async fn family_of(&self, hash: &str) -> Result<Option<String>, StoreError> {
            let row = Self::row_on(
                &self.write,
                "SELECT family FROM refresh_tokens WHERE hash = ?",
                &[hash],
            )
            .await?;
            row.as_ref().map(|r| get(r, "family")).transpose()
        }

        /// Records a key's last use.
        pub async fn touch_key(&self, id: &str, at: i64) -> Result<(), StoreError> {
            let sql = D::sql("UPDATE api_keys SET last_used_at = ? WHERE id = ?");
            sqlx::query(&sql)
                .bind(at)
                .bind(id)
                .execute(&self.write)
                .await
                .map(|_| ())
                .map_err(unavailable)
        }

        /// The lock `client` meets signing in as `email` at `now_ms`, if one
        /// is in force: when it ends. The email and client's own lock, else
        /// the email-wide one unless the client is trusted (signed in to the
        /// account before).
        pub async fn login_lock(
            &self,
            email: &str,
            client: &str,
            now_ms: i64,
        ) -> Result<Option<i64>, StoreError> {
            let rows = self
                .rows(
                    "SELECT client, locked_until, trusted_until FROM login_locks \
                     WHERE email = ? AND client IN ('', ?)",
                    &[email, client],
                )
                .await?;
            let mut pair = (0i64, 0i64);
            let mut wide = 0i64;
            for r in &rows {
                let c: String = get(r, "client")?;
                let until: i64 = get(r, "locked_until")?;
                if c.is_empty() {
                    wide = until;
                } else {
                    pair = (until, get(r, "trusted_until")?);
                }
            }
            Ok(lock_in_force(pair, wide, now_ms))
        }

        /// Counts a failed login of `client` as `email`, for the pair and for
        /// the email over all clients; a counter reaching its threshold locks
        /// (for `base_ms` doubled per earlier lock of that counter, at most
        /// `max_ms`) and starts again. Returns the lock `client` now meets,
        /// if any. Concurrent failures are each counted: both rows are
        /// created first, then read under their locks.
        pub async fn login_failed(
            &self,
            email: &str,
            client: &str,
            now_ms: i64,
            limits: &LoginLimits,
        ) -> Result<Option<i64>, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(&format!(
                    "INSERT INTO login_locks \
                     (email, client, failures, lockouts, locked_until, trusted_until, updated_at) \
                     VALUES (?, ?, 0, 0, 0, 0, ?), (?, '', 0, 0, 0, 0, ?) {}",
                    D::keep_existing("email, client", "email")
                ));
                let query = sqlx::query(&sql)
                    .bind(email)
                    .bind(client)
                    .bind(now_ms)
                    .bind(email)
                    .bind(now_ms);
                Self::run(&mut tx, query).await?;
                let sql = D::sql(&format!(
                    "SELECT client, failures, lockouts, locked_until, trusted_until FROM login_locks \
                     WHERE email = ? AND client IN ('', ?) ORDER BY client{}",
                    D::FOR_UPDATE
                ));
                let rows = sqlx::query(&sql)
                    .bind(email)
                    .bind(client)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(stmt)?;
                let mut pair = (0i64, 0i64);
                let mut wide = 0i64;
                for r in &rows {
                    let c: String = get(r, "client")?;
                    let threshold = if c.is_empty() {
                        limits.email_threshold
                    } else {
                        limits.threshold
                    };
                    let failures: i64 = get::<_, i64>(r, "failures")? + 1;
                    let lockouts: i64 = get(r, "lockouts")?;
                    let mut until: i64 = get(r, "locked_until")?;
                    let (failures, lockouts) = if failures >= i64::from(threshold) {
                        let factor = 1i64
                            .checked_shl(lockouts.clamp(0, 30) as u32)
                            .unwrap_or(i64::MAX);
                        until = now_ms + limits.base_ms.saturating_mul(factor).min(limits.max_ms);
                        (0, lockouts + 1)
                    } else {
                        (failures, lockouts)
                    };
                    let sql = D::sql(
                        "UPDATE login_locks SET failures = ?, lockouts = ?, locked_until = ?, \
                         updated_at = ? WHERE email = ? AND client = ?",
                    );
                    let query = sqlx::query(&sql)
                        .bind(failures)
                        .bind(lockouts)
                        .bind(until)
                        .bind(now_ms)
                        .bind(email)
                        .bind(&c);
                    Self::run(&mut tx, query).await?;
                    if c.is_empty() {
                        wide = until;
                    } else {
                        pair = (until, get(r, "trusted_until")?);
                    }
                }
                tx.commit().await.map_err(at_commit)?;
                Ok(lock_in_force(pair, wide, now_ms))
            })
            .await
        }

        /// After a successful login of `client` as `email`: the pair's
        /// failures are forgotten and the client is trusted until
        /// `trusted_until` (the email-wide counter is not reset: a guesser
        /// elsewhere must not be helped by the owner's own sign-ins).
        pub async fn login_succeeded(
            &self,
            email: &str,
            client: &str,
            now_ms: i64,
            trusted_until: i64,
        ) -> Result<(), StoreError> {
            let sql = D::sql(&format!(
                "INSERT INTO login_locks \
                 (email, client, failures, lockouts, locked_until, trusted_until, updated_at) \
                 VALUES (?, ?, 0, 0, 0, ?, ?) {} failures = 0, lockouts = 0, locked_until = 0, \
                 trusted_until = {}, updated_at = {}",
                D::upsert("email, client"),
                D::inserted("trusted_until"),
                D::inserted("updated_at"),
            ));
            sqlx::query(&sql)
                .bind(email)
                .bind(client)
                .bind(trusted_until)
                .bind(now_ms)
                .execute(&self.write)
                .await
                .map(|_| ())
                .map_err(unavailable)
        }

        /// Lifts every lock of `email` (its own and each client's; trust is
        /// kept), with its audit entry. Returns whether one was in force at
        /// `now_ms`.
        pub async fn unlock_login(
            &self,
            email: &str,
            now_ms: i64,
            audit: &AuditEntry,
        ) -> Result<bool, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(&format!(
                    "SELECT {} AS n FROM login_locks WHERE email = ? AND locked_until > ?",
                    D::int("COUNT(*)")
                ));
                let row = sqlx::query(&sql)
                    .bind(email)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(stmt)?;
                let locked: i64 = get(&row, "n")?;
                let sql = D::sql(
                    "UPDATE login_locks SET failures = 0, lockouts = 0, locked_until = 0, \
                     updated_at = ? WHERE email = ?",
                );
                Self::run(&mut tx, sqlx::query(&sql).bind(now_ms).bind(email)).await?;
                Self::audit_in(&mut tx, audit).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(locked > 0)
            })
            .await
        }

        /// Stores a new refresh token (hash) in its family, with the login's audit entry.
        pub async fn insert_refresh(
            &self,
            t: &NewRefresh<'_>,
            audit: Option<&AuditEntry>,
        ) -> Result<(), StoreError> {
            let t = *t;
            retry(|| async move {
                let mut tx = self.begin().await?;
                Self::insert_token(&mut tx, (t.hash, t.family, t.user, t.org), t.now_ms, t.expires_ms)
                    .await?;
                if let Some(a) = audit {
                    Self::audit_in(&mut tx, a).await?;
                }
                tx.commit().await.map_err(at_commit)
            })
            .await
        }

        /// Uses a refresh token once: marks it used and stores its successor in
        /// the same family. A token used or revoked before revokes its family.
        /// The token's row is read under its lock, so of two concurrent uses
        /// the second sees the first's and revokes the family.
        pub async fn rotate_refresh(
            &self,
            hash: &str,
            new_hash: &str,
            now_ms: i64,
            expires_ms: i64,
        ) -> Result<Rotation, StoreError> {
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(&format!(
                    "SELECT family, user_id, org_id, expires_at, used_at, revoked_at \
                     FROM refresh_tokens WHERE hash = ?{}",
                    D::FOR_UPDATE
                ));
                let row = sqlx::query(&sql)
                    .bind(hash)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(stmt)?;
                let Some(row) = row else {
                    return Ok(Rotation::Invalid);
                };
                let family: String = get(&row, "family")?;
                let user_id: String = get(&row, "user_id")?;
                let org_id: String = get(&row, "org_id")?;
                let expires_at: i64 = get(&row, "expires_at")?;
                let used: Option<i64> = get(&row, "used_at")?;
                let revoked: Option<i64> = get(&row, "revoked_at")?;
                if used.is_some() || revoked.is_some() {
                    Self::revoke_family(&mut tx, &family, now_ms).await?;
                    tx.commit().await.map_err(at_commit)?;
                    return Ok(Rotation::Reused { user_id, org_id });
                }
                if expires_at <= now_ms {
                    return Ok(Rotation::Invalid);
                }
                let sql = D::sql("UPDATE refresh_tokens SET used_at = ? WHERE hash = ?");
                Self::run(&mut tx, sqlx::query(&sql).bind(now_ms).bind(hash)).await?;
                Self::insert_token(&mut tx, (new_hash, &family, &user_id, &org_id), now_ms, expires_ms)
                    .await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(Rotation::Rotated {
                    user_id,
                    org_id,
                    family,
                })
            })
            .await
        }

        /// Revokes the family of a refresh token (logout); returns its user and org.
        pub async fn revoke_refresh_family(
            &self,
            hash: &str,
            now_ms: i64,
            audit: impl Fn(&str, &str) -> AuditEntry,
        ) -> Result<Option<(String, String)>, StoreError> {
            let audit = &audit;
            retry(|| async move {
                let mut tx = self.begin().await?;
                let sql = D::sql(&format!(
                    "SELECT family, user_id, org_id FROM refresh_tokens WHERE hash = ?{}",
                    D::FOR_UPDATE
                ));
                let row = sqlx::query(&sql)
                    .bind(hash)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(stmt)?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let family: String = get(&row, "family")?;
                let user: String = get(&row, "user_id")?;
                let org: String = get(&row, "org_id")?;
                Self::revoke_family(&mut tx, &family, now_ms).await?;
                Self::audit_in(&mut tx, &audit(&user, &org)).await?;
                tx.commit().await.map_err(at_commit)?;
                Ok(Some((user, org)))
            })
            .await
        }
    }
}

/// One audit entry as the activity stream's audit bridge reads it: `(id,
/// org, at ms, actor, action, target, summary JSON, request id)`.
pub type AuditSince = (
    i64,
    String,
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
);

/// Writes one audit entry inside a SQLite transaction of another table's
/// write (the group-commit writer's jobs, governance, schedules).
pub(crate) async fn insert_audit(
    conn: &mut sqlx::SqliteConnection,
    a: &AuditEntry,
) -> Result<(), sqlx::Error> {
    Tables::<sqlx::Sqlite>::insert_audit(conn, a).await
}
