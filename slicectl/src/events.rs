//! `slice events`: what happened to each sliver of a slice, as its nodes recorded it (created,
//! renewed, frozen, thawed, released, reaped, lost, ended, with times and reasons).
//!
//! The events are the nodes' (`NodeRequest::Events`, kept in each node's ledger), never made
//! up here. Which nodes to ask: those the slice holds leases or tickets on now, and those it
//! held before, remembered in `slice-nodes.json` in the state directory ([`remember`], called
//! at every command with the state), so a sliver whose lease was reaped, lost or released and
//! forgotten by `sync` still has its story told. A node that cannot be reached, or predates
//! events, is named with why; the others' events are shown oldest first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use broker::acquire::CallError;
use capability_schema::protocol::{EventQuery, LeaseEvent, NodeRequest, NodeResponse};
use capability_schema::{PublicKey, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::exit::ExitClass;
use crate::ops::{Manager, OpError, Outcome};
use crate::state::{State, node_label};

/// The file, in the state directory, of the nodes each slice has used.
pub const FILE: &str = "slice-nodes.json";

/// The most slices remembered, and the most nodes per slice (the least recently seen go).
const MAX_SLICES: usize = 256;
const MAX_NODES_PER_SLICE: usize = 512;

/// A node a slice has used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsedNode {
    /// Its site.
    pub site: String,
    /// Its addresses as last known.
    pub addresses: Vec<String>,
    /// When slicectl last saw the slice hold something there (Unix seconds).
    pub seen: u64,
}

/// The nodes each slice has used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceNodes {
    /// By slice, by node.
    pub slices: BTreeMap<String, BTreeMap<PublicKey, UsedNode>>,
}

