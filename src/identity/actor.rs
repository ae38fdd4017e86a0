//! The identity actor: the one writer of organizations, users, sessions,
//! API keys and login throttling. Handlers send it a message and await the
//! answer; it writes (with the audit entry, in one transaction), then
//! updates the directory, then answers.
//!
//! Its state is the store plus the directory, both of which outlive it: if it
//! dies, the [`Identity`] handle starts a new one on the next request, so a
//! panic costs one failed request and loses nothing.

use super::directory::Directory;
use super::{Role, Scope};
use crate::config::{Config, Limits};
use crate::store::{Db, KeyRecord, NewRefresh, NewUser, OrgRow, Rotation, UserChange, UserRecord};
use cadre_actors::audit::AuditEntry;
use cadre_actors::domain::{OrgId, Who};
use cadre_actors::ports::{Clock, Secrets, StoreError, SystemClock};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A refused or failed identity request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdentityError {
    /// No such thing in the caller's organization.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique value is taken.
    #[error("{1}")]
    Conflict(&'static str, String),
    /// A plan limit is reached.
    #[error("{0}")]
    LimitReached(String),
    /// The caller's role does not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// Well-formed but refused.
    #[error("{0}")]
    Invalid(String),
    /// The store or the actor is unavailable.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for IdentityError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LimitReached(m) => IdentityError::LimitReached(m),
            StoreError::Conflict(m) if m.contains("slug") => IdentityError::Conflict(
                "slug_taken",
                "an organization with this slug exists".into(),
            ),
            StoreError::Conflict(m) if m.contains("email") => {
                IdentityError::Conflict("email_taken", "a user with this email exists".into())
            }
            StoreError::Conflict(m) => IdentityError::Conflict("conflict", m),
            other => IdentityError::Unavailable(other.to_string()),
        }
    }
}

type Reply<T> = RpcReplyPort<Result<T, IdentityError>>;

/// A new organization with its owner.
#[derive(Debug, Clone)]
pub struct NewOrg {
    /// Name.
    pub name: String,
    /// Slug.
    pub slug: String,
    /// Plan.
    pub plan: String,
    /// Owner email.
    pub owner_email: String,
    /// Owner name.
    pub owner_name: String,
    /// Owner password hash.
    pub owner_hash: String,
}

/// A new user of an organization.
#[derive(Debug, Clone)]
pub struct UserSpec {
    /// Email.
    pub email: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Password hash.
    pub password_hash: String,
}

/// A user change as requested.
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    /// Name.
    pub name: Option<String>,
    /// Role.
    pub role: Option<Role>,
    /// Password hash.
    pub password_hash: Option<String>,
}

/// A new API key as requested.
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// Name.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<Scope>,
    /// Expiry (unix ms).
    pub expires_at: Option<i64>,
}

/// A started session: the refresh token (plain, for the cookie) and its family.
#[derive(Debug, Clone)]
pub struct Session {
    /// Plain refresh token.
    pub refresh_token: String,
    /// Family id (the access token's `sid`).
    pub family: String,
    /// User.
    pub user_id: String,
}

/// What `PATCH /orgs/{id}` changes (`None`: leave as is).
#[derive(Debug, Clone, Default)]
pub struct OrgChange {
    /// New plan.
    pub plan: Option<String>,
    /// New limit overrides.
    pub limits: Option<Limits>,
    /// Days of activity kept (`Some(None)`: back to the configured default).
    pub activity_retention_days: Option<Option<u32>>,
    /// New time zone (validated IANA name).
    pub timezone: Option<String>,
    /// New budget period.
    pub budget_period: Option<cadre_actors::budget::PeriodKind>,
    /// New instructions (`Some(None)`: none).
    pub instructions: Option<Option<String>>,
    /// New delegation rule (`chart` or `any`).
    pub delegation: Option<String>,
}

