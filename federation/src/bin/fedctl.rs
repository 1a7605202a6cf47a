//! `fedctl`: the federation operator's tool.
//!
//! Creates a federation authority, certifies members, signs peering agreements and
//! revocation lists, and shows any of these files in readable form. Every output file is
//! CBOR except the key files, which are text (`ed25519-private/<hex>`, mode 0600) so they can
//! be inspected and backed up like any secret key; `fedctl show FILE` prints either kind (a key
//! file as its public key) and says whether a signature verifies.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use capability_schema::ad::ResourceAd;
use capability_schema::membership::{
    PeeringLimits, PrincipalFilter, RevocationVerdict, RevokedDelegation,
};
use capability_schema::{
    Delegation, MembershipCert, PeeringAgreement, PublicKey, Resources, RevocationList, Role,
    SecretKey, Signed, SignedType, TicketId,
};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use federation::daemon::cli::{Class, Failure, exit, usage};
use federation::overlay::Multiaddr;
use federation::trust::{
    ANCHOR_FILE, Authority, AuthorityState, FederationAnchor, Revoke, STATE_FILE, Validity,
    read_signed, write_signed,
};
use federation::unix_now;

/// Operate a PlanetMesh federation authority.
///
/// A federation is a name plus an authority key. The authority certifies members (nodes,
/// agents, brokers, principals), signs peering agreements with other federations and
/// revokes what it no longer stands behind. Every output file is CBOR except the key files,
/// which are text (`ed25519-private/<hex>`, mode 0600) so they can be inspected and backed up;
/// `fedctl show FILE` prints any of them readably.
#[derive(Debug, Parser)]
#[command(
    name = "fedctl",
    version,
    long_version = federation::manual::long_version(),
    about,
    long_about,
    after_help = TOP_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const TOP_HELP: &str = "\
Files:
  Every file fedctl writes is CBOR, except key files (`keygen`, `authority.key`): those are
  text, `ed25519-private/<64 hex digits>` with mode 0600, so they can be inspected and backed
  up like any secret key. `fedctl show FILE` prints any of them (a key file as its public key).

A federation from scratch:
  fedctl init-authority --name plc --out plc/
  fedctl keygen --out node1.key                  # prints ed25519/...
  fedctl certify --authority plc/ --subject ed25519/... --role node --site mit \\
                 --name node1.mit.edu --days 365 --out node1.cert
  fedctl show node1.cert

Run `fedctl <command> --help` for what each command accepts and writes.";

const KEYGEN_HELP: &str = "\
Writes:
  --out FILE: text `ed25519-private/<64 hex digits>`, mode 0600 (never overwritten; an
  existing file is an error). The public key `ed25519/<64 hex digits>` goes to stdout: give it
  to the authority (`fedctl certify --subject`). Back the file up; whoever holds it is the party.

Example:
  fedctl keygen --out alice.key
  fedctl show alice.key                           # prints the public key again";

const INIT_AUTHORITY_HELP: &str = "\
Writes, in the new directory --out:
  authority.key   the authority's secret key (text `ed25519-private/<hex>`, mode 0600)
  authority.cbor  its state: the next serial and everything revoked (CBOR)
  anchor.cbor     the self-signed federation name and key (CBOR): give it to every party that
                  trusts this federation, and to peer federations

Example:
  fedctl init-authority --name plc --out /etc/planetmesh/plc-authority";

const CERTIFY_HELP: &str = "\
Roles (--role): node, agent, broker or principal (a user; `user` is accepted too).
Expiry (--days): whole days of 86400 s from now, at least 1 (default 365).

Writes:
  --out FILE       the membership certificate (CBOR, signed by the authority)
  authority.cbor   in the authority directory: the serial counter moves on

Example:
  fedctl certify --authority plc/ --subject ed25519/3b6a... --role principal \\
                 --site princeton --name 'Larry Peterson' --days 90 --out llp.cert";

const PEER_HELP: &str = "\
Roles (--roles): comma-separated among node, agent, broker and principal: which members of the
  other federation this one serves (usually principal,broker).
Limits (all optional; absent means unlimited):
  --max-slivers N        slivers at once per principal of the other federation
  --max-duration-secs S  longest lease, in seconds
  --max-total R          resources at once for all the other federation's principals together,
                         as key=value pairs: cpu (cores or millicores: `4 cores`, `1500m`),
                         memory and disk (B, KiB, MiB, GiB, TiB, or kB, MB, GB, TB),
                         egress (kbit, Mbit, Gbit). A key left out is a limit of zero.
