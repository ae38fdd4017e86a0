//! `GET /org-chart`: the organization's agents as a tree of who reports to
//! whom (`reports_to`). People who manage agents are nodes too; an agent
//! whose manager is gone (deleted) stands at the top. Read from the agents'
//! published snapshots (one call to the tenant), so states are current.

use super::error::ApiError;
use super::guard::Routes;
use super::state::AppState;
use crate::identity::{Action, Principal};
use axum::Json;
use axum::extract::State;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cadre_actors::domain::{AgentView, Manager};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

/// One agent and everyone below it.
fn agent_node(v: &AgentView, below: &HashMap<Manager, Vec<&AgentView>>, depth: usize) -> Value {
    let me = Manager::Agent(v.id.to_string());
    // The client refuses cycles; the depth bound keeps a corrupted chart
    // from recursing without end.
    let reports: Vec<Value> = match depth {
        0 => Vec::new(),
        _ => below
            .get(&me)
            .into_iter()
            .flatten()
            .map(|r| agent_node(r, below, depth - 1))
            .collect(),
    };
    json!({
        "type": "agent",
        "id": v.id,
        "name": v.name,
        "role": v.role,
        "state": v.state,
        "state_reason": v.state_reason,
        "reports": reports,
    })
}

async fn chart(State(state): State<AppState>, p: Principal) -> Result<Response, ApiError> {
    let all = state.cadre.all_agents(&p.org).await?;
    let views: Vec<AgentView> = all.iter().map(|s| s.view()).collect();
    let ids: std::collections::HashSet<String> = views.iter().map(|v| v.id.to_string()).collect();
    let mut below: HashMap<Manager, Vec<&AgentView>> = HashMap::new();
    let mut top: Vec<&AgentView> = Vec::new();
    // People who manage agents, in id order.
    let mut people: BTreeMap<String, Vec<&AgentView>> = BTreeMap::new();
    for v in &views {
        match &v.reports_to {
            Some(Manager::Agent(m)) if ids.contains(m) => {
                below.entry(Manager::Agent(m.clone())).or_default().push(v)
            }
            Some(Manager::User(u)) => people.entry(u.clone()).or_default().push(v),
            _ => top.push(v),
        }
    }
    let depth = views.len() + 1;
    let mut roots = Vec::new();
    for (user, reports) in &people {
        let (name, email) = match state.store.tables().user(p.org.as_str(), user).await {
            Ok(Some(u)) => (Some(u.name), Some(u.email)),
            _ => (None, None),
        };
        roots.push(json!({
            "type": "user",
            "id": user,
            "name": name,
            "email": email,
            "reports": reports.iter().map(|r| agent_node(r, &below, depth)).collect::<Vec<_>>(),
        }));
    }
    roots.extend(top.iter().map(|v| agent_node(v, &below, depth)));
    Ok(Json(json!({ "agents": views.len(), "roots": roots })).into_response())
}

/// The org chart route.
pub fn routes(r: Routes) -> Routes {
    r.add(Method::GET, "/org-chart", Action::AgentsRead, get(chart))
}
