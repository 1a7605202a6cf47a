//! Wiring the node manager: config → key, trust, capacity, ledger, slivers → overlay, protocol
//! server, ad heartbeat, reaper, HTTP → graceful shutdown.
//!
//! Data flow:
//! - requests arrive on the overlay's node-protocol stream and are admitted fairly
//!   (`federation::daemon::serve`): lease operations and commands run in slivers are separate
//!   lanes of [`MAX_IN_FLIGHT`] places each, of which one principal may hold a quarter; each
//!   runs on the blocking pool (sliver creation is synchronous) and its answer goes back on
//!   its responder;
//! - any change (redeem, renew, release, reap, reload) pokes the ad task, which signs and
//!   publishes a new ad at once; otherwise it publishes on the heartbeat. Each ad carries
//!   what every live sliver used (CPU time, memory, egress bytes), sampled then; before each
//!   ad the task re-signs the delegations that have less than a third of their life left
//!   ([`super::delegated`]);
//! - SIGHUP (or `POST /reload`) re-reads node.toml and applies its delegations, capacity and
//!   new trust entries without a restart ([`super::reload`]);
//! - the disk watchdog measures every sliver's writable layer each `disk_check_secs` and
//!   freezes the ones over their grant, thawing them once back under (`node::sliver`);
//! - tickets whose last lease here went early (released, reaped, lost) are reported to their
//!   agents every few seconds (`release_report`), so the agents' shares free up at once;
//! - it runs on the daemon skeleton (`federation::daemon::Runtime`): on shutdown the server
//!   stops taking requests, waits for those in flight (within the drain deadline), publishes
//!   nothing more and closes the overlay. Slivers keep running: they are leased, not owned by
//!   the process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use capability_schema::protocol::NodeRequest;
use capability_schema::{PublicKey, ResourceAd, Role, SecretKey, Signed};
use federation::daemon::runtime::load_key;
use federation::daemon::{DaemonError, Fairness, Runtime, SHUTDOWN_DEADLINE};
use federation::{Overlay, OverlayConfig, OverlayHandle, unix_now};
use tokio::sync::Notify;

use super::backend::backend_of;
pub use super::backend::sliver_config;
use super::config::{NodeKind, NodeManagerConfig};
use super::http;
use super::loops::{ad_loop, reap, watch_disks};
use super::monitor::{AdTemplate, SliverMonitor};
use super::reload::{Reloader, on_hangup};
use super::service::NodeService;
use crate::admission::Capacity;
use crate::ledger::Ledger;
use crate::sliver::UsageSample;

/// Most requests served at once in each lane (lease operations, commands in slivers) by
/// default (`max_in_flight`); one principal may hold a quarter of a lane
/// ([`Fairness::with_limit`]).
pub const MAX_IN_FLIGHT: usize = <NodeKind as federation::daemon::DaemonKind>::MAX_IN_FLIGHT;

/// The lane of a request: lease operations (0) never wait behind commands run in slivers (1).
fn request_lane(request: &NodeRequest) -> usize {
    match request {
        NodeRequest::Redeem { .. }
        | NodeRequest::Renew { .. }
        | NodeRequest::Release { .. }
        | NodeRequest::Status => 0,
        _ => 1,
    }
}

/// What the HTTP endpoint and tests see of a running node.
#[derive(Debug)]
pub struct NodeState {
    /// The service.
    pub service: Arc<NodeService>,
    /// The latest ad.
    pub ad: RwLock<Option<Signed<ResourceAd>>>,
    /// Requests served, by outcome.
    pub served_ok: std::sync::atomic::AtomicU64,
    /// Requests refused.
    pub served_err: std::sync::atomic::AtomicU64,
    /// Ads published.
    pub ads_published: std::sync::atomic::AtomicU64,
    /// The sliver engine's monitor (`None` under `isolation = "memory"`).
    pub monitor: Option<Arc<dyn SliverMonitor>>,
    /// What each live sliver used at the last sample (with the disk watchdog's last verdict).
    pub usage: RwLock<Vec<UsageSample>>,
    /// Applies an edited node.toml (SIGHUP, `POST /reload`); `None`: not reloadable.
    pub reloader: Option<Arc<Reloader>>,
}

