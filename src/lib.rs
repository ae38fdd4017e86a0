//! Cadre: a control plane that runs AI agents as employees of an organization.
//!
//! # Layout
//! - [`activity`]: batched activity writes, live broadcasts, retention.
//! - [`app`]: wiring and ordered shutdown.
//! - [`config`]: layered configuration (defaults ← file ← `CADRE_*`).
//! - [`http`]: the REST/WebSocket surface; handlers only message actors.
//! - [`store`]: the SQL store (the `Store` port plus historical reads).
//! - [`deploy`]: deployment targets (the `Deployer` port).
//! - [`auth`]: passwords, access tokens, runtime-token secrets.
//! - [`files`]: the data directory and its files, private to the owner.
//! - [`knowledge`]: knowledge bases, agents' memories, the search index.
//! - [`protocol`] and [`runtime`]: the agent runtime and what it speaks.
//!
//! The actor runtime and the domain live in the `cadre-actors` crate.

pub mod activity;
pub mod agent_loop;
pub mod app;
pub mod auth;
pub mod config;
pub mod cron;
pub mod deploy;
pub mod files;
pub mod http;
pub mod identity;
pub mod knowledge;
pub mod llm;
pub mod mcp;
pub mod prompt;
pub mod protocol;
pub mod runtime;
pub mod schedule;
pub mod secrets;
pub mod store;
pub mod tools;
pub mod webhook;

/// mimalloc instead of glibc's malloc: allocation and its arena locks were
/// a fifth of the profile of HTTP approval decisions (BENCHMARKS.md,
/// Governance); with it they run 59 % faster and single-event ingest 30 %.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A UUID-shaped id derived from `seed` (SHA-256): the same seed gives the
/// same id, so a repeated request (a re-sent tool call, a scheduled run
/// after a crash) finds what the first one created.
pub fn derived_uuid(seed: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, seed.as_bytes());
    let h: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Installs aws-lc-rs as the process's TLS crypto provider (the one crypto
/// backend). Outbound HTTPS clients (reqwest on rustls) need it before they
/// are built; calling it again is harmless.
pub fn init_tls() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
