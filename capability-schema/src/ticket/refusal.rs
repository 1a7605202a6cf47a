//! Why a ticket is refused ([`TicketRefusal`], node side) or cannot be made
//! ([`TicketError`], agent and holder side).
//!
//! Every refusal names the one check that failed and says, in a sentence, what the presenter
//! can do about it. Refusals are plain data (serde, `Eq`), so a node can send the exact reason
//! back over the wire and tests can assert it.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Operation, Window};
use crate::identity::PublicKey;
use crate::resources::ResourceKind;

/// The part of a ticket a block tried to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketField {
    /// Issuer, federation, slice name or format version.
    Identity,
    /// The node the ticket is for.
    Node,
    /// The slice kind or its Linux capabilities.
    Kind,
    /// The granted resources.
    Resources,
    /// The validity window.
    Window,
    /// The holder.
    Holder,
    /// The allowed operations.
    Operations,
    /// The agreed price (fixed by the issuer).
    Price,
}

impl fmt::Display for TicketField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TicketField::Identity => "identity (issuer, federation or slice)",
            TicketField::Node => "node",
            TicketField::Kind => "slice kind or capabilities",
            TicketField::Resources => "resources",
            TicketField::Window => "validity window",
            TicketField::Holder => "holder",
            TicketField::Operations => "operations",
            TicketField::Price => "agreed price",
        })
    }
}

/// Which evaluation limit a ticket's Datalog exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// Too many facts.
    Facts,
    /// Too many rule iterations.
    Iterations,
    /// Too much time.
    Time,
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LimitKind::Facts => "fact count",
            LimitKind::Iterations => "iteration",
            LimitKind::Time => "time",
        })
    }
}

/// What the holder of a ticket refused for `limit` can do about it.
fn limit_advice(limit: LimitKind) -> &'static str {
    match limit {
        LimitKind::Time => {
            "its Datalog is too costly, or the node is overloaded: retry later, or ask for a \
             ticket with fewer blocks or rules"
        }
        LimitKind::Facts | LimitKind::Iterations => {
            "it carries too much Datalog: ask for a ticket with fewer blocks or rules"
        }
    }
}

