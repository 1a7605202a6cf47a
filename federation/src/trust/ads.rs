//! Validation of resource advertisements before they are believed or relayed.
//!
//! An ad is accepted only if every check passes, in this order:
//! 1. the signature verifies and the body decodes;
//! 2. the signer is the node the ad is about;
//! 3. the ad carries a membership certificate of role `node` in the ad's federation, signed
//!    by that federation's trusted authority, in force and not revoked;
//! 4. the certificate's subject is the node, and its site the ad's site;
//! 5. the ad is not issued in the future (beyond [`MAX_CLOCK_SKEW_SECS`]) and not expired;
//! 6. its `seq` is above the last one seen from that node.
//!
//! The cheap checks run first on the decoded body, before any signature is verified: a node
//! receives every ad of its federation on every heartbeat, mostly re-announcements, and a
//! stale or expired copy is dropped for the price of a CBOR decode. Such an ad is dropped
//! whatever its signature, so only the reason reported differs for a forged one.
//!
//! A node's membership certificate rides in each of its ads, unchanged for months. A
//! [`CertCache`] (one per overlay) remembers certificates whose signature already verified, so
//! each ad costs one signature check instead of two; expiry, revocation, authority and role
//! are still checked on every ad.

use std::collections::HashMap;

use capability_schema::{MembershipCert, PublicKey, ResourceAd, Role, SignatureError, Signed};

use super::store::{TrustError, TrustStore};

