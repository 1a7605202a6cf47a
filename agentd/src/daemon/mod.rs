//! The agent daemon (`agentd`).
//!
//! - [`config`]: `agent.toml`, every field with its default;
//! - [`run`]: the wiring (overlay, ads into the inventory, protocol server) and shutdown;
//! - [`http`]: `/status`, `/tickets`, `/metrics`;
//! - [`view`]: the JSON bodies of `/status` and `/tickets`, for the handlers and their readers.

pub mod config;
pub mod http;
pub mod run;
pub mod view;
