//! What daemons hold: [`OverlayHandle`] and the typed serving API.
//!
//! Every method sends one command on the bounded command queue and waits for its answer on a
//! oneshot channel; nothing here touches the swarm. Typed encoding and decoding of requests
//! and answers happens here, in the caller's task, so the overlay task stays protocol-agnostic
//! and a slow decoder never stalls the network.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use capability_schema::codec;
use capability_schema::membership::{RevocationSync, RevocationSyncReply, RevocationVerdict};
use capability_schema::protocol::{Envelope, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, Reply};
use capability_schema::rejection::Rejection;
use capability_schema::{ErrorReply, PublicKey, ResourceAd, RevocationList, Signed};
use libp2p::request_response::ResponseChannel;
use libp2p::{Multiaddr, PeerId};
use serde::de::IgnoredAny;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::codec::Frame;
use super::identity;
use super::protocol::{Protocol, ProtocolKind};
use super::task::{Command, RawInbound};
use super::{OverlayError, SharedTrust};

/// A validated ad as the overlay hands it to its daemon.
#[derive(Debug, Clone)]
pub struct AdEvent {
    /// The ad, decoded.
    pub ad: ResourceAd,
    /// The ad exactly as the node signed it (to store or forward).
    pub signed: Signed<ResourceAd>,
    /// The peer that relayed it to us.
    pub relayed_by: PublicKey,
}

/// A node's heartbeat the overlay took from gossip (from a node whose valid ad it holds, newer
/// than the last one, sent within the skew window): the node was alive a moment ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatEvent {
    /// The node (the heartbeat's signer).
    pub node: PublicKey,
    /// The heartbeat.
    pub heartbeat: capability_schema::Heartbeat,
}

/// Counters of an overlay since it started (for metrics endpoints and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverlayStats {
    /// Peers connected now.
    pub connected_peers: u64,
    /// Connections established.
    pub connections_opened: u64,
    /// Connections closed.
    pub connections_closed: u64,
    /// Connections closed by trimming above `max_peers`.
    pub connections_trimmed: u64,
    /// Ads validated and relayed.
    pub ads_accepted: u64,
    /// Ads dropped as misbehaviour (the relaying peer lost score).
    pub ads_rejected: u64,
    /// Ads dropped without blame (stale seq, clock skew).
    pub ads_ignored: u64,
    /// Peers disconnected and blocked for relaying invalid ads.
    pub peers_blocked: u64,
    /// Requests sent.
    pub requests_sent: u64,
    /// Requests that failed on the wire (timeouts, unreachable, closed streams).
    pub requests_failed: u64,
    /// Requests received.
    pub requests_received: u64,
    /// Nodes whose last ad `seq` is remembered now (replays of older ads are dropped).
    pub seqs_tracked: u64,
    /// Nodes forgotten before their ad expired because `max_tracked_nodes` were tracked.
    pub seqs_evicted: u64,
    /// Revocation lists applied (newer than the one held), however they came.
    pub revocations_applied: u64,
    /// Revocation lists rejected as misbehaviour (forged, another authority, wrong topic).
    pub revocations_rejected: u64,
    /// Revocation lists ignored (held already, older, of a federation not trusted here).
    pub revocations_ignored: u64,
    /// Federations whose revocation list is held now.
    pub revocations_held: u64,
}

/// How the overlay task ended ([`OverlayHandle::closed`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayExit {
    /// [`OverlayHandle::shutdown`] stopped it.
    #[error("the overlay was shut down")]
    Shutdown,
    /// Every handle, serving stream and responder was dropped.
    #[error("the overlay stopped: nothing held it any more")]
    Dropped,
    /// It panicked; the panic's message.
    #[error("the overlay task panicked: {0}")]
    Panicked(String),
    /// It was cancelled (its tokio runtime shut down under it).
    #[error("the overlay task was cancelled")]
    Cancelled,
}

impl OverlayExit {
    /// Whether the overlay ended because it was asked to ([`OverlayExit::Shutdown`],
    /// [`OverlayExit::Dropped`]) rather than by a failure.
    pub fn is_clean(&self) -> bool {
        matches!(self, OverlayExit::Shutdown | OverlayExit::Dropped)
    }
}

