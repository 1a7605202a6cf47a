//! The swarm: transport stack and the composed network behaviour.
//!
//! Transport: TCP and in-process memory, each upgraded with noise (authenticating the
//! PlanetMesh key) and yamux; QUIC (TLS 1.3 with the same key) when `OverlayConfig::quic`
//! is on; all wrapped in DNS resolution when the system resolver configuration is readable.
//!
//! Behaviour, in the order the swarm polls it: block list, connection limits, identify,
//! ping, Kademlia, gossipsub (an ad topic and a revocation topic per federation), one
//! request-response behaviour per protocol and one for revocation exchanges, optional mDNS.

use std::collections::HashMap;

use capability_schema::PublicKey;
use futures::future::Either;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, MemoryTransport};
use libp2p::core::upgrade::Version;
use libp2p::gossipsub::{
    self, IdentTopic, MessageAuthenticity, PeerScoreParams, PeerScoreThresholds, TopicScoreParams,
    ValidationMode,
};
use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, StreamProtocol, Swarm, Transport, allow_block_list, connection_limits, identify, kad,
    mdns, noise, ping, request_response, tcp, yamux,
};
use sha2::{Digest, Sha256};

use super::codec::FrameCodec;
use super::protocol::ProtocolKind;
use super::{
    GOSSIP_PROTOCOL_PREFIX, IDENTIFY_PROTOCOL, KAD_PROTOCOL, MAX_AD_BYTES, OverlayConfig,
    OverlayError,
};

/// Everything the overlay's swarm runs.
#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(crate) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    pub(crate) gossipsub: gossipsub::Behaviour,
    pub(crate) agent: request_response::Behaviour<FrameCodec>,
    pub(crate) node: request_response::Behaviour<FrameCodec>,
    pub(crate) broker: request_response::Behaviour<FrameCodec>,
    /// Revocation lists exchanged at each new connection (and offered by `fedctl publish`);
    /// served by the overlay task itself, never by a daemon.
    pub(crate) revocation: request_response::Behaviour<FrameCodec>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    /// Relay client and server, DCUtR and AutoNAT (see [`super::relay`]).
    pub(crate) nat: super::relay::Nat,
}

impl Behaviour {
    /// The request-response behaviour of `kind`.
    pub(crate) fn rr(
        &mut self,
        kind: ProtocolKind,
    ) -> &mut request_response::Behaviour<FrameCodec> {
        match kind {
            ProtocolKind::Agent => &mut self.agent,
            ProtocolKind::Node => &mut self.node,
            ProtocolKind::Broker => &mut self.broker,
        }
    }
}

/// Messages queued for sending on one connection before gossipsub drops (and scores) them.
const GOSSIP_QUEUE_LEN: usize = 512;

/// Gossip score below which a peer is ignored, then disconnected and blocked.
pub(crate) const GRAYLIST_THRESHOLD: f64 = -80.0;

/// Peer-score parameters for one federation's ad topic (and its revocation topic).
///
/// Only invalid ads cost score: P4 is `-10 × count²` (count decaying 1% a second), so the
/// third invalid ad in a minute brings any peer under the graylist threshold, while valid
/// first deliveries earn at most +5. Mesh delivery rates (P3, P3b) are not scored: ad topics
/// are quiet by nature and an idle mesh peer is not a bad one.
pub(crate) fn topic_score_params() -> TopicScoreParams {
    TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: std::time::Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.99,
        ..TopicScoreParams::default()
    }
}

fn gossipsub(config: &OverlayConfig) -> Result<gossipsub::Behaviour, OverlayError> {
    let setup = |e: &dyn std::fmt::Display| OverlayError::Setup(format!("gossipsub: {e}"));
    let gossip_config = gossipsub::ConfigBuilder::default()
        .protocol_id_prefix(GOSSIP_PROTOCOL_PREFIX)
        .validation_mode(ValidationMode::Anonymous)
        .validate_messages()
        .message_id_fn(|message| {
            let digest = Sha256::digest(&message.data);
            gossipsub::MessageId::new(&digest[..20])
        })
        .max_transmit_size(MAX_AD_BYTES + 4096)
        .heartbeat_interval(config.gossip_heartbeat)
        .heartbeat_initial_delay(config.gossip_heartbeat)
        .mesh_n(config.mesh_n)
        .mesh_n_low(config.mesh_n_low)
        .mesh_n_high(config.mesh_n_high)
        .mesh_outbound_min(config.mesh_n_low.min(config.mesh_n / 2).min(2))
        .gossip_lazy(config.mesh_n)
        // Per-connection send queue; gossipsub's default (5000) preallocates about 1 MB per
        // connection, far more than ad traffic needs.
        .connection_handler_queue_len(GOSSIP_QUEUE_LEN)
        .build()
        .map_err(|e| setup(&e))?;
    // Ads are signed by their node; a gossip-level signature would add nothing but work,
    // and message ids are content hashes, so the same ad is one message whoever relays it.
    let mut behaviour = gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, gossip_config)
        .map_err(|e| setup(&e))?;
    let params = PeerScoreParams {
        topics: HashMap::new(),
        // Many testbed nodes share a site's address (and every local test shares 127.0.0.1).
        ip_colocation_factor_weight: 0.0,
        ..PeerScoreParams::default()
    };
    let thresholds = PeerScoreThresholds {
        graylist_threshold: GRAYLIST_THRESHOLD,
        ..PeerScoreThresholds::default()
    };
    behaviour
        .with_peer_score(params, thresholds)
        .map_err(|e| setup(&e))?;
    Ok(behaviour)
}

