//! What nodes say about themselves: resource advertisements, delegations and prices.
//!
//! - [`Delegation`] (signed by the node): "agent A may have at most S of my resources committed
//!   at once until T, in slices of the kinds its [`DelegationScope`] allows". A node may
//!   delegate to several agents; it stays the final arbiter, and re-signs each delegation
//!   well before it ends.
//! - [`ResourceAd`] (signed by the node): capacity, what is committed, the free part of each
//!   agent's share, measured use, the delegations themselves, the node's membership certificate,
//!   `seq` and a time to live. Receivers keep only the newest unexpired ad per node.
//! - [`PriceList`]: what an agent asks per resource-hour.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::membership::MembershipCert;
use crate::resources::Resources;
use crate::signed::{Signed, SignedType};
use crate::slice::SliceKind;

/// "Agent `agent` may have at most `share` of node `node`'s resources committed at once, in
/// slices `scope` allows."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    /// The delegating node (the signer).
    pub node: PublicKey,
    /// The agent the share is delegated to.
    pub agent: PublicKey,
    /// The share.
    pub share: Resources,
    /// What kinds of slices the agent may mint on the node.
    pub scope: DelegationScope,
    /// Unix seconds of issue (of this signature: renewals sign anew).
    pub issued_at: u64,
    /// Unix seconds the node first signed a delegation on these terms to this agent; a renewal
    /// keeps it, new terms start anew. A revocation of "this node's delegations to this agent
    /// signed up to T" matches on it, so an automatic renewal after T stays revoked.
    pub since: u64,
    /// Unix seconds after which the delegation ends.
    pub not_after: u64,
}

impl SignedType for Delegation {
    /// v3: the delegation carries `since`, its first signing through renewals (v2 had only
    /// `issued_at`, which a renewal moves past a revocation; v1 had no scope).
    const DOMAIN: &'static str = "planetmesh/delegation/v3";
}

/// What an agent may mint on a node beyond resources: which slice kinds and, for admin
/// slices, which Linux capabilities and host views. The default is regular slices only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DelegationScope {
    /// Whether regular slices may be minted.
    pub regular: bool,
    /// What admin slices may hold (absent: no admin slice may be minted).
    pub admin: Option<AdminScope>,
}

/// The most an admin slice minted under a delegation may hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AdminScope {
    /// Linux capabilities an admin slice may be granted, by kernel name (`CAP_NET_ADMIN`).
    pub capabilities: Vec<String>,
    /// Whether an admin slice may see the host's processes.
    pub host_pid_view: bool,
}

impl Default for DelegationScope {
    fn default() -> Self {
        DelegationScope {
            regular: true,
            admin: None,
        }
    }
}

/// The part of a slice kind outside a delegation's scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutsideScope {
    /// Regular slices are not delegated.
    Regular,
    /// Admin slices are not delegated.
    Admin,
    /// These capabilities are not delegated.
    Capabilities(Vec<String>),
    /// The host pid view is not delegated.
    HostPidView,
}

impl fmt::Display for OutsideScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutsideScope::Regular => f.write_str("regular slices are not delegated"),
            OutsideScope::Admin => f.write_str("admin slices are not delegated"),
            OutsideScope::Capabilities(caps) => {
                write!(f, "{} not delegated", caps.join(", "))
            }
            OutsideScope::HostPidView => f.write_str("the host pid view is not delegated"),
        }
    }
}

impl DelegationScope {
    /// Regular and admin slices with `capabilities` and, if `host_pid_view`, the host's pids.
    pub fn with_admin(capabilities: Vec<String>, host_pid_view: bool) -> Self {
        DelegationScope {
            regular: true,
            admin: Some(AdminScope {
                capabilities,
                host_pid_view,
            }),
        }
    }