/// A daemon's handle on its overlay. Cheap to clone; the overlay stops when
/// [`OverlayHandle::shutdown`] is called or every handle and serving stream is dropped.
#[derive(Debug, Clone)]
pub struct OverlayHandle {
    commands: mpsc::Sender<Command>,
    ads: broadcast::Sender<AdEvent>,
    heartbeats: broadcast::Sender<HeartbeatEvent>,
    revocations: watch::Receiver<u64>,
    local: PublicKey,
    trust: SharedTrust,
    next_request_id: Arc<AtomicU64>,
    /// `None` while the overlay task runs, then how it ended (set by its supervisor).
    exit: watch::Receiver<Option<OverlayExit>>,
}

impl OverlayHandle {
    pub(crate) fn new(
        commands: mpsc::Sender<Command>,
        ads: broadcast::Sender<AdEvent>,
        heartbeats: broadcast::Sender<HeartbeatEvent>,
        revocations: watch::Receiver<u64>,
        local: PublicKey,
        trust: SharedTrust,
        exit: watch::Receiver<Option<OverlayExit>>,
    ) -> Self {
        OverlayHandle {
            commands,
            ads,
            heartbeats,
            revocations,
            local,
            trust,
            next_request_id: Arc::new(AtomicU64::new(1)),
            exit,
        }
    }

