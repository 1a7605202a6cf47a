//! The last `seq` accepted from each node, so a replayed or reordered older ad is dropped.
//!
//! Memory is bounded by `max_tracked_nodes`: when a new node arrives and the table is full,
//! expired entries go first, then the node whose entry was updated least recently. A node
//! that was evicted is unknown again, so one replay of an ad of it with an older `seq` is
//! accepted (and becomes its entry); that window is still bounded by the replayed ad's own
//! expiry, since validation refuses expired ads whatever the table says. Nodes heartbeat, so
//! the nodes evicted are the ones that went quiet longest.

use std::collections::{BTreeMap, HashMap};

use capability_schema::PublicKey;

/// One node's entry.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    /// When the ad with `seq` expires (unix seconds).
    expires: u64,
    /// Position in the update order (larger is more recent).
    stamp: u64,
}

/// The last `seq` per node, bounded, evicting the least recently updated node when full.
#[derive(Debug)]
pub(crate) struct SeqTracker {
    entries: HashMap<PublicKey, Entry>,
    /// Update order: stamp to node. The first key is the least recently updated node.
    order: BTreeMap<u64, PublicKey>,
    next_stamp: u64,
    capacity: usize,
    evicted: u64,
}

impl SeqTracker {
    /// A tracker of at most `capacity` nodes (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        SeqTracker {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_stamp: 0,
            capacity: capacity.max(1),
            evicted: 0,
        }
    }

    /// The last `seq` accepted from `node`, if it is tracked.
    pub(crate) fn last(&self, node: &PublicKey) -> Option<u64> {
        self.entries.get(node).map(|entry| entry.seq)
    }

    /// Nodes tracked now.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nodes evicted while still unexpired since the tracker was made.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Records `seq` (expiring at `expires`) as `node`'s last, making room if the table is
    /// full: expired entries (at `now`) first, then the least recently updated node.
    pub(crate) fn record(&mut self, node: PublicKey, seq: u64, expires: u64, now: u64) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(entry) = self.entries.get_mut(&node) {
            self.order.remove(&entry.stamp);
            *entry = Entry {
                seq,
                expires,
                stamp,
            };
            self.order.insert(stamp, node);
            return;
        }
        if self.entries.len() >= self.capacity {
            self.forget_expired(now);
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            self.evicted += 1;
            tracing::debug!(node = %oldest, "seq table full: forgetting the quietest node");
        }
        self.entries.insert(
            node,
            Entry {
                seq,
                expires,
                stamp,
            },
        );
        self.order.insert(stamp, node);
    }

    /// Forgets every node whose last ad expired before `now`.
    pub(crate) fn forget_expired(&mut self, now: u64) {
        let order = &mut self.order;
        self.entries.retain(|_, entry| {
            let keep = entry.expires >= now;
            if !keep {
                order.remove(&entry.stamp);
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;

    use super::*;

    fn key(seed: u8) -> PublicKey {
        test_key(seed).public()
    }

    #[test]
    fn a_full_table_evicts_the_least_recently_updated_node() {
        let mut seqs = SeqTracker::new(3);
        let now = 1000;
        seqs.record(key(1), 10, now + 60, now);
        seqs.record(key(2), 20, now + 60, now);
        seqs.record(key(3), 30, now + 60, now);
        // Node 1 heartbeats: node 2 is now the quietest.
        seqs.record(key(1), 11, now + 60, now);
        seqs.record(key(4), 40, now + 60, now);
        assert_eq!(seqs.len(), 3);
        assert_eq!(seqs.last(&key(2)), None, "the quietest node is evicted");
        assert_eq!(seqs.last(&key(1)), Some(11));
        assert_eq!(seqs.last(&key(3)), Some(30));
        assert_eq!(seqs.last(&key(4)), Some(40));
        assert_eq!(seqs.evicted(), 1);
        // Every new node keeps being tracked (replays of it are refused), the table stays
        // bounded.
        for seed in 5..50 {
            seqs.record(key(seed), u64::from(seed), now + 60, now);
            assert_eq!(seqs.last(&key(seed)), Some(u64::from(seed)));
            assert_eq!(seqs.len(), 3);
        }
        assert_eq!(seqs.evicted(), 46);
        assert_eq!(seqs.order.len(), seqs.entries.len());
    }

    #[test]
    fn expired_entries_go_before_live_ones() {
        let mut seqs = SeqTracker::new(2);
        seqs.record(key(1), 1, 100, 50);
        seqs.record(key(2), 2, 500, 50);
        // Node 1 is the least recently updated either way; make node 2 the older one.
        seqs.record(key(1), 3, 100, 50);
        // At 200 node 1's ad has expired: it goes, although node 2 is older.
        seqs.record(key(3), 4, 600, 200);
        assert_eq!(seqs.last(&key(1)), None);
        assert_eq!(seqs.last(&key(2)), Some(2));
        assert_eq!(seqs.last(&key(3)), Some(4));
        assert_eq!(seqs.evicted(), 0, "expiry is not eviction");
        seqs.forget_expired(550);
        assert_eq!(seqs.len(), 1);
        assert_eq!(seqs.order.len(), 1);
        assert_eq!(seqs.last(&key(3)), Some(4));
    }
}
