//! The node's local HTTP endpoint: JSON state for people and scripts, Prometheus metrics.
//!
//! | path | what |
//! |---|---|
//! | `/status` | the node, its capacity, commitments and shares |
//! | `/leases` | every lease in the ledger |
//! | `/slivers` | the slivers the engine has |
//! | `/metrics` | Prometheus text format |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::{Value, json};

use super::run::NodeState;
use crate::ledger::LeaseState;

/// The routes.
pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/leases", get(leases))
        .route("/slivers", get(slivers))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn status(State(state): State<Arc<NodeState>>) -> Json<Value> {
    let service = &state.service;
    let capacity = service.capacity();
    let committed = service.commitments();
    let ad = state
        .ad
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let ad = ad.and_then(|a| a.peek_unverified().ok());
    Json(json!({
        "node": service.public().to_string(),
        "federation": ad.as_ref().map(|a| a.federation.clone()),
        "site": ad.as_ref().map(|a| a.site.clone()),
        "name": ad.as_ref().map(|a| a.name.clone()),
        "addresses": ad.as_ref().map(|a| a.addresses.clone()),
        "seq": ad.as_ref().map(|a| a.seq),
        "capacity": capacity.total.to_string(),
        "committed": committed.total.to_string(),
        "shares": capacity.shares.iter().map(|(agent, share)| json!({
            "agent": agent.to_string(),
            "share": share.limit.to_string(),
            "committed": committed.of(agent).to_string(),
            "free": capacity.free_for(&committed, agent).to_string(),
            "not_after": share.not_after,
        })).collect::<Vec<_>>(),
        "load": ad.as_ref().map(|a| a.measured.load_milli as f64 / 1000.0),
    }))
}

async fn leases(State(state): State<Arc<NodeState>>) -> Json<Value> {
    let leases = state.service.ledger().leases().unwrap_or_default();
    Json(Value::Array(
        leases
            .into_iter()
            .map(|r| {
                json!({
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
                })
            })
            .collect(),
    ))
}

async fn slivers(State(state): State<Arc<NodeState>>) -> Json<Value> {
    let leases = state.service.ledger().leases().unwrap_or_default();
    Json(json!(
        leases
            .iter()
            .map(|r| r.sliver_id.clone())
            .collect::<Vec<_>>()
    ))
}

async fn metrics(State(state): State<Arc<NodeState>>) -> impl IntoResponse {
    let service = &state.service;
    let capacity = service.capacity().total;
    let committed = service.commitments().total;
    let leases = service.ledger().leases().unwrap_or_default().len();
    let text = format!(
        "# HELP planetmesh_node_capacity_cpu_millis CPU the node offers, in thousandths of a core.\n\
         # TYPE planetmesh_node_capacity_cpu_millis gauge\nplanetmesh_node_capacity_cpu_millis {}\n\
         # HELP planetmesh_node_committed_cpu_millis CPU committed to leases.\n\
         # TYPE planetmesh_node_committed_cpu_millis gauge\nplanetmesh_node_committed_cpu_millis {}\n\
         # HELP planetmesh_node_capacity_memory_bytes Memory the node offers.\n\
         # TYPE planetmesh_node_capacity_memory_bytes gauge\nplanetmesh_node_capacity_memory_bytes {}\n\
         # HELP planetmesh_node_committed_memory_bytes Memory committed to leases.\n\
         # TYPE planetmesh_node_committed_memory_bytes gauge\nplanetmesh_node_committed_memory_bytes {}\n\
         # HELP planetmesh_node_leases Leases in the ledger.\n\
         # TYPE planetmesh_node_leases gauge\nplanetmesh_node_leases {}\n\
         # HELP planetmesh_node_requests_total Node-protocol requests answered, by outcome.\n\
         # TYPE planetmesh_node_requests_total counter\n\
         planetmesh_node_requests_total{{outcome=\"ok\"}} {}\n\
         planetmesh_node_requests_total{{outcome=\"refused\"}} {}\n\
         # HELP planetmesh_node_ads_published_total Ads published.\n\
         # TYPE planetmesh_node_ads_published_total counter\nplanetmesh_node_ads_published_total {}\n",
        capacity.cpu_millis,
        committed.cpu_millis,
        capacity.memory_bytes,
        committed.memory_bytes,
        leases,
        state.served_ok.load(Ordering::Relaxed),
        state.served_err.load(Ordering::Relaxed),
        state.ads_published.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