    /// Resolves once the overlay task has ended, with how it ended: by
    /// [`OverlayHandle::shutdown`], by being dropped, by a panic, or cancelled with its
    /// runtime. Once it has ended every call fails with [`OverlayError::Closed`].
    pub async fn closed(&self) -> OverlayExit {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(how) => how.clone().unwrap_or(OverlayExit::Cancelled),
            // The supervisor went away without a word: the runtime is shutting down.
            Err(_) => OverlayExit::Cancelled,
        }
    }

    /// How the overlay task ended, or `None` while it runs (for status endpoints).
    pub fn exit(&self) -> Option<OverlayExit> {
        self.exit.borrow().clone()
    }

    /// What a daemon waits on while it serves: `signal` (SIGTERM, ctrl-c), or the end of the
    /// overlay task, whichever comes first.
    ///
    /// `Ok(())` when the signal came; the daemon then shuts down as usual. `Err(exit)` when
    /// the overlay ended first (a panic, or anything else: the daemon has not asked it to
    /// stop), logged as an error naming the cause: the daemon should shut down what it still
    /// runs and exit with an error rather than keep serving without an overlay.
    pub async fn alive_until(&self, signal: impl Future<Output = ()>) -> Result<(), OverlayExit> {
        tokio::select! {
            () = signal => Ok(()),
            exit = self.closed() => {
                tracing::error!(
                    peer = %self.local,
                    cause = %exit,
                    "the overlay ended while the daemon was running; exiting with an error"
                );
                Err(exit)
            }
        }
    }

    /// Makes the overlay task panic (tests of [`OverlayHandle::closed`]).
    #[cfg(test)]
    pub(crate) async fn crash(&self) {
        let _ = self.commands.send(Command::Crash).await;
    }

    /// This daemon's key.
    pub fn local_key(&self) -> PublicKey {
        self.local
    }

    /// This daemon's libp2p peer id.
    pub fn local_peer_id(&self) -> PeerId {
        identity::peer_id(&self.local)
    }

    /// The trust store the overlay validates ads with (shared: changes apply at once).
    pub fn trust(&self) -> &SharedTrust {
        &self.trust
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, OverlayError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| OverlayError::Closed)?;
        rx.await.map_err(|_| OverlayError::Closed)
    }

    /// Validates `ad` like any receiver would and publishes it on its federation's topic.
    pub async fn publish_ad(&self, ad: Signed<ResourceAd>) -> Result<(), OverlayError> {
        self.call(|reply| Command::PublishAd { ad, reply }).await?
    }

    /// Publishes this node's signed heartbeat on the heartbeat topic of its federation, the one
    /// of `authority` (its certificate's). Not checked here: receivers judge it.
    pub async fn publish_heartbeat(
        &self,
        authority: PublicKey,
        heartbeat: Signed<capability_schema::Heartbeat>,
    ) -> Result<(), OverlayError> {
        self.call(|reply| Command::PublishHeartbeat {
            authority,
            heartbeat,
            reply,
        })
        .await?
    }

    /// Publishes raw bytes on `federation`'s ad topic without any validation.
    ///
    /// For fault injection (tests, testnet scenarios): honest receivers reject what does not
    /// validate and lower this peer's score. Daemons use [`OverlayHandle::publish_ad`].
    pub async fn publish_raw(&self, federation: &str, bytes: Vec<u8>) -> Result<(), OverlayError> {
        let federation = federation.to_owned();
        self.call(|reply| Command::PublishRaw {
            federation,
            bytes,
            reply,
        })
        .await?
    }

    /// Follows the ads of `federation` (its authority must be in the trust store).
    pub async fn subscribe(&self, federation: &str) -> Result<(), OverlayError> {
        let federation = federation.to_owned();
        self.call(|reply| Command::Subscribe { federation, reply })
            .await?
    }

    /// Stops following the ads of `federation`.
    pub async fn unsubscribe(&self, federation: &str) -> Result<(), OverlayError> {
        let federation = federation.to_owned();
        self.call(|reply| Command::Unsubscribe { federation, reply })
            .await
    }

    /// A new receiver of every validated ad from now on. A receiver that falls more than the
    /// configured `ad_queue` behind loses the oldest ads (and is told how many); nodes
    /// re-announce, so a lost ad is replaced by the next one.
    pub fn ads(&self) -> broadcast::Receiver<AdEvent> {
        self.ads.subscribe()
    }

    /// A new receiver of every heartbeat taken from now on (see [`HeartbeatEvent`]); one that
    /// falls more than `ad_queue` behind loses the oldest.
    pub fn heartbeats(&self) -> broadcast::Receiver<HeartbeatEvent> {
        self.heartbeats.subscribe()
    }

    /// A receiver that changes whenever a newer revocation list was applied to the trust
    /// store (its value counts the lists applied since start). Daemons wait on
    /// `changed()` and then act on every list the store holds
    /// ([`crate::TrustStore::revocation_lists`]): a receiver never lags, and the lists a
    /// config named at start are applied before the first value.
    pub fn revocations(&self) -> watch::Receiver<u64> {
        self.revocations.clone()
    }

    /// Applies `list` if it is newer than the one held (told to the daemon at once) and
    /// gossips it; returns what became of it. A list already held is gossiped again (its
    /// publisher wants it out), an older one is not.
    pub async fn publish_revocation(
        &self,
        list: Signed<RevocationList>,
    ) -> Result<RevocationVerdict, OverlayError> {
        self.call(|reply| Command::PublishRevocation { list, reply })
            .await
    }

    /// Offers `list` to `peer` (connected, or with a known address), which validates it,
    /// applies it if newer and gossips it; returns the peer's verdict. This is how `fedctl
    /// publish` hands a list to any daemon.
    pub async fn offer_revocation(
        &self,
        peer: &PublicKey,
        list: Signed<RevocationList>,
        timeout: Duration,
    ) -> Result<RevocationVerdict, OverlayError> {
        let sync = RevocationSync {
            have: Vec::new(),
            offer: vec![list],
        };
        let peer = *peer;
        let exchange = self.call(|reply| Command::OfferRevocation { peer, sync, reply });
        let frame = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| OverlayError::Exchange {
                peer: peer.to_string(),
                detail: format!("no answer within {timeout:?}"),
            })???;
        let bytes = match frame {
            Frame::Bytes(bytes) => bytes,
            Frame::TooLarge { limit } => {
                return Err(OverlayError::ResponseTooLarge { peer, limit });
            }
        };
        let answer: RevocationSyncReply = codec::decode_with_limit(&bytes, MAX_RESPONSE_BYTES)
            .map_err(|error| OverlayError::Decode { peer, error })?;
        answer
            .verdicts
            .into_iter()
            .next()
            .ok_or_else(|| OverlayError::Exchange {
                peer: peer.to_string(),
                detail: "the peer answered without a verdict".into(),
            })
    }

    /// Publishes raw bytes on `federation`'s revocation topic without any validation (fault
    /// injection in tests: honest receivers reject a forged list and lower this peer's score).
    pub async fn publish_raw_revocation(
        &self,
        federation: &str,
        bytes: Vec<u8>,
    ) -> Result<(), OverlayError> {
        let federation = federation.to_owned();
        self.call(|reply| Command::PublishRawRevocation {
            federation,
            bytes,
            reply,
        })
        .await?
    }

    /// Sends `request` to `peer` over protocol `P` and waits at most `timeout` for the answer.
    ///
    /// Errors are typed: [`OverlayError::Timeout`], [`OverlayError::Unreachable`],
    /// [`OverlayError::RequestTooLarge`] (not sent), [`OverlayError::Rejected`] (the peer's
    /// error reply), [`OverlayError::Decode`], ….
    pub async fn request<P: Protocol>(
        &self,
        peer: &PublicKey,
        request: P::Request,
        timeout: Duration,
    ) -> Result<P::Response, OverlayError> {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let bytes = codec::encode(&Envelope {
            request_id,
            body: request,
        });
        // `request_raw` refuses frames over the request cap before anything is sent.
        let frame = self.request_raw(P::KIND, peer, bytes, timeout).await?;
        let bytes = match frame {
            Frame::Bytes(bytes) => bytes,
            Frame::TooLarge { limit } => {
                return Err(OverlayError::ResponseTooLarge { peer: *peer, limit });
            }
        };
        let envelope: Envelope<Reply<P::Response>> =
            codec::decode_with_limit(&bytes, MAX_RESPONSE_BYTES)
                .map_err(|error| OverlayError::Decode { peer: *peer, error })?;
        match envelope.body {
            // A refusal of a frame the server could not read carries request id 0.
            Err(reply) if envelope.request_id == 0 => Err(OverlayError::Rejected(reply)),
            _ if envelope.request_id != request_id => Err(OverlayError::WrongRequestId {
                peer: *peer,
                expected: request_id,
                found: envelope.request_id,
            }),
            Ok(response) => Ok(response),
            Err(reply) => Err(OverlayError::Rejected(reply)),
        }
    }

    /// Sends raw bytes as a request of protocol `kind` and returns the raw answer.
    ///
    /// For diagnostics and tests (it skips typed encoding and decoding); daemons use
    /// [`OverlayHandle::request`]. Like every request, `bytes` over the request cap are
    /// refused with [`OverlayError::RequestTooLarge`] and not sent.
    pub async fn request_raw(
        &self,
        kind: ProtocolKind,
        peer: &PublicKey,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<Frame, OverlayError> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(OverlayError::RequestTooLarge {
                size: bytes.len(),
                limit: MAX_REQUEST_BYTES,
            });
        }
        let (tx, rx) = oneshot::channel();
        let command = Command::Request {
            kind,
            peer: *peer,
            frame: Frame::Bytes(bytes),
            reply: tx,
        };
        let exchange = async {
            self.commands
                .send(command)
                .await
                .map_err(|_| OverlayError::Closed)?;
            rx.await.map_err(|_| OverlayError::Closed)?
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| OverlayError::Timeout {
                protocol: kind,
                peer: *peer,
                after: timeout,
            })?
    }

    /// Starts serving protocol `P`: incoming requests arrive, decoded, on the returned stream.
    /// Only one stream per protocol may exist in a daemon.
    pub async fn serve<P: Protocol>(&self) -> Result<ServeStream<P>, OverlayError> {
        let rx = self
            .call(|reply| Command::Serve {
                kind: P::KIND,
                reply,
            })
            .await??;
        Ok(ServeStream {
            rx,
            commands: self.commands.clone(),
            _protocol: PhantomData,
        })
    }

    /// Connects to `addr` and returns the key of the peer there.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PublicKey, OverlayError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Remembers addresses of `peer` for later requests (ads add their node's addresses by
    /// themselves).
    pub async fn add_addresses(
        &self,
        peer: &PublicKey,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), OverlayError> {
        let peer = identity::peer_id(peer);
        self.call(|reply| Command::AddAddresses { peer, addrs, reply })
            .await
    }

    /// The addresses this daemon listens on, each with its `/p2p/<peer id>` suffix.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, OverlayError> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }

    /// The peers this daemon is connected to.
    pub async fn connected_peers(&self) -> Result<Vec<PublicKey>, OverlayError> {
        self.call(|reply| Command::ConnectedPeers { reply }).await
    }

    /// The peers in this daemon's gossip mesh for `federation` (ads are pushed to them).
    pub async fn mesh_peers(&self, federation: &str) -> Result<Vec<PublicKey>, OverlayError> {
        let federation = federation.to_owned();
        self.call(|reply| Command::MeshPeers { federation, reply })
            .await
    }

    /// Announces this daemon as a provider of `key` (see [`super::rendezvous`]); Kademlia
    /// announces it again by itself while the daemon runs.
    pub async fn provide(&self, key: &[u8]) -> Result<(), OverlayError> {
        let key = key.to_vec();
        self.call(|reply| Command::Provide { key, reply }).await?
    }

    /// The peers announced as providers of `key` (see [`super::rendezvous`]), sorted: what
    /// the lookup found when it ended, or within `timeout` if it runs longer. They may include
    /// this daemon.
    pub async fn providers(
        &self,
        key: &[u8],
        timeout: Duration,
    ) -> Result<Vec<PublicKey>, OverlayError> {
        let key = key.to_vec();
        let (found, mut batches) = mpsc::channel(super::rendezvous::MAX_BATCHES);
        self.call(|reply| Command::Providers { key, found, reply })
            .await??;
        let mut keys = std::collections::BTreeSet::new();
        let deadline = tokio::time::Instant::now() + timeout;
        // The task drops its sender when the lookup ends.
        while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, batches.recv()).await {
            keys.extend(batch);
        }
        Ok(keys.into_iter().collect())
    }

    /// Counters since the overlay started.
    pub async fn stats(&self) -> Result<OverlayStats, OverlayError> {
        self.call(|reply| Command::Stats { reply }).await
    }

    /// The NAT side: whether this daemon serves as a relay or is behind NAT, its relays and
    /// reservations, and which connected peers are reached through a relay or directly.
    pub async fn nat(&self) -> Result<super::relay::NatReport, OverlayError> {
        self.call(|reply| Command::Nat { reply }).await
    }

    /// Stops the overlay: connections close and every later call fails with
    /// [`OverlayError::Closed`].
    pub async fn shutdown(&self) {
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }
}

