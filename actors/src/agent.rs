//! `AgentActor`: one per managed agent. It owns the agent's state machine,
//! health timer, restart counters and budget.
//!
//! Every change is written through the [`Store`](crate::ports::Store) and
//! only then applied in memory, published to the tenant's read index and
//! broadcast; a failed write leaves the actor as it was and answers an error.
//! Deployer work (which can take minutes) runs in spawned tasks that report
//! back with [`AgentMsg::OpDone`], so the mailbox stays responsive. Results
//! of superseded operations are recognised by their generation and ignored.
//!
//! On start the actor *reconciles*: agents caught in a transitional state
//! resume the operation (every deployer operation is idempotent), running
//! agents re-attach to their deployment and let the probes decide, and
//! everything else — draft, stopped, error — waits for an operator.

use crate::audit::AuditEntry;
use crate::budget::{BudgetLevel, Period, Usage, level};
use crate::context::{Ctx, Settings};
use crate::domain::{
    AgentEvent, AgentPatch, AgentRecord, AgentSnapshot, AgentView, HealthView, OrgId, Transition,
    Who,
};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::lifecycle::{self, Command, State, Trigger};
use crate::ports::{
    AgentWrite, Charge, DeployError, DeployRequest, DeploymentStatus, StoreError, WriteOutcome,
    constant_time_eq,
};
use crate::tenant::TenantMsg;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Exit reason of an actor whose agent was deleted (the supervisor does not restart it).
pub const EXIT_DELETED: &str = "cadre:deleted";
/// Exit reason of an actor that found a newer incarnation of itself.
pub const EXIT_FENCED: &str = "cadre:fenced";
/// `state_reason` marking a teardown that ends in deletion (survives restarts).
const DELETE_REQUESTED: &str = "delete requested";

/// The actor.
#[derive(Debug, Default)]
pub struct AgentActor;

/// What the supervisor hands a new incarnation.
pub struct AgentArgs {
    /// The claimed record (its epoch is this incarnation's fencing token).
    pub record: AgentRecord,
    /// Shared context.
    pub ctx: Arc<Ctx>,
    /// The supervising tenant, which keeps the read index.
    pub tenant: ActorRef<TenantMsg>,
    /// The view of `record` already in the tenant's index (rendered once there).
    pub snapshot: Arc<AgentSnapshot>,
}

/// A usage report from the runtime.
#[derive(Debug, Clone)]
pub struct UsageReport {
    /// Idempotency key: a report is counted once however often it is sent.
    pub report_id: String,
    /// Model that was used.
    pub model: String,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// The reservation this report settles, if any.
    pub reservation_id: Option<String>,
}

/// Answer to a runtime hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloAck {
    /// Connection number; later messages must carry it.
    pub conn: u64,
    /// How often to send heartbeats.
    pub heartbeat_interval_ms: u64,
    /// `false` when the agent is not supposed to run (the runtime should exit).
    pub should_run: bool,
}

/// A tool call the runtime asks about.
#[derive(Debug, Clone)]
pub struct ToolRequest {
    /// The runtime's call id (unique per agent; repeated on reconnect).
    pub call_id: String,
    /// Tool id.
    pub tool: String,
    /// Arguments, secrets redacted.
    pub arguments: serde_json::Value,
    /// SHA-256 (hex) of the canonical arguments, before redaction.
    pub args_hash: String,
    /// Estimated cost of the call in micro-dollars (0 if unknown).
    pub estimated_cost_micros: u64,
}

/// A model-call reservation request.
#[derive(Debug, Clone)]
pub struct ReserveRequest {
    /// Idempotency key (settled by the usage report naming it).
    pub reservation_id: String,
    /// Model (priced from the pricing table).
    pub model: String,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// The call's maximum output tokens.
    pub max_output_tokens: u64,
}

/// Answer to a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveAck {
    /// Whether the call may go ahead.
    pub granted: bool,
    /// Tokens held.
    pub tokens: u64,
    /// Micro-dollars held.
    pub cost_micros: u64,
    /// Why not (`budget_exceeded`, `org_budget_exceeded`, `halted`, `stopped`).
    pub reason: Option<String>,
}

/// One held reservation.
#[derive(Debug, Clone, Copy)]
struct Held {
    tokens: u64,
    cost_micros: u64,
    at: Instant,
}

/// Governance state of a live agent (allocated on first use, so idle agents
/// stay small).
#[derive(Debug, Default)]
struct GovState {
    rates: crate::governance::engine::RateState,
    held: std::collections::HashMap<String, Held>,
}

/// Answer to a usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageAck {
    /// `false` when the report id had been counted already.
    pub counted: bool,
    /// `false` when the agent stopped (e.g. budget exceeded).
    pub should_run: bool,
    /// Why it stopped (`budget_exceeded`, `org_budget_exceeded`, …).
    pub stop_reason: Option<String>,
}

/// Outcome of DELETE.
#[derive(Debug, Clone)]
pub enum DeleteOutcome {
    /// The agent is gone.
    Deleted,
    /// The deployment is being torn down; the agent is removed afterwards.
    Accepted(Arc<AgentSnapshot>),
}

/// A finished background operation.
#[derive(Debug)]
pub enum OpResult {
    /// `provision` finished.
    Provisioned(std::result::Result<String, DeployError>),
    /// `deploy` finished.
    Deployed(std::result::Result<(), DeployError>),
    /// `start` (or stop + start) finished.
    Started(std::result::Result<(), DeployError>),
    /// A configuration change was rolled out.
    Updated(std::result::Result<(), DeployError>),
    /// `stop` + `destroy` finished.
    Destroyed(std::result::Result<(), DeployError>),
}

/// Messages.
#[derive(Debug)]
pub enum AgentMsg {
    /// The current view.
    Get(RpcReplyPort<Arc<AgentSnapshot>>),
    /// An operator command (deploy, start, stop, restart, destroy).
    Command {
        /// The command.
        cmd: Command,
        /// Who asks.
        by: Who,
        /// Answer.
        reply: RpcReplyPort<Result<Arc<AgentSnapshot>>>,
    },
    /// A configuration change.
    Patch {
        /// The change (validated).
        patch: Box<AgentPatch>,
        /// Who asks.
        by: Who,
        /// Answer.
        reply: RpcReplyPort<Result<Arc<AgentSnapshot>>>,
    },
    /// Remove the agent.
    Delete {
        /// Who asks.
        by: Who,
        /// Answer.
        reply: RpcReplyPort<Result<DeleteOutcome>>,
    },
    /// A runtime connected and authenticates with its token.
    RuntimeHello {
        /// The token from its configuration.
        token: String,
        /// Answer.
        reply: RpcReplyPort<Result<HelloAck>>,
    },
    /// A runtime heartbeat.
    Heartbeat {
        /// Connection from the hello.
        conn: u64,
        /// Answer (`Ok(should_run)`).
        reply: RpcReplyPort<Result<bool>>,
    },
    /// Judge a tool call (the permission engine).
    ToolCheck {
        /// Connection from the hello.
        conn: u64,
        /// The call.
        call: Box<ToolRequest>,
        /// Answer.
        reply: RpcReplyPort<Result<crate::governance::Verdict>>,
    },
    /// Hold budget for a model call.
    Reserve {
        /// Connection from the hello.
        conn: u64,
        /// The reservation.
        req: ReserveRequest,
        /// Answer.
        reply: RpcReplyPort<Result<ReserveAck>>,
    },
    /// A kill switch covering this agent went on: stop now.
    Halt {
        /// `agent`, `org` or `instance`.
        scope: &'static str,
        /// Who pulled it.
        by: Who,
    },
    /// A usage report.
    Usage {
        /// Connection from the hello.
        conn: u64,
        /// The report.
        report: UsageReport,
        /// Answer.
        reply: RpcReplyPort<Result<UsageAck>>,
    },
    /// A person opens a conversation with the agent: refused unless it
    /// runs; audited (`agent.conversation_open`) once accepted.
    OpenConversation {
        /// The conversation's id.
        id: String,
        /// Its title.
        title: Option<String>,
        /// Who opens it.
        by: Who,
        /// Answer.
        reply: RpcReplyPort<Result<()>>,
    },
    /// The last lines of the deployment's log (read by a spawned task, so
    /// a slow target never holds up the actor).
    Logs {
        /// Lines at most.
        lines: usize,
        /// Answer.
        reply: RpcReplyPort<Result<String>>,
    },
    /// Health timer.
    Tick,
    /// A deployer saw the runtime exit (a local child's exit, the engine's
    /// `die` event): its status is checked at once, and a runtime that is
    /// gone is recovered at once (under the usual back-off) instead of after
    /// `failure_threshold` probes.
    Exited,
    /// A probe finished.
    ProbeDone(std::result::Result<DeploymentStatus, DeployError>),
    /// A background operation finished.
    OpDone {
        /// Its generation.
        op: u64,
        /// What happened.
        result: OpResult,
    },
    /// A scheduled auto-recovery is due.
    RecoverNow {
        /// Generation of the schedule.
        generation: u64,
    },
    /// The organization's budget may be used up: stop if it is (sent to
    /// every agent of the organization when its spend crosses its limit or
    /// its limit is lowered).
    EnforceBudget,
    /// Chaos: panic inside `handle` (tests and the chaos endpoint).
    Panic,
    /// A new task: persisted, queued, delivered when a runtime is connected.
    SubmitTask {
        /// The task (state `queued`).
        task: Box<crate::task::TaskRecord>,
        /// Who gives it.
        by: Who,
        /// Answer: the task as stored.
        reply: RpcReplyPort<Result<crate::task::TaskRecord>>,
    },
    /// A connected runtime's channel for task orders.
    AttachTasks {
        /// Connection from the hello.
        conn: u64,
        /// The runtime's process id (a new one means the old process, and
        /// whatever it was running, is gone).
        pid: u32,
        /// Where orders go.
        tx: tokio::sync::mpsc::Sender<crate::task::TaskOrder>,
    },
    /// A runtime reports a task's state or a step.
    TaskReport {
        /// Connection from the hello.
        conn: u64,
        /// The report.
        report: crate::task::TaskReport,
        /// Answer: the task after the report.
        reply: RpcReplyPort<Result<crate::task::TaskRecord>>,
    },
    /// An operator cancels a task.
    CancelTask {
        /// The task.
        id: String,
        /// Who cancels it.
        by: Who,
        /// Answer: the task after it.
        reply: RpcReplyPort<Result<crate::task::TaskRecord>>,
    },
}

