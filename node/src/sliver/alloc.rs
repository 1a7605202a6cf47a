//! Per-sliver host resources derived from a slot number: uid range, addresses, tc ids, names.
//!
//! Each live sliver holds one slot (the lowest free one, recorded with the sliver). From it
//! follow, without any other shared state: its host uid/gid range (root in the sliver maps to
//! `uid_base + slot * uid_count`), its /31 address pair in the node-local pool (host side even,
//! sliver side odd), its HTB class minor and filter priority, and its host-side veth name.
//!
//! A node's slivers take host ids `uid_base .. uid_base + capacity * uid_count`
//! ([`SlotLayout::uid_span`]). Unless configured, a node's `uid_base` is one of the blocks of
//! that size between [`AUTO_UID_FIRST`] and [`AUTO_UID_END`] ([`SlotLayout::auto_uid_bases`]),
//! the first free one from a block picked by its node id; claims ([`super::claim`]) keep two
//! nodes of one machine out of each other's ids.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A contiguous host uid (and gid) range backing a sliver's ids 0..count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UidRange {
    /// The host id of the sliver's root.
    pub host_base: u32,
    /// How many ids are mapped.
    pub count: u32,
}

impl UidRange {
    /// The `uid_map`/`gid_map` line for this range.
    pub fn map_line(&self) -> String {
        format!("0 {} {}\n", self.host_base, self.count)
    }
}

/// The lowest host id a derived uid range uses (ids below are left to the host's users).
pub const AUTO_UID_FIRST: u32 = 1 << 28;
/// One past the highest host id a derived uid range uses (ids from 2^31 trip tools that read
/// them as signed).
pub const AUTO_UID_END: u32 = 1 << 31;

/// The node-local address pool and uid ranges, and the naming scheme of host objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotLayout {
    /// First host uid handed to slivers.
    pub uid_base: u32,
    /// Ids per sliver (65536 gives each sliver a full 16-bit id space).
    pub uid_count: u32,
    /// Network address of the pool.
    pub pool: Ipv4Addr,
    /// Prefix length of the pool.
    pub pool_prefix: u8,
    /// Prefix of host-side veth names (at most 8 bytes, so names fit in 15).
    pub ifname_prefix: String,
    /// Most slivers at once.
    pub max_slots: u32,
}

/// What a slot gives a sliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotAssignment {
    /// The slot.
    pub slot: u32,
    /// Host ids.
    pub uids: UidRange,
    /// The host side address (the sliver's gateway).
    pub host_addr: Ipv4Addr,
    /// The sliver's address.
    pub sliver_addr: Ipv4Addr,
    /// The host-side veth name.
    pub host_if: String,
    /// The HTB class minor (major is 1).
    pub class_minor: u16,
    /// The priority of the sliver's classifier on the shaping device.
    pub filter_prio: u16,
}

/// Why a slot cannot be assigned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every slot is in use.
    #[error("no free sliver slot: all {0} are in use")]
    Full(u32),
    /// The layout itself cannot hold this slot (uid or address space exhausted).
    #[error("slot {0} does not fit the uid range or the address pool")]
    OutOfRange(u32),
}

impl SlotLayout {
    /// How many slots the layout can hold: the smallest of `max_slots`, the /31 pairs of the
    /// pool, the uid ranges below 2^32 and the HTB minors.
    pub fn capacity(&self) -> u32 {
        let pairs = if self.pool_prefix >= 31 {
            0
        } else {
            1u64 << (31 - u32::from(self.pool_prefix))
        };
        let uids =
            (u64::from(u32::MAX) - u64::from(self.uid_base)) / u64::from(self.uid_count.max(1));
        let minors = 0xff00u64;
        let cap = [u64::from(self.max_slots), pairs, uids, minors]
            .into_iter()
            .min()
            .unwrap_or(0);
        u32::try_from(cap).unwrap_or(u32::MAX)
    }

    /// The host ids the layout's slots use: `(first, end)`, `end` excluded.
    pub fn uid_span(&self) -> (u32, u64) {
        let count = u64::from(self.capacity()) * u64::from(self.uid_count);
        (self.uid_base, u64::from(self.uid_base) + count)
    }

