//! The kernel's control files (procfs, cgroupfs) written for [`super::LinuxHost`]: what
//! [`super::plan::init_writes`] plans for a cloned init, written in order.

use std::fs;

use crate::sliver::cgroup::CgroupError;
use crate::sliver::host::HostError;

use super::io_err;
use super::plan::InitWrite;

/// Writes `writes` in order, stopping at the first that fails: an id map's failure is an I/O
/// error on its file, a `cgroup.procs` file's a cgroup error naming the pid.
pub(super) fn write(writes: &[InitWrite]) -> Result<(), HostError> {
    for w in writes {
        match w {
            InitWrite::IdMap { path, line } => {
                fs::write(path, line).map_err(io_err("write", path))?
            }
            InitWrite::Cgroup { path, pid } => {
                fs::write(path, pid).map_err(|source| CgroupError::Write {
                    path: path.clone(),
                    value: pid.clone(),
                    source,
                })?
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn id_map(dir: &Path, file: &str) -> InitWrite {
        InitWrite::IdMap {
            path: dir.join(file),
            line: "0 100000 65536\n".into(),
        }
    }

    fn procs(dir: &Path) -> InitWrite {
        InitWrite::Cgroup {
            path: dir.join("cgroup.procs"),
            pid: "4242".into(),
        }
    }

    #[test]
    fn writes_land_in_order_and_the_first_failure_stops_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let (proc, cg) = (tmp.path().join("4242"), tmp.path().join("cg"));
        fs::create_dir_all(&proc).unwrap();
        fs::create_dir_all(&cg).unwrap();
        write(&[
            id_map(&proc, "uid_map"),
            id_map(&proc, "gid_map"),
            procs(&cg),
        ])
        .unwrap();
        let read = |p: &Path| fs::read_to_string(p).unwrap();
        assert_eq!(read(&proc.join("uid_map")), "0 100000 65536\n");
        assert_eq!(read(&proc.join("gid_map")), "0 100000 65536\n");
        assert_eq!(read(&cg.join("cgroup.procs")), "4242");

        // A vanished init: its id map fails as I/O on the file, and no cgroup is written.
        let gone = tmp.path().join("4243");
        let later = tmp.path().join("later");
        fs::create_dir_all(&later).unwrap();
        let err = write(&[id_map(&gone, "uid_map"), procs(&later)]).unwrap_err();
        assert!(
            matches!(&err, HostError::Io { op: "write", path, .. } if *path == gone.join("uid_map")),
            "{err}"
        );
        assert!(!later.join("cgroup.procs").exists());

        // A missing cgroup: a cgroup error naming the file and the pid.
        let err = write(&[procs(&tmp.path().join("no-cgroup"))]).unwrap_err();
        assert!(
            matches!(&err, HostError::Cgroup(CgroupError::Write { path, value, .. })
                if *path == tmp.path().join("no-cgroup/cgroup.procs") && value == "4242"),
            "{err}"
        );
    }
}
