//! Checks `slicectl` makes before any network call (issue 17, defect 3): a bad slice name, an
//! expired, not-yet-valid or wrong-role certificate, and `[[trust]]` entries that are malformed
//! or do not match the authority that signed the principal's certificate. Each is refused once,
//! on one line, with the usage or setup exit code and local times ("expired 3h ago"), and the
//! broker (a loopback listener this test holds) sees no connection at all.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::net::TcpListener;
use std::process::Command;

use capability_schema::{MembershipCert, Role, SecretKey, Signed, codec};
use slicectl::exit::ExitClass;

/// A principal, its federation's authority, and a broker address nothing answers on: a
/// listener this test holds and never accepts on, so any dial would show as a connection.
struct Setup {
    dir: tempfile::TempDir,
    authority: SecretKey,
    principal: SecretKey,
    listener: TcpListener,
    broker: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let principal = SecretKey::generate();
        principal.save(&dir.path().join("principal.key")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = federation::overlay::peer_id(&SecretKey::generate().public());
        Setup {
            dir,
            authority: SecretKey::generate(),
            principal,
            listener,
            broker: format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}"),
        }
    }

    /// Writes the principal's certificate: `role`, valid over [now + from, now + until).
    fn certify(&self, role: Role, from: i64, until: i64) {
        let now = federation::unix_now() as i64;
        let cert = MembershipCert {
            federation: "plc".into(),
            authority: self.authority.public(),
            subject: self.principal.public(),
            role,
            site: "plc-site0".into(),
            name: "alice".into(),
            serial: 7,
            issued_at: (now + from) as u64,
            expires_at: (now + until) as u64,
        };
        let signed = Signed::sign(&self.authority, &cert);
        std::fs::write(self.dir.path().join("m.cbor"), codec::encode(&signed)).unwrap();
    }

    /// Writes slicectl.toml with these `[[trust]]` entries (name, authority text).
    fn config(&self, trust: &[(&str, String)]) {
        let mut text = format!(
            "key_file = \"principal.key\"\nmembership = \"m.cbor\"\nstate_dir = \"state\"\nbroker = {:?}\ntimeout_secs = 2\n",
            self.broker
        );
        for (name, authority) in trust {
            text.push_str(&format!(
                "[[trust]]\nname = {name:?}\nauthority = {authority:?}\n"
            ));
        }
        std::fs::write(self.dir.path().join("slicectl.toml"), text).unwrap();
    }

    fn own_trust(&self) -> (&'static str, String) {
        ("plc", self.authority.public().to_string())
    }

    /// Runs slicectl with the config; answers (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.dir.path().join("slicectl.toml");
        let out = Command::new(env!("CARGO_BIN_EXE_slicectl"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("PLANETMESH_STATE")
            .env_remove("PLANETMESH_CONFIG")
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Nothing dialled the broker.
    fn assert_no_network(&self) {
        match self.listener.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("slicectl connected to the broker: {other:?}"),
        }
    }
}

const CREATE: [&str; 6] = [
    "slice",
    "create",
    "--name",
    "plc-site0_demo",
    "--slivers",
    "2",
];
const PLAN: [&str; 6] = [
    "slice",
    "plan",
    "--name",
    "plc-site0_demo",
    "--slivers",
    "2",
];

/// One line on stderr, nothing on stdout, the given class; answers the line.
fn refused_once(setup: &Setup, args: &[&str], class: ExitClass) -> String {
    let (code, stdout, stderr) = setup.run(args);
    assert_eq!(code, class.code(), "{stdout}{stderr}");
    assert_eq!(stdout, "", "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "one line, not a refusal per agent: {stderr}"
    );
    setup.assert_no_network();
    lines[0].to_owned()
}

fn assert_no_epoch(line: &str) {
    // A Unix time is a word of nine or ten digits; keys and ids in hex are words with letters.
    assert!(
        !line
            .split(|c: char| !c.is_ascii_alphanumeric())
            .any(|word| word.len() >= 9 && word.bytes().all(|b| b.is_ascii_digit())),
        "Unix-epoch time in {line:?}"
    );
}

#[test]
fn a_bad_slice_name_is_refused_locally() {
    let s = Setup::new();
    s.certify(Role::Principal, -60, 86_400);
    s.config(&[s.own_trust()]);
    for name in ["demo", "plc site0_x", "plc-site0_a/b"] {
        let line = refused_once(
            &s,
            &["slice", "create", "--name", name, "--slivers", "1"],
            ExitClass::Usage,
        );
        assert!(line.contains("<site>_<name>"), "{line}");
        assert!(line.contains(&format!("{name:?}")), "{line}");
    }
}

#[test]
fn an_expired_certificate_is_refused_locally_for_create_and_plan() {
    let s = Setup::new();
    s.certify(Role::Principal, -86_400, -3 * 3600 - 30);
    s.config(&[s.own_trust()]);
    for args in [&CREATE, &PLAN] {
        let line = refused_once(&s, args, ExitClass::Setup);
        assert!(line.contains("expired 3h ago"), "{line}");
        assert!(line.contains("fedctl certify --role principal"), "{line}");
        assert_no_epoch(&line);
    }
}

#[test]
fn a_not_yet_valid_or_wrong_role_certificate_is_refused_locally() {
    let s = Setup::new();
    s.certify(Role::Principal, 2 * 3600 + 30, 86_400);
    s.config(&[s.own_trust()]);
    let line = refused_once(&s, &CREATE, ExitClass::Setup);
    assert!(line.contains("not valid yet: it starts in 2h"), "{line}");
    assert_no_epoch(&line);

    s.certify(Role::Node, -60, 86_400);
    let line = refused_once(&s, &PLAN, ExitClass::Setup);
    assert!(line.contains("certifies a node, not a principal"), "{line}");
}

#[test]
fn trust_entries_that_cannot_be_right_are_reported() {
    let s = Setup::new();
    s.certify(Role::Principal, -60, 86_400);
    // The own federation's entry names another key: an error naming the real signer.
    s.config(&[("plc", SecretKey::generate().public().to_string())]);
    let line = refused_once(&s, &PLAN, ExitClass::Setup);
    assert!(line.contains("[[trust]] entry 1 (\"plc\")"), "{line}");
    assert!(line.contains(&s.authority.public().to_string()), "{line}");
    // Malformed for the own federation: an error too.
    s.config(&[("plc", "ed25519/nothex".into())]);
    let line = refused_once(&s, &PLAN, ExitClass::Setup);
    assert!(line.contains("is not a key"), "{line}");
    // Malformed for another federation: a warning naming the entry, and the command goes on
    // (to the broker, which does not answer: unreachable).
    s.config(&[s.own_trust(), ("ple", "ed25519/nothex".into())]);
    let (code, _, stderr) = s.run(&PLAN);
    assert!(
        stderr.contains("warning: [[trust]] entry 2 (\"ple\")"),
        "{stderr}"
    );
    assert_ne!(code, ExitClass::Setup.code(), "{stderr}");
}
