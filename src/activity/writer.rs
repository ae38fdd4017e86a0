//! The activity writer actor and its supervisor.
//!
//! The writer takes due batches from the [`Spool`] and writes each in one
//! transaction; on failure it keeps the batch in flight and retries with
//! back-off. It holds nothing that is not also in the spool, so the
//! supervisor can replace it at any moment (a kill, a panic) and the new
//! writer carries on where the old one stopped.

use super::hub::{Hub, StreamEvent};
use super::spool::{Flight, Spool, Take};
use crate::store::Db;
use cadre_actors::domain::OrgId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Flushes per message before the writer yields to its mailbox (so that a
/// `Flush` request is seen under sustained ingest).
const FLIGHTS_PER_TURN: usize = 8;

/// What the writer and its supervisor share.
pub struct Shared {
    /// The queue.
    pub spool: Arc<Spool>,
    /// Where committed events go live.
    pub hub: Arc<Hub>,
    /// The database.
    pub store: Arc<Db>,
    /// First retry delay.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// The current writer (for `Flush` and the chaos hook).
    pub writer: std::sync::Mutex<Option<ActorRef<WriterMsg>>>,
}

/// Messages of the writer.
pub enum WriterMsg {
    /// Look at the queue (sent on every push and by the writer's timers).
    Drain,
    /// Flush everything queued now, then answer.
    Flush(RpcReplyPort<()>),
    /// Chaos: panic inside `handle`.
    Panic,
}

/// The writer actor.
pub struct ActivityWriter;

/// The writer's state: timers and waiting `Flush` callers only.
pub struct WriterState {
    shared: Arc<Shared>,
    failures: u32,
    retry_at: Option<Instant>,
    timer_at: Option<Instant>,
    flushes: Vec<RpcReplyPort<()>>,
    pump: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for ActivityWriter {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<WriterMsg>,
        shared: Arc<Shared>,
    ) -> Result<WriterState, ActorProcessingErr> {
        // Every push wakes the writer through its mailbox.
        let spool = shared.spool.clone();
        let me = myself.clone();
        let pump = tokio::spawn(async move {
            loop {
                spool.wake.notified().await;
                if me.cast(WriterMsg::Drain).is_err() {
                    return;
                }
            }
        });
        Ok(WriterState {
            shared,
            failures: 0,
            retry_at: None,
            timer_at: None,
            flushes: Vec::new(),
            pump: Some(pump),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<WriterMsg>,
        _: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        // A predecessor may have left a batch in flight.
        let _ = myself.cast(WriterMsg::Drain);
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<WriterMsg>,
        st: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(p) = st.pump.take() {
            p.abort();
        }
        st.shared.spool.flush_started.store(0, Ordering::Release);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WriterMsg>,
        msg: WriterMsg,
        st: &mut WriterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WriterMsg::Drain => {}
            WriterMsg::Flush(reply) => st.flushes.push(reply),
            WriterMsg::Panic => panic!("chaos: activity writer panicked on request"),
        }
        drain(&myself, st).await;
        Ok(())
    }
}

async fn drain(myself: &ActorRef<WriterMsg>, st: &mut WriterState) {
    let now = Instant::now();
    if st.retry_at.is_some_and(|t| now < t) {
        return; // backing off; the retry timer comes back
    }
    st.retry_at = None;
    for _ in 0..FLIGHTS_PER_TURN {
        let force = !st.flushes.is_empty();
        match st.shared.spool.take(force) {
            Take::Flush(flight) => {
                if let Err(e) = write(&st.shared, &flight).await {
                    let delay = backoff(st, e);
                    st.retry_at = Some(Instant::now() + delay);
                    myself.send_after(delay, || WriterMsg::Drain);
                    return;
                }
                st.failures = 0;
            }
            Take::Wait(d) => {
                let at = Instant::now() + d;
                if st.timer_at.is_none_or(|t| t <= Instant::now() || t > at) {
                    st.timer_at = Some(at);
                    myself.send_after(d, || WriterMsg::Drain);
                }
                return;
            }
            Take::Idle => {
                for r in st.flushes.drain(..) {
                    let _ = r.send(());
                }
                return;
            }
        }
    }
    // More is due: come back after the mailbox had its turn.
    let _ = myself.cast(WriterMsg::Drain);
}

fn backoff(st: &mut WriterState, error: String) -> Duration {
    st.failures = st.failures.saturating_add(1);
    let exp = st.failures.saturating_sub(1).min(16);
    let delay = st
        .shared
        .retry_base
        .saturating_mul(1u32 << exp)
        .min(st.shared.retry_max);
    metrics::counter!("cadre_activity_flush_failures_total").increment(1);
    tracing::warn!(%error, failures = st.failures, retry_in_ms = delay.as_millis() as u64,
        "activity flush failed; the batch stays queued and is retried");
    delay
}

/// Writes one flight, publishes it, answers its producers.
async fn write(shared: &Shared, flight: &Arc<Flight>) -> Result<(), String> {
    let spool = &shared.spool;
    let start = Instant::now();
    let now_ms = super::now_ms();
    spool.flush_started.store(now_ms.max(1), Ordering::Release);
    let rows: Vec<_> = flight.rows.iter().collect();
    let result = shared
        .store
        .tables()
        .write_activity(flight.id, &rows, now_ms)
        .await;
    spool.flush_started.store(0, Ordering::Release);
    let flushed = match result {
        Ok(f) => f,
        Err(e) => {
            spool.failing.store(true, Ordering::Release);
            return Err(e.to_string());
        }
    };
    spool.failing.store(false, Ordering::Release);
    metrics::histogram!("cadre_activity_flush_seconds").record(start.elapsed().as_secs_f64());
    metrics::histogram!("cadre_activity_flush_rows").record(flight.rows.len() as f64);
    if !flushed.replayed {
        metrics::counter!("cadre_activity_rows_written_total").increment(flight.rows.len() as u64);
    }
    let mut org: Option<(OrgId, bool)> = None;
    for (id, row) in (flushed.first_id..).zip(flight.rows.iter()) {
        let watched = match &org {
            Some((o, w)) if o.as_str() == row.org_id => *w,
            _ => {
                let o = OrgId(row.org_id.clone());
                let w = shared.hub.is_watched(&o);
                org = Some((o, w));
                w
            }
        };
        if watched && let Some((o, _)) = &org {
            shared.hub.publish(o, StreamEvent::of(id, row));
        }
    }
    flight.acknowledge(flushed.first_id);
    spool.landed(flight);
    Ok(())
}

/// Keeps one writer alive: a writer that dies (kill, panic) is replaced at
/// once and the replacement re-flushes what was in flight.
pub struct WriterSupervisor;

/// Messages of the supervisor.
pub enum SupervisorMsg {
    /// Start a writer (after a failed restart).
    Respawn,
}

/// The supervisor's state.
pub struct SupervisorState {
    shared: Arc<Shared>,
    restarts: u32,
}

async fn spawn_writer(
    myself: &ActorRef<SupervisorMsg>,
    shared: &Arc<Shared>,
) -> Result<(), ractor::SpawnErr> {
    let (writer, _) =
        Actor::spawn_linked(None, ActivityWriter, shared.clone(), myself.get_cell()).await?;
    *shared.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
    Ok(())
}

impl Actor for WriterSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        shared: Arc<Shared>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        spawn_writer(&myself, &shared).await?;
        Ok(SupervisorState {
            shared,
            restarts: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Respawn => restart(&myself, st).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        evt: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let why = match evt {
            SupervisionEvent::ActorTerminated(_, _, reason) => reason.unwrap_or_default(),
            SupervisionEvent::ActorFailed(_, err) => err.to_string(),
            _ => return Ok(()),
        };
        tracing::warn!(%why, "activity writer exited; starting a new one");
        restart(&myself, st).await;
        Ok(())
    }
}

async fn restart(myself: &ActorRef<SupervisorMsg>, st: &mut SupervisorState) {
    metrics::counter!("cadre_actor_restarts_total", "actor" => "activity_writer").increment(1);
    st.restarts = st.restarts.saturating_add(1);
    *st.shared.writer.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if let Err(e) = spawn_writer(myself, &st.shared).await {
        tracing::error!(error = %e, "activity writer restart failed; retrying");
        myself.send_after(st.shared.retry_max, || SupervisorMsg::Respawn);
    }
}