fn list(ops: &BTreeSet<Operation>) -> String {
    if ops.is_empty() {
        return "none".to_owned();
    }
    ops.iter()
        .map(|op| op.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a node (or a holder reading a ticket) refuses a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum TicketRefusal {
    /// The ticket is larger than the size cap.
    #[error(
        "ticket of {size} bytes exceeds the {limit}-byte limit; a ticket this large is not one \
         an agent minted: ask the issuer for a fresh ticket"
    )]
    TooLarge {
        /// The size presented.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The ticket has more blocks than accepted.
    #[error(
        "ticket has {blocks} blocks, more than the {limit} accepted; attenuate or delegate a \
         copy with fewer steps"
    )]
    TooManyBlocks {
        /// Blocks in the ticket.
        blocks: usize,
        /// The cap.
        limit: usize,
    },
    /// The bytes end in the middle of the ticket.
    #[error("ticket is truncated: its bytes end inside a block; send the whole ticket again")]
    Truncated,
    /// The bytes are not a PlanetMesh ticket.
    #[error(
        "ticket is not readable ({reason}); it was corrupted in transit or is not a PlanetMesh \
         ticket: send it again exactly as the issuer returned it"
    )]
    Malformed {
        /// What is wrong, for logs.
        reason: String,
    },
    /// The ticket's issuer is not an agent this node trusts.
    #[error(
        "ticket was issued by agent key {key_hint}, which this node does not trust; get a \
         ticket from an agent this node has delegated resources to"
    )]
    UnknownIssuer {
        /// The issuer's key hint (first 8 hex digits of its key), or `none`.
        key_hint: String,
    },
    /// A signature in the ticket does not verify.
    #[error(
        "ticket signature does not verify: it was altered after signing, or signed by another \
         key than its issuer's; ask the issuer for a fresh ticket"
    )]
    BadSignature,
    /// An appended block tries to grant more than the issuer did.
    #[error(
        "a block appended to this ticket tries to grant more {field} than the issuer did; \
         tickets can only be narrowed: ask the issuer for a ticket with what you need"
    )]
    Widened {
        /// What the block tried to widen.
        field: TicketField,
    },
    /// A third-party block is not signed by the holder of the ticket at that point.
    #[error(
        "block {block} delegates the ticket but is signed by {signer}, not by {holder} who held \
         it at that point; only the current holder can delegate a ticket"
    )]
    DelegationNotByHolder {
        /// Index of the block.
        block: usize,
        /// Who signed it (text form).
        signer: String,
        /// Who held the ticket.
        holder: PublicKey,
    },
    /// A holder-signed block does not name exactly one next holder.
    #[error(
        "block {block} is signed by the holder but does not name exactly one next holder; \
         delegate again with a single `delegate_to`"
    )]
    MalformedDelegation {
        /// Index of the block.
        block: usize,
    },
    /// The ticket is delegated back to an earlier holder.
    #[error(
        "ticket is delegated back to {holder}, who held it before; delegate only to new \
         holders, or present an earlier copy of the ticket"
    )]
    DelegationLoop {
        /// The repeated holder.
        holder: PublicKey,
    },
    /// A block the holder did not sign names a new holder.
    #[error(
        "ticket names a new holder in a block its holder did not sign; only a third-party block \
         signed by the current holder delegates a ticket"
    )]
    ForgedDelegation,
    /// The presenter is not the ticket's final holder.
    #[error(
        "ticket is held by {holder} but was presented by {presenter}; present it with the \
         holder's key, or have the holder delegate it to {presenter} first"
    )]
    WrongPresenter {
        /// The final holder.
        holder: PublicKey,
        /// Who presented it.
        presenter: PublicKey,
    },
    /// The ticket is for another node.
    #[error(
        "ticket is for node {ticket_node}, not this node {this_node}; redeem it at {ticket_node}"
    )]
    WrongNode {
        /// The node the ticket names.
        ticket_node: PublicKey,
        /// The node it was presented to.
        this_node: PublicKey,
    },
    /// The ticket's window has not started.
    #[error(
        "ticket is not valid before {not_before} (unix seconds; now {now}); present it later \
         or ask for a ticket that starts now"
    )]
    NotYetValid {
        /// Effective start of the window.
        not_before: u64,
        /// The node's clock.
        now: u64,
    },
    /// The ticket's window has ended.
    #[error(
        "ticket expired at {not_after} (unix seconds; now {now}); ask the issuer for a new \
         ticket"
    )]
    Expired {
        /// Effective end of the window.
        not_after: u64,
        /// The node's clock.
        now: u64,
    },
    /// The operation asked is not among those the ticket allows.
    #[error(
        "ticket does not allow {operation} (it allows: {allowed}); ask for a ticket that allows \
         {operation}", allowed = list(allowed)
    )]
    OperationNotAllowed {
        /// The operation asked.
        operation: Operation,
        /// What the ticket allows (effective).
        allowed: BTreeSet<Operation>,
    },
    /// More of one resource asked than the (effective) grant.
    #[error(
        "{kind}: {} asked but the ticket grants only {}; ask for at most that, or get a ticket \
         with more", kind.format(*asked), kind.format(*granted)
    )]
    OverAsked {
        /// Which resource.
        kind: ResourceKind,
        /// Amount asked.
        asked: u64,
        /// Amount granted.
        granted: u64,
    },
    /// The lease window asked is outside the ticket's window.
    #[error(
        "lease window {asked} asked, but the ticket is valid only for {granted}; ask for a \
         window inside it"
    )]
    WindowNotGranted {
        /// Window asked.
        asked: Window,
        /// Effective window of the ticket.
        granted: Window,
    },
    /// A check added by a block does not hold for this request.
    #[error(
        "block {block} of the ticket adds a condition this request does not meet: {check}; \
         change the request or use a copy of the ticket without that block"
    )]
    BlockCheckFailed {
        /// Index of the block.
        block: u32,
        /// The check, as Datalog.
        check: String,
    },
    /// Evaluating the ticket exceeded a limit.
    #[error("evaluating the ticket exceeded the {limit} limit; {}", limit_advice(*limit))]
    LimitsExceeded {
        /// Which limit.
        limit: LimitKind,
    },
}

