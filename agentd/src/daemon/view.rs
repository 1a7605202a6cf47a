//! What the agent's HTTP endpoint answers, as types: [`super::http`] builds them, and whoever
//! reads the endpoint (the testnet's dashboard and probe) decodes the same types.
//!
//! | path | body |
//! |---|---|
//! | `/status` | [`AgentStatus`] |
//! | `/tickets` | a list of [`TicketEntry`] |
//!
//! Keys are `ed25519/<hex>` text, resources their human text
//! (`cpu=1500m,memory=512MiB,disk=1GiB,egress=10Mbit`).

use capability_schema::{PublicKey, Resources};
use serde::{Deserialize, Serialize};

use crate::inventory::NodeEntry;
use crate::ledger::TicketRecord;

/// `/status`: the agent, its inventory and what is outstanding per node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The agent's key.
    pub agent: PublicKey,
    /// Its federation.
    pub federation: String,
    /// The nodes that delegated to it, from their latest ads.
    pub nodes: Vec<InventoryNode>,
    /// How many principals hold outstanding tickets.
    pub principals: usize,
}

/// One node of the agent's inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryNode {
    /// The node's key.
    pub node: PublicKey,
    /// Its name.
    pub name: String,
    /// Its site.
    pub site: String,
    /// Its federation.
    pub federation: String,
    /// The share it delegated to this agent.
    pub share: String,
    /// What this agent's outstanding tickets hold on it.
    pub outstanding: String,
    /// Its one-minute load average, as advertised.
    pub load: f64,
    /// Seconds since its last heartbeat, when past the agent's `dead_after`: it is neither
    /// offered nor minted on until it beats again (absent for a live node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_secs: Option<f64>,
}

impl InventoryNode {
    /// The inventory's `entry`, on which outstanding tickets hold `outstanding`.
    pub fn new(entry: &NodeEntry, outstanding: Resources) -> InventoryNode {
        InventoryNode {
            node: entry.ad.node,
            name: entry.ad.name.clone(),
            site: entry.ad.site.clone(),
            federation: entry.ad.federation.clone(),
            share: entry.share.to_string(),
            outstanding: outstanding.to_string(),
            load: entry.ad.measured.load_milli as f64 / 1000.0,
            silent_secs: None,
        }
    }
}

/// `/tickets`: one ticket of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketEntry {
    /// The ticket id.
    pub ticket_id: String,
    /// The node it is for.
    pub node: PublicKey,
    /// The principal it is bound to.
    pub principal: PublicKey,
    /// The peer that asked for it (`None` in records older than the field).
    pub requester: Option<PublicKey>,
    /// The slice.
    pub slice: String,
    /// The resources granted.
    pub resources: String,
    /// Unix seconds it ends.
    pub not_after: u64,
    /// The agreed price.
    pub price: u64,
    /// Whether it still counts against the node's share.
    pub outstanding: bool,
}

impl TicketEntry {
    /// The ledger's `record` as it stands at `now` (unix seconds).
    pub fn new(record: &TicketRecord, now: u64) -> TicketEntry {
        TicketEntry {
            ticket_id: record.ticket_id.clone(),
            node: record.node,
            principal: record.principal,
            requester: record.requester,
            slice: record.slice.clone(),
            resources: record.resources.to_string(),
            not_after: record.not_after,
            price: record.price,
            outstanding: record.outstanding(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::Signed;
    use capability_schema::identity::test_key;
    use federation::testing::TestFederation;
    use serde_json::{Value, json};

    use super::*;

    fn resources(text: &str) -> Resources {
        text.parse().unwrap()
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
        let node = TestFederation::new("plc", 100).node(1, "princeton");
        let mut ad = node.ad_body(7, 1000, 30);
        ad.measured.load_milli = 1250;
        let entry = NodeEntry {
            signed: Signed::sign(&node.key, &ad),
            ad,
            share: resources("cpu=2 cores,memory=2GiB"),
            delegation_not_after: 9000,
            scope: Default::default(),
        };
        let outstanding = resources("cpu=500m");
        let agent = test_key(20).public();
        let status = AgentStatus {
            agent,
            federation: "plc".into(),
            nodes: vec![InventoryNode::new(&entry, outstanding)],
            principals: 2,
        };
        let e = &entry;
        let old = json!({
            "agent": agent.to_string(),
            "federation": "plc",
            "nodes": [json!({
                "node": e.ad.node.to_string(),
                "name": e.ad.name,
                "site": e.ad.site,
                "federation": e.ad.federation,
                "share": e.share.to_string(),
                "outstanding": outstanding.to_string(),
                "load": e.ad.measured.load_milli as f64 / 1000.0,
            })],
            "principals": 2,
        });
        same_json(&status, old);
        assert_eq!(status.nodes[0].load, 1.25);
    }

    #[test]
    fn tickets_keep_their_json_shape() {
        let record = |requester: Option<PublicKey>, released: bool| TicketRecord {
            ticket_id: "a1b2".into(),
            node: test_key(1).public(),
            principal: test_key(50).public(),
            requester,
            principal_federation: Some("plc".into()),
            principal_authority: None,
            slice: "princeton_demo".into(),
            resources: resources("cpu=500m,memory=512MiB"),
            issued_at: 100,
            not_after: 3700,
            price: 42,
            released,
        };
        for (r, now) in [
            (record(Some(test_key(60).public()), false), 200),
            (record(None, false), 5000),
            (record(None, true), 200),
        ] {
            let old = json!({
                "ticket_id": r.ticket_id,
                "node": r.node.to_string(),
                "principal": r.principal.to_string(),
                "requester": r.requester.map(|k| k.to_string()),
                "slice": r.slice,
                "resources": r.resources.to_string(),
                "not_after": r.not_after,
                "price": r.price,
                "outstanding": r.outstanding(now),
            });
            same_json(&TicketEntry::new(&r, now), old);
        }
    }
}
