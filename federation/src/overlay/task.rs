//! The overlay task: the one owner of the swarm.
//!
//! It waits on three things at once: swarm events, commands from handles, and a one-second
//! maintenance tick (unban peers, forget expired `seq`s, keep `target_peers` connections).
//! Every outstanding operation is in a map keyed by its libp2p id (request id, connection id,
//! Kademlia query id) with the oneshot that answers it; every map is bounded by what libp2p
//! itself bounds (streams per connection, request timeouts, connection limits) or by config.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use capability_schema::codec;
use capability_schema::membership::{RevocationSync, RevocationSyncReply, RevocationVerdict};
use capability_schema::protocol::Reply;
use capability_schema::rejection::Rejection;
use capability_schema::{ErrorReply, PublicKey, ResourceAd, RevocationList, SecretKey, Signed};
use futures::StreamExt;
use libp2p::gossipsub::{self, MessageAcceptance, TopicHash};
use libp2p::multiaddr::Protocol as AddrProtocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::codec::Frame;
use super::handle::{
    AdEvent, OverlayExit, OverlayHandle, OverlayStats, encode_reply, peek_request_id,
};
use super::identity;
use super::protocol::ProtocolKind;
use super::revocation::{self, Judged, MAX_REVOCATION_BYTES};
use super::seq::SeqTracker;
use super::swarm::{self, Behaviour, BehaviourEvent, GRAYLIST_THRESHOLD};
use super::{KAD_PROTOCOL, MAX_AD_BYTES, OverlayConfig, OverlayError, SharedTrust};
use crate::trust::{AdRejection, CertCache, TrustStore};
use crate::unix_now;

mod heartbeat;

/// Most addresses remembered per peer.
const MAX_ADDRS_PER_PEER: usize = 8;
/// How long [`start`] waits for each listener's first address.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// A command from a handle to the task.
#[derive(Debug)]
pub(crate) enum Command {
    PublishAd {
        ad: Signed<ResourceAd>,
        reply: oneshot::Sender<Result<(), OverlayError>>,
    },
    PublishRaw {
        federation: String,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), OverlayError>>,
    },
    PublishRevocation {
        list: Signed<RevocationList>,
        reply: oneshot::Sender<RevocationVerdict>,
    },
    PublishHeartbeat {
        authority: PublicKey,
        heartbeat: Signed<capability_schema::Heartbeat>,
        reply: oneshot::Sender<Result<(), OverlayError>>,
    },
    PublishRawRevocation {
        federation: String,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), OverlayError>>,
    },
    OfferRevocation {
        peer: PublicKey,
        sync: RevocationSync,
        reply: oneshot::Sender<Result<Frame, OverlayError>>,
    },
    Subscribe {
        federation: String,
        reply: oneshot::Sender<Result<(), OverlayError>>,
    },
    Unsubscribe {
        federation: String,
        reply: oneshot::Sender<()>,
    },
    Request {
        kind: ProtocolKind,
        peer: PublicKey,
        frame: Frame,
        reply: oneshot::Sender<Result<Frame, OverlayError>>,
    },
    Respond {
        kind: ProtocolKind,
        channel: ResponseChannel<Frame>,
        frame: Frame,
    },
    Serve {
        kind: ProtocolKind,
        reply: oneshot::Sender<Result<mpsc::Receiver<RawInbound>, OverlayError>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PublicKey, OverlayError>>,
    },
    AddAddresses {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<()>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PublicKey>>,
    },
    MeshPeers {
        federation: String,
        reply: oneshot::Sender<Vec<PublicKey>>,
    },
    Stats {
        reply: oneshot::Sender<OverlayStats>,
    },
    /// The NAT side: relays, reservations, relayed and punched connections.
    Nat {
        reply: oneshot::Sender<super::relay::NatReport>,
    },
    /// Announces this daemon as a provider of `key` in Kademlia ([`super::rendezvous`]).
    Provide {
        key: Vec<u8>,
        reply: oneshot::Sender<Result<(), OverlayError>>,
    },
    /// Looks up the providers of `key` in Kademlia.
    Providers {
        key: Vec<u8>,
        found: mpsc::Sender<Vec<PublicKey>>,
        reply: oneshot::Sender<Result<(), OverlayError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    /// Panics the task (tests of how its end is reported).
    #[cfg(test)]
    Crash,
}

/// An incoming request on its way to the serving daemon.
#[derive(Debug)]
pub(crate) struct RawInbound {
    pub(crate) peer: PublicKey,
    pub(crate) bytes: Vec<u8>,
    pub(crate) channel: ResponseChannel<Frame>,
}

/// An outbound request waiting for its answer.
struct Pending {
    kind: ProtocolKind,
    peer: PeerId,
    /// The key `peer` was derived from (errors name it).
    key: PublicKey,
    /// Kept only while the peer is not connected, to retry once after a Kademlia lookup.
    retry: Option<Frame>,
    reply: oneshot::Sender<Result<Frame, OverlayError>>,
}

