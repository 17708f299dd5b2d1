//! ICMP errors: those about our connections, translated in both directions (RFC 5508 REQ-4),
//! and those the dataplane answers itself: "fragmentation needed" (RFC 1191) and
//! "communication administratively prohibited" for a refused new connection (RFC 5508 REQ-8).
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use pcc_common::{
    Counter, CtIn, CtOut, FlowKey, LAN_DEVMAP_BASE, LAN_ROUTER, csum,
    icmp::{self, ICMP_ERROR_LEN, QUOTE_LEN},
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    ratelimit::{ICMP_ANSWER_BURST, ICMP_ANSWER_INTERVAL_NS},
};

use crate::{
    CT_IN, CT_OUT, DEVMAP, ICMP_BUCKET, LANS, count, fib,
    nat::{Verdict, count_rx, count_tx, to_host},
    parse::{
        ETH_LEN, ETH_P_IP, EthHdr, Fragment, ICMP_ECHO_REQUEST, IP_LEN, IcmpHdr, Ipv4, Ipv4Hdr,
        L4_OFF, TcpHdr, UdpHdr, frame_len, is_multicast_or_broadcast, ptr_at,
    },
    route,
};

const ICMP_LEN: usize = 8;
const INNER_IP_OFF: usize = L4_OFF + ICMP_LEN;
const INNER_L4_OFF: usize = INNER_IP_OFF + IP_LEN;

/// Don't fragment (RFC 791), in network byte order.
const IP_DF: u16 = 0x4000_u16.to_be();
/// Precedence "internetwork control", the TOS the kernel's `icmp_send` gives its errors.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// The quoted packet of an ICMP error and the headers around it, bounds-checked.
struct Quoted {
    icmp: *mut IcmpHdr,
    inner: *mut Ipv4Hdr,
    /// The first 8 bytes after the quoted header: ports (TCP/UDP) or echo type and id.
    inner_l4: *mut UdpHdr,
    src: u32,
    dst: u32,
    proto: u8,
    sport: u16,
    dport: u16,
}

/// The quoted datagram of the error at `L4_OFF`; RFC 792 guarantees its header plus 8 bytes.
#[inline(always)]
fn quoted(ctx: &XdpContext) -> Result<Quoted, Counter> {
    let icmp = ptr_at::<IcmpHdr>(ctx, L4_OFF).ok_or(Counter::DropBadTransportHeader)?;
    let inner = ptr_at::<Ipv4Hdr>(ctx, INNER_IP_OFF).ok_or(Counter::PassUntracked)?;
    let inner_l4 = ptr_at::<UdpHdr>(ctx, INNER_L4_OFF).ok_or(Counter::PassUntracked)?;
    // SAFETY: bounds-checked by ptr_at.
    let (vihl, src, dst, proto, sport, dport) = unsafe {
        (
            (*inner).version_ihl,
            (*inner).src,
            (*inner).dst,
            (*inner).proto,
            (*inner_l4).sport,
            (*inner_l4).dport,
        )
    };
    if vihl != 0x45 {
        return Err(Counter::PassUntracked);
    }
    Ok(Quoted {
        icmp,
        inner,
        inner_l4,
        src,
        dst,
        proto,
        sport,
        dport,
    })
}

/// Which address and port of the quoted packet the NAT changes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The quoted packet left through us: its source was translated.
    Source,
    /// The quoted packet came in through us: its destination was translated.
    Destination,
}

