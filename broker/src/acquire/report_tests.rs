//! The typed report of an acquisition: the events each phase records, with the data that
//! matters, and the report's lines as exactly those events rendered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use capability_schema::ad::{PriceList, ShareState};
use capability_schema::identity::{SecretKey, test_key};
use capability_schema::protocol::TicketBytes;
use capability_schema::resources::ResourceKind;
use capability_schema::slice::{SliceConstraints, SliceKind, SliverTarget};
use capability_schema::{Delegation, Resources};
use federation::TrustStore;
use federation::testing::{TestFederation, TestNode};

use super::*;

/// Agents answering from a script.
#[derive(Default)]
struct Scripted {
    /// What each agent offers (an agent not here is unreachable).
    offers: BTreeMap<PublicKey, Vec<NodeOffer>>,
    /// (node, agent) pairs the agent refuses tickets for.
    refuse: BTreeSet<(PublicKey, PublicKey)>,
    /// Agents unreachable for `GetTickets` (their offers still come).
    tickets_down: BTreeSet<PublicKey>,
}

impl AgentClient for Arc<Scripted> {
    async fn get_ads(&self, agent: PublicKey, _: AdQuery) -> Result<Vec<NodeOffer>, CallError> {
        self.offers
            .get(&agent)
            .cloned()
            .ok_or_else(|| CallError::Unreachable("connection refused".into()))
    }

    async fn get_tickets(
        &self,
        agent: PublicKey,
        request: TicketRequest,
    ) -> Result<TicketsAnswer, CallError> {
        if self.tickets_down.contains(&agent) {
            return Err(CallError::Unreachable("connection refused".into()));
        }
        let mut out = TicketsAnswer::default();
        for s in request.slivers {
            if self.refuse.contains(&(s.node, agent)) {
                out.refused.push(RefusedSliver {
                    node: s.node,
                    reason: over_share(agent).into(),
                });
            } else {
                out.issued.push(IssuedTicket {
                    node: s.node,
                    federation: "plc".into(),
                    agent,
                    ticket_id: format!("{}-{}", agent.short(), s.node.short()),
                    ticket: TicketBytes(vec![1]),
                    price: 0,
                    addresses: vec![],
                });
            }
        }
        Ok(out)
    }

    async fn released(&self, _: PublicKey, ids: Vec<String>) -> Result<u32, CallError> {
        Ok(ids.len() as u32)
    }
}

fn over_share(agent: PublicKey) -> Rejection {
    Rejection::OverShare {
        agent,
        kind: ResourceKind::Memory,
        in_use: 1,
        share: 1,
        asked: 1,
    }
}

fn free() -> Resources {
    Resources {
        cpu_millis: 2000,
        memory_bytes: 2 << 30,
        ..Resources::ZERO
    }
}

/// `node`'s offer through `agent`, delegated and signed.
fn offer(node: &TestNode, agent: &SecretKey) -> NodeOffer {
    let now = unix_now();
    let mut body = node.ad_body(1, now, 600);
    body.delegations.push(Signed::sign(
        &node.key,
        &Delegation {
            node: node.key.public(),
            agent: agent.public(),
            share: free(),
            scope: Default::default(),
            issued_at: now,
            since: now,
            not_after: now + 3600,
        },
    ));
    body.shares.push(ShareState {
        agent: agent.public(),
        share: free(),
        committed: Resources::ZERO,
        free: free(),
    });
    NodeOffer {
        agent: agent.public(),
        ad: Signed::sign(&node.key, &body),
        free: free(),
        prices: PriceList::default(),
    }
}

/// Three nodes of `plc` on their own sites; agents `a`, `b` and `c` (which never answers).
struct World {
    trust: SharedTrust,
    nodes: Vec<TestNode>,
    a: SecretKey,
    b: SecretKey,
    c: PublicKey,
}

fn world() -> World {
    let mut plc = TestFederation::new("plc", 100);
    let mut store = TrustStore::new();
    plc.trust(&mut store);
    World {
        trust: Arc::new(RwLock::new(store)),
        nodes: (0..3)
            .map(|i| plc.node(i + 1, &format!("site{i}")))
            .collect(),
        a: test_key(20),
        b: test_key(21),
        c: test_key(22).public(),
    }
}

impl World {
    fn agents(&self) -> Vec<PublicKey> {
        vec![self.a.public(), self.b.public(), self.c]
    }

    fn node(&self, i: usize) -> PublicKey {
        self.nodes[i].key.public()
    }

    fn acquirer(&self, script: Scripted) -> Acquirer<Arc<Scripted>> {
        Acquirer::new(
            Arc::new(script),
            Arc::clone(&self.trust),
            AcquireSettings {
                call_timeout: Duration::from_millis(500),
                ..AcquireSettings::default()
            },
        )
    }
}

fn request(target: SliverTarget, mode: AcquireMode) -> SliceRequest {
    SliceRequest {
        name: "site_s".into(),
        principal: test_key(50).public(),
        principal_federation: "plc".into(),
        kind: SliceKind::Regular,
        per_sliver: Resources {
            cpu_millis: 500,
            memory_bytes: 256 << 20,
            ..Resources::ZERO
        },
        target,
        constraints: SliceConstraints::default(),
        duration_secs: 600,
        mode,
        net: Default::default(),
    }
}

