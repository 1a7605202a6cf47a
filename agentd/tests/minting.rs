//! The agent core end to end without the network: inventory from signed ads, policy, minting,
//! the durable ledger across restarts, and tickets a node accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use capability_schema::ad::ShareState;
use capability_schema::identity::{SecretKey, test_key};
use capability_schema::membership::{PeeringLimits, PrincipalFilter};
use capability_schema::protocol::{AdQuery, AgentRequest, AgentResponse, SliverAsk, TicketRequest};
use capability_schema::ticket::{Operation, TicketUse, TicketVerifier, TrustedIssuers, Window};
use capability_schema::{AskGrant, Delegation, Rejection, Resources, Role, Signed, SliceKind};
use federation::TrustStore;
use federation::testing::{TestFederation, TestNode};
use federation::trust::Validity;

use agentd::agent::{Agent, AgentParts, Pricing};
use agentd::ledger::TicketLedger;
use agentd::policy::{Policy, PolicyConfig};

const NOW: u64 = 1_800_000_000;

fn cores(n: u64) -> Resources {
    Resources {
        cpu_millis: n * 1000,
        memory_bytes: n << 30,
        disk_bytes: n << 30,
        egress_kbps: n * 1000,
        ports: 0,
    }
}

struct World {
    plc: TestFederation,
    ple: TestFederation,
    trust: TrustStore,
    nodes: Vec<TestNode>,
}

fn world() -> World {
    let plc = TestFederation::new("plc", 100);
    let ple = TestFederation::new("ple", 101);
    let mut trust = TrustStore::new();
    plc.trust(&mut trust);
    ple.trust(&mut trust);
    let mut w = World {
        plc,
        ple,
        trust,
        nodes: Vec::new(),
    };
    w.nodes = (1..=3)
        .map(|i| w.plc.node(i, &format!("site{i}")))
        .collect();
    w
}

