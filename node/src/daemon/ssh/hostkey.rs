//! The node's SSH host key: derived from its identity key, so it is stable across restarts
//! and reinstalls of the same node, never stored, and unique per node. Clients learn it from
//! the node's `Status` answer (over the overlay, which the identity key authenticates) and pin
//! it.
//!
//! Derivation: the ed25519 seed is `SHA-256(HOST_KEY_DOMAIN || 0x00 || identity seed)`; the
//! domain tag keeps it from ever equalling, or being usable as, the identity key.

use capability_schema::SecretKey;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey};
use sha2::{Digest, Sha256};

/// The domain tag of the derivation (a new one gives every node a new host key).
pub const HOST_KEY_DOMAIN: &[u8] = b"planetmesh/ssh-host-key/v1";

/// The SSH host key of the node whose identity key is `node`.
pub fn host_key(node: &SecretKey) -> PrivateKey {
    let mut hash = Sha256::new();
    hash.update(HOST_KEY_DOMAIN);
    hash.update([0u8]);
    hash.update(node.to_bytes());
    let seed: [u8; 32] = hash.finalize().into();
    PrivateKey::from(Ed25519Keypair::from_seed(&seed))
}

/// The public half of `key` as one OpenSSH line, `ssh-ed25519 AAAA...` (what clients pin).
pub fn public_line(key: &PrivateKey) -> String {
    key.public_key()
        .to_openssh()
        .unwrap_or_else(|e| format!("unencodable host key: {e}"))
}

/// The SHA-256 fingerprint of `key` as OpenSSH prints it, `SHA256:...`.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use capability_schema::identity::test_key;

    #[test]
    fn one_node_one_stable_host_key_and_never_its_identity() {
        let a = host_key(&test_key(1));
        assert_eq!(public_line(&a), public_line(&host_key(&test_key(1))));
        assert_ne!(public_line(&a), public_line(&host_key(&test_key(2))));
        assert!(public_line(&a).starts_with("ssh-ed25519 AAAA"));
        assert!(fingerprint(&a).starts_with("SHA256:"));
        let identity = test_key(1).public();
        let ed = a.public_key().key_data().ed25519().unwrap();
        assert_ne!(&ed.0, identity.as_bytes());
    }

    #[test]
    fn the_derivation_is_pinned() {
        // Golden: changing the derivation changes every node's host key (bump the tag).
        assert_eq!(
            public_line(&host_key(&SecretKey::from_bytes(&[7u8; 32]))),
            GOLDEN_HOST_KEY
        );
    }

    const GOLDEN_HOST_KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIbZQr76wsatXm1WPEtnWFR4IpzDfU05nhV4Poh5KEzJ";
}
