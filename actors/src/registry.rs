//! Lookups from (org, agent) to the live actor, and the gated call path.
//!
//! The registry is an index, not a state holder: supervisors insert and
//! remove entries as they spawn and bury actors; callers find the current
//! incarnation here. Every request from outside the process goes through
//! [`gated_call`], which bounds how many requests may wait on one actor's
//! (unbounded) ractor mailbox and measures the wait.

use crate::agent::AgentMsg;
use crate::domain::{AgentId, OrgId};
use crate::error::{Error, Result};
use crate::tenant::TenantMsg;
use dashmap::DashMap;
use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Admission to one actor's mailbox: at most `capacity` outside requests
/// queued or in process at once.
#[derive(Debug, Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    kind: &'static str,
}

impl Gate {
    /// A gate admitting `capacity` requests, labelled `kind` in metrics.
    pub fn new(capacity: usize, kind: &'static str) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(capacity.max(1))),
            kind,
        }
    }
}

/// A live agent actor.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    /// Its organization (checked on every lookup).
    pub org: OrgId,
    /// The current incarnation.
    pub actor: ActorRef<AgentMsg>,
    /// Its admission gate.
    pub gate: Gate,
}

/// A live tenant supervisor.
#[derive(Debug, Clone)]
pub struct TenantHandle {
    /// The current incarnation.
    pub actor: ActorRef<TenantMsg>,
    /// Its admission gate.
    pub gate: Gate,
}

/// A live approval actor.
#[derive(Debug, Clone)]
pub struct ApprovalHandle {
    /// The current incarnation.
    pub actor: ActorRef<crate::approval::ApprovalMsg>,
    /// Its admission gate.
    pub gate: Gate,
}

/// (org, agent) → actor.
#[derive(Debug, Default)]
pub struct Registry {
    agents: DashMap<AgentId, AgentHandle>,
    tenants: DashMap<OrgId, TenantHandle>,
    approvals: DashMap<OrgId, ApprovalHandle>,
}

impl Registry {
    /// The approval actor of `org`.
    pub fn approvals(&self, org: &OrgId) -> Option<ApprovalHandle> {
        self.approvals.get(org).map(|h| h.clone())
    }

    /// Registers (or replaces) an approval actor.
    pub fn put_approvals(&self, org: OrgId, handle: ApprovalHandle) {
        self.approvals.insert(org, handle);
    }

    /// The agent's actor, if it belongs to `org`. Another tenant's agent reads
    /// as absent.
    pub fn agent(&self, org: &OrgId, id: &AgentId) -> Option<AgentHandle> {
        self.agents
            .get(id)
            .filter(|h| &h.org == org)
            .map(|h| h.clone())
    }

    /// The agent's actor whatever its org (runtime connections, chaos).
    pub fn agent_any_org(&self, id: &AgentId) -> Option<AgentHandle> {
        self.agents.get(id).map(|h| h.clone())
    }

    /// The tenant supervisor of `org`.
    pub fn tenant(&self, org: &OrgId) -> Option<TenantHandle> {
        self.tenants.get(org).map(|h| h.clone())
    }

    /// Registers (or replaces) an agent's actor.
    pub fn put_agent(&self, id: AgentId, handle: AgentHandle) {
        self.agents.insert(id, handle);
        metrics::gauge!("cadre_agents_live").set(self.agents.len() as f64);
    }

    /// Removes an agent's entry if it still points at `actor`.
    pub fn remove_agent(&self, id: &AgentId, actor: &ActorRef<AgentMsg>) {
        self.agents
            .remove_if(id, |_, h| h.actor.get_id() == actor.get_id());
        metrics::gauge!("cadre_agents_live").set(self.agents.len() as f64);
    }

    /// Drops `org`'s entries for agents not in `keep` (a re-hydrating tenant
    /// clears what its dead predecessor registered for since-deleted agents).
    pub fn retain_org_agents(&self, org: &OrgId, keep: &std::collections::HashSet<AgentId>) {
        self.agents
            .retain(|id, h| &h.org != org || keep.contains(id));
        metrics::gauge!("cadre_agents_live").set(self.agents.len() as f64);
    }

    /// Registers (or replaces) a tenant supervisor.
    pub fn put_tenant(&self, org: OrgId, handle: TenantHandle) {
        self.tenants.insert(org, handle);
    }

    /// Removes a tenant's entry if it still points at `actor`.
    pub fn remove_tenant(&self, org: &OrgId, actor: &ActorRef<TenantMsg>) {
        self.tenants
            .remove_if(org, |_, h| h.actor.get_id() == actor.get_id());
    }

    /// Every live agent with its organization.
    pub fn all_agents(&self) -> Vec<(OrgId, AgentId)> {
        self.agents
            .iter()
            .map(|e| (e.value().org.clone(), e.key().clone()))
            .collect()
    }

    /// Ids of `org`'s live agent actors.
    pub fn org_agents(&self, org: &OrgId) -> Vec<AgentId> {
        self.agents
            .iter()
            .filter(|e| &e.value().org == org)
            .map(|e| e.key().clone())
            .collect()
    }

    /// Number of live agent actors.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }
}

/// Makes one call through `gate`, re-resolving the actor with `resolve` while
/// the message cannot be delivered (the actor is between incarnations), until
/// `call_timeout` has passed.
///
/// A request that was delivered is never re-sent: if the actor died before
/// answering, the caller gets `Unavailable` and decides whether to retry.
pub async fn gated_call<M, R, F, B>(
    resolve: F,
    build: B,
    call_timeout: Duration,
    mailbox_wait: Duration,
) -> Result<R>
where
    M: ractor::Message,
    R: Send + 'static,
    F: Fn() -> Option<(ActorRef<M>, Gate)>,
    B: Fn(RpcReplyPort<R>) -> M,
{
    let deadline = Instant::now() + call_timeout;
    let mut pause = Duration::from_micros(100);
    loop {
        let Some((actor, gate)) = resolve() else {
            return Err(Error::NotFound);
        };
        let waited = Instant::now();
        let permit =
            match tokio::time::timeout(mailbox_wait, gate.permits.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => {
                    metrics::counter!("cadre_mailbox_rejected_total", "actor" => gate.kind)
                        .increment(1);
                    return Err(Error::Overloaded);
                }
            };
        metrics::histogram!("cadre_mailbox_wait_seconds", "actor" => gate.kind)
            .record(waited.elapsed().as_secs_f64());
        let inflight = metrics::gauge!("cadre_mailbox_inflight", "actor" => gate.kind);
        inflight.increment(1.0);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let result = actor.call(&build, Some(left)).await;
        inflight.decrement(1.0);
        drop(permit);
        match result {
            Ok(CallResult::Success(r)) => return Ok(r),
            Ok(CallResult::Timeout) => return Err(Error::Timeout),
            Ok(CallResult::SenderError) => {
                return Err(Error::Unavailable(
                    "the actor restarted before answering; retry".into(),
                ));
            }
            Err(_not_delivered) => {
                if Instant::now() + pause >= deadline {
                    return Err(Error::Unavailable("the actor is restarting; retry".into()));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}
