//! Acquisition: from a `SliceRequest` to tickets bound to the principal (paper Figure 1,
//! steps 2–4), across the agents of several federations.
//!
//! How an acquisition flows: one `Acquisition` (a private struct holding its state: the
//! offers, the tickets held, the (node, agent) pairs and agents not to ask again, the refusals,
//! the first and last plans, the events) goes through named phases, one method each:
//! 0. **Shape.** A request no offer could satisfy ([`planner::check_shape`]) fails as
//!    `malformed` before any agent is asked.
//! 1. **Gather** (`gather`). `GetAds` goes to every agent at once (at most `concurrency` in
//!    flight, each bounded by `call_timeout`). Every offer's ad is checked by the trust store
//!    (node signature, membership, expiry) and must come from the agent asked; what passes
//!    becomes a planner [`Candidate`]. Agents that fail are named in the report; the others
//!    still count.
//! 2. **Plan** (`plan`) with [`planner::plan_around`] (nothing held yet).
//! 3. **Ask** (`request_tickets`). The chosen slivers are grouped per agent; one `GetTickets`
//!    per agent, in parallel. Issued tickets are kept (`take_tickets`; a ticket for a node that
//!    was not asked is released at once, to all such agents in parallel: `release_strays`); a
//!    refused sliver excludes that (node, agent) pair; an agent that refuses the whole request,
//!    times out or cannot be reached is excluded altogether (`exclude_agent`).
//! 4. **Replan** (`plan` again, in the next `round`) around the exclusions for the slivers
//!    still missing, preferring new sites, for at most `max_rounds` rounds.
//!
//! The whole of steps 1–4 is bounded by the acquisition's deadline ([`Acquirer::with_deadline`],
//! by default [`DEADLINE_CALLS`] × `call_timeout`): a call never outlives it, and no round
//! starts after it. Settling still hands tickets back (each call bounded by `call_timeout`), so
//! an acquisition answers within the deadline plus one `call_timeout`.
//! 5. **Settle** (`settle`). Complete: the tickets and the report (`finish`). Short,
//!    `all-or-nothing`: every ticket obtained is handed back with `Released` (`hand_back`; the
//!    agents stop counting it; unredeemed, it lapses anyway; an agent accepts it from the peer
//!    that obtained the tickets, which is this broker, as well as from their principal or
//!    node) and the answer is an error naming the binding constraint (`fail`). Short,
//!    `best-effort`: the tickets obtained, with `missing` and the report (`finish`).
//!
//! Every phase records what happened as typed [`AcquireEvent`]s (an agent unreachable, a
//! sliver refused with its rejection, a replan, tickets released, …); the answer carries them
//! beside `report`, the same events rendered once by their `Display`.
//!
//! The network is behind [`AgentClient`]: [`OverlayAgents`] in daemons and `slicectl`, a fake
//! in tests.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use tokio::time::Instant;

