//! A broker that cannot be reached, never answers, or is not a broker: the `slicectl` binary
//! names the address, says what happened and what to do, within the call timeout (issue 17,
//! defect 4). Loopback only; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use capability_schema::SecretKey;
use federation::{Overlay, OverlayConfig};
use slicectl::exit::ExitClass;

/// Runs `slicectl slice plan` against `broker` with a `timeout_secs` call timeout.
fn plan_via(broker: &str, timeout_secs: u64) -> (i32, String, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("principal.key");
    let key = key.to_str().unwrap();
    let state = dir.path().join("state");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_slicectl"))
            .args(args)
            .env_remove("PLANETMESH_STATE")
            .env_remove("PLANETMESH_CONFIG")
            .output()
            .unwrap()
    };
    assert!(run(&["keygen", "--out", key]).status.success());
    let timeout = timeout_secs.to_string();
    let started = Instant::now();
    let out = run(&[
        "--key",
        key,
        "--state-dir",
        state.to_str().unwrap(),
        "--broker",
        broker,
        "--timeout",
        &timeout,
        "slice",
        "plan",
        "--name",
        "plc-site0_x",
        "--slivers",
        "1",
    ]);
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text, took)
}

/// A `/p2p/` suffix for a key nobody runs.
fn some_peer() -> String {
    federation::overlay::peer_id(&SecretKey::generate().public()).to_string()
}

#[test]
fn an_explicit_broker_address_that_refuses_names_it_and_says_what_to_do() {
    // A loopback port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", some_peer());
    let (code, text, took) = plan_via(&addr, 20);
    assert_eq!(code, ExitClass::Unreachable.code(), "{text}");
    assert!(text.contains(&addr), "names the address: {text}");
    assert!(text.contains("could not be reached"), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(
        text.contains("slicectl.toml") && text.contains("--broker"),
        "{text}"
    );
    assert!(!text.contains("Kademlia"), "{text}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {text}");
}

#[test]
fn a_broker_that_accepts_and_never_answers_ends_within_the_timeout() {
    // Accepts connections (the kernel's backlog does) and never speaks: a frozen broker.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        // Hold the accepted socket, silent, until the client gives up and closes it.
        if let Ok((mut socket, _)) = listener.accept() {
            socket
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut socket, &mut sink);
        }
    });
    let addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", some_peer());
    let (code, text, took) = plan_via(&addr, 2);
    assert_eq!(code, ExitClass::Unreachable.code(), "{text}");
    assert!(text.contains(&addr), "names the address: {text}");
    assert!(text.contains("2s timeout"), "names the timeout: {text}");
    assert!(!text.contains("Kademlia"), "{text}");
    // The 2 s timeout, plus starting the process; not the handshake's 20 s nor 3 × 2 s.
    assert!(took < Duration::from_secs(5), "took {took:?}: {text}");
    // The holder ends when the client's socket closes; not waited for (bounded waits only).
    drop(holder);
}

#[test]
fn a_broker_address_of_a_peer_that_is_not_a_broker_says_so() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A PlanetMesh peer (as a node is) that serves no broker protocol.
    let key = SecretKey::generate();
    let peer = runtime.block_on(async {
        Overlay::start(&key, OverlayConfig::loopback(), Default::default())
            .await
            .unwrap()
    });
    let listen = runtime.block_on(async {
        for _ in 0..100 {
            let addrs = peer.listen_addrs().await.unwrap();
            if let Some(a) = addrs.into_iter().next() {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the peer does not listen");
    });
    let addr = federation::overlay::addr_for_peer(listen, &key.public()).to_string();
    let (code, text, _) = plan_via(&addr, 10);
    assert!(text.contains("is not a broker"), "{text}");
    assert!(
        text.contains("does not serve the broker protocol"),
        "{text}"
    );
    assert!(!text.contains("retry later"), "{text}");
    assert_eq!(code, ExitClass::Setup.code(), "{text}");
    runtime.block_on(peer.shutdown());
}
