//! The PlanetMesh broker (paper §2.2, §4.2.4): turns a service's `SliceRequest` into a plan and
//! tickets across federations.
//!
//! - [`planner`]: the pure planning function (constraints, site spread, fit, price) and its
//!   explanations;
//! - [`acquire`]: gathering offers from agents in parallel, planning, obtaining tickets,
//!   replanning around refusals, all-or-nothing or best effort; the network behind a trait;
//! - [`wire`]: the broker protocol as served here (requests carry the principal's certificate);
//! - [`daemon`]: `broker run` — config, overlay wiring, protocol server, HTTP status/metrics.
//!
//! `slicectl --agent` reuses [`acquire`] as the paper's integrated broker.

pub mod acquire;
pub mod daemon;
pub mod planner;
pub mod wire;
