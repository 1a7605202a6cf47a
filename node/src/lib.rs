//! `node`: the node manager's library — see docs/ARCHITECTURE.md.
//!
//! [`sliver`] is the isolation engine: it turns an admitted grant into an isolated Linux context
//! (user, pid, mount, uts, ipc, net and cgroup namespaces over an overlay root, with cgroup
//! limits, a shaped veth and a reduced capability set) and takes it down again.

pub mod sliver;