/// Messages of the identity actor.
pub enum IdentityMsg {
    /// Create an organization with its owner.
    CreateOrg(NewOrg, Who, Reply<OrgRow>),
    /// Change plan, limit overrides and/or activity retention.
    UpdateOrg(OrgId, OrgChange, Who, Reply<OrgRow>),
    /// Suspend (true) or resume (false).
    SuspendOrg(OrgId, bool, Who, Reply<OrgRow>),
    /// Create a user; the caller's role bounds the new role.
    CreateUser(OrgId, UserSpec, Role, Who, Reply<UserRecord>),
    /// Change a user.
    UpdateUser(OrgId, String, UserUpdate, Role, Who, Reply<UserRecord>),
    /// Delete a user.
    DeleteUser(OrgId, String, Role, Who, Reply<()>),
    /// Create an API key for the creator (user id, role); answers the record and the plain key.
    CreateKey(
        OrgId,
        KeySpec,
        String,
        Role,
        Who,
        Reply<(KeyRecord, String)>,
    ),
    /// Revoke an API key.
    RevokeKey(OrgId, String, Who, Reply<KeyRecord>),
    /// Record a key's use.
    TouchKey(String, i64),
    /// A failed login (email, client address): answers the end of the lock
    /// the client now meets, if any.
    LoginFailed(String, String, Reply<Option<i64>>),
    /// An instance admin lifts every login lock of an email: answers
    /// whether one was in force. Audited in the organization of the user
    /// with that email, else in the given one (the admin's).
    Unlock(String, OrgId, Who, Reply<bool>),
    /// A successful login: clears failures and starts a session.
    LoginSucceeded(String, UserRecord, Who, Reply<Session>),
    /// Rotates a refresh token.
    Refresh(String, Reply<Session>),
    /// Revokes the session of a refresh token.
    Logout(String, Who, Reply<()>),
}

struct IdentityActor;

struct IdentityState {
    store: Arc<Db>,
    dir: Arc<Directory>,
    config: Arc<Config>,
    secrets: Arc<dyn Secrets>,
}

impl IdentityState {
    fn now(&self) -> i64 {
        SystemClock.now_ms()
    }

    fn audit(
        &self,
        org: &OrgId,
        by: &Who,
        action: &str,
        target: String,
        summary: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry::new(org, by, action, target, summary, self.now())
    }

    fn owned_org(&self, org: &OrgId) -> Result<OrgRow, IdentityError> {
        self.dir
            .org(org)
            .map(|e| e.row)
            .ok_or(IdentityError::NotFound("organization"))
    }

    async fn create_org(&self, n: NewOrg, by: Who) -> Result<OrgRow, IdentityError> {
        let now = self.now();
        let row = OrgRow {
            id: uuid::Uuid::now_v7().to_string(),
            name: n.name,
            slug: n.slug,
            plan: n.plan,
            limits: "{}".into(),
            suspended_at: None,
            created_at: now,
            activity_retention_days: None,
            timezone: "UTC".into(),
            budget_period: "monthly".into(),
            instructions: None,
            delegation: "chart".into(),
        };
        let user_id = uuid::Uuid::now_v7().to_string();
        let owner = NewUser {
            id: &user_id,
            org_id: &row.id,
            email: &n.owner_email,
            name: &n.owner_name,
            role: Role::Owner.as_str(),
            password_hash: &n.owner_hash,
            instance_admin: false,
            now,
        };
        let org = OrgId(row.id.clone());
        let audit = self.audit(
            &org,
            &by,
            "org.create",
            format!("org:{}", row.id),
            serde_json::json!({ "name": row.name, "slug": row.slug, "plan": row.plan, "owner": n.owner_email }),
        );
        self.store.tables().create_org(&row, &owner, &audit).await?;
        self.dir.put_org(row.clone());
        if let Some(u) = self.store.tables().user(&row.id, &user_id).await? {
            self.dir.put_user(&u);
        }
        Ok(row)
    }

