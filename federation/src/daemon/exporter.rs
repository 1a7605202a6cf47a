//! What every daemon's `/metrics` carries besides its own figures, as exporters do it: the
//! build (`planetmesh_build_info`), the process (`process_*` in base units: seconds, bytes),
//! the overlay's health (peers, connections, ads and revocation lists by outcome, peers
//! blocked, requests) and how long requests take to answer, per protocol (a histogram).
//!
//! [`super::Runtime`] owns one [`Exporter`]: [`super::Runtime::serve`] times every answer into
//! it, and [`super::Runtime::serve_http`] appends its families to the daemon's own `/metrics`
//! answer ([`append_standard`]), so no daemon can forget them and none repeats them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::OverlayHandle;
use crate::manual::COMMIT;
use crate::metrics::{Histogram, Scrape};

/// The largest daemon `/metrics` text the exporter appends to (a node with thousands of
/// slivers writes a few MiB).
const MAX_METRICS_BYTES: usize = 64 << 20;

/// A daemon's standard metrics: its overlay and its per-protocol answer times.
#[derive(Debug)]
pub struct Exporter {
    overlay: OverlayHandle,
    latencies: Mutex<BTreeMap<&'static str, Arc<Histogram>>>,
}

impl Exporter {
    /// An exporter over `overlay`.
    pub fn new(overlay: OverlayHandle) -> Exporter {
        Exporter {
            overlay,
            latencies: Mutex::default(),
        }
    }

    /// The histogram of answer times for `protocol` (made on first use).
    pub fn latency(&self, protocol: &'static str) -> Arc<Histogram> {
        let mut latencies = self
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(latencies.entry(protocol).or_default())
    }

    /// The standard families, read now.
    pub async fn scrape(&self) -> Scrape {
        let mut scrape = Scrape::new();
        scrape.info(
            "planetmesh_build_info",
            "The build of this daemon: version and commit (value 1).",
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("commit", COMMIT.unwrap_or("unknown").to_owned()),
            ],
        );
        process_families(&mut scrape);
        if let Ok(stats) = self.overlay.stats().await {
            overlay_families(&mut scrape, &stats);
        }
        let latencies: Vec<(String, _)> = self
            .latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(protocol, h)| ((*protocol).to_owned(), h.snapshot()))
            .collect();
        scrape.histogram_by(
            "planetmesh_request_duration_seconds",
            "Time from a request's admission to its answer, per protocol.",
            "protocol",
            latencies,
        );
        scrape
    }
}

fn process_families(scrape: &mut Scrape) {
    scrape
        .counter(
            "process_cpu_seconds_total",
            "CPU time (user and system) the process used, in seconds.",
            cpu_time().as_secs_f64(),
        )
        .gauge(
            "process_resident_memory_bytes",
            "Resident memory of the process, in bytes.",
            status_kib("VmRSS:") * 1024,
        )
        .gauge(
            "process_open_fds",
            "File descriptors the process holds open.",
            std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count),
        )
        .gauge(
            "process_threads",
            "Threads of the process.",
            status_kib("Threads:"),
        );
    if let Some(started) = start_time() {
        scrape.gauge(
            "process_start_time_seconds",
            "When the process started, in Unix seconds.",
            started,
        );
    }
}

fn overlay_families(scrape: &mut Scrape, stats: &crate::overlay::OverlayStats) {
    let by = |pairs: &[(&str, u64)]| -> Vec<(String, u64)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    };
    scrape
        .gauge(
            "planetmesh_overlay_peers",
            "Peers connected now.",
            stats.connected_peers,
        )
        .counter_by(
            "planetmesh_overlay_connections_total",
            "Connections by event: opened, closed, trimmed (closed above the peer limit).",
            "event",
            by(&[
                ("opened", stats.connections_opened),
                ("closed", stats.connections_closed),
                ("trimmed", stats.connections_trimmed),
            ]),
        )
        .counter_by(
            "planetmesh_overlay_ads_total",
            "Ads received by outcome: accepted (relayed), ignored (stale), rejected (the relaying peer lost gossip score).",
            "outcome",
            by(&[
                ("accepted", stats.ads_accepted),
                ("ignored", stats.ads_ignored),
                ("rejected", stats.ads_rejected),
            ]),
        )
        .counter(
            "planetmesh_overlay_peers_blocked_total",
            "Peers disconnected and blocked for misbehaving (their gossip score fell too low).",
            stats.peers_blocked,
        )
        .counter_by(
            "planetmesh_overlay_requests_total",
            "Requests by direction and outcome: sent, failed (sent, no answer), received.",
            "kind",
            by(&[
                ("sent", stats.requests_sent),
                ("failed", stats.requests_failed),
                ("received", stats.requests_received),
            ]),
        )
        .counter_by(
            "planetmesh_overlay_revocation_lists_total",
            "Revocation lists received by outcome: applied, ignored (held or older), rejected (forged).",
            "outcome",
            by(&[
                ("applied", stats.revocations_applied),
                ("ignored", stats.revocations_ignored),
                ("rejected", stats.revocations_rejected),
            ]),
        )
        .gauge(
            "planetmesh_overlay_revocation_lists_held",
            "Federations whose revocation list is held now.",
            stats.revocations_held,
        )
        .gauge(
            "planetmesh_overlay_nodes_tracked",
            "Nodes whose last ad sequence number is remembered (older ads are dropped).",
            stats.seqs_tracked,
        );
}

