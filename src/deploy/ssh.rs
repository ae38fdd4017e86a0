//! The `ssh` target: each agent's runtime as a process on a machine Cadre
//! reaches over SSH (russh), under systemd when the machine runs it and the
//! login is root, else as a background process with a pid file.
//!
//! Files travel over SFTP, never inside a command line: the runtime binary
//! (once per content hash, `<dir>/bin/cadre-<hash>`), the runtime's
//! configuration (no secret in it) and an env file (mode 0600) with the
//! runtime token and the secrets the agent names. The commands Cadre runs
//! are constant scripts; the only values they see are paths, passed as
//! positional arguments and quoted for the remote shell.
//!
//! The host key is checked on every connection: against the agent's
//! `host_key` when it names one, else against Cadre's own known-hosts file,
//! where the key seen first is pinned. A changed key refuses the
//! connection. The login key is an organization secret, opened only for the
//! connection.
//!
//! A deployment's handle holds where it went (host, port, user, directory,
//! supervisor, the names of the org and key secret), so every later call
//! reaches the same machine even after the agent's settings change or the
//! server restarts.

use super::{LlmSettings, SealedEnv, SecretSource};
use crate::config::SshDeployConfig;
use async_trait::async_trait;
use cadre_actors::ports::{DeployError, DeployRequest, Deployer, DeploymentStatus};
use dashmap::DashMap;
use russh::ChannelMsg;
use russh::client::{self, AuthResult, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Mutex, OnceCell};

fn err(message: impl Into<String>) -> DeployError {
    DeployError {
        target: "ssh",
        message: message.into(),
    }
}

/// Parses a host key as `ssh-keyscan` or `known_hosts` prints it
/// (`ssh-ed25519 AAAA… [comment]`).
pub fn parse_host_key(text: &str) -> Result<PublicKey, String> {
    let mut parts = text.split_whitespace();
    let (Some(_alg), Some(b64)) = (parts.next(), parts.next()) else {
        return Err("a public key as `<algorithm> <base64>` (ssh-keyscan prints it)".into());
    };
    russh::keys::parse_public_key_base64(b64).map_err(|e| format!("not a public key: {e}"))
}

/// Quotes `s` for a POSIX shell: one single-quoted word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `sh -c '<script>' sh <args…>`: a constant script, values only as
/// quoted positional parameters.
fn script(body: &str, args: &[&str]) -> String {
    debug_assert!(!body.contains('\''));
    let mut cmd = format!("sh -c '{body}' sh");
    for a in args {
        cmd.push(' ');
        cmd.push_str(&sh_quote(a));
    }
    cmd
}

/// An env file the chosen supervisor reads: systemd's `EnvironmentFile`
/// (double quotes, backslash escapes) or a shell's `.` (single quotes).
/// Values with control characters cannot be written safely and are refused.
pub fn env_file(env: &BTreeMap<String, String>, systemd: bool) -> Result<String, String> {
    let mut out = String::new();
    for (k, v) in env {
        if v.chars().any(char::is_control) {
            return Err(format!("the value of {k} contains a control character"));
        }
        if systemd {
            let v = v.replace('\\', r"\\").replace('"', "\\\"");
            out.push_str(&format!("{k}=\"{v}\"\n"));
        } else {
            out.push_str(&format!("{k}={}\n", sh_quote(v)));
        }
    }
    Ok(out)
}

/// Where a deployment went; serialized after `ssh:` as its handle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SshHandle {
    /// Organization (whose secret holds the key).
    pub org: String,
    /// Agent.
    pub agent: String,
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Secret with the private key.
    pub key_secret: String,
    /// Pinned host key, when the agent named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// Absolute base directory on the host.
    pub dir: String,
    /// Whether systemd supervises the runtime.
    pub systemd: bool,
}

impl SshHandle {
    fn agent_dir(&self) -> String {
        format!("{}/agents/{}", self.dir, self.agent)
    }

    /// One kept connection per agent and login (an OpenSSH server allows
    /// 10 sessions per connection; agents' calls never need that many).
    fn pool_key(&self) -> String {
        format!(
            "{}|{}@{}:{}|{}/{}|{}",
            self.agent,
            self.user,
            self.host,
            self.port,
            self.org,
            self.key_secret,
            self.host_key.as_deref().unwrap_or("")
        )
    }

