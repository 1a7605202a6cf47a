//! Ticket tests: every refusal a node can return, the accepted path through attenuations and a
//! delegation, a golden vector, and property tests (attenuation never widens; random or
//! mutated bytes never panic and are never accepted).
//!
//! The golden vector is made with fixed keys, fixed times and a seeded random source for the
//! next-block keys, so its bytes are reproducible. After an intended format change regenerate
//! it with `PLANETMESH_BLESS=1 cargo test -p capability-schema --test ticket`. The golden
//! vector is a priced ticket (format 2); `ticket_v1_*` is the same chain minted without a
//! price (format 1, the bytes tickets had before prices were stated), kept to prove that
//! unpriced minting and reading such tickets are unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use biscuit_auth::Biscuit;
use biscuit_auth::builder::BlockBuilder;
use capability_schema::identity::{PublicKey, SecretKey, test_key};
use capability_schema::resources::{ResourceKind, Resources};
use capability_schema::slice::SliceKind;
use capability_schema::ticket::{
    Attenuation, LimitKind, MAX_TICKET_BYTES, Minter, Operation, Ticket, TicketContents,
    TicketError, TicketField, TicketLimits, TicketRefusal, TicketSpec, TicketUse, TicketVerifier,
    TrustedIssuers, VerifiedTicket, Window, key_hint,
};
use proptest::prelude::*;
use rand_core::{CryptoRng, RngCore};

const NOW: u64 = 1_700_000_000;
const NOT_BEFORE: u64 = NOW - 60;
const NOT_AFTER: u64 = NOW + 3600;
const MIB: u64 = 1 << 20;
/// The price the golden ticket states, in micro-credits for its window.
const PRICE: u64 = 1_234_567;

fn agent() -> SecretKey {
    test_key(1)
}
fn node() -> SecretKey {
    test_key(2)
}
fn alice() -> SecretKey {
    test_key(3)
}
fn bob() -> SecretKey {
    test_key(4)
}
fn carol() -> SecretKey {
    test_key(5)
}
fn mallory() -> SecretKey {
    test_key(9)
}

fn grant() -> Resources {
    Resources {
        cpu_millis: 2000,
        memory_bytes: 1024 * MIB,
        disk_bytes: 4096 * MIB,
        egress_kbps: 10_000,
        ports: 0,
    }
}

fn spec() -> TicketSpec {
    TicketSpec {
        federation: "plc".into(),
        node: node().public(),
        slice: "princeton_codeen".into(),
        kind: SliceKind::Regular,
        resources: grant(),
        window: Window::new(NOT_BEFORE, NOT_AFTER),
        holder: alice().public(),
        operations: Operation::ALL.into_iter().collect(),
        net: Default::default(),
    }
}

fn mint() -> Ticket {
    Ticket::mint(&agent(), &spec()).unwrap()
}

fn issuers() -> TrustedIssuers {
    [agent().public(), test_key(6).public()]
        .into_iter()
        .collect()
}

/// The node's verifier, with the default limits except time: unoptimized test builds on a
/// loaded host can exceed the 10 ms default, and time is tested on its own below.
fn verifier() -> TicketVerifier {
    TicketVerifier::new(issuers(), node().public()).with_limits(TicketLimits {
        max_time: Duration::from_secs(30),
        ..TicketLimits::default()
    })
}

fn ask(resources: Resources) -> TicketUse {
    TicketUse {
        operation: Operation::Redeem,
        resources,
        window: None,
    }
}

fn small() -> Resources {
    Resources {
        cpu_millis: 500,
        memory_bytes: 128 * MIB,
        disk_bytes: 256 * MIB,
        egress_kbps: 1000,
        ports: 0,
    }
}

fn bytes(ticket: &Ticket) -> Vec<u8> {
    ticket.to_bytes().unwrap()
}

/// Authorizes `ticket` (by bytes) as presented by `presenter` at `NOW`.
fn present(
    ticket: &Ticket,
    presenter: &SecretKey,
    asked: Resources,
) -> Result<VerifiedTicket, TicketRefusal> {
    verifier().authorize(&bytes(ticket), &presenter.public(), NOW, &ask(asked))
}

/// Appends a raw first-party block written in Datalog (what an attacker holding the bytes can do).
fn append_raw(ticket: &Ticket, code: &str) -> Vec<u8> {
    let block = BlockBuilder::new().code(code).unwrap();
    ticket.as_biscuit().append(block).unwrap().to_vec().unwrap()
}

/// Appends a raw third-party block signed by `signer`.
fn append_third_party(ticket: &Ticket, signer: &SecretKey, code: &str) -> Vec<u8> {
    let token = ticket.as_biscuit();
    let keys = signer.to_biscuit();
    let block = BlockBuilder::new().code(code).unwrap();
    let signed = token
        .third_party_request()
        .unwrap()
        .create_block(&keys.private(), block)
        .unwrap();
    token
        .append_third_party(keys.public(), signed)
        .unwrap()
        .to_vec()
        .unwrap()
}

fn authorize_bytes(bytes: &[u8], presenter: &SecretKey) -> Result<VerifiedTicket, TicketRefusal> {
    verifier().authorize(bytes, &presenter.public(), NOW, &ask(small()))
}

/// A valid priced ticket narrowed twice and delegated from alice to bob.
fn two_attenuations_and_delegation(rng: &mut impl CryptoRngCore) -> [Ticket; 4] {
    let minted = Ticket::mint_priced_with_rng(&agent(), &spec(), PRICE, rng).unwrap();
    narrow_and_delegate(minted, rng)
}

/// The same chain from a ticket that states no price (format 1).
fn unpriced_two_attenuations_and_delegation(rng: &mut impl CryptoRngCore) -> [Ticket; 4] {
    let minted = Ticket::mint_with_rng(&agent(), &spec(), rng).unwrap();
    narrow_and_delegate(minted, rng)
}