/// Agent `a` offers nodes 0 and 1 and refuses node 0; agent `b` offers node 2 and cannot be
/// reached for tickets; agent `c` cannot be reached at all. Three slivers wanted: one can be
/// had.
fn one_of_three(w: &World) -> Scripted {
    let mut script = Scripted::default();
    script.offers.insert(
        w.a.public(),
        vec![offer(&w.nodes[0], &w.a), offer(&w.nodes[1], &w.a)],
    );
    script
        .offers
        .insert(w.b.public(), vec![offer(&w.nodes[2], &w.b)]);
    script.refuse.insert((w.node(0), w.a.public()));
    script.tickets_down.insert(w.b.public());
    script
}

/// The events every phase of `one_of_three` records, whatever the order the agents answer in.
fn assert_one_of_three_events(w: &World, events: &[AcquireEvent]) {
    let unreachable = || CallFailure::Unreachable("connection refused".into());
    assert_eq!(
        events[0],
        AcquireEvent::NoOffers {
            agent: w.c,
            error: unreachable(),
        }
    );
    let refused = AcquireEvent::SliverRefused {
        node: w.node(0),
        agent: w.a.public(),
        reason: over_share(w.a.public()).into(),
    };
    let failed = AcquireEvent::AgentFailed {
        agent: w.b.public(),
        slivers: 1,
        error: unreachable(),
    };
    assert!(events[1..3].contains(&refused), "{events:?}");
    assert!(events[1..3].contains(&failed), "{events:?}");
}

#[tokio::test]
async fn all_or_nothing_records_each_phase_and_renders_its_report_from_the_events() {
    let w = world();
    let acq = w.acquirer(one_of_three(&w));
    let err = acq
        .acquire(
            &w.agents(),
            &request(SliverTarget::Count(3), AcquireMode::AllOrNothing),
            None,
        )
        .await
        .unwrap_err();
    assert_one_of_three_events(&w, &err.events);
    // Nothing left to ask after round 1, so no replan; the one ticket went back.
    assert_eq!(err.events.len(), 4, "{:?}", err.events);
    assert_eq!(
        err.events[3],
        AcquireEvent::Released {
            tickets: 1,
            agents: 1,
            not_told: vec![],
        }
    );
    assert_eq!(err.report, AcquireEvent::render_all(&err.events));
    assert!(
        err.reply
            .message
            .ends_with(&format!(" [{}]", err.report.join("; "))),
        "{}",
        err.reply.message
    );
}

#[tokio::test]
async fn best_effort_records_what_is_missing() {
    let w = world();
    let acq = w.acquirer(one_of_three(&w));
    let got = acq
        .acquire(
            &w.agents(),
            &request(SliverTarget::Count(3), AcquireMode::BestEffort),
            None,
        )
        .await
        .unwrap();
    assert_eq!(got.tickets.len(), 1);
    assert_one_of_three_events(&w, &got.events);
    assert_eq!(
        got.events[3..],
        [AcquireEvent::Short {
            missing: 2,
            wanted: 3,
        }]
    );
    assert_eq!(got.report, AcquireEvent::render_all(&got.events));
}

#[tokio::test]
async fn a_replan_around_a_refusal_is_an_event_with_its_round() {
    let w = world();
    // Agent `a` offers node 0 cheaply and refuses it; agent `b` offers it dearly.
    let mut script = Scripted::default();
    script
        .offers
        .insert(w.a.public(), vec![offer(&w.nodes[0], &w.a)]);
    let mut dear = offer(&w.nodes[0], &w.b);
    dear.prices.cpu_core_hour = 1000;
    script.offers.insert(w.b.public(), vec![dear]);
    script.refuse.insert((w.node(0), w.a.public()));
    let acq = w.acquirer(script);
    let got = acq
        .acquire(
            &[w.a.public(), w.b.public()],
            &request(
                SliverTarget::Nodes(vec![w.node(0)]),
                AcquireMode::AllOrNothing,
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(got.tickets[0].agent, w.b.public());
    assert_eq!(
        got.events,
        vec![
            AcquireEvent::SliverRefused {
                node: w.node(0),
                agent: w.a.public(),
                reason: over_share(w.a.public()).into(),
            },
            AcquireEvent::Replanned {
                round: 2,
                slivers: 1,
            },
        ]
    );
    assert_eq!(got.report, AcquireEvent::render_all(&got.events));
}

#[tokio::test]
async fn gathering_names_the_offers_it_drops_and_why() {
    let w = world();
    let mut script = Scripted::default();
    // Agent `a` passes on an offer naming agent `b`.
    script.offers.insert(
        w.a.public(),
        vec![offer(&w.nodes[0], &w.a), offer(&w.nodes[1], &w.b)],
    );
    let acq = w.acquirer(script);
    let g = acq
        .gather(
            &[w.a.public()],
            &request(SliverTarget::Count(1), AcquireMode::BestEffort),
        )
        .await;
    assert_eq!(g.candidates.len(), 1);
    assert_eq!(
        g.events,
        vec![AcquireEvent::OffersDropped {
            agent: w.a.public(),
            dropped: 1,
            first: DroppedOffer::OtherAgent(w.b.public()),
        }]
    );
    assert_eq!(g.report, AcquireEvent::render_all(&g.events));
}

#[test]
fn call_errors_read_the_same_in_the_report() {
    let errors = [
        CallError::Refused(over_share(test_key(1).public()).into()),
        CallError::Unreachable("connection refused".into()),
        CallError::Timeout(Duration::from_micros(123_456)),
        CallError::TooLarge("5 MiB".into()),
        CallError::Unexpected("Released".into()),
    ];
    for e in errors {
        assert_eq!(CallFailure::from(e.clone()).to_string(), e.to_string());
    }
}
