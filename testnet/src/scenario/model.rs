//! What a scenario is: its `[testnet]`, and its steps as typed values.
//!
//! A step is a [`PlacedStep`]: the [`StepCommon`] part every step has (its line, its title)
//! and a [`Step`], an enum tagged by the step's `do` word whose variants each hold one struct.
//! Each struct declares its fields once, as serde reads them: a field without a default is
//! one the step needs, and the [parser](super::parse) takes the list of fields a step takes,
//! and of those it needs, from the struct itself. [`Kind::with_struct`] is the one table from
//! a `do` word to its struct.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::topology::Topology;

/// The site of the testnet's principal: every slice is named `fed0-site0_…`.
pub const PRINCIPAL_SITE: &str = "fed0-site0";

/// In `expect_output` (`exec`, `logs`): the address of the node each sliver runs on, checked
/// sliver by sliver (on a namespaced testnet the source its traffic leaves with). Lease
/// placeholders ([`lease_refs`]) name one sliver's lease instead, the same for every sliver.
pub const NODE_ADDRESS: &str = "{node_address}";

/// What a lease placeholder (`{FIELD:NODE}`, [`lease_refs`]) stands for: a field of the lease
/// that the step's slice holds on node `NODE`, as `slicectl slice status --json` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseField {
    /// `{public_address:NODE}`: where the rest of the Internet reaches the sliver, its node's
    /// public address (`public.address`).
    PublicAddress,
    /// `{public_port:NODE}`: the port the sliver leases there, forwarded to the same port
    /// inside it (`public.ports[0]`).
    PublicPort,
    /// `{sliver_address:NODE}`: the sliver's own address on its node (`address`).
    SliverAddress,
}

impl LeaseField {
    /// Every field, in the order messages list them.
    pub const ALL: [LeaseField; 3] = [
        LeaseField::PublicAddress,
        LeaseField::PublicPort,
        LeaseField::SliverAddress,
    ];

    /// As a placeholder spells it.
    pub fn word(self) -> &'static str {
        match self {
            LeaseField::PublicAddress => "public_address",
            LeaseField::PublicPort => "public_port",
            LeaseField::SliverAddress => "sliver_address",
        }
    }
}

/// A lease placeholder found in a step's text: `{FIELD:NODE}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    /// What it stands for.
    pub field: LeaseField,
    /// The node (a host name) whose sliver of the step's slice it names.
    pub node: String,
}

impl fmt::Display for LeaseRef {
    /// The placeholder as written: `{public_port:node0}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{}:{}}}", self.field.word(), self.node)
    }
}

/// The lease placeholders in `text` (a `command` element of `exec` or `spawn`, an
/// `expect_output` of `exec` or `logs`), each once, in order of first use. Only a `{` followed
/// by `public_` or `sliver_` and a `:` is read as one, so other braces (a script's) are left
/// alone; such a placeholder with an unknown field, no node or no closing `}` is an error.
pub fn lease_refs(text: &str) -> Result<Vec<LeaseRef>, String> {
    let mut refs: Vec<LeaseRef> = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        let word_len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(rest.len());
        let word = &rest[..word_len];
        if !(word.starts_with("public_") || word.starts_with("sliver_"))
            || !rest[word_len..].starts_with(':')
        {
            continue;
        }
        let known = || {
            LeaseField::ALL
                .iter()
                .map(|f| format!("{{{}:NODE}}", f.word()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(field) = LeaseField::ALL.into_iter().find(|f| f.word() == word) else {
            return Err(format!(
                "unknown placeholder {{{word}:…}}: a lease placeholder is one of {}",
                known()
            ));
        };
        let after = &rest[word_len + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("{{{word}:… has no closing }}"));
        };
        let node = &after[..close];
        if node.is_empty() || node.contains(|c: char| c.is_whitespace() || c == '{') {
            return Err(format!(
                "{{{word}:{node}}}: name a node, as in {{{word}:node0}}"
            ));
        }
        let found = LeaseRef {
            field,
            node: node.to_owned(),
        };
        if !refs.contains(&found) {
            refs.push(found);
        }
        rest = &after[close + 1..];
    }
    Ok(refs)
}

/// How hosts are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkChoice {
    /// Namespaces as root, loopback otherwise.
    #[default]
    Auto,
    /// Each host in its own network namespace on a bridge (root).
    Namespaces,
    /// Every host on 127.0.0.1.
    Loopback,
}

