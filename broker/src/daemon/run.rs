//! Wiring the broker daemon: config → key, trust → overlay (configured agents dialed, agents
//! learned from ads), broker-protocol server, HTTP → graceful shutdown.
//!
//! Data flow:
//! - the agents asked are those of the config plus, with `discover_agents`, every agent a
//!   validated ad delegates to (reached through Kademlia, as ads carry no agent address);
//! - each broker request runs in its own task, admitted fairly (`federation::daemon::serve`:
//!   `max_in_flight` places, a quarter of them at most for one principal): `FindSlice`
//!   gathers and plans, `AcquireSlice` runs [`Acquirer::acquire_signed`] for the caller,
//!   forwarding the principal's signed ask (which must name this broker, and is refused here
//!   already when missing, foreign or expired: `capability_schema::ask`); a failed
//!   acquisition is an error reply, or [`BrokerAnswer::NotAcquired`] with the plan and the
//!   report for callers that ask for it (`crate::wire`);
//! - a broker acquires only for the caller itself (the noise handshake authenticates it), so
//!   nobody can spend another principal's quota through it. Tickets are bound to the principal
//!   by the agents, which mint only within the ask; the broker only relays them.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use capability_schema::{AskGrant, ErrorReply, PublicKey, Rejection, Role, SliceRequest};
use federation::daemon::runtime::{each_ad, load_key};
use federation::daemon::{Fairness, Runtime, SHUTDOWN_DEADLINE};
use federation::overlay::Multiaddr;
use federation::{Overlay, OverlayConfig, OverlayHandle, unix_now};
use tokio::sync::{broadcast, watch};

use super::DaemonError;
use super::config::{BrokerConfig, BrokerKind};
use super::http;
use crate::acquire::{Acquirer, OverlayAgents};
use crate::wire::{BrokerAnswer, BrokerAnswerProtocol, BrokerCall, failure_answer};

/// Where the broker learned of an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownAgent {
    /// Its federation, if known.
    pub federation: Option<String>,
    /// Listed in the config (else learned from an ad).
    pub configured: bool,
}

/// What the HTTP endpoint and tests see of a running broker.
#[derive(Debug)]
pub struct BrokerState {
    /// The broker's key.
    pub key: PublicKey,
    /// The agents asked.
    pub agents: RwLock<BTreeMap<PublicKey, KnownAgent>>,
    /// `FindSlice` requests answered.
    pub finds: AtomicU64,
    /// `AcquireSlice` requests that returned tickets.
    pub acquired: AtomicU64,
    /// `AcquireSlice` requests that returned nothing.
    pub failed: AtomicU64,
    /// Tickets handed to principals.
    pub tickets: AtomicU64,
    /// Requests refused before planning (malformed, not the caller's own).
    pub refused: AtomicU64,
}

impl BrokerState {
    /// The agents to ask now.
    pub fn agent_keys(&self) -> Vec<PublicKey> {
        self.agents
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }
}

/// A started broker.
#[derive(Debug)]
pub struct RunningBroker {
    /// The overlay.
    pub overlay: OverlayHandle,
    /// The HTTP endpoint, if on.
    pub http: Option<SocketAddr>,
    /// Shared state.
    pub state: Arc<BrokerState>,
}

