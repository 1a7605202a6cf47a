//! Simulation at internet-like scale: thousands of overlay peers in one process, to measure
//! ad convergence and broker planning.
//!
//! What runs:
//! - `nodes` node peers, each a complete federation overlay ([`Overlay::start`]: the libp2p
//!   memory transport with noise and yamux, identify, ping, Kademlia, gossipsub with ad
//!   validation, request-response), with its own key and a membership certificate of its
//!   federation (federations round-robin, sites of [`SITE_SIZE`] nodes), advertising a
//!   capacity, commitments, a share for its federation's agent and a load that vary from
//!   node to node;
//! - one broker peer that follows every federation: its view of the ads is what the planner
//!   is given.
//!
//! How peers are wired (staged start): every peer starts and listens first; then each node
//! dials `degree` random other nodes of its federation (a random graph; a refused dial is
//! retried on another node), the broker dials `degree` random nodes of each federation, and
//! the simulation waits until every gossip mesh is formed and, optionally, a while longer
//! (`settle`). Kademlia is off (the overlay's switch for fixed topologies): its bootstrap
//! would connect every peer to dozens of others, which on one machine costs memory and CPU
//! without carrying any ad the mesh would not. Each peer accepts at most `max_connections`.
//!
//! What is measured, in order:
//! 1. **Cold convergence**: the publishing nodes (all, or a random sample of `publishers`)
//!    publish their first ad (all at once, or spread over a `boot` window) and then
//!    re-announce on a heartbeat (`reannounce`, as the daemons do; off by default), until
//!    every node holds an ad of every publisher of its federation and the broker holds an ad
//!    of every publisher. Reported: when the last peer got there, per-peer completion (p50,
//!    p95), and per-ad spread times (first publication until every receiver holds it).
//! 2. **Messages per node**: the ads each node's overlay validated ([`OverlayHandle::stats`]:
//!    accepted, and ignored as stale). Gossipsub drops duplicate copies by message id before
//!    validation and the overlay exposes no wire-level counter, so those copies, IHAVE/IWANT
//!    and mesh control messages are not counted; the report adds an estimate of the eager-push
//!    copies (accepted ads × (mesh size − 1)) and the process CPU time per node and per
//!    delivery, which does include all of that work.
//! 3. **Update latency**: single ad updates (a higher `seq`) by random nodes, one at a time
//!    on the otherwise quiet overlay, each timed until every node of its federation and the
//!    broker hold it.
//! 4. **Revocation spread**: the first federation's authority revokes a principal and one of
//!    its nodes publishes the list; each peer (every peer has its own trust store, as daemons
//!    do, and trusts every federation, so follows each revocation topic) is timed from
//!    publication until its overlay applied the list (p50, p99, the share within 2 s).
//! 5. **Broker planning**: [`broker::planner::plan`] over the broker's converged view for a
//!    request of `slivers` slivers spread over many sites. When only a sample published, the
//!    other nodes' ads are validated with the same trust store and added to the broker's view,
//!    so the planner sees every node.
//!
//! Every peer shares the machine's cores: all deliveries of all peers run on them one after
//! the other (each a noise decryption, a decode, a signature and a certificate check), which
//! real nodes, each validating only what reaches it, do in parallel. The report gives the
//! CPU per delivery and the idle cost of the overlay, so the two can be told apart.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use broker::planner::{Candidate, plan};
use capability_schema::ad::{PriceList, ShareState};
use capability_schema::slice::{SliceConstraints, SliceKind, SliceRequest, SliverTarget};
use capability_schema::{
    AcquireMode, PublicKey, ResourceAd, Resources, RevocationList, SecretKey, Signed,
};
use federation::overlay::{AdEvent, Multiaddr, OverlayError, OverlayStats};
use federation::testing::{TestFederation, TestNode, cpu_time};
use federation::{Overlay, OverlayConfig, OverlayHandle, TrustStore, unix_now};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, broadcast, watch};

/// Nodes per site.
pub const SITE_SIZE: usize = 3;
/// Idle timeout of the simulation's connections: Kademlia's bootstrap connections close after
/// this long unused (gossip meshes keep theirs busy).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Validated ads buffered per node peer for its counter (a counter that falls further behind
/// is told how many it missed; those are reported as lagged).
const NODE_AD_QUEUE: usize = 128;
/// Peers dialing at the same time during setup.
const DIAL_CONCURRENCY: usize = 128;
/// Longest wait for one ad update to reach everyone.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a revocation list to reach a peer (a slow spread is measured, not cut
/// short: the target is seconds).
const REVOCATION_TIMEOUT: Duration = Duration::from_secs(120);
/// Lifetime of the simulation's ads.
const AD_TTL_SECS: u64 = 6 * 3600;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Node peers.
    pub nodes: usize,
    /// Federations (nodes round-robin).
    pub federations: usize,
    /// Earlier peers of its federation each node dials.
    pub degree: usize,
    /// Most connections per peer (0: `3 × degree + 2`).
    pub max_connections: u32,
    /// Gossipsub heartbeat (the daemons' default is 1 s).
    pub heartbeat: Duration,
    /// Wait after the meshes formed, so Kademlia's bootstrap connections close (0: none).
    pub settle: Duration,
    /// Nodes that publish (a random sample; 0: every node).
    pub publishers: usize,
    /// First ads are spread evenly over this window (0: all at the same moment).
    pub boot: Duration,
    /// Every node re-announces (a higher `seq`) this often until convergence, as the
    /// daemons' heartbeat does (0: never).
    pub reannounce: Duration,
    /// Single ad updates to time after convergence.
    pub updates: usize,
    /// Slivers the planner is asked for.
    pub slivers: u32,
    /// Longest wait for cold convergence.
    pub timeout: Duration,
    /// Seed of the random graph, capacities and publishers.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 1000,
            federations: 2,
            degree: 6,
            max_connections: 0,
            heartbeat: Duration::from_secs(1),
            settle: Duration::from_secs(5),
            publishers: 0,
            boot: Duration::ZERO,
            reannounce: Duration::ZERO,
            updates: 20,
            slivers: 500,
            timeout: Duration::from_secs(1800),
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// What a simulation measured.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// Node peers.
    pub nodes: usize,
    /// Federations.
    pub federations: usize,
    /// Dials per node.
    pub degree: usize,
    /// Gossipsub mesh degree `D`.
    pub mesh_n: usize,
    /// Gossip heartbeat.
    pub heartbeat: Duration,
    /// Nodes that published.
    pub publishers: usize,
    /// Boot window of the first ads.
    pub boot: Duration,
    /// Re-announce interval (zero: none).
    pub reannounce: Duration,
    /// Size of one signed ad on the wire, in bytes.
    pub ad_bytes: usize,
    /// Time to start every peer.
    pub start_time: Duration,
    /// Time to dial the graph.
    pub dial_time: Duration,
    /// Dials that failed even after retries.
    pub dial_failures: usize,
    /// Time until every mesh was formed (after dialing).
    pub mesh_time: Duration,
    /// Peers whose mesh stayed under `mesh_n_low` (or their federation's size).
    pub thin_meshes: usize,
    /// Connections per peer, on average, before publishing.
    pub connections_per_peer: f64,
    /// Most connections per peer allowed.
    pub max_connections: u32,
    /// Resident memory once every peer is up and wired, before any ad, in bytes.
    pub setup_rss: u64,
    /// CPU the idle overlay (heartbeats, pings, timers) keeps busy, in cores.
    pub idle_cores: f64,
    /// Mesh peers per node, on average, after convergence.
    pub mesh_per_peer: f64,
    /// Peak resident memory of the process, in bytes.
    pub peak_rss: u64,
    /// Whether every peer got an ad of every node in time.
    pub converged: bool,
    /// Per-peer (nodes and broker) completion times, sorted (complete peers only).
    pub completion: Vec<Duration>,
    /// When the broker held an ad of every node.
    pub broker_complete: Option<Duration>,
    /// Per-ad spread times (first publication until every receiver held the node's ad),
    /// sorted (complete ads only).
    pub spread: Vec<Duration>,
    /// (peer, node) pairs known at the end, and expected.
    pub delivered: (usize, usize),
    /// Ads published during cold convergence (first ads and re-announcements).
    pub published: usize,
    /// Validated ads handed to each node's daemon during cold convergence, on average.
    pub ads_per_node: f64,
    /// Ads each node's overlay ignored as stale during cold convergence, on average.
    pub ignored_per_node: f64,
    /// Ads rejected as invalid by any overlay during cold convergence (should be none).
    pub rejected: u64,
    /// Ads the counters only learnt of as "lagged" (not attributed to a node).
    pub lagged: usize,
    /// Process CPU time during cold convergence.
    pub cpu: Duration,
    /// Wall time of cold convergence (or until the timeout).
    pub wall: Duration,
    /// Single-update latencies, sorted.
    pub updates: Vec<Duration>,
    /// Updates that did not reach everyone in time.
    pub updates_lost: usize,
    /// How a revocation list spread (none: not measured).
    pub revocation: Option<RevocationSpread>,
    /// Ads in the broker's view when planning.
    pub candidates: usize,
    /// Slivers asked.
    pub slivers: u32,
    /// Planning time, median of several runs.
    pub plan_time: Duration,
    /// Slivers chosen.
    pub chosen: usize,
    /// Distinct sites chosen.
    pub chosen_sites: usize,
    /// Whether the plan met the request.
    pub satisfiable: bool,
    /// The planner's explanation.
    pub explanation: String,
}

