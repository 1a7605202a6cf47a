//! Nodes behind NAT: circuit relay v2, hole punching (DCUtR) and AutoNAT.
//!
//! Home and campus nodes cannot be dialed; they dial out. Every overlay carries the relay
//! client transport and DCUtR, so any daemon or `slicectl` can dial a `/p2p-circuit` address;
//! a well-connected daemon also serves as a relay ([`RelayConfig`], bounded), and a daemon
//! behind NAT ([`NatConfig`]) holds a reservation on one and is reachable through it.
//!
//! How data flows:
//! 1. `NatState::new` reads the config: relay addresses without `/p2p/<peer id>` are refused
//!    with a warning (the daemon keeps running without them).
//! 2. A serving daemon that is not behind NAT confirms its listen addresses as external
//!    addresses (the relay hands them to whoever reserves) and advertises the HOP protocol.
//! 3. A daemon wants a relay when `behind_nat` is set, `relays` is not empty, or AutoNAT
//!    finds it private. Each second (`NatState::maintain`) it listens on
//!    `<relay>/p2p-circuit` for up to `reservations` relays: the configured ones, else the
//!    peers identify shows serving HOP. The relay's answer becomes a listen address
//!    (`.../p2p/<relay>/p2p-circuit/p2p/<self>`) that identify pushes and nodemgr puts in
//!    its ad. A refused reservation or an unreachable relay is logged and tried again after
//!    a backoff of up to a minute.
//! 4. A peer dials that address through the relay; both ends then try DCUtR, and a punched
//!    direct connection carries later requests. [`NatReport`] says which connections are
//!    relayed and which are direct, and counts reservations, circuits and hole punches.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::transport::ListenerId;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, Transport, autonat, dcutr, identify, noise, relay, yamux};
use serde::{Deserialize, Serialize};

use super::swarm::{Behaviour, BehaviourEvent};
use super::task::error_chain;
use super::{OverlayConfig, OverlayError};

/// The circuit relay v2 HOP protocol: a peer whose identify lists it serves as a relay.
pub const HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

/// Longest wait before trying a relay again after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Serving as a relay for peers behind NAT: the `[relay]` section of a daemon's config.
/// Every field says its default ([`RelayConfig::default`], the daemons' default; an
/// [`OverlayConfig`] made in code does not serve unless told to). A relay forwards bytes
/// only between a peer that holds a reservation and its callers, within these bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Serve as a relay. A daemon behind NAT (configured, or found by AutoNAT) never serves,
    /// whatever this says. Default: on.
    pub serve: bool,
    /// Most reservations held at once, over all peers. Default: 128.
    pub max_reservations: usize,
    /// Most reservations one peer holds at once. Default: 2.
    pub max_reservations_per_peer: usize,
    /// How long a reservation lasts before its holder renews it. Default: 3600 s.
    pub reservation_duration_secs: u64,
    /// Most circuits relayed at once, over all peers. Default: 64.
    pub max_circuits: usize,
    /// Most circuits relayed at once to or from one peer. Default: 8.
    pub max_circuits_per_peer: usize,
    /// A circuit is closed after this long (its peers have usually punched a direct
    /// connection by then, and reconnect through the relay otherwise). Default: 600 s.
    pub max_circuit_duration_secs: u64,
    /// A circuit is closed after relaying this many bytes. Default: 16 MiB.
    pub max_circuit_bytes: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            serve: true,
            max_reservations: 128,
            max_reservations_per_peer: 2,
            reservation_duration_secs: 3600,
            max_circuits: 64,
            max_circuits_per_peer: 8,
            max_circuit_duration_secs: 600,
            max_circuit_bytes: 16 << 20,
        }
    }
}

impl RelayConfig {
    /// The defaults, not serving.
    pub fn off() -> Self {
        RelayConfig {
            serve: false,
            ..Self::default()
        }
    }

