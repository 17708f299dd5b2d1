//! Source NAT out of the WANs, and its reversal for replies and ICMP errors.
use aya_ebpf::programs::XdpContext;
use pcc_common::{CT_FLAG_ROUTED, CT_TCP_RST, Counter, CtIn, FlowKey, LAN_DEVMAP_BASE, csum};

use crate::{
    CONFIG, CT_IN, CT_OUT, LANS, WAN_STATS, WANS, conntrack, fib, frag,
    parse::{
        self, EthHdr, Fragment, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
        ICMP_PARAM_PROBLEM, ICMP_TIME_EXCEEDED, IP_LEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
        IcmpHdr, Ipv4, Ipv4Hdr, L4_OFF, TcpHdr, UdpHdr, frame_len, is_multicast_or_broadcast,
        ptr_at,
    },
    route, select,
};

/// `Ok((XDP action, what happened))`, or `Err(reason)` to pass or drop.
pub type Verdict = Result<(u32, Counter), Counter>;

/// The transport ports of a LAN packet (ICMP echo: identifier, 0) and its TCP flags; for a
/// later fragment, the ports its first fragment carried.
#[inline(always)]
fn lan_ports(ctx: &XdpContext, p: &Ipv4) -> Result<(u16, u16, u8), Counter> {
    if p.fragment == Fragment::Later {
        let ports = frag::ports(p).ok_or(Counter::DropFragmentUntracked)?;
        return Ok((ports.src_port, ports.dst_port, 0));
    }
    match p.proto {
        IPPROTO_TCP => {
            let th = parse::tcp(ctx, p)?;
            // SAFETY: bounds-checked by parse::tcp.
            let th = unsafe { &*th };
            Ok((th.sport, th.dport, th.flags))
        }
        IPPROTO_UDP => {
            let uh = parse::udp(ctx, p)?;
            // SAFETY: bounds-checked by parse::udp.
            let uh = unsafe { &*uh };
            Ok((uh.sport, uh.dport, 0))
        }
        IPPROTO_ICMP => {
            let ih = parse::icmp(ctx, p)?;
            // SAFETY: bounds-checked by parse::icmp.
            let ih = unsafe { &*ih };
            if ih.kind != ICMP_ECHO_REQUEST {
                return Err(Counter::PassUnsupported);
            }
            Ok((ih.id, 0, 0))
        }
        _ => Err(Counter::PassUnsupported),
    }
}

