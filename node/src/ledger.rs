//! The node's durable ledger (redb): leases and the ticket spend ledger.
//!
//! How a redeem flows through it:
//! 1. [`Ledger::reserve`]: the ticket's spend is checked (a ticket id is spent up to its grant
//!    and never more, whatever copies exist), the sliver id must be free, and
//!    [`Capacity::admit`] decides against what the live leases commit; the lease is written as
//!    `Pending` and the spend recorded.
//! 2. The caller creates the sliver.
//! 3. [`Ledger::activate`] marks the lease `Active` with the sliver's address; only then is the
//!    signed lease returned. If creation failed, [`Ledger::abort`] removes the lease and refunds
//!    the spend.
//!
//! On restart, `Pending` leases are the ones whose client never got an answer: the caller
//! re-adopts or aborts them (see `reconcile` in the daemon).
//!
//! **Group commit.** Every change is an [`Op`] applied by one writer at a time. A caller
//! queues its op; if no batch is being written it becomes the writer, takes every op queued so
//! far and applies them in order in one redb write transaction, committed once with
//! `Durability::Immediate` (one fsync for the whole batch); otherwise it waits for the writer,
//! which answers every op of its batch only after that commit. Ops queued meanwhile form the next
//! batch. So concurrent redeems share fsyncs, each op still sees every op before it (two
//! redeems of one ticket in one batch: the second is refused), and no answer is given before
//! its change is durable. An op refused by a check writes nothing (every check precedes every
//! write), so it does not disturb the others in its batch; if the commit fails, every op of the
//! batch fails.
//!
//! **Lease events.** Every change to a lease that its holder would want to know of is written,
//! in the same transaction as the change, as a numbered [`LeaseEvent`] to the `lease_events`
//! table: created (activation), renewed, released (by the holder), and, through
//! [`Ledger::end`] and [`Ledger::note_sliver`], reaped, lost, ended early and frozen or thawed.
//! At most [`MAX_EVENTS`] are kept, the oldest dropped first; [`Ledger::events`] reads a
//! holder's (the node protocol's `Events`).
//!
//! **Index.** What the live leases commit, which sliver ids they hold and each lease's share of
//! both are mirrored in memory (`Index`, built at open, changed only by the writer), so a
//! reservation and the ad's commitments never decode the whole lease table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use capability_schema::protocol::{LeaseEvent, LeaseEventKind, LeaseEvents};
use capability_schema::{Lease, PublicEndpoint, PublicKey, Rejection, Resources, codec};
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, Table, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::admission::{Capacity, Commitments};

const LEASES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("leases");
const SPENT: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("spent");
const EVENTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("lease_events");

/// The most lease events the ledger keeps; beyond, the oldest are dropped.
pub const MAX_EVENTS: u64 = 20_000;

/// A lease event as the ledger keeps it: with the holder it may be shown to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EventRecord {
    holder: PublicKey,
    event: LeaseEvent,
}

/// Errors of the ledger.
#[derive(Debug, Clone, thiserror::Error)]
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

/// One change to the ledger, applied by the writer inside a batch (see the module docs).
#[derive(Debug, Clone)]
pub enum Op {
    /// Step 1 of a redeem.
    Reserve {
        /// The node's capacity and shares.
        capacity: Capacity,
        /// The lease to reserve.
        reservation: Box<Reservation>,
        /// Unix seconds.
        now: u64,
    },
    /// Step 3 of a redeem: the lease becomes active with the sliver's address.
    Activate {
        /// The lease.
        lease_id: String,
        /// The sliver's address.
        address: Option<String>,
        /// Where the Internet reaches it.
        public: Option<PublicEndpoint>,
    },
    /// A failed redeem: the pending lease goes, its spend is refunded.
    Abort {
        /// The lease.
        lease_id: String,
    },
    /// The lease's end moves to `until` (bounded by its ticket's end).
    Renew {
        /// The lease.
        lease_id: String,
        /// Who asks (must hold the lease).
        caller: PublicKey,
        /// The end asked.
        until: u64,
        /// Unix seconds.
        now: u64,
    },
    /// The holder gives the lease up.
    Release {
        /// The lease.
        lease_id: String,
        /// Who asks (must hold the lease).
        caller: PublicKey,
    },
    /// The lease goes (expired, released, orphaned); the spend stays spent.
    Remove {
        /// The lease.
        lease_id: String,
    },
    /// The lease goes as [`Op::Remove`], and its holder is told why with an event.
    End {
        /// The lease.
        lease_id: String,
        /// Reaped, lost or ended.
        kind: LeaseEventKind,
        /// Why, in a sentence.
        reason: Option<String>,
    },
    /// Something happened to the sliver `sliver_id` (frozen, thawed): an event for its lease,
    /// if a live lease holds it; nothing else changes.
    Note {
        /// The sliver.
        sliver_id: String,
        /// What happened.
        kind: LeaseEventKind,
        /// Why, in a sentence.
        reason: Option<String>,
    },
}

