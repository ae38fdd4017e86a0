//! `ApprovalActor`: one per organization, supervised by its tenant. It parks
//! every tool call that needs a human until a decision, a timeout or a
//! cancellation, and owns the organization's governance documents (own
//! tools, profiles, approval policies) and grants.
//!
//! Every change is persisted before anyone hears of it: the request before
//! the runtime is told it waits, the decision (a compare-and-swap from
//! `pending` in the store) before the decider and the waiting runtime get
//! their answers. On start the actor reloads *all* pending requests of its
//! organization and re-arms each timer with the time that remains, so a
//! restart of the whole server loses none; a runtime that reconnects and
//! asks again about its call id gets the same request (and its decision).

use crate::audit::AuditEntry;
use crate::context::Ctx;
use crate::domain::{AgentId, OrgId, Who};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::governance::policy::{Level, OnTimeout, Policy};
use crate::governance::{Grant, OrgDocs, PolicyDef, ProfileDef, ToolDef};
use crate::ports::{Cas, StoreError};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for a human.
    Pending,
    /// Approved by people.
    Approved,
    /// Denied by a person.
    Denied,
    /// Timed out (see `outcome` for what the timeout did).
    Expired,
    /// Withdrawn.
    Cancelled,
}

impl ApprovalState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::Expired => "expired",
            ApprovalState::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<ApprovalState> {
        Some(match s {
            "pending" => ApprovalState::Pending,
            "approved" => ApprovalState::Approved,
            "denied" => ApprovalState::Denied,
            "expired" => ApprovalState::Expired,
            "cancelled" => ApprovalState::Cancelled,
            _ => return None,
        })
    }
}

/// One approving vote (a denial ends the request at once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Vote {
    /// The voter (`user:<id>` or `key:<id>`).
    pub by: String,
    /// The level it was cast at.
    pub level: u32,
    /// Approve or deny.
    pub approve: bool,
    /// The voter's comment.
    pub comment: Option<String>,
    /// Unix ms.
    pub at: i64,
}

/// A request as persisted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ApprovalRecord {
    /// Id (UUIDv7).
    pub id: String,
    /// Organization.
    pub org_id: OrgId,
    /// The agent whose call waits.
    pub agent_id: AgentId,
    /// The runtime's call id (unique per agent).
    pub call_id: String,
    /// Tool.
    pub tool: String,
    /// SHA-256 of the canonical arguments.
    pub args_hash: String,
    /// The arguments, secrets redacted.
    pub arguments: serde_json::Value,
    /// Why approval is needed.
    pub trigger: String,
    /// The policy deciding who approves.
    pub policy: String,
    /// Its levels at the time of the request.
    pub levels: Vec<Level>,
    /// The current level.
    pub level: u32,
    /// State.
    pub state: ApprovalState,
    /// For `expired`: whether the timeout approved.
    pub outcome: Option<bool>,
    /// Who asked (`runtime:<agent>`).
    pub requested_by: String,
    /// Unix ms.
    pub created_at: i64,
    /// When the current level times out, unix ms.
    pub expires_at: i64,
    /// Who decided (`user:<id>`, `key:<id>` or `system` for a timeout).
    pub decided_by: Option<String>,
    /// Unix ms.
    pub decided_at: Option<i64>,
    /// The decider's comment (handed back to the model).
    pub comment: Option<String>,
    /// The standing grant an approval created.
    pub grant_id: Option<String>,
    /// Approving votes at the current level.
    pub votes: Vec<Vote>,
}

impl ApprovalRecord {
    /// Whether the call may proceed (`None` while pending).
    pub fn approved(&self) -> Option<bool> {
        match self.state {
            ApprovalState::Pending => None,
            ApprovalState::Approved => Some(true),
            ApprovalState::Expired => Some(self.outcome == Some(true)),
            ApprovalState::Denied | ApprovalState::Cancelled => Some(false),
        }
    }

    fn current(&self) -> Option<&Level> {
        self.levels.get(self.level as usize)
    }

    /// What the waiting runtime is told.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            approval_id: self.id.clone(),
            approved: self.approved() == Some(true),
            state: self.state,
            decided_by: self.decided_by.clone(),
            comment: self.comment.clone(),
        }
    }
}

/// The answer a waiting runtime gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The request.
    pub approval_id: String,
    /// Whether the call may proceed.
    pub approved: bool,
    /// The final state.
    pub state: ApprovalState,
    /// Who decided.
    pub decided_by: Option<String>,
    /// Their comment.
    pub comment: Option<String>,
}

/// A new request from an agent's tool call.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// Agent.
    pub agent_id: AgentId,
    /// The runtime's call id.
    pub call_id: String,
    /// Tool.
    pub tool: String,
    /// Hash of the canonical arguments.
    pub args_hash: String,
    /// Redacted arguments.
    pub arguments: serde_json::Value,
    /// Why.
    pub trigger: String,
    /// The deciding policy.
    pub policy: Arc<Policy>,
    /// The people up the agent's org chart, nearest first (for levels that
    /// name its manager).
    pub managers: Vec<String>,
}

