//! `node.toml`: the node manager's configuration. Every field documents its default; paths
//! are relative to the config file's directory. The settings every daemon has are
//! `federation::daemon::CommonConfig`, flattened in; `nodemgr init` writes [`default_config`].

use std::path::{Path, PathBuf};

pub use crate::sliver::DiskBacking;
use capability_schema::ad::AdminScope;
use capability_schema::{DelegationScope, PublicKey, Resources, Role};
pub use federation::daemon::TrustedFederation;
pub use federation::daemon::config::ConfigError;
use federation::daemon::{CommonConfig, DaemonKind};
use serde::{Deserialize, Serialize};

use super::uplink::PublicAddress;
use crate::sliver::firewall::PublicPorts;

/// A share delegated to an agent, and what kinds of slices the agent may mint in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationConfig {
    /// The agent's key.
    pub agent: PublicKey,
    /// At most this much committed at once under the agent's tickets.
    #[serde(with = "capability_schema::resources::human")]
    pub share: Resources,
    /// Days each signed delegation lasts; the node re-signs it, with a new end, once less
    /// than a third of that remains (default 30).
    #[serde(default = "default_delegation_days")]
    pub days: u64,
    /// Seconds each signed delegation lasts, instead of `days` (short-lived delegations,
    /// tests); at least three ad intervals, so renewals go out in time (default: unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_secs: Option<u64>,
    /// Slice kinds the agent may mint: `regular`, `admin` (default `["regular"]`).
    #[serde(default = "default_delegated_kinds")]
    pub kinds: Vec<DelegatedKind>,
    /// Linux capabilities an admin slice may be granted, by kernel name, e.g.
    /// `["CAP_NET_ADMIN"]` (default none; needs `admin` in `kinds`).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Whether an admin slice may see the host's processes (default false; needs `admin` in
    /// `kinds`).
    #[serde(default)]
    pub host_pid_view: bool,
}

/// A slice kind a delegation may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DelegatedKind {
    /// Regular slices.
    Regular,
    /// Admin slices, with at most the delegation's `capabilities` and host views.
    Admin,
}

fn default_delegation_days() -> u64 {
    30
}

fn default_delegated_kinds() -> Vec<DelegatedKind> {
    vec![DelegatedKind::Regular]
}

impl DelegationConfig {
    /// Seconds each signed delegation lasts.
    pub fn lifetime(&self) -> u64 {
        self.lifetime_secs
            .unwrap_or_else(|| self.days.saturating_mul(86_400))
    }

    /// The scope the node signs into the delegation.
    pub fn scope(&self) -> DelegationScope {
        DelegationScope {
            regular: self.kinds.contains(&DelegatedKind::Regular),
            admin: self
                .kinds
                .contains(&DelegatedKind::Admin)
                .then(|| AdminScope {
                    capabilities: self.capabilities.clone(),
                    host_pid_view: self.host_pid_view,
                }),
        }
    }