    fn unit(&self) -> String {
        format!("cadre-agent-{}.service", self.agent)
    }

    fn unit_path(&self) -> String {
        format!("/etc/systemd/system/{}", self.unit())
    }

    /// Where the config and env file go: systemd's layout (as the generated
    /// unit expects it) or the agent's directory.
    fn config_dir(&self) -> String {
        if self.systemd {
            super::generate::host_config_dir(&self.agent)
        } else {
            self.agent_dir()
        }
    }
}

/// Checks the host key; records why it refused.
struct Client {
    host: String,
    port: u16,
    pinned: Option<PublicKey>,
    known_hosts: PathBuf,
    pin_lock: Arc<std::sync::Mutex<()>>,
    refused: Arc<std::sync::Mutex<Option<String>>>,
}

impl Client {
    fn check(&self, key: &PublicKey) -> Result<(), String> {
        let fp = key.fingerprint(Default::default());
        if let Some(pinned) = &self.pinned {
            return if pinned == key {
                Ok(())
            } else {
                Err(format!(
                    "host key of {}:{} is {fp}, not the configured {}: refusing to connect",
                    self.host,
                    self.port,
                    pinned.fingerprint(Default::default())
                ))
            };
        }
        let _guard = self.pin_lock.lock().unwrap_or_else(|p| p.into_inner());
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => Ok(()),
            Ok(false) => {
                russh::keys::known_hosts::learn_known_hosts_path(
                    &self.host,
                    self.port,
                    key,
                    &self.known_hosts,
                )
                .map_err(|e| format!("pinning the host key: {e}"))?;
                tracing::info!(host = %self.host, port = self.port, fingerprint = %fp, "pinned a new SSH host key");
                Ok(())
            }
            Err(russh::keys::Error::KeyChanged { line }) => Err(format!(
                "host key of {}:{} changed (now {fp}; line {line} of {} pins another): refusing to connect",
                self.host,
                self.port,
                self.known_hosts.display()
            )),
            Err(e) => Err(format!("reading {}: {e}", self.known_hosts.display())),
        }
    }
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let outcome = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.check(key),
            PublicKeyOrCertificate::Certificate(_) => {
                Err("the host offered a certificate; pin its plain host key instead".into())
            }
        };
        match outcome {
            Ok(()) => Ok(true),
            Err(why) => {
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                Ok(false)
            }
        }
    }
}

/// What one remote command did.
struct Output {
    code: Option<u32>,
    stdout: String,
    stderr: String,
}

/// One authenticated connection.
struct Session {
    handle: Handle<Client>,
}