/// What a request gets back.
#[derive(Debug)]
pub enum Ticket {
    /// Already decided (a repeated call id).
    Decided(Outcome),
    /// Parked: the outcome arrives on `rx`.
    Waiting {
        /// The request.
        approval_id: String,
        /// The outcome, once there is one.
        rx: oneshot::Receiver<Outcome>,
    },
}

/// Who decides: always the authenticated principal.
#[derive(Debug, Clone)]
pub struct Decider {
    /// User id (or key id).
    pub id: String,
    /// Role.
    pub role: String,
    /// For the audit log.
    pub who: Who,
}

/// How far an approval reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantScope {
    /// This call only.
    Call,
    /// Also later calls of the same tool with the same arguments, for this long.
    SameArguments {
        /// Milliseconds.
        for_ms: i64,
    },
}

/// A decision.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Approve or deny.
    pub approve: bool,
    /// Comment (handed back to the model).
    pub comment: Option<String>,
    /// Reach of an approval.
    pub scope: GrantScope,
}

/// A governance document.
#[derive(Debug, Clone)]
pub enum Doc {
    /// A tool.
    Tool(ToolDef),
    /// A profile.
    Profile(ProfileDef),
    /// An approval policy.
    Policy(PolicyDef),
    /// A secret (sealed).
    Secret(crate::governance::SecretDoc),
}

impl Doc {
    fn kind(&self) -> &'static str {
        match self {
            Doc::Tool(_) => "tool",
            Doc::Profile(_) => "profile",
            Doc::Policy(_) => "policy",
            Doc::Secret(_) => "secret",
        }
    }

    fn body(&self) -> std::result::Result<String, serde_json::Error> {
        match self {
            Doc::Tool(t) => serde_json::to_string(t),
            Doc::Profile(p) => serde_json::to_string(p),
            Doc::Policy(p) => serde_json::to_string(p),
            Doc::Secret(s) => serde_json::to_string(s),
        }
    }
}

/// Messages.
#[derive(Debug)]
pub enum ApprovalMsg {
    /// Chaos: panic inside `handle` (only sent by the chaos hook).
    Panic,
    /// Park a call.
    Request {
        /// The call.
        req: Box<NewRequest>,
        /// Answer.
        reply: RpcReplyPort<Result<Ticket>>,
    },
    /// A person decides.
    Decide {
        /// Request id.
        id: String,
        /// The decision.
        decision: Box<Decision>,
        /// The authenticated decider.
        decider: Box<Decider>,
        /// Answer: the request as it is afterwards.
        reply: RpcReplyPort<Result<ApprovalRecord>>,
    },
    /// Withdraw a pending request.
    Cancel {
        /// Request id.
        id: String,
        /// Who.
        by: Who,
        /// Answer.
        reply: RpcReplyPort<Result<ApprovalRecord>>,
    },
    /// A level's timer fired.
    Timeout {
        /// Request id.
        id: String,
        /// The level it was armed for.
        level: u32,
    },
    /// Create, replace (`Some`) or delete (`None`) a document.
    PutDoc {
        /// `tool`, `profile` or `policy`.
        kind: &'static str,
        /// Its id or name.
        name: String,
        /// The new document.
        doc: Option<Box<Doc>>,
        /// Who.
        by: Who,
        /// Answer: whether it existed before.
        reply: RpcReplyPort<Result<bool>>,
    },
    /// Turn the organization's or one of its agents' kill switch on or off.
    Halt {
        /// Organization or agent scope.
        scope: crate::governance::HaltScope,
        /// `Some(reason)`: on.
        on: Option<String>,
        /// Who.
        by: Who,
        /// Answer.
        reply: RpcReplyPort<Result<()>>,
    },
    /// Tools an agent's runtime found on its MCP servers: those the
    /// catalog lacks join the organization's tools (risk `medium`, skill
    /// `mcp`), which the organization can change like any other.
    Discover {
        /// The tools.
        tools: Vec<ToolDef>,
        /// The runtime that found them.
        by: Who,
        /// Answer: how many were added.
        reply: RpcReplyPort<Result<usize>>,
    },
    /// A request's insert finished (sent by its write task).
    Inserted {
        /// The request.
        rec: Box<ApprovalRecord>,
        /// What the store said.
        result: std::result::Result<(), StoreError>,
        /// The call, for a retry after a conflict.
        req: Box<NewRequest>,
    },
    /// A decision's write finished (sent by its write task).
    Settled {
        /// The request as decided.
        next: Box<ApprovalRecord>,
        /// The deciding vote.
        vote: Box<Vote>,
        /// The grant it creates.
        grant: Option<Box<Grant>>,
        /// What the store said.
        result: std::result::Result<Cas, StoreError>,
        /// The decider.
        reply: RpcReplyPort<Result<ApprovalRecord>>,
    },
    /// Revoke a standing grant.
    RevokeGrant {
        /// Grant id.
        id: String,
        /// Who.
        by: Who,
        /// Answer.
        reply: RpcReplyPort<Result<Grant>>,
    },
}

