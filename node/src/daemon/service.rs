//! The node protocol's logic, independent of the network: `Redeem`, `Renew`, `Release`,
//! `Status`, `Exec`, `Spawn`, `Logs` and the SSH key calls, plus the expiry reaper and the
//! reconciliation a restart runs.
//!
//! Redeem, in order (the reply leaves only after step 5):
//! 1. the ticket is read and authorized: issuer among the agents this node delegated to,
//!    signature chain, window, presenter = final holder, node = this node, operation `redeem`;
//! 2. [`Ledger::reserve`]: spend ledger and admission (agent share, node capacity), lease
//!    written as pending, durable before the sliver exists;
//! 3. the sliver is created (on failure: [`Ledger::abort`], the spend is refunded);
//! 4. [`Ledger::activate`]: the lease is durable and active;
//! 5. the lease is signed and returned.
//!
//! Concurrent redeems do not wait for one another except where they must: the ledger commits
//! the reservations and activations of concurrent redeems together (group commit: one fsync
//! per batch, see [`crate::ledger`]), and slivers are created in parallel, at most
//! [`MAX_CONCURRENT_CREATES`] at once. No lock is held across a sliver creation. The time each
//! step takes is summed in [`RedeemTimings`] (`NodeService::timings`).
//!
//! Slivers are reached through [`SliverBackend`], so this logic is tested with a fake and runs
//! with the real isolation engine in the daemon.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use capability_schema::protocol::{
    ExecOutput, LeaseEventKind, NodeRequest, NodeResponse, NodeStatus, Reply,
};
use capability_schema::ticket::{Operation, TicketRefusal, TicketUse, Window};
use capability_schema::{
    ErrorReply, Lease, PublicEndpoint, PublicKey, Rejection, ResourceAd, SecretKey, Signed,
};

use super::delegated::Delegated;
use crate::admission::{Capacity, Commitments};
use crate::ledger::{LeaseRecord, LeaseState, Ledger, LedgerError, Reservation};

/// Why the sliver backend could not do what a request asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// What the caller sent cannot be used (an SSH key line, a program): its own fault.
    #[error("{0}")]
    Invalid(String),
    /// The lease's sliver is not on this node (it died, or the node lost it).
    #[error("sliver {0} is not running on this node")]
    NoSliver(String),
    /// The node holds as many slivers as it can (its slots, or its public port range, are
    /// all taken): the caller may try another node or later.
    #[error("{0}")]
    Full(String),
    /// The host failed; the caller can do nothing about it.
    #[error("{0}")]
    Host(String),
}

impl From<BackendError> for Rejection {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Invalid(detail) => Rejection::Malformed { detail },
            BackendError::Full(detail) => Rejection::Unavailable { detail },
            other => Rejection::Internal {
                detail: other.to_string(),
            },
        }
    }
}

/// Where a new sliver is reached: its private address, and its public face.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Its address on the node's sliver network.
    pub address: Option<String>,
    /// The node's public address and the ports leased to it.
    pub public: Option<PublicEndpoint>,
}

