//! The real isolation engine behind the node service: [`SliverBackend`] for
//! [`Slivers`](crate::sliver::Slivers). Lease fields become a [`SliverSpec`]; engine errors
//! become sentences for the caller.

use std::time::Duration;

use capability_schema::protocol::ExecOutput;
use capability_schema::{Lease, SliceKind};

use super::service::SliverBackend;
use crate::sliver::Slivers;
use crate::sliver::host::{ExecCommand, Host};
use crate::sliver::spec::{SliverId, SliverKind, SliverSpec};

/// Most bytes of each of stdout and stderr an `Exec` returns.
pub const EXEC_OUTPUT_LIMIT: usize = 1 << 20;

fn id(sliver_id: &str) -> Result<SliverId, String> {
    SliverId::new(sliver_id).map_err(|e| e.to_string())
}

/// The spec of the sliver that backs `lease`.
pub fn spec_for(sliver_id: &str, lease: &Lease) -> Result<SliverSpec, String> {
    let mut spec = SliverSpec::regular(id(sliver_id)?, lease.resources);
    if let SliceKind::Admin {
        capabilities,
        host_pid_view,
    } = &lease.kind
    {
        spec.kind = SliverKind::Admin;
        spec.capabilities = capabilities.clone();
        spec.host_pid_view = *host_pid_view;
    }
    Ok(spec)
}

impl<H: Host + 'static> SliverBackend for Slivers<H> {
    fn create(&self, sliver_id: &str, lease: &Lease) -> Result<Option<String>, String> {
        let record =
            Slivers::create(self, spec_for(sliver_id, lease)?).map_err(|e| e.to_string())?;
        Ok(Some(record.net.sliver_addr.to_string()))
    }

    fn destroy(&self, sliver_id: &str) -> Result<(), String> {
        let id = id(sliver_id)?;
        if self.get(&id).is_none() {
            return Ok(());
        }
        Slivers::destroy(self, &id, false).map_err(|e| e.to_string())
    }

    fn live(&self) -> Vec<String> {
        self.list()
            .into_iter()
            .map(|r| r.spec.id.to_string())
            .collect()
    }

    fn exec(
        &self,
        sliver_id: &str,
        argv: &[String],
        stdin: &[u8],
        timeout_ms: u64,
    ) -> Result<ExecOutput, String> {
        let mut cmd = ExecCommand::new(argv.iter().cloned());
        cmd.stdin = stdin.to_vec();
        cmd.timeout = Duration::from_millis(timeout_ms);
        cmd.output_limit = EXEC_OUTPUT_LIMIT;
        let out = Slivers::exec(self, &id(sliver_id)?, &cmd).map_err(|e| e.to_string())?;
        let timed_out = out.signal == Some(libc::SIGKILL) && out.code.is_none();
        Ok(ExecOutput {
            exit_code: out.code.unwrap_or_else(|| 128 + out.signal.unwrap_or(0)),
            stdout: out.stdout,
            stderr: out.stderr,
            truncated: out.truncated,
            timed_out,
        })
    }

    fn list_keys(&self, sliver_id: &str) -> Result<Vec<String>, String> {
        Slivers::list_keys(self, &id(sliver_id)?).map_err(|e| e.to_string())
    }

    fn add_key(&self, sliver_id: &str, key: &str) -> Result<(), String> {
        Slivers::add_key(self, &id(sliver_id)?, key).map_err(|e| e.to_string())
    }

    fn remove_key(&self, sliver_id: &str, key: &str) -> Result<(), String> {
        Slivers::remove_key(self, &id(sliver_id)?, key)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn wipe(&self) -> Result<(), String> {
        self.destroy_all().map_err(|e| e.to_string())
    }
}