/// Starts the broker; returns once it is serving, with the future that shuts it down.
pub async fn start(
    config: BrokerConfig,
) -> Result<(RunningBroker, impl Future<Output = ()>), DaemonError> {
    let common = &config.common;
    let key = load_key::<BrokerKind>(&common.key_file)?;
    let mut own_cert = None;
    if common.membership.exists() {
        let (_, cert) = federation::daemon::load_membership(
            &common.membership,
            &key,
            Role::Broker,
            &common.federation,
        )
        .map_err(|e| DaemonError::Trust(e.to_string()))?;
        own_cert = Some(cert);
    } else {
        tracing::info!(path = %common.membership.display(), "no membership certificate; serving without one");
    }
    let trust = federation::daemon::trust_store(&common.trust)
        .map_err(|e| DaemonError::Trust(e.to_string()))?;
    // `follow` names a federation as `name` (one trusted authority carries it) or
    // `name@KEY`; an unknown one is skipped with a warning, an ambiguous one refused.
    let mut follow = Vec::new();
    let wanted = match &own_cert {
        Some(cert) => federation::daemon::follow_own(&config.follow, cert),
        None => config.follow.clone(),
    };
    for f in &wanted {
        match trust.resolve(f) {
            Ok(_) => follow.push(f.clone()),
            Err(federation::TrustError::UnknownFederation(_)) => {
                tracing::warn!(federation = %f, "not following: no [[trust]] entry for it");
            }
            Err(e) => return Err(DaemonError::Trust(format!("follow = [{f:?}]: {e}"))),
        }
    }
    let overlay_config = OverlayConfig {
        listen: common.listen.clone(),
        bootstrap: common.bootstrap.clone(),
        federations: follow,
        mdns: common.mdns,
        relay: common.relay.clone(),
        nat: common.nat.clone(),
        revocations: federation::daemon::read_revocations(&common.revocations)
            .map_err(|e| DaemonError::Trust(format!("{e:#}")))?,
        ..OverlayConfig::default()
    };
    let overlay = Overlay::start(&key, overlay_config, Arc::new(RwLock::new(trust))).await?;
    let mut runtime = Runtime::new(overlay.clone());
    let agents = configured_agents(&config, &mut runtime).await?;
    let state = Arc::new(BrokerState {
        key: key.public(),
        agents: RwLock::new(agents),
        finds: 0.into(),
        acquired: 0.into(),
        failed: 0.into(),
        tickets: 0.into(),
        refused: 0.into(),
    });
    let acquirer = Arc::new(
        Acquirer::new(
            OverlayAgents::new(overlay.clone(), config.acquire_settings().call_timeout),
            Arc::clone(overlay.trust()),
            config.acquire_settings(),
        )
        .with_deadline(config.acquire_deadline()),
    );
    runtime.spawn(
        "revocations",
        super::revocation::watch(
            Arc::clone(&state),
            overlay.trust().clone(),
            overlay.revocations(),
            runtime.stop_signal(),
        ),
    );
    runtime.spawn(
        "announce",
        super::announce::announce(overlay.clone(), runtime.stop_signal()),
    );
    if config.discover_agents {
        runtime.spawn(
            "agent discovery",
            learn_agents(
                Arc::clone(&state),
                overlay.trust().clone(),
                overlay.ads(),
                runtime.stop_signal(),
            ),
        );
    }
    let http = runtime
        .serve_http(common.http, http::router(Arc::clone(&state)))
        .await?;
    let handler = {
        let state = Arc::clone(&state);
        move |peer: PublicKey, call: BrokerCall| {
            let (state, acquirer) = (Arc::clone(&state), Arc::clone(&acquirer));
            async move { serve_one(&state, &acquirer, peer, call).await }
        }
    };
    runtime
        .serve::<BrokerAnswerProtocol, _, _>(
            Fairness::with_limit(common.max_in_flight),
            1,
            |_| 0,
            handler,
        )
        .await?;
    let running = RunningBroker {
        overlay,
        http,
        state,
    };
    Ok((running, runtime.shutdown(SHUTDOWN_DEADLINE)))
}

/// The agents of the config, their addresses given to the overlay and dialed early (a failure
/// here is retried by each request).
async fn configured_agents(
    config: &BrokerConfig,
    runtime: &mut Runtime,
) -> Result<BTreeMap<PublicKey, KnownAgent>, DaemonError> {
    let mut agents = BTreeMap::new();
    for entry in &config.agents {
        agents.insert(
            entry.key,
            KnownAgent {
                federation: entry.federation.clone(),
                configured: true,
            },
        );
        let Some(address) = &entry.address else {
            continue;
        };
        // Checked when the config was loaded.
        let Ok(addr) = address.parse::<Multiaddr>() else {
            continue;
        };
        let overlay = runtime.overlay().clone();
        overlay
            .add_addresses(&entry.key, vec![addr.clone()])
            .await?;
        runtime.spawn("dial agent", async move {
            if let Err(e) = overlay.dial(addr).await {
                tracing::warn!(error = %e, "agent not reachable yet");
            }
        });
    }
    Ok(agents)
}

/// Agents named in the delegations of validated ads, until the daemon stops.
async fn learn_agents(
    state: Arc<BrokerState>,
    trust: federation::SharedTrust,
    feed: broadcast::Receiver<federation::overlay::AdEvent>,
    stop: watch::Receiver<bool>,
) {
    each_ad(feed, stop, |event| {
        let mut agents = state
            .agents
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for share in &event.ad.shares {
            if !agents.contains_key(&share.agent)
                && super::revocation::revoked_agent(&trust, &share.agent).is_some()
            {
                continue;
            }
            agents.entry(share.agent).or_insert_with(|| {
                tracing::info!(agent = %share.agent, federation = %event.ad.federation, "agent learned from an ad");
                KnownAgent {
                    federation: Some(event.ad.federation.clone()),
                    configured: false,
                }
            });
        }
    })
    .await;
}

