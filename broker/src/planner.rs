//! The slice planner: a pure function from a [`SliceRequest`] and the offers agents made to a
//! [`SlicePlan`].
//!
//! How a plan is made:
//! 1. Every offer (a node as one agent offers it) is checked against the request: excluded
//!    nodes, allowed federations, explicit node lists, each resource, and the price cap. An
//!    offer that fails gets the first reason it fails; a node fails only if all its offers do,
//!    and then counts under its best offer's reason.
//! 2. For each node that passes, the best offer wins: the lowest price, then the most free.
//! 3. Nodes are ranked by fit (the smallest share of free resources the sliver would use, so
//!    load spreads to the emptiest nodes), then load, then price.
//! 4. Selection takes one node per site in rounds (best site first) until the count is met, so
//!    the plan spans as many sites as the candidates allow; `min_sites` is then checked.
//! 5. When the request cannot be met, the explanation names the binding constraint and what
//!    would make it satisfiable ("12 nodes would fit with memory ≤ 256MiB").
//!
//! The planner never performs I/O; the broker and `slicectl --agent` call it with the offers
//! they gathered.

use std::collections::{BTreeMap, HashMap, HashSet};

use capability_schema::PublicKey;
use capability_schema::ad::PriceList;
use capability_schema::protocol::{NodeOffer, PlannedSliver, RejectedGroup, SlicePlan};
use capability_schema::resources::{ResourceKind, Resources};
use capability_schema::slice::{SliceRequest, SliverTarget};

/// How many example nodes a rejected group lists.
const EXAMPLES_PER_GROUP: usize = 5;
/// How many alternatives a plan carries beyond its choice.
const MAX_ALTERNATIVES: usize = 200;

/// One node as one agent offers it, in the planner's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The node.
    pub node: PublicKey,
    /// Its federation.
    pub federation: String,
    /// Its site.
    pub site: String,
    /// The agent making the offer.
    pub agent: PublicKey,
    /// What the agent can still commit on the node.
    pub free: Resources,
    /// The agent's prices.
    pub prices: PriceList,
    /// The node's one-minute load average, times 1000.
    pub load_milli: u64,
}

impl Candidate {
    /// A candidate from an agent's offer. The ad's signature is the caller's to check; this
    /// only reads it.
    pub fn from_offer(offer: &NodeOffer) -> Option<Candidate> {
        let ad = offer.ad.peek_unverified().ok()?;
        Some(Candidate {
            node: ad.node,
            federation: ad.federation,
            site: ad.site,
            agent: offer.agent,
            free: offer.free,
            prices: offer.prices,
            load_milli: ad.measured.load_milli,
        })
    }
}

/// Why an offer was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Unfit {
    Excluded,
    NotListed,
    Federation,
    Resource(ResourceKind),
    Price,
}

impl Unfit {
    fn label(self) -> String {
        match self {
            Unfit::Excluded => "excluded by the request".to_owned(),
            Unfit::NotListed => "not among the nodes asked for".to_owned(),
            Unfit::Federation => "federation not allowed".to_owned(),
            Unfit::Resource(kind) => kind.to_string(),
            Unfit::Price => "price above the maximum".to_owned(),
        }
    }
}

/// A node that passed, with its best offer.
#[derive(Debug, Clone)]
struct Feasible<'a> {
    candidate: &'a Candidate,
    price: u64,
    /// Per-mille of the tightest free resource the sliver would take (lower is a better fit).
    pressure: u64,
}

fn check(
    request: &SliceRequest,
    c: &Candidate,
    price: u64,
    listed: Option<&HashSet<PublicKey>>,
) -> Option<Unfit> {
    let constraints = &request.constraints;
    if constraints.exclude_nodes.contains(&c.node) {
        return Some(Unfit::Excluded);
    }
    if listed.is_some_and(|set| !set.contains(&c.node)) {
        return Some(Unfit::NotListed);
    }
    if !constraints.federations.is_empty() && !constraints.federations.contains(&c.federation) {
        return Some(Unfit::Federation);
    }
    if let Some(kind) = request.per_sliver.first_excess(&c.free) {
        return Some(Unfit::Resource(kind));
    }
    if constraints.max_price.is_some_and(|max| price > max) {
        return Some(Unfit::Price);
    }
    None
}

