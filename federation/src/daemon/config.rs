//! What every daemon's config has in common, typed and defaulted in one place.
//!
//! [`CommonConfig`] is flattened into `node.toml`, `agent.toml` and `broker.toml`; its defaults
//! differ per daemon only through [`DaemonKind`] (key file, ports), so each default is written
//! once: the field's doc comment, its default function and the template text
//! ([`CommonConfig::template`]) all live here. [`load`] reads a daemon's config with one error
//! type ([`ConfigError`]) and refuses unknown fields: serde cannot `deny_unknown_fields`
//! through a flattened struct, so a key the parsed config does not write back is refused by
//! name.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use capability_schema::Role;
use libp2p::Multiaddr;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::TrustedFederation;
use crate::overlay::{NatConfig, RelayConfig};

/// What differs between daemons in their common settings.
pub trait DaemonKind: Send + Sync + 'static {
    /// The program's name (`nodemgr`, `agentd`, `broker`), for messages.
    const PROGRAM: &'static str;
    /// The role its membership certificate names.
    const ROLE: Role;
    /// The default key file name.
    const KEY_FILE: &'static str;
    /// The default libp2p TCP port.
    const PORT: u16;
    /// The default HTTP port on loopback.
    const HTTP_PORT: u16;
    /// Default requests handled at once in each lane.
    const MAX_IN_FLIGHT: usize;
}

/// A failure reading a daemon's config.
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
    /// The TOML is not this daemon's config (with the line, from the parser).
    #[error("config {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Fields this daemon does not know.
    #[error("config {path}: unknown field{} {}: not a setting of {program} (see `{program} init` for every field)", if fields.len() == 1 { "" } else { "s" }, fields.join(", "))]
    Unknown {
        /// The file.
        path: PathBuf,
        /// The program.
        program: &'static str,
        /// The fields, as written.
        fields: Vec<String>,
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

/// The settings every daemon has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct CommonConfig<K: DaemonKind> {
    /// The daemon's key file (0600; `init` makes it).
    #[serde(default = "default_key_file::<K>")]
    pub key_file: PathBuf,
    /// The federation this daemon belongs to.
    pub federation: String,
    /// Its membership certificate (CBOR, from `fedctl certify`; default `membership.cbor`).
    #[serde(default = "default_membership")]
    pub membership: PathBuf,
    /// Federation authorities it trusts (its own at least).
    #[serde(default)]
    pub trust: Vec<TrustedFederation>,
    /// libp2p listen addresses (default `/ip4/0.0.0.0/tcp/<port>`; a `/udp/PORT/quic-v1`
    /// address listens on QUIC).
    #[serde(default = "default_listen::<K>")]
    pub listen: Vec<Multiaddr>,
    /// Peers to join through (multiaddresses, ideally with `/p2p/<peer id>`).
    #[serde(default)]
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network by multicast DNS (default off).
    #[serde(default)]
    pub mdns: bool,
    /// HTTP status and metrics endpoint (default `127.0.0.1:<http port>`; `"off"` or `""`:
    /// none).
    #[serde(default = "default_http::<K>", with = "optional_addr")]
    pub http: Option<SocketAddr>,
    /// Requests handled at once in each lane; one principal may hold a quarter of them.
    #[serde(default = "default_max_in_flight::<K>")]
    pub max_in_flight: usize,
    /// Revocation lists to apply from the start and hand to peers (CBOR files from `fedctl
    /// revoke`; default none). Newer lists arrive over the overlay without a restart.
    #[serde(default)]
    pub revocations: Vec<PathBuf>,
    /// `[relay]`: serve as a relay for peers behind NAT, within bounds (default: on, with
    /// [`RelayConfig::default`]'s limits; a daemon behind NAT never serves).
    #[serde(default)]
    pub relay: RelayConfig,
    /// `[nat]`: this daemon behind NAT: `behind_nat`, the `relays` to reserve on, AutoNAT
    /// (default: [`NatConfig::default`]).
    #[serde(default)]
    pub nat: NatConfig,
    #[serde(skip)]
    kind: PhantomData<K>,
}

fn default_key_file<K: DaemonKind>() -> PathBuf {
    K::KEY_FILE.into()
}
fn default_membership() -> PathBuf {
    "membership.cbor".into()
}
fn default_listen<K: DaemonKind>() -> Vec<Multiaddr> {
    let text = format!("/ip4/0.0.0.0/tcp/{}", K::PORT);
    text.parse().map(|a| vec![a]).unwrap_or_default()
}
fn default_http<K: DaemonKind>() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], K::HTTP_PORT)))
}
fn default_max_in_flight<K: DaemonKind>() -> usize {
    K::MAX_IN_FLIGHT
}

/// `http`: an address, or `"off"` / `""` for none.
mod optional_addr {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        addr: &Option<SocketAddr>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "" | "off" => Ok(None),
            addr => addr.parse().map(Some).map_err(|_| {
                serde::de::Error::custom(format!(
                    "http {addr:?}: expected an address such as 127.0.0.1:9180, or \"off\""
                ))
            }),
        }
    }
}

