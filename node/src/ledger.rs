//! The node's durable ledger (redb): leases and the ticket spend ledger.
//!
//! How a redeem flows through it:
//! 1. [`Ledger::reserve`], one write transaction: the ticket's spend is checked (a ticket id is
//!    spent up to its grant and never more, whatever copies exist), commitments are summed over
//!    the live leases and [`Capacity::admit`] decides; the lease is written as `Pending` and the
//!    spend recorded. redb serializes write transactions, so two clients redeeming the same
//!    ticket at the same instant get exactly one reservation.
//! 2. The caller creates the sliver.
//! 3. [`Ledger::activate`] marks the lease `Active` with the sliver's address; only then is the
//!    signed lease returned. If creation failed, [`Ledger::abort`] removes the lease and refunds
//!    the spend.
//!
//! On restart, `Pending` leases are the ones whose client never got an answer: the caller
//! re-adopts or aborts them (see `reconcile` in the daemon).

use std::path::{Path, PathBuf};

use capability_schema::{Lease, PublicKey, Rejection, Resources, codec};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::admission::{Capacity, Commitments};

const LEASES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("leases");
const SPENT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("spent");

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The request was refused (admission, spend, holder, renewal).
    #[error(transparent)]
    Refused(#[from] Rejection),
    /// The database failed.
    #[error("ledger {path}: {detail}")]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Reserved; the sliver is being created; the client has no answer yet.
    Pending,
    /// The sliver exists and the client has (or may have) the signed lease.
    Active,
}

/// A lease as the node keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The lease (unsigned; the node signs it when it answers).
    pub lease: Lease,
    /// Pending or active.
    pub state: LeaseState,
    /// The sliver backing it.
    pub sliver_id: String,
    /// The ticket's end: renewals stop there.
    pub ticket_not_after: u64,
    /// Whether the ticket allows renewal.
    pub renewable: bool,
}

/// What a ticket has spent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRecord {
    /// The ticket's effective grant.
    pub grant: Resources,
    /// What has been spent (never above the grant).
    pub spent: Resources,
    /// The leases it paid for.
    pub leases: Vec<String>,
}

/// A reservation request: a verified ticket's essentials and the lease to create.
#[derive(Debug, Clone)]
pub struct Reservation {
    /// The lease to write (its address is filled at activation).
    pub lease: Lease,
    /// The ticket's effective grant.
    pub grant: Resources,
    /// The ticket's end.
    pub ticket_not_after: u64,
    /// Whether the ticket allows renewal.
    pub renewable: bool,
    /// The sliver id the caller will create.
    pub sliver_id: String,
}

