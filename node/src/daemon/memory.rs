//! Slivers kept in memory, without isolation: for the service's tests and for the testnet's
//! in-process simulation, where thousands of nodes run in one process.
//!
//! Memory isolation runs nothing, by design, and says so. What it answers instead:
//! - `exec` answers the exit code [`ExecOutput::NOT_RUN`] (no process's code; `slicectl` exits
//!   with its `not_run` class) and [`NOT_RUN_MESSAGE`] on stderr, nothing on stdout;
//! - `Spawn` (the service runs `/bin/sh -c '"$@" >>SPAWN_LOG … & echo $!' sh ARGV…` through
//!   `exec`) answers a synthetic pid: per sliver, 2 for the first spawn, then 3, 4, … (as in a
//!   pid namespace whose init is 1); no process exists. The sliver's log gets the line
//!   `memory isolation runs nothing: spawned <argv>`;
//! - `Logs` (the service runs `tail -c N SPAWN_LOG` through `exec`) answers the last N bytes of
//!   that log, and `LogsFrom` (`wc -c …; tail -c +N … | head -c M`) its size and M bytes from
//!   offset N-1.
//!
//! So the protocol path of every call is exercised; what a program really does in a sliver is
//! tested on real slivers (`testnet/scenarios/two-federations.toml`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use capability_schema::Lease;
use capability_schema::protocol::ExecOutput;

use super::service::{BackendError, Placement, SPAWN_LOG, SliverBackend};

/// What `exec` answers on stderr: nothing ran.
pub const NOT_RUN_MESSAGE: &str = "nothing ran: this node has no isolation (isolation = \"memory\"); \
                                   the command was not executed\n";

/// The first synthetic pid a sliver's spawn answers (1 would be its init).
pub const FIRST_SYNTHETIC_PID: u32 = 2;

/// The line a spawn adds to the sliver's in-memory log (followed by the argv).
pub const SPAWN_LOG_PREFIX: &str = "memory isolation runs nothing: spawned ";

/// One in-memory sliver.
#[derive(Debug, Clone)]
struct MemorySliver {
    keys: Vec<String>,
    /// What `Logs` answers: a line per spawn.
    log: Vec<u8>,
    /// The synthetic pid the next spawn answers.
    next_pid: u32,
}

impl Default for MemorySliver {
    fn default() -> Self {
        MemorySliver {
            keys: Vec::new(),
            log: Vec::new(),
            next_pid: FIRST_SYNTHETIC_PID,
        }
    }
}

/// In-memory slivers.
#[derive(Debug, Default)]
pub struct InMemorySlivers {
    slivers: Mutex<BTreeMap<String, MemorySliver>>,
    fail_next_create: Mutex<bool>,
}

/// The program of a `Spawn`, if `argv` is the service's spawn wrapper.
fn spawned(argv: &[String]) -> Option<&[String]> {
    match argv {
        [sh, c, script, zero, rest @ ..]
            if sh == "/bin/sh"
                && c == "-c"
                && zero == "sh"
                && script.contains(SPAWN_LOG)
                && script.ends_with("& echo $!") =>
        {
            Some(rest)
        }
        _ => None,
    }
}

