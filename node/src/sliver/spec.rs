//! What a sliver is asked to be: its id, kind, resources and the capabilities its grant names.
//!
//! [`SliverSpec`] is built by the node manager from an admitted ticket; [`SliverSpec::validate`]
//! checks it before anything touches the host. Its seccomp profile
//! ([`SliverSpec::seccomp_profile`]) says what the sliver's filter lets it do; its
//! [`SliverAbout`] is what the sliver is told about where it is ([`super::about`]).

use std::fmt;
use std::path::PathBuf;

use capability_schema::Resources;
use serde::{Deserialize, Serialize};

use super::caps::{self, CapsError};
use super::seccomp::SeccompProfile;

/// The largest sliver id, in bytes (it is also the sliver's hostname).
pub const MAX_ID_LEN: usize = 48;

/// An error in a sliver spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The id is empty, too long or has a character other than `[a-z0-9_-]`.
    #[error("invalid sliver id {0:?}: expected 1 to {MAX_ID_LEN} characters of [a-z0-9_-]")]
    InvalidId(String),
    /// A capability name is unknown or forbidden for this kind of sliver.
    #[error(transparent)]
    Caps(#[from] CapsError),
    /// The host pid view was asked for a regular sliver.
    #[error("sliver {0}: only an admin sliver may see the host's processes")]
    HostPidViewNotAdmin(String),
    /// More public ports than the node leases one sliver.
    #[error(
        "sliver {id}: {asked} public ports asked; this node leases at most {most} per sliver \
         (ports_per_sliver)"
    )]
    Ports {
        /// The sliver.
        id: String,
        /// What was asked.
        asked: u32,
        /// The most one sliver may lease here.
        most: u32,
    },
    /// A value the sliver would be told about itself is unfit for a file line or an
    /// environment variable.
    #[error("sliver {id}: {field} {value:?}: {reason}")]
    About {
        /// The sliver.
        id: String,
        /// The [`SliverAbout`] field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Memory below what an init and a shell need.
    #[error("sliver {id}: memory {bytes} bytes is below the minimum of {min} bytes")]
    MemoryTooSmall {
        /// The sliver.
        id: String,
        /// What was asked.
        bytes: u64,
        /// The minimum.
        min: u64,
    },
}

/// The smallest memory limit a sliver may have (init, a shell and the kernel's own charges).
pub const MIN_MEMORY_BYTES: u64 = 8 << 20;

/// A sliver's id: the slice's name on this node. Also its hostname and the name of its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SliverId(String);

