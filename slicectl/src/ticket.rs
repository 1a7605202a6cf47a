//! `slicectl ticket`: tickets in their holders' hands. A user reads a ticket, narrows it and
//! hands it to a collaborator by the collaborator's public key, all offline; the collaborator
//! imports it and redeems it at its node, which walks the holder chain.
//!
//! How a ticket travels:
//! 1. `ticket acquire` (the bin's wiring, [`acquire`]): tickets are acquired as `slice create`
//!    does but kept unredeemed in the local state, so they can be handed on;
//! 2. `ticket show` ([`show`]): what a ticket grants, read without the issuer's key
//!    ([`Ticket::read`]: every signature is checked against the key the ticket names);
//! 3. `ticket attenuate` ([`attenuate`]): appends a block with fewer resources, an earlier
//!    end, or no renew; anything wider is refused here, before a node refuses it;
//! 4. `ticket delegate` ([`delegate`]): the current holder signs a block naming the next
//!    holder; a ticket handed on this way leaves the giver's unredeemed tickets;
//! 5. `ticket import` ([`import`]) stores a ticket the user holds as an unredeemed ticket of
//!    its slice (so `slice sync` redeems it and `slice exec` etc. use the lease), and
//!    `ticket redeem` ([`redeem`]) imports and redeems it at once.
//!
//! A ticket names a file (a [`TicketFile`]: the text form, with `#` lines saying what it is
//! and where its node listens), `-` for standard input, a ticket of one of the user's slices
//! as `SLICE/NODE` (NODE: the site, the key or the start of its hex), or the text itself.
//! Steps 2 to 5 never touch the network.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use capability_schema::protocol::{IssuedTicket, NodeRequest, NodeResponse, TicketBytes};
use capability_schema::resources::ResourceKind;
use capability_schema::slice::SliverTarget;
use capability_schema::ticket::{
    Attenuation, Operation, Ticket, TicketContents, TicketError, TicketRefusal, Window,
};
use capability_schema::{
    AcquireMode, MembershipCert, PublicKey, Resources, SecretKey, Signed, SliceRequest, codec,
};
use federation::unix_now;
use serde_json::{Value, json};

use crate::client::call_class;
use crate::exit::ExitClass;
use crate::ops::{Manager, OpError, Outcome};
use crate::spec::{SliceSpec, parse_duration};
use crate::state::{LeaseEntry, SliceRecord, State, StateError, TicketEntry, node_label};

/// The `ticket` subcommands that take no slice spec (the bin adds `acquire`).
#[derive(clap::Subcommand, Debug)]
pub enum TicketCommand {
    /// What a ticket grants: node, federation, slice, kind, resources, window (local time),
    /// operations, holder chain, id, price. Offline: no key of the issuer is needed (every
    /// signature is checked against the key the ticket names; the node decides whether it
    /// trusts that agent).
    Show {
        /// A ticket file, `-` (standard input), SLICE/NODE (an unredeemed ticket of one of
        /// your slices; NODE is its site, key or key prefix), or the ticket's text.
        ticket: String,
    },
    /// Narrow a ticket into a new file: fewer resources, an earlier end, no renew. Offline;
    /// anything wider than the ticket grants is refused (and a node refuses it too).
    Attenuate {
        /// The ticket (as for `show`).
        ticket: String,
        /// At most these resources, e.g. cpu=250m,memory=128MiB (what is not named stays as
        /// the ticket grants it).
        #[arg(long)]
        resources: Option<String>,
        /// End the ticket earlier: a duration from now (e.g. 30m) or @SECONDS (a unix time).
        #[arg(long)]
        until: Option<String>,
        /// The holder may redeem the ticket but not renew its lease.
        #[arg(long)]
        no_renew: bool,
        /// The file to write (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Hand a ticket to a collaborator: signs a block naming them as the next holder with
    /// your principal key (you must hold the ticket now). Offline. A ticket of your slices
    /// handed on leaves your unredeemed tickets.
    Delegate {
        /// The ticket (as for `show`).
        ticket: String,
        /// The collaborator: a public key (ed25519/…), a file holding one, or their
        /// membership certificate.
        #[arg(long)]
        to: String,
        /// The file to write (never overwritten); send it to the collaborator.
        #[arg(long)]
        out: PathBuf,
    },
    /// Your public key (from your principal key file), to give to whoever hands you a
    /// ticket (`ticket delegate --to`). Offline.
    Key,
    /// Store a ticket you hold as an unredeemed ticket of its slice; `slicectl slice sync
    /// SLICE` (or `ticket redeem SLICE/NODE`) redeems it, then `slice exec` and the other
    /// slice commands use its lease. Offline.
    Import {
        /// The ticket (a file, `-`, or its text).
        ticket: String,
        /// The node's address (a multiaddress), when the file does not say.
        #[arg(long)]
        address: Vec<String>,
    },
    /// Redeem a ticket you hold at its node (importing it first when it is a file): you
    /// become the lease holder. The node checks the whole holder chain.
    Redeem {
        /// The ticket (a file, `-`, SLICE/NODE, or its text).
        ticket: String,
        /// The node's address (a multiaddress), when the file does not say.
        #[arg(long)]
        address: Vec<String>,
        /// The lease's length, e.g. 10m (default: to the ticket's end).
        #[arg(long)]
        lease: Option<String>,
    },
}

/// Why a ticket command could not run.
#[derive(Debug, thiserror::Error)]
pub enum TicketCommandError {
    /// The argument names no ticket.
    #[error(
        "{0:?} is not a ticket file, not SLICE/NODE of an unredeemed ticket in the local \
         state, and not a ticket's text; give one of these (see `slicectl ticket show --help`)"
    )]
    NoTicket(String),
    /// SLICE/NODE names a slice without such an unredeemed ticket.
    #[error(
        "slice {slice} has no unredeemed ticket on node {node:?} (tickets already redeemed are \
         leases; see `slicectl slice status {slice}`)"
    )]
    NotInState {
        /// The slice.
        slice: String,
        /// The node as given.
        node: String,
    },
    /// SLICE/NODE matches several tickets.
    #[error("{0:?} matches several tickets of the slice; name the node by its full key")]
    Ambiguous(String),
    /// The bytes are not a usable ticket.
    #[error("{source_name}: {refusal}")]
    Unreadable {
        /// Where the ticket came from.
        source_name: String,
        /// Why it is refused.
        refusal: TicketRefusal,
    },
    /// An attenuation would grant more than the ticket.
    #[error(
        "{what}; an attenuation can only narrow a ticket (see `slicectl ticket show` for what \
         it grants)"
    )]
    Widening {
        /// What would widen, and by how much.
        what: String,
    },
    /// Delegating a ticket someone else holds.
    #[error(
        "this ticket is held by {holder}, not by you ({you}); only its holder can hand it on: \
         ask {holder} to delegate it"
    )]
    NotHolder {
        /// The current holder.
        holder: PublicKey,
        /// The user's key.
        you: PublicKey,
    },
    /// Importing a ticket someone else holds.
    #[error(
        "this ticket is held by {holder}, not by you ({you}); ask its holder to delegate it to \
         you: `slicectl ticket delegate TICKET --to {you} --out FILE`"
    )]
    NotYours {
        /// The current holder.
        holder: PublicKey,
        /// The user's key.
        you: PublicKey,
    },
    /// A flag's value is wrong.
    #[error("{0}")]
    BadFlag(String),
    /// The ticket library refused (delegation loop, too many blocks, …).
    #[error("{0}")]
    Ticket(#[from] TicketError),
    /// A file could not be read or written.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed, and what to do.
        detail: String,
    },
    /// No principal key.
    #[error("{0}")]
    Key(String),
    /// The local state.
    #[error(transparent)]
    State(#[from] StateError),
}

