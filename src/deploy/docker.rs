//! The `docker` target: each agent's runtime as a container on a Docker
//! engine, driven through the Engine API (bollard), never the CLI.
//!
//! One deployment is a container `cadre-<agent id>` and a volume
//! `cadre-<agent id>-workspace` mounted at `/agent`, the runtime's working
//! directory. The container runs with a read-only root filesystem, no
//! capabilities, `no-new-privileges`, as `nobody`, with CPU, memory and
//! process limits and restart policy `no`: Cadre's health loop does the
//! restarting. Its configuration is in the environment (`CADRE_RUNTIME_CONFIG`),
//! so a remote engine works as well as the local one and nothing is written
//! into the image or the volume.
//!
//! Where a containerised runtime dials: `deploy.docker.connect_url` when
//! set; on the host network, the server's own URL; off it, a public URL as
//! it is, or, when the server listens on every interface, the host through
//! `host.docker.internal`. With the shipped defaults (the server on
//! 127.0.0.1, containers on `bridge`) none of these is reachable from a
//! container, so Cadre opens a listener for runtimes (their connect route
//! only) on the network's gateway address, an address of this host that
//! the network's containers reach, and tells them that one
//! ([`DockerDeployer::with_door`]). A deploy that cannot be given a
//! reachable address is refused, saying which setting to change.
//!
//! Every container carries the labels `cadre.managed`, `cadre.org` and
//! `cadre.agent`. [`DockerDeployer::watch`] follows the engine's event
//! stream for those containers, so a container that dies is probed at once
//! instead of at the next health tick.

use super::{LlmSettings, SealedEnv};
use crate::config::DockerDeployConfig;
use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, HostConfig, Mount, MountType, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, LogsOptions, RemoveContainerOptions,
    RemoveVolumeOptions, StopContainerOptions,
};
use cadre_actors::ports::{DeployError, DeployRequest, Deployer, DeploymentStatus};
use dashmap::DashMap;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OnceCell};

/// Seconds an Engine API request may take (image pulls stream longer).
const ENGINE_TIMEOUT_SECS: u64 = 120;
/// Label every container and volume of Cadre's carries.
pub const MANAGED_LABEL: &str = "cadre.managed";

fn err(message: impl Into<String>) -> DeployError {
    DeployError {
        target: "docker",
        message: message.into(),
    }
}

/// The engine's own words for a failed request.
fn engine_message(e: &EngineError) -> String {
    match e {
        EngineError::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} (engine status {status_code})"),
        other => other.to_string(),
    }
}

fn status_of(e: &EngineError) -> Option<u16> {
    match e {
        EngineError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Connects to the engine `cfg` names and agrees on an API version (the
/// engine may be older than the client).
pub async fn connect(cfg: &DockerDeployConfig) -> Result<Docker, String> {
    let host = if cfg.host.is_empty() {
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
    } else {
        cfg.host.clone()
    };
    let version = bollard::API_DEFAULT_VERSION;
    let docker = if let Some(path) = host.strip_prefix("unix://") {
        Docker::connect_with_socket(path, ENGINE_TIMEOUT_SECS, version)
    } else if !cfg.tls_ca.is_empty() {
        crate::init_tls();
        Docker::connect_with_ssl(
            &host,
            std::path::Path::new(&cfg.tls_key),
            std::path::Path::new(&cfg.tls_cert),
            std::path::Path::new(&cfg.tls_ca),
            ENGINE_TIMEOUT_SECS,
            version,
        )
    } else {
        Docker::connect_with_http(&host, ENGINE_TIMEOUT_SECS, version)
    }
    .map_err(|e| format!("engine at {host}: {e}"))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| format!("engine at {host} does not answer: {}", engine_message(&e)))
}

/// Opens (once per address) a listener for runtimes on an address of this
/// host, serving only their connect route; answers where it listens.
pub type RuntimeDoor = Arc<
    dyn Fn(IpAddr) -> futures_util::future::BoxFuture<'static, Result<SocketAddr, String>>
        + Send
        + Sync,
>;

/// The Docker deployer.
pub struct DockerDeployer {
    cfg: DockerDeployConfig,
    engine: OnceCell<Docker>,
    /// Where containers dial when it is known without the engine.
    connect_url: Option<String>,
    /// The server's own connect URL (for messages).
    server_url: String,
    /// Opens a listener on the container network's gateway.
    door: std::sync::OnceLock<RuntimeDoor>,
    /// The URL through the door, once opened.
    door_url: Mutex<Option<String>>,
    llm: Option<(LlmSettings, Option<String>)>,
    sealer: Option<crate::secrets::Sealer>,
    locks: DashMap<String, Arc<Mutex<()>>>,
}

impl std::fmt::Debug for DockerDeployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerDeployer")
            .field("host", &self.cfg.host)
            .finish_non_exhaustive()
    }
}

