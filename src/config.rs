//! Configuration: `config/default.toml` (embedded) ← an optional file ←
//! `CADRE_*` environment variables, deserialized once into [`Config`].
//!
//! Unknown keys and bad values fail at start with a message naming the key
//! (`health.interval_ms: invalid type: …`). Nothing else reads the
//! environment for settings.

use cadre_actors::Settings;
use cadre_actors::budget::Pricing;
use cadre_actors::restart::Backoff;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Environment variables with a short name, and the key each sets.
const SHORT_ENV: &[(&str, &str)] = &[
    ("CADRE_LISTEN", "server.listen"),
    ("CADRE_DATA_DIR", "data_dir"),
    ("CADRE_DATABASE_URL", "database.url"),
    ("CADRE_JWT_SECRET", "auth.jwt_secret"),
    ("CADRE_BOOTSTRAP_EMAIL", "auth.bootstrap_email"),
    ("CADRE_BOOTSTRAP_PASSWORD", "auth.bootstrap_password"),
];

/// What `cadre serve --help` lists after its options: every short
/// environment variable with its key and shipped default, and the general
/// rule for the others. Built from the tables above, so it cannot drift.
pub fn env_help() -> String {
    let defaults: toml::Table = toml::from_str(DEFAULT_TOML).unwrap_or_default();
    let lookup = |path: &str| -> String {
        let mut cur: Option<&toml::Value> = None;
        let mut table = Some(&defaults);
        for part in path.split('.') {
            cur = table.and_then(|t| t.get(part));
            table = cur.and_then(|v| v.as_table());
        }
        match cur {
            Some(toml::Value::String(s)) if s.is_empty() => String::new(),
            Some(toml::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        }
    };
    let mut out = String::from(
        "Configuration: the built-in defaults (config/default.toml), then --config FILE, \
         then environment variables.\n\nEnvironment variables (key, default):\n",
    );
    let explain = |key: &str| match key {
        "database.url" => "sqlite://<data_dir>/cadre.db".to_string(),
        "auth.jwt_secret" => "generated once into <data_dir>/jwt_secret".to_string(),
        "auth.bootstrap_password" => "generated and printed once".to_string(),
        other => lookup(other),
    };
    for (var, key) in SHORT_ENV {
        out.push_str(&format!("  {var:<26} {key} ({})\n", explain(key)));
    }
    out.push_str(&format!(
        "  {:<26} seals organization secrets (generated once into <data_dir>/secrets.key)\n",
        "CADRE_SECRETS_KEY"
    ));
    out.push_str(
        "  CADRE_<SECTION>__<KEY>     any other key, e.g. CADRE_HEALTH__INTERVAL_MS=500\n\
         \nRelative paths are taken from the directory cadre serve starts in. \
         Every key and its default: config/default.toml.",
    );
    out
}

/// A configuration error, naming the key or source at fault.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// HTTP server.
    pub server: ServerConfig,
    /// Database.
    pub database: DatabaseConfig,
    /// Authentication.
    pub auth: AuthConfig,
    /// Health loop defaults.
    pub health: HealthConfig,
    /// Supervision.
    pub supervisor: SupervisorConfig,
    /// Actor calls and mailboxes.
    pub actors: ActorsConfig,
    /// Deployment targets.
    pub deploy: DeployConfig,
    /// Pricing table.
    pub pricing: Pricing,
    /// Activity pipeline and streams.
    pub activity: ActivityConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// Chaos hook.
    pub chaos: ChaosConfig,
    /// `[governance]`.
    pub governance: GovernanceConfig,
    /// Logging.
    pub log: LogConfig,
    /// Plans and their default limits.
    pub plans: PlansConfig,
    /// HTTP hardening: proxies, rate limits, CORS, timeouts.
    pub http: HttpConfig,
    /// `[tasks]`: queues and default limits.
    pub tasks: TasksConfig,
    /// `[llm]`: the model provider runtimes call.
    pub llm: LlmConfig,
    /// `[knowledge]`: knowledge bases and agents' memories.
    pub knowledge: KnowledgeConfig,
    /// `[secrets]`: the key that seals organization secrets.
    pub secrets: SecretsConfig,
}

/// `[secrets]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Start even when the secrets key does not open the organization
    /// secrets the database holds (they stay unreadable until set again).
    pub allow_unreadable: bool,
}

/// `[knowledge]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeConfig {
    /// Largest chunk, in cl100k tokens.
    pub chunk_tokens: usize,
    /// Tokens neighbouring chunks share.
    pub overlap_tokens: usize,
    /// Largest document (its upload or fetched body), in bytes.
    pub max_document_bytes: usize,
    /// Hosts the control plane may fetch documents from (`docs.example.com`
    /// or `*.example.com`, the rules of a profile's `http_hosts`); empty:
    /// adding documents by URL is refused.
    pub fetch_hosts: Vec<String>,
    /// Seconds a fetch may take.
    pub fetch_timeout_seconds: u64,
    /// Default time to live of a `working` memory, in hours (other kinds
    /// keep none unless given one).
    pub working_ttl_hours: u64,
    /// How often expired memories are purged, in seconds.
    pub purge_interval_seconds: u64,
    /// Where vectors are searched: `auto` (pgvector on a PostgreSQL
    /// database that has it, else in process), `pgvector` or `hnsw`.
    pub vector_index: crate::knowledge::VectorChoice,
    /// How often, at most, a changed in-process vector graph is written
    /// to its snapshot, in seconds (and always on shutdown).
    pub vector_snapshot_seconds: u64,
    /// `[knowledge.embeddings]`: vector search, when configured.
    pub embeddings: EmbeddingsConfig,
}