/// How one revocation list spread from its publisher to the peers that trust its federation.
#[derive(Debug, Clone, Default)]
pub struct RevocationSpread {
    /// Peers that trust the federation (every node and the broker).
    pub peers: usize,
    /// Per peer that applied the list, the time from publication, sorted.
    pub reached: Vec<Duration>,
}

impl RevocationSpread {
    /// The time by which `percent` of all the peers applied the list (none: fewer did).
    pub fn by_share(&self, percent: f64) -> Option<Duration> {
        let needed = ((percent / 100.0) * self.peers as f64).ceil() as usize;
        self.reached.get(needed.max(1) - 1).copied()
    }

    /// The share of the peers that applied the list within `limit`, in percent.
    pub fn within(&self, limit: Duration) -> f64 {
        let n = self.reached.iter().filter(|d| **d <= limit).count();
        100.0 * n as f64 / self.peers.max(1) as f64
    }
}

impl fmt::Display for RevocationSpread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |p: f64| self.by_share(p).map_or_else(|| "never".to_owned(), millis);
        write!(
            f,
            "{} of {} peers applied it: p50 {} · p99 {} · all {}; {:.1}% within 2 s",
            self.reached.len(),
            self.peers,
            at(50.0),
            at(99.0),
            at(100.0),
            self.within(Duration::from_secs(2)),
        )
    }
}

impl SimReport {
    /// Cold convergence: when the last peer held an ad of every node.
    pub fn convergence(&self) -> Option<Duration> {
        self.converged.then(|| self.completion.last().copied())?
    }

    /// Validated deliveries to nodes during cold convergence.
    fn deliveries(&self) -> f64 {
        self.ads_per_node * self.nodes as f64
    }

    /// Process CPU per validated delivery during cold convergence, all of it.
    pub fn cpu_per_delivery(&self) -> Duration {
        Duration::from_secs_f64(self.cpu.as_secs_f64() / self.deliveries().max(1.0))
    }

    /// Process CPU per validated delivery beyond what the idle overlay costs anyway.
    pub fn marginal_cpu_per_delivery(&self) -> Duration {
        let busy = self.cpu.as_secs_f64() - self.idle_cores * self.wall.as_secs_f64();
        Duration::from_secs_f64(busy.max(0.0) / self.deliveries().max(1.0))
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn millis(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1u32 << 20))
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peers = self.nodes + 1;
        let optional = |d: Duration, what: &str| {
            if d.is_zero() {
                format!("{what}: none")
            } else {
                format!("{what}: {}", secs(d))
            }
        };
        let rows: Vec<(&str, String)> = vec![
            (
                "peers",
                format!(
                    "{} nodes in {} federations + 1 broker following all",
                    self.nodes, self.federations
                ),
            ),
            (
                "overlay",
                format!(
                    "memory transport, noise, yamux, gossipsub D={} heartbeat {}, identify, ping (Kademlia off: fixed graph)",
                    self.mesh_n,
                    millis(self.heartbeat)
                ),
            ),
            (
                "wiring",
                format!(
                    "{} dials per node, at most {} connections; {:.1} connections per peer; {:.1} mesh peers per node; {} thin meshes; {} failed dials",
                    self.degree,
                    self.max_connections,
                    self.connections_per_peer,
                    self.mesh_per_peer,
                    self.thin_meshes,
                    self.dial_failures
                ),
            ),
            (
                "setup",
                format!(
                    "start {} · dial {} · meshes {}",
                    secs(self.start_time),
                    secs(self.dial_time),
                    secs(self.mesh_time)
                ),
            ),
            (
                "memory",
                format!(
                    "{} wired and idle ({:.1} MiB per peer); peak RSS {}",
                    mib(self.setup_rss),
                    self.setup_rss as f64 / f64::from(1u32 << 20) / peers as f64,
                    mib(self.peak_rss),
                ),
            ),
            ("idle overlay", format!("{:.2} cores busy", self.idle_cores)),
            (
                "publishing",
                format!(
                    "{} of {} nodes publish; {}; {}; {} ads published",
                    self.publishers,
                    self.nodes,
                    optional(self.boot, "boot window"),
                    optional(self.reannounce, "re-announce"),
                    self.published
                ),
            ),
            (
                "cold convergence",
                match self.convergence() {
                    Some(all) => format!(
                        "every peer holds an ad of every publisher after {} (p50 peer {}, p95 {}); broker {}",
                        secs(all),
                        secs(percentile(&self.completion, 50.0)),
                        secs(percentile(&self.completion, 95.0)),
                        self.broker_complete.map_or("-".into(), secs)
                    ),
                    None => format!(
                        "NOT converged in {}: {} of {} (peer, node) pairs ({:.2}%), {} of {} peers complete",
                        secs(self.wall),
                        self.delivered.0,
                        self.delivered.1,
                        100.0 * self.delivered.0 as f64 / self.delivered.1.max(1) as f64,
                        self.completion.len(),
                        peers
                    ),
                },
            ),
            (
                "spread of each ad",
                format!(
                    "{} of {} ads reached all receivers: p50 {} · p95 {} · max {}",
                    self.spread.len(),
                    self.publishers,
                    secs(percentile(&self.spread, 50.0)),
                    secs(percentile(&self.spread, 95.0)),
                    secs(self.spread.last().copied().unwrap_or_default())
                ),
            ),
            (
                "messages per node",
                format!(
                    "{:.1} ads validated and accepted, {:.1} ignored as stale, {} rejected; ≈{:.0} eager gossip copies sent (estimate: accepted × (mesh − 1)); ad {} bytes{}",
                    self.ads_per_node,
                    self.ignored_per_node,
                    self.rejected,
                    self.ads_per_node * (self.mesh_per_peer - 1.0).max(0.0),
                    self.ad_bytes,
                    if self.lagged > 0 {
                        format!("; {} lagged (unattributed)", self.lagged)
                    } else {
                        String::new()
                    }
                ),
            ),
            (
                "CPU during convergence",
                format!(
                    "{} in {} wall ({:.2} cores busy); {:.1} ms per node; {:.0} µs per validated delivery, {:.0} µs beyond the idle overlay",
                    secs(self.cpu),
                    secs(self.wall),
                    self.cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9),
                    self.cpu.as_secs_f64() * 1000.0 / self.nodes.max(1) as f64,
                    self.cpu_per_delivery().as_secs_f64() * 1e6,
                    self.marginal_cpu_per_delivery().as_secs_f64() * 1e6,
                ),
            ),
            (
                "update latency",
                if self.updates.is_empty() && self.updates_lost == 0 {
                    "not measured".into()
                } else {
                    format!(
                        "{} updates, each to all {} of its federation + broker: p50 {} · p95 {} · max {}{}",
                        self.updates.len(),
                        self.nodes / self.federations.max(1),
                        millis(percentile(&self.updates, 50.0)),
                        millis(percentile(&self.updates, 95.0)),
                        millis(self.updates.last().copied().unwrap_or_default()),
                        if self.updates_lost > 0 {
                            format!(" · {} not delivered everywhere", self.updates_lost)
                        } else {
                            String::new()
                        }
                    )
                },
            ),
            (
                "revocation spread",
                self.revocation
                    .as_ref()
                    .map_or_else(|| "not measured".to_owned(), ToString::to_string),
            ),
            (
                "broker planning",
                format!(
                    "{} slivers over {} candidate ads: {:.2} ms (median of 5); {} chosen on {} sites; {}",
                    self.slivers,
                    self.candidates,
                    self.plan_time.as_secs_f64() * 1000.0,
                    self.chosen,
                    self.chosen_sites,
                    if self.satisfiable {
                        "satisfiable".to_owned()
                    } else {
                        format!("unsatisfiable: {}", self.explanation)
                    }
                ),
            ),
        ];
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        for (k, v) in rows {
            writeln!(f, "  {k:<width$}  {v}")?;
        }
        Ok(())
    }
}

