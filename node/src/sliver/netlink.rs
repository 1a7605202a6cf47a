//! A small synchronous rtnetlink client: links, addresses, routes, qdiscs, classes, filters.
//!
//! Messages are built with rtnetlink's builders and netlink-packet-route's types and sent on a
//! blocking `NETLINK_ROUTE` socket, one request at a time, each acknowledged. A socket belongs to
//! the network namespace it was opened in, so [`Netlink::open_in`] opens one inside a sliver's
//! namespace (from a short-lived thread that joins it). The daemon never shells out to `ip` or
//! `tc`. HTB attributes come from [`super::htb`].

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption,
    TcActionType, TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror,
    TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr};
use rtnetlink::{AddressMessageBuilder, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::htb;

/// `TCA_OPTIONS`.
const TCA_OPTIONS: u16 = 2;
/// `ETH_P_ALL`.
pub const ETH_P_ALL: u16 = 0x0003;
/// `ETH_P_IP`.
pub const ETH_P_IP: u16 = 0x0800;
/// `ETH_P_IPV6`.
pub const ETH_P_IPV6: u16 = 0x86DD;

/// A netlink failure, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket failed.
    #[error("netlink {op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The cause.
        source: io::Error,
    },
    /// The kernel refused the request.
    #[error("netlink {op}: {source}")]
    Kernel {
        /// What was being done.
        op: String,
        /// The kernel's errno.
        source: io::Error,
    },
    /// A reply could not be decoded.
    #[error("netlink {op}: cannot decode reply: {detail}")]
    Decode {
        /// What was being done.
        op: String,
        /// The decoder's message.
        detail: String,
    },
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A blocking rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetlinkError> {
        let io = |source| NetlinkError::Io {
            op: "open socket".into(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        Ok(Netlink {
            socket,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Opens a socket inside the network namespace `netns` (an open `/proc/<pid>/ns/net`).
    pub fn open_in(netns: &File) -> Result<Self, NetlinkError> {
        let fd = netns
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| NetlinkError::Io {
                op: "dup netns fd".into(),
                source,
            })?;
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetlinkError::Io {
                        op: "setns into sliver netns".into(),
                        source: e.into(),
                    }
                })?;
                Netlink::open()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(NetlinkError::Io {
                    op: "netns thread".into(),
                    source: io::Error::other("panicked"),
                })
            })
        })
    }

    /// Sends one request and collects the messages of its reply, until the ack (or the end of
    /// a dump).
    fn request(
        &mut self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let out = encode(msg, flags, seq);
        self.socket
            .send(&out, 0)
            .map_err(|source| NetlinkError::Io {
                op: op.to_string(),
                source,
            })?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|source| NetlinkError::Io {
                    op: op.to_string(),
                    source,
                })?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| NetlinkError::Decode {
                        op: op.to_string(),
                        detail: e.to_string(),
                    })?;
                let len = usize::try_from(msg.header.length).unwrap_or(usize::MAX);
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(code) => {
                            return Err(NetlinkError::Kernel {
                                op: op.to_string(),
                                source: io::Error::from_raw_os_error(-code.get()),
                            });
                        }
                    },
                    NetlinkPayload::Done(_) if dump => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Sends a request built by [`build`] and waits for its ack.
    pub fn ack(&mut self, req: Request) -> Result<(), NetlinkError> {
        self.request(&req.op, req.msg, req.flags).map(|_| ())
    }

    /// The index of link `name`, `None` when there is none.
    pub fn link_index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.request(
            &format!("get link {name}"),
            RouteNetlinkMessage::GetLink(msg),
            NLM_F_ACK,
        ) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The names of every link whose name starts with `prefix`.
    pub fn links_with_prefix(&mut self, prefix: &str) -> Result<Vec<String>, NetlinkError> {
        let replies = self.request(
            "dump links",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n),
                    _ => None,
                }),
                _ => None,
            })
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    /// Creates a veth pair: `host` here, `peer` directly in the network namespace of `peer_pid`.
    pub fn veth_create(
        &mut self,
        host: &str,
        peer: &str,
        peer_pid: u32,
    ) -> Result<(), NetlinkError> {
        self.ack(build::veth_create(host, peer, peer_pid))
    }

    /// Creates an IFB device (a node-wide egress shaping point).
    pub fn ifb_create(&mut self, name: &str) -> Result<(), NetlinkError> {
        self.ack(build::ifb_create(name))
    }

    /// Deletes link `name`; `false` when there was none.
    pub fn link_delete(&mut self, name: &str) -> Result<bool, NetlinkError> {
        match self.ack(build::link_delete(name)) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets link `index` up.
    pub fn link_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.ack(build::link_up(index))
    }

    /// Adds `addr/prefix` to link `index`.
    pub fn addr_add(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        self.ack(build::addr_add(index, addr, prefix))
    }

    /// Adds a default route via `gateway` on link `index`.
    pub fn default_route(&mut self, index: u32, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        self.ack(build::default_route(index, gateway))
    }

    /// Adds an ingress qdisc (`ffff:`) to link `index`.
    pub fn qdisc_ingress(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.ack(build::qdisc_ingress(index))
    }

    /// Adds (or replaces) the root HTB qdisc `major:` on link `index`.
    pub fn qdisc_htb(
        &mut self,
        index: u32,
        major: u16,
        default_minor: u32,
    ) -> Result<(), NetlinkError> {
        self.ack(build::qdisc_htb(index, major, default_minor))
    }

    /// Adds (or changes) HTB class `classid` under `parent` on link `index`.
    pub fn class_htb(
        &mut self,
        index: u32,
        parent: TcHandle,
        classid: TcHandle,
        rate_kbps: u64,
        ceil_kbps: u64,
    ) -> Result<(), NetlinkError> {
        self.ack(build::class_htb(
            index, parent, classid, rate_kbps, ceil_kbps,
        ))
    }

    /// Adds a packet FIFO of `limit` packets as the leaf qdisc of class `parent`, with handle
    /// `major:`. (A short queue per bucket keeps queueing delay and tail drops fair.)
    pub fn qdisc_pfifo(
        &mut self,
        index: u32,
        parent: TcHandle,
        major: u16,
        limit: u32,
    ) -> Result<(), NetlinkError> {
        self.ack(build::qdisc_pfifo(index, parent, major, limit))
    }

    /// Deletes class `classid` on link `index`; `false` when there was none.
    pub fn class_delete(&mut self, index: u32, classid: TcHandle) -> Result<bool, NetlinkError> {
        match self.ack(build::class_delete(index, classid)) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The classes on link `index` (one dump, for `what`).
    fn dump_classes(
        &mut self,
        index: u32,
        what: &'static str,
    ) -> Result<Vec<TcMessage>, NetlinkError> {
        let mut msg = TcMessage::default();
        msg.header.index = i32::try_from(index).unwrap_or(i32::MAX);
        let replies = self.request(what, RouteNetlinkMessage::GetTrafficClass(msg), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewTrafficClass(t) => Some(t),
                _ => None,
            })
            .collect())
    }

    /// The classes on link `index`, as (major, minor) handles.
    pub fn classes(&mut self, index: u32) -> Result<Vec<TcHandle>, NetlinkError> {
        Ok(self
            .dump_classes(index, "dump classes")?
            .into_iter()
            .map(|t| t.header.handle)
            .collect())
    }

    /// Bytes sent so far by each class on link `index` (the HTB counters: what each bucket
    /// let through, headers included).
    pub fn class_bytes(&mut self, index: u32) -> Result<Vec<(TcHandle, u64)>, NetlinkError> {
        use rtnetlink::packet_route::tc::TcStats2;
        Ok(self
            .dump_classes(index, "dump class counters")?
            .into_iter()
            .map(|t| {
                let bytes = t.attributes.iter().find_map(|a| match a {
                    TcAttribute::Stats2(stats) => stats.iter().find_map(|s| match s {
                        TcStats2::Basic(b) => Some(b.bytes),
                        _ => None,
                    }),
                    _ => None,
                });
                (t.header.handle, bytes.unwrap_or(0))
            })
            .collect())
    }

    /// The filter priorities in use under `parent` on link `index`.
    pub fn filter_prios(&mut self, index: u32, parent: TcHandle) -> Result<Vec<u16>, NetlinkError> {
        let mut msg = TcMessage::default();
        msg.header.index = i32::try_from(index).unwrap_or(i32::MAX);
        msg.header.parent = parent;
        let replies = self.request(
            "dump filters",
            RouteNetlinkMessage::GetTrafficFilter(msg),
            NLM_F_DUMP,
        )?;
        let mut prios: Vec<u16> = replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewTrafficFilter(t) => Some((t.header.info >> 16) as u16),
                _ => None,
            })
            .collect();
        prios.dedup();
        Ok(prios)
    }

    /// Classifies IPv4 packets from `src` on link `index` (qdisc `parent`) into `classid`.
    pub fn filter_classify_src(
        &mut self,
        index: u32,
        parent: TcHandle,
        prio: u16,
        src: Ipv4Addr,
        classid: TcHandle,
    ) -> Result<(), NetlinkError> {
        self.ack(build::filter_classify_src(
            index, parent, prio, src, classid,
        ))
    }

    /// On the ingress of link `index`: redirects IPv4 packets from `src` to link `to`.
    pub fn filter_redirect_src(
        &mut self,
        index: u32,
        prio: u16,
        src: Ipv4Addr,
        to: u32,
    ) -> Result<(), NetlinkError> {
        self.ack(build::filter_redirect_src(index, prio, src, to))
    }

    /// Deletes the filters of `protocol` at `prio` under `parent` on link `index`; `false` when
    /// there were none.
    pub fn filter_delete(
        &mut self,
        index: u32,
        parent: TcHandle,
        prio: u16,
        protocol: u16,
    ) -> Result<bool, NetlinkError> {
        match self.ack(build::filter_delete(index, parent, prio, protocol)) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// One request, built without a socket: what it does (for errors), the message and its flags
/// beyond `NLM_F_REQUEST`.
#[derive(Debug, Clone)]
pub struct Request {
    /// What the request does.
    pub op: String,
    /// The message.
    pub msg: RouteNetlinkMessage,
    /// `NLM_F_*` flags (`NLM_F_REQUEST` is always added).
    pub flags: u16,
}

/// The bytes of `msg` sent as request number `seq` with `flags` (and `NLM_F_REQUEST`).
pub fn encode(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    packet.finalize();
    let mut out = vec![0; packet.buffer_len()];
    packet.serialize(&mut out);
    out
}

/// The requests [`Netlink`] sends, built without a socket (so that their bytes are tested).
pub mod build {
    use super::*;

    /// Creates a veth pair: `host` here, `peer` in the network namespace of `peer_pid`.
    pub fn veth_create(host: &str, peer: &str, peer_pid: u32) -> Request {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_pid(peer_pid)
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        Request {
            op: format!("create veth {host}"),
            msg: RouteNetlinkMessage::NewLink(msg),
            flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        }
    }

    /// Creates an IFB device.
    pub fn ifb_create(name: &str) -> Request {
        // A queue long enough that TCP through the shaper is not starved by tail drops.
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Ifb)
            .name(name.to_string())
            .txqueuelen(1000)
            .build();
        Request {
            op: format!("create ifb {name}"),
            msg: RouteNetlinkMessage::NewLink(msg),
            flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        }
    }

    /// Deletes link `name`.
    pub fn link_delete(name: &str) -> Request {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        Request {
            op: format!("delete link {name}"),
            msg: RouteNetlinkMessage::DelLink(msg),
            flags: NLM_F_ACK,
        }
    }

    /// Sets link `index` up.
    pub fn link_up(index: u32) -> Request {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        Request {
            op: format!("set link {index} up"),
            msg: RouteNetlinkMessage::SetLink(msg),
            flags: NLM_F_ACK,
        }
    }

    /// Adds `addr/prefix` to link `index`.
    pub fn addr_add(index: u32, addr: Ipv4Addr, prefix: u8) -> Request {
        let msg = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(addr, prefix)
            .build();
        Request {
            op: format!("add address {addr}/{prefix} to link {index}"),
            msg: RouteNetlinkMessage::NewAddress(msg),
            flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        }
    }

    /// Adds a default route via `gateway` on link `index`.
    pub fn default_route(index: u32, gateway: Ipv4Addr) -> Request {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(gateway)
            .output_interface(index)
            .build();
        Request {
            op: format!("add default route via {gateway}"),
            msg: RouteNetlinkMessage::NewRoute(msg),
            flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        }
    }

    fn tc(
        index: u32,
        handle: TcHandle,
        parent: TcHandle,
        info: u32,
        kind: &str,
        options: Vec<TcOption>,
    ) -> TcMessage {
        let mut msg = TcMessage::default();
        msg.header.index = i32::try_from(index).unwrap_or(i32::MAX);
        msg.header.handle = handle;
        msg.header.parent = parent;
        msg.header.info = info;
        msg.attributes.push(TcAttribute::Kind(kind.to_string()));
        if !options.is_empty() {
            msg.attributes.push(TcAttribute::Options(options));
        }
        msg
    }

    /// Adds an ingress qdisc (`ffff:`) to link `index`.
    pub fn qdisc_ingress(index: u32) -> Request {
        let msg = tc(
            index,
            TcHandle {
                major: 0xffff,
                minor: 0,
            },
            TcHandle::INGRESS,
            0,
            "ingress",
            vec![],
        );
        Request {
            op: format!("add ingress qdisc to link {index}"),
            msg: RouteNetlinkMessage::NewQueueDiscipline(msg),
            flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        }
    }

    /// Adds the root HTB qdisc `major:` on link `index`.
    pub fn qdisc_htb(index: u32, major: u16, default_minor: u32) -> Request {
        let msg = tc(
            index,
            TcHandle { major, minor: 0 },
            TcHandle::ROOT,
            0,
            "htb",
            htb::qdisc_options(default_minor),
        );
        Request {
            op: format!("add htb qdisc to link {index}"),
            msg: RouteNetlinkMessage::NewQueueDiscipline(msg),
            flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        }
    }

    /// Adds (or changes) HTB class `classid` under `parent` on link `index`.
    pub fn class_htb(
        index: u32,
        parent: TcHandle,
        classid: TcHandle,
        rate_kbps: u64,
        ceil_kbps: u64,
    ) -> Request {
        let msg = tc(
            index,
            classid,
            parent,
            0,
            "htb",
            htb::class_options(rate_kbps, ceil_kbps),
        );
        Request {
            op: format!(
                "add htb class {}:{:x} on link {index}",
                classid.major, classid.minor
            ),
            msg: RouteNetlinkMessage::NewTrafficClass(msg),
            flags: NLM_F_ACK | NLM_F_CREATE,
        }
    }

    /// Adds a packet FIFO of `limit` packets as the leaf qdisc `major:` of class `parent`.
    pub fn qdisc_pfifo(index: u32, parent: TcHandle, major: u16, limit: u32) -> Request {
        let mut msg = tc(
            index,
            TcHandle { major, minor: 0 },
            parent,
            0,
            "pfifo",
            vec![],
        );
        // TCA_OPTIONS of a fifo is a bare struct tc_fifo_qopt, not nested attributes.
        msg.attributes
            .push(TcAttribute::Other(rtnetlink::packet_core::DefaultNla::new(
                TCA_OPTIONS,
                limit.to_ne_bytes().to_vec(),
            )));
        Request {
            op: format!(
                "add pfifo under {}:{:x} on link {index}",
                parent.major, parent.minor
            ),
            msg: RouteNetlinkMessage::NewQueueDiscipline(msg),
            flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        }
    }

    /// Deletes class `classid` on link `index`.
    pub fn class_delete(index: u32, classid: TcHandle) -> Request {
        let mut msg = TcMessage::default();
        msg.header.index = i32::try_from(index).unwrap_or(i32::MAX);
        msg.header.handle = classid;
        Request {
            op: format!(
                "delete class {}:{:x} on link {index}",
                classid.major, classid.minor
            ),
            msg: RouteNetlinkMessage::DelTrafficClass(msg),
            flags: NLM_F_ACK,
        }
    }

    /// A u32 selector matching IPv4 source address `src`.
    fn match_src(src: Ipv4Addr) -> TcU32Selector {
        let mut key = TcU32Key::default();
        key.mask = u32::MAX;
        key.val = u32::from(src);
        key.off = 12;
        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.nkeys = 1;
        sel.keys = vec![key];
        sel
    }

    /// Filter info: priority in the high half, protocol (network order) in the low half.
    fn info(prio: u16, protocol: u16) -> u32 {
        (u32::from(prio) << 16) | u32::from(protocol.to_be())
    }

    /// Classifies IPv4 packets from `src` on link `index` (qdisc `parent`) into `classid`.
    pub fn filter_classify_src(
        index: u32,
        parent: TcHandle,
        prio: u16,
        src: Ipv4Addr,
        classid: TcHandle,
    ) -> Request {
        let opts = vec![
            TcOption::U32(TcFilterU32Option::ClassId(classid)),
            TcOption::U32(TcFilterU32Option::Selector(match_src(src))),
        ];
        let msg = tc(
            index,
            TcHandle::UNSPEC,
            parent,
            info(prio, ETH_P_IP),
            "u32",
            opts,
        );
        Request {
            op: format!("add classify filter {src} on link {index}"),
            msg: RouteNetlinkMessage::NewTrafficFilter(msg),
            flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        }
    }

    /// On the ingress of link `index`: redirects IPv4 packets from `src` to link `to`.
    pub fn filter_redirect_src(index: u32, prio: u16, src: Ipv4Addr, to: u32) -> Request {
        let mut mirror = TcMirror::default();
        mirror.generic = TcActionGeneric::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.tab = 1;
        action.attributes = vec![
            TcActionAttribute::Kind("mirred".to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        let opts = vec![
            TcOption::U32(TcFilterU32Option::Selector(match_src(src))),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ];
        let msg = tc(
            index,
            TcHandle::UNSPEC,
            TcHandle {
                major: 0xffff,
                minor: 0,
            },
            info(prio, ETH_P_IP),
            "u32",
            opts,
        );
        Request {
            op: format!("add redirect filter {src} on link {index}"),
            msg: RouteNetlinkMessage::NewTrafficFilter(msg),
            flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        }
    }

    /// Deletes the filters of `protocol` at `prio` under `parent` on link `index`.
    pub fn filter_delete(index: u32, parent: TcHandle, prio: u16, protocol: u16) -> Request {
        let mut msg = TcMessage::default();
        msg.header.index = i32::try_from(index).unwrap_or(i32::MAX);
        msg.header.parent = parent;
        msg.header.info = info(prio, protocol);
        Request {
            op: format!("delete filter prio {prio} on link {index}"),
            msg: RouteNetlinkMessage::DelTrafficFilter(msg),
            flags: NLM_F_ACK,
        }
    }
}

/// Byte-exact requests. The expected bytes were captured once from the builders, then every
/// field was checked by hand against the kernel's uapi headers (`linux/netlink.h`,
/// `rtnetlink.h`, `if_link.h`, `veth.h`, `if_addr.h`, `pkt_sched.h`, `pkt_cls.h`,
/// `tc_act/tc_mirred.h`); each line names the field. Little-endian hosts (the headers'
/// host-order fields are written as such); sequence number 1.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    /// Bytes from hex, whitespace and `//` comments ignored.
    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .flat_map(str::chars)
            .filter_map(|c| c.to_digit(16))
            .filter_map(|d| u8::try_from(d).ok())
            .collect();
        assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
        digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
    }

    fn bytes(req: Request) -> Vec<u8> {
        encode(req.msg, req.flags, 1)
    }

    const CLASS_1_10: TcHandle = TcHandle {
        major: 1,
        minor: 0x10,
    };

    #[test]
    fn veth_create() {
        let expected = hex("
            64 00 00 00  // nlmsghdr.nlmsg_len 100
            10 00        // nlmsg_type RTM_NEWLINK (16)
            05 06        // nlmsg_flags REQUEST|ACK|EXCL|CREATE (0x605)
            01 00 00 00  // nlmsg_seq
            00 00 00 00  // nlmsg_pid
            00 00 00 00  // ifinfomsg: family AF_UNSPEC, pad, type 0
            00 00 00 00  // ifi_index 0
            00 00 00 00  // ifi_flags
            00 00 00 00  // ifi_change
            08 00 03 00  // nla len 8, IFLA_IFNAME (3)
            70 6d 37 00  // \"pm7\\0\"
            3c 00 12 00  // nla len 60, IFLA_LINKINFO (18)
            09 00 01 00  //   nla len 9, IFLA_INFO_KIND (1)
            76 65 74 68 00 00 00 00  // \"veth\\0\" + pad
            2c 00 02 00  //   nla len 44, IFLA_INFO_DATA (2)
            28 00 01 00  //     nla len 40, VETH_INFO_PEER (1)
            00 00 00 00  00 00 00 00  00 00 00 00  00 00 00 00  // peer's ifinfomsg, zero
            09 00 03 00  //     nla len 9, IFLA_IFNAME (3)
            65 74 68 30 00 00 00 00  // \"eth0\\0\" + pad
            08 00 13 00  //     nla len 8, IFLA_NET_NS_PID (19)
            92 10 00 00  //     pid 4242
        ");
        assert_eq!(bytes(build::veth_create("pm7", "eth0", 4242)), expected);
    }

    #[test]
    fn addr_add() {
        let expected = hex("
            28 00 00 00  // nlmsg_len 40
            14 00 05 06  // RTM_NEWADDR (20), REQUEST|ACK|EXCL|CREATE
            01 00 00 00  00 00 00 00  // seq, pid
            02           // ifaddrmsg.ifa_family AF_INET
            1f           // ifa_prefixlen 31
            00 00        // ifa_flags, ifa_scope
            07 00 00 00  // ifa_index 7
            08 00 01 00  0a 01 00 00  // IFA_ADDRESS (1) 10.1.0.0
            08 00 02 00  0a 01 00 00  // IFA_LOCAL (2) 10.1.0.0
        ");
        assert_eq!(
            bytes(build::addr_add(7, Ipv4Addr::new(10, 1, 0, 0), 31)),
            expected
        );
    }

    #[test]
    fn link_up() {
        let expected = hex("
            20 00 00 00  // nlmsg_len 32
            13 00 05 00  // RTM_SETLINK (19), REQUEST|ACK
            01 00 00 00  00 00 00 00  // seq, pid
            00 00 00 00  // ifinfomsg: family, pad, type
            07 00 00 00  // ifi_index 7
            01 00 00 00  // ifi_flags IFF_UP
            01 00 00 00  // ifi_change IFF_UP
        ");
        assert_eq!(bytes(build::link_up(7)), expected);
    }

    #[test]
    fn qdisc_htb() {
        let expected = hex("
            48 00 00 00  // nlmsg_len 72
            24 00 05 06  // RTM_NEWQDISC (36), REQUEST|ACK|EXCL|CREATE
            01 00 00 00  00 00 00 00  // seq, pid
            00 00 00 00  // tcmsg: family, pad1, pad2
            09 00 00 00  // tcm_ifindex 9
            00 00 01 00  // tcm_handle 1:0
            ff ff ff ff  // tcm_parent TC_H_ROOT
            00 00 00 00  // tcm_info
            08 00 01 00  68 74 62 00  // TCA_KIND (1) \"htb\\0\"
            1c 00 02 00  // nla len 28, TCA_OPTIONS (2)
            18 00 02 00  //   nla len 24, TCA_HTB_INIT (2): struct tc_htb_glob
            03 00 00 00  //   version TC_HTB_PROTOVER 3
            0a 00 00 00  //   rate2quantum 10
            00 00 00 00  //   defcls 0
            00 00 00 00  //   debug
            00 00 00 00  //   direct_pkts
        ");
        assert_eq!(bytes(build::qdisc_htb(9, 1, 0)), expected);
    }

    #[test]
    fn qdisc_ingress() {
        let expected = hex("
            30 00 00 00  // nlmsg_len 48
            24 00 05 06  // RTM_NEWQDISC (36), REQUEST|ACK|EXCL|CREATE
            01 00 00 00  00 00 00 00  // seq, pid
            00 00 00 00  // tcmsg: family, pads
            07 00 00 00  // tcm_ifindex 7
            00 00 ff ff  // tcm_handle ffff:0
            f1 ff ff ff  // tcm_parent TC_H_INGRESS
            00 00 00 00  // tcm_info
            0c 00 01 00  69 6e 67 72 65 73 73 00  // TCA_KIND (1) \"ingress\\0\"
        ");
        assert_eq!(bytes(build::qdisc_ingress(7)), expected);
    }

    #[test]
    fn qdisc_pfifo() {
        let expected = hex("
            38 00 00 00  // nlmsg_len 56
            24 00 05 06  // RTM_NEWQDISC (36), REQUEST|ACK|EXCL|CREATE
            01 00 00 00  00 00 00 00  // seq, pid
            00 00 00 00  // tcmsg: family, pads
            09 00 00 00  // tcm_ifindex 9
            00 00 10 00  // tcm_handle 10:0
            10 00 01 00  // tcm_parent 1:10
            00 00 00 00  // tcm_info
            0a 00 01 00  70 66 69 66 6f 00 00 00  // TCA_KIND (1) \"pfifo\\0\" + pad
            08 00 02 00  // nla len 8, TCA_OPTIONS (2): a bare struct tc_fifo_qopt
            10 00 00 00  // limit 16 packets
        ");
        assert_eq!(bytes(build::qdisc_pfifo(9, CLASS_1_10, 0x10, 16)), expected);
    }

    #[test]
    fn class_htb() {
        let expected = hex("
            60 00 00 00  // nlmsg_len 96
            28 00 05 04  // RTM_NEWTCLASS (40), REQUEST|ACK|CREATE (0x405)
            01 00 00 00  00 00 00 00  // seq, pid
            00 00 00 00  // tcmsg: family, pads
            09 00 00 00  // tcm_ifindex 9
            10 00 01 00  // tcm_handle 1:10
            01 00 01 00  // tcm_parent 1:1
            00 00 00 00  // tcm_info
            08 00 01 00  68 74 62 00  // TCA_KIND (1) \"htb\\0\"
            34 00 02 00  // nla len 52, TCA_OPTIONS (2)
            30 00 01 00  //   nla len 48, TCA_HTB_PARMS (1): struct tc_htb_opt
            00 01 00 00  //   rate: cell_log 0, linklayer TC_LINKLAYER_ETHERNET, overhead 0
            00 00 00 00  //         cell_align 0, mpu 0
            40 42 0f 00  //         rate 1 000 000 B/s (8 Mbit/s)
            00 01 00 00  //   ceil: cell_log 0, linklayer ethernet, overhead 0
            00 00 00 00  //         cell_align 0, mpu 0
            20 bc be 00  //         rate 12 500 000 B/s (100 Mbit/s)
            5a 62 02 00  //   buffer 156250 ticks (10 ms >> PSCHED_SHIFT 6)
            5a 62 02 00  //   cbuffer 156250 ticks
            a0 86 01 00  //   quantum 100000 (rate / 10)
            00 00 00 00  //   level
            00 00 00 00  //   prio
        ");
        assert_eq!(
            bytes(build::class_htb(
                9,
                TcHandle { major: 1, minor: 1 },
                CLASS_1_10,
                8_000,
                100_000
            )),
            expected
        );
    }

    /// `struct tc_u32_sel` with one key matching IPv4 source 10.1.0.1 (the common part of both
    /// filters).
    const SEL_SRC_10_1_0_1: &str = "
            24 00 05 00  // nla len 36, TCA_U32_SEL (5)
            01 00 01 00  //   flags TC_U32_TERMINAL, offshift 0, nkeys 1, pad
            00 00 00 00  //   offmask 0, off 0
            00 00 00 00  //   offoff 0, hoff 0
            00 00 00 00  //   hmask 0
            ff ff ff ff  //   keys[0].mask
            0a 01 00 01  //   keys[0].val 10.1.0.1 (network order)
            0c 00 00 00  //   keys[0].off 12 (the IPv4 source)
            00 00 00 00  //   keys[0].offmask
    ";

    #[test]
    fn filter_classify_src() {
        let expected = hex(&format!(
            "
            5c 00 00 00  // nlmsg_len 92
            2c 00 05 06  // RTM_NEWTFILTER (44), REQUEST|ACK|EXCL|CREATE
            01 00 00 00  00 00 00 00  // seq, pid
            00 00 00 00  // tcmsg: family, pads
            09 00 00 00  // tcm_ifindex 9
            00 00 00 00  // tcm_handle 0
            00 00 01 00  // tcm_parent 1:0
            08 00 10 00  // tcm_info: protocol htons(ETH_P_IP), prio 0x10 in the high half
            08 00 01 00  75 33 32 00  // TCA_KIND (1) \"u32\\0\"
            30 00 02 00  // nla len 48, TCA_OPTIONS (2)
            08 00 01 00  //   nla len 8, TCA_U32_CLASSID (1)
            10 00 01 00  //   1:10
            {SEL_SRC_10_1_0_1}"
        ));
        assert_eq!(
            bytes(build::filter_classify_src(
                9,
                TcHandle { major: 1, minor: 0 },
                0x10,
                Ipv4Addr::new(10, 1, 0, 1),
                CLASS_1_10
            )),
            expected
        );
    }

    #[test]
    fn filter_redirect_src() {
        let expected = hex(&format!(
            "
            8c 00 00 00  // nlmsg_len 140
            2c 00 05 06  // RTM_NEWTFILTER (44), REQUEST|ACK|EXCL|CREATE
            01 00 00 00  00 00 00 00  // seq, pid
            00 00 00 00  // tcmsg: family, pads
            07 00 00 00  // tcm_ifindex 7
            00 00 00 00  // tcm_handle 0
            00 00 ff ff  // tcm_parent ffff:0 (the ingress qdisc)
            08 00 01 00  // tcm_info: protocol htons(ETH_P_IP), prio 1
            08 00 01 00  75 33 32 00  // TCA_KIND (1) \"u32\\0\"
            60 00 02 00  // nla len 96, TCA_OPTIONS (2)
            {SEL_SRC_10_1_0_1}
            38 00 07 00  //   nla len 56, TCA_U32_ACT (7)
            34 00 01 00  //     nla len 52, action 1 (its order)
            0b 00 01 00  //       nla len 11, TCA_ACT_KIND (1)
            6d 69 72 72 65 64 00 00  // \"mirred\\0\" + pad
            24 00 02 80  //       nla len 36, TCA_ACT_OPTIONS (2) | NLA_F_NESTED
            20 00 02 00  //         nla len 32, TCA_MIRRED_PARMS (2): struct tc_mirred
            00 00 00 00  //         tc_gen.index
            00 00 00 00  //         tc_gen.capab
            04 00 00 00  //         tc_gen.action TC_ACT_STOLEN
            00 00 00 00  //         tc_gen.refcnt
            00 00 00 00  //         tc_gen.bindcnt
            01 00 00 00  //         eaction TCA_EGRESS_REDIR
            09 00 00 00  //         ifindex 9 (the IFB)
            "
        ));
        assert_eq!(
            bytes(build::filter_redirect_src(
                7,
                1,
                Ipv4Addr::new(10, 1, 0, 1),
                9
            )),
            expected
        );
    }

    #[test]
    fn ifb_create() {
        let expected = hex("
            40 00 00 00  // nlmsg_len 64
            10 00 05 06  // RTM_NEWLINK (16), REQUEST|ACK|EXCL|CREATE
            01 00 00 00  00 00 00 00  // seq, pid
            00 00 00 00  // ifinfomsg: family AF_UNSPEC, pad, type 0
            00 00 00 00  // ifi_index 0
            00 00 00 00  // ifi_flags
            00 00 00 00  // ifi_change
            0b 00 03 00  // nla len 11, IFLA_IFNAME (3)
            70 6d 69 66 62 30 00 00  // \"pmifb0\\0\" + pad
            08 00 0d 00  // nla len 8, IFLA_TXQLEN (13)
            e8 03 00 00  // 1000 packets
            0c 00 12 00  // nla len 12, IFLA_LINKINFO (18)
            08 00 01 00  //   nla len 8, IFLA_INFO_KIND (1)
            69 66 62 00  //   \"ifb\\0\"
        ");
        assert_eq!(bytes(build::ifb_create("pmifb0")), expected);
    }

    #[test]
    fn link_delete() {
        let expected = hex("
            28 00 00 00  // nlmsg_len 40
            11 00 05 00  // RTM_DELLINK (17), REQUEST|ACK
            01 00 00 00  00 00 00 00  // seq, pid
            00 00 00 00  // ifinfomsg: family, pad, type
            00 00 00 00  // ifi_index 0 (the link is named)
            00 00 00 00  // ifi_flags
            00 00 00 00  // ifi_change
            08 00 03 00  // nla len 8, IFLA_IFNAME (3)
            70 6d 33 00  // \"pm3\\0\"
        ");
        assert_eq!(bytes(build::link_delete("pm3")), expected);
    }

    #[test]
    fn default_route() {
        let expected = hex("
            34 00 00 00  // nlmsg_len 52
            18 00 05 06  // RTM_NEWROUTE (24), REQUEST|ACK|EXCL|CREATE
            01 00 00 00  00 00 00 00  // seq, pid
            02           // rtmsg.rtm_family AF_INET
            00           // rtm_dst_len 0 (the default route)
            00           // rtm_src_len 0
            00           // rtm_tos 0
            fe           // rtm_table RT_TABLE_MAIN (254)
            04           // rtm_protocol RTPROT_STATIC (4)
            00           // rtm_scope RT_SCOPE_UNIVERSE (0)
            01           // rtm_type RTN_UNICAST (1)
            00 00 00 00  // rtm_flags
            08 00 01 00  00 00 00 00  // RTA_DST (1) 0.0.0.0
            08 00 05 00  0a 01 00 06  // RTA_GATEWAY (5) 10.1.0.6
            08 00 04 00  07 00 00 00  // RTA_OIF (4) link 7
        ");
        assert_eq!(
            bytes(build::default_route(7, Ipv4Addr::new(10, 1, 0, 6))),
            expected
        );
    }

    #[test]
    fn class_delete() {
        let expected = hex("
            24 00 00 00  // nlmsg_len 36
            29 00 05 00  // RTM_DELTCLASS (41), REQUEST|ACK
            01 00 00 00  00 00 00 00  // seq, pid
            00 00 00 00  // tcmsg: family, pads
            09 00 00 00  // tcm_ifindex 9
            10 00 01 00  // tcm_handle 1:10
            00 00 00 00  // tcm_parent 0 (the class is named by its handle)
            00 00 00 00  // tcm_info
        ");
        assert_eq!(bytes(build::class_delete(9, CLASS_1_10)), expected);
    }

    #[test]
    fn filter_delete() {
        let expected = hex("
            24 00 00 00  // nlmsg_len 36
            2d 00 05 00  // RTM_DELTFILTER (45), REQUEST|ACK
            01 00 00 00  00 00 00 00  // seq, pid
            00 00 00 00  // tcmsg: family, pads
            09 00 00 00  // tcm_ifindex 9
            00 00 00 00  // tcm_handle 0 (every filter at the priority)
            00 00 01 00  // tcm_parent 1:0
            08 00 10 00  // tcm_info: protocol htons(ETH_P_IP), prio 0x10 in the high half
        ");
        assert_eq!(
            bytes(build::filter_delete(
                9,
                TcHandle { major: 1, minor: 0 },
                0x10,
                ETH_P_IP
            )),
            expected
        );
    }
}
