//! Ticket throughput: mint, attenuate, delegate, and the node's parse + authorize, next to a
//! raw biscuit-auth reference (the same facts, a plain authorizer with equivalent checks).
//!
//! Targets: our authorization costs at most 20% more than the raw reference, and a node
//! authorizes at least 8,000 tickets per second on one core. A ticket presented again is read
//! from the cache of verified chains (`ChainCache`): at most 5 µs per repeated authorization.
//!
//! Two shapes are measured: a fresh ticket (authority block only: what most redeems present)
//! and a ticket narrowed twice and delegated once (four blocks, one third-party signature).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::hint::black_box;

use biscuit_auth::Biscuit;
use biscuit_auth::builder::{self, AuthorizerBuilder, BlockBuilder};
use biscuit_auth::datalog::RunLimits;
use capability_schema::identity::{SecretKey, test_key};
use capability_schema::resources::Resources;
use capability_schema::slice::SliceKind;
use capability_schema::ticket::{
    Attenuation, ChainCache, Operation, Ticket, TicketLimits, TicketSpec, TicketUse,
    TicketVerifier, Window,
};
use criterion::{Criterion, Throughput, criterion_group};

const NOW: u64 = 1_700_000_000;
const MIB: u64 = 1 << 20;

fn agent() -> SecretKey {
    test_key(1)
}
fn node() -> SecretKey {
    test_key(2)
}
fn alice() -> SecretKey {
    test_key(3)
}
fn bob() -> SecretKey {
    test_key(4)
}

fn spec() -> TicketSpec {
    TicketSpec {
        federation: "plc".into(),
        node: node().public(),
        slice: "princeton_codeen".into(),
        kind: SliceKind::Regular,
        resources: Resources {
            cpu_millis: 2000,
            memory_bytes: 1024 * MIB,
            disk_bytes: 4096 * MIB,
            egress_kbps: 10_000,
            ports: 0,
        },
        window: Window::new(NOW - 60, NOW + 3600),
        holder: alice().public(),
        operations: Operation::ALL.into_iter().collect(),
        net: Default::default(),
    }
}

fn narrowed() -> Resources {
    Resources {
        cpu_millis: 1000,
        memory_bytes: 512 * MIB,
        disk_bytes: 1024 * MIB,
        egress_kbps: 5000,
        ports: 0,
    }
}

fn asked() -> TicketUse {
    TicketUse {
        operation: Operation::Redeem,
        resources: Resources {
            cpu_millis: 500,
            ..narrowed()
        },
        window: None,
    }
}

/// Our ticket narrowed twice (resources; window and operations) and delegated alice → bob.
fn chained(minted: &Ticket) -> Ticket {
    minted
        .attenuate(&Attenuation {
            resources: Some(narrowed()),
            ..Attenuation::default()
        })
        .unwrap()
        .attenuate(&Attenuation {
            window: Some(Window::new(NOW - 10, NOW + 1800)),
            operations: Some([Operation::Redeem].into_iter().collect()),
            ..Attenuation::default()
        })
        .unwrap()
        .delegate(&alice(), &bob().public())
        .unwrap()
}

