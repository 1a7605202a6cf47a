//! Claims on the host resources that several nodes on one machine would otherwise share, so
//! that each node uses, and its orphan sweep removes, only what is its own.
//!
//! A node's engine claims, when it opens: its state dir, its cgroup parent, its sliver uid
//! range, its host-side link names (the veth prefix and the shaping device, in its network
//! namespace) and its address pool (in that namespace). Each claim is one file in a host-wide
//! directory ([`DEFAULT_CLAIM_DIR`], on a tmpfs: claims end with the boot, as slivers do),
//! named after the resource and saying who claimed it (node id, state dir, records dir, pid).
//!
//! A claim is held by an exclusive `flock` on its file for the life of the [`Claims`] value
//! (the engine); the kernel drops the lock when the process dies. The file stays after that:
//! a node that stopped still owns what its slivers use, since they outlive it. Claims are
//! taken all or none, under a lock on the directory:
//! - an existing claim that conflicts with a wanted one (the same resource, or one that
//!   overlaps it: a cgroup parent and its ancestors and descendants, uid ranges or address
//!   pools that intersect, link prefixes one of which begins the other or a link name, in the
//!   same network namespace) and is held refuses the take, with an error naming the holder and
//!   the setting to change;
//! - one that is not held (its process is gone) is taken over when it was this node's (the
//!   same state dir), or when its node has no sliver record left; otherwise the take is
//!   refused, since that node's slivers may still run.
//!
//! [`Claims::retire`] (a decommissioned node, every sliver gone) removes the files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capability_schema::PublicKey;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// Where claims live unless configured otherwise.
pub const DEFAULT_CLAIM_DIR: &str = "/run/planetmesh/claims";

/// The directory-wide lock taken while claims are checked and taken.
const DIR_LOCK: &str = ".lock";
/// How long a take waits for the directory lock.
const DIR_LOCK_WAIT: Duration = Duration::from_secs(10);

/// A short stable id of a node: the first 8 hex digits of its public key. Its cgroup parent,
/// default veth prefix and preferred uid range derive from it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

