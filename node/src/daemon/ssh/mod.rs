//! The node's SSH endpoint (issue 18; PlanetLab's `/bin/vsh`, paper §4.2.3): `ssh
//! SLICE@NODE` lands in the slice's sliver on this node.
//!
//! How a connection flows:
//! - [`server`] accepts it if its source and the node hold fewer than their bounds of
//!   connections ([`limits`]), else closes it at once; each connection must authenticate
//!   within `auth_timeout_secs`;
//! - [`session`] authenticates: the user name is the slice's name; the slice must hold an
//!   active, unexpired lease on this node whose sliver is alive, and the client's key must be
//!   among that sliver's authorized keys (`slicectl slice keys`). Every refusal looks the same
//!   to the client (`Permission denied (publickey)`); the node logs why;
//! - each session channel (a command, a shell, the `sftp` subsystem) runs its program inside
//!   the sliver through the very path `Exec` takes (`Host::spawn`: the sliver's namespaces,
//!   cgroup, user, capabilities and seccomp filter), with piped streams or a pty the node
//!   allocates ([`pty`]) as its controlling terminal; output, exit status and signals relay;
//! - `direct-tcpip` channels (local port forwarding) connect to the sliver's own ports from
//!   inside its network namespace only;
//! - the host key is derived from the node's identity key ([`hostkey`]) and told in `Status`
//!   ([`capability_schema::protocol::SshEndpoint`]) so users pin it.

pub mod hostkey;
pub mod limits;
pub mod pty;
pub mod server;
pub mod session;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use server::start;

/// `[ssh]` of node.toml: the SSH endpoint into slivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// Where it listens, `ip:port` (default: off, no endpoint).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Connections open at once in all; more are closed at once (default 64).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections open at once from one source address (default 4).
    #[serde(default = "default_max_per_source")]
    pub max_per_source: usize,
    /// Seconds a connection has to authenticate before it is closed (default 20).
    #[serde(default = "default_auth_timeout")]
    pub auth_timeout_secs: u64,
    /// Session channels (commands, shells, forwards) one connection may hold (default 8).
    #[serde(default = "default_max_channels")]
    pub max_channels: usize,
}

fn default_max_connections() -> usize {
    64
}
fn default_max_per_source() -> usize {
    4
}
fn default_auth_timeout() -> u64 {
    20
}
fn default_max_channels() -> usize {
    8
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            listen: None,
            max_connections: default_max_connections(),
            max_per_source: default_max_per_source(),
            auth_timeout_secs: default_auth_timeout(),
            max_channels: default_max_channels(),
        }
    }
}

impl SshConfig {
    /// Why the section cannot be used as written, if it cannot (its port may not be one
    /// `public_ports` hands to slivers).
    pub fn check(&self, public_ports: &crate::sliver::firewall::PublicPorts) -> Result<(), String> {
        if let Some(listen) = self.listen
            && listen.port() != 0
            && (public_ports.first..=public_ports.last()).contains(&listen.port())
        {
            return Err(format!(
                "[ssh] listen port {} is in public_ports {}-{}: move one of them so no sliver \
                 gets the node's SSH port",
                listen.port(),
                public_ports.first,
                public_ports.last()
            ));
        }
        if self.max_connections == 0 || self.max_per_source == 0 || self.max_channels == 0 {
            return Err(
                "[ssh] max_connections, max_per_source and max_channels must be at least 1".into(),
            );
        }
        if self.auth_timeout_secs == 0 {
            return Err("[ssh] auth_timeout_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// The `[ssh]` lines of the commented default config.
pub const TEMPLATE: &str = r#"
# The SSH endpoint into slivers: `ssh -p PORT SLICE@NODE` lands in the slice's sliver, with
# the keys authorized by `slicectl slice keys`; the host key derives from node.key.
# [ssh]
# listen = "0.0.0.0:2222"            # default: off
# max_connections = 64               # open at once in all
# max_per_source = 4                 # open at once from one address
# auth_timeout_secs = 20
# max_channels = 8                   # sessions and forwards per connection
"#;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sliver::firewall::PublicPorts;

    fn ports() -> PublicPorts {
        crate::daemon::uplink::DEFAULT_PUBLIC_PORTS
    }

    #[test]
    fn the_template_is_the_defaults_and_uncommented_it_parses() {
        let uncommented: String = TEMPLATE
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.starts_with('[') || l.contains(" = "))
            .map(|l| format!("{}\n", l.split(" #").next().unwrap_or(l)))
            .collect();
        let table: toml::Table = toml::from_str(&uncommented).unwrap();
        let config: SshConfig = table["ssh"].clone().try_into().unwrap();
        assert_eq!(config.listen, Some("0.0.0.0:2222".parse().unwrap()));
        assert_eq!(
            SshConfig {
                listen: None,
                ..config
            },
            SshConfig::default()
        );
        config.check(&ports()).unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<SshConfig>("listn = \"0.0.0.0:22\"").is_err());
        let zero = SshConfig {
            max_per_source: 0,
            ..SshConfig::default()
        };
        assert!(zero.check(&ports()).is_err());
        let clash = SshConfig {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], ports().first))),
            ..SshConfig::default()
        };
        let error = clash.check(&ports()).unwrap_err();
        assert!(error.contains("public_ports"), "{error}");
    }
}
