//! `Cadre`: the handle the HTTP layer (and tests) use to talk to the tree.
//!
//! Each method resolves the owning actor in the registry and makes exactly one
//! gated, time-limited call. It holds no state of its own.

use crate::agent::{
    AgentMsg, DeleteOutcome, HelloAck, ReserveAck, ReserveRequest, ToolRequest, UsageAck,
    UsageReport,
};
use crate::approval::{
    ApprovalMsg, ApprovalRecord, Decider, Decision, Doc, NewRequest, Outcome, Ticket,
};
use crate::context::Ctx;
use crate::domain::{AgentId, AgentPatch, AgentSnapshot, AgentSpec, Manager, OrgId, Who};
use crate::error::{Error, Result};
use crate::governance::{Governance, Grant, HaltScope, Verdict};
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
    /// A tenant's approval actor (by organization id).
    Approvals,
}

/// How the chaos hook ends an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChaosMode {
    /// ractor's kill signal: the actor stops mid-message.
    Kill,
    /// A panic inside `handle`.
    Panic,
}

/// What a runtime's tool call gets.
#[derive(Debug)]
pub enum ToolAnswer {
    /// Go ahead (`simulate`: sandbox, record it without executing).
    Allow {
        /// Sandbox mode.
        simulate: bool,
        /// The grant that allowed it.
        grant: Option<String>,
    },
    /// Refused by the engine.
    Deny {
        /// Stable reason code.
        reason: &'static str,
        /// Human explanation.
        message: String,
    },
    /// A human decided this call id before (a reconnecting runtime).
    Decided(Outcome),
    /// Parked until a decision, timeout or cancellation.
    Waiting {
        /// The request.
        approval_id: String,
        /// The outcome.
        rx: tokio::sync::oneshot::Receiver<Outcome>,
    },
}

