//! Wiring the agent daemon: config → key, trust (anchors and peering), policy, ledger →
//! overlay (ads feed the inventory), agent-protocol server, HTTP → graceful shutdown.
//!
//! It runs on the daemon skeleton (`federation::daemon::Runtime`): requests are admitted fairly
//! (one principal holds at most a quarter of `max_in_flight` places) and run on the blocking
//! pool (minting and the durable ledger write are synchronous). Validated ads from the overlay enter the inventory as
//! they arrive; expired ones leave it when queried.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use capability_schema::protocol::{AgentRequest, AgentResponse};
use capability_schema::{PublicKey, Role, Signed, codec};
use federation::daemon::runtime::{each_ad, load_key};
use federation::daemon::{DaemonError, Fairness, Runtime, SHUTDOWN_DEADLINE};
use federation::overlay::AgentProtocol;
use federation::{Overlay, OverlayConfig, OverlayHandle, unix_now};
use tokio::sync::{broadcast, watch};

use super::config::{AgentConfig, AgentKind};
use super::http;
use crate::agent::{Agent, AgentParts, Pricing};
use crate::ledger::TicketLedger;
use crate::policy::Policy;

/// What the HTTP endpoint and tests see of a running agent.
#[derive(Debug)]
pub struct AgentState {
    /// The agent.
    pub agent: Arc<Agent>,
    /// Tickets minted since start.
    pub tickets_minted: AtomicU64,
    /// Requests refused since start.
    pub refused: AtomicU64,
    /// Ads taken into the inventory since start.
    pub ads_taken: AtomicU64,
}

/// A started agent.
#[derive(Debug)]
pub struct RunningAgent {
    /// The overlay.
    pub overlay: OverlayHandle,
    /// The HTTP endpoint, if on.
    pub http: Option<SocketAddr>,
    /// Shared state.
    pub state: Arc<AgentState>,
}

/// Starts the agent; returns once it is serving, with the future that shuts it down.
pub async fn start(
    config: AgentConfig,
) -> Result<(RunningAgent, impl Future<Output = ()>), DaemonError> {
    let common = &config.common;
    std::fs::create_dir_all(&config.state_dir).map_err(|e| DaemonError::State {
        path: config.state_dir.clone(),
        detail: e.to_string(),
    })?;
    let key = load_key::<AgentKind>(&common.key_file)?;
    let trust_error = |e: anyhow::Error| DaemonError::Trust(format!("{e:#}"));
    let (_, own_cert) = federation::daemon::load_membership(
        &common.membership,
        &key,
        Role::Agent,
        &common.federation,
    )
    .map_err(trust_error)?;
    let mut trust = federation::daemon::trust_store(&common.trust).map_err(trust_error)?;
    for path in &config.peering {
        let agreement = std::fs::read(path)
            .map_err(|e| format!("reading peering agreement {}: {e}", path.display()))
            .and_then(|bytes| {
                codec::decode::<Signed<capability_schema::PeeringAgreement>>(&bytes)
                    .map_err(|e| format!("{} is not a peering agreement: {e}", path.display()))
            })
            .and_then(|signed| {
                trust
                    .add_agreement(&signed)
                    .map_err(|e| format!("peering agreement {}: {e}", path.display()))
            });
        agreement.map_err(DaemonError::Trust)?;
    }
    let policy = Policy::new(config.load_policy()?);
    let ledger_path = config.state_dir.join("tickets.redb");
    let ledger = TicketLedger::open(&ledger_path).map_err(|e| DaemonError::State {
        path: ledger_path,
        detail: e.to_string(),
    })?;
    let agent = Arc::new(
        Agent::new(AgentParts {
            key: key.clone(),
            federation: common.federation.clone(),
            policy,
            pricing: Pricing {
                base: config.prices,
                surge_percent: config.surge_percent,
            },
            oversubscription_permille: (config.oversubscription * 1000.0).round() as u64,
            ledger,
        })
        .with_asks_since(unix_now())
        .with_authority(own_cert.authority),
    );
    let overlay_config = OverlayConfig {
        listen: common.listen.clone(),
        bootstrap: common.bootstrap.clone(),
        federations: federation::daemon::follow_own(&config.follow, &own_cert),
        mdns: common.mdns,
        relay: common.relay.clone(),
        nat: common.nat.clone(),
        revocations: federation::daemon::read_revocations(&common.revocations)
            .map_err(trust_error)?,
        ..OverlayConfig::default()
    };
    let overlay = Overlay::start(
        &key,
        overlay_config,
        Arc::new(std::sync::RwLock::new(trust)),
    )
    .await?;
    let state = Arc::new(AgentState {
        agent: Arc::clone(&agent),
        tickets_minted: 0.into(),
        refused: 0.into(),
        ads_taken: 0.into(),
    });
    let mut runtime = Runtime::new(overlay.clone());
    runtime.spawn(
        "inventory",
        take_ads(
            Arc::clone(&state),
            overlay.trust().clone(),
            overlay.ads(),
            runtime.stop_signal(),
        ),
    );
    agent.with_inventory(|inv| inv.set_dead_after(config.dead_after()));
    runtime.spawn(
        "heartbeats",
        take_heartbeats(
            Arc::clone(&agent),
            overlay.heartbeats(),
            runtime.stop_signal(),
        ),
    );
    runtime.spawn(
        "revocations",
        crate::revocation::watch(
            Arc::clone(&agent),
            overlay.trust().clone(),
            overlay.revocations(),
            runtime.stop_signal(),
        ),
    );
    let http = runtime
        .serve_http(common.http, http::router(Arc::clone(&state)))
        .await?;
    let handler = {
        let (state, trust) = (Arc::clone(&state), Arc::clone(overlay.trust()));
        move |peer: PublicKey, request: AgentRequest| {
            let (state, trust) = (Arc::clone(&state), Arc::clone(&trust));
            async move { answer(&state, trust, peer, request).await }
        }
    };
    runtime
        .serve::<AgentProtocol, _, _>(
            Fairness::with_limit(common.max_in_flight),
            1,
            |_| 0,
            handler,
        )
        .await?;
    let running = RunningAgent {
        overlay,
        http,
        state,
    };
    Ok((running, runtime.shutdown(SHUTDOWN_DEADLINE)))
}

