//! Slice specs: the TOML file a user writes (or the flags of `slicectl slice create`) and its
//! translation to a `SliceRequest`.
//!
//! ```toml
//! name = "princeton_demo"          # slices are named <site>_<name>, as in PlanetLab
//! slivers = 4                      # or: nodes = ["node2", "fed0-site1/75f91bc9", "ed25519/…"]
//! resources = "cpu=500m,memory=256MiB,disk=1GiB,egress=10Mbit"   # per sliver (default:
//!                                                                 # DEFAULT_RESOURCES)
//! duration = "2h"                  # tickets' window: 90s, 10m, 2h, 3d or seconds
//! lease = "30m"                    # optional: first lease shorter than the tickets (renew)
//! mode = "all-or-nothing"          # or "best-effort"
//! admin = false                    # admin slices: capabilities = ["CAP_NET_RAW"], host_pids
//!
//! [constraints]
//! federations = ["plc", "ple"]     # empty: any
//! min_sites = 2
//! exclude_nodes = []
//! max_price = 1000                 # micro-credits per sliver for the whole duration
//! ```

use std::path::Path;

use capability_schema::slice::{SliceConstraints, SliceKind, SliverTarget};
use capability_schema::{AcquireMode, NetGrant, PublicKey, Resources, SliceRequest};
use serde::{Deserialize, Serialize};

/// Public ports a sliver leases when its resources do not say (`ports=N`).
pub const DEFAULT_PORTS: u32 = 1;

/// What each sliver asks for when neither the spec nor `--resources` says: a quarter core,
/// 256 MiB of memory, 1 GiB of disk, 1 Mbit/s of egress (and [`DEFAULT_PORTS`] port).
pub const DEFAULT_RESOURCES: &str = "cpu=250m,memory=256MiB,disk=1GiB,egress=1Mbit";

fn default_resources() -> String {
    DEFAULT_RESOURCES.to_owned()
}

/// Errors in a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("spec {path}: {detail}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// A value is wrong.
    #[error("spec: {0}")]
    Invalid(String),
}

/// Constraints as a spec writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecConstraints {
    /// Federations allowed (empty: any).
    #[serde(default)]
    pub federations: Vec<String>,
    /// At least this many distinct sites.
    #[serde(default)]
    pub min_sites: u32,
    /// Nodes never to use (named as [`SliceSpec::nodes`]).
    #[serde(default)]
    pub exclude_nodes: Vec<String>,
    /// At most this price per sliver for the whole duration, in micro-credits.
    #[serde(default)]
    pub max_price: Option<u64>,
}

/// A slice spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceSpec {
    /// The slice's name.
    pub name: String,
    /// How many slivers (ignored when `nodes` is given).
    #[serde(default)]
    pub slivers: Option<u32>,
    /// One sliver on each of these nodes: each its ad's name, `site/short-key`, 4 or more hex
    /// digits of its key, or its key (see [`crate::nodes`]).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Resources per sliver (`cpu=500m,memory=256MiB,…`; default [`DEFAULT_RESOURCES`]).
    #[serde(default = "default_resources")]
    pub resources: String,
    /// The tickets' window (`2h`, `90m`, `3600`).
    pub duration: String,
    /// The first lease, when shorter than the window (renew extends it).
    #[serde(default)]
    pub lease: Option<String>,
    /// `all-or-nothing` (default) or `best-effort`.
    #[serde(default)]
    pub mode: AcquireMode,
    /// An admin slice (paper §4.3).
    #[serde(default)]
    pub admin: bool,
    /// Admin slices: capabilities by name.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Admin slices: see the host's processes.
    #[serde(default)]
    pub host_pids: bool,
    /// Raw sockets in each sliver's own network namespace (granted by agents' policy).
    #[serde(default)]
    pub net_raw: bool,
    /// Each sliver's egress held to its granted rate (no share of the node's excess).
    #[serde(default)]
    pub egress_cap: bool,
    /// Where slivers may go.
    #[serde(default)]
    pub constraints: SpecConstraints,
}