/// A one-line-per-size comparison of several runs (Markdown).
pub fn summary_table(reports: &[SimReport]) -> String {
    let mut out = String::new();
    out.push_str(
        "| nodes | publishers | cold convergence | p50 / p95 peer | ad spread p50 / p95 | validated ads/node | ≈gossip copies/node | CPU/delivery (marginal) | update p50 / p95 | revocation p50 / p99 | plan | RSS idle / peak |\n",
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in reports {
        out.push_str(&format!(
            "| {} | {} | {} | {} / {} | {} / {} | {:.1} | {:.0} | {:.0} µs ({:.0} µs) | {} / {} | {} | {} slivers in {:.1} ms | {} / {} |\n",
            r.nodes,
            r.publishers,
            r.convergence().map_or_else(
                || format!(
                    "not in {} ({:.1}%)",
                    secs(r.wall),
                    100.0 * r.delivered.0 as f64 / r.delivered.1.max(1) as f64
                ),
                secs
            ),
            secs(percentile(&r.completion, 50.0)),
            secs(percentile(&r.completion, 95.0)),
            secs(percentile(&r.spread, 50.0)),
            secs(percentile(&r.spread, 95.0)),
            r.ads_per_node,
            r.ads_per_node * (r.mesh_per_peer - 1.0).max(0.0),
            r.cpu_per_delivery().as_secs_f64() * 1e6,
            r.marginal_cpu_per_delivery().as_secs_f64() * 1e6,
            millis(percentile(&r.updates, 50.0)),
            millis(percentile(&r.updates, 95.0)),
            r.revocation.as_ref().map_or_else(
                || "-".to_owned(),
                |spread| {
                    let at = |p| spread.by_share(p).map_or_else(|| "never".to_owned(), millis);
                    format!("{} / {}", at(50.0), at(99.0))
                }
            ),
            r.chosen,
            r.plan_time.as_secs_f64() * 1000.0,
            mib(r.setup_rss),
            mib(r.peak_rss),
        ));
    }
    out
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Peak resident memory of this process (`VmHWM`), in bytes.
pub fn peak_rss() -> u64 {
    status_kib("VmHWM:")
}

/// Resident memory of this process now (`VmRSS`), in bytes.
pub fn rss() -> u64 {
    status_kib("VmRSS:")
}

/// What one peer has received, written by its counting task.
#[derive(Debug, Default)]
struct PeerTally {
    /// Which nodes' ads it holds (one bit per node).
    seen: Vec<AtomicU64>,
    /// How many bits of `seen` are set.
    known: AtomicUsize,
    /// Ads the counter only learnt of as "lagged".
    lagged: AtomicUsize,
    /// Microseconds after the epoch when `known` reached `expected` (0: not yet).
    complete_us: AtomicU64,
    /// Nodes whose ads this peer should hold.
    expected: usize,
}

impl PeerTally {
    fn new(nodes: usize, expected: usize) -> PeerTally {
        PeerTally {
            seen: (0..nodes.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            expected,
            ..PeerTally::default()
        }
    }
}

/// Who holds one node's ad.
#[derive(Debug, Default)]
struct AdTally {
    /// When its first ad was published (microseconds after the epoch; 0: not yet).
    published_us: AtomicU64,
    /// Peers holding an ad of the node.
    receivers: AtomicUsize,
    /// When `receivers` reached `expected` (0: not yet).
    complete_us: AtomicU64,
    /// Peers that should hold it: the rest of its federation and the broker.
    expected: usize,
}

/// What the counting tasks share with the driver.
#[derive(Debug)]
struct Shared {
    epoch: Instant,
    /// Node key → node index.
    index: HashMap<PublicKey, usize>,
    /// Nodes, then the broker.
    peers: Vec<PeerTally>,
    /// Per node.
    ads: Vec<AdTally>,
    /// The update being timed: (node, seq).
    update: RwLock<Option<(PublicKey, u64)>>,
    update_hits: AtomicUsize,
    update_last_us: AtomicU64,
    /// The broker's view: the latest ad of every node.
    broker_view: Mutex<HashMap<PublicKey, ResourceAd>>,
}

impl Shared {
    /// Tallies for `nodes` and the broker: each node expects the ads of the other publishers
    /// of its federation, the broker every publisher's; each ad is expected by every node of
    /// its federation (counted by its receivers) and the broker.
    fn new(
        nodes: &[SimNode],
        publishing: &[bool],
        fed_size: &[usize],
        federations: usize,
    ) -> Shared {
        let n = nodes.len();
        let publishers_in: Vec<usize> = (0..federations)
            .map(|x| {
                (0..n)
                    .filter(|i| publishing[*i] && nodes[*i].federation == x)
                    .count()
            })
            .collect();
        let mut peers: Vec<PeerTally> = nodes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                PeerTally::new(n, publishers_in[s.federation] - usize::from(publishing[i]))
            })
            .collect();
        peers.push(PeerTally::new(n, publishing.iter().filter(|p| **p).count()));
        Shared {
            epoch: Instant::now(),
            index: nodes
                .iter()
                .enumerate()
                .map(|(i, s)| (s.node.key.public(), i))
                .collect(),
            peers,
            ads: nodes
                .iter()
                .map(|s| AdTally {
                    expected: fed_size[s.federation],
                    ..AdTally::default()
                })
                .collect(),
            update: RwLock::new(None),
            update_hits: AtomicUsize::new(0),
            update_last_us: AtomicU64::new(0),
            broker_view: Mutex::new(HashMap::new()),
        }
    }

    fn now_us(&self) -> u64 {
        (self.epoch.elapsed().as_micros() as u64).max(1)
    }

    /// Peer `peer` holds an ad of node `node`.
    fn holds(&self, peer: usize, node: usize) {
        let tally = &self.peers[peer];
        let bit = 1u64 << (node % 64);
        if tally.seen[node / 64].fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            return;
        }
        if tally.known.fetch_add(1, Ordering::AcqRel) + 1 == tally.expected {
            tally.complete_us.store(self.now_us(), Ordering::Release);
        }
        let ad = &self.ads[node];
        if ad.receivers.fetch_add(1, Ordering::AcqRel) + 1 == ad.expected {
            ad.complete_us.store(self.now_us(), Ordering::Release);
        }
    }

    fn known(&self) -> usize {
        self.peers
            .iter()
            .map(|t| t.known.load(Ordering::Acquire))
            .sum()
    }
}

