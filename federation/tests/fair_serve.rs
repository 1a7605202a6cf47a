//! Fair admission of requests (`federation::daemon::serve_protocol`): one principal flooding a
//! daemon with slow requests cannot keep another principal's requests, or another lane's,
//! from being answered in normal time; a stopping server keeps its drain deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::time::{Duration, Instant};

use capability_schema::protocol::{ExecOutput, NodeRequest, NodeResponse, Reply};
use capability_schema::rejection::Rejection;
use capability_schema::{ErrorReply, PublicKey};
use common::*;
use federation::daemon::{Fairness, serve_protocol};
use federation::overlay::NodeProtocol;
use federation::{OverlayError, OverlayHandle};
use tokio::sync::watch;

const CALL: Duration = Duration::from_secs(10);
/// How long the test server holds an exec.
const SLOW: Duration = Duration::from_secs(3);

fn lane(request: &NodeRequest) -> usize {
    usize::from(matches!(request, NodeRequest::Exec { .. }))
}

/// Exec is slow (held [`SLOW`]), release answers at once.
async fn handle(_peer: PublicKey, request: NodeRequest) -> Reply<NodeResponse> {
    match request {
        NodeRequest::Exec { .. } => {
            tokio::time::sleep(SLOW).await;
            Ok(NodeResponse::Exec(ExecOutput {
                exit_code: 0,
                stdout: Vec::new(),
                stderr: Vec::new(),
                truncated: false,
                timed_out: false,
            }))
        }
        NodeRequest::Release { lease_id } => Ok(NodeResponse::Released { lease_id }),
        _ => Err(ErrorReply::from(Rejection::Internal {
            detail: "not in this test".into(),
        })),
    }
}

fn exec() -> NodeRequest {
    NodeRequest::Exec {
        lease_id: "l".into(),
        argv: vec!["sleep".into()],
        stdin: Vec::new(),
        timeout_ms: 1000,
    }
}

fn release() -> NodeRequest {
    NodeRequest::Release {
        lease_id: "l".into(),
    }
}

async fn server(
    fairness: Fairness,
) -> (
    OverlayHandle,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let server = peer(&[], trust(&[])).await;
    let requests = server.serve::<NodeProtocol>().await.unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(serve_protocol(
        requests,
        fairness,
        2,
        lane,
        handle,
        stop,
        Duration::from_millis(500),
    ));
    (server, stop_tx, task)
}

fn busy(result: &Result<NodeResponse, OverlayError>) -> bool {
    matches!(result, Err(OverlayError::Rejected(reply))
        if matches!(&reply.reason, Rejection::Unavailable { detail } if detail.starts_with("busy")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_principal_gets_its_share_and_no_more() {
    let fairness = Fairness {
        lane_limit: 8,
        per_principal: 2,
        admit_within: Duration::from_secs(5),
    };
    let (server, _stop, _task) = server(fairness).await;
    let flooder = peer(&[], trust(&[])).await;
    let other = peer(&[], trust(&[])).await;
    connect(&flooder, &server).await;
    connect(&other, &server).await;
    let target = server.local_key();
    let started = Instant::now();
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let flooder = flooder.clone();
            tokio::spawn(
                async move { flooder.request::<NodeProtocol>(&target, exec(), CALL).await },
            )
        })
        .collect();
    // Let the flood arrive first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Another principal's exec and release are served in normal time.
    let t = Instant::now();
    let released = other
        .request::<NodeProtocol>(&target, release(), CALL)
        .await;
    assert!(released.is_ok(), "{released:?}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "release took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let ran = other.request::<NodeProtocol>(&target, exec(), CALL).await;
    assert!(ran.is_ok(), "{ran:?}");
    assert!(
        t.elapsed() < SLOW + Duration::from_secs(1),
        "exec took {:?}",
        t.elapsed()
    );
    // The flooder had two served; the other six were refused as busy, at once.
    let mut served = 0;
    let mut refused = 0;
    for call in flood {
        let result = call.await.unwrap();
        if result.is_ok() {
            served += 1;
        } else {
            assert!(busy(&result), "{result:?}");
            refused += 1;
        }
    }
    assert_eq!((served, refused), (2, 6));
    assert!(started.elapsed() < 2 * SLOW, "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lane_refuses_after_the_admission_wait_and_spares_the_other_lane() {
    let fairness = Fairness {
        lane_limit: 1,
        per_principal: 1,
        admit_within: Duration::from_millis(300),
    };
    let (server, _stop, _task) = server(fairness).await;
    let first = peer(&[], trust(&[])).await;
    let second = peer(&[], trust(&[])).await;
    connect(&first, &server).await;
    connect(&second, &server).await;
    let target = server.local_key();
    let holder = {
        let first = first.clone();
        tokio::spawn(async move { first.request::<NodeProtocol>(&target, exec(), CALL).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    let waited = second.request::<NodeProtocol>(&target, exec(), CALL).await;
    assert!(busy(&waited), "{waited:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let released = second
        .request::<NodeProtocol>(&target, release(), CALL)
        .await;
    assert!(
        released.is_ok(),
        "the lease lane waited behind the exec lane: {released:?}"
    );
    assert!(holder.await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_keeps_its_drain_deadline() {
    let (server, stop, task) = server(Fairness::with_limit(4)).await;
    let client = peer(&[], trust(&[])).await;
    connect(&client, &server).await;
    let target = server.local_key();
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.request::<NodeProtocol>(&target, exec(), CALL).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    stop.send(true).unwrap();
    within(task).await.unwrap();
    assert!(
        t.elapsed() < SLOW,
        "shutdown waited {:?} for a slow request",
        t.elapsed()
    );
    assert!(within(call).await.unwrap().is_err());
}
