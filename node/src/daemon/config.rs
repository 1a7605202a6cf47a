//! `node.toml`: the node manager's configuration. Every field documents its default; paths
//! are relative to the config file's directory. `nodemgr init` writes [`DEFAULT_CONFIG`] with
//! the new key's name filled in.

use std::path::{Path, PathBuf};

pub use crate::sliver::DiskBacking;
use capability_schema::{PublicKey, Resources};
pub use federation::daemon::TrustedFederation;
use serde::{Deserialize, Serialize};

/// Errors reading a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is not a node config.
    #[error("config {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        detail: String,
    },
    /// A value is out of range.
    #[error("config {path}: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// A share delegated to an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationConfig {
    /// The agent's key.
    pub agent: PublicKey,
    /// At most this much committed at once under the agent's tickets.
    #[serde(with = "capability_schema::resources::human")]
    pub share: Resources,
    /// Days the delegation lasts from each start of the daemon (default 30).
    #[serde(default = "default_delegation_days")]
    pub days: u64,
}

fn default_delegation_days() -> u64 {
    30
}

/// How slivers are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Real Linux isolation (root): namespaces, overlayfs, cgroups, veth + HTB.
    #[default]
    Linux,
    /// No isolation: slivers exist only in the ledger and exec echoes (tests, simulation).
    Memory,
}

/// The node manager's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeManagerConfig {
    /// The node's key file (default `node.key`; created 0600 by `nodemgr init`).
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// Where the ledger, sliver records and sliver dirs live (default `state`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The federation this node belongs to.
    pub federation: String,
    /// The node's membership certificate (CBOR, from `fedctl certify`; default `membership.cbor`).
    #[serde(default = "default_membership")]
    pub membership: PathBuf,
    /// Federation authorities this node trusts (its own at least).
    #[serde(default)]
    pub trust: Vec<TrustedFederation>,
    /// libp2p listen addresses (default `/ip4/0.0.0.0/tcp/4001`).
    /// A `/udp/PORT/quic-v1` address listens on QUIC once the overlay supports it (TCP and
    /// QUIC addresses may be mixed).
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Peers to join through (multiaddresses with `/p2p/<peer id>`; default none).
    #[serde(default)]
    pub bootstrap: Vec<String>,
    /// Discover peers on the local network by multicast DNS (default false: off; turn it on
    /// for a LAN testbed, where peers then need no `bootstrap`).
    #[serde(default)]
    pub mdns: bool,
    /// Addresses announced in ads (default: the listen addresses actually bound).
    #[serde(default)]
    pub announce: Vec<String>,
    /// HTTP status and metrics endpoint (default `127.0.0.1:9180`; empty string: off).
    #[serde(default = "default_http")]
    pub http: String,
    /// What the node offers in all (default: measured from the host minus `reserve`).
    #[serde(default, with = "optional_human")]
    pub capacity: Option<Resources>,
    /// Kept back for the host when capacity is measured (default cpu=250m, memory=256MiB,
    /// disk=1GiB, egress=0kbit).
    #[serde(
        default = "default_reserve",
        with = "capability_schema::resources::human"
    )]
    pub reserve: Resources,
    /// Shares delegated to agents (default none: no agent can issue tickets for this node).
    #[serde(default)]
    pub delegations: Vec<DelegationConfig>,
    /// Real isolation or none (default `linux`).
    #[serde(default)]
    pub isolation: Isolation,
    /// Reference image directory for slivers (default: the host's system directories).
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// Sliver address pool, `a.b.c.d/len` (default `10.199.0.0/16`).
    #[serde(default = "default_pool")]
    pub address_pool: String,
    /// Name prefix of host-side veths (default `pmv`).
    #[serde(default = "default_ifname_prefix")]
    pub ifname_prefix: String,
    /// cgroup directory parent of every sliver (default `planetmesh`).
    #[serde(default = "default_cgroup_parent")]
    pub cgroup_parent: String,
    /// What backs each sliver's writable layer (default `directory`: on the state dir,
    /// capped by the disk watchdog; `tmpfs`: a tmpfs of the granted size, capped by the kernel,
    /// in memory and charged to the sliver's memory limit).
    #[serde(default)]
    pub disk_backing: DiskBacking,
    /// Seconds between disk watchdog checks, which freeze slivers over their disk grant
    /// (default 10).
    #[serde(default = "default_disk_check")]
    pub disk_check_secs: u64,
    /// Remount the host's cgroup2 hierarchy with `favordynmods` at start, so sliver creation
    /// skips an RCU grace period; host-wide and lasting (default true; a node is dedicated to
    /// slivers).
    #[serde(default = "default_true")]
    pub favor_dynamic_cgroups: bool,
    /// Seconds between ads when nothing changes (default 15).
    #[serde(default = "default_ad_interval")]
    pub ad_interval_secs: u64,
    /// Seconds an ad stays valid (default 60).
    #[serde(default = "default_ad_ttl")]
    pub ad_ttl_secs: u64,
}

