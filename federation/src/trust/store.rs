//! The trust store: trusted authorities, peering agreements and revocation lists.
//!
//! - Anchors: federation name → authority key, configured by the operator (or added from a
//!   self-signed [`FederationAnchor`]). Certificates of a federation verify only under its
//!   anchor.
//! - Agreements: [`PeeringAgreement`]s signed by an anchored authority. An agreement of `F`
//!   with `G` names `G`'s authority key, so members of `G` can be checked for the purpose of
//!   being served by `F` even when `G` is not anchored locally (if it is, the keys must match).
//! - Revocation lists: the newest list per federation; a revoked serial kills the certificate
//!   or agreement with that serial, a revoked key kills every certificate of that key.

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
    #[error("unknown federation {0:?}: no trusted authority is configured for it")]
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
    /// A second, different authority key offered for a known federation.
    #[error("federation {federation:?} is anchored to {existing}; refusing {offered}")]
    ConflictingAuthority {
        /// The federation.
        federation: String,
        /// The anchored key.
        existing: PublicKey,
        /// The other key.
        offered: PublicKey,
    },
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
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    anchors: BTreeMap<String, PublicKey>,
    agreements: Vec<PeeringAgreement>,
    revocations: BTreeMap<String, RevocationList>,
    /// The same lists as signed (to hand to peers).
    signed_revocations: BTreeMap<String, Signed<RevocationList>>,
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