fn request_response(
    kind: ProtocolKind,
    config: &OverlayConfig,
) -> request_response::Behaviour<FrameCodec> {
    request_response_named(kind.name(), config)
}

fn request_response_named(
    name: &'static str,
    config: &OverlayConfig,
) -> request_response::Behaviour<FrameCodec> {
    request_response::Behaviour::with_codec(
        FrameCodec::default(),
        [(
            StreamProtocol::new(name),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default()
            .with_request_timeout(config.request_timeout)
            .with_max_concurrent_streams(config.max_concurrent_streams),
    )
}

fn behaviour(
    key: &Keypair,
    config: &OverlayConfig,
    relay_client: libp2p::relay::client::Behaviour,
) -> Result<Behaviour, OverlayError> {
    let peer = key.public().to_peer_id();
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(config.max_pending_connections))
        .with_max_pending_outgoing(Some(config.max_pending_connections));
    let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    kad_config.set_query_timeout(config.kad_query_timeout);
    kad_config.set_provider_record_ttl(Some(super::rendezvous::PROVIDER_TTL));
    kad_config.set_provider_publication_interval(Some(super::rendezvous::PROVIDER_REPUBLISH));
    let kad = config.kademlia.then(|| {
        let mut kad =
            kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_config);
        // Every PlanetMesh daemon is reachable by design: answer Kademlia queries even without
        // a confirmed external address (loopback and private testbeds never confirm one).
        kad.set_mode(Some(kad::Mode::Server));
        kad
    });
    let mdns = if config.mdns {
        Some(
            mdns::tokio::Behaviour::new(mdns::Config::default(), peer)
                .map_err(|e| OverlayError::Setup(format!("mDNS: {e}")))?,
        )
    } else {
        None
    };
    Ok(Behaviour {
        blocked: allow_block_list::Behaviour::default(),
        limits: connection_limits::Behaviour::new(limits),
        identify: identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                .with_agent_version(config.agent_version.clone()),
        ),
        ping: ping::Behaviour::new(ping::Config::new()),
        kad: Toggle::from(kad),
        gossipsub: gossipsub(config)?,
        agent: request_response(ProtocolKind::Agent, config),
        node: request_response(ProtocolKind::Node, config),
        broker: request_response(ProtocolKind::Broker, config),
        revocation: request_response_named(
            capability_schema::membership::REVOCATION_PROTOCOL,
            config,
        ),
        mdns: Toggle::from(mdns),
        nat: super::relay::behaviour(key, config, relay_client),
    })
}

type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// Longest time to connect and finish the noise and yamux handshakes.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

fn base_transport(key: &Keypair, quic: bool) -> Result<BoxedTransport, OverlayError> {
    let noise = || noise::Config::new(key).map_err(|e| OverlayError::Setup(format!("noise: {e}")));
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
        .upgrade(Version::V1Lazy)
        .authenticate(noise()?)
        .multiplex(yamux::Config::default());
    let memory = MemoryTransport::default()
        .upgrade(Version::V1Lazy)
        .authenticate(noise()?)
        .multiplex(yamux::Config::default());
    let transport = tcp.or_transport(memory).map(|either, _| match either {
        Either::Left((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
        Either::Right((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
    });
    let transport =
        libp2p::core::transport::timeout::TransportTimeout::new(transport, HANDSHAKE_TIMEOUT)
            .boxed();
    if !quic {
        return Ok(transport);
    }
    // QUIC has its own handshake timeout (`handshake_timeout`, 5 s by default).
    let transport = transport
        .or_transport(
            libp2p::quic::tokio::Transport::new(libp2p::quic::Config::new(key))
                .map(|(peer, connection), _| (peer, StreamMuxerBox::new(connection))),
        )
        .map(|either, _| either.into_inner())
        .boxed();
    Ok(transport)
}

fn transport(key: &Keypair, quic: bool) -> Result<BoxedTransport, OverlayError> {
    match libp2p::dns::tokio::Transport::system(base_transport(key, quic)?) {
        Ok(dns) => Ok(dns.boxed()),
        Err(e) => {
            tracing::warn!(error = %e, "no system DNS configuration; /dns addresses will not resolve");
            base_transport(key, quic)
        }
    }
}

/// Builds the swarm for `key` (not yet listening).
pub(crate) fn build(
    key: &Keypair,
    config: &OverlayConfig,
) -> Result<Swarm<Behaviour>, OverlayError> {
    let swarm_config = libp2p::swarm::Config::with_tokio_executor()
        .with_idle_connection_timeout(config.idle_timeout);
    let (relayed, relay_client) = libp2p::relay::client::new(key.public().to_peer_id());
    Ok(Swarm::new(
        super::relay::or_relayed(transport(key, config.quic)?, relayed, key)?,
        behaviour(key, config, relay_client)?,
        key.public().to_peer_id(),
        swarm_config,
    ))
}

/// The gossip topic of the ads of the federation of `authority` (named by the key).
pub(crate) fn ad_topic(authority: &PublicKey) -> IdentTopic {
    IdentTopic::new(capability_schema::membership::ad_topic(authority))
}

/// The gossip topic of the revocation lists of the federation of `authority`.
pub(crate) fn revocation_topic(authority: &PublicKey) -> IdentTopic {
    IdentTopic::new(capability_schema::membership::revocation_topic(authority))
}