/// Counts what `rx` delivers to peer `peer` until the overlay stops.
async fn counter(
    mut rx: broadcast::Receiver<AdEvent>,
    shared: Arc<Shared>,
    peer: usize,
    broker: bool,
) {
    let tally = &shared.peers[peer];
    loop {
        match rx.recv().await {
            Ok(event) => {
                if let Some(&node) = shared.index.get(&event.ad.node) {
                    shared.holds(peer, node);
                }
                let timed = *shared.update.read().unwrap_or_else(PoisonError::into_inner);
                if timed == Some((event.ad.node, event.ad.seq)) {
                    shared
                        .update_last_us
                        .fetch_max(shared.now_us(), Ordering::AcqRel);
                    shared.update_hits.fetch_add(1, Ordering::AcqRel);
                }
                if broker {
                    shared
                        .broker_view
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(event.ad.node, event.ad);
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tally.lagged.fetch_add(n as usize, Ordering::Relaxed);
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// A node of the simulation: what its ads say.
#[derive(Debug)]
struct SimNode {
    node: TestNode,
    federation: usize,
    capacity: Resources,
    committed: Resources,
    load_milli: u64,
    /// Its last `seq`.
    seq: AtomicU64,
}

impl SimNode {
    /// Its next ad (a higher `seq`), with `load_milli` measured.
    fn next_ad(&self, agent: PublicKey, load_milli: u64) -> (u64, Signed<ResourceAd>) {
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        let mut body = self.node.ad_body(seq, unix_now(), AD_TTL_SECS);
        body.capacity = self.capacity;
        body.committed = self.committed;
        // The federation's agent holds a share of three quarters of the node.
        let share = Resources {
            cpu_millis: self.capacity.cpu_millis * 3 / 4,
            memory_bytes: self.capacity.memory_bytes / 4 * 3,
            disk_bytes: self.capacity.disk_bytes / 4 * 3,
            egress_kbps: self.capacity.egress_kbps * 3 / 4,
            ports: 0,
        };
        body.shares = vec![ShareState {
            agent,
            share,
            committed: self.committed,
            free: share
                .saturating_sub(&self.committed)
                .min(&self.capacity.saturating_sub(&self.committed)),
        }];
        body.measured.load_milli = load_milli;
        (seq, Signed::sign(&self.node.key, &body))
    }
}

fn random_node(rng: &mut StdRng, node: TestNode, federation: usize) -> SimNode {
    let cores: u64 = [2, 4, 4, 8, 8, 16, 32][rng.gen_range(0..7)];
    let capacity = Resources {
        cpu_millis: cores * 1000,
        memory_bytes: cores * (2 << 30),
        disk_bytes: (50 + rng.gen_range(0..450)) << 30,
        egress_kbps: [10_000, 100_000, 1_000_000][rng.gen_range(0..3)],
        ports: 0,
    };
    let committed = Resources {
        cpu_millis: capacity.cpu_millis * rng.gen_range(0..70) / 100,
        memory_bytes: capacity.memory_bytes / 100 * rng.gen_range(0..70),
        disk_bytes: capacity.disk_bytes / 100 * rng.gen_range(0..50),
        egress_kbps: capacity.egress_kbps / 100 * rng.gen_range(0..50),
        ports: 0,
    };
    SimNode {
        node,
        federation,
        capacity,
        committed,
        load_milli: rng.gen_range(0..cores * 1000),
        seq: AtomicU64::new(0),
    }
}

/// Dials `addr` from `handle`, retrying a few times (a popular peer may refuse while too many
/// connections are being set up).
async fn dial(handle: &OverlayHandle, addr: &Multiaddr) -> Result<(), OverlayError> {
    let mut last = Ok(());
    for attempt in 0..2u64 {
        match handle.dial(addr.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Err(e),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    last
}

/// Publishes `ad`, retrying a while when no peer follows its federation yet.
async fn publish(handle: &OverlayHandle, ad: Signed<ResourceAd>) -> Result<(), OverlayError> {
    for _ in 0..50 {
        match handle.publish_ad(ad.clone()).await {
            Err(OverlayError::NoPeers { .. }) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
    handle.publish_ad(ad).await
}

/// Asks every `(handle, federation)` for its mesh size, all at once (one by one, each answer
/// would wait a full round of the scheduler when thousands of peers are busy).
async fn mesh_sizes(peers: Vec<(OverlayHandle, String)>) -> Result<Vec<usize>, OverlayError> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (handle, federation)) in peers.into_iter().enumerate() {
        tasks.spawn(async move { (i, handle.mesh_peers(&federation).await.map(|m| m.len())) });
    }
    let mut sizes = vec![0; tasks.len()];
    while let Some(joined) = tasks.join_next().await {
        if let Ok((i, size)) = joined {
            sizes[i] = size?;
        }
    }
    Ok(sizes)
}

/// The overlay counters of every handle, summed.
async fn stats_sum(handles: Vec<OverlayHandle>) -> Result<OverlayStats, OverlayError> {
    let mut tasks = tokio::task::JoinSet::new();
    for handle in handles {
        tasks.spawn(async move { handle.stats().await });
    }
    let mut sum = OverlayStats::default();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(stats) = joined {
            let stats = stats?;
            sum.ads_accepted += stats.ads_accepted;
            sum.ads_ignored += stats.ads_ignored;
            sum.ads_rejected += stats.ads_rejected;
            sum.connections_opened += stats.connections_opened;
        }
    }
    Ok(sum)
}

/// Asks every handle how many peers it is connected to, all at once.
async fn connection_counts(handles: Vec<OverlayHandle>) -> Result<usize, OverlayError> {
    let mut tasks = tokio::task::JoinSet::new();
    for handle in handles {
        tasks.spawn(async move { handle.connected_peers().await.map(|p| p.len()) });
    }
    let mut total = 0;
    while let Some(joined) = tasks.join_next().await {
        if let Ok(count) = joined {
            total += count?;
        }
    }
    Ok(total)
}

/// Everything the announcer needs.
struct Announcer {
    shared: Arc<Shared>,
    nodes: Arc<Vec<SimNode>>,
    handles: Vec<OverlayHandle>,
    agents: Vec<PublicKey>,
    /// Publishing nodes, with the offset of their first ad after the start.
    offsets: Vec<(Duration, usize)>,
    reannounce: Duration,
    published: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
}

impl Announcer {
    /// Publishes every node's first ad at its offset, then (with `reannounce`) a new ad per
    /// node every `reannounce`, until `stop`.
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let start = tokio::time::Instant::now();
        let mut queue: BinaryHeap<Reverse<(Duration, usize)>> = self
            .offsets
            .iter()
            .map(|&(at, i)| Reverse((at, i)))
            .collect();
        while let Some(Reverse((at, i))) = queue.pop() {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep_until(start + at) => {}
            }
            let sim = &self.nodes[i];
            let (seq, ad) = sim.next_ad(self.agents[sim.federation], sim.load_milli);
            if seq == 1 {
                self.shared.ads[i]
                    .published_us
                    .store(self.shared.now_us(), Ordering::Release);
            }
            let handle = self.handles[i].clone();
            let (published, failed) = (self.published.clone(), self.failed.clone());
            tokio::spawn(async move {
                match publish(&handle, ad).await {
                    Ok(()) => published.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            });
            if !self.reannounce.is_zero() {
                queue.push(Reverse((at + self.reannounce, i)));
            }
        }
    }
}

/// Runs one simulation; `progress` hears what happens (one line at a time).
pub async fn run(config: &SimConfig, progress: impl FnMut(&str)) -> anyhow::Result<SimReport> {
    let mut sim = Sim::build(config, progress)?;
    sim.start().await?;
    sim.wire().await?;
    sim.form_meshes().await?;
    sim.measure_idle().await?;
    sim.converge().await?;
    sim.time_updates().await?;
    sim.time_revocation().await?;
    sim.plan();
    Ok(sim.shut_down().await)
}

/// One simulation, phase by phase. [`Sim::build`] makes the federations, the nodes and what
/// the counters share; then [`run`] calls, in order: `start` (every peer and its counter),
/// `wire` (the dials), `form_meshes` (until every gossip mesh is formed, then `settle`),
/// `measure_idle` (connections, memory and the idle overlay's CPU), `converge` (cold
/// convergence), `time_updates` (single ad updates), `plan` (the broker's planner over its
/// view) and `shut_down`. Each phase fills in its part of the report.
struct Sim<'c, P> {
    config: &'c SimConfig,
    progress: P,
    /// Seeded from the configuration; drawn from, in this order, by `build` (capacities,
    /// publishers), `wire` (the graph), `converge` (the publishing order) and `time_updates`.
    rng: StdRng,
    report: SimReport,
    /// The overlay configuration every peer starts from.
    base: OverlayConfig,
    /// Federation names (`fed0`, …).
    names: Vec<String>,
    /// The trust store every peer starts from (each gets its own copy, as daemons have, so a
    /// revocation list one peer applied is news to the next).
    trust: Arc<RwLock<TrustStore>>,
    /// A revocation list of the first federation, published by `time_revocation`.
    revocation: Signed<RevocationList>,
    /// Each federation's agent.
    agents: Vec<PublicKey>,
    /// Each federation's prices.
    prices: Vec<PriceList>,
    nodes: Arc<Vec<SimNode>>,
    /// Nodes per federation.
    fed_size: Vec<usize>,
    /// Which nodes publish.
    publishing: Vec<bool>,
    shared: Arc<Shared>,
    /// Every peer once started: the nodes, then the broker.
    peers: Vec<OverlayHandle>,
    /// The node peers' listen addresses.
    addrs: Vec<Multiaddr>,
}

impl<'c, P: FnMut(&str)> Sim<'c, P> {
    /// The federations (a trust store for every peer, an agent key and prices each), the
    /// nodes (keys, certificates, what they advertise), who publishes, and the tallies.
    fn build(config: &'c SimConfig, progress: P) -> anyhow::Result<Self> {
        anyhow::ensure!(config.nodes >= 2, "a simulation needs at least 2 nodes");
        anyhow::ensure!(
            config.federations >= 1 && config.federations * 2 <= config.nodes,
            "between 1 and {} federations (at least two nodes each)",
            config.nodes / 2
        );
        anyhow::ensure!(config.degree >= 1, "every node must dial at least one peer");
        let (n, f) = (config.nodes, config.federations);
        let mut rng = StdRng::seed_from_u64(config.seed ^ n as u64);
        let base = overlay_base(config);
        let mut report = SimReport {
            nodes: n,
            federations: f,
            degree: config.degree,
            max_connections: base.max_connections,
            mesh_n: base.mesh_n,
            heartbeat: config.heartbeat,
            boot: config.boot,
            reannounce: config.reannounce,
            slivers: config.slivers,
            ..SimReport::default()
        };
        let mut federations: Vec<TestFederation> = (0..f)
            .map(|i| TestFederation::new(&format!("fed{i}"), 100u8.wrapping_add(i as u8)))
            .collect();
        let names: Vec<String> = federations.iter().map(|x| x.name().to_owned()).collect();
        let mut store = TrustStore::new();
        for federation in &federations {
            federation.trust(&mut store);
        }
        let agents: Vec<PublicKey> = (0..f).map(|_| SecretKey::generate().public()).collect();
        // A principal of the first federation falls out of trust; nothing in the overlay
        // depends on it, so the list's spread is all the measurement sees.
        let revocation =
            federations[0]
                .authority
                .revoke(&[], &[SecretKey::generate().public()], unix_now());
        let prices: Vec<PriceList> = (0..f as u64)
            .map(|i| PriceList {
                cpu_core_hour: 10 + 7 * i,
                memory_gib_hour: 2 + i,
                ..PriceList::default()
            })
            .collect();
        let nodes: Vec<SimNode> = (0..n)
            .map(|i| {
                let fed = i % f;
                let site = format!("{}-site{}", names[fed], (i / f) / SITE_SIZE);
                let node = federations[fed].node_with_key(SecretKey::generate(), &site);
                random_node(&mut rng, node, fed)
            })
            .collect();
        let fed_size: Vec<usize> = (0..f)
            .map(|x| nodes.iter().filter(|s| s.federation == x).count())
            .collect();
        report.ad_bytes = nodes[0].next_ad(agents[0], 0).1.to_bytes().len();
        nodes[0].seq.store(0, Ordering::Release);
        // Who publishes: every node, or a random sample.
        let k = if config.publishers == 0 {
            n
        } else {
            config.publishers.min(n)
        };
        let mut publishing = vec![false; n];
        for i in rand::seq::index::sample(&mut rng, n, k) {
            publishing[i] = true;
        }
        report.publishers = k;
        let shared = Arc::new(Shared::new(&nodes, &publishing, &fed_size, f));
        Ok(Sim {
            config,
            progress,
            rng,
            report,
            base,
            names,
            trust: Arc::new(RwLock::new(store)),
            revocation,
            agents,
            prices,
            nodes: Arc::new(nodes),
            fed_size,
            publishing,
            shared,
            peers: Vec::with_capacity(n + 1),
            addrs: Vec::with_capacity(n),
        })
    }

    /// Tells `progress`.
    fn say(&mut self, line: &str) {
        (self.progress)(line);
    }

    /// A peer's own trust store: a copy of the common one.
    fn own_trust(&self) -> Arc<RwLock<TrustStore>> {
        let store = self
            .trust
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Arc::new(RwLock::new(store))
    }

    /// The broker's peer (after `start`).
    fn broker(&self) -> &OverlayHandle {
        &self.peers[self.config.nodes]
    }

    /// The node peers (after `start`).
    fn node_peers(&self) -> &[OverlayHandle] {
        &self.peers[..self.config.nodes]
    }

    /// Every peer's federations to ask for its mesh: each node its own, the broker each.
    fn mesh_queries(&self) -> Vec<(OverlayHandle, String)> {
        let mut asked: Vec<(OverlayHandle, String)> = self
            .node_peers()
            .iter()
            .zip(self.nodes.iter())
            .map(|(h, s)| (h.clone(), self.names[s.federation].clone()))
            .collect();
        let broker = self.broker();
        asked.extend(self.names.iter().map(|name| (broker.clone(), name.clone())));
        asked
    }

    /// Phase 1: starts every peer (nodes, then the broker) and its counter.
    async fn start(&mut self) -> anyhow::Result<()> {
        let n = self.config.nodes;
        self.say(&format!("starting {n} node peers and a broker"));
        let started = Instant::now();
        for i in 0..n {
            let sim = &self.nodes[i];
            let config = OverlayConfig {
                federations: vec![self.names[sim.federation].clone()],
                ..self.base.clone()
            };
            let handle = Overlay::start(&sim.node.key, config, self.own_trust())
                .await
                .with_context(|| format!("starting node peer {i}"))?;
            let addr = handle
                .listen_addrs()
                .await?
                .into_iter()
                .next()
                .context("a peer without a listen address")?;
            tokio::spawn(counter(handle.ads(), self.shared.clone(), i, false));
            self.peers.push(handle);
            self.addrs.push(addr);
            if (i + 1) % 1000 == 0 {
                self.say(&format!("  {} peers started", i + 1));
            }
        }
        let broker_config = OverlayConfig {
            federations: self.names.clone(),
            ad_queue: n + 64,
            ..self.base.clone()
        };
        let broker =
            Overlay::start(&SecretKey::generate(), broker_config, self.own_trust()).await?;
        tokio::spawn(counter(broker.ads(), self.shared.clone(), n, true));
        self.peers.push(broker);
        self.report.start_time = started.elapsed();
        Ok(())
    }

    /// Who dials whom: each node `degree` random other nodes of its federation (in a random
    /// order, so no node is everyone's first choice), with a few spare choices for dials a
    /// full peer refuses; the broker `degree` nodes of each federation. In a random order:
    /// (peer, dials wanted, nodes to try).
    fn dial_plans(&mut self) -> Vec<(OverlayHandle, usize, Vec<usize>)> {
        let (n, degree) = (self.config.nodes, self.config.degree);
        let by_fed: Vec<Vec<usize>> = (0..self.config.federations)
            .map(|x| (0..n).filter(|i| self.nodes[*i].federation == x).collect())
            .collect();
        let spare = 4;
        let mut plans: Vec<(OverlayHandle, usize, Vec<usize>)> = Vec::with_capacity(n + 1);
        for members in &by_fed {
            for &i in members {
                let others: Vec<usize> = members.iter().copied().filter(|m| *m != i).collect();
                let k = (degree + spare).min(others.len());
                let picked = rand::seq::index::sample(&mut self.rng, others.len(), k);
                plans.push((
                    self.peers[i].clone(),
                    degree,
                    picked.into_iter().map(|p| others[p]).collect(),
                ));
            }
        }
        for members in &by_fed {
            let k = (degree + spare).min(members.len());
            let picked = rand::seq::index::sample(&mut self.rng, members.len(), k);
            plans.push((
                self.broker().clone(),
                degree,
                picked.into_iter().map(|p| members[p]).collect(),
            ));
        }
        rand::seq::SliceRandom::shuffle(&mut plans[..], &mut self.rng);
        plans
    }

    /// Phase 2: wires the graph of [`Sim::dial_plans`], at most [`DIAL_CONCURRENCY`] peers
    /// dialing at a time.
    async fn wire(&mut self) -> anyhow::Result<()> {
        self.say("dialing the graph");
        let dialing = Instant::now();
        let plans = self.dial_plans();
        let failures = Arc::new(AtomicUsize::new(0));
        let limit = Arc::new(Semaphore::new(DIAL_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        let mut last_report = Instant::now();
        let total = plans.len();
        for (done, (handle, wanted, targets)) in plans.into_iter().enumerate() {
            if last_report.elapsed() >= Duration::from_secs(30) {
                last_report = Instant::now();
                self.say(&format!(
                    "  {done} of {total} peers dialing or done, {} refused dials",
                    failures.load(Ordering::Relaxed)
                ));
            }
            let permit = limit.clone().acquire_owned().await?;
            let targets: Vec<Multiaddr> = targets.iter().map(|t| self.addrs[*t].clone()).collect();
            let failures = failures.clone();
            tasks.spawn(async move {
                let mut made = 0;
                for addr in &targets {
                    if made == wanted {
                        break;
                    }
                    match dial(&handle, addr).await {
                        Ok(()) => made += 1,
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                drop(permit);
            });
        }
        while tasks.join_next().await.is_some() {}
        self.report.dial_failures = failures.load(Ordering::Relaxed);
        self.report.dial_time = dialing.elapsed();
        Ok(())
    }

    /// Phase 3: waits until every peer relays to a mesh of its own (or a deadline that grows
    /// with the nodes), then lets the overlay settle.
    async fn form_meshes(&mut self) -> anyhow::Result<()> {
        self.say("waiting for the gossip meshes");
        let (n, f) = (self.config.nodes, self.config.federations);
        let meshing = Instant::now();
        let mesh_deadline =
            Instant::now() + Duration::from_secs(60) + Duration::from_millis(20 * n as u64);
        let asked = self.mesh_queries();
        let low = self.base.mesh_n_low;
        let wanted: Vec<usize> = self
            .nodes
            .iter()
            .map(|s| low.min(self.fed_size[s.federation] - 1))
            .chain((0..f).map(|fed| low.min(self.fed_size[fed]).min(self.config.degree)))
            .collect();
        loop {
            let sizes = mesh_sizes(asked.clone()).await?;
            let thin = sizes.iter().zip(&wanted).filter(|(s, w)| s < w).count();
            self.report.thin_meshes = thin;
            if thin == 0 || Instant::now() > mesh_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.report.mesh_time = meshing.elapsed();
        let settle = self.config.settle;
        if !settle.is_zero() {
            self.say(&format!(
                "letting the overlay settle ({:.0} s)",
                settle.as_secs_f64()
            ));
            tokio::time::sleep(settle).await;
        }
        Ok(())
    }

    /// Wired and idle: connections per peer, resident memory, and the cores the idle overlay
    /// keeps busy (over five seconds).
    async fn measure_idle(&mut self) -> anyhow::Result<()> {
        let connections = connection_counts(self.peers.clone()).await?;
        self.report.connections_per_peer = connections as f64 / (self.config.nodes + 1) as f64;
        self.report.setup_rss = rss();
        let idle = Duration::from_secs(5);
        let cpu_idle = cpu_time();
        tokio::time::sleep(idle).await;
        self.report.idle_cores =
            cpu_time().saturating_sub(cpu_idle).as_secs_f64() / idle.as_secs_f64();
        let line = format!(
            "wired: {:.1} connections per peer, {} resident, idle overlay {:.2} cores",
            self.report.connections_per_peer,
            mib(self.report.setup_rss),
            self.report.idle_cores
        );
        self.say(&line);
        Ok(())
    }

    /// Phase 4, cold convergence: the publishers publish their first ads over the boot
    /// window in a random order (and re-announce), until every peer holds what it should or
    /// the timeout; a progress line every ten seconds.
    async fn converge(&mut self) -> anyhow::Result<()> {
        let (n, k) = (self.config.nodes, self.report.publishers);
        let expected: usize = self.shared.peers.iter().map(|t| t.expected).sum();
        self.say(&format!(
            "{k} nodes publish; waiting until {expected} (peer, publisher) pairs are known"
        ));
        let mut order: Vec<usize> = (0..n).filter(|i| self.publishing[*i]).collect();
        rand::seq::SliceRandom::shuffle(&mut order[..], &mut self.rng);
        let boot = self.config.boot;
        let offsets: Vec<(Duration, usize)> = order
            .iter()
            .enumerate()
            .map(|(rank, &i)| (boot.mul_f64(rank as f64 / k as f64), i))
            .collect();
        let published = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (stop_tx, stop_rx) = watch::channel(false);
        let stats_before = stats_sum(self.node_peers().to_vec()).await?;
        let cpu_before = cpu_time();
        let started_us = self.shared.now_us();
        let wall = Instant::now();
        let announcer = tokio::spawn(
            Announcer {
                shared: self.shared.clone(),
                nodes: self.nodes.clone(),
                handles: self.node_peers().to_vec(),
                agents: self.agents.clone(),
                offsets,
                reannounce: self.config.reannounce,
                published: published.clone(),
                failed: failed.clone(),
            }
            .run(stop_rx),
        );
        let deadline = Instant::now() + self.config.timeout;
        let mut last_report = Instant::now();
        loop {
            let known = self.shared.known();
            if known >= expected || Instant::now() > deadline {
                self.report.delivered = (known, expected);
                break;
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                let line = self
                    .convergence_line(known, expected, wall, &published, &stats_before, cpu_before)
                    .await?;
                self.say(&line);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.report.wall = wall.elapsed();
        self.report.cpu = cpu_time().saturating_sub(cpu_before);
        let _ = stop_tx.send(true);
        let _ = announcer.await;
        self.report.published = published.load(Ordering::Relaxed);
        let failed = failed.load(Ordering::Relaxed);
        if failed > 0 {
            self.say(&format!("{failed} ads could not be published"));
        }
        self.report.converged = self.report.delivered.0 >= self.report.delivered.1;
        self.tally_convergence(started_us, &stats_before).await
    }

    /// How cold convergence is going, for a progress line.
    async fn convergence_line(
        &self,
        known: usize,
        expected: usize,
        wall: Instant,
        published: &AtomicUsize,
        before: &OverlayStats,
        cpu_before: Duration,
    ) -> anyhow::Result<String> {
        let n = self.config.nodes;
        let complete = self
            .shared
            .peers
            .iter()
            .filter(|t| t.complete_us.load(Ordering::Acquire) > 0)
            .count();
        let stats = stats_sum(self.node_peers().to_vec()).await?;
        let links = connection_counts(self.peers.clone()).await?;
        Ok(format!(
            "  {:.0} s: {:.2}% known, {complete} of {} peers complete, {} ads published, {} accepted, {} ignored, {} rejected, {:.1} connections per peer, CPU {:.0} s",
            wall.elapsed().as_secs_f64(),
            100.0 * known as f64 / expected as f64,
            n + 1,
            published.load(Ordering::Relaxed),
            stats.ads_accepted - before.ads_accepted,
            stats.ads_ignored - before.ads_ignored,
            stats.ads_rejected - before.ads_rejected,
            links as f64 / (n + 1) as f64,
            cpu_time().saturating_sub(cpu_before).as_secs_f64()
        ))
    }

    /// What cold convergence took: per-peer completion and per-ad spread times (from
    /// `started_us`), the ads validated, ignored and rejected since `before`, and the meshes.
    async fn tally_convergence(
        &mut self,
        started_us: u64,
        before: &OverlayStats,
    ) -> anyhow::Result<()> {
        let n = self.config.nodes;
        let shared = &self.shared;
        let after = |us: u64, from: u64| Duration::from_micros(us.saturating_sub(from));
        let mut completion: Vec<Duration> = shared
            .peers
            .iter()
            .filter_map(|t| {
                let us = t.complete_us.load(Ordering::Acquire);
                (us > 0).then(|| after(us, started_us))
            })
            .collect();
        completion.sort();
        self.report.completion = completion;
        let broker_us = shared.peers[n].complete_us.load(Ordering::Acquire);
        self.report.broker_complete = (broker_us > 0).then(|| after(broker_us, started_us));
        let mut spread: Vec<Duration> = shared
            .ads
            .iter()
            .filter_map(|a| {
                let done = a.complete_us.load(Ordering::Acquire);
                (done > 0).then(|| after(done, a.published_us.load(Ordering::Acquire)))
            })
            .collect();
        spread.sort();
        self.report.spread = spread;
        let stats = stats_sum(self.node_peers().to_vec()).await?;
        let report = &mut self.report;
        report.ads_per_node =
            stats.ads_accepted.saturating_sub(before.ads_accepted) as f64 / n as f64;
        report.ignored_per_node =
            stats.ads_ignored.saturating_sub(before.ads_ignored) as f64 / n as f64;
        report.rejected = stats.ads_rejected.saturating_sub(before.ads_rejected);
        report.lagged = self
            .shared
            .peers
            .iter()
            .map(|t| t.lagged.load(Ordering::Relaxed))
            .sum();
        let mesh: usize = mesh_sizes(self.mesh_queries()[..n].to_vec())
            .await?
            .iter()
            .sum();
        self.report.mesh_per_peer = mesh as f64 / n as f64;
        Ok(())
    }

    /// Phase 5 (after convergence only): single ad updates by random nodes, one at a time on
    /// the quiet overlay, each timed until every node of its federation and the broker hold it.
    async fn time_updates(&mut self) -> anyhow::Result<()> {
        let updates = self.config.updates;
        if !self.report.converged || updates == 0 {
            return Ok(());
        }
        self.say(&format!("timing {updates} single ad updates"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let shared = self.shared.clone();
        for _ in 0..updates {
            let i = self.rng.gen_range(0..self.config.nodes);
            let sim = &self.nodes[i];
            let load = self.rng.gen_range(0..sim.capacity.cpu_millis);
            let (seq, ad) = sim.next_ad(self.agents[sim.federation], load);
            let expected = self.fed_size[sim.federation];
            shared.update_hits.store(0, Ordering::Release);
            shared.update_last_us.store(0, Ordering::Release);
            *shared
                .update
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some((sim.node.key.public(), seq));
            let start_us = shared.now_us();
            publish(&self.peers[i], ad).await?;
            let deadline = Instant::now() + UPDATE_TIMEOUT;
            while shared.update_hits.load(Ordering::Acquire) < expected && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if shared.update_hits.load(Ordering::Acquire) >= expected {
                let last = shared.update_last_us.load(Ordering::Acquire);
                self.report
                    .updates
                    .push(Duration::from_micros(last.saturating_sub(start_us)));
            } else {
                self.report.updates_lost += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.report.updates.sort();
        Ok(())
    }

    /// Phase 5b: the first federation's authority revokes a principal; one random node of it
    /// publishes the list, and every peer (each trusts every federation, so each follows its
    /// revocation topic: the nodes of both federations and the broker) is timed from
    /// publication until its overlay applied the list.
    async fn time_revocation(&mut self) -> anyhow::Result<()> {
        let followers: Vec<OverlayHandle> = self.peers.clone();
        self.say(&format!(
            "timing a revocation list's spread to {} peers",
            followers.len()
        ));
        let waits: Vec<_> = followers
            .iter()
            .map(|peer| {
                let mut applied = peer.revocations();
                applied.borrow_and_update();
                tokio::spawn(async move {
                    tokio::time::timeout(REVOCATION_TIMEOUT, applied.changed())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .map(|()| Instant::now())
                })
            })
            .collect();
        let publisher = loop {
            let i = self.rng.gen_range(0..self.config.nodes);
            if self.nodes[i].federation == 0 {
                break i;
            }
        };
        let published = Instant::now();
        self.peers[publisher]
            .publish_revocation(self.revocation.clone())
            .await
            .context("publishing the revocation list")?;
        let mut reached = Vec::with_capacity(waits.len());
        for wait in waits {
            if let Some(at) = wait.await.context("a revocation waiter")? {
                reached.push(at.saturating_duration_since(published));
            }
        }
        reached.sort();
        self.report.revocation = Some(RevocationSpread {
            peers: followers.len(),
            reached,
        });
        Ok(())
    }

    /// The broker's view as the planner takes it, topped up (when only a sample published)
    /// with the ads of the nodes that did not publish, validated as the overlay validates.
    fn candidates(&self) -> Vec<Candidate> {
        let mut view = self
            .shared
            .broker_view
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.report.publishers < self.config.nodes {
            let store = self
                .trust
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            for sim in self.nodes.iter() {
                let key = sim.node.key.public();
                if view.contains_key(&key) {
                    continue;
                }
                let (_, signed) = sim.next_ad(self.agents[sim.federation], sim.load_milli);
                if let Ok(ad) = store.validate_ad(&signed, unix_now(), None) {
                    view.insert(key, ad);
                }
            }
        }
        view.values()
            .filter_map(|ad| {
                let fed = self.names.iter().position(|x| *x == ad.federation)?;
                let share = ad.shares.first()?;
                Some(Candidate {
                    node: ad.node,
                    federation: ad.federation.clone(),
                    site: ad.site.clone(),
                    agent: share.agent,
                    free: share.free,
                    prices: self.prices[fed],
                    load_milli: ad.measured.load_milli,
                })
            })
            .collect()
    }

    /// Phase 6: the planner over [`Sim::candidates`] for `slivers` best-effort slivers spread
    /// over many sites; the median time of five runs.
    fn plan(&mut self) {
        let candidates = self.candidates();
        self.report.candidates = candidates.len();
        let sites = candidates
            .iter()
            .map(|c| c.site.as_str())
            .collect::<HashSet<_>>()
            .len();
        let slivers = self.config.slivers;
        let request = SliceRequest {
            name: "fed0-site0_sim".into(),
            principal: SecretKey::generate().public(),
            principal_federation: self.names[0].clone(),
            kind: SliceKind::Regular,
            per_sliver: Resources {
                cpu_millis: 1000,
                memory_bytes: 1 << 30,
                disk_bytes: 10 << 30,
                egress_kbps: 5_000,
                ports: 0,
            },
            target: SliverTarget::Count(slivers),
            constraints: SliceConstraints {
                federations: self.names.clone(),
                min_sites: (slivers / 2).min(sites as u32 / 2),
                exclude_nodes: Vec::new(),
                max_price: None,
            },
            duration_secs: 3600,
            mode: AcquireMode::BestEffort,
            net: Default::default(),
        };
        let mut times = Vec::new();
        let mut last_plan = None;
        for _ in 0..5 {
            let t = Instant::now();
            let p = plan(&request, &candidates);
            times.push(t.elapsed());
            last_plan = Some(p);
        }
        times.sort();
        self.report.plan_time = times[times.len() / 2];
        if let Some(p) = last_plan {
            self.report.chosen = p.chosen.len();
            self.report.chosen_sites = p
                .chosen
                .iter()
                .map(|s| s.site.as_str())
                .collect::<HashSet<_>>()
                .len();
            self.report.satisfiable = p.satisfiable;
            self.report.explanation = p.explanation;
        }
    }

    /// The peak memory, then every peer shut down; the report.
    async fn shut_down(mut self) -> SimReport {
        self.report.peak_rss = peak_rss();
        self.say("shutting the peers down");
        let mut stopping = tokio::task::JoinSet::new();
        for handle in self.peers {
            stopping.spawn(async move { handle.shutdown().await });
        }
        while stopping.join_next().await.is_some() {}
        self.report
    }
}

/// The overlay configuration every peer of `config` starts from (each adds its federations).
fn overlay_base(config: &SimConfig) -> OverlayConfig {
    let max_connections = if config.max_connections == 0 {
        3 * config.degree as u32 + 2
    } else {
        config.max_connections
    };
    OverlayConfig {
        kademlia: false,
        target_peers: 0,
        max_connections,
        idle_timeout: IDLE_TIMEOUT,
        gossip_heartbeat: config.heartbeat,
        ad_queue: NODE_AD_QUEUE,
        command_queue: 64,
        ..OverlayConfig::memory()
    }
}

/// Runs one simulation per node count in `sizes` (each in a fresh runtime), printing each
/// report, then a comparison table.
pub fn run_sizes(sizes: &[usize], config: &SimConfig) -> anyhow::Result<Vec<SimReport>> {
    let configs: Vec<SimConfig> = sizes
        .iter()
        .map(|&nodes| SimConfig {
            nodes,
            ..config.clone()
        })
        .collect();
    run_configs(&configs)
}

/// The benchmark's runs: 1,000 nodes that all publish, then 5,000 nodes of which a random
/// 100 publish.
///
/// One machine carries the work of every node: each validated delivery of an ad costs the
/// simulation about 0.65 ms of CPU in all (gossip, yamux, noise, the signature check), so
/// cold convergence of `n` publishers costs about `n²/F` of those, on two cores here, where
/// each real node would do its own `n/F`. The first ads are therefore spread over a boot
/// window, as nodes of a real testbed come up over time, at a rate the two cores keep up
/// with (a burst faster than that only measures how gossip sheds load when receivers fall
/// behind), and re-announcement heals what was shed. At 5,000 nodes a sample of publishers
/// keeps the run within minutes; the update latency (single ads on the quiet overlay, every
/// node of the federation a receiver) is the figure that speaks for the full size.
pub fn bench_configs(base: &SimConfig) -> Vec<SimConfig> {
    vec![
        SimConfig {
            nodes: 1000,
            publishers: 0,
            boot: Duration::from_secs(150),
            reannounce: Duration::from_secs(300),
            ..base.clone()
        },
        SimConfig {
            nodes: 5000,
            publishers: 100,
            boot: Duration::from_secs(90),
            reannounce: Duration::from_secs(300),
            ..base.clone()
        },
    ]
}

/// Runs each simulation of `configs` (each in a fresh runtime), printing each report, then a
/// comparison table.
pub fn run_configs(configs: &[SimConfig]) -> anyhow::Result<Vec<SimReport>> {
    let mut reports = Vec::new();
    for config in configs {
        let nodes = config.nodes;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("building the tokio runtime")?;
        println!(
            "== simulation: {nodes} nodes, {} federations, {} dials per node ({} worker threads)",
            config.federations,
            config.degree,
            std::thread::available_parallelism().map_or(1, |p| p.get())
        );
        let started = Instant::now();
        let report = runtime.block_on(run(config, |line| eprintln!("   {line}")))?;
        runtime.shutdown_timeout(Duration::from_secs(10));
        println!("{report}");
        println!("   (whole run {:.1} s)\n", started.elapsed().as_secs_f64());
        reports.push(report);
    }
    if reports.len() > 1 {
        println!("{}", summary_table(&reports));
    }
    Ok(reports)
}

/// An error naming every run that did not converge within its timeout (one line), or `Ok`
/// when all did: `testnet sim` exits non-zero on it.
pub fn check_converged(reports: &[SimReport], configs: &[SimConfig]) -> anyhow::Result<()> {
    let failed: Vec<String> = reports
        .iter()
        .zip(configs)
        .filter(|(r, _)| !r.converged)
        .map(|(r, c)| {
            format!(
                "{} nodes: {} of {} (peer, node) pairs in {}",
                c.nodes,
                r.delivered.0,
                r.delivered.1,
                secs(c.timeout)
            )
        })
        .collect();
    let unrevoked: Vec<String> = reports
        .iter()
        .filter_map(|r| {
            let spread = r.revocation.as_ref()?;
            (spread.reached.len() < spread.peers).then(|| {
                format!(
                    "{} nodes: a revocation list reached {} of {} peers",
                    r.nodes,
                    spread.reached.len(),
                    spread.peers
                )
            })
        })
        .collect();
    if failed.is_empty() {
        anyhow::ensure!(
            unrevoked.is_empty(),
            "a revocation did not reach every peer ({}): its topic's mesh is too thin",
            unrevoked.join("; ")
        );
        return Ok(());
    }
    anyhow::bail!(
        "ads did not converge ({}); give it longer with --timeout, or re-announce lost ads \
         with --reannounce-secs",
        failed.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_spread_counts_peers_that_never_applied_it() {
        let spread = RevocationSpread {
            peers: 4,
            reached: vec![
                Duration::from_millis(10),
                Duration::from_millis(20),
                Duration::from_millis(3000),
            ],
        };
        assert_eq!(spread.by_share(50.0), Some(Duration::from_millis(20)));
        assert_eq!(spread.by_share(75.0), Some(Duration::from_millis(3000)));
        assert_eq!(spread.by_share(99.0), None, "the fourth peer never got it");
        assert!((spread.within(Duration::from_secs(2)) - 50.0).abs() < 1e-9);
        let report = SimReport {
            converged: true,
            revocation: Some(spread),
            ..SimReport::default()
        };
        let err = check_converged(&[report], &[SimConfig::default()]).unwrap_err();
        assert!(err.to_string().contains("reached 3 of 4"), "{err}");
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<Duration> = (1..=10).map(Duration::from_secs).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_secs(5));
        assert_eq!(percentile(&v, 95.0), Duration::from_secs(10));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn a_peer_counts_each_node_once_and_completes_at_the_last() {
        let shared = Shared {
            epoch: Instant::now(),
            index: HashMap::new(),
            peers: vec![PeerTally::new(70, 2), PeerTally::new(70, 1)],
            ads: (0..70)
                .map(|_| AdTally {
                    expected: 2,
                    ..AdTally::default()
                })
                .collect(),
            update: RwLock::new(None),
            update_hits: AtomicUsize::new(0),
            update_last_us: AtomicU64::new(0),
            broker_view: Mutex::new(HashMap::new()),
        };
        shared.holds(0, 65);
        shared.holds(0, 65);
        assert_eq!(shared.peers[0].known.load(Ordering::Relaxed), 1);
        assert_eq!(shared.peers[0].complete_us.load(Ordering::Relaxed), 0);
        shared.holds(0, 3);
        assert!(shared.peers[0].complete_us.load(Ordering::Relaxed) > 0);
        assert_eq!(shared.ads[65].complete_us.load(Ordering::Relaxed), 0);
        shared.holds(1, 65);
        assert!(shared.ads[65].complete_us.load(Ordering::Relaxed) > 0);
        assert_eq!(shared.known(), 3);
    }
}