/// Axum middleware for a daemon's router: a successful `/metrics` answer gets the exporter's
/// families appended (the text format allows families one after another).
pub async fn append_standard(
    State(exporter): State<Arc<Exporter>>,
    request: Request,
    next: Next,
) -> Response {
    let metrics = request.uri().path() == "/metrics";
    let response = next.run(request).await;
    if !metrics || response.status() != StatusCode::OK {
        return response;
    }
    let (parts, body) = response.into_parts();
    let own = match axum::body::to_bytes(body, MAX_METRICS_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let detail = format!("the metrics cannot be read: {e}");
            tracing::error!("http: {detail}");
            return (StatusCode::INTERNAL_SERVER_ERROR, detail).into_response();
        }
    };
    let standard = match exporter.scrape().await.encode() {
        Ok(text) => text,
        Err(e) => {
            let detail = format!("the standard metrics cannot be encoded: {e}");
            tracing::error!("http: {detail}");
            return (StatusCode::INTERNAL_SERVER_ERROR, detail).into_response();
        }
    };
    let mut text = own.to_vec();
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    text.extend_from_slice(standard.as_bytes());
    Response::from_parts(parts, Body::from(text))
}

/// CPU time (user + system) this process has used, from `/proc` (zero where unavailable).
pub fn cpu_time() -> Duration {
    let fields = stat_fields();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are the 12th and 13th fields after the command name.
    ticks_to_duration(ticks(11) + ticks(12), clock_ticks_per_second())
}

/// When the process started, in Unix seconds (from its start in ticks after boot).
fn start_time() -> Option<f64> {
    let after_boot = stat_fields().get(19)?.parse::<u64>().ok()?;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let boot: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let since_boot = ticks_to_duration(after_boot, clock_ticks_per_second());
    Some(boot as f64 + since_boot.as_secs_f64())
}

/// The fields of `/proc/self/stat` after the command name (which may hold spaces).
fn stat_fields() -> Vec<String> {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        })
        .unwrap_or_default()
}

/// A number field of `/proc/self/status` (kB for memory, a count for `Threads:`).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// The kernel's clock ticks per second (`sysconf(_SC_CLK_TCK)`), 100 if it cannot say.
fn clock_ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz.unsigned_abs(),
        _ => 100,
    }
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    let per_second = per_second.max(1);
    let nanos = u128::from(ticks) * 1_000_000_000 / u128::from(per_second);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    #[test]
    fn clock_ticks_convert_at_the_kernel_rate() {
        assert!(clock_ticks_per_second() > 0);
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(3, 1000), Duration::from_millis(3));
        assert_eq!(ticks_to_duration(1, 300), Duration::from_nanos(3_333_333));
    }

    fn now() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    #[test]
    fn the_process_started_in_the_past_and_uses_memory() {
        let started = start_time().expect("a start time on Linux");
        assert!(started > 1.0e9 && started <= now() + 1.0, "{started}");
        let mut scrape = Scrape::new();
        process_families(&mut scrape);
        let text = scrape.encode().unwrap();
        for family in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_threads ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(family), "{family} missing: {text}");
        }
        assert!(
            !text.contains("process_resident_memory_bytes 0\n"),
            "{text}"
        );
    }

    #[test]
    fn histograms_count_each_answer_once_in_its_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(800));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let snap = h.snapshot();
        assert_eq!(snap.count, 3);
        assert!((snap.sum - 60.0208).abs() < 1e-6, "{snap:?}");
        assert_eq!(snap.buckets[0], (0.001, 1));
        assert_eq!(snap.buckets[4], (0.025, 1));
        assert_eq!(*snap.buckets.last().unwrap(), (f64::INFINITY, 1));
        let mut scrape = Scrape::new();
        scrape.histogram_by(
            "demo_duration_seconds",
            "Demo.",
            "protocol",
            vec![("node".to_owned(), snap)],
        );
        let text = scrape.encode().unwrap();
        assert!(
            text.contains("# TYPE demo_duration_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("demo_duration_seconds_bucket{le=\"0.025\",protocol=\"node\"} 2"),
            "cumulative buckets: {text}"
        );
        assert!(
            text.contains("demo_duration_seconds_bucket{le=\"+Inf\",protocol=\"node\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("demo_duration_seconds_count{protocol=\"node\"} 3"),
            "{text}"
        );
    }
}