/// The URL a containerised runtime dials: configured, or the server's own
/// with a loopback host replaced by `host.docker.internal` when the
/// container has its own network (loopback there is the container itself).
pub fn container_connect_url(cfg: &DockerDeployConfig, server_url: &str) -> String {
    if !cfg.connect_url.is_empty() {
        return cfg.connect_url.clone();
    }
    if cfg.network == "host" {
        return server_url.to_string();
    }
    let Some((scheme, rest)) = server_url.split_once("://") else {
        return server_url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let port = authority.rsplit_once(':').map(|(_, p)| p);
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    if matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "0.0.0.0") {
        match port {
            Some(p) => format!("{scheme}://host.docker.internal:{p}{path}"),
            None => format!("{scheme}://host.docker.internal{path}"),
        }
    } else {
        server_url.to_string()
    }
}

/// Whether a URL's host is a loopback address (or `localhost`).
fn loopback_host(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The gateway of a network's first IPv4 subnet: the one the engine names,
/// else the subnet's first address (where the engine puts it; the default
/// `bridge` network names none).
fn gateway_of(network: &bollard::models::NetworkInspect) -> Option<IpAddr> {
    let configs = network.ipam.as_ref()?.config.as_ref()?;
    for c in configs {
        if let Some(g) = c.gateway.as_deref().and_then(|g| g.parse::<IpAddr>().ok())
            && g.is_ipv4()
        {
            return Some(g);
        }
        if let Some(net) = c
            .subnet
            .as_deref()
            .and_then(|s| s.parse::<ipnet::Ipv4Net>().ok())
        {
            return net.hosts().next().map(IpAddr::V4);
        }
    }
    None
}

impl DockerDeployer {
    /// A deployer for the engine `cfg` names (connected on first use, so a
    /// control plane without Docker still starts); its runtimes dial
    /// `server_url` when a container can reach it (see the module's doc),
    /// the server listening on `listen`.
    pub fn new(cfg: DockerDeployConfig, server_url: &str, listen: SocketAddr) -> DockerDeployer {
        let connect_url = if !cfg.connect_url.is_empty() || cfg.network == "host" {
            Some(container_connect_url(&cfg, server_url))
        } else if !loopback_host(server_url) {
            Some(server_url.to_string())
        } else if listen.ip().is_unspecified() {
            Some(container_connect_url(&cfg, server_url))
        } else {
            None
        };
        DockerDeployer {
            connect_url,
            server_url: server_url.to_string(),
            door: std::sync::OnceLock::new(),
            door_url: Mutex::new(None),
            cfg,
            engine: OnceCell::new(),
            llm: None,
            sealer: None,
            locks: DashMap::new(),
        }
    }

    /// How a listener for runtimes is opened on a container network's
    /// gateway, when the server's own address is loopback only (set once,
    /// when the HTTP layer exists).
    pub fn with_door(&self, door: RuntimeDoor) {
        let _ = self.door.set(door);
    }

    /// The URL a container on `cfg.network` dials: known up front, or
    /// through a listener on the network's gateway (opened once).
    async fn reachable_url(&self, docker: &Docker) -> Result<String, DeployError> {
        if let Some(url) = &self.connect_url {
            return Ok(url.clone());
        }
        let mut opened = self.door_url.lock().await;
        if let Some(url) = opened.as_ref() {
            return Ok(url.clone());
        }
        let network = &self.cfg.network;
        let advice = format!(
            "the control plane listens on loopback only ({}), which containers on network \
             {network:?} cannot reach: set deploy.docker.connect_url to a URL they can reach, \
             or server.listen to an address of theirs, or deploy.docker.network = \"host\"",
            self.server_url
        );
        let info = docker
            .inspect_network(
                network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .map_err(|e| {
                err(format!(
                    "{advice} (inspecting the network: {})",
                    engine_message(&e)
                ))
            })?;
        let gateway = gateway_of(&info)
            .ok_or_else(|| err(format!("{advice} (the network names no IPv4 gateway)")))?;
        let door = self
            .door
            .get()
            .ok_or_else(|| err(format!("{advice} (no listener can be opened here)")))?;
        let addr = door(gateway).await.map_err(|e| {
            err(format!(
                "{advice} (listening on the network's gateway {gateway} failed: {e}; a remote \
                 engine's gateway is not an address of this host)"
            ))
        })?;
        let url = format!("ws://{addr}/api/v1/runtime/connect");
        tracing::info!(%network, %url, "containers reach the control plane through its gateway");
        *opened = Some(url.clone());
        Ok(url)
    }

    /// Runtimes call this provider, with this API key.
    pub fn with_llm(mut self, settings: LlmSettings, api_key: Option<String>) -> DockerDeployer {
        self.llm = Some((settings, api_key));
        self
    }

    /// Opens the organization secrets agents name.
    pub fn with_sealer(mut self, sealer: crate::secrets::Sealer) -> DockerDeployer {
        self.sealer = Some(sealer);
        self
    }

    async fn engine(&self) -> Result<&Docker, DeployError> {
        self.engine
            .get_or_try_init(|| connect(&self.cfg))
            .await
            .map_err(err)
    }

    fn lock(&self, name: &str) -> Arc<Mutex<()>> {
        self.locks.entry(name.to_string()).or_default().clone()
    }

    /// Container names are `cadre-<agent id>`; refuse anything else.
    fn checked(name: &str) -> Result<&str, DeployError> {
        let ok = name.strip_prefix("cadre-").is_some_and(|id| {
            !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
        if ok {
            Ok(name)
        } else {
            Err(err(format!("invalid deployment ref {name:?}")))
        }
    }

    fn volume(name: &str) -> String {
        format!("{name}-workspace")
    }

    /// Makes sure the engine has `image`: pulls it when it lacks it and the
    /// policy allows, else says so in the engine's words.
    async fn ensure_image(&self, docker: &Docker, image: &str) -> Result<(), DeployError> {
        let missing = match docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status_of(&e) == Some(404) => engine_message(&e),
            Err(e) => {
                return Err(err(format!(
                    "inspecting image {image:?}: {}",
                    engine_message(&e)
                )));
            }
        };
        if self.cfg.pull == "never" {
            return Err(err(format!(
                "image {image:?} is not on the engine and pulling is off: {missing}"
            )));
        }
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut pull = docker.create_image(Some(options), None, None);
        while let Some(item) = pull.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail {
                        return Err(err(format!(
                            "image {image:?} is not on the engine and pulling it failed: {}",
                            detail.message.unwrap_or_default()
                        )));
                    }
                }
                Err(e) => {
                    return Err(err(format!(
                        "image {image:?} is not on the engine and pulling it failed: {}",
                        engine_message(&e)
                    )));
                }
            }
        }
        Ok(())
    }

    fn container_body(
        &self,
        name: &str,
        req: &DeployRequest,
        env: Vec<String>,
    ) -> ContainerCreateBody {
        let spec = &req.runtime.docker;
        let image = spec.image.clone().unwrap_or_else(|| self.cfg.image.clone());
        let cpus = spec.cpus.unwrap_or(self.cfg.cpus);
        let memory_mb = spec.memory_mb.unwrap_or(self.cfg.memory_mb);
        let labels = HashMap::from([
            (MANAGED_LABEL.to_string(), "true".to_string()),
            ("cadre.org".to_string(), req.org_id.to_string()),
            ("cadre.agent".to_string(), req.agent_id.to_string()),
        ]);
        let own_network = self.cfg.network != "host";
        ContainerCreateBody {
            image: Some(image),
            entrypoint: Some(vec!["/cadre".into()]),
            cmd: Some(vec!["runtime".into()]),
            env: Some(env),
            labels: Some(labels),
            working_dir: Some("/agent".into()),
            user: Some(format!("{0}:{0}", super::image::RUNTIME_UID)),
            host_config: Some(HostConfig {
                mounts: Some(vec![Mount {
                    target: Some("/agent".into()),
                    source: Some(Self::volume(name)),
                    typ: Some(MountType::VOLUME),
                    read_only: Some(false),
                    ..Default::default()
                }]),
                tmpfs: Some(HashMap::from([(
                    "/tmp".to_string(),
                    "rw,noexec,nosuid,size=64m".to_string(),
                )])),
                readonly_rootfs: Some(true),
                privileged: Some(false),
                cap_drop: Some(vec!["ALL".into()]),
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                nano_cpus: Some((cpus * 1e9) as i64),
                memory: Some(i64::try_from(memory_mb.saturating_mul(1 << 20)).unwrap_or(i64::MAX)),
                pids_limit: Some(self.cfg.pids_limit),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                network_mode: Some(self.cfg.network.clone()),
                extra_hosts: own_network
                    .then(|| vec!["host.docker.internal:host-gateway".to_string()]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn remove_container(&self, docker: &Docker, name: &str) -> Result<(), DeployError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match docker.remove_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(err(format!(
                "removing container {name}: {}",
                engine_message(&e)
            ))),
        }
    }

    /// Follows the engine's events and calls `on_death(org, agent)` when one
    /// of Cadre's containers dies or is killed for memory. Reconnects with
    /// back-off when the engine goes away; ends when the task is aborted.
    pub fn watch<F>(self: &Arc<Self>, on_death: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(&str, &str) + Send + Sync + 'static,
    {
        let me = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            let mut warned = false;
            loop {
                match me.engine().await {
                    Ok(docker) => {
                        let filters = HashMap::from([
                            ("type".to_string(), vec!["container".to_string()]),
                            ("label".to_string(), vec![format!("{MANAGED_LABEL}=true")]),
                            (
                                "event".to_string(),
                                vec!["die".to_string(), "oom".to_string()],
                            ),
                        ]);
                        let options = EventsOptions {
                            filters: Some(filters),
                            ..Default::default()
                        };
                        let mut events = docker.events(Some(options));
                        while let Some(event) = events.next().await {
                            let Ok(event) = event else { break };
                            backoff = Duration::from_millis(500);
                            let attrs = event.actor.and_then(|a| a.attributes).unwrap_or_default();
                            if let (Some(org), Some(agent)) =
                                (attrs.get("cadre.org"), attrs.get("cadre.agent"))
                            {
                                metrics::counter!("cadre_docker_container_deaths_total")
                                    .increment(1);
                                on_death(org, agent);
                            }
                        }
                    }
                    Err(e) if !warned => {
                        warned = true;
                        tracing::info!(error = %e, "docker target unavailable; retrying in the background");
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        })
    }
}

#[async_trait]
impl Deployer for DockerDeployer {
    async fn provision(&self, req: &DeployRequest) -> Result<String, DeployError> {
        let name = format!("cadre-{}", req.agent_id);
        Self::checked(&name)?;
        let docker = self.engine().await?;
        let volume = VolumeCreateRequest {
            name: Some(Self::volume(&name)),
            labels: Some(HashMap::from([
                (MANAGED_LABEL.to_string(), "true".to_string()),
                ("cadre.org".to_string(), req.org_id.to_string()),
                ("cadre.agent".to_string(), req.agent_id.to_string()),
            ])),
            ..Default::default()
        };
        // Creating a volume that exists returns it: provisioning is idempotent.
        docker.create_volume(volume).await.map_err(|e| {
            err(format!(
                "creating the workspace volume: {}",
                engine_message(&e)
            ))
        })?;
        Ok(name)
    }

    async fn deploy(&self, deployment: &str, req: &DeployRequest) -> Result<(), DeployError> {
        let name = Self::checked(deployment)?;
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let docker = self.engine().await?;
        let connect_url = self.reachable_url(docker).await?;
        let config =
            super::runtime_config(req, &connect_url, self.llm.as_ref().map(|(s, _)| s), None);
        let config = serde_json::to_string(&config).map_err(|e| err(e.to_string()))?;
        let server_key = self.llm.as_ref().and_then(|(_, k)| k.as_deref());
        let secrets = SealedEnv::of(req)
            .and_then(|s| s.open(server_key, self.sealer.as_ref()))
            .map_err(err)?;
        let mut env = vec![format!("{}={config}", super::CONFIG_ENV)];
        env.extend(secrets.into_iter().map(|(k, v)| format!("{k}={v}")));
        let body = self.container_body(name, req, env);
        let image = body.image.clone().unwrap_or_default();
        self.ensure_image(docker, &image).await?;
        // The configuration (its token above all) changes on every deploy and
        // a container's environment is fixed at creation: replace it. The
        // workspace volume stays.
        self.remove_container(docker, name).await?;
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| err(format!("creating container {name}: {}", engine_message(&e))))?;
        Ok(())
    }

    async fn start(&self, deployment: &str) -> Result<(), DeployError> {
        let name = Self::checked(deployment)?;
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let docker = self.engine().await?;
        match docker.start_container(name, None).await {
            Ok(()) => Ok(()),
            // Already running.
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Err(err(format!(
                "not deployed: container {name} does not exist"
            ))),
            Err(e) => Err(err(format!(
                "starting container {name}: {}",
                engine_message(&e)
            ))),
        }
    }

    async fn stop(&self, deployment: &str) -> Result<(), DeployError> {
        let name = Self::checked(deployment)?;
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let docker = self.engine().await?;
        let options = StopContainerOptions {
            t: Some(i32::try_from(self.cfg.stop_grace_ms.div_ceil(1000)).unwrap_or(i32::MAX)),
            signal: None,
        };
        match docker.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(304) | Some(404)) => Ok(()),
            Err(e) => Err(err(format!(
                "stopping container {name}: {}",
                engine_message(&e)
            ))),
        }
    }

    async fn destroy(&self, deployment: &str) -> Result<(), DeployError> {
        let name = Self::checked(deployment)?;
        {
            let lock = self.lock(name);
            let _guard = lock.lock().await;
            let docker = self.engine().await?;
            self.remove_container(docker, name).await?;
            let volume = Self::volume(name);
            match docker
                .remove_volume(&volume, None::<RemoveVolumeOptions>)
                .await
            {
                Ok(()) => {}
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => {
                    return Err(err(format!(
                        "removing volume {volume}: {}",
                        engine_message(&e)
                    )));
                }
            }
        }
        self.locks.remove(name);
        Ok(())
    }

    async fn status(&self, deployment: &str) -> Result<DeploymentStatus, DeployError> {
        let name = Self::checked(deployment)?;
        let docker = self.engine().await?;
        let info = match docker.inspect_container(name, None).await {
            Ok(info) => info,
            Err(e) if status_of(&e) == Some(404) => return Ok(DeploymentStatus::Missing),
            Err(e) => {
                return Err(err(format!(
                    "inspecting container {name}: {}",
                    engine_message(&e)
                )));
            }
        };
        let state = info.state.unwrap_or_default();
        if state.running == Some(true) {
            let unhealthy = state
                .health
                .and_then(|h| h.status)
                .is_some_and(|s| s.to_string() == "unhealthy");
            return Ok(if unhealthy {
                DeploymentStatus::Stopped("container is unhealthy".into())
            } else {
                DeploymentStatus::Running
            });
        }
        let mut why = format!(
            "container {}",
            state
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "not running".into())
        );
        if let Some(code) = state.exit_code {
            why.push_str(&format!(", exit code {code}"));
        }
        if state.oom_killed == Some(true) {
            why.push_str(", killed for memory");
        }
        if let Some(e) = state.error.filter(|e| !e.is_empty()) {
            why.push_str(&format!(": {e}"));
        }
        Ok(DeploymentStatus::Stopped(why))
    }

    async fn logs(&self, deployment: &str, lines: usize) -> Result<String, DeployError> {
        let name = Self::checked(deployment)?;
        let docker = self.engine().await?;
        let options = LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let mut out = Vec::new();
        let mut stream = docker.logs(name, Some(options));
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => out.extend_from_slice(chunk.as_ref()),
                Err(e) if status_of(&e) == Some(404) => return Ok(String::new()),
                Err(e) => {
                    return Err(err(format!(
                        "reading logs of {name}: {}",
                        engine_message(&e)
                    )));
                }
            }
        }
        Ok(String::from_utf8_lossy(&out).trim_end().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(network: &str, connect_url: &str) -> DockerDeployConfig {
        DockerDeployConfig {
            host: String::new(),
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            image: "cadre-runtime:latest".into(),
            pull: "missing".into(),
            network: network.into(),
            connect_url: connect_url.into(),
            cpus: 1.0,
            memory_mb: 512,
            pids_limit: 256,
            stop_grace_ms: 5000,
        }
    }

    #[test]
    fn loopback_becomes_the_host_gateway_off_the_host_network() {
        let url = "ws://127.0.0.1:8080/api/v1/runtime/connect";
        assert_eq!(
            container_connect_url(&cfg("bridge", ""), url),
            "ws://host.docker.internal:8080/api/v1/runtime/connect"
        );
        assert_eq!(container_connect_url(&cfg("host", ""), url), url);
        assert_eq!(
            container_connect_url(&cfg("bridge", "wss://cp.example/x"), url),
            "wss://cp.example/x"
        );
        let public = "wss://cadre.example.com/api/v1/runtime/connect";
        assert_eq!(container_connect_url(&cfg("bridge", ""), public), public);
    }

    #[test]
    fn deployment_refs_are_checked() {
        assert!(DockerDeployer::checked("cadre-0190-ab").is_ok());
        for bad in [
            "",
            "cadre-",
            "other",
            "cadre-../x",
            "cadre-a b",
            "cadre-a/b",
        ] {
            assert!(DockerDeployer::checked(bad).is_err(), "{bad}");
        }
    }
}
