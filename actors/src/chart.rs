//! The org chart: who reports to whom, as the agents' published snapshots
//! say (`reports_to`). Pure functions over a list of snapshots; the client
//! serializes changes of `reports_to` per organization so that two
//! concurrent changes cannot close a cycle between them.

use crate::domain::{AgentId, AgentSnapshot, Manager};
use crate::lifecycle::State;
use std::collections::HashMap;
use std::sync::Arc;

/// The agent `agent` reports to, if it is an agent.
fn manager_agent(s: &AgentSnapshot) -> Option<&str> {
    match &s.reports_to {
        Some(Manager::Agent(m)) => Some(m.as_str()),
        _ => None,
    }
}

/// The chain that `agent` reporting to `manager` would close, from `agent`
/// back to itself (`[agent, manager, …, agent]`), or `None` when the new
/// link makes no cycle.
pub fn cycle(all: &[Arc<AgentSnapshot>], agent: &AgentId, manager: &str) -> Option<Vec<AgentId>> {
    let up: HashMap<&str, &str> = all
        .iter()
        .filter_map(|s| manager_agent(s).map(|m| (s.id.as_str(), m)))
        .collect();
    let mut path = vec![agent.clone()];
    let mut at = manager;
    // A chart of n agents has chains of at most n links.
    for _ in 0..=all.len() {
        path.push(AgentId(at.to_string()));
        if at == agent.as_str() {
            return Some(path);
        }
        match up.get(at) {
            Some(next) => at = next,
            None => return None,
        }
    }
    // An existing cycle not through `agent` (cannot be made through the
    // client, which refuses every cycle): not this link's doing.
    None
}

/// Whether `s` is a manager that blocks its reports: stopped or in error
/// (a halted one is judged by the caller, which knows the kill switches).
pub fn blocks_reports(s: &AgentSnapshot) -> bool {
    matches!(s.state, State::Stopped | State::Error)
}

/// The agents above `agent`, nearest first (its manager, their manager, …),
/// as far as the chain goes through agents.
pub fn chain_above(all: &[Arc<AgentSnapshot>], agent: &AgentId) -> Vec<AgentId> {
    let by_id: HashMap<&str, &AgentSnapshot> = all.iter().map(|s| (s.id.as_str(), &**s)).collect();
    let mut out = Vec::new();
    let mut at = by_id.get(agent.as_str()).and_then(|s| manager_agent(s));
    while let Some(m) = at {
        if out.iter().any(|a: &AgentId| a.as_str() == m) || m == agent.as_str() {
            break;
        }
        out.push(AgentId(m.to_string()));
        at = by_id.get(m).and_then(|s| manager_agent(s));
    }
    out
}

/// The people up the chart from `agent`, nearest first, each once: for
/// each node above it (its manager, their manager, …) the person it is,
/// or for an agent the first person above that agent.
pub fn people_above(all: &[Arc<AgentSnapshot>], agent: &AgentId) -> Vec<String> {
    let by_id: HashMap<&str, &AgentSnapshot> = all.iter().map(|s| (s.id.as_str(), &**s)).collect();
    let mut out: Vec<String> = Vec::new();
    let mut at = by_id.get(agent.as_str()).and_then(|s| s.reports_to.clone());
    // Each step goes one node up; a chart of n agents has at most n + 1.
    for _ in 0..=all.len() {
        let Some(node) = at else { break };
        let (person, next) = match &node {
            Manager::User(u) => (Some(u.clone()), None),
            Manager::Agent(a) => {
                let up = by_id.get(a.as_str()).and_then(|s| s.reports_to.clone());
                // The first person above this agent.
                let mut look = up.clone();
                let mut person = None;
                for _ in 0..=all.len() {
                    match look {
                        Some(Manager::User(u)) => {
                            person = Some(u);
                            break;
                        }
                        Some(Manager::Agent(b)) => {
                            look = by_id.get(b.as_str()).and_then(|s| s.reports_to.clone());
                        }
                        None => break,
                    }
                }
                (person, up)
            }
        };
        if let Some(p) = person
            && !out.contains(&p)
        {
            out.push(p);
        }
        at = next;
    }
    out
}