/// Builds, listens, bootstraps and spawns; see [`super::Overlay::start`].
pub(crate) async fn start(
    key: &SecretKey,
    config: OverlayConfig,
    trust: SharedTrust,
) -> Result<OverlayHandle, OverlayError> {
    let keypair = identity::keypair(key);
    let mut swarm = swarm::build(&keypair, &config)?;
    let local = *swarm.local_peer_id();

    let mut listeners = HashSet::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| OverlayError::Listen {
                addr: addr.to_string(),
                detail: error_chain(&e),
            })?;
        listeners.insert(id);
    }
    let mut listen_addrs = Vec::new();
    let deadline = tokio::time::Instant::now() + LISTEN_WAIT;
    while !listeners.is_empty() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| OverlayError::Listen {
                addr: format!("{:?}", config.listen),
                detail: "no address after 5 s".into(),
            })?;
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                listeners.remove(&listener_id);
                listen_addrs.push(address);
            }
            SwarmEvent::ListenerError { error, .. } => {
                return Err(OverlayError::Listen {
                    addr: format!("{:?}", config.listen),
                    detail: error_chain(&error),
                });
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                return Err(OverlayError::Listen {
                    addr: format!("{:?}", config.listen),
                    detail: format!("listener closed: {reason:?}"),
                });
            }
            _ => {}
        }
    }

    let (commands_tx, commands_rx) = mpsc::channel(config.command_queue.max(1));
    let (ads_tx, _) = broadcast::channel(config.ad_queue.max(1));
    let (beats_tx, _) = broadcast::channel(config.ad_queue.max(1));
    let public = identity::public_key(&local).map_err(|e| OverlayError::Setup(e.to_string()))?;
    let (exit_tx, exit_rx) = watch::channel(None);
    let (news_tx, news_rx) = watch::channel(0u64);
    for list in &config.revocations {
        match revocation::apply(&trust, list) {
            Judged::Applied(_) | Judged::Held(_) | Judged::Stale { .. } => {}
            Judged::Unknown(error) => return Err(error.into()),
            Judged::Invalid(reason) => return Err(OverlayError::InvalidRevocation(reason)),
        }
    }
    let handle = OverlayHandle::new(
        commands_tx,
        ads_tx.clone(),
        beats_tx.clone(),
        news_rx,
        public,
        trust.clone(),
        exit_rx,
    );

    let mut runner = Runner {
        swarm,
        trust,
        commands: commands_rx,
        ads: ads_tx,
        topics: HashMap::new(),
        revocation_topics: HashMap::new(),
        revocation_news: news_tx,
        exchanges: HashMap::new(),
        seqs: SeqTracker::new(config.max_tracked_nodes),
        beats: heartbeat::Beats::new(beats_tx, config.max_tracked_nodes),
        certs: CertCache::default(),
        pending: HashMap::new(),
        routing: HashMap::new(),
        providers: super::rendezvous::Lookups::default(),
        dials: HashMap::new(),
        servers: HashMap::new(),
        addresses: HashMap::new(),
        banned: HashMap::new(),
        connected_since: HashMap::new(),
        listen_addrs,
        last_discovery: Instant::now(),
        stats: OverlayStats::default(),
        nat: super::relay::NatState::new(&config),
        config,
    };
    for federation in runner.config.federations.clone() {
        runner.subscribe(&federation)?;
    }
    // Revocations of every trusted federation are followed, not only of those whose ads are.
    let anchored: Vec<(String, PublicKey)> = read_trust(&runner.trust)
        .federations()
        .map(|(name, key)| (name.to_owned(), *key))
        .collect();
    for (name, authority) in anchored {
        runner.follow_revocations(&name, authority)?;
    }
    runner.bootstrap();
    runner.nat.maintain(&mut runner.swarm);
    tokio::spawn(supervise(tokio::spawn(runner.run()), exit_tx));
    Ok(handle)
}

/// Waits for the overlay task to end and tells every handle how it did; a panic is caught
/// here (from the task's `JoinHandle`), logged and reported as [`OverlayExit::Panicked`].
async fn supervise(task: JoinHandle<OverlayExit>, exit: watch::Sender<Option<OverlayExit>>) {
    let how = match task.await {
        Ok(how) => how,
        Err(error) if error.is_panic() => {
            let message = panic_message(error.into_panic());
            tracing::error!(panic = %message, "the overlay task panicked");
            OverlayExit::Panicked(message)
        }
        Err(_) => OverlayExit::Cancelled,
    };
    exit.send_replace(Some(how));
}

/// The message of a panic payload (`panic!` with a literal or with a format).
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(no message)".to_owned(), |m| (*m).to_owned()),
    }
}

struct Runner {
    swarm: Swarm<Behaviour>,
    trust: SharedTrust,
    commands: mpsc::Receiver<Command>,
    ads: broadcast::Sender<AdEvent>,
    /// Subscribed ad topics and their federations (name, authority key).
    topics: HashMap<TopicHash, (String, PublicKey)>,
    /// Subscribed revocation topics and their federations (name, authority key).
    revocation_topics: HashMap<TopicHash, (String, PublicKey)>,
    /// Bumped whenever a newer revocation list is applied (the daemon watches it).
    revocation_news: watch::Sender<u64>,
    /// Revocation exchanges in flight: `None` for the one opened at a new connection, else
    /// whoever offered a list through this daemon and waits for the peer's answer.
    exchanges: HashMap<OutboundRequestId, Option<oneshot::Sender<Result<Frame, OverlayError>>>>,
    /// Per node: the last accepted `seq` (bounded, see [`SeqTracker`]).
    seqs: SeqTracker,
    /// Heartbeat topics and the last heartbeat taken per node.
    beats: heartbeat::Beats,
    /// Membership certificates already verified (each ad carries its node's).
    certs: CertCache,
    pending: HashMap<(ProtocolKind, OutboundRequestId), Pending>,
    /// Requests parked on a Kademlia lookup of their peer.
    routing: HashMap<kad::QueryId, (PeerId, Vec<Pending>)>,
    /// Provider lookups in flight ([`super::rendezvous`]): the providers found so far.
    providers: super::rendezvous::Lookups,
    dials: HashMap<ConnectionId, (Multiaddr, oneshot::Sender<Result<PublicKey, OverlayError>>)>,
    servers: HashMap<ProtocolKind, mpsc::Sender<RawInbound>>,
    addresses: HashMap<PeerId, Vec<Multiaddr>>,
    banned: HashMap<PeerId, Instant>,
    /// When each connected peer's first connection was established.
    connected_since: HashMap<PeerId, Instant>,
    listen_addrs: Vec<Multiaddr>,
    last_discovery: Instant,
    stats: OverlayStats,
    /// Relays, reservations and how peers are connected ([`super::relay`]).
    nat: super::relay::NatState,
    config: OverlayConfig,
}

