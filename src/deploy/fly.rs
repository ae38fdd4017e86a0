//! The `fly` target: each agent's runtime as a Fly Machine, through the
//! Machines API (`https://api.machines.dev/v1`, as its OpenAPI document
//! describes it: apps, machines, machine wait, app secrets).
//!
//! An app holds one agent: its app secrets are that agent's runtime token
//! and the organization secrets the agent names, and Fly hands app secrets
//! to the app's machines as environment variables. The machine is named
//! `cadre-<agent id>`, carries the runtime's configuration in its
//! environment (`CADRE_RUNTIME_CONFIG`, nothing secret), restarts never on
//! its own (Cadre restarts) and is stopped and destroyed by Cadre.
//!
//! Verified against a local server speaking the subset of the API used
//! here (tests/api/cloud.rs), not against Fly.io.

use super::cloud::Api;
use super::{LlmSettings, SecretSource};
use crate::config::CloudDeployConfig;
use async_trait::async_trait;
use cadre_actors::ports::{DeployError, DeployRequest, Deployer, DeploymentStatus};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Where a deployment went; serialized after `fly:` as its handle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FlyHandle {
    /// Organization (whose secret holds the token).
    pub org: String,
    /// Agent.
    pub agent: String,
    /// Fly app.
    pub app: String,
    /// Secret with the API token.
    pub token_secret: String,
}

impl FlyHandle {
    fn machine_name(&self) -> String {
        format!("cadre-{}", self.agent)
    }
}

/// The Fly.io deployer.
#[derive(Debug)]
pub struct FlyDeployer {
    api: Api,
}

impl FlyDeployer {
    /// A deployer calling the API `cfg` names (see [`Api::new`]).
    pub fn new(
        cfg: CloudDeployConfig,
        server_url: &str,
        secrets: SecretSource,
        sealer: Option<crate::secrets::Sealer>,
        llm: Option<(LlmSettings, Option<String>)>,
    ) -> Result<FlyDeployer, String> {
        Ok(FlyDeployer {
            api: Api::new("fly", cfg, server_url, secrets, sealer, llm)?,
        })
    }

    fn handle_of(&self, d: &str) -> Result<FlyHandle, DeployError> {
        self.api.handle(d)
    }

    fn token(&self, h: &FlyHandle) -> Result<String, DeployError> {
        self.api.secret(&h.org, &h.token_secret)
    }

