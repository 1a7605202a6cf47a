//! Seccomp filters for slivers: the kernel facilities a PlanetLab service does not need are
//! refused by system call, so a tenant cannot reach the kernel code behind them.
//!
//! Every sliver process runs under a deny-list filter (built with `seccompiler`, the filter
//! compiler firecracker uses). A refused call fails with `EPERM`; nothing is killed, so a
//! program that probes for a facility falls back as it would on a kernel without it. What is
//! refused is a set of [`Facility`]s:
//!
//! | facility | system calls | an admin sliver gets it with |
//! |---|---|---|
//! | io_uring | `io_uring_setup`, `io_uring_enter`, `io_uring_register` | CAP_SYS_ADMIN |
//! | bpf | `bpf` | CAP_SYS_ADMIN or CAP_BPF |
//! | perf | `perf_event_open` | CAP_SYS_ADMIN or CAP_PERFMON |
//! | file handles | `open_by_handle_at`, `name_to_handle_at` | CAP_SYS_ADMIN |
//! | modules | `init_module`, `finit_module`, `delete_module` | CAP_SYS_MODULE |
//! | kexec | `kexec_load`, `kexec_file_load` | CAP_SYS_BOOT |
//! | reboot | `reboot` | CAP_SYS_BOOT |
//! | keys | `add_key`, `request_key`, `keyctl` | CAP_SYS_ADMIN |
//! | userfaultfd | `userfaultfd` | CAP_SYS_ADMIN |
//! | swap | `swapon`, `swapoff` | CAP_SYS_ADMIN |
//! | accounting | `acct` | CAP_SYS_PACCT |
//! | quota | `quotactl`, `quotactl_fd` | CAP_SYS_ADMIN |
//! | dcookie | `lookup_dcookie` | CAP_SYS_ADMIN |
//! | port I/O (x86_64) | `iopl`, `ioperm` | CAP_SYS_RAWIO |
//! | obsolete | `nfsservctl`, `uselib` (x86_64) | never |
//! | nested user namespaces | `unshare`/`clone` with `CLONE_NEWUSER` (`EPERM`), `clone3` (`ENOSYS`) | [`SeccompProfile::nested_userns`], either kind |
//!
//! A regular sliver is refused every facility whatever capabilities it holds; an admin sliver
//! is refused those its capabilities do not name (table above). `clone3` passes its flags in
//! memory, which a filter cannot read, so it is refused with `ENOSYS`: libc then falls back to
//! `clone`, whose flags the filter checks (the usual practice of container runtimes). `ptrace`
//! and `setns` stay allowed: tenants debug their own processes, and joining a user namespace
//! needs a descriptor of one, which only a nested namespace of their own could give.
//!
//! Around the deny list: a system call of another ABI than the host's (32-bit `int 0x80` on
//! x86_64, for instance) kills the process (seccompiler's architecture check; a deny list by
//! number cannot cover a second numbering), and on x86_64 every x32 call (number with bit 30
//! set) fails with `ENOSYS` (a hand-written guard of six instructions), for the same reason.
//!
//! Two halves, so the code between `fork` and `exec` allocates nothing: [`compile`] (or
//! [`SeccompPlan::compile`]) builds the BPF programs, cached per distinct refused set, and
//! [`install_raw`] only makes raw `seccomp` system calls. The sliver's init installs its filter
//! before it reports ready; every process that enters the sliver installs it before it execs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use ::caps::Capability;
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

use super::caps::CapMask;
use super::spec::{SliverKind, SliverSpec};

/// What a sliver may do beyond the default filter of its kind. Part of the [`SliverSpec`]; the
/// default (everything off) is the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SeccompProfile {
    /// Nested user namespaces may be made (`unshare`/`clone` with `CLONE_NEWUSER`, and
    /// `clone3`). A ticket asks for it with the pseudo-capability
    /// [`NESTED_USERNS`](super::caps::NESTED_USERNS), see [`SliverSpec::seccomp_profile`].
    pub nested_userns: bool,
}