impl<K: DaemonKind> CommonConfig<K> {
    /// The settings with every default, for `federation`.
    pub fn new(federation: impl Into<String>) -> Self {
        CommonConfig {
            key_file: default_key_file::<K>(),
            federation: federation.into(),
            membership: default_membership(),
            trust: Vec::new(),
            listen: default_listen::<K>(),
            bootstrap: Vec::new(),
            mdns: false,
            http: default_http::<K>(),
            max_in_flight: K::MAX_IN_FLIGHT,
            revocations: Vec::new(),
            relay: RelayConfig::default(),
            nat: NatConfig::default(),
            kind: PhantomData,
        }
    }

    /// Makes relative paths relative to `dir` (the config file's directory) and checks values.
    pub fn resolve(&mut self, dir: &Path) -> Result<(), String> {
        if self.key_file.is_relative() {
            self.key_file = dir.join(&self.key_file);
        }
        if self.membership.is_relative() {
            self.membership = dir.join(&self.membership);
        }
        for path in &mut self.revocations {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
        if self.max_in_flight == 0 {
            return Err("max_in_flight must be at least 1".into());
        }
        if self.federation.trim().is_empty() {
            return Err("federation must name this daemon's federation".into());
        }
        self.relay.check()?;
        self.nat.check()?;
        Ok(())
    }

    /// The commented `[[trust]]` section of the template; a daemon's template puts its
    /// sections after all its top-level settings, so any of them can be uncommented in place.
    pub fn trust_template(federation: &str) -> String {
        format!(
            "# Federation authorities this daemon trusts (its own at least):\n\
             # [[trust]]\n\
             # name = \"{federation}\"\n\
             # authority = \"ed25519/...\"\n"
        )
    }

    /// The commented template of these top-level settings that `init` writes (defaults
    /// shown, the federation filled in); [`CommonConfig::trust_template`] is its section.
    pub fn template(federation: &str) -> String {
        format!(
            "# The federation this {program} belongs to.\n\
             federation = \"{federation}\"\n\
             \n\
             # key_file = \"{key}\"{pad_key}# this daemon's key (0600)\n\
             # membership = \"membership.cbor\"   # from: fedctl certify --role {role} --subject <this key>\n\
             \n\
             # listen = [\"/ip4/0.0.0.0/tcp/{port}\"]  # add \"/ip4/0.0.0.0/udp/{port}/quic-v1\" for QUIC\n\
             # bootstrap = []                     # multiaddresses with /p2p/<peer id>\n\
             # mdns = false                       # discover peers on the local network by multicast DNS;\n\
             #                                    # off by default, turn on for a LAN testbed\n\
             # http = \"127.0.0.1:{http}\"          # status and /metrics (\"off\" = none)\n\
             # max_in_flight = {inflight}                 # requests at once per lane; a principal holds a quarter\n\
             # revocations = []                   # revocation lists (fedctl revoke) to apply at start\n",
            program = K::PROGRAM,
            key = K::KEY_FILE,
            pad_key = " ".repeat(20usize.saturating_sub(K::KEY_FILE.len())),
            role = K::ROLE,
            port = K::PORT,
            http = K::HTTP_PORT,
            inflight = K::MAX_IN_FLIGHT,
        )
    }
}

/// Reads the daemon config `T` of program `program` from `path`, refusing unknown fields.
pub fn load<T: Serialize + DeserializeOwned>(
    path: &Path,
    program: &'static str,
) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path, program)
}

/// Parses config text (`path` names it in errors). A top-level key is unknown when the
/// config, once read, does not write it back: serde drops what no field (flattened ones
/// included) took.
pub fn parse<T: Serialize + DeserializeOwned>(
    text: &str,
    path: &Path,
    program: &'static str,
) -> Result<T, ConfigError> {
    let parse_error = |e: &dyn std::fmt::Display| ConfigError::Parse {
        path: path.to_path_buf(),
        detail: e.to_string().trim_end().to_owned(),
    };
    let toml_error = |e: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        detail: toml_detail(text, &e),
    };
    let config: T = toml::from_str(text).map_err(toml_error)?;
    let given: toml::Table = toml::from_str(text).map_err(toml_error)?;
    let known = toml::Table::try_from(&config).map_err(|e| parse_error(&e))?;
    let unknown: Vec<String> = given
        .keys()
        .filter(|k| !known.contains_key(*k))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(ConfigError::Unknown {
            path: path.to_path_buf(),
            program,
            fields: unknown,
        });
    }
    Ok(config)
}

