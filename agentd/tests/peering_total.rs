//! A peering agreement's `max_total` through the agent core: the tickets of every principal of
//! the peer federation count together, the refusal says what is left, releases give room back,
//! and the count survives a restart (the ledger records each ticket's principal federation).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use capability_schema::ad::ShareState;
use capability_schema::identity::{SecretKey, test_key};
use capability_schema::membership::{PeeringLimits, PrincipalFilter};
use capability_schema::protocol::{AgentRequest, AgentResponse, SliverAsk, TicketRequest};
use capability_schema::{
    AskGrant, Delegation, ErrorReply, MembershipCert, Rejection, Resources, Role, Signed, SliceKind,
};
use federation::TrustStore;
use federation::testing::{TestFederation, TestNode};
use federation::trust::Validity;

use agentd::agent::{Agent, AgentParts, Pricing};
use agentd::ledger::TicketLedger;
use agentd::policy::{Policy, PolicyConfig};

const NOW: u64 = 1_800_000_000;

/// `n` cores, `n` GiB of memory and disk, `n` Mbit/s.
fn cores(n: u64) -> Resources {
    Resources {
        cpu_millis: n * 1000,
        memory_bytes: n << 30,
        disk_bytes: n << 30,
        egress_kbps: n * 1000,
        ports: 0,
    }
}

/// The agent of plc, its nodes fed in with a share of 8 cores each.
fn agent(key: &SecretKey, dir: &std::path::Path, trust: &TrustStore, nodes: &[TestNode]) -> Agent {
    let agent = Agent::new(AgentParts {
        key: key.clone(),
        federation: "plc".into(),
        policy: Policy::new(PolicyConfig::default()),
        pricing: Pricing::default(),
        oversubscription_permille: 1000,
        ledger: TicketLedger::open(&dir.join("tickets.redb")).unwrap(),
    });
    for node in nodes {
        let mut body = node.ad_body(1, NOW, 600);
        body.delegations.push(Signed::sign(
            &node.key,
            &Delegation {
                node: node.key.public(),
                agent: key.public(),
                share: cores(8),
                scope: Default::default(),
                issued_at: NOW,
                since: NOW,
                not_after: NOW + 86_400,
            },
        ));
        body.shares.push(ShareState {
            agent: key.public(),
            share: cores(8),
            committed: Resources::ZERO,
            free: cores(8),
        });
        let signed = Signed::sign(&node.key, &body);
        let ad = trust.validate_ad(&signed, NOW, None).unwrap();
        agent
            .with_inventory(|inv| inv.offer(signed, ad, NOW))
            .unwrap();
    }
    agent
}

fn certify(fed: &mut TestFederation, key: &SecretKey, site: &str) -> Signed<MembershipCert> {
    fed.authority.certify(
        key.public(),
        Role::Principal,
        site,
        "someone",
        Validity::days(NOW - 10, 30),
    )
}

/// Asks for one sliver of `each` on every node of `nodes`.
fn ask(
    agent: &Agent,
    trust: &TrustStore,
    who: &SecretKey,
    cert: &Signed<MembershipCert>,
    slice: &str,
    nodes: &[&TestNode],
    each: Resources,
) -> Result<Vec<String>, ErrorReply> {
    let request = TicketRequest {
        slice: slice.into(),
        principal: who.public(),
        principal_cert: Some(cert.clone()),
        kind: SliceKind::Regular,
        slivers: nodes
            .iter()
            .map(|n| SliverAsk {
                node: n.key.public(),
                resources: each,
            })
            .collect(),
        not_before: NOW,
        not_after: NOW + 3600,
        max_price: None,
        net: Default::default(),
        ask: None,
    };
    let grant = AskGrant::covering(&request, who.public(), NOW, 300);
    let request = TicketRequest {
        ask: Some(Box::new(Signed::sign(who, &grant))),
        ..request
    };
    match agent.handle(trust, &who.public(), AgentRequest::GetTickets(request), NOW)? {
        AgentResponse::Tickets { issued, refused } => {
            assert!(refused.is_empty(), "slivers refused: {refused:?}");
            Ok(issued.into_iter().map(|t| t.ticket_id).collect())
        }
        other => panic!("not tickets: {other:?}"),
    }
}

