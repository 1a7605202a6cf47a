//! The agent's request handling: `GetAds`, `GetTickets` and `Released`, independent of the
//! network.
//!
//! `GetTickets` flows as follows:
//! 1. who is the principal? Its membership certificate is checked by the trust store: a member
//!    of this agent's federation, or of another under a peering agreement in force;
//! 2. the principal's signed ask (see [`crate::asks`]): signed by the principal, carried by
//!    the broker it names (the caller), presented in its window, and the request within it
//!    (slice, kind, each sliver's resources, network grant, ticket window, price cap), its
//!    slivers with those already minted under it no more than it allows; a request without
//!    one (an old slicectl or broker) is refused by the rule `signed-ask`, saying to upgrade;
//! 3. the policy judges the whole ask (prefix, admin, duration, quota, peering limits; the
//!    peering total counts the outstanding tickets of every principal of the principal's
//!    federation, which the ledger records with each ticket);
//! 4. each sliver is checked against the node's entry in the inventory: the free part of this
//!    agent's share (share × oversubscription − outstanding tickets, bounded by what the node
//!    reports free) and the price cap; slivers that fail are refused one by one with a reason;
//! 5. a ticket is minted per remaining sliver (bound to the principal, ending no later than
//!    the node's delegation, stating the agreed price), across up to [`Agent::mint_threads`]
//!    threads, and all are written to the ledger in one durable transaction (with the peer
//!    that asked) before the reply leaves, then counted under the ask. Requests are
//!    serialized from judging to the ledger write, so two concurrent requests cannot both
//!    take the last of a share, nor of an ask.
//!
//! `Released` frees tickets early. Only the principal a ticket is bound to, the peer that
//! obtained it (the principal itself or a broker acting for it) or the node it names may
//! release it; anyone else is refused under the policy rule `release` and nothing in the
//! request is released.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use capability_schema::ad::PriceList;
use capability_schema::protocol::{
    AdQuery, AgentRequest, AgentResponse, IssuedTicket, NodeOffer, RefusedSliver, Reply,
    TicketBytes, TicketRequest,
};
use capability_schema::resources::ResourceKind;
use capability_schema::ticket::{Minter, Operation, TicketError, TicketSpec, Window};
use capability_schema::{ErrorReply, PublicKey, Rejection, Resources, SecretKey};
use federation::{TrustError, TrustStore};
use serde::{Deserialize, Serialize};

use crate::asks::AskBook;
use crate::inventory::Inventory;
use crate::ledger::{TicketLedger, TicketRecord};
use crate::policy::{Ask, Policy, PrincipalFacts};

/// How an agent prices its shares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    /// Prices when the share is idle.
    pub base: PriceList,
    /// Extra percent at a fully committed share, linear in the committed fraction of CPU and
    /// memory (0: static prices).
    #[serde(default)]
    pub surge_percent: u64,
}

impl Pricing {
    /// The price list for a share with `committed` of `share` outstanding.
    pub fn prices(&self, share: &Resources, committed: &Resources) -> PriceList {
        if self.surge_percent == 0 {
            return self.base;
        }
        let fraction_permille = [ResourceKind::Cpu, ResourceKind::Memory]
            .into_iter()
            .filter(|k| share.get(*k) > 0)
            .map(|k| {
                (u128::from(committed.get(k)) * 1000 / u128::from(share.get(k))).min(1000) as u64
            })
            .max()
            .unwrap_or(0);
        let factor = 1000 + self.surge_percent * fraction_permille / 100;
        let scale =
            |p: u64| (u128::from(p) * u128::from(factor) / 1000).min(u128::from(u64::MAX)) as u64;
        PriceList {
            cpu_core_hour: scale(self.base.cpu_core_hour),
            memory_gib_hour: scale(self.base.memory_gib_hour),
            disk_gib_hour: scale(self.base.disk_gib_hour),
            egress_mbit_hour: scale(self.base.egress_mbit_hour),
        }
    }
}

