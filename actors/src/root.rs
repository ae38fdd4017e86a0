//! `RootSupervisor`: the top of the tree.
//!
//! ```text
//! RootSupervisor
//!  ├─ TenantSupervisor(org A) ── AgentActor(a1), AgentActor(a2), …
//!  ├─ TenantSupervisor(org B) ── …
//!  └─ (Registry: (org, agent) → ActorRef, lookup only)
//! ```
//!
//! The root spawns one tenant supervisor per organization in the store and
//! restarts any that exits, with back-off after the first immediate restart.
//! A restarted tenant re-hydrates all of its agents from the store. The root
//! never gives up on a tenant (that would take a whole organization down);
//! while a tenant is down, readiness reports it.

use crate::context::Ctx;
use crate::domain::OrgId;
use crate::error::{Error, Result};
use crate::tenant::{TenantArgs, TenantMsg, TenantSupervisor};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The actor.
#[derive(Debug, Default)]
pub struct RootSupervisor;

/// Messages.
#[derive(Debug)]
pub enum RootMsg {
    /// Make sure `org` has a tenant supervisor (after an org is created).
    EnsureTenant {
        /// The organization.
        org: OrgId,
        /// Answer.
        reply: RpcReplyPort<Result<()>>,
    },
    /// A delayed tenant restart is due.
    Respawn(OrgId),
    /// Whether every tenant is up.
    IsReady(RpcReplyPort<bool>),
    /// Turn the instance's kill switch on (`Some(reason)`) or off.
    Halt {
        /// On, with why.
        on: Option<String>,
        /// Who.
        by: crate::domain::Who,
        /// Answer.
        reply: RpcReplyPort<Result<()>>,
    },
}

struct TenantSlot {
    actor: Option<ActorRef<TenantMsg>>,
    last_failure: Option<Instant>,
    streak: u32,
}

/// Root state.
pub struct RootState {
    ctx: Arc<Ctx>,
    by_actor: HashMap<ActorId, OrgId>,
    tenants: HashMap<OrgId, TenantSlot>,
}

impl RootState {
    async fn spawn_tenant(
        &mut self,
        myself: &ActorRef<RootMsg>,
        org: OrgId,
    ) -> std::result::Result<(), String> {
        let args = TenantArgs {
            org: org.clone(),
            ctx: self.ctx.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, TenantSupervisor, args, myself.get_cell())
            .await
            .map_err(|e| e.to_string())?;
        self.by_actor.insert(actor.get_id(), org.clone());
        let slot = self.tenants.entry(org).or_insert(TenantSlot {
            actor: None,
            last_failure: None,
            streak: 0,
        });
        slot.actor = Some(actor);
        Ok(())
    }

    async fn restart(&mut self, myself: &ActorRef<RootMsg>, org: OrgId) {
        let window = self.ctx.settings.supervisor_window;
        let backoff = self.ctx.settings.supervisor_backoff;
        let Some(slot) = self.tenants.get_mut(&org) else {
            return;
        };
        slot.actor = None;
        metrics::counter!("cadre_actor_restarts_total", "actor" => "tenant").increment(1);
        let now = Instant::now();
        if slot
            .last_failure
            .is_some_and(|t| now.duration_since(t) < window)
        {
            slot.streak = slot.streak.saturating_add(1);
        } else {
            slot.streak = 0;
        }
        slot.last_failure = Some(now);
        let delay = if slot.streak == 0 {
            Duration::ZERO
        } else {
            backoff.delay(slot.streak - 1)
        };
        if delay.is_zero() {
            if let Err(e) = self.spawn_tenant(myself, org.clone()).await {
                tracing::error!(%org, error = %e, "tenant restart failed; retrying");
                myself.send_after(backoff.max, move || RootMsg::Respawn(org));
            }
        } else {
            myself.send_after(delay, move || RootMsg::Respawn(org));
        }
    }
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = Arc<Ctx>;

    /// Tenants are spawned (and hydrate) here: `Cadre::start` returns only
    /// once every organization's agents are registered.
    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        ctx: Arc<Ctx>,
    ) -> std::result::Result<RootState, ActorProcessingErr> {
        let mut st = RootState {
            ctx,
            by_actor: HashMap::new(),
            tenants: HashMap::new(),
        };
        for org in st.ctx.store.list_orgs().await? {
            st.spawn_tenant(&myself, org).await?;
        }
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        st: &mut RootState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::EnsureTenant { org, reply } => {
                let r = if st.tenants.get(&org).is_some_and(|s| s.actor.is_some()) {
                    Ok(())
                } else {
                    st.spawn_tenant(&myself, org)
                        .await
                        .map_err(Error::Unavailable)
                };
                let _ = reply.send(r);
            }
            RootMsg::Respawn(org) => {
                if st.tenants.get(&org).is_some_and(|s| s.actor.is_none())
                    && let Err(e) = st.spawn_tenant(&myself, org.clone()).await
                {
                    tracing::error!(%org, error = %e, "tenant restart failed; retrying");
                    myself.send_after(st.ctx.settings.supervisor_backoff.max, move || {
                        RootMsg::Respawn(org)
                    });
                }
            }
            RootMsg::IsReady(reply) => {
                let _ = reply.send(st.tenants.values().all(|s| s.actor.is_some()));
            }
            RootMsg::Halt { on, by, reply } => {
                let r =
                    crate::approval::halt(&st.ctx, crate::governance::HaltScope::Instance, on, by)
                        .await;
                let _ = reply.send(r);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        evt: SupervisionEvent,
        st: &mut RootState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_default())
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            _ => return Ok(()),
        };
        if let Some(org) = st.by_actor.remove(&cell.get_id()) {
            // The registry keeps the dead tenant until the replacement
            // overwrites it, so callers retry rather than see a 404.
            tracing::warn!(%org, %why, "tenant supervisor exited; restarting");
            st.restart(&myself, org).await;
        }
        Ok(())
    }
}
