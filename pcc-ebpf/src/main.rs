//! pcc's XDP dataplane: `pcc_lan` on every LAN port, `pcc_wan` on every WAN port, and the TC
//! egress hook `pcc_wan_egress` on every WAN, which records the router's own connections.
#![no_std]
#![no_main]
// `atomic_xadd`, `atomic_cxchg`: Rust's `AtomicU64` is not available on the BPF target, while
// the instructions (BPF_ATOMIC with BPF_ADD, BPF_CMPXCHG) exist.
#![expect(internal_features, reason = "the BPF atomics")]
#![feature(core_intrinsics)]

mod conntrack;
mod fib;
mod frag;
mod hairpin;
mod icmp;
mod local;
mod nat;
mod parse;
mod route;
mod select;
mod sweep;
mod tcp;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::Array as BtfArray,
    macros::{btf_map, classifier, map, xdp},
    maps::{Array, DevMap, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use pcc_common::{
    BindKey, Binding, Config, Counter, CtEvent, CtIn, CtOut, DEFAULT_MAX_CONNECTIONS, DEVMAP_SIZE,
    ExpirySlot, FRAG_TRACK_SIZE, FlowKey, FragKey, FragPorts, HOST_COUNT_SLOTS, LanInfo, MAX_LANS,
    MAX_POLICIES, MAX_POLICY_SUBNETS, MAX_WANS, Owner, PublicKey, SlotTable, SweepState,
    WanCounters, WanInfo,
    ratelimit::TokenBucket,
    route::{MAX_NEIGHBOURS, MAX_NEIGHBOURS_WANTED, MAX_ROUTES, Neighbour, NeighbourKey, Route},
};

#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static WANS: Array<WanInfo> = Array::with_max_entries(MAX_WANS as u32, 0);
#[map]
static LANS: Array<LanInfo> = Array::with_max_entries(MAX_LANS as u32, 0);
/// `SLOTS[0]`: the default table; `SLOTS[policy]`: each source-subnet policy's own.
#[map]
static SLOTS: Array<SlotTable> = Array::with_max_entries(1 + MAX_POLICIES as u32, 0);
/// Source subnet (network byte order, longest prefix wins) -> policy number.
#[map]
static POLICIES: LpmTrie<u32, u8> = LpmTrie::with_max_entries(MAX_POLICY_SUBNETS, 0);
/// The kernel's main IPv4 table as the controller mirrors it (destination prefix, network
/// byte order, longest wins): a new connection matching no entry is balanced.
#[map]
static ROUTES: LpmTrie<u32, Route> = LpmTrie::with_max_entries(MAX_ROUTES, 0);
/// MACs of route next hops other than a WAN's gateway, from the kernel's neighbour table.
#[map]
static NEIGHBOURS: HashMap<NeighbourKey, Neighbour> = HashMap::with_max_entries(MAX_NEIGHBOURS, 0);
/// Next hops the dataplane needed and did not find in `NEIGHBOURS` (value: when, ns): the
/// controller resolves them. LRU, so a flood of misses only forgets the oldest.
#[map]
static NEIGHBOURS_WANTED: LruHashMap<NeighbourKey, u64> =
    LruHashMap::with_max_entries(MAX_NEIGHBOURS_WANTED, 0);
/// Redirect targets: WAN `wan_id` at `wan_id`, LAN `lan_id` at `LAN_DEVMAP_BASE + lan_id`.
#[map]
static DEVMAP: DevMap = DevMap::with_max_entries(DEVMAP_SIZE, 0);
/// Connections by their LAN-side tuple. A plain hash (not LRU): evicting one half of a NAT
/// pair would silently break a live connection. Each entry holds a slot of `EXPIRY_SLOTS`,
/// so the table empties without the controller; a full table drops an unreplied connection
/// first. Resized at load time.
#[map]
static CT_OUT: HashMap<FlowKey, CtOut> = HashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, 0);
/// Connections by their WAN-side tuple (remote, WAN address, NAT port).
#[map]
static CT_IN: HashMap<FlowKey, CtIn> = HashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, 0);
/// Every tracked tuple's place in the dataplane's sweep (`sweep.rs`): twice the table's size,
/// resized at load time (`pcc_common::expiry::slot_count`).
#[map]
static EXPIRY_SLOTS: Array<ExpirySlot> = Array::with_max_entries(2 * DEFAULT_MAX_CONNECTIONS, 0);
/// The sweep's timer. A BTF map: the verifier finds the `bpf_timer` in the value through BTF.
#[btf_map]
static SWEEP: BtfArray<SweepState, 1> = BtfArray::new();
/// Endpoint-independent mappings by LAN endpoint and WAN. Resized at load time.
#[map]
static NAT_BIND_OUT: HashMap<BindKey, Binding> =
    HashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, 0);
