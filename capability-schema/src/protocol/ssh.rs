//! How a node's SSH endpoint is reached and pinned (issue 18): told in [`super::NodeStatus`],
//! over the overlay's connection, which the node's identity key authenticates; so a client
//! that trusts the node learns the host key to pin without ever trusting on first use.

use serde::{Deserialize, Serialize};

/// A node's SSH endpoint: `ssh -p PORT SLICE@ADDRESS` lands in the slice's sliver there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshEndpoint {
    /// The address it listens on when that is a specific one (`None`: every address of the
    /// node; a client then uses the node's public or overlay address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Its TCP port.
    pub port: u16,
    /// Its host key, one OpenSSH public key line (`ssh-ed25519 AAAA...`), derived from the
    /// node's identity key.
    pub host_key: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn endpoints_round_trip_and_omit_an_unset_address() {
        let endpoint = SshEndpoint {
            address: None,
            port: 2222,
            host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxX".into(),
        };
        let bytes = crate::codec::encode(&endpoint);
        let back: SshEndpoint = crate::codec::decode(&bytes).unwrap();
        assert_eq!(back, endpoint);
        let json = serde_json::to_value(&endpoint).unwrap();
        assert!(json.get("address").is_none(), "{json}");
    }
}
