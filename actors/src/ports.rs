//! Ports: what the actors need from the outside world, as traits.
//!
//! The root crate implements them (sqlx store, process deployer, system
//! clock, aws-lc-rs secrets); tests implement them with in-memory fakes. This
//! module must not name a concrete database, HTTP client or container API.

use crate::audit::AuditEntry;
use crate::domain::{AgentEvent, AgentId, AgentRecord, DeployTarget, OrgId, Transition};
use async_trait::async_trait;

/// Why the store refused or failed a write.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A unique key was violated (e.g. an agent name within an org).
    #[error("conflict on {0}")]
    Conflict(String),
    /// A plan limit would be exceeded (checked in the write's transaction).
    #[error("{0}")]
    LimitReached(String),
    /// The write came from an actor incarnation that has been replaced.
    #[error("fenced: a newer incarnation owns this agent")]
    Fenced,
    /// The database could not be reached or the write failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Result of an agent write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Committed.
    Written,
    /// A usage report with this id was already counted; nothing was written.
    Duplicate,
}

/// One atomic write of an agent: its full record, the history entries the
/// change produced, an optional event and, for usage reports, the report id
/// that makes the write idempotent.
#[derive(Debug, Clone, Copy)]
pub struct AgentWrite<'a> {
    /// The record as it must be after the write.
    pub record: &'a AgentRecord,
    /// History entries, in order.
    pub transitions: &'a [Transition],
    /// An event to record with the change.
    pub event: Option<&'a AgentEvent>,
    /// The usage report this write counts, if it is one: counted once per
    /// report id, and added to the organization's monthly spend in the same
    /// transaction.
    pub usage: Option<Charge<'a>>,
    /// The audit entry of the change, written in the same transaction.
    pub audit: Option<&'a AuditEntry>,
    /// New versions of the agent's definition the change made (none, or
    /// the one before it too when the agent had none yet), in the same
    /// transaction.
    pub versions: &'a [crate::domain::AgentVersion],
}

/// A priced usage report.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    /// The runtime's report id (idempotency key).
    pub report_id: &'a str,
    /// Tokens the report adds.
    pub tokens: u64,
    /// Micro-dollars the report adds.
    pub cost_micros: u64,
    /// The organization's budget period it counts in (its own kind and time
    /// zone, which may differ from the agent's).
    pub org_period: crate::budget::Period,
}

/// A new agent: its record, its creation history entry, its audit entry and
/// the organization's agent limit at the time of the request.
#[derive(Debug, Clone, Copy)]
pub struct AgentInsert<'a> {
    /// The record.
    pub record: &'a AgentRecord,
    /// The creation history entry.
    pub created: &'a Transition,
    /// The audit entry.
    pub audit: &'a AuditEntry,
    /// Most live agents the organization may have (`None` = unlimited); the
    /// store refuses the insert with `LimitReached` in the same transaction.
    pub max_agents: Option<u64>,
    /// The agent's first version.
    pub version: &'a crate::domain::AgentVersion,
}

/// Durable storage of critical state. Every method returns only after the
/// change is committed.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a new agent, its creation history entry and audit entry,
    /// enforcing the organization's agent limit atomically.
    async fn insert_agent(&self, insert: AgentInsert<'_>) -> Result<(), StoreError>;

    /// Writes an agent atomically, fenced by `record.epoch`.
    async fn write_agent(&self, write: AgentWrite<'_>) -> Result<WriteOutcome, StoreError>;
    /// The newest version of an agent's definition, if it has any.
    async fn latest_version(
        &self,
        agent: &AgentId,
    ) -> Result<Option<crate::domain::AgentVersion>, StoreError>;

    /// Marks an agent deleted (with its audit entry), fenced by `record.epoch`.
    async fn delete_agent(
        &self,
        record: &AgentRecord,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// Claims one agent for a new actor incarnation: bumps its epoch and returns
    /// the record with the new epoch (`None` if it does not exist or was deleted).
    async fn claim_agent(
        &self,
        org: &OrgId,
        id: &AgentId,
    ) -> Result<Option<AgentRecord>, StoreError>;

    /// Claims every live agent of an organization for new incarnations: bumps
    /// each one's epoch, so writes from older incarnations are refused.
    async fn claim_org(&self, org: &OrgId) -> Result<(), StoreError>;

    /// A page of an organization's live agents: ids after `after`, in id
    /// order, at most `limit`. Hydration walks an org page by page so its
    /// transient memory stays small however many agents there are.
    async fn org_page(
        &self,
        org: &OrgId,
        after: Option<&AgentId>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, StoreError>;

    /// All organization ids.
    async fn list_orgs(&self) -> Result<Vec<OrgId>, StoreError>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// A deployer failure, with its cause as text.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{target} deployer: {message}")]
pub struct DeployError {
    /// Which target failed.
    pub target: &'static str,
    /// What went wrong.
    pub message: String,
}

/// What a deployer needs to run an agent's runtime.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// Agent.
    pub agent_id: AgentId,
    /// Organization.
    pub org_id: OrgId,
    /// Target.
    pub target: DeployTarget,
    /// Model the runtime uses.
    pub model: String,
    /// The runtime's credential (plain text; only its hash is stored).
    pub runtime_token: String,
    /// The agent's runtime settings (model provider, MCP servers).
    pub runtime: crate::domain::RuntimeSpec,
    /// The organization secrets these settings name, still sealed (the
    /// deployer opens them); a named secret that is not here is not set.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// How often the runtime sends heartbeats.
    pub heartbeat_interval_ms: u64,
}

/// What a status check observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploymentStatus {
    /// The runtime process/container is alive.
    Running,
    /// It exited or was never started.
    Stopped(String),
    /// The deployment does not exist.
    Missing,
}

/// One deployment target.
#[async_trait]
pub trait Deployer: Send + Sync + 'static {
    /// Creates the deployment's resources; returns its handle.
    async fn provision(&self, req: &DeployRequest) -> Result<String, DeployError>;
    /// Writes the runtime's configuration into the deployment.
    async fn deploy(&self, deployment: &str, req: &DeployRequest) -> Result<(), DeployError>;
    /// Starts the runtime.
    async fn start(&self, deployment: &str) -> Result<(), DeployError>;
    /// Stops the runtime (idempotent).
    async fn stop(&self, deployment: &str) -> Result<(), DeployError>;
    /// Removes the deployment (idempotent).
    async fn destroy(&self, deployment: &str) -> Result<(), DeployError>;
    /// Observes the runtime.
    async fn status(&self, deployment: &str) -> Result<DeploymentStatus, DeployError>;
    /// The last `lines` lines of the runtime's log.
    async fn logs(&self, deployment: &str, lines: usize) -> Result<String, DeployError>;
}

/// Wall-clock time, injectable so tests can move across a month boundary.
pub trait Clock: Send + Sync + 'static {
    /// Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// Token generation and hashing (implemented with the process's crypto backend).
pub trait Secrets: Send + Sync + 'static {
    /// A fresh random token, URL-safe text.
    fn generate_token(&self) -> String;
    /// A one-way hash of `token`, as text.
    fn hash_token(&self, token: &str) -> String;
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One of an organization's governance documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GovDoc {
    /// `tool`, `profile` or `policy`.
    pub kind: String,
    /// Its id or name.
    pub name: String,
    /// The JSON body.
    pub body: String,
}