use capability_schema::protocol::{
    AcquireEvent, AcquiredSlice, AdQuery, AgentRequest, AgentResponse, CallFailure, DroppedOffer,
    IssuedTicket, NodeOffer, PlannedSliver, RefusedSliver, RejectedGroup, SlicePlan, SliverAsk,
    TicketRequest,
};
use capability_schema::{
    AcquireMode, AskGrant, ErrorReply, MembershipCert, PublicKey, Rejection, Signed, SliceRequest,
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

/// A call error as an acquisition's report carries it (the same sentence).
impl From<CallError> for CallFailure {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Refused(reply) => CallFailure::Refused(reply),
            CallError::Unreachable(detail) => CallFailure::Unreachable(detail),
            CallError::Timeout(after) => CallFailure::Timeout(after),
            CallError::TooLarge(detail) => CallFailure::TooLarge(detail),
            CallError::Unexpected(detail) => CallFailure::Unexpected(detail),
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
    /// What went wrong (agents that failed, offers dropped).
    pub events: Vec<AcquireEvent>,
    /// The same, line by line: `events` rendered.
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

    /// Hands tickets back, all agents at once (at most `concurrency` in flight); answers the
    /// agents that could not be told.
    async fn release(&self, per_agent: BTreeMap<PublicKey, Vec<String>>) -> Vec<PublicKey> {
        let results: Vec<(PublicKey, Result<u32, CallError>)> = futures::stream::iter(per_agent)
            .map(|(agent, ids)| async move {
                (agent, self.bounded(self.client.released(agent, ids)).await)
            })
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;
        let mut not_told: Vec<PublicKey> = results
            .into_iter()
            .filter(|(_, r)| r.is_err())
            .map(|(agent, _)| agent)
            .collect();
        not_told.sort();
        not_told
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
                    out.events.push(AcquireEvent::NoOffers {
                        agent,
                        error: e.into(),
                    });
                    continue;
                }
            };
            out.answered += 1;
            let mut dropped = 0usize;
            let mut first_problem = None;
            for offer in offers {
                if offer.agent != agent {
                    dropped += 1;
                    first_problem.get_or_insert(DroppedOffer::OtherAgent(offer.agent));
                    continue;
                }
                match trust.validate_ad(&offer.ad, now, None) {
                    Ok(ad) => out.candidates.push(Candidate {
                        node: ad.node,
                        federation: planner::federation_shown(
                            &trust,
                            &ad,
                            &request.constraints.federations,
                        ),
                        site: ad.site,
                        agent,
                        free: offer.free,
                        prices: offer.prices,
                        load_milli: ad.measured.load_milli,
                    }),
                    Err(e) => {
                        dropped += 1;
                        first_problem.get_or_insert_with(|| DroppedOffer::Invalid(e.to_string()));
                    }
                }
            }
            if let Some(first) = first_problem {
                out.events.push(AcquireEvent::OffersDropped {
                    agent,
                    dropped: count(dropped),
                    first,
                });
            }
        }
        out.report = AcquireEvent::render_all(&out.events);
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

    /// [`Acquirer::acquire_signed`] without the principal's signed ask: agents that require
    /// one (every `agentd`) refuse each request under the rule `signed-ask`. For fake agents
    /// in tests, and to see that refusal.
    pub async fn acquire(
        &self,
        agents: &[PublicKey],
        request: &SliceRequest,
        principal_cert: Option<&Signed<MembershipCert>>,
    ) -> Result<AcquiredSlice, AcquireFailure> {
        self.acquire_signed(agents, request, principal_cert, None)
            .await
    }

    /// Obtains tickets for `request` from `agents`, bound to the principal (the broker's
    /// `AcquireSlice`, and `slicectl --agent`): the phases of an `Acquisition`, in order.
    /// Every `GetTickets` carries `ask`, the principal's signed ask naming this broker (or,
    /// with `slicectl --agent`, the principal's own key) as the carrier.
    pub async fn acquire_signed(
        &self,
        agents: &[PublicKey],
        request: &SliceRequest,
        principal_cert: Option<&Signed<MembershipCert>>,
        ask: Option<&Signed<AskGrant>>,
    ) -> Result<AcquiredSlice, AcquireFailure> {
        if let Err(e) = planner::check_shape(request) {
            return Err(AcquireFailure {
                reply: Rejection::Malformed {
                    detail: e.to_string(),
                }
                .into(),
                plan: planner::plan(request, &[]),
                report: Vec::new(),
                events: Vec::new(),
            });
        }
        let mut acquisition = Acquisition::gather(self, agents, request, principal_cert, ask).await;
        for round in 1..=self.settings.max_rounds.max(1) {
            if acquisition.round(round).await.is_break() {
                break;
            }
        }
        acquisition.settle().await
    }
}

/// One acquisition under way: what its phases share, from the offers gathered to the tickets
/// held and the agents and nodes not to ask again.
///
/// [`Acquirer::acquire`] runs the phases in order: [`Acquisition::gather`], then up to
/// `max_rounds` × [`Acquisition::round`] (each: [`Acquisition::plan`] around what is held and
/// excluded, [`Acquisition::request_tickets`] per agent, [`Acquisition::take_tickets`] or
/// [`Acquisition::exclude_agent`] per answer, [`Acquisition::release_strays`]), then
/// [`Acquisition::settle`] ([`Acquisition::finish`] with the tickets, or
/// [`Acquisition::hand_back`] and [`Acquisition::fail`]). Every phase records what happened as
/// [`AcquireEvent`]s, rendered once when the acquisition answers.
struct Acquisition<'a, C> {
    acquirer: &'a Acquirer<C>,
    request: &'a SliceRequest,
    principal_cert: Option<&'a Signed<MembershipCert>>,
    /// The principal's signed ask, carried in every `GetTickets`.
    ask: Option<&'a Signed<AskGrant>>,
    /// No call outlives it and no round starts after it.
    until: Instant,
    /// Slivers wanted.
    wanted: usize,
    /// The window of the tickets asked for.
    not_before: u64,
    not_after: u64,
    /// What the agents offered.
    gathered: Gathered,
    /// What happened, in order (the gathering's events first).
    events: Vec<AcquireEvent>,
    /// Slivers obtained.
    held: Vec<Held>,
    /// (node, agent) pairs not to ask again: refused, or left unanswered.
    excluded_pairs: HashSet<(PublicKey, PublicKey)>,
    /// Agents not to ask again, with their failure.
    excluded_agents: BTreeMap<PublicKey, CallError>,
    /// Nodes refused, by the reason the final plan gives for them.
    refusals: BTreeMap<String, Vec<PublicKey>>,
    /// The first round's plan: what did not fit at all.
    first_plan: Option<SlicePlan>,
    /// The latest round's plan (empty before the first).
    last_plan: SlicePlan,
}