fn pressure(asked: &Resources, free: &Resources) -> u64 {
    ResourceKind::ALL
        .into_iter()
        .filter(|k| asked.get(*k) > 0)
        .map(|k| (u128::from(asked.get(k)) * 1000 / u128::from(free.get(k).max(1))) as u64)
        .max()
        .unwrap_or(0)
}

/// Plans `request` over `candidates`.
pub fn plan(request: &SliceRequest, candidates: &[Candidate]) -> SlicePlan {
    plan_around(request, candidates, &[])
}

/// Plans the rest of `request` when the slivers of `held` are already obtained (replanning
/// after refusals): only the missing slivers are chosen, never on a held node, preferring
/// sites not held yet; `min_sites` counts the held sites too. The plan's `chosen` lists the
/// new slivers only.
pub fn plan_around(
    request: &SliceRequest,
    candidates: &[Candidate],
    held: &[PlannedSliver],
) -> SlicePlan {
    let held_nodes: HashSet<PublicKey> = held.iter().map(|s| s.node).collect();
    let held_sites: HashSet<&str> = held.iter().map(|s| s.site.as_str()).collect();
    let listed: Option<HashSet<PublicKey>> = match &request.target {
        SliverTarget::Nodes(nodes) => Some(
            nodes
                .iter()
                .copied()
                .filter(|n| !held_nodes.contains(n))
                .collect(),
        ),
        SliverTarget::Count(_) => None,
    };
    let total_wanted = request.target.count();
    let wanted = total_wanted.saturating_sub(held_nodes.len());

    // 1–2: the best offer per node, or the reason its best offer failed.
    let mut best: HashMap<PublicKey, Feasible<'_>> = HashMap::new();
    let mut failed: HashMap<PublicKey, Unfit> = HashMap::new();
    for c in candidates.iter().filter(|c| !held_nodes.contains(&c.node)) {
        let price = c.prices.cost(&request.per_sliver, request.duration_secs);
        match check(request, c, price, listed.as_ref()) {
            None => {
                let entry = Feasible {
                    candidate: c,
                    price,
                    pressure: pressure(&request.per_sliver, &c.free),
                };
                match best.get(&c.node) {
                    Some(old) if (old.price, old.pressure) <= (entry.price, entry.pressure) => {}
                    _ => {
                        best.insert(c.node, entry);
                    }
                }
            }
            Some(reason) => {
                // Keep the reason "closest" to fitting: later checks mean more constraints met.
                let slot = failed.entry(c.node).or_insert(reason);
                if reason > *slot {
                    *slot = reason;
                }
            }
        }
    }
    failed.retain(|node, _| !best.contains_key(node));

    // 3: rank.
    let mut ranked: Vec<Feasible<'_>> = best.into_values().collect();
    ranked.sort_by(|a, b| {
        (
            a.pressure,
            a.candidate.load_milli,
            a.price,
            a.candidate.node,
        )
            .cmp(&(
                b.pressure,
                b.candidate.load_milli,
                b.price,
                b.candidate.node,
            ))
    });

    // 4: round-robin over sites, best site first.
    let mut by_site: BTreeMap<&str, Vec<&Feasible<'_>>> = BTreeMap::new();
    let mut site_order: Vec<&str> = Vec::new();
    for f in &ranked {
        let site = f.candidate.site.as_str();
        if !by_site.contains_key(site) {
            site_order.push(site);
        }
        by_site.entry(site).or_default().push(f);
    }
    // Sites already held come last, so a replan spreads to new sites first.
    let feasible_sites = site_order
        .iter()
        .filter(|s| !held_sites.contains(**s))
        .count()
        + held_sites.len();
    site_order.sort_by_key(|s| held_sites.contains(*s));
    let mut chosen: Vec<&Feasible<'_>> = Vec::with_capacity(wanted.min(ranked.len()));
    let mut round = 0;
    while chosen.len() < wanted {
        let mut took = false;
        for site in &site_order {
            if chosen.len() == wanted {
                break;
            }
            if let Some(f) = by_site[site].get(round) {
                chosen.push(f);
                took = true;
            }
        }
        if !took {
            break;
        }
        round += 1;
    }
    let chosen_nodes: HashSet<PublicKey> = chosen.iter().map(|f| f.candidate.node).collect();
    let distinct_sites = chosen
        .iter()
        .map(|f| f.candidate.site.as_str())
        .chain(held_sites.iter().copied())
        .collect::<HashSet<_>>()
        .len();

    let to_planned = |f: &Feasible<'_>| PlannedSliver {
        node: f.candidate.node,
        federation: f.candidate.federation.clone(),
        site: f.candidate.site.clone(),
        agent: f.candidate.agent,
        price: f.price,
    };
    let alternatives: Vec<PlannedSliver> = ranked
        .iter()
        .filter(|f| !chosen_nodes.contains(&f.candidate.node))
        .take(MAX_ALTERNATIVES)
        .map(to_planned)
        .collect();

    // Rejected groups, largest first.
    let mut groups: BTreeMap<Unfit, Vec<PublicKey>> = BTreeMap::new();
    for (node, reason) in &failed {
        groups.entry(*reason).or_default().push(*node);
    }
    let mut rejected: Vec<(Unfit, Vec<PublicKey>)> = groups.into_iter().collect();
    rejected.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));

    // 5: satisfiable? explain.
    let count_met = chosen.len() == wanted;
    let sites_met = distinct_sites >= request.constraints.min_sites as usize;
    let satisfiable = count_met && sites_met && total_wanted > 0;
    let explanation = if satisfiable {
        format!(
            "{} slivers on {} sites; {} more nodes fit as alternatives; {} nodes did not fit",
            chosen.len() + held_nodes.len(),
            distinct_sites,
            alternatives.len(),
            failed.len()
        )
    } else if total_wanted == 0 {
        "the request asks for no slivers".to_owned()
    } else if !count_met {
        explain_short(
            request,
            candidates,
            &listed,
            &rejected,
            chosen.len() + held_nodes.len(),
            total_wanted,
        )
    } else {
        format!(
            "only {feasible_sites} distinct sites have a node that fits, {} asked; lower min_sites to \
             {feasible_sites}, allow more federations, or ask for less per sliver",
            request.constraints.min_sites
        )
    };

    let rejected = rejected
        .into_iter()
        .map(|(reason, mut nodes)| {
            nodes.sort();
            RejectedGroup {
                reason: reason.label(),
                count: nodes.len() as u32,
                examples: nodes.into_iter().take(EXAMPLES_PER_GROUP).collect(),
            }
        })
        .collect();

    SlicePlan {
        chosen: chosen.into_iter().map(to_planned).collect(),
        alternatives,
        rejected,
        satisfiable,
        explanation,
    }
}

