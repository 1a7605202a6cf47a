//! The trust store: trusted authorities, peering agreements and revocation lists.
//!
//! A federation is its authority's key; its name is a label.
//!
//! - Anchors: authority key → federation name, configured by the operator (or added from a
//!   self-signed [`FederationAnchor`]). Several anchors may carry the same name (two testbeds
//!   created independently); one key carries one name. A certificate verifies only under the
//!   anchor of the authority key it names, and only if its federation name is that anchor's.
//!   A stranger calling itself by a trusted federation's name is simply not anchored.
//! - Agreements: [`PeeringAgreement`]s signed by an anchored authority. An agreement of `F`
//!   with `G` names `G`'s authority key, so members of `G` can be checked for the purpose of
//!   being served by `F` even when `G` is not anchored locally (if it is, the names must match).
//! - Revocation lists: the newest list per authority; a revoked serial kills the certificate
//!   or agreement with that serial, a revoked key kills every certificate of that key.
//! - Names in configs and commands: `name` when one anchor carries it, else `name@KEY`
//!   ([`FederationRef`], [`TrustStore::resolve`]).

use std::collections::BTreeMap;

use capability_schema::membership::PeeringLimits;
use capability_schema::{
    MembershipCert, PeeringAgreement, PublicKey, RevocationList, Role, SignatureError, Signed,
    TicketId,
};

use super::authority::FederationAnchor;

/// Why a certificate, agreement or revocation list was not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The signature does not verify or the body does not decode.
    #[error("signature check failed: {0}")]
    Signature(#[from] SignatureError),
    /// No trusted authority is known for the federation.
    #[error(
        "unknown federation {0:?}: no trusted authority is configured for it (add it to [[trust]])"
    )]
    UnknownFederation(String),
    /// Signed by another key than the federation's authority.
    #[error("federation {federation:?}: signed by {found}, but its authority is {expected}")]
    WrongAuthority {
        /// The federation.
        federation: String,
        /// Its trusted authority.
        expected: PublicKey,
        /// The key that signed.
        found: PublicKey,
    },
    /// An anchored authority offered again under another name.
    #[error(
        "authority {authority} is anchored as federation {existing:?}; refusing to anchor it again as {offered:?} (one key is one federation: fix the name in [[trust]])"
    )]
    ConflictingLabel {
        /// The authority key.
        authority: PublicKey,
        /// The label it has.
        existing: String,
        /// The other label.
        offered: String,
    },
    /// The authority a certificate, agreement or list names is trusted by no anchor and no
    /// agreement here, whatever federation name it uses.
    #[error(
        "federation {federation:?} of authority {authority} is not trusted here: no [[trust]] anchor or peering agreement names that key (a federation is its authority's key; add it to [[trust]] if you mean to trust it)"
    )]
    UnanchoredAuthority {
        /// The federation name claimed.
        federation: String,
        /// The authority key named.
        authority: PublicKey,
    },
    /// A trusted authority's certificate, agreement or list under another federation name
    /// than the one it is trusted as.
    #[error(
        "authority {authority} is trusted as federation {trusted_as:?}, but this names its federation {claimed:?}"
    )]
    LabelMismatch {
        /// The authority key.
        authority: PublicKey,
        /// The label it is trusted under.
        trusted_as: String,
        /// The federation name claimed.
        claimed: String,
    },
    /// A federation name that several trusted authorities carry.
    #[error(
        "federation {federation:?} is ambiguous: trusted authorities {candidates:?} all carry that name; write it as NAME@KEYPREFIX (one of those)"
    )]
    AmbiguousFederation {
        /// The reference given.
        federation: String,
        /// The anchors it could be, as `name@<short key>`.
        candidates: Vec<String>,
    },
    /// A federation reference that is neither `name` nor `name@KEY`.
    #[error(
        "{0:?} is not a federation: write NAME, or NAME@KEY with the authority key (ed25519/HEX) or a prefix of its hex"
    )]
    BadFederationRef(String),
    /// The certificate belongs to another federation than the one required.
    #[error("certificate of federation {found:?}, expected {expected:?}")]
    WrongFederation {
        /// The federation required.
        expected: String,
        /// The certificate's federation.
        found: String,
    },
    /// The certificate is for another role.
    #[error("certificate is for a {found}, expected a {expected}")]
    WrongRole {
        /// The role required.
        expected: Role,
        /// The certificate's role.
        found: Role,
    },
    /// Not valid yet.
    #[error("serial {serial} of {federation:?} is valid only from {not_before} (now {now})")]
    NotYetValid {
        /// The federation.
        federation: String,
        /// The serial.
        serial: u64,
        /// First valid second.
        not_before: u64,
        /// The time of the check.
        now: u64,
    },
    /// Expired.
    #[error("serial {serial} of {federation:?} expired at {expired_at} (now {now})")]
    Expired {
        /// The federation.
        federation: String,
        /// The serial.
        serial: u64,
        /// Last valid second.
        expired_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// The serial is on the federation's revocation list.
    #[error(
        "serial {serial} of {federation:?} is revoked by its authority (revocation list v{version}, issued at {issued_at}); ask the authority for a new certificate"
    )]
    Revoked {
        /// The federation.
        federation: String,
        /// The serial.
        serial: u64,
        /// The version of the list that revokes it.
        version: u64,
        /// When that list was issued (unix seconds).
        issued_at: u64,
    },
    /// The subject key is on the federation's revocation list.
    #[error(
        "key {key} is revoked by {federation:?}'s authority (revocation list v{version}, issued at {issued_at}); ask the authority for a new certificate"
    )]
    KeyRevoked {
        /// The federation.
        federation: String,
        /// The key.
        key: PublicKey,
        /// The version of the list that revokes it.
        version: u64,
        /// When that list was issued (unix seconds).
        issued_at: u64,
    },
    /// No agreement of `federation` serves members of `peer_federation`.
    #[error("federation {federation:?} has no peering agreement serving {peer_federation:?}")]
    NoPeering {
        /// The serving federation.
        federation: String,
        /// The other federation.
        peer_federation: String,
    },
    /// The agreements there are are expired, not yet valid or revoked.
    #[error(
        "the peering agreement of {federation:?} with {peer_federation:?} is no longer in force: {reason}"
    )]
    AgreementNotInForce {
        /// The serving federation.
        federation: String,
        /// The other federation.
        peer_federation: String,
        /// Why the newest agreement fails.
        reason: Box<TrustError>,
    },
    /// The agreement does not serve this role.
    #[error(
        "federation {federation:?} does not serve {role}s of {peer_federation:?} (agreement serial {serial})"
    )]
    RoleNotServed {
        /// The serving federation.
        federation: String,
        /// The other federation.
        peer_federation: String,
        /// The role.
        role: Role,
        /// The agreement's serial.
        serial: u64,
    },
    /// The agreement lists principals, and this one is not among them.
    #[error(
        "federation {federation:?} serves only listed principals of {peer_federation:?}; {principal} is not one (agreement serial {serial})"
    )]
    PrincipalNotCovered {
        /// The serving federation.
        federation: String,
        /// The other federation.
        peer_federation: String,
        /// The principal.
        principal: PublicKey,
        /// The agreement's serial.
        serial: u64,
    },
    /// A revocation list older than the one held.
    #[error("revocation list version {version} of {federation:?} is older than version {have}")]
    StaleRevocation {
        /// The federation.
        federation: String,
        /// The list's version.
        version: u64,
        /// The version held.
        have: u64,
    },
}

