//! Asking the daemons how they are: an HTTP GET of their JSON endpoints (the testnet's one
//! blocking client, `ureq`: plain HTTP to the host's own address, no proxy, no TLS, every wait
//! bounded), decoded as the daemons' own view types
//! (`node::daemon::view`, `agentd::daemon::view`, `broker::daemon::view`), and waiting for ads
//! to converge.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agentd::daemon::view::{AgentStatus, TicketEntry};
use anyhow::Context;
use broker::daemon::view::BrokerStatus;
use node::daemon::view::{LeaseEntry, NodeStatus};
use serde::de::DeserializeOwned;

use crate::generate::{HostInfo, Manifest};
use crate::topology::HostRole;

/// Longest wait for a connection to a daemon's endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the answer's head once the request is sent, and again for its body.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a whole request may take, whatever the phases took.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (a node's `/leases` holds one entry per lease).
pub const MAX_BODY: u64 = 16 << 20;

/// The testnet's HTTP client: blocking (the testnet's commands are synchronous), plain HTTP
/// (every endpoint is on loopback or a test namespace: no TLS, and no proxy, whatever the
/// environment says), every wait bounded, one connection per request (a restarted or frozen
/// daemon never inherits a pooled one), any status an answer (the caller reads it).
fn client() -> &'static ureq::Agent {
    static CLIENT: OnceLock<ureq::Agent> = OnceLock::new();
    CLIENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .proxy(None)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(ANSWER_TIMEOUT))
            .timeout_recv_body(Some(ANSWER_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build()
            .new_agent()
    })
}

/// What an HTTP GET got: the status and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body (at most [`MAX_BODY`] bytes, as text).
    pub body: String,
}

/// GETs `url` (`http://host:port/path`), within the timeouts above.
pub fn fetch(url: &str) -> anyhow::Result<Reply> {
    let mut response = client().get(url).call()?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()?;
    Ok(Reply { status, body })
}

/// GETs `path` from `host` and decodes the JSON body as a `T` (one of the daemons' view
/// types). Anything but 200 is an error naming the status and the daemon's sentence.
pub fn get<T: DeserializeOwned>(host: &HostInfo, path: &str) -> anyhow::Result<T> {
    let name = &host.plan.name;
    let url = format!("{}{path}", host.http_url());
    let answer =
        fetch(&url).with_context(|| format!("{name} ({}) is not answering", host.http_url()))?;
    if answer.status != 200 {
        let reason = ureq::http::StatusCode::from_u16(answer.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let said = answer.body.lines().next().unwrap_or("");
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        };
        anyhow::bail!("{name} {path}: {} {reason}{said}", answer.status);
    }
    serde_json::from_str(&answer.body).with_context(|| format!("{name} {path}: not JSON"))
}

/// A host's `/status`, as its role writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum HostStatus {
    /// A node's.
    Node(NodeStatus),
    /// An agent's.
    Agent(AgentStatus),
    /// A broker's.
    Broker(BrokerStatus),
}

/// `host`'s `/status`, decoded as its role's view.
pub fn status(host: &HostInfo) -> anyhow::Result<HostStatus> {
    Ok(match host.plan.role {
        HostRole::Node => HostStatus::Node(get(host, "/status")?),
        HostRole::Agent => HostStatus::Agent(get(host, "/status")?),
        HostRole::Broker => HostStatus::Broker(get(host, "/status")?),
    })
}

/// A node's `/leases`.
pub fn leases(node: &HostInfo) -> anyhow::Result<Vec<LeaseEntry>> {
    get(node, "/leases")
}

/// An agent's `/tickets`.
pub fn tickets(agent: &HostInfo) -> anyhow::Result<Vec<TicketEntry>> {
    get(agent, "/tickets")
}

/// How many nodes each agent knows, against how many delegate to it.
pub fn convergence(manifest: &Manifest) -> Vec<(String, usize, usize)> {
    manifest
        .of_role(HostRole::Agent)
        .map(|agent| {
            let expected = manifest
                .of_role(HostRole::Node)
                .filter(|n| n.plan.delegates_to.contains(&agent.plan.name))
                .count();
            let known = get::<AgentStatus>(agent, "/status").map_or(0, |s| s.nodes.len());
            (agent.plan.name.clone(), known, expected)
        })
        .collect()
}