impl NodeId {
    /// Checks an id: exactly 8 lowercase hex digits.
    pub fn new(text: impl Into<String>) -> Result<NodeId, ClaimError> {
        let text = text.into();
        if text.len() == 8 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(NodeId(text))
        } else {
            Err(ClaimError::InvalidNodeId(text))
        }
    }

    /// The id of the node with `key`.
    pub fn of_key(key: &PublicKey) -> NodeId {
        NodeId(
            key.as_bytes()[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a number (to spread derived values).
    pub fn number(&self) -> u32 {
        u32::from_str_radix(&self.0, 16).unwrap_or(0)
    }

    /// This node's own cgroup parent under `parent`: `<parent>/<id>.node`. The name holds a
    /// dot, which no sliver id can, so no node's orphan sweep ever takes it for a sliver's.
    pub fn cgroup_parent(&self, parent: &str) -> String {
        let parent = parent.trim_matches('/');
        if parent.is_empty() {
            format!("{}.node", self.0)
        } else {
            format!("{parent}/{}.node", self.0)
        }
    }

    /// The default prefix of this node's host-side veth names: `pm<5 hex digits of the id>v`
    /// (8 bytes, so names with a slot number fit in 15).
    pub fn ifname_prefix(&self) -> String {
        format!("pm{}v", &self.0[..5])
    }
}

impl TryFrom<String> for NodeId {
    type Error = ClaimError;
    fn try_from(text: String) -> Result<Self, ClaimError> {
        NodeId::new(text)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The network namespace of the calling thread (its nsfs inode), which scopes link names and
/// addresses.
pub fn current_netns() -> Result<u64, ClaimError> {
    let path = Path::new("/proc/thread-self/ns/net");
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(io_err("reading the network namespace of", path))
}

/// Something on the host that one node at a time may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Resource {
    /// A node's state directory (canonical path).
    State {
        /// The directory.
        dir: PathBuf,
    },
    /// A cgroup parent, relative to each hierarchy root (with its whole subtree).
    Cgroup {
        /// The parent.
        parent: String,
    },
    /// Host uids and gids `first..end`.
    Uids {
        /// The first id.
        first: u32,
        /// One past the last id.
        end: u64,
    },
    /// Link names `<prefix><digits>` in a network namespace.
    Links {
        /// The namespace (nsfs inode).
        netns: u64,
        /// The prefix.
        prefix: String,
    },
    /// One link name in a network namespace.
    Link {
        /// The namespace (nsfs inode).
        netns: u64,
        /// The name.
        name: String,
    },
    /// IPv4 addresses of a pool in a network namespace.
    Pool {
        /// The namespace (nsfs inode).
        netns: u64,
        /// The pool's network.
        net: Ipv4Addr,
        /// Its prefix length.
        len: u8,
    },
}

fn cgroup_within(inner: &str, outer: &str) -> bool {
    let (inner, outer) = (inner.trim_matches('/'), outer.trim_matches('/'));
    outer.is_empty()
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

impl Resource {
    /// Whether two nodes holding `self` and `other` could touch each other's slivers.
    pub fn conflicts(&self, other: &Resource) -> bool {
        use Resource::*;
        match (self, other) {
            (State { dir: a }, State { dir: b }) => a == b,
            (Cgroup { parent: a }, Cgroup { parent: b }) => {
                cgroup_within(a, b) || cgroup_within(b, a)
            }
            (Uids { first: a0, end: a1 }, Uids { first: b0, end: b1 }) => {
                u64::from(*a0) < *b1 && u64::from(*b0) < *a1
            }
            (
                Links {
                    netns: n,
                    prefix: a,
                },
                Links {
                    netns: m,
                    prefix: b,
                },
            ) => n == m && (a.starts_with(b.as_str()) || b.starts_with(a.as_str())),
            (Links { netns: n, prefix }, Link { netns: m, name })
            | (Link { netns: m, name }, Links { netns: n, prefix }) => {
                n == m && name.starts_with(prefix.as_str())
            }
            (Link { netns: n, name: a }, Link { netns: m, name: b }) => n == m && a == b,
            (
                Pool {
                    netns: n,
                    net: a,
                    len: la,
                },
                Pool {
                    netns: m,
                    net: b,
                    len: lb,
                },
            ) => {
                let shared = mask(*la.min(lb));
                n == m && u32::from(*a) & shared == u32::from(*b) & shared
            }
            _ => false,
        }
    }

    /// What the resource is, in words.
    pub fn describe(&self) -> String {
        match self {
            Resource::State { dir } => format!("state dir {}", dir.display()),
            Resource::Cgroup { parent } => format!("cgroup parent {parent}"),
            Resource::Uids { first, end } => format!("host uids {first}..{end}"),
            Resource::Links { netns, prefix } => {
                format!("link names {prefix}<n> (network namespace {netns})")
            }
            Resource::Link { netns, name } => {
                format!("link {name} (network namespace {netns})")
            }
            Resource::Pool { netns, net, len } => {
                format!("address pool {net}/{len} (network namespace {netns})")
            }
        }
    }

    /// The node setting that chooses this resource, to change when another node holds it.
    fn hint(&self) -> &'static str {
        match self {
            Resource::State { .. } => {
                "another engine runs on this state dir: stop it, or give this node its own \
                 `state_dir`"
            }
            Resource::Cgroup { .. } => "give this node another `cgroup_parent`",
            Resource::Uids { .. } => {
                "set another `uid_base` (or leave it out, so the node picks a free range)"
            }
            Resource::Links { .. } | Resource::Link { .. } => {
                "give this node another `ifname_prefix` (or leave it out: it derives from the \
                 node's key)"
            }
            Resource::Pool { .. } => {
                "give this node another `address_pool` (nodes sharing a network namespace need \
                 disjoint pools)"
            }
        }
    }

    /// The claim file's name: the resource, escaped to one path component.
    fn file_name(&self) -> String {
        let name = match self {
            Resource::State { dir } => format!("state-{}", dir.display()),
            Resource::Cgroup { parent } => format!("cgroup-{}", parent.trim_matches('/')),
            Resource::Uids { first, end } => format!("uids-{first}-{end}"),
            Resource::Links { netns, prefix } => format!("links-{netns}-{prefix}"),
            Resource::Link { netns, name } => format!("link-{netns}-{name}"),
            Resource::Pool { netns, net, len } => format!("pool-{netns}-{net}-{len}"),
        };
        let mut out = String::new();
        for b in name.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        if out.len() > 200 {
            let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            out.truncate(180);
            out.push_str(&format!("~{hash:016x}"));
        }
        out
    }
}

/// Who claims: a node, by its id and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The node.
    pub node: NodeId,
    /// Its state dir (canonical): two claims with the same one are the same node's.
    pub state_dir: PathBuf,
    /// Where its sliver records live: while any is left, its slivers may run.
    pub records_dir: PathBuf,
}

/// A claim file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClaimFile {
    node: NodeId,
    state_dir: PathBuf,
    records_dir: PathBuf,
    pid: u32,
    since: u64,
    resource: Resource,
}

/// Why claims could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// A file or directory could not be used.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Not a node id.
    #[error("invalid node id {0:?}: expected 8 lowercase hex digits")]
    InvalidNodeId(String),
    /// The claims directory could be written by others, who could then forge claims.
    #[error(
        "claims dir {path} may be written by other users (mode {mode:o}, owner {uid}): make it the node's own, mode 0755"
    )]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
        /// Its owner.
        uid: u32,
    },
    /// Another node holds the resource, or a resource that overlaps it.
    #[error(transparent)]
    Taken(Box<Conflict>),
    /// Every uid range this node could take by default is claimed.
    #[error(
        "no free uid range of {size} ids between 2^28 and 2^31: {first_blocker}; set `uid_base` \
         (or a smaller `address_pool`, which makes the range smaller)"
    )]
    NoFreeUids {
        /// Ids the node needs.
        size: u64,
        /// Why the first choice was refused.
        first_blocker: Box<ClaimError>,
    },
    /// A choice among resources was asked with nothing to choose from.
    #[error("no resource to choose from (an empty range of choices)")]
    NoChoice,
    /// The directory stayed locked.
    #[error("claims dir {path}: its lock is held for more than {secs} s")]
    DirLocked {
        /// The directory.
        path: PathBuf,
        /// How long was waited.
        secs: u64,
    },
}

