//! What every handler can reach: the actor handle, the store's read API,
//! token keys, configuration and the metrics handle. No mutable state.

use crate::auth::JwtKeys;
use crate::config::Config;
use crate::store::Db;
use cadre_actors::Cadre;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;

/// Shared handler state: one pointer, so the clones axum makes per request
/// and per extractor cost one atomic increment (a struct of a dozen `Arc`s
/// showed up at 3 % of a profile of small requests).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Wraps the parts.
    pub fn new(parts: Shared) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    /// The actor tree (all writes go through it).
    pub cadre: Cadre,
    /// Read API for historical reads and login.
    pub store: Arc<Db>,
    /// Access-token keys.
    pub jwt: Arc<JwtKeys>,
    /// Configuration.
    pub config: Arc<Config>,
    /// Prometheus renderer.
    pub metrics: PrometheusHandle,
    /// The identity actor and the session directory.
    pub identity: crate::identity::Identity,
    /// The activity pipeline (queue, writer, live broadcasts).
    pub activity: crate::activity::Activity,
    /// Rate limiters.
    pub limiters: Arc<super::guard::Limiters>,
    /// The scheduler (cron tasks).
    pub scheduler: crate::schedule::Scheduler,
    /// Knowledge bases and memories (their writer and the search index).
    pub knowledge: crate::knowledge::Knowledge,
    /// URL of the runtime endpoint as runtimes reach it (generated configs).
    pub connect_url: String,
    /// Seals organization secrets before they reach the approval actor.
    pub sealer: crate::secrets::Sealer,
    /// Becomes `true` when the server shuts down: long-lived connections
    /// (runtime WebSockets) close so their peers reconnect to the next server.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}
