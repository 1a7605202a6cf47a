//! The service manager's local state (paper §4.2.4: "slice description, unredeemed tickets,
//! and valid leases … used to recover from partial completion"), in redb.
//!
//! Where: `--state-dir`, else `$PLANETMESH_STATE`, else `$XDG_DATA_HOME/planetmesh`, else
//! `~/.local/share/planetmesh`; the database is `slicectl.redb` there.
//!
//! Tables (CBOR values):
//! - `slices`: name → [`SliceRecord`] (the request as sent, the first lease's length);
//! - `tickets`: `name/ticket id` → [`TicketEntry`]: written before any redeem is tried, removed
//!   in the same transaction that stores the lease it became;
//! - `leases`: `name/node` → [`LeaseEntry`]: the node's signed lease and how to reach it.
//!
//! A crash or an unreachable node between acquiring and redeeming leaves tickets here;
//! `slicectl slice sync` redeems them later.

use std::path::{Path, PathBuf};

use capability_schema::protocol::IssuedTicket;
use capability_schema::{Lease, PublicKey, Signed, SliceRequest, codec};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const SLICES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("slices");
const TICKETS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tickets");
const LEASES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("leases");

/// The database's file name in the state directory.
pub const STATE_FILE: &str = "slicectl.redb";

/// Errors of the local state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database failed (or another slicectl holds it).
    #[error("local state {path}: {detail}")]
    Storage {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// No such slice.
    #[error("no slice {0:?} in the local state (see `slicectl slice list`)")]
    NoSlice(String),
    /// The slice exists already.
    #[error(
        "slice {0:?} exists in the local state; `slicectl slice delete {0}` first, or `slicectl slice sync {0}`"
    )]
    Exists(String),
}

/// A slice as created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceRecord {
    /// The request as sent.
    pub request: SliceRequest,
    /// The first lease's length, when shorter than the tickets.
    pub lease_secs: Option<u64>,
    /// Unix seconds of creation.
    pub created_at: u64,
}

/// A ticket not yet redeemed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketEntry {
    /// The ticket as the agent issued it.
    pub ticket: IssuedTicket,
    /// The node's site (from the plan).
    pub site: String,
    /// Unix seconds the ticket's window ends.
    pub not_after: u64,
}

/// A lease held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEntry {
    /// The lease as the node signed it.
    pub signed: Signed<Lease>,
    /// Its body.
    pub lease: Lease,
    /// The node's addresses.
    pub addresses: Vec<String>,
    /// The node's site.
    pub site: String,
    /// The ticket's end: renewals go no further.
    pub ticket_not_after: u64,
}

impl LeaseEntry {
    /// How output names the node (see [`node_label`]).
    pub fn label(&self) -> String {
        node_label(&self.site, &self.lease.node)
    }
}

/// How output names a node: its ad's name, else `site/short key` (see [`crate::nodes`]).
pub fn node_label(site: &str, node: &PublicKey) -> String {
    crate::nodes::label(site, node)
}

/// The default state directory.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PLANETMESH_STATE").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    if let Some(data) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(data).join("planetmesh"));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|home| PathBuf::from(home).join(".local/share/planetmesh"))
}

/// The local state.
#[derive(Debug)]
pub struct State {
    db: Database,
    path: PathBuf,
}

fn key(slice: &str, id: &str) -> String {
    format!("{slice}/{id}")
}

fn prefix_range(slice: &str) -> (String, String) {
    // '/' + 1 == '0': every key "slice/…" sorts between these.
    (format!("{slice}/"), format!("{slice}0"))
}

impl State {
    /// Opens (or creates) the state in `dir`.
    pub fn open(dir: &Path) -> Result<State, StateError> {
        let path = dir.join(STATE_FILE);
        let fail = |detail: String| StateError::Storage {
            path: path.clone(),
            detail,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| fail(e.to_string()))?;
        let txn = db.begin_write().map_err(|e| fail(e.to_string()))?;
        for table in [SLICES, TICKETS, LEASES] {
            txn.open_table(table).map_err(|e| fail(e.to_string()))?;
        }
        txn.commit().map_err(|e| fail(e.to_string()))?;
        Ok(State { db, path })
    }

