//! A sliver knows where it is (root; skipped otherwise unless CI): `/etc/planetmesh/sliver.json`
//! and the `PLANETMESH_*` variables of its commands say its slice, node, federation, site and
//! addresses, from the engine and from a lease redeemed at a node manager; the sliver's root
//! cannot change the file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::collections::BTreeMap;

use capability_schema::identity::test_key;
use capability_schema::protocol::{NodeRequest, NodeResponse};
use common::daemon::{LinuxNode, WAIT, within};
use common::{Fixture, id, root_or_skip, spec};
use federation::overlay::NodeProtocol;
use node::sliver::about::{PATH_IN_SLIVER, SliverFacts};
use node::sliver::{ExecCommand, SliverAbout};

/// The `PLANETMESH_*` variables in the output of `env`.
fn planetmesh_vars(env: &str) -> BTreeMap<String, String> {
    env.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| name.starts_with("PLANETMESH_"))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_engine_tells_a_sliver_where_it_is_in_a_file_it_cannot_change_and_in_its_env() {
    let Some(f) = Fixture::new() else { return };
    let node = format!("ed25519/{}", "5a".repeat(32));
    let mut s = spec("about");
    s.about = Some(SliverAbout {
        slice: "princeton_about".into(),
        node: node.clone(),
        federation: "plc".into(),
        site: "princeton".into(),
        public_address: None,
        ports: Vec::new(),
    });
    let rec = f.engine.create(s).expect("create");
    let address = rec.net.sliver_addr.to_string();
    let sh = |script: &str| {
        f.engine
            .exec(&id("about"), &ExecCommand::shell(script))
            .expect("exec")
    };

    let out = sh(&format!("cat {PATH_IN_SLIVER}"));
    assert!(out.success(), "{out:?}");
    let facts: SliverFacts = serde_json::from_slice(&out.stdout).expect("sliver.json");
    assert_eq!(facts.slice.as_deref(), Some("princeton_about"));
    assert_eq!(facts.node.as_deref(), Some(node.as_str()));
    assert_eq!(facts.federation.as_deref(), Some("plc"));
    assert_eq!(facts.site.as_deref(), Some("princeton"));
    assert_eq!(facts.address, rec.net.sliver_addr);
    assert_eq!(
        (facts.public_address, facts.ports),
        (None, vec![]),
        "a node without a public address leases no ports"
    );

    // Every command is told, whoever runs it; a caller cannot forge the node's names.
    let mut cmd = ExecCommand::new(["/usr/bin/env"]);
    cmd.uid = 1000;
    cmd.gid = 1000;
    cmd.env = vec![
        ("PLANETMESH_NODE".into(), "ed25519/forged".into()),
        ("PLANETMESH_PORTS".into(), "1,2,3".into()),
    ];
    let out = f.engine.exec(&id("about"), &cmd).expect("exec env");
    assert!(out.success(), "{out:?}");
    assert_eq!(
        planetmesh_vars(&out.stdout_text()),
        vars(&[
            ("PLANETMESH_SLICE", "princeton_about"),
            ("PLANETMESH_NODE", &node),
            ("PLANETMESH_FEDERATION", "plc"),
            ("PLANETMESH_SITE", "princeton"),
            ("PLANETMESH_ADDRESS", &address),
        ])
    );
    let mut cat = ExecCommand::new(["/bin/cat", PATH_IN_SLIVER]);
    cat.uid = 1000;
    cat.gid = 1000;
    let out = f.engine.exec(&id("about"), &cat).expect("exec cat");
    assert!(
        out.success(),
        "a user other than root reads it too: {out:?}"
    );

    // Root in the sliver can neither write, replace, remove nor unmount it.
    let before = std::fs::read(rec.dirs.about()).unwrap();
    for attempt in [
        format!("echo forged > {PATH_IN_SLIVER}"),
        format!("echo forged >> {PATH_IN_SLIVER}"),
        format!("python3 -c 'open(\"{PATH_IN_SLIVER}\", \"r+\")'"),
        format!("rm -f {PATH_IN_SLIVER}"),
        format!(
            "echo forged > /etc/planetmesh/forged && mv /etc/planetmesh/forged {PATH_IN_SLIVER}"
        ),
        format!("chmod 666 {PATH_IN_SLIVER}"),
        format!("umount {PATH_IN_SLIVER}"),
        format!("mount -o remount,bind,rw {PATH_IN_SLIVER}"),
    ] {
        let out = sh(&attempt);
        assert!(!out.success(), "{attempt}: {out:?}");
    }
    assert_eq!(std::fs::read(rec.dirs.about()).unwrap(), before);
    assert_eq!(
        serde_json::from_slice::<SliverFacts>(&sh(&format!("cat {PATH_IN_SLIVER}")).stdout)
            .unwrap()
            .slice
            .as_deref(),
        Some("princeton_about")
    );

    // Destroyed with its upper dir kept, the file goes with everything but the upper dir.
    f.engine.destroy(&id("about"), true).expect("destroy");
    assert!(!rec.dirs.about().exists());
    assert!(rec.dirs.upper.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeemed_sliver_is_told_its_slice_node_federation_and_site() {
    if !root_or_skip() {
        return;
    }
    let node = LinuxNode::start("pmab").await;
    let node_key = node.key.public();
    let alice = test_key(51);
    let client = node.principal(&alice).await;
    let lease = node.redeem(&client, "princeton_told", &alice).await;
    let run = |script: &str| {
        let request = NodeRequest::Exec {
            lease_id: lease.lease_id.clone(),
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            stdin: vec![],
            timeout_ms: 10_000,
        };
        let client = client.clone();
        async move {
            match within(client.request::<NodeProtocol>(&node_key, request, WAIT))
                .await
                .unwrap()
            {
                NodeResponse::Exec(out) => out,
                other => panic!("{other:?}"),
            }
        }
    };
    let out = run(&format!("cat {PATH_IN_SLIVER}")).await;
    assert_eq!(out.exit_code, 0, "{out:?}");
    let facts: SliverFacts = serde_json::from_slice(&out.stdout).expect("sliver.json");
    let address = lease.address.clone().expect("the lease names the address");
    assert_eq!(
        facts,
        SliverFacts {
            slice: Some("princeton_told".into()),
            node: Some(node_key.to_string()),
            federation: Some("plc".into()),
            site: Some("princeton".into()),
            address: address.parse().unwrap(),
            public_address: None,
            ports: vec![],
        }
    );
    let expected = vars(&[
        ("PLANETMESH_SLICE", "princeton_told"),
        ("PLANETMESH_NODE", &node_key.to_string()),
        ("PLANETMESH_FEDERATION", "plc"),
        ("PLANETMESH_SITE", "princeton"),
        ("PLANETMESH_ADDRESS", &address),
    ]);
    let out = run("env").await;
    assert_eq!(
        planetmesh_vars(&String::from_utf8_lossy(&out.stdout)),
        expected
    );

    // A spawned program is told the same.
    let spawn = NodeRequest::Spawn {
        lease_id: lease.lease_id.clone(),
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "env > /tmp/env.part && mv /tmp/env.part /tmp/env".into(),
        ],
    };
    match within(client.request::<NodeProtocol>(&node_key, spawn, WAIT))
        .await
        .unwrap()
    {
        NodeResponse::Spawned { .. } => {}
        other => panic!("{other:?}"),
    }
    let spawned = within(async {
        loop {
            let out = run("cat /tmp/env").await;
            if out.exit_code == 0 {
                break String::from_utf8_lossy(&out.stdout).into_owned();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(planetmesh_vars(&spawned), expected);
    node.stop().await;
}
