//! What the node's HTTP endpoint answers, as types: [`super::http`] builds them, and whoever
//! reads the endpoint (the testnet's dashboard, probe and scenarios) decodes the same types.
//!
//! | path | body |
//! |---|---|
//! | `/status` | [`NodeStatus`] |
//! | `/leases` | a list of [`LeaseEntry`] |
//! | `/slivers` | a list of [`SliverEntry`] |
//!
//! Keys are `ed25519/<hex>` text, resources their human text
//! (`cpu=1500m,memory=512MiB,disk=1GiB,egress=10Mbit`); a figure not known is `null`, never
//! left out.

use capability_schema::{PublicKey, ResourceAd};
use serde::{Deserialize, Serialize};

use crate::admission::{Capacity, Commitments};
use crate::ledger::{LeaseRecord, LeaseState};
use crate::sliver::{DiskBacking, UsageSample};

/// `/status`: the node, its capacity, commitments and shares, and what its latest ad says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's key.
    pub node: PublicKey,
    /// Its federation (from its latest ad; `None` before the first).
    pub federation: Option<String>,
    /// Its site (from its latest ad).
    pub site: Option<String>,
    /// Its name (from its latest ad).
    pub name: Option<String>,
    /// Where to reach it, libp2p multiaddresses as text (from its latest ad).
    pub addresses: Option<Vec<String>>,
    /// Its latest ad's sequence number.
    pub seq: Option<u64>,
    /// What it offers in all.
    pub capacity: String,
    /// What its live leases hold in all.
    pub committed: String,
    /// Each agent's share.
    pub shares: Vec<ShareStatus>,
    /// One-minute load average (from its latest ad).
    pub load: Option<f64>,
}

impl NodeStatus {
    /// The status of the node `node` with `capacity` and `committed` now, and its latest
    /// ad (`None` before it published one).
    pub fn new(
        node: PublicKey,
        capacity: &Capacity,
        committed: &Commitments,
        ad: Option<&ResourceAd>,
    ) -> NodeStatus {
        NodeStatus {
            node,
            federation: ad.map(|a| a.federation.clone()),
            site: ad.map(|a| a.site.clone()),
            name: ad.map(|a| a.name.clone()),
            addresses: ad.map(|a| a.addresses.clone()),
            seq: ad.map(|a| a.seq),
            capacity: capacity.total.to_string(),
            committed: committed.total.to_string(),
            shares: capacity
                .shares
                .iter()
                .map(|(agent, share)| ShareStatus {
                    agent: *agent,
                    share: share.limit.to_string(),
                    committed: committed.of(agent).to_string(),
                    free: capacity.free_for(committed, agent).to_string(),
                    not_after: share.not_after,
                })
                .collect(),
            load: ad.map(|a| a.measured.load_milli as f64 / 1000.0),
        }
    }
}

/// One agent's share of the node, as the node enforces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareStatus {
    /// The agent.
    pub agent: PublicKey,
    /// The share's limit.
    pub share: String,
    /// What the agent's leases hold.
    pub committed: String,
    /// What is still free for the agent (its share and the node's capacity both allowing).
    pub free: String,
    /// Unix seconds after which the delegation ends.
    pub not_after: u64,
}

/// `/leases`: one lease in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEntry {
    /// Lease id (hex).
    pub lease_id: String,
    /// The ticket it redeemed (hex).
    pub ticket_id: String,
    /// The slice.
    pub slice: String,
    /// `regular` or `admin`.
    pub kind: String,
    /// The key that may use, renew or release it.
    pub holder: PublicKey,
    /// The agent whose share it counts against.
    pub agent: PublicKey,
    /// Resources held.
    pub resources: String,
    /// The sliver's address on the node's sliver network.
    pub address: Option<String>,
    /// Unix seconds it began.
    pub start: u64,
    /// Unix seconds it ends.
    pub end: u64,
    /// `pending` or `active`.
    pub state: LeaseState,
    /// The sliver backing it.
    pub sliver: String,
}

impl From<&LeaseRecord> for LeaseEntry {
    fn from(r: &LeaseRecord) -> LeaseEntry {
        LeaseEntry {
            lease_id: r.lease.lease_id.clone(),
            ticket_id: r.lease.ticket_id.clone(),
            slice: r.lease.slice.clone(),
            kind: r.lease.kind.to_string(),
            holder: r.lease.holder,
            agent: r.lease.agent,
            resources: r.lease.resources.to_string(),
            address: r.lease.address.clone(),
            start: r.lease.start,
            end: r.lease.end,
            state: r.state,
            sliver: r.sliver_id.clone(),
        }
    }
}

