//! Tickets: attenuable, delegable capability tokens (biscuit) that agents mint and nodes redeem.
//!
//! How a ticket flows:
//! 1. **Mint** ([`Ticket::mint`]): the agent signs an authority block with its own key (the
//!    biscuit root key) stating what it grants: node, federation, slice and kind, resources,
//!    validity window, holder and allowed operations, and with [`Ticket::mint_priced`] the
//!    price agreed for it (see [`vocabulary`] for the exact facts). Nodes and auditors read the
//!    price back from [`VerifiedTicket::price`]; no block can change it.
//!    The root key id is the agent key's [`key_hint`], so a node picks the key among the agents
//!    it trusts ([`TrustedIssuers`]).
//! 2. **Attenuate** ([`Ticket::attenuate`]): anyone holding the ticket may append a block that
//!    narrows it (fewer resources, a shorter window, fewer operations). Restrictions combine by
//!    minimum, so a block can never grant more; a block that claims more is refused outright.
//! 3. **Delegate** ([`Ticket::delegate`]): the current holder appends a third-party block
//!    signed with its own key that names the next holder. The node walks this chain.
//! 4. **Redeem** ([`TicketVerifier::authorize`]): the node checks size, signatures, issuer,
//!    the holder chain, presenter, node, window, operation and resources, under Datalog
//!    [`TicketLimits`], and returns a [`VerifiedTicket`] with the effective grant or the one
//!    [`TicketRefusal`] that failed.
//!
//! A ticket's id ([`TicketId`]) is the authority block's signature: the same in every
//! attenuated or delegated copy, so a node's spend ledger counts all copies against one grant.
//! The wire form is biscuit's own bytes, the text form its URL-safe base64. A holder reads a
//! ticket without trusting its issuer ([`Ticket::read`]: signatures checked against the key
//! the ticket names); a node parses it against the agents it trusts ([`Ticket::from_bytes`]).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::{Algorithm, Biscuit, KeyPair};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::identity::{PublicKey, SecretKey};
use crate::resources::Resources;
use crate::slice::SliceKind;

mod chains;
mod refusal;
mod verify;
pub mod vocabulary;

pub use chains::{ChainCache, VerifiedChain};
pub use refusal::{LimitKind, TicketError, TicketField, TicketRefusal};
pub use verify::{
    TicketContents, TicketLimits, TicketUse, TicketVerifier, TrustedIssuers, VerifiedTicket,
    key_hint,
};

use vocabulary::Authority;

/// The largest ticket accepted, in bytes (base64 text may be 4/3 of this).
pub const MAX_TICKET_BYTES: usize = 16 * 1024;
/// The most blocks (authority included) a ticket may carry.
pub const MAX_TICKET_BLOCKS: usize = 16;
/// The longest federation or slice name.
pub const MAX_NAME_LEN: usize = 64;

/// A ticket's id: its authority block's signature, shared by every copy of the ticket.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TicketId([u8; 64]);

impl TicketId {
    /// The id with these 64 bytes.
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        TicketId(bytes)
    }

    /// The 64 bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    /// A short form for logs and tables: the first 8 hex digits.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TicketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TicketId({}…)", self.short())
    }
}

/// Why a text is not a ticket id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a ticket id: expected 128 hex digits, got {0:?}")]
pub struct BadTicketId(pub String);

impl FromStr for TicketId {
    type Err = BadTicketId;

    fn from_str(text: &str) -> Result<Self, BadTicketId> {
        let bytes = hex::decode(text).map_err(|_| BadTicketId(text.to_owned()))?;
        bytes
            .try_into()
            .map(TicketId)
            .map_err(|_| BadTicketId(text.to_owned()))
    }
}

impl Serialize for TicketId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for TicketId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if deserializer.is_human_readable() {
            String::deserialize(deserializer)?
                .parse()
                .map_err(D::Error::custom)
        } else {
            let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
            let len = bytes.len();
            bytes
                .into_vec()
                .try_into()
                .map(TicketId)
                .map_err(|_| D::Error::invalid_length(len, &"64 bytes"))
        }
    }
}

/// What a ticket's holder may do with it at the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Redeem the ticket into a sliver and a lease.
    Redeem,
    /// Renew a lease made from the ticket (within the ticket's window).
    Renew,
}

impl Operation {
    /// Every operation.
    pub const ALL: [Operation; 2] = [Operation::Redeem, Operation::Renew];

    /// The name used in tickets.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Redeem => "redeem",
            Operation::Renew => "renew",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a text is not an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation {0:?}: expected redeem or renew")]
pub struct UnknownOperation(pub String);

impl FromStr for Operation {
    type Err = UnknownOperation;

