//! Writing a testnet directory: federation authorities, keys, membership certificates,
//! peering agreements and one config per host, plus the principal a newcomer acts as.
//!
//! ```text
//! DIR/
//!   testnet.toml           what was generated (topology, hosts, addresses)
//!   authorities/fedN/      authority key and state (fedctl's layout)
//!   peering/fedA-fedB.cbor agreement: fedA serves principals and brokers of fedB
//!   hosts/NAME/            key, membership.cbor, node.toml | agent.toml | broker.toml, logs
//!   principal/             principal.key, membership.cbor
//!   internet/              the internet host's pid and log (namespaced testnets)
//! ```
//!
//! Addresses: on loopback every host is 127.0.0.1 with ports of its own; on a namespaced
//! testnet host `n` is `10.250.<n / 250>.<n % 250 + 2>` on a bridge holding 10.250.0.1, and
//! the internet host ([`crate::internet`]) is 10.250.255.254, which no host gets. Each node
//! names its own address as `public_address` (its slivers' traffic leaves with it); on
//! loopback nodes give slivers no egress (`public_address = "off"`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use capability_schema::membership::{PeeringLimits, PrincipalFilter};
use capability_schema::{PublicKey, Role, SecretKey, codec};
use federation::trust::Validity;
use federation::{Authority, unix_now};
use serde::{Deserialize, Serialize};

use crate::topology::{HostPlan, HostRole, Topology, federation_name};

/// Per-node capacity in a testnet (small, so several fit on one machine).
pub const NODE_CAPACITY: &str = "cpu=2 cores,memory=2GiB,disk=4GiB,egress=100Mbit";

/// How hosts reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// Every host on 127.0.0.1 with its own ports (no root needed).
    Loopback,
    /// Every host in its own network namespace on a bridge (root).
    Namespaces,
}

/// A generated host: its plan plus keys and addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The plan.
    #[serde(flatten)]
    pub plan: HostPlan,
    /// Its public key.
    pub key: PublicKey,
    /// Its directory.
    pub dir: PathBuf,
    /// Its IPv4 address (127.0.0.1 on loopback).
    pub ip: String,
    /// Its libp2p port.
    pub p2p_port: u16,
    /// Its HTTP port.
    pub http_port: u16,
    /// Its network namespace (namespaces mode).
    pub netns: Option<String>,
}

impl HostInfo {
    /// Its libp2p address with `/p2p/<peer id>`.
    pub fn multiaddr(&self) -> String {
        format!(
            "/ip4/{}/tcp/{}/p2p/{}",
            self.ip,
            self.p2p_port,
            federation::overlay::peer_id(&self.key)
        )
    }

    /// Its HTTP base URL.
    pub fn http_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.http_port)
    }

    /// Its config file.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join(match self.plan.role {
            HostRole::Node => "node.toml",
            HostRole::Agent => "agent.toml",
            HostRole::Broker => "broker.toml",
        })
    }

    /// Its log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
}

/// The host standing for the Internet on a namespaced testnet ([`crate::internet`]): its
/// own network namespace on the bridge, running `testnet internet-host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InternetHost {
    /// Its network namespace (`pmtn-<tag>-inet`).
    pub netns: String,
    /// Its address on the bridge ([`crate::internet::ADDRESS`]).
    pub ip: String,
    /// Its HTTP port.
    pub http_port: u16,
    /// Its UDP echo port.
    pub udp_port: u16,
    /// Its directory (`DIR/internet`: pid file and log).
    pub dir: PathBuf,
}

impl InternetHost {
    /// The name it goes by in `status` and the dashboard.
    pub const NAME: &'static str = "internet";

    /// The internet host of testnet `tag` in `testnet_dir`.
    fn new(testnet_dir: &Path, tag: &str) -> InternetHost {
        InternetHost {
            netns: format!("pmtn-{tag}-inet"),
            ip: crate::internet::ADDRESS.to_owned(),
            http_port: crate::internet::HTTP_PORT,
            udp_port: crate::internet::UDP_PORT,
            dir: testnet_dir.join("internet"),
        }
    }

    /// Its HTTP URL.
    pub fn url(&self) -> String {
        if self.http_port == 80 {
            format!("http://{}/", self.ip)
        } else {
            format!("http://{}:{}/", self.ip, self.http_port)
        }
    }

