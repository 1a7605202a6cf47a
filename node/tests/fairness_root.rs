//! A principal flooding a node with slow commands cannot take the node from the others
//! (root; skipped otherwise unless CI): 70 execs of one principal that each sleep, while
//! another principal's exec, redeem and release answer in normal time; the flooder gets its
//! share (a quarter of the command lane) and is refused the rest at once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::time::{Duration, Instant};

use capability_schema::Rejection;
use capability_schema::identity::SecretKey;
use capability_schema::protocol::{NodeRequest, NodeResponse};
use common::daemon::{LinuxNode, WAIT, within};
use common::root_or_skip;
use federation::OverlayError;
use federation::overlay::NodeProtocol;

/// Commands one principal sends at once.
const FLOOD: usize = 70;
/// How long each of them sleeps.
const SLOW_SECS: u64 = 6;
/// What "normal time" means here for a lone request on a loaded node.
const PROMPT: Duration = Duration::from_secs(3);

fn exec(lease_id: &str, script: &str) -> NodeRequest {
    NodeRequest::Exec {
        lease_id: lease_id.into(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        stdin: vec![],
        timeout_ms: 30_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_commands_of_one_principal_do_not_hold_anyone_else() {
    if !root_or_skip() {
        return;
    }
    let node = LinuxNode::start("pmfa").await;
    let target = node.key.public();
    let (mallory, bob) = (SecretKey::generate(), SecretKey::generate());
    let mallory_overlay = node.principal(&mallory).await;
    let bob_overlay = node.principal(&bob).await;
    let mallory_lease = node
        .redeem(&mallory_overlay, "princeton_flood", &mallory)
        .await;
    let bob_lease = node.redeem(&bob_overlay, "princeton_calm", &bob).await;

    let started = Instant::now();
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let (overlay, lease) = (mallory_overlay.clone(), mallory_lease.lease_id.clone());
            tokio::spawn(async move {
                let request = exec(&lease, &format!("sleep {SLOW_SECS}"));
                overlay
                    .request::<NodeProtocol>(&target, request, WAIT)
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Bob's command, a redeem and a release answer promptly.
    let t = Instant::now();
    let out = within(bob_overlay.request::<NodeProtocol>(
        &target,
        exec(&bob_lease.lease_id, "echo fine"),
        WAIT,
    ))
    .await;
    assert!(
        matches!(&out, Ok(NodeResponse::Exec(o)) if o.stdout == b"fine\n"),
        "{out:?}"
    );
    assert!(t.elapsed() < PROMPT, "bob's exec took {:?}", t.elapsed());
    let t = Instant::now();
    let second = node.redeem(&bob_overlay, "princeton_calm2", &bob).await;
    assert!(t.elapsed() < PROMPT, "bob's redeem took {:?}", t.elapsed());
    let t = Instant::now();
    let released = within(bob_overlay.request::<NodeProtocol>(
        &target,
        NodeRequest::Release {
            lease_id: second.lease_id.clone(),
        },
        WAIT,
    ))
    .await;
    assert!(
        matches!(released, Ok(NodeResponse::Released { .. })),
        "{released:?}"
    );
    assert!(t.elapsed() < PROMPT, "bob's release took {:?}", t.elapsed());

    // Mallory got a quarter of the command lane; the rest was refused as busy at once.
    // (Refused by the transport's own stream limit before reaching the node counts too.)
    let (mut served, mut refused, mut streams) = (0, 0, 0);
    for call in flood {
        match within(call).await.unwrap() {
            Ok(NodeResponse::Exec(o)) => {
                assert_eq!(o.exit_code, 0, "{o:?}");
                served += 1;
            }
            Err(OverlayError::Rejected(reply)) if matches!(&reply.reason, Rejection::Unavailable { detail } if detail.starts_with("busy")) => {
                refused += 1
            }
            Err(OverlayError::Stream { detail, .. }) if detail.contains("max sub-streams") => {
                streams += 1
            }
            other => panic!("{other:?}"),
        }
    }
    let share = node::daemon::run::MAX_IN_FLIGHT / 4;
    eprintln!("served {served}, refused busy {refused}, refused by the transport {streams}");
    assert_eq!(served, share);
    assert_eq!(refused + streams, FLOOD - share);
    assert!(
        started.elapsed() < Duration::from_secs(SLOW_SECS * 3),
        "{:?}",
        started.elapsed()
    );
    mallory_overlay.shutdown().await;
    bob_overlay.shutdown().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_its_deadline_is_an_answer_that_says_so() {
    if !root_or_skip() {
        return;
    }
    let node = LinuxNode::start("pmft").await;
    let target = node.key.public();
    let alice = SecretKey::generate();
    let overlay = node.principal(&alice).await;
    let lease = node.redeem(&overlay, "princeton_late", &alice).await;
    let t = Instant::now();
    let late = NodeRequest::Exec {
        lease_id: lease.lease_id.clone(),
        argv: vec!["/bin/sh".into(), "-c".into(), "sleep 60 & sleep 61".into()],
        stdin: vec![],
        timeout_ms: 500,
    };
    match within(overlay.request::<NodeProtocol>(&target, late, WAIT))
        .await
        .unwrap()
    {
        NodeResponse::Exec(out) => {
            assert!(out.timed_out, "{out:?}");
            assert_eq!(out.exit_code, 128 + 9);
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < PROMPT, "{:?}", t.elapsed());
    // Its background job went with it.
    let count = NodeRequest::Exec {
        lease_id: lease.lease_id.clone(),
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            // Zombies not yet reaped by the sliver's init are gone already.
            "n=0; for s in /proc/[0-9]*/stat; do read -r p c st r < $s; \
             [ \"$c\" = '(sleep)' ] && [ \"$st\" != Z ] && n=$((n+1)); done; echo $n"
                .into(),
        ],
        stdin: vec![],
        timeout_ms: 5000,
    };
    match within(overlay.request::<NodeProtocol>(&target, count, WAIT))
        .await
        .unwrap()
    {
        NodeResponse::Exec(out) => assert_eq!(out.stdout, b"0\n", "{out:?}"),
        other => panic!("{other:?}"),
    }
    overlay.shutdown().await;
    node.stop().await;
}
