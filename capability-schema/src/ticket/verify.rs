//! Reading and verifying tickets: parse under a size cap, pick the issuer's key, evaluate the
//! blocks under Datalog limits, walk the holder chain, then check a node's request.
//!
//! The order of checks, each failing with its own [`TicketRefusal`]:
//! 1. size cap, then biscuit parse and every signature (root key chosen among
//!    [`TrustedIssuers`] by the ticket's root key id), then the block cap;
//! 2. the authority's `ticket` fact, read in the authority's scope only (exactly one);
//! 3. no later block states another `ticket`, and no `attenuation` exceeds what the authority
//!    grants (widening); the effective grant is the minimum over all attenuations;
//! 4. the holder chain: every third-party block is signed by the holder of that moment and
//!    names the next one; no other block names a holder;
//! 5. (node) presenter is the final holder, node, window, operation, resources, lease window;
//! 6. (node) the checks any block added, with the request stated as authorizer facts.
//!
//! All Datalog work (steps 2 to 6) happens in one biscuit authorizer. The blocks' own rules
//! (step 2's evaluation) and checks (step 6) run under [`TicketLimits`] (facts, iterations,
//! time); steps 2 to 4 are fixed single-predicate queries, linear in the size-capped facts.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use biscuit_auth::builder::{Fact, Policy, Rule};
use biscuit_auth::datalog::RunLimits;
use biscuit_auth::error::{FailedCheck, Format, Logic, RunLimit, Token};
use biscuit_auth::{Authorizer, AuthorizerBuilder, UnverifiedBiscuit};
use serde::{Deserialize, Serialize};

use super::chains::{self, ChainCache, VerifiedChain};
use super::refusal::{LimitKind, TicketField, TicketRefusal};
use super::vocabulary::{self, QUERIES};
use super::{MAX_TICKET_BLOCKS, MAX_TICKET_BYTES, Operation, Ticket, TicketId, Window};
use crate::identity::PublicKey;
use crate::resources::Resources;
use crate::slice::{NetGrant, SliceKind};

/// The root key id a ticket carries for its issuer: the first four bytes of the issuer's key
/// (the same eight hex digits as [`PublicKey::short`]).
pub fn key_hint(key: &PublicKey) -> u32 {
    let b = key.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The agents whose tickets a node accepts (the agents it delegated resources to).
///
/// Keys are grouped by [`key_hint`] (the root key id tickets carry) and kept with their
/// decoded biscuit form, so choosing the root key costs a hash lookup and no curve arithmetic.
#[derive(Debug, Clone, Default)]
pub struct TrustedIssuers {
    by_hint: HashMap<u32, Vec<(PublicKey, biscuit_auth::PublicKey)>>,
}

impl TrustedIssuers {
    /// No trusted issuer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `key`; returns whether it was added (false when trusted already, or when the
    /// bytes are not a valid ed25519 key, which could never verify a ticket).
    pub fn insert(&mut self, key: PublicKey) -> bool {
        let Ok(decoded) = key.to_biscuit() else {
            return false;
        };
        let keys = self.by_hint.entry(key_hint(&key)).or_default();
        if keys.iter().any(|(k, _)| *k == key) {
            return false;
        }
        keys.push((key, decoded));
        true
    }

    /// Stops trusting `key`; returns whether it was trusted.
    pub fn remove(&mut self, key: &PublicKey) -> bool {
        let hint = key_hint(key);
        let Some(keys) = self.by_hint.get_mut(&hint) else {
            return false;
        };
        let before = keys.len();
        keys.retain(|(k, _)| k != key);
        let removed = keys.len() != before;
        if keys.is_empty() {
            self.by_hint.remove(&hint);
        }
        removed
    }

    /// Whether `key` is trusted.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.by_hint
            .get(&key_hint(key))
            .is_some_and(|keys| keys.iter().any(|(k, _)| k == key))
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.by_hint.values().map(Vec::len).sum()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.by_hint.is_empty()
    }

    /// The trusted keys, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.by_hint.values().flatten().map(|(k, _)| k)
    }

    fn candidates(&self, hint: Option<u32>) -> &[(PublicKey, biscuit_auth::PublicKey)] {
        hint.and_then(|h| self.by_hint.get(&h))
            .map_or(&[], Vec::as_slice)
    }
}

