//! Programs for benchmarks only; `pcc-ctl up` never loads them.
use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

use crate::parse::{ETH_P_IP, EthHdr, frame_len, ptr_at};

/// `[packets, bytes]` the sink dropped, per CPU.
#[map]
static SINK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// The floor: the cheapest thing an XDP program can do.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// A counting sink behind the router: counts and drops IPv4, lets everything else (ARP)
/// through so the router can still resolve its gateway.
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked by ptr_at.
    if unsafe { (*eth).ether_type } != ETH_P_IP {
        return xdp_action::XDP_PASS;
    }
    let len = frame_len(&ctx);
    for (i, add) in [(0u32, 1u64), (1, len)] {
        if let Some(c) = SINK_STATS.get_ptr_mut(i) {
            // SAFETY: per-CPU slot.
            unsafe { *c += add };
        }
    }
    xdp_action::XDP_DROP
}
