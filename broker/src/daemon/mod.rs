//! The broker daemon (`broker`).
//!
//! - [`config`]: `broker.toml`, every field with its default;
//! - [`run`]: the wiring (overlay, agents from config and ads, broker-protocol server) and
//!   shutdown;
//! - [`http`]: `/status`, `/metrics`.

use std::path::PathBuf;

pub mod config;
pub mod http;
pub mod run;

/// Why the broker daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The config is unreadable or wrong.
    #[error("config {path}: {detail}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The key could not be loaded.
    #[error("broker key {path}: {source} (run `broker init` first?)")]
    Key {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: capability_schema::KeyError,
    },
    /// The membership certificate or trust anchors are wrong.
    #[error("trust: {0}")]
    Trust(String),
    /// The overlay failed to start.
    #[error("overlay: {0}")]
    Overlay(#[from] federation::OverlayError),
    /// The HTTP endpoint could not bind.
    #[error("http {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}
