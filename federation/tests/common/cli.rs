//! Running a built PlanetMesh binary as a user would, and checking how it fails: one line
//! `<program>: <sentence>; <what to do>`, no backtrace and no panic even with
//! `RUST_BACKTRACE=1`, no empty cause, and the exit code of the failure's class (the codes
//! `slicectl` uses). Shared by the `cli_errors` test of each crate with a binary
//! (`#[path]`-included, since each crate's binaries are only visible to its own tests).

#![allow(dead_code, unreachable_pub)]

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// No binary run here may take longer (a daemon that started instead of failing is killed).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Usage: bad flags, or a command line asking for what cannot be done.
pub const USAGE: i32 = 2;
/// Setup: a config, key, certificate, state file or address that cannot be used.
pub const SETUP: i32 = 3;

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub what: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `binary args` in `cwd` with `RUST_BACKTRACE=1` (a backtrace, if any were printed,
/// would show) and only error logs, killing it after [`TIMEOUT`].
pub fn run(binary: &str, args: &[&str], cwd: &Path) -> Ran {
    let what = format!(
        "{} {}",
        Path::new(binary)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        args.join(" ")
    );
    let mut child = Command::new(binary)
        .args(args)
        .current_dir(cwd)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {TIMEOUT:?}; killed");
        }
        #[allow(clippy::disallowed_methods)] // polling a child process from a plain test
        std::thread::sleep(Duration::from_millis(20));
    };
    Ran {
        what,
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// `program --help` and `program <sub> --help` for every subcommand its help lists: exit 0,
/// and the help names the command. Answers the subcommands seen.
pub fn every_help(binary: &str, program: &str, cwd: &Path) -> Vec<String> {
    let top = run(binary, &["--help"], cwd);
    assert_eq!(top.code, Some(0), "{}: {top:?}", top.what);
    assert!(top.stdout.contains(&format!("Usage: {program}")), "{top:?}");
    let subcommands: Vec<String> = top
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect();
    assert!(!subcommands.is_empty(), "no subcommands in {top:?}");
    for sub in &subcommands {
        let help = run(binary, &[sub, "--help"], cwd);
        assert_eq!(help.code, Some(0), "{help:?}");
        assert!(
            help.stdout.contains(&format!("Usage: {program} {sub}")),
            "{help:?}"
        );
    }
    subcommands
}

/// `ran` failed as an ordinary error of exit code `code` should: one or two lines, the first
/// `<program>: ...` holding `what_to_do`, no backtrace, no panic, no cause left empty.
pub fn ordinary_error(ran: &Ran, program: &str, code: i32, what_to_do: &str) {
    assert_eq!(ran.code, Some(code), "{}: {ran:#?}", ran.what);
    let stderr = ran.stderr.trim_end();
    for bad in ["stack backtrace", "panicked", "RUST_BACKTRACE"] {
        assert!(
            !stderr.to_lowercase().contains(&bad.to_lowercase()),
            "{}: {bad:?} in {stderr}",
            ran.what
        );
    }
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        (1..=2).contains(&lines.len()),
        "{}: {} lines: {stderr}",
        ran.what,
        lines.len()
    );
    assert!(
        lines[0].starts_with(&format!("{program}: ")),
        "{}: {stderr}",
        ran.what
    );
    assert!(
        stderr.contains(what_to_do),
        "{}: does not say {what_to_do:?}: {stderr}",
        ran.what
    );
    for line in &lines {
        assert!(
            !line.ends_with(':') && !line.contains(": ;") && !line.contains(":  "),
            "{}: an empty cause: {line}",
            ran.what
        );
    }
}

/// A TCP port on 127.0.0.1 that is taken while the listener lives.
pub fn busy_port() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// What every daemon (`nodemgr`, `agentd`, `broker`) shares: help for every command; a missing
/// config, a config that does not parse, a missing key and a second `init` fail as ordinary errors that say what to do; a
/// bad flag is a usage error. Answers the directory `init` wrote (config `config_name`).
pub fn daemon_errors(binary: &str, program: &str, config_name: &str, tmp: &Path) {
    let commands = every_help(binary, program, tmp);
    for c in ["init", "run", "key"] {
        assert!(
            commands.iter().any(|s| s == c),
            "{program}: no {c} in {commands:?}"
        );
    }
    let init = format!("run `{program} init`");

    let missing = run(binary, &["run", "--config", "nope.toml"], tmp);
    ordinary_error(&missing, program, SETUP, &init);
    assert!(missing.stderr.contains("nope.toml"), "{missing:?}");
    let default = run(binary, &["run"], tmp);
    ordinary_error(&default, program, SETUP, &init);
    assert!(default.stderr.contains(config_name), "{default:?}");

    std::fs::write(tmp.join("bad.toml"), "federation = \"plc\"\nlisten = 5\n").unwrap();
    let bad = run(binary, &["run", "--config", "bad.toml"], tmp);
    ordinary_error(&bad, program, SETUP, &format!("`{program} init --dir"));
    assert!(bad.stderr.contains("bad.toml"), "{bad:?}");

    let key = run(binary, &["key", "--key", "nope.key"], tmp);
    ordinary_error(&key, program, SETUP, &init);
    assert!(key.stderr.contains("nope.key"), "{key:?}");

    let first = run(binary, &["init", "--federation", "plc", "--dir", "d"], tmp);
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(tmp.join("d").join(config_name).exists());
    let again = run(binary, &["init", "--federation", "plc", "--dir", "d"], tmp);
    ordinary_error(&again, program, USAGE, "another --dir");
    assert!(again.stderr.contains("exists already"), "{again:?}");

    let flag = run(binary, &["run", "--no-such-flag"], tmp);
    assert_eq!(flag.code, Some(USAGE), "{flag:?}");
    assert!(!flag.stderr.contains("backtrace"), "{flag:?}");
}

/// The binary documents itself: `--version` names the commit and build, `completions bash`
/// is a script bash loads (and then completes the program), and `man --dir` writes a page
/// for the program and each of its subcommands, in roff.
pub fn manual(binary: &str, program: &str, cwd: &Path) {
    let version = run(binary, &["--version"], cwd);
    assert_eq!(version.code, Some(0), "{version:?}");
    for field in ["commit: ", "build: ", "features: "] {
        assert!(version.stdout.contains(field), "{version:?}");
    }

    let script = run(binary, &["completions", "bash"], cwd);
    assert_eq!(script.code, Some(0), "{script:?}");
    let path = cwd.join(format!("{program}.bash"));
    std::fs::write(&path, &script.stdout).unwrap();
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p {program}",
            path.display()
        ))
        .output()
        .unwrap();
    let registered = String::from_utf8_lossy(&loaded.stdout);
    assert!(
        loaded.status.success() && registered.contains(program),
        "bash did not load the completions: {loaded:?}"
    );

    let pages = cwd.join("man");
    let dir = pages.to_string_lossy().into_owned();
    let man = run(binary, &["man", "--dir", &dir], cwd);
    assert_eq!(man.code, Some(0), "{man:?}");
    let mut wanted = vec![format!("{program}.1")];
    wanted.extend(
        every_help(binary, program, cwd)
            .iter()
            .map(|sub| format!("{program}-{sub}.1")),
    );
    for page in wanted {
        let text = std::fs::read_to_string(pages.join(&page))
            .unwrap_or_else(|e| panic!("{page}: {e} ({man:?})"));
        assert!(text.contains(".TH"), "{page} is not a man page: {text}");
    }
}