impl SliverId {
    /// Checks and wraps an id.
    pub fn new(id: impl Into<String>) -> Result<Self, SpecError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(SliverId(id))
        } else {
            Err(SpecError::InvalidId(id))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SliverId {
    type Error = SpecError;
    fn try_from(s: String) -> Result<Self, SpecError> {
        SliverId::new(s)
    }
}

impl From<SliverId> for String {
    fn from(id: SliverId) -> String {
        id.0
    }
}

impl fmt::Display for SliverId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Regular or administrative (paper §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SliverKind {
    /// A conventional slice's sliver.
    #[default]
    Regular,
    /// An administrative slice's sliver: may hold any capability its grant names and may see
    /// the host's processes.
    Admin,
}

/// The most bytes of one [`SliverAbout`] value.
pub const MAX_ABOUT_LEN: usize = 256;

/// Where a sliver is, as the node tells it (`/etc/planetmesh/sliver.json` and `PLANETMESH_*`
/// variables; see [`super::about`]). The node manager fills the slice, node, federation and
/// site from the lease and its membership; the engine fills the public face from the sliver's
/// slot when it creates it ([`super::NodeConfig::public_endpoint`], the one source of the
/// ports), replacing whatever the spec said there.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SliverAbout {
    /// The slice's name.
    pub slice: String,
    /// The node's public key, `ed25519/<hex>`.
    pub node: String,
    /// The node's federation.
    pub federation: String,
    /// The node's site (from its membership certificate).
    pub site: String,
    /// The node's public address, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_address: Option<String>,
    /// The public ports leased to the sliver (the same numbers inside it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

impl SliverAbout {
    /// Each text value with its field name.
    pub fn fields(&self) -> [(&'static str, Option<&str>); 5] {
        [
            ("slice", Some(self.slice.as_str())),
            ("node", Some(self.node.as_str())),
            ("federation", Some(self.federation.as_str())),
            ("site", Some(self.site.as_str())),
            ("public_address", self.public_address.as_deref()),
        ]
    }
}

/// Why `value` cannot be told to a sliver: too long, or holding a control character (NUL,
/// newline, escape, …), which could end a variable or forge a line of whoever prints it.
pub fn about_value_fault(value: &str) -> Option<&'static str> {
    if value.len() > MAX_ABOUT_LEN {
        Some("longer than 256 bytes")
    } else if value.chars().any(char::is_control) {
        Some("holds a control character (NUL, newline, ...)")
    } else {
        None
    }
}

/// Everything needed to create a sliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliverSpec {
    /// The sliver's id (the slice name on this node).
    pub id: SliverId,
    /// Regular or admin.
    pub kind: SliverKind,
    /// The granted resources. `cpu_millis` sets the CPU weight (and the quota when
    /// [`SliverSpec::cpu_hard_cap`]); `memory_bytes` the hard memory limit; `disk_bytes` the
    /// upper-dir limit; `egress_kbps` the guaranteed egress rate.
    pub resources: Resources,
    /// Extra capabilities the grant names, e.g. `CAP_NET_RAW` (kernel spelling), and
    /// pseudo-capabilities such as [`caps::NESTED_USERNS`].
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Admin only: share the host's pid namespace (see every process on the node).
    #[serde(default)]
    pub host_pid_view: bool,
    /// Enforce `cpu_millis` as a hard quota, not only as a weight.
    #[serde(default = "default_true")]
    pub cpu_hard_cap: bool,
    /// Cap on the egress rate in kbit/s; `None` lets the sliver borrow up to the node cap (a
    /// fair share of the excess, paper §3.3).
    #[serde(default)]
    pub egress_ceil_kbps: Option<u64>,
    /// Most processes at once.
    #[serde(default = "default_pids")]
    pub pids_max: u64,
    /// A reference image directory for this sliver; `None` uses the node's default.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// What its seccomp filter lets it do beyond its kind's default (records from before
    /// this field: the default, the strictest). See [`SliverSpec::seccomp_profile`].
    #[serde(default)]
    pub seccomp: SeccompProfile,
    /// Where it is, as it is told ([`SliverAbout`]); `None` (records from before this field,
    /// slivers made without a lease) tells it its own addresses only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<SliverAbout>,
}

fn default_true() -> bool {
    true
}

fn default_pids() -> u64 {
    1024
}

impl SliverSpec {
    /// A regular sliver with the given resources and the defaults for everything else.
    pub fn regular(id: SliverId, resources: Resources) -> Self {
        SliverSpec {
            id,
            kind: SliverKind::Regular,
            resources,
            capabilities: Vec::new(),
            host_pid_view: false,
            cpu_hard_cap: true,
            egress_ceil_kbps: None,
            pids_max: default_pids(),
            image: None,
            seccomp: SeccompProfile::default(),
            about: None,
        }
    }

    /// The seccomp profile its filter is built from: [`SliverSpec::seccomp`], with nested
    /// user namespaces also allowed when the capability list names
    /// [`caps::NESTED_USERNS`].
    pub fn seccomp_profile(&self) -> SeccompProfile {
        SeccompProfile {
            nested_userns: self.seccomp.nested_userns
                || caps::names_nested_userns(&self.capabilities),
        }
    }

    /// Checks the spec: id, capabilities allowed for its kind, host view only for admins,
    /// a usable memory limit, what it is told about itself fit for a line.
    pub fn validate(&self) -> Result<(), SpecError> {
        SliverId::new(self.id.0.clone())?;
        let about = self.about.as_ref().map(SliverAbout::fields);
        for (field, value) in about.into_iter().flatten() {
            if let Some(value) = value
                && let Some(reason) = about_value_fault(value)
            {
                return Err(SpecError::About {
                    id: self.id.0.clone(),
                    field,
                    value: value.chars().take(MAX_ABOUT_LEN).collect(),
                    reason,
                });
            }
        }
        caps::granted(self.kind, &self.capabilities)?;
        if self.host_pid_view && self.kind != SliverKind::Admin {
            return Err(SpecError::HostPidViewNotAdmin(self.id.0.clone()));
        }
        if self.resources.memory_bytes != 0 && self.resources.memory_bytes < MIN_MEMORY_BYTES {
            return Err(SpecError::MemoryTooSmall {
                id: self.id.0.clone(),
                bytes: self.resources.memory_bytes,
                min: MIN_MEMORY_BYTES,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(SliverId::new("princeton_codeen-1").is_ok());
        for bad in ["", "Upper", "a b", "x/y", &"a".repeat(MAX_ID_LEN + 1)] {
            assert_eq!(
                SliverId::new(bad),
                Err(SpecError::InvalidId(bad.to_string()))
            );
        }
        let json = serde_json::to_string(&SliverId::new("ok").unwrap()).unwrap();
        assert_eq!(json, "\"ok\"");
        assert!(serde_json::from_str::<SliverId>("\"../etc\"").is_err());
    }

    #[test]
    fn host_view_is_admin_only() {
        let mut spec = SliverSpec::regular(SliverId::new("s").unwrap(), Resources::default());
        spec.host_pid_view = true;
        assert!(matches!(
            spec.validate(),
            Err(SpecError::HostPidViewNotAdmin(_))
        ));
        spec.kind = SliverKind::Admin;
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn nested_userns_comes_from_the_profile_or_the_grant() {
        let mut spec = SliverSpec::regular(SliverId::new("s").unwrap(), Resources::default());
        assert!(!spec.seccomp_profile().nested_userns);
        spec.capabilities = vec![caps::NESTED_USERNS.into()];
        assert!(spec.validate().is_ok(), "a regular sliver may ask for it");
        assert!(spec.seccomp_profile().nested_userns);
        spec.capabilities.clear();
        spec.seccomp.nested_userns = true;
        assert!(spec.seccomp_profile().nested_userns);
        // Records written before the field existed read as the strictest profile.
        let mut json = serde_json::to_value(SliverSpec::regular(
            SliverId::new("old").unwrap(),
            Resources::default(),
        ))
        .unwrap();
        json.as_object_mut().unwrap().remove("seccomp");
        let old: SliverSpec = serde_json::from_value(json).unwrap();
        assert_eq!(old.seccomp, SeccompProfile::default());
    }

    #[test]
    fn what_a_sliver_is_told_must_fit_a_line_and_old_records_have_none() {
        let mut spec = SliverSpec::regular(SliverId::new("s").unwrap(), Resources::default());
        let about = SliverAbout {
            slice: "princeton_codeen".into(),
            node: format!("ed25519/{}", "ab".repeat(32)),
            federation: "plc".into(),
            site: "princeton".into(),
            public_address: Some("192.0.2.7".into()),
            ports: vec![40000],
        };
        spec.about = Some(about.clone());
        assert!(spec.validate().is_ok());
        for (bad, reason) in [
            ("a\nPLANETMESH_NODE=forged", "control character"),
            ("nul\0", "control character"),
            ("esc\u{1b}[2J", "control character"),
            (&"x".repeat(MAX_ABOUT_LEN + 1), "longer"),
        ] {
            spec.about = Some(SliverAbout {
                site: bad.to_owned(),
                ..about.clone()
            });
            let err = spec.validate().unwrap_err();
            assert!(
                matches!(&err, SpecError::About { field: "site", reason: r, .. } if r.contains(reason)),
                "{err}"
            );
        }
        spec.about = Some(SliverAbout {
            public_address: Some("1.2.3.4\r".into()),
            ..about
        });
        assert!(matches!(
            spec.validate(),
            Err(SpecError::About {
                field: "public_address",
                ..
            })
        ));
        // Records written before the field existed read as knowing nothing, and a spec
        // without it is written as before.
        let json = serde_json::to_value(SliverSpec::regular(
            SliverId::new("old").unwrap(),
            Resources::default(),
        ))
        .unwrap();
        assert!(json.get("about").is_none());
        let old: SliverSpec = serde_json::from_value(json).unwrap();
        assert_eq!(old.about, None);
    }

    #[test]
    fn tiny_memory_is_refused() {
        let res = Resources {
            memory_bytes: 1 << 20,
            ..Resources::default()
        };
        let spec = SliverSpec::regular(SliverId::new("s").unwrap(), res);
        assert!(matches!(
            spec.validate(),
            Err(SpecError::MemoryTooSmall { .. })
        ));
    }
}
