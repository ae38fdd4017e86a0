//! What the hosted targets (Fly.io, Railway) share: an HTTP API client that
//! retries 429 and 5xx answers and lost requests with exponential back-off
//! (or the provider's `Retry-After`), never a 4xx, and the token and
//! secrets of the agent's organization, opened only for the call.

use super::{LlmSettings, SealedEnv, SecretSource};
use crate::config::CloudDeployConfig;
use cadre_actors::ports::{DeployError, DeployRequest};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// A provider's API, and what a hosted runtime is given.
pub struct Api {
    target: &'static str,
    http: reqwest::Client,
    cfg: CloudDeployConfig,
    connect_url: String,
    secrets: SecretSource,
    sealer: Option<crate::secrets::Sealer>,
    llm: Option<(LlmSettings, Option<String>)>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("target", &self.target)
            .field("api_url", &self.cfg.api_url)
            .finish_non_exhaustive()
    }
}

/// The longest wait between attempts, whatever the provider asks.
const MAX_WAIT: Duration = Duration::from_secs(30);

impl Api {
    /// A client for `target`'s API as `cfg` says; runtimes there dial
    /// `cfg.connect_url` or else `server_url`, and call the model provider
    /// `llm` names.
    pub fn new(
        target: &'static str,
        cfg: CloudDeployConfig,
        server_url: &str,
        secrets: SecretSource,
        sealer: Option<crate::secrets::Sealer>,
        llm: Option<(LlmSettings, Option<String>)>,
    ) -> Result<Api, String> {
        crate::init_tls();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .user_agent(concat!("cadre/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("{target} API client: {e}"))?;
        Ok(Api {
            target,
            http,
            connect_url: if cfg.connect_url.is_empty() {
                server_url.to_string()
            } else {
                cfg.connect_url.clone()
            },
            cfg,
            secrets,
            sealer,
            llm,
        })
    }

    /// A deployment handle of this target.
    pub fn handle<T: serde::de::DeserializeOwned>(&self, d: &str) -> Result<T, DeployError> {
        serde_json::from_str(d).map_err(|e| self.err(format!("unreadable deployment handle: {e}")))
    }

    /// The runtime's configuration as JSON, without its token: nothing
    /// secret, so it may sit in plain machine or service settings.
    pub fn runtime_config(&self, req: &DeployRequest) -> Result<String, DeployError> {
        let llm = self.llm.as_ref().map(|(s, _)| s);
        let mut config = super::runtime_config(req, &self.connect_url, llm, None);
        config.token = String::new();
        serde_json::to_string(&config).map_err(|e| self.err(e.to_string()))
    }

    /// The runtime's secret environment: its token and the opened secrets
    /// the agent names (the provider keeps them as secrets or variables).
    pub fn runtime_env(
        &self,
        req: &DeployRequest,
    ) -> Result<BTreeMap<String, String>, DeployError> {
        let mut env = SealedEnv::of(req)
            .map_err(|e| self.err(e))?
            .open(
                self.llm.as_ref().and_then(|(_, k)| k.as_deref()),
                self.sealer.as_ref(),
            )
            .map_err(|e| self.err(e))?;
        env.insert(super::TOKEN_ENV.to_string(), req.runtime_token.clone());
        Ok(env)
    }

    /// An error of this target.
    pub fn err(&self, message: impl Into<String>) -> DeployError {
        DeployError {
            target: self.target,
            message: message.into(),
        }
    }

    /// The opened value of the organization's secret `name`.
    pub fn secret(&self, org: &str, name: &str) -> Result<String, DeployError> {
        let sealed = (self.secrets)(org, name)
            .ok_or_else(|| self.err(format!("secret {name:?} is not set in the organization")))?;
        self.sealer
            .as_ref()
            .ok_or_else(|| self.err("this server cannot open secrets"))?
            .open(org, &sealed)
            .map_err(|e| self.err(format!("opening secret {name:?}: {e}")))
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        self.cfg.api_url.trim_end_matches('/')
    }

    /// Sends one request (to `base` + `path`) with `token`, retrying what
    /// may succeed later; the final status and JSON body (`null` if none).
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), DeployError> {
        let url = format!("{}{path}", self.base());
        let mut attempt = 0u32;
        loop {
            let mut req = self.http.request(method.clone(), &url).bearer_auth(token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let wait = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                        metrics::counter!("cadre_cloud_api_retries_total", "target" => self.target, "status" => status.as_u16().to_string()).increment(1);
                        if attempt >= self.cfg.max_retries {
                            return Err(self.err(format!(
                                "{method} {path}: {status} after {} attempts",
                                attempt + 1
                            )));
                        }
                        retry_after.unwrap_or_else(|| self.backoff(attempt))
                    } else {
                        let text = resp.text().await.map_err(|e| {
                            self.err(format!("{method} {path}: reading the answer: {e}"))
                        })?;
                        let value = if text.trim().is_empty() {
                            Value::Null
                        } else {
                            serde_json::from_str(&text).unwrap_or(Value::String(text))
                        };
                        return Ok((status, value));
                    }
                }
                Err(e) => {
                    if attempt >= self.cfg.max_retries {
                        return Err(self.err(format!(
                            "{method} {path}: {e} after {} attempts",
                            attempt + 1
                        )));
                    }
                    self.backoff(attempt)
                }
            };
            tokio::time::sleep(wait.min(MAX_WAIT)).await;
            attempt += 1;
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        Duration::from_millis(
            self.cfg
                .retry_base_ms
                .saturating_mul(1u64 << attempt.min(16)),
        )
    }

    /// The provider's own words for a refused request.
    pub fn refused(&self, what: &str, status: StatusCode, body: &Value) -> DeployError {
        let said = body
            .get("error")
            .and_then(Value::as_str)
            .or_else(|| body.get("message").and_then(Value::as_str))
            .or_else(|| body.as_str())
            .unwrap_or("no reason given");
        let hint = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                " (check the token secret the agent names)"
            }
            _ => "",
        };
        self.err(format!("{what}: {status}: {said}{hint}"))
    }
}
