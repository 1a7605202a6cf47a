//! The node's one firewall table: egress NAT, the fence, and per-sliver ICMP limits.
//!
//! A node owns exactly one nftables table of its own (family `inet`, named after its veth
//! prefix, which its claims keep unique in its network namespace) and touches nothing else of
//! the host's firewall. Everything in it matches slivers by their host-side veth names (a
//! wildcard on the node's prefix) and their address pool, so creating or destroying a sliver
//! changes nothing in the table: the hot path stays netlink-only.
//!
//! What the table does (paper §3.2, §3.3):
//! - **Fence.** A packet from a sliver to any address of the node itself (any interface, its
//!   gateway, whatever daemon listens on `0.0.0.0`) is dropped in the `input` hook. A packet
//!   toward a sliver's private address is forwarded only as the reply of a connection the
//!   sliver made, or when the node translated it to that sliver (a leased port): a sliver
//!   never reaches another's private address, on this node or any other.
//! - **Egress.** With an uplink, a sliver's traffic leaves with the node's public address as
//!   its source (SNAT); without one, nothing a sliver sends leaves the node.
//! - **Rate limits.** ICMP echo requests and IPv4 packets with options are limited per
//!   sliver address (a dynamic set keyed by source, so no per-sliver rule is needed).
//!
//! This module only plans: [`Firewall::ruleset`] and [`Firewall::removal`] are `nft -f`
//! scripts, applied atomically by `linux::nft` (the nftables front end).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where slivers' traffic leaves the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uplink {
    /// The interface that holds the public address; forwarding is turned on for it (and for
    /// sliver veths) and nothing else.
    pub device: String,
    /// The node's public address: the source of every packet a sliver sends out.
    pub address: Ipv4Addr,
}

/// The node's range of public ports, in blocks of `per_sliver`: sliver slot `s` owns the
/// block from `first + s * per_sliver`, and a sliver granted `ports = n` leases the first `n`
/// of its block, each forwarded (TCP and UDP) from the node's public address to the same port
/// of the sliver's address. A block follows its slot, so a port is never held by two live
/// slivers, is kept across restarts with the sliver's record, and returns to the range with
/// the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicPorts {
    /// The first port of the range.
    pub first: u16,
    /// How many ports it holds.
    pub count: u16,
    /// The most ports one sliver may lease (the block size).
    pub per_sliver: u16,
}

impl PublicPorts {
    /// How many slivers the range holds blocks for.
    pub fn blocks(&self) -> u32 {
        u32::from(self.count) / u32::from(self.per_sliver.max(1))
    }

    /// The first port of slot `slot`'s block, if the range holds one for it.
    pub fn of_slot(&self, slot: u32) -> Option<u16> {
        if slot >= self.blocks() {
            return None;
        }
        let offset = u16::try_from(slot * u32::from(self.per_sliver.max(1))).ok()?;
        self.first.checked_add(offset)
    }

    /// The ports a sliver in `slot` granted `n` leases (none past its block).
    pub fn leased(&self, slot: u32, n: u32) -> Vec<u16> {
        let Some(start) = self.of_slot(slot) else {
            return Vec::new();
        };
        (0..n.min(u32::from(self.per_sliver)))
            .filter_map(|i| start.checked_add(u16::try_from(i).ok()?))
            .collect()
    }

    /// The last port of the range.
    pub fn last(&self) -> u16 {
        self.first.saturating_add(self.count.saturating_sub(1))
    }
}

/// What the node's operator decides about slivers' networking; the rest of the table follows
/// from the node's veth prefix and pool ([`super::NodeConfig::firewall`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Where egress leaves (`None`: slivers reach nothing outside the node).
    pub uplink: Option<Uplink>,
    /// ICMP echo requests, and packets with IP options, each sliver may send per second.
    pub icmp_per_sec: u32,
    /// The public ports leased to slivers, one each (`None`: nothing reaches a sliver from
    /// outside). Only with an uplink.
    #[serde(default)]
    pub ports: Option<PublicPorts>,
}

/// The node's firewall table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Firewall {
    /// The table's name (family `inet`).
    pub table: String,
    /// Prefix of the node's host-side veth names.
    pub veth_prefix: String,
    /// The sliver address pool.
    pub pool: Ipv4Addr,
    /// Its prefix length.
    pub pool_prefix: u8,
    /// Where egress leaves (`None`: slivers reach nothing outside the node).
    pub uplink: Option<Uplink>,
    /// ICMP echo requests, and packets with IP options, each sliver may send per second.
    pub icmp_per_sec: u32,
    /// Whether the table holds the leased-port map (`leased_ports`: public port → sliver
    /// address, the same port there) and the chains that translate it. Its entries are added
    /// and removed over netlink with each sliver ([`LEASED_PORTS`]); the script declares it
    /// empty.
    pub leases_ports: bool,
    /// Where the node notes what the uplink's forwarding switch was before it turned it on,
    /// to put it back when the table goes (`None`: it is left on).
    #[serde(default)]
    pub forwarding_note: Option<std::path::PathBuf>,
}

