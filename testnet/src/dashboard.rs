//! The testnet's dashboard: one self-contained web page and the JSON it polls.
//!
//! | path | what |
//! |---|---|
//! | `/` | the page: inline CSS, script and SVG, no external assets (works offline) |
//! | `/api/state` | the whole testnet as one [`Snapshot`] (JSON) |
//!
//! How data flows:
//! 1. A collector task re-reads `testnet.toml` every [`ROUND`] (so a `testnet up` after the
//!    dashboard started is picked up) and asks every host for its state with
//!    [`probe_host`] on a blocking thread: nodes `/status` and `/leases`, agents `/status`
//!    and `/tickets`, brokers `/status`, each decoded as the daemon's own view type (an
//!    [`Answer`]). At most one probe per host is in flight; a
//!    host whose probe is still out after [`SLOW`] shows as not answering, and nothing waits
//!    on it longer than the probe's own timeouts.
//! 2. [`assemble`] (pure) turns the manifest, the probe outcomes and the processes into a
//!    [`Snapshot`]: federations with their nodes (capacity, commitments, shares, load,
//!    leases) and agents (inventory against delegations, outstanding tickets), brokers, and
//!    slices (leases grouped by slice name across nodes).
//! 3. `/api/state` answers with the latest snapshot at once; it never waits on a host (only
//!    on the very first round, for at most a few seconds).
//! 4. The page polls `/api/state` every 2 s and redraws.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agentd::daemon::view::{AgentStatus, TicketEntry};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use broker::daemon::view::BrokerStatus;
use capability_schema::resources::ResourceKind;
use capability_schema::{PublicKey, Resources};
use node::daemon::view::{LeaseEntry, NodeStatus};
use node::ledger::LeaseState;
use serde::Serialize;
use tokio::sync::watch;

use crate::generate::{HostInfo, InternetHost, Manifest};
use crate::launch;
use crate::probe::{self, HostStatus};
use crate::topology::HostRole;

/// Time between two collection rounds.
pub const ROUND: Duration = Duration::from_secs(1);
/// A probe still out after this long shows its host as not answering.
pub const SLOW: Duration = Duration::from_millis(1500);
/// Longest wait of `/api/state` for the first snapshot.
const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// How a host is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Its HTTP endpoint answered.
    Up,
    /// Its process runs but its endpoint does not answer (starting, partitioned, hung).
    Unreachable,
    /// Its process is stopped (a loopback partition freezes it).
    Frozen,
    /// No process.
    Down,
}

/// A host's process as seen in `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Running (or sleeping) with this pid.
    Running(u32),
    /// Stopped by a signal (SIGSTOP) with this pid.
    Stopped(u32),
    /// Not running.
    Absent,
}

impl ProcessState {
    /// The host's process, checked against its pid file and command line.
    pub fn of(host: &HostInfo) -> ProcessState {
        ProcessState::of_pid(launch::running_pid(host))
    }

    /// The internet host's process, checked against its pid file and command line.
    pub fn of_internet(internet: &InternetHost) -> ProcessState {
        ProcessState::of_pid(launch::internet_pid(internet))
    }

    /// Process `pid` (one of the testnet's, checked), running or stopped.
    fn of_pid(pid: Option<u32>) -> ProcessState {
        let Some(pid) = pid else {
            return ProcessState::Absent;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let stopped = stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| matches!(rest.trim_start().chars().next(), Some('T' | 't')));
        if stopped {
            ProcessState::Stopped(pid)
        } else {
            ProcessState::Running(pid)
        }
    }

    fn pid(self) -> Option<u32> {
        match self {
            ProcessState::Running(pid) | ProcessState::Stopped(pid) => Some(pid),
            ProcessState::Absent => None,
        }
    }
}

/// What asking a host gave.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeOutcome {
    /// It answered (boxed: an answer is much larger than the other outcomes).
    Answered(Box<Answer>),
    /// It did not answer.
    Failed(String),
    /// The probe has been out this long without an answer.
    Pending(Duration),
}

/// What a host answered: its `/status`, and its ledger (`None` if that request failed).
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A node: `/status` and `/leases`.
    Node {
        /// `/status`.
        status: NodeStatus,
        /// `/leases`.
        leases: Option<Vec<LeaseEntry>>,
    },
    /// An agent: `/status` and `/tickets`.
    Agent {
        /// `/status`.
        status: AgentStatus,
        /// `/tickets`.
        tickets: Option<Vec<TicketEntry>>,
    },
    /// A broker: `/status`.
    Broker {
        /// `/status`.
        status: BrokerStatus,
    },
}

/// The whole testnet at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// When it was assembled (unix seconds).
    pub taken_at: u64,
    /// The testnet directory.
    pub dir: String,
    /// Why there is nothing to show (no testnet in the directory).
    pub error: Option<String>,
    /// The testnet's tag.
    pub tag: String,
    /// `loopback` or `namespaces`.
    pub network: String,
    /// `memory` or `linux`.
    pub isolation: String,
    /// Every federation with its nodes and agents.
    pub federations: Vec<FederationView>,
    /// Brokers (they follow every federation).
    pub brokers: Vec<BrokerView>,
    /// Leases grouped by slice name across nodes.
    pub slices: Vec<SliceView>,
    /// The internet host (namespaced testnets).
    pub internet: Option<InternetView>,
    /// Counts over everything.
    pub totals: Totals,
}

