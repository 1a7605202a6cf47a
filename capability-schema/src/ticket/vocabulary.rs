//! The ticket's Datalog vocabulary: which facts each kind of block carries, how they are
//! written and how they are read back.
//!
//! ```text
//! // authority block: written by the issuing agent, signed by its (root) key; one fact
//! ticket({"version": 1 | 2, "issuer": "ed25519/…", "federation": "…", "node": "ed25519/…",
//!         "slice": "…", "kind": "regular" | "admin", "capabilities": {"CAP_…", …},
//!         "host_pid_view": false, "cpu_millis": …, "memory_bytes": …, "disk_bytes": …,
//!         "egress_kbps": …, "not_before": …, "not_after": …,  // unix seconds, [before, after)
//!         "holder": "ed25519/…", "operations": {"redeem", "renew"},
//!         "price": …});  // version 2 only (required there): micro-credits for the window
//!
//! // attenuation block: appended by anyone holding the ticket; each key is optional
//! attenuation({"cpu_millis": …, "memory_bytes": …, "disk_bytes": …, "egress_kbps": …,
//!              "not_before": …, "not_after": …, "operations": {"redeem"}});
//!
//! // delegation block: a third-party block signed by the current holder's key
//! delegate_to("ed25519/…");
//!
//! // authorizer (the node, when a ticket is presented); checks added by blocks may use them
//! time(<date>); request_operation("redeem"); request_resources(c, m, d, e);
//! request_window(start, end);
//! // No key is stated (node, presenter): a rule in a holder-signed block could otherwise derive
//! // `delegate_to` from it and delegate to whoever presents the ticket.
//! ```
//!
//! One fact per block keeps reading linear: the node reads `ticket` in the authority's scope
//! only, refuses any other `ticket` fact a later block states, and combines every
//! `attenuation` by taking the minimum, refusing one that claims more than the authority. So
//! no appended block can grant anything, whatever facts or rules it carries (facts under other
//! names are never read). The readers here turn query results into typed values and refuse
//! anything not exactly in this shape.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use biscuit_auth::builder::{self, Fact, MapKey, Rule, Term};

use super::refusal::{TicketField, TicketRefusal};
use super::{Operation, Window};
use crate::identity::PublicKey;
use crate::resources::Resources;
use crate::slice::{NetGrant, SliceKind};

/// The format version of a `ticket` fact that states no price.
pub(crate) const FORMAT_UNPRICED: i64 = 1;
/// The format version of a `ticket` fact that states the agreed price (version 1 plus
/// `price`, which is then required).
pub(crate) const FORMAT_PRICED: i64 = 2;

const TICKET: &str = "ticket";
const ATTENUATION: &str = "attenuation";
const DELEGATE_TO: &str = "delegate_to";
const TIME: &str = "time";
const REQUEST_OPERATION: &str = "request_operation";
const REQUEST_RESOURCES: &str = "request_resources";
const REQUEST_WINDOW: &str = "request_window";

const VERSION: &str = "version";
const ISSUER: &str = "issuer";
const FEDERATION: &str = "federation";
const NODE: &str = "node";
const SLICE: &str = "slice";
const KIND: &str = "kind";
const CAPABILITIES: &str = "capabilities";
const HOST_PID_VIEW: &str = "host_pid_view";
const CPU: &str = "cpu_millis";
const MEMORY: &str = "memory_bytes";
const DISK: &str = "disk_bytes";
const EGRESS: &str = "egress_kbps";
const PORTS: &str = "ports";
const NET_RAW: &str = "net_raw";
const EGRESS_CAP: &str = "egress_cap";
const NOT_BEFORE: &str = "not_before";
const NOT_AFTER: &str = "not_after";
const HOLDER: &str = "holder";
const OPERATIONS: &str = "operations";
const PRICE: &str = "price";

const KIND_REGULAR: &str = "regular";
const KIND_ADMIN: &str = "admin";

/// Which part of the ticket a key of the `ticket` map is about.
fn field_of(key: &str) -> TicketField {
    match key {
        NODE => TicketField::Node,
        KIND | CAPABILITIES | HOST_PID_VIEW | NET_RAW | EGRESS_CAP => TicketField::Kind,
        CPU | MEMORY | DISK | EGRESS | PORTS => TicketField::Resources,
        NOT_BEFORE | NOT_AFTER => TicketField::Window,
        HOLDER => TicketField::Holder,
        OPERATIONS => TicketField::Operations,
        PRICE => TicketField::Price,
        _ => TicketField::Identity,
    }
}

