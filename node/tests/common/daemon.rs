//! A node manager with real slivers for root tests: unique names, a test federation, an
//! agent the node delegates to, tickets minted for any principal, and a drop guard that
//! destroys what the daemon left.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use capability_schema::identity::{SecretKey, test_key};
use capability_schema::protocol::{NodeRequest, NodeResponse, TicketBytes};
use capability_schema::ticket::{Operation, Ticket, TicketSpec, Window};
use capability_schema::{Lease, Resources, SliceKind, codec};
use federation::overlay::NodeProtocol;
use federation::testing::TestFederation;
use federation::{OverlayHandle, unix_now};
use node::daemon::config::NodeManagerConfig;
use node::daemon::run::RunningNode;
use node::sliver::linux::LinuxHost;
use node::sliver::{NodeConfig, Slivers};

use super::principal_overlay;

/// Every wait of these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(60);

/// Awaits `f`, failing the test past [`WAIT`].
pub async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// Destroys whatever slivers the daemon left (it leaves them running by design), its shaping
/// device and cgroup parent, even when the test fails.
pub struct Cleanup {
    pub engine: NodeConfig,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match LinuxHost::detect().map(|h| Slivers::open(h, self.engine.clone())) {
            Ok(Ok((slivers, _))) => {
                if let Err(e) = slivers.destroy_all() {
                    eprintln!("cleanup: {e}");
                }
                // The daemon made its own parent, `<node id>.node`, below the configured one.
                let (cgroups, parent) = (slivers.host().cgroups(), &self.engine.cgroup_parent);
                for own in cgroups.children(parent) {
                    let _ = cgroups.remove_parent(&format!("{parent}/{own}"));
                }
                let _ = cgroups.remove_parent(parent);
            }
            Ok(Err(e)) => eprintln!("cleanup: {e}"),
            Err(e) => eprintln!("cleanup: {e}"),
        }
    }
}

/// A running node manager with Linux isolation.
pub struct LinuxNode {
    pub running: RunningNode,
    pub shutdown: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    pub key: SecretKey,
    pub agent: SecretKey,
    pub federation: TestFederation,
    // Dropped after the daemon: slivers go, then the state dir.
    _cleanup: Cleanup,
    _dir: tempfile::TempDir,
}

impl LinuxNode {
    /// Starts a node of federation `plc` delegating 2 cores and 1 GiB to one agent.
    pub async fn start(prefix: &str) -> LinuxNode {
        Self::start_with(prefix, "").await
    }

    /// Like [`LinuxNode::start`], with `extra` lines of `node.toml` (top-level settings).
    pub async fn start_with(prefix: &str, extra: &str) -> LinuxNode {
        let r: u32 = rand::random();
        let tag = format!("{:04x}", r & 0xffff);
        let pool = Ipv4Addr::new(10, 150 + (r >> 16) as u8 % 40, (r >> 8) as u8, 0);
        let dir = tempfile::Builder::new()
            .prefix("pmdaemon-")
            .tempdir()
            .unwrap();
        let mut engine = NodeConfig::new(
            dir.path().join("state/slivers"),
            env!("CARGO_BIN_EXE_sliver-init"),
        );
        engine.cgroup_parent = format!("{prefix}{tag}");
        engine.slots.ifname_prefix = format!("{prefix}{tag}");
        engine.shaping.ifb = format!("{prefix}{tag}ifb");
        engine.slots.pool = pool;
        engine.slots.pool_prefix = 24;
        // The daemon keeps a firewall table; the cleanup's engine names the same one.
        engine.network = Some(node::sliver::firewall::Policy {
            uplink: None,
            icmp_per_sec: node::sliver::firewall::DEFAULT_ICMP_PER_SEC,
            ports: None,
        });
        // No egress unless a test asks for it: the daemon runs in the test machine's own
        // network namespace.
        let egress = if extra.contains("public_address") {
            ""
        } else {
            "public_address = \"off\"\n"
        };
        let cleanup = Cleanup {
            engine: engine.clone(),
        };
        let mut federation = TestFederation::new("plc", 100);
        let key = SecretKey::generate();
        let agent = test_key(20);
        key.save(&dir.path().join("node.key")).unwrap();
        let cert = federation.node_with_key(key.clone(), "princeton").cert;
        std::fs::write(dir.path().join("membership.cbor"), codec::encode(&cert)).unwrap();
        let config_text = format!(
            "federation = \"plc\"\nisolation = \"linux\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n\
             http = \"127.0.0.1:0\"\ncapacity = \"cpu=2 cores,memory=2GiB,disk=10GiB,egress=100Mbit\"\n\
             ad_interval_secs = 1\nad_ttl_secs = 30\ncgroup_parent = \"{}\"\nifname_prefix = \"{}\"\n\
             address_pool = \"{pool}/24\"\nclaim_dir = \"claims\"\ndisk_backing = \"directory\"\n{egress}{extra}[[trust]]\nname = \"plc\"\nauthority = \"{}\"\n\
             [[delegations]]\nagent = \"{}\"\nshare = \"cpu=2 cores,memory=1GiB,disk=5GiB,egress=50Mbit\"\n",
            engine.cgroup_parent,
            engine.slots.ifname_prefix,
            federation.authority.public(),
            agent.public()
        );
        std::fs::write(dir.path().join("node.toml"), config_text).unwrap();
        let config = NodeManagerConfig::load(&dir.path().join("node.toml")).unwrap();
        let (running, shutdown) = within(node::daemon::run::start(config)).await.unwrap();
        LinuxNode {
            running,
            shutdown: Some(Box::pin(shutdown)),
            key,
            agent,
            federation,
            _cleanup: cleanup,
            _dir: dir,
        }
    }

