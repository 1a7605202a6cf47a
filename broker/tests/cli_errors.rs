//! `broker` fails as every PlanetMesh program does: one line that says what to do, the exit
//! code of its class, no backtrace even with `RUST_BACKTRACE=1` (issue 17, defect 2). The
//! broker runs without a membership certificate, so it reaches the overlay and the HTTP
//! endpoint: a busy port is tested here (the listen code is every daemon's).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

#[path = "../../federation/tests/common/cli.rs"]
mod cli;

use cli::{SETUP, busy_port, daemon_errors, ordinary_error, run};

const BROKER: &str = env!("CARGO_BIN_EXE_broker");

#[test]
fn broker_errors_are_one_line_of_their_class_without_a_backtrace() {
    let tmp = tempfile::tempdir().unwrap();
    daemon_errors(BROKER, "broker", "broker.toml", tmp.path());
}

#[test]
fn a_busy_port_names_its_cause_and_the_setting_to_change() {
    let tmp = tempfile::tempdir().unwrap();
    let init = run(
        BROKER,
        &["init", "--federation", "plc", "--dir", "."],
        tmp.path(),
    );
    assert_eq!(init.code, Some(0), "{init:?}");
    let (_overlay, overlay_port) = busy_port();
    let (_http, http_port) = busy_port();

    std::fs::write(
        tmp.path().join("overlay.toml"),
        format!(
            "federation = \"plc\"\nlisten = [\"/ip4/127.0.0.1/tcp/{overlay_port}\"]\nhttp = \"off\"\n"
        ),
    )
    .unwrap();
    let ran = run(BROKER, &["run", "--config", "overlay.toml"], tmp.path());
    ordinary_error(&ran, "broker", SETUP, "change `listen` in the config");
    assert!(
        ran.stderr.contains(&format!(
            "cannot listen on /ip4/127.0.0.1/tcp/{overlay_port}: "
        )),
        "{ran:?}"
    );
    assert!(ran.stderr.contains("Address already in use"), "{ran:?}");

    std::fs::write(
        tmp.path().join("http.toml"),
        format!(
            "federation = \"plc\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nhttp = \"127.0.0.1:{http_port}\"\n"
        ),
    )
    .unwrap();
    let ran = run(BROKER, &["run", "--config", "http.toml"], tmp.path());
    ordinary_error(&ran, "broker", SETUP, "change `http` in the config");
    assert!(ran.stderr.contains(&http_port.to_string()), "{ran:?}");
    assert!(ran.stderr.contains("Address already in use"), "{ran:?}");
}

#[test]
fn broker_has_completions_man_pages_and_a_long_version() {
    let tmp = tempfile::tempdir().unwrap();
    cli::manual(env!("CARGO_BIN_EXE_broker"), "broker", tmp.path());
}