/// Explains a plan short of slivers: the binding constraint and what would satisfy it.
fn explain_short(
    request: &SliceRequest,
    candidates: &[Candidate],
    listed: &Option<HashSet<PublicKey>>,
    rejected: &[(Unfit, Vec<PublicKey>)],
    got: usize,
    wanted: usize,
) -> String {
    let missing = wanted - got;
    let mut text = format!("{got} of {wanted} slivers can be placed");
    if let (Some(listed), SliverTarget::Nodes(_)) = (listed, &request.target) {
        let offered: HashSet<PublicKey> = candidates.iter().map(|c| c.node).collect();
        let unknown = listed.iter().filter(|n| !offered.contains(n)).count();
        if unknown > 0 {
            text.push_str(&format!(
                "; {unknown} of the nodes asked for are offered by no agent"
            ));
        }
    }
    let Some((reason, nodes)) = rejected.first() else {
        text.push_str(&format!("; only {got} nodes are offered at all"));
        return text;
    };
    text.push_str(&format!(
        "; binding constraint: {} ({} nodes)",
        reason.label(),
        nodes.len()
    ));
    match reason {
        Unfit::Resource(kind) => {
            // The `missing`-th largest free amount among nodes short only of this resource.
            let node_set: HashSet<&PublicKey> = nodes.iter().collect();
            let mut frees: Vec<u64> = candidates
                .iter()
                .filter(|c| node_set.contains(&c.node))
                .map(|c| c.free.get(*kind))
                .collect();
            frees.sort_unstable_by(|a, b| b.cmp(a));
            frees.dedup();
            if let Some(level) = frees.get(missing.saturating_sub(1)).or(frees.last()) {
                let would = nodes
                    .iter()
                    .filter(|n| {
                        candidates
                            .iter()
                            .any(|c| c.node == **n && c.free.get(*kind) >= *level)
                    })
                    .count();
                text.push_str(&format!(
                    "; {would} more nodes would fit with {kind} ≤ {} per sliver (asked {})",
                    kind.format(*level),
                    kind.format(request.per_sliver.get(*kind))
                ));
            }
        }
        Unfit::Federation => text.push_str("; allow more federations"),
        Unfit::Price => text.push_str("; raise max_price or shorten the duration"),
        Unfit::Excluded => text.push_str("; exclude fewer nodes"),
        Unfit::NotListed => text.push_str("; list more nodes or ask for a count instead"),
    }
    text
}

