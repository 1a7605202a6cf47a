//! The broker daemon (`broker`).
//!
//! - [`config`]: `broker.toml`, every field with its default;
//! - [`run`]: the wiring (overlay, agents from config and ads, broker-protocol server) and
//!   shutdown;
//! - [`http`]: `/status`, `/metrics`.

pub mod config;
pub mod http;
pub mod run;

pub use federation::daemon::DaemonError;
