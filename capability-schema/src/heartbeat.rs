//! A node's heartbeat: a small signed "still here" between its ads, so agents and brokers stop
//! planning a node within seconds of its death instead of at its ad's TTL.
//!
//! A heartbeat carries only what liveness needs: a strictly increasing `seq` (the node's clock
//! in milliseconds when it was sent) and the `seq` of the node's latest ad. It is signed by the
//! node under its own domain tag ([`Heartbeat::DOMAIN`](crate::SignedType::DOMAIN)), so it never
//! verifies as an ad or a lease, and gossiped on its federation's heartbeat topic
//! ([`heartbeat_topic`]), apart from the ads, so a peer that does not know heartbeats never
//! sees one. Signed, it is under 200 bytes ([`MAX_HEARTBEAT_BYTES`] caps what a receiver
//! decodes): at 5,000 nodes beating every 2 s, a follower receives about 0.45 MB/s.
//!
//! A heartbeat proves nothing but that the node's key signed it recently: receivers accept one
//! only from a node whose valid ad they hold, only with a `seq` above the last they accepted,
//! and only when it was sent within [`MAX_HEARTBEAT_SKEW_MS`] of their clock, so a replayed or
//! withheld heartbeat cannot keep a dead node alive longer than that.

use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::signed::SignedType;

/// Bytes a receiver decodes of a signed heartbeat at most (a real one is under 200).
pub const MAX_HEARTBEAT_BYTES: usize = 512;

/// How far (milliseconds, either way) a heartbeat's `seq` may be from the receiver's clock:
/// an older one is a replay or a late relay, a newer one a clock run ahead; both are ignored.
pub const MAX_HEARTBEAT_SKEW_MS: u64 = 5_000;

/// The body of a node's heartbeat; the signer of the [`Signed`](crate::Signed) is the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Unix milliseconds when the node sent it; strictly increasing per node.
    pub seq: u64,
    /// The `seq` of the node's latest ad, so a receiver holding an older one knows it missed
    /// an ad (the next ad brings it).
    pub ad_seq: u64,
}

impl SignedType for Heartbeat {
    const DOMAIN: &'static str = "planetmesh/heartbeat/v1";
}

/// Why a receiver does not take a heartbeat as a sign of life (none of these is the relaying
/// peer's fault, except a signature that does not verify, which
/// [`HeartbeatRefusal::is_misbehaviour`] says).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatRefusal {
    /// The bytes are not a signed heartbeat.
    #[error("not a heartbeat: {0}")]
    Malformed(String),
    /// The signature does not verify under the node's key.
    #[error("heartbeat of {0} is not signed by it")]
    BadSignature(String),
    /// No valid ad of the node is held: a heartbeat vouches for nothing on its own.
    #[error("heartbeat of {0}, whose ad is not held; its next ad brings it in")]
    UnknownNode(String),
    /// Not newer than the last one taken from the node.
    #[error("heartbeat of {node} with seq {seq} is not newer than {last}")]
    Stale {
        /// The node.
        node: String,
        /// The heartbeat's seq.
        seq: u64,
        /// The last seq taken.
        last: u64,
    },
    /// Sent too long ago, or in the future, by the receiver's clock.
    #[error(
        "heartbeat of {node} was sent {skew_ms} ms from this clock, over {MAX_HEARTBEAT_SKEW_MS}: \
         check both clocks (NTP)"
    )]
    Skewed {
        /// The node.
        node: String,
        /// Distance between its seq and the receiver's clock, milliseconds.
        skew_ms: u64,
    },
}

impl HeartbeatRefusal {
    /// Whether the relaying peer should pay for it (only a forged signature; the rest happen
    /// to honest relays).
    pub fn is_misbehaviour(&self) -> bool {
        matches!(
            self,
            HeartbeatRefusal::Malformed(_) | HeartbeatRefusal::BadSignature(_)
        )
    }
}