/// Result of a compare-and-swap on an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// The change was applied.
    Applied,
    /// The approval was no longer in the expected state (or level).
    Lost,
}

/// Durable storage of approvals, governance documents, grants and kill
/// switches. Every method returns only after the change is committed.
#[async_trait]
pub trait GovStore: Send + Sync + 'static {
    /// An organization's documents.
    async fn docs(&self, org: &OrgId) -> Result<Vec<GovDoc>, StoreError>;
    /// Creates or replaces (`Some`) or deletes (`None`) a document, with its
    /// audit entry; `false` when a delete found nothing.
    async fn put_doc(
        &self,
        org: &OrgId,
        kind: &str,
        name: &str,
        body: Option<&str>,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError>;
    /// Inserts a new pending request; `Conflict` when the agent's call id
    /// was seen before.
    async fn insert_approval(
        &self,
        a: &crate::approval::ApprovalRecord,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// The request for an agent's call id.
    async fn approval_by_call(
        &self,
        agent: &AgentId,
        call_id: &str,
    ) -> Result<Option<crate::approval::ApprovalRecord>, StoreError>;
    /// One request of an organization.
    async fn approval(
        &self,
        org: &OrgId,
        id: &str,
    ) -> Result<Option<crate::approval::ApprovalRecord>, StoreError>;
    /// Every pending request of an organization (all of them, for hydration).
    async fn pending_approvals(
        &self,
        org: &OrgId,
    ) -> Result<Vec<crate::approval::ApprovalRecord>, StoreError>;
    /// Records one approving vote of a pending request at its current
    /// level; `Lost` when it is no longer pending at that level,
    /// `Conflict` when the user voted already.
    async fn add_vote(
        &self,
        a: &crate::approval::ApprovalRecord,
        vote: &crate::approval::Vote,
        audit: &AuditEntry,
    ) -> Result<Cas, StoreError>;
    /// Moves a request from pending (at `from_level`) to `a`'s state, level
    /// and expiry, with the deciding vote and grant if any.
    async fn settle_approval(
        &self,
        a: &crate::approval::ApprovalRecord,
        from_level: u32,
        vote: Option<&crate::approval::Vote>,
        grant: Option<&crate::governance::Grant>,
        audit: &AuditEntry,
    ) -> Result<Cas, StoreError>;
    /// Every grant not revoked and not expired at `now_ms`.
    async fn live_grants(&self, now_ms: i64) -> Result<Vec<crate::governance::Grant>, StoreError>;
    /// Revokes a grant; `None` when it does not exist or was revoked.
    async fn revoke_grant(
        &self,
        org: &OrgId,
        id: &str,
        by: &str,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<Option<crate::governance::Grant>, StoreError>;
    /// Turns a kill switch on (with its reason) or off.
    async fn set_halt(
        &self,
        scope: &crate::governance::HaltScope,
        on: Option<&str>,
        by: &str,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;
    /// Every switch that is on.
    async fn halts(&self) -> Result<Vec<crate::governance::HaltScope>, StoreError>;
}
