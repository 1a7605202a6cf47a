//! Scenario files: a testnet to bring up (or one already running) and an ordered list of steps
//! — acquisitions, commands in slivers (exec, spawn, logs, keys), renewals, deletions, faults
//! (kill, restart, partition, heal) and assertions — run against real daemons, each step
//! printed with its time.
//!
//! ```toml
//! description = "a node killed and restarted mid-slice keeps its lease"
//!
//! [testnet]                      # every field optional; or: reuse = ".testnet"
//! federations = 2                # default 2
//! nodes = 4                      # default 6
//! agents = 2                     # default 3 (at least one per federation)
//! brokers = 1                    # default 1
//! network = "auto"               # auto (namespaces as root, else loopback) | namespaces | loopback
//! isolation = "auto"             # auto (linux as root, else memory) | linux | memory
//! converge_secs = 90             # longest wait for ads to converge after start
//!
//! [[step]]
//! do = "acquire"                 # slicectl slice create
//! slice = "fed0-site0_e2e"       # the principal is of site fed0-site0
//! slivers = 4                    # or: nodes = ["node0", "node3"]
//! resources = "cpu=200m,memory=96MiB,disk=128MiB,egress=2Mbit"
//! federations = ["fed0", "fed1"]
//! mode = "all-or-nothing"        # or "best-effort"
//! via = "broker"                 # or "agents" (slicectl --agent: the in-process broker)
//! expect_slivers = 4
//!
//! [[step]]
//! do = "kill"                    # SIGKILL, as a crash
//! hosts = ["node1"]
//! ```
//!
//! Steps (`do = …`) and their fields:
//!
//! | `do` | fields (besides `title`) |
//! |---|---|
//! | `acquire` | `slice`, `slivers` or `nodes`, `resources`, `duration` (1h), `lease`, `federations`, `min_sites`, `mode`, `via`, `agents`, `expect`, `expect_slivers`, `timeout_secs` |
//! | `exec` | `slice`, `command` (a string runs under `/bin/sh -c`, a list as is), `expect_output` (in every sliver's stdout), `expect_exit` (0), `expect_slivers`, `expect`, `timeout_secs`, `retry_secs` |
//! | `status` | `slice`, `expect_live`, `expect_measured`, `expect`, `timeout_secs`, `retry_secs` |
//! | `renew` | `slice`, `for`, `expect_renewed`, `expect`, `timeout_secs`, `retry_secs` |
//! | `sync` | `slice`, `expect_held`, `expect`, `timeout_secs`, `retry_secs` |
//! | `delete` | `slice`, `expect_released`, `expect`, `timeout_secs` |
//! | `spawn` | `slice`, `command` (as for `exec`), `expect_slivers` (each answered a pid), `expect`, `timeout_secs` |
//! | `logs` | `slice`, `expect_output` (in every sliver's spawn log), `expect_slivers`, `expect`, `timeout_secs`, `retry_secs` |
//! | `keys` | `slice`, `add` or `del` (a key line, or for `del` its comment; neither: list), `expect_keys` (keys each sliver lists after), `expect_slivers`, `expect`, `timeout_secs` |
//! | `kill` | `hosts` (SIGKILL) |
//! | `restart` | `hosts`, `wait_secs` (30: until each answers) |
//! | `partition` | `hosts` |
//! | `heal` | — |
//! | `wait_converged` | `timeout_secs` (60) |
//! | `sleep` | `secs` |
//! | `expect_leases` | `nodes` (default every node), `slice`, `each`, `total`, `within_secs` |
//! | `down` | — (takes the testnet down and checks that nothing is left; the last step) |
//!
//! `expect` is the `slicectl` failure class a step must end with (`ok` by default; `exec` with
//! a non-zero `expect_exit`: `command_failed`), or a list of them: `ok`, `internal`, `usage`,
//! `setup`, `unsatisfiable`, `refused`, `unreachable`, `partial`, `not_found`,
//! `command_failed`. `retry_secs` repeats an idempotent step until its expectations hold.
//!
//! Steps drive the `slicectl` binary with `--json`, as `testnet demo` does
//! ([`crate::demo::Slicectl`]), and the testnet's hosts through [`crate::launch`],
//! [`crate::netns`] and [`crate::probe`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

use crate::demo::{Slicectl, SlicectlRun};
use crate::generate::{Manifest, Network, generate};
use crate::launch;
use crate::probe;
use crate::topology::{HostPlan, HostRole, Topology};

/// The site of the testnet's principal: every slice is named `fed0-site0_…`.
pub const PRINCIPAL_SITE: &str = "fed0-site0";

// ---------------------------------------------------------------------------------------------
// The format.
// ---------------------------------------------------------------------------------------------

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

/// `do = "acquire"`: `slicectl slice create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquire {
    /// What the step is for (printed).
    pub title: Option<String>,
    /// The slice (`fed0-site0_…`).
    pub slice: String,
    /// How many slivers.
    pub slivers: Option<u32>,
    /// Or: one sliver on each of these nodes (host names).
    pub nodes: Vec<String>,
    /// Per sliver, e.g. `cpu=200m,memory=96MiB`.
    pub resources: String,
    /// The tickets' window (default `1h`).
    pub duration: Option<String>,
    /// The first lease, when shorter.
    pub lease: Option<String>,
    /// Federations allowed (empty: any).
    pub federations: Vec<String>,
    /// At least this many sites.
    pub min_sites: Option<u32>,
    /// All-or-nothing (default) or best-effort.
    pub mode: Mode,
    /// Through the broker (default) or the agents.
    pub via: Via,
    /// With `via = "agents"`: only these agents (default: every agent).
    pub agents: Vec<String>,
    /// The class the step must end with.
    pub expect: Option<OneOrMany<Class>>,
    /// Slivers held afterwards.
    pub expect_slivers: Option<usize>,
    /// `slicectl --timeout` (default 20).
    pub timeout_secs: Option<u64>,
}

/// `do = "exec"`: `slicectl slice exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// What the step is for.
    pub title: Option<String>,
    /// The slice.
    pub slice: String,
    /// A string runs under `/bin/sh -c`; a list runs as is.
    pub command: OneOrMany<String>,
    /// Every sliver's standard output contains this.
    pub expect_output: Option<String>,
    /// Every sliver's exit status (default 0).
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// What the step is for.
    pub title: Option<String>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renew {
    /// What the step is for.
    pub title: Option<String>,
    /// The slice.
    pub slice: String,
    /// From now, e.g. `50m` (default: the slice's lease).
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    /// What the step is for.
    pub title: Option<String>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// What the step is for.
    pub title: Option<String>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    /// What the step is for.
    pub title: Option<String>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logs {
    /// What the step is for.
    pub title: Option<String>,
    /// The slice.
    pub slice: String,
    /// Every sliver's spawn log contains this.
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

/// `do = "keys"`: `slicectl slice keys add|del|list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// What the step is for.
    pub title: Option<String>,
    /// The slice.
    pub slice: String,
    /// Add, delete or list.
    pub action: KeysAction,
    /// Keys each sliver lists afterwards.
    pub expect_keys: Option<usize>,
    /// Slivers that answered.
    pub expect_slivers: Option<usize>,
    /// The class (default `ok`).
    pub expect: Option<OneOrMany<Class>>,
    /// `slicectl --timeout`.
    pub timeout_secs: Option<u64>,
}

/// `do = "kill"` or `"partition"`: hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    /// What the step is for.
    pub title: Option<String>,
    /// The hosts (`node1`, `agent0`, …).
    pub hosts: OneOrMany<String>,
}

/// `do = "restart"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// What the step is for.
    pub title: Option<String>,
    /// The hosts.
    pub hosts: OneOrMany<String>,
    /// Longest wait until each answers (default 30).
    pub wait_secs: Option<u64>,
}

/// A step with nothing but a title (`heal`, `down`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bare {
    /// What the step is for.
    pub title: Option<String>,
}

/// `do = "wait_converged"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitConverged {
    /// What the step is for.
    pub title: Option<String>,
    /// Longest wait (default 60).
    pub timeout_secs: Option<u64>,
}

/// `do = "sleep"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sleep {
    /// What the step is for.
    pub title: Option<String>,
    /// How long.
    pub secs: f64,
}

/// `do = "expect_leases"`: leases as the nodes' ledgers show them (`/leases`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectLeases {
    /// What the step is for.
    pub title: Option<String>,
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

/// One step.
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
    /// Take the testnet down and check that nothing is left.
    Down(Bare),
}

impl Step {
    /// Its `do` word.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Acquire(_) => "acquire",
            Step::Exec(_) => "exec",
            Step::Status(_) => "status",
            Step::Renew(_) => "renew",
            Step::Sync(_) => "sync",
            Step::Delete(_) => "delete",
            Step::Spawn(_) => "spawn",
            Step::Logs(_) => "logs",
            Step::Keys(_) => "keys",
            Step::Kill(_) => "kill",
            Step::Restart(_) => "restart",
            Step::Partition(_) => "partition",
            Step::Heal(_) => "heal",
            Step::WaitConverged(_) => "wait_converged",
            Step::Sleep(_) => "sleep",
            Step::ExpectLeases(_) => "expect_leases",
            Step::Down(_) => "down",
        }
    }

    fn title(&self) -> Option<&str> {
        match self {
            Step::Acquire(s) => s.title.as_deref(),
            Step::Exec(s) => s.title.as_deref(),
            Step::Status(s) => s.title.as_deref(),
            Step::Renew(s) => s.title.as_deref(),
            Step::Sync(s) => s.title.as_deref(),
            Step::Delete(s) => s.title.as_deref(),
            Step::Spawn(s) => s.title.as_deref(),
            Step::Logs(s) => s.title.as_deref(),
            Step::Keys(s) => s.title.as_deref(),
            Step::Kill(s) | Step::Partition(s) => s.title.as_deref(),
            Step::Restart(s) => s.title.as_deref(),
            Step::Heal(s) | Step::Down(s) => s.title.as_deref(),
            Step::WaitConverged(s) => s.title.as_deref(),
            Step::Sleep(s) => s.title.as_deref(),
            Step::ExpectLeases(s) => s.title.as_deref(),
        }
    }

    /// What the step does, in a few words.
    pub fn summary(&self) -> String {
        let what = match self {
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
                let mode = match a.mode {
                    Mode::AllOrNothing => "all-or-nothing",
                    Mode::BestEffort => "best-effort",
                };
                format!("acquire {} ({count}{feds}, {mode}) via {via}", a.slice)
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
            Step::Keys(k) => match &k.action {
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
            Step::Down(_) => "take the testnet down; expect nothing left".to_owned(),
        };
        match self.title() {
            Some(t) => format!("{t}: {what}"),
            None => what,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    description: Option<String>,
    #[serde(default)]
    testnet: TestnetSpec,
    #[serde(default)]
    step: Vec<toml::Spanned<RawStep>>,
}

/// The `do` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Acquire,
    Exec,
    Status,
    Renew,
    Sync,
    Delete,
    Spawn,
    Logs,
    Keys,
    Kill,
    Restart,
    Partition,
    Heal,
    WaitConverged,
    Sleep,
    ExpectLeases,
    Down,
}

/// A `[[step]]` table as written: every field any step takes, so that the TOML reader itself
/// reports a wrong value or an unknown field at its line and column; [`RawStep::into_step`]
/// then says which fields do not apply to the step's `do`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    #[serde(rename = "do")]
    kind: Kind,
    title: Option<String>,
    slice: Option<String>,
    slivers: Option<u32>,
    nodes: Option<Vec<String>>,
    resources: Option<String>,
    duration: Option<String>,
    lease: Option<String>,
    federations: Option<Vec<String>>,
    min_sites: Option<u32>,
    mode: Option<Mode>,
    via: Option<Via>,
    agents: Option<Vec<String>>,
    expect: Option<OneOrMany<Class>>,
    expect_slivers: Option<usize>,
    timeout_secs: Option<u64>,
    retry_secs: Option<u64>,
    command: Option<OneOrMany<String>>,
    expect_output: Option<String>,
    expect_exit: Option<i32>,
    expect_live: Option<usize>,
    expect_measured: Option<usize>,
    #[serde(rename = "for")]
    for_: Option<String>,
    expect_renewed: Option<usize>,
    expect_held: Option<usize>,
    expect_released: Option<usize>,
    #[serde(alias = "host")]
    hosts: Option<OneOrMany<String>>,
    wait_secs: Option<u64>,
    secs: Option<f64>,
    each: Option<usize>,
    total: Option<usize>,
    within_secs: Option<u64>,
    add: Option<String>,
    del: Option<String>,
    expect_keys: Option<usize>,
}