/// The actor's state.
pub struct AgentState {
    rec: AgentRecord,
    ctx: Arc<Ctx>,
    tenant: ActorRef<TenantMsg>,
    snapshot: Arc<AgentSnapshot>,
    /// Generation of the current background operation.
    op: u64,
    ticker: Option<(JoinHandle<()>, Duration)>,
    probe_in_flight: bool,
    /// Another probe is due as soon as the one in flight is done (an exit
    /// was reported while it ran, so what it saw may be stale).
    probe_again: bool,
    /// The deployer's start call returned: until then a stopped runtime is
    /// the start's own business (a restart stops the old one first).
    start_returned: bool,
    /// What went wrong last, carried into the recovery and give-up reasons.
    last_problem: Option<String>,
    failures: u32,
    recoveries: u32,
    recovering: bool,
    recovery_generation: u64,
    recovery_pending: bool,
    healthy_since: Option<Instant>,
    last_seen: Instant,
    starting_since: Instant,
    conn: Option<u64>,
    next_conn: u64,
    gov: Option<Box<GovState>>,
    /// Unfinished tasks, loaded on first use.
    tasks: Option<Box<crate::task::TaskBook>>,
    /// The newest version of its definition, loaded on first use (`Some(None)`:
    /// it has none yet, an agent from before versions).
    version: Option<Option<Box<crate::domain::AgentVersion>>>,
    /// Versions the next commit writes (set by a change of the definition).
    new_versions: Vec<crate::domain::AgentVersion>,
}

impl AgentState {
    fn now(&self) -> i64 {
        self.ctx.clock.now_ms()
    }

    fn health(&self) -> HealthView {
        health_of(&self.rec, &self.ctx.settings)
    }

    /// The newest version of the agent's definition (loaded on first use).
    async fn version(&mut self) -> Result<Option<&crate::domain::AgentVersion>> {
        if self.version.is_none() {
            let latest = self.ctx.store.latest_version(&self.rec.id).await?;
            self.version = Some(latest.map(Box::new));
        }
        Ok(self.version.as_ref().and_then(|v| v.as_deref()))
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.health().interval_ms)
    }

    /// A fresh runtime token: `<agent id>.<random>`, so the connect endpoint
    /// knows which actor to ask without a lookup table.
    fn new_runtime_token(&self) -> String {
        format!("{}.{}", self.rec.id, self.ctx.secrets.generate_token())
    }

    fn request(&self, token: String) -> DeployRequest {
        DeployRequest {
            agent_id: self.rec.id.clone(),
            org_id: self.rec.org_id.clone(),
            target: self.rec.spec.target,
            model: self.rec.spec.model.clone().unwrap_or_default(),
            runtime_token: token,
            runtime: self.rec.spec.runtime.clone(),
            secrets: {
                let gov = self.ctx.gov.org(&self.rec.org_id);
                self.rec
                    .spec
                    .runtime
                    .secret_names()
                    .into_iter()
                    .filter_map(|(_, n)| {
                        gov.docs
                            .secrets
                            .get(n)
                            .map(|s| (n.to_string(), s.sealed.clone()))
                    })
                    .collect()
            },
            heartbeat_interval_ms: Settings::heartbeat_interval(self.interval()).as_millis() as u64,
        }
    }

    /// Applies `trigger` to `rec` through the transition table, recording the
    /// history entry (self-edges are not recorded).
    fn apply(
        &self,
        rec: &mut AgentRecord,
        trigger: Trigger,
        reason: Option<String>,
        by: &Who,
        out: &mut Vec<Transition>,
    ) -> bool {
        let Some(to) = lifecycle::step(rec.state, trigger) else {
            return false;
        };
        if to != rec.state {
            out.push(Transition {
                from: Some(rec.state),
                to,
                reason: reason.clone(),
                by: by.to_text(),
                at: self.now(),
            });
        }
        rec.state = to;
        rec.state_reason = reason;
        true
    }

    fn illegal(&self, command: Command) -> Error {
        Error::IllegalTransition {
            state: self.rec.state,
            command,
            allowed: lifecycle::allowed_commands(self.rec.state),
        }
    }

    /// Writes `next` (with its history and event) and, once committed, makes it
    /// the actor's state. On failure nothing in memory changes.
    async fn commit(
        &mut self,
        myself: &ActorRef<AgentMsg>,
        next: AgentRecord,
        transitions: Vec<Transition>,
        event: Option<AgentEvent>,
        usage: Option<Charge<'_>>,
    ) -> Result<WriteOutcome> {
        self.commit_audited(myself, next, transitions, event, usage, None)
            .await
    }

    /// The audit entry of an operator's change.
    fn audit(&self, by: &Who, action: &str, summary: serde_json::Value) -> AuditEntry {
        AuditEntry::new(
            &self.rec.org_id,
            by,
            format!("agent.{action}"),
            format!("agent:{}", self.rec.id),
            summary,
            self.now(),
        )
    }

    /// [`commit`](Self::commit) with the operator's audit entry; without one,
    /// state changes are audited as the system's (or the runtime's).
    async fn commit_audited(
        &mut self,
        myself: &ActorRef<AgentMsg>,
        mut next: AgentRecord,
        transitions: Vec<Transition>,
        event: Option<AgentEvent>,
        usage: Option<Charge<'_>>,
        audit: Option<AuditEntry>,
    ) -> Result<WriteOutcome> {
        next.updated_at = self.now();
        let audit = audit.or_else(|| AuditEntry::for_transitions(&next, &transitions));
        let versions = std::mem::take(&mut self.new_versions);
        let write = AgentWrite {
            record: &next,
            transitions: &transitions,
            event: event.as_ref(),
            usage,
            audit: audit.as_ref(),
            versions: &versions,
        };
        let outcome = match self.ctx.store.write_agent(write).await {
            Ok(o) => o,
            Err(StoreError::Fenced) => {
                // A newer incarnation owns the agent: this one must go quietly.
                myself.stop(Some(EXIT_FENCED.into()));
                return Err(Error::Unavailable("agent actor was replaced; retry".into()));
            }
            Err(StoreError::Conflict(_)) => return Err(Error::NameTaken(next.spec.name.clone())),
            Err(e) => return Err(e.into()),
        };
        if outcome == WriteOutcome::Duplicate {
            return Ok(outcome);
        }
        if let Some(v) = versions.into_iter().last() {
            self.version = Some(Some(Box::new(v)));
        }
        if let Some(c) = usage {
            let org = &next.org_id;
            let total = self
                .ctx
                .tenancy
                .charge(org, c.org_period, c.tokens, c.cost_micros);
            if total.is_exhausted(&self.ctx.tenancy.get(org).budget) {
                enforce_org_budget(&self.ctx, org);
            }
        }
        let entered_starting = transitions.iter().any(|t| t.to == State::Starting);
        self.rec = next;
        if entered_starting {
            self.starting_since = Instant::now();
            // The start timeout holds whatever the probe interval (a 10 min
            // interval must not make a 60 s start timeout 10 min long).
            let timeout = self.ctx.settings.start_timeout + Duration::from_millis(5);
            myself.send_after(timeout, || AgentMsg::Tick);
        }
        self.publish(transitions, event);
        self.sync_ticker(myself);
        Ok(outcome)
    }

    fn publish(&mut self, transitions: Vec<Transition>, event: Option<AgentEvent>) {
        self.snapshot = AgentSnapshot::new(AgentView::of(&self.rec, self.health()));
        let _ = self.tenant.cast(TenantMsg::Changed(self.snapshot.clone()));
        for transition in transitions {
            metrics::counter!("cadre_agent_transitions_total", "to" => transition.to.as_str())
                .increment(1);
            let _ = self.ctx.events.send(Arc::new(Event::Transition {
                org_id: self.rec.org_id.clone(),
                agent_id: self.rec.id.clone(),
                transition,
            }));
        }
        if let Some(event) = event {
            let _ = self.ctx.events.send(Arc::new(Event::Agent {
                org_id: self.rec.org_id.clone(),
                agent_id: self.rec.id.clone(),
                event,
            }));
        }
    }

    /// Runs the health timer exactly while the state is supervised, at the
    /// agent's current interval.
    fn sync_ticker(&mut self, myself: &ActorRef<AgentMsg>) {
        let want = self.rec.state.is_supervised().then(|| self.interval());
        match (&self.ticker, want) {
            (Some((_, cur)), Some(w)) if *cur == w => {}
            (_, want) => {
                if let Some((handle, _)) = self.ticker.take() {
                    handle.abort();
                }
                if let Some(interval) = want {
                    self.ticker =
                        Some((myself.send_interval(interval, || AgentMsg::Tick), interval));
                }
            }
        }
    }

    /// Spawns deployer work; its result comes back as `OpDone` with a new generation.
    fn spawn_op<F>(&mut self, myself: &ActorRef<AgentMsg>, work: F)
    where
        F: std::future::Future<Output = OpResult> + Send + 'static,
    {
        self.op += 1;
        let op = self.op;
        let me = myself.clone();
        tokio::spawn(async move {
            let result = work.await;
            // The actor may have been replaced meanwhile; its successor reconciles.
            let _ = me.cast(AgentMsg::OpDone { op, result });
        });
    }

    /// Fire-and-forget deployer stop (after stop, budget or give-up). A
    /// failure is logged and counted; the next deploy/start retries it.
    fn stop_in_background(&mut self) {
        // Supersede any running operation so its result is ignored.
        self.op += 1;
        if let Some(dep) = self.rec.deployment_ref.clone() {
            let deployer = self.ctx.deployer.clone();
            let id = self.rec.id.clone();
            tokio::spawn(async move {
                if let Err(e) = deployer.stop(&dep).await {
                    metrics::counter!("cadre_deployer_errors_total", "op" => "stop").increment(1);
                    tracing::warn!(agent = %id, error = %e, "stopping the runtime failed");
                }
            });
        }
    }

    fn start_op(&mut self, myself: &ActorRef<AgentMsg>, restart: bool) {
        self.start_returned = false;
        let deployer = self.ctx.deployer.clone();
        match self.rec.deployment_ref.clone() {
            Some(dep) => self.spawn_op(myself, async move {
                if restart {
                    let _ = deployer.stop(&dep).await;
                }
                OpResult::Started(deployer.start(&dep).await)
            }),
            // Commands refuse this case up front (see `command`); a restarted
            // actor caught in `starting` without a deployment fails its start
            // and goes through recovery to `error`.
            None => self.spawn_op(myself, async {
                OpResult::Started(Err(DeployError {
                    target: "any",
                    message: "no deployment: deploy the agent".into(),
                }))
            }),
        }
    }

    /// The agent's current budget period (its kind, its organization's time zone).
    fn period(&self, rec: &AgentRecord) -> Period {
        self.ctx
            .tenancy
            .agent_period(&rec.org_id, rec.spec.budget.period, self.now())
    }

    /// What the organization has spent in its current period.
    fn org_spent(&self, org: &OrgId) -> Usage {
        let tenancy = &self.ctx.tenancy;
        tenancy.spent(org, tenancy.period(org, self.now()))
    }

    fn budget_check(&self, rec: &mut AgentRecord) -> Result<()> {
        rec.usage = rec.usage.rolled_to(self.period(rec));
        let period = rec.usage.period.to_string();
        match self.over_budget(rec, self.org_spent(&rec.org_id)) {
            None => Ok(()),
            Some(Over::Agent) => Err(Error::BudgetExceeded { period }),
            Some(Over::Org) => Err(Error::OrgBudgetExceeded { period }),
        }
    }

    /// Which budget, if any, forbids `rec` to run: its own, or its
    /// organization's judged by `org_spent`.
    fn over_budget(&self, rec: &AgentRecord, org_spent: Usage) -> Option<Over> {
        if rec.usage.is_exhausted(&rec.spec.budget) {
            Some(Over::Agent)
        } else if org_spent.is_exhausted(&self.ctx.tenancy.get(&rec.org_id).budget) {
            Some(Over::Org)
        } else {
            None
        }
    }
}

