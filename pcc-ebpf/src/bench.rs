//! Programs for benchmarks only, their own object (the `bench` binary, built by
//! `pcc-bench/build.rs`): the dataplane object `pcc-ctl` loads does not contain them.
#![no_std]
#![no_main]

// The dataplane's header checks; the benchmark programs use a few of them.
#[expect(
    dead_code,
    reason = "the dataplane's parsers, which these programs do not use"
)]
mod parse;

use aya_ebpf::{
    Global,
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use parse::{ETH_LEN, ETH_P_IP, EthHdr, Ipv4Hdr, L4_OFF, UdpHdr, frame_len, ptr_at};
use pcc_common::{csum, generator};

/// `[packets, bytes]` the sink dropped, per CPU.
#[map]
static SINK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// The generator's state, indexed by `generator::GEN_STATE_*`: next flow, frames sent, when
/// the next frame is due. Not per CPU: a long test run may migrate between CPUs (the kernel
/// reschedules between runs), and the one generator thread is its only writer, so plain
/// updates are enough.
#[map]
static GEN_STATE: Array<[u64; generator::GEN_STATE_LEN]> = Array::with_max_entries(1, 0);

/// Nanoseconds between two frames, set at load time by `pcc-bench generate --rate`; 0 sends
/// as fast as the CPU goes.
#[unsafe(no_mangle)]
static GEN_INTERVAL_NS: Global<u64> = Global::new(0);
/// The frame's first 40 bytes for flow 0 (Ethernet and IPv4 headers, UDP ports and length),
/// set at load time by `pcc-bench generate`.
#[unsafe(no_mangle)]
static GEN_HEADERS: Global<[u64; 5]> = Global::new([0; 5]);
/// Frames to send (`--count`): a paced call may run longer than that takes.
#[unsafe(no_mangle)]
static GEN_COUNT: Global<u64> = Global::new(u64::MAX);

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

/// The traffic generator of `pcc-bench generate`, run with BPF_PROG_TEST_RUN in live-frames
/// mode (BPF_F_TEST_XDP_LIVE_FRAMES): each run rewrites a UDP/IPv4 frame to the next of
/// `GEN_FLOWS` flows and returns XDP_TX, which live-frames mode turns into a transmit out of
/// the ingress device (a veth, so into its peer).
///
/// The kernel initialises each page-pool frame from `data_in` once and does not copy it
/// again when it recycles the page, so a frame comes back as its last receiver left it (the
/// router rewrites MACs, TTL, source address and port in place): every run writes the headers
/// afresh from `GEN_HEADERS`, then the flow's destination and port.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let Some(state) = GEN_STATE.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // One bounds check for both headers (the UDP header ends the part the program writes):
    // with a second ptr_at LLVM shifted a packet pointer, which the verifier rejects.
    let Some(udp) = ptr_at::<UdpHdr>(&ctx, L4_OFF) else {
        return xdp_action::XDP_ABORTED;
    };
    let start = ctx.data();
    let headers = start as *mut [u64; 5];
    let ip = (start + ETH_LEN) as *mut Ipv4Hdr;
    let interval = GEN_INTERVAL_NS.load();
    // SAFETY: a map slot only this generator writes; the IPv4 header lies before the UDP
    // header ptr_at checked.
    unsafe {
        let state = &mut *state;
        if state[generator::GEN_STATE_SENT] >= GEN_COUNT.load() {
            return xdp_action::XDP_DROP;
        }
        if interval != 0 {
            // Paced: a run before the frame is due drops it (live-frames mode recycles the
            // page at once). After a stall (preemption, the first run) at most
            // GEN_MAX_LAG_NS is caught up, so the receiver never sees a longer burst.
            let now = bpf_ktime_get_ns();
            let due = state[generator::GEN_STATE_DUE_NS]
                .max(now.saturating_sub(generator::GEN_MAX_LAG_NS));
            if now < due {
                return xdp_action::XDP_DROP;
            }
            state[generator::GEN_STATE_DUE_NS] = due + interval;
        }
        let i = state[generator::GEN_STATE_NEXT_FLOW] as u32;
        state[generator::GEN_STATE_NEXT_FLOW] = if i + 1 >= generator::GEN_FLOWS {
            0
        } else {
            u64::from(i + 1)
        };
        state[generator::GEN_STATE_SENT] += 1;
        let (dst, sport) = generator::flow(i);
        let dst = dst.to_be();
        *headers = GEN_HEADERS.load();
        // The receiving kernel verifies the IPv4 header checksum: flow 0's, updated for the
        // new destination (RFC 1624).
        (*ip).check = csum::replace4((*ip).check, (*ip).dst, dst);
        (*ip).dst = dst;
        (*udp).sport = sport.to_be();
        // No UDP checksum (RFC 768): it would cover the new address and port.
        (*udp).check = 0;
    }
    xdp_action::XDP_TX
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
