//! Where `slicectl` finds its config without `--config` (issue 17: a default place for
//! settings): the `slicectl` binary with `XDG_CONFIG_HOME` in a temporary directory, contexts
//! added, listed, made current and shown; the current context's config used; `--context`,
//! `--config` and `PLANETMESH_CONFIG` winning over it; the config directory's `slicectl.toml`
//! used when there is no context; and the hint `context add` prints runs as printed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

use std::path::Path;
use std::process::Command;

use slicectl::exit::ExitClass;

const BIN: &str = env!("CARGO_BIN_EXE_slicectl");

/// Runs slicectl with `XDG_CONFIG_HOME=<home>/xdg` and no config in the environment unless
/// `env_config` gives one; answers (exit code, stdout, stderr).
fn run(home: &Path, env_config: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("PLANETMESH_STATE")
        .env_remove("PLANETMESH_CONFIG")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("xdg"));
    if let Some(config) = env_config {
        command.env("PLANETMESH_CONFIG", config);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config whose state lives in `<dir>/state-<tag>`.
fn config(dir: &Path, tag: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, format!("state_dir = \"state-{tag}\"\n")).unwrap();
    path
}

/// Which config `context show --json` says is in use.
fn shown(home: &Path, env_config: Option<&Path>, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["context", "show"]);
    let (code, stdout, stderr) = run(home, env_config, &all);
    assert_eq!(code, 0, "{stdout}{stderr}");
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn contexts_choose_the_config_and_flags_win() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let a = config(home, "a");
    let b = config(home, "b");
    let a_text = a.to_str().unwrap();
    let b_text = b.to_str().unwrap();

    // Nothing yet: no contexts, no config.
    let (code, stdout, _) = run(home, None, &["context", "list"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("no contexts"), "{stdout}");
    assert!(shown(home, None, &[])["config"].is_null());

    // Add two; the hint `context add` prints runs as printed.
    let (code, stdout, stderr) = run(home, None, &["context", "add", "a", "--config", a_text]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let hint = stdout
        .lines()
        .find_map(|l| l.strip_prefix("use it: "))
        .expect("a hint");
    assert_eq!(hint, "slicectl context use a");
    let (code, _, stderr) = run(home, None, &["context", "add", "b", "--config", b_text]);
    assert_eq!(code, 0, "{stderr}");
    let args: Vec<&str> = hint.split_whitespace().skip(1).collect();
    let (code, stdout, stderr) = run(home, None, &args);
    assert_eq!(code, 0, "`{hint}`: {stderr}");
    assert!(stdout.contains("current context: a"), "{stdout}");
    let (_, stdout, _) = run(home, None, &["context", "list"]);
    assert!(stdout.contains(&format!("* a  {a_text}")), "{stdout}");
    assert!(stdout.contains(&format!("  b  {b_text}")), "{stdout}");

    // The current context's config is used without --config: its state dir is where the
    // slices are looked for (and made).
    let v = shown(home, None, &[]);
    assert_eq!(v["config"], a_text, "{v}");
    assert_eq!(v["context"], "a", "{v}");
    let (code, _, stderr) = run(home, None, &["slice", "list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(home.join("state-a").is_dir());
    assert!(!home.join("state-b").exists());

    // --context, --config and PLANETMESH_CONFIG win over the current context.
    assert_eq!(shown(home, None, &["--context", "b"])["config"], b_text);
    let v = shown(home, None, &["--config", b_text]);
    assert_eq!(v["config"], b_text, "{v}");
    assert!(v["context"].is_null(), "{v}");
    assert_eq!(shown(home, Some(&b), &[])["config"], b_text);
    let (code, _, stderr) = run(home, Some(&b), &["slice", "list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(home.join("state-b").is_dir());

    // An unknown context is a usage error naming the known ones.
    let (code, _, stderr) = run(home, None, &["context", "use", "c"]);
    assert_eq!(code, ExitClass::Usage.code(), "{stderr}");
    assert!(stderr.contains("known: a, b"), "{stderr}");
    let (code, _, stderr) = run(home, None, &["--context", "c", "slice", "list"]);
    assert_eq!(code, ExitClass::Usage.code(), "{stderr}");
}

#[test]
fn the_config_directory_holds_the_default_config() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let dir = home.join("xdg/planetmesh");
    std::fs::create_dir_all(&dir).unwrap();
    let default = config(&dir, "slicectl");
    let v = shown(home, None, &[]);
    assert_eq!(v["config"], default.to_str().unwrap(), "{v}");
    let (code, _, stderr) = run(home, None, &["slice", "list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(dir.join("state-slicectl").is_dir());
    // Without XDG_CONFIG_HOME: ~/.config/planetmesh.
    let out = Command::new(BIN)
        .args(["--json", "context", "show"])
        .env_remove("PLANETMESH_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", home)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["config"].is_null(), "{v}");
    let dot = home.join(".config/planetmesh");
    std::fs::create_dir_all(&dot).unwrap();
    let default = config(&dot, "slicectl");
    let out = Command::new(BIN)
        .args(["--json", "context", "show"])
        .env_remove("PLANETMESH_CONFIG")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", home)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config"], default.to_str().unwrap(), "{v}");
}
