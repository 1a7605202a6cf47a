//! The simulation's cost model (`testnet sim --model virtual`): the overlay of [`crate::sim`]
//! as a discrete-event simulation in virtual (simulated) time, so that 5,000 or 20,000 nodes
//! all publishing take minutes of wall time instead of one machine doing every node's
//! signature checks.
//!
//! What is simulated, with the full simulation's rules:
//! - **Topology**: nodes round-robin over federations, sites of [`SITE_SIZE`] nodes; each node
//!   dials `degree` random nodes of its federation (a dial to a peer at `max_connections` is
//!   refused and another tried); one broker peer follows every federation and dials `degree`
//!   nodes of each. Every link gets a one-way latency drawn from a range (default 20–80 ms).
//! - **Gossipsub as the overlay configures it** (`federation/src/overlay/swarm.rs`): one topic
//!   per federation; meshes formed by heartbeats (graft under `D_lo` up to `D`, prune over
//!   `D_hi` down to `D`, a pruned pair backs off); flood publishing (the publisher sends to
//!   every peer of the topic); eager push of a validated message to the mesh, except the peer
//!   it came from and peers whose IDONTWANT arrived (sent to the mesh on the first copy of a
//!   message larger than 1,000 bytes, as gossipsub 1.2 does); lazy gossip: every heartbeat
//!   (each peer its own phase) IHAVE of what it validated in the last `history_gossip`
//!   heartbeats to `max(gossip_lazy, gossip_factor × non-mesh peers)` random non-mesh peers
//!   (at most 5,000 ids), IWANT of what the receiver has neither seen nor asked for, and the
//!   message back; duplicates are dropped by message id on arrival, before validation.
//! - **Costs**: every peer sends through an uplink that serializes what it sends (the real
//!   encoded size of each ad plus the topic, at `bandwidth`) and processes its inbound queue
//!   serially: the first copy of a message costs the verification time, a duplicate the
//!   message id (a SHA-256 of the ad). Each distinct ad is decoded and verified once for real
//!   ([`TrustStore::validate_ad`] with a cold certificate cache: the ad's signature and its
//!   membership certificate), which both keeps correctness honest (every ad must pass) and
//!   measures the time every simulated receiver is charged (the median, so a preempted check
//!   on a busy machine does not stand for all). With `shared_cores` the peers instead share
//!   that many cores, as the full simulation's peers share this machine's.
//!
//! What is measured: cold convergence (the publishers publish at once or over a boot window,
//! until every peer holds the ad of every publisher of its federations), per-peer completion
//! and per-ad spread, copies per delivery (full copies of an ad received, eager and answering
//! IWANT, over distinct deliveries to peers other than the publisher), bytes per peer, and
//! then the spread of single updates, each alone on a quiet overlay. [`compare`] runs the full
//! simulation and this model side by side.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use capability_schema::ad::ShareState;
use capability_schema::codec::decode_with_limit;
use capability_schema::{PublicKey, ResourceAd, Resources, SecretKey, Signed};
use federation::overlay::MAX_AD_BYTES;
use federation::testing::TestFederation;
use federation::{OverlayConfig, TrustStore, unix_now};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::sim::{SITE_SIZE, SimConfig, SimReport, peak_rss};

/// Gossipsub's IDONTWANT threshold: a peer that receives the first copy of a message larger
/// than this tells its mesh not to send it (libp2p-gossipsub's default, which the overlay keeps).
const IDONTWANT_THRESHOLD: usize = 1000;
/// Most message ids in one IHAVE (and IWANTs per IHAVE), gossipsub's default.
const MAX_IHAVE_LENGTH: usize = 5000;
/// Bytes of a message id on the wire (the overlay's ids are 20 bytes of SHA-256).
const ID_BYTES: u64 = 20;
/// Bytes of an RPC's framing and control fields beyond its payload.
const RPC_OVERHEAD: u64 = 16;
/// Lifetime of the model's ads.
const AD_TTL_SECS: u64 = 6 * 3600;
/// Heartbeats of mesh upkeep before the first ad (the full simulation waits for its meshes too).
const MESH_ROUNDS: usize = 20;
/// Sentinel of the per-(peer, message) times: never.
const NEVER: u32 = u32::MAX;

/// Which simulation `testnet sim` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Model {
    /// Thousands of real libp2p overlays in one process, in wall time.
    Full,
    /// The cost model: a discrete-event simulation in simulated time.
    Virtual,
    /// The full simulation, then the model calibrated to it, printed side by side.
    Compare,
}

/// A latency range, `LO-HI` in milliseconds (or one value).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyRange {
    /// Lowest one-way latency of a link.
    pub lo: Duration,
    /// Highest.
    pub hi: Duration,
}

impl FromStr for LatencyRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ms = |x: &str| {
            x.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|v| Duration::from_secs_f64(v / 1000.0))
                .ok_or_else(|| {
                    format!("{x:?} is not a latency in milliseconds; write LO-HI, e.g. 20-80")
                })
        };
        let (lo, hi) = match s.split_once('-') {
            Some((lo, hi)) => (ms(lo)?, ms(hi)?),
            None => (ms(s)?, ms(s)?),
        };
        if hi < lo {
            return Err(format!(
                "{s:?}: the highest latency is under the lowest; write LO-HI"
            ));
        }
        Ok(LatencyRange { lo, hi })
    }
}

impl fmt::Display for LatencyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{} ms",
            self.lo.as_secs_f64() * 1000.0,
            self.hi.as_secs_f64() * 1000.0
        )
    }
}

/// `testnet sim`'s options of the cost model.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Virtual model: one-way latency of each link, drawn once per link, uniformly in LO-HI
    /// milliseconds.
    #[arg(long, default_value = "20-80")]
    pub latency_ms: LatencyRange,
    /// Virtual model: each peer's uplink in Mbit/s; what a peer sends waits for it.
    #[arg(long, default_value_t = 100.0)]
    pub bandwidth_mbps: f64,
    /// Virtual model: the peers share this many cores (0: each its own, as real nodes;
    /// `--model compare` uses this machine's).
    #[arg(long, default_value_t = 0)]
    pub shared_cores: usize,
    /// Virtual model: charge this per first copy of an ad instead of the measured verification.
    #[arg(long)]
    pub delivery_cost_us: Option<f64>,
    /// Virtual model: charge this per duplicate copy (the message id, a SHA-256 of the ad).
    #[arg(long, default_value_t = 3.0)]
    pub duplicate_cost_us: f64,
    /// `--model compare`: link latency of the in-memory transport the full simulation runs on.
    #[arg(long, default_value = "0.1-0.3")]
    pub memory_latency_ms: LatencyRange,
}

impl Default for ModelArgs {
    fn default() -> Self {
        ModelArgs {
            latency_ms: LatencyRange {
                lo: Duration::from_millis(20),
                hi: Duration::from_millis(80),
            },
            bandwidth_mbps: 100.0,
            shared_cores: 0,
            delivery_cost_us: None,
            duplicate_cost_us: 3.0,
            memory_latency_ms: LatencyRange {
                lo: Duration::from_micros(100),
                hi: Duration::from_micros(300),
            },
        }
    }
}

/// What the model simulates.
#[derive(Debug, Clone)]
pub struct VirtualConfig {
    /// Node peers.
    pub nodes: usize,
    /// Federations (nodes round-robin).
    pub federations: usize,
    /// Peers of its federation each node dials.
    pub degree: usize,
    /// Most connections per peer.
    pub max_connections: usize,
    /// Gossipsub heartbeat.
    pub heartbeat: Duration,
    /// Mesh degree `D`.
    pub mesh_n: usize,
    /// `D_lo`: graft under it.
    pub mesh_n_low: usize,
    /// `D_hi`: prune over it.
    pub mesh_n_high: usize,
    /// Fewest peers to send IHAVE to per heartbeat.
    pub gossip_lazy: usize,
    /// Share of the non-mesh peers to send IHAVE to, if more than `gossip_lazy`.
    pub gossip_factor: f64,
    /// Heartbeats of history an IHAVE tells of.
    pub history_gossip: u32,
    /// Link latencies.
    pub latency: LatencyRange,
    /// Uplink of each peer, in bits per second (infinite: sending takes no time).
    pub bandwidth_bps: f64,
    /// Cores the peers share (0: each peer its own).
    pub shared_cores: usize,
    /// Charge per first copy instead of the measured verification.
    pub delivery_cost: Option<Duration>,
    /// Charge per duplicate copy.
    pub duplicate_cost: Duration,
    /// Nodes that publish (a random sample; 0: every node).
    pub publishers: usize,
    /// First ads spread evenly over this window (0: all at once).
    pub boot: Duration,
    /// Single updates to time after cold convergence.
    pub updates: usize,
    /// Longest simulated time for cold convergence.
    pub timeout: Duration,
    /// Seed of the graph, latencies, publishers and gossip choices.
    pub seed: u64,
}