    fn from_str(text: &str) -> Result<Self, UnknownOperation> {
        Operation::ALL
            .into_iter()
            .find(|op| op.as_str() == text)
            .ok_or_else(|| UnknownOperation(text.to_owned()))
    }
}

/// A validity window in unix seconds: from `not_before` (included) to `not_after` (excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Window {
    /// First second of validity.
    pub not_before: u64,
    /// First second after validity.
    pub not_after: u64,
}

impl Window {
    /// The window `[not_before, not_after)`.
    pub fn new(not_before: u64, not_after: u64) -> Self {
        Window {
            not_before,
            not_after,
        }
    }

    /// Whether `other` lies inside this window.
    pub fn covers(&self, other: &Window) -> bool {
        self.not_before <= other.not_before && other.not_after <= self.not_after
    }

    /// The overlap of two windows (possibly empty).
    pub fn intersect(&self, other: &Window) -> Window {
        Window {
            not_before: self.not_before.max(other.not_before),
            not_after: self.not_after.min(other.not_after),
        }
    }

    /// Whether no second lies in the window.
    pub fn is_empty(&self) -> bool {
        self.not_after <= self.not_before
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.not_before, self.not_after)
    }
}

/// What an agent grants in a new ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketSpec {
    /// The federation the issuing agent serves.
    pub federation: String,
    /// The node the ticket is for.
    pub node: PublicKey,
    /// The slice name.
    pub slice: String,
    /// Regular or admin slice.
    pub kind: SliceKind,
    /// The granted resources (each component at most `i64::MAX`).
    pub resources: Resources,
    /// The validity window.
    pub window: Window,
    /// The first holder.
    pub holder: PublicKey,
    /// The operations allowed.
    pub operations: BTreeSet<Operation>,
    /// Network grants (raw sockets, a hard egress cap); none by default.
    pub net: crate::slice::NetGrant,
}

/// What an attenuation narrows; `None` leaves that part as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attenuation {
    /// At most these resources.
    pub resources: Option<Resources>,
    /// Only within this window.
    pub window: Option<Window>,
    /// Only these operations.
    pub operations: Option<BTreeSet<Operation>>,
}

/// A ticket whose signatures have been checked (on parse) or that was just made.
#[derive(Clone)]
pub struct Ticket {
    token: Biscuit,
    issuer: PublicKey,
}

impl fmt::Debug for Ticket {
    // Not derived: the token carries the private key for its next block.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("id", &self.id())
            .field("issuer", &self.issuer)
            .field("blocks", &self.block_count())
            .finish()
    }
}

fn check_i64(field: &'static str, value: u64) -> Result<(), TicketError> {
    if i64::try_from(value).is_ok() {
        Ok(())
    } else {
        Err(TicketError::OutOfRange { field, value })
    }
}

fn check_resources(r: &Resources) -> Result<(), TicketError> {
    check_i64("cpu_millis", r.cpu_millis)?;
    check_i64("memory_bytes", r.memory_bytes)?;
    check_i64("disk_bytes", r.disk_bytes)?;
    check_i64("egress_kbps", r.egress_kbps)
}

fn check_window(w: &Window) -> Result<(), TicketError> {
    check_i64("not_before", w.not_before)?;
    check_i64("not_after", w.not_after)?;
    if w.is_empty() {
        Err(TicketError::EmptyWindow(*w))
    } else {
        Ok(())
    }
}

fn check_name(field: &'static str, value: &str) -> Result<(), TicketError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(TicketError::BadName {
            field,
            value: value.to_owned(),
        })
    }
}

fn check_capability(name: &str) -> Result<(), TicketError> {
    let ok = name.strip_prefix("CAP_").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    });
    if ok {
        Ok(())
    } else {
        Err(TicketError::BadCapability(name.to_owned()))
    }
}

/// An issuing agent's key made ready to mint many tickets: the key is expanded once instead
/// of once per ticket. It can be shared by threads minting in parallel.
pub struct Minter {
    keys: KeyPair,
    issuer: PublicKey,
}

impl fmt::Debug for Minter {
    // Not derived: the key pair is secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// A minter for `issuer`'s tickets.
    pub fn new(issuer: &SecretKey) -> Minter {
        Minter {
            keys: issuer.to_biscuit(),
            issuer: issuer.public(),
        }
    }

    /// The issuing agent's key.
    pub fn issuer(&self) -> PublicKey {
        self.issuer
    }

    /// [`Ticket::mint_priced`] with this minter's key.
    pub fn mint_priced(&self, spec: &TicketSpec, price: u64) -> Result<Ticket, TicketError> {
        self.mint_with_rng(spec, Some(price), &mut rand_core::OsRng)
    }

