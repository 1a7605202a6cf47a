//! Rejections: why a node, agent or broker said no, in terms a person can act on.
//!
//! Every error reply on the wire is an [`ErrorReply`]: a machine-readable [`Rejection`] plus
//! the human sentence it renders to. Variants carry the numbers that matter ("memory 512MiB
//! asked, 128MiB free under agent A's share"), never a bare "insufficient resources".

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::resources::ResourceKind;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// The request could not be decoded.
    #[error("malformed request: {detail}")]
    Malformed {
        /// What was wrong.
        detail: String,
    },
    /// The ticket failed verification.
    #[error("ticket refused: {detail}")]
    Ticket {
        /// Which check failed (machine-readable, e.g. `expired`, `wrong_presenter`).
        check: String,
        /// The sentence.
        detail: String,
    },
    /// The node has too little free capacity.
    #[error("node {}: {kind} {} asked, {} free of the node's capacity", node.short(), kind.format(*asked), kind.format(*free))]
    OverCapacity {
        /// The node.
        node: PublicKey,
        /// The resource that is short.
        kind: ResourceKind,
        /// How much was asked.
        asked: u64,
        /// How much is free.
        free: u64,
    },
    /// The issuing agent's share on this node is too small.
    #[error("agent {}'s share: {} of {} in use, {} asked", agent.short(), kind.format(*in_use), kind.format(*share), kind.format(*asked))]
    OverShare {
        /// The agent.
        agent: PublicKey,
        /// The resource that is short.
        kind: ResourceKind,
        /// In use under the share.
        in_use: u64,
        /// The share.
        share: u64,
        /// How much was asked.
        asked: u64,
    },
    /// The ticket has already been spent up to its grant.
    #[error("ticket {ticket_id} is already spent ({detail})")]
    AlreadySpent {
        /// The ticket id.
        ticket_id: String,
        /// What was spent.
        detail: String,
    },
    /// No such lease on this node.
    #[error("no lease {lease_id} on this node (it may have expired or been released)")]
    UnknownLease {
        /// The lease id asked for.
        lease_id: String,
    },
    /// The caller does not hold the lease.
    #[error("lease {lease_id} is held by {}, not by the caller", holder.short())]
    NotHolder {
        /// The lease.
        lease_id: String,
        /// Its holder.
        holder: PublicKey,
    },
    /// Renewal asked past what the ticket allows.
    #[error(
        "renewal to {asked} refused: the ticket ends at {not_after}; get a new ticket to go further"
    )]
    RenewPastTicket {
        /// The end asked.
        asked: u64,
        /// The ticket's end.
        not_after: u64,
    },
    /// The caller is not a known principal.
    #[error("unknown principal {}: ask the federation authority for a membership certificate", principal.short())]
    UnknownPrincipal {
        /// The principal.
        principal: PublicKey,
    },
    /// A policy rule refused the request.
    #[error("policy rule {rule:?}: {detail}")]
    Policy {
        /// The rule's name.
        rule: String,
        /// The sentence.
        detail: String,
    },
    /// The principal's federation has no peering agreement with this one.
    #[error("no peering agreement serves principals of federation {federation:?} here")]
    NoPeering {
        /// The principal's federation.
        federation: String,
    },
    /// No feasible placement.
    #[error("unsatisfiable: {detail}")]
    Unsatisfiable {
        /// The binding constraint and what would make the request satisfiable.
        detail: String,
    },
    /// A party could not be reached or did not answer in time.
    #[error("{party} unreachable: {detail}")]
    Unreachable {
        /// Who.
        party: String,
        /// What happened.
        detail: String,
    },
    /// The server is shutting down or overloaded; retry later.
    #[error("unavailable: {detail}; retry later")]
    Unavailable {
        /// Why.
        detail: String,
    },
    /// A failure inside the server (the sliver could not be created, storage failed, …).
    #[error("internal error: {detail}")]
    Internal {
        /// What failed.
        detail: String,
    },
}

impl Rejection {
    /// A short machine-readable code (the variant's name in snake case).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Malformed { .. } => "malformed",
            Rejection::Ticket { .. } => "ticket",
            Rejection::OverCapacity { .. } => "over_capacity",
            Rejection::OverShare { .. } => "over_share",
            Rejection::AlreadySpent { .. } => "already_spent",
            Rejection::UnknownLease { .. } => "unknown_lease",
            Rejection::NotHolder { .. } => "not_holder",
            Rejection::RenewPastTicket { .. } => "renew_past_ticket",
            Rejection::UnknownPrincipal { .. } => "unknown_principal",
            Rejection::Policy { .. } => "policy",
            Rejection::NoPeering { .. } => "no_peering",
            Rejection::Unsatisfiable { .. } => "unsatisfiable",
            Rejection::Unreachable { .. } => "unreachable",
            Rejection::Unavailable { .. } => "unavailable",
            Rejection::Internal { .. } => "internal",
        }
    }
}

/// An error reply: the reason and its sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The machine-readable reason.
    pub reason: Rejection,
    /// The sentence a person reads.
    pub message: String,
}

impl From<Rejection> for ErrorReply {
    fn from(reason: Rejection) -> Self {
        let message = reason.to_string();
        ErrorReply { reason, message }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorReply {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_key;

    #[test]
    fn over_share_reads_like_a_sentence() {
        let agent = test_key(1).public();
        let r = Rejection::OverShare {
            agent,
            kind: ResourceKind::Cpu,
            in_use: 1500,
            share: 2000,
            asked: 1000,
        };
        let text = r.to_string();
        assert_eq!(
            text,
            format!(
                "agent {}'s share: 1500m of 2 cores in use, 1 core asked",
                agent.short()
            )
        );
        let reply = ErrorReply::from(r.clone());
        assert_eq!(reply.reason.code(), "over_share");
        assert_eq!(reply.message, text);
    }
}
