//! The one policy function: (principal, action) → allow or deny. Every route
//! declares its action (see `http::routes`); resources are then looked up in
//! the principal's organization only, so another organization's resources
//! read as absent (404), never as forbidden.

use super::{Credential, Principal, Role, Scope};

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// No authentication (health, metrics, login, refresh, logout).
    Public,
    /// Authenticated by an agent runtime's own token.
    Runtime,
    /// Any authenticated principal (`/me`).
    Authenticated,
    /// Read agents.
    AgentsRead,
    /// Read what an agent's model is told (its composed prompt, which
    /// carries the organization's instructions): members and above.
    PromptRead,
    /// Create, change, operate, delete agents.
    AgentsWrite,
    /// Read the organization and its usage.
    OrgRead,
    /// Read users.
    UsersRead,
    /// Manage users.
    UsersWrite,
    /// Read API keys.
    KeysRead,
    /// Manage API keys.
    KeysWrite,
    /// Read and export the audit log.
    AuditRead,
    /// Read activity and its live streams.
    ActivityRead,
    /// Report activity.
    ActivityWrite,
    /// Owner-only: operator tools (chaos) and the organization's own settings.
    OrgOwner,
    /// Instance administration (organizations); users only, never keys.
    InstanceAdmin,
    /// Change the organization's tools, profiles and approval policies.
    GovernanceWrite,
    /// Decide approvals and revoke grants: members and above, keys with
    /// `approvals:decide` (who exactly may decide is up to each approval
    /// policy, checked by the approval actor).
    ApprovalsDecide,
    /// Talk to an agent: members and above, keys with `chat`.
    Chat,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl Action {
    /// The role and key scope this action needs (`None` for actions that do
    /// not go through role checks).
    pub fn requirement(self) -> Option<(Role, Scope)> {
        Some(match self {
            Action::Public | Action::Runtime | Action::Authenticated | Action::InstanceAdmin => {
                return None;
            }
            Action::AgentsRead => (Role::Viewer, Scope::AgentsRead),
            Action::AgentsWrite => (Role::Member, Scope::AgentsWrite),
            Action::PromptRead => (Role::Member, Scope::AgentsRead),
            Action::OrgRead => (Role::Viewer, Scope::OrgRead),
            Action::UsersRead => (Role::Admin, Scope::UsersRead),
            Action::UsersWrite => (Role::Admin, Scope::UsersWrite),
            Action::KeysRead => (Role::Admin, Scope::KeysRead),
            Action::KeysWrite => (Role::Admin, Scope::KeysWrite),
            Action::AuditRead => (Role::Admin, Scope::AuditRead),
            Action::ActivityRead => (Role::Viewer, Scope::ActivityRead),
            Action::ActivityWrite => (Role::Member, Scope::ActivityWrite),
            Action::OrgOwner => (Role::Owner, Scope::Admin),
            Action::GovernanceWrite => (Role::Admin, Scope::Admin),
            // A viewer never decides (docs/governance.md); a key needs the
            // scope named for it, not `agents:write`.
            Action::ApprovalsDecide => (Role::Member, Scope::ApprovalsDecide),
            Action::Chat => (Role::Member, Scope::Chat),
        })
    }
}

/// Decides whether `p` may perform `action`. Order: instance-admin actions
/// need a user flagged instance admin; then the role must reach the action's
/// minimum; then a key must hold the action's scope (or `admin`).
pub fn authorize(p: &Principal, action: Action) -> Result<(), Denied> {
    match action {
        Action::Public | Action::Runtime | Action::Authenticated => return Ok(()),
        Action::InstanceAdmin => {
            return match &p.credential {
                Credential::User {
                    instance_admin: true,
                    ..
                } => Ok(()),
                _ => Err(Denied("only an instance admin may do this".into())),
            };
        }
        _ => {}
    }
    let Some((role, scope)) = action.requirement() else {
        return Ok(());
    };
    if p.role < role {
        return Err(Denied(format!(
            "this needs the {} role or higher",
            role.as_str()
        )));
    }
    if let Credential::ApiKey { scopes, .. } = &p.credential
        && !scopes.contains(&scope)
        && !(scopes.contains(&Scope::Admin) && scope != Scope::Admin)
    {
        return Err(Denied(format!(
            "this API key lacks the {} scope",
            scope.as_str()
        )));
    }
    if let Credential::ApiKey { scopes, .. } = &p.credential
        && scope == Scope::Admin
        && !scopes.contains(&Scope::Admin)
    {
        return Err(Denied("this API key lacks the admin scope".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadre_actors::domain::OrgId;

    fn user(role: Role) -> Principal {
        Principal {
            org: OrgId("o".into()),
            role,
            credential: Credential::User {
                user_id: "u".into(),
                instance_admin: false,
            },
            request_id: None,
            client: None,
        }
    }

    fn key(role: Role, scopes: &[Scope]) -> Principal {
        Principal {
            credential: Credential::ApiKey {
                key_id: "k".into(),
                scopes: scopes.to_vec(),
                created_by: "u".into(),
            },
            ..user(role)
        }
    }

    #[test]
    fn roles_are_ordered_and_checked() {
        assert!(authorize(&user(Role::Viewer), Action::AgentsRead).is_ok());
        assert!(authorize(&user(Role::Viewer), Action::AgentsWrite).is_err());
        assert!(authorize(&user(Role::Member), Action::AgentsWrite).is_ok());
        assert!(authorize(&user(Role::Member), Action::UsersWrite).is_err());
        assert!(authorize(&user(Role::Admin), Action::UsersWrite).is_ok());
        assert!(authorize(&user(Role::Admin), Action::OrgOwner).is_err());
        assert!(authorize(&user(Role::Owner), Action::OrgOwner).is_ok());
        assert!(authorize(&user(Role::Owner), Action::InstanceAdmin).is_err());
    }

    #[test]
    fn keys_need_scope_and_creator_role() {
        let k = key(Role::Owner, &[Scope::AgentsRead]);
        assert!(authorize(&k, Action::AgentsRead).is_ok());
        assert!(authorize(&k, Action::AgentsWrite).is_err());
        // admin scope covers everything but owner tools need it explicitly.
        let a = key(Role::Member, &[Scope::Admin]);
        assert!(authorize(&a, Action::AgentsWrite).is_ok());
        // ...never above the creator's role.
        assert!(authorize(&a, Action::UsersWrite).is_err());
        // keys are never instance admins.
        assert!(authorize(&key(Role::Owner, &[Scope::Admin]), Action::InstanceAdmin).is_err());
    }
}
