//! Fragments of translated datagrams: only the first carries the transport header, so its
//! ports are remembered by datagram (source, destination, protocol, IP ID) for the fragments
//! that follow (Cilium's `ipv4_handle_fragmentation`). A later fragment that comes before its
//! first one is not translated.
use pcc_common::{FragKey, FragPorts};

use crate::{FRAGS, parse::Ipv4};

/// The datagram `p` belongs to, as it arrived.
#[inline(always)]
pub fn key(p: &Ipv4) -> FragKey {
    FragKey::new(p.src, p.dst, p.ip_id, p.proto)
}

/// The ports of the datagram a later fragment belongs to.
#[inline(always)]
pub fn ports(p: &Ipv4) -> Option<FragPorts> {
    // SAFETY: copied out at once; LRU entries may be evicted, never changed in place.
    unsafe { FRAGS.get(&key(p)).copied() }
}

/// Remembers the ports of a first fragment's datagram. LRU: when more datagrams are in
/// flight than the map holds, the oldest lose their later fragments, nothing else.
#[inline(always)]
pub fn remember(p: &Ipv4, src_port: u16, dst_port: u16) {
    let ports = FragPorts { src_port, dst_port };
    let _ = FRAGS.insert(&key(p), &ports, 0);
}