/// What the init and the exec helper need to build a sliver's filter (the capabilities travel
/// beside it, as the set the sliver's root keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SeccompPlan {
    /// The effective profile (the spec's, with what its capability list asks for).
    #[serde(default)]
    pub profile: SeccompProfile,
    /// Regular or admin. The default, regular, is the strictest.
    #[serde(default)]
    pub kind: SliverKind,
}

impl SeccompPlan {
    /// The plan for a sliver made from `spec`.
    pub fn for_spec(spec: &SliverSpec) -> Self {
        SeccompPlan {
            profile: spec.seccomp_profile(),
            kind: spec.kind,
        }
    }

    /// The filter for a sliver whose root keeps `caps` ([`compile`]).
    pub fn compile(&self, caps: CapMask) -> Result<CompiledFilter, SeccompError> {
        compile(&self.profile, self.kind, caps)
    }
}

/// A seccomp error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeccompError {
    /// The host's architecture has no syscall table here (only x86_64 and aarch64 do).
    #[error("no seccomp filter for architecture {0}: slivers need x86_64 or aarch64")]
    UnsupportedArch(&'static str),
    /// seccompiler refused the filter.
    #[error("compiling the seccomp filter: {0}")]
    Compile(String),
}

/// A group of system calls the filter refuses or allows together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Facility {
    /// `io_uring_*`.
    IoUring,
    /// `bpf`.
    Bpf,
    /// `perf_event_open`.
    Perf,
    /// `open_by_handle_at`, `name_to_handle_at`.
    FileHandles,
    /// Kernel modules.
    Modules,
    /// `kexec_load`, `kexec_file_load`.
    Kexec,
    /// `reboot`.
    Reboot,
    /// The kernel keyring.
    Keys,
    /// `userfaultfd`.
    Userfaultfd,
    /// `swapon`, `swapoff`.
    Swap,
    /// Process accounting (`acct`).
    Accounting,
    /// Disk quotas.
    Quota,
    /// `lookup_dcookie`.
    Dcookie,
    /// `iopl`, `ioperm` (x86_64 only).
    PortIo,
    /// System calls the kernel dropped or that only old binaries use.
    Obsolete,
    /// Making nested user namespaces.
    NestedUserns,
}

/// A system call by name and number on this host's architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall {
    /// Its name (as in `man 2`).
    pub name: &'static str,
    /// Its number.
    pub nr: i64,
}

impl Facility {
    /// Every facility, in order.
    pub const ALL: [Facility; 16] = [
        Facility::IoUring,
        Facility::Bpf,
        Facility::Perf,
        Facility::FileHandles,
        Facility::Modules,
        Facility::Kexec,
        Facility::Reboot,
        Facility::Keys,
        Facility::Userfaultfd,
        Facility::Swap,
        Facility::Accounting,
        Facility::Quota,
        Facility::Dcookie,
        Facility::PortIo,
        Facility::Obsolete,
        Facility::NestedUserns,
    ];

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// Its system calls on this host's architecture (empty where it has none). For
    /// [`Facility::NestedUserns`]: `unshare` and `clone` (refused only with `CLONE_NEWUSER`) and
    /// `clone3`.
    pub fn syscalls(self) -> &'static [Syscall] {
        table::syscalls(self)
    }

    /// The capabilities, any one of which gives the facility to an admin sliver (empty: none
    /// does). [`Facility::NestedUserns`] goes with the profile, not with a capability.
    pub fn admin_caps(self) -> &'static [Capability] {
        use Capability::*;
        match self {
            Facility::IoUring
            | Facility::FileHandles
            | Facility::Keys
            | Facility::Userfaultfd
            | Facility::Swap
            | Facility::Quota
            | Facility::Dcookie => &[CAP_SYS_ADMIN],
            Facility::Bpf => &[CAP_SYS_ADMIN, CAP_BPF],
            Facility::Perf => &[CAP_SYS_ADMIN, CAP_PERFMON],
            Facility::Modules => &[CAP_SYS_MODULE],
            Facility::Kexec | Facility::Reboot => &[CAP_SYS_BOOT],
            Facility::Accounting => &[CAP_SYS_PACCT],
            Facility::PortIo => &[CAP_SYS_RAWIO],
            Facility::Obsolete | Facility::NestedUserns => &[],
        }
    }
}

