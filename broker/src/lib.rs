//! The PlanetMesh broker (paper §2.2, §4.2.4): turns a service's `SliceRequest` into a plan and
//! tickets across federations.
//!
//! - [`planner`]: the pure planning function (constraints, site spread, fit, price) and its
//!   explanations.
//!
//! The broker daemon (`broker run`) and acquisition are built by the broker issue.

pub mod planner;
