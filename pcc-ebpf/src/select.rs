//! Where a new connection goes: which LAN it came from, and which WAN it leaves by.
use pcc_common::{
    Classifier, Config, Counter, FlowKey, MAX_LANS, MAX_WANS, NO_WAN, SLOT_TABLE_SIZE, WanInfo,
};

use crate::{LANS, SLOTS, WANS};

/// The LAN a new connection comes from: the port it arrived on must own the source subnet
/// (BCP 38), and the destination must lie outside every LAN and the router itself.
#[inline(always)]
pub fn lan_for(ifindex: u32, src: u32, dst: u32, cfg: &Config) -> Result<u8, Counter> {
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
    for i in 0..MAX_WANS as u32 {
        if i >= u32::from(cfg.wan_count) {
            break;
        }
        if let Some(wan) = WANS.get(i)
            && wan.addr == dst
            && wan.ifindex != 0
        {
            return Err(Counter::PassLocal);
        }
    }
    found.ok_or(Counter::DropSpoofed)
}

/// The WAN for a new connection: its classifier hash picks a slot of the weighted table; if
/// that WAN went down since the controller last rebuilt the table, the first live one.
#[inline(always)]
pub fn wan_for<'a>(key: &FlowKey, cfg: &Config) -> Result<(u8, &'a WanInfo), Counter> {
    let classifier = Classifier::from_u8(cfg.classifier);
    let hash = classifier.hash(
        cfg.hash_seed,
        key.src_addr,
        key.dst_addr,
        key.src_port,
        key.dst_port,
    );
    let slot = (hash % SLOT_TABLE_SIZE as u32) as usize;
    let table = SLOTS.get(0).ok_or(Counter::DropNoWan)?;
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
        if let Some(wan) = WANS.get(i)
            && wan.is_up()
        {
            return Ok((i as u8, wan));
        }
    }
    Err(Counter::DropNoWan)
}