/// Rewrites one address and port (or echo identifier) of the quoted packet from `old_*` to
/// `new_*`, keeping the quoted IP header checksum, the quoted TCP/UDP checksum (when quoted)
/// and the ICMP checksum valid: every word changed inside the ICMP payload changes the ICMP
/// checksum by the same amount (Cilium's `snat_v4_rewrite_*_embedded`, Linux's
/// `nf_nat_icmp_reply_translation`).
///
/// # Safety
/// `q`'s pointers were bounds-checked by [`quoted`].
#[inline(always)]
unsafe fn rewrite_quoted(
    ctx: &XdpContext,
    q: &Quoted,
    side: Side,
    old_addr: u32,
    new_addr: u32,
    old_port: u16,
    new_port: u16,
) {
    unsafe {
        let mut icmp_check = (*q.icmp).check;
        match q.proto {
            IPPROTO_UDP => {
                let old = (*q.inner_l4).check;
                let new = csum::udp_replace2(
                    csum::udp_replace4(old, old_addr, new_addr),
                    old_port,
                    new_port,
                );
                (*q.inner_l4).check = new;
                icmp_check = csum::replace2(icmp_check, old, new);
            }
            IPPROTO_TCP => {
                // The TCP checksum sits past the 8 quoted bytes RFC 792 guarantees; when it is
                // missing Linux leaves it alone too (tcp_manip_pkt), as the host cannot
                // verify a truncated segment anyway.
                if let Some(th) = ptr_at::<TcpHdr>(ctx, INNER_L4_OFF) {
                    let old = (*th).check;
                    let new =
                        csum::replace2(csum::replace4(old, old_addr, new_addr), old_port, new_port);
                    (*th).check = new;
                    icmp_check = csum::replace2(icmp_check, old, new);
                }
            }
            _ => {
                if let Some(e) = ptr_at::<IcmpHdr>(ctx, INNER_L4_OFF) {
                    let old = (*e).check;
                    let new = csum::replace2(old, old_port, new_port);
                    (*e).check = new;
                    icmp_check = csum::replace2(icmp_check, old, new);
                }
            }
        }
        icmp_check = csum::replace2(icmp_check, old_port, new_port);
        let inner_check = (*q.inner).check;
        let new_inner_check = csum::replace4(inner_check, old_addr, new_addr);
        (*q.inner).check = new_inner_check;
        icmp_check = csum::replace2(icmp_check, inner_check, new_inner_check);
        icmp_check = csum::replace4(icmp_check, old_addr, new_addr);
        (*q.icmp).check = icmp_check;
        match (side, q.proto) {
            // An echo's identifier is the first word after type, code and checksum.
            (_, IPPROTO_ICMP) => {
                if let Some(e) = ptr_at::<IcmpHdr>(ctx, INNER_L4_OFF) {
                    (*e).id = new_port;
                }
            }
            (Side::Source, _) => (*q.inner_l4).sport = new_port,
            (Side::Destination, _) => (*q.inner_l4).dport = new_port,
        }
        match side {
            Side::Source => (*q.inner).src = new_addr,
            Side::Destination => (*q.inner).dst = new_addr,
        }
    }
}

/// An ICMP error from a WAN quoting one of our translated packets: the quoted header carries
/// the WAN address and NAT port as source. Both the outer destination and the quoted source
/// go back to the LAN host, so path-MTU discovery and traceroute work through the NAT.
#[inline(always)]
pub fn error_to_lan(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut Ipv4Hdr) -> Verdict {
    let q = quoted(ctx)?;
    // SAFETY: bounds-checked in parse::ipv4().
    let outer_dst = unsafe { (*ip).dst };
    if q.src != outer_dst {
        return Err(Counter::PassUntracked);
    }
    let key = match q.proto {
        IPPROTO_TCP | IPPROTO_UDP => FlowKey::new(q.dst, q.src, q.dport, q.sport, q.proto),
        IPPROTO_ICMP => {
            let echo = ptr_at::<IcmpHdr>(ctx, INNER_L4_OFF).ok_or(Counter::PassUntracked)?;
            // SAFETY: bounds-checked by ptr_at.
            let (kind, id) = unsafe { ((*echo).kind, (*echo).id) };
            if kind != ICMP_ECHO_REQUEST {
                return Err(Counter::PassUntracked);
            }
            FlowKey::new(q.dst, q.src, 0, id, q.proto)
        }
        _ => return Err(Counter::PassUntracked),
    };
    let entry = CT_IN.get_ptr(&key).ok_or(Counter::PassUntracked)?;
    // SAFETY: a live entry of our map, copied once.
    let entry: CtIn = unsafe { *entry };
    // About a packet of the router's own socket: the kernel's to deliver.
    if entry.lan_id == LAN_ROUTER {
        return Err(Counter::PassRouterOwn);
    }
    let lan = LANS
        .get(entry.lan_id as u32)
        .ok_or(Counter::PassUntracked)?;
    // SAFETY: every pointer was bounds-checked by quoted() and parse::ipv4().
    unsafe {
        rewrite_quoted(
            ctx,
            &q,
            Side::Source,
            q.src,
            entry.lan_addr,
            key.dst_port,
            entry.lan_port,
        );
        (*ip).check = csum::replace4((*ip).check, outer_dst, entry.lan_addr);
        (*ip).dst = entry.lan_addr;
    }
    count_rx(entry.wan_id, frame_len(ctx));
    // SAFETY: bounds-checked in parse::ipv4().
    let action = unsafe { to_host(eth, ip, &entry, lan)? };
    Ok((action, Counter::FwdIcmpError))
}

