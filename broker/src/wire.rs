//! The broker protocol as this broker serves it: `/planetmesh/broker/1` with
//! [`BrokerCall`] requests (a `SliceRequest` plus the principal's membership certificate and
//! whether a failure should come with its plan) and [`BrokerAnswer`] answers. The message types
//! live in `capability_schema::protocol` (so the fuzz targets decode them); this module adds
//! the overlay protocols that carry them and how a failure is answered.
//!
//! Both ways stay compatible with plain `BrokerRequest`/`BrokerResponse` callers: a plain
//! request decodes as a call without certificate, and a caller that never sets
//! `detailed_failure` never sees [`BrokerAnswer::NotAcquired`] (the other variants encode
//! exactly as `BrokerResponse`'s); a broker that predates the flag ignores it and answers with
//! the error reply alone. [`BrokerAnswer::into_result`] folds both answers into one `Result`.

use capability_schema::ErrorReply;
use capability_schema::protocol::BrokerResponse;
use federation::overlay::{Protocol, ProtocolKind};

pub use capability_schema::protocol::{
    AcquireFailure as NotAcquired, BrokerAnswer, BrokerCall, BrokerFailure, SliceAsk,
};

/// How the broker answers a failed acquisition: the detailed answer if the caller asked for
/// it, else the error reply alone.
pub fn failure_answer(failure: NotAcquired, detailed: bool) -> Result<BrokerAnswer, ErrorReply> {
    if detailed {
        Ok(BrokerAnswer::NotAcquired(failure))
    } else {
        Err(failure.reply)
    }
}

/// The broker protocol with [`BrokerCall`] requests and [`BrokerAnswer`] answers, as this
/// broker serves it and as callers that set [`SliceAsk::detailed_failure`] speak it.
#[derive(Debug, Clone, Copy)]
pub struct BrokerAnswerProtocol;

impl Protocol for BrokerAnswerProtocol {
    const KIND: ProtocolKind = ProtocolKind::Broker;
    type Request = BrokerCall;
    type Response = BrokerAnswer;
}

/// The broker protocol with [`BrokerCall`] requests (same name and answers as
/// `federation::overlay::BrokerProtocol`).
#[derive(Debug, Clone, Copy)]
pub struct BrokerCallProtocol;

impl Protocol for BrokerCallProtocol {
    const KIND: ProtocolKind = ProtocolKind::Broker;
    type Request = BrokerCall;
    type Response = BrokerResponse;
}

#[cfg(test)]
mod tests {
    use capability_schema::codec;
    use capability_schema::identity::test_key;
    use capability_schema::protocol::Envelope;
    use federation::testing::TestFederation;

    use super::*;
    use capability_schema::protocol::{AcquireEvent, BrokerRequest, SlicePlan};
    use capability_schema::slice::{SliceConstraints, SliceKind, SliverTarget};
    use capability_schema::{AcquireMode, Resources, SliceRequest};

    fn request() -> SliceRequest {
        SliceRequest {
            name: "site_x".into(),
            principal: test_key(5).public(),
            principal_federation: "plc".into(),
            kind: SliceKind::Regular,
            per_sliver: Resources {
                cpu_millis: 100,
                ..Resources::ZERO
            },
            target: SliverTarget::Count(3),
            constraints: SliceConstraints {
                federations: vec!["plc".into()],
                min_sites: 2,
                exclude_nodes: vec![test_key(9).public()],
                max_price: Some(7),
            },
            duration_secs: 60,
            mode: AcquireMode::BestEffort,
            net: Default::default(),
        }
    }

    #[test]
    fn plain_requests_decode_as_calls_and_back() {
        let plain = Envelope {
            request_id: 4,
            body: BrokerRequest::AcquireSlice(request()),
        };
        let call: Envelope<BrokerCall> = codec::decode(&codec::encode(&plain)).unwrap();
        assert_eq!(call.body, BrokerCall::from(plain.body.clone()));
        let back: Envelope<BrokerRequest> = codec::decode(&codec::encode(&call)).unwrap();
        assert_eq!(back, plain);
    }

    #[test]
    fn certificates_travel_and_are_ignored_by_plain_decoders() {
        let mut plc = TestFederation::new("plc", 100);
        let cert = plc.certify(&test_key(5), capability_schema::Role::Principal);
        let call = BrokerCall::FindSlice(SliceAsk::new(request(), Some(cert.clone())));
        let bytes = codec::encode(&call);
        let again: BrokerCall = codec::decode(&bytes).unwrap();
        let BrokerCall::FindSlice(ask) = again else {
            panic!("not a find");
        };
        let (req, got) = ask.into_parts();
        assert_eq!(req, request());
        assert_eq!(got, Some(cert));
        let plain: BrokerRequest = codec::decode(&bytes).unwrap();
        assert_eq!(plain, BrokerRequest::FindSlice(request()));
    }

