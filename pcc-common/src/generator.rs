//! The flows `bench_gen` (the live-frames traffic generator of `cargo xtask bench forward`)
//! spreads its packets over: flow `i` (0..GEN_FLOWS) goes to `GEN_DST_BASE + i % GEN_DSTS` from
//! source port `GEN_SPORT_BASE + i / GEN_DSTS`.

/// First destination address (203.0.113.10, TEST-NET-3, RFC 5737), host byte order.
pub const GEN_DST_BASE: u32 = 0xcb00_710a;
/// Destination addresses: 203.0.113.10–59 (the lab's server addresses).
pub const GEN_DSTS: u32 = 50;
/// First UDP source port; ports run up to `GEN_SPORT_BASE + GEN_SPORTS - 1`.
pub const GEN_SPORT_BASE: u16 = 1024;
pub const GEN_SPORTS: u32 = 128;
/// Flows the generator cycles through.
pub const GEN_FLOWS: u32 = GEN_DSTS * GEN_SPORTS;

/// Slots of the generator's per-CPU state (`GEN_STATE`, one `[u64; GEN_STATE_LEN]`).
pub const GEN_STATE_NEXT_FLOW: usize = 0;
/// Frames the generator returned XDP_TX for.
pub const GEN_STATE_SENT: usize = 1;
/// When the next frame is due (`bpf_ktime_get_ns`), in paced runs.
pub const GEN_STATE_DUE_NS: usize = 2;
pub const GEN_STATE_LEN: usize = 3;
/// How far a paced generator catches up after a stall: 100 µs (10 frames at 100 kpps).
pub const GEN_MAX_LAG_NS: u64 = 100_000;

/// Destination address (host byte order) and UDP source port of flow `i`.
#[inline(always)]
pub fn flow(i: u32) -> (u32, u16) {
    let i = i % GEN_FLOWS;
    (
        GEN_DST_BASE + i % GEN_DSTS,
        GEN_SPORT_BASE + (i / GEN_DSTS) as u16,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_distinct_and_in_range() {
        for i in 0..GEN_FLOWS {
            let (dst, sport) = flow(i);
            let [a, b, c, d] = dst.to_be_bytes();
            assert_eq!([a, b, c], [203, 0, 113]);
            assert!((10..60).contains(&d));
            assert!((1024..1152).contains(&sport));
            // Distinct: the flow index comes back from the pair.
            assert_eq!(u32::from(sport - 1024) * GEN_DSTS + u32::from(d - 10), i);
        }
        assert_eq!(flow(GEN_FLOWS), flow(0));
    }
}
