//! Wiring: open and migrate the store, bootstrap the first owner, start the
//! actor tree, bind and serve, and shut down in order (stop accepting, stop
//! the actors, close the database).

use crate::auth::{AwsLcSecrets, JwtKeys};
use crate::config::Config;
use crate::deploy::LocalDeployer;
use crate::http::state::AppState;
use crate::store::{Db, Durability};
use anyhow::Context;
use cadre_actors::domain::DeployTarget;
use cadre_actors::ports::{Clock, SystemClock};
use cadre_actors::{Cadre, Ctx};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot, watch};
use tokio::task::JoinHandle;

/// A running control plane.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The separate metrics listener's address (`metrics.listen`), if any.
    pub metrics_addr: Option<SocketAddr>,
    /// The actor tree.
    pub cadre: Cadre,
    /// The store.
    pub store: Arc<Db>,
    /// The identity actor.
    pub identity: crate::identity::Identity,
    /// The activity pipeline.
    pub activity: crate::activity::Activity,
    /// Knowledge bases and memories.
    pub knowledge: crate::knowledge::Knowledge,
    /// Every `/api/v1` route with its declared action (for the matrix test).
    pub routes: Vec<crate::http::guard::RouteSpec>,
    stop: oneshot::Sender<()>,
    bridge: JoinHandle<()>,
    retention: JoinHandle<()>,
    audit_bridge: JoinHandle<()>,
    webhook: Option<JoinHandle<()>>,
    docker_watch: JoinHandle<()>,
    closing: watch::Sender<bool>,
    scheduler: crate::schedule::Scheduler,
    knowledge_writer: JoinHandle<()>,
    purge: JoinHandle<()>,
    server: JoinHandle<std::io::Result<()>>,
    metrics_server: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Stops accepting requests, drains them, stops the actors and closes the store.
    pub async fn shutdown(self) {
        let _ = self.closing.send(true);
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server error during shutdown"),
            Err(_) => tracing::warn!("requests still running after 10 s; shutting down anyway"),
            _ => {}
        }
        if let Some(m) = self.metrics_server {
            let _ = tokio::time::timeout(Duration::from_secs(10), m).await;
        }
        self.scheduler.stop();
        self.cadre.shutdown().await;
        // Every change the writer answered is committed; one it had not
        // answered yet is finished on the next start (its rows are pending).
        self.purge.abort();
        self.knowledge_writer.abort();
        let _ = self.knowledge_writer.await;
        // The in-process vector graphs are kept for the next start.
        if let Err(e) = self.knowledge.save_vectors().await {
            tracing::warn!(error = %e, "vector snapshot not written at shutdown; the next start rebuilds from the rows");
        }
        // The actors' last events reach the queue before it closes.
        self.bridge.abort();
        self.retention.abort();
        self.audit_bridge.abort();
        self.docker_watch.abort();
        if let Some(w) = self.webhook {
            w.abort();
        }
        self.activity.shutdown(Duration::from_secs(10)).await;
        self.identity.stop();
        self.store.close().await;
    }

    /// Waits until the server stops by itself (it only does on error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        (&mut self.server)
            .await
            .context("server task")?
            .context("server")
    }
}

/// The process-wide Prometheus recorder (installed once; tests start many apps).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Real histograms (buckets), so Prometheus can aggregate them and
            // compute any quantile; the buckets are constants, so the
            // builder cannot refuse them.
            use metrics_exporter_prometheus::Matcher;
            const SECONDS: [f64; 14] = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            const ROWS: [f64; 10] = [
                1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("cadre_activity_flush_rows".into()),
                        &ROWS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full("cadre_store_batch_size".into()), &ROWS)
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Gauges that stay at 0 until something happens are reported from the
/// start, so a (re)started process shows every gauge of docs/metrics.md;
/// `increment(0)` leaves a value another app of this process set alone.
fn announce_gauges() {
    for transport in ["sse", "websocket"] {
        metrics::gauge!("cadre_stream_clients", "transport" => transport).increment(0.0);
    }
    for actor in ["agent", "tenant", "approvals"] {
        metrics::gauge!("cadre_mailbox_inflight", "actor" => actor).increment(0.0);
    }
    for gauge in [
        "cadre_store_write_queue",
        "cadre_activity_queue_rows",
        "cadre_agents_live",
    ] {
        metrics::gauge!(gauge).increment(0.0);
    }
}

