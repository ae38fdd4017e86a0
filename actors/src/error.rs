//! The error every actor request can answer with.
//!
//! Business failures travel in replies as [`Error`]; the HTTP layer maps each
//! variant to a status and a stable `code`. An actor's own `Err` from `handle`
//! is reserved for "my state is corrupt, restart me".

use crate::lifecycle::{Command, State};
use crate::ports::StoreError;

/// A failed request to the actor system.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// No such agent (or organization) for this caller.
    #[error("not found")]
    NotFound,
    /// The command is not allowed in the current state.
    #[error("cannot {command} an agent in state {state}")]
    IllegalTransition {
        /// Current state.
        state: State,
        /// Refused command.
        command: Command,
        /// Commands accepted in `state`.
        allowed: Vec<Command>,
    },
    /// The monthly budget is used up.
    #[error("monthly budget exhausted for {period}: raise the budget or wait for the next month")]
    BudgetExceeded {
        /// The exhausted period (`YYYY-MM`).
        period: String,
    },
    /// The organization's monthly budget (all agents together) is used up.
    #[error(
        "the organization's monthly budget is exhausted for {period}: an instance admin can raise its limits, or wait for the next month"
    )]
    OrgBudgetExceeded {
        /// The exhausted period (`YYYY-MM`).
        period: String,
    },
    /// Another agent in the organization has this name.
    #[error("an agent named {0:?} already exists")]
    NameTaken(String),
    /// The runtime's token was wrong or revoked.
    #[error("invalid runtime token")]
    Unauthorized,
    /// No such thing (approval, grant, document) for this caller.
    #[error("{0} not found")]
    Missing(&'static str),
    /// The request conflicts with the current state (stable code, message).
    #[error("{1}")]
    Conflict(&'static str, String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The request is well-formed but refused (with a reason).
    #[error("{0}")]
    Invalid(String),
    /// A plan limit of the organization is reached.
    #[error("{0}")]
    LimitReached(String),
    /// The organization is suspended.
    #[error("the organization is suspended")]
    Suspended,
    /// Too many requests are already queued for this actor.
    #[error("too many requests in flight for this actor")]
    Overloaded,
    /// The actor did not answer in time.
    #[error("the actor did not answer in time")]
    Timeout,
    /// The actor stopped before answering (it is being restarted), or the store failed.
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Conflict(what) => Error::NameTaken(what),
            StoreError::LimitReached(what) => Error::LimitReached(what),
            other => Error::Unavailable(other.to_string()),
        }
    }
}

/// Result of an actor request.
pub type Result<T> = std::result::Result<T, Error>;