/// LAN ingress.
#[inline(always)]
pub fn lan_to_wan(ctx: &XdpContext) -> Verdict {
    let p = parse::ipv4(ctx)?;
    let (eth, ip, src, dst, proto, tot_len) = (p.eth, p.ip, p.src, p.dst, p.proto, p.tot_len);
    if is_multicast_or_broadcast(dst) {
        return Err(Counter::PassLocal);
    }
    let (sport, dport, flags) = lan_ports(ctx, &p)?;
    let key = FlowKey::new(src, dst, sport, dport, proto);
    let bits = if proto == IPPROTO_TCP {
        conntrack::tcp_bits(flags)
    } else {
        0
    };
    let now = conntrack::now_ns();
    let len = frame_len(ctx);
    let cfg = CONFIG.get(0).ok_or(Counter::DropNoWan)?;
    let ifindex = ctx.ingress_ifindex() as u32;

    // (NAT address, NAT port, wan_id, (WAN, next hop MAC), counter) of the connection,
    // looked up once.
    let mut found = None;
    if let Some(e) = CT_OUT.get_ptr_mut(&key) {
        select::same_lan(ifindex, src, cfg)?;
        // SAFETY: a live entry of our map; concurrent writers only touch counters.
        let e = unsafe { &mut *e };
        match route::established(e, dst)? {
            Some(exit) if !conntrack::reopens(e, bits) => {
                // SAFETY: bounds-checked in parse::ipv4().
                conntrack::follow_host_mac(&key, e, unsafe { &(*eth).src });
                e.last_seen_ns = now;
                e.tcp_flags |= bits;
                e.packets += 1;
                e.bytes += len;
                found = Some((e.nat_addr, e.nat_port, e.wan_id, exit, fwd_counter(e.flags)));
            }
            // The WAN died (its upstream already broke the connection), the route that pinned
            // it changed, or the tuple is being reused: start afresh.
            _ => conntrack::close(&key, e),
        }
    }
    let (nat_addr, nat_port, wan_id, (wan, next_hop), fwd) = match found {
        Some(f) => f,
        None => {
            // Only a packet with a transport header can open a connection.
            if p.fragment == Fragment::Later {
                return Err(Counter::DropFragmentUntracked);
            }
            // A reset opens nothing (as in nf_conntrack): it answers a connection we do not
            // have, so the kernel may deal with it.
            if bits & CT_TCP_RST != 0 {
                return Err(Counter::PassUntracked);
            }
            let lan_id = select::lan_for(ifindex, src, dst, cfg)?;
            let (wan_id, (wan, next_hop), flags) = route::choose(&key, cfg)?;
            if *next_hop == [0; 6] {
                return Err(Counter::PassNoNeighbour);
            }
            if tot_len > wan.mtu {
                return Err(Counter::PassMtu);
            }
            // SAFETY: bounds-checked in parse::ipv4().
            let lan_mac = unsafe { (*eth).src };
            let first = conntrack::Opening {
                lan_id,
                lan_mac,
                tcp_bits: bits,
                len,
                now,
                flags,
            };
            let e = conntrack::open(&key, cfg, wan_id, wan, &first)?;
            // Another CPU may have opened the same connection first, on another WAN (only a
            // balanced one can: a route gives every CPU the same WAN).
            let exit = if e.wan_id == wan_id {
                (wan, next_hop)
            } else {
                let wan = WANS.get(e.wan_id as u32).ok_or(Counter::DropNoWan)?;
                (wan, &wan.gateway_mac)
            };
            (e.nat_addr, e.nat_port, e.wan_id, exit, fwd_counter(e.flags))
        }
    };

    if tot_len > wan.mtu {
        return Err(Counter::PassMtu);
    }
    if p.fragment == Fragment::First {
        frag::remember(&p, sport, dport);
    }
    // SAFETY: every pointer below was bounds-checked by parse::ipv4() and lan_ports().
    unsafe {
        (*ip).check = csum::replace4((*ip).check, src, nat_addr);
        (*ip).src = nat_addr;
        // A later fragment has no transport header; the first one's checksum update covers
        // the whole datagram.
        if p.fragment != Fragment::Later {
            rewrite_l4(ctx, proto, src, nat_addr, true, nat_port)?;
        }
    }
    if let Some(stats) = WAN_STATS.get_ptr_mut(wan_id as u32) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*stats).tx_packets += 1;
            (*stats).tx_bytes += len;
        }
    }
    // SAFETY: bounds-checked in parse::ipv4().
    let action = unsafe { fib::forward(eth, ip, next_hop, &wan.mac, wan_id as u32)? };
    Ok((action, fwd))
}

/// What a forwarded LAN packet is counted as: balanced, or pinned by a route.
#[inline(always)]
fn fwd_counter(flags: u16) -> Counter {
    if flags & CT_FLAG_ROUTED == 0 {
        Counter::FwdOut
    } else {
        Counter::FwdRouted
    }
}