impl fmt::Display for Facility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Facility::IoUring => "io_uring",
            Facility::Bpf => "bpf",
            Facility::Perf => "perf",
            Facility::FileHandles => "file handles",
            Facility::Modules => "modules",
            Facility::Kexec => "kexec",
            Facility::Reboot => "reboot",
            Facility::Keys => "keys",
            Facility::Userfaultfd => "userfaultfd",
            Facility::Swap => "swap",
            Facility::Accounting => "accounting",
            Facility::Quota => "quota",
            Facility::Dcookie => "dcookie",
            Facility::PortIo => "port I/O",
            Facility::Obsolete => "obsolete",
            Facility::NestedUserns => "nested user namespaces",
        })
    }
}

/// A set of facilities (one bit each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FacilitySet(u32);

impl FacilitySet {
    /// Whether `f` is in the set.
    pub fn contains(self, f: Facility) -> bool {
        self.0 & f.bit() != 0
    }

    /// The set with `f` added.
    pub fn with(self, f: Facility) -> Self {
        FacilitySet(self.0 | f.bit())
    }

    /// The facilities in the set, in [`Facility::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Facility> {
        Facility::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

/// The facilities refused to a sliver of `kind` whose root keeps `caps`, under `profile`.
pub fn refused(profile: &SeccompProfile, kind: SliverKind, caps: CapMask) -> FacilitySet {
    Facility::ALL
        .into_iter()
        .filter(|f| match f {
            Facility::NestedUserns => !profile.nested_userns,
            _ => {
                kind != SliverKind::Admin
                    || !f.admin_caps().iter().any(|c| caps.contains(c.index()))
            }
        })
        .fold(FacilitySet::default(), FacilitySet::with)
}

/// A compiled filter: one or more BPF programs, installed in order. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct CompiledFilter(Arc<Compiled>);

#[derive(Debug)]
struct Compiled {
    refused: FacilitySet,
    programs: Vec<BpfProgram>,
}

impl CompiledFilter {
    /// The facilities it refuses.
    pub fn refused(&self) -> FacilitySet {
        self.0.refused
    }

    /// How many filters [`install_raw`] stacks (the `Seccomp_filters:` count it adds in
    /// `/proc/<pid>/status`).
    pub fn filter_count(&self) -> usize {
        self.0.programs.len()
    }

