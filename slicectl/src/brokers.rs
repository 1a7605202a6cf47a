//! No single broker: which brokers `slicectl` asks, in which order, when it moves on to the
//! next, and what it remembers of each.
//!
//! - [`choose`]: the command line's `--broker` / `--agent` replace the config's brokers and
//!   agents together (an explicit choice always wins); without either, the config's
//!   `broker`/`brokers` and `agents`; with none at all, the brokers that announce themselves
//!   on the overlay ([`federation::overlay::rendezvous`]) are looked up through the bootstrap
//!   peers.
//! - [`Health`]: each broker's last outcome, kept in `brokers.json` in the state directory;
//!   [`Health::order`] puts the last known good broker first, then those never tried (in the
//!   order given), then those whose last call failed (the one that failed longest ago first).
//! - [`moves_on`]: a broker is left for the next on a connect timeout, a call timeout, a
//!   refused or lost connection, a peer that is not a broker, or a refusal to serve now
//!   (`unavailable`, `internal`, `unreachable`: [`cannot_serve`]); a refusal on the merits
//!   (`unsatisfiable`, `over_share`, `policy`, …) is the answer and ends the command.
//!   When every broker has been left, the agents (`--agent`, `agents` in the config: the
//!   integrated broker) are the last resort.
//!
//! A broker left in the middle of an acquisition may have obtained tickets that never reach
//! the user: they are never redeemed and lapse at their agents like any unredeemed ticket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capability_schema::{PublicKey, Rejection};
use serde::{Deserialize, Serialize};

use crate::client::ClientError;
use crate::config::ClientConfig;

/// The file in the state directory that keeps each broker's last outcome.
pub const FILE: &str = "brokers.json";

/// Whom acquisitions go to, after the command line and the config were weighed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choice {
    /// Brokers' multiaddresses (with `/p2p/`), in the order given.
    pub brokers: Vec<String>,
    /// Agents' multiaddresses: the integrated broker, last resort after the brokers (or the
    /// only way when no broker is given).
    pub agents: Vec<String>,
    /// Agents asked only for their ads (node names), besides [`Choice::agents`]: the
    /// config's, when the command line chose otherwise.
    pub ads_from: Vec<String>,
    /// Look up the brokers announced on the overlay (nothing was chosen or configured).
    pub discover: bool,
}

/// The command line's brokers and agents if it names any (the config's are then ignored for
/// acquisitions; its agents still give node names), else the config's; with neither, the
/// overlay's announced brokers.
pub fn choose(cli_brokers: &[String], cli_agents: &[String], config: &ClientConfig) -> Choice {
    if !cli_brokers.is_empty() || !cli_agents.is_empty() {
        let ads_from = config
            .agents
            .iter()
            .filter(|a| !cli_agents.contains(a))
            .cloned()
            .collect();
        return Choice {
            brokers: dedup(cli_brokers),
            agents: dedup(cli_agents),
            ads_from,
            discover: false,
        };
    }
    let brokers = config.broker_list();
    Choice {
        discover: brokers.is_empty() && config.agents.is_empty(),
        brokers,
        agents: config.agents.clone(),
        ads_from: Vec::new(),
    }
}

fn dedup(list: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in list {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out
}

/// Whether a broker's rejection says it cannot serve now (another broker may), rather than
/// judging the request.
pub fn cannot_serve(reason: &Rejection) -> bool {
    matches!(reason.code(), "unavailable" | "internal" | "unreachable")
}

/// Whether slicectl leaves the broker that failed with `e` for the next one.
pub fn moves_on(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } | ClientError::NotABroker(_) => true,
        ClientError::Refused(reply) => cannot_serve(&reply.reason),
        ClientError::NotAcquired(failure) => cannot_serve(&failure.reply.reason),
        ClientError::Setup(_) => false,
    }
}

/// Why slicectl left a broker, in a few words (its error without the advice).
pub fn why(e: &ClientError) -> String {
    let text = match e {
        ClientError::Unreachable { detail, .. } => detail.clone(),
        ClientError::NotABroker(_) => "it does not serve the broker protocol".to_owned(),
        ClientError::Refused(reply) => format!("it cannot serve now ({reply})"),
        ClientError::NotAcquired(failure) => format!("it cannot serve now ({})", failure.reply),
        ClientError::Setup(text) => text.clone(),
    };
    // The first clause: up to the first "; " outside parentheses.
    let mut depth = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ';' if depth == 0 && text[i..].starts_with("; ") => return text[..i].to_owned(),
            _ => {}
        }
    }
    text
}

/// One broker's last outcomes (Unix seconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When it last answered (on the merits, refusals included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok: Option<u64>,
    /// When slicectl last left it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<u64>,
    /// Why, then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl Record {
    /// 0: last known good; 1: never tried; 2: its last call failed.
    fn rank(&self) -> u8 {
        match (self.last_ok, self.last_failure) {
            (Some(ok), Some(failed)) if failed > ok => 2,
            (Some(_), _) => 0,
            (None, Some(_)) => 2,
            (None, None) => 1,
        }
    }
}

/// The brokers' last outcomes, by key; kept in [`FILE`] when it has a file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// By broker key.
    #[serde(default)]
    brokers: BTreeMap<PublicKey, Record>,
    /// Where it is kept (none: in memory only).
    #[serde(skip)]
    path: Option<PathBuf>,
}

impl Health {
    /// Reads `FILE` in `state_dir` (empty when missing or unreadable: it is only a hint).
    pub fn load(state_dir: &Path) -> Health {
        let path = state_dir.join(FILE);
        let mut health: Health = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        health.path = Some(path);
        health
    }

    /// What is known of `broker`.
    pub fn record(&self, broker: &PublicKey) -> Option<&Record> {
        self.brokers.get(broker)
    }

