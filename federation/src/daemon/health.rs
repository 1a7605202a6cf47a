//! `/healthz` and `/readyz`: the probes every daemon's HTTP endpoint answers, as service
//! managers and orchestrators expect them.
//!
//! - `/healthz` (liveness): 200 `ok` while the daemon's overlay runs; 503 with how it ended
//!   once it has (the daemon is then on its way out; a supervisor should restart it).
//! - `/readyz` (readiness): 200 when the overlay runs, listens on at least one address and the
//!   daemon's own check ([`Readiness`], e.g. the node's first ad is built) passes; otherwise
//!   503 and the first reason. The body is one line either way, and says how many peers are
//!   connected, so `curl` tells an operator what is missing.
//!
//! [`super::Runtime::serve_http`] merges these routes into every daemon's router, so no
//! daemon can forget them.

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::OverlayHandle;

/// A daemon's own readiness check: `Err(reason)` while it cannot serve yet.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The daemon's readiness check, settable after its HTTP endpoint is up (none: the overlay's
/// state alone decides).
#[derive(Clone, Default)]
pub struct Readiness(Arc<RwLock<Option<ReadyCheck>>>);

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readiness")
    }
}

impl Readiness {
    /// Sets the daemon's check.
    pub fn set(&self, check: ReadyCheck) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(check);
    }

    fn check(&self) -> Result<(), String> {
        let check = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        check.map_or(Ok(()), |c| c())
    }
}

#[derive(Clone)]
struct Probes {
    overlay: OverlayHandle,
    readiness: Readiness,
}

/// The two probe routes over `overlay` and the daemon's `readiness`.
pub fn routes(overlay: OverlayHandle, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Probes { overlay, readiness })
}

async fn healthz(State(probes): State<Probes>) -> (StatusCode, String) {
    match probes.overlay.exit() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(exit) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not alive: the overlay ended ({exit}); restart the daemon\n"),
        ),
    }
}

async fn readyz(State(probes): State<Probes>) -> (StatusCode, String) {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
    };
    if let Some(exit) = probes.overlay.exit() {
        return not_ready(format!("the overlay ended ({exit})"));
    }
    let listening = match probes.overlay.listen_addrs().await {
        Ok(addrs) => addrs.len(),
        Err(e) => return not_ready(format!("the overlay does not answer: {e}")),
    };
    if listening == 0 {
        return not_ready("listening on no address yet".into());
    }
    let peers = match probes.overlay.stats().await {
        Ok(stats) => stats.connected_peers,
        Err(e) => return not_ready(format!("the overlay does not answer: {e}")),
    };
    if let Err(reason) = probes.readiness.check() {
        return not_ready(format!("{reason} ({peers} peers connected)"));
    }
    (
        StatusCode::OK,
        format!("ready: listening on {listening} addresses, {peers} peers connected\n"),
    )
}

#[cfg(test)]
mod tests {
    use capability_schema::SecretKey;

    use super::*;
    use crate::daemon::Runtime;
    use crate::testing::http_get as get;
    use crate::{Overlay, OverlayConfig, TrustStore};

    #[tokio::test]
    async fn metrics_carry_the_standard_families_after_the_daemons_own() {
        let config = OverlayConfig {
            listen: vec!["/memory/0".parse().unwrap()],
            ..OverlayConfig::default()
        };
        let trust = Arc::new(RwLock::new(TrustStore::new()));
        let overlay = Overlay::start(&SecretKey::generate(), config, trust)
            .await
            .unwrap();
        let mut runtime = Runtime::new(overlay.clone());
        let own = Router::new().route(
            "/metrics",
            axum::routing::get(|| async {
                let mut scrape = crate::metrics::Scrape::new();
                scrape.counter("demo_requests_total", "Requests answered.", 7u64);
                scrape
            }),
        );
        let addr = runtime
            .serve_http(Some("127.0.0.1:0".parse().unwrap()), own)
            .await
            .unwrap()
            .unwrap();
        let (code, text) = get(addr, "/metrics").await;
        assert_eq!(code, 200, "{text}");
        for family in [
            "demo_requests_total 7",
            "planetmesh_build_info{version=",
            "process_resident_memory_bytes ",
            "planetmesh_overlay_peers 0",
            "planetmesh_overlay_ads_total{outcome=\"accepted\"} 0",
        ] {
            assert!(text.contains(family), "{family} missing:\n{text}");
        }
        crate::testing::check_metrics_with_promtool(&text);
        overlay.shutdown().await;
        runtime.shutdown(std::time::Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn probes_follow_the_overlay_and_the_daemons_own_check() {
        let config = OverlayConfig {
            listen: vec!["/memory/0".parse().unwrap()],
            ..OverlayConfig::default()
        };
        let trust = Arc::new(RwLock::new(TrustStore::new()));
        let overlay = Overlay::start(&SecretKey::generate(), config, trust)
            .await
            .unwrap();
        let mut runtime = Runtime::new(overlay.clone());
        let addr = runtime
            .serve_http(Some("127.0.0.1:0".parse().unwrap()), Router::new())
            .await
            .unwrap()
            .unwrap();

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("0 peers connected"), "{body}");

        runtime
            .readiness()
            .set(Arc::new(|| Err("the first ad is not built yet".into())));
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("the first ad is not built yet"), "{body}");

        overlay.shutdown().await;
        let _ = overlay.closed().await;
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("restart the daemon"), "{body}");
        runtime.shutdown(std::time::Duration::from_secs(5)).await;
    }
}