/// An ICMP error from the LAN about one of our connections (a host's "port unreachable" for a
/// UDP port it closed, "time exceeded" or "fragmentation needed" from a LAN router): the
/// quoted packet came in through the NAT, so its destination is the LAN host. The outer
/// source and the quoted destination become the connection's WAN address and NAT port, and
/// it leaves through the connection's WAN, never with a LAN address (RFC 5508 REQ-4).
#[inline(always)]
pub fn error_to_wan(ctx: &XdpContext, p: &Ipv4) -> Verdict {
    let q = quoted(ctx)?;
    // The error goes back to whoever sent the quoted packet; and only a quote of TCP or UDP
    // can be ours (an echo request from outside never reaches the LAN through pcc).
    if q.src != p.dst || (q.proto != IPPROTO_TCP && q.proto != IPPROTO_UDP) {
        return Err(Counter::PassUntracked);
    }
    let key = FlowKey::new(q.dst, q.src, q.dport, q.sport, q.proto);
    // SAFETY: copied out at once.
    let entry: CtOut = unsafe { CT_OUT.get(&key) }
        .copied()
        .ok_or(Counter::PassUntracked)?;
    // Out the way the connection's own packets go: its WAN (up, or down under a TCP
    // connection that stays on it, and still holding the connection's address) and next
    // hop, the route's for a connection a route pinned.
    let (wan, next_hop) = route::established(&entry, q.src, q.proto)?
        .filter(|(wan, _)| wan.addr == entry.nat_addr)
        .ok_or(Counter::DropNoWan)?;
    // SAFETY: every pointer was bounds-checked by quoted() and parse::ipv4().
    unsafe {
        rewrite_quoted(
            ctx,
            &q,
            Side::Destination,
            q.dst,
            entry.nat_addr,
            q.dport,
            entry.nat_port,
        );
        (*p.ip).check = csum::replace4((*p.ip).check, p.src, entry.nat_addr);
        (*p.ip).src = entry.nat_addr;
    }
    count_tx(entry.wan_id, frame_len(ctx));
    // SAFETY: bounds-checked in parse::ipv4().
    let action = unsafe { fib::forward(p.eth, p.ip, next_hop, &wan.mac, entry.wan_id as u32)? };
    Ok((action, Counter::FwdIcmpErrorOut))
}

/// The port a packet arrived on, as the dataplane knows it.
#[derive(Clone, Copy)]
pub struct Ingress {
    /// Largest IPv4 packet the port carries.
    pub mtu: u16,
    /// The router's address on it: the source of the errors pcc sends back.
    pub router_addr: u32,
    /// Its `DEVMAP` slot.
    pub port: u32,
}

