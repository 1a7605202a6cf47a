//! The broker protocol as this broker serves it: `/planetmesh/broker/1` with the principal's
//! membership certificate alongside the request.
//!
//! Agents serve a principal only on the strength of its membership certificate
//! (`TicketRequest::principal_cert`), but `capability_schema::protocol::BrokerRequest` carries
//! a bare `SliceRequest`, so a broker acting for a principal could not show one. [`BrokerCall`]
//! is the same message with an optional `principal_cert` field: its encoding is a superset of
//! `BrokerRequest`'s (a plain `BrokerRequest` decodes as a `BrokerCall` without certificate, and
//! a `BrokerCall` without certificate decodes as a plain `BrokerRequest`), so both kinds of
//! callers reach the same server. When the schema grows the field, this module reduces to a
//! re-export.
//!
//! A failed `AcquireSlice` is an error reply, a reason and a sentence, since the overlay's
//! error type is fixed. A caller that wants the plan and the report behind the failure (to
//! print under `--json`) sets [`SliceAsk::detailed_failure`]; the broker then answers with
//! [`BrokerAnswer::NotAcquired`] instead, whose reply is the same error reply. Both ways stay
//! compatible: plain callers never set the flag and so never see the new variant (the other
//! variants encode exactly as `BrokerResponse`'s), and a broker that predates the flag ignores
//! it and answers with the error reply alone. [`BrokerAnswer::into_result`] folds both
//! answers back into one `Result`.

use capability_schema::protocol::{AcquiredSlice, BrokerRequest, BrokerResponse, SlicePlan};
use capability_schema::slice::{SliceConstraints, SliceKind, SliverTarget};
use capability_schema::{
    AcquireMode, ErrorReply, MembershipCert, PublicKey, Resources, Signed, SliceRequest,
};
use federation::overlay::{Protocol, ProtocolKind};
use serde::{Deserialize, Serialize};

/// A slice request with the principal's membership certificate.
///
/// The fields are `SliceRequest`'s, in its order and spelling, plus `principal_cert`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceAsk {
    /// The slice's name.
    pub name: String,
    /// On whose behalf.
    pub principal: PublicKey,
    /// The principal's federation.
    pub principal_federation: String,
    /// Regular or admin.
    pub kind: SliceKind,
    /// Resources of each sliver.
    pub per_sliver: Resources,
    /// How many slivers, or on which nodes.
    pub target: SliverTarget,
    /// Where they may go.
    pub constraints: SliceConstraints,
    /// How long, in seconds.
    pub duration_secs: u64,
    /// All or nothing, or best effort.
    pub mode: AcquireMode,
    /// The principal's membership certificate, shown to agents (none: agents serve the
    /// principal only if their policy lists its key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_cert: Option<Signed<MembershipCert>>,
    /// A failed `AcquireSlice` answers [`BrokerAnswer::NotAcquired`] (the plan and the report
    /// too) instead of the bare error reply; only for callers decoding [`BrokerAnswer`]
    /// (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub detailed_failure: bool,
}

impl SliceAsk {
    /// A request with a certificate.
    pub fn new(request: SliceRequest, principal_cert: Option<Signed<MembershipCert>>) -> Self {
        let SliceRequest {
            name,
            principal,
            principal_federation,
            kind,
            per_sliver,
            target,
            constraints,
            duration_secs,
            mode,
        } = request;
        SliceAsk {
            name,
            principal,
            principal_federation,
            kind,
            per_sliver,
            target,
            constraints,
            duration_secs,
            mode,
            principal_cert,
            detailed_failure: false,
        }
    }

    /// The same request, asking for [`BrokerAnswer::NotAcquired`] when acquisition fails.
    pub fn with_detailed_failure(mut self) -> Self {
        self.detailed_failure = true;
        self
    }

    /// The request and the certificate, apart.
    pub fn into_parts(self) -> (SliceRequest, Option<Signed<MembershipCert>>) {
        let request = SliceRequest {
            name: self.name,
            principal: self.principal,
            principal_federation: self.principal_federation,
            kind: self.kind,
            per_sliver: self.per_sliver,
            target: self.target,
            constraints: self.constraints,
            duration_secs: self.duration_secs,
            mode: self.mode,
        };
        (request, self.principal_cert)
    }
}

/// `BrokerRequest` with certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerCall {
    /// Plan only.
    FindSlice(SliceAsk),
    /// Plan and obtain tickets.
    AcquireSlice(SliceAsk),
}

impl From<BrokerRequest> for BrokerCall {
    fn from(request: BrokerRequest) -> Self {
        match request {
            BrokerRequest::FindSlice(r) => BrokerCall::FindSlice(SliceAsk::new(r, None)),
            BrokerRequest::AcquireSlice(r) => BrokerCall::AcquireSlice(SliceAsk::new(r, None)),
        }
    }
}

/// An acquisition that returned nothing, in full: the error reply plain callers get, the plan
/// as it stood at the end (chosen, alternatives, nodes not picked by reason, the explanation
/// with its hint) and what happened, line by line.
pub use crate::acquire::AcquireFailure as NotAcquired;

/// What this broker answers: `BrokerResponse`'s answers, encoded the same, plus the detailed
/// failure of an `AcquireSlice` for callers that set [`SliceAsk::detailed_failure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BrokerAnswer {
    /// Answer to `FindSlice`.
    Plan(SlicePlan),
    /// Answer to `AcquireSlice`.
    Acquired(AcquiredSlice),
    /// A failed `AcquireSlice`, with its plan and report.
    NotAcquired(NotAcquired),
}

impl From<BrokerResponse> for BrokerAnswer {
    fn from(response: BrokerResponse) -> Self {
        match response {
            BrokerResponse::Plan(plan) => BrokerAnswer::Plan(plan),
            BrokerResponse::Acquired(slice) => BrokerAnswer::Acquired(slice),
        }
    }
}

/// Why a broker call failed: the error reply, with the plan and the report when the broker
/// sent them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reply}")]
pub struct BrokerFailure {
    /// The reason and the sentence.
    pub reply: ErrorReply,
    /// The plan as it stood at the end (a broker answering [`BrokerAnswer::NotAcquired`]).
    pub plan: Option<Box<SlicePlan>>,
    /// What happened, line by line (empty without a plan).
    pub report: Vec<String>,
}

impl BrokerAnswer {
    /// The answer as one `Result`: the response, or the failure with whatever detail came.
    pub fn into_result(
        reply: Result<BrokerAnswer, ErrorReply>,
    ) -> Result<BrokerResponse, BrokerFailure> {
        match reply {
            Ok(BrokerAnswer::Plan(plan)) => Ok(BrokerResponse::Plan(plan)),
            Ok(BrokerAnswer::Acquired(slice)) => Ok(BrokerResponse::Acquired(slice)),
            Ok(BrokerAnswer::NotAcquired(failure)) => Err(BrokerFailure {
                reply: failure.reply,
                plan: Some(Box::new(failure.plan)),
                report: failure.report,
            }),
            Err(reply) => Err(BrokerFailure {
                reply,
                plan: None,
                report: Vec::new(),
            }),
        }
    }
}

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
        // Plans and acquisitions encode as BrokerResponse's.
        let plan = failure().plan;
        let answer: Result<BrokerAnswer, ErrorReply> = Ok(BrokerAnswer::Plan(plan.clone()));
        let old: Result<BrokerResponse, ErrorReply> =
            codec::decode(&codec::encode(&answer)).unwrap();
        assert_eq!(old, Ok(BrokerResponse::Plan(plan)));
    }
}