/// `[knowledge.embeddings]`: an OpenAI-compatible embeddings endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsConfig {
    /// Base URL (`https://api.openai.com/v1`, a local server's `…/v1`);
    /// empty: no vector search, lexical only.
    pub base_url: String,
    /// Model name sent with each request.
    pub model: String,
    /// The control plane's environment variable holding the API key;
    /// empty: none.
    pub api_key_env: String,
    /// Seconds an embeddings request may take.
    pub timeout_seconds: u64,
}

/// `[tasks]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TasksConfig {
    /// Unfinished tasks per agent; more are refused with 409 `queue_full`.
    pub max_open_per_agent: usize,
    /// Limits of a task that sets none.
    pub default_limits: cadre_actors::task::TaskLimits,
}

/// `[llm]`: the provider the runtimes of locally deployed agents call, with
/// each agent's `model`. A real provider is a change of this section only.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// `openai` (chat completions: OpenAI, vLLM, Ollama, LM Studio,
    /// LiteLLM) or `anthropic` (Messages API).
    pub provider: String,
    /// Base URL, e.g. `https://api.openai.com/v1` or
    /// `https://api.anthropic.com/v1`.
    pub base_url: String,
    /// The environment variable of the control plane holding the API key;
    /// it is handed to the runtime in its environment, never written to its
    /// configuration file or logged. Empty: no key (local servers).
    pub api_key_env: String,
    /// Output tokens per model call at most (also what is reserved).
    pub max_output_tokens: u64,
    /// Sampling temperature, when set.
    pub temperature: Option<f64>,
    /// Seconds to wait for one model response.
    pub timeout_seconds: u64,
    /// Ask for streamed responses; the runtime forwards the text as it
    /// arrives as `task.delta` events.
    #[serde(default)]
    pub stream: bool,
}

/// Limits of a plan (or an organization's overrides). Absent = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Live agents.
    pub max_agents: Option<u64>,
    /// Users.
    pub max_users: Option<u64>,
    /// Tokens per calendar month (UTC), all agents together.
    pub monthly_tokens: Option<u64>,
    /// Cost per calendar month in USD, all agents together.
    pub monthly_cost_usd: Option<f64>,
}

impl Limits {
    /// The monthly token and cost limits as the actors count them.
    pub fn budget(&self) -> cadre_actors::budget::BudgetLimits {
        cadre_actors::budget::BudgetLimits {
            monthly_tokens: self.monthly_tokens,
            // Validated finite and non-negative where it is set; `as`
            // saturates anything else.
            monthly_cost_micros: self
                .monthly_cost_usd
                .map(|usd| (usd * 1_000_000.0).round() as u64),
            period: cadre_actors::budget::PeriodKind::Monthly,
        }
    }

    /// `self` with every field `over` sets replaced.
    pub fn overridden_by(&self, over: &Limits) -> Limits {
        Limits {
            max_agents: over.max_agents.or(self.max_agents),
            max_users: over.max_users.or(self.max_users),
            monthly_tokens: over.monthly_tokens.or(self.monthly_tokens),
            monthly_cost_usd: over.monthly_cost_usd.or(self.monthly_cost_usd),
        }
    }
}

/// `[plans]`: the default limits of each plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlansConfig {
    /// `free`.
    pub free: Limits,
    /// `team`.
    pub team: Limits,
    /// `enterprise`.
    pub enterprise: Limits,
    /// `self_hosted`.
    pub self_hosted: Limits,
    /// Plan of the organization created at bootstrap.
    pub bootstrap_plan: String,
}

impl PlansConfig {
    /// The names of the plans.
    pub const NAMES: [&'static str; 4] = ["free", "team", "enterprise", "self_hosted"];

    /// A plan's default limits.
    pub fn limits(&self, plan: &str) -> Option<Limits> {
        match plan {
            "free" => Some(self.free),
            "team" => Some(self.team),
            "enterprise" => Some(self.enterprise),
            "self_hosted" => Some(self.self_hosted),
            _ => None,
        }
    }
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second, sustained (0 disables the limit).
    pub per_second: u32,
    /// Requests allowed in a burst.
    pub burst: u32,
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Proxies (IP addresses or CIDR ranges) whose `X-Forwarded-For` is
    /// believed. Empty: the client address is always the socket's peer.
    pub trusted_proxies: Vec<String>,
    /// Per client address.
    pub rate_limit_per_client: RateLimit,
    /// Per authenticated principal (user or API key).
    pub rate_limit_per_principal: RateLimit,
    /// Origins allowed to call the API from a browser (CORS); empty = off.
    pub cors_origins: Vec<String>,
    /// Longest a request may take.
    pub request_timeout_ms: u64,
}

impl HttpConfig {
    /// The trusted proxies, parsed (validated at start).
    pub fn proxies(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| parse_net(p))
            .collect()
    }
}

fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: String,
    /// URL runtimes dial back to.
    pub public_url: String,
    /// Request body limit.
    pub max_body_bytes: usize,
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Connection URL.
    pub url: String,
    /// `normal` or `full`.
    pub synchronous: String,
    /// Read pool size (SQLite).
    pub read_connections: u32,
    /// Connections to a PostgreSQL or MySQL/MariaDB server.
    pub server_connections: u32,
}