/// An agent's answer to one round's `GetTickets`, with the slivers asked of it.
type AgentAnswer = (
    PublicKey,
    Vec<PlannedSliver>,
    Result<TicketsAnswer, CallError>,
);

impl<'a, C: AgentClient> Acquisition<'a, C> {
    /// **Gather**: offers from every agent (by the acquisition's deadline); the tickets asked
    /// for start now.
    async fn gather(
        acquirer: &'a Acquirer<C>,
        agents: &[PublicKey],
        request: &'a SliceRequest,
        principal_cert: Option<&'a Signed<MembershipCert>>,
        ask: Option<&'a Signed<AskGrant>>,
    ) -> Self {
        let until = Instant::now() + acquirer.deadline;
        let gathered = acquirer.gather_until(agents, request, until).await;
        let not_before = unix_now();
        Acquisition {
            acquirer,
            request,
            principal_cert,
            ask,
            until,
            wanted: request.target.count(),
            not_before,
            not_after: not_before.saturating_add(request.duration_secs),
            events: gathered.events.clone(),
            gathered,
            held: Vec::new(),
            excluded_pairs: HashSet::new(),
            excluded_agents: BTreeMap::new(),
            refusals: BTreeMap::new(),
            first_plan: None,
            last_plan: SlicePlan {
                chosen: Vec::new(),
                alternatives: Vec::new(),
                rejected: Vec::new(),
                satisfiable: false,
                explanation: String::new(),
            },
        }
    }