/// Rewrites one address and one port of the transport header at `L4_OFF`, keeping its
/// checksum valid: TCP and UDP checksums cover the pseudo-header (RFC 793, 768), so the
/// address change counts too; ICMP's does not. `source` picks the source or destination
/// port (ICMP echo: the identifier either way).
///
/// # Safety
/// The transport header was bounds-checked for `proto` by the caller.
#[inline(always)]
unsafe fn rewrite_l4(
    ctx: &XdpContext,
    proto: u8,
    old_addr: u32,
    new_addr: u32,
    source: bool,
    new_port: u16,
) -> Result<(), Counter> {
    match proto {
        IPPROTO_TCP => {
            let th = ptr_at::<TcpHdr>(ctx, L4_OFF).ok_or(Counter::DropBadTransportHeader)?;
            // SAFETY: bounds-checked by ptr_at.
            let th = unsafe { &mut *th };
            let port = if source { &mut th.sport } else { &mut th.dport };
            let check = csum::replace4(th.check, old_addr, new_addr);
            th.check = csum::replace2(check, *port, new_port);
            *port = new_port;
        }
        IPPROTO_UDP => {
            let uh = ptr_at::<UdpHdr>(ctx, L4_OFF).ok_or(Counter::DropBadTransportHeader)?;
            // SAFETY: bounds-checked by ptr_at.
            let uh = unsafe { &mut *uh };
            let port = if source { &mut uh.sport } else { &mut uh.dport };
            let check = csum::udp_replace4(uh.check, old_addr, new_addr);
            uh.check = csum::udp_replace2(check, *port, new_port);
            *port = new_port;
        }
        _ => {
            let ih = ptr_at::<IcmpHdr>(ctx, L4_OFF).ok_or(Counter::DropBadTransportHeader)?;
            // SAFETY: bounds-checked by ptr_at.
            let ih = unsafe { &mut *ih };
            ih.check = csum::replace2(ih.check, ih.id, new_port);
            ih.id = new_port;
        }
    }
    Ok(())
}

/// The transport ports of a WAN packet as (remote port, NAT port) and its TCP flags; for a
/// later fragment, those its first fragment carried. ICMP errors are handed on.
#[inline(always)]
fn wan_ports(ctx: &XdpContext, p: &Ipv4) -> Result<(u16, u16, u8), Verdict> {
    if p.fragment == Fragment::Later {
        let ports = frag::ports(p).ok_or(Err(Counter::PassFragment))?;
        return Ok((ports.src_port, ports.dst_port, 0));
    }
    match p.proto {
        IPPROTO_TCP => {
            let th = parse::tcp(ctx, p).map_err(Err)?;
            // SAFETY: bounds-checked by parse::tcp.
            unsafe { Ok(((*th).sport, (*th).dport, (*th).flags)) }
        }
        IPPROTO_UDP => {
            let uh = parse::udp(ctx, p).map_err(Err)?;
            // SAFETY: bounds-checked by parse::udp.
            unsafe { Ok(((*uh).sport, (*uh).dport, 0)) }
        }
        IPPROTO_ICMP => {
            let ih = parse::icmp(ctx, p).map_err(Err)?;
            // SAFETY: bounds-checked by parse::icmp.
            let (kind, id) = unsafe { ((*ih).kind, (*ih).id) };
            match kind {
                ICMP_ECHO_REPLY => Ok((0, id, 0)),
                // An error is small; a fragmented one is not worth translating.
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
                    if p.fragment == Fragment::Whole =>
                {
                    Err(icmp_error_to_lan(ctx, p.eth, p.ip))
                }
                _ => Err(Err(Counter::PassUntracked)),
            }
        }
        _ => Err(Err(Counter::PassUntracked)),
    }
}