/// The raw reference token: the same authority fact, attenuations written the usual biscuit
/// way (as checks) and the same third-party delegation block.
fn raw_tokens(minted: &Ticket) -> (Vec<u8>, Vec<u8>) {
    let authority = minted.as_biscuit().print_block_source(0).unwrap();
    let root = agent().to_biscuit();
    let fresh = Biscuit::builder()
        .code(&authority)
        .unwrap()
        .build(&root)
        .unwrap();
    let n = narrowed();
    let chained = fresh
        .append(
            BlockBuilder::new()
                .code(format!(
                    "check if request_resources($c, $m, $d, $e), $c <= {}, $m <= {}, $d <= {}, $e <= {};",
                    n.cpu_millis, n.memory_bytes, n.disk_bytes, n.egress_kbps
                ))
                .unwrap(),
        )
        .unwrap()
        .append(
            BlockBuilder::new()
                .code(format!(
                    "check if now($t), $t >= {}, $t < {}; check if request_operation(\"redeem\");",
                    NOW - 10,
                    NOW + 1800
                ))
                .unwrap(),
        )
        .unwrap();
    let holder = alice().to_biscuit();
    let block = BlockBuilder::new()
        .code(format!("delegate_to(\"{}\");", bob().public()))
        .unwrap();
    let signed = chained
        .third_party_request()
        .unwrap()
        .create_block(&holder.private(), block)
        .unwrap();
    let chained = chained.append_third_party(holder.public(), signed).unwrap();
    (fresh.to_vec().unwrap(), chained.to_vec().unwrap())
}

/// The raw reference node, prepared once like ours: the agent's key, the node's checks and
/// policy (parsed once); per request it parses the token, states the request, checks it
/// against the authority fact and the presenter, and runs every block's checks, under the
/// same limits as ours.
struct RawNode {
    root: biscuit_auth::PublicKey,
    base: AuthorizerBuilder,
}

impl RawNode {
    fn new(delegated_by: Option<&SecretKey>) -> Self {
        let holder_check = match delegated_by {
            Some(holder) => format!(
                "check if presenter($p), delegate_to($p) trusting {};",
                holder.public()
            ),
            None => "check if presenter($p), ticket($t), $t.get(\"holder\") == $p;".to_owned(),
        };
        let code = format!(
            r#"check if ticket($t), $t.get("node") == "{node}";
            check if ticket($t), now($n), $n >= $t.get("not_before"), $n < $t.get("not_after");
            check if ticket($t), request_operation($o), $t.get("operations").contains($o);
            check if ticket($t), request_resources($c, $m, $d, $e), $c <= $t.get("cpu_millis"),
                $m <= $t.get("memory_bytes"), $d <= $t.get("disk_bytes"),
                $e <= $t.get("egress_kbps");
            {holder_check}
            allow if true;"#,
            node = node().public(),
        );
        let l = limits();
        let base = AuthorizerBuilder::new()
            .code(code)
            .unwrap()
            .set_limits(RunLimits {
                max_facts: l.max_facts,
                max_iterations: l.max_iterations,
                max_time: l.max_time,
            });
        RawNode {
            root: agent().public().to_biscuit().unwrap(),
            base,
        }
    }

    fn authorize(&self, bytes: &[u8], presenter: &str, request: &TicketUse) -> usize {
        let token = Biscuit::from(bytes, self.root).unwrap();
        let r = request.resources;
        let int = |v: u64| builder::int(v as i64);
        let mut authorizer = self
            .base
            .clone()
            .fact(builder::fact("now", &[int(NOW)]))
            .unwrap()
            .fact(builder::fact("presenter", &[builder::string(presenter)]))
            .unwrap()
            .fact(builder::fact(
                "request_operation",
                &[builder::string("redeem")],
            ))
            .unwrap()
            .fact(builder::fact(
                "request_resources",
                &[
                    int(r.cpu_millis),
                    int(r.memory_bytes),
                    int(r.disk_bytes),
                    int(r.egress_kbps),
                ],
            ))
            .unwrap()
            .build(&token)
            .unwrap();
        authorizer.authorize().unwrap()
    }
}

/// The same limits on both sides; time generous, as the benchmark host is shared.
fn limits() -> TicketLimits {
    TicketLimits {
        max_time: std::time::Duration::from_secs(1),
        ..TicketLimits::default()
    }
}

