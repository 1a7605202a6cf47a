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
//! 5. Every node not picked is accounted for in `rejected`: the groups of step 1 by reason
//!    ("37 nodes: memory"), and "fit, not needed" for nodes that passed but were not chosen, so
//!    the counts add up to the nodes offered minus those picked.
//! 6. When the request cannot be met, the explanation names the binding constraint and what
//!    would make it satisfiable ("would be satisfiable with memory ≤ 256MiB per sliver"). A
//!    node counts only under its first failed check, so the largest group need not be the
//!    binding one: each suggested relaxation is confirmed by planning again with it applied
//!    (at most `MAX_HINT_REPLANS` re-plans); when no single one suffices, the explanation
//!    names those that must be relaxed together.
//!
//! Requests whose shape no offer can satisfy (no slivers, `min_sites` above the sliver count,
//! a node listed twice or listed and excluded) are refused by [`check_shape`], which the broker
//! daemon also applies before asking any agent.
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
/// The reason of the group of nodes that fit but were not needed.
pub const FIT_NOT_NEEDED: &str = "fit, not needed";

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

/// How a candidate's federation is written: its name, or `name@<short key>` when another
/// trusted federation carries the same name or a constraint names that federation by key
/// (so that [`federation_allows`] can tell).
pub fn federation_shown(
    trust: &federation::TrustStore,
    ad: &capability_schema::ResourceAd,
    constraints: &[String],
) -> String {
    let Ok(cert) = ad.membership.peek_unverified() else {
        return ad.federation.clone();
    };
    let by_key = format!("{}@", ad.federation);
    if constraints.iter().any(|f| f.starts_with(&by_key)) {
        return federation::trust::qualified(&ad.federation, &cert.authority);
    }
    trust.display_name(&ad.federation, &cert.authority)
}

/// Whether a request's federation constraint (`name`, or `name@KEY` with the key or a hex
/// prefix of it) admits a candidate of `federation` (as [`federation_shown`] writes it): a
/// bare name admits every federation of that name, a keyed one only the federation whose
/// short key agrees with it.
pub fn federation_allows(allowed: &str, federation: &str) -> bool {
    let (allowed_name, allowed_key) = match allowed.split_once('@') {
        Some((name, key)) => (name, Some(key)),
        None => (allowed, None),
    };
    let (name, short) = match federation.split_once('@') {
        Some((name, short)) => (name, Some(short)),
        None => (federation, None),
    };
    if allowed_name != name {
        return false;
    }
    match (allowed_key, short) {
        (None, _) => true,
        (Some(key), Some(short)) => {
            let key = key
                .strip_prefix(capability_schema::identity::PUBLIC_PREFIX)
                .unwrap_or(key)
                .to_ascii_lowercase();
            !key.is_empty() && (short.starts_with(&key) || key.starts_with(short))
        }
        (Some(_), None) => false,
    }
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
    /// The candidate's load, copied so that ranking compares without following the reference.
    load_milli: u64,
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
    if !constraints.federations.is_empty()
        && !constraints
            .federations
            .iter()
            .any(|f| federation_allows(f, &c.federation))
    {
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

/// Why a request cannot be planned whatever the offers: its shape is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Neither a count nor a node list.
    #[error("the request asks for no slivers; ask for a count of at least 1 or list nodes")]
    NoSlivers,
    /// More distinct sites than slivers: a sliver sits on one site.
    #[error(
        "min_sites {min_sites} is more than the {count} slivers asked (each sliver sits on one \
         site); lower min_sites to at most {count} or ask for more slivers"
    )]
    MinSitesAboveCount {
        /// The sites asked.
        min_sites: u32,
        /// The slivers asked.
        count: usize,
    },
    /// A node listed twice can hold only one sliver of the slice.
    #[error("node {node} is listed {times} times; list each node once")]
    DuplicateNode {
        /// The node (short form).
        node: String,
        /// How often it is listed.
        times: usize,
    },
    /// A node both asked for and excluded.
    #[error("node {node} is both asked for and excluded; drop it from one of the two lists")]
    ListedAndExcluded {
        /// The node (short form).
        node: String,
    },
}

