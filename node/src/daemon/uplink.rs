//! The node's public address (`public_address` in `node.toml`) and the interface that holds
//! it: where slivers' traffic leaves the node, with that address as its source
//! ([`crate::sliver::firewall`]).
//!
//! `"auto"` (the default) takes the interface of the default route and its first IPv4
//! address; an explicit address must be one of the host's; `"off"` keeps every sliver inside
//! the node.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sliver::firewall::{PublicPorts, Uplink};

/// What `public_address` says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PublicAddress {
    /// The address of the default route's interface.
    #[default]
    Auto,
    /// No egress: slivers reach nothing outside the node.
    Off,
    /// This address (it must be one of the host's).
    Address(Ipv4Addr),
}

impl fmt::Display for PublicAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicAddress::Auto => f.write_str("auto"),
            PublicAddress::Off => f.write_str("off"),
            PublicAddress::Address(a) => write!(f, "{a}"),
        }
    }
}

impl FromStr for PublicAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(PublicAddress::Auto),
            "off" => Ok(PublicAddress::Off),
            other => other.parse().map(PublicAddress::Address).map_err(|_| {
                format!("public_address {other:?}: expected \"auto\", \"off\" or an IPv4 address")
            }),
        }
    }
}

impl Serialize for PublicAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The interface of the IPv4 default route in `/proc/net/route`'s text (the first one, as
/// the kernel lists them by preference).
pub fn default_route_device(route_table: &str) -> Option<String> {
    route_table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
        let (iface, dest, mask) = (fields.first()?, fields.get(1)?, fields.get(7)?);
        (*dest == "00000000" && *mask == "00000000").then(|| (*iface).to_owned())
    })
}

/// The host's IPv4 addresses, by interface.
fn host_addresses() -> Result<Vec<(String, Ipv4Addr)>, String> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|e| format!("listing interfaces: {e}"))?;
    Ok(addrs
        .filter_map(|a| {
            let ip = a.address?.as_sockaddr_in()?.ip();
            Some((a.interface_name, ip))
        })
        .collect())
}