/// How nodes make slivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsolationChoice {
    /// Linux as root, memory otherwise.
    #[default]
    Auto,
    /// Real slivers (root).
    Linux,
    /// No isolation.
    Memory,
}

/// The `[testnet]` table: what to bring up, or which running testnet to use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestnetSpec {
    /// A running testnet's directory (relative to the current directory) to run on instead
    /// of bringing one up; it is left running.
    pub reuse: Option<PathBuf>,
    /// Federations (default 2).
    pub federations: Option<u32>,
    /// Nodes (default 6).
    pub nodes: Option<u32>,
    /// Agents (default 3).
    pub agents: Option<u32>,
    /// Brokers (default 1).
    pub brokers: Option<u32>,
    /// How hosts are connected.
    #[serde(default)]
    pub network: NetworkChoice,
    /// How nodes make slivers.
    #[serde(default)]
    pub isolation: IsolationChoice,
    /// Longest wait for ads to converge after start, in seconds (default 90).
    pub converge_secs: Option<u64>,
}

impl TestnetSpec {
    /// The topology to bring up.
    pub fn topology(&self) -> Topology {
        let d = Topology::default();
        Topology {
            federations: self.federations.unwrap_or(d.federations),
            nodes: self.nodes.unwrap_or(d.nodes),
            agents: self.agents.unwrap_or(d.agents),
            brokers: self.brokers.unwrap_or(d.brokers),
        }
    }
}

/// A `slicectl` failure class (its exit code), named in scenario files as `slicectl --json`
/// prints it (`ok`, `refused`, `not_found`, …).
pub use slicectl::exit::ExitClass as Class;

/// One value or a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OneOrMany<T> {
    /// One.
    One(T),
    /// A list.
    Many(Vec<T>),
}

// By hand rather than `untagged`, so a wrong value says what is wrong with it (an unknown
// class name, say) instead of "did not match any variant".
impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IntoDeserializer, value::SeqAccessDeserializer};
        struct Either<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Either<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                T::deserialize(v.into_deserializer()).map(OneOrMany::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                Vec::<T>::deserialize(SeqAccessDeserializer::new(seq)).map(OneOrMany::Many)
            }
        }
        d.deserialize_any(Either(std::marker::PhantomData))
    }
}

impl<T: Clone> OneOrMany<T> {
    /// As a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// Acquisition mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Every sliver or none.
    #[default]
    AllOrNothing,
    /// As many as can be had.
    BestEffort,
}

impl Mode {
    /// As `slicectl --mode` and scenario files spell it.
    pub fn word(self) -> &'static str {
        match self {
            Mode::AllOrNothing => "all-or-nothing",
            Mode::BestEffort => "best-effort",
        }
    }
}

/// Who plans and asks the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The testnet's broker (`broker0`).
    #[default]
    Broker,
    /// `slicectl --agent`: the broker in-process, asking the agents directly.
    Agents,
}

// ---------------------------------------------------------------------------------------------
// The steps. A field without `#[serde(default)]` (and not an `Option`) is one the step needs.
// ---------------------------------------------------------------------------------------------

/// What every step has, whatever its `do`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepCommon {
    /// The line of its `[[step]]` table (1-based).
    pub line: usize,
    /// What the step is for (`title = …`, printed before what it does).
    pub title: Option<String>,
}