/// WAN ingress.
#[inline(always)]
pub fn wan_to_lan(ctx: &XdpContext) -> Verdict {
    let p = parse::ipv4(ctx)?;
    let (eth, ip, src, dst, proto, tot_len) = (p.eth, p.ip, p.src, p.dst, p.proto, p.tot_len);
    let (sport, dport, flags) = match wan_ports(ctx, &p) {
        Ok(ports) => ports,
        Err(verdict) => return verdict,
    };
    let key = FlowKey::new(src, dst, sport, dport, proto);
    let untracked = if p.fragment == Fragment::Whole {
        Counter::PassUntracked
    } else {
        Counter::PassFragment
    };
    let entry = CT_IN.get_ptr_mut(&key).ok_or(untracked)?;
    let len = frame_len(ctx);
    // SAFETY: a live entry of our map; concurrent writers only touch counters.
    let entry: CtIn = unsafe {
        let e = &mut *entry;
        e.last_seen_ns = conntrack::now_ns();
        if proto == IPPROTO_TCP {
            e.tcp_flags |= conntrack::tcp_bits(flags);
        }
        e.packets += 1;
        e.bytes += len;
        *e
    };
    let lan = LANS
        .get(entry.lan_id as u32)
        .ok_or(Counter::PassUntracked)?;
    if tot_len > lan.mtu {
        return Err(Counter::PassMtu);
    }
    if p.fragment == Fragment::First {
        frag::remember(&p, sport, dport);
    }
    // SAFETY: bounds-checked in parse::ipv4() and wan_ports().
    unsafe {
        (*ip).check = csum::replace4((*ip).check, dst, entry.lan_addr);
        (*ip).dst = entry.lan_addr;
        if p.fragment != Fragment::Later {
            rewrite_l4(ctx, proto, dst, entry.lan_addr, false, entry.lan_port)?;
        }
    }
    count_rx(entry.wan_id, len);
    // SAFETY: bounds-checked in parse::ipv4().
    let action = unsafe {
        fib::forward(
            eth,
            ip,
            &entry.lan_mac,
            &lan.mac,
            LAN_DEVMAP_BASE + entry.lan_id as u32,
        )?
    };
    Ok((action, Counter::FwdIn))
}

#[inline(always)]
fn count_rx(wan_id: u8, len: u64) {
    if let Some(stats) = WAN_STATS.get_ptr_mut(wan_id as u32) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*stats).rx_packets += 1;
            (*stats).rx_bytes += len;
        }
    }
}

const ICMP_LEN: usize = 8;
const INNER_IP_OFF: usize = L4_OFF + ICMP_LEN;
const INNER_L4_OFF: usize = INNER_IP_OFF + IP_LEN;