/// Parses a duration: `90s`, `10m`, `2h`, `3d`, `1w` or plain seconds.
pub fn parse_duration(text: &str) -> Result<u64, SpecError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        SpecError::Invalid(format!("duration {text:?}: expected e.g. 90s, 10m, 2h, 3d"))
    })?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        "w" | "week" | "weeks" => 7 * 86_400,
        other => {
            return Err(SpecError::Invalid(format!(
                "duration {text:?}: unknown unit {other:?} (s, m, h, d, w)"
            )));
        }
    };
    number
        .checked_mul(scale)
        .filter(|s| *s > 0)
        .ok_or_else(|| SpecError::Invalid(format!("duration {text:?} must be positive")))
}

impl SliceSpec {
    /// Reads a spec file.
    pub fn load(path: &Path) -> Result<SliceSpec, SpecError> {
        let read = |detail: String| SpecError::Read {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        toml::from_str(&text).map_err(|e| read(e.to_string()))
    }

    /// A spec with only a name and defaults (for building from flags): [`DEFAULT_RESOURCES`]
    /// per sliver, a 1 h window, all-or-nothing.
    pub fn named(name: &str) -> SliceSpec {
        SliceSpec {
            name: name.to_owned(),
            slivers: None,
            nodes: Vec::new(),
            resources: default_resources(),
            duration: "1h".into(),
            lease: None,
            mode: AcquireMode::AllOrNothing,
            admin: false,
            capabilities: Vec::new(),
            host_pids: false,
            net_raw: false,
            egress_cap: false,
            constraints: SpecConstraints::default(),
        }
    }

    /// Resources per sliver; a sliver leases one public port unless `ports=N` says otherwise
    /// (`ports=0`: none).
    pub fn per_sliver(&self) -> Result<Resources, SpecError> {
        let mut r: Resources = self
            .resources
            .parse()
            .map_err(|e| SpecError::Invalid(format!("resources {:?}: {e}", self.resources)))?;
        if r.is_zero() {
            return Err(SpecError::Invalid(
                "resources: ask for something per sliver, e.g. resources = \"cpu=500m,memory=256MiB\"".into(),
            ));
        }
        if !self.resources.contains("ports") {
            r.ports = DEFAULT_PORTS;
        }
        Ok(r)
    }

    /// The first lease's length in seconds, if shorter than the window.
    pub fn lease_secs(&self) -> Result<Option<u64>, SpecError> {
        self.lease.as_deref().map(parse_duration).transpose()
    }

    /// Checks the spec without making a request (name, sliver count, resources, window,
    /// first lease), so a bad one fails before any identity or network is needed.
    pub fn check(&self) -> Result<(), SpecError> {
        if self.name.trim().is_empty() {
            return Err(SpecError::Invalid("the slice needs a name".into()));
        }
        crate::preflight::check_slice_name(&self.name)
            .map_err(|e| SpecError::Invalid(e.to_string()))?;
        if self.nodes.is_empty() && self.slivers.is_none_or(|n| n == 0) {
            return Err(SpecError::Invalid(
                "say how many slivers (slivers = N) or where (nodes = [...])".into(),
            ));
        }
        self.per_sliver()?;
        parse_duration(&self.duration)?;
        self.lease_secs()?;
        // A node argument no known node matches may be known to the agents; any other
        // mistake in one (a prefix too short, several nodes) is one now.
        for given in self.node_args() {
            match crate::nodes::resolve(given) {
                Ok(_) | Err(crate::nodes::NodeError::Unknown(_)) => {}
                Err(e) => return Err(SpecError::Invalid(e.to_string())),
            }
        }
        Ok(())
    }

    /// The node arguments: `nodes` and `constraints.exclude_nodes`.
    pub fn node_args(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .chain(&self.constraints.exclude_nodes)
            .map(String::as_str)
    }

    /// Whether a node argument names no node known yet (the agents may know it).
    pub fn names_unknown_nodes(&self) -> bool {
        self.node_args().any(|n| {
            matches!(
                crate::nodes::resolve(n),
                Err(crate::nodes::NodeError::Unknown(_))
            )
        })
    }

    /// The request this spec makes for `principal` of `federation`.
    pub fn to_request(
        &self,
        principal: PublicKey,
        federation: &str,
    ) -> Result<SliceRequest, SpecError> {
        if self.name.trim().is_empty() {
            return Err(SpecError::Invalid("the slice needs a name".into()));
        }
        let resolve = |list: &[String]| {
            list.iter()
                .map(|n| crate::nodes::resolve(n).map_err(|e| SpecError::Invalid(e.to_string())))
                .collect::<Result<Vec<PublicKey>, SpecError>>()
        };
        let target = if !self.nodes.is_empty() {
            SliverTarget::Nodes(resolve(&self.nodes)?)
        } else {
            match self.slivers {
                Some(n) if n > 0 => SliverTarget::Count(n),
                _ => {
                    return Err(SpecError::Invalid(
                        "say how many slivers (slivers = N) or where (nodes = [...])".into(),
                    ));
                }
            }
        };
        let kind = if self.admin {
            SliceKind::Admin {
                capabilities: self.capabilities.clone(),
                host_pid_view: self.host_pids,
            }
        } else {
            SliceKind::Regular
        };
        Ok(SliceRequest {
            name: self.name.clone(),
            principal,
            principal_federation: federation.to_owned(),
            kind,
            per_sliver: self.per_sliver()?,
            target,
            constraints: SliceConstraints {
                federations: self.constraints.federations.clone(),
                min_sites: self.constraints.min_sites,
                exclude_nodes: resolve(&self.constraints.exclude_nodes)?,
                max_price: self.constraints.max_price,
            },
            duration_secs: parse_duration(&self.duration)?,
            mode: self.mode,
            net: NetGrant {
                raw: self.net_raw,
                egress_cap: self.egress_cap,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;

    use super::*;

    #[test]
    fn a_spec_file_becomes_a_request() {
        let text = r#"
name = "princeton_demo"
slivers = 4
resources = "cpu=500m,memory=256MiB"
duration = "2h"
lease = "10m"
mode = "best-effort"
[constraints]
federations = ["plc", "ple"]
min_sites = 2
max_price = 9
"#;
        let spec: SliceSpec = toml::from_str(text).unwrap();
        let me = test_key(1).public();
        let r = spec.to_request(me, "plc").unwrap();
        assert_eq!(r.target, SliverTarget::Count(4));
        assert_eq!(r.per_sliver.cpu_millis, 500);
        assert_eq!(r.duration_secs, 7200);
        assert_eq!(r.mode, AcquireMode::BestEffort);
        assert_eq!(r.constraints.min_sites, 2);
        assert_eq!(spec.lease_secs().unwrap(), Some(600));
        // Round trip through TOML.
        let again: SliceSpec = toml::from_str(&toml::to_string(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(parse_duration("5 fortnights").is_err());
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("3600").unwrap(), 3600);
        let mut spec = SliceSpec::named("x_y");
        spec.resources = "cpu=1".into();
        let err = spec.to_request(test_key(1).public(), "plc").unwrap_err();
        assert!(err.to_string().contains("how many slivers"), "{err}");
        spec.slivers = Some(1);
        spec.resources = "gpu=1".into();
        assert!(spec.to_request(test_key(1).public(), "plc").is_err());
        assert!(
            toml::from_str::<SliceSpec>(
                "name = \"a\"\nresources = \"cpu=1\"\nduration = \"1h\"\nslivrs = 2\n"
            )
            .is_err()
        );
    }
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn a_spec_without_resources_asks_for_the_default() {
        let mut spec = SliceSpec::named("plc_mine");
        spec.slivers = Some(3);
        spec.check().expect("a name and a count make a valid spec");
        let want: Resources = DEFAULT_RESOURCES.parse().unwrap();
        let got = spec.per_sliver().unwrap();
        assert!(!got.is_zero());
        assert_eq!(got.cpu_millis, want.cpu_millis);
        assert_eq!(got.ports, DEFAULT_PORTS);
        // A spec file that leaves resources out gets the same.
        let file: SliceSpec =
            toml::from_str("name = \"plc_mine\"\nslivers = 3\nduration = \"1h\"\n").unwrap();
        assert_eq!(file.resources, DEFAULT_RESOURCES);
        file.check().unwrap();
    }

    #[test]
    fn a_sliver_leases_one_port_unless_its_resources_say() {
        let mut spec = SliceSpec {
            resources: "cpu=500m".into(),
            ..SliceSpec::named("plc_mine")
        };
        assert_eq!(spec.per_sliver().unwrap().ports, DEFAULT_PORTS);
        spec.resources = "cpu=500m,ports=3".into();
        assert_eq!(spec.per_sliver().unwrap().ports, 3);
        spec.resources = "cpu=500m,ports=0".into();
        assert_eq!(spec.per_sliver().unwrap().ports, 0);
    }
}