/// The actor.
#[derive(Debug, Default)]
pub struct ApprovalActor;

/// Spawn arguments.
pub struct ApprovalArgs {
    /// The organization.
    pub org: OrgId,
    /// Shared context.
    pub ctx: Arc<Ctx>,
}

struct Parked {
    rec: ApprovalRecord,
    waiters: Vec<oneshot::Sender<Outcome>>,
    timer: Option<tokio::task::JoinHandle<()>>,
}

/// The actor's state.
pub struct Book {
    org: OrgId,
    ctx: Arc<Ctx>,
    docs: OrgDocs,
    pending: HashMap<String, Parked>,
    by_call: HashMap<(AgentId, String), String>,
    /// Requests being inserted, with everyone waiting for their ticket.
    inserting: HashMap<(AgentId, String), Vec<RpcReplyPort<Result<Ticket>>>>,
    /// Requests whose decision is being written.
    deciding: std::collections::HashSet<String>,
}

impl Book {
    fn now(&self) -> i64 {
        self.ctx.clock.now_ms()
    }

    fn audit(
        &self,
        by: &Who,
        action: &str,
        target: String,
        summary: serde_json::Value,
    ) -> AuditEntry {
        AuditEntry::new(
            &self.org,
            by,
            action.to_string(),
            target,
            summary,
            self.now(),
        )
    }

    fn gauge(&self) {
        metrics::gauge!("cadre_approvals_pending", "org" => self.org.0.clone())
            .set(self.pending.len() as f64);
    }

    fn publish(&self, kind: &str, rec: &ApprovalRecord, extra: serde_json::Value) {
        let mut detail = serde_json::json!({
            "approval_id": rec.id,
            "call_id": rec.call_id,
            "tool": rec.tool,
            "state": rec.state.as_str(),
            "level": rec.level,
            "policy": rec.policy,
            "trigger": rec.trigger,
            "decided_by": rec.decided_by,
            "comment": rec.comment,
            "expires_at": crate::domain::rfc3339(rec.expires_at),
        });
        if let (Some(d), serde_json::Value::Object(e)) = (detail.as_object_mut(), extra) {
            d.extend(e);
        }
        let _ = self.ctx.events.send(Arc::new(Event::Governance {
            org_id: self.org.clone(),
            agent_id: Some(rec.agent_id.clone()),
            kind: kind.to_string(),
            detail,
            at: self.now(),
        }));
    }

    /// Arms the timer of `id` at `level` to fire at `expires_at`.
    fn arm(
        &self,
        myself: &ActorRef<ApprovalMsg>,
        id: &str,
        level: u32,
        expires_at: i64,
    ) -> tokio::task::JoinHandle<()> {
        let wait = Duration::from_millis(u64::try_from(expires_at - self.now()).unwrap_or(0));
        let me = myself.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = me.cast(ApprovalMsg::Timeout { id, level });
        })
    }

    fn park(&mut self, myself: &ActorRef<ApprovalMsg>, rec: ApprovalRecord) {
        let timer = self.arm(myself, &rec.id, rec.level, rec.expires_at);
        self.by_call
            .insert((rec.agent_id.clone(), rec.call_id.clone()), rec.id.clone());
        self.pending.insert(
            rec.id.clone(),
            Parked {
                rec,
                waiters: Vec::new(),
                timer: Some(timer),
            },
        );
        self.gauge();
    }

    /// Removes a settled request and answers everyone waiting on it.
    fn settle(&mut self, rec: &ApprovalRecord) {
        if let Some(mut p) = self.pending.remove(&rec.id) {
            if let Some(t) = p.timer.take() {
                t.abort();
            }
            let outcome = rec.outcome();
            for w in p.waiters.drain(..) {
                let _ = w.send(outcome.clone());
            }
        }
        self.by_call
            .remove(&(rec.agent_id.clone(), rec.call_id.clone()));
        self.gauge();
    }
}