/// `[auth]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 secret.
    pub jwt_secret: String,
    /// Access-token lifetime.
    pub token_ttl_secs: u64,
    /// Refresh-token lifetime.
    pub refresh_ttl_secs: u64,
    /// Failed logins of one client address as one email that lock that
    /// client out of that email.
    pub lockout_threshold: u32,
    /// Failed logins as one email from all client addresses together that
    /// lock the email for the addresses it never signed in from.
    pub lockout_email_threshold: u32,
    /// Days a client address that signed in stays exempt from the
    /// email-wide lock.
    pub trusted_client_days: u64,
    /// First lock; each further lock doubles it up to `lockout_max_secs`.
    pub lockout_base_secs: u64,
    /// Longest lock.
    pub lockout_max_secs: u64,
    /// `auto` (Secure when `server.public_url` is https), `always` or `never`.
    pub cookie_secure: String,
    /// First owner's email.
    pub bootstrap_email: String,
    /// First owner's password.
    pub bootstrap_password: String,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("jwt_secret", &"<redacted>")
            .field("token_ttl_secs", &self.token_ttl_secs)
            .field("refresh_ttl_secs", &self.refresh_ttl_secs)
            .field("bootstrap_email", &self.bootstrap_email)
            .field("bootstrap_password", &"<redacted>")
            .finish()
    }
}

/// `[health]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Probe interval.
    pub interval_ms: u64,
    /// Failures before recovery.
    pub failure_threshold: u32,
    /// Hello deadline.
    pub start_timeout_ms: u64,
    /// Recovery back-off base.
    pub backoff_base_ms: u64,
    /// Recovery back-off ceiling.
    pub backoff_max_ms: u64,
    /// Healthy time that resets back-off and the restart limit.
    pub backoff_reset_after_ms: u64,
    /// Restart limit.
    pub max_restarts: u32,
}

/// `[supervisor]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Restarts per window.
    pub max_restarts: u32,
    /// The window.
    pub window_ms: u64,
    /// Back-off base.
    pub backoff_base_ms: u64,
    /// Back-off ceiling.
    pub backoff_max_ms: u64,
}

/// `[actors]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorsConfig {
    /// Call timeout.
    pub call_timeout_ms: u64,
    /// Requests in flight per actor.
    pub mailbox_capacity: usize,
    /// Wait for a mailbox slot.
    pub mailbox_wait_ms: u64,
}

/// `[deploy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// `[deploy.local]`.
    pub local: LocalDeployConfig,
    /// `[deploy.docker]`.
    pub docker: DockerDeployConfig,
    /// `[deploy.ssh]`.
    pub ssh: SshDeployConfig,
    /// `[deploy.fly]`.
    pub fly: CloudDeployConfig,
    /// `[deploy.railway]`.
    pub railway: CloudDeployConfig,
}

/// `[deploy.ssh]`: agents as processes on machines reached over SSH.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshDeployConfig {
    /// Cadre's own known-hosts file ("" = `<data_dir>/ssh_known_hosts`).
    pub known_hosts: String,
    /// Connecting and the key exchange may take this long.
    pub connect_timeout_ms: u64,
    /// URL the remote runtime dials ("" = the server's own connect URL).
    pub connect_url: String,
    /// Binary uploaded as the runtime ("" = this one; it must run on the
    /// hosts: a static build runs anywhere of the same architecture).
    pub runtime_bin: String,
    /// SIGTERM, then SIGKILL after this long (no-systemd hosts).
    pub stop_grace_ms: u64,
    /// CPU limit of the systemd unit, in cores.
    pub cpus: f64,
    /// Memory limit of the systemd unit, in MiB.
    pub memory_mb: u64,
    /// Tasks the systemd unit may run at most.
    pub pids_limit: i64,
}

/// `[deploy.fly]` and `[deploy.railway]`: a provider's HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudDeployConfig {
    /// The API's base URL.
    pub api_url: String,
    /// URL the runtime there dials ("" = the server's own connect URL, which
    /// must then be public: `[server] public_url`).
    pub connect_url: String,
    /// A request answered 429 or 5xx, or not answered, is retried this many times.
    pub max_retries: u32,
    /// The first retry waits this long, each next one twice as long (or what
    /// the provider's `Retry-After` says).
    pub retry_base_ms: u64,
    /// One request may take this long.
    pub request_timeout_ms: u64,
}

/// `[deploy.docker]`: agents as containers on a Docker engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerDeployConfig {
    /// Engine address: `unix:///var/run/docker.sock`, `tcp://host:2376`
    /// ("" = `DOCKER_HOST`, else the local socket).
    pub host: String,
    /// For `tcp://` with TLS: the CA, client certificate and key (PEM paths).
    pub tls_ca: String,
    /// Client certificate.
    pub tls_cert: String,
    /// Client key.
    pub tls_key: String,
    /// Image agents run unless their own settings name one.
    pub image: String,
    /// Pull an image the engine lacks (`missing`) or never (`never`).
    pub pull: String,
    /// Network mode of agent containers (`bridge`, `host`, or a network name).
    pub network: String,
    /// URL the runtime in a container dials ("" = the server's own, with a
    /// loopback host replaced by `host.docker.internal` off the host network).
    pub connect_url: String,
    /// Default CPU limit in cores.
    pub cpus: f64,
    /// Default memory limit in MiB.
    pub memory_mb: u64,
    /// Processes per container at most.
    pub pids_limit: i64,
    /// SIGTERM, then SIGKILL after this long.
    pub stop_grace_ms: u64,
}