/// What another node holds that a node wanted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{wanted} is taken: {theirs} is claimed by node {node} (pid {pid}, state {}){status}; \
     {hint} (claim file {})",
    state.display(),
    file.display()
)]
pub struct Conflict {
    /// What this node wanted.
    pub wanted: String,
    /// What the other node claimed.
    pub theirs: String,
    /// The other node.
    pub node: String,
    /// Its process when it claimed.
    pub pid: u32,
    /// Its state dir.
    pub state: PathBuf,
    /// Whether it runs, or why its stale claim still counts.
    pub status: &'static str,
    /// What to change.
    pub hint: String,
    /// The claim file.
    pub file: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ClaimError + use<> {
    let path = path.to_path_buf();
    move |source| ClaimError::Io { op, path, source }
}

fn open_nofollow(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Makes (or checks) the claims dir: it must be only this user's to write.
fn ensure_dir(dir: &Path) -> Result<(), ClaimError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err("creating", dir))?;
    let meta = fs::metadata(dir).map_err(io_err("reading", dir))?;
    if meta.mode() & 0o022 != 0 || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(ClaimError::UnsafeDir {
            path: dir.to_path_buf(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
        });
    }
    Ok(())
}

/// Locks the directory (for a take, a retire or a sweep of stale claims).
fn lock_dir(dir: &Path) -> Result<Flock<File>, ClaimError> {
    ensure_dir(dir)?;
    let path = dir.join(DIR_LOCK);
    let deadline = Instant::now() + DIR_LOCK_WAIT;
    let mut file = open_nofollow(&path, true).map_err(io_err("opening", &path))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(ClaimError::DirLocked {
                    path: dir.to_path_buf(),
                    secs: DIR_LOCK_WAIT.as_secs(),
                });
            }
            Err((_, errno)) => {
                return Err(ClaimError::Io {
                    op: "locking",
                    path,
                    source: errno.into(),
                });
            }
        }
    }
}

/// A claim file found in the directory.
#[derive(Debug)]
struct Existing {
    path: PathBuf,
    claim: ClaimFile,
    held: bool,
}

/// Every readable claim in the directory, and whether its lock is held.
fn scan(dir: &Path) -> Result<Vec<Existing>, ClaimError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.')
            || !entry.file_type().is_ok_and(|t| t.is_file())
        {
            continue;
        }
        let Ok(mut file) = open_nofollow(&path, false) else {
            continue;
        };
        let mut text = String::new();
        if file.read_to_string(&mut text).is_err() {
            continue;
        }
        // An unreadable file names nothing; a take of the same name still meets its lock.
        let Ok(claim) = toml::from_str::<ClaimFile>(&text) else {
            continue;
        };
        let held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(_unlocked_on_drop) => false,
            Err((_, Errno::EWOULDBLOCK)) => true,
            Err((_, errno)) => {
                return Err(ClaimError::Io {
                    op: "testing the lock of",
                    path,
                    source: errno.into(),
                });
            }
        };
        out.push(Existing { path, claim, held });
    }
    Ok(out)
}