/// `do = "acquire"`: `slicectl slice create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acquire {
    /// The slice (`fed0-site0_…`).
    pub slice: String,
    /// How many slivers.
    pub slivers: Option<u32>,
    /// Or: one sliver on each of these nodes (host names).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Per sliver, e.g. `cpu=200m,memory=96MiB`.
    pub resources: String,
    /// The tickets' window (default `1h`).
    pub duration: Option<String>,
    /// The first lease, when shorter.
    pub lease: Option<String>,
    /// Federations allowed (empty: any).
    #[serde(default)]
    pub federations: Vec<String>,
    /// At least this many sites.
    pub min_sites: Option<u32>,
    /// All-or-nothing (default) or best-effort.
    #[serde(default)]
    pub mode: Mode,
    /// Through the broker (default) or the agents.
    #[serde(default)]
    pub via: Via,
    /// With `via = "agents"`: only these agents (default: every agent).
    #[serde(default)]
    pub agents: Vec<String>,
    /// The class the step must end with.
    pub expect: Option<OneOrMany<Class>>,
    /// Slivers held afterwards.
    pub expect_slivers: Option<usize>,
    /// `slicectl --timeout` (default 20).
    pub timeout_secs: Option<u64>,
    /// Hosts SIGKILLed while the create runs, `kill_after_ms` after slicectl starts (a node
    /// dying mid-acquisition).
    #[serde(default)]
    pub kill_hosts: Vec<String>,
    /// When, after slicectl starts, `kill_hosts` die (default 0).
    pub kill_after_ms: Option<u64>,
    /// Slivers whose node did not answer and that the create replaced elsewhere.
    pub expect_replaced: Option<usize>,
}

/// `do = "exec"`: `slicectl slice exec`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    /// The slice.
    pub slice: String,
    /// A string runs under `/bin/sh -c`; a list runs as is.
    pub command: OneOrMany<String>,
    /// Every sliver's standard output contains this ([`NODE_ADDRESS`] standing for its node's
    /// address).
    pub expect_output: Option<String>,
    /// Every sliver's exit status (default 0).
    #[serde(default)]
    pub expect_exit: i32,
    /// Slivers that answered.
    pub expect_slivers: Option<usize>,
    /// The class (default `ok`, or `command_failed` when `expect_exit` is not 0).
    pub expect: Option<OneOrMany<Class>>,
    /// `slicectl --timeout`.
    pub timeout_secs: Option<u64>,
    /// Repeat until the expectations hold, for at most this long.
    pub retry_secs: Option<u64>,
}

/// `do = "status"`: `slicectl slice status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// The slice.
    pub slice: String,
    /// Slivers whose node says their lease is live.
    pub expect_live: Option<usize>,
    /// Slivers whose node reports what they used (CPU, memory, egress) in its signed ad.
    pub expect_measured: Option<usize>,
    /// The class.
    pub expect: Option<OneOrMany<Class>>,
    /// `slicectl --timeout`.
    pub timeout_secs: Option<u64>,
    /// Repeat until the expectations hold, for at most this long.
    pub retry_secs: Option<u64>,
}

/// `do = "renew"`: `slicectl slice renew`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Renew {
    /// The slice.
    pub slice: String,
    /// From now, e.g. `50m` (default: the slice's lease).
    #[serde(rename = "for")]
    pub for_: Option<String>,
    /// Slivers renewed.
    pub expect_renewed: Option<usize>,
    /// The class.
    pub expect: Option<OneOrMany<Class>>,
    /// `slicectl --timeout`.
    pub timeout_secs: Option<u64>,
    /// Repeat until the expectations hold, for at most this long.
    pub retry_secs: Option<u64>,
}

/// `do = "sync"`: `slicectl slice sync`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sync {
    /// The slice.
    pub slice: String,
    /// Slivers held afterwards.
    pub expect_held: Option<usize>,
    /// The class.
    pub expect: Option<OneOrMany<Class>>,
    /// `slicectl --timeout`.
    pub timeout_secs: Option<u64>,
    /// Repeat until the expectations hold, for at most this long.
    pub retry_secs: Option<u64>,
}