/// Opens listeners for runtimes on addresses of this host (a container
/// network's gateway), once per address, serving only their connect route
/// until `closing`: on the server's own port when it is free there, else on
/// any.
fn runtime_door(
    state: AppState,
    port: u16,
    closing: watch::Receiver<bool>,
) -> crate::deploy::docker::RuntimeDoor {
    let open: Arc<tokio::sync::Mutex<std::collections::HashMap<std::net::IpAddr, SocketAddr>>> =
        Arc::default();
    Arc::new(move |ip| {
        let (state, open, mut closing) = (state.clone(), open.clone(), closing.clone());
        Box::pin(async move {
            let mut open = open.lock().await;
            if let Some(addr) = open.get(&ip) {
                return Ok(*addr);
            }
            let listener = match tokio::net::TcpListener::bind((ip, port)).await {
                Ok(l) => l,
                Err(_) => tokio::net::TcpListener::bind((ip, 0))
                    .await
                    .map_err(|e| e.to_string())?,
            };
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let router = crate::http::runtime_router(state);
            tokio::spawn(async move {
                let served = axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move {
                    let _ = closing.wait_for(|c| *c).await;
                })
                .await;
                if let Err(e) = served {
                    tracing::warn!(%addr, error = %e, "the runtimes' listener stopped");
                }
            });
            tracing::info!(%addr, "listening for runtimes in containers");
            open.insert(ip, addr);
            Ok(addr)
        })
    })
}

/// Opens the store `database.url` names (SQLite in the data directory by
/// default, or a PostgreSQL or MySQL/MariaDB server) and applies migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Db> {
    crate::files::secure_data_dir(&config.data_dir, config.sqlite_file().as_deref())
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let durability = if config.database.synchronous == "full" {
        Durability::Full
    } else {
        Durability::Normal
    };
    let url = config.database_url();
    let store = Db::open(
        &url,
        durability,
        config.database.read_connections,
        config.database.server_connections,
    )
    .await
    .with_context(|| format!("opening database {}", crate::store::backend::redact(&url)))?;
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

/// On an empty database: creates the default organization and its owner.
async fn bootstrap(store: &Db, config: &Config) -> anyhow::Result<()> {
    if store.tables().org_count().await? > 0 {
        return Ok(());
    }
    let email = config.auth.bootstrap_email.trim().to_string();
    let (password, generated) = if config.auth.bootstrap_password.is_empty() {
        (crate::auth::random_text::<18>(), true)
    } else {
        (config.auth.bootstrap_password.clone(), false)
    };
    let hash = {
        let password = password.clone();
        tokio::task::spawn_blocking(move || crate::auth::hash_password(&password)).await??
    };
    let now = SystemClock.now_ms();
    let org = crate::store::OrgRow {
        id: uuid::Uuid::now_v7().to_string(),
        name: "default".into(),
        slug: "default".into(),
        plan: config.plans.bootstrap_plan.clone(),
        limits: "{}".into(),
        suspended_at: None,
        created_at: now,
        activity_retention_days: None,
        timezone: "UTC".into(),
        budget_period: "monthly".into(),
        instructions: None,
        delegation: "chart".into(),
    };
    let user_id = uuid::Uuid::now_v7().to_string();
    let owner = crate::store::NewUser {
        id: &user_id,
        org_id: &org.id,
        email: &email.to_lowercase(),
        name: "Owner",
        role: "owner",
        password_hash: &hash,
        instance_admin: true,
        now,
    };
    let audit = cadre_actors::audit::AuditEntry::new(
        &cadre_actors::domain::OrgId(org.id.clone()),
        &cadre_actors::domain::Who::system(),
        "org.create",
        format!("org:{}", org.id),
        serde_json::json!({ "bootstrap": true, "owner": email }),
        now,
    );
    store.tables().create_org(&org, &owner, &audit).await?;
    if generated {
        // Shown once, where Cadre's own messages go (stderr), never stored.
        crate::config::notice(
            &config.log,
            &format!(
                "created organization \"default\" with owner {email}; generated password (shown once): {password}"
            ),
        );
    } else {
        crate::config::notice(
            &config.log,
            &format!("created organization \"default\" with owner {email}"),
        );
    }
    Ok(())
}