fn narrow_and_delegate(minted: Ticket, rng: &mut impl CryptoRngCore) -> [Ticket; 4] {
    let narrowed = minted
        .attenuate_with_rng(
            &Attenuation {
                resources: Some(Resources {
                    cpu_millis: 1000,
                    memory_bytes: 512 * MIB,
                    disk_bytes: 4096 * MIB,
                    egress_kbps: 5000,
                    ports: 0,
                }),
                ..Attenuation::default()
            },
            rng,
        )
        .unwrap();
    let shorter = narrowed
        .attenuate_with_rng(
            &Attenuation {
                resources: Some(Resources {
                    cpu_millis: 1000,
                    memory_bytes: 512 * MIB,
                    disk_bytes: 1024 * MIB,
                    egress_kbps: 5000,
                    ports: 0,
                }),
                window: Some(Window::new(NOW - 10, NOW + 1800)),
                operations: Some([Operation::Redeem].into_iter().collect()),
            },
            rng,
        )
        .unwrap();
    let delegated = shorter
        .delegate_with_rng(&alice(), &bob().public(), rng)
        .unwrap();
    [minted, narrowed, shorter, delegated]
}

trait CryptoRngCore: RngCore + CryptoRng {}
impl<T: RngCore + CryptoRng> CryptoRngCore for T {}

/// A deterministic random source for golden vectors (splitmix64). Test-only: the marker
/// `CryptoRng` is a lie here, which is fine for keys that only need to be reproducible.
struct SeededRng(u64);

impl RngCore for SeededRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let n = chunk.len();
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..n]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for SeededRng {}

// ---- accepted ---------------------------------------------------------------------------

#[test]
fn fresh_ticket_is_accepted_with_its_grant() {
    let ticket = mint();
    let verified = present(&ticket, &alice(), grant()).unwrap();
    assert_eq!(
        verified,
        VerifiedTicket {
            ticket_id: ticket.id(),
            issuer: agent().public(),
            federation: "plc".into(),
            node: node().public(),
            slice: "princeton_codeen".into(),
            kind: SliceKind::Regular,
            grant: grant(),
            not_before: NOT_BEFORE,
            not_after: NOT_AFTER,
            holder: alice().public(),
            operations: Operation::ALL.into_iter().collect(),
            price: None,
            net: Default::default(),
        }
    );
}

#[test]
fn the_agreed_price_is_stated_by_the_authority_and_read_by_nodes_and_holders() {
    let priced = Ticket::mint_priced(&agent(), &spec(), PRICE).unwrap();
    let verified = present(&priced, &alice(), grant()).unwrap();
    assert_eq!(verified.price, Some(PRICE));
    assert_eq!(priced.contents().unwrap().price, Some(PRICE));
    // Free is a price too, and distinct from stating none.
    let free = Ticket::mint_priced(&agent(), &spec(), 0).unwrap();
    assert_eq!(present(&free, &alice(), grant()).unwrap().price, Some(0));
    assert_eq!(present(&mint(), &alice(), grant()).unwrap().price, None);
    // The price survives attenuation and delegation unchanged.
    let [_, _, _, delegated] = two_attenuations_and_delegation(&mut rand_core::OsRng);
    assert_eq!(
        present(&delegated, &bob(), small()).unwrap().price,
        Some(PRICE)
    );
    let source = priced.as_biscuit().print_block_source(0).unwrap();
    assert!(source.contains("\"version\": 2"), "{source}");
    assert!(source.contains(&format!("\"price\": {PRICE}")), "{source}");
    // It must fit a Datalog integer.
    assert_eq!(
        Ticket::mint_priced(&agent(), &spec(), u64::MAX).unwrap_err(),
        TicketError::OutOfRange {
            field: "price",
            value: u64::MAX
        }
    );
}

#[test]
fn no_block_can_change_the_price_and_each_format_has_one_shape() {
    let priced = Ticket::mint_priced(&agent(), &spec(), PRICE).unwrap();
    // A later block restating the ticket at another price is refused.
    let raw = append_raw(&priced, &restated(&priced, "price", "1"));
    assert_eq!(
        authorize_bytes(&raw, &alice()).unwrap_err(),
        TicketRefusal::Widened {
            field: TicketField::Price
        }
    );
    // Attenuations cannot speak of the price at all.
    let raw = append_raw(&priced, "attenuation({\"price\": 1});");
    assert!(matches!(
        authorize_bytes(&raw, &alice()),
        Err(TicketRefusal::Malformed { .. })
    ));
    // Authority blocks the agent signed but in the wrong shape: format 2 without a price,
    // format 1 with one, an unknown format.
    let resigned = |code: String| {
        Biscuit::builder()
            .code(&code)
            .unwrap()
            .root_key_id(key_hint(&agent().public()))
            .build(&agent().to_biscuit())
            .unwrap()
            .to_vec()
            .unwrap()
    };
    let priced_source = priced.as_biscuit().print_block_source(0).unwrap();
    let unpriced_source = mint().as_biscuit().print_block_source(0).unwrap();
    let without_price = priced_source.replace(&format!(", \"price\": {PRICE}"), "");
    assert_ne!(without_price, priced_source);
    let cases = [
        (without_price, "price"),
        (
            unpriced_source.replace("\"operations\":", "\"price\": 5, \"operations\":"),
            "version 1",
        ),
        (
            priced_source.replace("\"version\": 2", "\"version\": 3"),
            "unsupported ticket format 3",
        ),
    ];
    for (code, says) in cases {
        match authorize_bytes(&resigned(code.clone()), &alice()) {
            Err(TicketRefusal::Malformed { reason }) => {
                assert!(reason.contains(says), "{code}: {reason}")
            }
            other => panic!("{code}: {other:?}"),
        }
    }
    // The same re-signed source, unchanged, is accepted: the cases above fail on shape alone.
    assert_eq!(
        authorize_bytes(&resigned(priced_source), &alice())
            .unwrap()
            .price,
        Some(PRICE)
    );
}