/// Effective health settings of `rec`.
pub fn health_of(rec: &AgentRecord, settings: &Settings) -> HealthView {
    HealthView {
        interval_ms: rec
            .spec
            .health
            .interval_ms
            .unwrap_or(settings.health_interval.as_millis() as u64),
        failure_threshold: rec
            .spec
            .health
            .failure_threshold
            .unwrap_or(settings.failure_threshold),
    }
}

impl Actor for AgentActor {
    type Msg = AgentMsg;
    type State = AgentState;
    type Arguments = AgentArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<AgentMsg>,
        args: AgentArgs,
    ) -> std::result::Result<AgentState, ActorProcessingErr> {
        let snapshot = args.snapshot;
        Ok(AgentState {
            rec: args.record,
            ctx: args.ctx,
            tenant: args.tenant,
            snapshot,
            op: 0,
            ticker: None,
            probe_in_flight: false,
            probe_again: false,
            start_returned: false,
            last_problem: None,
            failures: 0,
            recoveries: 0,
            recovering: false,
            recovery_generation: 0,
            recovery_pending: false,
            healthy_since: None,
            // Grace after (re-)attaching: staleness counts from now.
            last_seen: Instant::now(),
            starting_since: Instant::now(),
            conn: None,
            next_conn: 1,
            gov: None,
            tasks: None,
            version: None,
            new_versions: Vec::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<AgentMsg>,
        st: &mut AgentState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        // Boxed: a task's allocation is the size of its largest future state,
        // and this one would otherwise be carried by every idle agent for life.
        Box::pin(reconcile(&myself, st)).await;
        st.sync_ticker(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AgentMsg>,
        st: &mut AgentState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        if let Some((h, _)) = st.ticker.take() {
            h.abort();
        }
        Ok(())
    }

    /// Every arm that awaits is boxed: ractor keeps the future of the message
    /// loop (which inlines this one) allocated while an actor waits on its
    /// mailbox, and unboxed this future is kilobytes per idle agent.
    async fn handle(
        &self,
        myself: ActorRef<AgentMsg>,
        msg: AgentMsg,
        st: &mut AgentState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        // Everything logged while handling carries the organization and agent.
        let span = tracing::info_span!("agent", org = %st.rec.org_id, agent = %st.rec.id);
        tracing::Instrument::instrument(Box::pin(handle_msg(myself, msg, st)), span).await
    }
}

async fn handle_msg(
    myself: ActorRef<AgentMsg>,
    msg: AgentMsg,
    st: &mut AgentState,
) -> std::result::Result<(), ActorProcessingErr> {
    match msg {
        AgentMsg::Get(reply) => {
            let _ = reply.send(st.snapshot.clone());
        }
        AgentMsg::Command { cmd, by, reply } => {
            let r = Box::pin(command(&myself, st, cmd, &by)).await;
            let _ = reply.send(r);
        }
        AgentMsg::Patch { patch, by, reply } => {
            let r = Box::pin(patch_agent(&myself, st, *patch, &by)).await;
            let _ = reply.send(r);
        }
        AgentMsg::Delete { by, reply } => {
            let r = Box::pin(delete(&myself, st, &by)).await;
            let _ = reply.send(r);
        }
        AgentMsg::RuntimeHello { token, reply } => {
            let r = Box::pin(hello(&myself, st, &token)).await;
            let _ = reply.send(r);
        }
        AgentMsg::Heartbeat { conn, reply } => {
            let r = if st.conn == Some(conn) {
                st.last_seen = Instant::now();
                Ok(should_run(st.rec.state))
            } else {
                Err(Error::Unauthorized)
            };
            let _ = reply.send(r);
        }
        AgentMsg::Usage {
            conn,
            report,
            reply,
        } => {
            let r = if st.conn == Some(conn) {
                Box::pin(usage(&myself, st, report)).await
            } else {
                Err(Error::Unauthorized)
            };
            let _ = reply.send(r);
        }
        AgentMsg::ToolCheck { conn, call, reply } => {
            let r = if st.conn == Some(conn) {
                tool_check(st, &call)
            } else {
                Err(Error::Unauthorized)
            };
            let _ = reply.send(r);
        }
        AgentMsg::Reserve { conn, req, reply } => {
            let r = if st.conn == Some(conn) {
                Ok(reserve(st, req))
            } else {
                Err(Error::Unauthorized)
            };
            let _ = reply.send(r);
        }
        AgentMsg::Halt { scope, by } => Box::pin(halt(&myself, st, scope, &by)).await,
        AgentMsg::OpenConversation {
            id,
            title,
            by,
            reply,
        } => {
            let r = if matches!(st.rec.state, State::Running | State::Degraded) {
                let audit = st.audit(
                    &by,
                    "conversation_open",
                    serde_json::json!({ "conversation_id": id, "title": title }),
                );
                let next = st.rec.clone();
                st.commit_audited(&myself, next, Vec::new(), None, None, Some(audit))
                    .await
                    .map(|_| ())
            } else {
                Err(Error::Conflict(
                    "agent_not_running",
                    format!(
                        "{} is {}: only a running agent can talk (deploy or start it first)",
                        st.rec.spec.name,
                        st.rec.state.as_str()
                    ),
                ))
            };
            let _ = reply.send(r);
        }
        AgentMsg::Logs { lines, reply } => match st.rec.deployment_ref.clone() {
            Some(dep) => {
                let deployer = st.ctx.deployer.clone();
                tokio::spawn(async move {
                    let r = deployer
                        .logs(&dep, lines)
                        .await
                        .map_err(|e| Error::Unavailable(e.to_string()));
                    let _ = reply.send(r);
                });
            }
            None => {
                let _ = reply.send(Err(Error::Conflict(
                    "not_deployed",
                    "the agent has no deployment: deploy it first".into(),
                )));
            }
        },
        AgentMsg::Tick => {
            expire_holds(st);
            tick(&myself, st)
        }
        AgentMsg::Exited => {
            let starting = st.rec.state == State::Starting;
            if st.rec.state.is_supervised() && (st.start_returned || !starting) {
                probe(&myself, st);
            }
        }
        AgentMsg::ProbeDone(status) => Box::pin(probe_done(&myself, st, status)).await,
        AgentMsg::OpDone { op, result } => {
            if op == st.op {
                Box::pin(op_done(&myself, st, result)).await;
            }
        }
        AgentMsg::RecoverNow { generation } => {
            if generation == st.recovery_generation && st.recovery_pending {
                Box::pin(recover(&myself, st)).await;
            }
        }
        AgentMsg::EnforceBudget => Box::pin(enforce_budget(&myself, st)).await,
        AgentMsg::Panic => panic!("chaos: agent {} panicked on request", st.rec.id),
        AgentMsg::SubmitTask { task, by, reply } => {
            let r = Box::pin(submit_task(st, *task, &by)).await;
            let _ = reply.send(r);
        }
        AgentMsg::AttachTasks { conn, pid, tx } => {
            if st.conn == Some(conn) {
                Box::pin(attach_tasks(st, conn, pid, tx)).await;
            }
        }
        AgentMsg::TaskReport {
            conn,
            report,
            reply,
        } => {
            let r = if st.conn == Some(conn) {
                Box::pin(task_report(st, report)).await
            } else {
                Err(Error::Unauthorized)
            };
            let _ = reply.send(r);
        }
        AgentMsg::CancelTask { id, by, reply } => {
            let r = Box::pin(cancel_task(st, &id, &by)).await;
            let _ = reply.send(r);
        }
    }
    Ok(())
}

fn should_run(state: State) -> bool {
    matches!(
        state,
        State::Starting | State::Running | State::Degraded | State::Updating
    )
}

/// Resumes whatever the previous incarnation was in the middle of.
async fn reconcile(myself: &ActorRef<AgentMsg>, st: &mut AgentState) {
    match st.rec.state {
        State::Provisioning => provision_op(myself, st),
        State::Deploying => {
            // The token the old incarnation wrote may never have reached the
            // deployment; issue a fresh one.
            deploy_with_new_token(myself, st, Vec::new()).await;
        }
        State::Starting => st.start_op(myself, false),
        State::Updating => update_op(myself, st).await,
        State::Destroying => destroy_op(myself, st),
        // Running and degraded re-attach: the probes decide. Everything else
        // waits for an operator and is never probed.
        _ => {}
    }
}

fn provision_op(myself: &ActorRef<AgentMsg>, st: &mut AgentState) {
    let deployer = st.ctx.deployer.clone();
    let req = st.request(String::new());
    let old = st.rec.deployment_ref.clone();
    st.spawn_op(myself, async move {
        if let Some(old) = old {
            let _ = deployer.stop(&old).await;
        }
        OpResult::Provisioned(deployer.provision(&req).await)
    });
}

/// Issues a runtime token, persists its hash, then hands it to the deployer.
async fn deploy_with_new_token(
    myself: &ActorRef<AgentMsg>,
    st: &mut AgentState,
    transitions: Vec<Transition>,
) {
    let token = st.new_runtime_token();
    let mut next = st.rec.clone();
    next.runtime_token_hash = Some(st.ctx.secrets.hash_token(&token));
    if let Err(e) = st.commit(myself, next, transitions, None, None).await {
        tracing::warn!(agent = %st.rec.id, error = %e, "could not persist the runtime token; will retry on restart");
        return;
    }
    let Some(dep) = st.rec.deployment_ref.clone() else {
        return;
    };
    let deployer = st.ctx.deployer.clone();
    let req = st.request(token);
    st.spawn_op(myself, async move {
        OpResult::Deployed(deployer.deploy(&dep, &req).await)
    });
}

async fn update_op(myself: &ActorRef<AgentMsg>, st: &mut AgentState) {
    let token = st.new_runtime_token();
    let mut next = st.rec.clone();
    next.runtime_token_hash = Some(st.ctx.secrets.hash_token(&token));
    if st
        .commit(myself, next, Vec::new(), None, None)
        .await
        .is_err()
    {
        return;
    }
    let deployer = st.ctx.deployer.clone();
    let req = st.request(token);
    let dep = st.rec.deployment_ref.clone();
    st.spawn_op(myself, async move {
        let run = async {
            // Only running/degraded agents update, and they have a deployment.
            let dep = dep.ok_or_else(|| DeployError {
                target: "any",
                message: "no deployment to update".into(),
            })?;
            let _ = deployer.stop(&dep).await;
            deployer.deploy(&dep, &req).await?;
            deployer.start(&dep).await
        };
        OpResult::Updated(run.await)
    });
}

fn destroy_op(myself: &ActorRef<AgentMsg>, st: &mut AgentState) {
    let deployer = st.ctx.deployer.clone();
    let dep = st.rec.deployment_ref.clone();
    st.spawn_op(myself, async move {
        let run = async {
            if let Some(dep) = dep {
                deployer.stop(&dep).await?;
                deployer.destroy(&dep).await?;
            }
            Ok(())
        };
        OpResult::Destroyed(run.await)
    });
}

async fn command(
    myself: &ActorRef<AgentMsg>,
    st: &mut AgentState,
    cmd: Command,
    by: &Who,
) -> Result<Arc<AgentSnapshot>> {
    if lifecycle::step(st.rec.state, Trigger::Cmd(cmd)).is_none()
        || matches!(cmd, Command::Update | Command::Delete)
    {
        return Err(st.illegal(cmd));
    }
    if matches!(cmd, Command::Deploy | Command::Start | Command::Restart)
        && st.ctx.tenancy.get(&st.rec.org_id).suspended
    {
        return Err(Error::Suspended);
    }
    if matches!(cmd, Command::Deploy | Command::Start | Command::Restart)
        && let Some(scope) = st.ctx.gov.halted(&st.rec.org_id, &st.rec.id)
    {
        return Err(Error::Conflict(
            "halted",
            format!("the {scope} kill switch is on: lift it before starting agents"),
        ));
    }
    let audit = st.audit(
        by,
        cmd.as_str(),
        serde_json::json!({ "from": st.rec.state.as_str() }),
    );
    let mut next = st.rec.clone();
    let mut tr = Vec::new();
    match cmd {
        Command::Deploy => {
            st.budget_check(&mut next)?;
            if next.state != State::Ready {
                st.apply(&mut next, Trigger::Cmd(Command::Deploy), None, by, &mut tr);
                let missing = next.spec.missing_fields();
                if !missing.is_empty() {
                    next.state_reason =
                        Some(format!("missing required fields: {}", missing.join(", ")));
                    st.commit_audited(myself, next, tr, None, None, Some(audit.clone()))
                        .await?;
                    return Ok(st.snapshot.clone());
                }
                st.apply(&mut next, Trigger::ConfigComplete, None, by, &mut tr);
            }
            st.apply(&mut next, Trigger::Cmd(Command::Deploy), None, by, &mut tr);
            st.commit_audited(myself, next, tr, None, None, Some(audit.clone()))
                .await?;
            st.recoveries = 0;
            st.recovering = false;
            provision_op(myself, st);
        }
        Command::Start | Command::Restart => {
            if next.deployment_ref.is_none() {
                // Only deploy provisions (and persists the deployment and its
                // runtime token); starting from nothing would skip that.
                return Err(Error::Invalid(format!(
                    "the agent has no deployment: deploy it instead of {cmd}"
                )));
            }
            st.budget_check(&mut next)?;
            st.apply(&mut next, Trigger::Cmd(cmd), None, by, &mut tr);
            if cmd == Command::Restart {
                next.restart_count = next.restart_count.saturating_add(1);
            }
            st.commit_audited(myself, next, tr, None, None, Some(audit.clone()))
                .await?;
            // An operator (re)start resets auto-recovery.
            st.recoveries = 0;
            st.recovering = false;
            st.recovery_pending = false;
            st.failures = 0;
            st.start_op(myself, cmd == Command::Restart);
        }
        Command::Stop => {
            st.apply(&mut next, Trigger::Cmd(cmd), None, by, &mut tr);
            st.commit_audited(myself, next, tr, None, None, Some(audit.clone()))
                .await?;
            st.recovery_pending = false;
            st.stop_in_background();
        }
        Command::Destroy => {
            st.apply(&mut next, Trigger::Cmd(cmd), None, by, &mut tr);
            st.commit_audited(myself, next, tr, None, None, Some(audit.clone()))
                .await?;
            st.recovery_pending = false;
            destroy_op(myself, st);
        }
        Command::Update | Command::Delete => return Err(st.illegal(cmd)),
    }
    Ok(st.snapshot.clone())
}

async fn patch_agent(
    myself: &ActorRef<AgentMsg>,
    st: &mut AgentState,
    patch: AgentPatch,
    by: &Who,
) -> Result<Arc<AgentSnapshot>> {
    let rollout = patch.touches_deployment(&st.rec.spec);
    let state = st.rec.state;
    let live = matches!(state, State::Running | State::Degraded);
    if state == State::Destroying
        || (rollout
            && matches!(
                state,
                State::Provisioning | State::Deploying | State::Starting | State::Updating
            ))
    {
        return Err(st.illegal(Command::Update));
    }
    // A deployment belongs to one target: moving it would strand the old
    // one. The operator destroys it first (which keeps the agent).
    if let Some(target) = patch.target
        && target != st.rec.spec.target
        && st.rec.deployment_ref.is_some()
    {
        return Err(Error::Conflict(
            "target_in_use",
            format!(
                "the agent is deployed on {}: destroy the deployment first, then change the target",
                st.rec.spec.target.as_str()
            ),
        ));
    }
    let mut next = st.rec.clone();
    next.spec = patch.apply(&st.rec.spec);
    let mut tr = Vec::new();
    let complete = next.spec.missing_fields().is_empty();
    match state {
        State::Configuring if complete => {
            st.apply(&mut next, Trigger::ConfigComplete, None, by, &mut tr);
        }
        State::Configuring => {
            let missing = next.spec.missing_fields();
            next.state_reason = Some(format!("missing required fields: {}", missing.join(", ")));
        }
        State::Ready if !complete => {
            st.apply(
                &mut next,
                Trigger::ConfigIncomplete,
                Some("required field removed".into()),
                by,
                &mut tr,
            );
        }
        _ => {}
    }
    if live && rollout {
        if !complete {
            return Err(Error::Invalid(format!(
                "a running agent needs {}",
                next.spec.missing_fields().join(", ")
            )));
        }
        st.apply(
            &mut next,
            Trigger::Cmd(Command::Update),
            Some("configuration changed".into()),
            by,
            &mut tr,
        );
    }
    // A lowered budget takes effect at once.
    next.usage = next.usage.rolled_to(st.period(&next));
    let org_spent = st.org_spent(&next.org_id);
    let event = st
        .over_budget(&next, org_spent)
        .and_then(|over| stop_for_budget(st, &mut next, &mut tr, over, org_spent));
    let mut summary = patch.summary();
    // A change of what defines its behaviour is a new version.
    let before = crate::domain::definition(&st.rec.spec);
    let after = crate::domain::definition(&next.spec);
    if before != after {
        st.version().await?;
        let latest = st.version.as_ref().and_then(|v| v.as_deref());
        let mut n = latest.map_or(0, |v| v.n);
        let mut versions = Vec::new();
        let version = |n: u32, definition, by: String, at| crate::domain::AgentVersion {
            agent_id: st.rec.id.clone(),
            org_id: st.rec.org_id.clone(),
            n,
            definition,
            by,
            at,
        };
        // An agent from before versions (or whose last version is not what
        // it was): what it was becomes a version first.
        if latest.is_none_or(|v| v.definition != before) {
            n += 1;
            versions.push(version(n, before, "system".into(), st.rec.updated_at));
        }
        n += 1;
        versions.push(version(n, after, by.to_text(), st.now()));
        summary["version"] = serde_json::json!(n);
        st.new_versions = versions;
    }
    let audit = st.audit(by, "update", summary);
    let committed = st
        .commit_audited(myself, next, tr, event, None, Some(audit))
        .await;
    st.new_versions.clear();
    committed?;
    match st.rec.state {
        State::Updating => {
            st.recovery_pending = false;
            update_op(myself, st).await;
        }
        State::Stopped if live => st.stop_in_background(),
        _ => {}
    }
    Ok(st.snapshot.clone())
}

async fn delete(
    myself: &ActorRef<AgentMsg>,
    st: &mut AgentState,
    by: &Who,
) -> Result<DeleteOutcome> {
    let audit = st.audit(
        by,
        "delete",
        serde_json::json!({ "from": st.rec.state.as_str() }),
    );
    if lifecycle::deletes_without_teardown(st.rec.state) {
        return finish_delete(myself, st, &audit)
            .await
            .map(|()| DeleteOutcome::Deleted);
    }
    let mut next = st.rec.clone();
    let mut tr = Vec::new();
    if !st.apply(
        &mut next,
        Trigger::Cmd(Command::Delete),
        Some(DELETE_REQUESTED.into()),
        by,
        &mut tr,
    ) {
        return Err(st.illegal(Command::Delete));
    }
    st.commit_audited(myself, next, tr, None, None, Some(audit))
        .await?;
    destroy_op(myself, st);
    Ok(DeleteOutcome::Accepted(st.snapshot.clone()))
}

async fn finish_delete(
    myself: &ActorRef<AgentMsg>,
    st: &mut AgentState,
    audit: &AuditEntry,
) -> Result<()> {
    match st.ctx.store.delete_agent(&st.rec, st.now(), audit).await {
        Ok(()) => {}
        Err(StoreError::Fenced) => {
            myself.stop(Some(EXIT_FENCED.into()));
            return Err(Error::Unavailable("agent actor was replaced; retry".into()));
        }
        Err(e) => return Err(e.into()),
    }
    let _ = st.tenant.cast(TenantMsg::Removed(st.rec.id.clone()));
    let _ = st.ctx.events.send(Arc::new(Event::Deleted {
        org_id: st.rec.org_id.clone(),
        agent_id: st.rec.id.clone(),
    }));
    myself.stop(Some(EXIT_DELETED.into()));
    Ok(())
}

async fn hello(myself: &ActorRef<AgentMsg>, st: &mut AgentState, token: &str) -> Result<HelloAck> {
    let valid = st
        .rec
        .runtime_token_hash
        .as_deref()
        .is_some_and(|h| constant_time_eq(h, &st.ctx.secrets.hash_token(token)));
    if !valid {
        return Err(Error::Unauthorized);
    }
    let conn = st.next_conn;
    st.next_conn += 1;
    st.conn = Some(conn);
    st.last_seen = Instant::now();
    if st.rec.state == State::Starting {
        let mut next = st.rec.clone();
        let mut tr = Vec::new();
        st.apply(&mut next, Trigger::RuntimeUp, None, &Who::system(), &mut tr);
        st.commit(myself, next, tr, None, None).await?;
        st.failures = 0;
        st.recovering = false;
        st.healthy_since = Some(Instant::now());
    }
    Ok(HelloAck {
        conn,
        heartbeat_interval_ms: Settings::heartbeat_interval(st.interval()).as_millis() as u64,
        should_run: should_run(st.rec.state),
    })
}

/// Which budget is used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Over {
    /// The agent's own.
    Agent,
    /// Its organization's (all agents together).
    Org,
}

impl Over {
    fn kind(self) -> &'static str {
        match self {
            Over::Agent => "budget_exceeded",
            Over::Org => "org_budget_exceeded",
        }
    }
}

