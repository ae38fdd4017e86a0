//! `Cadre`: the handle the HTTP layer (and tests) use to talk to the tree.
//!
//! Each method resolves the owning actor in the registry and makes exactly one
//! gated, time-limited call. It holds no state of its own.

use crate::agent::{AgentMsg, DeleteOutcome, HelloAck, UsageAck, UsageReport};
use crate::context::Ctx;
use crate::domain::{AgentId, AgentPatch, AgentSnapshot, AgentSpec, OrgId, Who};
use crate::error::{Error, Result};
use crate::lifecycle::Command;
use crate::registry::gated_call;
use crate::root::{RootMsg, RootSupervisor};
use crate::tenant::{ListPage, ListQuery, TenantMsg};
use ractor::{Actor, ActorRef};
use std::sync::Arc;

/// Which actor the chaos hook kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChaosTarget {
    /// An agent actor.
    Agent,
    /// A tenant supervisor (and with it all its agents).
    Tenant,
}

/// How the chaos hook ends an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChaosMode {
    /// ractor's kill signal: the actor stops mid-message.
    Kill,
    /// A panic inside `handle`.
    Panic,
}

/// Handle on a running actor tree.
#[derive(Clone)]
pub struct Cadre {
    ctx: Arc<Ctx>,
    root: ActorRef<RootMsg>,
}

impl std::fmt::Debug for Cadre {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cadre").finish_non_exhaustive()
    }
}

impl Cadre {
    /// Starts the tree: the root hydrates every organization from the store.
    pub async fn start(ctx: Arc<Ctx>) -> std::result::Result<Cadre, ractor::SpawnErr> {
        let (root, _) = Actor::spawn(None, RootSupervisor, ctx.clone()).await?;
        Ok(Cadre { ctx, root })
    }

    /// The shared context.
    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// Stops the whole tree and waits for the root to exit. Every acknowledged
    /// change is already durable, so nothing needs flushing here.
    pub async fn shutdown(&self) {
        let _ = self
            .root
            .stop_and_wait(
                Some("shutdown".into()),
                Some(std::time::Duration::from_secs(10)),
            )
            .await;
    }

    async fn agent_call<R, B>(&self, org: &OrgId, id: &AgentId, build: B) -> Result<R>
    where
        R: Send + 'static,
        B: Fn(ractor::RpcReplyPort<R>) -> AgentMsg,
    {
        let s = &self.ctx.settings;
        gated_call(
            || self.ctx.registry.agent(org, id).map(|h| (h.actor, h.gate)),
            build,
            s.call_timeout,
            s.mailbox_wait,
        )
        .await
    }

    async fn tenant_call<R, B>(&self, org: &OrgId, build: B) -> Result<R>
    where
        R: Send + 'static,
        B: Fn(ractor::RpcReplyPort<R>) -> TenantMsg,
    {
        let s = &self.ctx.settings;
        gated_call(
            || self.ctx.registry.tenant(org).map(|h| (h.actor, h.gate)),
            build,
            s.call_timeout,
            s.mailbox_wait,
        )
        .await
    }

    /// Makes sure `org` has a running tenant supervisor.
    pub async fn ensure_tenant(&self, org: &OrgId) -> Result<()> {
        let org = org.clone();
        match self
            .root
            .call(
                |reply| RootMsg::EnsureTenant {
                    org: org.clone(),
                    reply,
                },
                Some(self.ctx.settings.call_timeout),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            Ok(ractor::rpc::CallResult::Timeout) => Err(Error::Timeout),
            _ => Err(Error::Unavailable("root supervisor down".into())),
        }
    }

    /// Whether every tenant supervisor is up.
    pub async fn is_ready(&self) -> bool {
        matches!(
            self.root
                .call(RootMsg::IsReady, Some(self.ctx.settings.call_timeout))
                .await,
            Ok(ractor::rpc::CallResult::Success(true))
        )
    }

    /// Creates an agent in `draft`.
    pub async fn create_agent(
        &self,
        org: &OrgId,
        spec: AgentSpec,
        by: Who,
    ) -> Result<Arc<AgentSnapshot>> {
        self.tenant_call(org, |reply| TenantMsg::Create {
            spec: spec.clone(),
            by: by.clone(),
            reply,
        })
        .await?
    }

    /// A page of the organization's agents.
    pub async fn list_agents(&self, org: &OrgId, query: ListQuery) -> Result<ListPage> {
        self.tenant_call(org, |reply| TenantMsg::List {
            query: query.clone(),
            reply,
        })
        .await
    }

    /// One agent.
    pub async fn get_agent(&self, org: &OrgId, id: &AgentId) -> Result<Arc<AgentSnapshot>> {
        self.agent_call(org, id, AgentMsg::Get).await
    }

