//! What the actor tree must know about each organization's standing: its
//! agent limit and whether it is suspended. The identity service owns these
//! values and publishes them here after each committed change; the tree only
//! reads them.

use crate::domain::OrgId;
use dashmap::DashMap;

/// An organization's standing as the actors need it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrgStanding {
    /// Most live agents allowed (`None` = unlimited). Enforced again by the
    /// store in the insert's transaction, so the check is atomic.
    pub max_agents: Option<u64>,
    /// A suspended organization's agents are stopped and cannot start.
    pub suspended: bool,
}

/// Standing of every organization (unknown ones: unlimited, active).
#[derive(Debug, Default)]
pub struct Tenancy {
    orgs: DashMap<OrgId, OrgStanding>,
}

impl Tenancy {
    /// Publishes an organization's standing.
    pub fn set(&self, org: &OrgId, standing: OrgStanding) {
        self.orgs.insert(org.clone(), standing);
    }

    /// An organization's standing.
    pub fn get(&self, org: &OrgId) -> OrgStanding {
        self.orgs.get(org).map(|s| *s).unwrap_or_default()
    }
}
