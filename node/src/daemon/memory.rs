//! Slivers kept in memory, without isolation: for the service's tests and for the testnet's
//! in-process simulation, where thousands of nodes run in one process. `exec` runs nothing; it
//! answers with the arguments echoed, so callers can see where a command went.

use std::collections::BTreeMap;
use std::sync::Mutex;

use capability_schema::Lease;
use capability_schema::protocol::ExecOutput;

use super::service::SliverBackend;

/// In-memory slivers.
#[derive(Debug, Default)]
pub struct InMemorySlivers {
    slivers: Mutex<BTreeMap<String, Vec<String>>>,
    fail_next_create: Mutex<bool>,
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
        self.lock().insert(id.to_owned(), Vec::new());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vec<String>>> {
        self.slivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl SliverBackend for InMemorySlivers {
    fn create(&self, sliver_id: &str, _lease: &Lease) -> Result<Option<String>, String> {
        let mut fail = self
            .fail_next_create
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if std::mem::take(&mut *fail) {
            return Err("injected failure".into());
        }
        let mut slivers = self.lock();
        if slivers.contains_key(sliver_id) {
            return Err(format!("sliver {sliver_id} exists"));
        }
        slivers.insert(sliver_id.to_owned(), Vec::new());
        Ok(Some(format!("10.199.0.{}", slivers.len() + 1)))
    }

    fn destroy(&self, sliver_id: &str) -> Result<(), String> {
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
    ) -> Result<ExecOutput, String> {
        if !self.lock().contains_key(sliver_id) {
            return Err(format!("no sliver {sliver_id}"));
        }
        Ok(ExecOutput {
            exit_code: 0,
            stdout: format!("{sliver_id}: {}\n", argv.join(" ")).into_bytes(),
            stderr: Vec::new(),
            truncated: false,
            timed_out: false,
        })
    }

    fn list_keys(&self, sliver_id: &str) -> Result<Vec<String>, String> {
        self.lock()
            .get(sliver_id)
            .cloned()
            .ok_or_else(|| format!("no sliver {sliver_id}"))
    }

    fn add_key(&self, sliver_id: &str, key: &str) -> Result<(), String> {
        let mut slivers = self.lock();
        let keys = slivers
            .get_mut(sliver_id)
            .ok_or_else(|| format!("no sliver {sliver_id}"))?;
        if !keys.iter().any(|k| k == key) {
            keys.push(key.to_owned());
        }
        Ok(())
    }

    fn remove_key(&self, sliver_id: &str, key: &str) -> Result<(), String> {
        let mut slivers = self.lock();
        let keys = slivers
            .get_mut(sliver_id)
            .ok_or_else(|| format!("no sliver {sliver_id}"))?;
        keys.retain(|k| k != key && !k.ends_with(&format!(" {key}")));
        Ok(())
    }

    fn wipe(&self) -> Result<(), String> {
        self.lock().clear();
        Ok(())
    }
}