/// Checks what no offer can fix: a request for no slivers, `min_sites` above the sliver count,
/// a node listed twice, or listed and excluded. The broker refuses such requests as malformed
/// before asking any agent; [`plan`] explains them the same way.
pub fn check_shape(request: &SliceRequest) -> Result<(), ShapeError> {
    let count = request.target.count();
    if count == 0 {
        return Err(ShapeError::NoSlivers);
    }
    let min_sites = request.constraints.min_sites;
    if min_sites as usize > count {
        return Err(ShapeError::MinSitesAboveCount { min_sites, count });
    }
    if let SliverTarget::Nodes(nodes) = &request.target {
        let mut times: BTreeMap<PublicKey, usize> = BTreeMap::new();
        for node in nodes {
            *times.entry(*node).or_default() += 1;
        }
        if let Some((node, n)) = times.iter().find(|(_, n)| **n > 1) {
            return Err(ShapeError::DuplicateNode {
                node: node.short(),
                times: *n,
            });
        }
        if let Some(node) = request
            .constraints
            .exclude_nodes
            .iter()
            .find(|n| times.contains_key(n))
        {
            return Err(ShapeError::ListedAndExcluded { node: node.short() });
        }
    }
    Ok(())
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
    if let Err(e) = check_shape(request) {
        return SlicePlan {
            chosen: Vec::new(),
            alternatives: Vec::new(),
            rejected: Vec::new(),
            satisfiable: false,
            explanation: format!("malformed request: {e}"),
        };
    }
    plan_inner(request, candidates, held, true)
}