    /// Mints with `price` (none: format 1, no price stated) and the given random source for
    /// the next-block key.
    pub fn mint_with_rng<R: RngCore + CryptoRng>(
        &self,
        spec: &TicketSpec,
        price: Option<u64>,
        rng: &mut R,
    ) -> Result<Ticket, TicketError> {
        check_name("federation", &spec.federation)?;
        check_name("slice", &spec.slice)?;
        if let SliceKind::Admin { capabilities, .. } = &spec.kind {
            capabilities.iter().try_for_each(|c| check_capability(c))?;
        }
        check_resources(&spec.resources)?;
        check_window(&spec.window)?;
        if let Some(price) = price {
            check_i64("price", price)?;
        }
        if spec.operations.is_empty() {
            return Err(TicketError::NoOperations);
        }
        let authority = Authority {
            issuer: self.issuer,
            federation: spec.federation.clone(),
            node: spec.node,
            slice: spec.slice.clone(),
            kind: spec.kind.clone(),
            grant: spec.resources,
            window: spec.window,
            holder: spec.holder,
            operations: spec.operations.clone(),
            price,
            net: spec.net,
        };
        let builder = Biscuit::builder()
            .fact(vocabulary::ticket_fact(&authority))?
            .root_key_id(key_hint(&self.issuer));
        let next = KeyPair::new_with_rng(Algorithm::Ed25519, rng);
        let token = builder.build_with_key_pair(
            &self.keys,
            biscuit_auth::datalog::SymbolTable::default(),
            &next,
        )?;
        Ok(Ticket {
            token,
            issuer: self.issuer,
        })
    }
}

impl Ticket {
    /// Mints a ticket signed by the issuing agent's key, stating no price (format 1).
    pub fn mint(issuer: &SecretKey, spec: &TicketSpec) -> Result<Ticket, TicketError> {
        Self::mint_with_rng(issuer, spec, &mut rand_core::OsRng)
    }

    /// Mints a ticket that also states the price agreed for it: `price` micro-credits for the
    /// whole window (format 2). This is what agents issue; an agent minting many tickets uses
    /// a [`Minter`].
    pub fn mint_priced(
        issuer: &SecretKey,
        spec: &TicketSpec,
        price: u64,
    ) -> Result<Ticket, TicketError> {
        Minter::new(issuer).mint_priced(spec, price)
    }

    /// [`Ticket::mint`] with the given random source for the next-block key (a seeded source
    /// makes the bytes reproducible, for golden vectors).
    pub fn mint_with_rng<R: RngCore + CryptoRng>(
        issuer: &SecretKey,
        spec: &TicketSpec,
        rng: &mut R,
    ) -> Result<Ticket, TicketError> {
        Minter::new(issuer).mint_with_rng(spec, None, rng)
    }

    /// [`Ticket::mint_priced`] with the given random source for the next-block key.
    pub fn mint_priced_with_rng<R: RngCore + CryptoRng>(
        issuer: &SecretKey,
        spec: &TicketSpec,
        price: u64,
        rng: &mut R,
    ) -> Result<Ticket, TicketError> {
        Minter::new(issuer).mint_with_rng(spec, Some(price), rng)
    }

    /// Appends a block that narrows the ticket; refuses restrictions that would widen it.
    pub fn attenuate(&self, restriction: &Attenuation) -> Result<Ticket, TicketError> {
        self.attenuate_with_rng(restriction, &mut rand_core::OsRng)
    }

    /// [`Ticket::attenuate`] with the given random source for the next-block key.
    pub fn attenuate_with_rng<R: RngCore + CryptoRng>(
        &self,
        restriction: &Attenuation,
        rng: &mut R,
    ) -> Result<Ticket, TicketError> {
        let Attenuation {
            resources,
            window,
            operations,
        } = restriction;
        if resources.is_none() && window.is_none() && operations.is_none() {
            return Err(TicketError::EmptyAttenuation);
        }
        let current = self.contents()?;
        if let Some(r) = resources {
            check_resources(r)?;
            if !r.fits_within(&current.grant) {
                return Err(TicketError::WouldWiden(TicketField::Resources));
            }
        }
        if let Some(w) = window {
            check_window(w)?;
            if !current.window().covers(w) {
                return Err(TicketError::WouldWiden(TicketField::Window));
            }
        }
        if let Some(ops) = operations {
            if !ops.is_subset(&current.operations) {
                return Err(TicketError::WouldWiden(TicketField::Operations));
            }
            if ops.is_empty() {
                return Err(TicketError::NoOperations);
            }
        }
        let fact =
            vocabulary::attenuation_fact(resources.as_ref(), window.as_ref(), operations.as_ref());
        let next = KeyPair::new_with_rng(Algorithm::Ed25519, rng);
        let token = self
            .token
            .append_with_keypair(&next, BlockBuilder::new().fact(fact)?)?;
        Ok(Ticket {
            token,
            issuer: self.issuer,
        })
    }

