//! The agent's memory of principals' signed asks: how many slivers it minted under each, until
//! the ask expires, so a broker cannot replay an ask for more than the principal allowed.
//!
//! `GetTickets` goes through it in two steps, both under the agent's minting lock (so two
//! concurrent requests under one ask cannot both take its last sliver):
//! 1. [`AskBook::admit`]: the ask is the principal's, carried by its named broker, in its
//!    window ([`AskGrant::admit`]), and the request stays within it, counting what was already
//!    minted under its id ([`AskGrant::check_request`]);
//! 2. [`AskBook::record`]: after the ledger write, the slivers minted are added to the id.
//!
//! The book is bounded: entries leave when their ask expires, and with [`AskBook::capacity`]
//! live asks a new one is refused (`ask-replay`, saying when to retry) rather than an entry
//! forgotten early. It lives in memory: an agent restarted within an ask's window has
//! forgotten what it minted under it, so it refuses asks signed before it started
//! ([`AskBook::new`]'s `since`), which the principal's next `slicectl` run replaces.

use std::collections::HashMap;

use capability_schema::protocol::TicketRequest;
use capability_schema::{AskGrant, AskRefusal, PublicKey, Rejection};

/// How many live asks an agent remembers by default.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// What the agent minted under one ask.
#[derive(Debug, Clone, Copy)]
struct Entry {
    minted: u32,
    not_after: u64,
}

/// An ask admitted for one request: record what was minted under it with [`AskBook::record`].
#[derive(Debug, Clone)]
pub struct Admitted {
    id: String,
    not_after: u64,
}

/// The asks this agent minted under, by id.
#[derive(Debug)]
pub struct AskBook {
    entries: HashMap<String, Entry>,
    capacity: usize,
    since: Option<u64>,
}

/// An ask refusal as the agent answers it: a policy refusal naming the rule.
pub fn rejection(refusal: &AskRefusal) -> Rejection {
    Rejection::Policy {
        rule: refusal.rule().to_owned(),
        detail: refusal.to_string(),
    }
}

impl AskBook {
    /// An empty book of at most `capacity` live asks. With `since` (unix seconds the agent
    /// started), asks valid from before it are refused: what was minted under them before a
    /// restart is not known.
    pub fn new(capacity: usize, since: Option<u64>) -> AskBook {
        AskBook {
            entries: HashMap::new(),
            capacity: capacity.max(1),
            since,
        }
    }

    /// The most live asks it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many asks it holds now (expired ones included until the next admission).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks `request` from `caller` at `now` against its signed ask and what was minted
    /// under it; answers the admitted ask to [`AskBook::record`] against.
    pub fn admit(
        &mut self,
        request: &TicketRequest,
        caller: &PublicKey,
        now: u64,
    ) -> Result<Admitted, Rejection> {
        let grant = AskGrant::admit(request.ask.as_deref(), &request.principal, caller, now)
            .map_err(|e| rejection(&e))?;
        if let Some(since) = self.since
            && grant.not_before < since
            && !self.entries.contains_key(&grant.id)
        {
            return Err(Rejection::Policy {
                rule: "ask-replay".into(),
                detail: format!(
                    "ask {} was signed {} s before this agent started, and what was minted \
                     under it before is not known; run slicectl again for a new ask",
                    grant.id.get(..8).unwrap_or(&grant.id),
                    since - grant.not_before
                ),
            });
        }
        let minted = self.entries.get(&grant.id).map_or(0, |e| e.minted);
        grant
            .check_request(request, minted, now)
            .map_err(|e| rejection(&e))?;
        if !self.entries.contains_key(&grant.id) {
            self.entries.retain(|_, e| e.not_after > now);
            if self.entries.len() >= self.capacity {
                let first_free = self
                    .entries
                    .values()
                    .map(|e| e.not_after)
                    .min()
                    .unwrap_or(now);
                return Err(rejection(&AskRefusal::Busy {
                    held: self.entries.len(),
                    retry_secs: first_free.saturating_sub(now).max(1),
                }));
            }
        }
        Ok(Admitted {
            id: grant.id,
            not_after: grant.not_after,
        })
    }

    /// Adds `minted` slivers to the admitted ask.
    pub fn record(&mut self, admitted: Admitted, minted: usize) {
        let entry = self.entries.entry(admitted.id).or_insert(Entry {
            minted: 0,
            not_after: admitted.not_after,
        });
        entry.minted = entry
            .minted
            .saturating_add(u32::try_from(minted).unwrap_or(u32::MAX));
    }

