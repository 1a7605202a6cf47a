//! Every request and response of the agent, node and broker protocols.
//!
//! | protocol | name | requests |
//! |---|---|---|
//! | agent | `/planetmesh/agent/1` | [`AgentRequest`]: `GetAds`, `GetTickets`, `Released` |
//! | node | `/planetmesh/node/1` | [`NodeRequest`]: `Redeem`, `Renew`, `Release`, `Status`, `Exec`, `Spawn`, `Logs`, `AddKey`, `DelKey`, `ListKeys`, `Events`, `LogsFrom` |
//! | broker | `/planetmesh/broker/1` | [`BrokerRequest`]: `FindSlice`, `AcquireSlice`; as served, [`BrokerCall`] (the same with the principal's certificate) answered by [`BrokerAnswer`] |
//!
//! Each message travels in an [`Envelope`] with a request id; every answer is
//! `Result<Response, ErrorReply>` so every error carries a reason and a sentence. The caller's
//! identity is the libp2p peer it connected as (the noise handshake), never a field here.
//!
//! An acquisition's report travels as typed [`AcquireEvent`]s beside the sentences they render
//! to (see the `report` submodule for how older peers and newer events are handled).

use serde::{Deserialize, Serialize};

use crate::ad::{PriceList, ResourceAd};
use crate::ask::AskGrant;
use crate::identity::PublicKey;
use crate::membership::MembershipCert;
use crate::rejection::ErrorReply;
use crate::resources::Resources;
use crate::signed::Signed;
use crate::slice::{
    AcquireMode, Lease, NetGrant, SliceConstraints, SliceKind, SliceRequest, SliverTarget,
};

mod lease_events;
mod report;
mod ssh;

pub use lease_events::{EventQuery, LeaseEvent, LeaseEventKind, LeaseEvents, LogChunk};
pub use report::{AcquireEvent, CallFailure, DroppedOffer};
pub use ssh::SshEndpoint;

/// Protocol name of the agent protocol.
pub const AGENT_PROTOCOL: &str = "/planetmesh/agent/1";
/// Protocol name of the node protocol.
pub const NODE_PROTOCOL: &str = "/planetmesh/node/1";
/// Protocol name of the broker protocol.
pub const BROKER_PROTOCOL: &str = "/planetmesh/broker/1";

/// Largest request, in bytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest response, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// A message with its request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Chosen by the caller; the answer carries the same id.
    pub request_id: u64,
    /// The message.
    pub body: T,
}

/// An answer: the response or an error reply.
pub type Reply<T> = Result<T, ErrorReply>;

/// A ticket as it travels: the serialized biscuit token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TicketBytes(#[serde(with = "serde_bytes")] pub Vec<u8>);

// ---------------------------------------------------------------- agent protocol

/// What a broker or service manager asks an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentRequest {
    /// The nodes of this agent's inventory that match a filter.
    GetAds(AdQuery),
    /// Mint tickets for a principal.
    GetTickets(TicketRequest),
    /// Tickets the caller will not redeem (an all-or-nothing acquisition failed) or no longer
    /// uses; the agent stops counting them against the share. Only the principal a ticket is
    /// bound to, the peer that obtained it or the node it names may release it; anyone else
    /// is refused by the policy rule `release`.
    Released {
        /// The ticket ids.
        ticket_ids: Vec<String>,
    },
}

/// A filter over an agent's inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdQuery {
    /// Only nodes whose free share holds at least this.
    pub min_free: Resources,
    /// Only these federations (empty: any).
    pub federations: Vec<String>,
    /// Only these sites (empty: any).
    pub sites: Vec<String>,
    /// At most this many offers (0: no limit beyond the response cap).
    pub limit: u32,
}

/// One node an agent can issue tickets for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOffer {
    /// The agent making the offer.
    pub agent: PublicKey,
    /// The node's latest ad, as the node signed it.
    pub ad: Signed<ResourceAd>,
    /// What remains of this agent's share on the node, minus its outstanding tickets.
    pub free: Resources,
    /// The agent's prices for this node.
    pub prices: PriceList,
}

/// One sliver asked of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliverAsk {
    /// The node.
    pub node: PublicKey,
    /// Its resources.
    pub resources: Resources,
}