/// The name of the leased-port map in the node's table.
pub const LEASED_PORTS: &str = "leased_ports";

/// The default of [`Firewall::icmp_per_sec`]: enough for ping and traceroute, too little to
/// flood anyone.
pub const DEFAULT_ICMP_PER_SEC: u32 = 10;

impl Firewall {
    /// The table of a node whose veths are named `<veth_prefix><slot>`.
    pub fn for_prefix(veth_prefix: &str, pool: Ipv4Addr, pool_prefix: u8) -> Firewall {
        Firewall {
            table: format!("planetmesh_{veth_prefix}"),
            veth_prefix: veth_prefix.to_owned(),
            pool,
            pool_prefix,
            uplink: None,
            icmp_per_sec: DEFAULT_ICMP_PER_SEC,
            leases_ports: false,
            forwarding_note: None,
        }
    }

    /// The `nft -f` script that makes the table as planned, replacing whatever the table held
    /// (the first line makes sure there is one to delete); one transaction.
    pub fn ruleset(&self) -> String {
        let slivers = format!("\"{}*\"", self.veth_prefix);
        let pool = format!("{}/{}", self.pool, self.pool_prefix);
        let rate = self.icmp_per_sec.max(1);
        let mut s = String::new();
        let _ = writeln!(s, "table inet {} {{}}", self.table);
        let _ = writeln!(s, "delete table inet {}", self.table);
        let _ = writeln!(s, "table inet {} {{", self.table);
        for set in ["icmp_senders", "option_senders"] {
            let _ = writeln!(
                s,
                "\tset {set} {{ type ipv4_addr; flags dynamic,timeout; timeout 1m; size 65536; }}"
            );
        }
        let _ = writeln!(s, "\tchain input {{");
        let _ = writeln!(
            s,
            "\t\ttype filter hook input priority filter - 10; policy accept;"
        );
        let _ = writeln!(s, "\t\tiifname {slivers} drop");
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(s, "\tchain forward {{");
        let _ = writeln!(
            s,
            "\t\ttype filter hook forward priority filter - 10; policy accept;"
        );
        let _ = writeln!(s, "\t\tiifname {slivers} ip saddr != {pool} drop");
        let _ = writeln!(
            s,
            "\t\tiifname {slivers} icmp type echo-request update @icmp_senders \
             {{ ip saddr limit rate over {rate}/second burst {rate} packets }} drop"
        );
        let _ = writeln!(
            s,
            "\t\tiifname {slivers} ip hdrlength != 5 update @option_senders \
             {{ ip saddr limit rate over {rate}/second burst {rate} packets }} drop"
        );
        // Translated traffic for a free slot's address must not leave by the uplink.
        let _ = writeln!(
            s,
            "\t\tct status dnat ip daddr {pool} oifname != {slivers} drop"
        );
        let _ = writeln!(
            s,
            "\t\toifname {slivers} ct state established,related accept"
        );
        let _ = writeln!(s, "\t\toifname {slivers} ct status dnat accept");
        let _ = writeln!(s, "\t\toifname {slivers} drop");
        if self.uplink.is_none() {
            let _ = writeln!(s, "\t\tiifname {slivers} drop");
        }
        let _ = writeln!(s, "\t}}");
        if let Some(uplink) = &self.uplink {
            self.write_forwards(&mut s, uplink.address);
            let _ = writeln!(s, "\tchain postrouting {{");
            let _ = writeln!(
                s,
                "\t\ttype nat hook postrouting priority srcnat; policy accept;"
            );
            let _ = writeln!(
                s,
                "\t\tiifname {slivers} ip saddr {pool} snat ip to {}",
                uplink.address
            );
            let _ = writeln!(s, "\t}}");
        }
        let _ = writeln!(s, "}}");
        s
    }

    /// The leased ports' map and the two chains that translate them: packets arriving for the
    /// public address (`prerouting`) and the node's own (`output`).
    fn write_forwards(&self, s: &mut String, public: Ipv4Addr) {
        if !self.leases_ports {
            return;
        }
        let _ = writeln!(
            s,
            "\tmap {LEASED_PORTS} {{ type inet_service : ipv4_addr; }}"
        );
        // `dstnat` (-100) names the priority in prerouting only; output spells it out.
        for (hook, priority) in [("prerouting", "dstnat"), ("output", "-100")] {
            let _ = writeln!(s, "\tchain {hook} {{");
            let _ = writeln!(
                s,
                "\t\ttype nat hook {hook} priority {priority}; policy accept;"
            );
            let _ = writeln!(
                s,
                "\t\tip daddr {public} meta l4proto {{ tcp, udp }} dnat ip to th dport map @leased_ports"
            );
            let _ = writeln!(s, "\t}}");
        }
    }