/// What the live leases hold, mirrored in memory (see the module docs).
#[derive(Debug, Default)]
struct Index {
    /// Each lease's agent, resources, sliver id and ticket id.
    leases: BTreeMap<String, (PublicKey, Resources, String, String)>,
    /// How many live leases each ticket paid for (tickets with none are absent).
    tickets: BTreeMap<String, u32>,
    /// The number the next lease event gets.
    next_event: u64,
    /// The sliver ids held.
    slivers: BTreeSet<String>,
    /// The sum of the leases' resources, in all and per agent.
    committed: Commitments,
}

impl Index {
    fn insert(&mut self, record: &LeaseRecord) -> Option<()> {
        let lease = &record.lease;
        self.committed.add(lease.agent, &lease.resources)?;
        self.slivers.insert(record.sliver_id.clone());
        *self.tickets.entry(lease.ticket_id.clone()).or_default() += 1;
        self.leases.insert(
            lease.lease_id.clone(),
            (
                lease.agent,
                lease.resources,
                record.sliver_id.clone(),
                lease.ticket_id.clone(),
            ),
        );
        Some(())
    }

    fn remove(&mut self, lease_id: &str) {
        if let Some((agent, resources, sliver_id, ticket_id)) = self.leases.remove(lease_id) {
            self.committed.remove(&agent, &resources);
            self.slivers.remove(&sliver_id);
            if let Some(live) = self.tickets.get_mut(&ticket_id) {
                *live = live.saturating_sub(1);
                if *live == 0 {
                    self.tickets.remove(&ticket_id);
                }
            }
        }
    }
}

/// The queue of ops waiting for the writer.
#[derive(Debug, Default)]
struct Queue {
    /// Ops not yet taken by a writer, with their tickets.
    waiting: Vec<(u64, Op)>,
    /// Answers not yet collected, by ticket.
    answers: BTreeMap<u64, Result<Option<LeaseRecord>, LedgerError>>,
    /// The next ticket.
    next: u64,
    /// Whether a writer is applying a batch.
    writing: bool,
}

/// Counters of the group commit, for benchmarks and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Write transactions committed (one fsync each).
    pub batches: u64,
    /// Ops applied in them.
    pub ops: u64,
}

/// The node's ledger.
#[derive(Debug)]
pub struct Ledger {
    db: Database,
    path: PathBuf,
    index: Mutex<Index>,
    queue: Mutex<Queue>,
    answered: Condvar,
    stats: Mutex<CommitStats>,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let storage = |detail: String| LedgerError::Storage {
            path: path.to_owned(),
            detail,
        };
        let db = Database::create(path).map_err(|e| storage(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| storage(e.to_string()))?;
        txn.open_table(LEASES).map_err(|e| storage(e.to_string()))?;
        txn.open_table(SPENT).map_err(|e| storage(e.to_string()))?;
        txn.open_table(EVENTS).map_err(|e| storage(e.to_string()))?;
        txn.commit().map_err(|e| storage(e.to_string()))?;
        let ledger = Ledger {
            db,
            path: path.to_owned(),
            index: Mutex::default(),
            queue: Mutex::default(),
            answered: Condvar::new(),
            stats: Mutex::default(),
        };
        *relock(&ledger.index) = ledger.load_index()?;
        Ok(ledger)
    }