/// A request for tickets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRequest {
    /// The slice.
    pub slice: String,
    /// The principal the tickets are bound to (their first holder).
    pub principal: PublicKey,
    /// The principal's membership certificate.
    pub principal_cert: Option<Signed<MembershipCert>>,
    /// Regular or admin.
    pub kind: SliceKind,
    /// The slivers.
    pub slivers: Vec<SliverAsk>,
    /// Unix seconds the tickets start.
    pub not_before: u64,
    /// Unix seconds they end.
    pub not_after: u64,
    /// At most this price per sliver, in micro-credits (none: any).
    pub max_price: Option<u64>,
    /// Network grants asked for each sliver (absent: none).
    #[serde(default, skip_serializing_if = "NetGrant::is_default")]
    pub net: NetGrant,
    /// The principal's signed ask, naming the caller as its broker (absent from older
    /// brokers' requests, which agents refuse under the rule `signed-ask`). Boxed: most
    /// messages of the agent protocol are much smaller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask: Option<Box<Signed<AskGrant>>>,
}

/// A ticket the agent minted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedTicket {
    /// The node it is for.
    pub node: PublicKey,
    /// The node's federation.
    pub federation: String,
    /// The agent that minted it.
    pub agent: PublicKey,
    /// The ticket id (hex).
    pub ticket_id: String,
    /// The ticket.
    pub ticket: TicketBytes,
    /// The agreed price in micro-credits for the whole window.
    pub price: u64,
    /// The node's addresses (so the holder can reach it).
    pub addresses: Vec<String>,
}

/// A sliver the agent refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedSliver {
    /// The node.
    pub node: PublicKey,
    /// Why.
    pub reason: ErrorReply,
}

/// What an agent answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentResponse {
    /// Answer to `GetAds`.
    Ads(Vec<NodeOffer>),
    /// Answer to `GetTickets`: what was minted and what was refused.
    Tickets {
        /// Minted tickets.
        issued: Vec<IssuedTicket>,
        /// Refused slivers.
        refused: Vec<RefusedSliver>,
    },
    /// Answer to `Released`.
    Released {
        /// How many of the tickets the agent knew.
        known: u32,
    },
}

// ---------------------------------------------------------------- node protocol

/// What a holder asks a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRequest {
    /// Redeem a ticket into a sliver; answered with a lease.
    Redeem {
        /// The ticket.
        ticket: TicketBytes,
        /// The end asked (none: the ticket's end).
        until: Option<u64>,
    },
    /// Extend a lease; answered with the lease as renewed.
    Renew {
        /// The lease.
        lease_id: String,
        /// The end asked.
        until: u64,
    },
    /// Release a lease and tear its sliver down.
    Release {
        /// The lease.
        lease_id: String,
    },
    /// The node's state.
    Status,
    /// Run a program in a sliver and wait for it.
    Exec {
        /// The lease of the sliver.
        lease_id: String,
        /// Program and arguments.
        argv: Vec<String>,
        /// Standard input.
        #[serde(with = "serde_bytes")]
        stdin: Vec<u8>,
        /// Kill it after this many milliseconds.
        timeout_ms: u64,
    },
    /// Start a program in a sliver in the background.
    Spawn {
        /// The lease of the sliver.
        lease_id: String,
        /// Program and arguments.
        argv: Vec<String>,
    },
    /// Output of spawned programs.
    Logs {
        /// The lease of the sliver.
        lease_id: String,
        /// At most this many bytes from the end.
        tail_bytes: u64,
    },
    /// Authorize an SSH public key in the sliver.
    AddKey {
        /// The lease of the sliver.
        lease_id: String,
        /// An OpenSSH public key line.
        key: String,
    },
    /// Remove an SSH public key.
    DelKey {
        /// The lease of the sliver.
        lease_id: String,
        /// The key line (or its comment).
        key: String,
    },
    /// List authorized SSH keys.
    ListKeys {
        /// The lease of the sliver.
        lease_id: String,
    },
    /// What happened to the caller's leases on this node (see [`LeaseEvent`]); answered
    /// with `Events`. Nodes that predate it answer `malformed`.
    Events(EventQuery),
    /// The spawn log from a byte offset, for following it; answered with `LogChunk`. Nodes
    /// that predate it answer `malformed`.
    LogsFrom {
        /// The lease of the sliver.
        lease_id: String,
        /// The first byte wanted.
        offset: u64,
        /// At most this many bytes (capped at [`LogChunk::MAX_BYTES`]).
        max_bytes: u64,
    },
}

