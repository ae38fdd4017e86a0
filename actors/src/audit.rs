//! Audit entries: who changed what, written in the same transaction as the
//! change itself (the store refuses to update or delete them).

use crate::domain::{OrgId, Who};

/// One audit log entry.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// The organization the change belongs to.
    pub org_id: OrgId,
    /// `user:<id>`, `key:<id>`, `runtime:<agent>` or `system`.
    pub actor: String,
    /// What was done, `<resource>.<verb>` (e.g. `agent.create`).
    pub action: String,
    /// What it was done to, `<kind>:<id>`.
    pub target: String,
    /// A redacted summary of the change (never secrets).
    pub summary: serde_json::Value,
    /// The request that carried it.
    pub request_id: Option<String>,
    /// The client address.
    pub client: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
}

impl AuditEntry {
    /// An entry for a change by `who`.
    pub fn new(
        org_id: &OrgId,
        who: &Who,
        action: impl Into<String>,
        target: impl Into<String>,
        summary: serde_json::Value,
        at: i64,
    ) -> AuditEntry {
        AuditEntry {
            org_id: org_id.clone(),
            actor: who.to_text(),
            action: action.into(),
            target: target.into(),
            summary,
            request_id: who.request_id.clone(),
            client: who.client.clone(),
            at,
        }
    }
}

impl AuditEntry {
    /// The entry for state changes nobody asked for through the API (health
    /// loop, runtime, budget, supervisor): one `agent.state_changed` entry per
    /// write, naming whoever the last history entry names.
    pub fn for_transitions(
        rec: &crate::domain::AgentRecord,
        transitions: &[crate::domain::Transition],
    ) -> Option<AuditEntry> {
        let first = transitions.first()?;
        let last = transitions.last()?;
        Some(AuditEntry {
            org_id: rec.org_id.clone(),
            actor: last.by.clone(),
            action: "agent.state_changed".into(),
            target: format!("agent:{}", rec.id),
            summary: serde_json::json!({
                "from": first.from.map(|s| s.as_str()),
                "to": last.to.as_str(),
                "reason": last.reason,
            }),
            request_id: None,
            client: None,
            at: last.at,
        })
    }
}