/// Stops a live agent whose budget is used up (the one place that does).
/// Returns the `budget_exceeded` (or `org_budget_exceeded`) event when it
/// did stop.
fn stop_for_budget(
    st: &AgentState,
    next: &mut AgentRecord,
    tr: &mut Vec<Transition>,
    over: Over,
    org_spent: Usage,
) -> Option<AgentEvent> {
    if over == Over::Agent {
        // Past 100 % the 80 % warning is moot for the rest of the period.
        next.usage.warned = true;
    }
    let stopped = st.apply(
        next,
        Trigger::BudgetExceeded,
        Some(over.kind().into()),
        &Who::system(),
        tr,
    );
    stopped.then(|| {
        let mut ev = budget_event(st, next, over.kind());
        if over == Over::Org {
            let org = st.ctx.tenancy.get(&next.org_id).budget;
            ev.detail["org"] = serde_json::json!({
                "tokens": org_spent.tokens,
                "cost_micros": org_spent.cost_micros,
                "monthly_tokens": org.monthly_tokens,
                "monthly_cost_micros": org.monthly_cost_micros,
            });
        }
        ev
    })
}

/// Tells every agent of `org` to stop if the organization's budget is used
/// up (each judges for itself against the shared spend).
pub(crate) fn enforce_org_budget(ctx: &Ctx, org: &OrgId) {
    for id in ctx.registry.org_agents(org) {
        if let Some(h) = ctx.registry.agent(org, &id) {
            let _ = h.actor.cast(AgentMsg::EnforceBudget);
        }
    }
}

