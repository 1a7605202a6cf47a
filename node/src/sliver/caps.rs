//! Capabilities of a sliver's root: the paper's "weaker root" (§3.1.2) and admin grants (§4.3).
//!
//! A sliver's root holds [`BASE`] inside its own user namespace, plus what its grant names:
//! a regular sliver may be granted only [`REGULAR_GRANTABLE`] (CAP_NET_RAW, which the user
//! namespace confines to the sliver's own network namespace — the protected raw sockets); an
//! admin sliver any capability. Everything else leaves the bounding set, and `no_new_privs` is
//! set, so no exec can win it back. A set is a plain bit mask ([`CapMask`]) so that the code
//! running between `fork` and `exec` can apply it with raw `prctl` calls.
//!
//! A grant may also name [`NESTED_USERNS`], a pseudo-capability (no kernel capability has
//! that name) that lets the sliver make nested user namespaces, which its seccomp filter
//! refuses otherwise ([`super::seccomp`]). Either kind of sliver may be granted it; it never
//! enters a [`CapMask`].

use caps::Capability;
use serde::{Deserialize, Serialize};

use super::spec::SliverKind;

/// An error naming capabilities.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsError {
    /// Not a capability name.
    #[error("unknown capability {0:?} (expected a kernel name such as CAP_NET_RAW)")]
    Unknown(String),
    /// A capability a regular sliver may not be granted.
    #[error("capability {0} may be granted only to an admin sliver")]
    AdminOnly(String),
}

/// A set of capabilities as a bit mask (bit n = capability number n).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CapMask(pub u64);

impl CapMask {
    /// Whether capability number `n` is in the set.
    pub fn contains(self, n: u8) -> bool {
        n < 64 && self.0 & (1u64 << n) != 0
    }

    /// The set with `cap` added.
    pub fn with(self, cap: Capability) -> Self {
        CapMask(self.0 | cap.bitmask())
    }

    /// The capabilities in the set, by kernel name.
    pub fn names(self) -> Vec<String> {
        caps::all()
            .into_iter()
            .filter(|c| self.contains(c.index()))
            .map(|c| c.to_string())
            .collect()
    }
}

/// What root in every sliver holds (inside its user namespace).
pub const BASE: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_AUDIT_WRITE,
    Capability::CAP_SETFCAP,
    Capability::CAP_IPC_OWNER,
];

/// What a regular sliver may be granted on top of [`BASE`].
pub const REGULAR_GRANTABLE: &[Capability] = &[Capability::CAP_NET_RAW];

/// The pseudo-capability that allows nested user namespaces (kernel spelling, so a ticket's
/// capability list can carry it; `nested_userns` is accepted too).
pub const NESTED_USERNS: &str = "CAP_NESTED_USERNS";

/// Whether `name` is a pseudo-capability ([`NESTED_USERNS`]), in any accepted spelling.
pub fn is_pseudo(name: &str) -> bool {
    caps::to_canonical(name) == NESTED_USERNS
}

/// Whether the names grant nested user namespaces ([`NESTED_USERNS`]).
pub fn names_nested_userns(names: &[String]) -> bool {
    names.iter().any(|n| is_pseudo(n))
}

/// Checks capability names against the kind of sliver and returns the kernel capabilities
/// among them (pseudo-capabilities are accepted for both kinds and left out).
pub fn granted(kind: SliverKind, names: &[String]) -> Result<Vec<Capability>, CapsError> {
    names
        .iter()
        .filter(|name| !is_pseudo(name))
        .map(|name| {
            let canonical = caps::to_canonical(name);
            let cap: Capability = canonical
                .parse()
                .map_err(|_| CapsError::Unknown(name.clone()))?;
            if kind == SliverKind::Regular && !REGULAR_GRANTABLE.contains(&cap) {
                return Err(CapsError::AdminOnly(cap.to_string()));
            }
            Ok(cap)
        })
        .collect()
}

/// The full set a sliver's root holds: [`BASE`] plus the grant.
pub fn sliver_mask(kind: SliverKind, names: &[String]) -> Result<CapMask, CapsError> {
    let mut mask = BASE.iter().fold(CapMask::default(), |m, c| m.with(*c));
    for cap in granted(kind, names)? {
        mask = mask.with(cap);
    }
    Ok(mask)
}

/// The highest capability number the running kernel knows (from `/proc/sys/kernel/cap_last_cap`,
/// 40 when it cannot be read).
pub fn last_cap() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drops every capability not in `keep` from the bounding set and sets `no_new_privs`.
///
/// Async-signal-safe (raw `prctl` only): callable between `fork` and `exec`. Returns the errno
/// of the first failure.
pub fn restrict_raw(keep: CapMask, last_cap: u8) -> Result<(), i32> {
    for n in 0..=last_cap {
        if keep.contains(n) {
            continue;
        }
        // SAFETY: prctl with integer arguments only; no memory is passed.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(n), 0, 0, 0) };
        if rc != 0 {
            return Err(errno());
        }
    }
    // SAFETY: as above.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(errno());
    }
    Ok(())
}

/// The calling thread's errno (async-signal-safe).
pub(crate) fn errno() -> i32 {
    // SAFETY: __errno_location returns a valid pointer to the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_slivers_get_only_net_raw() {
        assert_eq!(
            granted(SliverKind::Regular, &["cap_net_raw".into()]),
            Ok(vec![Capability::CAP_NET_RAW])
        );
        assert_eq!(
            granted(SliverKind::Regular, &["CAP_SYS_ADMIN".into()]),
            Err(CapsError::AdminOnly("CAP_SYS_ADMIN".into()))
        );
        assert_eq!(
            granted(SliverKind::Admin, &["CAP_SYS_ADMIN".into()]),
            Ok(vec![Capability::CAP_SYS_ADMIN])
        );
        assert_eq!(
            granted(SliverKind::Admin, &["CAP_FLY".into()]),
            Err(CapsError::Unknown("CAP_FLY".into()))
        );
    }

    #[test]
    fn nested_userns_is_a_pseudo_capability_of_either_kind() {
        for kind in [SliverKind::Regular, SliverKind::Admin] {
            for name in ["CAP_NESTED_USERNS", "nested_userns"] {
                assert_eq!(granted(kind, &[name.into()]), Ok(vec![]));
                assert!(names_nested_userns(&[name.into()]));
            }
            assert_eq!(
                sliver_mask(kind, &[NESTED_USERNS.into()]),
                sliver_mask(kind, &[])
            );
        }
        assert!(!names_nested_userns(&["CAP_NET_RAW".into()]));
        assert_eq!(
            granted(
                SliverKind::Regular,
                &["CAP_NET_RAW".into(), NESTED_USERNS.into()]
            ),
            Ok(vec![Capability::CAP_NET_RAW])
        );
    }

    #[test]
    fn base_excludes_dangerous_capabilities() {
        let mask = sliver_mask(SliverKind::Regular, &[]).unwrap();
        for cap in [
            Capability::CAP_SYS_MODULE,
            Capability::CAP_SYS_RAWIO,
            Capability::CAP_SYS_TIME,
            Capability::CAP_SYS_BOOT,
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_NET_RAW,
            Capability::CAP_MKNOD,
        ] {
            assert!(
                !mask.contains(cap.index()),
                "{cap} must not be in the base set"
            );
        }
        assert!(mask.contains(Capability::CAP_CHOWN.index()));
        let admin = sliver_mask(SliverKind::Admin, &["CAP_NET_RAW".into()]).unwrap();
        assert!(admin.contains(Capability::CAP_NET_RAW.index()));
        assert!(admin.names().contains(&"CAP_NET_RAW".to_string()));
    }
}