/// Waits until every agent knows every node that delegated to it, or `timeout`.
pub fn wait_converged(
    manifest: &Manifest,
    timeout: Duration,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut last = None;
    loop {
        let state = convergence(manifest);
        let known: usize = state.iter().map(|(_, k, e)| (*k).min(*e)).sum();
        let expected: usize = state.iter().map(|(_, _, e)| *e).sum();
        if last != Some(known) {
            progress(known, expected);
            last = Some(known);
        }
        if known == expected {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            let missing: Vec<String> = state
                .iter()
                .filter(|(_, k, e)| k < e)
                .map(|(name, k, e)| format!("{name} knows {k} of {e} nodes"))
                .collect();
            // Hosts live in DIR/hosts/NAME.
            let dir = manifest
                .hosts
                .first()
                .and_then(|h| h.dir.parent()?.parent())
                .map(|d| format!(" --dir {}", d.display()))
                .unwrap_or_default();
            anyhow::bail!(
                "ads did not converge in {:?}: {} (see `testnet logs HOST{dir}`)",
                timeout,
                missing.join(", ")
            );
        }
        crate::pause(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use axum::Json;
    use axum::http::StatusCode;
    use axum::routing::get as route;
    use broker::daemon::view::{AgentSource, BrokerAgent};
    use capability_schema::SecretKey;

    use super::*;
    use crate::topology::{HostPlan, Topology};

    /// Serves `router` on a loopback port of its own runtime (dropped with it).
    fn serve(router: axum::Router) -> (SocketAddr, tokio::runtime::Runtime) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(async move { axum::serve(listener, router).await });
        (addr, runtime)
    }

    /// A host of `role` whose endpoint is `addr`.
    fn host(role: HostRole, addr: SocketAddr) -> HostInfo {
        let topology = Topology {
            federations: 1,
            nodes: 1,
            agents: 1,
            brokers: 1,
        };
        let plan: HostPlan = topology
            .hosts()
            .unwrap()
            .into_iter()
            .find(|h| h.role == role)
            .unwrap();
        HostInfo {
            dir: PathBuf::from(format!("/nonexistent/{}", plan.name)),
            plan,
            key: SecretKey::generate().public(),
            ip: addr.ip().to_string(),
            p2p_port: 1,
            http_port: addr.port(),
            netns: None,
        }
    }

    fn broker_status() -> BrokerStatus {
        BrokerStatus {
            broker: SecretKey::generate().public(),
            agents: vec![BrokerAgent {
                agent: SecretKey::generate().public(),
                federation: Some("fed0".into()),
                source: AgentSource::Ads,
            }],
            finds: 1,
            acquired: 2,
            failed: 0,
            tickets: 3,
            refused: 0,
        }
    }

    #[test]
    fn a_daemons_view_is_decoded_from_its_endpoint() {
        let expected = broker_status();
        let served = expected.clone();
        let (addr, _runtime) = serve(axum::Router::new().route(
            "/status",
            route(move || {
                let served = served.clone();
                async move { Json(served) }
            }),
        ));
        let broker = host(HostRole::Broker, addr);
        assert_eq!(get::<BrokerStatus>(&broker, "/status").unwrap(), expected);
        assert_eq!(status(&broker).ok(), Some(HostStatus::Broker(expected)));
    }

    #[test]
    fn anything_but_200_is_an_error_with_the_daemons_sentence() {
        let (addr, _runtime) = serve(axum::Router::new().route(
            "/leases",
            route(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the ledger cannot be read: disk gone",
                )
            }),
        ));
        let node = host(HostRole::Node, addr);
        let e = format!("{:#}", leases(&node).unwrap_err());
        assert!(
            e.contains("/leases: 500 Internal Server Error: the ledger cannot be read: disk gone"),
            "{e}"
        );
        let e = format!("{:#}", tickets(&node).unwrap_err());
        assert!(e.contains("/tickets: 404 Not Found"), "{e}");
        // A body that is not the view is named as such.
        let (addr, _runtime) =
            serve(axum::Router::new().route("/status", route(|| async { Json(vec![1, 2, 3]) })));
        let e = format!("{:#}", status(&host(HostRole::Agent, addr)).unwrap_err());
        assert!(e.contains("/status: not JSON"), "{e}");
    }

    #[test]
    fn a_host_that_is_gone_or_hung_is_an_error_within_the_timeouts() {
        // Nobody listens: refused at once.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = gone.local_addr().unwrap();
        drop(gone);
        let e = format!("{:#}", status(&host(HostRole::Node, addr)).unwrap_err());
        assert!(e.contains("is not answering"), "{e}");

        // The kernel accepts the connection but nothing ever answers (a frozen daemon).
        let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        let e = format!(
            "{:#}",
            status(&host(HostRole::Node, hung.local_addr().unwrap())).unwrap_err()
        );
        assert!(e.contains("is not answering"), "{e}");
        let waited = started.elapsed();
        assert!(
            waited >= ANSWER_TIMEOUT && waited < ANSWER_TIMEOUT + Duration::from_secs(2),
            "waited {waited:?}"
        );
    }
}
