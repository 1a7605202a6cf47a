//! The request-response protocols the overlay speaks, as types.
//!
//! Each protocol is one libp2p request-response behaviour with its own versioned name; its
//! messages travel as `Envelope<Request>` and `Envelope<Reply<Response>>` in CBOR.

use std::fmt;

use capability_schema::protocol::{
    AGENT_PROTOCOL, AgentRequest, AgentResponse, BROKER_PROTOCOL, BrokerRequest, BrokerResponse,
    NODE_PROTOCOL, NodeRequest, NodeResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Which of the overlay's request-response protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtocolKind {
    /// `/planetmesh/agent/1`.
    Agent,
    /// `/planetmesh/node/1`.
    Node,
    /// `/planetmesh/broker/1`.
    Broker,
}

impl ProtocolKind {
    /// Every protocol.
    pub const ALL: [ProtocolKind; 3] = [
        ProtocolKind::Agent,
        ProtocolKind::Node,
        ProtocolKind::Broker,
    ];

    /// The versioned protocol name.
    pub fn name(self) -> &'static str {
        match self {
            ProtocolKind::Agent => AGENT_PROTOCOL,
            ProtocolKind::Node => NODE_PROTOCOL,
            ProtocolKind::Broker => BROKER_PROTOCOL,
        }
    }

    /// The protocol of a name, if it is one of the overlay's.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl fmt::Display for ProtocolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A request-response protocol: its name and message types.
pub trait Protocol: Send + Sync + 'static {
    /// Which protocol.
    const KIND: ProtocolKind;
    /// What a caller sends.
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// What a server answers (inside `Reply`, so errors are `ErrorReply`).
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// The agent protocol: brokers and service managers ask agents for ads and tickets.
#[derive(Debug, Clone, Copy)]
pub struct AgentProtocol;

impl Protocol for AgentProtocol {
    const KIND: ProtocolKind = ProtocolKind::Agent;
    type Request = AgentRequest;
    type Response = AgentResponse;
}

/// The node protocol: holders redeem tickets and manage slivers.
#[derive(Debug, Clone, Copy)]
pub struct NodeProtocol;

impl Protocol for NodeProtocol {
    const KIND: ProtocolKind = ProtocolKind::Node;
    type Request = NodeRequest;
    type Response = NodeResponse;
}

/// The broker protocol: service managers ask brokers for slices.
#[derive(Debug, Clone, Copy)]
pub struct BrokerProtocol;

impl Protocol for BrokerProtocol {
    const KIND: ProtocolKind = ProtocolKind::Broker;
    type Request = BrokerRequest;
    type Response = BrokerResponse;
}
