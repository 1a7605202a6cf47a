//! Trust between testbeds: who is who, and who peers with whom.
//!
//! A federation is a name plus an authority key ([`Authority`]). The authority signs
//! membership certificates, peering agreements with other federations and revocation lists
//! (the data types live in `capability_schema::membership`). A [`TrustStore`] holds the
//! authorities a party trusts, the agreements and the revocation lists it has seen, and
//! answers the questions every daemon asks:
//!
//! - [`TrustStore::check_member`]: is this certificate a valid `role` of a trusted federation now?
//! - [`TrustStore::serves`]: may my federation serve the holder of this certificate, and under
//!   which agreement?
//! - [`TrustStore::validate_ad`]: may this resource advertisement be believed and relayed?
//!
//! Every refusal is a typed error ([`TrustError`], [`AdRejection`]) naming the check that
//! failed, so callers can turn it into a sentence an operator can act on.

mod ads;
mod authority;
mod files;
mod store;

pub use ads::{AdRejection, CertCache, MAX_CLOCK_SKEW_SECS};
pub use authority::{
    ANCHOR_FILE, Authority, AuthorityError, AuthorityState, FederationAnchor, KEY_FILE,
    MAX_FEDERATION_NAME, Revoke, STATE_FILE, Validity, check_federation_name,
};
pub use files::{FileError, read_signed, write_signed};
pub use store::{FederationRef, Served, TrustError, TrustStore, qualified};
