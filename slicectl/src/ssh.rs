//! SSH into a sliver: `slicectl slice ssh SLICE [NODE]` runs the user's own `ssh` with the
//! node's address and port, the slice as the user name, and the node's host key pinned (a
//! temporary known_hosts file that holds only it), so no first-use prompt is ever trusted.
//! The endpoint and host key come from the node's `Status` answer, over the overlay, which
//! the node's identity key authenticates; `slice status` shows them too.

use std::io::Write;
use std::net::IpAddr;
use std::process::Command;

use broker::acquire::CallError;
use capability_schema::protocol::{NodeRequest, NodeResponse, NodeStatus, SshEndpoint};
use serde_json::{Value, json};

use crate::client::ClientError;
use crate::ops::{Manager, OpError};
use crate::state::LeaseEntry;

/// The program run, unless `PLANETMESH_SSH` names another.
pub const SSH_PROGRAM: &str = "ssh";

/// The alias the pinned host key is filed under (`HostKeyAlias`).
pub const HOST_ALIAS: &str = "planetmesh-node";

/// The address an SSH client reaches `endpoint` of the node of `lease` at: the endpoint's own
/// when it listens on one, else the node's public address, else the first IP address among
/// the node's overlay addresses (`/ip4/a.b.c.d/...`).
pub fn address_of(endpoint: &SshEndpoint, lease: &LeaseEntry) -> Option<String> {
    if let Some(address) = &endpoint.address {
        return Some(address.clone());
    }
    if let Some(public) = &lease.lease.public {
        return Some(public.address.clone());
    }
    lease.addresses.iter().find_map(|a| {
        let mut parts = a.split('/').skip(1);
        match (parts.next(), parts.next()) {
            (Some("ip4" | "ip6"), Some(ip)) => ip
                .parse::<IpAddr>()
                .ok()
                .filter(|ip| !ip.is_unspecified())
                .map(|ip| ip.to_string()),
            _ => None,
        }
    })
}

/// The command line that logs in to `slice` through `endpoint` at `address` (for output).
pub fn command_line(slice: &str, endpoint: &SshEndpoint, address: &str) -> String {
    format!("ssh -p {} {slice}@{address}", endpoint.port)
}

/// What `slice status` says of a node's SSH endpoint: a line, and its JSON.
pub fn describe(status: &NodeStatus, lease: &LeaseEntry) -> Option<(String, Value)> {
    let endpoint = status.ssh.as_ref()?;
    let address = address_of(endpoint, lease);
    let command = address
        .as_deref()
        .map(|a| command_line(&lease.lease.slice, endpoint, a));
    let line = format!(
        "    ssh: {} (host key {})",
        command
            .clone()
            .unwrap_or_else(|| format!("port {}, address unknown", endpoint.port)),
        endpoint.host_key
    );
    let value = json!({
        "address": address,
        "port": endpoint.port,
        "host_key": endpoint.host_key,
        "command": command,
    });
    Some((line, value))
}

