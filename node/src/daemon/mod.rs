//! The node manager daemon (`nodemgr`): tickets in, leases out, nothing lost.
//!
//! - [`service`]: the node protocol's logic (redeem, renew, release, exec, keys, reaper,
//!   reconciliation), independent of the network;
//! - [`memory`]: in-memory slivers for tests and simulation.

pub mod memory;
pub mod service;