/// `/slivers`: one lease's sliver and what it used at the last sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliverEntry {
    /// The sliver.
    pub sliver: String,
    /// Its slice.
    pub slice: String,
    /// Its lease.
    pub lease_id: String,
    /// The lease's state.
    pub state: LeaseState,
    /// CPU time used, milliseconds (`None`: not accounted or not sampled).
    pub cpu_time_ms: Option<u64>,
    /// Memory in use, bytes.
    pub memory_bytes: Option<u64>,
    /// Bytes its egress bucket has sent.
    pub egress_bytes: Option<u64>,
    /// What its writable layer costs the host at the last disk check.
    pub disk_bytes: Option<u64>,
    /// Its disk grant (0: none; `None` before the first disk check).
    pub disk_limit_bytes: Option<u64>,
    /// What backs its writable layer.
    pub disk_backing: Option<DiskBacking>,
    /// Whether the disk watchdog holds it frozen.
    pub frozen: bool,
    /// What the holder is told about it (`over disk limit: X of Y`), if anything.
    pub condition: Option<String>,
}

impl SliverEntry {
    /// The sliver of lease `record`, with what it used at the last sample (`None` when
    /// the sample has no figures for it).
    pub fn new(record: &LeaseRecord, used: Option<&UsageSample>) -> SliverEntry {
        let disk = used.and_then(|u| u.disk.as_ref());
        SliverEntry {
            sliver: record.sliver_id.clone(),
            slice: record.lease.slice.clone(),
            lease_id: record.lease.lease_id.clone(),
            state: record.state,
            cpu_time_ms: used.and_then(|u| u.cpu_ns).map(|ns| ns / 1_000_000),
            memory_bytes: used.and_then(|u| u.memory_bytes),
            egress_bytes: used.and_then(|u| u.egress_bytes),
            disk_bytes: disk.and_then(|d| d.used),
            disk_limit_bytes: disk.map(|d| d.limit),
            disk_backing: disk.map(|d| d.backing),
            frozen: disk.is_some_and(|d| d.frozen),
            condition: disk.and_then(|d| d.condition()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use capability_schema::identity::test_key;
    use capability_schema::{Lease, Resources, SliceKind};
    use federation::testing::TestFederation;
    use serde_json::{Value, json};

    use super::*;
    use crate::admission::Share;
    use crate::sliver::{DiskReport, SliverId};

    fn resources(text: &str) -> Resources {
        text.parse().unwrap()
    }

    fn record(state: LeaseState) -> LeaseRecord {
        LeaseRecord {
            lease: Lease {
                lease_id: "00aa".into(),
                ticket_id: "11bb".into(),
                node: test_key(1).public(),
                federation: "plc".into(),
                agent: test_key(2).public(),
                slice: "princeton_demo".into(),
                kind: SliceKind::Regular,
                holder: test_key(3).public(),
                resources: resources("cpu=500m,memory=512MiB"),
                address: Some("10.200.0.2".into()),
                public: None,
                start: 100,
                end: 3700,
                net: Default::default(),
            },
            state,
            sliver_id: "princeton_demo".into(),
            ticket_not_after: 7300,
            renewable: true,
        }
    }

    /// The view's JSON is `old` (the body the handler wrote with `json!` before the views),
    /// and decodes back to the view.
    fn same_json<T>(view: &T, old: Value)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        assert_eq!(serde_json::to_value(view).unwrap(), old);
        let text = serde_json::to_string(view).unwrap();
        assert_eq!(&serde_json::from_str::<T>(&text).unwrap(), view);
    }

    #[test]
    fn status_keeps_its_json_shape() {
        let node = test_key(1).public();
        let agent = test_key(2).public();
        let capacity = Capacity {
            node,
            total: resources("cpu=4 cores,memory=4GiB,disk=10GiB,egress=100Mbit"),
            shares: BTreeMap::from([(
                agent,
                Share {
                    limit: resources("cpu=2 cores,memory=2GiB"),
                    not_after: 9000,
                    scope: Default::default(),
                },
            )]),
        };
        let mut committed = Commitments::default();
        committed
            .add(agent, &resources("cpu=500m,memory=512MiB"))
            .unwrap();
        let mut ad = TestFederation::new("plc", 100)
            .node(1, "princeton")
            .ad_body(7, 1000, 30);
        ad.addresses = vec!["/ip4/127.0.0.1/tcp/4001".into()];
        ad.measured.load_milli = 250;

        let status = NodeStatus::new(node, &capacity, &committed, Some(&ad));
        let old = |ad: Option<&ResourceAd>| {
            json!({
                "node": node.to_string(),
                "federation": ad.map(|a| a.federation.clone()),
                "site": ad.map(|a| a.site.clone()),
                "name": ad.map(|a| a.name.clone()),
                "addresses": ad.map(|a| a.addresses.clone()),
                "seq": ad.map(|a| a.seq),
                "capacity": capacity.total.to_string(),
                "committed": committed.total.to_string(),
                "shares": capacity.shares.iter().map(|(agent, share)| json!({
                    "agent": agent.to_string(),
                    "share": share.limit.to_string(),
                    "committed": committed.of(agent).to_string(),
                    "free": capacity.free_for(&committed, agent).to_string(),
                    "not_after": share.not_after,
                })).collect::<Vec<_>>(),
                "load": ad.map(|a| a.measured.load_milli as f64 / 1000.0),
            })
        };
        same_json(&status, old(Some(&ad)));
        assert_eq!(status.load, Some(0.25));
        assert_eq!(status.shares[0].agent, agent);

        // Before the first ad, what only the ad says is null.
        let early = NodeStatus::new(node, &capacity, &committed, None);
        same_json(&early, old(None));
        assert_eq!(serde_json::to_value(&early).unwrap()["site"], Value::Null);
    }

    #[test]
    fn lease_entries_keep_their_json_shape() {
        for state in [LeaseState::Active, LeaseState::Pending] {
            let r = record(state);
            let old = json!({
                "lease_id": r.lease.lease_id,
                "ticket_id": r.lease.ticket_id,
                "slice": r.lease.slice,
                "kind": r.lease.kind.to_string(),
                "holder": r.lease.holder.to_string(),
                "agent": r.lease.agent.to_string(),
                "resources": r.lease.resources.to_string(),
                "address": r.lease.address,
                "start": r.lease.start,
                "end": r.lease.end,
                "state": if r.state == LeaseState::Active { "active" } else { "pending" },
                "sliver": r.sliver_id,
            });
            same_json(&LeaseEntry::from(&r), old);
        }
    }

    #[test]
    fn sliver_entries_keep_their_json_shape() {
        let old = |r: &LeaseRecord, used: Option<&UsageSample>| {
            let disk = used.and_then(|u| u.disk.as_ref());
            json!({
                "sliver": r.sliver_id,
                "slice": r.lease.slice,
                "lease_id": r.lease.lease_id,
                "state": if r.state == LeaseState::Active { "active" } else { "pending" },
                "cpu_time_ms": used.and_then(|u| u.cpu_ns).map(|ns| ns / 1_000_000),
                "memory_bytes": used.and_then(|u| u.memory_bytes),
                "egress_bytes": used.and_then(|u| u.egress_bytes),
                "disk_bytes": disk.and_then(|d| d.used),
                "disk_limit_bytes": disk.map(|d| d.limit),
                "disk_backing": disk.map(|d| d.backing),
                "frozen": disk.is_some_and(|d| d.frozen),
                "condition": disk.and_then(|d| d.condition()),
            })
        };
        let id = SliverId::new("princeton_demo").unwrap();
        let measured = UsageSample {
            id: id.clone(),
            cpu_ns: Some(2_500_000_000),
            memory_bytes: Some(7 << 20),
            egress_bytes: Some(123_456),
            disk: Some(DiskReport {
                id,
                used: Some(3 << 20),
                limit: 2 << 20,
                over: true,
                error: None,
                backing: DiskBacking::Directory,
                frozen: true,
            }),
        };
        let r = record(LeaseState::Active);
        let entry = SliverEntry::new(&r, Some(&measured));
        same_json(&entry, old(&r, Some(&measured)));
        assert_eq!(entry.cpu_time_ms, Some(2500));
        assert!(entry.condition.unwrap().starts_with("over disk limit: 3"));

        // Nothing measured (memory isolation): figures are null, not missing.
        let r = record(LeaseState::Pending);
        let unmeasured = SliverEntry::new(&r, None);
        same_json(&unmeasured, old(&r, None));
        let text = serde_json::to_string(&unmeasured).unwrap();
        assert!(text.contains("\"cpu_time_ms\":null"), "{text}");
        assert!(text.contains("\"state\":\"pending\""), "{text}");
    }
}