    async fn update_org(
        &self,
        org: OrgId,
        change: OrgChange,
        by: Who,
    ) -> Result<OrgRow, IdentityError> {
        self.owned_org(&org)?;
        let OrgChange {
            plan,
            limits,
            activity_retention_days: retention,
            timezone,
            budget_period,
            instructions,
            delegation,
        } = change;
        let limits_json = limits
            .map(|l| serde_json::to_string(&l))
            .transpose()
            .map_err(|e| IdentityError::Invalid(e.to_string()))?;
        let mut summary = serde_json::json!({ "plan": plan, "limits": limits });
        if let Some(days) = retention {
            summary["activity_retention_days"] = serde_json::json!(days);
        }
        if let Some(tz) = &timezone {
            summary["timezone"] = serde_json::json!(tz);
        }
        if let Some(p) = budget_period {
            summary["budget_period"] = serde_json::json!(p.as_str());
        }
        if let Some(d) = &delegation {
            summary["delegation"] = serde_json::json!(d);
        }
        if let Some(i) = &instructions {
            summary["instructions"] = serde_json::json!(
                i.as_ref()
                    .map(|t| format!("{} characters", t.chars().count()))
            );
        }
        let audit = self.audit(&org, &by, "org.update", format!("org:{org}"), summary);
        if !self
            .store
            .tables()
            .update_org(
                org.as_str(),
                plan.as_deref(),
                limits_json.as_deref(),
                retention.map(|d| d.map(i64::from)),
                crate::store::OrgSettings {
                    timezone: timezone.as_deref(),
                    budget_period: budget_period.map(|p| p.as_str()),
                    instructions: instructions.as_ref().map(|i| i.as_deref()),
                    delegation: delegation.as_deref(),
                },
                &audit,
            )
            .await?
        {
            return Err(IdentityError::NotFound("organization"));
        }
        let row = self
            .store
            .tables()
            .org(org.as_str())
            .await?
            .ok_or(IdentityError::NotFound("organization"))?;
        self.dir.put_org(row.clone());
        Ok(row)
    }

    async fn suspend_org(&self, org: OrgId, on: bool, by: Who) -> Result<OrgRow, IdentityError> {
        self.owned_org(&org)?;
        let action = if on { "org.suspend" } else { "org.resume" };
        let audit = self.audit(
            &org,
            &by,
            action,
            format!("org:{org}"),
            serde_json::json!({}),
        );
        let at = on.then(|| self.now());
        if !self
            .store
            .tables()
            .set_org_suspended(org.as_str(), at, &audit)
            .await?
        {
            return Err(IdentityError::NotFound("organization"));
        }
        let row = self
            .store
            .tables()
            .org(org.as_str())
            .await?
            .ok_or(IdentityError::NotFound("organization"))?;
        self.dir.put_org(row.clone());
        Ok(row)
    }

    async fn create_user(
        &self,
        org: OrgId,
        spec: UserSpec,
        caller: Role,
        by: Who,
    ) -> Result<UserRecord, IdentityError> {
        if spec.role > caller {
            return Err(IdentityError::Forbidden(format!(
                "a {} cannot create a user with the {} role",
                caller.as_str(),
                spec.role.as_str()
            )));
        }
        let now = self.now();
        let id = uuid::Uuid::now_v7().to_string();
        let user = NewUser {
            id: &id,
            org_id: org.as_str(),
            email: &spec.email,
            name: &spec.name,
            role: spec.role.as_str(),
            password_hash: &spec.password_hash,
            instance_admin: false,
            now,
        };
        let audit = self.audit(
            &org,
            &by,
            "user.create",
            format!("user:{id}"),
            serde_json::json!({ "email": spec.email, "name": spec.name, "role": spec.role }),
        );
        let max = self.dir.limits(&org).max_users;
        self.store.tables().create_user(&user, max, &audit).await?;
        let rec = self
            .store
            .tables()
            .user(org.as_str(), &id)
            .await?
            .ok_or(IdentityError::NotFound("user"))?;
        self.dir.put_user(&rec);
        Ok(rec)
    }

