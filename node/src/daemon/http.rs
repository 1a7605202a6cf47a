//! The node's local HTTP endpoint: JSON state for people and scripts ([`super::view`]'s types),
//! Prometheus metrics.
//!
//! | path | what |
//! |---|---|
//! | `/status` | the node, its capacity, commitments and shares |
//! | `/leases` | every lease in the ledger |
//! | `/slivers` | each lease's sliver with what it used at the last sample: CPU time, memory, egress bytes, disk against its grant, and its condition (`over disk limit: X of Y` while the disk watchdog holds it frozen) |
//! | `/metrics` | Prometheus text format, node-wide and per sliver ([`federation::metrics`]) |
//! | `/delegations` | the delegations in force, as signed: agent, share, scope, issue and end |
//! | `POST /reload` | re-reads node.toml and applies it ([`super::reload`]); answers what changed, or 409 and why nothing did |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Json;
use axum::routing::{get, post};
use capability_schema::Resources;
use federation::metrics::{Scrape, Value};

use super::delegated::DelegationView;
use super::reload::ReloadReport;
use super::run::NodeState;
use super::view::{LeaseEntry, NodeStatus, SliverEntry};
use crate::ledger::LeaseRecord;
use crate::sliver::UsageSample;

/// The routes.
pub fn router(state: Arc<NodeState>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/leases", get(leases))
        .route("/slivers", get(slivers))
        .route("/metrics", get(metrics))
        .route("/delegations", get(delegations))
        .route("/reload", post(reload))
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
        &service.capacity(),
        &service.commitments(),
        ad.as_ref(),
    ))
}

/// A failed request: its status and a sentence.
type Failure = (StatusCode, String);

async fn delegations(State(state): State<Arc<NodeState>>) -> Json<Vec<DelegationView>> {
    Json(state.service.delegated().view())
}

/// Applies an edited node.toml; 409 with the reason when it is refused (nothing changed).
async fn reload(State(state): State<Arc<NodeState>>) -> Result<Json<ReloadReport>, Failure> {
    let Some(reloader) = state.reloader.clone() else {
        return Err((
            StatusCode::NOT_FOUND,
            "this node cannot reload its configuration; restart it".into(),
        ));
    };
    match tokio::task::spawn_blocking(move || reloader.reload()).await {
        Ok(Ok(report)) => {
            tracing::info!(%report, "POST /reload: node.toml reloaded");
            Ok(Json(report))
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "POST /reload: reload refused; the running configuration stays");
            Err((StatusCode::CONFLICT, e.to_string()))
        }
        Err(e) => Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reloading failed: {e}"),
        )),
    }
}

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

async fn metrics(State(state): State<Arc<NodeState>>) -> Result<Scrape, Failure> {
    let service = &state.service;
    let capacity = service.capacity().total;
    let committed = service.commitments().total;
    let leases = ledger_leases(&state).await?.len();
    let usage = state
        .usage
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(scrape(&Figures {
        capacity,
        committed,
        leases,
        served_ok: state.served_ok.load(Ordering::Relaxed),
        served_err: state.served_err.load(Ordering::Relaxed),
        ads_published: state.ads_published.load(Ordering::Relaxed),
        usage: &usage,
    }))
}

/// What `/metrics` shows, read from the node's state at one scrape.
struct Figures<'a> {
    capacity: Resources,
    committed: Resources,
    leases: usize,
    served_ok: u64,
    served_err: u64,
    ads_published: u64,
    usage: &'a [UsageSample],
}

/// The node-wide series, then the per-sliver ones (one sample per live sliver and figure; a
/// figure no sliver has is left out).
///
/// Figures are in base units, as exporters write them: CPU in cores, memory and disk in
/// bytes, time in seconds.
fn scrape(f: &Figures<'_>) -> Scrape {
    let per_sliver = |figure: fn(&UsageSample) -> Option<Value>| -> Vec<(String, Value)> {
        f.usage
            .iter()
            .filter_map(|u| figure(u).map(|v| (u.id.as_str().to_owned(), v)))
            .collect()
    };
    let mut scrape = Scrape::new();
    scrape
        .gauge(
            "planetmesh_node_capacity_cpu_cores",
            "CPU the node offers, in cores.",
            cores(f.capacity.cpu_millis),
        )
        .gauge(
            "planetmesh_node_committed_cpu_cores",
            "CPU committed to leases, in cores.",
            cores(f.committed.cpu_millis),
        )
        .gauge(
            "planetmesh_node_capacity_memory_bytes",
            "Memory the node offers.",
            f.capacity.memory_bytes,
        )
        .gauge(
            "planetmesh_node_committed_memory_bytes",
            "Memory committed to leases.",
            f.committed.memory_bytes,
        )
        .gauge("planetmesh_node_leases", "Leases in the ledger.", f.leases)
        .counter_by(
            "planetmesh_node_requests_total",
            "Node-protocol requests answered, by outcome.",
            "outcome",
            [
                ("ok".to_owned(), f.served_ok),
                ("refused".to_owned(), f.served_err),
            ],
        )
        .counter(
            "planetmesh_node_ads_published_total",
            "Ads published.",
            f.ads_published,
        )
        .counter_by(
            "planetmesh_sliver_cpu_seconds_total",
            "CPU time a sliver has used.",
            "sliver",
            // In seconds to the millisecond, as the series always was.
            per_sliver(|u| {
                u.cpu_ns
                    .map(|ns| Value::Real((ns as f64 / 1e6).round() / 1e3))
            }),
        )
        .gauge_by(
            "planetmesh_sliver_memory_bytes",
            "Memory a sliver uses.",
            "sliver",
            per_sliver(|u| u.memory_bytes.map(Value::from)),
        )
        .counter_by(
            "planetmesh_sliver_egress_bytes_total",
            "Bytes a sliver's egress bucket has sent.",
            "sliver",
            per_sliver(|u| u.egress_bytes.map(Value::from)),
        )
        .gauge_by(
            "planetmesh_sliver_disk_bytes",
            "Bytes in a sliver's writable layer at the last disk check.",
            "sliver",
            per_sliver(|u| u.disk.as_ref().and_then(|d| d.used).map(Value::from)),
        )
        .gauge_by(
            "planetmesh_sliver_disk_limit_bytes",
            "A sliver's disk grant (0: none).",
            "sliver",
            per_sliver(|u| u.disk.as_ref().map(|d| Value::from(d.limit))),
        )
        .gauge_by(
            "planetmesh_sliver_frozen",
            "1 while the disk watchdog holds a sliver frozen over its grant.",
            "sliver",
            per_sliver(|u| u.disk.as_ref().map(|d| Value::from(u64::from(d.frozen)))),
        );
    scrape
}

