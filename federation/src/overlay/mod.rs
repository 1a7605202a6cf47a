//! The libp2p overlay every PlanetMesh daemon embeds.
//!
//! One swarm per daemon: TCP (and in-process memory) transports with noise and yamux, QUIC
//! (`/udp/N/quic-v1` addresses, unless [`OverlayConfig::quic`] is off), identify, ping, Kademlia for peer routing, gossipsub with one ad
//! topic and one revocation topic per federation, the agent/node/broker request-response protocols with size-capped
//! CBOR frames, optional mDNS, connection limits and a block list for misbehaving peers, and for
//! nodes behind NAT the circuit relay v2 client and (bounded) server, DCUtR and AutoNAT ([`relay`]).
//!
//! How data flows:
//! 1. [`Overlay::start`] builds the swarm, listens, dials the bootstrap peers, subscribes the
//!    configured federations and spawns one tokio task that owns the swarm.
//! 2. Daemons hold an [`OverlayHandle`] (cheap to clone). Every call is a command on a
//!    bounded channel to the task, answered on a oneshot; daemons never touch libp2p types
//!    beyond `Multiaddr`.
//! 3. Gossip: every ad that arrives is validated by the [`TrustStore`] (signature,
//!    membership, expiry) against the last `seq` seen from its node, then reported to
//!    gossipsub as accepted (relayed and handed to [`OverlayHandle::ads`]), ignored (stale:
//!    dropped, nobody blamed) or rejected (dropped, the relaying peer loses score; peers whose
//!    score falls under the graylist threshold are disconnected and blocked for a while).
//! 4. Revocations: each federation also has a revocation topic, and every new connection
//!    starts with a revocation exchange (each side gets the other's newer lists); a newer
//!    list is applied to the [`SharedTrust`] store at once, gossiped on, and announced to the
//!    daemon on [`OverlayHandle::revocations`] (see the `revocation` module; an older list
//!    is ignored, a forged one costs the relaying peer score).
//! 5. Requests: [`OverlayHandle::request`] encodes an `Envelope`, checks its size, sends it
//!    and decodes the answer; [`OverlayHandle::serve`] gives a daemon a bounded stream of
//!    decoded requests with a responder each. Oversized or malformed requests are answered
//!    with a typed error reply by the overlay itself and never reach the daemon.
//! 6. The end of the task is visible: [`OverlayHandle::closed`] resolves with how it ended
//!    (shutdown, dropped, or a panic, caught from the task's join handle), and daemons wait
//!    on [`OverlayHandle::alive_until`] so that an overlay that dies under them makes them
//!    exit with an error instead of serving without a network.

mod codec;
mod handle;
mod identity;
mod protocol;
pub mod relay;
pub mod rendezvous;
mod revocation;
mod seq;
mod swarm;
mod task;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use capability_schema::{DecodeError, ErrorReply, PublicKey, RevocationList, SecretKey, Signed};
pub use codec::{Frame, FrameCodec, MAX_DRAIN_BYTES};
pub use handle::{
    AdEvent, HeartbeatEvent, Incoming, OverlayExit, OverlayHandle, OverlayStats, Responder,
    ServeStream,
};
pub use identity::{addr_for_peer, addr_peer, keypair, libp2p_public, peer_id, public_key};
pub use libp2p::{Multiaddr, PeerId};
pub use protocol::{AgentProtocol, BrokerProtocol, NodeProtocol, Protocol, ProtocolKind};
pub use relay::{NatConfig, NatReport, RelayConfig};
pub use revocation::MAX_REVOCATION_BYTES;

use crate::trust::{AdRejection, TrustError, TrustStore};

/// The trust store as the overlay and its daemon share it: the daemon may add agreements and
/// revocation lists while the overlay validates ads.
pub type SharedTrust = Arc<RwLock<TrustStore>>;

/// The largest gossip message (one signed ad) accepted or published.
pub const MAX_AD_BYTES: usize = 256 * 1024;

