//! `node`: the node manager's library — see docs/ARCHITECTURE.md.
//!
//! [`sliver`] is the isolation engine: it turns an admitted grant into an isolated Linux context
//! (user, pid, mount, uts, ipc, net and cgroup namespaces over an overlay root, with cgroup
//! limits, a shaped veth and a reduced capability set) and takes it down again.
//!
//! [`admission`] decides whether a grant fits the issuing agent's share and the node's capacity;
//! [`ledger`] keeps leases and the ticket spend ledger durably (redb); [`daemon`] is the node
//! manager built on them.

pub mod admission;
pub mod daemon;
pub mod ledger;
pub mod sliver;
