//! The resource monitor: what the host has and uses, read from `/proc` (the path is injected),
//! what each sliver uses (from the sliver engine, through [`SliverMonitor`]), the disk
//! watchdog's verdicts, and the node's signed ad built from them and the ledger.
//!
//! Per sliver, the ad carries CPU time and memory (its cgroup), and the bytes its egress
//! bucket sent (the HTB class counters): see [`crate::sliver::Slivers::usage`]. Disk is
//! checked by the watchdog on its own period (walking an upper dir costs more than reading a
//! counter), which freezes a sliver over its grant ([`crate::sliver::Slivers::check_disk`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use capability_schema::ad::{MeasuredUse, ShareState, SliverUsage};
use capability_schema::{Delegation, MembershipCert, ResourceAd, Resources, SecretKey, Signed};

use crate::admission::{Capacity, Commitments};
use crate::sliver::{DiskReport, Host, Slivers, UsageSample};

/// What the monitor asks of the sliver engine. `None` in the daemon under `isolation =
/// "memory"`, where there is nothing to measure.
pub trait SliverMonitor: Send + Sync + Debug {
    /// Every live sliver's use (blocking: reads cgroup files and a netlink dump).
    fn usage(&self) -> Vec<UsageSample>;
    /// One disk watchdog pass (blocking: walks upper dirs; may freeze or thaw slivers).
    fn check_disk(&self) -> Vec<DiskReport>;
}

impl<H: Host + Debug + 'static> SliverMonitor for Slivers<H> {
    fn usage(&self) -> Vec<UsageSample> {
        Slivers::usage(self)
    }

    fn check_disk(&self) -> Vec<DiskReport> {
        Slivers::check_disk(self)
    }
}

/// Bytes of an ad the per-sliver figures may take (well under the overlay's ad cap, which
/// the rest of the ad shares): about a thousand slivers with short slice names.
pub const AD_SLIVERS_BUDGET: usize = 128 * 1024;

/// The ad's per-sliver figures, heaviest CPU users first, as many as fit in
/// [`AD_SLIVERS_BUDGET`]. `slices` maps sliver ids to slice names (from the ledger); a sliver
/// missing there is named by its id. Figures the host could not read are 0.
pub fn sliver_usage(
    samples: &[UsageSample],
    slices: &BTreeMap<String, String>,
) -> Vec<SliverUsage> {
    let mut all: Vec<SliverUsage> = samples
        .iter()
        .map(|s| SliverUsage {
            slice: slices
                .get(s.id.as_str())
                .cloned()
                .unwrap_or_else(|| s.id.to_string()),
            cpu_time_ms: s.cpu_ns.unwrap_or(0) / 1_000_000,
            memory_bytes: s.memory_bytes.unwrap_or(0),
            egress_bytes: s.egress_bytes.unwrap_or(0),
            disk_bytes: s.disk.as_ref().and_then(|d| d.used),
            condition: s.disk.as_ref().and_then(DiskReport::condition),
        })
        .collect();
    all.sort_by(|a, b| {
        b.cpu_time_ms
            .cmp(&a.cpu_time_ms)
            .then_with(|| a.slice.cmp(&b.slice))
    });
    // CBOR: the map, its four keys and values take at most 80 bytes besides the slice name;
    // the disk figure 24 more, the condition 16 besides its text.
    let mut spent = 0;
    let keep = all
        .iter()
        .take_while(|u| {
            spent += u.slice.len()
                + 80
                + if u.disk_bytes.is_some() { 24 } else { 0 }
                + u.condition.as_ref().map_or(0, |c| c.len() + 16);
            spent <= AD_SLIVERS_BUDGET
        })
        .count();
    if keep < all.len() {
        tracing::debug!(
            kept = keep,
            slivers = all.len(),
            "ad lists the heaviest slivers only"
        );
        all.truncate(keep);
    }
    all
}

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
        ports: 0,
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
    /// Re-read the overlay's listen addresses before each ad (no `announce` configured): a
    /// relay reservation made or lost (a node behind NAT) adds or removes a `/p2p-circuit`
    /// address.
    pub follow_listen: bool,
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
    use crate::sliver::host::RecordingHost;
    use crate::sliver::{CgroupUsage, NodeConfig, SliverId, SliverSpec};

    #[test]
    fn slivers_use_reaches_the_ad_figures_through_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig::new(dir.path(), "/nonexistent/sliver-init");
        let (engine, _) = Slivers::open(RecordingHost::new(), config).unwrap();
        let resources = Resources {
            cpu_millis: 500,
            memory_bytes: 64 << 20,
            disk_bytes: 1 << 20,
            egress_kbps: 1000,
            ports: 0,
        };
        let a = engine
            .create(SliverSpec::regular(
                SliverId::new("alpha").unwrap(),
                resources,
            ))
            .unwrap();
        engine
            .create(SliverSpec::regular(
                SliverId::new("beta").unwrap(),
                resources,
            ))
            .unwrap();
        engine.host().set_usage(
            &a.cgroup,
            CgroupUsage {
                cpu_ns: Some(2_500_000_000),
                memory_bytes: Some(7 << 20),
            },
        );
        engine.host().set_egress(a.shape.class_minor, 123_456);
        let monitor: &dyn SliverMonitor = &engine;
        let samples = monitor.usage();
        let slices = BTreeMap::from([("alpha".to_string(), "princeton_alpha".to_string())]);
        let ad = sliver_usage(&samples, &slices);
        assert_eq!(
            ad,
            vec![
                SliverUsage {
                    slice: "princeton_alpha".into(),
                    cpu_time_ms: 2500,
                    memory_bytes: 7 << 20,
                    egress_bytes: 123_456,
                    disk_bytes: None,
                    condition: None,
                },
                SliverUsage {
                    slice: "beta".into(),
                    cpu_time_ms: 0,
                    memory_bytes: 0,
                    egress_bytes: 0,
                    disk_bytes: None,
                    condition: None,
                },
            ]
        );
        // However many slivers, the figures fit the ad's budget, heaviest first.
        let many: Vec<UsageSample> = (0..5000u64)
            .map(|i| UsageSample {
                id: SliverId::new(format!("s{i:04}")).unwrap(),
                cpu_ns: Some(i * 1_000_000),
                memory_bytes: Some(u64::MAX),
                egress_bytes: Some(u64::MAX),
                disk: None,
            })
            .collect();
        let figures = sliver_usage(&many, &BTreeMap::new());
        assert!(
            figures.len() > 1000 && figures.len() < 5000,
            "{}",
            figures.len()
        );
        assert_eq!(figures[0].slice, "s4999");
        let bytes = capability_schema::codec::encode(&figures).len();
        assert!(bytes <= AD_SLIVERS_BUDGET, "{bytes} bytes");
        // The disk watchdog's verdict rides along with the next sample.
        engine.host().set_disk("alpha", 3 << 20);
        monitor.check_disk();
        let alpha = monitor.usage().remove(0);
        let disk = alpha.disk.unwrap();
        assert!(disk.over && disk.frozen, "{disk:?}");
        assert_eq!(disk.used, Some(3 << 20));
        // … and reaches the ad, so a holder's `Status` shows it.
        let figures = sliver_usage(&monitor.usage(), &slices);
        let alpha = figures
            .iter()
            .find(|u| u.slice == "princeton_alpha")
            .unwrap();
        assert_eq!(alpha.disk_bytes, Some(3 << 20));
        let condition = alpha.condition.as_deref().unwrap();
        assert!(
            condition.starts_with("over disk limit") && condition.contains("frozen"),
            "{condition}"
        );
    }

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