fn bench_tickets(c: &mut Criterion) {
    let minted = Ticket::mint(&agent(), &spec()).unwrap();
    let delegated = chained(&minted);
    let fresh_bytes = minted.to_bytes().unwrap();
    let chained_bytes = delegated.to_bytes().unwrap();
    let (raw_fresh, raw_chained) = raw_tokens(&minted);
    let verifier = TicketVerifier::new([agent().public()].into_iter().collect(), node().public())
        .with_limits(limits());
    let raw_fresh_node = RawNode::new(None);
    let raw_chained_node = RawNode::new(Some(&alice()));
    let (alice_key, bob_key) = (alice().public(), bob().public());
    let (alice_text, bob_text) = (alice_key.to_string(), bob_key.to_string());
    let request = asked();
    // Sanity: both paths accept.
    verifier
        .authorize(&fresh_bytes, &alice_key, NOW, &request)
        .unwrap();
    verifier
        .authorize(&chained_bytes, &bob_key, NOW, &request)
        .unwrap();
    raw_fresh_node.authorize(&raw_fresh, &alice_text, &request);
    raw_chained_node.authorize(&raw_chained, &bob_text, &request);

    let mut g = c.benchmark_group("ticket");
    g.throughput(Throughput::Elements(1));
    let (issuer, holder, spec) = (agent(), alice(), spec());
    g.bench_function("mint", |b| {
        b.iter(|| Ticket::mint(&issuer, black_box(&spec)).unwrap())
    });
    g.bench_function("attenuate", |b| {
        let a = Attenuation {
            resources: Some(narrowed()),
            ..Attenuation::default()
        };
        b.iter(|| minted.attenuate(black_box(&a)).unwrap())
    });
    g.bench_function("delegate", |b| {
        b.iter(|| minted.delegate(&holder, black_box(&bob_key)).unwrap())
    });
    g.bench_function("authorize/fresh", |b| {
        b.iter(|| {
            verifier
                .authorize(black_box(&fresh_bytes), &alice_key, NOW, &request)
                .unwrap()
        })
    });
    g.bench_function("raw_reference/fresh", |b| {
        b.iter(|| raw_fresh_node.authorize(black_box(&raw_fresh), &alice_text, &request))
    });
    g.bench_function("authorize/two_attenuations_delegation", |b| {
        b.iter(|| {
            verifier
                .authorize(black_box(&chained_bytes), &bob_key, NOW, &request)
                .unwrap()
        })
    });
    g.bench_function("raw_reference/two_attenuations_delegation", |b| {
        b.iter(|| raw_chained_node.authorize(black_box(&raw_chained), &bob_text, &request))
    });
    let cache = std::sync::Arc::new(ChainCache::default());
    let cached = verifier.clone().with_chain_cache(cache);
    for (bytes, presenter) in [(&fresh_bytes, &alice_key), (&chained_bytes, &bob_key)] {
        g.bench_function(format!("chain_cache_hit/{}_bytes", bytes.len()), |b| {
            b.iter(|| {
                let chain = cached.verify_chain(black_box(bytes)).unwrap();
                cached
                    .authorize_chain(&chain, presenter, NOW, &request)
                    .unwrap()
            })
        });
    }
    g.bench_function("parse_only/fresh", |b| {
        let root = agent().public().to_biscuit().unwrap();
        b.iter(|| Biscuit::from(black_box(&raw_fresh), root).unwrap())
    });
    g.finish();
}