    /// Why the delegation cannot be signed as written, if it cannot.
    fn check(&self, ad_interval_secs: u64) -> Result<(), String> {
        let agent = self.agent.short();
        if self.kinds.is_empty() {
            return Err(format!(
                "delegation to agent {agent}: kinds is empty; list \"regular\" and/or \"admin\""
            ));
        }
        let admin = self.kinds.contains(&DelegatedKind::Admin);
        if !admin && (self.host_pid_view || !self.capabilities.is_empty()) {
            return Err(format!(
                "delegation to agent {agent}: capabilities and host_pid_view are for admin \
                 slices; add \"admin\" to kinds or remove them"
            ));
        }
        if let Some(bad) = self.capabilities.iter().find(|c| {
            c.strip_prefix("CAP_").is_none_or(|rest| {
                rest.is_empty()
                    || !rest
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            })
        }) {
            return Err(format!(
                "delegation to agent {agent}: capability {bad:?}: expected a kernel name such \
                 as CAP_NET_ADMIN"
            ));
        }
        let lifetime = self.lifetime();
        if lifetime < ad_interval_secs.saturating_mul(3).max(1) {
            return Err(format!(
                "delegation to agent {agent} lasts {lifetime} s: make it at least 3 × \
                 ad_interval_secs ({} s), so its renewal goes out before it ends",
                ad_interval_secs.saturating_mul(3)
            ));
        }
        Ok(())
    }
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

/// The node manager's place in the daemon skeleton: its defaults for the common settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeKind;

impl DaemonKind for NodeKind {
    const PROGRAM: &'static str = "nodemgr";
    const ROLE: Role = Role::Node;
    const KEY_FILE: &'static str = "node.key";
    const PORT: u16 = 4001;
    const HTTP_PORT: u16 = 9180;
    const MAX_IN_FLIGHT: usize = 64;
}

/// The node manager's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeManagerConfig {
    /// Key, federation, membership, trust, listen, bootstrap, mdns, http, max_in_flight (per
    /// lane: lease operations, commands in slivers).
    #[serde(flatten)]
    pub common: CommonConfig<NodeKind>,
    /// Where the ledger, sliver records and sliver dirs live (default `state`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Addresses announced in ads (default: the listen addresses actually bound).
    #[serde(default)]
    pub announce: Vec<String>,
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
    /// The node's public address: slivers' traffic leaves with it as its source (default
    /// `auto`: the address of the default route's interface; `off`: slivers reach nothing
    /// outside the node).
    #[serde(default)]
    pub public_address: PublicAddress,
    /// Public ports leased to slivers, `"first-last"`: each sliver gets one, forwarded (TCP
    /// and UDP) from the public address to the same port of the sliver; it also bounds how many
    /// slivers live at once (default `40000-41023`). It must not hold the node's own ports.
    #[serde(default = "default_public_ports", with = "super::uplink::ports_text")]
    pub public_ports: PublicPorts,
    /// The most public ports one sliver may lease (`ports=N` in its grant); each sliver holds a
    /// block of this many in `public_ports`, so the range bounds the slivers live at once to
    /// its size divided by this (default 1).
    #[serde(default = "default_ports_per_sliver")]
    pub ports_per_sliver: u16,
    /// ICMP echo requests, and packets with IP options, each sliver may send per second
    /// (default 10).
    #[serde(default = "default_icmp_rate")]
    pub icmp_rate: u32,
    /// Name prefix of host-side veths, 1 to 8 letters and digits; the node's shaping device is
    /// `<prefix>ifb` (default `pm<first 5 hex digits of the node's key>v`, unique per node).
    #[serde(default)]
    pub ifname_prefix: Option<String>,
    /// cgroup directory under which the node makes its own, `<cgroup_parent>/<id>.node` (`id`:
    /// the first 8 hex digits of its key), parent of its slivers' (default `planetmesh`).
    #[serde(default = "default_cgroup_parent")]
    pub cgroup_parent: String,
    /// Host uid (and gid) of the first sliver's root; sliver `n` maps `uid_base + n * 65536`
    /// (default: the node picks a free range between 2^28 and 2^31, starting from one its key
    /// picks, and keeps it while its slivers live).
    #[serde(default)]
    pub uid_base: Option<u32>,
    /// Host-wide directory where each node claims its cgroup parent, uid range, link names,
    /// address pool and state dir, so no two nodes of a machine share them (default
    /// `/run/planetmesh/claims`).
    #[serde(default = "default_claim_dir")]
    pub claim_dir: PathBuf,
    /// What backs each sliver's writable layer (default `quota`: a btrfs subvolume on a
    /// loop-mounted image of the node's disk capacity under the state dir, capped by the
    /// kernel at write time; it falls back to `directory`, saying so, where the host lacks loop
    /// devices, btrfs or `mkfs.btrfs`. `directory`: on the state dir, held to its grant by the
    /// disk watchdog, as often as it checks; `tmpfs`: a tmpfs of the granted size, capped by
    /// the kernel, in memory and charged to the sliver's memory limit).
    #[serde(default = "default_disk_backing")]
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
    /// Seconds between the node's heartbeats, its small signed sign of life between ads
    /// (default 1; 0: none, and agents then count the node alive until its ad expires).
    /// Agents stop planning a node whose heartbeats stopped for their `dead_after_secs`.
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval_secs: u64,
    /// The file this config was read from, which a reload reads again (not a setting).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// End live leases of a revoked principal, or under a revoked agent or ticket, as soon
    /// as a revocation list names them (released, sliver destroyed, reason kept for the
    /// holder); off, revocations only refuse new redeems (default true).
    #[serde(default = "default_true")]
    pub end_revoked_leases: bool,
    /// The SSH endpoint into slivers (default: off; see [`super::ssh::SshConfig`]).
    #[serde(default)]
    pub ssh: super::ssh::SshConfig,
}