    /// Whether `other` is the same compiled filter (not only an equal one): both came from the
    /// cache.
    pub fn is_shared_with(&self, other: &CompiledFilter) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Runs the filter on a system call as the kernel would (every program; the most
    /// restrictive answer wins) and returns the raw `SECCOMP_RET_*` value. For tests and
    /// diagnostics: `arch` is an `AUDIT_ARCH_*` value, `nr` the call's number.
    pub fn evaluate(&self, arch: u32, nr: i64, args: [u64; 6]) -> u32 {
        self.0
            .programs
            .iter()
            .map(|p| bpf::run(p, arch, nr, &args))
            .min_by_key(|ret| bpf::precedence(*ret))
            .unwrap_or(libc::SECCOMP_RET_ALLOW)
    }
}

static CACHE: LazyLock<Mutex<HashMap<FacilitySet, CompiledFilter>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The filter for a sliver of `kind` whose root keeps `caps`, under `profile`. Compiled once
/// per distinct refused set and shared afterwards. Allocates: call it before `fork`.
pub fn compile(
    profile: &SeccompProfile,
    kind: SliverKind,
    caps: CapMask,
) -> Result<CompiledFilter, SeccompError> {
    let refused = refused(profile, kind, caps);
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(filter) = cache.get(&refused) {
        return Ok(filter.clone());
    }
    let filter = CompiledFilter(Arc::new(Compiled {
        refused,
        programs: build(refused)?,
    }));
    cache.insert(refused, filter.clone());
    Ok(filter)
}

/// The filter of the sliver made from `spec` whose root keeps `caps` (the mask its record
/// holds): [`SeccompPlan::for_spec`] then [`SeccompPlan::compile`].
pub fn for_sliver(spec: &SliverSpec, caps: CapMask) -> Result<CompiledFilter, SeccompError> {
    SeccompPlan::for_spec(spec).compile(caps)
}

// seccompiler's instruction is the kernel's `struct sock_filter`, as libc's is.
const _: () = assert!(
    size_of::<seccompiler::sock_filter>() == size_of::<libc::sock_filter>()
        && align_of::<seccompiler::sock_filter>() == align_of::<libc::sock_filter>()
);

/// Installs `filter` on the calling thread (and so on everything it execs or forks).
///
/// Async-signal-safe (raw `seccomp` system calls on memory prepared before, nothing
/// allocated): callable between `fork` and `exec`. The caller must already have set
/// `no_new_privs` (as [`caps::restrict_raw`](super::caps::restrict_raw) does) or hold
/// CAP_SYS_ADMIN. Returns the errno of the first failure; the programs before it stay
/// installed, so the caller must not go on to exec.
pub fn install_raw(filter: &CompiledFilter) -> Result<(), i32> {
    for program in &filter.0.programs {
        let Ok(len) = u16::try_from(program.len()) else {
            return Err(libc::EINVAL);
        };
        let fprog = libc::sock_fprog {
            len,
            // The kernel only reads the program (copy_from_user); the pointer is `*mut` in
            // the C declaration only.
            filter: program.as_ptr().cast::<libc::sock_filter>().cast_mut(),
        };
        // SAFETY: `fprog` points at `len` instructions of the kernel's layout (asserted above)
        // that live in `filter` for the whole call; the kernel copies them and keeps no
        // pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &raw const fprog,
            )
        };
        if rc != 0 {
            return Err(super::caps::errno());
        }
    }
    Ok(())
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    #[cfg(target_arch = "x86_64")]
    return Ok(TargetArch::x86_64);
    #[cfg(target_arch = "aarch64")]
    return Ok(TargetArch::aarch64);
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return Err(SeccompError::UnsupportedArch(std::env::consts::ARCH));
}

fn compile_err(e: impl fmt::Display) -> SeccompError {
    SeccompError::Compile(e.to_string())
}

/// The programs that refuse `refused`: the deny list (`EPERM`), then `clone3` (`ENOSYS`) when
/// nested user namespaces are refused, then on x86_64 the x32 guard.
fn build(refused: FacilitySet) -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = target_arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for facility in refused.iter() {
        if facility == Facility::NestedUserns {
            continue;
        }
        for call in facility.syscalls() {
            rules.insert(call.nr, Vec::new());
        }
    }
    let mut programs = Vec::with_capacity(3);
    if refused.contains(Facility::NestedUserns) {
        let newuser = libc::CLONE_NEWUSER as u64;
        // The flags are the first argument of both, on both architectures.
        let rule = || {
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(newuser),
                newuser,
            )
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(compile_err)
        };
        rules.insert(libc::SYS_unshare, vec![rule()?]);
        rules.insert(libc::SYS_clone, vec![rule()?]);
    }
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(compile_err)?;
    programs.push(BpfProgram::try_from(deny).map_err(compile_err)?);
    if refused.contains(Facility::NestedUserns) {
        let clone3 = SeccompFilter::new(
            BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .map_err(compile_err)?;
        programs.push(BpfProgram::try_from(clone3).map_err(compile_err)?);
    }
    #[cfg(target_arch = "x86_64")]
    programs.push(bpf::x32_guard());
    Ok(programs)
}

/// The system call table of each facility, for this host's architecture.
mod table {
    use super::{Facility, Syscall};