    /// The `nft -f` script that removes the table (and nothing else); removing a table that
    /// is not there is no error.
    pub fn removal(&self) -> String {
        format!(
            "table inet {t} {{}}\ndelete table inet {t}\n",
            t = self.table
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firewall() -> Firewall {
        Firewall::for_prefix("pm1a2b3v", Ipv4Addr::new(10, 199, 0, 0), 16)
    }

    #[test]
    fn without_an_uplink_slivers_reach_nothing_but_replies() {
        let script = firewall().ruleset();
        assert_eq!(
            script,
            "table inet planetmesh_pm1a2b3v {}\n\
             delete table inet planetmesh_pm1a2b3v\n\
             table inet planetmesh_pm1a2b3v {\n\
             \tset icmp_senders { type ipv4_addr; flags dynamic,timeout; timeout 1m; size 65536; }\n\
             \tset option_senders { type ipv4_addr; flags dynamic,timeout; timeout 1m; size 65536; }\n\
             \tchain input {\n\
             \t\ttype filter hook input priority filter - 10; policy accept;\n\
             \t\tiifname \"pm1a2b3v*\" drop\n\
             \t}\n\
             \tchain forward {\n\
             \t\ttype filter hook forward priority filter - 10; policy accept;\n\
             \t\tiifname \"pm1a2b3v*\" ip saddr != 10.199.0.0/16 drop\n\
             \t\tiifname \"pm1a2b3v*\" icmp type echo-request update @icmp_senders { ip saddr limit rate over 10/second burst 10 packets } drop\n\
             \t\tiifname \"pm1a2b3v*\" ip hdrlength != 5 update @option_senders { ip saddr limit rate over 10/second burst 10 packets } drop\n\
             \t\tct status dnat ip daddr 10.199.0.0/16 oifname != \"pm1a2b3v*\" drop\n\
             \t\toifname \"pm1a2b3v*\" ct state established,related accept\n\
             \t\toifname \"pm1a2b3v*\" ct status dnat accept\n\
             \t\toifname \"pm1a2b3v*\" drop\n\
             \t\tiifname \"pm1a2b3v*\" drop\n\
             \t}\n\
             }\n"
        );
    }

    #[test]
    fn an_uplink_lets_slivers_out_with_the_public_address() {
        let mut fw = firewall();
        fw.uplink = Some(Uplink {
            device: "eth0".into(),
            address: Ipv4Addr::new(192, 0, 2, 7),
        });
        fw.icmp_per_sec = 0;
        let script = fw.ruleset();
        assert!(!script.contains("\t\tiifname \"pm1a2b3v*\" drop\n\t}\n\tchain postrouting"));
        assert!(script.ends_with(
            "\t\toifname \"pm1a2b3v*\" drop\n\
             \t}\n\
             \tchain postrouting {\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tiifname \"pm1a2b3v*\" ip saddr 10.199.0.0/16 snat ip to 192.0.2.7\n\
             \t}\n\
             }\n"
        ));
        // A limit of zero would refuse every ping; the floor is one a second.
        assert!(script.contains("limit rate over 1/second burst 1 packets"));
    }

    #[test]
    fn leased_ports_are_one_map_translated_on_the_public_address_only() {
        let mut fw = firewall();
        fw.uplink = Some(Uplink {
            device: "eth0".into(),
            address: Ipv4Addr::new(192, 0, 2, 7),
        });
        fw.leases_ports = true;
        let script = fw.ruleset();
        for line in [
            "\tmap leased_ports { type inet_service : ipv4_addr; }\n",
            "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\t\tip daddr 192.0.2.7 meta l4proto { tcp, udp } dnat ip to th dport map @leased_ports\n\t}\n",
            "\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tip daddr 192.0.2.7 meta l4proto { tcp, udp } dnat ip to th dport map @leased_ports\n\t}\n",
            "\t\tct status dnat ip daddr 10.199.0.0/16 oifname != \"pm1a2b3v*\" drop\n",
        ] {
            assert!(script.contains(line), "{line} missing from:\n{script}");
        }
        // Without an uplink nothing is forwarded, whatever the ports.
        fw.uplink = None;
        assert!(!fw.ruleset().contains("leased_ports"));
    }

    #[test]
    fn a_port_follows_its_slot_inside_the_range_only() {
        let ports = PublicPorts {
            first: 40000,
            count: 10,
            per_sliver: 4,
        };
        assert_eq!(ports.blocks(), 2, "a partial block is no block");
        assert_eq!(
            (0..3).map(|s| ports.of_slot(s)).collect::<Vec<_>>(),
            [Some(40000), Some(40004), None]
        );
        assert_eq!(ports.leased(1, 2), [40004, 40005]);
        assert_eq!(
            ports.leased(1, 9),
            [40004, 40005, 40006, 40007],
            "never past the block"
        );
        assert_eq!(ports.leased(0, 0), Vec::<u16>::new());
        assert_eq!(ports.leased(2, 1), Vec::<u16>::new());
        assert_eq!(ports.last(), 40009);
        let top = PublicPorts {
            first: 65535,
            count: 2,
            per_sliver: 1,
        };
        assert_eq!(top.of_slot(1), None, "no port past 65535");
    }

    #[test]
    fn removal_touches_the_nodes_table_only() {
        assert_eq!(
            firewall().removal(),
            "table inet planetmesh_pm1a2b3v {}\ndelete table inet planetmesh_pm1a2b3v\n"
        );
    }
}
