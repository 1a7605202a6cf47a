//! Joining a federation in one step: what `init --federation-cert FILE --bootstrap ADDR` and
//! `key` do for every daemon (`nodemgr`, `agentd`, `broker`).
//!
//! The member's key comes first (`PROGRAM key --new`), the federation's authority certifies
//! it (`fedctl certify`), and `PROGRAM init --federation-cert CERT --bootstrap ADDR` writes a
//! config that runs as is: the federation's name and trust anchor taken from the certificate
//! (its authority), the certificate copied beside the config as `membership.cbor`, the
//! bootstrap addresses (each must name its peer with `/p2p/<peer id>`) and the listen
//! addresses filled in. [`JoinArgs`] and [`KeyArgs`] are the flags each binary flattens into
//! its `init` and `key` subcommands; [`init_joined`] and [`key_command`] do the work.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use capability_schema::{MembershipCert, PublicKey, SecretKey, Signed};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

use super::config::{CommonConfig, DaemonKind};
use super::runtime::{DaemonError, describe_key, init, load_key};

/// The flags of `init` that join a federation in one step.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JoinArgs {
    /// The federation to belong to (taken from --federation-cert when given).
    #[arg(long, required_unless_present = "federation_cert")]
    pub federation: Option<String>,
    /// This daemon's membership certificate (`fedctl certify --subject <this key>`): its
    /// federation and authority become the config's `federation` and `[[trust]]`, and it is
    /// copied beside the config as membership.cbor. The key must exist in --dir already
    /// (`key --new`).
    #[arg(long, value_name = "FILE")]
    pub federation_cert: Option<PathBuf>,
    /// A running daemon of the federation to join through, with its peer id
    /// (`/ip4/10.0.0.1/tcp/4001/p2p/12D3KooW...`, as its `key` command prints); repeatable.
    #[arg(long, value_name = "ADDR")]
    pub bootstrap: Vec<String>,
    /// Where to listen (multiaddress; default: every interface on the daemon's port);
    /// repeatable.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Where the daemon keeps its state (its ledger, slivers), when it keeps any (default:
    /// `state` beside the config; packages use `/var/lib/planetmesh/<daemon>`).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// Why a join could not be written.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// A bootstrap address does not parse or does not name its peer.
    #[error(
        "bootstrap address {addr:?} {why}: give the full address a member's `key` command \
         prints, e.g. /ip4/10.0.0.1/tcp/4001/p2p/12D3KooW..."
    )]
    Bootstrap {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        why: String,
    },
    /// A listen address does not parse.
    #[error("listen address {addr:?}: {why}: give a multiaddress such as /ip4/0.0.0.0/tcp/4001")]
    Listen {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        why: String,
    },
    /// The certificate is unreadable, forged, or certifies someone else.
    #[error("federation certificate {path}: {detail}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// Parses a bootstrap address, refusing one without `/p2p/<peer id>`.
pub fn bootstrap_addr(text: &str) -> Result<Multiaddr, JoinError> {
    let bad = |why: String| JoinError::Bootstrap {
        addr: text.to_owned(),
        why,
    };
    let addr: Multiaddr = text
        .trim()
        .parse()
        .map_err(|e| bad(format!("is not a multiaddress ({e})")))?;
    if !addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
        return Err(bad(
            "has no /p2p/<peer id>, so this daemon could not know whom it reached".into(),
        ));
    }
    Ok(addr)
}