impl TicketRefusal {
    /// A short machine-readable name of the check that failed (for metrics and logs).
    pub fn code(&self) -> &'static str {
        match self {
            TicketRefusal::TooLarge { .. } => "too_large",
            TicketRefusal::TooManyBlocks { .. } => "too_many_blocks",
            TicketRefusal::Truncated => "truncated",
            TicketRefusal::Malformed { .. } => "malformed",
            TicketRefusal::UnknownIssuer { .. } => "unknown_issuer",
            TicketRefusal::BadSignature => "bad_signature",
            TicketRefusal::Widened { .. } => "widened",
            TicketRefusal::DelegationNotByHolder { .. } => "delegation_not_by_holder",
            TicketRefusal::MalformedDelegation { .. } => "malformed_delegation",
            TicketRefusal::DelegationLoop { .. } => "delegation_loop",
            TicketRefusal::ForgedDelegation => "forged_delegation",
            TicketRefusal::WrongPresenter { .. } => "wrong_presenter",
            TicketRefusal::WrongNode { .. } => "wrong_node",
            TicketRefusal::NotYetValid { .. } => "not_yet_valid",
            TicketRefusal::Expired { .. } => "expired",
            TicketRefusal::OperationNotAllowed { .. } => "operation_not_allowed",
            TicketRefusal::OverAsked { .. } => "over_asked",
            TicketRefusal::WindowNotGranted { .. } => "window_not_granted",
            TicketRefusal::BlockCheckFailed { .. } => "block_check_failed",
            TicketRefusal::LimitsExceeded { .. } => "limits_exceeded",
        }
    }
}

/// Why a ticket could not be minted, attenuated, delegated or serialized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// A number does not fit the ticket's signed 64-bit integers.
    #[error("{field} = {value} is too large for a ticket (at most {max})", max = i64::MAX)]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// The value given.
        value: u64,
    },
    /// The validity window is empty.
    #[error("empty validity window [{}, {}): not_after must be later than not_before", .0.not_before, .0.not_after)]
    EmptyWindow(Window),
    /// A name is empty, too long or contains characters other than `[A-Za-z0-9._-]`.
    #[error(
        "{field} {value:?} is not a valid name: use 1 to 64 characters from A-Z, a-z, 0-9, \
         '.', '_' and '-'"
    )]
    BadName {
        /// Which field.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// A Linux capability name is not `CAP_…`.
    #[error("{0:?} is not a Linux capability name (expected e.g. CAP_NET_ADMIN)")]
    BadCapability(String),
    /// The ticket would allow no operation.
    #[error("a ticket must allow at least one operation")]
    NoOperations,
    /// The attenuation restricts nothing.
    #[error("the attenuation restricts nothing; give resources, a window or operations")]
    EmptyAttenuation,
    /// The attenuation asks for more than the ticket grants now.
    #[error("the attenuation would widen the ticket's {0}; attenuations can only narrow")]
    WouldWiden(TicketField),
    /// Only the current holder can delegate.
    #[error("the ticket is held by {holder}, not by {signer}; only its holder can delegate it")]
    NotHolder {
        /// The current holder.
        holder: PublicKey,
        /// The key that tried to delegate.
        signer: PublicKey,
    },
    /// The new holder held the ticket before (or holds it now).
    #[error("{0} holds or held this ticket already; delegate to a new holder")]
    DelegationLoop(PublicKey),
    /// The ticket is sealed: no block can be appended.
    #[error("the ticket is sealed; no block can be appended to it")]
    Sealed,
    /// The ticket itself is refused.
    #[error("the ticket is not usable: {0}")]
    Refused(#[from] TicketRefusal),
    /// biscuit-auth failed (serialization, signing).
    #[error("token library error: {0}")]
    Token(String),
}

impl From<biscuit_auth::error::Token> for TicketError {
    fn from(e: biscuit_auth::error::Token) -> Self {
        match e {
            biscuit_auth::error::Token::AppendOnSealed => TicketError::Sealed,
            other => TicketError::Token(other.to_string()),
        }
    }
}
