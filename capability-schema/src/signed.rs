//! Signed objects: a CBOR body, its signer and a signature under a per-type domain tag.
//!
//! The signature covers `"planetmesh-signed/v1" 0x00 <domain tag> 0x00 <body>`, where the tag
//! is fixed per type ([`SignedType::DOMAIN`]). A lease's signature therefore never verifies as
//! an ad's, even if the two bodies happened to be the same bytes. [`Signed::verify`] returns the
//! typed body only when the tag matches the expected type and the signature checks out.
//!
//! The body stays as the exact bytes that were signed, so re-encoding never changes what a
//! signature covers and a relayed object can be forwarded unchanged.

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{self, DecodeError};
use crate::identity::{PublicKey, SecretKey};

/// Prefix of every signed message, so PlanetMesh signatures are never valid elsewhere.
const CONTEXT: &[u8] = b"planetmesh-signed/v1";

/// A type that can be signed: it names its domain-separation tag.
pub trait SignedType: Serialize + DeserializeOwned {
    /// The domain tag, e.g. `planetmesh/lease/v1`; unique per type.
    const DOMAIN: &'static str;
}

/// Why a signed object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The object is of another type (its tag is not the expected one).
    #[error("signed object is a {found:?}, expected a {expected:?}")]
    WrongDomain {
        /// The tag expected for the type.
        expected: String,
        /// The tag the object carries.
        found: String,
    },
    /// The signature does not verify under the signer's key.
    #[error("signature by {0} does not verify")]
    BadSignature(PublicKey),
    /// The signer is not the one required.
    #[error("signed by {found}, expected {expected}")]
    WrongSigner {
        /// Who had to sign.
        expected: PublicKey,
        /// Who signed.
        found: PublicKey,
    },
    /// The body does not decode as the type.
    #[error("signed body: {0}")]
    Body(#[from] DecodeError),
}

/// A body of type `T`, signed by `signer` under `T`'s domain tag.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    /// The domain tag of `T` at signing time.
    pub domain: String,
    /// The CBOR encoding of the body, exactly as signed.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The signer's public key.
    pub signer: PublicKey,
    /// The ed25519 signature.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    #[serde(skip)]
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            domain: self.domain.clone(),
            body: self.body.clone(),
            signer: self.signer,
            signature: self.signature.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.domain == other.domain
            && self.body == other.body
            && self.signer == other.signer
            && self.signature == other.signature
    }
}

impl<T> Eq for Signed<T> {}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("domain", &self.domain)
            .field("body_len", &self.body.len())
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

fn message(domain: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTEXT.len() + domain.len() + body.len() + 2);
    out.extend_from_slice(CONTEXT);
    out.push(0);
    out.extend_from_slice(domain.as_bytes());
    out.push(0);
    out.extend_from_slice(body);
    out
}

impl<T: SignedType> Signed<T> {
    /// Signs `value` with `key`.
    pub fn sign(key: &SecretKey, value: &T) -> Self {
        let body = codec::encode(value);
        let signature = key.sign(&message(T::DOMAIN, &body)).to_vec();
        Signed {
            domain: T::DOMAIN.to_owned(),
            body,
            signer: key.public(),
            signature,
            _type: PhantomData,
        }
    }

    /// Checks the tag and the signature, then decodes the body.
    pub fn verify(&self) -> Result<T, SignatureError> {
        if self.domain != T::DOMAIN {
            return Err(SignatureError::WrongDomain {
                expected: T::DOMAIN.to_owned(),
                found: self.domain.clone(),
            });
        }
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| SignatureError::BadSignature(self.signer))?;
        if !self
            .signer
            .verify(&message(&self.domain, &self.body), &signature)
        {
            return Err(SignatureError::BadSignature(self.signer));
        }
        Ok(codec::decode(&self.body)?)
    }

    /// Like [`Signed::verify`], and the signer must be `expected`.
    pub fn verify_by(&self, expected: &PublicKey) -> Result<T, SignatureError> {
        if self.signer != *expected {
            return Err(SignatureError::WrongSigner {
                expected: *expected,
                found: self.signer,
            });
        }
        self.verify()
    }

    /// Decodes the body without checking the signature: only for display of objects already
    /// verified, or for diagnostics.
    pub fn peek_unverified(&self) -> Result<T, DecodeError> {
        codec::decode(&self.body)
    }

    /// The CBOR encoding of the whole signed object.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a signed object from untrusted bytes (not yet verified).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_key;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
    }
    impl SignedType for Note {
        const DOMAIN: &'static str = "planetmesh/test-note/v1";
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Other {
        text: String,
    }
    impl SignedType for Other {
        const DOMAIN: &'static str = "planetmesh/test-other/v1";
    }

    #[test]
    fn verifies_and_returns_the_body() {
        let key = test_key(1);
        let signed = Signed::sign(&key, &Note { text: "hi".into() });
        let back = Signed::<Note>::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(back.verify().unwrap(), Note { text: "hi".into() });
        assert_eq!(back.verify_by(&key.public()).unwrap().text, "hi");
        assert!(matches!(
            back.verify_by(&test_key(2).public()),
            Err(SignatureError::WrongSigner { .. })
        ));
    }

    #[test]
    fn a_signature_of_one_type_never_verifies_as_another() {
        let signed = Signed::sign(&test_key(1), &Note { text: "hi".into() });
        let as_other = Signed::<Other>::from_bytes(&signed.to_bytes()).unwrap();
        assert!(matches!(
            as_other.verify(),
            Err(SignatureError::WrongDomain { .. })
        ));
        // Even with the tag rewritten, the signature does not cover the new tag.
        let mut relabelled = as_other.clone();
        relabelled.domain = Other::DOMAIN.to_owned();
        assert!(matches!(
            relabelled.verify(),
            Err(SignatureError::BadSignature(_))
        ));
    }

    #[test]
    fn tampering_is_detected() {
        let key = test_key(1);
        let mut signed = Signed::sign(&key, &Note { text: "hi".into() });
        let last = signed.body.len() - 1;
        signed.body[last] ^= 1;
        assert!(matches!(
            signed.verify(),
            Err(SignatureError::BadSignature(_))
        ));
        let mut resigner = Signed::sign(&key, &Note { text: "hi".into() });
        resigner.signer = test_key(2).public();
        assert!(matches!(
            resigner.verify(),
            Err(SignatureError::BadSignature(_))
        ));
        let mut short = Signed::sign(&key, &Note { text: "hi".into() });
        short.signature.pop();
        assert!(matches!(
            short.verify(),
            Err(SignatureError::BadSignature(_))
        ));
    }
}