fn default_state_dir() -> PathBuf {
    "state".into()
}
fn default_reserve() -> Resources {
    Resources {
        cpu_millis: 250,
        memory_bytes: 256 << 20,
        disk_bytes: 1 << 30,
        egress_kbps: 0,
        ports: 0,
    }
}
fn default_pool() -> String {
    "10.199.0.0/16".into()
}
fn default_public_ports() -> PublicPorts {
    super::uplink::DEFAULT_PUBLIC_PORTS
}
fn default_ports_per_sliver() -> u16 {
    1
}
fn default_icmp_rate() -> u32 {
    crate::sliver::firewall::DEFAULT_ICMP_PER_SEC
}
fn default_cgroup_parent() -> String {
    "planetmesh".into()
}
fn default_claim_dir() -> PathBuf {
    crate::sliver::claim::DEFAULT_CLAIM_DIR.into()
}
fn default_disk_backing() -> DiskBacking {
    DiskBacking::Quota
}
fn default_disk_check() -> u64 {
    10
}
fn default_true() -> bool {
    true
}
fn default_heartbeat_interval() -> u64 {
    1
}
fn default_ad_interval() -> u64 {
    15
}
fn default_ad_ttl() -> u64 {
    60
}

/// The node's own settings in the commented default config.
const NODE_TEMPLATE: &str = r#"
# state_dir = "state"                # ledger, sliver records, sliver dirs
# announce = []                      # addresses put in ads (default: those bound)

# capacity = "cpu=4 cores,memory=8GiB,disk=100GiB,egress=100Mbit"  # default: measured
# reserve = "cpu=250m,memory=256MiB,disk=1GiB,egress=0kbit"         # kept for the host

# isolation = "linux"                # or "memory" (no isolation: tests, simulation)
# image = "/srv/images/debian"       # default: the host's system directories, read-only
# address_pool = "10.199.0.0/16"
# public_address = "auto"           # slivers' traffic leaves with this source address; "auto":
#                                    # the default route's interface's, "off": no egress
# public_ports = "40000-41023"       # forwarded to the same ports inside the slivers
# ports_per_sliver = 1               # most ports one sliver leases (its block in the range)
# icmp_rate = 10                     # pings and packets with IP options per sliver per second
# ifname_prefix = "pm1a2b3v"          # default: from the node's key (unique per node)
# cgroup_parent = "planetmesh"       # the node's slivers go in <this>/<key's first 8 hex>.node
# uid_base = 268435456               # default: a free range between 2^28 and 2^31
# claim_dir = "/run/planetmesh/claims"  # where nodes of one machine claim what is theirs
# disk_backing = "quota"             # kernel-capped btrfs subvolumes on an image
#                                    # (state/slivers/disk.img) of the disk capacity; or
#                                    # "directory": measured by the watchdog, or "tmpfs": a
#                                    # kernel-capped tmpfs of the grant's size (in memory,
#                                    # charged to the sliver's memory limit)
# disk_check_secs = 10               # disk watchdog: freezes slivers over their disk grant
# favor_dynamic_cgroups = true       # remount cgroup2 with favordynmods (faster creates)
# ad_interval_secs = 15
# ad_ttl_secs = 60
# heartbeat_interval_secs = 1        # small signed beats between ads (0: none); agents stop
#                                    # planning the node when they stop (their dead_after_secs)
# end_revoked_leases = true          # end leases of revoked principals, agents, tickets at once
"#;

/// The node's own sections, after every top-level setting.
const NODE_SECTIONS: &str = r#"
# Shares delegated to agents; only their tickets are admitted, and only for the slice kinds
# each delegation allows. The node re-signs a delegation when a third of its life remains;
# `nodemgr reload` (or SIGHUP) applies changes to delegations, capacity and trust at once:
# [[delegations]]
# agent = "ed25519/..."
# share = "cpu=2 cores,memory=4GiB,disk=50GiB,egress=50Mbit"
# days = 30                          # or lifetime_secs = 3600
# kinds = ["regular"]                # slice kinds it may mint: "regular", "admin"
# capabilities = []                  # admin slices: Linux capabilities allowed, e.g.
#                                    # ["CAP_NET_ADMIN", "CAP_SYS_PTRACE"]
# host_pid_view = false              # admin slices: may see the host's processes
"#;