/// A started node: its overlay handle and bound addresses, for tests and the testnet.
#[derive(Debug)]
pub struct RunningNode {
    /// The overlay.
    pub overlay: OverlayHandle,
    /// The HTTP endpoint, if on.
    pub http: Option<SocketAddr>,
    /// Shared state.
    pub state: Arc<NodeState>,
}

/// Decommissions a node that is not running: destroys every sliver (and the node's shaping
/// device), removes every lease. For `nodemgr wipe` and testnet teardown.
pub async fn wipe(config: NodeManagerConfig) -> Result<usize, DaemonError> {
    let key = load_key::<NodeKind>(&config.common.key_file)?;
    let ledger = open_ledger(&config)?;
    // Wiping makes no sliver: none is told a site.
    let backend = backend_of(&config, "").await?.0;
    let capacity = Capacity {
        node: key.public(),
        total: Default::default(),
        shares: Default::default(),
    };
    let service = NodeService::new(
        key,
        config.common.federation.clone(),
        capacity,
        ledger,
        backend,
    );
    tokio::task::spawn_blocking(move || service.decommission())
        .await
        .map_err(|e| host_error(format!("wiping: {e}")))?
        .map_err(|e| host_error(format!("wiping: {e}")))
}

fn host_error(detail: impl Into<String>) -> DaemonError {
    DaemonError::Host(detail.into())
}

fn open_ledger(config: &NodeManagerConfig) -> Result<Ledger, DaemonError> {
    let path = config.state_dir.join("ledger.redb");
    Ledger::open(&path).map_err(|e| DaemonError::State {
        path,
        detail: format!("{e} (is another nodemgr running on this state dir?)"),
    })
}