/// Stops this agent if a budget forbids it to run.
async fn enforce_budget(myself: &ActorRef<AgentMsg>, st: &mut AgentState) {
    if !should_run(st.rec.state) {
        return;
    }
    let mut next = st.rec.clone();
    next.usage = next.usage.rolled_to(st.period(&next));
    let org_spent = st.org_spent(&next.org_id);
    let Some(over) = st.over_budget(&next, org_spent) else {
        return;
    };
    let mut tr = Vec::new();
    let event = stop_for_budget(st, &mut next, &mut tr, over, org_spent);
    if tr.is_empty() {
        // Not in a state the budget stops (e.g. mid-update): the next report
        // or command judges again.
        return;
    }
    // A failed write leaves the agent as it was; the next report or
    // enforcement tries again.
    if st.commit(myself, next, tr, event, None).await.is_ok() && st.rec.state == State::Stopped {
        st.recovery_pending = false;
        st.stop_in_background();
    }
}

fn budget_event(st: &AgentState, rec: &AgentRecord, kind: &str) -> AgentEvent {
    AgentEvent {
        kind: kind.to_string(),
        detail: serde_json::json!({
            "period": rec.usage.period.to_string(),
            "tokens": rec.usage.tokens,
            "cost_micros": rec.usage.cost_micros,
            "monthly_tokens": rec.spec.budget.monthly_tokens,
            "monthly_cost_micros": rec.spec.budget.monthly_cost_micros,
        }),
        at: st.now(),
    }
}

async fn usage(
    myself: &ActorRef<AgentMsg>,
    st: &mut AgentState,
    report: UsageReport,
) -> Result<UsageAck> {
    let mut next = st.rec.clone();
    next.usage = next.usage.rolled_to(st.period(&next));
    let tokens = report.input_tokens.saturating_add(report.output_tokens);
    let cost = st
        .ctx
        .pricing
        .cost_micros(&report.model, report.input_tokens, report.output_tokens);
    next.usage = next.usage.add(tokens, cost);
    // Judge the organization with this report counted.
    let org_period = st.ctx.tenancy.period(&next.org_id, st.now());
    let org_spent = st.org_spent(&next.org_id).add(tokens, cost);
    let mut tr = Vec::new();
    let mut event = None;
    let was_live = should_run(next.state);
    if let Some(over) = st.over_budget(&next, org_spent) {
        event = stop_for_budget(st, &mut next, &mut tr, over, org_spent);
    } else if level(&next.usage, &next.spec.budget) == BudgetLevel::Warn {
        next.usage.warned = true;
        event = Some(budget_event(st, &next, "budget_warning"));
    }
    let charge = Charge {
        report_id: &report.report_id,
        tokens,
        cost_micros: cost,
        org_period,
    };
    let outcome = st.commit(myself, next, tr, event, Some(charge)).await?;
    // Settled: the measured usage now counts, the hold goes.
    if let Some(id) = &report.reservation_id {
        release_hold(st, id);
    }
    metrics::counter!("cadre_usage_tokens_total").increment(tokens);
    if was_live && st.rec.state == State::Stopped {
        st.recovery_pending = false;
        st.stop_in_background();
    }
    Ok(UsageAck {
        counted: outcome == WriteOutcome::Written,
        should_run: should_run(st.rec.state),
        stop_reason: st.rec.state_reason.clone(),
    })
}