/// Checks that `p` fits the port it would leave by (`mtu`). A packet with DF set that does
/// not fit is answered with "fragmentation needed" from the router's address on the port it
/// arrived on (RFC 1191); one without DF is dropped: pcc does not fragment, and the kernel
/// would send it through its own default route, another WAN, or not at all.
#[inline(always)]
pub fn fits(ctx: &XdpContext, p: &Ipv4, mtu: u16, ingress: &Ingress) -> Result<(), Verdict> {
    if p.tot_len <= mtu {
        return Ok(());
    }
    // Bigger than its own port allows: a super-frame (a veth peer's unsegmented TSO/GSO
    // packet in generic mode, a driver's LRO). The kernel segments it on the way out.
    if p.tot_len > ingress.mtu {
        return Err(Err(Counter::PassOversize));
    }
    // SAFETY: bounds-checked in parse::ipv4().
    if unsafe { (*p.ip).frag_off } & IP_DF == 0 {
        return Err(Err(Counter::DropOverMtu));
    }
    // `p`'s pointers are stale after this: the frame becomes the error. "Rest": 2 unused
    // bytes, then the next-hop MTU.
    let [hi, lo] = mtu.to_be_bytes();
    let rest = u32::from_ne_bytes([0, 0, hi, lo]);
    let action = answer(
        ctx,
        icmp::ICMP_FRAG_NEEDED,
        rest,
        ingress.router_addr,
        ingress.port,
    );
    Err(if action == xdp_action::XDP_REDIRECT {
        Ok((action, Counter::AnsweredFragNeeded))
    } else {
        Err(Counter::DropRedirect)
    })
}

/// A LAN packet that would open a connection pcc refuses (`reason`: the table is full, no NAT
/// port is free, the host holds too many): dropped and counted under `reason`, and answered
/// with "communication administratively prohibited" (RFC 1812 5.2.7.1), as RFC 5508 REQ-8
/// asks of a NAT that refuses a new mapping, so the host's connect() fails at once
/// (`EHOSTUNREACH`) instead of retrying into silence. Never answered (RFC 1812 4.3.2.7): a
/// fragment other than the first, an ICMP error (those never open a connection, see
/// `nat::lan_segment`), a source that is not one host of the LAN (its network or broadcast
/// address, a broadcast or multicast address). A per-CPU token bucket (`ratelimit`) caps the
/// answers; above it the packet is only dropped.
#[inline(always)]
pub fn refuse(ctx: &XdpContext, p: &Ipv4, ingress: &Ingress, reason: Counter) -> Verdict {
    if p.fragment == Fragment::Later || is_multicast_or_broadcast(p.src) {
        return Err(reason);
    }
    let Some(lan) = LANS.get(ingress.port.wrapping_sub(LAN_DEVMAP_BASE)) else {
        return Err(reason);
    };
    if !lan.is_host(p.src) {
        return Err(reason);
    }
    let Some(bucket) = ICMP_BUCKET.get_ptr_mut(0) else {
        return Err(reason);
    };
    // SAFETY: helper without arguments; the bucket is this CPU's own slot, and XDP programs
    // do not preempt each other on one CPU.
    let allowed = unsafe {
        (*bucket).allow(
            bpf_ktime_get_ns(),
            ICMP_ANSWER_INTERVAL_NS,
            ICMP_ANSWER_BURST,
        )
    };
    if !allowed {
        count(Counter::IcmpProhibitedRateLimited);
        return Err(reason);
    }
    // `p`'s pointers are stale after this: the frame becomes the error.
    let action = answer(
        ctx,
        icmp::ICMP_ADMIN_PROHIBITED,
        0,
        ingress.router_addr,
        ingress.port,
    );
    if action != xdp_action::XDP_REDIRECT {
        return Err(reason);
    }
    count(Counter::IcmpProhibitedSent);
    // The packet's fate stays its refusal; the frame that leaves is the answer.
    Ok((action, reason))
}

