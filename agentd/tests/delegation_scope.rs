//! The agent mints on a node only slices its delegation's scope allows, read from the node's
//! ad: an admin sliver on a node that delegated regular slices only, or with a capability the
//! delegation does not name, is refused (rule `outside_delegation_scope`) while the rest of the
//! request is minted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use capability_schema::ad::ShareState;
use capability_schema::identity::{SecretKey, test_key};
use capability_schema::protocol::{AgentRequest, AgentResponse, SliverAsk, TicketRequest};
use capability_schema::{
    AskGrant, Delegation, DelegationScope, Rejection, Resources, Role, Signed, SliceKind,
};
use federation::TrustStore;
use federation::testing::{TestFederation, TestNode};
use federation::trust::Validity;

use agentd::agent::{Agent, AgentParts, Pricing};
use agentd::ledger::TicketLedger;
use agentd::policy::{Policy, PolicyConfig, PrincipalEntry, PrincipalRole};

const NOW: u64 = 1_800_000_000;

fn one_core() -> Resources {
    Resources {
        cpu_millis: 1000,
        memory_bytes: 1 << 30,
        disk_bytes: 1 << 30,
        egress_kbps: 1000,
        ports: 0,
    }
}

/// `node`'s ad delegating four cores' worth to `agent` within `scope`.
fn ad(
    node: &TestNode,
    agent: &SecretKey,
    scope: DelegationScope,
) -> Signed<capability_schema::ResourceAd> {
    let share = Resources {
        cpu_millis: 4000,
        memory_bytes: 4 << 30,
        disk_bytes: 4 << 30,
        egress_kbps: 4000,
        ports: 0,
    };
    let mut body = node.ad_body(1, NOW, 600);
    body.delegations.push(Signed::sign(
        &node.key,
        &Delegation {
            node: node.key.public(),
            agent: agent.public(),
            share,
            scope,
            issued_at: NOW,
            since: NOW,
            not_after: NOW + 86_400,
        },
    ));
    body.shares.push(ShareState {
        agent: agent.public(),
        share,
        committed: Resources::ZERO,
        free: share,
    });
    Signed::sign(&node.key, &body)
}

fn admin(capabilities: &[&str]) -> SliceKind {
    SliceKind::Admin {
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
        host_pid_view: false,
    }
}

#[test]
fn the_agent_refuses_slivers_outside_a_nodes_delegation_scope() {
    let mut plc = TestFederation::new("plc", 100);
    let mut trust = TrustStore::new();
    plc.trust(&mut trust);
    let regular_node = plc.node(1, "site1");
    let admin_node = plc.node(2, "site2");
    let agent_key = test_key(20);
    let operator = test_key(50);
    let cert = plc.authority.certify(
        operator.public(),
        Role::Principal,
        "site1",
        "operator",
        Validity::days(NOW - 10, 30),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut policy = PolicyConfig::default();
    policy.principals.push(PrincipalEntry {
        key: operator.public(),
        role: PrincipalRole::Admin,
        slice_prefixes: vec![],
        quota: None,
        net_raw: false,
    });
    let agent = Agent::new(AgentParts {
        key: agent_key.clone(),
        federation: "plc".into(),
        policy: Policy::new(policy),
        pricing: Pricing::default(),
        oversubscription_permille: 1000,
        ledger: TicketLedger::open(&dir.path().join("tickets.redb")).unwrap(),
    });
    for (node, scope) in [
        (&regular_node, DelegationScope::default()),
        (
            &admin_node,
            DelegationScope::with_admin(vec!["CAP_NET_ADMIN".into()], false),
        ),
    ] {
        let signed = ad(node, &agent_key, scope);
        let body = trust.validate_ad(&signed, NOW, None).unwrap();
        agent
            .with_inventory(|inv| inv.offer(signed, body, NOW))
            .unwrap();
    }
    let ask = |slice: &str, kind: SliceKind| {
        let mut request = TicketRequest {
            slice: slice.into(),
            principal: operator.public(),
            principal_cert: Some(cert.clone()),
            kind,
            slivers: [&regular_node, &admin_node]
                .iter()
                .map(|n| SliverAsk {
                    node: n.key.public(),
                    resources: one_core(),
                })
                .collect(),
            not_before: NOW,
            not_after: NOW + 3600,
            max_price: None,
            net: Default::default(),
            ask: None,
        };
        let grant = AskGrant::covering(&request, operator.public(), NOW, 300);
        request.ask = Some(Box::new(Signed::sign(&operator, &grant)));
        match agent
            .handle(
                &trust,
                &operator.public(),
                AgentRequest::GetTickets(request),
                NOW,
            )
            .unwrap()
        {
            AgentResponse::Tickets { issued, refused } => (issued, refused),
            other => panic!("{other:?}"),
        }
    };

    // Within the admin node's scope: minted there, refused on the regular-only node.
    let (issued, refused) = ask("site1_monitor", admin(&["CAP_NET_ADMIN"]));
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].node, admin_node.key.public());
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].node, regular_node.key.public());
    let Rejection::Policy { rule, detail } = &refused[0].reason.reason else {
        panic!("{:?}", refused[0].reason)
    };
    assert_eq!(rule, "outside_delegation_scope");
    assert!(
        detail.contains(&regular_node.key.public().short())
            && detail.contains("allows regular slices")
            && detail.contains("admin slices are not delegated"),
        "{detail}"
    );

    // A capability neither delegation names: refused on both, saying which.
    let (issued, refused) = ask("site1_rootkit", admin(&["CAP_SYS_ADMIN"]));
    assert!(issued.is_empty());
    let on_admin_node = refused
        .iter()
        .find(|r| r.node == admin_node.key.public())
        .unwrap();
    assert!(
        on_admin_node
            .reason
            .to_string()
            .contains("CAP_SYS_ADMIN not delegated"),
        "{}",
        on_admin_node.reason
    );

    // Regular slices: both delegations allow them.
    let (issued, refused) = ask("site1_web", SliceKind::Regular);
    assert_eq!((issued.len(), refused.len()), (2, 0), "{refused:?}");
}
