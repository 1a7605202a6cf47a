//! The node manager with real slivers (root; skipped otherwise unless CI): a sliver's CPU and
//! memory use reach the node's signed ad, and `/slivers` and `/metrics`; the disk watchdog
//! freezes a sliver written past its grant and says so on `/slivers`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::time::Duration;

use capability_schema::Resources;
use capability_schema::identity::test_key;
use capability_schema::protocol::{NodeRequest, NodeResponse};
use common::daemon::{LinuxNode, WAIT, within};
use common::root_or_skip;
use federation::overlay::NodeProtocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliver_use_reaches_the_ad_and_http_and_the_watchdog_freezes_a_disk_hog() {
    if !root_or_skip() {
        return;
    }
    let node = LinuxNode::start_with("pmdu", "disk_check_secs = 1\n").await;
    let node_key = node.key.public();
    let alice = test_key(50);
    let client = node.principal(&alice).await;
    let mut ads = client.ads();
    let ticket = node.ticket_with(
        "princeton_usage",
        &alice,
        Resources {
            cpu_millis: 500,
            memory_bytes: 128 << 20,
            disk_bytes: 2 << 20,
            egress_kbps: 1000,
            ports: 0,
        },
    );
    let lease = node.redeem_ticket(&client, ticket).await;
    let exec = |script: &str| NodeRequest::Exec {
        lease_id: lease.lease_id.clone(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        stdin: vec![],
        timeout_ms: 10_000,
    };
    // A bounded CPU burn (0.6 s of spinning).
    let burn =
        exec("end=$(( $(date +%s%N) + 600000000 )); while [ $(date +%s%N) -lt $end ]; do :; done");
    match within(client.request::<NodeProtocol>(&node_key, burn, WAIT))
        .await
        .unwrap()
    {
        NodeResponse::Exec(out) => assert_eq!(out.exit_code, 0, "{out:?}"),
        other => panic!("{other:?}"),
    }

    // The node's next ads carry the sliver's use.
    let usage = within(async {
        loop {
            let event = ads.recv().await.unwrap();
            if event.ad.node != node_key {
                continue;
            }
            if let Some(u) = event
                .ad
                .measured
                .slivers
                .iter()
                .find(|s| s.slice == "princeton_usage" && s.cpu_time_ms >= 150)
            {
                break u.clone();
            }
        }
    })
    .await;
    eprintln!("in the ad: {usage:?}");
    assert!(usage.memory_bytes > 0, "{usage:?}");

    let http = node.running.http.unwrap();
    let slivers = http_get(http, "/slivers").await;
    assert!(
        slivers.contains("\"slice\":\"princeton_usage\"") && slivers.contains("\"cpu_time_ms\":"),
        "{slivers}"
    );
    let metrics = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("planetmesh_sliver_cpu_seconds_total{sliver=\"princeton_usage\"}"),
        "{metrics}"
    );

    // Written past its 2 MiB grant: the watchdog freezes it within a check or two.
    match within(client.request::<NodeProtocol>(
        &node_key,
        exec("head -c 3000000 /dev/zero > /root/blob"),
        WAIT,
    ))
    .await
    .unwrap()
    {
        NodeResponse::Exec(out) => assert_eq!(out.exit_code, 0, "{out:?}"),
        other => panic!("{other:?}"),
    }
    let frozen = within(async {
        loop {
            let slivers = http_get(http, "/slivers").await;
            if slivers.contains("\"frozen\":true") {
                break slivers;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    eprintln!("/slivers: {frozen}");
    assert!(
        frozen.contains("over disk limit: 2.9 MiB of 2.0 MiB"),
        "{frozen}"
    );
    let metrics = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("planetmesh_sliver_frozen{sliver=\"princeton_usage\"} 1"),
        "{metrics}"
    );
    // Cleaning up through exec thaws it at the next check.
    match within(client.request::<NodeProtocol>(&node_key, exec("rm /root/blob"), WAIT))
        .await
        .unwrap()
    {
        NodeResponse::Exec(out) => assert_eq!(out.exit_code, 0, "{out:?}"),
        other => panic!("{other:?}"),
    }
    within(async {
        loop {
            let slivers = http_get(http, "/slivers").await;
            if slivers.contains("\"frozen\":false") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    client.shutdown().await;
    node.stop().await;
}
