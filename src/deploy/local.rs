//! The `local` target: the agent runtime as a child process of this binary
//! (`cadre runtime --config <dir>/runtime.json`), one working directory per
//! agent under `<data_dir>/agents/`.
//!
//! Runtimes outlive the control plane on purpose: a restart of `cadre serve`
//! must not stop the agents. The pid file lets a new control plane re-attach;
//! the runtime reconnects by itself. Every operation is idempotent and
//! serialized per deployment.
//!
//! A runtime this process started is waited for by a task of its own from
//! the moment it is spawned: it is reaped as soon as it exits (no zombie
//! lingers until someone probes), and its exit is reported at once
//! ([`LocalDeployer::on_exit`]) with its status and the end of its log, so
//! a runtime that cannot start is known to have failed when it exits, not
//! when the start timeout runs out.

use super::SealedEnv;
use async_trait::async_trait;
use cadre_actors::ports::{DeployError, DeployRequest, Deployer, DeploymentStatus};
use dashmap::DashMap;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::{Mutex, watch};

/// Lines of a runtime's log quoted when it exits.
const EXIT_LOG_LINES: usize = 5;
/// Characters of those lines at most (a log line can be long).
const EXIT_LOG_CHARS: usize = 600;

/// Called with the deployment (the agent id) when a runtime exits.
pub type ExitHook = Arc<dyn Fn(&str) + Send + Sync>;

/// What the runtime reads at start (`runtime.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// WebSocket URL of `/api/v1/runtime/connect`.
    pub connect_url: String,
    /// The agent.
    pub agent_id: String,
    /// Credential (`<agent id>.<secret>`); empty in generated files, where
    /// it comes from the environment as `CADRE_RUNTIME_TOKEN`.
    #[serde(default)]
    pub token: String,
    /// Heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Model to use.
    pub model: String,
    /// A script of steps to run instead of a model (tests and demos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<PathBuf>,
    /// The model provider tasks use (the API key is not here: it comes in
    /// the environment as `CADRE_LLM_API_KEY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm: Option<LlmSettings>,
    /// MCP servers whose tools the runtime offers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_servers: Vec<cadre_actors::domain::McpServerSpec>,
    /// What the control plane enforces for this agent (in generated files,
    /// for the operator to read; the runtime does not act on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governed: Option<Governed>,
}

/// The agent's permissions and limits as the control plane enforces them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Governed {
    /// Permission profile.
    pub profile: String,
    /// Skills the profile allows.
    pub skills: Vec<String>,
    /// Token budget per period.
    pub budget_tokens: Option<u64>,
    /// Cost budget per period, USD.
    pub budget_usd: Option<f64>,
    /// `daily`, `weekly` or `monthly`.
    pub budget_period: String,
    /// CPU limit in cores.
    pub cpus: f64,
    /// Memory limit in MiB.
    pub memory_mb: u64,
}

/// The provider settings a runtime needs (`[llm]` without the key's source).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LlmSettings {
    /// `openai` or `anthropic`.
    pub provider: String,
    /// Base URL of the API.
    pub base_url: String,
    /// Output tokens per call at most.
    pub max_output_tokens: u64,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Seconds per model response at most.
    pub timeout_seconds: u64,
    /// Ask for streamed responses (forwarded live as task events).
    #[serde(default)]
    pub stream: bool,
    /// Where the API key comes from (`CADRE_LLM_API_KEY` in the runtime's
    /// environment is filled from it), so a runtime started without one
    /// fails its tasks with `no_model_provider` naming it instead of asking
    /// the provider without a key. `None`: the provider needs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_from: Option<String>,
}

impl From<&crate::config::LlmConfig> for LlmSettings {
    fn from(c: &crate::config::LlmConfig) -> LlmSettings {
        LlmSettings {
            provider: c.provider.clone(),
            base_url: c.base_url.clone(),
            max_output_tokens: c.max_output_tokens,
            temperature: c.temperature,
            timeout_seconds: c.timeout_seconds,
            stream: c.stream,
            key_from: (!c.api_key_env.is_empty()).then(|| {
                format!(
                    "the control plane's environment variable {} (llm.api_key_env)",
                    c.api_key_env
                )
            }),
        }
    }
}

