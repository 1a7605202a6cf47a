//! The node manager daemon (`nodemgr`): tickets in, leases out, nothing lost.
//!
//! - [`config`]: `node.toml`, every field with its default;
//! - [`delegated`]: what the node has delegated (shares, scopes, signed delegations), swapped
//!   whole by a reload or a renewal;
//! - [`backend`]: which sliver backend runs (the Linux engine with this node's share of the
//!   host, or in-memory slivers) and its set-up;
//! - [`service`]: the node protocol's logic (redeem, renew, release, exec, keys, reaper,
//!   reconciliation), independent of the network;
//! - [`engine`]: the real isolation engine behind the service;
//! - [`memory`]: in-memory slivers for tests and simulation;
//! - [`monitor`]: host sampling and the signed ad;
//! - [`loops`]: the background loops (ads, disk watchdog, reaper);
//! - [`heartbeat`]: the node's small signed heartbeat between its ads;
//! - [`http`]: `/status`, `/leases`, `/slivers`, `/metrics`;
//! - [`view`]: the JSON bodies of `/status`, `/leases` and `/slivers`, for the handlers and
//!   their readers;
//! - [`lease_events`]: reading a spawn log from an offset and the reasons lease events give
//!   (the events live in the ledger);
//! - [`release_report`]: telling agents which of their tickets ended here early;
//! - [`reload`]: applying an edited node.toml without a restart (SIGHUP, `POST /reload`);
//! - [`revocation`]: refusing revoked tickets at redeem, ending leases of revoked parties;
//! - [`run`]: the wiring and graceful shutdown;
//! - [`ssh`]: the SSH endpoint into slivers (`ssh SLICE@NODE`).

pub mod backend;
pub mod config;
pub mod delegated;
pub mod engine;
pub mod heartbeat;
pub mod http;
pub mod lease_events;
pub mod loops;
pub mod memory;
pub mod monitor;
pub mod release_report;
pub mod reload;
pub mod revocation;
pub mod run;
pub mod service;
pub mod ssh;
pub mod uplink;
pub mod view;