    /// How many slivers were minted under ask `id` (0: none, or not held).
    pub fn minted(&self, id: &str) -> u32 {
        self.entries.get(id).map_or(0, |e| e.minted)
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;
    use capability_schema::protocol::SliverAsk;
    use capability_schema::{NetGrant, Signed, SliceKind};

    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn grant(id: &str, max: u32) -> AskGrant {
        AskGrant {
            id: id.into(),
            slice: "plc_s".into(),
            principal: test_key(1).public(),
            broker: test_key(2).public(),
            not_before: NOW,
            not_after: NOW + 300,
            kind: SliceKind::Regular,
            per_sliver: "cpu=100m".parse().unwrap(),
            max_slivers: max,
            net: NetGrant::default(),
            max_duration_secs: 600,
            max_price: None,
        }
    }

    fn request(grant: &AskGrant, slivers: u8) -> TicketRequest {
        TicketRequest {
            slice: "plc_s".into(),
            principal: test_key(1).public(),
            principal_cert: None,
            kind: SliceKind::Regular,
            slivers: (0..slivers)
                .map(|n| SliverAsk {
                    node: test_key(20 + n).public(),
                    resources: "cpu=100m".parse().unwrap(),
                })
                .collect(),
            not_before: NOW,
            not_after: NOW + 600,
            max_price: None,
            net: NetGrant::default(),
            ask: Some(Box::new(Signed::sign(&test_key(1), grant))),
        }
    }

    fn rule(r: Result<Admitted, Rejection>) -> String {
        match r {
            Err(Rejection::Policy { rule, .. }) => rule,
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn an_ask_yields_no_more_slivers_than_it_allows_across_requests() {
        let mut book = AskBook::new(16, None);
        let g = grant("a1", 3);
        let broker = test_key(2).public();
        let first = book.admit(&request(&g, 2), &broker, NOW).unwrap();
        book.record(first, 2);
        assert_eq!(book.minted("a1"), 2);
        assert_eq!(
            rule(book.admit(&request(&g, 2), &broker, NOW + 1)),
            "ask-replay"
        );
        let last = book.admit(&request(&g, 1), &broker, NOW + 1).unwrap();
        book.record(last, 1);
        assert_eq!(
            rule(book.admit(&request(&g, 1), &broker, NOW + 2)),
            "ask-replay"
        );
        // Refused slivers do not count: an ask whose request minted nothing can be used again.
        let g2 = grant("a2", 1);
        let none = book.admit(&request(&g2, 1), &broker, NOW).unwrap();
        book.record(none, 0);
        assert!(book.admit(&request(&g2, 1), &broker, NOW).is_ok());
    }

    #[test]
    fn the_book_is_bounded_and_forgets_only_expired_asks() {
        let mut book = AskBook::new(2, None);
        let broker = test_key(2).public();
        for id in ["b1", "b2"] {
            let g = grant(id, 1);
            let a = book.admit(&request(&g, 1), &broker, NOW).unwrap();
            book.record(a, 1);
        }
        let g3 = grant("b3", 1);
        let refused = book.admit(&request(&g3, 1), &broker, NOW + 10);
        let Err(Rejection::Policy { rule, detail }) = refused else {
            panic!("{refused:?}");
        };
        assert_eq!(rule, "ask-replay");
        assert!(detail.contains("ask again in 290 s"), "{detail}");
        // Once both expire, there is room; b1 is forgotten only because it cannot be used.
        let later = NOW + 300;
        let g3 = AskGrant {
            not_before: later,
            not_after: later + 300,
            ..g3
        };
        assert!(book.admit(&request(&g3, 1), &broker, later).is_ok());
        assert_eq!(book.len(), 0);
    }

    #[test]
    fn asks_signed_before_a_restart_are_refused_unless_held() {
        let mut book = AskBook::new(4, Some(NOW + 5));
        let g = grant("c1", 2);
        let refused = book.admit(&request(&g, 1), &test_key(2).public(), NOW + 6);
        let Err(Rejection::Policy { rule, detail }) = refused else {
            panic!("{refused:?}");
        };
        assert_eq!(rule, "ask-replay");
        assert!(detail.contains("5 s before this agent started"), "{detail}");
    }
}