impl LlmSettings {
    /// These settings with an agent's own overrides applied.
    pub fn with(&self, spec: &cadre_actors::domain::LlmSpec) -> LlmSettings {
        LlmSettings {
            provider: spec
                .provider
                .clone()
                .unwrap_or_else(|| self.provider.clone()),
            base_url: spec
                .base_url
                .clone()
                .unwrap_or_else(|| self.base_url.clone()),
            max_output_tokens: spec.max_output_tokens.unwrap_or(self.max_output_tokens),
            temperature: spec.temperature.or(self.temperature),
            timeout_seconds: spec.timeout_seconds.unwrap_or(self.timeout_seconds),
            stream: spec.stream.unwrap_or(self.stream),
            key_from: match &spec.api_key_secret {
                Some(name) => Some(format!(
                    "the organization secret {name} (llm.api_key_secret)"
                )),
                None => self.key_from.clone(),
            },
        }
    }
}

#[derive(Default)]
struct Slot {
    /// The runtime this process started, while it may still run.
    child: Option<Started>,
    /// Why the last runtime this process started is gone.
    exited: Option<String>,
}

/// A runtime started by this process: its pid, and its exit once reaped
/// (by the task that waits for it).
struct Started {
    pid: i32,
    /// Where its output begins in `runtime.log` (earlier runs' lines are
    /// not its reason).
    log_from: u64,
    exit: watch::Receiver<Option<std::process::ExitStatus>>,
}

impl Started {
    fn exit_status(&self) -> Option<std::process::ExitStatus> {
        *self.exit.borrow()
    }
}

/// The local deployer.
pub struct LocalDeployer {
    root: PathBuf,
    runtime_bin: PathBuf,
    connect_url: String,
    stop_grace: Duration,
    script_dir: Option<PathBuf>,
    llm: Option<(LlmSettings, Option<String>)>,
    sealer: Option<crate::secrets::Sealer>,
    slots: DashMap<String, Arc<Mutex<Slot>>>,
    on_exit: Arc<std::sync::OnceLock<ExitHook>>,
}

impl std::fmt::Debug for LocalDeployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDeployer")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn err(message: impl Into<String>) -> DeployError {
    DeployError {
        target: "local",
        message: message.into(),
    }
}

/// Whether `pid` is a live (non-zombie) process running `cadre runtime` for `dir`.
fn pid_is_our_runtime(pid: i32, dir: &Path) -> bool {
    if pid <= 0 || kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state letter follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z') | Some('X') | None) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("runtime") && cmdline.contains(&*dir.to_string_lossy())
}

impl LocalDeployer {
    /// A deployer keeping deployments under `root`, starting `runtime_bin`,
    /// whose runtimes dial `connect_url`.
    pub fn new(
        root: PathBuf,
        runtime_bin: PathBuf,
        connect_url: String,
        stop_grace: Duration,
    ) -> LocalDeployer {
        LocalDeployer {
            root,
            runtime_bin,
            connect_url,
            stop_grace,
            slots: DashMap::new(),
            script_dir: None,
            llm: None,
            sealer: None,
            on_exit: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// Calls `hook` with the deployment whenever a runtime this process
    /// started exits (set once, after the actors that want to hear it exist).
    pub fn on_exit(&self, hook: ExitHook) {
        let _ = self.on_exit.set(hook);
    }

    /// Runtimes call this provider, with this API key (handed over in their
    /// environment).
    pub fn with_llm(mut self, settings: LlmSettings, api_key: Option<String>) -> LocalDeployer {
        self.llm = Some((settings, api_key));
        self
    }

    /// Opens the organization secrets agents name (their model API keys).
    pub fn with_sealer(mut self, sealer: crate::secrets::Sealer) -> LocalDeployer {
        self.sealer = Some(sealer);
        self
    }

    /// The runtime's environment: the server's API key, or the agent's own
    /// (opened from the sealed file `deploy` wrote).
    fn runtime_env(&self, dir: &Path) -> Result<Vec<(String, String)>, DeployError> {
        let sealed: SealedEnv = match std::fs::read(dir.join("runtime.env.sealed")) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| err(format!("runtime.env.sealed unreadable: {e}")))?,
            Err(_) => SealedEnv::default(),
        };
        let server_key = self.llm.as_ref().and_then(|(_, k)| k.as_deref());
        Ok(sealed
            .open(server_key, self.sealer.as_ref())
            .map_err(err)?
            .into_iter()
            .collect())
    }

