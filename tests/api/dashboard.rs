//! The dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver with fantoccini: sign in,
//! create an agent, deploy it and see it turn `running` without a reload,
//! approve the request its runtime parks and see the runtime go on, and as
//! a viewer find no approve button (and the API refusing the viewer
//! anyway). Screenshots of the main pages go to
//! `$CARGO_TARGET_TMPDIR/dashboard/` (under `target/`), and the browser's
//! console must hold no JavaScript error.

use crate::common::{LIMIT, PASSWORD, TestApp, add_user, eventually, spawn_app, unavailable};
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A chromedriver process and a browser session on it.
struct Browser {
    client: Client,
    driver: Child,
    shots: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session's Chromium exits with its driver.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn chromedriver() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CADRE_CHROMEDRIVER") {
        return Some(PathBuf::from(p));
    }
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

async fn browser() -> Option<Browser> {
    let Some(path) = chromedriver() else {
        unavailable("chromedriver (Debian: chromium-driver)", "not installed");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let driver = Command::new(&path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let status = reqwest::Client::new();
    let deadline = Instant::now() + LIMIT;
    loop {
        let ready = status
            .get(format!("{url}/status"))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "chromedriver did not answer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut options = json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,800", "--lang=en-US"],
    });
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("goog:chromeOptions".into(), options);
    caps.insert("goog:loggingPrefs".into(), json!({ "browser": "ALL" }));
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&url)
        .await
        .expect("a Chromium session");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    Some(Browser {
        client,
        driver,
        shots,
    })
}

/// chromedriver's `POST /session/{id}/se/log`: the browser console so far.
#[derive(Debug)]
struct ConsoleLog;

impl WebDriverCompatibleCommand for ConsoleLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