    fn failure() -> NotAcquired {
        use capability_schema::Rejection;
        use capability_schema::protocol::RejectedGroup;
        let explanation = "1 of 3 slivers can be placed; binding constraint: memory (37 nodes); \
                           would be satisfiable with memory ≤ 128MiB per sliver (asked 512MiB)";
        NotAcquired {
            reply: Rejection::Unsatisfiable {
                detail: explanation.into(),
            }
            .into(),
            plan: SlicePlan {
                chosen: Vec::new(),
                alternatives: Vec::new(),
                rejected: vec![
                    RejectedGroup {
                        reason: "memory".into(),
                        count: 37,
                        examples: vec![test_key(1).public()],
                    },
                    RejectedGroup {
                        reason: "federation not allowed".into(),
                        count: 12,
                        examples: vec![test_key(2).public()],
                    },
                ],
                satisfiable: false,
                explanation: explanation.into(),
            },
            report: vec!["all-or-nothing: released 1 tickets at 1 agents".into()],
            events: vec![AcquireEvent::Released {
                tickets: 1,
                agents: 1,
                not_told: vec![],
            }],
        }
    }

    #[test]
    fn a_detailed_failure_carries_the_plan_and_the_report_over_the_wire() {
        let call = BrokerCall::AcquireSlice(SliceAsk::new(request(), None).with_detailed_failure());
        let bytes = codec::encode(&Envelope {
            request_id: 9,
            body: call.clone(),
        });
        // The server reads the flag; a broker that predates it still reads the request.
        let got: Envelope<<BrokerAnswerProtocol as Protocol>::Request> =
            codec::decode(&bytes).unwrap();
        assert_eq!(got.body, call);
        let old: Envelope<BrokerRequest> = codec::decode(&bytes).unwrap();
        assert_eq!(old.body, BrokerRequest::AcquireSlice(request()));

        let reply = failure_answer(failure(), true);
        let bytes = codec::encode(&Envelope {
            request_id: 9,
            body: reply,
        });
        let back: Envelope<Result<BrokerAnswer, ErrorReply>> = codec::decode(&bytes).unwrap();
        let err = BrokerAnswer::into_result(back.body).unwrap_err();
        assert_eq!(err.reply.reason.code(), "unsatisfiable");
        let plan = err.plan.expect("the plan travels");
        assert_eq!(plan.rejected.len(), 2);
        assert_eq!(
            (plan.rejected[0].reason.as_str(), plan.rejected[0].count),
            ("memory", 37)
        );
        assert!(
            plan.explanation
                .contains("would be satisfiable with memory")
        );
        assert_eq!(err.report, failure().report);
        // The typed events too, rendering to the same lines.
        assert_eq!(err.events, failure().events);
        assert_eq!(AcquireEvent::render_all(&err.events), err.report);
        // What a client prints under --json.
        let json = serde_json::to_value(&plan).unwrap();
        assert_eq!(json["rejected"][1]["count"], 12);
    }

    #[test]
    fn plain_callers_get_the_error_reply_and_the_same_encoding_as_before() {
        // Without the flag the request encodes exactly as before.
        let plain = SliceAsk::new(request(), None);
        assert!(!plain.detailed_failure);
        assert_eq!(
            codec::encode(&BrokerCall::FindSlice(plain)),
            codec::encode(&BrokerCall::from(BrokerRequest::FindSlice(request())))
        );
        // A failure without the flag is the bare error reply, which old decoders read.
        let reply = failure_answer(failure(), false);
        let bytes = codec::encode(&Envelope {
            request_id: 3,
            body: reply,
        });
        let old: Envelope<Result<BrokerResponse, ErrorReply>> = codec::decode(&bytes).unwrap();
        assert_eq!(old.body, Err(failure().reply));
        let new: Envelope<Result<BrokerAnswer, ErrorReply>> = codec::decode(&bytes).unwrap();
        let err = BrokerAnswer::into_result(new.body).unwrap_err();
        assert_eq!((err.plan, err.report.len()), (None, 0));
        assert!(err.events.is_empty());
        // Plans and acquisitions encode as BrokerResponse's.
        let plan = failure().plan;
        let answer: Result<BrokerAnswer, ErrorReply> = Ok(BrokerAnswer::Plan(plan.clone()));
        let old: Result<BrokerResponse, ErrorReply> =
            codec::decode(&codec::encode(&answer)).unwrap();
        assert_eq!(old, Ok(BrokerResponse::Plan(plan)));
    }
}
