//! Fuzz target: untrusted bytes as a ticket presented to a node, three ways (chosen by the
//! first byte): raw ticket bytes, the base64 text form, or Datalog source appended as a block
//! to a valid ticket (so the evaluation under limits, not only the parser, sees hostile
//! input); and the same bytes read as a holder reads a ticket it was handed
//! (`Ticket::read`, against the issuer the ticket names). Parsing and authorization must never
//! panic, and the size cap must hold.
#![no_main]

use std::sync::LazyLock;

use biscuit_auth::builder::BlockBuilder;
use capability_schema::identity::test_key;
use capability_schema::resources::Resources;
use capability_schema::slice::SliceKind;
use capability_schema::ticket::{
    MAX_TICKET_BYTES, Operation, Ticket, TicketRefusal, TicketSpec, TicketUse, TicketVerifier,
    TrustedIssuers, Window,
};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_700_000_000;

static VERIFIER: LazyLock<TicketVerifier> = LazyLock::new(|| {
    let issuers: TrustedIssuers = [test_key(1).public()].into_iter().collect();
    TicketVerifier::new(issuers, test_key(2).public())
});

static VALID: LazyLock<Ticket> = LazyLock::new(|| {
    let spec = TicketSpec {
        federation: "plc".into(),
        node: test_key(2).public(),
        slice: "fuzz".into(),
        kind: SliceKind::Regular,
        resources: Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            disk_bytes: 1 << 30,
            egress_kbps: 1000,
            ports: 0,
        },
        window: Window::new(NOW - 60, NOW + 60),
        holder: test_key(3).public(),
        operations: Operation::ALL.into_iter().collect(),
        net: Default::default(),
    };
    Ticket::mint(&test_key(1), &spec).expect("a valid spec mints")
});

fn present(bytes: &[u8]) -> Result<(), TicketRefusal> {
    let request = TicketUse {
        operation: Operation::Redeem,
        resources: Resources {
            cpu_millis: 10,
            ..Resources::ZERO
        },
        window: None,
    };
    VERIFIER
        .authorize(bytes, &test_key(3).public(), NOW, &request)
        .map(|_| ())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let result = present(rest);
            let read = Ticket::read(rest).and_then(|t| t.contents());
            if rest.len() > MAX_TICKET_BYTES {
                assert!(matches!(result, Err(TicketRefusal::TooLarge { .. })));
                assert!(matches!(read, Err(TicketRefusal::TooLarge { .. })));
            }
        }
        1 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = Ticket::from_text(text, VERIFIER.issuers()).map(|t| t.contents());
                let _ = Ticket::read_text(text).map(|t| t.contents());
            }
        }
        _ => {
            let Ok(code) = std::str::from_utf8(rest) else {
                return;
            };
            let Ok(block) = BlockBuilder::new().code(code) else {
                return;
            };
            let Ok(token) = VALID.as_biscuit().append(block) else {
                return;
            };
            let Ok(bytes) = token.to_vec() else { return };
            let _ = present(&bytes);
            let _ = Ticket::read(&bytes).map(|t| t.contents());
        }
    }
});
