//! The PlanetMesh agent (paper §2.2, §4.2.2), made plural: any testbed or institution runs one,
//! and a node may delegate shares to several.
//!
//! - [`inventory`]: the nodes that delegated a share to this agent, from validated ads;
//! - [`policy`]: who may get which tickets; every refusal names its rule;
//! - [`asks`]: principals' signed asks, and how many slivers were minted under each;
//! - [`ledger`]: every minted ticket, durable before it is returned (redb);
//! - [`revocation`]: revoked nodes and delegations out of the inventory;
//! - [`agent`]: `GetAds`, `GetTickets` and `Released`, independent of the network.
//!
//! [`daemon`] (`agentd run`, `agentd init`) wires these to the overlay and an HTTP endpoint.

pub mod agent;
pub mod asks;
pub mod daemon;
pub mod inventory;
pub mod ledger;
pub mod policy;
pub mod revocation;
