//! Replacement slivers within a create: a ticket whose node did not answer (the connection
//! failed or timed out) is exchanged for a sliver elsewhere before the create settles.
//!
//! How a round goes: the redeems that failed because the node is down are set apart → one
//! acquisition asks for as many slivers with the same constraints, the down nodes and every
//! node the slice already holds a lease or ticket on excluded (`min_sites` counting the sites
//! held) → each replacement is written to the state, its down ticket handed back to its agent
//! and forgotten, and standard error says "node X did not answer; replaced by Y" → the new
//! tickets are redeemed, and a replacement whose node is down too gets another round (at most
//! [`MAX_ROUNDS`]). Tickets that got no replacement stay as they were: an all-or-nothing create
//! then gives up as before (nothing held), a best-effort one keeps them for `sync`. A slice
//! asked on named nodes (`--node`) is never moved elsewhere.

use broker::acquire::CallError;
use capability_schema::slice::SliverTarget;
use capability_schema::{AcquireMode, PublicKey, SliceRequest};
use serde_json::{Value, json};

use super::{Manager, OpError, Redeemed, rest_min_sites, short_error, ticket_entries};
use crate::state::{TicketEntry, node_label};

/// Replacement rounds at most in one create (a replacement's node may be down too).
pub const MAX_ROUNDS: usize = 2;

/// Whether a redeem failed because the node is down (no connection, or no answer in time),
/// rather than because it refused.
pub fn node_down(e: &CallError) -> bool {
    matches!(e, CallError::Timeout(_) | CallError::Unreachable(_))
}

/// One down node and what took its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    /// The node that did not answer, as people read it.
    pub down: String,
    /// Why its redeem failed.
    pub error: String,
    /// The node of the replacement ticket, as people read it (`None`: no replacement).
    pub by: Option<String>,
    /// Why there is none, when there is none.
    pub why_not: Option<String>,
}

impl std::fmt::Display for Replaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.by, &self.why_not) {
            (Some(by), _) => write!(f, "node {} did not answer; replaced by {by}", self.down),
            (None, why) => write!(
                f,
                "node {} did not answer; no replacement: {}",
                self.down,
                why.as_deref().unwrap_or("none offered")
            ),
        }
    }
}

impl Replaced {
    /// For `--json`.
    pub fn to_json(&self) -> Value {
        json!({
            "node": self.down,
            "error": self.error,
            "replaced_by": self.by,
            "no_replacement": self.why_not,
        })
    }
}

