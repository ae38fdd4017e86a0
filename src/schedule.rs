//! The scheduler: one actor owns every schedule (cron expression, time zone,
//! the task to give) and one timer for the earliest next run. When a run is
//! due it gives the agent its task through the agent's actor, like an
//! operator would, then records the run and the next one.
//!
//! A run's task id derives from the schedule and the run's time, so a run
//! repeated after a crash (the task given, the schedule not yet advanced)
//! finds its task instead of creating a second. Runs missed while the
//! control plane was down are made up once, not once per missed time.
//! A watchdog restarts the actor if it ever fails (it reloads from the
//! store).

use crate::cron::Cron;
use crate::store::{Db, Schedule};
use cadre_actors::Cadre;
use cadre_actors::audit::AuditEntry;
use cadre_actors::domain::{OrgId, Who};
use cadre_actors::ports::{Clock, SystemClock};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

type Reply<T> = RpcReplyPort<Result<T, cadre_actors::Error>>;

/// A change to a schedule; `None` leaves a field.
#[derive(Debug, Clone, Default)]
pub struct SchedulePatch {
    /// Cron expression.
    pub cron: Option<String>,
    /// Time zone.
    pub timezone: Option<String>,
    /// Instruction.
    pub instruction: Option<String>,
    /// Runs or not.
    pub enabled: Option<bool>,
}

/// Messages.
#[derive(Debug)]
pub enum SchedMsg {
    /// A new schedule (validated).
    Create {
        /// It.
        s: Box<Schedule>,
        /// Who.
        by: Who,
        /// Answer.
        reply: Reply<Schedule>,
    },
    /// Change one.
    Update {
        /// Organization.
        org: String,
        /// Id.
        id: String,
        /// The change (validated).
        patch: SchedulePatch,
        /// Who.
        by: Who,
        /// Answer.
        reply: Reply<Schedule>,
    },
    /// Delete one.
    Delete {
        /// Organization.
        org: String,
        /// Id.
        id: String,
        /// Who.
        by: Who,
        /// Answer.
        reply: Reply<()>,
    },
    /// The timer: give the due runs their tasks.
    Fire,
}

/// The scheduler's state.
pub struct Book {
    store: Arc<Db>,
    cadre: Cadre,
    /// Enabled schedules by id.
    live: HashMap<String, Schedule>,
    timer: Option<tokio::task::JoinHandle<()>>,
}

/// The next run of `s` after `after_ms`, or `None` (disabled, or never).
pub fn next_run(s: &Schedule, after_ms: i64) -> Option<i64> {
    if !s.enabled {
        return None;
    }
    let cron = Cron::parse(&s.cron).ok()?;
    let tz = jiff::tz::TimeZone::get(&s.timezone).ok()?;
    let after = jiff::Timestamp::from_millisecond(after_ms).ok()?;
    cron.next_after(after, &tz).map(|t| t.as_millisecond())
}

fn unavailable(e: impl std::fmt::Display) -> cadre_actors::Error {
    cadre_actors::Error::Unavailable(e.to_string())
}

impl Book {
    fn arm(&mut self, myself: &ActorRef<SchedMsg>) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        let Some(next) = self.live.values().filter_map(|s| s.next_run_at).min() else {
            return;
        };
        // Woken at least every minute, so a changed system clock is noticed.
        let wait = (next - SystemClock.now_ms()).clamp(0, 60_000) as u64;
        let me = myself.clone();
        self.timer = Some(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let _ = me.cast(SchedMsg::Fire);
        }));
    }

    async fn current(&self, org: &str, id: &str) -> Result<Schedule, cadre_actors::Error> {
        match self.live.get(id) {
            Some(s) if s.org_id == org => Ok(s.clone()),
            Some(_) => Err(cadre_actors::Error::Missing("schedule")),
            None => self
                .store
                .tables()
                .schedule(org, id)
                .await
                .map_err(unavailable)?
                .ok_or(cadre_actors::Error::Missing("schedule")),
        }
    }

    fn keep(&mut self, s: Schedule) {
        if s.enabled {
            self.live.insert(s.id.clone(), s);
        } else {
            self.live.remove(&s.id);
        }
    }

    /// Gives one due run its task; the schedule as it is afterwards.
    async fn run(&self, mut s: Schedule, now: i64) -> Schedule {
        let at = s.next_run_at.unwrap_or(now);
        let id = crate::derived_uuid(&format!("schedule\n{}\n{at}", s.id));
        let org = OrgId(s.org_id.clone());
        let agent = cadre_actors::domain::AgentId(s.agent_id.clone());
        let given = match self.store.tables().task(&s.org_id, &id).await {
            Ok(Some(_)) => Ok(()),
            _ => {
                let mut task = cadre_actors::task::TaskRecord::queued(
                    &s.org_id,
                    &s.agent_id,
                    s.instruction.clone(),
                    s.input.clone(),
                    s.limits,
                    format!("schedule:{}", s.id),
                );
                task.id = id.clone();
                self.cadre
                    .submit_task(&org, &agent, task, &Who::system())
                    .await
                    .map(|_| ())
            }
        };
        match given {
            Ok(()) => {
                s.last_task_id = Some(id);
                s.last_error = None;
            }
            // The agent is gone: so is its schedule's reason to run.
            Err(cadre_actors::Error::Missing(_)) | Err(cadre_actors::Error::NotFound) => {
                s.enabled = false;
                s.last_error = Some("the agent no longer exists".into());
            }
            Err(e) => s.last_error = Some(e.to_string()),
        }
        s.last_run_at = Some(now);
        s.next_run_at = next_run(&s, now.max(at));
        s.updated_at = now;
        s
    }
}