/// How the service reaches slivers.
pub trait SliverBackend: Send + Sync + 'static {
    /// Creates the sliver for `lease` with id `sliver_id`; returns where it is reached.
    fn create(&self, sliver_id: &str, lease: &Lease) -> Result<Placement, BackendError>;
    /// Destroys a sliver (no error if it is already gone).
    fn destroy(&self, sliver_id: &str) -> Result<(), BackendError>;
    /// The ids of the live slivers.
    fn live(&self) -> Vec<String>;
    /// Runs a program and waits for it; past `timeout_ms` it is killed and the output says
    /// it timed out.
    fn exec(
        &self,
        sliver_id: &str,
        argv: &[String],
        stdin: &[u8],
        timeout_ms: u64,
    ) -> Result<ExecOutput, BackendError>;
    /// The authorized SSH keys.
    fn list_keys(&self, sliver_id: &str) -> Result<Vec<String>, BackendError>;
    /// Authorizes an SSH key (a line [`crate::sliver::keyline::check`] accepts).
    fn add_key(&self, sliver_id: &str, key: &str) -> Result<(), BackendError>;
    /// Removes an SSH key.
    fn remove_key(&self, sliver_id: &str, key: &str) -> Result<(), BackendError>;
    /// Destroys every sliver and the node-wide state the backend set up (decommissioning).
    fn wipe(&self) -> Result<(), BackendError>;
    /// Starts a program in a sliver for an SSH session, the way `exec` runs one but
    /// streaming: piped standard streams, or `tty` (a pty's slave) as its terminal. A backend
    /// without real slivers refuses.
    fn start_session(
        &self,
        _sliver_id: &str,
        _argv: &[String],
        _env: &[(String, String)],
        _tty: Option<std::os::fd::OwnedFd>,
    ) -> Result<crate::sliver::host::Spawned, BackendError> {
        Err(BackendError::Invalid(
            "this node runs no real slivers (isolation = \"memory\"): nothing to log in to".into(),
        ))
    }
    /// Connects to port `port` of the sliver itself (`host`: `localhost` or its address),
    /// from inside its network namespace. A backend without real slivers refuses.
    fn connect_inside(
        &self,
        _sliver_id: &str,
        _host: &str,
        _port: u16,
    ) -> Result<std::net::TcpStream, BackendError> {
        Err(BackendError::Invalid(
            "this node runs no real slivers (isolation = \"memory\"): nothing to forward to".into(),
        ))
    }
    /// Puts back node-wide host state changed behind the node's back (its firewall table);
    /// returns what it restored. The reaper calls it every few seconds.
    fn maintain(&self) -> Result<Vec<String>, BackendError> {
        Ok(Vec::new())
    }
    /// A clean shutdown: removes the node-wide state no live sliver needs.
    fn close(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Where spawned programs write their output inside a sliver.
pub const SPAWN_LOG: &str = "/tmp/.planetmesh-spawn.log";

/// The longest an `Exec` may run.
pub const MAX_EXEC_MS: u64 = 10 * 60 * 1000;

/// Most slivers created at once; further redeems wait for a slot after their reservation.
/// A create mostly waits on the kernel (namespaces, netlink, the init's handshake) rather than
/// using CPU, so concurrency pays even on two cores (the redeem bench: 8 at once gave about 40
/// redeems/s, 32 about 90/s); the bound keeps a burst from holding hundreds of half-built
/// slivers (processes, links, mounts) at once.
pub const MAX_CONCURRENT_CREATES: usize = 32;

/// The steps of a redeem, as [`RedeemTimings`] counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeemStep {
    /// Parsing and authorizing the ticket (signatures, datalog).
    Verify,
    /// The durable reservation (spend, admission, pending lease).
    Reserve,
    /// Waiting for a creation slot.
    CreateWait,
    /// Creating the sliver.
    Create,
    /// The durable activation.
    Activate,
    /// Signing the lease.
    Sign,
}

impl RedeemStep {
    /// Every step, in order.
    pub const ALL: [RedeemStep; 6] = [
        RedeemStep::Verify,
        RedeemStep::Reserve,
        RedeemStep::CreateWait,
        RedeemStep::Create,
        RedeemStep::Activate,
        RedeemStep::Sign,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            RedeemStep::Verify => "verify",
            RedeemStep::Reserve => "reserve",
            RedeemStep::CreateWait => "create_wait",
            RedeemStep::Create => "create",
            RedeemStep::Activate => "activate",
            RedeemStep::Sign => "sign",
        }
    }
}

/// Time spent in each step of the redeems that got this far, summed (nanoseconds), and how many
/// redeems were timed: where redeem time goes, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct RedeemTimings {
    nanos: [AtomicU64; RedeemStep::ALL.len()],
    counts: [AtomicU64; RedeemStep::ALL.len()],
}

