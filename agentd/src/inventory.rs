//! The agent's inventory: the nodes that delegated a share to this agent, from their ads.
//!
//! The overlay hands over ads it has already validated (node signature, membership, seq,
//! expiry). The inventory keeps a node only while its latest ad carries a delegation to this
//! agent that the node itself signed and that has not ended, and drops nodes whose ad expired.
//! With the share it keeps the delegation's scope: the agent mints on a node only slices of
//! the kinds the node delegated ([`NodeEntry::check_scope`]); the node refuses others anyway.
//!
//! Liveness: a node that heartbeats ([`Inventory::heartbeat`]) and then falls silent for the
//! agent's `dead_after` is left out of offers and refused at minting
//! ([`Inventory::silent_for`]), but kept: its next heartbeat or ad brings it back at once. A
//! node that never heartbeated (an older node, or heartbeats off) lives by its ad's TTL.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

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
    /// When each node of `nodes` that heartbeats was last heard (heartbeat or ad).
    heard: HashMap<PublicKey, Instant>,
    /// Silence after which a heartbeating node is not planned (`None`: never).
    dead_after: Option<Duration>,
}

impl Inventory {
    /// An empty inventory for `agent`.
    pub fn new(agent: PublicKey) -> Inventory {
        Inventory {
            agent,
            nodes: BTreeMap::new(),
            heard: HashMap::new(),
            dead_after: None,
        }
    }

    /// The same inventory leaving out heartbeating nodes silent for longer than `dead_after`
    /// (`None`: keeps them until their ad expires).
    pub fn with_dead_after(mut self, dead_after: Option<Duration>) -> Inventory {
        self.dead_after = dead_after;
        self
    }

    /// Sets the silence after which a heartbeating node is left out (see
    /// [`Inventory::with_dead_after`]).
    pub fn set_dead_after(&mut self, dead_after: Option<Duration>) {
        self.dead_after = dead_after;
    }

    /// A heartbeat of `node` arrived at `at`: it counts as alive from then on (and, from its
    /// first heartbeat on, as dead after a silence of `dead_after`). Returns whether the node
    /// is in the inventory (a heartbeat of another node is not kept).
    pub fn heartbeat(&mut self, node: &PublicKey, at: Instant) -> bool {
        if !self.nodes.contains_key(node) {
            return false;
        }
        let last = self.heard.entry(*node).or_insert(at);
        *last = (*last).max(at);
        true
    }

    /// How long a heartbeating node has been silent at `at`, if longer than `dead_after`;
    /// `None` for a live node, one that never heartbeated, or with no `dead_after`.
    pub fn silent_for(&self, node: &PublicKey, at: Instant) -> Option<Duration> {
        let dead_after = self.dead_after?;
        let silent = at.saturating_duration_since(*self.heard.get(node)?);
        (silent > dead_after).then_some(silent)
    }

    /// The nodes not silent for longer than `dead_after` at `at` (see [`Inventory::silent_for`]).
    pub fn live(&self, at: Instant) -> impl Iterator<Item = &NodeEntry> {
        self.nodes
            .values()
            .filter(move |e| self.silent_for(&e.ad.node, at).is_none())
    }

    /// Heartbeating nodes silent for longer than `dead_after` at `at`, with how long.
    pub fn silent(&self, at: Instant) -> Vec<(PublicKey, Duration)> {
        self.nodes
            .keys()
            .filter_map(|node| Some((*node, self.silent_for(node, at)?)))
            .collect()
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
            self.heard.remove(&ad.node);
            let node = ad.node.short();
            return Err(if ended {
                InventoryRefusal::DelegationEnded(node)
            } else {
                InventoryRefusal::NoDelegation(node)
            });
        };
        // An ad is a sign of life too.
        if let Some(last) = self.heard.get_mut(&ad.node) {
            *last = (*last).max(Instant::now());
        }
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
        let nodes = &self.nodes;
        self.heard.retain(|node, _| nodes.contains_key(node));
        before - self.nodes.len()
    }

    /// Keeps only the nodes `keep` says yes to; returns how many were dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(&NodeEntry) -> bool) -> usize {
        let before = self.nodes.len();
        self.nodes.retain(|_, e| keep(e));
        let nodes = &self.nodes;
        self.heard.retain(|node, _| nodes.contains_key(node));
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
    fn a_silent_heartbeating_node_is_left_out_and_comes_back_with_its_next_beat() {
        let mut federation = TestFederation::new("plc", 100);
        let (beating, quiet) = (federation.node(1, "princeton"), federation.node(2, "mit"));
        let agent = test_key(20).public();
        let delegated = |node: &federation::testing::TestNode| {
            let mut ad = node.ad_body(1, 100, 60);
            ad.delegations = vec![Signed::sign(
                &node.key,
                &Delegation {
                    node: node.key.public(),
                    agent,
                    share: Resources::ZERO,
                    scope: DelegationScope::default(),
                    issued_at: 100,
                    since: 100,
                    not_after: 1000,
                },
            )];
            (Signed::sign(&node.key, &ad), ad)
        };
        let mut inventory = Inventory::new(agent).with_dead_after(Some(Duration::from_secs(4)));
        for node in [&beating, &quiet] {
            let (signed, ad) = delegated(node);
            inventory.offer(signed, ad, 110).unwrap();
        }
        let t0 = Instant::now();
        let stranger = test_key(30).public();
        assert!(!inventory.heartbeat(&stranger, t0), "not ours: not kept");
        assert!(inventory.heartbeat(&beating.key.public(), t0));
        let live =
            |inv: &Inventory, at| -> Vec<PublicKey> { inv.live(at).map(|e| e.ad.node).collect() };
        let both = {
            let mut v = vec![beating.key.public(), quiet.key.public()];
            v.sort();
            v
        };
        assert_eq!(live(&inventory, t0 + Duration::from_secs(4)), both);
        // Past dead_after without a beat: left out, and said so; the node that never beat
        // lives by its ad alone.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(live(&inventory, later), vec![quiet.key.public()]);
        assert_eq!(
            inventory.silent_for(&beating.key.public(), later),
            Some(Duration::from_secs(5))
        );
        assert_eq!(inventory.silent(later).len(), 1);
        assert!(inventory.get(&beating.key.public()).is_some(), "kept");
        // Its heartbeat resumes: back at once. An older beat never moves it back.
        assert!(inventory.heartbeat(&beating.key.public(), later));
        assert!(inventory.heartbeat(&beating.key.public(), t0));
        assert_eq!(live(&inventory, later + Duration::from_secs(1)), both);
        // Without a dead_after, silence never counts.
        let mut lenient = inventory.clone().with_dead_after(None);
        assert!(lenient.heartbeat(&beating.key.public(), t0));
        assert_eq!(live(&lenient, later + Duration::from_secs(60)).len(), 2);
    }

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
                    since: issued_at,
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
