//! `agent.toml`: the agent daemon's configuration. Every field documents its default; paths are
//! relative to the config file's directory. `agentd init` writes [`DEFAULT_CONFIG`].

use std::path::{Path, PathBuf};

use capability_schema::ad::PriceList;
pub use federation::daemon::TrustedFederation;
use serde::{Deserialize, Serialize};

use crate::policy::PolicyConfig;

/// The agent daemon's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's key file (default `agent.key`); tickets' root key.
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Where the ticket ledger lives (default `state`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The federation this agent serves.
    pub federation: String,
    /// The agent's membership certificate (default `membership.cbor`, from `fedctl certify
    /// --role agent`).
    #[serde(default = "default_membership")]
    pub membership: PathBuf,
    /// Federation authorities this agent trusts (its own at least).
    #[serde(default)]
    pub trust: Vec<TrustedFederation>,
    /// Peering agreements this agent's federation signed (CBOR files from `fedctl peer`).
    #[serde(default)]
    pub peering: Vec<PathBuf>,
    /// Federations whose ads to follow (default: its own).
    #[serde(default)]
    pub follow: Vec<String>,
    /// libp2p listen addresses (default `/ip4/0.0.0.0/tcp/4101`).
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
    /// HTTP status and metrics endpoint (default `127.0.0.1:9181`; empty string: off).
    #[serde(default = "default_http")]
    pub http: String,
    /// The policy file (TOML; default none: the default policy, which serves certified
    /// principals of this federation as users with a quota of 10 slivers).
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Prices in micro-credits per resource-hour (default all 0).
    #[serde(default)]
    pub prices: PriceList,
    /// Extra percent at a fully committed share (default 0: static prices).
    #[serde(default)]
    pub surge_percent: u64,
    /// How much of a share may be promised at once, 1.0 = never more than the share
    /// (default 1.0).
    #[serde(default = "default_oversubscription")]
    pub oversubscription: f64,
}

fn default_key_file() -> PathBuf {
    "agent.key".into()
}
fn default_state_dir() -> PathBuf {
    "state".into()
}
fn default_membership() -> PathBuf {
    "membership.cbor".into()
}
fn default_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/tcp/4101".into()]
}
fn default_http() -> String {
    "127.0.0.1:9181".into()
}
fn default_oversubscription() -> f64 {
    1.0
}

/// The commented default config `agentd init` writes (`{federation}` is filled in).
pub const DEFAULT_CONFIG: &str = r#"# PlanetMesh agent configuration. Paths are relative to this file.
# Every commented line shows a default.

# The federation this agent serves.
federation = "{federation}"

# key_file = "agent.key"            # tickets are signed with this key (0600)
# state_dir = "state"               # the ticket ledger
# membership = "membership.cbor"    # from: fedctl certify --role agent --subject <this key>

# Federation authorities this agent trusts (its own at least):
# [[trust]]
# name = "{federation}"
# authority = "ed25519/..."

# peering = []                      # agreements from: fedctl peer
# follow = ["{federation}"]         # federations whose ads to follow
# listen = ["/ip4/0.0.0.0/tcp/4101"] # add "/ip4/0.0.0.0/udp/4101/quic-v1" for QUIC
#                                   # (once the overlay supports it)
# bootstrap = []
# mdns = false                      # discover peers on the local network by multicast DNS;
#                                   # off by default, turn on for a LAN testbed
# http = "127.0.0.1:9181"           # /status, /tickets, /metrics ("" = off)
# policy = "policy.toml"            # principals, roles, quotas (default: serve certified members)

# Prices in micro-credits per resource-hour:
# [prices]
# cpu_core_hour = 0
# memory_gib_hour = 0
# disk_gib_hour = 0
# egress_mbit_hour = 0
# surge_percent = 0                 # extra percent at a fully committed share
# oversubscription = 1.0            # 1.0 = never promise more than the share
"#;

impl AgentConfig {
    /// Reads and checks `path`; relative paths are resolved against its directory.
    pub fn load(path: &Path) -> anyhow::Result<AgentConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        let mut config: AgentConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.key_file);
        resolve(&mut config.state_dir);
        resolve(&mut config.membership);
        config.peering.iter_mut().for_each(resolve);
        if let Some(p) = &mut config.policy {
            resolve(p);
        }
        if !(config.oversubscription.is_finite() && config.oversubscription > 0.0) {
            anyhow::bail!(
                "config {}: oversubscription must be a positive number",
                path.display()
            );
        }
        if config.follow.is_empty() {
            config.follow.push(config.federation.clone());
        }
        Ok(config)
    }

    /// The policy: the file's, or the default.
    pub fn load_policy(&self) -> anyhow::Result<PolicyConfig> {
        match &self.policy {
            None => Ok(PolicyConfig::default()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("policy {}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("policy {}: {e}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, DEFAULT_CONFIG.replace("{federation}", "plc")).unwrap();
        let config = AgentConfig::load(&path).unwrap();
        assert_eq!(config.follow, vec!["plc".to_owned()]);
        assert_eq!(config.key_file, dir.path().join("agent.key"));
        assert_eq!(config.load_policy().unwrap(), PolicyConfig::default());
        std::fs::write(&path, "federation = \"plc\"\noversubscription = -1.0\n").unwrap();
        assert!(
            AgentConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("oversubscription")
        );
    }

    #[test]
    fn mdns_is_off_by_default_and_documented_in_the_default_config() {
        federation::testing::check_mdns_setting(
            &DEFAULT_CONFIG.replace("{federation}", "plc"),
            |path| {
                AgentConfig::load(path)
                    .map(|c| c.mdns)
                    .map_err(|e| e.to_string())
            },
        );
    }
}