/// Millicores as cores (a real: `0.5`).
fn cores(millis: u64) -> Value {
    Value::Real(millis as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use super::*;
    use crate::sliver::{DiskBacking, DiskReport, SliverId};

    /// The text `/metrics` answered before `prometheus-client`, formatted by hand as it was.
    fn old_text(f: &Figures<'_>) -> String {
        let mut text = format!(
            "# HELP planetmesh_node_capacity_cpu_cores CPU the node offers, in cores.\n\
             # TYPE planetmesh_node_capacity_cpu_cores gauge\nplanetmesh_node_capacity_cpu_cores {:?}\n\
             # HELP planetmesh_node_committed_cpu_cores CPU committed to leases, in cores.\n\
             # TYPE planetmesh_node_committed_cpu_cores gauge\nplanetmesh_node_committed_cpu_cores {:?}\n\
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
            f.capacity.cpu_millis as f64 / 1000.0,
            f.committed.cpu_millis as f64 / 1000.0,
            f.capacity.memory_bytes,
            f.committed.memory_bytes,
            f.leases,
            f.served_ok,
            f.served_err,
            f.ads_published,
        );
        type Figure = fn(&UsageSample) -> Option<String>;
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
            let lines: Vec<String> = f
                .usage
                .iter()
                .filter_map(|u| figure(u).map(|v| format!("{name}{{sliver=\"{}\"}} {v}\n", u.id)))
                .collect();
            if lines.is_empty() {
                continue;
            }
            let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
            text.extend(lines);
        }
        text
    }

    fn sample(id: &str, cpu_ns: Option<u64>, disk: Option<(Option<u64>, bool)>) -> UsageSample {
        let id = SliverId::new(id).unwrap();
        UsageSample {
            id: id.clone(),
            cpu_ns,
            memory_bytes: Some(7 << 20),
            egress_bytes: cpu_ns.map(|_| 123_456),
            disk: disk.map(|(used, frozen)| DiskReport {
                id,
                used,
                limit: 2 << 20,
                over: frozen,
                error: None,
                backing: DiskBacking::Directory,
                frozen,
            }),
        }
    }

    fn figures(usage: &[UsageSample]) -> Figures<'_> {
        Figures {
            capacity: "cpu=4 cores,memory=4GiB".parse().unwrap(),
            committed: "cpu=500m,memory=512MiB".parse().unwrap(),
            leases: 2,
            served_ok: 17,
            served_err: 3,
            ads_published: 41,
            usage,
        }
    }

    #[test]
    fn metrics_are_the_lines_they_always_were() {
        // Without slivers: the node-wide series only.
        let f = figures(&[]);
        assert_eq!(scrape(&f).encode().unwrap(), old_text(&f));

        // With slivers, some figures unknown: CPU seconds whose old three decimals are also
        // their shortest form, so the text is the same byte for byte.
        let usage = [
            sample(
                "princeton_a",
                Some(2_345_000_000),
                Some((Some(3 << 20), true)),
            ),
            sample("princeton_b", None, Some((None, false))),
            sample("princeton_c", Some(10_125_000_000), None),
        ];
        let f = figures(&usage);
        let text = scrape(&f).encode().unwrap();
        assert_eq!(text, old_text(&f));
        assert!(
            text.contains("planetmesh_sliver_cpu_seconds_total{sliver=\"princeton_a\"} 2.345\n")
        );
        assert!(text.contains("planetmesh_sliver_frozen{sliver=\"princeton_a\"} 1\n"));
    }

    #[test]
    fn cpu_seconds_keep_the_millisecond_in_their_shortest_form() {
        let usage = [sample("princeton_a", Some(2_500_400_000), None)];
        let text = scrape(&figures(&usage)).encode().unwrap();
        // The old text said 2.500: the same value.
        assert!(
            text.contains("planetmesh_sliver_cpu_seconds_total{sliver=\"princeton_a\"} 2.5\n"),
            "{text}"
        );
    }
}
