//! Adds and removes the entries of the node's leased-port map (`port : sliver address`) over
//! nftables' netlink interface, so a sliver's create and destroy never start the `nft` program
//! (which costs milliseconds): one batch of three messages, one acknowledgement.
//!
//! Only this one message kind is spoken, encoded by hand from the kernel's uapi headers
//! (`linux/netlink.h`, `linux/netfilter/nfnetlink.h`, `linux/netfilter/nf_tables.h`); the
//! encoding is pinned byte for byte by a test, and its effect by `node/tests/network_root.rs`.

use std::net::Ipv4Addr;

use rtnetlink::sys::protocols::NETLINK_NETFILTER;
use rtnetlink::sys::{Socket, SocketAddr};

use super::super::host::HostError;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

/// Whether the entries go in or out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Add them (an identical entry already there is no error).
    Add,
    /// Remove them.
    Remove,
}

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + (4 - len % 4) % 4, 0);
}

fn nested(out: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    fill(&mut inner);
    attr(out, kind | NLA_F_NESTED, &inner);
}

fn message(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, resource id (big-endian).
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    out
}

/// The batch that makes `change` to map `set` of table `table` (family `inet`): batch begin
/// (`seq`), the set-element message (`seq + 1`, acknowledged), batch end (`seq + 2`).
pub(super) fn encode(
    table: &str,
    set: &str,
    change: Change,
    entries: &[(u16, Ipv4Addr)],
    seq: u32,
) -> Vec<u8> {
    let mut attrs = Vec::new();
    attr(
        &mut attrs,
        NFTA_SET_ELEM_LIST_TABLE,
        &[table.as_bytes(), &[0]].concat(),
    );
    attr(
        &mut attrs,
        NFTA_SET_ELEM_LIST_SET,
        &[set.as_bytes(), &[0]].concat(),
    );
    nested(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
        for (port, address) in entries {
            nested(list, NFTA_LIST_ELEM, |elem| {
                nested(elem, NFTA_SET_ELEM_KEY, |key| {
                    attr(key, NFTA_DATA_VALUE, &port.to_be_bytes());
                });
                if change == Change::Add {
                    nested(elem, NFTA_SET_ELEM_DATA, |data| {
                        attr(data, NFTA_DATA_VALUE, &address.octets());
                    });
                }
            });
        }
    });
    let (kind, flags) = match change {
        Change::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
        Change::Remove => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
    };
    let mut batch = message(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    batch.extend(message(
        (NFNL_SUBSYS_NFTABLES << 8) | kind,
        flags,
        seq.wrapping_add(1),
        NFPROTO_INET,
        0,
        &attrs,
    ));
    batch.extend(message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq.wrapping_add(2),
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    ));
    batch
}

/// The errno of the first error acknowledgement in `reply` (0: a clean ack), if it has one.
fn ack_errno(reply: &[u8]) -> Option<i32> {
    let mut at = 0;
    while at + 20 <= reply.len() {
        let len = u32::from_ne_bytes(reply[at..at + 4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(reply[at + 4..at + 6].try_into().ok()?);
        if kind == NLMSG_ERROR {
            let error = i32::from_ne_bytes(reply[at + 16..at + 20].try_into().ok()?);
            return Some(-error);
        }
        if len < 16 {
            return None;
        }
        at += (len + 3) & !3;
    }
    None
}

/// Makes `change` to the node's map in the calling thread's network namespace.
pub(super) fn apply(
    table: &str,
    set: &str,
    change: Change,
    entries: &[(u16, Ipv4Addr)],
) -> Result<(), HostError> {
    if entries.is_empty() {
        return Ok(());
    }
    let fail = |what: &str, e: std::io::Error| {
        HostError::Firewall(format!("{what} the leased ports of table {table}: {e}"))
    };
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| fail("opening netlink for", e))?;
    socket
        .bind_auto()
        .map_err(|e| fail("binding netlink for", e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| fail("connecting netlink for", e))?;
    let batch = encode(table, set, change, entries, 1);
    socket.send(&batch, 0).map_err(|e| fail("sending", e))?;
    let mut reply = vec![0u8; 8192];
    let n = socket
        .recv(&mut &mut reply[..], 0)
        .map_err(|e| fail("reading the answer on", e))?;
    match ack_errno(&reply[..n]) {
        Some(0) => Ok(()),
        // Removing what is gone already leaves what was wanted.
        Some(libc::ENOENT) if change == Change::Remove => Ok(()),
        Some(errno) => Err(HostError::Firewall(format!(
            "the kernel refused a change to the leased ports of table {table}: {}",
            std::io::Error::from_raw_os_error(errno)
        ))),
        None => Err(HostError::Firewall(format!(
            "no acknowledgement for the leased ports of table {table}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(len: u32, kind: u16, flags: u16, seq: u32) -> Vec<u8> {
        [
            &len.to_ne_bytes()[..],
            &kind.to_ne_bytes(),
            &flags.to_ne_bytes(),
            &seq.to_ne_bytes(),
            &0u32.to_ne_bytes(),
        ]
        .concat()
    }

    fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
        let len = 4 + value.len() as u16;
        let mut v = [&len.to_ne_bytes()[..], &kind.to_ne_bytes(), value].concat();
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn an_add_is_begin_newsetelem_end_with_port_and_address_in_network_order() {
        let bytes = encode(
            "planetmesh_pmv",
            "leased_ports",
            Change::Add,
            &[(40001, Ipv4Addr::new(10, 199, 0, 3))],
            7,
        );
        // Written out from the uapi headers, field by field.
        let key = nla(0x8001, &nla(1, &[0x9c, 0x41]));
        let data = nla(0x8002, &nla(1, &[10, 199, 0, 3]));
        let elem = nla(0x8001, &[key, data].concat());
        let attrs = [
            nla(1, b"planetmesh_pmv\0"),
            nla(2, b"leased_ports\0"),
            nla(0x8003, &elem),
        ]
        .concat();
        let begin = [hdr(20, 0x10, 0x1, 7), vec![0, 0, 0, 10]].concat();
        let newsetelem = [
            hdr(20 + attrs.len() as u32, 0x0a0c, 0x405, 8),
            vec![1, 0, 0, 0],
            attrs,
        ]
        .concat();
        let end = [hdr(20, 0x11, 0x1, 9), vec![0, 0, 0, 10]].concat();
        assert_eq!(bytes, [begin, newsetelem, end].concat());
    }

    #[test]
    fn a_removal_names_keys_only_and_asks_no_create() {
        let bytes = encode(
            "t",
            "s",
            Change::Remove,
            &[(40000, Ipv4Addr::new(10, 0, 0, 1))],
            1,
        );
        let middle = &bytes[20..bytes.len() - 20];
        assert_eq!(u16::from_ne_bytes([middle[4], middle[5]]), 0x0a0e);
        assert_eq!(u16::from_ne_bytes([middle[6], middle[7]]), 0x5);
        assert!(
            !middle.windows(4).any(|w| w == [10, 0, 0, 1]),
            "no data in a removal"
        );
    }

    #[test]
    fn acknowledgements_are_read_as_errnos() {
        let ack = |error: i32| {
            [
                hdr(36, NLMSG_ERROR, 0, 2),
                error.to_ne_bytes().to_vec(),
                vec![0; 16],
            ]
            .concat()
        };
        assert_eq!(ack_errno(&ack(0)), Some(0));
        assert_eq!(ack_errno(&ack(-libc::ENOENT)), Some(libc::ENOENT));
        assert_eq!(ack_errno(&[0; 8]), None);
    }
}