#[cfg(test)]
mod tests {
    use capability_schema::AcquireMode;
    use capability_schema::identity::test_key;
    use capability_schema::slice::{SliceConstraints, SliceKind};

    use super::*;

    fn res(cpu: u64, mem_mib: u64) -> Resources {
        Resources {
            cpu_millis: cpu,
            memory_bytes: mem_mib << 20,
            disk_bytes: 0,
            egress_kbps: 0,
        }
    }

    fn cand(n: u8, fed: &str, site: &str, free: Resources, price: u64) -> Candidate {
        Candidate {
            node: test_key(n).public(),
            federation: fed.into(),
            site: site.into(),
            agent: test_key(200).public(),
            free,
            prices: PriceList {
                cpu_core_hour: price,
                ..Default::default()
            },
            load_milli: 0,
        }
    }

    fn request(count: u32, per: Resources) -> SliceRequest {
        SliceRequest {
            name: "s".into(),
            principal: test_key(250).public(),
            principal_federation: "a".into(),
            kind: SliceKind::Regular,
            per_sliver: per,
            target: SliverTarget::Count(count),
            constraints: SliceConstraints::default(),
            duration_secs: 3600,
            mode: AcquireMode::AllOrNothing,
        }
    }

    #[test]
    fn spreads_across_sites_before_doubling_up() {
        let cands = vec![
            cand(1, "a", "s1", res(4000, 4096), 1),
            cand(2, "a", "s1", res(4000, 4096), 1),
            cand(3, "a", "s2", res(1000, 1024), 1),
            cand(4, "b", "s3", res(1000, 1024), 1),
        ];
        let p = plan(&request(3, res(500, 256)), &cands);
        assert!(p.satisfiable, "{}", p.explanation);
        let sites: HashSet<_> = p.chosen.iter().map(|s| s.site.clone()).collect();
        assert_eq!(sites.len(), 3);
        assert_eq!(p.alternatives.len(), 1);
    }

    #[test]
    fn groups_rejections_by_reason_and_names_the_binding_constraint() {
        let mut cands: Vec<Candidate> = (0..37)
            .map(|i| cand(i, "a", &format!("s{i}"), res(4000, 128), 1))
            .collect();
        cands.extend((37..49).map(|i| cand(i, "z", "sz", res(4000, 4096), 1)));
        cands.push(cand(60, "a", "ok", res(4000, 4096), 1));
        let mut req = request(3, res(500, 512));
        req.constraints.federations = vec!["a".into()];
        let p = plan(&req, &cands);
        assert!(!p.satisfiable);
        assert_eq!(p.chosen.len(), 1);
        assert_eq!(p.rejected[0].reason, "memory");
        assert_eq!(p.rejected[0].count, 37);
        assert_eq!(p.rejected[0].examples.len(), EXAMPLES_PER_GROUP);
        assert_eq!(p.rejected[1].reason, "federation not allowed");
        assert_eq!(p.rejected[1].count, 12);
        assert!(
            p.explanation
                .contains("binding constraint: memory (37 nodes)"),
            "{}",
            p.explanation
        );
        assert!(
            p.explanation.contains("memory ≤ 128MiB"),
            "{}",
            p.explanation
        );
    }

