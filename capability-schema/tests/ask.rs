//! The principal's signed ask on the wire: a golden vector of `Signed<AskGrant>` (domain
//! `planetmesh/ask-grant/v1`) and of a `GetTickets` carrying one, the encodings of requests
//! without an ask unchanged, and property tests of the ask's encoder and checks.
//!
//! After an intended format change, regenerate the vectors with
//! `PLANETMESH_BLESS=1 cargo test -p capability-schema --test ask` and bump the domain tag.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::path::PathBuf;

use capability_schema::identity::test_key;
use capability_schema::protocol::{AgentRequest, BrokerCall, SliceAsk, SliverAsk, TicketRequest};
use capability_schema::slice::{SliceConstraints, SliverTarget};
use capability_schema::*;
use proptest::prelude::*;
use serde::Serialize;

const T0: u64 = 1_780_000_000;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check_golden(name: &str, bytes: &[u8]) {
    let path = golden_dir().join(format!("{name}.cbor"));
    if std::env::var_os("PLANETMESH_BLESS").is_some() {
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

fn read(name: &str) -> Vec<u8> {
    std::fs::read(golden_dir().join(format!("{name}.cbor"))).unwrap()
}

/// An ask with every field set, by fixed keys at a fixed time.
fn grant() -> AskGrant {
    AskGrant {
        id: "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a".into(),
        slice: "princeton_codeen".into(),
        principal: test_key(50).public(),
        broker: test_key(30).public(),
        not_before: T0,
        not_after: T0 + 300,
        kind: SliceKind::Admin {
            capabilities: vec!["CAP_NET_RAW".into()],
            host_pid_view: false,
        },
        per_sliver: Resources {
            cpu_millis: 500,
            memory_bytes: 256 << 20,
            disk_bytes: 1 << 30,
            egress_kbps: 10_000,
            ports: 2,
        },
        max_slivers: 4,
        net: NetGrant {
            raw: true,
            egress_cap: true,
        },
        max_duration_secs: 3600,
        max_price: Some(1_000_000),
    }
}

fn signed_grant() -> Signed<AskGrant> {
    Signed::sign(&test_key(50), &grant())
}

fn ticket_request(ask: Option<Signed<AskGrant>>) -> TicketRequest {
    TicketRequest {
        slice: "princeton_codeen".into(),
        principal: test_key(50).public(),
        principal_cert: None,
        kind: grant().kind,
        slivers: vec![SliverAsk {
            node: test_key(1).public(),
            resources: grant().per_sliver,
        }],
        not_before: T0,
        not_after: T0 + 3600,
        max_price: Some(1_000_000),
        net: grant().net,
        ask: ask.map(Box::new),
    }
}

#[test]
fn the_signed_ask_golden_vector_is_byte_exact_and_verifies_as_the_principals() {
    let signed = signed_grant();
    assert_eq!(signed.domain, "planetmesh/ask-grant/v1");
    check_golden("ask_grant", &signed.to_bytes());
    let back = Signed::<AskGrant>::from_bytes(&read("ask_grant")).unwrap();
    assert_eq!(back.verify_by(&test_key(50).public()).unwrap(), grant());
    // It is no other signed type, and no one else's.
    assert!(
        Signed::<Lease>::from_bytes(&read("ask_grant"))
            .unwrap()
            .verify()
            .is_err()
    );
    assert!(back.verify_by(&test_key(30).public()).is_err());
}

#[test]
fn a_get_tickets_carrying_an_ask_is_byte_exact_and_one_without_encodes_as_before() {
    let with = AgentRequest::GetTickets(ticket_request(Some(signed_grant())));
    check_golden("get_tickets_with_ask", &encode(&with));
    assert_eq!(
        decode::<AgentRequest>(&read("get_tickets_with_ask")).unwrap(),
        with
    );

    // Without an ask, the field is left out: the bytes are those of the request as it was.
    #[derive(Serialize)]
    struct TicketRequestBefore {
        slice: String,
        principal: PublicKey,
        principal_cert: Option<Signed<MembershipCert>>,
        kind: SliceKind,
        slivers: Vec<SliverAsk>,
        not_before: u64,
        not_after: u64,
        max_price: Option<u64>,
        net: NetGrant,
    }
    let now = ticket_request(None);
    let before = TicketRequestBefore {
        slice: now.slice.clone(),
        principal: now.principal,
        principal_cert: None,
        kind: now.kind.clone(),
        slivers: now.slivers.clone(),
        not_before: now.not_before,
        not_after: now.not_after,
        max_price: now.max_price,
        net: now.net,
    };
    assert_eq!(encode(&now), encode(&before));
    // And an old request decodes, without an ask (which agents then refuse by rule).
    assert_eq!(decode::<TicketRequest>(&encode(&before)).unwrap(), now);
}

#[test]
fn a_slice_ask_carries_the_signed_ask_and_older_brokers_can_skip_it() {
    let request = SliceRequest {
        name: "princeton_codeen".into(),
        principal: test_key(50).public(),
        principal_federation: "plc".into(),
        kind: SliceKind::Regular,
        per_sliver: grant().per_sliver,
        target: SliverTarget::Count(4),
        constraints: SliceConstraints::default(),
        duration_secs: 3600,
        mode: AcquireMode::AllOrNothing,
        net: NetGrant::default(),
    };
    let plain = BrokerCall::AcquireSlice(SliceAsk::new(request.clone(), None));
    let signed =
        BrokerCall::AcquireSlice(SliceAsk::new(request.clone(), None).with_ask(signed_grant()));
    let bytes = encode(&signed);
    assert_eq!(decode::<BrokerCall>(&bytes).unwrap(), signed);
    // A broker that predates asks reads the same call as the plain request.
    assert_eq!(
        decode::<protocol::BrokerRequest>(&bytes).unwrap(),
        protocol::BrokerRequest::AcquireSlice(request)
    );
    assert_ne!(bytes, encode(&plain));
}

fn any_resources() -> impl Strategy<Value = Resources> {
    (
        0u64..4000,
        0u64..(8 << 30),
        0u64..(64 << 30),
        0u64..100_000,
        0u32..8,
    )
        .prop_map(
            |(cpu_millis, memory_bytes, disk_bytes, egress_kbps, ports)| Resources {
                cpu_millis,
                memory_bytes,
                disk_bytes,
                egress_kbps,
                ports,
            },
        )
}

fn any_grant() -> impl Strategy<Value = AskGrant> {
    (
        "[0-9a-f]{1,64}",
        "[a-z]{1,12}_[a-z]{1,12}",
        1u8..=255,
        1u8..=255,
        (T0 - 1000..T0 + 1000, 1u64..=ask::MAX_ASK_VALIDITY_SECS),
        any_resources(),
        0u32..64,
        (any::<bool>(), any::<bool>()),
        1u64..30 * 86_400,
        proptest::option::of(0u64..u64::MAX),
    )
        .prop_map(
            |(
                id,
                slice,
                principal,
                broker,
                (start, valid),
                per_sliver,
                max,
                (raw, cap),
                d,
                price,
            )| {
                AskGrant {
                    id,
                    slice,
                    principal: test_key(principal).public(),
                    broker: test_key(broker).public(),
                    not_before: start,
                    not_after: start + valid,
                    kind: SliceKind::Regular,
                    per_sliver,
                    max_slivers: max,
                    net: NetGrant {
                        raw,
                        egress_cap: cap,
                    },
                    max_duration_secs: d,
                    max_price: price,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any ask survives encoding, signing and decoding; verifies only under its signer; and a
    /// change to any byte of its body breaks the signature.
    #[test]
    fn any_signed_ask_round_trips_and_resists_tampering(g in any_grant(), flip in any::<usize>()) {
        let key = test_key(g.principal.as_bytes()[0] | 1);
        let signed = Signed::sign(&key, &g);
        let back = Signed::<AskGrant>::from_bytes(&signed.to_bytes()).unwrap();
        prop_assert_eq!(back.verify_by(&key.public()).unwrap(), g.clone());
        let mut tampered = back.clone();
        let at = flip % tampered.body.len();
        tampered.body[at] ^= 0x01;
        prop_assert!(tampered.verify().is_err());
    }

    /// The ask covering a request admits it, and the same request with one sliver more, or
    /// one sliver larger, is refused.
    #[test]
    fn the_covering_ask_admits_its_request_and_nothing_wider(
        slivers in proptest::collection::vec(any_resources(), 1..6),
        duration in 1u64..86_400,
    ) {
        let request = TicketRequest {
            slice: "plc_s".into(),
            principal: test_key(50).public(),
            principal_cert: None,
            kind: SliceKind::Regular,
            slivers: slivers
                .iter()
                .enumerate()
                .map(|(n, r)| SliverAsk { node: test_key(n as u8 + 1).public(), resources: *r })
                .collect(),
            not_before: T0,
            not_after: T0 + duration,
            max_price: None,
            net: NetGrant::default(),
            ask: None,
        };
        let g = AskGrant::covering(&request, test_key(30).public(), T0, 300);
        prop_assert_eq!(g.check_request(&request, 0, T0), Ok(()));
        let mut more = request.clone();
        more.slivers.push(more.slivers[0].clone());
        prop_assert!(g.check_request(&more, 0, T0).is_err());
        let mut larger = request.clone();
        larger.slivers[0].resources.cpu_millis = g.per_sliver.cpu_millis + 1;
        prop_assert!(g.check_request(&larger, 0, T0).is_err());
        prop_assert!(g.check_request(&request, 1, T0).is_err());
    }
}
