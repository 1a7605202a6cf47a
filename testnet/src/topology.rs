//! The shape of a testnet: which hosts exist, what each is, where it sits. Pure: the same
//! numbers always give the same layout, so a testnet directory can be rebuilt and compared.
//!
//! Layout rules:
//! - federations are `fed0`, `fed1`, …; hosts are spread over them round-robin;
//! - two nodes share a site (`fed0-site0`, …), so slices can ask for site spread;
//! - agent `i` serves federation `i mod F`: the first `F` agents are the testbeds' own agents,
//!   further ones are private agents of an institution (the first site of their federation);
//! - every node delegates a share to each agent of its federation that covers it; shares may
//!   overlap: the node, not the agent, is the final arbiter;
//! - brokers follow every federation; the principal belongs to `fed0`;
//! - every federation peers with every other for principals and brokers.

use serde::{Deserialize, Serialize};

/// What a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostRole {
    /// `nodemgr`.
    Node,
    /// `agentd`.
    Agent,
    /// `broker`.
    Broker,
}

impl HostRole {
    /// The daemon binary's name.
    pub fn binary(self) -> &'static str {
        match self {
            HostRole::Node => "nodemgr",
            HostRole::Agent => "agentd",
            HostRole::Broker => "broker",
        }
    }
}

/// One host of the testnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    /// Its name (`node3`, `agent0`, `broker0`): also its directory.
    pub name: String,
    /// What it runs.
    pub role: HostRole,
    /// Its index among hosts of its role.
    pub index: u32,
    /// Its federation (brokers: the first; they follow all).
    pub federation: String,
    /// Its site.
    pub site: String,
    /// Nodes only: the agents it delegates to.
    pub delegates_to: Vec<String>,
}

/// How many of everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Federations.
    pub federations: u32,
    /// Nodes.
    pub nodes: u32,
    /// Agents.
    pub agents: u32,
    /// Brokers.
    pub brokers: u32,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            federations: 2,
            nodes: 6,
            agents: 3,
            brokers: 1,
        }
    }
}

/// Why a topology cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// Zero of something that must exist.
    #[error("a testnet needs at least one {0}")]
    Missing(&'static str),
    /// A federation without an agent would have nodes nobody can issue tickets for.
    #[error(
        "{agents} agents for {federations} federations: every federation needs an agent (use --agents {federations} or more)"
    )]
    TooFewAgents {
        /// Agents asked.
        agents: u32,
        /// Federations asked.
        federations: u32,
    },
    /// More than the address plan allows.
    #[error("at most 200 hosts in a testnet ({0} asked)")]
    TooMany(u32),
}

/// The name of federation `i`.
pub fn federation_name(i: u32) -> String {
    format!("fed{i}")
}

impl Topology {
    /// Checks the numbers.
    pub fn check(&self) -> Result<(), TopologyError> {
        if self.federations == 0 {
            return Err(TopologyError::Missing("federation"));
        }
        if self.nodes == 0 {
            return Err(TopologyError::Missing("node"));
        }
        if self.agents < self.federations {
            return Err(TopologyError::TooFewAgents {
                agents: self.agents,
                federations: self.federations,
            });
        }
        let total = self.nodes + self.agents + self.brokers;
        if total > 200 {
            return Err(TopologyError::TooMany(total));
        }
        Ok(())
    }

    /// Every host, nodes first, then agents, then brokers.
    pub fn hosts(&self) -> Result<Vec<HostPlan>, TopologyError> {
        self.check()?;
        let f = self.federations;
        let site_of_node = |i: u32| format!("{}-site{}", federation_name(i % f), (i / f) / 2);
        let mut hosts = Vec::new();
        for i in 0..self.nodes {
            let federation = federation_name(i % f);
            let site = site_of_node(i);
            let delegates_to = (0..self.agents)
                .filter(|a| a % f == i % f)
                .filter(|a| *a < f || site == format!("{}-site0", federation))
                .map(|a| format!("agent{a}"))
                .collect();
            hosts.push(HostPlan {
                name: format!("node{i}"),
                role: HostRole::Node,
                index: i,
                federation,
                site,
                delegates_to,
            });
        }
        for a in 0..self.agents {
            let federation = federation_name(a % f);
            let site = format!("{federation}-site0");
            hosts.push(HostPlan {
                name: format!("agent{a}"),
                role: HostRole::Agent,
                index: a,
                federation,
                site,
                delegates_to: vec![],
            });
        }
        for b in 0..self.brokers {
            hosts.push(HostPlan {
                name: format!("broker{b}"),
                role: HostRole::Broker,
                index: b,
                federation: federation_name(0),
                site: format!("{}-site0", federation_name(0)),
                delegates_to: vec![],
            });
        }
        Ok(hosts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_spreads_nodes_and_gives_every_node_an_agent() {
        let hosts = Topology::default().hosts().unwrap();
        assert_eq!(hosts.len(), 10);
        let nodes: Vec<_> = hosts.iter().filter(|h| h.role == HostRole::Node).collect();
        assert!(nodes.iter().all(|n| !n.delegates_to.is_empty()));
        assert_eq!(nodes.iter().filter(|n| n.federation == "fed1").count(), 3);
        // agent2 is fed0's private agent: only the first site of fed0 delegates to it.
        let to_agent2: Vec<_> = nodes
            .iter()
            .filter(|n| n.delegates_to.contains(&"agent2".to_owned()))
            .collect();
        assert!(!to_agent2.is_empty() && to_agent2.iter().all(|n| n.site == "fed0-site0"));
        let sites: std::collections::BTreeSet<_> = nodes.iter().map(|n| n.site.clone()).collect();
        assert!(sites.len() >= 4, "{sites:?}");
    }

    #[test]
    fn impossible_topologies_say_what_to_change() {
        let t = Topology {
            federations: 3,
            agents: 2,
            ..Topology::default()
        };
        assert!(t.check().unwrap_err().to_string().contains("--agents 3"));
        assert!(
            Topology {
                nodes: 0,
                ..Topology::default()
            }
            .check()
            .is_err()
        );
        assert!(
            Topology {
                nodes: 300,
                ..Topology::default()
            }
            .check()
            .is_err()
        );
    }
}
