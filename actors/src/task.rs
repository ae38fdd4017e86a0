//! Tasks: work given to an agent. The agent actor owns its tasks' queue and
//! states (see [`TaskBook`]); the runtime runs them and reports steps and
//! state changes over its connection.
//!
//! States: `queued` → `running` ⇄ `waiting_approval` → `succeeded` |
//! `failed` | `cancelled`. A task is persisted (queued) before its creator
//! gets an answer; a finished task never changes again.

use crate::ports::StoreError;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting for the agent's runtime.
    Queued,
    /// The runtime works on it.
    Running,
    /// A tool call waits for a human decision.
    WaitingApproval,
    /// Finished with a result.
    Succeeded,
    /// Finished without one (`error` says why).
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

impl TaskState {
    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::WaitingApproval => "waiting_approval",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses an API name.
    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "waiting_approval" => TaskState::WaitingApproval,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            _ => return None,
        })
    }

    /// Whether the task is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

/// Limits of one task; exceeding one fails it with a reason naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLimits {
    /// Model calls at most.
    pub max_steps: u32,
    /// Seconds from start at most.
    pub max_seconds: u64,
    /// Input plus output tokens at most.
    pub max_tokens: u64,
}

impl Default for TaskLimits {
    fn default() -> Self {
        TaskLimits {
            max_steps: 20,
            max_seconds: 600,
            max_tokens: 200_000,
        }
    }
}

/// A task as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Its id (UUID v7).
    pub id: String,
    /// Organization.
    pub org_id: String,
    /// The agent that does it.
    pub agent_id: String,
    /// What to do.
    pub instruction: String,
    /// Optional data for it.
    pub input: serde_json::Value,
    /// Where it is.
    pub state: TaskState,
    /// The result (`succeeded`).
    pub result: Option<String>,
    /// Why it failed or was cancelled (a stable code, then words).
    pub error: Option<String>,
    /// Limits.
    pub limits: TaskLimits,
    /// Who created it (`user:…`, `api_key:…`, `agent:…`).
    pub created_by: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// When the runtime started it.
    pub started_at: Option<i64>,
    /// When it finished.
    pub finished_at: Option<i64>,
    /// The runtime process that runs it (set when it starts): a runtime
    /// that connects with another pid has lost it.
    pub runner_pid: Option<u32>,
    /// For a replay: the task it branches from.
    pub parent_id: Option<String>,
    /// For a replay: the first step run live (earlier ones are the
    /// parent's, copied when the branch is stored).
    pub from_step: Option<u32>,
    /// The version of its agent's definition it runs with (set by the
    /// agent's actor when it is given the task; a replay keeps its
    /// original's unless told otherwise). `None`: an agent from before
    /// versions.
    pub version: Option<u32>,
}

impl TaskRecord {
    /// A new task in state `queued` (its agent's actor stamps `created_at`
    /// when it stores it).
    pub fn queued(
        org_id: &str,
        agent_id: &str,
        instruction: String,
        input: serde_json::Value,
        limits: TaskLimits,
        created_by: String,
    ) -> TaskRecord {
        TaskRecord {
            id: uuid::Uuid::now_v7().to_string(),
            org_id: org_id.to_string(),
            agent_id: agent_id.to_string(),
            instruction,
            input,
            state: TaskState::Queued,
            result: None,
            error: None,
            limits,
            created_by,
            created_at: 0,
            started_at: None,
            finished_at: None,
            runner_pid: None,
            parent_id: None,
            from_step: None,
            version: None,
        }
    }
}

/// One recorded step of a task (a model call or a tool call), as the
/// runtime reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStep {
    /// The task.
    pub task_id: String,
    /// 1, 2, … in the order they happened.
    pub seq: u32,
    /// `model` or `tool`.
    pub kind: String,
    /// What the runtime recorded (prompt messages or their hash, response,
    /// tool call and result, tokens, latency, decision ids).
    pub body: serde_json::Value,
    /// Tokens this step used (model steps).
    pub tokens: u64,
    /// Milliseconds it took.
    pub latency_ms: u64,
    /// When it was recorded.
    pub at: i64,
}

/// What the control plane tells a connected runtime about tasks.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOrder {
    /// Run this task (a runtime ignores a task it already runs).
    Run(Box<TaskRecord>),
    /// Stop working on this task.
    Cancel(String),
}