    /// Sorts `items` (brokers, by `key`) healthiest first: last known good (most recent
    /// success first), never tried (order kept), last call failed (oldest failure first).
    pub fn order<T>(&self, items: &mut [T], key: impl Fn(&T) -> PublicKey) {
        items.sort_by_key(|item| {
            let record = self.brokers.get(&key(item)).cloned().unwrap_or_default();
            let within = match record.rank() {
                0 => u64::MAX - record.last_ok.unwrap_or(0),
                2 => record.last_failure.unwrap_or(0),
                _ => 0,
            };
            (record.rank(), within)
        });
    }

    /// Records that `broker` answered at `now`.
    pub fn answered(&mut self, broker: PublicKey, now: u64) {
        let record = self.brokers.entry(broker).or_default();
        record.last_ok = Some(now);
        self.save();
    }

    /// Records that slicectl left `broker` at `now`, and why.
    pub fn failed(&mut self, broker: PublicKey, now: u64, why: &str) {
        let record = self.brokers.entry(broker).or_default();
        record.last_failure = Some(now);
        record.why = Some(why.to_owned());
        self.save();
    }

    /// Writes the file (whole, through a temporary file); a failure is only logged: the
    /// outcomes are a hint for the next command.
    fn save(&self) {
        let Some(path) = &self.path else {
            return;
        };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::debug!(error = %e, path = %path.display(), "broker outcomes not kept");
        }
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::ErrorReply;
    use capability_schema::identity::test_key;

    use super::*;

    fn config(broker: Option<&str>, brokers: &[&str], agents: &[&str]) -> ClientConfig {
        ClientConfig {
            broker: broker.map(str::to_owned),
            brokers: brokers.iter().map(|s| s.to_string()).collect(),
            agents: agents.iter().map(|s| s.to_string()).collect(),
            ..ClientConfig::default()
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_command_line_replaces_the_configs_brokers_and_agents() {
        let file = config(Some("b0"), &["b1", "b0"], &["a0"]);
        // The config alone: broker first, then brokers, each once; agents as the last resort.
        let c = choose(&[], &[], &file);
        assert_eq!(c.brokers, strings(&["b0", "b1"]));
        assert_eq!(c.agents, strings(&["a0"]));
        assert!(!c.discover);
        // --agent while the config names brokers: the agents only (the old bug ignored it).
        let c = choose(&[], &strings(&["a9"]), &file);
        assert!(c.brokers.is_empty(), "{c:?}");
        assert_eq!(c.agents, strings(&["a9"]));
        assert_eq!(
            c.ads_from,
            strings(&["a0"]),
            "config agents still name nodes"
        );
        // --broker: those brokers, no config agent as a fallback.
        let c = choose(&strings(&["b7", "b8", "b7"]), &[], &file);
        assert_eq!(c.brokers, strings(&["b7", "b8"]));
        assert!(c.agents.is_empty());
        // Both on the command line: brokers, then those agents.
        let c = choose(&strings(&["b7"]), &strings(&["a9"]), &file);
        assert_eq!((c.brokers, c.agents), (strings(&["b7"]), strings(&["a9"])));
        // Nothing anywhere: discover; agents alone in the config are the user's choice.
        assert!(choose(&[], &[], &ClientConfig::default()).discover);
        assert!(!choose(&[], &[], &config(None, &[], &["a0"])).discover);
    }

    #[test]
    fn a_refusal_to_serve_moves_on_a_refusal_on_the_merits_does_not() {
        let refused = |reason: Rejection| ClientError::Refused(ErrorReply::from(reason));
        assert!(moves_on(&refused(Rejection::Unavailable {
            detail: "starting".into()
        })));
        assert!(moves_on(&refused(Rejection::Internal {
            detail: "x".into()
        })));
        assert!(!moves_on(&refused(Rejection::Unsatisfiable {
            detail: "no node".into()
        })));
        assert!(!moves_on(&refused(Rejection::Policy {
            rule: "quota".into(),
            detail: "over the principal's quota".into()
        })));
        let lost = ClientError::Unreachable {
            party: "broker /ip4/127.0.0.1/tcp/1".into(),
            detail: "could not be reached (connection refused); check that it runs".into(),
        };
        assert!(moves_on(&lost));
        assert_eq!(why(&lost), "could not be reached (connection refused)");
        let frozen = ClientError::Unreachable {
            party: "broker x".into(),
            detail: "no answer within 5s (a; b); check it".into(),
        };
        assert_eq!(why(&frozen), "no answer within 5s (a; b)");
        assert!(moves_on(&ClientError::NotABroker("x".into())));
        assert!(!moves_on(&ClientError::Setup("bad address".into())));
    }

    #[test]
    fn the_last_known_good_broker_comes_first_and_failures_last() {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c, d] = [1, 2, 3, 4].map(|i| test_key(i).public());
        let mut health = Health::load(dir.path());
        health.failed(a, 100, "connection refused");
        health.answered(c, 90);
        health.answered(d, 95);
        let mut order = vec![a, b, c, d];
        health.order(&mut order, |k| *k);
        assert_eq!(order, vec![d, c, b, a]);
        // Kept for the next command; a broker that answers again is good again.
        let mut again = Health::load(dir.path());
        assert_eq!(
            again.record(&a).unwrap().why.as_deref(),
            Some("connection refused")
        );
        again.answered(a, 200);
        again.failed(d, 201, "timeout");
        let mut order = vec![b, c, d, a];
        again.order(&mut order, |k| *k);
        assert_eq!(order, vec![a, c, b, d]);
        // An unreadable file is no history, not an error.
        std::fs::write(dir.path().join(FILE), "not json").unwrap();
        assert_eq!(Health::load(dir.path()).record(&a), None);
    }
}
