//! Each organization's live broadcast of committed activity.
//!
//! The writer publishes after each commit; streams subscribe. A broadcast
//! channel holds a fixed number of events per organization, so a subscriber
//! that stops reading costs bounded memory: it falls behind, gets `Lagged`
//! from tokio, and the stream tells its client to resync from the database.

use crate::store::NewActivity;
use cadre_actors::domain::OrgId;
use dashmap::DashMap;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::broadcast;

/// One committed event, serialized once for every subscriber.
#[derive(Debug)]
pub struct StreamEvent {
    /// Event id.
    pub id: i64,
    /// Agent.
    pub agent_id: Option<String>,
    /// Kind.
    pub kind: String,
    /// The event as JSON (`{"type":"activity","id","agent_id","kind","payload","at"}`).
    pub json: String,
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind_of_message: &'static str,
    id: i64,
    agent_id: Option<&'a str>,
    kind: &'a str,
    payload: &'a serde_json::value::RawValue,
    at: String,
}

impl StreamEvent {
    /// The event of a committed row.
    pub fn of(id: i64, row: &NewActivity) -> StreamEvent {
        let payload =
            serde_json::value::RawValue::from_string(row.payload.clone()).unwrap_or_else(|_| {
                serde_json::value::to_raw_value(&row.payload)
                    .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned())
            });
        let json = serde_json::to_string(&Wire {
            kind_of_message: "activity",
            id,
            agent_id: row.agent_id.as_deref(),
            kind: &row.kind,
            payload: &payload,
            at: cadre_actors::domain::rfc3339(row.at),
        })
        .unwrap_or_default();
        StreamEvent {
            id,
            agent_id: row.agent_id.clone(),
            kind: row.kind.clone(),
            json,
        }
    }
}

impl StreamEvent {
    /// The event of a stored row (stream resume).
    pub fn from_row(row: &crate::store::ActivityRow) -> StreamEvent {
        StreamEvent::of(
            row.id,
            &NewActivity {
                org_id: String::new(),
                agent_id: row.agent_id.clone(),
                kind: row.kind.clone(),
                payload: row.payload.to_string(),
                at: row.at_ms,
                record: None,
            },
        )
    }
}

/// The broadcasts, one per organization (made on first use).
pub struct Hub {
    orgs: DashMap<OrgId, broadcast::Sender<Arc<StreamEvent>>>,
    buffer: usize,
}

impl Hub {
    /// A hub whose broadcasts hold `buffer` events.
    pub fn new(buffer: usize) -> Hub {
        Hub {
            orgs: DashMap::new(),
            buffer: buffer.max(1),
        }
    }

    fn sender(&self, org: &OrgId) -> broadcast::Sender<Arc<StreamEvent>> {
        self.orgs
            .entry(org.clone())
            .or_insert_with(|| broadcast::channel(self.buffer).0)
            .clone()
    }

    /// Subscribes to `org`'s events from now on.
    pub fn subscribe(&self, org: &OrgId) -> broadcast::Receiver<Arc<StreamEvent>> {
        self.sender(org).subscribe()
    }

    /// Publishes committed events of `org` (dropped when nobody listens:
    /// they are in the database).
    pub fn publish(&self, org: &OrgId, ev: StreamEvent) {
        if let Some(tx) = self.orgs.get(org)
            && tx.receiver_count() > 0
        {
            let _ = tx.send(Arc::new(ev));
        }
    }

    /// Whether `org` has subscribers (the writer skips serializing if not).
    pub fn is_watched(&self, org: &OrgId) -> bool {
        self.orgs.get(org).is_some_and(|tx| tx.receiver_count() > 0)
    }
}