/// How far in the future an ad's `issued_at` may lie (clocks of nodes are not exact).
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// Why an ad was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdRejection {
    /// The gossip message is not an ad at all.
    #[error("not a signed ad: {0}")]
    Malformed(String),
    /// The signature does not verify or the body does not decode.
    #[error("ad signature: {0}")]
    Signature(#[from] SignatureError),
    /// Signed by another key than the node it describes.
    #[error("ad about node {node} is signed by {signer}")]
    SignerNotNode {
        /// The node in the ad.
        node: PublicKey,
        /// The signer.
        signer: PublicKey,
    },
    /// The node's membership certificate fails.
    #[error("membership of node {node}: {error}")]
    Membership {
        /// The node.
        node: PublicKey,
        /// The failed check.
        error: Box<TrustError>,
    },
    /// The certificate is another key's.
    #[error("node {node} carries the certificate of {subject}")]
    CertSubjectMismatch {
        /// The node.
        node: PublicKey,
        /// The certificate's subject.
        subject: PublicKey,
    },
    /// The ad claims another site than its certificate.
    #[error("node {node} claims site {claimed:?}, but is certified at {certified:?}")]
    SiteMismatch {
        /// The node.
        node: PublicKey,
        /// The ad's site.
        claimed: String,
        /// The certificate's site.
        certified: String,
    },
    /// The ad is for another federation than the topic it came on.
    #[error("ad of federation {federation:?} arrived on the topic of {topic:?}")]
    WrongTopic {
        /// The ad's federation.
        federation: String,
        /// The topic's federation.
        topic: String,
    },
    /// Issued in the future.
    #[error("ad of node {node} is issued at {issued_at}, in the future (now {now})")]
    IssuedInFuture {
        /// The node.
        node: PublicKey,
        /// Its `issued_at`.
        issued_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// Past its time to live.
    #[error("ad of node {node} expired at {expired_at} (now {now})")]
    Expired {
        /// The node.
        node: PublicKey,
        /// Its expiry.
        expired_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// Not newer than the last ad seen from the node.
    #[error("ad of node {node} has seq {seq}, not above the last seen {last_seen}")]
    Stale {
        /// The node.
        node: PublicKey,
        /// Its seq.
        seq: u64,
        /// The last seq seen.
        last_seen: u64,
    },
}

impl AdRejection {
    /// Whether relaying this ad is misbehaviour that should cost the relaying peer its
    /// reputation. Stale ads and ads from a clock slightly ahead can reach an honest relay
    /// (two ads of one node racing along different paths), so they are only ignored.
    pub fn is_misbehaviour(&self) -> bool {
        !matches!(
            self,
            AdRejection::Stale { .. } | AdRejection::IssuedInFuture { .. }
        )
    }
}

/// Membership certificates whose signature verified, keyed by that signature (ed25519
/// signatures are deterministic, and an entry is used only for the identical signed object).
/// Bounded: when full it starts over, which costs one signature check per certificate.
#[derive(Debug, Clone)]
pub struct CertCache {
    verified: HashMap<[u8; 64], (Signed<MembershipCert>, MembershipCert)>,
    capacity: usize,
}

impl CertCache {
    /// A cache of at most `capacity` certificates.
    pub fn new(capacity: usize) -> Self {
        CertCache {
            verified: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// How many certificates it holds.
    pub fn len(&self) -> usize {
        self.verified.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.verified.is_empty()
    }

    /// The body of `signed`, its signature verified now or on an earlier call.
    fn verify(
        &mut self,
        signed: &Signed<MembershipCert>,
    ) -> Result<MembershipCert, SignatureError> {
        let Ok(key) = <[u8; 64]>::try_from(signed.signature.as_slice()) else {
            return signed.verify();
        };
        if let Some((known, cert)) = self.verified.get(&key)
            && known == signed
        {
            return Ok(cert.clone());
        }
        let cert = signed.verify()?;
        if self.verified.len() >= self.capacity {
            self.verified.clear();
        }
        self.verified.insert(key, (signed.clone(), cert.clone()));
        Ok(cert)
    }
}

impl Default for CertCache {
    /// Room for the certificates of 16,384 nodes (a few MiB).
    fn default() -> Self {
        CertCache::new(16_384)
    }
}

impl TrustStore {
    /// Validates an ad at `now`, given the last `seq` seen from its node (if any).
    pub fn validate_ad(
        &self,
        signed: &Signed<ResourceAd>,
        now: u64,
        last_seq: Option<u64>,
    ) -> Result<ResourceAd, AdRejection> {
        self.validate_ad_cached(signed, now, last_seq, &mut CertCache::new(1))
    }

    /// [`TrustStore::validate_ad`], skipping the signature check of a membership certificate
    /// already verified into `certs`.
    pub fn validate_ad_cached(
        &self,
        signed: &Signed<ResourceAd>,
        now: u64,
        last_seq: Option<u64>,
        certs: &mut CertCache,
    ) -> Result<ResourceAd, AdRejection> {
        let ad = signed.peek_unverified().map_err(SignatureError::from)?;
        if signed.signer != ad.node {
            return Err(AdRejection::SignerNotNode {
                node: ad.node,
                signer: signed.signer,
            });
        }
        Self::check_ad_freshness(&ad, now, last_seq)?;
        let ad = signed.verify()?;
        let cert = certs
            .verify(&ad.membership)
            .map_err(TrustError::from)
            .and_then(|cert| {
                self.check_verified_member_of(&ad.membership, cert, &ad.federation, Role::Node, now)
            })
            .map_err(|error| AdRejection::Membership {
                node: ad.node,
                error: Box::new(error),
            })?;
        if cert.subject != ad.node {
            return Err(AdRejection::CertSubjectMismatch {
                node: ad.node,
                subject: cert.subject,
            });
        }
        if cert.site != ad.site {
            return Err(AdRejection::SiteMismatch {
                node: ad.node,
                claimed: ad.site,
                certified: cert.site,
            });
        }
        Ok(ad)
    }

    /// The checks that need no signature: not from the future, not expired, not stale.
    fn check_ad_freshness(
        ad: &ResourceAd,
        now: u64,
        last_seq: Option<u64>,
    ) -> Result<(), AdRejection> {
        if ad.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(AdRejection::IssuedInFuture {
                node: ad.node,
                issued_at: ad.issued_at,
                now,
            });
        }
        if ad.is_expired(now) {
            return Err(AdRejection::Expired {
                node: ad.node,
                expired_at: ad.expires_at(),
                now,
            });
        }
        if let Some(last_seen) = last_seq
            && ad.seq <= last_seen
        {
            return Err(AdRejection::Stale {
                node: ad.node,
                seq: ad.seq,
                last_seen,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;

    use super::*;
    use crate::testing::{NOW, TestFederation};

    #[test]
    fn each_check_names_its_failure() {
        let mut fed = TestFederation::new("f1", 100);
        let mut store = TrustStore::new();
        fed.trust(&mut store);
        let node = fed.node(1, "s1");
        let ad = node.ad(5, NOW, 60);
        assert_eq!(store.validate_ad(&ad, NOW, None).unwrap().seq, 5);
        assert_eq!(store.validate_ad(&ad, NOW, Some(4)).unwrap().seq, 5);
        assert!(matches!(
            store.validate_ad(&ad, NOW, Some(5)),
            Err(AdRejection::Stale { .. })
        ));
        assert!(matches!(
            store.validate_ad(&ad, NOW + 61, None),
            Err(AdRejection::Expired { .. })
        ));
        assert!(matches!(
            store.validate_ad(&ad, NOW - 61, None),
            Err(AdRejection::IssuedInFuture { .. })
        ));
        // Uncertified: a certificate from a federation nobody trusts.
        let rogue = TestFederation::new("f1", 200).node(2, "s1").ad(1, NOW, 60);
        assert!(matches!(
            store.validate_ad(&rogue, NOW, None),
            Err(AdRejection::Membership { .. })
        ));
        // Bad signature.
        let mut bad = ad.clone();
        let last = bad.signature.len() - 1;
        bad.signature[last] ^= 1;
        assert!(matches!(
            store.validate_ad(&bad, NOW, None),
            Err(AdRejection::Signature(_))
        ));
        // Someone else's certificate, and someone else's signature.
        let other = fed.node(3, "s1");
        let mut body = ad.verify().unwrap();
        body.membership = other.cert.clone();
        let stolen = Signed::sign(&node.key, &body);
        assert!(matches!(
            store.validate_ad(&stolen, NOW, None),
            Err(AdRejection::CertSubjectMismatch { .. })
        ));
        let mut body = ad.verify().unwrap();
        body.site = "elsewhere".into();
        let moved = Signed::sign(&node.key, &body);
        assert!(matches!(
            store.validate_ad(&moved, NOW, None),
            Err(AdRejection::SiteMismatch { .. })
        ));
        let resigned = Signed::sign(&test_key(9), &ad.verify().unwrap());
        assert!(matches!(
            store.validate_ad(&resigned, NOW, None),
            Err(AdRejection::SignerNotNode { .. })
        ));
        assert!(
            !AdRejection::Stale {
                node: node.key.public(),
                seq: 1,
                last_seen: 1
            }
            .is_misbehaviour()
        );
    }

    #[test]
    fn cached_certificates_are_still_checked_for_revocation_and_tampering() {
        let mut fed = TestFederation::new("f1", 100);
        let mut store = TrustStore::new();
        fed.trust(&mut store);
        let node = fed.node(1, "s1");
        let mut certs = CertCache::new(4);
        store
            .validate_ad_cached(&node.ad(1, NOW, 60), NOW, None, &mut certs)
            .unwrap();
        assert_eq!(certs.len(), 1);
        // The next ad of the node reuses the verified certificate.
        store
            .validate_ad_cached(&node.ad(2, NOW, 60), NOW, Some(1), &mut certs)
            .unwrap();
        assert_eq!(certs.len(), 1);

        // A certificate with the cached signature but another body is not taken from the cache.
        let mut tampered_cert = node.cert.clone();
        let mut body = tampered_cert.peek_unverified().unwrap();
        body.site = "s2".into();
        tampered_cert.body = capability_schema::codec::encode(&body);
        let mut ad = node.ad_body(3, NOW, 60);
        ad.site = "s2".into();
        ad.membership = tampered_cert;
        let forged = Signed::sign(&node.key, &ad);
        assert!(matches!(
            store.validate_ad_cached(&forged, NOW, Some(2), &mut certs),
            Err(AdRejection::Membership { .. })
        ));

        // Revoking the node takes effect although its certificate is cached.
        let serial = node.cert.peek_unverified().unwrap().serial;
        let list = fed.authority.revoke(&[serial], &[], NOW);
        store.add_revocation(&list).unwrap();
        assert!(matches!(
            store.validate_ad_cached(&node.ad(4, NOW, 60), NOW, Some(2), &mut certs),
            Err(AdRejection::Membership { .. })
        ));

        // A full cache starts over rather than growing.
        for seed in 10..20 {
            let other = fed.node(seed, "s1");
            let _ = store.validate_ad_cached(&other.ad(1, NOW, 60), NOW, None, &mut certs);
        }
        assert!(certs.len() <= 4);
    }

    #[test]
    fn stale_copies_are_dropped_before_any_signature_check() {
        let mut fed = TestFederation::new("f1", 100);
        let mut store = TrustStore::new();
        fed.trust(&mut store);
        let node = fed.node(1, "s1");
        let mut ad = node.ad(5, NOW, 60);
        let last = ad.signature.len() - 1;
        ad.signature[last] ^= 1;
        // Stale: ignored (not misbehaviour) without verifying; fresh: the signature fails.
        assert!(matches!(
            store.validate_ad(&ad, NOW, Some(5)),
            Err(AdRejection::Stale { .. })
        ));
        assert!(matches!(
            store.validate_ad(&ad, NOW, Some(4)),
            Err(AdRejection::Signature(_))
        ));
    }
}