/// Kademlia's protocol name on PlanetMesh (kept apart from the public IPFS DHT).
pub const KAD_PROTOCOL: &str = "/planetmesh/kad/1";
/// Identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/planetmesh/id/1";
/// Gossipsub's protocol id prefix.
pub const GOSSIP_PROTOCOL_PREFIX: &str = "/planetmesh/meshsub";

/// How the overlay runs. Every field documents its default ([`OverlayConfig::default`]).
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    /// Addresses to listen on. Default: `/ip4/0.0.0.0/tcp/0` (any interface, a free port).
    /// `/memory/0` listens on the in-process memory transport (tests, simulations);
    /// `/ip4/0.0.0.0/udp/0/quic-v1` on QUIC (with [`OverlayConfig::quic`]).
    pub listen: Vec<Multiaddr>,
    /// The QUIC transport: listen on and dial `/udp/N/quic-v1` addresses (TLS 1.3 with the
    /// same key, streams multiplexed by QUIC itself). Off, such addresses are refused as
    /// unsupported. Default: on.
    pub quic: bool,
    /// Peers to join through, ideally with a `/p2p/<peer id>` suffix (then they also seed
    /// Kademlia). Default: none.
    pub bootstrap: Vec<Multiaddr>,
    /// Federations whose ads to follow from the start; each needs a trusted authority in the
    /// trust store. Default: none.
    pub federations: Vec<String>,
    /// Kademlia peer routing: find peers by key, keep `target_peers` connections. Off only
    /// for fixed topologies (tests, simulations). Default: on.
    pub kademlia: bool,
    /// Discover peers on the local network with mDNS. Default: off.
    pub mdns: bool,
    /// Gossipsub heartbeat (mesh upkeep, gossip emission). Default: 1 s.
    pub gossip_heartbeat: Duration,
    /// Gossipsub mesh degree `D` (peers each ad is pushed to per hop). Default: 6.
    pub mesh_n: usize,
    /// Fewest mesh peers before grafting more. Default: 5.
    pub mesh_n_low: usize,
    /// Most mesh peers before pruning. Default: 12.
    pub mesh_n_high: usize,
    /// Keep at least this many connections, dialing peers Kademlia knows. Default: 8.
    pub target_peers: usize,
    /// Trim connections above this many, keeping ad gossip mesh peers, peers with requests in
    /// flight and fresh connections. Gossip streams never go idle, so without this every peer
    /// a Kademlia query touched would stay connected for good. Default: 32.
    pub max_peers: usize,
    /// How often to check `target_peers` and `max_peers` (on the next one-second tick).
    /// Default: 5 s.
    pub discovery_interval: Duration,
    /// Connections younger than this are never trimmed (a caller may be about to use them).
    /// Default: 10 s.
    pub trim_grace: Duration,
    /// Most established connections in all. Default: 256.
    pub max_connections: u32,
    /// Most established connections per peer. Default: 2.
    pub max_connections_per_peer: u32,
    /// Most connections being set up (each direction). Default: 64.
    pub max_pending_connections: u32,
    /// Close connections unused for this long. Default: 60 s.
    pub idle_timeout: Duration,
    /// Longest time a request may take on the wire, both as caller and as server (a caller's
    /// own, shorter timeout applies too). Default: 120 s.
    pub request_timeout: Duration,
    /// Most concurrent request streams per connection and protocol. Default: 64.
    pub max_concurrent_streams: usize,
    /// Longest Kademlia query. Default: 10 s.
    pub kad_query_timeout: Duration,
    /// How long a peer that fell under the graylist threshold stays blocked. Default: 10 min.
    pub ban_duration: Duration,
    /// Commands queued from handles to the overlay task. Default: 256.
    pub command_queue: usize,
    /// Validated ads buffered for each [`OverlayHandle::ads`] receiver. Default: 1024.
    pub ad_queue: usize,
    /// Incoming requests queued for a served protocol before refusing as busy. Default: 64.
    pub serve_queue: usize,
    /// Nodes whose last `seq` is remembered, and peers whose addresses are. When full, nodes
    /// whose ad expired are forgotten first, then the node updated least recently (an ad of
    /// a forgotten node can be replayed once, until it expires). Default: 100000.
    pub max_tracked_nodes: usize,
    /// Identify's agent version. Default: `planetmesh/<crate version>`.
    pub agent_version: String,
    /// Revocation lists to hold from the start (a daemon's `revocations` files): each is
    /// validated and applied to the trust store before the overlay starts, and handed to
    /// every peer that holds an older one. Default: none.
    pub revocations: Vec<Signed<RevocationList>>,
    /// Serving as a relay for peers behind NAT (see the `relay` module). Default: off
    /// ([`RelayConfig::off`]); the daemons' `[relay]` section turns it on.
    pub relay: RelayConfig,
    /// Reaching this overlay from behind NAT: relays to reserve on, AutoNAT. Default:
    /// [`NatConfig::default`] (AutoNAT on, no relay unless found private).
    pub nat: NatConfig,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            listen: vec![
                Multiaddr::empty()
                    .with(libp2p::multiaddr::Protocol::Ip4(
                        std::net::Ipv4Addr::UNSPECIFIED,
                    ))
                    .with(libp2p::multiaddr::Protocol::Tcp(0)),
            ],
            quic: true,
            bootstrap: Vec::new(),
            federations: Vec::new(),
            kademlia: true,
            mdns: false,
            gossip_heartbeat: Duration::from_secs(1),
            mesh_n: 6,
            mesh_n_low: 5,
            mesh_n_high: 12,
            target_peers: 8,
            max_peers: 32,
            discovery_interval: Duration::from_secs(5),
            trim_grace: Duration::from_secs(10),
            max_connections: 256,
            max_connections_per_peer: 2,
            max_pending_connections: 64,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(120),
            max_concurrent_streams: 64,
            kad_query_timeout: Duration::from_secs(10),
            ban_duration: Duration::from_secs(600),
            command_queue: 256,
            ad_queue: 1024,
            serve_queue: 64,
            max_tracked_nodes: 100_000,
            agent_version: format!("planetmesh/{}", env!("CARGO_PKG_VERSION")),
            revocations: Vec::new(),
            relay: RelayConfig::off(),
            nat: NatConfig::default(),
        }
    }
}