impl RedeemTimings {
    fn add(&self, step: RedeemStep, took: Duration) {
        let i = step as usize;
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.nanos[i].fetch_add(nanos, Ordering::Relaxed);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Times `f` as `step`.
    fn time<T>(&self, step: RedeemStep, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.add(step, start.elapsed());
        out
    }

    /// The mean time of `step` and how many times it ran.
    pub fn mean(&self, step: RedeemStep) -> (Duration, u64) {
        let i = step as usize;
        let count = self.counts[i].load(Ordering::Relaxed);
        let nanos = self.nanos[i].load(Ordering::Relaxed);
        (Duration::from_nanos(nanos / count.max(1)), count)
    }

    /// One line: each step's mean, e.g. `verify 0.41 ms, reserve 2.10 ms, …`.
    pub fn summary(&self) -> String {
        RedeemStep::ALL
            .iter()
            .map(|&step| {
                let (mean, _) = self.mean(step);
                format!("{} {:.2} ms", step.name(), mean.as_secs_f64() * 1e3)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A counting gate: at most `limit` holders at once.
#[derive(Debug)]
struct Gate {
    held: Mutex<usize>,
    freed: Condvar,
    limit: usize,
}

struct GatePass<'a>(&'a Gate);

impl Gate {
    fn new(limit: usize) -> Gate {
        Gate {
            held: Mutex::new(0),
            freed: Condvar::new(),
            limit: limit.max(1),
        }
    }

    fn enter(&self) -> GatePass<'_> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while *held >= self.limit {
            held = self
                .freed
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *held += 1;
        GatePass(self)
    }
}

impl Drop for GatePass<'_> {
    fn drop(&mut self) {
        let mut held = self.0.held.lock().unwrap_or_else(PoisonError::into_inner);
        *held -= 1;
        self.0.freed.notify_one();
    }
}

/// Most ticket ends waiting to be reported to agents; past this the oldest are dropped (their
/// agents count them until the tickets end, as they would if the node were unreachable).
pub const MAX_PENDING_RELEASE_REPORTS: usize = 4096;

/// A ticket none of whose leases lives on this node any more, to be reported to its agent
/// (`AgentRequest::Released`) so the agent stops counting it against the node's share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketEnded {
    /// The agent that issued the ticket.
    pub agent: PublicKey,
    /// The ticket id.
    pub ticket_id: String,
    /// Reports of it that failed so far.
    pub attempts: u32,
}

/// The node's service.
pub struct NodeService {
    key: SecretKey,
    federation: String,
    /// Shares, scopes, trusted issuers and signed delegations: swapped whole by a reload or
    /// a renewal; a redeem works on the one snapshot it read first.
    delegated: RwLock<Arc<Delegated>>,
    ledger: Ledger,
    backend: Arc<dyn SliverBackend>,
    creates: Gate,
    timings: RedeemTimings,
    ended: Mutex<std::collections::VecDeque<TicketEnded>>,
    revocation: super::revocation::RevocationGuard,
    /// The SSH endpoint told in `Status` (see [`super::ssh`]), once it listens.
    ssh: RwLock<Option<capability_schema::protocol::SshEndpoint>>,
}

impl std::fmt::Debug for NodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeService")
            .field("node", &self.key.public())
            .finish_non_exhaustive()
    }
}

/// What a restart found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciliation {
    /// Leases whose sliver is alive (re-adopted).
    pub adopted: Vec<String>,
    /// Pending leases whose sliver existed: made active.
    pub completed: Vec<String>,
    /// Pending leases without a sliver: removed, spend refunded.
    pub aborted: Vec<String>,
    /// Active leases whose sliver had died: removed.
    pub lost: Vec<String>,
    /// Slivers without a lease: destroyed.
    pub orphans: Vec<String>,
}

fn storage(e: LedgerError) -> Rejection {
    match e {
        LedgerError::Refused(r) => r,
        other => Rejection::Internal {
            detail: other.to_string(),
        },
    }
}

