//! The node protocol's logic with in-memory slivers: every refusal the issue names, the spend
//! ledger under concurrency, rollback of a failed create, the reaper, and restart
//! reconciliation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use capability_schema::identity::{SecretKey, test_key};
use capability_schema::protocol::{NodeRequest, NodeResponse, TicketBytes};
use capability_schema::ticket::{Operation, Ticket, TicketSpec, Window};
use capability_schema::{Lease, Rejection, Resources, Signed, SliceKind};
use node::admission::{Capacity, Share};
use node::daemon::memory::InMemorySlivers;
use node::daemon::service::{NodeService, SliverBackend};
use node::ledger::Ledger;

const NOW: u64 = 1_800_000_000;

fn cores(millis: u64) -> Resources {
    Resources {
        cpu_millis: millis,
        memory_bytes: 64 << 20,
        disk_bytes: 0,
        egress_kbps: 0,
        ports: 0,
    }
}

fn node_key() -> SecretKey {
    test_key(1)
}
fn agent() -> SecretKey {
    test_key(20)
}
fn alice() -> SecretKey {
    test_key(50)
}

fn capacity() -> Capacity {
    let mut shares = BTreeMap::new();
    shares.insert(
        agent().public(),
        Share {
            limit: Resources {
                cpu_millis: 2000,
                memory_bytes: 1 << 30,
                ..Resources::ZERO
            },
            not_after: u64::MAX,
            scope: Default::default(),
        },
    );
    shares.insert(
        test_key(21).public(),
        Share {
            limit: Resources {
                cpu_millis: 4000,
                memory_bytes: 1 << 30,
                ..Resources::ZERO
            },
            not_after: u64::MAX,
            scope: Default::default(),
        },
    );
    Capacity {
        node: node_key().public(),
        total: Resources {
            cpu_millis: 3000,
            memory_bytes: 1 << 30,
            ..Resources::ZERO
        },
        shares,
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    backend: Arc<InMemorySlivers>,
    service: NodeService,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let backend = Arc::new(InMemorySlivers::new());
    let service = open(&path, &backend);
    Fixture {
        _dir: dir,
        path,
        backend,
        service,
    }
}

fn open(path: &std::path::Path, backend: &Arc<InMemorySlivers>) -> NodeService {
    let ledger = Ledger::open(path).unwrap();
    NodeService::new(
        node_key(),
        "plc".into(),
        capacity(),
        ledger,
        Arc::clone(backend) as Arc<dyn SliverBackend>,
    )
}

fn ticket_by(issuer: &SecretKey, slice: &str, millis: u64, window: Window) -> Vec<u8> {
    let spec = TicketSpec {
        federation: "plc".into(),
        node: node_key().public(),
        slice: slice.into(),
        kind: SliceKind::Regular,
        resources: cores(millis),
        window,
        holder: alice().public(),
        operations: BTreeSet::from([Operation::Redeem, Operation::Renew]),
        net: Default::default(),
    };
    Ticket::mint(issuer, &spec).unwrap().to_bytes().unwrap()
}

fn ticket(slice: &str, millis: u64) -> Vec<u8> {
    ticket_by(&agent(), slice, millis, Window::new(NOW - 10, NOW + 3600))
}

fn redeem(s: &NodeService, bytes: Vec<u8>) -> Result<Signed<Lease>, Rejection> {
    match s.handle(
        &alice().public(),
        NodeRequest::Redeem {
            ticket: TicketBytes(bytes),
            until: None,
        },
        NOW,
        None,
    ) {
        Ok(NodeResponse::Lease(lease)) => Ok(lease),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.reason),
    }
}

fn check_of(r: Result<Signed<Lease>, Rejection>) -> String {
    match r {
        Err(Rejection::Ticket { check, .. }) => check,
        Err(other) => other.code().to_owned(),
        Ok(_) => "accepted".into(),
    }
}

#[test]
fn redeem_returns_a_lease_signed_by_the_node_and_the_sliver_exists() {
    let f = fixture();
    let signed = redeem(&f.service, ticket("plc_exp", 500)).unwrap();
    let lease = signed.verify_by(&node_key().public()).unwrap();
    assert_eq!(
        (lease.holder, lease.agent, lease.end),
        (alice().public(), agent().public(), NOW + 3600)
    );
    assert_eq!(lease.resources, cores(500));
    assert!(lease.address.is_some());
    assert_eq!(f.backend.live(), vec!["plc_exp".to_owned()]);
    // Exec reaches the sliver; someone else's exec is refused.
    let exec = NodeRequest::Exec {
        lease_id: lease.lease_id.clone(),
        argv: vec!["hostname".into()],
        stdin: vec![],
        timeout_ms: 1000,
    };
    assert!(matches!(
        f.service.handle(&alice().public(), exec.clone(), NOW, None),
        Ok(NodeResponse::Exec(_))
    ));
    let err = f
        .service
        .handle(&test_key(51).public(), exec, NOW, None)
        .unwrap_err();
    assert_eq!(err.reason.code(), "not_holder");
}

