//! What each [`MountStep`] of an init's plan becomes: the exact system calls (`mount(2)`
//! with its flags and data, `umount2`, `pivot_root`, `move_mount` of the id-mapped image,
//! directory and file making), as data. Pure, unit-tested without root; the init's executor
//! (`perform` in `init.rs`) only makes the calls, in order, stopping at the first that fails.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::statvfs::FsFlags;

use super::{MountStep, OLD_ROOT};

/// One system call (or small idempotent file system operation) of building a sliver's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `mount(source, target, fstype, flags, data)`.
    Mount {
        /// The source (a device name, or the bound path), if any.
        source: Option<PathBuf>,
        /// The mount point.
        target: PathBuf,
        /// The filesystem type, if any.
        fstype: Option<&'static str>,
        /// The flags.
        flags: MsFlags,
        /// The filesystem's options, if any.
        data: Option<String>,
    },
    /// A bind remount of `target` with `flags` plus the flags the mount already has that a
    /// user namespace may not clear (nosuid, nodev, noexec, the atime ones), read with
    /// `statvfs` when the call is made (see [`locked`]).
    RemountKeepingLocked {
        /// The mount point.
        target: PathBuf,
        /// The flags besides the locked ones.
        flags: MsFlags,
    },
    /// `move_mount` of the id-mapped image the node sent onto `target`.
    AttachLayer {
        /// Where.
        target: PathBuf,
    },
    /// `umount2(target, flags)`.
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// The flags.
        flags: MntFlags,
    },
    /// Makes `path` and its missing parents, mode 0755; an existing directory is no error.
    MakeDir {
        /// The directory.
        path: PathBuf,
    },
    /// Creates the empty file `path` unless something is there already.
    CreateFile {
        /// The file.
        path: PathBuf,
    },
    /// Sets the mode of `path`.
    Chmod {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// Makes the symbolic link `path` → `to` unless something is at `path` already.
    Symlink {
        /// The link.
        path: PathBuf,
        /// Its target.
        to: PathBuf,
    },
    /// `pivot_root(new_root, put_old)`.
    PivotRoot {
        /// The new root.
        new_root: PathBuf,
        /// Where the old root goes.
        put_old: PathBuf,
    },
    /// `chdir(path)`.
    Chdir {
        /// The directory.
        path: PathBuf,
    },
    /// `rmdir(path)`.
    RemoveDir {
        /// The directory.
        path: PathBuf,
    },
    /// Makes the directory `path` sticky and world-writable (mode 01777) if it exists with
    /// another mode; best effort (a failure is ignored).
    MakeSticky {
        /// The directory.
        path: PathBuf,
    },
}

/// A call and what it does, which names it in the error when it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The step, described (e.g. `mount proc on /r/proc`).
    pub what: String,
    /// The call.
    pub call: Call,
}

fn planned(what: impl Into<String>, call: Call) -> Planned {
    Planned {
        what: what.into(),
        call,
    }
}

fn make_dir(path: &Path) -> Planned {
    planned(
        format!("mkdir {}", path.display()),
        Call::MakeDir {
            path: path.to_path_buf(),
        },
    )
}

fn mount_fs(
    what: String,
    fstype: &'static str,
    target: &Path,
    flags: MsFlags,
    data: Option<String>,
) -> Planned {
    planned(
        what,
        Call::Mount {
            source: Some(fstype.into()),
            target: target.to_path_buf(),
            fstype: Some(fstype),
            flags,
            data,
        },
    )
}