impl OverlayConfig {
    /// The defaults, listening on the in-process memory transport only (tests, simulations).
    pub fn memory() -> Self {
        OverlayConfig {
            listen: vec![Multiaddr::empty().with(libp2p::multiaddr::Protocol::Memory(0))],
            ..Self::default()
        }
    }

    /// The defaults, listening on a free TCP port of 127.0.0.1 only.
    pub fn loopback() -> Self {
        OverlayConfig {
            listen: vec![
                Multiaddr::empty()
                    .with(libp2p::multiaddr::Protocol::Ip4(
                        std::net::Ipv4Addr::LOCALHOST,
                    ))
                    .with(libp2p::multiaddr::Protocol::Tcp(0)),
            ],
            ..Self::default()
        }
    }
}

/// Why an overlay operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayError {
    /// The swarm could not be built (transport, gossipsub or mDNS setup).
    #[error("cannot build the overlay: {0}")]
    Setup(String),
    /// Listening on an address failed.
    #[error("cannot listen on {addr}: {detail}")]
    Listen {
        /// The address.
        addr: String,
        /// What failed.
        detail: String,
    },
    /// Dialing an address failed.
    #[error("cannot connect to {addr}: {detail}")]
    Dial {
        /// The address.
        addr: String,
        /// What failed.
        detail: String,
    },
    /// The overlay task has stopped.
    #[error("the overlay has stopped")]
    Closed,
    /// No answer within the caller's timeout.
    #[error("{protocol} request to {peer} timed out after {after:?}")]
    Timeout {
        /// The protocol.
        protocol: ProtocolKind,
        /// The peer.
        peer: PublicKey,
        /// The timeout.
        after: Duration,
    },
    /// The peer could not be reached (no address, or every address failed).
    #[error("{peer} is unreachable: {detail}")]
    Unreachable {
        /// The peer.
        peer: PublicKey,
        /// What failed.
        detail: String,
    },
    /// The connection closed before the answer came.
    #[error("the connection to {peer} closed before it answered")]
    ConnectionClosed {
        /// The peer.
        peer: PublicKey,
    },
    /// The peer does not speak the protocol.
    #[error("{peer} does not speak {protocol}")]
    Unsupported {
        /// The peer.
        peer: PublicKey,
        /// The protocol.
        protocol: ProtocolKind,
    },
    /// The request stream failed (the peer may have reset it).
    #[error("{protocol} stream to {peer} failed: {detail}")]
    Stream {
        /// The peer.
        peer: PublicKey,
        /// The protocol.
        protocol: ProtocolKind,
        /// What failed.
        detail: String,
    },
    /// The request is larger than the protocol allows; it was not sent.
    #[error("request of {size} bytes exceeds the {limit}-byte limit; it was not sent")]
    RequestTooLarge {
        /// The encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The answer was larger than the protocol allows; it was not read.
    #[error("{peer} answered with more than the {limit}-byte limit")]
    ResponseTooLarge {
        /// The peer.
        peer: PublicKey,
        /// The limit.
        limit: usize,
    },
    /// The answer does not decode.
    #[error("answer from {peer} does not decode: {error}")]
    Decode {
        /// The peer.
        peer: PublicKey,
        /// The decoding error.
        error: DecodeError,
    },
    /// The answer carries another request id.
    #[error("answer from {peer} carries request id {found}, expected {expected}")]
    WrongRequestId {
        /// The peer.
        peer: PublicKey,
        /// The id sent.
        expected: u64,
        /// The id received.
        found: u64,
    },
    /// The peer refused the request with a reason.
    #[error("{0}")]
    Rejected(ErrorReply),
    /// A revocation list (from the config, or to publish) does not validate.
    #[error(
        "revocation list refused: {0}; use a list its federation's trusted authority signed (`fedctl show FILE` says whose it is)"
    )]
    InvalidRevocation(String),
    /// A revocation exchange with a peer failed.
    #[error("revocation exchange with {peer} failed: {detail}")]
    Exchange {
        /// The peer.
        peer: String,
        /// What failed.
        detail: String,
    },
    /// An ad to publish does not validate.
    #[error("ad not published: {0}")]
    InvalidAd(AdRejection),
    /// The trust store refused (for example a federation without a trusted authority).
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// No peer follows the federation yet.
    #[error("no peer follows federation {federation:?} yet; the ad was not sent")]
    NoPeers {
        /// The federation.
        federation: String,
    },
    /// Gossipsub refused to publish.
    #[error("publishing failed: {0}")]
    Publish(String),
    /// Someone serves this protocol already in this daemon.
    #[error("{0} is served already")]
    AlreadyServed(ProtocolKind),
    /// A responder was used after the answer was sent.
    #[error("the answer was sent already")]
    AlreadyAnswered,
}

/// Entry point: builds and starts an overlay.
#[derive(Debug)]
pub struct Overlay;

impl Overlay {
    /// Builds the swarm for `key`, listens on `config.listen` (waiting until each listener has
    /// an address, so `/tcp/0` ports are known), dials `config.bootstrap`, subscribes
    /// `config.federations`, and spawns the overlay task on the current tokio runtime.
    pub async fn start(
        key: &SecretKey,
        config: OverlayConfig,
        trust: SharedTrust,
    ) -> Result<OverlayHandle, OverlayError> {
        task::start(key, config, trust).await
    }
}
