//! The acquisition report: what happened while a broker turned a slice request into tickets,
//! as typed events.
//!
//! Each [`AcquireEvent`] carries the data that matters (the agent, the node, the refusal with
//! its [`Rejection`](crate::Rejection), the counts) and renders to one sentence through its
//! `Display`, the only place the report's text is written. On the wire an answer carries both:
//! `report`, the sentences (what peers that predate the events read), and `events` beside it,
//! left out when empty so an answer without events encodes exactly as before. A peer decodes
//! the events it knows and skips the others, so a newer broker's events never make an answer
//! undecodable.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::identity::PublicKey;
use crate::rejection::ErrorReply;

/// Why one call to an agent failed, as a report tells it (the broker's call error, on the
/// wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum CallFailure {
    /// The agent answered with a refusal.
    #[error("{0}")]
    Refused(ErrorReply),
    /// The agent could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The agent did not answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer exceeded the response size cap.
    #[error("answer too large: {0}")]
    TooLarge(String),
    /// The agent answered something that does not fit the question.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// Why an agent's offer was left out (the first such offer of an agent is reported).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DroppedOffer {
    /// The offer names another agent than the one asked.
    OtherAgent(PublicKey),
    /// The offer's ad did not validate (signature, membership, expiry): the trust store's
    /// sentence.
    Invalid(String),
}

impl fmt::Display for DroppedOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DroppedOffer::OtherAgent(agent) => write!(f, "an offer names agent {}", agent.short()),
            DroppedOffer::Invalid(detail) => f.write_str(detail),
        }
    }
}

/// One thing that happened during an acquisition, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcquireEvent {
    /// Gathering: the agent's `GetAds` failed, so none of its nodes was considered.
    NoOffers {
        /// The agent asked.
        agent: PublicKey,
        /// Why the call failed.
        error: CallFailure,
    },
    /// Gathering: offers of the agent were left out.
    OffersDropped {
        /// The agent that offered them.
        agent: PublicKey,
        /// How many.
        dropped: u32,
        /// Why the first one was.
        first: DroppedOffer,
    },
    /// The acquisition's deadline came before a ticket round; it settled with what it held.
    DeadlineReached {
        /// The deadline of the whole acquisition.
        deadline: Duration,
        /// The round that did not start.
        round: u32,
        /// Slivers held then.
        held: u32,
        /// Slivers wanted.
        wanted: u32,
    },
    /// A ticket round after the first asked again for slivers still missing, around the
    /// refusals and the agents left out.
    Replanned {
        /// The round (2 or more).
        round: u32,
        /// Slivers asked for in it.
        slivers: u32,
    },
    /// An agent refused a ticket for one node; that (node, agent) pair is not asked again.
    SliverRefused {
        /// The node.
        node: PublicKey,
        /// The agent.
        agent: PublicKey,
        /// Its refusal, with the rejection's numbers.
        reason: ErrorReply,
    },
    /// An agent answered `GetTickets` but neither issued nor refused a node it was asked
    /// for; that (node, agent) pair is not asked again.
    NodeUnanswered {
        /// The node.
        node: PublicKey,
        /// The agent.
        agent: PublicKey,
    },
    /// An agent's `GetTickets` failed as a whole (refused, unreachable, too slow, garbled);
    /// the agent is not asked again.
    AgentFailed {
        /// The agent.
        agent: PublicKey,
        /// Slivers asked of it in that call.
        slivers: u32,
        /// Why the call failed.
        error: CallFailure,
    },
    /// An agent issued tickets for nodes it was not asked about; they were handed back.
    StrayReleased {
        /// The agent.
        agent: PublicKey,
        /// How many tickets.
        tickets: u32,
    },
    /// Agents that could not be told of stray tickets handed back (the tickets lapse
    /// unredeemed).
    StrayNotTold {
        /// The agents.
        agents: Vec<PublicKey>,
    },
    /// Best effort: the tickets obtained are kept, some slivers are missing.
    Short {
        /// Slivers missing.
        missing: u32,
        /// Slivers wanted.
        wanted: u32,
    },
    /// All-or-nothing came up short: every ticket obtained was handed back with `Released`.
    Released {
        /// Tickets handed back.
        tickets: u32,
        /// Agents told.
        agents: u32,
        /// Agents that could not be told (their tickets lapse unredeemed).
        not_told: Vec<PublicKey>,
    },
}