fn tick(myself: &ActorRef<AgentMsg>, st: &mut AgentState) {
    match st.rec.state {
        State::Starting
            if st.starting_since.elapsed() > st.ctx.settings.start_timeout
                && !st.probe_in_flight =>
        {
            // Reuse the probe path so that a slow start is handled like a
            // failed one, with what the runtime printed as its reason (why
            // it could not connect, typically).
            st.probe_in_flight = true;
            let waited = st.ctx.settings.start_timeout;
            let deployer = st.ctx.deployer.clone();
            let dep = st.rec.deployment_ref.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                let mut why = format!(
                    "runtime did not say hello within {} s",
                    waited.as_secs_f64()
                );
                if let Some(dep) = dep {
                    let tail = tokio::time::timeout(Duration::from_secs(5), deployer.logs(&dep, 3));
                    if let Ok(Ok(tail)) = tail.await
                        && !tail.trim().is_empty()
                    {
                        why.push_str("; its log ends: ");
                        why.push_str(&crate::domain::clip_tail(&tail.replace('\n', " | "), 600));
                    }
                }
                let _ = me.cast(AgentMsg::ProbeDone(Ok(DeploymentStatus::Stopped(why))));
            });
        }
        // A runtime that exits before its hello is noticed at the next tick
        // on targets that report no exits themselves.
        State::Starting if st.start_returned => probe(myself, st),
        State::Running | State::Degraded => probe(myself, st),
        _ => {}
    }
}

/// Asks the deployer for the runtime's status (one check at a time; one
/// asked for meanwhile runs right after).
fn probe(myself: &ActorRef<AgentMsg>, st: &mut AgentState) {
    if st.probe_in_flight {
        st.probe_again = true;
        return;
    }
    let Some(dep) = st.rec.deployment_ref.clone() else {
        return;
    };
    st.probe_in_flight = true;
    let deployer = st.ctx.deployer.clone();
    let me = myself.clone();
    let limit = st.interval().max(Duration::from_millis(100));
    tokio::spawn(async move {
        let started = Instant::now();
        let status = match tokio::time::timeout(limit, deployer.status(&dep)).await {
            Ok(s) => s,
            Err(_) => Err(DeployError {
                target: "any",
                message: "status check timed out".into(),
            }),
        };
        metrics::histogram!("cadre_probe_duration_seconds").record(started.elapsed().as_secs_f64());
        let _ = me.cast(AgentMsg::ProbeDone(status));
    });
}

async fn probe_done(
    myself: &ActorRef<AgentMsg>,
    st: &mut AgentState,
    status: std::result::Result<DeploymentStatus, DeployError>,
) {
    st.probe_in_flight = false;
    if std::mem::take(&mut st.probe_again) && st.rec.state.is_supervised() {
        // What this probe saw may predate the exit that asked for another.
        probe(myself, st);
    }
    let state = st.rec.state;
    if !matches!(state, State::Running | State::Degraded | State::Starting) {
        return;
    }
    let stale_after = Settings::stale_after(st.interval());
    // `gone`: the deployer knows the runtime is not running (it exited, or
    // its deployment is missing), so there is nothing to wait out. A stale
    // heartbeat or a failed status check may pass: those wait for
    // `failure_threshold` probes in a row.
    let (problem, gone) = match &status {
        Ok(DeploymentStatus::Running)
            if state == State::Starting || st.last_seen.elapsed() <= stale_after =>
        {
            (None, false)
        }
        Ok(DeploymentStatus::Running) => (
            Some(format!(
                "no heartbeat for {} ms",
                st.last_seen.elapsed().as_millis()
            )),
            false,
        ),
        Ok(DeploymentStatus::Stopped(why)) => (Some(format!("runtime not running: {why}")), true),
        Ok(DeploymentStatus::Missing) => (Some("deployment missing".to_string()), true),
        Err(e) => (Some(format!("status check failed: {e}")), false),
    };
    metrics::counter!("cadre_probes_total", "ok" => if problem.is_none() { "true" } else { "false" }).increment(1);
    match problem {
        // Alive but not yet said hello: the start timeout decides (now, if
        // its deadline passed while this probe ran).
        None if state == State::Starting => {
            if st.starting_since.elapsed() > st.ctx.settings.start_timeout {
                tick(myself, st);
            }
        }
        None => {
            st.failures = 0;
            let since = *st.healthy_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= st.ctx.settings.recovery_reset_after {
                st.recoveries = 0;
            }
            if state == State::Degraded {
                let mut next = st.rec.clone();
                let mut tr = Vec::new();
                st.apply(&mut next, Trigger::ProbeOk, None, &Who::system(), &mut tr);
                if st.commit(myself, next, tr, None, None).await.is_ok() {
                    st.recovery_pending = false;
                }
            }
        }
        Some(why) => {
            st.failures = st.failures.saturating_add(1);
            st.healthy_since = None;
            st.last_problem = Some(why.clone());
            let mut next = st.rec.clone();
            let mut tr = Vec::new();
            let trigger = if state == State::Starting {
                Trigger::StartFailed
            } else {
                Trigger::ProbeFailed
            };
            // The server's log says it too, in the agent's span.
            if state == State::Starting {
                tracing::warn!(reason = %why, "the runtime did not start");
            } else {
                tracing::warn!(reason = %why, failures = st.failures, "health probe failed");
            }
            st.apply(&mut next, trigger, Some(why), &Who::system(), &mut tr);
            if !tr.is_empty() && st.commit(myself, next, tr, None, None).await.is_err() {
                return;
            }
            let threshold = st.health().failure_threshold;
            if (state == State::Starting || gone || st.failures >= threshold)
                && !st.recovery_pending
            {
                schedule_recovery(myself, st).await;
            }
        }
    }
}

/// Schedules the next auto-recovery with back-off, or gives up at the limit.
async fn schedule_recovery(myself: &ActorRef<AgentMsg>, st: &mut AgentState) {
    let settings = &st.ctx.settings;
    if st.recoveries >= settings.max_recoveries {
        let mut next = st.rec.clone();
        let mut tr = Vec::new();
        let mut reason = format!(
            "restart limit reached: {} auto-recoveries without {} s healthy",
            st.recoveries,
            settings.recovery_reset_after.as_secs()
        );
        if let Some(last) = &st.last_problem {
            reason.push_str(&format!("; last failure: {last}"));
        }
        st.apply(
            &mut next,
            Trigger::GiveUp,
            Some(reason.clone()),
            &Who::system(),
            &mut tr,
        );
        let event = AgentEvent {
            kind: "restart_limit_reached".into(),
            detail: serde_json::json!({ "recoveries": st.recoveries, "reason": reason }),
            at: st.now(),
        };
        if st.commit(myself, next, tr, Some(event), None).await.is_ok() {
            st.stop_in_background();
        }
        return;
    }
    // The first recovery runs at once (the failure is already known: an
    // exit, a failed start or `failure_threshold` failed probes), later
    // ones back off from `backoff_base` doubling to `backoff_max`.
    let delay = match st.recoveries {
        0 => Duration::ZERO,
        n => settings.recovery_backoff.delay(n - 1),
    };
    st.recovery_pending = true;
    st.recovery_generation += 1;
    let generation = st.recovery_generation;
    myself.send_after(delay, move || AgentMsg::RecoverNow { generation });
}

async fn recover(myself: &ActorRef<AgentMsg>, st: &mut AgentState) {
    st.recovery_pending = false;
    if st.rec.state != State::Degraded {
        return;
    }
    let mut next = st.rec.clone();
    let mut tr = Vec::new();
    let attempt = st.recoveries + 1;
    let reason = match &st.last_problem {
        Some(last) => format!("auto-recovery attempt {attempt} after: {last}"),
        None => format!(
            "auto-recovery attempt {attempt} after {} failed probes",
            st.failures
        ),
    };
    st.apply(
        &mut next,
        Trigger::Recover,
        Some(reason),
        &Who::system(),
        &mut tr,
    );
    next.restart_count = next.restart_count.saturating_add(1);
    if st.commit(myself, next, tr, None, None).await.is_err() {
        return;
    }
    metrics::counter!("cadre_agent_recoveries_total").increment(1);
    st.recoveries = attempt;
    st.recovering = true;
    st.failures = 0;
    st.start_op(myself, true);
}

