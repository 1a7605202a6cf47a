//! The agent's ticket ledger (redb): every ticket it minted, persisted before it is returned.
//!
//! A minted ticket counts against the node's share from the moment it is written until it
//! expires or is released (the holder gave it back, e.g. after a failed all-or-nothing
//! acquisition). Ticket ids are biscuit revocation ids, unique by construction; the ledger
//! refuses to write an id twice, so a restart can never reuse one.
//!
//! Who may release a ticket ([`TicketRecord::may_release`]): the principal it is bound to, the
//! peer that obtained it (a broker acting for the principal, or the principal itself), or the
//! node it names (reporting it released). Anyone else is refused with
//! [`LedgerError::NotReleasable`] and nothing in that request is released.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capability_schema::{PublicKey, Resources, codec};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::policy::Usage;

const TICKETS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tickets");

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The database failed.
    #[error("ticket ledger {path}: {detail}")]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A ticket id was written twice.
    #[error("ticket id {0} is already in the ledger")]
    DuplicateId(String),
    /// The caller may not release this ticket.
    #[error(transparent)]
    NotReleasable(Box<ReleaseRefusal>),
}

/// Who asked to release a ticket, and who may.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "ticket {} may be released only by its principal {}, the peer that obtained it ({}) or its \
     node {}; {} is none of them (nothing was released)",
    short_id(ticket_id),
    principal.short(),
    requester.map_or_else(|| "not recorded".to_owned(), |r| r.short()),
    node.short(),
    caller.short()
)]
pub struct ReleaseRefusal {
    /// The ticket.
    pub ticket_id: String,
    /// Who asked.
    pub caller: PublicKey,
    /// The principal the ticket is bound to.
    pub principal: PublicKey,
    /// The peer that obtained it (none for tickets minted before it was recorded).
    pub requester: Option<PublicKey>,
    /// The node it names.
    pub node: PublicKey,
}

/// The first 8 characters of a ticket id, for messages.
fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// One minted ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRecord {
    /// The ticket id.
    pub ticket_id: String,
    /// The node.
    pub node: PublicKey,
    /// The principal it is bound to.
    pub principal: PublicKey,
    /// The peer that asked for it (the principal itself, or a broker acting for it). Absent
    /// in records written before it was kept.
    #[serde(default)]
    pub requester: Option<PublicKey>,
    /// The federation of the principal's membership certificate (none: not certified, or a
    /// record written before it was kept). A peering agreement's `max_total` counts the
    /// tickets of all principals of one federation by it.
    #[serde(default)]
    pub principal_federation: Option<String>,
    /// The authority key of that federation (none: not certified, or a record written before
    /// it was kept, which no peering total counts). Two federations may share a name (two
    /// testbeds' `fed0`); a peering agreement's `max_total` counts by this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_authority: Option<PublicKey>,
    /// The slice.
    pub slice: String,
    /// The resources granted.
    pub resources: Resources,
    /// Unix seconds of minting.
    pub issued_at: u64,
    /// Unix seconds it ends.
    pub not_after: u64,
    /// The agreed price.
    pub price: u64,
    /// Released by its holder before its end.
    pub released: bool,
}

impl TicketRecord {
    /// Whether it still counts against the share at `now`.
    pub fn outstanding(&self, now: u64) -> bool {
        !self.released && now < self.not_after
    }

    /// Whether `caller` may release it: its principal, the peer that obtained it, or its node.
    pub fn may_release(&self, caller: &PublicKey) -> bool {
        *caller == self.principal || Some(*caller) == self.requester || *caller == self.node
    }
}

/// What counting needs of one ticket, kept in memory so a request never decodes the ledger.
#[derive(Debug, Clone)]
struct Live {
    node: PublicKey,
    principal: PublicKey,
    principal_federation: Option<std::sync::Arc<str>>,
    principal_authority: Option<PublicKey>,
    resources: Resources,
    not_after: u64,
}

/// How long after its end an unreleased ticket stays in the in-memory index (an hour: calls
/// with a slightly earlier `now` from another thread still see it).
pub const FORGET_AFTER_SECS: u64 = 3600;