    /// `calls![SYS_x, …]`: libc's numbers, named without the `SYS_` prefix.
    macro_rules! calls {
        ($($name:ident),* $(,)?) => {
            &[$(Syscall { name: stringify!($name).split_at(4).1, nr: libc::$name as i64 }),*]
        };
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    pub(super) fn syscalls(f: Facility) -> &'static [Syscall] {
        const IO_URING: &[Syscall] = calls![
            SYS_io_uring_setup,
            SYS_io_uring_enter,
            SYS_io_uring_register
        ];
        const BPF: &[Syscall] = calls![SYS_bpf];
        const PERF: &[Syscall] = calls![SYS_perf_event_open];
        const FILE_HANDLES: &[Syscall] = calls![SYS_open_by_handle_at, SYS_name_to_handle_at];
        const MODULES: &[Syscall] = calls![SYS_init_module, SYS_finit_module, SYS_delete_module];
        const KEXEC: &[Syscall] = calls![SYS_kexec_load, SYS_kexec_file_load];
        const REBOOT: &[Syscall] = calls![SYS_reboot];
        const KEYS: &[Syscall] = calls![SYS_add_key, SYS_request_key, SYS_keyctl];
        const USERFAULTFD: &[Syscall] = calls![SYS_userfaultfd];
        const SWAP: &[Syscall] = calls![SYS_swapon, SYS_swapoff];
        const ACCOUNTING: &[Syscall] = calls![SYS_acct];
        const QUOTA: &[Syscall] = calls![SYS_quotactl, SYS_quotactl_fd];
        const DCOOKIE: &[Syscall] = calls![SYS_lookup_dcookie];
        #[cfg(target_arch = "x86_64")]
        const PORT_IO: &[Syscall] = calls![SYS_iopl, SYS_ioperm];
        #[cfg(not(target_arch = "x86_64"))]
        const PORT_IO: &[Syscall] = &[];
        #[cfg(target_arch = "x86_64")]
        const OBSOLETE: &[Syscall] = calls![SYS_nfsservctl, SYS_uselib];
        #[cfg(not(target_arch = "x86_64"))]
        const OBSOLETE: &[Syscall] = calls![SYS_nfsservctl];
        const NESTED_USERNS: &[Syscall] = calls![SYS_unshare, SYS_clone, SYS_clone3];
        match f {
            Facility::IoUring => IO_URING,
            Facility::Bpf => BPF,
            Facility::Perf => PERF,
            Facility::FileHandles => FILE_HANDLES,
            Facility::Modules => MODULES,
            Facility::Kexec => KEXEC,
            Facility::Reboot => REBOOT,
            Facility::Keys => KEYS,
            Facility::Userfaultfd => USERFAULTFD,
            Facility::Swap => SWAP,
            Facility::Accounting => ACCOUNTING,
            Facility::Quota => QUOTA,
            Facility::Dcookie => DCOOKIE,
            Facility::PortIo => PORT_IO,
            Facility::Obsolete => OBSOLETE,
            Facility::NestedUserns => NESTED_USERNS,
        }
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    pub(super) fn syscalls(_: Facility) -> &'static [Syscall] {
        &[]
    }
}

/// The few classic-BPF pieces seccompiler does not make: the x32 guard, and an interpreter of
/// the instructions it emits (for [`CompiledFilter::evaluate`]).
mod bpf {
    use seccompiler::{BpfProgram, sock_filter};

    const LD_W_ABS: u16 = 0x20;
    const ALU_AND_K: u16 = 0x54;
    const JMP_JA: u16 = 0x05;
    const JMP_JEQ_K: u16 = 0x15;
    const JMP_JGT_K: u16 = 0x25;
    const JMP_JGE_K: u16 = 0x35;
    const RET_K: u16 = 0x06;

    /// `AUDIT_ARCH_X86_64`.
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    /// Bit 30 of an x86_64 system call number selects the x32 ABI.
    #[cfg(target_arch = "x86_64")]
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;

    #[cfg(target_arch = "x86_64")]
    fn ins(code: u16, jt: u8, jf: u8, k: u32) -> sock_filter {
        sock_filter { code, jt, jf, k }
    }

