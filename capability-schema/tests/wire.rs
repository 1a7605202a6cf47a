//! Wire-format tests: golden vectors for every signed type, round trips of every message, and
//! random bytes into every decoder.
//!
//! Golden vectors are made with fixed keys and fixed times; a change to any encoding changes
//! their bytes and fails `golden_vectors_are_byte_exact`. After an intended format change,
//! regenerate them with `PLANETMESH_BLESS=1 cargo test -p capability-schema --test wire` and
//! bump the type's domain tag version.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::path::PathBuf;

use capability_schema::ad::{MeasuredUse, ShareState, SliverUsage};
use capability_schema::identity::test_key;
use capability_schema::membership::{
    PeeringLimits, PrincipalFilter, RevocationSync, RevocationSyncReply, RevocationVerdict,
    RevokedDelegation,
};
use capability_schema::protocol::*;
use capability_schema::resources::ResourceKind;
use capability_schema::slice::{SliceConstraints, SliverTarget};
use capability_schema::*;
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

const T0: u64 = 1_780_000_000;

fn res(cpu: u64, mem_mib: u64) -> Resources {
    Resources {
        cpu_millis: cpu,
        memory_bytes: mem_mib << 20,
        disk_bytes: 1 << 30,
        egress_kbps: 10_000,
        ports: 0,
    }
}

fn membership() -> Signed<MembershipCert> {
    Signed::sign(
        &test_key(100),
        &MembershipCert {
            federation: "plc".into(),
            authority: test_key(100).public(),
            subject: test_key(1).public(),
            role: Role::Node,
            site: "princeton".into(),
            name: "planetlab1.cs.princeton.edu".into(),
            serial: 7,
            issued_at: T0,
            expires_at: T0 + 365 * 86_400,
        },
    )
}

fn peering() -> Signed<PeeringAgreement> {
    Signed::sign(
        &test_key(100),
        &PeeringAgreement {
            federation: "plc".into(),
            authority: test_key(100).public(),
            peer_federation: "ple".into(),
            peer_authority: test_key(101).public(),
            roles: vec![Role::Principal, Role::Broker],
            principals: PrincipalFilter::Only(vec![test_key(50).public()]),
            limits: PeeringLimits {
                max_slivers_per_principal: Some(10),
                max_total: Some(res(4000, 4096)),
                max_duration_secs: Some(7 * 86_400),
            },
            serial: 8,
            issued_at: T0,
            expires_at: T0 + 30 * 86_400,
        },
    )
}

fn revocation() -> Signed<RevocationList> {
    Signed::sign(
        &test_key(100),
        &RevocationList {
            federation: "plc".into(),
            authority: test_key(100).public(),
            version: 3,
            issued_at: T0,
            serials: vec![4, 5],
            keys: vec![test_key(66).public()],
            delegations: vec![RevokedDelegation {
                node: test_key(1).public(),
                agent: test_key(20).public(),
                issued_until: T0 - 60,
            }],
            tickets: vec![TicketId::from_bytes([0x5a; 64])],
        },
    )
}

fn delegation() -> Signed<Delegation> {
    Signed::sign(
        &test_key(1),
        &Delegation {
            node: test_key(1).public(),
            agent: test_key(20).public(),
            share: res(2000, 2048),
            scope: DelegationScope::with_admin(vec!["CAP_NET_ADMIN".into()], true),
            issued_at: T0,
            since: T0,
            not_after: T0 + 86_400,
        },
    )
}

fn ad() -> Signed<ResourceAd> {
    Signed::sign(
        &test_key(1),
        &ResourceAd {
            node: test_key(1).public(),
            federation: "plc".into(),
            site: "princeton".into(),
            name: "planetlab1.cs.princeton.edu".into(),
            addresses: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            capacity: res(4000, 8192),
            committed: res(500, 256),
            shares: vec![ShareState {
                agent: test_key(20).public(),
                share: res(2000, 2048),
                committed: res(500, 256),
                free: res(1500, 1792),
            }],
            delegations: vec![delegation()],
            measured: MeasuredUse {
                load_milli: 250,
                memory_used_bytes: 1 << 30,
                slivers: vec![SliverUsage {
                    slice: "princeton_codeen".into(),
                    cpu_time_ms: 1234,
                    memory_bytes: 64 << 20,
                    egress_bytes: 99_999,
                    disk_bytes: None,
                    condition: None,
                }],
            },
            membership: membership(),
            seq: 42,
            issued_at: T0,
            ttl_secs: 60,
        },
    )
}

