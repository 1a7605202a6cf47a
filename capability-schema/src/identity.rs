//! Identities: every party is one ed25519 key.
//!
//! - [`SecretKey`] signs; it never appears on the wire and its [`std::fmt::Debug`] output hides
//!   the secret.
//! - [`PublicKey`] names a party everywhere: in tickets, leases, configs and logs its text form is
//!   `ed25519/<64 hex digits>` (biscuit's own spelling), on the wire it is its 32 raw bytes.
//! - The libp2p `PeerId` of a key is derived by the overlay (`federation::overlay::peer_id`),
//!   so the transport handshake authenticates exactly the party named in tickets and leases;
//!   this crate has no libp2p dependency.
//! - Key files hold `ed25519-private/<hex>`; they are written with mode 0600 and refused on load
//!   when anyone but the owner may read them.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::Signer;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of the text form of a public key.
pub const PUBLIC_PREFIX: &str = "ed25519/";
/// Prefix of the text form of a secret key (the content of a key file).
pub const SECRET_PREFIX: &str = "ed25519-private/";

/// Errors about keys and key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not `ed25519/<64 hex digits>`.
    #[error("not a public key: expected `ed25519/<64 hex digits>`, got {0:?}")]
    BadPublicText(String),
    /// 32 bytes that are not a valid ed25519 point.
    #[error("not a valid ed25519 public key")]
    BadPublicBytes,
    /// The key file's content is not `ed25519-private/<64 hex digits>`.
    #[error(
        "key file {0}: not a PlanetMesh secret key (expected `ed25519-private/<64 hex digits>`)"
    )]
    BadSecretFile(PathBuf),
    /// The key file may be read by others than its owner.
    #[error(
        "key file {path}: mode {mode:o} lets others read the secret key; run `chmod 600 {path}` \
         (or generate a new key if it may have leaked)"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file exists already (keys are never overwritten).
    #[error("key file {0} exists already; refusing to overwrite a key")]
    Exists(PathBuf),
    /// Reading or writing the key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A libp2p peer id that does not carry an inline ed25519 key.
    #[error("peer id {0} does not carry an ed25519 key")]
    NotEd25519PeerId(String),
}

/// A party's secret signing key.
#[derive(Clone)]
pub struct SecretKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public())
    }
}

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        SecretKey(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }

    /// The key with these 32 secret bytes (used for fixed test keys and golden vectors).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(bytes))
    }

    /// The 32 secret bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The same key as a biscuit key pair (agents mint tickets with it, holders delegate).
    #[allow(
        clippy::expect_used,
        reason = "biscuit takes any 32 bytes as an ed25519 secret, and ours are 32 bytes"
    )]
    pub fn to_biscuit(&self) -> biscuit_auth::KeyPair {
        let private = biscuit_auth::PrivateKey::from_bytes(
            &self.to_bytes(),
            biscuit_auth::Algorithm::Ed25519,
        )
        .expect("an ed25519 secret is always 32 valid bytes");
        biscuit_auth::KeyPair::from(&private)
    }

    /// The text form `ed25519-private/<hex>` (the content of a key file).
    pub fn to_secret_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", hex::encode(self.to_bytes()))
    }

    /// Writes the key to a new file with mode 0600; never overwrites an existing file.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::Exists(path.to_owned())
                } else {
                    io(e)
                }
            })?;
        // The umask may have removed bits but never adds any; make the mode exact anyway.
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        file.write_all(format!("{}\n", self.to_secret_text()).as_bytes())
            .map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Loads a key file written by [`SecretKey::save`]; refuses files others may read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let text = fs::read_to_string(path).map_err(io)?;
        Self::from_secret_text(text.trim()).ok_or_else(|| KeyError::BadSecretFile(path.to_owned()))
    }

    /// Loads the key at `path`, or generates and saves a new one when there is no file.
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            Self::load(path)
        } else {
            let key = Self::generate();
            key.save(path)?;
            Ok(key)
        }
    }

    fn from_secret_text(text: &str) -> Option<Self> {
        let hex_part = text.strip_prefix(SECRET_PREFIX)?;
        let bytes: [u8; 32] = hex::decode(hex_part).ok()?.try_into().ok()?;
        Some(Self::from_bytes(&bytes))
    }
}

