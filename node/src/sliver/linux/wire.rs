//! A sliver's network wiring and bucket, executed as netlink requests through [`Rtnl`], a
//! seam below [`crate::sliver::host::Host`]: [`crate::sliver::netlink::Netlink`] sends them,
//! and a recording fake checks their order and content without root.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use rtnetlink::packet_route::tc::TcHandle;

use crate::sliver::host::{HostError, NetAttach, NodeShaping, Orphan, OrphanScope, Shape};
use crate::sliver::netlink::{ETH_P_IP, Netlink, NetlinkError, Request, build};

use super::plan;

/// The netlink operations the wiring needs.
pub trait Rtnl {
    /// The index of link `name`, `None` when there is none.
    fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError>;
    /// Sends `req` and waits for its ack.
    fn ack(&mut self, req: Request) -> Result<(), NetlinkError>;
    /// The names of every link whose name starts with `prefix`.
    fn links_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>, NetlinkError>;
    /// The classes on link `index`.
    fn classes(&mut self, index: u32) -> Result<Vec<TcHandle>, NetlinkError>;
    /// Bytes sent so far by each class on link `index`.
    fn class_bytes(&mut self, index: u32) -> Result<Vec<(TcHandle, u64)>, NetlinkError>;
}

impl Rtnl for Netlink {
    fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Netlink::link_index(self, name)
    }

    fn ack(&mut self, req: Request) -> Result<(), NetlinkError> {
        Netlink::ack(self, req)
    }

    fn links_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>, NetlinkError> {
        Netlink::links_with_prefix(self, prefix)
    }

    fn classes(&mut self, index: u32) -> Result<Vec<TcHandle>, NetlinkError> {
        Netlink::classes(self, index)
    }

    fn class_bytes(&mut self, index: u32) -> Result<Vec<(TcHandle, u64)>, NetlinkError> {
        Netlink::class_bytes(self, index)
    }
}

/// Creates the sliver's veth (its peer straight in the namespace of `init_pid`), the host
/// side's address, its sysctls under `proc_root` (see [`plan::veth_sysctls`]), and sets it up.
pub fn attach(
    nl: &mut impl Rtnl,
    proc_root: &Path,
    init_pid: u32,
    net: &NetAttach,
) -> Result<(), HostError> {
    nl.ack(build::veth_create(&net.host_if, &net.sliver_if, init_pid))?;
    let idx = nl
        .link_index(&net.host_if)?
        .ok_or_else(|| HostError::Init(format!("veth {} vanished after creation", net.host_if)))?;
    nl.ack(build::addr_add(idx, net.host_addr, plan::VETH_PREFIX))?;
    // Slivers speak IPv4 only: IPv6 from a sliver would bypass the shaper and the
    // reverse-path filter, so the host side drops it (where the host has IPv6).
    let [(rp, on), (fwd, fwd_on), (v6, off)] = plan::veth_sysctls(proc_root, net);
    for (knob, value) in [(&rp, on), (&fwd, fwd_on)] {
        fs::write(knob, value).map_err(|source| HostError::Io {
            op: "write",
            path: knob.clone(),
            source,
        })?;
    }
    if v6.exists() {
        fs::write(&v6, off).map_err(|source| HostError::Io {
            op: "write",
            path: v6.clone(),
            source,
        })?;
    }
    nl.ack(build::link_up(idx))?;
    Ok(())
}

