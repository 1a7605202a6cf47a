//! HTB (hierarchical token bucket) attributes, which netlink-packet-route does not model.
//!
//! The qdisc carries `TCA_HTB_INIT` (`struct tc_htb_glob`), each class `TCA_HTB_PARMS`
//! (`struct tc_htb_opt`) and, above 32-bit byte rates, `TCA_HTB_RATE64`/`TCA_HTB_CEIL64`. Rates
//! are given with an Ethernet link layer, so the kernel needs no rate tables. The byte layouts
//! follow `include/uapi/linux/pkt_sched.h` and are pinned by tests.

use rtnetlink::packet_core::DefaultNla;
use rtnetlink::packet_route::tc::TcOption;

/// `TCA_HTB_PARMS`.
const TCA_HTB_PARMS: u16 = 1;
/// `TCA_HTB_INIT`.
const TCA_HTB_INIT: u16 = 2;
/// `TCA_HTB_RATE64`.
const TCA_HTB_RATE64: u16 = 6;
/// `TCA_HTB_CEIL64`.
const TCA_HTB_CEIL64: u16 = 7;
/// `TC_HTB_PROTOVER`.
const HTB_PROTOVER: u32 = 3;
/// `TC_LINKLAYER_ETHERNET`.
const LINKLAYER_ETHERNET: u8 = 1;
/// The kernel's `PSCHED_SHIFT`: one tick is 64 ns.
const PSCHED_SHIFT: u32 = 6;
/// Bytes of one full-size frame, the smallest sensible burst.
const MTU_BURST: u64 = 1600;

/// The options of an HTB qdisc whose unclassified traffic goes to class `default_minor`
/// (0: sent directly, unshaped).
pub fn qdisc_options(default_minor: u32) -> Vec<TcOption> {
    let mut glob = Vec::with_capacity(20);
    glob.extend_from_slice(&HTB_PROTOVER.to_ne_bytes()); // version
    glob.extend_from_slice(&10u32.to_ne_bytes()); // rate2quantum
    glob.extend_from_slice(&default_minor.to_ne_bytes()); // defcls
    glob.extend_from_slice(&0u32.to_ne_bytes()); // debug
    glob.extend_from_slice(&0u32.to_ne_bytes()); // direct_pkts
    vec![TcOption::Other(DefaultNla::new(TCA_HTB_INIT, glob))]
}

/// The options of an HTB class with guaranteed `rate_kbps` that may borrow up to `ceil_kbps`.
pub fn class_options(rate_kbps: u64, ceil_kbps: u64) -> Vec<TcOption> {
    let rate = kbps_to_bytes(rate_kbps.max(8));
    let ceil = kbps_to_bytes(ceil_kbps.max(rate_kbps).max(8));
    let mut opt = Vec::with_capacity(44);
    ratespec(&mut opt, rate);
    ratespec(&mut opt, ceil);
    opt.extend_from_slice(&buffer_ticks(rate).to_ne_bytes()); // buffer
    opt.extend_from_slice(&buffer_ticks(ceil).to_ne_bytes()); // cbuffer
    let quantum = (rate / 10).clamp(1500, 200_000);
    opt.extend_from_slice(&u32::try_from(quantum).unwrap_or(200_000).to_ne_bytes()); // quantum
    opt.extend_from_slice(&0u32.to_ne_bytes()); // level
    opt.extend_from_slice(&0u32.to_ne_bytes()); // prio
    let mut out = vec![TcOption::Other(DefaultNla::new(TCA_HTB_PARMS, opt))];
    if rate > u64::from(u32::MAX) {
        out.push(TcOption::Other(DefaultNla::new(
            TCA_HTB_RATE64,
            rate.to_ne_bytes().to_vec(),
        )));
    }
    if ceil > u64::from(u32::MAX) {
        out.push(TcOption::Other(DefaultNla::new(
            TCA_HTB_CEIL64,
            ceil.to_ne_bytes().to_vec(),
        )));
    }
    out
}

/// kbit/s to bytes/s.
fn kbps_to_bytes(kbps: u64) -> u64 {
    kbps.saturating_mul(1000) / 8
}

/// Appends a `struct tc_ratespec` for `bytes_per_sec`.
fn ratespec(out: &mut Vec<u8>, bytes_per_sec: u64) {
    out.push(0); // cell_log
    out.push(LINKLAYER_ETHERNET); // linklayer
    out.extend_from_slice(&0u16.to_ne_bytes()); // overhead
    out.extend_from_slice(&0i16.to_ne_bytes()); // cell_align
    out.extend_from_slice(&0u16.to_ne_bytes()); // mpu
    let rate32 = u32::try_from(bytes_per_sec).unwrap_or(u32::MAX);
    out.extend_from_slice(&rate32.to_ne_bytes()); // rate
}

/// The bucket size in scheduler ticks: 10 ms of traffic, at least two full frames.
fn buffer_ticks(bytes_per_sec: u64) -> u32 {
    let burst = (bytes_per_sec / 100).max(2 * MTU_BURST);
    let ns = u128::from(burst) * 1_000_000_000 / u128::from(bytes_per_sec.max(1));
    u32::try_from(ns >> PSCHED_SHIFT).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_core::Nla;

    use super::*;

    fn bytes(opt: &TcOption) -> (u16, Vec<u8>) {
        let mut buf = vec![0; opt.value_len()];
        opt.emit_value(&mut buf);
        (opt.kind(), buf)
    }

    #[test]
    fn glob_layout() {
        let opts = qdisc_options(0x20);
        let (kind, b) = bytes(&opts[0]);
        assert_eq!(kind, TCA_HTB_INIT);
        assert_eq!(b.len(), 20);
        assert_eq!(&b[0..4], &3u32.to_ne_bytes());
        assert_eq!(&b[4..8], &10u32.to_ne_bytes());
        assert_eq!(&b[8..12], &0x20u32.to_ne_bytes());
    }

    #[test]
    fn class_layout() {
        // 8 Mbit/s guaranteed, 100 Mbit/s ceiling.
        let opts = class_options(8_000, 100_000);
        assert_eq!(opts.len(), 1);
        let (kind, b) = bytes(&opts[0]);
        assert_eq!(kind, TCA_HTB_PARMS);
        assert_eq!(b.len(), 44);
        assert_eq!(b[1], LINKLAYER_ETHERNET);
        assert_eq!(&b[8..12], &1_000_000u32.to_ne_bytes());
        assert_eq!(b[13], LINKLAYER_ETHERNET);
        assert_eq!(&b[20..24], &12_500_000u32.to_ne_bytes());
        // buffer: 10 ms of 1 MB/s = 10_000 bytes = 10 ms = 10_000_000 ns >> 6
        assert_eq!(&b[24..28], &(10_000_000u32 >> 6).to_ne_bytes());
        assert_eq!(&b[32..36], &100_000u32.to_ne_bytes()); // quantum = rate / 10
    }

    #[test]
    fn huge_rates_use_64_bit_attributes() {
        let opts = class_options(100_000_000, 100_000_000); // 100 Gbit/s
        assert_eq!(opts.len(), 3);
        assert_eq!(bytes(&opts[1]).0, TCA_HTB_RATE64);
        assert_eq!(bytes(&opts[2]).1, 12_500_000_000u64.to_ne_bytes().to_vec());
    }

    #[test]
    fn ceiling_never_below_rate() {
        let (_, b) = bytes(&class_options(2_000, 1_000)[0]);
        assert_eq!(&b[8..12], &b[20..24]);
    }
}
