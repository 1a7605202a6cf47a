//! `broker init` as an operator runs it: the built binary writes a config that loads and a key
//! only its owner may read, and refuses to overwrite either, saying what to do instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use broker::daemon::config::BrokerConfig;
use capability_schema::SecretKey;

fn init(dir: &Path, federation: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(["init", "--federation", federation, "--dir"])
        .arg(dir)
        .output()
        .expect("the broker binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn init_writes_a_loadable_config_and_a_private_key_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("brk");

    let first = init(&dir, "plc");
    let stdout = text(&first.stdout);
    assert!(first.status.success(), "{}{}", stdout, text(&first.stderr));

    let key_file = dir.join("broker.key");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key mode {mode:o}");
    let key = SecretKey::load(&key_file).expect("the key loads");
    assert!(
        stdout.contains(&format!("broker key: {}", key.public())),
        "{stdout}"
    );

    let config = BrokerConfig::load(&dir.join("broker.toml")).expect("the written config loads");
    assert_eq!(config.common.federation, "plc");
    assert_eq!(config.common.key_file, key_file);
    assert_eq!(config.follow, vec!["plc".to_owned()]);

    // A second init refuses, says what to do, and leaves both files as they were.
    let config_before = std::fs::read(dir.join("broker.toml")).unwrap();
    let key_before = std::fs::read(&key_file).unwrap();
    let second = init(&dir, "other");
    let stderr = text(&second.stderr);
    assert!(!second.status.success(), "a second init succeeded");
    assert!(stderr.contains("exists already"), "{stderr}");
    assert!(stderr.contains("broker run --config"), "{stderr}");
    assert!(stderr.contains("another --dir"), "{stderr}");
    assert_eq!(
        std::fs::read(dir.join("broker.toml")).unwrap(),
        config_before
    );
    assert_eq!(std::fs::read(&key_file).unwrap(), key_before);

    // A key left alone (config removed) is not overwritten either.
    std::fs::remove_file(dir.join("broker.toml")).unwrap();
    let third = init(&dir, "plc");
    assert!(!third.status.success());
    assert!(text(&third.stderr).contains("broker.key exists already"));
    assert_eq!(std::fs::read(&key_file).unwrap(), key_before);
    assert!(!dir.join("broker.toml").exists());
}