impl Kind {
    fn word(self) -> &'static str {
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
            Kind::Down => "down",
        }
    }

    /// The fields this step takes (besides `do` and `title`).
    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::Acquire => &[
                "slice",
                "slivers",
                "nodes",
                "resources",
                "duration",
                "lease",
                "federations",
                "min_sites",
                "mode",
                "via",
                "agents",
                "expect",
                "expect_slivers",
                "timeout_secs",
            ],
            Kind::Exec => &[
                "slice",
                "command",
                "expect_output",
                "expect_exit",
                "expect_slivers",
                "expect",
                "timeout_secs",
                "retry_secs",
            ],
            Kind::Status => &[
                "slice",
                "expect_live",
                "expect_measured",
                "expect",
                "timeout_secs",
                "retry_secs",
            ],
            Kind::Renew => &[
                "slice",
                "for",
                "expect_renewed",
                "expect",
                "timeout_secs",
                "retry_secs",
            ],
            Kind::Sync => &[
                "slice",
                "expect_held",
                "expect",
                "timeout_secs",
                "retry_secs",
            ],
            Kind::Delete => &["slice", "expect_released", "expect", "timeout_secs"],
            Kind::Spawn => &[
                "slice",
                "command",
                "expect_slivers",
                "expect",
                "timeout_secs",
            ],
            Kind::Logs => &[
                "slice",
                "expect_output",
                "expect_slivers",
                "expect",
                "timeout_secs",
                "retry_secs",
            ],
            Kind::Keys => &[
                "slice",
                "add",
                "del",
                "expect_keys",
                "expect_slivers",
                "expect",
                "timeout_secs",
            ],
            Kind::Kill | Kind::Partition => &["hosts"],
            Kind::Restart => &["hosts", "wait_secs"],
            Kind::Heal | Kind::Down => &[],
            Kind::WaitConverged => &["timeout_secs"],
            Kind::Sleep => &["secs"],
            Kind::ExpectLeases => &["nodes", "slice", "each", "total", "within_secs"],
        }
    }

    /// The fields this step cannot do without.
    fn required(self) -> &'static [&'static str] {
        match self {
            Kind::Acquire => &["slice", "resources"],
            Kind::Exec | Kind::Spawn => &["slice", "command"],
            Kind::Status | Kind::Renew | Kind::Sync | Kind::Delete | Kind::Logs | Kind::Keys => {
                &["slice"]
            }
            Kind::Kill | Kind::Partition | Kind::Restart => &["hosts"],
            Kind::Sleep => &["secs"],
            Kind::Heal | Kind::Down | Kind::WaitConverged | Kind::ExpectLeases => &[],
        }
    }
}

impl RawStep {
    /// The fields given (besides `do` and `title`).
    fn given(&self) -> Vec<&'static str> {
        let all: [(&'static str, bool); 35] = [
            ("slice", self.slice.is_some()),
            ("slivers", self.slivers.is_some()),
            ("nodes", self.nodes.is_some()),
            ("resources", self.resources.is_some()),
            ("duration", self.duration.is_some()),
            ("lease", self.lease.is_some()),
            ("federations", self.federations.is_some()),
            ("min_sites", self.min_sites.is_some()),
            ("mode", self.mode.is_some()),
            ("via", self.via.is_some()),
            ("agents", self.agents.is_some()),
            ("expect", self.expect.is_some()),
            ("expect_slivers", self.expect_slivers.is_some()),
            ("timeout_secs", self.timeout_secs.is_some()),
            ("retry_secs", self.retry_secs.is_some()),
            ("command", self.command.is_some()),
            ("expect_output", self.expect_output.is_some()),
            ("expect_exit", self.expect_exit.is_some()),
            ("expect_live", self.expect_live.is_some()),
            ("expect_measured", self.expect_measured.is_some()),
            ("for", self.for_.is_some()),
            ("expect_renewed", self.expect_renewed.is_some()),
            ("expect_held", self.expect_held.is_some()),
            ("expect_released", self.expect_released.is_some()),
            ("hosts", self.hosts.is_some()),
            ("wait_secs", self.wait_secs.is_some()),
            ("secs", self.secs.is_some()),
            ("each", self.each.is_some()),
            ("total", self.total.is_some()),
            ("within_secs", self.within_secs.is_some()),
            ("add", self.add.is_some()),
            ("del", self.del.is_some()),
            ("expect_keys", self.expect_keys.is_some()),
            ("title", false),
            ("do", false),
        ];
        all.iter()
            .filter(|(_, set)| *set)
            .map(|(f, _)| *f)
            .collect()
    }

    /// The typed step, or why not: fields that do not apply to its `do`, fields missing.
    fn into_step(self) -> Result<Step, Vec<String>> {
        let kind = self.kind;
        let mut problems = Vec::new();
        for field in self.given() {
            if !kind.fields().contains(&field) {
                let takes = kind.fields();
                problems.push(format!(
                    "`{field}` does not apply to do = {:?} ({})",
                    kind.word(),
                    if takes.is_empty() {
                        "it takes only `title`".to_owned()
                    } else {
                        format!("it takes {}", takes.join(", "))
                    }
                ));
            }
        }
        let given = self.given();
        for field in kind.required() {
            if !given.contains(field) {
                problems.push(format!(
                    "`{field}` is missing (do = {:?} needs it)",
                    kind.word()
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let title = self.title;
        let slice = self.slice.clone().unwrap_or_default();
        let hosts = self.hosts.unwrap_or(OneOrMany::Many(Vec::new()));
        Ok(match kind {
            Kind::Acquire => Step::Acquire(Acquire {
                title,
                slice,
                slivers: self.slivers,
                nodes: self.nodes.unwrap_or_default(),
                resources: self.resources.unwrap_or_default(),
                duration: self.duration,
                lease: self.lease,
                federations: self.federations.unwrap_or_default(),
                min_sites: self.min_sites,
                mode: self.mode.unwrap_or_default(),
                via: self.via.unwrap_or_default(),
                agents: self.agents.unwrap_or_default(),
                expect: self.expect,
                expect_slivers: self.expect_slivers,
                timeout_secs: self.timeout_secs,
            }),
            Kind::Exec => Step::Exec(Exec {
                title,
                slice,
                command: self.command.unwrap_or(OneOrMany::Many(Vec::new())),
                expect_output: self.expect_output,
                expect_exit: self.expect_exit.unwrap_or(0),
                expect_slivers: self.expect_slivers,
                expect: self.expect,
                timeout_secs: self.timeout_secs,
                retry_secs: self.retry_secs,
            }),
            Kind::Status => Step::Status(Status {
                title,
                slice,
                expect_live: self.expect_live,
                expect_measured: self.expect_measured,
                expect: self.expect,
                timeout_secs: self.timeout_secs,
                retry_secs: self.retry_secs,
            }),
            Kind::Renew => Step::Renew(Renew {
                title,
                slice,
                for_: self.for_,
                expect_renewed: self.expect_renewed,
                expect: self.expect,
                timeout_secs: self.timeout_secs,
                retry_secs: self.retry_secs,
            }),
            Kind::Sync => Step::Sync(Sync {
                title,
                slice,
                expect_held: self.expect_held,
                expect: self.expect,
                timeout_secs: self.timeout_secs,
                retry_secs: self.retry_secs,
            }),
            Kind::Delete => Step::Delete(Delete {
                title,
                slice,
                expect_released: self.expect_released,
                expect: self.expect,
                timeout_secs: self.timeout_secs,
            }),
            Kind::Spawn => Step::Spawn(Spawn {
                title,
                slice,
                command: self.command.unwrap_or(OneOrMany::Many(Vec::new())),
                expect_slivers: self.expect_slivers,
                expect: self.expect,
                timeout_secs: self.timeout_secs,
            }),
            Kind::Logs => Step::Logs(Logs {
                title,
                slice,
                expect_output: self.expect_output,
                expect_slivers: self.expect_slivers,
                expect: self.expect,
                timeout_secs: self.timeout_secs,
                retry_secs: self.retry_secs,
            }),
            Kind::Keys => {
                let action = match (self.add, self.del) {
                    (Some(_), Some(_)) => {
                        return Err(vec![
                            "give `add` or `del`, not both (neither: list the keys)".into(),
                        ]);
                    }
                    (Some(k), None) => KeysAction::Add(k),
                    (None, Some(k)) => KeysAction::Del(k),
                    (None, None) => KeysAction::List,
                };
                Step::Keys(Keys {
                    title,
                    slice,
                    action,
                    expect_keys: self.expect_keys,
                    expect_slivers: self.expect_slivers,
                    expect: self.expect,
                    timeout_secs: self.timeout_secs,
                })
            }
            Kind::Kill => Step::Kill(Hosts { title, hosts }),
            Kind::Partition => Step::Partition(Hosts { title, hosts }),
            Kind::Restart => Step::Restart(Restart {
                title,
                hosts,
                wait_secs: self.wait_secs,
            }),
            Kind::Heal => Step::Heal(Bare { title }),
            Kind::Down => Step::Down(Bare { title }),
            Kind::WaitConverged => Step::WaitConverged(WaitConverged {
                title,
                timeout_secs: self.timeout_secs,
            }),
            Kind::Sleep => Step::Sleep(Sleep {
                title,
                secs: self.secs.unwrap_or(0.0),
            }),
            Kind::ExpectLeases => Step::ExpectLeases(ExpectLeases {
                title,
                nodes: self.nodes,
                slice: self.slice,
                each: self.each,
                total: self.total,
                within_secs: self.within_secs,
            }),
        })
    }
}

/// A step and the line of the file where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedStep {
    /// The line of its `[[step]]` table (1-based).
    pub line: usize,
    /// The step.
    pub step: Step,
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

/// Why a scenario file is not usable: every problem found, each naming its line and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    /// The file.
    pub source: String,
    /// The problems.
    pub problems: Vec<String>,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "{}: {one}", self.source),
            many => {
                write!(f, "{}: {} problems:", self.source, many.len())?;
                for p in many {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ScenarioError {}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        source: source.clone(),
        problems: vec![format!("cannot read it: {e}")],
    })?;
    parse(&text, &source)
}

/// Parses and validates a scenario; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<Scenario, ScenarioError> {
    let file: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError {
        source: source.to_owned(),
        problems: vec![e.to_string().trim_end().to_owned()],
    })?;
    let mut problems = Vec::new();
    let mut steps = Vec::new();
    for (i, raw) in file.step.into_iter().enumerate() {
        let line = line_of(text, raw.span().start);
        let kind = raw.get_ref().kind.word();
        match raw.into_inner().into_step() {
            Ok(step) => steps.push(PlacedStep { line, step }),
            Err(why) => problems.extend(
                why.into_iter()
                    .map(|w| format!("line {line}: step {} (do = {kind:?}): {w}", i + 1)),
            ),
        }
    }
    if !problems.is_empty() {
        return Err(ScenarioError {
            source: source.to_owned(),
            problems,
        });
    }
    let scenario = Scenario {
        source: source.to_owned(),
        description: file.description,
        testnet: file.testnet,
        steps,
    };
    let problems = validate(&scenario);
    if problems.is_empty() {
        Ok(scenario)
    } else {
        Err(ScenarioError {
            source: source.to_owned(),
            problems,
        })
    }
}

