//! The requester is the principal (issue 15, item 5), on real daemons in this process (two
//! federations, their agents, memory-isolation nodes, a broker; loopback TCP only):
//! - the normal flows still work: slicectl → broker → agents → nodes, and slicectl --agent;
//! - a stranger holding the principal's certificate gets nothing from an agent, with or
//!   without an ask of its own making, and nothing by replaying the principal's ask;
//! - a broker that re-uses an ask for more slivers or for another slice is refused, an ask
//!   carried by another peer than the broker it names is refused, an expired ask is refused;
//! - an old client (no signed ask) is told by the broker to upgrade, and so is an ask signed
//!   for another broker refused by the broker itself.
//!
//! Every refusal is checked for its rule and for the fact it names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod testnet;

use std::time::Duration;

use broker::wire::{BrokerCall, BrokerCallProtocol, SliceAsk};
use capability_schema::protocol::{AgentRequest, AgentResponse, SliverAsk, TicketRequest};
use capability_schema::{
    AcquireMode, AskGrant, MembershipCert, PublicKey, Rejection, SecretKey, Signed, SliceKind,
};
use federation::overlay::AgentProtocol;
use federation::{Overlay, OverlayConfig, OverlayError, OverlayHandle, unix_now};
use slicectl::exit::ExitClass;
use slicectl::spec::SliceSpec;
use testnet::{Testnet, within};

const CALL: Duration = Duration::from_secs(30);

fn spec(name: &str, slivers: u32) -> SliceSpec {
    let mut spec = SliceSpec::named(name);
    spec.slivers = Some(slivers);
    spec.resources = "cpu=250m,memory=128MiB".into();
    spec.duration = "1h".into();
    spec.lease = Some("10m".into());
    spec.mode = AcquireMode::AllOrNothing;
    spec
}

/// A bare overlay peer with `key` that knows the address of `peer`.
async fn peer_as(key: &SecretKey, peer: &PublicKey, addr: &str) -> OverlayHandle {
    let client = Overlay::start(
        key,
        OverlayConfig {
            listen: vec![],
            ..OverlayConfig::loopback()
        },
        Default::default(),
    )
    .await
    .unwrap();
    client
        .add_addresses(peer, vec![addr.parse().unwrap()])
        .await
        .unwrap();
    client
}

/// `slivers` slivers of the plc node for `principal`, with `cert` and `ask`.
fn tickets_for(
    net: &Testnet,
    principal: PublicKey,
    cert: &Signed<MembershipCert>,
    slice: &str,
    slivers: usize,
    ask: Option<Signed<AskGrant>>,
) -> TicketRequest {
    let now = unix_now();
    TicketRequest {
        slice: slice.into(),
        principal,
        principal_cert: Some(cert.clone()),
        kind: SliceKind::Regular,
        slivers: (0..slivers)
            .map(|_| SliverAsk {
                node: net.nodes[0].key,
                resources: "cpu=100m,memory=64MiB".parse().unwrap(),
            })
            .collect(),
        not_before: now,
        not_after: now + 1800,
        max_price: None,
        net: Default::default(),
        ask: ask.map(Box::new),
    }
}

/// An ask `alice` signs for `broker`: `slice`, at most `max` slivers of the size
/// [`tickets_for`] asks, an hour's lease, valid from `from` to `until`.
fn ask_of(
    alice: &SecretKey,
    broker: PublicKey,
    slice: &str,
    max: u32,
    (from, until): (u64, u64),
) -> Signed<AskGrant> {
    Signed::sign(
        alice,
        &AskGrant {
            id: AskGrant::new_id(),
            slice: slice.into(),
            principal: alice.public(),
            broker,
            not_before: from,
            not_after: until,
            kind: SliceKind::Regular,
            per_sliver: "cpu=100m,memory=64MiB".parse().unwrap(),
            max_slivers: max,
            net: Default::default(),
            max_duration_secs: 3600,
            max_price: None,
        },
    )
}

/// The agent's answer to `request` from `client`: the number of tickets minted, or the
/// policy rule and the sentence of its refusal.
async fn get_tickets(
    client: &OverlayHandle,
    agent: &PublicKey,
    request: TicketRequest,
) -> Result<usize, (String, String)> {
    match within(client.request::<AgentProtocol>(agent, AgentRequest::GetTickets(request), CALL))
        .await
    {
        Ok(AgentResponse::Tickets { issued, refused }) => {
            assert!(refused.is_empty(), "{refused:?}");
            Ok(issued.len())
        }
        Ok(other) => panic!("not tickets: {other:?}"),
        Err(OverlayError::Rejected(reply)) => match reply.reason {
            Rejection::Policy { rule, detail } => Err((rule, detail)),
            other => Err((other.code().to_owned(), reply.message)),
        },
        Err(other) => panic!("agent call failed: {other}"),
    }
}

