//! The resource monitor: what the host has and uses, read from `/proc` (the path is injected),
//! and the node's signed ad built from it and the ledger.

use std::path::{Path, PathBuf};

use capability_schema::ad::{MeasuredUse, ShareState};
use capability_schema::{Delegation, MembershipCert, ResourceAd, Resources, SecretKey, Signed};

use crate::admission::{Capacity, Commitments};

/// Reads host figures under a `/proc` root.
#[derive(Debug, Clone)]
pub struct HostProbe {
    proc_root: PathBuf,
}

impl Default for HostProbe {
    fn default() -> Self {
        HostProbe {
            proc_root: "/proc".into(),
        }
    }
}

/// One sample of the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostSample {
    /// CPUs online, in thousandths.
    pub cpu_millis: u64,
    /// One-minute load average × 1000.
    pub load_milli: u64,
    /// Total memory, bytes.
    pub memory_total: u64,
    /// Memory in use (total − available), bytes.
    pub memory_used: u64,
}

impl HostProbe {
    /// A probe reading `proc_root` (tests pass a fake tree).
    pub fn new(proc_root: impl Into<PathBuf>) -> Self {
        HostProbe {
            proc_root: proc_root.into(),
        }
    }

    /// Samples the host; missing files read as zero.
    pub fn sample(&self) -> HostSample {
        let read =
            |name: &str| std::fs::read_to_string(self.proc_root.join(name)).unwrap_or_default();
        let load_milli = read("loadavg")
            .split_whitespace()
            .next()
            .and_then(|l| l.parse::<f64>().ok())
            .map_or(0, |l| (l * 1000.0) as u64);
        let meminfo = read("meminfo");
        let field = |name: &str| {
            meminfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        };
        let memory_total = field("MemTotal:");
        let available = field("MemAvailable:");
        let cpus = read("stat")
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count() as u64;
        HostSample {
            cpu_millis: cpus * 1000,
            load_milli,
            memory_total,
            memory_used: memory_total.saturating_sub(available),
        }
    }
}

/// Free bytes of the filesystem holding `path`.
pub fn disk_free(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path).map_or(0, |s| s.blocks_available() * s.fragment_size())
}

/// The capacity measured from the host, minus `reserve`. Egress defaults to 1 Gbit/s.
pub fn measured_capacity(probe: &HostProbe, state_dir: &Path, reserve: &Resources) -> Resources {
    let sample = probe.sample();
    Resources {
        cpu_millis: sample.cpu_millis,
        memory_bytes: sample.memory_total,
        disk_bytes: disk_free(state_dir),
        egress_kbps: 1_000_000,
    }
    .saturating_sub(reserve)
}

/// Everything an ad says that does not change between beats.
#[derive(Debug, Clone)]
pub struct AdTemplate {
    /// The federation.
    pub federation: String,
    /// The node's membership certificate.
    pub membership: Signed<MembershipCert>,
    /// Its body.
    pub cert: MembershipCert,
    /// Delegations, as the node signed them.
    pub delegations: Vec<Signed<Delegation>>,
    /// Addresses to announce.
    pub addresses: Vec<String>,
    /// Seconds an ad stays valid.
    pub ttl_secs: u64,
}

/// Builds and signs an ad.
pub fn build_ad(
    key: &SecretKey,
    template: &AdTemplate,
    capacity: &Capacity,
    committed: &Commitments,
    measured: MeasuredUse,
    seq: u64,
    now: u64,
) -> Signed<ResourceAd> {
    let shares = capacity
        .shares
        .iter()
        .map(|(agent, share)| ShareState {
            agent: *agent,
            share: share.limit,
            committed: committed.of(agent),
            free: capacity.free_for(committed, agent),
        })
        .collect();
    let ad = ResourceAd {
        node: key.public(),
        federation: template.federation.clone(),
        site: template.cert.site.clone(),
        name: template.cert.name.clone(),
        addresses: template.addresses.clone(),
        capacity: capacity.total,
        committed: committed.total,
        shares,
        delegations: template.delegations.clone(),
        measured,
        membership: template.membership.clone(),
        seq,
        issued_at: now,
        ttl_secs: template.ttl_secs,
    };
    Signed::sign(key, &ad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_a_fake_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("loadavg"), "0.50 0.40 0.30 1/100 123\n").unwrap();
        std::fs::write(
            dir.path().join("meminfo"),
            "MemTotal:  1000 kB\nMemFree: 10 kB\nMemAvailable:  400 kB\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("stat"),
            "cpu  1 2 3\ncpu0 1 2 3\ncpu1 1 2 3\nintr 0\n",
        )
        .unwrap();
        let s = HostProbe::new(dir.path()).sample();
        assert_eq!(
            s,
            HostSample {
                cpu_millis: 2000,
                load_milli: 500,
                memory_total: 1_024_000,
                memory_used: 614_400
            }
        );
        let empty = HostProbe::new(dir.path().join("missing")).sample();
        assert_eq!(empty, HostSample::default());
    }
}