/// The agent's ledger.
#[derive(Debug)]
pub struct TicketLedger {
    db: Database,
    path: PathBuf,
    /// Tickets not released, by id.
    live: std::sync::Mutex<BTreeMap<String, Live>>,
}

fn live_of(record: &TicketRecord) -> Live {
    Live {
        node: record.node,
        principal: record.principal,
        principal_federation: record.principal_federation.as_deref().map(Into::into),
        principal_authority: record.principal_authority,
        resources: record.resources,
        not_after: record.not_after,
    }
}

impl TicketLedger {
    /// Opens (or creates) the ledger.
    pub fn open(path: &Path) -> Result<TicketLedger, LedgerError> {
        let storage = |e: String| LedgerError::Storage {
            path: path.to_owned(),
            detail: e,
        };
        let db = Database::create(path).map_err(|e| storage(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| storage(e.to_string()))?;
        txn.open_table(TICKETS)
            .map_err(|e| storage(e.to_string()))?;
        txn.commit().map_err(|e| storage(e.to_string()))?;
        let ledger = TicketLedger {
            db,
            path: path.to_owned(),
            live: Default::default(),
        };
        let live = ledger
            .all()?
            .iter()
            .filter(|r| !r.released)
            .map(|r| (r.ticket_id.clone(), live_of(r)))
            .collect();
        *ledger.lock() = live;
        Ok(ledger)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Live>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn storage(&self, e: impl std::fmt::Display) -> LedgerError {
        LedgerError::Storage {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    /// Writes every record in one durable transaction, or none.
    pub fn record_all(&self, records: &[TicketRecord]) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.storage(e))?;
        {
            let mut table = txn.open_table(TICKETS).map_err(|e| self.storage(e))?;
            for record in records {
                if table
                    .get(record.ticket_id.as_str())
                    .map_err(|e| self.storage(e))?
                    .is_some()
                {
                    return Err(LedgerError::DuplicateId(record.ticket_id.clone()));
                }
                table
                    .insert(record.ticket_id.as_str(), codec::encode(record).as_slice())
                    .map_err(|e| self.storage(e))?;
            }
        }
        txn.commit().map_err(|e| self.storage(e))?;
        let mut live = self.lock();
        for record in records {
            live.insert(record.ticket_id.clone(), live_of(record));
        }
        Ok(())
    }

    /// Marks tickets released on behalf of `caller`; returns how many the ledger knew (ids it
    /// never minted are not counted). If `caller` may not release one of the known tickets
    /// ([`TicketRecord::may_release`]), nothing is released.
    pub fn release(&self, caller: &PublicKey, ticket_ids: &[String]) -> Result<u32, LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.storage(e))?;
        let mut known = 0;
        {
            let mut table = txn.open_table(TICKETS).map_err(|e| self.storage(e))?;
            for id in ticket_ids {
                let record: Option<TicketRecord> = match table
                    .get(id.as_str())
                    .map_err(|e| self.storage(e))?
                {
                    Some(bytes) => Some(codec::decode(bytes.value()).map_err(|e| self.storage(e))?),
                    None => None,
                };
                let Some(mut record) = record else { continue };
                if !record.may_release(caller) {
                    // Dropping the transaction uncommitted releases nothing.
                    return Err(LedgerError::NotReleasable(Box::new(ReleaseRefusal {
                        ticket_id: record.ticket_id,
                        caller: *caller,
                        principal: record.principal,
                        requester: record.requester,
                        node: record.node,
                    })));
                }
                known += 1;
                if !record.released {
                    record.released = true;
                    table
                        .insert(id.as_str(), codec::encode(&record).as_slice())
                        .map_err(|e| self.storage(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.storage(e))?;
        let mut live = self.lock();
        for id in ticket_ids {
            live.remove(id);
        }
        Ok(known)
    }

    /// Every record.
    pub fn all(&self) -> Result<Vec<TicketRecord>, LedgerError> {
        let txn = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = txn.open_table(TICKETS).map_err(|e| self.storage(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.storage(e))? {
            let (_, bytes) = entry.map_err(|e| self.storage(e))?;
            out.push(codec::decode(bytes.value()).map_err(|e| self.storage(e))?);
        }
        Ok(out)
    }

    /// What is outstanding at `now`: per node, per principal and per principals' federation
    /// (from the in-memory index of unreleased tickets, so no record is decoded).
    /// Tickets past their end by more than [`FORGET_AFTER_SECS`] leave the in-memory index
    /// here (their durable records stay), so it holds what can still count, not every ticket
    /// ever minted.
    pub fn outstanding(&self, now: u64) -> Result<Outstanding, LedgerError> {
        let mut out = Outstanding::default();
        let mut live = self.lock();
        let horizon = now.saturating_sub(FORGET_AFTER_SECS);
        live.retain(|_, t| t.not_after > horizon);
        for t in live.values().filter(|t| now < t.not_after) {
            let node = out.by_node.entry(t.node).or_default();
            *node = node.checked_add(&t.resources).unwrap_or(*node);
            let usage = out.by_principal.entry(t.principal).or_default();
            usage.slivers = usage.slivers.saturating_add(1);
            usage.total = usage.total.checked_add(&t.resources).unwrap_or(usage.total);
            if let Some(federation) = &t.principal_federation {
                let total = match out.by_federation.get_mut(&**federation) {
                    Some(total) => total,
                    None => out.by_federation.entry(federation.to_string()).or_default(),
                };
                *total = total.checked_add(&t.resources).unwrap_or(*total);
            }
            if let Some(authority) = t.principal_authority {
                let total = out.by_authority.entry(authority).or_default();
                *total = total.checked_add(&t.resources).unwrap_or(*total);
            }
        }
        Ok(out)
    }
}

/// Outstanding tickets summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outstanding {
    /// Per node.
    pub by_node: BTreeMap<PublicKey, Resources>,
    /// Per principal.
    pub by_principal: BTreeMap<PublicKey, Usage>,
    /// Resources per federation name of the principals (tickets whose principal's federation
    /// is recorded), for people: two federations may share a name.
    pub by_federation: BTreeMap<String, Resources>,
    /// Resources per federation of the principals, by authority key (tickets whose
    /// principal's authority is recorded): what a peering agreement's `max_total` counts.
    pub by_authority: BTreeMap<PublicKey, Resources>,
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;

    use super::*;

    fn record(id: &str, not_after: u64) -> TicketRecord {
        TicketRecord {
            ticket_id: id.into(),
            node: test_key(1).public(),
            principal: test_key(50).public(),
            requester: Some(test_key(60).public()),
            principal_federation: Some("ple".into()),
            principal_authority: Some(test_key(101).public()),
            slice: "s".into(),
            resources: Resources {
                cpu_millis: 100,
                ..Resources::ZERO
            },
            issued_at: 0,
            not_after,
            price: 0,
            released: false,
        }
    }

    /// Two peer federations of one name (two testbeds' `ple`) are two totals: by key.
    #[test]
    fn federations_of_one_name_count_apart_by_authority() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = TicketLedger::open(&dir.path().join("tickets.redb")).unwrap();
        let mut other = record("b", 100);
        other.principal = test_key(51).public();
        other.principal_authority = Some(test_key(102).public());
        ledger.record_all(&[record("a", 100), other]).unwrap();
        let out = ledger.outstanding(10).unwrap();
        assert_eq!(out.by_federation["ple"].cpu_millis, 200, "one name");
        assert_eq!(out.by_authority.len(), 2, "two federations");
        assert_eq!(out.by_authority[&test_key(101).public()].cpu_millis, 100);
        assert_eq!(out.by_authority[&test_key(102).public()].cpu_millis, 100);
    }

    #[test]
    fn outstanding_survives_restart_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tickets.redb");
        {
            let ledger = TicketLedger::open(&path).unwrap();
            ledger
                .record_all(&[record("a", 100), record("b", 50)])
                .unwrap();
        }
        let ledger = TicketLedger::open(&path).unwrap();
        let out = ledger.outstanding(10).unwrap();
        assert_eq!(out.by_node[&test_key(1).public()].cpu_millis, 200);
        assert_eq!(out.by_principal[&test_key(50).public()].slivers, 2);
        assert_eq!(out.by_federation["ple"].cpu_millis, 200);
        assert_eq!(out.by_authority[&test_key(101).public()].cpu_millis, 200);
        assert_eq!(
            ledger.outstanding(60).unwrap().by_node[&test_key(1).public()].cpu_millis,
            100
        );
        assert!(matches!(
            ledger.record_all(&[record("c", 1), record("a", 1)]),
            Err(LedgerError::DuplicateId(_))
        ));
        assert_eq!(
            ledger.all().unwrap().len(),
            2,
            "a failed batch writes nothing"
        );
        assert_eq!(
            ledger
                .release(&test_key(50).public(), &["a".into(), "zz".into()])
                .unwrap(),
            1
        );
        assert!(ledger.outstanding(10).unwrap().by_node[&test_key(1).public()].cpu_millis == 100);
        assert_eq!(
            ledger.outstanding(10).unwrap().by_federation["ple"].cpu_millis,
            100
        );
        // Long past their end, tickets leave the index; their records stay.
        ledger.outstanding(50 + FORGET_AFTER_SECS + 1).unwrap();
        assert!(ledger.lock().is_empty());
        assert_eq!(ledger.all().unwrap().len(), 2);
    }

    #[test]
    fn only_the_principal_the_requester_or_the_node_may_release() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = TicketLedger::open(&dir.path().join("tickets.redb")).unwrap();
        let ids = ["p", "r", "n", "x"].map(String::from);
        ledger
            .record_all(&ids.clone().map(|id| record(&id, 100)))
            .unwrap();
        let cpu = |l: &TicketLedger| {
            l.outstanding(10)
                .unwrap()
                .by_node
                .get(&test_key(1).public())
                .map_or(0, |r| r.cpu_millis)
        };
        // A stranger is refused, naming the rule's parties, and a batch that includes a
        // ticket it may not release releases none of them.
        let stranger = test_key(99).public();
        match ledger.release(&stranger, &ids[..2]).unwrap_err() {
            LedgerError::NotReleasable(refusal) => {
                let ReleaseRefusal {
                    ticket_id,
                    caller,
                    principal,
                    requester,
                    node,
                } = *refusal;
                assert_eq!(ticket_id, "p");
                assert_eq!(caller, stranger);
                assert_eq!(principal, test_key(50).public());
                assert_eq!(requester, Some(test_key(60).public()));
                assert_eq!(node, test_key(1).public());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cpu(&ledger), 400);
        assert!(ledger.all().unwrap().iter().all(|r| !r.released));
        // Unknown ids are not the stranger's business either way: nothing known, nothing done.
        assert_eq!(ledger.release(&stranger, &["zz".into()]).unwrap(), 0);
        // The principal, the requester and the node each may.
        for (who, id) in [(50, "p"), (60, "r"), (1, "n")] {
            assert_eq!(
                ledger
                    .release(&test_key(who).public(), &[id.into()])
                    .unwrap(),
                1
            );
        }
        assert_eq!(cpu(&ledger), 100);
        // A record without a requester (written before it was kept) is the principal's or
        // the node's to release.
        let mut old = record("old", 100);
        old.requester = None;
        ledger.record_all(&[old]).unwrap();
        assert!(matches!(
            ledger.release(&test_key(60).public(), &["old".into()]),
            Err(LedgerError::NotReleasable(r)) if r.requester.is_none()
        ));
        assert_eq!(
            ledger
                .release(&test_key(1).public(), &["old".into()])
                .unwrap(),
            1
        );
        // State survives a restart: released stays released.
        drop(ledger);
        let ledger = TicketLedger::open(&dir.path().join("tickets.redb")).unwrap();
        assert_eq!(cpu(&ledger), 100);
    }
}
