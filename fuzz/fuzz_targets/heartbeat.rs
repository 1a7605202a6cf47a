//! Fuzz target: untrusted bytes as a gossiped heartbeat, through the receiver's whole check
//! (size cap, decode, freshness, signature) under every answer of its state. Must never panic
//! or allocate beyond the input.
#![no_main]

use capability_schema::heartbeat::{self, Heartbeat};
use capability_schema::{Signed, codec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for known in [false, true] {
        for last in [None, Some(0), Some(u64::MAX)] {
            for now in [0, 1_800_000_000_000, u64::MAX] {
                if let Err(e) = heartbeat::check(data, |_| known, |_| last, now) {
                    let _ = (e.is_misbehaviour(), e.to_string());
                }
            }
        }
    }
    let _ = Signed::<Heartbeat>::from_bytes(data).map(|s| s.verify());
    let _ = codec::decode::<Heartbeat>(data);
});
