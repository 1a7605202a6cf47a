//! One name per node. Output names a node as its ad does (`node2`), adding the short key when
//! two known nodes share a name (`node2/75f91bc9`), and as `site/short-key` while its ad has
//! not been seen. Every place that takes a node accepts any of:
//!
//! - its ad name (`node2`), or the printed form (`node2/75f91bc9`, `fed0-site0/75f91bc9`);
//! - a unique prefix of its key's hex, at least [`MIN_PREFIX`] digits (`75f9`);
//! - its full key (`ed25519/<hex>`, or the bare hex).
//!
//! The names known live in a small directory, `nodes.json` in the state directory: filled
//! from the ads slicectl sees (node status answers, agents' offers) and from the sites of the
//! leases and tickets it holds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use capability_schema::{PublicKey, ResourceAd};
use serde::{Deserialize, Serialize};

/// The fewest hex digits a key prefix may have.
pub const MIN_PREFIX: usize = 4;

/// The directory's file in the state directory.
pub const FILE: &str = "nodes.json";

/// A node as output names it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its ad's name (empty until an ad was seen).
    #[serde(default)]
    pub name: String,
    /// Its site.
    #[serde(default)]
    pub site: String,
    /// Its federation.
    #[serde(default)]
    pub federation: String,
}

/// Why a node argument names no single node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// No known node matches.
    #[error(
        "no node known as {0:?}: give its name as its ad says it, site/short-key as slicectl \
         prints it, at least {MIN_PREFIX} hex digits of its key, or its full key (ed25519/<hex>); \
         names are learned from ads (from the agents the config lists, and from nodes' status)"
    )]
    Unknown(String),
    /// Several nodes match.
    #[error("{given:?} names {} nodes: {}; give more of the key", .candidates.len(), .candidates.join(", "))]
    Ambiguous {
        /// The argument.
        given: String,
        /// The nodes it matches, as `label (key)`.
        candidates: Vec<String>,
    },
    /// A key prefix too short to be meant.
    #[error("{0:?} is too short a key prefix: give at least {MIN_PREFIX} hex digits")]
    TooShort(String),
}

/// The known nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// By key.
    nodes: BTreeMap<PublicKey, NodeInfo>,
}

fn key_hex(key: &PublicKey) -> String {
    let text = key.to_string();
    text.strip_prefix("ed25519/").unwrap_or(&text).to_owned()
}

impl Directory {
    /// Records what is known of `node`; empty fields keep what was known.
    pub fn learn(&mut self, node: PublicKey, name: &str, site: &str, federation: &str) -> bool {
        let entry = self.nodes.entry(node).or_default();
        let before = entry.clone();
        for (field, value) in [
            (&mut entry.name, name),
            (&mut entry.site, site),
            (&mut entry.federation, federation),
        ] {
            if !value.is_empty() {
                value.clone_into(field);
            }
        }
        *entry != before
    }

    /// Records an ad's node.
    pub fn learn_ad(&mut self, ad: &ResourceAd) -> bool {
        self.learn(ad.node, &ad.name, &ad.site, &ad.federation)
    }

    /// What is known of `node`.
    pub fn get(&self, node: &PublicKey) -> Option<&NodeInfo> {
        self.nodes.get(node)
    }

    /// How output names `node` (of `site`, when the directory does not know it).
    pub fn label(&self, site: &str, node: &PublicKey) -> String {
        let info = self.nodes.get(node);
        match info.map(|i| i.name.as_str()).filter(|n| !n.is_empty()) {
            Some(name) => {
                let shared = self.nodes.iter().any(|(k, i)| k != node && i.name == name);
                if shared {
                    format!("{name}/{}", node.short())
                } else {
                    name.to_owned()
                }
            }
            None => {
                let site = info
                    .map(|i| i.site.as_str())
                    .filter(|s| !s.is_empty())
                    .unwrap_or(site);
                format!("{site}/{}", node.short())
            }
        }
    }

    /// The node `given` names (see the module's documentation for the forms).
    pub fn resolve(&self, given: &str) -> Result<PublicKey, NodeError> {
        let text = given.trim();
        if let Ok(key) = text.parse::<PublicKey>() {
            return Ok(key);
        }
        if let Ok(key) = format!("ed25519/{text}").parse::<PublicKey>() {
            return Ok(key);
        }
        let by = |pred: &dyn Fn(&PublicKey, &NodeInfo) -> bool| -> Vec<PublicKey> {
            self.nodes
                .iter()
                .filter(|(k, i)| pred(k, i))
                .map(|(k, _)| *k)
                .collect()
        };
        // The printed forms: name/short, site/short.
        let mut found = match text.split_once('/') {
            Some((head, short)) if !short.is_empty() => by(&|k, i| {
                key_hex(k).starts_with(&short.to_lowercase())
                    && (i.name == head || i.site == head || self.label(&i.site, k) == text)
            }),
            _ => Vec::new(),
        };
        if found.is_empty() {
            found = by(&|_, i| i.name == text);
        }
        let hex = text.strip_prefix("ed25519/").unwrap_or(text).to_lowercase();
        let is_hex = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if found.is_empty() && is_hex {
            if hex.len() < MIN_PREFIX {
                return Err(NodeError::TooShort(given.to_owned()));
            }
            found = by(&|k, _| key_hex(k).starts_with(&hex));
        }
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(NodeError::Unknown(given.to_owned())),
            many => Err(NodeError::Ambiguous {
                given: given.to_owned(),
                candidates: many
                    .iter()
                    .map(|k| {
                        let site = self.nodes.get(k).map_or("", |i| i.site.as_str());
                        format!("{} ({k})", self.label(site, k))
                    })
                    .collect(),
            }),
        }
    }

    /// Reads `dir`'s directory (empty when there is none yet or it is unreadable: it is only a
    /// cache of names).
    pub fn load(dir: &Path) -> Directory {
        std::fs::read(dir.join(FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Writes it to `dir` (whole, through a temporary file).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, dir.join(FILE))
    }
}