Expiry (--days): whole days of 86400 s from now, at least 1 (default 365).

Writes:
  --out FILE       the peering agreement (CBOR, signed by this authority): give it to this
                   federation's agents (`peering = [...]` in agent.toml)
  authority.cbor   in the authority directory: the serial counter moves on

Example:
  fedctl peer --authority plc/ --with-name ple --with-key ed25519/9f0c... \\
              --roles principal,broker --max-slivers 10 --max-duration-secs 604800 \\
              --max-total 'cpu=16 cores,memory=64GiB,disk=500GiB,egress=1Gbit' \\
              --days 180 --out plc-ple.peer";

const REVOKE_HELP: &str = "\
Serials (--serial) are those `certify` and `peer` print (and `fedctl show` shows); a revoked
key (--key) loses every certificate issued to it and is refused wherever a ticket names it
(issuing agent, holder, presenter). A delegation (--delegation NODE:AGENT[@UNIX_TIME]) is
revoked with every delegation NODE signed to AGENT up to that time (default: now); one signed
later stands. A ticket (--ticket, its 128-hex-digit id) is refused with every copy and
delegation of it. The new list holds everything revoked so far.

Every daemon applies a newer list at once: nodes refuse revoked tickets and end the leases of
revoked principals, agents and tickets; agents and brokers forget revoked nodes and agents.

Writes:
  --out FILE       the revocation list (CBOR, signed; version one above the previous list)
  authority.cbor   in the authority directory: what is revoked and the list's version

Publishes (with --publish ADDR): hands the list to the daemon at ADDR (a multiaddress with
/p2p/<peer id>), which checks it and gossips it to every daemon that trusts this federation;
daemons that join later fetch it from their peers. Without --publish: `fedctl publish FILE
--peer ADDR` later, or name the file in the daemons' `revocations = [...]`.

Example:
  fedctl revoke --authority plc/ --serial 12,15 --out plc-revoked-3.cbor \\
                --publish /ip4/10.0.0.1/tcp/4001/p2p/12D3KooW...";

const PUBLISH_HELP: &str = "\
The peer checks the list (signed by the authority it trusts for the list's federation, newer
than the one it holds), applies it at once and gossips it on; the answer says which.

Example:
  fedctl publish plc-revoked-3.cbor --peer /ip4/10.0.0.1/tcp/4001/p2p/12D3KooW...";

const SHOW_HELP: &str = "\
Reads certificates, peering agreements, revocation lists, anchors, ads and delegations (CBOR;
the signature is checked and the validity window compared with now), authority.cbor or an
authority directory, key files (text: the public key of a secret key file, which must be mode
0600) and public keys (`ed25519/<hex>`). Writes nothing.

Examples:
  fedctl show node1.cert
  fedctl show plc/                   # the authority's state: next serial, revocations
  fedctl show alice.key              # the public key of a secret key file";

