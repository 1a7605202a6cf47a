//! Slices and leases: what a service asks for and what a node grants.
//!
//! - [`SliceRequest`]: a service manager's "what I need": per-sliver resources, a count or
//!   explicit nodes, constraints, a duration and an acquisition mode.
//! - [`SliceKind`]: a regular slice, or an admin slice (paper §4.3) with named capabilities.
//! - [`Lease`] (signed by the node): the node's promise that a sliver holds these resources
//!   from `start` to `end`. Renewal returns a new lease with the end actually granted.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::resources::Resources;
use crate::signed::SignedType;

/// A slice's kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliceKind {
    /// A regular slice: reduced capabilities, its own views of everything.
    #[default]
    Regular,
    /// An admin slice (paper §4.3).
    Admin {
        /// Linux capabilities granted beyond a regular sliver's, by name (`CAP_NET_RAW`).
        capabilities: Vec<String>,
        /// Whether the sliver sees the host's processes.
        host_pid_view: bool,
    },
}

impl SliceKind {
    /// Whether this is an admin slice.
    pub fn is_admin(&self) -> bool {
        matches!(self, SliceKind::Admin { .. })
    }
}

impl fmt::Display for SliceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SliceKind::Regular => f.write_str("regular"),
            SliceKind::Admin {
                capabilities,
                host_pid_view,
            } => {
                write!(f, "admin[{}]", capabilities.join(","))?;
                if *host_pid_view {
                    f.write_str("+host-pids")?;
                }
                Ok(())
            }
        }
    }
}

/// How an acquisition treats partial success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AcquireMode {
    /// Every sliver or none: on any failure, return nothing and release what was obtained.
    #[default]
    AllOrNothing,
    /// Return what could be obtained and say what is missing.
    BestEffort,
}

impl fmt::Display for AcquireMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AcquireMode::AllOrNothing => "all-or-nothing",
            AcquireMode::BestEffort => "best-effort",
        })
    }
}

/// Where the slivers go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliverTarget {
    /// This many slivers on nodes the broker picks.
    Count(u32),
    /// One sliver on each of these nodes.
    Nodes(Vec<PublicKey>),
}

impl SliverTarget {
    /// How many slivers are asked for.
    pub fn count(&self) -> usize {
        match self {
            SliverTarget::Count(n) => *n as usize,
            SliverTarget::Nodes(nodes) => nodes.len(),
        }
    }
}

/// Constraints on where slivers may go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceConstraints {
    /// Federations allowed (empty: any the broker follows).
    pub federations: Vec<String>,
    /// At least this many distinct sites.
    pub min_sites: u32,
    /// Nodes never to use.
    pub exclude_nodes: Vec<PublicKey>,
    /// At most this price per sliver for the whole duration, in micro-credits.
    pub max_price: Option<u64>,
}

/// What a sliver may do on the network beyond a regular sliver's defaults (paper §3.2,
/// §3.3). Each part is off unless granted; off parts are left out of every encoding, so
/// requests, tickets and leases without them encode as before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NetGrant {
    /// Raw sockets (CAP_NET_RAW) in the sliver's own network namespace, for ping, traceroute
    /// and measurement services: what it sends still carries only its own address, and it sees
    /// only its own traffic. An agent grants it only to principals its policy names.
    #[serde(default, skip_serializing_if = "is_false")]
    pub raw: bool,
    /// Egress held to the granted rate (a hard cap) instead of guaranteed at that rate and
    /// sharing the node's excess fairly.
    #[serde(default, skip_serializing_if = "is_false")]
    pub egress_cap: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl NetGrant {
    /// Whether nothing beyond the defaults is granted.
    pub fn is_default(&self) -> bool {
        *self == NetGrant::default()
    }
}

/// A service manager's request for a slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceRequest {
    /// The slice's name (`site_slicename`, as in PlanetLab).
    pub name: String,
    /// On whose behalf.
    pub principal: PublicKey,
    /// The principal's federation.
    pub principal_federation: String,
    /// Regular or admin.
    pub kind: SliceKind,
    /// Resources of each sliver.
    pub per_sliver: Resources,
    /// How many slivers, or on which nodes.
    pub target: SliverTarget,
    /// Where they may go.
    pub constraints: SliceConstraints,
    /// How long, in seconds.
    pub duration_secs: u64,
    /// All or nothing, or best effort.
    pub mode: AcquireMode,
    /// Network grants asked for each sliver (absent: none).
    #[serde(default, skip_serializing_if = "NetGrant::is_default")]
    pub net: NetGrant,
}

/// A lease: the node's signed promise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Lease id, unique per node (hex).
    pub lease_id: String,
    /// The ticket it redeemed (hex ticket id).
    pub ticket_id: String,
    /// The node (the signer).
    pub node: PublicKey,
    /// The node's federation.
    pub federation: String,
    /// The agent whose share it counts against.
    pub agent: PublicKey,
    /// The slice.
    pub slice: String,
    /// Regular or admin.
    pub kind: SliceKind,
    /// The holder: the only key that may use, renew or release it.
    pub holder: PublicKey,
    /// Resources held.
    pub resources: Resources,
    /// The sliver's address on the node's sliver network.
    pub address: Option<String>,
    /// Where the rest of the Internet reaches the sliver: the node's public address and the
    /// ports it forwards to the sliver (absent from leases of nodes without egress, and from
    /// the encoding then, so such leases encode as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<PublicEndpoint>,
    /// Network grants the ticket carried (absent: none).
    #[serde(default, skip_serializing_if = "NetGrant::is_default")]
    pub net: NetGrant,
    /// Unix seconds the lease began.
    pub start: u64,
    /// Unix seconds it ends.
    pub end: u64,
}

/// A sliver's public face: `address:port` for each leased port, forwarded (TCP and UDP) to
/// the same port of the sliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicEndpoint {
    /// The node's public address.
    pub address: String,
    /// The leased ports (the same numbers inside the sliver).
    pub ports: Vec<u16>,
}

impl std::fmt::Display for PublicEndpoint {
    /// `203.0.113.5:40000 → 40000, …` (no port: the address alone).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ports.is_empty() {
            return f.write_str(&self.address);
        }
        let each: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("{}:{p} → {p}", self.address))
            .collect();
        f.write_str(&each.join(", "))
    }
}

impl SignedType for Lease {
    const DOMAIN: &'static str = "planetmesh/lease/v1";
}

impl Lease {
    /// Whether the lease is over at `now`.
    pub fn is_over(&self, now: u64) -> bool {
        now >= self.end
    }
}

#[cfg(test)]
mod tests {
    use super::PublicEndpoint;

    #[test]
    fn a_public_endpoint_reads_address_port_to_sliver_port() {
        let e = PublicEndpoint {
            address: "203.0.113.5".into(),
            ports: vec![40000, 40001],
        };
        assert_eq!(
            e.to_string(),
            "203.0.113.5:40000 → 40000, 203.0.113.5:40001 → 40001"
        );
        let bare = PublicEndpoint {
            address: "203.0.113.5".into(),
            ports: Vec::new(),
        };
        assert_eq!(bare.to_string(), "203.0.113.5");
    }
}