/// Starts the node manager; returns once it is serving, with the future that shuts it down.
///
/// The phases: `Identity::load` (key, membership, trust), the delegations signed now
/// ([`super::reload::delegations_of`]: what the node offers and delegates), `open_service`
/// (ledger, slivers, reconciliation), the overlay, then the node's loops (ads, disk watchdog,
/// reaper, release reports, reload on SIGHUP), HTTP and the protocol on the daemon skeleton.
pub async fn start(
    config: NodeManagerConfig,
) -> Result<(RunningNode, impl Future<Output = ()>), DaemonError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|e| DaemonError::State {
        path: config.state_dir.clone(),
        detail: e.to_string(),
    })?;
    let identity = Identity::load(&config)?;
    let delegated = super::reload::delegations_of(&config, &identity.key, None, unix_now());
    let delegations = delegated.signed();
    let (service, monitor) = open_service(&config, &identity, delegated.capacity().clone()).await?;
    service.set_delegations(delegated);
    let common = &config.common;
    let overlay_config = OverlayConfig {
        listen: common.listen.clone(),
        bootstrap: common.bootstrap.clone(),
        // Its own federation by key: other trusted federations may carry the same name.
        federations: vec![format!(
            "{}@{}",
            identity.cert.federation, identity.cert.authority
        )],
        mdns: common.mdns,
        relay: common.relay.clone(),
        nat: common.nat.clone(),
        revocations: federation::daemon::read_revocations(&common.revocations)
            .map_err(|e| DaemonError::Trust(format!("{e:#}")))?,
        ..OverlayConfig::default()
    };
    service.revocation().set_delegations(
        delegations
            .iter()
            .filter_map(|d| d.verify().ok())
            .map(|d| (d.agent, d.issued_at)),
    );
    let overlay = Overlay::start(
        &identity.key,
        overlay_config,
        Arc::new(RwLock::new(identity.trust)),
    )
    .await?;
    let addresses = if config.announce.is_empty() {
        super::loops::ad_addresses(&overlay.listen_addrs().await?)
    } else {
        config.announce.clone()
    };
    let template = AdTemplate {
        federation: common.federation.clone(),
        membership: identity.membership,
        cert: identity.cert,
        delegations,
        addresses,
        follow_listen: config.announce.is_empty(),
        ttl_secs: config.ad_ttl_secs,
    };
    let changed = Arc::new(Notify::new());
    let reloader = Arc::new(Reloader::new(
        config.clone(),
        identity.key.clone(),
        Arc::clone(&service),
        Arc::clone(overlay.trust()),
        Arc::clone(&changed),
    ));
    let state = Arc::new(NodeState {
        service: Arc::clone(&service),
        ad: RwLock::new(None),
        served_ok: 0.into(),
        served_err: 0.into(),
        ads_published: 0.into(),
        monitor,
        usage: RwLock::new(Vec::new()),
        reloader: Some(Arc::clone(&reloader)),
    });
    let mut runtime = Runtime::new(overlay.clone());
    super::ssh::start(&config.ssh, &identity.key, &service, &mut runtime).await?;
    if config.heartbeat_interval_secs > 0 {
        let stop = runtime.stop_signal();
        runtime.spawn(
            "heartbeats",
            super::heartbeat::heartbeat_loop(
                identity.key.clone(),
                template.cert.authority,
                Arc::clone(&state),
                overlay.clone(),
                Duration::from_secs(config.heartbeat_interval_secs),
                stop,
            ),
        );
    }
    // Ads: at once, on every change, and on the heartbeat.
    runtime.spawn(
        "ads",
        ad_loop(
            identity.key,
            template,
            Arc::clone(&state),
            overlay.clone(),
            Arc::clone(&changed),
            runtime.stop_signal(),
            config.ad_interval_secs,
        ),
    );
    if let Some(monitor) = state.monitor.clone() {
        let period = Duration::from_secs(config.disk_check_secs.max(1));
        let stop = runtime.stop_signal();
        runtime.spawn(
            "disk watchdog",
            watch_disks(Arc::clone(&state), monitor, period, stop),
        );
    }
    let stop = runtime.stop_signal();
    runtime.spawn(
        "revocations",
        super::revocation::watch(
            Arc::clone(&service),
            overlay.trust().clone(),
            overlay.revocations(),
            config.end_revoked_leases,
            Arc::clone(&changed),
            stop,
        ),
    );
    let stop = runtime.stop_signal();
    runtime.spawn(
        "reaper",
        reap(Arc::clone(&service), Arc::clone(&changed), stop),
    );
    let stop = runtime.stop_signal();
    runtime.spawn("reload on SIGHUP", on_hangup(reloader, stop));
    if config.announce.is_empty() {
        let stop = runtime.stop_signal();
        runtime.spawn(
            "address watch",
            super::loops::watch_addresses(overlay.clone(), Arc::clone(&changed), stop),
        );
    }
    // Ticket ends reported to their agents.
    let stop = runtime.stop_signal();
    runtime.spawn(
        "release reports",
        super::release_report::report_loop(Arc::clone(&service), overlay.clone(), stop),
    );
    // Ready once the first ad is built: until then no broker can plan on this node.
    let first_ad = Arc::clone(&state);
    runtime.readiness().set(Arc::new(move || {
        let built = first_ad
            .ad
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some();
        if built {
            Ok(())
        } else {
            Err("the node's first ad is not built yet".into())
        }
    }));
    let http = runtime
        .serve_http(common.http, http::router(Arc::clone(&state)))
        .await?;
    let handler = {
        let (state, changed) = (Arc::clone(&state), Arc::clone(&changed));
        move |peer: PublicKey, request: NodeRequest| {
            let (state, changed) = (Arc::clone(&state), Arc::clone(&changed));
            async move { answer(&state, &changed, peer, request).await }
        }
    };
    runtime
        .serve::<federation::overlay::NodeProtocol, _, _>(
            Fairness::with_limit(common.max_in_flight),
            2,
            request_lane,
            handler,
        )
        .await?;
    let running = RunningNode {
        overlay,
        http,
        state,
    };
    let shutdown = async move {
        runtime.shutdown(SHUTDOWN_DEADLINE).await;
        // Slivers outlive the daemon; with none left, nothing of the node's stays behind.
        match tokio::task::spawn_blocking(move || service.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "closing the sliver engine"),
            Err(e) => tracing::warn!(error = %e, "closing the sliver engine"),
        }
    };
    Ok((running, shutdown))
}