/// The roles a member can have, as clap lists them (`user` is accepted for `principal`).
fn role_parser() -> impl TypedValueParser<Value = Role> {
    PossibleValuesParser::new([
        PossibleValue::new("node"),
        PossibleValue::new("agent"),
        PossibleValue::new("broker"),
        PossibleValue::new("principal").alias("user"),
    ])
    .try_map(|name| name.parse::<Role>())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a party key (node, agent, broker or principal) and print its public key.
    ///
    /// The file holds `ed25519-private/<hex>` as text with mode 0600 and is never overwritten.
    #[command(after_help = KEYGEN_HELP)]
    Keygen {
        /// Where to write the secret key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Create a federation authority in a new directory.
    ///
    /// Writes authority.key (secret, mode 0600), authority.cbor (serial counter and
    /// revocations) and anchor.cbor (the self-signed name and key to give to other parties).
    #[command(after_help = INIT_AUTHORITY_HELP)]
    InitAuthority {
        /// The federation's name: 1 to 64 characters among a-z, 0-9, '.', '_' and '-'.
        #[arg(long)]
        name: String,
        /// The authority's directory (created; must not hold an authority already).
        #[arg(long)]
        out: PathBuf,
    },
    /// Certify a key as a member of the federation.
    #[command(after_help = CERTIFY_HELP)]
    Certify {
        /// The authority's directory.
        #[arg(long)]
        authority: PathBuf,
        /// The member's public key, `ed25519/<64 hex digits>`.
        #[arg(long)]
        subject: PublicKey,
        /// What the member is.
        #[arg(long, value_parser = role_parser())]
        role: Role,
        /// The member's site (institution).
        #[arg(long)]
        site: String,
        /// A human name for the member (host name, person's name).
        #[arg(long)]
        name: String,
        /// Days of validity from now (days of 86400 s, at least 1).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..))]
        days: u64,
        /// Where to write the certificate.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a peering agreement: this federation serves members of another one.
    #[command(after_help = PEER_HELP)]
    Peer {
        /// The authority's directory.
        #[arg(long)]
        authority: PathBuf,
        /// The other federation's name.
        #[arg(long)]
        with_name: String,
        /// The other federation's authority key, `ed25519/<64 hex digits>`.
        #[arg(long)]
        with_key: PublicKey,
        /// Which roles of the other federation are served, comma-separated.
        #[arg(long, value_delimiter = ',', required = true, value_parser = role_parser())]
        roles: Vec<Role>,
        /// Serve only these principals of the other federation (comma-separated keys);
        /// without it every certified principal is served.
        #[arg(long, value_delimiter = ',')]
        principals: Vec<PublicKey>,
        /// At most this many slivers at once per principal.
        #[arg(long)]
        max_slivers: Option<u32>,
        /// At most this lease duration, in seconds.
        #[arg(long)]
        max_duration_secs: Option<u64>,
        /// At most these resources at once for all the other federation's principals together,
        /// e.g. `cpu=16 cores,memory=64GiB,disk=500GiB,egress=1Gbit` (a key left out is zero).
        #[arg(long)]
        max_total: Option<Resources>,
        /// Days of validity from now (days of 86400 s, at least 1).
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u64).range(1..))]
        days: u64,
        /// Where to write the agreement.
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke certificates or agreements (by serial) or keys, and sign the new revocation list.
    ///
    /// The list holds everything revoked so far, with a version one above the previous list.
    #[command(after_help = REVOKE_HELP)]
    Revoke {
        /// The authority's directory.
        #[arg(long)]
        authority: PathBuf,
        /// Serials to revoke (repeat or comma-separate).
        #[arg(
            long,
            value_delimiter = ',',
            required_unless_present_any = ["key", "delegation", "ticket"]
        )]
        serial: Vec<u64>,
        /// Keys to revoke (repeat or comma-separate); every certificate of them dies.
        #[arg(long, value_delimiter = ',')]
        key: Vec<PublicKey>,
        /// Delegations to revoke, as NODE:AGENT or NODE:AGENT@UNIX_TIME (repeat or
        /// comma-separate): those NODE signed to AGENT up to the time (default: now).
        #[arg(long, value_delimiter = ',')]
        delegation: Vec<String>,
        /// Tickets to revoke, by id (repeat or comma-separate).
        #[arg(long, value_delimiter = ',')]
        ticket: Vec<TicketId>,
        /// Where to write the revocation list.
        #[arg(long)]
        out: PathBuf,
        /// Hand the list to this daemon (a multiaddress with /p2p/PEER_ID), which gossips it.
        #[arg(long)]
        publish: Option<Multiaddr>,
    },
    /// Hand a revocation list to a running daemon, which checks it and gossips it to all.
    #[command(after_help = PUBLISH_HELP)]
    Publish {
        /// The revocation list (from `fedctl revoke`).
        list: PathBuf,
        /// The daemon to hand it to (a multiaddress with /p2p/PEER_ID).
        #[arg(long)]
        peer: Multiaddr,
    },
    /// Print a file made by fedctl (or a signed ad or delegation) and check its signature.
    ///
    /// Accepts certificates, agreements, revocation lists, anchors, ads, delegations,
    /// authority.cbor, key files and authority directories.
    #[command(after_help = SHOW_HELP)]
    Show {
        /// The file or authority directory.
        file: PathBuf,
        /// Print one JSON object (kind, signature verdict, body with raw values) instead.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Manual(federation::manual::ManualCommand),
}

fn main() -> ExitCode {
    exit("fedctl", run(Cli::parse()))
}

/// A refusal to overwrite `--out` says to pick another.
fn another_out(failure: Failure) -> Failure {
    if failure.class() == Class::Usage {
        failure.hint("pass another --out (fedctl never overwrites a key or an authority)")
    } else {
        failure
    }
}