/// The host standing for the Internet ([`crate::internet`]).
#[derive(Debug, Clone, Serialize)]
pub struct InternetView {
    /// Its address on the bridge.
    pub address: String,
    /// Its HTTP URL.
    pub url: String,
    /// Its UDP echo port.
    pub udp_port: u16,
    /// Its pid, if it runs.
    pub pid: Option<u32>,
}

/// One federation.
#[derive(Debug, Clone, Serialize)]
pub struct FederationView {
    /// Its name.
    pub name: String,
    /// Its authority key (short form).
    pub authority: String,
    /// Its nodes.
    pub nodes: Vec<NodeView>,
    /// Its agents.
    pub agents: Vec<AgentView>,
}

/// Committed over capacity per resource, 0 to 1 (more if overcommitted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    /// CPU.
    pub cpu: f64,
    /// Memory.
    pub memory: f64,
    /// Disk.
    pub disk: f64,
    /// Egress.
    pub egress: f64,
    /// The largest of the four.
    pub max: f64,
}

impl Usage {
    fn of(used: &Resources, total: &Resources) -> Usage {
        let ratio = |kind: ResourceKind| {
            let total = total.get(kind);
            if total == 0 {
                0.0
            } else {
                used.get(kind) as f64 / total as f64
            }
        };
        let (cpu, memory, disk, egress) = (
            ratio(ResourceKind::Cpu),
            ratio(ResourceKind::Memory),
            ratio(ResourceKind::Disk),
            ratio(ResourceKind::Egress),
        );
        Usage {
            cpu,
            memory,
            disk,
            egress,
            max: cpu.max(memory).max(disk).max(egress),
        }
    }
}

/// A node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Host name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Its key (short form).
    pub key: String,
    /// How it is doing.
    pub state: HostState,
    /// Why it is not up.
    pub detail: Option<String>,
    /// Its daemon's pid.
    pub pid: Option<u32>,
    /// Its HTTP endpoint.
    pub http: String,
    /// What it offers.
    pub capacity: Option<Resources>,
    /// What leases hold.
    pub committed: Option<Resources>,
    /// `capacity` in human units.
    pub capacity_text: Option<String>,
    /// `committed` in human units.
    pub committed_text: Option<String>,
    /// Committed over capacity.
    pub usage: Usage,
    /// One-minute load average.
    pub load: Option<f64>,
    /// Its ad's sequence number.
    pub seq: Option<u64>,
    /// The agents it delegated to (from the manifest).
    pub delegates_to: Vec<String>,
    /// Its shares as it enforces them.
    pub shares: Vec<ShareView>,
    /// Its leases.
    pub leases: Vec<LeaseView>,
}

/// A node's share for one agent.
#[derive(Debug, Clone, Serialize)]
pub struct ShareView {
    /// The agent (host name, or short key).
    pub agent: String,
    /// The share's limit.
    pub share: String,
    /// What the agent's tickets hold.
    pub committed: String,
    /// What is still free for the agent.
    pub free: String,
    /// Committed over the limit.
    pub usage: Usage,
}

/// One lease on one node.
#[derive(Debug, Clone, Serialize)]
pub struct LeaseView {
    /// Lease id.
    pub lease_id: String,
    /// Slice.
    pub slice: String,
    /// Holder (name or short key).
    pub holder: String,
    /// The agent whose share it counts against.
    pub agent: String,
    /// Resources held.
    pub resources: String,
    /// `active` or `pending`.
    pub state: String,
    /// Sliver address.
    pub address: Option<String>,
    /// Start (unix seconds).
    pub start: u64,
    /// End (unix seconds).
    pub end: u64,
}

/// An agent.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    /// Host name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Its key (short form).
    pub key: String,
    /// How it is doing.
    pub state: HostState,
    /// Why it is not up.
    pub detail: Option<String>,
    /// Its daemon's pid.
    pub pid: Option<u32>,
    /// Its HTTP endpoint.
    pub http: String,
    /// Nodes that delegated to it (from the manifest).
    pub expected: Vec<String>,
    /// Nodes in its inventory.
    pub inventory: Vec<InventoryView>,
    /// Tickets in its ledger.
    pub tickets: usize,
    /// Tickets still counted against shares.
    pub outstanding: usize,
    /// Principals holding outstanding tickets.
    pub principals: u64,
}

/// One node in an agent's inventory.
#[derive(Debug, Clone, Serialize)]
pub struct InventoryView {
    /// The node (host name, or the ad's name).
    pub node: String,
    /// Its federation.
    pub federation: String,
    /// The share it delegated.
    pub share: String,
    /// What the agent's outstanding tickets hold on it.
    pub outstanding: String,
    /// Its load as advertised.
    pub load: Option<f64>,
}

/// A broker.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerView {
    /// Host name.
    pub name: String,
    /// Its key (short form).
    pub key: String,
    /// How it is doing.
    pub state: HostState,
    /// Why it is not up.
    pub detail: Option<String>,
    /// Its daemon's pid.
    pub pid: Option<u32>,
    /// Its HTTP endpoint.
    pub http: String,
    /// The agents it asks (host names, or short keys).
    pub agents: Vec<String>,
    /// Its counters (`finds`, `acquired`, `failed`, `tickets`, `refused`).
    pub counters: BTreeMap<String, u64>,
}

/// A slice: its leases across nodes.
#[derive(Debug, Clone, Serialize)]
pub struct SliceView {
    /// Its name.
    pub name: String,
    /// Every sliver.
    pub slivers: Vec<SliverView>,
    /// Slivers whose lease is active.
    pub active: usize,
    /// Slivers on nodes that do not answer, known only from their agent's ticket.
    pub unknown: usize,
    /// Its colour on the page (CSS), far from every other slice's.
    pub color: String,
    /// Federations it spans.
    pub federations: Vec<String>,
    /// Distinct sites.
    pub sites: usize,
    /// Holders.
    pub holders: Vec<String>,
    /// The earliest lease end (unix seconds).
    pub ends_at: u64,
    /// Resources held in all.
    pub total: String,
}