impl VirtualConfig {
    /// The model of `sim` (its topology, heartbeat, publishers, boot window, updates and
    /// seed), with gossipsub's parameters as the overlay configures them and the costs of
    /// `args`.
    pub fn new(sim: &SimConfig, args: &ModelArgs) -> VirtualConfig {
        let overlay = OverlayConfig::default();
        let max_connections = if sim.max_connections == 0 {
            3 * sim.degree + 2
        } else {
            sim.max_connections as usize
        };
        VirtualConfig {
            nodes: sim.nodes,
            federations: sim.federations,
            degree: sim.degree,
            max_connections,
            heartbeat: sim.heartbeat,
            mesh_n: overlay.mesh_n,
            mesh_n_low: overlay.mesh_n_low,
            mesh_n_high: overlay.mesh_n_high,
            // swarm.rs: `gossip_lazy(mesh_n)`; the factor and history are gossipsub's defaults.
            gossip_lazy: overlay.mesh_n,
            gossip_factor: 0.25,
            history_gossip: 3,
            latency: args.latency_ms,
            bandwidth_bps: args.bandwidth_mbps * 1e6,
            shared_cores: args.shared_cores,
            delivery_cost: args
                .delivery_cost_us
                .map(|us| Duration::from_secs_f64(us.max(0.0) / 1e6)),
            duplicate_cost: Duration::from_secs_f64(args.duplicate_cost_us.max(0.0) / 1e6),
            publishers: sim.publishers,
            boot: sim.boot,
            updates: sim.updates,
            // The full simulation's timeout is wall time; simulated time is far shorter.
            timeout: sim.timeout,
            seed: sim.seed,
        }
    }

    /// The random source of a run: the graph is drawn from it first.
    pub fn rng(&self) -> StdRng {
        StdRng::seed_from_u64(self.seed ^ self.nodes as u64)
    }

    fn validate(&self) -> Result<(), VirtualError> {
        let bad = |why: String| Err(VirtualError::Config(why));
        if self.nodes < 2 {
            return bad("a simulation needs at least 2 nodes".into());
        }
        if self.federations < 1 || self.federations * 2 > self.nodes {
            return bad(format!(
                "between 1 and {} federations (at least two nodes each)",
                self.nodes / 2
            ));
        }
        if self.federations > usize::from(u16::MAX) {
            return bad("at most 65,535 federations".into());
        }
        if self.degree < 1 {
            return bad("every node must dial at least one peer".into());
        }
        if self.heartbeat.is_zero() {
            return bad("the heartbeat must be longer than zero".into());
        }
        if self.bandwidth_bps <= 0.0 || self.bandwidth_bps.is_nan() {
            return bad("the bandwidth must be positive".into());
        }
        if self.latency.hi > Duration::from_secs(4) {
            return bad("link latencies above 4 s are not modelled; lower --latency-ms".into());
        }
        Ok(())
    }
}

/// Why the model could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtualError {
    /// The configuration cannot be simulated.
    #[error("cannot simulate this: {0}")]
    Config(String),
    /// A real verification refused one of the model's ads (a bug in how it made them).
    #[error(
        "ad of node {node} failed its real verification ({why}); the model's ads must be valid"
    )]
    AdRejected {
        /// The node.
        node: usize,
        /// The rejection.
        why: String,
    },
}

/// One link of a topic's graph, as seen from one end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Link {
    /// The other end (index in the topic's members).
    peer: u32,
    /// One-way latency, in nanoseconds.
    latency: u32,
}

/// One federation's topic: its members (its nodes, then the broker) and their graph.
#[derive(Debug, Clone)]
struct Topic {
    /// Global peer of each member.
    members: Vec<u32>,
    /// Connections of each member within the topic.
    links: Vec<Vec<Link>>,
    /// Mesh of each member (a subset of its links, symmetric).
    mesh: Vec<Vec<Link>>,
}

/// The overlay's graph: one topic per federation.
#[derive(Debug, Clone)]
pub struct Topology {
    topics: Vec<Topic>,
    /// Per global peer (nodes, then the broker): its topics and its index in each.
    peer_topics: Vec<Vec<(u16, u32)>>,
    /// Dials refused because a peer was full, then retried elsewhere.
    refused: usize,
}

impl Topology {
    /// The graph of `config`: each node dials `degree` random others of its federation (the
    /// broker `degree` of each), in a random order, each dial refused if either end already
    /// has `max_connections`; then `MESH_ROUNDS` heartbeats of mesh upkeep.
    pub fn build(config: &VirtualConfig, rng: &mut StdRng) -> Topology {
        let (n, f) = (config.nodes, config.federations);
        let broker = n as u32;
        let mut topics: Vec<Topic> = (0..f)
            .map(|x| {
                let mut members: Vec<u32> =
                    (0..n as u32).filter(|i| *i as usize % f == x).collect();
                members.push(broker);
                let m = members.len();
                Topic {
                    members,
                    links: vec![Vec::new(); m],
                    mesh: vec![Vec::new(); m],
                }
            })
            .collect();
        let mut peer_topics: Vec<Vec<(u16, u32)>> = vec![Vec::new(); n + 1];
        for (t, topic) in topics.iter().enumerate() {
            for (local, &g) in topic.members.iter().enumerate() {
                peer_topics[g as usize].push((t as u16, local as u32));
            }
        }
        let mut connections = vec![0usize; n + 1];
        // (topic, dialing member): every node once, the broker once per topic.
        let mut dialers: Vec<(usize, usize)> = Vec::with_capacity(n + f);
        for (t, topic) in topics.iter().enumerate() {
            dialers.extend((0..topic.members.len()).map(|local| (t, local)));
        }
        dialers.shuffle(rng);
        let spare = 4;
        let mut refused = 0;
        for (t, me) in dialers {
            let topic = &mut topics[t];
            let m = topic.members.len();
            let nodes = m - 1;
            let is_broker = me == nodes;
            let others: Vec<usize> = (0..nodes).filter(|o| *o != me).collect();
            let k = (config.degree + spare).min(others.len());
            let mut made = 0;
            for p in rand::seq::index::sample(rng, others.len(), k) {
                if made == config.degree {
                    break;
                }
                let other = others[p];
                if topic.links[me].iter().any(|l| l.peer as usize == other) {
                    made += 1;
                    continue;
                }
                let (gme, gother) = (topic.members[me] as usize, topic.members[other] as usize);
                if connections[gme] >= config.max_connections && !is_broker
                    || connections[gother] >= config.max_connections
                {
                    refused += 1;
                    continue;
                }
                let latency = draw_latency(&config.latency, rng);
                topic.links[me].push(Link {
                    peer: other as u32,
                    latency,
                });
                topic.links[other].push(Link {
                    peer: me as u32,
                    latency,
                });
                connections[gme] += 1;
                connections[gother] += 1;
                made += 1;
            }
        }
        for topic in &mut topics {
            form_mesh(topic, config, rng);
        }
        Topology {
            topics,
            peer_topics,
            refused,
        }
    }

    /// Mesh peers per node, on average.
    pub fn mesh_per_node(&self) -> f64 {
        let (sum, count) = self.topics.iter().fold((0, 0), |(s, c), t| {
            let nodes = t.members.len() - 1;
            (
                s + t.mesh[..nodes].iter().map(Vec::len).sum::<usize>(),
                c + nodes,
            )
        });
        sum as f64 / count.max(1) as f64
    }