    fn storage(&self, e: impl std::fmt::Display) -> LedgerError {
        LedgerError::Storage {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    fn load_index(&self) -> Result<Index, LedgerError> {
        let mut index = Index::default();
        for record in self.leases()? {
            index
                .insert(&record)
                .ok_or_else(|| self.storage("commitments overflow"))?;
        }
        let txn = self.db.begin_read().map_err(|e| self.storage(e))?;
        let events = txn.open_table(EVENTS).map_err(|e| self.storage(e))?;
        index.next_event = match events.last().map_err(|e| self.storage(e))? {
            Some((seq, _)) => seq.value().saturating_add(1),
            None => 1,
        };
        Ok(index)
    }

    /// Step 1 of a redeem: check the spend and admission, write the lease as pending.
    pub fn reserve(
        &self,
        capacity: &Capacity,
        r: &Reservation,
        now: u64,
    ) -> Result<(), LedgerError> {
        self.submit(Op::Reserve {
            capacity: capacity.clone(),
            reservation: Box::new(r.clone()),
            now,
        })
        .map(drop)
    }

    /// Step 3 of a redeem: the sliver exists; the lease becomes active with its address.
    pub fn activate(
        &self,
        lease_id: &str,
        address: Option<String>,
        public: Option<PublicEndpoint>,
    ) -> Result<LeaseRecord, LedgerError> {
        self.submit(Op::Activate {
            lease_id: lease_id.to_owned(),
            address,
            public,
        })
        .and_then(|r| r.ok_or_else(|| self.storage("activate returned no lease")))
    }

    /// A failed redeem: remove the pending lease and refund the ticket's spend.
    pub fn abort(&self, lease_id: &str) -> Result<(), LedgerError> {
        self.submit(Op::Abort {
            lease_id: lease_id.to_owned(),
        })
        .map(drop)
    }

    /// Extends a lease to `until`, bounded by its ticket's end; returns the lease as renewed.
    pub fn renew(
        &self,
        lease_id: &str,
        caller: &PublicKey,
        until: u64,
        now: u64,
    ) -> Result<LeaseRecord, LedgerError> {
        self.submit(Op::Renew {
            lease_id: lease_id.to_owned(),
            caller: *caller,
            until,
            now,
        })
        .and_then(|r| r.ok_or_else(|| self.storage("renew returned no lease")))
    }

    /// Removes a lease the caller holds and returns it (the caller tears its sliver down).
    pub fn release(&self, lease_id: &str, caller: &PublicKey) -> Result<LeaseRecord, LedgerError> {
        self.submit(Op::Release {
            lease_id: lease_id.to_owned(),
            caller: *caller,
        })
        .and_then(|r| r.ok_or_else(|| self.storage("release returned no lease")))
    }

    /// Removes a lease (expired, released, or orphaned); the spend stays spent.
    pub fn remove(&self, lease_id: &str) -> Result<(), LedgerError> {
        self.submit(Op::Remove {
            lease_id: lease_id.to_owned(),
        })
        .map(drop)
    }

    /// Removes a lease as [`Ledger::remove`] does and records why for its holder (`kind`:
    /// reaped, lost or ended).
    pub fn end(
        &self,
        lease_id: &str,
        kind: LeaseEventKind,
        reason: Option<String>,
    ) -> Result<(), LedgerError> {
        self.submit(Op::End {
            lease_id: lease_id.to_owned(),
            kind,
            reason,
        })
        .map(drop)
    }

    /// Records that something happened to sliver `sliver_id` (frozen, thawed) as an event of
    /// the live lease holding it; nothing when none does.
    pub fn note_sliver(
        &self,
        sliver_id: &str,
        kind: LeaseEventKind,
        reason: Option<String>,
    ) -> Result<(), LedgerError> {
        self.submit(Op::Note {
            sliver_id: sliver_id.to_owned(),
            kind,
            reason,
        })
        .map(drop)
    }

    /// `holder`'s lease events numbered above `after`, oldest first, of one slice or all,
    /// at most [`LeaseEvents::MAX`] (then `more` says others follow).
    pub fn events(
        &self,
        holder: &PublicKey,
        slice: Option<&str>,
        after: u64,
    ) -> Result<LeaseEvents, LedgerError> {
        let txn = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = txn.open_table(EVENTS).map_err(|e| self.storage(e))?;
        let mut out = LeaseEvents::default();
        for entry in table
            .range(after.saturating_add(1)..)
            .map_err(|e| self.storage(e))?
        {
            let (_, bytes) = entry.map_err(|e| self.storage(e))?;
            let record: EventRecord = codec::decode(bytes.value()).map_err(|e| self.storage(e))?;
            if record.holder != *holder || slice.is_some_and(|s| s != record.event.slice) {
                continue;
            }
            if out.events.len() == LeaseEvents::MAX {
                out.more = true;
                break;
            }
            out.events.push(record.event);
        }
        Ok(out)
    }

    /// Writes an event of `lease` (inside the writer's transaction), dropping the oldest
    /// beyond [`MAX_EVENTS`].
    fn record_event(
        &self,
        tables: &mut Tables<'_>,
        index: &mut Index,
        lease: &Lease,
        kind: LeaseEventKind,
        end: Option<u64>,
        reason: Option<String>,
    ) -> Result<(), LedgerError> {
        let seq = index.next_event.max(1);
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let record = EventRecord {
            holder: lease.holder,
            event: LeaseEvent {
                seq,
                at_ms,
                lease_id: lease.lease_id.clone(),
                slice: lease.slice.clone(),
                kind,
                end,
                reason,
            },
        };
        tables
            .events
            .insert(seq, codec::encode(&record).as_slice())
            .map_err(|e| self.storage(e))?;
        index.next_event = seq.saturating_add(1);
        while tables.events.len().map_err(|e| self.storage(e))? > MAX_EVENTS {
            tables.events.pop_first().map_err(|e| self.storage(e))?;
        }
        Ok(())
    }

    /// Applies `op` durably (group commit, see the module docs) and returns the lease it
    /// changed, if any.
    pub fn submit(&self, op: Op) -> Result<Option<LeaseRecord>, LedgerError> {
        let mut queue = relock(&self.queue);
        let ticket = queue.next;
        queue.next += 1;
        queue.waiting.push((ticket, op));
        loop {
            if let Some(answer) = queue.answers.remove(&ticket) {
                return answer;
            }
            if queue.writing {
                queue = self
                    .answered
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            // This caller writes the next batch: every op queued so far (its own included).
            queue.writing = true;
            let batch = std::mem::take(&mut queue.waiting);
            drop(queue);
            // A panicking writer must not leave the others waiting forever.
            let tickets: Vec<u64> = batch.iter().map(|(t, _)| *t).collect();
            let answers =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.write_batch(batch)))
                    .unwrap_or_else(|_| {
                        if let Ok(fresh) = self.load_index() {
                            *relock(&self.index) = fresh;
                        }
                        let failed = self.storage("the ledger writer panicked");
                        tickets.iter().map(|t| (*t, Err(failed.clone()))).collect()
                    });
            queue = relock(&self.queue);
            queue.writing = false;
            queue.answers.extend(answers);
            self.answered.notify_all();
        }
    }

    /// Applies a batch in one write transaction and commits it once.
    fn write_batch(
        &self,
        batch: Vec<(u64, Op)>,
    ) -> Vec<(u64, Result<Option<LeaseRecord>, LedgerError>)> {
        let mut index = relock(&self.index);
        let mut answers = Vec::with_capacity(batch.len());
        let written = (|| -> Result<(), LedgerError> {
            let mut txn = self.db.begin_write().map_err(|e| self.storage(e))?;
            txn.set_durability(Durability::Immediate);
            {
                let mut tables = Tables {
                    leases: txn.open_table(LEASES).map_err(|e| self.storage(e))?,
                    spent: txn.open_table(SPENT).map_err(|e| self.storage(e))?,
                    events: txn.open_table(EVENTS).map_err(|e| self.storage(e))?,
                };
                for (ticket, op) in &batch {
                    match self.apply(&mut tables, &mut index, op) {
                        Err(LedgerError::Storage { path, detail }) => {
                            return Err(LedgerError::Storage { path, detail });
                        }
                        answer => answers.push((*ticket, answer)),
                    }
                }
            }
            txn.commit().map_err(|e| self.storage(e))
        })();
        if let Err(e) = written {
            // Nothing of the batch is durable: every op fails and the index is rebuilt from
            // what is.
            match self.load_index() {
                Ok(fresh) => *index = fresh,
                Err(e) => tracing::error!(error = %e, "ledger index not rebuilt"),
            }
            return batch.iter().map(|(t, _)| (*t, Err(e.clone()))).collect();
        }
        let mut stats = relock(&self.stats);
        stats.batches += 1;
        stats.ops += batch.len() as u64;
        answers
    }

    /// Applies one op inside the writer's transaction. A refusal writes nothing.
    fn apply(
        &self,
        tables: &mut Tables<'_>,
        index: &mut Index,
        op: &Op,
    ) -> Result<Option<LeaseRecord>, LedgerError> {
        match op {
            Op::Reserve {
                capacity,
                reservation,
                now,
            } => self.apply_reserve(tables, index, capacity, reservation, *now),
            Op::Activate {
                lease_id,
                address,
                public,
            } => {
                let record = self.apply_update(tables, lease_id, |record| {
                    record.state = LeaseState::Active;
                    record.lease.address = address.clone();
                    record.lease.public = public.clone();
                    Ok(())
                })?;
                let end = Some(record.lease.end);
                self.record_event(
                    tables,
                    index,
                    &record.lease,
                    LeaseEventKind::Created,
                    end,
                    None,
                )?;
                Ok(Some(record))
            }
            Op::Abort { lease_id } => {
                let Some(record) = self.take(tables, index, lease_id)? else {
                    return Ok(None);
                };
                let ticket_id = record.lease.ticket_id.as_str();
                if let Some(mut spend) = self.spend_in(&tables.spent, ticket_id)? {
                    spend.spent = spend.spent.saturating_sub(&record.lease.resources);
                    spend.leases.retain(|l| l != lease_id);
                    tables
                        .spent
                        .insert(ticket_id, codec::encode(&spend).as_slice())
                        .map_err(|e| self.storage(e))?;
                }
                Ok(None)
            }
            Op::Renew {
                lease_id,
                caller,
                until,
                now,
            } => {
                let record = self.apply_update(tables, lease_id, |record| {
                    renewal(record, caller, *until, *now)
                })?;
                let end = Some(record.lease.end);
                self.record_event(
                    tables,
                    index,
                    &record.lease,
                    LeaseEventKind::Renewed,
                    end,
                    None,
                )?;
                Ok(Some(record))
            }
            Op::Release { lease_id, caller } => {
                let record = self.record_in(&tables.leases, lease_id)?.ok_or_else(|| {
                    Rejection::UnknownLease {
                        lease_id: lease_id.clone(),
                    }
                })?;
                check_holder(&record, caller)?;
                self.take(tables, index, lease_id)?;
                self.record_event(
                    tables,
                    index,
                    &record.lease,
                    LeaseEventKind::Released,
                    None,
                    None,
                )?;
                Ok(Some(record))
            }
            Op::Remove { lease_id } => self.take(tables, index, lease_id),
            Op::End {
                lease_id,
                kind,
                reason,
            } => {
                let record = self.take(tables, index, lease_id)?;
                if let Some(r) = &record {
                    self.record_event(tables, index, &r.lease, *kind, None, reason.clone())?;
                }
                Ok(record)
            }
            Op::Note {
                sliver_id,
                kind,
                reason,
            } => {
                let lease_id = index
                    .leases
                    .iter()
                    .find(|(_, (_, _, sliver, _))| sliver == sliver_id)
                    .map(|(id, _)| id.clone());
                let Some(lease_id) = lease_id else {
                    return Ok(None);
                };
                let Some(record) = self.record_in(&tables.leases, &lease_id)? else {
                    return Ok(None);
                };
                self.record_event(tables, index, &record.lease, *kind, None, reason.clone())?;
                Ok(Some(record))
            }
        }
    }

    fn apply_reserve(
        &self,
        tables: &mut Tables<'_>,
        index: &mut Index,
        capacity: &Capacity,
        r: &Reservation,
        now: u64,
    ) -> Result<Option<LeaseRecord>, LedgerError> {
        let ticket_id = r.lease.ticket_id.as_str();
        let mut spend = self
            .spend_in(&tables.spent, ticket_id)?
            .unwrap_or_else(|| SpendRecord {
                grant: r.grant,
                ..SpendRecord::default()
            });
        let after = spend.spent.checked_add(&r.lease.resources);
        let Some(after) = after.filter(|after| after.fits_within(&r.grant.min(&spend.grant)))
        else {
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
        };
        if index.slivers.contains(&r.sliver_id) {
            return Err(Rejection::Policy {
                rule: "one-sliver-per-slice".into(),
                detail: format!(
                    "slice {} already has a sliver on this node; renew its lease instead",
                    r.lease.slice
                ),
            }
            .into());
        }
        capacity.admit(&index.committed, &r.lease.agent, &r.lease.resources, now)?;
        // Checks done; from here on the op writes.
        spend.spent = after;
        spend.leases.push(r.lease.lease_id.clone());
        let record = LeaseRecord {
            lease: r.lease.clone(),
            state: LeaseState::Pending,
            sliver_id: r.sliver_id.clone(),
            ticket_not_after: r.ticket_not_after,
            renewable: r.renewable,
        };
        tables
            .spent
            .insert(ticket_id, codec::encode(&spend).as_slice())
            .map_err(|e| self.storage(e))?;
        tables
            .leases
            .insert(r.lease.lease_id.as_str(), codec::encode(&record).as_slice())
            .map_err(|e| self.storage(e))?;
        index
            .insert(&record)
            .ok_or_else(|| self.storage("commitments overflow"))?;
        Ok(None)
    }

    /// Changes one lease record; a refusal by `change` writes nothing.
    fn apply_update(
        &self,
        tables: &mut Tables<'_>,
        lease_id: &str,
        change: impl Fn(&mut LeaseRecord) -> Result<(), Rejection>,
    ) -> Result<LeaseRecord, LedgerError> {
        let mut record =
            self.record_in(&tables.leases, lease_id)?
                .ok_or_else(|| Rejection::UnknownLease {
                    lease_id: lease_id.to_owned(),
                })?;
        change(&mut record)?;
        tables
            .leases
            .insert(lease_id, codec::encode(&record).as_slice())
            .map_err(|e| self.storage(e))?;
        Ok(record)
    }

    /// Removes a lease from the table and the index; returns it if it was there.
    fn take(
        &self,
        tables: &mut Tables<'_>,
        index: &mut Index,
        lease_id: &str,
    ) -> Result<Option<LeaseRecord>, LedgerError> {
        let removed = tables
            .leases
            .remove(lease_id)
            .map_err(|e| self.storage(e))?;
        let record = match removed {
            Some(bytes) => Some(codec::decode(bytes.value()).map_err(|e| self.storage(e))?),
            None => None,
        };
        index.remove(lease_id);
        Ok(record)
    }

    /// The value stored under `key` in `table`, decoded.
    fn decoded_in<T: serde::de::DeserializeOwned>(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Option<T>, LedgerError> {
        match table.get(key).map_err(|e| self.storage(e))? {
            Some(bytes) => Ok(Some(
                codec::decode(bytes.value()).map_err(|e| self.storage(e))?,
            )),
            None => Ok(None),
        }
    }

    fn record_in(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        lease_id: &str,
    ) -> Result<Option<LeaseRecord>, LedgerError> {
        self.decoded_in(table, lease_id)
    }

    fn spend_in(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        ticket_id: &str,
    ) -> Result<Option<SpendRecord>, LedgerError> {
        self.decoded_in(table, ticket_id)
    }

    /// One lease.
    pub fn get(&self, lease_id: &str) -> Result<Option<LeaseRecord>, LedgerError> {
        let txn = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = txn.open_table(LEASES).map_err(|e| self.storage(e))?;
        self.record_in(&table, lease_id)
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
        self.spend_in(&table, ticket_id)
    }

    /// How many live (pending or active) leases ticket `ticket_id` paid for (from the
    /// in-memory index).
    pub fn live_leases_of(&self, ticket_id: &str) -> u32 {
        relock(&self.index)
            .tickets
            .get(ticket_id)
            .copied()
            .unwrap_or(0)
    }

    /// What the live leases commit, in all and per agent (from the in-memory index).
    pub fn commitments(&self) -> Commitments {
        relock(&self.index).committed.clone()
    }

    /// The group commit's counters so far.
    pub fn commit_stats(&self) -> CommitStats {
        *relock(&self.stats)
    }

    /// Leases whose end has passed at `now`.
    pub fn expired(&self, now: u64) -> Result<Vec<LeaseRecord>, LedgerError> {
        Ok(self
            .leases()?
            .into_iter()
            .filter(|r| r.lease.is_over(now))
            .collect())
    }
}

/// The tables a batch writes.
struct Tables<'txn> {
    leases: Table<'txn, &'static str, &'static [u8]>,
    spent: Table<'txn, &'static str, &'static [u8]>,
    events: Table<'txn, u64, &'static [u8]>,
}

fn renewal(
    record: &mut LeaseRecord,
    caller: &PublicKey,
    until: u64,
    now: u64,
) -> Result<(), Rejection> {
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
                scope: Default::default(),
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
                public: None,
                start: 0,
                end: 100,
                net: Default::default(),
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
    fn concurrent_batches_refuse_double_spends_and_the_index_matches_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let ledger = Arc::new(Ledger::open(&path).unwrap());
        // 16 threads, 4 tickets: each ticket is presented 4 times at once.
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let ledger = Arc::clone(&ledger);
                std::thread::spawn(move || {
                    let mut r = reservation(&format!("l{i}"), &format!("t{}", i % 4), 100);
                    r.sliver_id = format!("sliver-t{}", i % 4);
                    ledger.reserve(&capacity(), &r, 0).is_ok()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(wins, 4);
        let stats = ledger.commit_stats();
        assert!(stats.batches >= 1 && stats.ops == 16, "{stats:?}");
        let leases = ledger.leases().unwrap();
        ledger.abort(&leases[0].lease.lease_id).unwrap();
        ledger.remove(&leases[1].lease.lease_id).unwrap();
        assert_eq!(ledger.commitments().total, cpu(200));
        drop(ledger);
        let reopened = Ledger::open(&path).unwrap();
        assert_eq!(reopened.commitments().total, cpu(200));
        assert_eq!(reopened.leases().unwrap().len(), 2);
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
        ledger
            .activate("l1", Some("10.0.0.2".into()), None)
            .unwrap();
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
            ledger.activate("l1", None, None).unwrap();
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
        assert_eq!(ledger.commitments().total, cpu(100));
    }

    #[test]
    fn lease_changes_are_events_for_their_holder_only_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        let holder = test_key(50).public();
        let kinds = |events: &LeaseEvents| -> Vec<(String, LeaseEventKind)> {
            events
                .events
                .iter()
                .map(|e| (e.lease_id.clone(), e.kind))
                .collect()
        };
        {
            let ledger = Ledger::open(&path).unwrap();
            for id in ["l1", "l2", "l3"] {
                ledger
                    .reserve(&capacity(), &reservation(id, id, 100), 0)
                    .unwrap();
                ledger.activate(id, None, None).unwrap();
            }
            ledger.renew("l1", &holder, 150, 10).unwrap();
            ledger
                .note_sliver("sliver-l2", LeaseEventKind::Frozen, Some("over".into()))
                .unwrap();
            // A sliver no lease holds: nothing to record.
            ledger
                .note_sliver("sliver-none", LeaseEventKind::Frozen, None)
                .unwrap();
            ledger.release("l1", &holder).unwrap();
            ledger
                .end("l2", LeaseEventKind::Reaped, Some("end".into()))
                .unwrap();
            // An unknown lease ends without an event.
            ledger.end("l9", LeaseEventKind::Lost, None).unwrap();
            let all = ledger.events(&holder, None, 0).unwrap();
            assert!(!all.more);
            assert_eq!(
                kinds(&all),
                [
                    ("l1", LeaseEventKind::Created),
                    ("l2", LeaseEventKind::Created),
                    ("l3", LeaseEventKind::Created),
                    ("l1", LeaseEventKind::Renewed),
                    ("l2", LeaseEventKind::Frozen),
                    ("l1", LeaseEventKind::Released),
                    ("l2", LeaseEventKind::Reaped),
                ]
                .map(|(l, k)| (l.to_owned(), k))
            );
            assert_eq!(all.events[0].end, Some(100));
            assert_eq!(all.events[3].end, Some(150));
            assert_eq!(all.events[4].reason.as_deref(), Some("over"));
            let seqs: Vec<u64> = all.events.iter().map(|e| e.seq).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
            // Another principal sees none of them; a slice filter keeps its own.
            assert!(
                ledger
                    .events(&test_key(51).public(), None, 0)
                    .unwrap()
                    .events
                    .is_empty()
            );
            assert!(
                ledger
                    .events(&holder, Some("t"), 0)
                    .unwrap()
                    .events
                    .is_empty()
            );
            let after = ledger.events(&holder, Some("s"), seqs[4]).unwrap();
            assert_eq!(kinds(&after).len(), 2);
        }
        // Reopened, the numbering goes on after the last event.
        let ledger = Ledger::open(&path).unwrap();
        let before = ledger.events(&holder, None, 0).unwrap().events;
        ledger
            .end("l3", LeaseEventKind::Ended, Some("revoked".into()))
            .unwrap();
        let after = ledger.events(&holder, None, 0).unwrap().events;
        assert_eq!(after.len(), before.len() + 1);
        let last = after.last().unwrap();
        assert_eq!(last.kind, LeaseEventKind::Ended);
        assert!(last.seq > before.last().unwrap().seq);
    }
}
