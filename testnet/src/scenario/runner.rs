//! How each step is carried out on a running testnet: `slicectl --json` calls (as `testnet
//! demo` makes them, [`Slicectl`]) checked against the class and counts a step expects, faults
//! through [`launch`] and [`crate::netns`], lease counts from the nodes' `/leases`
//! ([`probe`]), and `down`, which checks that nothing is left ([`super::leftovers`]).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use capability_schema::PublicEndpoint;
use serde_json::Value;

use crate::demo::{Slicectl, SlicectlRun};
use crate::generate::Manifest;
use crate::launch;
use crate::probe;
use crate::topology::HostRole;

use super::model::{
    Acquire, Class, Delete, Exec, ExpectLeases, Keys, KeysAction, LeaseField, Logs, NODE_ADDRESS,
    OneOrMany, Renew, Restart, Revoke, Spawn, Status, Step, Sync, Via, lease_refs,
};
use super::run::{Running, interrupted, leftovers};

mod liveness;

/// Why a step failed: a sentence, and what the step saw (slicectl's command and output).
#[derive(Debug)]
pub(super) struct StepFailure {
    pub(super) reason: String,
    pub(super) detail: Vec<String>,
}

impl StepFailure {
    pub(super) fn new(reason: impl Into<String>) -> StepFailure {
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

    /// The step's lines when nothing went wrong, else a failure naming every problem.
    fn verdict(
        &self,
        lines: Vec<String>,
        problems: Vec<String>,
    ) -> Result<Vec<String>, StepFailure> {
        if problems.is_empty() {
            Ok(lines)
        } else {
            Err(self.fail(problems.join("; ")))
        }
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

/// `text` with each lease placeholder of `values` (placeholder, value) replaced.
fn fill(text: &str, values: &[(String, String)]) -> String {
    values
        .iter()
        .fold(text.to_owned(), |text, (placeholder, value)| {
            text.replace(placeholder, value)
        })
}

/// What a run needs at hand to carry out its steps.
pub(super) struct Runner<'a> {
    pub(super) manifest: &'a Manifest,
    pub(super) dir: &'a Path,
    pub(super) slicectl: Slicectl,
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

    /// What `expect_output` asks of the sliver on node `node`: [`NODE_ADDRESS`] is that
    /// node's address.
    fn expected_output(&self, want: &str, node: &str) -> String {
        match self.manifest.host(node) {
            Ok(host) => want.replace(NODE_ADDRESS, &host.ip),
            Err(_) => want.to_owned(),
        }
    }

    /// The values of the lease placeholders in `texts` ([`lease_refs`]), as (placeholder,
    /// value), read from `slicectl slice status --json SLICE` (not called when there is none);
    /// a sliver the slice lacks, or a lease without the field, fails the step naming them.
    fn lease_values(
        &self,
        slice: &str,
        texts: &[&str],
        timeout_secs: Option<u64>,
    ) -> Result<Vec<(String, String)>, StepFailure> {
        let mut refs = Vec::new();
        for text in texts {
            for r in lease_refs(text).map_err(StepFailure::new)? {
                if !refs.contains(&r) {
                    refs.push(r);
                }
            }
        }
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        let args = vec!["slice".to_owned(), "status".to_owned(), slice.to_owned()];
        let call = self.call(&self.slicectl, args, timeout_secs)?;
        call.expect_class(&[Class::Ok, Class::Partial])?;
        let slivers = self.by_node(&call.json["slivers"]);
        let mut values = Vec::new();
        let mut problems = Vec::new();
        for r in refs {
            let Some((_, lease)) = slivers.iter().find(|(name, _)| *name == r.node) else {
                let on: Vec<&str> = slivers.iter().map(|(name, _)| name.as_str()).collect();
                problems.push(format!(
                    "{r}: {slice} has no sliver on {} (its slivers are on {})",
                    r.node,
                    if on.is_empty() {
                        "no node".to_owned()
                    } else {
                        on.join(", ")
                    }
                ));
                continue;
            };
            let value = match r.field {
                LeaseField::PublicAddress => lease["public"]["address"].as_str().map(str::to_owned),
                LeaseField::PublicPort => {
                    lease["public"]["ports"][0].as_u64().map(|p| p.to_string())
                }
                LeaseField::SliverAddress => lease["address"].as_str().map(str::to_owned),
            };
            match value {
                Some(value) => values.push((r.to_string(), value)),
                None if r.field == LeaseField::SliverAddress => problems.push(format!(
                    "{r}: {}'s lease of {slice} names no sliver address",
                    r.node
                )),
                None => problems.push(format!(
                    "{r}: {}'s lease of {slice} names no public endpoint (its node gives slivers \
                     no egress: public_address = \"off\", as on a loopback testnet)",
                    r.node
                )),
            }
        }
        if !problems.is_empty() {
            return Err(call.fail(problems.join("; ")));
        }
        Ok(values)
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
            table.remove("brokers");
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
        args.extend(["--mode".to_owned(), a.mode.word().to_owned()]);
        for f in &a.federations {
            args.extend(["--federation".to_owned(), f.clone()]);
        }
        if let Some(m) = a.min_sites {
            args.extend(["--min-sites".to_owned(), m.to_string()]);
        }
        let killer = self.kill_during(&a.kill_hosts, a.kill_after_ms)?;
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
        let mut killed = killer.map_or_else(|| Ok(Vec::new()), liveness::Killer::join)?;
        let replaced = liveness::replaced_lines(&call.json);
        let expect = a.expect.as_ref().map_or(vec![Class::Ok], OneOrMany::to_vec);
        call.expect_class(&expect)?;
        if let Some(n) = a.expect_replaced
            && replaced.made != n
        {
            return Err(call.fail(format!(
                "expected {n} slivers replaced, {} were",
                replaced.made
            )));
        }
        let held: Vec<String> = self
            .by_node(&call.json["leases"])
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        let mut lines = std::mem::take(&mut killed);
        lines.extend(replaced.lines);
        lines.extend(brokers_left(&call.run.stderr));
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
        let texts: Vec<&str> = argv
            .iter()
            .map(String::as_str)
            .chain(e.expect_output.as_deref())
            .collect();
        let values = self.lease_values(&e.slice, &texts, e.timeout_secs)?;
        let mut args = vec![
            "slice".to_owned(),
            "exec".to_owned(),
            e.slice.clone(),
            "--".to_owned(),
        ];
        args.extend(argv.iter().map(|a| fill(a, &values)));
        let call = self.call(&self.slicectl, args, e.timeout_secs)?;
        // Without isolation nothing runs; a step expecting a refusal is checked as usual.
        let expects_success = e
            .expect
            .as_ref()
            .is_none_or(|x| x.to_vec().contains(&Class::Ok));
        if self.manifest.isolation == "memory" && expects_success {
            return self.exec_without_isolation(e, call);
        }
        let default = if e.expect_exit == 0 {
            Class::Ok
        } else {
            Class::CommandFailed
        };
        call.expect_class(&e.expect.as_ref().map_or(vec![default], OneOrMany::to_vec))?;
        let mut lines = placeholder_lines(&values);
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
            if let Some(want) = &e.expect_output {
                let want = self.expected_output(&fill(want, &values), &name);
                if !stdout.contains(&want) {
                    problems.push(format!("{name}'s output lacks {want:?}"));
                }
            }
        }
        expect_slivers(&mut problems, e.expect_slivers, answered, "answer");
        call.verdict(lines, problems)
    }

    /// An exec step where nodes have no isolation (`isolation = "memory"`): nothing runs, so
    /// the step's output and exit expectations cannot be met; what must hold instead is that
    /// slicectl ends with `not_run` and every sliver's node says that nothing ran.
    fn exec_without_isolation(&self, e: &Exec, call: Call) -> Result<Vec<String>, StepFailure> {
        call.expect_class(&[Class::NotRun])?;
        let mut lines = vec![
            "nodes without isolation: nothing runs (expect_output and expect_exit not checked)"
                .to_owned(),
        ];
        let mut answered = 0;
        let mut problems = Vec::new();
        for (name, s) in self.by_node(&call.json["slivers"]) {
            if s["not_run"] == true {
                answered += 1;
                lines.push(format!("{name}: not run (no isolation)"));
            } else {
                problems.push(format!("{name} did not answer that nothing ran: {s}"));
            }
        }
        expect_slivers(&mut problems, e.expect_slivers, answered, "answer");
        call.verdict(lines, problems)
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
            let reached = serde_json::from_value::<PublicEndpoint>(v["public"].clone())
                .map(|p| format!(", reached at {p}"))
                .unwrap_or_default();
            // A lease its node ended early (a revocation) comes with the node's reason.
            let reached = match v["ended"].as_str() {
                Some(reason) => format!("{reached}, lease ended: {reason}"),
                None => reached,
            };
            let usage = &v["usage"];
            if usage.is_object() {
                measured += 1;
                lines.push(format!(
                    "{name}: {state}{reached}, cpu {} ms, memory {} B, sent {} B{}",
                    usage["cpu_time_ms"],
                    usage["memory_bytes"],
                    usage["egress_bytes"],
                    v["condition"]
                        .as_str()
                        .map(|c| format!(", {c}"))
                        .unwrap_or_default()
                ));
            } else {
                lines.push(format!("{name}: {state}{reached}"));
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
        let argv = shell_argv(&sp.command);
        let texts: Vec<&str> = argv.iter().map(String::as_str).collect();
        let values = self.lease_values(&sp.slice, &texts, sp.timeout_secs)?;
        let mut args = vec![
            "slice".to_owned(),
            "spawn".to_owned(),
            sp.slice.clone(),
            "--".to_owned(),
        ];
        args.extend(argv.iter().map(|a| fill(a, &values)));
        let call = self.call(&self.slicectl, args, sp.timeout_secs)?;
        call.expect_class(
            &sp.expect
                .as_ref()
                .map_or(vec![Class::Ok], OneOrMany::to_vec),
        )?;
        let mut lines = placeholder_lines(&values);
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
        expect_slivers(&mut problems, sp.expect_slivers, started, "start it");
        call.verdict(lines, problems)
    }

    fn logs(&self, l: &Logs) -> Result<Vec<String>, StepFailure> {
        let texts: Vec<&str> = l.expect_output.as_deref().into_iter().collect();
        let values = self.lease_values(&l.slice, &texts, l.timeout_secs)?;
        let args = vec!["slice".to_owned(), "logs".to_owned(), l.slice.clone()];
        let call = self.call(&self.slicectl, args, l.timeout_secs)?;
        call.expect_class(&l.expect.as_ref().map_or(vec![Class::Ok], OneOrMany::to_vec))?;
        let mut lines = placeholder_lines(&values);
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
            if let Some(want) = &l.expect_output {
                let want = self.expected_output(&fill(want, &values), &name);
                if !text.contains(&want) {
                    problems.push(format!("{name}'s log lacks {want:?}"));
                }
            }
        }
        expect_slivers(&mut problems, l.expect_slivers, answered, "answer");
        call.verdict(lines, problems)
    }

    fn keys(&self, k: &Keys) -> Result<Vec<String>, StepFailure> {
        let action = k.action();
        let mut args = vec!["slice".to_owned(), "keys".to_owned(), k.slice.clone()];
        match &action {
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
            match &action {
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
        expect_slivers(&mut problems, k.expect_slivers, answered, "answer");
        call.verdict(lines, problems)
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
                if probe::status(host).is_ok() {
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
                crate::pause(Duration::from_millis(100));
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
                let leases = probe::leases(host).map_err(|e| format!("{e:#}"))?;
                let count = leases
                    .iter()
                    .filter(|l| slice.is_none_or(|s| l.slice == s))
                    .count();
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
                Err(_) => crate::pause(Duration::from_millis(500)),
            }
        }
    }
}

impl Runner<'_> {
    /// `fedctl revoke --publish`, then what the revocation must bring about, timed from the
    /// moment fedctl was started (its own overlay start and dial included).
    fn revoke(&self, r: &Revoke) -> Result<Vec<String>, StepFailure> {
        let federation = r.federation.as_deref().unwrap_or("fed0");
        let authority = self.dir.join("authorities").join(federation);
        let mut keys = Vec::new();
        if r.principal {
            keys.push(self.manifest.principal);
        }
        for name in r.hosts.iter().flat_map(OneOrMany::to_vec) {
            keys.push(self.manifest.host(&name)?.key);
        }
        let via = match &r.through {
            Some(name) => self.manifest.host(name)?,
            None => self
                .manifest
                .of_role(HostRole::Node)
                .find(|h| h.plan.federation == federation)
                .ok_or_else(|| {
                    StepFailure::new(format!("no node of {federation} to publish through"))
                })?,
        };
        let mut n = 1;
        let out = loop {
            let path = self.dir.join(format!("{federation}-revoked-{n}.cbor"));
            if !path.exists() {
                break path;
            }
            n += 1;
        };
        let fedctl = launch::bin_dir()?.join("fedctl");
        let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
        let args = [
            "revoke".to_owned(),
            "--authority".to_owned(),
            authority.display().to_string(),
            "--key".to_owned(),
            keys.join(","),
            "--out".to_owned(),
            out.display().to_string(),
            "--publish".to_owned(),
            via.multiaddr(),
        ];
        let started = Instant::now();
        let ran = std::process::Command::new(&fedctl)
            .args(&args)
            .output()
            .with_context(|| {
                format!(
                    "running {} (build it with `cargo build --workspace --bins`)",
                    fedctl.display()
                )
            })?;
        let published = started.elapsed();
        let stdout = String::from_utf8_lossy(&ran.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&ran.stderr).into_owned();
        if !ran.status.success() {
            return Err(StepFailure {
                reason: format!("fedctl revoke failed ({}): {}", ran.status, stderr.trim()),
                detail: vec![format!("fedctl {}", args.join(" ")), stdout],
            });
        }
        let mut lines: Vec<String> = stdout
            .lines()
            .filter(|l| l.starts_with("version:") || l.starts_with("published to"))
            .map(str::to_owned)
            .collect();
        lines.push(format!(
            "fedctl published through {} in {:.3}s",
            via.plan.name,
            published.as_secs_f64()
        ));
        let deadline = started + Duration::from_secs(r.within_secs.unwrap_or(10));
        let nodes: Vec<String> = self
            .manifest
            .of_role(HostRole::Node)
            .map(|h| h.plan.name.clone())
            .collect();
        for slice in &r.expect_ended {
            loop {
                let held: usize = self
                    .leases(&nodes, Some(slice))
                    .map_err(StepFailure::new)?
                    .iter()
                    .map(|(_, c)| c)
                    .sum();
                if held == 0 {
                    let after = started.elapsed();
                    lines.push(format!(
                        "every lease of {slice} ended at every node {:.3}s after the hand-over \
                         ({:.3}s after fedctl started)",
                        after.saturating_sub(published).as_secs_f64(),
                        after.as_secs_f64()
                    ));
                    break;
                }
                if Instant::now() >= deadline || interrupted() {
                    return Err(StepFailure::new(format!(
                        "{held} leases of {slice} still held {:.1}s after the revocation",
                        started.elapsed().as_secs_f64()
                    )));
                }
                crate::pause(Duration::from_millis(20));
            }
        }
        if r.expect_dropped {
            let revoked: Vec<&str> = keys.iter().map(String::as_str).collect();
            loop {
                let listing: Vec<String> = self
                    .manifest
                    .of_role(HostRole::Agent)
                    .filter_map(|agent| {
                        let status: agentd::daemon::view::AgentStatus =
                            probe::get(agent, "/status").ok()?;
                        let listed = status
                            .nodes
                            .iter()
                            .any(|n| revoked.contains(&n.node.to_string().as_str()));
                        listed.then(|| agent.plan.name.clone())
                    })
                    .collect();
                if listing.is_empty() {
                    let after = started.elapsed();
                    lines.push(format!(
                        "no agent lists a revoked node {:.3}s after the hand-over ({:.3}s after \
                         fedctl started)",
                        after.saturating_sub(published).as_secs_f64(),
                        after.as_secs_f64()
                    ));
                    break;
                }
                if Instant::now() >= deadline || interrupted() {
                    return Err(StepFailure::new(format!(
                        "{} still list a revoked node {:.1}s after the revocation",
                        listing.join(", "),
                        started.elapsed().as_secs_f64()
                    )));
                }
                crate::pause(Duration::from_millis(20));
            }
        }
        Ok(lines)
    }
}

/// Runs one step on `running`; `Ok` holds what to print.
pub(super) fn run_step(
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
                    crate::pause(Duration::from_secs(1));
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
            if let Some(within) = h.unplanned_within_secs {
                lines.extend(cx.wait_unplanned(&h.hosts.to_vec(), Duration::from_secs(within))?);
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
            if let Some(within) = h.unplanned_within_secs {
                lines.extend(cx.wait_unplanned(&h.hosts.to_vec(), Duration::from_secs(within))?);
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
                crate::pause((until - Instant::now()).min(Duration::from_millis(100)));
            }
            Ok(Vec::new())
        }
        Step::ExpectLeases(e) => cx.expect_leases(e),
        Step::Revoke(r) => cx.revoke(r),
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

/// The brokers slicectl left for the next during a call, as its standard error says
/// (`slicectl: leaving broker …: why; trying …`), one line each.
fn brokers_left(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("slicectl: leaving "))
        .map(|l| format!("left {l}"))
        .collect()
}

/// What each lease placeholder of a step stood for, one line each.
fn placeholder_lines(values: &[(String, String)]) -> Vec<String> {
    values
        .iter()
        .map(|(placeholder, value)| format!("{placeholder} = {value}"))
        .collect()
}

/// Adds a problem when a step expected `expect` slivers to `act` and `got` did.
fn expect_slivers(problems: &mut Vec<String>, expect: Option<usize>, got: usize, act: &str) {
    if let Some(n) = expect
        && got != n
    {
        problems.push(format!("expected {n} slivers to {act}, {got} did"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_command_runs_under_a_shell_a_list_as_is() {
        assert_eq!(
            shell_argv(&OneOrMany::One("echo up; sleep 30".into())),
            ["/bin/sh", "-c", "echo up; sleep 30"]
        );
        assert_eq!(
            shell_argv(&OneOrMany::Many(vec!["/bin/hostname".into()])),
            ["/bin/hostname"]
        );
    }

    #[test]
    fn lease_placeholders_are_filled_in_everywhere_they_stand() {
        let values = vec![
            ("{public_address:node0}".to_owned(), "10.250.0.2".to_owned()),
            ("{public_port:node0}".to_owned(), "40000".to_owned()),
        ];
        assert_eq!(
            fill(
                "/dev/tcp/{public_address:node0}/{public_port:node0} Host: {public_address:node0} {node_address} {public_port:node1}",
                &values
            ),
            "/dev/tcp/10.250.0.2/40000 Host: 10.250.0.2 {node_address} {public_port:node1}"
        );
        assert_eq!(
            placeholder_lines(&values),
            [
                "{public_address:node0} = 10.250.0.2",
                "{public_port:node0} = 40000"
            ]
        );
    }

    #[test]
    fn node_address_in_expected_output_is_each_slivers_node() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = crate::generate::generate(
            dir.path(),
            crate::topology::Topology::default(),
            crate::generate::Network::Namespaces,
            "linux",
        )
        .unwrap();
        let runner = Runner {
            manifest: &manifest,
            dir: dir.path(),
            slicectl: Slicectl {
                bin: "/nonexistent/slicectl".into(),
                config: dir.path().join("slicectl.toml"),
            },
        };
        let want = "you are {node_address}:";
        for node in ["node0", "node3"] {
            let ip = &manifest.host(node).unwrap().ip;
            assert!(ip.starts_with("10.250."), "{ip}");
            assert_eq!(runner.expected_output(want, node), format!("you are {ip}:"));
        }
        // A node the testnet does not know keeps the placeholder, so the check fails.
        assert_eq!(runner.expected_output(want, "ed25519/ab"), want);
    }
}