/// What a runtime reports about a task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskReport {
    /// A state change (`running`, `waiting_approval`, or final).
    State {
        /// The task.
        task_id: String,
        /// Its new state.
        state: TaskState,
        /// The result, when it succeeded.
        result: Option<String>,
        /// Why, when it failed.
        error: Option<String>,
    },
    /// A step to record.
    Step(Box<TaskStep>),
    /// Text the model streamed while step `seq` runs (published, not
    /// stored: the step records the whole response).
    Delta {
        /// The task.
        task_id: String,
        /// The step it belongs to.
        seq: u32,
        /// The text.
        text: String,
    },
}

/// Durable storage of tasks and their steps. Every method returns only
/// after the change is committed.
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Stores a new task with the audit entry of its creation.
    async fn insert_task(
        &self,
        task: &TaskRecord,
        audit: &crate::audit::AuditEntry,
    ) -> Result<(), StoreError>;
    /// Stores a task's new state, result, error and times, with the audit
    /// entry of an operator's change (none for the runtime's reports).
    async fn update_task(
        &self,
        task: &TaskRecord,
        audit: Option<&crate::audit::AuditEntry>,
    ) -> Result<(), StoreError>;
    /// Records a step; a step whose `(task_id, seq)` exists already is left
    /// as it was (a runtime re-sending after a reconnect): `false` then.
    async fn add_step(&self, step: &TaskStep) -> Result<bool, StoreError>;
    /// The agent's tasks that are not finished, oldest first.
    async fn open_tasks(&self, org: &str, agent: &str) -> Result<Vec<TaskRecord>, StoreError>;
}

/// An agent's unfinished tasks and the connection they are delivered to
/// (kept by the agent actor, loaded on first use).
#[derive(Debug, Default)]
pub struct TaskBook {
    /// Unfinished tasks by id (UUID v7: ordered by creation).
    pub open: BTreeMap<String, TaskRecord>,
    /// The connected runtime's task channel, with its connection and pid.
    pub outbox: Option<Outbox>,
}

/// A connected runtime's task channel.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// Connection id from the hello.
    pub conn: u64,
    /// The runtime process.
    pub pid: u32,
    /// Orders for the connection.
    pub tx: tokio::sync::mpsc::Sender<TaskOrder>,
}

impl TaskBook {
    /// Tasks still waiting for the runtime.
    pub fn queued(&self) -> usize {
        self.open
            .values()
            .filter(|t| t.state == TaskState::Queued)
            .count()
    }

    /// Hands one new task to the connected runtime, if any.
    pub fn deliver_one(&self, task: &TaskRecord) {
        if let Some(out) = &self.outbox {
            let _ = out.tx.try_send(TaskOrder::Run(Box::new(task.clone())));
        }
    }

    /// Hands every queued task (and, to the same process, every running
    /// one: it ignores those it has) to the connected runtime, if any.
    pub fn deliver(&self) {
        let Some(out) = &self.outbox else { return };
        for t in self.open.values() {
            let give = t.state == TaskState::Queued
                || (!t.state.is_final() && t.runner_pid == Some(out.pid));
            if give
                && out
                    .tx
                    .try_send(TaskOrder::Run(Box::new(t.clone())))
                    .is_err()
            {
                // Full or closed: the rest goes out on the next attach.
                return;
            }
        }
    }
}

/// Whether a runtime may move a task from `from` to `to`.
pub fn runtime_may(from: TaskState, to: TaskState) -> bool {
    use TaskState::*;
    matches!(
        (from, to),
        (Queued, Running)
            | (Running, WaitingApproval)
            | (WaitingApproval, Running)
            | (Queued | Running | WaitingApproval, Succeeded | Failed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_final_states_are_final() {
        for s in [
            TaskState::Queued,
            TaskState::Running,
            TaskState::WaitingApproval,
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::Cancelled,
        ] {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
            assert_eq!(s.is_final(), !runtime_may(s, TaskState::Failed));
        }
        assert!(!runtime_may(TaskState::Succeeded, TaskState::Running));
        assert!(!runtime_may(TaskState::Queued, TaskState::Cancelled));
        assert_eq!(TaskState::parse("done"), None);
    }
}
