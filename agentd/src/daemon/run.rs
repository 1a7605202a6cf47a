//! Wiring the agent daemon: config → key, trust (anchors and peering), policy, ledger →
//! overlay (ads feed the inventory), agent-protocol server, HTTP → graceful shutdown.
//!
//! Requests are admitted fairly (`federation::daemon::serve`: one principal holds at most a
//! quarter of the [`MAX_IN_FLIGHT`] places) and run on the blocking pool (minting and the
//! durable ledger write are synchronous). Validated ads from the overlay enter the inventory as
//! they arrive; expired ones leave it when queried.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use capability_schema::protocol::{AgentRequest, AgentResponse};
use capability_schema::{PublicKey, Role, SecretKey, Signed, codec};
use federation::daemon::{DRAIN_DEADLINE, Fairness};
use federation::overlay::AgentProtocol;
use federation::{Overlay, OverlayConfig, OverlayHandle, unix_now};
use tokio::sync::{broadcast, watch};

use super::config::AgentConfig;
use super::http;
use crate::agent::{Agent, AgentParts, Pricing};
use crate::ledger::TicketLedger;
use crate::policy::Policy;

/// Most requests served at once.
pub const MAX_IN_FLIGHT: usize = 64;

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
) -> anyhow::Result<(RunningAgent, impl Future<Output = ()>)> {
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    let key = SecretKey::load(&config.key_file)
        .context("loading the agent key (run `agentd init` first?)")?;
    federation::daemon::load_membership(&config.membership, &key, Role::Agent, &config.federation)?;
    let mut trust = federation::daemon::trust_store(&config.trust)?;
    for path in &config.peering {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading peering agreement {}", path.display()))?;
        let signed: Signed<capability_schema::PeeringAgreement> = codec::decode(&bytes)
            .with_context(|| format!("{} is not a peering agreement", path.display()))?;
        trust
            .add_agreement(&signed)
            .map_err(|e| anyhow::anyhow!("peering agreement {}: {e}", path.display()))?;
    }
    let policy = Policy::new(config.load_policy()?);
    let ledger = TicketLedger::open(&config.state_dir.join("tickets.redb"))?;
    let agent = Arc::new(Agent::new(AgentParts {
        key: key.clone(),
        federation: config.federation.clone(),
        policy,
        pricing: Pricing {
            base: config.prices,
            surge_percent: config.surge_percent,
        },
        oversubscription_permille: (config.oversubscription * 1000.0).round() as u64,
        ledger,
    }));
    let overlay_config = OverlayConfig {
        listen: config
            .listen
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()
            .context("listen address")?,
        bootstrap: config
            .bootstrap
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()
            .context("bootstrap address")?,
        federations: config.follow.clone(),
        mdns: config.mdns,
        ..OverlayConfig::default()
    };
    let overlay = Overlay::start(
        &key,
        overlay_config,
        Arc::new(std::sync::RwLock::new(trust)),
    )
    .await
    .context("starting the overlay")?;
    let state = Arc::new(AgentState {
        agent: Arc::clone(&agent),
        tickets_minted: 0.into(),
        refused: 0.into(),
        ads_taken: 0.into(),
    });
    let (stop_tx, stop) = watch::channel(false);

    // Ads into the inventory.
    let ads = {
        let (state, mut stop, mut feed) = (Arc::clone(&state), stop.clone(), overlay.ads());
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    event = feed.recv() => event,
                };
                match event {
                    Ok(event) => {
                        let taken = state
                            .agent
                            .with_inventory(|inv| inv.offer(event.signed, event.ad, unix_now()));
                        if taken.is_ok() {
                            state.ads_taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "ad feed lagged; nodes re-announce")
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        })
    };
    // HTTP.
    let (http_addr, http_task) = if config.http.is_empty() {
        (None, None)
    } else {
        let listener = tokio::net::TcpListener::bind(&config.http)
            .await
            .with_context(|| format!("binding http {}", config.http))?;
        let addr = listener.local_addr()?;
        let (state, mut stop) = (Arc::clone(&state), stop.clone());
        let task = tokio::spawn(async move {
            let serve =
                axum::serve(listener, http::router(state)).with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "http server");
            }
        });
        (Some(addr), Some(task))
    };
    // Protocol server.
    let requests = overlay.serve::<AgentProtocol>().await?;
    let server = {
        let (state, trust) = (Arc::clone(&state), Arc::clone(overlay.trust()));
        let handler = move |peer: PublicKey, request: AgentRequest| {
            let (state, trust) = (Arc::clone(&state), Arc::clone(&trust));
            async move {
                let handler = Arc::clone(&state);
                let reply = tokio::task::spawn_blocking(move || {
                    let trust = trust
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        };
        tokio::spawn(federation::daemon::serve_protocol(
            requests,
            Fairness::with_limit(MAX_IN_FLIGHT),
            1,
            |_| 0,
            handler,
            stop.clone(),
            DRAIN_DEADLINE,
        ))
    };
    let running = RunningAgent {
        overlay: overlay.clone(),
        http: http_addr,
        state,
    };
    let shutdown = async move {
        let _ = stop_tx.send(true);
        let _ = server.await;
        if let Some(task) = http_task {
            let _ = task.await;
        }
        let _ = ads.await;
        overlay.shutdown().await;
    };
    Ok((running, shutdown))
}

/// For tests and tools: the request type this daemon serves.
pub type Request = AgentRequest;