/// The planner proper; `hints` says whether an unsatisfiable plan tries relaxations (re-plans
/// for hints do not).
fn plan_inner(
    request: &SliceRequest,
    candidates: &[Candidate],
    held: &[PlannedSliver],
    hints: bool,
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
    let mut best: HashMap<PublicKey, Feasible<'_>> = HashMap::with_capacity(candidates.len());
    let mut failed: HashMap<PublicKey, Unfit> = HashMap::new();
    for c in candidates.iter().filter(|c| !held_nodes.contains(&c.node)) {
        let price = c.prices.cost(&request.per_sliver, request.duration_secs);
        match check(request, c, price, listed.as_ref()) {
            None => {
                let entry = Feasible {
                    candidate: c,
                    price,
                    pressure: pressure(&request.per_sliver, &c.free),
                    load_milli: c.load_milli,
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
    ranked.sort_unstable_by(|a, b| {
        (a.pressure, a.load_milli, a.price)
            .cmp(&(b.pressure, b.load_milli, b.price))
            .then_with(|| a.candidate.node.cmp(&b.candidate.node))
    });

    // 4: round-robin over sites, best site first. Sites are numbered in rank order of their
    // best node; each holds the positions of its nodes in `ranked`, best first.
    let mut site_index: HashMap<&str, usize> = HashMap::new();
    let mut sites: Vec<(&str, Vec<usize>)> = Vec::new();
    for (at, f) in ranked.iter().enumerate() {
        let site = f.candidate.site.as_str();
        let index = *site_index.entry(site).or_insert_with(|| {
            sites.push((site, Vec::new()));
            sites.len() - 1
        });
        sites[index].1.push(at);
    }
    // Sites already held come last, so a replan spreads to new sites first.
    let feasible_sites = sites
        .iter()
        .filter(|(s, _)| !held_sites.contains(*s))
        .count()
        + held_sites.len();
    sites.sort_by_key(|(s, _)| held_sites.contains(*s));
    let mut picked = vec![false; ranked.len()];
    let mut chosen: Vec<&Feasible<'_>> = Vec::with_capacity(wanted.min(ranked.len()));
    let mut round = 0;
    while chosen.len() < wanted {
        let mut took = false;
        for (_, members) in &sites {
            if chosen.len() == wanted {
                break;
            }
            if let Some(&at) = members.get(round) {
                chosen.push(&ranked[at]);
                picked[at] = true;
                took = true;
            }
        }
        if !took {
            break;
        }
        round += 1;
    }
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
    // Every node that fits but was not picked, best first.
    let not_needed: Vec<&Feasible<'_>> = ranked
        .iter()
        .zip(&picked)
        .filter(|(_, picked)| !**picked)
        .map(|(f, _)| f)
        .collect();
    let alternatives: Vec<PlannedSliver> = not_needed
        .iter()
        .take(MAX_ALTERNATIVES)
        .map(|f| to_planned(f))
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
            not_needed.len(),
            failed.len()
        )
    } else {
        let got = chosen.len() + held_nodes.len();
        let mut text = if count_met {
            format!(
                "only {feasible_sites} distinct sites have a node that fits, {} asked",
                request.constraints.min_sites
            )
        } else {
            short_of_slivers(request, candidates, &listed, got, total_wanted)
        };
        if hints {
            let shortfall = Shortfall {
                request,
                candidates,
                held,
                rejected: &rejected,
                missing: wanted.saturating_sub(chosen.len()),
                sites_short: count_met,
                feasible_sites,
            };
            text.push_str(&shortfall.explain());
        }
        text
    };

    let mut rejected: Vec<RejectedGroup> = rejected
        .into_iter()
        .map(|(reason, mut nodes)| {
            let count = nodes.len() as u32;
            // The examples are the smallest keys; only they need sorting.
            if nodes.len() > EXAMPLES_PER_GROUP {
                nodes.select_nth_unstable(EXAMPLES_PER_GROUP);
                nodes.truncate(EXAMPLES_PER_GROUP);
            }
            nodes.sort_unstable();
            RejectedGroup {
                reason: reason.label(),
                count,
                examples: nodes,
            }
        })
        .collect();
    if !not_needed.is_empty() {
        rejected.push(RejectedGroup {
            reason: FIT_NOT_NEEDED.to_owned(),
            count: not_needed.len() as u32,
            examples: not_needed
                .iter()
                .take(EXAMPLES_PER_GROUP)
                .map(|f| f.candidate.node)
                .collect(),
        });
    }

    SlicePlan {
        chosen: chosen.into_iter().map(to_planned).collect(),
        alternatives,
        rejected,
        satisfiable,
        explanation,
    }
}

/// "N of M slivers can be placed", and how many of the nodes asked for nobody offers.
fn short_of_slivers(
    request: &SliceRequest,
    candidates: &[Candidate],
    listed: &Option<HashSet<PublicKey>>,
    got: usize,
    wanted: usize,
) -> String {
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
    text
}

/// One way to loosen a request, as a hint proposes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relax {
    /// Ask at most this much of a resource per sliver.
    Resource(ResourceKind, u64),
    /// Allow every federation.
    Federations,
    /// Raise the price cap to this (`None`: drop it).
    Price(Option<u64>),
    /// Exclude no node.
    Exclusions,
    /// Ask for a count instead of a node list.
    Count,
    /// Ask for this many distinct sites.
    MinSites(u32),
}

impl Relax {
    fn apply(self, request: &mut SliceRequest) {
        match self {
            Relax::Resource(kind, level) => set_resource(&mut request.per_sliver, kind, level),
            Relax::Federations => request.constraints.federations.clear(),
            Relax::Price(cap) => request.constraints.max_price = cap,
            Relax::Exclusions => request.constraints.exclude_nodes.clear(),
            Relax::Count => {
                request.target = SliverTarget::Count(request.target.count() as u32);
            }
            Relax::MinSites(n) => request.constraints.min_sites = n,
        }
    }

    fn describe(self, request: &SliceRequest) -> String {
        match self {
            Relax::Resource(kind, level) => format!(
                "{kind} ≤ {} per sliver (asked {})",
                kind.format(level),
                kind.format(request.per_sliver.get(kind))
            ),
            Relax::Federations => "every federation allowed".to_owned(),
            Relax::Price(Some(cap)) => format!(
                "max_price raised to {cap} (asked {})",
                request.constraints.max_price.unwrap_or_default()
            ),
            Relax::Price(None) => "no max_price".to_owned(),
            Relax::Exclusions => format!(
                "none of the {} excluded nodes excluded",
                request.constraints.exclude_nodes.len()
            ),
            Relax::Count => format!(
                "a count of {} instead of the node list",
                request.target.count()
            ),
            Relax::MinSites(n) => format!(
                "min_sites lowered to {n} (asked {})",
                request.constraints.min_sites
            ),
        }
    }
}

/// The rejected group a relaxation comes from, with its size (none for `min_sites`).
type Group = Option<(Unfit, usize)>;

/// Most re-plans one unsatisfiable plan spends confirming its hint.
const MAX_HINT_REPLANS: usize = 12;
/// Most single relaxations tried before trying them together.
const MAX_SINGLE_RELAXATIONS: usize = 6;

/// Why a plan fell short, and the relaxations that would fix it, each confirmed by planning
/// again with it applied.
struct Shortfall<'a> {
    request: &'a SliceRequest,
    candidates: &'a [Candidate],
    held: &'a [PlannedSliver],
    /// Rejected nodes by reason, largest group first.
    rejected: &'a [(Unfit, Vec<PublicKey>)],
    /// Slivers the plan could not place.
    missing: usize,
    /// The count is met; only `min_sites` is not.
    sites_short: bool,
    /// Distinct sites with a node that fits (held ones included).
    feasible_sites: usize,
}