/// Who the node is: its key, its membership certificate and whom it trusts.
struct Identity {
    key: SecretKey,
    membership: Signed<capability_schema::MembershipCert>,
    cert: capability_schema::MembershipCert,
    trust: federation::TrustStore,
}

impl Identity {
    fn load(config: &NodeManagerConfig) -> Result<Self, DaemonError> {
        let common = &config.common;
        let key = load_key::<NodeKind>(&common.key_file)?;
        let trust_error = |e: anyhow::Error| DaemonError::Trust(format!("{e:#}"));
        let (membership, cert) = federation::daemon::load_membership(
            &common.membership,
            &key,
            Role::Node,
            &common.federation,
        )
        .map_err(trust_error)?;
        let trust = federation::daemon::trust_store(&common.trust).map_err(trust_error)?;
        if trust.label_of(&cert.authority) != Some(cert.federation.as_str()) {
            return Err(DaemonError::Trust(format!(
                "add your own federation's authority to [[trust]] (name = {:?}, authority = \"{}\")",
                cert.federation, cert.authority
            )));
        }
        Ok(Identity {
            key,
            membership,
            cert,
            trust,
        })
    }
}

/// The node service over its ledger and sliver backend, its leases reconciled with the live
/// slivers; and the backend's monitor, when it has real slivers to measure.
async fn open_service(
    config: &NodeManagerConfig,
    identity: &Identity,
    capacity: Capacity,
) -> Result<(Arc<NodeService>, Option<Arc<dyn SliverMonitor>>), DaemonError> {
    let ledger = open_ledger(config)?;
    let (backend, monitor) = backend_of(config, &identity.cert.site).await?;
    let service = Arc::new(NodeService::new(
        identity.key.clone(),
        config.common.federation.clone(),
        capacity,
        ledger,
        backend,
    ));
    let report = {
        let service = Arc::clone(&service);
        tokio::task::spawn_blocking(move || service.reconcile())
            .await
            .map_err(|e| host_error(format!("reconciling: {e}")))?
            .map_err(|e| host_error(format!("reconciling leases with slivers: {e}")))?
    };
    tracing::info!(?report, "reconciled leases with slivers");
    Ok((service, monitor))
}

/// One node-protocol request, on the blocking pool (sliver creation is synchronous); a
/// lease change pokes the ad task.
async fn answer(
    state: &Arc<NodeState>,
    changed: &Notify,
    peer: PublicKey,
    request: NodeRequest,
) -> capability_schema::protocol::Reply<capability_schema::protocol::NodeResponse> {
    let mutating = matches!(
        request,
        NodeRequest::Redeem { .. } | NodeRequest::Renew { .. } | NodeRequest::Release { .. }
    );
    let handler_state = Arc::clone(state);
    let reply = tokio::task::spawn_blocking(move || {
        let ad = handler_state
            .ad
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        handler_state
            .service
            .handle(&peer, request, unix_now(), ad.as_ref())
    })
    .await
    .unwrap_or_else(|e| {
        Err(capability_schema::Rejection::Internal {
            detail: format!("handler failed: {e}"),
        }
        .into())
    });
    let counter = if reply.is_ok() {
        &state.served_ok
    } else {
        &state.served_err
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if mutating && reply.is_ok() {
        changed.notify_one();
    }
    reply
}
