//! Next hop: decrement TTL, write the MACs, hand the frame to the target port.
use aya_ebpf::bindings::xdp_action;
use pcc_common::Counter;

use crate::{
    DEVMAP,
    parse::{EthHdr, Ipv4Hdr},
};

/// Forwards the frame to `DEVMAP[port]`. TTL was checked to be > 1 before anything changed.
///
/// # Safety
/// `eth` and `ip` point into the frame, bounds-checked by the caller.
#[inline(always)]
pub unsafe fn forward(
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    dst_mac: &[u8; 6],
    src_mac: &[u8; 6],
    port: u32,
) -> Result<u32, Counter> {
    unsafe {
        // The kernel's ip_decrease_ttl(): TTL is the high byte of its 16-bit word, so the
        // checksum grows by 0x0100 (RFC 1624, with end-around carry).
        let check = u32::from((*ip).check) + u32::from(0x0100_u16.to_be());
        (*ip).check = (check + u32::from(check >= 0xffff)) as u16;
        (*ip).ttl -= 1;
        (*eth).dst = *dst_mac;
        (*eth).src = *src_mac;
    }
    match DEVMAP.redirect(port, 0) {
        Ok(action) if action == xdp_action::XDP_REDIRECT => Ok(action),
        _ => Err(Counter::DropRedirect),
    }
}