/// A TOML error on one line: `line L, column C: <what>` when the error points at one line
/// (an error about a flattened section points at the whole file: then only what is wrong).
fn toml_detail(text: &str, error: &toml::de::Error) -> String {
    let what = error
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match error.span() {
        Some(span) if text.get(span.clone()).is_some_and(|s| !s.contains('\n')) => {
            let before = &text[..span.start];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
            format!("line {line}, column {column}: {what}")
        }
        _ => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct TestKind;
    impl DaemonKind for TestKind {
        const PROGRAM: &'static str = "testd";
        const ROLE: Role = Role::Agent;
        const KEY_FILE: &'static str = "test.key";
        const PORT: u16 = 4999;
        const HTTP_PORT: u16 = 9199;
        const MAX_IN_FLIGHT: usize = 8;
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct TestConfig {
        #[serde(flatten)]
        common: CommonConfig<TestKind>,
        #[serde(default)]
        own: u32,
    }

    fn parse_text(text: &str) -> Result<TestConfig, ConfigError> {
        parse(text, Path::new("test.toml"), "testd")
    }

    #[test]
    fn defaults_come_from_the_kind() {
        let c = parse_text("federation = \"plc\"\n").unwrap();
        assert_eq!(c.common, CommonConfig::new("plc"));
        assert_eq!(c.common.key_file, PathBuf::from("test.key"));
        assert_eq!(c.common.listen[0].to_string(), "/ip4/0.0.0.0/tcp/4999");
        assert_eq!(c.common.http, Some("127.0.0.1:9199".parse().unwrap()));
        assert_eq!(c.common.max_in_flight, 8);
        assert!(c.common.revocations.is_empty());
        assert_eq!(c.own, 0);
        let c = parse_text("federation = \"plc\"\nrevocations = [\"rev.cbor\"]\n").unwrap();
        assert_eq!(c.common.revocations, [PathBuf::from("rev.cbor")]);
    }

    #[test]
    fn values_are_typed_and_http_can_be_off() {
        let c = parse_text(
            "federation = \"plc\"\nown = 3\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nhttp = \"off\"\n\
             bootstrap = [\"/ip4/10.0.0.1/tcp/4001\"]\nmdns = true\n",
        )
        .unwrap();
        assert_eq!(c.own, 3);
        assert_eq!(c.common.http, None);
        assert!(c.common.mdns);
        assert_eq!(c.common.bootstrap.len(), 1);
        assert_eq!(
            parse_text("federation = \"plc\"\nhttp = \"\"\n")
                .unwrap()
                .common
                .http,
            None
        );
        let bad = parse_text("federation = \"plc\"\nlisten = [\"not an address\"]\n").unwrap_err();
        assert!(matches!(bad, ConfigError::Parse { .. }), "{bad}");
        let bad = parse_text("federation = \"plc\"\nhttp = \"localhost\"\n").unwrap_err();
        assert!(bad.to_string().contains("expected an address"), "{bad}");
        // One line (a command-line error is one), pointing at the line when it can.
        for text in [
            "federation = \"plc\"\nlisten = 5\n",
            "federation = \"plc\"\nmdns = \"yes\"\n",
            "federation = \"plc\"\nmdns = = 1\n",
        ] {
            let bad = parse_text(text).unwrap_err().to_string();
            assert!(!bad.contains('\n'), "{bad}");
            assert!(bad.starts_with("config test.toml: "), "{bad}");
        }
        let bad = parse_text("federation = \"plc\"\nmdns = = 1\n").unwrap_err();
        assert!(bad.to_string().contains("line 2, column "), "{bad}");
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let e = parse_text("federation = \"plc\"\nlisten_addr = []\nconcurency = 3\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "config test.toml: unknown fields concurency, listen_addr: not a setting of testd \
             (see `testd init` for every field)"
        );
    }

    #[test]
    fn the_template_parses_to_the_defaults_and_each_line_uncomments_alone() {
        let template = CommonConfig::<TestKind>::template("plc");
        let c = parse_text(&template).unwrap();
        assert_eq!(c.common, CommonConfig::new("plc"));
        let lines: Vec<&str> = template.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(setting) = line.strip_prefix("# ") else {
                continue;
            };
            if !setting.contains(" = ")
                || setting.starts_with("name")
                || setting.starts_with("authority")
            {
                continue;
            }
            let mut text = lines.clone();
            text[i] = setting;
            let c = parse_text(&text.join("\n"))
                .unwrap_or_else(|e| panic!("uncommenting {setting:?}: {e}"));
            assert_eq!(c.common, CommonConfig::new("plc"), "{setting}");
        }
    }

    #[test]
    fn sections_come_after_every_setting() {
        let template = format!(
            "{}\n{}",
            CommonConfig::<TestKind>::template("plc"),
            CommonConfig::<TestKind>::trust_template("plc")
        );
        crate::testing::check_sections_last(&template);
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let mut c = CommonConfig::<TestKind>::new("plc");
        c.revocations = vec!["rev.cbor".into(), "/var/rev2.cbor".into()];
        c.resolve(Path::new("/etc/pm")).unwrap();
        assert_eq!(c.key_file, PathBuf::from("/etc/pm/test.key"));
        assert_eq!(c.membership, PathBuf::from("/etc/pm/membership.cbor"));
        assert_eq!(
            c.revocations,
            [PathBuf::from("/etc/pm/rev.cbor"), "/var/rev2.cbor".into()]
        );
        c.max_in_flight = 0;
        assert!(c.resolve(Path::new("/")).is_err());
    }
}