/// Whether `records_dir` holds any sliver record (unreadable: assume it does).
fn has_records(records_dir: &Path) -> bool {
    match fs::read_dir(records_dir) {
        Ok(entries) => entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".json")),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// What the existing claims say about taking `wanted`: `Err` if one refuses it, else the
/// stale claims of other nodes it voids.
fn check<'a>(
    existing: &'a [Existing],
    owner: &Owner,
    wanted: &Resource,
) -> Result<Vec<&'a Existing>, ClaimError> {
    let mut void = Vec::new();
    for e in existing
        .iter()
        .filter(|e| e.claim.resource.conflicts(wanted))
    {
        let status = if e.held {
            ", which runs"
        } else if e.claim.state_dir == owner.state_dir {
            // This node's own, from an earlier run.
            continue;
        } else if has_records(&e.claim.records_dir) {
            ", which is not running but whose slivers may still run (it has sliver records)"
        } else {
            void.push(e);
            continue;
        };
        let mut hint = wanted.hint().to_string();
        if !e.held {
            hint.push_str(&format!(
                "; or start node {} and `nodemgr wipe` it, or remove the claim file if that node \
                 is gone for good",
                e.claim.node
            ));
        }
        return Err(ClaimError::Taken(Box::new(Conflict {
            wanted: wanted.describe(),
            theirs: e.claim.resource.describe(),
            node: e.claim.node.to_string(),
            pid: e.claim.pid,
            state: e.claim.state_dir.clone(),
            status,
            hint,
            file: e.path.clone(),
        })));
    }
    Ok(void)
}

/// A claim this process holds.
#[derive(Debug)]
struct Held {
    resource: Resource,
    path: PathBuf,
    _lock: Flock<File>,
}

/// Claims held for the life of the value (dropped: released, the files stay; see the module
/// documentation).
#[derive(Debug)]
pub struct Claims {
    dir: PathBuf,
    held: Vec<Held>,
}

impl Claims {
    /// Takes every resource in `wanted` for `owner`, or none.
    pub fn take(dir: &Path, owner: &Owner, wanted: &[Resource]) -> Result<Claims, ClaimError> {
        Self::take_inner(dir, owner, wanted, &[]).map(|(claims, _)| claims)
    }

    /// Takes every resource in `wanted` and the first of `choices` that is free (a choice this
    /// node claimed before comes first), or none; returns the choice taken.
    pub fn take_with_choice(
        dir: &Path,
        owner: &Owner,
        wanted: &[Resource],
        choices: &[Resource],
    ) -> Result<(Claims, Resource), ClaimError> {
        let (claims, choice) = Self::take_inner(dir, owner, wanted, choices)?;
        Ok((claims, choice.ok_or(ClaimError::NoChoice)?))
    }

