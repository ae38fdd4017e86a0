//! `TestApp`: a real server on a random port with a temp SQLite file (or,
//! with `CADRE_TEST_DATABASE=postgres` or `mysql`, a fresh database of its
//! own on that server, dropped after), real `cadre runtime` child
//! processes, and typed helpers.

use super::support;
use cadre::app::{self, Running};
use cadre::config::Config;
use cadre::store::backend::Backend;
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct-horse-battery";
/// How long a poll waits for what it expects before it fails. Every use
/// waits for something to happen (never for something not to), so a long
/// limit costs nothing when the code works; 20 s was short on a slow host
/// with the tests running side by side (an SSH upload of the debug binary,
/// a runtime answered 500 approvals after a restart).
pub const LIMIT: Duration = Duration::from_secs(60);

pub struct TestApp {
    pub addr: SocketAddr,
    pub config: Config,
    pub client: Client,
    pub token: String,
    pub running: Option<Running>,
    /// The server database of this app, dropped with it.
    database: Option<ServerDatabase>,
    _dir: tempfile::TempDir,
}

/// A connection to the app's database on whichever backend it runs.
pub enum Direct {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
    Mysql(sqlx::MySqlConnection),
}

impl Direct {
    /// Runs one statement (the text protocol: no parameters).
    pub async fn execute(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        use sqlx::Executor;
        match self {
            Direct::Sqlite(c) => c.execute(sql).await.map(drop),
            Direct::Postgres(c) => c.execute(sql).await.map(drop),
            Direct::Mysql(c) => c.execute(sql).await.map(drop),
        }
    }
}

/// A database of one test on a PostgreSQL or MySQL/MariaDB server.
pub struct ServerDatabase {
    backend: Backend,
    admin: String,
    name: String,
}

/// The backend the API tests run on: `CADRE_TEST_DATABASE` = `postgres` or
/// `mysql` (MariaDB too), SQLite when unset.
pub fn test_backend() -> Backend {
    match std::env::var("CADRE_TEST_DATABASE").as_deref() {
        Ok("postgres") => Backend::Postgres,
        Ok("mysql") => Backend::Mysql,
        Ok("" | "sqlite") | Err(_) => Backend::Sqlite,
        Ok(other) => panic!("CADRE_TEST_DATABASE={other}: expected sqlite, postgres or mysql"),
    }
}