/// The rule and detail of a policy refusal.
fn policy_refusal(result: Result<Vec<String>, ErrorReply>) -> (String, String) {
    match result {
        Err(ErrorReply {
            reason: Rejection::Policy { rule, detail },
            ..
        }) => (rule, detail),
        other => panic!("not a policy refusal: {other:?}"),
    }
}

#[test]
fn the_peer_federation_shares_one_total_and_the_refusal_says_what_is_left() {
    let mut plc = TestFederation::new("plc", 100);
    let mut ple = TestFederation::new("ple", 101);
    let mut trust = TrustStore::new();
    plc.trust(&mut trust);
    ple.trust(&mut trust);
    let nodes: Vec<TestNode> = (1..=3).map(|i| plc.node(i, &format!("site{i}"))).collect();
    let [n1, n2, n3] = [&nodes[0], &nodes[1], &nodes[2]];
    // plc serves ple's principals with at most 3 cores (and 3 GiB, 3 GiB, 3 Mbit) at once.
    let agreement = plc.authority.peer(
        "ple",
        ple.authority.public(),
        &[Role::Principal],
        PrincipalFilter::All,
        PeeringLimits {
            max_total: Some(cores(3)),
            ..Default::default()
        },
        Validity::days(NOW - 10, 30),
    );
    trust.add_agreement(&agreement).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let agent_key = test_key(20);
    let a = agent(&agent_key, dir.path(), &trust, &nodes);
    let (bob, carol, dave) = (test_key(70), test_key(71), test_key(72));
    let bob_cert = certify(&mut ple, &bob, "paris");
    let carol_cert = certify(&mut ple, &carol, "lyon");
    let dave_cert = certify(&mut plc, &dave, "site1");

    // bob takes 2 of ple's 3 cores.
    let bobs = ask(&a, &trust, &bob, &bob_cert, "paris_a", &[n1, n2], cores(1)).unwrap();
    assert_eq!(bobs.len(), 2);
    // carol, another principal of ple, cannot take 2 more: the total is ple's, not hers.
    let (rule, detail) = policy_refusal(ask(
        &a,
        &trust,
        &carol,
        &carol_cert,
        "lyon_a",
        &[n1, n3],
        cores(1),
    ));
    assert_eq!(rule, "peering");
    for needle in [
        "federation ple",
        "3 cores cpu",
        "2 cores outstanding",
        "2 cores asked",
        "1 core left",
        "all that is left: cpu=1 core,memory=1GiB,disk=1GiB,egress=1Mbit",
    ] {
        assert!(detail.contains(needle), "{needle:?} not in {detail:?}");
    }
    // Members of plc itself are not under the agreement, nor counted in it.
    let dave_tickets = ask(&a, &trust, &dave, &dave_cert, "site1_d", &[n3], cores(4)).unwrap();
    assert_eq!(dave_tickets.len(), 1);
    // What is left fits exactly.
    let carols = ask(&a, &trust, &carol, &carol_cert, "lyon_a", &[n3], cores(1)).unwrap();
    assert_eq!(carols.len(), 1);
    let (rule, detail) = policy_refusal(ask(
        &a,
        &trust,
        &bob,
        &bob_cert,
        "paris_b",
        &[n3],
        Resources {
            egress_kbps: 1,
            ..Resources::ZERO
        },
    ));
    assert_eq!(rule, "peering");
    assert!(detail.contains("0kbit left"), "{detail}");

    // bob gives one ticket back: carol has room for one core again.
    match a.handle(
        &trust,
        &bob.public(),
        AgentRequest::Released {
            ticket_ids: vec![bobs[0].clone()],
        },
        NOW,
    ) {
        Ok(AgentResponse::Released { known: 1 }) => {}
        other => panic!("release: {other:?}"),
    }
    let more = ask(&a, &trust, &carol, &carol_cert, "lyon_b", &[n1], cores(1)).unwrap();
    assert_eq!(more.len(), 1);

    // After a restart the ledger still knows whose federation each ticket counts for.
    drop(a);
    let a = agent(&agent_key, dir.path(), &trust, &nodes);
    let outstanding = a.ledger().outstanding(NOW).unwrap();
    assert_eq!(outstanding.by_federation["ple"], cores(3));
    assert_eq!(outstanding.by_federation["plc"], cores(4));
    let (rule, _) = policy_refusal(ask(&a, &trust, &bob, &bob_cert, "paris_c", &[n2], cores(1)));
    assert_eq!(rule, "peering");
}
