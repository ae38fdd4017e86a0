//! The agent lifecycle: states, triggers and the one transition table.
//!
//! Every state change of an agent goes through [`step`], which looks the edge
//! up in [`TRANSITIONS`]. Nothing else in the code base may set a state, so the
//! table is the whole truth about which moves are legal. It does not perform
//! side effects: the agent actor decides what to do on each edge.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Where an agent is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Created, never deployed.
    Draft,
    /// A deploy was asked for; the configuration is being checked (or is incomplete).
    Configuring,
    /// Configuration complete, no deployment.
    Ready,
    /// The deployer is creating the deployment's resources.
    Provisioning,
    /// The deployer is writing the runtime's configuration.
    Deploying,
    /// The runtime is being started; waiting for its hello.
    Starting,
    /// The runtime is up and healthy.
    Running,
    /// The runtime failed at least one probe.
    Degraded,
    /// Stopped on purpose (operator or budget).
    Stopped,
    /// Needs an operator: a deploy failed or the restart limit was reached.
    Error,
    /// A configuration change is being rolled out to the deployment.
    Updating,
    /// The deployment is being torn down.
    Destroying,
}

impl State {
    /// All states, in lifecycle order.
    pub const ALL: [State; 12] = [
        State::Draft,
        State::Configuring,
        State::Ready,
        State::Provisioning,
        State::Deploying,
        State::Starting,
        State::Running,
        State::Degraded,
        State::Stopped,
        State::Error,
        State::Updating,
        State::Destroying,
    ];