    /// Whether a slice of `kind` may be minted under the scope; if not, the first part of it
    /// that is outside (for a refusal that says what to ask for instead).
    pub fn check(&self, kind: &SliceKind) -> Result<(), OutsideScope> {
        match (kind, &self.admin) {
            (SliceKind::Regular, _) if self.regular => Ok(()),
            (SliceKind::Regular, _) => Err(OutsideScope::Regular),
            (SliceKind::Admin { .. }, None) => Err(OutsideScope::Admin),
            (
                SliceKind::Admin {
                    capabilities,
                    host_pid_view,
                },
                Some(allowed),
            ) => {
                let outside: Vec<String> = capabilities
                    .iter()
                    .filter(|c| !allowed.capabilities.contains(c))
                    .cloned()
                    .collect();
                if !outside.is_empty() {
                    return Err(OutsideScope::Capabilities(outside));
                }
                if *host_pid_view && !allowed.host_pid_view {
                    return Err(OutsideScope::HostPidView);
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for DelegationScope {
    /// `regular slices`, `regular and admin slices (CAP_NET_ADMIN, host pids)`, `admin slices
    /// (no capability)`, `no slice`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let admin = self.admin.as_ref().map(|a| {
            let mut parts = a.capabilities.clone();
            if a.host_pid_view {
                parts.push("host pids".into());
            }
            if parts.is_empty() {
                "admin slices (no capability)".to_owned()
            } else {
                format!("admin slices ({})", parts.join(", "))
            }
        });
        match (self.regular, admin) {
            (true, None) => f.write_str("regular slices"),
            (true, Some(admin)) => write!(f, "regular and {admin}"),
            (false, Some(admin)) => f.write_str(&admin),
            (false, None) => f.write_str("no slice"),
        }
    }
}

/// Prices in micro-credits per resource-hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PriceList {
    /// Per core-hour.
    pub cpu_core_hour: u64,
    /// Per GiB-hour of memory.
    pub memory_gib_hour: u64,
    /// Per GiB-hour of disk.
    pub disk_gib_hour: u64,
    /// Per Mbit/s-hour of egress.
    pub egress_mbit_hour: u64,
}

impl PriceList {
    /// Price in micro-credits of holding `resources` for `seconds`, rounded up; saturates.
    pub fn cost(&self, resources: &Resources, seconds: u64) -> u64 {
        const GIB: u128 = 1 << 30;
        let per_hour = u128::from(self.cpu_core_hour) * u128::from(resources.cpu_millis) / 1000
            + u128::from(self.memory_gib_hour) * u128::from(resources.memory_bytes) / GIB
            + u128::from(self.disk_gib_hour) * u128::from(resources.disk_bytes) / GIB
            + u128::from(self.egress_mbit_hour) * u128::from(resources.egress_kbps) / 1000;
        per_hour
            .checked_mul(u128::from(seconds))
            .and_then(|total| u64::try_from(total.div_ceil(3600)).ok())
            .unwrap_or(u64::MAX)
    }
}

/// The state of one agent's share on a node, as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareState {
    /// The agent.
    pub agent: PublicKey,
    /// The delegated share.
    pub share: Resources,
    /// What the node has admitted under this share.
    pub committed: Resources,
    /// What remains of the share, bounded by the node's free capacity.
    pub free: Resources,
}

/// Measured use of one sliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliverUsage {
    /// The slice.
    pub slice: String,
    /// CPU time used so far, in milliseconds.
    pub cpu_time_ms: u64,
    /// Memory in use, in bytes.
    pub memory_bytes: u64,
    /// Bytes sent so far.
    pub egress_bytes: u64,
    /// Bytes in the sliver's writable layer at the node's last disk check (absent: not
    /// measured, or an ad from before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// What is wrong with the sliver, for its holder, e.g. `over disk limit: 3.0 MiB of
    /// 2.0 MiB; its processes are frozen until …` (absent: nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// What the node's resource monitor measured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeasuredUse {
    /// One-minute load average, times 1000.
    pub load_milli: u64,
    /// Host memory in use, in bytes.
    pub memory_used_bytes: u64,
    /// Per-sliver use.
    pub slivers: Vec<SliverUsage>,
}