fn ticket_refusal(r: TicketRefusal) -> Rejection {
    Rejection::Ticket {
        check: r.code().to_owned(),
        detail: r.to_string(),
    }
}

/// The sliver id of a slice on this node: its name, lowercased, other characters as `-`.
pub fn sliver_id_for(slice: &str) -> String {
    let id: String = slice
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if id.is_empty() {
        "sliver".to_owned()
    } else {
        id
    }
}

impl NodeService {
    /// The service for node `key` in `federation` with `capacity`, trusting the agents it
    /// delegated to.
    pub fn new(
        key: SecretKey,
        federation: String,
        capacity: Capacity,
        ledger: Ledger,
        backend: Arc<dyn SliverBackend>,
    ) -> NodeService {
        NodeService {
            key,
            federation,
            delegated: RwLock::new(Arc::new(Delegated::unsigned(capacity))),
            ledger,
            backend,
            creates: Gate::new(MAX_CONCURRENT_CREATES),
            timings: RedeemTimings::default(),
            ended: Mutex::default(),
            revocation: Default::default(),
            ssh: RwLock::new(None),
        }
    }

    /// How the node's SSH endpoint is reached, told to callers of `Status`.
    pub fn set_ssh_endpoint(&self, endpoint: Option<capability_schema::protocol::SshEndpoint>) {
        *self.ssh.write().unwrap_or_else(PoisonError::into_inner) = endpoint;
    }

