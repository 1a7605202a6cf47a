//! The agent's local HTTP endpoint: JSON state ([`super::view`]'s types) and Prometheus
//! metrics.
//!
//! | path | what |
//! |---|---|
//! | `/status` | the agent, its inventory and what is outstanding per node |
//! | `/tickets` | the ticket ledger |
//! | `/metrics` | Prometheus text format ([`federation::metrics`]) |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Json;
use axum::routing::get;
use federation::metrics::Scrape;
use federation::unix_now;

use super::run::AgentState;
use super::view::{AgentStatus, InventoryNode, TicketEntry};

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

async fn status(State(state): State<Arc<AgentState>>) -> Result<Json<AgentStatus>, Failure> {
    let now = unix_now();
    let outstanding = read_ledger(&state, move |l| l.outstanding(now)).await?;
    let agent = &state.agent;
    let nodes = agent.with_inventory(|inv| {
        inv.expire(now);
        let at = std::time::Instant::now();
        inv.iter()
            .map(|e| {
                let held = outstanding.by_node.get(&e.ad.node).copied();
                InventoryNode {
                    silent_secs: inv.silent_for(&e.ad.node, at).map(|d| d.as_secs_f64()),
                    ..InventoryNode::new(e, held.unwrap_or_default())
                }
            })
            .collect()
    });
    Ok(Json(AgentStatus {
        agent: agent.public(),
        federation: agent.federation().to_owned(),
        nodes,
        principals: outstanding.by_principal.len(),
    }))
}

async fn tickets(State(state): State<Arc<AgentState>>) -> Result<Json<Vec<TicketEntry>>, Failure> {
    let now = unix_now();
    let records = read_ledger(&state, |l| l.all()).await?;
    Ok(Json(
        records.iter().map(|r| TicketEntry::new(r, now)).collect(),
    ))
}

async fn metrics(State(state): State<Arc<AgentState>>) -> Result<Scrape, Failure> {
    let nodes = state.agent.with_inventory(|inv| inv.len());
    let now = unix_now();
    let outstanding = read_ledger(&state, |l| l.all())
        .await?
        .iter()
        .filter(|r| r.outstanding(now))
        .count();
    Ok(scrape(&Figures {
        nodes,
        outstanding,
        minted: state.tickets_minted.load(Ordering::Relaxed),
        refused: state.refused.load(Ordering::Relaxed),
    }))
}

/// What `/metrics` shows, read from the agent's state at one scrape.
struct Figures {
    nodes: usize,
    outstanding: usize,
    minted: u64,
    refused: u64,
}

fn scrape(f: &Figures) -> Scrape {
    let mut scrape = Scrape::new();
    scrape
        .gauge(
            "planetmesh_agent_inventory_nodes",
            "Nodes that delegated to this agent.",
            f.nodes,
        )
        .gauge(
            "planetmesh_agent_tickets_outstanding",
            "Tickets counted against shares.",
            f.outstanding,
        )
        .counter(
            "planetmesh_agent_tickets_minted_total",
            "Tickets minted since start.",
            f.minted,
        )
        .counter(
            "planetmesh_agent_refused_total",
            "Requests refused since start.",
            f.refused,
        );
    scrape
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_the_lines_they_always_were() {
        let f = Figures {
            nodes: 4,
            outstanding: 2,
            minted: 9,
            refused: 1,
        };
        // The text `/metrics` answered before `prometheus-client`, formatted by hand as it was.
        let (nodes, outstanding) = (f.nodes, f.outstanding);
        let old = format!(
            "# HELP planetmesh_agent_inventory_nodes Nodes that delegated to this agent.\n\
             # TYPE planetmesh_agent_inventory_nodes gauge\nplanetmesh_agent_inventory_nodes {nodes}\n\
             # HELP planetmesh_agent_tickets_outstanding Tickets counted against shares.\n\
             # TYPE planetmesh_agent_tickets_outstanding gauge\nplanetmesh_agent_tickets_outstanding {outstanding}\n\
             # HELP planetmesh_agent_tickets_minted_total Tickets minted since start.\n\
             # TYPE planetmesh_agent_tickets_minted_total counter\nplanetmesh_agent_tickets_minted_total {}\n\
             # HELP planetmesh_agent_refused_total Requests refused since start.\n\
             # TYPE planetmesh_agent_refused_total counter\nplanetmesh_agent_refused_total {}\n",
            f.minted, f.refused,
        );
        assert_eq!(scrape(&f).encode().unwrap(), old);
    }
}