    fn take_inner(
        dir: &Path,
        owner: &Owner,
        wanted: &[Resource],
        choices: &[Resource],
    ) -> Result<(Claims, Option<Resource>), ClaimError> {
        let _dir_lock = lock_dir(dir)?;
        let existing = scan(dir)?;
        let mut void: Vec<&Existing> = Vec::new();
        for w in wanted {
            void.extend(check(&existing, owner, w)?);
        }
        let mut all: Vec<Resource> = wanted.to_vec();
        let mut choice = None;
        if !choices.is_empty() {
            let ours = |c: &&Resource| {
                existing
                    .iter()
                    .any(|e| e.claim.state_dir == owner.state_dir && e.claim.resource == **c)
            };
            let ordered = choices
                .iter()
                .filter(ours)
                .chain(choices.iter().filter(|c| !ours(c)));
            let mut first_blocker = None;
            for c in ordered {
                match check(&existing, owner, c) {
                    Ok(v) => {
                        void.extend(v);
                        choice = Some(c.clone());
                        break;
                    }
                    Err(e) => {
                        first_blocker.get_or_insert(e);
                    }
                }
            }
            let Some(c) = &choice else {
                let size = match &choices[0] {
                    Resource::Uids { first, end } => end - u64::from(*first),
                    _ => 0,
                };
                return Err(match first_blocker {
                    Some(blocker) => ClaimError::NoFreeUids {
                        size,
                        first_blocker: Box::new(blocker),
                    },
                    None => ClaimError::NoChoice,
                });
            };
            all.push(c.clone());
        }
        for e in void {
            tracing::info!(
                node = %e.claim.node,
                "taking over the stale claim of {} (its node is gone and has no sliver left)",
                e.claim.resource.describe()
            );
            match fs::remove_file(&e.path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err("removing", &e.path)(err)),
            }
        }
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut held = Vec::new();
        for resource in all {
            let path = dir.join(resource.file_name());
            let claim = ClaimFile {
                node: owner.node.clone(),
                state_dir: owner.state_dir.clone(),
                records_dir: owner.records_dir.clone(),
                pid: std::process::id(),
                since,
                resource: resource.clone(),
            };
            let text = toml::to_string(&claim).map_err(|e| ClaimError::Io {
                op: "encoding",
                path: path.clone(),
                source: io::Error::other(e.to_string()),
            })?;
            let file = open_nofollow(&path, true).map_err(io_err("opening", &path))?;
            let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                // Held although no readable claim said so (being written when scanned).
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(ClaimError::Taken(Box::new(Conflict {
                        wanted: resource.describe(),
                        theirs: resource.describe(),
                        node: "unknown".into(),
                        pid: 0,
                        state: PathBuf::new(),
                        status: ", which runs",
                        hint: resource.hint().into(),
                        file: path,
                    })));
                }
                Err((_, errno)) => {
                    return Err(ClaimError::Io {
                        op: "locking",
                        path,
                        source: errno.into(),
                    });
                }
            };
            lock.set_len(0).map_err(io_err("truncating", &path))?;
            lock.write_all(text.as_bytes())
                .map_err(io_err("writing", &path))?;
            held.push(Held {
                resource,
                path,
                _lock: lock,
            });
        }
        Ok((
            Claims {
                dir: dir.to_path_buf(),
                held,
            },
            choice,
        ))
    }

    /// What is claimed.
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.held.iter().map(|h| &h.resource)
    }

    /// Gives the resources up for good (the node is decommissioned): removes the files.
    pub fn retire(self) -> Result<(), ClaimError> {
        let _dir_lock = lock_dir(&self.dir)?;
        for h in &self.held {
            match fs::remove_file(&h.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing", &h.path)(e)),
            }
        }
        Ok(())
    }
}