fn default_key_file() -> PathBuf {
    "node.key".into()
}
fn default_state_dir() -> PathBuf {
    "state".into()
}
fn default_membership() -> PathBuf {
    "membership.cbor".into()
}
fn default_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/tcp/4001".into()]
}
fn default_http() -> String {
    "127.0.0.1:9180".into()
}
fn default_reserve() -> Resources {
    Resources {
        cpu_millis: 250,
        memory_bytes: 256 << 20,
        disk_bytes: 1 << 30,
        egress_kbps: 0,
    }
}
fn default_pool() -> String {
    "10.199.0.0/16".into()
}
fn default_ifname_prefix() -> String {
    "pmv".into()
}
fn default_cgroup_parent() -> String {
    "planetmesh".into()
}
fn default_disk_check() -> u64 {
    10
}
fn default_true() -> bool {
    true
}
fn default_ad_interval() -> u64 {
    15
}
fn default_ad_ttl() -> u64 {
    60
}

/// The commented default config `nodemgr init` writes (`{federation}` is filled in).
pub const DEFAULT_CONFIG: &str = r#"# PlanetMesh node manager configuration. Paths are relative to this file.
# Every commented line shows a default.

# The federation this node belongs to.
federation = "{federation}"

# key_file = "node.key"              # this node's key (0600)
# state_dir = "state"                # ledger, sliver records, sliver dirs
# membership = "membership.cbor"     # from: fedctl certify --role node --subject <this key>

# Federation authorities this node trusts (its own at least):
# [[trust]]
# name = "{federation}"
# authority = "ed25519/..."

# listen = ["/ip4/0.0.0.0/tcp/4001"] # libp2p; add "/ip4/0.0.0.0/udp/4001/quic-v1" for QUIC
#                                    # (once the overlay supports it)
# bootstrap = []                     # e.g. ["/ip4/10.0.0.1/tcp/4001/p2p/12D3..."]
# mdns = false                       # discover peers on the local network by multicast DNS;
#                                    # off by default, turn on for a LAN testbed
# announce = []                      # addresses put in ads (default: those bound)
# http = "127.0.0.1:9180"            # /status, /leases, /slivers, /metrics ("" = off)

# capacity = "cpu=4 cores,memory=8GiB,disk=100GiB,egress=100Mbit"  # default: measured
# reserve = "cpu=250m,memory=256MiB,disk=1GiB,egress=0kbit"         # kept for the host

# Shares delegated to agents; only their tickets are admitted:
# [[delegations]]
# agent = "ed25519/..."
# share = "cpu=2 cores,memory=4GiB,disk=50GiB,egress=50Mbit"
# days = 30