/// Handle on a running actor tree.
#[derive(Clone)]
pub struct Cadre {
    ctx: Arc<Ctx>,
    root: ActorRef<RootMsg>,
    /// Per organization: held while a change of `reports_to` is checked
    /// and made, so two concurrent changes cannot close a cycle together.
    chart: Arc<dashmap::DashMap<OrgId, Arc<tokio::sync::Mutex<()>>>>,
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
        Ok(Cadre {
            ctx,
            root,
            chart: Arc::default(),
        })
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
        self.root_call(|reply| RootMsg::EnsureTenant {
            org: org.clone(),
            reply,
        })
        .await
    }

    /// Asks the root supervisor.
    async fn root_call<R: Send + 'static>(
        &self,
        build: impl FnOnce(ractor::RpcReplyPort<Result<R>>) -> RootMsg,
    ) -> Result<R> {
        match self
            .root
            .call(build, Some(self.ctx.settings.call_timeout))
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
            spec: Box::new(spec.clone()),
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

    /// Every agent of the organization (its read index: what a list shows).
    pub async fn all_agents(&self, org: &OrgId) -> Result<Vec<Arc<AgentSnapshot>>> {
        self.tenant_call(org, TenantMsg::All).await
    }

    /// One agent.
    pub async fn get_agent(&self, org: &OrgId, id: &AgentId) -> Result<Arc<AgentSnapshot>> {
        self.agent_call(org, id, AgentMsg::Get).await
    }

    /// Opens conversation `conversation` with a running agent (audited);
    /// `agent_not_running` otherwise, `manager_unavailable` while its
    /// manager holds it.
    pub async fn open_conversation(
        &self,
        org: &OrgId,
        id: &AgentId,
        conversation: &str,
        title: Option<String>,
        by: Who,
    ) -> Result<()> {
        self.manager_available(org, id).await?;
        self.agent_call(org, id, |reply| AgentMsg::OpenConversation {
            id: conversation.to_string(),
            title: title.clone(),
            by: by.clone(),
            reply,
        })
        .await?
    }

    /// The last `lines` lines of an agent's deployment log.
    pub async fn agent_logs(&self, org: &OrgId, id: &AgentId, lines: usize) -> Result<String> {
        self.agent_call(org, id, |reply| AgentMsg::Logs { lines, reply })
            .await?
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

    /// A configuration change. A new manager that is an agent must be one
    /// of the organization's, and the new link must close no cycle
    /// (`reports_to_cycle`, naming it); changes of `reports_to` are made
    /// one at a time per organization.
    pub async fn patch_agent(
        &self,
        org: &OrgId,
        id: &AgentId,
        patch: AgentPatch,
        by: Who,
    ) -> Result<Arc<AgentSnapshot>> {
        let _held = match &patch.reports_to {
            Some(Some(Manager::Agent(m))) => {
                let lock = self.chart.entry(org.clone()).or_default().clone();
                let held = lock.lock_owned().await;
                let all = self.all_agents(org).await?;
                if !all.iter().any(|s| s.id.as_str() == m) {
                    return Err(Error::Invalid(format!(
                        "reports_to.agent: no agent {m} in this organization"
                    )));
                }
                if let Some(path) = crate::chart::cycle(&all, id, m) {
                    let name = |a: &AgentId| {
                        all.iter()
                            .find(|s| &s.id == a)
                            .map(|s| s.view().name)
                            .unwrap_or_else(|| a.to_string())
                    };
                    let names: Vec<String> = path.iter().map(name).collect();
                    return Err(Error::Conflict(
                        "reports_to_cycle",
                        format!(
                            "reports_to would close a cycle in the org chart: {}",
                            names.join(" → ")
                        ),
                    ));
                }
                Some(held)
            }
            _ => None,
        };
        self.agent_call(org, id, |reply| AgentMsg::Patch {
            patch: Box::new(patch.clone()),
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
        self.ctx.tenancy.record_gauges(self.ctx.clock.now_ms());
    }

    /// An organization's current budget period (its kind, its time zone).
    pub fn org_period(&self, org: &OrgId) -> crate::budget::Period {
        self.ctx.tenancy.period(org, self.ctx.clock.now_ms())
    }

    /// An organization's standing (time zone, limits), as the actors judge it.
    pub fn standing(&self, org: &OrgId) -> crate::tenancy::OrgStanding {
        self.ctx.tenancy.get(org)
    }

    /// Whether `id` is a live agent of `org` (no database read).
    pub fn has_agent(&self, org: &OrgId, id: &AgentId) -> bool {
        self.ctx.registry.agent(org, id).is_some()
    }

    /// The organization an agent belongs to (runtime connections name only the agent).
    pub fn org_of(&self, id: &AgentId) -> Option<OrgId> {
        self.ctx.registry.agent_any_org(id).map(|h| h.org)
    }

    /// A deployer saw an agent's runtime exit: its status is checked now and
    /// a runtime that is gone is recovered at once. False if the agent is
    /// unknown.
    pub fn runtime_exited(&self, org: &OrgId, id: &AgentId) -> bool {
        self.ctx
            .registry
            .agent(org, id)
            .is_some_and(|h| h.actor.cast(AgentMsg::Exited).is_ok())
    }

    /// A runtime's hello.
    pub async fn runtime_hello(&self, org: &OrgId, id: &AgentId, token: &str) -> Result<HelloAck> {
        self.agent_call(org, id, |reply| AgentMsg::RuntimeHello {
            token: token.to_string(),
            reply,
        })
        .await?
    }

    /// Refuses new work for `id` while its manager (an agent) is stopped,
    /// in error or halted: `manager_unavailable`, naming the manager.
    pub async fn manager_available(&self, org: &OrgId, id: &AgentId) -> Result<()> {
        let me = self.get_agent(org, id).await?;
        let Some(Manager::Agent(m)) = &me.reports_to else {
            return Ok(());
        };
        let m = AgentId(m.clone());
        // A manager deleted since is no manager.
        let Ok(boss) = self.get_agent(org, &m).await else {
            return Ok(());
        };
        let why = if crate::chart::blocks_reports(&boss) {
            Some(boss.state.as_str().to_string())
        } else {
            // The organization's and the instance's switches halt the
            // reports themselves; the manager's own switch halts its team.
            self.ctx
                .gov
                .halted(org, &m)
                .filter(|scope| *scope == "agent")
                .map(|_| "halted by its kill switch".to_string())
        };
        match why {
            None => Ok(()),
            Some(why) => Err(Error::Conflict(
                "manager_unavailable",
                format!(
                    "its manager {} ({m}) is {why}: its reports start no new work until it runs",
                    boss.view().name
                ),
            )),
        }
    }

    /// Gives `task` (state `queued`) to its agent: answered once it is
    /// stored. Refused while the agent's manager is unavailable.
    pub async fn submit_task(
        &self,
        org: &OrgId,
        id: &AgentId,
        task: crate::task::TaskRecord,
        by: &Who,
    ) -> Result<crate::task::TaskRecord> {
        self.manager_available(org, id).await?;
        let task = Box::new(task);
        self.agent_call(org, id, |reply| AgentMsg::SubmitTask {
            task: task.clone(),
            by: by.clone(),
            reply,
        })
        .await?
    }

    /// Connects a runtime's task channel (after its hello).
    pub fn attach_tasks(
        &self,
        org: &OrgId,
        id: &AgentId,
        conn: u64,
        pid: u32,
        tx: tokio::sync::mpsc::Sender<crate::task::TaskOrder>,
    ) -> Result<()> {
        let h = self.ctx.registry.agent(org, id).ok_or(Error::NotFound)?;
        h.actor
            .cast(AgentMsg::AttachTasks { conn, pid, tx })
            .map_err(|_| Error::Unavailable("agent actor stopped".into()))
    }

    /// A runtime's report on a task.
    pub async fn task_report(
        &self,
        org: &OrgId,
        id: &AgentId,
        conn: u64,
        report: crate::task::TaskReport,
    ) -> Result<crate::task::TaskRecord> {
        self.agent_call(org, id, |reply| AgentMsg::TaskReport {
            conn,
            report: report.clone(),
            reply,
        })
        .await?
    }

    /// Cancels an unfinished task of agent `id`.
    pub async fn cancel_task(
        &self,
        org: &OrgId,
        id: &AgentId,
        task: &str,
        by: &Who,
    ) -> Result<crate::task::TaskRecord> {
        self.agent_call(org, id, |reply| AgentMsg::CancelTask {
            id: task.to_string(),
            by: by.clone(),
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

    async fn approvals_call<R, B>(&self, org: &OrgId, build: B) -> Result<R>
    where
        R: Send + 'static,
        B: Fn(ractor::RpcReplyPort<R>) -> ApprovalMsg,
    {
        let s = &self.ctx.settings;
        gated_call(
            || self.ctx.registry.approvals(org).map(|h| (h.actor, h.gate)),
            build,
            s.call_timeout,
            s.mailbox_wait,
        )
        .await
        .map_err(|e| match e {
            Error::NotFound => Error::Missing("organization"),
            other => other,
        })
    }

    /// Catalog, profiles, policies, grants and kill switches (read-only use).
    pub fn governance(&self) -> &Arc<Governance> {
        &self.ctx.gov
    }

    /// Judges a runtime's tool call; parks it with the organization's
    /// approval actor when a human must decide.
    pub async fn tool_call(
        &self,
        org: &OrgId,
        id: &AgentId,
        conn: u64,
        call: ToolRequest,
    ) -> Result<ToolAnswer> {
        let verdict = self
            .agent_call(org, id, |reply| AgentMsg::ToolCheck {
                conn,
                call: Box::new(call.clone()),
                reply,
            })
            .await??;
        let (policy, trigger) = match verdict {
            Verdict::Allow { simulate, grant } => return Ok(ToolAnswer::Allow { simulate, grant }),
            Verdict::Deny { reason, message } => {
                return Ok(ToolAnswer::Deny {
                    reason: reason.as_str(),
                    message,
                });
            }
            Verdict::NeedsApproval { policy, trigger } => (policy, trigger),
        };
        // Levels that name the agent's manager need the chart.
        let managers = if policy
            .def
            .levels
            .iter()
            .any(|l| l.approvers.manager.is_some())
        {
            crate::chart::people_above(&self.all_agents(org).await?, id)
        } else {
            Vec::new()
        };
        let req = NewRequest {
            agent_id: id.clone(),
            call_id: call.call_id.clone(),
            tool: call.tool.clone(),
            args_hash: call.args_hash.clone(),
            arguments: call.arguments.clone(),
            trigger,
            policy,
            managers,
        };
        let ticket = self
            .approvals_call(org, |reply| ApprovalMsg::Request {
                req: Box::new(req.clone()),
                reply,
            })
            .await??;
        Ok(match ticket {
            Ticket::Decided(o) => ToolAnswer::Decided(o),
            Ticket::Waiting { approval_id, rx } => ToolAnswer::Waiting { approval_id, rx },
        })
    }

    /// Holds budget for a runtime's model call.
    pub async fn reserve(
        &self,
        org: &OrgId,
        id: &AgentId,
        conn: u64,
        req: ReserveRequest,
    ) -> Result<ReserveAck> {
        self.agent_call(org, id, |reply| AgentMsg::Reserve {
            conn,
            req: req.clone(),
            reply,
        })
        .await?
    }

    /// A person decides a pending approval.
    pub async fn decide(
        &self,
        org: &OrgId,
        approval: &str,
        decision: Decision,
        decider: Decider,
    ) -> Result<ApprovalRecord> {
        self.approvals_call(org, |reply| ApprovalMsg::Decide {
            id: approval.to_string(),
            decision: Box::new(decision.clone()),
            decider: Box::new(decider.clone()),
            reply,
        })
        .await?
    }

    /// Withdraws a pending approval.
    pub async fn cancel_approval(
        &self,
        org: &OrgId,
        approval: &str,
        by: Who,
    ) -> Result<ApprovalRecord> {
        self.approvals_call(org, |reply| ApprovalMsg::Cancel {
            id: approval.to_string(),
            by: by.clone(),
            reply,
        })
        .await?
    }

    /// Creates, replaces or deletes one of an organization's governance
    /// documents; `Ok(existed)`.
    pub async fn put_doc(
        &self,
        org: &OrgId,
        kind: &'static str,
        name: &str,
        doc: Option<Doc>,
        by: Who,
    ) -> Result<bool> {
        self.approvals_call(org, |reply| ApprovalMsg::PutDoc {
            kind,
            name: name.to_string(),
            doc: doc.clone().map(Box::new),
            by: by.clone(),
            reply,
        })
        .await?
    }

    /// Adds the MCP tools a runtime found that the organization's catalog
    /// lacks; how many were added.
    pub async fn discover_tools(
        &self,
        org: &OrgId,
        tools: Vec<crate::governance::ToolDef>,
        by: Who,
    ) -> Result<usize> {
        self.approvals_call(org, |reply| ApprovalMsg::Discover {
            tools: tools.clone(),
            by: by.clone(),
            reply,
        })
        .await?
    }

    /// Revokes a standing grant.
    pub async fn revoke_grant(&self, org: &OrgId, grant: &str, by: Who) -> Result<Grant> {
        self.approvals_call(org, |reply| ApprovalMsg::RevokeGrant {
            id: grant.to_string(),
            by: by.clone(),
            reply,
        })
        .await?
    }

    /// Turns a kill switch on (`Some(reason)`) or off (`None`). On: new tool
    /// calls and reservations are refused from the moment the switch is
    /// persisted, then every covered agent stops its deployment (graceful,
    /// then forced after the deployer's grace period). Off: agents may be
    /// started again (they stay stopped until an operator starts them).
    pub async fn set_halt(&self, scope: HaltScope, on: Option<String>, by: Who) -> Result<()> {
        // The owner of the switch persists and applies it: the
        // organization's approval actor for its own and its agents'
        // switches, the root supervisor for the instance's.
        match &scope {
            HaltScope::Instance => {
                self.root_call(|reply| RootMsg::Halt {
                    on: on.clone(),
                    by: by.clone(),
                    reply,
                })
                .await
            }
            HaltScope::Org(org) | HaltScope::Agent(org, _) => {
                let org = org.clone();
                self.approvals_call(&org, |reply| ApprovalMsg::Halt {
                    scope: scope.clone(),
                    on: on.clone(),
                    by: by.clone(),
                    reply,
                })
                .await?
            }
        }
    }

    /// Chaos: ends the actor of an agent or of a tenant. Returns `NotFound`
    /// when no such actor runs.
    pub fn chaos(&self, target: ChaosTarget, id: &str, mode: ChaosMode) -> Result<()> {
        let reg = &self.ctx.registry;
        let org = || OrgId(id.to_string());
        match target {
            ChaosTarget::Agent => {
                let h = reg
                    .agent_any_org(&AgentId(id.to_string()))
                    .ok_or(Error::NotFound)?;
                end(&h.actor, mode, AgentMsg::Panic);
            }
            ChaosTarget::Tenant => {
                let h = reg.tenant(&org()).ok_or(Error::NotFound)?;
                end(&h.actor, mode, TenantMsg::Panic);
            }
            ChaosTarget::Approvals => {
                let h = reg.approvals(&org()).ok_or(Error::NotFound)?;
                end(&h.actor, mode, crate::approval::ApprovalMsg::Panic);
            }
        }
        Ok(())
    }
}

/// Chaos: ends `actor` by ractor's kill signal or by sending it `panic`.
fn end<M: ractor::Message>(actor: &ractor::ActorRef<M>, mode: ChaosMode, panic: M) {
    match mode {
        ChaosMode::Kill => actor.kill(),
        ChaosMode::Panic => {
            let _ = actor.cast(panic);
        }
    }
}
