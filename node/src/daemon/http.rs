//! The node's local HTTP endpoint: JSON state for people and scripts ([`super::view`]'s types),
//! Prometheus metrics.
//!
//! | path | what |
//! |---|---|
//! | `/status` | the node, its capacity, commitments and shares |
//! | `/leases` | every lease in the ledger |
//! | `/slivers` | each lease's sliver with what it used at the last sample: CPU time, memory, egress bytes, disk against its grant, and its condition (`over disk limit: X of Y` while the disk watchdog holds it frozen) |
//! | `/metrics` | Prometheus text format, node-wide and per sliver |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json};
use axum::routing::get;

use super::run::NodeState;
use super::view::{LeaseEntry, NodeStatus, SliverEntry};
use crate::ledger::LeaseRecord;

/// The routes.
pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/leases", get(leases))
        .route("/slivers", get(slivers))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn status(State(state): State<Arc<NodeState>>) -> Json<NodeStatus> {
    let service = &state.service;
    let ad = state
        .ad
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let ad = ad.and_then(|a| a.peek_unverified().ok());
    Json(NodeStatus::new(
        service.public(),
        service.capacity(),
        &service.commitments(),
        ad.as_ref(),
    ))
}

/// A failed request: its status and a sentence.
type Failure = (StatusCode, String);

/// The ledger's leases, read on the blocking pool (a redb scan). A storage failure is logged
/// and answered 500: a broken disk must not look like an idle node.
async fn ledger_leases(state: &Arc<NodeState>) -> Result<Vec<LeaseRecord>, Failure> {
    let service = Arc::clone(&state.service);
    let read = tokio::task::spawn_blocking(move || service.ledger().leases()).await;
    let detail = match read {
        Ok(Ok(leases)) => return Ok(leases),
        Ok(Err(e)) => format!("the ledger cannot be read: {e}"),
        Err(e) => format!("reading the ledger failed: {e}"),
    };
    tracing::error!("http: {detail}");
    Err((StatusCode::INTERNAL_SERVER_ERROR, detail))
}

async fn leases(State(state): State<Arc<NodeState>>) -> Result<Json<Vec<LeaseEntry>>, Failure> {
    let leases = ledger_leases(&state).await?;
    Ok(Json(leases.iter().map(LeaseEntry::from).collect()))
}

async fn slivers(State(state): State<Arc<NodeState>>) -> Result<Json<Vec<SliverEntry>>, Failure> {
    let leases = ledger_leases(&state).await?;
    let usage = state
        .usage
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(Json(
        leases
            .iter()
            .map(|r| {
                let used = usage.iter().find(|u| u.id.as_str() == r.sliver_id);
                SliverEntry::new(r, used)
            })
            .collect(),
    ))
}

/// Per-sliver series (one line per live sliver and figure), for `/metrics`.
fn sliver_metrics(state: &NodeState) -> String {
    use std::fmt::Write;
    let usage = state
        .usage
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut out = String::new();
    type Figure = fn(&crate::sliver::UsageSample) -> Option<String>;
    let series: [(&str, &str, &str, Figure); 6] = [
        (
            "planetmesh_sliver_cpu_seconds_total",
            "counter",
            "CPU time a sliver has used.",
            |u| u.cpu_ns.map(|ns| format!("{:.3}", ns as f64 / 1e9)),
        ),
        (
            "planetmesh_sliver_memory_bytes",
            "gauge",
            "Memory a sliver uses.",
            |u| u.memory_bytes.map(|b| b.to_string()),
        ),
        (
            "planetmesh_sliver_egress_bytes_total",
            "counter",
            "Bytes a sliver's egress bucket has sent.",
            |u| u.egress_bytes.map(|b| b.to_string()),
        ),
        (
            "planetmesh_sliver_disk_bytes",
            "gauge",
            "Bytes in a sliver's writable layer at the last disk check.",
            |u| u.disk.as_ref().and_then(|d| d.used).map(|b| b.to_string()),
        ),
        (
            "planetmesh_sliver_disk_limit_bytes",
            "gauge",
            "A sliver's disk grant (0: none).",
            |u| u.disk.as_ref().map(|d| d.limit.to_string()),
        ),
        (
            "planetmesh_sliver_frozen",
            "gauge",
            "1 while the disk watchdog holds a sliver frozen over its grant.",
            |u| u.disk.as_ref().map(|d| u8::from(d.frozen).to_string()),
        ),
    ];
    for (name, kind, help, figure) in series {
        let lines: Vec<String> = usage
            .iter()
            .filter_map(|u| figure(u).map(|v| format!("{name}{{sliver=\"{}\"}} {v}\n", u.id)))
            .collect();
        if lines.is_empty() {
            continue;
        }
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        out.extend(lines);
    }
    out
}

async fn metrics(State(state): State<Arc<NodeState>>) -> Result<impl IntoResponse, Failure> {
    let service = &state.service;
    let capacity = service.capacity().total;
    let committed = service.commitments().total;
    let leases = ledger_leases(&state).await?.len();
    let mut text = format!(
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
    text.push_str(&sliver_metrics(&state));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}