    /// The target user, if the caller's role reaches theirs.
    async fn manageable(
        &self,
        org: &OrgId,
        id: &str,
        caller: Role,
    ) -> Result<UserRecord, IdentityError> {
        let user = self
            .store
            .tables()
            .user(org.as_str(), id)
            .await?
            .ok_or(IdentityError::NotFound("user"))?;
        let role = Role::parse(&user.role).unwrap_or(Role::Viewer);
        if role > caller {
            return Err(IdentityError::Forbidden(format!(
                "a {} cannot change an {}",
                caller.as_str(),
                role.as_str()
            )));
        }
        Ok(user)
    }

    async fn owners(&self, org: &OrgId) -> Result<usize, IdentityError> {
        let mut after = String::new();
        let mut n = 0;
        loop {
            let page = self
                .store
                .tables()
                .users_page(org.as_str(), &after, 500)
                .await?;
            n += page.iter().filter(|u| u.role == "owner").count();
            match page.last() {
                Some(u) if page.len() == 500 => after = u.id.clone(),
                _ => return Ok(n),
            }
        }
    }

    async fn update_user(
        &self,
        org: OrgId,
        id: String,
        up: UserUpdate,
        caller: Role,
        by: Who,
    ) -> Result<UserRecord, IdentityError> {
        let user = self.manageable(&org, &id, caller).await?;
        if let Some(role) = up.role {
            if role > caller {
                return Err(IdentityError::Forbidden(format!(
                    "a {} cannot grant the {} role",
                    caller.as_str(),
                    role.as_str()
                )));
            }
            if user.role == "owner" && role != Role::Owner && self.owners(&org).await? <= 1 {
                return Err(IdentityError::Invalid(
                    "the last owner cannot be demoted; make another user owner first".into(),
                ));
            }
        }
        let change = UserChange {
            name: up.name.clone(),
            role: up.role.map(|r| r.as_str().to_string()),
            password_hash: up.password_hash.clone(),
        };
        let audit = self.audit(
            &org,
            &by,
            "user.update",
            format!("user:{id}"),
            serde_json::json!({
                "name": up.name,
                "role": up.role,
                "password_changed": up.password_hash.is_some(),
            }),
        );
        let rec = self
            .store
            .tables()
            .update_user(org.as_str(), &id, &change, self.now(), &audit)
            .await?
            .ok_or(IdentityError::NotFound("user"))?;
        self.dir.put_user(&rec);
        Ok(rec)
    }

    async fn delete_user(
        &self,
        org: OrgId,
        id: String,
        caller: Role,
        by: Who,
    ) -> Result<(), IdentityError> {
        let user = self.manageable(&org, &id, caller).await?;
        if by.to_text() == format!("user:{id}") {
            return Err(IdentityError::Invalid("you cannot delete yourself".into()));
        }
        if user.role == "owner" && self.owners(&org).await? <= 1 {
            return Err(IdentityError::Invalid(
                "the last owner cannot be deleted".into(),
            ));
        }
        let audit = self.audit(
            &org,
            &by,
            "user.delete",
            format!("user:{id}"),
            serde_json::json!({ "email": user.email }),
        );
        if !self
            .store
            .tables()
            .delete_user(org.as_str(), &id, self.now(), &audit)
            .await?
        {
            return Err(IdentityError::NotFound("user"));
        }
        self.dir.remove_user(&id);
        Ok(())
    }