impl TicketCommandError {
    /// The exit class.
    pub fn class(&self) -> ExitClass {
        match self {
            TicketCommandError::NotInState { .. } => ExitClass::NotFound,
            TicketCommandError::File { .. } | TicketCommandError::Key(_) => ExitClass::Setup,
            TicketCommandError::State(StateError::NoSlice(_)) => ExitClass::NotFound,
            TicketCommandError::State(StateError::Exists(_)) => ExitClass::Usage,
            TicketCommandError::State(StateError::Storage { .. }) => ExitClass::Setup,
            TicketCommandError::Ticket(TicketError::Token(_)) => ExitClass::Internal,
            _ => ExitClass::Usage,
        }
    }
}

/// A ticket file: the ticket's text form on one line, after `#` lines saying what it is.
/// `# address: <multiaddress>` and `# site: <site>` lines tell the holder where its node
/// listens (hints: the node is known by its key, which the ticket names). A file holding only
/// the text (as `biscuit inspect` reads it) is a ticket file too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketFile {
    /// The ticket's text form (URL-safe base64).
    pub text: String,
    /// The node's addresses.
    pub addresses: Vec<String>,
    /// The node's site, when known.
    pub site: Option<String>,
}

const ADDRESS_LINE: &str = "# address:";
const SITE_LINE: &str = "# site:";

impl TicketFile {
    /// Reads a ticket file's text.
    pub fn parse(text: &str) -> Option<TicketFile> {
        let mut file = TicketFile {
            text: String::new(),
            addresses: Vec::new(),
            site: None,
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(address) = line.strip_prefix(ADDRESS_LINE) {
                file.addresses.push(address.trim().to_owned());
            } else if let Some(site) = line.strip_prefix(SITE_LINE) {
                file.site = Some(site.trim().to_owned());
            } else if line.starts_with('#') {
                continue;
            } else if file.text.is_empty() {
                file.text = line.to_owned();
            } else {
                return None;
            }
        }
        (!file.text.is_empty()).then_some(file)
    }

    /// The file's text: what the ticket is, then the hints, then the ticket.
    pub fn render(&self, contents: &TicketContents) -> String {
        let site = self.site.as_deref().unwrap_or("?");
        let mut out = format!(
            "# PlanetMesh ticket {}: slice {} on node {} ({}), held by {}\n\
             # read it: slicectl ticket show FILE; redeem it: slicectl ticket redeem FILE\n",
            contents.ticket_id.short(),
            contents.slice,
            node_label(site, &contents.node),
            contents.node,
            contents.holder,
        );
        if let Some(site) = &self.site {
            let _ = writeln!(out, "{SITE_LINE} {site}");
        }
        for address in &self.addresses {
            let _ = writeln!(out, "{ADDRESS_LINE} {address}");
        }
        out.push_str(&self.text);
        out.push('\n');
        out
    }
}

/// A ticket as a command found it.
#[derive(Debug, Clone)]
pub struct Held {
    /// The ticket (signatures checked against the issuer it names).
    pub ticket: Ticket,
    /// What it grants now.
    pub contents: TicketContents,
    /// Its node's addresses and site, when known.
    pub file: TicketFile,
    /// Where it came from: the state's slice, when it is one of the user's unredeemed tickets.
    pub in_state: Option<String>,
    /// How the user named it.
    pub source_name: String,
}

impl Held {
    fn from_file(
        file: TicketFile,
        source_name: String,
        in_state: Option<String>,
    ) -> Result<Held, TicketCommandError> {
        let unreadable = |refusal| TicketCommandError::Unreadable {
            source_name: source_name.clone(),
            refusal,
        };
        let ticket = Ticket::read_text(&file.text).map_err(unreadable)?;
        let contents = ticket.contents().map_err(unreadable)?;
        Ok(Held {
            ticket,
            contents,
            file,
            in_state,
            source_name,
        })
    }

    /// The ticket's text form.
    pub fn text(&self) -> &str {
        &self.file.text
    }
}

/// Finds the ticket `arg` names: a file, `-`, SLICE/NODE in `state`, or the text itself.
pub fn resolve(arg: &str, state: Option<&State>) -> Result<Held, TicketCommandError> {
    if arg == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| {
            TicketCommandError::File {
                path: "-".into(),
                detail: format!("cannot read standard input: {e}"),
            }
        })?;
        let file = TicketFile::parse(&text)
            .ok_or_else(|| TicketCommandError::NoTicket("standard input".into()))?;
        return Held::from_file(file, "standard input".into(), None);
    }
    let path = Path::new(arg);
    if path.is_file() {
        let text = read_limited(path)?;
        let file = TicketFile::parse(&text).ok_or_else(|| TicketCommandError::File {
            path: path.to_owned(),
            detail: "holds no ticket (one line of ticket text, after `#` lines, is expected)"
                .into(),
        })?;
        return Held::from_file(file, path.display().to_string(), None);
    }
    if let Some((slice, node)) = arg.split_once('/')
        && let Some(state) = state
        && state.slice(slice).is_ok()
    {
        let entry = state_ticket(state, slice, node)?;
        let file = TicketFile {
            text: ticket_text(&entry.ticket.ticket)?,
            addresses: entry.ticket.addresses.clone(),
            site: Some(entry.site.clone()),
        };
        return Held::from_file(file, arg.to_owned(), Some(slice.to_owned()));
    }
    let looks_like_text = !arg.is_empty()
        && arg
            .trim()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b));
    if looks_like_text {
        let file = TicketFile {
            text: arg.trim().to_owned(),
            addresses: Vec::new(),
            site: None,
        };
        return Held::from_file(file, "the ticket text".into(), None);
    }
    Err(TicketCommandError::NoTicket(arg.to_owned()))
}

