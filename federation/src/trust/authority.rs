//! A federation authority: the key that signs membership, peering and revocation.
//!
//! An [`Authority`] lives in a directory of its own:
//!
//! | file | content |
//! |---|---|
//! | `authority.key` | the secret key (`ed25519-private/<hex>`, mode 0600) |
//! | `authority.cbor` | the name, the next serial number and everything revoked so far |
//! | `anchor.cbor` | the self-signed [`FederationAnchor`] to hand to other parties |
//!
//! Serial numbers are handed out in order, so a revocation can name them; every revocation
//! list the authority signs contains everything it revoked before, with a higher version.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use capability_schema::codec::{self, DecodeError};
use capability_schema::membership::{PeeringLimits, PrincipalFilter, RevokedDelegation};
use capability_schema::{
    KeyError, MembershipCert, PeeringAgreement, PublicKey, RevocationList, Role, SecretKey, Signed,
    SignedType, TicketId,
};
use serde::{Deserialize, Serialize};

/// File name of the authority's secret key in its directory.
pub const KEY_FILE: &str = "authority.key";
/// File name of the authority's state in its directory.
pub const STATE_FILE: &str = "authority.cbor";
/// File name of the authority's self-signed anchor in its directory.
pub const ANCHOR_FILE: &str = "anchor.cbor";

/// The longest federation name accepted.
pub const MAX_FEDERATION_NAME: usize = 64;

/// Errors of an authority and its directory.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    /// The federation name cannot be used (it becomes part of a gossip topic).
    #[error(
        "federation name {0:?} is not usable: use 1 to 64 characters among a-z, 0-9, '.', '_' and '-'"
    )]
    BadName(String),
    /// The key file could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The directory holds an authority already.
    #[error("{0} holds an authority already; refusing to overwrite it")]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file does not decode.
    #[error("{path}: {source}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The error.
        source: DecodeError,
    },
    /// The state file belongs to another key than the key file.
    #[error("{0}: the state file names another authority key than the key file")]
    Mismatch(PathBuf),
}

/// Checks that `name` can name a federation (it becomes part of the gossip topic).
pub fn check_federation_name(name: &str) -> Result<(), AuthorityError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_FEDERATION_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AuthorityError::BadName(name.to_owned()))
    }
}

/// "Federation `name` has authority key `authority`", signed by that key.
///
/// This is what an operator hands to other parties so that they trust the federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationAnchor {
    /// The federation's name.
    pub name: String,
    /// Its authority key (the signer).
    pub authority: PublicKey,
    /// Unix seconds of creation.
    pub created_at: u64,
}

impl SignedType for FederationAnchor {
    const DOMAIN: &'static str = "planetmesh/federation-anchor/v1";
}

/// A validity window in Unix seconds, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First valid second.
    pub not_before: u64,
    /// Last valid second.
    pub not_after: u64,
}

impl Validity {
    /// From `now` for `days` days.
    pub fn days(now: u64, days: u64) -> Self {
        Self::secs(now, days.saturating_mul(86_400))
    }

    /// From `now` for `secs` seconds.
    pub fn secs(now: u64, secs: u64) -> Self {
        Validity {
            not_before: now,
            not_after: now.saturating_add(secs),
        }
    }
}

/// An authority's public state (the content of `authority.cbor`): its serial counter and
/// what it has revoked so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityState {
    /// The federation's name.
    pub name: String,
    /// The authority key.
    pub authority: PublicKey,
    /// The serial the next signed object gets.
    pub next_serial: u64,
    /// The version of the last revocation list signed (0: none yet).
    pub revocation_version: u64,
    /// Every serial revoked so far.
    pub revoked_serials: BTreeSet<u64>,
    /// Every key revoked so far.
    pub revoked_keys: BTreeSet<PublicKey>,
    /// Every delegation revoked so far (absent in states written before delegations could be).
    #[serde(default)]
    pub revoked_delegations: BTreeSet<RevokedDelegation>,
    /// Every ticket revoked so far.
    #[serde(default, with = "capability_schema::membership::ticket_ids")]
    pub revoked_tickets: Vec<TicketId>,
}

/// What one revocation adds to an authority's list ([`Authority::revoke_with`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoke {
    /// Certificate and agreement serials.
    pub serials: Vec<u64>,
    /// Keys (every certificate of each, and each in tickets).
    pub keys: Vec<PublicKey>,
    /// Delegations.
    pub delegations: Vec<RevokedDelegation>,
    /// Tickets.
    pub tickets: Vec<TicketId>,
}

