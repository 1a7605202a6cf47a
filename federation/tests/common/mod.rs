//! Shared helpers of the overlay tests: in-process peers on the memory transport, with a
//! timeout on every wait.

#![allow(dead_code, unreachable_pub)]

pub mod cli;

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use capability_schema::SecretKey;
use federation::overlay::{AdEvent, Multiaddr};
use federation::testing::TestFederation;
use federation::{Overlay, OverlayConfig, OverlayHandle, SharedTrust, TrustStore};
use tokio::sync::broadcast;

/// Every wait in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(10);

/// Three federations with fixed authority keys.
pub fn three_federations() -> [TestFederation; 3] {
    [
        TestFederation::new("f1", 201),
        TestFederation::new("f2", 202),
        TestFederation::new("f3", 203),
    ]
}

/// A trust store anchoring `federations`.
pub fn trust(federations: &[&TestFederation]) -> SharedTrust {
    let mut store = TrustStore::new();
    for federation in federations {
        federation.trust(&mut store);
    }
    Arc::new(RwLock::new(store))
}

/// Test config: memory transport, fast heartbeat, no Kademlia (the topology is the one the
/// test wires).
pub fn config(federations: &[&str]) -> OverlayConfig {
    OverlayConfig {
        federations: federations.iter().map(|f| (*f).to_owned()).collect(),
        gossip_heartbeat: Duration::from_millis(100),
        kademlia: false,
        target_peers: 0,
        ..OverlayConfig::memory()
    }
}

/// Like [`config`], with Kademlia on.
pub fn config_with_kademlia(federations: &[&str]) -> OverlayConfig {
    OverlayConfig {
        kademlia: true,
        ..config(federations)
    }
}

/// A peer with a fresh key and Kademlia on.
pub async fn peer_with_kademlia(federations: &[&str], trust: SharedTrust) -> OverlayHandle {
    Overlay::start(
        &SecretKey::generate(),
        config_with_kademlia(federations),
        trust,
    )
    .await
    .expect("overlay starts")
}

/// A peer with a fresh key.
pub async fn peer(federations: &[&str], trust: SharedTrust) -> OverlayHandle {
    Overlay::start(&SecretKey::generate(), config(federations), trust)
        .await
        .expect("overlay starts")
}

/// The first listen address of `handle`.
pub async fn addr(handle: &OverlayHandle) -> Multiaddr {
    handle.listen_addrs().await.unwrap()[0].clone()
}

/// Connects `a` to `b`.
pub async fn connect(a: &OverlayHandle, b: &OverlayHandle) {
    let peer = within(a.dial(addr(b).await)).await.expect("dial");
    assert_eq!(peer, b.local_key());
}

/// `future`, or a panic after [`WAIT`].
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("timed out waiting")
}

/// Polls `check` until it holds, panicking with `what` after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `handle` has at least `n` mesh peers for `federation`.
pub async fn mesh(handle: &OverlayHandle, federation: &str, n: usize) {
    eventually(&format!("a mesh of {n} for {federation}"), || async {
        handle.mesh_peers(federation).await.unwrap().len() >= n
    })
    .await;
}

/// The next ad on `rx`.
pub async fn next_ad(rx: &mut broadcast::Receiver<AdEvent>) -> AdEvent {
    within(rx.recv()).await.expect("ad stream open")
}

/// Everything already waiting on `rx`.
pub fn drain(rx: &mut broadcast::Receiver<AdEvent>) -> Vec<AdEvent> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        out.push(event);
    }
    out
}