    /// A principal's overlay joined through this node.
    pub async fn principal(&self, key: &SecretKey) -> OverlayHandle {
        let addr = self.running.overlay.listen_addrs().await.unwrap()[0].clone();
        principal_overlay(key, &self.federation, addr).await
    }

    /// A ticket for a small regular sliver of `slice`, held by `holder`.
    pub fn ticket(&self, slice: &str, holder: &SecretKey) -> TicketBytes {
        self.ticket_with(
            slice,
            holder,
            Resources {
                cpu_millis: 100,
                memory_bytes: 64 << 20,
                disk_bytes: 16 << 20,
                egress_kbps: 1000,
                ports: 0,
            },
        )
    }

    /// A ticket for a regular sliver of `slice` with `resources`, held by `holder`.
    pub fn ticket_with(
        &self,
        slice: &str,
        holder: &SecretKey,
        resources: Resources,
    ) -> TicketBytes {
        let now = unix_now();
        let spec = TicketSpec {
            federation: "plc".into(),
            node: self.key.public(),
            slice: slice.into(),
            kind: SliceKind::Regular,
            resources,
            window: Window::new(now - 5, now + 600),
            holder: holder.public(),
            operations: BTreeSet::from([Operation::Redeem]),
            net: Default::default(),
        };
        TicketBytes(
            Ticket::mint(&self.agent, &spec)
                .unwrap()
                .to_bytes()
                .unwrap(),
        )
    }

    /// Redeems `ticket` as the principal of `client`.
    pub async fn redeem_ticket(&self, client: &OverlayHandle, ticket: TicketBytes) -> Lease {
        let redeem = NodeRequest::Redeem {
            ticket,
            until: None,
        };
        match within(client.request::<NodeProtocol>(&self.key.public(), redeem, WAIT))
            .await
            .unwrap()
        {
            NodeResponse::Lease(lease) => lease.verify_by(&self.key.public()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// Redeems a ticket for `slice` as `holder` through `client`.
    pub async fn redeem(&self, client: &OverlayHandle, slice: &str, holder: &SecretKey) -> Lease {
        self.redeem_ticket(client, self.ticket(slice, holder)).await
    }

    /// The name of the node's firewall table (family `inet`).
    pub fn firewall_table(&self) -> String {
        format!("planetmesh_{}", self._cleanup.engine.slots.ifname_prefix)
    }

    /// Shuts the daemon down as SIGTERM does, keeping the fixture (and its drop guard) alive.
    pub async fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            within(shutdown).await;
        }
    }

    /// Stops the daemon (its slivers go with the drop guard).
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            within(shutdown).await;
        }
    }
}
