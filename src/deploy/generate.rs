//! What a target needs to run an agent, generated from its definition: the
//! runtime's configuration file, an env file, a docker-compose file and a
//! hardened systemd unit. `GET /api/v1/agents/{id}/config?format=…` serves
//! them to operators who deploy by hand; the SSH target installs the same
//! unit and files.
//!
//! No secret value is ever in them: the runtime token and the model key are
//! empty variables of the env file, to be filled in where the runtime runs.
//! Every value that comes from the agent's definition is quoted for the
//! format it lands in (JSON strings in YAML, a restricted alphabet in the
//! unit), so a name cannot add a line to a file.

use super::{Governed, LlmSettings, RuntimeConfig};
use crate::config::DockerDeployConfig;
use cadre_actors::domain::{AgentView, DeployTarget, RuntimeSpec};
use cadre_actors::ports::DeployRequest;

/// Where the runtime's files live on a host (systemd unit, SSH target).
pub fn host_config_dir(agent_id: &str) -> String {
    format!("/etc/cadre/agents/{agent_id}")
}

/// The runtime's working directory on a host (its `StateDirectory`).
pub fn host_state_dir(agent_id: &str) -> String {
    format!("/var/lib/cadre/agents/{agent_id}")
}

/// What a systemd unit for one agent says.
#[derive(Debug)]
pub struct UnitSpec<'a> {
    /// The agent's name (comments and description).
    pub name: &'a str,
    /// Its id.
    pub id: &'a str,
    /// Path of the `cadre` binary on the host.
    pub bin: &'a str,
    /// CPU limit in cores.
    pub cpus: f64,
    /// Memory limit in MiB.
    pub memory_mb: u64,
    /// Tasks at most.
    pub pids: i64,
}

/// A hardened unit running the agent's runtime under a dynamic user:
/// config in [`host_config_dir`], working directory [`host_state_dir`].
pub fn systemd_unit(u: &UnitSpec<'_>) -> String {
    let short: String =
        u.id.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
    let quota = (u.cpus * 100.0).round().max(1.0) as u64;
    format!(
        "# Cadre agent {name} ({id}).\n\
         # Install as /etc/systemd/system/cadre-agent-{id}.service with\n\
         # {cfg}/runtime.json (0644: nothing secret) and {cfg}/runtime.env\n\
         # (0600, root: the token and secrets; systemd reads it).\n\
         [Unit]\n\
         Description=Cadre agent runtime {name} ({id})\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         StartLimitIntervalSec=300\n\
         StartLimitBurst=5\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={bin} runtime --config {cfg}/runtime.json\n\
         EnvironmentFile={cfg}/runtime.env\n\
         User=cadre-{short}\n\
         DynamicUser=yes\n\
         StateDirectory=cadre/agents/{id}\n\
         WorkingDirectory={state}\n\
         Restart=on-failure\n\
         RestartSec=5s\n\
         TimeoutStopSec=30s\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         RestrictSUIDSGID=yes\n\
         RestrictRealtime=yes\n\
         RestrictNamespaces=yes\n\
         LockPersonality=yes\n\
         MemoryDenyWriteExecute=yes\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n\
         SystemCallArchitectures=native\n\
         CapabilityBoundingSet=\n\
         AmbientCapabilities=\n\
         UMask=0077\n\
         MemoryMax={mem}M\n\
         CPUQuota={quota}%\n\
         TasksMax={pids}\n\
         LimitNOFILE=4096\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        name = plain(u.name),
        id = plain(u.id),
        bin = u.bin,
        cfg = host_config_dir(u.id),
        state = host_state_dir(u.id),
        mem = u.memory_mb,
        pids = u.pids,
    )
}

/// The formats `GET /agents/{id}/config` serves.
pub const FORMATS: &[&str] = &["runtime", "env", "compose", "systemd"];

/// An agent's definition and the server settings its files depend on.
#[derive(Debug)]
pub struct Generator<'a> {
    /// The agent as the API shows it.
    pub view: &'a AgentView,
    /// URL of the control plane's runtime endpoint as the runtime reaches it.
    pub connect_url: &'a str,
    /// The server's model provider defaults.
    pub llm: &'a LlmSettings,
    /// The server's container defaults.
    pub docker: &'a DockerDeployConfig,
    /// Effective permission profile.
    pub profile: String,
    /// Skills that profile allows.
    pub skills: Vec<String>,
    /// Path of the `cadre` binary on the host (systemd).
    pub runtime_bin: &'a str,
}