    /// An operator command.
    pub async fn command(
        &self,
        org: &OrgId,
        id: &AgentId,
        cmd: Command,
        by: Who,
    ) -> Result<Arc<AgentSnapshot>> {
        self.agent_call(org, id, |reply| AgentMsg::Command {
            cmd,
            by: by.clone(),
            reply,
        })
        .await?
    }

    /// A configuration change.
    pub async fn patch_agent(
        &self,
        org: &OrgId,
        id: &AgentId,
        patch: AgentPatch,
        by: Who,
    ) -> Result<Arc<AgentSnapshot>> {
        self.agent_call(org, id, |reply| AgentMsg::Patch {
            patch: patch.clone(),
            by: by.clone(),
            reply,
        })
        .await?
    }

    /// Deletes an agent.
    pub async fn delete_agent(&self, org: &OrgId, id: &AgentId, by: Who) -> Result<DeleteOutcome> {
        self.agent_call(org, id, |reply| AgentMsg::Delete {
            by: by.clone(),
            reply,
        })
        .await?
    }

    /// Stops every agent of a (just suspended) organization that can be
    /// stopped; returns how many were stopped. Agents that are not running
    /// refuse `stop` and are left as they are: they cannot start while the
    /// organization is suspended.
    pub async fn stop_org_agents(&self, org: &OrgId, by: Who) -> usize {
        let mut stopped = 0;
        for id in self.ctx.registry.org_agents(org) {
            if self
                .command(org, &id, Command::Stop, by.clone())
                .await
                .is_ok()
            {
                stopped += 1;
            }
        }
        stopped
    }

    /// Makes every live agent of `org` stop if the organization's monthly
    /// budget is used up (after its limits were lowered).
    pub fn enforce_org_budget(&self, org: &OrgId) {
        crate::agent::enforce_org_budget(&self.ctx, org);
    }

    /// Refreshes the gauges read at scrape time: each organization's spend
    /// this month and the share of its monthly limits used.
    pub fn record_gauges(&self) {
        let period = crate::budget::Period::of(self.ctx.clock.now_ms());
        self.ctx.tenancy.record_gauges(period);
    }

    /// Whether `id` is a live agent of `org` (no database read).
    pub fn has_agent(&self, org: &OrgId, id: &AgentId) -> bool {
        self.ctx.registry.agent(org, id).is_some()
    }

    /// The organization an agent belongs to (runtime connections name only the agent).
    pub fn org_of(&self, id: &AgentId) -> Option<OrgId> {
        self.ctx.registry.agent_any_org(id).map(|h| h.org)
    }

    /// A runtime's hello.
    pub async fn runtime_hello(&self, org: &OrgId, id: &AgentId, token: &str) -> Result<HelloAck> {
        self.agent_call(org, id, |reply| AgentMsg::RuntimeHello {
            token: token.to_string(),
            reply,
        })
        .await?
    }

    /// A runtime heartbeat; `Ok(false)` tells the runtime to exit.
    pub async fn runtime_heartbeat(&self, org: &OrgId, id: &AgentId, conn: u64) -> Result<bool> {
        self.agent_call(org, id, |reply| AgentMsg::Heartbeat { conn, reply })
            .await?
    }

    /// A runtime usage report.
    pub async fn runtime_usage(
        &self,
        org: &OrgId,
        id: &AgentId,
        conn: u64,
        report: UsageReport,
    ) -> Result<UsageAck> {
        self.agent_call(org, id, |reply| AgentMsg::Usage {
            conn,
            report: report.clone(),
            reply,
        })
        .await?
    }

    /// Chaos: ends the actor of an agent or of a tenant. Returns `NotFound`
    /// when no such actor runs.
    pub fn chaos(&self, target: ChaosTarget, id: &str, mode: ChaosMode) -> Result<()> {
        match target {
            ChaosTarget::Agent => {
                let h = self
                    .ctx
                    .registry
                    .agent_any_org(&AgentId(id.to_string()))
                    .ok_or(Error::NotFound)?;
                match mode {
                    ChaosMode::Kill => h.actor.kill(),
                    ChaosMode::Panic => {
                        let _ = h.actor.cast(AgentMsg::Panic);
                    }
                }
            }
            ChaosTarget::Tenant => {
                let h = self
                    .ctx
                    .registry
                    .tenant(&OrgId(id.to_string()))
                    .ok_or(Error::NotFound)?;
                match mode {
                    ChaosMode::Kill => h.actor.kill(),
                    ChaosMode::Panic => {
                        let _ = h.actor.cast(TenantMsg::Panic);
                    }
                }
            }
        }
        Ok(())
    }
}