    /// The uid bases a node may take by default: blocks of the size its slots need between
    /// [`AUTO_UID_FIRST`] and [`AUTO_UID_END`], starting at the block `preferred` picks and
    /// wrapping around (empty when not even one block fits).
    pub fn auto_uid_bases(&self, preferred: u32) -> Vec<u32> {
        let probe = SlotLayout {
            uid_base: AUTO_UID_FIRST,
            ..self.clone()
        };
        let size = probe.uid_span().1 - u64::from(AUTO_UID_FIRST);
        let blocks = (u64::from(AUTO_UID_END - AUTO_UID_FIRST))
            .checked_div(size)
            .unwrap_or(0);
        (0..blocks)
            .map(|i| (u64::from(preferred) + i) % blocks)
            .filter_map(|b| u32::try_from(u64::from(AUTO_UID_FIRST) + b * size).ok())
            .collect()
    }

    /// What slot `slot` gives.
    pub fn assign(&self, slot: u32) -> Result<SlotAssignment, AllocError> {
        if slot >= self.capacity() {
            return Err(AllocError::OutOfRange(slot));
        }
        let host_base = self
            .uid_count
            .checked_mul(slot)
            .and_then(|o| self.uid_base.checked_add(o))
            .ok_or(AllocError::OutOfRange(slot))?;
        let net = u32::from(self.pool) & prefix_mask(self.pool_prefix);
        let host = net
            .checked_add(slot * 2)
            .ok_or(AllocError::OutOfRange(slot))?;
        let minor = u16::try_from(slot + 0x10).map_err(|_| AllocError::OutOfRange(slot))?;
        Ok(SlotAssignment {
            slot,
            uids: UidRange {
                host_base,
                count: self.uid_count,
            },
            host_addr: Ipv4Addr::from(host),
            sliver_addr: Ipv4Addr::from(host + 1),
            host_if: format!("{}{}", self.ifname_prefix, slot),
            class_minor: minor,
            filter_prio: minor,
        })
    }

    /// The lowest slot not in `used`.
    pub fn first_free(&self, used: impl IntoIterator<Item = u32>) -> Result<u32, AllocError> {
        let mut used: Vec<u32> = used.into_iter().collect();
        used.sort_unstable();
        let mut slot = 0;
        for u in used {
            if u == slot {
                slot += 1;
            } else if u > slot {
                break;
            }
        }
        if slot < self.capacity() {
            Ok(slot)
        } else {
            Err(AllocError::Full(self.capacity()))
        }
    }
}

fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> SlotLayout {
        SlotLayout {
            uid_base: 1 << 28,
            uid_count: 65536,
            pool: Ipv4Addr::new(10, 200, 0, 0),
            pool_prefix: 24,
            ifname_prefix: "pmab".into(),
            max_slots: 1000,
        }
    }

    #[test]
    fn slots_derive_everything() {
        let a = layout().assign(3).unwrap();
        assert_eq!(
            a.uids,
            UidRange {
                host_base: (1 << 28) + 3 * 65536,
                count: 65536
            }
        );
        assert_eq!(
            a.uids.map_line(),
            format!("0 {} 65536\n", (1u32 << 28) + 3 * 65536)
        );
        assert_eq!(a.host_addr, Ipv4Addr::new(10, 200, 0, 6));
        assert_eq!(a.sliver_addr, Ipv4Addr::new(10, 200, 0, 7));
        assert_eq!(a.host_if, "pmab3");
        assert_eq!(a.class_minor, 0x13);
    }

    #[test]
    fn derived_uid_bases_are_disjoint_blocks_below_2_31() {
        let l = layout(); // 128 slots of 65536 ids: blocks of 2^23
        let bases = l.auto_uid_bases(5);
        assert_eq!(bases.len(), 7 << 5);
        assert_eq!(bases[0], AUTO_UID_FIRST + 5 * (1 << 23));
        assert_eq!(*bases.last().unwrap(), AUTO_UID_FIRST + 4 * (1 << 23));
        let mut sorted = bases.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), bases.len());
        for base in bases {
            let span = SlotLayout {
                uid_base: base,
                ..l.clone()
            }
            .uid_span();
            assert_eq!(span.1 - u64::from(span.0), 1 << 23);
            assert!(span.1 <= u64::from(AUTO_UID_END));
        }
        // A layout too big for even one block has none.
        let huge = SlotLayout {
            uid_count: 1 << 24,
            max_slots: 1 << 10,
            ..l
        };
        assert!(huge.auto_uid_bases(0).is_empty());
    }

    #[test]
    fn pool_bounds_capacity() {
        let l = layout();
        assert_eq!(l.capacity(), 128);
        assert_eq!(l.assign(128), Err(AllocError::OutOfRange(128)));
        assert_eq!(l.first_free([0, 1, 3]), Ok(2));
        assert_eq!(l.first_free([]), Ok(0));
        assert_eq!(l.first_free(0..128), Err(AllocError::Full(128)));
    }
}
