//! The cache of verified chains: a hit decides exactly as a full verification would (property
//! test over requests, presenters and times), copies of a ticket (attenuated, delegated) are
//! different keys, a withdrawn issuer is refused from the cache, chains whose blocks carry
//! rules or checks are never kept and their checks still run per request, and the bounds
//! hold.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::sync::Arc;

use biscuit_auth::builder::BlockBuilder;
use capability_schema::identity::{SecretKey, test_key};
use capability_schema::resources::Resources;
use capability_schema::slice::SliceKind;
use capability_schema::ticket::{
    Attenuation, ChainCache, Operation, Ticket, TicketRefusal, TicketSpec, TicketUse,
    TicketVerifier, Window,
};
use proptest::prelude::*;

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

fn grant() -> Resources {
    Resources {
        cpu_millis: 2000,
        memory_bytes: 1024 * MIB,
        disk_bytes: 4096 * MIB,
        egress_kbps: 10_000,
        ports: 0,
    }
}

fn spec() -> TicketSpec {
    TicketSpec {
        federation: "plc".into(),
        node: node().public(),
        slice: "princeton_codeen".into(),
        kind: SliceKind::Regular,
        resources: grant(),
        window: Window::new(NOW - 60, NOW + 3600),
        holder: alice().public(),
        operations: Operation::ALL.into_iter().collect(),
        net: Default::default(),
    }
}

fn plain() -> TicketVerifier {
    TicketVerifier::new([agent().public()].into_iter().collect(), node().public())
}

fn cached(cache: &Arc<ChainCache>) -> TicketVerifier {
    plain().with_chain_cache(Arc::clone(cache))
}

fn ask(cpu_millis: u64) -> TicketUse {
    TicketUse {
        operation: Operation::Redeem,
        resources: Resources {
            cpu_millis,
            ..Resources::ZERO
        },
        window: None,
    }
}

/// Through the cache: read the chain, then authorize against it.
fn via_chain(
    verifier: &TicketVerifier,
    bytes: &[u8],
    presenter: &SecretKey,
    now: u64,
    request: &TicketUse,
) -> Result<capability_schema::ticket::VerifiedTicket, TicketRefusal> {
    let chain = verifier.verify_chain(bytes)?;
    verifier.authorize_chain(&chain, &presenter.public(), now, request)
}

/// A minted ticket, the same narrowed, and the narrowed one delegated from alice to bob.
fn family() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let minted = Ticket::mint(&agent(), &spec()).unwrap();
    let narrowed = minted
        .attenuate(&Attenuation {
            resources: Some(Resources {
                cpu_millis: 1000,
                ..grant()
            }),
            window: Some(Window::new(NOW - 10, NOW + 1800)),
            ..Attenuation::default()
        })
        .unwrap();
    let delegated = narrowed.delegate(&alice(), &bob().public()).unwrap();
    (
        minted.to_bytes().unwrap(),
        narrowed.to_bytes().unwrap(),
        delegated.to_bytes().unwrap(),
    )
}

#[test]
fn a_repeated_ticket_is_read_from_the_cache_and_each_copy_is_its_own_key() {
    let cache = Arc::new(ChainCache::default());
    let verifier = cached(&cache);
    let (minted, narrowed, delegated) = family();
    via_chain(&verifier, &minted, &alice(), NOW, &ask(500)).unwrap();
    assert_eq!(cache.len(), 1);
    via_chain(&verifier, &minted, &alice(), NOW, &ask(500)).unwrap();
    assert_eq!(cache.len(), 1, "the same bytes are one entry");
    // The attenuated copy is verified on its own and its narrower grant applies.
    let refused = via_chain(&verifier, &narrowed, &alice(), NOW, &ask(1500)).unwrap_err();
    assert!(
        matches!(refused, TicketRefusal::OverAsked { .. }),
        "{refused:?}"
    );
    assert_eq!(cache.len(), 2);
    // The delegated copy: bob holds it, alice no longer does, also from the cache.
    for _ in 0..2 {
        via_chain(&verifier, &delegated, &bob(), NOW, &ask(500)).unwrap();
        let refused = via_chain(&verifier, &delegated, &alice(), NOW, &ask(500)).unwrap_err();
        assert!(
            matches!(refused, TicketRefusal::WrongPresenter { .. }),
            "{refused:?}"
        );
    }
    assert_eq!(cache.len(), 3);
}

