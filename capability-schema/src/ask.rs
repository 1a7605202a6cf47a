//! The principal's signed ask: what a principal allows one broker to obtain in its name.
//!
//! A membership certificate says who a principal is, but it is public: anyone holding it could
//! ask agents for tickets bound to that principal. So the principal signs each acquisition
//! ([`AskGrant`], signed under `planetmesh/ask-grant/v1`) and the request for tickets carries it
//! to the agents:
//!
//! - **who carries it**: [`AskGrant::broker`] is the one peer that may present it (the broker
//!   `slicectl` asked, or, with `slicectl --agent`, the principal's own peer key);
//! - **when**: [`AskGrant::not_before`]..[`AskGrant::not_after`], a few minutes; agents accept at
//!   most [`MAX_ASK_VALIDITY_SECS`] and a clock up to [`MAX_CLOCK_SKEW_SECS`] ahead;
//! - **what**: the slice, its kind, each sliver's resources, how many slivers at most, the
//!   network grant, the longest lease and the highest price;
//! - **once**: [`AskGrant::id`] is random; agents count the slivers they minted under each id
//!   until the ask expires and refuse more than [`AskGrant::max_slivers`].
//!
//! [`AskGrant::admit`] checks the signature, the carrier and the window;
//! [`AskGrant::check_request`] checks a [`TicketRequest`] against what was signed. Each
//! refusal is an [`AskRefusal`] naming its rule ([`AskRefusal::rule`]) and the fact.

use std::fmt;

use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::protocol::TicketRequest;
use crate::resources::Resources;
use crate::signed::{SignatureError, Signed, SignedType};
use crate::slice::{NetGrant, SliceKind, SliceRequest};

/// The longest validity window an agent accepts for an ask, in seconds.
pub const MAX_ASK_VALIDITY_SECS: u64 = 15 * 60;
/// How far ahead of an agent's clock an ask may start, in seconds (clocks differ a little).
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;
/// How long `slicectl` makes an ask valid when nothing asks for longer, in seconds.
pub const DEFAULT_ASK_VALIDITY_SECS: u64 = 5 * 60;
/// The longest ask id an agent keeps, in characters (`slicectl` uses 32 hex digits).
pub const MAX_ASK_ID_LEN: usize = 64;

/// What a principal allows one broker to obtain in its name, for a few minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskGrant {
    /// A random id (hex), so agents can count what they minted under this ask.
    pub id: String,
    /// The slice.
    pub slice: String,
    /// The principal (the signer, and the holder of every ticket).
    pub principal: PublicKey,
    /// The only peer that may present the ask to agents.
    pub broker: PublicKey,
    /// Unix seconds from which the ask may be presented.
    pub not_before: u64,
    /// Unix seconds after which it may not.
    pub not_after: u64,
    /// Regular or admin.
    pub kind: SliceKind,
    /// Each sliver at most this.
    pub per_sliver: Resources,
    /// At most this many slivers from any one agent.
    pub max_slivers: u32,
    /// The network grant of each sliver.
    #[serde(default, skip_serializing_if = "NetGrant::is_default")]
    pub net: NetGrant,
    /// Each ticket lasts at most this long, in seconds.
    pub max_duration_secs: u64,
    /// At most this price per sliver, in micro-credits (none: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<u64>,
}

impl SignedType for AskGrant {
    const DOMAIN: &'static str = "planetmesh/ask-grant/v1";
}

