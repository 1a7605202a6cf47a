//! Applies the node's firewall scripts ([`crate::sliver::firewall`]) with nftables' own
//! front end, `nft -f -`: each script is one atomic transaction in the kernel, and the rules
//! stay readable as the text an operator would write (`nft list table inet <name>` shows
//! them back). It runs at start, at wipe and when the reconciler finds the table gone, never
//! on a sliver's create or destroy.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::super::firewall::Firewall;
use super::super::host::HostError;

/// Where Debian's `nftables` package puts the front end; `PATH` is searched otherwise.
const NFT_PATHS: [&str; 2] = ["/usr/sbin/nft", "/sbin/nft"];

fn nft() -> Command {
    let program = NFT_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .copied()
        .unwrap_or("nft");
    Command::new(program)
}

fn not_installed(e: std::io::Error) -> HostError {
    HostError::Firewall(format!(
        "cannot run nft ({e}): install the nftables package (`apt-get install nftables`; \
         scripts/prereqs.sh does it)"
    ))
}

/// Runs `script` as one `nft -f -` transaction.
pub(super) fn apply(script: &str) -> Result<(), HostError> {
    let mut child = nft()
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(not_installed)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| HostError::Firewall(format!("feeding nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| HostError::Firewall(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HostError::Firewall(format!(
            "nft refused the node's table: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether another node's table (`planetmesh_*`, any but this one's) is in this namespace.
pub(super) fn other_node_tables(firewall: &Firewall) -> Result<bool, HostError> {
    let out = nft()
        .args(["list", "tables"])
        .stdin(Stdio::null())
        .output()
        .map_err(not_installed)?;
    if !out.status.success() {
        return Err(HostError::Firewall(format!(
            "listing tables: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().any(|line| {
        line.strip_prefix("table inet ")
            .is_some_and(|t| t.starts_with("planetmesh_") && t != firewall.table)
    }))
}

/// Whether the node's table exists.
pub(super) fn present(firewall: &Firewall) -> Result<bool, HostError> {
    let out = nft()
        .args(["list", "table", "inet", &firewall.table])
        .stdin(Stdio::null())
        .output()
        .map_err(not_installed)?;
    if out.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No such file or directory") {
        Ok(false)
    } else {
        Err(HostError::Firewall(format!(
            "listing table {}: {}",
            firewall.table,
            stderr.trim()
        )))
    }
}