#[test]
fn two_attenuations_and_a_delegation_narrow_the_grant_and_move_the_holder() {
    let tickets = two_attenuations_and_delegation(&mut rand_core::OsRng);
    let delegated = &tickets[3];
    let asked = Resources {
        cpu_millis: 1000,
        memory_bytes: 512 * MIB,
        disk_bytes: 1024 * MIB,
        egress_kbps: 5000,
        ports: 0,
    };
    let verified = present(delegated, &bob(), asked).unwrap();
    assert_eq!(
        verified.grant, asked,
        "effective grant is the minimum of every block"
    );
    assert_eq!(
        (verified.not_before, verified.not_after),
        (NOW - 10, NOW + 1800)
    );
    assert_eq!(verified.holder, bob().public());
    assert_eq!(
        verified.operations,
        [Operation::Redeem].into_iter().collect()
    );
    assert_eq!(verified.issuer, agent().public());

    // Ids are equal across every copy, also after a round trip through bytes and text.
    let id = tickets[0].id();
    for t in &tickets {
        assert_eq!(t.id(), id);
        assert_eq!(Ticket::from_bytes(&bytes(t), &issuers()).unwrap().id(), id);
        assert_eq!(
            Ticket::from_text(&t.to_text().unwrap(), &issuers())
                .unwrap()
                .id(),
            id
        );
    }
    assert_eq!(verified.ticket_id, id);
    assert_eq!(
        id.to_string()
            .parse::<capability_schema::TicketId>()
            .unwrap(),
        id
    );

    // Alice no longer holds it; one unit over the narrowed grant is refused.
    assert_eq!(
        present(delegated, &alice(), asked).unwrap_err(),
        TicketRefusal::WrongPresenter {
            holder: bob().public(),
            presenter: alice().public()
        }
    );
    let over = Resources {
        egress_kbps: 5001,
        ..asked
    };
    assert_eq!(
        present(delegated, &bob(), over).unwrap_err(),
        TicketRefusal::OverAsked {
            kind: ResourceKind::Egress,
            asked: 5001,
            granted: 5000
        }
    );

    // The holder chain is visible to holders.
    let contents: TicketContents = delegated.contents().unwrap();
    assert_eq!(contents.holders, vec![alice().public(), bob().public()]);
}

#[test]
fn a_chain_of_delegations_ends_with_the_last_holder() {
    let ticket = mint()
        .delegate(&alice(), &bob().public())
        .unwrap()
        .attenuate(&Attenuation {
            resources: Some(small()),
            ..Attenuation::default()
        })
        .unwrap()
        .delegate(&bob(), &carol().public())
        .unwrap();
    let verified = present(&ticket, &carol(), small()).unwrap();
    assert_eq!(verified.holder, carol().public());
    assert_eq!(verified.grant, small());
    for earlier in [alice(), bob()] {
        assert!(matches!(
            present(&ticket, &earlier, small()),
            Err(TicketRefusal::WrongPresenter { .. })
        ));
    }
}

#[test]
fn admin_tickets_carry_their_capabilities() {
    let kind = SliceKind::Admin {
        capabilities: vec!["CAP_NET_ADMIN".into(), "CAP_NET_RAW".into()],
        host_pid_view: true,
    };
    let ticket = Ticket::mint(
        &agent(),
        &TicketSpec {
            kind: kind.clone(),
            ..spec()
        },
    )
    .unwrap();
    assert_eq!(present(&ticket, &alice(), small()).unwrap().kind, kind);
    let bad = SliceKind::Admin {
        capabilities: vec!["net_admin".into()],
        host_pid_view: false,
    };
    assert_eq!(
        Ticket::mint(
            &agent(),
            &TicketSpec {
                kind: bad,
                ..spec()
            }
        )
        .unwrap_err(),
        TicketError::BadCapability("net_admin".into())
    );
}

#[test]
fn lease_windows_inside_the_ticket_are_accepted_others_refused() {
    let ticket = mint();
    let v = verifier();
    let mut asked = ask(small());
    asked.window = Some(Window::new(NOW, NOT_AFTER));
    assert!(
        v.authorize(&bytes(&ticket), &alice().public(), NOW, &asked)
            .is_ok()
    );
    asked.window = Some(Window::new(NOW, NOT_AFTER + 1));
    assert_eq!(
        v.authorize(&bytes(&ticket), &alice().public(), NOW, &asked)
            .unwrap_err(),
        TicketRefusal::WindowNotGranted {
            asked: Window::new(NOW, NOT_AFTER + 1),
            granted: Window::new(NOT_BEFORE, NOT_AFTER)
        }
    );
}

// ---- refused: one test per check ----------------------------------------------------------

#[test]
fn ticket_from_an_untrusted_agent_is_refused() {
    let forged = Ticket::mint(&mallory(), &spec()).unwrap();
    let err = present(&forged, &alice(), small()).unwrap_err();
    assert_eq!(
        err,
        TicketRefusal::UnknownIssuer {
            key_hint: format!("{}…", mallory().public().short())
        }
    );
    assert!(err.to_string().contains("does not trust"), "{err}");
}

#[test]
fn ticket_resigned_under_a_trusted_agents_key_id_is_refused() {
    // Mallory copies the authority block, signs it with her own key and claims the agent's
    // root key id: the node checks it against the agent's key.
    let original = mint();
    let source = original.as_biscuit().print_block_source(0).unwrap();
    let resigned = Biscuit::builder()
        .code(&source)
        .unwrap()
        .root_key_id(key_hint(&agent().public()))
        .build(&mallory().to_biscuit())
        .unwrap();
    assert_eq!(
        authorize_bytes(&resigned.to_vec().unwrap(), &alice()).unwrap_err(),
        TicketRefusal::BadSignature
    );
}