/// The process's directory and where it is saved.
static DIRECTORY: Mutex<(Option<PathBuf>, Directory, bool)> = Mutex::new((
    None,
    Directory {
        nodes: BTreeMap::new(),
    },
    false,
));

fn with<T>(f: impl FnOnce(&mut (Option<PathBuf>, Directory, bool)) -> T) -> T {
    f(&mut DIRECTORY.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Loads the state directory's node directory for this process (once per command).
pub fn open(state_dir: &Path) {
    let loaded = Directory::load(state_dir);
    with(|d| *d = (Some(state_dir.to_owned()), loaded, false));
}

/// Saves what this process learned, if anything (best effort: it is a cache of names).
pub fn save() {
    with(|(dir, directory, dirty)| {
        if let Some(dir) = dir
            && *dirty
            && directory.save(dir).is_ok()
        {
            *dirty = false;
        }
    });
}

/// Records what is known of `node` in the process's directory.
pub fn learn(node: PublicKey, name: &str, site: &str, federation: &str) {
    with(|(_, directory, dirty)| *dirty |= directory.learn(node, name, site, federation));
}

/// Records an ad's node in the process's directory.
pub fn learn_ad(ad: &ResourceAd) {
    with(|(_, directory, dirty)| *dirty |= directory.learn_ad(ad));
}

/// How output names `node` (see the module's documentation).
pub fn label(site: &str, node: &PublicKey) -> String {
    with(|(_, directory, _)| directory.label(site, node))
}

/// The node `given` names, among the nodes known.
pub fn resolve(given: &str) -> Result<PublicKey, NodeError> {
    with(|(_, directory, _)| directory.resolve(given))
}

/// Records the sites of the nodes of every lease and ticket in `state` (names stay as
/// learned from ads).
pub fn learn_from_state(state: &crate::state::State) {
    let Ok(slices) = state.slices() else {
        return;
    };
    for record in slices {
        let name = &record.request.name;
        for l in state.leases(name).unwrap_or_default() {
            learn(l.lease.node, "", &l.site, &l.lease.federation);
        }
        for t in state.tickets(name).unwrap_or_default() {
            learn(t.ticket.node, "", &t.site, &t.ticket.federation);
        }
    }
}

/// Asks the nodes of `leases` whose ads were not seen yet for their status, and records the
/// names their ads give (in parallel, at most the session's concurrency at once; a node that
/// does not answer keeps its `site/short-key` label).
pub async fn learn_names(session: &crate::client::Session, leases: &[crate::state::LeaseEntry]) {
    use capability_schema::protocol::{NodeRequest, NodeResponse};
    let unnamed: Vec<&crate::state::LeaseEntry> =
        leases.iter().filter(|l| !has_name(&l.lease.node)).collect();
    let answers = session
        .fan_out(&unnamed, |l| {
            session.node_call(l.lease.node, &l.addresses, NodeRequest::Status)
        })
        .await;
    for (l, answer) in answers {
        if let Ok(NodeResponse::Status(status)) = answer
            && let Ok(ad) = status.ad.verify_by(&l.lease.node)
        {
            learn_ad(&ad);
        }
    }
}

/// Whether the process's directory has seen `node`'s ad.
pub fn has_name(node: &PublicKey) -> bool {
    with(|(_, directory, _)| directory.get(node).is_some_and(|i| !i.name.is_empty()))
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;

    use super::*;

    #[test]
    fn nodes_are_found_by_name_printed_form_prefix_or_key() {
        let a = test_key(1).public();
        let b = test_key(2).public();
        let c = test_key(3).public();
        let mut d = Directory::default();
        d.learn(a, "node2", "fed0-site0", "fed0");
        d.learn(b, "node3", "fed0-site0", "fed0");
        d.learn(c, "", "fed1-site0", "fed1");
        assert_eq!(d.label("?", &a), "node2");
        assert_eq!(d.label("?", &c), format!("fed1-site0/{}", c.short()));
        assert_eq!(d.resolve("node2").unwrap(), a);
        assert_eq!(d.resolve(&format!("fed0-site0/{}", a.short())).unwrap(), a);
        assert_eq!(d.resolve(&format!("fed1-site0/{}", c.short())).unwrap(), c);
        assert_eq!(d.resolve(&key_hex(&b)[..6]).unwrap(), b);
        assert_eq!(d.resolve(&a.to_string()).unwrap(), a);
        assert_eq!(d.resolve(&key_hex(&a)).unwrap(), a);
        assert!(matches!(d.resolve("ab"), Err(NodeError::TooShort(_))));
        assert!(matches!(d.resolve("node9"), Err(NodeError::Unknown(_))));
        // Two nodes named alike: both print with their short keys, and the bare name is
        // ambiguous, listing both.
        d.learn(c, "node2", "", "");
        assert_eq!(d.label("?", &a), format!("node2/{}", a.short()));
        let e = d.resolve("node2").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(&a.to_string()) && text.contains(&c.to_string()),
            "{text}"
        );
        assert_eq!(d.resolve(&format!("node2/{}", c.short())).unwrap(), c);
        // A save and a load give the same directory.
        let dir = tempfile::tempdir().unwrap();
        d.save(dir.path()).unwrap();
        assert_eq!(Directory::load(dir.path()), d);
    }
}
