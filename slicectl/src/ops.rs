//! The service manager's commands: create, status, renew, delete, exec, spawn, logs, keys,
//! sync, list (paper §4.2.4).
//!
//! `create` flows as follows:
//! 1. the spec becomes a `SliceRequest`; the slice is recorded in the local state;
//! 2. tickets are acquired (broker, or agents in-process) and written to the state **before**
//!    any redeem is tried;
//! 3. every ticket is redeemed at its node in parallel; each lease replaces its ticket in the
//!    state in one transaction as it arrives;
//! 4. a node that did not answer (down: no connection, no answer in time) is replaced by a
//!    sliver elsewhere, same constraints, that node excluded ([`replace`]), and standard error
//!    says so;
//! 5. a node that still fails: `all-or-nothing` releases every lease obtained, tells the
//!    agents the tickets are back and forgets the slice (nothing is left anywhere);
//!    `best-effort` keeps the unredeemed tickets and reports the missing slivers, which `sync`
//!    completes later.
//!
//! Every command answers an [`Outcome`]: JSON for programs, lines for people, an exit class.

use broker::acquire::CallError;
use capability_schema::protocol::{AcquiredSlice, NodeRequest, NodeResponse, SlicePlan};
use capability_schema::resources::human_bytes;
use capability_schema::slice::SliverTarget;
use capability_schema::ticket::{Ticket, TrustedIssuers};
use capability_schema::{AcquireMode, Rejection, SliceRequest};
use federation::unix_now;
use indicatif::ProgressBar;
use serde_json::{Value, json};

use crate::client::{ClientError, Session, call_class, retryable};
use crate::config::ConfigError;
use crate::exit::ExitClass;
use crate::spec::{SliceSpec, SpecError};
use crate::state::{LeaseEntry, SliceRecord, State, StateError, TicketEntry, node_label};

pub mod replace;

