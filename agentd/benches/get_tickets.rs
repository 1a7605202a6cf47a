//! `GetTickets` for a 100-sliver request: the principal's signed ask, policy, 100 mints, one
//! durable ledger write.
//! Target: ≤ 50 ms on this machine.
//!
//! Prints p50/p99 over repeated requests for the agent as configured (minting on every
//! available core) and, interleaved round by round so both see the same load, for the same
//! agent minting on one thread. As references from the same run: one ticket minted alone
//! (one biscuit: build, sign, serialize), the ledger write alone (100 records in one durable
//! transaction) and one empty durable redb commit. The load average is printed with the figures: the host is
//! shared.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::time::{Duration, Instant};

use agentd::agent::{Agent, AgentParts, Pricing};
use agentd::ledger::{TicketLedger, TicketRecord};
use agentd::policy::{Policy, PolicyConfig, Quota};
use capability_schema::ad::{PriceList, ShareState};
use capability_schema::identity::test_key;
use capability_schema::protocol::{AgentRequest, AgentResponse, SliverAsk, TicketRequest};
use capability_schema::ticket::Minter;
use capability_schema::{AskGrant, Delegation, Resources, Role, Signed, SliceKind};
use federation::TrustStore;
use federation::testing::TestFederation;
use federation::trust::Validity;

fn main() {
    const NOW: u64 = 1_800_000_000;
    const ROUNDS: usize = 60;
    let dir = tempfile::tempdir().expect("temp dir");
    let serial_dir = tempfile::tempdir().expect("temp dir");
    let mut plc = TestFederation::new("plc", 100);
    let mut trust = TrustStore::new();
    plc.trust(&mut trust);
    let agent_key = test_key(20);
    let share = Resources {
        cpu_millis: 1_000_000,
        memory_bytes: 1 << 40,
        disk_bytes: 1 << 40,
        egress_kbps: 1 << 30,
        ports: 0,
    };
    let config = PolicyConfig {
        default_quota: Quota {
            max_slivers: None,
            max_total: None,
        },
        ..PolicyConfig::default()
    };
    let make_agent = |dir: &std::path::Path| {
        Agent::new(AgentParts {
            key: agent_key.clone(),
            federation: "plc".into(),
            policy: Policy::new(config.clone()),
            pricing: Pricing {
                base: PriceList {
                    cpu_core_hour: 1_000,
                    memory_gib_hour: 100,
                    disk_gib_hour: 10,
                    egress_mbit_hour: 1,
                },
                surge_percent: 20,
            },
            oversubscription_permille: 1000,
            ledger: TicketLedger::open(&dir.join("tickets.redb")).expect("ledger"),
        })
    };
    let agent = make_agent(dir.path());
    let serial = make_agent(serial_dir.path()).with_mint_threads(1);
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
                scope: Default::default(),
                issued_at: NOW,
                since: NOW,
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
        for a in [&agent, &serial] {
            a.with_inventory(|inv| inv.offer(signed.clone(), ad.clone(), NOW))
                .expect("delegated");
        }
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
        ports: 0,
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
        net: Default::default(),
        ask: None,
    };
    // Each request carries a fresh ask alice signed (as slicectl signs one per acquisition),
    // signed before the clock starts: checking it is part of the request, signing is not.
    let round = |agent: &Agent| {
        let grant = AskGrant::covering(&request, alice.public(), NOW, 300);
        let signed = TicketRequest {
            ask: Some(Box::new(Signed::sign(&alice, &grant))),
            ..request.clone()
        };
        let start = Instant::now();
        let reply = agent.handle(
            &trust,
            &alice.public(),
            AgentRequest::GetTickets(signed),
            NOW,
        );
        let took = start.elapsed();
        match reply {
            Ok(AgentResponse::Tickets { issued, refused }) => {
                assert_eq!((issued.len(), refused.len()), (100, 0))
            }
            other => panic!("unexpected: {other:?}"),
        }
        took
    };
    // Warm up both (page cache, allocator, lazy statics).
    round(&agent);
    round(&serial);
    let mut times = Vec::with_capacity(ROUNDS);
    let mut serial_times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        times.push(round(&agent));
        serial_times.push(round(&serial));
    }

    // References: one ticket alone, one raw biscuit, one empty durable commit.
    let spec = capability_schema::ticket::TicketSpec {
        federation: "plc".into(),
        node: nodes[0].key.public(),
        slice: "site0_bench".into(),
        kind: SliceKind::Regular,
        resources: per,
        window: capability_schema::ticket::Window::new(NOW, NOW + 3600),
        holder: alice.public(),
        operations: capability_schema::ticket::Operation::ALL
            .into_iter()
            .collect(),
        net: Default::default(),
    };
    let minter = Minter::new(&agent_key);
    let mut one_mint = repeat(200, || {
        let ticket = minter.mint_priced(&spec, 1234).expect("mint");
        (ticket.id().to_string(), ticket.to_bytes().expect("bytes"))
    });
    // The ledger write alone: 100 records in one durable transaction, as a request makes.
    let ledger = TicketLedger::open(&dir.path().join("write.redb")).expect("ledger");
    let mut batch = 0u64;
    let mut ledger_write = repeat(60, || {
        batch += 1;
        let records: Vec<TicketRecord> = (0..100)
            .map(|i| TicketRecord {
                ticket_id: format!("{batch:016x}{i:0112x}"),
                node: nodes[i].key.public(),
                principal: alice.public(),
                requester: Some(alice.public()),
                principal_federation: Some("plc".into()),
                principal_authority: None,
                slice: "site0_bench".into(),
                resources: per,
                issued_at: NOW,
                not_after: NOW + 3600,
                price: 1234,
                released: false,
            })
            .collect();
        ledger.record_all(&records).expect("durable write");
    });
    let db = redb::Database::create(dir.path().join("empty.redb")).expect("redb");
    let mut empty_commit = repeat(100, || {
        db.begin_write().expect("txn").commit().expect("commit");
    });

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!(
        "load average {} over {} cores",
        load.join(" "),
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    for (label, times) in [
        (
            format!("minting on {} threads", agent.mint_threads()),
            &mut times,
        ),
        ("minting on 1 thread".to_owned(), &mut serial_times),
    ] {
        let (p50, p99, min) = percentiles(times);
        println!(
            "GetTickets, 100 slivers (mint + durable ledger write), {label}, {ROUNDS} rounds: \
             p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms (target ≤ 50 ms)",
            ms(p50),
            ms(p99),
            ms(min)
        );
    }
    let (m50, _, mmin) = percentiles(&mut one_mint);
    let (c50, c99, cmin) = percentiles(&mut empty_commit);
    let (w50, w99, wmin) = percentiles(&mut ledger_write);
    println!(
        "reference: one ticket minted alone (Minter::mint_priced + id + bytes) p50 {:.0} µs \
         (min {:.0}); the ledger write alone (100 records, one durable transaction) p50 {:.2} \
         ms, p99 {:.2} ms (min {:.2}); one empty durable redb commit p50 {:.2} ms, p99 {:.2} ms \
         (min {:.2})",
        us(m50),
        us(mmin),
        ms(w50),
        ms(w99),
        ms(wmin),
        ms(c50),
        ms(c99),
        ms(cmin)
    );
}

/// Times `n` runs of `f`.
fn repeat<T>(n: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .collect()
}

/// p50, p99 and min of `times` (sorted in place).
fn percentiles(times: &mut [Duration]) -> (Duration, Duration, Duration) {
    times.sort();
    let at = |q: usize| times[(times.len() * q / 100).min(times.len() - 1)];
    (at(50), at(99), times[0])
}