#[test]
fn block_resealed_by_another_key_is_refused() {
    let ticket = mint()
        .attenuate(&Attenuation {
            resources: Some(small()),
            ..Attenuation::default()
        })
        .unwrap();
    let mut raw = bytes(&ticket);
    let signature = ticket.as_biscuit().revocation_identifiers()[1].clone();
    let at = raw
        .windows(signature.len())
        .position(|w| w == signature.as_slice())
        .unwrap();
    // Replace the block's signature by one from another key over the same bytes.
    let forged = mallory().sign(&raw[..at]);
    raw[at..at + 64].copy_from_slice(&forged);
    assert_eq!(
        authorize_bytes(&raw, &alice()).unwrap_err(),
        TicketRefusal::BadSignature
    );
}

#[test]
fn truncated_ticket_is_refused() {
    let raw = bytes(&two_attenuations_and_delegation(&mut rand_core::OsRng)[3]);
    assert_eq!(
        authorize_bytes(&raw[..raw.len() - 20], &bob()).unwrap_err(),
        TicketRefusal::Truncated
    );
    for cut in 0..raw.len() {
        let err = authorize_bytes(&raw[..cut], &bob()).unwrap_err();
        assert!(
            matches!(
                err,
                TicketRefusal::Truncated
                    | TicketRefusal::Malformed { .. }
                    | TicketRefusal::UnknownIssuer { .. }
            ),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn expired_and_not_yet_valid_tickets_are_refused() {
    let raw = bytes(&mint());
    let v = verifier();
    let at = |now| v.authorize(&raw, &alice().public(), now, &ask(small()));
    assert_eq!(
        at(NOT_AFTER).unwrap_err(),
        TicketRefusal::Expired {
            not_after: NOT_AFTER,
            now: NOT_AFTER
        }
    );
    assert_eq!(
        at(NOT_BEFORE - 1).unwrap_err(),
        TicketRefusal::NotYetValid {
            not_before: NOT_BEFORE,
            now: NOT_BEFORE - 1
        }
    );
    assert!(at(NOT_BEFORE).is_ok());
    assert!(at(NOT_AFTER - 1).is_ok());
}

#[test]
fn attenuated_window_is_what_counts() {
    let ticket = mint()
        .attenuate(&Attenuation {
            window: Some(Window::new(NOW, NOW + 60)),
            ..Attenuation::default()
        })
        .unwrap();
    let err = verifier()
        .authorize(&bytes(&ticket), &alice().public(), NOW + 60, &ask(small()))
        .unwrap_err();
    assert_eq!(
        err,
        TicketRefusal::Expired {
            not_after: NOW + 60,
            now: NOW + 60
        }
    );
}

#[test]
fn over_asked_resources_are_refused_naming_the_resource() {
    let asked = Resources {
        memory_bytes: 2048 * MIB,
        ..small()
    };
    let err = present(&mint(), &alice(), asked).unwrap_err();
    assert_eq!(
        err,
        TicketRefusal::OverAsked {
            kind: ResourceKind::Memory,
            asked: 2048 * MIB,
            granted: 1024 * MIB
        }
    );
    assert!(
        err.to_string()
            .contains("memory: 2GiB asked but the ticket grants only 1GiB"),
        "{err}"
    );
}

#[test]
fn ticket_for_another_node_is_refused() {
    let elsewhere = TicketVerifier::new(issuers(), test_key(7).public());
    let err = elsewhere
        .authorize(&bytes(&mint()), &alice().public(), NOW, &ask(small()))
        .unwrap_err();
    assert_eq!(
        err,
        TicketRefusal::WrongNode {
            ticket_node: node().public(),
            this_node: test_key(7).public()
        }
    );
}

#[test]
fn ticket_presented_by_someone_else_is_refused() {
    let err = present(&mint(), &mallory(), small()).unwrap_err();
    assert_eq!(
        err,
        TicketRefusal::WrongPresenter {
            holder: alice().public(),
            presenter: mallory().public()
        }
    );
}

#[test]
fn operation_outside_the_attenuated_set_is_refused() {
    let ticket = mint()
        .attenuate(&Attenuation {
            operations: Some([Operation::Renew].into_iter().collect()),
            ..Attenuation::default()
        })
        .unwrap();
    assert_eq!(
        present(&ticket, &alice(), small()).unwrap_err(),
        TicketRefusal::OperationNotAllowed {
            operation: Operation::Redeem,
            allowed: [Operation::Renew].into_iter().collect()
        }
    );
}

/// The authority's `ticket` fact with one entry replaced, as a forger would restate it.
fn restated(ticket: &Ticket, entry: &str, value: &str) -> String {
    let source = ticket.as_biscuit().print_block_source(0).unwrap();
    let start = source.find(&format!("\"{entry}\": ")).unwrap() + entry.len() + 4;
    let end = start + source[start..].find([',', '}']).unwrap();
    format!("{}{value}{}", &source[..start], &source[end..])
}

#[test]
fn forged_widening_blocks_are_refused() {
    let ticket = mint();
    let g = grant();
    let cases = [
        // Restating the authority's `ticket` with more.
        (
            restated(&ticket, "cpu_millis", "20000"),
            TicketField::Resources,
        ),
        (
            restated(&ticket, "not_after", &(NOT_AFTER + 86_400).to_string()),
            TicketField::Window,
        ),
        (
            restated(&ticket, "holder", &format!("\"{}\"", mallory().public())),
            TicketField::Holder,
        ),
        (
            restated(&ticket, "node", &format!("\"{}\"", test_key(7).public())),
            TicketField::Node,
        ),
        (restated(&ticket, "kind", "\"admin\""), TicketField::Kind),
        // Attenuations that claim more than the authority grants.
        (
            format!("attenuation({{\"cpu_millis\": {}}});", g.cpu_millis + 1),
            TicketField::Resources,
        ),
        (
            format!("attenuation({{\"not_before\": {}}});", NOT_BEFORE - 1),
            TicketField::Window,
        ),
        (
            format!("attenuation({{\"not_after\": {}}});", NOT_AFTER + 1),
            TicketField::Window,
        ),
    ];
    for (code, field) in cases {
        let raw = append_raw(&ticket, &code);
        assert_eq!(
            authorize_bytes(&raw, &alice()).unwrap_err(),
            TicketRefusal::Widened { field },
            "{code}"
        );
    }
    // Operations beyond a redeem-only ticket.
    let redeem_only = Ticket::mint(
        &agent(),
        &TicketSpec {
            operations: [Operation::Redeem].into_iter().collect(),
            ..spec()
        },
    )
    .unwrap();
    let raw = append_raw(
        &redeem_only,
        "attenuation({\"operations\": {\"redeem\", \"renew\"}});",
    );
    assert_eq!(
        authorize_bytes(&raw, &alice()).unwrap_err(),
        TicketRefusal::Widened {
            field: TicketField::Operations
        }
    );

    // Facts under other names are never read: they change nothing.
    let raw = append_raw(
        &ticket,
        "grant(999999, 999999, 999999, 999999); holder(\"x\"); not_after(9999999999);",
    );
    assert_eq!(
        authorize_bytes(&raw, &alice()).unwrap(),
        present(&ticket, &alice(), small()).unwrap()
    );
    // Restating the ticket unchanged, or deriving it by a rule, is harmless.
    let raw = append_raw(
        &ticket,
        &format!(
            "{} copy($t) <- ticket($t);",
            restated(&ticket, "cpu_millis", &g.cpu_millis.to_string())
        ),
    );
    assert_eq!(authorize_bytes(&raw, &alice()).unwrap().grant, g);

    // An attenuated ticket cannot be widened back: a later, larger attenuation adds nothing.
    let narrowed = ticket
        .attenuate(&Attenuation {
            resources: Some(small()),
            ..Attenuation::default()
        })
        .unwrap();
    let raw = append_raw(
        &narrowed,
        &format!(
            "attenuation({{\"cpu_millis\": {}, \"memory_bytes\": {}}});",
            g.cpu_millis, g.memory_bytes
        ),
    );
    assert_eq!(authorize_bytes(&raw, &alice()).unwrap().grant, small());
    // And the API refuses to write a widening block.
    assert_eq!(
        narrowed
            .attenuate(&Attenuation {
                resources: Some(grant()),
                ..Attenuation::default()
            })
            .unwrap_err(),
        TicketError::WouldWiden(TicketField::Resources)
    );
    assert_eq!(
        ticket
            .attenuate(&Attenuation {
                window: Some(Window::new(NOT_BEFORE, NOT_AFTER + 1)),
                ..Attenuation::default()
            })
            .unwrap_err(),
        TicketError::WouldWiden(TicketField::Window)
    );
    // Unknown restriction keys are refused rather than ignored.
    let raw = append_raw(&ticket, "attenuation({\"gpus\": 1});");
    assert!(matches!(
        authorize_bytes(&raw, &alice()),
        Err(TicketRefusal::Malformed { .. })
    ));
}

#[test]
fn delegation_signed_by_anyone_but_the_holder_is_refused() {
    let ticket = mint();
    // Mallory signs a delegation to herself.
    let raw = append_third_party(
        &ticket,
        &mallory(),
        &format!("delegate_to(\"{}\");", mallory().public()),
    );
    let err = authorize_bytes(&raw, &mallory()).unwrap_err();
    assert_eq!(
        err,
        TicketRefusal::DelegationNotByHolder {
            block: 1,
            signer: mallory().public().to_string(),
            holder: alice().public()
        }
    );
    // A delegation in an ordinary (unsigned) block.
    let raw = append_raw(
        &ticket,
        &format!("delegate_to(\"{}\");", mallory().public()),
    );
    assert_eq!(
        authorize_bytes(&raw, &mallory()).unwrap_err(),
        TicketRefusal::ForgedDelegation
    );
    // The API refuses too.
    assert_eq!(
        ticket
            .delegate(&mallory(), &mallory().public())
            .unwrap_err(),
        TicketError::NotHolder {
            holder: alice().public(),
            signer: mallory().public()
        }
    );
}

#[test]
fn holder_signed_block_must_name_one_next_holder() {
    let ticket = mint();
    let raw = append_third_party(
        &ticket,
        &alice(),
        &format!(
            "delegate_to(\"{}\"); delegate_to(\"{}\");",
            bob().public(),
            carol().public()
        ),
    );
    assert_eq!(
        authorize_bytes(&raw, &bob()).unwrap_err(),
        TicketRefusal::MalformedDelegation { block: 1 }
    );
    // Nor can it delegate to "whoever presents": the node states no key a rule could use.
    let raw = append_third_party(
        &ticket,
        &alice(),
        "delegate_to($k) <- presenter($k); delegate_to($k) <- request_node($k);",
    );
    assert_eq!(
        authorize_bytes(&raw, &mallory()).unwrap_err(),
        TicketRefusal::MalformedDelegation { block: 1 }
    );
}

#[test]
fn delegation_back_to_an_earlier_holder_is_refused() {
    let ticket = mint().delegate(&alice(), &bob().public()).unwrap();
    assert_eq!(
        ticket.delegate(&bob(), &alice().public()).unwrap_err(),
        TicketError::DelegationLoop(alice().public())
    );
    let raw = append_third_party(
        &ticket,
        &bob(),
        &format!("delegate_to(\"{}\");", alice().public()),
    );
    assert_eq!(
        authorize_bytes(&raw, &alice()).unwrap_err(),
        TicketRefusal::DelegationLoop {
            holder: alice().public()
        }
    );
}

#[test]
fn datalog_limits_bound_every_authorization() {
    let ticket = mint();
    let facts: String = (0..40).map(|i| format!("n({i});")).collect();
    let raw = append_raw(&ticket, &format!("{facts} pair($a, $b) <- n($a), n($b);"));
    assert_eq!(
        authorize_bytes(&raw, &alice()).unwrap_err(),
        TicketRefusal::LimitsExceeded {
            limit: LimitKind::Facts
        }
    );
    // A long chain of recursive rule applications hits the iteration limit.
    let edges: String = (0..40).map(|i| format!("next({i}, {});", i + 1)).collect();
    let raw = append_raw(
        &ticket,
        &format!(
            "{edges} reach($a, $b) <- next($a, $b); reach($a, $c) <- reach($a, $b), next($b, $c);"
        ),
    );
    let slow_ok = Duration::from_secs(30); // unoptimized test builds are slow; time is not tested here
    let tight = verifier().with_limits(TicketLimits {
        max_iterations: 5,
        max_time: slow_ok,
        ..TicketLimits::default()
    });
    assert_eq!(
        tight
            .authorize(&raw, &alice().public(), NOW, &ask(small()))
            .unwrap_err(),
        TicketRefusal::LimitsExceeded {
            limit: LimitKind::Iterations
        }
    );
    // And time: any rule that runs at all exceeds a zero budget.
    let facts: String = (0..5).map(|i| format!("n({i});")).collect();
    let raw = append_raw(&ticket, &format!("{facts} pair($a, $b) <- n($a), n($b);"));
    let no_time = verifier().with_limits(TicketLimits {
        max_time: Duration::ZERO,
        ..TicketLimits::default()
    });
    assert_eq!(
        no_time
            .authorize(&raw, &alice().public(), NOW, &ask(small()))
            .unwrap_err(),
        TicketRefusal::LimitsExceeded {
            limit: LimitKind::Time
        }
    );
}

#[test]
fn checks_added_by_blocks_are_enforced() {
    let ticket = mint();
    // A holder may add any check; the node states the request as facts for it.
    let raw = append_raw(
        &ticket,
        "check if request_resources($c, $m, $d, $e), $c <= 100;",
    );
    assert!(matches!(
        authorize_bytes(&raw, &alice()).unwrap_err(),
        TicketRefusal::BlockCheckFailed { block: 1, .. }
    ));
    let raw = append_raw(&ticket, "check if time($t), $t <= 2100-01-01T00:00:00Z;");
    assert!(authorize_bytes(&raw, &alice()).is_ok());
}

#[test]
fn oversized_and_overlong_tickets_are_refused() {
    let huge = vec![0u8; MAX_TICKET_BYTES + 1];
    assert_eq!(
        authorize_bytes(&huge, &alice()).unwrap_err(),
        TicketRefusal::TooLarge {
            size: MAX_TICKET_BYTES + 1,
            limit: MAX_TICKET_BYTES
        }
    );
    let mut ticket = mint();
    for _ in 0..3 {
        ticket = ticket
            .attenuate(&Attenuation {
                resources: Some(small()),
                ..Attenuation::default()
            })
            .unwrap();
    }
    let short = verifier().with_limits(TicketLimits {
        max_blocks: 3,
        ..TicketLimits::default()
    });
    assert_eq!(
        short
            .authorize(&bytes(&ticket), &alice().public(), NOW, &ask(small()))
            .unwrap_err(),
        TicketRefusal::TooManyBlocks {
            blocks: 4,
            limit: 3
        }
    );
}

#[test]
fn garbage_is_malformed_and_garbage_text_too() {
    assert!(matches!(
        authorize_bytes(b"hello", &alice()),
        Err(TicketRefusal::Malformed { .. })
    ));
    assert!(matches!(
        Ticket::from_text("not base64!", &issuers()),
        Err(TicketRefusal::Malformed { .. })
    ));
}

#[test]
fn mint_validates_its_inputs() {
    let cases = [
        (
            TicketSpec {
                slice: "".into(),
                ..spec()
            },
            "slice",
        ),
        (
            TicketSpec {
                federation: "a b".into(),
                ..spec()
            },
            "federation",
        ),
    ];
    for (s, field) in cases {
        assert!(
            matches!(Ticket::mint(&agent(), &s), Err(TicketError::BadName { field: f, .. }) if f == field)
        );
    }
    let huge = Resources {
        memory_bytes: u64::MAX,
        ..grant()
    };
    assert_eq!(
        Ticket::mint(
            &agent(),
            &TicketSpec {
                resources: huge,
                ..spec()
            }
        )
        .unwrap_err(),
        TicketError::OutOfRange {
            field: "memory_bytes",
            value: u64::MAX
        }
    );
    let empty = Window::new(NOW, NOW);
    assert_eq!(
        Ticket::mint(
            &agent(),
            &TicketSpec {
                window: empty,
                ..spec()
            }
        )
        .unwrap_err(),
        TicketError::EmptyWindow(empty)
    );
    assert_eq!(
        Ticket::mint(
            &agent(),
            &TicketSpec {
                operations: BTreeSet::new(),
                ..spec()
            }
        )
        .unwrap_err(),
        TicketError::NoOperations
    );
    assert_eq!(
        mint().attenuate(&Attenuation::default()).unwrap_err(),
        TicketError::EmptyAttenuation
    );
}

#[test]
fn refusals_travel_as_data_and_read_as_sentences() {
    let refusals = [
        TicketRefusal::OverAsked {
            kind: ResourceKind::Cpu,
            asked: 3000,
            granted: 2000,
        },
        TicketRefusal::WrongPresenter {
            holder: alice().public(),
            presenter: bob().public(),
        },
        TicketRefusal::Widened {
            field: TicketField::Window,
        },
        TicketRefusal::Expired {
            not_after: 5,
            now: 6,
        },
        TicketRefusal::LimitsExceeded {
            limit: LimitKind::Time,
        },
    ];
    for r in refusals {
        let back: TicketRefusal =
            capability_schema::decode(&capability_schema::encode(&r)).unwrap();
        assert_eq!(back, r);
        let sentence = r.to_string();
        assert!(
            sentence.contains(';'),
            "a refusal says what to do: {sentence}"
        );
        assert!(!r.code().is_empty());
    }
}

#[test]
fn trusted_issuers_can_change() {
    let agent_key = agent().public();
    let mut trusted = TrustedIssuers::new();
    assert!(trusted.is_empty());
    assert!(trusted.insert(agent_key));
    assert!(!trusted.insert(agent_key));
    assert_eq!(trusted.len(), 1);
    assert!(Ticket::from_bytes(&bytes(&mint()), &trusted).is_ok());
    assert!(trusted.remove(&agent_key));
    assert!(!trusted.contains(&agent_key));
    assert!(matches!(
        Ticket::from_bytes(&bytes(&mint()), &trusted),
        Err(TicketRefusal::UnknownIssuer { .. })
    ));
    // A verifier whose agent stopped being trusted refuses its already-parsed tickets too.
    let parsed = Ticket::from_bytes(&bytes(&mint()), &issuers()).unwrap();
    let mut v = verifier();
    v.issuers_mut().remove(&agent_key);
    assert!(matches!(
        v.authorize_ticket(&parsed, &alice().public(), NOW, &ask(small())),
        Err(TicketRefusal::UnknownIssuer { .. })
    ));
}

// ---- golden vector ------------------------------------------------------------------------

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check_golden(name: &str, data: &[u8]) {
    let path = golden_dir().join(name);
    if std::env::var_os("PLANETMESH_BLESS").is_some() {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, data).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate with PLANETMESH_BLESS=1",
            path.display()
        )
    });
    assert!(
        expected == data,
        "{name}: ticket encoding changed ({} bytes now, {} in {}); if intended, bless it",
        data.len(),
        expected.len(),
        path.display()
    );
}