/// The calls of `step`, in order. `defer_detach`: the old root is covered at the pivot and
/// detached only after ready (see [`deferred_detach`]); `layer`: the node sent an id-mapped
/// image (without one, [`MountStep::IdmappedLayer`] binds its source read-only instead).
pub fn calls(step: &MountStep, defer_detach: bool, layer: bool) -> Vec<Planned> {
    match step {
        MountStep::MakePrivate => vec![planned(
            "make / private",
            Call::Mount {
                source: None,
                target: "/".into(),
                fstype: None,
                flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                data: None,
            },
        )],
        MountStep::IdmappedLayer { source, target } => {
            let mut out = vec![make_dir(target)];
            if layer {
                out.push(planned(
                    format!("attach id-mapped image at {}", target.display()),
                    Call::AttachLayer {
                        target: target.clone(),
                    },
                ));
            } else {
                let bind = MountStep::Bind {
                    source: source.clone(),
                    target: target.clone(),
                    readonly: true,
                    file: false,
                };
                out.extend(calls(&bind, defer_detach, false));
            }
            out
        }
        MountStep::Overlay {
            lower,
            upper,
            work,
            target,
        } => {
            let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
            let data = format!(
                "lowerdir={},upperdir={},workdir={},userxattr",
                lower.join(":"),
                upper.display(),
                work.display()
            );
            vec![mount_fs(
                format!("mount overlay on {} ({data})", target.display()),
                "overlay",
                target,
                MsFlags::empty(),
                Some(data),
            )]
        }
        MountStep::Bind {
            source,
            target,
            readonly,
            file,
        } => {
            let mut out = Vec::new();
            if *file {
                if let Some(parent) = target.parent() {
                    out.push(make_dir(parent));
                }
                out.push(planned(
                    format!("create {}", target.display()),
                    Call::CreateFile {
                        path: target.clone(),
                    },
                ));
            } else {
                out.push(make_dir(target));
            }
            let what = format!("bind {} on {}", source.display(), target.display());
            out.push(planned(
                &what,
                Call::Mount {
                    source: Some(source.clone()),
                    target: target.clone(),
                    fstype: None,
                    flags: MsFlags::MS_BIND | MsFlags::MS_REC,
                    data: None,
                },
            ));
            if *readonly {
                out.push(planned(
                    format!("{what} read-only"),
                    Call::RemountKeepingLocked {
                        target: target.clone(),
                        flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    },
                ));
            }
            out
        }
        MountStep::Proc { target } => vec![
            make_dir(target),
            mount_fs(
                format!("mount proc on {}", target.display()),
                "proc",
                target,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None,
            ),
        ],
        MountStep::Sysfs { target } => vec![
            make_dir(target),
            mount_fs(
                format!("mount sysfs on {}", target.display()),
                "sysfs",
                target,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
                None,
            ),
        ],
        MountStep::Tmpfs { target, mode, size } => vec![
            make_dir(target),
            mount_fs(
                format!("mount tmpfs on {}", target.display()),
                "tmpfs",
                target,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(format!("mode={mode:o},size={size}")),
            ),
        ],
        MountStep::Dirs { dirs } => dirs
            .iter()
            .flat_map(|(path, mode)| {
                [
                    make_dir(path),
                    planned(
                        format!("chmod {}", path.display()),
                        Call::Chmod {
                            path: path.clone(),
                            mode: *mode,
                        },
                    ),
                ]
            })
            .collect(),
        MountStep::Devpts { target } => vec![
            make_dir(target),
            mount_fs(
                format!("mount devpts on {}", target.display()),
                "devpts",
                target,
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620".into()),
            ),
        ],
        MountStep::Symlink { path, to } => vec![planned(
            format!("symlink {}", path.display()),
            Call::Symlink {
                path: path.clone(),
                to: to.clone(),
            },
        )],
        MountStep::PivotRoot { new_root } => {
            let put_old = new_root.join(OLD_ROOT.trim_start_matches('/'));
            let mut out = vec![
                make_dir(&put_old),
                planned(
                    "pivot_root",
                    Call::PivotRoot {
                        new_root: new_root.clone(),
                        put_old,
                    },
                ),
                planned("chdir /", Call::Chdir { path: "/".into() }),
            ];
            if defer_detach {
                // Hide the host until the detach after ready.
                out.push(mount_fs(
                    "cover old root".into(),
                    "tmpfs",
                    Path::new(OLD_ROOT),
                    MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    Some("size=4k,mode=000".into()),
                ));
            } else {
                out.push(detach("detach old root"));
                out.push(remove_old_root());
            }
            // The tmpfs root of /tmp is made with the mount's mode; keep it sticky.
            out.push(planned(
                "make /tmp sticky",
                Call::MakeSticky {
                    path: "/tmp".into(),
                },
            ));
            out
        }
    }
}