/// A federation's authority: its name and signing key.
#[derive(Debug)]
pub struct Authority {
    key: SecretKey,
    state: AuthorityState,
}

impl Authority {
    /// A new authority for federation `name` with a fresh key.
    pub fn create(name: &str) -> Result<Self, AuthorityError> {
        Self::with_key(name, SecretKey::generate())
    }

    /// The authority of federation `name` with an existing key (tests and key rotation).
    pub fn with_key(name: &str, key: SecretKey) -> Result<Self, AuthorityError> {
        check_federation_name(name)?;
        let state = AuthorityState {
            name: name.to_owned(),
            authority: key.public(),
            next_serial: 1,
            revocation_version: 0,
            revoked_serials: BTreeSet::new(),
            revoked_keys: BTreeSet::new(),
            revoked_delegations: BTreeSet::new(),
            revoked_tickets: Vec::new(),
        };
        Ok(Authority { key, state })
    }

    /// The federation's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The authority's public key.
    pub fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// The serial number the next signed object will get.
    pub fn next_serial(&self) -> u64 {
        self.state.next_serial
    }

    /// The public state: serial counter and revocations.
    pub fn state(&self) -> &AuthorityState {
        &self.state
    }

    fn take_serial(&mut self) -> u64 {
        let serial = self.state.next_serial;
        self.state.next_serial = serial.saturating_add(1);
        serial
    }

    /// The self-signed anchor other parties configure to trust this federation.
    pub fn anchor(&self, now: u64) -> Signed<FederationAnchor> {
        Signed::sign(
            &self.key,
            &FederationAnchor {
                name: self.state.name.clone(),
                authority: self.public(),
                created_at: now,
            },
        )
    }

    /// Certifies `subject` as a `role` of this federation at `site`.
    pub fn certify(
        &mut self,
        subject: PublicKey,
        role: Role,
        site: &str,
        name: &str,
        validity: Validity,
    ) -> Signed<MembershipCert> {
        let cert = MembershipCert {
            federation: self.state.name.clone(),
            authority: self.public(),
            subject,
            role,
            site: site.to_owned(),
            name: name.to_owned(),
            serial: self.take_serial(),
            issued_at: validity.not_before,
            expires_at: validity.not_after,
        };
        Signed::sign(&self.key, &cert)
    }

    /// Signs an agreement: this federation serves `roles` and `principals` of federation
    /// `peer_federation` (authority `peer_authority`) within `limits`.
    pub fn peer(
        &mut self,
        peer_federation: &str,
        peer_authority: PublicKey,
        roles: &[Role],
        principals: PrincipalFilter,
        limits: PeeringLimits,
        validity: Validity,
    ) -> Signed<PeeringAgreement> {
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        let agreement = PeeringAgreement {
            federation: self.state.name.clone(),
            authority: self.public(),
            peer_federation: peer_federation.to_owned(),
            peer_authority,
            roles,
            principals,
            limits,
            serial: self.take_serial(),
            issued_at: validity.not_before,
            expires_at: validity.not_after,
        };
        Signed::sign(&self.key, &agreement)
    }

    /// Revokes `serials` and `keys` in addition to everything revoked before, and signs the
    /// new list (its version is one above the previous list's).
    pub fn revoke(
        &mut self,
        serials: &[u64],
        keys: &[PublicKey],
        now: u64,
    ) -> Signed<RevocationList> {
        self.revoke_with(
            &Revoke {
                serials: serials.to_vec(),
                keys: keys.to_vec(),
                ..Revoke::default()
            },
            now,
        )
    }

    /// Revokes everything in `add` in addition to everything revoked before, and signs the
    /// new list (its version is one above the previous list's).
    pub fn revoke_with(&mut self, add: &Revoke, now: u64) -> Signed<RevocationList> {
        let state = &mut self.state;
        state.revoked_serials.extend(add.serials.iter().copied());
        state.revoked_keys.extend(add.keys.iter().copied());
        state
            .revoked_delegations
            .extend(add.delegations.iter().copied());
        for ticket in &add.tickets {
            if !state.revoked_tickets.contains(ticket) {
                state.revoked_tickets.push(*ticket);
            }
        }
        state.revocation_version = state.revocation_version.saturating_add(1);
        let list = RevocationList {
            federation: state.name.clone(),
            authority: self.key.public(),
            version: state.revocation_version,
            issued_at: now,
            serials: state.revoked_serials.iter().copied().collect(),
            keys: state.revoked_keys.iter().copied().collect(),
            delegations: state.revoked_delegations.iter().copied().collect(),
            tickets: state.revoked_tickets.clone(),
        };
        Signed::sign(&self.key, &list)
    }