/// Checks what a request must hold before any agent is asked: a name, a duration, and a shape
/// some offers could satisfy ([`crate::planner::check_shape`]: slivers asked, `min_sites` at
/// most the sliver count, nodes listed once and not excluded).
pub fn check_request(request: &SliceRequest) -> Result<(), Rejection> {
    let malformed = |detail: &str| {
        Err(Rejection::Malformed {
            detail: detail.to_owned(),
        })
    };
    if request.name.is_empty() {
        return malformed("the slice needs a name");
    }
    if request.duration_secs == 0 {
        return malformed("the slice needs a duration");
    }
    crate::planner::check_shape(request).map_err(|e| Rejection::Malformed {
        detail: e.to_string(),
    })
}

async fn serve_one(
    state: &BrokerState,
    acquirer: &Acquirer<OverlayAgents>,
    caller: PublicKey,
    call: BrokerCall,
) -> Result<BrokerAnswer, ErrorReply> {
    let refuse = |r: Rejection| {
        state.refused.fetch_add(1, Ordering::Relaxed);
        Err(ErrorReply::from(r))
    };
    let agents = state.agent_keys();
    match call {
        BrokerCall::FindSlice(ask) => {
            let (request, _) = ask.into_parts();
            if let Err(r) = check_request(&request) {
                return refuse(r);
            }
            let plan = acquirer.find(&agents, &request).await;
            state.finds.fetch_add(1, Ordering::Relaxed);
            Ok(BrokerAnswer::Plan(plan))
        }
        BrokerCall::AcquireSlice(ask) => {
            let detailed = ask.detailed_failure;
            let signed_ask = ask.ask.clone();
            let (request, cert) = ask.into_parts();
            if let Err(r) = check_request(&request) {
                return refuse(r);
            }
            if request.principal != caller {
                return refuse(Rejection::Policy {
                    rule: "principal".into(),
                    detail: format!(
                        "this broker acquires tickets only for the caller itself; {} asked for {}",
                        caller.short(),
                        request.principal.short()
                    ),
                });
            }
            // The agents check the ask too (and what the broker asks of them against it);
            // checked here, a missing, foreign or expired ask is one clear refusal.
            if let Err(e) = AskGrant::admit(
                signed_ask.as_ref(),
                &request.principal,
                &state.key,
                unix_now(),
            ) {
                return refuse(Rejection::Policy {
                    rule: e.rule().into(),
                    detail: e.to_string(),
                });
            }
            match acquirer
                .acquire_signed(&agents, &request, cert.as_ref(), signed_ask.as_ref())
                .await
            {
                Ok(slice) => {
                    state.acquired.fetch_add(1, Ordering::Relaxed);
                    state
                        .tickets
                        .fetch_add(slice.tickets.len() as u64, Ordering::Relaxed);
                    tracing::info!(slice = %request.name, principal = %caller.short(), tickets = slice.tickets.len(), missing = slice.missing, "acquired");
                    Ok(BrokerAnswer::Acquired(slice))
                }
                Err(failure) => {
                    state.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(slice = %request.name, principal = %caller.short(), reason = %failure.reply.reason.code(), "acquisition failed");
                    failure_answer(failure, detailed)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;
    use capability_schema::slice::{SliceConstraints, SliceKind, SliverTarget};
    use capability_schema::{AcquireMode, Resources};

    use super::*;

    fn request(count: u32, min_sites: u32) -> SliceRequest {
        SliceRequest {
            name: "site_s".into(),
            principal: test_key(1).public(),
            principal_federation: "plc".into(),
            kind: SliceKind::Regular,
            per_sliver: Resources::ZERO,
            target: SliverTarget::Count(count),
            constraints: SliceConstraints {
                min_sites,
                ..SliceConstraints::default()
            },
            duration_secs: 60,
            mode: AcquireMode::AllOrNothing,
            net: Default::default(),
        }
    }

    fn detail(request: &SliceRequest) -> String {
        match check_request(request) {
            Err(Rejection::Malformed { detail }) => detail,
            other => panic!("not malformed: {other:?}"),
        }
    }

    #[test]
    fn impossible_shapes_are_refused_as_malformed_before_planning() {
        assert_eq!(check_request(&request(3, 3)), Ok(()));
        let text = detail(&request(3, 5));
        assert!(
            text.contains("min_sites 5 is more than the 3 slivers"),
            "{text}"
        );
        assert!(text.contains("lower min_sites to at most 3"), "{text}");
        assert!(detail(&request(0, 0)).contains("asks for no slivers"));
        let mut twice = request(0, 0);
        twice.target = SliverTarget::Nodes(vec![test_key(2).public(), test_key(2).public()]);
        assert!(detail(&twice).contains("list each node once"));
        let mut unnamed = request(1, 0);
        unnamed.name.clear();
        assert!(detail(&unnamed).contains("needs a name"));
        let mut instant = request(1, 0);
        instant.duration_secs = 0;
        assert!(detail(&instant).contains("needs a duration"));
    }
}
