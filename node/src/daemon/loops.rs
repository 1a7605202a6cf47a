//! The node manager's background loops, each until the daemon stops: the signed ad (at once,
//! on every change, and on the heartbeat), the disk watchdog and the reaper.

use std::sync::Arc;
use std::time::Duration;

use capability_schema::SecretKey;
use federation::overlay::Multiaddr;
use federation::{OverlayHandle, unix_now};
use tokio::sync::{Notify, watch};

use super::monitor::{AdTemplate, HostProbe, SliverMonitor, build_ad, sliver_usage};
use super::run::NodeState;
use super::service::NodeService;

/// The disk watchdog: measures every sliver's writable layer each `period`, freezes those
/// over their grant (`node::sliver`), and puts the verdicts in the last usage sample.
pub(crate) async fn watch_disks(
    state: Arc<NodeState>,
    monitor: Arc<dyn SliverMonitor>,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // Slivers frozen at the last pass: a change becomes a lease event (`lease_events`).
    let mut frozen = std::collections::BTreeSet::new();
    loop {
        let check = Arc::clone(&monitor);
        let service = Arc::clone(&state.service);
        let mut was = std::mem::take(&mut frozen);
        let checked = tokio::task::spawn_blocking(move || {
            let reports = check.check_disk();
            super::lease_events::note_freezes(service.ledger(), &mut was, &reports);
            (reports, was)
        });
        let reports = match checked.await {
            Ok((reports, now_frozen)) => {
                frozen = now_frozen;
                reports
            }
            Err(e) => {
                tracing::error!(error = %e, "disk watchdog failed");
                Vec::new()
            }
        };
        for sample in state
            .usage
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter_mut()
        {
            sample.disk = reports.iter().find(|r| r.id == sample.id).cloned();
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// Seconds between the reconciler's checks of node-wide host state (the firewall table).
const MAINTAIN_EVERY: u64 = 5;

/// The reaper: each second, destroys the slivers whose lease ended; every
/// [`MAINTAIN_EVERY`] seconds, puts back what was changed behind the node's back.
pub(crate) async fn reap(
    service: Arc<NodeService>,
    changed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        tick += 1;
        if tick.is_multiple_of(MAINTAIN_EVERY) {
            let service = Arc::clone(&service);
            match tokio::task::spawn_blocking(move || service.maintain()).await {
                Ok(Ok(restored)) if !restored.is_empty() => {
                    tracing::warn!(?restored, "reconciler restored host state");
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "reconciler: cannot check host state"),
                Err(e) => tracing::error!(error = %e, "reconciler failed"),
            }
        }
        let service = Arc::clone(&service);
        match tokio::task::spawn_blocking(move || service.reap(unix_now())).await {
            Ok(Ok(reaped)) if !reaped.is_empty() => {
                tracing::info!(?reaped, "leases expired; slivers destroyed");
                changed.notify_one();
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "reaper: the ledger cannot be read"),
            Err(e) => tracing::error!(error = %e, "reaper failed"),
        }
    }
}

/// Signs and publishes the node's ad: at once, on every change (`changed`), and every
/// `interval_secs`; first re-signs the delegations with less than a third of their life left,
/// so the ad carries the delegations in force.
pub(crate) async fn ad_loop(
    key: SecretKey,
    mut template: AdTemplate,
    state: Arc<NodeState>,
    overlay: OverlayHandle,
    changed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    interval_secs: u64,
) {
    let probe = HostProbe::default();
    let mut last_seq = 0u64;
    loop {
        let now = unix_now();
        // seq: milliseconds since the epoch, strictly increasing, so a restarted node's ads
        // are never taken for replays of its old ones.
        let seq = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64))
        .max(last_seq + 1);
        last_seq = seq;
        let service = &state.service;
        let sample = probe.sample();
        let slivers = match &state.monitor {
            Some(monitor) => {
                let (monitor, service) = (Arc::clone(monitor), Arc::clone(service));
                let measured = tokio::task::spawn_blocking(move || {
                    let samples = monitor.usage();
                    let slices: std::collections::BTreeMap<String, String> = if samples.is_empty() {
                        Default::default()
                    } else {
                        match service.ledger().leases() {
                            Ok(leases) => leases
                                .into_iter()
                                .map(|r| (r.sliver_id, r.lease.slice))
                                .collect(),
                            Err(e) => {
                                tracing::error!(error = %e, "ad: the ledger cannot be read; per-sliver use left out");
                                Default::default()
                            }
                        }
                    };
                    let ad = sliver_usage(&samples, &slices);
                    (samples, ad)
                })
                .await;
                match measured {
                    Ok((samples, ad)) => {
                        *state
                            .usage
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = samples;
                        ad
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "sampling sliver use failed");
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        let measured = capability_schema::ad::MeasuredUse {
            load_milli: sample.load_milli,
            memory_used_bytes: sample.memory_used,
            slivers,
        };
        // Delegations near their end are signed anew, and go out in this very ad.
        let mut renewed = false;
        let delegated = service.update_delegations(|d| {
            let next = d.renewed(&key, now);
            renewed = next.is_some();
            next
        });
        if renewed {
            tracing::info!("delegations renewed before their end");
        }
        template.delegations = delegated.signed();
        if template.follow_listen
            && let Ok(bound) = overlay.listen_addrs().await
        {
            template.addresses = ad_addresses(&bound);
        }
        let ad = build_ad(
            &key,
            &template,
            delegated.capacity(),
            &service.commitments(),
            measured,
            seq,
            now,
        );
        *state
            .ad
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ad.clone());
        match overlay.publish_ad(ad).await {
            Ok(()) => {
                state
                    .ads_published
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // No peers yet is normal at start; the heartbeat retries.
            Err(e) => tracing::debug!(error = %e, "ad not published"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            () = changed.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(interval_secs)) => {}
        }
    }
}

/// Wakes the ad loop (`changed`) when the overlay's listen addresses change, checked every
/// second: a node behind NAT gets (or loses) its `/p2p-circuit` address when a relay accepts
/// (or drops) its reservation, and peers must learn it from the next ad, not a beat later.
pub(crate) async fn watch_addresses(
    overlay: OverlayHandle,
    changed: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut known = overlay.listen_addrs().await.unwrap_or_default();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let Ok(bound) = overlay.listen_addrs().await else {
            break;
        };
        if bound != known {
            tracing::info!(addresses = ?bound, "listen addresses changed; the next ad carries them");
            known = bound;
            changed.notify_one();
        }
    }
}

/// The addresses a node's ads carry: its bound ones, without loopback addresses unless it has
/// no other. A caller that dials a loopback address reaches a daemon of its own machine, and
/// a dial that meets the wrong peer fails with all its other addresses (a relayed one too).
pub(crate) fn ad_addresses(bound: &[Multiaddr]) -> Vec<String> {
    let loopback = |a: &Multiaddr| {
        let text = a.to_string();
        text.starts_with("/ip4/127.") || text.starts_with("/ip6/::1/")
    };
    let wide: Vec<&Multiaddr> = bound.iter().filter(|a| !loopback(a)).collect();
    if wide.is_empty() {
        bound.iter().map(ToString::to_string).collect()
    } else {
        wide.iter().map(ToString::to_string).collect()
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;

    #[test]
    fn ads_leave_loopback_out_unless_it_is_all_there_is() {
        let parse = |a: &str| a.parse::<Multiaddr>().unwrap();
        let lo = parse("/ip4/127.0.0.1/tcp/4001");
        let lan = parse("/ip4/192.168.77.2/tcp/4001");
        let relayed = parse("/ip4/10.250.0.5/tcp/4001/p2p-circuit");
        assert_eq!(
            ad_addresses(&[lo.clone(), lan.clone(), relayed.clone()]),
            [lan.to_string(), relayed.to_string()]
        );
        assert_eq!(ad_addresses(std::slice::from_ref(&lo)), [lo.to_string()]);
    }
}