impl FromIterator<PublicKey> for TrustedIssuers {
    fn from_iter<I: IntoIterator<Item = PublicKey>>(keys: I) -> Self {
        let mut issuers = Self::new();
        issuers.extend(keys);
        issuers
    }
}

impl Extend<PublicKey> for TrustedIssuers {
    fn extend<I: IntoIterator<Item = PublicKey>>(&mut self, keys: I) {
        for key in keys {
            self.insert(key);
        }
    }
}

/// Bounds on reading one ticket: its size, its blocks and its Datalog evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketLimits {
    /// Largest ticket in bytes (default [`MAX_TICKET_BYTES`]).
    pub max_bytes: usize,
    /// Most blocks, authority included (default [`MAX_TICKET_BLOCKS`]).
    pub max_blocks: usize,
    /// Most Datalog facts, the node's included (default 512).
    pub max_facts: u64,
    /// Most rule iterations (default 32).
    pub max_iterations: u64,
    /// Most Datalog evaluation time (default 100 ms; facts and iterations bound the work, this
    /// is the backstop for costly expressions). It is wall-clock time, so it is set far above
    /// the tenth of a millisecond an honest ticket takes: on a loaded node a thread can be
    /// descheduled for tens of milliseconds mid-evaluation, and that must not refuse a ticket.
    pub max_time: Duration,
}

impl Default for TicketLimits {
    fn default() -> Self {
        TicketLimits {
            max_bytes: MAX_TICKET_BYTES,
            max_blocks: MAX_TICKET_BLOCKS,
            max_facts: 512,
            max_iterations: 32,
            max_time: Duration::from_millis(100),
        }
    }
}

impl TicketLimits {
    fn run_limits(&self) -> RunLimits {
        RunLimits {
            max_facts: self.max_facts,
            max_iterations: self.max_iterations,
            max_time: self.max_time,
        }
    }
}

/// What a presenter asks of a node with a ticket: one use of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketUse {
    /// The operation.
    pub operation: Operation,
    /// The resources asked (must fit the effective grant).
    pub resources: Resources,
    /// The lease window asked, if any (must lie in the effective window).
    pub window: Option<Window>,
}

/// What a ticket grants after all its blocks, as any holder can read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketContents {
    /// The ticket id.
    pub ticket_id: TicketId,
    /// The issuing agent.
    pub issuer: PublicKey,
    /// The issuing agent's federation.
    pub federation: String,
    /// The node the ticket is for.
    pub node: PublicKey,
    /// The slice name.
    pub slice: String,
    /// Regular or admin slice.
    pub kind: SliceKind,
    /// The effective grant: the minimum of the authority's and every restriction.
    pub grant: Resources,
    /// Effective start of validity (unix seconds).
    pub not_before: u64,
    /// Effective end of validity (unix seconds, excluded).
    pub not_after: u64,
    /// Every holder in order: the authority's first, the current one last.
    pub holders: Vec<PublicKey>,
    /// The current holder.
    pub holder: PublicKey,
    /// The effective operations.
    pub operations: BTreeSet<Operation>,
    /// The price the issuing agent agreed, in micro-credits for the whole window (none: the
    /// ticket states no price). No block can change it.
    #[serde(default)]
    pub price: Option<u64>,
    /// Network grants (raw sockets, a hard egress cap); no block can add one.
    #[serde(default, skip_serializing_if = "NetGrant::is_default")]
    pub net: NetGrant,
}

