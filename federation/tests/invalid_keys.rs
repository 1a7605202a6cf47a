//! Keys that are not ed25519 points, from a certified peer: an ad naming such an agent and a
//! request naming such a principal are refused when they are decoded, and the overlay that
//! received them keeps gossiping and serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::time::Duration;

use capability_schema::ad::ShareState;
use capability_schema::identity::test_key;
use capability_schema::protocol::{AgentRequest, AgentResponse, Envelope, Reply, TicketRequest};
use capability_schema::rejection::Rejection;
use capability_schema::slice::SliceKind;
use capability_schema::{
    PublicKey, Resources, SecretKey, SignatureError, Signed, SignedType, codec,
};
use common::*;
use federation::overlay::{AgentProtocol, Frame, ProtocolKind, ServeStream};
use federation::unix_now;

const CALL: Duration = Duration::from_secs(5);

/// 32 bytes that are no ed25519 point (y = 2 has no x on the curve).
fn not_a_point() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[0] = 2;
    assert!(PublicKey::from_bytes(&bytes).is_err());
    bytes
}

/// `bytes` with the one occurrence of `key` replaced by [`not_a_point`].
fn swap_key(bytes: &[u8], key: &PublicKey) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at: Vec<usize> = out
        .windows(32)
        .enumerate()
        .filter(|(_, w)| *w == key.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(at.len(), 1, "the key occurs once");
    out[at[0]..at[0] + 32].copy_from_slice(&not_a_point());
    out
}

/// `signed` with its body replaced and signed again, correctly, by `key`.
fn resign<T: SignedType>(signed: &mut Signed<T>, key: &SecretKey, body: Vec<u8>) {
    let mut message = b"planetmesh-signed/v1\0".to_vec();
    message.extend_from_slice(signed.domain.as_bytes());
    message.push(0);
    message.extend_from_slice(&body);
    signed.body = body;
    signed.signature = key.sign(&message).to_vec();
}

/// An agent server answering `GetAds` with no offers and `GetTickets` with nothing minted.
async fn serve_agent(mut stream: ServeStream<AgentProtocol>) {
    while let Some(incoming) = stream.next().await {
        let reply: Reply<AgentResponse> = match incoming.request {
            AgentRequest::GetAds(_) => Ok(AgentResponse::Ads(Vec::new())),
            AgentRequest::GetTickets(_) => Ok(AgentResponse::Tickets {
                issued: Vec::new(),
                refused: Vec::new(),
            }),
            AgentRequest::Released { ticket_ids } => Ok(AgentResponse::Released {
                known: ticket_ids.len() as u32,
            }),
        };
        let _ = incoming.responder.send(reply).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ad_or_request_naming_a_key_that_is_no_point_is_refused_and_the_overlay_keeps_serving() {
    let [mut f1, _, _] = three_federations();
    let trust = trust(&[&f1]);
    // A broker-like peer that follows f1 and serves the agent protocol; a certified node's
    // peer that misbehaves.
    let server = peer(&["f1"], trust.clone()).await;
    let rogue = peer(&["f1"], trust.clone()).await;
    tokio::spawn(serve_agent(server.serve::<AgentProtocol>().await.unwrap()));
    connect(&rogue, &server).await;
    mesh(&server, "f1", 1).await;
    mesh(&rogue, "f1", 1).await;
    let mut ads = server.ads();

    // The certified node signs an ad delegating to an agent whose key is no point: a valid
    // ad, with the agent's bytes swapped and the body signed again.
    let node = f1.node(1, "s1");
    let now = unix_now();
    let agent = test_key(60).public();
    let with_share = |seq| {
        let mut body = node.ad_body(seq, now, 300);
        body.shares = vec![ShareState {
            agent,
            share: Resources::ZERO,
            committed: Resources::ZERO,
            free: Resources::ZERO,
        }];
        body
    };
    let mut bad = Signed::sign(&node.key, &with_share(1));
    let body = swap_key(&bad.body, &agent);
    resign(&mut bad, &node.key, body);
    // Signed by the certified node, so only the body's key is wrong.
    assert!(matches!(bad.verify(), Err(SignatureError::Body(_))));
    within(rogue.publish_raw("f1", bad.to_bytes()))
        .await
        .unwrap();
    // Then a valid ad of the same node: it arrives; the bad one never did.
    let good = Signed::sign(&node.key, &with_share(2));
    within(rogue.publish_raw("f1", good.to_bytes()))
        .await
        .unwrap();
    let event = next_ad(&mut ads).await;
    assert_eq!(event.ad.seq, 2);
    assert_eq!(event.ad.shares[0].agent, agent);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(drain(&mut ads).is_empty());
    let stats = server.stats().await.unwrap();
    assert_eq!(
        (stats.ads_accepted, stats.ads_rejected),
        (1, 1),
        "{stats:?}"
    );

    // A request naming a principal whose key is no point: refused as malformed, with its id.
    let principal = test_key(61).public();
    let request = AgentRequest::GetTickets(TicketRequest {
        slice: "s".into(),
        principal,
        principal_cert: None,
        kind: SliceKind::Regular,
        slivers: Vec::new(),
        not_before: now,
        not_after: now + 60,
        max_price: None,
        net: Default::default(),
        ask: None,
    });
    let bytes = swap_key(
        &codec::encode(&Envelope {
            request_id: 41,
            body: request.clone(),
        }),
        &principal,
    );
    let frame = within(rogue.request_raw(ProtocolKind::Agent, &server.local_key(), bytes, CALL))
        .await
        .unwrap();
    let Frame::Bytes(answer) = frame else {
        panic!("oversized answer");
    };
    let answer: Envelope<Reply<AgentResponse>> = codec::decode(&answer).unwrap();
    assert_eq!(answer.request_id, 41);
    let reply = answer.body.unwrap_err();
    assert!(
        matches!(&reply.reason, Rejection::Malformed { detail } if detail.contains("ed25519")),
        "{reply:?}"
    );

    // The server is still up: gossip flows and requests are answered.
    within(rogue.publish_raw("f1", Signed::sign(&node.key, &with_share(3)).to_bytes()))
        .await
        .unwrap();
    assert_eq!(next_ad(&mut ads).await.ad.seq, 3);
    let answer = within(rogue.request::<AgentProtocol>(&server.local_key(), request, CALL))
        .await
        .unwrap();
    assert_eq!(
        answer,
        AgentResponse::Tickets {
            issued: Vec::new(),
            refused: Vec::new()
        }
    );
    assert_eq!(server.exit(), None);
}
