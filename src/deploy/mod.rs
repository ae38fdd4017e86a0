//! Deployment targets (implementations of the `Deployer` port).
//!
//! Only `local` exists so far; Docker, SSH, Fly.io and Railway come with
//! their own issue. Nothing here knows about actors or HTTP.

pub mod local;

pub use local::{LocalDeployer, RuntimeConfig};