    /// The testnet's directory, which its command line names.
    pub fn testnet_dir(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// Its log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
}

/// What a testnet directory holds (`testnet.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The topology.
    pub topology: Topology,
    /// How hosts are connected.
    pub network: Network,
    /// Node isolation (`linux` or `memory`).
    pub isolation: String,
    /// Federation authorities.
    pub federations: Vec<FederationInfo>,
    /// Every host.
    pub hosts: Vec<HostInfo>,
    /// The principal's key.
    pub principal: PublicKey,
    /// Unique tag of this testnet (names of namespaces, links, cgroups).
    pub tag: String,
    /// The internet host (namespaced testnets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet: Option<InternetHost>,
}

/// A federation of the testnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationInfo {
    /// Its name.
    pub name: String,
    /// Its authority key.
    pub authority: PublicKey,
}

impl Manifest {
    /// Reads `DIR/testnet.toml`.
    pub fn load(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join("testnet.toml");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no testnet in {} (run `testnet up --dir {}` first)",
                dir.display(),
                dir.display()
            )
        })?;
        toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> anyhow::Result<&HostInfo> {
        self.hosts
            .iter()
            .find(|h| h.plan.name == name)
            .with_context(|| {
                let names: Vec<&str> = self.hosts.iter().map(|h| h.plan.name.as_str()).collect();
                format!("no host {name:?}; hosts are {}", names.join(", "))
            })
    }

    /// Hosts of one role.
    pub fn of_role(&self, role: HostRole) -> impl Iterator<Item = &HostInfo> {
        self.hosts.iter().filter(move |h| h.plan.role == role)
    }
}

/// The node manager's default `public_ports` (ports forwarded to slivers), which every node of
/// a testnet keeps: a node that forwards them refuses to start with its own listen or HTTP
/// port in it, so loopback ports are picked outside it, though loopback nodes forward nothing
/// (`loopback_ports_avoid_the_node_public_ports` pins it to what `nodemgr` refuses).
const NODE_PUBLIC_PORTS: std::ops::RangeInclusive<u16> = 40000..=41023;

/// A free TCP port on 127.0.0.1 outside [`NODE_PUBLIC_PORTS`] (the OS picks; released at
/// once).
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..64 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if !NODE_PUBLIC_PORTS.contains(&port) {
            return Ok(port);
        }
    }
    anyhow::bail!(
        "the OS gave 64 ports in a row inside {}-{} (nodes' public ports); try again",
        NODE_PUBLIC_PORTS.start(),
        NODE_PUBLIC_PORTS.end()
    )
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

