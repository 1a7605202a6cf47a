//! Nodes dying under a scenario: hosts killed while a create runs (`acquire`'s `kill_hosts`),
//! the replacements the create reports, and how long a dead node stays in plans (`kill` and
//! `partition` with `unplanned_within_secs`: until no agent offers it, which is what the
//! broker plans from, then checked on a plan).

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Runner, StepFailure};
use crate::launch;
use crate::probe;
use crate::scenario::run::interrupted;
use crate::topology::HostRole;

/// Hosts being killed on a thread of their own while the step's slicectl runs.
pub(super) struct Killer(JoinHandle<Vec<String>>);

impl Killer {
    /// Waits for the kills; their lines.
    pub(super) fn join(self) -> Result<Vec<String>, StepFailure> {
        self.0
            .join()
            .map_err(|_| StepFailure::new("the thread killing hosts panicked"))
    }
}

/// The replacements a create's `--json` answer reports (`replaced`).
pub(super) struct ReplacedLines {
    /// Slivers replaced elsewhere.
    pub(super) made: usize,
    /// What happened to each down node, as slicectl said it.
    pub(super) lines: Vec<String>,
}

/// Reads `replaced` from a create's answer.
pub(super) fn replaced_lines(json: &Value) -> ReplacedLines {
    let mut out = ReplacedLines {
        made: 0,
        lines: Vec::new(),
    };
    for r in json["replaced"].as_array().into_iter().flatten() {
        let node = r["node"].as_str().unwrap_or("?");
        match r["replaced_by"].as_str() {
            Some(by) => {
                out.made += 1;
                out.lines
                    .push(format!("node {node} did not answer; replaced by {by}"));
            }
            None => out.lines.push(format!(
                "node {node} did not answer; no replacement: {}",
                r["no_replacement"].as_str().unwrap_or("none offered")
            )),
        }
    }
    out
}

impl Runner<'_> {
    /// SIGKILLs `hosts` `after_ms` (default 0) from now on a thread of its own (`None` when
    /// there are none).
    pub(super) fn kill_during(
        &self,
        hosts: &[String],
        after_ms: Option<u64>,
    ) -> Result<Option<Killer>, StepFailure> {
        if hosts.is_empty() {
            return Ok(None);
        }
        let hosts = hosts
            .iter()
            .map(|name| Ok(self.manifest.host(name)?.clone()))
            .collect::<Result<Vec<_>, StepFailure>>()?;
        let after = Duration::from_millis(after_ms.unwrap_or(0));
        let started = Instant::now();
        Ok(Some(Killer(std::thread::spawn(move || {
            crate::pause(after);
            hosts
                .iter()
                .map(|host| {
                    let pid = launch::running_pid(host);
                    match launch::stop_host(host, Duration::from_secs(5), true) {
                        Ok(true) => format!(
                            "{} killed (pid {}) {:.2}s after slicectl started",
                            host.plan.name,
                            pid.unwrap_or(0),
                            started.elapsed().as_secs_f64()
                        ),
                        Ok(false) => format!("{} was not running", host.plan.name),
                        Err(e) => format!("{} could not be killed: {e:#}", host.plan.name),
                    }
                })
                .collect()
        }))))
    }

    /// Watches the agents (their `/status`, every 50 ms) until none offers `hosts`' nodes any
    /// more (each agent that lists one says it is silent), at most `within`; then confirms
    /// that a plan through the broker (`slicectl slice plan` for one small sliver) names none
    /// of them. Says how long that took from the call, made right after the fault.
    pub(super) fn wait_unplanned(
        &self,
        hosts: &[String],
        within: Duration,
    ) -> Result<Vec<String>, StepFailure> {
        let fault = Instant::now();
        let keys: Vec<capability_schema::PublicKey> = hosts
            .iter()
            .map(|name| Ok(self.manifest.host(name)?.key))
            .collect::<Result<_, StepFailure>>()?;
        let agents: Vec<_> = self.manifest.of_role(HostRole::Agent).collect();
        let mut offered_at = None;
        let gone = loop {
            let offering = agents.iter().any(|agent| {
                probe::get::<agentd::daemon::view::AgentStatus>(agent, "/status").is_ok_and(
                    |status| {
                        status
                            .nodes
                            .iter()
                            .any(|n| keys.contains(&n.node) && n.silent_secs.is_none())
                    },
                )
            });
            let at = fault.elapsed();
            if !offering {
                break at;
            }
            offered_at = Some(at);
            if at > within || interrupted() {
                return Err(StepFailure::new(format!(
                    "{} still offered by an agent {:.1}s after the fault",
                    hosts.join(", "),
                    at.as_secs_f64()
                )));
            }
            crate::pause(Duration::from_millis(50));
        };
        let Some(offered_at) = offered_at else {
            return Err(StepFailure::new(format!(
                "no agent offered {} right after the fault: its disappearance cannot be timed \
                 (was it planned before?)",
                hosts.join(", ")
            )));
        };
        let args: Vec<String> = [
            "--json",
            "--timeout",
            "5",
            "slice",
            "plan",
            "--name",
            "fed0-site0_liveness",
            "--slivers",
            "1",
            "--resources",
            "cpu=10m,memory=1MiB,disk=1MiB,egress=1Mbit",
            "--duration",
            "1h",
        ]
        .map(str::to_owned)
        .to_vec();
        let run = self.slicectl.run(&args, Duration::from_secs(30))?;
        let json = run
            .stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or(Value::Null);
        let plan = json["plan"].to_string();
        if json["plan"].is_null() || keys.iter().any(|k| plan.contains(&k.to_string())) {
            return Err(StepFailure {
                reason: format!(
                    "no agent offers {} any more, but the broker's plan still names it or gave \
                     no plan (exit {})",
                    hosts.join(", "),
                    run.code
                ),
                detail: vec![run.stdout, run.stderr],
            });
        }
        Ok(vec![format!(
            "{} gone from plans {:.2}s after the fault (still offered at {:.2}s); the broker's \
             plan names it no more",
            hosts.join(", "),
            gone.as_secs_f64(),
            offered_at.as_secs_f64()
        )])
    }
}