#[test]
fn a_cached_chain_of_an_issuer_no_longer_trusted_is_refused() {
    let cache = Arc::new(ChainCache::default());
    let mut verifier = cached(&cache);
    let (minted, _, _) = family();
    via_chain(&verifier, &minted, &alice(), NOW, &ask(500)).unwrap();
    let chain = verifier.verify_chain(&minted).unwrap();
    verifier.issuers_mut().remove(&agent().public());
    let refused = verifier.verify_chain(&minted).unwrap_err();
    assert!(
        matches!(refused, TicketRefusal::UnknownIssuer { .. }),
        "{refused:?}"
    );
    // A chain read before the withdrawal is refused too.
    let refused = verifier
        .authorize_chain(&chain, &alice().public(), NOW, &ask(500))
        .unwrap_err();
    assert!(
        matches!(refused, TicketRefusal::UnknownIssuer { .. }),
        "{refused:?}"
    );
}

#[test]
fn block_checks_are_never_cached_and_still_run_per_request() {
    let cache = Arc::new(ChainCache::default());
    let verifier = cached(&cache);
    let minted = Ticket::mint(&agent(), &spec()).unwrap();
    // A holder's own check, the usual biscuit way: only up to 700 millicores per request.
    let block = BlockBuilder::new()
        .code("check if request_resources($c, $m, $d, $e), $c <= 700;")
        .unwrap();
    let bytes = minted.as_biscuit().append(block).unwrap().to_vec().unwrap();
    let chain = verifier.verify_chain(&bytes).unwrap();
    assert!(chain.has_block_logic());
    for _ in 0..2 {
        via_chain(&verifier, &bytes, &alice(), NOW, &ask(600)).unwrap();
        let refused = via_chain(&verifier, &bytes, &alice(), NOW, &ask(800)).unwrap_err();
        assert!(
            matches!(refused, TicketRefusal::BlockCheckFailed { .. }),
            "{refused:?}"
        );
    }
    assert!(cache.is_empty(), "a chain with block logic is never kept");
}

#[test]
fn the_cache_stays_within_its_bounds_forgetting_the_oldest() {
    let (minted, narrowed, delegated) = family();
    let cache = Arc::new(ChainCache::new(2, 1 << 20));
    let verifier = cached(&cache);
    for bytes in [&minted, &narrowed, &delegated] {
        verifier.verify_chain(bytes).unwrap();
    }
    assert_eq!(cache.len(), 2);
    assert!(cache.get(&minted).is_none(), "the oldest is forgotten");
    assert!(cache.get(&delegated).is_some());
    // A byte bound below two tickets keeps one.
    let small = Arc::new(ChainCache::new(100, narrowed.len().max(minted.len()) + 1));
    let verifier = cached(&small);
    verifier.verify_chain(&minted).unwrap();
    verifier.verify_chain(&narrowed).unwrap();
    assert_eq!(small.len(), 1);
    assert!(small.get(&narrowed).is_some());
    small.clear();
    assert!(small.is_empty());
}

#[test]
fn corrupted_bytes_of_a_cached_ticket_are_verified_in_full_and_refused() {
    let cache = Arc::new(ChainCache::default());
    let verifier = cached(&cache);
    let (minted, _, _) = family();
    verifier.verify_chain(&minted).unwrap();
    let mut corrupted = minted.clone();
    let last = corrupted.len() - 1;
    corrupted[last / 2] ^= 0x40;
    assert!(verifier.verify_chain(&corrupted).is_err());
    assert_eq!(cache.len(), 1);
}

/// Alice (first holder), bob (holder after the delegation) or carol (never a holder).
fn presenters() -> impl Strategy<Value = u8> {
    prop_oneof![Just(3u8), Just(4u8), Just(5u8)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the request, presenter and time, a cached decision (first call filling the
    /// cache, second reading it) equals the full verification's.
    #[test]
    fn a_cached_decision_equals_a_full_one(
        which in 0usize..3,
        presenter in presenters(),
        cpu in 0u64..2500,
        offset in -120i64..4000,
        renew in any::<bool>(),
    ) {
        let (minted, narrowed, delegated) = family();
        let bytes = [&minted, &narrowed, &delegated][which];
        let presenter = test_key(presenter);
        let now = NOW.checked_add_signed(offset).unwrap();
        let request = TicketUse {
            operation: if renew { Operation::Renew } else { Operation::Redeem },
            ..ask(cpu)
        };
        let full = plain().authorize(bytes, &presenter.public(), now, &request);
        let cache = Arc::new(ChainCache::default());
        let verifier = cached(&cache);
        let first = via_chain(&verifier, bytes, &presenter, now, &request);
        let second = via_chain(&verifier, bytes, &presenter, now, &request);
        prop_assert_eq!(&first, &full);
        prop_assert_eq!(&second, &full);
        prop_assert_eq!(cache.len(), 1);
    }
}