/// `[deploy.local]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalDeployConfig {
    /// Runtime binary ("" = this one).
    pub runtime_bin: String,
    /// SIGTERM → SIGKILL grace.
    pub stop_grace_ms: u64,
    /// Scripted runtimes: `<script_dir>/<agent id>.jsonl` ("" = off).
    pub script_dir: String,
}

/// `[activity]`: batching, back-pressure, retention, streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityConfig {
    /// Flush at this many rows.
    pub flush_rows: usize,
    /// Flush at this many payload bytes.
    pub flush_bytes: usize,
    /// Flush when the oldest row waited this long.
    pub flush_ms: u64,
    /// Rows queued at most before producers wait.
    pub queue_rows: usize,
    /// First retry delay after a failed flush.
    pub retry_base_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// A flush running longer than this makes `/readyz` unhealthy.
    pub stall_ms: u64,
    /// Default days of activity kept.
    pub retention_days: u32,
    /// Rows deleted per retention statement.
    pub retention_batch: u32,
    /// Seconds between retention runs.
    pub retention_interval_secs: u64,
    /// Events buffered per stream subscriber.
    pub stream_buffer: usize,
    /// WebSocket stream ping interval.
    pub ping_secs: u64,
    /// WebSocket stream idle timeout.
    pub idle_secs: u64,
    /// Argument names redacted in tool calls besides the built-in ones.
    #[serde(default)]
    pub redact_keys: Vec<String>,
}

/// `[metrics]`: where `/metrics` is served and whether it needs a token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// A separate listen address (`""`: on `server.listen`).
    pub listen: String,
    /// Bearer token required to scrape (`""`: none).
    pub token: String,
}

/// A message for the operator on stderr: a plain `cadre: …` line on a
/// terminal, a JSON log line (target `cadre::notice`) when logs are JSON,
/// so a log shipper reading stderr sees JSON only.
pub fn notice(log: &LogConfig, message: &str) {
    if log.json() {
        tracing::info!(target: "cadre::notice", "{message}");
    } else {
        eprintln!("cadre: {message}");
    }
}

/// `[governance]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceConfig {
    /// Catalog file ("" = shipped).
    pub catalog: String,
    /// Profile of agents that name none.
    pub default_profile: String,
    /// Unsettled reservations are released after this long.
    pub reservation_ttl_ms: u64,
    /// Approvers when no organization policy matches.
    pub default_policy: cadre_actors::governance::PolicyDef,
    /// Outbound approval notices.
    pub webhook: WebhookConfig,
}

/// `[governance.webhook]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST ("" = off).
    pub url: String,
    /// HMAC-SHA256 key.
    pub secret: String,
    /// Attempts per notice.
    pub max_attempts: u32,
}

/// The shipped catalog.
pub const SHIPPED_CATALOG: &str = include_str!("../config/governance.toml");

impl GovernanceConfig {
    /// Loads and validates the catalog.
    pub fn catalog(&self) -> Result<cadre_actors::governance::CatalogFile, ConfigError> {
        let (text, from) = if self.catalog.is_empty() {
            (
                SHIPPED_CATALOG.to_string(),
                "the shipped catalog".to_string(),
            )
        } else {
            (
                std::fs::read_to_string(&self.catalog).map_err(|e| {
                    ConfigError(format!("governance.catalog: reading {}: {e}", self.catalog))
                })?,
                self.catalog.clone(),
            )
        };
        let file: cadre_actors::governance::CatalogFile = toml::from_str(&text)
            .map_err(|e| ConfigError(format!("governance.catalog ({from}): {e}")))?;
        file.validate()
            .map_err(|e| ConfigError(format!("governance.catalog ({from}): {e}")))?;
        Ok(file)
    }
}

/// `[chaos]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChaosConfig {
    /// Whether the kill endpoint exists.
    pub enabled: bool,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `auto`, `text` or `json`.
    pub format: String,
    /// Filter.
    pub level: String,
}

