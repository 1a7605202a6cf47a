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
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
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

    fn ack(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<(), NetlinkError> {
        self.request(op, msg, flags | NLM_F_ACK).map(|_| ())
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
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .setns_by_pid(peer_pid)
            .build();
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.ack(
            &format!("create veth {host}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Creates an IFB device (a node-wide egress shaping point).
    pub fn ifb_create(&mut self, name: &str) -> Result<(), NetlinkError> {
        // A queue long enough that TCP through the shaper is not starved by tail drops.
        let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Ifb)
            .name(name.to_string())
            .txqueuelen(1000)
            .build();
        self.ack(
            &format!("create ifb {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Deletes link `name`; `false` when there was none.
    pub fn link_delete(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.ack(
            &format!("delete link {name}"),
            RouteNetlinkMessage::DelLink(msg),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets link `index` up.
    pub fn link_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.ack(
            &format!("set link {index} up"),
            RouteNetlinkMessage::SetLink(msg),
            0,
        )
    }

    /// Adds `addr/prefix` to link `index`.
    pub fn addr_add(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<(), NetlinkError> {
        let msg = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(addr, prefix)
            .build();
        self.ack(
            &format!("add address {addr}/{prefix} to link {index}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Adds a default route via `gateway` on link `index`.
    pub fn default_route(&mut self, index: u32, gateway: Ipv4Addr) -> Result<(), NetlinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(gateway)
            .output_interface(index)
            .build();
        self.ack(
            &format!("add default route via {gateway}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
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
    pub fn qdisc_ingress(&mut self, index: u32) -> Result<(), NetlinkError> {
        let msg = Self::tc(
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
        self.ack(
            &format!("add ingress qdisc to link {index}"),
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Adds (or replaces) the root HTB qdisc `major:` on link `index`.
    pub fn qdisc_htb(
        &mut self,
        index: u32,
        major: u16,
        default_minor: u32,
    ) -> Result<(), NetlinkError> {
        let msg = Self::tc(
            index,
            TcHandle { major, minor: 0 },
            TcHandle::ROOT,
            0,
            "htb",
            htb::qdisc_options(default_minor),
        );
        self.ack(
            &format!("add htb qdisc to link {index}"),
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
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
        let msg = Self::tc(
            index,
            classid,
            parent,
            0,
            "htb",
            htb::class_options(rate_kbps, ceil_kbps),
        );
        self.ack(
            &format!(
                "add htb class {}:{:x} on link {index}",
                classid.major, classid.minor
            ),
            RouteNetlinkMessage::NewTrafficClass(msg),
            NLM_F_CREATE,
        )
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
        let mut msg = Self::tc(
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
        self.ack(
            &format!(
                "add pfifo under {}:{:x} on link {index}",
                parent.major, parent.minor
            ),
            RouteNetlinkMessage::NewQueueDiscipline(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Deletes class `classid` on link `index`; `false` when there was none.
    pub fn class_delete(&mut self, index: u32, classid: TcHandle) -> Result<bool, NetlinkError> {
        let mut msg = TcMessage::default();
        msg.header.index = i32::try_from(index).unwrap_or(i32::MAX);
        msg.header.handle = classid;
        match self.ack(
            &format!(
                "delete class {}:{:x} on link {index}",
                classid.major, classid.minor
            ),
            RouteNetlinkMessage::DelTrafficClass(msg),
            0,
        ) {
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
        &mut self,
        index: u32,
        parent: TcHandle,
        prio: u16,
        src: Ipv4Addr,
        classid: TcHandle,
    ) -> Result<(), NetlinkError> {
        let opts = vec![
            TcOption::U32(TcFilterU32Option::ClassId(classid)),
            TcOption::U32(TcFilterU32Option::Selector(Self::match_src(src))),
        ];
        let msg = Self::tc(
            index,
            TcHandle::UNSPEC,
            parent,
            Self::info(prio, ETH_P_IP),
            "u32",
            opts,
        );
        self.ack(
            &format!("add classify filter {src} on link {index}"),
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// On the ingress of link `index`: redirects IPv4 packets from `src` to link `to`.
    pub fn filter_redirect_src(
        &mut self,
        index: u32,
        prio: u16,
        src: Ipv4Addr,
        to: u32,
    ) -> Result<(), NetlinkError> {
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
            TcOption::U32(TcFilterU32Option::Selector(Self::match_src(src))),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ];
        let msg = Self::tc(
            index,
            TcHandle::UNSPEC,
            TcHandle {
                major: 0xffff,
                minor: 0,
            },
            Self::info(prio, ETH_P_IP),
            "u32",
            opts,
        );
        self.ack(
            &format!("add redirect filter {src} on link {index}"),
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
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
        let mut msg = TcMessage::default();
        msg.header.index = i32::try_from(index).unwrap_or(i32::MAX);
        msg.header.parent = parent;
        msg.header.info = Self::info(prio, protocol);
        match self.ack(
            &format!("delete filter prio {prio} on link {index}"),
            RouteNetlinkMessage::DelTrafficFilter(msg),
            0,
        ) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
