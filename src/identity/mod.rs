//! Identity: roles, scopes, the authenticated principal, the one policy
//! function every route goes through, the in-memory session directory and
//! the identity actor that owns every identity write.

pub mod actor;
pub mod directory;
pub mod policy;

pub use actor::{Identity, IdentityError, OrgChange};
pub use directory::Directory;
pub use policy::{Action, Denied, authorize};

/// An email address normalized to lower case, or why it is not one. The
/// API and the bootstrap owner of the configuration share this rule.
pub fn normalize_email(raw: &str) -> Result<String, &'static str> {
    let e = raw.trim().to_lowercase();
    let ok = (3..=320).contains(&e.len())
        && e.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && !d.is_empty() && !d.starts_with('.') && !d.contains('@')
        })
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(e)
    } else {
        Err("not an email address")
    }
}

/// Whether `raw` may be a new password (8 to 1024 characters), or why not.
/// The API and the bootstrap owner of the configuration share this rule.
pub fn check_password(raw: &str) -> Result<(), &'static str> {
    if (8..=1024).contains(&raw.chars().count()) {
        Ok(())
    } else {
        Err("must be 8 to 1024 characters")
    }
}

use cadre_actors::domain::{OrgId, Party, Who};
use serde::Serialize;

/// A user's role in their organization; each includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads and operates agents.
    Member,
    /// Also manages users, keys and reads the audit log.
    Admin,
    /// Everything in the organization.
    Owner,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Member, Role::Admin, Role::Owner];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What an API key may do. A key acts with its scopes only, and never above
/// its creator's current role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Scope {
    /// Read agents, their history and events.
    AgentsRead,
    /// Create, change, operate and delete agents.
    AgentsWrite,
    /// Decide approvals.
    ApprovalsDecide,
    /// Talk to agents (conversations).
    Chat,
    /// Read activity.
    ActivityRead,
    /// Report activity.
    ActivityWrite,
    /// Read the audit log.
    AuditRead,
    /// Read users.
    UsersRead,
    /// Manage users.
    UsersWrite,
    /// Read API keys.
    KeysRead,
    /// Manage API keys.
    KeysWrite,
    /// Read the organization and its usage.
    OrgRead,
    /// Everything the creator's role allows.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 13] = [
        Scope::AgentsRead,
        Scope::AgentsWrite,
        Scope::ApprovalsDecide,
        Scope::Chat,
        Scope::ActivityRead,
        Scope::ActivityWrite,
        Scope::AuditRead,
        Scope::UsersRead,
        Scope::UsersWrite,
        Scope::KeysRead,
        Scope::KeysWrite,
        Scope::OrgRead,
        Scope::Admin,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::AgentsRead => "agents:read",
            Scope::AgentsWrite => "agents:write",
            Scope::ApprovalsDecide => "approvals:decide",
            Scope::Chat => "chat",
            Scope::ActivityRead => "activity:read",
            Scope::ActivityWrite => "activity:write",
            Scope::AuditRead => "audit:read",
            Scope::UsersRead => "users:read",
            Scope::UsersWrite => "users:write",
            Scope::KeysRead => "keys:read",
            Scope::KeysWrite => "keys:write",
            Scope::OrgRead => "org:read",
            Scope::Admin => "admin",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The lowest role that may hold this scope.
    pub fn min_role(self) -> Role {
        match self {
            Scope::AgentsRead | Scope::ActivityRead | Scope::OrgRead => Role::Viewer,
            Scope::AgentsWrite | Scope::ActivityWrite | Scope::ApprovalsDecide | Scope::Chat => {
                Role::Member
            }
            Scope::AuditRead
            | Scope::UsersRead
            | Scope::UsersWrite
            | Scope::KeysRead
            | Scope::KeysWrite
            | Scope::Admin => Role::Admin,
        }
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user's access token.
    User {
        /// User id.
        user_id: String,
        /// Whether the user administers the instance.
        instance_admin: bool,
    },
    /// An API key.
    ApiKey {
        /// Key id.
        key_id: String,
        /// Its scopes.
        scopes: Vec<Scope>,
        /// Who created it.
        created_by: String,
    },
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The organization every query of the request is scoped to.
    pub org: OrgId,
    /// The user's role (for a key: its creator's current role).
    pub role: Role,
    /// User or key.
    pub credential: Credential,
    /// The request id.
    pub request_id: Option<String>,
    /// The client address.
    pub client: Option<String>,
}

impl Principal {
    /// As the history and the audit log record it.
    pub fn who(&self) -> Who {
        let party = match &self.credential {
            Credential::User { user_id, .. } => Party::User(user_id.clone()),
            Credential::ApiKey { key_id, .. } => Party::ApiKey(key_id.clone()),
        };
        Who {
            party,
            request_id: self.request_id.clone(),
            client: self.client.clone(),
        }
    }

    /// The user id, for users.
    pub fn user_id(&self) -> Option<&str> {
        match &self.credential {
            Credential::User { user_id, .. } => Some(user_id),
            Credential::ApiKey { .. } => None,
        }
    }

    /// A key or user id for rate limiting.
    pub fn rate_key(&self) -> String {
        match &self.credential {
            Credential::User { user_id, .. } => format!("u:{user_id}"),
            Credential::ApiKey { key_id, .. } => format!("k:{key_id}"),
        }
    }
}