impl ServerDatabase {
    /// A fresh database on the server of `backend`; the server must be
    /// there (the run asked for it by name).
    pub async fn create(backend: Backend) -> ServerDatabase {
        use sqlx::{Connection, Executor};
        let (var, default) = match backend {
            Backend::Postgres => ("CADRE_TEST_POSTGRES_URL", support::POSTGRES_URL),
            _ => ("CADRE_TEST_MYSQL_URL", support::MYSQL_URL),
        };
        let admin = std::env::var(var).unwrap_or_else(|_| default.to_string());
        let name = format!("cadre_api_{}", uuid::Uuid::now_v7().simple());
        let create = format!("CREATE DATABASE {name}");
        match backend {
            Backend::Postgres => sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("{var}: {e} (CADRE_TEST_DATABASE asks for it)"))
                .execute(create.as_str())
                .await
                .map(drop),
            _ => sqlx::MySqlConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| panic!("{var}: {e} (CADRE_TEST_DATABASE asks for it)"))
                .execute(create.as_str())
                .await
                .map(drop),
        }
        .expect("create database");
        ServerDatabase {
            backend,
            admin,
            name,
        }
    }

    pub fn url(&self) -> String {
        support::with_database(&self.admin, &self.name)
    }

    /// Runs `sql` as the server's admin login (on another connection than
    /// the app's), `{db}` replaced by the database's name.
    pub async fn admin(&self, sql: &str) {
        use sqlx::{Connection, Executor};
        let sql = sql.replace("{db}", &self.name);
        match self.backend {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.admin)
                    .await
                    .expect("admin");
                c.execute(sql.as_str()).await.map(drop)
            }
            _ => {
                let mut c = sqlx::MySqlConnection::connect(&self.admin)
                    .await
                    .expect("admin");
                c.execute(sql.as_str()).await.map(drop)
            }
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Drops it, on a runtime of its own (from `Drop`, inside the test's).
    fn drop_now(&self) {
        use sqlx::{Connection, Executor};
        let (backend, admin, name) = (self.backend, self.admin.clone(), self.name.clone());
        let sql = match backend {
            Backend::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            _ => format!("DROP DATABASE IF EXISTS {}", self.name),
        };
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let result = match backend {
                    Backend::Postgres => match sqlx::PgConnection::connect(&admin).await {
                        Ok(mut c) => c.execute(sql.as_str()).await.map(drop),
                        Err(e) => Err(e),
                    },
                    // The app may still hold a transaction open on it (the
                    // test's runtime is blocked here), whose metadata lock the
                    // drop would wait for: its connections are ended first.
                    _ => match sqlx::MySqlConnection::connect(&admin).await {
                        Ok(mut c) => {
                            let ids: Vec<(i64,)> = sqlx::query_as(
                                "SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE db = ?",
                            )
                            .bind(&name)
                            .fetch_all(&mut c)
                            .await
                            .unwrap_or_default();
                            for (id,) in ids {
                                let _ = c.execute(format!("KILL {id}").as_str()).await;
                            }
                            c.execute(sql.as_str()).await.map(drop)
                        }
                        Err(e) => Err(e),
                    },
                };
                result.map_err(|e| e.to_string())
            })
        })
        .join();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("drop database {}: {e}", self.name),
            Err(_) => eprintln!("drop database {}: the dropping thread panicked", self.name),
        }
    }
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let env = [
        ("CADRE_DATA_DIR", dir.display().to_string()),
        ("CADRE_LISTEN", "127.0.0.1:0".to_string()),
        ("CADRE_BOOTSTRAP_PASSWORD", PASSWORD.to_string()),
        // Heartbeats are stale after 3 × 150 ms and recovery needs 3 failed
        // probes: a loaded CI machine must not trigger spurious restarts.
        ("CADRE_HEALTH__INTERVAL_MS", "300".to_string()),
        ("CADRE_HEALTH__FAILURE_THRESHOLD", "3".to_string()),
        ("CADRE_HEALTH__BACKOFF_BASE_MS", "50".to_string()),
        ("CADRE_HEALTH__BACKOFF_MAX_MS", "200".to_string()),
        ("CADRE_HEALTH__START_TIMEOUT_MS", "10000".to_string()),
        (
            "CADRE_DEPLOY__LOCAL__RUNTIME_BIN",
            env!("CARGO_BIN_EXE_cadre").to_string(),
        ),
        ("CADRE_DEPLOY__LOCAL__STOP_GRACE_MS", "1000".to_string()),
        ("CADRE_CHAOS__ENABLED", "true".to_string()),
        ("CADRE_LOG__LEVEL", "warn".to_string()),
        (
            "CADRE_DEPLOY__LOCAL__SCRIPT_DIR",
            dir.join("scripts").display().to_string(),
        ),
    ];
    Config::load(None, env.into_iter().map(|(k, v)| (k.to_string(), v)))
        .expect("test config is valid")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(test_backend(), tweak).await
}

