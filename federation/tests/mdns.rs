//! mDNS discovery: two overlays with `mdns` on and no bootstrap find each other and gossip.
//!
//! libp2p's mDNS ignores loopback interfaces, so each overlay runs in a network namespace of
//! its own (root), the two joined by a veth pair: the multicast stays on that pair and never
//! reaches the machine's LAN. Each overlay runs on a single-threaded runtime in a thread that
//! entered its namespace, so every socket it opens is there. Namespaces (and with them the
//! veth pair) are deleted by a drop guard.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::fs::File;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use capability_schema::SecretKey;
use common::*;
use federation::{Overlay, OverlayConfig, OverlayHandle, SharedTrust, unix_now};
use nix::sched::{CloneFlags, setns};
use tokio::sync::oneshot;

/// Whether root tests run: as root always; not as root they are skipped, unless CI is set,
/// where they fail.
fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "root tests must run as root under CI"
    );
    eprintln!("skipping: network namespaces need root");
    false
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running `ip` (install iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Two namespaces joined by a veth pair, `10.251.<n>.1/24` and `.2/24`; deleted on drop.
struct NetnsPair {
    names: [String; 2],
}

impl NetnsPair {
    fn new() -> NetnsPair {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id());
        let names = [format!("pmfa-mdns-{tag}-a"), format!("pmfa-mdns-{tag}-b")];
        let pair = NetnsPair {
            names: names.clone(),
        };
        let subnet = std::process::id() % 250;
        for ns in &names {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        // Interface names are per namespace, so fixed ones cannot clash.
        ip(&[
            "-n", &names[0], "link", "add", "mdns0", "type", "veth", "peer", "name", "mdns1",
            "netns", &names[1],
        ]);
        for (i, ns) in names.iter().enumerate() {
            let dev = format!("mdns{i}");
            let addr = format!("10.251.{subnet}.{}/24", i + 1);
            ip(&["-n", ns, "addr", "add", &addr, "dev", &dev]);
            ip(&["-n", ns, "link", "set", &dev, "up"]);
        }
        pair
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in &self.names {
            if std::path::Path::new(&format!("/run/netns/{ns}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}

/// An overlay running in a namespace; stopped (and its thread joined) on drop.
struct NsOverlay {
    handle: OverlayHandle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsOverlay {
    async fn start(netns: &str, config: OverlayConfig, trust: SharedTrust) -> NsOverlay {
        let path = format!("/run/netns/{netns}");
        let (handle_tx, handle_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let ns = File::open(&path).expect("namespace file");
            setns(ns, CloneFlags::CLONE_NEWNET).expect("entering the namespace");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let handle = Overlay::start(&SecretKey::generate(), config, trust)
                    .await
                    .expect("overlay starts in the namespace");
                let _ = handle_tx.send(handle.clone());
                let _ = stop_rx.await;
                handle.shutdown().await;
            });
        });
        let handle = within(handle_rx).await.expect("overlay thread started");
        NsOverlay {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for NsOverlay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlays_find_each_other_with_mdns_alone() {
    if !root_or_skip() {
        return;
    }
    let [mut f1, _, _] = three_federations();
    let trust = trust(&[&f1]);
    let netns = NetnsPair::new();
    let config = OverlayConfig {
        listen: OverlayConfig::default().listen,
        mdns: true,
        ..config(&["f1"])
    };
    assert!(config.bootstrap.is_empty());
    let a = NsOverlay::start(&netns.names[0], config.clone(), trust.clone()).await;
    let b = NsOverlay::start(&netns.names[1], config, trust.clone()).await;
    let (a_key, b_key) = (a.handle.local_key(), b.handle.local_key());

    // mDNS probes at once on start (then backs off); the answer dials the peer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let at_a = a.handle.connected_peers().await.unwrap();
        let at_b = b.handle.connected_peers().await.unwrap();
        if at_a.contains(&b_key) && at_b.contains(&a_key) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no mDNS discovery in 30 s: a sees {at_a:?}, b sees {at_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And gossip between them works as with any other peer.
    mesh(&a.handle, "f1", 1).await;
    mesh(&b.handle, "f1", 1).await;
    let mut ads = b.handle.ads();
    let node = f1.node(21, "s21");
    a.handle
        .publish_ad(node.ad(1, unix_now(), 300))
        .await
        .unwrap();
    let event = next_ad(&mut ads).await;
    assert_eq!(event.ad.node, node.key.public());
    assert_eq!(event.relayed_by, a_key);

    drop(a);
    drop(b);
    drop(netns);
}