/// The golden ticket's human-readable companion: its text form and every block's Datalog.
fn describe(name: &str, ticket: &Ticket) -> String {
    let token = ticket.as_biscuit();
    let mut out = format!(
        "# {}\n# id {}\n{}\n",
        name,
        ticket.id(),
        ticket.to_text().unwrap()
    );
    for (i, key) in token.external_public_keys().iter().enumerate() {
        let signer = key
            .as_ref()
            .map_or("(ticket chain)".to_owned(), |k| k.to_string());
        out.push_str(&format!(
            "\n# block {i}, signed by {signer}\n{}\n",
            token.print_block_source(i).unwrap()
        ));
    }
    out
}

#[test]
fn golden_ticket_is_byte_exact_and_still_verifies() {
    let [_, _, _, ticket] = two_attenuations_and_delegation(&mut SeededRng(0x5eed));
    check_golden("ticket_two_attenuations_delegation.bin", &bytes(&ticket));
    check_golden(
        "ticket_two_attenuations_delegation.txt",
        describe("ticket_two_attenuations_delegation", &ticket).as_bytes(),
    );

    let stored =
        std::fs::read(golden_dir().join("ticket_two_attenuations_delegation.bin")).unwrap();
    let verified = authorize_bytes(&stored, &bob()).unwrap();
    assert_eq!(verified.holder, bob().public());
    assert_eq!(
        verified.grant,
        Resources {
            cpu_millis: 1000,
            memory_bytes: 512 * MIB,
            disk_bytes: 1024 * MIB,
            egress_kbps: 5000,
            ports: 0
        }
    );
    assert_eq!(verified.ticket_id, ticket.id());
    assert_eq!(verified.price, Some(PRICE));
}