/// An app on `backend` whatever `CADRE_TEST_DATABASE` says (a server's
/// database is fresh and dropped with the app).
pub async fn spawn_app_on(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
    cadre::init_tls();
    // `CADRE_TEST_LOG=cadre_actors=debug` (an env-filter) shows the
    // servers' logs beside a failing test's output.
    if let Ok(filter) = std::env::var("CADRE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    std::fs::create_dir_all(dir.path().join("scripts")).expect("scripts dir");
    // Rate limits are off unless a test turns them on (tests fire bursts).
    config.http.rate_limit_per_client.per_second = 0;
    config.http.rate_limit_per_principal.per_second = 0;
    let database = match backend {
        Backend::Sqlite => None,
        backend => Some(ServerDatabase::create(backend).await),
    };
    if let Some(db) = &database {
        config.database.url = db.url();
    }
    tweak(&mut config);
    let running = app::start(config.clone()).await.expect("app starts");
    let addr = running.addr;
    // Restarts must come back on the same port: runtimes dial it.
    config.server.listen = addr.to_string();
    let client = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut app = TestApp {
        addr,
        config,
        client,
        token: String::new(),
        running: Some(running),
        database,
        _dir: dir,
    };
    app.token = app.login(PASSWORD).await;
    app
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn login(&self, password: &str) -> String {
        let resp = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({ "email": "admin@localhost", "password": password }))
            .send()
            .await
            .expect("login request");
        assert_eq!(resp.status(), StatusCode::OK, "login failed");
        let body: Value = resp.json().await.expect("login json");
        assert_eq!(body["token_type"], "Bearer");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// Sends an authenticated request; returns status and JSON body (Null when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call_as(Some(&self.token), method, path, body).await
    }

    /// Signs in; returns the access token and the refresh cookie's value.
    pub async fn sign_in(&self, email: &str, password: &str) -> (StatusCode, String, String) {
        let resp = self
            .client
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .expect("login request");
        let status = resp.status();
        let cookie = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .and_then(|kv| kv.strip_prefix("cadre_refresh="))
            .unwrap_or_default()
            .to_string();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let token = body["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (status, token, cookie)
    }

    /// Sends a request with `token` as bearer (none if `None`).
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        if resp
            .headers()
            .get("content-type")
            .is_some_and(|c| c.as_bytes().starts_with(b"text/event-stream"))
        {
            // A live stream never ends: its status is the answer.
            return (status, Value::Null);
        }
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn create(&self, body: Value) -> Value {
        let (s, v) = self.call(Method::POST, "/api/v1/agents", Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    /// Creates an agent and returns its id.
    pub async fn create_id(&self, body: Value) -> String {
        self.create(body).await["id"]
            .as_str()
            .expect("id")
            .to_string()
    }

    pub async fn get(&self, id: &str) -> Value {
        let (s, v) = self
            .call(Method::GET, &format!("/api/v1/agents/{id}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    pub async fn command(&self, id: &str, cmd: &str) -> (StatusCode, Value) {
        self.call(Method::POST, &format!("/api/v1/agents/{id}/{cmd}"), None)
            .await
    }

    pub async fn history(&self, id: &str) -> Vec<Value> {
        let (s, v) = self
            .call(
                Method::GET,
                &format!("/api/v1/agents/{id}/history?limit=200"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Polls until the agent's state is `state`.
    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        let deadline = Instant::now() + LIMIT;
        loop {
            let (s, v) = self
                .call(Method::GET, &format!("/api/v1/agents/{id}"), None)
                .await;
            if s == StatusCode::OK && v["state"] == state {
                return v;
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.agent_dir(id).join("runtime.log"))
                    .unwrap_or_default();
                panic!("waiting for {state}, agent is {v}\nits runtime.log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn agent_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("agents").join(id)
    }

    /// Writes the script the agent's runtime follows (before it is deployed).
    pub fn script(&self, id: &str, steps: &[Value]) {
        let lines: Vec<String> = steps.iter().map(Value::to_string).collect();
        std::fs::write(
            self.config
                .data_dir
                .join("scripts")
                .join(format!("{id}.jsonl")),
            lines.join("\n"),
        )
        .expect("write script");
    }

    /// A file in the agent's workspace, if it exists.
    pub fn workspace_file(&self, id: &str, path: &str) -> Option<String> {
        std::fs::read_to_string(self.agent_dir(id).join("workspace").join(path)).ok()
    }

    /// Polls the agent's recorded tool calls until `n` exist; returns them oldest first.
    pub async fn tool_calls(&self, id: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let mut items = Vec::new();
            let mut cursor = String::new();
            loop {
                let (s, v) = self
                    .call(
                        Method::GET,
                        &format!("/api/v1/agents/{id}/tool-calls?limit=200{cursor}"),
                        None,
                    )
                    .await;
                assert_eq!(s, StatusCode::OK, "{v}");
                items.extend(v["items"].as_array().cloned().unwrap_or_default());
                match &v["next_cursor"] {
                    Value::Null => break,
                    c => {
                        cursor = format!(
                            "&cursor={}",
                            c.as_str().map(String::from).unwrap_or(c.to_string())
                        )
                    }
                }
            }
            if items.len() >= n {
                items.reverse();
                return items;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {n} tool calls of {id}, have {items:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the organization has `n` approvals in `state`; returns them.
    pub async fn approvals(&self, query: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let mut all = Vec::new();
            let mut cursor = String::new();
            loop {
                let (s, v) = self
                    .call(
                        Method::GET,
                        &format!("/api/v1/approvals?limit=200&{query}{cursor}"),
                        None,
                    )
                    .await;
                assert_eq!(s, StatusCode::OK, "{v}");
                all.extend(v["items"].as_array().cloned().unwrap_or_default());
                match v["next_cursor"].as_str() {
                    Some(c) => cursor = format!("&cursor={c}"),
                    None => break,
                }
            }
            if all.len() >= n {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {n} approvals ({query}), have {}",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn runtime_pid(&self, id: &str) -> Option<i32> {
        std::fs::read_to_string(self.agent_dir(id).join("runtime.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops the server (runtimes keep running) and starts a new one on the same files and port.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    /// Stops the server; runtimes keep running.
    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Starts the server again on the same files and port.
    pub async fn start(&mut self) {
        let running = app::start(self.config.clone()).await.expect("app restarts");
        assert_eq!(running.addr, self.addr);
        self.running = Some(running);
    }

    /// A connection of the test's own to the app's database, beside the
    /// app's pool (as another process would hold one).
    pub async fn direct(&self) -> Direct {
        use sqlx::Connection;
        let url = self.config.database_url();
        match test_backend() {
            Backend::Sqlite => Direct::Sqlite(
                sqlx::SqliteConnection::connect(&url)
                    .await
                    .expect("connect"),
            ),
            Backend::Postgres => {
                Direct::Postgres(sqlx::PgConnection::connect(&url).await.expect("connect"))
            }
            Backend::Mysql => {
                Direct::Mysql(sqlx::MySqlConnection::connect(&url).await.expect("connect"))
            }
        }
    }

    /// The app's server database (none on SQLite).
    pub fn database(&self) -> Option<&ServerDatabase> {
        self.database.as_ref()
    }

    pub fn store(&self) -> &cadre::store::Db {
        &self.running.as_ref().expect("running").store
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Runtimes outlive the control plane by design; tests must not leak them.
        if let Ok(entries) = std::fs::read_dir(self.config.data_dir.join("agents")) {
            for e in entries.flatten() {
                if let Ok(pid) = std::fs::read_to_string(e.path().join("runtime.pid"))
                    && let Ok(pid) = pid.trim().parse::<i32>()
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        if let Some(db) = &self.database {
            db.drop_now();
        }
    }
}

/// Adds a user with `role` to the caller's organization; returns its id and token.
pub async fn add_user(app: &TestApp, email: &str, role: &str) -> (String, String) {
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/users",
            Some(json!({ "email": email, "name": role, "password": PASSWORD, "role": role })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, token, _) = app.sign_in(email, PASSWORD).await;
    assert_eq!(s, StatusCode::OK);
    (v["id"].as_str().expect("id").to_string(), token)
}

/// Polls an async condition until it holds.
/// The id of the test user's organization.
pub async fn org_id(app: &TestApp) -> String {
    let (_, org) = app.call(Method::GET, "/api/v1/orgs/current", None).await;
    org["id"].as_str().expect("org id").to_string()
}

pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + LIMIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `f` until it gives a value (or fails after [`LIMIT`]), and
/// returns that value.
pub async fn eventually_some<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A service this machine lacks: fails the test under
/// `CADRE_REQUIRE_SERVICES=1` (CI), else says what is skipped.
pub fn unavailable(what: &str, e: impl std::fmt::Display) {
    if std::env::var("CADRE_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("CADRE_REQUIRE_SERVICES=1 but {what} is unavailable: {e}");
    }
    eprintln!("skipping what needs {what}: {e}");
}

impl TestApp {
    /// Sets the organization secret `name` (asserting it was accepted).
    pub async fn put_secret(&self, name: &str, value: &str) {
        let (s, v) = self
            .call(
                Method::PUT,
                &format!("/api/v1/secrets/{name}"),
                Some(serde_json::json!({ "value": value })),
            )
            .await;
        assert!(s.is_success(), "{v}");
    }

    /// Waits until the agent's log, as its target serves it, shows the
    /// runtime starting.
    pub async fn wait_runtime_log(&self, id: &str) {
        eventually("the runtime's start in its log", || async {
            let (s, v) = self
                .call(
                    Method::GET,
                    &format!("/api/v1/agents/{id}/logs?lines=50"),
                    None,
                )
                .await;
            s == StatusCode::OK
                && v["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(&format!("agent {id} starting")))
        })
        .await;
    }

    /// Creates an agent from `body`, deploys it and waits for `error`; the
    /// reason it gives.
    pub async fn deploy_fails(&self, body: Value) -> String {
        let id = self.create_id(body).await;
        let (s, v) = self.command(&id, "deploy").await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        let v = self.wait_state(&id, "error").await;
        v["state_reason"].as_str().unwrap_or_default().to_string()
    }
}