#[test]
fn every_bad_ticket_is_refused_with_its_reason_and_the_service_keeps_serving() {
    let f = fixture();
    let s = &f.service;
    assert_eq!(check_of(redeem(s, b"\xa1garbage".to_vec())), "truncated");
    assert_eq!(check_of(redeem(s, vec![0u8; 100_000])), "too_large");
    assert_eq!(
        check_of(redeem(
            s,
            ticket_by(&test_key(99), "plc_x", 100, Window::new(NOW - 10, NOW + 10))
        )),
        "unknown_issuer"
    );
    assert_eq!(
        check_of(redeem(
            s,
            ticket_by(&agent(), "plc_x", 100, Window::new(NOW - 100, NOW - 10))
        )),
        "expired"
    );
    assert_eq!(
        check_of(redeem(
            s,
            ticket_by(&agent(), "plc_x", 100, Window::new(NOW + 100, NOW + 200))
        )),
        "not_yet_valid"
    );
    // Wrong presenter: bob presents alice's ticket.
    let bytes = ticket("plc_x", 100);
    let r = s.handle(
        &test_key(51).public(),
        NodeRequest::Redeem {
            ticket: TicketBytes(bytes),
            until: None,
        },
        NOW,
        None,
    );
    assert_eq!(
        match r {
            Err(e) => match e.reason {
                Rejection::Ticket { check, .. } => check,
                o => o.code().into(),
            },
            Ok(_) => "ok".into(),
        },
        "wrong_presenter"
    );
    // Over share (agent 20 holds 2 cores) and over capacity (3 cores in all).
    redeem(s, ticket("plc_a", 1500)).unwrap();
    let over_share = redeem(s, ticket("plc_b", 1000)).unwrap_err();
    assert!(
        matches!(
            over_share,
            Rejection::OverShare {
                in_use: 1500,
                share: 2000,
                asked: 1000,
                ..
            }
        ),
        "{over_share:?}"
    );
    assert!(
        over_share
            .to_string()
            .contains("1500m of 2 cores in use, 1 core asked")
    );
    let over_capacity = redeem(
        s,
        ticket_by(
            &test_key(21),
            "plc_c",
            2000,
            Window::new(NOW - 10, NOW + 3600),
        ),
    )
    .unwrap_err();
    assert!(
        matches!(
            over_capacity,
            Rejection::OverCapacity {
                free: 1500,
                asked: 2000,
                ..
            }
        ),
        "{over_capacity:?}"
    );
    // Still serving.
    redeem(s, ticket("plc_d", 100)).unwrap();
}