fn read_trust(trust: &SharedTrust) -> std::sync::RwLockReadGuard<'_, TrustStore> {
    trust
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `addr` without a trailing `/p2p/<peer id>`, and that peer id.
fn split_peer(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut addr = addr.clone();
    match addr.iter().last() {
        Some(AddrProtocol::P2p(peer)) => {
            addr.pop();
            (addr, Some(peer))
        }
        _ => (addr, None),
    }
}

/// The PlanetMesh key of a peer, or `None` for a peer whose identity is not an ed25519 key
/// (only ed25519 identities exist in this build of libp2p; if another key type ever gets in,
/// that peer is treated as unknown: disconnected, never answered, never named).
fn public_of(peer: &PeerId) -> Option<PublicKey> {
    identity::public_key(peer).ok()
}

impl Runner {
    async fn run(mut self) -> OverlayExit {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let how = loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        let _ = reply.send(());
                        break OverlayExit::Shutdown;
                    }
                    Some(command) => self.on_command(command),
                    None => break OverlayExit::Dropped,
                },
                _ = tick.tick() => self.maintain(),
            }
        };
        tracing::debug!(peer = %self.swarm.local_peer_id(), %how, "overlay stopped");
        how
    }

    fn kad(&mut self) -> Option<&mut kad::Behaviour<kad::store::MemoryStore>> {
        self.swarm.behaviour_mut().kad.as_mut()
    }

    // ------------------------------------------------------------------ commands

    fn on_command(&mut self, command: Command) {
        match command {
            Command::PublishAd { ad, reply } => {
                let _ = reply.send(self.publish(ad));
            }
            Command::PublishRaw {
                federation,
                bytes,
                reply,
            } => {
                let _ = reply.send(self.publish_raw(federation, bytes, swarm::ad_topic));
            }
            Command::PublishHeartbeat {
                authority,
                heartbeat,
                reply,
            } => {
                let _ = reply.send(self.publish_heartbeat(authority, &heartbeat));
            }
            Command::PublishRevocation { list, reply } => {
                let judged = self.take_revocation(&list, None);
                let _ = reply.send(judged.verdict());
            }
            Command::PublishRawRevocation {
                federation,
                bytes,
                reply,
            } => {
                let _ = reply.send(self.publish_raw(federation, bytes, swarm::revocation_topic));
            }
            Command::OfferRevocation { peer, sync, reply } => {
                let peer = identity::peer_id(&peer);
                self.open_exchange(peer, &sync, Some(reply));
            }
            Command::Subscribe { federation, reply } => {
                let _ = reply.send(self.subscribe(&federation));
            }
            Command::Unsubscribe { federation, reply } => {
                // Revocations of a trusted federation stay followed.
                if let Ok(topic) = self.topic_of(&federation, swarm::ad_topic) {
                    self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
                    if let Some((_, authority)) = self.topics.remove(&topic.hash()) {
                        self.unsubscribe_heartbeats(&authority);
                    }
                }
                let _ = reply.send(());
            }
            Command::Request {
                kind,
                peer,
                frame,
                reply,
            } => {
                let peer_id = identity::peer_id(&peer);
                self.send_request(kind, peer, peer_id, frame, reply, false);
            }
            Command::Respond {
                kind,
                channel,
                frame,
            } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .rr(kind)
                    .send_response(channel, frame)
                    .is_err()
                {
                    tracing::debug!(protocol = %kind, "answer dropped: the caller is gone");
                }
            }
            Command::Serve { kind, reply } => {
                let result = match self.servers.get(&kind) {
                    Some(sender) if !sender.is_closed() => Err(OverlayError::AlreadyServed(kind)),
                    _ => {
                        let (tx, rx) = mpsc::channel(self.config.serve_queue.max(1));
                        self.servers.insert(kind, tx);
                        Ok(rx)
                    }
                };
                let _ = reply.send(result);
            }
            Command::Dial { addr, reply } => {
                let (plain, peer) = split_peer(&addr);
                let opts = match peer {
                    Some(peer) => DialOpts::peer_id(peer)
                        .addresses(vec![plain])
                        .condition(PeerCondition::Always)
                        .build(),
                    None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
                };
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, (addr, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(OverlayError::Dial {
                            addr: addr.to_string(),
                            detail: e.to_string(),
                        }));
                    }
                }
            }
            Command::AddAddresses { peer, addrs, reply } => {
                for addr in addrs {
                    self.remember_address(peer, addr);
                }
                let _ = reply.send(());
            }
            Command::ListenAddrs { reply } => {
                let local = *self.swarm.local_peer_id();
                // Relayed addresses end with this peer's id already.
                let addrs = self
                    .listen_addrs
                    .iter()
                    .map(|a| match a.iter().last() {
                        Some(AddrProtocol::P2p(_)) => a.clone(),
                        _ => a.clone().with(AddrProtocol::P2p(local)),
                    })
                    .collect();
                let _ = reply.send(addrs);
            }
            Command::ConnectedPeers { reply } => {
                let peers = self.swarm.connected_peers().filter_map(public_of).collect();
                let _ = reply.send(peers);
            }
            Command::MeshPeers { federation, reply } => {
                let peers = match self.topic_of(&federation, swarm::ad_topic) {
                    Ok(topic) => self
                        .swarm
                        .behaviour()
                        .gossipsub
                        .mesh_peers(&topic.hash())
                        .filter_map(public_of)
                        .collect(),
                    Err(_) => Vec::new(),
                };
                let _ = reply.send(peers);
            }
            Command::Stats { reply } => {
                let stats = OverlayStats {
                    connected_peers: self.connected_since.len() as u64,
                    revocations_held: read_trust(&self.trust).revocation_lists().count() as u64,
                    seqs_tracked: self.seqs.len() as u64,
                    seqs_evicted: self.seqs.evicted(),
                    ..self.stats
                };
                let _ = reply.send(stats);
            }
            Command::Provide { key, reply } => {
                let _ = reply.send(super::rendezvous::provide(self.kad(), key));
            }
            Command::Providers { key, found, reply } => {
                let kad = self.swarm.behaviour_mut().kad.as_mut();
                let _ = reply.send(self.providers.start(kad, key, found));
            }
            Command::Nat { reply } => {
                let _ = reply.send(self.nat.report());
            }
            Command::Shutdown { reply } => {
                // Handled in `run`.
                let _ = reply.send(());
            }
            #[cfg(test)]
            Command::Crash => panic!("overlay crash requested by a test"),
        }
    }

    /// The topic of the federation `federation` refers to (`name` or `name@KEY`, resolved
    /// among the anchors; ambiguous or unknown names are refused by the trust store).
    /// Publishes `bytes` unchecked on `federation`'s topic made by `topic` (fault injection).
    fn publish_raw(
        &mut self,
        federation: String,
        bytes: Vec<u8>,
        topic: fn(&PublicKey) -> libp2p::gossipsub::IdentTopic,
    ) -> Result<(), OverlayError> {
        let topic = self.topic_of(&federation, topic)?;
        match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            Ok(_) => Ok(()),
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                Err(OverlayError::NoPeers { federation })
            }
            Err(e) => Err(OverlayError::Publish(e.to_string())),
        }
    }

    fn topic_of(
        &self,
        federation: &str,
        topic: fn(&PublicKey) -> libp2p::gossipsub::IdentTopic,
    ) -> Result<libp2p::gossipsub::IdentTopic, OverlayError> {
        let authority = read_trust(&self.trust).resolve(federation)?;
        Ok(topic(&authority))
    }

    fn subscribe(&mut self, federation: &str) -> Result<(), OverlayError> {
        let authority = read_trust(&self.trust).resolve(federation)?;
        let name = read_trust(&self.trust)
            .label_of(&authority)
            .unwrap_or(federation)
            .to_owned();
        let topic = swarm::ad_topic(&authority);
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        gossipsub
            .subscribe(&topic)
            .map_err(|e| OverlayError::Setup(format!("subscribe {federation}: {e}")))?;
        if gossipsub.get_topic_params(&topic).is_none() {
            gossipsub
                .set_topic_params(topic.clone(), swarm::topic_score_params())
                .map_err(|e| OverlayError::Setup(format!("score parameters: {e}")))?;
        }
        self.topics.insert(topic.hash(), (name.clone(), authority));
        self.subscribe_heartbeats(&name, authority)?;
        self.follow_revocations(&name, authority)
    }

    /// Subscribes the revocation topic of the federation `federation` of `authority`.
    fn follow_revocations(
        &mut self,
        federation: &str,
        authority: PublicKey,
    ) -> Result<(), OverlayError> {
        let topic = swarm::revocation_topic(&authority);
        if self.revocation_topics.contains_key(&topic.hash()) {
            return Ok(());
        }
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        gossipsub
            .subscribe(&topic)
            .map_err(|e| OverlayError::Setup(format!("subscribe {federation}: {e}")))?;
        if gossipsub.get_topic_params(&topic).is_none() {
            gossipsub
                .set_topic_params(topic.clone(), swarm::topic_score_params())
                .map_err(|e| OverlayError::Setup(format!("score parameters: {e}")))?;
        }
        self.revocation_topics
            .insert(topic.hash(), (federation.to_owned(), authority));
        Ok(())
    }

    fn publish(&mut self, signed: Signed<ResourceAd>) -> Result<(), OverlayError> {
        let now = unix_now();
        let node = signed.signer;
        let last = self.seqs.last(&node);
        let ad = read_trust(&self.trust)
            .validate_ad_cached(&signed, now, last, &mut self.certs)
            .map_err(OverlayError::InvalidAd)?;
        let bytes = signed.to_bytes();
        if bytes.len() > MAX_AD_BYTES {
            return Err(OverlayError::Publish(format!(
                "the ad is {} bytes, over the {MAX_AD_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let authority = ad
            .membership
            .peek_unverified()
            .map_err(|e| OverlayError::Publish(format!("the ad's certificate: {e}")))?
            .authority;
        let topic = swarm::ad_topic(&authority);
        match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {
                self.record_seq(&ad);
                Ok(())
            }
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Err(OverlayError::NoPeers {
                federation: ad.federation,
            }),
            Err(e) => Err(OverlayError::Publish(e.to_string())),
        }
    }

    fn send_request(
        &mut self,
        kind: ProtocolKind,
        key: PublicKey,
        peer: PeerId,
        frame: Frame,
        reply: oneshot::Sender<Result<Frame, OverlayError>>,
        retried: bool,
    ) {
        let addrs = self.addresses.get(&peer).cloned().unwrap_or_default();
        let retry = (!retried && !self.swarm.is_connected(&peer)).then(|| frame.clone());
        self.stats.requests_sent += 1;
        let id = self
            .swarm
            .behaviour_mut()
            .rr(kind)
            .send_request_with_addresses(&peer, frame, addrs);
        self.pending.insert(
            (kind, id),
            Pending {
                kind,
                peer,
                key,
                retry,
                reply,
            },
        );
    }

    fn remember_address(&mut self, peer: PeerId, addr: Multiaddr) {
        let (addr, _) = split_peer(&addr);
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        if !self.addresses.contains_key(&peer)
            && self.addresses.len() >= self.config.max_tracked_nodes
        {
            return;
        }
        let known = self.addresses.entry(peer).or_default();
        if !known.contains(&addr) {
            if known.len() >= MAX_ADDRS_PER_PEER {
                known.remove(0);
            }
            known.push(addr);
        }
    }

    /// Forgets one address of `peer` (mDNS saw it expire), and tells Kademlia too.
    fn forget_address(&mut self, peer: PeerId, addr: &Multiaddr) {
        let (plain, _) = split_peer(addr);
        if let Some(known) = self.addresses.get_mut(&peer) {
            known.retain(|a| *a != plain);
            if known.is_empty() {
                self.addresses.remove(&peer);
            }
        }
        if let Some(kad) = self.kad() {
            let _ = kad.remove_address(&peer, &plain);
        }
    }

    fn bootstrap(&mut self) {
        for addr in self.config.bootstrap.clone() {
            let (plain, peer) = split_peer(&addr);
            let result = match peer {
                Some(peer) => {
                    if let Some(kad) = self.kad() {
                        kad.add_address(&peer, plain.clone());
                    }
                    self.remember_address(peer, plain.clone());
                    self.swarm
                        .dial(DialOpts::peer_id(peer).addresses(vec![plain]).build())
                }
                None => self.swarm.dial(addr.clone()),
            };
            if let Err(e) = result {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
        if !self.config.bootstrap.is_empty()
            && let Some(kad) = self.kad()
            && let Err(e) = kad.bootstrap()
        {
            tracing::debug!(error = %e, "no Kademlia bootstrap yet");
        }
    }

    // ------------------------------------------------------------------ maintenance

    fn maintain(&mut self) {
        let now = Instant::now();
        let expired: Vec<PeerId> = self
            .banned
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in expired {
            self.banned.remove(&peer);
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
        if self.seqs.len() * 2 > self.config.max_tracked_nodes {
            self.seqs.forget_expired(unix_now());
        }
        self.follow_new_anchors();
        self.nat.maintain(&mut self.swarm);
        if now.duration_since(self.last_discovery) >= self.config.discovery_interval {
            self.last_discovery = now;
            self.discover();
            self.trim();
        }
    }

    /// Follows the revocation topic of every anchor added to the trust store since start (a
    /// daemon's reload adds anchors: `nodemgr reload` with a new `[[trust]]` entry).
    fn follow_new_anchors(&mut self) {
        let anchored: Vec<(String, PublicKey)> = read_trust(&self.trust)
            .federations()
            .map(|(name, key)| (name.to_owned(), *key))
            .collect();
        for (name, authority) in anchored {
            if let Err(error) = self.follow_revocations(&name, authority) {
                tracing::warn!(federation = %name, %error, "not following its revocation lists");
            }
        }
    }

    /// Dials peers Kademlia knows until `target_peers` are connected; looks for more peers
    /// when it knows too few.
    fn discover(&mut self) {
        let connected = self.swarm.connected_peers().count();
        if connected >= self.config.target_peers {
            return;
        }
        let mut wanted = self.config.target_peers - connected;
        let mut candidates = Vec::new();
        let Some(kad) = self.kad() else {
            return;
        };
        for bucket in kad.kbuckets() {
            for entry in bucket.iter() {
                candidates.push((
                    *entry.node.key.preimage(),
                    entry.node.value.iter().cloned().collect::<Vec<_>>(),
                ));
            }
        }
        for (peer, addrs) in candidates {
            if wanted == 0 {
                break;
            }
            if self.swarm.is_connected(&peer) || self.banned.contains_key(&peer) {
                continue;
            }
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if self.swarm.dial(opts).is_ok() {
                wanted -= 1;
            }
        }
        if wanted > 0
            && connected > 0
            && let Some(kad) = self.kad()
        {
            kad.get_closest_peers(PeerId::random());
        }
    }

    /// Disconnects peers above `max_peers`: never ad-topic mesh peers, peers with requests in
    /// flight, or peers connected less than `trim_grace` ago.
    fn trim(&mut self) {
        let connected = self.connected_since.len();
        if connected <= self.config.max_peers {
            return;
        }
        // Ad-topic mesh peers only: revocation topics are followed for every trusted
        // federation, so their meshes would keep every peer that trusts one; lists missed
        // while disconnected come back in the exchange of the next connection.
        let gossipsub = &self.swarm.behaviour().gossipsub;
        let keep: HashSet<PeerId> = self
            .topics
            .keys()
            .flat_map(|topic| gossipsub.mesh_peers(topic))
            .copied()
            .chain(self.pending.values().map(|p| p.peer))
            .collect();
        let now = Instant::now();
        let excess: Vec<PeerId> = self
            .connected_since
            .iter()
            .filter(|(peer, since)| {
                !keep.contains(peer) && now.duration_since(**since) >= self.config.trim_grace
            })
            .map(|(peer, _)| *peer)
            .take(connected - self.config.max_peers)
            .collect();
        for peer in excess {
            if self.swarm.disconnect_peer_id(peer).is_ok() {
                self.stats.connections_trimmed += 1;
            }
        }
    }

    // ------------------------------------------------------------------ swarm events

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.nat.on_swarm_event(&mut self.swarm, &event);
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } if !self.listen_addrs.contains(&address) => {
                self.listen_addrs.push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.retain(|a| *a != address);
            }
            SwarmEvent::ListenerClosed { addresses, .. } => {
                self.listen_addrs.retain(|a| !addresses.contains(a));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let Some(key) = public_of(&peer_id) else {
                    tracing::warn!(peer = %peer_id, "disconnecting a peer whose key is not ed25519");
                    let _ = self.swarm.close_connection(connection_id);
                    if let Some((addr, reply)) = self.dials.remove(&connection_id) {
                        let _ = reply.send(Err(OverlayError::Dial {
                            addr: addr.to_string(),
                            detail: format!("peer {peer_id} does not have an ed25519 key"),
                        }));
                    }
                    return;
                };
                self.stats.connections_opened += 1;
                self.connected_since
                    .entry(peer_id)
                    .or_insert_with(Instant::now);
                if endpoint.is_dialer() {
                    self.remember_address(peer_id, endpoint.get_remote_address().clone());
                }
                if let Some((_, reply)) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Ok(key));
                }
                if num_established.get() == 1 {
                    // Fetch on join: each side asks the other for lists newer than its own.
                    let opening = revocation::opening(&self.trust);
                    self.open_exchange(peer_id, &opening, None);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if !self.connected_since.contains_key(&peer_id) {
                    // A connection refused above (not an ed25519 key): never counted as open.
                    return;
                }
                self.stats.connections_closed += 1;
                if num_established == 0 {
                    self.connected_since.remove(&peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some((addr, reply)) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Err(OverlayError::Dial {
                        addr: addr.to_string(),
                        detail: error.to_string(),
                    }));
                }
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(propagation_source, message_id, message),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let speaks_kad = info.protocols.iter().any(|p| p.as_ref() == KAD_PROTOCOL);
                for addr in info.listen_addrs {
                    if !self.nat.usable(&addr) {
                        continue;
                    }
                    if speaks_kad && let Some(kad) = self.kad() {
                        kad.add_address(&peer_id, addr.clone());
                    }
                    self.remember_address(peer_id, addr);
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => self.on_kad_progress(id, result, step.last),
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                // One dial per peer with all its addresses: dialing address by address, the
                // first (perhaps a stale one) would stop the others. From a new port: mDNS
                // answers reach both peers at once, and two dials from the listening ports
                // would meet as one simultaneous TCP open where both sides are dialers, which
                // fails both (and mDNS asks again only minutes later).
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in found {
                    if let Some(kad) = self.kad() {
                        kad.add_address(&peer, addr.clone());
                    }
                    self.remember_address(peer, addr.clone());
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    if self.banned.contains_key(&peer) {
                        continue;
                    }
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .allocate_new_port()
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!(%peer, error = %e, "not dialing a peer mDNS found");
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(gone)) => {
                for (peer, addr) in gone {
                    self.forget_address(peer, &addr);
                }
            }
            BehaviourEvent::Agent(event) => self.on_request_response(ProtocolKind::Agent, event),
            BehaviourEvent::Node(event) => self.on_request_response(ProtocolKind::Node, event),
            BehaviourEvent::Broker(event) => self.on_request_response(ProtocolKind::Broker, event),
            BehaviourEvent::Revocation(event) => self.on_exchange(event),
            _ => {}
        }
    }

    // ------------------------------------------------------------------ gossip

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        if self.beats.owns(&message.topic) {
            return self.on_heartbeat_gossip(source, id, &message.data);
        }
        if let Some((federation, authority)) = self.revocation_topics.get(&message.topic).cloned() {
            return self.on_revocation_gossip(source, id, &federation, &authority, &message.data);
        }
        let Some(relayed_by) = public_of(&source) else {
            // Connections of such peers are closed as they open; drop without blame.
            self.stats.ads_ignored += 1;
            let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
            gossipsub.report_message_validation_result(&id, &source, MessageAcceptance::Ignore);
            return;
        };
        let verdict = self.check_ad(&message);
        let acceptance = match &verdict {
            Ok(_) => {
                self.stats.ads_accepted += 1;
                MessageAcceptance::Accept
            }
            Err(rejection) if rejection.is_misbehaviour() => {
                self.stats.ads_rejected += 1;
                MessageAcceptance::Reject
            }
            Err(_) => {
                self.stats.ads_ignored += 1;
                MessageAcceptance::Ignore
            }
        };
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        gossipsub.report_message_validation_result(&id, &source, acceptance);
        match verdict {
            Ok((ad, signed)) => {
                self.record_seq(&ad);
                for addr in ad
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<Multiaddr>().ok())
                {
                    self.remember_address(identity::peer_id(&ad.node), addr);
                }
                let _ = self.ads.send(AdEvent {
                    ad,
                    signed,
                    relayed_by,
                });
            }
            Err(rejection) => {
                tracing::debug!(peer = %source, %rejection, "ad dropped");
                if rejection.is_misbehaviour() {
                    self.punish(source);
                }
            }
        }
    }

    fn check_ad(
        &mut self,
        message: &gossipsub::Message,
    ) -> Result<(ResourceAd, Signed<ResourceAd>), AdRejection> {
        let (federation, authority) = self
            .topics
            .get(&message.topic)
            .ok_or_else(|| AdRejection::Malformed(format!("unknown topic {}", message.topic)))?;
        let signed = codec::decode_with_limit::<Signed<ResourceAd>>(&message.data, MAX_AD_BYTES)
            .map_err(|e| AdRejection::Malformed(e.to_string()))?;
        let last = self.seqs.last(&signed.signer);
        let ad = read_trust(&self.trust).validate_ad_cached(
            &signed,
            unix_now(),
            last,
            &mut self.certs,
        )?;
        let certified_by = ad
            .membership
            .peek_unverified()
            .map(|c| c.authority)
            .map_err(|e| AdRejection::Malformed(e.to_string()))?;
        if ad.federation != *federation || certified_by != *authority {
            return Err(AdRejection::WrongTopic {
                federation: crate::trust::qualified(&ad.federation, &certified_by),
                topic: crate::trust::qualified(federation, authority),
            });
        }
        Ok((ad, signed))
    }

    fn record_seq(&mut self, ad: &ResourceAd) {
        self.seqs
            .record(ad.node, ad.seq, ad.expires_at(), unix_now());
    }

    /// Disconnects and blocks a peer whose gossip score fell under the graylist threshold.
    fn punish(&mut self, peer: PeerId) {
        let score = self.swarm.behaviour().gossipsub.peer_score(&peer);
        if score.is_some_and(|s| s <= GRAYLIST_THRESHOLD) {
            tracing::info!(%peer, ?score, "blocking a peer that keeps relaying invalid ads");
            self.stats.peers_blocked += 1;
            self.banned
                .insert(peer, Instant::now() + self.config.ban_duration);
            self.swarm.behaviour_mut().blocked.block_peer(peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    // ------------------------------------------------------------------ revocations

    /// Judges a revocation list that arrived on `federation`'s revocation topic: a newer list
    /// is applied and relayed; a held or older one is ignored; a bad one is rejected and
    /// costs `source` gossip score.
    fn on_revocation_gossip(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        federation: &str,
        authority: &PublicKey,
        data: &[u8],
    ) {
        let judged = match revocation::decode_list(data) {
            Ok(signed) => match signed.verify() {
                Ok(list) if list.federation != federation || list.authority != *authority => {
                    Judged::Invalid(format!(
                        "a revocation list of {} arrived on the topic of {}",
                        crate::trust::qualified(&list.federation, &list.authority),
                        crate::trust::qualified(federation, authority)
                    ))
                }
                // A list in a followed federation's name from an authority trusted nowhere
                // here is a stranger using that name: misbehaviour on this topic.
                _ => match revocation::apply(&self.trust, &signed) {
                    Judged::Unknown(
                        error @ crate::trust::TrustError::UnanchoredAuthority { .. },
                    ) => Judged::Invalid(error.to_string()),
                    judged => judged,
                },
            },
            Err(reason) => Judged::Invalid(reason),
        };
        let acceptance = match &judged {
            Judged::Applied(list) => {
                self.stats.revocations_applied += 1;
                self.announce(list);
                MessageAcceptance::Accept
            }
            Judged::Invalid(reason) => {
                self.stats.revocations_rejected += 1;
                tracing::info!(peer = %source, %reason, "revocation list rejected");
                MessageAcceptance::Reject
            }
            Judged::Held(_) | Judged::Stale { .. } | Judged::Unknown(_) => {
                self.stats.revocations_ignored += 1;
                MessageAcceptance::Ignore
            }
        };
        let gossipsub = &mut self.swarm.behaviour_mut().gossipsub;
        gossipsub.report_message_validation_result(&id, &source, acceptance);
        if matches!(judged, Judged::Invalid(_)) {
            self.punish(source);
        }
    }

    /// Takes a list from the daemon, a config or an exchange (not from gossip): applies it if
    /// newer and gossips it (a held list is gossiped too: whoever hands it in wants it out).
    fn take_revocation(&mut self, signed: &Signed<RevocationList>, from: Option<PeerId>) -> Judged {
        let judged = revocation::apply(&self.trust, signed);
        match &judged {
            Judged::Applied(list) => {
                self.stats.revocations_applied += 1;
                self.announce(list);
                self.gossip_revocation(signed, &list.federation, &list.authority);
            }
            Judged::Held(list) if from.is_none() => {
                self.gossip_revocation(signed, &list.federation, &list.authority);
            }
            Judged::Invalid(reason) => {
                self.stats.revocations_rejected += 1;
                tracing::info!(peer = ?from, %reason, "revocation list refused");
            }
            _ => self.stats.revocations_ignored += 1,
        }
        judged
    }

    /// Tells the daemon a newer list applies.
    fn announce(&mut self, list: &RevocationList) {
        tracing::info!(
            federation = %list.federation,
            version = list.version,
            issued_at = list.issued_at,
            keys = list.keys.len(),
            serials = list.serials.len(),
            delegations = list.delegations.len(),
            tickets = list.tickets.len(),
            "revocation list applied"
        );
        self.revocation_news.send_modify(|n| *n += 1);
    }

    fn gossip_revocation(
        &mut self,
        signed: &Signed<RevocationList>,
        federation: &str,
        authority: &PublicKey,
    ) {
        let bytes = signed.to_bytes();
        if bytes.len() > MAX_REVOCATION_BYTES {
            tracing::warn!(%federation, size = bytes.len(), "revocation list too large to gossip; peers fetch it when they connect");
            return;
        }
        let topic = swarm::revocation_topic(authority);
        match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            Ok(_) | Err(gossipsub::PublishError::Duplicate) => {}
            // Peers that connect later fetch it in their revocation exchange.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::warn!(%federation, error = %e, "revocation list not gossiped"),
        }
    }

    /// Sends a revocation exchange to `peer`; `reply` (if any) gets the raw answer.
    fn open_exchange(
        &mut self,
        peer: PeerId,
        sync: &RevocationSync,
        reply: Option<oneshot::Sender<Result<Frame, OverlayError>>>,
    ) {
        let bytes = codec::encode(sync);
        let addrs = self.addresses.get(&peer).cloned().unwrap_or_default();
        let id = self
            .swarm
            .behaviour_mut()
            .revocation
            .send_request_with_addresses(&peer, Frame::Bytes(bytes), addrs);
        self.exchanges.insert(id, reply);
    }

    fn on_exchange(&mut self, event: request_response::Event<Frame, Frame>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let answer = match request {
                    Frame::Bytes(bytes) => {
                        match codec::decode_with_limit::<RevocationSync>(
                            &bytes,
                            capability_schema::protocol::MAX_REQUEST_BYTES,
                        ) {
                            Ok(sync) => {
                                let verdicts = sync
                                    .offer
                                    .iter()
                                    .map(|s| self.take_revocation(s, Some(peer)).verdict())
                                    .collect();
                                RevocationSyncReply {
                                    newer: revocation::newer(&self.trust, &sync.have),
                                    verdicts,
                                }
                            }
                            Err(e) => RevocationSyncReply {
                                newer: Vec::new(),
                                verdicts: vec![RevocationVerdict::Refused {
                                    reason: format!("not a revocation exchange: {e}"),
                                }],
                            },
                        }
                    }
                    Frame::TooLarge { limit } => RevocationSyncReply {
                        newer: Vec::new(),
                        verdicts: vec![RevocationVerdict::Refused {
                            reason: format!("the exchange exceeds the {limit}-byte limit"),
                        }],
                    },
                };
                let frame = Frame::Bytes(codec::encode(&answer));
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .revocation
                    .send_response(channel, frame);
            }
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Frame::Bytes(bytes) = &response
                    && let Ok(answer) = codec::decode_with_limit::<RevocationSyncReply>(
                        bytes,
                        capability_schema::protocol::MAX_RESPONSE_BYTES,
                    )
                {
                    for signed in &answer.newer {
                        self.take_revocation(signed, Some(peer));
                    }
                }
                if let Some(Some(reply)) = self.exchanges.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                // A peer without the protocol (an older daemon) just gets no exchange.
                tracing::debug!(%peer, %error, "revocation exchange failed");
                if let Some(Some(reply)) = self.exchanges.remove(&request_id) {
                    let _ = reply.send(Err(OverlayError::Exchange {
                        peer: peer.to_string(),
                        detail: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound revocation exchange failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    // ------------------------------------------------------------------ requests

    fn on_request_response(
        &mut self,
        kind: ProtocolKind,
        event: request_response::Event<Frame, Frame>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => self.on_inbound(kind, peer, request, channel),
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(pending) = self.pending.remove(&(kind, request_id)) {
                        let _ = pending.reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                let Some(pending) = self.pending.remove(&(kind, request_id)) else {
                    return;
                };
                if matches!(error, OutboundFailure::DialFailure) && pending.retry.is_some() {
                    self.route(pending);
                    return;
                }
                self.stats.requests_failed += 1;
                let peer = pending.key;
                let error = match error {
                    OutboundFailure::DialFailure => OverlayError::Unreachable {
                        peer,
                        detail: "no known address answered".into(),
                    },
                    OutboundFailure::Timeout => OverlayError::Timeout {
                        protocol: kind,
                        peer,
                        after: self.config.request_timeout,
                    },
                    OutboundFailure::ConnectionClosed => OverlayError::ConnectionClosed { peer },
                    OutboundFailure::UnsupportedProtocols => OverlayError::Unsupported {
                        peer,
                        protocol: kind,
                    },
                    OutboundFailure::Io(e) => OverlayError::Stream {
                        peer,
                        protocol: kind,
                        detail: e.to_string(),
                    },
                };
                let _ = pending.reply.send(Err(error));
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, protocol = %kind, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_inbound(
        &mut self,
        kind: ProtocolKind,
        peer: PeerId,
        request: Frame,
        channel: ResponseChannel<Frame>,
    ) {
        self.stats.requests_received += 1;
        let refuse = |this: &mut Self, channel, request_id, reason: Rejection| {
            let reply: Reply<()> = Err(ErrorReply::from(reason));
            let frame = Frame::Bytes(encode_reply(request_id, &reply));
            let _ = this
                .swarm
                .behaviour_mut()
                .rr(kind)
                .send_response(channel, frame);
        };
        let bytes = match request {
            Frame::Bytes(bytes) => bytes,
            Frame::TooLarge { limit } => {
                tracing::debug!(%peer, protocol = %kind, "oversized request refused");
                let detail = format!("request exceeds the {limit}-byte limit of {kind}");
                return refuse(self, channel, 0, Rejection::Malformed { detail });
            }
        };
        let Some(server) = self.servers.get(&kind) else {
            let detail = format!("this peer does not serve {kind}");
            return refuse(
                self,
                channel,
                peek_request_id(&bytes),
                Rejection::Unavailable { detail },
            );
        };
        let Some(key) = public_of(&peer) else {
            let detail = "this peer answers ed25519 identities only".to_owned();
            return refuse(
                self,
                channel,
                peek_request_id(&bytes),
                Rejection::Unavailable { detail },
            );
        };
        let inbound = RawInbound {
            peer: key,
            bytes,
            channel,
        };
        match server.try_send(inbound) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(inbound)) => {
                let detail = format!("{kind} server is busy");
                let id = peek_request_id(&inbound.bytes);
                refuse(self, inbound.channel, id, Rejection::Unavailable { detail });
            }
            Err(mpsc::error::TrySendError::Closed(inbound)) => {
                self.servers.remove(&kind);
                let detail = format!("{kind} server has stopped");
                let id = peek_request_id(&inbound.bytes);
                refuse(self, inbound.channel, id, Rejection::Unavailable { detail });
            }
        }
    }

    /// Looks the peer of a request that could not be dialed up in Kademlia, to retry once.
    fn route(&mut self, pending: Pending) {
        let peer = pending.peer;
        if let Some((_, parked)) = self.routing.values_mut().find(|(p, _)| *p == peer) {
            parked.push(pending);
            return;
        }
        let Some(kad) = self.kad() else {
            let _ = pending.reply.send(Err(OverlayError::Unreachable {
                peer: pending.key,
                detail: "no address known (Kademlia is off)".into(),
            }));
            return;
        };
        let query = kad.get_closest_peers(peer);
        self.routing.insert(query, (peer, vec![pending]));
    }

    fn on_kad_progress(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool) {
        let result = match result {
            kad::QueryResult::GetClosestPeers(result) => result,
            kad::QueryResult::GetProviders(result) => {
                return self.providers.progress(id, result, last);
            }
            _ => return,
        };
        let Some((target, _)) = self.routing.get(&id) else {
            return;
        };
        let target = *target;
        let peers = match result {
            Ok(ok) => ok.peers,
            Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
        };
        let found: Vec<Multiaddr> = peers
            .into_iter()
            .filter(|info| info.peer_id == target)
            .flat_map(|info| info.addrs)
            .collect();
        if found.is_empty() && !last {
            return;
        }
        let Some((_, parked)) = self.routing.remove(&id) else {
            return;
        };
        if let Some(mut query) = self.kad().and_then(|kad| kad.query_mut(&id)) {
            query.finish();
        }
        let found_any = !found.is_empty();
        for addr in found {
            self.remember_address(target, addr);
        }
        for pending in parked {
            match (found_any, pending.retry) {
                (true, Some(frame)) => {
                    self.send_request(
                        pending.kind,
                        pending.key,
                        pending.peer,
                        frame,
                        pending.reply,
                        true,
                    );
                }
                _ => {
                    let _ = pending.reply.send(Err(OverlayError::Unreachable {
                        peer: pending.key,
                        detail: "no address known, and Kademlia did not find one".into(),
                    }));
                }
            }
        }
    }
}

/// An error and its causes, as one sentence ("a: b: c"); libp2p's transport errors often
/// display as nothing and keep the cause (the OS error) in their source.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        next = err.source();
    }
    if parts.is_empty() {
        format!("{e:?}")
    } else {
        parts.join(": ")
    }
}
