//! `agent.toml`: the agent daemon's configuration. Every field documents its default; paths are
//! relative to the config file's directory. The settings every daemon has are
//! `federation::daemon::CommonConfig`, flattened in; `agentd init` writes [`default_config`].

use std::path::{Path, PathBuf};

use capability_schema::Role;
use capability_schema::ad::PriceList;
pub use federation::daemon::TrustedFederation;
use federation::daemon::{CommonConfig, ConfigError, DaemonKind};
use serde::{Deserialize, Serialize};

use crate::policy::PolicyConfig;

/// The agent's place in the daemon skeleton: its defaults for the common settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentKind;

impl DaemonKind for AgentKind {
    const PROGRAM: &'static str = "agentd";
    const ROLE: Role = Role::Agent;
    const KEY_FILE: &'static str = "agent.key";
    const PORT: u16 = 4101;
    const HTTP_PORT: u16 = 9181;
    const MAX_IN_FLIGHT: usize = 64;
}

/// The agent daemon's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Key, federation, membership, trust, listen, bootstrap, mdns, http, max_in_flight.
    #[serde(flatten)]
    pub common: CommonConfig<AgentKind>,
    /// Where the ticket ledger lives (default `state`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Peering agreements this agent's federation signed (CBOR files from `fedctl peer`).
    #[serde(default)]
    pub peering: Vec<PathBuf>,
    /// Federations whose ads to follow (default: its own).
    #[serde(default)]
    pub follow: Vec<String>,
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
    /// Seconds of silence after which a node that heartbeats is no longer offered or minted
    /// on, until it beats again (default 4: with nodes' 1 s beats, a dead node leaves plans
    /// within 3 to 4 s; 0: never, nodes live by their ads' TTL).
    #[serde(default = "default_dead_after")]
    pub dead_after_secs: u64,
}

fn default_state_dir() -> PathBuf {
    "state".into()
}
fn default_oversubscription() -> f64 {
    1.0
}
fn default_dead_after() -> u64 {
    4
}

/// The agent's own top-level settings in the commented default config.
const AGENT_TEMPLATE: &str = r#"
# state_dir = "state"               # the ticket ledger
# peering = []                      # agreements from: fedctl peer
# follow = ["{federation}"]         # federations whose ads to follow
policy = "policy.toml"              # who gets tickets: principals, roles, quotas (`init` wrote
#                                    # it all commented: serve certified members as users)
# surge_percent = 0                 # extra percent at a fully committed share
# oversubscription = 1.0            # 1.0 = never promise more than the share
# dead_after_secs = 4               # a node silent this long (no heartbeat) is not planned
#                                    # until it beats again; above nodes' heartbeat interval
"#;

/// The agent's own sections, after every top-level setting.
const AGENT_SECTIONS: &str = r#"
# Prices in micro-credits per resource-hour:
# [prices]
# cpu_core_hour = 0
# memory_gib_hour = 0
# disk_gib_hour = 0
# egress_mbit_hour = 0
"#;

/// The policy file `agentd init` writes beside the config (the config names it).
pub const POLICY_FILE: &str = "policy.toml";

/// The commented policy file `agentd init` writes: loaded as written, it is the default
/// policy; each line shows a default or an example, and works uncommented in place.
pub const POLICY_TEMPLATE: &str = r#"# PlanetMesh agent policy: who gets which tickets from this agent.
# Every commented line shows a default (or, for [[principals]], an example). As written, this
# file is the default policy: certified members of trusted federations are served as users.

# serve_certified_members = true     # certified principals not listed below are served as users
# max_duration_secs = 1209600        # the longest ticket (14 days)

# The quota of principals without their own (outstanding at once):
# [default_quota]
# max_slivers = 10
# max_total = "cpu=8 cores,memory=16GiB,disk=100GiB,egress=100Mbit"  # default: no limit

# A principal with an explicit role: "user", "pi" or "admin" (admin slices); one block each:
# [[principals]]
# key = "ed25519/..."
# role = "user"
# slice_prefixes = ["site0_"]        # default: its certificate's site followed by _
# net_raw = false                    # raw sockets in its slivers (admins always may)