/// Adds a sliver's bucket under the node's root bucket, its FIFO and classifier on the
/// shaping device, and steers the sliver's egress (from its veth's ingress) into it.
pub fn shape(nl: &mut impl Rtnl, shape: &Shape) -> Result<(), HostError> {
    let ifb = nl
        .link_index(&shape.node.ifb)?
        .ok_or_else(|| HostError::Init(format!("shaping device {} missing", shape.node.ifb)))?;
    let plan = plan::shape(shape);
    nl.ack(build::class_htb(
        ifb,
        plan::ROOT_CLASS,
        plan.classid,
        plan.rate_kbps,
        plan.ceil_kbps,
    ))?;
    nl.ack(build::qdisc_pfifo(
        ifb,
        plan.classid,
        plan.fifo_major,
        plan.fifo_limit,
    ))?;
    nl.ack(build::filter_classify_src(
        ifb,
        plan::ROOT_QDISC,
        plan.filter_prio,
        plan.src,
        plan.classid,
    ))?;
    let veth = nl
        .link_index(&shape.host_if)?
        .ok_or_else(|| HostError::Init(format!("veth {} missing", shape.host_if)))?;
    nl.ack(build::qdisc_ingress(veth))?;
    // The sliver's packets go through the node bucket. Packets with another source are
    // not steered: strict reverse-path filtering on the veth drops them (net_attach).
    nl.ack(build::filter_redirect_src(
        veth,
        plan::REDIRECT_PRIO,
        plan.src,
        ifb,
    ))?;
    Ok(())
}

