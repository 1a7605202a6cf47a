//! Fuzz target: untrusted bytes as every signed object a party receives (ads from gossip,
//! leases, delegations, membership certificates, peering agreements, revocation lists, the
//! principals' signed asks), then signature verification; and any decodable ask through the
//! agent's checks against a request, with every refusal rendered. Must never panic or
//! allocate beyond the input.
#![no_main]

use capability_schema::protocol::{SliverAsk, TicketRequest};
use capability_schema::{
    AskGrant, Delegation, Lease, MembershipCert, PeeringAgreement, ResourceAd, Resources,
    RevocationList, Signed, SliceKind, codec,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Signed::<ResourceAd>::from_bytes(data).map(|s| s.verify());
    let _ = Signed::<Lease>::from_bytes(data).map(|s| s.verify());
    let _ = Signed::<Delegation>::from_bytes(data).map(|s| s.verify());
    let _ = Signed::<MembershipCert>::from_bytes(data).map(|s| s.verify());
    let _ = Signed::<PeeringAgreement>::from_bytes(data).map(|s| s.verify());
    let _ = Signed::<RevocationList>::from_bytes(data).map(|s| s.verify());
    if let Ok(signed) = Signed::<AskGrant>::from_bytes(data) {
        let key = signed.signer;
        let _ =
            AskGrant::admit(Some(&signed), &key, &key, 1_800_000_000).map_err(|e| e.to_string());
    }
    if let Ok(ask) = codec::decode::<AskGrant>(data) {
        let request = TicketRequest {
            slice: ask.slice.clone(),
            principal: ask.principal,
            principal_cert: None,
            kind: SliceKind::Regular,
            slivers: vec![SliverAsk {
                node: ask.broker,
                resources: Resources {
                    cpu_millis: 1,
                    ..Resources::ZERO
                },
            }],
            not_before: ask.not_before,
            not_after: ask.not_before.saturating_add(60),
            max_price: ask.max_price,
            net: ask.net,
            ask: None,
        };
        for now in [0, ask.not_before, ask.not_after, u64::MAX] {
            let _ = ask
                .check_request(&request, ask.max_slivers, now)
                .map_err(|e| (e.rule(), e.to_string()));
        }
        let _ = ask.to_string();
    }
});