    /// Connections per node, on average.
    pub fn links_per_node(&self) -> f64 {
        let (sum, count) = self.topics.iter().fold((0, 0), |(s, c), t| {
            let nodes = t.members.len() - 1;
            (
                s + t.links[..nodes].iter().map(Vec::len).sum::<usize>(),
                c + nodes,
            )
        });
        sum as f64 / count.max(1) as f64
    }

    /// Whether every topic's graph is connected (every member reachable from the first).
    pub fn connected(&self) -> bool {
        self.topics.iter().all(|t| {
            let mut seen = vec![false; t.members.len()];
            let mut stack = vec![0usize];
            seen[0] = true;
            while let Some(p) = stack.pop() {
                for l in &t.links[p] {
                    if !seen[l.peer as usize] {
                        seen[l.peer as usize] = true;
                        stack.push(l.peer as usize);
                    }
                }
            }
            seen.iter().all(|s| *s)
        })
    }
}

fn draw_latency(range: &LatencyRange, rng: &mut StdRng) -> u32 {
    let (lo, hi) = (range.lo.as_nanos() as u32, range.hi.as_nanos() as u32);
    if hi > lo { rng.gen_range(lo..=hi) } else { lo }
}

/// Heartbeats of mesh upkeep on `topic`: a member under `D_lo` grafts random non-mesh links
/// (not backing off) up to `D`; one over `D_hi` prunes random mesh peers down to `D`, and the
/// pair backs off. Both ends change at once (a GRAFT is accepted, a PRUNE obeyed).
fn form_mesh(topic: &mut Topic, config: &VirtualConfig, rng: &mut StdRng) {
    let m = topic.members.len();
    let mut backoff: HashSet<(u32, u32)> = HashSet::new();
    let mut order: Vec<usize> = (0..m).collect();
    for _ in 0..MESH_ROUNDS {
        order.shuffle(rng);
        for &p in &order {
            if topic.mesh[p].len() < config.mesh_n_low {
                let mut candidates: Vec<Link> = topic.links[p]
                    .iter()
                    .copied()
                    .filter(|l| {
                        !topic.mesh[p].iter().any(|x| x.peer == l.peer)
                            && !backoff.contains(&(p as u32, l.peer))
                    })
                    .collect();
                candidates.shuffle(rng);
                let want = config.mesh_n.saturating_sub(topic.mesh[p].len());
                for l in candidates.into_iter().take(want) {
                    topic.mesh[p].push(l);
                    topic.mesh[l.peer as usize].push(Link {
                        peer: p as u32,
                        latency: l.latency,
                    });
                }
            }
            if topic.mesh[p].len() > config.mesh_n_high {
                topic.mesh[p].shuffle(rng);
                let dropped: Vec<Link> = topic.mesh[p].drain(config.mesh_n..).collect();
                for l in dropped {
                    topic.mesh[l.peer as usize].retain(|x| x.peer as usize != p);
                    backoff.insert((p as u32, l.peer));
                    backoff.insert((l.peer, p as u32));
                }
            }
        }
    }
}

/// One ad to spread: who publishes it, when, how big it is and what verifying it costs.
#[derive(Debug, Clone, Copy)]
pub struct Message {
    /// Its topic (federation).
    pub topic: u16,
    /// Its publisher's index in the topic.
    pub origin: u32,
    /// When it is published, in nanoseconds of simulated time.
    pub at: u64,
    /// Its size on the wire (the encoded ad and the topic).
    pub bytes: u32,
    /// What verifying the first copy costs a receiver, in nanoseconds.
    pub cost: u64,
}

/// What happens, in order of simulated time (then of scheduling, so runs are deterministic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    at: u64,
    seq: u64,
    what: What,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum What {
    /// Message `msg` (index in its topic) is published by its origin.
    Publish { topic: u16, msg: u32 },
    /// A full copy of `msg` arrives at member `to` from member `from`.
    Receive {
        topic: u16,
        to: u32,
        from: u32,
        msg: u32,
    },
    /// Global peer `peer` finished verifying the head of its inbound queue.
    Verified { peer: u32 },
    /// Global peer `peer`'s gossipsub heartbeat.
    Heartbeat { peer: u32 },
    /// An IHAVE (ids in `ihaves[slot]`) arrives at `to` from `from`.
    IHave {
        topic: u16,
        to: u32,
        from: u32,
        slot: u32,
    },
}

/// A first copy waiting in a peer's inbound queue, verified at `done`.
#[derive(Debug, Clone, Copy)]
struct Pending {
    done: u64,
    topic: u16,
    from: u32,
    msg: u32,
}

/// Per topic, per (member, message): when the first copy arrived and when it was verified
/// (microseconds, [`NEVER`]), and whether an IWANT asked for it.
#[derive(Debug)]
struct TopicState {
    /// Messages of the topic (global message indexes).
    msgs: Vec<u32>,
    first: Vec<u32>,
    valid: Vec<u32>,
    asked: Vec<u64>,
}

impl TopicState {
    fn new(members: usize, msgs: Vec<u32>) -> TopicState {
        let cells = members * msgs.len();
        TopicState {
            msgs,
            first: vec![NEVER; cells],
            valid: vec![NEVER; cells],
            asked: vec![0; cells.div_ceil(64)],
        }
    }

    fn cell(&self, member: u32, msg: u32) -> usize {
        member as usize * self.msgs.len() + msg as usize
    }
}

/// What one run of the engine counted.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Whether every expected delivery happened before the timeout.
    pub complete: bool,
    /// Distinct (receiver, message) deliveries, and expected.
    pub delivered: (u64, u64),
    /// Per global peer, when it held every message of its topics (none: never), from time 0.
    pub peer_done: Vec<Option<Duration>>,
    /// Per message, from its publication until its last receiver verified it (none: never).
    pub spread: Vec<Option<Duration>>,
    /// When the last delivery happened.
    pub last: Duration,
    /// Full copies received (eager pushes and answers to IWANT), first copies included.
    pub copies: u64,
    /// Of which duplicates dropped by message id.
    pub duplicates: u64,
    /// Of which answers to IWANT.
    pub iwant_copies: u64,
    /// IHAVE messages sent.
    pub ihaves: u64,
    /// IDONTWANT messages sent.
    pub idontwants: u64,
    /// Bytes each global peer sent.
    pub bytes_out: Vec<u64>,
    /// Bytes each global peer received.
    pub bytes_in: Vec<u64>,
    /// Events handled.
    pub events: u64,
}

impl Outcome {
    /// Full copies received per distinct delivery.
    pub fn copies_per_delivery(&self) -> f64 {
        self.copies as f64 / self.delivered.0.max(1) as f64
    }
}

/// The discrete-event engine: one run of some messages over a topology.
struct Engine<'a> {
    config: &'a VirtualConfig,
    topo: &'a Topology,
    msgs: &'a [Message],
    state: Vec<TopicState>,
    rng: StdRng,
    queue: BinaryHeap<Reverse<Event>>,
    seq: u64,
    /// Per global peer: when its processor is free, when its uplink is, its inbound queue.
    busy: Vec<u64>,
    uplink: Vec<u64>,
    inbound: Vec<VecDeque<Pending>>,
    /// Free times of the shared cores (empty: each peer its own).
    cores: BinaryHeap<Reverse<u64>>,
    ihaves: Vec<Option<Rc<Vec<u32>>>>,
    free_slots: Vec<u32>,
    /// Per global peer: messages held and expected.
    known: Vec<u32>,
    expected: Vec<u32>,
    /// Per message: receivers holding it.
    receivers: Vec<u32>,
    delivered: u64,
    total: u64,
    out: Outcome,
}

