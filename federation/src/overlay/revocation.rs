//! Revocation lists in the overlay: how a list is judged, applied and handed on.
//!
//! How lists flow:
//! 1. A list reaches a daemon three ways: from its config at start
//!    ([`super::OverlayConfig::revocations`]), on its federation's revocation topic (gossip),
//!    or in a revocation exchange ([`REVOCATION_PROTOCOL`](capability_schema::membership::REVOCATION_PROTOCOL)):
//!    at every new connection both sides send the versions they hold and answer with their
//!    newer lists, and `fedctl publish` offers a list to one peer the same way.
//! 2. Every list is judged by the shared trust store ([`crate::TrustStore::add_revocation`]):
//!    signed by the federation's trusted authority, and newer than the list held. A newer list
//!    is applied to the store at once (every check that consults it sees it from then on),
//!    the daemon is told ([`super::OverlayHandle::revocations`]) and the list is gossiped on.
//! 3. On gossip, a list already held or older is ignored (two versions racing along
//!    different paths reach honest relays); one with a bad signature, of another authority
//!    or on another federation's topic is rejected, and the relaying peer loses gossip score.

use capability_schema::codec;
use capability_schema::membership::{RevocationSync, RevocationVerdict};
use capability_schema::{RevocationList, Signed};

use super::{MAX_AD_BYTES, SharedTrust};
use crate::trust::TrustError;

/// The largest revocation list accepted or published (the same cap as an ad's).
pub const MAX_REVOCATION_BYTES: usize = MAX_AD_BYTES;

/// What became of a list, as the overlay acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Judged {
    /// Newer than the one held: applied.
    Applied(RevocationList),
    /// The version held already.
    Held(RevocationList),
    /// Older than the one held.
    Stale {
        /// The federation.
        federation: String,
        /// The version offered.
        version: u64,
        /// The version held.
        have: u64,
    },
    /// Of a federation this daemon has no authority for (nobody to blame: a peer of several
    /// federations hands on what it holds).
    Unknown(TrustError),
    /// Forged, of another authority or undecodable: misbehaviour of whoever sent it.
    Invalid(String),
}

impl Judged {
    /// The verdict told to whoever offered the list.
    pub(crate) fn verdict(&self) -> RevocationVerdict {
        match self {
            Judged::Applied(list) => RevocationVerdict::Applied {
                federation: list.federation.clone(),
                version: list.version,
            },
            Judged::Held(list) => RevocationVerdict::Held {
                federation: list.federation.clone(),
                version: list.version,
            },
            Judged::Stale {
                federation,
                version,
                have,
            } => RevocationVerdict::Stale {
                federation: federation.clone(),
                version: *version,
                have: *have,
            },
            Judged::Unknown(error) => RevocationVerdict::Refused {
                reason: error.to_string(),
            },
            Judged::Invalid(reason) => RevocationVerdict::Refused {
                reason: reason.clone(),
            },
        }
    }
}

/// Judges `signed` against the store and applies it if it is newer.
pub(crate) fn apply(trust: &SharedTrust, signed: &Signed<RevocationList>) -> Judged {
    let list = match signed.verify() {
        Ok(list) => list,
        Err(error) => return Judged::Invalid(format!("revocation list signature: {error}")),
    };
    let mut store = trust
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match store.add_revocation(signed) {
        Ok(true) => Judged::Applied(list),
        Ok(false) => Judged::Held(list),
        Err(TrustError::StaleRevocation {
            federation,
            version,
            have,
        }) => Judged::Stale {
            federation,
            version,
            have,
        },
        Err(
            error @ (TrustError::UnknownFederation(_) | TrustError::UnanchoredAuthority { .. }),
        ) => Judged::Unknown(error),
        Err(error) => Judged::Invalid(error.to_string()),
    }
}

/// Decodes a list from gossip or an exchange (capped at [`MAX_REVOCATION_BYTES`]).
pub(crate) fn decode_list(bytes: &[u8]) -> Result<Signed<RevocationList>, String> {
    codec::decode_with_limit::<Signed<RevocationList>>(bytes, MAX_REVOCATION_BYTES)
        .map_err(|e| format!("not a signed revocation list: {e}"))
}

/// The exchange this daemon opens with a new peer: the versions it holds.
pub(crate) fn opening(trust: &SharedTrust) -> RevocationSync {
    let store = trust
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    RevocationSync {
        have: store.revocation_versions(),
        offer: Vec::new(),
    }
}

/// The lists held that are newer than what an asker holds (`have`), or of federations it
/// holds none of.
pub(crate) fn newer(trust: &SharedTrust, have: &[(String, u64)]) -> Vec<Signed<RevocationList>> {
    let store = trust
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    store
        .revocation_versions()
        .into_iter()
        .filter(|(federation, version)| !have.iter().any(|(f, v)| f == federation && v >= version))
        .filter_map(|(federation, _)| store.signed_revocation(&federation).cloned())
        .collect()
}