impl Session {
    async fn exec(&self, command: &str) -> Result<Output, DeployError> {
        let mut ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| err(format!("opening a session: {e}")))?;
        ch.exec(true, command)
            .await
            .map_err(|e| err(format!("running a command: {e}")))?;
        let (mut out, mut errs, mut code) = (Vec::new(), Vec::new(), None);
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => errs.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                _ => {}
            }
        }
        Ok(Output {
            code,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: String::from_utf8_lossy(&errs).into_owned(),
        })
    }

    /// Runs `command`; anything but exit status 0 is an error with its stderr.
    async fn run(&self, what: &str, command: &str) -> Result<String, DeployError> {
        let o = self.exec(command).await?;
        if o.code == Some(0) {
            Ok(o.stdout)
        } else {
            Err(err(format!(
                "{what} failed (exit {}): {}",
                o.code.map_or("none".into(), |c| c.to_string()),
                o.stderr.trim()
            )))
        }
    }

    async fn sftp(&self) -> Result<SftpSession, DeployError> {
        let ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| err(format!("opening a session: {e}")))?;
        ch.request_subsystem(true, "sftp")
            .await
            .map_err(|e| err(format!("starting SFTP: {e}")))?;
        SftpSession::new(ch.into_stream())
            .await
            .map_err(|e| err(format!("starting SFTP: {e}")))
    }

    async fn close(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// Writes what `data` reads to `path` with `mode`, replacing it: through a
/// temporary name of its own, so a reader never sees half a file and two
/// writers never share one.
async fn put(
    sftp: &SftpSession,
    path: &str,
    mut data: impl tokio::io::AsyncRead + Unpin,
    mode: u32,
) -> Result<(), DeployError> {
    let tmp = format!("{path}.{}.part", uuid::Uuid::now_v7().simple());
    let attrs = FileAttributes {
        permissions: Some(mode),
        ..FileAttributes::empty()
    };
    let mut f = sftp
        .open_with_flags_and_attributes(
            &tmp,
            OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
            attrs.clone(),
        )
        .await
        .map_err(|e| err(format!("creating {tmp}: {e}")))?;
    let copied = async {
        tokio::io::copy(&mut data, &mut f).await?;
        f.shutdown().await
    }
    .await;
    drop(f);
    let done = async {
        copied.map_err(|e| err(format!("writing {tmp}: {e}")))?;
        if sftp.try_exists(path).await.unwrap_or(false) {
            sftp.remove_file(path)
                .await
                .map_err(|e| err(format!("replacing {path}: {e}")))?;
        }
        sftp.rename(&tmp, path)
            .await
            .map_err(|e| err(format!("moving {tmp} to {path}: {e}")))
    }
    .await;
    if done.is_err() {
        let _ = sftp.remove_file(&tmp).await;
    }
    done
}

/// Creates `path` and its parents (`mode` for new ones).
async fn mkdirs(sftp: &SftpSession, path: &str, mode: u32) -> Result<(), DeployError> {
    let mut at = String::new();
    for part in path.split('/') {
        if part.is_empty() {
            at.push('/');
            continue;
        }
        if !at.is_empty() && !at.ends_with('/') {
            at.push('/');
        }
        at.push_str(part);
        if !sftp.try_exists(&at).await.unwrap_or(false) {
            sftp.create_dir(&at)
                .await
                .map_err(|e| err(format!("creating {at}: {e}")))?;
            let _ = sftp
                .set_metadata(
                    &at,
                    FileAttributes {
                        permissions: Some(mode),
                        ..FileAttributes::empty()
                    },
                )
                .await;
        }
    }
    Ok(())
}

/// Is systemd the supervisor here: running as PID 1 and we are root.
const DETECT_SYSTEMD: &str =
    r#"test -d /run/systemd/system && test "$(id -u)" = 0 && command -v systemctl >/dev/null"#;

/// Starts the runtime in the background in its own session; its pid and,
/// when it ends, its exit status are kept beside it. `$1` agent dir (with
/// `bin`, the binary's path, written at deploy).
const START: &str = r#"cd "$1" || exit 3
if [ -f pid ] && kill -0 -- "-$(cat pid)" 2>/dev/null; then exit 0; fi
rm -f exit
setsid sh -c "set -a; . ./env; set +a; \"\$0\" runtime --config runtime.json; echo \$? > exit" "$(cat bin)" >>log 2>&1 </dev/null &
echo $! > pid"#;

/// Stops the runtime's process group: TERM, then KILL after `$2` seconds.
const STOP: &str = r#"cd "$1" 2>/dev/null || exit 0
[ -f pid ] || exit 0
p=$(cat pid)
kill -TERM -- "-$p" 2>/dev/null || exit 0
i=0
while kill -0 -- "-$p" 2>/dev/null; do
  i=$((i + 1))
  if [ "$i" -gt "$(($2 * 10))" ]; then kill -KILL -- "-$p" 2>/dev/null; break; fi
  sleep 0.1
done
exit 0"#;

/// Exit 0 running, 1 ended (its status on stdout), 3 no deployment, 4 not started.
const STATUS: &str = r#"cd "$1" 2>/dev/null || exit 3
[ -f pid ] || exit 4
kill -0 -- "-$(cat pid)" 2>/dev/null && exit 0
cat exit 2>/dev/null
exit 1"#;

/// Exit 0 running, 1 stopped (the state on stdout), 3 no unit.
const STATUS_SYSTEMD: &str = r#"[ -f "/etc/systemd/system/$1" ] || exit 3
s=$(systemctl is-active "$1")
[ "$s" = active ] && exit 0
echo "$s"
exit 1"#;

/// Runs `$body` with `$s` bound to the agent's connection; once more on a
/// new connection when the kept one turns out to be closed.
macro_rules! on_session {
    ($self:ident, $h:expr, |$s:ident| $body:expr) => {{
        let $s = $self.session($h).await?;
        match $body {
            Err(_) if $s.handle.is_closed() => {
                $self.sessions.remove(&$h.pool_key());
                let $s = $self.session($h).await?;
                $body
            }
            out => out,
        }
    }};
}

/// The SSH deployer.
pub struct SshDeployer {
    cfg: SshDeployConfig,
    connect_url: String,
    runtime_bin: PathBuf,
    known_hosts: PathBuf,
    llm: Option<(LlmSettings, Option<String>)>,
    sealer: Option<crate::secrets::Sealer>,
    secrets: SecretSource,
    pin_lock: Arc<std::sync::Mutex<()>>,
    binary: OnceCell<(String, u64)>,
    uploads: DashMap<String, Arc<Mutex<()>>>,
    sessions: DashMap<String, Arc<Session>>,
}

impl std::fmt::Debug for SshDeployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshDeployer")
            .field("known_hosts", &self.known_hosts)
            .finish_non_exhaustive()
    }
}