/// Why a party is served: as a member of the local federation or under an agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The party's certificate, checked.
    pub member: MembershipCert,
    /// The agreement it is served under (none for members of the local federation).
    pub agreement: Option<PeeringAgreement>,
}

impl Served {
    /// The limits that apply (none for local members).
    pub fn limits(&self) -> Option<&PeeringLimits> {
        self.agreement.as_ref().map(|a| &a.limits)
    }
}

/// The authorities, agreements and revocation lists a party believes.
///
/// Everything is keyed by authority key; a federation's name is the label its anchor gives it
/// (several anchors may share a label, as two independently created testbeds both naming
/// theirs `fed0` do).
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    /// Authority key → the federation's label.
    anchors: BTreeMap<PublicKey, String>,
    agreements: Vec<PeeringAgreement>,
    /// The newest list per authority key.
    revocations: BTreeMap<PublicKey, RevocationList>,
    /// The same lists as signed (to hand to peers).
    signed_revocations: BTreeMap<PublicKey, Signed<RevocationList>>,
}

fn window(
    federation: &str,
    serial: u64,
    not_before: u64,
    expires_at: u64,
    now: u64,
) -> Result<(), TrustError> {
    if now < not_before {
        return Err(TrustError::NotYetValid {
            federation: federation.to_owned(),
            serial,
            not_before,
            now,
        });
    }
    if now > expires_at {
        return Err(TrustError::Expired {
            federation: federation.to_owned(),
            serial,
            expired_at: expires_at,
            now,
        });
    }
    Ok(())
}

/// A reference to a federation as configs and commands write it: `name`, or
/// `name@KEY` where `KEY` is the authority key (`ed25519/…`) or a unique prefix of its hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationRef {
    /// The label.
    pub name: String,
    /// The authority key's hex, or a prefix of it (lower case); none for a bare name.
    pub key_prefix: Option<String>,
}

impl FederationRef {
    /// Parses `name` or `name@KEY`.
    pub fn parse(text: &str) -> Result<Self, TrustError> {
        let bad = || TrustError::BadFederationRef(text.to_owned());
        let Some((name, key)) = text.split_once('@') else {
            if text.is_empty() {
                return Err(bad());
            }
            return Ok(Self {
                name: text.to_owned(),
                key_prefix: None,
            });
        };
        let key = key
            .strip_prefix(capability_schema::identity::PUBLIC_PREFIX)
            .unwrap_or(key);
        let key = key.to_ascii_lowercase();
        if name.is_empty()
            || key.is_empty()
            || key.len() > 64
            || !key.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad());
        }
        Ok(Self {
            name: name.to_owned(),
            key_prefix: Some(key),
        })
    }

    /// Whether `authority`, labelled `label`, is the federation referred to.
    pub fn matches(&self, label: &str, authority: &PublicKey) -> bool {
        label == self.name
            && self
                .key_prefix
                .as_ref()
                .is_none_or(|p| hex::encode(authority.as_bytes()).starts_with(p.as_str()))
    }
}