impl fmt::Display for AcquireEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireEvent::NoOffers { agent, error } => {
                write!(f, "agent {}: no offers ({error})", agent.short())
            }
            AcquireEvent::OffersDropped {
                agent,
                dropped,
                first,
            } => write!(
                f,
                "agent {}: {dropped} offers dropped ({first})",
                agent.short()
            ),
            AcquireEvent::DeadlineReached {
                deadline,
                round,
                held,
                wanted,
            } => write!(
                f,
                "deadline of {deadline:?} for the whole acquisition reached before round \
                 {round}; settling with {held} of {wanted} slivers"
            ),
            AcquireEvent::Replanned { round, slivers } => write!(
                f,
                "round {round}: replanned {slivers} slivers around the refusals"
            ),
            AcquireEvent::SliverRefused {
                node,
                agent,
                reason,
            } => write!(
                f,
                "node {} refused by agent {}: {reason}",
                node.short(),
                agent.short()
            ),
            AcquireEvent::NodeUnanswered { node, agent } => write!(
                f,
                "node {}: agent {} answered nothing for it",
                node.short(),
                agent.short()
            ),
            AcquireEvent::AgentFailed {
                agent,
                slivers,
                error,
            } => write!(
                f,
                "agent {} refused {slivers} slivers: {error}",
                agent.short()
            ),
            AcquireEvent::StrayReleased { agent, tickets } => write!(
                f,
                "agent {} issued {tickets} tickets not asked for; released",
                agent.short()
            ),
            AcquireEvent::StrayNotTold { agents } => write!(
                f,
                "{} agents not told of the tickets not asked for; they lapse unredeemed",
                agents.len()
            ),
            AcquireEvent::Short { missing, wanted } => {
                write!(f, "{missing} of {wanted} slivers missing (best effort)")
            }
            AcquireEvent::Released {
                tickets,
                agents,
                not_told,
            } => {
                write!(
                    f,
                    "all-or-nothing: released {tickets} tickets at {agents} agents"
                )?;
                if !not_told.is_empty() {
                    write!(
                        f,
                        " ({} agents not told; the tickets lapse unredeemed)",
                        not_told.len()
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl AcquireEvent {
    /// The report of `events`: each rendered to its sentence, in order.
    pub fn render_all(events: &[AcquireEvent]) -> Vec<String> {
        events.iter().map(ToString::to_string).collect()
    }
}

/// Decodes an answer's `events`, skipping events this version does not know (a newer peer's
/// variant, or a newer rejection inside one), so the report never makes the answer
/// undecodable. Human-readable formats (JSON) decode strictly.
pub(crate) fn known_events<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<AcquireEvent>, D::Error> {
    if deserializer.is_human_readable() {
        return Vec::deserialize(deserializer);
    }
    let items: Vec<ciborium::Value> = Vec::deserialize(deserializer)?;
    Ok(items
        .into_iter()
        .filter_map(|item| item.deserialized().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::{decode, encode};
    use crate::identity::test_key;
    use crate::protocol::{AcquiredSlice, SlicePlan};
    use crate::rejection::Rejection;
    use crate::resources::ResourceKind;

    fn key(n: u8) -> PublicKey {
        test_key(n).public()
    }

    fn over_share() -> ErrorReply {
        Rejection::OverShare {
            agent: key(2),
            kind: ResourceKind::Memory,
            in_use: 1 << 30,
            share: 1 << 30,
            asked: 256 << 20,
        }
        .into()
    }

    /// One event of every variant, with the sentence the report showed before the events were
    /// typed.
    fn every_event() -> Vec<(AcquireEvent, String)> {
        let (a, n) = (key(2).short(), key(1).short());
        vec![
            (
                AcquireEvent::NoOffers {
                    agent: key(2),
                    error: CallFailure::Timeout(Duration::from_millis(200)),
                },
                format!("agent {a}: no offers (no answer within 200ms)"),
            ),
            (
                AcquireEvent::OffersDropped {
                    agent: key(2),
                    dropped: 3,
                    first: DroppedOffer::OtherAgent(key(3)),
                },
                format!(
                    "agent {a}: 3 offers dropped (an offer names agent {})",
                    key(3).short()
                ),
            ),
            (
                AcquireEvent::OffersDropped {
                    agent: key(2),
                    dropped: 1,
                    first: DroppedOffer::Invalid("the ad has expired".into()),
                },
                format!("agent {a}: 1 offers dropped (the ad has expired)"),
            ),
            (
                AcquireEvent::DeadlineReached {
                    deadline: Duration::from_millis(300),
                    round: 2,
                    held: 2,
                    wanted: 4,
                },
                "deadline of 300ms for the whole acquisition reached before round 2; settling \
                 with 2 of 4 slivers"
                    .into(),
            ),
            (
                AcquireEvent::Replanned {
                    round: 2,
                    slivers: 1,
                },
                "round 2: replanned 1 slivers around the refusals".into(),
            ),
            (
                AcquireEvent::SliverRefused {
                    node: key(1),
                    agent: key(2),
                    reason: over_share(),
                },
                format!(
                    "node {n} refused by agent {a}: agent {a}'s share: 1GiB of 1GiB in use, \
                     256MiB asked"
                ),
            ),
            (
                AcquireEvent::NodeUnanswered {
                    node: key(1),
                    agent: key(2),
                },
                format!("node {n}: agent {a} answered nothing for it"),
            ),
            (
                AcquireEvent::AgentFailed {
                    agent: key(2),
                    slivers: 2,
                    error: CallFailure::Unreachable("connection refused".into()),
                },
                format!("agent {a} refused 2 slivers: unreachable: connection refused"),
            ),
            (
                AcquireEvent::AgentFailed {
                    agent: key(2),
                    slivers: 1,
                    error: CallFailure::Refused(
                        Rejection::Policy {
                            rule: "quota".into(),
                            detail: "quota of 10 slivers".into(),
                        }
                        .into(),
                    ),
                },
                format!("agent {a} refused 1 slivers: policy rule \"quota\": quota of 10 slivers"),
            ),
            (
                AcquireEvent::StrayReleased {
                    agent: key(2),
                    tickets: 1,
                },
                format!("agent {a} issued 1 tickets not asked for; released"),
            ),
            (
                AcquireEvent::StrayNotTold {
                    agents: vec![key(2), key(3)],
                },
                "2 agents not told of the tickets not asked for; they lapse unredeemed".into(),
            ),
            (
                AcquireEvent::Short {
                    missing: 2,
                    wanted: 4,
                },
                "2 of 4 slivers missing (best effort)".into(),
            ),
            (
                AcquireEvent::Released {
                    tickets: 2,
                    agents: 1,
                    not_told: vec![],
                },
                "all-or-nothing: released 2 tickets at 1 agents".into(),
            ),
            (
                AcquireEvent::Released {
                    tickets: 3,
                    agents: 2,
                    not_told: vec![key(3)],
                },
                "all-or-nothing: released 3 tickets at 2 agents (1 agents not told; the \
                 tickets lapse unredeemed)"
                    .into(),
            ),
        ]
    }

    #[test]
    fn every_event_renders_the_sentence_of_the_report() {
        for (event, sentence) in every_event() {
            assert_eq!(event.to_string(), sentence, "{event:?}");
        }
        let (events, sentences): (Vec<_>, Vec<_>) = every_event().into_iter().unzip();
        assert_eq!(AcquireEvent::render_all(&events), sentences);
    }

    #[test]
    fn call_failures_render_like_the_call_errors_they_stand_for() {
        let cases = [
            (CallFailure::Refused(over_share()), over_share().message),
            (
                CallFailure::Unreachable("connection refused".into()),
                "unreachable: connection refused".into(),
            ),
            (
                CallFailure::Timeout(Duration::from_micros(1500)),
                "no answer within 1.5ms".into(),
            ),
            (
                CallFailure::TooLarge("5000000 bytes".into()),
                "answer too large: 5000000 bytes".into(),
            ),
            (
                CallFailure::Unexpected("Released".into()),
                "unexpected answer: Released".into(),
            ),
        ];
        for (failure, sentence) in cases {
            assert_eq!(failure.to_string(), sentence);
        }
    }

    /// `AcquiredSlice` as it was before events: what older peers decode.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OldAcquiredSlice {
        tickets: Vec<crate::protocol::IssuedTicket>,
        plan: SlicePlan,
        missing: u32,
        report: Vec<String>,
    }

    fn acquired(events: Vec<AcquireEvent>) -> AcquiredSlice {
        AcquiredSlice {
            tickets: vec![],
            plan: SlicePlan {
                chosen: vec![],
                alternatives: vec![],
                rejected: vec![],
                satisfiable: true,
                explanation: "0 slivers".into(),
            },
            missing: 0,
            report: AcquireEvent::render_all(&events),
            events,
        }
    }

    #[test]
    fn events_travel_beside_the_report_and_older_peers_still_decode() {
        let events: Vec<AcquireEvent> = every_event().into_iter().map(|(e, _)| e).collect();
        let slice = acquired(events);
        let bytes = encode(&slice);
        assert_eq!(decode::<AcquiredSlice>(&bytes).unwrap(), slice);
        // An older peer skips the events and reads the sentences.
        let old: OldAcquiredSlice = decode(&bytes).unwrap();
        assert_eq!(old.report, slice.report);

        // No events: the same bytes as before they existed; an older broker's answer decodes
        // with none.
        let quiet = acquired(vec![]);
        let old = OldAcquiredSlice {
            tickets: vec![],
            plan: quiet.plan.clone(),
            missing: 0,
            report: vec![],
        };
        assert_eq!(encode(&quiet), encode(&old));
        assert_eq!(decode::<AcquiredSlice>(&encode(&old)).unwrap(), quiet);
    }

    #[test]
    fn events_a_newer_peer_adds_are_skipped_not_fatal() {
        let known = AcquireEvent::Replanned {
            round: 2,
            slivers: 1,
        };
        let mut value = ciborium::Value::serialized(&acquired(vec![known.clone()])).unwrap();
        let ciborium::Value::Map(fields) = &mut value else {
            panic!("a struct encodes as a map");
        };
        let (_, events) = fields
            .iter_mut()
            .find(|(k, _)| k.as_text() == Some("events"))
            .expect("events are encoded");
        let ciborium::Value::Array(events) = events else {
            panic!("events encode as an array");
        };
        let unknown = ciborium::Value::Map(vec![(
            "rerouted_through_mars".into(),
            ciborium::Value::Map(vec![("hops".into(), 3.into())]),
        )]);
        events.insert(0, unknown);
        let bytes = encode(&value);
        let got: AcquiredSlice = decode(&bytes).unwrap();
        assert_eq!(got.events, vec![known]);
    }

    fn any_key() -> impl Strategy<Value = PublicKey> {
        any::<u8>().prop_map(key)
    }

    fn any_reply() -> impl Strategy<Value = ErrorReply> {
        prop_oneof![
            (any_key(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(agent, in_use, share, asked)| {
                    Rejection::OverShare {
                        agent,
                        kind: ResourceKind::Cpu,
                        in_use,
                        share,
                        asked,
                    }
                    .into()
                }
            ),
            ("[a-z_]{0,12}", ".{0,40}").prop_map(|(rule, detail)| Rejection::Policy {
                rule,
                detail
            }
            .into()),
            // A reply whose sentence is not its reason's (an agent's own wording).
            (".{0,40}", ".{0,40}").prop_map(|(detail, message)| ErrorReply {
                reason: Rejection::Internal { detail },
                message,
            }),
        ]
    }

    fn any_failure() -> impl Strategy<Value = CallFailure> {
        prop_oneof![
            any_reply().prop_map(CallFailure::Refused),
            ".{0,40}".prop_map(CallFailure::Unreachable),
            (any::<u64>(), 0u32..1_000_000_000)
                .prop_map(|(s, n)| CallFailure::Timeout(Duration::new(s, n))),
            ".{0,40}".prop_map(CallFailure::TooLarge),
            ".{0,40}".prop_map(CallFailure::Unexpected),
        ]
    }

    fn any_event() -> impl Strategy<Value = AcquireEvent> {
        let keys = || proptest::collection::vec(any_key(), 0..4);
        prop_oneof![
            (any_key(), any_failure())
                .prop_map(|(agent, error)| AcquireEvent::NoOffers { agent, error }),
            (
                any_key(),
                any::<u32>(),
                prop_oneof![
                    any_key().prop_map(DroppedOffer::OtherAgent),
                    ".{0,40}".prop_map(DroppedOffer::Invalid),
                ]
            )
                .prop_map(|(agent, dropped, first)| AcquireEvent::OffersDropped {
                    agent,
                    dropped,
                    first
                }),
            (
                (any::<u64>(), 0u32..1_000_000_000),
                any::<u32>(),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(|((s, n), round, held, wanted)| {
                    AcquireEvent::DeadlineReached {
                        deadline: Duration::new(s, n),
                        round,
                        held,
                        wanted,
                    }
                }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(round, slivers)| AcquireEvent::Replanned { round, slivers }),
            (any_key(), any_key(), any_reply()).prop_map(|(node, agent, reason)| {
                AcquireEvent::SliverRefused {
                    node,
                    agent,
                    reason,
                }
            }),
            (any_key(), any_key())
                .prop_map(|(node, agent)| AcquireEvent::NodeUnanswered { node, agent }),
            (any_key(), any::<u32>(), any_failure()).prop_map(|(agent, slivers, error)| {
                AcquireEvent::AgentFailed {
                    agent,
                    slivers,
                    error,
                }
            }),
            (any_key(), any::<u32>())
                .prop_map(|(agent, tickets)| AcquireEvent::StrayReleased { agent, tickets }),
            keys().prop_map(|agents| AcquireEvent::StrayNotTold { agents }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(missing, wanted)| AcquireEvent::Short { missing, wanted }),
            (any::<u32>(), any::<u32>(), keys()).prop_map(|(tickets, agents, not_told)| {
                AcquireEvent::Released {
                    tickets,
                    agents,
                    not_told,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_event_renders_a_sentence_and_round_trips(event in any_event()) {
            let sentence = event.to_string();
            prop_assert!(!sentence.trim().is_empty(), "{event:?} renders nothing");
            prop_assert_eq!(decode::<AcquireEvent>(&encode(&event)).unwrap(), event.clone());
            let json = serde_json::to_string(&event).unwrap();
            prop_assert_eq!(serde_json::from_str::<AcquireEvent>(&json).unwrap(), event);
        }

        #[test]
        fn answers_with_events_round_trip(
            events in proptest::collection::vec(any_event(), 0..8),
        ) {
            let slice = acquired(events);
            prop_assert_eq!(decode::<AcquiredSlice>(&encode(&slice)).unwrap(), slice);
        }
    }
}
