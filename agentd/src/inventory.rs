//! The agent's inventory: the nodes that delegated a share to this agent, from their ads.
//!
//! The overlay hands over ads it has already validated (node signature, membership, seq,
//! expiry). The inventory keeps a node only while its latest ad carries a delegation to this
//! agent that the node itself signed and that has not ended, and drops nodes whose ad expired.
//! With the share it keeps the delegation's scope: the agent mints on a node only slices of
//! the kinds the node delegated ([`NodeEntry::check_scope`]); the node refuses others anyway.

use std::collections::BTreeMap;

use capability_schema::{
    DelegationScope, PublicKey, Rejection, ResourceAd, Resources, Signed, SliceKind,
};

/// One node of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// The node's latest ad, as signed.
    pub signed: Signed<ResourceAd>,
    /// Its body.
    pub ad: ResourceAd,
    /// The share the node delegated to this agent.
    pub share: Resources,
    /// When the delegation ends.
    pub delegation_not_after: u64,
    /// What kinds of slices the node lets this agent mint.
    pub scope: DelegationScope,
}

impl NodeEntry {
    /// What the node itself reports free under this agent's share (its view of redeemed
    /// leases and of its capacity).
    pub fn node_reported_free(&self, agent: &PublicKey) -> Resources {
        self.ad.share_of(agent).map_or(self.share, |s| s.free)
    }

    /// Whether the node's delegation lets this agent mint a slice of `kind` there; the
    /// refusal (rule `outside_delegation_scope`) says what the delegation allows.
    pub fn check_scope(&self, kind: &SliceKind) -> Result<(), Rejection> {
        self.scope.check(kind).map_err(|outside| Rejection::Policy {
            rule: "outside_delegation_scope".into(),
            detail: format!(
                "node {}'s delegation to this agent allows {}; a {kind} slice is outside it \
                 ({outside}): ask for a slice within it, or for another node",
                self.ad.node.short(),
                self.scope
            ),
        })
    }
}

/// Why an ad did not enter the inventory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryRefusal {
    /// The node delegated nothing to this agent (the common case: not our node).
    #[error("node {0} delegated no share to this agent")]
    NoDelegation(String),
    /// The delegation has ended.
    #[error("node {0}'s delegation to this agent has ended")]
    DelegationEnded(String),
}

/// The inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    agent: PublicKey,
    nodes: BTreeMap<PublicKey, NodeEntry>,
}

impl Inventory {
    /// An empty inventory for `agent`.
    pub fn new(agent: PublicKey) -> Inventory {
        Inventory {
            agent,
            nodes: BTreeMap::new(),
        }
    }

    /// Takes a validated ad: keeps the node if it delegates to this agent.
    pub fn offer(
        &mut self,
        signed: Signed<ResourceAd>,
        ad: ResourceAd,
        now: u64,
    ) -> Result<(), InventoryRefusal> {
        // The newest delegation to this agent that is still in force wins.
        let mut best: Option<(Resources, u64, u64, DelegationScope)> = None;
        let mut ended = false;
        for delegation in &ad.delegations {
            let Ok(d) = delegation.verify_by(&ad.node) else {
                continue;
            };
            if d.agent != self.agent || d.node != ad.node {
                continue;
            }
            if d.not_after <= now {
                ended = true;
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|(_, _, issued, _)| d.issued_at >= *issued)
            {
                best = Some((d.share, d.not_after, d.issued_at, d.scope));
            }
        }
        let Some((share, delegation_not_after, _, scope)) = best else {
            self.nodes.remove(&ad.node);
            let node = ad.node.short();
            return Err(if ended {
                InventoryRefusal::DelegationEnded(node)
            } else {
                InventoryRefusal::NoDelegation(node)
            });
        };
        self.nodes.insert(
            ad.node,
            NodeEntry {
                signed,
                ad,
                share,
                delegation_not_after,
                scope,
            },
        );
        Ok(())
    }

    /// Drops nodes whose ad or delegation has expired.
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.nodes.len();
        self.nodes
            .retain(|_, e| !e.ad.is_expired(now) && e.delegation_not_after > now);
        before - self.nodes.len()
    }

    /// Keeps only the nodes `keep` says yes to; returns how many were dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(&NodeEntry) -> bool) -> usize {
        let before = self.nodes.len();
        self.nodes.retain(|_, e| keep(e));
        before - self.nodes.len()
    }

    /// The agent this inventory is for.
    pub fn agent(&self) -> PublicKey {
        self.agent
    }

    /// One node.
    pub fn get(&self, node: &PublicKey) -> Option<&NodeEntry> {
        self.nodes.get(node)
    }

    /// Every node.
    pub fn iter(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values()
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::Delegation;
    use capability_schema::identity::test_key;
    use federation::testing::TestFederation;

    use super::*;

    #[test]
    fn the_agent_mints_only_within_the_newest_delegations_scope() {
        let node = TestFederation::new("plc", 100).node(1, "princeton");
        let agent = test_key(20).public();
        let delegate = |scope: DelegationScope, issued_at: u64| {
            Signed::sign(
                &node.key,
                &Delegation {
                    node: node.key.public(),
                    agent,
                    share: Resources::ZERO,
                    scope,
                    issued_at,
                    not_after: issued_at + 1000,
                },
            )
        };
        let mut ad = node.ad_body(1, 100, 60);
        ad.delegations = vec![
            delegate(
                DelegationScope::with_admin(vec!["CAP_NET_ADMIN".into()], true),
                100,
            ),
            delegate(DelegationScope::default(), 90),
        ];
        let mut inventory = Inventory::new(agent);
        inventory
            .offer(Signed::sign(&node.key, &ad), ad, 110)
            .unwrap();
        let entry = inventory.get(&node.key.public()).unwrap();
        let admin = |caps: &[&str], host_pid_view| SliceKind::Admin {
            capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            host_pid_view,
        };
        assert_eq!(entry.check_scope(&admin(&["CAP_NET_ADMIN"], true)), Ok(()));
        let refusal = entry
            .check_scope(&admin(&["CAP_SYS_ADMIN"], false))
            .unwrap_err();
        let Rejection::Policy { rule, detail } = &refusal else {
            panic!("{refusal:?}")
        };
        assert_eq!(rule, "outside_delegation_scope");
        assert!(
            detail.contains(&node.key.public().short())
                && detail.contains("allows regular and admin slices (CAP_NET_ADMIN, host pids)")
                && detail.contains("CAP_SYS_ADMIN not delegated"),
            "{detail}"
        );
    }
}