/// An authority directory that is not one says which one `--authority` wants.
fn load_authority(dir: &Path) -> Result<Authority, Failure> {
    Authority::load(dir).map_err(|e| {
        let failure = Failure::from(e);
        if dir.join(STATE_FILE).exists() {
            failure
        } else {
            failure.hint(format!(
                "--authority names the directory `fedctl init-authority --out {}` wrote",
                dir.display()
            ))
        }
    })
}

fn run(cli: Cli) -> Result<(), Failure> {
    let now = unix_now();
    match cli.command {
        Command::Manual(manual) => manual.run::<Cli>()?,
        Command::Keygen { out } => {
            let key = SecretKey::generate();
            key.save(&out).map_err(|e| another_out(e.into()))?;
            println!("{}", key.public());
            eprintln!(
                "next, for the federation's authority: fedctl certify --authority <authority dir> \
                 --role <node|agent|broker|principal> --subject {} --site <site> --name <name> \
                 --out <file>",
                key.public()
            );
        }
        Command::InitAuthority { name, out } => {
            let authority = Authority::create(&name)?;
            authority
                .save_new(&out, now)
                .map_err(|e| another_out(e.into()))?;
            println!("federation {name}");
            println!("authority  {}", authority.public());
            println!("anchor     {}", out.join(ANCHOR_FILE).display());
            println!("{}", next_after_authority(&out));
        }
        Command::Certify {
            authority: dir,
            subject,
            role,
            site,
            name,
            days,
            out,
        } => {
            let mut authority = load_authority(&dir)?;
            let cert = authority.certify(subject, role, &site, &name, Validity::days(now, days));
            write_signed(&out, &cert)?;
            authority.save_state(&dir)?;
            print!("{}", show_cert(&cert, now));
            println!("{}", next_after_certify(role, &out));
        }
        Command::Peer {
            authority: dir,
            with_name,
            with_key,
            roles,
            principals,
            max_slivers,
            max_duration_secs,
            max_total,
            days,
            out,
        } => {
            federation::trust::check_federation_name(&with_name)?;
            let mut authority = load_authority(&dir)?;
            // A federation is its authority's key: another testbed's `fed0` is another
            // federation; only the own key is refused.
            if with_key == authority.public() {
                return Err(usage(format!(
                    "a federation does not peer with itself ({with_key} is this authority's \
                     key); --with-key names the other federation's authority"
                ))
                .into());
            }
            let filter = if principals.is_empty() {
                PrincipalFilter::All
            } else {
                PrincipalFilter::Only(principals)
            };
            let limits = PeeringLimits {
                max_slivers_per_principal: max_slivers,
                max_total,
                max_duration_secs,
            };
            let agreement = authority.peer(
                &with_name,
                with_key,
                &roles,
                filter,
                limits,
                Validity::days(now, days),
            );
            write_signed(&out, &agreement)?;
            authority.save_state(&dir)?;
            print!("{}", show_agreement(&agreement, now));
            println!(
                "next: give {} to this federation's agents (peering = [...] in agent.toml, then \
                 restart them); the other federation's authority runs: fedctl peer --authority \
                 <its dir> --with-name {} --with-key {} --roles principal,broker --out <file>",
                out.display(),
                authority.name(),
                authority.public()
            );
        }
        Command::Revoke {
            authority: dir,
            serial,
            key,
            delegation,
            ticket,
            out,
            publish: peer,
        } => {
            let delegations = delegation
                .iter()
                .map(|text| parse_delegation(text, now))
                .collect::<Result<Vec<_>, _>>()?;
            let mut authority = load_authority(&dir)?;
            let add = Revoke {
                serials: serial,
                keys: key,
                delegations,
                tickets: ticket,
            };
            let list = authority.revoke_with(&add, now);
            write_signed(&out, &list)?;
            authority.save_state(&dir)?;
            print!("{}", show_revocation(&list));
            match peer {
                Some(peer) => publish(list, &peer)?,
                None => println!(
                    "next: fedctl publish {} --peer <daemon multiaddress>",
                    out.display()
                ),
            }
        }
        Command::Publish { list, peer } => {
            let list = read_signed::<RevocationList>(&list)?;
            publish(list, &peer)?;
        }
        Command::Show { file, json } => {
            let shown = read_shown(&file).map_err(|e| {
                Failure::from(e).hint(
                    "`fedctl show` reads a file fedctl wrote (a key, certificate, agreement, \
                     revocation list, anchor) or an authority directory",
                )
            })?;
            if json {
                println!("{:#}", shown.json());
            } else {
                print!("{}", shown.text(now));
            }
        }
    }
    Ok(())
}