fn lease() -> Signed<Lease> {
    Signed::sign(
        &test_key(1),
        &Lease {
            lease_id: "00112233445566778899aabbccddeeff".into(),
            ticket_id: "abcdef".into(),
            node: test_key(1).public(),
            federation: "plc".into(),
            agent: test_key(20).public(),
            slice: "princeton_codeen".into(),
            kind: SliceKind::Admin {
                capabilities: vec!["CAP_NET_RAW".into()],
                host_pid_view: false,
            },
            holder: test_key(50).public(),
            resources: res(500, 256),
            address: Some("10.77.0.2".into()),
            public: None,
            start: T0,
            end: T0 + 3600,
            net: Default::default(),
        },
    )
}

fn slice_request() -> SliceRequest {
    SliceRequest {
        name: "princeton_codeen".into(),
        principal: test_key(50).public(),
        principal_federation: "plc".into(),
        kind: SliceKind::Regular,
        per_sliver: res(250, 128),
        target: SliverTarget::Count(20),
        constraints: SliceConstraints {
            federations: vec!["plc".into(), "ple".into()],
            min_sites: 3,
            exclude_nodes: vec![test_key(9).public()],
            max_price: Some(1_000_000),
        },
        duration_secs: 3600,
        mode: AcquireMode::BestEffort,
        net: Default::default(),
    }
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check_golden(name: &str, bytes: &[u8]) {
    let path = golden_dir().join(format!("{name}.cbor"));
    if std::env::var_os("PLANETMESH_BLESS").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate with PLANETMESH_BLESS=1",
            path.display()
        )
    });
    assert!(
        expected == bytes,
        "{name}: encoding changed ({} bytes now, {} in {}); if intended, bless and bump the domain tag",
        bytes.len(),
        expected.len(),
        path.display()
    );
}

#[test]
fn golden_vectors_are_byte_exact() {
    check_golden("membership_cert", &membership().to_bytes());
    check_golden("peering_agreement", &peering().to_bytes());
    check_golden("resource_ad", &ad().to_bytes());
    check_golden("lease", &lease().to_bytes());
    check_golden("slice_request", &encode(&slice_request()));
}

#[test]
fn golden_vectors_decode_and_verify() {
    let read = |name: &str| std::fs::read(golden_dir().join(format!("{name}.cbor"))).unwrap();
    let ad = Signed::<ResourceAd>::from_bytes(&read("resource_ad"))
        .unwrap()
        .verify()
        .unwrap();
    assert_eq!(ad.seq, 42);
    assert_eq!(
        ad.delegations[0].verify().unwrap().agent,
        test_key(20).public()
    );
    assert_eq!(
        ad.membership
            .verify_by(&test_key(100).public())
            .unwrap()
            .role,
        Role::Node
    );
    let lease = Signed::<Lease>::from_bytes(&read("lease"))
        .unwrap()
        .verify_by(&test_key(1).public());
    assert_eq!(lease.unwrap().end, T0 + 3600);
    // A lease's bytes are never an ad.
    let lease_as_ad = Signed::<ResourceAd>::from_bytes(&read("lease")).unwrap();
    assert!(matches!(
        lease_as_ad.verify(),
        Err(SignatureError::WrongDomain { .. })
    ));
    assert!(
        Signed::<PeeringAgreement>::from_bytes(&read("peering_agreement"))
            .unwrap()
            .verify()
            .is_ok()
    );
    assert_eq!(
        decode::<SliceRequest>(&read("slice_request")).unwrap(),
        slice_request()
    );
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let bytes = encode(value);
    assert_eq!(&decode::<T>(&bytes).unwrap(), value);
}

