//! Finding daemons by what they serve: Kademlia provider records under a well-known key.
//!
//! A daemon that serves something others look for (a broker: [`BROKER_KEY`]) announces itself
//! with [`OverlayHandle::provide`](super::OverlayHandle::provide): Kademlia stores a provider
//! record naming its peer at the peers closest to the key (and at itself). Anyone joined to the
//! overlay through any daemon finds those peers with
//! [`OverlayHandle::providers`](super::OverlayHandle::providers), then reaches them by key
//! (their addresses come with the lookup, or from a peer lookup).
//!
//! A record is not a credential: it says only "this peer claims to serve the key". Whoever uses
//! one talks to the peer over the authenticated overlay and judges the answer as from any
//! party it has not chosen (a broker sees nothing but what the principal signs for it).
//! Records expire after [`PROVIDER_TTL`] unless their provider announces again (Kademlia
//! republishes every [`PROVIDER_REPUBLISH`]), so a daemon that died drops out within minutes.

use std::collections::HashMap;
use std::time::Duration;

use capability_schema::PublicKey;
use libp2p::kad;
use tokio::sync::mpsc;

use super::{OverlayError, identity};

/// The key brokers announce themselves under.
pub const BROKER_KEY: &[u8] = b"/planetmesh/broker/1";

/// How long a provider record is kept without being announced again.
pub const PROVIDER_TTL: Duration = Duration::from_secs(180);

/// How often Kademlia announces this daemon's provider records again.
pub const PROVIDER_REPUBLISH: Duration = Duration::from_secs(60);

/// Announces the local peer as a provider of `key` (an error without Kademlia).
pub(crate) fn provide(
    kad: Option<&mut kad::Behaviour<kad::store::MemoryStore>>,
    key: Vec<u8>,
) -> Result<(), OverlayError> {
    let kad = kad.ok_or_else(|| {
        OverlayError::Setup("cannot announce: Kademlia is off in this overlay".into())
    })?;
    kad.start_providing(kad::RecordKey::new(&key))
        .map(|_| ())
        .map_err(|e| OverlayError::Setup(format!("announcing a provider record: {e}")))
}

/// Batches of providers a lookup may queue for its caller before later ones are dropped
/// (each Kademlia step that found providers makes one).
pub const MAX_BATCHES: usize = 64;

/// Provider lookups in flight, each with the channel its caller reads the providers from
/// (dropped, which tells the caller, when the lookup ends).
#[derive(Default)]
pub(crate) struct Lookups {
    running: HashMap<kad::QueryId, mpsc::Sender<Vec<PublicKey>>>,
}

impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lookups({} running)", self.running.len())
    }
}

impl Lookups {
    /// Starts looking up the providers of `key`; they go to `found` as they come.
    pub(crate) fn start(
        &mut self,
        kad: Option<&mut kad::Behaviour<kad::store::MemoryStore>>,
        key: Vec<u8>,
        found: mpsc::Sender<Vec<PublicKey>>,
    ) -> Result<(), OverlayError> {
        let kad = kad.ok_or_else(|| {
            OverlayError::Setup("cannot look up providers: Kademlia is off in this overlay".into())
        })?;
        let id = kad.get_providers(kad::RecordKey::new(&key));
        self.running.insert(id, found);
        Ok(())
    }

    /// A step of lookup `id`: passes on the providers it found; the last step (or a caller
    /// that stopped listening) ends the lookup.
    pub(crate) fn progress(
        &mut self,
        id: kad::QueryId,
        result: Result<kad::GetProvidersOk, kad::GetProvidersError>,
        last: bool,
    ) {
        let Some(found) = self.running.get(&id) else {
            return;
        };
        if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result {
            let keys: Vec<PublicKey> = providers
                .iter()
                .filter_map(|p| identity::public_key(p).ok())
                .collect();
            if !keys.is_empty() {
                // Full or gone: the caller has enough or stopped waiting.
                let _ = found.try_send(keys);
            }
        }
        if last || found.is_closed() {
            self.running.remove(&id);
        }
    }
}
