//! Fuzz target: untrusted bytes as every request and response of the agent, node and broker
//! protocols, as a server or client decodes them off a stream.
#![no_main]

use capability_schema::codec::decode;
use capability_schema::protocol::{
    AgentRequest, AgentResponse, BrokerRequest, BrokerResponse, Envelope, NodeRequest,
    NodeResponse, Reply,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Envelope<AgentRequest>>(data);
    let _ = decode::<Envelope<Reply<AgentResponse>>>(data);
    let _ = decode::<Envelope<NodeRequest>>(data);
    let _ = decode::<Envelope<Reply<NodeResponse>>>(data);
    let _ = decode::<Envelope<BrokerRequest>>(data);
    let _ = decode::<Envelope<Reply<BrokerResponse>>>(data);
    let _ = decode::<ciborium::Value>(data);
});