fn detach(what: &str) -> Planned {
    planned(
        what,
        Call::Unmount {
            target: OLD_ROOT.into(),
            flags: MntFlags::MNT_DETACH,
        },
    )
}

fn remove_old_root() -> Planned {
    planned(
        "remove old root dir",
        Call::RemoveDir {
            path: OLD_ROOT.into(),
        },
    )
}

/// The calls left for after ready when the old root's detach was deferred (`defer_detach`
/// and a [`MountStep::PivotRoot`] among `steps`): the cover, then the old root under it, then
/// its dir. `None` when nothing was deferred.
pub fn deferred_detach(defer_detach: bool, steps: &[MountStep]) -> Option<Vec<Planned>> {
    let pivots = steps
        .iter()
        .any(|s| matches!(s, MountStep::PivotRoot { .. }));
    (defer_detach && pivots).then(|| {
        vec![
            detach("detach cover"),
            detach("detach old root"),
            remove_old_root(),
        ]
    })
}

/// The mount flags a remount must keep from `current` (a `statvfs` answer's flags): a user
/// namespace may not clear nosuid, nodev, noexec nor change the atime flags of a mount it got
/// from its parent, so a read-only remount that dropped them would fail.
pub fn locked(current: FsFlags) -> MsFlags {
    [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| current.contains(*st))
    .fold(MsFlags::empty(), |acc, (_, ms)| acc | ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(
        source: Option<&str>,
        target: &str,
        fstype: Option<&'static str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Call {
        Call::Mount {
            source: source.map(PathBuf::from),
            target: target.into(),
            fstype,
            flags,
            data: data.map(String::from),
        }
    }

    fn mkdir(path: &str) -> Call {
        Call::MakeDir { path: path.into() }
    }

    fn only_calls(planned: Vec<Planned>) -> Vec<Call> {
        planned.into_iter().map(|p| p.call).collect()
    }

    #[test]
    fn making_private_is_one_recursive_private_mount_of_the_root() {
        let got = calls(&MountStep::MakePrivate, false, false);
        assert_eq!(
            got,
            [Planned {
                what: "make / private".into(),
                call: mount(None, "/", None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None),
            }]
        );
    }

    #[test]
    fn the_image_is_attached_when_sent_and_bound_read_only_when_not() {
        let step = MountStep::IdmappedLayer {
            source: "/img".into(),
            target: "/s/lower".into(),
        };
        let with = calls(&step, false, true);
        assert_eq!(
            with,
            [
                Planned {
                    what: "mkdir /s/lower".into(),
                    call: mkdir("/s/lower"),
                },
                Planned {
                    what: "attach id-mapped image at /s/lower".into(),
                    call: Call::AttachLayer {
                        target: "/s/lower".into()
                    },
                },
            ]
        );
        let without = calls(&step, false, false);
        assert_eq!(
            only_calls(without.clone()),
            [
                mkdir("/s/lower"),
                mkdir("/s/lower"),
                mount(
                    Some("/img"),
                    "/s/lower",
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None
                ),
                Call::RemountKeepingLocked {
                    target: "/s/lower".into(),
                    flags: MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                },
            ]
        );
        assert_eq!(without[3].what, "bind /img on /s/lower read-only");
    }

    #[test]
    fn an_overlay_names_its_layers_top_first_with_user_xattrs() {
        let step = MountStep::Overlay {
            lower: vec!["/s/lower".into(), "/s/base".into()],
            upper: "/s/upper".into(),
            work: "/s/work".into(),
            target: "/s/rootfs".into(),
        };
        let data = "lowerdir=/s/lower:/s/base,upperdir=/s/upper,workdir=/s/work,userxattr";
        assert_eq!(
            calls(&step, false, false),
            [Planned {
                what: format!("mount overlay on /s/rootfs ({data})"),
                call: mount(
                    Some("overlay"),
                    "/s/rootfs",
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(data)
                ),
            }]
        );
    }

    #[test]
    fn a_file_bind_makes_its_parent_and_file_and_a_writable_one_is_not_remounted() {
        let step = MountStep::Bind {
            source: "/dev/null".into(),
            target: "/r/dev/null".into(),
            readonly: false,
            file: true,
        };
        let got = calls(&step, false, false);
        assert_eq!(
            only_calls(got.clone()),
            [
                mkdir("/r/dev"),
                Call::CreateFile {
                    path: "/r/dev/null".into()
                },
                mount(
                    Some("/dev/null"),
                    "/r/dev/null",
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None
                ),
            ]
        );
        let whats: Vec<&str> = got.iter().map(|p| p.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "mkdir /r/dev",
                "create /r/dev/null",
                "bind /dev/null on /r/dev/null"
            ]
        );
    }

    #[test]
    fn kernel_filesystems_get_their_flags_and_options() {
        let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        assert_eq!(
            only_calls(calls(
                &MountStep::Proc {
                    target: "/r/proc".into()
                },
                false,
                false
            )),
            [
                mkdir("/r/proc"),
                mount(
                    Some("proc"),
                    "/r/proc",
                    Some("proc"),
                    nosuid_nodev_noexec,
                    None
                ),
            ]
        );
        assert_eq!(
            only_calls(calls(
                &MountStep::Sysfs {
                    target: "/r/sys".into()
                },
                false,
                false
            )),
            [
                mkdir("/r/sys"),
                mount(
                    Some("sysfs"),
                    "/r/sys",
                    Some("sysfs"),
                    nosuid_nodev_noexec | MsFlags::MS_RDONLY,
                    None
                ),
            ]
        );
        assert_eq!(
            only_calls(calls(
                &MountStep::Tmpfs {
                    target: "/r/tmp".into(),
                    mode: 0o1777,
                    size: 1 << 20,
                },
                false,
                false
            )),
            [
                mkdir("/r/tmp"),
                mount(
                    Some("tmpfs"),
                    "/r/tmp",
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=1777,size=1048576")
                ),
            ]
        );
        assert_eq!(
            only_calls(calls(
                &MountStep::Devpts {
                    target: "/r/dev/pts".into()
                },
                false,
                false
            )),
            [
                mkdir("/r/dev/pts"),
                mount(
                    Some("devpts"),
                    "/r/dev/pts",
                    Some("devpts"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                    Some("newinstance,ptmxmode=0666,mode=0620")
                ),
            ]
        );
    }

    #[test]
    fn dirs_are_made_then_given_their_mode_and_links_are_made_once() {
        let step = MountStep::Dirs {
            dirs: vec![("/u/layer".into(), 0o755), ("/u/work".into(), 0o700)],
        };
        assert_eq!(
            only_calls(calls(&step, false, false)),
            [
                mkdir("/u/layer"),
                Call::Chmod {
                    path: "/u/layer".into(),
                    mode: 0o755
                },
                mkdir("/u/work"),
                Call::Chmod {
                    path: "/u/work".into(),
                    mode: 0o700
                },
            ]
        );
        let link = MountStep::Symlink {
            path: "/r/dev/ptmx".into(),
            to: "pts/ptmx".into(),
        };
        assert_eq!(
            calls(&link, false, false),
            [Planned {
                what: "symlink /r/dev/ptmx".into(),
                call: Call::Symlink {
                    path: "/r/dev/ptmx".into(),
                    to: "pts/ptmx".into()
                },
            }]
        );
    }

    #[test]
    fn the_pivot_detaches_the_old_root_at_once_or_covers_it_until_after_ready() {
        let step = MountStep::PivotRoot {
            new_root: "/r".into(),
        };
        let head = [
            mkdir("/r/.oldroot"),
            Call::PivotRoot {
                new_root: "/r".into(),
                put_old: "/r/.oldroot".into(),
            },
            Call::Chdir { path: "/".into() },
        ];
        let sticky = Call::MakeSticky {
            path: "/tmp".into(),
        };
        let now = only_calls(calls(&step, false, false));
        assert_eq!(now[..3], head);
        assert_eq!(
            now[3..],
            [
                Call::Unmount {
                    target: "/.oldroot".into(),
                    flags: MntFlags::MNT_DETACH,
                },
                Call::RemoveDir {
                    path: "/.oldroot".into()
                },
                sticky.clone(),
            ]
        );
        let deferred = calls(&step, true, false);
        assert_eq!(only_calls(deferred.clone())[..3], head);
        assert_eq!(
            only_calls(deferred.clone())[3..],
            [
                mount(
                    Some("tmpfs"),
                    "/.oldroot",
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC,
                    Some("size=4k,mode=000")
                ),
                sticky,
            ]
        );
        assert_eq!(deferred[3].what, "cover old root");

        // After ready: the cover, the old root, its dir; nothing unless deferred and pivoted.
        let after = deferred_detach(true, std::slice::from_ref(&step)).unwrap();
        let whats: Vec<&str> = after.iter().map(|p| p.what.as_str()).collect();
        assert_eq!(
            whats,
            ["detach cover", "detach old root", "remove old root dir"]
        );
        assert_eq!(after[0].call, after[1].call);
        assert_eq!(deferred_detach(false, std::slice::from_ref(&step)), None);
        assert_eq!(deferred_detach(true, &[MountStep::MakePrivate]), None);
    }

    #[test]
    fn a_read_only_remount_keeps_exactly_the_locked_flags() {
        assert_eq!(locked(FsFlags::empty()), MsFlags::empty());
        assert_eq!(
            locked(FsFlags::ST_RDONLY | FsFlags::ST_NOSUID | FsFlags::ST_RELATIME),
            MsFlags::MS_NOSUID | MsFlags::MS_RELATIME
        );
        assert_eq!(
            locked(
                FsFlags::ST_NOSUID
                    | FsFlags::ST_NODEV
                    | FsFlags::ST_NOEXEC
                    | FsFlags::ST_NOATIME
                    | FsFlags::ST_NODIRATIME
            ),
            MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC
                | MsFlags::MS_NOATIME
                | MsFlags::MS_NODIRATIME
        );
    }

    #[test]
    fn a_whole_sliver_plan_makes_every_mount_point_before_mounting_on_it() {
        use crate::sliver::rootfs::{Image, PlanOptions, SliverDirs, mount_plan};
        let dirs = SliverDirs::new(Path::new("/state"), "s1");
        let image = Image::HostSystem {
            skeleton: "/state/skeleton".into(),
            binds: vec!["/usr".into()],
        };
        let opts = PlanOptions {
            tmp_bytes: 1 << 20,
            host_proc: false,
            upper_tmpfs_bytes: None,
        };
        let steps = mount_plan(&dirs, &image, &opts);
        let all: Vec<Call> = steps
            .iter()
            .flat_map(|s| calls(s, true, true))
            .map(|p| p.call)
            .collect();
        let made = |upto: usize, target: &Path| {
            all[..upto].iter().any(|c| match c {
                Call::MakeDir { path } => path == target,
                Call::CreateFile { path } => path == target,
                _ => false,
            })
        };
        let mut mounts = 0;
        for (i, call) in all.iter().enumerate() {
            if let Call::Mount { target, .. } = call {
                mounts += 1;
                // `/` exists, the host made the rootfs dir, and the cover goes on put_old.
                let premade = [Path::new("/"), dirs.rootfs.as_path(), Path::new(OLD_ROOT)];
                assert!(
                    premade.contains(&target.as_path()) || made(i, target),
                    "{} mounted before it was made",
                    target.display()
                );
            }
        }
        assert!(mounts > 10, "{mounts}");
        assert!(matches!(all.last(), Some(Call::MakeSticky { .. })));
    }
}
