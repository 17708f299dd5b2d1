//! Hairpinning (RFC 4787 REQ-9, RFC 5382 REQ-8, RFC 5508 REQ-7): a LAN host sending to the
//! public endpoint of another LAN host's mapping reaches it, from its own mapping, as two
//! peers behind the same NAT find each other through a STUN server. The packet is translated
//! out like any other, then in like a packet arriving on the WAN, and delivered on the LAN: it
//! never leaves through the WAN. Filtering does not apply (it keeps the internet out, and
//! this comes from inside), so the receiver need not have sent to the sender first.
use aya_ebpf::programs::XdpContext;
use pcc_common::{
    CT_FLAG_HAIRPIN, Counter, CtIn, FlowKey, LAN_ROUTER, PublicKey, csum,
    proto::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    CT_IN, LANS, NAT_BIND_IN, conntrack,
    nat::{Verdict, rewrite_l4, to_host},
    parse::{self, Fragment, frame_len},
};

/// The WAN whose public endpoint a new LAN connection is addressed to, if a LAN endpoint
/// holds it. Whole TCP and UDP packets only: an ICMP echo's identifier is no public port.
#[inline(always)]
pub fn target(key: &FlowKey, fragment: Fragment) -> Option<u8> {
    if fragment != Fragment::Whole || (key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP) {
        return None;
    }
    let public = PublicKey {
        nat_addr: key.dst_addr,
        nat_port: key.dst_port,
        proto: key.proto,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    unsafe { NAT_BIND_IN.get(&public) }.map(|owner| owner.wan_id)
}

/// Delivers a LAN packet whose source was already translated to the sender's mapping to the
/// LAN endpoint behind its destination: through the connection that expects it, or a new one
/// (a UDP datagram or a TCP SYN).
#[inline(always)]
pub fn deliver(ctx: &XdpContext, tcp_bits: u8) -> Verdict {
    let p = parse::ipv4(ctx)?;
    if p.fragment != Fragment::Whole {
        return Err(Counter::DropHairpinFiltered);
    }
    let (sport, dport) = if p.proto == IPPROTO_TCP {
        let th = parse::tcp(ctx, &p)?;
        // SAFETY: bounds-checked by parse::tcp.
        unsafe { ((*th).sport, (*th).dport) }
    } else {
        let uh = parse::udp(ctx, &p)?;
        // SAFETY: bounds-checked by parse::udp.
        unsafe { ((*uh).sport, (*uh).dport) }
    };
    let key = FlowKey::new(p.src, p.dst, sport, dport, p.proto);
    let entry = match CT_IN.get_ptr_mut(&key) {
        Some(entry) => entry,
        None => {
            conntrack::accept(&key, tcp_bits, CT_FLAG_HAIRPIN)
                .map_err(|_| Counter::DropHairpinFiltered)?;
            CT_IN
                .get_ptr_mut(&key)
                .ok_or(Counter::DropHairpinFiltered)?
        }
    };
    // SAFETY: a live entry of our map; concurrent writers only touch counters.
    let entry: CtIn = unsafe {
        let e = &mut *entry;
        e.last_seen_ns = conntrack::now_ns();
        e.tcp_flags |= tcp_bits;
        e.packets += 1;
        e.bytes += frame_len(ctx);
        *e
    };
    // A tuple of the router's own is not a LAN endpoint's.
    if entry.lan_id == LAN_ROUTER {
        return Err(Counter::DropHairpinFiltered);
    }
    let lan = LANS
        .get(u32::from(entry.lan_id))
        .ok_or(Counter::DropHairpinFiltered)?;
    // SAFETY: bounds-checked by parse::ipv4() and the transport parse above.
    unsafe {
        (*p.ip).check = csum::replace4((*p.ip).check, p.dst, entry.lan_addr);
        (*p.ip).dst = entry.lan_addr;
        rewrite_l4(ctx, p.proto, p.dst, entry.lan_addr, false, entry.lan_port)?;
        Ok((to_host(p.eth, p.ip, &entry, lan)?, Counter::FwdHairpin))
    }
}