/// One sliver of a slice.
#[derive(Debug, Clone, Serialize)]
pub struct SliverView {
    /// The node.
    pub node: String,
    /// Its federation.
    pub federation: String,
    /// Its site.
    pub site: String,
    /// Lease state.
    pub state: String,
    /// Resources held.
    pub resources: String,
    /// Sliver address.
    pub address: Option<String>,
    /// Lease end (unix seconds).
    pub end: u64,
}

/// Counts over the whole testnet.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Federations.
    pub federations: usize,
    /// Hosts.
    pub hosts: usize,
    /// Hosts up.
    pub hosts_up: usize,
    /// Nodes.
    pub nodes: usize,
    /// Nodes up.
    pub nodes_up: usize,
    /// Agents.
    pub agents: usize,
    /// Agents up.
    pub agents_up: usize,
    /// Brokers.
    pub brokers: usize,
    /// Brokers up.
    pub brokers_up: usize,
    /// Leases.
    pub leases: usize,
    /// Slices.
    pub slices: usize,
    /// Node-agent delegations of answering nodes the agents know of (ad convergence; an ad
    /// an agent still holds for a silent node does not count).
    pub delegations_known: usize,
    /// Node-agent delegations in the manifest.
    pub delegations: usize,
    /// Capacity of the nodes that answered.
    pub capacity: Resources,
    /// What their leases hold.
    pub committed: Resources,
    /// `committed` over `capacity`.
    pub usage: Usage,
    /// `capacity` in human units.
    pub capacity_text: String,
    /// `committed` in human units.
    pub committed_text: String,
}

/// Names for keys: hosts by their name, the testnet's principal as `principal`.
struct Names(HashMap<PublicKey, String>);

impl Names {
    fn new(manifest: &Manifest) -> Names {
        let mut names: HashMap<PublicKey, String> = manifest
            .hosts
            .iter()
            .map(|h| (h.key, h.plan.name.clone()))
            .collect();
        names.insert(manifest.principal, "principal".to_owned());
        Names(names)
    }

    /// The name of `key`, or its first 8 hex digits.
    fn of(&self, key: &PublicKey) -> String {
        self.0.get(key).cloned().unwrap_or_else(|| key.short())
    }
}

/// The state of a sliver on a node that does not answer: its ticket is outstanding at its
/// agent, but nobody can say whether the sliver still runs.
const UNKNOWN: &str = "unknown";

/// `n` colours whose hues are spread by the golden angle: any two of the first eight differ
/// by at least 32° of hue, and two of the first dozen that come closer differ in lightness,
/// so two slices never look alike, whatever their names.
fn slice_colors(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let hue = (i as f64 * 137.508 + 200.0) % 360.0;
            let lightness = [46, 58, 36][i % 3];
            format!("hsl({hue:.0},64%,{lightness}%)")
        })
        .collect()
}

/// A lease's state as the page shows it.
fn lease_state(lease: &LeaseEntry) -> String {
    match lease.state {
        LeaseState::Active => "active",
        LeaseState::Pending => "pending",
    }
    .to_owned()
}

/// Resources in their human text, as the daemons write them (`None` if unreadable).
fn resources(text: &str) -> Option<Resources> {
    text.parse().ok()
}

fn state_of(process: ProcessState, outcome: Option<&ProbeOutcome>) -> (HostState, Option<String>) {
    match (process, outcome) {
        (_, Some(ProbeOutcome::Answered(_))) => (HostState::Up, None),
        (ProcessState::Stopped(pid), _) => (
            HostState::Frozen,
            Some(format!("process {pid} is stopped (partitioned)")),
        ),
        (ProcessState::Absent, _) => (HostState::Down, Some("no process".to_owned())),
        (ProcessState::Running(_), Some(ProbeOutcome::Failed(e))) => {
            (HostState::Unreachable, Some(e.clone()))
        }
        (ProcessState::Running(_), Some(ProbeOutcome::Pending(after))) => (
            HostState::Unreachable,
            Some(format!("no answer for {:.0} s", after.as_secs_f64())),
        ),
        (ProcessState::Running(_), None) => {
            (HostState::Unreachable, Some("not asked yet".to_owned()))
        }
    }
}