/// A party's public key: its name everywhere in PlanetMesh.
///
/// It holds the key's 32 bytes, and they are always a valid ed25519 point: every way to make
/// one checks it ([`PublicKey::from_bytes`], the text form, and decoding from the wire in both
/// the binary and the human-readable form), so a key decoded from a peer's message can be
/// converted (peer id, libp2p or biscuit key) without a failure path that a peer could reach.
/// The check is one point decompression per key decoded.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The key with these 32 bytes, if they are a valid ed25519 point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::BadPublicBytes)?;
        Ok(PublicKey(*bytes))
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn point(&self) -> Result<ed25519_dalek::VerifyingKey, KeyError> {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::BadPublicBytes)
    }

    /// Checks `signature` over `message` (strict verification: no malleable signatures).
    /// False also when the key is not a valid point.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let signature = ed25519_dalek::Signature::from_bytes(signature);
        self.point()
            .is_ok_and(|key| key.verify_strict(message, &signature).is_ok())
    }

    /// The same key as a biscuit public key.
    pub fn to_biscuit(&self) -> Result<biscuit_auth::PublicKey, KeyError> {
        biscuit_auth::PublicKey::from_bytes(&self.0, biscuit_auth::Algorithm::Ed25519)
            .map_err(|_| KeyError::BadPublicBytes)
    }

    /// The key of a biscuit public key, if it is an ed25519 key.
    pub fn from_biscuit(key: &biscuit_auth::PublicKey) -> Result<Self, KeyError> {
        let bytes: [u8; 32] = key
            .to_bytes()
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::BadPublicBytes)?;
        Self::from_bytes(&bytes)
    }

    /// A short form for logs and tables: the first 8 hex digits.
    pub fn short(&self) -> String {
        hex::encode(&self.as_bytes()[..4])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", hex::encode(self.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::BadPublicText(text.to_owned());
        let hex_part = text.strip_prefix(PUBLIC_PREFIX).ok_or_else(bad)?;
        if hex_part.len() != 64 {
            return Err(bad());
        }
        let bytes: [u8; 32] = hex::decode(hex_part)
            .map_err(|_| bad())?
            .try_into()
            .map_err(|_| bad())?;
        Self::from_bytes(&bytes)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_bytes(self.as_bytes())
        }
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if deserializer.is_human_readable() {
            let text = String::deserialize(deserializer)?;
            text.parse().map_err(D::Error::custom)
        } else {
            let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
            let array: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| D::Error::invalid_length(bytes.len(), &"32 bytes"))?;
            PublicKey::from_bytes(&array).map_err(D::Error::custom)
        }
    }
}