/// The scheduler actor.
pub struct SchedulerActor;

impl Actor for SchedulerActor {
    type Msg = SchedMsg;
    type State = Book;
    type Arguments = (Arc<Db>, Cadre);

    async fn pre_start(
        &self,
        myself: ActorRef<SchedMsg>,
        (store, cadre): (Arc<Db>, Cadre),
    ) -> Result<Book, ActorProcessingErr> {
        let live = store
            .tables()
            .enabled_schedules()
            .await?
            .into_iter()
            .map(|s| (s.id.clone(), s))
            .collect();
        let mut book = Book {
            store,
            cadre,
            live,
            timer: None,
        };
        book.arm(&myself);
        Ok(book)
    }

    async fn post_stop(
        &self,
        _: ActorRef<SchedMsg>,
        st: &mut Book,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = st.timer.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SchedMsg>,
        msg: SchedMsg,
        st: &mut Book,
    ) -> Result<(), ActorProcessingErr> {
        let now = SystemClock.now_ms();
        match msg {
            SchedMsg::Create { s, by, reply } => {
                let mut s = *s;
                s.created_at = now;
                s.updated_at = now;
                s.next_run_at = next_run(&s, now);
                let audit = audit(&s, &by, "schedule.create", now);
                let r = st.store.tables().save_schedule(&s, Some(&audit)).await;
                let _ = reply.send(match r {
                    Ok(()) => {
                        st.keep(s.clone());
                        st.arm(&myself);
                        Ok(s)
                    }
                    Err(e) => Err(unavailable(e)),
                });
            }
            SchedMsg::Update {
                org,
                id,
                patch,
                by,
                reply,
            } => {
                let r = async {
                    let mut s = st.current(&org, &id).await?;
                    let timing = patch.cron.is_some()
                        || patch.timezone.is_some()
                        || patch.enabled.is_some_and(|e| e != s.enabled);
                    if let Some(c) = patch.cron {
                        s.cron = c;
                    }
                    if let Some(t) = patch.timezone {
                        s.timezone = t;
                    }
                    if let Some(i) = patch.instruction {
                        s.instruction = i;
                    }
                    if let Some(e) = patch.enabled {
                        s.enabled = e;
                    }
                    if timing {
                        s.next_run_at = next_run(&s, now);
                    }
                    s.updated_at = now;
                    let audit = audit(&s, &by, "schedule.update", now);
                    st.store
                        .tables()
                        .save_schedule(&s, Some(&audit))
                        .await
                        .map_err(unavailable)?;
                    Ok(s)
                }
                .await;
                if let Ok(s) = &r {
                    st.keep(s.clone());
                    st.arm(&myself);
                }
                let _ = reply.send(r);
            }
            SchedMsg::Delete { org, id, by, reply } => {
                let r = async {
                    let s = st.current(&org, &id).await?;
                    let audit = audit(&s, &by, "schedule.delete", now);
                    if st
                        .store
                        .tables()
                        .delete_schedule(&org, &id, &audit)
                        .await
                        .map_err(unavailable)?
                    {
                        Ok(())
                    } else {
                        Err(cadre_actors::Error::Missing("schedule"))
                    }
                }
                .await;
                if r.is_ok() {
                    st.live.remove(&id);
                    st.arm(&myself);
                }
                let _ = reply.send(r);
            }
            SchedMsg::Fire => {
                let due: Vec<Schedule> = st
                    .live
                    .values()
                    .filter(|s| s.next_run_at.is_some_and(|t| t <= now))
                    .cloned()
                    .collect();
                for s in due {
                    let next = st.run(s, now).await;
                    match st.store.tables().save_schedule(&next, None).await {
                        Ok(()) => st.keep(next),
                        // Not recorded: the run is repeated (and finds its
                        // task) on the next wake-up.
                        Err(e) => {
                            tracing::warn!(schedule = %next.id, error = %e, "recording a scheduled run failed")
                        }
                    }
                }
                st.arm(&myself);
            }
        }
        Ok(())
    }
}

