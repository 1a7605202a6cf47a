//! Acquisition against fake agents: parallel gathering, replanning around refusals and dead
//! agents, all-or-nothing release, best effort, timeouts, bounded concurrency, the deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use capability_schema::ad::{PriceList, ShareState};
use capability_schema::identity::{SecretKey, test_key};
use capability_schema::protocol::TicketBytes;
use capability_schema::slice::{SliceConstraints, SliceKind, SliverTarget};
use capability_schema::{Delegation, Resources};
use federation::TrustStore;
use federation::testing::{TestFederation, TestNode};

use super::*;

fn small() -> Resources {
    Resources {
        cpu_millis: 500,
        memory_bytes: 256 << 20,
        disk_bytes: 0,
        egress_kbps: 0,
        ports: 0,
    }
}

#[derive(Default)]
struct FakeAgent {
    offers: Vec<NodeOffer>,
    /// Nodes this agent refuses tickets for.
    refuse: BTreeSet<PublicKey>,
    /// Refuses every request with this.
    refuse_all: Option<ErrorReply>,
    /// Never answers.
    hang: bool,
    /// Unreachable.
    down: bool,
    /// Never answers `GetAds`.
    hang_ads: bool,
    /// How long every call takes.
    delay: Duration,
    /// Also issues a ticket for a node it was not asked about.
    stray: bool,
}

/// Calls in flight now, and the most at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

struct InFlight<'a>(&'a Gauge);

impl Gauge {
    fn enter(&self) -> InFlight<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        InFlight(self)
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Fake {
    agents: BTreeMap<PublicKey, FakeAgent>,
    released: Mutex<Vec<String>>,
    asked: Mutex<Vec<(PublicKey, usize)>>,
    /// The signed ask each `GetTickets` carried.
    asks: Mutex<Vec<Option<Box<Signed<AskGrant>>>>>,
    /// `GetAds` and `GetTickets` calls.
    calls: Gauge,
    /// `Released` calls.
    releases: Gauge,
}

impl Fake {
    fn agent(&self, agent: &PublicKey) -> Result<&FakeAgent, CallError> {
        let a = self
            .agents
            .get(agent)
            .ok_or_else(|| CallError::Unreachable("no such agent".into()))?;
        if a.down {
            return Err(CallError::Unreachable("connection refused".into()));
        }
        Ok(a)
    }
}

impl AgentClient for Arc<Fake> {
    async fn get_ads(
        &self,
        agent: PublicKey,
        _query: AdQuery,
    ) -> Result<Vec<NodeOffer>, CallError> {
        let _in_flight = self.calls.enter();
        let a = self.agent(&agent)?;
        tokio::time::sleep(a.delay).await;
        if a.hang_ads {
            futures::future::pending::<()>().await;
        }
        Ok(a.offers.clone())
    }

    async fn get_tickets(
        &self,
        agent: PublicKey,
        request: TicketRequest,
    ) -> Result<TicketsAnswer, CallError> {
        let _in_flight = self.calls.enter();
        let a = self.agent(&agent)?;
        lock(&self.asked).push((agent, request.slivers.len()));
        lock(&self.asks).push(request.ask.clone());
        tokio::time::sleep(a.delay).await;
        if a.hang {
            futures::future::pending::<()>().await;
        }
        if let Some(reply) = &a.refuse_all {
            return Err(CallError::Refused(reply.clone()));
        }
        let mut out = TicketsAnswer::default();
        if a.stray {
            out.issued.push(IssuedTicket {
                node: test_key(99).public(),
                federation: "x".into(),
                agent,
                ticket_id: format!("{}-stray", agent.short()),
                ticket: TicketBytes(vec![1]),
                price: 0,
                addresses: vec![],
            });
        }
        for s in request.slivers {
            if a.refuse.contains(&s.node) {
                out.refused.push(RefusedSliver {
                    node: s.node,
                    reason: Rejection::OverShare {
                        agent,
                        kind: capability_schema::resources::ResourceKind::Memory,
                        in_use: 1,
                        share: 1,
                        asked: 1,
                    }
                    .into(),
                });
            } else {
                out.issued.push(IssuedTicket {
                    node: s.node,
                    federation: "x".into(),
                    agent,
                    ticket_id: format!("{}-{}", agent.short(), s.node.short()),
                    ticket: TicketBytes(vec![1, 2, 3]),
                    price: 0,
                    addresses: vec![],
                });
            }
        }
        Ok(out)
    }