    /// Checks the bounds (each at least 1, durations within what the protocol carries).
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("max_reservations", self.max_reservations as u64),
            (
                "max_reservations_per_peer",
                self.max_reservations_per_peer as u64,
            ),
            ("reservation_duration_secs", self.reservation_duration_secs),
            ("max_circuits", self.max_circuits as u64),
            ("max_circuits_per_peer", self.max_circuits_per_peer as u64),
            ("max_circuit_duration_secs", self.max_circuit_duration_secs),
            ("max_circuit_bytes", self.max_circuit_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(format!(
                "[relay] {name} must be at least 1 (set serve = false to serve no relay)"
            ));
        }
        if self.max_circuit_duration_secs > u64::from(u32::MAX) {
            return Err("[relay] max_circuit_duration_secs must fit in 32 bits".into());
        }
        Ok(())
    }

    fn libp2p(&self) -> relay::Config {
        relay::Config {
            max_reservations: self.max_reservations,
            max_reservations_per_peer: self.max_reservations_per_peer,
            reservation_duration: Duration::from_secs(self.reservation_duration_secs),
            max_circuits: self.max_circuits,
            max_circuits_per_peer: self.max_circuits_per_peer,
            max_circuit_duration: Duration::from_secs(
                self.max_circuit_duration_secs.min(u64::from(u32::MAX)),
            ),
            max_circuit_bytes: self.max_circuit_bytes,
            // libp2p's rate limits stay: per peer and per IP address, for reservations and
            // for circuits (a peer cannot churn through them either).
            ..relay::Config::default()
        }
    }
}

/// Reaching this daemon from behind NAT: the `[nat]` section of a daemon's config. Every
/// field says its default ([`NatConfig::default`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatConfig {
    /// This daemon cannot be dialed (a home or campus node behind NAT): reserve a slot on a
    /// relay from the start, without waiting for AutoNAT. Default: off.
    pub behind_nat: bool,
    /// Relays to reserve on, as full addresses with `/p2p/<peer id>` (`agentd key` or
    /// `broker key` prints them). Not empty, this daemon reserves on them as if `behind_nat`
    /// were set; empty, it reserves on peers that serve as relays (bootstrap peers first).
    /// Default: none.
    pub relays: Vec<Multiaddr>,
    /// On how many relays to hold a reservation at once. Default: 2.
    pub reservations: usize,
    /// Ask peers to dial back (AutoNAT) to learn whether this daemon is reachable; found
    /// private, it reserves on a relay and stops serving as one. Peers are asked, and answer,
    /// only at global (public) IP addresses. Default: on.
    pub autonat: bool,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            behind_nat: false,
            relays: Vec::new(),
            reservations: 2,
            autonat: true,
        }
    }
}

impl NatConfig {
    /// Checks the values (`reservations` at least 1).
    pub fn check(&self) -> Result<(), String> {
        if self.reservations == 0 {
            return Err("[nat] reservations must be at least 1".into());
        }
        Ok(())
    }
}

/// What AutoNAT concluded about this daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reachability {
    /// Not known yet (or AutoNAT is off).
    Unknown,
    /// Peers dialed it back.
    Public,
    /// Peers could not dial it back.
    Private,
}

/// One relay this daemon uses or tries to use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayUse {
    /// The relay's address (with `/p2p/<peer id>`).
    pub relay: String,
    /// This daemon's address through it, once the relay accepted the reservation.
    pub reserved: Option<String>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
}

/// How one connected peer is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerPath {
    /// The peer.
    pub peer: String,
    /// Connections through a relay.
    pub relayed: u32,
    /// Direct connections (dialed, accepted or punched).
    pub direct: u32,
}

/// The NAT side of an overlay, for status pages and tests ([`super::OverlayHandle::nat`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatReport {
    /// Whether this daemon serves as a relay now.
    pub serving: bool,
    /// Whether this daemon wants a relay (configured behind NAT, relays listed, or found
    /// private by AutoNAT).
    pub behind_nat: bool,
    /// What AutoNAT concluded.
    pub reachability: Reachability,
    /// The relays this daemon uses or tries.
    pub relays: Vec<RelayUse>,
    /// Configured relay addresses refused (no `/p2p/<peer id>`), with why.
    pub refused: Vec<String>,
    /// Connected peers and how.
    pub peers: Vec<PeerPath>,
    /// Relayed connections opened since start.
    pub relayed_connections: u64,
    /// Direct connections that replaced a relayed one (DCUtR).
    pub hole_punches: u64,
    /// Hole punches that failed.
    pub hole_punch_failures: u64,
    /// As a relay: reservations accepted, and refused (limits).
    pub reservations_accepted: u64,
    /// As a relay: reservations refused.
    pub reservations_denied: u64,
    /// As a relay: circuits accepted.
    pub circuits_accepted: u64,
    /// As a relay: circuits refused (limits, or no reservation).
    pub circuits_denied: u64,
}