    /// Writes a new authority directory (the directory may exist but must not hold an
    /// authority); the key file gets mode 0600.
    pub fn save_new(&self, dir: &Path, now: u64) -> Result<(), AuthorityError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| AuthorityError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io(dir))?;
        let key_path = dir.join(KEY_FILE);
        if key_path.exists() || dir.join(STATE_FILE).exists() {
            return Err(AuthorityError::Exists(dir.to_owned()));
        }
        self.key.save(&key_path)?;
        self.save_state(dir)?;
        write_atomically(&dir.join(ANCHOR_FILE), &self.anchor(now).to_bytes())
    }

    /// Writes the state file (serial counter and revocations) after a signing operation.
    pub fn save_state(&self, dir: &Path) -> Result<(), AuthorityError> {
        write_atomically(&dir.join(STATE_FILE), &codec::encode(&self.state))
    }

    /// Loads an authority directory written by [`Authority::save_new`].
    pub fn load(dir: &Path) -> Result<Self, AuthorityError> {
        let key = SecretKey::load(&dir.join(KEY_FILE))?;
        let state_path = dir.join(STATE_FILE);
        let bytes = fs::read(&state_path).map_err(|source| AuthorityError::Io {
            path: state_path.clone(),
            source,
        })?;
        let state: AuthorityState =
            codec::decode(&bytes).map_err(|source| AuthorityError::Decode {
                path: state_path.clone(),
                source,
            })?;
        if state.authority != key.public() {
            return Err(AuthorityError::Mismatch(state_path));
        }
        check_federation_name(&state.name)?;
        Ok(Authority { key, state })
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AuthorityError> {
    let io = |source| AuthorityError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;

    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["f1", "planetlab.eu", "a-b_c", &"x".repeat(64)] {
            assert!(check_federation_name(good).is_ok(), "{good}");
        }
        for bad in ["", "F1", "a/b", "a b", &"x".repeat(65), "ü"] {
            assert!(check_federation_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serials_increase_and_revocations_accumulate() {
        let mut auth = Authority::with_key("f1", test_key(10)).unwrap();
        let v = Validity::days(1000, 1);
        let a = auth.certify(test_key(1).public(), Role::Node, "s", "n1", v);
        let b = auth.certify(test_key(2).public(), Role::Agent, "s", "a1", v);
        let a = a.verify_by(&auth.public()).unwrap();
        let b = b.verify_by(&auth.public()).unwrap();
        assert_eq!((a.serial, b.serial), (1, 2));
        assert_eq!((a.issued_at, a.expires_at), (1000, 1000 + 86_400));
        let first = auth.revoke(&[1], &[], 2000).verify().unwrap();
        let second = auth
            .revoke(&[], &[test_key(3).public()], 2001)
            .verify()
            .unwrap();
        assert_eq!(first.version, 1);
        assert_eq!(second.version, 2);
        assert_eq!(second.serials, vec![1]);
        assert_eq!(second.keys, vec![test_key(3).public()]);
    }

    #[test]
    fn directory_round_trips_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth");
        let mut auth = Authority::create("f1").unwrap();
        auth.save_new(&path, 5).unwrap();
        assert!(matches!(
            auth.save_new(&path, 5),
            Err(AuthorityError::Exists(_))
        ));
        auth.certify(
            test_key(1).public(),
            Role::Node,
            "s",
            "n",
            Validity::days(5, 1),
        );
        auth.save_state(&path).unwrap();
        let loaded = Authority::load(&path).unwrap();
        assert_eq!(loaded.public(), auth.public());
        assert_eq!(loaded.name(), "f1");
        assert_eq!(loaded.next_serial(), 2);
        let anchor =
            Signed::<FederationAnchor>::from_bytes(&fs::read(path.join(ANCHOR_FILE)).unwrap())
                .unwrap();
        assert_eq!(anchor.verify_by(&auth.public()).unwrap().name, "f1");
    }
}