/// The queries the node runs over every ticket, built once.
pub(crate) struct Queries {
    /// The `ticket` fact(s).
    pub(crate) ticket: Rule,
    /// The `attenuation` facts.
    pub(crate) attenuation: Rule,
    /// The `delegate_to` facts (scoped to one signer by [`delegation_by`]).
    pub(crate) delegate_to: Rule,
}

pub(crate) static QUERIES: LazyLock<Queries> = LazyLock::new(|| {
    let copy = |name: &str| {
        let terms = [builder::var("x")];
        builder::rule(name, &terms, &[builder::pred(name, &terms)])
    };
    Queries {
        ticket: copy(TICKET),
        attenuation: copy(ATTENUATION),
        delegate_to: copy(DELEGATE_TO),
    }
});

/// The `delegate_to` query restricted to blocks signed by `signer`.
pub(crate) fn delegation_by(signer: biscuit_auth::PublicKey) -> Rule {
    let mut rule = QUERIES.delegate_to.clone();
    rule.scopes = vec![builder::Scope::PublicKey(signer)];
    rule
}

/// What the authority block says, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Authority {
    pub(crate) issuer: PublicKey,
    pub(crate) federation: String,
    pub(crate) node: PublicKey,
    pub(crate) slice: String,
    pub(crate) kind: SliceKind,
    pub(crate) grant: Resources,
    pub(crate) window: Window,
    pub(crate) holder: PublicKey,
    pub(crate) operations: BTreeSet<Operation>,
    /// The agreed price in micro-credits for the whole window (none: format 1).
    pub(crate) price: Option<u64>,
    /// Network grants.
    pub(crate) net: NetGrant,
}

/// What one attenuation restricts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Restriction {
    pub(crate) cpu_millis: Option<u64>,
    pub(crate) memory_bytes: Option<u64>,
    pub(crate) disk_bytes: Option<u64>,
    pub(crate) egress_kbps: Option<u64>,
    pub(crate) ports: Option<u64>,
    pub(crate) not_before: Option<u64>,
    pub(crate) not_after: Option<u64>,
    pub(crate) operations: Option<BTreeSet<Operation>>,
}

// ---- writing ----------------------------------------------------------------------------

fn key_term(key: &PublicKey) -> Term {
    Term::Str(key.to_string())
}

fn operations_term(operations: &BTreeSet<Operation>) -> Term {
    builder::set(
        operations
            .iter()
            .map(|op| builder::string(op.as_str()))
            .collect(),
    )
}

/// A u64 as a Datalog integer (saturating; minting validated that values fit).
fn int(value: u64) -> Term {
    builder::int(i64::try_from(value).unwrap_or(i64::MAX))
}

fn map(entries: Vec<(&str, Term)>) -> Term {
    Term::Map(
        entries
            .into_iter()
            .map(|(k, v)| (MapKey::Str(k.to_owned()), v))
            .collect(),
    )
}

/// The authority block's one fact.
pub(crate) fn ticket_fact(a: &Authority) -> Fact {
    let (kind, capabilities, host_pid_view): (&str, BTreeSet<Term>, bool) = match &a.kind {
        SliceKind::Regular => (KIND_REGULAR, BTreeSet::new(), false),
        SliceKind::Admin {
            capabilities,
            host_pid_view,
        } => (
            KIND_ADMIN,
            capabilities.iter().map(|c| builder::string(c)).collect(),
            *host_pid_view,
        ),
    };
    let version = if a.price.is_some() {
        FORMAT_PRICED
    } else {
        FORMAT_UNPRICED
    };
    let mut entries = vec![
        (VERSION, builder::int(version)),
        (ISSUER, key_term(&a.issuer)),
        (FEDERATION, builder::string(&a.federation)),
        (NODE, key_term(&a.node)),
        (SLICE, builder::string(&a.slice)),
        (KIND, builder::string(kind)),
        (CAPABILITIES, builder::set(capabilities)),
        (HOST_PID_VIEW, builder::boolean(host_pid_view)),
        (CPU, int(a.grant.cpu_millis)),
        (MEMORY, int(a.grant.memory_bytes)),
        (DISK, int(a.grant.disk_bytes)),
        (EGRESS, int(a.grant.egress_kbps)),
        (NOT_BEFORE, int(a.window.not_before)),
        (NOT_AFTER, int(a.window.not_after)),
        (HOLDER, key_term(&a.holder)),
        (OPERATIONS, operations_term(&a.operations)),
    ];
    if let Some(price) = a.price {
        entries.push((PRICE, int(price)));
    }
    // Stated only when asked for, so tickets without ports are as they were.
    if a.grant.ports > 0 {
        entries.push((PORTS, int(u64::from(a.grant.ports))));
    }
    // Network grants likewise, only when granted.
    if a.net.raw {
        entries.push((NET_RAW, builder::boolean(true)));
    }
    if a.net.egress_cap {
        entries.push((EGRESS_CAP, builder::boolean(true)));
    }
    builder::fact(TICKET, &[map(entries)])
}