impl Manager {
    /// Replaces the slivers of `redeemed` whose node is down (see the module docs); `all_ids`
    /// (every ticket of the create, which an all-or-nothing failure hands back) follows: the
    /// replaced tickets leave it, the replacements join it. Returns what was redeemed in the
    /// end and each replacement made or missed, in order.
    pub(super) async fn replace_down_nodes(
        &self,
        slice: &str,
        request: &SliceRequest,
        all_ids: &mut Vec<(PublicKey, String)>,
        mut redeemed: Redeemed,
        lease_secs: Option<u64>,
    ) -> Result<(Redeemed, Vec<Replaced>), OpError> {
        let mut log = Vec::new();
        if !matches!(request.target, SliverTarget::Count(_)) {
            return Ok((redeemed, log));
        }
        let mut down_nodes: Vec<PublicKey> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let (down, other): (Vec<_>, Vec<_>) = std::mem::take(&mut redeemed.failed)
                .into_iter()
                .partition(|(_, e)| node_down(e));
            redeemed.failed = other;
            if down.is_empty() {
                break;
            }
            // All-or-nothing gives up anyway over a refusal: no use replacing.
            if request.mode == AcquireMode::AllOrNothing && !redeemed.failed.is_empty() {
                redeemed.failed.extend(down);
                break;
            }
            down_nodes.extend(down.iter().map(|(t, _)| t.ticket.node));
            let more = match self
                .acquire_rest(slice, request, &redeemed, &down, &down_nodes)
                .await
            {
                Ok(more) => more,
                Err(why) => {
                    for (t, e) in &down {
                        log.push(say(Replaced {
                            down: node_label(&t.site, &t.ticket.node),
                            error: short_error(e),
                            by: None,
                            why_not: Some(why.clone()),
                        }));
                    }
                    redeemed.failed.extend(down);
                    break;
                }
            };
            let mut down = down.into_iter();
            for new in &more {
                let Some((old, e)) = down.next() else { break };
                // The replacement is stored; the down node's ticket goes back to its agent.
                self.state.remove_ticket(slice, &old.ticket.ticket_id)?;
                all_ids.retain(|(_, id)| *id != old.ticket.ticket_id);
                all_ids.push((new.ticket.agent, new.ticket.ticket_id.clone()));
                self.session
                    .release_tickets(vec![(old.ticket.agent, old.ticket.ticket_id.clone())])
                    .await;
                log.push(say(Replaced {
                    down: node_label(&old.site, &old.ticket.node),
                    error: short_error(&e),
                    by: Some(node_label(&new.site, &new.ticket.node)),
                    why_not: None,
                }));
            }
            for (t, e) in down {
                log.push(say(Replaced {
                    down: node_label(&t.site, &t.ticket.node),
                    error: short_error(&e),
                    by: None,
                    why_not: Some("fewer slivers offered than asked".into()),
                }));
                redeemed.failed.push((t, e));
            }
            let again = self.redeem(slice, more, lease_secs).await?;
            redeemed.leases.extend(again.leases);
            redeemed.failed.extend(again.failed);
        }
        redeemed.leases.sort_by_key(crate::state::LeaseEntry::label);
        Ok((redeemed, log))
    }

    /// Tickets for as many slivers as `down` lost, elsewhere: the original constraints, with
    /// `down_nodes` and every node the slice holds a lease or ticket on excluded. Stored in the
    /// state before they are returned.
    async fn acquire_rest(
        &self,
        slice: &str,
        request: &SliceRequest,
        redeemed: &Redeemed,
        down: &[(TicketEntry, CallError)],
        down_nodes: &[PublicKey],
    ) -> Result<Vec<TicketEntry>, String> {
        let held: Vec<(PublicKey, &str)> = redeemed
            .leases
            .iter()
            .map(|l| (l.lease.node, l.site.as_str()))
            .chain(
                redeemed
                    .failed
                    .iter()
                    .map(|(t, _)| (t.ticket.node, t.site.as_str())),
            )
            .collect();
        let held_sites: std::collections::BTreeSet<&str> =
            held.iter().map(|(_, site)| *site).collect();
        let mut rest = request.clone();
        rest.target = SliverTarget::Count(u32::try_from(down.len()).unwrap_or(u32::MAX));
        rest.constraints
            .exclude_nodes
            .extend(down_nodes.iter().chain(held.iter().map(|(node, _)| node)));
        rest.constraints.exclude_nodes.sort();
        rest.constraints.exclude_nodes.dedup();
        rest.constraints.min_sites =
            rest_min_sites(request.constraints.min_sites, held_sites.len(), down.len());
        let acquired = self
            .session
            .acquire(&rest)
            .await
            .map_err(|e| e.to_string())?;
        let more = ticket_entries(&acquired, &rest);
        if more.is_empty() {
            return Err(acquired.plan.explanation);
        }
        self.state
            .add_tickets(slice, &more)
            .map_err(|e| e.to_string())?;
        Ok(more)
    }
}

/// Says `replaced` on standard error at once (whatever the output mode: it is what happened to
/// the user's slice) and keeps it for the outcome.
fn say(replaced: Replaced) -> Replaced {
    eprintln!("{replaced}");
    replaced
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_reads_as_what_happened() {
        let r = Replaced {
            down: "princeton/ab12cd34".into(),
            error: "unreachable: connection refused".into(),
            by: Some("mit/ef56ab78".into()),
            why_not: None,
        };
        assert_eq!(
            r.to_string(),
            "node princeton/ab12cd34 did not answer; replaced by mit/ef56ab78"
        );
        assert_eq!(r.to_json()["replaced_by"], "mit/ef56ab78");
        let none = Replaced {
            by: None,
            why_not: Some("no node fits".into()),
            ..r
        };
        assert_eq!(
            none.to_string(),
            "node princeton/ab12cd34 did not answer; no replacement: no node fits"
        );
        assert!(node_down(&CallError::Timeout(
            std::time::Duration::from_secs(5)
        )));
    }
}