async fn op_done(myself: &ActorRef<AgentMsg>, st: &mut AgentState, result: OpResult) {
    let mut next = st.rec.clone();
    let mut tr = Vec::new();
    let sys = Who::system();
    match result {
        OpResult::Provisioned(Ok(dep)) if st.rec.state == State::Provisioning => {
            next.deployment_ref = Some(dep);
            st.apply(&mut next, Trigger::Provisioned, None, &sys, &mut tr);
            let mut staged = next;
            // Persist the handle and the move to deploying together with the token.
            let token = st.new_runtime_token();
            staged.runtime_token_hash = Some(st.ctx.secrets.hash_token(&token));
            if st.commit(myself, staged, tr, None, None).await.is_ok()
                && let Some(dep) = st.rec.deployment_ref.clone()
            {
                let deployer = st.ctx.deployer.clone();
                let req = st.request(token);
                st.spawn_op(myself, async move {
                    OpResult::Deployed(deployer.deploy(&dep, &req).await)
                });
            }
        }
        OpResult::Deployed(Ok(())) if st.rec.state == State::Deploying => {
            st.apply(&mut next, Trigger::Deployed, None, &sys, &mut tr);
            if st.commit(myself, next, tr, None, None).await.is_ok() {
                st.start_op(myself, false);
            }
        }
        OpResult::Updated(Ok(())) if st.rec.state == State::Updating => {
            st.apply(&mut next, Trigger::Updated, None, &sys, &mut tr);
            let _ = st.commit(myself, next, tr, None, None).await;
        }
        OpResult::Destroyed(Ok(())) if st.rec.state == State::Destroying => {
            if st.rec.state_reason.as_deref() == Some(DELETE_REQUESTED) {
                let audit = st.audit(&sys, "delete", serde_json::json!({ "after": "teardown" }));
                if let Err(e) = finish_delete(myself, st, &audit).await {
                    tracing::warn!(agent = %st.rec.id, error = %e, "delete after teardown failed; retried on restart");
                }
                return;
            }
            next.deployment_ref = None;
            next.runtime_token_hash = None;
            st.apply(&mut next, Trigger::Destroyed, None, &sys, &mut tr);
            let _ = st.commit(myself, next, tr, None, None).await;
        }
        OpResult::Started(Ok(())) => {
            // Running only once the runtime says hello; from now on a
            // stopped runtime is a failed start. One look now: a runtime
            // that exited before this answer arrived (its exit report was
            // the start's business then) is a failed start already.
            st.start_returned = true;
            if st.rec.state == State::Starting {
                probe(myself, st);
            }
        }
        OpResult::Started(Err(e)) if st.rec.state == State::Starting => {
            metrics::counter!("cadre_deployer_errors_total", "op" => "start").increment(1);
            st.probe_in_flight = true;
            let _ = myself.cast(AgentMsg::ProbeDone(Ok(DeploymentStatus::Stopped(format!(
                "start failed: {e}"
            )))));
        }
        OpResult::Provisioned(Err(e))
        | OpResult::Deployed(Err(e))
        | OpResult::Updated(Err(e))
        | OpResult::Destroyed(Err(e)) => {
            metrics::counter!("cadre_deployer_errors_total", "op" => "deploy").increment(1);
            if st.apply(
                &mut next,
                Trigger::Failed,
                Some(e.to_string()),
                &sys,
                &mut tr,
            ) {
                let _ = st.commit(myself, next, tr, None, None).await;
            }
        }
        // A result that no longer matches the state (superseded by a command).
        _ => {}
    }
}

/// Judges a tool call with the permission engine (the agent's profile, its
/// organization's catalog and policies, the kill switches, its rate limits).
fn tool_check(st: &mut AgentState, call: &ToolRequest) -> Result<crate::governance::Verdict> {
    use crate::governance::{DenyReason, Verdict, engine};
    let ctx = st.ctx.clone();
    let org = &st.rec.org_id;
    let halted = ctx.gov.halted(org, &st.rec.id);
    if halted.is_none() && !should_run(st.rec.state) {
        return Ok(Verdict::Deny {
            reason: DenyReason::Halted,
            message: format!("the agent is {}: no tool calls", st.rec.state.as_str()),
        });
    }
    let gov = ctx.gov.org(org);
    let name = st
        .rec
        .spec
        .profile
        .as_deref()
        .unwrap_or(ctx.gov.default_profile());
    let profile = gov.profiles.get(name).map(|p| &**p);
    let now = st.now();
    let g = st.gov.get_or_insert_with(Default::default);
    let agent = &st.rec.id;
    let verdict = engine::check(
        &gov,
        profile,
        halted,
        &engine::ToolCall {
            tool: &call.tool,
            arguments: Some(&call.arguments),
            estimated_cost_micros: call.estimated_cost_micros,
            now_ms: now,
        },
        &mut g.rates,
        || {
            ctx.gov
                .grant_for(org, agent, &call.tool, &call.args_hash, now)
        },
    );
    let label = match &verdict {
        Verdict::Allow { .. } => "allow",
        Verdict::Deny { .. } => "deny",
        Verdict::NeedsApproval { .. } => "needs_approval",
    };
    metrics::counter!("cadre_tool_checks_total", "verdict" => label).increment(1);
    Ok(verdict)
}

/// Drops holds older than the reservation TTL (a runtime that died
/// mid-call never settles).
fn expire_holds(st: &mut AgentState) {
    let ttl = st.ctx.settings.reservation_ttl;
    let Some(g) = st.gov.as_mut() else { return };
    let stale: Vec<String> = g
        .held
        .iter()
        .filter(|(_, h)| h.at.elapsed() > ttl)
        .map(|(id, _)| id.clone())
        .collect();
    for id in stale {
        release_hold(st, &id);
    }
}

fn release_hold(st: &mut AgentState, id: &str) {
    if let Some(h) = st.gov.as_mut().and_then(|g| g.held.remove(id)) {
        st.ctx
            .tenancy
            .release(&st.rec.org_id, h.tokens, h.cost_micros);
    }
}

/// Holds a model call's maximum cost against the agent's budget and its
/// organization's, or refuses. The agent's check runs in this actor (one
/// message at a time), the organization's under its ledger lock, so
/// concurrent reservations never overshoot either.
fn reserve(st: &mut AgentState, req: ReserveRequest) -> ReserveAck {
    expire_holds(st);
    let tokens = req.input_tokens.saturating_add(req.max_output_tokens);
    let cost = st
        .ctx
        .pricing
        .cost_micros(&req.model, req.input_tokens, req.max_output_tokens);
    let refuse = |reason: &str| ReserveAck {
        granted: false,
        tokens,
        cost_micros: cost,
        reason: Some(reason.to_string()),
    };
    if st.ctx.gov.halted(&st.rec.org_id, &st.rec.id).is_some() {
        return refuse("halted");
    }
    if !should_run(st.rec.state) {
        return refuse(st.rec.state_reason.as_deref().unwrap_or("stopped"));
    }
    if let Some(h) = st
        .gov
        .as_ref()
        .and_then(|g| g.held.get(&req.reservation_id))
    {
        // A repeated reservation (a reconnecting runtime) holds nothing more.
        return ReserveAck {
            granted: true,
            tokens: h.tokens,
            cost_micros: h.cost_micros,
            reason: None,
        };
    }
    let usage = st.rec.usage.rolled_to(st.period(&st.rec));
    let (held_tokens, held_cost) = st.gov.as_ref().map_or((0, 0), |g| {
        g.held.values().fold((0u64, 0u64), |(t, c), h| {
            (t.saturating_add(h.tokens), c.saturating_add(h.cost_micros))
        })
    });
    let limits = st.rec.spec.budget;
    let fits = |used: u64, held: u64, more: u64, limit: Option<u64>| {
        limit
            .is_none_or(|l| u128::from(used) + u128::from(held) + u128::from(more) <= u128::from(l))
    };
    if !(fits(usage.tokens, held_tokens, tokens, limits.monthly_tokens)
        && fits(
            usage.cost_micros,
            held_cost,
            cost,
            limits.monthly_cost_micros,
        ))
    {
        metrics::counter!("cadre_reservations_total", "granted" => "false").increment(1);
        return refuse(Over::Agent.kind());
    }
    let org = st.rec.org_id.clone();
    let org_period = st.ctx.tenancy.period(&org, st.now());
    if !st.ctx.tenancy.try_reserve(&org, org_period, tokens, cost) {
        metrics::counter!("cadre_reservations_total", "granted" => "false").increment(1);
        return refuse(Over::Org.kind());
    }
    metrics::counter!("cadre_reservations_total", "granted" => "true").increment(1);
    st.gov.get_or_insert_with(Default::default).held.insert(
        req.reservation_id,
        Held {
            tokens,
            cost_micros: cost,
            at: Instant::now(),
        },
    );
    ReserveAck {
        granted: true,
        tokens,
        cost_micros: cost,
        reason: None,
    }
}

/// A kill switch: stop the agent (the deployer stops gracefully, then
/// forcibly after its grace period) with reason `halted (<scope>)`.
async fn halt(myself: &ActorRef<AgentMsg>, st: &mut AgentState, scope: &str, by: &Who) {
    // Holds are released at once: nothing more will be spent.
    let ids: Vec<String> = st
        .gov
        .as_ref()
        .map(|g| g.held.keys().cloned().collect())
        .unwrap_or_default();
    for id in ids {
        release_hold(st, &id);
    }
    if lifecycle::step(st.rec.state, Trigger::Cmd(Command::Stop)).is_none() {
        return;
    }
    let mut next = st.rec.clone();
    let mut tr = Vec::new();
    let reason = format!("halted ({scope} kill switch)");
    st.apply(
        &mut next,
        Trigger::Cmd(Command::Stop),
        Some(reason),
        by,
        &mut tr,
    );
    let audit = st.audit(by, "halt", serde_json::json!({ "scope": scope }));
    if st
        .commit_audited(myself, next, tr, None, None, Some(audit))
        .await
        .is_ok()
    {
        st.recovery_pending = false;
        st.stop_in_background();
    }
}