/// A node's ad delegating `share` to each of `agents`.
fn ad_for(
    node: &TestNode,
    agents: &[&SecretKey],
    share: Resources,
) -> Signed<capability_schema::ResourceAd> {
    let mut body = node.ad_body(1, NOW, 600);
    for agent in agents {
        body.delegations.push(Signed::sign(
            &node.key,
            &Delegation {
                node: node.key.public(),
                agent: agent.public(),
                share,
                scope: Default::default(),
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
    }
    Signed::sign(&node.key, &body)
}

fn agent(key: &SecretKey, dir: &std::path::Path, config: PolicyConfig) -> Agent {
    Agent::new(AgentParts {
        key: key.clone(),
        federation: "plc".into(),
        policy: Policy::new(config),
        pricing: Pricing::default(),
        oversubscription_permille: 1000,
        ledger: TicketLedger::open(&dir.join("tickets.redb")).unwrap(),
    })
}

fn feed(agent: &Agent, w: &World, share: Resources, agents: &[&SecretKey]) {
    for node in &w.nodes {
        let signed = ad_for(node, agents, share);
        let ad = w.trust.validate_ad(&signed, NOW, None).unwrap();
        agent
            .with_inventory(|inv| inv.offer(signed, ad, NOW))
            .unwrap();
    }
}

fn principal(
    w: &mut World,
    fed: &str,
    key: &SecretKey,
    site: &str,
) -> Signed<capability_schema::MembershipCert> {
    let f = if fed == "plc" { &mut w.plc } else { &mut w.ple };
    f.authority.certify(
        key.public(),
        Role::Principal,
        site,
        "someone",
        Validity::days(NOW - 10, 30),
    )
}

fn request(
    principal_key: &SecretKey,
    cert: Option<Signed<capability_schema::MembershipCert>>,
    slice: &str,
    nodes: &[&TestNode],
    each: Resources,
) -> TicketRequest {
    let request = TicketRequest {
        slice: slice.into(),
        principal: principal_key.public(),
        principal_cert: cert,
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
    signed_for(request, principal_key, principal_key.public())
}

/// `request` with an ask covering it, signed by `principal` for `carrier` to present (the
/// principal itself, as `slicectl --agent` does, or a broker).
fn signed_for(
    mut request: TicketRequest,
    principal: &SecretKey,
    carrier: capability_schema::PublicKey,
) -> TicketRequest {
    request.ask = None;
    let grant = AskGrant::covering(&request, carrier, NOW, 300);
    request.ask = Some(Box::new(Signed::sign(principal, &grant)));
    request
}

/// What `node` checks tickets with, trusting `agent`. Time is generous: unoptimized test
/// builds on a loaded host can exceed the 10 ms default.
fn node_verifier(agent: &SecretKey, node: &TestNode) -> TicketVerifier {
    TicketVerifier::new(
        TrustedIssuers::from_iter([agent.public()]),
        node.key.public(),
    )
    .with_limits(capability_schema::ticket::TicketLimits {
        max_time: std::time::Duration::from_secs(30),
        ..Default::default()
    })
}

fn tickets(
    reply: Result<AgentResponse, capability_schema::ErrorReply>,
) -> (
    Vec<capability_schema::protocol::IssuedTicket>,
    Vec<capability_schema::protocol::RefusedSliver>,
) {
    match reply.unwrap() {
        AgentResponse::Tickets { issued, refused } => (issued, refused),
        other => panic!("not tickets: {other:?}"),
    }
}

#[test]
fn minted_tickets_are_accepted_by_the_node_and_never_exceed_the_share() {
    let mut w = world();
    let dir = tempfile::tempdir().unwrap();
    let agent_key = test_key(20);
    let a = agent(&agent_key, dir.path(), PolicyConfig::default());
    feed(&a, &w, cores(2), &[&agent_key]);
    let alice = test_key(50);
    let cert = principal(&mut w, "plc", &alice, "site1");
    let node1 = w.nodes[0].clone();

    let (issued, refused) = tickets(a.handle(
        &w.trust,
        &alice.public(),
        AgentRequest::GetTickets(request(
            &alice,
            Some(cert.clone()),
            "site1_exp",
            &[&node1],
            cores(1),
        )),
        NOW,
    ));
    assert_eq!((issued.len(), refused.len()), (1, 0));
    // The node accepts it for alice, and only for alice.
    let verifier = node_verifier(&agent_key, &node1);
    let ticket_use = TicketUse {
        operation: Operation::Redeem,
        resources: cores(1),
        window: Some(Window::new(NOW, NOW + 3600)),
    };
    let verified = verifier
        .authorize(&issued[0].ticket.0, &alice.public(), NOW, &ticket_use)
        .unwrap();
    assert_eq!(verified.ticket_id.to_string(), issued[0].ticket_id);
    assert!(
        verifier
            .authorize(
                &issued[0].ticket.0,
                &test_key(51).public(),
                NOW,
                &ticket_use
            )
            .is_err()
    );

    // 1 of 2 cores is outstanding: 1.5 more is refused with the numbers, 1 more is fine.
    let (_, refused) = tickets(a.handle(
        &w.trust,
        &alice.public(),
        AgentRequest::GetTickets(request(
            &alice,
            Some(cert.clone()),
            "site1_exp",
            &[&node1],
            Resources {
                cpu_millis: 1500,
                ..cores(1)
            },
        )),
        NOW,
    ));
    match &refused[0].reason.reason {
        Rejection::OverShare {
            in_use: 1000,
            share: 2000,
            asked: 1500,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    let (issued, _) = tickets(a.handle(
        &w.trust,
        &alice.public(),
        AgentRequest::GetTickets(request(
            &alice,
            Some(cert),
            "site1_exp",
            &[&node1, &node1],
            Resources {
                cpu_millis: 500,
                ..Resources::ZERO
            },
        )),
        NOW,
    ));
    assert_eq!(issued.len(), 2);
    // GetAds shows the share exhausted on node 1.
    let offers = a
        .get_ads(
            &AdQuery {
                min_free: Resources {
                    cpu_millis: 1,
                    ..Resources::ZERO
                },
                ..Default::default()
            },
            NOW,
        )
        .unwrap();
    assert_eq!(offers.len(), 2);
    assert!(offers.iter().all(|o| o.ad.signer != node1.key.public()));
}

#[test]
fn two_agents_share_the_same_nodes_independently() {
    let mut w = world();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ka, kb) = (test_key(20), test_key(21));
    let a = agent(&ka, dir_a.path(), PolicyConfig::default());
    let b = agent(&kb, dir_b.path(), PolicyConfig::default());
    feed(&a, &w, cores(2), &[&ka, &kb]);
    feed(&b, &w, cores(2), &[&ka, &kb]);
    let alice = test_key(50);
    let cert = principal(&mut w, "plc", &alice, "site1");
    let node1 = w.nodes[0].clone();
    for agent in [&a, &b] {
        let (issued, _) = tickets(agent.handle(
            &w.trust,
            &alice.public(),
            AgentRequest::GetTickets(request(
                &alice,
                Some(cert.clone()),
                "site1_x",
                &[&node1],
                cores(2),
            )),
            NOW,
        ));
        assert_eq!(issued.len(), 1);
        let (issued, refused) = tickets(agent.handle(
            &w.trust,
            &alice.public(),
            AgentRequest::GetTickets(request(
                &alice,
                Some(cert.clone()),
                "site1_x",
                &[&node1],
                cores(1),
            )),
            NOW,
        ));
        assert_eq!((issued.len(), refused.len()), (0, 1));
    }
}

#[test]
fn restart_keeps_outstanding_tickets_and_ids_unique() {
    let mut w = world();
    let dir = tempfile::tempdir().unwrap();
    let key = test_key(20);
    let alice = test_key(50);
    let cert = principal(&mut w, "plc", &alice, "site1");
    let node1 = w.nodes[0].clone();
    let first_ids: Vec<String> = {
        let a = agent(&key, dir.path(), PolicyConfig::default());
        feed(&a, &w, cores(2), &[&key]);
        let (issued, _) = tickets(a.handle(
            &w.trust,
            &alice.public(),
            AgentRequest::GetTickets(request(
                &alice,
                Some(cert.clone()),
                "site1_x",
                &[&node1],
                cores(2),
            )),
            NOW,
        ));
        issued.into_iter().map(|t| t.ticket_id).collect()
    };
    let a = agent(&key, dir.path(), PolicyConfig::default());
    feed(&a, &w, cores(2), &[&key]);
    let (issued, refused) = tickets(a.handle(
        &w.trust,
        &alice.public(),
        AgentRequest::GetTickets(request(
            &alice,
            Some(cert.clone()),
            "site1_x",
            &[&node1],
            cores(1),
        )),
        NOW,
    ));
    assert_eq!(
        (issued.len(), refused.len()),
        (0, 1),
        "the share is still taken after restart"
    );
    let node2 = w.nodes[1].clone();
    let (issued, _) = tickets(a.handle(
        &w.trust,
        &alice.public(),
        AgentRequest::GetTickets(request(&alice, Some(cert), "site1_x", &[&node2], cores(1))),
        NOW,
    ));
    assert!(!first_ids.contains(&issued[0].ticket_id));
    assert_eq!(a.ledger().all().unwrap().len(), 2);
    // Released tickets stop counting.
    match a
        .handle(
            &w.trust,
            &alice.public(),
            AgentRequest::Released {
                ticket_ids: first_ids,
            },
            NOW,
        )
        .unwrap()
    {
        AgentResponse::Released { known } => assert_eq!(known, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        a.ledger()
            .outstanding(NOW)
            .unwrap()
            .by_node
            .get(&node1.key.public()),
        None
    );
}

#[test]
fn bad_requests_are_refused_with_the_rule_that_refused() {
    let mut w = world();
    let dir = tempfile::tempdir().unwrap();
    let key = test_key(20);
    let a = agent(&key, dir.path(), PolicyConfig::default());
    feed(&a, &w, cores(4), &[&key]);
    let node1 = w.nodes[0].clone();
    let rule = |r: Result<AgentResponse, capability_schema::ErrorReply>| match r {
        Err(e) => match e.reason {
            Rejection::Policy { rule, .. } => rule,
            other => other.code().to_owned(),
        },
        Ok(ok) => format!("accepted: {ok:?}"),
    };

    // Unknown principal: no certificate, not listed.
    let stranger = test_key(60);
    assert_eq!(
        rule(a.handle(
            &w.trust,
            &stranger.public(),
            AgentRequest::GetTickets(request(&stranger, None, "x_y", &[&node1], cores(1))),
            NOW
        )),
        "unknown_principal"
    );

    // Admin slice asked by a user.
    let alice = test_key(50);
    let cert = principal(&mut w, "plc", &alice, "site1");
    let mut admin = request(
        &alice,
        Some(cert.clone()),
        "site1_admin",
        &[&node1],
        cores(1),
    );
    admin.kind = SliceKind::Admin {
        capabilities: vec!["CAP_NET_RAW".into()],
        host_pid_view: false,
    };
    let admin = signed_for(admin, &alice, alice.public());
    assert_eq!(
        rule(a.handle(
            &w.trust,
            &alice.public(),
            AgentRequest::GetTickets(admin),
            NOW
        )),
        "admin-only"
    );

    // Quota: the default is 10 slivers.
    let many: Vec<&TestNode> = std::iter::repeat_n(&node1, 11).collect();
    assert_eq!(
        rule(a.handle(
            &w.trust,
            &alice.public(),
            AgentRequest::GetTickets(request(
                &alice,
                Some(cert.clone()),
                "site1_x",
                &many,
                Resources {
                    cpu_millis: 1,
                    ..Resources::ZERO
                }
            )),
            NOW
        )),
        "quota"
    );

    // Wrong slice prefix.
    assert_eq!(
        rule(a.handle(
            &w.trust,
            &alice.public(),
            AgentRequest::GetTickets(request(&alice, Some(cert), "site2_x", &[&node1], cores(1))),
            NOW
        )),
        "slice-prefix"
    );

    // A principal of another federation, without and then with a peering agreement.
    let bob = test_key(70);
    let bob_cert = principal(&mut w, "ple", &bob, "paris");
    assert_eq!(
        rule(a.handle(
            &w.trust,
            &bob.public(),
            AgentRequest::GetTickets(request(
                &bob,
                Some(bob_cert.clone()),
                "paris_x",
                &[&node1],
                cores(1)
            )),
            NOW
        )),
        "no_peering"
    );
    let ple_key = w.ple.authority.public();
    let agreement = w.plc.authority.peer(
        "ple",
        ple_key,
        &[Role::Principal],
        PrincipalFilter::All,
        PeeringLimits {
            max_slivers_per_principal: Some(1),
            ..Default::default()
        },
        Validity::days(NOW - 10, 30),
    );
    w.trust.add_agreement(&agreement).unwrap();
    let (issued, _) = tickets(a.handle(
        &w.trust,
        &bob.public(),
        AgentRequest::GetTickets(request(
            &bob,
            Some(bob_cert.clone()),
            "paris_x",
            &[&node1],
            cores(1),
        )),
        NOW,
    ));
    assert_eq!(issued.len(), 1);
    assert_eq!(
        rule(a.handle(
            &w.trust,
            &bob.public(),
            AgentRequest::GetTickets(request(
                &bob,
                Some(bob_cert),
                "paris_x",
                &[&node1],
                cores(1)
            )),
            NOW
        )),
        "peering"
    );

    // Empty window.
    let alice_cert = principal(&mut w, "plc", &alice, "site1");
    let mut empty = request(&alice, Some(alice_cert), "site1_x", &[&node1], cores(1));
    empty.not_after = NOW - 1;
    assert_eq!(
        rule(a.handle(
            &w.trust,
            &alice.public(),
            AgentRequest::GetTickets(empty),
            NOW
        )),
        "malformed"
    );
}

#[test]
fn tickets_state_the_agreed_price_and_parallel_minting_keeps_the_request_order() {
    let mut w = world();
    let dir = tempfile::tempdir().unwrap();
    let key = test_key(20);
    let a = Agent::new(AgentParts {
        key: key.clone(),
        federation: "plc".into(),
        policy: Policy::new(PolicyConfig {
            default_quota: agentd::policy::Quota {
                max_slivers: None,
                max_total: None,
            },
            ..PolicyConfig::default()
        }),
        pricing: Pricing {
            base: capability_schema::ad::PriceList {
                cpu_core_hour: 1_000,
                memory_gib_hour: 100,
                disk_gib_hour: 10,
                egress_mbit_hour: 1,
            },
            surge_percent: 50,
        },
        oversubscription_permille: 1000,
        ledger: TicketLedger::open(&dir.path().join("tickets.redb")).unwrap(),
    })
    .with_mint_threads(4);
    assert_eq!(a.mint_threads(), 4);
    feed(&a, &w, cores(64), &[&key]);
    let alice = test_key(50);
    let cert = principal(&mut w, "plc", &alice, "site1");
    // 30 slivers over the three nodes, interleaved, so several threads mint.
    let nodes: Vec<&TestNode> = (0..30).map(|i| &w.nodes[i % 3]).collect();
    let each = Resources {
        cpu_millis: 1000,
        memory_bytes: 1 << 30,
        ..Resources::ZERO
    };
    let (issued, refused) = tickets(a.handle(
        &w.trust,
        &alice.public(),
        AgentRequest::GetTickets(request(&alice, Some(cert), "site1_x", &nodes, each)),
        NOW,
    ));
    assert_eq!((issued.len(), refused.len()), (30, 0));
    let records: std::collections::BTreeMap<String, agentd::ledger::TicketRecord> = a
        .ledger()
        .all()
        .unwrap()
        .into_iter()
        .map(|r| (r.ticket_id.clone(), r))
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for (i, t) in issued.iter().enumerate() {
        assert_eq!(
            t.node,
            nodes[i].key.public(),
            "answer {i} is for the node asked"
        );
        assert!(ids.insert(t.ticket_id.clone()), "ids are unique");
        let verifier = node_verifier(&key, nodes[i]);
        let verified = verifier
            .authorize(
                &t.ticket.0,
                &alice.public(),
                NOW,
                &TicketUse {
                    operation: Operation::Redeem,
                    resources: each,
                    window: None,
                },
            )
            .unwrap();
        // The node reads the same price the agent answered and recorded.
        assert!(t.price > 0);
        assert_eq!(verified.price, Some(t.price));
        assert_eq!(records[&t.ticket_id].price, t.price);
        assert_eq!(records[&t.ticket_id].requester, Some(alice.public()));
    }
    // Surge: later slivers on a node cost more than the first, and the ticket says so.
    assert!(issued[27].price > issued[0].price, "{issued:?}");
}

#[test]
fn only_the_principal_the_requester_or_the_node_may_release_a_ticket() {
    let mut w = world();
    let dir = tempfile::tempdir().unwrap();
    let key = test_key(20);
    let a = agent(&key, dir.path(), PolicyConfig::default());
    feed(&a, &w, cores(4), &[&key]);
    let alice = test_key(50);
    let broker = test_key(30);
    let stranger = test_key(31);
    let cert = principal(&mut w, "plc", &alice, "site1");
    let node1 = w.nodes[0].clone();
    // A broker asks on alice's behalf: four tickets of one core each.
    let (issued, _) = tickets(a.handle(
        &w.trust,
        &broker.public(),
        AgentRequest::GetTickets(signed_for(
            request(
                &alice,
                Some(cert),
                "site1_x",
                &[&node1, &node1, &node1, &node1],
                cores(1),
            ),
            &alice,
            broker.public(),
        )),
        NOW,
    ));
    assert_eq!(issued.len(), 4);
    let ids: Vec<String> = issued.iter().map(|t| t.ticket_id.clone()).collect();
    let outstanding_cpu = || {
        a.ledger()
            .outstanding(NOW)
            .unwrap()
            .by_node
            .get(&node1.key.public())
            .map_or(0, |r| r.cpu_millis)
    };
    let release = |caller: &SecretKey, ids: &[String]| {
        a.handle(
            &w.trust,
            &caller.public(),
            AgentRequest::Released {
                ticket_ids: ids.to_vec(),
            },
            NOW,
        )
    };

    // Anyone else: refused under the rule `release`, naming who may, and nothing is freed,
    // even when the request mixes in a ticket the caller could release.
    let refusal = release(&stranger, &ids[..1]).unwrap_err();
    match &refusal.reason {
        Rejection::Policy { rule, detail } => {
            assert_eq!(rule, "release");
            for who in [&alice, &broker, &stranger] {
                assert!(detail.contains(&who.public().short()), "{detail}");
            }
            assert!(detail.contains(&node1.key.public().short()), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(outstanding_cpu(), 4000);
    // Another node is not this ticket's node.
    assert!(release(&w.nodes[1].key, &ids[..1]).is_err());
    assert_eq!(outstanding_cpu(), 4000);

    // The requester (the broker's all-or-nothing abort), the principal (`slicectl slice
    // delete`) and the node the ticket names (reporting a release) each may.
    let released = |r: Result<AgentResponse, capability_schema::ErrorReply>| match r.unwrap() {
        AgentResponse::Released { known } => known,
        other => panic!("{other:?}"),
    };
    assert_eq!(released(release(&broker, &ids[..1])), 1);
    assert_eq!(outstanding_cpu(), 3000);
    assert_eq!(released(release(&alice, &ids[1..2])), 1);
    assert_eq!(outstanding_cpu(), 2000);
    assert_eq!(released(release(&node1.key, &ids[2..3])), 1);
    assert_eq!(outstanding_cpu(), 1000);
    // Releasing again, or ids never minted, changes nothing and counts only what is known.
    assert_eq!(
        released(release(&alice, &[ids[0].clone(), "00".repeat(64)])),
        1
    );
    assert_eq!(outstanding_cpu(), 1000);
    // The last one is still refused to the stranger after all that.
    assert!(release(&stranger, &ids[3..]).is_err());
    assert_eq!(outstanding_cpu(), 1000);
}

#[test]
fn an_agent_mints_only_within_the_ask_the_principal_signed_for_its_carrier() {
    let mut w = world();
    let dir = tempfile::tempdir().unwrap();
    let key = test_key(20);
    let a = agent(&key, dir.path(), PolicyConfig::default());
    feed(&a, &w, cores(8), &[&key]);
    let alice = test_key(50);
    let broker = test_key(30);
    let other_broker = test_key(32);
    let stranger = test_key(31);
    let cert = principal(&mut w, "plc", &alice, "site1");
    let node1 = w.nodes[0].clone();
    let refusal = |caller: &SecretKey, request: TicketRequest, now: u64| match a.handle(
        &w.trust,
        &caller.public(),
        AgentRequest::GetTickets(request),
        now,
    ) {
        Err(e) => match e.reason {
            Rejection::Policy { rule, detail } => (rule, detail),
            other => (other.code().to_owned(), other.to_string()),
        },
        Ok(ok) => ("accepted".to_owned(), format!("{ok:?}")),
    };
    let unsigned = |slivers: &[&TestNode]| {
        let mut r = request(&alice, Some(cert.clone()), "site1_x", slivers, cores(1));
        r.ask = None;
        r
    };

    // An old client: no signed ask at all.
    let (rule, detail) = refusal(&alice, unsigned(&[&node1]), NOW);
    assert_eq!(rule, "signed-ask");
    assert!(detail.contains("upgrade slicectl"), "{detail}");

    // A stranger holding alice's certificate signs the ask itself.
    let (rule, detail) = refusal(
        &stranger,
        signed_for(unsigned(&[&node1]), &stranger, stranger.public()),
        NOW,
    );
    assert_eq!(rule, "signed-ask");
    assert!(detail.contains("not the principal's"), "{detail}");

    // A stranger replaying alice's ask meant for her broker.
    let for_broker = signed_for(unsigned(&[&node1, &node1]), &alice, broker.public());
    let (rule, detail) = refusal(&stranger, for_broker.clone(), NOW);
    assert_eq!(rule, "ask-broker");
    assert_eq!(
        detail,
        format!(
            "ask signed for broker {}, carried by {}",
            broker.public().short(),
            stranger.public().short()
        )
    );
    let (rule, _) = refusal(&other_broker, for_broker.clone(), NOW);
    assert_eq!(rule, "ask-broker");

    // Expired: the ask was valid for 300 s.
    let (rule, detail) = refusal(&broker, for_broker.clone(), NOW + 301);
    assert_eq!(rule, "ask-window");
    assert!(detail.contains("expired at"), "{detail}");

    // The broker gets what alice asked, once; more slivers or another slice are refused.
    let (issued, refused) = tickets(a.handle(
        &w.trust,
        &broker.public(),
        AgentRequest::GetTickets(for_broker.clone()),
        NOW,
    ));
    assert_eq!((issued.len(), refused.len()), (2, 0));
    let (rule, detail) = refusal(&broker, for_broker.clone(), NOW + 1);
    assert_eq!(rule, "ask-replay");
    assert!(
        detail.contains("allows 2 slivers, 2 asked (2 already minted under it)"),
        "{detail}"
    );
    let mut wider = for_broker.clone();
    wider.slivers.push(wider.slivers[0].clone());
    let (rule, detail) = refusal(&broker, wider, NOW + 1);
    assert_eq!(rule, "ask-replay");
    assert!(detail.contains("allows 2 slivers, 3 asked"), "{detail}");
    let mut other_slice = for_broker.clone();
    other_slice.slice = "site1_other".into();
    let (rule, detail) = refusal(&broker, other_slice, NOW + 1);
    assert_eq!(rule, "ask-scope");
    assert!(detail.contains("\"site1_other\""), "{detail}");
    let mut bigger = signed_for(unsigned(&[&node1]), &alice, broker.public());
    bigger.slivers[0].resources = cores(2);
    let (rule, _) = refusal(&broker, bigger, NOW + 1);
    assert_eq!(rule, "ask-scope");
    let mut longer = signed_for(unsigned(&[&node1]), &alice, broker.public());
    longer.not_after += 3600;
    let (rule, detail) = refusal(&broker, longer, NOW + 1);
    assert_eq!(rule, "ask-scope");
    assert!(detail.contains("the ask allows 3600 s"), "{detail}");
    // Only the two tickets of the ask were minted.
    assert_eq!(
        a.ledger()
            .outstanding(NOW + 2)
            .unwrap()
            .by_principal
            .get(&alice.public())
            .map(|u| u.slivers),
        Some(2)
    );
}