/// The behaviours of the NAT side, part of the overlay's [`Behaviour`].
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
pub(crate) struct Nat {
    server: Toggle<relay::Behaviour>,
    client: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    autonat: Toggle<autonat::Behaviour>,
}

/// The NAT behaviours for `key` (`client` comes with the transport from
/// [`relay::client::new`]).
pub(crate) fn behaviour(
    key: &Keypair,
    config: &OverlayConfig,
    client: relay::client::Behaviour,
) -> Nat {
    let peer = key.public().to_peer_id();
    let serve = config.relay.serve && !wants_relay(&config.nat);
    let server = serve.then(|| {
        let mut server = relay::Behaviour::new(peer, config.relay.libp2p());
        // Serving is decided here (and by AutoNAT), not by libp2p's guess from external
        // addresses.
        server.set_status(Some(relay::Status::Enable));
        server
    });
    let autonat = config.nat.autonat.then(|| {
        autonat::Behaviour::new(
            peer,
            autonat::Config {
                boot_delay: Duration::from_secs(5),
                retry_interval: Duration::from_secs(60),
                ..autonat::Config::default()
            },
        )
    });
    Nat {
        server: Toggle::from(server),
        client,
        dcutr: dcutr::Behaviour::new(peer),
        autonat: Toggle::from(autonat),
    }
}

type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// `base` or the relay client transport (circuits are authenticated with noise and
/// multiplexed with yamux end to end, like TCP connections).
pub(crate) fn or_relayed(
    base: BoxedTransport,
    relayed: relay::client::Transport,
    key: &Keypair,
) -> Result<BoxedTransport, OverlayError> {
    let noise = noise::Config::new(key).map_err(|e| OverlayError::Setup(format!("noise: {e}")))?;
    let relayed = relayed
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)));
    Ok(relayed
        .or_transport(base)
        .map(|either, _| either.into_inner())
        .boxed())
}

fn wants_relay(config: &NatConfig) -> bool {
    config.behind_nat || !config.relays.is_empty()
}

/// Whether `addr` goes through a relay.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// The relay's peer id in a relay address (its last `/p2p/`), or why it has none.
fn relay_peer(addr: &Multiaddr) -> Result<PeerId, String> {
    if is_relayed(addr) {
        return Err(format!(
            "relay address {addr} is already a circuit address; give the relay's own address"
        ));
    }
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Ok(peer),
        _ => Err(format!(
            "relay address {addr} has no /p2p/<peer id>; write it as {addr}/p2p/<the relay's peer id> \
             (`agentd key` or `broker key` on the relay prints the full address)"
        )),
    }
}

/// A relay this daemon reserves on.
#[derive(Debug)]
struct Candidate {
    /// The relay's address with `/p2p/<peer id>`.
    addr: Multiaddr,
    peer: PeerId,
    /// Configured (kept when it fails) or found by identify (dropped after failures).
    configured: bool,
    listener: Option<ListenerId>,
    reserved: Option<Multiaddr>,
    next_try: Instant,
    failures: u32,
    last_error: Option<String>,
}

/// The overlay task's NAT state (see the module doc).
#[derive(Debug)]
pub(crate) struct NatState {
    config: NatConfig,
    serve: bool,
    reachability: Reachability,
    candidates: Vec<Candidate>,
    refused: Vec<String>,
    /// Open connections: peer and whether relayed.
    connections: HashMap<ConnectionId, (PeerId, bool)>,
    /// Every configured listen address is a loopback one (a test): loopback addresses may
    /// then be handed out as external; otherwise never (a caller would reach itself).
    loopback_only: bool,
    report: NatReport,
}

impl NatState {
    pub(crate) fn new(config: &OverlayConfig) -> Self {
        let mut refused = Vec::new();
        let mut candidates = Vec::new();
        for addr in &config.nat.relays {
            match relay_peer(addr) {
                Ok(peer) => candidates.push(Candidate {
                    addr: addr.clone(),
                    peer,
                    configured: true,
                    listener: None,
                    reserved: None,
                    next_try: Instant::now(),
                    failures: 0,
                    last_error: None,
                }),
                Err(reason) => {
                    tracing::warn!("{reason}; this relay is not used");
                    refused.push(reason);
                }
            }
        }
        let serve = config.relay.serve && !wants_relay(&config.nat);
        NatState {
            config: config.nat.clone(),
            serve,
            reachability: Reachability::Unknown,
            candidates,
            refused,
            connections: HashMap::new(),
            loopback_only: config.listen.iter().all(is_loopback),
            report: NatReport {
                serving: serve,
                behind_nat: wants_relay(&config.nat),
                reachability: Reachability::Unknown,
                relays: Vec::new(),
                refused: Vec::new(),
                peers: Vec::new(),
                relayed_connections: 0,
                hole_punches: 0,
                hole_punch_failures: 0,
                reservations_accepted: 0,
                reservations_denied: 0,
                circuits_accepted: 0,
                circuits_denied: 0,
            },
        }
    }