/// An ICMP error (RFC 792) quoting one of our translated packets: the quoted header carries
/// the WAN address and NAT port as source. Both the outer destination and the quoted source
/// go back to the LAN host, so path-MTU discovery and traceroute work through the NAT
/// (Cilium's `snat_v4_rewrite_*_embedded`, Linux's `nf_nat_icmp_reply_translation`).
#[inline(always)]
fn icmp_error_to_lan(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut Ipv4Hdr) -> Verdict {
    let icmp = ptr_at::<IcmpHdr>(ctx, L4_OFF).ok_or(Counter::DropBadTransportHeader)?;
    let inner = ptr_at::<Ipv4Hdr>(ctx, INNER_IP_OFF).ok_or(Counter::PassUntracked)?;
    // RFC 792 guarantees the quoted header plus 8 bytes: ports, or an echo's identifier.
    let inner_l4 = ptr_at::<UdpHdr>(ctx, INNER_L4_OFF).ok_or(Counter::PassUntracked)?;
    // SAFETY: bounds-checked by ptr_at.
    let (outer_dst, tot_len) = unsafe { ((*ip).dst, u16::from_be((*ip).tot_len)) };
    // SAFETY: bounds-checked by ptr_at.
    let (in_vihl, in_src, in_dst, in_proto, in_check) = unsafe {
        (
            (*inner).version_ihl,
            (*inner).src,
            (*inner).dst,
            (*inner).proto,
            (*inner).check,
        )
    };
    if in_vihl != 0x45 || in_src != outer_dst {
        return Err(Counter::PassUntracked);
    }
    // SAFETY: bounds-checked by ptr_at.
    let (in_sport, in_dport) = unsafe { ((*inner_l4).sport, (*inner_l4).dport) };
    let key = match in_proto {
        IPPROTO_TCP | IPPROTO_UDP => FlowKey::new(in_dst, in_src, in_dport, in_sport, in_proto),
        IPPROTO_ICMP => {
            let echo = ptr_at::<IcmpHdr>(ctx, INNER_L4_OFF).ok_or(Counter::PassUntracked)?;
            // SAFETY: bounds-checked by ptr_at.
            let (kind, id) = unsafe { ((*echo).kind, (*echo).id) };
            if kind != ICMP_ECHO_REQUEST {
                return Err(Counter::PassUntracked);
            }
            FlowKey::new(in_dst, in_src, 0, id, in_proto)
        }
        _ => return Err(Counter::PassUntracked),
    };
    let entry = CT_IN.get_ptr(&key).ok_or(Counter::PassUntracked)?;
    // SAFETY: a live entry of our map, copied once.
    let entry: CtIn = unsafe { *entry };
    let lan = LANS
        .get(entry.lan_id as u32)
        .ok_or(Counter::PassUntracked)?;
    if tot_len > lan.mtu {
        return Err(Counter::PassMtu);
    }
    let (lan_addr, lan_port) = (entry.lan_addr, entry.lan_port);
    // SAFETY: every pointer was bounds-checked by ptr_at above.
    unsafe {
        let mut icmp_check = (*icmp).check;
        // Quoted transport header first: its checksum (when quoted) covers the quoted
        // addresses, and every word we change inside the ICMP payload changes the ICMP
        // checksum by the same amount.
        match in_proto {
            IPPROTO_UDP => {
                let old = (*inner_l4).check;
                let new = csum::udp_replace2(
                    csum::udp_replace4(old, in_src, lan_addr),
                    in_sport,
                    lan_port,
                );
                (*inner_l4).check = new;
                icmp_check = csum::replace2(icmp_check, old, new);
                (*inner_l4).sport = lan_port;
            }
            IPPROTO_TCP => {
                // The TCP checksum sits past the 8 quoted bytes RFC 792 guarantees; when it is
                // missing Linux leaves it alone too (tcp_manip_pkt), as the host cannot
                // verify a truncated segment anyway.
                if let Some(th) = ptr_at::<TcpHdr>(ctx, INNER_L4_OFF) {
                    let old = (*th).check;
                    let new =
                        csum::replace2(csum::replace4(old, in_src, lan_addr), in_sport, lan_port);
                    (*th).check = new;
                    icmp_check = csum::replace2(icmp_check, old, new);
                }
                (*inner_l4).sport = lan_port;
            }
            _ => {
                let echo = INNER_L4_OFF as usize;
                if let Some(e) = ptr_at::<IcmpHdr>(ctx, echo) {
                    let old = (*e).check;
                    let new = csum::replace2(old, (*e).id, lan_port);
                    (*e).check = new;
                    icmp_check = csum::replace2(icmp_check, old, new);
                    (*e).id = lan_port;
                }
            }
        }
        icmp_check = csum::replace2(
            icmp_check,
            in_sport_or_id(in_proto, in_sport, key.dst_port),
            lan_port,
        );
        let new_inner_check = csum::replace4(in_check, in_src, lan_addr);
        (*inner).check = new_inner_check;
        (*inner).src = lan_addr;
        icmp_check = csum::replace2(icmp_check, in_check, new_inner_check);
        icmp_check = csum::replace4(icmp_check, in_src, lan_addr);
        (*icmp).check = icmp_check;

        (*ip).check = csum::replace4((*ip).check, outer_dst, lan_addr);
        (*ip).dst = lan_addr;
    }
    count_rx(entry.wan_id, frame_len(ctx));
    // SAFETY: bounds-checked in ipv4().
    let action = unsafe {
        fib::forward(
            eth,
            ip,
            &entry.lan_mac,
            &lan.mac,
            LAN_DEVMAP_BASE + entry.lan_id as u32,
        )?
    };
    Ok((action, Counter::FwdIcmpError))
}

/// The quoted port (or echo identifier) the NAT chose.
#[inline(always)]
fn in_sport_or_id(proto: u8, sport: u16, id: u16) -> u16 {
    if proto == IPPROTO_ICMP { id } else { sport }
}
