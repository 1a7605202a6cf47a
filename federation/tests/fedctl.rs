//! `fedctl` end to end: the files it writes are the ones the trust store believes.

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

    // A tampered file shows as invalid.
    let mut bytes = read("node.cert");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(dir("tampered.cert"), bytes).unwrap();
    let shown = ok(&["show", path(&dir("tampered.cert"))]);
    assert!(shown.contains("signature:  INVALID"), "{shown}");
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
