//! What the broker's HTTP endpoint answers, as types: [`super::http`] builds them, and whoever
//! reads the endpoint (the testnet's dashboard and `testnet status`) decodes the same types.
//!
//! | path | body |
//! |---|---|
//! | `/status` | [`BrokerStatus`] |

use capability_schema::PublicKey;
use serde::{Deserialize, Serialize};

/// `/status`: the broker, the agents it asks and its counters since start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerStatus {
    /// The broker's key.
    pub broker: PublicKey,
    /// The agents it asks.
    pub agents: Vec<BrokerAgent>,
    /// `FindSlice` requests answered.
    pub finds: u64,
    /// `AcquireSlice` requests that returned tickets.
    pub acquired: u64,
    /// `AcquireSlice` requests that returned nothing.
    pub failed: u64,
    /// Tickets handed to principals.
    pub tickets: u64,
    /// Requests refused before planning.
    pub refused: u64,
}

/// One agent the broker asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerAgent {
    /// The agent's key.
    pub agent: PublicKey,
    /// Its federation, if known.
    pub federation: Option<String>,
    /// Where the broker learned of it.
    pub source: AgentSource,
}

/// Where the broker learned of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentSource {
    /// Listed in its config.
    Config,
    /// Named by a node's delegation in an ad.
    Ads,
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;
    use serde_json::json;

    use super::*;

    #[test]
    fn status_keeps_its_json_shape() {
        let (configured, learned) = (test_key(20).public(), test_key(21).public());
        let status = BrokerStatus {
            broker: test_key(30).public(),
            agents: vec![
                BrokerAgent {
                    agent: configured,
                    federation: Some("plc".into()),
                    source: AgentSource::Config,
                },
                BrokerAgent {
                    agent: learned,
                    federation: None,
                    source: AgentSource::Ads,
                },
            ],
            finds: 1,
            acquired: 2,
            failed: 3,
            tickets: 4,
            refused: 5,
        };
        // The body the handler wrote with `json!` before the views.
        let old = json!({
            "broker": test_key(30).public().to_string(),
            "agents": [
                {"agent": configured.to_string(), "federation": "plc", "source": "config"},
                {"agent": learned.to_string(), "federation": null, "source": "ads"},
            ],
            "finds": 1,
            "acquired": 2,
            "failed": 3,
            "tickets": 4,
            "refused": 5,
        });
        assert_eq!(serde_json::to_value(&status).unwrap(), old);
        let text = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<BrokerStatus>(&text).unwrap(), status);
    }
}
