//! `broker.toml`: the broker daemon's configuration. Every field documents its default; paths
//! are relative to the config file's directory. `broker init` writes [`DEFAULT_CONFIG`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use capability_schema::PublicKey;
pub use federation::daemon::TrustedFederation;
use serde::{Deserialize, Serialize};

use super::DaemonError;
use crate::acquire::AcquireSettings;

/// An agent the broker asks, as the config lists it (`[[agents]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// The agent's key.
    pub key: PublicKey,
    /// Where to reach it: a multiaddress, ideally with `/p2p/<peer id>` (default none: found
    /// through Kademlia).
    #[serde(default)]
    pub address: Option<String>,
    /// Its federation (informational; default none).
    #[serde(default)]
    pub federation: Option<String>,
}

/// The broker daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// The broker's key file (default `broker.key`).
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// The federation the broker belongs to.
    pub federation: String,
    /// The broker's membership certificate (default `membership.cbor`, from `fedctl certify
    /// --role broker`); checked when present, optional because agents judge principals, not
    /// brokers.
    #[serde(default = "default_membership")]
    pub membership: PathBuf,
    /// Federation authorities the broker trusts: ads of other federations are believed only
    /// under their authority.
    #[serde(default)]
    pub trust: Vec<TrustedFederation>,
    /// Federations whose ads to follow, to learn agents from delegations (default: its own).
    #[serde(default)]
    pub follow: Vec<String>,
    /// Agents to ask (default none: only those learned from ads).
    #[serde(default)]
    pub agents: Vec<AgentEntry>,
    /// Also ask agents named in the delegations of ads seen (default true).
    #[serde(default = "yes")]
    pub discover_agents: bool,
    /// libp2p listen addresses (default `/ip4/0.0.0.0/tcp/4201`).
    /// A `/udp/PORT/quic-v1` address listens on QUIC once the overlay supports it (TCP and
    /// QUIC addresses may be mixed).
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Peers to join through (default none).
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network by multicast DNS (default false: off; turn it on
    /// for a LAN testbed, where peers then need no `bootstrap`).
    #[serde(default)]
    pub mdns: bool,
    /// HTTP status and metrics endpoint (default `127.0.0.1:9182`; empty string: off).
    #[serde(default = "default_http")]
    pub http: String,
    /// The longest one agent call may take, in seconds (default 10).
    #[serde(default = "default_call_timeout")]
    pub call_timeout_secs: u64,
    /// Most agent calls in flight per request (default 16).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most ticket rounds per acquisition: the first plan plus replans (default 4).
    #[serde(default = "default_max_rounds")]
    pub max_rounds: u32,
    /// Most broker requests served at once (default 32).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// The longest a whole acquisition may take, in seconds: gathering offers, ticket rounds
    /// and replans (default 0: three times `call_timeout_secs`). Handing tickets back after a
    /// failure is bounded by `call_timeout_secs` alone.
    #[serde(default)]
    pub acquire_deadline_secs: u64,
}

fn yes() -> bool {
    true
}
fn default_key_file() -> PathBuf {
    "broker.key".into()
}
fn default_membership() -> PathBuf {
    "membership.cbor".into()
}
fn default_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/tcp/4201".into()]
}
fn default_http() -> String {
    "127.0.0.1:9182".into()
}
fn default_call_timeout() -> u64 {
    10
}
fn default_concurrency() -> usize {
    16
}
fn default_max_rounds() -> u32 {
    4
}
fn default_max_in_flight() -> usize {
    32
}

/// The commented default config `broker init` writes (`{federation}` is filled in).
pub const DEFAULT_CONFIG: &str = r#"# PlanetMesh broker configuration. Paths are relative to this file.
# Every commented line shows a default.

# The federation this broker belongs to.
federation = "{federation}"

# key_file = "broker.key"             # this broker's key (0600)
# membership = "membership.cbor"      # from: fedctl certify --role broker (optional)

# Federation authorities this broker trusts (ads of a federation not listed are dropped):
# [[trust]]
# name = "{federation}"
# authority = "ed25519/..."

# Agents to ask for offers and tickets:
# [[agents]]
# key = "ed25519/..."
# address = "/ip4/10.0.0.2/tcp/4101/p2p/12D3..."
# federation = "{federation}"