#[test]
fn golden_unpriced_ticket_is_unchanged_and_still_verifies() {
    let [_, _, _, ticket] = unpriced_two_attenuations_and_delegation(&mut SeededRng(0x5eed));
    check_golden("ticket_v1_two_attenuations_delegation.bin", &bytes(&ticket));
    check_golden(
        "ticket_v1_two_attenuations_delegation.txt",
        describe("ticket_v1_two_attenuations_delegation", &ticket).as_bytes(),
    );
    let stored =
        std::fs::read(golden_dir().join("ticket_v1_two_attenuations_delegation.bin")).unwrap();
    let verified = authorize_bytes(&stored, &bob()).unwrap();
    assert_eq!(verified.ticket_id, ticket.id());
    assert_eq!(verified.price, None);
}

#[test]
fn a_minter_mints_the_same_bytes_as_the_one_shot_calls() {
    let minter = Minter::new(&agent());
    assert_eq!(minter.issuer(), agent().public());
    let by_minter = minter
        .mint_with_rng(&spec(), Some(PRICE), &mut SeededRng(9))
        .unwrap();
    let one_shot =
        Ticket::mint_priced_with_rng(&agent(), &spec(), PRICE, &mut SeededRng(9)).unwrap();
    assert_eq!(bytes(&by_minter), bytes(&one_shot));
    let unpriced = minter
        .mint_with_rng(&spec(), None, &mut SeededRng(9))
        .unwrap();
    assert_eq!(
        bytes(&unpriced),
        bytes(&Ticket::mint_with_rng(&agent(), &spec(), &mut SeededRng(9)).unwrap())
    );
    assert!(!format!("{minter:?}").contains("private"));
}