    async fn released(&self, agent: PublicKey, ticket_ids: Vec<String>) -> Result<u32, CallError> {
        let _in_flight = self.releases.enter();
        tokio::time::sleep(self.agent(&agent)?.delay).await;
        let n = ticket_ids.len() as u32;
        lock(&self.released).extend(ticket_ids);
        Ok(n)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap()
}

struct World {
    trust: SharedTrust,
    nodes: Vec<TestNode>,
    agents: Vec<SecretKey>,
}

/// Two federations, `per_fed` nodes each on their own site, one agent per federation.
fn world(per_fed: u8) -> World {
    let mut plc = TestFederation::new("plc", 100);
    let mut ple = TestFederation::new("ple", 101);
    let mut store = TrustStore::new();
    plc.trust(&mut store);
    ple.trust(&mut store);
    let mut nodes = Vec::new();
    for i in 0..per_fed {
        nodes.push(plc.node(i + 1, &format!("plc-site{i}")));
        nodes.push(ple.node(i + 101, &format!("ple-site{i}")));
    }
    World {
        trust: Arc::new(RwLock::new(store)),
        nodes,
        agents: vec![test_key(20), test_key(21)],
    }
}

fn offer(node: &TestNode, agent: &SecretKey, free: Resources) -> NodeOffer {
    let now = unix_now();
    let mut body = node.ad_body(1, now, 600);
    body.delegations.push(Signed::sign(
        &node.key,
        &Delegation {
            node: node.key.public(),
            agent: agent.public(),
            share: free,
            scope: Default::default(),
            issued_at: now,
            since: now,
            not_after: now + 3600,
        },
    ));
    body.shares.push(ShareState {
        agent: agent.public(),
        share: free,
        committed: Resources::ZERO,
        free,
    });
    NodeOffer {
        agent: agent.public(),
        ad: Signed::sign(&node.key, &body),
        free,
        prices: PriceList::default(),
    }
}

/// Each federation's agent offers its federation's nodes.
fn fake(w: &World) -> Fake {
    let mut f = Fake::default();
    for (i, agent) in w.agents.iter().enumerate() {
        let fed = if i == 0 { "plc" } else { "ple" };
        f.agents.insert(
            agent.public(),
            FakeAgent {
                offers: w
                    .nodes
                    .iter()
                    .filter(|n| n.federation == fed)
                    .map(|n| {
                        offer(
                            n,
                            agent,
                            Resources {
                                cpu_millis: 2000,
                                memory_bytes: 2 << 30,
                                ..Resources::ZERO
                            },
                        )
                    })
                    .collect(),
                ..FakeAgent::default()
            },
        );
    }
    f
}

fn request(count: u32, mode: AcquireMode) -> SliceRequest {
    SliceRequest {
        name: "site_s".into(),
        principal: test_key(50).public(),
        principal_federation: "plc".into(),
        kind: SliceKind::Regular,
        per_sliver: small(),
        target: SliverTarget::Count(count),
        constraints: SliceConstraints::default(),
        duration_secs: 600,
        mode,
        net: Default::default(),
    }
}

fn acquirer(fake: Fake, trust: &SharedTrust) -> (Acquirer<Arc<Fake>>, Arc<Fake>) {
    acquirer_with(
        fake,
        trust,
        AcquireSettings {
            call_timeout: Duration::from_millis(500),
            ..AcquireSettings::default()
        },
    )
}

fn acquirer_with(
    fake: Fake,
    trust: &SharedTrust,
    settings: AcquireSettings,
) -> (Acquirer<Arc<Fake>>, Arc<Fake>) {
    let fake = Arc::new(fake);
    (
        Acquirer::new(Arc::clone(&fake), Arc::clone(trust), settings),
        fake,
    )
}

fn keys(w: &World) -> Vec<PublicKey> {
    w.agents.iter().map(SecretKey::public).collect()
}

#[tokio::test]
async fn spans_both_federations() {
    let w = world(3);
    let (acq, fake) = acquirer(fake(&w), &w.trust);
    let got = acq
        .acquire(&keys(&w), &request(6, AcquireMode::AllOrNothing), None)
        .await
        .unwrap();
    assert_eq!(got.tickets.len(), 6);
    assert_eq!(got.missing, 0);
    assert!(got.plan.satisfiable);
    let feds: BTreeSet<String> = got
        .plan
        .chosen
        .iter()
        .map(|s| s.federation.clone())
        .collect();
    assert_eq!(feds.len(), 2);
    // One GetTickets per agent.
    assert_eq!(lock(&fake.asked).len(), 2);
}

#[tokio::test]
async fn replans_around_refused_nodes() {
    let w = world(3);
    let mut f = fake(&w);
    let refused = w.nodes[0].key.public();
    f.agents
        .get_mut(&w.agents[0].public())
        .unwrap()
        .refuse
        .insert(refused);
    let (acq, _fake) = acquirer(f, &w.trust);
    let got = acq
        .acquire(&keys(&w), &request(5, AcquireMode::AllOrNothing), None)
        .await
        .unwrap();
    assert_eq!(got.tickets.len(), 5);
    assert!(got.tickets.iter().all(|t| t.node != refused));
    assert!(
        got.report.iter().any(|l| l.contains("refused by agent")),
        "{:?}",
        got.report
    );
    assert!(got.report.iter().any(|l| l.contains("replanned")));
    // Six nodes offered, five obtained: the one refused is the one not picked, counted once.
    let groups: Vec<(&str, u32)> = got
        .plan
        .rejected
        .iter()
        .map(|g| (g.reason.as_str(), g.count))
        .collect();
    assert_eq!(
        groups,
        vec![("refused by the agent (over_share)", 1)],
        "{groups:?}"
    );
}

#[tokio::test]
async fn every_get_tickets_carries_the_principals_signed_ask_replans_included() {
    let w = world(3);
    let mut f = fake(&w);
    f.agents
        .get_mut(&w.agents[0].public())
        .unwrap()
        .refuse
        .insert(w.nodes[0].key.public());
    let (acq, fake) = acquirer(f, &w.trust);
    let req = request(5, AcquireMode::AllOrNothing);
    let broker = test_key(30).public();
    let ask = Signed::sign(
        &test_key(50),
        &AskGrant::for_request(&req, broker, unix_now(), 300),
    );
    let got = acq
        .acquire_signed(&keys(&w), &req, None, Some(&ask))
        .await
        .unwrap();
    assert_eq!(got.tickets.len(), 5);
    let carried = lock(&fake.asks).clone();
    assert!(carried.len() >= 3, "two agents, then a replan: {carried:?}");
    assert!(carried.iter().all(|a| a.as_deref() == Some(&ask)));
    // Without an ask (`acquire`), none is carried: agents refuse that as an old client.
    lock(&fake.asks).clear();
    acq.acquire(&keys(&w), &request(1, AcquireMode::AllOrNothing), None)
        .await
        .unwrap();
    assert!(lock(&fake.asks).iter().all(Option::is_none));
}

#[tokio::test]
async fn another_agent_for_the_same_node() {
    let w = world(1);
    let mut f = fake(&w);
    // Agent 1 also offers plc's node, more expensively; agent 0 refuses it.
    let node = &w.nodes[0];
    let mut pricey = offer(
        node,
        &w.agents[1],
        Resources {
            cpu_millis: 2000,
            memory_bytes: 2 << 30,
            ..Resources::ZERO
        },
    );
    pricey.prices.cpu_core_hour = 1000;
    f.agents
        .get_mut(&w.agents[1].public())
        .unwrap()
        .offers
        .push(pricey);
    f.agents
        .get_mut(&w.agents[0].public())
        .unwrap()
        .refuse
        .insert(node.key.public());
    let mut req = request(0, AcquireMode::AllOrNothing);
    req.target = SliverTarget::Nodes(vec![node.key.public()]);
    let (acq, _) = acquirer(f, &w.trust);
    let got = acq.acquire(&keys(&w), &req, None).await.unwrap();
    assert_eq!(got.tickets.len(), 1);
    assert_eq!(got.tickets[0].agent, w.agents[1].public());
    // Refused by one agent but obtained from the other: not among the nodes not picked.
    assert!(
        got.plan
            .rejected
            .iter()
            .all(|g| !g.reason.starts_with("refused")),
        "{:?}",
        got.plan.rejected
    );
}

#[tokio::test]
async fn all_or_nothing_releases_everything_when_short() {
    let w = world(2);
    let mut f = fake(&w);
    f.agents.get_mut(&w.agents[1].public()).unwrap().hang = true;
    let (acq, fake) = acquirer(f, &w.trust);
    let err = acq
        .acquire(&keys(&w), &request(4, AcquireMode::AllOrNothing), None)
        .await
        .unwrap_err();
    // Agent 0 issued two tickets; both went back.
    assert_eq!(lock(&fake.released).len(), 2, "{err}");
    assert_eq!(err.reply.reason.code(), "unsatisfiable", "{err}");
    assert!(
        err.reply.message.contains("2 of 4 slivers"),
        "{}",
        err.reply.message
    );
    assert!(
        err.report.iter().any(|l| l.contains("no answer within")),
        "{:?}",
        err.report
    );
}

#[tokio::test]
async fn best_effort_returns_what_it_got() {
    let w = world(2);
    let mut f = fake(&w);
    f.agents.get_mut(&w.agents[1].public()).unwrap().down = true;
    let (acq, fake) = acquirer(f, &w.trust);
    let got = acq
        .acquire(&keys(&w), &request(4, AcquireMode::BestEffort), None)
        .await
        .unwrap();
    assert_eq!(got.tickets.len(), 2);
    assert_eq!(got.missing, 2);
    assert!(!got.plan.satisfiable);
    assert!(lock(&fake.released).is_empty());
    assert!(
        got.report.iter().any(|l| l.contains("missing")),
        "{:?}",
        got.report
    );
}

#[tokio::test]
async fn a_policy_refusal_is_the_reason() {
    let w = world(1);
    let mut f = fake(&w);
    for a in f.agents.values_mut() {
        a.refuse_all = Some(
            Rejection::Policy {
                rule: "quota".into(),
                detail: "quota of 10 slivers".into(),
            }
            .into(),
        );
    }
    let (acq, _) = acquirer(f, &w.trust);
    let err = acq
        .acquire(&keys(&w), &request(2, AcquireMode::BestEffort), None)
        .await
        .unwrap_err();
    assert_eq!(err.reply.reason.code(), "policy");
    assert!(err.reply.message.contains("quota"), "{}", err.reply.message);
}

#[tokio::test]
async fn impossible_requests_name_the_binding_constraint_and_ask_nobody() {
    let w = world(2);
    let (acq, fake) = acquirer(fake(&w), &w.trust);
    let mut req = request(2, AcquireMode::AllOrNothing);
    req.per_sliver.memory_bytes = 64 << 30;
    let err = acq.acquire(&keys(&w), &req, None).await.unwrap_err();
    assert_eq!(err.reply.reason.code(), "unsatisfiable");
    assert!(
        err.reply.message.contains("binding constraint: memory"),
        "{}",
        err.reply.message
    );
    assert!(
        err.reply.message.contains("not picked: 4 nodes: memory"),
        "{}",
        err.reply.message
    );
    assert!(lock(&fake.asked).is_empty());
    // FindSlice explains the same.
    let plan = acq.find(&keys(&w), &req).await;
    assert!(!plan.satisfiable);
    assert_eq!(plan.rejected[0].reason, "memory");
}

#[tokio::test]
async fn offers_that_do_not_validate_are_dropped() {
    let w = world(1);
    let mut f = fake(&w);
    // An ad from a federation nobody trusts.
    let mut rogue = TestFederation::new("rogue", 150);
    let node = rogue.node(77, "nowhere");
    f.agents
        .get_mut(&w.agents[0].public())
        .unwrap()
        .offers
        .push(offer(&node, &w.agents[0], small()));
    let (acq, _) = acquirer(f, &w.trust);
    let g = acq
        .gather(&keys(&w), &request(1, AcquireMode::BestEffort))
        .await;
    assert_eq!(g.candidates.len(), 2);
    assert!(
        g.report.iter().any(|l| l.contains("1 offers dropped")),
        "{:?}",
        g.report
    );
}

#[tokio::test]
async fn unreachable_agents_make_an_unreachable_failure() {
    let w = world(1);
    let mut f = fake(&w);
    for a in f.agents.values_mut() {
        a.down = true;
    }
    let (acq, _) = acquirer(f, &w.trust);
    let err = acq
        .acquire(&keys(&w), &request(1, AcquireMode::AllOrNothing), None)
        .await
        .unwrap_err();
    assert_eq!(err.reply.reason.code(), "unreachable", "{err}");
}

/// `n` more agents with no offers, each configured by `setup`.
fn extra_agents(f: &mut Fake, n: u8, setup: impl Fn(&mut FakeAgent)) -> Vec<PublicKey> {
    (0..n)
        .map(|i| {
            let key = test_key(60 + i).public();
            let mut agent = FakeAgent::default();
            setup(&mut agent);
            f.agents.insert(key, agent);
            key
        })
        .collect()
}

// On paused time: the agents' delays and the timeouts pass in virtual time, exactly.
#[tokio::test(start_paused = true)]
async fn offers_are_gathered_in_parallel_but_never_more_than_concurrency_at_once() {
    let w = world(1);
    let mut f = Fake::default();
    let agents = extra_agents(&mut f, 10, |a| a.delay = Duration::from_millis(60));
    let (acq, fake) = acquirer_with(
        f,
        &w.trust,
        AcquireSettings {
            call_timeout: Duration::from_secs(5),
            concurrency: 3,
            ..AcquireSettings::default()
        },
    );
    let g = acq
        .gather(&agents, &request(1, AcquireMode::BestEffort))
        .await;
    assert_eq!((g.asked, g.answered), (10, 10), "{:?}", g.report);
    let peak = fake.calls.peak();
    assert!(peak <= 3, "{peak} calls in flight with concurrency 3");
    assert!(peak > 1, "calls never overlapped: gathering is serial");
}

// On paused time: the agents' delays and the timeouts pass in virtual time, exactly.
#[tokio::test(start_paused = true)]
async fn hanging_agents_cost_one_timeout_in_total_not_one_each() {
    let w = world(1);
    let mut f = Fake::default();
    let agents = extra_agents(&mut f, 10, |a| a.hang_ads = true);
    let timeout = Duration::from_millis(200);
    let (acq, _) = acquirer_with(
        f,
        &w.trust,
        AcquireSettings {
            call_timeout: timeout,
            ..AcquireSettings::default()
        },
    );
    let started = tokio::time::Instant::now();
    let g = acq
        .gather(&agents, &request(1, AcquireMode::BestEffort))
        .await;
    let took = started.elapsed();
    assert_eq!(g.answered, 0);
    assert_eq!(
        g.report
            .iter()
            .filter(|l| l.contains("no answer within 200ms"))
            .count(),
        10,
        "{:?}",
        g.report
    );
    // One after the other would take 10 × 200 ms; in parallel it is one timeout.
    assert!(took >= timeout, "{took:?}");
    assert!(took < timeout * 2, "10 hanging agents took {took:?}");
}

// On paused time: the agents' delays and the timeouts pass in virtual time, exactly.
#[tokio::test(start_paused = true)]
async fn an_acquisition_ends_by_its_deadline_and_hands_back_what_it_got() {
    let w = world(2);
    let mut f = fake(&w);
    f.agents.get_mut(&w.agents[1].public()).unwrap().hang = true;
    let (acq, fake) = acquirer_with(
        f,
        &w.trust,
        AcquireSettings {
            call_timeout: Duration::from_secs(5),
            max_rounds: 8,
            ..AcquireSettings::default()
        },
    );
    assert_eq!(acq.deadline(), Duration::from_secs(5) * DEADLINE_CALLS);
    let acq = acq.with_deadline(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    let err = acq
        .acquire(&keys(&w), &request(4, AcquireMode::AllOrNothing), None)
        .await
        .unwrap_err();
    let took = started.elapsed();
    // At the deadline, well before the 5 s call timeout.
    assert!(took >= Duration::from_millis(300), "took {took:?}");
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    assert!(
        err.report
            .iter()
            .any(|l| l.contains("deadline of 300ms for the whole acquisition reached")),
        "{:?}",
        err.report
    );
    // The two tickets agent 0 issued went back.
    assert_eq!(lock(&fake.released).len(), 2, "{err}");
}

// On paused time: the agents' delays and the timeouts pass in virtual time, exactly.
#[tokio::test(start_paused = true)]
async fn stray_tickets_go_back_to_every_agent_at_once() {
    for (concurrency, peak) in [(16, 2), (1, 1)] {
        let w = world(2);
        let mut f = fake(&w);
        for a in f.agents.values_mut() {
            a.stray = true;
            a.delay = Duration::from_millis(50);
        }
        let (acq, fake) = acquirer_with(
            f,
            &w.trust,
            AcquireSettings {
                call_timeout: Duration::from_secs(5),
                concurrency,
                ..AcquireSettings::default()
            },
        );
        let got = acq
            .acquire(&keys(&w), &request(4, AcquireMode::AllOrNothing), None)
            .await
            .unwrap();
        assert_eq!(got.tickets.len(), 4);
        let mut released = lock(&fake.released).clone();
        released.sort();
        let mut strays: Vec<String> = w
            .agents
            .iter()
            .map(|a| format!("{}-stray", a.public().short()))
            .collect();
        strays.sort();
        assert_eq!(released, strays);
        assert_eq!(
            fake.releases.peak(),
            peak,
            "releases in flight with concurrency {concurrency}"
        );
    }
}

#[tokio::test]
async fn malformed_requests_ask_no_agent() {
    let w = world(2);
    let (acq, fake) = acquirer(fake(&w), &w.trust);
    let mut req = request(2, AcquireMode::AllOrNothing);
    req.constraints.min_sites = 3;
    let err = acq.acquire(&keys(&w), &req, None).await.unwrap_err();
    assert_eq!(err.reply.reason.code(), "malformed");
    assert!(
        err.reply.message.contains("lower min_sites to at most 2"),
        "{}",
        err.reply.message
    );
    let plan = acq.find(&keys(&w), &req).await;
    assert!(plan.explanation.starts_with("malformed request"));
    assert_eq!(fake.calls.peak(), 0, "an agent was asked");
}
