//! Where a new connection goes: which LAN it came from, and which WAN it leaves by.
use aya_ebpf::maps::lpm_trie::Key;
use pcc_common::{
    Classifier, Config, Counter, FlowKey, MAX_LANS, MAX_WANS, Method, NO_WAN, SLOT_TABLE_SIZE,
    WanInfo,
};

use crate::{LANS, NTH_TURN, POLICIES, SLOTS, WANS};

/// This CPU's next turn for `nth`. Per CPU, so no atomics and no shared cache line: each CPU
/// walks the turn order on its own, which keeps the weights over all of them.
#[inline(always)]
fn next_turn() -> u32 {
    match NTH_TURN.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; XDP programs do not preempt each other on one CPU.
        Some(turn) => unsafe {
            let t = *turn;
            *turn = t.wrapping_add(1);
            t as u32
        },
        None => 0,
    }
}

/// The LAN a new connection comes from: the port it arrived on must own the source subnet
/// (BCP 38), and the destination must lie outside every LAN and the router itself, but for a
/// `hairpin` to a public endpoint a LAN endpoint holds on a WAN address.
#[inline(always)]
pub fn lan_for(
    ifindex: u32,
    src: u32,
    dst: u32,
    hairpin: bool,
    cfg: &Config,
) -> Result<u8, Counter> {
    let mut found = None;
    for i in 0..MAX_LANS as u32 {
        if i >= u32::from(cfg.lan_count) {
            break;
        }
        let Some(lan) = LANS.get(i) else { continue };
        if lan.contains(dst) {
            // LAN to LAN, or to the router: the kernel routes or answers it.
            return Err(Counter::PassLocal);
        }
        if lan.ifindex == ifindex && lan.contains(src) {
            found = Some(i as u8);
        }
    }
    if !hairpin && wan_with_addr(dst, cfg).is_some() {
        return Err(Counter::PassLocal);
    }
    found.ok_or(Counter::DropSpoofed)
}

/// The WAN whose address `addr` is.
#[inline(always)]
pub fn wan_with_addr(addr: u32, cfg: &Config) -> Option<u8> {
    for i in 0..MAX_WANS as u32 {
        if i >= u32::from(cfg.wan_count) {
            break;
        }
        if let Some(wan) = WANS.get(i)
            && wan.addr == addr
            && wan.ifindex != 0
        {
            return Some(i as u8);
        }
    }
    None
}

/// The LAN served by port `ifindex`.
#[inline(always)]
pub fn lan_of_port(ifindex: u32, cfg: &Config) -> Option<u8> {
    for i in 0..MAX_LANS as u32 {
        if i >= u32::from(cfg.lan_count) {
            break;
        }
        if let Some(lan) = LANS.get(i)
            && lan.ifindex == ifindex
        {
            return Some(i as u8);
        }
    }
    None
}

/// A packet of a known connection: with several LANs, the port it arrived on must still own
/// its source, as when the connection opened (BCP 38), or a host on one LAN could send into
/// another LAN's connections by spoofing. With one LAN, only its hosts have connections.
#[inline(always)]
pub fn same_lan(ifindex: u32, src: u32, cfg: &Config) -> Result<(), Counter> {
    if cfg.lan_count <= 1 {
        return Ok(());
    }
    for i in 0..MAX_LANS as u32 {
        if i >= u32::from(cfg.lan_count) {
            break;
        }
        if let Some(lan) = LANS.get(i)
            && lan.ifindex == ifindex
            && lan.contains(src)
        {
            return Ok(());
        }
    }
    Err(Counter::DropSpoofed)
}

/// The WAN for a new connection: its classifier hash picks a slot of the weighted table; if
/// that WAN went down since the controller last rebuilt the table, the first live one.
#[inline(always)]
pub fn wan_for<'a>(key: &FlowKey, cfg: &Config) -> Result<(u8, &'a WanInfo), Counter> {
    let hash = match Method::from_u8(cfg.method) {
        // The slot table holds the WANs in turn order: walk it.
        Method::Nth => next_turn(),
        // The kernel's layer-4 hash covers the protocol too: fold it into the seed.
        Method::Ecmp => Classifier::BothAddressesAndPorts.hash(
            cfg.hash_seed ^ (u32::from(key.proto) << 24),
            key.src_addr,
            key.dst_addr,
            key.src_port,
            key.dst_port,
        ),
        Method::Pcc | Method::LeastLoaded => Classifier::from_u8(cfg.classifier).hash(
            cfg.hash_seed,
            key.src_addr,
            key.dst_addr,
            key.src_port,
            key.dst_port,
        ),
    };
    let slot = (hash % SLOT_TABLE_SIZE as u32) as usize;
    // The source's policy (most specific subnet), else the default table.
    let policy = if cfg.policy_count == 0 {
        0
    } else {
        POLICIES
            .get(Key::new(32, key.src_addr))
            .map_or(0, |p| u32::from(*p))
    };
    let table = SLOTS.get(policy).ok_or(Counter::DropNoWan)?;
    // LLVM turns `% 4093` into a multiply-shift the verifier cannot bound, then deletes our
    // bound check as redundant. Reading the index back through a volatile load hides what
    // LLVM knows, so the check stays and the verifier sees the index bounded.
    // SAFETY: reading a local.
    let slot = unsafe { core::ptr::read_volatile(&slot) };
    let wan_id = if slot < SLOT_TABLE_SIZE {
        table.slots[slot]
    } else {
        NO_WAN
    };
    if let Some(wan) = WANS.get(wan_id as u32)
        && wan.is_up()
    {
        return Ok((wan_id, wan));
    }
    for i in 0..MAX_WANS as u32 {
        if i >= u32::from(cfg.wan_count) {
            break;
        }
        if table.allowed & (1 << i) == 0 {
            continue;
        }
        if let Some(wan) = WANS.get(i)
            && wan.is_up()
        {
            return Ok((i as u8, wan));
        }
    }
    Err(if policy == 0 {
        Counter::DropNoWan
    } else {
        Counter::DropPolicyNoWan
    })
}
