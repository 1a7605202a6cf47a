//! Admission control: may this node commit these resources to this agent's ticket?
//!
//! The node, not the agent, is the final arbiter (DESIGN: Delegation). A grant is admitted
//! only if it fits both
//! - the issuing agent's share: what the node delegated to the agent, minus what is already
//!   committed under that share, and
//! - the node's capacity: what the node offers in all, minus everything committed,
//!
//! so several agents holding overlapping shares of one node can mint freely without the node
//! ever promising more than it has. Every refusal says which resource is short and by how much.
//! A ticket's slice kind must also be within its issuer's delegation scope
//! ([`Capacity::check_scope`]): regular slices only unless the node delegated admin slices,
//! and then only the capabilities and host views it named.
//! This module is pure: the ledger supplies the commitments inside its write transaction.

use std::collections::BTreeMap;

use capability_schema::{DelegationScope, PublicKey, Rejection, Resources, SliceKind};

/// What the node may commit: its capacity and the share delegated to each agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    /// This node.
    pub node: PublicKey,
    /// Everything the node offers.
    pub total: Resources,
    /// The share of each agent the node delegated to (and the end of each delegation).
    pub shares: BTreeMap<PublicKey, Share>,
}

/// One agent's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// At most this much committed at once under the share.
    pub limit: Resources,
    /// Unix seconds after which the delegation ends (no new admissions).
    pub not_after: u64,
    /// What kinds of slices the agent may mint here.
    pub scope: DelegationScope,
}

/// What is committed now, in all and per agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commitments {
    /// Sum over every live lease.
    pub total: Resources,
    /// Sum per issuing agent.
    pub by_agent: BTreeMap<PublicKey, Resources>,
}

impl Commitments {
    /// Adds one lease's resources; `None` on overflow.
    pub fn add(&mut self, agent: PublicKey, resources: &Resources) -> Option<()> {
        self.total = self.total.checked_add(resources)?;
        let entry = self.by_agent.entry(agent).or_default();
        *entry = entry.checked_add(resources)?;
        Some(())
    }

    /// Takes one lease's resources back (a lease removed or aborted).
    pub fn remove(&mut self, agent: &PublicKey, resources: &Resources) {
        self.total = self.total.saturating_sub(resources);
        if let Some(entry) = self.by_agent.get_mut(agent) {
            *entry = entry.saturating_sub(resources);
            if entry.is_zero() {
                self.by_agent.remove(agent);
            }
        }
    }

    /// What is committed under `agent`'s share.
    pub fn of(&self, agent: &PublicKey) -> Resources {
        self.by_agent.get(agent).copied().unwrap_or_default()
    }
}

impl Capacity {
    /// Whether `agent`'s delegation allows a slice of `kind` here; the refusal
    /// (`outside_delegation_scope`) names the delegation, what it allows and what was asked.
    /// An agent without a delegation passes: [`Capacity::admit`] refuses it.
    pub fn check_scope(&self, agent: &PublicKey, kind: &SliceKind) -> Result<(), Rejection> {
        let Some(share) = self.shares.get(agent) else {
            return Ok(());
        };
        share
            .scope
            .check(kind)
            .map_err(|outside| Rejection::Ticket {
                check: "outside_delegation_scope".into(),
                detail: format!(
                    "this node's delegation to agent {} allows {}; the ticket asks a {kind} slice \
                 ({outside}): ask for a slice within the delegation, or the node's operator \
                 to widen it",
                    agent.short(),
                    share.scope
                ),
            })
    }

    /// Admits `asked` under `agent`'s share at `now`, or says why not.
    pub fn admit(
        &self,
        committed: &Commitments,
        agent: &PublicKey,
        asked: &Resources,
        now: u64,
    ) -> Result<(), Rejection> {
        let share = self.shares.get(agent).ok_or_else(|| Rejection::Ticket {
            check: "issuer_not_delegated".into(),
            detail: format!(
                "this node has delegated no share to agent {}; ask an agent the node delegated to",
                agent.short()
            ),
        })?;
        if now > share.not_after {
            return Err(Rejection::Ticket {
                check: "delegation_expired".into(),
                detail: format!(
                    "this node's delegation to agent {} ended at {}",
                    agent.short(),
                    share.not_after
                ),
            });
        }
        let in_use = committed.of(agent);
        let after_share = in_use.checked_add(asked).ok_or_else(overflow)?;
        if let Some(kind) = after_share.first_excess(&share.limit) {
            return Err(Rejection::OverShare {
                agent: *agent,
                kind,
                in_use: in_use.get(kind),
                share: share.limit.get(kind),
                asked: asked.get(kind),
            });
        }
        let after_node = committed.total.checked_add(asked).ok_or_else(overflow)?;
        if let Some(kind) = after_node.first_excess(&self.total) {
            return Err(Rejection::OverCapacity {
                node: self.node,
                kind,
                asked: asked.get(kind),
                free: self.total.saturating_sub(&committed.total).get(kind),
            });
        }
        Ok(())
    }

    /// The free part of `agent`'s share: the share minus its commitments, bounded by the
    /// node's free capacity.
    pub fn free_for(&self, committed: &Commitments, agent: &PublicKey) -> Resources {
        let Some(share) = self.shares.get(agent) else {
            return Resources::ZERO;
        };
        let share_free = share.limit.saturating_sub(&committed.of(agent));
        share_free.min(&self.total.saturating_sub(&committed.total))
    }
}