fn refused_by(result: Result<usize, (String, String)>, rule: &str, fact: &str) {
    match result {
        Err((r, detail)) => {
            assert_eq!(r, rule, "{detail}");
            assert!(detail.contains(fact), "{fact:?} not in {detail:?}");
        }
        Ok(n) => panic!("{n} tickets minted; expected a refusal by {rule}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_mint_only_what_the_principal_signed_for_the_broker_that_carries_it() {
    let net = Testnet::start(1).await;
    let state = tempfile::tempdir().unwrap();

    // The normal flows: through the broker, and with slicectl as its own broker (--agent).
    let m = net.manager(&state.path().join("broker"), false).await;
    let created = within(m.create(&spec("plc-site0_viabroker", 2)))
        .await
        .unwrap();
    assert_eq!(created.class, ExitClass::Ok, "{:#?}", created.lines);
    assert_eq!(m.state.leases("plc-site0_viabroker").unwrap().len(), 2);
    let own = net.manager(&state.path().join("agents"), true).await;
    let created = within(own.create(&spec("plc-site0_itself", 2)))
        .await
        .unwrap();
    assert_eq!(created.class, ExitClass::Ok, "{:#?}", created.lines);
    assert_eq!(own.state.leases("plc-site0_itself").unwrap().len(), 2);
    assert_eq!(net.all_leases().len(), 4, "every sliver is on a node");
    // Alice speaks as herself below, from a peer of her own key.
    m.session.shutdown().await;
    own.session.shutdown().await;

    let alice = net.principal.clone();
    let cert = net.identity().cert.unwrap();
    let agent = &net.agents[0];
    let now = unix_now();
    let valid = (now, now + 300);

    // A stranger with alice's certificate: without an ask, with one it signed, with alice's
    // ask for another broker.
    let stranger = SecretKey::generate();
    let s = peer_as(&stranger, &agent.key, &agent.addr).await;
    let unsigned = tickets_for(&net, alice.public(), &cert, "plc-site0_x", 1, None);
    refused_by(
        get_tickets(&s, &agent.key, unsigned).await,
        "signed-ask",
        "upgrade slicectl",
    );
    let forged = ask_of(&stranger, stranger.public(), "plc-site0_x", 1, valid);
    refused_by(
        get_tickets(
            &s,
            &agent.key,
            tickets_for(&net, alice.public(), &cert, "plc-site0_x", 1, Some(forged)),
        )
        .await,
        "signed-ask",
        "not the principal's",
    );
    let evil = SecretKey::generate();
    let for_evil = ask_of(&alice, evil.public(), "plc-site0_x", 1, valid);
    refused_by(
        get_tickets(
            &s,
            &agent.key,
            tickets_for(
                &net,
                alice.public(),
                &cert,
                "plc-site0_x",
                1,
                Some(for_evil.clone()),
            ),
        )
        .await,
        "ask-broker",
        &format!(
            "ask signed for broker {}, carried by {}",
            evil.public().short(),
            stranger.public().short()
        ),
    );
    s.shutdown().await;

    // A broker alice asked for one sliver gets one, and no more; not for another slice.
    let e = peer_as(&evil, &agent.key, &agent.addr).await;
    let request = |slice: &str, n: usize| {
        tickets_for(
            &net,
            alice.public(),
            &cert,
            slice,
            n,
            Some(for_evil.clone()),
        )
    };
    assert_eq!(
        get_tickets(&e, &agent.key, request("plc-site0_x", 1)).await,
        Ok(1)
    );
    refused_by(
        get_tickets(&e, &agent.key, request("plc-site0_x", 1)).await,
        "ask-replay",
        "allows 1 slivers, 1 asked (1 already minted under it)",
    );
    refused_by(
        get_tickets(&e, &agent.key, request("plc-site0_x", 3)).await,
        "ask-replay",
        "allows 1 slivers, 3 asked",
    );
    refused_by(
        get_tickets(&e, &agent.key, request("plc-site0_other", 1)).await,
        "ask-scope",
        "slice \"plc-site0_other\" asked, the ask is for \"plc-site0_x\"",
    );
    // An ask alice signed a while ago has expired.
    let old = ask_of(
        &alice,
        evil.public(),
        "plc-site0_y",
        1,
        (now - 400, now - 100),
    );
    refused_by(
        get_tickets(
            &e,
            &agent.key,
            tickets_for(&net, alice.public(), &cert, "plc-site0_y", 1, Some(old)),
        )
        .await,
        "ask-window",
        "expired at",
    );
    e.shutdown().await;

    // Through the broker: alice's old client (no ask) is told to upgrade; an ask she signed
    // for another broker is refused by this one.
    let broker_key = net.broker.overlay.local_key();
    let a = peer_as(&alice, &broker_key, &net.broker_addr).await;
    let request = spec("plc-site0_old", 1)
        .to_request(alice.public(), "plc")
        .unwrap();
    let call = |ask: Option<Signed<AskGrant>>| {
        let plain = SliceAsk::new(request.clone(), Some(cert.clone()));
        BrokerCall::AcquireSlice(match ask {
            Some(ask) => plain.with_ask(ask),
            None => plain,
        })
    };
    let refusal = |answer: Result<_, OverlayError>| match answer {
        Err(OverlayError::Rejected(reply)) => match reply.reason {
            Rejection::Policy { rule, detail } => (rule, detail),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    };
    let (rule, detail) =
        refusal(within(a.request::<BrokerCallProtocol>(&broker_key, call(None), CALL)).await);
    assert_eq!(rule, "signed-ask");
    assert!(detail.contains("upgrade slicectl"), "{detail}");
    let elsewhere = ask_of(&alice, evil.public(), "plc-site0_old", 1, valid);
    let (rule, detail) = refusal(
        within(a.request::<BrokerCallProtocol>(&broker_key, call(Some(elsewhere)), CALL)).await,
    );
    assert_eq!(rule, "ask-broker");
    assert!(
        detail.contains(&format!("carried by {}", broker_key.short())),
        "{detail}"
    );
    a.shutdown().await;

    // None of the refused requests left a ticket or a lease behind: alice holds the four
    // slivers she created and the one ticket the broker she asked obtained.
    assert_eq!(net.all_leases().len(), 4);
    let outstanding = agent
        .running
        .state
        .agent
        .ledger()
        .outstanding(unix_now())
        .unwrap();
    let plc_slivers = outstanding
        .by_principal
        .get(&alice.public())
        .map_or(0, |u| u.slivers);
    let plc_leases = net
        .all_leases()
        .iter()
        .filter(|l| l.federation == "plc")
        .count() as u32;
    assert_eq!(plc_slivers, plc_leases + 1);
    net.stop().await;
}
