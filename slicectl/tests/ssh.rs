//! `slicectl slice ssh` and the SSH endpoint in `slice status`, on real daemons in this
//! process (memory-isolation nodes, one of them with `[ssh] listen`): status shows the
//! command and the host key the node derived; `slice ssh` runs the OpenSSH client with the
//! host key pinned and the slice as the user, and its exit status is the session's (a memory
//! node authenticates, then says it has no real sliver to run a program in: 125); a wrong key
//! gets ssh's refusal (255); a node without an endpoint, or an ambiguous slice, is a usage
//! error before any ssh runs. Sessions inside real slivers are node/tests/ssh_root.rs's.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod testnet;

use std::os::unix::fs::PermissionsExt;

use capability_schema::AcquireMode;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use slicectl::exit::ExitClass;
use slicectl::ops::{KeyAction, OpError};
use slicectl::spec::SliceSpec;
use testnet::{Testnet, within};

fn key_pair(dir: &std::path::Path, seed: u8) -> (std::path::PathBuf, String) {
    let private = russh::keys::PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]));
    let path = dir.join(format!("id_{seed}"));
    std::fs::write(
        &path,
        private.to_openssh(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, private.public_key().to_openssh().unwrap())
}

/// ssh options after the login (OpenSSH reads options there too): this key only, no prompt.
fn client_args(key: &std::path::Path, command: &str) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-i",
        key.to_str().unwrap(),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        command,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slice_ssh_pins_the_nodes_host_key_and_logs_in_as_the_slice() {
    if std::process::Command::new("ssh")
        .arg("-V")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "ssh is missing (scripts/prereqs.sh installs openssh-client)"
        );
        eprintln!("skipping: no ssh client");
        return;
    }
    let mut net = Testnet::start(1).await;
    // The plc node runs an SSH endpoint; the ple node none.
    let plc = net
        .nodes
        .iter()
        .position(|n| n.federation == "plc")
        .unwrap();
    net.nodes[plc].stop().await;
    net.nodes[plc].config.ssh.listen = Some("127.0.0.1:0".parse().unwrap());
    net.nodes[plc].start().await;
    net.wait_for_inventories().await;
    let endpoint = net.nodes[plc]
        .running
        .as_ref()
        .unwrap()
        .state
        .service
        .ssh_endpoint()
        .unwrap();

    let state = tempfile::tempdir().unwrap();
    let m = net.manager(state.path(), false).await;
    let name = "plc-site0_ssh";
    let mut spec = SliceSpec::named(name);
    spec.slivers = Some(2);
    spec.resources = "cpu=250m,memory=128MiB".into();
    spec.duration = "1h".into();
    spec.mode = AcquireMode::AllOrNothing;
    let created = within(m.create(&spec)).await.unwrap();
    assert_eq!(created.class, ExitClass::Ok, "{:#?}", created.lines);

    // Status shows how to log in to the plc sliver, and the key to pin.
    let status = within(m.status(name)).await.unwrap();
    let command = format!("ssh -p {} {name}@127.0.0.1", endpoint.port);
    let line = status
        .lines
        .iter()
        .find(|l| l.trim_start().starts_with("ssh: "))
        .unwrap_or_else(|| panic!("{:#?}", status.lines));
    assert!(line.contains(&command), "{line}");
    assert!(line.contains(&endpoint.host_key), "{line}");
    let slivers = status.json["slivers"].as_array().unwrap();
    let with_ssh: Vec<_> = slivers.iter().filter(|s| !s["ssh"].is_null()).collect();
    assert_eq!(with_ssh.len(), 1, "{slivers:#?}");
    assert_eq!(with_ssh[0]["ssh"]["host_key"], endpoint.host_key.as_str());
    assert_eq!(with_ssh[0]["ssh"]["port"], endpoint.port);
    assert_eq!(with_ssh[0]["ssh"]["command"], command.as_str());

    let leases = m.state.leases(name).unwrap();
    let plc_node = net.nodes[plc].key;
    let on_plc = leases.iter().find(|l| l.lease.node == plc_node).unwrap();
    let on_ple = leases.iter().find(|l| l.lease.node != plc_node).unwrap();

    // Which node must be said when there are two; one without an endpoint says so.
    let ambiguous = m.ssh(name, None, &[]).await.unwrap_err();
    assert!(matches!(ambiguous, OpError::Usage(_)), "{ambiguous}");
    assert!(
        ambiguous.to_string().contains("several nodes"),
        "{ambiguous}"
    );
    let none = m
        .ssh(name, Some(&on_ple.lease.node.to_string()), &[])
        .await
        .unwrap_err();
    assert!(none.to_string().contains("runs no SSH endpoint"), "{none}");

    // An authorized key logs in through the pinned host key: the memory node then has no
    // sliver to run the command in (exit 125, after authentication).
    let keys = tempfile::tempdir().unwrap();
    let (alice, alice_public) = key_pair(keys.path(), 1);
    let (mallory, _) = key_pair(keys.path(), 2);
    let added = within(m.keys(name, KeyAction::Add(alice_public)))
        .await
        .unwrap();
    assert_ne!(added.class, ExitClass::Usage, "{:#?}", added.lines);
    let plc_arg = on_plc.lease.node.to_string();
    let code = m
        .ssh(name, Some(&plc_arg), &client_args(&alice, "true"))
        .await
        .unwrap();
    assert_eq!(code, 125);
    // A key the sliver does not list: ssh's own refusal.
    let code = m
        .ssh(name, Some(&plc_arg), &client_args(&mallory, "true"))
        .await
        .unwrap();
    assert_eq!(code, 255);
    net.stop().await;
}