/// Why a command could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The local state.
    #[error(transparent)]
    State(#[from] StateError),
    /// The spec.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Config or identity.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Brokers or agents.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A `ticket` command (show, attenuate, delegate, import, redeem).
    #[error(transparent)]
    Ticket(#[from] crate::ticket::TicketCommandError),
    /// A check made on this machine before any network call.
    #[error(transparent)]
    Local(Box<crate::preflight::LocalCheckError>),
    /// Contexts (`slicectl context`, or finding the config).
    #[error(transparent)]
    Context(#[from] crate::context::ContextError),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// Something this machine must provide is missing or unusable (a key, a state
    /// directory, a file that cannot be written).
    #[error("{0}")]
    Setup(String),
    /// An unexpected failure outside the commands (the async runtime).
    #[error("{0}")]
    Internal(String),
}

impl From<crate::preflight::LocalCheckError> for OpError {
    fn from(e: crate::preflight::LocalCheckError) -> Self {
        OpError::Local(Box::new(e))
    }
}

impl OpError {
    /// The exit class.
    pub fn class(&self) -> ExitClass {
        match self {
            OpError::State(StateError::NoSlice(_)) => ExitClass::NotFound,
            OpError::State(StateError::Exists(_)) => ExitClass::Usage,
            OpError::State(StateError::Storage { .. }) => ExitClass::Setup,
            OpError::Spec(_) | OpError::Usage(_) => ExitClass::Usage,
            OpError::Config(_) | OpError::Setup(_) => ExitClass::Setup,
            OpError::Context(crate::context::ContextError::Unknown { .. })
            | OpError::Context(crate::context::ContextError::BadName(_)) => ExitClass::Usage,
            OpError::Context(_) => ExitClass::Setup,
            OpError::Internal(_) => ExitClass::Internal,
            OpError::Local(e) => match **e {
                crate::preflight::LocalCheckError::SliceName { .. } => ExitClass::Usage,
                _ => ExitClass::Setup,
            },
            OpError::Client(e) => e.class(),
            OpError::Ticket(e) => e.class(),
        }
    }

    /// JSON for `--json`.
    pub fn to_json(&self) -> Value {
        let reason = match self {
            OpError::Client(ClientError::Refused(reply)) => reply.reason.code().to_owned(),
            OpError::Client(ClientError::NotAcquired(failure)) => {
                failure.reply.reason.code().to_owned()
            }
            _ => self.class().name().to_owned(),
        };
        let mut out = json!({
            "ok": false,
            "exit_code": self.class().code(),
            "reason": reason,
            "error": self.to_string(),
        });
        if let OpError::Client(ClientError::NotAcquired(failure)) = self {
            out["plan"] = failure.plan.as_deref().map_or(Value::Null, plan_json);
            out["report"] = json!(failure.report);
            out["events"] = json!(failure.events);
        }
        out
    }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// For `--json`.
    pub json: Value,
    /// For people.
    pub lines: Vec<String>,
    /// How the process exits.
    pub class: ExitClass,
}

/// Makes progress bars and per-node progress lines, on standard error only (hidden when it is
/// not a terminal or with `--json`: the caller sets `visible`).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Whether to draw.
    pub visible: bool,
}

impl Progress {
    /// A spinner saying `what` is under way (hidden when not visible).
    fn spinner(&self, what: &str) -> ProgressBar {
        if !self.visible {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner();
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    }

    fn bar(&self, len: usize, what: &str) -> ProgressBar {
        if !self.visible || len == 0 {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} {elapsed}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_owned());
        bar
    }
}

/// The commands, over a session and the local state.
#[derive(Debug)]
pub struct Manager {
    /// The network client.
    pub session: Session,
    /// The local state.
    pub state: State,
    /// Progress bars.
    pub progress: Progress,
}

fn short_error(e: &CallError) -> String {
    match e {
        CallError::Refused(reply) => format!("{} ({})", reply.message, reply.reason.code()),
        other => other.to_string(),
    }
}

fn lease_json(e: &LeaseEntry) -> Value {
    json!({
        "node": e.lease.node.to_string(),
        "site": e.site,
        "federation": e.lease.federation,
        "lease_id": e.lease.lease_id,
        "address": e.lease.address,
        "public": e.lease.public.as_ref().map(|p| json!({
            "address": p.address,
            "ports": p.ports,
        })),
        "start": e.lease.start,
        "end": e.lease.end,
        "ticket_end": e.ticket_not_after,
    })
}

fn ticket_json(t: &TicketEntry) -> Value {
    json!({
        "node": t.ticket.node.to_string(),
        "site": t.site,
        "federation": t.ticket.federation,
        "agent": t.ticket.agent.to_string(),
        "ticket_id": t.ticket.ticket_id,
        "not_after": t.not_after,
    })
}

/// A plan as `--json` shows it, in `slice plan` and in a failed `slice create` alike: the
/// chosen slivers and the alternatives (further candidates, best first) as arrays of the same
/// objects, the nodes left out grouped by reason.
pub fn plan_json(plan: &SlicePlan) -> Value {
    let slivers = |list: &[capability_schema::protocol::PlannedSliver]| {
        list.iter()
            .map(|s| {
                json!({
                    "node": s.node.to_string(), "site": s.site, "federation": s.federation,
                    "agent": s.agent.to_string(), "price": s.price,
                })
            })
            .collect::<Vec<_>>()
    };
    json!({
        "satisfiable": plan.satisfiable,
        "explanation": plan.explanation,
        "chosen": slivers(&plan.chosen),
        "alternatives": slivers(&plan.alternatives),
        "rejected": plan.rejected.iter().map(|g| json!({
            "reason": g.reason, "count": g.count,
            "examples": g.examples.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// Lines explaining a plan's left-out nodes ("37 nodes: memory").
pub fn rejected_lines(plan: &SlicePlan) -> Vec<String> {
    plan.rejected
        .iter()
        .map(|g| format!("  {} nodes: {}", g.count, g.reason))
        .collect()
}

/// The ticket entries of an acquisition, with sites from its plan and ends from the tickets.
fn ticket_entries(acquired: &AcquiredSlice, request: &SliceRequest) -> Vec<TicketEntry> {
    let now = unix_now();
    acquired
        .tickets
        .iter()
        .map(|t| {
            let site = acquired
                .plan
                .chosen
                .iter()
                .find(|s| s.node == t.node)
                .map(|s| s.site.clone())
                .unwrap_or_else(|| "?".into());
            let not_after = Ticket::from_bytes(&t.ticket.0, &TrustedIssuers::from_iter([t.agent]))
                .ok()
                .and_then(|ticket| ticket.contents().ok())
                .map_or(now.saturating_add(request.duration_secs), |c| c.not_after);
            TicketEntry {
                ticket: t.clone(),
                site,
                not_after,
            }
        })
        .collect()
}

/// What redeeming a batch of tickets gave.
#[derive(Debug, Default)]
struct Redeemed {
    leases: Vec<LeaseEntry>,
    failed: Vec<(TicketEntry, CallError)>,
}

impl Manager {
    /// Redeems `tickets` of `slice` in parallel; each lease replaces its ticket in the state
    /// as it arrives. A ticket the node says is spent already is looked up among the caller's
    /// leases on that node (a crash after the node granted it, before it was stored).
    async fn redeem(
        &self,
        slice: &str,
        tickets: Vec<TicketEntry>,
        lease_secs: Option<u64>,
    ) -> Result<Redeemed, OpError> {
        let bar = self.progress.bar(tickets.len(), "redeeming");
        let now = unix_now();
        let results = self
            .session
            .fan_out(&tickets, |t| {
                let until = lease_secs.map(|l| now.saturating_add(l).min(t.not_after));
                let bar = bar.clone();
                async move {
                    let node = t.ticket.node;
                    let request = NodeRequest::Redeem {
                        ticket: t.ticket.ticket.clone(),
                        until,
                    };
                    let answer = self
                        .session
                        .node_call(node, &t.ticket.addresses, request)
                        .await;
                    let result = match answer {
                        Ok(NodeResponse::Lease(signed)) => self.adopt(slice, t, signed),
                        Ok(other) => Err(CallError::Unexpected(format!("{other:?}"))),
                        Err(CallError::Refused(reply))
                            if reply.reason.code() == "already_spent" =>
                        {
                            self.find_lease(slice, t)
                                .await
                                .ok_or(CallError::Refused(reply))
                        }
                        Err(e) => Err(e),
                    };
                    match &result {
                        Ok(lease) => bar.println(format!(
                            "{}: redeemed, lease {}",
                            lease.label(),
                            lease.lease.lease_id
                        )),
                        Err(e) => bar.println(format!(
                            "{}: not redeemed: {}",
                            node_label(&t.site, &node),
                            short_error(e)
                        )),
                    }
                    bar.inc(1);
                    result
                }
            })
            .await;
        bar.finish_and_clear();
        let mut out = Redeemed::default();
        for (ticket, result) in results {
            match result {
                Ok(lease) => out.leases.push(lease),
                Err(e) => out.failed.push((ticket.clone(), e)),
            }
        }
        out.leases.sort_by_key(LeaseEntry::label);
        Ok(out)
    }

    /// Checks a lease's signature and stores it in place of its ticket.
    fn adopt(
        &self,
        slice: &str,
        t: &TicketEntry,
        signed: capability_schema::Signed<capability_schema::Lease>,
    ) -> Result<LeaseEntry, CallError> {
        let lease = signed
            .verify_by(&t.ticket.node)
            .map_err(|e| CallError::Unexpected(format!("the lease does not verify: {e}")))?;
        let entry = LeaseEntry {
            signed,
            lease,
            addresses: t.ticket.addresses.clone(),
            site: t.site.clone(),
            ticket_not_after: t.not_after,
        };
        self.state
            .redeemed(slice, &t.ticket.ticket_id, &entry)
            .map_err(|e| CallError::Unexpected(e.to_string()))?;
        Ok(entry)
    }

    /// The caller's lease for ticket `t` on its node, if the node has one.
    async fn find_lease(&self, slice: &str, t: &TicketEntry) -> Option<LeaseEntry> {
        let answer = self
            .session
            .node_call(t.ticket.node, &t.ticket.addresses, NodeRequest::Status)
            .await
            .ok()?;
        let NodeResponse::Status(status) = answer else {
            return None;
        };
        let signed = status.leases.into_iter().find(|l| {
            l.verify_by(&t.ticket.node)
                .is_ok_and(|lease| lease.ticket_id == t.ticket.ticket_id)
        })?;
        self.adopt(slice, t, signed).ok()
    }

    /// Releases leases at their nodes in parallel; forgets those released (or already gone).
    /// Answers the leases that could not be released, with why.
    async fn release_leases(
        &self,
        slice: &str,
        leases: Vec<LeaseEntry>,
    ) -> Vec<(LeaseEntry, CallError)> {
        let bar = self.progress.bar(leases.len(), "releasing");
        let results = self
            .session
            .fan_out(&leases, |l| {
                let bar = bar.clone();
                async move {
                    let r = self
                        .session
                        .node_call(
                            l.lease.node,
                            &l.addresses,
                            NodeRequest::Release {
                                lease_id: l.lease.lease_id.clone(),
                            },
                        )
                        .await;
                    bar.inc(1);
                    r
                }
            })
            .await;
        bar.finish_and_clear();
        let mut failed = Vec::new();
        for (lease, r) in results {
            let gone = match &r {
                Ok(_) => true,
                Err(CallError::Refused(reply)) => reply.reason.code() == "unknown_lease",
                Err(_) => false,
            };
            if gone {
                if let Err(e) = self.state.remove_lease(slice, &lease.lease.node) {
                    failed.push((lease.clone(), CallError::Unexpected(e.to_string())));
                }
            } else if let Err(e) = r {
                failed.push((lease.clone(), e));
            }
        }
        failed
    }

    /// `slice plan`: what the broker would pick, and why not the rest.
    pub async fn plan(&self, spec: &SliceSpec) -> Result<Outcome, OpError> {
        let id = self.session.identity();
        let request = spec.to_request(id.key.public(), &id.federation())?;
        let plan = self.session.find(&request).await?;
        let mut lines = vec![plan.explanation.clone()];
        for s in &plan.chosen {
            lines.push(format!(
                "  {} ({}) via agent {} price {}",
                node_label(&s.site, &s.node),
                s.federation,
                s.agent.short(),
                s.price
            ));
        }
        if !plan.rejected.is_empty() {
            lines.push("not picked:".into());
            lines.extend(rejected_lines(&plan));
        }
        let class = if plan.satisfiable {
            ExitClass::Ok
        } else {
            ExitClass::Unsatisfiable
        };
        Ok(Outcome {
            json: json!({"ok": plan.satisfiable, "plan": plan_json(&plan)}),
            lines,
            class,
        })
    }

    /// `slice create`.
    pub async fn create(&self, spec: &SliceSpec) -> Result<Outcome, OpError> {
        let started = std::time::Instant::now();
        let id = self.session.identity();
        let request = spec.to_request(id.key.public(), &id.federation())?;
        let lease_secs = spec.lease_secs()?;
        let name = request.name.clone();
        self.state.create_slice(&SliceRecord {
            request: request.clone(),
            lease_secs,
            created_at: unix_now(),
        })?;
        let spinner = self.progress.spinner("acquiring tickets");
        let acquired = match self.session.acquire(&request).await {
            Ok(a) => a,
            Err(e) => {
                spinner.finish_and_clear();
                self.state.remove_slice(&name)?;
                return Err(e.into());
            }
        };
        let tickets = ticket_entries(&acquired, &request);
        for t in &tickets {
            spinner.println(format!(
                "ticket for {} from agent {}",
                node_label(&t.site, &t.ticket.node),
                t.ticket.agent.short()
            ));
        }
        spinner.finish_and_clear();
        // Durable before any redeem.
        self.state.add_tickets(&name, &tickets)?;
        let mut all_ids: Vec<_> = tickets
            .iter()
            .map(|t| (t.ticket.agent, t.ticket.ticket_id.clone()))
            .collect();
        let redeemed = self.redeem(&name, tickets, lease_secs).await?;
        let (redeemed, replaced) = self
            .replace_down_nodes(&name, &request, &mut all_ids, redeemed, lease_secs)
            .await?;
        crate::nodes::learn_names(&self.session, &redeemed.leases).await;

        let mut lines: Vec<String> = replaced.iter().map(ToString::to_string).collect();
        for (t, e) in &redeemed.failed {
            lines.push(format!(
                "{}: not redeemed: {}",
                node_label(&t.site, &t.ticket.node),
                short_error(e)
            ));
        }
        let failed_class = redeemed
            .failed
            .iter()
            .fold(ExitClass::Ok, |c, (_, e)| c.worst(call_class(e)));

        if !redeemed.failed.is_empty() && request.mode == AcquireMode::AllOrNothing {
            let obtained = redeemed.leases.len();
            let stuck = self.release_leases(&name, redeemed.leases).await;
            let known = self.session.release_tickets(all_ids).await;
            let class = failed_class.worst(ExitClass::Unreachable);
            if stuck.is_empty() {
                self.state.remove_slice(&name)?;
                lines.push(format!(
                    "all-or-nothing: {} of {} slivers failed; released the {obtained} leases \
                     obtained and returned the tickets ({known} known to their agents); no lease \
                     is left",
                    redeemed.failed.len(),
                    acquired.tickets.len()
                ));
            } else {
                for (l, e) in &stuck {
                    lines.push(format!(
                        "{}: lease {} not released: {}",
                        l.label(),
                        l.lease.lease_id,
                        short_error(e)
                    ));
                }
                lines.push(format!(
                    "all-or-nothing: {} leases could not be released yet; run `slicectl slice \
                     delete {name}` to retry",
                    stuck.len()
                ));
            }
            return Ok(Outcome {
                json: json!({
                    "ok": false,
                    "slice": name,
                    "mode": request.mode.to_string(),
                    "failed": redeemed.failed.iter().map(|(t, e)| json!({
                        "node": t.ticket.node.to_string(), "site": t.site, "error": short_error(e),
                    })).collect::<Vec<_>>(),
                    "leases_left": stuck.len(),
                    "replaced": replaced.iter().map(replace::Replaced::to_json).collect::<Vec<_>>(),
                    "report": acquired.report,
                    "events": acquired.events,
                }),
                lines,
                class,
            });
        }

        for l in &redeemed.leases {
            lines.push(format!(
                "{}: lease {} until {}{}",
                l.label(),
                l.lease.lease_id,
                crate::human::at(l.lease.end, unix_now()),
                l.lease
                    .address
                    .as_deref()
                    .map(|a| format!(" at {a}"))
                    .unwrap_or_default()
            ));
        }
        let missing = acquired.missing as usize + redeemed.failed.len();
        let wanted = request.target.count();
        if acquired.missing > 0 {
            lines.push(format!(
                "{} slivers could not be acquired: {}",
                acquired.missing, acquired.plan.explanation
            ));
        }
        let class = if missing == 0 {
            ExitClass::Ok
        } else {
            lines.push(format!(
                "best-effort: {} of {wanted} slivers held, {missing} missing; `slicectl slice sync {name}` retries",
                redeemed.leases.len()
            ));
            ExitClass::Partial
        };
        lines.insert(
            0,
            format!(
                "slice {name}: {} of {wanted} slivers in {:.2} s",
                redeemed.leases.len(),
                started.elapsed().as_secs_f64()
            ),
        );
        Ok(Outcome {
            json: json!({
                "ok": missing == 0,
                "slice": name,
                "wanted": wanted,
                "leases": redeemed.leases.iter().map(lease_json).collect::<Vec<_>>(),
                "unredeemed": redeemed.failed.iter().map(|(t, e)| {
                    let mut v = ticket_json(t);
                    v["error"] = json!(short_error(e));
                    v
                }).collect::<Vec<_>>(),
                "missing": missing,
                "replaced": replaced.iter().map(replace::Replaced::to_json).collect::<Vec<_>>(),
                "plan": plan_json(&acquired.plan),
                "report": acquired.report,
                "events": acquired.events,
                "elapsed_ms": started.elapsed().as_millis() as u64,
            }),
            lines,
            class,
        })
    }

    /// Each lease's node asked for its status, in parallel (at most the session's concurrency
    /// at once); answers in completion order, each with its lease.
    async fn lease_statuses<'a>(
        &'a self,
        leases: &'a [LeaseEntry],
    ) -> Vec<(&'a LeaseEntry, Result<NodeResponse, CallError>)> {
        let answers = self
            .session
            .fan_out(leases, |l| {
                self.session
                    .node_call(l.lease.node, &l.addresses, NodeRequest::Status)
            })
            .await;
        // Each answer carries the node's ad: its name names the node in output.
        for (l, answer) in &answers {
            if let Ok(NodeResponse::Status(status)) = answer
                && let Ok(ad) = status.ad.verify_by(&l.lease.node)
            {
                crate::nodes::learn_ad(&ad);
            }
        }
        answers
    }

    /// `slice status`: each sliver as its node sees it now.
    pub async fn status(&self, name: &str) -> Result<Outcome, OpError> {
        let record = self.state.slice(name)?;
        let leases = self.state.leases(name)?;
        let tickets = self.state.tickets(name)?;
        let now = unix_now();
        let results = self.lease_statuses(&leases).await;
        let mut lines = vec![format!(
            "slice {name}: {} slivers wanted",
            record.request.target.count()
        )];
        let mut slivers = Vec::new();
        let mut class = ExitClass::Ok;
        let mut sorted = results;
        sorted.sort_by_key(|a| a.0.label());
        for (l, r) in sorted {
            // What the node measured of this sliver, from its signed ad.
            let usage = match &r {
                Ok(NodeResponse::Status(status)) => {
                    status.ad.verify_by(&l.lease.node).ok().and_then(|ad| {
                        ad.measured
                            .slivers
                            .into_iter()
                            .find(|u| u.slice == l.lease.slice)
                    })
                }
                _ => None,
            };
            let ssh = match &r {
                Ok(NodeResponse::Status(status)) => crate::ssh::describe(status, l),
                _ => None,
            };
            let mut ended = None;
            let (state, end) = match r {
                Ok(NodeResponse::Status(status)) => {
                    match status.leases.iter().find_map(|s| {
                        s.verify_by(&l.lease.node)
                            .ok()
                            .filter(|x| x.lease_id == l.lease.lease_id)
                    }) {
                        Some(live) => ("live".to_owned(), live.end),
                        None => {
                            class = class.worst(ExitClass::Partial);
                            // A node that ended the lease early says why (a revocation).
                            ended = status
                                .ended
                                .iter()
                                .find(|e| e.lease_id == l.lease.lease_id)
                                .map(|e| e.reason.clone());
                            ("gone".to_owned(), l.lease.end)
                        }
                    }
                }
                Ok(_) => ("unknown".to_owned(), l.lease.end),
                Err(e) => {
                    class = class.worst(ExitClass::Unreachable);
                    (format!("unreachable ({e})"), l.lease.end)
                }
            };
            match &ended {
                Some(reason) => lines.push(format!(
                    "  {}: {state}, lease {} ended: {reason}",
                    l.label(),
                    l.lease.lease_id,
                )),
                None => lines.push(format!(
                    "  {}: {state}, lease {} ends {}",
                    l.label(),
                    l.lease.lease_id,
                    crate::human::at(end, now)
                )),
            }
            if let Some(public) = &l.lease.public {
                lines.push(format!("    reached at {public}"));
            }
            let mut v = lease_json(l);
            v["state"] = json!(state);
            v["end"] = json!(end);
            if let Some(reason) = &ended {
                v["ended"] = json!(reason);
            }
            if let Some((line, value)) = ssh {
                lines.push(line);
                v["ssh"] = value;
            }
            if let Some(u) = &usage {
                lines.push(format!(
                    "    used: cpu {:.1} s, memory {}, sent {}{}",
                    u.cpu_time_ms as f64 / 1000.0,
                    human_bytes(u.memory_bytes),
                    human_bytes(u.egress_bytes),
                    u.disk_bytes
                        .map(|d| format!(", disk {}", human_bytes(d)))
                        .unwrap_or_default()
                ));
                if let Some(condition) = &u.condition {
                    lines.push(format!("    condition: {condition}"));
                }
                v["usage"] = json!({
                    "cpu_time_ms": u.cpu_time_ms,
                    "memory_bytes": u.memory_bytes,
                    "egress_bytes": u.egress_bytes,
                    "disk_bytes": u.disk_bytes,
                });
                v["condition"] = json!(u.condition);
            }
            slivers.push(v);
        }
        for t in &tickets {
            class = class.worst(ExitClass::Partial);
            lines.push(format!(
                "  {}: ticket {} not redeemed yet (valid until {})",
                node_label(&t.site, &t.ticket.node),
                &t.ticket.ticket_id[..t.ticket.ticket_id.len().min(12)],
                crate::human::at(t.not_after, now)
            ));
        }
        Ok(Outcome {
            json: json!({
                "ok": class == ExitClass::Ok,
                "slice": name,
                "wanted": record.request.target.count(),
                "slivers": slivers,
                "unredeemed": tickets.iter().map(ticket_json).collect::<Vec<_>>(),
            }),
            lines,
            class,
        })
    }

    /// `slice renew`: asks every node for `now + secs` (default: the slice's lease length,
    /// else its duration), capped at each ticket's end, and shows the end each node granted.
    pub async fn renew(&self, name: &str, secs: Option<u64>) -> Result<Outcome, OpError> {
        let record = self.state.slice(name)?;
        let leases = self.state.leases(name)?;
        if leases.is_empty() {
            return Err(OpError::Usage(format!(
                "slice {name} holds no lease to renew (see `slicectl slice status {name}`)"
            )));
        }
        let secs = secs
            .or(record.lease_secs)
            .unwrap_or(record.request.duration_secs);
        let now = unix_now();
        let asked = now.saturating_add(secs);
        let bar = self.progress.bar(leases.len(), "renewing");
        let results = self
            .session
            .fan_out(&leases, |l| {
                let bar = bar.clone();
                async move {
                    let until = asked.min(l.ticket_not_after).max(l.lease.end);
                    let mut r = self.renew_one(l, until).await;
                    if let Err(CallError::Refused(reply)) = &r
                        && let Rejection::RenewPastTicket { not_after, .. } = reply.reason
                        && not_after > l.lease.end
                    {
                        r = self.renew_one(l, not_after).await;
                    }
                    bar.inc(1);
                    r
                }
            })
            .await;
        bar.finish_and_clear();
        let mut lines = vec![format!(
            "slice {name}: renewal to {} asked (now + {})",
            crate::human::local_time(asked),
            crate::human::duration(secs)
        )];
        let mut out = Vec::new();
        let mut class = ExitClass::Ok;
        let mut sorted = results;
        sorted.sort_by_key(|a| a.0.label());
        for (l, r) in sorted {
            match r {
                Ok(renewed) => {
                    let note = if renewed.lease.end < asked {
                        format!(
                            " (capped: the ticket ends at {})",
                            crate::human::local_time(renewed.ticket_not_after)
                        )
                    } else {
                        String::new()
                    };
                    lines.push(format!(
                        "  {}: granted until {}{note}",
                        renewed.label(),
                        crate::human::at(renewed.lease.end, now)
                    ));
                    out.push(json!({
                        "node": renewed.lease.node.to_string(), "site": renewed.site,
                        "asked": asked, "granted": renewed.lease.end, "ok": true,
                    }));
                }
                Err(e) => {
                    class = class.worst(call_class(&e));
                    lines.push(format!("  {}: not renewed: {}", l.label(), short_error(&e)));
                    out.push(json!({
                        "node": l.lease.node.to_string(), "site": l.site,
                        "asked": asked, "granted": l.lease.end, "ok": false, "error": short_error(&e),
                    }));
                }
            }
        }
        Ok(Outcome {
            json: json!({"ok": class == ExitClass::Ok, "slice": name, "asked": asked, "slivers": out}),
            lines,
            class,
        })
    }

    async fn renew_one(&self, l: &LeaseEntry, until: u64) -> Result<LeaseEntry, CallError> {
        let answer = self
            .session
            .node_call(
                l.lease.node,
                &l.addresses,
                NodeRequest::Renew {
                    lease_id: l.lease.lease_id.clone(),
                    until,
                },
            )
            .await?;
        let NodeResponse::Lease(signed) = answer else {
            return Err(CallError::Unexpected(format!("{answer:?}")));
        };
        let lease = signed
            .verify_by(&l.lease.node)
            .map_err(|e| CallError::Unexpected(format!("the lease does not verify: {e}")))?;
        let entry = LeaseEntry {
            signed,
            lease,
            ..l.clone()
        };
        self.state
            .put_lease(&entry.lease.slice, &entry)
            .map_err(|e| CallError::Unexpected(e.to_string()))?;
        Ok(entry)
    }

    /// `slice delete`: releases every lease, returns unredeemed tickets, forgets the slice.
    pub async fn delete(&self, name: &str) -> Result<Outcome, OpError> {
        self.state.slice(name)?;
        let leases = self.state.leases(name)?;
        let tickets = self.state.tickets(name)?;
        let count = leases.len();
        let mut ids: Vec<_> = leases
            .iter()
            .map(|l| (l.lease.agent, l.lease.ticket_id.clone()))
            .collect();
        ids.extend(
            tickets
                .iter()
                .map(|t| (t.ticket.agent, t.ticket.ticket_id.clone())),
        );
        let stuck = self.release_leases(name, leases).await;
        let mut lines = Vec::new();
        let mut class = ExitClass::Ok;
        for (l, e) in &stuck {
            class = class.worst(call_class(e));
            lines.push(format!("  {}: not released: {}", l.label(), short_error(e)));
        }
        // The agents may stop counting the tickets (best effort: they lapse anyway). They
        // accept this from the principal the tickets are bound to, which this manager is,
        // whether it or a broker obtained them.
        let known = self.session.release_tickets(ids).await;
        if stuck.is_empty() {
            self.state.remove_slice(name)?;
            lines.insert(
                0,
                format!(
                    "slice {name} deleted: {count} leases released, {} unredeemed tickets returned \
                     ({known} tickets known to their agents)",
                    tickets.len()
                ),
            );
        } else {
            for t in &tickets {
                let _ = self.state.remove_ticket(name, &t.ticket.ticket_id);
            }
            lines.insert(
                0,
                format!(
                    "slice {name}: {} of {count} leases not released; run delete again when the \
                     nodes answer",
                    stuck.len()
                ),
            );
        }
        Ok(Outcome {
            json: json!({
                "ok": stuck.is_empty(),
                "slice": name,
                "released": count - stuck.len(),
                "not_released": stuck.iter().map(|(l, e)| json!({
                    "node": l.lease.node.to_string(), "error": short_error(e),
                })).collect::<Vec<_>>(),
            }),
            lines,
            class,
        })
    }

    /// Runs one node request on every sliver of `name`; answers per lease.
    async fn on_every_sliver(
        &self,
        name: &str,
        make: impl Fn(&LeaseEntry) -> NodeRequest,
    ) -> Result<Vec<(LeaseEntry, Result<NodeResponse, CallError>)>, OpError> {
        self.state.slice(name)?;
        let leases = self.state.leases(name)?;
        if leases.is_empty() {
            return Err(OpError::Usage(format!("slice {name} holds no sliver")));
        }
        let make = &make;
        let results = self
            .session
            .fan_out(&leases, |l| {
                self.session.node_call(l.lease.node, &l.addresses, make(l))
            })
            .await;
        let mut results: Vec<(LeaseEntry, Result<NodeResponse, CallError>)> =
            results.into_iter().map(|(l, r)| (l.clone(), r)).collect();
        results.sort_by_key(|a| a.0.label());
        Ok(results)
    }

    /// `slice exec -- CMD`: runs CMD in every sliver at once; output prefixed by node.
    pub async fn exec(
        &self,
        name: &str,
        argv: Vec<String>,
        timeout_ms: u64,
    ) -> Result<Outcome, OpError> {
        if argv.is_empty() {
            return Err(OpError::Usage("exec needs a command after --".into()));
        }
        let results = self
            .on_every_sliver(name, |l| NodeRequest::Exec {
                lease_id: l.lease.lease_id.clone(),
                argv: argv.clone(),
                stdin: Vec::new(),
                timeout_ms,
            })
            .await?;
        let mut lines = Vec::new();
        let mut out = Vec::new();
        let mut class = ExitClass::Ok;
        for (l, r) in results {
            let label = l.label();
            match r {
                Ok(NodeResponse::Exec(o)) => {
                    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
                    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
                    for line in stdout.lines() {
                        lines.push(format!("[{label}] {line}"));
                    }
                    for line in stderr.lines() {
                        lines.push(format!("[{label}] (stderr) {line}"));
                    }
                    if o.not_run() {
                        // A node without isolation ran nothing; its stderr says so.
                        class = class.worst(ExitClass::NotRun);
                        lines.push(format!(
                            "[{label}] not run: this node has no isolation (exit {})",
                            ExitClass::NotRun.code()
                        ));
                    } else if o.exit_code != 0 || o.timed_out {
                        class = class.worst(ExitClass::CommandFailed);
                        lines.push(format!(
                            "[{label}] exit {}{}",
                            o.exit_code,
                            if o.timed_out { " (timed out)" } else { "" }
                        ));
                    }
                    out.push(json!({
                        "node": l.lease.node.to_string(), "site": l.site, "exit_code": o.exit_code,
                        "stdout": stdout, "stderr": stderr, "timed_out": o.timed_out,
                        "truncated": o.truncated, "not_run": o.not_run(),
                    }));
                }
                Ok(other) => {
                    class = class.worst(ExitClass::Internal);
                    lines.push(format!("[{label}] unexpected answer {other:?}"));
                }
                Err(e) => {
                    class = class.worst(call_class(&e));
                    lines.push(format!("[{label}] error: {}", short_error(&e)));
                    out.push(json!({
                        "node": l.lease.node.to_string(), "site": l.site, "error": short_error(&e),
                    }));
                }
            }
        }
        Ok(Outcome {
            json: json!({"ok": class == ExitClass::Ok, "slice": name, "slivers": out}),
            lines,
            class,
        })
    }

    /// `slice spawn -- CMD`: starts CMD in the background in every sliver.
    pub async fn spawn(&self, name: &str, argv: Vec<String>) -> Result<Outcome, OpError> {
        if argv.is_empty() {
            return Err(OpError::Usage("spawn needs a command after --".into()));
        }
        let results = self
            .on_every_sliver(name, |l| NodeRequest::Spawn {
                lease_id: l.lease.lease_id.clone(),
                argv: argv.clone(),
            })
            .await?;
        Ok(self.simple(name, results, |label, r| match r {
            NodeResponse::Spawned { pid } => {
                (vec![format!("[{label}] pid {pid}")], json!({"pid": pid}))
            }
            other => (vec![format!("[{label}] {other:?}")], json!(null)),
        }))
    }

    /// `slice logs`: the output of spawned programs, prefixed by node.
    pub async fn logs(&self, name: &str, tail_bytes: u64) -> Result<Outcome, OpError> {
        let results = self
            .on_every_sliver(name, |l| NodeRequest::Logs {
                lease_id: l.lease.lease_id.clone(),
                tail_bytes,
            })
            .await?;
        Ok(self.simple(name, results, |label, r| match r {
            NodeResponse::Logs { bytes } => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                (
                    text.lines().map(|l| format!("[{label}] {l}")).collect(),
                    json!({"logs": text}),
                )
            }
            other => (vec![format!("[{label}] {other:?}")], json!(null)),
        }))
    }

    /// `slice keys add|del|list`. `del` takes a key line, or a comment: then each sliver's
    /// keys are listed and every line with that comment is removed (nodes match key lines).
    pub async fn keys(&self, name: &str, action: KeyAction) -> Result<Outcome, OpError> {
        let results = match &action {
            KeyAction::Del(comment) if !is_key_line(comment) => {
                self.del_keys_by_comment(name, comment.trim()).await?
            }
            _ => {
                self.on_every_sliver(name, |l| {
                    let lease_id = l.lease.lease_id.clone();
                    match &action {
                        KeyAction::Add(key) => NodeRequest::AddKey {
                            lease_id,
                            key: key.clone(),
                        },
                        KeyAction::Del(key) => NodeRequest::DelKey {
                            lease_id,
                            key: key.clone(),
                        },
                        KeyAction::List => NodeRequest::ListKeys { lease_id },
                    }
                })
                .await?
            }
        };
        Ok(self.simple(name, results, |label, r| match r {
            NodeResponse::Keys(keys) => {
                let mut lines: Vec<String> =
                    keys.iter().map(|k| format!("[{label}] {k}")).collect();
                if keys.is_empty() {
                    lines.push(format!("[{label}] (no keys)"));
                }
                (lines, json!({"keys": keys}))
            }
            other => (vec![format!("[{label}] {other:?}")], json!(null)),
        }))
    }

    /// On every sliver at once: lists its keys, removes each line whose comment is `comment`;
    /// answers the keys left (as `DelKey` does).
    async fn del_keys_by_comment(
        &self,
        name: &str,
        comment: &str,
    ) -> Result<Vec<(LeaseEntry, Result<NodeResponse, CallError>)>, OpError> {
        self.state.slice(name)?;
        let leases = self.state.leases(name)?;
        if leases.is_empty() {
            return Err(OpError::Usage(format!("slice {name} holds no sliver")));
        }
        let results = self
            .session
            .fan_out(&leases, |l| async move {
                let call = |request| self.session.node_call(l.lease.node, &l.addresses, request);
                let lease_id = l.lease.lease_id.clone();
                let mut answer = call(NodeRequest::ListKeys {
                    lease_id: lease_id.clone(),
                })
                .await?;
                let NodeResponse::Keys(keys) = &answer else {
                    return Err(CallError::Unexpected(format!("{answer:?}")));
                };
                let matching: Vec<String> = keys
                    .iter()
                    .filter(|k| key_comment(k) == comment)
                    .cloned()
                    .collect();
                for key in matching {
                    answer = call(NodeRequest::DelKey {
                        lease_id: lease_id.clone(),
                        key,
                    })
                    .await?;
                }
                Ok(answer)
            })
            .await;
        let mut results: Vec<(LeaseEntry, Result<NodeResponse, CallError>)> =
            results.into_iter().map(|(l, r)| (l.clone(), r)).collect();
        results.sort_by_key(|a| a.0.label());
        Ok(results)
    }

    fn simple(
        &self,
        name: &str,
        results: Vec<(LeaseEntry, Result<NodeResponse, CallError>)>,
        render: impl Fn(&str, NodeResponse) -> (Vec<String>, Value),
    ) -> Outcome {
        let mut lines = Vec::new();
        let mut out = Vec::new();
        let mut class = ExitClass::Ok;
        for (l, r) in results {
            let label = l.label();
            let mut v = match r {
                Ok(resp) => {
                    let (ls, v) = render(&label, resp);
                    lines.extend(ls);
                    v
                }
                Err(e) => {
                    class = class.worst(call_class(&e));
                    lines.push(format!("[{label}] error: {}", short_error(&e)));
                    json!({"error": short_error(&e)})
                }
            };
            if let Value::Object(map) = &mut v {
                map.insert("node".into(), json!(l.lease.node.to_string()));
                map.insert("site".into(), json!(l.site));
            }
            out.push(v);
        }
        Outcome {
            json: json!({"ok": class == ExitClass::Ok, "slice": name, "slivers": out}),
            lines,
            class,
        }
    }

    /// `slice sync`: forgets expired leases, asks every node holding a lease whether it still
    /// has it (a lease its node no longer has is forgotten and its sliver acquired again),
    /// redeems unredeemed tickets (dropping expired ones), and acquires tickets for slivers
    /// still missing (best effort, keeping the slice's `min_sites`).
    pub async fn sync(&self, name: Option<&str>) -> Result<Outcome, OpError> {
        let names: Vec<String> = match name {
            Some(n) => {
                self.state.slice(n)?;
                vec![n.to_owned()]
            }
            None => self
                .state
                .slices()?
                .into_iter()
                .map(|r| r.request.name)
                .collect(),
        };
        let mut lines = Vec::new();
        let mut out = Vec::new();
        let mut class = ExitClass::Ok;
        for name in names {
            let (o, c) = self.sync_one(&name).await?;
            class = class.worst(c);
            lines.extend(o.1);
            out.push(o.0);
        }
        Ok(Outcome {
            json: json!({"ok": class == ExitClass::Ok, "slices": out}),
            lines,
            class,
        })
    }

    /// The leases of `name` whose node answers its status without them (asked in parallel,
    /// at most the session's concurrency at once). Unanswered nodes count as still holding.
    async fn gone_leases(&self, name: &str) -> Result<Vec<LeaseEntry>, OpError> {
        let leases = self.state.leases(name)?;
        let results = self.lease_statuses(&leases).await;
        let mut gone: Vec<LeaseEntry> = results
            .into_iter()
            .filter(|(l, r)| match r {
                Ok(NodeResponse::Status(status)) => !status.leases.iter().any(|s| {
                    s.verify_by(&l.lease.node)
                        .is_ok_and(|x| x.lease_id == l.lease.lease_id)
                }),
                _ => false,
            })
            .map(|(l, _)| l.clone())
            .collect();
        gone.sort_by_key(LeaseEntry::label);
        Ok(gone)
    }

    async fn sync_one(&self, name: &str) -> Result<((Value, Vec<String>), ExitClass), OpError> {
        let record = self.state.slice(name)?;
        let now = unix_now();
        let mut lines = Vec::new();
        // Expired leases and tickets.
        for l in self.state.leases(name)? {
            if l.lease.is_over(now) {
                self.state.remove_lease(name, &l.lease.node)?;
                lines.push(format!(
                    "{}: lease {} expired; forgotten",
                    l.label(),
                    l.lease.lease_id
                ));
            }
        }
        // Leases the slice holds: does each node still have it? (A node wiped, or a lease
        // released behind slicectl's back.) A node that does not answer keeps its lease here:
        // only a node's own answer makes a lease gone.
        let gone = self.gone_leases(name).await?;
        for l in &gone {
            self.state.remove_lease(name, &l.lease.node)?;
            lines.push(format!(
                "{}: lease {} is gone from its node; acquiring the sliver again",
                l.label(),
                l.lease.lease_id
            ));
        }
        if !gone.is_empty() {
            // Its agent may stop counting the ticket against its share (best effort).
            self.session
                .release_tickets(
                    gone.iter()
                        .map(|l| (l.lease.agent, l.lease.ticket_id.clone()))
                        .collect(),
                )
                .await;
        }
        let mut tickets = Vec::new();
        for t in self.state.tickets(name)? {
            if t.not_after <= now {
                self.state.remove_ticket(name, &t.ticket.ticket_id)?;
                lines.push(format!(
                    "{}: ticket expired unredeemed; forgotten",
                    node_label(&t.site, &t.ticket.node)
                ));
            } else {
                tickets.push(t);
            }
        }
        // Slivers missing altogether: acquire tickets for them.
        let leases = self.state.leases(name)?;
        let held: Vec<capability_schema::PublicKey> = leases
            .iter()
            .map(|l| l.lease.node)
            .chain(tickets.iter().map(|t| t.ticket.node))
            .collect();
        let held_sites: std::collections::BTreeSet<String> = leases
            .iter()
            .map(|l| l.site.clone())
            .chain(tickets.iter().map(|t| t.site.clone()))
            .collect();
        let wanted = record.request.target.count();
        let mut acquired_report = Vec::new();
        let mut acquired_events = Vec::new();
        if held.len() < wanted {
            let mut request = record.request.clone();
            request.mode = AcquireMode::BestEffort;
            request.duration_secs = (record.created_at + record.request.duration_secs)
                .saturating_sub(now)
                .max(60);
            request.target = match &record.request.target {
                SliverTarget::Count(_) => SliverTarget::Count((wanted - held.len()) as u32),
                SliverTarget::Nodes(nodes) => SliverTarget::Nodes(
                    nodes
                        .iter()
                        .filter(|n| !held.contains(n))
                        .copied()
                        .collect(),
                ),
            };
            request
                .constraints
                .exclude_nodes
                .extend(held.iter().copied());
            // The original `min_sites` still binds: the new slivers must bring the sites the
            // held ones lack (at most one site per new sliver).
            request.constraints.min_sites = rest_min_sites(
                record.request.constraints.min_sites,
                held_sites.len(),
                request.target.count(),
            );
            match self.session.acquire(&request).await {
                Ok(acquired) => {
                    let more = ticket_entries(&acquired, &request);
                    self.state.add_tickets(name, &more)?;
                    lines.push(format!(
                        "acquired {} more tickets for missing slivers",
                        more.len()
                    ));
                    acquired_report = acquired.report;
                    acquired_events = acquired.events;
                    tickets.extend(more);
                }
                Err(e) => lines.push(format!(
                    "{} slivers missing and none acquired: {e}",
                    wanted - held.len()
                )),
            }
        }
        let redeemed = self.redeem(name, tickets, record.lease_secs).await?;
        crate::nodes::learn_names(&self.session, &redeemed.leases).await;
        for l in &redeemed.leases {
            lines.push(format!(
                "{}: redeemed, lease {} until {}",
                l.label(),
                l.lease.lease_id,
                crate::human::at(l.lease.end, now)
            ));
        }
        let mut class = ExitClass::Ok;
        for (t, e) in &redeemed.failed {
            if retryable(e) {
                class = class.worst(ExitClass::Partial);
                lines.push(format!(
                    "{}: still not redeemed: {}",
                    node_label(&t.site, &t.ticket.node),
                    short_error(e)
                ));
            } else {
                self.state.remove_ticket(name, &t.ticket.ticket_id)?;
                class = class.worst(ExitClass::Partial);
                lines.push(format!(
                    "{}: ticket refused for good ({}); forgotten",
                    node_label(&t.site, &t.ticket.node),
                    short_error(e)
                ));
            }
        }
        let now_held = self.state.leases(name)?;
        let have = now_held.len();
        if have < wanted {
            class = class.worst(ExitClass::Partial);
        }
        let min_sites = record.request.constraints.min_sites as usize;
        let sites = now_held
            .iter()
            .map(|l| l.site.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if have == wanted && sites < min_sites {
            class = class.worst(ExitClass::Partial);
            lines.push(format!(
                "the slivers span {sites} sites, fewer than min_sites {min_sites}: delete the \
                 slice and create it again to spread it"
            ));
        }
        lines.insert(0, format!("slice {name}: {have} of {wanted} slivers held"));
        let json = json!({
            "slice": name,
            "wanted": wanted,
            "held": have,
            "sites": sites,
            "gone": gone.iter().map(lease_json).collect::<Vec<_>>(),
            "redeemed": redeemed.leases.iter().map(lease_json).collect::<Vec<_>>(),
            "unredeemed": redeemed.failed.iter().map(|(t, e)| {
                let mut v = ticket_json(t);
                v["error"] = json!(short_error(e));
                v
            }).collect::<Vec<_>>(),
            "report": acquired_report,
            "events": acquired_events,
        });
        Ok(((json, lines), class))
    }
}

/// Whether `text` is an OpenSSH public key line (`ssh-ed25519 AAAA… comment`, `ecdsa-…`,
/// `sk-…`) rather than a bare comment.
fn is_key_line(text: &str) -> bool {
    let mut fields = text.split_whitespace();
    let kind = fields.next().unwrap_or("");
    (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
        && fields.next().is_some()
}

/// A key line's comment: what follows its type and key (empty if none).
fn key_comment(line: &str) -> String {
    line.split_whitespace()
        .skip(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `min_sites` of a request for the slivers a slice still lacks: the sites the original
/// asked for beyond those held, at most one per new sliver.
fn rest_min_sites(original: u32, held_sites: usize, new_slivers: usize) -> u32 {
    let lacking = (original as usize).saturating_sub(held_sites);
    u32::try_from(lacking.min(new_slivers)).unwrap_or(u32::MAX)
}

/// `slice list`: the slices in the local state (no network).
pub fn list(state: &State) -> Result<Outcome, OpError> {
    {
        let now = unix_now();
        let mut lines = Vec::new();
        let mut out = Vec::new();
        for record in state.slices()? {
            let name = &record.request.name;
            let leases = state.leases(name)?;
            let tickets = state.tickets(name)?;
            let end = leases.iter().map(|l| l.lease.end).min();
            lines.push(format!(
                "{name}: {} of {} slivers, {} unredeemed tickets{}",
                leases.len(),
                record.request.target.count(),
                tickets.len(),
                end.map(|e| format!(", first lease ends {}", crate::human::relative(e, now)))
                    .unwrap_or_default()
            ));
            out.push(json!({
                "slice": name,
                "wanted": record.request.target.count(),
                "leases": leases.len(),
                "unredeemed": tickets.len(),
                "first_end": end,
            }));
        }
        if lines.is_empty() {
            lines.push("no slices".into());
        }
        Ok(Outcome {
            json: json!({"ok": true, "slices": out}),
            lines,
            class: ExitClass::Ok,
        })
    }
}

/// What `slice keys` does.
#[derive(Debug, Clone)]
pub enum KeyAction {
    /// Authorize a key.
    Add(String),
    /// Remove a key.
    Del(String),
    /// List keys.
    List,
}

#[cfg(test)]
mod tests {
    use super::{is_key_line, key_comment, rest_min_sites};

    #[test]
    fn key_lines_and_comments() {
        let line = "ssh-ed25519 AAAAC3Nza alice@laptop";
        assert!(is_key_line(line));
        assert!(is_key_line("ecdsa-sha2-nistp256 AAAA"));
        assert!(!is_key_line("alice@laptop"));
        assert!(!is_key_line("ssh-ed25519"));
        assert_eq!(key_comment(line), "alice@laptop");
        assert_eq!(key_comment("ssh-rsa AAAA my  old key"), "my old key");
        assert_eq!(key_comment("ssh-rsa AAAA"), "");
    }

    #[test]
    fn a_failed_acquisition_shows_its_report_and_typed_events_under_json() {
        use capability_schema::Rejection;
        use capability_schema::protocol::{AcquireEvent, BrokerFailure, SlicePlan};

        use super::OpError;
        use crate::client::ClientError;

        let events = vec![AcquireEvent::Released {
            tickets: 2,
            agents: 1,
            not_told: vec![],
        }];
        let failure = BrokerFailure {
            reply: Rejection::Unsatisfiable {
                detail: "2 of 4 slivers".into(),
            }
            .into(),
            plan: Some(Box::new(SlicePlan {
                chosen: vec![],
                alternatives: vec![],
                rejected: vec![],
                satisfiable: false,
                explanation: "2 of 4 slivers".into(),
            })),
            report: AcquireEvent::render_all(&events),
            events,
        };
        let e = OpError::Client(ClientError::NotAcquired(Box::new(failure)));
        assert_eq!(e.to_string(), "unsatisfiable: 2 of 4 slivers");
        let json = e.to_json();
        assert_eq!(json["reason"], "unsatisfiable");
        assert_eq!(
            json["report"][0],
            "all-or-nothing: released 2 tickets at 1 agents"
        );
        assert_eq!(json["events"][0]["released"]["tickets"], 2);
        assert_eq!(json["plan"]["explanation"], "2 of 4 slivers");
    }

    #[test]
    fn the_rest_of_a_slice_keeps_its_min_sites() {
        // 4 sites wanted, 3 held, 1 sliver missing: the new one must be on a fourth site.
        assert_eq!(rest_min_sites(4, 3, 1), 1);
        // Enough sites held already: no constraint on the new slivers.
        assert_eq!(rest_min_sites(2, 3, 1), 0);
        assert_eq!(rest_min_sites(0, 0, 5), 0);
        // Never more than the slivers asked (the planner refuses that shape).
        assert_eq!(rest_min_sites(5, 0, 2), 2);
    }
}