fn audit(s: &Schedule, by: &Who, action: &str, at: i64) -> AuditEntry {
    AuditEntry::new(
        &OrgId(s.org_id.clone()),
        by,
        action,
        format!("schedule:{}", s.id),
        serde_json::json!({
            "agent": s.agent_id,
            "cron": s.cron,
            "timezone": s.timezone,
            "enabled": s.enabled,
        }),
        at,
    )
}

/// The scheduler as the HTTP layer sees it: a handle whose actor a watchdog
/// restarts if it fails.
#[derive(Clone)]
pub struct Scheduler {
    actor: Arc<RwLock<ActorRef<SchedMsg>>>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scheduler")
    }
}

impl Scheduler {
    /// Starts the actor (loading every enabled schedule) and its watchdog.
    pub async fn start(store: Arc<Db>, cadre: Cadre) -> anyhow::Result<Scheduler> {
        let (actor, handle) =
            Actor::spawn(None, SchedulerActor, (store.clone(), cadre.clone())).await?;
        let shared = Arc::new(RwLock::new(actor));
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let slot = shared.clone();
        let stop = stopping.clone();
        tokio::spawn(async move {
            let mut handle = handle;
            loop {
                let _ = handle.await;
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                // Stopped on purpose (shutdown) or failed: start again; a
                // failure to start is retried after a pause.
                tokio::time::sleep(Duration::from_millis(200)).await;
                match Actor::spawn(None, SchedulerActor, (store.clone(), cadre.clone())).await {
                    Ok((a, h)) => {
                        tracing::warn!("scheduler restarted");
                        if let Ok(mut s) = slot.write() {
                            *s = a;
                        }
                        handle = h;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "scheduler failed to restart");
                        return;
                    }
                }
            }
        });
        Ok(Scheduler {
            actor: shared,
            stopping,
        })
    }

    /// Stops the scheduler for good (server shutdown).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(a) = self.actor.read() {
            a.stop(None);
        }
    }

    async fn call<T>(
        &self,
        msg: impl FnOnce(Reply<T>) -> SchedMsg,
    ) -> Result<T, cadre_actors::Error>
    where
        T: Send + 'static,
    {
        let actor = self
            .actor
            .read()
            .map_err(|_| unavailable("scheduler"))?
            .clone();
        match actor.call(msg, Some(Duration::from_secs(10))).await {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            Ok(_) => Err(cadre_actors::Error::Timeout),
            Err(e) => Err(unavailable(format!("scheduler: {e}"))),
        }
    }

    /// Creates a schedule.
    pub async fn create(&self, s: Schedule, by: Who) -> Result<Schedule, cadre_actors::Error> {
        self.call(|reply| SchedMsg::Create {
            s: Box::new(s),
            by,
            reply,
        })
        .await
    }

    /// Changes a schedule.
    pub async fn update(
        &self,
        org: &OrgId,
        id: &str,
        patch: SchedulePatch,
        by: Who,
    ) -> Result<Schedule, cadre_actors::Error> {
        self.call(|reply| SchedMsg::Update {
            org: org.to_string(),
            id: id.to_string(),
            patch,
            by,
            reply,
        })
        .await
    }

    /// Deletes a schedule.
    pub async fn delete(&self, org: &OrgId, id: &str, by: Who) -> Result<(), cadre_actors::Error> {
        self.call(|reply| SchedMsg::Delete {
            org: org.to_string(),
            id: id.to_string(),
            by,
            reply,
        })
        .await
    }
}