/// Whether `from` may give `to` work under the default delegation rule:
/// down the chart (any agent below it) or to a peer with the same manager
/// (two agents that report to no one are peers).
pub fn may_delegate(all: &[Arc<AgentSnapshot>], from: &AgentId, to: &AgentId) -> bool {
    if chain_above(all, to).iter().any(|a| a == from) {
        return true;
    }
    let manager = |id: &AgentId| {
        all.iter()
            .find(|s| &s.id == id)
            .map(|s| s.reports_to.clone())
    };
    match (manager(from), manager(to)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, state: State, boss: Option<Manager>) -> Arc<AgentSnapshot> {
        Arc::new(AgentSnapshot {
            id: AgentId(id.into()),
            state,
            reports_to: boss,
            json: "{}".into(),
        })
    }

    fn under(id: &str) -> Option<Manager> {
        Some(Manager::Agent(id.into()))
    }

    /// ceo ← cto ← dev1, dev2; ceo ← cfo; loner, other (no manager);
    /// ops ← a person.
    fn chart() -> Vec<Arc<AgentSnapshot>> {
        vec![
            agent("ceo", State::Running, None),
            agent("cto", State::Running, under("ceo")),
            agent("cfo", State::Stopped, under("ceo")),
            agent("dev1", State::Running, under("cto")),
            agent("dev2", State::Running, under("cto")),
            agent("loner", State::Draft, None),
            agent("ops", State::Running, Some(Manager::User("u1".into()))),
        ]
    }

    fn ids(v: &[AgentId]) -> Vec<&str> {
        v.iter().map(AgentId::as_str).collect()
    }

    #[test]
    fn a_link_that_closes_a_cycle_is_named_from_the_agent_back_to_it() {
        let all = chart();
        let ceo = AgentId("ceo".into());
        assert_eq!(
            cycle(&all, &ceo, "dev1").as_deref().map(ids),
            Some(vec!["ceo", "dev1", "cto", "ceo"])
        );
        assert_eq!(
            cycle(&all, &ceo, "ceo").as_deref().map(ids),
            Some(vec!["ceo", "ceo"])
        );
        // Sideways and down-to-up links that close nothing.
        assert_eq!(cycle(&all, &AgentId("dev1".into()), "cfo"), None);
        assert_eq!(cycle(&all, &AgentId("loner".into()), "dev2"), None);
        assert_eq!(cycle(&all, &AgentId("cto".into()), "ops"), None);
    }

    #[test]
    fn the_chain_above_goes_to_the_top_through_agents() {
        let all = chart();
        assert_eq!(
            ids(&chain_above(&all, &AgentId("dev2".into()))),
            ["cto", "ceo"]
        );
        assert!(chain_above(&all, &AgentId("ceo".into())).is_empty());
        assert!(chain_above(&all, &AgentId("ops".into())).is_empty());
    }

    #[test]
    fn work_goes_down_the_chart_and_to_peers_only() {
        let all = chart();
        let may =
            |from: &str, to: &str| may_delegate(&all, &AgentId(from.into()), &AgentId(to.into()));
        // Down, any depth.
        assert!(may("ceo", "cto"));
        assert!(may("ceo", "dev1"));
        // Peers: the same manager; two agents with none.
        assert!(may("dev1", "dev2"));
        assert!(may("cto", "cfo"));
        assert!(may("ceo", "loner"));
        // Up, and sideways across teams.
        assert!(!may("cto", "ceo"));
        assert!(!may("dev1", "cto"));
        assert!(!may("dev1", "cfo"));
        assert!(!may("ops", "ceo"));
        assert!(!may("ceo", "ops"));
    }

    #[test]
    fn the_people_above_are_each_node_as_a_person_nearest_first() {
        let mut all = chart();
        // ceo reports to the person u0; ops to u1.
        all[0] = agent("ceo", State::Running, Some(Manager::User("u0".into())));
        let people = |a: &str| people_above(&all, &AgentId(a.into()));
        // dev1 → cto → ceo → u0: every agent above has u0 above it.
        assert_eq!(people("dev1"), ["u0"]);
        assert_eq!(people("ops"), ["u1"]);
        assert!(people("loner").is_empty());
        assert!(people("nobody").is_empty());
    }

    #[test]
    fn only_a_stopped_or_failed_manager_blocks() {
        let blocked: Vec<State> = State::ALL
            .into_iter()
            .filter(|s| blocks_reports(&agent("m", *s, None)))
            .collect();
        assert_eq!(blocked, [State::Stopped, State::Error]);
    }
}
