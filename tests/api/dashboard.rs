//! The dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver with fantoccini: sign in,
//! create an agent, deploy it and see it turn `running` without a reload,
//! approve the request its runtime parks and see the runtime go on, and as
//! a viewer find no approve button (and the API refusing the viewer
//! anyway). Screenshots of the main pages go to
//! `$CARGO_TARGET_TMPDIR/dashboard/` (under `target/`), and the browser's
//! console must hold no JavaScript error.

use crate::common::{
    LIMIT, PASSWORD, TestApp, add_user, eventually, org_id, spawn_app, spawn_app_with, unavailable,
};
use crate::tasks::{FakeLlm, app_with_llm, tool_call};
use fantoccini::key::Key;
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
    browser_with(&[]).await
}

/// A browser started with `extra` command-line switches.
async fn browser_with(extra: &[&str]) -> Option<Browser> {
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
    if let Some(args) = options["args"].as_array_mut() {
        args.extend(extra.iter().map(|a| json!(a)));
    }
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

    /// The text of the first element matching `css`, once there is one.
    /// Read by the page itself: a live page redraws its lists, and an
    /// element found before a redraw would be stale by the time it is read.
    async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        let read =
            format!("const e = document.querySelector({css:?}); return e ? e.innerText : null;");
        loop {
            if let Ok(Value::String(t)) = self.client.execute(&read, vec![]).await {
                return t;
            }
            if Instant::now() > deadline {
                let page = self.client.source().await.unwrap_or_default();
                panic!("no {css} on the page; page: {page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces the value of the input matching `css` with `text`.
    async fn replace(&self, css: &str, text: &str) {
        let input = self.wait_for(css).await;
        input.clear().await.expect(css);
        input.send_keys(text).await.expect(css);
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
        // Every visible control has a label (or its own text, for buttons).
        let unlabelled = self
            .client
            .execute(
                "return [...document.querySelectorAll('input, select, textarea, button')]
                   .filter((e) => e.getClientRects().length > 0)
                   .filter((e) => e.tagName === 'BUTTON'
                     ? !e.textContent.trim() && !e.getAttribute('aria-label')
                     : !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
                   .map((e) => e.id || e.outerHTML.slice(0, 120));",
                vec![],
            )
            .await
            .expect("labels");
        assert_eq!(unlabelled, json!([]), "{name} has controls without a label");
    }

    async fn sign_in(&self, app: &TestApp, email: &str) {
        self.client.goto(&app.url("/")).await.expect("open");
        self.fill("#email", email).await;
        self.fill("#password", PASSWORD).await;
        self.click("form.signin button[type=submit]").await;
        self.wait_for("#h-overview").await;
    }

    /// Signs in with the keyboard alone: the form focuses the email field,
    /// Tab moves to the password, Enter submits.
    async fn sign_in_by_keyboard(&self, app: &TestApp, email: &str) {
        self.client.goto(&app.url("/")).await.expect("open");
        self.wait_for("#email").await;
        self.keys(&format!("{email}{}", Key::Tab)).await;
        self.keys(&format!("{PASSWORD}{}", Key::Enter)).await;
        self.wait_for("#h-overview").await;
    }

    /// Types `text` (keys included) into whatever has the focus.
    async fn keys(&self, text: &str) {
        self.client
            .active_element()
            .await
            .expect("focus")
            .send_keys(text)
            .await
            .expect("keys");
    }

    /// Presses Tab until `css` has the focus (at most 40 times).
    async fn tab_to(&self, css: &str) {
        let check = format!("return document.activeElement.matches({css:?});");
        for _ in 0..40 {
            if self.client.execute(&check, vec![]).await.expect("focus") == json!(true) {
                return;
            }
            self.keys(&Key::Tab.to_string()).await;
        }
        panic!("Tab never reached {css}");
    }

    /// The page's computed background colour.
    async fn background(&self) -> String {
        let v = self
            .client
            .execute(
                "return getComputedStyle(document.body).backgroundColor;",
                vec![],
            )
            .await
            .expect("style");
        v.as_str().unwrap_or_default().to_string()
    }

    /// Sets a marker in the page's window; `assert_marked` fails if the
    /// document was reloaded since.
    async fn mark(&self) {
        self.client
            .execute("window.__cadre_marker = 42; return true;", vec![])
            .await
            .expect("marker");
    }

    async fn assert_marked(&self) {
        let marker = self
            .client
            .execute("return window.__cadre_marker;", vec![])
            .await
            .expect("marker");
        assert_eq!(marker, json!(42), "the page was reloaded");
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
    // The agent's model (a local server speaking the chat-completions
    // protocol) writes two files, then finishes.
    let (_llm, llm_url) = FakeLlm::start(vec![
        tool_call(
            "c1",
            "files__write",
            json!({ "path": "a.txt", "content": "hello" }),
        ),
        tool_call(
            "c2",
            "files__write",
            json!({ "path": "b.txt", "content": "again" }),
        ),
        tool_call("c3", "task__finish", json!({ "result": "both written" })),
    ])
    .await;
    let app = app_with_llm(&llm_url, |_| {}).await;
    let Some(b) = browser().await else {
        return;
    };
    // Owners approve writes.
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
    assert_eq!(
        b.background().await,
        "rgb(247, 247, 248)",
        "the light theme"
    );
    b.shot("overview").await;

    // Create an agent in the form.
    b.client.goto(&app.url("/#/new")).await.expect("new");
    b.fill("#new-name", "browser-agent").await;
    b.fill("#new-role", "writes files").await;
    b.fill("#new-model", "m").await;
    b.click("#new-profile option[value='developer']").await;
    b.shot("new-agent").await;
    b.click("form button[type=submit]").await;
    b.wait_for("#h-agent").await;
    let url = b.client.current_url().await.expect("url");
    let id = url
        .fragment()
        .and_then(|f| f.strip_prefix("/agents/"))
        .expect("the detail page of the new agent")
        .to_string();
    let stored = agent(&app, &id).await;
    assert_eq!(
        (&stored["name"], &stored["profile"], &stored["state"]),
        (
            &json!("browser-agent"),
            &json!("developer"),
            &json!("draft")
        )
    );

    // Edit it: a new role and a cost budget, the rest as it was.
    b.click("#edit-agent-link").await;
    b.wait_for("#h-edit").await;
    b.replace("#new-role", "writes reports").await;
    b.fill("#new-cost", "25").await;
    b.shot("edit-agent").await;
    b.click("#edit-agent button[type=submit]").await;
    b.wait_for("#h-agent").await;
    let edited = agent(&app, &id).await;
    assert_eq!(
        (
            &edited["role"],
            &edited["budget"]["monthly_cost_usd"],
            &edited["model"],
            &edited["profile"]
        ),
        (
            &json!("writes reports"),
            &json!(25.0),
            &json!("m"),
            &json!("developer")
        ),
        "{edited}"
    );

    // Deploy from the page (after its confirmation) and watch the state
    // change arrive live: a marker set in the page survives, so it was not
    // reloaded.
    b.mark().await;
    b.click("button[data-command='deploy']").await;
    b.client.accept_alert().await.expect("confirm deploy");
    b.wait_for("#agent-state-now [data-state='running']").await;
    b.assert_marked().await;
    b.shot("agent-running").await;

    // The API's refusal shows in words and changes nothing: a deployed
    // agent cannot move to another target.
    b.click("#edit-agent-link").await;
    b.click("#new-target option[value='docker']").await;
    b.click("#edit-agent button[type=submit]").await;
    let refusal = b.text("#edit-agent .notice.error").await;
    assert!(
        refusal.contains("destroy the deployment first") && refusal.contains("target_in_use"),
        "{refusal}"
    );
    assert_eq!(agent(&app, &id).await["deployment"]["target"], "local");

    // Give it a task from its page; the task shows up in the list.
    b.client
        .goto(&app.url(&format!("/#/agents/{id}")))
        .await
        .expect("agent");
    b.fill("#task-instruction", "Write the two files").await;
    b.click("#task-form button[type=submit]").await;
    let link = b.wait_for("#tasks [data-task] a").await;
    let tid = link
        .attr("href")
        .await
        .expect("href")
        .and_then(|h| h.strip_prefix("#/tasks/").map(str::to_string))
        .expect("a link to the task");
    // One row, though the form's answer and the task's live events
    // (created, running, its steps) all announce it.
    b.wait_for("#tasks [data-task] [data-state='waiting_approval']")
        .await;
    let rows = b
        .client
        .find_all(Locator::Css("#tasks [data-task]"))
        .await
        .expect("rows");
    assert_eq!(rows.len(), 1, "the task is listed once");
    let link = b.wait_for("#tasks [data-task] a").await;
    link.click().await.expect("open the task");
    b.wait_for("#task-state [data-state='waiting_approval']")
        .await;
    // The model's step is on its timeline; the write waits for a decision.
    b.wait_for("#steps li[data-kind='model']").await;
    b.wait_for("#task-waiting:not([hidden]) a[href='#/approvals']")
        .await;
    b.shot("task-waiting").await;

    // Its first write waits in the inbox; approve it there.
    b.go("#/approvals", "#h-approvals").await;
    b.wait_for("[data-approval] [data-decide='approve']").await;
    // It says why (the policy) and how risky the tool is (the catalog).
    let card = b.text("[data-approval]").await;
    assert!(
        card.contains("policy writes") && card.contains("risk: "),
        "{card}"
    );
    b.shot("approvals").await;
    b.fill("[data-approval] input", "go ahead").await;
    b.click("[data-approval] [data-decide='approve']").await;
    eventually("the task wrote after the approval", || async {
        app.workspace_file(&id, "a.txt").as_deref() == Some("hello")
    })
    .await;
    let (_, decided) = app
        .call(Method::GET, "/api/v1/approvals?state=approved", None)
        .await;
    assert_eq!(decided["items"][0]["comment"], "go ahead", "{decided}");
    // The inbox keeps it below, decided: by whom, with the comment.
    let aid = decided["items"][0]["id"].as_str().expect("id").to_string();
    b.wait_for(&format!("#approvals-decided tr[data-decided='{aid}']"))
        .await;
    let row = b
        .text(&format!("#approvals-decided tr[data-decided='{aid}']"))
        .await;
    assert!(
        row.contains("approved") && row.contains("go ahead") && row.contains("files.write"),
        "{row}"
    );

    // Users: change a member's role, then remove them.
    let (member, _) = add_user(&app, "member@x.test", "member").await;
    b.go("#/users", "#h-users").await;
    b.click(&format!("#role-{member} option[value='admin']"))
        .await;
    b.click(&format!("[data-user='{member}'] [data-user-action='role']"))
        .await;
    eventually("the member became an admin", || async {
        let (_, u) = app
            .call(Method::GET, &format!("/api/v1/users/{member}"), None)
            .await;
        u["role"] == "admin"
    })
    .await;
    b.wait_for(&format!("#role-{member} option[value='admin']:checked"))
        .await;
    b.shot("users").await;
    b.click(&format!(
        "[data-user='{member}'] [data-user-action='remove']"
    ))
    .await;
    b.client.accept_alert().await.expect("confirm removal");
    eventually("the member was removed", || async {
        let (s, _) = app
            .call(Method::GET, &format!("/api/v1/users/{member}"), None)
            .await;
        s == StatusCode::NOT_FOUND
    })
    .await;
    eventually_absent(&b, &format!("[data-user='{member}']")).await;

    // An API key made in the page is shown once and works; revoked there,
    // it stops working, and the page no longer holds it.
    b.fill("#k-name", "ci").await;
    b.click("#key-form button[type=submit]").await;
    let shown = b.wait_for("#new-key").await;
    let key = shown.text().await.expect("key");
    let kid = shown
        .attr("data-key-id")
        .await
        .expect("attr")
        .expect("key id");
    assert!(key.starts_with("cadre_"), "{key}");
    let (s, v) = app
        .call_as(Some(&key), Method::GET, "/api/v1/agents", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    b.click(&format!("[data-key='{kid}'] [data-key-action='revoke']"))
        .await;
    b.client.accept_alert().await.expect("confirm revoke");
    eventually_absent(
        &b,
        &format!("[data-key='{kid}'] [data-key-action='revoke']"),
    )
    .await;
    let (s, v) = app
        .call_as(Some(&key), Method::GET, "/api/v1/agents", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let page = b.client.source().await.expect("source");
    assert!(!page.contains(&key), "the key is shown once only");

    // A secret set in the page is listed by name; its value is not shown.
    b.go("#/secrets", "#h-secrets").await;
    b.fill("#s-name", "deploy-token").await;
    b.fill("#s-value", "s3cr3t-value").await;
    b.click("#secret-form button[type=submit]").await;
    b.wait_for("[data-secret='deploy-token']").await;
    let page = b.client.source().await.expect("source");
    assert!(
        !page.contains("s3cr3t-value"),
        "a secret's value on the page"
    );
    let (_, secrets) = app.call(Method::GET, "/api/v1/secrets", None).await;
    assert_eq!(secrets["items"][0]["name"], "deploy-token", "{secrets}");
    b.shot("secrets").await;

    // Usage against the plan's limits, each with its gauge.
    let org = org_id(&app).await;
    let (s, v) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/orgs/{org}"),
            Some(json!({ "limits": { "max_users": 10, "monthly_cost_usd": 100.0 } })),
        )
        .await;
    assert!(s.is_success(), "{v}");
    b.go("#/settings", "#h-org").await;
    // The owner and the viewer, of 10.
    let used = b
        .wait_for("[data-usage='users'] td:nth-child(2)")
        .await
        .text()
        .await
        .expect("text");
    let limit = b
        .wait_for("[data-usage='users'] td:nth-child(3)")
        .await
        .text()
        .await
        .expect("text");
    assert_eq!((used.as_str(), limit.as_str()), ("2", "10"));
    b.wait_for("[data-usage='users'] [role=meter]").await;
    b.wait_for("[data-usage='cost'] [role=meter]").await;
    // The owner's settings: a bad time zone is refused in words, a good
    // one is saved.
    b.replace("#org-tz", "Mars/Olympus").await;
    b.click("#org-form button[type=submit]").await;
    let refusal = b.text("#org-msg .notice.error").await;
    assert!(refusal.contains("unknown time zone"), "{refusal}");
    b.replace("#org-tz", "Europe/Berlin").await;
    b.click("#org-form button[type=submit]").await;
    eventually("the time zone was saved", || async {
        let (_, org) = app.call(Method::GET, "/api/v1/orgs/current", None).await;
        org["timezone"] == "Europe/Berlin"
    })
    .await;
    b.wait_for("#org-tz[value='Europe/Berlin']").await;
    b.shot("organization").await;

    b.go("#/agents", "#h-agents").await;
    b.shot("agents").await;

    // The audit log pages: more than a page of entries (renames of the
    // viewer), 100 shown, then the rest after "Load more", none twice.
    let viewer_id = add_user(&app, "renamed@x.test", "viewer").await.0;
    for i in 0..120 {
        let (s, v) = app
            .call(
                Method::PATCH,
                &format!("/api/v1/users/{viewer_id}"),
                Some(json!({ "name": format!("name {i}") })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (_, all) = app.call(Method::GET, "/api/v1/audit?limit=200", None).await;
    let total = all["items"].as_array().map(Vec::len).expect("items");
    assert!((120..200).contains(&total), "{total} entries");
    b.go("#/audit", "#h-audit").await;
    let rows = "return [...document.querySelectorAll('[data-audit]')].map((r) => r.dataset.audit);";
    let first = b.client.execute(rows, vec![]).await.expect("rows");
    assert_eq!(first.as_array().map(Vec::len), Some(100));
    b.click("#audit-more:not([hidden])").await;
    let deadline = Instant::now() + LIMIT;
    let shown = loop {
        let shown = b.client.execute(rows, vec![]).await.expect("rows");
        if shown.as_array().map(Vec::len) == Some(total) {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "the next page never came: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ids: std::collections::HashSet<_> = shown.as_array().into_iter().flatten().collect();
    assert_eq!(ids.len(), total, "no entry twice");
    b.wait_for("#audit-more[hidden]").await;
    b.shot("audit").await;

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

    // The viewer watches the task page while an owner approves: the task
    // goes on and finishes, live, without a reload.
    b.client
        .execute(
            &format!("location.hash = '#/tasks/{tid}'; return true;"),
            vec![],
        )
        .await
        .expect("open the task");
    b.wait_for("#task-state [data-state='waiting_approval']")
        .await;
    b.mark().await;
    let (s, v) = app
        .call(
            Method::POST,
            &format!("/api/v1/approvals/{second}/decide"),
            Some(json!({ "decision": "approve" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    b.wait_for("#task-state [data-state='succeeded']").await;
    let result = b.text("#task-result").await;
    assert_eq!(result, "both written");
    // Its timeline holds every step the store has, in order.
    let (_, steps) = app
        .call(Method::GET, &format!("/api/v1/tasks/{tid}/steps"), None)
        .await;
    let want: Vec<String> = steps["items"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["seq"].to_string())
        .collect();
    let shown = b
        .client
        .execute(
            "return [...document.querySelectorAll('#steps li')].map((li) => li.dataset.step);",
            vec![],
        )
        .await
        .expect("steps");
    assert_eq!(shown, json!(want));
    // Model, write, model, write, model, finish.
    assert_eq!(want.len(), 6, "{steps}");
    b.assert_marked().await;
    b.shot("task-done").await;
    assert_eq!(app.workspace_file(&id, "b.txt").as_deref(), Some("again"));

    let errors = b.script_errors().await;
    assert!(
        errors.is_empty(),
        "JavaScript errors in the console: {errors:?}"
    );
}

/// Stream breaks: with the server down the page says it is offline; when
/// the server is back it reconnects on its own and goes on updating in
/// place. A stream that falls behind gets `resync` and the page reloads
/// what it shows (again without reloading the document).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_offline_reconnects_and_reloads_on_resync() {
    let mut app = spawn_app_with(|c| c.activity.stream_buffer = 16).await;
    // This browser's system theme is dark; the page follows it.
    let Some(b) = browser_with(&["--force-dark-mode"]).await else {
        return;
    };
    let id = app
        .create_id(json!({ "name": "steady", "role": "r", "model": "m" }))
        .await;
    b.sign_in_by_keyboard(&app, "admin@localhost").await;
    assert_eq!(b.background().await, "rgb(19, 20, 23)", "the dark theme");
    // Keyboard only: tab to the Agents link, its focus visible, and follow it.
    b.tab_to("nav a[href='#/agents']").await;
    let outline = b
        .client
        .execute(
            "return getComputedStyle(document.activeElement).outlineStyle;",
            vec![],
        )
        .await
        .expect("outline");
    assert_ne!(outline, json!("none"), "focus is visible");
    b.keys(&Key::Enter.to_string()).await;
    b.wait_for("#h-agents").await;
    b.wait_for(&format!("[data-agent='{id}'] [data-state='draft']"))
        .await;
    b.mark().await;
    b.wait_for("#offline:not(.shown)").await;

    app.stop().await;
    b.wait_for("#offline.shown").await;
    b.shot("offline").await;
    app.start().await;
    b.wait_for("#offline:not(.shown)").await;

    // Live again: a deploy made through the API shows up in the list.
    let (s, v) = app.command(&id, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    b.wait_for(&format!("[data-agent='{id}'] [data-state='running']"))
        .await;
    b.assert_marked().await;

    // Fall behind: bursts far larger than the stream's 16-event buffer,
    // until the page has been told to resync.
    b.go("#/overview", "#h-overview").await;
    b.client
        .execute(
            "document.getElementById('h-overview').dataset.old = '1'; return true;",
            vec![],
        )
        .await
        .expect("tag");
    let deadline = Instant::now() + LIMIT;
    loop {
        let burst: Vec<Value> = (0..500)
            .map(|i| json!({ "agent_id": id, "kind": "bulk", "payload": { "i": i, "pad": "x".repeat(500) } }))
            .collect();
        let (s, v) = app
            .call(
                Method::POST,
                "/api/v1/activity",
                Some(json!({ "events": burst })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let resyncs = b
            .client
            .execute("return document.body.dataset.resyncs || '0';", vec![])
            .await
            .expect("resyncs");
        if resyncs != json!("0") {
            break;
        }
        assert!(Instant::now() < deadline, "the stream never fell behind");
    }
    // The page was rendered anew (the tagged heading is gone), the
    // document was not reloaded, and it says what happened.
    b.wait_for("#h-overview:not([data-old])").await;
    b.assert_marked().await;
    let note = b.text("#live-note").await;
    assert!(note.contains("fell behind"), "{note}");

    let errors = b.script_errors().await;
    assert!(
        errors.is_empty(),
        "JavaScript errors in the console: {errors:?}"
    );
}

async fn agent(app: &TestApp, id: &str) -> Value {
    let (s, v) = app
        .call(Method::GET, &format!("/api/v1/agents/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// Waits until nothing on the page matches `css`.
async fn eventually_absent(b: &Browser, css: &str) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let found = b.client.find_all(Locator::Css(css)).await.expect("find");
        if found.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{css} stays on the page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// As an operator reads it: agents by name wherever a person reads them
/// (overview, approvals, task, audit log; ids only in links and on hover),
/// an agent's page says what it waits on and why it is in its state, and
/// draws its day and its spend against its budget; intervals in human
/// units. In the light theme, the dark one and on a phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_names_agents_says_what_they_wait_on_and_draws_their_day_and_spend() {
    let app = spawn_app().await;
    let Some(b) = browser().await else {
        return;
    };
    // Echo waits for an owner.
    let (s, v) = app
        .call(
            Method::PUT,
            "/api/v1/approval-policies/echo",
            Some(json!({ "tools": ["echo"], "levels": [{ "approvers": { "roles": ["owner"] }, "timeout_seconds": 600 }] })),
        )
        .await;
    assert!(s.is_success(), "{v}");
    // Two agents created in the same moment: their ids share a prefix.
    let mut ids = Vec::new();
    for name in ["alpha-bot", "beta-bot"] {
        let id = app
            .create_id(json!({
                "name": name, "role": "r", "model": "gpt-4o", "profile": "full_access",
                "budget": { "monthly_cost_usd": 1.0 },
                "health": { "interval_ms": 30000 },
            }))
            .await;
        app.script(
            &id,
            &[
                json!({ "model_call": { "model": "gpt-4o", "input_tokens": 40000, "max_output_tokens": 100, "output_tokens": 100 } }),
                json!({ "tool": "echo", "arguments": { "from": name } }),
            ],
        );
        let (s, v) = app.command(&id, "deploy").await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        ids.push(id);
    }
    let (alpha, beta) = (ids[0].clone(), ids[1].clone());
    for id in &ids {
        app.approvals(&format!("state=pending&agent_id={id}"), 1)
            .await;
    }
    // Its day: tool calls reported this hour, one of them failed.
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/activity",
            Some(json!({ "events": [
                { "agent_id": alpha, "kind": "tool_call", "payload": { "tool_id": "files.read", "status": "ok", "tokens": 120, "cost_usd": 0.002 } },
                { "agent_id": alpha, "kind": "tool_call", "payload": { "tool_id": "files.read", "status": "error", "tokens": 30 } },
            ] })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    b.sign_in(&app, "admin@localhost").await;
    // The overview: activity names its agents; the organization's spend.
    b.wait_for(&format!("#recent [data-agent-link='{alpha}']"))
        .await;
    let recent = b.text("#recent").await;
    assert!(recent.contains("alpha-bot"), "{recent}");
    assert!(
        !recent.contains(&alpha[..8]),
        "an id where a name belongs: {recent}"
    );
    b.wait_for("#org-spend-chart").await;
    b.shot("overview-named").await;

    // The inbox says which agent asks, by name.
    b.go("#/approvals", "#h-approvals").await;
    b.wait_for(&format!("[data-approval] [data-agent-link='{beta}']"))
        .await;
    let inbox = b.text("#approvals").await;
    assert!(
        inbox.contains("alpha-bot") && inbox.contains("beta-bot"),
        "{inbox}"
    );
    assert!(
        !inbox.contains(&alpha[..8]) && !inbox.contains(&beta[..8]),
        "{inbox}"
    );
    let hover = b
        .wait_for(&format!("[data-agent-link='{alpha}']"))
        .await
        .attr("title")
        .await
        .expect("title");
    assert_eq!(hover.as_deref(), Some(alpha.as_str()), "the id is on hover");

    // The agent's page: what it waits on, with the way to decide.
    b.client
        .goto(&app.url(&format!("/#/agents/{alpha}")))
        .await
        .expect("agent page");
    let waiting = b.text("#agent-approvals").await;
    assert!(waiting.contains("echo"), "{waiting}");
    b.wait_for("#agent-approvals a[href='#/approvals']").await;
    assert_eq!(b.text("#health-every").await, "every 30 s");
    // Its day: this hour's bar holds the two calls, one failed.
    let hour = time::OffsetDateTime::now_utc().hour();
    let bar = b
        .wait_for(&format!("#day-events [data-slot='{hour}']"))
        .await;
    assert!(
        bar.attr("data-value")
            .await
            .expect("value")
            .is_some_and(|v| v.parse::<i64>().unwrap_or(0) >= 2),
        "this hour's events"
    );
    let tip = b
        .client
        .execute(
            &format!("return document.querySelector(\"#day-events [data-slot='{hour}'] title\").textContent;"),
            vec![],
        )
        .await
        .expect("tip");
    assert!(
        tip.as_str().is_some_and(|t| t.contains("1 failed")),
        "{tip}"
    );
    // Its spend against its budget: the model call's 40,100 tokens.
    let chart = b.wait_for("#agent-spend-chart[data-unit='usd']").await;
    let spent: f64 = chart
        .attr("data-spent")
        .await
        .expect("spent")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    let (_, api_spend) = app
        .call(Method::GET, &format!("/api/v1/agents/{alpha}/spend"), None)
        .await;
    assert!(spent > 0.0, "{api_spend}");
    assert_eq!(
        json!(spent),
        api_spend["cost_usd"],
        "the chart draws the API's figure"
    );
    assert_eq!(
        chart.attr("data-limit").await.expect("limit").as_deref(),
        Some("1")
    );
    b.wait_for("#agent-spend-chart line.budget").await;
    b.shot("agent-page").await;
    b.client
        .execute(
            "document.getElementById('agent-spend-chart').scrollIntoView(); return true;",
            vec![],
        )
        .await
        .expect("scroll");
    b.shot("agent-charts").await;

    // Decided, it no longer waits; the audit log says who, by name.
    let pending = app
        .approvals(&format!("state=pending&agent_id={alpha}"), 1)
        .await;
    let (s, v) = app
        .call(
            Method::POST,
            &format!(
                "/api/v1/approvals/{}/decide",
                pending[0]["id"].as_str().expect("id")
            ),
            Some(json!({ "decision": "approve" })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    b.wait_for("#agent-approvals[hidden]").await;
    b.go("#/audit", "#h-audit").await;
    b.wait_for("[data-audit] .who").await;
    let audit = b.text("#main table").await;
    assert!(audit.contains("Owner (admin@localhost)"), "{audit}");
    assert!(audit.contains("alpha-bot"), "{audit}");
    assert!(!audit.contains("user:"), "{audit}");

    // A phone: the charts fit the screen.
    b.client.set_window_size(390, 844).await.expect("resize");
    b.client
        .goto(&app.url(&format!("/#/agents/{alpha}")))
        .await
        .expect("agent page");
    b.wait_for("#agent-spend-chart").await;
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
    b.shot("agent-charts-phone").await;
    let errors = b.script_errors().await;
    assert!(
        errors.is_empty(),
        "JavaScript errors in the console: {errors:?}"
    );
    drop(b);

    // The dark theme draws them readable too: bars in the theme's colours.
    let Some(dark) = browser_with(&["--force-dark-mode"]).await else {
        return;
    };
    dark.sign_in(&app, "admin@localhost").await;
    dark.client
        .goto(&app.url(&format!("/#/agents/{alpha}")))
        .await
        .expect("agent page");
    dark.wait_for("#day-events rect.bar").await;
    dark.client
        .execute(
            "document.getElementById('agent-spend-chart').scrollIntoView(); return true;",
            vec![],
        )
        .await
        .expect("scroll");
    let fill = dark
        .client
        .execute(
            "return getComputedStyle(document.querySelector('#day-events rect.bar')).fill;",
            vec![],
        )
        .await
        .expect("fill");
    assert_eq!(fill, json!("rgb(126, 161, 255)"), "the dark theme's accent");
    dark.shot("agent-charts-dark").await;
}

/// The org chart page: people and agents as a tree, states live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_org_chart_page_draws_the_tree_and_follows_states_live() {
    let app = spawn_app().await;
    let Some(b) = browser().await else {
        return;
    };
    let (_, me) = app.call(Method::GET, "/api/v1/me", None).await;
    let me = me["id"].as_str().expect("me").to_string();
    let lead = app
        .create_id(json!({ "name": "lead-bot", "role": "head of support", "model": "m", "reports_to": { "user": me } }))
        .await;
    let worker = app
        .create_id(json!({ "name": "worker-bot", "role": "triage", "model": "m", "reports_to": { "agent": lead } }))
        .await;
    let (s, v) = app.command(&lead, "deploy").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    app.wait_state(&lead, "running").await;

    b.sign_in(&app, "admin@localhost").await;
    b.go("#/chart", "#h-chart").await;
    // The person at the top, the lead below them, the worker below it.
    let nested =
        format!("#chart li[data-node='{me}'] li[data-node='{lead}'] li[data-node='{worker}']");
    b.wait_for(&nested).await;
    let lead_text = b.text(&format!("li[data-node='{lead}'] > span")).await;
    assert!(
        lead_text.contains("lead-bot")
            && lead_text.contains("head of support")
            && lead_text.contains("running"),
        "{lead_text}"
    );
    let worker_text = b.text(&format!("li[data-node='{worker}'] > span")).await;
    assert!(worker_text.contains("draft"), "{worker_text}");
    b.shot("org-chart").await;
    // Stopped elsewhere: the page follows.
    let (s, v) = app.command(&lead, "stop").await;
    assert!(s.is_success(), "{v}");
    eventually("the chart shows the lead stopped", || async {
        b.text(&format!("li[data-node='{lead}'] > span"))
            .await
            .contains("stopped")
    })
    .await;
}

/// The agent page's chat: the reply streams in, a tool call and its wait
/// for approval show inline, the answer ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_page_talks_with_the_agent_and_shows_its_tool_calls_and_approval_waits() {
    let (_llm, url) = FakeLlm::start(vec![
        tool_call(
            "call_w",
            "files__write",
            json!({ "path": "chat.txt", "content": "hi" }),
        ),
        crate::tasks::answer("Saved it for you."),
    ])
    .await;
    let app = app_with_llm(&url, |c| c.llm.stream = true).await;
    let Some(b) = browser().await else {
        return;
    };
    crate::tasks::park_writes(&app).await;
    let id = crate::tasks::running_agent(&app, "chatty", json!({})).await;
    b.sign_in(&app, "admin@localhost").await;
    b.client
        .goto(&app.url(&format!("/#/agents/{id}")))
        .await
        .expect("open the agent");
    b.wait_for("#h-agent").await;
    b.fill("#chat-input", "Please save a note").await;
    b.click("#chat-form button[type=submit]").await;
    b.wait_for("#chat-log li[data-role='user']").await;
    // The write waits for a person: said inline, with the way to the inbox.
    b.wait_for("#chat-log li[data-role='waiting'] a[href='#/approvals']")
        .await;
    crate::tasks::approve_pending(&app, &id).await;
    eventually("the reply arrives in the chat", || async {
        b.text("#chat-log li[data-role='assistant']")
            .await
            .contains("Saved it for you.")
    })
    .await;
    let tool = b.text("#chat-log li[data-role='tool']").await;
    assert!(
        tool.contains("files.write") && tool.contains("allow"),
        "{tool}"
    );
    assert_eq!(app.workspace_file(&id, "chat.txt").as_deref(), Some("hi"));
    b.shot("agent-chat").await;
}