# follow = ["{federation}"]           # federations whose ads to follow
# discover_agents = true              # also ask agents named in the ads' delegations
# listen = ["/ip4/0.0.0.0/tcp/4201"]  # add "/ip4/0.0.0.0/udp/4201/quic-v1" for QUIC
#                                     # (once the overlay supports it)
# bootstrap = []
# mdns = false                        # discover peers on the local network by multicast DNS;
#                                     # off by default, turn on for a LAN testbed
# http = "127.0.0.1:9182"             # /status, /metrics ("" = off)
# call_timeout_secs = 10              # the longest one agent call may take
# concurrency = 16                    # agent calls in flight per request
# max_rounds = 4                      # ticket rounds per acquisition (first plan + replans)
# acquire_deadline_secs = 0           # a whole acquisition's limit (0: 3 x call_timeout_secs)
# max_in_flight = 32                  # broker requests served at once
"#;

impl BrokerConfig {
    /// Reads and checks `path`; relative paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<BrokerConfig, DaemonError> {
        let config_error = |detail: String| DaemonError::Config {
            path: path.to_owned(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| config_error(e.to_string()))?;
        let mut config: BrokerConfig =
            toml::from_str(&text).map_err(|e| config_error(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut config.key_file, &mut config.membership] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if config.follow.is_empty() {
            config.follow.push(config.federation.clone());
        }
        if config.call_timeout_secs == 0 || config.concurrency == 0 || config.max_in_flight == 0 {
            return Err(config_error(
                "call_timeout_secs, concurrency and max_in_flight must be at least 1".into(),
            ));
        }
        for agent in &config.agents {
            if let Some(address) = &agent.address {
                address
                    .parse::<federation::overlay::Multiaddr>()
                    .map_err(|e| {
                        config_error(format!("agent {}: address {address:?}: {e}", agent.key))
                    })?;
            }
        }
        Ok(config)
    }

    /// The limit of one whole acquisition.
    pub fn acquire_deadline(&self) -> Duration {
        if self.acquire_deadline_secs == 0 {
            self.acquire_settings().default_deadline()
        } else {
            Duration::from_secs(self.acquire_deadline_secs)
        }
    }

    /// The acquisition limits.
    pub fn acquire_settings(&self) -> AcquireSettings {
        AcquireSettings {
            call_timeout: Duration::from_secs(self.call_timeout_secs),
            concurrency: self.concurrency,
            max_rounds: self.max_rounds.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses_and_mistakes_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, DEFAULT_CONFIG.replace("{federation}", "plc")).unwrap();
        let config = BrokerConfig::load(&path).unwrap();
        assert_eq!(config.follow, vec!["plc".to_owned()]);
        assert_eq!(config.key_file, dir.path().join("broker.key"));
        assert!(config.discover_agents);
        assert_eq!(config.acquire_settings().max_rounds, 4);
        assert_eq!(config.acquire_deadline(), Duration::from_secs(30));

        std::fs::write(
            &path,
            "federation = \"plc\"\n[[agents]]\nkey = \"ed25519/00\"\n",
        )
        .unwrap();
        let err = BrokerConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("broker.toml"), "{err}");
        std::fs::write(&path, "federation = \"plc\"\nconcurency = 3\n").unwrap();
        let err = BrokerConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("concurency"), "{err}");
    }

    #[test]
    fn the_testnet_layout_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        let key = capability_schema::identity::test_key(3).public();
        let text = format!(
            "federation = \"fed0\"\nlisten = [\"/ip4/127.0.0.1/tcp/4300\"]\nbootstrap = []\nhttp = \"127.0.0.1:9300\"\n\
             follow = [\"fed0\", \"fed1\"]\n\n[[trust]]\nname = \"fed0\"\nauthority = \"{key}\"\n\n\
             [[agents]]\nkey = \"{key}\"\naddress = \"/ip4/127.0.0.1/tcp/4101/p2p/{}\"\nfederation = \"fed0\"\n",
            key.to_peer_id()
        );
        std::fs::write(&path, text).unwrap();
        let config = BrokerConfig::load(&path).unwrap();
        assert_eq!(config.agents.len(), 1);
        assert_eq!(config.follow.len(), 2);
    }

    #[test]
    fn mdns_is_off_by_default_and_documented_in_the_default_config() {
        federation::testing::check_mdns_setting(
            &DEFAULT_CONFIG.replace("{federation}", "plc"),
            |path| {
                BrokerConfig::load(path)
                    .map(|c| c.mdns)
                    .map_err(|e| e.to_string())
            },
        );
    }
}
