//! Events the actors broadcast after a change is committed.
//!
//! Actors never know who listens: streams and tests subscribe to the
//! broadcast channel in [`crate::Ctx::events`]. A slow subscriber sees
//! `Lagged` from tokio's broadcast and must resync; it never blocks an actor.

use crate::domain::{AgentEvent, AgentId, OrgId, Transition};
use serde::Serialize;

/// A committed change.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An agent changed state.
    Transition {
        /// Organization.
        org_id: OrgId,
        /// Agent.
        agent_id: AgentId,
        /// The history entry.
        #[serde(flatten)]
        transition: Transition,
    },
    /// Something notable happened to an agent.
    Agent {
        /// Organization.
        org_id: OrgId,
        /// Agent.
        agent_id: AgentId,
        /// The event.
        #[serde(flatten)]
        event: AgentEvent,
    },
    /// Governance: an approval requested, voted, decided, expired or
    /// escalated; a document changed; a grant revoked; a kill switch moved.
    Governance {
        /// Organization.
        org_id: OrgId,
        /// The agent concerned, if one is.
        agent_id: Option<AgentId>,
        /// `approval.requested`, `approval.approved`, `halt.on`, …
        kind: String,
        /// Details.
        detail: serde_json::Value,
        /// Unix ms.
        at: i64,
    },
    /// A task moved: created, a state change, a step recorded, or text
    /// streamed by the model (`task.delta`, live only; the step holds it all).
    Task {
        /// Organization.
        org_id: OrgId,
        /// Agent.
        agent_id: AgentId,
        /// `task.created`, `task.running`, `task.step`, `task.delta`, …
        kind: String,
        /// Details (always with `task_id`).
        detail: serde_json::Value,
        /// Unix ms.
        at: i64,
    },
    /// An agent was deleted.
    Deleted {
        /// Organization.
        org_id: OrgId,
        /// Agent.
        agent_id: AgentId,
    },
}
