//! The node protocol's lease events and log chunks on the wire: a golden vector of an
//! `Events` answer (fixed values), round trips of both requests and answers, and an event
//! kind from a newer node decoding as `Other` instead of failing the whole answer.
//!
//! Regenerate the vector after an intended format change with
//! `PLANETMESH_BLESS=1 cargo test -p capability-schema --test lease_events`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::path::PathBuf;

use capability_schema::codec::{decode, encode};
use capability_schema::protocol::{
    Envelope, EventQuery, LeaseEvent, LeaseEventKind, LeaseEvents, LogChunk, NodeRequest,
    NodeResponse, Reply,
};

const T0_MS: u64 = 1_780_000_000_000;

fn events() -> LeaseEvents {
    let event =
        |seq: u64, kind: LeaseEventKind, end: Option<u64>, reason: Option<&str>| LeaseEvent {
            seq,
            at_ms: T0_MS + seq * 1500,
            lease_id: "0123456789abcdef0123456789abcdef".into(),
            slice: "plc-site0_demo".into(),
            kind,
            end,
            reason: reason.map(str::to_owned),
        };
    LeaseEvents {
        events: vec![
            event(1, LeaseEventKind::Created, Some(1_780_000_600), None),
            event(2, LeaseEventKind::Renewed, Some(1_780_003_600), None),
            event(
                3,
                LeaseEventKind::Frozen,
                None,
                Some("over disk limit: 2.0 GiB of 1.0 GiB"),
            ),
            event(4, LeaseEventKind::Thawed, None, None),
            event(
                5,
                LeaseEventKind::Ended,
                None,
                Some("principal revoked by \"plc\" list v3 (issued at 1780000100)"),
            ),
        ],
        more: false,
    }
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.cbor"))
}

#[test]
fn lease_events_golden_vector_is_byte_exact() {
    let answer: Envelope<Reply<NodeResponse>> = Envelope {
        request_id: 7,
        body: Ok(NodeResponse::Events(events())),
    };
    let bytes = encode(&answer);
    let path = golden("lease_events");
    if std::env::var_os("PLANETMESH_BLESS").is_some() {
        std::fs::write(&path, &bytes).unwrap();
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate with PLANETMESH_BLESS=1",
            path.display()
        )
    });
    assert!(
        expected == bytes,
        "lease events: encoding changed ({} bytes now, {} in {})",
        bytes.len(),
        expected.len(),
        path.display()
    );
    let back: Envelope<Reply<NodeResponse>> = decode(&expected).unwrap();
    assert_eq!(back, answer);
}

#[test]
fn requests_and_answers_round_trip() {
    let requests = [
        NodeRequest::Events(EventQuery::default()),
        NodeRequest::Events(EventQuery {
            slice: Some("plc-site0_demo".into()),
            after: 41,
        }),
        NodeRequest::LogsFrom {
            lease_id: "l".into(),
            offset: 1 << 33,
            max_bytes: LogChunk::MAX_BYTES,
        },
    ];
    for request in requests {
        let envelope = Envelope {
            request_id: 1,
            body: request,
        };
        let back: Envelope<NodeRequest> = decode(&encode(&envelope)).unwrap();
        assert_eq!(back, envelope);
    }
    let answers = [
        NodeResponse::Events(events()),
        NodeResponse::Events(LeaseEvents::default()),
        NodeResponse::LogChunk(LogChunk {
            size: 12,
            bytes: b"hello\nworld\n".to_vec(),
        }),
    ];
    for answer in answers {
        let back: NodeResponse = decode(&encode(&answer)).unwrap();
        assert_eq!(back, answer);
    }
}

#[test]
fn an_unknown_event_kind_decodes_as_other() {
    // A newer node's event kind: the same map with a kind this build has never heard of.
    let mut value: ciborium::Value = decode(&encode(&events().events[0])).unwrap();
    let ciborium::Value::Map(entries) = &mut value else {
        panic!("an event is a map: {value:?}");
    };
    for (k, v) in entries.iter_mut() {
        if k.as_text() == Some("kind") {
            *v = ciborium::Value::Text("migrated".into());
        }
    }
    let event: LeaseEvent = decode(&encode(&value)).unwrap();
    assert_eq!(event.kind, LeaseEventKind::Other);
    assert_eq!(event.seq, 1);
    // Every known kind keeps its name on the wire.
    for kind in [
        LeaseEventKind::Created,
        LeaseEventKind::Renewed,
        LeaseEventKind::Frozen,
        LeaseEventKind::Thawed,
        LeaseEventKind::Released,
        LeaseEventKind::Reaped,
        LeaseEventKind::Lost,
        LeaseEventKind::Ended,
    ] {
        let text: ciborium::Value = decode(&encode(&kind)).unwrap();
        assert_eq!(text.as_text(), Some(kind.name()));
    }
}
