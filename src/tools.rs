//! The runtime's built-in tools that need more than the file system: HTTP
//! requests and commands in the workspace. Each runs only after the control
//! plane allowed the call (the permission engine checks an `http.*` call's
//! host against the profile's `http_hosts`; the tool checks it again with
//! the URL parser that will be used, and never follows redirects, so an
//! allowed host cannot bounce a request elsewhere).

use serde_json::Value;
use std::time::Duration;

/// At most this much of a response body or of a command's output reaches
/// the model.
const MAX_OUTPUT: usize = 64 * 1024;

/// Environment variables a tool's child process never sees.
pub const HIDDEN_ENV: &[&str] = &[
    "CADRE_LLM_API_KEY",
    "CADRE_SECRETS_KEY",
    crate::deploy::CONFIG_ENV,
    crate::deploy::TOKEN_ENV,
];

fn clip(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_OUTPUT)]).into_owned();
    if bytes.len() > MAX_OUTPUT {
        format!("{text}\n[… {} more bytes]", bytes.len() - MAX_OUTPUT)
    } else {
        text
    }
}

/// The HTTP tools' client: no redirects, bounded time.
pub fn http_client() -> Result<reqwest::Client, String> {
    crate::init_tls();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())
}

/// `http.get` (GET only) and `http.request` (`method`, `headers`, `body`).
pub async fn http(client: &reqwest::Client, tool: &str, args: &Value) -> Result<String, String> {
    let url = args
        .get("url")
        .and_then(Value::as_str)
        .ok_or("arguments.url (a string) is required")?;
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad url: {e}"))?;
    // The host the request goes to must be the host that was judged.
    let judged = cadre_actors::governance::engine::url_host(url);
    let actual = parsed.host_str().map(|h| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase()
    });
    if judged.is_none() || judged != actual {
        return Err(format!("the url's host is ambiguous: {url:?}"));
    }
    let method = if tool == "http.get" {
        reqwest::Method::GET
    } else {
        let m = args.get("method").and_then(Value::as_str).unwrap_or("GET");
        reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("bad method {m:?}"))?
    };
    let mut req = client.request(method, parsed);
    if tool != "http.get" {
        if let Some(headers) = args.get("headers").and_then(Value::as_object) {
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str().unwrap_or_default());
            }
        }
        if let Some(body) = args.get("body") {
            req = match body {
                Value::String(s) => req.body(s.clone()),
                other => req.json(other),
            };
        }
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = resp.status();
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| format!("\nlocation: {l} (not followed)"))
        .unwrap_or_default();
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("reading the response: {e}"))?;
    Ok(format!(
        "HTTP {}{location}\n\n{}",
        status.as_u16(),
        clip(&body)
    ))
}

/// `shell.exec`: `sh -c <command>` in the workspace, with a time limit
/// (`timeout_seconds`, default 60, at most 600); exit status and output.
pub async fn shell(args: &Value) -> Result<String, String> {
    let command = args
        .get("command")
        .and_then(Value::as_str)
        .filter(|c| !c.trim().is_empty())
        .ok_or("arguments.command (a string) is required")?;
    let secs = args
        .get("timeout_seconds")
        .and_then(Value::as_u64)
        .unwrap_or(60)
        .clamp(1, 600);
    std::fs::create_dir_all("workspace").map_err(|e| format!("workspace: {e}"))?;
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir("workspace")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for k in HIDDEN_ENV {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().map_err(|e| format!("starting sh: {e}"))?;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    // Output beyond what the model gets is read and dropped, so a chatty
    // command neither blocks on a full pipe nor fills the runtime's memory.
    let run = async {
        let (out, err) = tokio::join!(capped(out), capped(err));
        (child.wait().await, out, err)
    };
    let (status, out, err) = match tokio::time::timeout(Duration::from_secs(secs), run).await {
        Ok(done) => done,
        Err(_) => return Err(format!("timed out after {secs} s (killed)")),
    };
    let code = status
        .map_err(|e| format!("waiting for sh: {e}"))?
        .code()
        .map(|c| c.to_string())
        .unwrap_or_else(|| "killed by a signal".into());
    Ok(format!("exit {code}\nstdout:\n{out}\nstderr:\n{err}"))
}

/// Reads a pipe to its end, keeping the first [`MAX_OUTPUT`] bytes.
async fn capped<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> String {
    use tokio::io::AsyncReadExt;
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n;
        let room = MAX_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    let text = String::from_utf8_lossy(&kept).into_owned();
    if total > kept.len() {
        format!("{text}\n[… {} more bytes]", total - kept.len())
    } else {
        text
    }
}

/// `files.list`: the workspace's files (or a folder's), one per line,
/// folders with a trailing `/`; at most 1000.
pub fn list(args: &Value) -> Result<String, String> {
    let base = std::path::Path::new("workspace");
    let dir = match args.get("path").and_then(Value::as_str) {
        None | Some("") | Some(".") => base.to_path_buf(),
        Some(_) => crate::runtime::workspace_path(args)?,
    };
    if !dir.exists() {
        return Ok(String::new());
    }
    let mut out = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for e in entries.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(base)
                .unwrap_or(&path)
                .display()
                .to_string();
            // Symlinks are listed, never followed.
            let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                out.push(format!("{rel}/"));
                stack.push(path);
            } else {
                out.push(rel);
            }
            if out.len() >= 1000 {
                out.sort();
                out.push("[… more entries not listed]".into());
                return Ok(out.join("\n"));
            }
        }
    }
    out.sort();
    Ok(out.join("\n"))
}