/// Fixed keys for tests, examples and golden vectors: `test_key(n)` is the same key in every run.
/// Only in test builds and with the `test-utils` feature: the keys are public knowledge.
#[cfg(any(test, feature = "test-utils"))]
pub fn test_key(n: u8) -> SecretKey {
    let mut bytes = [0u8; 32];
    bytes[0] = n;
    bytes[31] = 0x5a;
    SecretKey::from_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_rejects_garbage() {
        let key = test_key(1).public();
        let text = key.to_string();
        assert!(text.starts_with("ed25519/"));
        assert_eq!(text.len(), 8 + 64);
        assert_eq!(text.parse::<PublicKey>().unwrap(), key);
        for bad in [
            "",
            "ed25519/",
            "ed25519/zz",
            "rsa/00",
            &text[1..],
            &format!("{text}00"),
        ] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn biscuit_keys_are_the_same_key() {
        let secret = test_key(3);
        let biscuit_public = secret.to_biscuit().public();
        assert_eq!(
            PublicKey::from_biscuit(&biscuit_public).unwrap(),
            secret.public()
        );
        assert_eq!(secret.public().to_biscuit().unwrap(), biscuit_public);
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_key() {
        let secret = test_key(4);
        let sig = secret.sign(b"hello");
        assert!(secret.public().verify(b"hello", &sig));
        assert!(!secret.public().verify(b"hellp", &sig));
        assert!(!test_key(5).public().verify(b"hello", &sig));
    }

    /// 32 bytes that are not an ed25519 point: y = 2 has no x on the curve.
    fn invalid_point() -> [u8; 32] {
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        assert!(
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).is_err(),
            "the test bytes must not be a point"
        );
        bytes
    }

    #[test]
    fn keys_that_are_not_points_are_refused_in_every_form() {
        let bad = invalid_point();
        assert!(matches!(
            PublicKey::from_bytes(&bad),
            Err(KeyError::BadPublicBytes)
        ));
        // Binary (CBOR bytes, as on the wire).
        let wire = crate::codec::encode(&serde_bytes::Bytes::new(&bad));
        let err = crate::codec::decode::<PublicKey>(&wire).unwrap_err();
        assert!(matches!(err, crate::DecodeError::Shape(_)), "{err:?}");
        assert!(
            err.to_string().contains("not a valid ed25519 public key"),
            "{err}"
        );
        // The same bytes of a valid key decode.
        let good = test_key(8).public();
        let wire = crate::codec::encode(&serde_bytes::Bytes::new(good.as_bytes()));
        assert_eq!(crate::codec::decode::<PublicKey>(&wire).unwrap(), good);
        // Text, in a config or any human-readable format.
        let text = format!("{PUBLIC_PREFIX}{}", hex::encode(bad));
        assert!(matches!(
            text.parse::<PublicKey>(),
            Err(KeyError::BadPublicBytes)
        ));
        let readable = serde::de::value::StrDeserializer::<serde::de::value::Error>::new(&text);
        assert!(PublicKey::deserialize(readable).is_err());
        let good_text = good.to_string();
        let readable =
            serde::de::value::StrDeserializer::<serde::de::value::Error>::new(&good_text);
        assert_eq!(PublicKey::deserialize(readable).unwrap(), good);
    }

    #[test]
    fn a_message_naming_a_key_that_is_not_a_point_does_not_decode() {
        // A delegation to a valid agent, then the agent's bytes replaced by a non-point.
        let agent = test_key(9).public();
        let delegation = crate::ad::Delegation {
            node: test_key(10).public(),
            agent,
            share: crate::Resources::ZERO,
            scope: crate::ad::DelegationScope::default(),
            issued_at: 1,
            since: 1,
            not_after: 2,
        };
        let mut bytes = crate::codec::encode(&delegation);
        let at = bytes
            .windows(32)
            .position(|w| w == agent.as_bytes())
            .unwrap();
        bytes[at..at + 32].copy_from_slice(&invalid_point());
        let err = crate::codec::decode::<crate::ad::Delegation>(&bytes).unwrap_err();
        assert!(matches!(err, crate::DecodeError::Shape(_)), "{err:?}");
        // Keys of other lengths are refused as before.
        let short = crate::codec::encode(&serde_bytes::Bytes::new(&[1u8; 31]));
        assert!(crate::codec::decode::<PublicKey>(&short).is_err());
    }

    #[test]
    fn key_file_is_private_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = SecretKey::generate();
        key.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SecretKey::load(&path).unwrap().public(), key.public());
        assert!(matches!(key.save(&path), Err(KeyError::Exists(_))));
    }

    #[test]
    fn world_readable_key_file_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.key");
        test_key(6).save(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SecretKey::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::TooOpen { mode: 0o644, .. }));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn corrupt_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        fs::write(&path, "ed25519-private/1234\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            SecretKey::load(&path),
            Err(KeyError::BadSecretFile(_))
        ));
    }
}
