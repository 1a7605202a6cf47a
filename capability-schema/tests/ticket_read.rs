//! Reading a ticket as its holder does, without knowing its issuer (`Ticket::read`): the
//! contents after attenuations and delegations are the node's, an altered ticket is refused,
//! and an authority block naming another issuer than its signer is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::collections::BTreeSet;

use biscuit_auth::Biscuit;
use capability_schema::identity::test_key;
use capability_schema::resources::Resources;
use capability_schema::slice::SliceKind;
use capability_schema::ticket::{
    Attenuation, Operation, Ticket, TicketRefusal, TicketSpec, TrustedIssuers, Window, key_hint,
};

fn spec(kind: SliceKind) -> TicketSpec {
    TicketSpec {
        federation: "plc".into(),
        node: test_key(2).public(),
        slice: "site_exp".into(),
        kind,
        resources: Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            disk_bytes: 1 << 31,
            egress_kbps: 10_000,
            ports: 2,
        },
        window: Window::new(1_700_000_000, 1_700_003_600),
        holder: test_key(3).public(),
        operations: Operation::ALL.into_iter().collect(),
        net: Default::default(),
    }
}

#[test]
fn a_holder_reads_what_the_node_reads_without_the_issuers_key() {
    let minted = Ticket::mint_priced(&test_key(1), &spec(SliceKind::Regular), 42).unwrap();
    let narrowed = minted
        .attenuate(&Attenuation {
            resources: Some(Resources {
                cpu_millis: 250,
                ..spec(SliceKind::Regular).resources
            }),
            window: Some(Window::new(1_700_000_000, 1_700_001_800)),
            operations: Some(BTreeSet::from([Operation::Redeem])),
        })
        .unwrap()
        .delegate(&test_key(3), &test_key(4).public())
        .unwrap();
    for ticket in [&minted, &narrowed] {
        let bytes = ticket.to_bytes().unwrap();
        let read = Ticket::read(&bytes).unwrap();
        let trusted =
            Ticket::from_bytes(&bytes, &TrustedIssuers::from_iter([test_key(1).public()])).unwrap();
        assert_eq!(read.issuer(), test_key(1).public());
        assert_eq!(read.contents().unwrap(), trusted.contents().unwrap());
        let text = Ticket::read_text(&format!("  {}\n", ticket.to_text().unwrap())).unwrap();
        assert_eq!(text.contents().unwrap(), trusted.contents().unwrap());
    }
    let c = Ticket::read(&narrowed.to_bytes().unwrap())
        .unwrap()
        .contents()
        .unwrap();
    assert_eq!(c.grant.cpu_millis, 250);
    assert_eq!(c.not_after, 1_700_001_800);
    assert_eq!(c.operations, BTreeSet::from([Operation::Redeem]));
    assert_eq!(c.holders, vec![test_key(3).public(), test_key(4).public()]);
    assert_eq!(c.price, Some(42));

    // Admin tickets (capabilities, a set) read back too.
    let admin = SliceKind::Admin {
        capabilities: vec!["CAP_NET_ADMIN".to_owned()],
        host_pid_view: true,
    };
    let minted = Ticket::mint(&test_key(1), &spec(admin.clone())).unwrap();
    let read = Ticket::read(&minted.to_bytes().unwrap()).unwrap();
    assert_eq!(read.contents().unwrap().kind, admin);
}

#[test]
fn an_altered_ticket_or_a_borrowed_issuer_name_is_refused() {
    let minted = Ticket::mint(&test_key(1), &spec(SliceKind::Regular)).unwrap();
    let mut bytes = minted.to_bytes().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(Ticket::read(&bytes).is_err());
    assert!(matches!(
        Ticket::read(b"not a ticket"),
        Err(TicketRefusal::Malformed { .. } | TicketRefusal::Truncated)
    ));
    assert!(matches!(
        Ticket::read_text("!!!"),
        Err(TicketRefusal::Malformed { .. })
    ));

    // Another key signs the agent's authority block and claims the agent's key id: the
    // named issuer's key does not verify it. Without the key id, no key is tried at all.
    let source = minted.as_biscuit().print_block_source(0).unwrap();
    let resign = |hint: Option<u32>| {
        let mut builder = Biscuit::builder().code(&source).unwrap();
        if let Some(hint) = hint {
            builder = builder.root_key_id(hint);
        }
        builder
            .build(&test_key(7).to_biscuit())
            .unwrap()
            .to_vec()
            .unwrap()
    };
    assert_eq!(
        Ticket::read(&resign(Some(key_hint(&test_key(1).public())))).unwrap_err(),
        TicketRefusal::BadSignature
    );
    assert!(matches!(
        Ticket::read(&resign(None)).unwrap_err(),
        TicketRefusal::UnknownIssuer { .. }
    ));
}
