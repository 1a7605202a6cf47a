//! The broker announces itself on the overlay, so a user who knows only one bootstrap
//! address (any daemon) finds it: a Kademlia provider record under [`BROKER_KEY`] (see
//! [`federation::overlay::rendezvous`]).
//!
//! The first announcements come quickly (the daemon's bootstrap connections may not be up
//! when it starts: a record stored only locally reaches nobody), then every
//! [`ANNOUNCE_EVERY`]; records expire at the peers holding them when the broker stops
//! announcing, so a dead broker drops out of lookups within
//! [`federation::overlay::rendezvous::PROVIDER_TTL`].

use std::time::Duration;

use federation::OverlayHandle;
use federation::overlay::rendezvous::BROKER_KEY;
use tokio::sync::watch;

/// How often the broker announces itself once it is settled.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(30);

/// The waits before the first announcements, while bootstrap connections come up.
const EARLY: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(3),
    Duration::from_secs(10),
];

/// Announces the broker until `stop` turns true.
pub async fn announce(overlay: OverlayHandle, mut stop: watch::Receiver<bool>) {
    let waits = EARLY.into_iter().chain(std::iter::repeat(ANNOUNCE_EVERY));
    for wait in waits {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = overlay.provide(BROKER_KEY).await {
            tracing::debug!(error = %e, "broker not announced");
            if matches!(e, federation::overlay::OverlayError::Closed) {
                return;
            }
        }
    }
}