#[test]
fn seeded_minting_is_reproducible() {
    let a = two_attenuations_and_delegation(&mut SeededRng(7));
    let b = two_attenuations_and_delegation(&mut SeededRng(7));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(bytes(x), bytes(y));
    }
}

// ---- properties ---------------------------------------------------------------------------

fn any_resources_up_to(max: Resources) -> impl Strategy<Value = Resources> {
    (
        0..=max.cpu_millis,
        0..=max.memory_bytes,
        0..=max.disk_bytes,
        0..=max.egress_kbps,
    )
        .prop_map(|(c, m, d, e)| Resources {
            cpu_millis: c,
            memory_bytes: m,
            disk_bytes: d,
            egress_kbps: e,
            ports: 0,
        })
}

fn any_attenuation() -> impl Strategy<Value = Attenuation> {
    let big = Resources {
        cpu_millis: 4000,
        memory_bytes: 2048 * MIB,
        disk_bytes: 8192 * MIB,
        egress_kbps: 20_000,
        ports: 0,
    };
    (
        proptest::option::of(any_resources_up_to(big)),
        proptest::option::of((NOT_BEFORE - 100..NOT_AFTER + 100, 1u64..8000)),
        proptest::option::of(proptest::sample::subsequence(
            Operation::ALL.to_vec(),
            0..=2,
        )),
    )
        .prop_map(|(resources, window, ops)| Attenuation {
            resources,
            window: window.map(|(start, len)| Window::new(start, start + len)),
            operations: ops.map(|o| o.into_iter().collect()),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever attenuations are asked (many would widen), the effective grant only shrinks.
    #[test]
    fn attenuation_never_widens(steps in proptest::collection::vec(any_attenuation(), 1..4)) {
        let mut ticket = mint();
        let mut before = ticket.contents().unwrap();
        for step in &steps {
            match ticket.attenuate(step) {
                Ok(next) => {
                    let after = next.contents().unwrap();
                    prop_assert!(after.grant.fits_within(&before.grant));
                    prop_assert!(before.window().covers(&after.window()));
                    prop_assert!(after.operations.is_subset(&before.operations));
                    if let Some(r) = step.resources {
                        prop_assert!(after.grant.fits_within(&r));
                    }
                    before = after;
                    ticket = next;
                }
                Err(TicketError::WouldWiden(_) | TicketError::EmptyWindow(_)
                    | TicketError::NoOperations | TicketError::EmptyAttenuation) => {}
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
        // A forged block with the same restrictions, bypassing the API's check, never widens.
        let g = grant();
        let raw = append_raw(&ticket, &format!("restrict_resources({}, {}, {}, {});",
            g.cpu_millis, g.memory_bytes, g.disk_bytes, g.egress_kbps));
        if let Ok(forged) = Ticket::from_bytes(&raw, &issuers()) {
            let c = forged.contents().unwrap();
            prop_assert!(c.grant.fits_within(&before.grant));
        }
    }

    /// Random bytes into the parser never panic and are never accepted.
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        prop_assert!(authorize_bytes(&data, &alice()).is_err());
        let _ = Ticket::from_text(&String::from_utf8_lossy(&data), &issuers());
    }

    /// Flipping any bit of a valid ticket never panics and is never accepted as a different
    /// grant (biscuit's protobuf may ignore a few padding bits; then the ticket is unchanged).
    #[test]
    fn mutated_ticket_is_refused_or_unchanged(index in 0usize..2048, bit in 0u8..8) {
        let ticket = two_attenuations_and_delegation(&mut SeededRng(1))[3].clone();
        let mut raw = bytes(&ticket);
        let i = index % raw.len();
        raw[i] ^= 1 << bit;
        if let Ok(v) = authorize_bytes(&raw, &bob()) {
            prop_assert_eq!(v, authorize_bytes(&bytes(&ticket), &bob()).unwrap());
        }
    }
}

#[test]
fn public_key_text_in_tickets_matches_identity_text() {
    let contents = mint().contents().unwrap();
    let source = mint().as_biscuit().print_block_source(0).unwrap();
    assert!(
        source.contains(&format!("\"holder\": \"{}\"", contents.holder)),
        "{source}"
    );
    let key: PublicKey = contents.holder.to_string().parse().unwrap();
    assert_eq!(key, alice().public());
}

#[test]
fn ports_travel_in_the_ticket_and_attenuate_like_any_resource() {
    let mut with_ports = grant();
    with_ports.ports = 3;
    let ticket = Ticket::mint(
        &agent(),
        &TicketSpec {
            resources: with_ports,
            ..spec()
        },
    )
    .unwrap();
    assert_eq!(ticket.contents().unwrap().grant.ports, 3);
    let mut fewer = with_ports;
    fewer.ports = 1;
    let narrowed = ticket
        .attenuate(&Attenuation {
            resources: Some(fewer),
            ..Attenuation::default()
        })
        .unwrap();
    assert_eq!(narrowed.contents().unwrap().grant.ports, 1);
    let mut more = with_ports;
    more.ports = 4;
    let widened = ticket
        .attenuate(&Attenuation {
            resources: Some(more),
            ..Attenuation::default()
        })
        .unwrap();
    assert!(matches!(
        widened.contents(),
        Err(TicketRefusal::Widened { .. })
    ));
    // A ticket without ports states none, as tickets did before ports existed.
    assert_eq!(mint().contents().unwrap().grant.ports, 0);
}

#[test]
fn network_grants_travel_in_the_ticket_and_no_block_can_add_one() {
    let granted = Ticket::mint(
        &agent(),
        &TicketSpec {
            net: capability_schema::NetGrant {
                raw: true,
                egress_cap: true,
            },
            ..spec()
        },
    )
    .unwrap();
    let net = granted.contents().unwrap().net;
    assert!(net.raw && net.egress_cap, "{net:?}");
    // A regular ticket without grants states none, and keeps none after attenuation and
    // delegation.
    let plain = mint()
        .attenuate(&Attenuation {
            resources: Some(small()),
            ..Attenuation::default()
        })
        .unwrap()
        .delegate(&alice(), &bob().public())
        .unwrap();
    assert!(plain.contents().unwrap().net.is_default());
}