/// `do = "delete"`: `slicectl slice delete`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delete {
    /// The slice.
    pub slice: String,
    /// Leases released.
    pub expect_released: Option<usize>,
    /// The class.
    pub expect: Option<OneOrMany<Class>>,
    /// `slicectl --timeout`.
    pub timeout_secs: Option<u64>,
}

/// `do = "spawn"`: `slicectl slice spawn`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spawn {
    /// The slice.
    pub slice: String,
    /// A string runs under `/bin/sh -c`; a list runs as is.
    pub command: OneOrMany<String>,
    /// Slivers that answered with a pid.
    pub expect_slivers: Option<usize>,
    /// The class (default `ok`).
    pub expect: Option<OneOrMany<Class>>,
    /// `slicectl --timeout`.
    pub timeout_secs: Option<u64>,
}

/// `do = "logs"`: `slicectl slice logs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// The slice.
    pub slice: String,
    /// Every sliver's spawn log contains this ([`NODE_ADDRESS`] standing for its node's
    /// address).
    pub expect_output: Option<String>,
    /// Slivers that answered.
    pub expect_slivers: Option<usize>,
    /// The class (default `ok`).
    pub expect: Option<OneOrMany<Class>>,
    /// `slicectl --timeout`.
    pub timeout_secs: Option<u64>,
    /// Repeat until the expectations hold, for at most this long.
    pub retry_secs: Option<u64>,
}

/// What a `keys` step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysAction {
    /// `keys add LINE`: every sliver then lists the line.
    Add(String),
    /// `keys del LINE-OR-COMMENT`: no sliver lists it after.
    Del(String),
    /// `keys list`.
    List,
}

/// `do = "keys"`: `slicectl slice keys add|del|list`. A parsed scenario never gives both
/// `add` and `del`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// The slice.
    pub slice: String,
    /// A key line to add.
    pub add: Option<String>,
    /// Or: a key line, or its comment, to delete (neither: list the keys).
    pub del: Option<String>,
    /// Keys each sliver lists afterwards.
    pub expect_keys: Option<usize>,
    /// Slivers that answered.
    pub expect_slivers: Option<usize>,
    /// The class (default `ok`).
    pub expect: Option<OneOrMany<Class>>,
    /// `slicectl --timeout`.
    pub timeout_secs: Option<u64>,
}

impl Keys {
    /// Add, delete or list.
    pub fn action(&self) -> KeysAction {
        match (&self.add, &self.del) {
            (Some(key), _) => KeysAction::Add(key.clone()),
            (None, Some(key)) => KeysAction::Del(key.clone()),
            (None, None) => KeysAction::List,
        }
    }
}

/// `do = "kill"` or `"partition"`: hosts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hosts {
    /// The hosts (`node1`, `agent0`, …); `host = …` is read as `hosts`.
    pub hosts: OneOrMany<String>,
    /// Then wait until no agent offers the hosts (nodes) and the broker's plan names them no
    /// more, printing how long that took from the fault; fail past this many seconds.
    pub unplanned_within_secs: Option<u64>,
}

/// `do = "restart"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// The hosts.
    pub hosts: OneOrMany<String>,
    /// Longest wait until each answers (default 30).
    pub wait_secs: Option<u64>,
}

/// A step with nothing but what every step has (`heal`, `down`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bare {}

/// `do = "wait_converged"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitConverged {
    /// Longest wait (default 60).
    pub timeout_secs: Option<u64>,
}

/// `do = "sleep"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    /// How long.
    pub secs: f64,
}

/// `do = "expect_leases"`: leases as the nodes' ledgers show them (`/leases`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectLeases {
    /// The nodes to ask (default every node).
    pub nodes: Option<Vec<String>>,
    /// Count only this slice's leases.
    pub slice: Option<String>,
    /// Leases on each node.
    pub each: Option<usize>,
    /// Leases on all of them together.
    pub total: Option<usize>,
    /// Ask again until this long has passed (default: once).
    pub within_secs: Option<u64>,
}