impl<'a> Engine<'a> {
    fn new(config: &'a VirtualConfig, topo: &'a Topology, msgs: &'a [Message], seed: u64) -> Self {
        let peers = topo.peer_topics.len();
        let mut per_topic: Vec<Vec<u32>> = vec![Vec::new(); topo.topics.len()];
        for (i, m) in msgs.iter().enumerate() {
            per_topic[usize::from(m.topic)].push(i as u32);
        }
        let mut expected = vec![0u32; peers];
        let mut total = 0u64;
        for m in msgs {
            let topic = &topo.topics[usize::from(m.topic)];
            for (local, &g) in topic.members.iter().enumerate() {
                if local as u32 != m.origin {
                    expected[g as usize] += 1;
                    total += 1;
                }
            }
        }
        let state = topo
            .topics
            .iter()
            .zip(per_topic)
            .map(|(t, ids)| TopicState::new(t.members.len(), ids))
            .collect();
        // A peer that expects nothing holds everything from the start.
        let peer_done = expected
            .iter()
            .map(|e| (*e == 0).then_some(Duration::ZERO))
            .collect();
        Engine {
            config,
            topo,
            msgs,
            state,
            rng: StdRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            seq: 0,
            busy: vec![0; peers],
            uplink: vec![0; peers],
            inbound: vec![VecDeque::new(); peers],
            cores: (0..config.shared_cores).map(|_| Reverse(0)).collect(),
            ihaves: Vec::new(),
            free_slots: Vec::new(),
            known: vec![0; peers],
            expected,
            receivers: vec![0; msgs.len()],
            delivered: 0,
            total,
            out: Outcome {
                peer_done,
                spread: vec![None; msgs.len()],
                bytes_out: vec![0; peers],
                bytes_in: vec![0; peers],
                ..Outcome::default()
            },
        }
    }

    fn push(&mut self, at: u64, what: What) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at,
            seq: self.seq,
            what,
        }));
    }

    /// Runs until every message reached every receiver, or the timeout.
    fn run(mut self) -> Outcome {
        for t in 0..self.state.len() {
            for local in 0..self.state[t].msgs.len() {
                let at = self.msgs[self.state[t].msgs[local] as usize].at;
                self.push(
                    at,
                    What::Publish {
                        topic: t as u16,
                        msg: local as u32,
                    },
                );
            }
        }
        let beat = self.config.heartbeat.as_nanos() as u64;
        for peer in 0..self.busy.len() {
            let phase = self.rng.gen_range(0..beat.max(1));
            self.push(phase, What::Heartbeat { peer: peer as u32 });
        }
        let timeout = self.config.timeout.as_nanos() as u64;
        // Until every delivery happened; then on, without heartbeats, until the copies
        // already on their way have arrived (they count).
        while let Some(Reverse(event)) = self.queue.pop() {
            if event.at > timeout {
                break;
            }
            let done = self.delivered >= self.total;
            if done && matches!(event.what, What::Heartbeat { .. }) {
                continue;
            }
            self.out.events += 1;
            let now = event.at;
            match event.what {
                What::Publish { topic, msg } => self.publish(now, topic, msg),
                What::Receive {
                    topic,
                    to,
                    from,
                    msg,
                } => self.receive(now, topic, to, from, msg),
                What::Verified { peer } => self.verified(now, peer),
                What::Heartbeat { peer } => self.heartbeat(now, peer),
                What::IHave {
                    topic,
                    to,
                    from,
                    slot,
                } => self.ihave(now, topic, to, from, slot),
            }
        }
        self.out.complete = self.delivered >= self.total;
        self.out.delivered = (self.delivered, self.total);
        self.out
    }

    fn message(&self, topic: u16, msg: u32) -> &Message {
        &self.msgs[self.state[usize::from(topic)].msgs[msg as usize] as usize]
    }

    fn global(&self, topic: u16, member: u32) -> u32 {
        self.topo.topics[usize::from(topic)].members[member as usize]
    }

    /// Sends `bytes` from member `from` at `now` over `link`: when it arrives.
    fn send(&mut self, now: u64, topic: u16, from: u32, link: Link, bytes: u64) -> u64 {
        let g = self.global(topic, from) as usize;
        let wire = if self.config.bandwidth_bps.is_finite() {
            (bytes as f64 * 8.0 * 1e9 / self.config.bandwidth_bps) as u64
        } else {
            0
        };
        self.uplink[g] = self.uplink[g].max(now) + wire;
        self.out.bytes_out[g] += bytes;
        self.uplink[g] + u64::from(link.latency)
    }

    fn send_copy(&mut self, now: u64, topic: u16, from: u32, link: Link, msg: u32) {
        let bytes = u64::from(self.message(topic, msg).bytes);
        let at = self.send(now, topic, from, link, bytes);
        self.push(
            at,
            What::Receive {
                topic,
                to: link.peer,
                from,
                msg,
            },
        );
    }

    fn publish(&mut self, now: u64, topic: u16, msg: u32) {
        let origin = self.message(topic, msg).origin;
        let state = &mut self.state[usize::from(topic)];
        let cell = state.cell(origin, msg);
        state.first[cell] = micros(now);
        state.valid[cell] = micros(now);
        // Flood publishing: to every peer of the topic, not only the mesh.
        let topo = self.topo;
        for &link in &topo.topics[usize::from(topic)].links[origin as usize] {
            self.send_copy(now, topic, origin, link, msg);
        }
    }

    /// Charges global peer `g` `cost` from `now` on: when it is done.
    fn process(&mut self, now: u64, g: usize, cost: u64) -> u64 {
        let mut start = self.busy[g].max(now);
        if let Some(Reverse(core)) = self.cores.pop() {
            start = start.max(core);
            self.cores.push(Reverse(start + cost));
        }
        self.busy[g] = start + cost;
        self.busy[g]
    }

    fn receive(&mut self, now: u64, topic: u16, to: u32, from: u32, msg: u32) {
        let g = self.global(topic, to) as usize;
        let (bytes, cost) = {
            let m = self.message(topic, msg);
            (m.bytes, m.cost)
        };
        self.out.copies += 1;
        self.out.bytes_in[g] += u64::from(bytes);
        let t = usize::from(topic);
        let cell = self.state[t].cell(to, msg);
        if self.state[t].first[cell] != NEVER {
            self.out.duplicates += 1;
            let dup = self.config.duplicate_cost.as_nanos() as u64;
            if dup > 0 {
                self.process(now, g, dup);
            }
            return;
        }
        self.state[t].first[cell] = micros(now);
        if bytes as usize > IDONTWANT_THRESHOLD {
            let mesh = self.topo.topics[t].mesh[to as usize].len();
            let told = mesh.saturating_sub(1) as u64;
            self.out.idontwants += told;
            self.out.bytes_out[g] += told * (ID_BYTES + RPC_OVERHEAD);
        }
        let done = self.process(now, g, cost);
        self.inbound[g].push_back(Pending {
            done,
            topic,
            from,
            msg,
        });
        if self.inbound[g].len() == 1 {
            self.push(done, What::Verified { peer: g as u32 });
        }
    }

    fn verified(&mut self, now: u64, peer: u32) {
        let g = peer as usize;
        let Some(head) = self.inbound[g].pop_front() else {
            return;
        };
        if let Some(next) = self.inbound[g].front() {
            let at = next.done;
            self.push(at, What::Verified { peer });
        }
        let Pending {
            topic, from, msg, ..
        } = head;
        let t = usize::from(topic);
        let to = self.topo.peer_topics[g]
            .iter()
            .find(|(x, _)| *x == topic)
            .map_or(0, |(_, local)| *local);
        let cell = self.state[t].cell(to, msg);
        self.state[t].valid[cell] = micros(now);
        self.deliver(now, topic, to, msg);
        let (origin, big) = {
            let m = self.message(topic, msg);
            (m.origin, m.bytes as usize > IDONTWANT_THRESHOLD)
        };
        let topo = self.topo;
        let now_us = micros(now);
        for &link in &topo.topics[t].mesh[to as usize] {
            if link.peer == from {
                continue;
            }
            let other = self.state[t].cell(link.peer, msg);
            let lat_us = link.latency / 1000;
            // The peer said it has it (IDONTWANT on its first copy; a publisher sends none),
            // or without IDONTWANT, its own copy already came from it.
            let told = if big {
                link.peer != origin
                    && self.state[t].first[other] != NEVER
                    && self.state[t].first[other].saturating_add(lat_us) <= now_us
            } else {
                self.state[t].valid[other] != NEVER
                    && self.state[t].valid[other].saturating_add(lat_us) <= now_us
            };
            if !told {
                self.send_copy(now, topic, to, link, msg);
            }
        }
    }

    fn deliver(&mut self, now: u64, topic: u16, to: u32, msg: u32) {
        let global_msg = self.state[usize::from(topic)].msgs[msg as usize] as usize;
        let m = self.msgs[global_msg];
        if to == m.origin {
            return;
        }
        let g = self.global(topic, to) as usize;
        self.delivered += 1;
        self.known[g] += 1;
        if self.known[g] == self.expected[g] {
            self.out.peer_done[g] = Some(Duration::from_nanos(now));
        }
        self.receivers[global_msg] += 1;
        let wanted = self.topo.topics[usize::from(topic)].members.len() as u32 - 1;
        if self.receivers[global_msg] == wanted {
            self.out.spread[global_msg] = Some(Duration::from_nanos(now.saturating_sub(m.at)));
        }
        self.out.last = Duration::from_nanos(now);
    }

    fn heartbeat(&mut self, now: u64, peer: u32) {
        let beat = self.config.heartbeat.as_nanos() as u64;
        self.push(now + beat, What::Heartbeat { peer });
        let window = u64::from(self.config.history_gossip) * beat / 1000;
        let now_us = micros(now);
        let topo = self.topo;
        for &(topic, me) in &topo.peer_topics[peer as usize] {
            let t = usize::from(topic);
            let state = &self.state[t];
            let k = state.msgs.len();
            let row = &state.valid[me as usize * k..(me as usize + 1) * k];
            let mut ids: Vec<u32> = row
                .iter()
                .enumerate()
                .filter(|(_, v)| **v != NEVER && u64::from(now_us.saturating_sub(**v)) < window)
                .map(|(i, _)| i as u32)
                .collect();
            if ids.is_empty() {
                continue;
            }
            if ids.len() > MAX_IHAVE_LENGTH {
                ids.shuffle(&mut self.rng);
                ids.truncate(MAX_IHAVE_LENGTH);
            }
            let topic_graph = &topo.topics[t];
            let mut lazy: Vec<Link> = topic_graph.links[me as usize]
                .iter()
                .copied()
                .filter(|l| {
                    !topic_graph.mesh[me as usize]
                        .iter()
                        .any(|x| x.peer == l.peer)
                })
                .collect();
            let n = self
                .config
                .gossip_lazy
                .max((self.config.gossip_factor * lazy.len() as f64) as usize);
            lazy.shuffle(&mut self.rng);
            lazy.truncate(n);
            let bytes = ids.len() as u64 * ID_BYTES + RPC_OVERHEAD;
            let ids = Rc::new(ids);
            for link in lazy {
                let at = self.send(now, topic, me, link, bytes);
                let slot = self.store_ihave(ids.clone());
                self.out.ihaves += 1;
                self.push(
                    at,
                    What::IHave {
                        topic,
                        to: link.peer,
                        from: me,
                        slot,
                    },
                );
            }
        }
    }

    fn store_ihave(&mut self, ids: Rc<Vec<u32>>) -> u32 {
        if let Some(slot) = self.free_slots.pop() {
            self.ihaves[slot as usize] = Some(ids);
            slot
        } else {
            self.ihaves.push(Some(ids));
            (self.ihaves.len() - 1) as u32
        }
    }

    fn ihave(&mut self, now: u64, topic: u16, to: u32, from: u32, slot: u32) {
        let Some(ids) = self.ihaves[slot as usize].take() else {
            return;
        };
        self.free_slots.push(slot);
        let t = usize::from(topic);
        let g = self.global(topic, to) as usize;
        let mut wanted = Vec::new();
        for &msg in ids.iter() {
            let state = &mut self.state[t];
            let cell = state.cell(to, msg);
            let bit = 1u64 << (cell % 64);
            if state.first[cell] == NEVER && state.asked[cell / 64] & bit == 0 {
                state.asked[cell / 64] |= bit;
                wanted.push(msg);
                if wanted.len() == MAX_IHAVE_LENGTH {
                    break;
                }
            }
        }
        if wanted.is_empty() {
            return;
        }
        self.out.bytes_out[g] += wanted.len() as u64 * ID_BYTES + RPC_OVERHEAD;
        let Some(link) = self.topo.topics[t].links[from as usize]
            .iter()
            .copied()
            .find(|l| l.peer == to)
        else {
            return;
        };
        // The IWANT reaches `from` one latency later; it answers with each message.
        let asked_at = now + u64::from(link.latency);
        for msg in wanted {
            self.out.iwant_copies += 1;
            self.send_copy(asked_at, topic, from, link, msg);
        }
    }
}

