//! Root tests of a sliver's kernel surface: its seccomp filter (in its init and in what runs in
//! it) and its swap limit (root; skipped otherwise unless CI).
//!
//! The tests marked EXEC-SIDE check the filter of commands run through `exec`, which the exec
//! path (`node::sliver::enter`) installs with `node::sliver::seccomp::install_raw` right before
//! its final exec; the others check what the sliver's init and cgroup hold.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)] // a failed unwrap fails the run

mod common;

use std::fs;

use common::{Fixture, id, spec};
use node::sliver::caps::NESTED_USERNS;
use node::sliver::{ExecCommand, ExecOutput, SliverKind, SliverRecord, seccomp};

fn sh(f: &Fixture, sliver: &str, script: &str) -> ExecOutput {
    f.engine
        .exec(&id(sliver), &ExecCommand::shell(script))
        .expect("exec")
}

/// The `Seccomp:` mode and `Seccomp_filters:` count of a `/proc/<pid>/status` text.
fn seccomp_status(status: &str) -> (String, String) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (field("Seccomp:"), field("Seccomp_filters:"))
}

/// What `/proc/1/status` (the sliver's init) says from inside the sliver.
fn init_status_inside(f: &Fixture, sliver: &str) -> (String, String) {
    let out = sh(f, sliver, "cat /proc/1/status");
    assert!(out.success(), "{out:?}");
    seccomp_status(&out.stdout_text())
}

fn expected_filters(rec: &SliverRecord) -> String {
    seccomp::for_sliver(&rec.spec, rec.caps)
        .expect("compile")
        .filter_count()
        .to_string()
}

/// A python3 script printing the errno of each system call (0: it succeeded).
fn errnos(calls: &[(i64, &str)]) -> String {
    let calls: Vec<String> = calls
        .iter()
        .map(|(nr, args)| format!("e({nr}{args})"))
        .collect();
    format!(
        "python3 -c 'import ctypes\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         buf = ctypes.create_string_buffer(120)\n\
         def e(nr, *a):\n    r = libc.syscall(nr, *a)\n    return 0 if r >= 0 else ctypes.get_errno()\n\
         print(*[{}])'",
        calls.join(", ")
    )
}

#[test]
fn a_regular_slivers_init_runs_under_the_default_filter() {
    let Some(f) = Fixture::new() else { return };
    let rec = f.engine.create(spec("scinit")).expect("create");
    let (mode, filters) = init_status_inside(&f, "scinit");
    assert_eq!(mode, "2", "the init is in seccomp filter mode");
    assert_eq!(filters, expected_filters(&rec));
    // The same seen from the host.
    let host = fs::read_to_string(format!("/proc/{}/status", rec.init_pid)).unwrap();
    assert_eq!(seccomp_status(&host), (mode, filters));
}

#[test]
fn a_grant_of_nested_user_namespaces_reaches_the_filter() {
    let Some(f) = Fixture::new() else { return };
    let mut s = spec("scnest");
    s.capabilities = vec![NESTED_USERNS.into()];
    let rec = f.engine.create(s).expect("create");
    let (mode, filters) = init_status_inside(&f, "scnest");
    assert_eq!(mode, "2");
    // No clone3 program: one filter fewer than the default.
    assert_eq!(filters, expected_filters(&rec));
    let strict = seccomp::for_sliver(&spec("other"), rec.caps).unwrap();
    assert_eq!(filters.parse::<usize>().unwrap() + 1, strict.filter_count());
    let out = sh(&f, "scnest", "unshare -U true && unshare -U -r id -u");
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout_text(), "0\n");
}

/// EXEC-SIDE: nested user namespaces lift nothing else for commands run in the sliver.
#[test]
fn a_grant_of_nested_user_namespaces_lifts_nothing_else() {
    let Some(f) = Fixture::new() else { return };
    let mut s = spec("scnest2");
    s.capabilities = vec![NESTED_USERNS.into()];
    f.engine.create(s).expect("create");
    let out = sh(
        &f,
        "scnest2",
        &errnos(&[(libc::SYS_io_uring_setup, ", 1, buf")]),
    );
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout_text().trim(), libc::EPERM.to_string());
}

/// The attack probes of a regular sliver: the script, and what it prints under the filter.
fn refused_probe() -> (String, String) {
    let script = errnos(&[
        (libc::SYS_io_uring_setup, ", 1, buf"),
        (libc::SYS_clone3, ", None, 0"),
        (libc::SYS_bpf, ", 0, buf, 0"),
        (libc::SYS_perf_event_open, ", buf, 0, -1, -1, 0"),
        (libc::SYS_keyctl, ", 0, 0"),
        (libc::SYS_userfaultfd, ", 0"),
    ]);
    let (eperm, enosys) = (libc::EPERM, libc::ENOSYS);
    // io_uring_setup, clone3, bpf, perf_event_open, keyctl, userfaultfd
    let want = format!("{eperm} {enosys} {eperm} {eperm} {eperm} {eperm}\n");
    (script, want)
}

/// What a service needs, which the filter must leave: processes, threads (glibc falls back
/// from clone3 to clone), ptrace of its own processes.
const SERVICE_PROBE: &str = "sh -c 'echo forked' && python3 -c 'import threading; \
    t = threading.Thread(target=print, args=(\"thread\",)); t.start(); t.join()' && \
    python3 -c 'import ctypes; print(ctypes.CDLL(None).ptrace(0, 0, 0, 0))'";
