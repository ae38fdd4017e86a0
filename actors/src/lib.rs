//! `cadre-actors`: Cadre's actor runtime and the domain it owns.
//!
//! # Layout
//! - [`lifecycle`]: states, commands and the one transition table.
//! - [`domain`]: the agent record, its spec, history entries and the published view.
//! - [`budget`]: pricing, the monthly period, warning and limit arithmetic.
//! - [`restart`]: restart intensity and exponential back-off.
//! - [`ports`]: `Store`, `Deployer`, `Clock` and `Secrets`, implemented by the root crate.
//! - [`agent`]: `AgentActor`, one per agent: state machine, health timer, budget.
//! - [`approval`]: `ApprovalActor`, one per organization: parks tool calls until a human decides.
//! - [`tenant`]: `TenantSupervisor`, one per organization: create, supervise, read index.
//! - [`root`]: `RootSupervisor`, one per process: restarts tenants.
//! - [`registry`]: (org, agent) → actor lookups and the gated call path.
//! - [`client`]: `Cadre`, the handle the HTTP layer calls.
//! - [`events`]: what actors broadcast after each commit.
//! - [`audit`]: audit entries, written with the change they record.
//! - [`governance`]: tool catalog, profiles, approval policies, the permission engine, kill switches.
//! - [`tenancy`]: each organization's agent limit and suspension, as published by identity.
//!
//! This crate never names a database, HTTP framework or container API: it
//! depends on ractor, tokio and small utility crates only.

pub mod agent;
pub mod approval;
pub mod audit;
pub mod budget;
pub mod chart;
pub mod client;
pub mod context;
pub mod domain;
pub mod error;
pub mod events;
pub mod governance;
pub mod lifecycle;
pub mod ports;
pub mod registry;
pub mod restart;
pub mod root;
pub mod task;
pub mod tenancy;
pub mod tenant;

pub use client::{Cadre, ChaosMode, ChaosTarget};
pub use context::{Ctx, Settings};
pub use error::{Error, Result};
