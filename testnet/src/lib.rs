//! Local PlanetMesh testnets: the whole system on one machine, to see, break and measure.
//!
//! - [`topology`]: how many federations, nodes, agents and brokers, and where each sits;
//! - [`demo`]: the flow a newcomer wants to see, step by step with times;
//! - [`generate`]: the testnet directory (authorities, keys, certificates, peering, configs);
//! - [`launch`]: daemons as real processes, started and ended by pid;
//! - [`netns`]: hosts in network namespaces on a bridge (root);
//! - [`internet`]: the host standing for the Internet on a namespaced testnet (HTTP and UDP
//!   echo naming each peer's address), which slivers reach through their node's egress;
//! - [`peer`]: two running testnets peered as two operators peer their testbeds;
//! - [`probe`]: the daemons' HTTP state and ad convergence;
//! - [`scenario`]: scenario files (TOML) scripting acquisitions, faults and checks
//!   (`testnet scenario run`), which the end-to-end tests run;
//! - [`dashboard`]: a live web page of the whole testnet (`testnet dashboard`);
//! - [`sim`]: thousands of in-process overlay peers: ad convergence and planning at scale;
//! - [`vsim`]: the same overlay as a discrete-event simulation in virtual time, each distinct
//!   ad verified once for real and its cost charged to every simulated receiver.

pub mod dashboard;
pub mod demo;
pub mod generate;
pub mod internet;
pub mod launch;
pub mod netns;
pub mod peer;
pub mod probe;
pub mod scenario;
pub mod sim;
pub mod topology;
pub mod vsim;

/// Waits `d` between two looks at something outside this process (a child, a pid file, an
/// HTTP endpoint). The testnet's commands are synchronous, so this is the one place they sleep.
#[allow(
    clippy::disallowed_methods,
    reason = "synchronous command-line code polling other processes"
)]
pub fn pause(d: std::time::Duration) {
    std::thread::sleep(d);
}