/// This thread's CPU time in nanoseconds (from `/proc/thread-self/schedstat`), so the paired
/// comparison below is not skewed by time the thread spends preempted on a shared host.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Ours and the raw reference, interleaved in small batches and timed in CPU time: the
/// overhead figure the target is about, robust to load that drifts during a run.
fn paired_report() {
    let minted = Ticket::mint(&agent(), &spec()).unwrap();
    let delegated = chained(&minted);
    let (raw_fresh, raw_chained) = raw_tokens(&minted);
    let verifier = TicketVerifier::new([agent().public()].into_iter().collect(), node().public())
        .with_limits(limits());
    let request = asked();
    let (alice_key, bob_key) = (alice().public(), bob().public());
    let (alice_text, bob_text) = (alice_key.to_string(), bob_key.to_string());
    let fresh_node = RawNode::new(None);
    let chained_node = RawNode::new(Some(&alice()));
    let ours_fresh = minted.to_bytes().unwrap();
    let ours_chained = delegated.to_bytes().unwrap();
    type Run<'a> = Box<dyn Fn() + 'a>;
    let shapes: [(&str, Run<'_>, Run<'_>); 2] = [
        (
            "fresh",
            Box::new(|| {
                black_box(
                    verifier
                        .authorize(&ours_fresh, &alice_key, NOW, &request)
                        .unwrap(),
                );
            }),
            Box::new(|| {
                black_box(fresh_node.authorize(&raw_fresh, &alice_text, &request));
            }),
        ),
        (
            "two_attenuations_delegation",
            Box::new(|| {
                black_box(
                    verifier
                        .authorize(&ours_chained, &bob_key, NOW, &request)
                        .unwrap(),
                );
            }),
            Box::new(|| {
                black_box(chained_node.authorize(&raw_chained, &bob_text, &request));
            }),
        ),
    ];
    println!("\npaired CPU-time comparison (batches of 50, interleaved):");
    for (name, ours, raw) in &shapes {
        let (mut ours_ns, mut raw_ns, mut n) = (0u64, 0u64, 0u64);
        for _ in 0..40 {
            let t = thread_cpu_ns();
            (0..50).for_each(|_| ours());
            let u = thread_cpu_ns();
            (0..50).for_each(|_| raw());
            let v = thread_cpu_ns();
            ours_ns += u - t;
            raw_ns += v - u;
            n += 50;
        }
        let (o, r) = (
            ours_ns as f64 / n as f64 / 1000.0,
            raw_ns as f64 / n as f64 / 1000.0,
        );
        println!(
            "  {name}: ours {o:.1} µs ({:.0}/s), raw reference {r:.1} µs ({:.0}/s), overhead {:+.1}%",
            1e6 / o,
            1e6 / r,
            (o / r - 1.0) * 100.0
        );
    }
}

/// Repeated authorizations through the cache of verified chains, and fresh ones through
/// `verify_chain` + `authorize_chain` without a cache, in CPU time, against their targets.
fn cache_report() {
    let minted = Ticket::mint(&agent(), &spec()).unwrap();
    let delegated = chained(&minted);
    let request = asked();
    let base = TicketVerifier::new([agent().public()].into_iter().collect(), node().public())
        .with_limits(limits());
    let cached = base
        .clone()
        .with_chain_cache(std::sync::Arc::new(ChainCache::default()));
    let per_op_us = |verifier: &TicketVerifier, bytes: &[u8], presenter, n: u64| {
        let t = thread_cpu_ns();
        for _ in 0..n {
            let chain = verifier.verify_chain(black_box(bytes)).unwrap();
            black_box(
                verifier
                    .authorize_chain(&chain, presenter, NOW, &request)
                    .unwrap(),
            );
        }
        (thread_cpu_ns() - t) as f64 / n as f64 / 1000.0
    };
    println!("\nverified-chain cache (CPU time):");
    let shapes = [
        ("fresh", minted.to_bytes().unwrap(), alice().public()),
        (
            "two_attenuations_delegation",
            delegated.to_bytes().unwrap(),
            bob().public(),
        ),
    ];
    for (name, bytes, presenter) in &shapes {
        let hit = per_op_us(&cached, bytes, presenter, 20_000);
        let full = per_op_us(&base, bytes, presenter, 1_000);
        println!(
            "  {name}: repeated (cache hit) {hit:.2} µs, target ≤ 5 µs: {}; without a cache \
             {full:.1} µs ({:.0}/s on one core)",
            if hit <= 5.0 { "PASS" } else { "MISS" },
            1e6 / full
        );
    }
}

criterion_group!(benches, bench_tickets);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    paired_report();
    cache_report();
}