/// What validation knows of the hosts: the planned ones, or only their names' shape (a
/// running testnet is checked when the scenario runs).
enum KnownHosts {
    Planned(Vec<HostPlan>),
    Unknown,
}

impl KnownHosts {
    /// Checks that `name` is a host with `role` (any role if `None`).
    fn check(&self, name: &str, role: Option<HostRole>) -> Result<(), String> {
        match self {
            KnownHosts::Planned(hosts) => {
                let Some(host) = hosts.iter().find(|h| h.name == name) else {
                    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                    return Err(format!(
                        "no host {name:?} in this testnet; hosts are {}",
                        names.join(", ")
                    ));
                };
                match role {
                    Some(r) if host.role != r => Err(format!(
                        "{name} is {} host, not {}",
                        role_article(host.role),
                        role_article(r)
                    )),
                    _ => Ok(()),
                }
            }
            KnownHosts::Unknown => {
                let roles = [HostRole::Node, HostRole::Agent, HostRole::Broker];
                let shaped = roles.iter().any(|r| {
                    let prefix = role_prefix(*r);
                    name.strip_prefix(prefix).is_some_and(|n| {
                        !n.is_empty()
                            && n.bytes().all(|b| b.is_ascii_digit())
                            && role.is_none_or(|want| want == *r)
                    })
                });
                if shaped {
                    Ok(())
                } else {
                    Err(format!(
                        "{name:?} is not a {} name (nodeN, agentN, brokerN)",
                        role.map_or("host", role_prefix)
                    ))
                }
            }
        }
    }

    fn federations(&self) -> Option<Vec<String>> {
        match self {
            KnownHosts::Planned(hosts) => {
                let mut f: Vec<String> = hosts.iter().map(|h| h.federation.clone()).collect();
                f.sort();
                f.dedup();
                Some(f)
            }
            KnownHosts::Unknown => None,
        }
    }

    fn brokers(&self) -> Option<usize> {
        match self {
            KnownHosts::Planned(hosts) => {
                Some(hosts.iter().filter(|h| h.role == HostRole::Broker).count())
            }
            KnownHosts::Unknown => None,
        }
    }
}

fn role_prefix(role: HostRole) -> &'static str {
    match role {
        HostRole::Node => "node",
        HostRole::Agent => "agent",
        HostRole::Broker => "broker",
    }
}

fn role_article(role: HostRole) -> &'static str {
    match role {
        HostRole::Node => "a node",
        HostRole::Agent => "an agent",
        HostRole::Broker => "a broker",
    }
}

fn check_duration(field: &str, value: &str) -> Result<(), String> {
    slicectl::spec::parse_duration(value)
        .map(|_| ())
        .map_err(|e| {
            let e = e.to_string();
            format!("`{field}`: {}", e.strip_prefix("spec: ").unwrap_or(&e))
        })
}

/// Why a step may not use `slice` here (it is not held, and not expected to be missing).
fn not_held(
    live: &BTreeMap<String, usize>,
    slice: &str,
    expect: &Option<OneOrMany<Class>>,
) -> Option<String> {
    let expects_absent = expect
        .as_ref()
        .is_some_and(|e| e.to_vec().contains(&Class::NotFound));
    (!live.contains_key(slice) && !expects_absent).then(|| {
        format!(
            "`slice`: {slice:?} is not held here: acquire it in an earlier step (or expect = \"not_found\")"
        )
    })
}

/// Every problem of a scenario (empty: it is valid).
fn validate(s: &Scenario) -> Vec<String> {
    let mut problems = Vec::new();
    let t = &s.testnet;
    let hosts = if let Some(reuse) = &t.reuse {
        let set: Vec<&str> = [
            ("federations", t.federations.is_some()),
            ("nodes", t.nodes.is_some()),
            ("agents", t.agents.is_some()),
            ("brokers", t.brokers.is_some()),
            ("network", t.network != NetworkChoice::Auto),
            ("isolation", t.isolation != IsolationChoice::Auto),
            ("converge_secs", t.converge_secs.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| *name)
        .collect();
        if !set.is_empty() {
            problems.push(format!(
                "[testnet]: `reuse = {:?}` runs on a testnet that is up already; drop {}",
                reuse.display(),
                set.iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        KnownHosts::Unknown
    } else {
        match t.topology().hosts() {
            Ok(h) => KnownHosts::Planned(h),
            Err(e) => {
                problems.push(format!("[testnet]: {e}"));
                KnownHosts::Unknown
            }
        }
    };
    if t.converge_secs == Some(0) {
        problems.push("[testnet]: `converge_secs` must be at least 1".into());
    }
    if s.steps.is_empty() {
        problems.push("no steps: add [[step]] tables (do = \"acquire\", …)".into());
    }
    // Slices held after each step: name → the line that acquired it.
    let mut live: BTreeMap<String, usize> = BTreeMap::new();
    let last = s.steps.len().saturating_sub(1);
    for (i, placed) in s.steps.iter().enumerate() {
        let here = format!(
            "line {}: step {} (do = {:?})",
            placed.line,
            i + 1,
            placed.step.kind()
        );
        let mut bad = |detail: String| problems.push(format!("{here}: {detail}"));
        match &placed.step {
            Step::Acquire(a) => {
                if !a.slice.starts_with(&format!("{PRINCIPAL_SITE}_"))
                    || a.slice.len() <= PRINCIPAL_SITE.len() + 1
                {
                    bad(format!(
                        "`slice`: {:?}: the testnet's principal is of site {PRINCIPAL_SITE}, so slices are named {PRINCIPAL_SITE}_<name>",
                        a.slice
                    ));
                }
                if let Some(line) = live.get(&a.slice) {
                    bad(format!(
                        "`slice`: {:?} is held already (acquired on line {line}); delete it first",
                        a.slice
                    ));
                }
                match (a.slivers, a.nodes.is_empty()) {
                    (Some(_), false) => bad("give `slivers` or `nodes`, not both".into()),
                    (None, true) => bad(
                        "say how many slivers (`slivers = N`) or where (`nodes = [\"node0\", …]`)"
                            .into(),
                    ),
                    (Some(0), true) => bad("`slivers` must be at least 1".into()),
                    _ => {}
                }
                for n in &a.nodes {
                    if let Err(e) = hosts.check(n, Some(HostRole::Node)) {
                        bad(format!("`nodes`: {e}"));
                    }
                }
                match a.resources.parse::<capability_schema::Resources>() {
                    Ok(r) if r.is_zero() => bad(
                        "`resources`: ask for something per sliver, e.g. \"cpu=200m,memory=96MiB\""
                            .into(),
                    ),
                    Ok(_) => {}
                    Err(e) => bad(format!("`resources`: {:?}: {e}", a.resources)),
                }
                if let Some(d) = &a.duration
                    && let Err(e) = check_duration("duration", d)
                {
                    bad(e);
                }
                if let Some(d) = &a.lease
                    && let Err(e) = check_duration("lease", d)
                {
                    bad(e);
                }
                if let Some(feds) = hosts.federations() {
                    for f in &a.federations {
                        if !feds.contains(f) {
                            bad(format!(
                                "`federations`: no federation {f:?}; this testnet has {}",
                                feds.join(", ")
                            ));
                        }
                    }
                }
                match a.via {
                    Via::Broker => {
                        if !a.agents.is_empty() {
                            bad("`agents` applies to via = \"agents\" only".into());
                        }
                        if hosts.brokers() == Some(0) {
                            bad("via = \"broker\" but the testnet has no broker (set brokers = 1, or via = \"agents\")".into());
                        }
                    }
                    Via::Agents => {
                        for n in &a.agents {
                            if let Err(e) = hosts.check(n, Some(HostRole::Agent)) {
                                bad(format!("`agents`: {e}"));
                            }
                        }
                    }
                }
                let ends_held = a.expect.as_ref().is_none_or(|e| {
                    e.to_vec()
                        .iter()
                        .any(|c| matches!(c, Class::Ok | Class::Partial))
                });
                if ends_held {
                    live.insert(a.slice.clone(), placed.line);
                }
            }
            Step::Exec(e) => {
                if let Some(problem) = not_held(&live, &e.slice, &e.expect) {
                    bad(problem);
                }
                let argv = e.command.to_vec();
                if argv.is_empty() || argv.iter().all(|a| a.trim().is_empty()) {
                    bad("`command` is empty".into());
                }
            }
            Step::Status(st) => {
                if let Some(problem) = not_held(&live, &st.slice, &st.expect) {
                    bad(problem);
                }
            }
            Step::Renew(r) => {
                if let Some(problem) = not_held(&live, &r.slice, &r.expect) {
                    bad(problem);
                }
                if let Some(f) = &r.for_
                    && let Err(e) = check_duration("for", f)
                {
                    bad(e);
                }
            }
            Step::Sync(sy) => {
                if let Some(problem) = not_held(&live, &sy.slice, &sy.expect) {
                    bad(problem);
                }
            }
            Step::Spawn(sp) => {
                if let Some(problem) = not_held(&live, &sp.slice, &sp.expect) {
                    bad(problem);
                }
                let argv = sp.command.to_vec();
                if argv.is_empty() || argv.iter().all(|a| a.trim().is_empty()) {
                    bad("`command` is empty".into());
                }
            }
            Step::Logs(l) => {
                if let Some(problem) = not_held(&live, &l.slice, &l.expect) {
                    bad(problem);
                }
            }
            Step::Keys(k) => {
                if let Some(problem) = not_held(&live, &k.slice, &k.expect) {
                    bad(problem);
                }
                if let KeysAction::Add(key) | KeysAction::Del(key) = &k.action
                    && key.trim().is_empty()
                {
                    bad("the key is empty".into());
                }
            }
            Step::Delete(d) => {
                if let Some(problem) = not_held(&live, &d.slice, &d.expect) {
                    bad(problem);
                }
                if d.expect
                    .as_ref()
                    .is_none_or(|e| e.to_vec().contains(&Class::Ok))
                {
                    live.remove(&d.slice);
                }
            }
            Step::Kill(h) | Step::Partition(h) => {
                let list = h.hosts.to_vec();
                if list.is_empty() {
                    bad("`hosts` is empty".into());
                }
                for n in &list {
                    if let Err(e) = hosts.check(n, None) {
                        bad(format!("`hosts`: {e}"));
                    }
                }
            }
            Step::Restart(h) => {
                let list = h.hosts.to_vec();
                if list.is_empty() {
                    bad("`hosts` is empty".into());
                }
                for n in &list {
                    if let Err(e) = hosts.check(n, None) {
                        bad(format!("`hosts`: {e}"));
                    }
                }
                if h.wait_secs == Some(0) {
                    bad("`wait_secs` must be at least 1".into());
                }
            }
            Step::Heal(_) => {}
            Step::WaitConverged(w) => {
                if w.timeout_secs == Some(0) {
                    bad("`timeout_secs` must be at least 1".into());
                }
            }
            Step::Sleep(sl) => {
                if !(sl.secs.is_finite() && sl.secs > 0.0 && sl.secs <= 3600.0) {
                    bad(format!("`secs`: {} (between 0 and 3600)", sl.secs));
                }
            }
            Step::ExpectLeases(e) => {
                if e.each.is_none() && e.total.is_none() {
                    bad(
                        "say what to expect: `each = N` (leases per node) and/or `total = N`"
                            .into(),
                    );
                }
                if let Some(nodes) = &e.nodes {
                    if nodes.is_empty() {
                        bad("`nodes` is empty (leave it out for every node)".into());
                    }
                    for n in nodes {
                        if let Err(err) = hosts.check(n, Some(HostRole::Node)) {
                            bad(format!("`nodes`: {err}"));
                        }
                    }
                }
            }
            Step::Down(_) => {
                if i != last {
                    bad("`down` takes the testnet away: it must be the last step".into());
                }
            }
        }
        // Waits and retries of zero are mistakes (leave the field out instead).
        let (timeout, retry) = match &placed.step {
            Step::Acquire(a) => (a.timeout_secs, None),
            Step::Exec(e) => (e.timeout_secs, e.retry_secs),
            Step::Status(s) => (s.timeout_secs, s.retry_secs),
            Step::Renew(r) => (r.timeout_secs, r.retry_secs),
            Step::Sync(s) => (s.timeout_secs, s.retry_secs),
            Step::Delete(d) => (d.timeout_secs, None),
            Step::Spawn(sp) => (sp.timeout_secs, None),
            Step::Logs(l) => (l.timeout_secs, l.retry_secs),
            Step::Keys(k) => (k.timeout_secs, None),
            _ => (None, None),
        };
        for (field, value) in [("timeout_secs", timeout), ("retry_secs", retry)] {
            if value == Some(0) {
                problems.push(format!(
                    "line {}: step {} (do = {:?}): `{field}` must be at least 1 (or leave it out)",
                    placed.line,
                    i + 1,
                    placed.step.kind()
                ));
            }
        }
    }
    problems
}

/// Checks a scenario's host names against a testnet that runs already.
fn validate_against(s: &Scenario, manifest: &Manifest) -> Vec<String> {
    let planned = Scenario {
        testnet: TestnetSpec {
            federations: Some(manifest.topology.federations),
            nodes: Some(manifest.topology.nodes),
            agents: Some(manifest.topology.agents),
            brokers: Some(manifest.topology.brokers),
            ..TestnetSpec::default()
        },
        ..s.clone()
    };
    validate(&planned)
}

// ---------------------------------------------------------------------------------------------
// Bringing a testnet up.
// ---------------------------------------------------------------------------------------------

/// Turns `auto` into what this machine can do: namespaces and real slivers as root, loopback
/// and no isolation otherwise. Asking for namespaces or linux isolation without root is an
/// error that says what to use instead.
pub fn resolve(
    network: NetworkChoice,
    isolation: IsolationChoice,
) -> anyhow::Result<(Network, &'static str)> {
    let root = nix::unistd::geteuid().is_root();
    let network = match network {
        NetworkChoice::Namespaces => Network::Namespaces,
        NetworkChoice::Loopback => Network::Loopback,
        NetworkChoice::Auto if root => Network::Namespaces,
        NetworkChoice::Auto => Network::Loopback,
    };
    let isolation = match isolation {
        IsolationChoice::Linux => "linux",
        IsolationChoice::Memory => "memory",
        IsolationChoice::Auto if root => "linux",
        IsolationChoice::Auto => "memory",
    };
    if !root && (network == Network::Namespaces || isolation == "linux") {
        anyhow::bail!(
            "namespaces and linux isolation need root; run as root, or use loopback and memory \
             (`testnet up --network loopback --isolation memory`; in a scenario's [testnet]: \
             network = \"loopback\", isolation = \"memory\")"
        );
    }
    Ok((network, isolation))
}

/// Generates a testnet in `dir` and starts every daemon (without waiting for convergence:
/// see [`probe::wait_converged`]). If a daemon cannot start, those started are ended and what
/// the testnet made on the machine is removed.
pub fn start(
    dir: &Path,
    topology: Topology,
    network: Network,
    isolation: &str,
) -> anyhow::Result<Manifest> {
    let manifest = generate(dir, topology, network, isolation)?;
    if let Err(e) = launch::start_all(&manifest) {
        let _ = launch::stop_all(&manifest, dir);
        return Err(e);
    }
    Ok(manifest)
}

// ---------------------------------------------------------------------------------------------
// Running.
// ---------------------------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// From now on SIGINT and SIGTERM stop a running scenario at its next step (or its next look
/// while waiting), which then takes its testnet down as after a failure, instead of ending
/// the process with the daemons still running. For programs (`testnet scenario run`); a
/// library caller decides its own signal handling.
pub fn stop_on_signals() -> anyhow::Result<()> {
    let (ready, answer) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("scenario-signals".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                    return;
                }
            };
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (mut int, mut term) =
                    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                        (Ok(i), Ok(t)) => (i, t),
                        (Err(e), _) | (_, Err(e)) => {
                            let _ = ready.send(Err(e.to_string()));
                            return;
                        }
                    };
                let _ = ready.send(Ok(()));
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    if INTERRUPTED.swap(true, Ordering::SeqCst) {
                        eprintln!("testnet: taking the testnet down; please wait");
                    } else {
                        eprintln!(
                            "\ntestnet: interrupted: stopping at the next step and taking the testnet down"
                        );
                    }
                }
            });
        })
        .context("starting the signal thread")?;
    answer
        .recv()
        .context("the signal thread ended")?
        .map_err(|e| anyhow::anyhow!("installing signal handlers: {e}"))
}

