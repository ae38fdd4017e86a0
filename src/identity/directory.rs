//! The in-memory directory every request authenticates against: users'
//! roles and session cut-offs, API keys, organizations' plans, limits and
//! suspension, and revoked session families.
//!
//! Loaded from the store at start; afterwards only the identity actor changes
//! it, right after its write committed. Reads are lock-free (`DashMap`), so
//! authenticating a request costs no database round trip.

use super::{Role, Scope};
use crate::config::{Limits, PlansConfig};
use crate::store::{Db, KeyRecord, OrgRow, UserRecord};
use cadre_actors::domain::OrgId;
use cadre_actors::ports::StoreError;
use cadre_actors::tenancy::{OrgStanding, Tenancy};
use dashmap::DashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// What authentication needs of a user.
#[derive(Debug, Clone)]
pub struct UserEntry {
    /// Organization.
    pub org: OrgId,
    /// Current role.
    pub role: Role,
    /// Instance admin.
    pub instance_admin: bool,
    /// Access tokens issued before this (unix ms) are refused.
    pub sessions_after: i64,
}

/// What authentication needs of an API key.
#[derive(Debug)]
pub struct KeyEntry {
    /// Organization.
    pub org: OrgId,
    /// SHA-256 of the secret.
    pub secret_hash: String,
    /// Scopes.
    pub scopes: Vec<Scope>,
    /// Creator (the key never acts above their current role).
    pub created_by: String,
    /// Expiry (unix ms).
    pub expires_at: Option<i64>,
    /// Revoked.
    pub revoked: bool,
    /// Last use recorded in the store (unix ms).
    pub last_used: AtomicI64,
}

/// An organization as the directory keeps it.
#[derive(Debug, Clone)]
pub struct OrgEntry {
    /// The stored row.
    pub row: OrgRow,
    /// Overrides of the plan's limits.
    pub overrides: Limits,
}

/// See the module docs.
#[derive(Debug)]
pub struct Directory {
    users: DashMap<String, UserEntry>,
    keys: DashMap<String, Arc<KeyEntry>>,
    orgs: DashMap<OrgId, OrgEntry>,
    revoked_families: DashMap<String, ()>,
    plans: PlansConfig,
    tenancy: Arc<Tenancy>,
}

impl Directory {
    /// An empty directory that publishes org standing to `tenancy`.
    pub fn new(plans: PlansConfig, tenancy: Arc<Tenancy>) -> Directory {
        Directory {
            users: DashMap::new(),
            keys: DashMap::new(),
            orgs: DashMap::new(),
            revoked_families: DashMap::new(),
            plans,
            tenancy,
        }
    }

    /// Loads everything from the store.
    pub async fn load(
        &self,
        store: &Db,
        now_ms: i64,
        access_ttl_ms: i64,
    ) -> Result<(), StoreError> {
        for org in store.tables().all_orgs().await? {
            self.put_org(org);
        }
        for u in store.tables().all_users().await? {
            self.put_user(&u);
        }
        for k in store.tables().all_keys().await? {
            self.put_key(&k);
        }
        for f in store
            .tables()
            .revoked_families(now_ms - access_ttl_ms)
            .await?
        {
            self.revoked_families.insert(f, ());
        }
        Ok(())
    }

    /// The effective limits of a plan with overrides.
    pub fn effective_limits(&self, plan: &str, overrides: &Limits) -> Limits {
        self.plans
            .limits(plan)
            .unwrap_or_default()
            .overridden_by(overrides)
    }

    /// Publishes an organization (and its standing to the actor tree).
    pub fn put_org(&self, row: OrgRow) {
        let overrides: Limits = serde_json::from_str(&row.limits).unwrap_or_default();
        let limits = self.effective_limits(&row.plan, &overrides);
        let org = OrgId(row.id.clone());
        self.tenancy.set(
            &org,
            OrgStanding {
                // Validated when set; an unknown name (a zone removed from
                // the tz database) falls back to UTC rather than failing.
                tz: jiff::tz::TimeZone::get(&row.timezone).unwrap_or(jiff::tz::TimeZone::UTC),
                max_agents: limits.max_agents,
                budget: cadre_actors::budget::BudgetLimits {
                    period: cadre_actors::budget::PeriodKind::parse(&row.budget_period)
                        .unwrap_or_default(),
                    ..limits.budget()
                },
                suspended: row.suspended_at.is_some(),
            },
        );
        self.orgs.insert(org, OrgEntry { row, overrides });
    }

    /// An organization.
    pub fn org(&self, org: &OrgId) -> Option<OrgEntry> {
        self.orgs.get(org).map(|e| e.clone())
    }

    /// An organization's effective limits.
    pub fn limits(&self, org: &OrgId) -> Limits {
        self.orgs
            .get(org)
            .map(|e| self.effective_limits(&e.row.plan, &e.overrides))
            .unwrap_or_default()
    }

    /// Whether an organization is suspended (unknown ones are).
    pub fn suspended(&self, org: &OrgId) -> bool {
        self.orgs
            .get(org)
            .is_none_or(|e| e.row.suspended_at.is_some())
    }

    /// Publishes a user.
    pub fn put_user(&self, u: &UserRecord) {
        let Some(role) = Role::parse(&u.role) else {
            return;
        };
        self.users.insert(
            u.id.clone(),
            UserEntry {
                org: OrgId(u.org_id.clone()),
                role,
                instance_admin: u.instance_admin,
                sessions_after: u.sessions_after,
            },
        );
    }

    /// A user.
    pub fn user(&self, id: &str) -> Option<UserEntry> {
        self.users.get(id).map(|e| e.clone())
    }

    /// Forgets a deleted user and disables the keys they created.
    pub fn remove_user(&self, id: &str) {
        self.users.remove(id);
        self.keys.retain(|_, k| k.created_by != id);
    }

    /// Publishes an API key.
    pub fn put_key(&self, k: &KeyRecord) {
        self.keys.insert(
            k.id.clone(),
            Arc::new(KeyEntry {
                org: OrgId(k.org_id.clone()),
                secret_hash: k.secret_hash.clone(),
                scopes: k.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                created_by: k.created_by.clone(),
                expires_at: k.expires_at,
                revoked: k.revoked_at.is_some(),
                last_used: AtomicI64::new(k.last_used_at.unwrap_or(0)),
            }),
        );
    }

    /// An API key.
    pub fn key(&self, id: &str) -> Option<Arc<KeyEntry>> {
        self.keys.get(id).map(|e| e.clone())
    }

    /// Marks a session family revoked (logout, reuse).
    pub fn revoke_family(&self, family: &str) {
        self.revoked_families.insert(family.to_string(), ());
    }

    /// Whether a session family is revoked.
    pub fn family_revoked(&self, family: &str) -> bool {
        self.revoked_families.contains_key(family)
    }
}

impl KeyEntry {
    /// Whether a last-use write is due (at most one a minute per key).
    pub fn touch_due(&self, now_ms: i64) -> bool {
        let last = self.last_used.load(Ordering::Relaxed);
        now_ms - last >= 60_000
            && self
                .last_used
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