    /// The app's machines: `(id, name, state)`.
    async fn machines(
        &self,
        token: &str,
        h: &FlyHandle,
    ) -> Result<Vec<(String, String, String)>, DeployError> {
        let path = format!("/v1/apps/{}/machines", h.app);
        let (status, body) = self.api.call(token, Method::GET, &path, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        if !status.is_success() {
            return Err(self.api.refused("listing machines", status, &body));
        }
        Ok(body
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|m| {
                        let s = |k: &str| m[k].as_str().unwrap_or_default().to_string();
                        (s("id"), s("name"), s("state"))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// This agent's machine: `(id, state)`.
    async fn machine(
        &self,
        token: &str,
        h: &FlyHandle,
    ) -> Result<Option<(String, String)>, DeployError> {
        let name = h.machine_name();
        Ok(self
            .machines(token, h)
            .await?
            .into_iter()
            .find(|(_, n, _)| *n == name)
            .map(|(id, _, state)| (id, state)))
    }

    /// Waits (on Fly's side) for the machine to reach `state`.
    async fn wait(
        &self,
        token: &str,
        h: &FlyHandle,
        id: &str,
        state: &str,
    ) -> Result<(), DeployError> {
        let path = format!(
            "/v1/apps/{}/machines/{id}/wait?state={state}&timeout=60",
            h.app
        );
        let (status, body) = self.api.call(token, Method::GET, &path, None).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self
                .api
                .refused(&format!("waiting for {state}"), status, &body))
        }
    }

    fn machine_config(
        &self,
        req: &DeployRequest,
        image: &str,
        cpus: u32,
        memory_mb: u64,
    ) -> Result<Value, DeployError> {
        // The token is an app secret; the config holds nothing secret.
        let config = self.api.runtime_config(req)?;
        Ok(json!({
            "image": image,
            "env": { super::CONFIG_ENV: config },
            "guest": { "cpu_kind": "shared", "cpus": cpus, "memory_mb": memory_mb },
            "restart": { "policy": "no" },
            "auto_destroy": false,
            "metadata": { "cadre_org": req.org_id.to_string(), "cadre_agent": req.agent_id.to_string() },
        }))
    }
}

#[async_trait]
impl Deployer for FlyDeployer {
    async fn provision(&self, req: &DeployRequest) -> Result<String, DeployError> {
        let spec = req.runtime.fly.clone().ok_or_else(|| {
            self.api
                .err("the agent has no fly settings (deployment.fly)")
        })?;
        let h = FlyHandle {
            org: req.org_id.to_string(),
            agent: req.agent_id.to_string(),
            app: spec.app.clone(),
            token_secret: spec.token_secret.clone(),
        };
        let token = self.token(&h)?;
        let path = format!("/v1/apps/{}", h.app);
        let (status, body) = self.api.call(&token, Method::GET, &path, None).await?;
        if status == StatusCode::NOT_FOUND {
            let create = json!({
                "app_name": h.app,
                "org_slug": spec.org_slug.as_deref().unwrap_or("personal"),
            });
            let (status, body) = self
                .api
                .call(&token, Method::POST, "/v1/apps", Some(&create))
                .await?;
            if !status.is_success() {
                return Err(self.api.refused("creating the app", status, &body));
            }
        } else if !status.is_success() {
            return Err(self.api.refused("reading the app", status, &body));
        }
        // One agent per app: its app secrets are that agent's.
        let mine = h.machine_name();
        if let Some((_, other, _)) = self
            .machines(&token, &h)
            .await?
            .into_iter()
            .find(|(_, n, _)| *n != mine)
        {
            return Err(self.api.err(format!(
                "app {} already runs machine {other:?}: give each agent an app of its own",
                h.app
            )));
        }
        serde_json::to_string(&h).map_err(|e| self.api.err(e.to_string()))
    }

    async fn deploy(&self, d: &str, req: &DeployRequest) -> Result<(), DeployError> {
        let h = self.handle_of(d)?;
        let spec = req.runtime.fly.clone().ok_or_else(|| {
            self.api
                .err("the agent has no fly settings (deployment.fly)")
        })?;
        let token = self.token(&h)?;
        for (name, value) in &self.api.runtime_env(req)? {
            let path = format!("/v1/apps/{}/secrets/{name}", h.app);
            let (status, body) = self
                .api
                .call(
                    &token,
                    Method::POST,
                    &path,
                    Some(&json!({ "value": value })),
                )
                .await?;
            if !status.is_success() {
                return Err(self
                    .api
                    .refused(&format!("setting app secret {name}"), status, &body));
            }
        }
        let config = self.machine_config(
            req,
            &spec.image,
            spec.cpus.unwrap_or(1),
            spec.memory_mb.unwrap_or(256),
        )?;
        let (path, body) = match self.machine(&token, &h).await? {
            Some((id, _)) => (
                format!("/v1/apps/{}/machines/{id}", h.app),
                json!({ "config": config, "skip_launch": true }),
            ),
            None => {
                let mut body = json!({
                    "name": h.machine_name(),
                    "config": config,
                    "skip_launch": true,
                });
                if let Some(r) = &spec.region {
                    body["region"] = json!(r);
                }
                (format!("/v1/apps/{}/machines", h.app), body)
            }
        };
        let (status, body) = self
            .api
            .call(&token, Method::POST, &path, Some(&body))
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(self.api.refused("creating the machine", status, &body))
        }
    }

    async fn start(&self, d: &str) -> Result<(), DeployError> {
        let h = self.handle_of(d)?;
        let token = self.token(&h)?;
        let (id, state) = self
            .machine(&token, &h)
            .await?
            .ok_or_else(|| self.api.err("the machine is gone: deploy again"))?;
        if state != "started" {
            let path = format!("/v1/apps/{}/machines/{id}/start", h.app);
            let (status, body) = self.api.call(&token, Method::POST, &path, None).await?;
            if !status.is_success() {
                return Err(self.api.refused("starting the machine", status, &body));
            }
        }
        self.wait(&token, &h, &id, "started").await
    }

    async fn stop(&self, d: &str) -> Result<(), DeployError> {
        let h = self.handle_of(d)?;
        let token = self.token(&h)?;
        let Some((id, state)) = self.machine(&token, &h).await? else {
            return Ok(());
        };
        if matches!(
            state.as_str(),
            "stopped" | "created" | "destroyed" | "failed"
        ) {
            return Ok(());
        }
        let path = format!("/v1/apps/{}/machines/{id}/stop", h.app);
        let (status, body) = self.api.call(&token, Method::POST, &path, None).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        if !status.is_success() {
            return Err(self.api.refused("stopping the machine", status, &body));
        }
        self.wait(&token, &h, &id, "stopped").await
    }

    async fn destroy(&self, d: &str) -> Result<(), DeployError> {
        let h = self.handle_of(d)?;
        let token = self.token(&h)?;
        if let Some((id, _)) = self.machine(&token, &h).await? {
            let path = format!("/v1/apps/{}/machines/{id}?force=true", h.app);
            let (status, body) = self.api.call(&token, Method::DELETE, &path, None).await?;
            if !status.is_success() && status != StatusCode::NOT_FOUND {
                return Err(self.api.refused("destroying the machine", status, &body));
            }
        }
        // The runtime's token is void now; the app secret goes with it.
        let path = format!("/v1/apps/{}/secrets/{}", h.app, super::TOKEN_ENV);
        let (status, body) = self.api.call(&token, Method::DELETE, &path, None).await?;
        if !status.is_success() && status != StatusCode::NOT_FOUND {
            return Err(self.api.refused("removing the token secret", status, &body));
        }
        Ok(())
    }

    async fn status(&self, d: &str) -> Result<DeploymentStatus, DeployError> {
        let h = self.handle_of(d)?;
        let token = self.token(&h)?;
        Ok(match self.machine(&token, &h).await? {
            None => DeploymentStatus::Missing,
            Some((_, state)) => match state.as_str() {
                "started" | "starting" => DeploymentStatus::Running,
                "destroyed" | "destroying" => DeploymentStatus::Missing,
                other => DeploymentStatus::Stopped(format!("machine is {other}")),
            },
        })
    }

    async fn logs(&self, d: &str, _lines: usize) -> Result<String, DeployError> {
        let h = self.handle_of(d)?;
        Err(self.api.err(format!(
            "the Machines API serves no logs; read them with `fly logs -a {}`",
            h.app
        )))
    }
}