/// Builds the snapshot from the manifest, what each host answered (by host name) and each
/// host's process (by host name; the internet host's as [`InternetHost::NAME`]). Pure: no I/O.
pub fn assemble(
    manifest: &Manifest,
    dir: &Path,
    probes: &HashMap<String, ProbeOutcome>,
    processes: &HashMap<String, ProcessState>,
    now: u64,
) -> Snapshot {
    let names = Names::new(manifest);
    let mut totals = Totals {
        federations: manifest.federations.len(),
        hosts: manifest.hosts.len(),
        ..Totals::default()
    };
    let look = |host: &HostInfo| {
        let process = processes
            .get(&host.plan.name)
            .copied()
            .unwrap_or(ProcessState::Absent);
        let outcome = probes.get(&host.plan.name);
        let (state, detail) = state_of(process, outcome);
        let answer = match outcome {
            Some(ProbeOutcome::Answered(answer)) => Some(&**answer),
            _ => None,
        };
        (state, detail, process.pid(), answer)
    };
    let mut federations: Vec<FederationView> = manifest
        .federations
        .iter()
        .map(|f| FederationView {
            name: f.name.clone(),
            authority: f.authority.short(),
            nodes: Vec::new(),
            agents: Vec::new(),
        })
        .collect();
    let mut brokers = Vec::new();
    let mut slices: BTreeMap<String, Vec<SliverView>> = BTreeMap::new();
    let mut holders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut slice_totals: BTreeMap<String, Resources> = BTreeMap::new();
    // Nodes that answered: an agent's view of any other node is not evidence that the
    // testnet converged, and a sliver there can only be known from its ticket.
    let nodes_up: BTreeSet<&str> = manifest
        .of_role(HostRole::Node)
        .filter(|n| look(n).0 == HostState::Up)
        .map(|n| n.plan.name.as_str())
        .collect();
    let mut unseen: Vec<(String, &TicketEntry)> = Vec::new();

    for host in &manifest.hosts {
        let (state, detail, pid, answer) = look(host);
        let up = state == HostState::Up;
        totals.hosts_up += usize::from(up);
        let name = host.plan.name.clone();
        let fed = federations
            .iter_mut()
            .find(|f| f.name == host.plan.federation);
        match host.plan.role {
            HostRole::Node => {
                totals.nodes += 1;
                totals.nodes_up += usize::from(up);
                let (status, entries) = match answer {
                    Some(Answer::Node { status, leases }) => (Some(status), leases.as_deref()),
                    _ => (None, None),
                };
                let capacity = status.and_then(|s| resources(&s.capacity));
                let committed = status.and_then(|s| resources(&s.committed));
                if let (Some(c), Some(u)) = (capacity, committed) {
                    totals.capacity = totals.capacity.checked_add(&c).unwrap_or(totals.capacity);
                    totals.committed = totals.committed.checked_add(&u).unwrap_or(totals.committed);
                }
                let usage = match (capacity, committed) {
                    (Some(c), Some(u)) => Usage::of(&u, &c),
                    _ => Usage::default(),
                };
                let shares = status
                    .map(|status| {
                        status
                            .shares
                            .iter()
                            .map(|s| {
                                let limit = resources(&s.share).unwrap_or_default();
                                let used = resources(&s.committed).unwrap_or_default();
                                ShareView {
                                    agent: names.of(&s.agent),
                                    share: s.share.clone(),
                                    committed: s.committed.clone(),
                                    free: s.free.clone(),
                                    usage: Usage::of(&used, &limit),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let leases: Vec<LeaseView> = entries
                    .unwrap_or_default()
                    .iter()
                    .map(|l| LeaseView {
                        lease_id: l.lease_id.clone(),
                        slice: l.slice.clone(),
                        holder: names.of(&l.holder),
                        agent: names.of(&l.agent),
                        resources: l.resources.clone(),
                        state: lease_state(l),
                        address: l.address.clone(),
                        start: l.start,
                        end: l.end,
                    })
                    .collect();
                totals.leases += leases.len();
                for lease in &leases {
                    slices
                        .entry(lease.slice.clone())
                        .or_default()
                        .push(SliverView {
                            node: name.clone(),
                            federation: host.plan.federation.clone(),
                            site: host.plan.site.clone(),
                            state: lease.state.clone(),
                            resources: lease.resources.clone(),
                            address: lease.address.clone(),
                            end: lease.end,
                        });
                    holders
                        .entry(lease.slice.clone())
                        .or_default()
                        .insert(lease.holder.clone());
                    let held: Resources = lease.resources.parse().unwrap_or_default();
                    let sum = slice_totals.entry(lease.slice.clone()).or_default();
                    *sum = sum.checked_add(&held).unwrap_or(*sum);
                }
                totals.delegations += host.plan.delegates_to.len();
                let view = NodeView {
                    name,
                    site: host.plan.site.clone(),
                    key: host.key.short(),
                    state,
                    detail,
                    pid,
                    http: host.http_url(),
                    capacity_text: capacity.map(|c| c.to_string()),
                    committed_text: committed.map(|c| c.to_string()),
                    capacity,
                    committed,
                    usage,
                    load: status.and_then(|s| s.load),
                    seq: status.and_then(|s| s.seq),
                    delegates_to: host.plan.delegates_to.clone(),
                    shares,
                    leases,
                };
                if let Some(fed) = fed {
                    fed.nodes.push(view);
                }
            }
            HostRole::Agent => {
                totals.agents += 1;
                totals.agents_up += usize::from(up);
                let expected: Vec<String> = manifest
                    .of_role(HostRole::Node)
                    .filter(|n| n.plan.delegates_to.contains(&host.plan.name))
                    .map(|n| n.plan.name.clone())
                    .collect();
                let (status, tickets) = match answer {
                    Some(Answer::Agent { status, tickets }) => (Some(status), tickets.as_deref()),
                    _ => (None, None),
                };
                let inventory: Vec<InventoryView> = status
                    .map(|status| {
                        status
                            .nodes
                            .iter()
                            .map(|n| {
                                let node = names
                                    .0
                                    .get(&n.node)
                                    .cloned()
                                    .unwrap_or_else(|| n.name.clone());
                                InventoryView {
                                    federation: n.federation.clone(),
                                    node,
                                    share: n.share.clone(),
                                    outstanding: n.outstanding.clone(),
                                    load: Some(n.load),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                totals.delegations_known += expected
                    .iter()
                    .filter(|e| nodes_up.contains(e.as_str()))
                    .filter(|e| inventory.iter().any(|i| &i.node == *e))
                    .count();
                for t in tickets.unwrap_or_default() {
                    let node = names.of(&t.node);
                    if t.outstanding && t.not_after > now && !nodes_up.contains(node.as_str()) {
                        unseen.push((node, t));
                    }
                }
                let view = AgentView {
                    name,
                    site: host.plan.site.clone(),
                    key: host.key.short(),
                    state,
                    detail,
                    pid,
                    http: host.http_url(),
                    expected,
                    inventory,
                    tickets: tickets.map_or(0, <[TicketEntry]>::len),
                    outstanding: tickets.map_or(0, |t| t.iter().filter(|t| t.outstanding).count()),
                    principals: status.map_or(0, |s| s.principals as u64),
                };
                if let Some(fed) = fed {
                    fed.agents.push(view);
                }
            }
            HostRole::Broker => {
                totals.brokers += 1;
                totals.brokers_up += usize::from(up);
                let status = match answer {
                    Some(Answer::Broker { status }) => Some(status),
                    _ => None,
                };
                let agents = status
                    .map(|s| s.agents.iter().map(|a| names.of(&a.agent)).collect())
                    .unwrap_or_default();
                let counters = status
                    .map(|s| {
                        [
                            ("finds", s.finds),
                            ("acquired", s.acquired),
                            ("failed", s.failed),
                            ("tickets", s.tickets),
                            ("refused", s.refused),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect()
                    })
                    .unwrap_or_default();
                brokers.push(BrokerView {
                    name,
                    key: host.key.short(),
                    state,
                    detail,
                    pid,
                    http: host.http_url(),
                    agents,
                    counters,
                });
            }
        }
    }

    for (node, ticket) in unseen {
        let host = manifest.host(&node).ok();
        slices
            .entry(ticket.slice.clone())
            .or_default()
            .push(SliverView {
                federation: host.map_or_else(String::new, |h| h.plan.federation.clone()),
                site: host.map_or_else(String::new, |h| h.plan.site.clone()),
                node,
                state: UNKNOWN.to_owned(),
                resources: ticket.resources.clone(),
                address: None,
                end: ticket.not_after,
            });
        holders
            .entry(ticket.slice.clone())
            .or_default()
            .insert(names.of(&ticket.principal));
    }
    let colors = slice_colors(slices.len());
    let slices: Vec<SliceView> = slices
        .into_iter()
        .zip(colors)
        .map(|((name, mut slivers), color)| {
            slivers.sort_by(|a, b| a.node.cmp(&b.node));
            let federations: BTreeSet<String> =
                slivers.iter().map(|s| s.federation.clone()).collect();
            let sites: BTreeSet<&str> = slivers.iter().map(|s| s.site.as_str()).collect();
            SliceView {
                active: slivers.iter().filter(|s| s.state == "active").count(),
                unknown: slivers.iter().filter(|s| s.state == UNKNOWN).count(),
                color,
                federations: federations.into_iter().collect(),
                sites: sites.len(),
                holders: holders
                    .get(&name)
                    .map(|h| h.iter().cloned().collect())
                    .unwrap_or_default(),
                ends_at: slivers.iter().map(|s| s.end).min().unwrap_or(0),
                total: slice_totals
                    .get(&name)
                    .map(Resources::to_string)
                    .unwrap_or_default(),
                slivers,
                name,
            }
        })
        .collect();
    totals.slices = slices.len();
    totals.usage = Usage::of(&totals.committed, &totals.capacity);
    totals.capacity_text = totals.capacity.to_string();
    totals.committed_text = totals.committed.to_string();

    Snapshot {
        taken_at: now,
        dir: dir.display().to_string(),
        error: None,
        tag: manifest.tag.clone(),
        network: format!("{:?}", manifest.network).to_lowercase(),
        isolation: manifest.isolation.clone(),
        federations,
        brokers,
        slices,
        internet: manifest.internet.as_ref().map(|i| InternetView {
            address: i.ip.clone(),
            url: i.url(),
            udp_port: i.udp_port,
            pid: processes
                .get(InternetHost::NAME)
                .and_then(|p| ProcessState::pid(*p)),
        }),
        totals,
    }
}

/// The snapshot shown when the directory holds no testnet.
fn empty(dir: &Path, error: String, now: u64) -> Snapshot {
    Snapshot {
        taken_at: now,
        dir: dir.display().to_string(),
        error: Some(error),
        tag: String::new(),
        network: String::new(),
        isolation: String::new(),
        federations: Vec::new(),
        brokers: Vec::new(),
        slices: Vec::new(),
        internet: None,
        totals: Totals::default(),
    }
}

/// Asks one host everything the dashboard shows (blocking; bounded by the probe's timeouts).
pub fn probe_host(host: &HostInfo) -> ProbeOutcome {
    let answer = match probe::status(host) {
        Ok(HostStatus::Node(status)) => Answer::Node {
            status,
            leases: probe::leases(host).ok(),
        },
        Ok(HostStatus::Agent(status)) => Answer::Agent {
            status,
            tickets: probe::tickets(host).ok(),
        },
        Ok(HostStatus::Broker(status)) => Answer::Broker { status },
        Err(e) => return ProbeOutcome::Failed(format!("{e:#}")),
    };
    ProbeOutcome::Answered(Box::new(answer))
}

/// One host's probe: its last outcome, and since when a probe is out.
#[derive(Debug, Default)]
struct Slot {
    last: Option<ProbeOutcome>,
    out_since: Option<Instant>,
}

type Slots = Arc<Mutex<HashMap<String, Slot>>>;

fn lock(slots: &Slots) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
    slots.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One collection round: probes every host not already being probed, waits at most
/// [`SLOW`] for the answers, and assembles what is known.
async fn round(dir: &Path, slots: &Slots) -> Snapshot {
    let now = federation::unix_now();
    let manifest = match Manifest::load(dir) {
        Ok(manifest) => manifest,
        Err(e) => return empty(dir, format!("{e:#}"), now),
    };
    let mut probes = tokio::task::JoinSet::new();
    for host in &manifest.hosts {
        {
            let mut slots = lock(slots);
            let slot = slots.entry(host.plan.name.clone()).or_default();
            if slot.out_since.is_some() {
                continue;
            }
            slot.out_since = Some(Instant::now());
        }
        let host = host.clone();
        let slots = slots.clone();
        probes.spawn_blocking(move || {
            let outcome = probe_host(&host);
            let mut slots = lock(&slots);
            let slot = slots.entry(host.plan.name.clone()).or_default();
            slot.last = Some(outcome);
            slot.out_since = None;
        });
    }
    let deadline = tokio::time::Instant::now() + SLOW;
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, probes.join_next()).await {}
    // Probes still out finish on their own and leave their outcome in their slot.
    probes.detach_all();

    let processes: HashMap<String, ProcessState> = manifest
        .hosts
        .iter()
        .map(|h| (h.plan.name.clone(), ProcessState::of(h)))
        .chain(
            manifest
                .internet
                .iter()
                .map(|i| (InternetHost::NAME.to_owned(), ProcessState::of_internet(i))),
        )
        .collect();
    let outcomes: HashMap<String, ProbeOutcome> = {
        let slots = lock(slots);
        slots
            .iter()
            .filter_map(|(name, slot)| {
                let outcome = match slot.out_since {
                    Some(since) if since.elapsed() >= SLOW => {
                        Some(ProbeOutcome::Pending(since.elapsed()))
                    }
                    _ => slot.last.clone(),
                }?;
                Some((name.clone(), outcome))
            })
            .collect()
    };
    assemble(&manifest, dir, &outcomes, &processes, now)
}

type Snapshots = watch::Receiver<Option<Arc<Snapshot>>>;

/// The dashboard's routes, serving the snapshots `snapshots` receives.
pub fn router(snapshots: Snapshots) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/state", get(state))
        .with_state(snapshots)
}

async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

async fn state(State(mut snapshots): State<Snapshots>) -> Response {
    let first = tokio::time::timeout(FIRST_SNAPSHOT_WAIT, snapshots.wait_for(Option::is_some));
    let snapshot = match first.await {
        Ok(Ok(snapshot)) => snapshot.clone(),
        _ => None,
    };
    let Some(snapshot) = snapshot else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the first collection round has not finished",
        )
            .into_response();
    };
    match serde_json::to_vec(&*snapshot) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves the dashboard of the testnet in `dir` on `listener` until `shutdown` completes.
///
/// The collector runs as long as the server does; hosts are asked once per [`ROUND`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    dir: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (snapshots_tx, snapshots) = watch::channel(None);
    let (stop_tx, mut stop) = watch::channel(false);
    let collector = tokio::spawn(async move {
        let slots: Slots = Arc::default();
        loop {
            let started = tokio::time::Instant::now();
            let snapshot = round(&dir, &slots).await;
            snapshots_tx.send_replace(Some(Arc::new(snapshot)));
            tokio::select! {
                _ = tokio::time::sleep_until(started + ROUND) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
    });
    let served = axum::serve(listener, router(snapshots))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
    collector.abort();
    served.map_err(anyhow::Error::from)
}

/// `testnet dashboard`: serves the dashboard of the testnet in `dir` on `listen` until
/// Ctrl-C (or SIGTERM).
pub fn run_until_interrupted(dir: &Path, listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = std::path::absolute(dir)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        println!(
            "dashboard of {} on http://{}/ (Ctrl-C to stop)",
            dir.display(),
            listener.local_addr()?
        );
        serve(listener, dir, async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async {
                    match term.as_mut() {
                        Some(term) => { term.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        })
        .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{FederationInfo, Network};
    use crate::topology::Topology;
    use agentd::daemon::view::InventoryNode;
    use capability_schema::SecretKey;
    use node::daemon::view::ShareStatus;

    fn manifest() -> Manifest {
        let topology = Topology {
            federations: 2,
            nodes: 3,
            agents: 2,
            brokers: 1,
        };
        let hosts = topology
            .hosts()
            .unwrap()
            .into_iter()
            .enumerate()
            .map(|(n, plan)| HostInfo {
                dir: PathBuf::from(format!("/nonexistent/{}", plan.name)),
                plan,
                key: SecretKey::generate().public(),
                ip: "127.0.0.1".into(),
                p2p_port: 1000 + n as u16,
                http_port: 2000 + n as u16,
                netns: None,
            })
            .collect();
        Manifest {
            topology,
            network: Network::Loopback,
            isolation: "memory".into(),
            federations: (0..2)
                .map(|i| FederationInfo {
                    name: format!("fed{i}"),
                    authority: SecretKey::generate().public(),
                })
                .collect(),
            hosts,
            principal: SecretKey::generate().public(),
            tag: "abc123".into(),
            internet: None,
        }
    }

    fn node_status(m: &Manifest, node: &str, committed: &str) -> NodeStatus {
        NodeStatus {
            node: m.host(node).unwrap().key,
            federation: None,
            site: None,
            name: None,
            addresses: None,
            seq: Some(7),
            capacity: "cpu=2 cores,memory=2GiB,disk=4GiB,egress=100Mbit".into(),
            committed: committed.into(),
            shares: vec![ShareStatus {
                agent: m.host("agent0").unwrap().key,
                share: "cpu=1500m,memory=1536MiB,disk=3GiB,egress=75Mbit".into(),
                committed: committed.into(),
                free: "cpu=1 core".into(),
                not_after: 9000,
            }],
            load: Some(0.25),
        }
    }

    fn lease(m: &Manifest, slice: &str, end: u64) -> LeaseEntry {
        LeaseEntry {
            lease_id: format!("l-{slice}-{end}"),
            ticket_id: format!("t-{slice}-{end}"),
            slice: slice.into(),
            kind: "regular".into(),
            holder: m.principal,
            agent: m.host("agent0").unwrap().key,
            resources: "cpu=500m,memory=512MiB,disk=0B,egress=0kbit".into(),
            address: Some("10.200.0.2".into()),
            start: 100,
            end,
            state: LeaseState::Active,
            sliver: slice.into(),
        }
    }

    fn ticket(m: &Manifest, outstanding: bool) -> TicketEntry {
        TicketEntry {
            ticket_id: format!("t-{outstanding}"),
            node: m.host("node0").unwrap().key,
            principal: m.principal,
            requester: None,
            slice: "fed0-site0_demo".into(),
            resources: "cpu=500m".into(),
            not_after: 2000,
            price: 0,
            outstanding,
        }
    }

    #[test]
    fn snapshot_groups_hosts_by_federation_and_leases_by_slice() {
        let m = manifest();
        let node0_key = m.host("node0").unwrap().key;
        let mut probes = HashMap::new();
        let mut processes = HashMap::new();
        probes.insert(
            "node0".to_owned(),
            ProbeOutcome::Answered(Box::new(Answer::Node {
                status: node_status(&m, "node0", "cpu=500m,memory=512MiB,disk=0B,egress=0kbit"),
                leases: Some(vec![lease(&m, "fed0-site0_demo", 500)]),
            })),
        );
        probes.insert(
            "node1".to_owned(),
            ProbeOutcome::Answered(Box::new(Answer::Node {
                status: node_status(&m, "node1", "cpu=1 core,memory=1GiB,disk=0B,egress=0kbit"),
                leases: Some(vec![
                    lease(&m, "fed0-site0_demo", 400),
                    lease(&m, "fed0-site0_other", 900),
                ]),
            })),
        );
        probes.insert(
            "node2".to_owned(),
            ProbeOutcome::Failed("connection refused".into()),
        );
        probes.insert(
            "agent0".to_owned(),
            ProbeOutcome::Answered(Box::new(Answer::Agent {
                status: AgentStatus {
                    agent: m.host("agent0").unwrap().key,
                    federation: "fed0".into(),
                    nodes: vec![InventoryNode {
                        node: node0_key,
                        name: "node0".into(),
                        site: "site0".into(),
                        federation: "fed0".into(),
                        share: "cpu=1 core".into(),
                        outstanding: "cpu=0m".into(),
                        load: 0.1,
                        silent_secs: None,
                    }],
                    principals: 1,
                },
                tickets: Some(vec![ticket(&m, true), ticket(&m, false)]),
            })),
        );
        probes.insert(
            "agent1".to_owned(),
            ProbeOutcome::Pending(Duration::from_secs(3)),
        );
        for (i, h) in m.hosts.iter().enumerate() {
            let p = match h.plan.name.as_str() {
                "node2" => ProcessState::Absent,
                "broker0" => ProcessState::Stopped(4000),
                _ => ProcessState::Running(3000 + i as u32),
            };
            processes.insert(h.plan.name.clone(), p);
        }
        let s = assemble(&m, Path::new("/tmp/tn"), &probes, &processes, 1000);

        assert_eq!(s.federations.len(), 2);
        let fed0 = &s.federations[0];
        assert_eq!(
            fed0.nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            ["node0", "node2"]
        );
        assert_eq!(fed0.nodes[0].state, HostState::Up);
        assert_eq!(fed0.nodes[0].shares[0].agent, "agent0");
        assert!((fed0.nodes[0].usage.cpu - 0.25).abs() < 1e-9);
        assert_eq!(fed0.nodes[0].leases[0].holder, "principal");
        assert_eq!(fed0.nodes[1].state, HostState::Down);
        let agent0 = &fed0.agents[0];
        assert_eq!(agent0.inventory[0].node, "node0");
        assert_eq!(agent0.expected, ["node0", "node2"]);
        assert_eq!((agent0.tickets, agent0.outstanding), (2, 1));
        let agent1 = &s.federations[1].agents[0];
        assert_eq!(agent1.state, HostState::Unreachable);
        assert!(agent1.detail.as_deref().unwrap().contains("no answer"));
        assert_eq!(s.brokers[0].state, HostState::Frozen);

        assert_eq!(s.slices.len(), 2);
        let demo = &s.slices[0];
        assert_eq!(demo.name, "fed0-site0_demo");
        assert_eq!(demo.slivers.len(), 2);
        assert_eq!(demo.ends_at, 400);
        assert_eq!(demo.federations, ["fed0", "fed1"]);
        assert_eq!(demo.total, "cpu=1 core,memory=1GiB,disk=0B,egress=0kbit");
        assert_eq!(s.totals.leases, 3);
        assert_eq!((s.totals.nodes, s.totals.nodes_up), (3, 2));
        assert_eq!((s.totals.delegations_known, s.totals.delegations), (1, 3));
        assert!(
            s.internet.is_none(),
            "a loopback testnet has no internet host"
        );
    }

    /// A node that stopped answering, its agent's view of it and the slivers on it.
    #[test]
    fn slivers_on_silent_nodes_count_and_their_ads_do_not() {
        let m = manifest();
        let node0 = m.host("node0").unwrap().key;
        let mut probes = HashMap::new();
        let mut processes = HashMap::new();
        for (i, h) in m.hosts.iter().enumerate() {
            processes.insert(h.plan.name.clone(), ProcessState::Running(3000 + i as u32));
        }
        processes.insert("node0".to_owned(), ProcessState::Stopped(3000));
        probes.insert(
            "node1".to_owned(),
            ProbeOutcome::Answered(Box::new(Answer::Node {
                status: node_status(&m, "node1", "cpu=500m,memory=512MiB,disk=0B,egress=0kbit"),
                leases: Some(vec![lease(&m, "fed0-site0_demo", 1500)]),
            })),
        );
        let mut on_frozen = ticket(&m, true);
        on_frozen.node = node0;
        let mut ended = ticket(&m, true);
        ended.node = node0;
        ended.not_after = 900;
        probes.insert(
            "agent0".to_owned(),
            ProbeOutcome::Answered(Box::new(Answer::Agent {
                status: AgentStatus {
                    agent: m.host("agent0").unwrap().key,
                    federation: "fed0".into(),
                    nodes: vec![InventoryNode {
                        node: node0,
                        name: "node0".into(),
                        site: "site0".into(),
                        federation: "fed0".into(),
                        share: "cpu=1 core".into(),
                        outstanding: "cpu=500m".into(),
                        load: 0.1,
                        silent_secs: None,
                    }],
                    principals: 1,
                },
                tickets: Some(vec![on_frozen, ended]),
            })),
        );
        let s = assemble(&m, Path::new("/tmp/tn"), &probes, &processes, 1000);

        let demo = &s.slices[0];
        assert_eq!(demo.slivers.len(), 2, "{demo:?}");
        assert_eq!((demo.active, demo.unknown), (1, 1));
        let silent = demo.slivers.iter().find(|v| v.node == "node0").unwrap();
        assert_eq!(
            (silent.state.as_str(), silent.federation.as_str()),
            ("unknown", "fed0")
        );
        assert_eq!(demo.holders, ["principal"]);
        assert_eq!(
            s.totals.delegations_known, 0,
            "an agent still holding the frozen node's ad is not convergence"
        );
    }

    #[test]
    fn slice_colours_are_far_apart() {
        let hsl = |c: &str| -> (f64, u32) {
            let inner = c.trim_start_matches("hsl(").trim_end_matches("%)");
            let parts: Vec<&str> = inner.split(',').collect();
            (
                parts[0].parse().unwrap(),
                parts[2].trim_end_matches('%').parse().unwrap(),
            )
        };
        let colors: Vec<(f64, u32)> = slice_colors(12).iter().map(|c| hsl(c)).collect();
        for (i, a) in colors.iter().enumerate() {
            for (j, b) in colors.iter().enumerate().skip(i + 1) {
                let d = (a.0 - b.0).abs();
                let hue_apart = d.min(360.0 - d);
                let apart = if j < 8 {
                    hue_apart >= 30.0
                } else {
                    hue_apart >= 30.0 || a.1.abs_diff(b.1) >= 10
                };
                assert!(apart, "slices {i} and {j} look alike: {a:?} {b:?}");
            }
        }
    }

    #[test]
    fn the_internet_host_shows_with_its_address_and_process() {
        let mut m = manifest();
        m.internet = Some(InternetHost {
            netns: "pmtn-abc123-inet".into(),
            ip: crate::internet::ADDRESS.into(),
            http_port: 80,
            udp_port: 7,
            dir: PathBuf::from("/nonexistent/internet"),
        });
        let mut processes = HashMap::new();
        processes.insert(InternetHost::NAME.to_owned(), ProcessState::Running(77));
        let s = assemble(&m, Path::new("/tmp/tn"), &HashMap::new(), &processes, 1000);
        let internet = s.internet.unwrap();
        assert_eq!(internet.address, "10.250.255.254");
        assert_eq!(internet.url, "http://10.250.255.254/");
        assert_eq!(internet.pid, Some(77));
        let s = assemble(
            &m,
            Path::new("/tmp/tn"),
            &HashMap::new(),
            &HashMap::new(),
            1000,
        );
        assert_eq!(s.internet.unwrap().pid, None);
    }

    #[test]
    fn the_page_is_self_contained() {
        assert!(PAGE.contains("/api/state"));
        for external in ["http://", "https://", "//cdn", "<link "] {
            let outside_svg_ns = PAGE
                .replace("http://www.w3.org/2000/svg", "")
                .contains(external);
            assert!(!outside_svg_ns, "the page refers to {external}");
        }
    }

    #[tokio::test]
    async fn serves_the_page_and_a_snapshot_without_a_testnet() {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, dir.path().to_path_buf(), async move {
            let _ = stop_rx.await;
        }));
        let get = |path: &'static str| {
            tokio::task::spawn_blocking(move || probe::fetch(&format!("http://{addr}{path}")))
        };
        let page = get("/").await.unwrap().unwrap();
        assert_eq!(page.status, 200, "{page:?}");
        assert!(page.body.contains("<svg") || page.body.contains("createElementNS"));
        let state = get("/api/state").await.unwrap().unwrap();
        assert_eq!(state.status, 200, "{state:?}");
        assert!(state.body.contains("no testnet in"), "{state:?}");
        let _ = stop_tx.send(());
        server.await.unwrap().unwrap();
    }
}
