//! `fedctl` fails as every PlanetMesh program does: one line that says what to do, the exit
//! code of its class, no backtrace even with `RUST_BACKTRACE=1` (issue 17, defect 2).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use common::cli::{SETUP, USAGE, every_help, ordinary_error, run};

const FEDCTL: &str = env!("CARGO_BIN_EXE_fedctl");

#[test]
fn fedctl_errors_are_one_line_of_their_class_without_a_backtrace() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let commands = every_help(FEDCTL, "fedctl", dir);
    for c in [
        "keygen",
        "init-authority",
        "certify",
        "peer",
        "revoke",
        "show",
    ] {
        assert!(commands.iter().any(|s| s == c), "no {c} in {commands:?}");
    }

    // An existing key or authority is never overwritten.
    let key = run(FEDCTL, &["keygen", "--out", "k.key"], dir);
    assert_eq!(key.code, Some(0), "{key:?}");
    let subject = key.stdout.trim().to_owned();
    let again = run(FEDCTL, &["keygen", "--out", "k.key"], dir);
    ordinary_error(&again, "fedctl", USAGE, "another --out");
    let authority = run(
        FEDCTL,
        &["init-authority", "--name", "plc", "--out", "plc"],
        dir,
    );
    assert_eq!(authority.code, Some(0), "{authority:?}");
    let again = run(
        FEDCTL,
        &["init-authority", "--name", "plc", "--out", "plc"],
        dir,
    );
    ordinary_error(&again, "fedctl", USAGE, "another --out");

    // A file or directory that is not there.
    let show = run(FEDCTL, &["show", "nope.cbor"], dir);
    ordinary_error(&show, "fedctl", SETUP, "a file fedctl wrote");
    assert!(show.stderr.contains("nope.cbor"), "{show:?}");
    let certify = run(
        FEDCTL,
        &[
            "certify",
            "--authority",
            "nope",
            "--subject",
            &subject,
            "--role",
            "node",
            "--site",
            "s",
            "--name",
            "n",
            "--out",
            "n.cert",
        ],
        dir,
    );
    ordinary_error(
        &certify,
        "fedctl",
        SETUP,
        "fedctl init-authority --out nope",
    );

    // Asking for what cannot be done.
    std::fs::write(dir.join("junk"), "junk").unwrap();
    let junk = run(FEDCTL, &["show", "junk"], dir);
    ordinary_error(&junk, "fedctl", USAGE, "a file fedctl wrote");
    let own_key = authority
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("authority"))
        .map(|k| k.trim().to_owned())
        .expect("init-authority prints the authority key");
    let peer = run(
        FEDCTL,
        &[
            "peer",
            "--authority",
            "plc",
            "--with-name",
            "plc",
            "--with-key",
            &own_key,
            "--roles",
            "node",
            "--out",
            "p.cbor",
        ],
        dir,
    );
    // A federation is its key: another `plc` may be peered, its own key may not.
    ordinary_error(&peer, "fedctl", USAGE, "--with-key");
    let flag = run(FEDCTL, &["show", "--no-such-flag"], dir);
    assert_eq!(flag.code, Some(USAGE), "{flag:?}");
}

#[test]
fn fedctl_has_completions_man_pages_and_a_long_version() {
    let tmp = tempfile::tempdir().unwrap();
    common::cli::manual(env!("CARGO_BIN_EXE_fedctl"), "fedctl", tmp.path());
}