/// Removes the claims in `dir` that no process holds and whose state dir `is_gone` says is
/// gone (testnet teardown, after its nodes were wiped); returns the files removed.
pub fn remove_stale(
    dir: &Path,
    is_gone: impl Fn(&Path) -> bool,
) -> Result<Vec<PathBuf>, ClaimError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let _dir_lock = lock_dir(dir)?;
    let mut removed = Vec::new();
    for e in scan(dir)? {
        if !e.held && is_gone(&e.claim.state_dir) {
            match fs::remove_file(&e.path) {
                Ok(()) => removed.push(e.path),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err("removing", &e.path)(err)),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(root: &Path, name: &str) -> Owner {
        let state = root.join(name);
        fs::create_dir_all(state.join("records")).unwrap();
        Owner {
            node: NodeId::new(format!("{:0>8}", name)).unwrap(),
            state_dir: state.clone(),
            records_dir: state.join("records"),
        }
    }

    fn claims_dir() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("claims");
        (tmp, dir)
    }

    fn cgroup(parent: &str) -> Resource {
        Resource::Cgroup {
            parent: parent.into(),
        }
    }

    fn uids(first: u32, count: u64) -> Resource {
        Resource::Uids {
            first,
            end: u64::from(first) + count,
        }
    }

    #[test]
    fn node_ids_and_what_derives_from_them() {
        let id = NodeId::new("1a2b3c4d").unwrap();
        assert_eq!(id.cgroup_parent("planetmesh"), "planetmesh/1a2b3c4d.node");
        assert_eq!(id.cgroup_parent("/a/b/"), "a/b/1a2b3c4d.node");
        assert_eq!(id.ifname_prefix(), "pm1a2b3v");
        assert_eq!(id.number(), 0x1a2b_3c4d);
        assert!(NodeId::new("1A2B3C4D").is_err());
        assert!(NodeId::new("1a2b3c4").is_err());
        let key = capability_schema::SecretKey::generate().public();
        let of_key = NodeId::of_key(&key);
        assert!(key.to_string().contains(of_key.as_str()));
        // No sliver id can name a node's own parent.
        assert!(crate::sliver::SliverId::new("1a2b3c4d.node").is_err());
    }

    #[test]
    fn what_conflicts() {
        assert!(cgroup("pm/a").conflicts(&cgroup("pm/a/")));
        assert!(cgroup("pm").conflicts(&cgroup("pm/a")));
        assert!(cgroup("pm/a/b").conflicts(&cgroup("pm/a")));
        assert!(!cgroup("pm/a").conflicts(&cgroup("pm/ab")));
        assert!(!cgroup("pm/a").conflicts(&cgroup("pm/b")));
        assert!(uids(100, 10).conflicts(&uids(109, 10)));
        assert!(!uids(100, 10).conflicts(&uids(110, 10)));
        let links = |netns, prefix: &str| Resource::Links {
            netns,
            prefix: prefix.into(),
        };
        let link = |netns, name: &str| Resource::Link {
            netns,
            name: name.into(),
        };
        assert!(links(1, "pm").conflicts(&links(1, "pmab")));
        assert!(!links(1, "pm").conflicts(&links(2, "pm")));
        assert!(!links(1, "pma").conflicts(&links(1, "pmb")));
        assert!(links(1, "pma").conflicts(&link(1, "pmaifb")));
        assert!(link(1, "pmaifb").conflicts(&links(1, "pma")));
        assert!(!link(1, "x").conflicts(&link(1, "y")));
        let pool = |netns, a, b, len| Resource::Pool {
            netns,
            net: Ipv4Addr::new(10, a, b, 0),
            len,
        };
        assert!(pool(1, 199, 0, 16).conflicts(&pool(1, 199, 7, 24)));
        assert!(!pool(1, 199, 0, 24).conflicts(&pool(1, 199, 1, 24)));
        assert!(!pool(1, 199, 0, 16).conflicts(&pool(2, 199, 0, 16)));
        assert!(!cgroup("x").conflicts(&uids(0, 1)));
    }

    #[test]
    fn two_claims_of_one_resource_conflict_and_name_the_holder() {
        let (tmp, dir) = claims_dir();
        let a = owner(tmp.path(), "aaaa");
        let b = owner(tmp.path(), "bbbb");
        let held = Claims::take(&dir, &a, &[cgroup("pm/x"), uids(1 << 28, 1 << 20)]).unwrap();
        assert_eq!(held.resources().count(), 2);
        // The same parent, one nested in it, an overlapping range: refused, holder named.
        for wanted in [cgroup("pm/x"), cgroup("pm/x/y"), uids((1 << 28) + 5, 10)] {
            let err = Claims::take(&dir, &b, &[wanted]).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, ClaimError::Taken(_)), "{text}");
            assert!(
                text.contains("node 0000aaaa")
                    && text.contains(&std::process::id().to_string())
                    && text.contains("which runs"),
                "{text}"
            );
        }
        // All or none: the refused take left no claim of b's.
        let err = Claims::take(&dir, &b, &[cgroup("pm/free"), cgroup("pm/x")]).unwrap_err();
        assert!(err.to_string().contains("cgroup_parent"), "{err}");
        assert!(!dir.join(cgroup("pm/free").file_name()).exists());
        let c = Claims::take(&dir, &owner(tmp.path(), "cccc"), &[cgroup("pm/free")]).unwrap();
        // Even the same node cannot hold its claims twice (two engines on one state dir).
        assert!(Claims::take(&dir, &a, &[cgroup("pm/x")]).is_err());
        drop((held, c));
    }

    #[test]
    fn a_dropped_claim_is_released() {
        let (tmp, dir) = claims_dir();
        let a = owner(tmp.path(), "aaaa");
        let held = Claims::take(&dir, &a, &[cgroup("pm/x")]).unwrap();
        drop(held);
        // Its own node takes it again at once (a restart) ...
        let again = Claims::take(&dir, &a, &[cgroup("pm/x")]).unwrap();
        drop(again);
        // ... and another node too, once the first has no sliver left.
        let b = owner(tmp.path(), "bbbb");
        let taken = Claims::take(&dir, &b, &[cgroup("pm/x")]).unwrap();
        assert!(Claims::take(&dir, &a, &[cgroup("pm/x")]).is_err());
        taken.retire().unwrap();
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "only the dir lock is left"
        );
    }

    #[test]
    fn a_stale_claim_of_a_dead_process_is_taken_over_unless_its_slivers_may_run() {
        let (tmp, dir) = claims_dir();
        let a = owner(tmp.path(), "aaaa");
        let b = owner(tmp.path(), "bbbb");
        // A claim file left by a node process that died (pid 1 never held it).
        let stale = ClaimFile {
            node: a.node.clone(),
            state_dir: a.state_dir.clone(),
            records_dir: a.records_dir.clone(),
            pid: 999_999,
            since: 0,
            resource: cgroup("pm/x"),
        };
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join(cgroup("pm/x").file_name());
        fs::write(&file, toml::to_string(&stale).unwrap()).unwrap();
        // Its node has a sliver record left: its slivers may still run.
        fs::write(a.records_dir.join("s.json"), "{}").unwrap();
        let err = Claims::take(&dir, &b, &[cgroup("pm/x/y")]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("not running") && text.contains("wipe") && text.contains("999999"),
            "{text}"
        );
        // Its own node takes it over whatever it has.
        drop(Claims::take(&dir, &a, &[cgroup("pm/x")]).unwrap());
        // Without records, another node takes it over.
        fs::remove_file(a.records_dir.join("s.json")).unwrap();
        let taken = Claims::take(&dir, &b, &[cgroup("pm/x")]).unwrap();
        let text = fs::read_to_string(&file).unwrap();
        assert!(text.contains("0000bbbb"), "{text}");
        drop(taken);
        // And a stale claim whose state dir is gone is swept.
        fs::remove_dir_all(&b.state_dir).unwrap();
        let removed = remove_stale(&dir, |state| !state.exists()).unwrap();
        assert_eq!(removed, vec![file]);
    }

    #[test]
    fn a_claim_held_by_another_process_counts_until_that_process_dies() {
        use std::os::unix::process::CommandExt;
        if !Path::new("/usr/bin/flock").exists() {
            eprintln!("skipping: no flock(1)");
            return;
        }
        let (tmp, dir) = claims_dir();
        let a = owner(tmp.path(), "aaaa");
        let b = owner(tmp.path(), "bbbb");
        let file = dir.join(cgroup("pm/x").file_name());
        drop(Claims::take(&dir, &a, &[cgroup("pm/x")]).unwrap());
        // Another process (as a's node manager would) holds the lock on a's claim file.
        /// Ends flock(1) and its sleep (its process group), also when the test fails.
        struct Holder(std::process::Child);
        impl Drop for Holder {
            fn drop(&mut self) {
                if let Ok(None) = self.0.try_wait() {
                    let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
                    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                    let _ = self.0.wait();
                }
            }
        }
        let holder = Holder(
            std::process::Command::new("/usr/bin/flock")
                .args(["-x", "-n", "-o"])
                .arg(&file)
                .args(["sleep", "30"])
                .process_group(0)
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !scan(&dir).unwrap().iter().any(|e| e.held) {
            assert!(Instant::now() < deadline, "flock(1) never took the lock");
            std::thread::sleep(Duration::from_millis(10));
        }
        let err = Claims::take(&dir, &b, &[cgroup("pm/x")]).unwrap_err();
        assert!(err.to_string().contains("which runs"), "{err}");
        // The lock dies with flock(1)'s process group. (`-o` closes it in the sleep before its
        // exec, but a sleep killed between its fork and that close holds it until the kernel
        // has ended it too, which the wait on flock(1) alone does not see: wait for that.)
        drop(holder);
        let deadline = Instant::now() + Duration::from_secs(10);
        while scan(&dir).unwrap().iter().any(|e| e.held) {
            assert!(
                Instant::now() < deadline,
                "the lock outlived flock(1)'s group"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Dead, and a has no sliver records: b takes the claim over.
        let taken = Claims::take(&dir, &b, &[cgroup("pm/x")]).unwrap();
        assert!(fs::read_to_string(&file).unwrap().contains("0000bbbb"));
        drop(taken);
    }

    #[test]
    fn a_choice_is_the_first_free_one_and_a_node_keeps_its_own() {
        let (tmp, dir) = claims_dir();
        let a = owner(tmp.path(), "aaaa");
        let b = owner(tmp.path(), "bbbb");
        let blocks = [uids(1 << 28, 1 << 26), uids((1 << 28) + (1 << 26), 1 << 26)];
        let (held_a, pick_a) = Claims::take_with_choice(&dir, &a, &[], &blocks).unwrap();
        assert_eq!(pick_a, blocks[0]);
        let (held_b, pick_b) = Claims::take_with_choice(&dir, &b, &[], &blocks).unwrap();
        assert_eq!(pick_b, blocks[1]);
        let c = owner(tmp.path(), "cccc");
        let err = Claims::take_with_choice(&dir, &c, &[], &blocks).unwrap_err();
        assert!(
            matches!(err, ClaimError::NoFreeUids { .. }) && err.to_string().contains("uid_base"),
            "{err}"
        );
        // b restarts while a is away (its slivers still run): b keeps its own block.
        fs::write(a.records_dir.join("s.json"), "{}").unwrap();
        drop((held_a, held_b));
        let (_b2, again) = Claims::take_with_choice(&dir, &b, &[], &blocks).unwrap();
        assert_eq!(again, blocks[1]);
        assert!(Claims::take_with_choice(&dir, &c, &[], &blocks).is_err());
    }

    /// Two nodes' engines on the recording host, sharing one claims dir.
    #[test]
    fn engines_of_two_nodes_get_their_own_share_and_a_second_engine_is_refused() {
        use crate::sliver::host::RecordingHost;
        use crate::sliver::{NodeConfig, Orphan, SliverError, SliverId, SliverSpec, Slivers};
        let tmp = tempfile::tempdir().unwrap();
        let config = |name: &str, id: &str| {
            let mut c = NodeConfig::for_node(
                tmp.path().join(name),
                "/nonexistent/sliver-init",
                &NodeId::new(id).unwrap(),
            );
            c.share.as_mut().unwrap().claim_dir = tmp.path().join("claims");
            c
        };
        let (a, _) = Slivers::open(RecordingHost::new(), config("a", "aaaa0001")).unwrap();
        // Another network namespace's pool, as on a namespaced testnet: this test shares one.
        let mut b_config = config("b", "bbbb0002");
        b_config.slots.pool = Ipv4Addr::new(10, 198, 0, 0);
        let (b, _) = Slivers::open(RecordingHost::new(), b_config.clone()).unwrap();
        let spec = || {
            SliverSpec::regular(
                SliverId::new("plc_web").unwrap(),
                capability_schema::Resources {
                    cpu_millis: 100,
                    memory_bytes: 64 << 20,
                    disk_bytes: 0,
                    egress_kbps: 1000,
                    ports: 0,
                },
            )
        };
        let (ra, rb) = (a.create(spec()).unwrap(), b.create(spec()).unwrap());
        assert_eq!(ra.cgroup, "planetmesh/aaaa0001.node/plc_web");
        assert_eq!(rb.cgroup, "planetmesh/bbbb0002.node/plc_web");
        assert_ne!(ra.net.host_if, rb.net.host_if);
        let (ua, ub) = (a.config().slots.uid_span(), b.config().slots.uid_span());
        assert!(
            ua.1 <= u64::from(ub.0) || ub.1 <= u64::from(ua.0),
            "{ua:?} {ub:?}"
        );
        assert_eq!(a.config().slots.uid_base, ra.slot.uids.host_base);

        // A second engine of b (same state) is refused, naming the holder; so is a node
        // configured into a's parent or onto a's address pool.
        let err = Slivers::open(RecordingHost::new(), b_config.clone()).unwrap_err();
        assert!(
            matches!(err, SliverError::Claim(ClaimError::Taken(_)))
                && err.to_string().contains("node bbbb0002"),
            "{err}"
        );
        let mut c = config("c", "cccc0003");
        c.cgroup_parent = "planetmesh/aaaa0001.node/c".into();
        c.slots.pool = Ipv4Addr::new(10, 197, 0, 0);
        let err = Slivers::open(RecordingHost::new(), c)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cgroup_parent") && err.contains("aaaa0001"),
            "{err}"
        );
        let err = Slivers::open(RecordingHost::new(), config("c", "cccc0003"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("address_pool"), "{err}");

        // b restarts; a dir under its parent that is no sliver's is not swept.
        let Slivers { host, claims, .. } = b;
        drop(claims);
        host.leave_stray(Orphan::Cgroup("dddd0004.node".into()));
        host.leave_stray(Orphan::Cgroup("ghost".into()));
        let (b, report) = Slivers::open(host, b_config).unwrap();
        assert_eq!(report.adopted, vec![rb.spec.id.clone()]);
        assert_eq!(report.orphans, vec![Orphan::Cgroup("ghost".into())]);
        assert_eq!(b.config().slots.uid_base, rb.slot.uids.host_base);
        // Decommissioned, each gives its claims up; a's stay until it is.
        b.destroy_all().unwrap();
        let left: Vec<String> = fs::read_dir(tmp.path().join("claims"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(left.len(), 6, "{left:?}");
        a.destroy_all().unwrap();
        assert_eq!(fs::read_dir(tmp.path().join("claims")).unwrap().count(), 1);
    }

    #[test]
    fn a_claims_dir_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_tmp, dir) = claims_dir();
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let a = owner(_tmp.path(), "aaaa");
        let err = Claims::take(&dir, &a, &[cgroup("x")]).unwrap_err();
        assert!(matches!(err, ClaimError::UnsafeDir { .. }), "{err}");
    }
}
