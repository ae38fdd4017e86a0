//! The queue in front of the activity writer, kept outside the writer actor.
//!
//! Producers reserve room (one permit per row; when the queue is full they
//! wait, which is the back-pressure), push their rows with a reply channel,
//! and wait for the commit. The writer takes a batch into the *in-flight*
//! slot, which also lives here: if the writer is killed mid-flush, its
//! replacement finds the batch in the slot and flushes it again under the
//! same flush id, which the store recognises if the first attempt had
//! committed. So a killed writer loses nothing and writes nothing twice, and
//! every producer gets exactly one answer.

use crate::store::NewActivity;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};

/// When a batch is due.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Flush at this many rows.
    pub rows: usize,
    /// Flush at this many bytes.
    pub bytes: usize,
    /// Flush when the oldest row waited this long.
    pub delay: Duration,
    /// Rows queued at most.
    pub capacity: usize,
}

/// Room for rows in the queue (released when they are committed).
#[derive(Debug)]
pub struct Room {
    permit: OwnedSemaphorePermit,
    rows: usize,
    waited: Duration,
}

impl Room {
    /// How long the reservation waited for room.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// Why rows were not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    /// More rows in one batch than the queue can ever hold.
    #[error("a batch of {0} rows is larger than the activity queue ({1} rows)")]
    TooLarge(usize, usize),
    /// The pipeline is shutting down.
    #[error("the activity pipeline is shutting down")]
    Closed,
}

struct Waiter {
    rows: usize,
    done: oneshot::Sender<i64>,
    _room: OwnedSemaphorePermit,
}

struct Pending {
    rows: Vec<NewActivity>,
    bytes: usize,
    since: Instant,
    waiter: Waiter,
}

/// A batch being flushed: its rows and who waits for them.
pub struct Flight {
    /// The flush id (the store's idempotency key for this batch).
    pub id: i64,
    /// The rows, in queue order.
    pub rows: Vec<NewActivity>,
    waiters: Mutex<Vec<Waiter>>,
}

impl Flight {
    /// Answers every producer of this batch: their rows are committed with
    /// ids from `first_id` on, in order.
    pub fn acknowledge(&self, first_id: i64) {
        let mut next = first_id;
        for w in lock(&self.waiters).drain(..) {
            let _ = w.done.send(next);
            next += w.rows as i64;
        }
    }
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Pending>,
    rows: usize,
    bytes: usize,
}

/// What the writer should do next.
pub enum Take {
    /// Flush this batch.
    Flush(Arc<Flight>),
    /// Nothing is due yet; look again after this long.
    Wait(Duration),
    /// The queue is empty.
    Idle,
}

/// The shared queue and in-flight slot.
pub struct Spool {
    queue: Mutex<Queue>,
    inflight: Mutex<Option<Arc<Flight>>>,
    room: Arc<Semaphore>,
    /// Signalled on every push.
    pub wake: Notify,
    policy: Policy,
    flush_seq: AtomicU64,
    closed: AtomicBool,
    /// Unix ms the running flush started (0: none).
    pub flush_started: AtomicI64,
    /// Whether the last flush failed.
    pub failing: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Spool {
    /// An empty spool.
    pub fn new(policy: Policy) -> Spool {
        Spool {
            queue: Mutex::new(Queue::default()),
            inflight: Mutex::new(None),
            room: Arc::new(Semaphore::new(policy.capacity)),
            wake: Notify::new(),
            policy,
            flush_seq: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            flush_started: AtomicI64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    fn check(&self, rows: usize) -> Result<u32, SpoolError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SpoolError::Closed);
        }
        if rows > self.policy.capacity {
            return Err(SpoolError::TooLarge(rows, self.policy.capacity));
        }
        u32::try_from(rows).map_err(|_| SpoolError::TooLarge(rows, self.policy.capacity))
    }

    /// Room for `rows` if there is some now.
    pub fn try_reserve(&self, rows: usize) -> Result<Option<Room>, SpoolError> {
        let n = self.check(rows)?;
        Ok(self
            .room
            .clone()
            .try_acquire_many_owned(n)
            .ok()
            .map(|permit| Room {
                permit,
                rows,
                waited: Duration::ZERO,
            }))
    }

