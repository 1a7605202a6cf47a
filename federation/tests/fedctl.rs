//! `fedctl` end to end: the files it writes are the ones the trust store believes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::path::Path;
use std::process::{Command, Output};

use capability_schema::{MembershipCert, PeeringAgreement, RevocationList, Role, Signed};
use federation::trust::{FederationAnchor, TrustError, TrustStore};
use federation::unix_now;

fn fedctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedctl"))
        .args(args)
        .output()
        .expect("fedctl runs")
}

fn ok(args: &[&str]) -> String {
    let out = fedctl(args);
    assert!(
        out.status.success(),
        "fedctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn operator_workflow_produces_files_the_trust_store_believes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);

    // Two federations and a few party keys.
    let out = ok(&["init-authority", "--name", "f1", "--out", path(&dir("f1"))]);
    assert!(out.contains("federation f1"), "{out}");
    ok(&["init-authority", "--name", "f2", "--out", path(&dir("f2"))]);
    let node_key = ok(&["keygen", "--out", path(&dir("node.key"))])
        .trim()
        .to_owned();
    let alice = ok(&["keygen", "--out", path(&dir("alice.key"))])
        .trim()
        .to_owned();
    let bob = ok(&["keygen", "--out", path(&dir("bob.key"))])
        .trim()
        .to_owned();
    assert!(node_key.starts_with("ed25519/"));

    // Keys are never overwritten, nor authorities.
    assert!(
        !fedctl(&["keygen", "--out", path(&dir("node.key"))])
            .status
            .success()
    );
    assert!(
        !fedctl(&["init-authority", "--name", "f1", "--out", path(&dir("f1"))])
            .status
            .success()
    );

    let f1_anchor: Signed<FederationAnchor> =
        Signed::from_bytes(&std::fs::read(dir("f1").join("anchor.cbor")).unwrap()).unwrap();
    let f2_anchor: Signed<FederationAnchor> =
        Signed::from_bytes(&std::fs::read(dir("f2").join("anchor.cbor")).unwrap()).unwrap();
    let f2_key = f2_anchor.signer.to_string();

    // f1 certifies a node; f2 certifies two principals.
    let out = ok(&[
        "certify",
        "--authority",
        path(&dir("f1")),
        "--subject",
        &node_key,
        "--role",
        "node",
        "--site",
        "mit",
        "--name",
        "n1",
        "--days",
        "30",
        "--out",
        path(&dir("node.cert")),
    ]);
    assert!(out.contains("serial:     1"), "{out}");
    for (who, file) in [(&alice, "alice.cert"), (&bob, "bob.cert")] {
        ok(&[
            "certify",
            "--authority",
            path(&dir("f2")),
            "--subject",
            who,
            "--role",
            "principal",
            "--site",
            "eth",
            "--name",
            file,
            "--days",
            "30",
            "--out",
            path(&dir(file)),
        ]);
    }
    // f1 serves f2's brokers and alice only.
    ok(&[
        "peer",
        "--authority",
        path(&dir("f1")),
        "--with-name",
        "f2",
        "--with-key",
        &f2_key,
        "--roles",
        "principal,broker",
        "--principals",
        &alice,
        "--max-slivers",
        "4",
        "--days",
        "30",
        "--out",
        path(&dir("f1-f2.peer")),
    ]);

    let read = |name: &str| std::fs::read(dir(name)).unwrap();
    let now = unix_now();
    let mut store = TrustStore::new();
    store.add_anchor(&f1_anchor).unwrap();
    store.add_anchor(&f2_anchor).unwrap();
    let node_cert: Signed<MembershipCert> = Signed::from_bytes(&read("node.cert")).unwrap();
    let cert = store.check_member(&node_cert, Role::Node, now).unwrap();
    assert_eq!((cert.site.as_str(), cert.name.as_str()), ("mit", "n1"));
    let peering: Signed<PeeringAgreement> = Signed::from_bytes(&read("f1-f2.peer")).unwrap();
    store.add_agreement(&peering).unwrap();
    let alice_cert: Signed<MembershipCert> = Signed::from_bytes(&read("alice.cert")).unwrap();
    let bob_cert: Signed<MembershipCert> = Signed::from_bytes(&read("bob.cert")).unwrap();
    let served = store.serves("f1", &alice_cert, now).unwrap();
    assert_eq!(served.limits().unwrap().max_slivers_per_principal, Some(4));
    assert!(matches!(
        store.serves("f1", &bob_cert, now),
        Err(TrustError::PrincipalNotCovered { .. })
    ));

    // Revoke the node's certificate by serial: the store then refuses it.
    let out = ok(&[
        "revoke",
        "--authority",
        path(&dir("f1")),
        "--serial",
        "1",
        "--out",
        path(&dir("rev1.cbor")),
    ]);
    assert!(out.contains("version:    1"), "{out}");
    let revocation: Signed<RevocationList> = Signed::from_bytes(&read("rev1.cbor")).unwrap();
    store.add_revocation(&revocation).unwrap();
    assert!(matches!(
        store.check_member(&node_cert, Role::Node, now),
        Err(TrustError::Revoked { serial: 1, .. })
    ));
    // The next list keeps serial 1 and adds a key.
    ok(&[
        "revoke",
        "--authority",
        path(&dir("f1")),
        "--key",
        &node_key,
        "--out",
        path(&dir("rev2.cbor")),
    ]);
    let second: Signed<RevocationList> = Signed::from_bytes(&read("rev2.cbor")).unwrap();
    let second = second.verify().unwrap();
    assert_eq!((second.version, second.serials.clone()), (2, vec![1]));

    // `show` reads every kind of file and checks signatures.
    let shown = ok(&["show", path(&dir("node.cert"))]);
    assert!(shown.contains("membership certificate"), "{shown}");
    assert!(shown.contains("role:       node"), "{shown}");
    assert!(shown.contains("signature:  valid"), "{shown}");
    assert!(shown.contains("(valid now)"), "{shown}");
    let shown = ok(&["show", path(&dir("f1-f2.peer"))]);
    assert!(shown.contains("peering agreement"), "{shown}");
    assert!(shown.contains("roles:      broker, principal"), "{shown}");
    assert!(shown.contains("principals: only 1 listed"), "{shown}");
    let shown = ok(&["show", path(&dir("rev2.cbor"))]);
    assert!(
        shown.contains("revocation list") && shown.contains("serials:    1"),
        "{shown}"
    );
    let shown = ok(&["show", path(&dir("f1").join("anchor.cbor"))]);
    assert!(shown.contains("federation anchor"), "{shown}");
    let shown = ok(&["show", path(&dir("f1"))]);
    assert!(shown.contains("next serial: 3"), "{shown}");
    let shown = ok(&["show", path(&dir("alice.key"))]);
    assert!(shown.contains(&alice), "{shown}");

    // `--json`: the kind, the signature's verdict and the body with raw values.
    let json = |file: &Path| -> serde_json::Value {
        serde_json::from_str(&ok(&["show", "--json", path(file)])).unwrap()
    };
    let cert = json(&dir("node.cert"));
    assert_eq!(cert["kind"], "membership_certificate", "{cert}");
    assert_eq!(cert["signature"]["valid"], true, "{cert}");
    assert_eq!(cert["signature"]["by_authority"], true, "{cert}");
    assert_eq!(cert["body"]["role"], "node", "{cert}");
    assert!(cert["body"]["expires_at"].is_u64(), "{cert}");
    let list = json(&dir("rev2.cbor"));
    assert_eq!(list["kind"], "revocation_list", "{list}");
    assert_eq!(list["body"]["version"], 2, "{list}");
    assert_eq!(json(&dir("f1"))["kind"], "authority_state");
    let key = json(&dir("alice.key"));
    assert_eq!(
        (key["kind"].as_str(), key["public_key"].as_str()),
        (Some("secret_key"), Some(alice.as_str()))
    );

    // A tampered file shows as invalid.
    let mut bytes = read("node.cert");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(dir("tampered.cert"), bytes).unwrap();
    let shown = ok(&["show", path(&dir("tampered.cert"))]);
    assert!(shown.contains("signature:  INVALID"), "{shown}");
    let tampered = json(&dir("tampered.cert"));
    assert_eq!(tampered["signature"]["valid"], false, "{tampered}");
    assert!(tampered["signature"]["error"].is_string(), "{tampered}");
    // Garbage is refused with a message.
    std::fs::write(dir("junk"), b"\x00\x01junk").unwrap();
    let out = fedctl(&["show", path(&dir("junk"))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a PlanetMesh"));
}

#[test]
fn bad_arguments_are_explained() {
    let out = fedctl(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for command in [
        "init-authority",
        "certify",
        "peer",
        "revoke",
        "show",
        "keygen",
    ] {
        assert!(help.contains(command), "{help}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = fedctl(&[
        "init-authority",
        "--name",
        "Bad Name",
        "--out",
        path(&tmp.path().join("x")),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not usable"));
    let out = fedctl(&[
        "certify",
        "--authority",
        "/nonexistent",
        "--subject",
        "ed25519/zz",
        "--role",
        "node",
        "--site",
        "s",
        "--name",
        "n",
        "--out",
        "/tmp/x",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ed25519"));
}

/// `fedctl <command> --help` for every command: what it accepts, what it writes, an example.
#[test]
fn every_command_explains_itself() {
    let help = |args: &[&str]| {
        let out = fedctl(args);
        assert!(out.status.success(), "fedctl {args:?}");
        String::from_utf8(out.stdout).expect("utf-8 help")
    };
    let top = help(&["--help"]);
    for needle in [
        "CBOR, except key files",
        "ed25519-private/",
        "inspected and backed",
        "fedctl <command> --help",
    ] {
        assert!(
            top.contains(needle),
            "top-level help lacks {needle:?}:\n{top}"
        );
    }
    let expected: [(&str, &[&str]); 6] = [
        (
            "keygen",
            &[
                "Writes:",
                "ed25519-private/",
                "0600",
                "never overwritten",
                "stdout",
                "Example:",
            ],
        ),
        (
            "init-authority",
            &[
                "Writes",
                "authority.key",
                "authority.cbor",
                "anchor.cbor",
                "0600",
                "Example:",
            ],
        ),
        (
            "certify",
            &[
                "[possible values: node, agent, broker, principal]",
                "days of 86400 s",
                "at least 1",
                "membership certificate (CBOR",
                "serial counter",
                "Example:",
                "--role principal",
            ],
        ),
        (
            "peer",
            &[
                "[possible values: node, agent, broker, principal]",
                "comma-separated",
                "--max-total",
                "--max-slivers",
                "--max-duration-secs",
                "in seconds",
                "days of 86400 s",
                "cpu=16 cores,memory=64GiB",
                "A key left out is a limit of zero",
                "absent means unlimited",
                "peering agreement (CBOR",
                "Example:",
            ],
        ),
        (
            "revoke",
            &[
                "--serial",
                "--key",
                "revocation list (CBOR",
                "authority.cbor",
                "Example:",
            ],
        ),
        (
            "show",
            &[
                "key files (text",
                "public key",
                "Writes nothing",
                "Examples:",
            ],
        ),
    ];
    for (command, needles) in expected {
        assert!(top.contains(command), "{top}");
        let text = help(&[command, "--help"]);
        for needle in needles {
            assert!(
                text.contains(needle),
                "`fedctl {command} --help` lacks {needle:?}:\n{text}"
            );
        }
        // `help <command>` says the same.
        assert_eq!(help(&["help", command]), text, "fedctl help {command}");
    }
}

#[test]
fn roles_days_and_resources_are_checked_with_the_accepted_values() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);
    ok(&["init-authority", "--name", "fa", "--out", path(&dir("fa"))]);
    let key = ok(&["keygen", "--out", path(&dir("k.key"))])
        .trim()
        .to_owned();
    let certify = |role: &str, days: &str| {
        fedctl(&[
            "certify",
            "--authority",
            path(&dir("fa")),
            "--subject",
            &key,
            "--role",
            role,
            "--site",
            "s",
            "--name",
            "n",
            "--days",
            days,
            "--out",
            path(&dir(&format!("{role}-{days}.cert"))),
        ])
    };
    let out = certify("admin", "30");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node, agent, broker, principal"),
        "the refusal lists the roles: {err}"
    );
    let out = certify("principal", "0");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--days"));
    // `user` is another name for a principal.
    assert!(certify("user", "30").status.success());
    let cert: capability_schema::Signed<MembershipCert> =
        Signed::from_bytes(&std::fs::read(dir("user-30.cert")).unwrap()).unwrap();
    assert_eq!(cert.verify().unwrap().role, Role::Principal);

    // A malformed --max-total is refused with the syntax expected.
    let f2 = ok(&["keygen", "--out", path(&dir("f2.key"))])
        .trim()
        .to_owned();
    let out = fedctl(&[
        "peer",
        "--authority",
        path(&dir("fa")),
        "--with-name",
        "fb",
        "--with-key",
        &f2,
        "--roles",
        "principal",
        "--max-total",
        "cpu",
        "--out",
        path(&dir("bad.peer")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--max-total") && err.contains("key=value"),
        "{err}"
    );
    assert!(!dir("bad.peer").exists());
}

#[test]
fn peer_sets_the_total_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);
    ok(&["init-authority", "--name", "fa", "--out", path(&dir("fa"))]);
    let other = ok(&["keygen", "--out", path(&dir("fb.key"))])
        .trim()
        .to_owned();
    let shown = ok(&[
        "peer",
        "--authority",
        path(&dir("fa")),
        "--with-name",
        "fb",
        "--with-key",
        &other,
        "--roles",
        "principal,broker",
        "--max-total",
        "cpu=16 cores,memory=64GiB,disk=500GiB,egress=1Gbit",
        "--out",
        path(&dir("fa-fb.peer")),
    ]);
    assert!(
        shown.contains("total cpu=16 cores,memory=64GiB,disk=500GiB,egress=1Gbit"),
        "{shown}"
    );
    let agreement: Signed<PeeringAgreement> =
        Signed::from_bytes(&std::fs::read(dir("fa-fb.peer")).unwrap()).unwrap();
    let limits = agreement.verify().unwrap().limits;
    assert_eq!(
        limits.max_total,
        Some(
            "cpu=16 cores,memory=64GiB,disk=500GiB,egress=1Gbit"
                .parse()
                .unwrap()
        )
    );
    assert_eq!(limits.max_slivers_per_principal, None);
    assert_eq!(limits.max_duration_secs, None);
    // Without the flag there is no total limit.
    let shown = ok(&[
        "peer",
        "--authority",
        path(&dir("fa")),
        "--with-name",
        "fb",
        "--with-key",
        &other,
        "--roles",
        "principal",
        "--out",
        path(&dir("fa-fb-2.peer")),
    ]);
    assert!(shown.contains("total unlimited"), "{shown}");
}

#[test]
fn key_files_are_text_and_show_prints_their_public_key() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name);
    let public = ok(&["keygen", "--out", path(&dir("alice.key"))])
        .trim()
        .to_owned();
    let text = std::fs::read_to_string(dir("alice.key")).expect("a key file is text");
    assert!(text.starts_with("ed25519-private/"), "{text}");
    assert_eq!(
        std::fs::metadata(dir("alice.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let shown = ok(&["show", path(&dir("alice.key"))]);
    assert_eq!(
        shown,
        format!("secret key file (text, not CBOR)\npublic key: {public}\n")
    );

    // The authority's key file shows the key its anchor names.
    ok(&["init-authority", "--name", "fk", "--out", path(&dir("fk"))]);
    let anchor: Signed<FederationAnchor> =
        Signed::from_bytes(&std::fs::read(dir("fk").join("anchor.cbor")).unwrap()).unwrap();
    let shown = ok(&["show", path(&dir("fk").join("authority.key"))]);
    assert!(
        shown.contains(&format!("public key: {}", anchor.signer)),
        "{shown}"
    );

    // A public key given as text shows as itself.
    std::fs::write(dir("alice.pub"), format!("{public}\n")).unwrap();
    assert_eq!(
        ok(&["show", path(&dir("alice.pub"))]),
        format!("public key: {public}\n")
    );

    // A key file others may read is refused, naming the file and what to do.
    std::fs::set_permissions(dir("alice.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = fedctl(&["show", path(&dir("alice.key"))]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("alice.key") && err.contains("chmod"), "{err}");
}