impl SshDeployer {
    /// A deployer uploading `runtime_bin`, pinning host keys in
    /// `known_hosts`, reading keys through `secrets`.
    pub fn new(
        cfg: SshDeployConfig,
        server_url: &str,
        runtime_bin: PathBuf,
        known_hosts: PathBuf,
        secrets: SecretSource,
    ) -> SshDeployer {
        SshDeployer {
            connect_url: if cfg.connect_url.is_empty() {
                server_url.to_string()
            } else {
                cfg.connect_url.clone()
            },
            cfg,
            runtime_bin,
            known_hosts,
            llm: None,
            sealer: None,
            secrets,
            pin_lock: Arc::default(),
            binary: OnceCell::new(),
            uploads: DashMap::new(),
            sessions: DashMap::new(),
        }
    }

    /// Runtimes call this provider, with this API key.
    pub fn with_llm(mut self, settings: LlmSettings, api_key: Option<String>) -> SshDeployer {
        self.llm = Some((settings, api_key));
        self
    }

    /// Opens the organization secrets agents name.
    pub fn with_sealer(mut self, sealer: crate::secrets::Sealer) -> SshDeployer {
        self.sealer = Some(sealer);
        self
    }

    fn open_secret(&self, org: &str, name: &str) -> Result<String, DeployError> {
        let sealed = (self.secrets)(org, name)
            .ok_or_else(|| err(format!("secret {name:?} is not set in the organization")))?;
        let sealer = self
            .sealer
            .as_ref()
            .ok_or_else(|| err("this server cannot open secrets"))?;
        sealer
            .open(org, &sealed)
            .map_err(|e| err(format!("opening secret {name:?}: {e}")))
    }