    /// One ticket round: plan what is missing, ask the agents, take their answers. Breaks when
    /// the deadline has come, nothing is left to ask, or the request is met.
    async fn round(&mut self, round: u32) -> ControlFlow<()> {
        if Instant::now() >= self.until {
            self.events.push(AcquireEvent::DeadlineReached {
                deadline: self.acquirer.deadline,
                round,
                held: count(self.held.len()),
                wanted: count(self.wanted),
            });
            return ControlFlow::Break(());
        }
        let chosen = self.plan();
        if chosen.is_empty() {
            return ControlFlow::Break(());
        }
        if round > 1 {
            self.events.push(AcquireEvent::Replanned {
                round,
                slivers: count(chosen.len()),
            });
        }
        let mut stray: BTreeMap<PublicKey, Vec<String>> = BTreeMap::new();
        for (agent, slivers, answer) in self.request_tickets(chosen).await {
            match answer {
                Ok(answer) => self.take_tickets(agent, slivers, answer, &mut stray),
                Err(e) => self.exclude_agent(agent, &slivers, e),
            }
        }
        self.release_strays(stray).await;
        if self.held.len() >= self.wanted && self.last_plan.satisfiable {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// **Plan** (the first round) or **replan** (later ones): the slivers still missing, over
    /// the offers not excluded, around those held (new sites preferred); answers the slivers
    /// to ask for.
    fn plan(&mut self) -> Vec<PlannedSliver> {
        let candidates: Vec<Candidate> = self
            .gathered
            .candidates
            .iter()
            .filter(|c| {
                !self.excluded_agents.contains_key(&c.agent)
                    && !self.excluded_pairs.contains(&(c.node, c.agent))
            })
            .cloned()
            .collect();
        let held: Vec<PlannedSliver> = self.held.iter().map(|h| h.planned.clone()).collect();
        let plan = planner::plan_around(self.request, &candidates, &held);
        self.first_plan.get_or_insert_with(|| plan.clone());
        let chosen = plan.chosen.clone();
        self.last_plan = plan;
        chosen
    }

    /// **Ask**: one `GetTickets` per agent for its slivers of `chosen`, all agents at once (at
    /// most `concurrency` in flight, each ending by the deadline).
    async fn request_tickets(&self, chosen: Vec<PlannedSliver>) -> Vec<AgentAnswer> {
        let mut per_agent: BTreeMap<PublicKey, Vec<PlannedSliver>> = BTreeMap::new();
        for sliver in chosen {
            per_agent.entry(sliver.agent).or_default().push(sliver);
        }
        futures::stream::iter(per_agent)
            .map(|(agent, slivers)| {
                let ask = self.ticket_request(&slivers);
                async move {
                    let answer = self
                        .acquirer
                        .bounded_until(self.acquirer.client.get_tickets(agent, ask), self.until)
                        .await;
                    (agent, slivers, answer)
                }
            })
            .buffer_unordered(self.acquirer.settings.concurrency.max(1))
            .collect()
            .await
    }

    /// The `GetTickets` for `slivers`, all of one agent.
    fn ticket_request(&self, slivers: &[PlannedSliver]) -> TicketRequest {
        let request = self.request;
        TicketRequest {
            slice: request.name.clone(),
            principal: request.principal,
            principal_cert: self.principal_cert.cloned(),
            kind: request.kind.clone(),
            slivers: slivers
                .iter()
                .map(|s| SliverAsk {
                    node: s.node,
                    resources: request.per_sliver,
                })
                .collect(),
            not_before: self.not_before,
            not_after: self.not_after,
            max_price: request.constraints.max_price,
            net: request.net,
            ask: self.ask.cloned().map(Box::new),
        }
    }

    /// An agent's answer: tickets for slivers asked of it are held, others are `stray` (to be
    /// handed back); a refused node, or one the agent answered nothing for, is not asked of
    /// it again.
    fn take_tickets(
        &mut self,
        agent: PublicKey,
        slivers: Vec<PlannedSliver>,
        answer: TicketsAnswer,
        stray: &mut BTreeMap<PublicKey, Vec<String>>,
    ) {
        let mut asked: BTreeMap<PublicKey, PlannedSliver> =
            slivers.into_iter().map(|s| (s.node, s)).collect();
        for ticket in answer.issued {
            match asked.remove(&ticket.node) {
                Some(mut planned) if ticket.agent == agent => {
                    planned.price = ticket.price;
                    self.held.push(Held { planned, ticket });
                }
                _ => stray.entry(agent).or_default().push(ticket.ticket_id),
            }
        }
        for refused in answer.refused {
            self.excluded_pairs.insert((refused.node, agent));
            asked.remove(&refused.node);
            self.refusals
                .entry(format!(
                    "refused by the agent ({})",
                    refused.reason.reason.code()
                ))
                .or_default()
                .push(refused.node);
            self.events.push(AcquireEvent::SliverRefused {
                node: refused.node,
                agent,
                reason: refused.reason,
            });
        }
        // Slivers the agent neither issued nor refused: do not ask it again.
        for node in asked.into_keys() {
            self.excluded_pairs.insert((node, agent));
            self.events
                .push(AcquireEvent::NodeUnanswered { node, agent });
        }
    }

    /// An agent whose `GetTickets` failed as a whole (refused, unreachable, too slow,
    /// garbled) is not asked again; its slivers count as refused for the reason its failure
    /// gives.
    fn exclude_agent(&mut self, agent: PublicKey, slivers: &[PlannedSliver], e: CallError) {
        self.events.push(AcquireEvent::AgentFailed {
            agent,
            slivers: count(slivers.len()),
            error: e.clone().into(),
        });
        let label = match &e {
            CallError::Refused(reply) => {
                format!("refused by the agent ({})", reply.reason.code())
            }
            CallError::Timeout(_) | CallError::Unreachable(_) => "agent unreachable".to_owned(),
            CallError::Unexpected(_) | CallError::TooLarge(_) => "agent misbehaved".to_owned(),
        };
        self.refusals
            .entry(label)
            .or_default()
            .extend(slivers.iter().map(|s| s.node));
        self.excluded_agents.insert(agent, e);
    }

    /// Tickets issued for nodes not asked about go back at once, to all such agents in
    /// parallel.
    async fn release_strays(&mut self, stray: BTreeMap<PublicKey, Vec<String>>) {
        if stray.is_empty() {
            return;
        }
        for (agent, ids) in &stray {
            self.events.push(AcquireEvent::StrayReleased {
                agent: *agent,
                tickets: count(ids.len()),
            });
        }
        let not_told = self.acquirer.release(stray).await;
        if !not_told.is_empty() {
            self.events
                .push(AcquireEvent::StrayNotTold { agents: not_told });
        }
    }

    /// **Settle**: complete, or short under best effort with something held, answers the
    /// tickets ([`Acquisition::finish`]); otherwise every ticket goes back
    /// ([`Acquisition::hand_back`]) and the answer is the failure ([`Acquisition::fail`]).
    async fn settle(mut self) -> Result<AcquiredSlice, AcquireFailure> {
        let plan = self.final_plan();
        let keep = plan.satisfiable
            || (self.request.mode == AcquireMode::BestEffort && !self.held.is_empty());
        if keep {
            return Ok(self.finish(plan));
        }
        self.hand_back().await;
        Err(self.fail(plan))
    }

    /// The plan as executed: the slivers held, and every node not picked with its reason
    /// (did not fit in the first plan; refused and not obtained from another agent; fit but
    /// not needed in the last plan, as the first plan's count of these includes nodes picked
    /// in later rounds). Satisfiable only if the request is met in full.
    fn final_plan(&self) -> SlicePlan {
        let first_plan = self.first_plan.as_ref().unwrap_or(&self.last_plan);
        let held = &self.held;
        let missing = self.wanted.saturating_sub(held.len());
        let sites: HashSet<&str> = held.iter().map(|h| h.planned.site.as_str()).collect();
        let min_sites = self.request.constraints.min_sites;
        let sites_short = sites.len() < min_sites as usize;
        let complete = missing == 0 && !sites_short && self.wanted > 0;

        let held_nodes: HashSet<PublicKey> = held.iter().map(|h| h.planned.node).collect();
        let mut rejected: Vec<RejectedGroup> = first_plan
            .rejected
            .iter()
            .filter(|g| g.reason != planner::FIT_NOT_NEEDED)
            .cloned()
            .collect();
        for (reason, nodes) in &self.refusals {
            let mut nodes: Vec<PublicKey> = nodes
                .iter()
                .filter(|n| !held_nodes.contains(n))
                .copied()
                .collect();
            nodes.sort();
            nodes.dedup();
            if nodes.is_empty() {
                continue;
            }
            rejected.push(RejectedGroup {
                reason: reason.clone(),
                count: count(nodes.len()),
                examples: nodes.into_iter().take(5).collect(),
            });
        }
        rejected.extend(
            self.last_plan
                .rejected
                .iter()
                .filter(|g| g.reason == planner::FIT_NOT_NEEDED)
                .cloned(),
        );
        let explanation = if complete {
            let agents: BTreeSet<PublicKey> = held.iter().map(|h| h.ticket.agent).collect();
            format!(
                "{} slivers on {} sites from {} agents",
                held.len(),
                sites.len(),
                agents.len()
            )
        } else if self.last_plan.satisfiable && sites_short {
            format!(
                "{} distinct sites obtained, {min_sites} asked; {}",
                sites.len(),
                self.last_plan.explanation
            )
        } else {
            self.last_plan.explanation.clone()
        };
        SlicePlan {
            chosen: held.iter().map(|h| h.planned.clone()).collect(),
            alternatives: self.last_plan.alternatives.clone(),
            rejected,
            satisfiable: complete,
            explanation,
        }
    }

    /// **Finish**: the tickets held, the plan and the report (best effort names what is
    /// missing).
    fn finish(mut self, plan: SlicePlan) -> AcquiredSlice {
        let missing = self.wanted.saturating_sub(self.held.len());
        if missing > 0 {
            self.events.push(AcquireEvent::Short {
                missing: count(missing),
                wanted: count(self.wanted),
            });
        }
        AcquiredSlice {
            tickets: self.held.into_iter().map(|h| h.ticket).collect(),
            plan,
            missing: count(missing),
            report: AcquireEvent::render_all(&self.events),
            events: self.events,
        }
    }

    /// **All-or-nothing** came up short (or best effort got nothing): every ticket held goes
    /// back with `Released`, all agents at once.
    async fn hand_back(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let mut per_agent: BTreeMap<PublicKey, Vec<String>> = BTreeMap::new();
        for h in &self.held {
            per_agent
                .entry(h.ticket.agent)
                .or_default()
                .push(h.ticket.ticket_id.clone());
        }
        let tickets = count(self.held.len());
        let agents = count(per_agent.len());
        let not_told = self.acquirer.release(per_agent).await;
        self.events.push(AcquireEvent::Released {
            tickets,
            agents,
            not_told,
        });
    }

    /// The failure: its class ([`failure_reason`]) and a message naming the binding
    /// constraint, the nodes not picked and what happened.
    fn fail(self, plan: SlicePlan) -> AcquireFailure {
        let reason = failure_reason(&self.gathered, &self.excluded_agents, &plan, self.wanted);
        let report = AcquireEvent::render_all(&self.events);
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
        AcquireFailure {
            reply: ErrorReply { reason, message },
            plan,
            report,
            events: self.events,
        }
    }
}

/// `n` as a count on the wire (saturating: no acquisition comes near).
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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

#[cfg(test)]
mod report_tests;
