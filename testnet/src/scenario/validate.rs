//! Checking a parsed scenario as a whole: its `[testnet]`, every step against the hosts the
//! testnet has (or, for a testnet that runs already, against the shape of host names until
//! the scenario runs on it) and against the steps before it (a slice is acquired before it is
//! used, and not twice; `down` comes last). Every problem names its line and field.

use std::collections::BTreeMap;

use crate::generate::Manifest;
use crate::topology::{HostPlan, HostRole};

use super::model::{
    Class, IsolationChoice, KeysAction, NetworkChoice, OneOrMany, PRINCIPAL_SITE, Scenario, Step,
    TestnetSpec, Via, lease_refs,
};

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

/// Every problem of a scenario (empty: it is valid), each naming its line and field.
pub(super) fn validate(s: &Scenario) -> Vec<String> {
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
    // Where each held slice was asked to be (`nodes` of its acquisition; empty: anywhere).
    let mut placed_on: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let last = s.steps.len().saturating_sub(1);
    for (i, placed) in s.steps.iter().enumerate() {
        let line = placed.common.line;
        let here = format!(
            "line {line}: step {} (do = {:?})",
            i + 1,
            placed.step.kind().word()
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
                    live.insert(a.slice.clone(), line);
                    placed_on.insert(a.slice.clone(), a.nodes.clone());
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
                if let KeysAction::Add(key) | KeysAction::Del(key) = k.action()
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
                    placed_on.remove(&d.slice);
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
            Step::Revoke(r) => {
                let revoked = r.hosts.as_ref().map(OneOrMany::to_vec).unwrap_or_default();
                if !r.principal && revoked.is_empty() {
                    bad("say what to revoke: `principal = true` and/or `hosts = [...]`".into());
                }
                for n in &revoked {
                    if let Err(e) = hosts.check(n, None) {
                        bad(format!("`hosts`: {e}"));
                    }
                }
                if let Some(n) = &r.through
                    && let Err(e) = hosts.check(n, None)
                {
                    bad(format!("`through`: {e}"));
                }
                if r.within_secs == Some(0) {
                    bad("`within_secs` must be at least 1".into());
                }
                for slice in &r.expect_ended {
                    if !live.contains_key(slice) {
                        bad(format!(
                            "`expect_ended`: {slice:?} is not held here: acquire it in an earlier step"
                        ));
                    }
                }
            }
            Step::Down(_) => {
                if i != last {
                    bad("`down` takes the testnet away: it must be the last step".into());
                }
            }
        }
        // Lease placeholders name a node where the step's slice has a sliver.
        let slice = match &placed.step {
            Step::Exec(e) => Some(&e.slice),
            Step::Spawn(sp) => Some(&sp.slice),
            Step::Logs(l) => Some(&l.slice),
            _ => None,
        };
        let mut seen = Vec::new();
        for (field, text) in placed.step.lease_texts() {
            let refs = match lease_refs(text) {
                Ok(refs) => refs,
                Err(e) => {
                    problems.push(format!("{here}: `{field}`: {e}"));
                    continue;
                }
            };
            for r in refs {
                if seen.contains(&r) {
                    continue;
                }
                let wrong = match hosts.check(&r.node, Some(HostRole::Node)) {
                    Err(e) => Some(e),
                    Ok(()) => slice
                        .and_then(|slice| Some((slice, placed_on.get(slice)?, live.get(slice)?)))
                        .filter(|(_, nodes, _)| !nodes.is_empty() && !nodes.contains(&r.node))
                        .map(|(slice, nodes, line)| {
                            format!(
                                "{slice:?} has no sliver on {} (acquired on line {line} with nodes = [{}])",
                                r.node,
                                nodes.join(", ")
                            )
                        }),
                };
                if let Some(wrong) = wrong {
                    problems.push(format!("{here}: `{field}`: {r}: {wrong}"));
                }
                seen.push(r);
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
                    "{here}: `{field}` must be at least 1 (or leave it out)"
                ));
            }
        }
    }
    problems
}

/// Checks a scenario's host names against a testnet that runs already.
pub(super) fn validate_against(s: &Scenario, manifest: &Manifest) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use crate::scenario::parse;

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
    fn lease_placeholders_name_a_node_where_the_slice_is() {
        let scenario = |acquire: &str, command: &str, expect: &str| {
            format!(
                "[testnet]\nnodes = 4\nagents = 2\n\
                 [[step]]\ndo = \"acquire\"\nslice = \"fed0-site0_w\"\n{acquire}\nresources = \"cpu=100m\"\n\
                 [[step]]\ndo = \"exec\"\nslice = \"fed0-site0_w\"\ncommand = {command:?}\nexpect_output = {expect:?}\n\
                 [[step]]\ndo = \"spawn\"\nslice = \"fed0-site0_w\"\ncommand = [\"serve\", {command:?}]\n\
                 [[step]]\ndo = \"logs\"\nslice = \"fed0-site0_w\"\nexpect_output = {expect:?}\n"
            )
        };
        let good = scenario(
            "nodes = [\"node0\", \"node1\"]",
            "fetch {public_address:node0}:{public_port:node0}",
            "at {sliver_address:node0}; you are {node_address}:",
        );
        assert!(parse(&good, "t").is_ok(), "{good}");
        // Without `nodes`, any node of the testnet may hold a sliver.
        let anywhere = scenario("slivers = 2", "fetch {public_port:node3}", "");
        assert!(parse(&anywhere, "t").is_ok());
        let p = problems(&scenario(
            "nodes = [\"node0\", \"node1\"]",
            "{public_adress:node0} {public_port:node9} {public_port:node9}",
            "{sliver_address:agent0} {public_port:node2} {sliver_address:node0",
        ));
        let expect = [
            "line 9: step 2 (do = \"exec\"): `command`: unknown placeholder {public_adress:…}",
            "line 9: step 2 (do = \"exec\"): `expect_output`: {sliver_address:… has no closing }",
            "line 14: step 3 (do = \"spawn\"): `command`: unknown placeholder {public_adress:…}",
            "line 18: step 4 (do = \"logs\"): `expect_output`: {sliver_address:… has no closing }",
        ];
        assert_eq!(p.len(), expect.len(), "{p:#?}");
        for (want, got) in expect.iter().zip(&p) {
            assert!(got.starts_with(want), "{got:?} should start {want:?}");
        }
        let p = problems(&scenario(
            "nodes = [\"node0\", \"node1\"]",
            "{public_port:node9} {public_port:node9} {public_address:agent0}",
            "{public_port:node2}",
        ));
        assert_eq!(
            p[..3],
            [
                "line 9: step 2 (do = \"exec\"): `command`: {public_port:node9}: no host \"node9\" in this testnet; hosts are node0, node1, node2, node3, agent0, agent1, broker0",
                "line 9: step 2 (do = \"exec\"): `command`: {public_address:agent0}: agent0 is an agent host, not a node",
                "line 9: step 2 (do = \"exec\"): `expect_output`: {public_port:node2}: \"fed0-site0_w\" has no sliver on node2 (acquired on line 4 with nodes = [node0, node1])",
            ],
            "{p:#?}"
        );
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
}
