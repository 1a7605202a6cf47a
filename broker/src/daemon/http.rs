//! The broker's local HTTP endpoint.
//!
//! | path | what |
//! |---|---|
//! | `/status` | the broker, the agents it asks and its counters (JSON, [`super::view`]) |
//! | `/metrics` | Prometheus text format |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json};
use axum::routing::get;

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

async fn metrics(State(state): State<Arc<BrokerState>>) -> impl IntoResponse {
    let agents = state.agent_keys().len();
    let text = format!(
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
        state.finds.load(Ordering::Relaxed),
        state.acquired.load(Ordering::Relaxed),
        state.failed.load(Ordering::Relaxed),
        state.refused.load(Ordering::Relaxed),
        state.tickets.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
