//! Peering over the overlay: an agent of f1 serves exactly the parties its agreement with
//! f2 covers, members of f1 itself, and nobody of f3 (no agreement).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::time::Duration;

use capability_schema::membership::{PeeringLimits, PrincipalFilter};
use capability_schema::protocol::{AgentRequest, AgentResponse, Reply, TicketRequest};
use capability_schema::rejection::Rejection;
use capability_schema::{ErrorReply, Role, SecretKey, SliceKind};
use common::*;
use federation::overlay::{AgentProtocol, ServeStream};
use federation::testing::CERT_VALIDITY;
use federation::{OverlayError, SharedTrust, TrustError, unix_now};

/// The agent's policy, reduced to peering: the caller must be the certified party, and its
/// federation must be f1 or covered by an agreement of f1. Refusals are mapped as agentd maps
/// them (`agentd::agent`, which `federation` cannot depend on): no agreement is `no_peering`,
/// anything else the trust store refuses is a `policy` refusal under rule `principal` whose
/// detail is the trust store's sentence.
async fn serve_agent(mut stream: ServeStream<AgentProtocol>, trust: SharedTrust) {
    while let Some(incoming) = stream.next().await {
        let reply: Reply<AgentResponse> = match incoming.request {
            AgentRequest::GetTickets(request) => {
                let verdict = match &request.principal_cert {
                    None => Err(Rejection::UnknownPrincipal {
                        principal: incoming.peer,
                    }),
                    Some(cert)
                        if cert.peek_unverified().map(|c| c.subject).ok()
                            != Some(incoming.peer) =>
                    {
                        Err(Rejection::UnknownPrincipal {
                            principal: incoming.peer,
                        })
                    }
                    Some(cert) => {
                        let served = trust.read().unwrap().serves("f1", cert, unix_now());
                        served.map_err(|error| match error {
                            TrustError::NoPeering {
                                peer_federation, ..
                            } => Rejection::NoPeering {
                                federation: peer_federation,
                            },
                            other => Rejection::Policy {
                                rule: "principal".into(),
                                detail: other.to_string(),
                            },
                        })
                    }
                };
                verdict
                    .map(|_| AgentResponse::Tickets {
                        issued: Vec::new(),
                        refused: Vec::new(),
                    })
                    .map_err(ErrorReply::from)
            }
            _ => Err(ErrorReply::from(Rejection::Internal {
                detail: "not in this test".into(),
            })),
        };
        incoming.responder.send(reply).await.unwrap();
    }
}

fn ask(cert: capability_schema::Signed<capability_schema::MembershipCert>) -> AgentRequest {
    AgentRequest::GetTickets(TicketRequest {
        slice: "s".into(),
        principal: cert.peek_unverified().unwrap().subject,
        principal_cert: Some(cert),
        kind: SliceKind::Regular,
        slivers: Vec::new(),
        not_before: 0,
        not_after: 0,
        max_price: None,
        net: Default::default(),
        ask: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_serves_exactly_what_its_peering_agreement_says() {
    let [mut f1, mut f2, mut f3] = three_federations();
    let keys: Vec<SecretKey> = (0..6).map(|_| SecretKey::generate()).collect();
    let [alice, bob, broker, agent2, carol, dave] = [0, 1, 2, 3, 4, 5].map(|i| &keys[i]);
    let certs = [
        (alice, f2.certify(alice, Role::Principal)),
        (bob, f2.certify(bob, Role::Principal)),
        (broker, f2.certify(broker, Role::Broker)),
        (agent2, f2.certify(agent2, Role::Agent)),
        (carol, f3.certify(carol, Role::Principal)),
        (dave, f1.certify(dave, Role::Principal)),
    ];
    // f1 serves f2's principals (alice only) and brokers; it has no agreement with f3.
    let agreement = f1.authority.peer(
        "f2",
        f2.authority.public(),
        &[Role::Principal, Role::Broker],
        PrincipalFilter::Only(vec![alice.public()]),
        PeeringLimits::default(),
        CERT_VALIDITY,
    );
    let agent_trust = trust(&[&f1]);
    agent_trust
        .write()
        .unwrap()
        .add_agreement(&agreement)
        .unwrap();

    let agent = peer(&[], agent_trust.clone()).await;
    tokio::spawn(serve_agent(
        agent.serve::<AgentProtocol>().await.unwrap(),
        agent_trust,
    ));
    let agent_addr = addr(&agent).await;

    let mut outcomes: Vec<(String, String)> = Vec::new();
    for (key, cert) in &certs {
        let caller = federation::Overlay::start(key, config(&[]), trust(&[]))
            .await
            .unwrap();
        within(caller.dial(agent_addr.clone())).await.unwrap();
        let result = caller
            .request::<AgentProtocol>(
                &agent.local_key(),
                ask(cert.clone()),
                Duration::from_secs(5),
            )
            .await;
        outcomes.push(match result {
            Ok(_) => ("served".to_owned(), String::new()),
            Err(OverlayError::Rejected(reply)) => match reply.reason {
                Rejection::Policy { rule, detail } => (format!("policy/{rule}"), detail),
                other => (other.code().to_owned(), reply.message),
            },
            Err(other) => panic!("unexpected {other}"),
        });
        caller.shutdown().await;
    }
    let codes: Vec<&str> = outcomes.iter().map(|(code, _)| code.as_str()).collect();
    assert_eq!(
        codes,
        [
            "served",           // alice: f2 principal listed in the agreement
            "policy/principal", // bob: f2 principal not listed
            "served",           // f2 broker: role covered
            "policy/principal", // f2 agent: role not covered
            "no_peering",       // carol: f3 has no agreement
            "served",           // dave: member of f1 itself
        ]
    );
    // The two policy refusals say which part of the agreement refused: the principal list
    // (naming the principal) or the roles served (naming the role), with the agreement.
    let serial = agreement.peek_unverified().unwrap().serial;
    let (not_listed, role_not_served) = (&outcomes[1].1, &outcomes[3].1);
    assert_eq!(
        not_listed,
        &format!(
            "federation \"f1\" serves only listed principals of \"f2\"; {} is not one \
             (agreement serial {serial})",
            bob.public()
        )
    );
    assert_eq!(
        role_not_served,
        &format!("federation \"f1\" does not serve agents of \"f2\" (agreement serial {serial})")
    );
    assert!(
        outcomes[4].1.contains("f3"),
        "no_peering names the federation: {:?}",
        outcomes[4]
    );

    // Presenting someone else's certificate does not help.
    let mallory = federation::Overlay::start(&SecretKey::generate(), config(&[]), trust(&[]))
        .await
        .unwrap();
    within(mallory.dial(agent_addr)).await.unwrap();
    let result = mallory
        .request::<AgentProtocol>(
            &agent.local_key(),
            ask(certs[0].1.clone()),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(&result, Err(OverlayError::Rejected(reply)) if reply.reason.code() == "unknown_principal"),
        "{result:?}"
    );
}
