//! What a sliver is told about where it is, so a service can announce itself without asking
//! anyone: its slice, the node (its public key, `ed25519/<hex>`), the federation, the site,
//! the node's public address and the sliver's leased public ports (when it has them), and the
//! sliver's own private address.
//!
//! Two ways, one source ([`SliverFacts::of`], from the sliver's record):
//! - a file, [`PATH_IN_SLIVER`]: JSON the engine writes host-side in the sliver's dir
//!   ([`SliverDirs::about`](super::rootfs::SliverDirs::about)) when it creates the sliver, bound
//!   read-only into its root by the mount plan ([`super::rootfs::mount_plan`]). The file
//!   belongs to the host's root, which the sliver's user namespace does not map, so neither the
//!   read-only bind nor the sliver's root can change it;
//! - environment variables of every command run there ([`ENV_NAMES`]), only those known; they
//!   replace any of the same names the caller set ([`command_env`]).
//!
//! The node manager fills the slice, node, federation and site ([`SliverAbout`]); the engine
//! the public face, from the slot. Values are checked when the sliver is made
//! ([`super::spec::about_value_fault`]) and again when a variable is made from a record: no
//! control character (NUL, newline, …) gets into either.

use std::fs;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::spec::{SliverAbout, about_value_fault};

/// Where a sliver reads what it is told, inside its root.
pub const PATH_IN_SLIVER: &str = "/etc/planetmesh/sliver.json";
/// The file's name in the sliver's dir on the host.
pub const FILE_NAME: &str = "sliver.json";

/// The slice's name.
pub const ENV_SLICE: &str = "PLANETMESH_SLICE";
/// The node's public key, `ed25519/<hex>`.
pub const ENV_NODE: &str = "PLANETMESH_NODE";
/// The node's federation.
pub const ENV_FEDERATION: &str = "PLANETMESH_FEDERATION";
/// The node's site.
pub const ENV_SITE: &str = "PLANETMESH_SITE";
/// The sliver's private address on the node's sliver network.
pub const ENV_ADDRESS: &str = "PLANETMESH_ADDRESS";
/// The node's public address.
pub const ENV_PUBLIC_ADDRESS: &str = "PLANETMESH_PUBLIC_ADDRESS";
/// The sliver's leased public ports, comma-separated.
pub const ENV_PORTS: &str = "PLANETMESH_PORTS";

/// Every variable the node sets; a caller's own of these names never reaches the command.
pub const ENV_NAMES: [&str; 7] = [
    ENV_SLICE,
    ENV_NODE,
    ENV_FEDERATION,
    ENV_SITE,
    ENV_ADDRESS,
    ENV_PUBLIC_ADDRESS,
    ENV_PORTS,
];

/// What a sliver is told, as [`PATH_IN_SLIVER`] holds it (what is unknown is left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliverFacts {
    /// The slice's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slice: Option<String>,
    /// The node's public key, `ed25519/<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The node's federation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<String>,
    /// The node's site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// The sliver's private address.
    pub address: Ipv4Addr,
    /// The node's public address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_address: Option<String>,
    /// The leased public ports (the same numbers inside the sliver).
    #[serde(default)]
    pub ports: Vec<u16>,
}

impl SliverFacts {
    /// The facts of a sliver at `address` that is told `about` (`None`: its address only).
    pub fn of(about: Option<&SliverAbout>, address: Ipv4Addr) -> Self {
        let known = |value: &str| Some(value.to_owned()).filter(|v| !v.is_empty());
        SliverFacts {
            slice: about.and_then(|a| known(&a.slice)),
            node: about.and_then(|a| known(&a.node)),
            federation: about.and_then(|a| known(&a.federation)),
            site: about.and_then(|a| known(&a.site)),
            address,
            public_address: about.and_then(|a| a.public_address.clone()),
            ports: about.map(|a| a.ports.clone()).unwrap_or_default(),
        }
    }

    /// The file's text: pretty JSON, one trailing newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The variables of what is known and fit for a variable (a value with a control
    /// character, which only a damaged record could hold, is left out).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let ports = self
            .ports
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        [
            (ENV_SLICE, self.slice.clone()),
            (ENV_NODE, self.node.clone()),
            (ENV_FEDERATION, self.federation.clone()),
            (ENV_SITE, self.site.clone()),
            (ENV_ADDRESS, Some(self.address.to_string())),
            (ENV_PUBLIC_ADDRESS, self.public_address.clone()),
            (ENV_PORTS, Some(ports)),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .filter(|(_, value)| !value.is_empty() && about_value_fault(value).is_none())
        .collect()
    }
}

/// A command's environment in a sliver: the caller's `given` variables but the node's names,
/// then the node's ([`SliverFacts::env`]).
pub fn command_env(given: &[(String, String)], facts: &SliverFacts) -> Vec<(String, String)> {
    given
        .iter()
        .filter(|(name, _)| !ENV_NAMES.contains(&name.as_str()))
        .cloned()
        .chain(
            facts
                .env()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value)),
        )
        .collect()
}