# isolation = "linux"                # or "memory" (no isolation: tests, simulation)
# image = "/srv/images/debian"       # default: the host's system directories, read-only
# address_pool = "10.199.0.0/16"
# ifname_prefix = "pmv"
# cgroup_parent = "planetmesh"
# disk_backing = "directory"         # or "tmpfs": a kernel-capped tmpfs of the grant's size
#                                    # (in memory, charged to the sliver's memory limit)
# disk_check_secs = 10               # disk watchdog: freezes slivers over their disk grant
# favor_dynamic_cgroups = true       # remount cgroup2 with favordynmods (faster creates)
# ad_interval_secs = 15
# ad_ttl_secs = 60
"#;

impl NodeManagerConfig {
    /// Reads and checks `path`; relative paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<NodeManagerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: NodeManagerConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.key_file,
            &mut config.state_dir,
            &mut config.membership,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(image) = &mut config.image
            && image.is_relative()
        {
            *image = base.join(&*image);
        }
        let invalid = |detail: String| ConfigError::Invalid {
            path: path.to_owned(),
            detail,
        };
        if config.ad_ttl_secs <= config.ad_interval_secs {
            return Err(invalid(format!(
                "ad_ttl_secs ({}) must exceed ad_interval_secs ({}), or ads expire between beats",
                config.ad_ttl_secs, config.ad_interval_secs
            )));
        }
        config.pool().map_err(invalid)?;
        Ok(config)
    }

    /// The address pool as (network, prefix length).
    pub fn pool(&self) -> Result<(std::net::Ipv4Addr, u8), String> {
        let bad = || {
            format!(
                "address_pool {:?}: expected a.b.c.d/len with len 8..=24",
                self.address_pool
            )
        };
        let (addr, len) = self.address_pool.split_once('/').ok_or_else(bad)?;
        let addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if !(8..=24).contains(&len) {
            return Err(bad());
        }
        Ok((addr, len))
    }
}

mod optional_human {
    use capability_schema::Resources;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Resources>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(r) => s.collect_str(r),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Resources>, D::Error> {
        Option::<String>::deserialize(d)?
            .filter(|t| t != "auto")
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_parses_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, DEFAULT_CONFIG.replace("{federation}", "plc")).unwrap();
        let config = NodeManagerConfig::load(&path).unwrap();
        assert_eq!(config.federation, "plc");
        assert_eq!(config.key_file, dir.path().join("node.key"));
        assert_eq!(config.isolation, Isolation::Linux);
        assert_eq!(config.pool().unwrap().1, 16);
        assert_eq!(config.disk_backing, DiskBacking::Directory);
        assert_eq!(config.disk_check_secs, 10);
        assert!(config.favor_dynamic_cgroups);
        std::fs::write(&path, "federation = \"plc\"\ndisk_backing = \"tmpfs\"\n").unwrap();
        let config = NodeManagerConfig::load(&path).unwrap();
        assert_eq!(config.disk_backing, DiskBacking::Tmpfs);
    }

    #[test]
    fn mistakes_are_reported_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "federation = \"plc\"\ncapacity = \"cpu=lots\"\n").unwrap();
        let err = NodeManagerConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("node.toml") && err.contains("cpu"), "{err}");
        std::fs::write(
            &path,
            "federation = \"plc\"\nad_interval_secs = 60\nad_ttl_secs = 30\n",
        )
        .unwrap();
        assert!(
            NodeManagerConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("ad_ttl_secs")
        );
        std::fs::write(&path, "federation = \"plc\"\nfederatoin = \"x\"\n").unwrap();
        assert!(
            NodeManagerConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("federatoin")
        );
    }

    #[test]
    fn mdns_is_off_by_default_and_documented_in_the_default_config() {
        federation::testing::check_mdns_setting(
            &DEFAULT_CONFIG.replace("{federation}", "plc"),
            |path| {
                NodeManagerConfig::load(path)
                    .map(|c| c.mdns)
                    .map_err(|e| e.to_string())
            },
        );
    }
}