    /// Room for `rows`, waiting for the writer to make some (back-pressure).
    pub async fn reserve(&self, rows: usize) -> Result<Room, SpoolError> {
        if let Some(room) = self.try_reserve(rows)? {
            return Ok(room);
        }
        let n = self.check(rows)?;
        let start = Instant::now();
        metrics::counter!("cadre_activity_backpressure_total").increment(1);
        let permit = self
            .room
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| SpoolError::Closed)?;
        Ok(Room {
            permit,
            rows,
            waited: start.elapsed(),
        })
    }

    /// Queues `rows` in reserved room; the answer is the id of the first
    /// row once they are committed.
    pub fn push(&self, room: Room, rows: Vec<NewActivity>) -> oneshot::Receiver<i64> {
        let (done, answer) = oneshot::channel();
        if rows.is_empty() {
            let _ = done.send(0);
            return answer;
        }
        metrics::histogram!("cadre_activity_queue_wait_seconds").record(room.waited.as_secs_f64());
        let bytes = rows.iter().map(NewActivity::weight).sum();
        debug_assert_eq!(room.rows, rows.len());
        let mut q = lock(&self.queue);
        q.rows += rows.len();
        q.bytes += bytes;
        q.items.push_back(Pending {
            waiter: Waiter {
                rows: rows.len(),
                done,
                _room: room.permit,
            },
            rows,
            bytes,
            since: Instant::now(),
        });
        metrics::gauge!("cadre_activity_queue_rows").set(q.rows as f64);
        drop(q);
        self.wake.notify_one();
        answer
    }

    /// Queues `rows`, waiting for room, then for their commit; the answer
    /// is the id of the first row.
    pub async fn submit(&self, rows: Vec<NewActivity>) -> Result<i64, SpoolError> {
        let room = self.reserve(rows.len()).await?;
        self.push(room, rows).await.map_err(|_| SpoolError::Closed)
    }

    /// The next thing to flush (`force`: ignore the size and delay triggers).
    /// A batch left in flight by a failed or killed flush comes first.
    pub fn take(&self, force: bool) -> Take {
        let mut slot = lock(&self.inflight);
        if let Some(f) = slot.as_ref() {
            return Take::Flush(f.clone());
        }
        let mut q = lock(&self.queue);
        let Some(oldest) = q.items.front() else {
            return Take::Idle;
        };
        let age = oldest.since.elapsed();
        let p = self.policy;
        if !force && q.rows < p.rows && q.bytes < p.bytes && age < p.delay {
            return Take::Wait(p.delay - age);
        }
        let mut rows = Vec::new();
        let mut waiters = Vec::new();
        let mut bytes = 0;
        while let Some(item) = q.items.front() {
            if !rows.is_empty() && (rows.len() + item.rows.len() > p.rows || bytes >= p.bytes) {
                break;
            }
            let Some(item) = q.items.pop_front() else {
                break;
            };
            q.rows -= item.rows.len();
            q.bytes -= item.bytes;
            bytes += item.bytes;
            rows.extend(item.rows);
            waiters.push(item.waiter);
        }
        metrics::gauge!("cadre_activity_queue_rows").set(q.rows as f64);
        drop(q);
        let flight = Arc::new(Flight {
            id: self.flush_id(),
            rows,
            waiters: Mutex::new(waiters),
        });
        *slot = Some(flight.clone());
        Take::Flush(flight)
    }

    /// Clears the in-flight slot after `flight` committed.
    pub fn landed(&self, flight: &Arc<Flight>) {
        let mut slot = lock(&self.inflight);
        if slot.as_ref().is_some_and(|f| Arc::ptr_eq(f, flight)) {
            *slot = None;
        }
    }

    /// Unique across restarts: milliseconds since the epoch × 4096 plus a
    /// counter (4096 flushes per millisecond would be needed to collide).
    fn flush_id(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let n = self.flush_seq.fetch_add(1, Ordering::Relaxed) % 4096;
        now * 4096 + n as i64
    }

    /// Rows queued (not yet taken by the writer).
    pub fn queued(&self) -> usize {
        lock(&self.queue).rows
    }

    /// Whether rows are queued or in flight.
    pub fn is_empty(&self) -> bool {
        lock(&self.inflight).is_none() && lock(&self.queue).items.is_empty()
    }

    /// Refuses new rows from now on (queued ones still flush).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize) -> NewActivity {
        NewActivity {
            org_id: "o".into(),
            agent_id: None,
            kind: "k".into(),
            payload: "x".repeat(n),
            at: 0,
            record: None,
        }
    }

    fn spool(rows: usize, capacity: usize) -> Spool {
        Spool::new(Policy {
            rows,
            bytes: 1 << 20,
            delay: Duration::from_secs(3600),
            capacity,
        })
    }

    #[tokio::test]
    async fn batches_by_rows_and_answers_each_producer_with_its_ids() {
        let s = spool(3, 10);
        let a = s.push(s.reserve(2).await.expect("room"), vec![row(1), row(1)]);
        assert!(matches!(s.take(false), Take::Wait(_)), "not due yet");
        let b = s.push(s.reserve(2).await.expect("room"), vec![row(1), row(1)]);
        let Take::Flush(f) = s.take(false) else {
            panic!("due at 3 rows");
        };
        // Whole producer batches only: 2 fit, the next 2 would pass 3.
        assert_eq!(f.rows.len(), 2);
        // Until it lands, the same flight comes back (a retry or a new writer).
        let Take::Flush(again) = s.take(false) else {
            panic!("in flight");
        };
        assert_eq!(again.id, f.id);
        f.acknowledge(10);
        s.landed(&f);
        assert_eq!(a.await.expect("answer"), 10);
        let Take::Flush(g) = s.take(true) else {
            panic!("forced");
        };
        assert_ne!(g.id, f.id);
        g.acknowledge(12);
        s.landed(&g);
        assert_eq!(b.await.expect("answer"), 12);
        assert!(s.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_makes_producers_wait_until_rows_are_committed() {
        let s = Arc::new(spool(100, 4));
        let _first = s.push(
            s.reserve(4).await.expect("room"),
            (0..4).map(|_| row(1)).collect(),
        );
        assert!(s.try_reserve(1).expect("valid").is_none(), "full");
        assert_eq!(s.try_reserve(5).err(), Some(SpoolError::TooLarge(5, 4)));
        let waiting = tokio::spawn({
            let s = s.clone();
            async move { s.reserve(2).await.map(|r| r.rows) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let Take::Flush(f) = s.take(true) else {
            panic!("forced");
        };
        f.acknowledge(1);
        s.landed(&f);
        drop(f);
        assert_eq!(waiting.await.expect("join"), Ok(2));
    }
}