impl SliceNodes {
    /// Reads the file in `dir` (empty when missing or unreadable: it is only a memory).
    pub fn load(dir: &Path) -> SliceNodes {
        std::fs::read(dir.join(FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the file in `dir` (through a temporary file, so a reader never sees half).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp: PathBuf = dir.join(format!("{FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(FILE))
    }

    /// Notes that `slice` holds something on `node` at `now`; answers whether anything
    /// changed.
    pub fn note(
        &mut self,
        slice: &str,
        node: PublicKey,
        site: &str,
        addresses: &[String],
        now: u64,
    ) -> bool {
        let nodes = self.slices.entry(slice.to_owned()).or_default();
        let entry = nodes.entry(node).or_default();
        let changed = entry.site != site || entry.addresses != addresses;
        if changed || now > entry.seen {
            entry.site = site.to_owned();
            if !addresses.is_empty() {
                entry.addresses = addresses.to_vec();
            }
            entry.seen = now;
        }
        while nodes.len() > MAX_NODES_PER_SLICE {
            let oldest = nodes.iter().min_by_key(|(_, n)| n.seen).map(|(k, _)| *k);
            if let Some(k) = oldest {
                nodes.remove(&k);
            }
        }
        while self.slices.len() > MAX_SLICES {
            let oldest = self
                .slices
                .iter()
                .filter(|(s, _)| s.as_str() != slice)
                .min_by_key(|(_, nodes)| nodes.values().map(|n| n.seen).max().unwrap_or(0))
                .map(|(s, _)| s.clone());
            match oldest {
                Some(s) => self.slices.remove(&s),
                None => break,
            };
        }
        changed
    }
}

/// Remembers the nodes every slice in `state` holds leases or tickets on (in `dir`'s
/// `slice-nodes.json`), for `slice events` later. Failures are ignored: it is a memory.
pub fn remember(dir: &Path, state: &State) {
    let Ok(slices) = state.slices() else {
        return;
    };
    let mut nodes = SliceNodes::load(dir);
    let before = nodes.clone();
    let now = federation::unix_now();
    for slice in slices {
        let name = &slice.request.name;
        for l in state.leases(name).unwrap_or_default() {
            nodes.note(name, l.lease.node, &l.site, &l.addresses, now);
        }
        for t in state.tickets(name).unwrap_or_default() {
            nodes.note(name, t.ticket.node, &t.site, &t.ticket.addresses, now);
        }
    }
    // Written only when a node or an address is new: `seen` alone moving is not worth a write.
    let changed = nodes.slices.iter().any(|(s, n)| {
        before.slices.get(s).is_none_or(|b| {
            b.len() != n.len()
                || b.iter()
                    .zip(n)
                    .any(|(x, y)| x.0 != y.0 || x.1.addresses != y.1.addresses)
        })
    });
    if changed {
        let _ = nodes.save(dir);
    }
}

/// An event with the node that told it.
struct Told {
    node: PublicKey,
    site: String,
    event: LeaseEvent,
}

impl Manager {
    /// `slice events`: every event of the slice's slivers its nodes recorded, oldest first.
    pub async fn events(&self, name: &str, state_dir: &Path) -> Result<Outcome, OpError> {
        let mut nodes: BTreeMap<PublicKey, (String, Vec<String>)> = SliceNodes::load(state_dir)
            .slices
            .remove(name)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, n)| (k, (n.site, n.addresses)))
            .collect();
        let known = match self.state.slice(name) {
            Ok(_) => true,
            Err(crate::state::StateError::NoSlice(_)) => false,
            Err(e) => return Err(e.into()),
        };
        if known {
            for l in self.state.leases(name)? {
                nodes.insert(l.lease.node, (l.site.clone(), l.addresses.clone()));
            }
            for t in self.state.tickets(name)? {
                nodes
                    .entry(t.ticket.node)
                    .or_insert((t.site.clone(), t.ticket.addresses.clone()));
            }
        }
        if nodes.is_empty() {
            if !known {
                return Err(crate::state::StateError::NoSlice(name.to_owned()).into());
            }
            return Ok(Outcome {
                json: json!({"ok": true, "slice": name, "events": [], "unanswered": []}),
                lines: vec![format!("slice {name}: no sliver yet, so no events")],
                class: ExitClass::Ok,
            });
        }
        let asked: Vec<(PublicKey, String, Vec<String>)> = nodes
            .into_iter()
            .map(|(k, (site, addresses))| (k, site, addresses))
            .collect();
        let answers = self
            .session
            .fan_out(&asked, |(node, _, addresses)| {
                self.node_events(*node, addresses, name)
            })
            .await;
        let mut told = Vec::new();
        let mut unanswered = Vec::new();
        let mut class = ExitClass::Ok;
        let mut notes = Vec::new();
        for ((node, site, _), answer) in answers {
            match answer {
                Ok(events) => told.extend(events.into_iter().map(|event| Told {
                    node: *node,
                    site: site.clone(),
                    event,
                })),
                Err(e) => {
                    let (why, c) = if matches!(&e, CallError::Refused(r) if matches!(r.reason, Rejection::Malformed { .. }))
                    {
                        (
                            "it keeps no events (it predates them; upgrade it)".to_owned(),
                            ExitClass::Partial,
                        )
                    } else {
                        (format!("no answer: {e}"), crate::client::call_class(&e))
                    };
                    class = class.worst(c);
                    notes.push(format!("  {}: {why}", node_label(site, node)));
                    unanswered.push(json!({"node": node.to_string(), "site": site, "error": why}));
                }
            }
        }
        told.sort_by_key(|t| (t.event.at_ms, t.node, t.event.seq));
        let now = federation::unix_now();
        let mut lines = vec![format!(
            "slice {name}: {} event{} from {} node{}",
            told.len(),
            if told.len() == 1 { "" } else { "s" },
            asked.len(),
            if asked.len() == 1 { "" } else { "s" },
        )];
        let mut out = Vec::new();
        for t in &told {
            let e = &t.event;
            let secs = e.at_ms / 1000;
            let mut line = format!(
                "  {}  {}  {}",
                crate::human::local_time(secs),
                node_label(&t.site, &t.node),
                e.kind
            );
            if let Some(end) = e.end {
                line.push_str(&format!(", lease ends {}", crate::human::at(end, now)));
            }
            if let Some(reason) = &e.reason {
                line.push_str(&format!(": {reason}"));
            }
            lines.push(line);
            out.push(json!({
                "node": t.node.to_string(),
                "site": t.site,
                "seq": e.seq,
                "at": secs,
                "at_ms": e.at_ms,
                "lease_id": e.lease_id,
                "kind": e.kind.name(),
                "end": e.end,
                "reason": e.reason,
            }));
        }
        if !notes.is_empty() {
            lines.push("not answered:".to_owned());
            lines.extend(notes);
        }
        Ok(Outcome {
            json: json!({
                "ok": class == ExitClass::Ok,
                "slice": name,
                "events": out,
                "unanswered": unanswered,
            }),
            lines,
            class,
        })
    }

    /// Every event of `slice` the node holds for this principal (following `more`).
    async fn node_events(
        &self,
        node: PublicKey,
        addresses: &[String],
        slice: &str,
    ) -> Result<Vec<LeaseEvent>, CallError> {
        let mut all: Vec<LeaseEvent> = Vec::new();
        // Bounded: at most this many answers of at most `LeaseEvents::MAX` each.
        for _ in 0..32 {
            let query = EventQuery {
                slice: Some(slice.to_owned()),
                after: all.last().map_or(0, |e| e.seq),
            };
            match self
                .session
                .node_call(node, addresses, NodeRequest::Events(query))
                .await?
            {
                NodeResponse::Events(page) => {
                    all.extend(page.events);
                    if !page.more {
                        break;
                    }
                }
                other => return Err(CallError::Unexpected(format!("{other:?}"))),
            }
        }
        Ok(all)
    }
}

/// The events of JSON output as (`kind`, `reason`) pairs, for tests and scripts.
pub fn kinds(outcome: &Value) -> Vec<(String, Option<String>)> {
    outcome["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_owned(),
                e["reason"].as_str().map(str::to_owned),
            )
        })
        .collect()
}
