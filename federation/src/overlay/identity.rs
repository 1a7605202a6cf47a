//! PlanetMesh keys as libp2p identities.
//!
//! libp2p 0.57 speaks `libp2p-identity` 0.3, while `capability_schema` converts to 0.2; the
//! conversions here go through the raw ed25519 bytes, so they hold whichever version the
//! schema crate links.

use capability_schema::{KeyError, PublicKey, SecretKey};
use libp2p::identity;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// The libp2p keypair of a PlanetMesh secret key (the same ed25519 key).
pub fn keypair(key: &SecretKey) -> identity::Keypair {
    let mut bytes = key.to_bytes();
    // Cannot fail: an ed25519 secret is any 32 bytes (the only check is the length), and the
    // key is this daemon's own, never a peer's.
    let secret = identity::ed25519::SecretKey::try_from_bytes(&mut bytes)
        .unwrap_or_else(|_| unreachable!("32 bytes are always an ed25519 secret"));
    identity::Keypair::from(identity::ed25519::Keypair::from(secret))
}

/// The libp2p public key of a PlanetMesh public key.
///
/// A [`PublicKey`] is checked to be a valid point when it is made or decoded, but by another
/// ed25519 implementation than libp2p's; a disagreement is an error here, never a panic.
pub fn libp2p_public(key: &PublicKey) -> Result<identity::PublicKey, KeyError> {
    let ed = identity::ed25519::PublicKey::try_from_bytes(key.as_bytes())
        .map_err(|_| KeyError::BadPublicBytes)?;
    Ok(identity::PublicKey::from(ed))
}

/// The peer id of a PlanetMesh public key: the identity multihash of the key's protobuf
/// encoding, exactly as libp2p derives it for every ed25519 key.
///
/// Built from the key's bytes without decoding the point, so any key, even one a peer sent,
/// has its peer id and the overlay task never meets a failure here.
pub fn peer_id(key: &PublicKey) -> PeerId {
    // Multihash header (identity code 0, digest length 36), then the protobuf PublicKey
    // { Type = Ed25519 (field 1, varint 1), Data (field 2, 32 bytes) }.
    let mut multihash = [0u8; 38];
    multihash[..6].copy_from_slice(&[0x00, 36, 0x08, 0x01, 0x12, 0x20]);
    multihash[6..].copy_from_slice(key.as_bytes());
    // Cannot fail, whatever the key's bytes: the multihash is well formed by construction, and
    // libp2p accepts every identity multihash with a digest of at most 42 bytes without
    // looking inside it.
    PeerId::from_bytes(&multihash)
        .unwrap_or_else(|_| unreachable!("an identity multihash of 36 bytes is a peer id"))
}

/// The PlanetMesh key a peer id carries (ed25519 peer ids inline their key).
pub fn public_key(peer: &PeerId) -> Result<PublicKey, KeyError> {
    let not_ed = || KeyError::NotEd25519PeerId(peer.to_string());
    let multihash = peer.as_ref();
    // Identity multihash (code 0) of the protobuf-encoded public key.
    if multihash.code() != 0 {
        return Err(not_ed());
    }
    let public =
        identity::PublicKey::try_decode_protobuf(multihash.digest()).map_err(|_| not_ed())?;
    let ed = public.try_into_ed25519().map_err(|_| not_ed())?;
    PublicKey::from_bytes(&ed.to_bytes())
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;

    use super::*;

    #[test]
    fn peer_ids_carry_the_same_key() {
        let key = test_key(7);
        let peer = peer_id(&key.public());
        assert_eq!(keypair(&key).public().to_peer_id(), peer);
        assert_eq!(public_key(&peer).unwrap(), key.public());
        assert_eq!(libp2p_public(&key.public()).unwrap().to_peer_id(), peer);
        assert!(public_key(&PeerId::random()).is_err());
        for seed in 0..=255u8 {
            let key = test_key(seed);
            assert_eq!(peer_id(&key.public()), keypair(&key).public().to_peer_id());
        }
    }
}

/// The PlanetMesh key of the peer a multiaddress leads to: its last `/p2p/<peer id>` part,
/// if it has one after any `/p2p-circuit` (a relayed address names its relay before
/// `/p2p-circuit` and the peer behind it after).
pub fn addr_peer(addr: &Multiaddr) -> Option<PublicKey> {
    destination(addr).and_then(|(_, peer)| public_key(&peer).ok())
}

/// The position and peer id of the `/p2p/` part that names where `addr` leads.
fn destination(addr: &Multiaddr) -> Option<(usize, PeerId)> {
    let mut named = None;
    for (at, part) in addr.iter().enumerate() {
        match part {
            Protocol::P2p(peer) => named = Some((at, peer)),
            Protocol::P2pCircuit => named = None,
            _ => {}
        }
    }
    named
}

/// `addr` as an address of `peer`: unchanged when it names `peer` or no one; with the `/p2p/`
/// part that names someone else removed (a stale announcement must not make a dial to
/// `peer` fail the peer-id check; a relayed address keeps its relay's).
pub fn addr_for_peer(addr: Multiaddr, peer: &PublicKey) -> Multiaddr {
    match destination(&addr) {
        Some((at, named)) if public_key(&named).ok() != Some(*peer) => addr
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .map(|(_, part)| part)
            .collect(),
        _ => addr,
    }
}

#[cfg(test)]
mod addr_tests {
    use capability_schema::identity::test_key;

    use super::*;

    #[test]
    fn addresses_name_their_peer_or_lose_a_wrong_name() {
        let (a, b) = (test_key(1).public(), test_key(2).public());
        let bare: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        let of_a = bare.clone().with(Protocol::P2p(peer_id(&a)));
        assert_eq!(addr_peer(&bare), None);
        assert_eq!(addr_peer(&of_a), Some(a));
        assert_eq!(addr_for_peer(of_a.clone(), &a), of_a);
        assert_eq!(addr_for_peer(of_a, &b), bare);
        assert_eq!(addr_for_peer(bare.clone(), &b), bare);
        // Relayed: the relay is named before /p2p-circuit, the peer behind it after.
        let relay = test_key(3).public();
        let via = of_a_relay(&bare, &relay);
        assert_eq!(addr_peer(&via), None);
        let via_b = via.clone().with(Protocol::P2p(peer_id(&b)));
        assert_eq!(addr_peer(&via_b), Some(b));
        assert_eq!(addr_for_peer(via_b.clone(), &b), via_b);
        assert_eq!(addr_for_peer(via_b, &a), via);
    }

    fn of_a_relay(bare: &Multiaddr, relay: &PublicKey) -> Multiaddr {
        bare.clone()
            .with(Protocol::P2p(peer_id(relay)))
            .with(Protocol::P2pCircuit)
    }
}