/// The uplink `public_address` names on this host (`None` for `off`, or for `auto` on a host
/// without a default route, which is logged).
pub fn resolve(setting: PublicAddress) -> Result<Option<Uplink>, String> {
    let held = |addresses: &[(String, Ipv4Addr)]| {
        addresses
            .iter()
            .map(|(i, a)| format!("{a} on {i}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match setting {
        PublicAddress::Off => Ok(None),
        PublicAddress::Address(address) => {
            let addresses = host_addresses()?;
            let device = addresses
                .iter()
                .find(|(_, a)| *a == address)
                .map(|(i, _)| i.clone())
                .ok_or_else(|| {
                    format!(
                        "public_address {address} is not an address of this host (it has {}): \
                         set public_address to one of them, \"auto\" or \"off\"",
                        held(&addresses)
                    )
                })?;
            Ok(Some(Uplink { device, address }))
        }
        PublicAddress::Auto => {
            let table = std::fs::read_to_string("/proc/net/route")
                .map_err(|e| format!("reading /proc/net/route: {e}"))?;
            let Some(device) = default_route_device(&table) else {
                tracing::warn!(
                    "no default route: slivers get no egress (set public_address in node.toml)"
                );
                return Ok(None);
            };
            let addresses = host_addresses()?;
            let address = addresses
                .iter()
                .find(|(i, _)| *i == device)
                .map(|(_, a)| *a)
                .ok_or_else(|| {
                    format!(
                        "the default route's interface {device} has no IPv4 address: set \
                         public_address in node.toml (this host has {})",
                        held(&addresses)
                    )
                })?;
            Ok(Some(Uplink { device, address }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_is_the_all_zero_destination_and_mask() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth1\t0002FA0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                     eth0\t00000000\t0100FA0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     eth2\t00000000\t0100FA0A\t0003\t0\t0\t9\t00000000\t0\t0\t0\n";
        assert_eq!(default_route_device(table).as_deref(), Some("eth0"));
        assert_eq!(default_route_device("Iface\tDestination\n"), None);
        assert_eq!(default_route_device("garbage"), None);
    }

    #[test]
    fn public_address_reads_auto_off_or_an_address_and_names_what_it_expects() {
        assert_eq!("auto".parse(), Ok(PublicAddress::Auto));
        assert_eq!("off".parse(), Ok(PublicAddress::Off));
        assert_eq!(
            "192.0.2.7".parse(),
            Ok(PublicAddress::Address(Ipv4Addr::new(192, 0, 2, 7)))
        );
        let err = "example.org".parse::<PublicAddress>().unwrap_err();
        assert!(
            err.contains("\"auto\", \"off\" or an IPv4 address"),
            "{err}"
        );
        assert_eq!(
            PublicAddress::Address(Ipv4Addr::LOCALHOST).to_string(),
            "127.0.0.1"
        );
    }

    #[test]
    fn an_address_the_host_does_not_hold_is_refused_with_what_it_holds() {
        let err = resolve(PublicAddress::Address(Ipv4Addr::new(192, 0, 2, 250))).unwrap_err();
        assert!(err.contains("not an address of this host"), "{err}");
        assert!(err.contains("127.0.0.1 on lo"), "{err}");
        let lo = resolve(PublicAddress::Address(Ipv4Addr::LOCALHOST)).unwrap();
        assert_eq!(lo.map(|u| u.device).as_deref(), Some("lo"));
        assert_eq!(resolve(PublicAddress::Off), Ok(None));
    }
}

/// The default `public_ports`: 1,024 ports, one per sliver the node can hold.
pub const DEFAULT_PUBLIC_PORTS: PublicPorts = PublicPorts {
    first: 40000,
    count: 1024,
    per_sliver: 1,
};

/// Reads `public_ports = "first-last"` (both included; at least one port, none below 1024).
pub fn parse_ports(text: &str) -> Result<PublicPorts, String> {
    let bad = |why: &str| {
        format!("public_ports {text:?}: {why} (expected \"first-last\", e.g. \"40000-41023\")")
    };
    let (first, last) = text.trim().split_once('-').ok_or_else(|| bad("no range"))?;
    let first: u16 = first.trim().parse().map_err(|_| bad("not a port number"))?;
    let last: u16 = last.trim().parse().map_err(|_| bad("not a port number"))?;
    if last < first {
        return Err(bad("the range is empty"));
    }
    if first < 1024 {
        return Err(bad("ports below 1024 are the host's services'"));
    }
    let count =
        u16::try_from(u32::from(last) - u32::from(first) + 1).map_err(|_| bad("too many ports"))?;
    // The block size comes from `ports_per_sliver` once the whole config is read.
    Ok(PublicPorts {
        first,
        count,
        per_sliver: 1,
    })
}

/// The serde form of `public_ports`: `"first-last"`.
pub mod ports_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::sliver::firewall::PublicPorts;

    /// Writes `"first-last"`.
    pub fn serialize<S: Serializer>(ports: &PublicPorts, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}-{}", ports.first, ports.last()))
    }

    /// Reads `"first-last"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PublicPorts, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_ports(&text).map_err(serde::de::Error::custom)
    }
}

/// The ports of the node's own listeners (`/tcp/N`, `/udp/N` of its multiaddresses, and its
/// HTTP port) that fall in `ports`, which would be forwarded to slivers instead.
pub fn own_ports_in(ports: &PublicPorts, listen: &[String], http: Option<u16>) -> Vec<u16> {
    let mut own: Vec<u16> = listen
        .iter()
        .flat_map(|addr| {
            let parts: Vec<&str> = addr.split('/').collect();
            parts
                .windows(2)
                .filter(|w| w[0] == "tcp" || w[0] == "udp")
                .filter_map(|w| w[1].parse::<u16>().ok())
                .collect::<Vec<_>>()
        })
        .chain(http)
        .filter(|p| (ports.first..=ports.last()).contains(p))
        .collect();
    own.sort_unstable();
    own.dedup();
    own
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn a_port_range_is_first_to_last_inclusive_and_refused_when_empty_or_low() {
        assert_eq!(
            parse_ports("40000-40009"),
            Ok(PublicPorts {
                first: 40000,
                count: 10,
                per_sliver: 1
            })
        );
        assert_eq!(parse_ports("5000-5000").map(|p| p.count), Ok(1));
        for (text, why) in [
            ("40010-40000", "the range is empty"),
            ("80-90", "below 1024"),
            ("40000", "no range"),
            ("a-b", "not a port number"),
        ] {
            let err = parse_ports(text).unwrap_err();
            assert!(
                err.contains(why) && err.contains("public_ports"),
                "{text}: {err}"
            );
        }
        assert_eq!(DEFAULT_PUBLIC_PORTS.last(), 41023);
    }

    #[test]
    fn the_nodes_own_listeners_in_the_range_are_found() {
        let ports = parse_ports("4000-4010").unwrap();
        let listen = [
            "/ip4/0.0.0.0/tcp/4001".to_owned(),
            "/ip4/0.0.0.0/udp/4001/quic-v1".to_owned(),
            "/ip4/0.0.0.0/tcp/24001".to_owned(),
        ];
        assert_eq!(own_ports_in(&ports, &listen, Some(4010)), [4001, 4010]);
        assert!(own_ports_in(&ports, &listen, Some(9180)).len() == 1);
    }
}
