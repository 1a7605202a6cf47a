//! Acquisition: from a `SliceRequest` to tickets bound to the principal (paper Figure 1,
//! steps 2–4), across the agents of several federations.
//!
//! How an acquisition flows:
//! 0. **Shape.** A request no offer could satisfy ([`planner::check_shape`]) fails as
//!    `malformed` before any agent is asked.
//! 1. **Gather.** `GetAds` goes to every agent at once (at most `concurrency` in flight, each
//!    bounded by `call_timeout`). Every offer's ad is checked by the trust store (node
//!    signature, membership, expiry) and must come from the agent asked; what passes becomes a
//!    planner [`Candidate`]. Agents that fail are named in the report; the others still count.
//! 2. **Plan** with [`planner::plan_around`] (nothing held yet).
//! 3. **Ask.** The chosen slivers are grouped per agent; one `GetTickets` per agent, in
//!    parallel. Issued tickets are kept (a ticket for a node that was not asked is released at
//!    once, to all such agents in parallel); a refused sliver excludes that (node, agent) pair; an agent that refuses the whole
//!    request, times out or cannot be reached is excluded altogether.
//! 4. **Replan** around the exclusions for the slivers still missing, preferring new sites,
//!    for at most `max_rounds` rounds.
//!
//! The whole of steps 1–4 is bounded by the acquisition's deadline ([`Acquirer::with_deadline`],
//! by default [`DEADLINE_CALLS`] × `call_timeout`): a call never outlives it, and no round
//! starts after it. Settling still hands tickets back (each call bounded by `call_timeout`), so
//! an acquisition answers within the deadline plus one `call_timeout`.
//! 5. **Settle.** Complete: the tickets and the report. Short, `all-or-nothing`: every ticket
//!    obtained is handed back with `Released` (the agents stop counting it; unredeemed, it
//!    lapses anyway; an agent accepts it from the peer that obtained the tickets, which is
//!    this broker, as well as from their principal or node) and the answer is an error naming the binding constraint. Short,
//!    `best-effort`: the tickets obtained, with `missing` and the report.
//!
//! The network is behind [`AgentClient`]: [`OverlayAgents`] in daemons and `slicectl`, a fake
//! in tests.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use capability_schema::protocol::{
    AdQuery, AgentRequest, AgentResponse, IssuedTicket, NodeOffer, PlannedSliver, RefusedSliver,
    RejectedGroup, SlicePlan, SliverAsk, TicketRequest,
};
use capability_schema::{
    AcquireMode, ErrorReply, MembershipCert, PublicKey, Rejection, Signed, SliceRequest,
};
use federation::overlay::AgentProtocol;
use federation::{OverlayError, OverlayHandle, SharedTrust, unix_now};
use futures::StreamExt;

use crate::planner::{self, Candidate};

/// Why one call to an agent failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The agent answered with a refusal.
    #[error("{0}")]
    Refused(ErrorReply),
    /// The agent could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The agent did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer exceeded the response size cap.
    #[error("answer too large: {0}")]
    TooLarge(String),
    /// The agent answered something that does not fit the question.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl From<OverlayError> for CallError {
    fn from(e: OverlayError) -> Self {
        match e {
            OverlayError::Rejected(reply) => CallError::Refused(reply),
            OverlayError::Timeout { after, .. } => CallError::Timeout(after),
            e @ OverlayError::ResponseTooLarge { .. } => CallError::TooLarge(e.to_string()),
            other => CallError::Unreachable(other.to_string()),
        }
    }
}

/// An agent's answer to `GetTickets`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketsAnswer {
    /// Minted tickets.
    pub issued: Vec<IssuedTicket>,
    /// Refused slivers.
    pub refused: Vec<RefusedSliver>,
}

/// How the broker talks to agents.
pub trait AgentClient: Send + Sync {
    /// `GetAds` to `agent`.
    fn get_ads(
        &self,
        agent: PublicKey,
        query: AdQuery,
    ) -> impl Future<Output = Result<Vec<NodeOffer>, CallError>> + Send;
    /// `GetTickets` to `agent`.
    fn get_tickets(
        &self,
        agent: PublicKey,
        request: TicketRequest,
    ) -> impl Future<Output = Result<TicketsAnswer, CallError>> + Send;
    /// `Released` to `agent`; answers how many the agent knew.
    fn released(
        &self,
        agent: PublicKey,
        ticket_ids: Vec<String>,
    ) -> impl Future<Output = Result<u32, CallError>> + Send;
}

