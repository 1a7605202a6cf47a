//! The agent daemon (`agentd`).
//!
//! - [`config`]: `agent.toml`, every field with its default;
//! - [`run`]: the wiring (overlay, ads into the inventory, protocol server) and shutdown;
//! - [`http`]: `/status`, `/tickets`, `/metrics`.

pub mod config;
pub mod http;
pub mod run;