/// Turns the frame into an ICMP "destination unreachable" with `code` and the 4 "rest" bytes
/// `rest` (as they go on the wire) for its sender, from the router's address on the port it
/// came in on, and sends it back out of that port (Katran's `send_icmp4_too_big`, rewritten
/// in place). Through the devmap rather than `XDP_TX`: in this lab's veths `XDP_TX` frames of
/// packets that arrived as socket buffers never reached the peer, and the devmap is the path
/// every other frame of ours takes. A subprogram of its own: inlined into both programs it
/// pushed them past the 512-byte BPF stack. Returns the XDP action (`XDP_DROP` if the frame
/// could not be turned into the error).
#[inline(never)]
fn answer(ctx: &XdpContext, code: u8, rest: u32, router_addr: u32, port: u32) -> u32 {
    match build_unreachable(ctx, code, rest, router_addr) {
        Some(()) => match DEVMAP.redirect(port, 0) {
            Ok(action) => action,
            Err(_) => xdp_action::XDP_DROP,
        },
        None => xdp_action::XDP_DROP,
    }
}

/// Rewrites the frame in place: the tail is cut after the offending IPv4 header and 8 bytes
/// (all RFC 792 asks a quote to carry), and room for the new IPv4 and ICMP headers is made in
/// front, so the quote is already where the error carries it and nothing is copied through
/// the stack.
#[inline(always)]
fn build_unreachable(ctx: &XdpContext, code: u8, rest: u32, router_addr: u32) -> Option<()> {
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN)?;
    // SAFETY: bounds-checked by ptr_at; read before the frame changes.
    let (peer_mac, port_mac, sender) = unsafe { ((*eth).src, (*eth).dst, (*ip).src) };
    let keep = (ETH_LEN + QUOTE_LEN) as i64;
    // SAFETY: the helpers only move data and data_end; every pointer is derived afresh below.
    unsafe {
        if bpf_xdp_adjust_tail(ctx.ctx, (keep - frame_len(ctx) as i64) as i32) != 0
            || bpf_xdp_adjust_head(ctx.ctx, -((IP_LEN + ICMP_LEN) as i32)) != 0
        {
            return None;
        }
    }
    let eth = ptr_at::<EthHdr>(ctx, 0)?;
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN)?;
    let icmp = ptr_at::<IcmpHdr>(ctx, L4_OFF)?;
    let quote = ptr_at::<[u16; QUOTE_LEN / 2]>(ctx, INNER_IP_OFF)?;
    let rest = rest.to_ne_bytes();
    let tot_len = ((IP_LEN + ICMP_ERROR_LEN) as u16).to_be();
    let [s0, s1] = [router_addr as u16, (router_addr >> 16) as u16];
    let [d0, d1] = [sender as u16, (sender >> 16) as u16];
    let ttl_proto = u16::from_ne_bytes([64, IPPROTO_ICMP]);
    let first = u16::from_ne_bytes([0x45, TOS_INTERNETWORK_CONTROL]);
    let words = [first, tot_len, 0, IP_DF, ttl_proto, 0, s0, s1, d0, d1];
    // SAFETY: all four bounds-checked by ptr_at after the resize.
    unsafe {
        let icmp_check = icmp::error_checksum(icmp::ICMP_DEST_UNREACH, code, rest, &*quote);
        (*eth).dst = peer_mac;
        (*eth).src = port_mac;
        (*eth).ether_type = ETH_P_IP;
        (*ip).version_ihl = 0x45;
        (*ip).tos = TOS_INTERNETWORK_CONTROL;
        (*ip).tot_len = tot_len;
        (*ip).id = 0;
        // Never fragmented (56 bytes), and marked so, as hosts' own packets are.
        (*ip).frag_off = IP_DF;
        (*ip).ttl = 64;
        (*ip).proto = IPPROTO_ICMP;
        (*ip).check = icmp::ipv4_header_checksum(&words);
        (*ip).src = router_addr;
        (*ip).dst = sender;
        (*icmp).kind = icmp::ICMP_DEST_UNREACH;
        (*icmp).code = code;
        (*icmp).check = icmp_check;
        (*icmp).id = u16::from_ne_bytes([rest[0], rest[1]]);
        (*icmp).seq = u16::from_ne_bytes([rest[2], rest[3]]);
    }
    Some(())
}