    /// Connects and logs in as the handle says.
    async fn connect(&self, h: &SshHandle) -> Result<Session, DeployError> {
        let key_text = self.open_secret(&h.org, &h.key_secret)?;
        let key = russh::keys::decode_secret_key(&key_text, None).map_err(|e| {
            err(format!(
                "secret {:?} is not an unencrypted OpenSSH private key: {e}",
                h.key_secret
            ))
        })?;
        let refused = Arc::new(std::sync::Mutex::new(None));
        let handler = Client {
            host: h.host.clone(),
            port: h.port,
            pinned: h
                .host_key
                .as_deref()
                .map(parse_host_key)
                .transpose()
                .map_err(err)?,
            known_hosts: self.known_hosts.clone(),
            pin_lock: self.pin_lock.clone(),
            refused: refused.clone(),
        };
        let config = Arc::new(client::Config {
            inactivity_timeout: Some(Duration::from_secs(300)),
            nodelay: true,
            ..Default::default()
        });
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let addr = (h.host.trim_matches(['[', ']']).to_string(), h.port);
        let mut handle =
            match tokio::time::timeout(timeout, client::connect(config, addr, handler)).await {
                Err(_) => {
                    return Err(err(format!(
                        "{}:{} did not answer within {} ms",
                        h.host, h.port, self.cfg.connect_timeout_ms
                    )));
                }
                Ok(Err(e)) => {
                    let why = refused.lock().unwrap_or_else(|p| p.into_inner()).take();
                    return Err(err(why.unwrap_or_else(|| {
                        format!("connecting to {}:{}: {e}", h.host, h.port)
                    })));
                }
                Ok(Ok(handle)) => handle,
            };
        let hash = handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        let auth = handle
            .authenticate_publickey(&h.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(|e| err(format!("authenticating as {}: {e}", h.user)))?;
        match auth {
            AuthResult::Success => Ok(Session { handle }),
            AuthResult::Failure { .. } => Err(err(format!(
                "{}:{} refused the key in secret {:?} for user {}",
                h.host, h.port, h.key_secret, h.user
            ))),
        }
    }

    /// The runtime binary's content hash and size (read once).
    async fn binary(&self) -> Result<&(String, u64), DeployError> {
        self.binary
            .get_or_try_init(|| async {
                let path = self.runtime_bin.clone();
                tokio::task::spawn_blocking(move || {
                    use std::io::Read;
                    let fail = |e: std::io::Error| {
                        err(format!(
                            "reading the runtime binary {}: {e}",
                            path.display()
                        ))
                    };
                    let mut file = std::fs::File::open(&path).map_err(fail)?;
                    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                    let mut buf = vec![0u8; 1 << 20];
                    let mut size = 0u64;
                    loop {
                        let n = file.read(&mut buf).map_err(fail)?;
                        if n == 0 {
                            break;
                        }
                        size += n as u64;
                        ctx.update(&buf[..n]);
                    }
                    let hash: String = ctx.finish().as_ref()[..8]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    Ok((hash, size))
                })
                .await
                .map_err(|e| err(e.to_string()))?
            })
            .await
    }

    /// Uploads the runtime binary unless the host has it; its path there.
    async fn ensure_binary(
        &self,
        s: &Session,
        sftp: &SftpSession,
        h: &SshHandle,
    ) -> Result<String, DeployError> {
        let (hash, size) = self.binary().await?;
        let path = format!("{}/bin/cadre-{hash}", h.dir);
        let lock = self
            .uploads
            .entry(format!("{}:{}:{}", h.host, h.port, h.dir))
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let have = sftp.metadata(&path).await.ok().and_then(|m| m.size);
        if have != Some(*size) {
            let arch = s.run("checking the architecture", "uname -m").await?;
            if arch.trim() != std::env::consts::ARCH {
                return Err(err(format!(
                    "the host is {}, the runtime binary is built for {}",
                    arch.trim(),
                    std::env::consts::ARCH
                )));
            }
            mkdirs(sftp, &format!("{}/bin", h.dir), 0o755).await?;
            let file = tokio::fs::File::open(&self.runtime_bin)
                .await
                .map_err(|e| err(format!("reading the runtime binary: {e}")))?;
            let started = std::time::Instant::now();
            put(
                sftp,
                &path,
                tokio::io::BufReader::with_capacity(1 << 18, file),
                0o755,
            )
            .await?;
            tracing::info!(host = %h.host, bytes = size, ms = started.elapsed().as_millis() as u64, "uploaded the runtime binary");
        }
        Ok(path)
    }

    fn handle_of(d: &str) -> Result<SshHandle, DeployError> {
        serde_json::from_str(d).map_err(|e| err(format!("unreadable deployment handle: {e}")))
    }

    /// The agent's connection: kept open between calls (a health probe every
    /// few seconds must not cost a key exchange each, nor count against the
    /// server's limit on connections being set up), opened again when closed.
    async fn session(&self, h: &SshHandle) -> Result<Arc<Session>, DeployError> {
        let key = h.pool_key();
        if let Some(s) = self.sessions.get(&key).map(|s| s.clone())
            && !s.handle.is_closed()
        {
            return Ok(s);
        }
        let s = Arc::new(self.connect(h).await?);
        if let Some(old) = self.sessions.insert(key, s.clone()) {
            tokio::spawn(async move { old.close().await });
        }
        Ok(s)
    }

    fn forget(&self, h: &SshHandle) {
        if let Some((_, s)) = self.sessions.remove(&h.pool_key()) {
            tokio::spawn(async move { s.close().await });
        }
    }
}

#[async_trait]
impl Deployer for SshDeployer {
    async fn provision(&self, req: &DeployRequest) -> Result<String, DeployError> {
        let spec = req
            .runtime
            .ssh
            .clone()
            .ok_or_else(|| err("the agent has no ssh settings (deployment.ssh)"))?;
        let base = SshHandle {
            org: req.org_id.to_string(),
            agent: req.agent_id.to_string(),
            host: spec.host,
            port: spec.port.unwrap_or(22),
            user: spec.user,
            key_secret: spec.key_secret,
            host_key: spec.host_key,
            dir: spec.dir.unwrap_or_else(|| ".cadre".into()),
            systemd: false,
        };
        let supervisor = spec.supervisor.unwrap_or_else(|| "auto".into());
        let h = on_session!(self, &base, |s| {
            async {
            let mut h = base.clone();
            // An absolute directory, so units and later calls agree on it.
            if !h.dir.starts_with('/') {
                let home = s.run("finding the home directory", "pwd").await?;
                h.dir = format!("{}/{}", home.trim_end(), h.dir);
            }
            h.systemd = match supervisor.as_str() {
                "none" => false,
                want => {
                    let has = s.exec(DETECT_SYSTEMD).await?.code == Some(0);
                    if want == "systemd" && !has {
                        return Err(err(
                            "supervisor systemd: the host does not run systemd or the user is not root",
                        ));
                    }
                    has
                }
            };
            let sftp = s.sftp().await?;
            mkdirs(&sftp, &format!("{}/workspace", h.agent_dir()), 0o700).await?;
            Ok(h)
        }
        .await
        })?;
        serde_json::to_string(&h).map_err(|e| err(e.to_string()))
    }