#[test]
fn every_protocol_message_round_trips() {
    let ticket = TicketBytes(vec![1, 2, 3]);
    let issued = IssuedTicket {
        node: test_key(1).public(),
        federation: "plc".into(),
        agent: test_key(20).public(),
        ticket_id: "ab".into(),
        ticket: ticket.clone(),
        price: 5,
        addresses: vec!["/ip4/127.0.0.1/tcp/1".into()],
    };
    let planned = PlannedSliver {
        node: test_key(1).public(),
        federation: "plc".into(),
        site: "s".into(),
        agent: test_key(20).public(),
        price: 3,
    };
    let plan = SlicePlan {
        chosen: vec![planned.clone()],
        alternatives: vec![planned],
        rejected: vec![RejectedGroup {
            reason: "memory".into(),
            count: 37,
            examples: vec![test_key(3).public()],
        }],
        satisfiable: true,
        explanation: "ok".into(),
    };
    let refusal: ErrorReply = Rejection::OverCapacity {
        node: test_key(1).public(),
        kind: ResourceKind::Memory,
        asked: 512 << 20,
        free: 128 << 20,
    }
    .into();
    let agent_requests = [
        AgentRequest::GetAds(AdQuery {
            min_free: res(1, 1),
            federations: vec!["plc".into()],
            sites: vec![],
            limit: 9,
        }),
        AgentRequest::GetTickets(TicketRequest {
            slice: "x".into(),
            principal: test_key(50).public(),
            principal_cert: Some(membership()),
            kind: SliceKind::Regular,
            slivers: vec![SliverAsk {
                node: test_key(1).public(),
                resources: res(1, 1),
            }],
            not_before: T0,
            not_after: T0 + 1,
            max_price: None,
            net: Default::default(),
            ask: None,
        }),
        AgentRequest::Released {
            ticket_ids: vec!["ab".into()],
        },
    ];
    for r in &agent_requests {
        round_trip(&Envelope {
            request_id: 7,
            body: r.clone(),
        });
    }
    let agent_responses: [Reply<AgentResponse>; 4] = [
        Ok(AgentResponse::Ads(vec![NodeOffer {
            agent: test_key(20).public(),
            ad: ad(),
            free: res(1, 1),
            prices: PriceList {
                cpu_core_hour: 1,
                ..Default::default()
            },
        }])),
        Ok(AgentResponse::Tickets {
            issued: vec![issued.clone()],
            refused: vec![RefusedSliver {
                node: test_key(2).public(),
                reason: refusal.clone(),
            }],
        }),
        Ok(AgentResponse::Released { known: 1 }),
        Err(refusal.clone()),
    ];
    for r in &agent_responses {
        round_trip(&Envelope {
            request_id: 7,
            body: r.clone(),
        });
    }
    let node_requests = [
        NodeRequest::Redeem {
            ticket,
            until: Some(T0),
        },
        NodeRequest::Renew {
            lease_id: "l".into(),
            until: T0,
        },
        NodeRequest::Release {
            lease_id: "l".into(),
        },
        NodeRequest::Status,
        NodeRequest::Exec {
            lease_id: "l".into(),
            argv: vec!["true".into()],
            stdin: vec![0],
            timeout_ms: 5,
        },
        NodeRequest::Spawn {
            lease_id: "l".into(),
            argv: vec!["sleep".into(), "1".into()],
        },
        NodeRequest::Logs {
            lease_id: "l".into(),
            tail_bytes: 10,
        },
        NodeRequest::AddKey {
            lease_id: "l".into(),
            key: "ssh-ed25519 AAAA x".into(),
        },
        NodeRequest::DelKey {
            lease_id: "l".into(),
            key: "x".into(),
        },
        NodeRequest::ListKeys {
            lease_id: "l".into(),
        },
    ];
    for r in &node_requests {
        round_trip(r);
    }
    let node_responses: [Reply<NodeResponse>; 8] = [
        Ok(NodeResponse::Lease(lease())),
        Ok(NodeResponse::Released {
            lease_id: "l".into(),
        }),
        Ok(NodeResponse::Status(Box::new(NodeStatus {
            ad: ad(),
            leases: vec![lease()],
            ended: vec![LeaseEnded {
                lease_id: "l0".into(),
                reason: "principal revoked by \"plc\" list v3 (issued at 1780000000)".into(),
            }],
            ssh: None,
        }))),
        Ok(NodeResponse::Exec(ExecOutput {
            exit_code: 1,
            stdout: b"out".to_vec(),
            stderr: vec![],
            truncated: false,
            timed_out: true,
        })),
        Ok(NodeResponse::Spawned { pid: 3 }),
        Ok(NodeResponse::Logs {
            bytes: b"log".to_vec(),
        }),
        Ok(NodeResponse::Keys(vec!["k".into()])),
        Err(refusal),
    ];
    for r in &node_responses {
        round_trip(r);
    }
    round_trip(&BrokerRequest::FindSlice(slice_request()));
    round_trip(&BrokerRequest::AcquireSlice(slice_request()));
    round_trip(&BrokerResponse::Plan(plan.clone()));
    round_trip(&BrokerResponse::Acquired(AcquiredSlice {
        tickets: vec![issued],
        plan,
        missing: 2,
        report: vec!["n3 refused".into()],
        events: vec![AcquireEvent::NodeUnanswered {
            node: test_key(3).public(),
            agent: test_key(4).public(),
        }],
    }));
}