impl TicketContents {
    /// The effective validity window.
    pub fn window(&self) -> Window {
        Window {
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

/// A ticket a node has accepted for a request: what it grants, after every attenuation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedTicket {
    /// The ticket id (the spend ledger's key).
    pub ticket_id: TicketId,
    /// The issuing agent.
    pub issuer: PublicKey,
    /// The issuing agent's federation.
    pub federation: String,
    /// This node.
    pub node: PublicKey,
    /// The slice name.
    pub slice: String,
    /// Regular or admin slice.
    pub kind: SliceKind,
    /// The effective grant.
    pub grant: Resources,
    /// Effective start of validity (unix seconds).
    pub not_before: u64,
    /// Effective end of validity (unix seconds, excluded).
    pub not_after: u64,
    /// The final holder (the presenter).
    pub holder: PublicKey,
    /// The effective operations.
    pub operations: BTreeSet<Operation>,
    /// The price the issuing agent agreed, in micro-credits for the whole window (none: the
    /// ticket states no price).
    #[serde(default)]
    pub price: Option<u64>,
    /// Network grants.
    #[serde(default, skip_serializing_if = "NetGrant::is_default")]
    pub net: NetGrant,
}

impl From<TicketContents> for VerifiedTicket {
    fn from(c: TicketContents) -> Self {
        VerifiedTicket {
            ticket_id: c.ticket_id,
            issuer: c.issuer,
            federation: c.federation,
            node: c.node,
            slice: c.slice,
            kind: c.kind,
            grant: c.grant,
            not_before: c.not_before,
            not_after: c.not_after,
            holder: c.holder,
            operations: c.operations,
            price: c.price,
            net: c.net,
        }
    }
}

/// A node's ticket checker: the issuers it trusts, its own key, the limits, and optionally a
/// cache of verified chains shared by its clones.
#[derive(Debug, Clone)]
pub struct TicketVerifier {
    issuers: TrustedIssuers,
    node: PublicKey,
    limits: TicketLimits,
    chains: Option<Arc<ChainCache>>,
}

impl TicketVerifier {
    /// A verifier for node `node` that trusts `issuers`, with default limits.
    pub fn new(issuers: TrustedIssuers, node: PublicKey) -> Self {
        TicketVerifier {
            issuers,
            node,
            limits: TicketLimits::default(),
            chains: None,
        }
    }

    /// The same verifier keeping verified chains in `cache` (see [`ChainCache`]).
    pub fn with_chain_cache(mut self, cache: Arc<ChainCache>) -> Self {
        self.chains = Some(cache);
        self
    }

    /// The cache of verified chains, if any.
    pub fn chain_cache(&self) -> Option<&Arc<ChainCache>> {
        self.chains.as_ref()
    }

    /// The same verifier with other limits.
    pub fn with_limits(mut self, limits: TicketLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The trusted issuers.
    pub fn issuers(&self) -> &TrustedIssuers {
        &self.issuers
    }

    /// The trusted issuers, to add or remove agents as delegations change.
    pub fn issuers_mut(&mut self) -> &mut TrustedIssuers {
        &mut self.issuers
    }

    /// The limits in force.
    pub fn limits(&self) -> &TicketLimits {
        &self.limits
    }

    /// Parses `bytes` and authorizes `request` by `presenter` at time `now` (unix seconds).
    pub fn authorize(
        &self,
        bytes: &[u8],
        presenter: &PublicKey,
        now: u64,
        request: &TicketUse,
    ) -> Result<VerifiedTicket, TicketRefusal> {
        let ticket = parse(bytes, &self.issuers, &self.limits)?;
        self.authorize_ticket(&ticket, presenter, now, request)
    }

    /// Authorizes a ticket already parsed (its issuer must be trusted by this verifier).
    pub fn authorize_ticket(
        &self,
        ticket: &Ticket,
        presenter: &PublicKey,
        now: u64,
        request: &TicketUse,
    ) -> Result<VerifiedTicket, TicketRefusal> {
        if !self.issuers.contains(&ticket.issuer) {
            return Err(TicketRefusal::UnknownIssuer {
                key_hint: ticket.issuer.short(),
            });
        }
        let facts = vocabulary::request_facts(
            now,
            request.operation,
            &request.resources,
            request.window.as_ref(),
        );
        let known = [self.node, *presenter];
        let Evaluated {
            contents,
            mut authorizer,
        } = evaluate(ticket, &self.limits, facts, &known)?;
        self.check_use(&contents, presenter, now, request)?;
        // The checks blocks added, under fresh limits (the rules ran under their own).
        authorizer
            .authorize_with_limits(self.limits.run_limits())
            .map_err(refusal_from_token)?;
        Ok(contents.into())
    }

    /// Parses `bytes`, checks every signature under the trusted issuers and evaluates the
    /// blocks: what the ticket grants, before any request. With a [`ChainCache`], the same
    /// bytes verified before are read from it (their issuer still trusted, their blocks
    /// within the limits), and a chain without block logic is kept for next time.
    pub fn verify_chain(&self, bytes: &[u8]) -> Result<VerifiedChain, TicketRefusal> {
        if bytes.len() > self.limits.max_bytes {
            return Err(TicketRefusal::TooLarge {
                size: bytes.len(),
                limit: self.limits.max_bytes,
            });
        }
        if let Some(chain) = self.chains.as_ref().and_then(|cache| cache.get(bytes))
            && self.issuers.contains(&chain.contents.issuer)
            && chain.blocks <= self.limits.max_blocks
        {
            return Ok(chain);
        }
        let ticket = parse(bytes, &self.issuers, &self.limits)?;
        let contents = evaluate(&ticket, &self.limits, Vec::new(), &[self.node])?.contents;
        let blocks = ticket.token.block_count();
        let logic = chains::has_block_logic(&ticket).then(|| Arc::new(ticket));
        let chain = VerifiedChain {
            contents: Arc::new(contents),
            logic,
            blocks,
        };
        if let Some(cache) = &self.chains {
            cache.insert(bytes, &chain);
        }
        Ok(chain)
    }

    /// Authorizes `request` by `presenter` at `now` against a chain [`verify_chain`] read:
    /// the issuer must still be trusted, then the same checks as
    /// [`authorize_ticket`](Self::authorize_ticket); a chain whose blocks carry rules or
    /// checks is evaluated again with the request stated.
    ///
    /// [`verify_chain`]: Self::verify_chain
    pub fn authorize_chain(
        &self,
        chain: &VerifiedChain,
        presenter: &PublicKey,
        now: u64,
        request: &TicketUse,
    ) -> Result<VerifiedTicket, TicketRefusal> {
        if let Some(ticket) = &chain.logic {
            return self.authorize_ticket(ticket, presenter, now, request);
        }
        let contents = &*chain.contents;
        if !self.issuers.contains(&contents.issuer) {
            return Err(TicketRefusal::UnknownIssuer {
                key_hint: contents.issuer.short(),
            });
        }
        self.check_use(contents, presenter, now, request)?;
        Ok(contents.clone().into())
    }

    /// The per-request checks on a ticket's contents: presenter, node, window, operation,
    /// resources and lease window.
    fn check_use(
        &self,
        contents: &TicketContents,
        presenter: &PublicKey,
        now: u64,
        request: &TicketUse,
    ) -> Result<(), TicketRefusal> {
        if contents.holder != *presenter {
            return Err(TicketRefusal::WrongPresenter {
                holder: contents.holder,
                presenter: *presenter,
            });
        }
        if contents.node != self.node {
            return Err(TicketRefusal::WrongNode {
                ticket_node: contents.node,
                this_node: self.node,
            });
        }
        if now < contents.not_before {
            return Err(TicketRefusal::NotYetValid {
                not_before: contents.not_before,
                now,
            });
        }
        if now >= contents.not_after {
            return Err(TicketRefusal::Expired {
                not_after: contents.not_after,
                now,
            });
        }
        if !contents.operations.contains(&request.operation) {
            return Err(TicketRefusal::OperationNotAllowed {
                operation: request.operation,
                allowed: contents.operations.clone(),
            });
        }
        if let Some(kind) = request.resources.first_excess(&contents.grant) {
            return Err(TicketRefusal::OverAsked {
                kind,
                asked: request.resources.get(kind),
                granted: contents.grant.get(kind),
            });
        }
        if let Some(asked) = request.window
            && !contents.window().covers(&asked)
        {
            return Err(TicketRefusal::WindowNotGranted {
                asked,
                granted: contents.window(),
            });
        }
        Ok(())
    }
}

// ---- parsing ----------------------------------------------------------------------------

/// Parses `bytes` and checks every signature, with the root key chosen among `issuers`.
pub(crate) fn parse(
    bytes: &[u8],
    issuers: &TrustedIssuers,
    limits: &TicketLimits,
) -> Result<Ticket, TicketRefusal> {
    if bytes.len() > limits.max_bytes {
        return Err(TicketRefusal::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    // Decode first (cheap, bounded by the size cap) so the block cap and the issuer lookup
    // happen before any curve arithmetic.
    let unverified = UnverifiedBiscuit::from(bytes).map_err(parse_refusal)?;
    if unverified.block_count() > limits.max_blocks {
        return Err(TicketRefusal::TooManyBlocks {
            blocks: unverified.block_count(),
            limit: limits.max_blocks,
        });
    }
    let hint = unverified.root_key_id();
    let candidates = issuers.candidates(hint);
    if candidates.is_empty() {
        let key_hint = match hint {
            Some(hint) => format!("{hint:08x}…"),
            None => "(none given)".to_owned(),
        };
        return Err(TicketRefusal::UnknownIssuer { key_hint });
    }
    // Several trusted keys may share a hint: try each until one verifies.
    let mut remaining = Some(unverified);
    for (i, (issuer, decoded)) in candidates.iter().enumerate() {
        let Some(current) = remaining.take() else {
            break;
        };
        if i + 1 < candidates.len() {
            remaining = Some(current.clone());
        }
        match current.verify(*decoded) {
            Ok(token) => {
                return Ok(Ticket {
                    token,
                    issuer: *issuer,
                });
            }
            Err(Format::Signature(_) | Format::SealedSignature) if remaining.is_some() => {}
            Err(e) => return Err(parse_refusal(Token::Format(e))),
        }
    }
    Err(TicketRefusal::BadSignature)
}

/// Parses `bytes` and checks every signature against the issuer key the authority block
/// names, whoever that is (for holders reading their tickets: see [`Ticket::read`]). The
/// authority block is read from its unverified bytes for that key only; everything else is
/// read, as by a node, from the verified ticket.
pub(crate) fn parse_as_stated(
    bytes: &[u8],
    limits: &TicketLimits,
) -> Result<Ticket, TicketRefusal> {
    if bytes.len() > limits.max_bytes {
        return Err(TicketRefusal::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let unverified = UnverifiedBiscuit::from(bytes).map_err(parse_refusal)?;
    if unverified.block_count() > limits.max_blocks {
        return Err(TicketRefusal::TooManyBlocks {
            blocks: unverified.block_count(),
            limit: limits.max_blocks,
        });
    }
    let source = unverified.print_block_source(0).map_err(parse_refusal)?;
    let mut stated = source
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("ticket("));
    let (Some(line), None) = (stated.next(), stated.next()) else {
        return Err(TicketRefusal::Malformed {
            reason: "the authority block does not state exactly one ticket".to_owned(),
        });
    };
    let fact =
        Fact::try_from(line.trim_end_matches(';')).map_err(|e| TicketRefusal::Malformed {
            reason: format!("the authority block's ticket does not read back: {e}"),
        })?;
    let issuer = vocabulary::read_ticket(&fact, &[])?.issuer;
    parse(bytes, &TrustedIssuers::from_iter([issuer]), limits)
}

/// Parses the text form.
pub(crate) fn parse_text(
    text: &str,
    issuers: &TrustedIssuers,
    limits: &TicketLimits,
) -> Result<Ticket, TicketRefusal> {
    parse(&text_bytes(text, limits)?, issuers, limits)
}

/// Parses the text form against the issuer it names (see [`parse_as_stated`]).
pub(crate) fn parse_text_as_stated(
    text: &str,
    limits: &TicketLimits,
) -> Result<Ticket, TicketRefusal> {
    parse_as_stated(&text_bytes(text, limits)?, limits)
}

/// Decodes the text form under the size cap (surrounding whitespace is ignored).
fn text_bytes(text: &str, limits: &TicketLimits) -> Result<Vec<u8>, TicketRefusal> {
    let text = text.trim();
    let limit = limits.max_bytes.div_ceil(3) * 4;
    if text.len() > limit {
        return Err(TicketRefusal::TooLarge {
            size: text.len(),
            limit,
        });
    }
    decode_base64url(text).ok_or_else(|| TicketRefusal::Malformed {
        reason: "the text is not URL-safe base64".to_owned(),
    })
}

/// Decodes URL-safe base64, with or without `=` padding.
fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    let body = text.trim_end_matches('=');
    if text.len() - body.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in body.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover character (6 bits) cannot end valid base64.
    (bits < 6).then_some(out)
}

/// Whether a protobuf decoding message says the input ended early.
fn says_truncated(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("buffer underflow") || m.contains("unexpected eof") || m.contains("truncated")
}

fn parse_refusal(e: Token) -> TicketRefusal {
    match e {
        Token::Format(Format::Signature(_) | Format::SealedSignature) => {
            TicketRefusal::BadSignature
        }
        Token::Format(Format::DeserializationError(m) | Format::BlockDeserializationError(m))
            if says_truncated(&m) =>
        {
            TicketRefusal::Truncated
        }
        Token::Format(Format::DeserializationError(m) | Format::BlockDeserializationError(m)) => {
            TicketRefusal::Malformed { reason: m }
        }
        Token::Format(other) => TicketRefusal::Malformed {
            reason: format!("{other}: {other:?}"),
        },
        other => TicketRefusal::Malformed {
            reason: other.to_string(),
        },
    }
}

/// Maps an error of the Datalog evaluation to the check that failed.
fn refusal_from_token(e: Token) -> TicketRefusal {
    match e {
        Token::RunLimit(RunLimit::TooManyFacts) => TicketRefusal::LimitsExceeded {
            limit: LimitKind::Facts,
        },
        Token::RunLimit(RunLimit::TooManyIterations) => TicketRefusal::LimitsExceeded {
            limit: LimitKind::Iterations,
        },
        Token::RunLimit(RunLimit::Timeout) => TicketRefusal::LimitsExceeded {
            limit: LimitKind::Time,
        },
        Token::FailedLogic(
            Logic::Unauthorized { checks, .. } | Logic::NoMatchingPolicy { checks },
        ) => checks
            .into_iter()
            .find_map(|c| match c {
                FailedCheck::Block(b) => Some(TicketRefusal::BlockCheckFailed {
                    block: b.block_id,
                    check: b.rule,
                }),
                FailedCheck::Authorizer(_) => None,
            })
            .unwrap_or_else(|| TicketRefusal::Malformed {
                reason: "the node's own policy failed".to_owned(),
            }),
        Token::FailedLogic(Logic::InvalidBlockRule(_, rule)) => TicketRefusal::Malformed {
            reason: format!("a block's rule is not valid Datalog: {rule}"),
        },
        Token::Execution(e) => TicketRefusal::Malformed {
            reason: format!("a block's Datalog fails to evaluate: {e}"),
        },
        other => TicketRefusal::Malformed {
            reason: other.to_string(),
        },
    }
}

// ---- evaluation -------------------------------------------------------------------------

static ALLOW: LazyLock<Result<Policy, Token>> = LazyLock::new(|| Policy::try_from("allow if true"));

struct Evaluated {
    contents: TicketContents,
    authorizer: Authorizer,
}

/// Reads a ticket's effective contents, without a node or a request.
pub(crate) fn contents(
    ticket: &Ticket,
    limits: &TicketLimits,
) -> Result<TicketContents, TicketRefusal> {
    evaluate(ticket, limits, Vec::new(), &[]).map(|e| e.contents)
}

/// Loads the ticket and the node's `facts` into one authorizer and reads the effective
/// contents. Evaluating the blocks' rules is bounded by `limits` (facts, iterations, time);
/// the fixed queries below then read single predicates, linear in the (size-capped) facts.
/// `known` are keys already checked, reused when the ticket names them.
fn evaluate(
    ticket: &Ticket,
    limits: &TicketLimits,
    facts: Vec<Fact>,
    known: &[PublicKey],
) -> Result<Evaluated, TicketRefusal> {
    let token = &ticket.token;
    if token.block_count() > limits.max_blocks {
        return Err(TicketRefusal::TooManyBlocks {
            blocks: token.block_count(),
            limit: limits.max_blocks,
        });
    }
    let run_limits = limits.run_limits();
    let policy = ALLOW.clone().map_err(refusal_from_token)?;
    let mut builder = AuthorizerBuilder::new().set_limits(run_limits.clone());
    for fact in facts {
        builder = builder.fact(fact).map_err(refusal_from_token)?;
    }
    let builder = builder.policy(policy).map_err(refusal_from_token)?;
    let mut authorizer = builder.build(token).map_err(refusal_from_token)?;
    // Runs the blocks' rules under the limits; the queries below reuse the result.
    authorizer.run().map_err(refusal_from_token)?;
    let q = &*QUERIES;
    let mut query = |rule: Rule, all_blocks: bool| -> Result<Vec<Fact>, TicketRefusal> {
        let result = if all_blocks {
            authorizer.query_all_with_limits(rule, run_limits.clone())
        } else {
            authorizer.query_with_limits(rule, run_limits.clone())
        };
        result.map_err(refusal_from_token)
    };

    // The `ticket` fact in the authority's scope: exactly one.
    let rows = query(q.ticket.clone(), false)?;
    let [row] = rows.as_slice() else {
        return Err(TicketRefusal::Malformed {
            reason: format!(
                "the authority block states {} tickets instead of one",
                rows.len()
            ),
        });
    };
    let mut known_keys = Vec::with_capacity(known.len() + 1);
    known_keys.push(ticket.issuer);
    known_keys.extend_from_slice(known);
    let authority = vocabulary::read_ticket(row, &known_keys)?;
    if authority.issuer != ticket.issuer {
        return Err(TicketRefusal::Malformed {
            reason: format!(
                "the ticket names issuer {} but is signed by {}",
                authority.issuer, ticket.issuer
            ),
        });
    }

    // No later block may state another `ticket`. Facts are deduplicated across blocks, so
    // one result means the authority's own.
    let all = query(q.ticket.clone(), true)?;
    if all.len() > 1 {
        let other = all
            .iter()
            .find(|r| r.predicate != row.predicate)
            .unwrap_or(row);
        return Err(TicketRefusal::Widened {
            field: vocabulary::differing_field(row, other),
        });
    }

    // Every attenuation lies within the authority; the minimum of all applies.
    let mut grant = authority.grant;
    let mut window = authority.window;
    let mut operations = authority.operations.clone();
    for fact in &query(q.attenuation.clone(), true)? {
        let r = vocabulary::read_attenuation(fact)?;
        let a = &authority;
        let narrow = |asked: Option<u64>, granted: u64, current: &mut u64| match asked {
            Some(v) if v > granted => Err(TicketRefusal::Widened {
                field: TicketField::Resources,
            }),
            Some(v) => {
                *current = (*current).min(v);
                Ok(())
            }
            None => Ok(()),
        };
        narrow(r.cpu_millis, a.grant.cpu_millis, &mut grant.cpu_millis)?;
        narrow(
            r.memory_bytes,
            a.grant.memory_bytes,
            &mut grant.memory_bytes,
        )?;
        narrow(r.disk_bytes, a.grant.disk_bytes, &mut grant.disk_bytes)?;
        narrow(r.egress_kbps, a.grant.egress_kbps, &mut grant.egress_kbps)?;
        let mut ports = u64::from(grant.ports);
        narrow(r.ports, u64::from(a.grant.ports), &mut ports)?;
        grant.ports = u32::try_from(ports).unwrap_or(grant.ports);
        if let Some(nb) = r.not_before {
            if nb < a.window.not_before {
                return Err(TicketRefusal::Widened {
                    field: TicketField::Window,
                });
            }
            window.not_before = window.not_before.max(nb);
        }
        if let Some(na) = r.not_after {
            if na > a.window.not_after {
                return Err(TicketRefusal::Widened {
                    field: TicketField::Window,
                });
            }
            window.not_after = window.not_after.min(na);
        }
        if let Some(ops) = r.operations {
            if !ops.is_subset(&a.operations) {
                return Err(TicketRefusal::Widened {
                    field: TicketField::Operations,
                });
            }
            operations.retain(|op| ops.contains(op));
        }
    }

    // The holder chain: each third-party block is signed by the holder of that moment.
    let mut holder = authority.holder;
    let mut holders = vec![holder];
    for (block, signer) in token.external_public_keys().into_iter().enumerate().skip(1) {
        let Some(signer) = signer else { continue };
        let by_holder = signer.algorithm()
            == biscuit_auth::format::schema::public_key::Algorithm::Ed25519
            && signer.to_bytes().as_slice() == holder.as_bytes();
        if !by_holder {
            return Err(TicketRefusal::DelegationNotByHolder {
                block,
                signer: signer.to_string(),
                holder,
            });
        }
        let named = query(vocabulary::delegation_by(signer), false)?;
        let [fact] = named.as_slice() else {
            return Err(TicketRefusal::MalformedDelegation { block });
        };
        let next = vocabulary::read_delegate_to(fact, &known_keys)?;
        if holders.contains(&next) {
            return Err(TicketRefusal::DelegationLoop { holder: next });
        }
        holders.push(next);
        holder = next;
    }
    // Any other `delegate_to` sits in a block the holder did not sign.
    if query(q.delegate_to.clone(), true)?.len() != holders.len() - 1 {
        return Err(TicketRefusal::ForgedDelegation);
    }

    let contents = TicketContents {
        ticket_id: ticket.id(),
        issuer: authority.issuer,
        federation: authority.federation,
        node: authority.node,
        slice: authority.slice,
        kind: authority.kind,
        grant,
        not_before: window.not_before,
        not_after: window.not_after,
        holders,
        holder,
        operations,
        price: authority.price,
        net: authority.net,
    };
    Ok(Evaluated {
        contents,
        authorizer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_key;
    use crate::ticket::TicketSpec;

    fn ticket_bytes() -> Vec<u8> {
        let spec = TicketSpec {
            federation: "plc".into(),
            node: test_key(2).public(),
            slice: "s".into(),
            kind: SliceKind::Regular,
            resources: Resources {
                cpu_millis: 1,
                ..Resources::ZERO
            },
            window: Window::new(0, 10),
            holder: test_key(3).public(),
            operations: [Operation::Redeem].into_iter().collect(),
            net: Default::default(),
        };
        Ticket::mint(&test_key(1), &spec)
            .unwrap()
            .to_bytes()
            .unwrap()
    }

    #[test]
    fn every_trusted_key_sharing_the_hint_is_tried() {
        let agent = test_key(1).public();
        let impostor = test_key(8).public();
        let mut issuers = TrustedIssuers::new();
        issuers.insert(agent);
        // Put another key first under the agent's hint, as a 32-bit collision would.
        let slot = issuers.by_hint.get_mut(&key_hint(&agent)).unwrap();
        slot.insert(0, (impostor, impostor.to_biscuit().unwrap()));
        let ticket = parse(&ticket_bytes(), &issuers, &TicketLimits::default()).unwrap();
        assert_eq!(ticket.issuer(), agent);
        // With only the impostor under that hint, the signature does not verify.
        issuers.remove(&agent);
        assert_eq!(
            parse(&ticket_bytes(), &issuers, &TicketLimits::default()).unwrap_err(),
            TicketRefusal::BadSignature
        );
    }

    #[test]
    fn base64url_decodes_with_and_without_padding() {
        assert_eq!(decode_base64url("aGk").unwrap(), b"hi");
        assert_eq!(decode_base64url("aGk=").unwrap(), b"hi");
        assert_eq!(decode_base64url("-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(decode_base64url("a").is_none());
        assert!(decode_base64url("aGk===").is_none());
        assert!(decode_base64url("a+b/").is_none());
    }
}