fn micros(ns: u64) -> u32 {
    (ns / 1000).min(u64::from(NEVER - 1)) as u32
}

/// Runs `msgs` over `topo` from a quiet start (seeded by `seed`): the engine's outcome.
pub fn spread(config: &VirtualConfig, topo: &Topology, msgs: &[Message], seed: u64) -> Outcome {
    Engine::new(config, topo, msgs, seed).run()
}

/// The real verification of every distinct ad, and what it cost.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Ads verified (one per node).
    pub ads: usize,
    /// Wire size of each node's ad (the encoded signed ad).
    pub ad_bytes: Vec<u32>,
    /// Measured per ad (decode, ad signature, certificate signature and checks), sorted.
    pub times: Vec<Duration>,
    /// Wall time of making and verifying them all.
    pub wall: Duration,
}

impl Verification {
    /// The median verification time: what every simulated receiver is charged.
    pub fn charged(&self) -> Duration {
        self.times
            .get(self.times.len() / 2)
            .copied()
            .unwrap_or_default()
    }

    fn at(&self, p: f64) -> Duration {
        if self.times.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.times.len() as f64).ceil() as usize;
        self.times[rank.clamp(1, self.times.len()) - 1]
    }
}

/// Makes every node's real signed ad (a certified key per node, federations round-robin, sites
/// of [`SITE_SIZE`], a share for its federation's agent) and verifies each once, for real, as
/// the overlay does on a first copy: decode with the size limit, then
/// [`TrustStore::validate_ad`] (its signature and its membership certificate, no cache).
pub fn verify_ads(config: &VirtualConfig, rng: &mut StdRng) -> Result<Verification, VirtualError> {
    let started = Instant::now();
    let (n, f) = (config.nodes, config.federations);
    let mut federations: Vec<TestFederation> = (0..f)
        .map(|i| TestFederation::new(&format!("fed{i}"), 100u8.wrapping_add(i as u8)))
        .collect();
    let mut store = TrustStore::new();
    for federation in &federations {
        federation.trust(&mut store);
    }
    let topic_bytes: Vec<usize> = federations
        .iter()
        .map(|x| capability_schema::membership::ad_topic(&x.authority.public()).len())
        .collect();
    let agents: Vec<PublicKey> = (0..f).map(|_| SecretKey::generate().public()).collect();
    let now = unix_now();
    let mut out = Verification {
        ads: n,
        ad_bytes: Vec::with_capacity(n),
        times: Vec::with_capacity(n),
        wall: Duration::ZERO,
    };
    for i in 0..n {
        let fed = i % f;
        let site = format!("fed{fed}-site{}", (i / f) / SITE_SIZE);
        let node = federations[fed].node_with_key(SecretKey::generate(), &site);
        let mut body = node.ad_body(1, now, AD_TTL_SECS);
        let cores: u64 = [2, 4, 4, 8, 8, 16, 32][rng.gen_range(0..7)];
        body.capacity = Resources {
            cpu_millis: cores * 1000,
            memory_bytes: cores * (2 << 30),
            disk_bytes: (50 + rng.gen_range(0..450)) << 30,
            egress_kbps: [10_000, 100_000, 1_000_000][rng.gen_range(0..3)],
            ports: 0,
        };
        let share = Resources {
            cpu_millis: body.capacity.cpu_millis * 3 / 4,
            memory_bytes: body.capacity.memory_bytes / 4 * 3,
            disk_bytes: body.capacity.disk_bytes / 4 * 3,
            egress_kbps: body.capacity.egress_kbps * 3 / 4,
            ports: 0,
        };
        body.shares = vec![ShareState {
            agent: agents[fed],
            share,
            committed: Resources::ZERO,
            free: share,
        }];
        body.measured.load_milli = rng.gen_range(0..cores * 1000);
        let bytes = Signed::sign(&node.key, &body).to_bytes();
        let t = Instant::now();
        let verdict = decode_with_limit::<Signed<ResourceAd>>(&bytes, MAX_AD_BYTES)
            .map_err(|e| e.to_string())
            .and_then(|signed| {
                store
                    .validate_ad(&signed, now, None)
                    .map_err(|e| e.to_string())
            });
        out.times.push(t.elapsed());
        verdict.map_err(|why| VirtualError::AdRejected { node: i, why })?;
        out.ad_bytes.push((bytes.len() + topic_bytes[fed]) as u32);
    }
    out.times.sort();
    out.wall = started.elapsed();
    Ok(out)
}

