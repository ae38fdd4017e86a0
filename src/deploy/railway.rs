//! The `railway` target: each agent's runtime as a Railway service running
//! an image, through Railway's public GraphQL API
//! (`https://backboard.railway.com/graphql/v2`, as its public schema
//! describes it: project, serviceCreate, variableCollectionUpsert,
//! serviceInstanceUpdate, serviceInstanceDeployV2, deployments,
//! deploymentStop, deploymentLogs, serviceDelete).
//!
//! The service is named `cadre-<agent id>` in the agent's project and
//! environment. Its variables are the runtime's configuration
//! (`CADRE_RUNTIME_CONFIG`, nothing secret), its token and the
//! organization secrets the agent names; its restart policy is `NEVER`
//! (Cadre restarts).
//!
//! Verified against a local server speaking the subset of the API used
//! here (tests/api/cloud.rs), not against Railway.

use super::cloud::Api;
use super::{LlmSettings, SecretSource};
use crate::config::CloudDeployConfig;
use async_trait::async_trait;
use cadre_actors::ports::{DeployError, DeployRequest, Deployer, DeploymentStatus};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Where a deployment went; serialized after `railway:` as its handle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RailwayHandle {
    /// Organization (whose secret holds the token).
    pub org: String,
    /// Agent.
    pub agent: String,
    /// Secret with the API token.
    pub token_secret: String,
    /// Railway project id.
    pub project: String,
    /// Environment id.
    pub environment: String,
    /// Service id.
    pub service: String,
}

/// The Railway deployer.
#[derive(Debug)]
pub struct RailwayDeployer {
    api: Api,
}

impl RailwayDeployer {
    /// A deployer calling the API `cfg` names (see [`Api::new`]).
    pub fn new(
        cfg: CloudDeployConfig,
        server_url: &str,
        secrets: SecretSource,
        sealer: Option<crate::secrets::Sealer>,
        llm: Option<(LlmSettings, Option<String>)>,
    ) -> Result<RailwayDeployer, String> {
        Ok(RailwayDeployer {
            api: Api::new("railway", cfg, server_url, secrets, sealer, llm)?,
        })
    }

    fn handle_of(&self, d: &str) -> Result<RailwayHandle, DeployError> {
        self.api.handle(d)
    }

    /// One GraphQL operation; its `data`, or the API's first error.
    async fn gql(
        &self,
        token: &str,
        what: &str,
        query: &str,
        vars: Value,
    ) -> Result<Value, DeployError> {
        let body = json!({ "query": query, "variables": vars });
        let (status, mut answer) = self.api.call(token, Method::POST, "", Some(&body)).await?;
        if let Some(message) = answer["errors"][0]["message"].as_str() {
            let hint = if message.contains("Not Authorized") {
                " (check the token secret the agent names)"
            } else {
                ""
            };
            return Err(self.api.err(format!("{what}: {message}{hint}")));
        }
        if !status.is_success() {
            return Err(self.api.refused(what, status, &answer));
        }
        Ok(answer["data"].take())
    }

    /// The newest deployment of the service: `(id, status)`.
    async fn latest(
        &self,
        token: &str,
        h: &RailwayHandle,
    ) -> Result<Option<(String, String)>, DeployError> {
        let data = self
            .gql(
                token,
                "reading deployments",
                "query($input: DeploymentListInput!) { deployments(first: 1, input: $input) { edges { node { id status } } } }",
                json!({ "input": { "projectId": h.project, "environmentId": h.environment, "serviceId": h.service } }),
            )
            .await?;
        let node = &data["deployments"]["edges"][0]["node"];
        Ok(node["id"].as_str().map(|id| {
            (
                id.to_string(),
                node["status"].as_str().unwrap_or_default().to_string(),
            )
        }))
    }
}

#[async_trait]
impl Deployer for RailwayDeployer {
    async fn provision(&self, req: &DeployRequest) -> Result<String, DeployError> {
        let spec = req.runtime.railway.clone().ok_or_else(|| {
            self.api
                .err("the agent has no railway settings (deployment.railway)")
        })?;
        let org = req.org_id.to_string();
        let token = self.api.secret(&org, &spec.token_secret)?;
        let data = self
            .gql(
                &token,
                "reading the project",
                "query($id: String!) { project(id: $id) { id environments { edges { node { id name } } } services { edges { node { id name } } } } }",
                json!({ "id": spec.project_id }),
            )
            .await?;
        let project = &data["project"];
        let env_name = spec.environment.as_deref().unwrap_or("production");
        let find = |list: &Value, name: &str| {
            list["edges"].as_array().and_then(|edges| {
                edges
                    .iter()
                    .find(|e| e["node"]["name"] == name)
                    .and_then(|e| e["node"]["id"].as_str().map(str::to_string))
            })
        };
        let environment = find(&project["environments"], env_name).ok_or_else(|| {
            self.api.err(format!(
                "project {} has no environment {env_name:?}",
                spec.project_id
            ))
        })?;
        let name = format!("cadre-{}", req.agent_id);
        let service = match find(&project["services"], &name) {
            Some(id) => id,
            None => {
                let data = self
                    .gql(
                        &token,
                        "creating the service",
                        "mutation($input: ServiceCreateInput!) { serviceCreate(input: $input) { id } }",
                        json!({ "input": { "projectId": spec.project_id, "name": name, "source": { "image": spec.image } } }),
                    )
                    .await?;
                data["serviceCreate"]["id"]
                    .as_str()
                    .ok_or_else(|| self.api.err("serviceCreate answered no id"))?
                    .to_string()
            }
        };
        let h = RailwayHandle {
            org,
            agent: req.agent_id.to_string(),
            token_secret: spec.token_secret,
            project: spec.project_id,
            environment,
            service,
        };
        serde_json::to_string(&h).map_err(|e| self.api.err(e.to_string()))
    }