/// The commented default config `nodemgr init` writes for `federation`.
pub fn default_config(federation: &str) -> String {
    format!(
        "# PlanetMesh node manager configuration. Paths are relative to this file.\n\
         # Every commented line shows a default.\n\n{}{}\n{}{}{}",
        CommonConfig::<NodeKind>::template(federation),
        NODE_TEMPLATE.replace("{federation}", federation),
        CommonConfig::<NodeKind>::trust_template(federation),
        NODE_SECTIONS,
        super::ssh::TEMPLATE
    )
}

impl NodeManagerConfig {
    /// Reads and checks `path`; relative paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<NodeManagerConfig, ConfigError> {
        let mut config: NodeManagerConfig =
            federation::daemon::config::load(path, NodeKind::PROGRAM)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config
            .common
            .resolve(base)
            .map_err(|detail| ConfigError::Invalid {
                path: path.to_owned(),
                detail,
            })?;
        if config.state_dir.is_relative() {
            config.state_dir = base.join(&config.state_dir);
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
        if config.heartbeat_interval_secs >= config.ad_ttl_secs {
            return Err(invalid(format!(
                "heartbeat_interval_secs ({}) must be under ad_ttl_secs ({}): beats come between ads",
                config.heartbeat_interval_secs, config.ad_ttl_secs
            )));
        }
        config.pool().map_err(invalid)?;
        for (i, delegation) in config.delegations.iter().enumerate() {
            delegation.check(config.ad_interval_secs).map_err(invalid)?;
            if config.delegations[..i]
                .iter()
                .any(|d| d.agent == delegation.agent)
            {
                return Err(invalid(format!(
                    "agent {} has two [[delegations]]: merge them into one",
                    delegation.agent.short()
                )));
            }
        }
        if let Some(prefix) = &config.ifname_prefix
            && (!(1..=8).contains(&prefix.len())
                || !prefix.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(invalid(format!(
                "ifname_prefix {prefix:?}: expected 1 to 8 letters and digits"
            )));
        }
        if let Some(base) = config.uid_base
            && base < 1 << 16
        {
            return Err(invalid(format!(
                "uid_base {base}: below 65536, sliver ids would be the host's own users'"
            )));
        }
        if config.ports_per_sliver == 0 || config.ports_per_sliver > config.public_ports.count {
            return Err(invalid(format!(
                "ports_per_sliver {}: expected 1 to the size of public_ports ({})",
                config.ports_per_sliver, config.public_ports.count
            )));
        }
        config.public_ports.per_sliver = config.ports_per_sliver;
        config.ssh.check(&config.public_ports).map_err(invalid)?;
        let listen: Vec<String> = config
            .common
            .listen
            .iter()
            .map(ToString::to_string)
            .collect();
        let own = super::uplink::own_ports_in(
            &config.public_ports,
            &listen,
            config.common.http.map(|a| a.port()),
        );
        // Only a node that forwards ports can hand its own to a sliver.
        let forwards =
            config.isolation == Isolation::Linux && config.public_address != PublicAddress::Off;
        if forwards && !own.is_empty() {
            return Err(invalid(format!(
                "public_ports {}-{} holds the node's own port(s) {own:?} (listen, http): move \
                 public_ports or those listeners so slivers never get the node's ports",
                config.public_ports.first,
                config.public_ports.last()
            )));
        }
        if config.claim_dir.is_relative() {
            config.claim_dir = base.join(&config.claim_dir);
        }
        config.source = Some(path.to_owned());
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
            // Written back as it may be read ("auto": measured), so the key stays known.
            None => s.serialize_str("auto"),
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
        std::fs::write(&path, default_config("plc")).unwrap();
        let config = NodeManagerConfig::load(&path).unwrap();
        assert_eq!(config.common.federation, "plc");
        assert_eq!(config.common.key_file, dir.path().join("node.key"));
        assert_eq!(config.isolation, Isolation::Linux);
        assert_eq!(config.pool().unwrap().1, 16);
        assert_eq!(config.disk_backing, DiskBacking::Quota);
        assert_eq!(config.disk_check_secs, 10);
        assert!(config.favor_dynamic_cgroups);
        assert_eq!(
            (config.ifname_prefix, config.uid_base, config.claim_dir),
            (None, None, PathBuf::from("/run/planetmesh/claims"))
        );
        std::fs::write(&path, "federation = \"plc\"\ndisk_backing = \"tmpfs\"\n").unwrap();
        let config = NodeManagerConfig::load(&path).unwrap();
        assert_eq!(config.disk_backing, DiskBacking::Tmpfs);
        std::fs::write(&path, "federation = \"plc\"\ndisk_backing = \"quota\"\n").unwrap();
        let config = NodeManagerConfig::load(&path).unwrap();
        assert_eq!(config.disk_backing, DiskBacking::Quota);
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
        for bad in [
            "ifname_prefix = \"toolong12\"",
            "ifname_prefix = \"a/b\"",
            "uid_base = 1000",
        ] {
            std::fs::write(&path, format!("federation = \"plc\"\n{bad}\n")).unwrap();
            let err = NodeManagerConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(bad.split(' ').next().unwrap()), "{err}");
        }
        std::fs::write(&path, "federation = \"plc\"\nfederatoin = \"x\"\n").unwrap();
        assert!(
            NodeManagerConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("federatoin")
        );
    }

    #[test]
    fn slice_networking_settings_default_and_refuse_what_would_leak_the_nodes_ports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "federation = \"plc\"\n").unwrap();
        let config = NodeManagerConfig::load(&path).unwrap();
        assert_eq!(config.public_address, PublicAddress::Auto);
        assert_eq!(config.icmp_rate, 10);
        assert_eq!(
            (
                config.public_ports.first,
                config.public_ports.count,
                config.public_ports.per_sliver
            ),
            (40000, 1024, 1)
        );
        let engine = crate::daemon::run::sliver_config(
            &config,
            &crate::sliver::claim::NodeId::new("1a2b3c4d").unwrap(),
            "init".into(),
        )
        .unwrap();
        let network = engine.network.unwrap();
        assert_eq!(network.ports.map(|p| p.per_sliver), Some(1));
        for (bad, setting) in [
            (
                "listen = [\"/ip4/0.0.0.0/tcp/40007\"]\npublic_ports = \"40000-40009\"",
                "public_ports",
            ),
            ("http = \"127.0.0.1:40001\"", "public_ports"),
            ("public_ports = \"40000-39999\"", "public_ports"),
            ("ports_per_sliver = 0", "ports_per_sliver"),
            (
                "public_ports = \"40000-40001\"\nports_per_sliver = 3",
                "ports_per_sliver",
            ),
            ("public_address = \"example\"", "public_address"),
        ] {
            std::fs::write(&path, format!("federation = \"plc\"\n{bad}\n")).unwrap();
            let err = NodeManagerConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(setting), "{bad}: {err}");
        }
        // A node that forwards nothing cannot hand its ports out: no refusal then.
        std::fs::write(
            &path,
            "federation = \"plc\"\npublic_address = \"off\"\nhttp = \"127.0.0.1:40001\"\n",
        )
        .unwrap();
        assert!(NodeManagerConfig::load(&path).is_ok());
    }

    #[test]
    fn two_nodes_with_one_config_get_a_share_of_the_host_each() {
        use crate::sliver::claim::NodeId;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, default_config("plc")).unwrap();
        let config = NodeManagerConfig::load(&path).unwrap();
        let engine = |id: &str| {
            crate::daemon::run::sliver_config(&config, &NodeId::new(id).unwrap(), "init".into())
                .unwrap()
        };
        let (a, b) = (engine("1a2b3c4d"), engine("5e6f7a8b"));
        assert_eq!(a.cgroup_parent, "planetmesh/1a2b3c4d.node");
        assert_eq!(b.cgroup_parent, "planetmesh/5e6f7a8b.node");
        assert_eq!(
            (a.slots.ifname_prefix.as_str(), a.shaping.ifb.as_str()),
            ("pm1a2b3v", "pm1a2b3vifb")
        );
        assert_ne!(a.slots.ifname_prefix, b.slots.ifname_prefix);
        let share = a.share.unwrap();
        assert!(share.uid_auto);
        assert_eq!(share.claim_dir, PathBuf::from("/run/planetmesh/claims"));
        // Configured, the prefix and uid base are the operator's; the parent is still the
        // node's own.
        std::fs::write(
            &path,
            "federation = \"plc\"\nifname_prefix = \"pmx\"\nuid_base = 300000000\n\
             cgroup_parent = \"a/b\"\nclaim_dir = \"claims\"\n",
        )
        .unwrap();
        let config = NodeManagerConfig::load(&path).unwrap();
        let c = crate::daemon::run::sliver_config(
            &config,
            &NodeId::new("1a2b3c4d").unwrap(),
            "init".into(),
        )
        .unwrap();
        assert_eq!(c.cgroup_parent, "a/b/1a2b3c4d.node");
        assert_eq!(
            (c.slots.ifname_prefix.as_str(), c.slots.uid_base),
            ("pmx", 300_000_000)
        );
        let share = c.share.unwrap();
        assert!(!share.uid_auto);
        assert_eq!(share.claim_dir, dir.path().join("claims"));
    }

    #[test]
    fn delegations_state_their_scope_and_default_to_regular_slices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        let agent = capability_schema::identity::test_key(20).public();
        let with = |extra: &str| {
            format!(
                "federation = \"plc\"\n[[delegations]]\nagent = \"{agent}\"\nshare = \"cpu=1\"\n{extra}"
            )
        };
        std::fs::write(&path, with("")).unwrap();
        let config = NodeManagerConfig::load(&path).unwrap();
        let d = &config.delegations[0];
        assert_eq!(d.scope(), DelegationScope::default());
        assert_eq!(d.lifetime(), 30 * 86_400);
        std::fs::write(
            &path,
            with(
                "kinds = [\"admin\"]\ncapabilities = [\"CAP_NET_ADMIN\"]\nhost_pid_view = true\n\
                 lifetime_secs = 600\n",
            ),
        )
        .unwrap();
        let config = NodeManagerConfig::load(&path).unwrap();
        let d = &config.delegations[0];
        assert_eq!(
            d.scope(),
            DelegationScope {
                regular: false,
                admin: Some(AdminScope {
                    capabilities: vec!["CAP_NET_ADMIN".into()],
                    host_pid_view: true
                })
            }
        );
        assert_eq!(d.lifetime(), 600);
        for (extra, says) in [
            (
                "capabilities = [\"CAP_SYS_ADMIN\"]\n",
                "add \"admin\" to kinds",
            ),
            ("host_pid_view = true\n", "add \"admin\" to kinds"),
            (
                "kinds = [\"admin\"]\ncapabilities = [\"sys_admin\"]\n",
                "\"sys_admin\": expected a kernel name",
            ),
            ("kinds = []\n", "kinds is empty"),
            ("kinds = [\"root\"]\n", "expected `regular` or `admin`"),
            (
                "lifetime_secs = 30\n",
                "at least 3 × ad_interval_secs (45 s)",
            ),
            (
                &format!("[[delegations]]\nagent = \"{agent}\"\nshare = \"cpu=1\"\n"),
                "two [[delegations]]",
            ),
        ] {
            std::fs::write(&path, with(extra)).unwrap();
            let err = NodeManagerConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(says), "{extra}: {err}");
        }
    }

    #[test]
    fn the_default_config_puts_its_sections_last() {
        federation::testing::check_sections_last(&default_config("plc"));
    }

    #[test]
    fn every_line_of_the_default_config_works_uncommented_in_place() {
        federation::testing::check_uncommented_template_loads(
            &default_config("plc"),
            NodeManagerConfig::load,
        );
    }

    #[test]
    fn mdns_is_off_by_default_and_documented_in_the_default_config() {
        federation::testing::check_mdns_setting(&default_config("plc"), |path| {
            NodeManagerConfig::load(path)
                .map(|c| c.common.mdns)
                .map_err(|e| e.to_string())
        });
    }
}