    async fn create_key(
        &self,
        org: OrgId,
        spec: KeySpec,
        creator: String,
        caller: Role,
        by: Who,
    ) -> Result<(KeyRecord, String), IdentityError> {
        if let Some(s) = spec.scopes.iter().find(|s| s.min_role() > caller) {
            return Err(IdentityError::Forbidden(format!(
                "a {} cannot grant the {} scope",
                caller.as_str(),
                s.as_str()
            )));
        }
        let id = uuid::Uuid::now_v7().simple().to_string();
        let secret = self.secrets.generate_token();
        let plain = format!("cadre_{id}_{secret}");
        let rec = KeyRecord {
            id: id.clone(),
            org_id: org.to_string(),
            name: spec.name.clone(),
            secret_hash: self.secrets.hash_token(&secret),
            scopes: spec.scopes.iter().map(|s| s.as_str().to_string()).collect(),
            created_by: creator,
            created_at: self.now(),
            expires_at: spec.expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        let audit = self.audit(
            &org,
            &by,
            "api_key.create",
            format!("api_key:{id}"),
            serde_json::json!({ "name": rec.name, "scopes": rec.scopes, "expires_at": rec.expires_at }),
        );
        self.store.tables().create_key(&rec, &audit).await?;
        self.dir.put_key(&rec);
        Ok((rec, plain))
    }

    async fn revoke_key(
        &self,
        org: OrgId,
        id: String,
        by: Who,
    ) -> Result<KeyRecord, IdentityError> {
        let audit = self.audit(
            &org,
            &by,
            "api_key.revoke",
            format!("api_key:{id}"),
            serde_json::json!({}),
        );
        let rec = self
            .store
            .tables()
            .revoke_key(org.as_str(), &id, self.now(), &audit)
            .await?
            .ok_or(IdentityError::NotFound("api key"))?;
        self.dir.put_key(&rec);
        Ok(rec)
    }

    fn refresh_expiry(&self, now: i64) -> i64 {
        now.saturating_add(
            i64::try_from(self.config.auth.refresh_ttl_secs)
                .unwrap_or(i64::MAX / 2000)
                .saturating_mul(1000),
        )
    }

    async fn login_succeeded(
        &self,
        email: String,
        user: UserRecord,
        by: Who,
    ) -> Result<Session, IdentityError> {
        let now = self.now();
        let trust_ms = i64::try_from(self.config.auth.trusted_client_days)
            .unwrap_or(3650)
            .saturating_mul(86_400_000);
        let client = by.client.clone().unwrap_or_default();
        self.store
            .tables()
            .login_succeeded(&email, &client, now, now.saturating_add(trust_ms))
            .await?;
        let token = self.secrets.generate_token();
        let family = uuid::Uuid::now_v7().to_string();
        let org = OrgId(user.org_id.clone());
        let audit = self.audit(
            &org,
            &by,
            "auth.login",
            format!("user:{}", user.id),
            serde_json::json!({}),
        );
        self.store
            .tables()
            .insert_refresh(
                &NewRefresh {
                    hash: &self.secrets.hash_token(&token),
                    family: &family,
                    user: &user.id,
                    org: &user.org_id,
                    now_ms: now,
                    expires_ms: self.refresh_expiry(now),
                },
                Some(&audit),
            )
            .await?;
        Ok(Session {
            refresh_token: token,
            family,
            user_id: user.id,
        })
    }

    async fn unlock(&self, email: String, org: OrgId, by: Who) -> Result<bool, IdentityError> {
        let org = match self.store.tables().user_record_by_email(&email).await? {
            Some(user) => OrgId(user.org_id),
            None => org,
        };
        let audit = self.audit(
            &org,
            &by,
            "auth.unlock",
            format!("login:{email}"),
            serde_json::json!({ "email": email }),
        );
        Ok(self
            .store
            .tables()
            .unlock_login(&email, self.now(), &audit)
            .await?)
    }

    async fn refresh(&self, token: String) -> Result<Session, IdentityError> {
        let now = self.now();
        let next = self.secrets.generate_token();
        match self
            .store
            .tables()
            .rotate_refresh(
                &self.secrets.hash_token(&token),
                &self.secrets.hash_token(&next),
                now,
                self.refresh_expiry(now),
            )
            .await?
        {
            Rotation::Rotated {
                user_id, family, ..
            } => Ok(Session {
                refresh_token: next,
                family,
                user_id,
            }),
            Rotation::Reused { user_id, org_id } => {
                // The family's access tokens die with it.
                let hash = self.secrets.hash_token(&token);
                let _ = self
                    .store
                    .tables()
                    .revoke_refresh_family(&hash, now, |u, o| {
                        AuditEntry::new(
                            &OrgId(o.to_string()),
                            &Who::system(),
                            "auth.refresh_reused",
                            format!("user:{u}"),
                            serde_json::json!({ "family_revoked": true }),
                            now,
                        )
                    })
                    .await;
                if let Some(f) = self.store.tables().family_of(&hash).await? {
                    self.dir.revoke_family(&f);
                }
                tracing::warn!(user = %user_id, org = %org_id, "refresh token reused: session family revoked");
                Err(IdentityError::Forbidden("refresh token reused".into()))
            }
            Rotation::Invalid => Err(IdentityError::NotFound("refresh token")),
        }
    }

    async fn logout(&self, token: String, by: Who) -> Result<(), IdentityError> {
        let now = self.now();
        let hash = self.secrets.hash_token(&token);
        let done = self
            .store
            .tables()
            .revoke_refresh_family(&hash, now, |u, o| {
                AuditEntry::new(
                    &OrgId(o.to_string()),
                    &by,
                    "auth.logout",
                    format!("user:{u}"),
                    serde_json::json!({}),
                    now,
                )
            })
            .await?;
        if done.is_some()
            && let Some(f) = self.store.tables().family_of(&hash).await?
        {
            self.dir.revoke_family(&f);
        }
        Ok(())
    }
}

impl Actor for IdentityActor {
    type Msg = IdentityMsg;
    type State = IdentityState;
    type Arguments = IdentityState;