/// Errors the agent core can hit beyond refusals.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
}

/// The agent: its key, federation, trust, policy, inventory and ledger.
#[derive(Debug)]
pub struct Agent {
    key: SecretKey,
    federation: String,
    /// Its federation's authority key, when known (a daemon knows it from its certificate):
    /// the federation is that key, whatever other federations share its name.
    authority: Option<PublicKey>,
    policy: Policy,
    pricing: Pricing,
    oversubscription_permille: u64,
    inventory: Mutex<Inventory>,
    ledger: TicketLedger,
    mint_lock: Mutex<()>,
    minter: Minter,
    mint_threads: usize,
    asks: Mutex<AskBook>,
}

/// The parts an [`Agent`] is made of.
#[derive(Debug)]
pub struct AgentParts {
    /// The agent's key (tickets' root key).
    pub key: SecretKey,
    /// The federation it serves.
    pub federation: String,
    /// Its policy.
    pub policy: Policy,
    /// Its prices.
    pub pricing: Pricing,
    /// Oversubscription in per-mille (1000 = never promise more than the share).
    pub oversubscription_permille: u64,
    /// Its ledger.
    pub ledger: TicketLedger,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Agent {
    /// An agent from its parts, with an empty inventory.
    pub fn new(parts: AgentParts) -> Agent {
        let me = parts.key.public();
        let minter = Minter::new(&parts.key);
        Agent {
            key: parts.key,
            federation: parts.federation,
            authority: None,
            policy: parts.policy,
            pricing: parts.pricing,
            oversubscription_permille: parts.oversubscription_permille.max(1),
            inventory: Mutex::new(Inventory::new(me)),
            ledger: parts.ledger,
            mint_lock: Mutex::new(()),
            minter,
            mint_threads: std::thread::available_parallelism().map_or(1, usize::from),
            asks: Mutex::new(AskBook::new(crate::asks::DEFAULT_CAPACITY, None)),
        }
    }

    /// The same agent serving the federation of `authority` (as its membership certificate
    /// names it), so that principals are judged against that key's agreements even when
    /// another trusted federation carries the same name.
    pub fn with_authority(mut self, authority: PublicKey) -> Agent {
        self.authority = Some(authority);
        self
    }

    /// The same agent refusing signed asks valid from before `started` (unix seconds): a
    /// daemon sets its start, since what it minted under earlier asks is forgotten.
    pub fn with_asks_since(mut self, started: u64) -> Agent {
        self.asks = Mutex::new(AskBook::new(crate::asks::DEFAULT_CAPACITY, Some(started)));
        self
    }

    /// The same agent minting on at most `threads` threads per request (at least 1; the
    /// default is the machine's available parallelism).
    pub fn with_mint_threads(mut self, threads: usize) -> Agent {
        self.mint_threads = threads.max(1);
        self
    }

    /// The most threads one request mints on.
    pub fn mint_threads(&self) -> usize {
        self.mint_threads
    }

    /// The agent's public key.
    pub fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// The federation it serves.
    pub fn federation(&self) -> &str {
        &self.federation
    }

    /// The inventory (for status pages and the ad feed).
    pub fn with_inventory<R>(&self, f: impl FnOnce(&mut Inventory) -> R) -> R {
        f(&mut lock(&self.inventory))
    }

    /// The ledger.
    pub fn ledger(&self) -> &TicketLedger {
        &self.ledger
    }

    /// Answers one request from `caller` at `now`.
    pub fn handle(
        &self,
        trust: &TrustStore,
        caller: &PublicKey,
        request: AgentRequest,
        now: u64,
    ) -> Reply<AgentResponse> {
        let result = match request {
            AgentRequest::GetAds(query) => self.get_ads(&query, now).map(AgentResponse::Ads),
            AgentRequest::GetTickets(request) => self.get_tickets(trust, caller, &request, now),
            AgentRequest::Released { ticket_ids } => self
                .ledger
                .release(caller, &ticket_ids)
                .map(|known| AgentResponse::Released { known })
                .map_err(|e| match e {
                    e @ crate::ledger::LedgerError::NotReleasable(_) => Rejection::Policy {
                        rule: "release".into(),
                        detail: e.to_string(),
                    },
                    e => Rejection::Internal {
                        detail: e.to_string(),
                    },
                }),
        };
        result.map_err(ErrorReply::from)
    }

    fn share_capacity(&self, share: &Resources) -> Resources {
        let scale = |v: u64| {
            (u128::from(v) * u128::from(self.oversubscription_permille) / 1000)
                .min(u128::from(u64::MAX)) as u64
        };
        Resources {
            cpu_millis: scale(share.cpu_millis),
            memory_bytes: scale(share.memory_bytes),
            disk_bytes: scale(share.disk_bytes),
            egress_kbps: scale(share.egress_kbps),
            ports: 0,
        }
    }

    /// The free part of this agent's share on each node, given outstanding tickets.
    fn free_on(&self, entry: &crate::inventory::NodeEntry, outstanding: &Resources) -> Resources {
        let by_ledger = self
            .share_capacity(&entry.share)
            .saturating_sub(outstanding);
        if self.oversubscription_permille > 1000 {
            by_ledger
        } else {
            by_ledger.min(&entry.node_reported_free(&self.public()))
        }
    }

    /// `GetAds`: the nodes of the inventory matching `query`, with the free part of the share.
    pub fn get_ads(&self, query: &AdQuery, now: u64) -> Result<Vec<NodeOffer>, Rejection> {
        let outstanding = self
            .ledger
            .outstanding(now)
            .map_err(|e| Rejection::Internal {
                detail: e.to_string(),
            })?;
        let mut inventory = lock(&self.inventory);
        inventory.expire(now);
        let limit = if query.limit == 0 {
            usize::MAX
        } else {
            query.limit as usize
        };
        // Heartbeating nodes silent past the agent's dead_after are not offered.
        Ok(inventory
            .live(std::time::Instant::now())
            .filter(|e| {
                query.federations.is_empty() || query.federations.contains(&e.ad.federation)
            })
            .filter(|e| query.sites.is_empty() || query.sites.contains(&e.ad.site))
            .filter_map(|e| {
                let out = outstanding
                    .by_node
                    .get(&e.ad.node)
                    .copied()
                    .unwrap_or_default();
                let free = self.free_on(e, &out);
                query.min_free.fits_within(&free).then(|| NodeOffer {
                    agent: self.public(),
                    ad: e.signed.clone(),
                    free,
                    prices: self.pricing.prices(&e.share, &out),
                })
            })
            .take(limit)
            .collect())
    }

    fn principal_facts(
        &self,
        trust: &TrustStore,
        request: &TicketRequest,
        now: u64,
    ) -> Result<PrincipalFacts, Rejection> {
        let Some(cert) = &request.principal_cert else {
            return Ok(PrincipalFacts {
                key: request.principal,
                site: None,
                federation: None,
                authority: None,
                peering: None,
            });
        };
        let served = match &self.authority {
            Some(authority) => trust.serves_under(authority, cert, now),
            None => trust.serves(&self.federation, cert, now),
        };
        let served = served.map_err(|e| match e {
            TrustError::NoPeering {
                peer_federation, ..
            } => Rejection::NoPeering {
                federation: peer_federation,
            },
            other => Rejection::Policy {
                rule: "principal".into(),
                detail: other.to_string(),
            },
        })?;
        if served.member.subject != request.principal {
            return Err(Rejection::Policy {
                rule: "principal".into(),
                detail: "the membership certificate is not the principal's".into(),
            });
        }
        if served.member.role != capability_schema::Role::Principal {
            return Err(Rejection::Policy {
                rule: "principal".into(),
                detail: format!(
                    "the certificate is for a {}, not a principal",
                    served.member.role
                ),
            });
        }
        Ok(PrincipalFacts {
            key: request.principal,
            site: Some(served.member.site.clone()),
            federation: Some(served.member.federation.clone()),
            authority: Some(served.member.authority),
            peering: served.limits().cloned(),
        })
    }

    /// `GetTickets`: judge, mint, persist, answer.
    pub fn get_tickets(
        &self,
        trust: &TrustStore,
        caller: &PublicKey,
        request: &TicketRequest,
        now: u64,
    ) -> Result<AgentResponse, Rejection> {
        let start = request.not_before.max(now);
        if request.not_after <= start {
            return Err(Rejection::Malformed {
                detail: format!(
                    "the window ends at {} and starts at {start}: nothing to grant",
                    request.not_after
                ),
            });
        }
        let facts = self.principal_facts(trust, request, now)?;
        let internal = |e: crate::ledger::LedgerError| Rejection::Internal {
            detail: e.to_string(),
        };

        let _minting = lock(&self.mint_lock);
        let signed_ask = lock(&self.asks).admit(request, caller, now)?;
        let outstanding = self.ledger.outstanding(now).map_err(internal)?;
        let usage = outstanding
            .by_principal
            .get(&request.principal)
            .copied()
            .unwrap_or_default();
        let total = Resources::checked_sum(request.slivers.iter().map(|s| &s.resources))
            .ok_or_else(|| Rejection::Malformed {
                detail: "resources overflow".into(),
            })?;
        let ask = Ask {
            slice: &request.slice,
            admin: request.kind.is_admin(),
            slivers: u32::try_from(request.slivers.len()).unwrap_or(u32::MAX),
            total,
            duration_secs: request.not_after - start,
            net_raw: request.net.raw,
        };
        // By key: two peer federations may share a name.
        let federation_total = facts
            .authority
            .as_ref()
            .and_then(|a| outstanding.by_authority.get(a))
            .copied()
            .unwrap_or_default();
        self.policy.check(&facts, usage, federation_total, &ask)?;

        let mut inventory = lock(&self.inventory);
        inventory.expire(now);
        let mut taken: BTreeMap<PublicKey, Resources> = BTreeMap::new();
        let mut planned = Vec::new();
        let mut refused = Vec::new();
        for sliver in &request.slivers {
            let refuse = |reason: Rejection| RefusedSliver {
                node: sliver.node,
                reason: reason.into(),
            };
            let Some(entry) = inventory.get(&sliver.node) else {
                refused.push(refuse(Rejection::Unsatisfiable {
                    detail: format!("node {} is not in this agent's inventory (no live ad with a delegation to it)", sliver.node.short()),
                }));
                continue;
            };
            if let Some(silent) = inventory.silent_for(&sliver.node, std::time::Instant::now()) {
                refused.push(refuse(Rejection::Unreachable {
                    party: format!("node {}", sliver.node.short()),
                    detail: format!(
                        "no heartbeat for {:.1} s; plan without it (it is offered again when its \
                         heartbeats resume)",
                        silent.as_secs_f64()
                    ),
                }));
                continue;
            }
            if let Err(reason) = entry.check_scope(&request.kind) {
                refused.push(refuse(reason));
                continue;
            }
            let out = outstanding
                .by_node
                .get(&sliver.node)
                .copied()
                .unwrap_or_default();
            let already = taken.get(&sliver.node).copied().unwrap_or_default();
            let in_use = out.checked_add(&already).unwrap_or(out);
            let free = self.free_on(entry, &in_use);
            if let Some(kind) = sliver.resources.first_excess(&free) {
                refused.push(refuse(Rejection::OverShare {
                    agent: self.public(),
                    kind,
                    in_use: in_use.get(kind),
                    share: self.share_capacity(&entry.share).get(kind),
                    asked: sliver.resources.get(kind),
                }));
                continue;
            }
            let not_after = request.not_after.min(entry.delegation_not_after);
            let price = self
                .pricing
                .prices(&entry.share, &in_use)
                .cost(&sliver.resources, not_after - start);
            if let Some(max) = request.max_price
                && price > max
            {
                refused.push(refuse(Rejection::Policy {
                    rule: "price".into(),
                    detail: format!(
                        "node {} costs {price} for the window, above the maximum {max}",
                        sliver.node.short()
                    ),
                }));
                continue;
            }
            let spec = TicketSpec {
                federation: entry.ad.federation.clone(),
                node: sliver.node,
                slice: request.slice.clone(),
                kind: request.kind.clone(),
                resources: sliver.resources,
                window: Window::new(request.not_before.min(start), not_after),
                holder: request.principal,
                operations: BTreeSet::from([Operation::Redeem, Operation::Renew]),
                net: request.net,
            };
            planned.push(Planned {
                spec,
                price,
                addresses: entry.ad.addresses.clone(),
            });
            let slot = taken.entry(sliver.node).or_default();
            *slot = slot.checked_add(&sliver.resources).unwrap_or(*slot);
        }
        drop(inventory);

        let minted = mint_all(&self.minter, &planned, self.mint_threads).map_err(|e| {
            Rejection::Internal {
                detail: format!("minting failed: {e}"),
            }
        })?;
        let mut issued = Vec::with_capacity(planned.len());
        let mut records = Vec::with_capacity(planned.len());
        for (plan, (ticket_id, bytes)) in planned.into_iter().zip(minted) {
            let Planned {
                spec,
                price,
                addresses,
            } = plan;
            records.push(TicketRecord {
                ticket_id: ticket_id.clone(),
                node: spec.node,
                principal: request.principal,
                requester: Some(*caller),
                principal_federation: facts.federation.clone(),
                principal_authority: facts.authority,
                slice: request.slice.clone(),
                resources: spec.resources,
                issued_at: now,
                not_after: spec.window.not_after,
                price,
                released: false,
            });
            issued.push(IssuedTicket {
                node: spec.node,
                federation: spec.federation,
                agent: self.public(),
                ticket_id,
                ticket: TicketBytes(bytes),
                price,
                addresses,
            });
        }
        // Durable before the answer leaves.
        self.ledger.record_all(&records).map_err(internal)?;
        lock(&self.asks).record(signed_ask, issued.len());
        Ok(AgentResponse::Tickets { issued, refused })
    }
}

/// A sliver granted, to be minted.
struct Planned {
    spec: TicketSpec,
    price: u64,
    addresses: Vec<String>,
}

/// Fewest tickets worth a thread of their own (a thread costs tens of microseconds, a ticket
/// about a hundred).
const TICKETS_PER_THREAD: usize = 4;

/// Mints every planned ticket, in order, on up to `threads` threads (the caller's included);
/// answers each ticket's id and bytes.
fn mint_all(
    minter: &Minter,
    planned: &[Planned],
    threads: usize,
) -> Result<Vec<(String, Vec<u8>)>, TicketError> {
    let mint_chunk = |chunk: &[Planned]| -> Result<Vec<(String, Vec<u8>)>, TicketError> {
        chunk
            .iter()
            .map(|p| {
                let ticket = minter.mint_priced(&p.spec, p.price)?;
                Ok((ticket.id().to_string(), ticket.to_bytes()?))
            })
            .collect()
    };
    let threads = threads
        .min(planned.len().div_ceil(TICKETS_PER_THREAD))
        .max(1);
    if threads == 1 {
        return mint_chunk(planned);
    }
    let chunk_len = planned.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut chunks = planned.chunks(chunk_len);
        let first = chunks.next().unwrap_or_default();
        let others: Vec<_> = chunks
            .map(|chunk| scope.spawn(move || mint_chunk(chunk)))
            .collect();
        let mut out = mint_chunk(first)?;
        for handle in others {
            let part = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
            out.extend(part);
        }
        Ok(out)
    })
}
