//! A node's cache of verified ticket chains: the contents of a ticket whose signatures were
//! checked and whose blocks were evaluated once, kept so that the same ticket presented again
//! (a retried redeem, a renew, a status call) costs a map lookup instead of curve arithmetic
//! and a Datalog run.
//!
//! The key is the ticket's exact bytes. Every block's signature is part of them, so an
//! attenuated or delegated copy of a cached ticket is a different key and is verified in
//! full. Only chains whose blocks carry facts alone are kept: a rule or a check could make
//! the contents or the verdict depend on the request (its time, operation or resources), so
//! such a ticket is evaluated again for every request (see [`VerifiedChain`]).
//!
//! What a hit does not skip: the issuer must still be trusted (a delegation withdrawn since
//! makes a cached chain useless), the block count must be within the limits in force, and
//! every per-request check (presenter, node, window, operation, resources) runs as for a
//! fresh ticket. Revocation is the caller's, as for a fresh ticket.
//!
//! The cache is bounded by entries and by bytes held, and forgets the oldest entry first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use super::Ticket;
use super::verify::TicketContents;

/// A ticket whose signatures are checked under a verifier's trusted issuers and whose blocks
/// are evaluated: what it grants, read once. Authorize a request against it with
/// [`TicketVerifier::authorize_chain`](super::TicketVerifier::authorize_chain).
#[derive(Debug, Clone)]
pub struct VerifiedChain {
    pub(crate) contents: Arc<TicketContents>,
    /// The parsed ticket when its blocks carry rules or checks, which must run against each
    /// request; `None` when the contents alone decide.
    pub(crate) logic: Option<Arc<Ticket>>,
    /// How many blocks the ticket has.
    pub(crate) blocks: usize,
}

impl VerifiedChain {
    /// What the ticket grants, after every attenuation and delegation.
    pub fn contents(&self) -> &TicketContents {
        &self.contents
    }

    /// Whether the ticket's blocks carry rules or checks evaluated per request (such chains
    /// are never cached).
    pub fn has_block_logic(&self) -> bool {
        self.logic.is_some()
    }
}

/// Whether any block of `ticket` states a rule or a check. Blocks are read from their printed
/// Datalog, in which every rule contains `<-` and every check starts with `check if`,
/// `check all` or `reject if`; a fact whose string happens to contain one of these only
/// makes the ticket uncacheable, never the reverse.
pub(crate) fn has_block_logic(ticket: &Ticket) -> bool {
    let token = ticket.as_biscuit();
    (0..token.block_count()).any(|i| match token.print_block_source(i) {
        Ok(source) => ["<-", "check if", "check all", "reject if"]
            .iter()
            .any(|marker| source.contains(marker)),
        Err(_) => true,
    })
}

/// Verified chains by ticket bytes, bounded in entries and bytes; oldest forgotten first.
#[derive(Debug)]
pub struct ChainCache {
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    chains: HashMap<Arc<[u8]>, VerifiedChain>,
    /// Keys in insertion order, for eviction.
    order: VecDeque<Arc<[u8]>>,
    /// Ticket bytes held as keys.
    bytes: usize,
}

impl ChainCache {
    /// Entries kept by default.
    pub const DEFAULT_ENTRIES: usize = 4096;
    /// Ticket bytes kept by default (keys; the contents add a few hundred bytes each).
    pub const DEFAULT_BYTES: usize = 8 << 20;

    /// A cache of at most `max_entries` chains whose ticket bytes total at most `max_bytes`.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        ChainCache {
            max_entries,
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The chain verified for exactly these bytes, if kept.
    pub fn get(&self, bytes: &[u8]) -> Option<VerifiedChain> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.chains.get(bytes).cloned()
    }

    /// Keeps `chain` for `bytes`, forgetting the oldest entries to stay within bounds. A chain
    /// with block logic, or bytes larger than the whole byte bound, is not kept.
    pub(crate) fn insert(&self, bytes: &[u8], chain: &VerifiedChain) {
        if chain.logic.is_some() || self.max_entries == 0 || bytes.len() > self.max_bytes {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.chains.contains_key(bytes) {
            return;
        }
        while inner.chains.len() >= self.max_entries || inner.bytes + bytes.len() > self.max_bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.bytes -= oldest.len();
            inner.chains.remove(&oldest);
        }
        let key: Arc<[u8]> = Arc::from(bytes);
        inner.bytes += key.len();
        inner.order.push_back(Arc::clone(&key));
        inner.chains.insert(key, chain.clone());
    }

    /// How many chains are kept.
    pub fn len(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.chains.len()
    }

    /// Whether no chain is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every chain (for instance when the trusted issuers change).
    pub fn clear(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        *inner = Inner::default();
    }
}

impl Default for ChainCache {
    fn default() -> Self {
        ChainCache::new(Self::DEFAULT_ENTRIES, Self::DEFAULT_BYTES)
    }
}
