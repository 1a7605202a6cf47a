//! Local PlanetMesh testnets: the whole system on one machine, to see, break and measure.
//!
//! - [`topology`]: how many federations, nodes, agents and brokers, and where each sits;
//! - [`generate`]: the testnet directory (authorities, keys, certificates, peering, configs);
//! - [`launch`]: daemons as real processes, started and ended by pid;
//! - [`netns`]: hosts in network namespaces on a bridge (root);
//! - [`probe`]: the daemons' HTTP state and ad convergence.

pub mod generate;
pub mod launch;
pub mod netns;
pub mod probe;
pub mod topology;