/// The agent's task book, loaded from the store on first use.
async fn task_book(st: &mut AgentState) -> Result<&mut crate::task::TaskBook> {
    if st.tasks.is_none() {
        let open = st
            .ctx
            .tasks
            .open_tasks(st.rec.org_id.as_str(), st.rec.id.as_str())
            .await?;
        let mut book = crate::task::TaskBook::default();
        for t in open {
            book.open.insert(t.id.clone(), t);
        }
        st.tasks = Some(Box::new(book));
    }
    st.tasks
        .as_deref_mut()
        .ok_or_else(|| Error::Unavailable("task book".into()))
}

/// Publishes a task event (after its change is committed).
struct TaskEvents {
    events: tokio::sync::broadcast::Sender<Arc<Event>>,
    org: OrgId,
    agent: crate::domain::AgentId,
    at: i64,
}

impl TaskEvents {
    fn of(st: &AgentState) -> TaskEvents {
        TaskEvents {
            events: st.ctx.events.clone(),
            org: st.rec.org_id.clone(),
            agent: st.rec.id.clone(),
            at: st.now(),
        }
    }

    fn send(&self, kind: &str, detail: serde_json::Value) {
        let _ = self.events.send(Arc::new(Event::Task {
            org_id: self.org.clone(),
            agent_id: self.agent.clone(),
            kind: kind.to_string(),
            detail,
            at: self.at,
        }));
    }

    /// A task's new state.
    fn state(&self, t: &crate::task::TaskRecord) {
        self.send(
            &format!("task.{}", t.state.as_str()),
            serde_json::json!({
                "task_id": t.id,
                "result": t.result.as_deref().map(|r| r.chars().take(1000).collect::<String>()),
                "error": t.error,
            }),
        );
    }
}

async fn submit_task(
    st: &mut AgentState,
    mut task: crate::task::TaskRecord,
    by: &Who,
) -> Result<crate::task::TaskRecord> {
    task.created_at = st.now();
    // The version it runs with: the definition's newest, unless given (a
    // replay keeps its original's).
    if task.version.is_none() {
        task.version = st.version().await?.map(|v| v.n);
    }
    let max = st.ctx.settings.max_open_tasks;
    let audit = AuditEntry::new(
        &st.rec.org_id,
        by,
        "task.create",
        format!("task:{}", task.id),
        serde_json::json!({ "agent": st.rec.id.as_str(), "limits": task.limits }),
        st.now(),
    );
    let store = st.ctx.tasks.clone();
    let book = task_book(st).await?;
    if book.open.len() >= max {
        return Err(Error::Conflict(
            "queue_full",
            format!("the agent has {max} unfinished tasks, its limit; wait or cancel some"),
        ));
    }
    store.insert_task(&task, &audit).await?;
    book.open.insert(task.id.clone(), task.clone());
    book.deliver_one(&task);
    TaskEvents::of(st).send(
        "task.created",
        serde_json::json!({
            "task_id": task.id,
            "instruction": task.instruction.chars().take(200).collect::<String>(),
            "parent_id": task.parent_id,
        }),
    );
    Ok(task)
}

async fn attach_tasks(
    st: &mut AgentState,
    conn: u64,
    pid: u32,
    tx: tokio::sync::mpsc::Sender<crate::task::TaskOrder>,
) {
    use crate::task::TaskState;
    let now = st.now();
    let store = st.ctx.tasks.clone();
    let events = TaskEvents::of(st);
    let Ok(book) = task_book(st).await else {
        return;
    };
    // Another process took over: what the old one was running is lost (a
    // runtime keeps no state across processes). The same process (a
    // reconnect) is handed its running tasks again and ignores them.
    {
        let lost: Vec<String> = book
            .open
            .values()
            .filter(|t| {
                matches!(t.state, TaskState::Running | TaskState::WaitingApproval)
                    && t.runner_pid != Some(pid)
            })
            .map(|t| t.id.clone())
            .collect();
        for id in lost {
            if let Some(t) = book.open.get(&id) {
                let mut next = t.clone();
                next.state = TaskState::Failed;
                next.error =
                    Some("runtime_lost: the runtime process running the task ended".into());
                next.finished_at = Some(now);
                if store.update_task(&next, None).await.is_ok() {
                    book.open.remove(&id);
                    events.state(&next);
                }
            }
        }
    }
    book.outbox = Some(crate::task::Outbox { conn, pid, tx });
    book.deliver();
}

async fn task_report(
    st: &mut AgentState,
    report: crate::task::TaskReport,
) -> Result<crate::task::TaskRecord> {
    use crate::task::{TaskReport, TaskState};
    let now = st.now();
    let store = st.ctx.tasks.clone();
    let events = TaskEvents::of(st);
    let pricing = st.ctx.pricing.clone();
    let model = st.rec.spec.model.clone().unwrap_or_default();
    let book = task_book(st).await?;
    let pid = book.outbox.as_ref().map(|o| o.pid);
    match report {
        TaskReport::Step(mut step) => {
            step.at = now;
            let Some(t) = book.open.get(&step.task_id) else {
                return Err(Error::Conflict(
                    "task_not_open",
                    format!("task {} is not open on this agent", step.task_id),
                ));
            };
            let t = t.clone();
            // A model step's cost, priced here (the runtime knows no prices).
            if step.kind == "model"
                && let Some(body) = step.body.as_object_mut()
            {
                let tokens = |k: &str| body.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
                let micros =
                    pricing.cost_micros(&model, tokens("input_tokens"), tokens("output_tokens"));
                body.insert(
                    "cost_usd".into(),
                    serde_json::json!(crate::domain::micros_to_usd(micros)),
                );
            }
            // A step sent again (a reconnect) was told already.
            if !store.add_step(&step).await? {
                return Ok(t);
            }
            let b = &step.body;
            let clip = |k: &str| {
                b.get(k)
                    .and_then(serde_json::Value::as_str)
                    .map(|s| s.chars().take(4096).collect::<String>())
            };
            // What the activity tables record of it: a tool call with its
            // arguments, outcome and times; a model step's text (the task's
            // conversation), with the instruction on its first.
            let mut detail = serde_json::json!({
                "task_id": step.task_id,
                "seq": step.seq,
                "kind": step.kind,
                "tokens": step.tokens,
                "latency_ms": step.latency_ms,
                "tool": b.get("tool"),
                "decision": b.get("decision"),
                "approval_id": b.get("approval_id"),
            });
            // A conversation's turn runs as a task of the conversation.
            if let Some(c) = t.input.get("conversation_id") {
                detail["conversation_id"] = c.clone();
            }
            if step.kind == "tool" {
                detail["call_id"] = serde_json::json!(b.get("call_id"));
                detail["arguments"] = b.get("arguments").cloned().unwrap_or_default();
                detail["result"] = serde_json::json!(clip("result"));
                detail["waited_ms"] = serde_json::json!(b.get("waited_ms"));
            } else {
                detail["text"] = serde_json::json!(clip("text"));
                detail["instruction"] =
                    serde_json::json!(t.instruction.chars().take(4096).collect::<String>());
                detail["cost_usd"] = serde_json::json!(b.get("cost_usd"));
            }
            events.send("task.step", detail);
            Ok(t)
        }
        TaskReport::Delta { task_id, seq, text } => {
            let Some(t) = book.open.get(&task_id) else {
                return Err(Error::Conflict(
                    "task_not_open",
                    format!("task {task_id} is not open on this agent"),
                ));
            };
            events.send(
                "task.delta",
                serde_json::json!({ "task_id": task_id, "seq": seq, "text": text }),
            );
            Ok(t.clone())
        }
        TaskReport::State {
            task_id,
            state,
            result,
            error,
        } => {
            let Some(t) = book.open.get(&task_id) else {
                return Err(Error::Conflict(
                    "task_not_open",
                    format!("task {task_id} is not open on this agent"),
                ));
            };
            if t.state == state {
                return Ok(t.clone());
            }
            if !crate::task::runtime_may(t.state, state) {
                return Err(Error::Conflict(
                    "illegal_task_transition",
                    format!(
                        "task {task_id} cannot go from {} to {}",
                        t.state.as_str(),
                        state.as_str()
                    ),
                ));
            }
            let mut next = t.clone();
            next.state = state;
            if state == TaskState::Running && next.started_at.is_none() {
                next.started_at = Some(now);
                next.runner_pid = pid;
            }
            if state.is_final() {
                next.finished_at = Some(now);
                next.result = result.map(|r| r.chars().take(100_000).collect());
                next.error = error.map(|e| e.chars().take(4_000).collect());
            }
            store.update_task(&next, None).await?;
            if next.state.is_final() {
                book.open.remove(&task_id);
            } else {
                book.open.insert(task_id, next.clone());
            }
            events.state(&next);
            Ok(next)
        }
    }
}

async fn cancel_task(st: &mut AgentState, id: &str, by: &Who) -> Result<crate::task::TaskRecord> {
    use crate::task::{TaskOrder, TaskState};
    let now = st.now();
    let audit = AuditEntry::new(
        &st.rec.org_id,
        by,
        "task.cancel",
        format!("task:{id}"),
        serde_json::json!({ "agent": st.rec.id.as_str() }),
        now,
    );
    let store = st.ctx.tasks.clone();
    let events = TaskEvents::of(st);
    let book = task_book(st).await?;
    let Some(t) = book.open.get(id) else {
        return Err(Error::Conflict(
            "task_finished",
            format!("task {id} is finished already"),
        ));
    };
    let mut next = t.clone();
    next.state = TaskState::Cancelled;
    next.error = Some("cancelled by an operator".into());
    next.finished_at = Some(now);
    store.update_task(&next, Some(&audit)).await?;
    book.open.remove(id);
    if let Some(out) = &book.outbox {
        let _ = out.tx.try_send(TaskOrder::Cancel(id.to_string()));
    }
    events.state(&next);
    Ok(next)
}
