//! Applying an edited node.toml to a running node, on SIGHUP or `POST /reload` (which
//! `nodemgr reload` sends).
//!
//! A reload re-reads the file the node started from and checks it whole before changing
//! anything:
//! - what may change live: `[[delegations]]` (agents, shares, scopes, lifetimes), `capacity`
//!   and `reserve`, and `[[trust]]` entries added;
//! - anything else that differs (key, listen, state_dir, isolation, …) refuses the reload,
//!   naming the field; the old configuration stays in force. So does a trusted federation
//!   removed or given another authority (the overlay's trust store only grows while it runs).
//!
//! Then it puts the new delegations in force at once ([`NodeService::update_delegations`]:
//! delegations whose terms did not change keep their signatures) and pokes the ad task, so
//! the new ad goes out at once. Live leases are not touched: a lease under an agent whose
//! delegation was removed runs to its end; new redeems under that agent are refused.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use capability_schema::{PublicKey, Resources, SecretKey};
use federation::daemon::config::ConfigError;
use federation::{TrustStore, unix_now};
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};

use super::config::NodeManagerConfig;
use super::delegated::{Delegated, Terms};
use super::monitor::{HostProbe, measured_capacity};
use super::service::NodeService;

/// Settings a reload applies; every other one must stay as the node started with it.
pub const LIVE_SETTINGS: &[&str] = &["delegations", "capacity", "reserve", "trust"];

/// What the node offers in all: `capacity` if configured, else measured minus `reserve`.
pub fn offered(config: &NodeManagerConfig) -> Resources {
    config.capacity.unwrap_or_else(|| {
        measured_capacity(&HostProbe::default(), &config.state_dir, &config.reserve)
    })
}

/// The delegations `config` asks for, signed for `key` at `now`, keeping from `previous`
/// those whose terms did not change.
pub fn delegations_of(
    config: &NodeManagerConfig,
    key: &SecretKey,
    previous: Option<&Delegated>,
    now: u64,
) -> Delegated {
    let terms = config.delegations.iter().map(Terms::from).collect();
    Delegated::sign(key, offered(config), terms, previous, now)
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Agents delegated to now that were not before.
    pub added: Vec<PublicKey>,
    /// Agents no longer delegated to (their live leases run to their end).
    pub removed: Vec<PublicKey>,
    /// Agents whose share, scope or lifetime changed (signed anew).
    pub changed: Vec<PublicKey>,
    /// Federations trusted now that were not before.
    pub trusted: Vec<String>,
    /// The capacity in force.
    pub capacity: String,
}

impl std::fmt::Display for ReloadReport {
    /// `delegations: 1 added (1a2b3c4d), 0 removed, 0 changed; trust: 0 added; capacity …`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = |keys: &[PublicKey]| {
            if keys.is_empty() {
                String::new()
            } else {
                let short: Vec<String> = keys.iter().map(PublicKey::short).collect();
                format!(" ({})", short.join(", "))
            }
        };
        write!(
            f,
            "delegations: {} added{}, {} removed{}, {} changed{}; trust: {} added{}; capacity {}",
            self.added.len(),
            keys(&self.added),
            self.removed.len(),
            keys(&self.removed),
            self.changed.len(),
            keys(&self.changed),
            self.trusted.len(),
            if self.trusted.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.trusted.join(", "))
            },
            self.capacity
        )
    }
}

/// Why a reload was refused (the old configuration stays in force).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The node was started from a config built in code, not from a file.
    #[error("this node was not started from a config file; restart it to change its settings")]
    NoFile,
    /// The file does not load.
    #[error("{0}; fix the file and reload again")]
    Config(#[from] ConfigError),
    /// A setting that cannot change while the node runs differs.
    #[error(
        "{field} in {} differs from the running node's and cannot change live (only {}): put \
         it back and reload, or restart the node to apply it",
        path.display(),
        LIVE_SETTINGS.join(", ")
    )]
    Fixed {
        /// The setting.
        field: String,
        /// The file.
        path: PathBuf,
    },
    /// A trusted federation was removed or given another authority.
    #[error(
        "[[trust]] {name}: removing a trusted federation or changing its authority needs a \
         restart (a reload only adds federations); put it back and reload, or restart the node"
    )]
    TrustRemoved {
        /// The federation.
        name: String,
    },
    /// A new trust entry is not usable.
    #[error("[[trust]]: {0}; fix the file and reload again")]
    Trust(String),
}

/// Reloads a running node's configuration.
#[derive(Debug)]
pub struct Reloader {
    key: SecretKey,
    service: Arc<NodeService>,
    trust: Arc<RwLock<TrustStore>>,
    changed: Arc<Notify>,
    current: Mutex<NodeManagerConfig>,
}

impl Reloader {
    /// A reloader for the node running `config` as `key`; `trust` is the overlay's trust
    /// store, `changed` pokes the ad task.
    pub fn new(
        config: NodeManagerConfig,
        key: SecretKey,
        service: Arc<NodeService>,
        trust: Arc<RwLock<TrustStore>>,
        changed: Arc<Notify>,
    ) -> Reloader {
        Reloader {
            key,
            service,
            trust,
            changed,
            current: Mutex::new(config),
        }
    }