/// The next command after `init-authority`, for the members to be.
fn next_after_authority(dir: &Path) -> String {
    format!(
        "next, on each member's machine: nodemgr key --new --dir /etc/planetmesh/node (agentd \
         key --new --dir /etc/planetmesh/agent, broker alike), then here: fedctl certify \
         --authority {} --role <role> --subject <the key it printed> --site <site> --name \
         <host> --out <file>",
        dir.display()
    )
}

/// The next command after `certify`, for the member: join with the certificate.
fn next_after_certify(role: Role, out: &Path) -> String {
    let (program, dir, state) = match role {
        Role::Node => ("nodemgr", "node", " --state-dir /var/lib/planetmesh/node"),
        Role::Agent => ("agentd", "agent", " --state-dir /var/lib/planetmesh/agent"),
        Role::Broker => ("broker", "broker", ""),
        _ => {
            return format!(
                "next, for the user: put {} as `membership` in slicectl.toml (or pass --cert {}), \
                 then: slicectl slice create ...",
                out.display(),
                out.display()
            );
        }
    };
    format!(
        "next, on the member's machine (with {} copied there): {program} init --dir \
         /etc/planetmesh/{dir} --federation-cert {}{state} --bootstrap <a running daemon's \
         address from its `key` command>",
        out.display(),
        out.display()
    )
}

/// The readable form of any file fedctl knows.
/// What `fedctl show` read from a file.
enum Shown {
    /// A secret key file, by its public key.
    SecretKey(PublicKey),
    PublicKey(PublicKey),
    Cert(Signed<MembershipCert>),
    Agreement(Signed<PeeringAgreement>),
    Revocation(Signed<RevocationList>),
    Anchor(Signed<FederationAnchor>),
    Ad(Signed<ResourceAd>),
    Delegation(Signed<Delegation>),
    State(AuthorityState),
}

fn read_shown(path: &Path) -> Result<Shown> {
    if path.is_dir() {
        return read_shown(&path.join(STATE_FILE));
    }
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Ok(text) = std::str::from_utf8(&bytes) {
        let text = text.trim();
        if text.starts_with(capability_schema::identity::SECRET_PREFIX) {
            let key = SecretKey::load(path)
                .with_context(|| format!("cannot show the key file {}", path.display()))?;
            return Ok(Shown::SecretKey(key.public()));
        }
        if let Ok(key) = text.parse::<PublicKey>() {
            return Ok(Shown::PublicKey(key));
        }
    }
    if let Ok(signed) = Signed::<MembershipCert>::from_bytes(&bytes) {
        // The body is kept as bytes, so any signed object decodes this far; its domain tag
        // says what it is.
        return Ok(match signed.domain.as_str() {
            MembershipCert::DOMAIN => Shown::Cert(signed),
            PeeringAgreement::DOMAIN => Shown::Agreement(retype(&bytes)?),
            RevocationList::DOMAIN => Shown::Revocation(retype(&bytes)?),
            FederationAnchor::DOMAIN => Shown::Anchor(retype(&bytes)?),
            ResourceAd::DOMAIN => Shown::Ad(retype(&bytes)?),
            Delegation::DOMAIN => Shown::Delegation(retype(&bytes)?),
            other => {
                return Err(usage(format!(
                    "{}: a signed object of unknown kind {other:?}",
                    path.display()
                )));
            }
        });
    }
    if let Ok(state) = capability_schema::codec::decode::<AuthorityState>(&bytes) {
        return Ok(Shown::State(state));
    }
    Err(usage(format!(
        "{}: not a PlanetMesh key, signed object or authority state",
        path.display()
    )))
}

impl Shown {
    /// The readable form, with times as dates and validity judged at `now`.
    fn text(&self, now: u64) -> String {
        match self {
            Shown::SecretKey(public) => {
                format!("secret key file (text, not CBOR)\npublic key: {public}\n")
            }
            Shown::PublicKey(key) => format!("public key: {key}\n"),
            Shown::Cert(signed) => show_cert(signed, now),
            Shown::Agreement(signed) => show_agreement(signed, now),
            Shown::Revocation(signed) => show_revocation(signed),
            Shown::Anchor(signed) => show_anchor(signed),
            Shown::Ad(signed) => show_ad(signed, now),
            Shown::Delegation(signed) => show_delegation(signed, now),
            Shown::State(state) => show_state(state),
        }
    }