    fn fail(&self, e: impl std::fmt::Display) -> StateError {
        StateError::Storage {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(|e| self.fail(e))?;
        f(&txn)?;
        txn.commit().map_err(|e| self.fail(e))
    }

    fn read_prefix<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<'_, &str, &[u8]>,
        slice: &str,
    ) -> Result<Vec<T>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = txn.open_table(table).map_err(|e| self.fail(e))?;
        let (start, end) = prefix_range(slice);
        let mut out = Vec::new();
        for entry in table
            .range(start.as_str()..end.as_str())
            .map_err(|e| self.fail(e))?
        {
            let (_, value) = entry.map_err(|e| self.fail(e))?;
            out.push(codec::decode(value.value()).map_err(|e| self.fail(e))?);
        }
        Ok(out)
    }

    /// Records a new slice; refuses a name in use.
    pub fn create_slice(&self, record: &SliceRecord) -> Result<(), StateError> {
        let name = record.request.name.clone();
        self.write(|txn| {
            let mut t = txn.open_table(SLICES).map_err(|e| self.fail(e))?;
            if t.get(name.as_str()).map_err(|e| self.fail(e))?.is_some() {
                return Err(StateError::Exists(name.clone()));
            }
            t.insert(name.as_str(), codec::encode(record).as_slice())
                .map_err(|e| self.fail(e))?;
            Ok(())
        })
    }

    /// Replaces the record of a slice that exists (its tickets and leases stay as they are).
    pub fn replace_slice(&self, record: &SliceRecord) -> Result<(), StateError> {
        let name = record.request.name.clone();
        self.write(|txn| {
            let mut t = txn.open_table(SLICES).map_err(|e| self.fail(e))?;
            if t.get(name.as_str()).map_err(|e| self.fail(e))?.is_none() {
                return Err(StateError::NoSlice(name.clone()));
            }
            t.insert(name.as_str(), codec::encode(record).as_slice())
                .map_err(|e| self.fail(e))?;
            Ok(())
        })
    }

    /// One slice.
    pub fn slice(&self, name: &str) -> Result<SliceRecord, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let t = txn.open_table(SLICES).map_err(|e| self.fail(e))?;
        let value = t
            .get(name)
            .map_err(|e| self.fail(e))?
            .ok_or_else(|| StateError::NoSlice(name.to_owned()))?;
        codec::decode(value.value()).map_err(|e| self.fail(e))
    }

    /// Every slice.
    pub fn slices(&self) -> Result<Vec<SliceRecord>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.fail(e))?;
        let t = txn.open_table(SLICES).map_err(|e| self.fail(e))?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(|e| self.fail(e))? {
            let (_, value) = entry.map_err(|e| self.fail(e))?;
            out.push(codec::decode(value.value()).map_err(|e| self.fail(e))?);
        }
        Ok(out)
    }

    /// Forgets a slice with all its tickets and leases.
    pub fn remove_slice(&self, name: &str) -> Result<(), StateError> {
        self.write(|txn| {
            txn.open_table(SLICES)
                .map_err(|e| self.fail(e))?
                .remove(name)
                .map_err(|e| self.fail(e))?;
            let (start, end) = prefix_range(name);
            for table in [TICKETS, LEASES] {
                let mut t = txn.open_table(table).map_err(|e| self.fail(e))?;
                t.retain_in(start.as_str()..end.as_str(), |_, _| false)
                    .map_err(|e| self.fail(e))?;
            }
            Ok(())
        })
    }

    /// Stores tickets of `slice`, all in one transaction (before redeeming any).
    pub fn add_tickets(&self, slice: &str, tickets: &[TicketEntry]) -> Result<(), StateError> {
        self.write(|txn| {
            let mut t = txn.open_table(TICKETS).map_err(|e| self.fail(e))?;
            for entry in tickets {
                t.insert(
                    key(slice, &entry.ticket.ticket_id).as_str(),
                    codec::encode(entry).as_slice(),
                )
                .map_err(|e| self.fail(e))?;
            }
            Ok(())
        })
    }

    /// The unredeemed tickets of `slice`.
    pub fn tickets(&self, slice: &str) -> Result<Vec<TicketEntry>, StateError> {
        self.read_prefix(TICKETS, slice)
    }

    /// Forgets a ticket.
    pub fn remove_ticket(&self, slice: &str, ticket_id: &str) -> Result<(), StateError> {
        self.write(|txn| {
            txn.open_table(TICKETS)
                .map_err(|e| self.fail(e))?
                .remove(key(slice, ticket_id).as_str())
                .map_err(|e| self.fail(e))?;
            Ok(())
        })
    }

    /// A ticket became a lease: one transaction removes the one and stores the other.
    pub fn redeemed(
        &self,
        slice: &str,
        ticket_id: &str,
        lease: &LeaseEntry,
    ) -> Result<(), StateError> {
        self.write(|txn| {
            txn.open_table(TICKETS)
                .map_err(|e| self.fail(e))?
                .remove(key(slice, ticket_id).as_str())
                .map_err(|e| self.fail(e))?;
            txn.open_table(LEASES)
                .map_err(|e| self.fail(e))?
                .insert(
                    key(slice, &lease.lease.node.to_string()).as_str(),
                    codec::encode(lease).as_slice(),
                )
                .map_err(|e| self.fail(e))?;
            Ok(())
        })
    }

    /// Stores (or replaces) a lease.
    pub fn put_lease(&self, slice: &str, lease: &LeaseEntry) -> Result<(), StateError> {
        self.write(|txn| {
            txn.open_table(LEASES)
                .map_err(|e| self.fail(e))?
                .insert(
                    key(slice, &lease.lease.node.to_string()).as_str(),
                    codec::encode(lease).as_slice(),
                )
                .map_err(|e| self.fail(e))?;
            Ok(())
        })
    }

    /// The leases of `slice`.
    pub fn leases(&self, slice: &str) -> Result<Vec<LeaseEntry>, StateError> {
        self.read_prefix(LEASES, slice)
    }

    /// Forgets the lease of `slice` on `node`.
    pub fn remove_lease(&self, slice: &str, node: &PublicKey) -> Result<(), StateError> {
        self.write(|txn| {
            txn.open_table(LEASES)
                .map_err(|e| self.fail(e))?
                .remove(key(slice, &node.to_string()).as_str())
                .map_err(|e| self.fail(e))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;
    use capability_schema::protocol::TicketBytes;
    use capability_schema::slice::{SliceConstraints, SliceKind, SliverTarget};
    use capability_schema::{AcquireMode, Resources};

    use super::*;

    fn record(name: &str) -> SliceRecord {
        SliceRecord {
            request: SliceRequest {
                name: name.into(),
                principal: test_key(1).public(),
                principal_federation: "plc".into(),
                kind: SliceKind::Regular,
                per_sliver: Resources::ZERO,
                target: SliverTarget::Count(2),
                constraints: SliceConstraints::default(),
                duration_secs: 60,
                mode: AcquireMode::AllOrNothing,
                net: Default::default(),
            },
            lease_secs: None,
            created_at: 1,
        }
    }

    fn ticket(id: &str, node: u8) -> TicketEntry {
        TicketEntry {
            ticket: IssuedTicket {
                node: test_key(node).public(),
                federation: "plc".into(),
                agent: test_key(20).public(),
                ticket_id: id.into(),
                ticket: TicketBytes(vec![1]),
                price: 0,
                addresses: vec![],
            },
            site: "s".into(),
            not_after: 100,
        }
    }

    fn lease(node: u8) -> LeaseEntry {
        let key = test_key(node);
        let body = Lease {
            lease_id: format!("l{node}"),
            ticket_id: "t".into(),
            node: key.public(),
            federation: "plc".into(),
            agent: test_key(20).public(),
            slice: "a_b".into(),
            kind: SliceKind::Regular,
            holder: test_key(1).public(),
            resources: Resources::ZERO,
            address: None,
            public: None,
            start: 0,
            end: 10,
            net: Default::default(),
        };
        LeaseEntry {
            signed: Signed::sign(&key, &body),
            lease: body,
            addresses: vec![],
            site: "s".into(),
            ticket_not_after: 100,
        }
    }

    #[test]
    fn tickets_become_leases_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = State::open(dir.path()).unwrap();
            s.create_slice(&record("a_b")).unwrap();
            s.create_slice(&record("a_bc")).unwrap();
            assert!(matches!(
                s.create_slice(&record("a_b")),
                Err(StateError::Exists(_))
            ));
            s.add_tickets("a_b", &[ticket("t1", 2), ticket("t2", 3)])
                .unwrap();
            s.add_tickets("a_bc", &[ticket("t9", 4)]).unwrap();
            s.redeemed("a_b", "t1", &lease(2)).unwrap();
        }
        let s = State::open(dir.path()).unwrap();
        assert_eq!(s.tickets("a_b").unwrap().len(), 1);
        assert_eq!(s.tickets("a_bc").unwrap().len(), 1, "prefixes do not leak");
        assert_eq!(s.leases("a_b").unwrap()[0].lease.lease_id, "l2");
        s.remove_slice("a_b").unwrap();
        assert!(matches!(s.slice("a_b"), Err(StateError::NoSlice(_))));
        assert!(s.tickets("a_b").unwrap().is_empty());
        assert!(s.leases("a_b").unwrap().is_empty());
        assert_eq!(s.slices().unwrap().len(), 1);
        assert_eq!(s.tickets("a_bc").unwrap().len(), 1);
        // A record is replaced in place, its tickets kept; only an existing one.
        let mut smaller = record("a_bc");
        smaller.request.target = SliverTarget::Count(1);
        s.replace_slice(&smaller).unwrap();
        assert_eq!(s.slice("a_bc").unwrap(), smaller);
        assert_eq!(s.tickets("a_bc").unwrap().len(), 1);
        assert!(matches!(
            s.replace_slice(&record("a_b")),
            Err(StateError::NoSlice(_))
        ));
    }
}
