//! Asking the daemons how they are: a minimal HTTP/1.1 GET of their JSON endpoints (plain
//! TCP to the host's own address; no proxy, no TLS), decoded as the daemons' own view types
//! (`node::daemon::view`, `agentd::daemon::view`, `broker::daemon::view`), and waiting for ads
//! to converge.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use agentd::daemon::view::{AgentStatus, TicketEntry};
use anyhow::Context;
use broker::daemon::view::BrokerStatus;
use node::daemon::view::{LeaseEntry, NodeStatus};
use serde::de::DeserializeOwned;

use crate::generate::{HostInfo, Manifest};
use crate::topology::HostRole;

/// GETs `path` from `host` and decodes the JSON body as a `T` (one of the daemons' view
/// types).
pub fn get<T: DeserializeOwned>(host: &HostInfo, path: &str) -> anyhow::Result<T> {
    let addr = format!("{}:{}", host.ip, host.http_port);
    let mut stream = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2))
        .with_context(|| format!("{} ({addr}) is not answering", host.plan.name))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(16 << 20).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!(
            "{} {path}: {}",
            host.plan.name,
            head.lines().next().unwrap_or("")
        );
    }
    serde_json::from_str(body).with_context(|| format!("{} {path}: not JSON", host.plan.name))
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
            anyhow::bail!(
                "ads did not converge in {:?}: {} (see `testnet logs HOST`)",
                timeout,
                missing.join(", ")
            );
        }
        crate::pause(Duration::from_millis(250));
    }
}
