//! Federation trust objects: membership certificates, peering agreements, revocation lists.
//!
//! A federation is a name plus an authority key. The authority signs:
//! - [`MembershipCert`]: "this key is a node | agent | broker | principal of federation F, at
//!   site S, until T";
//! - [`PeeringAgreement`]: "federation F serves these roles and principals of federation G,
//!   within these limits, until T";
//! - [`RevocationList`]: certificates and keys the authority no longer stands behind.
//!
//! These are plain signed data; how a trust store evaluates them lives in the `federation`
//! crate.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::resources::Resources;
use crate::signed::SignedType;

/// What a member of a federation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A node that hosts slivers.
    Node,
    /// An agent that mints tickets.
    Agent,
    /// A broker that assembles slices.
    Broker,
    /// A person or service (a slice's principal).
    Principal,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Node, Role::Agent, Role::Broker, Role::Principal];
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Node => "node",
            Role::Agent => "agent",
            Role::Broker => "broker",
            Role::Principal => "principal",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "node" => Ok(Role::Node),
            "agent" => Ok(Role::Agent),
            "broker" => Ok(Role::Broker),
            "principal" | "user" => Ok(Role::Principal),
            other => Err(format!(
                "unknown role {other:?}: expected node, agent, broker or principal"
            )),
        }
    }
}

/// "`subject` is a `role` of `federation`, at `site`, from `issued_at` until `expires_at`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipCert {
    /// The federation's name.
    pub federation: String,
    /// The federation's authority key (the signer).
    pub authority: PublicKey,
    /// The certified key.
    pub subject: PublicKey,
    /// What the subject is.
    pub role: Role,
    /// The site (institution) of the subject, used for site spread.
    pub site: String,
    /// A human name for the subject (host name, person's name).
    pub name: String,
    /// Serial number, unique per authority (revocation names it).
    pub serial: u64,
    /// Unix seconds from which the certificate is valid.
    pub issued_at: u64,
    /// Unix seconds after which it is not.
    pub expires_at: u64,
}

impl SignedType for MembershipCert {
    const DOMAIN: &'static str = "planetmesh/membership/v1";
}

/// Which principals of the other federation an agreement covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalFilter {
    /// Every certified principal of the other federation.
    All,
    /// Only these keys.
    Only(Vec<PublicKey>),
}

impl PrincipalFilter {
    /// Whether `key` is covered.
    pub fn admits(&self, key: &PublicKey) -> bool {
        match self {
            PrincipalFilter::All => true,
            PrincipalFilter::Only(keys) => keys.contains(key),
        }
    }
}

/// Limits a federation puts on what it serves to a peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeeringLimits {
    /// At most this many slivers at once per principal of the peer (none: no limit).
    pub max_slivers_per_principal: Option<u32>,
    /// At most these resources at once for all the peer's principals (none: no limit).
    pub max_total: Option<Resources>,
    /// At most this lease duration in seconds (none: no limit).
    pub max_duration_secs: Option<u64>,
}

/// "`federation` serves `roles` and `principals` of `peer_federation`, within `limits`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeeringAgreement {
    /// The serving federation.
    pub federation: String,
    /// Its authority (the signer).
    pub authority: PublicKey,
    /// The federation served.
    pub peer_federation: String,
    /// Its authority key.
    pub peer_authority: PublicKey,
    /// Which roles of the peer are served (for example brokers and principals).
    pub roles: Vec<Role>,
    /// Which principals of the peer are served.
    pub principals: PrincipalFilter,
    /// Limits on what is served.
    pub limits: PeeringLimits,
    /// Serial number, unique per authority.
    pub serial: u64,
    /// Unix seconds from which the agreement holds.
    pub issued_at: u64,
    /// Unix seconds after which it does not.
    pub expires_at: u64,
}

impl SignedType for PeeringAgreement {
    const DOMAIN: &'static str = "planetmesh/peering/v1";
}

/// What an authority no longer stands behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// The federation.
    pub federation: String,
    /// Its authority (the signer).
    pub authority: PublicKey,
    /// Version: a trust store keeps the highest it has seen.
    pub version: u64,
    /// Unix seconds of issue.
    pub issued_at: u64,
    /// Revoked certificate and agreement serials.
    pub serials: Vec<u64>,
    /// Revoked keys (every certificate of these keys).
    pub keys: Vec<PublicKey>,
}

impl SignedType for RevocationList {
    const DOMAIN: &'static str = "planetmesh/revocation/v1";
}