    async fn deploy(&self, d: &str, req: &DeployRequest) -> Result<(), DeployError> {
        let h = Self::handle_of(d)?;
        let llm = self.llm.as_ref().map(|(s, _)| s);
        // The token goes in the env file with the secrets, so the config
        // file holds nothing secret.
        let mut config = super::runtime_config(req, &self.connect_url, llm, None);
        config.token = String::new();
        let config = serde_json::to_vec_pretty(&config).map_err(|e| err(e.to_string()))?;
        let mut env = SealedEnv::of(req)
            .map_err(err)?
            .open(
                self.llm.as_ref().and_then(|(_, k)| k.as_deref()),
                self.sealer.as_ref(),
            )
            .map_err(err)?;
        env.insert(super::TOKEN_ENV.to_string(), req.runtime_token.clone());
        let env = env_file(&env, h.systemd).map_err(err)?;
        on_session!(self, &h, |s| async {
            let sftp = s.sftp().await?;
            let bin = self.ensure_binary(&s, &sftp, &h).await?;
            let cfg_dir = h.config_dir();
            // The unit's dynamic user reads the config (nothing secret in it).
            mkdirs(&sftp, &cfg_dir, if h.systemd { 0o755 } else { 0o700 }).await?;
            mkdirs(&sftp, &format!("{}/workspace", h.agent_dir()), 0o700).await?;
            put(
                &sftp,
                &format!("{cfg_dir}/runtime.json"),
                &config[..],
                0o644,
            )
            .await?;
            let env_name = if h.systemd { "runtime.env" } else { "env" };
            put(
                &sftp,
                &format!("{cfg_dir}/{env_name}"),
                env.as_bytes(),
                0o600,
            )
            .await?;
            if h.systemd {
                let unit = super::generate::systemd_unit(&super::generate::UnitSpec {
                    name: &h.agent,
                    id: &h.agent,
                    bin: &bin,
                    cpus: self.cfg.cpus,
                    memory_mb: self.cfg.memory_mb,
                    pids: self.cfg.pids_limit,
                });
                put(&sftp, &h.unit_path(), unit.as_bytes(), 0o644).await?;
                s.run("systemctl daemon-reload", "systemctl daemon-reload")
                    .await?;
            } else {
                // The launcher starts the binary this file names.
                put(
                    &sftp,
                    &format!("{}/bin", h.agent_dir()),
                    bin.as_bytes(),
                    0o600,
                )
                .await?;
            }
            Ok(())
        }
        .await)
    }

    async fn start(&self, d: &str) -> Result<(), DeployError> {
        let h = Self::handle_of(d)?;
        on_session!(self, &h, |s| async {
            if h.systemd {
                s.run(
                    "systemctl start",
                    &format!("systemctl start {}", sh_quote(&h.unit())),
                )
                .await?;
            } else {
                s.run("starting the runtime", &script(START, &[&h.agent_dir()]))
                    .await?;
            }
            Ok(())
        }
        .await)
    }

