//! `cadre runtime`: the process that runs on the deployment and connects back
//! to the control plane.
//!
//! It reads `runtime.json`, dials `/api/v1/runtime/connect` with its token,
//! says hello and sends heartbeats; it reconnects with back-off whenever the
//! connection drops (the control plane may be restarting) and exits on
//! SIGTERM, on a `stop` frame, or when its token is refused. The LLM loop and
//! tools come with their own issue.

use crate::deploy::RuntimeConfig;
use crate::protocol::{PROTOCOL_VERSION, RuntimeMessage, ServerMessage};
use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use std::path::Path;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

enum SessionEnd {
    /// Told to stop or refused: exit.
    Exit(String),
    /// Connection lost: dial again.
    Reconnect(String),
}

/// Runs until told to stop.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config: RuntimeConfig = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", config_path.display()))?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut backoff = Duration::from_millis(50);
    // Never wait longer between dials than the control plane waits between
    // heartbeats, so a control-plane restart does not look like a dead agent.
    let max_backoff = Duration::from_millis(config.heartbeat_interval_ms)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    eprintln!(
        "cadre runtime: agent {} starting (pid {})",
        config.agent_id,
        std::process::id()
    );
    loop {
        let end = tokio::select! {
            _ = term.recv() => {
                eprintln!("cadre runtime: SIGTERM, exiting");
                return Ok(());
            }
            end = session(&config, &mut backoff) => end,
        };
        match end {
            SessionEnd::Exit(why) => {
                eprintln!("cadre runtime: exiting: {why}");
                return Ok(());
            }
            SessionEnd::Reconnect(why) => {
                eprintln!("cadre runtime: disconnected ({why}); retrying in {backoff:?}");
                tokio::select! {
                    _ = term.recv() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
}

async fn session(config: &RuntimeConfig, backoff: &mut Duration) -> SessionEnd {
    let mut request = match config.connect_url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return SessionEnd::Exit(format!("bad connect_url: {e}")),
    };
    let Ok(auth) = HeaderValue::from_str(&format!("Bearer {}", config.token)) else {
        return SessionEnd::Exit("token is not a valid header value".into());
    };
    request.headers_mut().insert("authorization", auth);
    let (mut ws, _) = match tokio_tungstenite::connect_async(request).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) if resp.status().as_u16() == 401 => {
            return SessionEnd::Exit("token refused (redeployed or removed)".into());
        }
        Err(e) => return SessionEnd::Reconnect(e.to_string()),
    };
    let hello = RuntimeMessage::Hello {
        protocol: PROTOCOL_VERSION,
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
    };
    if let Err(e) = send(&mut ws, &hello).await {
        return SessionEnd::Reconnect(e);
    }
    let mut interval = Duration::from_millis(config.heartbeat_interval_ms.max(10));
    let mut seq = 0u64;
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                seq += 1;
                if let Err(e) = send(&mut ws, &RuntimeMessage::Heartbeat { seq }).await {
                    return SessionEnd::Reconnect(e);
                }
            }
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => return SessionEnd::Reconnect("closed by server".into()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return SessionEnd::Reconnect(e.to_string()),
                };
                match serde_json::from_str::<ServerMessage>(&text) {
                    Ok(ServerMessage::Welcome { heartbeat_interval_ms, .. }) => {
                        *backoff = Duration::from_millis(50);
                        let wanted = Duration::from_millis(heartbeat_interval_ms.max(10));
                        if wanted != interval {
                            interval = wanted;
                            ticker = tokio::time::interval(interval);
                        }
                    }
                    Ok(ServerMessage::Stop { reason }) => return SessionEnd::Exit(reason),
                    Ok(ServerMessage::Error { code, message }) if code == "unauthorized" || code == "unsupported_protocol" => {
                        return SessionEnd::Exit(format!("{code}: {message}"));
                    }
                    Ok(ServerMessage::Error { code, message }) => eprintln!("cadre runtime: server error {code}: {message}"),
                    Ok(_) => {}
                    Err(e) => eprintln!("cadre runtime: unreadable frame: {e}"),
                }
            }
        }
    }
}

async fn send<S>(ws: &mut S, msg: &RuntimeMessage) -> Result<(), String>
where
    S: SinkExt<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    let text = serde_json::to_string(msg).map_err(|e| e.to_string())?;
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| e.to_string())
}