fn level_ms(l: &Level) -> i64 {
    i64::try_from(l.timeout_seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

impl Actor for ApprovalActor {
    type Msg = ApprovalMsg;
    type State = Book;
    type Arguments = ApprovalArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ApprovalMsg>,
        args: ApprovalArgs,
    ) -> std::result::Result<Book, ActorProcessingErr> {
        let ApprovalArgs { org, ctx } = args;
        let mut docs = OrgDocs::default();
        for d in ctx.gov_store.docs(&org).await? {
            let bad =
                |e: serde_json::Error| format!("governance document {}/{}: {e}", d.kind, d.name);
            match d.kind.as_str() {
                "tool" => {
                    docs.tools
                        .insert(d.name.clone(), serde_json::from_str(&d.body).map_err(bad)?);
                }
                "profile" => {
                    docs.profiles
                        .insert(d.name.clone(), serde_json::from_str(&d.body).map_err(bad)?);
                }
                "secret" => {
                    docs.secrets
                        .insert(d.name.clone(), serde_json::from_str(&d.body).map_err(bad)?);
                }
                _ => {
                    docs.policies
                        .insert(d.name.clone(), serde_json::from_str(&d.body).map_err(bad)?);
                }
            }
        }
        ctx.gov.publish(&org, docs.clone());
        let mut st = Book {
            org,
            ctx,
            docs,
            pending: HashMap::new(),
            by_call: HashMap::new(),
            inserting: HashMap::new(),
            deciding: Default::default(),
        };
        // Every pending request, not a first page: each timer re-armed with
        // what remains (an overdue one fires at once).
        let pending = st.ctx.gov_store.pending_approvals(&st.org).await?;
        for rec in pending {
            st.park(&myself, rec);
        }
        // Reported from the start, none pending included (a restarted
        // process shows every documented gauge).
        st.gauge();
        Ok(st)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ApprovalMsg>,
        st: &mut Book,
    ) -> std::result::Result<(), ActorProcessingErr> {
        for p in st.pending.values_mut() {
            if let Some(t) = p.timer.take() {
                t.abort();
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ApprovalMsg>,
        msg: ApprovalMsg,
        st: &mut Book,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            ApprovalMsg::Panic => panic!("chaos: approvals of {} panicked on request", st.org),
            ApprovalMsg::Request { req, reply } => request(&myself, st, *req, reply),
            ApprovalMsg::Inserted { rec, result, req } => {
                Box::pin(inserted(&myself, st, *rec, result, *req)).await
            }
            ApprovalMsg::Settled {
                next,
                vote,
                grant,
                result,
                reply,
            } => {
                let r = Box::pin(settled(st, *next, *vote, grant.map(|g| *g), result)).await;
                let _ = reply.send(r);
            }
            ApprovalMsg::Decide {
                id,
                decision,
                decider,
                reply,
            } => {
                if let Some(r) =
                    Box::pin(decide(&myself, st, &id, *decision, *decider, reply)).await
                {
                    // Answered here only when it did not go to the writer.
                    let (reply, r) = r;
                    let _ = reply.send(r);
                }
            }
            ApprovalMsg::Cancel { id, by, reply } => {
                let r = Box::pin(cancel(st, &id, &by)).await;
                let _ = reply.send(r);
            }
            ApprovalMsg::Timeout { id, level } => Box::pin(timeout(&myself, st, &id, level)).await,
            ApprovalMsg::Halt {
                scope,
                on,
                by,
                reply,
            } => {
                let r = Box::pin(halt(&st.ctx, scope, on, by)).await;
                let _ = reply.send(r);
            }
            ApprovalMsg::Discover { tools, by, reply } => {
                let r = Box::pin(discover(st, tools, &by)).await;
                let _ = reply.send(r);
            }
            ApprovalMsg::PutDoc {
                kind,
                name,
                doc,
                by,
                reply,
            } => {
                let r = Box::pin(put_doc(st, kind, name, doc.map(|d| *d), &by)).await;
                let _ = reply.send(r);
            }
            ApprovalMsg::RevokeGrant { id, by, reply } => {
                let r = Box::pin(revoke(st, &id, &by)).await;
                let _ = reply.send(r);
            }
        }
        Ok(())
    }
}

/// Parks a call: joins the wait of the same call id if it is parked or
/// being inserted; otherwise inserts a new request (in a write task, so
/// many requests share a commit) and answers when it is durable.
fn request(
    myself: &ActorRef<ApprovalMsg>,
    st: &mut Book,
    req: NewRequest,
    reply: RpcReplyPort<Result<Ticket>>,
) {
    let key = (req.agent_id.clone(), req.call_id.clone());
    // The same call asked again (a reconnecting runtime): join the wait.
    if let Some(id) = st.by_call.get(&key).cloned()
        && let Some(p) = st.pending.get_mut(&id)
    {
        let (tx, rx) = oneshot::channel();
        p.waiters.push(tx);
        let _ = reply.send(Ok(Ticket::Waiting {
            approval_id: id,
            rx,
        }));
        return;
    }
    if let Some(waiting) = st.inserting.get_mut(&key) {
        waiting.push(reply);
        return;
    }
    let Some(first) = req.policy.def.levels.first() else {
        let _ = reply.send(Err(Error::Invalid(format!(
            "policy {} has no levels",
            req.policy.name
        ))));
        return;
    };
    let now = st.now();
    let runtime = Who::of(crate::domain::Party::Runtime(req.agent_id.0.clone()));
    let rec = ApprovalRecord {
        id: uuid::Uuid::now_v7().to_string(),
        org_id: st.org.clone(),
        agent_id: req.agent_id.clone(),
        call_id: req.call_id.clone(),
        tool: req.tool.clone(),
        args_hash: req.args_hash.clone(),
        arguments: req.arguments.clone(),
        trigger: req.trigger.clone(),
        policy: req.policy.name.clone(),
        levels: req
            .policy
            .def
            .levels
            .iter()
            .cloned()
            .map(|mut l| {
                l.approvers.resolve_manager(&req.managers);
                l
            })
            .collect(),
        level: 0,
        state: ApprovalState::Pending,
        outcome: None,
        requested_by: runtime.to_text(),
        created_at: now,
        expires_at: now.saturating_add(level_ms(first)),
        decided_by: None,
        decided_at: None,
        comment: None,
        grant_id: None,
        votes: Vec::new(),
    };
    let audit = st.audit(
        &runtime,
        "approval.request",
        format!("approval:{}", rec.id),
        serde_json::json!({ "agent": rec.agent_id, "tool": rec.tool, "call_id": rec.call_id, "policy": rec.policy, "trigger": rec.trigger }),
    );
    st.inserting.insert(key, vec![reply]);
    let store = st.ctx.gov_store.clone();
    let me = myself.clone();
    tokio::spawn(async move {
        let result = store.insert_approval(&rec, &audit).await;
        let _ = me.cast(ApprovalMsg::Inserted {
            rec: Box::new(rec),
            result,
            req: Box::new(req),
        });
    });
}

/// A request's insert finished: park it and answer everyone who asked.
async fn inserted(
    myself: &ActorRef<ApprovalMsg>,
    st: &mut Book,
    rec: ApprovalRecord,
    result: std::result::Result<(), StoreError>,
    req: NewRequest,
) {
    let key = (rec.agent_id.clone(), rec.call_id.clone());
    let replies = st.inserting.remove(&key).unwrap_or_default();
    let answer = |st: &mut Book, id: &str, replies: Vec<RpcReplyPort<Result<Ticket>>>| {
        for reply in replies {
            let (tx, rx) = oneshot::channel();
            if let Some(p) = st.pending.get_mut(id) {
                p.waiters.push(tx);
            }
            let _ = reply.send(Ok(Ticket::Waiting {
                approval_id: id.to_string(),
                rx,
            }));
        }
    };
    match result {
        Ok(()) => {
            metrics::counter!("cadre_approvals_total", "event" => "requested").increment(1);
            st.publish(
                "approval.requested",
                &rec,
                serde_json::json!({ "arguments": rec.arguments }),
            );
            let id = rec.id.clone();
            st.park(myself, rec);
            answer(st, &id, replies);
        }
        Err(StoreError::Conflict(_)) => {
            // Asked before (and not parked here): its decision stands, or,
            // pending in the store but unknown here, it is adopted.
            match st
                .ctx
                .gov_store
                .approval_by_call(&req.agent_id, &req.call_id)
                .await
            {
                Ok(Some(old)) if old.state == ApprovalState::Pending => {
                    let id = old.id.clone();
                    st.park(myself, old);
                    answer(st, &id, replies);
                }
                Ok(Some(old)) => {
                    for reply in replies {
                        let _ = reply.send(Ok(Ticket::Decided(old.outcome())));
                    }
                }
                Ok(None) => {
                    for reply in replies {
                        let _ =
                            reply.send(Err(Error::Unavailable("approval vanished; retry".into())));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone().into()));
                    }
                }
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone().into()));
            }
        }
    }
}