    async fn pre_start(
        &self,
        _myself: ActorRef<IdentityMsg>,
        args: IdentityState,
    ) -> Result<IdentityState, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<IdentityMsg>,
        msg: IdentityMsg,
        st: &mut IdentityState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            IdentityMsg::CreateOrg(n, by, r) => {
                let _ = r.send(st.create_org(n, by).await);
            }
            IdentityMsg::UpdateOrg(o, change, by, r) => {
                let _ = r.send(st.update_org(o, change, by).await);
            }
            IdentityMsg::SuspendOrg(o, on, by, r) => {
                let _ = r.send(st.suspend_org(o, on, by).await);
            }
            IdentityMsg::CreateUser(o, s, c, by, r) => {
                let _ = r.send(st.create_user(o, s, c, by).await);
            }
            IdentityMsg::UpdateUser(o, id, up, c, by, r) => {
                let _ = r.send(st.update_user(o, id, up, c, by).await);
            }
            IdentityMsg::DeleteUser(o, id, c, by, r) => {
                let _ = r.send(st.delete_user(o, id, c, by).await);
            }
            IdentityMsg::CreateKey(o, s, creator, c, by, r) => {
                let _ = r.send(st.create_key(o, s, creator, c, by).await);
            }
            IdentityMsg::RevokeKey(o, id, by, r) => {
                let _ = r.send(st.revoke_key(o, id, by).await);
            }
            IdentityMsg::TouchKey(id, at) => {
                if let Err(e) = st.store.tables().touch_key(&id, at).await {
                    tracing::warn!(key = %id, error = %e, "could not record API key use");
                }
            }
            IdentityMsg::LoginFailed(email, client, r) => {
                let a = &st.config.auth;
                let ms = |s: u64| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX);
                let limits = crate::store::LoginLimits {
                    threshold: a.lockout_threshold,
                    email_threshold: a.lockout_email_threshold,
                    base_ms: ms(a.lockout_base_secs),
                    max_ms: ms(a.lockout_max_secs),
                };
                let res = st
                    .store
                    .tables()
                    .login_failed(&email, &client, st.now(), &limits)
                    .await
                    .map_err(IdentityError::from);
                let _ = r.send(res);
            }
            IdentityMsg::Unlock(email, org, by, r) => {
                let _ = r.send(st.unlock(email, org, by).await);
            }
            IdentityMsg::LoginSucceeded(email, user, by, r) => {
                let _ = r.send(st.login_succeeded(email, user, by).await);
            }
            IdentityMsg::Refresh(token, r) => {
                let _ = r.send(st.refresh(token).await);
            }
            IdentityMsg::Logout(token, by, r) => {
                let _ = r.send(st.logout(token, by).await);
            }
        }
        Ok(())
    }
}

