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

use capability_schema::{PublicKey, ResourceAd, Role, SignatureError, Signed};

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

impl TrustStore {
    /// Validates an ad at `now`, given the last `seq` seen from its node (if any).
    pub fn validate_ad(
        &self,
        signed: &Signed<ResourceAd>,
        now: u64,
        last_seq: Option<u64>,
    ) -> Result<ResourceAd, AdRejection> {
        let ad = signed.verify()?;
        if signed.signer != ad.node {
            return Err(AdRejection::SignerNotNode {
                node: ad.node,
                signer: signed.signer,
            });
        }
        let cert = self
            .check_member_of(&ad.membership, &ad.federation, Role::Node, now)
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
        Ok(ad)
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
}
