//! The node's heartbeat: a small signed [`Heartbeat`] every `heartbeat_interval_secs`, between
//! its ads, so agents stop planning the node within seconds of its death (and plan it again
//! when the beats resume) instead of at its ad's TTL.
//!
//! Each heartbeat carries a strictly increasing `seq` (milliseconds since the epoch) and the
//! `seq` of the node's latest ad; it goes out on its federation's heartbeat topic only once an
//! ad is out (receivers take heartbeats only from nodes whose ad they hold).

use std::sync::Arc;
use std::time::Duration;

use capability_schema::{Heartbeat, PublicKey, SecretKey, Signed};
use federation::OverlayHandle;
use tokio::sync::watch;

use super::run::NodeState;

/// Milliseconds since the epoch, by this host's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The next heartbeat after one with `last` seq: now, or one above `last` if the clock
/// stepped back.
pub fn next(key: &SecretKey, last: u64, ad_seq: u64) -> Signed<Heartbeat> {
    let seq = now_ms().max(last.saturating_add(1));
    Signed::sign(key, &Heartbeat { seq, ad_seq })
}

/// Signs and publishes the node's heartbeat every `interval` on the heartbeat topic of
/// `authority`'s federation (its certificate's), until `stop`.
pub(crate) async fn heartbeat_loop(
    key: SecretKey,
    authority: PublicKey,
    state: Arc<NodeState>,
    overlay: OverlayHandle,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = 0;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        let ad_seq = state
            .ad
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .and_then(|ad| ad.peek_unverified().ok())
            .map(|ad| ad.seq);
        // No ad out yet: a heartbeat would vouch for a node nobody knows.
        let Some(ad_seq) = ad_seq else { continue };
        let beat = next(&key, last, ad_seq);
        last = beat.peek_unverified().map_or(last, |b| b.seq);
        if let Err(e) = overlay.publish_heartbeat(authority, beat).await {
            // No peers yet is normal at start; the next beat retries.
            tracing::debug!(error = %e, "heartbeat not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_rise_even_when_the_clock_steps_back() {
        let key = capability_schema::identity::test_key(1);
        let first = next(&key, 0, 7).verify().unwrap();
        assert!(first.seq > 1_700_000_000_000 && first.ad_seq == 7);
        let ahead = first.seq + 3_600_000;
        assert_eq!(next(&key, ahead, 7).verify().unwrap().seq, ahead + 1);
    }
}
