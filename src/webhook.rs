//! Outbound approval notices: every approval request, vote, decision,
//! expiry and escalation is POSTed as JSON to `governance.webhook.url`,
//! signed with HMAC-SHA256 (`X-Cadre-Signature: sha256=<hex>` over the exact
//! body) and retried with back-off on network errors, 429 and 5xx.
//!
//! The notices follow the actors' broadcast of committed changes: the
//! approval itself is already durable when a notice is sent, and a notice
//! that cannot be delivered after `max_attempts` is logged and counted
//! (`cadre_webhook_deliveries_total{outcome="failed"}`), never silently lost.

use crate::config::WebhookConfig;
use cadre_actors::events::Event;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, broadcast};

/// Deliveries in flight at once.
const PARALLEL: usize = 32;

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Starts the notifier when a URL is configured.
pub fn spawn(
    config: &WebhookConfig,
    mut events: broadcast::Receiver<Arc<Event>>,
) -> Option<tokio::task::JoinHandle<()>> {
    if config.url.is_empty() {
        return None;
    }
    crate::init_tls();
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "approval webhook disabled: no HTTP client");
            return None;
        }
    };
    let url = config.url.clone();
    let secret = config.secret.clone();
    let attempts = config.max_attempts.max(1);
    let slots = Arc::new(Semaphore::new(PARALLEL));
    Some(tokio::spawn(async move {
        loop {
            let event = match events.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics::counter!("cadre_webhook_deliveries_total", "outcome" => "lagged")
                        .increment(n);
                    tracing::error!(
                        missed = n,
                        "approval webhook fell behind; those notices are in the audit log and activity"
                    );
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let Event::Governance {
                org_id,
                agent_id,
                kind,
                detail,
                at,
            } = &*event
            else {
                continue;
            };
            if !kind.starts_with("approval.") {
                continue;
            }
            let body = serde_json::json!({
                "event": kind,
                "org_id": org_id,
                "agent_id": agent_id,
                "at": cadre_actors::domain::rfc3339(*at),
                "approval": detail,
            })
            .to_string();
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (client, url, secret, kind) =
                (client.clone(), url.clone(), secret.clone(), kind.clone());
            tokio::spawn(async move {
                deliver(&client, &url, &secret, &kind, body, attempts).await;
                drop(permit);
            });
        }
    }))
}

async fn deliver(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    kind: &str,
    body: String,
    attempts: u32,
) {
    let delivery = uuid::Uuid::now_v7().to_string();
    let sig = signature(secret, body.as_bytes());
    let mut pause = Duration::from_millis(200);
    for attempt in 1..=attempts {
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .header("x-cadre-event", kind)
            .header("x-cadre-delivery", &delivery)
            .header("x-cadre-signature", &sig)
            .body(body.clone())
            .send()
            .await;
        let retry = match sent {
            Ok(r) if r.status().is_success() => {
                metrics::counter!("cadre_webhook_deliveries_total", "outcome" => "ok").increment(1);
                return;
            }
            Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                format!("status {}", r.status())
            }
            Ok(r) => {
                metrics::counter!("cadre_webhook_deliveries_total", "outcome" => "rejected")
                    .increment(1);
                tracing::warn!(%delivery, status = %r.status(), "approval webhook refused the notice; not retried");
                return;
            }
            Err(e) => e.to_string(),
        };
        if attempt < attempts {
            metrics::counter!("cadre_webhook_deliveries_total", "outcome" => "retried")
                .increment(1);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(30));
        } else {
            metrics::counter!("cadre_webhook_deliveries_total", "outcome" => "failed").increment(1);
            tracing::error!(%delivery, error = %retry, attempts, "approval webhook notice undeliverable");
        }
    }
}
