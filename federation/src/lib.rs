//! PlanetMesh federation: how independent testbeds find each other and whom they believe.
//!
//! - [`trust`]: federation authorities, membership certificates, peering agreements,
//!   revocation lists, and the [`TrustStore`] that evaluates them (ad validation included).
//! - [`overlay`]: the libp2p swarm every daemon embeds, behind an [`OverlayHandle`]: ad gossip
//!   validated by the trust store, and the agent/node/broker request-response protocols.
//! - [`testing`]: fixed-key federations and nodes for tests, benchmarks and simulations.
//! - [`daemon`]: what every daemon's `main` shares (logging, signals, trust config).
//! - [`metrics`]: the daemons' Prometheus metrics, encoded by `prometheus-client`.
//! - [`manual`]: every binary's completions, man pages and long `--version`.
//!
//! The `fedctl` binary of this crate is the operator's tool for the trust half.

pub mod daemon;
pub mod manual;
pub mod metrics;
pub mod overlay;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod trust;

pub use overlay::{Overlay, OverlayConfig, OverlayError, OverlayHandle, SharedTrust};
pub use trust::{AdRejection, Authority, TrustError, TrustStore};

/// The current time in Unix seconds (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