    /// How the node's SSH endpoint is reached, if it runs one.
    pub fn ssh_endpoint(&self) -> Option<capability_schema::protocol::SshEndpoint> {
        self.ssh
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The sliver backend (the SSH endpoint starts its sessions there).
    pub fn backend(&self) -> &Arc<dyn SliverBackend> {
        &self.backend
    }

    /// What this node holds revoked (see [`super::revocation`]).
    pub fn revocation(&self) -> &super::revocation::RevocationGuard {
        &self.revocation
    }

    /// Notes that `lease`'s sliver is gone: once its ticket pays for no live lease here, the
    /// ticket's end waits in the outbox for [`NodeService::take_ended_tickets`].
    fn lease_gone(&self, lease: &Lease) {
        if self.ledger.live_leases_of(&lease.ticket_id) > 0 {
            return;
        }
        self.requeue_ended(vec![TicketEnded {
            agent: lease.agent,
            ticket_id: lease.ticket_id.clone(),
            attempts: 0,
        }]);
    }

    /// Tickets that ended here since the last call, for the daemon to report to their agents.
    pub fn take_ended_tickets(&self) -> Vec<TicketEnded> {
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        ended.drain(..).collect()
    }

    /// Puts back ticket ends whose report failed (bounded: the oldest go first).
    pub fn requeue_ended(&self, tickets: Vec<TicketEnded>) {
        let mut ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        for t in tickets {
            if !ended.iter().any(|e| e.ticket_id == t.ticket_id) {
                ended.push_back(t);
            }
        }
        while ended.len() > MAX_PENDING_RELEASE_REPORTS {
            if let Some(dropped) = ended.pop_front() {
                tracing::warn!(ticket = %dropped.ticket_id, "ticket end not reported: too many waiting");
            }
        }
    }

    /// Where redeem time went so far.
    pub fn timings(&self) -> &RedeemTimings {
        &self.timings
    }

    /// This node's key.
    pub fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// The capacity, shares and scopes in force.
    pub fn capacity(&self) -> Capacity {
        self.delegated().capacity().clone()
    }

    /// What the node has delegated now.
    pub fn delegated(&self) -> Arc<Delegated> {
        Arc::clone(
            &self
                .delegated
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Puts `delegated` in force for the redeems that start from now on; live leases are
    /// not touched.
    pub fn set_delegations(&self, delegated: Delegated) {
        self.update_delegations(|_| Some(delegated));
    }

    /// Replaces the delegations in force with what `change` makes of them, if anything, in
    /// one step (a reload and a renewal never undo each other); returns those in force.
    pub fn update_delegations(
        &self,
        change: impl FnOnce(&Delegated) -> Option<Delegated>,
    ) -> Arc<Delegated> {
        let mut current = self
            .delegated
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(next) = change(&current) {
            *current = Arc::new(next);
        }
        Arc::clone(&current)
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// What the live leases commit.
    pub fn commitments(&self) -> Commitments {
        self.ledger.commitments()
    }

    fn sign(&self, lease: &Lease) -> Signed<Lease> {
        Signed::sign(&self.key, lease)
    }

    /// Answers one request from `caller` at `now`. `ad` is the node's latest ad (for `Status`).
    pub fn handle(
        &self,
        caller: &PublicKey,
        request: NodeRequest,
        now: u64,
        ad: Option<&Signed<ResourceAd>>,
    ) -> Reply<NodeResponse> {
        let result = match request {
            NodeRequest::Redeem { ticket, until } => self
                .redeem(caller, &ticket.0, until, now)
                .map(NodeResponse::Lease),
            NodeRequest::Renew { lease_id, until } => self
                .ledger
                .renew(&lease_id, caller, until, now)
                .map(|r| NodeResponse::Lease(self.sign(&r.lease)))
                .map_err(storage),
            NodeRequest::Release { lease_id } => self
                .release(caller, &lease_id)
                .map(|()| NodeResponse::Released { lease_id }),
            NodeRequest::Status => match ad {
                Some(ad) => self
                    .status(caller, ad)
                    .map(|s| NodeResponse::Status(Box::new(s))),
                None => Err(Rejection::Unavailable {
                    detail: "the node has not built its first ad yet".into(),
                }),
            },
            NodeRequest::Exec {
                lease_id,
                argv,
                stdin,
                timeout_ms,
            } => self.active(caller, &lease_id, now).and_then(|r| {
                if argv.is_empty() {
                    return Err(Rejection::Malformed {
                        detail: "exec needs a program".into(),
                    });
                }
                self.backend
                    .exec(
                        &r.sliver_id,
                        &argv,
                        &stdin,
                        timeout_ms.clamp(1, MAX_EXEC_MS),
                    )
                    .map(NodeResponse::Exec)
                    .map_err(Rejection::from)
            }),
            NodeRequest::Spawn { lease_id, argv } => self
                .active(caller, &lease_id, now)
                .and_then(|r| self.spawn(&r, &argv)),
            NodeRequest::Logs {
                lease_id,
                tail_bytes,
            } => self.active(caller, &lease_id, now).and_then(|r| {
                let tail = format!(
                    "tail -c {} {SPAWN_LOG} 2>/dev/null || true",
                    tail_bytes.clamp(1, 1 << 20)
                );
                let argv = ["/bin/sh".to_owned(), "-c".to_owned(), tail];
                self.backend
                    .exec(&r.sliver_id, &argv, &[], 10_000)
                    .map(|out| NodeResponse::Logs { bytes: out.stdout })
                    .map_err(Rejection::from)
            }),
            NodeRequest::AddKey { lease_id, key } => {
                self.active(caller, &lease_id, now).and_then(|r| {
                    check_ssh_key(&key)?;
                    self.backend
                        .add_key(&r.sliver_id, &key)
                        .map_err(Rejection::from)?;
                    self.keys(&r)
                })
            }
            NodeRequest::DelKey { lease_id, key } => {
                self.active(caller, &lease_id, now).and_then(|r| {
                    self.backend
                        .remove_key(&r.sliver_id, &key)
                        .map_err(Rejection::from)?;
                    self.keys(&r)
                })
            }
            NodeRequest::ListKeys { lease_id } => self
                .active(caller, &lease_id, now)
                .and_then(|r| self.keys(&r)),
            NodeRequest::Events(query) => self
                .ledger
                .events(caller, query.slice.as_deref(), query.after)
                .map(NodeResponse::Events)
                .map_err(storage),
            NodeRequest::LogsFrom {
                lease_id,
                offset,
                max_bytes,
            } => self.active(caller, &lease_id, now).and_then(|r| {
                super::lease_events::log_from(&*self.backend, &r.sliver_id, offset, max_bytes)
                    .map(NodeResponse::LogChunk)
            }),
        };
        result.map_err(ErrorReply::from)
    }

    fn keys(&self, record: &LeaseRecord) -> Result<NodeResponse, Rejection> {
        self.backend
            .list_keys(&record.sliver_id)
            .map(NodeResponse::Keys)
            .map_err(Rejection::from)
    }

    fn spawn(&self, record: &LeaseRecord, argv: &[String]) -> Result<NodeResponse, Rejection> {
        if argv.is_empty() {
            return Err(Rejection::Malformed {
                detail: "spawn needs a program".into(),
            });
        }
        let mut shell = vec![
            "/bin/sh".to_owned(),
            "-c".to_owned(),
            format!("\"$@\" >>{SPAWN_LOG} 2>&1 </dev/null & echo $!"),
            "sh".to_owned(),
        ];
        shell.extend(argv.iter().cloned());
        let out = self
            .backend
            .exec(&record.sliver_id, &shell, &[], 10_000)
            .map_err(Rejection::from)?;
        let pid = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| Rejection::Internal {
                detail: format!("spawn failed: {}", String::from_utf8_lossy(&out.stderr)),
            })?;
        Ok(NodeResponse::Spawned { pid })
    }

    /// The caller's active, unexpired lease.
    fn active(
        &self,
        caller: &PublicKey,
        lease_id: &str,
        now: u64,
    ) -> Result<LeaseRecord, Rejection> {
        let record = self
            .ledger
            .get(lease_id)
            .map_err(storage)?
            .filter(|r| r.state == LeaseState::Active && !r.lease.is_over(now))
            .ok_or_else(|| {
                self.revocation
                    .ended(lease_id)
                    .unwrap_or_else(|| Rejection::UnknownLease {
                        lease_id: lease_id.to_owned(),
                    })
            })?;
        if record.lease.holder != *caller {
            return Err(Rejection::NotHolder {
                lease_id: lease_id.to_owned(),
                holder: record.lease.holder,
            });
        }
        Ok(record)
    }

    /// Redeems a ticket into a sliver and a signed lease.
    pub fn redeem(
        &self,
        caller: &PublicKey,
        bytes: &[u8],
        until: Option<u64>,
        now: u64,
    ) -> Result<Signed<Lease>, Rejection> {
        let delegated = self.delegated();
        let reservation = self.timings.time(RedeemStep::Verify, || {
            self.verify(&delegated, caller, bytes, until, now)
        })?;
        let lease_id = reservation.lease.lease_id.clone();
        self.timings
            .time(RedeemStep::Reserve, || {
                self.ledger.reserve(delegated.capacity(), &reservation, now)
            })
            .map_err(storage)?;
        let pass = self
            .timings
            .time(RedeemStep::CreateWait, || self.creates.enter());
        let created = self.timings.time(RedeemStep::Create, || {
            self.backend
                .create(&reservation.sliver_id, &reservation.lease)
        });
        drop(pass);
        let placement = match created {
            Ok(placement) => placement,
            Err(e) => {
                if let Err(e) = self.ledger.abort(&lease_id) {
                    tracing::error!(lease = %lease_id, error = %e, "could not abort a failed redeem");
                }
                let detail = format!("creating the sliver failed: {e}");
                return Err(match e {
                    BackendError::Invalid(_) => Rejection::Malformed { detail },
                    BackendError::Full(_) => Rejection::Unavailable { detail },
                    _ => Rejection::Internal { detail },
                });
            }
        };
        let record = self
            .timings
            .time(RedeemStep::Activate, || {
                self.ledger
                    .activate(&lease_id, placement.address, placement.public)
            })
            .map_err(storage)?;
        Ok(self
            .timings
            .time(RedeemStep::Sign, || self.sign(&record.lease)))
    }

    /// Step 1 of a redeem: parses and authorizes the ticket; returns the reservation to make.
    fn verify(
        &self,
        delegated: &Delegated,
        caller: &PublicKey,
        bytes: &[u8],
        until: Option<u64>,
        now: u64,
    ) -> Result<Reservation, Rejection> {
        let verifier = delegated.verifier();
        // Signatures and blocks, once per ticket (a ticket presented again is read from the
        // verifier's cache of verified chains).
        let chain = verifier.verify_chain(bytes).map_err(|r| match r {
            TicketRefusal::UnknownIssuer { key_hint } => Delegated::no_delegation(&key_hint),
            other => ticket_refusal(other),
        })?;
        let contents = chain.contents();
        self.revocation
            .check_redeem(&self.public(), contents, caller)?;
        let end = until.unwrap_or(contents.not_after).min(contents.not_after);
        let ticket_use = TicketUse {
            operation: Operation::Redeem,
            resources: contents.grant,
            window: Some(Window::new(
                now.max(contents.not_before),
                end.max(now.max(contents.not_before)),
            )),
        };
        let verified = verifier
            .authorize_chain(&chain, caller, now, &ticket_use)
            .map_err(ticket_refusal)?;
        delegated
            .capacity()
            .check_scope(&verified.issuer, &verified.kind)?;
        if end <= now {
            return Err(Rejection::Ticket {
                check: "expired".into(),
                detail: format!("the lease would end at {end}, which has passed"),
            });
        }
        let sliver_id = sliver_id_for(&verified.slice);
        let lease = Lease {
            lease_id: new_lease_id(),
            ticket_id: verified.ticket_id.to_string(),
            node: self.public(),
            federation: self.federation.clone(),
            agent: verified.issuer,
            slice: verified.slice,
            kind: verified.kind,
            holder: verified.holder,
            resources: verified.grant,
            address: None,
            public: None,
            start: now,
            end,
            net: verified.net,
        };
        Ok(Reservation {
            lease,
            grant: verified.grant,
            ticket_not_after: verified.not_after,
            renewable: verified.operations.contains(&Operation::Renew),
            sliver_id,
        })
    }

    fn release(&self, caller: &PublicKey, lease_id: &str) -> Result<(), Rejection> {
        let record = self.ledger.release(lease_id, caller).map_err(storage)?;
        self.lease_gone(&record.lease);
        self.backend
            .destroy(&record.sliver_id)
            .map_err(Rejection::from)
    }

    fn status(&self, caller: &PublicKey, ad: &Signed<ResourceAd>) -> Result<NodeStatus, Rejection> {
        let leases = self
            .ledger
            .leases()
            .map_err(storage)?
            .into_iter()
            .filter(|r| r.state == LeaseState::Active && r.lease.holder == *caller)
            .map(|r| self.sign(&r.lease))
            .collect();
        Ok(NodeStatus {
            ad: ad.clone(),
            leases,
            ended: self.revocation.ended_of(caller),
            ssh: self.ssh_endpoint(),
        })
    }

    /// Ends a live lease before its time (a revocation): its sliver is destroyed, its
    /// ticket reported to its agent once it pays for nothing here, and its holder's events
    /// say `ended` with `reason`.
    pub fn end_early(&self, lease: &Lease, reason: &str) -> Result<(), Rejection> {
        let record = self.ledger.get(&lease.lease_id).map_err(storage)?;
        self.ledger
            .end(
                &lease.lease_id,
                LeaseEventKind::Ended,
                Some(reason.to_owned()),
            )
            .map_err(storage)?;
        self.lease_gone(lease);
        match record {
            Some(record) => self
                .backend
                .destroy(&record.sliver_id)
                .map_err(Rejection::from),
            None => Ok(()),
        }
    }

    /// Tears down slivers whose lease ended; returns the lease ids reaped, or why the ledger
    /// could not be read (nothing is reaped then).
    pub fn reap(&self, now: u64) -> Result<Vec<String>, LedgerError> {
        let mut reaped = Vec::new();
        for record in self.ledger.expired(now)? {
            if let Err(e) = self.backend.destroy(&record.sliver_id) {
                tracing::warn!(lease = %record.lease.lease_id, error = %e, "expired sliver not destroyed; will retry");
                continue;
            }
            let reaped_why = Some(super::lease_events::REAPED.to_owned());
            if self
                .ledger
                .end(&record.lease.lease_id, LeaseEventKind::Reaped, reaped_why)
                .is_ok()
            {
                self.lease_gone(&record.lease);
                reaped.push(record.lease.lease_id);
            }
        }
        Ok(reaped)
    }

    /// Puts back host state changed behind the node's back (see [`SliverBackend::maintain`]).
    pub fn maintain(&self) -> Result<Vec<String>, BackendError> {
        self.backend.maintain()
    }

    /// Removes, at a clean shutdown, the node-wide state no live sliver needs.
    pub fn close(&self) -> Result<(), BackendError> {
        self.backend.close()
    }

    /// Decommissions the node: destroys every sliver, removes every lease from the ledger and
    /// tears down node-wide state. Spends stay recorded (a ticket is never spent twice).
    pub fn decommission(&self) -> Result<usize, Rejection> {
        let leases = self.ledger.leases().map_err(storage)?;
        self.backend.wipe().map_err(Rejection::from)?;
        for record in &leases {
            self.ledger
                .remove(&record.lease.lease_id)
                .map_err(storage)?;
        }
        Ok(leases.len())
    }

    /// Makes the ledger and the host agree after a restart: every leased sliver that lives is
    /// kept; pending leases are completed or aborted; slivers without a lease are destroyed.
    pub fn reconcile(&self) -> Result<Reconciliation, Rejection> {
        let live: std::collections::BTreeSet<String> = self.backend.live().into_iter().collect();
        let mut out = Reconciliation::default();
        let mut leased = BTreeMap::new();
        for record in self.ledger.leases().map_err(storage)? {
            let alive = live.contains(&record.sliver_id);
            match (record.state, alive) {
                (LeaseState::Active, true) => out.adopted.push(record.lease.lease_id.clone()),
                (LeaseState::Pending, true) => {
                    let (address, public) =
                        (record.lease.address.clone(), record.lease.public.clone());
                    self.ledger
                        .activate(&record.lease.lease_id, address, public)
                        .map_err(storage)?;
                    out.completed.push(record.lease.lease_id.clone());
                }
                (LeaseState::Pending, false) => {
                    self.ledger.abort(&record.lease.lease_id).map_err(storage)?;
                    out.aborted.push(record.lease.lease_id.clone());
                    continue;
                }
                (LeaseState::Active, false) => {
                    let lost_why = Some(super::lease_events::LOST.to_owned());
                    self.ledger
                        .end(&record.lease.lease_id, LeaseEventKind::Lost, lost_why)
                        .map_err(storage)?;
                    self.lease_gone(&record.lease);
                    out.lost.push(record.lease.lease_id.clone());
                    continue;
                }
            }
            leased.insert(record.sliver_id.clone(), record);
        }
        for id in live {
            if !leased.contains_key(&id) {
                self.backend.destroy(&id).map_err(Rejection::from)?;
                out.orphans.push(id);
            }
        }
        Ok(out)
    }
}

fn new_lease_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_ssh_key(key: &str) -> Result<(), Rejection> {
    crate::sliver::keyline::check(key)
        .map(drop)
        .map_err(|reason| Rejection::Malformed {
            detail: format!("not an OpenSSH public key line: {reason}"),
        })
}
