//! Fuzz target: untrusted bytes as every signed object a party receives (ads from gossip,
//! leases, delegations, membership certificates, peering agreements, revocation lists), then
//! signature verification. Must never panic or allocate beyond the input.
#![no_main]

use capability_schema::{
    Delegation, Lease, MembershipCert, PeeringAgreement, ResourceAd, RevocationList, Signed,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Signed::<ResourceAd>::from_bytes(data).map(|s| s.verify());
    let _ = Signed::<Lease>::from_bytes(data).map(|s| s.verify());
    let _ = Signed::<Delegation>::from_bytes(data).map(|s| s.verify());
    let _ = Signed::<MembershipCert>::from_bytes(data).map(|s| s.verify());
    let _ = Signed::<PeeringAgreement>::from_bytes(data).map(|s| s.verify());
    let _ = Signed::<RevocationList>::from_bytes(data).map(|s| s.verify());
});
