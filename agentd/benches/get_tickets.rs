//! `GetTickets` for a 100-sliver request: policy, 100 mints, one durable ledger write.
//! Target: ≤ 50 ms on this machine. Prints p50/p95 over repeated requests.

use std::time::Instant;

use agentd::agent::{Agent, AgentParts, Pricing};
use agentd::ledger::TicketLedger;
use agentd::policy::{Policy, PolicyConfig, Quota};
use capability_schema::ad::ShareState;
use capability_schema::identity::test_key;
use capability_schema::protocol::{AgentRequest, AgentResponse, SliverAsk, TicketRequest};
use capability_schema::{Delegation, Resources, Role, Signed, SliceKind};
use federation::TrustStore;
use federation::testing::TestFederation;
use federation::trust::Validity;

fn main() {
    const NOW: u64 = 1_800_000_000;
    const ROUNDS: usize = 30;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut plc = TestFederation::new("plc", 100);
    let mut trust = TrustStore::new();
    plc.trust(&mut trust);
    let agent_key = test_key(20);
    let share = Resources {
        cpu_millis: 1_000_000,
        memory_bytes: 1 << 40,
        disk_bytes: 1 << 40,
        egress_kbps: 1 << 30,
    };
    let config = PolicyConfig {
        default_quota: Quota {
            max_slivers: None,
            max_total: None,
        },
        ..PolicyConfig::default()
    };
    let agent = Agent::new(AgentParts {
        key: agent_key.clone(),
        federation: "plc".into(),
        policy: Policy::new(config),
        pricing: Pricing::default(),
        oversubscription_permille: 1000,
        ledger: TicketLedger::open(&dir.path().join("tickets.redb")).expect("ledger"),
    });
    let nodes: Vec<_> = (0..100u8)
        .map(|i| plc.node(i, &format!("site{}", i % 20)))
        .collect();
    for node in &nodes {
        let mut body = node.ad_body(1, NOW, 600);
        body.delegations.push(Signed::sign(
            &node.key,
            &Delegation {
                node: node.key.public(),
                agent: agent_key.public(),
                share,
                issued_at: NOW,
                not_after: NOW + 86_400,
            },
        ));
        body.shares.push(ShareState {
            agent: agent_key.public(),
            share,
            committed: Resources::ZERO,
            free: share,
        });
        let signed = Signed::sign(&node.key, &body);
        let ad = trust.validate_ad(&signed, NOW, None).expect("valid ad");
        agent
            .with_inventory(|inv| inv.offer(signed, ad, NOW))
            .expect("delegated");
    }
    let alice = test_key(50);
    let cert = plc.authority.certify(
        alice.public(),
        Role::Principal,
        "site0",
        "alice",
        Validity::days(NOW - 10, 30),
    );
    let per = Resources {
        cpu_millis: 10,
        memory_bytes: 1 << 20,
        disk_bytes: 1 << 20,
        egress_kbps: 10,
    };
    let request = TicketRequest {
        slice: "site0_bench".into(),
        principal: alice.public(),
        principal_cert: Some(cert),
        kind: SliceKind::Regular,
        slivers: nodes
            .iter()
            .map(|n| SliverAsk {
                node: n.key.public(),
                resources: per,
            })
            .collect(),
        not_before: NOW,
        not_after: NOW + 3600,
        max_price: None,
    };
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let reply = agent.handle(
            &trust,
            &alice.public(),
            AgentRequest::GetTickets(request.clone()),
            NOW,
        );
        times.push(start.elapsed());
        match reply {
            Ok(AgentResponse::Tickets { issued, refused }) => {
                assert_eq!((issued.len(), refused.len()), (100, 0))
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
    times.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!(
        "GetTickets, 100 slivers (mint + durable ledger write), {ROUNDS} rounds: p50 {:.1} ms, p95 {:.1} ms, min {:.1} ms (target ≤ 50 ms)",
        ms(times[ROUNDS / 2]),
        ms(times[ROUNDS * 95 / 100]),
        ms(times[0])
    );
}