    /// x86_64 calls with the x32 bit → `ENOSYS`; anything else is left to the other programs.
    #[cfg(target_arch = "x86_64")]
    pub(super) fn x32_guard() -> BpfProgram {
        vec![
            ins(LD_W_ABS, 0, 0, 4),
            ins(JMP_JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
            ins(LD_W_ABS, 0, 0, 0),
            ins(JMP_JGE_K, 0, 1, X32_SYSCALL_BIT),
            ins(RET_K, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
            ins(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW),
        ]
    }

    /// How the kernel ranks actions when several filters answer: lower wins.
    pub(super) fn precedence(ret: u32) -> u32 {
        match ret & libc::SECCOMP_RET_ACTION_FULL {
            libc::SECCOMP_RET_KILL_PROCESS => 0,
            libc::SECCOMP_RET_KILL_THREAD => 1,
            libc::SECCOMP_RET_TRAP => 2,
            libc::SECCOMP_RET_ERRNO => 3,
            libc::SECCOMP_RET_USER_NOTIF => 4,
            libc::SECCOMP_RET_TRACE => 5,
            libc::SECCOMP_RET_LOG => 6,
            _ => 7,
        }
    }

    /// Runs `program` on `struct seccomp_data { nr, arch, ip = 0, args }`. An instruction it
    /// does not know, or a jump out of the program, kills (as the kernel would refuse it).
    pub(super) fn run(program: &[sock_filter], arch: u32, nr: i64, args: &[u64; 6]) -> u32 {
        let word = |offset: u32| -> u32 {
            match offset {
                0 => nr as u32,
                4 => arch,
                8 | 12 => 0,
                16..=63 if offset.is_multiple_of(4) => {
                    let arg = args[(offset as usize - 16) / 8];
                    // Little-endian: the low word first.
                    if offset.is_multiple_of(8) {
                        arg as u32
                    } else {
                        (arg >> 32) as u32
                    }
                }
                _ => 0,
            }
        };
        let mut acc = 0u32;
        let mut pc = 0usize;
        while let Some(i) = program.get(pc) {
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                LD_W_ABS => acc = word(i.k),
                ALU_AND_K => acc &= i.k,
                JMP_JA => pc += i.k as usize,
                JMP_JEQ_K => pc += jump(acc == i.k),
                JMP_JGT_K => pc += jump(acc > i.k),
                JMP_JGE_K => pc += jump(acc >= i.k),
                RET_K => return i.k,
                _ => break,
            }
        }
        libc::SECCOMP_RET_KILL_PROCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sliver::caps;

    const NATIVE: u32 = {
        #[cfg(target_arch = "x86_64")]
        {
            62 | 0x8000_0000 | 0x4000_0000
        }
        #[cfg(target_arch = "aarch64")]
        {
            183 | 0x8000_0000 | 0x4000_0000
        }
    };
    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

    fn regular_caps() -> CapMask {
        caps::sliver_mask(SliverKind::Regular, &[]).unwrap()
    }

    fn admin(names: &[&str]) -> CapMask {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        caps::sliver_mask(SliverKind::Admin, &names).unwrap()
    }

    fn call(filter: &CompiledFilter, nr: i64) -> u32 {
        filter.evaluate(NATIVE, nr, [0; 6])
    }

    #[test]
    fn regular_slivers_are_refused_every_facility() {
        let set = refused(
            &SeccompProfile::default(),
            SliverKind::Regular,
            regular_caps(),
        );
        assert_eq!(set.iter().collect::<Vec<_>>(), Facility::ALL.to_vec());
        // Capabilities do not count for a regular sliver, even if a mask held them.
        let all = CapMask(u64::MAX);
        assert_eq!(
            refused(&SeccompProfile::default(), SliverKind::Regular, all),
            set
        );
        let nested = SeccompProfile {
            nested_userns: true,
        };
        let set = refused(&nested, SliverKind::Regular, regular_caps());
        assert!(!set.contains(Facility::NestedUserns));
        assert!(set.contains(Facility::IoUring));
    }

    #[test]
    fn admin_slivers_get_what_their_capabilities_name() {
        let p = SeccompProfile::default();
        let set = refused(&p, SliverKind::Admin, admin(&[]));
        assert_eq!(set, refused(&p, SliverKind::Regular, regular_caps()));
        let set = refused(&p, SliverKind::Admin, admin(&["CAP_SYS_ADMIN"]));
        for f in [
            Facility::IoUring,
            Facility::Bpf,
            Facility::Perf,
            Facility::FileHandles,
            Facility::Keys,
            Facility::Swap,
        ] {
            assert!(!set.contains(f), "{f} with CAP_SYS_ADMIN");
        }
        for f in [
            Facility::Modules,
            Facility::Kexec,
            Facility::Obsolete,
            Facility::NestedUserns,
        ] {
            assert!(set.contains(f), "{f} with CAP_SYS_ADMIN");
        }
        let set = refused(&p, SliverKind::Admin, admin(&["CAP_BPF", "CAP_PERFMON"]));
        assert!(!set.contains(Facility::Bpf) && !set.contains(Facility::Perf));
        assert!(
            set.contains(Facility::IoUring),
            "io_uring needs CAP_SYS_ADMIN"
        );
        let set = refused(&p, SliverKind::Admin, admin(&["CAP_SYS_MODULE"]));
        assert!(!set.contains(Facility::Modules) && set.contains(Facility::IoUring));
        let set = refused(&p, SliverKind::Admin, admin(&["CAP_SYS_BOOT"]));
        assert!(!set.contains(Facility::Kexec) && !set.contains(Facility::Reboot));
    }

    #[test]
    fn the_default_filter_refuses_each_call_with_eperm() {
        let f = compile(
            &SeccompProfile::default(),
            SliverKind::Regular,
            regular_caps(),
        )
        .unwrap();
        for facility in Facility::ALL {
            if facility == Facility::NestedUserns {
                continue;
            }
            for c in facility.syscalls() {
                assert_eq!(call(&f, c.nr), EPERM, "{} ({facility})", c.name);
            }
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_openat,
            libc::SYS_ptrace,
            libc::SYS_setns,
            libc::SYS_seccomp,
            libc::SYS_mmap,
            libc::SYS_execve,
            libc::SYS_socket,
        ] {
            assert_eq!(call(&f, nr), ALLOW, "syscall {nr}");
        }
        assert!(
            Facility::IoUring
                .syscalls()
                .iter()
                .any(|c| c.name == "io_uring_setup" && c.nr == 425)
        );
    }

    #[test]
    fn nested_user_namespaces_are_refused_by_flag() {
        let newuser = libc::CLONE_NEWUSER as u64;
        let strict = compile(
            &SeccompProfile::default(),
            SliverKind::Regular,
            regular_caps(),
        )
        .unwrap();
        let allowed = compile(
            &SeccompProfile {
                nested_userns: true,
            },
            SliverKind::Regular,
            regular_caps(),
        )
        .unwrap();
        for nr in [libc::SYS_unshare, libc::SYS_clone] {
            let flags = newuser | libc::CLONE_NEWNS as u64;
            assert_eq!(strict.evaluate(NATIVE, nr, [flags, 0, 0, 0, 0, 0]), EPERM);
            let fork = libc::SIGCHLD as u64 | libc::CLONE_NEWNET as u64;
            assert_eq!(strict.evaluate(NATIVE, nr, [fork, 0, 0, 0, 0, 0]), ALLOW);
            assert_eq!(allowed.evaluate(NATIVE, nr, [flags, 0, 0, 0, 0, 0]), ALLOW);
        }
        assert_eq!(call(&strict, libc::SYS_clone3), ENOSYS);
        assert_eq!(call(&allowed, libc::SYS_clone3), ALLOW);
        assert_eq!(call(&allowed, libc::SYS_io_uring_setup), EPERM);
        assert_eq!(strict.filter_count(), allowed.filter_count() + 1);
    }

    #[test]
    fn other_abis_are_refused() {
        let f = compile(
            &SeccompProfile::default(),
            SliverKind::Regular,
            regular_caps(),
        )
        .unwrap();
        // i386 (int 0x80 on x86_64) or arm32: another numbering, killed.
        let foreign = if cfg!(target_arch = "x86_64") {
            3 | 0x4000_0000
        } else {
            40 | 0x4000_0000
        };
        assert_eq!(
            f.evaluate(foreign, libc::SYS_read, [0; 6]),
            libc::SECCOMP_RET_KILL_PROCESS
        );
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(call(&f, 0x4000_0000 | libc::SYS_read), ENOSYS);
            assert_eq!(call(&f, 0x4000_0000 | 528), ENOSYS, "x32 kexec_load");
        }
    }

    #[test]
    fn compiled_filters_are_cached_per_refused_set() {
        let p = SeccompProfile::default();
        let a = compile(&p, SliverKind::Regular, regular_caps()).unwrap();
        let b = compile(&p, SliverKind::Regular, regular_caps()).unwrap();
        assert!(a.is_shared_with(&b));
        // A different input with the same refused set shares it too.
        let c = compile(&p, SliverKind::Admin, admin(&["CAP_NET_ADMIN"])).unwrap();
        assert!(a.is_shared_with(&c));
        let d = compile(&p, SliverKind::Admin, admin(&["CAP_SYS_ADMIN"])).unwrap();
        assert!(!a.is_shared_with(&d));
        assert_eq!(call(&d, libc::SYS_io_uring_setup), ALLOW);
        assert_eq!(call(&d, libc::SYS_init_module), EPERM);
        let again = std::time::Instant::now();
        for _ in 0..1000 {
            compile(&p, SliverKind::Regular, regular_caps()).unwrap();
        }
        assert!(
            again.elapsed() < std::time::Duration::from_millis(100),
            "a cached compile must be cheap: {:?} for 1000",
            again.elapsed()
        );
    }

    #[test]
    fn plans_travel_as_json_and_default_to_the_strictest() {
        let plan: SeccompPlan = serde_json::from_str("{}").unwrap();
        assert_eq!(plan, SeccompPlan::default());
        assert_eq!(plan.kind, SliverKind::Regular);
        assert!(!plan.profile.nested_userns);
        let plan = SeccompPlan {
            profile: SeccompProfile {
                nested_userns: true,
            },
            kind: SliverKind::Admin,
        };
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<SeccompPlan>(&json).unwrap(), plan);
    }

