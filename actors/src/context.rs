//! Settings and the shared context every actor of the tree receives.
//!
//! The context holds the ports and read-only configuration; it holds no agent
//! state (that lives in each actor).

use crate::budget::Pricing;
use crate::events::Event;
use crate::ports::{Clock, Deployer, Secrets, Store};
use crate::registry::Registry;
use crate::restart::Backoff;
use crate::tenancy::Tenancy;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Runtime knobs of the actor tree (from `[health]`, `[supervisor]` and
/// `[actors]` in the configuration).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Default probe interval.
    pub health_interval: Duration,
    /// Default consecutive failures before auto-recovery.
    pub failure_threshold: u32,
    /// How long a starting runtime has to say hello.
    pub start_timeout: Duration,
    /// Back-off between auto-recoveries.
    pub recovery_backoff: Backoff,
    /// Healthy time after which the back-off and the restart limit reset.
    pub recovery_reset_after: Duration,
    /// Auto-recoveries (without a reset) before the agent goes to `error`.
    pub max_recoveries: u32,
    /// Supervisor: restarts of one child allowed per window.
    pub supervisor_max_restarts: u32,
    /// Supervisor: the window.
    pub supervisor_window: Duration,
    /// Supervisor: back-off between restarts after the first (immediate) one.
    pub supervisor_backoff: Backoff,
    /// Timeout of every actor call.
    pub call_timeout: Duration,
    /// Requests that may be queued or in process per actor.
    pub mailbox_capacity: usize,
    /// How long a request waits for a mailbox slot before `overloaded`.
    pub mailbox_wait: Duration,
    /// A model-call reservation never settled is released after this long.
    pub reservation_ttl: Duration,
    /// Unfinished tasks an agent may have (queued, running or waiting); a
    /// new task beyond them is refused with `queue_full`.
    pub max_open_tasks: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            health_interval: Duration::from_secs(30),
            failure_threshold: 5,
            start_timeout: Duration::from_secs(60),
            recovery_backoff: Backoff {
                base: Duration::from_secs(10),
                max: Duration::from_secs(300),
            },
            recovery_reset_after: Duration::from_secs(600),
            max_recoveries: 5,
            supervisor_max_restarts: 5,
            supervisor_window: Duration::from_secs(10),
            supervisor_backoff: Backoff {
                base: Duration::from_millis(10),
                max: Duration::from_secs(1),
            },
            call_timeout: Duration::from_secs(5),
            mailbox_capacity: 64,
            mailbox_wait: Duration::from_secs(2),
            reservation_ttl: Duration::from_secs(600),
            max_open_tasks: 100,
        }
    }
}

impl Settings {
    /// The runtime's heartbeat interval for a probe interval: half of it, between
    /// 10 ms and 10 s, so that a probe always has fresh heartbeats to look at.
    pub fn heartbeat_interval(probe_interval: Duration) -> Duration {
        (probe_interval / 2).clamp(Duration::from_millis(10), Duration::from_secs(10))
    }

    /// A runtime whose last heartbeat is older than this is unhealthy.
    pub fn stale_after(probe_interval: Duration) -> Duration {
        Settings::heartbeat_interval(probe_interval) * 3
    }
}

/// Ports and configuration shared by the whole tree.
pub struct Ctx {
    /// Durable store.
    pub store: Arc<dyn Store>,
    /// Deployment targets.
    pub deployer: Arc<dyn Deployer>,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// Token generation/hashing.
    pub secrets: Arc<dyn Secrets>,
    /// Pricing table.
    pub pricing: Arc<Pricing>,
    /// Knobs.
    pub settings: Settings,
    /// Live events for streams.
    pub events: broadcast::Sender<Arc<Event>>,
    /// Lookups (org, agent) → actor.
    pub registry: Arc<Registry>,
    /// Organizations' limits and suspension.
    pub tenancy: Arc<Tenancy>,
    /// Catalog, profiles, policies, grants and kill switches.
    pub gov: Arc<crate::governance::Governance>,
    /// Persistence of approvals, governance documents, grants and switches.
    pub gov_store: Arc<dyn crate::ports::GovStore>,
    /// Persistence of tasks and their steps.
    pub tasks: Arc<dyn crate::task::TaskStore>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