    #[test]
    fn min_sites_is_enforced_and_explained() {
        let cands = vec![
            cand(1, "a", "s1", res(4000, 4096), 1),
            cand(2, "a", "s1", res(4000, 4096), 1),
        ];
        let mut req = request(2, res(100, 1));
        req.constraints.min_sites = 2;
        let p = plan(&req, &cands);
        assert!(!p.satisfiable);
        assert!(
            p.explanation.contains("only 1 distinct sites"),
            "{}",
            p.explanation
        );
    }

    #[test]
    fn cheapest_agent_wins_for_a_node_and_price_cap_filters() {
        let mut expensive = cand(1, "a", "s1", res(4000, 4096), 100);
        expensive.agent = test_key(201).public();
        let cheap = cand(1, "a", "s1", res(4000, 4096), 10);
        let p = plan(
            &request(1, res(1000, 1)),
            &[expensive.clone(), cheap.clone()],
        );
        assert_eq!(p.chosen[0].agent, cheap.agent);
        assert_eq!(p.chosen[0].price, 10);
        let mut req = request(1, res(1000, 1));
        req.constraints.max_price = Some(5);
        let p = plan(&req, &[expensive, cheap]);
        assert!(!p.satisfiable);
        assert_eq!(p.rejected[0].reason, "price above the maximum");
    }

    #[test]
    fn explicit_nodes_and_exclusions() {
        let cands: Vec<Candidate> = (1..=4)
            .map(|i| cand(i, "a", &format!("s{i}"), res(4000, 4096), 1))
            .collect();
        let mut req = request(0, res(100, 1));
        req.target = SliverTarget::Nodes(vec![
            test_key(2).public(),
            test_key(3).public(),
            test_key(9).public(),
        ]);
        req.constraints.exclude_nodes = vec![test_key(3).public()];
        let p = plan(&req, &cands);
        assert!(!p.satisfiable);
        assert_eq!(p.chosen.len(), 1);
        assert_eq!(p.chosen[0].node, test_key(2).public());
        assert!(
            p.explanation
                .contains("1 of the nodes asked for are offered by no agent"),
            "{}",
            p.explanation
        );
    }

    #[test]
    fn replanning_skips_held_nodes_and_prefers_new_sites() {
        let cands = vec![
            cand(1, "a", "s1", res(4000, 4096), 1),
            cand(2, "a", "s1", res(4000, 4096), 1),
            cand(3, "a", "s2", res(1000, 1024), 1),
        ];
        let req = request(3, res(500, 256));
        let first = plan(&req, &cands);
        assert!(first.satisfiable);
        // Node 1 was obtained; node 3's agent refused; plan the remaining two.
        let held: Vec<PlannedSliver> = first
            .chosen
            .iter()
            .filter(|s| s.node == test_key(1).public())
            .cloned()
            .collect();
        assert_eq!(held.len(), 1);
        let rest: Vec<Candidate> = cands
            .iter()
            .filter(|c| c.node != test_key(3).public())
            .cloned()
            .collect();
        let again = plan_around(&req, &rest, &held);
        assert!(!again.satisfiable, "{}", again.explanation);
        assert_eq!(again.chosen.len(), 1);
        assert_eq!(again.chosen[0].node, test_key(2).public());
        assert!(
            again.explanation.starts_with("2 of 3 slivers"),
            "{}",
            again.explanation
        );
        // With node 3 back, the new site is preferred over doubling up on s1.
        let again = plan_around(&request(2, res(500, 256)), &cands, &held);
        assert!(again.satisfiable, "{}", again.explanation);
        assert_eq!(again.chosen[0].node, test_key(3).public());
        // min_sites counts held sites.
        let mut req2 = request(2, res(500, 256));
        req2.constraints.min_sites = 2;
        assert!(plan_around(&req2, &cands, &held).satisfiable);
    }

    #[test]
    fn prefers_the_emptiest_nodes() {
        let cands = vec![
            cand(1, "a", "s1", res(600, 4096), 1),
            cand(2, "a", "s1", res(4000, 4096), 1),
        ];
        let p = plan(&request(1, res(500, 1)), &cands);
        assert_eq!(p.chosen[0].node, test_key(2).public());
    }
}
