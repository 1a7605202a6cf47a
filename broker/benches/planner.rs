//! Planner speed: 10,000 offers, a 500-sliver request with site spread. Target: ≤ 50 ms.

use std::hint::black_box;

use broker::planner::{Candidate, plan};
use capability_schema::ad::PriceList;
use capability_schema::identity::SecretKey;
use capability_schema::slice::{SliceConstraints, SliceKind, SliceRequest, SliverTarget};
use capability_schema::{AcquireMode, Resources};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let agent = SecretKey::generate().public();
    let candidates: Vec<Candidate> = (0..10_000u64)
        .map(|i| Candidate {
            node: SecretKey::generate().public(),
            federation: format!("fed{}", i % 3),
            site: format!("site{}", i % 700),
            agent,
            free: Resources {
                cpu_millis: 500 + (i * 37) % 4000,
                memory_bytes: (128 + (i * 53) % 4096) << 20,
                disk_bytes: 10 << 30,
                egress_kbps: 100_000,
            },
            prices: PriceList {
                cpu_core_hour: 10 + i % 90,
                ..Default::default()
            },
            load_milli: (i * 13) % 4000,
        })
        .collect();
    let request = SliceRequest {
        name: "bench_slice".into(),
        principal: SecretKey::generate().public(),
        principal_federation: "fed0".into(),
        kind: SliceKind::Regular,
        per_sliver: Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            disk_bytes: 1 << 30,
            egress_kbps: 10_000,
        },
        target: SliverTarget::Count(500),
        constraints: SliceConstraints {
            federations: vec!["fed0".into(), "fed1".into()],
            min_sites: 300,
            exclude_nodes: vec![],
            max_price: Some(1_000_000),
        },
        duration_secs: 3600,
        mode: AcquireMode::BestEffort,
    };
    let p = plan(&request, &candidates);
    assert!(p.satisfiable, "{}", p.explanation);
    c.bench_function("plan 500 slivers over 10k offers", |b| {
        b.iter(|| plan(black_box(&request), black_box(&candidates)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