fn overflow() -> Rejection {
    Rejection::Malformed {
        detail: "resources overflow".into(),
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;
    use capability_schema::resources::ResourceKind;
    use proptest::prelude::*;

    use super::*;

    fn cpu(millis: u64) -> Resources {
        Resources {
            cpu_millis: millis,
            ..Resources::ZERO
        }
    }

    fn capacity(total: u64, shares: &[(u8, u64)]) -> Capacity {
        Capacity {
            node: test_key(1).public(),
            total: cpu(total),
            shares: shares
                .iter()
                .map(|(agent, limit)| {
                    (
                        test_key(*agent).public(),
                        Share {
                            limit: cpu(*limit),
                            not_after: 1_000,
                            scope: DelegationScope::default(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn over_share_names_the_agent_and_the_numbers() {
        let cap = capacity(4000, &[(10, 2000)]);
        let mut committed = Commitments::default();
        committed.add(test_key(10).public(), &cpu(1500)).unwrap();
        let err = cap
            .admit(&committed, &test_key(10).public(), &cpu(1000), 0)
            .unwrap_err();
        assert_eq!(
            err,
            Rejection::OverShare {
                agent: test_key(10).public(),
                kind: ResourceKind::Cpu,
                in_use: 1500,
                share: 2000,
                asked: 1000
            }
        );
        assert!(
            err.to_string()
                .contains("1500m of 2 cores in use, 1 core asked"),
            "{err}"
        );
    }

    #[test]
    fn overlapping_shares_never_exceed_capacity() {
        let cap = capacity(2000, &[(10, 2000), (11, 2000)]);
        let mut committed = Commitments::default();
        cap.admit(&committed, &test_key(10).public(), &cpu(1500), 0)
            .unwrap();
        committed.add(test_key(10).public(), &cpu(1500)).unwrap();
        let err = cap
            .admit(&committed, &test_key(11).public(), &cpu(1000), 0)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Rejection::OverCapacity {
                    free: 500,
                    asked: 1000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(cap.free_for(&committed, &test_key(11).public()), cpu(500));
    }

    #[test]
    fn unknown_agent_and_ended_delegation_are_refused() {
        let cap = capacity(2000, &[(10, 2000)]);
        let none = Commitments::default();
        let err = cap
            .admit(&none, &test_key(12).public(), &cpu(1), 0)
            .unwrap_err();
        assert!(
            matches!(err, Rejection::Ticket { ref check, .. } if check == "issuer_not_delegated")
        );
        let err = cap
            .admit(&none, &test_key(10).public(), &cpu(1), 1_001)
            .unwrap_err();
        assert!(
            matches!(err, Rejection::Ticket { ref check, .. } if check == "delegation_expired")
        );
    }

    #[test]
    fn a_kind_outside_the_scope_is_refused_naming_the_delegation() {
        let mut cap = capacity(4000, &[(10, 2000), (11, 2000)]);
        let scoped = test_key(11).public();
        cap.shares.get_mut(&scoped).unwrap().scope =
            DelegationScope::with_admin(vec!["CAP_NET_ADMIN".into()], false);
        let admin = |caps: &[&str], host_pid_view| SliceKind::Admin {
            capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
            host_pid_view,
        };
        let regular_only = test_key(10).public();
        assert_eq!(cap.check_scope(&regular_only, &SliceKind::Regular), Ok(()));
        let err = cap
            .check_scope(&regular_only, &admin(&["CAP_SYS_ADMIN"], true))
            .unwrap_err();
        let Rejection::Ticket { check, detail } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(check, "outside_delegation_scope");
        assert!(
            detail.contains(&regular_only.short())
                && detail.contains("allows regular slices")
                && detail.contains("admin[CAP_SYS_ADMIN]+host-pids")
                && detail.contains("admin slices are not delegated"),
            "{detail}"
        );
        assert_eq!(
            cap.check_scope(&scoped, &admin(&["CAP_NET_ADMIN"], false)),
            Ok(())
        );
        let err = cap
            .check_scope(&scoped, &admin(&["CAP_NET_ADMIN", "CAP_SYS_ADMIN"], false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CAP_SYS_ADMIN not delegated"), "{err}");
        let err = cap
            .check_scope(&scoped, &admin(&[], true))
            .unwrap_err()
            .to_string();
        assert!(err.contains("host pid view is not delegated"), "{err}");
        // No delegation at all: admission says so, not the scope.
        assert_eq!(
            cap.check_scope(&test_key(12).public(), &admin(&[], true)),
            Ok(())
        );
    }

    proptest! {
        /// Whatever order agents ask in, admitted commitments never exceed capacity or shares.
        #[test]
        fn admitted_never_exceeds_capacity_or_share(
            total in 0u64..10_000,
            shares in proptest::collection::vec(0u64..10_000, 1..4),
            asks in proptest::collection::vec((0usize..4, 0u64..3_000), 0..40),
        ) {
            let share_list: Vec<(u8, u64)> =
                shares.iter().enumerate().map(|(i, s)| (10 + i as u8, *s)).collect();
            let cap = capacity(total, &share_list);
            let mut committed = Commitments::default();
            for (agent_index, asked) in asks {
                let agent = test_key(10 + (agent_index % shares.len()) as u8).public();
                if cap.admit(&committed, &agent, &cpu(asked), 0).is_ok() {
                    committed.add(agent, &cpu(asked)).unwrap();
                }
                prop_assert!(committed.total.cpu_millis <= total);
                for (i, s) in shares.iter().enumerate() {
                    prop_assert!(committed.of(&test_key(10 + i as u8).public()).cpu_millis <= *s);
                }
            }
        }
    }
}
