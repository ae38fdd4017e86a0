//! `TenantSupervisor`: one per organization. It creates agents, supervises
//! their actors one-for-one, and keeps the organization's read index.
//!
//! Restart policy: a child that exits for any reason but deletion or fencing
//! is respawned from the *store* (never from memory), at once the first time
//! and with back-off after that. Past `supervisor_max_restarts` in
//! `supervisor_window` the supervisor escalates: it writes the agent to
//! `error` with the reason, records a `supervisor_escalated` event, and
//! spawns it once more in `error` (where no timer runs, so it stays quiet
//! until an operator acts). If even that incarnation keeps failing, the
//! agent is left unsupervised and counted in `cadre_agents_abandoned_total`.
//!
//! The read index holds the snapshots the agents publish after each commit.
//! It answers list pages without touching every agent's mailbox; it is
//! rebuilt from the store whenever the supervisor itself restarts.

use crate::agent::{AgentActor, AgentArgs, AgentMsg, EXIT_DELETED, EXIT_FENCED, health_of};
use crate::audit::AuditEntry;
use crate::budget::Usage;
use crate::context::Ctx;
use crate::domain::{
    AgentEvent, AgentId, AgentRecord, AgentSnapshot, AgentSpec, AgentView, OrgId, Transition, Who,
};
use crate::error::{Error, Result};
use crate::lifecycle::{self, State, Trigger};
use crate::ports::{AgentInsert, AgentWrite, StoreError};
use crate::registry::{AgentHandle, Gate};
use crate::restart::RestartIntensity;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

/// Agents claimed and spawned per store round trip during hydration.
const HYDRATE_PAGE: usize = 1000;

/// The actor.
#[derive(Debug, Default)]
pub struct TenantSupervisor;

/// Spawn arguments.
pub struct TenantArgs {
    /// The organization.
    pub org: OrgId,
    /// Shared context.
    pub ctx: Arc<Ctx>,
}

/// A list request.
#[derive(Debug, Clone)]
pub struct ListQuery {
    /// Only agents in this state.
    pub state: Option<State>,
    /// Start after this id.
    pub cursor: Option<AgentId>,
    /// Page size (1–200).
    pub limit: usize,
}

/// A list page.
#[derive(Debug, Clone)]
pub struct ListPage {
    /// Agents, ordered by id (creation time).
    pub items: Vec<Arc<AgentSnapshot>>,
    /// Cursor for the next page, when there is one.
    pub next_cursor: Option<AgentId>,
}

/// Messages.
#[derive(Debug)]
pub enum TenantMsg {
    /// Create an agent in `draft`.
    Create {
        /// Validated configuration.
        spec: Box<AgentSpec>,
        /// Who asks.
        by: Who,
        /// Answer.
        reply: RpcReplyPort<Result<Arc<AgentSnapshot>>>,
    },
    /// A page of the read index.
    List {
        /// The query.
        query: ListQuery,
        /// Answer.
        reply: RpcReplyPort<ListPage>,
    },
    /// Every agent of the read index, by id (the org chart).
    All(RpcReplyPort<Vec<Arc<AgentSnapshot>>>),
    /// An agent committed a change (sent by the agent before it answers its caller,
    /// so a list after a write sees the write).
    Changed(Arc<AgentSnapshot>),
    /// An agent was deleted.
    Removed(AgentId),
    /// A create's insert finished (sent by the insert task).
    Inserted {
        /// The new record (boxed: it dwarfs every other message).
        record: Box<AgentRecord>,
        /// The store's answer.
        result: std::result::Result<(), StoreError>,
        /// The tenant incarnation that started the create.
        origin: ActorId,
        /// The caller.
        reply: RpcReplyPort<Result<Arc<AgentSnapshot>>>,
    },
    /// A delayed restart is due.
    Respawn(AgentId),
    /// Chaos: panic inside `handle`.
    Panic,
}

struct Child {
    actor: Option<ActorRef<AgentMsg>>,
    intensity: RestartIntensity,
    escalated: bool,
}