/// An attenuation block's one fact.
pub(crate) fn attenuation_fact(
    resources: Option<&Resources>,
    window: Option<&Window>,
    operations: Option<&BTreeSet<Operation>>,
) -> Fact {
    let mut entries = Vec::new();
    if let Some(r) = resources {
        entries.extend([
            (CPU, int(r.cpu_millis)),
            (MEMORY, int(r.memory_bytes)),
            (DISK, int(r.disk_bytes)),
            (EGRESS, int(r.egress_kbps)),
        ]);
        if r.ports > 0 {
            entries.push((PORTS, int(u64::from(r.ports))));
        }
    }
    if let Some(w) = window {
        entries.extend([
            (NOT_BEFORE, int(w.not_before)),
            (NOT_AFTER, int(w.not_after)),
        ]);
    }
    if let Some(ops) = operations {
        entries.push((OPERATIONS, operations_term(ops)));
    }
    builder::fact(ATTENUATION, &[map(entries)])
}

/// A delegation block's one fact.
pub(crate) fn delegate_to_fact(next: &PublicKey) -> Fact {
    builder::fact(DELEGATE_TO, &[key_term(next)])
}

/// The facts the node states when a ticket is presented.
pub(crate) fn request_facts(
    now: u64,
    operation: Operation,
    resources: &Resources,
    window: Option<&Window>,
) -> Vec<Fact> {
    let mut facts = vec![
        builder::fact(TIME, &[Term::Date(now)]),
        builder::fact(REQUEST_OPERATION, &[builder::string(operation.as_str())]),
        builder::fact(
            REQUEST_RESOURCES,
            &[
                int(resources.cpu_millis),
                int(resources.memory_bytes),
                int(resources.disk_bytes),
                int(resources.egress_kbps),
            ],
        ),
    ];
    if let Some(w) = window {
        facts.push(builder::fact(
            REQUEST_WINDOW,
            &[int(w.not_before), int(w.not_after)],
        ));
    }
    facts
}

// ---- reading ----------------------------------------------------------------------------

fn malformed(reason: impl Into<String>) -> TicketRefusal {
    TicketRefusal::Malformed {
        reason: reason.into(),
    }
}

fn term_u64(term: &Term, what: &str) -> Result<u64, TicketRefusal> {
    match term {
        Term::Integer(i) => u64::try_from(*i).map_err(|_| malformed(format!("negative {what}"))),
        _ => Err(malformed(format!("{what} is not an integer"))),
    }
}

fn term_str<'a>(term: &'a Term, what: &str) -> Result<&'a str, TicketRefusal> {
    match term {
        Term::Str(s) => Ok(s),
        _ => Err(malformed(format!("{what} is not a string"))),
    }
}

/// Reads a key; a key equal to one of `known` (already checked) is taken from there, which
/// spares a curve point decompression per key on the node's hot path.
fn term_key(term: &Term, what: &str, known: &[PublicKey]) -> Result<PublicKey, TicketRefusal> {
    let text = term_str(term, what)?;
    if let Some(key) = known.iter().find(|k| key_text_is(text, k)) {
        return Ok(*key);
    }
    text.parse()
        .map_err(|_| malformed(format!("{what} is not an ed25519 key")))
}