const SERVICE_PROBE_OUTPUT: &str = "forked\nthread\n0\n";

/// The probes of the EXEC-SIDE tests, run on the host under the default filter installed as
/// the exec path installs it (`install_raw` after `no_new_privs`, before exec): this checks the
/// filter and the probes themselves, whatever the state of the exec path.
#[test]
fn the_probes_hold_under_the_filter_on_the_host() {
    use std::os::unix::process::CommandExt;
    let caps = node::sliver::caps::sliver_mask(SliverKind::Regular, &[]).unwrap();
    let regular = seccomp::SeccompPlan::default().compile(caps).unwrap();
    let run_under = |filter: &seccomp::CompiledFilter, script: &str| {
        let filter = filter.clone();
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", script])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        let install = move || {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            seccomp::install_raw(&filter).map_err(std::io::Error::from_raw_os_error)
        };
        // SAFETY: the closure makes raw system calls only, on a filter compiled before the
        // fork.
        unsafe { cmd.pre_exec(install) };
        cmd.output().expect("run the probe")
    };
    let run = |script: &str| run_under(&regular, script);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let out = run("grep '^Seccomp:' /proc/self/status");
    assert_eq!(text(&out.stdout).split_whitespace().nth(1), Some("2"));
    let out = run("unshare -U true");
    assert!(!out.status.success(), "a user namespace was made: {out:?}");
    assert!(
        text(&out.stderr).contains("Operation not permitted"),
        "{out:?}"
    );
    let (script, want) = refused_probe();
    let out = run(&script);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), want);
    let out = run(SERVICE_PROBE);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), SERVICE_PROBE_OUTPUT);
    let (script, want) = admin_probe();
    let caps =
        node::sliver::caps::sliver_mask(SliverKind::Admin, &["CAP_SYS_ADMIN".into()]).unwrap();
    let admin = seccomp::compile(&Default::default(), SliverKind::Admin, caps).unwrap();
    let out = run_under(&admin, &script);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), want);
}

/// The probe of an admin sliver holding CAP_SYS_ADMIN: io_uring is its, modules are not
/// (they need CAP_SYS_MODULE).
fn admin_probe() -> (String, String) {
    let script = errnos(&[
        (libc::SYS_io_uring_setup, ", 1, buf"),
        (libc::SYS_init_module, ", None, 0, None"),
    ]);
    (script, format!("0 {}\n", libc::EPERM))
}

/// EXEC-SIDE: a command run in a regular sliver is under the sliver's filter.
#[test]
fn commands_run_in_a_regular_sliver_are_filtered() {
    let Some(f) = Fixture::new() else { return };
    let rec = f.engine.create(spec("scexec")).expect("create");
    let out = sh(&f, "scexec", "cat /proc/self/status");
    assert!(out.success(), "{out:?}");
    assert_eq!(
        seccomp_status(&out.stdout_text()),
        ("2".to_string(), expected_filters(&rec)),
        "the command runs under exactly the sliver's filter"
    );
    let out = sh(&f, "scexec", "unshare -U true");
    assert!(!out.success(), "a nested user namespace was made: {out:?}");
    assert!(
        out.stderr_text().contains("Operation not permitted"),
        "{out:?}"
    );
    let (script, want) = refused_probe();
    let out = sh(&f, "scexec", &script);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout_text(), want);
    let out = sh(&f, "scexec", SERVICE_PROBE);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout_text(), SERVICE_PROBE_OUTPUT);
}

/// EXEC-SIDE: an admin sliver with CAP_SYS_ADMIN gets what that names, not more.
#[test]
fn an_admin_sliver_gets_what_its_capabilities_name() {
    let Some(f) = Fixture::new() else { return };
    let mut s = spec("scadmin");
    s.kind = SliverKind::Admin;
    s.capabilities = vec!["CAP_SYS_ADMIN".into()];
    let rec = f.engine.create(s).expect("create");
    let (mode, filters) = init_status_inside(&f, "scadmin");
    assert_eq!((mode.as_str(), filters), ("2", expected_filters(&rec)));
    let (script, want) = admin_probe();
    let out = sh(&f, "scadmin", &script);
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout_text(), want);
    let out = sh(&f, "scadmin", "unshare -U true");
    assert!(
        !out.success(),
        "nested user namespaces are not named: {out:?}"
    );
}

#[test]
fn memory_limits_include_swap() {
    let Some(f) = Fixture::new() else { return };
    f.engine.create(spec("scswap")).expect("create");
    let want = (128u64 << 20).to_string();
    let mut checked = false;
    for dir in f.cgroup_dirs("scswap") {
        let read = |name: &str| {
            fs::read_to_string(dir.join(name))
                .ok()
                .map(|s| s.trim().to_string())
        };
        if let Some(memsw) = read("memory.memsw.limit_in_bytes") {
            assert_eq!(read("memory.limit_in_bytes"), Some(want.clone()));
            assert_eq!(memsw, want, "memory + swap is capped at the memory limit");
            checked = true;
        }
        if let Some(swap) = read("memory.swap.max") {
            assert_eq!(swap, "0");
            checked = true;
        }
    }
    if !checked {
        eprintln!("this host accounts no swap: nothing to check");
    }
}
