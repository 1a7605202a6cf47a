//! A local testnet in this process: two federations (`plc`, `ple`) that peer with each other,
//! one agent each, nodes with `isolation = "memory"` (slivers exist in the ledger; exec runs
//! nothing and answers so), one broker. Every daemon is the real one (`agentd`, `nodemgr`, `broker`
//! started through their `run::start`) on 127.0.0.1 TCP; only the process is shared.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use agentd::daemon::config::AgentConfig;
use agentd::daemon::run::RunningAgent;
use broker::daemon::config::BrokerConfig;
use broker::daemon::run::RunningBroker;
use capability_schema::membership::{PeeringLimits, PrincipalFilter};
use capability_schema::{PublicKey, Role, SecretKey, codec};
use federation::testing::{CERT_VALIDITY, TestFederation};
use node::daemon::config::NodeManagerConfig;
use node::daemon::run::RunningNode;
use slicectl::client::{Endpoints, Session, Settings};
use slicectl::config::{Identity, TrustedFederation};
use slicectl::ops::{Manager, Progress};
use slicectl::state::State;

/// Every await in these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(120);

/// The longest one remote call may take. Generous: tickets are biscuit tokens, and minting
/// and verifying them in a debug build on a loaded machine takes a while.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Awaits `f` for at most [`WAIT`].
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A node daemon that can be stopped and started again on the same state and port.
pub struct TestNodeDaemon {
    pub key: PublicKey,
    pub federation: String,
    pub site: String,
    pub config: NodeManagerConfig,
    pub running: Option<RunningNode>,
    shutdown: Option<Shutdown>,
}

impl TestNodeDaemon {
    pub async fn start(&mut self) {
        let (running, shutdown) = within(node::daemon::run::start(self.config.clone()))
            .await
            .expect("node starts");
        self.running = Some(running);
        self.shutdown = Some(Box::pin(shutdown));
    }

    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            within(shutdown).await;
        }
        self.running = None;
    }

    /// Active leases in the node's ledger.
    pub fn leases(&self) -> Vec<capability_schema::Lease> {
        self.running
            .as_ref()
            .expect("running")
            .state
            .service
            .ledger()
            .leases()
            .expect("ledger")
            .into_iter()
            .map(|r| r.lease)
            .collect()
    }
}

pub struct TestAgentDaemon {
    pub key: PublicKey,
    pub federation: String,
    pub addr: String,
    pub running: RunningAgent,
    shutdown: Option<Shutdown>,
}

