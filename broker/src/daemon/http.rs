//! The broker's local HTTP endpoint.
//!
//! | path | what |
//! |---|---|
//! | `/status` | the broker, the agents it asks and its counters (JSON, [`super::view`]) |
//! | `/metrics` | Prometheus text format ([`federation::metrics`]) |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::response::Json;
use axum::routing::get;
use federation::metrics::Scrape;

use super::run::BrokerState;
use super::view::{AgentSource, BrokerAgent, BrokerStatus};

/// The routes.
pub fn router(state: Arc<BrokerState>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn status(State(state): State<Arc<BrokerState>>) -> Json<BrokerStatus> {
    let agents = state
        .agents
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(key, a)| BrokerAgent {
            agent: *key,
            federation: a.federation.clone(),
            source: if a.configured {
                AgentSource::Config
            } else {
                AgentSource::Ads
            },
        })
        .collect();
    Json(BrokerStatus {
        broker: state.key,
        agents,
        finds: state.finds.load(Ordering::Relaxed),
        acquired: state.acquired.load(Ordering::Relaxed),
        failed: state.failed.load(Ordering::Relaxed),
        tickets: state.tickets.load(Ordering::Relaxed),
        refused: state.refused.load(Ordering::Relaxed),
    })
}

async fn metrics(State(state): State<Arc<BrokerState>>) -> Scrape {
    scrape(&Figures {
        agents: state.agent_keys().len(),
        finds: state.finds.load(Ordering::Relaxed),
        acquired: state.acquired.load(Ordering::Relaxed),
        failed: state.failed.load(Ordering::Relaxed),
        refused: state.refused.load(Ordering::Relaxed),
        tickets: state.tickets.load(Ordering::Relaxed),
    })
}

/// What `/metrics` shows, read from the broker's state at one scrape.
struct Figures {
    agents: usize,
    finds: u64,
    acquired: u64,
    failed: u64,
    refused: u64,
    tickets: u64,
}

fn scrape(f: &Figures) -> Scrape {
    let mut scrape = Scrape::new();
    scrape
        .gauge(
            "planetmesh_broker_agents",
            "Agents this broker asks.",
            f.agents,
        )
        .counter(
            "planetmesh_broker_finds_total",
            "FindSlice requests answered.",
            f.finds,
        )
        .counter_by(
            "planetmesh_broker_acquisitions_total",
            "AcquireSlice requests by outcome.",
            "outcome",
            [
                ("acquired".to_owned(), f.acquired),
                ("failed".to_owned(), f.failed),
                ("refused".to_owned(), f.refused),
            ],
        )
        .counter(
            "planetmesh_broker_tickets_total",
            "Tickets handed to principals.",
            f.tickets,
        );
    scrape
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_the_lines_they_always_were() {
        let f = Figures {
            agents: 3,
            finds: 5,
            acquired: 4,
            failed: 2,
            refused: 1,
            tickets: 12,
        };
        // The text `/metrics` answered before `prometheus-client`, formatted by hand as it was.
        let agents = f.agents;
        let old = format!(
            "# HELP planetmesh_broker_agents Agents this broker asks.\n\
             # TYPE planetmesh_broker_agents gauge\nplanetmesh_broker_agents {agents}\n\
             # HELP planetmesh_broker_finds_total FindSlice requests answered.\n\
             # TYPE planetmesh_broker_finds_total counter\nplanetmesh_broker_finds_total {}\n\
             # HELP planetmesh_broker_acquisitions_total AcquireSlice requests by outcome.\n\
             # TYPE planetmesh_broker_acquisitions_total counter\n\
             planetmesh_broker_acquisitions_total{{outcome=\"acquired\"}} {}\n\
             planetmesh_broker_acquisitions_total{{outcome=\"failed\"}} {}\n\
             planetmesh_broker_acquisitions_total{{outcome=\"refused\"}} {}\n\
             # HELP planetmesh_broker_tickets_total Tickets handed to principals.\n\
             # TYPE planetmesh_broker_tickets_total counter\nplanetmesh_broker_tickets_total {}\n",
            f.finds, f.acquired, f.failed, f.refused, f.tickets,
        );
        assert_eq!(scrape(&f).encode().unwrap(), old);
    }
}
