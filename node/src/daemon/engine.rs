//! The real isolation engine behind the node service: [`SliverBackend`] for
//! [`Slivers`] ([`EngineBackend`]). Lease fields become a [`SliverSpec`], with what the sliver
//! is told about where it is (its [`SliverAbout`]: the lease's slice, node and federation, and
//! the node's site); engine errors become [`BackendError`]s (the caller's fault, a sliver
//! gone, or the host's), and an exec past its deadline becomes output that says it timed out.

use std::sync::Arc;
use std::time::Duration;

use capability_schema::protocol::ExecOutput;
use capability_schema::{Lease, PublicEndpoint, SliceKind};

use super::service::{BackendError, Placement, SliverBackend};
use crate::sliver::host::{ExecCommand, Host, HostError};
use crate::sliver::spec::{SliverAbout, SliverId, SliverKind, SliverSpec};
use crate::sliver::{SliverError, Slivers};

/// Most bytes of each of stdout and stderr an `Exec` returns.
pub const EXEC_OUTPUT_LIMIT: usize = 1 << 20;

fn id(sliver_id: &str) -> Result<SliverId, BackendError> {
    SliverId::new(sliver_id).map_err(|e| BackendError::Invalid(e.to_string()))
}

/// Whose fault an engine error is.
fn backend_error(e: SliverError) -> BackendError {
    match e {
        SliverError::Spec(_)
        | SliverError::InvalidKey { .. }
        | SliverError::NotTheSliver { .. } => BackendError::Invalid(e.to_string()),
        SliverError::NotFound(id) => BackendError::NoSliver(id.to_string()),
        SliverError::Alloc(crate::sliver::alloc::AllocError::Full(_))
        | SliverError::PortsFull { .. } => BackendError::Full(e.to_string()),
        other => BackendError::Host(other.to_string()),
    }
}

/// The spec of the sliver that backs `lease` on a node of `site`.
pub fn spec_for(sliver_id: &str, lease: &Lease, site: &str) -> Result<SliverSpec, BackendError> {
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
    // Network grants (paper §3.2, §3.3): raw sockets in the sliver's own network namespace
    // only, and a hard egress cap at the granted rate instead of a share of the excess.
    if lease.net.raw && !spec.capabilities.iter().any(|c| c == "CAP_NET_RAW") {
        spec.capabilities.push("CAP_NET_RAW".into());
    }
    if lease.net.egress_cap {
        spec.egress_ceil_kbps = Some(lease.resources.egress_kbps);
    }
    spec.about = Some(about_for(lease, site));
    Ok(spec)
}

/// What the sliver of `lease` on a node of `site` is told; the engine adds its public face.
fn about_for(lease: &Lease, site: &str) -> SliverAbout {
    SliverAbout {
        slice: lease.slice.clone(),
        node: lease.node.to_string(),
        federation: lease.federation.clone(),
        site: site.to_owned(),
        public_address: None,
        ports: Vec::new(),
    }
}

/// The engine as the node service's backend, with what no lease says but every sliver is
/// told: the node's site (from its membership certificate).
#[derive(Debug)]
pub struct EngineBackend<H: Host> {
    slivers: Arc<Slivers<H>>,
    site: String,
}

impl<H: Host> EngineBackend<H> {
    /// The backend over `slivers` of a node of `site`.
    pub fn new(slivers: Arc<Slivers<H>>, site: impl Into<String>) -> Self {
        EngineBackend {
            slivers,
            site: site.into(),
        }
    }
}

impl<H: Host + 'static> SliverBackend for EngineBackend<H> {
    fn create(&self, sliver_id: &str, lease: &Lease) -> Result<Placement, BackendError> {
        let spec = spec_for(sliver_id, lease, &self.site)?;
        let record = self.slivers.create(spec).map_err(backend_error)?;
        let public = self
            .slivers
            .config()
            .public_endpoint(record.slot.slot, record.spec.resources.ports)
            .map(|(address, ports)| PublicEndpoint {
                address: address.to_string(),
                ports,
            });
        Ok(Placement {
            address: Some(record.net.sliver_addr.to_string()),
            public,
        })
    }

    fn destroy(&self, sliver_id: &str) -> Result<(), BackendError> {
        let id = id(sliver_id)?;
        if self.slivers.get(&id).is_none() {
            return Ok(());
        }
        self.slivers.destroy(&id, false).map_err(backend_error)
    }

    fn live(&self) -> Vec<String> {
        self.slivers
            .list()
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
    ) -> Result<ExecOutput, BackendError> {
        let mut cmd = ExecCommand::new(argv.iter().cloned());
        cmd.stdin = stdin.to_vec();
        cmd.timeout = Duration::from_millis(timeout_ms);
        cmd.output_limit = EXEC_OUTPUT_LIMIT;
        let out = match self.slivers.exec(&id(sliver_id)?, &cmd) {
            Ok(out) => out,
            // Killed at its deadline with its whole process group: the holder's program ran
            // too long, which is an answer, not a failure of the node.
            Err(SliverError::Host { source, .. }) if matches!(*source, HostError::Timeout(_)) => {
                return Ok(ExecOutput {
                    exit_code: 128 + libc::SIGKILL,
                    stdout: Vec::new(),
                    stderr: format!("killed after {timeout_ms} ms\n").into_bytes(),
                    truncated: false,
                    timed_out: true,
                });
            }
            Err(e) => return Err(backend_error(e)),
        };
        Ok(ExecOutput {
            exit_code: out.code.unwrap_or_else(|| 128 + out.signal.unwrap_or(0)),
            stdout: out.stdout,
            stderr: out.stderr,
            truncated: out.truncated,
            timed_out: false,
        })
    }

    fn list_keys(&self, sliver_id: &str) -> Result<Vec<String>, BackendError> {
        self.slivers
            .list_keys(&id(sliver_id)?)
            .map_err(backend_error)
    }

    fn add_key(&self, sliver_id: &str, key: &str) -> Result<(), BackendError> {
        self.slivers
            .add_key(&id(sliver_id)?, key)
            .map_err(backend_error)
    }

    fn remove_key(&self, sliver_id: &str, key: &str) -> Result<(), BackendError> {
        self.slivers
            .remove_key(&id(sliver_id)?, key)
            .map(|_| ())
            .map_err(backend_error)
    }

    fn wipe(&self) -> Result<(), BackendError> {
        self.slivers.destroy_all().map_err(backend_error)
    }

    fn connect_inside(
        &self,
        sliver_id: &str,
        host: &str,
        port: u16,
    ) -> Result<std::net::TcpStream, BackendError> {
        self.slivers
            .connect_inside(&id(sliver_id)?, host, port)
            .map_err(backend_error)
    }

    fn start_session(
        &self,
        sliver_id: &str,
        argv: &[String],
        env: &[(String, String)],
        tty: Option<std::os::fd::OwnedFd>,
    ) -> Result<crate::sliver::host::Spawned, BackendError> {
        let mut cmd = ExecCommand::new(argv.iter().cloned());
        cmd.env = env.to_vec();
        let id = id(sliver_id)?;
        match tty {
            Some(tty) => self.slivers.spawn_tty(&id, &cmd, tty),
            None => self.slivers.spawn(&id, &cmd),
        }
        .map_err(backend_error)
    }

    fn maintain(&self) -> Result<Vec<String>, BackendError> {
        let restored = self.slivers.ensure_firewall().map_err(backend_error)?;
        Ok(if restored {
            vec!["firewall table".to_owned()]
        } else {
            Vec::new()
        })
    }

    fn close(&self) -> Result<(), BackendError> {
        self.slivers.close().map_err(backend_error)
    }
}
