//! Federation trust objects: membership certificates, peering agreements, revocation lists.
//!
//! A federation is a name plus an authority key. The authority signs:
//! - [`MembershipCert`]: "this key is a node | agent | broker | principal of federation F, at
//!   site S, until T";
//! - [`PeeringAgreement`]: "federation F serves these roles and principals of federation G,
//!   within these limits, until T";
//! - [`RevocationList`]: certificates, keys, delegations and tickets the authority no longer
//!   stands behind, and the messages daemons exchange them with ([`RevocationSync`]).
//!
//! These are plain signed data; how a trust store evaluates them lives in the `federation`
//! crate.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::resources::Resources;
use crate::signed::{Signed, SignedType};
use crate::ticket::TicketId;

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
///
/// A list names what it revokes four ways, and a daemon that holds it refuses all of it at
/// once (the newest version per federation replaces the previous one, so every list repeats
/// everything still revoked):
/// - `serials`: certificates and agreements by serial;
/// - `keys`: every certificate of a key, whatever its role (node, agent, broker, principal),
///   and the key wherever it appears in a ticket (issuer, holder, presenter);
/// - `delegations`: a node's delegations to an agent signed at or before a time (a delegation
///   signed later, after the operator fixed what was wrong, stands again);
/// - `tickets`: tickets by id (every copy, attenuation and delegation of a ticket shares it).
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
    /// Revoked keys (every certificate of these keys, and these keys in tickets).
    pub keys: Vec<PublicKey>,
    /// Revoked delegations.
    pub delegations: Vec<RevokedDelegation>,
    /// Revoked tickets, by id.
    #[serde(with = "ticket_ids")]
    pub tickets: Vec<TicketId>,
}

impl SignedType for RevocationList {
    const DOMAIN: &'static str = "planetmesh/revocation/v2";
}

impl RevocationList {
    /// Whether the list revokes nothing at all.
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
            && self.keys.is_empty()
            && self.delegations.is_empty()
            && self.tickets.is_empty()
    }

    /// The revoked delegation covering `node`'s delegation to `agent` signed at `issued_at`.
    pub fn revoked_delegation(
        &self,
        node: &PublicKey,
        agent: &PublicKey,
        issued_at: u64,
    ) -> Option<&RevokedDelegation> {
        self.delegations
            .iter()
            .find(|d| d.node == *node && d.agent == *agent && issued_at <= d.issued_until)
    }

    /// How refusals name the list: `"plc"'s revocation list v3 (issued at 1780000000)`.
    pub fn describe(&self) -> String {
        format!(
            "{:?}'s revocation list v{} (issued at {})",
            self.federation, self.version, self.issued_at
        )
    }
}

/// A node's delegations to an agent, revoked up to a time.
///
/// A delegation has no serial of its own: it is named by who signed it for whom and when,
/// so one entry revokes every delegation `node` signed to `agent` at or before
/// `issued_until` (the ones in ads already out, and their renewals up to then), and the node
/// stands behind a delegation it signs afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RevokedDelegation {
    /// The delegating node.
    pub node: PublicKey,
    /// The agent it delegated to.
    pub agent: PublicKey,
    /// Unix seconds: delegations signed at or before this are revoked.
    pub issued_until: u64,
}

/// Serde for a list of ticket ids as CBOR byte strings (64 bytes each), for
/// `#[serde(with = "capability_schema::membership::ticket_ids")]`.
pub mod ticket_ids {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    use crate::ticket::TicketId;

    /// Writes the ids as byte strings.
    pub fn serialize<S: Serializer>(ids: &[TicketId], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(ids.iter().map(|id| Bytes::new(id.as_bytes())))
    }

    /// Reads byte strings of 64 bytes as ids.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TicketId>, D::Error> {
        Vec::<ByteBuf>::deserialize(d)?
            .into_iter()
            .map(|bytes| {
                let bytes: [u8; 64] = bytes.into_vec().try_into().map_err(|b: Vec<u8>| {
                    D::Error::custom(format!("a ticket id is 64 bytes, not {}", b.len()))
                })?;
                Ok(TicketId::from_bytes(bytes))
            })
            .collect()
    }
}

/// The request-response protocol daemons exchange revocation lists on: at every new
/// connection each side tells the other the versions it holds and gets the newer lists back,
/// and `fedctl publish` offers a list to one peer, which validates and gossips it.
pub const REVOCATION_PROTOCOL: &str = "/planetmesh/revocation/1";

/// The gossip topic of the revocation lists of the federation of `authority`, named by the
/// key (hex), not the federation's name: a federation is its authority's key, and two
/// federations of the same name have two topics.
pub fn revocation_topic(authority: &PublicKey) -> String {
    format!(
        "planetmesh/revocations/{}/2",
        hex::encode(authority.as_bytes())
    )
}

/// The gossip topic of the ads of the federation of `authority`, named by the key (hex), as
/// [`revocation_topic`] is.
pub fn ad_topic(authority: &PublicKey) -> String {
    format!("/planetmesh/ads/{}/2", hex::encode(authority.as_bytes()))
}

/// A revocation exchange: what the asker holds, and lists it offers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationSync {
    /// Per federation, the version of the list the asker holds.
    pub have: Vec<(String, u64)>,
    /// Lists the asker offers (the answerer validates each, keeps and gossips the newer).
    pub offer: Vec<Signed<RevocationList>>,
}

/// The answer to a [`RevocationSync`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationSyncReply {
    /// The answerer's lists newer than what the asker holds (or of federations it lacks).
    pub newer: Vec<Signed<RevocationList>>,
    /// What became of each offered list, in order.
    pub verdicts: Vec<RevocationVerdict>,
}

/// What a daemon did with a revocation list offered to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationVerdict {
    /// Newer than the one held: applied at once and gossiped.
    Applied {
        /// The federation.
        federation: String,
        /// The version now held.
        version: u64,
    },
    /// The same version is held already (nothing to do).
    Held {
        /// The federation.
        federation: String,
        /// The version held.
        version: u64,
    },
    /// Older than the one held: ignored.
    Stale {
        /// The federation.
        federation: String,
        /// The version offered.
        version: u64,
        /// The version held.
        have: u64,
    },
    /// Refused (signature, unknown or wrong authority); the sentence says why.
    Refused {
        /// Why.
        reason: String,
    },
}

impl fmt::Display for RevocationVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevocationVerdict::Applied {
                federation,
                version,
            } => write!(f, "applied: {federation:?} now holds list v{version}"),
            RevocationVerdict::Held {
                federation,
                version,
            } => write!(f, "already held: {federation:?} list v{version}"),
            RevocationVerdict::Stale {
                federation,
                version,
                have,
            } => write!(
                f,
                "ignored: {federation:?} list v{version} is older than the v{have} held"
            ),
            RevocationVerdict::Refused { reason } => write!(f, "refused: {reason}"),
        }
    }
}
