//! Slice networking, for real, as root: the node's firewall table lets slivers out through
//! the uplink with the node's address as source, fences them from the node and from each
//! other, limits their pings, and comes back when deleted by hand.
//!
//! Each test builds its own world of network namespaces: a "node" namespace (the engine runs
//! on a thread that joined it) with an uplink veth to an "internet" namespace. Everything is
//! uniquely named and removed by drop guards; no traffic leaves those namespaces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::time::Duration;

use common::{Fixture, root_or_skip, spec};
use node::sliver::ExecOutput;
use node::sliver::firewall::{Policy, PublicPorts, Uplink};
use node::sliver::host::ExecCommand;

/// Two namespaces joined by a veth: the node's (uplink `up0`, 10.251.<n>.2/24, default route
/// via the internet host) and the internet host's (10.251.<n>.1/24).
struct World {
    node_ns: String,
    inet_ns: String,
    node_addr: Ipv4Addr,
    inet_addr: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl World {
    fn new() -> World {
        let r: u32 = rand::random();
        let tag = format!("{:05x}", r & 0xfffff);
        let n = (r >> 20) as u8;
        let world = World {
            node_ns: format!("pmnet-{tag}-node"),
            inet_ns: format!("pmnet-{tag}-inet"),
            node_addr: Ipv4Addr::new(10, 251, n, 2),
            inet_addr: Ipv4Addr::new(10, 251, n, 1),
        };
        let (up, peer) = (format!("pmu{tag}"), format!("pmi{tag}"));
        ip(&["netns", "add", &world.node_ns]);
        ip(&["netns", "add", &world.inet_ns]);
        ip(&["link", "add", &up, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &up, "netns", &world.node_ns, "name", "up0"]);
        ip(&[
            "link",
            "set",
            &peer,
            "netns",
            &world.inet_ns,
            "name",
            "eth0",
        ]);
        let (node, inet) = (world.node_ns.as_str(), world.inet_ns.as_str());
        ip(&[
            "-n",
            node,
            "addr",
            "add",
            &format!("{}/24", world.node_addr),
            "dev",
            "up0",
        ]);
        ip(&[
            "-n",
            inet,
            "addr",
            "add",
            &format!("{}/24", world.inet_addr),
            "dev",
            "eth0",
        ]);
        for (ns, dev) in [(node, "up0"), (inet, "eth0"), (node, "lo"), (inet, "lo")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        ip(&[
            "-n",
            node,
            "route",
            "add",
            "default",
            "via",
            &world.inet_addr.to_string(),
        ]);
        world
    }

    /// Runs `f` on a thread that joined namespace `ns` (so does whatever it starts).
    fn within<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let fd = File::open(&path).expect("open netns");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// The node's network policy: its uplink, as `nodemgr` would find it.
    fn policy(&self, icmp_per_sec: u32) -> Policy {
        Policy {
            uplink: Some(Uplink {
                device: "up0".into(),
                address: self.node_addr,
            }),
            icmp_per_sec,
            ports: Some(PublicPorts {
                first: 42000,
                count: 6,
                per_sliver: 2,
            }),
        }
    }
}

/// An engine under `policy`; call it on a thread inside the node's namespace.
fn engine(policy: Policy) -> Option<Fixture> {
    Fixture::configured(|config| config.network = Some(policy))
}

impl Drop for World {
    fn drop(&mut self) {
        for ns in [&self.node_ns, &self.inet_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Waits for a spawned program on a thread of its own: a sliver's pid namespace ends only
/// once its last process is reaped, and this one's parent is the test.
fn reap(spawned: node::sliver::host::Spawned) {
    let mut child = spawned.child;
    std::thread::spawn(move || child.wait());
}

fn python(f: &Fixture, sliver: &str, program: &str) -> ExecOutput {
    let mut cmd = ExecCommand::new(["/usr/bin/python3", "-c", program]);
    cmd.timeout = Duration::from_secs(20);
    f.engine
        .exec(&common::id(sliver), &cmd)
        .expect("exec in sliver")
}

/// A Python program that tries a TCP connect to each `addr:port` (1 s each) and prints
/// `open` or `closed` per line.
fn probe_tcp(targets: &[(Ipv4Addr, u16)]) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|(a, p)| format!("('{a}',{p})"))
        .collect();
    format!(
        "import socket\n\
         for t in [{}]:\n\
         \ttry:\n\
         \t\tsocket.create_connection(t, timeout=1).close(); print('open')\n\
         \texcept OSError: print('closed')\n",
        list.join(",")
    )
}

/// The node namespace's table, as `nft` lists it (`None`: there is none).
fn table(ns: &str, name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "table", "inet", name])
        .output()
        .expect("run nft");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn slivers_reach_the_internet_with_the_nodes_address_over_tcp_and_udp() {
    if !root_or_skip() {
        return;
    }
    let world = World::new();
    let inet_addr = world.inet_addr;
    // The internet host: one TCP accept and one UDP datagram, each naming its source.
    let tcp = World::within(&world.inet_ns, move || {
        TcpListener::bind((inet_addr, 8080)).expect("bind tcp")
    });
    let udp = World::within(&world.inet_ns, move || {
        UdpSocket::bind((inet_addr, 8081)).expect("bind udp")
    });
    tcp.set_nonblocking(false).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let seen_tcp = std::thread::spawn(move || {
        let (mut conn, from) = tcp.accept().expect("accept");
        let mut line = String::new();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = conn.read_to_string(&mut line);
        (from, line)
    });
    let policy = world.policy(10);
    let out = World::within(&world.node_ns, move || {
        let f = engine(policy)?;
        f.engine.create(spec("egress")).expect("create");
        let out = python(
            &f,
            "egress",
            &format!(
                "import socket\n\
                 s=socket.create_connection(('{inet_addr}',8080),timeout=5); s.sendall(b'over tcp'); s.close()\n\
                 u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.sendto(b'over udp',('{inet_addr}',8081))\n"
            ),
        );
        Some(out)
    });
    let Some(out) = out else { return };
    assert!(out.success(), "{out:?}");
    let (from, line) = seen_tcp.join().unwrap();
    assert_eq!(
        (from.ip(), line.as_str()),
        (world.node_addr.into(), "over tcp")
    );
    let mut buf = [0u8; 64];
    let (n, from) = udp.recv_from(&mut buf).expect("the datagram arrives");
    assert_eq!(
        (from.ip(), &buf[..n]),
        (world.node_addr.into(), &b"over udp"[..])
    );
}

#[test]
fn a_sliver_reaches_nothing_of_the_node_nor_another_slivers_private_address() {
    if !root_or_skip() {
        return;
    }
    let world = World::new();
    let node_addr = world.node_addr;
    let policy = world.policy(10);
    let inet_ns = world.inet_ns.clone();
    let verdicts = World::within(&world.node_ns, move || {
        let f = engine(policy)?;
        // Daemons of the node: on every address, and on its loopback only.
        let any = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = any.local_addr().unwrap().port();
        let lo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let lo_port = lo.local_addr().unwrap().port();
        let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let a = f.engine.create(spec("fence-a")).expect("create");
        let b = f.engine.create(spec("fence-b")).expect("create");
        // A service in sliver b, on every address of its own.
        let mut serve = ExecCommand::new([
            "/usr/bin/python3",
            "-c",
            "import socket,time\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('0.0.0.0',8080)); s.listen(8); time.sleep(30)",
        ]);
        serve.timeout = Duration::from_secs(40);
        reap(f.engine.spawn(&b.spec.id, &serve).expect("spawn"));
        std::thread::sleep(Duration::from_millis(700));
        let own = python(&f, "fence-b", &probe_tcp(&[(b.net.sliver_addr, 8080)]));
        let from_a = python(
            &f,
            "fence-a",
            &probe_tcp(&[
                (a.net.host_addr, port),
                (node_addr, port),
                (Ipv4Addr::LOCALHOST, lo_port),
                (b.net.host_addr, port),
                (b.net.sliver_addr, 8080),
            ]),
        );
        // An admin sliver that did not ask for the host's network is fenced the same way,
        // whatever capabilities it holds in its own namespaces.
        let mut admin = spec("fence-admin");
        admin.kind = node::sliver::spec::SliverKind::Admin;
        admin.capabilities = vec!["CAP_NET_ADMIN".into(), "CAP_NET_RAW".into()];
        let admin = f.engine.create(admin).expect("create admin");
        let from_admin = python(
            &f,
            "fence-admin",
            &probe_tcp(&[
                (admin.net.host_addr, port),
                (node_addr, port),
                (b.net.sliver_addr, 8080),
            ]),
        );
        // UDP and ICMP toward the node: nothing arrives, nothing answers.
        let udp_sent = python(
            &f,
            "fence-a",
            &format!(
                "import socket\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                 for d in ['{}','{node_addr}']: u.sendto(b'to the node',(d,{port}))\n",
                a.net.host_addr
            ),
        );
        let mut buf = [0u8; 64];
        let udp_arrived = udp.recv_from(&mut buf).ok().map(|(_, from)| from);
        let node_from_inet = World::within(&inet_ns, move || {
            std::net::TcpStream::connect_timeout(
                &SocketAddr::from((node_addr, port)),
                Duration::from_secs(2),
            )
            .is_ok()
        });
        drop((any, lo));
        Some((
            own,
            from_a,
            from_admin,
            udp_sent,
            udp_arrived,
            node_from_inet,
        ))
    });
    let Some((own, from_a, from_admin, udp_sent, udp_arrived, node_from_inet)) = verdicts else {
        return;
    };
    assert_eq!(
        from_admin.stdout_text(),
        "closed\nclosed\nclosed\n",
        "an admin sliver in its own network namespace is fenced too ({from_admin:?})"
    );
    assert_eq!(own.stdout_text(), "open\n", "b's service runs: {own:?}");
    assert_eq!(
        from_a.stdout_text(),
        "closed\nclosed\nclosed\nclosed\nclosed\n",
        "a reaches none of: its gateway, the node's uplink address, the node's loopback, \
         b's gateway, b's private address ({from_a:?})"
    );
    assert!(udp_sent.success(), "{udp_sent:?}");
    assert_eq!(
        udp_arrived, None,
        "no datagram from a sliver reaches the node"
    );
    assert!(
        node_from_inet,
        "the node's daemon port is reachable from the internet host (the fence is the \
         sliver's, not the node's)"
    );
}

#[test]
fn pings_are_limited_per_sliver_and_pings_to_the_node_go_unanswered() {
    if !root_or_skip() {
        return;
    }
    let world = World::new();
    let inet_addr = world.inet_addr;
    let policy = world.policy(5);
    let out = World::within(&world.node_ns, move || {
        let f = engine(policy)?;
        let mut s = spec("pinger");
        s.capabilities = vec!["CAP_NET_RAW".into()];
        let rec = f.engine.create(s).expect("create");
        // 40 echo requests as fast as a raw socket sends them; count the replies over 1.5 s.
        let program = format!(
            "import socket,struct,time\n\
             def ping(dst, n):\n\
             \ts=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_ICMP); s.settimeout(0.2)\n\
             \tfor i in range(n):\n\
             \t\th=struct.pack('!BBHHH',8,0,0,7,i)\n\
             \t\tc=sum(struct.unpack('!4H',h)); c=(c>>16)+(c&0xffff); c=~(c+(c>>16))&0xffff\n\
             \t\ts.sendto(struct.pack('!BBHHH',8,0,c,7,i),(dst,0))\n\
             \tgot=0; end=time.time()+1.5\n\
             \twhile time.time()<end:\n\
             \t\ttry:\n\
             \t\t\td,a=s.recvfrom(256)\n\
             \t\t\tif a[0]==dst and d[20]==0: got+=1\n\
             \t\texcept socket.timeout: pass\n\
             \treturn got\n\
             print(ping('{inet_addr}',40), ping('{}',3))\n",
            rec.net.host_addr
        );
        Some(python(&f, "pinger", &program))
    });
    let Some(out) = out else { return };
    assert!(out.success(), "{out:?}");
    let text = out.stdout_text();
    let counts: Vec<u32> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    // The burst (5) and at most a few more at 5 a second; none from the node.
    assert!(
        (3..=14).contains(&counts[0]),
        "40 pings at a limit of 5/s: {counts:?}"
    );
    assert_eq!(counts[1], 0, "the gateway answers no ping: {counts:?}");
}

#[test]
fn the_table_comes_back_when_deleted_by_hand_and_goes_with_the_node() {
    if !root_or_skip() {
        return;
    }
    let world = World::new();
    let policy = world.policy(10);
    let ns = world.node_ns.clone();
    let checks = World::within(&world.node_ns, move || {
        let f = engine(policy)?;
        let name = f.engine.config().firewall().unwrap().table;
        let made = table(&ns, &name);
        let restored_when_present = f.engine.ensure_firewall().unwrap();
        let status = Command::new("nft")
            .args(["delete", "table", "inet", &name])
            .status()
            .unwrap();
        assert!(status.success());
        let gone = table(&ns, &name);
        let restored = f.engine.ensure_firewall().unwrap();
        let back = table(&ns, &name);
        let read = |knob: &str| std::fs::read_to_string(knob).unwrap().trim().to_owned();
        let uplink = "/proc/sys/net/ipv4/conf/up0/forwarding";
        let forwarding = (read(uplink), read("/proc/sys/net/ipv4/ip_forward"));
        f.engine.destroy_all().unwrap();
        let after_wipe = table(&ns, &name);
        let uplink_after = read(uplink);
        Some((
            made,
            restored_when_present,
            gone,
            restored,
            back,
            after_wipe,
            forwarding,
            uplink_after,
        ))
    });
    let Some((made, present, gone, restored, back, after_wipe, forwarding, uplink_after)) = checks
    else {
        return;
    };
    let made = made.expect("the engine made its table");
    assert!(made.contains("snat ip to"), "{made}");
    assert!(!present, "nothing to restore while the table is there");
    assert!(gone.is_none());
    assert!(restored, "the reconciler put it back");
    assert_eq!(back.as_deref(), Some(made.as_str()), "as it was");
    assert!(after_wipe.is_none(), "wipe removes the table");
    assert_eq!(
        forwarding,
        ("1".to_owned(), "0".to_owned()),
        "forwarding is on for the uplink only, never host-wide"
    );
    assert_eq!(
        uplink_after, "0",
        "wipe puts the uplink's forwarding back as it found it"
    );
}

/// A service for sliver `port`: TCP answers `you are <peer ip>`, UDP echoes `<peer ip> <data>`;
/// it stops after 25 s idle.
fn serve_on(port: u16) -> ExecCommand {
    let program = format!(
        "import socket,threading\n\
         t=socket.socket(); t.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         t.bind(('0.0.0.0',{port})); t.listen(8); t.settimeout(25)\n\
         u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(('0.0.0.0',{port}))\n\
         def echo():\n\
         \twhile True:\n\
         \t\td,a=u.recvfrom(100); u.sendto(a[0].encode()+b' '+d,a)\n\
         threading.Thread(target=echo,daemon=True).start()\n\
         while True:\n\
         \tc,a=t.accept(); c.sendall(('you are '+a[0]+'\\n').encode()); c.close()\n"
    );
    let mut cmd = ExecCommand::new(["/usr/bin/python3", "-c", &program]);
    cmd.timeout = Duration::from_secs(40);
    cmd
}

/// What `address:port` answers over TCP (empty when nothing does within 3 s).
fn fetch(address: Ipv4Addr, port: u16) -> String {
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(
        &SocketAddr::from((address, port)),
        Duration::from_secs(3),
    ) else {
        return String::new();
    };
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut text = String::new();
    let _ = conn.read_to_string(&mut text);
    text
}

/// A sliver spec leasing `ports` public ports.
fn with_ports(name: &str, ports: u32) -> node::sliver::SliverSpec {
    let mut s = spec(name);
    s.resources.ports = ports;
    s
}

#[test]
fn a_leased_port_reaches_its_sliver_from_the_internet_and_from_other_slivers() {
    if !root_or_skip() {
        return;
    }
    let world = World::new();
    let (node_addr, inet_addr) = (world.node_addr, world.inet_addr);
    let policy = world.policy(10);
    let inet_ns = world.inet_ns.clone();
    let seen = World::within(&world.node_ns, move || {
        let f = engine(policy)?;
        let srv = f.engine.create(with_ports("srv", 2)).expect("create");
        let (public, ports) = f.engine.config().public_endpoint(srv.slot.slot, 2).unwrap();
        assert_eq!((public, ports.as_slice()), (node_addr, &[42000, 42001][..]));
        for port in [42000, 42001] {
            reap(
                f.engine
                    .spawn(&srv.spec.id, &serve_on(port))
                    .expect("spawn"),
            );
        }
        // One port leased of a block of two: the other is not forwarded to it.
        let cli = f.engine.create(with_ports("cli", 1)).expect("create");
        reap(
            f.engine
                .spawn(&cli.spec.id, &serve_on(42003))
                .expect("spawn"),
        );
        std::thread::sleep(Duration::from_millis(700));
        let (from_inet, second, unleased, udp_from_inet) = World::within(&inet_ns, move || {
            let udp = UdpSocket::bind((inet_addr, 0)).unwrap();
            udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            udp.send_to(b"ping", (node_addr, 42000)).unwrap();
            let mut buf = [0u8; 64];
            let echoed = udp
                .recv_from(&mut buf)
                .map(|(n, _)| String::from_utf8_lossy(&buf[..n]).into_owned())
                .unwrap_or_default();
            (
                fetch(node_addr, 42000),
                fetch(node_addr, 42001),
                fetch(node_addr, 42003),
                echoed,
            )
        });
        let from_sliver = python(
            &f,
            "cli",
            &format!(
                "import socket\ns=socket.create_connection(('{node_addr}',42000),timeout=3)\n\
                 print(s.recv(100).decode(),end='')\n"
            ),
        );
        // More than a block is refused, naming the node's figure; the range holds three
        // blocks: a third sliver takes the last, a fourth is refused.
        let too_many = f
            .engine
            .create(with_ports("greedy", 3))
            .unwrap_err()
            .to_string();
        f.engine.create(with_ports("third", 1)).expect("create");
        let full = f
            .engine
            .create(with_ports("fourth", 1))
            .unwrap_err()
            .to_string();
        // Ports return to the range with their sliver, and go to the next one.
        f.engine
            .destroy(&common::id("srv"), false)
            .expect("destroy");
        let next = f.engine.create(with_ports("next", 1)).expect("create");
        let reused = f.engine.config().public_endpoint(next.slot.slot, 1);
        Some((
            from_inet,
            second,
            unleased,
            udp_from_inet,
            from_sliver,
            too_many,
            full,
            reused,
        ))
    });
    let Some((from_inet, second, unleased, udp_from_inet, from_sliver, too_many, full, reused)) =
        seen
    else {
        return;
    };
    assert_eq!(
        from_inet,
        format!("you are {inet_addr}\n"),
        "the sliver sees the caller"
    );
    assert_eq!(
        second,
        format!("you are {inet_addr}\n"),
        "both leased ports lead to it"
    );
    assert_eq!(
        unleased, "",
        "a port of its block it did not lease leads nowhere"
    );
    assert_eq!(udp_from_inet, format!("{inet_addr} ping"));
    assert!(from_sliver.success(), "{from_sliver:?}");
    assert_eq!(
        from_sliver.stdout_text(),
        format!("you are {node_addr}\n"),
        "another sliver arrives as the rest of the Internet does: from the node's address"
    );
    assert!(too_many.contains("at most 2 per sliver"), "{too_many}");
    assert!(
        full.contains("no public ports free")
            && full.contains("42000-42005")
            && full.contains("0 free"),
        "{full}"
    );
    assert_eq!(reused, Some((node_addr, vec![42000])));
}

#[test]
fn a_restarted_node_forwards_its_live_slivers_ports_again() {
    if !root_or_skip() {
        return;
    }
    let world = World::new();
    let (node_addr, inet_addr) = (world.node_addr, world.inet_addr);
    let policy = world.policy(10);
    let inet_ns = world.inet_ns.clone();
    let seen = World::within(&world.node_ns, move || {
        let f = engine(policy)?;
        let srv = f.engine.create(with_ports("kept", 1)).expect("create");
        reap(
            f.engine
                .spawn(&srv.spec.id, &serve_on(42000))
                .expect("spawn"),
        );
        std::thread::sleep(Duration::from_millis(700));
        // A second start over the same state, as nodemgr's after a restart: the table is
        // made afresh and the re-adopted sliver's port forwarded again.
        let host = node::sliver::linux::LinuxHost::detect().expect("cgroups");
        let (again, report) =
            node::sliver::Slivers::open(host, f.engine.config().clone()).expect("reopen");
        let adopted = report.adopted.clone();
        let inet = inet_ns.clone();
        let reached = World::within(&inet, move || fetch(node_addr, 42000));
        drop(again);
        Some((adopted, reached))
    });
    let Some((adopted, reached)) = seen else {
        return;
    };
    assert_eq!(adopted, vec![common::id("kept")]);
    assert_eq!(reached, format!("you are {inet_addr}\n"));
}

#[test]
fn a_raw_socket_sees_only_its_own_slivers_traffic_and_needs_the_grant() {
    if !root_or_skip() {
        return;
    }
    let world = World::new();
    let inet_addr = world.inet_addr;
    let policy = world.policy(10);
    let seen = World::within(&world.node_ns, move || {
        let f = engine(policy)?;
        let mut sniffer = spec("raw-a");
        sniffer.capabilities = vec!["CAP_NET_RAW".into()];
        let a = f.engine.create(sniffer).expect("create");
        f.engine.create(spec("raw-b")).expect("create");
        f.engine.create(spec("raw-none")).expect("create");
        // For 3 s, count the UDP datagrams its raw socket sees, by payload.
        let mut sniff = ExecCommand::new([
            "/usr/bin/python3",
            "-c",
            "import socket,time\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_UDP); s.settimeout(0.2)\n\
             own=other=0; end=time.time()+3\n\
             while time.time()<end:\n\
             \ttry:\n\
             \t\td=s.recv(2048)\n\
             \t\town+=b'from-a' in d; other+=b'from-b' in d\n\
             \texcept socket.timeout: pass\n\
             print(own, other)\n",
        ]);
        sniff.timeout = Duration::from_secs(10);
        let mut child = f.engine.spawn(&a.spec.id, &sniff).expect("spawn").child;
        std::thread::sleep(Duration::from_millis(500));
        let send = |from: &str, tag: &str, to: &str| {
            python(
                &f,
                from,
                &format!(
                    "import socket\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                     for i in range(10): u.sendto(b'{tag}',('{to}',9))\n"
                ),
            )
        };
        // Another sliver's traffic to the Internet, and (the control) the sniffer's own
        // sliver's traffic on its loopback.
        let b_sent = send("raw-b", "from-b", &inet_addr.to_string());
        let a_sent = send("raw-a", "from-a", "127.0.0.1");
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        let _ = child.wait();
        let denied = python(
            &f,
            "raw-none",
            "import socket\n\
             try:\n\
             \tsocket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_UDP); print('opened')\n\
             except PermissionError: print('denied')\n",
        );
        Some((out, b_sent, a_sent, denied))
    });
    let Some((out, b_sent, a_sent, denied)) = seen else {
        return;
    };
    assert!(
        b_sent.success() && a_sent.success(),
        "{b_sent:?} {a_sent:?}"
    );
    let counts: Vec<u32> = out.split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(counts.len(), 2, "sniffer output: {out:?}");
    assert!(
        counts[0] >= 10,
        "it sees its own sliver's datagrams: {counts:?}"
    );
    assert_eq!(counts[1], 0, "and none of another sliver's: {counts:?}");
    assert_eq!(
        denied.stdout_text(),
        "denied\n",
        "no raw socket without the grant"
    );
}

/// What a sliver's egress bucket sends per second (Mbit/s), measured at the shaper between
/// 0.5 s and 3 s of a transfer of `bytes` from it to the internet host's sink.
fn egress_rate(f: &Fixture, rec: &node::sliver::SliverRecord, sink: Ipv4Addr, bytes: u64) -> f64 {
    let mut cmd = ExecCommand::new([
        "/bin/bash".to_string(),
        "-c".to_string(),
        format!("exec head -c {bytes} /dev/zero > /dev/tcp/{sink}/5001"),
    ]);
    cmd.timeout = Duration::from_secs(20);
    let mut child = f.engine.spawn(&rec.spec.id, &cmd).expect("spawn").child;
    let mut buckets = common::Buckets::of(f);
    let mut sent = || buckets.sent(&[rec.shape.class_minor])[0];
    std::thread::sleep(Duration::from_millis(500));
    let (t0, c0) = (std::time::Instant::now(), sent());
    std::thread::sleep(Duration::from_millis(2500));
    let (t1, c1) = (std::time::Instant::now(), sent());
    let _ = child.kill();
    let _ = child.wait();
    (c1 - c0) as f64 * 8.0 / (t1 - t0).as_secs_f64() / 1e6
}

#[test]
fn through_the_nat_a_capped_sliver_keeps_its_rate_and_an_uncapped_one_borrows_up_to_the_node() {
    if !root_or_skip() {
        return;
    }
    let world = World::new();
    let inet_addr = world.inet_addr;
    // The internet host's sink: reads whatever arrives on 5001, one connection at a time.
    let sink = World::within(&world.inet_ns, move || {
        TcpListener::bind((inet_addr, 5001)).expect("bind sink")
    });
    std::thread::spawn(move || {
        for _ in 0..2 {
            let Ok((mut conn, _)) = sink.accept() else {
                return;
            };
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let mut buf = vec![0u8; 1 << 16];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let policy = world.policy(10);
    let rates = World::within(&world.node_ns, move || {
        // The node offers 16 Mbit/s in all; each sliver is guaranteed 4.
        let f = Fixture::configured(|config| {
            config.network = Some(policy);
            config.shaping.node_kbps = 16_000;
        })?;
        let mut capped = spec("capped");
        capped.resources.egress_kbps = 4_000;
        capped.egress_ceil_kbps = Some(4_000);
        let capped = f.engine.create(capped).expect("create");
        // Each transfer lasts a little past the measurement, then ends (or is ended).
        let capped_rate = egress_rate(&f, &capped, inet_addr, 1_800_000);
        let mut open = spec("uncapped");
        open.resources.egress_kbps = 4_000;
        let open = f.engine.create(open).expect("create");
        let open_rate = egress_rate(&f, &open, inet_addr, 7_500_000);
        Some((capped_rate, open_rate))
    });
    let Some((capped, open)) = rates else { return };
    eprintln!(
        "through the NAT: capped at 4 Mbit/s {capped:.2}, uncapped {open:.2} Mbit/s (node 16)"
    );
    assert!(
        (3.4..=4.6).contains(&capped),
        "a 4 Mbit/s hard cap holds within 15%: {capped:.2}"
    );
    assert!(
        open > 8.0,
        "an uncapped sliver borrows the node's excess beyond its 4 Mbit/s: {open:.2}"
    );
    assert!(
        open <= 16.0 * 1.15,
        "and never more than the node's 16 Mbit/s: {open:.2}"
    );
}

#[test]
fn a_granted_raw_socket_cannot_send_a_forged_source_out_through_the_nat() {
    if !root_or_skip() {
        return;
    }
    let world = World::new();
    let (node_addr, inet_addr) = (world.node_addr, world.inet_addr);
    let sink = World::within(&world.inet_ns, move || {
        UdpSocket::bind((inet_addr, 8082)).expect("bind udp")
    });
    sink.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let policy = world.policy(10);
    let sent = World::within(&world.node_ns, move || {
        let f = engine(policy)?;
        let mut raw = spec("forger");
        raw.capabilities = vec!["CAP_NET_RAW".into()];
        let rec = f.engine.create(raw).expect("create");
        let other = f.engine.create(spec("bystander")).expect("create");
        // Hand-built IPv4/UDP packets with a chosen source, through a raw socket.
        let send = |src: Ipv4Addr, tag: &str| {
            python(
                &f,
                "forger",
                &format!(
                    "import socket,struct\n\
                     p=b'{tag}'\n\
                     u=struct.pack('!HHHH',40000,8082,8+len(p),0)+p\n\
                     h=struct.pack('!BBHHHBBH4s4s',0x45,0,20+len(u),1,0,64,17,0,socket.inet_aton('{src}'),socket.inet_aton('{inet_addr}'))\n\
                     s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)\n\
                     s.sendto(h+u,('{inet_addr}',0))\n"
                ),
            )
        };
        let outs = [
            send(other.net.sliver_addr, "forged-neighbour"),
            send(Ipv4Addr::new(192, 0, 2, 1), "forged-foreign"),
            send(node_addr, "forged-node"),
            send(rec.net.sliver_addr, "genuine"),
        ];
        Some(outs)
    });
    let Some(outs) = sent else { return };
    for out in &outs {
        assert!(out.success(), "{out:?}");
    }
    let mut received = Vec::new();
    let mut buf = [0u8; 64];
    while let Ok((n, from)) = sink.recv_from(&mut buf) {
        received.push(format!(
            "{} from {}",
            String::from_utf8_lossy(&buf[..n]),
            from.ip()
        ));
    }
    assert_eq!(
        received,
        vec![format!("genuine from {node_addr}")],
        "only the sliver's own packet leaves, translated to the node's address"
    );
}