    /// Delegates the ticket to `next`: a third-party block signed by the current holder.
    pub fn delegate(&self, holder: &SecretKey, next: &PublicKey) -> Result<Ticket, TicketError> {
        self.delegate_with_rng(holder, next, &mut rand_core::OsRng)
    }

    /// [`Ticket::delegate`] with the given random source for the next-block key.
    pub fn delegate_with_rng<R: RngCore + CryptoRng>(
        &self,
        holder: &SecretKey,
        next: &PublicKey,
        rng: &mut R,
    ) -> Result<Ticket, TicketError> {
        let current = self.contents()?;
        let signer = holder.public();
        if current.holder != signer {
            return Err(TicketError::NotHolder {
                holder: current.holder,
                signer,
            });
        }
        if current.holders.contains(next) {
            return Err(TicketError::DelegationLoop(*next));
        }
        let block = BlockBuilder::new().fact(vocabulary::delegate_to_fact(next))?;
        let holder_keys = holder.to_biscuit();
        let signed = self
            .token
            .third_party_request()?
            .create_block(&holder_keys.private(), block)?;
        let next_block_key = KeyPair::new_with_rng(Algorithm::Ed25519, rng);
        let token = self.token.append_third_party_with_keypair(
            holder_keys.public(),
            signed,
            next_block_key,
        )?;
        Ok(Ticket {
            token,
            issuer: self.issuer,
        })
    }

    /// The ticket id (same in every copy).
    pub fn id(&self) -> TicketId {
        ticket_id(&self.token)
    }

    /// The issuing agent's key.
    pub fn issuer(&self) -> PublicKey {
        self.issuer
    }

    /// Blocks in the ticket, authority included.
    pub fn block_count(&self) -> usize {
        self.token.block_count()
    }

    /// The underlying biscuit token.
    pub fn as_biscuit(&self) -> &Biscuit {
        &self.token
    }

    /// What the ticket grants now (after every attenuation and delegation), without checking
    /// it against a node or a request. Runs under the default [`TicketLimits`].
    pub fn contents(&self) -> Result<TicketContents, TicketRefusal> {
        verify::contents(self, &TicketLimits::default())
    }

    /// The wire form (biscuit bytes).
    pub fn to_bytes(&self) -> Result<Vec<u8>, TicketError> {
        Ok(self.token.to_vec()?)
    }

    /// The text form (URL-safe base64 of the bytes), as `biscuit inspect` reads it.
    pub fn to_text(&self) -> Result<String, TicketError> {
        Ok(self.token.to_base64()?)
    }

    /// Parses a ticket and checks its signatures against the trusted issuers, within
    /// [`MAX_TICKET_BYTES`] and [`MAX_TICKET_BLOCKS`].
    pub fn from_bytes(bytes: &[u8], issuers: &TrustedIssuers) -> Result<Ticket, TicketRefusal> {
        verify::parse(bytes, issuers, &TicketLimits::default())
    }

    /// Parses the text form (surrounding whitespace is ignored).
    pub fn from_text(text: &str, issuers: &TrustedIssuers) -> Result<Ticket, TicketRefusal> {
        verify::parse_text(text, issuers, &TicketLimits::default())
    }

    /// Parses a ticket as its holder reads it, without knowing its issuer: every signature is
    /// checked against the issuer key the authority block names, so the ticket is intact and
    /// [`Ticket::contents`] reads what it grants, but nothing says that issuer is trusted
    /// (a node decides that at redeem, with [`Ticket::from_bytes`]). Within the same limits.
    pub fn read(bytes: &[u8]) -> Result<Ticket, TicketRefusal> {
        verify::parse_as_stated(bytes, &TicketLimits::default())
    }

    /// [`Ticket::read`] of the text form (surrounding whitespace is ignored).
    pub fn read_text(text: &str) -> Result<Ticket, TicketRefusal> {
        verify::parse_text_as_stated(text, &TicketLimits::default())
    }
}

fn ticket_id(token: &Biscuit) -> TicketId {
    let mut id = [0u8; 64];
    if let Some(sig) = token.revocation_identifiers().first() {
        let n = sig.len().min(64);
        id[..n].copy_from_slice(&sig[..n]);
    }
    TicketId(id)
}