/// A node's view of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its latest ad.
    pub ad: Signed<ResourceAd>,
    /// The caller's leases on this node.
    pub leases: Vec<Signed<Lease>>,
    /// The caller's leases this node ended before their time, and why (a revocation), as far
    /// as it remembers; older nodes send none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ended: Vec<LeaseEnded>,
    /// Its SSH endpoint into slivers, when it runs one; older nodes and nodes without one
    /// send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshEndpoint>,
}

/// A lease a node ended before its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEnded {
    /// The lease.
    pub lease_id: String,
    /// Why, e.g. `principal revoked by "fed0" list v3 (issued at 1796653890)`.
    pub reason: String,
}

/// Output of a finished program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Exit code (128 + signal when killed); [`ExecOutput::NOT_RUN`] when the node ran
    /// nothing (a node without isolation), its stderr saying so.
    pub exit_code: i32,
    /// Captured standard output (bounded).
    #[serde(with = "serde_bytes")]
    pub stdout: Vec<u8>,
    /// Captured standard error (bounded).
    #[serde(with = "serde_bytes")]
    pub stderr: Vec<u8>,
    /// Whether output was cut at the bound.
    pub truncated: bool,
    /// Whether the timeout killed it.
    pub timed_out: bool,
}

impl ExecOutput {
    /// The exit code of a command the node did not run at all (`isolation = "memory"`): no
    /// process's code (those are 0 to 255), so it cannot be mistaken for the command's.
    pub const NOT_RUN: i32 = -1;

    /// Whether the node ran nothing (the exit code is [`ExecOutput::NOT_RUN`]).
    pub fn not_run(&self) -> bool {
        self.exit_code == Self::NOT_RUN
    }
}

/// What a node answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeResponse {
    /// Answer to `Redeem` and `Renew`: the lease as it now stands.
    Lease(Signed<Lease>),
    /// Answer to `Release`.
    Released {
        /// The lease released.
        lease_id: String,
    },
    /// Answer to `Status`.
    Status(Box<NodeStatus>),
    /// Answer to `Exec`.
    Exec(ExecOutput),
    /// Answer to `Spawn`.
    Spawned {
        /// The program's pid inside the sliver.
        pid: u32,
    },
    /// Answer to `Logs`.
    Logs {
        /// The log bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Answer to `AddKey`, `DelKey` and `ListKeys`: the keys now authorized.
    Keys(Vec<String>),
    /// Answer to `Events`.
    Events(LeaseEvents),
    /// Answer to `LogsFrom`.
    LogChunk(LogChunk),
}

// ---------------------------------------------------------------- broker protocol

/// What a service manager asks a broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerRequest {
    /// Plan only.
    FindSlice(SliceRequest),
    /// Plan and obtain tickets.
    AcquireSlice(SliceRequest),
}

/// One sliver of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedSliver {
    /// The node.
    pub node: PublicKey,
    /// Its federation.
    pub federation: String,
    /// Its site.
    pub site: String,
    /// The agent to ask.
    pub agent: PublicKey,
    /// The price for the whole duration.
    pub price: u64,
}

/// Nodes left out of a plan for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedGroup {
    /// The reason ("memory", "federation not allowed").
    pub reason: String,
    /// How many nodes.
    pub count: u32,
    /// Some of them (bounded).
    pub examples: Vec<PublicKey>,
}

/// A plan for a slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlicePlan {
    /// The chosen slivers.
    pub chosen: Vec<PlannedSliver>,
    /// Further candidates, best first, for replanning.
    pub alternatives: Vec<PlannedSliver>,
    /// Nodes not picked, grouped by reason.
    pub rejected: Vec<RejectedGroup>,
    /// Whether the request can be met in full.
    pub satisfiable: bool,
    /// A summary; when unsatisfiable, the binding constraint and what would help.
    pub explanation: String,
}