/// Makes the node's shaping device (an IFB) if absent, sets it up, and gives it the root HTB
/// qdisc (kept if there) and the node's root bucket.
pub fn shaping_setup(nl: &mut impl Rtnl, node: &NodeShaping) -> Result<(), HostError> {
    let idx = match nl.link_index(&node.ifb)? {
        Some(i) => i,
        None => {
            nl.ack(build::ifb_create(&node.ifb))?;
            nl.link_index(&node.ifb)?
                .ok_or_else(|| HostError::Init(format!("ifb {} vanished", node.ifb)))?
        }
    };
    nl.ack(build::link_up(idx))?;
    match nl.ack(build::qdisc_htb(idx, plan::ROOT_QDISC.major, 0)) {
        Ok(()) => {}
        Err(e) if e.errno() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let (rate, ceil) = plan::root_bucket(node);
    nl.ack(build::class_htb(
        idx,
        plan::ROOT_QDISC,
        plan::ROOT_CLASS,
        rate,
        ceil,
    ))?;
    Ok(())
}

/// Deletes link `name` (a sliver's veth, the node's shaping device, an orphaned veth); a link
/// already gone (`ENODEV`) is no error.
pub fn link_remove(nl: &mut impl Rtnl, name: &str) -> Result<(), HostError> {
    match nl.ack(build::link_delete(name)) {
        Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
        r => Ok(r?),
    }
}

/// Removes a sliver's classifier (priority `prio`) and bucket (class `1:minor`) from the
/// shaping device `ifb`; what is already gone (or the device itself) is no error.
pub fn bucket_remove(
    nl: &mut impl Rtnl,
    ifb: &str,
    minor: u16,
    prio: u16,
) -> Result<(), HostError> {
    let Some(idx) = nl.link_index(ifb)? else {
        return Ok(());
    };
    let gone_ok = |r: Result<(), NetlinkError>| match r {
        Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(()),
        r => r,
    };
    gone_ok(nl.ack(build::filter_delete(idx, plan::ROOT_QDISC, prio, ETH_P_IP)))?;
    gone_ok(nl.ack(build::class_delete(idx, plan::sliver_class(minor))))?;
    Ok(())
}

/// The sliver traces in the network: host-side veths (the prefix then a slot number) and
/// buckets on the shaping device (see [`plan::is_sliver_link`], [`plan::is_sliver_class`]).
pub fn traces(nl: &mut impl Rtnl, scope: &OrphanScope) -> Result<Vec<Orphan>, HostError> {
    let mut out = Vec::new();
    for name in nl.links_with_prefix(&scope.ifname_prefix)? {
        if plan::is_sliver_link(&scope.ifname_prefix, &name) {
            out.push(Orphan::Link(name));
        }
    }
    if let Some(ifb) = nl.link_index(&scope.ifb)? {
        for class in nl.classes(ifb)? {
            if plan::is_sliver_class(class) {
                out.push(Orphan::Class(class.minor));
            }
        }
    }
    Ok(out)
}

/// Bytes each sliver bucket (by class minor) on the node's shaping device has sent; the
/// device missing is an error.
pub fn egress_counters(
    nl: &mut impl Rtnl,
    node: &NodeShaping,
) -> Result<BTreeMap<u16, u64>, HostError> {
    let Some(ifb) = nl.link_index(&node.ifb)? else {
        return Err(HostError::Init(format!(
            "shaping device {} missing",
            node.ifb
        )));
    };
    Ok(nl
        .class_bytes(ifb)?
        .into_iter()
        .filter(|(h, _)| plan::is_sliver_class(*h))
        .map(|(h, bytes)| (h.minor, bytes))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::sliver::netlink::encode;

    /// Links by name; every request sent, as its bytes (sequence 1) and what it does.
    #[derive(Default)]
    struct Fake {
        links: BTreeMap<String, u32>,
        sent: Vec<(String, Vec<u8>)>,
        /// Requests (by the start of what they do) the kernel refuses, with the errno.
        refuse: Vec<(&'static str, i32)>,
        /// Classes by link index.
        classes: BTreeMap<u32, Vec<TcHandle>>,
    }

    impl Rtnl for Fake {
        fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
            Ok(self.links.get(name).copied())
        }

        fn ack(&mut self, req: Request) -> Result<(), NetlinkError> {
            let refused = self.refuse.iter().find(|(op, _)| req.op.starts_with(op));
            let result = match refused {
                Some((_, errno)) => Err(NetlinkError::Kernel {
                    op: req.op.clone(),
                    source: std::io::Error::from_raw_os_error(*errno),
                }),
                None => Ok(()),
            };
            if req.op.starts_with("create ifb") {
                self.links.insert("pmifb0".into(), 9);
            }
            // As the kernel does: a link deleted is gone, one not there is ENODEV.
            let result = match req.op.strip_prefix("delete link ") {
                Some(name) if result.is_ok() && self.links.remove(name).is_none() => {
                    Err(NetlinkError::Kernel {
                        op: req.op.clone(),
                        source: std::io::Error::from_raw_os_error(libc::ENODEV),
                    })
                }
                _ => result,
            };
            self.sent.push((req.op, encode(req.msg, req.flags, 1)));
            result
        }

        fn links_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>, NetlinkError> {
            Ok(self
                .links
                .keys()
                .filter(|n| n.starts_with(prefix))
                .cloned()
                .collect())
        }

        fn classes(&mut self, index: u32) -> Result<Vec<TcHandle>, NetlinkError> {
            Ok(self.classes.get(&index).cloned().unwrap_or_default())
        }

        fn class_bytes(&mut self, index: u32) -> Result<Vec<(TcHandle, u64)>, NetlinkError> {
            let classes = self.classes.get(&index).cloned().unwrap_or_default();
            Ok(classes
                .into_iter()
                .map(|h| (h, u64::from(h.minor) * 1000))
                .collect())
        }
    }

    fn bytes(req: Request) -> (String, Vec<u8>) {
        (req.op, encode(req.msg, req.flags, 1))
    }

    fn net() -> NetAttach {
        NetAttach {
            host_if: "pm3".into(),
            sliver_if: "eth0".into(),
            host_addr: Ipv4Addr::new(10, 1, 0, 6),
            sliver_addr: Ipv4Addr::new(10, 1, 0, 7),
        }
    }

    #[test]
    fn attach_creates_addresses_filters_then_raises_the_veth() {
        let proc_root = tempfile::tempdir().unwrap();
        let conf = |family: &str| {
            proc_root
                .path()
                .join("sys/net")
                .join(family)
                .join("conf/pm3")
        };
        fs::create_dir_all(conf("ipv4")).unwrap();
        fs::create_dir_all(conf("ipv6")).unwrap();
        // Written only where the host has it, as procfs does.
        fs::write(conf("ipv6").join("disable_ipv6"), "0").unwrap();
        let mut nl = Fake::default();
        nl.links.insert("pm3".into(), 12);
        attach(&mut nl, proc_root.path(), 4242, &net()).unwrap();
        assert_eq!(
            nl.sent,
            vec![
                bytes(build::veth_create("pm3", "eth0", 4242)),
                bytes(build::addr_add(12, Ipv4Addr::new(10, 1, 0, 6), 31)),
                bytes(build::link_up(12)),
            ]
        );
        let read = |p: std::path::PathBuf| fs::read_to_string(p).unwrap();
        assert_eq!(read(conf("ipv4").join("rp_filter")), "1");
        assert_eq!(read(conf("ipv4").join("forwarding")), "1");
        assert_eq!(read(conf("ipv6").join("disable_ipv6")), "1");
    }

    #[test]
    fn attach_skips_ipv6_where_the_host_has_none_and_fails_on_a_vanished_veth() {
        let proc_root = tempfile::tempdir().unwrap();
        let v4 = proc_root.path().join("sys/net/ipv4/conf/pm3");
        fs::create_dir_all(&v4).unwrap();
        let mut nl = Fake::default();
        nl.links.insert("pm3".into(), 12);
        attach(&mut nl, proc_root.path(), 1, &net()).unwrap();
        assert!(!proc_root.path().join("sys/net/ipv6").exists());
        let mut gone = Fake::default();
        let err = attach(&mut gone, proc_root.path(), 1, &net()).unwrap_err();
        assert!(err.to_string().contains("vanished"), "{err}");
        assert_eq!(gone.sent.len(), 1, "nothing after the create");
    }

    #[test]
    fn a_bucket_is_class_fifo_classifier_then_ingress_redirect() {
        let mut nl = Fake::default();
        nl.links.insert("pmifb0".into(), 9);
        nl.links.insert("pm3".into(), 12);
        let s = Shape {
            node: NodeShaping {
                ifb: "pmifb0".into(),
                node_kbps: 1_000_000,
            },
            host_if: "pm3".into(),
            src: Ipv4Addr::new(10, 1, 0, 7),
            class_minor: 0x13,
            filter_prio: 0x13,
            rate_kbps: 1_000,
            ceil_kbps: 100_000,
        };
        shape(&mut nl, &s).unwrap();
        let class = TcHandle {
            major: 1,
            minor: 0x13,
        };
        let src = Ipv4Addr::new(10, 1, 0, 7);
        assert_eq!(
            nl.sent,
            vec![
                bytes(build::class_htb(
                    9,
                    TcHandle { major: 1, minor: 1 },
                    class,
                    1_000,
                    100_000
                )),
                bytes(build::qdisc_pfifo(9, class, 0x13, 416)),
                bytes(build::filter_classify_src(
                    9,
                    TcHandle { major: 1, minor: 0 },
                    0x13,
                    src,
                    class
                )),
                bytes(build::qdisc_ingress(12)),
                bytes(build::filter_redirect_src(12, 1, src, 9)),
            ]
        );
        let mut no_ifb = Fake::default();
        assert!(shape(&mut no_ifb, &s).is_err());
        assert!(no_ifb.sent.is_empty());
    }

    #[test]
    fn shaping_setup_makes_the_ifb_once_and_keeps_an_existing_root_qdisc() {
        let node = NodeShaping {
            ifb: "pmifb0".into(),
            node_kbps: 1_000_000,
        };
        let mut nl = Fake::default();
        shaping_setup(&mut nl, &node).unwrap();
        let root = TcHandle { major: 1, minor: 0 };
        let root_class = TcHandle { major: 1, minor: 1 };
        assert_eq!(
            nl.sent,
            vec![
                bytes(build::ifb_create("pmifb0")),
                bytes(build::link_up(9)),
                bytes(build::qdisc_htb(9, 1, 0)),
                bytes(build::class_htb(9, root, root_class, 1_000_000, 1_000_000)),
            ]
        );
        // Again, on a node that has it all: no new device, the qdisc's EEXIST is fine.
        nl.sent.clear();
        nl.refuse = vec![("add htb qdisc", libc::EEXIST)];
        shaping_setup(&mut nl, &node).unwrap();
        assert_eq!(nl.sent.len(), 3);
        assert_eq!(nl.sent[0], bytes(build::link_up(9)));
        nl.refuse = vec![("add htb qdisc", libc::EPERM)];
        assert!(shaping_setup(&mut nl, &node).is_err());
    }

    #[test]
    fn a_bucket_goes_filter_first_and_what_is_gone_is_no_error() {
        let mut nl = Fake::default();
        nl.links.insert("pmifb0".into(), 9);
        bucket_remove(&mut nl, "pmifb0", 0x13, 0x13).unwrap();
        let root = TcHandle { major: 1, minor: 0 };
        let class = TcHandle {
            major: 1,
            minor: 0x13,
        };
        assert_eq!(
            nl.sent,
            vec![
                bytes(build::filter_delete(9, root, 0x13, ETH_P_IP)),
                bytes(build::class_delete(9, class)),
            ]
        );
        nl.refuse = vec![("delete", libc::ENOENT)];
        bucket_remove(&mut nl, "pmifb0", 0x13, 0x13).unwrap();
        nl.refuse = vec![("delete class", libc::EBUSY)];
        assert!(bucket_remove(&mut nl, "pmifb0", 0x13, 0x13).is_err());
        let mut no_ifb = Fake::default();
        bucket_remove(&mut no_ifb, "pmifb0", 0x13, 0x13).unwrap();
        assert!(no_ifb.sent.is_empty());
    }

    #[test]
    fn traces_are_slot_numbered_veths_and_buckets_from_0x10() {
        let mut nl = Fake::default();
        for (i, name) in ["pm0", "pm12", "pmifb0", "pmx", "pm", "eth0"]
            .iter()
            .enumerate()
        {
            nl.links
                .insert((*name).into(), u32::try_from(i).unwrap() + 1);
        }
        let h = |major, minor| TcHandle { major, minor };
        nl.classes.insert(
            3,
            vec![h(1, 1), h(1, 0x10), h(1, 0x13), h(2, 0x20), h(1, 0x0f)],
        );
        let scope = OrphanScope {
            cgroup_parent: "planetmesh".into(),
            ifname_prefix: "pm".into(),
            ifb: "pmifb0".into(),
            slivers_dir: "/state/slivers".into(),
        };
        assert_eq!(
            traces(&mut nl, &scope).unwrap(),
            vec![
                Orphan::Link("pm0".into()),
                Orphan::Link("pm12".into()),
                Orphan::Class(0x10),
                Orphan::Class(0x13),
            ]
        );
        nl.links.remove("pmifb0");
        assert_eq!(traces(&mut nl, &scope).unwrap().len(), 2);
    }

    #[test]
    fn egress_counts_sliver_buckets_only_and_needs_the_device() {
        let mut nl = Fake::default();
        let node = NodeShaping {
            ifb: "pmifb0".into(),
            node_kbps: 1_000,
        };
        assert!(egress_counters(&mut nl, &node).is_err());
        nl.links.insert("pmifb0".into(), 9);
        let h = |minor| TcHandle { major: 1, minor };
        nl.classes.insert(9, vec![h(1), h(0x10), h(0x11)]);
        assert_eq!(
            egress_counters(&mut nl, &node).unwrap(),
            BTreeMap::from([(0x10, 16_000), (0x11, 17_000)])
        );
    }

    #[test]
    fn a_link_is_deleted_by_name_and_one_already_gone_is_no_error() {
        let mut nl = Fake::default();
        nl.links.insert("pm3".into(), 12);
        link_remove(&mut nl, "pm3").unwrap();
        assert!(!nl.links.contains_key("pm3"));
        // Gone already (the kernel's ENODEV): no error, as before.
        link_remove(&mut nl, "pm3").unwrap();
        assert_eq!(
            nl.sent,
            vec![
                bytes(build::link_delete("pm3")),
                bytes(build::link_delete("pm3"))
            ]
        );
        nl.links.insert("pmifb0".into(), 9);
        nl.refuse = vec![("delete link", libc::EBUSY)];
        let err = link_remove(&mut nl, "pmifb0").unwrap_err();
        assert!(
            matches!(&err, HostError::Netlink(e) if e.errno() == Some(libc::EBUSY)),
            "{err}"
        );
    }
}