impl std::fmt::Display for FederationRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key_prefix {
            Some(key) => write!(f, "{}@{key}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// How a federation is written so that nobody can take it for another: `name@` and the
/// authority key's short hex.
pub fn qualified(name: &str, authority: &PublicKey) -> String {
    format!("{name}@{}", authority.short())
}

impl TrustStore {
    /// An empty store: it trusts nobody.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `authority` as the authority of a federation labelled `name`.
    ///
    /// Another authority may carry the same label; the same authority under another label is
    /// refused.
    pub fn add_federation(&mut self, name: &str, authority: PublicKey) -> Result<(), TrustError> {
        match self.anchors.get(&authority) {
            Some(existing) if existing != name => Err(TrustError::ConflictingLabel {
                authority,
                existing: existing.clone(),
                offered: name.to_owned(),
            }),
            _ => {
                self.anchors.insert(authority, name.to_owned());
                Ok(())
            }
        }
    }

    /// Trusts the federation of a self-signed anchor (the signature proves the key is held).
    pub fn add_anchor(
        &mut self,
        anchor: &Signed<FederationAnchor>,
    ) -> Result<FederationAnchor, TrustError> {
        let body = anchor.verify()?;
        if body.authority != anchor.signer {
            return Err(TrustError::WrongAuthority {
                federation: body.name,
                expected: body.authority,
                found: anchor.signer,
            });
        }
        self.add_federation(&body.name, body.authority)?;
        Ok(body)
    }

    /// The one anchored authority `federation` refers to (`name` or `name@KEY`).
    ///
    /// A bare name that several anchors carry is refused, naming them.
    pub fn resolve(&self, federation: &str) -> Result<PublicKey, TrustError> {
        let reference = FederationRef::parse(federation)?;
        let found: Vec<PublicKey> = self
            .anchors
            .iter()
            .filter(|(key, label)| reference.matches(label, key))
            .map(|(key, _)| *key)
            .collect();
        match found.as_slice() {
            [] => Err(TrustError::UnknownFederation(federation.to_owned())),
            [one] => Ok(*one),
            many => Err(TrustError::AmbiguousFederation {
                federation: federation.to_owned(),
                candidates: many.iter().map(|k| qualified(&reference.name, k)).collect(),
            }),
        }
    }

    /// The anchored authority `federation` (`name` or `name@KEY`) refers to, if exactly one.
    pub fn authority_of(&self, federation: &str) -> Option<PublicKey> {
        self.resolve(federation).ok()
    }

    /// The label of an anchored authority.
    pub fn label_of(&self, authority: &PublicKey) -> Option<&str> {
        self.anchors.get(authority).map(String::as_str)
    }

    /// How to show the federation of `authority` labelled `name`: the name, or
    /// `name@<short key>` when another trusted authority carries the same name.
    pub fn display_name(&self, name: &str, authority: &PublicKey) -> String {
        let shared = self
            .anchors
            .iter()
            .chain(
                self.agreements
                    .iter()
                    .map(|a| (&a.peer_authority, &a.peer_federation)),
            )
            .any(|(key, label)| label == name && key != authority);
        if shared {
            qualified(name, authority)
        } else {
            name.to_owned()
        }
    }

    /// The anchored federations and their authorities (a label may appear more than once).
    pub fn federations(&self) -> impl Iterator<Item = (&str, &PublicKey)> {
        self.anchors.iter().map(|(key, name)| (name.as_str(), key))
    }

    /// The label `authority` is trusted under: its anchor's, or else the one the newest
    /// agreement naming it as peer gives it.
    fn trusted_label(&self, authority: &PublicKey) -> Option<&str> {
        self.label_of(authority).or_else(|| {
            self.agreements
                .iter()
                .filter(|a| a.peer_authority == *authority)
                .max_by_key(|a| a.serial)
                .map(|a| a.peer_federation.as_str())
        })
    }

    /// Checks that `claimed` (the authority a body names) is trusted as `federation`, that
    /// `signer` is that key, and (if `anchored_only`) that it is anchored, not only named by an
    /// agreement.
    fn check_authority(
        &self,
        federation: &str,
        signer: &PublicKey,
        claimed: &PublicKey,
        anchored_only: bool,
    ) -> Result<(), TrustError> {
        let label = if anchored_only {
            self.label_of(claimed)
        } else {
            self.trusted_label(claimed)
        };
        let Some(label) = label else {
            return Err(TrustError::UnanchoredAuthority {
                federation: federation.to_owned(),
                authority: *claimed,
            });
        };
        if label != federation {
            return Err(TrustError::LabelMismatch {
                authority: *claimed,
                trusted_as: label.to_owned(),
                claimed: federation.to_owned(),
            });
        }
        if signer != claimed {
            return Err(TrustError::WrongAuthority {
                federation: federation.to_owned(),
                expected: *claimed,
                found: *signer,
            });
        }
        Ok(())
    }

    /// Keeps a peering agreement signed by an anchored authority.
    pub fn add_agreement(
        &mut self,
        signed: &Signed<PeeringAgreement>,
    ) -> Result<PeeringAgreement, TrustError> {
        let agreement = signed.verify()?;
        self.check_authority(
            &agreement.federation,
            &signed.signer,
            &agreement.authority,
            true,
        )?;
        if let Some(label) = self.label_of(&agreement.peer_authority)
            && label != agreement.peer_federation
        {
            return Err(TrustError::LabelMismatch {
                authority: agreement.peer_authority,
                trusted_as: label.to_owned(),
                claimed: agreement.peer_federation.clone(),
            });
        }
        let known = self
            .agreements
            .iter()
            .any(|a| a.authority == agreement.authority && a.serial == agreement.serial);
        if !known {
            self.agreements.push(agreement.clone());
        }
        Ok(agreement)
    }

    /// The agreements held, as verified.
    pub fn agreements(&self) -> &[PeeringAgreement] {
        &self.agreements
    }

    /// Keeps a revocation list if it is newer than the one held; returns whether it was newer.
    ///
    /// The list must be signed by the authority it names, trusted (anchored or named by an
    /// agreement) under the list's federation label. A list with the version already held is
    /// accepted and changes nothing.
    pub fn add_revocation(&mut self, signed: &Signed<RevocationList>) -> Result<bool, TrustError> {
        let list = signed.verify()?;
        self.check_authority(&list.federation, &signed.signer, &list.authority, false)?;
        if let Some(held) = self.revocations.get(&list.authority) {
            if list.version < held.version {
                return Err(TrustError::StaleRevocation {
                    federation: list.federation,
                    version: list.version,
                    have: held.version,
                });
            }
            if list.version == held.version {
                return Ok(false);
            }
        }
        self.signed_revocations
            .insert(list.authority, signed.clone());
        self.revocations.insert(list.authority, list);
        Ok(true)
    }

    /// The held list `federation` (`name` or `name@KEY`) refers to: the first held list whose
    /// federation and authority match.
    fn held_list(&self, federation: &str) -> Option<&PublicKey> {
        let reference = FederationRef::parse(federation).ok()?;
        self.revocations
            .iter()
            .find(|(key, list)| reference.matches(&list.federation, key))
            .map(|(key, _)| key)
    }

    /// The newest revocation list held for `federation` (`name` or `name@KEY`, as
    /// [`TrustStore::revocation_versions`] names them), as its authority signed it.
    pub fn signed_revocation(&self, federation: &str) -> Option<&Signed<RevocationList>> {
        self.held_list(federation)
            .and_then(|key| self.signed_revocations.get(key))
    }

    /// The newest revocation list held for `federation` (`name` or `name@KEY`).
    pub fn revocation_list(&self, federation: &str) -> Option<&RevocationList> {
        self.held_list(federation)
            .and_then(|key| self.revocations.get(key))
    }

    /// The newest revocation list held of `authority`.
    pub fn revocation_list_of(&self, authority: &PublicKey) -> Option<&RevocationList> {
        self.revocations.get(authority)
    }

    fn check_revoked(
        &self,
        federation: &str,
        authority: &PublicKey,
        serial: u64,
        key: Option<&PublicKey>,
    ) -> Result<(), TrustError> {
        let Some(list) = self.revocations.get(authority) else {
            return Ok(());
        };
        if list.serials.contains(&serial) {
            return Err(TrustError::Revoked {
                federation: federation.to_owned(),
                serial,
                version: list.version,
                issued_at: list.issued_at,
            });
        }
        if let Some(key) = key
            && list.keys.contains(key)
        {
            return Err(TrustError::KeyRevoked {
                federation: federation.to_owned(),
                key: *key,
                version: list.version,
                issued_at: list.issued_at,
            });
        }
        Ok(())
    }

    /// Every revocation list held (the newest per authority).
    pub fn revocation_lists(&self) -> impl Iterator<Item = &RevocationList> {
        self.revocations.values()
    }

    /// The version held per federation (what a peer is told at a revocation exchange), each
    /// federation written `name@KEY` with the authority's full hex, so that two federations
    /// of the same name are told apart.
    pub fn revocation_versions(&self) -> Vec<(String, u64)> {
        self.revocations
            .iter()
            .map(|(key, list)| {
                (
                    format!("{}@{}", list.federation, hex::encode(key.as_bytes())),
                    list.version,
                )
            })
            .collect()
    }

    /// The first list held that revokes `key` (in any role, or in a ticket).
    pub fn revoking_key(&self, key: &PublicKey) -> Option<&RevocationList> {
        self.revocations.values().find(|l| l.keys.contains(key))
    }

    /// The first list held that revokes ticket `id`.
    pub fn revoking_ticket(&self, id: &TicketId) -> Option<&RevocationList> {
        self.revocations.values().find(|l| l.tickets.contains(id))
    }

    /// The first list held that revokes `node`'s delegation to `agent` signed at `issued_at`.
    pub fn revoking_delegation(
        &self,
        node: &PublicKey,
        agent: &PublicKey,
        issued_at: u64,
    ) -> Option<&RevocationList> {
        self.revocations
            .values()
            .find(|l| l.revoked_delegation(node, agent, issued_at).is_some())
    }

    /// The list held that revokes certificate `serial` or its subject (the list of the
    /// authority that signed the certificate).
    pub fn revoking_member(&self, cert: &MembershipCert) -> Option<&RevocationList> {
        self.revocations
            .get(&cert.authority)
            .filter(|l| l.federation == cert.federation)
            .filter(|l| l.serials.contains(&cert.serial) || l.keys.contains(&cert.subject))
    }

    /// Checks a certificate whose authority was found trusted (signature, window,
    /// revocation, role).
    fn check_cert(
        &self,
        cert: MembershipCert,
        role: Role,
        now: u64,
    ) -> Result<MembershipCert, TrustError> {
        window(
            &cert.federation,
            cert.serial,
            cert.issued_at,
            cert.expires_at,
            now,
        )?;
        self.check_revoked(
            &cert.federation,
            &cert.authority,
            cert.serial,
            Some(&cert.subject),
        )?;
        if cert.role != role {
            return Err(TrustError::WrongRole {
                expected: role,
                found: cert.role,
            });
        }
        Ok(cert)
    }

    /// Checks that `signed` certifies a `role` of an anchored federation at `now`: the
    /// authority the certificate names must be anchored under the certificate's federation
    /// name, and must have signed it.
    pub fn check_member(
        &self,
        signed: &Signed<MembershipCert>,
        role: Role,
        now: u64,
    ) -> Result<MembershipCert, TrustError> {
        let cert = signed.verify()?;
        self.check_authority(&cert.federation, &signed.signer, &cert.authority, true)?;
        self.check_cert(cert, role, now)
    }

    /// Like [`TrustStore::check_member`], and the federation must be labelled `federation`;
    /// an authority named by a peering agreement (not anchored) is trusted too.
    pub fn check_member_of(
        &self,
        signed: &Signed<MembershipCert>,
        federation: &str,
        role: Role,
        now: u64,
    ) -> Result<MembershipCert, TrustError> {
        let cert = signed.verify()?;
        self.check_verified_member_of(signed, cert, federation, role, now)
    }

    /// [`TrustStore::check_member_of`] for a certificate whose signature was already verified
    /// into `cert` (the body of `signed`).
    pub(crate) fn check_verified_member_of(
        &self,
        signed: &Signed<MembershipCert>,
        cert: MembershipCert,
        federation: &str,
        role: Role,
        now: u64,
    ) -> Result<MembershipCert, TrustError> {
        if cert.federation != federation {
            return Err(TrustError::WrongFederation {
                expected: federation.to_owned(),
                found: cert.federation,
            });
        }
        self.check_authority(&cert.federation, &signed.signer, &cert.authority, false)?;
        self.check_cert(cert, role, now)
    }

    /// [`TrustStore::serves_under`] for the local federation written as `local` (`name` or
    /// `name@KEY`, which must be anchored and unambiguous).
    pub fn serves(
        &self,
        local: &str,
        signed: &Signed<MembershipCert>,
        now: u64,
    ) -> Result<Served, TrustError> {
        let local = self.resolve(local)?;
        self.serves_under(&local, signed, now)
    }

    /// Whether the federation of authority `local` serves the holder of `signed` at `now`:
    /// as its own member, or as a member of another federation (another authority, whatever
    /// its name) under an agreement `local` signed that covers the holder's role (and, for
    /// principals, the holder's key).
    pub fn serves_under(
        &self,
        local: &PublicKey,
        signed: &Signed<MembershipCert>,
        now: u64,
    ) -> Result<Served, TrustError> {
        let cert = signed.verify()?;
        let role = cert.role;
        let local_name = self
            .label_of(local)
            .map(|l| self.display_name(l, local))
            .ok_or_else(|| TrustError::UnknownFederation(qualified("?", local)))?;
        if cert.authority == *local {
            self.check_authority(&cert.federation, &signed.signer, &cert.authority, true)?;
            let member = self.check_cert(cert, role, now)?;
            return Ok(Served {
                member,
                agreement: None,
            });
        }
        let peer = self
            .trusted_label(&cert.authority)
            .filter(|label| *label == cert.federation)
            .map_or_else(
                || qualified(&cert.federation, &cert.authority),
                |label| self.display_name(label, &cert.authority),
            );
        let mut candidates: Vec<&PeeringAgreement> = self
            .agreements
            .iter()
            .filter(|a| a.authority == *local && a.peer_authority == cert.authority)
            .collect();
        if candidates.is_empty() {
            return Err(TrustError::NoPeering {
                federation: local_name,
                peer_federation: peer,
            });
        }
        candidates.sort_by_key(|a| std::cmp::Reverse(a.serial));
        let mut first_failure = None;
        let mut in_force = None;
        for agreement in candidates {
            let check = window(
                &local_name,
                agreement.serial,
                agreement.issued_at,
                agreement.expires_at,
                now,
            )
            .and_then(|()| self.check_revoked(&local_name, local, agreement.serial, None));
            match check {
                Ok(()) => {
                    in_force = Some(agreement);
                    break;
                }
                Err(e) => {
                    first_failure.get_or_insert(e);
                }
            }
        }
        let Some(agreement) = in_force else {
            return Err(TrustError::AgreementNotInForce {
                federation: local_name.clone(),
                peer_federation: peer.clone(),
                reason: Box::new(first_failure.unwrap_or(TrustError::NoPeering {
                    federation: local_name,
                    peer_federation: peer,
                })),
            });
        };
        if agreement.peer_federation != cert.federation {
            return Err(TrustError::LabelMismatch {
                authority: cert.authority,
                trusted_as: agreement.peer_federation.clone(),
                claimed: cert.federation,
            });
        }
        if signed.signer != cert.authority {
            return Err(TrustError::WrongAuthority {
                federation: cert.federation,
                expected: cert.authority,
                found: signed.signer,
            });
        }
        let member = self.check_cert(cert, role, now)?;
        if !agreement.roles.contains(&role) {
            return Err(TrustError::RoleNotServed {
                federation: local_name,
                peer_federation: peer,
                role,
                serial: agreement.serial,
            });
        }
        if role == Role::Principal && !agreement.principals.admits(&member.subject) {
            return Err(TrustError::PrincipalNotCovered {
                federation: local_name,
                peer_federation: peer,
                principal: member.subject,
                serial: agreement.serial,
            });
        }
        Ok(Served {
            member,
            agreement: Some(agreement.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;
    use capability_schema::membership::PrincipalFilter;

    use super::*;
    use crate::trust::{Authority, Validity};

    const NOW: u64 = 1_700_000_000;

    fn setup() -> (Authority, Authority, TrustStore) {
        let f1 = Authority::with_key("f1", test_key(101)).unwrap();
        let f2 = Authority::with_key("f2", test_key(102)).unwrap();
        let mut store = TrustStore::new();
        store.add_federation("f1", f1.public()).unwrap();
        (f1, f2, store)
    }

    #[test]
    fn members_are_checked_for_every_field() {
        let (mut f1, mut f2, mut store) = setup();
        let v = Validity::days(NOW, 1);
        let node = f1.certify(test_key(1).public(), Role::Node, "mit", "n1", v);
        let cert = store.check_member(&node, Role::Node, NOW).unwrap();
        assert_eq!(cert.site, "mit");
        assert_eq!(
            store.check_member(&node, Role::Agent, NOW),
            Err(TrustError::WrongRole {
                expected: Role::Agent,
                found: Role::Node
            })
        );
        assert!(matches!(
            store.check_member(&node, Role::Node, NOW - 1),
            Err(TrustError::NotYetValid { .. })
        ));
        assert!(matches!(
            store.check_member(&node, Role::Node, NOW + 86_401),
            Err(TrustError::Expired { .. })
        ));
        // Another federation's certificate, and a forged one claiming to be of f1.
        let other = f2.certify(test_key(2).public(), Role::Node, "s", "n2", v);
        assert_eq!(
            store.check_member(&other, Role::Node, NOW),
            Err(TrustError::UnanchoredAuthority {
                federation: "f2".into(),
                authority: f2.public()
            })
        );
        let mut impostor = Authority::with_key("f1", test_key(103)).unwrap();
        let forged = impostor.certify(test_key(2).public(), Role::Node, "s", "n2", v);
        assert_eq!(
            store.check_member(&forged, Role::Node, NOW),
            Err(TrustError::UnanchoredAuthority {
                federation: "f1".into(),
                authority: impostor.public()
            })
        );
        let mut tampered = node.clone();
        tampered.signer = impostor.public();
        assert!(matches!(
            store.check_member(&tampered, Role::Node, NOW),
            Err(TrustError::Signature(_))
        ));
        assert_eq!(
            store.check_member_of(&node, "f2", Role::Node, NOW),
            Err(TrustError::WrongFederation {
                expected: "f2".into(),
                found: "f1".into()
            })
        );
        // One key is one federation: f1's key under another name is refused.
        assert!(matches!(
            store.add_federation("f9", f1.public()),
            Err(TrustError::ConflictingLabel { .. })
        ));
    }

    #[test]
    fn revocation_by_serial_and_key_and_versions() {
        let (mut f1, _, mut store) = setup();
        let v = Validity::days(NOW, 1);
        let a = f1.certify(test_key(1).public(), Role::Node, "s", "n1", v);
        let b = f1.certify(test_key(2).public(), Role::Node, "s", "n2", v);
        let first = f1.revoke(&[1], &[], NOW);
        assert_eq!(store.add_revocation(&first), Ok(true));
        assert_eq!(
            store.check_member(&a, Role::Node, NOW),
            Err(TrustError::Revoked {
                federation: "f1".into(),
                serial: 1,
                version: 1,
                issued_at: NOW,
            })
        );
        assert!(store.check_member(&b, Role::Node, NOW).is_ok());
        let second = f1.revoke(&[], &[test_key(2).public()], NOW);
        assert_eq!(store.add_revocation(&second), Ok(true));
        assert_eq!(store.add_revocation(&second), Ok(false));
        assert!(matches!(
            store.add_revocation(&first),
            Err(TrustError::StaleRevocation { .. })
        ));
        assert!(matches!(
            store.check_member(&b, Role::Node, NOW),
            Err(TrustError::KeyRevoked { .. })
        ));
        // A list signed by someone else is refused.
        let mut impostor = Authority::with_key("f1", test_key(103)).unwrap();
        assert!(matches!(
            store.add_revocation(&impostor.revoke(&[2], &[], NOW)),
            Err(TrustError::UnanchoredAuthority { .. })
        ));
    }

    #[test]
    fn peering_serves_exactly_what_the_agreement_says() {
        let (mut f1, mut f2, mut store) = setup();
        let v = Validity::days(NOW, 1);
        let alice = f2.certify(test_key(1).public(), Role::Principal, "s", "alice", v);
        let bob = f2.certify(test_key(2).public(), Role::Principal, "s", "bob", v);
        let broker = f2.certify(test_key(3).public(), Role::Broker, "s", "b", v);
        let agent = f2.certify(test_key(4).public(), Role::Agent, "s", "a", v);
        assert!(matches!(
            store.serves("f1", &alice, NOW),
            Err(TrustError::NoPeering { .. })
        ));
        let agreement = f1.peer(
            "f2",
            f2.public(),
            &[Role::Principal, Role::Broker],
            PrincipalFilter::Only(vec![test_key(1).public()]),
            PeeringLimits {
                max_slivers_per_principal: Some(3),
                ..Default::default()
            },
            v,
        );
        store.add_agreement(&agreement).unwrap();
        let served = store.serves("f1", &alice, NOW).unwrap();
        assert_eq!(served.limits().unwrap().max_slivers_per_principal, Some(3));
        assert!(matches!(
            store.serves("f1", &bob, NOW),
            Err(TrustError::PrincipalNotCovered { .. })
        ));
        assert!(store.serves("f1", &broker, NOW).is_ok());
        assert!(matches!(
            store.serves("f1", &agent, NOW),
            Err(TrustError::RoleNotServed {
                role: Role::Agent,
                ..
            })
        ));
        // f2 members are checked under the key the agreement names: a forger is refused.
        let mut impostor = Authority::with_key("f2", test_key(104)).unwrap();
        let forged = impostor.certify(test_key(1).public(), Role::Principal, "s", "alice", v);
        assert!(matches!(
            store.serves("f1", &forged, NOW),
            Err(TrustError::NoPeering { .. })
        ));
        // Local members need no agreement.
        let local = f1.certify(test_key(5).public(), Role::Principal, "s", "carol", v);
        assert_eq!(store.serves("f1", &local, NOW).unwrap().agreement, None);
        // Expired, then revoked agreements are no longer in force.
        assert!(matches!(
            store.serves("f1", &alice, NOW + 86_401),
            Err(TrustError::AgreementNotInForce { .. })
        ));
        let serial = agreement.verify().unwrap().serial;
        store
            .add_revocation(&f1.revoke(&[serial], &[], NOW))
            .unwrap();
        assert!(matches!(
            store.serves("f1", &alice, NOW),
            Err(TrustError::AgreementNotInForce { .. })
        ));
        // An agreement signed by an unknown authority is refused.
        let wrong = f2.peer(
            "f1",
            f1.public(),
            &[Role::Principal],
            PrincipalFilter::All,
            PeeringLimits::default(),
            v,
        );
        assert_eq!(
            store.add_agreement(&wrong),
            Err(TrustError::UnanchoredAuthority {
                federation: "f2".into(),
                authority: f2.public()
            })
        );
    }

    /// Two testbeds created apart, both naming their federations `fed0`, plus a rogue that
    /// also calls itself `fed0`: each authority's members verify under its own key only, the
    /// rogue's under none, and names resolve only when unambiguous.
    #[test]
    fn same_named_federations_are_told_apart_by_key() {
        let mut a = Authority::with_key("fed0", test_key(111)).unwrap();
        let mut b = Authority::with_key("fed0", test_key(112)).unwrap();
        let mut rogue = Authority::with_key("fed0", test_key(113)).unwrap();
        let v = Validity::days(NOW, 1);
        let mut store = TrustStore::new();
        store.add_federation("fed0", a.public()).unwrap();
        assert_eq!(store.resolve("fed0"), Ok(a.public()));
        store.add_federation("fed0", b.public()).unwrap();
        // Both anchors hold; the bare name is now ambiguous and the error names both.
        let Err(TrustError::AmbiguousFederation { candidates, .. }) = store.resolve("fed0") else {
            panic!("a name two anchors carry must be ambiguous");
        };
        assert_eq!(candidates.len(), 2, "both candidates named: {candidates:?}");
        assert!(candidates.contains(&qualified("fed0", &a.public())));
        let message = store.resolve("fed0").unwrap_err().to_string();
        assert!(message.contains("NAME@KEYPREFIX"), "{message}");
        // name@prefix, name@full hex and name@ed25519/… all resolve.
        let a_hex = hex::encode(a.public().as_bytes());
        assert_eq!(
            store.resolve(&format!("fed0@{}", &a_hex[..6])),
            Ok(a.public())
        );
        assert_eq!(store.resolve(&format!("fed0@{a_hex}")), Ok(a.public()));
        assert_eq!(
            store.resolve(&format!("fed0@{}", a.public())),
            Ok(a.public())
        );
        assert_eq!(
            store.resolve(&format!("fed0@{}", b.public().short().to_uppercase())),
            Ok(b.public())
        );
        assert_eq!(
            store.resolve(&format!("fed1@{}", a.public().short())),
            Err(TrustError::UnknownFederation(format!(
                "fed1@{}",
                a.public().short()
            )))
        );
        assert!(matches!(
            store.resolve("fed0@xyz"),
            Err(TrustError::BadFederationRef(_))
        ));
        assert_eq!(
            store.display_name("fed0", &a.public()),
            qualified("fed0", &a.public())
        );
        // Members of each verify under their own authority.
        let node_a = a.certify(test_key(1).public(), Role::Node, "s", "na", v);
        let node_b = b.certify(test_key(2).public(), Role::Node, "s", "nb", v);
        assert_eq!(
            store.check_member(&node_a, Role::Node, NOW).unwrap().name,
            "na"
        );
        assert_eq!(
            store.check_member(&node_b, Role::Node, NOW).unwrap().name,
            "nb"
        );
        assert!(
            store
                .check_member_of(&node_a, "fed0", Role::Node, NOW)
                .is_ok()
        );
        // The rogue is not anchored: its certificates, agreements and lists are refused by
        // the fact, and nothing changes for a or b.
        let node_r = rogue.certify(test_key(3).public(), Role::Node, "s", "nr", v);
        let unanchored = TrustError::UnanchoredAuthority {
            federation: "fed0".into(),
            authority: rogue.public(),
        };
        assert_eq!(
            store.check_member(&node_r, Role::Node, NOW),
            Err(unanchored.clone())
        );
        assert_eq!(
            store.check_member_of(&node_r, "fed0", Role::Node, NOW),
            Err(unanchored.clone())
        );
        let rogue_peering = rogue.peer(
            "fed0",
            a.public(),
            &[Role::Principal],
            PrincipalFilter::All,
            PeeringLimits::default(),
            v,
        );
        assert_eq!(store.add_agreement(&rogue_peering), Err(unanchored.clone()));
        // The rogue revokes "fed0"'s node serial 1 and a's node key: refused, a's node lives.
        let rogue_list = rogue.revoke(&[1], &[test_key(1).public()], NOW);
        assert_eq!(store.add_revocation(&rogue_list), Err(unanchored));
        assert!(store.check_member(&node_a, Role::Node, NOW).is_ok());
        // b's list revokes b's serials only: a's certificate with the same serial lives.
        let b_list = b.revoke(&[node_b.verify().unwrap().serial], &[], NOW);
        let serial_a = node_a.verify().unwrap().serial;
        assert_eq!(
            serial_a,
            node_b.verify().unwrap().serial,
            "same serial in each"
        );
        assert_eq!(store.add_revocation(&b_list), Ok(true));
        assert!(store.check_member(&node_a, Role::Node, NOW).is_ok());
        assert!(matches!(
            store.check_member(&node_b, Role::Node, NOW),
            Err(TrustError::Revoked { .. })
        ));
        assert!(store.revoking_member(&node_a.verify().unwrap()).is_none());
        assert!(store.revoking_member(&node_b.verify().unwrap()).is_some());
        // The exchange names lists by key; a list is found by that name.
        let versions = store.revocation_versions();
        assert_eq!(versions.len(), 1);
        assert!(versions[0].0.starts_with("fed0@"), "{versions:?}");
        assert_eq!(
            store.signed_revocation(&versions[0].0).unwrap().signer,
            b.public()
        );
        assert_eq!(store.revocation_list_of(&b.public()).unwrap().version, 1);
        assert!(store.revocation_list_of(&a.public()).is_none());
        // A trusted key under another name than its anchor's is refused.
        let mut renamed = Authority::with_key("fed9", test_key(111)).unwrap();
        let node_x = renamed.certify(test_key(4).public(), Role::Node, "s", "nx", v);
        assert!(matches!(
            store.check_member(&node_x, Role::Node, NOW),
            Err(TrustError::LabelMismatch { .. })
        ));
    }

    /// Testbed A's fed0 serves principals of testbed B's fed0 under an agreement naming B's
    /// key; A's own principals are local; a rogue fed0's principal gets nothing.
    #[test]
    fn peering_between_same_named_federations_goes_by_key() {
        let mut a = Authority::with_key("fed0", test_key(121)).unwrap();
        let mut b = Authority::with_key("fed0", test_key(122)).unwrap();
        let mut rogue = Authority::with_key("fed0", test_key(123)).unwrap();
        let v = Validity::days(NOW, 1);
        let mut store = TrustStore::new();
        store.add_federation("fed0", a.public()).unwrap();
        let agreement = a.peer(
            "fed0",
            b.public(),
            &[Role::Principal, Role::Broker],
            PrincipalFilter::All,
            PeeringLimits {
                max_slivers_per_principal: Some(2),
                ..Default::default()
            },
            v,
        );
        store.add_agreement(&agreement).unwrap();
        // Only A is anchored: the bare name still resolves to A.
        assert_eq!(store.resolve("fed0"), Ok(a.public()));
        let alice_b = b.certify(test_key(1).public(), Role::Principal, "s", "alice", v);
        let served = store.serves_under(&a.public(), &alice_b, NOW).unwrap();
        assert_eq!(served.limits().unwrap().max_slivers_per_principal, Some(2));
        assert!(
            store
                .serves("fed0", &alice_b, NOW)
                .unwrap()
                .agreement
                .is_some()
        );
        let carol_a = a.certify(test_key(2).public(), Role::Principal, "s", "carol", v);
        assert_eq!(
            store
                .serves_under(&a.public(), &carol_a, NOW)
                .unwrap()
                .agreement,
            None
        );
        let mallory = rogue.certify(test_key(3).public(), Role::Principal, "s", "m", v);
        let Err(TrustError::NoPeering {
            peer_federation, ..
        }) = store.serves_under(&a.public(), &mallory, NOW)
        else {
            panic!("a rogue fed0's principal must not be served");
        };
        assert_eq!(peer_federation, qualified("fed0", &rogue.public()));
        // B's authority may revoke its principal (its key is named by the agreement) and the
        // rogue may not.
        assert!(matches!(
            store.add_revocation(&rogue.revoke(&[], &[test_key(1).public()], NOW)),
            Err(TrustError::UnanchoredAuthority { .. })
        ));
        assert!(store.serves_under(&a.public(), &alice_b, NOW).is_ok());
        store
            .add_revocation(&b.revoke(&[], &[test_key(1).public()], NOW))
            .unwrap();
        assert!(matches!(
            store.serves_under(&a.public(), &alice_b, NOW),
            Err(TrustError::KeyRevoked { .. })
        ));
        // Anchoring B too: both fed0 anchors hold, the name is ambiguous, displays qualify it.
        store.add_federation("fed0", b.public()).unwrap();
        assert!(matches!(
            store.serves("fed0", &carol_a, NOW),
            Err(TrustError::AmbiguousFederation { .. })
        ));
        assert_eq!(
            store.display_name("fed0", &b.public()),
            qualified("fed0", &b.public())
        );
    }
}