/// Only the characters that mean nothing to a unit file or a shell.
fn plain(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " _.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A YAML double-quoted scalar (JSON strings are valid YAML).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Generator<'_> {
    fn id(&self) -> &str {
        self.view.id.as_str()
    }

    fn cpus(&self) -> f64 {
        self.view.deployment.docker.cpus.unwrap_or(self.docker.cpus)
    }

    fn memory_mb(&self) -> u64 {
        self.view
            .deployment
            .docker
            .memory_mb
            .unwrap_or(self.docker.memory_mb)
    }

    /// The runtime's configuration (`runtime.json`), without its token.
    pub fn runtime_config(&self) -> RuntimeConfig {
        let v = self.view;
        let req = DeployRequest {
            agent_id: v.id.clone(),
            org_id: v.org_id.clone(),
            target: DeployTarget::parse(&v.deployment.target).unwrap_or_default(),
            model: v.model.clone().unwrap_or_default(),
            runtime_token: String::new(),
            runtime: RuntimeSpec {
                llm: v.llm.clone(),
                mcp_servers: v.mcp_servers.clone(),
                docker: v.deployment.docker.clone(),
                ssh: v.deployment.ssh.clone(),
                fly: v.deployment.fly.clone(),
                railway: v.deployment.railway.clone(),
                knowledge: v.knowledge.clone(),
            },
            secrets: Default::default(),
            heartbeat_interval_ms: cadre_actors::context::Settings::heartbeat_interval(
                std::time::Duration::from_millis(v.health.interval_ms),
            )
            .as_millis() as u64,
        };
        let mut config = super::runtime_config(&req, self.connect_url, Some(self.llm), None);
        // Deployed by hand, the key is whatever runtime.env holds.
        if let Some(llm) = config.llm.as_mut()
            && llm.key_from.is_some()
        {
            llm.key_from = Some("CADRE_LLM_API_KEY (runtime.env)".into());
        }
        config.governed = Some(Governed {
            profile: self.profile.clone(),
            skills: self.skills.clone(),
            budget_tokens: v.budget.monthly_tokens,
            budget_usd: v.budget.monthly_cost_usd,
            budget_period: v.budget.period.as_str().to_string(),
            cpus: self.cpus(),
            memory_mb: self.memory_mb(),
        });
        config
    }

    /// `runtime.json`.
    pub fn runtime(&self) -> String {
        serde_json::to_string_pretty(&self.runtime_config()).unwrap_or_default() + "\n"
    }

    /// `runtime.env`: the variables the runtime needs besides its file,
    /// empty, with where each value comes from.
    pub fn env(&self) -> String {
        let mut out = format!(
            "# Cadre runtime environment for agent {} ({}).\n\
             # Fill in the values where the runtime runs; keep this file private (mode 0600).\n\
             # The runtime token: issued by Cadre when it deploys the agent (see docs/deploy.md).\n\
             {}=\n",
            plain(&self.view.name),
            self.id(),
            super::TOKEN_ENV
        );
        match &self.view.llm.api_key_secret {
            Some(name) => out.push_str(&format!(
                "# The model provider's key: the organization secret {}.\nCADRE_LLM_API_KEY=\n",
                plain(name)
            )),
            None => out.push_str("# The model provider's key.\nCADRE_LLM_API_KEY=\n"),
        }
        out
    }

    /// `docker-compose.yml`: the container as the Docker target runs it.
    pub fn compose(&self) -> String {
        let id = self.id();
        let image = self
            .view
            .deployment
            .docker
            .image
            .clone()
            .unwrap_or_else(|| self.docker.image.clone());
        let uid = super::image::RUNTIME_UID;
        format!(
            "# Cadre agent {name} ({id}), deployed by hand with docker compose.\n\
             # Next to this file: runtime.json and runtime.env (GET /api/v1/agents/{id}/config?format=runtime|env).\n\
             services:\n  \
               cadre-{id}:\n    \
                 image: {image}\n    \
                 entrypoint: [\"/cadre\"]\n    \
                 command: [\"runtime\", \"--config\", \"/etc/cadre/runtime.json\"]\n    \
                 env_file: [\"runtime.env\"]\n    \
                 volumes:\n      \
                   - \"./runtime.json:/etc/cadre/runtime.json:ro\"\n      \
                   - \"workspace:/agent\"\n    \
                 working_dir: \"/agent\"\n    \
                 user: \"{uid}:{uid}\"\n    \
                 read_only: true\n    \
                 tmpfs: [\"/tmp:rw,noexec,nosuid,size=64m\"]\n    \
                 cap_drop: [\"ALL\"]\n    \
                 security_opt: [\"no-new-privileges:true\"]\n    \
                 privileged: false\n    \
                 cpus: {cpus}\n    \
                 mem_limit: \"{mem}m\"\n    \
                 pids_limit: {pids}\n    \
                 restart: \"unless-stopped\"\n    \
                 extra_hosts: [\"host.docker.internal:host-gateway\"]\n    \
                 labels:\n      \
                   cadre.agent: {qid}\n      \
                   cadre.org: {org}\n\
             volumes:\n  \
               workspace: {{}}\n",
            name = plain(&self.view.name),
            image = q(&image),
            cpus = self.cpus(),
            mem = self.memory_mb(),
            pids = self.docker.pids_limit,
            qid = q(id),
            org = q(self.view.org_id.as_str()),
        )
    }

    /// `cadre-agent-<id>.service`: a hardened unit running the runtime as a
    /// dedicated (dynamic) user that owns nothing but its state directory.
    pub fn systemd(&self) -> String {
        systemd_unit(&UnitSpec {
            name: &self.view.name,
            id: self.id(),
            bin: self.runtime_bin,
            cpus: self.cpus(),
            memory_mb: self.memory_mb(),
            pids: self.docker.pids_limit,
        })
    }

    /// The file for `format` (one of [`FORMATS`]) with its media type and
    /// file name, or `None` for an unknown format.
    pub fn render(&self, format: &str) -> Option<(&'static str, String, String)> {
        let id = self.id();
        Some(match format {
            "runtime" => ("application/json", "runtime.json".into(), self.runtime()),
            "env" => (
                "text/plain; charset=utf-8",
                "runtime.env".into(),
                self.env(),
            ),
            "compose" => (
                "application/yaml",
                "docker-compose.yml".into(),
                self.compose(),
            ),
            "systemd" => (
                "text/plain; charset=utf-8",
                format!("cadre-agent-{id}.service"),
                self.systemd(),
            ),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str) -> AgentView {
        serde_json::from_value(serde_json::json!({
            "id": "0190e0c8-0000-7000-8000-000000000001",
            "org_id": "0190e0c8-0000-7000-8000-0000000000aa",
            "name": name, "role": "r", "model": "gpt-4o",
            "state": "ready", "state_reason": null, "allowed_commands": [],
            "missing_fields": [], "restart_count": 0,
            "deployment": { "target": "docker", "ref": null, "docker": { "memory_mb": 300 } },
            "health": { "interval_ms": 2000, "failure_threshold": 3 },
            "budget": { "monthly_tokens": 1000, "monthly_cost_usd": 2.5, "period": "monthly" },
            "profile": null,
            "llm": { "api_key_secret": "openai" },
            "usage": { "tokens": 0, "cost_usd": 0.0, "period": "2026-11" },
            "created_at": "2026-11-22T00:00:00Z", "updated_at": "2026-11-22T00:00:00Z"
        }))
        .expect("a valid view")
    }

    fn docker() -> DockerDeployConfig {
        crate::config::Config::load(None, std::iter::empty())
            .expect("defaults")
            .deploy
            .docker
    }

    fn llm() -> LlmSettings {
        LlmSettings {
            provider: "openai".into(),
            base_url: "https://api.openai.com/v1".into(),
            max_output_tokens: 1024,
            temperature: None,
            timeout_seconds: 60,
            stream: false,
            key_from: None,
        }
    }

    #[test]
    fn a_hostile_name_cannot_add_lines_or_directives() {
        let v = view("x\nExecStartPre=/bin/rm -rf /\n%h\"]: {a: 1}");
        let (d, l) = (docker(), llm());
        let g = Generator {
            view: &v,
            connect_url: "ws://127.0.0.1:8080/api/v1/runtime/connect",
            llm: &l,
            docker: &d,
            profile: "read_only".into(),
            skills: vec!["files".into()],
            runtime_bin: "/usr/local/bin/cadre",
        };
        let unit = g.systemd();
        let directives: Vec<&str> = unit.lines().filter(|l| l.starts_with("Exec")).collect();
        assert_eq!(directives.len(), 1, "{unit}");
        assert!(directives[0].starts_with("ExecStart=/usr/local/bin/cadre runtime"));
        let description = unit
            .lines()
            .find(|l| l.starts_with("Description="))
            .unwrap_or_default();
        assert!(
            !description.contains('%'),
            "no specifier from the name: {unit}"
        );
        let compose = g.compose();
        assert!(!compose.lines().any(|l| l.starts_with("Exec")), "{compose}");
        assert!(
            compose.contains("image: \"cadre-runtime:latest\""),
            "{compose}"
        );
        let env = g.env();
        assert_eq!(
            env.lines().filter(|l| !l.starts_with('#')).count(),
            2,
            "{env}"
        );
        // The runtime file: no token, the agent's own settings over the defaults.
        let rt: RuntimeConfig = serde_json::from_str(&g.runtime()).expect("runtime.json parses");
        assert!(rt.token.is_empty());
        assert_eq!(rt.model, "gpt-4o");
        assert_eq!(rt.heartbeat_interval_ms, 1000);
        let gov = rt.governed.expect("governed");
        assert_eq!((gov.memory_mb, gov.budget_tokens), (300, Some(1000)));
        assert!(g.render("nope").is_none());
        for f in FORMATS {
            assert!(g.render(f).is_some(), "{f}");
        }
    }
}