    async fn deploy(&self, d: &str, req: &DeployRequest) -> Result<(), DeployError> {
        let h = self.handle_of(d)?;
        let spec = req.runtime.railway.clone().ok_or_else(|| {
            self.api
                .err("the agent has no railway settings (deployment.railway)")
        })?;
        let token = self.api.secret(&h.org, &h.token_secret)?;
        let mut vars = self.api.runtime_env(req)?;
        vars.insert(super::CONFIG_ENV.to_string(), self.api.runtime_config(req)?);
        self.gql(
            &token,
            "setting variables",
            "mutation($input: VariableCollectionUpsertInput!) { variableCollectionUpsert(input: $input) }",
            json!({ "input": {
                "projectId": h.project, "environmentId": h.environment, "serviceId": h.service,
                "variables": vars, "replace": true, "skipDeploys": true,
            } }),
        )
        .await?;
        self.gql(
            &token,
            "configuring the service",
            "mutation($serviceId: String!, $environmentId: String, $input: ServiceInstanceUpdateInput!) { serviceInstanceUpdate(serviceId: $serviceId, environmentId: $environmentId, input: $input) }",
            json!({
                "serviceId": h.service, "environmentId": h.environment,
                "input": { "source": { "image": spec.image }, "restartPolicyType": "NEVER" },
            }),
        )
        .await?;
        Ok(())
    }

    async fn start(&self, d: &str) -> Result<(), DeployError> {
        let h = self.handle_of(d)?;
        let token = self.api.secret(&h.org, &h.token_secret)?;
        self.gql(
            &token,
            "deploying the service",
            "mutation($serviceId: String!, $environmentId: String!) { serviceInstanceDeployV2(serviceId: $serviceId, environmentId: $environmentId) }",
            json!({ "serviceId": h.service, "environmentId": h.environment }),
        )
        .await?;
        Ok(())
    }

    async fn stop(&self, d: &str) -> Result<(), DeployError> {
        let h = self.handle_of(d)?;
        let token = self.api.secret(&h.org, &h.token_secret)?;
        match self.latest(&token, &h).await {
            Ok(Some((id, status)))
                if !matches!(
                    status.as_str(),
                    "REMOVED" | "REMOVING" | "CRASHED" | "FAILED" | "SKIPPED"
                ) =>
            {
                self.gql(
                    &token,
                    "stopping the deployment",
                    "mutation($id: String!) { deploymentStop(id: $id) }",
                    json!({ "id": id }),
                )
                .await?;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) if e.message.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn destroy(&self, d: &str) -> Result<(), DeployError> {
        let h = self.handle_of(d)?;
        let token = self.api.secret(&h.org, &h.token_secret)?;
        match self
            .gql(
                &token,
                "deleting the service",
                "mutation($id: String!) { serviceDelete(id: $id) }",
                json!({ "id": h.service }),
            )
            .await
        {
            Err(e) if !e.message.contains("not found") => Err(e),
            _ => Ok(()),
        }
    }

    async fn status(&self, d: &str) -> Result<DeploymentStatus, DeployError> {
        let h = self.handle_of(d)?;
        let token = self.api.secret(&h.org, &h.token_secret)?;
        Ok(match self.latest(&token, &h).await {
            Err(e) if e.message.contains("not found") => DeploymentStatus::Missing,
            Err(e) => return Err(e),
            Ok(None) => DeploymentStatus::Stopped("never deployed".into()),
            Ok(Some((_, status))) => match status.as_str() {
                "SUCCESS" | "DEPLOYING" | "INITIALIZING" | "BUILDING" | "QUEUED" | "WAITING" => {
                    DeploymentStatus::Running
                }
                other => DeploymentStatus::Stopped(format!("deployment is {other}")),
            },
        })
    }

    async fn logs(&self, d: &str, lines: usize) -> Result<String, DeployError> {
        let h = self.handle_of(d)?;
        let token = self.api.secret(&h.org, &h.token_secret)?;
        let Some((id, _)) = self.latest(&token, &h).await? else {
            return Ok(String::new());
        };
        let data = self
            .gql(
                &token,
                "reading logs",
                "query($deploymentId: String!, $limit: Int) { deploymentLogs(deploymentId: $deploymentId, limit: $limit) { message } }",
                json!({ "deploymentId": id, "limit": lines }),
            )
            .await?;
        Ok(data["deploymentLogs"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|m| m["message"].as_str())
                    .map(|m| format!("{m}\n"))
                    .collect()
            })
            .unwrap_or_default())
    }
}