    /// Re-reads the node's config file and applies it, or refuses it whole.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let path = current.source.clone().ok_or(ReloadError::NoFile)?;
        let next = NodeManagerConfig::load(&path)?;
        if let Some(field) = fixed_difference(&current, &next) {
            return Err(ReloadError::Fixed { field, path });
        }
        let trusted = self.new_trust(&current, &next)?;
        {
            let mut store = self.trust.write().unwrap_or_else(PoisonError::into_inner);
            for t in next
                .common
                .trust
                .iter()
                .filter(|t| trusted.contains(&t.name))
            {
                store
                    .add_federation(&t.name, t.authority)
                    .map_err(|e| ReloadError::Trust(format!("{}: {e}", t.name)))?;
            }
        }
        let now = unix_now();
        let before = self.service.delegated();
        let after = self
            .service
            .update_delegations(|prev| Some(delegations_of(&next, &self.key, Some(prev), now)));
        // Revocations of "this node's delegations signed up to T" judge each agent's first
        // signature on its current terms (a renewal keeps it; new terms are a new delegation).
        self.service.revocation().set_delegations(
            after
                .entries()
                .iter()
                .map(|e| (e.terms.agent, e.first_issued_at)),
        );
        let report = compare(&before, &after, trusted);
        *current = next;
        drop(current);
        self.changed.notify_one();
        Ok(report)
    }

    /// The federations `next` trusts that `current` did not; refuses removals and changes.
    fn new_trust(
        &self,
        current: &NodeManagerConfig,
        next: &NodeManagerConfig,
    ) -> Result<Vec<String>, ReloadError> {
        for old in &current.common.trust {
            if !next.common.trust.contains(old) {
                return Err(ReloadError::TrustRemoved {
                    name: old.name.clone(),
                });
            }
        }
        // The whole list must make a store, as at start.
        federation::daemon::trust_store(&next.common.trust)
            .map_err(|e| ReloadError::Trust(format!("{e:#}")))?;
        Ok(next
            .common
            .trust
            .iter()
            .filter(|t| !current.common.trust.contains(t))
            .map(|t| t.name.clone())
            .collect())
    }
}

/// Reloads on each SIGHUP until the daemon stops, logging what changed or why nothing did.
pub(crate) async fn on_hangup(reloader: Arc<Reloader>, mut stop: watch::Receiver<bool>) {
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload with POST /reload");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            got = hangups.recv() => if got.is_none() { break },
        }
        let reloader = Arc::clone(&reloader);
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(report)) => tracing::info!(%report, "SIGHUP: node.toml reloaded"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "SIGHUP: reload refused; the running configuration stays")
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload failed"),
        }
    }
}

/// The first setting, outside [`LIVE_SETTINGS`], that differs between `a` and `b` (or, if
/// the two cannot be compared, a name saying so: the reload is refused then too).
pub fn fixed_difference(a: &NodeManagerConfig, b: &NodeManagerConfig) -> Option<String> {
    let table = |c: &NodeManagerConfig| match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => Ok(t),
        Ok(other) => Err(format!(
            "a config that is not a table ({})",
            other.type_str()
        )),
        Err(e) => Err(format!("a config that cannot be compared ({e})")),
    };
    let (a, b) = match (table(a), table(b)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Some(e),
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !LIVE_SETTINGS.contains(&k.as_str()))
        .find(|k| a.get(*k) != b.get(*k))
        .cloned()
}

fn compare(before: &Delegated, after: &Delegated, trusted: Vec<String>) -> ReloadReport {
    let find = |d: &Delegated, agent: &PublicKey| {
        d.entries()
            .iter()
            .find(|e| e.terms.agent == *agent)
            .map(|e| e.terms.clone())
    };
    let mut report = ReloadReport {
        trusted,
        capacity: after.capacity().total.to_string(),
        ..ReloadReport::default()
    };
    for e in after.entries() {
        match find(before, &e.terms.agent) {
            None => report.added.push(e.terms.agent),
            Some(old) if old != e.terms => report.changed.push(e.terms.agent),
            Some(_) => {}
        }
    }
    for e in before.entries() {
        if find(after, &e.terms.agent).is_none() {
            report.removed.push(e.terms.agent);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;

    use super::*;

    fn load(text: &str) -> NodeManagerConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        let mut config = NodeManagerConfig::load(&path).unwrap();
        // The same file for both, so paths resolve alike.
        config.source = Some(PathBuf::from("/etc/planetmesh/node.toml"));
        config.state_dir = "/var/lib/planetmesh".into();
        config.common.key_file = "/etc/planetmesh/node.key".into();
        config.common.membership = "/etc/planetmesh/membership.cbor".into();
        config.claim_dir = "/run/planetmesh/claims".into();
        config
    }

    #[test]
    fn only_delegations_capacity_and_trust_change_live() {
        let base = "federation = \"plc\"\nisolation = \"memory\"\n";
        let agent = test_key(20).public();
        let a = load(base);
        let b = load(&format!(
            "{base}capacity = \"cpu=2 cores,memory=1GiB,disk=1GiB,egress=1Mbit\"\n\
             [[trust]]\nname = \"plc\"\nauthority = \"{}\"\n\
             [[delegations]]\nagent = \"{agent}\"\nshare = \"cpu=1\"\nkinds = [\"regular\", \"admin\"]\n",
            test_key(100).public()
        ));
        assert_eq!(fixed_difference(&a, &b), None);
        let mut c = a.clone();
        c.isolation = crate::daemon::config::Isolation::Linux;
        assert_eq!(fixed_difference(&a, &c).as_deref(), Some("isolation"));
        let mut c = a.clone();
        c.common.listen = vec!["/ip4/127.0.0.1/tcp/4999".parse().unwrap()];
        assert_eq!(fixed_difference(&a, &c).as_deref(), Some("listen"));
        let mut c = a.clone();
        c.state_dir = "/elsewhere".into();
        assert_eq!(fixed_difference(&a, &c).as_deref(), Some("state_dir"));
        let mut c = a.clone();
        c.common.key_file = "/etc/other.key".into();
        assert_eq!(fixed_difference(&a, &c).as_deref(), Some("key_file"));
    }
}