/// Where and how to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where to bring the scenario's testnet up. If a testnet runs there already (or the
    /// scenario says `reuse`), the scenario runs on it and leaves it running.
    pub dir: PathBuf,
    /// Leave a testnet the run brought up running afterwards.
    pub keep: bool,
}

/// What a passed run took.
#[derive(Debug, Clone)]
pub struct Report {
    /// Bringing the testnet up until ads converged (`None`: it ran already).
    pub up: Option<Duration>,
    /// Each step's summary and time.
    pub steps: Vec<(String, Duration)>,
    /// The whole run, teardown included.
    pub total: Duration,
}

/// The testnet a run uses; ends what it brought up, whatever happens (drop guard).
struct Running {
    manifest: Manifest,
    dir: PathBuf,
    /// The run made the directory (so it may remove all of it).
    fresh_dir: bool,
    /// The run brought it up (so it takes it down).
    owned: bool,
    keep: bool,
    /// Taken down already.
    down: bool,
}

impl Running {
    fn take_down(&mut self) -> anyhow::Result<Vec<String>> {
        self.down = true;
        launch::stop_all(&self.manifest, &self.dir)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.owned && !self.keep && !self.down {
            self.down = true;
            if let Err(e) = launch::stop_all(&self.manifest, &self.dir) {
                eprintln!("warning: taking the testnet down: {e:#}");
            }
        }
    }
}

/// Why a step failed: a sentence, and what the step saw (slicectl's command and output).
#[derive(Debug)]
struct StepFailure {
    reason: String,
    detail: Vec<String>,
}

impl StepFailure {
    fn new(reason: impl Into<String>) -> StepFailure {
        StepFailure {
            reason: reason.into(),
            detail: Vec::new(),
        }
    }
}

impl From<anyhow::Error> for StepFailure {
    fn from(e: anyhow::Error) -> StepFailure {
        StepFailure::new(format!("{e:#}"))
    }
}

/// One `slicectl` call's result.
struct Call {
    class: Class,
    json: Value,
    command: String,
    run: SlicectlRun,
}

impl Call {
    /// The command and what it printed, for a failure report.
    fn detail(&self) -> Vec<String> {
        let mut lines = vec![format!("$ {}", self.command)];
        let stdout = self.run.stdout.trim();
        if !stdout.is_empty() {
            let text = serde_json::to_string_pretty(&self.json)
                .ok()
                .filter(|_| !self.json.is_null())
                .unwrap_or_else(|| stdout.to_owned());
            lines.extend(text.lines().take(60).map(str::to_owned));
        }
        lines.extend(
            self.run
                .stderr
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(30)
                .map(|l| format!("(stderr) {l}")),
        );
        lines
    }

    /// slicectl's own sentence for a failure, if it gave one.
    fn error_text(&self) -> String {
        if let Some(e) = self.json["error"].as_str() {
            return e.to_owned();
        }
        self.run
            .stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .to_owned()
    }

    fn fail(&self, reason: String) -> StepFailure {
        StepFailure {
            reason,
            detail: self.detail(),
        }
    }

    /// Checks the class against what the step expects.
    fn expect_class(&self, expect: &[Class]) -> Result<(), StepFailure> {
        if expect.contains(&self.class) {
            return Ok(());
        }
        let wanted: Vec<&str> = expect.iter().map(|c| c.name()).collect();
        let said = self.error_text();
        Err(self.fail(format!(
            "slicectl ended {} (exit {}), expected {}{}",
            self.class,
            self.run.code,
            wanted.join(" or "),
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        )))
    }
}

/// A step's `command`: a string runs under `/bin/sh -c`, a list as is.
fn shell_argv(command: &OneOrMany<String>) -> Vec<String> {
    match command {
        OneOrMany::One(cmd) => vec!["/bin/sh".to_owned(), "-c".to_owned(), cmd.clone()],
        OneOrMany::Many(v) => v.clone(),
    }
}

/// What a run needs at hand.
struct Runner<'a> {
    manifest: &'a Manifest,
    dir: &'a Path,
    slicectl: Slicectl,
}

const DEFAULT_TIMEOUT_SECS: u64 = 20;