/// A bounded stream of decoded requests of protocol `P`.
#[derive(Debug)]
pub struct ServeStream<P: Protocol> {
    rx: mpsc::Receiver<RawInbound>,
    commands: mpsc::Sender<Command>,
    _protocol: PhantomData<fn() -> P>,
}

/// One request to answer.
#[derive(Debug)]
pub struct Incoming<P: Protocol> {
    /// The caller, as authenticated by the transport handshake.
    pub peer: PublicKey,
    /// The caller's request id.
    pub request_id: u64,
    /// The request.
    pub request: P::Request,
    /// Where the answer goes.
    pub responder: Responder<P>,
}

impl<P: Protocol> ServeStream<P> {
    /// The next request; `None` once the overlay has stopped.
    ///
    /// Requests that do not decode as `P::Request` are answered with a `malformed` error
    /// reply here and skipped.
    pub async fn next(&mut self) -> Option<Incoming<P>> {
        loop {
            let raw = self.rx.recv().await?;
            let mut responder = Responder {
                kind: P::KIND,
                request_id: 0,
                channel: Some(raw.channel),
                commands: self.commands.clone(),
                _protocol: PhantomData,
            };
            match codec::decode_with_limit::<Envelope<P::Request>>(&raw.bytes, MAX_REQUEST_BYTES) {
                Ok(envelope) => {
                    responder.request_id = envelope.request_id;
                    return Some(Incoming {
                        peer: raw.peer,
                        request_id: envelope.request_id,
                        request: envelope.body,
                        responder,
                    });
                }
                Err(error) => {
                    responder.request_id = peek_request_id(&raw.bytes);
                    tracing::debug!(peer = %raw.peer, protocol = %P::KIND, %error, "malformed request");
                    let reply = ErrorReply::from(Rejection::Malformed {
                        detail: format!("not a {} request: {error}", P::KIND),
                    });
                    let _ = responder.send(Err(reply)).await;
                }
            }
        }
    }
}