    fn behind_nat(&self) -> bool {
        wants_relay(&self.config) || self.reachability == Reachability::Private
    }

    /// Whether a peer's announced address is worth keeping: a loopback address leads to this
    /// machine, not to the peer, unless this overlay listens on loopback alone (a test); a
    /// dial that meets the wrong peer there fails with all its other addresses, the relayed
    /// one too.
    pub(crate) fn usable(&self, addr: &Multiaddr) -> bool {
        self.loopback_only || !is_loopback(addr)
    }

    /// The report for [`super::OverlayHandle::nat`].
    pub(crate) fn report(&self) -> NatReport {
        let mut paths: HashMap<PeerId, (u32, u32)> = HashMap::new();
        for (peer, relayed) in self.connections.values() {
            let entry = paths.entry(*peer).or_default();
            if *relayed {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
        let mut peers: Vec<PeerPath> = paths
            .into_iter()
            .map(|(peer, (relayed, direct))| PeerPath {
                peer: peer.to_string(),
                relayed,
                direct,
            })
            .collect();
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        NatReport {
            serving: self.serve,
            behind_nat: self.behind_nat(),
            reachability: self.reachability,
            relays: self
                .candidates
                .iter()
                .map(|c| RelayUse {
                    relay: c.addr.to_string(),
                    reserved: c.reserved.as_ref().map(ToString::to_string),
                    last_error: c.last_error.clone(),
                })
                .collect(),
            refused: self.refused.clone(),
            peers,
            ..self.report.clone()
        }
    }

    /// Once a second: confirms a serving relay's external addresses, and reserves on relays
    /// while fewer than `reservations` are held or tried.
    pub(crate) fn maintain(&mut self, swarm: &mut Swarm<Behaviour>) {
        self.sync_external(swarm);
        if !self.behind_nat() {
            return;
        }
        let now = Instant::now();
        let mut active = self
            .candidates
            .iter()
            .filter(|c| c.listener.is_some())
            .count();
        for candidate in &mut self.candidates {
            if active >= self.config.reservations {
                break;
            }
            if candidate.listener.is_some() || candidate.next_try > now {
                continue;
            }
            let circuit = candidate.addr.clone().with(Protocol::P2pCircuit);
            match swarm.listen_on(circuit) {
                Ok(id) => {
                    tracing::debug!(relay = %candidate.addr, "asking the relay for a reservation");
                    candidate.listener = Some(id);
                    active += 1;
                }
                Err(e) => {
                    let reason = format!("cannot listen through relay {}: {e}", candidate.addr);
                    tracing::warn!("{reason}; trying again later");
                    candidate.failed(reason, now);
                }
            }
        }
    }

    /// A serving relay's listen addresses become its confirmed external addresses (the relay
    /// hands them to whoever reserves); loopback ones only when it listens on loopback alone.
    fn sync_external(&mut self, swarm: &mut Swarm<Behaviour>) {
        let serving = self.serve && !self.behind_nat();
        let wanted: Vec<Multiaddr> = if serving {
            swarm
                .listeners()
                .filter(|a| !is_relayed(a) && !is_unspecified(a))
                .filter(|a| self.loopback_only || !is_loopback(a))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let current: Vec<Multiaddr> = swarm.external_addresses().cloned().collect();
        for addr in &current {
            if !wanted.contains(addr) {
                swarm.remove_external_address(addr);
            }
        }
        for addr in wanted {
            if !current.contains(&addr) {
                swarm.add_external_address(addr);
            }
        }
    }

    /// Looks at every swarm event before the task handles it.
    pub(crate) fn on_swarm_event(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        event: &SwarmEvent<BehaviourEvent>,
    ) {
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                if let Some(c) = self.candidate_of(*listener_id) {
                    tracing::info!(relay = %c.addr, address = %address, "relay reservation accepted: reachable through the relay");
                    c.reserved = Some(address.clone());
                    c.failures = 0;
                    c.last_error = None;
                }
            }
            SwarmEvent::ExpiredListenAddr {
                listener_id,
                address,
            } => {
                if let Some(c) = self.candidate_of(*listener_id)
                    && c.reserved.as_ref() == Some(address)
                {
                    c.reserved = None;
                }
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let now = Instant::now();
                if let Some(c) = self.candidate_of(*listener_id) {
                    let detail = match reason {
                        Ok(()) => "the relay ended the reservation".to_owned(),
                        Err(e) => error_chain(e),
                    };
                    let reason = format!("relay {} unreachable or refused: {detail}", c.addr);
                    tracing::warn!("{reason}; trying again later");
                    c.failed(reason, now);
                }
                self.candidates
                    .retain(|c| c.configured || c.failures < 3 || c.listener.is_some());
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(c) = self.candidate_of(*listener_id) {
                    let reason = format!("relay {}: {}", c.addr, error_chain(error));
                    tracing::warn!("{reason}");
                    c.last_error = Some(reason);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let relayed = endpoint.is_relayed();
                if relayed {
                    self.report.relayed_connections += 1;
                    tracing::info!(peer = %peer_id, address = %endpoint.get_remote_address(), "relayed connection");
                }
                self.connections.insert(*connection_id, (*peer_id, relayed));
            }
            SwarmEvent::ConnectionClosed { connection_id, .. } => {
                self.connections.remove(connection_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.on_identify(*peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Nat(event)) => self.on_nat_event(swarm, event),
            _ => {}
        }
    }

    /// A peer that serves HOP becomes a relay candidate when none is configured.
    fn on_identify(&mut self, peer: PeerId, info: &identify::Info) {
        if !self.config.relays.is_empty()
            || !info.protocols.iter().any(|p| p.as_ref() == HOP_PROTOCOL)
            || self.candidates.iter().any(|c| c.peer == peer)
        {
            return;
        }
        // One direct address to reach it by; its relayed ones would need another relay.
        let Some(addr) = info
            .listen_addrs
            .iter()
            .find(|a| !is_relayed(a) && !is_loopback(a))
            .or_else(|| info.listen_addrs.iter().find(|a| !is_relayed(a)))
        else {
            return;
        };
        let mut addr = addr.clone();
        if !matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
            addr.push(Protocol::P2p(peer));
        }
        tracing::debug!(relay = %addr, "a peer serves as a relay");
        self.candidates.push(Candidate {
            addr,
            peer,
            configured: false,
            listener: None,
            reserved: None,
            next_try: Instant::now(),
            failures: 0,
            last_error: None,
        });
    }

    fn on_nat_event(&mut self, swarm: &mut Swarm<Behaviour>, event: &NatEvent) {
        match event {
            NatEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                let reachability = match new {
                    autonat::NatStatus::Public(_) => Reachability::Public,
                    autonat::NatStatus::Private => Reachability::Private,
                    autonat::NatStatus::Unknown => Reachability::Unknown,
                };
                tracing::info!(?reachability, "AutoNAT: reachability changed");
                self.reachability = reachability;
                self.report.reachability = reachability;
                let serving = self.serve && !self.behind_nat();
                if let Some(server) = swarm.behaviour_mut().nat.server.as_mut() {
                    server.set_status(Some(if serving {
                        relay::Status::Enable
                    } else {
                        relay::Status::Disable
                    }));
                }
            }
            NatEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => {
                    self.report.hole_punches += 1;
                    tracing::info!(peer = %remote_peer_id, "hole punched: direct connection replaces the relayed one");
                }
                Err(e) => {
                    self.report.hole_punch_failures += 1;
                    tracing::info!(peer = %remote_peer_id, error = %e, "hole punch failed; the connection stays relayed");
                }
            },
            NatEvent::Server(event) => match event {
                relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                    self.report.reservations_accepted += 1;
                    tracing::debug!(peer = %src_peer_id, "relay: reservation accepted");
                }
                relay::Event::ReservationReqDenied { src_peer_id, .. } => {
                    self.report.reservations_denied += 1;
                    tracing::info!(peer = %src_peer_id, "relay: reservation refused (limits)");
                }
                relay::Event::CircuitReqAccepted {
                    src_peer_id,
                    dst_peer_id,
                } => {
                    self.report.circuits_accepted += 1;
                    tracing::debug!(from = %src_peer_id, to = %dst_peer_id, "relay: circuit opened");
                }
                relay::Event::CircuitReqDenied {
                    src_peer_id,
                    dst_peer_id,
                    ..
                } => {
                    self.report.circuits_denied += 1;
                    tracing::info!(from = %src_peer_id, to = %dst_peer_id, "relay: circuit refused (limits or no reservation)");
                }
                _ => {}
            },
            NatEvent::Client(relay::client::Event::InboundCircuitEstablished {
                src_peer_id,
                ..
            }) => {
                tracing::info!(peer = %src_peer_id, "a peer reached this daemon through a relay");
            }
            _ => {}
        }
    }