/// What the model measured.
#[derive(Debug, Clone, Default)]
pub struct VirtualReport {
    /// What was simulated.
    pub nodes: usize,
    /// Federations.
    pub federations: usize,
    /// Publishers.
    pub publishers: usize,
    /// Boot window of the first ads.
    pub boot: Duration,
    /// Heartbeat.
    pub heartbeat: Duration,
    /// Link latencies.
    pub latency: Option<LatencyRange>,
    /// Uplink, bits per second.
    pub bandwidth_bps: f64,
    /// Shared cores (0: one per peer).
    pub shared_cores: usize,
    /// Connections per node, on average.
    pub links_per_node: f64,
    /// Mesh peers per node, on average.
    pub mesh_per_node: f64,
    /// Dials refused (and retried elsewhere).
    pub refused: usize,
    /// The real verification of every distinct ad.
    pub verification: Verification,
    /// Charged per first copy.
    pub charged: Duration,
    /// Cold convergence.
    pub cold: Outcome,
    /// Single-update spreads, sorted (complete ones).
    pub updates: Vec<Duration>,
    /// Updates that did not reach everyone.
    pub updates_lost: usize,
    /// Copies per delivery of the single updates.
    pub update_copies: f64,
    /// Wall time of the cold run's engine.
    pub engine_wall: Duration,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// Peak resident memory of the process.
    pub peak_rss: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl VirtualReport {
    /// Cold convergence in simulated time (none: not reached).
    pub fn convergence(&self) -> Option<Duration> {
        self.cold.complete.then_some(self.cold.last)
    }

    /// Per-peer completion times, sorted.
    pub fn completion(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.cold.peer_done.iter().flatten().copied().collect();
        v.sort();
        v
    }

    /// Per-ad spread times of cold convergence, sorted.
    pub fn spread(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.cold.spread.iter().flatten().copied().collect();
        v.sort();
        v
    }

    /// Single-update spread at `p` percent.
    pub fn update_at(&self, p: f64) -> Duration {
        percentile(&self.updates, p)
    }

    /// Bytes sent per node during cold convergence, on average.
    pub fn bytes_per_node(&self) -> f64 {
        let nodes = self.nodes.max(1);
        self.cold.bytes_out[..self.cold.bytes_out.len().min(nodes)]
            .iter()
            .sum::<u64>() as f64
            / nodes as f64
    }

    /// Bytes received per node during cold convergence, on average.
    pub fn bytes_in_per_node(&self) -> f64 {
        let nodes = self.nodes.max(1);
        self.cold.bytes_in[..self.cold.bytes_in.len().min(nodes)]
            .iter()
            .sum::<u64>() as f64
            / nodes as f64
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for VirtualReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let completion = self.completion();
        let spread = self.spread();
        let cores = if self.shared_cores == 0 {
            "one core per peer".to_owned()
        } else {
            format!("{} cores shared by all peers", self.shared_cores)
        };
        let uplink = if self.bandwidth_bps.is_finite() {
            format!("{:.0} Mbit/s uplink", self.bandwidth_bps / 1e6)
        } else {
            "no uplink limit".to_owned()
        };
        let v = &self.verification;
        let rows: Vec<(&str, String)> = vec![
            (
                "model",
                format!(
                    "virtual time; {} nodes in {} federations + 1 broker; links {}; {uplink}; {cores}",
                    self.nodes,
                    self.federations,
                    self.latency.map_or("-".to_owned(), |l| l.to_string()),
                ),
            ),
            (
                "graph",
                format!(
                    "{:.1} connections and {:.1} mesh peers per node; {} refused dials; heartbeat {}",
                    self.links_per_node,
                    self.mesh_per_node,
                    self.refused,
                    millis(self.heartbeat)
                ),
            ),
            (
                "verification",
                format!(
                    "{} distinct ads verified for real ({} each on the wire): p50 {:.0} µs · p99 {:.0} µs; charged {:.0} µs per first copy",
                    v.ads,
                    v.ad_bytes.first().copied().unwrap_or_default(),
                    v.at(50.0).as_secs_f64() * 1e6,
                    v.at(99.0).as_secs_f64() * 1e6,
                    self.charged.as_secs_f64() * 1e6
                ),
            ),
            (
                "cold convergence",
                match self.convergence() {
                    Some(all) => format!(
                        "{} publishers{}: every peer holds every ad after {} simulated (p50 peer {}, p95 {})",
                        self.publishers,
                        if self.boot.is_zero() {
                            " at once".to_owned()
                        } else {
                            format!(" over {}", secs(self.boot))
                        },
                        secs(all),
                        secs(percentile(&completion, 50.0)),
                        secs(percentile(&completion, 95.0)),
                    ),
                    None => format!(
                        "NOT converged: {} of {} deliveries by {} simulated",
                        self.cold.delivered.0,
                        self.cold.delivered.1,
                        secs(self.cold.last)
                    ),
                },
            ),
            (
                "spread of each ad",
                format!(
                    "{} of {} ads reached all receivers: p50 {} · p95 {} · max {}",
                    spread.len(),
                    self.publishers,
                    secs(percentile(&spread, 50.0)),
                    secs(percentile(&spread, 95.0)),
                    secs(spread.last().copied().unwrap_or_default())
                ),
            ),
            (
                "copies per delivery",
                format!(
                    "{:.2} (full copies received {} / distinct deliveries {}; {} duplicates dropped by id, {} answers to IWANT; {} IHAVE, {} IDONTWANT sent)",
                    self.cold.copies_per_delivery(),
                    self.cold.copies,
                    self.cold.delivered.0,
                    self.cold.duplicates,
                    self.cold.iwant_copies,
                    self.cold.ihaves,
                    self.cold.idontwants
                ),
            ),
            (
                "bytes per node",
                format!(
                    "{:.1} KiB sent, {:.1} KiB received (cold convergence)",
                    self.bytes_per_node() / 1024.0,
                    self.bytes_in_per_node() / 1024.0
                ),
            ),
            (
                "single update",
                if self.updates.is_empty() && self.updates_lost == 0 {
                    "not measured".to_owned()
                } else {
                    format!(
                        "{} updates, each alone on the quiet overlay: spread p50 {} · p95 {} · max {}; {:.2} copies per delivery{}",
                        self.updates.len(),
                        millis(self.update_at(50.0)),
                        millis(self.update_at(95.0)),
                        millis(self.updates.last().copied().unwrap_or_default()),
                        self.update_copies,
                        if self.updates_lost > 0 {
                            format!("; {} not delivered everywhere", self.updates_lost)
                        } else {
                            String::new()
                        }
                    )
                },
            ),
            (
                "wall",
                format!(
                    "{} in all ({} making and verifying the ads, {} the cold run: {} events); peak RSS {:.0} MiB",
                    secs(self.wall),
                    secs(v.wall),
                    secs(self.engine_wall),
                    self.cold.events,
                    self.peak_rss as f64 / f64::from(1u32 << 20)
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

/// Runs the model of `config`: the graph, the real verification of every distinct ad, cold
/// convergence, then each single update alone on the quiet overlay.
pub fn run(config: &VirtualConfig) -> Result<VirtualReport, VirtualError> {
    config.validate()?;
    let started = Instant::now();
    let mut rng = config.rng();
    let topo = Topology::build(config, &mut rng);
    let verification = verify_ads(config, &mut rng)?;
    let charged = config
        .delivery_cost
        .unwrap_or_else(|| verification.charged());
    let cost = charged.as_nanos() as u64;
    let n = config.nodes;
    let f = config.federations;
    let k = if config.publishers == 0 {
        n
    } else {
        config.publishers.min(n)
    };
    let mut order: Vec<usize> = rand::seq::index::sample(&mut rng, n, k).into_vec();
    order.shuffle(&mut rng);
    let boot = config.boot.as_nanos() as u64;
    let msgs: Vec<Message> = order
        .iter()
        .enumerate()
        .map(|(rank, &i)| Message {
            topic: (i % f) as u16,
            origin: (i / f) as u32,
            at: boot * rank as u64 / k as u64,
            bytes: verification.ad_bytes[i],
            cost,
        })
        .collect();
    let engine_started = Instant::now();
    let cold = spread(config, &topo, &msgs, rng.r#gen());
    let engine_wall = engine_started.elapsed();
    let mut report = VirtualReport {
        nodes: n,
        federations: f,
        publishers: k,
        boot: config.boot,
        heartbeat: config.heartbeat,
        latency: Some(config.latency),
        bandwidth_bps: config.bandwidth_bps,
        shared_cores: config.shared_cores,
        links_per_node: topo.links_per_node(),
        mesh_per_node: topo.mesh_per_node(),
        refused: topo.refused,
        verification,
        charged,
        cold,
        engine_wall,
        ..VirtualReport::default()
    };
    let (mut copies, mut delivered) = (0u64, 0u64);
    for _ in 0..config.updates {
        let i = rng.gen_range(0..n);
        let one = [Message {
            topic: (i % f) as u16,
            origin: (i / f) as u32,
            at: 0,
            bytes: report.verification.ad_bytes[i],
            cost,
        }];
        let outcome = spread(config, &topo, &one, rng.r#gen());
        copies += outcome.copies;
        delivered += outcome.delivered.0;
        match outcome.spread[0] {
            Some(d) if outcome.complete => report.updates.push(d),
            _ => report.updates_lost += 1,
        }
    }
    report.updates.sort();
    report.update_copies = copies as f64 / delivered.max(1) as f64;
    report.wall = started.elapsed();
    report.peak_rss = peak_rss();
    Ok(report)
}

/// The model's benchmark: 5,000 nodes all publishing at once, then 20,000.
pub fn bench_configs(base: &SimConfig) -> Vec<SimConfig> {
    [5000, 20_000]
        .into_iter()
        .map(|nodes| SimConfig {
            nodes,
            publishers: 0,
            boot: Duration::ZERO,
            ..base.clone()
        })
        .collect()
}

/// One line per run (Markdown).
pub fn summary_table(reports: &[VirtualReport]) -> String {
    let mut out = String::from(
        "| nodes | publishers | cold convergence (sim) | ad spread p50 / p95 | update p50 / p95 | copies/delivery | KiB sent/node | verify (charged) | wall | peak RSS |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in reports {
        let spread = r.spread();
        out.push_str(&format!(
            "| {} | {} | {} | {} / {} | {} / {} | {:.2} | {:.0} | {:.0} µs | {} | {:.0} MiB |\n",
            r.nodes,
            r.publishers,
            r.convergence()
                .map_or_else(|| "not reached".to_owned(), secs),
            secs(percentile(&spread, 50.0)),
            secs(percentile(&spread, 95.0)),
            millis(r.update_at(50.0)),
            millis(r.update_at(95.0)),
            r.cold.copies_per_delivery(),
            r.bytes_per_node() / 1024.0,
            r.charged.as_secs_f64() * 1e6,
            secs(r.wall),
            r.peak_rss as f64 / f64::from(1u32 << 20)
        ));
    }
    out
}

/// `testnet sim --model virtual|compare`: runs `configs` (or, with `bench`, the model's
/// benchmark) and prints each report; an error when a run did not converge.
pub fn run_cli(
    model: Model,
    configs: &[SimConfig],
    bench: bool,
    args: &ModelArgs,
) -> anyhow::Result<()> {
    if model == Model::Compare {
        for config in configs {
            compare(config, args)?;
        }
        return Ok(());
    }
    let configs = match (bench, configs.first()) {
        (true, Some(base)) => bench_configs(base),
        _ => configs.to_vec(),
    };
    let mut reports = Vec::new();
    for config in &configs {
        let model = VirtualConfig::new(config, args);
        println!(
            "== virtual simulation: {} nodes, {} federations, {} dials per node",
            model.nodes, model.federations, model.degree
        );
        let report = run(&model)?;
        println!("{report}");
        reports.push(report);
    }
    if reports.len() > 1 {
        println!("{}", summary_table(&reports));
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.cold.complete)
        .map(|r| {
            format!(
                "{} nodes: {} of {}",
                r.nodes, r.cold.delivered.0, r.cold.delivered.1
            )
        })
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "ads did not converge in the model ({}); give it longer with --timeout",
        failed.join("; ")
    );
    Ok(())
}

/// The full simulation of `config`, then the model calibrated to it: links at the in-memory
/// transport's latency, every peer sharing this machine's cores, each delivery charged the
/// full run's marginal CPU per validated delivery (noise, yamux, gossipsub and verification,
/// duplicates included, so duplicates cost nothing more) and no uplink limit. Prints both side
/// by side and returns (full, model).
pub fn compare(config: &SimConfig, args: &ModelArgs) -> anyhow::Result<(SimReport, VirtualReport)> {
    let full = crate::sim::run_configs(std::slice::from_ref(config))?
        .pop()
        .context("the full simulation returned no report")?;
    let cores = std::thread::available_parallelism().map_or(1, |p| p.get());
    let calibrated = ModelArgs {
        latency_ms: args.memory_latency_ms,
        bandwidth_mbps: f64::INFINITY,
        shared_cores: if args.shared_cores == 0 {
            cores
        } else {
            args.shared_cores
        },
        delivery_cost_us: Some(
            args.delivery_cost_us
                .unwrap_or(full.marginal_cpu_per_delivery().as_secs_f64() * 1e6),
        ),
        duplicate_cost_us: 0.0,
        ..args.clone()
    };
    let model = VirtualConfig::new(config, &calibrated);
    println!(
        "== the model calibrated to it: links {}, {} shared cores, {:.0} µs per delivery",
        model.latency,
        model.shared_cores,
        model.delivery_cost.unwrap_or_default().as_secs_f64() * 1e6
    );
    let modelled = run(&model)?;
    println!("{modelled}");
    println!("{}", side_by_side(&full, &modelled));
    Ok((full, modelled))
}

/// The figures both simulations report, side by side, with the model's deviation.
pub fn side_by_side(full: &SimReport, model: &VirtualReport) -> String {
    let row = |what: &str, a: Option<Duration>, b: Option<Duration>| {
        let show = |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), secs);
        let dev = match (a, b) {
            (Some(a), Some(b)) if !a.is_zero() => {
                format!("{:+.1}%", 100.0 * (b.as_secs_f64() / a.as_secs_f64() - 1.0))
            }
            _ => "-".to_owned(),
        };
        format!("| {what} | {} | {} | {dev} |\n", show(a), show(b))
    };
    let full_spread = full.spread.clone();
    let model_spread = model.spread();
    let full_completion = full.completion.clone();
    let model_completion = model.completion();
    let some = |v: &[Duration], p: f64| (!v.is_empty()).then(|| percentile(v, p));
    let mut out = format!(
        "| {} nodes | full (wall time) | model (simulated) | model vs full |\n|---|---:|---:|---:|\n",
        full.nodes
    );
    out.push_str(&row(
        "cold convergence",
        full.convergence(),
        model.convergence(),
    ));
    out.push_str(&row(
        "per-peer completion p50",
        some(&full_completion, 50.0),
        some(&model_completion, 50.0),
    ));
    out.push_str(&row(
        "ad spread p50",
        some(&full_spread, 50.0),
        some(&model_spread, 50.0),
    ));
    out.push_str(&row(
        "ad spread p95",
        some(&full_spread, 95.0),
        some(&model_spread, 95.0),
    ));
    out.push_str(&row(
        "single update p50",
        some(&full.updates, 50.0),
        some(&model.updates, 50.0),
    ));
    out.push_str(&row(
        "single update p95",
        some(&full.updates, 95.0),
        some(&model.updates, 95.0),
    ));
    out.push_str(&format!(
        "| mesh peers per node | {:.1} | {:.1} | |\n",
        full.mesh_per_peer, model.mesh_per_node
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(latencies_ms: &[u64], cost_us: u64) -> (VirtualConfig, Topology, Vec<Message>) {
        let config = VirtualConfig {
            nodes: latencies_ms.len() + 1,
            federations: 1,
            degree: 1,
            max_connections: 100,
            heartbeat: Duration::from_secs(1),
            mesh_n: 6,
            mesh_n_low: 5,
            mesh_n_high: 12,
            gossip_lazy: 6,
            gossip_factor: 0.25,
            history_gossip: 3,
            latency: "20-80".parse().unwrap(),
            bandwidth_bps: f64::INFINITY,
            shared_cores: 0,
            delivery_cost: None,
            duplicate_cost: Duration::ZERO,
            publishers: 1,
            boot: Duration::ZERO,
            updates: 0,
            timeout: Duration::from_secs(60),
            seed: 1,
        };
        // Members 0..n in a line, the broker (last member) hanging off the end.
        let m = config.nodes + 1;
        let mut links = vec![Vec::new(); m];
        let mut edge = |a: usize, b: usize, ms: u64| {
            let latency = (ms * 1_000_000) as u32;
            links[a].push(Link {
                peer: b as u32,
                latency,
            });
            links[b].push(Link {
                peer: a as u32,
                latency,
            });
        };
        for (i, ms) in latencies_ms.iter().enumerate() {
            edge(i, i + 1, *ms);
        }
        edge(m - 2, m - 1, 0);
        let topic = Topic {
            members: (0..m as u32).collect(),
            mesh: links.clone(),
            links,
        };
        let topo = Topology {
            peer_topics: (0..m).map(|i| vec![(0, i as u32)]).collect(),
            topics: vec![topic],
            refused: 0,
        };
        let msgs = vec![Message {
            topic: 0,
            origin: 0,
            at: 0,
            bytes: 1500,
            cost: cost_us * 1000,
        }];
        (config, topo, msgs)
    }

    #[test]
    fn a_line_converges_in_the_sum_of_its_latencies_and_processing() {
        let (config, topo, msgs) = line(&[10, 30, 50, 20], 200);
        let out = spread(&config, &topo, &msgs, 7);
        assert!(out.complete);
        // Four hops of latency, five receivers each verifying once (the broker over a 0 ms
        // link at the end), and no duplicates on a line.
        let expected = Duration::from_millis(10 + 30 + 50 + 20) + Duration::from_micros(5 * 200);
        assert_eq!(out.last, expected);
        assert_eq!(out.spread[0], Some(expected));
        assert_eq!(out.delivered, (5, 5));
        assert_eq!(out.copies, 5);
        assert_eq!(out.duplicates, 0);
    }

    #[test]
    fn serialization_on_the_uplink_adds_to_each_hop() {
        let (mut config, topo, msgs) = line(&[10, 10], 0);
        config.bandwidth_bps = 1.2e6; // 1,500 bytes take 10 ms
        let out = spread(&config, &topo, &msgs, 7);
        assert_eq!(out.last, Duration::from_millis(3 * 10 + 2 * 10));
    }

    #[test]
    fn duplicates_are_dropped_by_message_id_and_counted() {
        // A triangle 0-1-2 with slow 0-2: 2 gets the ad from 0 directly and again from 1.
        let (config, mut topo, mut msgs) = line(&[10, 10], 100);
        let slow = Link {
            peer: 2,
            latency: 15_000_000,
        };
        topo.topics[0].links[0].push(slow);
        topo.topics[0].links[2].push(Link {
            peer: 0,
            latency: 15_000_000,
        });
        msgs[0].bytes = 500; // no IDONTWANT under 1,000 bytes
        let out = spread(&config, &topo, &msgs, 7);
        assert!(out.complete);
        assert_eq!(out.delivered.0, 3, "1, 2 and the broker, each once");
        assert!(out.duplicates >= 1, "{out:?}");
        assert_eq!(out.copies, out.delivered.0 + out.duplicates);
        // 2 held it after 15 ms (direct) + 0.1 ms, not after the 20 ms path.
        assert!(out.peer_done[2].unwrap() < Duration::from_millis(16));
    }

    fn small(nodes: usize, seed: u64) -> VirtualConfig {
        VirtualConfig::new(
            &SimConfig {
                nodes,
                federations: 2,
                updates: 3,
                seed,
                ..SimConfig::default()
            },
            &ModelArgs {
                delivery_cost_us: Some(150.0),
                ..ModelArgs::default()
            },
        )
    }

    #[test]
    fn a_seed_makes_the_same_run() {
        let config = small(60, 42);
        let (a, b) = (run(&config).unwrap(), run(&config).unwrap());
        assert_eq!(a.cold.last, b.cold.last);
        assert_eq!(a.cold.copies, b.cold.copies);
        assert_eq!(a.cold.events, b.cold.events);
        assert_eq!(a.updates, b.updates);
        let c = run(&small(60, 43)).unwrap();
        assert_ne!(
            (a.cold.copies, a.cold.last),
            (c.cold.copies, c.cold.last),
            "another seed, another graph"
        );
    }

    #[test]
    fn latency_ranges_parse_and_refuse_nonsense() {
        let r: LatencyRange = "20-80".parse().unwrap();
        assert_eq!(
            (r.lo, r.hi),
            (Duration::from_millis(20), Duration::from_millis(80))
        );
        let one: LatencyRange = "0.5".parse().unwrap();
        assert_eq!(one.lo, one.hi);
        assert!(
            "80-20"
                .parse::<LatencyRange>()
                .unwrap_err()
                .contains("LO-HI")
        );
        assert!("fast".parse::<LatencyRange>().is_err());
    }

    /// Property: on any connected graph the model builds (random sizes, degrees, federations,
    /// latencies, uplinks, boot windows, seeds), every peer ends up holding every ad of its
    /// federations, and every copy received is either a first copy or a counted duplicate.
    #[test]
    fn every_peer_eventually_holds_every_ad_in_a_connected_graph() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut checked = 0;
        for case in 0..60 {
            let nodes = rng.gen_range(4..150);
            let mut config = small(nodes, rng.r#gen());
            config.federations = rng.gen_range(1..=(nodes / 2).min(3));
            config.degree = rng.gen_range(1..5);
            let lo = rng.gen_range(0..50);
            config.latency = format!("{lo}-{}", lo + rng.gen_range(0..100))
                .parse()
                .unwrap();
            config.bandwidth_bps = [1e6, 1e8, f64::INFINITY][case % 3];
            let topo = Topology::build(&config, &mut config.rng());
            if !topo.connected() {
                continue;
            }
            checked += 1;
            let f = config.federations;
            let boot = rng.gen_range(0..3_000_000_000u64);
            let msgs: Vec<Message> = (0..nodes)
                .map(|i| Message {
                    topic: (i % f) as u16,
                    origin: (i / f) as u32,
                    at: boot * i as u64 / nodes as u64,
                    bytes: rng.gen_range(400..2000),
                    cost: rng.gen_range(0..500_000),
                })
                .collect();
            let out = spread(&config, &topo, &msgs, rng.r#gen());
            assert!(out.complete, "case {case}: {config:?}: {:?}", out.delivered);
            assert!(
                out.peer_done.iter().all(Option::is_some),
                "case {case}: a peer is missing an ad"
            );
            assert!(out.spread.iter().all(Option::is_some), "case {case}");
            assert_eq!(out.copies, out.delivered.0 + out.duplicates, "case {case}");
        }
        assert!(checked >= 30, "only {checked} connected cases");
    }

    /// The whole run on a small overlay: every ad verified for real, convergence reported.
    #[test]
    fn a_small_run_verifies_every_ad_and_reports_convergence() {
        let report = run(&small(40, 3)).unwrap();
        assert_eq!(report.verification.ads, 40);
        assert!(report.verification.ad_bytes.iter().all(|b| *b > 500));
        assert!(report.convergence().is_some(), "{report}");
        assert_eq!(report.updates.len(), 3);
    }
}