/// `do = "revoke"`: the federation's authority revokes the testnet's principal and/or
/// hosts' keys (`fedctl revoke`), and hands the new list to one daemon (`--publish`), which
/// gossips it; the step can wait for what the revocation must bring about, and prints how
/// long it took from the hand-over.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    /// The federation whose authority signs (default `fed0`).
    pub federation: Option<String>,
    /// Revoke the testnet's principal (the key slicectl uses).
    #[serde(default)]
    pub principal: bool,
    /// Hosts whose keys to revoke (`node1`, `agent0`, …).
    pub hosts: Option<OneOrMany<String>>,
    /// The daemon handed the list (default: the federation's first node).
    pub through: Option<String>,
    /// Wait until no node holds a lease of these slices.
    #[serde(default)]
    pub expect_ended: Vec<String>,
    /// Wait until no agent lists a revoked node.
    #[serde(default)]
    pub expect_dropped: bool,
    /// Longest wait for `expect_ended` and `expect_dropped` (default 10).
    pub within_secs: Option<u64>,
}

/// A step's `do` word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `acquire`.
    Acquire,
    /// `exec`.
    Exec,
    /// `status`.
    Status,
    /// `renew`.
    Renew,
    /// `sync`.
    Sync,
    /// `delete`.
    Delete,
    /// `spawn`.
    Spawn,
    /// `logs`.
    Logs,
    /// `keys`.
    Keys,
    /// `kill`.
    Kill,
    /// `restart`.
    Restart,
    /// `partition`.
    Partition,
    /// `heal`.
    Heal,
    /// `wait_converged`.
    WaitConverged,
    /// `sleep`.
    Sleep,
    /// `expect_leases`.
    ExpectLeases,
    /// `revoke`.
    Revoke,
    /// `down`.
    Down,
}

/// Something done with the struct of one kind of step, whichever it is: see
/// [`Kind::with_struct`].
pub(super) trait WithStepStruct {
    /// What it gives.
    type Output;
    /// Does it with `T`, the struct of the kind; `into_step` wraps one in its [`Step`].
    fn with<T: DeserializeOwned>(self, into_step: fn(T) -> Step) -> Self::Output;
}

impl Kind {
    /// Every kind, in the order the message for an unknown `do` lists them.
    pub const ALL: [Kind; 18] = [
        Kind::Acquire,
        Kind::Exec,
        Kind::Status,
        Kind::Renew,
        Kind::Sync,
        Kind::Delete,
        Kind::Spawn,
        Kind::Logs,
        Kind::Keys,
        Kind::Kill,
        Kind::Restart,
        Kind::Partition,
        Kind::Heal,
        Kind::WaitConverged,
        Kind::Sleep,
        Kind::ExpectLeases,
        Kind::Revoke,
        Kind::Down,
    ];