    /// The JSON form: `kind`, and for signed objects the domain, the signature's verdict and
    /// the body with raw values (Unix seconds, keys as text).
    fn json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Shown::SecretKey(public) => json!({"kind": "secret_key", "public_key": public}),
            Shown::PublicKey(key) => json!({"kind": "public_key", "public_key": key}),
            Shown::Cert(signed) => {
                signed_json("membership_certificate", signed, |c| Some(c.authority))
            }
            Shown::Agreement(signed) => {
                signed_json("peering_agreement", signed, |a| Some(a.authority))
            }
            Shown::Revocation(signed) => {
                signed_json("revocation_list", signed, |l| Some(l.authority))
            }
            Shown::Anchor(signed) => {
                signed_json("federation_anchor", signed, |a| Some(a.authority))
            }
            Shown::Ad(signed) => signed_json("resource_ad", signed, |a| Some(a.node)),
            Shown::Delegation(signed) => signed_json("delegation", signed, |d| Some(d.node)),
            Shown::State(state) => json!({"kind": "authority_state", "body": state}),
        }
    }
}

/// A signed object as JSON; `authority` names the key that should have signed it.
fn signed_json<T: SignedType + serde::Serialize>(
    kind: &str,
    signed: &Signed<T>,
    authority: impl Fn(&T) -> Option<PublicKey>,
) -> serde_json::Value {
    let (valid, error, body) = match signed.verify() {
        Ok(body) => (true, None, Some(body)),
        Err(e) => (false, Some(e.to_string()), signed.peek_unverified().ok()),
    };
    let by_authority = body
        .as_ref()
        .and_then(&authority)
        .map(|k| k == signed.signer);
    serde_json::json!({
        "kind": kind,
        "domain": signed.domain,
        "signature": {
            "valid": valid,
            "signer": signed.signer,
            "by_authority": by_authority,
            "error": error,
        },
        "body": body,
    })
}

fn retype<T: SignedType>(bytes: &[u8]) -> Result<Signed<T>> {
    Ok(Signed::<T>::from_bytes(bytes)?)
}