#[test]
fn a_ticket_is_spent_once_even_by_concurrent_clients() {
    let f = fixture();
    let service = Arc::new(f.service);
    let bytes = ticket("plc_race", 500);
    let wins: usize = (0..6)
        .map(|_| {
            let (service, bytes) = (Arc::clone(&service), bytes.clone());
            std::thread::spawn(move || redeem(&service, bytes).is_ok())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| usize::from(h.join().unwrap()))
        .sum();
    assert_eq!(wins, 1);
    assert_eq!(service.ledger().leases().unwrap().len(), 1);
    assert_eq!(check_of(redeem(&service, bytes)), "already_spent");
}

#[test]
fn renew_is_bounded_by_the_ticket_and_release_frees_the_share() {
    let f = fixture();
    let s = &f.service;
    let bytes = ticket_by(&agent(), "plc_r", 2000, Window::new(NOW - 10, NOW + 7200));
    let lease = match s.handle(
        &alice().public(),
        NodeRequest::Redeem {
            ticket: TicketBytes(bytes),
            until: Some(NOW + 3600),
        },
        NOW,
        None,
    ) {
        Ok(NodeResponse::Lease(l)) => l.verify().unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(lease.end, NOW + 3600);
    let renew = |until| {
        s.handle(
            &alice().public(),
            NodeRequest::Renew {
                lease_id: lease.lease_id.clone(),
                until,
            },
            NOW,
            None,
        )
    };
    let err = renew(NOW + 7201).unwrap_err();
    assert!(
        matches!(err.reason, Rejection::RenewPastTicket { not_after, .. } if not_after == NOW + 7200),
        "{err:?}"
    );
    match renew(NOW + 7000).unwrap() {
        NodeResponse::Lease(l) => assert_eq!(l.verify().unwrap().end, NOW + 7000),
        other => panic!("{other:?}"),
    }
    assert!(redeem(s, ticket("plc_other", 500)).is_err(), "share full");
    s.handle(
        &alice().public(),
        NodeRequest::Release {
            lease_id: lease.lease_id.clone(),
        },
        NOW,
        None,
    )
    .unwrap();
    assert!(f.backend.live().is_empty());
    redeem(s, ticket("plc_other", 500)).unwrap();
}

#[test]
fn tickets_whose_leases_end_early_wait_for_their_agent_to_be_told() {
    let f = fixture();
    let s = &f.service;
    // Released by the holder: the ticket's end waits for its agent.
    let lease = redeem(s, ticket("plc_rel", 500)).unwrap().verify().unwrap();
    assert!(
        s.take_ended_tickets().is_empty(),
        "a live lease ends nothing"
    );
    s.handle(
        &alice().public(),
        NodeRequest::Release {
            lease_id: lease.lease_id.clone(),
        },
        NOW,
        None,
    )
    .unwrap();
    let ended = s.take_ended_tickets();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0].agent, agent().public());
    assert_eq!(ended[0].ticket_id, lease.ticket_id);
    assert_eq!(ended[0].attempts, 0);
    assert!(s.take_ended_tickets().is_empty(), "taken once");

    // Reaped at the lease's end: reported too.
    let short = ticket_by(
        &test_key(21),
        "plc_short2",
        100,
        Window::new(NOW - 10, NOW + 60),
    );
    let short = redeem(s, short).unwrap().verify().unwrap();
    assert_eq!(s.reap(NOW + 60).unwrap().len(), 1);
    let ended = s.take_ended_tickets();
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0].agent, test_key(21).public());
    assert_eq!(ended[0].ticket_id, short.ticket_id);

    // A failed create refunds the ticket (it may be redeemed again): nothing to report.
    f.backend.fail_next_create();
    assert!(redeem(s, ticket("plc_failed", 500)).is_err());
    assert!(s.take_ended_tickets().is_empty());

    // Failed reports come back once each, and the queue stays bounded.
    let mut back = ended.clone();
    back[0].attempts = 1;
    s.requeue_ended(back.clone());
    s.requeue_ended(back);
    let again = s.take_ended_tickets();
    assert_eq!(again.len(), 1, "requeued once: {again:?}");
    assert_eq!(again[0].attempts, 1);
    let flood: Vec<_> = (0..node::daemon::service::MAX_PENDING_RELEASE_REPORTS + 10)
        .map(|i| node::daemon::service::TicketEnded {
            agent: agent().public(),
            ticket_id: format!("{i:032x}"),
            attempts: 0,
        })
        .collect();
    s.requeue_ended(flood);
    let kept = s.take_ended_tickets();
    assert_eq!(
        kept.len(),
        node::daemon::service::MAX_PENDING_RELEASE_REPORTS
    );
    assert_eq!(
        kept[0].ticket_id,
        format!("{:032x}", 10),
        "the oldest went first"
    );
}

#[test]
fn failed_create_rolls_back_and_the_ticket_can_be_retried() {
    let f = fixture();
    let bytes = ticket("plc_fail", 500);
    f.backend.fail_next_create();
    assert_eq!(check_of(redeem(&f.service, bytes.clone())), "internal");
    assert!(f.service.ledger().leases().unwrap().is_empty());
    redeem(&f.service, bytes).unwrap();
}

#[test]
fn reaper_destroys_expired_slivers() {
    let f = fixture();
    redeem(
        &f.service,
        ticket_by(&agent(), "plc_short", 100, Window::new(NOW - 10, NOW + 60)),
    )
    .unwrap();
    assert!(f.service.reap(NOW + 59).unwrap().is_empty());
    assert_eq!(f.service.reap(NOW + 60).unwrap().len(), 1);
    assert!(f.backend.live().is_empty());
    assert!(f.service.commitments().total.is_zero());
}

#[test]
fn restart_keeps_leased_slivers_and_removes_orphans() {
    let f = fixture();
    let kept = redeem(&f.service, ticket("plc_kept", 100))
        .unwrap()
        .verify()
        .unwrap();
    f.backend.insert_orphan("stray");
    let Fixture {
        _dir,
        path,
        backend,
        service,
    } = f;
    drop(service);
    let service = open(&path, &backend);
    let report = service.reconcile().unwrap();
    assert_eq!(report.adopted, vec![kept.lease_id]);
    assert_eq!(report.orphans, vec!["stray".to_owned()]);
    assert_eq!(backend.live(), vec!["plc_kept".to_owned()]);
    assert_eq!(
        check_of(redeem(&service, ticket("plc_new", 100))),
        "accepted"
    );
}
