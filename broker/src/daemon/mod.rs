//! The broker daemon (`broker`).
//!
//! - [`announce`]: the broker's provider record on the overlay, so users find it;
//! - [`config`]: `broker.toml`, every field with its default;
//! - [`revocation`]: revoked agents forgotten at once;
//! - [`run`]: the wiring (overlay, agents from config and ads, broker-protocol server) and
//!   shutdown;
//! - [`http`]: `/status`, `/metrics`;
//! - [`view`]: the JSON body of `/status`, for the handler and its readers.

pub mod announce;
pub mod config;
pub mod http;
pub mod revocation;
pub mod run;
pub mod view;

pub use federation::daemon::DaemonError;
