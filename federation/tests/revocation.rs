//! Revocation lists in the overlay: gossiped and applied at once, fetched on join, older
//! lists ignored, forged ones rejected at the relaying peer's expense, and `fedctl revoke
//! --publish` / `fedctl publish` handing a list to a running daemon.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::sync::{Arc, RwLock};
use std::time::Instant;

use capability_schema::membership::RevocationVerdict;
use capability_schema::{Role, SecretKey};
use common::*;
use federation::testing::TestFederation;
use federation::{Overlay, OverlayConfig, OverlayHandle, TrustError, TrustStore, unix_now};

/// The version of `federation`'s list `handle`'s store holds (0: none).
fn held(handle: &OverlayHandle, federation: &str) -> u64 {
    let store = handle.trust().read().unwrap();
    store.revocation_list(federation).map_or(0, |l| l.version)
}

async fn holds(handle: &OverlayHandle, federation: &str, version: u64) {
    eventually(&format!("{federation} list v{version}"), || async {
        held(handle, federation) == version
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_list_is_gossiped_applied_and_announced_and_an_older_one_ignored() {
    let [mut f1, _, _] = three_federations();
    // Each peer has its own store, as daemons do.
    let hub = peer(&["f1"], trust(&[&f1])).await;
    let a = peer(&["f1"], trust(&[&f1])).await;
    let b = peer(&["f1"], trust(&[&f1])).await;
    connect(&a, &hub).await;
    connect(&b, &hub).await;
    mesh(&hub, "f1", 2).await;
    mesh(&a, "f1", 1).await;
    mesh(&b, "f1", 1).await;
    let principal = SecretKey::generate();
    let cert = f1.certify(&principal, Role::Principal);
    let mut news = b.revocations();
    let before = *news.borrow_and_update();

    let v1 = f1.authority.revoke(&[], &[principal.public()], unix_now());
    let started = Instant::now();
    let verdict = within(a.publish_revocation(v1.clone())).await.unwrap();
    assert_eq!(
        verdict,
        RevocationVerdict::Applied {
            federation: "f1".into(),
            version: 1
        }
    );
    within(news.changed()).await.unwrap();
    let reached = started.elapsed();
    println!("revocation list v1 applied two hops away after {reached:?}");
    assert!(*news.borrow() > before);
    assert_eq!(held(&b, "f1"), 1);
    assert_eq!(held(&hub, "f1"), 1);
    // The store refuses the principal, naming the list.
    let refusal = b
        .trust()
        .read()
        .unwrap()
        .check_member(&cert, Role::Principal, unix_now())
        .unwrap_err();
    assert!(
        matches!(refusal, TrustError::KeyRevoked { version: 1, .. }),
        "{refusal}"
    );
    assert!(
        refusal.to_string().contains("revocation list v1"),
        "{refusal}"
    );

    // A newer list replaces it everywhere; the older one, published again, is ignored.
    let v2 = f1.authority.revoke(&[42], &[], unix_now());
    within(b.publish_revocation(v2)).await.unwrap();
    holds(&a, "f1", 2).await;
    let verdict = within(a.publish_revocation(v1)).await.unwrap();
    assert_eq!(
        verdict,
        RevocationVerdict::Stale {
            federation: "f1".into(),
            version: 1,
            have: 2
        }
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for handle in [&hub, &a, &b] {
        assert_eq!(held(handle, "f1"), 2);
        assert_eq!(handle.stats().await.unwrap().revocations_rejected, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_connects_fetches_the_newer_list_both_ways() {
    let [mut f1, mut f2, _] = three_federations();
    let v1 = f1.authority.revoke(&[3], &[], unix_now());
    let v2 = f1.authority.revoke(&[4], &[], unix_now());
    let other = f2.authority.revoke(&[9], &[], unix_now());
    // `old` starts with v1 from its config, `new` with v2 (and a list of f2, which `old`
    // does not trust: it is offered and ignored without blame).
    let start = |lists, trust| async move {
        Overlay::start(
            &SecretKey::generate(),
            OverlayConfig {
                revocations: lists,
                ..config(&["f1"])
            },
            trust,
        )
        .await
        .unwrap()
    };
    let old = start(vec![v1], trust(&[&f1])).await;
    let new = start(vec![v2, other], trust(&[&f1, &f2])).await;
    assert_eq!(
        held(&old, "f1"),
        1,
        "config lists apply before start returns"
    );
    assert_eq!(held(&new, "f1"), 2);
    let mut news = old.revocations();
    news.borrow_and_update();
    connect(&old, &new).await;
    within(news.changed()).await.unwrap();
    assert_eq!(held(&old, "f1"), 2);
    assert_eq!(
        held(&old, "f2"),
        0,
        "a list of a federation not trusted is not held"
    );
    let stats = old.stats().await.unwrap();
    assert_eq!(stats.revocations_rejected, 0);
    assert!(stats.revocations_ignored >= 1, "{stats:?}");

    // A third peer that holds v3 teaches both, whoever dials.
    let v3 = f1.authority.revoke(&[5], &[], unix_now());
    let newest = start(vec![v3], trust(&[&f1])).await;
    connect(&old, &newest).await;
    holds(&old, "f1", 3).await;
    holds(&new, "f1", 3).await;

    // A config list that does not verify stops the start with a reason.
    let mut forged = f1.authority.revoke(&[6], &[], unix_now());
    forged.signature[0] ^= 1;
    let refused = Overlay::start(
        &SecretKey::generate(),
        OverlayConfig {
            revocations: vec![forged],
            ..config(&["f1"])
        },
        trust(&[&f1]),
    )
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("revocation list"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_lists_are_dropped_never_relayed_and_cost_the_relaying_peer() {
    let [mut f1, _, _] = three_federations();
    let relay = peer(&["f1"], trust(&[&f1])).await;
    let observer = peer(&["f1"], trust(&[&f1])).await;
    let rogue = peer(&["f1"], trust(&[&f1])).await;
    connect(&observer, &relay).await;
    connect(&rogue, &relay).await;
    mesh(&relay, "f1", 2).await;
    mesh(&rogue, "f1", 1).await;
    mesh(&observer, "f1", 1).await;

    let genuine = f1.authority.revoke(&[7], &[], unix_now());
    // Three different forgeries: a bad signature, another authority's list, garbage.
    let mut bad_signature = genuine.clone();
    bad_signature.signature[3] ^= 1;
    let mut impostor = TestFederation::new("f1", 250);
    let other_authority = impostor.authority.revoke(&[1], &[], unix_now());
    for bytes in [
        bad_signature.to_bytes(),
        other_authority.to_bytes(),
        b"not a list".to_vec(),
    ] {
        within(rogue.publish_raw_revocation("f1", bytes))
            .await
            .unwrap();
    }
    eventually("the relay rejects three lists", || async {
        relay.stats().await.unwrap().revocations_rejected == 3
    })
    .await;
    eventually("the relay blocks the rogue", || async {
        relay.stats().await.unwrap().peers_blocked == 1
    })
    .await;
    assert_eq!(held(&relay, "f1"), 0);
    assert_eq!(held(&observer, "f1"), 0, "nothing forged was relayed");
    assert_eq!(observer.stats().await.unwrap().revocations_rejected, 0);
    // The genuine list still gets through from an honest peer.
    within(relay.publish_revocation(genuine)).await.unwrap();
    holds(&observer, "f1", 1).await;
}

#[test]
fn fedctl_revoke_publishes_through_a_running_peer() {
    let dir = tempfile::tempdir().unwrap();
    let fedctl = env!("CARGO_BIN_EXE_fedctl");
    let init = cli::run(
        fedctl,
        &["init-authority", "--name", "f1", "--out", "plc"],
        dir.path(),
    );
    assert_eq!(init.code, Some(0), "{}", init.stderr);
    let authority = federation::trust::Authority::load(&dir.path().join("plc")).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut store = TrustStore::new();
    store.add_federation("f1", authority.public()).unwrap();
    let trust = Arc::new(RwLock::new(store));
    let daemon = runtime.block_on(async {
        Overlay::start(
            &SecretKey::generate(),
            OverlayConfig {
                federations: vec!["f1".into()],
                kademlia: false,
                ..OverlayConfig::loopback()
            },
            trust,
        )
        .await
        .unwrap()
    });
    let address = runtime
        .block_on(daemon.listen_addrs())
        .unwrap()
        .into_iter()
        .find(|a| a.to_string().contains("/tcp/"))
        .unwrap()
        .to_string();
    let victim = SecretKey::generate().public().to_string();
    let agent = SecretKey::generate().public().to_string();
    let delegation = format!("{victim}:{agent}");
    let revoked = cli::run(
        fedctl,
        &[
            "revoke",
            "--authority",
            "plc",
            "--key",
            &victim,
            "--delegation",
            &delegation,
            "--ticket",
            &"ab".repeat(64),
            "--out",
            "rev1.cbor",
            "--publish",
            &address,
        ],
        dir.path(),
    );
    assert_eq!(revoked.code, Some(0), "{}", revoked.stderr);
    assert!(
        revoked.stdout.contains("applied: \"f1\" now holds list v1"),
        "{}",
        revoked.stdout
    );
    assert!(revoked.stdout.contains("next: "), "{}", revoked.stdout);
    assert_eq!(held(&daemon, "f1"), 1);
    {
        let store = daemon.trust().read().unwrap();
        let list = store.revocation_list("f1").unwrap();
        assert_eq!(list.delegations.len(), 1);
        assert_eq!(list.tickets.len(), 1);
    }
    // What was revoked shows in the list and in the authority's state.
    let shown = cli::run(fedctl, &["show", "rev1.cbor"], dir.path());
    assert!(
        shown.stdout.contains("delegations: 1")
            && shown
                .stdout
                .contains(&format!("node {victim} to agent {agent}"))
            && shown.stdout.contains(&format!("  - {}", "ab".repeat(64))),
        "{}",
        shown.stdout
    );
    let state = cli::run(fedctl, &["show", "plc"], dir.path());
    assert!(
        state.stdout.contains("revoked delegations: 1")
            && state.stdout.contains("revoked tickets: 1"),
        "{}",
        state.stdout
    );
    // The same list again: held; an older one after a newer: refused as stale (exit 2).
    let again = cli::run(
        fedctl,
        &["publish", "rev1.cbor", "--peer", &address],
        dir.path(),
    );
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert!(again.stdout.contains("already held"), "{}", again.stdout);
    let newer = cli::run(
        fedctl,
        &[
            "revoke",
            "--authority",
            "plc",
            "--serial",
            "9",
            "--out",
            "rev2.cbor",
        ],
        dir.path(),
    );
    assert_eq!(newer.code, Some(0), "{}", newer.stderr);
    assert!(
        newer.stdout.contains("next: fedctl publish rev2.cbor"),
        "{}",
        newer.stdout
    );
    let published = cli::run(
        fedctl,
        &["publish", "rev2.cbor", "--peer", &address],
        dir.path(),
    );
    assert_eq!(published.code, Some(0), "{}", published.stderr);
    let stale = cli::run(
        fedctl,
        &["publish", "rev1.cbor", "--peer", &address],
        dir.path(),
    );
    assert_eq!(stale.code, Some(2), "{}", stale.stdout);
    assert!(stale.stderr.contains("newer list (v2)"), "{}", stale.stderr);
    assert_eq!(held(&daemon, "f1"), 2);
    runtime.block_on(daemon.shutdown());
}