// ---------------------------------------------------------------- property tests

fn key() -> impl Strategy<Value = PublicKey> {
    any::<u8>().prop_map(|n| test_key(n).public())
}

fn resources() -> impl Strategy<Value = Resources> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(c, m, d, e)| Resources {
        cpu_millis: c,
        memory_bytes: m,
        disk_bytes: d,
        egress_kbps: e,
        ports: 0,
    })
}

fn kind() -> impl Strategy<Value = SliceKind> {
    prop_oneof![
        Just(SliceKind::Regular),
        (
            proptest::collection::vec("CAP_[A-Z_]{1,12}", 0..4),
            any::<bool>()
        )
            .prop_map(|(capabilities, host_pid_view)| SliceKind::Admin {
                capabilities,
                host_pid_view
            }),
    ]
}

fn slice_requests() -> impl Strategy<Value = SliceRequest> {
    (
        ".{0,20}",
        key(),
        kind(),
        resources(),
        prop_oneof![
            any::<u32>().prop_map(SliverTarget::Count),
            proptest::collection::vec(key(), 0..5).prop_map(SliverTarget::Nodes)
        ],
        (
            proptest::collection::vec(".{0,8}", 0..3),
            any::<u32>(),
            proptest::collection::vec(key(), 0..3),
            any::<Option<u64>>(),
        ),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                name,
                principal,
                kind,
                per_sliver,
                target,
                (federations, min_sites, exclude_nodes, max_price),
                duration_secs,
                best,
            )| {
                SliceRequest {
                    name,
                    principal,
                    principal_federation: "f".into(),
                    kind,
                    per_sliver,
                    target,
                    constraints: SliceConstraints {
                        federations,
                        min_sites,
                        exclude_nodes,
                        max_price,
                    },
                    duration_secs,
                    mode: if best {
                        AcquireMode::BestEffort
                    } else {
                        AcquireMode::AllOrNothing
                    },
                    net: Default::default(),
                }
            },
        )
}

fn leases() -> impl Strategy<Value = Lease> {
    (
        ".{0,32}",
        ".{0,32}",
        key(),
        key(),
        ".{0,20}",
        kind(),
        resources(),
        any::<Option<u16>>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(lease_id, ticket_id, node, holder, slice, kind, resources, addr, start, end)| Lease {
                lease_id,
                ticket_id,
                node,
                federation: "f".into(),
                agent: node,
                slice,
                kind,
                holder,
                resources,
                address: addr.map(|a| format!("10.0.{}.{}", a >> 8, a & 0xff)),
                public: None,
                start,
                end,
                net: Default::default(),
            },
        )
}