/// The node's ledger.
#[derive(Debug)]
pub struct Ledger {
    db: Database,
    path: PathBuf,
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let storage = |detail: String| LedgerError::Storage {
            path: path.to_owned(),
            detail,
        };
        let db = Database::create(path).map_err(|e| storage(e.to_string()))?;
        let ledger = Ledger {
            db,
            path: path.to_owned(),
        };
        let txn = ledger
            .db
            .begin_write()
            .map_err(|e| storage(e.to_string()))?;
        txn.open_table(LEASES).map_err(|e| storage(e.to_string()))?;
        txn.open_table(SPENT).map_err(|e| storage(e.to_string()))?;
        txn.commit().map_err(|e| storage(e.to_string()))?;
        Ok(ledger)
    }

    fn storage(&self, e: impl std::fmt::Display) -> LedgerError {
        LedgerError::Storage {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    /// Step 1 of a redeem: check the spend and admission, write the lease as pending.
    pub fn reserve(
        &self,
        capacity: &Capacity,
        r: &Reservation,
        now: u64,
    ) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.storage(e))?;
        {
            let mut spent_table = txn.open_table(SPENT).map_err(|e| self.storage(e))?;
            let mut leases = txn.open_table(LEASES).map_err(|e| self.storage(e))?;
            let ticket_id = r.lease.ticket_id.as_str();
            let mut spend: SpendRecord =
                match spent_table.get(ticket_id).map_err(|e| self.storage(e))? {
                    Some(bytes) => codec::decode(bytes.value()).map_err(|e| self.storage(e))?,
                    None => SpendRecord {
                        grant: r.grant,
                        ..SpendRecord::default()
                    },
                };
            let after = spend.spent.checked_add(&r.lease.resources);
            if after.is_none_or(|after| !after.fits_within(&r.grant.min(&spend.grant))) {
                return Err(Rejection::AlreadySpent {
                    ticket_id: r.lease.ticket_id.clone(),
                    detail: format!(
                        "{} spent of {} granted, by lease(s) {}",
                        spend.spent,
                        spend.grant,
                        spend.leases.join(", ")
                    ),
                }
                .into());
            }
            if lease_records(&leases, &self.path)?
                .iter()
                .any(|l| l.sliver_id == r.sliver_id)
            {
                return Err(Rejection::Policy {
                    rule: "one-sliver-per-slice".into(),
                    detail: format!(
                        "slice {} already has a sliver on this node; renew its lease instead",
                        r.lease.slice
                    ),
                }
                .into());
            }
            let committed = commitments_in(&leases, &self.path)?;
            capacity.admit(&committed, &r.lease.agent, &r.lease.resources, now)?;
            spend.spent = after.unwrap_or(spend.spent);
            spend.leases.push(r.lease.lease_id.clone());
            let record = LeaseRecord {
                lease: r.lease.clone(),
                state: LeaseState::Pending,
                sliver_id: r.sliver_id.clone(),
                ticket_not_after: r.ticket_not_after,
                renewable: r.renewable,
            };
            spent_table
                .insert(ticket_id, codec::encode(&spend).as_slice())
                .map_err(|e| self.storage(e))?;
            leases
                .insert(r.lease.lease_id.as_str(), codec::encode(&record).as_slice())
                .map_err(|e| self.storage(e))?;
        }
        txn.commit().map_err(|e| self.storage(e))
    }

    /// Step 3 of a redeem: the sliver exists; the lease becomes active with its address.
    pub fn activate(
        &self,
        lease_id: &str,
        address: Option<String>,
    ) -> Result<LeaseRecord, LedgerError> {
        self.update(lease_id, |record| {
            record.state = LeaseState::Active;
            record.lease.address = address.clone();
            Ok(())
        })
    }

    /// A failed redeem: remove the pending lease and refund the ticket's spend.
    pub fn abort(&self, lease_id: &str) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.storage(e))?;
        {
            let mut leases = txn.open_table(LEASES).map_err(|e| self.storage(e))?;
            let mut spent_table = txn.open_table(SPENT).map_err(|e| self.storage(e))?;
            let record: Option<LeaseRecord> =
                match leases.remove(lease_id).map_err(|e| self.storage(e))? {
                    Some(bytes) => Some(codec::decode(bytes.value()).map_err(|e| self.storage(e))?),
                    None => None,
                };
            if let Some(record) = record {
                let ticket_id = record.lease.ticket_id.as_str();
                let spend: Option<SpendRecord> = match spent_table
                    .get(ticket_id)
                    .map_err(|e| self.storage(e))?
                {
                    Some(bytes) => Some(codec::decode(bytes.value()).map_err(|e| self.storage(e))?),
                    None => None,
                };
                if let Some(mut spend) = spend {
                    spend.spent = spend.spent.saturating_sub(&record.lease.resources);
                    spend.leases.retain(|l| l != lease_id);
                    spent_table
                        .insert(ticket_id, codec::encode(&spend).as_slice())
                        .map_err(|e| self.storage(e))?;
                }
            }
        }
        txn.commit().map_err(|e| self.storage(e))
    }

    /// Extends a lease to `until`, bounded by its ticket's end; returns the lease as renewed.
    pub fn renew(
        &self,
        lease_id: &str,
        caller: &PublicKey,
        until: u64,
        now: u64,
    ) -> Result<LeaseRecord, LedgerError> {
        self.update(lease_id, |record| {
            check_holder(record, caller)?;
            if !record.renewable {
                return Err(Rejection::Ticket {
                    check: "operation_not_allowed".into(),
                    detail: "the ticket of this lease does not allow renewal".into(),
                });
            }
            if until > record.ticket_not_after {
                return Err(Rejection::RenewPastTicket {
                    asked: until,
                    not_after: record.ticket_not_after,
                });
            }
            if record.lease.is_over(now) {
                return Err(Rejection::UnknownLease {
                    lease_id: record.lease.lease_id.clone(),
                });
            }
            record.lease.end = record.lease.end.max(until);
            Ok(())
        })
    }

    /// Removes a lease the caller holds and returns it (the caller tears its sliver down).
    pub fn release(&self, lease_id: &str, caller: &PublicKey) -> Result<LeaseRecord, LedgerError> {
        let record = self.get(lease_id)?.ok_or_else(|| Rejection::UnknownLease {
            lease_id: lease_id.to_owned(),
        })?;
        check_holder(&record, caller)?;
        self.remove(lease_id)?;
        Ok(record)
    }

    /// Removes a lease (expired, released, or orphaned); the spend stays spent.
    pub fn remove(&self, lease_id: &str) -> Result<(), LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.storage(e))?;
        txn.open_table(LEASES)
            .map_err(|e| self.storage(e))?
            .remove(lease_id)
            .map_err(|e| self.storage(e))?;
        txn.commit().map_err(|e| self.storage(e))
    }

    /// One lease.
    pub fn get(&self, lease_id: &str) -> Result<Option<LeaseRecord>, LedgerError> {
        let txn = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = txn.open_table(LEASES).map_err(|e| self.storage(e))?;
        match table.get(lease_id).map_err(|e| self.storage(e))? {
            Some(bytes) => Ok(Some(
                codec::decode(bytes.value()).map_err(|e| self.storage(e))?,
            )),
            None => Ok(None),
        }
    }

    /// Every lease.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>, LedgerError> {
        let txn = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = txn.open_table(LEASES).map_err(|e| self.storage(e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.storage(e))? {
            let (_, bytes) = entry.map_err(|e| self.storage(e))?;
            out.push(codec::decode(bytes.value()).map_err(|e| self.storage(e))?);
        }
        Ok(out)
    }

    /// What a ticket has spent.
    pub fn spend(&self, ticket_id: &str) -> Result<Option<SpendRecord>, LedgerError> {
        let txn = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = txn.open_table(SPENT).map_err(|e| self.storage(e))?;
        match table.get(ticket_id).map_err(|e| self.storage(e))? {
            Some(bytes) => Ok(Some(
                codec::decode(bytes.value()).map_err(|e| self.storage(e))?,
            )),
            None => Ok(None),
        }
    }

    /// What the live leases commit, in all and per agent.
    pub fn commitments(&self) -> Result<Commitments, LedgerError> {
        let txn = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = txn.open_table(LEASES).map_err(|e| self.storage(e))?;
        commitments_in(&table, &self.path)
    }

    /// Leases whose end has passed at `now`.
    pub fn expired(&self, now: u64) -> Result<Vec<LeaseRecord>, LedgerError> {
        Ok(self
            .leases()?
            .into_iter()
            .filter(|r| r.lease.is_over(now))
            .collect())
    }

    fn update(
        &self,
        lease_id: &str,
        change: impl Fn(&mut LeaseRecord) -> Result<(), Rejection>,
    ) -> Result<LeaseRecord, LedgerError> {
        let txn = self.db.begin_write().map_err(|e| self.storage(e))?;
        let record = {
            let mut table = txn.open_table(LEASES).map_err(|e| self.storage(e))?;
            let mut record: LeaseRecord = match table.get(lease_id).map_err(|e| self.storage(e))? {
                Some(bytes) => codec::decode(bytes.value()).map_err(|e| self.storage(e))?,
                None => {
                    return Err(Rejection::UnknownLease {
                        lease_id: lease_id.to_owned(),
                    }
                    .into());
                }
            };
            change(&mut record)?;
            table
                .insert(lease_id, codec::encode(&record).as_slice())
                .map_err(|e| self.storage(e))?;
            record
        };
        txn.commit().map_err(|e| self.storage(e))?;
        Ok(record)
    }
}