/// Checks a signed heartbeat from the wire against the receiver's state: `last` is the last
/// heartbeat seq taken from the node (`None`: none yet), `known` whether a valid ad of the node
/// is held, `now_ms` the receiver's clock. Returns the node and the heartbeat.
pub fn check(
    bytes: &[u8],
    known: impl FnOnce(&PublicKey) -> bool,
    last: impl FnOnce(&PublicKey) -> Option<u64>,
    now_ms: u64,
) -> Result<(PublicKey, Heartbeat), HeartbeatRefusal> {
    let signed =
        crate::codec::decode_with_limit::<crate::Signed<Heartbeat>>(bytes, MAX_HEARTBEAT_BYTES)
            .map_err(|e| HeartbeatRefusal::Malformed(e.to_string()))?;
    let node = signed.signer;
    // Cheap checks on the unverified body first: a replay costs no signature check.
    let peek = signed
        .peek_unverified()
        .map_err(|e| HeartbeatRefusal::Malformed(e.to_string()))?;
    if !known(&node) {
        return Err(HeartbeatRefusal::UnknownNode(node.short()));
    }
    if let Some(last) = last(&node)
        && peek.seq <= last
    {
        return Err(HeartbeatRefusal::Stale {
            node: node.short(),
            seq: peek.seq,
            last,
        });
    }
    let skew_ms = peek.seq.abs_diff(now_ms);
    if skew_ms > MAX_HEARTBEAT_SKEW_MS {
        return Err(HeartbeatRefusal::Skewed {
            node: node.short(),
            skew_ms,
        });
    }
    let heartbeat = signed.verify().map_err(|e| match e {
        crate::SignatureError::Body(e) => HeartbeatRefusal::Malformed(e.to_string()),
        crate::SignatureError::WrongDomain { found, .. } => {
            HeartbeatRefusal::Malformed(format!("a {found:?} on the heartbeat topic"))
        }
        _ => HeartbeatRefusal::BadSignature(node.short()),
    })?;
    Ok((node, heartbeat))
}

/// The gossip topic of the heartbeats of the federation of `authority`, named by the key (hex)
/// as [`ad_topic`](crate::membership::ad_topic) is.
pub fn heartbeat_topic(authority: &PublicKey) -> String {
    format!(
        "/planetmesh/heartbeats/{}/1",
        hex::encode(authority.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Signed;
    use crate::identity::test_key;

    #[test]
    fn a_heartbeat_is_small_and_checked_before_its_signature() {
        let key = test_key(1);
        let beat = Heartbeat {
            seq: 1_800_000_000_000,
            ad_seq: 1_799_999_990_000,
        };
        let bytes = Signed::sign(&key, &beat).to_bytes();
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
        let now = beat.seq + 10;
        assert_eq!(
            check(&bytes, |_| true, |_| None, now),
            Ok((key.public(), beat))
        );
        assert!(matches!(
            check(&bytes, |_| false, |_| None, now),
            Err(HeartbeatRefusal::UnknownNode(_))
        ));
        assert!(matches!(
            check(&bytes, |_| true, |_| Some(beat.seq), now),
            Err(HeartbeatRefusal::Stale { .. })
        ));
        let late = check(
            &bytes,
            |_| true,
            |_| None,
            beat.seq + MAX_HEARTBEAT_SKEW_MS + 1,
        );
        assert!(
            matches!(late, Err(HeartbeatRefusal::Skewed { .. })),
            "{late:?}"
        );
        // A forged one costs the relay; a stale or unknown one does not.
        let mut forged = Signed::sign(&test_key(2), &beat);
        forged.signer = key.public();
        let refusal = check(&forged.to_bytes(), |_| true, |_| None, now).unwrap_err();
        assert!(refusal.is_misbehaviour(), "{refusal:?}");
        assert!(!HeartbeatRefusal::UnknownNode("x".into()).is_misbehaviour());
        assert!(check(&[0xff; 600], |_| true, |_| None, now).is_err());
    }
}
