//! Deployment targets (implementations of the `Deployer` port) and what
//! they share: the runtime's configuration and environment, and the router
//! that sends each agent's deployment to its target.
//!
//! Nothing here knows about actors or HTTP.

pub mod cloud;
pub mod docker;
pub mod fly;
pub mod generate;
pub mod image;
pub mod local;
pub mod railway;
pub mod ssh;

pub use docker::DockerDeployer;
pub use local::{Governed, LlmSettings, LocalDeployer, RuntimeConfig};

use async_trait::async_trait;
use cadre_actors::domain::DeployTarget;
use cadre_actors::ports::{DeployError, DeployRequest, Deployer, DeploymentStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Finds an organization's secret by name, still sealed: `(org, name)`.
/// Remote targets read their login key or API token through it on every
/// call, so a rotated secret takes effect without a redeploy.
pub type SecretSource = Arc<dyn Fn(&str, &str) -> Option<String> + Send + Sync>;

/// The environment variable a runtime reads its configuration from when it
/// is started without `--config` (containers: nothing is written to disk).
pub const CONFIG_ENV: &str = "CADRE_RUNTIME_CONFIG";

/// The environment variable a runtime takes its token from when its
/// configuration has none (hand deployments from generated files).
pub const TOKEN_ENV: &str = "CADRE_RUNTIME_TOKEN";

/// What a runtime reads at start for `req`: where to dial, its identity and
/// token, its model provider (the server's `[llm]` under the agent's own
/// settings) and its MCP servers. Never a secret value: those travel in the
/// environment.
pub fn runtime_config(
    req: &DeployRequest,
    connect_url: &str,
    llm: Option<&LlmSettings>,
    script: Option<PathBuf>,
) -> RuntimeConfig {
    RuntimeConfig {
        connect_url: connect_url.to_string(),
        agent_id: req.agent_id.to_string(),
        token: req.runtime_token.clone(),
        heartbeat_interval_ms: req.heartbeat_interval_ms,
        model: req.model.clone(),
        script,
        llm: llm.map(|s| s.with(&req.runtime.llm)),
        mcp_servers: req.runtime.mcp_servers.clone(),
        governed: None,
    }
}

/// The secret part of a runtime's environment with the values still sealed
/// (opened only when the runtime starts, so no deployer keeps a plain key).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedEnv {
    /// The organization the values are sealed for.
    pub org: String,
    /// Variable → sealed value.
    pub env: BTreeMap<String, String>,
}

impl SealedEnv {
    /// The variables `req`'s settings name: `CADRE_LLM_API_KEY` from
    /// `llm.api_key_secret`. A named secret the organization lacks is an error.
    pub fn of(req: &DeployRequest) -> Result<SealedEnv, String> {
        let mut env = BTreeMap::new();
        if let Some(name) = &req.runtime.llm.api_key_secret {
            let value = req.secrets.get(name).ok_or_else(|| {
                format!("secret {name:?} (llm.api_key_secret) is not set in the organization")
            })?;
            env.insert("CADRE_LLM_API_KEY".to_string(), value.clone());
        }
        Ok(SealedEnv {
            org: req.org_id.to_string(),
            env,
        })
    }

    /// The plain environment: the server's own model key (if any) under the
    /// agent's opened secrets.
    pub fn open(
        &self,
        server_key: Option<&str>,
        sealer: Option<&crate::secrets::Sealer>,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut env = BTreeMap::new();
        if let Some(key) = server_key {
            env.insert("CADRE_LLM_API_KEY".to_string(), key.to_string());
        }
        for (k, v) in &self.env {
            let sealer = sealer.ok_or("this deployer cannot open secrets")?;
            let plain = sealer
                .open(&self.org, v)
                .map_err(|e| format!("opening the secret for {k}: {e}"))?;
            env.insert(k.clone(), plain);
        }
        Ok(env)
    }
}

/// Sends each deployment to its agent's target. Handles of targets other
/// than `local` carry the target's name as a prefix (`docker:cadre-…`), so
/// every later call finds its target from the handle alone, even after a
/// restart; a handle without a prefix is a local one.
pub struct Targets {
    local: Arc<LocalDeployer>,
    docker: Arc<DockerDeployer>,
    remote: BTreeMap<&'static str, Arc<dyn Deployer>>,
}

impl std::fmt::Debug for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Targets").finish_non_exhaustive()
    }
}

impl Targets {
    /// A router over the local and Docker deployers.
    pub fn new(local: Arc<LocalDeployer>, docker: Arc<DockerDeployer>) -> Targets {
        Targets {
            local,
            docker,
            remote: BTreeMap::new(),
        }
    }

    /// Adds the deployer of `target` (`ssh`, `fly`, `railway`).
    pub fn with(mut self, target: DeployTarget, deployer: Arc<dyn Deployer>) -> Targets {
        self.remote.insert(target.as_str(), deployer);
        self
    }

    fn target(&self, target: DeployTarget) -> Result<&dyn Deployer, DeployError> {
        match target {
            DeployTarget::Local => Ok(self.local.as_ref()),
            DeployTarget::Docker => Ok(self.docker.as_ref()),
            other => self
                .remote
                .get(other.as_str())
                .map(|d| d.as_ref())
                .ok_or(DeployError {
                    target: other.as_str(),
                    message: "this server has no deployer for the target".into(),
                }),
        }
    }

    /// The target a handle belongs to, and the handle as that target knows it.
    fn route<'a>(&self, handle: &'a str) -> Result<(&dyn Deployer, &'a str), DeployError> {
        match handle.split_once(':') {
            Some((name, rest)) => {
                let target = DeployTarget::parse(name).ok_or(DeployError {
                    target: "any",
                    message: format!("deployment handle of unknown target {name:?}"),
                })?;
                Ok((self.target(target)?, rest))
            }
            None => Ok((self.local.as_ref(), handle)),
        }
    }
}

#[async_trait]
impl Deployer for Targets {
    async fn provision(&self, req: &DeployRequest) -> Result<String, DeployError> {
        match req.target {
            DeployTarget::Local => self.local.provision(req).await,
            t => Ok(format!(
                "{}:{}",
                t.as_str(),
                self.target(t)?.provision(req).await?
            )),
        }
    }

    async fn deploy(&self, deployment: &str, req: &DeployRequest) -> Result<(), DeployError> {
        let (target, d) = self.route(deployment)?;
        target.deploy(d, req).await
    }

    async fn start(&self, deployment: &str) -> Result<(), DeployError> {
        let (target, d) = self.route(deployment)?;
        target.start(d).await
    }

    async fn stop(&self, deployment: &str) -> Result<(), DeployError> {
        let (target, d) = self.route(deployment)?;
        target.stop(d).await
    }

    async fn destroy(&self, deployment: &str) -> Result<(), DeployError> {
        let (target, d) = self.route(deployment)?;
        target.destroy(d).await
    }

    async fn status(&self, deployment: &str) -> Result<DeploymentStatus, DeployError> {
        let (target, d) = self.route(deployment)?;
        target.status(d).await
    }

    async fn logs(&self, deployment: &str, lines: usize) -> Result<String, DeployError> {
        let (target, d) = self.route(deployment)?;
        target.logs(d, lines).await
    }
}