impl Runner<'_> {
    /// The host called `key` (a public key in `ed25519/…` form), by name.
    fn name_of(&self, key: &str) -> String {
        self.manifest
            .hosts
            .iter()
            .find(|h| h.key.to_string() == key)
            .map(|h| h.plan.name.clone())
            .unwrap_or_else(|| key.chars().take(20).collect())
    }

    /// The entries of a JSON list that name a node (`"node": "ed25519/…"`), with the node's
    /// host name, in the testnet's host order.
    fn by_node<'v>(&self, list: &'v Value) -> Vec<(String, &'v Value)> {
        let mut out: Vec<(usize, String, &Value)> = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                let key = v["node"].as_str().unwrap_or("");
                let order = self
                    .manifest
                    .hosts
                    .iter()
                    .position(|h| h.key.to_string() == key)
                    .unwrap_or(usize::MAX);
                (order, self.name_of(key), v)
            })
            .collect();
        out.sort_by_key(|(order, name, _)| (*order, name.clone()));
        out.into_iter().map(|(_, name, v)| (name, v)).collect()
    }

    /// A slicectl config without the broker, so `--agent` (the in-process broker) is used.
    fn agents_slicectl(&self) -> anyhow::Result<Slicectl> {
        let path = self.dir.join("slicectl-agents.toml");
        if !path.exists() {
            let text = std::fs::read_to_string(&self.slicectl.config)
                .with_context(|| format!("reading {}", self.slicectl.config.display()))?;
            let mut table: toml::Table = toml::from_str(&text)
                .with_context(|| format!("reading {}", self.slicectl.config.display()))?;
            table.remove("broker");
            std::fs::write(
                &path,
                format!(
                    "# Written by `testnet scenario`: slicectl.toml without the broker, for --agent.\n{}",
                    toml::to_string(&table)?
                ),
            )
            .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Slicectl {
            bin: self.slicectl.bin.clone(),
            config: path,
        })
    }

    /// Runs `slicectl --json --timeout T ARGS…`.
    fn call(
        &self,
        slicectl: &Slicectl,
        args: Vec<String>,
        timeout_secs: Option<u64>,
    ) -> Result<Call, StepFailure> {
        let timeout = timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
        let mut full = vec![
            "--json".to_owned(),
            "--timeout".to_owned(),
            timeout.to_string(),
        ];
        // What the step runs, as one would type it (before it runs: acquisitions take a while).
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.is_empty()
                    || a.contains(|c: char| c.is_whitespace() || "$;'\"|&()<>".contains(c))
                {
                    format!("'{}'", a.replace('\'', "'\\''"))
                } else {
                    a.clone()
                }
            })
            .collect();
        let config = match slicectl.config.file_name() {
            Some(name) if name != "slicectl.toml" => {
                format!("--config {} ", name.to_string_lossy())
            }
            _ => String::new(),
        };
        println!("      $ slicectl {config}{}", shown.join(" "));
        full.extend(args);
        let command = format!(
            "slicectl --config {} {}",
            slicectl.config.display(),
            full.join(" ")
        );
        // Every remote call is bounded by `timeout`; an acquisition makes a few in a row.
        let limit = Duration::from_secs(timeout * 6 + 30);
        let run = slicectl.run(&full, limit)?;
        let json = run
            .stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or(Value::Null);
        let Some(class) = Class::of_code(run.code) else {
            return Err(StepFailure {
                reason: format!("slicectl exited with {} (no failure class)", run.code),
                detail: vec![
                    format!("$ {command}"),
                    run.stdout.clone(),
                    run.stderr.clone(),
                ],
            });
        };
        Ok(Call {
            class,
            json,
            command,
            run,
        })
    }

    fn acquire(&self, a: &Acquire) -> Result<Vec<String>, StepFailure> {
        let mut args = vec![
            "slice".to_owned(),
            "create".to_owned(),
            "--name".to_owned(),
            a.slice.clone(),
        ];
        if let Some(n) = a.slivers {
            args.extend(["--slivers".to_owned(), n.to_string()]);
        }
        for n in &a.nodes {
            args.extend(["--node".to_owned(), self.manifest.host(n)?.key.to_string()]);
        }
        args.extend([
            "--resources".to_owned(),
            a.resources.clone(),
            "--duration".to_owned(),
            a.duration.clone().unwrap_or_else(|| "1h".to_owned()),
        ]);
        if let Some(l) = &a.lease {
            args.extend(["--lease".to_owned(), l.clone()]);
        }
        args.extend([
            "--mode".to_owned(),
            match a.mode {
                Mode::AllOrNothing => "all-or-nothing",
                Mode::BestEffort => "best-effort",
            }
            .to_owned(),
        ]);
        for f in &a.federations {
            args.extend(["--federation".to_owned(), f.clone()]);
        }
        if let Some(m) = a.min_sites {
            args.extend(["--min-sites".to_owned(), m.to_string()]);
        }
        let call = match a.via {
            Via::Broker => self.call(&self.slicectl, args, a.timeout_secs)?,
            Via::Agents => {
                let slicectl = self.agents_slicectl()?;
                for agent in &a.agents {
                    args.push("--agent".to_owned());
                    args.push(self.manifest.host(agent)?.multiaddr());
                }
                self.call(&slicectl, args, a.timeout_secs)?
            }
        };
        let expect = a.expect.as_ref().map_or(vec![Class::Ok], OneOrMany::to_vec);
        call.expect_class(&expect)?;
        let held: Vec<String> = self
            .by_node(&call.json["leases"])
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let mut lines = Vec::new();
        if held.is_empty() {
            lines.push("no sliver held".to_owned());
        } else {
            lines.push(format!(
                "{} of {} slivers held: {}",
                held.len(),
                call.json["wanted"].as_u64().unwrap_or(held.len() as u64),
                held.join(", ")
            ));
        }
        for f in call.json["failed"]
            .as_array()
            .into_iter()
            .chain(call.json["unredeemed"].as_array())
            .flatten()
        {
            lines.push(format!(
                "{}: {}",
                self.name_of(f["node"].as_str().unwrap_or("")),
                f["error"].as_str().unwrap_or("failed")
            ));
        }
        if let Some(left) = call.json["leases_left"].as_u64() {
            lines.push(if left == 0 {
                "all-or-nothing: the leases obtained were released, the tickets returned".to_owned()
            } else {
                format!("all-or-nothing: {left} leases could not be released yet")
            });
        }
        if call.class != Class::Ok {
            let said = call.error_text();
            lines.push(if said.is_empty() {
                format!("slicectl: {}", call.class)
            } else {
                format!("slicectl: {} ({said})", call.class)
            });
        }
        if let Some(n) = a.expect_slivers
            && held.len() != n
        {
            return Err(call.fail(format!("expected {n} slivers held, {} are", held.len())));
        }
        Ok(lines)
    }

    fn exec(&self, e: &Exec) -> Result<Vec<String>, StepFailure> {
        let argv = shell_argv(&e.command);
        let mut args = vec![
            "slice".to_owned(),
            "exec".to_owned(),
            e.slice.clone(),
            "--".to_owned(),
        ];
        args.extend(argv);
        let call = self.call(&self.slicectl, args, e.timeout_secs)?;
        let default = if e.expect_exit == 0 {
            Class::Ok
        } else {
            Class::CommandFailed
        };
        call.expect_class(&e.expect.as_ref().map_or(vec![default], OneOrMany::to_vec))?;
        let mut lines = Vec::new();
        let mut answered = 0;
        let mut problems = Vec::new();
        for (name, s) in self.by_node(&call.json["slivers"]) {
            if let Some(err) = s["error"].as_str() {
                lines.push(format!("{name}: error: {err}"));
                continue;
            }
            answered += 1;
            let stdout = s["stdout"].as_str().unwrap_or("");
            let code = s["exit_code"].as_i64().unwrap_or(-1);
            let first = stdout.lines().next().unwrap_or("");
            let more = if stdout.lines().count() > 1 {
                " …"
            } else {
                ""
            };
            lines.push(format!("{name}: {first}{more} (exit {code})"));
            if code != i64::from(e.expect_exit) {
                problems.push(format!("{name} exited {code}, expected {}", e.expect_exit));
            }
            if let Some(want) = &e.expect_output
                && !stdout.contains(want.as_str())
            {
                problems.push(format!("{name}'s output lacks {want:?}"));
            }
        }
        if let Some(n) = e.expect_slivers
            && answered != n
        {
            problems.push(format!("expected {n} slivers to answer, {answered} did"));
        }
        if problems.is_empty() {
            Ok(lines)
        } else {
            Err(call.fail(problems.join("; ")))
        }
    }

    fn status(&self, s: &Status) -> Result<Vec<String>, StepFailure> {
        let args = vec!["slice".to_owned(), "status".to_owned(), s.slice.clone()];
        let call = self.call(&self.slicectl, args, s.timeout_secs)?;
        call.expect_class(&s.expect.as_ref().map_or(vec![Class::Ok], OneOrMany::to_vec))?;
        let mut lines = Vec::new();
        let mut live = 0;
        let mut measured = 0;
        for (name, v) in self.by_node(&call.json["slivers"]) {
            let state = v["state"].as_str().unwrap_or("?");
            if state == "live" {
                live += 1;
            }
            let usage = &v["usage"];
            if usage.is_object() {
                measured += 1;
                lines.push(format!(
                    "{name}: {state}, cpu {} ms, memory {} B, sent {} B{}",
                    usage["cpu_time_ms"],
                    usage["memory_bytes"],
                    usage["egress_bytes"],
                    v["condition"]
                        .as_str()
                        .map(|c| format!(", {c}"))
                        .unwrap_or_default()
                ));
            } else {
                lines.push(format!("{name}: {state}"));
            }
        }
        if call.class == Class::NotFound {
            lines.push(format!("no slice {} ({})", s.slice, call.error_text()));
        }
        if let Some(n) = s.expect_live
            && live != n
        {
            return Err(call.fail(format!("expected {n} slivers live, {live} are")));
        }
        if let Some(n) = s.expect_measured
            && measured != n
        {
            return Err(call.fail(format!(
                "expected {n} slivers measured by their nodes, {measured} are"
            )));
        }
        Ok(lines)
    }

    fn renew(&self, r: &Renew) -> Result<Vec<String>, StepFailure> {
        let mut args = vec!["slice".to_owned(), "renew".to_owned(), r.slice.clone()];
        if let Some(f) = &r.for_ {
            args.extend(["--for".to_owned(), f.clone()]);
        }
        let call = self.call(&self.slicectl, args, r.timeout_secs)?;
        call.expect_class(&r.expect.as_ref().map_or(vec![Class::Ok], OneOrMany::to_vec))?;
        let mut lines = Vec::new();
        let mut renewed = 0;
        for (name, v) in self.by_node(&call.json["slivers"]) {
            if v["ok"].as_bool() == Some(true) {
                renewed += 1;
                let granted = v["granted"].as_u64().unwrap_or(0);
                lines.push(format!(
                    "{name}: granted until {granted} (in {} s)",
                    granted.saturating_sub(federation::unix_now())
                ));
            } else {
                lines.push(format!(
                    "{name}: not renewed: {}",
                    v["error"].as_str().unwrap_or("?")
                ));
            }
        }
        if let Some(n) = r.expect_renewed
            && renewed != n
        {
            return Err(call.fail(format!("expected {n} slivers renewed, {renewed} were")));
        }
        Ok(lines)
    }

    fn sync(&self, s: &Sync) -> Result<Vec<String>, StepFailure> {
        let args = vec!["slice".to_owned(), "sync".to_owned(), s.slice.clone()];
        let call = self.call(&self.slicectl, args, s.timeout_secs)?;
        call.expect_class(&s.expect.as_ref().map_or(vec![Class::Ok], OneOrMany::to_vec))?;
        let slice = &call.json["slices"][0];
        let held = slice["held"].as_u64().unwrap_or(0) as usize;
        let lines = vec![format!(
            "{held} of {} slivers held",
            slice["wanted"].as_u64().unwrap_or(0)
        )];
        if let Some(n) = s.expect_held
            && held != n
        {
            return Err(call.fail(format!("expected {n} slivers held, {held} are")));
        }
        Ok(lines)
    }

    fn delete(&self, d: &Delete) -> Result<Vec<String>, StepFailure> {
        let args = vec!["slice".to_owned(), "delete".to_owned(), d.slice.clone()];
        let call = self.call(&self.slicectl, args, d.timeout_secs)?;
        call.expect_class(&d.expect.as_ref().map_or(vec![Class::Ok], OneOrMany::to_vec))?;
        let released = call.json["released"].as_u64().unwrap_or(0) as usize;
        let mut lines = vec![format!("{released} leases released")];
        for (name, v) in self.by_node(&call.json["not_released"]) {
            lines.push(format!(
                "{name}: not released: {}",
                v["error"].as_str().unwrap_or("?")
            ));
        }
        if let Some(n) = d.expect_released
            && released != n
        {
            return Err(call.fail(format!("expected {n} leases released, {released} were")));
        }
        Ok(lines)
    }

    fn spawn(&self, sp: &Spawn) -> Result<Vec<String>, StepFailure> {
        let mut args = vec![
            "slice".to_owned(),
            "spawn".to_owned(),
            sp.slice.clone(),
            "--".to_owned(),
        ];
        args.extend(shell_argv(&sp.command));
        let call = self.call(&self.slicectl, args, sp.timeout_secs)?;
        call.expect_class(
            &sp.expect
                .as_ref()
                .map_or(vec![Class::Ok], OneOrMany::to_vec),
        )?;
        let mut lines = Vec::new();
        let mut started = 0;
        let mut problems = Vec::new();
        for (name, v) in self.by_node(&call.json["slivers"]) {
            match (v["pid"].as_u64(), v["error"].as_str()) {
                // Pid 1 is the sliver's init: a program it starts is never 1.
                (Some(pid), _) if pid > 1 => {
                    started += 1;
                    lines.push(format!("{name}: pid {pid}"));
                }
                (Some(pid), _) => problems.push(format!("{name} answered pid {pid}")),
                (None, Some(err)) => lines.push(format!("{name}: error: {err}")),
                (None, None) => problems.push(format!("{name} answered no pid")),
            }
        }
        if let Some(n) = sp.expect_slivers
            && started != n
        {
            problems.push(format!("expected {n} slivers to start it, {started} did"));
        }
        if problems.is_empty() {
            Ok(lines)
        } else {
            Err(call.fail(problems.join("; ")))
        }
    }

    fn logs(&self, l: &Logs) -> Result<Vec<String>, StepFailure> {
        let args = vec!["slice".to_owned(), "logs".to_owned(), l.slice.clone()];
        let call = self.call(&self.slicectl, args, l.timeout_secs)?;
        call.expect_class(&l.expect.as_ref().map_or(vec![Class::Ok], OneOrMany::to_vec))?;
        let mut lines = Vec::new();
        let mut answered = 0;
        let mut problems = Vec::new();
        for (name, v) in self.by_node(&call.json["slivers"]) {
            let Some(text) = v["logs"].as_str() else {
                lines.push(format!(
                    "{name}: error: {}",
                    v["error"].as_str().unwrap_or("no logs")
                ));
                continue;
            };
            answered += 1;
            let last = text.lines().last().unwrap_or("(empty)");
            lines.push(format!("{name}: {last}"));
            if let Some(want) = &l.expect_output
                && !text.contains(want.as_str())
            {
                problems.push(format!("{name}'s log lacks {want:?}"));
            }
        }
        if let Some(n) = l.expect_slivers
            && answered != n
        {
            problems.push(format!("expected {n} slivers to answer, {answered} did"));
        }
        if problems.is_empty() {
            Ok(lines)
        } else {
            Err(call.fail(problems.join("; ")))
        }
    }

    fn keys(&self, k: &Keys) -> Result<Vec<String>, StepFailure> {
        let mut args = vec!["slice".to_owned(), "keys".to_owned(), k.slice.clone()];
        match &k.action {
            KeysAction::Add(key) => args.extend(["add".to_owned(), key.clone()]),
            KeysAction::Del(key) => args.extend(["del".to_owned(), key.clone()]),
            KeysAction::List => args.push("list".to_owned()),
        }
        let call = self.call(&self.slicectl, args, k.timeout_secs)?;
        call.expect_class(&k.expect.as_ref().map_or(vec![Class::Ok], OneOrMany::to_vec))?;
        let mut lines = Vec::new();
        let mut answered = 0;
        let mut problems = Vec::new();
        for (name, v) in self.by_node(&call.json["slivers"]) {
            let Some(keys) = v["keys"].as_array() else {
                lines.push(format!(
                    "{name}: error: {}",
                    v["error"].as_str().unwrap_or("no keys answered")
                ));
                continue;
            };
            answered += 1;
            let keys: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
            lines.push(format!("{name}: {} keys", keys.len()));
            match &k.action {
                KeysAction::Add(key) if !keys.contains(&key.as_str()) => {
                    problems.push(format!("{name} does not list the key added"));
                }
                KeysAction::Del(key)
                    if keys
                        .iter()
                        .any(|l| *l == key || l.ends_with(&format!(" {key}"))) =>
                {
                    problems.push(format!("{name} still lists the key removed"));
                }
                _ => {}
            }
            if let Some(n) = k.expect_keys
                && keys.len() != n
            {
                problems.push(format!("{name} lists {} keys, expected {n}", keys.len()));
            }
        }
        if let Some(n) = k.expect_slivers
            && answered != n
        {
            problems.push(format!("expected {n} slivers to answer, {answered} did"));
        }
        if problems.is_empty() {
            Ok(lines)
        } else {
            Err(call.fail(problems.join("; ")))
        }
    }

    fn restart(&self, r: &Restart) -> Result<Vec<String>, StepFailure> {
        let mut lines = Vec::new();
        let wait = Duration::from_secs(r.wait_secs.unwrap_or(30));
        for name in r.hosts.to_vec() {
            let host = self.manifest.host(&name)?;
            let was = launch::stop_host(host, Duration::from_secs(10), false)?;
            let pid = launch::start_host(self.manifest, host)?;
            let started = Instant::now();
            loop {
                if probe::get_json(host, "/status").is_ok() {
                    break;
                }
                // Right after the fork the child's command line is still ours: only a daemon
                // gone for a while has exited.
                if launch::running_pid(host).is_none() && started.elapsed() > Duration::from_secs(2)
                {
                    return Err(StepFailure::new(format!(
                        "{name} exited right after starting (see {})",
                        host.log_file().display()
                    )));
                }
                if started.elapsed() > wait || interrupted() {
                    return Err(StepFailure::new(format!(
                        "{name} (pid {pid}) did not answer within {}s (see {})",
                        wait.as_secs(),
                        host.log_file().display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            lines.push(format!(
                "{name} {} (pid {pid}), answering after {:.2}s",
                if was { "restarted" } else { "started" },
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(lines)
    }

    /// Leases per node (of `slice` only, if given); a node that does not answer is an error.
    fn leases(
        &self,
        nodes: &[String],
        slice: Option<&str>,
    ) -> Result<Vec<(String, usize)>, String> {
        nodes
            .iter()
            .map(|name| {
                let host = self.manifest.host(name).map_err(|e| e.to_string())?;
                let v = probe::get_json(host, "/leases").map_err(|e| format!("{e:#}"))?;
                let count = v
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .filter(|l| slice.is_none_or(|s| l["slice"].as_str() == Some(s)))
                            .count()
                    })
                    .unwrap_or(0);
                Ok((name.clone(), count))
            })
            .collect()
    }

    fn expect_leases(&self, e: &ExpectLeases) -> Result<Vec<String>, StepFailure> {
        let nodes: Vec<String> = e.nodes.clone().unwrap_or_else(|| {
            self.manifest
                .of_role(HostRole::Node)
                .map(|h| h.plan.name.clone())
                .collect()
        });
        let deadline = Instant::now() + Duration::from_secs(e.within_secs.unwrap_or(0));
        loop {
            let verdict = self.leases(&nodes, e.slice.as_deref()).and_then(|counts| {
                let shown: Vec<String> = counts.iter().map(|(n, c)| format!("{n}: {c}")).collect();
                let mut wrong = Vec::new();
                if let Some(each) = e.each {
                    for (n, c) in &counts {
                        if *c != each {
                            wrong.push(format!("{n} holds {c}, expected {each}"));
                        }
                    }
                }
                let total: usize = counts.iter().map(|(_, c)| c).sum();
                if let Some(t) = e.total
                    && total != t
                {
                    wrong.push(format!("{total} in all, expected {t}"));
                }
                if wrong.is_empty() {
                    Ok(format!("leases: {} ({total} in all)", shown.join(", ")))
                } else {
                    Err(format!(
                        "{} (leases: {})",
                        wrong.join("; "),
                        shown.join(", ")
                    ))
                }
            });
            match verdict {
                Ok(line) => return Ok(vec![line]),
                Err(why) if Instant::now() >= deadline || interrupted() => {
                    return Err(StepFailure::new(why));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
}

/// What is left on the machine of a testnet that was taken down: processes, namespaces,
/// links, cgroups.
pub fn leftovers(manifest: &Manifest) -> Vec<String> {
    let mut left = Vec::new();
    for host in &manifest.hosts {
        if let Some(pid) = launch::running_pid(host) {
            left.push(format!("{} still runs (pid {pid})", host.plan.name));
        }
        if let Some(ns) = &host.netns
            && Path::new(&format!("/run/netns/{ns}")).exists()
        {
            left.push(format!("network namespace {ns}"));
        }
    }
    let bridge = crate::netns::bridge(manifest);
    if Path::new(&format!("/sys/class/net/{bridge}")).exists() {
        left.push(format!("bridge {bridge}"));
    }
    let veth = format!("t{}h", manifest.tag);
    if let Ok(links) = std::fs::read_dir("/sys/class/net") {
        for link in links.flatten() {
            let name = link.file_name().to_string_lossy().into_owned();
            if name.starts_with(&veth) {
                left.push(format!("link {name}"));
            }
        }
    }
    let cgroup = format!("planetmesh-tn{}", manifest.tag);
    let mut roots = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        roots.extend(
            hierarchies
                .flatten()
                .filter(|h| h.file_type().is_ok_and(|t| t.is_dir()))
                .map(|h| h.path()),
        );
    }
    for root in roots {
        let dir = root.join(&cgroup);
        if dir.is_dir() {
            left.push(format!("cgroup {}", dir.display()));
        }
    }
    left
}

/// `text` without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last warnings and errors of every host's log, for a failure report.
fn log_excerpts(manifest: &Manifest, per_host: usize) -> Vec<String> {
    let mut out = Vec::new();
    for host in &manifest.hosts {
        let Ok(text) = std::fs::read_to_string(host.log_file()) else {
            continue;
        };
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
            .collect();
        for line in &lines[lines.len().saturating_sub(per_host)..] {
            let line: String = strip_ansi(line).chars().take(300).collect();
            out.push(format!("{}: {line}", host.plan.name));
        }
    }
    out
}

/// Removes a testnet's directory once it is down: all of it if the run made it, else only
/// what `generate` and the runner wrote there (an existing directory may hold other files).
fn remove_testnet_files(dir: &Path, fresh: bool) -> anyhow::Result<()> {
    if fresh {
        return std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()));
    }
    for sub in ["authorities", "peering", "hosts", "principal"] {
        let path = dir.join(sub);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for file in ["slicectl.toml", "slicectl-agents.toml", "testnet.toml"] {
        let path = dir.join(file);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Runs a scenario: brings its testnet up (or uses the one running in `options.dir` or named
/// by `reuse`), runs every step in order, printing each and its time, and takes down what it
/// brought up — after a failure too, keeping the directory with the logs — unless
/// `options.keep`. The error names the step that failed, its line, why, and where the logs are.
pub fn run(scenario: &Scenario, options: &RunOptions) -> anyhow::Result<Report> {
    let total = Instant::now();
    println!(
        "scenario {}{}",
        scenario.source,
        scenario
            .description
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default()
    );
    // Before anything is brought up: slicectl must be there.
    Slicectl::for_testnet(&options.dir)?;
    let reuse = scenario.testnet.reuse.clone().or_else(|| {
        options
            .dir
            .join("testnet.toml")
            .exists()
            .then(|| options.dir.clone())
    });
    let (mut running, up) = match reuse {
        Some(dir) => {
            let manifest = Manifest::load(&dir)?;
            if !manifest
                .hosts
                .iter()
                .any(|h| launch::running_pid(h).is_some())
            {
                anyhow::bail!(
                    "{} holds a testnet whose daemons are all stopped (left by a failed run?): \
                     `testnet down --purge --dir {}`, or pick another --dir",
                    dir.display(),
                    dir.display()
                );
            }
            let problems = validate_against(scenario, &manifest);
            if !problems.is_empty() {
                return Err(ScenarioError {
                    source: format!("{} (on the testnet in {})", scenario.source, dir.display()),
                    problems,
                }
                .into());
            }
            println!(
                "running on the testnet in {} ({} hosts; it stays up)",
                dir.display(),
                manifest.hosts.len()
            );
            let dir = dir.canonicalize()?;
            (
                Running {
                    manifest,
                    dir,
                    fresh_dir: false,
                    owned: false,
                    keep: true,
                    down: false,
                },
                None,
            )
        }
        None => {
            let spec = &scenario.testnet;
            let topology = spec.topology();
            let (network, isolation) = resolve(spec.network, spec.isolation)?;
            println!(
                "bringing up a testnet in {} (federations {}, nodes {}, agents {}, brokers {}; {network:?} network, {isolation} isolation)",
                options.dir.display(),
                topology.federations,
                topology.nodes,
                topology.agents,
                topology.brokers,
            );
            let started = Instant::now();
            let fresh_dir = !options.dir.exists();
            let manifest = start(&options.dir, topology, network, isolation)?;
            let running = Running {
                manifest,
                dir: options.dir.canonicalize()?,
                fresh_dir,
                owned: true,
                keep: options.keep,
                down: false,
            };
            let converge = Duration::from_secs(spec.converge_secs.unwrap_or(90));
            probe::wait_converged(&running.manifest, converge, |_, _| {}).with_context(|| {
                if running.keep {
                    format!("the testnet is left running in {}", running.dir.display())
                } else {
                    format!(
                        "the testnet is taken down; its logs are kept in {}/hosts/HOST/daemon.log",
                        running.dir.display()
                    )
                }
            })?;
            let up = started.elapsed();
            println!(
                "{} daemons up, ads converged, in {:.2}s",
                running.manifest.hosts.len(),
                up.as_secs_f64()
            );
            (running, Some(up))
        }
    };
    let manifest = running.manifest.clone();
    let dir = running.dir.clone();
    let context = Runner {
        manifest: &manifest,
        dir: &dir,
        slicectl: Slicectl::for_testnet(&dir)?,
    };
    let count = scenario.steps.len();
    let mut times = Vec::new();
    for (i, placed) in scenario.steps.iter().enumerate() {
        let summary = placed.step.summary();
        println!("\n[{}/{count}] line {}: {summary}", i + 1, placed.line);
        let started = Instant::now();
        let result = if interrupted() {
            Err(StepFailure::new(
                "interrupted (SIGINT or SIGTERM) before it ran",
            ))
        } else {
            run_step(&context, &mut running, &placed.step)
        };
        let took = started.elapsed();
        match result {
            Ok(lines) => {
                for line in lines {
                    println!("      {line}");
                }
                println!("      ok ({:.2}s)", took.as_secs_f64());
                times.push((summary, took));
            }
            Err(failure) => {
                let mut message = format!(
                    "step {} of {count} (line {} of {}: {summary}) failed after {:.2}s: {}",
                    i + 1,
                    placed.line,
                    scenario.source,
                    took.as_secs_f64(),
                    failure.reason
                );
                for line in &failure.detail {
                    message.push_str(&format!("\n    {line}"));
                }
                let excerpts = log_excerpts(&running.manifest, 5);
                message.push_str(&format!(
                    "\nlogs: {}/hosts/HOST/daemon.log (`testnet logs HOST --dir {}`)",
                    running.dir.display(),
                    running.dir.display()
                ));
                if !excerpts.is_empty() {
                    message.push_str("; their last warnings and errors:");
                    for line in excerpts {
                        message.push_str(&format!("\n    {line}"));
                    }
                }
                if running.owned && !running.keep && !running.down {
                    match running.take_down() {
                        Ok(_) => message.push_str(&format!(
                            "\nthe testnet was taken down; its directory {} is kept for the logs",
                            running.dir.display()
                        )),
                        Err(e) => message.push_str(&format!("\ntaking the testnet down: {e:#}")),
                    }
                } else if !running.down {
                    message.push_str(&format!(
                        "\nthe testnet is still up: `testnet down --purge --dir {}` when done",
                        running.dir.display()
                    ));
                }
                anyhow::bail!(message);
            }
        }
    }
    if running.owned && !running.keep {
        if !running.down {
            running.take_down()?;
        }
        remove_testnet_files(&running.dir, running.fresh_dir)?;
        if running.fresh_dir {
            println!("\ntestnet taken down and {} removed", running.dir.display());
        } else {
            println!(
                "\ntestnet taken down and its files removed from {}",
                running.dir.display()
            );
        }
    } else if running.owned && !running.down {
        println!(
            "\ntestnet left running in {}: `testnet down --purge --dir {}` when done",
            running.dir.display(),
            running.dir.display()
        );
    }
    let total = total.elapsed();
    println!(
        "scenario passed: {count} steps in {:.2}s{}",
        total.as_secs_f64(),
        up.map(|u| format!(" (bringing the testnet up: {:.2}s)", u.as_secs_f64()))
            .unwrap_or_default()
    );
    Ok(Report {
        up,
        steps: times,
        total,
    })
}

/// Runs one step; `Ok` holds what to print.
fn run_step(
    cx: &Runner<'_>,
    running: &mut Running,
    step: &Step,
) -> Result<Vec<String>, StepFailure> {
    let retry = |secs: Option<u64>, attempt: &dyn Fn() -> Result<Vec<String>, StepFailure>| {
        let deadline = Instant::now() + Duration::from_secs(secs.unwrap_or(0));
        let mut tries = 1;
        loop {
            match attempt() {
                Ok(mut lines) => {
                    if tries > 1 {
                        lines.push(format!("(held on attempt {tries})"));
                    }
                    return Ok(lines);
                }
                Err(mut f) if Instant::now() >= deadline || interrupted() => {
                    if tries > 1 {
                        f.reason = format!("{} (still, after {tries} attempts)", f.reason);
                    }
                    return Err(f);
                }
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    };
    match step {
        Step::Acquire(a) => cx.acquire(a),
        Step::Exec(e) => retry(e.retry_secs, &|| cx.exec(e)),
        Step::Status(s) => retry(s.retry_secs, &|| cx.status(s)),
        Step::Renew(r) => retry(r.retry_secs, &|| cx.renew(r)),
        Step::Sync(s) => retry(s.retry_secs, &|| cx.sync(s)),
        Step::Delete(d) => cx.delete(d),
        Step::Spawn(sp) => cx.spawn(sp),
        Step::Logs(l) => retry(l.retry_secs, &|| cx.logs(l)),
        Step::Keys(k) => cx.keys(k),
        Step::Kill(h) => {
            let mut lines = Vec::new();
            for name in h.hosts.to_vec() {
                let host = cx.manifest.host(&name)?;
                let pid = launch::running_pid(host);
                if launch::stop_host(host, Duration::from_secs(5), true)? {
                    lines.push(format!("{name} killed (pid {})", pid.unwrap_or(0)));
                } else {
                    lines.push(format!("{name} was not running"));
                }
            }
            Ok(lines)
        }
        Step::Restart(r) => cx.restart(r),
        Step::Partition(h) => {
            let mut lines = Vec::new();
            for name in h.hosts.to_vec() {
                crate::netns::partition(cx.manifest, cx.manifest.host(&name)?, true)?;
                lines.push(format!("{name} cut off"));
            }
            Ok(lines)
        }
        Step::Heal(_) => {
            for host in &cx.manifest.hosts {
                crate::netns::partition(cx.manifest, host, false)?;
            }
            Ok(vec!["every host reconnected".to_owned()])
        }
        Step::WaitConverged(w) => {
            let took = probe::wait_converged(
                cx.manifest,
                Duration::from_secs(w.timeout_secs.unwrap_or(60)),
                |_, _| {},
            )?;
            Ok(vec![format!(
                "every agent knows every node that delegated to it ({:.2}s)",
                took.as_secs_f64()
            )])
        }
        Step::Sleep(s) => {
            let until = Instant::now() + Duration::from_secs_f64(s.secs);
            while Instant::now() < until {
                if interrupted() {
                    return Err(StepFailure::new("interrupted (SIGINT or SIGTERM)"));
                }
                std::thread::sleep((until - Instant::now()).min(Duration::from_millis(100)));
            }
            Ok(Vec::new())
        }
        Step::ExpectLeases(e) => cx.expect_leases(e),
        Step::Down(_) => {
            let stopped = running.take_down()?;
            let left = leftovers(&running.manifest);
            if !left.is_empty() {
                return Err(StepFailure::new(format!(
                    "left after down: {}",
                    left.join(", ")
                )));
            }
            Ok(vec![format!(
                "{} daemons stopped; no process, namespace, link or cgroup of the testnet is left",
                stopped.len()
            )])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
description = "a test"

[testnet]
nodes = 4
agents = 2

[[step]]
do = "acquire"
slice = "fed0-site0_t"
slivers = 2
resources = "cpu=100m,memory=64MiB"
federations = ["fed0", "fed1"]
expect = ["ok", "partial"]

[[step]]
do = "exec"
slice = "fed0-site0_t"
command = "echo hi"
expect_output = "hi"

[[step]]
do = "kill"
host = "node1"

[[step]]
do = "down"
"#;

    fn problems(text: &str) -> Vec<String> {
        match parse(text, "t.toml") {
            Ok(s) => panic!("{text}\nparsed: {s:?}"),
            Err(e) => {
                assert_eq!(e.source, "t.toml");
                e.problems
            }
        }
    }

    fn one_problem(text: &str) -> String {
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:#?}");
        p.into_iter().next().unwrap()
    }

    #[test]
    fn every_scenario_file_parses_and_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let s = load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(
                    s.description.is_some(),
                    "{}: say what it shows",
                    path.display()
                );
                assert!(
                    matches!(s.steps.last().map(|p| &p.step), Some(Step::Down(_))),
                    "{}: end with do = \"down\" so nothing left is checked",
                    path.display()
                );
                seen += 1;
            }
        }
        assert!(seen >= 4, "{seen} scenario files in {}", dir.display());
    }

    #[test]
    fn a_scenario_becomes_typed_steps_with_their_lines() {
        let s = parse(GOOD, "t.toml").unwrap();
        assert_eq!(s.description.as_deref(), Some("a test"));
        assert_eq!(s.testnet.topology().nodes, 4);
        assert_eq!(s.testnet.topology().federations, 2);
        let lines: Vec<usize> = s.steps.iter().map(|p| p.line).collect();
        assert_eq!(lines, [8, 16, 22, 26]);
        let Step::Acquire(a) = &s.steps[0].step else {
            panic!("{:?}", s.steps[0])
        };
        assert_eq!(a.slivers, Some(2));
        assert_eq!(a.mode, Mode::AllOrNothing);
        assert_eq!(a.via, Via::Broker);
        assert_eq!(
            a.expect,
            Some(OneOrMany::Many(vec![Class::Ok, Class::Partial]))
        );
        let Step::Exec(e) = &s.steps[1].step else {
            panic!()
        };
        assert_eq!(e.command, OneOrMany::One("echo hi".into()));
        assert_eq!(e.expect_exit, 0);
        let Step::Kill(k) = &s.steps[2].step else {
            panic!()
        };
        assert_eq!(k.hosts.to_vec(), ["node1"]);
        assert!(s.steps[0].step.summary().contains("acquire fed0-site0_t"));
    }

    #[test]
    fn spawn_logs_and_keys_steps_are_typed_and_checked() {
        let text = r#"
[[step]]
do = "acquire"
slice = "fed0-site0_k"
slivers = 2
resources = "cpu=100m"

[[step]]
do = "spawn"
slice = "fed0-site0_k"
command = "echo up; sleep 30"
expect_slivers = 2

[[step]]
do = "logs"
slice = "fed0-site0_k"
expect_output = "up"
retry_secs = 5

[[step]]
do = "keys"
slice = "fed0-site0_k"
add = "ssh-ed25519 AAAA x@y"
expect_keys = 1

[[step]]
do = "keys"
slice = "fed0-site0_k"
del = "x@y"

[[step]]
do = "keys"
slice = "fed0-site0_k"
expect_keys = 0

[[step]]
do = "down"
"#;
        let s = parse(text, "t.toml").unwrap();
        let Step::Spawn(sp) = &s.steps[1].step else {
            panic!("{:?}", s.steps[1])
        };
        assert_eq!(
            shell_argv(&sp.command),
            ["/bin/sh", "-c", "echo up; sleep 30"]
        );
        assert_eq!(sp.expect_slivers, Some(2));
        let Step::Logs(l) = &s.steps[2].step else {
            panic!("{:?}", s.steps[2])
        };
        assert_eq!(l.expect_output.as_deref(), Some("up"));
        assert_eq!(l.retry_secs, Some(5));
        let actions: Vec<&KeysAction> = s.steps[3..6]
            .iter()
            .map(|p| match &p.step {
                Step::Keys(k) => &k.action,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            actions,
            [
                &KeysAction::Add("ssh-ed25519 AAAA x@y".into()),
                &KeysAction::Del("x@y".into()),
                &KeysAction::List
            ]
        );
        assert!(s.steps[5].step.summary().contains("list the keys"));

        // Both add and del, a field that does not apply, a slice not held, an empty command.
        let p = one_problem(
            "[[step]]\ndo = \"keys\"\nslice = \"fed0-site0_x\"\nadd = \"k\"\ndel = \"k\"\n",
        );
        assert!(p.contains("line 1") && p.contains("not both"), "{p}");
        let p = one_problem(
            "[[step]]\ndo = \"logs\"\nslice = \"fed0-site0_x\"\ncommand = \"ls\"\nexpect = \"not_found\"\n",
        );
        assert!(p.contains("`command` does not apply"), "{p}");
        let p =
            one_problem("[[step]]\ndo = \"spawn\"\nslice = \"fed0-site0_x\"\ncommand = \"ls\"\n");
        assert!(p.contains("is not held here"), "{p}");
        let p = problems(
            "[[step]]\ndo = \"acquire\"\nslice = \"fed0-site0_x\"\nslivers = 1\nresources = \"cpu=1\"\n\n[[step]]\ndo = \"spawn\"\nslice = \"fed0-site0_x\"\ncommand = \" \"\n",
        );
        assert!(p.iter().any(|p| p.contains("`command` is empty")), "{p:#?}");
    }

    #[test]
    fn toml_mistakes_name_the_line_and_the_field() {
        let p = one_problem(
            "[[step]]\ndo = \"acquire\"\nslice = \"fed0-site0_x\"\nslivers = 1\nresources = \"cpu=1\"\nexpect_sliver = 1\n",
        );
        assert!(p.contains("line 6"), "{p}");
        assert!(p.contains("unknown field `expect_sliver`"), "{p}");

        let p = one_problem("[[step]]\ndo = \"acquir\"\n");
        assert!(
            p.contains("line 2") && p.contains("unknown variant `acquir`"),
            "{p}"
        );

        let p = one_problem(
            "[[step]]\ndo = \"acquire\"\nslice = \"fed0-site0_x\"\nslivers = \"two\"\nresources = \"cpu=1\"\n",
        );
        assert!(
            p.contains("line 4") && p.contains("slivers = \"two\""),
            "{p}"
        );

        let p = one_problem(
            "[[step]]\ndo = \"delete\"\nslice = \"fed0-site0_x\"\nexpect = \"unreachble\"\n",
        );
        assert!(
            p.contains("line 4") && p.contains("unknown variant `unreachble`"),
            "{p}"
        );

        let p = one_problem("[testnet]\nnodse = 3\n");
        assert!(
            p.contains("line 2") && p.contains("unknown field `nodse`"),
            "{p}"
        );

        let p = one_problem("[testnet]\nnetwork = \"bridge\"\n");
        assert!(p.contains("line 2") && p.contains("`namespaces`"), "{p}");

        let p = one_problem("[[step]]\ndo = \"renew\"\nslice = \"fed0-site0_x\"\nfor = \n");
        assert!(p.contains("line 4"), "{p}");
    }

    #[test]
    fn fields_that_do_not_apply_or_are_missing_are_named() {
        let p = problems(
            "[[step]]\ndo = \"renew\"\nslice = \"fed0-site0_x\"\ncommand = \"ls\"\n\n[[step]]\ndo = \"exec\"\n",
        );
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(
            p[0].starts_with("line 1: step 1 (do = \"renew\"): `command` does not apply"),
            "{p:#?}"
        );
        assert!(p[0].contains("it takes slice, for,"), "{p:#?}");
        assert!(p[1].starts_with("line 6: step 2 (do = \"exec\"): `slice` is missing"));
        assert!(p[2].contains("`command` is missing"));
        let p = one_problem(
            "[testnet]\nreuse = \"x\"\n[[step]]\ndo = \"renew\"\nslice = \"fed0-site0_x\"\nretry_secs = 0\nexpect = \"not_found\"\n",
        );
        assert!(
            p.contains("line 3") && p.contains("`retry_secs` must be at least 1"),
            "{p}"
        );
        let p = one_problem("[[step]]\ndo = \"heal\"\nhosts = [\"node0\"]\n");
        assert!(p.contains("it takes only `title`"), "{p}");
    }

    #[test]
    fn steps_are_checked_against_the_topology_and_each_other() {
        let text = r#"
[testnet]
nodes = 4
agents = 2

[[step]]
do = "exec"
slice = "fed0-site0_y"
command = "true"

[[step]]
do = "kill"
hosts = ["node9", "agent0"]

[[step]]
do = "expect_leases"
nodes = ["agent1"]

[[step]]
do = "down"

[[step]]
do = "acquire"
slice = "mine"
slivers = 1
resources = "gpu=1"
duration = "5 fortnights"
federations = ["fed7"]
via = "agents"
agents = ["node0"]
"#;
        let p = problems(text);
        let expect = [
            (
                "line 6: step 1",
                "`slice`: \"fed0-site0_y\" is not held here",
            ),
            (
                "line 11: step 2",
                "`hosts`: no host \"node9\" in this testnet",
            ),
            ("line 15: step 3", "say what to expect"),
            (
                "line 15: step 3",
                "`nodes`: agent1 is an agent host, not a node",
            ),
            ("line 19: step 4", "it must be the last step"),
            ("line 22: step 5", "slices are named fed0-site0_<name>"),
            ("line 22: step 5", "`resources`: \"gpu=1\""),
            (
                "line 22: step 5",
                "`duration`: duration \"5 fortnights\": unknown unit",
            ),
            (
                "line 22: step 5",
                "`federations`: no federation \"fed7\"; this testnet has fed0, fed1",
            ),
            (
                "line 22: step 5",
                "`agents`: node0 is a node host, not an agent",
            ),
        ];
        assert_eq!(p.len(), expect.len(), "{p:#?}");
        for ((at, what), got) in expect.iter().zip(&p) {
            assert!(
                got.starts_with(at) && got.contains(what),
                "{got:?} should be {at} … {what}"
            );
        }
    }

    #[test]
    fn slices_are_followed_from_acquire_to_delete() {
        let acquire = |expect: &str| {
            format!(
                "[[step]]\ndo = \"acquire\"\nslice = \"fed0-site0_s\"\nslivers = 1\nresources = \"cpu=100m\"\nexpect = {expect:?}\n"
            )
        };
        let status = "[[step]]\ndo = \"status\"\nslice = \"fed0-site0_s\"\n";
        let delete = "[[step]]\ndo = \"delete\"\nslice = \"fed0-site0_s\"\n";
        // Held after an acquisition that succeeds (or in part), gone after delete.
        assert!(parse(&format!("{}{status}{delete}", acquire("ok")), "t").is_ok());
        assert!(parse(&format!("{}{status}", acquire("partial")), "t").is_ok());
        let p = one_problem(&format!("{}{delete}{status}", acquire("ok")));
        assert!(
            p.contains("step 3") && p.contains("is not held here"),
            "{p}"
        );
        // An acquisition expected to fail holds nothing; asking for it then expects not_found.
        let p = one_problem(&format!("{}{status}", acquire("unreachable")));
        assert!(p.contains("step 2"), "{p}");
        let not_found =
            "[[step]]\ndo = \"status\"\nslice = \"fed0-site0_s\"\nexpect = \"not_found\"\n";
        assert!(parse(&format!("{}{not_found}", acquire("unreachable")), "t").is_ok());
        // Twice without deleting.
        let p = one_problem(&format!("{}{}", acquire("ok"), acquire("ok")));
        assert!(p.contains("held already (acquired on line 1)"), "{p}");
    }

    #[test]
    fn the_testnet_table_is_checked() {
        let p = one_problem("[testnet]\nfederations = 3\nagents = 2\n[[step]]\ndo = \"heal\"\n");
        assert!(p.contains("[testnet]") && p.contains("--agents 3"), "{p}");
        let p =
            one_problem("[testnet]\nreuse = \".testnet\"\nnodes = 3\n[[step]]\ndo = \"heal\"\n");
        assert!(p.contains("drop `nodes`"), "{p}");
        let p = one_problem(
            "[testnet]\nbrokers = 0\n[[step]]\ndo = \"acquire\"\nslice = \"fed0-site0_b\"\nslivers = 1\nresources = \"cpu=1\"\n",
        );
        assert!(p.contains("no broker"), "{p}");
        let p = one_problem("description = \"nothing\"\n");
        assert!(p.contains("no steps"), "{p}");
        // A running testnet's hosts are checked when the scenario runs; names must look right.
        let p =
            one_problem("[testnet]\nreuse = \"x\"\n[[step]]\ndo = \"kill\"\nhosts = \"nod1\"\n");
        assert!(p.contains("not a host name"), "{p}");
        assert!(
            parse(
                "[testnet]\nreuse = \"x\"\n[[step]]\ndo = \"kill\"\nhosts = \"node17\"\n",
                "t"
            )
            .is_ok()
        );
    }

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
    fn log_excerpts_lose_their_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2026  WARN x"
        );
    }
}