/// Starts the control plane.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    // The recorder first: nothing recorded before it is installed is kept.
    let _ = prometheus();
    announce_gauges();
    let store = Arc::new(open_store(&config).await?);
    bootstrap(&store, &config)
        .await
        .context("bootstrapping the first owner")?;
    let sealer = {
        // One stored secret per organization: the key must open them.
        let stored: Vec<(String, String)> = store
            .tables()
            .secret_samples()
            .await
            .context("reading stored secrets")?
            .into_iter()
            .filter_map(|(org, body)| {
                let doc: cadre_actors::governance::SecretDoc = serde_json::from_str(&body).ok()?;
                Some((org, doc.sealed))
            })
            .collect();
        crate::secrets::Sealer::load_for(&config.data_dir, &stored, config.secrets.allow_unreadable)
            .map_err(anyhow::Error::msg)
            .context("loading the secrets key")?
    };
    let secret = crate::auth::load_or_create_secret(&config.auth.jwt_secret, &config.data_dir)?;
    let jwt = Arc::new(JwtKeys::new(&secret, config.auth.token_ttl_secs));

    let listener = tokio::net::TcpListener::bind(config.listen_addrs().as_slice())
        .await
        .with_context(|| format!("binding {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let connect_url = if config.server.public_url.is_empty() {
        let host = if addr.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        } else {
            addr
        };
        format!("ws://{host}/api/v1/runtime/connect")
    } else {
        let base = config.server.public_url.trim_end_matches('/');
        let ws = base
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        format!("{ws}/api/v1/runtime/connect")
    };
    let runtime_bin = if config.deploy.local.runtime_bin.is_empty() {
        std::env::current_exe().context("locating this binary for the local runtime")?
    } else {
        PathBuf::from(&config.deploy.local.runtime_bin)
    };
    let llm = crate::deploy::LlmSettings::from(&config.llm);
    let llm_key = (!config.llm.api_key_env.is_empty())
        .then(|| std::env::var(&config.llm.api_key_env).ok())
        .flatten()
        .filter(|k| !k.is_empty());
    if !config.llm.api_key_env.is_empty() && llm_key.is_none() {
        tracing::warn!(
            variable = %config.llm.api_key_env,
            "llm.api_key_env names {}, which is not set: tasks of agents without a key of \
             their own (llm.api_key_secret) fail with no_model_provider until it is set and \
             Cadre restarted",
            config.llm.api_key_env
        );
    }
    // Governance: the catalog, then every kill switch and live grant, before
    // any actor can be asked about a tool call.
    let gov = Arc::new(cadre_actors::governance::Governance::new(
        config.governance.catalog()?,
        config.governance.default_policy.clone(),
        config.governance.default_profile.clone(),
    ));
    {
        let gov_store = store.gov();
        for scope in gov_store.halts().await.context("loading kill switches")? {
            gov.set_halt(&scope, true);
        }
        for grant in gov_store
            .live_grants(SystemClock.now_ms())
            .await
            .context("loading grants")?
        {
            gov.add_grant(grant);
        }
    }
    // Remote targets read their login key or API token when they need it.
    let org_secrets: crate::deploy::SecretSource = {
        let gov = gov.clone();
        Arc::new(move |org: &str, name: &str| {
            gov.org(&cadre_actors::domain::OrgId(org.to_string()))
                .docs
                .secrets
                .get(name)
                .map(|s| s.sealed.clone())
        })
    };
    let docker = Arc::new(
        crate::deploy::DockerDeployer::new(config.deploy.docker.clone(), &connect_url, addr)
            .with_llm(llm.clone(), llm_key.clone())
            .with_sealer(sealer.clone()),
    );
    let local = Arc::new(
        LocalDeployer::new(
            config.data_dir.join("agents"),
            runtime_bin,
            connect_url.clone(),
            Duration::from_millis(config.deploy.local.stop_grace_ms),
        )
        .with_script_dir(
            (!config.deploy.local.script_dir.is_empty())
                .then(|| PathBuf::from(&config.deploy.local.script_dir)),
        )
        .with_llm(llm.clone(), llm_key.clone())
        .with_sealer(sealer.clone()),
    );
    let ssh = crate::deploy::ssh::SshDeployer::new(
        config.deploy.ssh.clone(),
        &connect_url,
        if config.deploy.ssh.runtime_bin.is_empty() {
            std::env::current_exe().context("locating this binary for the ssh runtime")?
        } else {
            PathBuf::from(&config.deploy.ssh.runtime_bin)
        },
        if config.deploy.ssh.known_hosts.is_empty() {
            config.data_dir.join("ssh_known_hosts")
        } else {
            PathBuf::from(&config.deploy.ssh.known_hosts)
        },
        org_secrets.clone(),
    )
    .with_llm(llm.clone(), llm_key.clone())
    .with_sealer(sealer.clone());
    let llm_for = || Some((llm.clone(), llm_key.clone()));
    let fly = crate::deploy::fly::FlyDeployer::new(
        config.deploy.fly.clone(),
        &connect_url,
        org_secrets.clone(),
        Some(sealer.clone()),
        llm_for(),
    )
    .map_err(anyhow::Error::msg)?;
    let railway = crate::deploy::railway::RailwayDeployer::new(
        config.deploy.railway.clone(),
        &connect_url,
        org_secrets.clone(),
        Some(sealer.clone()),
        llm_for(),
    )
    .map_err(anyhow::Error::msg)?;
    let deployer = crate::deploy::Targets::new(local.clone(), docker.clone())
        .with(DeployTarget::Ssh, Arc::new(ssh))
        .with(DeployTarget::Fly, Arc::new(fly))
        .with(DeployTarget::Railway, Arc::new(railway));
    let (events, _) = broadcast::channel(4096);
    let activity = crate::activity::Activity::start(store.clone(), &config.activity)
        .await
        .context("starting the activity writer")?;
    // Subscribed before the tree starts, so hydration's events are recorded too.
    let bridge = crate::activity::spawn_bridge(activity.clone(), events.subscribe());
    crate::init_tls();
    let webhook = crate::webhook::spawn(&config.governance.webhook, events.subscribe());
    let retention = crate::activity::spawn_retention(store.clone(), &config.activity);
    let audit_bridge = crate::activity::spawn_audit_bridge(
        store.clone(),
        activity.clone(),
        Duration::from_millis(200),
    );
    let tenancy = Arc::new(cadre_actors::tenancy::Tenancy::default());
    let directory = Arc::new(crate::identity::Directory::new(
        config.plans.clone(),
        tenancy.clone(),
    ));
    let access_ttl_ms =
        i64::try_from(config.auth.token_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    directory
        .load(&store, SystemClock.now_ms(), access_ttl_ms)
        .await
        .context("loading users, keys and organizations")?;
    // Each organization's spend in its current period (its own kind and
    // time zone, published by the directory), so budgets hold across restarts.
    let now = SystemClock.now_ms();
    for (org, period, tokens, cost) in store
        .tables()
        .org_spend()
        .await
        .context("loading organizations' spend")?
    {
        let org = cadre_actors::domain::OrgId(org);
        let current = tenancy.period(&org, now);
        if period == current.to_string() {
            tenancy.load_spend(
                &org,
                cadre_actors::budget::Usage::empty(current).add(tokens, cost),
            );
        }
    }
    let identity = crate::identity::Identity::start(
        store.clone(),
        directory,
        config.clone(),
        Arc::new(AwsLcSecrets),
    )
    .await?;
    let limiters = Arc::new(crate::http::guard::Limiters::new(&config.http));
    {
        // Idle rate-limit buckets are dropped once a minute (bounded memory).
        let limiters = Arc::downgrade(&limiters);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                match limiters.upgrade() {
                    Some(l) => l.shrink(),
                    None => return,
                }
            }
        });
    }
    let ctx = Arc::new(Ctx {
        store: store.store(),
        deployer: Arc::new(deployer),
        clock: Arc::new(SystemClock),
        secrets: Arc::new(AwsLcSecrets),
        pricing: Arc::new(config.pricing.clone()),
        settings: config.settings(),
        events,
        registry: Default::default(),
        tenancy,
        gov,
        gov_store: store.gov(),
        tasks: store.tasks(),
    });
    let cadre = Cadre::start(ctx).await.context("starting the actor tree")?;
    // A runtime that exits (a local child, a container that dies) is
    // checked at once and recovered at once, not after its probes fail.
    let docker_watch = {
        let cadre = cadre.clone();
        docker.watch(move |org, agent| {
            let org = cadre_actors::domain::OrgId(org.to_string());
            let agent = cadre_actors::domain::AgentId(agent.to_string());
            cadre.runtime_exited(&org, &agent);
        })
    };
    {
        let cadre = cadre.clone();
        local.on_exit(Arc::new(move |agent: &str| {
            let agent = cadre_actors::domain::AgentId(agent.to_string());
            if let Some(org) = cadre.org_of(&agent) {
                cadre.runtime_exited(&org, &agent);
            }
        }));
    }
    let scheduler = crate::schedule::Scheduler::start(store.clone(), cadre.clone())
        .await
        .context("starting the scheduler")?;
    let chunker = crate::knowledge::chunk::Chunker::new(
        config.knowledge.chunk_tokens,
        config.knowledge.overlap_tokens,
    )
    .map_err(anyhow::Error::msg)?;
    let embedder = {
        let e = &config.knowledge.embeddings;
        if e.base_url.is_empty() {
            None
        } else {
            let key = (!e.api_key_env.is_empty())
                .then(|| std::env::var(&e.api_key_env).ok())
                .flatten();
            Some(
                crate::knowledge::vector::Embedder::new(
                    &e.base_url,
                    &e.model,
                    key,
                    Duration::from_secs(e.timeout_seconds.max(1)),
                )
                .map_err(anyhow::Error::msg)
                .context("the embeddings client")?,
            )
        }
    };
    let (knowledge, knowledge_writer) = crate::knowledge::Knowledge::start(
        store.clone(),
        &config.data_dir.join("knowledge"),
        chunker,
        embedder,
        crate::knowledge::VectorOptions {
            index: config.knowledge.vector_index,
            snapshot_every: Duration::from_secs(config.knowledge.vector_snapshot_seconds.max(1)),
        },
    )
    .await
    .context("starting the knowledge index")?;
    let purge = crate::knowledge::spawn_purge(
        store.clone(),
        knowledge.clone(),
        Duration::from_secs(config.knowledge.purge_interval_seconds.max(1)),
    );
    let (closing, shutdown) = watch::channel(false);
    let state = AppState::new(crate::http::state::Shared {
        knowledge: knowledge.clone(),
        scheduler: scheduler.clone(),
        connect_url,
        sealer,
        shutdown,
        cadre: cadre.clone(),
        store: store.clone(),
        jwt,
        config: config.clone(),
        metrics: prometheus(),
        identity: identity.clone(),
        limiters,
        activity: activity.clone(),
    });
    docker.with_door(runtime_door(
        state.clone(),
        addr.port(),
        closing.subscribe(),
    ));
    let routes = crate::http::api_routes(&state).specs().to_vec();
    let (metrics_addr, metrics_server) = if config.metrics.listen.is_empty() {
        (None, None)
    } else {
        let listener = tokio::net::TcpListener::bind(&config.metrics.listen)
            .await
            .with_context(|| format!("binding metrics.listen {}", config.metrics.listen))?;
        let addr = listener.local_addr()?;
        let router = crate::http::metrics_router(state.clone());
        let mut closed = closing.subscribe();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = closed.wait_for(|c| *c).await;
                })
                .await
        });
        tracing::info!(%addr, "metrics listening");
        (Some(addr), Some(server))
    };
    let router = crate::http::router(state);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        })
        .await
    });
    tracing::info!(%addr, "cadre listening");
    Ok(Running {
        addr,
        metrics_addr,
        cadre,
        store,
        identity,
        activity,
        knowledge,
        routes,
        stop,
        bridge,
        retention,
        audit_bridge,
        webhook,
        docker_watch,
        closing,
        scheduler,
        knowledge_writer,
        purge,
        server,
        metrics_server,
    })
}