fn check_holder(record: &LeaseRecord, caller: &PublicKey) -> Result<(), Rejection> {
    if record.lease.holder != *caller {
        return Err(Rejection::NotHolder {
            lease_id: record.lease.lease_id.clone(),
            holder: record.lease.holder,
        });
    }
    Ok(())
}

fn lease_records(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    path: &Path,
) -> Result<Vec<LeaseRecord>, LedgerError> {
    let storage = |detail: String| LedgerError::Storage {
        path: path.to_owned(),
        detail,
    };
    let mut out = Vec::new();
    for entry in table.iter().map_err(|e| storage(e.to_string()))? {
        let (_, bytes) = entry.map_err(|e| storage(e.to_string()))?;
        out.push(codec::decode(bytes.value()).map_err(|e| storage(e.to_string()))?);
    }
    Ok(out)
}

fn commitments_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    path: &Path,
) -> Result<Commitments, LedgerError> {
    let mut committed = Commitments::default();
    for record in lease_records(table, path)? {
        committed
            .add(record.lease.agent, &record.lease.resources)
            .ok_or_else(|| LedgerError::Storage {
                path: path.to_owned(),
                detail: "commitments overflow".into(),
            })?;
    }
    Ok(committed)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use capability_schema::SliceKind;
    use capability_schema::identity::test_key;

    use super::*;
    use crate::admission::Share;

    fn cpu(millis: u64) -> Resources {
        Resources {
            cpu_millis: millis,
            ..Resources::ZERO
        }
    }

    fn capacity() -> Capacity {
        let mut shares = BTreeMap::new();
        shares.insert(
            test_key(10).public(),
            Share {
                limit: cpu(2000),
                not_after: u64::MAX,
            },
        );
        Capacity {
            node: test_key(1).public(),
            total: cpu(4000),
            shares,
        }
    }

    fn reservation(lease_id: &str, ticket_id: &str, millis: u64) -> Reservation {
        Reservation {
            lease: Lease {
                lease_id: lease_id.into(),
                ticket_id: ticket_id.into(),
                node: test_key(1).public(),
                federation: "plc".into(),
                agent: test_key(10).public(),
                slice: "s".into(),
                kind: SliceKind::Regular,
                holder: test_key(50).public(),
                resources: cpu(millis),
                address: None,
                start: 0,
                end: 100,
            },
            grant: cpu(millis),
            ticket_not_after: 200,
            renewable: true,
            sliver_id: format!("sliver-{lease_id}"),
        }
    }

    #[test]
    fn a_ticket_is_spent_once_and_refunded_on_abort() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.redb")).unwrap();
        ledger
            .reserve(&capacity(), &reservation("l1", "t1", 500), 0)
            .unwrap();
        let err = ledger
            .reserve(&capacity(), &reservation("l2", "t1", 500), 0)
            .unwrap_err();
        assert!(
            matches!(err, LedgerError::Refused(Rejection::AlreadySpent { .. })),
            "{err:?}"
        );
        ledger.abort("l1").unwrap();
        assert!(ledger.get("l1").unwrap().is_none());
        ledger
            .reserve(&capacity(), &reservation("l3", "t1", 500), 0)
            .unwrap();
        assert_eq!(
            ledger.spend("t1").unwrap().unwrap().leases,
            vec!["l3".to_owned()]
        );
    }

    #[test]
    fn concurrent_redeems_of_one_ticket_yield_one_lease() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.redb")).unwrap());
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let ledger = Arc::clone(&ledger);
                std::thread::spawn(move || {
                    ledger
                        .reserve(&capacity(), &reservation(&format!("l{i}"), "same", 500), 0)
                        .is_ok()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(wins, 1);
        assert_eq!(ledger.leases().unwrap().len(), 1);
    }

    #[test]
    fn admission_counts_live_leases_and_release_frees() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(&dir.path().join("ledger.redb")).unwrap();
        ledger
            .reserve(&capacity(), &reservation("l1", "t1", 1500), 0)
            .unwrap();
        let err = ledger
            .reserve(&capacity(), &reservation("l2", "t2", 1000), 0)
            .unwrap_err();
        assert!(
            matches!(
                err,
                LedgerError::Refused(Rejection::OverShare { in_use: 1500, .. })
            ),
            "{err:?}"
        );
        ledger.activate("l1", Some("10.0.0.2".into())).unwrap();
        let err = ledger.release("l1", &test_key(51).public()).unwrap_err();
        assert!(matches!(
            err,
            LedgerError::Refused(Rejection::NotHolder { .. })
        ));
        ledger.release("l1", &test_key(50).public()).unwrap();
        ledger
            .reserve(&capacity(), &reservation("l2", "t2", 1000), 0)
            .unwrap();
    }

    #[test]
    fn renew_is_bounded_by_the_ticket_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        {
            let ledger = Ledger::open(&path).unwrap();
            ledger
                .reserve(&capacity(), &reservation("l1", "t1", 100), 0)
                .unwrap();
            ledger.activate("l1", None).unwrap();
            let err = ledger
                .renew("l1", &test_key(50).public(), 201, 10)
                .unwrap_err();
            assert!(matches!(
                err,
                LedgerError::Refused(Rejection::RenewPastTicket { not_after: 200, .. })
            ));
            assert_eq!(
                ledger
                    .renew("l1", &test_key(50).public(), 150, 10)
                    .unwrap()
                    .lease
                    .end,
                150
            );
        }
        let ledger = Ledger::open(&path).unwrap();
        let record = ledger.get("l1").unwrap().unwrap();
        assert_eq!((record.state, record.lease.end), (LeaseState::Active, 150));
        assert_eq!(ledger.expired(149).unwrap().len(), 0);
        assert_eq!(ledger.expired(150).unwrap().len(), 1);
        assert_eq!(ledger.commitments().unwrap().total, cpu(100));
    }
}
