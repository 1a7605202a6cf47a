//! Signed ad and lease throughput: sign + encode on the sending side, decode + verify on the
//! receiving side. Target: at least 20,000 round trips per second on this machine. Reported
//! on one core, and on every core at once (`lease round trip, N threads`: N threads each run
//! round trips; the time is per round trip of the whole machine), since a node signs and
//! verifies on all of its cores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::hint::black_box;

use capability_schema::ad::{MeasuredUse, ShareState};
use capability_schema::identity::test_key;
use capability_schema::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn res() -> Resources {
    Resources {
        cpu_millis: 500,
        memory_bytes: 256 << 20,
        disk_bytes: 1 << 30,
        egress_kbps: 10_000,
        ports: 0,
    }
}

fn sample_ad() -> ResourceAd {
    let membership = Signed::sign(
        &test_key(100),
        &MembershipCert {
            federation: "plc".into(),
            authority: test_key(100).public(),
            subject: test_key(1).public(),
            role: Role::Node,
            site: "princeton".into(),
            name: "node1".into(),
            serial: 1,
            issued_at: 0,
            expires_at: u64::MAX,
        },
    );
    let delegation = Signed::sign(
        &test_key(1),
        &Delegation {
            node: test_key(1).public(),
            agent: test_key(20).public(),
            share: res(),
            scope: Default::default(),
            issued_at: 0,
            since: 0,
            not_after: 1,
        },
    );
    ResourceAd {
        node: test_key(1).public(),
        federation: "plc".into(),
        site: "princeton".into(),
        name: "node1".into(),
        addresses: vec!["/ip4/10.0.0.1/tcp/4001".into()],
        capacity: res(),
        committed: res(),
        shares: vec![ShareState {
            agent: test_key(20).public(),
            share: res(),
            committed: res(),
            free: res(),
        }],
        delegations: vec![delegation],
        measured: MeasuredUse::default(),
        membership,
        seq: 1,
        issued_at: 0,
        ttl_secs: 60,
    }
}

fn sample_lease() -> Lease {
    Lease {
        lease_id: "00112233445566778899aabbccddeeff".into(),
        ticket_id: "abcdef0123456789".into(),
        node: test_key(1).public(),
        federation: "plc".into(),
        agent: test_key(20).public(),
        slice: "princeton_codeen".into(),
        kind: SliceKind::Regular,
        holder: test_key(50).public(),
        resources: res(),
        address: Some("10.77.0.2".into()),
        public: None,
        start: 0,
        end: 3600,
        net: Default::default(),
    }
}

fn bench(c: &mut Criterion) {
    let key = test_key(1);
    let ad = sample_ad();
    let lease = sample_lease();
    let ad_bytes = Signed::sign(&key, &ad).to_bytes();
    let lease_bytes = Signed::sign(&key, &lease).to_bytes();

    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(1));
    group.bench_function("ad sign+encode", |b| {
        b.iter(|| Signed::sign(&key, black_box(&ad)).to_bytes())
    });
    group.bench_function("ad decode+verify", |b| {
        b.iter(|| {
            Signed::<ResourceAd>::from_bytes(black_box(&ad_bytes))
                .unwrap()
                .verify()
                .unwrap()
        })
    });
    group.bench_function("lease sign+encode", |b| {
        b.iter(|| Signed::sign(&key, black_box(&lease)).to_bytes())
    });
    group.bench_function("lease decode+verify", |b| {
        b.iter(|| {
            Signed::<Lease>::from_bytes(black_box(&lease_bytes))
                .unwrap()
                .verify()
                .unwrap()
        })
    });
    group.bench_function("lease round trip", |b| {
        b.iter(|| {
            let bytes = Signed::sign(&key, black_box(&lease)).to_bytes();
            Signed::<Lease>::from_bytes(&bytes)
                .unwrap()
                .verify()
                .unwrap()
        })
    });
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    group.bench_function(format!("lease round trip, {threads} threads"), |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(threads as u64);
            let started = std::time::Instant::now();
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| {
                        for _ in 0..per_thread {
                            let bytes = Signed::sign(&key, black_box(&lease)).to_bytes();
                            black_box(
                                Signed::<Lease>::from_bytes(&bytes)
                                    .unwrap()
                                    .verify()
                                    .unwrap(),
                            );
                        }
                    });
                }
            });
            // Time per round trip of the machine: the work done was `per_thread × threads`.
            started
                .elapsed()
                .mul_f64(iters as f64 / (per_thread * threads as u64) as f64)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