/// A checked membership certificate for `key` as a `K`.
fn read_cert<K: DaemonKind>(
    path: &Path,
    key: &PublicKey,
) -> Result<(Vec<u8>, MembershipCert), JoinError> {
    let bad = |detail: String| JoinError::Cert {
        path: path.to_owned(),
        detail,
    };
    let signed: Signed<MembershipCert> =
        crate::trust::read_signed(path).map_err(|e| bad(e.to_string()))?;
    let cert = signed.verify().map_err(|e| bad(e.to_string()))?;
    if cert.authority != signed.signer {
        return Err(bad(format!(
            "signed by {}, not by the authority it names ({})",
            signed.signer, cert.authority
        )));
    }
    if cert.subject != *key || cert.role != K::ROLE {
        return Err(bad(format!(
            "certifies {} as a {}, not this {} key {key} as a {}: have the authority run \
             `fedctl certify --role {} --subject {key}`",
            cert.subject,
            cert.role,
            K::PROGRAM,
            K::ROLE,
            K::ROLE
        )));
    }
    if cert.expires_at <= crate::unix_now() {
        return Err(bad(
            "has expired: have the authority certify this key again".into(),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    Ok((bytes, cert))
}

/// `template` (a daemon's `default_config`, which contains [`CommonConfig::template`] and
/// [`CommonConfig::trust_template`] unchanged) with the join's settings uncommented in place:
/// `listen`, `bootstrap` and, when `anchor` is given, the `[[trust]]` entry.
pub fn joined_text<K: DaemonKind>(
    template: &str,
    federation: &str,
    anchor: Option<&PublicKey>,
    listen: &[Multiaddr],
    bootstrap: &[Multiaddr],
) -> String {
    let list = |addrs: &[Multiaddr]| {
        let quoted: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
        format!("[{}]", quoted.join(", "))
    };
    let mut out = String::with_capacity(template.len() + 256);
    for line in template.lines() {
        if !listen.is_empty() && line.starts_with("# listen = [") {
            out.push_str(&format!("listen = {}\n", list(listen)));
        } else if !bootstrap.is_empty() && line.starts_with("# bootstrap = [") {
            out.push_str(&format!("bootstrap = {}\n", list(bootstrap)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some(anchor) = anchor {
        let commented = CommonConfig::<K>::trust_template(federation);
        let trusted = format!(
            "# Federation authorities this daemon trusts (its own at least):\n\
             [[trust]]\n\
             name = \"{federation}\"\n\
             authority = \"{anchor}\"\n"
        );
        out = out.replacen(&commented, &trusted, 1);
    }
    out
}

/// The commented `state_dir` line of the templates of daemons that keep state.
const STATE_LINE: &str = "# state_dir = ";

/// `init` with [`JoinArgs`]: writes `config_name` into `dir` from `template(federation)`, the
/// join's settings filled in ([`joined_text`]). Without a certificate a new key is made (as
/// [`init`]); with one, the key in `dir` must exist and be the certificate's subject, and the
/// certificate is copied to `dir/membership.cbor`. Refuses to overwrite a config, a key or a
/// membership file, naming it. Returns the key.
pub fn init_joined<K: DaemonKind>(
    dir: &Path,
    config_name: &str,
    template: impl Fn(&str) -> String,
    join: &JoinArgs,
) -> Result<SecretKey, anyhow::Error> {
    let bootstrap = join
        .bootstrap
        .iter()
        .map(|a| bootstrap_addr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let listen = join
        .listen
        .iter()
        .map(|a| {
            a.trim()
                .parse::<Multiaddr>()
                .map_err(|e| JoinError::Listen {
                    addr: a.clone(),
                    why: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let template = |federation: &str| -> Result<String, anyhow::Error> {
        let text = template(federation);
        let Some(state) = &join.state_dir else {
            return Ok(text);
        };
        if !text.contains(STATE_LINE) {
            return Err(super::cli::usage(format!(
                "{} keeps no state: leave --state-dir out",
                K::PROGRAM
            )));
        }
        let quoted = toml::Value::String(state.display().to_string());
        Ok(text
            .lines()
            .map(|line| match line.starts_with(STATE_LINE) {
                true => format!("state_dir = {quoted}\n"),
                false => format!("{line}\n"),
            })
            .collect())
    };
    let Some(cert_path) = &join.federation_cert else {
        let federation = join.federation.clone().unwrap_or_default();
        let text = joined_text::<K>(
            &template(&federation)?,
            &federation,
            None,
            &listen,
            &bootstrap,
        );
        return Ok(init::<K>(dir, config_name, &text)?);
    };
    let config = dir.join(config_name);
    let membership = dir.join("membership.cbor");
    for path in [&config, &membership] {
        if path.exists() {
            return Err(DaemonError::Exists {
                program: K::PROGRAM,
                path: path.clone(),
                config: config.clone(),
            }
            .into());
        }
    }
    let key_file = dir.join(K::KEY_FILE);
    if !key_file.exists() {
        return Err(super::cli::usage(format!(
            "{} does not exist: a certificate certifies a key made first; run `{} key --new \
             --dir {}`, have the authority certify the key it prints, then init again",
            key_file.display(),
            K::PROGRAM,
            dir.display()
        )));
    }
    let key = load_key::<K>(&key_file)?;
    let (bytes, cert) = read_cert::<K>(cert_path, &key.public())?;
    if let Some(named) = &join.federation
        && *named != cert.federation
    {
        return Err(super::cli::usage(format!(
            "--federation {named} but the certificate is from {}: leave --federation out",
            cert.federation
        )));
    }
    let text = joined_text::<K>(
        &template(&cert.federation)?,
        &cert.federation,
        Some(&cert.authority),
        &listen,
        &bootstrap,
    );
    let state = |path: &Path, e: std::io::Error| DaemonError::State {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    std::fs::write(&membership, bytes).map_err(|e| state(&membership, e))?;
    std::fs::write(&config, text).map_err(|e| state(&config, e))?;
    Ok(key)
}

/// What `init` prints last: the next step. After a join, starting the daemon (its unit, or
/// `run`) and giving others its addresses; without a certificate, getting one.
pub fn next_after_init<K: DaemonKind>(
    join: &JoinArgs,
    dir: &Path,
    config_name: &str,
    key: &PublicKey,
) -> String {
    let config = dir.join(config_name);
    if join.federation_cert.is_some() {
        return format!(
            "next: systemctl enable --now planetmesh-{program} (or: {program} run --config {}); \
             then `{program} key --dir {}` prints the addresses others bootstrap from",
            config.display(),
            dir.display(),
            program = K::PROGRAM,
        );
    }
    format!(
        "next: have the federation's authority run `fedctl certify --role {role} --subject \
         {key} --out <file>`, save the file as {} and name the authority under [[trust]] in \
         {} (or `{program} key --new` in a new --dir, then `{program} init \
         --federation-cert <file>` does both)",
        dir.join("membership.cbor").display(),
        config.display(),
        role = K::ROLE,
        program = K::PROGRAM,
    )
}

/// The flags of `key`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeyArgs {
    /// The directory of the daemon's config and key (its config names the key file and the
    /// listen addresses).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// The config file (default: the daemon's config in --dir, when there is one).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The key file (default: the config's key_file, else the daemon's key file in --dir).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Make the key first (refused when the file exists), to have it certified before
    /// `init --federation-cert`.
    #[arg(long)]
    pub new: bool,
    /// One JSON object on stdout: role, key, peer id, addresses, key file.
    #[arg(long)]
    pub json: bool,
}

/// What `key` reads of a config: its key file and listen addresses.
#[derive(Debug, serde::Deserialize)]
struct KeyView {
    key_file: Option<PathBuf>,
    listen: Option<Vec<Multiaddr>>,
    /// A node's addresses for its ads, when set: what others dial.
    announce: Option<Vec<Multiaddr>>,
}

/// `key`: the public key, the peer id and the full addresses to give others, from the config
/// `config_name` in `--dir` when there is one (its `announce`, else its `listen`, an
/// unspecified address replaced by this host's interface addresses, each with
/// `/p2p/<peer id>`).
pub fn key_command<K: DaemonKind>(args: &KeyArgs, config_name: &str) -> anyhow::Result<String> {
    let config = args.config.clone().or_else(|| {
        let path = args.dir.join(config_name);
        path.exists().then_some(path)
    });
    let mut key_file = args.dir.join(K::KEY_FILE);
    let mut listen = None;
    if let Some(config) = &config {
        let text =
            std::fs::read_to_string(config).map_err(|source| super::config::ConfigError::Read {
                path: config.clone(),
                source,
            })?;
        let view: KeyView =
            toml::from_str(&text).map_err(|e| super::config::ConfigError::Parse {
                path: config.clone(),
                detail: e.to_string(),
            })?;
        if let Some(file) = view.key_file {
            key_file = config.parent().unwrap_or(Path::new(".")).join(file);
        } else {
            key_file = config.parent().unwrap_or(Path::new(".")).join(K::KEY_FILE);
        }
        listen = Some(
            view.announce
                .filter(|a| !a.is_empty())
                .or(view.listen)
                .unwrap_or_else(|| CommonConfig::<K>::new("x").listen),
        );
    }
    if let Some(key) = &args.key {
        key_file = key.clone();
    }
    let key = if args.new {
        if key_file.exists() {
            return Err(DaemonError::Exists {
                program: K::PROGRAM,
                path: key_file.clone(),
                config: config.unwrap_or_else(|| args.dir.join(config_name)),
            }
            .into());
        }
        if let Some(parent) = key_file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| DaemonError::State {
                path: parent.to_owned(),
                detail: e.to_string(),
            })?;
        }
        let key = SecretKey::generate();
        key.save(&key_file).map_err(|source| DaemonError::Key {
            program: K::PROGRAM,
            path: key_file.clone(),
            source,
        })?;
        key
    } else {
        load_key::<K>(&key_file)?
    };
    let public = key.public();
    let peer = crate::overlay::peer_id(&public);
    let addresses: Vec<String> = listen
        .map(|listen| {
            public_addrs(&listen, &host_addrs())
                .into_iter()
                .map(|addr| addr.with(Protocol::P2p(peer)).to_string())
                .collect()
        })
        .unwrap_or_default();
    if args.json {
        let report = serde_json::json!({
            "role": K::ROLE.to_string(),
            "key": public.to_string(),
            "peer_id": peer.to_string(),
            "addresses": addresses,
            "key_file": key_file.display().to_string(),
            "new": args.new,
        });
        return Ok(report.to_string());
    }
    let mut text = describe_key::<K>(&public);
    for addr in &addresses {
        text.push_str(&format!("\naddress: {addr}"));
    }
    if args.new {
        text.push_str(&format!(
            "\nnext, for the federation's authority: fedctl certify --authority <authority dir> \
             --role {} --subject {public} --site <site> --name <host name> --out <file>",
            K::ROLE
        ));
    }
    Ok(text)
}

/// The addresses others can dial: each of `listen`, an unspecified IP (`0.0.0.0`, `::`)
/// replaced by each of `host` of the same family.
pub fn public_addrs(listen: &[Multiaddr], host: &[IpAddr]) -> Vec<Multiaddr> {
    let mut out = Vec::new();
    for addr in listen {
        let mut parts: Vec<Protocol<'_>> = addr.iter().collect();
        let unspecified = match parts.first() {
            Some(Protocol::Ip4(ip)) if ip.is_unspecified() => Some(false),
            Some(Protocol::Ip6(ip)) if ip.is_unspecified() => Some(true),
            _ => None,
        };
        let Some(v6) = unspecified else {
            out.push(addr.clone());
            continue;
        };
        for ip in host.iter().filter(|ip| ip.is_ipv6() == v6) {
            parts[0] = match ip {
                IpAddr::V4(ip) => Protocol::Ip4(*ip),
                IpAddr::V6(ip) => Protocol::Ip6(*ip),
            };
            out.push(parts.iter().cloned().collect());
        }
    }
    out
}

/// This host's interface addresses others may reach: not loopback, not IPv6 link-local;
/// loopback only when there is nothing else.
fn host_addrs() -> Vec<IpAddr> {
    let mut all = Vec::new();
    if let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() {
        for ifaddr in ifaddrs {
            let Some(storage) = ifaddr.address else {
                continue;
            };
            if let Some(v4) = storage.as_sockaddr_in() {
                all.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = storage.as_sockaddr_in6() {
                all.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    let reachable: Vec<IpAddr> = all
        .iter()
        .copied()
        .filter(|ip| {
            !ip.is_loopback()
                && !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
        })
        .collect();
    let mut chosen = if reachable.is_empty() { all } else { reachable };
    chosen.sort();
    chosen.dedup();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use capability_schema::Role;

    struct TestKind;
    impl DaemonKind for TestKind {
        const PROGRAM: &'static str = "testd";
        const ROLE: Role = Role::Broker;
        const KEY_FILE: &'static str = "test.key";
        const PORT: u16 = 4999;
        const HTTP_PORT: u16 = 9199;
        const MAX_IN_FLIGHT: usize = 8;
    }

    fn template(federation: &str) -> String {
        format!(
            "{}\n{}",
            CommonConfig::<TestKind>::template(federation),
            CommonConfig::<TestKind>::trust_template(federation)
        )
    }

    #[test]
    fn a_bootstrap_address_without_its_peer_is_refused_with_the_fix() {
        let error = bootstrap_addr("/ip4/10.0.0.1/tcp/4001")
            .unwrap_err()
            .to_string();
        assert!(error.contains("has no /p2p/<peer id>"), "{error}");
        assert!(
            error.contains("/ip4/10.0.0.1/tcp/4001/p2p/12D3KooW"),
            "{error}"
        );
        let error = bootstrap_addr("10.0.0.1:4001").unwrap_err().to_string();
        assert!(error.contains("is not a multiaddress"), "{error}");
        let peer = crate::overlay::peer_id(&SecretKey::generate().public());
        let ok = bootstrap_addr(&format!("/ip4/10.0.0.1/tcp/4001/p2p/{peer}")).unwrap();
        assert_eq!(ok.iter().count(), 3);
    }

    #[test]
    fn the_joined_text_parses_to_the_join() {
        let anchor = SecretKey::generate().public();
        let peer = crate::overlay::peer_id(&anchor);
        let boot: Multiaddr = format!("/ip4/10.0.0.1/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        let listen: Multiaddr = "/ip4/127.0.0.1/tcp/5000".parse().unwrap();
        let text = joined_text::<TestKind>(
            &template("plc"),
            "plc",
            Some(&anchor),
            std::slice::from_ref(&listen),
            std::slice::from_ref(&boot),
        );
        let config: CommonConfig<TestKind> = toml::from_str(&text).unwrap();
        assert_eq!(config.federation, "plc");
        assert_eq!(config.bootstrap, vec![boot]);
        assert_eq!(config.listen, vec![listen]);
        assert_eq!(config.trust.len(), 1, "{text}");
        assert_eq!(config.trust[0].authority, anchor);
        assert_eq!(config.trust[0].name, "plc");
    }

    #[test]
    fn unspecified_listen_addresses_become_the_hosts() {
        let listen: Vec<Multiaddr> = vec![
            "/ip4/0.0.0.0/tcp/4001".parse().unwrap(),
            "/ip4/127.0.0.1/udp/4001/quic-v1".parse().unwrap(),
        ];
        let host: Vec<IpAddr> = vec!["10.1.2.3".parse().unwrap(), "fd00::1".parse().unwrap()];
        let out: Vec<String> = public_addrs(&listen, &host)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            out,
            ["/ip4/10.1.2.3/tcp/4001", "/ip4/127.0.0.1/udp/4001/quic-v1"]
        );
    }

    #[test]
    fn init_with_a_certificate_uses_the_certified_key_and_refuses_a_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let authority = SecretKey::generate();
        let args = KeyArgs {
            dir: dir.path().to_owned(),
            new: true,
            ..KeyArgs::default()
        };
        let printed = key_command::<TestKind>(&args, "test.toml").unwrap();
        assert!(printed.contains("fedctl certify"), "{printed}");
        let key = load_key::<TestKind>(&dir.path().join("test.key")).unwrap();
        let now = crate::unix_now();
        let cert = MembershipCert {
            federation: "plc".into(),
            authority: authority.public(),
            subject: key.public(),
            role: Role::Broker,
            site: "mit".into(),
            name: "b1".into(),
            serial: 1,
            issued_at: now,
            expires_at: now + 3600,
        };
        let cert_path = dir.path().join("b1.cert");
        crate::trust::write_signed(&cert_path, &Signed::sign(&authority, &cert)).unwrap();
        let join = JoinArgs {
            federation_cert: Some(cert_path.clone()),
            listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            ..JoinArgs::default()
        };
        let stateless = JoinArgs {
            state_dir: Some("/var/lib/x".into()),
            ..join.clone()
        };
        let refused = init_joined::<TestKind>(dir.path(), "test.toml", template, &stateless)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("keeps no state"), "{refused}");
        let made = init_joined::<TestKind>(dir.path(), "test.toml", template, &join).unwrap();
        assert_eq!(made.public(), key.public());
        let text = std::fs::read_to_string(dir.path().join("test.toml")).unwrap();
        let config: CommonConfig<TestKind> = toml::from_str(&text).unwrap();
        assert_eq!(config.trust[0].authority, authority.public());
        assert!(dir.path().join("membership.cbor").exists());
        let again = init_joined::<TestKind>(dir.path(), "test.toml", template, &join)
            .unwrap_err()
            .to_string();
        assert!(again.contains("test.toml exists already"), "{again}");
        let printed = key_command::<TestKind>(
            &KeyArgs {
                dir: dir.path().to_owned(),
                ..KeyArgs::default()
            },
            "test.toml",
        )
        .unwrap();
        let peer = crate::overlay::peer_id(&key.public());
        assert!(
            printed.contains(&format!("address: /ip4/127.0.0.1/tcp/0/p2p/{peer}")),
            "{printed}"
        );
        let json = key_command::<TestKind>(
            &KeyArgs {
                dir: dir.path().to_owned(),
                json: true,
                ..KeyArgs::default()
            },
            "test.toml",
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["key"], key.public().to_string());
        assert_eq!(json["peer_id"], peer.to_string());
        assert_eq!(json["role"], "broker");
        assert_eq!(
            json["addresses"][0],
            format!("/ip4/127.0.0.1/tcp/0/p2p/{peer}")
        );

        let other = tempfile::tempdir().unwrap();
        let missing = init_joined::<TestKind>(other.path(), "test.toml", template, &join)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("key --new"), "{missing}");
        key_command::<TestKind>(
            &KeyArgs {
                dir: other.path().to_owned(),
                new: true,
                ..KeyArgs::default()
            },
            "test.toml",
        )
        .unwrap();
        let wrong = init_joined::<TestKind>(other.path(), "test.toml", template, &join)
            .unwrap_err()
            .to_string();
        assert!(
            wrong.contains("fedctl certify --role broker --subject"),
            "{wrong}"
        );
    }
}