/// Writes the facts to `path` in place (its inode is bound into the sliver), readable by
/// everyone and writable by the host's root only.
pub fn write(path: &Path, facts: &SliverFacts) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)?;
    file.write_all(facts.to_json().as_bytes())?;
    file.set_permissions(fs::Permissions::from_mode(0o644))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn about() -> SliverAbout {
        SliverAbout {
            slice: "princeton_codeen".into(),
            node: format!("ed25519/{}", "ab".repeat(32)),
            federation: "plc".into(),
            site: "princeton".into(),
            public_address: Some("192.0.2.7".into()),
            ports: vec![40000, 40001],
        }
    }

    const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 1);

    #[test]
    fn the_file_says_everything_known_and_reads_back() {
        let facts = SliverFacts::of(Some(&about()), ADDRESS);
        let text = facts.to_json();
        assert!(text.ends_with("}\n"), "{text}");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "slice": "princeton_codeen",
                "node": format!("ed25519/{}", "ab".repeat(32)),
                "federation": "plc",
                "site": "princeton",
                "address": "10.199.0.1",
                "public_address": "192.0.2.7",
                "ports": [40000, 40001],
            })
        );
        assert_eq!(serde_json::from_str::<SliverFacts>(&text).unwrap(), facts);
    }

    #[test]
    fn a_sliver_told_nothing_knows_its_address() {
        let facts = SliverFacts::of(None, ADDRESS);
        let json: serde_json::Value = serde_json::from_str(&facts.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "address": "10.199.0.1", "ports": [] })
        );
        assert_eq!(facts.env(), [(ENV_ADDRESS, "10.199.0.1".to_owned())]);
    }

    #[test]
    fn variables_are_those_known_with_ports_comma_separated() {
        let facts = SliverFacts::of(Some(&about()), ADDRESS);
        assert_eq!(
            facts.env(),
            [
                (ENV_SLICE, "princeton_codeen".to_owned()),
                (ENV_NODE, format!("ed25519/{}", "ab".repeat(32))),
                (ENV_FEDERATION, "plc".to_owned()),
                (ENV_SITE, "princeton".to_owned()),
                (ENV_ADDRESS, "10.199.0.1".to_owned()),
                (ENV_PUBLIC_ADDRESS, "192.0.2.7".to_owned()),
                (ENV_PORTS, "40000,40001".to_owned()),
            ]
        );
        let private = SliverFacts::of(
            Some(&SliverAbout {
                public_address: None,
                ports: Vec::new(),
                site: String::new(),
                ..about()
            }),
            ADDRESS,
        );
        let names: Vec<&str> = private.env().iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [ENV_SLICE, ENV_NODE, ENV_FEDERATION, ENV_ADDRESS],
            "no public face, no site: not set"
        );
    }

    #[test]
    fn a_value_that_could_forge_a_line_never_becomes_a_variable() {
        let facts = SliverFacts::of(
            Some(&SliverAbout {
                slice: "s\nPLANETMESH_NODE=forged".into(),
                site: "nul\0".into(),
                ..about()
            }),
            ADDRESS,
        );
        let env = facts.env();
        assert!(env.iter().all(|(n, _)| *n != ENV_SLICE && *n != ENV_SITE));
        assert!(
            env.iter()
                .all(|(_, v)| !v.contains('\n') && !v.contains('\0'))
        );
        // In the file, JSON escapes it: still one line per key.
        assert!(facts.to_json().contains(r#""s\nPLANETMESH_NODE=forged""#));
    }

    #[test]
    fn the_callers_variables_stay_but_never_the_nodes_names() {
        let facts = SliverFacts::of(None, ADDRESS);
        let given = vec![
            ("LANG".to_owned(), "C".to_owned()),
            (ENV_NODE.to_owned(), "ed25519/forged".to_owned()),
            (ENV_ADDRESS.to_owned(), "10.0.0.66".to_owned()),
        ];
        assert_eq!(
            command_env(&given, &facts),
            [
                ("LANG".to_owned(), "C".to_owned()),
                (ENV_ADDRESS.to_owned(), "10.199.0.1".to_owned()),
            ]
        );
    }

    #[test]
    fn the_file_is_rewritten_in_place_and_readable_by_all() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        fs::write(
            &path,
            "stale and much longer than what replaces it ...........",
        )
        .unwrap();
        let inode = fs::metadata(&path).unwrap().ino();
        let facts = SliverFacts::of(Some(&about()), ADDRESS);
        write(&path, &facts).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.ino(), inode);
        assert_eq!(meta.mode() & 0o777, 0o644);
        let back: SliverFacts = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, facts);
    }
}