/// A node's signed advertisement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceAd {
    /// The node (the signer).
    pub node: PublicKey,
    /// Its federation.
    pub federation: String,
    /// Its site.
    pub site: String,
    /// Human name (host name).
    pub name: String,
    /// Where to reach it (libp2p multiaddresses, as text).
    pub addresses: Vec<String>,
    /// What the node offers in all.
    pub capacity: Resources,
    /// What is admitted now.
    pub committed: Resources,
    /// Each agent's share and its free part.
    pub shares: Vec<ShareState>,
    /// The delegations, as the node signed them.
    pub delegations: Vec<Signed<Delegation>>,
    /// Measured use.
    pub measured: MeasuredUse,
    /// The node's membership certificate in its federation.
    pub membership: Signed<MembershipCert>,
    /// Sequence number: receivers drop ads with a seq not above the last seen.
    pub seq: u64,
    /// Unix seconds of issue.
    pub issued_at: u64,
    /// Seconds the ad stays valid after `issued_at`.
    pub ttl_secs: u64,
}

impl SignedType for ResourceAd {
    const DOMAIN: &'static str = "planetmesh/ad/v1";
}

impl ResourceAd {
    /// Unix seconds after which the ad is expired.
    pub fn expires_at(&self) -> u64 {
        self.issued_at.saturating_add(self.ttl_secs)
    }

    /// Whether the ad is expired at `now`.
    pub fn is_expired(&self, now: u64) -> bool {
        now > self.expires_at()
    }

    /// The state of `agent`'s share, if the node delegated to it.
    pub fn share_of(&self, agent: &PublicKey) -> Option<&ShareState> {
        self.shares.iter().find(|s| s.agent == *agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(caps: &[&str], host_pid_view: bool) -> SliceKind {
        SliceKind::Admin {
            capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            host_pid_view,
        }
    }

    #[test]
    fn the_default_scope_is_regular_slices_only() {
        let scope = DelegationScope::default();
        assert_eq!(scope.check(&SliceKind::Regular), Ok(()));
        assert_eq!(scope.check(&admin(&[], false)), Err(OutsideScope::Admin));
        assert_eq!(scope.to_string(), "regular slices");
    }

    #[test]
    fn an_admin_scope_bounds_capabilities_and_host_views() {
        let scope = DelegationScope::with_admin(vec!["CAP_NET_ADMIN".into()], false);
        assert_eq!(scope.check(&admin(&["CAP_NET_ADMIN"], false)), Ok(()));
        assert_eq!(scope.check(&admin(&[], false)), Ok(()));
        assert_eq!(
            scope.check(&admin(&["CAP_NET_ADMIN", "CAP_SYS_ADMIN"], false)),
            Err(OutsideScope::Capabilities(vec!["CAP_SYS_ADMIN".into()]))
        );
        assert_eq!(
            scope.check(&admin(&["CAP_NET_ADMIN"], true)),
            Err(OutsideScope::HostPidView)
        );
        assert_eq!(
            scope.to_string(),
            "regular and admin slices (CAP_NET_ADMIN)"
        );
        let admin_only = DelegationScope {
            regular: false,
            admin: Some(AdminScope {
                capabilities: Vec::new(),
                host_pid_view: true,
            }),
        };
        assert_eq!(
            admin_only.check(&SliceKind::Regular),
            Err(OutsideScope::Regular)
        );
        assert_eq!(admin_only.check(&admin(&[], true)), Ok(()));
        assert_eq!(admin_only.to_string(), "admin slices (host pids)");
        assert_eq!(
            OutsideScope::Capabilities(vec!["CAP_SYS_ADMIN".into()]).to_string(),
            "CAP_SYS_ADMIN not delegated"
        );
    }

    #[test]
    fn cost_is_per_hour_and_rounds_up() {
        let prices = PriceList {
            cpu_core_hour: 1000,
            memory_gib_hour: 100,
            ..Default::default()
        };
        let r = Resources {
            cpu_millis: 500,
            memory_bytes: 2 << 30,
            ..Resources::ZERO
        };
        assert_eq!(prices.cost(&r, 3600), 500 + 200);
        assert_eq!(prices.cost(&r, 1), 1);
        assert_eq!(prices.cost(&r, 0), 0);
        let max = Resources {
            cpu_millis: u64::MAX,
            ..Resources::ZERO
        };
        let huge = PriceList {
            cpu_core_hour: u64::MAX,
            ..Default::default()
        };
        assert_eq!(huge.cost(&max, u64::MAX), u64::MAX);
    }
}