/// Why an agent (or a broker) refused a signed ask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskRefusal {
    /// No signed ask came with the request.
    #[error(
        "the request carries no ask signed by principal {}; agents mint only against one: \
         upgrade slicectl (and the broker) and ask again",
        principal.short()
    )]
    Missing {
        /// The principal the request names.
        principal: PublicKey,
    },
    /// The signature does not verify, or is not the principal's.
    #[error("the ask's signature is not the principal's: {0}")]
    Signature(SignatureError),
    /// The ask names another principal than the request.
    #[error(
        "the ask was signed for principal {}, the request is for {}",
        signed.short(),
        asked.short()
    )]
    OtherPrincipal {
        /// The principal in the ask.
        signed: PublicKey,
        /// The principal in the request.
        asked: PublicKey,
    },
    /// Another peer than the one named presented it.
    #[error(
        "ask signed for broker {}, carried by {}",
        signed.short(),
        carrier.short()
    )]
    WrongCarrier {
        /// The broker the ask names.
        signed: PublicKey,
        /// The peer that presented it.
        carrier: PublicKey,
    },
    /// Presented before its window.
    #[error(
        "ask valid from {} (now {}, {} s early); check the clocks and ask again",
        clock(*not_before),
        clock(*now),
        not_before - now
    )]
    NotYet {
        /// The start of the window.
        not_before: u64,
        /// The agent's clock.
        now: u64,
    },
    /// Presented after its window.
    #[error(
        "ask expired at {} (now {}); ask again with slicectl",
        clock(*not_after),
        clock(*now)
    )]
    Expired {
        /// The end of the window.
        not_after: u64,
        /// The agent's clock.
        now: u64,
    },
    /// The window is longer than agents accept, or empty.
    #[error(
        "the ask's window {} to {} is {}; at most {MAX_ASK_VALIDITY_SECS} s is accepted",
        clock(*not_before),
        clock(*not_after),
        if not_after > not_before { format!("{} s long", not_after - not_before) } else { "empty".to_owned() }
    )]
    BadWindow {
        /// The start.
        not_before: u64,
        /// The end.
        not_after: u64,
    },
    /// The id is empty or too long.
    #[error("the ask's id is {len} characters; 1 to {MAX_ASK_ID_LEN} are accepted")]
    BadId {
        /// Its length.
        len: usize,
    },
    /// The request goes beyond what the ask allows (slice, kind, resources, window, price).
    #[error("the request goes beyond the signed ask: {0}")]
    OutOfScope(String),
    /// More slivers than the ask allows, counting those already minted under it.
    #[error(
        "ask {} allows {allowed} slivers, {} asked{}",
        short_id(id),
        asked,
        if *minted > 0 { format!(" ({minted} already minted under it)") } else { String::new() }
    )]
    TooMany {
        /// The ask's id.
        id: String,
        /// What it allows.
        allowed: u32,
        /// Minted under it before this request.
        minted: u32,
        /// Asked now.
        asked: usize,
    },
    /// The agent remembers too many live asks to take a new one.
    #[error("this agent holds {held} live asks, its most; ask again in {retry_secs} s")]
    Busy {
        /// Asks held.
        held: usize,
        /// When the oldest one expires, in seconds from now.
        retry_secs: u64,
    },
}

impl AskRefusal {
    /// The policy rule that refused: `signed-ask` (missing, bad signature, other principal,
    /// bad id), `ask-broker`, `ask-window`, `ask-scope` or `ask-replay` (more slivers than
    /// asked, or too many live asks).
    pub fn rule(&self) -> &'static str {
        match self {
            AskRefusal::Missing { .. }
            | AskRefusal::Signature(_)
            | AskRefusal::OtherPrincipal { .. }
            | AskRefusal::BadId { .. } => "signed-ask",
            AskRefusal::WrongCarrier { .. } => "ask-broker",
            AskRefusal::NotYet { .. }
            | AskRefusal::Expired { .. }
            | AskRefusal::BadWindow { .. } => "ask-window",
            AskRefusal::OutOfScope(_) => "ask-scope",
            AskRefusal::TooMany { .. } | AskRefusal::Busy { .. } => "ask-replay",
        }
    }
}