/// Validated ads from the overlay into the inventory, until the daemon stops.
async fn take_ads(
    state: Arc<AgentState>,
    trust: federation::SharedTrust,
    feed: broadcast::Receiver<federation::overlay::AdEvent>,
    stop: watch::Receiver<bool>,
) {
    let agent = state.agent.public();
    each_ad(feed, stop, |event| {
        // Ads of revoked nodes are refused by the overlay; a revoked delegation is ours to see.
        if !crate::revocation::admissible(&trust, &agent, &event.ad) {
            return;
        }
        let taken = state
            .agent
            .with_inventory(|inv| inv.offer(event.signed, event.ad, unix_now()));
        if taken.is_ok() {
            state.ads_taken.fetch_add(1, Ordering::Relaxed);
        }
    })
    .await;
}

/// Heartbeats from the overlay into the inventory's liveness, until the daemon stops.
async fn take_heartbeats(
    agent: Arc<Agent>,
    mut feed: broadcast::Receiver<federation::overlay::HeartbeatEvent>,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            event = feed.recv() => event,
        };
        match event {
            Ok(event) => {
                let now = std::time::Instant::now();
                agent.with_inventory(|inv| inv.heartbeat(&event.node, now));
            }
            // The next beats count; a node is judged silent only after dead_after.
            Err(RecvError::Lagged(n)) => tracing::warn!(lost = n, "heartbeat feed lagged"),
            Err(RecvError::Closed) => break,
        }
    }
}

/// One agent-protocol request, on the blocking pool (minting writes the durable ledger).
async fn answer(
    state: &Arc<AgentState>,
    trust: federation::SharedTrust,
    peer: PublicKey,
    request: AgentRequest,
) -> capability_schema::protocol::Reply<AgentResponse> {
    let handler = Arc::clone(state);
    let reply = tokio::task::spawn_blocking(move || {
        let trust = trust
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::revocation::check_caller(&trust, &peer, &request)?;
        handler.agent.handle(&trust, &peer, request, unix_now())
    })
    .await
    .unwrap_or_else(|e| {
        Err(capability_schema::Rejection::Internal {
            detail: format!("handler failed: {e}"),
        }
        .into())
    });
    match &reply {
        Ok(AgentResponse::Tickets { issued, .. }) => {
            state
                .tickets_minted
                .fetch_add(issued.len() as u64, Ordering::Relaxed);
        }
        Err(_) => {
            state.refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {}
    }
    reply
}

/// For tests and tools: the request type this daemon serves.
pub type Request = AgentRequest;
