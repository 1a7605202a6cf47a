//! Telling agents that their tickets ended here early.
//!
//! An agent counts every ticket it minted against the node's share until the ticket ends. When
//! the last lease a ticket paid for goes before that (released by its holder, reaped at its
//! lease end, or lost with its sliver), the service queues the ticket
//! ([`NodeService::take_ended_tickets`]); this loop sends each agent one
//! `AgentRequest::Released` per batch, so the share is free again at once rather than at the
//! ticket's end. The agent accepts such a report from the node a ticket names.
//!
//! Reports are a courtesy, not a commitment: a report that fails is retried a few times
//! ([`MAX_ATTEMPTS`]), then dropped, and the agent goes on counting the ticket until it ends, as
//! it would if the node were unreachable. Nothing on the node depends on the agent's answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use capability_schema::PublicKey;
use capability_schema::protocol::{AgentRequest, AgentResponse};
use federation::overlay::AgentProtocol;
use federation::{OverlayError, OverlayHandle};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::service::{NodeService, TicketEnded};

/// How often waiting reports are sent.
pub const REPORT_PERIOD: Duration = Duration::from_secs(2);
/// How long one agent has to answer.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Failed reports of a ticket before it is dropped.
pub const MAX_ATTEMPTS: u32 = 5;
/// Most ticket ids in one request.
pub const MAX_IDS_PER_REPORT: usize = 256;
/// Most agents reported to at once.
const MAX_AGENTS_AT_ONCE: usize = 8;

/// Runs until `stop` turns true, then makes one last pass (so releases just before a shutdown
/// still reach their agents when they can).
pub async fn report_loop(
    service: Arc<NodeService>,
    overlay: OverlayHandle,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stopping = tokio::select! {
            _ = stop.wait_for(|s| *s) => true,
            () = tokio::time::sleep(REPORT_PERIOD) => false,
        };
        let timeout = if stopping {
            Duration::from_secs(2)
        } else {
            REPORT_TIMEOUT
        };
        report_once(&service, &overlay, timeout).await;
        if stopping {
            break;
        }
    }
}

/// Sends every waiting report once; failed ones go back to the service's queue.
pub async fn report_once(service: &NodeService, overlay: &OverlayHandle, timeout: Duration) {
    let waiting = service.take_ended_tickets();
    if waiting.is_empty() {
        return;
    }
    let mut by_agent: BTreeMap<PublicKey, Vec<TicketEnded>> = BTreeMap::new();
    for t in waiting {
        by_agent.entry(t.agent).or_default().push(t);
    }
    let mut batches: Vec<(PublicKey, Vec<TicketEnded>)> = Vec::new();
    for (agent, tickets) in by_agent {
        let mut tickets = tickets.into_iter().peekable();
        while tickets.peek().is_some() {
            batches.push((agent, tickets.by_ref().take(MAX_IDS_PER_REPORT).collect()));
        }
    }
    let mut failed = Vec::new();
    let mut tasks = JoinSet::new();
    let mut batches = batches.into_iter();
    loop {
        while tasks.len() < MAX_AGENTS_AT_ONCE {
            let Some((agent, tickets)) = batches.next() else {
                break;
            };
            let overlay = overlay.clone();
            tasks.spawn(async move {
                let ticket_ids = tickets.iter().map(|t| t.ticket_id.clone()).collect();
                let answer = overlay
                    .request::<AgentProtocol>(
                        &agent,
                        AgentRequest::Released { ticket_ids },
                        timeout,
                    )
                    .await;
                (agent, tickets, answer)
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let Ok((agent, tickets, answer)) = joined else {
            continue;
        };
        match answer {
            Ok(AgentResponse::Released { known }) => {
                tracing::debug!(agent = %agent, sent = tickets.len(), known, "ticket ends reported");
            }
            Ok(other) => {
                tracing::warn!(agent = %agent, answer = ?other, "agent answered a release report with something else; not retried");
            }
            Err(OverlayError::Rejected(reply)) => {
                tracing::warn!(agent = %agent, refusal = %reply, "agent refused a release report; not retried");
            }
            Err(e) => {
                for mut t in tickets {
                    t.attempts += 1;
                    if t.attempts < MAX_ATTEMPTS {
                        failed.push(t);
                    } else {
                        tracing::warn!(agent = %agent, ticket = %t.ticket_id, error = %e, "ticket end not reported; the agent counts it until it ends");
                    }
                }
            }
        }
    }
    if !failed.is_empty() {
        service.requeue_ended(failed);
    }
}