/// Whether `text` is the `ed25519/<hex>` form of `key` (without allocating).
fn key_text_is(text: &str, key: &PublicKey) -> bool {
    let Some(hex_part) = text.strip_prefix(crate::identity::PUBLIC_PREFIX) else {
        return false;
    };
    let mut buf = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut buf).is_ok() && &buf == key.as_bytes()
}

fn term_strings<'a>(term: &'a Term, what: &str) -> Result<Vec<&'a str>, TicketRefusal> {
    match term {
        Term::Set(items) => items.iter().map(|t| term_str(t, what)).collect(),
        _ => Err(malformed(format!("{what} is not a set"))),
    }
}

fn term_operations(term: &Term) -> Result<BTreeSet<Operation>, TicketRefusal> {
    term_strings(term, OPERATIONS)?
        .into_iter()
        .map(|s| {
            s.parse()
                .map_err(|_| malformed(format!("unknown operation {s:?}")))
        })
        .collect()
}

/// The map of a one-term fact `name({...})`.
fn fact_map<'a>(fact: &'a Fact, name: &str) -> Result<&'a BTreeMap<MapKey, Term>, TicketRefusal> {
    match fact.predicate.terms.as_slice() {
        [Term::Map(map)] => Ok(map),
        _ => Err(malformed(format!("{name} is not a single map"))),
    }
}

/// The entries of a map, each key one of `allowed` (any other key is refused), read in one
/// pass without allocating.
struct Entries<'a> {
    allowed: &'static [&'static str],
    values: [Option<&'a Term>; MAX_KEYS],
    what: &'static str,
}

impl<'a> Entries<'a> {
    fn new(
        map: &'a BTreeMap<MapKey, Term>,
        what: &'static str,
        allowed: &'static [&'static str],
    ) -> Result<Self, TicketRefusal> {
        let mut values = [None; MAX_KEYS];
        for (key, value) in map {
            let slot = match key {
                MapKey::Str(k) => allowed.iter().position(|a| a == k),
                _ => None,
            };
            match slot.and_then(|i| values.get_mut(i)) {
                Some(v) => *v = Some(value),
                None => return Err(malformed(format!("{what} has an unknown entry {key:?}"))),
            }
        }
        Ok(Entries {
            allowed,
            values,
            what,
        })
    }

    fn get(&self, key: &str) -> Option<&'a Term> {
        let i = self.allowed.iter().position(|a| *a == key)?;
        self.values.get(i).copied().flatten()
    }

    fn need(&self, key: &str) -> Result<&'a Term, TicketRefusal> {
        self.get(key)
            .ok_or_else(|| malformed(format!("{} lacks {key}", self.what)))
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>, TicketRefusal> {
        self.get(key).map(|t| term_u64(t, key)).transpose()
    }
}

/// The most keys a map of this vocabulary has.
const MAX_KEYS: usize = TICKET_KEYS.len();

const TICKET_KEYS: [&str; 20] = [
    VERSION,
    ISSUER,
    FEDERATION,
    NODE,
    SLICE,
    KIND,
    CAPABILITIES,
    HOST_PID_VIEW,
    CPU,
    MEMORY,
    DISK,
    EGRESS,
    NOT_BEFORE,
    NOT_AFTER,
    HOLDER,
    OPERATIONS,
    PRICE,
    PORTS,
    NET_RAW,
    EGRESS_CAP,
];

const ATTENUATION_KEYS: [&str; 8] = [
    CPU, MEMORY, DISK, EGRESS, PORTS, NOT_BEFORE, NOT_AFTER, OPERATIONS,
];

/// An optional boolean key (absent: false).
fn opt_bool(e: &Entries<'_>, key: &str) -> Result<bool, TicketRefusal> {
    match e.get(key) {
        None => Ok(false),
        Some(Term::Bool(b)) => Ok(*b),
        Some(_) => Err(malformed(format!("{key} is not a boolean"))),
    }
}

/// A count that must fit in 32 bits.
fn count(value: u64, key: &str) -> Result<u32, TicketRefusal> {
    u32::try_from(value).map_err(|_| malformed(format!("{key} {value} is out of range")))
}