    /// Installs the default filter in a forked child (no root needed: `no_new_privs` is
    /// enough) and checks what the kernel answers.
    #[test]
    fn the_kernel_applies_the_filter() {
        let filter = compile(
            &SeccompProfile::default(),
            SliverKind::Regular,
            regular_caps(),
        )
        .unwrap();
        let mut params = [0u8; 120];
        let params_ptr = params.as_mut_ptr();
        // SAFETY: the child makes raw system calls only on memory prepared before the fork,
        // then `_exit`s; the parent only waits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let code = (|| {
                // SAFETY: prctl with integer arguments only.
                if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                    return 10;
                }
                if install_raw(&filter).is_err() {
                    return 11;
                }
                let errno_of = |rc: libc::c_long| if rc == -1 { caps::errno() } else { 0 };
                // SAFETY: io_uring_setup with a valid params buffer of the kernel's size.
                let rc = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, params_ptr) };
                if errno_of(rc) != libc::EPERM {
                    return 12;
                }
                // SAFETY: clone3 with no arguments (refused before the kernel reads any).
                let rc = unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) };
                if errno_of(rc) != libc::ENOSYS {
                    return 13;
                }
                // SAFETY: unshare with integer flags.
                let rc = unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWUSER) };
                if errno_of(rc) != libc::EPERM {
                    return 14;
                }
                // SAFETY: getpid has no arguments.
                if unsafe { libc::syscall(libc::SYS_getpid) } <= 0 {
                    return 15;
                }
                0
            })();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(waited, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "see the child's return codes");
    }
}