/// Handle on the identity actor (restarts it if it died).
#[derive(Clone)]
pub struct Identity {
    actor: Arc<Mutex<ActorRef<IdentityMsg>>>,
    store: Arc<Db>,
    dir: Arc<Directory>,
    config: Arc<Config>,
    secrets: Arc<dyn Secrets>,
    timeout: Duration,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").finish_non_exhaustive()
    }
}

impl Identity {
    /// Starts the actor.
    pub async fn start(
        store: Arc<Db>,
        dir: Arc<Directory>,
        config: Arc<Config>,
        secrets: Arc<dyn Secrets>,
    ) -> anyhow::Result<Identity> {
        let actor = Self::spawn(&store, &dir, &config, &secrets).await?;
        Ok(Identity {
            actor: Arc::new(Mutex::new(actor)),
            timeout: Duration::from_millis(config.actors.call_timeout_ms),
            store,
            dir,
            config,
            secrets,
        })
    }

    async fn spawn(
        store: &Arc<Db>,
        dir: &Arc<Directory>,
        config: &Arc<Config>,
        secrets: &Arc<dyn Secrets>,
    ) -> Result<ActorRef<IdentityMsg>, ractor::SpawnErr> {
        let state = IdentityState {
            store: store.clone(),
            dir: dir.clone(),
            config: config.clone(),
            secrets: secrets.clone(),
        };
        Actor::spawn(None, IdentityActor, state)
            .await
            .map(|(a, _)| a)
    }

    fn current(&self) -> ActorRef<IdentityMsg> {
        self.actor.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The directory.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.dir
    }

    /// Stops the actor.
    pub fn stop(&self) {
        self.current().stop(None);
    }