    fn candidate_of(&mut self, listener: ListenerId) -> Option<&mut Candidate> {
        self.candidates
            .iter_mut()
            .find(|c| c.listener == Some(listener))
    }
}

impl Candidate {
    fn failed(&mut self, reason: String, now: Instant) {
        self.listener = None;
        self.reserved = None;
        self.failures = self.failures.saturating_add(1);
        let backoff = Duration::from_secs(1u64 << self.failures.min(6)).min(MAX_BACKOFF);
        self.next_try = now + backoff;
        self.last_error = Some(reason);
    }
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        Protocol::Memory(_) => false,
        _ => false,
    })
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_need_their_peer_id() {
        let bare: Multiaddr = "/ip4/203.0.113.1/tcp/4002".parse().unwrap();
        let err = relay_peer(&bare).unwrap_err();
        assert!(err.contains("has no /p2p/<peer id>"), "{err}");
        assert!(err.contains("/ip4/203.0.113.1/tcp/4002/p2p/"), "{err}");
        let peer = PeerId::random();
        let full = bare.clone().with(Protocol::P2p(peer));
        assert_eq!(relay_peer(&full), Ok(peer));
        let circuit = full.clone().with(Protocol::P2pCircuit);
        assert!(
            relay_peer(&circuit)
                .unwrap_err()
                .contains("circuit address")
        );
        assert!(is_relayed(&circuit) && !is_relayed(&full));
    }

    #[test]
    fn bad_relay_addresses_are_reported_not_fatal() {
        let peer = PeerId::random();
        let good: Multiaddr = format!("/ip4/203.0.113.1/tcp/4002/p2p/{peer}")
            .parse()
            .unwrap();
        let config = OverlayConfig {
            nat: NatConfig {
                relays: vec!["/ip4/203.0.113.9/tcp/4002".parse().unwrap(), good.clone()],
                ..NatConfig::default()
            },
            relay: RelayConfig::default(),
            ..OverlayConfig::memory()
        };
        let state = NatState::new(&config);
        let report = state.report();
        assert_eq!(report.refused.len(), 1, "{report:?}");
        assert_eq!(report.relays.len(), 1);
        assert_eq!(report.relays[0].relay, good.to_string());
        assert!(report.behind_nat, "relays listed: behind NAT");
        assert!(!report.serving, "a daemon behind NAT never serves");
    }

    #[test]
    fn limits_are_checked_and_map_to_libp2p() {
        let config = RelayConfig::default();
        assert_eq!(config.check(), Ok(()));
        let mapped = config.libp2p();
        assert_eq!(mapped.max_reservations, 128);
        assert_eq!(mapped.max_circuits_per_peer, 8);
        assert_eq!(mapped.max_circuit_bytes, 16 << 20);
        assert_eq!(mapped.max_circuit_duration, Duration::from_secs(600));
        let zero = RelayConfig {
            max_circuits: 0,
            ..RelayConfig::default()
        };
        assert!(
            zero.check()
                .unwrap_err()
                .contains("max_circuits must be at least 1")
        );
        assert!(
            NatConfig {
                reservations: 0,
                ..NatConfig::default()
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn sections_parse_with_defaults_and_refuse_unknown_keys() {
        let relay: RelayConfig = toml::from_str("serve = false\nmax_circuits = 4\n").unwrap();
        assert!(!relay.serve);
        assert_eq!(relay.max_circuits, 4);
        assert_eq!(relay.max_reservations, 128);
        let nat: NatConfig = toml::from_str("behind_nat = true\n").unwrap();
        assert!(nat.behind_nat && nat.autonat && nat.relays.is_empty());
        assert!(toml::from_str::<NatConfig>("behind = true\n").is_err());
    }
}
