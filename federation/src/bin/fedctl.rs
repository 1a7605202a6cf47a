//! `fedctl`: the federation operator's tool.
//!
//! Creates a federation authority, certifies members, signs peering agreements and
//! revocation lists, and shows any of these files in readable form. Every output file is
//! CBOR; `fedctl show FILE` prints it and says whether its signature verifies.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use capability_schema::ad::ResourceAd;
use capability_schema::membership::{PeeringLimits, PrincipalFilter};
use capability_schema::{
    Delegation, MembershipCert, PeeringAgreement, PublicKey, RevocationList, Role, SecretKey,
    Signed, SignedType,
};
use clap::{Parser, Subcommand};
use federation::trust::{
    ANCHOR_FILE, Authority, AuthorityState, FederationAnchor, STATE_FILE, Validity, write_signed,
};
use federation::unix_now;

/// Operate a PlanetMesh federation authority.
///
/// A federation is a name plus an authority key. The authority certifies members (nodes,
/// agents, brokers, principals), signs peering agreements with other federations and
/// revokes what it no longer stands behind. Output files are CBOR; inspect any of them with
/// `fedctl show FILE`.
#[derive(Debug, Parser)]
#[command(name = "fedctl", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate a party key (node, agent, broker or principal) and print its public key.
    ///
    /// The file holds `ed25519-private/<hex>` with mode 0600 and is never overwritten.
    Keygen {
        /// Where to write the secret key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Create a federation authority in a new directory.
    ///
    /// Writes authority.key (secret, mode 0600), authority.cbor (serial counter and
    /// revocations) and anchor.cbor (the self-signed name and key to give to other parties).
    InitAuthority {
        /// The federation's name: 1 to 64 characters among a-z, 0-9, '.', '_' and '-'.
        #[arg(long)]
        name: String,
        /// The authority's directory (created; must not hold an authority already).
        #[arg(long)]
        out: PathBuf,
    },
    /// Certify a key as a member of the federation.
    Certify {
        /// The authority's directory.
        #[arg(long)]
        authority: PathBuf,
        /// The member's public key, `ed25519/<64 hex digits>`.
        #[arg(long)]
        subject: PublicKey,
        /// What the member is: node, agent, broker or principal.
        #[arg(long)]
        role: Role,
        /// The member's site (institution).
        #[arg(long)]
        site: String,
        /// A human name for the member (host name, person's name).
        #[arg(long)]
        name: String,
        /// Days of validity from now.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Where to write the certificate.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a peering agreement: this federation serves members of another one.
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
        #[arg(long, value_delimiter = ',', required = true)]
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
        /// Days of validity from now.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Where to write the agreement.
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke certificates or agreements (by serial) or keys, and sign the new revocation list.
    ///
    /// The list holds everything revoked so far, with a version one above the previous list.
    Revoke {
        /// The authority's directory.
        #[arg(long)]
        authority: PathBuf,
        /// Serials to revoke (repeat or comma-separate).
        #[arg(long, value_delimiter = ',', required_unless_present = "key")]
        serial: Vec<u64>,
        /// Keys to revoke (repeat or comma-separate); every certificate of them dies.
        #[arg(long, value_delimiter = ',')]
        key: Vec<PublicKey>,
        /// Where to write the revocation list.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a file made by fedctl (or a signed ad or delegation) and check its signature.
    ///
    /// Accepts certificates, agreements, revocation lists, anchors, ads, delegations,
    /// authority.cbor, key files and authority directories.
    Show {
        /// The file or authority directory.
        file: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let now = unix_now();
    match cli.command {
        Command::Keygen { out } => {
            let key = SecretKey::generate();
            key.save(&out)?;
            println!("{}", key.public());
        }
        Command::InitAuthority { name, out } => {
            let authority = Authority::create(&name)?;
            authority.save_new(&out, now)?;
            println!("federation {name}");
            println!("authority  {}", authority.public());
            println!("anchor     {}", out.join(ANCHOR_FILE).display());
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
            let mut authority = Authority::load(&dir)?;
            let cert = authority.certify(subject, role, &site, &name, Validity::days(now, days));
            write_signed(&out, &cert)?;
            authority.save_state(&dir)?;
            print!("{}", show_cert(&cert, now));
        }
        Command::Peer {
            authority: dir,
            with_name,
            with_key,
            roles,
            principals,
            max_slivers,
            max_duration_secs,
            days,
            out,
        } => {
            federation::trust::check_federation_name(&with_name)?;
            let mut authority = Authority::load(&dir)?;
            if with_name == authority.name() {
                bail!("a federation does not peer with itself ({with_name})");
            }
            let filter = if principals.is_empty() {
                PrincipalFilter::All
            } else {
                PrincipalFilter::Only(principals)
            };
            let limits = PeeringLimits {
                max_slivers_per_principal: max_slivers,
                max_total: None,
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
        }
        Command::Revoke {
            authority: dir,
            serial,
            key,
            out,
        } => {
            let mut authority = Authority::load(&dir)?;
            let list = authority.revoke(&serial, &key, now);
            write_signed(&out, &list)?;
            authority.save_state(&dir)?;
            print!("{}", show_revocation(&list));
        }
        Command::Show { file } => print!("{}", show(&file, now)?),
    }
    Ok(())
}

/// The readable form of any file fedctl knows.
fn show(path: &Path, now: u64) -> Result<String> {
    if path.is_dir() {
        return show(&path.join(STATE_FILE), now);
    }
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Ok(text) = std::str::from_utf8(&bytes) {
        let text = text.trim();
        if text.starts_with(capability_schema::identity::SECRET_PREFIX) {
            let key = SecretKey::load(path)?;
            return Ok(format!("secret key file\npublic key: {}\n", key.public()));
        }
        if let Ok(key) = text.parse::<PublicKey>() {
            return Ok(format!("public key: {key}\n"));
        }
    }
    if let Ok(signed) = Signed::<MembershipCert>::from_bytes(&bytes) {
        // The body is kept as bytes, so any signed object decodes this far; its domain tag
        // says what it is.
        let out = match signed.domain.as_str() {
            MembershipCert::DOMAIN => show_cert(&signed, now),
            PeeringAgreement::DOMAIN => show_agreement(&retype(&bytes)?, now),
            RevocationList::DOMAIN => show_revocation(&retype(&bytes)?),
            FederationAnchor::DOMAIN => show_anchor(&retype(&bytes)?),
            ResourceAd::DOMAIN => show_ad(&retype(&bytes)?, now),
            Delegation::DOMAIN => show_delegation(&retype(&bytes)?, now),
            other => bail!(
                "{}: a signed object of unknown kind {other:?}",
                path.display()
            ),
        };
        return Ok(out);
    }
    if let Ok(state) = capability_schema::codec::decode::<AuthorityState>(&bytes) {
        return Ok(show_state(&state));
    }
    bail!(
        "{}: not a PlanetMesh key, signed object or authority state",
        path.display()
    )
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
                .map_or("unlimited".into(), |r| format!("{r:?}")),
        );
        out += &format!("serial:     {}\n", a.serial);
        out += &window(a.issued_at, a.expires_at, now);
    }
    out + &sig
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
        out += &format!("federation: {}\n", a.federation);
        out += &format!("site:       {}\n", a.site);
        out += &format!("capacity:   {:?}\n", a.capacity);
        out += &format!("committed:  {:?}\n", a.committed);
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
        out += &format!("share:      {:?}\n", d.share);
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