/// What an acquisition obtained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquiredSlice {
    /// Tickets bound to the principal.
    pub tickets: Vec<IssuedTicket>,
    /// The plan, as finally executed.
    pub plan: SlicePlan,
    /// How many slivers are missing (best effort).
    pub missing: u32,
    /// What happened, line by line (refusals, replans): `events` rendered.
    pub report: Vec<String>,
    /// What happened, as typed events (empty from a broker that predates them; left out of
    /// the encoding when empty, and unknown events are skipped when decoding).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "report::known_events"
    )]
    pub events: Vec<AcquireEvent>,
}

/// What a broker answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerResponse {
    /// Answer to `FindSlice`.
    Plan(SlicePlan),
    /// Answer to `AcquireSlice`.
    Acquired(AcquiredSlice),
}

// ---------------------------------------------------------------- broker protocol, as served

// `BrokerRequest` carries a bare `SliceRequest`, but agents serve a principal only on its
// membership certificate. `BrokerCall` is the same message with an optional
// `principal_cert` (and `detailed_failure`): its encoding is a superset of `BrokerRequest`'s,
// so a plain `BrokerRequest` decodes as a `BrokerCall` without certificate and the other way
// round. A failed `AcquireSlice` is an error reply; a caller that sets
// `SliceAsk::detailed_failure` gets `BrokerAnswer::NotAcquired` instead, with the plan and the
// report; the other `BrokerAnswer` variants encode exactly as `BrokerResponse`'s.

/// A slice request with the principal's membership certificate.
///
/// The fields are `SliceRequest`'s, in its order and spelling, plus `principal_cert`,
/// `detailed_failure` and the principal's signed `ask`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceAsk {
    /// The slice's name.
    pub name: String,
    /// On whose behalf.
    pub principal: PublicKey,
    /// The principal's federation.
    pub principal_federation: String,
    /// Regular or admin.
    pub kind: SliceKind,
    /// Resources of each sliver.
    pub per_sliver: Resources,
    /// How many slivers, or on which nodes.
    pub target: SliverTarget,
    /// Where they may go.
    pub constraints: SliceConstraints,
    /// How long, in seconds.
    pub duration_secs: u64,
    /// All or nothing, or best effort.
    pub mode: AcquireMode,
    /// Network grants asked for each sliver (absent: none).
    #[serde(default, skip_serializing_if = "NetGrant::is_default")]
    pub net: NetGrant,
    /// The principal's membership certificate, shown to agents (none: agents serve the
    /// principal only if their policy lists its key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_cert: Option<Signed<MembershipCert>>,
    /// A failed `AcquireSlice` answers [`BrokerAnswer::NotAcquired`] (the plan and the report
    /// too) instead of the bare error reply; only for callers decoding [`BrokerAnswer`]
    /// (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detailed_failure: bool,
    /// The principal's signed ask for `AcquireSlice`, naming the broker (absent from older
    /// clients: agents then refuse every sliver under the rule `signed-ask`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ask: Option<Signed<AskGrant>>,
}

impl SliceAsk {
    /// A request with a certificate.
    pub fn new(request: SliceRequest, principal_cert: Option<Signed<MembershipCert>>) -> Self {
        let SliceRequest {
            name,
            principal,
            principal_federation,
            kind,
            per_sliver,
            target,
            constraints,
            duration_secs,
            mode,
            net,
        } = request;
        SliceAsk {
            name,
            principal,
            principal_federation,
            kind,
            per_sliver,
            target,
            constraints,
            duration_secs,
            mode,
            net,
            principal_cert,
            detailed_failure: false,
            ask: None,
        }
    }

    /// The same request, carrying the principal's signed ask (see [`crate::ask`]).
    pub fn with_ask(mut self, ask: Signed<AskGrant>) -> Self {
        self.ask = Some(ask);
        self
    }

    /// The same request, asking for [`BrokerAnswer::NotAcquired`] when acquisition fails.
    pub fn with_detailed_failure(mut self) -> Self {
        self.detailed_failure = true;
        self
    }