/// Supervisor state.
pub struct TenantState {
    org: OrgId,
    ctx: Arc<Ctx>,
    approvals: Option<ActorRef<crate::approval::ApprovalMsg>>,
    by_actor: HashMap<ActorId, AgentId>,
    children: HashMap<AgentId, Child>,
    index: BTreeMap<AgentId, Arc<AgentSnapshot>>,
}

impl TenantState {
    /// Spawns (or replaces) the organization's approval actor, which
    /// reloads every pending request before it answers anything.
    async fn spawn_approvals(
        &mut self,
        myself: &ActorRef<TenantMsg>,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let (actor, _) = Actor::spawn_linked(
            None,
            crate::approval::ApprovalActor,
            crate::approval::ApprovalArgs {
                org: self.org.clone(),
                ctx: self.ctx.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        self.ctx.registry.put_approvals(
            self.org.clone(),
            crate::registry::ApprovalHandle {
                actor: actor.clone(),
                gate: Gate::new(self.ctx.settings.mailbox_capacity * 16, "approvals"),
            },
        );
        self.approvals = Some(actor);
        Ok(())
    }

    fn new_child(&self) -> Child {
        Child {
            actor: None,
            intensity: RestartIntensity::new(
                self.ctx.settings.supervisor_max_restarts,
                self.ctx.settings.supervisor_window,
            ),
            escalated: false,
        }
    }

    /// Spawns an incarnation for `record` (already claimed) and registers it.
    async fn spawn_agent(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        record: AgentRecord,
    ) -> std::result::Result<(), String> {
        let id = record.id.clone();
        let snapshot = self.publish_record(&record);
        let args = AgentArgs {
            record,
            ctx: self.ctx.clone(),
            tenant: myself.clone(),
            snapshot,
        };
        let (actor, _) = Actor::spawn_linked(None, AgentActor, args, myself.get_cell())
            .await
            .map_err(|e| e.to_string())?;
        self.by_actor.insert(actor.get_id(), id.clone());
        self.ctx.registry.put_agent(
            id.clone(),
            AgentHandle {
                org: self.org.clone(),
                actor: actor.clone(),
                gate: Gate::new(self.ctx.settings.mailbox_capacity, "agent"),
            },
        );
        let fresh = self.new_child();
        self.children.entry(id).or_insert(fresh).actor = Some(actor);
        Ok(())
    }

    fn publish_record(&mut self, record: &AgentRecord) -> Arc<AgentSnapshot> {
        let view = AgentView::of(record, health_of(record, &self.ctx.settings));
        let snapshot = AgentSnapshot::new(view);
        self.index.insert(record.id.clone(), snapshot.clone());
        snapshot
    }

    /// Drops every trace of an agent that no longer exists, including a
    /// registry entry still pointing at its dead actor (else callers would be
    /// told "restarting" forever instead of 404).
    fn forget(&mut self, id: &AgentId) {
        self.children.remove(id);
        self.index.remove(id);
        if let Some(handle) = self.ctx.registry.agent(&self.org, id)
            && (handle.actor.get_status() == ractor::ActorStatus::Stopped
                || !self.by_actor.contains_key(&handle.actor.get_id()))
        {
            self.ctx.registry.remove_agent(id, &handle.actor);
        }
    }

    /// Restarts `id` from the store, or escalates past the intensity limit.
    async fn restart(&mut self, myself: &ActorRef<TenantMsg>, id: AgentId, why: String) {
        let Some(child) = self.children.get_mut(&id) else {
            // Already forgotten (deleted just before it died).
            self.forget(&id);
            return;
        };
        child.actor = None;
        metrics::counter!("cadre_actor_restarts_total", "actor" => "agent").increment(1);
        let recent = child.intensity.recent() as u32;
        if child.intensity.allow_restart(Instant::now()) {
            let delay = if recent == 0 {
                std::time::Duration::ZERO
            } else {
                self.ctx.settings.supervisor_backoff.delay(recent - 1)
            };
            if delay.is_zero() {
                self.respawn(myself, id).await;
            } else {
                myself.send_after(delay, move || TenantMsg::Respawn(id));
            }
            return;
        }
        if child.escalated {
            // It failed again in `error`, where it does nothing by itself: give up.
            if let Some(handle) = self.ctx.registry.agent(&self.org, &id) {
                self.ctx.registry.remove_agent(&id, &handle.actor);
            }
            metrics::counter!("cadre_agents_abandoned_total").increment(1);
            tracing::error!(org = %self.org, agent = %id, %why, "agent actor keeps failing; left unsupervised");
            return;
        }
        child.escalated = true;
        tracing::error!(org = %self.org, agent = %id, %why, "restart intensity exceeded; moving agent to error");
        metrics::counter!("cadre_supervisor_escalations_total").increment(1);
        if let Err(e) = self.escalate(myself, &id, &why).await {
            tracing::error!(org = %self.org, agent = %id, error = %e, "escalation failed; agent left unsupervised");
        }
    }

    async fn escalate(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        id: &AgentId,
        why: &str,
    ) -> std::result::Result<(), String> {
        let settings = &self.ctx.settings;
        let Some(mut rec) = self
            .ctx
            .store
            .claim_agent(&self.org, id)
            .await
            .map_err(|e| e.to_string())?
        else {
            self.forget(id);
            return Ok(());
        };
        let reason = format!(
            "restart intensity exceeded: more than {} restarts in {} ms (last: {why})",
            settings.supervisor_max_restarts,
            settings.supervisor_window.as_millis()
        );
        let now = self.ctx.clock.now_ms();
        let mut transitions = Vec::new();
        if let Some(to) = lifecycle::step(rec.state, Trigger::Escalated) {
            transitions.push(Transition {
                from: Some(rec.state),
                to,
                reason: Some(reason.clone()),
                by: Who::system().to_text(),
                at: now,
            });
            rec.state = to;
        }
        rec.state_reason = Some(reason.clone());
        rec.updated_at = now;
        let event = AgentEvent {
            kind: "supervisor_escalated".into(),
            detail: serde_json::json!({ "reason": reason }),
            at: now,
        };
        self.ctx
            .store
            .write_agent(AgentWrite {
                record: &rec,
                transitions: &transitions,
                event: Some(&event),
                usage: None,
                audit: AuditEntry::for_transitions(&rec, &transitions).as_ref(),
                versions: &[],
            })
            .await
            .map_err(|e| e.to_string())?;
        self.spawn_agent(myself, rec).await
    }

    async fn respawn(&mut self, myself: &ActorRef<TenantMsg>, id: AgentId) {
        match self.ctx.store.claim_agent(&self.org, &id).await {
            Ok(Some(rec)) => {
                if let Err(e) = self.spawn_agent(myself, rec).await {
                    tracing::error!(agent = %id, error = %e, "respawn failed");
                    Box::pin(self.restart(myself, id, e)).await;
                }
            }
            Ok(None) => self.forget(&id),
            Err(e) => {
                // The store is down: try again later rather than lose the agent.
                tracing::warn!(agent = %id, error = %e, "cannot reload agent; retrying");
                myself.send_after(self.ctx.settings.supervisor_backoff.max, move || {
                    TenantMsg::Respawn(id)
                });
            }
        }
    }

    /// Starts a create: the insert runs off the mailbox so that concurrent
    /// creates reach the store together (and share a group commit); the
    /// result comes back as `Inserted`.
    fn begin_create(
        &self,
        myself: &ActorRef<TenantMsg>,
        spec: AgentSpec,
        by: Who,
        reply: RpcReplyPort<Result<Arc<AgentSnapshot>>>,
    ) {
        let now = self.ctx.clock.now_ms();
        let period = self
            .ctx
            .tenancy
            .agent_period(&self.org, spec.budget.period, now);
        let record = AgentRecord {
            id: AgentId(uuid::Uuid::now_v7().to_string()),
            org_id: self.org.clone(),
            spec,
            state: State::Draft,
            state_reason: None,
            restart_count: 0,
            usage: Usage::empty(period),
            deployment_ref: None,
            runtime_token_hash: None,
            epoch: 1,
            created_at: now,
            updated_at: now,
        };
        let created = Transition {
            from: None,
            to: State::Draft,
            reason: Some("created".into()),
            by: by.to_text(),
            at: now,
        };
        let version = crate::domain::AgentVersion {
            agent_id: record.id.clone(),
            org_id: self.org.clone(),
            n: 1,
            definition: crate::domain::definition(&record.spec),
            by: by.to_text(),
            at: now,
        };
        let audit = AuditEntry::new(
            &self.org,
            &by,
            "agent.create",
            format!("agent:{}", record.id),
            serde_json::json!({ "name": record.spec.name, "model": record.spec.model }),
            now,
        );
        let max_agents = self.ctx.tenancy.get(&self.org).max_agents;
        let store = self.ctx.store.clone();
        let registry = self.ctx.registry.clone();
        let org = self.org.clone();
        let deadline = Instant::now() + self.ctx.settings.call_timeout;
        let origin = myself.get_id();
        let mut target = myself.clone();
        tokio::spawn(async move {
            let result = store
                .insert_agent(AgentInsert {
                    record: &record,
                    created: &created,
                    audit: &audit,
                    max_agents,
                    version: &version,
                })
                .await;
            let mut msg = TenantMsg::Inserted {
                record: Box::new(record),
                result,
                origin,
                reply,
            };
            // Deliver to the tenant's current incarnation: if the one that
            // started the insert died meanwhile, its successor adopts the agent
            // (and answers the caller). Past the deadline the caller gets a
            // 503 and the agent is picked up by the next hydration.
            loop {
                match target.cast(msg) {
                    Ok(()) => return,
                    Err(ractor::MessagingErr::SendErr(m)) => msg = m,
                    Err(_) => return,
                }
                if Instant::now() > deadline {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                if let Some(h) = registry.tenant(&org) {
                    target = h.actor;
                }
            }
        });
    }

    /// Finishes a create once the insert committed (or failed).
    async fn finish_create(
        &mut self,
        myself: &ActorRef<TenantMsg>,
        record: AgentRecord,
        result: std::result::Result<(), StoreError>,
        origin: ActorId,
    ) -> Result<Arc<AgentSnapshot>> {
        match result {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Err(Error::NameTaken(record.spec.name.clone())),
            Err(e) => return Err(e.into()),
        }
        let id = record.id.clone();
        if !self.children.contains_key(&id) {
            if origin == myself.get_id() {
                if let Err(e) = self.spawn_agent(myself, record).await {
                    tracing::error!(org = %self.org, error = %e, "spawning a new agent failed");
                    let fresh = self.new_child();
                    self.children.entry(id.clone()).or_insert(fresh);
                    self.restart(myself, id.clone(), e).await;
                }
            } else {
                // Created by a predecessor after this incarnation hydrated:
                // claim it like any other restart.
                let fresh = self.new_child();
                self.children.insert(id.clone(), fresh);
                self.respawn(myself, id.clone()).await;
            }
        }
        self.index
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::Unavailable("agent created but not running yet; retry".into()))
    }

    fn list(&self, q: &ListQuery) -> ListPage {
        let start = match &q.cursor {
            Some(c) => Bound::Excluded(c.clone()),
            None => Bound::Unbounded,
        };
        let mut items = Vec::with_capacity(q.limit);
        let mut more = false;
        for (_, snap) in self.index.range((start, Bound::Unbounded)) {
            if q.state.is_some_and(|s| s != snap.state) {
                continue;
            }
            if items.len() == q.limit {
                more = true;
                break;
            }
            items.push(snap.clone());
        }
        let next_cursor = if more {
            items.last().map(|s| s.id.clone())
        } else {
            None
        };
        ListPage { items, next_cursor }
    }
}

impl Actor for TenantSupervisor {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = TenantArgs;

    /// Hydration happens here, not in `post_start`: `spawn` awaits `pre_start`,
    /// so when a (re)started tenant is handed back every agent is registered
    /// and nobody sees a 404 for an agent that exists.
    async fn pre_start(
        &self,
        myself: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> std::result::Result<TenantState, ActorProcessingErr> {
        let mut st = TenantState {
            org: args.org,
            ctx: args.ctx,
            by_actor: HashMap::new(),
            children: HashMap::new(),
            index: BTreeMap::new(),
            approvals: None,
        };
        // The approval actor first: agents ask it about tool calls.
        st.spawn_approvals(&myself).await?;
        // Claim every agent for a new incarnation, so that writes still in
        // flight from killed predecessors are refused by the store.
        let started = Instant::now();
        let mut loading = std::time::Duration::ZERO;
        let mut keep = std::collections::HashSet::new();
        let mut after: Option<AgentId> = None;
        let t = Instant::now();
        st.ctx.store.claim_org(&st.org).await?;
        loading += t.elapsed();
        loop {
            let t = Instant::now();
            let page = st
                .ctx
                .store
                .org_page(&st.org, after.as_ref(), HYDRATE_PAGE)
                .await?;
            loading += t.elapsed();
            let full = page.len() == HYDRATE_PAGE;
            after = page.last().map(|r| r.id.clone());
            for rec in page {
                let id = rec.id.clone();
                keep.insert(id.clone());
                if let Err(e) = st.spawn_agent(&myself, rec).await {
                    tracing::error!(agent = %id, error = %e, "hydration spawn failed");
                    let fresh = st.new_child();
                    st.children.entry(id.clone()).or_insert(fresh);
                    st.restart(&myself, id, e).await;
                }
            }
            if !full {
                break;
            }
        }
        st.ctx.registry.retain_org_agents(&st.org, &keep);
        tracing::info!(
            org = %st.org,
            agents = keep.len(),
            total_ms = started.elapsed().as_millis() as u64,
            store_ms = loading.as_millis() as u64,
            "tenant hydrated"
        );
        st.ctx.registry.put_tenant(
            st.org.clone(),
            crate::registry::TenantHandle {
                actor: myself.clone(),
                gate: Gate::new(st.ctx.settings.mailbox_capacity * 4, "tenant"),
            },
        );
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        st: &mut TenantState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            TenantMsg::Create { spec, by, reply } => st.begin_create(&myself, *spec, by, reply),
            TenantMsg::Inserted {
                record,
                result,
                origin,
                reply,
            } => {
                let r = st.finish_create(&myself, *record, result, origin).await;
                let _ = reply.send(r);
            }
            TenantMsg::List { query, reply } => {
                let _ = reply.send(st.list(&query));
            }
            TenantMsg::All(reply) => {
                let _ = reply.send(st.index.values().cloned().collect());
            }
            TenantMsg::Changed(snap) => {
                if st.children.contains_key(&snap.id) {
                    st.index.insert(snap.id.clone(), snap);
                }
            }
            TenantMsg::Removed(id) => st.forget(&id),
            TenantMsg::Respawn(id) => {
                if st.children.get(&id).is_some_and(|c| c.actor.is_none()) {
                    st.respawn(&myself, id).await;
                }
            }
            TenantMsg::Panic => panic!("chaos: tenant {} panicked on request", st.org),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<TenantMsg>,
        evt: SupervisionEvent,
        st: &mut TenantState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let (cell, why): (ActorCell, String) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            _ => return Ok(()),
        };
        if st
            .approvals
            .as_ref()
            .is_some_and(|a| a.get_id() == cell.get_id())
        {
            // Pending requests live in the store: a new incarnation reloads
            // them and re-arms their timers. If it cannot start, the tenant
            // fails and the root restarts the whole tree of the org.
            tracing::warn!(org = %st.org, reason = %why, "approval actor stopped; restarting it");
            metrics::counter!("cadre_actor_restarts_total", "kind" => "approvals").increment(1);
            st.spawn_approvals(&myself).await?;
            return Ok(());
        }
        let Some(id) = st.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        let actor: ActorRef<AgentMsg> = cell.into();
        match why.as_str() {
            EXIT_DELETED => st.forget(&id),
            // A newer incarnation already took over (and replaced the entry).
            EXIT_FENCED => st.ctx.registry.remove_agent(&id, &actor),
            // The registry keeps pointing at the dead actor until the
            // replacement overwrites it: callers see "not delivered" and retry
            // instead of a 404 for an agent that exists.
            _ => st.restart(&myself, id, why).await,
        }
        Ok(())
    }
}