    async fn stop(&self, d: &str) -> Result<(), DeployError> {
        let h = Self::handle_of(d)?;
        let grace = self.cfg.stop_grace_ms.div_ceil(1000).max(1).to_string();
        on_session!(self, &h, |s| async {
            if h.systemd {
                let o = s
                    .exec(&format!("systemctl stop {}", sh_quote(&h.unit())))
                    .await?;
                // A unit that is not loaded is stopped already.
                if o.code != Some(0) && !o.stderr.contains("not loaded") {
                    return Err(err(format!("systemctl stop failed: {}", o.stderr.trim())));
                }
            } else {
                s.run(
                    "stopping the runtime",
                    &script(STOP, &[&h.agent_dir(), &grace]),
                )
                .await?;
            }
            Ok(())
        }
        .await)
    }

    async fn destroy(&self, d: &str) -> Result<(), DeployError> {
        let h = Self::handle_of(d)?;
        self.stop(d).await?;
        on_session!(self, &h, |s| async {
            if h.systemd {
                let unit = sh_quote(&h.unit());
                let _ = s.exec(&format!("systemctl disable {unit}")).await?;
                s.run(
                    "removing the unit",
                    &script(
                        r#"rm -f -- "$1" && rm -rf -- "$2" && systemctl daemon-reload"#,
                        &[&h.unit_path(), &h.config_dir()],
                    ),
                )
                .await?;
            }
            s.run(
                "removing the agent directory",
                &script(r#"rm -rf -- "$1""#, &[&h.agent_dir()]),
            )
            .await?;
            Ok(())
        }
        .await)?;
        self.forget(&h);
        Ok(())
    }

    async fn status(&self, d: &str) -> Result<DeploymentStatus, DeployError> {
        let h = Self::handle_of(d)?;
        on_session!(self, &h, |s| async {
            let o = if h.systemd {
                s.exec(&script(STATUS_SYSTEMD, &[&h.unit()])).await?
            } else {
                s.exec(&script(STATUS, &[&h.agent_dir()])).await?
            };
            Ok(match o.code {
                Some(0) => DeploymentStatus::Running,
                Some(3) => DeploymentStatus::Missing,
                Some(4) => DeploymentStatus::Stopped("not started".into()),
                Some(1) if h.systemd => {
                    DeploymentStatus::Stopped(format!("unit is {}", o.stdout.trim()))
                }
                Some(1) => match o.stdout.trim() {
                    "" => DeploymentStatus::Stopped("the process is gone".into()),
                    code => DeploymentStatus::Stopped(format!("exited with status {code}")),
                },
                other => {
                    return Err(err(format!(
                        "status check failed (exit {other:?}): {}",
                        o.stderr.trim()
                    )));
                }
            })
        }
        .await)
    }

    async fn logs(&self, d: &str, lines: usize) -> Result<String, DeployError> {
        let h = Self::handle_of(d)?;
        let n = lines.to_string();
        on_session!(self, &h, |s| async {
            if h.systemd {
                s.run(
                    "journalctl",
                    &script(
                        r#"journalctl -u "$1" -n "$2" --no-pager -o cat"#,
                        &[&h.unit(), &n],
                    ),
                )
                .await
            } else {
                s.run(
                    "reading the log",
                    &script(
                        r#"tail -n "$2" -- "$1/log" 2>/dev/null || true"#,
                        &[&h.agent_dir(), &n],
                    ),
                )
                .await
            }
        }
        .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_every_value_one_word() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(
            script(r#"echo "$1""#, &["$(rm -rf /)"]),
            r#"sh -c 'echo "$1"' sh '$(rm -rf /)'"#
        );
    }

    #[test]
    fn env_files_quote_for_their_reader() {
        let env = BTreeMap::from([("K".to_string(), r#"a"b\c'd $x"#.to_string())]);
        assert_eq!(
            env_file(&env, true).expect("plain values"),
            "K=\"a\\\"b\\\\c'd $x\"\n"
        );
        assert_eq!(
            env_file(&env, false).expect("plain values"),
            "K='a\"b\\c'\\''d $x'\n"
        );
        let bad = BTreeMap::from([("K".to_string(), "a\nb".to_string())]);
        assert!(env_file(&bad, false).is_err());
    }

    #[test]
    fn host_keys_parse_or_say_why() {
        assert!(parse_host_key("ssh-ed25519").is_err());
        assert!(parse_host_key("ssh-ed25519 not-base64!").is_err());
        assert!(
            parse_host_key(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
            )
            .is_ok()
        );
    }
}