/// Reads a ticket file, refusing one far larger than any ticket.
fn read_limited(path: &Path) -> Result<String, TicketCommandError> {
    let fail = |detail: String| TicketCommandError::File {
        path: path.to_owned(),
        detail,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    // The text form is 4/3 of the bytes; the `#` lines add little.
    let limit = capability_schema::ticket::MAX_TICKET_BYTES as u64 * 2 + 4096;
    if meta.len() > limit {
        return Err(fail(format!(
            "{} bytes is far larger than any ticket (at most {limit}); is it the right file?",
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))
}

/// The text form of ticket bytes stored in the state.
fn ticket_text(bytes: &TicketBytes) -> Result<String, TicketCommandError> {
    Ticket::read(&bytes.0)
        .map_err(|refusal| TicketCommandError::Unreadable {
            source_name: "the local state".into(),
            refusal,
        })?
        .to_text()
        .map_err(TicketCommandError::from)
}

/// The unredeemed ticket of `slice` on `node` (site, key, or key hex prefix).
fn state_ticket(state: &State, slice: &str, node: &str) -> Result<TicketEntry, TicketCommandError> {
    let hex = node.strip_prefix("ed25519/").unwrap_or(node).to_lowercase();
    let matches: Vec<TicketEntry> = state
        .tickets(slice)?
        .into_iter()
        .filter(|t| {
            let key = t.ticket.node.to_string();
            let key_hex = key.strip_prefix("ed25519/").unwrap_or(&key);
            t.site == node
                || node_label(&t.site, &t.ticket.node) == node
                || (hex.len() >= 4 && key_hex.starts_with(&hex))
        })
        .collect();
    match <[TicketEntry; 1]>::try_from(matches) {
        Ok([one]) => Ok(one),
        Err(v) if v.is_empty() => Err(TicketCommandError::NotInState {
            slice: slice.to_owned(),
            node: node.to_owned(),
        }),
        Err(_) => Err(TicketCommandError::Ambiguous(format!("{slice}/{node}"))),
    }
}

// ---- time -------------------------------------------------------------------------------

/// `secs` (unix) as local time, `2026-12-07 15:04:05 +0100`.
pub fn local_time(secs: u64) -> String {
    let Ok(t) = libc::time_t::try_from(secs) else {
        return format!("@{secs}");
    };
    // SAFETY: `tm` is plain data that localtime_r fills in; both pointers are valid for the
    // call, and localtime_r is the thread-safe variant (it keeps no pointer to either).
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return format!("@{secs}");
        }
        tm
    };
    let offset = tm.tm_gmtoff / 60;
    let sign = if offset < 0 { '-' } else { '+' };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} {sign}{:02}{:02}",
        i64::from(tm.tm_year) + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        offset.abs() / 60,
        offset.abs() % 60,
    )
}

/// A span in seconds as people say it: `29m`, `1h 5m`, `2d 3h`, `45s`.
pub fn span(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m"),
        (0, _, 0) => format!("{h}h"),
        (0, _, _) => format!("{h}h {m}m"),
        (_, 0, _) => format!("{d}d"),
        _ => format!("{d}d {h}h"),
    }
}

/// Where `now` stands in `[not_before, not_after)`, as people say it.
fn window_state(c: &TicketContents, now: u64) -> String {
    if now < c.not_before {
        format!(
            "not valid yet: starts in {}",
            span(c.not_before.saturating_sub(now))
        )
    } else if now >= c.not_after {
        format!("expired {} ago", span(now.saturating_sub(c.not_after)))
    } else {
        format!(
            "valid now, ends in {}",
            span(c.not_after.saturating_sub(now))
        )
    }
}

/// Parses `--until`: a duration from `now`, or `@<unix seconds>`.
pub fn parse_until(text: &str, now: u64) -> Result<u64, TicketCommandError> {
    if let Some(secs) = text.trim().strip_prefix('@') {
        return secs.parse().map_err(|_| {
            TicketCommandError::BadFlag(format!(
                "--until {text:?}: expected @<unix seconds>, e.g. @{now}, or a duration from \
                 now, e.g. 30m"
            ))
        });
    }
    parse_duration(text)
        .map(|d| now.saturating_add(d))
        .map_err(|e| {
            TicketCommandError::BadFlag(format!(
                "--until: {e}; or @<unix seconds> for a fixed time"
            ))
        })
}

// ---- show -------------------------------------------------------------------------------

