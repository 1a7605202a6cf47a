//! What happened to a holder's leases on a node, and reading a spawn log from an offset: the
//! node protocol's `Events` and `LogsFrom` requests.
//!
//! A node writes a [`LeaseEvent`] to its ledger whenever one of its leases changes: created
//! (the redeem's sliver exists), renewed, frozen and thawed (the disk watchdog), released by
//! its holder, reaped at its end, lost (its sliver was gone when the node restarted) or ended
//! early (a revocation). Events are numbered by the node in the order it wrote them
//! ([`LeaseEvent::seq`]), so a caller asks for those after the last it saw
//! ([`EventQuery::after`]). The node answers only the caller's own leases' events.
//!
//! Both requests are additions to `/planetmesh/node/1`: a node that predates them answers the
//! `malformed` refusal (it cannot decode the request), which callers read as "this node keeps
//! no events" instead of a failure of the whole command. An event kind a caller does not know
//! (from a newer node) decodes as [`LeaseEventKind::Other`].

use std::fmt;

use serde::{Deserialize, Serialize};

/// What happened to a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseEventKind {
    /// The sliver exists and the lease is active (a redeem, or a restart completing one).
    Created,
    /// The lease's end moved ([`LeaseEvent::end`] is the new end).
    Renewed,
    /// The disk watchdog froze the sliver (over its disk grant).
    Frozen,
    /// The disk watchdog let the sliver run again (back under its grant).
    Thawed,
    /// Its holder released it.
    Released,
    /// It reached its end and the node destroyed its sliver.
    Reaped,
    /// Its sliver was gone when the node restarted; the lease was dropped.
    Lost,
    /// The node ended it early ([`LeaseEvent::reason`] says why: a revocation).
    Ended,
    /// A kind this build does not know (from a newer node).
    #[serde(other)]
    Other,
}

impl LeaseEventKind {
    /// The kind's name as the wire and `--json` spell it.
    pub fn name(self) -> &'static str {
        match self {
            LeaseEventKind::Created => "created",
            LeaseEventKind::Renewed => "renewed",
            LeaseEventKind::Frozen => "frozen",
            LeaseEventKind::Thawed => "thawed",
            LeaseEventKind::Released => "released",
            LeaseEventKind::Reaped => "reaped",
            LeaseEventKind::Lost => "lost",
            LeaseEventKind::Ended => "ended",
            LeaseEventKind::Other => "other",
        }
    }

    /// Whether the lease is over after this event.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            LeaseEventKind::Released
                | LeaseEventKind::Reaped
                | LeaseEventKind::Lost
                | LeaseEventKind::Ended
        )
    }
}

impl fmt::Display for LeaseEventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One thing that happened to a lease, as its node recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEvent {
    /// The node's number for it: increasing in the order the node wrote its events.
    pub seq: u64,
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// The lease.
    pub lease_id: String,
    /// The lease's slice.
    pub slice: String,
    /// What happened.
    pub kind: LeaseEventKind,
    /// The lease's end after the event (Unix seconds), when the event sets it (created,
    /// renewed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
    /// Why, in a sentence, when the node knows more than the kind says ("over disk limit: …",
    /// "principal revoked by …").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Which events a caller asks for (`NodeRequest::Events`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventQuery {
    /// Only this slice's (none: every slice of the caller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    /// Only events numbered above this ([`LeaseEvent::seq`]; 0: from the oldest kept).
    pub after: u64,
}

/// A node's answer to `Events`: the caller's events after the one asked, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEvents {
    /// The events, oldest first (at most [`LeaseEvents::MAX`]).
    pub events: Vec<LeaseEvent>,
    /// Whether more follow: ask again after the last one's `seq`.
    pub more: bool,
}

impl LeaseEvents {
    /// The most events one answer carries.
    pub const MAX: usize = 1000;
}

/// A piece of a sliver's spawn log (`NodeRequest::LogsFrom`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    /// The log's size in bytes when the node read it: below the offset asked, the log was
    /// cut or started again, and the caller reads from 0.
    pub size: u64,
    /// The bytes from the offset asked (at most the count asked; the log may have grown
    /// past `size` meanwhile, so this may reach beyond it).
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl LogChunk {
    /// The most bytes one chunk carries.
    pub const MAX_BYTES: u64 = 1 << 20;
}