fn trust_section(federations: &[FederationInfo]) -> String {
    federations
        .iter()
        .map(|f| {
            format!(
                "[[trust]]\nname = {:?}\nauthority = \"{}\"\n",
                f.name, f.authority
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The cgroup parent under which every node of testnet `tag` makes its own (`testnet down`
/// removes the whole tree).
pub fn cgroup_base(tag: &str) -> String {
    format!("planetmesh-tn{tag}")
}

/// A node's share of the machine in its config: each node of the testnet has a cgroup parent,
/// veth prefix, shaping device and uid range of its own, unique on the machine (other
/// testnets' nodes and real nodes included), which it claims when it starts.
fn node_share(tag: &str) -> String {
    format!(
        "# This node's own share of the machine, claimed in /run/planetmesh/claims when it starts:\n\
         # its slivers' cgroups go in <cgroup_parent>/<its id>.node; ifname_prefix and uid_base\n\
         # are left out: it derives its veth prefix from its key, and takes the first free uid\n\
         # range from the one its key picks.\n\
         cgroup_parent = {:?}",
        cgroup_base(tag)
    )
}

/// Host `n`'s address on a namespaced testnet's bridge: `10.250.<n / 250>.<n % 250 + 2>`, so
/// never the bridge's own 10.250.0.1 nor the internet host's 10.250.255.254.
fn namespaced_address(n: usize) -> String {
    format!("10.250.{}.{}", n / 250, n % 250 + 2)
}

/// A node's `public_address` line: on a namespaced testnet its own bridge address (where its
/// slivers' traffic leaves, with that source), on loopback `off` (a node on the machine's own
/// addresses gives its slivers no way out).
fn public_address(network: Network, host: &HostInfo) -> String {
    match network {
        Network::Namespaces => format!(
            "# Slivers' traffic leaves through this node's eth0 with this source address.\n\
             public_address = {:?}",
            host.ip
        ),
        Network::Loopback => {
            "# On loopback slivers get no egress.\npublic_address = \"off\"".to_owned()
        }
    }
}

/// The `[ssh]` section of a node: on namespaces, the SSH endpoint into slivers listens on the
/// node's address (`slicectl slice ssh` reaches it); on loopback slivers run nothing, so none.
fn ssh_section(network: Network, host: &HostInfo) -> String {
    match network {
        Network::Namespaces => format!(
            "\n# ssh -p 2222 SLICE@{0} lands in the slice's sliver (slicectl slice ssh).\n\
             [ssh]\nlisten = \"{0}:2222\"\n",
            host.ip
        ),
        Network::Loopback => String::new(),
    }
}

/// Generates a testnet in `dir` (which must not hold one).
pub fn generate(
    dir: &Path,
    topology: Topology,
    network: Network,
    isolation: &str,
) -> anyhow::Result<Manifest> {
    if dir.join("testnet.toml").exists() {
        anyhow::bail!(
            "{} holds a testnet already; `testnet down --dir {}` and remove it, or pick another --dir",
            dir.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let now = unix_now();
    let validity = Validity::days(now.saturating_sub(60), 30);
    let plans = topology.hosts()?;
    let tag: String = {
        let bytes: [u8; 3] = rand::random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };

    // Authorities and peering.
    let mut authorities: Vec<Authority> = (0..topology.federations)
        .map(|i| Authority::create(&federation_name(i)).map_err(anyhow::Error::from))
        .collect::<Result<_, _>>()?;
    for a in &authorities {
        a.save_new(&dir.join("authorities").join(a.name()), now)?;
    }
    let federations: Vec<FederationInfo> = authorities
        .iter()
        .map(|a| FederationInfo {
            name: a.name().to_owned(),
            authority: a.public(),
        })
        .collect();
    std::fs::create_dir_all(dir.join("peering"))?;
    let mut agreements: Vec<(String, PathBuf)> = Vec::new();
    for authority in &mut authorities {
        let own = authority.name().to_owned();
        for peer in federations.iter().filter(|f| f.name != own) {
            let signed = authority.peer(
                &peer.name,
                peer.authority,
                &[Role::Principal, Role::Broker],
                PrincipalFilter::All,
                PeeringLimits::default(),
                validity,
            );
            let path = dir
                .join("peering")
                .join(format!("{}-{}.cbor", authority.name(), peer.name));
            std::fs::write(&path, codec::encode(&signed))?;
            agreements.push((authority.name().to_owned(), path));
        }
    }

    // Hosts: keys, certificates, addresses.
    let mut hosts = Vec::new();
    for (n, plan) in plans.into_iter().enumerate() {
        let host_dir = dir.join("hosts").join(&plan.name);
        std::fs::create_dir_all(&host_dir)?;
        let key = SecretKey::generate();
        let key_file = match plan.role {
            HostRole::Node => "node.key",
            HostRole::Agent => "agent.key",
            HostRole::Broker => "broker.key",
        };
        key.save(&host_dir.join(key_file))?;
        let fed_index = federations
            .iter()
            .position(|f| f.name == plan.federation)
            .unwrap_or(0);
        let role = match plan.role {
            HostRole::Node => Role::Node,
            HostRole::Agent => Role::Agent,
            HostRole::Broker => Role::Broker,
        };
        let cert =
            authorities[fed_index].certify(key.public(), role, &plan.site, &plan.name, validity);
        std::fs::write(host_dir.join("membership.cbor"), codec::encode(&cert))?;
        let (ip, netns, p2p_port, http_port) = match network {
            Network::Loopback => ("127.0.0.1".to_owned(), None, free_port()?, free_port()?),
            Network::Namespaces => (
                namespaced_address(n),
                Some(format!("pmtn-{tag}-{n}")),
                4001,
                9180,
            ),
        };
        hosts.push(HostInfo {
            plan,
            key: key.public(),
            dir: host_dir,
            ip,
            p2p_port,
            http_port,
            netns,
        });
    }
    for a in &authorities {
        a.save_state(&dir.join("authorities").join(a.name()))?;
    }

    // Configs.
    let trust = trust_section(&federations);
    let seeds: Vec<String> = hosts
        .iter()
        .filter(|h| h.plan.role == HostRole::Node)
        .take(2)
        .map(HostInfo::multiaddr)
        .collect();
    let agent_keys: std::collections::BTreeMap<String, PublicKey> = hosts
        .iter()
        .filter(|h| h.plan.role == HostRole::Agent)
        .map(|h| (h.plan.name.clone(), h.key))
        .collect();
    for (n, host) in hosts.iter().enumerate() {
        let bootstrap: Vec<String> = seeds
            .iter()
            .filter(|s| **s != host.multiaddr())
            .cloned()
            .collect();
        let listen = format!(
            "/ip4/{}/tcp/{}",
            if network == Network::Loopback {
                "127.0.0.1"
            } else {
                "0.0.0.0"
            },
            host.p2p_port
        );
        let http = format!("{}:{}", host.ip, host.http_port);
        let common = format!(
            "federation = {:?}\nlisten = [{listen:?}]\nbootstrap = {}\nhttp = {http:?}\n",
            host.plan.federation,
            toml_list(&bootstrap)
        );
        let text = match host.plan.role {
            HostRole::Node => {
                let delegations: String = host
                    .plan
                    .delegates_to
                    .iter()
                    .map(|a| format!("[[delegations]]\nagent = \"{}\"\nshare = \"cpu=1500m,memory=1536MiB,disk=3GiB,egress=75Mbit\"\n", agent_keys[a]))
                    .collect::<Vec<_>>()
                    .join("\n");
                format!(
                    "# Generated by `testnet up`.\n{common}announce = [\"/ip4/{}/tcp/{}\"]\nisolation = {isolation:?}\n\
                     capacity = {NODE_CAPACITY:?}\nad_interval_secs = 2\nad_ttl_secs = 30\n\
                     {}\n{}\naddress_pool = \"10.{}.{}.0/24\"\n\n{trust}\n{delegations}{}",
                    host.ip,
                    host.p2p_port,
                    node_share(&tag),
                    public_address(network, host),
                    200 + n / 250,
                    n % 250,
                    ssh_section(network, host)
                )
            }
            HostRole::Agent => {
                let peering: Vec<String> = agreements
                    .iter()
                    .filter(|(fed, _)| *fed == host.plan.federation)
                    .map(|(_, p)| p.display().to_string())
                    .collect();
                format!(
                    "# Generated by `testnet up`.\n{common}peering = {}\n\n{trust}",
                    toml_list(&peering)
                )
            }
            HostRole::Broker => {
                let follow: Vec<String> = federations.iter().map(|f| f.name.clone()).collect();
                let agents: String = hosts
                    .iter()
                    .filter(|h| h.plan.role == HostRole::Agent)
                    .map(|h| {
                        format!(
                            "[[agents]]\nkey = \"{}\"\naddress = {:?}\nfederation = {:?}\n",
                            h.key,
                            h.multiaddr(),
                            h.plan.federation
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                format!(
                    "# Generated by `testnet up`.\n{common}follow = {}\n\n{trust}\n{agents}",
                    toml_list(&follow)
                )
            }
        };
        std::fs::write(host.config_file(), text)?;
    }

    // The principal: a member of fed0, site fed0-site0, so slices are named `fed0-site0_*`.
    let principal_dir = dir.join("principal");
    std::fs::create_dir_all(&principal_dir)?;
    let principal = SecretKey::generate();
    principal.save(&principal_dir.join("principal.key"))?;
    let cert = authorities[0].certify(
        principal.public(),
        Role::Principal,
        "fed0-site0",
        "testnet user",
        validity,
    );
    std::fs::write(principal_dir.join("membership.cbor"), codec::encode(&cert))?;
    authorities[0].save_state(&dir.join("authorities").join(authorities[0].name()))?;
    // Every broker: slicectl asks the one that last answered first and moves on when one is
    // down (a testnet with two brokers survives losing either).
    let brokers: Vec<String> = hosts
        .iter()
        .filter(|h| h.plan.role == HostRole::Broker)
        .map(HostInfo::multiaddr)
        .collect();
    let agents: Vec<String> = hosts
        .iter()
        .filter(|h| h.plan.role == HostRole::Agent)
        .map(HostInfo::multiaddr)
        .collect();
    let mut slicectl = format!(
        "# Generated by `testnet up`: slicectl --config {}/slicectl.toml ...\n",
        dir.display()
    );
    slicectl.push_str(
        "key_file = \"principal/principal.key\"\nmembership = \"principal/membership.cbor\"\n",
    );
    slicectl.push_str("state_dir = \"principal/state\"\n");
    if !brokers.is_empty() {
        slicectl.push_str(&format!("brokers = {}\n", toml_list(&brokers)));
    }
    slicectl.push_str(&format!(
        "agents = {}\nbootstrap = {}\n\n{trust}",
        toml_list(&agents),
        toml_list(&seeds)
    ));
    std::fs::write(dir.join("slicectl.toml"), slicectl)?;

    let internet = match network {
        Network::Namespaces => {
            let internet = InternetHost::new(&dir, &tag);
            std::fs::create_dir_all(&internet.dir)
                .with_context(|| format!("creating {}", internet.dir.display()))?;
            Some(internet)
        }
        Network::Loopback => None,
    };
    let manifest = Manifest {
        topology,
        network,
        isolation: isolation.to_owned(),
        federations,
        hosts,
        principal: principal.public(),
        tag,
        internet,
    };
    std::fs::write(dir.join("testnet.toml"), toml::to_string_pretty(&manifest)?)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_gets_a_share_of_the_machine_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = generate(
            dir.path(),
            Topology::default(),
            Network::Namespaces,
            "linux",
        )
        .unwrap();
        let mut pools = std::collections::BTreeSet::new();
        for host in manifest.of_role(HostRole::Node) {
            let text = std::fs::read_to_string(host.config_file()).unwrap();
            let config: toml::Table = toml::from_str(&text).unwrap();
            // The node makes its own parent below the testnet's, and derives its veth prefix
            // and uid range from its key: unique on the machine, claimed when it starts.
            assert_eq!(
                config["cgroup_parent"].as_str(),
                Some(cgroup_base(&manifest.tag).as_str())
            );
            assert!(!config.contains_key("ifname_prefix"), "{text}");
            assert!(!config.contains_key("uid_base"), "{text}");
            assert!(pools.insert(config["address_pool"].as_str().unwrap().to_owned()));
        }
        assert_eq!(pools.len(), 6);
    }

    /// Every config a testnet writes loads with its daemon's own loader (which refuses unknown
    /// settings), on both networks.
    fn load_every_config(manifest: &Manifest) {
        for host in &manifest.hosts {
            let path = host.config_file();
            let loaded = match host.plan.role {
                HostRole::Node => node::daemon::config::NodeManagerConfig::load(&path)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                HostRole::Agent => agentd::daemon::config::AgentConfig::load(&path)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                HostRole::Broker => broker::daemon::config::BrokerConfig::load(&path)
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = loaded {
                panic!("{}: {e}", path.display());
            }
        }
    }

    fn node_setting(host: &HostInfo, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(host.config_file()).unwrap();
        let config: toml::Table = toml::from_str(&text).unwrap();
        config.get(key).and_then(|v| v.as_str()).map(str::to_owned)
    }

    #[test]
    fn namespaced_nodes_egress_from_their_own_address_past_an_internet_host() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = generate(
            dir.path(),
            Topology::default(),
            Network::Namespaces,
            "linux",
        )
        .unwrap();
        load_every_config(&manifest);
        for node in manifest.of_role(HostRole::Node) {
            assert_eq!(
                node_setting(node, "public_address").as_deref(),
                Some(node.ip.as_str())
            );
        }
        let internet = manifest.internet.as_ref().expect("an internet host");
        assert_eq!(internet.ip, crate::internet::ADDRESS);
        assert_eq!(internet.netns, format!("pmtn-{}-inet", manifest.tag));
        assert!(manifest.hosts.iter().all(|h| h.ip != internet.ip));
        assert!(internet.dir.is_dir());
        assert_eq!(internet.testnet_dir(), dir.path().canonicalize().unwrap());
        // The manifest keeps it.
        assert_eq!(Manifest::load(dir.path()).unwrap(), manifest);
    }

    #[test]
    fn namespaced_nodes_run_an_ssh_endpoint_on_their_address_and_loopback_ones_none() {
        let load = |host: &HostInfo| {
            node::daemon::config::NodeManagerConfig::load(&host.config_file()).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let manifest = generate(
            dir.path(),
            Topology::default(),
            Network::Namespaces,
            "linux",
        )
        .unwrap();
        for node in manifest.of_role(HostRole::Node) {
            let listen = format!("{}:2222", node.ip).parse().unwrap();
            assert_eq!(load(node).ssh.listen, Some(listen));
        }
        let dir = tempfile::tempdir().unwrap();
        let manifest =
            generate(dir.path(), Topology::default(), Network::Loopback, "memory").unwrap();
        for node in manifest.of_role(HostRole::Node) {
            assert_eq!(load(node).ssh.listen, None);
        }
    }

    #[test]
    fn loopback_nodes_give_slivers_no_egress_and_have_no_internet_host() {
        let dir = tempfile::tempdir().unwrap();
        let manifest =
            generate(dir.path(), Topology::default(), Network::Loopback, "memory").unwrap();
        load_every_config(&manifest);
        for node in manifest.of_role(HostRole::Node) {
            assert_eq!(node_setting(node, "public_address").as_deref(), Some("off"));
        }
        assert_eq!(manifest.internet, None);
        let text = std::fs::read_to_string(dir.path().join("testnet.toml")).unwrap();
        assert!(!text.contains("internet"), "{text}");
    }

    #[test]
    fn loopback_ports_avoid_the_node_public_ports() {
        let dir = tempfile::tempdir().unwrap();
        let topology = Topology {
            federations: 1,
            nodes: 1,
            agents: 1,
            brokers: 0,
        };
        let manifest = generate(dir.path(), topology, Network::Loopback, "memory").unwrap();
        let node = manifest.host("node0").unwrap();
        let path = node.config_file();
        let text = std::fs::read_to_string(&path).unwrap();
        let http = format!("http = \"127.0.0.1:{}\"", node.http_port);
        assert!(text.contains(&http), "{text}");
        // A node that forwards its public ports (real slivers, a public address) refuses
        // exactly the ports of NODE_PUBLIC_PORTS as its own.
        let forwarding = text
            .replace("isolation = \"memory\"", "isolation = \"linux\"")
            .replace("public_address = \"off\"", "public_address = \"127.0.0.1\"");
        assert_ne!(forwarding, text);
        let start = *NODE_PUBLIC_PORTS.start();
        let end = *NODE_PUBLIC_PORTS.end();
        let load = |text: String| {
            std::fs::write(&path, text).unwrap();
            node::daemon::config::NodeManagerConfig::load(&path)
        };
        for (port, refused) in [
            (start - 1, false),
            (start, true),
            (end, true),
            (end + 1, false),
        ] {
            let moved = forwarding.replace(&http, &format!("http = \"127.0.0.1:{port}\""));
            let loaded = load(moved);
            assert_eq!(loaded.is_err(), refused, "port {port}: {loaded:?}");
        }
        // A loopback node as generated forwards nothing (public_address "off"), so it would
        // take them; the testnet's ports stay out of the range all the same, and every node
        // keeps the default range: two loopback nodes share no forwarded port.
        let as_generated = text.replace(&http, &format!("http = \"127.0.0.1:{start}\""));
        let loaded = load(as_generated);
        assert!(loaded.is_ok(), "{loaded:?}");
        assert!(!text.contains("public_ports"), "{text}");
        for _ in 0..200 {
            assert!(!NODE_PUBLIC_PORTS.contains(&free_port().unwrap()));
        }
    }

    #[test]
    fn no_host_ever_gets_the_bridges_or_the_internet_hosts_address() {
        // Every third octet a host can have.
        for n in 0..256 * 250 {
            let ip = namespaced_address(n);
            assert!(
                ip != crate::internet::ADDRESS && ip != "10.250.0.1",
                "host {n}: {ip}"
            );
        }
    }
}