impl Browser {
    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(LIMIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(e) => e,
            Err(e) => {
                let page = self.client.source().await.unwrap_or_default();
                panic!("no {css} on the page ({e}); page: {page}")
            }
        }
    }

    async fn fill(&self, css: &str, text: &str) {
        self.wait_for(css).await.send_keys(text).await.expect(css);
    }

    async fn click(&self, css: &str) {
        self.wait_for(css).await.click().await.expect(css);
    }

    /// Saves a screenshot as `<name>.png` and checks the page shows no
    /// error notice.
    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(self.shots.join(format!("{name}.png")), png).expect("save screenshot");
        let errors = self
            .client
            .find_all(Locator::Css(".notice.error"))
            .await
            .expect("find");
        let mut texts = Vec::new();
        for e in errors {
            texts.push(e.text().await.unwrap_or_default());
        }
        assert!(texts.is_empty(), "{name} shows errors: {texts:?}");
    }

    async fn sign_in(&self, app: &TestApp, email: &str) {
        self.client.goto(&app.url("/")).await.expect("open");
        self.fill("#email", email).await;
        self.fill("#password", PASSWORD).await;
        self.click("form.signin button[type=submit]").await;
        self.wait_for("#h-overview").await;
    }

    async fn go(&self, hash: &str, heading: &str) {
        self.click(&format!("nav a[href='{hash}']")).await;
        self.wait_for(heading).await;
    }

    /// Console entries that are JavaScript errors (a failed request's
    /// network line, such as the 401 of the first refresh before signing
    /// in, is the API answering, not the page failing).
    async fn script_errors(&self) -> Vec<Value> {
        let log = self
            .client
            .issue_cmd(ConsoleLog)
            .await
            .expect("console log");
        log.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e["level"] == "SEVERE" && e["source"] != "network")
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_signs_in_deploys_live_and_approves_in_a_real_browser() {
    let app = spawn_app().await;
    let Some(b) = browser().await else {
        return;
    };
    // Owners approve writes; the agent's runtime writes twice.
    let (s, v) = app
        .call(
            Method::PUT,
            "/api/v1/approval-policies/writes",
            Some(json!({ "tools": ["files.write"], "levels": [
                { "approvers": { "roles": ["owner"], "users": [] }, "timeout_seconds": 120, "on_timeout": "deny" }
            ] })),
        )
        .await;
    assert!(s.is_success(), "{v}");
    let (_, viewer) = add_user(&app, "viewer@x.test", "viewer").await;

    b.sign_in(&app, "admin@localhost").await;
    b.shot("overview").await;

    // Create an agent in the form.
    b.client.goto(&app.url("/#/new")).await.expect("new");
    b.fill("#new-name", "browser-agent").await;
    b.fill("#new-role", "writes files").await;
    b.fill("#new-model", "m").await;
    b.wait_for("#new-profile option[value='developer']")
        .await
        .click()
        .await
        .expect("profile");
    b.shot("new-agent").await;
    b.click("form button[type=submit]").await;
    b.wait_for("#h-agent").await;
    let url = b.client.current_url().await.expect("url");
    let id = url
        .fragment()
        .and_then(|f| f.strip_prefix("/agents/"))
        .expect("the detail page of the new agent")
        .to_string();
    let (s, stored) = app
        .call(Method::GET, &format!("/api/v1/agents/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{stored}");
    assert_eq!(
        (&stored["name"], &stored["profile"], &stored["state"]),
        (
            &json!("browser-agent"),
            &json!("developer"),
            &json!("draft")
        )
    );
    app.script(
        &id,
        &[
            json!({ "tool": "files.write", "arguments": { "path": "a.txt", "content": "hello" } }),
            json!({ "tool": "files.write", "arguments": { "path": "b.txt", "content": "again" } }),
        ],
    );

    // Deploy from the page (after its confirmation) and watch the state
    // change arrive live: a marker set in the page survives, so it was not
    // reloaded.
    b.client
        .execute("window.__cadre_marker = 42; return true;", vec![])
        .await
        .expect("marker");
    b.click("button[data-command='deploy']").await;
    b.client.accept_alert().await.expect("confirm deploy");
    b.wait_for("#agent-state-now [data-state='running']").await;
    let marker = b
        .client
        .execute("return window.__cadre_marker;", vec![])
        .await
        .expect("marker");
    assert_eq!(marker, json!(42), "the page was reloaded");
    b.shot("agent-running").await;

    // The runtime's first write waits in the inbox; approve it there.
    b.go("#/approvals", "#h-approvals").await;
    b.wait_for("[data-approval] [data-decide='approve']").await;
    // It says why (the policy) and how risky the tool is (the catalog).
    let card = b
        .wait_for("[data-approval]")
        .await
        .text()
        .await
        .expect("text");
    assert!(
        card.contains("policy writes") && card.contains("risk: "),
        "{card}"
    );
    b.shot("approvals").await;
    b.fill("[data-approval] input", "go ahead").await;
    b.click("[data-approval] [data-decide='approve']").await;
    eventually("the runtime wrote after the approval", || async {
        app.workspace_file(&id, "a.txt").as_deref() == Some("hello")
    })
    .await;
    let (_, decided) = app
        .call(Method::GET, "/api/v1/approvals?state=approved", None)
        .await;
    assert_eq!(decided["items"][0]["comment"], "go ahead", "{decided}");

    // The other pages render without an error.
    for (hash, heading, name) in [
        ("#/agents", "#h-agents", "agents"),
        ("#/audit", "#h-audit", "audit"),
        ("#/users", "#h-users", "users"),
        ("#/secrets", "#h-secrets", "secrets"),
        ("#/settings", "#h-org", "organization"),
    ] {
        b.go(hash, heading).await;
        b.shot(name).await;
    }

    // A phone-wide window: nothing wider than the screen.
    b.client.set_window_size(390, 844).await.expect("resize");
    b.go("#/overview", "#h-overview").await;
    let overflow = b
        .client
        .execute(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .expect("width");
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 0),
        "overflows by {overflow}"
    );
    b.shot("overview-phone").await;
    b.client.set_window_size(1280, 800).await.expect("resize");

    // The second write now waits. A viewer sees it without a way to decide,
    // and the API refuses the viewer's decision anyway.
    let pending = app
        .approvals(&format!("state=pending&agent_id={id}"), 1)
        .await;
    let second = pending[0]["id"].as_str().expect("id").to_string();
    b.click("#signout").await;
    b.wait_for("#email").await;
    b.sign_in(&app, "viewer@x.test").await;
    b.go("#/approvals", "#h-approvals").await;
    b.wait_for(&format!("[data-approval='{second}']")).await;
    let buttons = b
        .client
        .find_all(Locator::Css("[data-decide]"))
        .await
        .expect("find");
    assert!(buttons.is_empty(), "a viewer is offered a decision");
    b.shot("approvals-viewer").await;
    let (s, v) = app
        .call_as(
            Some(&viewer),
            Method::POST,
            &format!("/api/v1/approvals/{second}/decide"),
            Some(json!({ "decision": "approve" })),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(app.workspace_file(&id, "b.txt"), None);

    let errors = b.script_errors().await;
    assert!(
        errors.is_empty(),
        "JavaScript errors in the console: {errors:?}"
    );
}

#[tokio::test]
async fn the_dashboard_is_served_with_a_same_origin_policy() {
    let app = spawn_app().await;
    let r = app.client.get(app.url("/")).send().await.expect("get /");
    assert_eq!(r.status(), StatusCode::OK);
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert!(header("content-type").starts_with("text/html"));
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(header("x-frame-options"), "DENY");
    let body = r.text().await.expect("body");
    assert_eq!(body, cadre::http::dashboard::PAGE);
}
