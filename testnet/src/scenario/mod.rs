//! Scenario files: a testnet to bring up (or one already running) and an ordered list of steps
//! — acquisitions, commands in slivers (exec, spawn, logs, keys), renewals, deletions, faults
//! (kill, restart, partition, heal), revocations and assertions — run against real daemons, each step
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
//! | `acquire` | `slice`, `slivers` or `nodes`, `resources`, `duration` (1h), `lease`, `federations`, `min_sites`, `mode`, `via`, `agents`, `expect`, `expect_slivers`, `timeout_secs`, `kill_hosts` (SIGKILLed `kill_after_ms`, default 0, after slicectl starts: a node dying mid-acquisition), `expect_replaced` (slivers whose node did not answer, replaced elsewhere) |
//! | `exec` | `slice`, `command` (a string runs under `/bin/sh -c`, a list as is; lease placeholders, below), `expect_output` (in every sliver's stdout; `{node_address}` stands for the address of the sliver's node; lease placeholders), `expect_exit` (0), `expect_slivers`, `expect`, `timeout_secs`, `retry_secs` |
//! | `status` | `slice`, `expect_live`, `expect_measured`, `expect`, `timeout_secs`, `retry_secs` |
//! | `renew` | `slice`, `for`, `expect_renewed`, `expect`, `timeout_secs`, `retry_secs` |
//! | `sync` | `slice`, `expect_held`, `expect`, `timeout_secs`, `retry_secs` |
//! | `delete` | `slice`, `expect_released`, `expect`, `timeout_secs` |
//! | `spawn` | `slice`, `command` (as for `exec`), `expect_slivers` (each answered a pid), `expect`, `timeout_secs` |
//! | `logs` | `slice`, `expect_output` (in every sliver's spawn log; `{node_address}` and lease placeholders as for `exec`), `expect_slivers`, `expect`, `timeout_secs`, `retry_secs` |
//! | `keys` | `slice`, `add` or `del` (a key line, or for `del` its comment; neither: list), `expect_keys` (keys each sliver lists after), `expect_slivers`, `expect`, `timeout_secs` |
//! | `kill` | `hosts` (SIGKILL), `unplanned_within_secs` (then wait until no agent offers them and the broker's plan names them no more; prints how long it took) |
//! | `restart` | `hosts`, `wait_secs` (30: until each answers) |
//! | `partition` | `hosts`, `unplanned_within_secs` (as for `kill`) |
//! | `heal` | — |
//! | `wait_converged` | `timeout_secs` (60) |
//! | `sleep` | `secs` |
//! | `expect_leases` | `nodes` (default every node), `slice`, `each`, `total`, `within_secs` |
//! | `revoke` | `federation` (fed0), `principal` (the testnet's), `hosts` (their keys), `through` (the daemon handed the list; default the federation's first node), `expect_ended` (slices no node may hold a lease of), `expect_dropped` (no agent lists a revoked node), `within_secs` (10); prints how long each took from the hand-over |
//! | `down` | — (takes the testnet down and checks that nothing is left; the last step) |
//!
//! Lease placeholders name one sliver of the step's slice, the same in every sliver:
//! `{public_address:NODE}` (its node's public address), `{public_port:NODE}` (the port it
//! leases there, forwarded to the same port inside it) and `{sliver_address:NODE}` (its own
//! address on its node), read from `slicectl slice status --json` before the step runs. They
//! may stand in `command` (`exec`, `spawn`) and `expect_output` (`exec`, `logs`); `testnet
//! scenario check` refuses an unknown one, one naming no node of the testnet, or one naming a
//! node where the slice was not acquired (`nodes = […]`). So a sliver can serve on its leased
//! port and another fetch it through its node (`scenarios/slice-network.toml`).
//!
//! `expect` is the `slicectl` failure class a step must end with (`ok` by default; `exec` with
//! a non-zero `expect_exit`: `command_failed`), or a list of them: `ok`, `internal`, `usage`,
//! `setup`, `unsatisfiable`, `refused`, `unreachable`, `partial`, `not_found`,
//! `command_failed`, `not_run`. On a testnet whose nodes have no isolation (`isolation =
//! "memory"`) nothing runs: an `exec` step then passes when slicectl ends with `not_run` and
//! every sliver's node says so, its `expect_output` and `expect_exit` unchecked. `retry_secs` repeats an idempotent step until its expectations hold.
//!
//! Steps drive the `slicectl` binary with `--json`, as `testnet demo` does
//! ([`crate::demo::Slicectl`]), and the testnet's hosts through [`crate::launch`],
//! [`crate::netns`] and [`crate::probe`].
//!
//! The parts:
//! - `model`: the types: [`Scenario`], [`TestnetSpec`], and each step as a [`PlacedStep`]
//!   (the [`StepCommon`] part: line and title) holding a [`Step`], the enum tagged by `do`
//!   whose variants each hold the struct of that step's fields (declared there only);
//! - `parse`: TOML into the model ([`load`], [`parse`]), keeping each step's line; a wrong
//!   value, a field that does not apply to the step's `do` or one it lacks names the line and
//!   the field;
//! - `validate`: the scenario as a whole, against its topology and its earlier steps;
//! - `run`: bringing the testnet up or using a running one, the step loop, failure reports and
//!   teardown ([`run`], [`leftovers`]);
//! - `runner`: how each step is carried out (slicectl calls and their checks, faults, lease
//!   counts, `down`).

use std::fmt;

mod model;
mod parse;
mod run;
mod runner;
mod validate;

pub use model::{
    Acquire, Bare, Class, Delete, Exec, ExpectLeases, Hosts, IsolationChoice, Keys, KeysAction,
    Kind, LeaseField, LeaseRef, Logs, Mode, NODE_ADDRESS, NetworkChoice, OneOrMany, PRINCIPAL_SITE,
    PlacedStep, Renew, Restart, Revoke, Scenario, Sleep, Spawn, Status, Step, StepCommon, Sync,
    TestnetSpec, Via, WaitConverged, lease_refs,
};
pub use parse::{load, parse};
pub use run::{Report, RunOptions, leftovers, resolve, run, start, stop_on_signals};

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