/// The LAN endpoint holding each public endpoint. Resized at load time.
#[map]
static NAT_BIND_IN: HashMap<PublicKey, Owner> =
    HashMap::with_max_entries(DEFAULT_MAX_CONNECTIONS, 0);
/// Connections each LAN host holds (`--max-connections-per-host`), by LAN and the host's
/// offset in its subnet (`LanInfo::host_index`).
#[map]
static HOST_CONNECTIONS: Array<u64> = Array::with_max_entries(HOST_COUNT_SLOTS, 0);
/// The latest connections each CPU opened, where early drop looks for unreplied ones.
#[map]
static RECENT: PerCpuArray<conntrack::Recent> = PerCpuArray::with_max_entries(1, 0);
/// Working memory of new connections, per CPU.
#[map]
static SCRATCH: PerCpuArray<conntrack::Scratch> = PerCpuArray::with_max_entries(1, 0);
#[map]
static CT_EVENTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CtEvent::COUNT as u32, 0);
/// Ports of fragmented datagrams in flight, from their first fragment (both directions).
#[map]
static FRAGS: LruHashMap<FragKey, FragPorts> = LruHashMap::with_max_entries(FRAG_TRACK_SIZE, 0);
/// `nth`'s position in the turn order, per CPU.
#[map]
static NTH_TURN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
/// The token bucket of the ICMP errors sent for refused connections, per CPU
/// (`pcc_common::ratelimit`).
#[map]
static ICMP_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU so counting never bounces a cache line between cores; summed at scrape time.
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT as u32, 0);
#[map]
static WAN_STATS: PerCpuArray<WanCounters> = PerCpuArray::with_max_entries(MAX_WANS as u32, 0);

#[inline(always)]
fn count(counter: Counter) {
    if let Some(c) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot. XDP programs do not preempt each other on one CPU, and TC
        // egress runs with bottom halves off (`__dev_queue_xmit`), so no XDP run interleaves.
        unsafe { *c += 1 };
    }
}

/// Turns a verdict into the XDP action and counts it under its reason.
#[inline(always)]
fn finish(verdict: nat::Verdict) -> u32 {
    match verdict {
        Ok((action, c)) => {
            count(c);
            action
        }
        Err(c) => {
            count(c);
            if c.is_drop() {
                xdp_action::XDP_DROP
            } else {
                xdp_action::XDP_PASS
            }
        }
    }
}

/// LAN ingress: translate connections from the LAN towards the internet.
#[xdp]
pub fn pcc_lan(ctx: XdpContext) -> u32 {
    finish(nat::lan_to_wan(&ctx))
}

/// WAN ingress: translate replies (and ICMP errors about our connections) back to the LAN.
#[xdp]
pub fn pcc_wan(ctx: XdpContext) -> u32 {
    finish(nat::wan_to_lan(&ctx))
}

/// WAN egress (TC): records the router's own connections, so no mapping takes their tuples.
#[classifier]
pub fn pcc_wan_egress(ctx: TcContext) -> i32 {
    local::egress(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