/// `hh:mm:ss UTC` of unix seconds (asks last minutes: the time of day says enough).
fn clock(unix: u64) -> String {
    let day = unix % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

impl AskGrant {
    /// A fresh random id: 16 bytes from the operating system, in hex.
    pub fn new_id() -> String {
        let mut bytes = [0u8; 16];
        rand_core::OsRng.fill_bytes(&mut bytes);
        hex::encode(bytes)
    }

    /// The ask of `request`, to be carried by `broker`, valid `validity_secs` from `now`,
    /// with a fresh id.
    pub fn for_request(
        request: &SliceRequest,
        broker: PublicKey,
        now: u64,
        validity_secs: u64,
    ) -> AskGrant {
        AskGrant {
            id: Self::new_id(),
            slice: request.name.clone(),
            principal: request.principal,
            broker,
            not_before: now,
            not_after: now.saturating_add(validity_secs),
            kind: request.kind.clone(),
            per_sliver: request.per_sliver,
            max_slivers: u32::try_from(request.target.count()).unwrap_or(u32::MAX),
            net: request.net,
            max_duration_secs: request.duration_secs,
            max_price: request.constraints.max_price,
        }
    }

    /// The ask that covers exactly `request` (its slice, kind, largest sliver, count, network
    /// grant, ticket window and price cap), to be carried by `broker`, valid `validity_secs`
    /// from `now`, with a fresh id: what a tool or test that builds ticket requests itself
    /// has the principal sign.
    pub fn covering(
        request: &TicketRequest,
        broker: PublicKey,
        now: u64,
        validity_secs: u64,
    ) -> AskGrant {
        let per_sliver = request
            .slivers
            .iter()
            .fold(Resources::ZERO, |most, s| Resources {
                cpu_millis: most.cpu_millis.max(s.resources.cpu_millis),
                memory_bytes: most.memory_bytes.max(s.resources.memory_bytes),
                disk_bytes: most.disk_bytes.max(s.resources.disk_bytes),
                egress_kbps: most.egress_kbps.max(s.resources.egress_kbps),
                ports: most.ports.max(s.resources.ports),
            });
        AskGrant {
            id: Self::new_id(),
            slice: request.slice.clone(),
            principal: request.principal,
            broker,
            not_before: now,
            not_after: now.saturating_add(validity_secs),
            kind: request.kind.clone(),
            per_sliver,
            max_slivers: u32::try_from(request.slivers.len()).unwrap_or(u32::MAX),
            net: request.net,
            max_duration_secs: request
                .not_after
                .saturating_sub(request.not_before.max(now)),
            max_price: request.max_price,
        }
    }

    /// Checks that `signed` is an ask signed by `principal`, presented by `carrier` at `now`
    /// within its window; answers the ask.
    pub fn admit(
        signed: Option<&Signed<AskGrant>>,
        principal: &PublicKey,
        carrier: &PublicKey,
        now: u64,
    ) -> Result<AskGrant, AskRefusal> {
        let signed = signed.ok_or(AskRefusal::Missing {
            principal: *principal,
        })?;
        let ask = signed.verify_by(principal).map_err(AskRefusal::Signature)?;
        if ask.principal != *principal {
            return Err(AskRefusal::OtherPrincipal {
                signed: ask.principal,
                asked: *principal,
            });
        }
        if ask.id.is_empty() || ask.id.len() > MAX_ASK_ID_LEN {
            return Err(AskRefusal::BadId { len: ask.id.len() });
        }
        if ask.broker != *carrier {
            return Err(AskRefusal::WrongCarrier {
                signed: ask.broker,
                carrier: *carrier,
            });
        }
        if ask.not_after <= ask.not_before || ask.not_after - ask.not_before > MAX_ASK_VALIDITY_SECS
        {
            return Err(AskRefusal::BadWindow {
                not_before: ask.not_before,
                not_after: ask.not_after,
            });
        }
        if now.saturating_add(MAX_CLOCK_SKEW_SECS) < ask.not_before {
            return Err(AskRefusal::NotYet {
                not_before: ask.not_before,
                now,
            });
        }
        if now >= ask.not_after {
            return Err(AskRefusal::Expired {
                not_after: ask.not_after,
                now,
            });
        }
        Ok(ask)
    }

    /// Checks that `request`, arriving at `now` after `minted` slivers were minted under this
    /// ask, stays within it: the same slice, kind and network grant, each sliver within
    /// `per_sliver`, at most `max_slivers` in all, tickets no longer than `max_duration_secs`
    /// (and starting within the ask's window), a price cap no higher than the ask's.
    pub fn check_request(
        &self,
        request: &TicketRequest,
        minted: u32,
        now: u64,
    ) -> Result<(), AskRefusal> {
        let out = |detail: String| Err(AskRefusal::OutOfScope(detail));
        if request.slice != self.slice {
            return out(format!(
                "slice {:?} asked, the ask is for {:?}",
                request.slice, self.slice
            ));
        }
        if request.kind != self.kind {
            return out(format!(
                "a {} slice asked, the ask is for a {} one",
                request.kind, self.kind
            ));
        }
        if request.net != self.net {
            return out(format!(
                "network grant {} asked, the ask signs {}",
                net_words(&request.net),
                net_words(&self.net)
            ));
        }
        for sliver in &request.slivers {
            let r = &sliver.resources;
            if let Some(kind) = r.first_excess(&self.per_sliver) {
                return out(format!(
                    "{} {kind} asked on node {}, the ask allows {} per sliver",
                    kind.format(r.get(kind)),
                    sliver.node.short(),
                    kind.format(self.per_sliver.get(kind))
                ));
            }
            if r.ports > self.per_sliver.ports {
                return out(format!(
                    "{} ports asked on node {}, the ask allows {} per sliver",
                    r.ports,
                    sliver.node.short(),
                    self.per_sliver.ports
                ));
            }
        }
        let asked = request.slivers.len();
        if u64::from(minted) + asked as u64 > u64::from(self.max_slivers) {
            return Err(AskRefusal::TooMany {
                id: self.id.clone(),
                allowed: self.max_slivers,
                minted,
                asked,
            });
        }
        let start = request.not_before.max(now);
        let duration = request.not_after.saturating_sub(start);
        if duration > self.max_duration_secs {
            return out(format!(
                "tickets of {duration} s asked, the ask allows {} s",
                self.max_duration_secs
            ));
        }
        if request.not_before > self.not_after {
            return out(format!(
                "tickets starting at {} asked, after the ask's end {}",
                clock(request.not_before),
                clock(self.not_after)
            ));
        }
        match (self.max_price, request.max_price) {
            (Some(signed), None) => {
                return out(format!(
                    "no price cap asked, the ask caps the price at {signed} per sliver"
                ));
            }
            (Some(signed), Some(asked)) if asked > signed => {
                return out(format!(
                    "a price cap of {asked} asked, the ask caps it at {signed} per sliver"
                ));
            }
            _ => {}
        }
        Ok(())
    }
}

fn net_words(net: &NetGrant) -> String {
    let mut parts = Vec::new();
    if net.raw {
        parts.push("raw sockets");
    }
    if net.egress_cap {
        parts.push("capped egress");
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(" and ")
    }
}

impl fmt::Display for AskGrant {
    /// `ask 0123abcd: slice s, up to 4 × cpu=…, 3600 s, for broker ab12cd34 until hh:mm:ss UTC`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ask {}: slice {}, up to {} × {}, {} s, for broker {} until {}",
            short_id(&self.id),
            self.slice,
            self.max_slivers,
            self.per_sliver,
            self.max_duration_secs,
            self.broker.short(),
            clock(self.not_after)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_key;
    use crate::protocol::SliverAsk;

    const NOW: u64 = 1_700_000_000;

    fn grant() -> AskGrant {
        AskGrant {
            id: "00112233445566778899aabbccddeeff".into(),
            slice: "princeton_codeen".into(),
            principal: test_key(1).public(),
            broker: test_key(2).public(),
            not_before: NOW,
            not_after: NOW + 300,
            kind: SliceKind::Regular,
            per_sliver: "cpu=500m,memory=256MiB".parse().unwrap(),
            max_slivers: 4,
            net: NetGrant::default(),
            max_duration_secs: 3600,
            max_price: None,
        }
    }

    fn request(slivers: usize) -> TicketRequest {
        TicketRequest {
            slice: "princeton_codeen".into(),
            principal: test_key(1).public(),
            principal_cert: None,
            kind: SliceKind::Regular,
            slivers: (0..slivers)
                .map(|n| SliverAsk {
                    node: test_key(10 + n as u8).public(),
                    resources: "cpu=500m,memory=256MiB".parse().unwrap(),
                })
                .collect(),
            not_before: NOW,
            not_after: NOW + 3600,
            max_price: None,
            net: NetGrant::default(),
            ask: None,
        }
    }

    fn admit(signed: &Signed<AskGrant>, carrier: u8, now: u64) -> Result<AskGrant, AskRefusal> {
        AskGrant::admit(
            Some(signed),
            &test_key(1).public(),
            &test_key(carrier).public(),
            now,
        )
    }

    #[test]
    fn the_principal_signed_ask_carried_by_its_broker_in_its_window_is_admitted() {
        let signed = Signed::sign(&test_key(1), &grant());
        assert_eq!(admit(&signed, 2, NOW + 10).unwrap(), grant());
        // A clock a little behind the principal's still accepts it.
        assert!(admit(&signed, 2, NOW - MAX_CLOCK_SKEW_SECS).is_ok());
    }

    #[test]
    fn each_refusal_names_its_rule_and_the_fact() {
        let signed = Signed::sign(&test_key(1), &grant());
        let missing =
            AskGrant::admit(None, &test_key(1).public(), &test_key(2).public(), NOW).unwrap_err();
        assert_eq!(missing.rule(), "signed-ask");
        assert!(
            missing.to_string().contains("upgrade slicectl"),
            "{missing}"
        );

        let stranger = Signed::sign(&test_key(9), &grant());
        let e = admit(&stranger, 2, NOW).unwrap_err();
        assert_eq!(e.rule(), "signed-ask");
        assert!(e.to_string().contains("not the principal's"), "{e}");

        let e = admit(&signed, 3, NOW).unwrap_err();
        assert_eq!(e.rule(), "ask-broker");
        assert_eq!(
            e.to_string(),
            format!(
                "ask signed for broker {}, carried by {}",
                test_key(2).public().short(),
                test_key(3).public().short()
            )
        );

        let e = admit(&signed, 2, NOW + 300).unwrap_err();
        assert_eq!(e.rule(), "ask-window");
        assert_eq!(
            e.to_string(),
            "ask expired at 22:18:20 UTC (now 22:18:20 UTC); ask again with slicectl"
        );
        let e = admit(&signed, 2, NOW - MAX_CLOCK_SKEW_SECS - 1).unwrap_err();
        assert!(matches!(e, AskRefusal::NotYet { .. }), "{e}");

        let long = Signed::sign(
            &test_key(1),
            &AskGrant {
                not_after: NOW + MAX_ASK_VALIDITY_SECS + 1,
                ..grant()
            },
        );
        let e = admit(&long, 2, NOW).unwrap_err();
        assert!(matches!(e, AskRefusal::BadWindow { .. }), "{e}");
        assert!(e.to_string().contains("901 s long"), "{e}");

        let other = Signed::sign(
            &test_key(1),
            &AskGrant {
                principal: test_key(4).public(),
                ..grant()
            },
        );
        assert!(matches!(
            admit(&other, 2, NOW),
            Err(AskRefusal::OtherPrincipal { .. })
        ));
    }

    #[test]
    fn a_request_beyond_the_ask_is_refused_by_ask_scope_or_ask_replay() {
        let g = grant();
        assert_eq!(g.check_request(&request(4), 0, NOW), Ok(()));
        assert_eq!(g.check_request(&request(1), 3, NOW), Ok(()));

        let e = g.check_request(&request(6), 0, NOW).unwrap_err();
        assert_eq!(e.rule(), "ask-replay");
        assert_eq!(e.to_string(), "ask 00112233 allows 4 slivers, 6 asked");
        let e = g.check_request(&request(2), 3, NOW).unwrap_err();
        assert!(e.to_string().contains("(3 already minted under it)"), "{e}");

        let scope = |r: TicketRequest| {
            let e = g.check_request(&r, 0, NOW).unwrap_err();
            assert_eq!(e.rule(), "ask-scope", "{e}");
            e.to_string()
        };
        let mut r = request(1);
        r.slice = "princeton_other".into();
        assert!(scope(r).contains("\"princeton_other\""));
        let mut r = request(1);
        r.slivers[0].resources = "cpu=1 core,memory=256MiB".parse().unwrap();
        assert!(scope(r).contains("the ask allows 500m"));
        let mut r = request(1);
        r.slivers[0].resources.ports = 1;
        assert!(scope(r).contains("ports"));
        let mut r = request(1);
        r.kind = SliceKind::Admin {
            capabilities: vec!["CAP_NET_ADMIN".into()],
            host_pid_view: false,
        };
        assert!(scope(r).contains("admin"));
        let mut r = request(1);
        r.net.raw = true;
        assert!(scope(r).contains("raw sockets"));
        let mut r = request(1);
        r.not_after = NOW + 7200;
        assert!(scope(r).contains("7200 s asked"));
        let mut r = request(1);
        r.not_before = NOW + 1000;
        r.not_after = NOW + 2000;
        assert!(scope(r).contains("after the ask's end"));
        let capped = AskGrant {
            max_price: Some(10),
            ..grant()
        };
        let mut r = request(1);
        assert!(capped.check_request(&r, 0, NOW).is_err());
        r.max_price = Some(11);
        assert!(capped.check_request(&r, 0, NOW).is_err());
        r.max_price = Some(10);
        assert_eq!(capped.check_request(&r, 0, NOW), Ok(()));
    }

    #[test]
    fn the_ask_covering_a_ticket_request_admits_it_and_no_more() {
        let mut r = request(2);
        r.slivers[1].resources = "cpu=100m,memory=1GiB".parse().unwrap();
        let g = AskGrant::covering(&r, test_key(2).public(), NOW, 300);
        assert_eq!(
            g.per_sliver,
            "cpu=500m,memory=1GiB".parse::<Resources>().unwrap()
        );
        assert_eq!((g.max_slivers, g.max_duration_secs), (2, 3600));
        assert_eq!(g.check_request(&r, 0, NOW), Ok(()));
        assert!(g.check_request(&r, 1, NOW).is_err());
    }

    #[test]
    fn an_ask_for_a_slice_request_carries_its_limits_and_a_fresh_id() {
        use crate::slice::{AcquireMode, SliceConstraints, SliverTarget};
        let request = SliceRequest {
            name: "princeton_codeen".into(),
            principal: test_key(1).public(),
            principal_federation: "plc".into(),
            kind: SliceKind::Regular,
            per_sliver: "cpu=500m".parse().unwrap(),
            target: SliverTarget::Count(3),
            constraints: SliceConstraints {
                max_price: Some(99),
                ..SliceConstraints::default()
            },
            duration_secs: 600,
            mode: AcquireMode::AllOrNothing,
            net: NetGrant::default(),
        };
        let a = AskGrant::for_request(&request, test_key(2).public(), NOW, 300);
        let b = AskGrant::for_request(&request, test_key(2).public(), NOW, 300);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 32);
        assert_eq!(
            (a.max_slivers, a.max_duration_secs, a.max_price, a.not_after),
            (3, 600, Some(99), NOW + 300)
        );
    }
}