    /// The wire name (`"running"`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Draft => "draft",
            State::Configuring => "configuring",
            State::Ready => "ready",
            State::Provisioning => "provisioning",
            State::Deploying => "deploying",
            State::Starting => "starting",
            State::Running => "running",
            State::Degraded => "degraded",
            State::Stopped => "stopped",
            State::Error => "error",
            State::Updating => "updating",
            State::Destroying => "destroying",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the health timer runs in this state.
    pub fn is_supervised(self) -> bool {
        matches!(self, State::Running | State::Degraded | State::Starting)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operator command (the API's `POST /agents/{id}/{command}`, PATCH and DELETE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Walk the agent to `running`.
    Deploy,
    /// Start a stopped agent.
    Start,
    /// Stop the runtime.
    Stop,
    /// Stop and start the runtime.
    Restart,
    /// Tear the deployment down, keep the agent.
    Destroy,
    /// Roll a configuration change out to a live deployment (PATCH).
    Update,
    /// Remove the agent (DELETE).
    Delete,
}

impl Command {
    /// All commands.
    pub const ALL: [Command; 7] = [
        Command::Deploy,
        Command::Start,
        Command::Stop,
        Command::Restart,
        Command::Destroy,
        Command::Update,
        Command::Delete,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Deploy => "deploy",
            Command::Start => "start",
            Command::Stop => "stop",
            Command::Restart => "restart",
            Command::Destroy => "destroy",
            Command::Update => "update",
            Command::Delete => "delete",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Command> {
        Command::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What moves an agent: an operator command or something the system observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// An operator command.
    Cmd(Command),
    /// The configuration has every required field.
    ConfigComplete,
    /// A change removed a required field.
    ConfigIncomplete,
    /// The deployer created the deployment.
    Provisioned,
    /// The deployer wrote the runtime's configuration.
    Deployed,
    /// A configuration change reached the deployment.
    Updated,
    /// The runtime said hello.
    RuntimeUp,
    /// A health probe failed.
    ProbeFailed,
    /// A health probe succeeded.
    ProbeOk,
    /// Auto-recovery restarts the deployment.
    Recover,
    /// The runtime did not come up in time (or could not be started).
    StartFailed,
    /// Auto-recovery reached its restart limit.
    GiveUp,
    /// A deployer operation failed.
    Failed,
    /// Monthly budget reached.
    BudgetExceeded,
    /// The deployment is gone.
    Destroyed,
    /// The supervisor's restart intensity was exceeded.
    Escalated,
}

impl Trigger {
    /// Whether this trigger comes from the system rather than an operator.
    pub fn is_system(self) -> bool {
        !matches!(self, Trigger::Cmd(_))
    }
}

use Command as C;
use State as S;
use Trigger as T;

/// The transition table: `(from, trigger, to)`.
///
/// `Deploy` from `configuring` re-checks the configuration without moving, so
/// it appears as a self-edge; self-edges are not written to the history.
pub const TRANSITIONS: &[(State, Trigger, State)] = &[
    // deploy: draft → configuring → ready → provisioning → deploying → starting → running
    (S::Draft, T::Cmd(C::Deploy), S::Configuring),
    (S::Configuring, T::Cmd(C::Deploy), S::Configuring),
    (S::Stopped, T::Cmd(C::Deploy), S::Configuring),
    (S::Error, T::Cmd(C::Deploy), S::Configuring),
    (S::Configuring, T::ConfigComplete, S::Ready),
    (S::Ready, T::ConfigIncomplete, S::Configuring),
    (S::Ready, T::Cmd(C::Deploy), S::Provisioning),
    (S::Provisioning, T::Provisioned, S::Deploying),
    (S::Deploying, T::Deployed, S::Starting),
    (S::Starting, T::RuntimeUp, S::Running),
    // operator commands on a deployed agent
    (S::Stopped, T::Cmd(C::Start), S::Starting),
    (S::Running, T::Cmd(C::Stop), S::Stopped),
    (S::Degraded, T::Cmd(C::Stop), S::Stopped),
    (S::Starting, T::Cmd(C::Stop), S::Stopped),
    (S::Error, T::Cmd(C::Stop), S::Stopped),
    (S::Running, T::Cmd(C::Restart), S::Starting),
    (S::Degraded, T::Cmd(C::Restart), S::Starting),
    (S::Stopped, T::Cmd(C::Restart), S::Starting),
    (S::Error, T::Cmd(C::Restart), S::Starting),
    (S::Running, T::Cmd(C::Update), S::Updating),
    (S::Degraded, T::Cmd(C::Update), S::Updating),
    (S::Updating, T::Updated, S::Starting),
    (S::Running, T::Cmd(C::Destroy), S::Destroying),
    (S::Degraded, T::Cmd(C::Destroy), S::Destroying),
    (S::Stopped, T::Cmd(C::Destroy), S::Destroying),
    (S::Error, T::Cmd(C::Destroy), S::Destroying),
    (S::Destroying, T::Destroyed, S::Ready),
    // delete: agents with a deployment tear it down first; the others are removed
    // directly (removal is not a state, so those appear only in `allowed_commands`)
    (S::Stopped, T::Cmd(C::Delete), S::Destroying),
    (S::Error, T::Cmd(C::Delete), S::Destroying),
    // health
    (S::Running, T::ProbeFailed, S::Degraded),
    (S::Degraded, T::ProbeOk, S::Running),
    (S::Degraded, T::Recover, S::Starting),
    (S::Starting, T::StartFailed, S::Degraded),
    (S::Degraded, T::GiveUp, S::Error),
    (S::Starting, T::GiveUp, S::Error),
    // deployer failures
    (S::Provisioning, T::Failed, S::Error),
    (S::Deploying, T::Failed, S::Error),
    (S::Starting, T::Failed, S::Error),
    (S::Updating, T::Failed, S::Error),
    (S::Destroying, T::Failed, S::Error),
    // budget
    (S::Running, T::BudgetExceeded, S::Stopped),
    (S::Degraded, T::BudgetExceeded, S::Stopped),
    (S::Starting, T::BudgetExceeded, S::Stopped),
    // supervision gave up on the actor
    (S::Draft, T::Escalated, S::Error),
    (S::Configuring, T::Escalated, S::Error),
    (S::Ready, T::Escalated, S::Error),
    (S::Provisioning, T::Escalated, S::Error),
    (S::Deploying, T::Escalated, S::Error),
    (S::Starting, T::Escalated, S::Error),
    (S::Running, T::Escalated, S::Error),
    (S::Degraded, T::Escalated, S::Error),
    (S::Stopped, T::Escalated, S::Error),
    (S::Updating, T::Escalated, S::Error),
    (S::Destroying, T::Escalated, S::Error),
];

/// States from which DELETE removes the agent without a teardown.
const DELETABLE_WITHOUT_TEARDOWN: [State; 3] = [S::Draft, S::Configuring, S::Ready];

/// The next state for `trigger` in `from`, or `None` when the table has no such edge.
pub fn step(from: State, trigger: Trigger) -> Option<State> {
    TRANSITIONS
        .iter()
        .find(|(f, t, _)| *f == from && *t == trigger)
        .map(|(_, _, to)| *to)
}

/// Whether DELETE in `state` removes the agent at once (nothing deployed).
pub fn deletes_without_teardown(state: State) -> bool {
    DELETABLE_WITHOUT_TEARDOWN.contains(&state)
}

/// The operator commands the table accepts in `state`, in [`Command::ALL`] order.
pub fn allowed_commands(state: State) -> Vec<Command> {
    Command::ALL
        .into_iter()
        .filter(|c| {
            step(state, Trigger::Cmd(*c)).is_some()
                || (*c == Command::Delete && deletes_without_teardown(state))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_trigger() -> impl Strategy<Value = Trigger> {
        prop_oneof![
            prop::sample::select(Command::ALL.to_vec()).prop_map(Trigger::Cmd),
            prop::sample::select(vec![
                T::ConfigComplete,
                T::ConfigIncomplete,
                T::Provisioned,
                T::Deployed,
                T::Updated,
                T::RuntimeUp,
                T::ProbeFailed,
                T::ProbeOk,
                T::Recover,
                T::StartFailed,
                T::GiveUp,
                T::Failed,
                T::BudgetExceeded,
                T::Destroyed,
                T::Escalated,
            ]),
        ]
    }

    #[test]
    fn table_has_no_duplicate_edges() {
        for (i, (f, t, _)) in TRANSITIONS.iter().enumerate() {
            for (g, u, _) in &TRANSITIONS[i + 1..] {
                assert!(!(f == g && t == u), "two edges for ({f}, {t:?})");
            }
        }
    }

    #[test]
    fn every_state_is_reachable_from_draft() {
        let mut seen = vec![State::Draft];
        let mut i = 0;
        while i < seen.len() {
            for (f, _, to) in TRANSITIONS {
                if *f == seen[i] && !seen.contains(to) {
                    seen.push(*to);
                }
            }
            i += 1;
        }
        for s in State::ALL {
            assert!(seen.contains(&s), "{s} unreachable");
        }
    }

    #[test]
    fn illegal_commands_are_refused() {
        assert_eq!(step(S::Draft, T::Cmd(C::Start)), None);
        assert_eq!(step(S::Running, T::Cmd(C::Deploy)), None);
        assert_eq!(
            allowed_commands(S::Running),
            vec![C::Stop, C::Restart, C::Destroy, C::Update]
        );
        assert_eq!(allowed_commands(S::Draft), vec![C::Deploy, C::Delete]);
    }

    proptest! {
        /// No sequence of triggers reaches a state outside the table, draft and
        /// stopped agents never move by themselves, and `error` is only left by an
        /// operator command.
        #[test]
        fn no_sequence_leaves_the_table(triggers in prop::collection::vec(any_trigger(), 0..200)) {
            let mut state = State::Draft;
            for trigger in triggers {
                match step(state, trigger) {
                    None => {
                        if let T::Cmd(c) = trigger {
                            prop_assert!(!allowed_commands(state).contains(&c)
                                || (c == C::Delete && deletes_without_teardown(state)));
                        }
                    }
                    Some(next) => {
                        prop_assert!(TRANSITIONS.contains(&(state, trigger, next)));
                        prop_assert!(State::ALL.contains(&next));
                        if trigger.is_system() && trigger != T::Escalated {
                            prop_assert!(state != S::Draft && state != S::Stopped,
                                "{state} moved by itself on {trigger:?}");
                            prop_assert!(state != S::Error, "error left on {trigger:?}");
                        }
                        state = next;
                    }
                }
            }
        }
    }
}
