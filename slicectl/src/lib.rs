//! `slicectl`, the PlanetMesh service manager (paper §4.2.4): from "what I need" to a running
//! slice, and its care afterwards.
//!
//! - [`spec`]: slice specs (TOML or flags) → `SliceRequest`;
//! - [`config`]: `slicectl.toml`, the principal's key and certificate;
//! - [`context`]: where the config is found without `--config`, and named contexts;
//! - [`brokers`]: which brokers to ask and in which order, when to move on to the next, and
//!   each broker's last outcome;
//! - [`client`]: the overlay client: brokers, or agents in-process (the paper's integrated
//!   broker, [`broker::acquire`]); node calls fanned out with bounded concurrency;
//! - [`state`]: the local redb state (slices, unredeemed tickets, leases), written before
//!   redeeming so `sync` can finish what a crash or a dead node interrupted;
//! - [`ops`]: the commands (create, status, renew, delete, exec, spawn, logs, keys, sync,
//!   list);
//! - [`ticket`]: tickets in their holders' hands: show, attenuate, delegate (offline), import
//!   and redeem a ticket handed on;
//! - [`exit`]: one exit code per failure class;
//! - [`preflight`]: checks made before any network call (slice name, certificate, trust);
//! - [`human`]: local times and durations for human output;
//! - [`nodes`]: one name per node (the ad's), and every form a node argument may take;
//! - [`watch`]: `slice logs --follow` and `slice status --watch`;
//! - [`events`]: `slice events`, what the nodes recorded of each sliver;
//! - [`ssh`]: `slice ssh`, the user's `ssh` into a sliver with the node's host key pinned.

pub mod brokers;
pub mod client;
pub mod config;
pub mod context;
pub mod events;
pub mod exit;
pub mod human;
pub mod nodes;
pub mod ops;
pub mod preflight;
pub mod spec;
pub mod ssh;
pub mod state;
pub mod ticket;
pub mod watch;
