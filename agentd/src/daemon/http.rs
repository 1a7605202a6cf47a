//! The agent's local HTTP endpoint.
//!
//! | path | what |
//! |---|---|
//! | `/status` | the agent, its inventory and what is outstanding per node |
//! | `/tickets` | the ticket ledger |
//! | `/metrics` | Prometheus text format |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use federation::unix_now;
use serde_json::{Value, json};

use super::run::AgentState;

/// The routes.
pub fn router(state: Arc<AgentState>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/tickets", get(tickets))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// A failed request: its status and a sentence.
type Failure = (StatusCode, String);

/// Reads the ticket ledger on the blocking pool (a redb scan). A storage failure is logged
/// and answered 500: a broken disk must not look like an agent with nothing outstanding.
async fn read_ledger<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    state: &Arc<AgentState>,
    read: impl FnOnce(&crate::ledger::TicketLedger) -> Result<T, E> + Send + 'static,
) -> Result<T, Failure> {
    let agent = Arc::clone(&state.agent);
    let detail = match tokio::task::spawn_blocking(move || read(agent.ledger())).await {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(e)) => format!("the ticket ledger cannot be read: {e}"),
        Err(e) => format!("reading the ticket ledger failed: {e}"),
    };
    tracing::error!("http: {detail}");
    Err((StatusCode::INTERNAL_SERVER_ERROR, detail))
}

async fn status(State(state): State<Arc<AgentState>>) -> Result<Json<Value>, Failure> {
    let now = unix_now();
    let outstanding = read_ledger(&state, move |l| l.outstanding(now)).await?;
    let agent = &state.agent;
    let nodes: Vec<Value> = agent.with_inventory(|inv| {
        inv.expire(now);
        inv.iter()
            .map(|e| {
                json!({
                    "node": e.ad.node.to_string(),
                    "name": e.ad.name,
                    "site": e.ad.site,
                    "federation": e.ad.federation,
                    "share": e.share.to_string(),
                    "outstanding": outstanding.by_node.get(&e.ad.node).copied().unwrap_or_default().to_string(),
                    "load": e.ad.measured.load_milli as f64 / 1000.0,
                })
            })
            .collect()
    });
    Ok(Json(json!({
        "agent": agent.public().to_string(),
        "federation": agent.federation(),
        "nodes": nodes,
        "principals": outstanding.by_principal.len(),
    })))
}

async fn tickets(State(state): State<Arc<AgentState>>) -> Result<Json<Value>, Failure> {
    let now = unix_now();
    let records = read_ledger(&state, |l| l.all()).await?;
    Ok(Json(Value::Array(
        records
            .into_iter()
            .map(|r| {
                json!({
                    "ticket_id": r.ticket_id,
                    "node": r.node.to_string(),
                    "principal": r.principal.to_string(),
                    "requester": r.requester.map(|k| k.to_string()),
                    "slice": r.slice,
                    "resources": r.resources.to_string(),
                    "not_after": r.not_after,
                    "price": r.price,
                    "outstanding": r.outstanding(now),
                })
            })
            .collect(),
    )))
}

async fn metrics(State(state): State<Arc<AgentState>>) -> Result<impl IntoResponse, Failure> {
    let nodes = state.agent.with_inventory(|inv| inv.len());
    let now = unix_now();
    let outstanding = read_ledger(&state, |l| l.all())
        .await?
        .iter()
        .filter(|r| r.outstanding(now))
        .count();
    let text = format!(
        "# HELP planetmesh_agent_inventory_nodes Nodes that delegated to this agent.\n\
         # TYPE planetmesh_agent_inventory_nodes gauge\nplanetmesh_agent_inventory_nodes {nodes}\n\
         # HELP planetmesh_agent_tickets_outstanding Tickets counted against shares.\n\
         # TYPE planetmesh_agent_tickets_outstanding gauge\nplanetmesh_agent_tickets_outstanding {outstanding}\n\
         # HELP planetmesh_agent_tickets_minted_total Tickets minted since start.\n\
         # TYPE planetmesh_agent_tickets_minted_total counter\nplanetmesh_agent_tickets_minted_total {}\n\
         # HELP planetmesh_agent_refused_total Requests refused since start.\n\
         # TYPE planetmesh_agent_refused_total counter\nplanetmesh_agent_refused_total {}\n",
        state.tickets_minted.load(Ordering::Relaxed),
        state.refused.load(Ordering::Relaxed),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