impl LogConfig {
    /// Whether logs are JSON lines: `json`, or `auto` with stderr not a
    /// terminal (a service manager, a container, a pipe).
    pub fn json(&self) -> bool {
        match self.format.as_str() {
            "json" => true,
            "text" => false,
            _ => !std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

/// The addresses a `host:port` listen setting stands for: an IP address
/// as it is, a host name (`localhost`) resolved, IPv4 first.
pub fn resolve_listen(raw: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let Some((host, port)) = raw.rsplit_once(':') else {
        return Err(format!("{raw:?} has no port"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("{port:?} is not a port"));
    }
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !name_ok {
        return Err(format!("{host:?} is neither an IP address nor a host name"));
    }
    let mut addrs: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(raw)
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{host:?} resolves to no address"));
    }
    Ok(addrs)
}

/// The level words a log filter accepts.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a `log.level` filter: comma-separated directives, each a level
/// (`info`) or `target=level` (`cadre=debug`). The filter library reads an
/// unknown bare word as a target name and logs nothing of it, so a typo
/// such as `inf` would otherwise pass silently.
pub fn check_log_filter(raw: &str) -> Result<(), String> {
    let known = |l: &str| LOG_LEVELS.contains(&l.trim().to_ascii_lowercase().as_str());
    if raw.trim().is_empty() {
        return Err(format!(
            "empty; expected a level ({})",
            LOG_LEVELS.join(", ")
        ));
    }
    for directive in raw.split(',') {
        let d = directive.trim();
        let ok = match d.split_once('=') {
            None => known(d),
            Some((target, level)) => {
                !target.is_empty()
                    && target
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':' || b == b'-')
                    && known(level)
            }
        };
        if !ok {
            return Err(format!(
                "{d:?} is not a level ({}) or target=level",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut cur = table;
    for p in parts {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(t) = entry else { return };
        cur = t;
    }
    cur.insert(last.to_string(), value);
}

/// An environment value: a TOML scalar when it parses as one (`500`, `true`),
/// else a string.
fn env_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_)),
            ) => v,
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

impl Config {
    /// Loads defaults, then `file`, then the variables in `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(DEFAULT_TOML)
            .map_err(|e| ConfigError(format!("built-in defaults: {e}")))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
            let over: toml::Table = toml::from_str(&text)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            merge(&mut table, over);
        }
        for (key, raw) in env {
            if let Some((_, path)) = SHORT_ENV.iter().find(|(k, _)| *k == key) {
                set_path(&mut table, path, toml::Value::String(raw));
            } else if let Some(rest) = key.strip_prefix("CADRE_")
                && rest.contains("__")
            {
                let path = rest.to_ascii_lowercase().replace("__", ".");
                set_path(&mut table, &path, env_value(&raw));
            }
        }
        let de = toml::Value::Table(table);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError(format!("{path}: {}", e.into_inner()))
        })?;
        let cwd = std::env::current_dir().map_err(|e| {
            ConfigError(format!(
                "data_dir: the working directory is unreadable: {e}"
            ))
        })?;
        let mut config = config;
        config.absolutize(&cwd);
        config.validate()?;
        Ok(config)
    }

    /// Makes every path of the configuration absolute against `cwd`, once,
    /// at load: a relative `./data` must mean the same directory to the
    /// server and to every process it starts elsewhere (a local runtime
    /// runs in its agent's folder and is handed paths under `data_dir`).
    pub fn absolutize(&mut self, cwd: &Path) {
        let abs = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                // Lexically: `./data` becomes `<cwd>/data`, not `<cwd>/./data`.
                let mut out = cwd.to_path_buf();
                for part in p.components() {
                    match part {
                        std::path::Component::CurDir => {}
                        std::path::Component::ParentDir => {
                            out.pop();
                        }
                        other => out.push(other),
                    }
                }
                out
            }
        };
        let abs_str = |s: &mut String| {
            if !s.is_empty() {
                *s = abs(Path::new(s.as_str())).display().to_string();
            }
        };
        self.data_dir = abs(&self.data_dir);
        abs_str(&mut self.governance.catalog);
        abs_str(&mut self.deploy.local.runtime_bin);
        abs_str(&mut self.deploy.local.script_dir);
        abs_str(&mut self.deploy.ssh.known_hosts);
        abs_str(&mut self.deploy.ssh.runtime_bin);
        abs_str(&mut self.deploy.docker.tls_ca);
        abs_str(&mut self.deploy.docker.tls_cert);
        abs_str(&mut self.deploy.docker.tls_key);
        // `sqlite://relative.db` (or `sqlite:relative.db`), with any `?options`.
        let url = &self.database.url;
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let (path, query) = rest.split_at(rest.find('?').unwrap_or(rest.len()));
            if !path.is_empty() && path != ":memory:" && !Path::new(path).is_absolute() {
                self.database.url = format!("sqlite://{}{query}", abs(Path::new(path)).display());
            }
        }
    }

    /// Loads from the process environment.
    pub fn from_env(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load(file, std::env::vars())
    }

    /// Checks invariants serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        let catalog = self.governance.catalog()?;
        if !catalog
            .profiles
            .contains_key(&self.governance.default_profile)
        {
            return bad("governance.default_profile", "not a profile of the catalog");
        }
        if let Err(e) = self.governance.default_policy.validate() {
            return Err(ConfigError(format!("governance.default_policy: {e}")));
        }
        let k = &self.knowledge;
        if k.chunk_tokens == 0 || k.chunk_tokens > 8192 || k.overlap_tokens >= k.chunk_tokens {
            return bad(
                "knowledge.chunk_tokens",
                "1-8192, and above knowledge.overlap_tokens",
            );
        }
        let e = &k.embeddings;
        if !(e.base_url.is_empty()
            || e.base_url.starts_with("http://")
            || e.base_url.starts_with("https://"))
        {
            return bad(
                "knowledge.embeddings.base_url",
                "empty, or an http:// or https:// URL",
            );
        }
        if !e.base_url.is_empty() && e.model.trim().is_empty() {
            return bad("knowledge.embeddings.model", "the model to ask for");
        }
        for h in &k.fetch_hosts {
            if h.is_empty() || h.contains('/') || h.contains('@') {
                return bad(
                    "knowledge.fetch_hosts",
                    "host names (`docs.example.com`, `*.example.com`), no scheme or path",
                );
            }
        }
        if !matches!(self.llm.provider.as_str(), "openai" | "anthropic") {
            return bad("llm.provider", "openai or anthropic");
        }
        if !(self.llm.base_url.starts_with("http://") || self.llm.base_url.starts_with("https://"))
        {
            return bad("llm.base_url", "an http:// or https:// URL");
        }
        if self.tasks.max_open_per_agent == 0 {
            return bad("tasks.max_open_per_agent", "at least 1");
        }
        let url = &self.governance.webhook.url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return bad("governance.webhook.url", "an http:// or https:// URL");
        }
        if let Err(why) = resolve_listen(&self.server.listen) {
            return bad(
                "server.listen",
                &format!("{why}; expected host:port, e.g. 127.0.0.1:8080 or localhost:8080"),
            );
        }
        if !self.metrics.listen.is_empty()
            && let Err(why) = resolve_listen(&self.metrics.listen)
        {
            return bad(
                "metrics.listen",
                &format!(
                    "{why}; expected host:port, e.g. 127.0.0.1:9090, or \"\" for server.listen"
                ),
            );
        }
        if let Err(why) = crate::identity::normalize_email(&self.auth.bootstrap_email) {
            return bad("auth.bootstrap_email", why);
        }
        if !self.auth.bootstrap_password.is_empty()
            && let Err(why) = crate::identity::check_password(&self.auth.bootstrap_password)
        {
            return bad(
                "auth.bootstrap_password",
                &format!("{why} (or \"\" to have one generated)"),
            );
        }
        if let Err(why) = check_log_filter(&self.log.level) {
            return bad("log.level", &why);
        }
        let url = &self.server.public_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return bad("server.public_url", "must start with http:// or https://");
        }
        if self.server.max_body_bytes < 1024 {
            return bad("server.max_body_bytes", "must be at least 1024");
        }
        let docker = &self.deploy.docker;
        if !matches!(docker.pull.as_str(), "missing" | "never") {
            return bad("deploy.docker.pull", "expected \"missing\" or \"never\"");
        }
        if !(docker.host.is_empty()
            || docker.host.starts_with("unix://")
            || docker.host.starts_with("tcp://")
            || docker.host.starts_with("http://")
            || docker.host.starts_with("https://"))
        {
            return bad(
                "deploy.docker.host",
                "expected unix:///path, tcp://host:port or \"\"",
            );
        }
        if !(0.01..=1024.0).contains(&docker.cpus) {
            return bad("deploy.docker.cpus", "between 0.01 and 1024");
        }
        if docker.memory_mb < 16 {
            return bad("deploy.docker.memory_mb", "at least 16");
        }
        let url = &docker.connect_url;
        if !(url.is_empty() || url.starts_with("ws://") || url.starts_with("wss://")) {
            return bad(
                "deploy.docker.connect_url",
                "a ws:// or wss:// URL, or \"\"",
            );
        }
        if !matches!(self.database.synchronous.as_str(), "normal" | "full") {
            return bad("database.synchronous", "expected \"normal\" or \"full\"");
        }
        if !self.database.url.is_empty()
            && crate::store::backend::Backend::of_url(&self.database.url).is_none()
        {
            return bad(
                "database.url",
                "expected a sqlite:, postgres: or mysql: (mariadb:) URL",
            );
        }
        if self.database.server_connections < 2 {
            return bad("database.server_connections", "must be at least 2");
        }
        if self.auth.token_ttl_secs == 0 {
            return bad("auth.token_ttl_secs", "must be positive");
        }
        if !self.auth.jwt_secret.is_empty() && self.auth.jwt_secret.len() < 32 {
            return bad("auth.jwt_secret", "must be at least 32 characters");
        }
        if self.auth.refresh_ttl_secs < self.auth.token_ttl_secs {
            return bad(
                "auth.refresh_ttl_secs",
                "must be at least auth.token_ttl_secs",
            );
        }
        if self.auth.lockout_threshold == 0 {
            return bad("auth.lockout_threshold", "must be at least 1");
        }
        if self.auth.lockout_email_threshold < self.auth.lockout_threshold {
            return bad(
                "auth.lockout_email_threshold",
                "must be at least auth.lockout_threshold",
            );
        }
        if self.auth.lockout_base_secs > self.auth.lockout_max_secs {
            return bad(
                "auth.lockout_base_secs",
                "must not exceed auth.lockout_max_secs",
            );
        }
        if !matches!(
            self.auth.cookie_secure.as_str(),
            "auto" | "always" | "never"
        ) {
            return bad(
                "auth.cookie_secure",
                "expected \"auto\", \"always\" or \"never\"",
            );
        }
        if self.plans.limits(&self.plans.bootstrap_plan).is_none() {
            return bad(
                "plans.bootstrap_plan",
                "expected free, team, enterprise or self_hosted",
            );
        }
        for p in &self.http.trusted_proxies {
            if parse_net(p).is_none() {
                return Err(ConfigError(format!(
                    "http.trusted_proxies: {p:?} is not an IP address or CIDR range"
                )));
            }
        }
        for o in &self.http.cors_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(ConfigError(format!(
                    "http.cors_origins: {o:?} must be an origin like https://example.com"
                )));
            }
        }
        let a = &self.activity;
        for (name, v) in [
            ("activity.flush_rows", a.flush_rows),
            ("activity.flush_bytes", a.flush_bytes),
            ("activity.queue_rows", a.queue_rows),
            ("activity.stream_buffer", a.stream_buffer),
        ] {
            if v == 0 {
                return bad(name, "must be at least 1");
            }
        }
        if a.queue_rows < a.flush_rows {
            return bad(
                "activity.queue_rows",
                "must be at least activity.flush_rows",
            );
        }
        // tokio's semaphore holds at most usize::MAX >> 3 permits.
        if a.queue_rows > 100_000_000 {
            return bad("activity.queue_rows", "must be at most 100000000");
        }
        if a.retention_days == 0 || a.retention_batch == 0 || a.retention_interval_secs == 0 {
            return bad(
                "activity.retention_days",
                "retention days, batch and interval must be at least 1",
            );
        }
        if a.ping_secs == 0 || a.idle_secs <= a.ping_secs {
            return bad(
                "activity.idle_secs",
                "ping_secs must be at least 1 and idle_secs longer than ping_secs",
            );
        }
        if self.http.request_timeout_ms == 0 {
            return bad("http.request_timeout_ms", "must be at least 1");
        }
        if self.health.interval_ms == 0 {
            return bad("health.interval_ms", "must be at least 1");
        }
        if self.health.failure_threshold == 0 {
            return bad("health.failure_threshold", "must be at least 1");
        }
        if self.health.backoff_base_ms > self.health.backoff_max_ms {
            return bad(
                "health.backoff_base_ms",
                "must not exceed health.backoff_max_ms",
            );
        }
        if self.supervisor.window_ms == 0 {
            return bad("supervisor.window_ms", "must be at least 1");
        }
        if self.supervisor.backoff_base_ms > self.supervisor.backoff_max_ms {
            return bad(
                "supervisor.backoff_base_ms",
                "must not exceed supervisor.backoff_max_ms",
            );
        }
        if self.actors.call_timeout_ms == 0 {
            return bad("actors.call_timeout_ms", "must be at least 1");
        }
        if self.actors.mailbox_capacity == 0 {
            return bad("actors.mailbox_capacity", "must be at least 1");
        }
        if !matches!(self.log.format.as_str(), "auto" | "text" | "json") {
            return bad("log.format", "expected \"auto\", \"text\" or \"json\"");
        }
        self.pricing.validate().map_err(ConfigError)?;
        Ok(())
    }

    /// The listen addresses (validated): one for an IP address, each the
    /// name resolves to for a host name (`localhost:8080`).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        resolve_listen(&self.server.listen)
            .unwrap_or_else(|_| vec![SocketAddr::from(([127, 0, 0, 1], 8080))])
    }

    /// The database URL, defaulting to a file in the data directory.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("cadre.db").display())
        } else {
            self.database.url.clone()
        }
    }

    /// The SQLite database file, when the database is SQLite on a file.
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        let url = self.database_url();
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?;
        let path = &rest[..rest.find('?').unwrap_or(rest.len())];
        (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
    }

    /// Whether the refresh cookie carries `Secure`.
    pub fn cookie_secure(&self) -> bool {
        match self.auth.cookie_secure.as_str() {
            "always" => true,
            "never" => false,
            _ => self.tls(),
        }
    }

    /// Whether clients reach Cadre over TLS (its public URL is https).
    pub fn tls(&self) -> bool {
        self.server.public_url.starts_with("https://")
    }

    /// Actor-tree settings.
    pub fn settings(&self) -> Settings {
        let ms = Duration::from_millis;
        Settings {
            health_interval: ms(self.health.interval_ms),
            failure_threshold: self.health.failure_threshold,
            start_timeout: ms(self.health.start_timeout_ms),
            recovery_backoff: Backoff {
                base: ms(self.health.backoff_base_ms),
                max: ms(self.health.backoff_max_ms),
            },
            recovery_reset_after: ms(self.health.backoff_reset_after_ms),
            max_recoveries: self.health.max_restarts,
            supervisor_max_restarts: self.supervisor.max_restarts,
            supervisor_window: ms(self.supervisor.window_ms),
            supervisor_backoff: Backoff {
                base: ms(self.supervisor.backoff_base_ms),
                max: ms(self.supervisor.backoff_max_ms),
            },
            call_timeout: ms(self.actors.call_timeout_ms),
            mailbox_capacity: self.actors.mailbox_capacity,
            mailbox_wait: ms(self.actors.mailbox_wait_ms),
            reservation_ttl: ms(self.governance.reservation_ttl_ms),
            max_open_tasks: self.tasks.max_open_per_agent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load(None, env(&[])).expect("defaults are valid");
        assert_eq!(c.server.listen, "127.0.0.1:8080");
        assert_eq!(c.health.interval_ms, 30_000);
        assert!(!c.chaos.enabled);
        assert!(c.database_url().ends_with("cadre.db"));
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[health]\ninterval_ms = 100\nfailure_threshold = 2\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&file),
            env(&[
                ("CADRE_LISTEN", "0.0.0.0:9000"),
                ("CADRE_HEALTH__FAILURE_THRESHOLD", "7"),
                ("CADRE_CHAOS__ENABLED", "true"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.server.listen, "0.0.0.0:9000");
        assert_eq!(c.health.interval_ms, 100);
        assert_eq!(c.health.failure_threshold, 7);
        assert!(c.chaos.enabled);
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::load(None, env(&[("CADRE_HEALTH__INTERVAL_MS", "soon")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("health.interval_ms"), "{err}");
        let err = Config::load(None, env(&[("CADRE_LISTEN", "nowhere")])).expect_err("must fail");
        assert!(err.to_string().contains("server.listen"), "{err}");
        let err =
            Config::load(None, env(&[("CADRE_HEALTH__NO_SUCH_KEY", "1")])).expect_err("must fail");
        assert!(err.to_string().contains("no_such_key"), "{err}");
        let err = Config::load(None, env(&[("CADRE_DATABASE__SYNCHRONOUS", "off")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("database.synchronous"), "{err}");
        let err = Config::load(None, env(&[("CADRE_DATABASE_URL", "mongodb://h/db")]))
            .expect_err("must fail");
        assert!(err.to_string().contains("database.url"), "{err}");
        for url in [
            "sqlite:///var/lib/cadre/x.db",
            "postgres://u@h/db",
            "mysql://u@h/db",
            "mariadb://u@h/db",
        ] {
            let c = Config::load(None, env(&[("CADRE_DATABASE_URL", url)])).expect(url);
            assert_eq!(c.database_url(), url);
        }
    }

    #[test]
    fn relative_paths_are_made_absolute_once_at_load() {
        let cwd = std::env::current_dir().expect("cwd");
        let c = Config::load(
            None,
            env(&[
                ("CADRE_DATA_DIR", "./data"),
                ("CADRE_DEPLOY__LOCAL__RUNTIME_BIN", "bin/cadre"),
                ("CADRE_DEPLOY__LOCAL__SCRIPT_DIR", "../scripts"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.data_dir, cwd.join("data"));
        assert_eq!(
            c.deploy.local.runtime_bin,
            cwd.join("bin/cadre").display().to_string()
        );
        let parent = cwd.parent().unwrap_or(&cwd).join("scripts");
        assert_eq!(c.deploy.local.script_dir, parent.display().to_string());
        assert_eq!(c.sqlite_file(), Some(cwd.join("data/cadre.db")));
        // Empty means "the default", and stays empty.
        assert_eq!(c.deploy.ssh.runtime_bin, "");
        let c = Config::load(
            None,
            env(&[("CADRE_DATABASE_URL", "sqlite:db/x.db?mode=rwc")]),
        )
        .expect("valid");
        assert_eq!(
            c.database_url(),
            format!("sqlite://{}?mode=rwc", cwd.join("db/x.db").display())
        );
    }

    #[test]
    fn start_settings_follow_the_apis_own_rules() {
        // Host names listen as well as addresses.
        let c = Config::load(None, env(&[("CADRE_LISTEN", "localhost:8080")])).expect("valid");
        assert!(
            c.listen_addrs()
                .iter()
                .all(|a| a.port() == 8080 && a.ip().is_loopback())
        );
        for (var, value, key) in [
            ("CADRE_LISTEN", "localhost", "server.listen"),
            ("CADRE_LISTEN", "local host:80", "server.listen"),
            ("CADRE_LISTEN", "127.0.0.1:99999", "server.listen"),
            ("CADRE_BOOTSTRAP_PASSWORD", "abc", "auth.bootstrap_password"),
            ("CADRE_BOOTSTRAP_EMAIL", "admin", "auth.bootstrap_email"),
            ("CADRE_BOOTSTRAP_EMAIL", "a b@x", "auth.bootstrap_email"),
            ("CADRE_LOG__LEVEL", "verbose", "log.level"),
            ("CADRE_LOG__LEVEL", "info,ractor=loud", "log.level"),
            ("CADRE_LOG__LEVEL", "", "log.level"),
        ] {
            let err = Config::load(None, env(&[(var, value)]))
                .expect_err(&format!("{var}={value} must be refused"));
            assert!(err.to_string().contains(key), "{var}={value}: {err}");
        }
        for level in ["debug", "info,ractor=warn", "cadre::http=trace,warn", "OFF"] {
            Config::load(None, env(&[("CADRE_LOG__LEVEL", level)])).expect(level);
        }
    }

    #[test]
    fn serve_help_lists_every_short_variable_with_its_default() {
        let help = env_help();
        for (var, key) in SHORT_ENV {
            assert!(help.contains(var) && help.contains(key), "{var}: {help}");
        }
        assert!(help.contains("127.0.0.1:8080"), "{help}");
        assert!(help.contains("./data"), "{help}");
        assert!(help.contains("CADRE_SECRETS_KEY"), "{help}");
    }

    #[test]
    fn shipped_presets_judge_as_documented() {
        use cadre_actors::governance::engine::{RateState, ToolCall, check};
        use cadre_actors::governance::{OrgDocs, Verdict, compile};
        let c = Config::load(None, env(&[])).expect("defaults are valid");
        let catalog = c.governance.catalog().expect("shipped catalog is valid");
        let g = compile(&catalog, OrgDocs::default(), &c.governance.default_policy);
        let judge = |profile: &str, tool: &str| {
            let v = check(
                &g,
                g.profiles.get(profile).map(|p| &**p),
                None,
                &ToolCall {
                    tool,
                    arguments: None,
                    estimated_cost_micros: 0,
                    now_ms: 0,
                },
                &mut RateState::default(),
                || None,
            );
            match v {
                Verdict::Allow { .. } => "allow".to_string(),
                Verdict::Deny { reason, .. } => reason.as_str().to_string(),
                Verdict::NeedsApproval { .. } => "approval".to_string(),
            }
        };
        let table = [
            ("read_only", "files.read", "allow"),
            // No preset names hosts: HTTP tools need a profile with
            // `http_hosts` (arguments are not given here: no url).
            ("read_only", "http.get", "host_not_allowed"),
            ("read_only", "files.write", "side_effect_blocked"),
            ("read_only", "shell.exec", "not_allowed"),
            ("support_agent", "knowledge.search", "allow"),
            ("support_agent", "email.send", "approval"),
            ("support_agent", "payments.refund", "approval"),
            ("support_agent", "files.delete", "tool_blocked"),
            ("support_agent", "shell.exec", "not_allowed"),
            ("developer", "shell.exec", "allow"),
            ("developer", "files.delete", "approval"),
            ("developer", "http.request", "host_not_allowed"),
            ("developer", "payments.refund", "not_allowed"),
            ("full_access", "shell.exec", "allow"),
            ("full_access", "email.send", "allow"),
            ("full_access", "payments.refund", "approval"),
        ];
        for (profile, tool, want) in table {
            assert_eq!(judge(profile, tool), want, "{profile} / {tool}");
        }
        assert_eq!(c.governance.default_profile, "read_only");
    }
}
