//! `broker.toml`: the broker daemon's configuration. Every field documents its default; paths
//! are relative to the config file's directory. The settings every daemon has are
//! `federation::daemon::CommonConfig`, flattened in; `broker init` writes [`default_config`].

use std::path::Path;
use std::time::Duration;

use capability_schema::{PublicKey, Role};
pub use federation::daemon::TrustedFederation;
use federation::daemon::{CommonConfig, ConfigError, DaemonKind};
use serde::{Deserialize, Serialize};

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

/// The broker's place in the daemon skeleton: its defaults for the common settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerKind;

impl DaemonKind for BrokerKind {
    const PROGRAM: &'static str = "broker";
    const ROLE: Role = Role::Broker;
    const KEY_FILE: &'static str = "broker.key";
    const PORT: u16 = 4201;
    const HTTP_PORT: u16 = 9182;
    const MAX_IN_FLIGHT: usize = 32;
}

/// The broker daemon's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerConfig {
    /// Key, federation, membership (checked when present: agents judge principals, not
    /// brokers), trust (ads of other federations are believed only under their authority),
    /// listen, bootstrap, mdns, http, max_in_flight.
    #[serde(flatten)]
    pub common: CommonConfig<BrokerKind>,
    /// Federations whose ads to follow, to learn agents from delegations (default: its own).
    #[serde(default)]
    pub follow: Vec<String>,
    /// Agents to ask (default none: only those learned from ads).
    #[serde(default)]
    pub agents: Vec<AgentEntry>,
    /// Also ask agents named in the delegations of ads seen (default true).
    #[serde(default = "yes")]
    pub discover_agents: bool,
    /// The longest one agent call may take, in seconds (default 10).
    #[serde(default = "default_call_timeout")]
    pub call_timeout_secs: u64,
    /// Most agent calls in flight per request (default 16).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Most ticket rounds per acquisition: the first plan plus replans (default 4).
    #[serde(default = "default_max_rounds")]
    pub max_rounds: u32,
    /// The longest a whole acquisition may take, in seconds: gathering offers, ticket rounds
    /// and replans (default 0: three times `call_timeout_secs`). Handing tickets back after a
    /// failure is bounded by `call_timeout_secs` alone.
    #[serde(default)]
    pub acquire_deadline_secs: u64,
}

fn yes() -> bool {
    true
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

/// The broker's own top-level settings in the commented default config.
const BROKER_TEMPLATE: &str = r#"
# follow = ["{federation}"]           # federations whose ads to follow
# discover_agents = true              # also ask agents named in the ads' delegations
# call_timeout_secs = 10              # the longest one agent call may take
# concurrency = 16                    # agent calls in flight per request
# max_rounds = 4                      # ticket rounds per acquisition (first plan + replans)
# acquire_deadline_secs = 0           # a whole acquisition's limit (0: 3 x call_timeout_secs)
"#;

/// The broker's own sections, after every top-level setting.
const BROKER_SECTIONS: &str = r#"
# Agents to ask for offers and tickets:
# [[agents]]
# key = "ed25519/..."
# address = "/ip4/10.0.0.2/tcp/4101/p2p/12D3..."
# federation = "{federation}"
"#;

/// The commented default config `broker init` writes for `federation`.
pub fn default_config(federation: &str) -> String {
    format!(
        "# PlanetMesh broker configuration. Paths are relative to this file.\n\
         # Every commented line shows a default.\n\n{}{}\n{}{}",
        CommonConfig::<BrokerKind>::template(federation),
        BROKER_TEMPLATE.replace("{federation}", federation),
        CommonConfig::<BrokerKind>::trust_template(federation),
        BROKER_SECTIONS.replace("{federation}", federation)
    )
}

impl BrokerConfig {
    /// Reads and checks `path`; relative paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let mut config: BrokerConfig = federation::daemon::config::load(path, BrokerKind::PROGRAM)?;
        let invalid = |detail: String| ConfigError::Invalid {
            path: path.to_owned(),
            detail,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        config.common.resolve(base).map_err(invalid)?;
        if config.follow.is_empty() {
            config.follow.push(config.common.federation.clone());
        }
        if config.call_timeout_secs == 0 || config.concurrency == 0 {
            return Err(invalid(
                "call_timeout_secs, concurrency and max_in_flight must be at least 1".into(),
            ));
        }
        for agent in &config.agents {
            if let Some(address) = &agent.address {
                address
                    .parse::<federation::overlay::Multiaddr>()
                    .map_err(|e| {
                        invalid(format!("agent {}: address {address:?}: {e}", agent.key))
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
        std::fs::write(&path, default_config("plc")).unwrap();
        let config = BrokerConfig::load(&path).unwrap();
        assert_eq!(config.follow, vec!["plc".to_owned()]);
        assert_eq!(config.common.key_file, dir.path().join("broker.key"));
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
            federation::overlay::peer_id(&key)
        );
        std::fs::write(&path, text).unwrap();
        let config = BrokerConfig::load(&path).unwrap();
        assert_eq!(config.agents.len(), 1);
        assert_eq!(config.follow.len(), 2);
    }

    #[test]
    fn the_default_config_puts_its_sections_last() {
        federation::testing::check_sections_last(&default_config("plc"));
    }

    #[test]
    fn every_line_of_the_default_config_works_uncommented_in_place() {
        federation::testing::check_uncommented_template_loads(
            &default_config("plc"),
            BrokerConfig::load,
        );
    }

    #[test]
    fn mdns_is_off_by_default_and_documented_in_the_default_config() {
        federation::testing::check_mdns_setting(&default_config("plc"), |path| {
            BrokerConfig::load(path)
                .map(|c| c.common.mdns)
                .map_err(|e| e.to_string())
        });
    }
}