impl Shortfall<'_> {
    /// Re-plans with `relax` applied; `None` once the re-plan budget is spent.
    fn replan(&self, relax: &[Relax], replans: &mut usize) -> Option<SlicePlan> {
        if *replans >= MAX_HINT_REPLANS {
            return None;
        }
        *replans += 1;
        let mut request = self.request.clone();
        for r in relax {
            r.apply(&mut request);
        }
        Some(plan_inner(&request, self.candidates, self.held, false))
    }

    /// Re-plans with `relax` applied; the plan if it is satisfiable.
    fn try_relaxed(&self, relax: &[Relax], replans: &mut usize) -> Option<SlicePlan> {
        self.replan(relax, replans).filter(|p| p.satisfiable)
    }

    /// The relaxation one rejected group suggests.
    fn relaxation(&self, reason: Unfit, nodes: &[PublicKey]) -> Relax {
        match reason {
            Unfit::Resource(kind) => {
                // The level at which `missing` nodes of the group would pass this check.
                let node_set: HashSet<&PublicKey> = nodes.iter().collect();
                let mut best_free: HashMap<PublicKey, u64> = HashMap::new();
                for c in self
                    .candidates
                    .iter()
                    .filter(|c| node_set.contains(&c.node))
                {
                    let slot = best_free.entry(c.node).or_default();
                    *slot = (*slot).max(c.free.get(kind));
                }
                let mut frees: Vec<u64> = best_free.into_values().collect();
                frees.sort_unstable_by(|a, b| b.cmp(a));
                let at = self.missing.clamp(1, frees.len().max(1)) - 1;
                Relax::Resource(kind, frees.get(at).copied().unwrap_or(0))
            }
            Unfit::Federation => Relax::Federations,
            Unfit::Price => Relax::Price(None),
            Unfit::Excluded => Relax::Exclusions,
            Unfit::NotListed => Relax::Count,
        }
    }

    /// A price relaxation made concrete: the highest price the relaxed plan pays, if a cap
    /// at that price still plans.
    fn concrete(&self, set: &mut [Relax], plan: &SlicePlan, replans: &mut usize) {
        let Some(at) = set.iter().position(|r| *r == Relax::Price(None)) else {
            return;
        };
        let Some(top) = plan.chosen.iter().map(|s| s.price).max() else {
            return;
        };
        let mut capped = set.to_vec();
        capped[at] = Relax::Price(Some(top));
        if self.try_relaxed(&capped, replans).is_some() {
            set[at] = Relax::Price(Some(top));
        }
    }

    /// Every constraint the request sets, loosened: each resource down to the level at which
    /// `missing` of the nodes left out would have enough, the price cap dropped, every
    /// federation allowed, no exclusions, a count instead of a node list.
    fn every_relaxation(&self) -> Vec<Relax> {
        let out_nodes: HashSet<&PublicKey> =
            self.rejected.iter().flat_map(|(_, nodes)| nodes).collect();
        let mut out = Vec::new();
        for kind in ResourceKind::ALL {
            let asked = self.request.per_sliver.get(kind);
            let mut best_free: HashMap<PublicKey, u64> = HashMap::new();
            for c in self
                .candidates
                .iter()
                .filter(|c| out_nodes.contains(&c.node))
            {
                let slot = best_free.entry(c.node).or_default();
                *slot = (*slot).max(c.free.get(kind));
            }
            let mut frees: Vec<u64> = best_free.into_values().collect();
            frees.sort_unstable_by(|a, b| b.cmp(a));
            let at = self.missing.clamp(1, frees.len().max(1)) - 1;
            if let Some(level) = frees.get(at).copied().filter(|l| *l < asked) {
                out.push(Relax::Resource(kind, level));
            }
        }
        let constraints = &self.request.constraints;
        if constraints.max_price.is_some() {
            out.push(Relax::Price(None));
        }
        if !constraints.federations.is_empty() {
            out.push(Relax::Federations);
        }
        if !constraints.exclude_nodes.is_empty() {
            out.push(Relax::Exclusions);
        }
        if matches!(self.request.target, SliverTarget::Nodes(_)) {
            out.push(Relax::Count);
        }
        out
    }

    fn describe(&self, set: &[Relax]) -> String {
        set.iter()
            .map(|r| r.describe(self.request))
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// The hint: "; binding constraint: … would be satisfiable with …", or which constraints
    /// must be relaxed together, or that no relaxation helps. At most [`MAX_HINT_REPLANS`]
    /// re-plans.
    fn explain(&self) -> String {
        let mut singles: Vec<(Relax, Group)> = Vec::new();
        if self.sites_short {
            singles.push((Relax::MinSites(self.feasible_sites as u32), None));
        }
        for (reason, nodes) in self.rejected {
            let relax = self.relaxation(*reason, nodes);
            if !singles.iter().any(|(r, _)| *r == relax) {
                singles.push((relax, Some((*reason, nodes.len()))));
            }
        }
        if singles.is_empty() {
            return format!(
                "; no node that is offered is left out, so more nodes must be offered ({} \
                 offered)",
                self.candidates
                    .iter()
                    .map(|c| c.node)
                    .collect::<HashSet<_>>()
                    .len()
            );
        }
        let mut replans = 0;
        // One relaxation at a time, largest group first; the rest of the budget is for the
        // combination.
        let mut confirmed: Vec<(Vec<Relax>, Group)> = Vec::new();
        for (relax, group) in singles.iter().take(MAX_SINGLE_RELAXATIONS) {
            if let Some(plan) = self.try_relaxed(&[*relax], &mut replans) {
                let mut set = vec![*relax];
                self.concrete(&mut set, &plan, &mut replans);
                confirmed.push((set, *group));
            }
        }
        if let Some((_, group)) = confirmed.first() {
            let mut text = String::new();
            if let Some((reason, count)) = group {
                text.push_str(&format!(
                    "; binding constraint: {} ({count} nodes)",
                    reason.label()
                ));
            }
            let ways: Vec<String> = confirmed.iter().map(|(s, _)| self.describe(s)).collect();
            text.push_str(&format!(
                "; would be satisfiable with {}",
                ways.join(", or with ")
            ));
            return text;
        }
        // No single relaxation is enough: all of them together, then drop what is not needed.
        let counts: Vec<String> = self
            .rejected
            .iter()
            .map(|(reason, nodes)| format!("{} {}", nodes.len(), reason.label()))
            .collect();
        let mut set: Vec<Relax> = singles.iter().map(|(r, _)| *r).collect();
        // A node counts only under its first failed check, so constraints it also fails hide
        // behind that one: relax every constraint the request sets.
        for relax in self.every_relaxation() {
            match (relax, set.iter_mut().find(|r| same_kind(**r, relax))) {
                (Relax::Resource(_, level), Some(Relax::Resource(_, have))) => {
                    *have = (*have).min(level);
                }
                (_, Some(_)) => {}
                (_, None) => set.push(relax),
            }
        }
        let mut plan = match self.replan(&set, &mut replans) {
            Some(plan) if plan.satisfiable => plan,
            Some(plan) => {
                return format!(
                    "; not satisfiable even with {} ({} of {} slivers could then be placed): \
                     more nodes must be offered",
                    self.describe(&set),
                    plan.chosen.len() + self.held.len(),
                    self.request.target.count()
                );
            }
            None => {
                return format!(
                    "; no single change tried makes it satisfiable (nodes not fitting, by first \
                     failed check: {}); relax several of: {}",
                    counts.join(", "),
                    self.describe(&set)
                );
            }
        };
        let mut i = 0;
        while i < set.len() && set.len() > 1 && replans < MAX_HINT_REPLANS {
            let mut fewer = set.clone();
            fewer.remove(i);
            match self.try_relaxed(&fewer, &mut replans) {
                Some(p) => {
                    set = fewer;
                    plan = p;
                }
                None => i += 1,
            }
        }
        self.concrete(&mut set, &plan, &mut replans);
        format!(
            "; no single constraint is binding (nodes not fitting, by first failed check: {}); \
             would be satisfiable only with these together: {}",
            counts.join(", "),
            self.describe(&set)
        )
    }
}