pub struct Testnet {
    pub dir: tempfile::TempDir,
    pub plc: TestFederation,
    pub ple: TestFederation,
    pub agents: Vec<TestAgentDaemon>,
    pub nodes: Vec<TestNodeDaemon>,
    pub broker: RunningBroker,
    pub broker_addr: String,
    broker_shutdown: Option<Shutdown>,
    /// The principal: a member of plc at site `plc-site0`, so slices are `plc-site0_*`.
    pub principal: SecretKey,
    pub principal_key_file: PathBuf,
    pub principal_cert_file: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn trust_toml(feds: &[&TestFederation]) -> String {
    feds.iter()
        .map(|f| {
            format!(
                "[[trust]]\nname = \"{}\"\nauthority = \"{}\"\n",
                f.name(),
                f.authority.public()
            )
        })
        .collect()
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

impl Testnet {
    /// Starts agents, `per_federation` nodes per federation, a broker; waits until every
    /// agent has every node of its federation in its inventory.
    pub async fn start(per_federation: usize) -> Testnet {
        static LOGS: std::sync::Once = std::sync::Once::new();
        if std::env::var_os("RUST_LOG").is_some() {
            LOGS.call_once(|| federation::daemon::init_tracing(false));
        }
        let dir = tempfile::tempdir().unwrap();
        let mut plc = TestFederation::new("plc", 100);
        let mut ple = TestFederation::new("ple", 101);
        let trust = trust_toml(&[&plc, &ple]);

        // Agents, each with the agreement its federation signed for the other.
        let mut agents = Vec::new();
        for fed in ["plc", "ple"] {
            let adir = dir.path().join(format!("agent-{fed}"));
            let key = SecretKey::generate();
            key.save(&adir.join("agent.key")).unwrap_or_else(|_| {
                std::fs::create_dir_all(&adir).unwrap();
                key.save(&adir.join("agent.key")).unwrap()
            });
            let (own, other) = if fed == "plc" {
                (&mut plc, &ple)
            } else {
                (&mut ple, &plc)
            };
            let cert = own.certify(&key, Role::Agent);
            write(&adir.join("membership.cbor"), codec::encode(&cert));
            let agreement = own.authority.peer(
                other.name(),
                other.authority.public(),
                &[Role::Principal, Role::Broker],
                PrincipalFilter::All,
                PeeringLimits::default(),
                CERT_VALIDITY,
            );
            write(&adir.join("peering.cbor"), codec::encode(&agreement));
            write(
                &adir.join("policy.toml"),
                "[default_quota]\nmax_slivers = 1000\n",
            );
            write(
                &adir.join("agent.toml"),
                format!(
                    "federation = \"{fed}\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nhttp = \"\"\n\
                     policy = \"policy.toml\"\npeering = [\"peering.cbor\"]\n{trust}"
                ),
            );
            let config = AgentConfig::load(&adir.join("agent.toml")).unwrap();
            let (running, shutdown) = within(agentd::daemon::run::start(config)).await.unwrap();
            let addr = running.overlay.listen_addrs().await.unwrap()[0].to_string();
            agents.push(TestAgentDaemon {
                key: key.public(),
                federation: fed.into(),
                addr,
                running,
                shutdown: Some(Box::pin(shutdown)),
            });
        }

        // Nodes, bootstrapping to their federation's agent.
        let mut nodes = Vec::new();
        for (fed_index, agent) in agents.iter().enumerate() {
            for i in 0..per_federation {
                let fed = agent.federation.clone();
                let site = format!("{fed}-site{i}");
                let ndir = dir.path().join(format!("node-{fed}-{i}"));
                std::fs::create_dir_all(&ndir).unwrap();
                let key = SecretKey::generate();
                key.save(&ndir.join("node.key")).unwrap();
                let f = if fed_index == 0 { &mut plc } else { &mut ple };
                let cert = f.node_with_key(key.clone(), &site).cert;
                write(&ndir.join("membership.cbor"), codec::encode(&cert));
                // No heartbeats: these nodes live by their ads' TTL, as nodes that predate
                // heartbeats do, so a stopped node is still planned (the redeem path's tests);
                // heartbeats and silent nodes are tested on real daemons
                // (testnet/scenarios/node-killed.toml).
                let text = format!(
                    "federation = \"{fed}\"\nisolation = \"memory\"\nlisten = [\"/ip4/127.0.0.1/tcp/{}\"]\n\
                     http = \"\"\nbootstrap = [\"{}\"]\n\
                     capacity = \"cpu=4 cores,memory=4GiB,disk=10GiB,egress=100Mbit\"\n\
                     ad_interval_secs = 1\nad_ttl_secs = 120\nheartbeat_interval_secs = 0\n{trust}\
                     [[delegations]]\nagent = \"{}\"\nshare = \"cpu=2 cores,memory=2GiB,disk=5GiB,egress=50Mbit\"\n",
                    free_port(),
                    agent.addr,
                    agent.key
                );
                write(&ndir.join("node.toml"), text);
                let config = NodeManagerConfig::load(&ndir.join("node.toml")).unwrap();
                let mut node = TestNodeDaemon {
                    key: key.public(),
                    federation: fed,
                    site,
                    config,
                    running: None,
                    shutdown: None,
                };
                node.start().await;
                nodes.push(node);
            }
        }

        // The broker.
        let bdir = dir.path().join("broker");
        std::fs::create_dir_all(&bdir).unwrap();
        SecretKey::generate()
            .save(&bdir.join("broker.key"))
            .unwrap();
        let agents_toml: String = agents
            .iter()
            .map(|a| {
                format!(
                    "[[agents]]\nkey = \"{}\"\naddress = \"{}\"\nfederation = \"{}\"\n",
                    a.key, a.addr, a.federation
                )
            })
            .collect();
        write(
            &bdir.join("broker.toml"),
            format!(
                "federation = \"plc\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nhttp = \"127.0.0.1:0\"\n\
                 follow = [\"plc\", \"ple\"]\ndiscover_agents = false\ncall_timeout_secs = {}\n{trust}{agents_toml}",
                CALL_TIMEOUT.as_secs()
            ),
        );
        let config = BrokerConfig::load(&bdir.join("broker.toml")).unwrap();
        let (broker, broker_shutdown) = within(broker::daemon::run::start(config)).await.unwrap();
        let broker_addr = broker.overlay.listen_addrs().await.unwrap()[0].to_string();

        // The principal.
        let principal = SecretKey::generate();
        let principal_key_file = dir.path().join("principal/principal.key");
        std::fs::create_dir_all(principal_key_file.parent().unwrap()).unwrap();
        principal.save(&principal_key_file).unwrap();
        let cert = plc.authority.certify(
            principal.public(),
            Role::Principal,
            "plc-site0",
            "alice",
            CERT_VALIDITY,
        );
        let principal_cert_file = dir.path().join("principal/membership.cbor");
        write(&principal_cert_file, codec::encode(&cert));

        let net = Testnet {
            dir,
            plc,
            ple,
            agents,
            nodes,
            broker,
            broker_addr,
            broker_shutdown: Some(Box::pin(broker_shutdown)),
            principal,
            principal_key_file,
            principal_cert_file,
        };
        net.wait_for_inventories().await;
        net
    }

    /// Waits until each agent offers every node of its federation.
    pub async fn wait_for_inventories(&self) {
        within(async {
            loop {
                let complete = self.agents.iter().all(|a| {
                    let want = self
                        .nodes
                        .iter()
                        .filter(|n| n.federation == a.federation && n.running.is_some())
                        .count();
                    let now = federation::unix_now();
                    a.running.state.agent.with_inventory(|inv| {
                        inv.expire(now);
                        inv.len()
                    }) >= want
                });
                if complete {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }

    pub fn trust(&self) -> Vec<TrustedFederation> {
        [&self.plc, &self.ple]
            .iter()
            .map(|f| TrustedFederation {
                name: f.name().to_owned(),
                authority: f.authority.public(),
            })
            .collect()
    }

    pub fn identity(&self) -> Identity {
        Identity::load(&self.principal_key_file, Some(&self.principal_cert_file)).unwrap()
    }

    /// A slicectl manager talking to the broker (or, with `integrated`, to the agents).
    pub async fn manager(&self, state_dir: &Path, integrated: bool) -> Manager {
        let endpoints = if integrated {
            Endpoints {
                agents: self.agents.iter().map(|a| a.addr.clone()).collect(),
                trust: self.trust(),
                ..Endpoints::default()
            }
        } else {
            Endpoints {
                brokers: vec![self.broker_addr.clone()],
                ..Endpoints::default()
            }
        };
        let settings = Settings {
            timeout: CALL_TIMEOUT,
            concurrency: 32,
        };
        let session = within(Session::connect(self.identity(), &endpoints, settings))
            .await
            .unwrap();
        Manager {
            session,
            state: State::open(state_dir).unwrap(),
            progress: Progress { visible: false },
        }
    }

    /// Writes a slicectl.toml for the CLI.
    pub fn cli_config(&self, state_dir: &Path, integrated: bool) -> PathBuf {
        let path = self.dir.path().join(if integrated {
            "slicectl-agents.toml"
        } else {
            "slicectl-broker.toml"
        });
        let how = if integrated {
            let agents: Vec<String> = self
                .agents
                .iter()
                .map(|a| format!("{:?}", a.addr))
                .collect();
            format!("agents = [{}]\n", agents.join(", "))
        } else {
            format!("broker = {:?}\n", self.broker_addr)
        };
        write(
            &path,
            format!(
                "key_file = {:?}\nmembership = {:?}\nstate_dir = {:?}\ntimeout_secs = {}\n{how}{}",
                self.principal_key_file,
                self.principal_cert_file,
                state_dir,
                CALL_TIMEOUT.as_secs(),
                trust_toml(&[&self.plc, &self.ple])
            ),
        );
        path
    }

    /// Every active lease on every running node.
    pub fn all_leases(&self) -> Vec<capability_schema::Lease> {
        self.nodes
            .iter()
            .filter(|n| n.running.is_some())
            .flat_map(TestNodeDaemon::leases)
            .collect()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.broker_shutdown.take() {
            within(s).await;
        }
        for n in &mut self.nodes {
            n.stop().await;
        }
        for a in &mut self.agents {
            if let Some(s) = a.shutdown.take() {
                within(s).await;
            }
        }
    }
}