    /// Runtimes read their script from `<dir>/<agent id>.jsonl`.
    pub fn with_script_dir(mut self, dir: Option<PathBuf>) -> LocalDeployer {
        self.script_dir = dir;
        self
    }

    fn dir(&self, deployment: &str) -> Result<PathBuf, DeployError> {
        // Deployment refs are agent ids we generated; refuse anything that could
        // escape the root.
        if deployment.is_empty()
            || !deployment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(err(format!("invalid deployment ref {deployment:?}")));
        }
        Ok(self.root.join(deployment))
    }

    fn slot(&self, deployment: &str) -> Arc<Mutex<Slot>> {
        self.slots
            .entry(deployment.to_string())
            .or_default()
            .clone()
    }

    fn pid_from_file(dir: &Path) -> Option<i32> {
        std::fs::read_to_string(dir.join("runtime.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The pid of the live runtime, if any (our child, or one re-attached by pid file).
    fn live_pid(slot: &mut Slot, dir: &Path) -> Option<i32> {
        if let Some(started) = slot.child.as_ref() {
            match started.exit_status() {
                None => return Some(started.pid),
                Some(status) => {
                    slot.exited = Some(exit_reason(status, dir, started.log_from));
                    slot.child = None;
                    // Its pid may belong to another process by now.
                    return None;
                }
            }
        }
        Self::pid_from_file(dir).filter(|p| pid_is_our_runtime(*p, dir))
    }

    async fn stop_locked(&self, slot: &mut Slot, dir: &Path) -> Result<(), DeployError> {
        let Some(pid) = Self::live_pid(slot, dir) else {
            let _ = std::fs::remove_file(dir.join("runtime.pid"));
            return Ok(());
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + self.stop_grace;
        loop {
            if Self::live_pid(slot, dir).is_none() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                if let Some(started) = slot.child.take() {
                    // Its waiting task reaps it.
                    let mut exit = started.exit;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        exit.wait_for(|e| e.is_some()),
                    )
                    .await;
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Stopped on purpose: not a failure to report.
        slot.exited = None;
        let _ = std::fs::remove_file(dir.join("runtime.pid"));
        Ok(())
    }
}

/// Why a runtime is gone: its exit status and the last lines of its log
/// (what it printed before it exited, e.g. that it could not read its config).
fn exit_reason(status: std::process::ExitStatus, dir: &Path, log_from: u64) -> String {
    use std::os::unix::process::ExitStatusExt;
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("runtime exited with status {code}"),
        (None, Some(sig)) => format!(
            "runtime killed by signal {sig} ({})",
            Signal::try_from(sig)
                .map(|s| s.as_str())
                .unwrap_or("unknown")
        ),
        _ => format!("runtime exited: {status}"),
    };
    let tail = tail_lines(
        &String::from_utf8_lossy(&log_since(dir, log_from)),
        EXIT_LOG_LINES,
    );
    if tail.is_empty() {
        return format!("{how}; its log is empty");
    }
    let tail = cadre_actors::domain::clip_tail(&tail.replace('\n', " | "), EXIT_LOG_CHARS);
    format!("{how}; its log ends: {tail}")
}

/// What `runtime.log` holds from `offset` on, its last 64 KiB at most (the
/// log grows across runs; only this run's end is wanted).
fn log_since(dir: &Path, offset: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    const MAX: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(dir.join("runtime.log")) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = offset.max(len.saturating_sub(MAX)).min(len);
    let mut out = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_ok() {
        let _ = f.take(MAX).read_to_end(&mut out);
    }
    out
}

/// The last `n` lines of `text` (fewer if it has fewer), joined by `\n`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(n)..].join("\n")
}

#[async_trait]
impl Deployer for LocalDeployer {
    async fn provision(&self, req: &DeployRequest) -> Result<String, DeployError> {
        let deployment = req.agent_id.to_string();
        let dir = self.dir(&deployment)?;
        let path = dir.clone();
        tokio::task::spawn_blocking(move || crate::files::private_dir(&path))
            .await
            .map_err(|e| err(e.to_string()))?
            .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
        Ok(deployment)
    }

    async fn deploy(&self, deployment: &str, req: &DeployRequest) -> Result<(), DeployError> {
        let dir = self.dir(deployment)?;
        let slot = self.slot(deployment);
        let _guard = slot.lock().await;
        let sealed = SealedEnv::of(req).map_err(err)?;
        let config = super::runtime_config(
            req,
            &self.connect_url,
            self.llm.as_ref().map(|(s, _)| s),
            self.script_dir
                .as_ref()
                .map(|d| d.join(format!("{}.jsonl", req.agent_id))),
        );
        let bytes = serde_json::to_vec_pretty(&config).map_err(|e| err(e.to_string()))?;
        let env = serde_json::to_vec(&sealed).map_err(|e| err(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            crate::files::write_private(&dir.join("runtime.json"), &bytes)?;
            crate::files::write_private(&dir.join("runtime.env.sealed"), &env)
        })
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(|e| err(format!("writing the runtime's configuration: {e}")))
    }

    async fn start(&self, deployment: &str) -> Result<(), DeployError> {
        let dir = self.dir(deployment)?;
        let slot = self.slot(deployment);
        let mut slot = slot.lock().await;
        if Self::live_pid(&mut slot, &dir).is_some() {
            return Ok(());
        }
        let config = dir.join("runtime.json");
        if !config.exists() {
            return Err(err("not deployed: runtime.json missing"));
        }
        let log = crate::files::append_private(&dir.join("runtime.log"))
            .map_err(|e| err(format!("opening runtime.log: {e}")))?;
        let log_from = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log2 = log.try_clone().map_err(|e| err(e.to_string()))?;
        let mut cmd = Command::new(&self.runtime_bin);
        cmd.env_remove("CADRE_LLM_API_KEY");
        cmd.envs(self.runtime_env(&dir)?);
        let mut child = cmd
            .arg("runtime")
            .arg("--config")
            .arg(&config)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            // Own process group: a Ctrl-C aimed at the control plane does not
            // take the agents down with it.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| err(format!("spawning {}: {e}", self.runtime_bin.display())))?;
        let pid = child.id().map(|p| p as i32).unwrap_or_default();
        // Waited for from now on, whatever happens below: reaped the moment
        // it exits, and its exit reported.
        let (tx, exit) = watch::channel(None);
        let hook = self.on_exit.clone();
        let name = deployment.to_string();
        tokio::spawn(async move {
            let status = child.wait().await;
            if let Ok(status) = status {
                let _ = tx.send(Some(status));
            } else {
                // Cannot be waited for (should not happen): report it gone,
                // as status 255 rather than a success it was not.
                let _ = tx.send(Some(std::os::unix::process::ExitStatusExt::from_raw(
                    0xff00,
                )));
            }
            if let Some(hook) = hook.get() {
                hook(&name);
            }
        });
        slot.exited = None;
        slot.child = Some(Started {
            pid,
            log_from,
            exit,
        });
        crate::files::write_private(&dir.join("runtime.pid"), pid.to_string().as_bytes())
            .map_err(|e| err(format!("writing pid file: {e}")))?;
        Ok(())
    }

    async fn stop(&self, deployment: &str) -> Result<(), DeployError> {
        let dir = self.dir(deployment)?;
        let slot = self.slot(deployment);
        let mut slot = slot.lock().await;
        self.stop_locked(&mut slot, &dir).await
    }

    async fn destroy(&self, deployment: &str) -> Result<(), DeployError> {
        let dir = self.dir(deployment)?;
        let slot = self.slot(deployment);
        {
            let mut guard = slot.lock().await;
            self.stop_locked(&mut guard, &dir).await?;
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(format!("removing {}: {e}", dir.display()))),
            }
        }
        self.slots.remove(deployment);
        Ok(())
    }

    async fn status(&self, deployment: &str) -> Result<DeploymentStatus, DeployError> {
        let dir = self.dir(deployment)?;
        if !dir.exists() {
            return Ok(DeploymentStatus::Missing);
        }
        let slot = self.slot(deployment);
        let mut slot = slot.lock().await;
        Ok(match Self::live_pid(&mut slot, &dir) {
            Some(_) => DeploymentStatus::Running,
            None => DeploymentStatus::Stopped(
                slot.exited
                    .clone()
                    .unwrap_or_else(|| "runtime process not found".into()),
            ),
        })
    }

    async fn logs(&self, deployment: &str, lines: usize) -> Result<String, DeployError> {
        let dir = self.dir(deployment)?;
        let text = tokio::fs::read_to_string(dir.join("runtime.log"))
            .await
            .unwrap_or_default();
        Ok(tail_lines(&text, lines))
    }
}