/// Loads a request that is not pending here, to say why it cannot be decided.
async fn not_pending(st: &Book, id: &str) -> Error {
    match st.ctx.gov_store.approval(&st.org, id).await {
        Ok(Some(rec)) => Error::Conflict(
            "already_decided",
            format!("approval {id} is {} already", rec.state.as_str()),
        ),
        Ok(None) => Error::Missing("approval"),
        Err(e) => e.into(),
    }
}

/// A reply port and its answer, when `decide` answers by itself.
type Answered = (RpcReplyPort<Result<ApprovalRecord>>, Result<ApprovalRecord>);

/// Validates a decision. A final one is written by a task (so concurrent
/// decisions share commits) and answered in [`settled`]; `Some` when it was
/// answered here (refused, or a vote that does not settle the request).
async fn decide(
    myself: &ActorRef<ApprovalMsg>,
    st: &mut Book,
    id: &str,
    decision: Decision,
    decider: Decider,
    reply: RpcReplyPort<Result<ApprovalRecord>>,
) -> Option<Answered> {
    match check_decision(st, id, &decision, &decider).await {
        Err(e) => Some((reply, Err(e))),
        Ok(Step::Vote(r)) => Some((reply, Box::pin(vote(st, id, r)).await)),
        Ok(Step::Final { next, vote, grant }) => {
            st.deciding.insert(id.to_string());
            let store = st.ctx.gov_store.clone();
            let me = myself.clone();
            let from = next.level;
            let audit = st.audit(
                &decider.who,
                if decision.approve {
                    "approval.approve"
                } else {
                    "approval.deny"
                },
                format!("approval:{id}"),
                serde_json::json!({ "tool": next.tool, "agent": next.agent_id, "comment": next.comment, "grant": next.grant_id }),
            );
            tokio::spawn(async move {
                let result = store
                    .settle_approval(&next, from, Some(&vote), grant.as_ref(), &audit)
                    .await;
                let _ = me.cast(ApprovalMsg::Settled {
                    next,
                    vote: Box::new(vote),
                    grant: grant.map(Box::new),
                    result,
                    reply,
                });
            });
            None
        }
    }
}

/// What a valid decision does.
enum Step {
    /// An approving vote short of the required count.
    Vote((Vote, usize, Who)),
    /// The request settles.
    Final {
        next: Box<ApprovalRecord>,
        vote: Vote,
        grant: Option<Grant>,
    },
}