/// The request id of a frame whose body may not decode (0 when even that fails).
pub(crate) fn peek_request_id(bytes: &[u8]) -> u64 {
    codec::decode_with_limit::<Envelope<IgnoredAny>>(bytes, MAX_REQUEST_BYTES)
        .map_or(0, |envelope| envelope.request_id)
}

/// Encodes an answer, replacing one over the response cap by an error reply saying so.
pub(crate) fn encode_reply<T: serde::Serialize>(request_id: u64, body: &Reply<T>) -> Vec<u8> {
    let bytes = codec::encode(&Envelope { request_id, body });
    if bytes.len() <= MAX_RESPONSE_BYTES {
        return bytes;
    }
    let reply: Reply<()> = Err(ErrorReply::from(Rejection::Internal {
        detail: format!(
            "the answer of {} bytes exceeds the {MAX_RESPONSE_BYTES}-byte limit",
            bytes.len()
        ),
    }));
    codec::encode(&Envelope {
        request_id,
        body: reply,
    })
}

/// Answers one request. Dropping it unanswered sends an `internal` error reply.
#[derive(Debug)]
pub struct Responder<P: Protocol> {
    kind: ProtocolKind,
    request_id: u64,
    channel: Option<ResponseChannel<Frame>>,
    commands: mpsc::Sender<Command>,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> Responder<P> {
    /// The caller's request id.
    pub fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Sends the answer.
    pub async fn send(mut self, reply: Reply<P::Response>) -> Result<(), OverlayError> {
        let channel = self.channel.take().ok_or(OverlayError::AlreadyAnswered)?;
        let bytes = encode_reply(self.request_id, &reply);
        self.commands
            .send(Command::Respond {
                kind: self.kind,
                channel,
                frame: Frame::Bytes(bytes),
            })
            .await
            .map_err(|_| OverlayError::Closed)
    }
}

impl<P: Protocol> Drop for Responder<P> {
    fn drop(&mut self) {
        if let Some(channel) = self.channel.take() {
            let reply: Reply<()> = Err(ErrorReply::from(Rejection::Internal {
                detail: "the server dropped the request without answering".into(),
            }));
            let frame = Frame::Bytes(encode_reply(self.request_id, &reply));
            // Best effort: with the queue full the stream is dropped and the caller sees the
            // stream close instead.
            let _ = self.commands.try_send(Command::Respond {
                kind: self.kind,
                channel,
                frame,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    use capability_schema::SecretKey;

    use super::*;
    use crate::{Overlay, OverlayConfig, TrustStore};

    const WAIT: Duration = Duration::from_secs(10);

    async fn start() -> OverlayHandle {
        let config = OverlayConfig {
            kademlia: false,
            target_peers: 0,
            ..OverlayConfig::memory()
        };
        let trust = Arc::new(RwLock::new(TrustStore::new()));
        Overlay::start(&SecretKey::generate(), config, trust)
            .await
            .unwrap()
    }

    async fn closed(overlay: &OverlayHandle) -> OverlayExit {
        tokio::time::timeout(WAIT, overlay.closed())
            .await
            .expect("the overlay ends")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shutdown_is_reported_as_a_clean_end() {
        let overlay = start().await;
        assert_eq!(overlay.exit(), None);
        overlay.shutdown().await;
        let how = closed(&overlay).await;
        assert_eq!(how, OverlayExit::Shutdown);
        assert!(how.is_clean());
        assert_eq!(overlay.exit(), Some(OverlayExit::Shutdown));
        // Every later call fails, and a daemon still waiting for its signal is told at once.
        assert_eq!(overlay.stats().await, Err(OverlayError::Closed));
        assert_eq!(
            overlay.alive_until(std::future::pending()).await,
            Err(OverlayExit::Shutdown)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_of_the_overlay_task_is_caught_and_reported_to_every_handle() {
        let overlay = start().await;
        let daemon = {
            let overlay = overlay.clone();
            tokio::spawn(async move { overlay.alive_until(std::future::pending()).await })
        };
        overlay.crash().await;
        let how = closed(&overlay).await;
        assert!(
            matches!(&how, OverlayExit::Panicked(message) if message.contains("crash requested")),
            "{how:?}"
        );
        assert!(!how.is_clean());
        assert!(how.to_string().contains("panicked"), "{how}");
        // The daemon's wait ends with the cause instead of serving a dead overlay.
        let waited = tokio::time::timeout(WAIT, daemon).await.unwrap().unwrap();
        assert_eq!(waited, Err(how.clone()));
        assert_eq!(overlay.exit(), Some(how));
        assert_eq!(overlay.stats().await, Err(OverlayError::Closed));
        // Shutting a dead overlay down returns at once.
        tokio::time::timeout(WAIT, overlay.shutdown())
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_signal_first_leaves_the_overlay_running() {
        let overlay = start().await;
        assert_eq!(overlay.alive_until(async {}).await, Ok(()));
        assert_eq!(overlay.exit(), None);
        assert!(overlay.stats().await.is_ok());
        overlay.shutdown().await;
        assert_eq!(closed(&overlay).await, OverlayExit::Shutdown);
    }
}