/// Reads the authority's `ticket` fact; `known` are keys already checked (see [`term_key`]).
pub(crate) fn read_ticket(fact: &Fact, known: &[PublicKey]) -> Result<Authority, TicketRefusal> {
    let e = Entries::new(fact_map(fact, TICKET)?, TICKET, &TICKET_KEYS)?;
    let u64_of = |key: &str| term_u64(e.need(key)?, key);
    let price = match e.need(VERSION)? {
        Term::Integer(FORMAT_UNPRICED) if e.get(PRICE).is_none() => None,
        Term::Integer(FORMAT_UNPRICED) => {
            return Err(malformed("a version 1 ticket states a price"));
        }
        Term::Integer(FORMAT_PRICED) => Some(u64_of(PRICE)?),
        other => return Err(malformed(format!("unsupported ticket format {other}"))),
    };
    let capabilities = term_strings(e.need(CAPABILITIES)?, CAPABILITIES)?;
    let &Term::Bool(host_pid_view) = e.need(HOST_PID_VIEW)? else {
        return Err(malformed("host_pid_view is not a boolean"));
    };
    let kind = match term_str(e.need(KIND)?, KIND)? {
        KIND_REGULAR if capabilities.is_empty() && !host_pid_view => SliceKind::Regular,
        KIND_REGULAR => return Err(malformed("a regular slice carries admin privileges")),
        KIND_ADMIN => SliceKind::Admin {
            capabilities: capabilities.into_iter().map(str::to_owned).collect(),
            host_pid_view,
        },
        other => return Err(malformed(format!("unknown slice kind {other:?}"))),
    };
    Ok(Authority {
        issuer: term_key(e.need(ISSUER)?, ISSUER, known)?,
        federation: term_str(e.need(FEDERATION)?, FEDERATION)?.to_owned(),
        node: term_key(e.need(NODE)?, NODE, known)?,
        slice: term_str(e.need(SLICE)?, SLICE)?.to_owned(),
        kind,
        grant: Resources {
            cpu_millis: u64_of(CPU)?,
            memory_bytes: u64_of(MEMORY)?,
            disk_bytes: u64_of(DISK)?,
            egress_kbps: u64_of(EGRESS)?,
            ports: count(e.opt_u64(PORTS)?.unwrap_or(0), PORTS)?,
        },
        window: Window {
            not_before: u64_of(NOT_BEFORE)?,
            not_after: u64_of(NOT_AFTER)?,
        },
        holder: term_key(e.need(HOLDER)?, HOLDER, known)?,
        operations: term_operations(e.need(OPERATIONS)?)?,
        price,
        net: NetGrant {
            raw: opt_bool(&e, NET_RAW)?,
            egress_cap: opt_bool(&e, EGRESS_CAP)?,
        },
    })
}

/// Which field a second `ticket` fact (stated by a later block) differs in from the real one.
pub(crate) fn differing_field(authority: &Fact, other: &Fact) -> TicketField {
    let (Ok(a), Ok(b)) = (fact_map(authority, TICKET), fact_map(other, TICKET)) else {
        return TicketField::Identity;
    };
    let keys: BTreeSet<&MapKey> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .find(|k| a.get(k) != b.get(k))
        .map_or(TicketField::Identity, |k| match k {
            MapKey::Str(name) => field_of(name),
            _ => TicketField::Identity,
        })
}

/// Reads an `attenuation` fact.
pub(crate) fn read_attenuation(fact: &Fact) -> Result<Restriction, TicketRefusal> {
    let e = Entries::new(fact_map(fact, ATTENUATION)?, ATTENUATION, &ATTENUATION_KEYS)?;
    Ok(Restriction {
        cpu_millis: e.opt_u64(CPU)?,
        memory_bytes: e.opt_u64(MEMORY)?,
        disk_bytes: e.opt_u64(DISK)?,
        egress_kbps: e.opt_u64(EGRESS)?,
        ports: e.opt_u64(PORTS)?,
        not_before: e.opt_u64(NOT_BEFORE)?,
        not_after: e.opt_u64(NOT_AFTER)?,
        operations: e.get(OPERATIONS).map(term_operations).transpose()?,
    })
}

/// Reads a `delegate_to` fact.
pub(crate) fn read_delegate_to(
    fact: &Fact,
    known: &[PublicKey],
) -> Result<PublicKey, TicketRefusal> {
    match fact.predicate.terms.as_slice() {
        [term] => term_key(term, DELEGATE_TO, known),
        _ => Err(malformed("delegate_to does not name exactly one key")),
    }
}