async fn vote(
    st: &mut Book,
    id: &str,
    (vote, required, who): (Vote, usize, Who),
) -> Result<ApprovalRecord> {
    let Some(rec) = st.pending.get(id).map(|p| p.rec.clone()) else {
        return Err(Error::Missing("approval"));
    };
    let by = vote.by.clone();
    let audit = st.audit(
        &who,
        "approval.vote",
        format!("approval:{id}"),
        serde_json::json!({ "approve": true, "votes": rec.votes.len() + 1, "required": required }),
    );
    match st.ctx.gov_store.add_vote(&rec, &vote, &audit).await {
        Ok(Cas::Applied) => {
            let Some(p) = st.pending.get_mut(id) else {
                return Err(Error::Missing("approval"));
            };
            p.rec.votes.push(vote);
            let out = p.rec.clone();
            st.publish(
                "approval.voted",
                &out,
                serde_json::json!({ "votes": out.votes.len(), "required": required }),
            );
            Ok(out)
        }
        Ok(Cas::Lost) => Err(not_pending(st, id).await),
        Err(StoreError::Conflict(_)) => Err(Error::Conflict(
            "already_voted",
            format!("{by} voted already"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// A decision's write finished: settle the request and answer the waiters.
async fn settled(
    st: &mut Book,
    mut next: ApprovalRecord,
    vote: Vote,
    grant: Option<Grant>,
    result: std::result::Result<Cas, StoreError>,
) -> Result<ApprovalRecord> {
    st.deciding.remove(&next.id);
    match result? {
        Cas::Applied => {}
        Cas::Lost => return Err(not_pending(st, &next.id).await),
    }
    if let Some(g) = grant {
        st.ctx.gov.add_grant(g);
    }
    if vote.approve {
        next.votes.push(vote);
    }
    st.settle(&next);
    metrics::counter!("cadre_approvals_total", "event" => next.state.as_str()).increment(1);
    st.publish(
        &format!("approval.{}", next.state.as_str()),
        &next,
        serde_json::json!({ "grant_id": next.grant_id }),
    );
    Ok(next)
}

async fn check_decision(
    st: &mut Book,
    id: &str,
    decision: &Decision,
    decider: &Decider,
) -> Result<Step> {
    if st.deciding.contains(id) {
        return Err(Error::Conflict(
            "already_decided",
            format!("approval {id} is being decided"),
        ));
    }
    let Some(parked) = st.pending.get(id) else {
        return Err(not_pending(st, id).await);
    };
    let rec = &parked.rec;
    let by = decider.who.to_text();
    if by == rec.requested_by {
        return Err(Error::Forbidden(
            "a requester can never decide its own request".into(),
        ));
    }
    let Some(level) = rec.current() else {
        return Err(Error::Unavailable("approval has no current level".into()));
    };
    if !level.approvers.allows(&decider.id, &decider.role) {
        return Err(Error::Forbidden(format!(
            "policy {} level {} lets only roles {:?} and users {:?} decide",
            rec.policy, rec.level, level.approvers.roles, level.approvers.users
        )));
    }
    if rec.votes.iter().any(|v| v.by == by) {
        return Err(Error::Conflict(
            "already_voted",
            format!("{by} approved this request already; it needs other approvers"),
        ));
    }
    let now = st.now();
    let vote = Vote {
        by: by.clone(),
        level: rec.level,
        approve: decision.approve,
        comment: decision.comment.clone(),
        at: now,
    };
    let required = level.required as usize;
    if decision.approve && rec.votes.len() + 1 < required {
        return Ok(Step::Vote((vote, required, decider.who.clone())));
    }
    let mut next = rec.clone();
    next.state = if decision.approve {
        ApprovalState::Approved
    } else {
        ApprovalState::Denied
    };
    next.decided_by = Some(by.clone());
    next.decided_at = Some(now);
    next.comment = decision.comment.clone();
    let grant = match decision.scope {
        GrantScope::SameArguments { for_ms } if decision.approve => Some(Grant {
            id: uuid::Uuid::now_v7().to_string(),
            org_id: st.org.clone(),
            agent_id: rec.agent_id.clone(),
            tool: rec.tool.clone(),
            args_hash: rec.args_hash.clone(),
            approval_id: rec.id.clone(),
            granted_by: by,
            created_at: now,
            expires_at: now.saturating_add(for_ms),
        }),
        _ => None,
    };
    next.grant_id = grant.as_ref().map(|g| g.id.clone());
    Ok(Step::Final {
        next: Box::new(next),
        vote,
        grant,
    })
}

async fn cancel(st: &mut Book, id: &str, by: &Who) -> Result<ApprovalRecord> {
    if st.deciding.contains(id) {
        return Err(Error::Conflict(
            "already_decided",
            format!("approval {id} is being decided"),
        ));
    }
    let Some(parked) = st.pending.get(id) else {
        return Err(not_pending(st, id).await);
    };
    let mut next = parked.rec.clone();
    next.state = ApprovalState::Cancelled;
    next.decided_by = Some(by.to_text());
    next.decided_at = Some(st.now());
    next.comment = Some("cancelled".into());
    let audit = st.audit(
        by,
        "approval.cancel",
        format!("approval:{id}"),
        serde_json::json!({ "tool": next.tool }),
    );
    match st
        .ctx
        .gov_store
        .settle_approval(&next, parked.rec.level, None, None, &audit)
        .await?
    {
        Cas::Applied => {}
        Cas::Lost => return Err(not_pending(st, id).await),
    }
    st.settle(&next);
    st.publish("approval.cancelled", &next, serde_json::json!({}));
    Ok(next)
}

async fn timeout(myself: &ActorRef<ApprovalMsg>, st: &mut Book, id: &str, level: u32) {
    let Some(parked) = st.pending.get(id) else {
        return;
    };
    if parked.rec.level != level {
        return;
    }
    if st.deciding.contains(id) {
        // A decision is being written: if it fails, the timeout still applies.
        let id = id.to_string();
        myself.send_after(Duration::from_millis(50), move || ApprovalMsg::Timeout {
            id,
            level,
        });
        return;
    }
    let rec = parked.rec.clone();
    let Some(l) = rec.current() else {
        return;
    };
    let now = st.now();
    let mut next = rec.clone();
    let sys = Who::system();
    let (action, kind) = match (l.on_timeout, rec.levels.get(level as usize + 1)) {
        (OnTimeout::Escalate, Some(up)) => {
            next.level = level + 1;
            next.expires_at = now.saturating_add(level_ms(up));
            next.votes.clear();
            ("approval.escalate", "approval.escalated")
        }
        (OnTimeout::Approve, _) => {
            next.state = ApprovalState::Expired;
            next.outcome = Some(true);
            next.decided_by = Some(sys.to_text());
            next.decided_at = Some(now);
            next.comment = Some(format!(
                "no decision within {} s: approved by policy",
                l.timeout_seconds
            ));
            ("approval.expire", "approval.expired")
        }
        _ => {
            next.state = ApprovalState::Expired;
            next.outcome = Some(false);
            next.decided_by = Some(sys.to_text());
            next.decided_at = Some(now);
            next.comment = Some(format!(
                "no decision within {} s: denied by policy",
                l.timeout_seconds
            ));
            ("approval.expire", "approval.expired")
        }
    };
    let audit = st.audit(
        &sys,
        action,
        format!("approval:{id}"),
        serde_json::json!({ "level": next.level, "outcome": next.outcome }),
    );
    match st
        .ctx
        .gov_store
        .settle_approval(&next, level, None, None, &audit)
        .await
    {
        Ok(Cas::Applied) => {}
        Ok(Cas::Lost) => {
            // Decided elsewhere meanwhile: forget it here.
            st.settle(&next);
            return;
        }
        Err(e) => {
            // Try again shortly: a timeout must not be lost to a store hiccup.
            tracing::warn!(approval = %id, error = %e, "approval timeout could not be saved; retrying");
            let me = myself.clone();
            let id = id.to_string();
            myself.send_after(Duration::from_millis(500), move || {
                let _ = me;
                ApprovalMsg::Timeout { id, level }
            });
            return;
        }
    }
    metrics::counter!("cadre_approvals_total", "event" => if next.state == ApprovalState::Pending { "escalated" } else { "expired" }).increment(1);
    if next.state == ApprovalState::Pending {
        let timer = st.arm(myself, id, next.level, next.expires_at);
        if let Some(p) = st.pending.get_mut(id) {
            if let Some(t) = p.timer.replace(timer) {
                t.abort();
            }
            p.rec = next.clone();
        }
        st.publish(kind, &next, serde_json::json!({ "from_level": level }));
    } else {
        st.settle(&next);
        st.publish(kind, &next, serde_json::json!({ "approved": next.outcome }));
    }
}

/// Turns a kill switch on (`Some(reason)`) or off, as its owning actor:
/// persisted with its audit entry first, then tool calls and reservations
/// are refused, then the covered agents stop. Called by the organization's
/// approval actor (organization and agent scopes) and the root supervisor
/// (the instance), one message at a time, so two changes of one switch
/// never interleave.
pub(crate) async fn halt(
    ctx: &Ctx,
    scope: crate::governance::HaltScope,
    on: Option<String>,
    by: Who,
) -> Result<()> {
    use crate::domain::AgentId;
    use crate::governance::HaltScope;
    let org = match &scope {
        HaltScope::Instance => None,
        HaltScope::Org(o) | HaltScope::Agent(o, _) => Some(o.clone()),
    };
    let now = ctx.clock.now_ms();
    let action = if on.is_some() { "halt.on" } else { "halt.off" };
    let audit = crate::audit::AuditEntry::new(
        org.as_ref().unwrap_or(&OrgId("*".into())),
        &by,
        action.to_string(),
        format!("{}:{}", scope.kind(), scope.target()),
        serde_json::json!({ "scope": scope.kind(), "reason": on }),
        now,
    );
    ctx.gov_store
        .set_halt(&scope, on.as_deref(), &by.to_text(), now, &audit)
        .await?;
    ctx.gov.set_halt(&scope, on.is_some());
    let agents: Vec<(OrgId, AgentId)> = match &scope {
        HaltScope::Instance => ctx.registry.all_agents(),
        HaltScope::Org(o) => ctx
            .registry
            .org_agents(o)
            .into_iter()
            .map(|a| (o.clone(), a))
            .collect(),
        HaltScope::Agent(o, a) => vec![(o.clone(), a.clone())],
    };
    let orgs: std::collections::BTreeSet<OrgId> = match &org {
        Some(o) => [o.clone()].into(),
        None => agents.iter().map(|(o, _)| o.clone()).collect(),
    };
    for o in orgs {
        let _ = ctx.events.send(Arc::new(crate::events::Event::Governance {
            org_id: o,
            agent_id: match &scope {
                HaltScope::Agent(_, a) => Some(a.clone()),
                _ => None,
            },
            kind: action.to_string(),
            detail: serde_json::json!({ "scope": scope.kind(), "target": scope.target(), "reason": on, "by": by.to_text() }),
            at: now,
        }));
    }
    if on.is_some() {
        for (o, a) in agents {
            if let Some(h) = ctx.registry.agent(&o, &a) {
                let _ = h.actor.cast(crate::agent::AgentMsg::Halt {
                    scope: scope.kind(),
                    by: by.clone(),
                });
            }
        }
    }
    Ok(())
}

async fn discover(st: &mut Book, tools: Vec<ToolDef>, by: &Who) -> Result<usize> {
    let mut added = 0;
    for t in tools {
        let known =
            st.docs.tools.contains_key(&t.id) || st.ctx.gov.org(&st.org).index.contains_key(&t.id);
        if known {
            continue;
        }
        Box::pin(put_doc(st, "tool", t.id.clone(), Some(Doc::Tool(t)), by)).await?;
        added += 1;
    }
    Ok(added)
}

async fn put_doc(
    st: &mut Book,
    kind: &'static str,
    name: String,
    doc: Option<Doc>,
    by: &Who,
) -> Result<bool> {
    let body = doc
        .as_ref()
        .map(Doc::body)
        .transpose()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    if let Some(d) = &doc
        && d.kind() != kind
    {
        return Err(Error::Invalid("document kind mismatch".into()));
    }
    let mut docs = st.docs.clone();
    let existed = match &doc {
        Some(Doc::Tool(t)) => docs.tools.insert(name.clone(), t.clone()).is_some(),
        Some(Doc::Profile(p)) => docs.profiles.insert(name.clone(), p.clone()).is_some(),
        Some(Doc::Policy(p)) => docs.policies.insert(name.clone(), p.clone()).is_some(),
        Some(Doc::Secret(s)) => docs.secrets.insert(name.clone(), s.clone()).is_some(),
        None => match kind {
            "tool" => docs.tools.remove(&name).is_some(),
            "profile" => docs.profiles.remove(&name).is_some(),
            "secret" => docs.secrets.remove(&name).is_some(),
            _ => docs.policies.remove(&name).is_some(),
        },
    };
    if doc.is_none() && !existed {
        return Err(Error::Missing(match kind {
            "tool" => "tool",
            "profile" => "profile",
            "secret" => "secret",
            _ => "policy",
        }));
    }
    let action = format!("{kind}.{}", if doc.is_some() { "put" } else { "delete" });
    // A secret's audit entry names it; not even its sealed value is copied.
    let detail = if kind == "secret" {
        serde_json::json!({ "name": name })
    } else {
        body.as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let audit = st.audit(by, &action, format!("{kind}:{name}"), detail);
    st.ctx
        .gov_store
        .put_doc(&st.org, kind, &name, body.as_deref(), &audit)
        .await?;
    st.ctx.gov.publish(&st.org, docs.clone());
    st.docs = docs;
    let _ = st.ctx.events.send(Arc::new(Event::Governance {
        org_id: st.org.clone(),
        agent_id: None,
        kind: format!("governance.{action}"),
        detail: serde_json::json!({ "kind": kind, "name": name }),
        at: st.now(),
    }));
    Ok(existed)
}

async fn revoke(st: &mut Book, id: &str, by: &Who) -> Result<Grant> {
    let audit = st.audit(
        by,
        "grant.revoke",
        format!("grant:{id}"),
        serde_json::json!({}),
    );
    let Some(g) = st
        .ctx
        .gov_store
        .revoke_grant(&st.org, id, &by.to_text(), st.now(), &audit)
        .await?
    else {
        return Err(Error::Missing("grant"));
    };
    st.ctx.gov.remove_grant(&g);
    let _ = st.ctx.events.send(Arc::new(Event::Governance {
        org_id: st.org.clone(),
        agent_id: Some(g.agent_id.clone()),
        kind: "grant.revoked".into(),
        detail: serde_json::json!({ "grant_id": g.id, "tool": g.tool, "by": by.to_text() }),
        at: st.now(),
    }));
    Ok(g)
}