/// Agents reached over the overlay.
#[derive(Debug, Clone)]
pub struct OverlayAgents {
    overlay: OverlayHandle,
    timeout: Duration,
}

impl OverlayAgents {
    /// Agents reached through `overlay`, each call bounded by `timeout`.
    pub fn new(overlay: OverlayHandle, timeout: Duration) -> Self {
        OverlayAgents { overlay, timeout }
    }

    async fn call(
        &self,
        agent: PublicKey,
        request: AgentRequest,
    ) -> Result<AgentResponse, CallError> {
        Ok(self
            .overlay
            .request::<AgentProtocol>(&agent, request, self.timeout)
            .await?)
    }
}

impl AgentClient for OverlayAgents {
    async fn get_ads(&self, agent: PublicKey, query: AdQuery) -> Result<Vec<NodeOffer>, CallError> {
        match self.call(agent, AgentRequest::GetAds(query)).await? {
            AgentResponse::Ads(offers) => Ok(offers),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }

    async fn get_tickets(
        &self,
        agent: PublicKey,
        request: TicketRequest,
    ) -> Result<TicketsAnswer, CallError> {
        match self.call(agent, AgentRequest::GetTickets(request)).await? {
            AgentResponse::Tickets { issued, refused } => Ok(TicketsAnswer { issued, refused }),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }

    async fn released(&self, agent: PublicKey, ticket_ids: Vec<String>) -> Result<u32, CallError> {
        match self
            .call(agent, AgentRequest::Released { ticket_ids })
            .await?
        {
            AgentResponse::Released { known } => Ok(known),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// Limits of an acquisition.
#[derive(Debug, Clone)]
pub struct AcquireSettings {
    /// The longest one agent call may take. Default 10 s.
    pub call_timeout: Duration,
    /// Most agent calls in flight at once. Default 16.
    pub concurrency: usize,
    /// Most `GetTickets` rounds (the first plan plus replans). Default 4.
    pub max_rounds: u32,
}

impl AcquireSettings {
    /// The deadline of a whole acquisition when none is set: [`DEADLINE_CALLS`] call timeouts.
    pub fn default_deadline(&self) -> Duration {
        self.call_timeout.saturating_mul(DEADLINE_CALLS)
    }
}

impl Default for AcquireSettings {
    fn default() -> Self {
        AcquireSettings {
            call_timeout: Duration::from_secs(10),
            concurrency: 16,
            max_rounds: 4,
        }
    }
}

/// The default deadline of a whole acquisition, in call timeouts: the offers, one round of
/// tickets and one replan, each with an agent answering at the last moment.
pub const DEADLINE_CALLS: u32 = 3;

/// What the agents offered.
#[derive(Debug, Clone, Default)]
pub struct Gathered {
    /// Valid offers, as planner candidates.
    pub candidates: Vec<Candidate>,
    /// Agents that answered.
    pub answered: usize,
    /// Agents asked.
    pub asked: usize,
    /// What went wrong, line by line (agents that failed, offers dropped).
    pub report: Vec<String>,
}

pub use capability_schema::protocol::AcquireFailure;

/// The acquisition engine over an [`AgentClient`].
#[derive(Debug)]
pub struct Acquirer<C> {
    client: C,
    trust: SharedTrust,
    settings: AcquireSettings,
    deadline: Duration,
}

/// One sliver obtained.
#[derive(Debug, Clone)]
struct Held {
    planned: PlannedSliver,
    ticket: IssuedTicket,
}

impl<C: AgentClient> Acquirer<C> {
    /// An acquirer asking agents through `client`, checking ads with `trust`. Each
    /// acquisition's deadline is [`DEADLINE_CALLS`] × `call_timeout` (30 s at the default
    /// 10 s); [`Acquirer::with_deadline`] sets another.
    pub fn new(client: C, trust: SharedTrust, settings: AcquireSettings) -> Self {
        let deadline = settings.default_deadline();
        Acquirer {
            client,
            trust,
            settings,
            deadline,
        }
    }

    /// The same acquirer with `deadline` for each whole acquisition (gathering, ticket
    /// rounds, replans; handing tickets back afterwards is bounded by `call_timeout` alone).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The settings.
    pub fn settings(&self) -> &AcquireSettings {
        &self.settings
    }

    /// The deadline of each whole acquisition.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// `call` bounded by `call_timeout`.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, CallError>>,
    ) -> Result<T, CallError> {
        tokio::time::timeout(self.settings.call_timeout, call)
            .await
            .unwrap_or(Err(CallError::Timeout(self.settings.call_timeout)))
    }

    /// `call` bounded by `call_timeout` and by `until`, whichever comes first.
    async fn bounded_until<T>(
        &self,
        call: impl Future<Output = Result<T, CallError>>,
        until: Instant,
    ) -> Result<T, CallError> {
        let limit = self
            .settings
            .call_timeout
            .min(until.saturating_duration_since(Instant::now()));
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or(Err(CallError::Timeout(limit)))
    }

    /// Hands tickets back, all agents at once (at most `concurrency` in flight); answers how
    /// many agents could not be told.
    async fn release(&self, per_agent: BTreeMap<PublicKey, Vec<String>>) -> usize {
        let results: Vec<Result<u32, CallError>> = futures::stream::iter(per_agent)
            .map(|(agent, ids)| self.bounded(self.client.released(agent, ids)))
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        results.iter().filter(|r| r.is_err()).count()
    }

    /// Asks every agent of `agents` for offers matching `request` (all offers, so the plan
    /// can explain every node it leaves out; filtered by the request if an agent's answer is
    /// too large).
    pub async fn gather(&self, agents: &[PublicKey], request: &SliceRequest) -> Gathered {
        self.gather_until(agents, request, Instant::now() + self.deadline)
            .await
    }

    /// [`Acquirer::gather`], every call ending by `until`.
    async fn gather_until(
        &self,
        agents: &[PublicKey],
        request: &SliceRequest,
        until: Instant,
    ) -> Gathered {
        let now = unix_now();
        let agents: BTreeSet<PublicKey> = agents.iter().copied().collect();
        let answers: Vec<(PublicKey, Result<Vec<NodeOffer>, CallError>)> =
            futures::stream::iter(agents.iter().copied())
                .map(|agent| async move {
                    let mut answer = self
                        .bounded_until(self.client.get_ads(agent, AdQuery::default()), until)
                        .await;
                    if let Err(CallError::TooLarge(_)) = &answer {
                        // Too many offers for one answer: ask only for those that fit.
                        let narrow = AdQuery {
                            min_free: request.per_sliver,
                            federations: request.constraints.federations.clone(),
                            ..AdQuery::default()
                        };
                        answer = self
                            .bounded_until(self.client.get_ads(agent, narrow), until)
                            .await;
                    }
                    (agent, answer)
                })
                .buffer_unordered(self.settings.concurrency.max(1))
                .collect()
                .await;
        let mut out = Gathered {
            asked: agents.len(),
            ..Gathered::default()
        };
        let trust = self
            .trust
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (agent, answer) in answers {
            let offers = match answer {
                Ok(offers) => offers,
                Err(e) => {
                    out.report
                        .push(format!("agent {}: no offers ({e})", agent.short()));
                    continue;
                }
            };
            out.answered += 1;
            let mut dropped = 0usize;
            let mut first_problem = None;
            for offer in offers {
                if offer.agent != agent {
                    dropped += 1;
                    first_problem.get_or_insert_with(|| {
                        format!("an offer names agent {}", offer.agent.short())
                    });
                    continue;
                }
                match trust.validate_ad(&offer.ad, now, None) {
                    Ok(ad) => out.candidates.push(Candidate {
                        node: ad.node,
                        federation: ad.federation,
                        site: ad.site,
                        agent,
                        free: offer.free,
                        prices: offer.prices,
                        load_milli: ad.measured.load_milli,
                    }),
                    Err(e) => {
                        dropped += 1;
                        first_problem.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            if dropped > 0 {
                out.report.push(format!(
                    "agent {}: {dropped} offers dropped ({})",
                    agent.short(),
                    first_problem.unwrap_or_default()
                ));
            }
        }
        out
    }

    /// Plans `request` over the offers of `agents` (the broker's `FindSlice`).
    pub async fn find(&self, agents: &[PublicKey], request: &SliceRequest) -> SlicePlan {
        if planner::check_shape(request).is_err() {
            // Malformed: the plan says why, and no agent is asked.
            return planner::plan(request, &[]);
        }
        let gathered = self.gather(agents, request).await;
        let mut plan = planner::plan(request, &gathered.candidates);
        if !gathered.report.is_empty() {
            plan.explanation.push_str(&format!(
                "; {} of {} agents answered ({})",
                gathered.answered,
                gathered.asked,
                gathered.report.join("; ")
            ));
        }
        plan
    }

    /// Obtains tickets for `request` from `agents`, bound to the principal (the broker's
    /// `AcquireSlice`, and `slicectl --agent`).
    pub async fn acquire(
        &self,
        agents: &[PublicKey],
        request: &SliceRequest,
        principal_cert: Option<&Signed<MembershipCert>>,
    ) -> Result<capability_schema::protocol::AcquiredSlice, AcquireFailure> {
        if let Err(e) = planner::check_shape(request) {
            return Err(AcquireFailure {
                reply: Rejection::Malformed {
                    detail: e.to_string(),
                }
                .into(),
                plan: planner::plan(request, &[]),
                report: Vec::new(),
            });
        }
        let until = Instant::now() + self.deadline;
        let gathered = self.gather_until(agents, request, until).await;
        let mut report = gathered.report.clone();
        let wanted = request.target.count();
        let now = unix_now();
        let not_after = now.saturating_add(request.duration_secs);

        let mut held: Vec<Held> = Vec::new();
        let mut excluded_pairs: HashSet<(PublicKey, PublicKey)> = HashSet::new();
        let mut excluded_agents: BTreeMap<PublicKey, CallError> = BTreeMap::new();
        let mut refusals: BTreeMap<String, Vec<PublicKey>> = BTreeMap::new();
        let mut first_plan: Option<SlicePlan> = None;
        let mut last_plan = SlicePlan {
            chosen: Vec::new(),
            alternatives: Vec::new(),
            rejected: Vec::new(),
            satisfiable: false,
            explanation: String::new(),
        };

        for round in 1..=self.settings.max_rounds.max(1) {
            if Instant::now() >= until {
                report.push(format!(
                    "deadline of {:?} for the whole acquisition reached before round {round}; \
                     settling with {} of {wanted} slivers",
                    self.deadline,
                    held.len()
                ));
                break;
            }
            let candidates: Vec<Candidate> = gathered
                .candidates
                .iter()
                .filter(|c| {
                    !excluded_agents.contains_key(&c.agent)
                        && !excluded_pairs.contains(&(c.node, c.agent))
                })
                .cloned()
                .collect();
            let held_planned: Vec<PlannedSliver> = held.iter().map(|h| h.planned.clone()).collect();
            let plan = planner::plan_around(request, &candidates, &held_planned);
            first_plan.get_or_insert_with(|| plan.clone());
            let chosen = plan.chosen.clone();
            last_plan = plan;
            if chosen.is_empty() {
                break;
            }
            if round > 1 {
                report.push(format!(
                    "round {round}: replanned {} slivers around the refusals",
                    chosen.len()
                ));
            }
            let mut per_agent: BTreeMap<PublicKey, Vec<PlannedSliver>> = BTreeMap::new();
            for sliver in chosen {
                per_agent.entry(sliver.agent).or_default().push(sliver);
            }
            let answers: Vec<(
                PublicKey,
                Vec<PlannedSliver>,
                Result<TicketsAnswer, CallError>,
            )> = futures::stream::iter(per_agent)
                .map(|(agent, slivers)| {
                    let ask = TicketRequest {
                        slice: request.name.clone(),
                        principal: request.principal,
                        principal_cert: principal_cert.cloned(),
                        kind: request.kind.clone(),
                        slivers: slivers
                            .iter()
                            .map(|s| SliverAsk {
                                node: s.node,
                                resources: request.per_sliver,
                            })
                            .collect(),
                        not_before: now,
                        not_after,
                        max_price: request.constraints.max_price,
                    };
                    async move {
                        let answer = self
                            .bounded_until(self.client.get_tickets(agent, ask), until)
                            .await;
                        (agent, slivers, answer)
                    }
                })
                .buffer_unordered(self.settings.concurrency.max(1))
                .collect()
                .await;
            let mut stray: BTreeMap<PublicKey, Vec<String>> = BTreeMap::new();
            for (agent, slivers, answer) in answers {
                match answer {
                    Ok(answer) => {
                        let mut asked: BTreeMap<PublicKey, PlannedSliver> =
                            slivers.into_iter().map(|s| (s.node, s)).collect();
                        for ticket in answer.issued {
                            match asked.remove(&ticket.node) {
                                Some(mut planned) if ticket.agent == agent => {
                                    planned.price = ticket.price;
                                    held.push(Held { planned, ticket });
                                }
                                _ => stray.entry(agent).or_default().push(ticket.ticket_id),
                            }
                        }
                        for refused in answer.refused {
                            excluded_pairs.insert((refused.node, agent));
                            asked.remove(&refused.node);
                            report.push(format!(
                                "node {} refused by agent {}: {}",
                                refused.node.short(),
                                agent.short(),
                                refused.reason
                            ));
                            refusals
                                .entry(format!(
                                    "refused by the agent ({})",
                                    refused.reason.reason.code()
                                ))
                                .or_default()
                                .push(refused.node);
                        }
                        // Slivers the agent neither issued nor refused: do not ask it again.
                        for node in asked.into_keys() {
                            excluded_pairs.insert((node, agent));
                            report.push(format!(
                                "node {}: agent {} answered nothing for it",
                                node.short(),
                                agent.short()
                            ));
                        }
                    }
                    Err(e) => {
                        report.push(format!(
                            "agent {} refused {} slivers: {e}",
                            agent.short(),
                            slivers.len()
                        ));
                        let label = match &e {
                            CallError::Refused(reply) => {
                                format!("refused by the agent ({})", reply.reason.code())
                            }
                            CallError::Timeout(_) | CallError::Unreachable(_) => {
                                "agent unreachable".to_owned()
                            }
                            CallError::Unexpected(_) | CallError::TooLarge(_) => {
                                "agent misbehaved".to_owned()
                            }
                        };
                        refusals
                            .entry(label)
                            .or_default()
                            .extend(slivers.iter().map(|s| s.node));
                        excluded_agents.insert(agent, e);
                    }
                }
            }
            for (agent, ids) in &stray {
                report.push(format!(
                    "agent {} issued {} tickets not asked for; released",
                    agent.short(),
                    ids.len()
                ));
            }
            if !stray.is_empty() {
                let untold = self.release(stray).await;
                if untold > 0 {
                    report.push(format!(
                        "{untold} agents not told of the tickets not asked for; they lapse \
                         unredeemed"
                    ));
                }
            }
            if held.len() >= wanted && last_plan.satisfiable {
                break;
            }
        }

        let first_plan = first_plan.unwrap_or_else(|| last_plan.clone());
        let missing = wanted.saturating_sub(held.len());
        let sites: HashSet<&str> = held.iter().map(|h| h.planned.site.as_str()).collect();
        let sites_short = sites.len() < request.constraints.min_sites as usize;
        let complete = missing == 0 && !sites_short && wanted > 0;

        // Nodes not picked: those that did not fit (first plan), those refused and not obtained
        // from another agent, and those that fit but were not needed in the last plan (the
        // first plan's count of these includes nodes picked in later rounds).
        let held_nodes: HashSet<PublicKey> = held.iter().map(|h| h.planned.node).collect();
        let mut rejected: Vec<RejectedGroup> = first_plan
            .rejected
            .iter()
            .filter(|g| g.reason != planner::FIT_NOT_NEEDED)
            .cloned()
            .collect();
        for (reason, mut nodes) in refusals {
            nodes.retain(|n| !held_nodes.contains(n));
            nodes.sort();
            nodes.dedup();
            if nodes.is_empty() {
                continue;
            }
            rejected.push(RejectedGroup {
                reason,
                count: nodes.len() as u32,
                examples: nodes.into_iter().take(5).collect(),
            });
        }
        rejected.extend(
            last_plan
                .rejected
                .iter()
                .filter(|g| g.reason == planner::FIT_NOT_NEEDED)
                .cloned(),
        );
        let explanation = if complete {
            format!(
                "{} slivers on {} sites from {} agents",
                held.len(),
                sites.len(),
                held.iter()
                    .map(|h| h.ticket.agent)
                    .collect::<BTreeSet<_>>()
                    .len()
            )
        } else if last_plan.satisfiable && sites_short {
            format!(
                "{} distinct sites obtained, {} asked; {}",
                sites.len(),
                request.constraints.min_sites,
                last_plan.explanation
            )
        } else {
            last_plan.explanation.clone()
        };
        let plan = SlicePlan {
            chosen: held.iter().map(|h| h.planned.clone()).collect(),
            alternatives: last_plan.alternatives.clone(),
            rejected,
            satisfiable: complete,
            explanation,
        };

        let keep = complete || (request.mode == AcquireMode::BestEffort && !held.is_empty());
        if keep {
            if missing > 0 {
                report.push(format!(
                    "{missing} of {wanted} slivers missing (best effort)"
                ));
            }
            return Ok(capability_schema::protocol::AcquiredSlice {
                tickets: held.into_iter().map(|h| h.ticket).collect(),
                plan,
                missing: missing as u32,
                report,
            });
        }

        // Nothing to return: hand back what was obtained.
        if !held.is_empty() {
            let mut per_agent: BTreeMap<PublicKey, Vec<String>> = BTreeMap::new();
            for h in &held {
                per_agent
                    .entry(h.ticket.agent)
                    .or_default()
                    .push(h.ticket.ticket_id.clone());
            }
            let count = held.len();
            let agents_told = per_agent.len();
            let failed = self.release(per_agent).await;
            report.push(format!(
                "all-or-nothing: released {count} tickets at {agents_told} agents{}",
                if failed > 0 {
                    format!(" ({failed} agents not told; the tickets lapse unredeemed)")
                } else {
                    String::new()
                }
            ));
        }
        let reason = failure_reason(&gathered, &excluded_agents, &plan, wanted);
        let mut message = reason.to_string();
        if !matches!(reason, Rejection::Unsatisfiable { .. }) {
            message.push_str("; ");
            message.push_str(&plan.explanation);
        }
        if !plan.rejected.is_empty() {
            let groups: Vec<String> = plan
                .rejected
                .iter()
                .map(|g| format!("{} nodes: {}", g.count, g.reason))
                .collect();
            message.push_str(&format!(" (not picked: {})", groups.join(", ")));
        }
        if !report.is_empty() {
            message.push_str(" [");
            message.push_str(&report.join("; "));
            message.push(']');
        }
        Err(AcquireFailure {
            reply: ErrorReply { reason, message },
            plan,
            report,
        })
    }
}

/// The class of a failed acquisition: agents unreachable, agents refusing on policy, or no
/// placement.
fn failure_reason(
    gathered: &Gathered,
    excluded_agents: &BTreeMap<PublicKey, CallError>,
    plan: &SlicePlan,
    wanted: usize,
) -> Rejection {
    if gathered.asked > 0 && gathered.answered == 0 {
        return Rejection::Unreachable {
            party: "agents".into(),
            detail: format!("none of the {} agents answered", gathered.asked),
        };
    }
    if wanted == 0 {
        return Rejection::Malformed {
            detail: "the request asks for no slivers".into(),
        };
    }
    // An agent's refusal of the whole request names a rule the principal can act on.
    if let Some(reply) = excluded_agents.values().find_map(|e| match e {
        CallError::Refused(reply) => Some(reply),
        _ => None,
    }) {
        return reply.reason.clone();
    }
    if !excluded_agents.is_empty()
        && excluded_agents
            .values()
            .all(|e| matches!(e, CallError::Timeout(_) | CallError::Unreachable(_)))
        && plan.chosen.is_empty()
    {
        return Rejection::Unreachable {
            party: "agents".into(),
            detail: "the agents chosen did not answer".into(),
        };
    }
    Rejection::Unsatisfiable {
        detail: plan.explanation.clone(),
    }
}

#[cfg(test)]
mod tests;