impl TrustStore {
    /// An empty store: it trusts nobody.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `authority` as the authority of federation `name`.
    pub fn add_federation(&mut self, name: &str, authority: PublicKey) -> Result<(), TrustError> {
        match self.anchors.get(name) {
            Some(existing) if *existing != authority => Err(TrustError::ConflictingAuthority {
                federation: name.to_owned(),
                existing: *existing,
                offered: authority,
            }),
            _ => {
                self.anchors.insert(name.to_owned(), authority);
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

    /// The anchored authority of `federation`.
    pub fn authority_of(&self, federation: &str) -> Option<PublicKey> {
        self.anchors.get(federation).copied()
    }

    /// The anchored federations and their authorities.
    pub fn federations(&self) -> impl Iterator<Item = (&str, &PublicKey)> {
        self.anchors.iter().map(|(name, key)| (name.as_str(), key))
    }

    /// The authority of `federation`: its anchor, or else the key named by the newest
    /// agreement an anchored federation signed with it.
    fn authority_for(&self, federation: &str) -> Option<PublicKey> {
        self.authority_of(federation).or_else(|| {
            self.agreements
                .iter()
                .filter(|a| a.peer_federation == federation)
                .max_by_key(|a| a.serial)
                .map(|a| a.peer_authority)
        })
    }

    /// Checks `signed` is signed by the authority of `federation` and that `claimed` (the
    /// authority field of the body) is that key too.
    fn check_authority(
        &self,
        federation: &str,
        signer: &PublicKey,
        claimed: &PublicKey,
        authority: Option<PublicKey>,
    ) -> Result<(), TrustError> {
        let expected =
            authority.ok_or_else(|| TrustError::UnknownFederation(federation.to_owned()))?;
        for found in [signer, claimed] {
            if *found != expected {
                return Err(TrustError::WrongAuthority {
                    federation: federation.to_owned(),
                    expected,
                    found: *found,
                });
            }
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
            self.authority_of(&agreement.federation),
        )?;
        if let Some(anchored) = self.authority_of(&agreement.peer_federation)
            && anchored != agreement.peer_authority
        {
            return Err(TrustError::WrongAuthority {
                federation: agreement.peer_federation.clone(),
                expected: anchored,
                found: agreement.peer_authority,
            });
        }
        let known = self
            .agreements
            .iter()
            .any(|a| a.federation == agreement.federation && a.serial == agreement.serial);
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
    /// A list with the version already held is accepted and changes nothing.
    pub fn add_revocation(&mut self, signed: &Signed<RevocationList>) -> Result<bool, TrustError> {
        let list = signed.verify()?;
        self.check_authority(
            &list.federation,
            &signed.signer,
            &list.authority,
            self.authority_for(&list.federation),
        )?;
        if let Some(held) = self.revocations.get(&list.federation) {
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
            .insert(list.federation.clone(), signed.clone());
        self.revocations.insert(list.federation.clone(), list);
        Ok(true)
    }

    /// The newest revocation list held for `federation`, as its authority signed it.
    pub fn signed_revocation(&self, federation: &str) -> Option<&Signed<RevocationList>> {
        self.signed_revocations.get(federation)
    }

    /// The newest revocation list held for `federation`.
    pub fn revocation_list(&self, federation: &str) -> Option<&RevocationList> {
        self.revocations.get(federation)
    }

    fn check_revoked(
        &self,
        federation: &str,
        serial: u64,
        key: Option<&PublicKey>,
    ) -> Result<(), TrustError> {
        let Some(list) = self.revocations.get(federation) else {
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

    /// Every revocation list held (the newest per federation).
    pub fn revocation_lists(&self) -> impl Iterator<Item = &RevocationList> {
        self.revocations.values()
    }

    /// The version held per federation (what a peer is told at a revocation exchange).
    pub fn revocation_versions(&self) -> Vec<(String, u64)> {
        self.revocations
            .iter()
            .map(|(federation, list)| (federation.clone(), list.version))
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

    /// The first list held that revokes certificate `serial` of `federation` or its subject.
    pub fn revoking_member(&self, cert: &MembershipCert) -> Option<&RevocationList> {
        self.revocations
            .get(&cert.federation)
            .filter(|l| l.serials.contains(&cert.serial) || l.keys.contains(&cert.subject))
    }

    /// Checks a certificate against `authority` (signature, window, revocation, role).
    fn check_cert(
        &self,
        signed: &Signed<MembershipCert>,
        cert: MembershipCert,
        authority: Option<PublicKey>,
        role: Role,
        now: u64,
    ) -> Result<MembershipCert, TrustError> {
        self.check_authority(&cert.federation, &signed.signer, &cert.authority, authority)?;
        window(
            &cert.federation,
            cert.serial,
            cert.issued_at,
            cert.expires_at,
            now,
        )?;
        self.check_revoked(&cert.federation, cert.serial, Some(&cert.subject))?;
        if cert.role != role {
            return Err(TrustError::WrongRole {
                expected: role,
                found: cert.role,
            });
        }
        Ok(cert)
    }

    /// Checks that `signed` certifies a `role` of an anchored federation at `now`.
    pub fn check_member(
        &self,
        signed: &Signed<MembershipCert>,
        role: Role,
        now: u64,
    ) -> Result<MembershipCert, TrustError> {
        let cert = signed.verify()?;
        let authority = self.authority_of(&cert.federation);
        self.check_cert(signed, cert, authority, role, now)
    }

    /// Like [`TrustStore::check_member`], and the federation must be `federation`.
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
        let authority = self.authority_for(federation);
        self.check_cert(signed, cert, authority, role, now)
    }

    /// Whether federation `local` serves the holder of `signed` at `now`: as its own member,
    /// or as a member of another federation under an agreement `local` signed that covers the
    /// holder's role (and, for principals, the holder's key).
    pub fn serves(
        &self,
        local: &str,
        signed: &Signed<MembershipCert>,
        now: u64,
    ) -> Result<Served, TrustError> {
        let cert = signed.verify()?;
        let role = cert.role;
        if cert.federation == local {
            let member = self.check_cert(signed, cert, self.authority_of(local), role, now)?;
            return Ok(Served {
                member,
                agreement: None,
            });
        }
        let peer = cert.federation.clone();
        let mut candidates: Vec<&PeeringAgreement> = self
            .agreements
            .iter()
            .filter(|a| a.federation == local && a.peer_federation == peer)
            .collect();
        if candidates.is_empty() {
            return Err(TrustError::NoPeering {
                federation: local.to_owned(),
                peer_federation: peer,
            });
        }
        candidates.sort_by_key(|a| std::cmp::Reverse(a.serial));
        let mut first_failure = None;
        let mut in_force = None;
        for agreement in candidates {
            let check = window(
                local,
                agreement.serial,
                agreement.issued_at,
                agreement.expires_at,
                now,
            )
            .and_then(|()| self.check_revoked(local, agreement.serial, None));
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
                federation: local.to_owned(),
                peer_federation: peer,
                reason: Box::new(first_failure.unwrap_or_else(|| TrustError::NoPeering {
                    federation: local.to_owned(),
                    peer_federation: cert.federation.clone(),
                })),
            });
        };
        if let Some(anchored) = self.authority_of(&peer)
            && anchored != agreement.peer_authority
        {
            return Err(TrustError::WrongAuthority {
                federation: peer,
                expected: anchored,
                found: agreement.peer_authority,
            });
        }
        let member = self.check_cert(signed, cert, Some(agreement.peer_authority), role, now)?;
        if !agreement.roles.contains(&role) {
            return Err(TrustError::RoleNotServed {
                federation: local.to_owned(),
                peer_federation: peer,
                role,
                serial: agreement.serial,
            });
        }
        if role == Role::Principal && !agreement.principals.admits(&member.subject) {
            return Err(TrustError::PrincipalNotCovered {
                federation: local.to_owned(),
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
            Err(TrustError::UnknownFederation("f2".into()))
        );
        let mut impostor = Authority::with_key("f1", test_key(103)).unwrap();
        let forged = impostor.certify(test_key(2).public(), Role::Node, "s", "n2", v);
        assert!(matches!(
            store.check_member(&forged, Role::Node, NOW),
            Err(TrustError::WrongAuthority { .. })
        ));
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
        assert!(matches!(
            store.add_federation("f1", impostor.public()),
            Err(TrustError::ConflictingAuthority { .. })
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
            Err(TrustError::WrongAuthority { .. })
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
            Err(TrustError::WrongAuthority { .. })
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
            Err(TrustError::UnknownFederation("f2".into()))
        );
    }
}
