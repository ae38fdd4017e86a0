//! `cadre serve` as a separate process, started the way a user starts it
//! (its own working directory, no `CADRE_*` from the test's environment),
//! for what an in-process app cannot show: the README's literal flow, the
//! files it writes, what a restarted process reports.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `cadre serve` as a user starts it, killed (with its agents' runtimes)
/// however the test ends.
pub struct Served {
    child: Child,
    dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Served {
    /// Starts `cadre serve <args>` with `dir` as its working directory and
    /// only the environment a fresh shell has (no `CADRE_*`, no `RUST_LOG`,
    /// no model key).
    pub fn start(dir: &Path, args: &[&str]) -> Served {
        Served::start_with(dir, args, &[])
    }

    /// [`Served::start`] with `env` set on top.
    pub fn start_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, stderr) = spawn(dir, &args, &env);
        Served {
            child,
            dir: dir.to_path_buf(),
            args,
            env,
            stderr,
        }
    }

    /// Stops the server with SIGTERM (as a service manager does; its agents'
    /// runtimes keep running) and starts it again on the same files.
    pub fn restart(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(Instant::now() < deadline, "cadre serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (child, stderr) = spawn(&self.dir, &self.args, &self.env);
        self.child = child;
        self.stderr = stderr;
    }

    /// The message of the first line of its stderr that contains `needle`
    /// (a JSON log line's message, or a plain `cadre: …` line), waiting for it.
    pub fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let lines = self.stderr.lock().map(|l| l.clone()).unwrap_or_default();
            if let Some(line) = lines.iter().find(|l| l.contains(needle)) {
                return serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| v["fields"]["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| line.clone());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cadre serve exited ({status}) before printing {needle:?}: {lines:#?}");
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} in: {lines:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The base URL it announced (`http://127.0.0.1:<port>`).
    pub fn base(&mut self) -> String {
        let line = self.wait_line("listening on http://");
        line.rsplit("listening on ")
            .next()
            .expect("address")
            .trim()
            .to_string()
    }

    /// The password it generated for the first owner and printed once.
    pub fn generated_password(&mut self) -> String {
        let line = self.wait_line("generated password (shown once): ");
        line.rsplit("generated password (shown once): ")
            .next()
            .expect("password")
            .trim()
            .to_string()
    }

    /// The processes whose parent is the server, with their state letter.
    pub fn children(&self) -> Vec<(i32, char)> {
        let me = self.child.id() as i32;
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid …`: the command may hold spaces and parentheses.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
            let ppid: i32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            if ppid == me {
                out.push((pid, state));
            }
        }
        out
    }
}

fn spawn(
    dir: &Path,
    args: &[String],
    env: &[(String, String)],
) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cadre"));
    for (k, _) in std::env::vars() {
        if k.starts_with("CADRE_") || k == "RUST_LOG" || k == "OPENAI_API_KEY" {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .envs(env.iter().map(|(k, v)| (k, v)))
        .arg("serve")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cadre serve");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let pipe = child.stderr.take().expect("stderr");
    let lines = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut l) = lines.lock() {
                l.push(line);
            }
        }
    });
    (child, stderr)
}

impl Drop for Served {
    fn drop(&mut self) {
        // Runtimes outlive the server on purpose (own process group): end
        // them by their pid files, then the server.
        for pid in std::fs::read_dir(self.dir.join("data/agents"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("runtime.pid")).ok())
            .filter_map(|p| p.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The API of a served process, signed in as a user.
pub struct Api {
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The access token.
    pub token: String,
}

impl Api {
    /// Signs in as the README does: `POST /api/v1/auth/login
    /// {"email","password"}`.
    pub async fn sign_in(base: &str, email: &str, password: &str) -> Api {
        cadre::init_tls();
        let http = reqwest::Client::new();
        let login: Value = http
            .post(format!("{base}/api/v1/auth/login"))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "email": email, "password": password }).to_string())
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("login json");
        let token = login["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token: {login}"))
            .to_string();
        Api {
            http,
            base: base.to_string(),
            token,
        }
    }

    /// A request with the token and an optional JSON body (sent as the
    /// text given, so a test can send the README's bodies byte for byte).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> (reqwest::StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The body of `GET path` as text (`/metrics`).
    pub async fn text(&self, path: &str) -> String {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("text")
    }

    /// Polls `GET path` until `done` holds for its body, or fails with the
    /// last one.
    pub async fn wait(&self, path: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let (_, v) = self.call(reqwest::Method::GET, path, None).await;
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "gave up waiting on {path}: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