/// The arguments given to `ssh`: the pinned key's file, the port and the login, then the
/// user's own arguments (a command, `-L`, ...).
pub fn ssh_args(
    known_hosts: &std::path::Path,
    slice: &str,
    endpoint: &SshEndpoint,
    address: &str,
    extra: &[String],
) -> Vec<String> {
    let mut args = vec![
        "-o".to_owned(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".to_owned(),
        "GlobalKnownHostsFile=/dev/null".to_owned(),
        "-o".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        "-o".to_owned(),
        format!("HostKeyAlias={HOST_ALIAS}"),
        "-p".to_owned(),
        endpoint.port.to_string(),
        format!("{slice}@{address}"),
    ];
    args.extend(extra.iter().cloned());
    args
}

impl Manager {
    /// The lease of `name` on `node` (any form a node argument takes), or its only lease.
    fn ssh_lease(&self, name: &str, node: Option<&str>) -> Result<LeaseEntry, OpError> {
        let leases = self.state.leases(name)?;
        let labels = || {
            leases
                .iter()
                .map(LeaseEntry::label)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match node {
            Some(given) => {
                let key =
                    crate::nodes::resolve(given).map_err(|e| OpError::Usage(format!("{e}")))?;
                leases
                    .iter()
                    .find(|l| l.lease.node == key)
                    .cloned()
                    .ok_or_else(|| {
                        OpError::Usage(format!(
                            "slice {name} has no sliver on {given}; its nodes: {}",
                            labels()
                        ))
                    })
            }
            None => match leases.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err(OpError::Usage(format!(
                    "slice {name} has no sliver: create it, or `slicectl slice sync {name}`"
                ))),
                _ => Err(OpError::Usage(format!(
                    "slice {name} has slivers on several nodes: name one of {}",
                    labels()
                ))),
            },
        }
    }

    /// `slice ssh`: runs `ssh` into the sliver of `name` on `node` with `extra` arguments and
    /// returns its exit status (the remote command's, or 255 when ssh failed).
    pub async fn ssh(
        &self,
        name: &str,
        node: Option<&str>,
        extra: &[String],
    ) -> Result<i32, OpError> {
        let lease = self.ssh_lease(name, node)?;
        let answer = self
            .session
            .node_call(lease.lease.node, &lease.addresses, NodeRequest::Status)
            .await;
        let unreachable = |detail: String| {
            OpError::Client(ClientError::Unreachable {
                party: format!("node {}", lease.label()),
                detail,
            })
        };
        let status = match answer {
            Ok(NodeResponse::Status(status)) => status,
            Ok(other) => return Err(unreachable(format!("answered {other:?} to Status"))),
            Err(CallError::Refused(reply)) => {
                return Err(OpError::Client(ClientError::Refused(reply)));
            }
            Err(e) => return Err(unreachable(e.to_string())),
        };
        let endpoint = status.ssh.clone().ok_or_else(|| {
            OpError::Usage(format!(
                "node {} runs no SSH endpoint (its [ssh] listen is off); use `slicectl slice \
                 exec`, or ask its operator",
                lease.label()
            ))
        })?;
        let address = address_of(&endpoint, &lease).ok_or_else(|| {
            OpError::Usage(format!(
                "node {} tells no address to reach its SSH endpoint at",
                lease.label()
            ))
        })?;
        let mut known_hosts = tempfile::Builder::new()
            .prefix("slicectl-known-hosts-")
            .tempfile()
            .map_err(|e| OpError::Setup(format!("making a temporary known_hosts file: {e}")))?;
        writeln!(known_hosts, "{HOST_ALIAS} {}", endpoint.host_key)
            .map_err(|e| OpError::Setup(format!("writing the temporary known_hosts file: {e}")))?;
        let program = std::env::var("PLANETMESH_SSH").unwrap_or_else(|_| SSH_PROGRAM.to_owned());
        let args = ssh_args(known_hosts.path(), name, &endpoint, &address, extra);
        let status = tokio::task::block_in_place(|| Command::new(&program).args(&args).status())
            .map_err(|e| {
                OpError::Setup(format!(
                    "running {program}: {e} (install the OpenSSH client, or set PLANETMESH_SSH)"
                ))
            })?;
        drop(known_hosts);
        Ok(status.code().unwrap_or(255))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use capability_schema::identity::test_key;
    use capability_schema::{Lease, PublicEndpoint, Signed};

    fn entry(public: Option<&str>, addresses: &[&str]) -> LeaseEntry {
        let node = test_key(1);
        let lease = Lease {
            lease_id: "l".into(),
            ticket_id: "t".into(),
            node: node.public(),
            federation: "plc".into(),
            agent: test_key(3).public(),
            slice: "princeton_x".into(),
            kind: capability_schema::SliceKind::Regular,
            holder: test_key(2).public(),
            resources: Default::default(),
            address: None,
            public: public.map(|a| PublicEndpoint {
                address: a.into(),
                ports: vec![],
            }),
            net: Default::default(),
            start: 0,
            end: 1,
        };
        LeaseEntry {
            signed: Signed::sign(&node, &lease),
            lease,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            site: "princeton".into(),
            ticket_not_after: 0,
        }
    }

    fn endpoint(address: Option<&str>) -> SshEndpoint {
        SshEndpoint {
            address: address.map(Into::into),
            port: 2222,
            host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxX".into(),
        }
    }

    #[test]
    fn the_address_is_the_endpoints_then_the_public_then_the_overlays() {
        let overlay = ["/ip4/0.0.0.0/tcp/4001", "/ip4/192.0.2.7/tcp/4001"];
        let l = entry(Some("198.51.100.1"), &overlay);
        assert_eq!(
            address_of(&endpoint(Some("203.0.113.9")), &l).unwrap(),
            "203.0.113.9"
        );
        assert_eq!(address_of(&endpoint(None), &l).unwrap(), "198.51.100.1");
        let l = entry(None, &overlay);
        assert_eq!(address_of(&endpoint(None), &l).unwrap(), "192.0.2.7");
        assert_eq!(
            address_of(&endpoint(None), &entry(None, &["/dns4/x/tcp/1"])),
            None
        );
    }

    #[test]
    fn ssh_pins_the_host_key_and_passes_the_users_arguments_last() {
        let args = ssh_args(
            std::path::Path::new("/tmp/kh"),
            "princeton_x",
            &endpoint(None),
            "192.0.2.7",
            &["uname".into(), "-a".into()],
        );
        assert!(args.contains(&"UserKnownHostsFile=/tmp/kh".to_owned()));
        assert!(args.contains(&"StrictHostKeyChecking=yes".to_owned()));
        assert!(args.contains(&format!("HostKeyAlias={HOST_ALIAS}")));
        let login = args
            .iter()
            .position(|a| a == "princeton_x@192.0.2.7")
            .unwrap();
        assert_eq!(&args[login - 2..login], ["-p", "2222"]);
        assert_eq!(&args[login + 1..], ["uname", "-a"]);
    }
}