    /// The request and the certificate, apart.
    pub fn into_parts(self) -> (SliceRequest, Option<Signed<MembershipCert>>) {
        let request = SliceRequest {
            name: self.name,
            principal: self.principal,
            principal_federation: self.principal_federation,
            kind: self.kind,
            per_sliver: self.per_sliver,
            target: self.target,
            constraints: self.constraints,
            duration_secs: self.duration_secs,
            mode: self.mode,
            net: self.net,
        };
        (request, self.principal_cert)
    }
}

/// `BrokerRequest` with certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerCall {
    /// Plan only.
    FindSlice(SliceAsk),
    /// Plan and obtain tickets.
    AcquireSlice(SliceAsk),
}

impl From<BrokerRequest> for BrokerCall {
    fn from(request: BrokerRequest) -> Self {
        match request {
            BrokerRequest::FindSlice(r) => BrokerCall::FindSlice(SliceAsk::new(r, None)),
            BrokerRequest::AcquireSlice(r) => BrokerCall::AcquireSlice(SliceAsk::new(r, None)),
        }
    }
}

/// Why an acquisition returned nothing: the reply to send, whose reason says the class
/// (`unsatisfiable`, `unreachable`, `policy`, `no_peering`, …) and whose message names the
/// binding constraint and what happened.
///
/// It travels to callers that ask for it ([`SliceAsk::detailed_failure`]), so they
/// can show the plan and the report, not only the sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{reply}")]
pub struct AcquireFailure {
    /// The reply.
    pub reply: ErrorReply,
    /// The plan as it stood at the end.
    pub plan: SlicePlan,
    /// What happened, line by line: `events` rendered.
    pub report: Vec<String>,
    /// What happened, as typed events (empty from a broker that predates them; left out of
    /// the encoding when empty, and unknown events are skipped when decoding).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "report::known_events"
    )]
    pub events: Vec<AcquireEvent>,
}

/// What this broker answers: `BrokerResponse`'s answers, encoded the same, plus the detailed
/// failure of an `AcquireSlice` for callers that set [`SliceAsk::detailed_failure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerAnswer {
    /// Answer to `FindSlice`.
    Plan(SlicePlan),
    /// Answer to `AcquireSlice`.
    Acquired(AcquiredSlice),
    /// A failed `AcquireSlice`, with its plan and report.
    NotAcquired(AcquireFailure),
}

impl From<BrokerResponse> for BrokerAnswer {
    fn from(response: BrokerResponse) -> Self {
        match response {
            BrokerResponse::Plan(plan) => BrokerAnswer::Plan(plan),
            BrokerResponse::Acquired(slice) => BrokerAnswer::Acquired(slice),
        }
    }
}

/// Why a broker call failed: the error reply, with the plan and the report when the broker
/// sent them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reply}")]
pub struct BrokerFailure {
    /// The reason and the sentence.
    pub reply: ErrorReply,
    /// The plan as it stood at the end (a broker answering [`BrokerAnswer::NotAcquired`]).
    pub plan: Option<Box<SlicePlan>>,
    /// What happened, line by line (empty without a plan).
    pub report: Vec<String>,
    /// What happened, as typed events (empty without a plan, or from a broker that predates
    /// them).
    pub events: Vec<AcquireEvent>,
}

impl From<AcquireFailure> for BrokerFailure {
    fn from(failure: AcquireFailure) -> Self {
        BrokerFailure {
            reply: failure.reply,
            plan: Some(Box::new(failure.plan)),
            report: failure.report,
            events: failure.events,
        }
    }
}

impl BrokerAnswer {
    /// The answer as one `Result`: the response, or the failure with whatever detail came
    /// (boxed: the detail is large and rare).
    pub fn into_result(
        reply: Result<BrokerAnswer, ErrorReply>,
    ) -> Result<BrokerResponse, Box<BrokerFailure>> {
        match reply {
            Ok(BrokerAnswer::Plan(plan)) => Ok(BrokerResponse::Plan(plan)),
            Ok(BrokerAnswer::Acquired(slice)) => Ok(BrokerResponse::Acquired(slice)),
            Ok(BrokerAnswer::NotAcquired(failure)) => Err(Box::new(failure.into())),
            Err(reply) => Err(Box::new(BrokerFailure {
                reply,
                plan: None,
                report: Vec::new(),
                events: Vec::new(),
            })),
        }
    }
}
