//! The broker protocol as this broker serves it: `/planetmesh/broker/1` with the principal's
//! membership certificate alongside the request.
//!
//! Agents serve a principal only on the strength of its membership certificate
//! (`TicketRequest::principal_cert`), but `capability_schema::protocol::BrokerRequest` carries
//! a bare `SliceRequest`, so a broker acting for a principal could not show one. [`BrokerCall`]
//! is the same message with an optional `principal_cert` field: its encoding is a superset of
//! `BrokerRequest`'s (a plain `BrokerRequest` decodes as a `BrokerCall` without certificate, and
//! a `BrokerCall` without certificate decodes as a plain `BrokerRequest`), so both kinds of
//! callers reach the same server. The answers are `BrokerResponse` unchanged. When the schema
//! grows the field, this module reduces to a re-export.

use capability_schema::protocol::{BrokerRequest, BrokerResponse};
use capability_schema::slice::{SliceConstraints, SliceKind, SliverTarget};
use capability_schema::{AcquireMode, MembershipCert, PublicKey, Resources, Signed, SliceRequest};
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
        }
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
}