fn operations_text(ops: &BTreeSet<Operation>) -> String {
    ops.iter()
        .map(|o| o.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ticket show`: what the ticket grants; `me` (when the user has a key) is marked in the
/// holder chain.
pub fn show(held: &Held, me: Option<&PublicKey>, now: u64) -> Outcome {
    let c = &held.contents;
    let site = held.file.site.as_deref().unwrap_or("?");
    let delegations = held
        .ticket
        .as_biscuit()
        .external_public_keys()
        .iter()
        .filter(|k| k.is_some())
        .count();
    let attenuations = held.ticket.block_count().saturating_sub(1 + delegations);
    let who = |k: &PublicKey| {
        if Some(k) == me {
            format!("{k} (you)")
        } else {
            k.to_string()
        }
    };
    let holders: Vec<String> = c.holders.iter().map(who).collect();
    let mut lines = vec![
        format!("ticket {} (id {})", c.ticket_id.short(), c.ticket_id),
        format!(
            "  grants:     slice {} ({}) on node {} ({}), federation {}",
            c.slice,
            c.kind,
            node_label(site, &c.node),
            c.node,
            c.federation
        ),
        format!("  resources:  {}", c.grant),
        format!(
            "  window:     {} to {} ({})",
            local_time(c.not_before),
            local_time(c.not_after),
            window_state(c, now)
        ),
        format!(
            "  operations: {}{}",
            operations_text(&c.operations),
            if c.operations.contains(&Operation::Renew) {
                ""
            } else {
                " (no renew: the lease ends when first granted)"
            }
        ),
        format!("  holders:    {}", holders.join(" -> ")),
        format!("  issuer:     agent {}", c.issuer),
        format!(
            "  price:      {}",
            c.price.map_or("not stated".to_owned(), |p| format!(
                "{p} micro-credits for the whole window"
            ))
        ),
        format!(
            "  blocks:     {} ({attenuations} attenuation{}, {delegations} delegation{})",
            held.ticket.block_count(),
            if attenuations == 1 { "" } else { "s" },
            if delegations == 1 { "" } else { "s" },
        ),
    ];
    if c.net.raw || c.net.egress_cap {
        lines.push(format!(
            "  network:    {}{}",
            if c.net.raw { "raw sockets " } else { "" },
            if c.net.egress_cap {
                "egress capped"
            } else {
                ""
            }
        ));
    }
    for address in &held.file.addresses {
        lines.push(format!("  node at:    {address}"));
    }
    lines.push(
        "  signatures: intact, checked against the agent the ticket names (its node decides \
         whether it trusts that agent)"
            .into(),
    );
    let mut json = serde_json::to_value(c).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut json {
        map.insert("ok".into(), json!(true));
        map.insert("resources".into(), json!(c.grant.to_string()));
        map.insert("not_before_local".into(), json!(local_time(c.not_before)));
        map.insert("not_after_local".into(), json!(local_time(c.not_after)));
        map.insert(
            "valid_now".into(),
            json!(c.not_before <= now && now < c.not_after),
        );
        map.insert(
            "expires_in_secs".into(),
            json!(c.not_after.saturating_sub(now)),
        );
        map.insert("blocks".into(), json!(held.ticket.block_count()));
        map.insert("attenuations".into(), json!(attenuations));
        map.insert("delegations".into(), json!(delegations));
        map.insert("site".into(), json!(held.file.site));
        map.insert("addresses".into(), json!(held.file.addresses));
        map.insert("you_hold_it".into(), json!(me == Some(&c.holder)));
    }
    Outcome {
        json,
        lines,
        class: ExitClass::Ok,
    }
}

// ---- attenuate --------------------------------------------------------------------------

/// What `ticket attenuate` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Narrowing {
    /// `--resources`, as given.
    pub resources: Option<String>,
    /// `--until`, as given.
    pub until: Option<String>,
    /// `--no-renew`.
    pub no_renew: bool,
}

/// The resources `text` names, the rest as `current` grants them; refuses more than granted.
fn narrowed_resources(text: &str, current: &Resources) -> Result<Resources, TicketCommandError> {
    let mut out = *current;
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let one: Resources = part.parse().map_err(|e| {
            TicketCommandError::BadFlag(format!(
                "--resources {text:?}: {e} (e.g. cpu=250m,memory=128MiB)"
            ))
        })?;
        let key = part.split('=').next().unwrap_or("").trim();
        if key == "ports" {
            if one.ports > current.ports {
                return Err(TicketCommandError::Widening {
                    what: format!(
                        "ports: {} asked but the ticket grants only {}",
                        one.ports, current.ports
                    ),
                });
            }
            out.ports = one.ports;
            continue;
        }
        for kind in ResourceKind::ALL {
            let asked = one.get(kind);
            let named = match kind {
                ResourceKind::Cpu => key == "cpu",
                ResourceKind::Memory => matches!(key, "memory" | "mem"),
                ResourceKind::Disk => key == "disk",
                ResourceKind::Egress => matches!(key, "egress" | "net" | "bw"),
            };
            if !named {
                continue;
            }
            if asked > current.get(kind) {
                return Err(TicketCommandError::Widening {
                    what: format!(
                        "{kind}: {} asked but the ticket grants only {}",
                        kind.format(asked),
                        kind.format(current.get(kind))
                    ),
                });
            }
            match kind {
                ResourceKind::Cpu => out.cpu_millis = asked,
                ResourceKind::Memory => out.memory_bytes = asked,
                ResourceKind::Disk => out.disk_bytes = asked,
                ResourceKind::Egress => out.egress_kbps = asked,
            }
        }
    }
    Ok(out)
}

/// The attenuation `narrowing` asks of `held` at `now`, checked against what it grants.
pub fn attenuation(
    held: &Held,
    narrowing: &Narrowing,
    now: u64,
) -> Result<Attenuation, TicketCommandError> {
    let c = &held.contents;
    let mut a = Attenuation::default();
    if let Some(text) = &narrowing.resources {
        a.resources = Some(narrowed_resources(text, &c.grant)?);
    }
    if let Some(text) = &narrowing.until {
        let until = parse_until(text, now)?;
        if until > c.not_after {
            return Err(TicketCommandError::Widening {
                what: format!(
                    "--until {} is after the ticket's end, {} (it can only end earlier)",
                    local_time(until),
                    local_time(c.not_after)
                ),
            });
        }
        if until <= now.max(c.not_before) {
            return Err(TicketCommandError::BadFlag(format!(
                "--until {} leaves nothing of the ticket's window (from {}); give a later time",
                local_time(until),
                local_time(now.max(c.not_before))
            )));
        }
        a.window = Some(Window::new(c.not_before, until));
    }
    if narrowing.no_renew {
        if !c.operations.contains(&Operation::Redeem) {
            return Err(TicketCommandError::BadFlag(
                "--no-renew would leave no operation: the ticket does not allow redeem".into(),
            ));
        }
        a.operations = Some(BTreeSet::from([Operation::Redeem]));
    }
    if a == Attenuation::default() {
        return Err(TicketCommandError::BadFlag(
            "nothing to narrow: give --resources, --until or --no-renew".into(),
        ));
    }
    Ok(a)
}

/// Writes `ticket` to a new file `out` with `held`'s hints; answers the new ticket as held.
fn write_ticket(ticket: Ticket, held: &Held, out: &Path) -> Result<Held, TicketCommandError> {
    let fail = |detail: String| TicketCommandError::File {
        path: out.to_owned(),
        detail,
    };
    let contents = ticket
        .contents()
        .map_err(|refusal| TicketCommandError::Ticket(TicketError::Refused(refusal)))?;
    let file = TicketFile {
        text: ticket.to_text()?,
        addresses: held.file.addresses.clone(),
        site: held.file.site.clone(),
    };
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot make its directory: {e}")))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                fail("exists; not overwriting it (give --out another file)".into())
            } else {
                fail(format!("cannot write it: {e}"))
            }
        })?;
    std::io::Write::write_all(&mut f, file.render(&contents).as_bytes())
        .map_err(|e| fail(format!("cannot write it: {e}")))?;
    Ok(Held {
        ticket,
        contents,
        file,
        in_state: None,
        source_name: out.display().to_string(),
    })
}

/// `ticket attenuate`: writes the narrowed ticket to `out`.
pub fn attenuate(
    held: &Held,
    narrowing: &Narrowing,
    out: &Path,
    now: u64,
) -> Result<Outcome, TicketCommandError> {
    let restriction = attenuation(held, narrowing, now)?;
    let narrowed = held.ticket.attenuate(&restriction).map_err(|e| match e {
        TicketError::WouldWiden(field) => TicketCommandError::Widening {
            what: format!("the {field} asked is wider than the ticket grants"),
        },
        other => other.into(),
    })?;
    let written = write_ticket(narrowed, held, out)?;
    let c = &written.contents;
    let lines = vec![
        format!(
            "wrote {}: ticket {} narrowed to {}, until {}, {}",
            out.display(),
            c.ticket_id.short(),
            c.grant,
            local_time(c.not_after),
            operations_text(&c.operations)
        ),
        format!(
            "next: slicectl ticket delegate {} --to <collaborator key> --out <file>",
            out.display()
        ),
    ];
    Ok(Outcome {
        json: json!({
            "ok": true,
            "out": out.display().to_string(),
            "ticket": written.text(),
            "contents": c,
        }),
        lines,
        class: ExitClass::Ok,
    })
}

// ---- delegate ---------------------------------------------------------------------------

/// The collaborator `to` names: a key, a file holding one, or a membership certificate.
pub fn collaborator(to: &str) -> Result<PublicKey, TicketCommandError> {
    if let Ok(key) = to.trim().parse::<PublicKey>() {
        return Ok(key);
    }
    let path = Path::new(to);
    let bad = |detail: String| {
        TicketCommandError::BadFlag(format!(
            "--to {to:?}: {detail}; give the collaborator's public key (ed25519/…, as \
             `slicectl keygen` printed it), a file holding it, or their membership certificate"
        ))
    };
    if !path.is_file() {
        return Err(bad("not a public key, and no such file".into()));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    if let Ok(text) = std::str::from_utf8(&bytes) {
        let text = text.trim();
        if let Ok(key) = text.parse::<PublicKey>() {
            return Ok(key);
        }
        if text.starts_with(capability_schema::identity::SECRET_PREFIX) {
            return Err(bad(
                "this is a private key: never pass one around; ask for the public key".into(),
            ));
        }
    }
    if let Ok(cert) = codec::decode::<Signed<MembershipCert>>(&bytes) {
        return cert
            .verify()
            .map(|m| m.subject)
            .map_err(|e| bad(format!("the certificate does not verify: {e}")));
    }
    Err(bad(
        "holds neither a public key nor a membership certificate".into(),
    ))
}

/// `ticket delegate`: writes `held` delegated by `key` (its holder) to `to` into `out`; a
/// ticket of the user's slices leaves the state (it is the collaborator's now).
pub fn delegate(
    held: &Held,
    key: &SecretKey,
    to: &PublicKey,
    out: &Path,
    state: Option<&State>,
) -> Result<Outcome, TicketCommandError> {
    let you = key.public();
    if held.contents.holder != you {
        return Err(TicketCommandError::NotHolder {
            holder: held.contents.holder,
            you,
        });
    }
    let delegated = held.ticket.delegate(key, to)?;
    let written = write_ticket(delegated, held, out)?;
    let c = &written.contents;
    let mut lines = vec![
        format!(
            "wrote {}: ticket {} for slice {} on node {}, now held by {to}",
            out.display(),
            c.ticket_id.short(),
            c.slice,
            c.node.short()
        ),
        format!(
            "send it to them; they run: slicectl ticket redeem {}",
            out.display()
        ),
    ];
    let mut left_state = false;
    if let Some(state) = state
        && state.slice(&c.slice).is_ok()
    {
        let id = c.ticket_id.to_string();
        if state
            .tickets(&c.slice)?
            .iter()
            .any(|t| t.ticket.ticket_id == id)
        {
            state.remove_ticket(&c.slice, &id)?;
            left_state = true;
            lines.push(handed_on(state, &c.slice, &c.node)?);
        }
    }
    Ok(Outcome {
        json: json!({
            "ok": true,
            "out": out.display().to_string(),
            "ticket": written.text(),
            "holder": to.to_string(),
            "left_state": left_state,
            "contents": c,
        }),
        lines,
        class: ExitClass::Ok,
    })
}

/// After a ticket of `slice` on `node` was handed on: the slice wants one sliver fewer (so
/// `slice sync` does not acquire it again), and a slice left with nothing is forgotten.
/// Answers the line saying which.
fn handed_on(state: &State, slice: &str, node: &PublicKey) -> Result<String, TicketCommandError> {
    let mut record = state.slice(slice)?;
    record.request.target = match record.request.target {
        SliverTarget::Count(n) => SliverTarget::Count(n.saturating_sub(1)),
        SliverTarget::Nodes(nodes) => {
            SliverTarget::Nodes(nodes.into_iter().filter(|n| n != node).collect())
        }
    };
    let wanted = record.request.target.count();
    let empty = state.tickets(slice)?.is_empty() && state.leases(slice)?.is_empty();
    if wanted == 0 && empty {
        state.remove_slice(slice)?;
        Ok(format!(
            "slice {slice} held only this ticket: it is forgotten here (the ticket is theirs now)"
        ))
    } else {
        state.replace_slice(&record)?;
        Ok(format!(
            "slice {slice} no longer holds this ticket and now wants {wanted} sliver{} (`slicectl \
             slice sync {slice}` will not acquire it again)",
            if wanted == 1 { "" } else { "s" }
        ))
    }
}

// ---- import and redeem ------------------------------------------------------------------

/// Stores `held` (which `me` must hold) as an unredeemed ticket of its slice, creating the
/// slice in the state if need be. Answers the entry stored.
pub fn store(
    state: &State,
    held: &Held,
    me: &PublicKey,
    federation: &str,
    addresses: &[String],
) -> Result<TicketEntry, TicketCommandError> {
    let c = &held.contents;
    if c.holder != *me {
        return Err(TicketCommandError::NotYours {
            holder: c.holder,
            you: *me,
        });
    }
    if state.slice(&c.slice).is_err() {
        let record = SliceRecord {
            request: SliceRequest {
                name: c.slice.clone(),
                principal: *me,
                principal_federation: federation.to_owned(),
                kind: c.kind.clone(),
                per_sliver: c.grant,
                target: SliverTarget::Nodes(vec![c.node]),
                constraints: Default::default(),
                duration_secs: c.not_after.saturating_sub(c.not_before),
                mode: AcquireMode::BestEffort,
                net: c.net,
            },
            lease_secs: None,
            created_at: unix_now(),
        };
        match state.create_slice(&record) {
            Ok(()) | Err(StateError::Exists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut all_addresses = held.file.addresses.clone();
    for address in addresses {
        if !all_addresses.contains(address) {
            all_addresses.push(address.clone());
        }
    }
    let entry = TicketEntry {
        ticket: IssuedTicket {
            node: c.node,
            federation: c.federation.clone(),
            agent: c.issuer,
            ticket_id: c.ticket_id.to_string(),
            ticket: TicketBytes(held.ticket.to_bytes()?),
            price: c.price.unwrap_or(0),
            addresses: all_addresses,
        },
        site: held.file.site.clone().unwrap_or_else(|| "?".into()),
        not_after: c.not_after,
    };
    state.add_tickets(&c.slice, std::slice::from_ref(&entry))?;
    Ok(entry)
}

/// `ticket import`: stores the ticket for `slice sync` and `ticket redeem`.
pub fn import(
    state: &State,
    held: &Held,
    me: &PublicKey,
    federation: &str,
    addresses: &[String],
) -> Result<Outcome, TicketCommandError> {
    let entry = store(state, held, me, federation, addresses)?;
    let c = &held.contents;
    let label = node_label(&entry.site, &c.node);
    let mut lines = vec![format!(
        "imported ticket {} for slice {} on node {label} ({}), {}",
        c.ticket_id.short(),
        c.slice,
        c.grant,
        window_state(c, unix_now())
    )];
    if entry.ticket.addresses.is_empty() {
        lines.push(
            "the node's address is unknown: redeem with --address <multiaddress>, or join the \
             overlay with --bootstrap"
                .into(),
        );
    }
    lines.push(format!(
        "next: slicectl ticket redeem {}/{} (or slicectl slice sync {})",
        c.slice,
        c.node.short(),
        c.slice
    ));
    Ok(Outcome {
        json: json!({
            "ok": true,
            "slice": c.slice,
            "node": c.node.to_string(),
            "ticket_id": c.ticket_id.to_string(),
            "addresses": entry.ticket.addresses,
        }),
        lines,
        class: ExitClass::Ok,
    })
}

/// What `ticket redeem` does once the network is up: the ticket, and the lease asked.
#[derive(Debug, Clone)]
pub struct RedeemAsk {
    /// The ticket.
    pub held: Held,
    /// Extra node addresses (`--address`).
    pub addresses: Vec<String>,
    /// The lease's length (none: to the ticket's end).
    pub lease_secs: Option<u64>,
}

/// `ticket redeem`: stores the ticket (when it is not in the state yet) and redeems it at its
/// node as the session's principal. A refused ticket leaves the state as it was.
pub async fn redeem(m: &Manager, ask: RedeemAsk) -> Result<Outcome, OpError> {
    let me = m.session.identity().key.public();
    let c = ask.held.contents.clone();
    let created_slice = m.state.slice(&c.slice).is_err();
    let id = c.ticket_id.to_string();
    // Imported before: a refusal now leaves it where it was.
    let imported_before = !created_slice
        && m.state
            .tickets(&c.slice)?
            .iter()
            .any(|t| t.ticket.ticket_id == id);
    let mut entry = match &ask.held.in_state {
        Some(slice) => m
            .state
            .tickets(slice)?
            .into_iter()
            .find(|t| t.ticket.ticket_id == id)
            .ok_or_else(|| TicketCommandError::NotInState {
                slice: slice.clone(),
                node: c.node.to_string(),
            })?,
        None => {
            // A ticket someone else holds is presented anyway: the node's refusal says why.
            if c.holder == me {
                store(
                    &m.state,
                    &ask.held,
                    &me,
                    &m.session.identity().federation(),
                    &ask.addresses,
                )?
            } else {
                TicketEntry {
                    ticket: IssuedTicket {
                        node: c.node,
                        federation: c.federation.clone(),
                        agent: c.issuer,
                        ticket_id: id.clone(),
                        ticket: TicketBytes(
                            ask.held
                                .ticket
                                .to_bytes()
                                .map_err(TicketCommandError::from)?,
                        ),
                        price: c.price.unwrap_or(0),
                        addresses: [ask.held.file.addresses.clone(), ask.addresses.clone()]
                            .concat(),
                    },
                    site: ask.held.file.site.clone().unwrap_or_else(|| "?".into()),
                    not_after: c.not_after,
                }
            }
        }
    };
    for address in &ask.addresses {
        if !entry.ticket.addresses.contains(address) {
            entry.ticket.addresses.push(address.clone());
        }
    }
    let now = unix_now();
    let until = ask
        .lease_secs
        .map(|l| now.saturating_add(l).min(c.not_after));
    let label = node_label(&entry.site, &c.node);
    let answer = m
        .session
        .node_call(
            c.node,
            &entry.ticket.addresses,
            NodeRequest::Redeem {
                ticket: entry.ticket.ticket.clone(),
                until,
            },
        )
        .await;
    let refused = |class: ExitClass, reason: String, check: Option<String>, message: String| {
        if c.holder == me
            && ask.held.in_state.is_none()
            && !imported_before
            && class != ExitClass::Unreachable
        {
            // Not redeemable: forget what this command stored.
            let _ = m.state.remove_ticket(&c.slice, &id);
            if created_slice {
                let _ = m.state.remove_slice(&c.slice);
            }
        }
        Outcome {
            json: json!({
                "ok": false,
                "slice": c.slice,
                "node": c.node.to_string(),
                "reason": reason,
                "check": check,
                "error": message,
            }),
            lines: vec![format!("{label}: not redeemed: {message}")],
            class,
        }
    };
    // Spent already: by this holder's own earlier redeem (its answer lost, or the ticket
    // presented twice)? Then the node has that lease, and it is adopted, not refused.
    let (answer, already) = match answer {
        Err(broker::acquire::CallError::Refused(reply))
            if reply.reason.code() == "already_spent" && c.holder == me =>
        {
            match own_lease(m, &c, &entry.ticket.addresses, &id).await {
                Some(signed) => (Ok(NodeResponse::Lease(signed)), true),
                None => (Err(broker::acquire::CallError::Refused(reply)), false),
            }
        }
        other => (other, false),
    };
    match answer {
        Ok(NodeResponse::Lease(signed)) => {
            let lease = signed
                .verify_by(&c.node)
                .map_err(|e| OpError::Internal(format!("the node's lease does not verify: {e}")))?;
            let stored = LeaseEntry {
                signed,
                lease,
                addresses: entry.ticket.addresses.clone(),
                site: entry.site.clone(),
                ticket_not_after: c.not_after,
            };
            if c.holder == me {
                m.state.redeemed(&c.slice, &id, &stored)?;
            }
            let l = &stored.lease;
            Ok(Outcome {
                json: json!({
                    "ok": true,
                    "slice": c.slice,
                    "node": c.node.to_string(),
                    "lease_id": l.lease_id,
                    "already_redeemed": already,
                    "holder": l.holder.to_string(),
                    "end": l.end,
                    "address": l.address,
                }),
                lines: vec![
                    format!(
                        "{label}: {}lease {} of slice {} until {} ({}), held by you",
                        if already { "redeemed before: " } else { "" },
                        l.lease_id,
                        c.slice,
                        local_time(l.end),
                        span(l.end.saturating_sub(now))
                    ),
                    format!(
                        "next: slicectl slice exec {} -- <command> (or status, renew, delete)",
                        c.slice
                    ),
                ],
                class: ExitClass::Ok,
            })
        }
        Ok(other) => Ok(refused(
            ExitClass::Internal,
            "internal".into(),
            None,
            format!("the node answered {other:?} to a redeem"),
        )),
        Err(e) => {
            let class = call_class(&e);
            let reason = match &e {
                broker::acquire::CallError::Refused(reply) => reply.reason.code().to_owned(),
                _ => class.name().to_owned(),
            };
            let (check, message) = match &e {
                broker::acquire::CallError::Refused(reply) => (
                    match &reply.reason {
                        capability_schema::Rejection::Ticket { check, .. } => Some(check.clone()),
                        _ => None,
                    },
                    reply.message.clone(),
                ),
                other => (None, other.to_string()),
            };
            Ok(refused(class, reason, check, message))
        }
    }
}

/// The lease `me` holds at `c`'s node for ticket `id`, as the node signed it, if it has one.
async fn own_lease(
    m: &Manager,
    c: &TicketContents,
    addresses: &[String],
    id: &str,
) -> Option<Signed<capability_schema::Lease>> {
    let me = m.session.identity().key.public();
    let answer = m
        .session
        .node_call(c.node, addresses, NodeRequest::Status)
        .await
        .ok()?;
    let NodeResponse::Status(status) = answer else {
        return None;
    };
    status.leases.into_iter().find(|signed| {
        signed
            .verify_by(&c.node)
            .is_ok_and(|l| l.ticket_id == id && l.holder == me)
    })
}

// ---- acquire ----------------------------------------------------------------------------

/// `ticket acquire`: acquires tickets for `spec` as `slice create` does, and keeps them
/// unredeemed in the local state, to show, narrow and hand on (or redeem with `slice sync`).
pub async fn acquire(m: &Manager, spec: &SliceSpec) -> Result<Outcome, OpError> {
    let id = m.session.identity();
    let request = spec.to_request(id.key.public(), &id.federation())?;
    let name = request.name.clone();
    m.state.create_slice(&SliceRecord {
        request: request.clone(),
        lease_secs: spec.lease_secs()?,
        created_at: unix_now(),
    })?;
    let acquired = match m.session.acquire(&request).await {
        Ok(a) => a,
        Err(e) => {
            m.state.remove_slice(&name)?;
            return Err(e.into());
        }
    };
    let now = unix_now();
    let entries: Vec<TicketEntry> = acquired
        .tickets
        .iter()
        .map(|t| TicketEntry {
            ticket: t.clone(),
            site: acquired
                .plan
                .chosen
                .iter()
                .find(|s| s.node == t.node)
                .map_or_else(|| "?".into(), |s| s.site.clone()),
            not_after: Ticket::read(&t.ticket.0)
                .ok()
                .and_then(|x| x.contents().ok())
                .map_or(now.saturating_add(request.duration_secs), |c| c.not_after),
        })
        .collect();
    m.state.add_tickets(&name, &entries)?;
    let mut lines = vec![format!(
        "slice {name}: {} tickets acquired, not redeemed",
        entries.len()
    )];
    for e in &entries {
        lines.push(format!(
            "  {name}/{}: ticket {} on node {}, until {}",
            e.ticket.node.short(),
            &e.ticket.ticket_id[..e.ticket.ticket_id.len().min(8)],
            node_label(&e.site, &e.ticket.node),
            local_time(e.not_after)
        ));
    }
    lines.push(format!(
        "next: slicectl ticket show {name}/<node>; attenuate or delegate it; `slicectl slice \
         sync {name}` redeems what you keep"
    ));
    let class = if acquired.missing > 0 {
        lines.push(format!(
            "{} slivers could not be acquired: {}",
            acquired.missing, acquired.plan.explanation
        ));
        ExitClass::Partial
    } else {
        ExitClass::Ok
    };
    Ok(Outcome {
        json: json!({
            "ok": class == ExitClass::Ok,
            "slice": name,
            "tickets": entries.iter().map(|e| json!({
                "node": e.ticket.node.to_string(),
                "site": e.site,
                "ref": format!("{name}/{}", e.ticket.node.short()),
                "ticket_id": e.ticket.ticket_id,
                "not_after": e.not_after,
            })).collect::<Vec<_>>(),
            "missing": acquired.missing,
        }),
        lines,
        class,
    })
}

// ---- the offline half, for the bin ------------------------------------------------------

/// What the offline commands need from the command line and the config.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The state directory, if one can be named.
    pub state_dir: Option<PathBuf>,
    /// The principal's key file, if one can be named.
    pub key_file: Option<PathBuf>,
    /// The principal's certificate (for the federation an imported slice is recorded with).
    pub cert: Option<PathBuf>,
}

impl Context {
    fn state(&self) -> Result<State, TicketCommandError> {
        let dir = self.state_dir.as_deref().ok_or_else(|| {
            TicketCommandError::Key(
                "no state directory: give --state-dir (or state_dir in the config)".into(),
            )
        })?;
        Ok(State::open(dir)?)
    }

    /// The state, when there is one already (reading never creates it).
    fn existing_state(&self) -> Option<State> {
        let dir = self.state_dir.as_deref()?;
        dir.join(crate::state::STATE_FILE)
            .is_file()
            .then(|| State::open(dir).ok())
            .flatten()
    }

    fn key(&self) -> Result<SecretKey, TicketCommandError> {
        let path = self.key_file.as_deref().ok_or_else(|| {
            TicketCommandError::Key(
                "no key file: give --key (or key_file in the config); `slicectl keygen` makes one"
                    .into(),
            )
        })?;
        SecretKey::load(path).map_err(|e| {
            TicketCommandError::Key(format!(
                "principal key {}: {e}; give --key the key you hold tickets with",
                path.display()
            ))
        })
    }

    fn federation(&self) -> String {
        self.cert
            .as_deref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| codec::decode::<Signed<MembershipCert>>(&b).ok())
            .and_then(|c| c.verify().ok())
            .map(|m| m.federation)
            .unwrap_or_default()
    }
}

/// Where a ticket command goes: done offline, or a redeem to run over the network.
#[derive(Debug)]
pub enum Step {
    /// Done.
    Done(Outcome),
    /// A redeem, for [`redeem`] once a session is up.
    Redeem(Box<RedeemAsk>),
}

/// Runs the offline commands; resolves the ticket of `redeem`.
pub fn run_offline(command: TicketCommand, ctx: &Context) -> Result<Step, TicketCommandError> {
    let now = unix_now();
    match command {
        TicketCommand::Show { ticket } => {
            let state = ctx.existing_state();
            let held = resolve(&ticket, state.as_ref())?;
            let me = ctx
                .key_file
                .as_deref()
                .and_then(|p| SecretKey::load(p).ok())
                .map(|k| k.public());
            Ok(Step::Done(show(&held, me.as_ref(), now)))
        }
        TicketCommand::Attenuate {
            ticket,
            resources,
            until,
            no_renew,
            out,
        } => {
            let state = ctx.existing_state();
            let held = resolve(&ticket, state.as_ref())?;
            let narrowing = Narrowing {
                resources,
                until,
                no_renew,
            };
            Ok(Step::Done(attenuate(&held, &narrowing, &out, now)?))
        }
        TicketCommand::Delegate { ticket, to, out } => {
            let to = collaborator(&to)?;
            let key = ctx.key()?;
            let state = ctx.existing_state();
            let held = resolve(&ticket, state.as_ref())?;
            Ok(Step::Done(delegate(
                &held,
                &key,
                &to,
                &out,
                state.as_ref(),
            )?))
        }
        TicketCommand::Key => {
            let key = ctx.key()?.public();
            Ok(Step::Done(Outcome {
                json: json!({"ok": true, "principal": key.to_string()}),
                lines: vec![
                    key.to_string(),
                    format!(
                        "whoever holds a ticket hands it to you with: slicectl ticket delegate \
                         TICKET --to {key} --out FILE"
                    ),
                ],
                class: ExitClass::Ok,
            }))
        }
        TicketCommand::Import { ticket, address } => {
            let key = ctx.key()?;
            let held = resolve(&ticket, None)?;
            let state = ctx.state()?;
            Ok(Step::Done(import(
                &state,
                &held,
                &key.public(),
                &ctx.federation(),
                &address,
            )?))
        }
        TicketCommand::Redeem {
            ticket,
            address,
            lease,
        } => {
            let lease_secs = lease
                .as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|e| TicketCommandError::BadFlag(format!("--lease: {e}")))?;
            let state = ctx.existing_state();
            let held = resolve(&ticket, state.as_ref())?;
            Ok(Step::Redeem(Box::new(RedeemAsk {
                held,
                addresses: address,
                lease_secs,
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use capability_schema::identity::test_key;
    use capability_schema::slice::SliceKind;
    use capability_schema::ticket::TicketSpec;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn minted() -> Ticket {
        let spec = TicketSpec {
            federation: "plc".into(),
            node: test_key(2).public(),
            slice: "site_exp".into(),
            kind: SliceKind::Regular,
            resources: "cpu=500m,memory=256MiB,disk=1GiB,egress=1Mbit,ports=1"
                .parse()
                .unwrap(),
            window: Window::new(NOW - 60, NOW + 3600),
            holder: test_key(3).public(),
            operations: Operation::ALL.into_iter().collect(),
            net: Default::default(),
        };
        Ticket::mint_priced(&test_key(1), &spec, 77).unwrap()
    }

    fn held(ticket: Ticket) -> Held {
        let file = TicketFile {
            text: ticket.to_text().unwrap(),
            addresses: vec!["/ip4/127.0.0.1/tcp/9".into()],
            site: Some("plc-site0".into()),
        };
        Held::from_file(file, "test".into(), None).unwrap()
    }

    #[test]
    fn a_ticket_file_reads_back_with_its_hints() {
        let h = held(minted());
        let text = h.file.render(&h.contents);
        assert!(text.starts_with("# PlanetMesh ticket"), "{text}");
        assert_eq!(TicketFile::parse(&text).unwrap(), h.file);
        // The bare text is a ticket file too; two tickets in one file are not.
        let bare = TicketFile::parse(&format!("{}\n", h.file.text)).unwrap();
        assert_eq!(bare.text, h.file.text);
        assert!(bare.addresses.is_empty());
        assert!(TicketFile::parse("a\nb\n").is_none());
        assert!(TicketFile::parse("# only a comment\n").is_none());
    }

    #[test]
    fn show_says_what_the_ticket_grants() {
        let h = held(minted());
        let o = show(&h, Some(&test_key(3).public()), NOW);
        let text = o.lines.join("\n");
        for want in [
            "slice site_exp (regular)",
            "federation plc",
            "cpu=500m",
            "valid now, ends in 1h",
            "redeem, renew",
            "(you)",
            "77 micro-credits",
            "blocks:     1 (0 attenuations, 0 delegations)",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        assert_eq!(o.json["price"], 77);
        assert_eq!(o.json["expires_in_secs"], 3600);
        assert_eq!(o.json["you_hold_it"], true);
        assert_eq!(o.json["holders"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_narrowing_keeps_what_it_does_not_name_and_refuses_to_widen() {
        let h = held(minted());
        let narrowing = Narrowing {
            resources: Some("cpu=250m".into()),
            until: Some("30m".into()),
            no_renew: true,
        };
        let a = attenuation(&h, &narrowing, NOW).unwrap();
        let r = a.resources.unwrap();
        assert_eq!(r.cpu_millis, 250);
        assert_eq!(r.memory_bytes, h.contents.grant.memory_bytes);
        assert_eq!(r.ports, 1);
        assert_eq!(a.window.unwrap().not_after, NOW + 1800);
        assert_eq!(a.operations.unwrap(), BTreeSet::from([Operation::Redeem]));

        let widen = |n: Narrowing| attenuation(&h, &n, NOW).unwrap_err();
        let e = widen(Narrowing {
            resources: Some("cpu=2".into()),
            ..Narrowing::default()
        });
        assert!(matches!(e, TicketCommandError::Widening { .. }), "{e}");
        assert!(e.to_string().contains("cpu: 2 cores asked"), "{e}");
        assert_eq!(e.class(), ExitClass::Usage);
        let e = widen(Narrowing {
            resources: Some("ports=3".into()),
            ..Narrowing::default()
        });
        assert!(matches!(e, TicketCommandError::Widening { .. }), "{e}");
        let e = widen(Narrowing {
            until: Some("2h".into()),
            ..Narrowing::default()
        });
        assert!(e.to_string().contains("after the ticket's end"), "{e}");
        let e = widen(Narrowing::default());
        assert!(matches!(e, TicketCommandError::BadFlag(_)), "{e}");
        let e = widen(Narrowing {
            until: Some(format!("@{}", NOW - 10)),
            ..Narrowing::default()
        });
        assert!(matches!(e, TicketCommandError::BadFlag(_)), "{e}");
    }

    #[test]
    fn only_the_holder_delegates_and_a_delegated_ticket_names_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let h = held(minted());
        let out = dir.path().join("bob.ticket");
        let e = delegate(&h, &test_key(4), &test_key(5).public(), &out, None).unwrap_err();
        assert!(matches!(e, TicketCommandError::NotHolder { .. }), "{e}");
        assert!(!out.exists());
        let o = delegate(&h, &test_key(3), &test_key(4).public(), &out, None).unwrap();
        assert_eq!(o.class, ExitClass::Ok);
        let bob = resolve(out.to_str().unwrap(), None).unwrap();
        assert_eq!(
            bob.contents.holders,
            vec![test_key(3).public(), test_key(4).public()]
        );
        assert_eq!(bob.file.addresses, h.file.addresses, "the hints travel");
        // Never overwritten.
        let e = delegate(&h, &test_key(3), &test_key(4).public(), &out, None).unwrap_err();
        assert!(matches!(e, TicketCommandError::File { .. }), "{e}");
        assert!(e.to_string().contains("not overwriting"), "{e}");
    }

    #[test]
    fn a_ticket_handed_on_leaves_the_givers_slice_wanting_one_sliver_fewer() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let h = held(minted());
        let mut entry = store(&state, &h, &test_key(3).public(), "plc", &[]).unwrap();
        let mut record = state.slice("site_exp").unwrap();
        record.request.target = SliverTarget::Count(2);
        state.replace_slice(&record).unwrap();
        entry.ticket.ticket_id = "another".into();
        entry.ticket.node = test_key(6).public();
        state
            .add_tickets("site_exp", std::slice::from_ref(&entry))
            .unwrap();

        let out = dir.path().join("bob.ticket");
        let o = delegate(&h, &test_key(3), &test_key(4).public(), &out, Some(&state)).unwrap();
        assert_eq!(o.json["left_state"], true);
        assert!(
            o.lines.iter().any(|l| l.contains("now wants 1 sliver")),
            "{:?}",
            o.lines
        );
        assert_eq!(
            state.slice("site_exp").unwrap().request.target,
            SliverTarget::Count(1)
        );
        let left = state.tickets("site_exp").unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].ticket.ticket_id, "another");
    }

    #[test]
    fn the_collaborator_is_a_key_a_key_file_or_a_certificate_never_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let bob = test_key(4);
        assert_eq!(
            collaborator(&bob.public().to_string()).unwrap(),
            bob.public()
        );
        let file = dir.path().join("bob.pub");
        std::fs::write(&file, format!("{}\n", bob.public())).unwrap();
        assert_eq!(collaborator(file.to_str().unwrap()).unwrap(), bob.public());
        let secret = dir.path().join("bob.key");
        bob.save(&secret).unwrap();
        let e = collaborator(secret.to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("private key"), "{e}");
        assert!(collaborator("nobody").is_err());
    }

    #[test]
    fn import_stores_a_ticket_its_holder_can_redeem_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        let h = held(minted());
        let e = import(&state, &h, &test_key(4).public(), "plc", &[]).unwrap_err();
        assert!(matches!(e, TicketCommandError::NotYours { .. }), "{e}");
        assert!(state.slices().unwrap().is_empty());
        import(&state, &h, &test_key(3).public(), "plc", &[]).unwrap();
        let tickets = state.tickets("site_exp").unwrap();
        assert_eq!(tickets.len(), 1);
        assert_eq!(tickets[0].ticket.addresses, h.file.addresses);
        assert_eq!(tickets[0].site, "plc-site0");
        // SLICE/NODE finds it, by site or key prefix.
        for name in [
            "site_exp/plc-site0",
            &format!("site_exp/{}", test_key(2).public().short()),
        ] {
            let found = resolve(name, Some(&state)).unwrap();
            assert_eq!(found.contents.ticket_id, h.contents.ticket_id);
            assert_eq!(found.in_state.as_deref(), Some("site_exp"));
        }
        let e = resolve("site_exp/elsewhere", Some(&state)).unwrap_err();
        assert_eq!(e.class(), ExitClass::NotFound, "{e}");
        let e = resolve("no/such thing", Some(&state)).unwrap_err();
        assert!(matches!(e, TicketCommandError::NoTicket(_)), "{e}");
    }

    #[test]
    fn spans_and_local_times_read_as_people_say_them() {
        assert_eq!(span(29 * 60 + 5), "29m");
        assert_eq!(span(3600 + 300), "1h 5m");
        assert_eq!(span(45), "45s");
        assert_eq!(span(2 * 86_400 + 3 * 3600), "2d 3h");
        let t = local_time(NOW);
        assert_eq!(t.len(), "2027-01-15 08:00:00 +0000".len(), "{t}");
        assert_eq!(parse_until("@5", NOW).unwrap(), 5);
        assert_eq!(parse_until("10m", NOW).unwrap(), NOW + 600);
        assert!(parse_until("soon", NOW).is_err());
    }
}