    async fn call<T: Send + 'static>(
        &self,
        build: impl Fn(Reply<T>) -> IdentityMsg,
    ) -> Result<T, IdentityError> {
        for _ in 0..2 {
            let actor = self.current();
            match actor.call(&build, Some(self.timeout)).await {
                Ok(ractor::rpc::CallResult::Success(r)) => return r,
                Ok(ractor::rpc::CallResult::Timeout) => {
                    return Err(IdentityError::Unavailable(
                        "identity actor timed out".into(),
                    ));
                }
                Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
                    // Dead: start a successor (once) and retry.
                    let fresh = Self::spawn(&self.store, &self.dir, &self.config, &self.secrets)
                        .await
                        .map_err(|e| IdentityError::Unavailable(e.to_string()))?;
                    let mut g = self.actor.lock().unwrap_or_else(|e| e.into_inner());
                    if g.get_id() == actor.get_id() {
                        *g = fresh;
                    } else {
                        fresh.stop(None);
                    }
                }
            }
        }
        Err(IdentityError::Unavailable("identity actor down".into()))
    }

    /// See [`IdentityMsg::CreateOrg`].
    pub async fn create_org(&self, n: NewOrg, by: Who) -> Result<OrgRow, IdentityError> {
        self.call(|r| IdentityMsg::CreateOrg(n.clone(), by.clone(), r))
            .await
    }

    /// See [`IdentityMsg::UpdateOrg`].
    pub async fn update_org(
        &self,
        org: &OrgId,
        change: OrgChange,
        by: Who,
    ) -> Result<OrgRow, IdentityError> {
        self.call(|r| IdentityMsg::UpdateOrg(org.clone(), change.clone(), by.clone(), r))
            .await
    }

    /// See [`IdentityMsg::SuspendOrg`].
    pub async fn suspend_org(
        &self,
        org: &OrgId,
        on: bool,
        by: Who,
    ) -> Result<OrgRow, IdentityError> {
        self.call(|r| IdentityMsg::SuspendOrg(org.clone(), on, by.clone(), r))
            .await
    }

    /// See [`IdentityMsg::CreateUser`].
    pub async fn create_user(
        &self,
        org: &OrgId,
        spec: UserSpec,
        caller: Role,
        by: Who,
    ) -> Result<UserRecord, IdentityError> {
        self.call(|r| IdentityMsg::CreateUser(org.clone(), spec.clone(), caller, by.clone(), r))
            .await
    }

    /// See [`IdentityMsg::UpdateUser`].
    pub async fn update_user(
        &self,
        org: &OrgId,
        id: &str,
        up: UserUpdate,
        caller: Role,
        by: Who,
    ) -> Result<UserRecord, IdentityError> {
        self.call(|r| {
            IdentityMsg::UpdateUser(
                org.clone(),
                id.to_string(),
                up.clone(),
                caller,
                by.clone(),
                r,
            )
        })
        .await
    }

    /// See [`IdentityMsg::DeleteUser`].
    pub async fn delete_user(
        &self,
        org: &OrgId,
        id: &str,
        caller: Role,
        by: Who,
    ) -> Result<(), IdentityError> {
        self.call(|r| IdentityMsg::DeleteUser(org.clone(), id.to_string(), caller, by.clone(), r))
            .await
    }

    /// See [`IdentityMsg::CreateKey`].
    pub async fn create_key(
        &self,
        org: &OrgId,
        spec: KeySpec,
        creator: &str,
        caller: Role,
        by: Who,
    ) -> Result<(KeyRecord, String), IdentityError> {
        self.call(|r| {
            IdentityMsg::CreateKey(
                org.clone(),
                spec.clone(),
                creator.to_string(),
                caller,
                by.clone(),
                r,
            )
        })
        .await
    }

    /// See [`IdentityMsg::RevokeKey`].
    pub async fn revoke_key(
        &self,
        org: &OrgId,
        id: &str,
        by: Who,
    ) -> Result<KeyRecord, IdentityError> {
        self.call(|r| IdentityMsg::RevokeKey(org.clone(), id.to_string(), by.clone(), r))
            .await
    }

    /// Records a key's use (fire and forget: bookkeeping, not a change of record).
    pub fn touch_key(&self, id: &str, at: i64) {
        let _ = self
            .current()
            .cast(IdentityMsg::TouchKey(id.to_string(), at));
    }

    /// See [`IdentityMsg::LoginFailed`].
    pub async fn login_failed(
        &self,
        email: &str,
        client: &str,
    ) -> Result<Option<i64>, IdentityError> {
        self.call(|r| IdentityMsg::LoginFailed(email.to_string(), client.to_string(), r))
            .await
    }

    /// See [`IdentityMsg::Unlock`].
    pub async fn unlock(&self, email: &str, org: &OrgId, by: Who) -> Result<bool, IdentityError> {
        self.call(|r| IdentityMsg::Unlock(email.to_string(), org.clone(), by.clone(), r))
            .await
    }

    /// See [`IdentityMsg::LoginSucceeded`].
    pub async fn login_succeeded(
        &self,
        email: &str,
        user: UserRecord,
        by: Who,
    ) -> Result<Session, IdentityError> {
        self.call(|r| IdentityMsg::LoginSucceeded(email.to_string(), user.clone(), by.clone(), r))
            .await
    }

    /// See [`IdentityMsg::Refresh`].
    pub async fn refresh(&self, token: &str) -> Result<Session, IdentityError> {
        self.call(|r| IdentityMsg::Refresh(token.to_string(), r))
            .await
    }

    /// See [`IdentityMsg::Logout`].
    pub async fn logout(&self, token: &str, by: Who) -> Result<(), IdentityError> {
        self.call(|r| IdentityMsg::Logout(token.to_string(), by.clone(), r))
            .await
    }
}
