//! The node manager as a running daemon (in-process, loopback TCP, no isolation): its ad
//! reaches a peer, a ticket is redeemed over libp2p into a signed lease, bad requests are
//! refused while it keeps serving, the HTTP endpoint answers, and shutdown is graceful.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use capability_schema::identity::{SecretKey, test_key};
use capability_schema::protocol::{NodeRequest, NodeResponse, TicketBytes};
use capability_schema::ticket::{Operation, Ticket, TicketSpec, Window};
use capability_schema::{Resources, SliceKind, codec};
use common::principal_overlay;
use federation::overlay::NodeProtocol;
use federation::testing::TestFederation;
use federation::{OverlayError, unix_now};
use node::daemon::config::NodeManagerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

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
async fn redeem_over_libp2p_and_serve_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut plc = TestFederation::new("plc", 100);
    let node_key = SecretKey::generate();
    let agent = test_key(20);
    let alice = test_key(50);
    node_key.save(&dir.path().join("node.key")).unwrap();
    let cert = plc.node_with_key(node_key.clone(), "princeton").cert;
    std::fs::write(dir.path().join("membership.cbor"), codec::encode(&cert)).unwrap();
    let config_text = format!(
        "federation = \"plc\"\nisolation = \"memory\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nhttp = \"127.0.0.1:0\"\n\
         capacity = \"cpu=4 cores,memory=4GiB,disk=10GiB,egress=100Mbit\"\nad_interval_secs = 1\nad_ttl_secs = 30\n\
         [[trust]]\nname = \"plc\"\nauthority = \"{}\"\n\
         [[delegations]]\nagent = \"{}\"\nshare = \"cpu=2 cores,memory=2GiB,disk=5GiB,egress=50Mbit\"\n",
        plc.authority.public(),
        agent.public()
    );
    std::fs::write(dir.path().join("node.toml"), config_text).unwrap();
    let config = NodeManagerConfig::load(&dir.path().join("node.toml")).unwrap();
    let (running, shutdown) = within(node::daemon::run::start(config)).await.unwrap();

    // A principal's overlay joins through the node and sees its ad.
    let node_addr = running.overlay.listen_addrs().await.unwrap()[0].clone();
    let client = principal_overlay(&alice, &plc, node_addr).await;
    let mut ads = client.ads();
    let event = within(async {
        loop {
            let event = ads.recv().await.unwrap();
            if event.ad.node == node_key.public() {
                break event;
            }
        }
    })
    .await;
    assert_eq!(
        event.ad.share_of(&agent.public()).unwrap().free.cpu_millis,
        2000
    );

    // Redeem over libp2p.
    let now = unix_now();
    let spec = TicketSpec {
        federation: "plc".into(),
        node: node_key.public(),
        slice: "princeton_demo".into(),
        kind: SliceKind::Regular,
        resources: Resources {
            cpu_millis: 500,
            memory_bytes: 256 << 20,
            disk_bytes: 1 << 30,
            egress_kbps: 1000,
            ports: 0,
        },
        window: Window::new(now - 5, now + 600),
        holder: alice.public(),
        operations: BTreeSet::from([Operation::Redeem, Operation::Renew]),
        net: Default::default(),
    };
    let ticket = Ticket::mint(&agent, &spec).unwrap().to_bytes().unwrap();
    let redeem = NodeRequest::Redeem {
        ticket: TicketBytes(ticket.clone()),
        until: None,
    };
    let lease =
        match within(client.request::<NodeProtocol>(&node_key.public(), redeem.clone(), WAIT))
            .await
            .unwrap()
        {
            NodeResponse::Lease(lease) => lease.verify_by(&node_key.public()).unwrap(),
            other => panic!("{other:?}"),
        };
    assert_eq!(lease.holder, alice.public());

    // The same ticket again, and garbage: refused with reasons; the daemon keeps serving.
    match within(client.request::<NodeProtocol>(&node_key.public(), redeem, WAIT)).await {
        Err(OverlayError::Rejected(reply)) => {
            assert_eq!(reply.reason.code(), "already_spent", "{reply}")
        }
        other => panic!("{other:?}"),
    }
    let garbage = NodeRequest::Redeem {
        ticket: TicketBytes(vec![0xff; 64]),
        until: None,
    };
    assert!(matches!(
        within(client.request::<NodeProtocol>(&node_key.public(), garbage, WAIT)).await,
        Err(OverlayError::Rejected(_))
    ));
    let exec = NodeRequest::Exec {
        lease_id: lease.lease_id.clone(),
        argv: vec!["hostname".into()],
        stdin: vec![],
        timeout_ms: 5000,
    };
    match within(client.request::<NodeProtocol>(&node_key.public(), exec, WAIT))
        .await
        .unwrap()
    {
        // Without isolation nothing runs, and the answer says so.
        NodeResponse::Exec(out) => {
            assert!(out.not_run(), "{out:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stderr),
                node::daemon::memory::NOT_RUN_MESSAGE
            );
        }
        other => panic!("{other:?}"),
    }

    // The next ad shows the commitment.
    let committed = within(async {
        loop {
            let event = ads.recv().await.unwrap();
            if event.ad.node == node_key.public() && event.ad.committed.cpu_millis == 500 {
                break event.ad.committed;
            }
        }
    })
    .await;
    assert_eq!(committed.cpu_millis, 500);

    // HTTP.
    let http = running.http.unwrap();
    let status = http_get(http, "/status").await;
    assert!(
        status.contains("200 OK") && status.contains(&node_key.public().to_string()),
        "{status}"
    );
    let leases = http_get(http, "/leases").await;
    assert!(leases.contains(&lease.lease_id), "{leases}");
    let metrics = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("planetmesh_node_committed_cpu_cores 0.5"),
        "{metrics}"
    );
    // As a monitoring system reads it: promtool accepts it, and the redeem above was timed.
    let body = metrics.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    federation::testing::check_metrics_with_promtool(body);
    assert!(
        body.contains("planetmesh_request_duration_seconds_count{protocol=\"node\"}"),
        "{body}"
    );
    assert!(http_get(http, "/healthz").await.contains("200 OK"));
    let ready = http_get(http, "/readyz").await;
    assert!(
        ready.contains("200 OK") && ready.contains("ready: "),
        "{ready}"
    );
    // Without isolation there is nothing to measure: the sliver is listed, its use unknown.
    let slivers = http_get(http, "/slivers").await;
    assert!(
        slivers.contains("\"slice\":\"princeton_demo\"")
            && slivers.contains("\"state\":\"active\"")
            && slivers.contains("\"cpu_time_ms\":null"),
        "{slivers}"
    );

    within(shutdown).await;
    client.shutdown().await;
    drop(running);
    // The ledger survives: reopening finds the lease.
    let ledger = node::ledger::Ledger::open(&dir.path().join("state/ledger.redb")).unwrap();
    assert!(ledger.get(&lease.lease_id).unwrap().is_some());
}