# Its own quota (default: the default quota):
# [principals.quota]
# max_slivers = 20
"#;

/// The commented default config `agentd init` writes for `federation`.
pub fn default_config(federation: &str) -> String {
    format!(
        "# PlanetMesh agent configuration. Paths are relative to this file.\n\
         # Every commented line shows a default.\n\n{}{}\n{}{}",
        CommonConfig::<AgentKind>::template(federation),
        AGENT_TEMPLATE.replace("{federation}", federation),
        CommonConfig::<AgentKind>::trust_template(federation),
        AGENT_SECTIONS
    )
}

impl AgentConfig {
    /// Reads and checks `path`; relative paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let mut config: AgentConfig = federation::daemon::config::load(path, AgentKind::PROGRAM)?;
        let invalid = |detail: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            detail,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        config.common.resolve(base).map_err(invalid)?;
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.state_dir);
        config.peering.iter_mut().for_each(resolve);
        if let Some(p) = &mut config.policy {
            resolve(p);
        }
        if !(config.oversubscription.is_finite() && config.oversubscription > 0.0) {
            return Err(invalid("oversubscription must be a positive number".into()));
        }
        if config.follow.is_empty() {
            config.follow.push(config.common.federation.clone());
        }
        Ok(config)
    }

    /// The silence after which a heartbeating node is left out (`None` when
    /// `dead_after_secs` is 0).
    pub fn dead_after(&self) -> Option<std::time::Duration> {
        (self.dead_after_secs > 0).then(|| std::time::Duration::from_secs(self.dead_after_secs))
    }

    /// The policy: the file's, or the default.
    pub fn load_policy(&self) -> Result<PolicyConfig, ConfigError> {
        match &self.policy {
            None => Ok(PolicyConfig::default()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    detail: e.to_string().trim_end().to_owned(),
                })
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
        std::fs::write(&path, default_config("plc")).unwrap();
        std::fs::write(dir.path().join(POLICY_FILE), POLICY_TEMPLATE).unwrap();
        let config = AgentConfig::load(&path).unwrap();
        assert_eq!(config.follow, vec!["plc".to_owned()]);
        assert_eq!(config.common.key_file, dir.path().join("agent.key"));
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
    fn the_policy_template_is_the_default_policy_and_every_line_works_uncommented() {
        let policy: PolicyConfig = toml::from_str(POLICY_TEMPLATE).unwrap();
        assert_eq!(policy, PolicyConfig::default());
        federation::testing::check_sections_last(POLICY_TEMPLATE);
        let all = federation::testing::uncomment_all(POLICY_TEMPLATE);
        let policy: PolicyConfig = toml::from_str(&all).unwrap_or_else(|e| panic!("{e}\n{all}"));
        assert_eq!(policy.principals.len(), 1);
        assert_eq!(
            policy.principals[0].quota.as_ref().unwrap().max_slivers,
            Some(20)
        );
        assert_eq!(policy.default_quota.max_slivers, Some(10));
    }

    #[test]
    fn unknown_policy_fields_are_refused_naming_their_section() {
        for (text, section) in [
            ("[default_quota]\nmax_sliver = 3\n", "max_sliver"),
            (
                "[[principals]]\nkey = \"ed25519/0000000000000000000000000000000000000000000000000000000000000000\"\nrole = \"user\"\nprefixes = [\"a_\"]\n",
                "prefixes",
            ),
            (
                "[[principals]]\nkey = \"ed25519/0000000000000000000000000000000000000000000000000000000000000000\"\nrole = \"user\"\n[principals.quota]\nslivers = 2\n",
                "slivers",
            ),
        ] {
            let err = toml::from_str::<PolicyConfig>(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(section), "{text}: {err}");
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
            AgentConfig::load,
        );
    }

    #[test]
    fn mdns_is_off_by_default_and_documented_in_the_default_config() {
        federation::testing::check_mdns_setting(&default_config("plc"), |path| {
            AgentConfig::load(path)
                .map(|c| c.common.mdns)
                .map_err(|e| e.to_string())
        });
    }
}