fn certs() -> impl Strategy<Value = MembershipCert> {
    (
        ".{0,10}",
        key(),
        key(),
        0..4usize,
        ".{0,10}",
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(federation, authority, subject, role, site, serial, issued_at, expires_at)| {
                MembershipCert {
                    federation,
                    authority,
                    subject,
                    role: Role::ALL[role],
                    site,
                    name: "n".into(),
                    serial,
                    issued_at,
                    expires_at,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn slice_requests_round_trip(r in slice_requests()) {
        prop_assert_eq!(decode::<SliceRequest>(&encode(&r)).unwrap(), r.clone());
        let env = Envelope { request_id: 1, body: BrokerRequest::AcquireSlice(r) };
        prop_assert_eq!(decode::<Envelope<BrokerRequest>>(&encode(&env)).unwrap(), env);
    }

    #[test]
    fn signed_leases_round_trip_and_verify(l in leases(), signer in any::<u8>()) {
        let signed = Signed::sign(&test_key(signer), &l);
        let back = Signed::<Lease>::from_bytes(&signed.to_bytes()).unwrap();
        prop_assert_eq!(back.verify_by(&test_key(signer).public()).unwrap(), l);
    }

    #[test]
    fn signed_certs_round_trip_and_verify(c in certs(), signer in any::<u8>()) {
        let signed = Signed::sign(&test_key(signer), &c);
        prop_assert_eq!(Signed::<MembershipCert>::from_bytes(&signed.to_bytes()).unwrap().verify().unwrap(), c);
    }

    #[test]
    fn random_bytes_into_every_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = Signed::<ResourceAd>::from_bytes(&bytes).map(|s| s.verify());
        let _ = Signed::<Lease>::from_bytes(&bytes).map(|s| s.verify());
        let _ = Signed::<Delegation>::from_bytes(&bytes).map(|s| s.verify());
        let _ = Signed::<MembershipCert>::from_bytes(&bytes).map(|s| s.verify());
        let _ = Signed::<PeeringAgreement>::from_bytes(&bytes).map(|s| s.verify());
        let _ = Signed::<RevocationList>::from_bytes(&bytes).map(|s| s.verify());
        let _ = decode::<Envelope<AgentRequest>>(&bytes);
        let _ = decode::<Envelope<Reply<AgentResponse>>>(&bytes);
        let _ = decode::<NodeRequest>(&bytes);
        let _ = decode::<Reply<NodeResponse>>(&bytes);
        let _ = decode::<BrokerRequest>(&bytes);
        let _ = decode::<Reply<BrokerResponse>>(&bytes);
    }

    #[test]
    fn mutated_golden_ad_never_panics_and_never_verifies(index in 0usize..4096, bit in 0u8..8) {
        let mut bytes = ad().to_bytes();
        let i = index % bytes.len();
        bytes[i] ^= 1 << bit;
        if let Ok(signed) = Signed::<ResourceAd>::from_bytes(&bytes) {
            // A flipped bit either breaks decoding, or the signature, or lands in a part the
            // signature does not cover and the wire form shows the same object.
            if let Ok(ad) = signed.verify() {
                prop_assert_eq!(Signed::sign(&test_key(1), &ad).body, signed.body);
            }
        }
    }
}

#[test]
fn sliver_disk_figures_are_optional_on_the_wire() {
    let mut usage = SliverUsage {
        slice: "princeton_codeen".into(),
        cpu_time_ms: 1,
        memory_bytes: 2,
        egress_bytes: 3,
        disk_bytes: None,
        condition: None,
    };
    let without = capability_schema::codec::encode(&usage);
    // Absent fields are not written: ads from nodes that never set them keep their bytes.
    assert!(!without.windows(10).any(|w| w == b"disk_bytes"));
    usage.disk_bytes = Some(3 << 20);
    usage.condition = Some("over disk limit: 3.0 MiB of 2.0 MiB".into());
    let with = capability_schema::codec::encode(&usage);
    assert!(with.len() > without.len());
    let back: SliverUsage = capability_schema::codec::decode(&with).unwrap();
    assert_eq!(back, usage);
    let old: SliverUsage = capability_schema::codec::decode(&without).unwrap();
    assert_eq!(old.disk_bytes, None);
    assert_eq!(old.condition, None);
}

/// Revocation lists v2 name delegations and tickets too; the v1 vector (serials and keys
/// only) is kept to show an old list is refused by its domain, not misread.
#[test]
fn revocation_list_v2_golden_and_v1_refused() {
    check_golden("revocation_list_v2", &revocation().to_bytes());
    let read = |name: &str| std::fs::read(golden_dir().join(format!("{name}.cbor"))).unwrap();
    let list = Signed::<RevocationList>::from_bytes(&read("revocation_list_v2"))
        .unwrap()
        .verify_by(&test_key(100).public())
        .unwrap();
    assert_eq!(list, revocation().verify().unwrap());
    assert_eq!(list.tickets, vec![TicketId::from_bytes([0x5a; 64])]);
    assert_eq!(
        list.revoked_delegation(&test_key(1).public(), &test_key(20).public(), T0 - 60),
        Some(&list.delegations[0])
    );
    assert_eq!(
        list.revoked_delegation(&test_key(1).public(), &test_key(20).public(), T0),
        None,
        "a delegation signed after the revocation's time stands"
    );
    let v1 = Signed::<RevocationList>::from_bytes(&read("revocation_list")).unwrap();
    assert!(matches!(
        v1.verify(),
        Err(SignatureError::WrongDomain { .. })
    ));
}

#[test]
fn revocation_sync_round_trips() {
    round_trip(&RevocationSync {
        have: vec![("plc".into(), 3)],
        offer: vec![revocation()],
    });
    round_trip(&RevocationSyncReply {
        newer: vec![revocation()],
        verdicts: vec![
            RevocationVerdict::Applied {
                federation: "plc".into(),
                version: 3,
            },
            RevocationVerdict::Refused {
                reason: "bad signature".into(),
            },
        ],
    });
    // A ticket id of the wrong length does not decode.
    let mut list = revocation().verify().unwrap();
    list.tickets.clear();
    let mut bytes = encode(&list);
    let short = encode(&vec![serde_bytes::ByteBuf::from(vec![1u8; 10])]);
    let empty = encode(&Vec::<serde_bytes::ByteBuf>::new());
    let at = bytes.len() - empty.len();
    assert_eq!(&bytes[at..], &empty[..]);
    bytes.truncate(at);
    bytes.extend_from_slice(&short);
    let error = decode::<RevocationList>(&bytes).unwrap_err();
    assert!(error.to_string().contains("64 bytes"), "{error}");
}

/// Delegations v3 carry `since`, their first signing through renewals, which revocations
/// match on; v2 (scope, no `since`) and v1 (no scope) vectors are kept to show an old
/// delegation is refused by its domain.
#[test]
fn delegation_v3_golden_and_v2_and_v1_refused() {
    check_golden("delegation_v3", &delegation().to_bytes());
    let read = |name: &str| std::fs::read(golden_dir().join(format!("{name}.cbor"))).unwrap();
    let d = Signed::<Delegation>::from_bytes(&read("delegation_v3"))
        .unwrap()
        .verify_by(&test_key(1).public())
        .unwrap();
    assert_eq!(d, delegation().verify().unwrap());
    assert_eq!(d.since, T0);
    assert_eq!(
        d.scope.to_string(),
        "regular and admin slices (CAP_NET_ADMIN, host pids)"
    );
    for old in ["delegation_v2", "delegation"] {
        let signed = Signed::<Delegation>::from_bytes(&read(old)).unwrap();
        assert!(
            matches!(signed.verify(), Err(SignatureError::WrongDomain { .. })),
            "{old}"
        );
    }
}

/// A heartbeat (`planetmesh/heartbeat/v1`) is byte-exact, small, and never an ad.
#[test]
fn heartbeat_golden_and_not_an_ad() {
    use capability_schema::Heartbeat;
    let beat = Heartbeat {
        seq: 1_800_000_002_000,
        ad_seq: 1_800_000_000_000,
    };
    let signed = Signed::sign(&test_key(1), &beat);
    check_golden("heartbeat", &signed.to_bytes());
    let read = std::fs::read(golden_dir().join("heartbeat.cbor")).unwrap();
    assert!(read.len() < 200, "{} bytes", read.len());
    let decoded = Signed::<Heartbeat>::from_bytes(&read).unwrap();
    assert_eq!(decoded.verify_by(&test_key(1).public()).unwrap(), beat);
    assert!(matches!(
        Signed::<ResourceAd>::from_bytes(&read).unwrap().verify(),
        Err(SignatureError::WrongDomain { .. })
    ));
}