    /// As scenario files spell it.
    pub fn word(self) -> &'static str {
        match self {
            Kind::Acquire => "acquire",
            Kind::Exec => "exec",
            Kind::Status => "status",
            Kind::Renew => "renew",
            Kind::Sync => "sync",
            Kind::Delete => "delete",
            Kind::Spawn => "spawn",
            Kind::Logs => "logs",
            Kind::Keys => "keys",
            Kind::Kill => "kill",
            Kind::Restart => "restart",
            Kind::Partition => "partition",
            Kind::Heal => "heal",
            Kind::WaitConverged => "wait_converged",
            Kind::Sleep => "sleep",
            Kind::ExpectLeases => "expect_leases",
            Kind::Revoke => "revoke",
            Kind::Down => "down",
        }
    }

    /// Calls `w` with this kind's struct: the one table from a `do` word to the struct that
    /// holds its fields and the [`Step`] variant that holds the struct.
    pub(super) fn with_struct<W: WithStepStruct>(self, w: W) -> W::Output {
        match self {
            Kind::Acquire => w.with(Step::Acquire),
            Kind::Exec => w.with(Step::Exec),
            Kind::Status => w.with(Step::Status),
            Kind::Renew => w.with(Step::Renew),
            Kind::Sync => w.with(Step::Sync),
            Kind::Delete => w.with(Step::Delete),
            Kind::Spawn => w.with(Step::Spawn),
            Kind::Logs => w.with(Step::Logs),
            Kind::Keys => w.with(Step::Keys),
            Kind::Kill => w.with(Step::Kill),
            Kind::Restart => w.with(Step::Restart),
            Kind::Partition => w.with(Step::Partition),
            Kind::Heal => w.with(Step::Heal),
            Kind::WaitConverged => w.with(Step::WaitConverged),
            Kind::Sleep => w.with(Step::Sleep),
            Kind::ExpectLeases => w.with(Step::ExpectLeases),
            Kind::Revoke => w.with(Step::Revoke),
            Kind::Down => w.with(Step::Down),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// One step, tagged by its `do` word ([`Kind`]): each variant holds the struct of the fields
/// that kind of step takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// `slicectl slice create`.
    Acquire(Acquire),
    /// `slicectl slice exec`.
    Exec(Exec),
    /// `slicectl slice status`.
    Status(Status),
    /// `slicectl slice renew`.
    Renew(Renew),
    /// `slicectl slice sync`.
    Sync(Sync),
    /// `slicectl slice delete`.
    Delete(Delete),
    /// `slicectl slice spawn`.
    Spawn(Spawn),
    /// `slicectl slice logs`.
    Logs(Logs),
    /// `slicectl slice keys`.
    Keys(Keys),
    /// SIGKILL hosts' daemons.
    Kill(Hosts),
    /// Stop (gracefully, if running) and start hosts' daemons; wait until they answer.
    Restart(Restart),
    /// Cut hosts off the network.
    Partition(Hosts),
    /// Undo every partition.
    Heal(Bare),
    /// Wait until every agent knows every node that delegated to it.
    WaitConverged(WaitConverged),
    /// Wait.
    Sleep(Sleep),
    /// Check the nodes' leases.
    ExpectLeases(ExpectLeases),
    /// Revoke keys and publish the list.
    Revoke(Revoke),
    /// Take the testnet down and check that nothing is left.
    Down(Bare),
}

impl Step {
    /// Its `do` word.
    pub fn kind(&self) -> Kind {
        match self {
            Step::Acquire(_) => Kind::Acquire,
            Step::Exec(_) => Kind::Exec,
            Step::Status(_) => Kind::Status,
            Step::Renew(_) => Kind::Renew,
            Step::Sync(_) => Kind::Sync,
            Step::Delete(_) => Kind::Delete,
            Step::Spawn(_) => Kind::Spawn,
            Step::Logs(_) => Kind::Logs,
            Step::Keys(_) => Kind::Keys,
            Step::Kill(_) => Kind::Kill,
            Step::Restart(_) => Kind::Restart,
            Step::Partition(_) => Kind::Partition,
            Step::Heal(_) => Kind::Heal,
            Step::WaitConverged(_) => Kind::WaitConverged,
            Step::Sleep(_) => Kind::Sleep,
            Step::ExpectLeases(_) => Kind::ExpectLeases,
            Step::Revoke(_) => Kind::Revoke,
            Step::Down(_) => Kind::Down,
        }
    }

    /// The step's texts that may hold lease placeholders ([`lease_refs`]), each with its
    /// field's name: `command` of `exec` and `spawn`, `expect_output` of `exec` and `logs`.
    pub fn lease_texts(&self) -> Vec<(&'static str, &str)> {
        let mut texts: Vec<(&'static str, &str)> = Vec::new();
        match self {
            Step::Exec(e) => {
                texts.extend(command_texts(&e.command).map(|t| ("command", t)));
                texts.extend(e.expect_output.as_deref().map(|t| ("expect_output", t)));
            }
            Step::Spawn(sp) => texts.extend(command_texts(&sp.command).map(|t| ("command", t))),
            Step::Logs(l) => {
                texts.extend(l.expect_output.as_deref().map(|t| ("expect_output", t)));
            }
            _ => {}
        }
        texts
    }

    /// What the step does, in a few words.
    pub fn describe(&self) -> String {
        match self {
            Step::Acquire(a) => {
                let count = if a.nodes.is_empty() {
                    format!("{} slivers", a.slivers.unwrap_or(0))
                } else {
                    format!("slivers on {}", a.nodes.join(", "))
                };
                let feds = if a.federations.is_empty() {
                    String::new()
                } else {
                    format!(" in {}", a.federations.join(" + "))
                };
                let via = match a.via {
                    Via::Broker => "the broker".to_owned(),
                    Via::Agents if a.agents.is_empty() => "the agents".to_owned(),
                    Via::Agents => a.agents.join(", "),
                };
                format!(
                    "acquire {} ({count}{feds}, {}) via {via}",
                    a.slice,
                    a.mode.word()
                )
            }
            Step::Exec(e) => format!(
                "exec in every sliver of {}: {}",
                e.slice,
                e.command.to_vec().join(" ")
            ),
            Step::Status(s) => format!("status of {}", s.slice),
            Step::Renew(r) => format!(
                "renew {}{}",
                r.slice,
                r.for_
                    .as_deref()
                    .map(|f| format!(" for {f}"))
                    .unwrap_or_default()
            ),
            Step::Sync(s) => format!("sync {}", s.slice),
            Step::Delete(d) => format!("delete {}", d.slice),
            Step::Spawn(sp) => format!(
                "spawn in every sliver of {}: {}",
                sp.slice,
                sp.command.to_vec().join(" ")
            ),
            Step::Logs(l) => format!("logs of every sliver of {}", l.slice),
            Step::Keys(k) => match k.action() {
                KeysAction::Add(key) => format!("add key {key:?} to every sliver of {}", k.slice),
                KeysAction::Del(key) => {
                    format!("remove key {key:?} from every sliver of {}", k.slice)
                }
                KeysAction::List => format!("list the keys of every sliver of {}", k.slice),
            },
            Step::Kill(h) => format!("kill {} (SIGKILL)", h.hosts.to_vec().join(", ")),
            Step::Restart(h) => format!("restart {}", h.hosts.to_vec().join(", ")),
            Step::Partition(h) => format!("partition {}", h.hosts.to_vec().join(", ")),
            Step::Heal(_) => "heal every partition".to_owned(),
            Step::WaitConverged(_) => "wait until ads have converged".to_owned(),
            Step::Sleep(s) => format!("sleep {}s", s.secs),
            Step::ExpectLeases(e) => {
                let mut parts = Vec::new();
                if let Some(n) = e.each {
                    parts.push(format!("{n} on each node"));
                }
                if let Some(n) = e.total {
                    parts.push(format!("{n} in all"));
                }
                format!(
                    "expect leases{}: {}{}",
                    e.slice
                        .as_deref()
                        .map(|s| format!(" of {s}"))
                        .unwrap_or_default(),
                    parts.join(", "),
                    e.nodes
                        .as_ref()
                        .map(|n| format!(" ({})", n.join(", ")))
                        .unwrap_or_default()
                )
            }
            Step::Revoke(r) => {
                let mut what: Vec<String> = Vec::new();
                if r.principal {
                    what.push("the principal".to_owned());
                }
                what.extend(r.hosts.iter().flat_map(OneOrMany::to_vec));
                format!(
                    "revoke {} in {}",
                    what.join(", "),
                    r.federation.as_deref().unwrap_or("fed0")
                )
            }
            Step::Down(_) => "take the testnet down; expect nothing left".to_owned(),
        }
    }
}

/// A `command`'s strings, borrowed.
fn command_texts(command: &OneOrMany<String>) -> impl Iterator<Item = &str> {
    match command {
        OneOrMany::One(c) => std::slice::from_ref(c).iter(),
        OneOrMany::Many(v) => v.iter(),
    }
    .map(String::as_str)
}

/// A step with what every step has: where it is and what it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedStep {
    /// Its line and title.
    pub common: StepCommon,
    /// What it does.
    pub step: Step,
}

impl PlacedStep {
    /// What the step does, in a few words, after its title if it has one.
    pub fn summary(&self) -> String {
        let what = self.step.describe();
        match &self.common.title {
            Some(t) => format!("{t}: {what}"),
            None => what,
        }
    }
}

/// A parsed and validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Where it came from (a file's path, or a name).
    pub source: String,
    /// What it shows.
    pub description: Option<String>,
    /// What to run it on.
    pub testnet: TestnetSpec,
    /// What to do, in order.
    pub steps: Vec<PlacedStep>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_match_slicectl_exit_codes() {
        for c in Class::ALL {
            assert_eq!(Class::of_code(c.code()), Some(c));
            let named: Class = Deserialize::deserialize(serde::de::value::StrDeserializer::<
                serde::de::value::Error,
            >::new(c.name()))
            .unwrap();
            assert_eq!(named, c);
        }
        assert_eq!(Class::of_code(6), Some(Class::Unreachable));
        assert_eq!(Class::of_code(42), None);
    }

    #[test]
    fn every_kind_reads_its_own_word() {
        for kind in Kind::ALL {
            let read: Kind = Deserialize::deserialize(serde::de::value::StrDeserializer::<
                serde::de::value::Error,
            >::new(kind.word()))
            .unwrap();
            assert_eq!(read, kind);
        }
    }

    #[test]
    fn lease_placeholders_are_read_and_other_braces_left_alone() {
        let r = |field, node: &str| LeaseRef {
            field,
            node: node.to_owned(),
        };
        assert_eq!(
            lease_refs(
                "exec 3<>/dev/tcp/{public_address:node0}/{public_port:node0}; {public_port:node0} {sliver_address:node12}"
            ),
            Ok(vec![
                r(LeaseField::PublicAddress, "node0"),
                r(LeaseField::PublicPort, "node0"),
                r(LeaseField::SliverAddress, "node12"),
            ])
        );
        assert_eq!(
            r(LeaseField::PublicPort, "node3").to_string(),
            "{public_port:node3}"
        );
        // A script's braces, {node_address} and a format spec are not lease placeholders.
        for text in [
            "print(f\"{addr}:{port} {peer[0]}\")",
            "you are {node_address}:",
            "{x:>5} {public} {sliver}",
            "{",
            "",
        ] {
            assert_eq!(lease_refs(text), Ok(Vec::new()), "{text}");
        }
        let unknown = lease_refs("{public_adress:node0}").unwrap_err();
        assert!(
            unknown.starts_with("unknown placeholder {public_adress:…}")
                && unknown
                    .contains("{public_address:NODE}, {public_port:NODE}, {sliver_address:NODE}"),
            "{unknown}"
        );
        assert_eq!(
            lease_refs("x {public_port:node0").unwrap_err(),
            "{public_port:… has no closing }"
        );
        assert!(
            lease_refs("{sliver_address:}")
                .unwrap_err()
                .contains("name a node, as in {sliver_address:node0}")
        );
    }

    #[test]
    fn keys_add_delete_or_list() {
        let keys = |add: Option<&str>, del: Option<&str>| Keys {
            slice: "fed0-site0_k".into(),
            add: add.map(str::to_owned),
            del: del.map(str::to_owned),
            expect_keys: None,
            expect_slivers: None,
            expect: None,
            timeout_secs: None,
        };
        assert_eq!(keys(Some("k"), None).action(), KeysAction::Add("k".into()));
        assert_eq!(keys(None, Some("c")).action(), KeysAction::Del("c".into()));
        assert_eq!(keys(None, None).action(), KeysAction::List);
    }
}
