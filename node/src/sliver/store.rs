//! Per-sliver records on disk, so a restarted node can re-adopt its slivers.
//!
//! One JSON file per sliver, `<state>/records/<id>.json`, written to a temp file and renamed
//! (atomic). The record says everything needed to find and tear down what the sliver holds:
//! its slot-derived names, uid range, init pid and start time, cgroup and dirs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::alloc::SlotAssignment;
use super::caps::CapMask;
use super::host::{NetAttach, Shape};
use super::rootfs::{DiskBacking, SliverDirs};
use super::spec::SliverSpec;

/// A store error, with the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a record.
    #[error("decoding {path}: {detail}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        detail: String,
    },
}

/// Everything the node knows about a live sliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliverRecord {
    /// What was asked.
    pub spec: SliverSpec,
    /// The slot and what follows from it (uid range, addresses, names).
    pub slot: SlotAssignment,
    /// Host dirs.
    pub dirs: SliverDirs,
    /// The cgroup path, relative to each hierarchy.
    pub cgroup: String,
    /// The network attachment.
    pub net: NetAttach,
    /// The egress bucket.
    pub shape: Shape,
    /// Capabilities root holds in the sliver.
    pub caps: CapMask,
    /// The init's pid on the host.
    pub init_pid: u32,
    /// The init's start time (against pid reuse).
    pub init_start_time: u64,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// What backs its writable layer (records from before this field: a directory).
    #[serde(default)]
    pub disk_backing: DiskBacking,
}

/// The directory of records.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (and makes) `<state>/records`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("records");
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(Store { dir })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes a record atomically.
    pub fn save(&self, record: &SliverRecord) -> Result<(), StoreError> {
        let path = self.path(record.spec.id.as_str());
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(record).map_err(|e| StoreError::Decode {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        fs::write(&tmp, text).map_err(|source| StoreError::Io {
            op: "write",
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, &path).map_err(|source| StoreError::Io {
            op: "rename",
            path: path.clone(),
            source,
        })
    }

    /// Removes a record (absent is fine).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io {
                op: "remove",
                path,
                source,
            }),
        }
    }

    /// Every record, with the files that could not be read.
    pub fn load_all(&self) -> Result<(Vec<SliverRecord>, Vec<StoreError>), StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| StoreError::Io {
            op: "list",
            path: self.dir.clone(),
            source,
        })?;
        let mut records = Vec::new();
        let mut bad = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<SliverRecord>(&bytes) {
                    Ok(r) => records.push(r),
                    Err(e) => bad.push(StoreError::Decode {
                        path,
                        detail: e.to_string(),
                    }),
                },
                Err(source) => bad.push(StoreError::Io {
                    op: "read",
                    path,
                    source,
                }),
            }
        }
        records.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        Ok((records, bad))
    }
}