/// Date and time (UTC) of Unix seconds, `YYYY-MM-DD HH:MM:SS UTC`.
fn date(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn window(not_before: u64, not_after: u64, now: u64) -> String {
    let state = if now < not_before {
        "not yet valid"
    } else if now > not_after {
        "EXPIRED"
    } else {
        "valid now"
    };
    format!(
        "valid:      {} .. {} ({state})\n",
        date(not_before),
        date(not_after)
    )
}

/// The signature line, and the body if it decodes.
fn verdict<T: SignedType>(
    signed: &Signed<T>,
    authority: impl Fn(&T) -> Option<PublicKey>,
) -> (String, Option<T>) {
    match signed.verify() {
        Ok(body) => {
            let by_authority = match authority(&body) {
                Some(key) if key == signed.signer => " (its authority)",
                Some(_) => " (NOT the authority named inside)",
                None => "",
            };
            (
                format!("signature:  valid, by {}{by_authority}\n", signed.signer),
                Some(body),
            )
        }
        Err(e) => {
            let body = signed.peek_unverified().ok();
            (format!("signature:  INVALID ({e})\n"), body)
        }
    }
}

fn show_cert(signed: &Signed<MembershipCert>, now: u64) -> String {
    let (sig, body) = verdict(signed, |c| Some(c.authority));
    let mut out = String::from("membership certificate\n");
    if let Some(c) = body {
        out += &format!("federation: {}\n", c.federation);
        out += &format!("authority:  {}\n", c.authority);
        out += &format!("subject:    {}\n", c.subject);
        out += &format!("role:       {}\n", c.role);
        out += &format!("site:       {}\n", c.site);
        out += &format!("name:       {}\n", c.name);
        out += &format!("serial:     {}\n", c.serial);
        out += &window(c.issued_at, c.expires_at, now);
    }
    out + &sig
}

fn show_agreement(signed: &Signed<PeeringAgreement>, now: u64) -> String {
    let (sig, body) = verdict(signed, |a| Some(a.authority));
    let mut out = String::from("peering agreement\n");
    if let Some(a) = body {
        out += &format!("federation: {} ({})\n", a.federation, a.authority);
        out += &format!("serves:     {} ({})\n", a.peer_federation, a.peer_authority);
        let roles: Vec<String> = a.roles.iter().map(ToString::to_string).collect();
        out += &format!("roles:      {}\n", roles.join(", "));
        match &a.principals {
            PrincipalFilter::All => out += "principals: all certified principals\n",
            PrincipalFilter::Only(keys) => {
                out += &format!("principals: only {} listed\n", keys.len());
                for key in keys {
                    out += &format!("  - {key}\n");
                }
            }
        }
        let limits = &a.limits;
        out += &format!(
            "limits:     slivers per principal {}, lease duration {}, total {}\n",
            limits
                .max_slivers_per_principal
                .map_or("unlimited".into(), |n| n.to_string()),
            limits
                .max_duration_secs
                .map_or("unlimited".into(), |s| format!("{s} s")),
            limits
                .max_total
                .as_ref()
                .map_or("unlimited".into(), ToString::to_string),
        );
        out += &format!("serial:     {}\n", a.serial);
        out += &window(a.issued_at, a.expires_at, now);
    }
    out + &sig
}

/// `NODE:AGENT` or `NODE:AGENT@UNIX_TIME` as a revoked delegation (default time: `now`).
fn parse_delegation(text: &str, now: u64) -> Result<RevokedDelegation, Failure> {
    let bad = |detail: String| {
        Failure::from(usage(format!("--delegation {text:?}: {detail}")))
            .hint("write --delegation NODE_KEY:AGENT_KEY, or NODE_KEY:AGENT_KEY@UNIX_TIME")
    };
    let (keys, until) = match text.split_once('@') {
        Some((keys, time)) => (
            keys,
            time.parse::<u64>()
                .map_err(|_| bad(format!("{time:?} is not a unix time")))?,
        ),
        None => (text, now),
    };
    let (node, agent) = keys
        .split_once(':')
        .ok_or_else(|| bad("expected NODE:AGENT".into()))?;
    let key = |k: &str| {
        k.parse::<PublicKey>()
            .map_err(|e| bad(format!("{k:?} is not a key: {e}")))
    };
    Ok(RevokedDelegation {
        node: key(node)?,
        agent: key(agent)?,
        issued_until: until,
    })
}

/// How long `fedctl publish` waits for the peer's verdict.
const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Hands `list` to the daemon at `peer` through a short-lived overlay client of its own (a
/// throwaway key, no listening beyond an ephemeral port, trusting nobody) and prints the
/// daemon's verdict and what to do next.
fn publish(list: Signed<RevocationList>, peer: &Multiaddr) -> Result<(), Failure> {
    use federation::overlay::{Overlay, OverlayConfig};
    let body = list.verify()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let verdict = runtime.block_on(async {
        let config = OverlayConfig {
            kademlia: false,
            ..OverlayConfig::default()
        };
        let trust = std::sync::Arc::new(std::sync::RwLock::new(federation::TrustStore::new()));
        let overlay = Overlay::start(&SecretKey::generate(), config, trust).await?;
        let result = async {
            let remote = tokio::time::timeout(PUBLISH_TIMEOUT, overlay.dial(peer.clone()))
                .await
                .map_err(|_| federation::OverlayError::Dial {
                    addr: peer.to_string(),
                    detail: format!("no connection within {PUBLISH_TIMEOUT:?}"),
                })??;
            overlay
                .offer_revocation(&remote, list, PUBLISH_TIMEOUT)
                .await
        }
        .await;
        overlay.shutdown().await;
        result
    });
    let verdict = verdict.map_err(|e| {
        Failure::from(e).hint("check the address (with /p2p/<peer id>) and that the daemon runs")
    })?;
    println!("published to {peer}: {verdict}");
    match verdict {
        RevocationVerdict::Applied { .. } | RevocationVerdict::Held { .. } => {
            println!(
                "next: every daemon that trusts {:?} applies v{} within seconds (each logs \
                 \"revocation list applied\"); daemons started later fetch it from their peers",
                body.federation, body.version
            );
            Ok(())
        }
        RevocationVerdict::Stale { have, .. } => Err(Failure::from(usage(format!(
            "the daemon holds a newer list (v{have}) than this one (v{})",
            body.version
        )))
        .hint("publish the newest list the authority signed (fedctl show <authority dir>)")),
        RevocationVerdict::Refused { reason } => Err(Failure::from(usage(format!(
            "the daemon refused the list: {reason}"
        )))
        .hint(format!(
            "the daemon must trust {:?}'s authority {} ([[trust]] in its config)",
            body.federation, body.authority
        ))),
    }
}

fn show_revocation(signed: &Signed<RevocationList>) -> String {
    let (sig, body) = verdict(signed, |l| Some(l.authority));
    let mut out = String::from("revocation list\n");
    if let Some(l) = body {
        out += &format!("federation: {} ({})\n", l.federation, l.authority);
        out += &format!("version:    {}\n", l.version);
        out += &format!("issued:     {}\n", date(l.issued_at));
        let serials: Vec<String> = l.serials.iter().map(ToString::to_string).collect();
        out += &format!("serials:    {}\n", serials.join(", "));
        out += &format!("keys:       {}\n", l.keys.len());
        for key in &l.keys {
            out += &format!("  - {key}\n");
        }
        out += &format!("delegations: {}\n", l.delegations.len());
        for d in &l.delegations {
            out += &format!(
                "  - node {} to agent {}, signed up to {}\n",
                d.node,
                d.agent,
                date(d.issued_until)
            );
        }
        out += &format!("tickets:    {}\n", l.tickets.len());
        for t in &l.tickets {
            out += &format!("  - {t}\n");
        }
    }
    out + &sig
}

fn show_anchor(signed: &Signed<FederationAnchor>) -> String {
    let (sig, body) = verdict(signed, |a| Some(a.authority));
    let mut out = String::from("federation anchor\n");
    if let Some(a) = body {
        out += &format!("federation: {}\n", a.name);
        out += &format!("authority:  {}\n", a.authority);
        out += &format!("created:    {}\n", date(a.created_at));
    }
    out + &sig
}

fn show_ad(signed: &Signed<ResourceAd>, now: u64) -> String {
    let (sig, body) = verdict(signed, |a| Some(a.node));
    let mut out = String::from("resource ad\n");
    if let Some(a) = body {
        out += &format!("node:       {} ({})\n", a.node, a.name);
        // A federation is its authority's key; the name is a label.
        match a.membership.peek_unverified() {
            Ok(cert) => {
                out += &format!("federation: {} ({})\n", a.federation, cert.authority);
            }
            Err(_) => out += &format!("federation: {} (membership unreadable)\n", a.federation),
        }
        out += &format!("site:       {}\n", a.site);
        out += &format!("capacity:   {}\n", a.capacity);
        out += &format!("committed:  {}\n", a.committed);
        out += &format!("seq:        {}\n", a.seq);
        out += &window(a.issued_at, a.expires_at(), now);
    }
    out + &sig
}

fn show_delegation(signed: &Signed<Delegation>, now: u64) -> String {
    let (sig, body) = verdict(signed, |d| Some(d.node));
    let mut out = String::from("delegation\n");
    if let Some(d) = body {
        out += &format!("node:       {}\n", d.node);
        out += &format!("agent:      {}\n", d.agent);
        out += &format!("share:      {}\n", d.share);
        out += &format!("scope:      {}\n", d.scope);
        out += &window(d.issued_at, d.not_after, now);
    }
    out + &sig
}

fn show_state(state: &AuthorityState) -> String {
    let mut out = String::from("authority state\n");
    out += &format!("federation: {}\n", state.name);
    out += &format!("authority:  {}\n", state.authority);
    out += &format!("next serial: {}\n", state.next_serial);
    out += &format!("revocation version: {}\n", state.revocation_version);
    let serials: Vec<String> = state
        .revoked_serials
        .iter()
        .map(ToString::to_string)
        .collect();
    out += &format!("revoked serials: {}\n", serials.join(", "));
    out += &format!("revoked keys: {}\n", state.revoked_keys.len());
    for key in &state.revoked_keys {
        out += &format!("  - {key}\n");
    }
    out += &format!("revoked delegations: {}\n", state.revoked_delegations.len());
    for d in &state.revoked_delegations {
        out += &format!(
            "  - node {} to agent {}, signed up to {}\n",
            d.node,
            d.agent,
            date(d.issued_until)
        );
    }
    out += &format!("revoked tickets: {}\n", state.revoked_tickets.len());
    for t in &state.revoked_tickets {
        out += &format!("  - {t}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::date;

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(date(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}