/// Whether two relaxations loosen the same constraint.
fn same_kind(a: Relax, b: Relax) -> bool {
    match (a, b) {
        (Relax::Resource(x, _), Relax::Resource(y, _)) => x == y,
        _ => std::mem::discriminant(&a) == std::mem::discriminant(&b),
    }
}

fn set_resource(resources: &mut Resources, kind: ResourceKind, amount: u64) {
    match kind {
        ResourceKind::Cpu => resources.cpu_millis = amount,
        ResourceKind::Memory => resources.memory_bytes = amount,
        ResourceKind::Disk => resources.disk_bytes = amount,
        ResourceKind::Egress => resources.egress_kbps = amount,
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::AcquireMode;
    use capability_schema::identity::{SecretKey, test_key};
    use std::collections::BTreeSet;

    use capability_schema::slice::{SliceConstraints, SliceKind};

    use super::*;

    fn res(cpu: u64, mem_mib: u64) -> Resources {
        Resources {
            cpu_millis: cpu,
            memory_bytes: mem_mib << 20,
            disk_bytes: 0,
            egress_kbps: 0,
            ports: 0,
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
            net: Default::default(),
        }
    }

    #[test]
    fn federation_constraints_go_by_name_or_by_key() {
        assert!(federation_allows("fed0", "fed0"));
        assert!(federation_allows("fed0", "fed0@98ec152a"));
        assert!(!federation_allows("fed1", "fed0"));
        assert!(federation_allows("fed0@98ec", "fed0@98ec152a"));
        assert!(federation_allows("fed0@98EC152A", "fed0@98ec152a"));
        assert!(federation_allows(
            "fed0@ed25519/98ec152aabd27d1d476f42e7ae92a3751072f6641b78e996fdf852de19078e1c",
            "fed0@98ec152a"
        ));
        assert!(!federation_allows("fed0@c8c3", "fed0@98ec152a"));
        assert!(!federation_allows("fed0@", "fed0@98ec152a"));
        assert!(!federation_allows("fed1@98ec", "fed0@98ec152a"));
        // Two fed0s: a keyed constraint keeps one, a bare name both.
        let mut req = request(1, res(500, 256));
        req.constraints.federations = vec!["fed0@c8c3".into()];
        let cands = vec![
            cand(1, "fed0@98ec152a", "s1", res(4000, 4096), 1),
            cand(2, "fed0@c8c34a8e", "s2", res(4000, 4096), 1),
        ];
        let p = plan(&req, &cands);
        assert!(p.satisfiable, "{}", p.explanation);
        assert_eq!(p.chosen[0].federation, "fed0@c8c34a8e");
        assert_eq!(p.rejected[0].reason, "federation not allowed");
        req.constraints.federations = vec!["fed0".into()];
        req.target = SliverTarget::Count(2);
        assert!(plan(&req, &cands).satisfiable);
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
        assert!(
            p.explanation
                .contains("would be satisfiable with min_sites lowered to 1 (asked 2)"),
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
        req.constraints.exclude_nodes = vec![test_key(4).public()];
        let p = plan(&req, &cands);
        assert!(!p.satisfiable);
        assert_eq!(p.chosen.len(), 2);
        assert!(p.chosen.iter().all(|s| s.node != test_key(4).public()));
        assert!(
            p.explanation
                .contains("1 of the nodes asked for are offered by no agent"),
            "{}",
            p.explanation
        );
        let groups: Vec<(&str, u32)> = p
            .rejected
            .iter()
            .map(|g| (g.reason.as_str(), g.count))
            .collect();
        assert_eq!(
            groups,
            vec![
                ("excluded by the request", 1),
                ("not among the nodes asked for", 1)
            ]
        );
    }

    #[test]
    fn impossible_shapes_are_malformed_not_unsatisfiable() {
        let cands: Vec<Candidate> = (1..=6)
            .map(|i| cand(i, "a", &format!("s{i}"), res(4000, 4096), 1))
            .collect();
        let mut req = request(3, res(100, 1));
        req.constraints.min_sites = 5;
        assert_eq!(
            check_shape(&req),
            Err(ShapeError::MinSitesAboveCount {
                min_sites: 5,
                count: 3
            })
        );
        let p = plan(&req, &cands);
        assert!(!p.satisfiable);
        assert!(p.chosen.is_empty());
        assert!(
            p.explanation.starts_with("malformed request: min_sites 5"),
            "{}",
            p.explanation
        );
        assert!(
            p.explanation.contains("lower min_sites to at most 3"),
            "{}",
            p.explanation
        );
        assert!(!p.explanation.contains("lower min_sites to 5"));
        // min_sites equal to the count is fine.
        req.constraints.min_sites = 3;
        assert_eq!(check_shape(&req), Ok(()));
        assert!(plan(&req, &cands).satisfiable);

        assert_eq!(
            check_shape(&request(0, res(100, 1))),
            Err(ShapeError::NoSlivers)
        );
        assert!(
            plan(&request(0, res(100, 1)), &cands)
                .explanation
                .contains("asks for no slivers")
        );
        let mut twice = request(0, res(100, 1));
        twice.target = SliverTarget::Nodes(vec![test_key(1).public(), test_key(1).public()]);
        assert!(matches!(
            check_shape(&twice),
            Err(ShapeError::DuplicateNode { times: 2, .. })
        ));
        let mut both = request(0, res(100, 1));
        both.target = SliverTarget::Nodes(vec![test_key(1).public(), test_key(2).public()]);
        both.constraints.exclude_nodes = vec![test_key(2).public()];
        let err = check_shape(&both).unwrap_err();
        assert!(matches!(err, ShapeError::ListedAndExcluded { .. }));
        assert!(err.to_string().contains("drop it from one"), "{err}");
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

    #[test]
    fn every_node_not_picked_is_in_exactly_one_group() {
        // 2,000 offers, 100 picked: the nodes that fit but were not needed are counted in
        // full, not capped at the alternatives kept.
        let cands: Vec<Candidate> = (0..2_000u32)
            .map(|i| {
                let mut seed = [7u8; 32];
                seed[..4].copy_from_slice(&i.to_le_bytes());
                let mut c = cand(0, "a", &format!("s{}", i % 100), res(4000, 4096), 1);
                c.node = SecretKey::from_bytes(&seed).public();
                if i % 4 == 0 {
                    c.free = res(4000, 64);
                }
                c
            })
            .collect();
        let p = plan(&request(100, res(500, 256)), &cands);
        assert!(p.satisfiable, "{}", p.explanation);
        let total: u32 = p.rejected.iter().map(|g| g.count).sum();
        assert_eq!(total as usize, 2_000 - 100);
        let fit = p
            .rejected
            .iter()
            .find(|g| g.reason == FIT_NOT_NEEDED)
            .expect("a fit, not needed group");
        assert_eq!(fit.count, 1_500 - 100);
        assert_eq!(fit.examples.len(), EXAMPLES_PER_GROUP);
        assert_eq!(p.alternatives.len(), MAX_ALTERNATIVES);
        assert!(
            p.explanation
                .contains("1400 more nodes fit as alternatives"),
            "{}",
            p.explanation
        );
    }

    /// A small deterministic generator, so the case table is large but reproducible.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, below: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % below.max(1)
        }
    }

    #[test]
    fn group_counts_add_up_to_the_nodes_not_picked_in_every_case() {
        let feds = ["a", "b", "c"];
        let (mut ran, mut satisfiable) = (0, 0);
        for seed in 0..300u64 {
            let mut rng = Lcg(seed);
            let nodes = 1 + rng.next(40) as u8;
            let mut cands = Vec::new();
            for n in 0..nodes {
                // One or two offers per node, from different agents and prices.
                for agent in 0..1 + rng.next(2) as u8 {
                    let mut c = cand(
                        n,
                        feds[rng.next(3) as usize],
                        &format!("s{}", rng.next(6)),
                        res(rng.next(3000), rng.next(2048)),
                        rng.next(50),
                    );
                    c.agent = test_key(200 + agent).public();
                    c.load_milli = rng.next(3000);
                    cands.push(c);
                }
            }
            let count = 1 + rng.next(u64::from(nodes) + 3) as u32;
            let mut req = request(count, res(rng.next(1500), rng.next(1024)));
            req.constraints.min_sites = rng.next(u64::from(count.min(4)) + 1) as u32;
            if rng.next(2) == 0 {
                req.constraints.federations = vec![feds[rng.next(3) as usize].into()];
            }
            if rng.next(2) == 0 {
                req.constraints.max_price = Some(rng.next(40));
            }
            let excluded: Vec<PublicKey> = (0..rng.next(4))
                .map(|_| test_key(rng.next(u64::from(nodes)) as u8).public())
                .collect();
            if rng.next(4) == 0 {
                let listed: BTreeSet<u8> = (0..count)
                    .map(|_| rng.next(u64::from(nodes) + 2) as u8)
                    .collect();
                req.target = SliverTarget::Nodes(
                    listed
                        .into_iter()
                        .map(|n| test_key(n).public())
                        .filter(|k| !excluded.contains(k))
                        .collect(),
                );
                req.constraints.min_sites =
                    req.constraints.min_sites.min(req.target.count() as u32);
            }
            req.constraints.exclude_nodes = excluded;
            if check_shape(&req).is_err() {
                continue;
            }
            let p = plan(&req, &cands);
            ran += 1;
            satisfiable += usize::from(p.satisfiable);
            let offered: HashSet<PublicKey> = cands.iter().map(|c| c.node).collect();
            let picked: HashSet<PublicKey> = p.chosen.iter().map(|s| s.node).collect();
            assert_eq!(
                picked.len(),
                p.chosen.len(),
                "seed {seed}: a node picked twice"
            );
            let total: u32 = p.rejected.iter().map(|g| g.count).sum();
            assert_eq!(
                total as usize,
                offered.len() - picked.len(),
                "seed {seed}: {:?}",
                p.rejected
            );
            assert!(p.chosen.len() <= req.target.count(), "seed {seed}");
            if p.satisfiable {
                let sites: HashSet<&str> = p.chosen.iter().map(|s| s.site.as_str()).collect();
                assert_eq!(p.chosen.len(), req.target.count(), "seed {seed}");
                assert!(
                    sites.len() >= req.constraints.min_sites as usize,
                    "seed {seed}"
                );
            } else {
                assert!(!p.explanation.is_empty(), "seed {seed}");
            }
        }
        // The table covers both outcomes, not only malformed shapes.
        assert!(ran >= 250, "only {ran} cases planned");
        assert!(
            satisfiable > 20 && satisfiable < ran - 20,
            "{satisfiable} of {ran}"
        );
    }

    #[test]
    fn among_equal_fits_the_cheaper_node_wins_at_the_same_spread() {
        // Two sites, two equally free nodes each, different prices.
        let cands = vec![
            cand(1, "a", "s1", res(4000, 4096), 50),
            cand(2, "a", "s1", res(4000, 4096), 5),
            cand(3, "a", "s2", res(4000, 4096), 7),
            cand(4, "a", "s2", res(4000, 4096), 70),
        ];
        let p = plan(&request(2, res(1000, 256)), &cands);
        assert!(p.satisfiable, "{}", p.explanation);
        let mut picked: Vec<PublicKey> = p.chosen.iter().map(|s| s.node).collect();
        picked.sort();
        let mut cheap = vec![test_key(2).public(), test_key(3).public()];
        cheap.sort();
        assert_eq!(picked, cheap, "{:?}", p.chosen);
        // One sliver: the cheapest of all.
        let p = plan(&request(1, res(1000, 256)), &cands);
        assert_eq!(p.chosen[0].node, test_key(2).public());
        // Cheaper does not beat spread: three slivers take both sites.
        let p = plan(&request(3, res(1000, 256)), &cands);
        let sites: HashSet<&str> = p.chosen.iter().map(|s| s.site.as_str()).collect();
        assert_eq!(sites.len(), 2);
        assert!(p.chosen.iter().all(|s| s.node != test_key(4).public()));
    }

    #[test]
    fn the_hint_names_the_constraint_whose_relaxation_works_not_the_largest_group() {
        // One node fits. Ten fail memory first, and their price is above the cap too; three
        // fail only the federation. Relaxing memory alone would not help.
        let mut cands = vec![cand(1, "a", "ok", res(4000, 4096), 1)];
        cands.extend((10..20).map(|i| cand(i, "a", &format!("m{i}"), res(4000, 128), 100)));
        cands.extend((30..33).map(|i| cand(i, "z", &format!("z{i}"), res(4000, 4096), 1)));
        let mut req = request(4, res(500, 512));
        req.constraints.federations = vec!["a".into()];
        req.constraints.max_price = Some(10);
        let p = plan(&req, &cands);
        assert!(!p.satisfiable);
        assert_eq!(
            (p.rejected[0].reason.as_str(), p.rejected[0].count),
            ("memory", 10)
        );
        assert!(
            p.explanation
                .contains("binding constraint: federation not allowed (3 nodes)"),
            "{}",
            p.explanation
        );
        assert!(
            p.explanation
                .contains("would be satisfiable with every federation allowed"),
            "{}",
            p.explanation
        );
        assert!(!p.explanation.contains("memory ≤"), "{}", p.explanation);
        // The hint holds: applying it plans.
        req.constraints.federations.clear();
        assert!(plan(&req, &cands).satisfiable);
    }

    #[test]
    fn constraints_that_only_help_together_are_named_together() {
        let mut cands = vec![cand(1, "a", "ok", res(4000, 4096), 1)];
        cands.extend((10..20).map(|i| cand(i, "a", &format!("m{i}"), res(4000, 128), 100)));
        let mut req = request(4, res(500, 512));
        req.constraints.max_price = Some(10);
        let p = plan(&req, &cands);
        assert!(!p.satisfiable);
        assert!(
            p.explanation.contains("no single constraint is binding"),
            "{}",
            p.explanation
        );
        assert!(
            p.explanation.contains(
                "only with these together: memory ≤ 128MiB per sliver (asked 512MiB) and \
                 max_price raised to 50 (asked 10)"
            ),
            "{}",
            p.explanation
        );
        // Confirm the claim, and that neither half alone is enough.
        let mut both = req.clone();
        both.per_sliver.memory_bytes = 128 << 20;
        both.constraints.max_price = Some(50);
        assert!(plan(&both, &cands).satisfiable);
        let mut memory_only = req.clone();
        memory_only.per_sliver.memory_bytes = 128 << 20;
        assert!(!plan(&memory_only, &cands).satisfiable);
    }

    #[test]
    fn no_hint_is_made_up_when_nothing_would_help() {
        let cands = vec![
            cand(1, "a", "s1", res(4000, 4096), 1),
            cand(2, "a", "s2", res(4000, 64), 1),
        ];
        let p = plan(&request(5, res(500, 512)), &cands);
        assert!(!p.satisfiable);
        assert!(
            !p.explanation.contains("would be satisfiable"),
            "{}",
            p.explanation
        );
        assert!(
            p.explanation
                .contains("not satisfiable even with memory ≤ 64MiB"),
            "{}",
            p.explanation
        );
        assert!(
            p.explanation
                .contains("2 of 5 slivers could then be placed"),
            "{}",
            p.explanation
        );
    }
}