/// The byte count of a `Logs`, if `argv` is the service's log tail.
fn log_tail(argv: &[String]) -> Option<usize> {
    match argv {
        [sh, c, script] if sh == "/bin/sh" && c == "-c" && script.contains(SPAWN_LOG) => script
            .strip_prefix("tail -c ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok(),
        _ => None,
    }
}

/// The offset and count of a `LogsFrom`, if `argv` is the service's log read from an offset.
fn log_from(argv: &[String]) -> Option<(u64, u64)> {
    match argv {
        [sh, c, script] if sh == "/bin/sh" && c == "-c" && script.contains(SPAWN_LOG) => {
            super::lease_events::parse_log_from(script)
        }
        _ => None,
    }
}

impl InMemorySlivers {
    /// No slivers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `create` fail (to test rollback).
    pub fn fail_next_create(&self) {
        *self
            .fail_next_create
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = true;
    }

    /// Adds a sliver no lease knows (to test orphan removal).
    pub fn insert_orphan(&self, id: &str) {
        self.lock().insert(id.to_owned(), MemorySliver::default());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, MemorySliver>> {
        self.slivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SliverBackend for InMemorySlivers {
    fn create(&self, sliver_id: &str, _lease: &Lease) -> Result<Placement, BackendError> {
        let mut fail = self
            .fail_next_create
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if std::mem::take(&mut *fail) {
            return Err(BackendError::Host("injected failure".into()));
        }
        let mut slivers = self.lock();
        if slivers.contains_key(sliver_id) {
            return Err(BackendError::Host(format!("sliver {sliver_id} exists")));
        }
        slivers.insert(sliver_id.to_owned(), MemorySliver::default());
        Ok(Placement {
            address: Some(format!("10.199.0.{}", slivers.len() + 1)),
            public: None,
        })
    }

    fn destroy(&self, sliver_id: &str) -> Result<(), BackendError> {
        self.lock().remove(sliver_id);
        Ok(())
    }

    fn live(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn exec(
        &self,
        sliver_id: &str,
        argv: &[String],
        _stdin: &[u8],
        _timeout_ms: u64,
    ) -> Result<ExecOutput, BackendError> {
        let mut slivers = self.lock();
        let sliver = slivers
            .get_mut(sliver_id)
            .ok_or_else(|| BackendError::NoSliver(sliver_id.to_owned()))?;
        let answer = |stdout: Vec<u8>| ExecOutput {
            exit_code: 0,
            stdout,
            stderr: Vec::new(),
            truncated: false,
            timed_out: false,
        };
        if let Some(program) = spawned(argv) {
            let pid = sliver.next_pid;
            sliver.next_pid = sliver.next_pid.saturating_add(1);
            sliver
                .log
                .extend(format!("{SPAWN_LOG_PREFIX}{}\n", program.join(" ")).into_bytes());
            return Ok(answer(format!("{pid}\n").into_bytes()));
        }
        if let Some((offset, max)) = log_from(argv) {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(sliver.log.len());
            let to = from.saturating_add(usize::try_from(max).unwrap_or(usize::MAX));
            let mut out = format!("{}\n", sliver.log.len()).into_bytes();
            out.extend_from_slice(&sliver.log[from..to.min(sliver.log.len())]);
            return Ok(answer(out));
        }
        if let Some(n) = log_tail(argv) {
            return Ok(answer(
                sliver.log[sliver.log.len().saturating_sub(n)..].to_vec(),
            ));
        }
        Ok(ExecOutput {
            exit_code: ExecOutput::NOT_RUN,
            stdout: Vec::new(),
            stderr: NOT_RUN_MESSAGE.as_bytes().to_vec(),
            truncated: false,
            timed_out: false,
        })
    }

    fn list_keys(&self, sliver_id: &str) -> Result<Vec<String>, BackendError> {
        self.lock()
            .get(sliver_id)
            .map(|s| s.keys.clone())
            .ok_or_else(|| BackendError::NoSliver(sliver_id.to_owned()))
    }

    fn add_key(&self, sliver_id: &str, key: &str) -> Result<(), BackendError> {
        // The same check as the Linux engine's, so both answer a bad line alike.
        let key = crate::sliver::keyline::check(key)
            .map_err(|reason| BackendError::Invalid(format!("invalid SSH public key: {reason}")))?;
        let mut slivers = self.lock();
        let keys = &mut slivers
            .get_mut(sliver_id)
            .ok_or_else(|| BackendError::NoSliver(sliver_id.to_owned()))?
            .keys;
        if !keys.iter().any(|k| k == key) {
            keys.push(key.to_owned());
        }
        Ok(())
    }

    fn remove_key(&self, sliver_id: &str, key: &str) -> Result<(), BackendError> {
        let mut slivers = self.lock();
        let keys = &mut slivers
            .get_mut(sliver_id)
            .ok_or_else(|| BackendError::NoSliver(sliver_id.to_owned()))?
            .keys;
        // As the Linux engine does: a key line names the key by its blob (the comment may
        // differ). Removing by comment is slicectl's work (it lists, then removes lines).
        let blob = |line: &str| line.split_whitespace().nth(1).unwrap_or("").to_owned();
        keys.retain(|k| blob(k) != blob(key));
        Ok(())
    }

    fn wipe(&self) -> Result<(), BackendError> {
        self.lock().clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: String, rest: &[&str]) -> Vec<String> {
        let mut argv = vec!["/bin/sh".to_owned(), "-c".to_owned(), script];
        argv.extend(rest.iter().map(|a| (*a).to_owned()));
        argv
    }

    #[test]
    fn spawn_answers_synthetic_pids_and_logs_say_nothing_ran() {
        let m = InMemorySlivers::new();
        m.insert_orphan("s1");
        // The service's spawn wrapper, as `NodeService` builds it.
        let wrapper = format!("\"$@\" >>{SPAWN_LOG} 2>&1 </dev/null & echo $!");
        let out = m
            .exec(
                "s1",
                &shell(wrapper.clone(), &["sh", "sleep", "60"]),
                &[],
                1000,
            )
            .unwrap();
        assert_eq!(out.stdout, b"2\n");
        let out = m
            .exec("s1", &shell(wrapper, &["sh", "true"]), &[], 1000)
            .unwrap();
        assert_eq!(out.stdout, b"3\n");
        let tail = format!("tail -c 65536 {SPAWN_LOG} 2>/dev/null || true");
        let out = m.exec("s1", &shell(tail, &[]), &[], 1000).unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{SPAWN_LOG_PREFIX}sleep 60\n{SPAWN_LOG_PREFIX}true\n")
        );
        // A short tail is the end of the log.
        let tail = format!("tail -c 5 {SPAWN_LOG} 2>/dev/null || true");
        let out = m.exec("s1", &shell(tail, &[]), &[], 1000).unwrap();
        assert_eq!(out.stdout, b"true\n");
        // Anything else is not run, and the answer says so.
        let out = m
            .exec(
                "s1",
                &["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()],
                &[],
                1000,
            )
            .unwrap();
        assert_eq!(out.exit_code, ExecOutput::NOT_RUN);
        assert!(out.not_run());
        assert!(out.stdout.is_empty());
        assert_eq!(out.stderr, NOT_RUN_MESSAGE.as_bytes());
        assert!(m.exec("nope", &["id".to_owned()], &[], 1000).is_err());
    }

    #[test]
    fn keys_are_removed_by_their_line_as_on_linux() {
        let m = InMemorySlivers::new();
        m.insert_orphan("s1");
        m.add_key("s1", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA1 alice@a")
            .unwrap();
        m.add_key("s1", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA2 bob@b")
            .unwrap();
        // A comment alone is not a key line: nothing is removed.
        m.remove_key("s1", "alice@a").unwrap();
        assert_eq!(m.list_keys("s1").unwrap().len(), 2);
        // The same key with another comment is the same key.
        m.remove_key("s1", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA1 other")
            .unwrap();
        assert_eq!(
            m.list_keys("s1").unwrap(),
            ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA2 bob@b"]
        );
    }

    #[test]
    fn errors_say_whose_fault_they_are() {
        use capability_schema::Rejection;
        let m = InMemorySlivers::new();
        m.insert_orphan("s1");
        let bad = m.add_key("s1", "ssh-ed25519 short").unwrap_err();
        assert_eq!(
            bad,
            BackendError::Invalid("invalid SSH public key: key material is not base64".into())
        );
        assert!(matches!(Rejection::from(bad), Rejection::Malformed { .. }));
        let gone = m.list_keys("nope").unwrap_err();
        assert_eq!(gone, BackendError::NoSliver("nope".into()));
        assert!(
            matches!(Rejection::from(gone), Rejection::Internal { detail } if detail == "sliver nope is not running on this node")
        );
    }
}
