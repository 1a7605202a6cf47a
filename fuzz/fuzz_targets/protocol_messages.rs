//! Fuzz target: untrusted bytes as every request and response of the agent, node and broker
//! protocols, and of the overlay's revocation exchange, as a server or client decodes them off
//! a stream.
#![no_main]

use capability_schema::codec::{decode, encode};
use capability_schema::membership::{RevocationSync, RevocationSyncReply};
use capability_schema::protocol::{
    AgentRequest, AgentResponse, BrokerAnswer, BrokerCall, BrokerRequest, BrokerResponse, Envelope,
    NodeRequest, NodeResponse, Reply,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Envelope<AgentRequest>>(data);
    let _ = decode::<Envelope<Reply<AgentResponse>>>(data);
    let _ = decode::<Envelope<NodeRequest>>(data);
    let _ = decode::<Envelope<Reply<NodeResponse>>>(data);
    let _ = decode::<Envelope<BrokerRequest>>(data);
    let _ = decode::<Envelope<Reply<BrokerResponse>>>(data);
    // The broker as served: what decodes must encode and decode to the same value.
    if let Ok(call) = decode::<Envelope<BrokerCall>>(data) {
        let again: Envelope<BrokerCall> = decode(&encode(&call)).expect("re-encoded call decodes");
        assert_eq!(again, call);
    }
    if let Ok(answer) = decode::<Envelope<Reply<BrokerAnswer>>>(data) {
        let again: Envelope<Reply<BrokerAnswer>> =
            decode(&encode(&answer)).expect("re-encoded answer decodes");
        assert_eq!(again, answer);
    }
    // The revocation exchange, as the overlay serves it: every offered list is then verified.
    if let Ok(sync) = decode::<RevocationSync>(data) {
        let again: RevocationSync = decode(&encode(&sync)).expect("re-encoded exchange decodes");
        assert_eq!(again, sync);
        for list in &sync.offer {
            let _ = list.verify();
        }
    }
    if let Ok(reply) = decode::<RevocationSyncReply>(data) {
        for list in &reply.newer {
            let _ = list.verify();
        }
    }
    let _ = decode::<ciborium::Value>(data);
});
