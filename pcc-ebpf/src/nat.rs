//! Source NAT out of the WANs, and its reversal for replies and ICMP errors.
use aya_ebpf::programs::XdpContext;
use pcc_common::{
    CT_FLAG_HAIRPIN, CT_FLAG_ROUTED, CT_TCP_ACK, CT_TCP_FIN, CT_TCP_RST, CT_TCP_SYN, Config,
    Counter, CtIn, FlowKey, LAN_DEVMAP_BASE, LanInfo, csum,
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    tcp::scaled_window,
};

use crate::{
    CONFIG, CT_IN, CT_OUT, LANS, WAN_STATS, WANS, conntrack, fib, frag, hairpin, icmp, local,
    parse::{
        self, EthHdr, Fragment, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
        ICMP_PARAM_PROBLEM, ICMP_TIME_EXCEEDED, IcmpHdr, Ipv4, Ipv4Hdr, L4_OFF, TcpHdr, UdpHdr,
        frame_len, is_multicast_or_broadcast, ptr_at, same_mac,
    },
    route, select, tcp,
};

/// `Ok((XDP action, what happened))`, or `Err(reason)` to pass or drop.
pub type Verdict = Result<(u32, Counter), Counter>;

/// What a packet's transport header says about its connection: ports (ICMP echo:
/// identifier as the LAN host's port), TCP flags, sequence and acknowledgment numbers and
/// window. A later fragment carries the ports its first fragment did.
#[derive(Clone, Copy)]
struct Segment {
    sport: u16,
    dport: u16,
    flags: u8,
    /// TCP: the header, for the SYN options; null otherwise.
    tcp: *mut TcpHdr,
    seq: u32,
    ack: u32,
    window: u16,
}

impl Segment {
    #[inline(always)]
    fn ports(sport: u16, dport: u16) -> Segment {
        Segment {
            sport,
            dport,
            flags: 0,
            tcp: core::ptr::null_mut(),
            seq: 0,
            ack: 0,
            window: 0,
        }
    }
}

/// What a packet's transport header makes of it, before its connection is looked up.
enum Segmented {
    /// A packet of a connection (or of one to open): its ports and flags, for the lookup.
    Connection(Segment),
    /// An ICMP error about one of our connections: `icmp` translated and forwarded it, or
    /// gave the reason it did not. Either way the packet's fate is settled.
    IcmpError(Verdict),
    /// Nothing the NAT translates (another protocol or ICMP message, a damaged transport
    /// header, a later fragment whose first one was not seen): passed to the kernel or
    /// dropped, counted under this reason.
    Untranslated(Counter),
}

impl From<Result<Segment, Counter>> for Segmented {
    #[inline(always)]
    fn from(segment: Result<Segment, Counter>) -> Self {
        match segment {
            Ok(segment) => Segmented::Connection(segment),
            Err(reason) => Segmented::Untranslated(reason),
        }
    }
}

/// The segment of a TCP or UDP packet, whole or first fragment.
#[inline(always)]
fn transport(ctx: &XdpContext, p: &Ipv4) -> Result<Segment, Counter> {
    if p.proto == IPPROTO_TCP {
        let th = parse::tcp(ctx, p)?;
        // SAFETY: bounds-checked by parse::tcp.
        let t = unsafe { &*th };
        return Ok(Segment {
            sport: t.sport,
            dport: t.dport,
            flags: t.flags,
            tcp: th,
            seq: u32::from_be(t.seq),
            ack: u32::from_be(t.ack),
            window: u16::from_be(t.window),
        });
    }
    let uh = parse::udp(ctx, p)?;
    // SAFETY: bounds-checked by parse::udp.
    unsafe { Ok(Segment::ports((*uh).sport, (*uh).dport)) }
}

/// The segment of a later fragment: the ports its first fragment carried, if it was seen.
#[inline(always)]
fn later_fragment(p: &Ipv4, unseen: Counter) -> Segmented {
    match frag::ports(p) {
        Some(ports) => Segmented::Connection(Segment::ports(ports.src_port, ports.dst_port)),
        None => Segmented::Untranslated(unseen),
    }
}

/// The segment of a LAN packet; ICMP errors about our connections are translated here.
#[inline(always)]
fn lan_segment(ctx: &XdpContext, p: &Ipv4, cfg: &Config) -> Segmented {
    if p.fragment == Fragment::Later {
        return later_fragment(p, Counter::DropFragmentUntracked);
    }
    match p.proto {
        IPPROTO_TCP | IPPROTO_UDP => transport(ctx, p).into(),
        IPPROTO_ICMP => {
            let ih = match parse::icmp(ctx, p) {
                Ok(ih) => ih,
                Err(reason) => return Segmented::Untranslated(reason),
            };
            // SAFETY: bounds-checked by parse::icmp.
            let (kind, id) = unsafe { ((*ih).kind, (*ih).id) };
            match kind {
                ICMP_ECHO_REQUEST => Segmented::Connection(Segment::ports(id, 0)),
                // An error is small; a fragmented one is not worth translating.
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
                    if p.fragment == Fragment::Whole =>
                {
                    Segmented::IcmpError(lan_icmp_error(ctx, p, cfg))
                }
                _ => Segmented::Untranslated(Counter::PassUnsupported),
            }
        }
        _ => Segmented::Untranslated(Counter::PassUnsupported),
    }
}

/// An ICMP error from a LAN host about one of its connections goes out like the connection;
/// the LAN port must own its source (BCP 38).
#[inline(always)]
fn lan_icmp_error(ctx: &XdpContext, p: &Ipv4, cfg: &Config) -> Verdict {
    select::lan_for(ctx.ingress_ifindex() as u32, p.src, p.dst, false, cfg)?;
    icmp::error_to_wan(ctx, p)
}

/// LAN ingress.
#[inline(always)]
pub fn lan_to_wan(ctx: &XdpContext) -> Verdict {
    let p = parse::ipv4(ctx)?;
    let (eth, ip, src, dst, proto) = (p.eth, p.ip, p.src, p.dst, p.proto);
    if is_multicast_or_broadcast(dst) {
        return Err(Counter::PassLocal);
    }
    let cfg = CONFIG.get(0).ok_or(Counter::DropNoWan)?;
    let ifindex = ctx.ingress_ifindex() as u32;
    let lan_id = select::lan_of_port(ifindex, cfg).ok_or(Counter::DropSpoofed)?;
    let lan = LANS.get(u32::from(lan_id)).ok_or(Counter::DropSpoofed)?;
    // SAFETY: bounds-checked in parse::ipv4().
    if !same_mac(unsafe { &(*eth).dst }, &lan.mac) {
        return Err(Counter::PassOtherHost);
    }
    let seg = match lan_segment(ctx, &p, cfg) {
        Segmented::Connection(seg) => seg,
        Segmented::IcmpError(verdict) => return verdict,
        Segmented::Untranslated(reason) => return Err(reason),
    };
    let (sport, dport) = (seg.sport, seg.dport);
    let key = FlowKey::new(src, dst, sport, dport, proto);
    let bits = if proto == IPPROTO_TCP {
        conntrack::tcp_bits(seg.flags)
    } else {
        0
    };
    // Only a whole SYN carries options worth reading (a fragmented SYN is not worth it).
    let syn = bits & CT_TCP_SYN != 0 && p.fragment == Fragment::Whole;
    let now = conntrack::now_ns();
    let len = frame_len(ctx);
    let ingress = icmp::Ingress {
        mtu: lan.mtu,
        router_addr: lan.addr,
        port: LAN_DEVMAP_BASE + u32::from(lan_id),
    };

    // (NAT address, NAT port, wan_id, (WAN, next hop MAC), counter) of the connection,
    // looked up once.
    let mut found = None;
    if let Some(e) = CT_OUT.get_ptr_mut(&key) {
        select::same_lan(ifindex, src, cfg)?;
        // SAFETY: a live entry of our map; concurrent writers only touch counters.
        let e = unsafe { &mut *e };
        match route::established(e, dst, proto)? {
            // A WAN that lost the connection's address (DHCP renewal, a restart that adopted
            // pinned state) must never send from it again: start afresh like a dead WAN.
            Some(exit) if exit.0.addr == e.nat_addr && !conntrack::reopens(&key, e, bits) => {
                // SAFETY: bounds-checked in parse::ipv4().
                conntrack::follow_host_mac(&key, e, unsafe { &(*eth).src });
                e.last_seen_ns = now;
                e.tcp_flags |= bits;
                e.packets += 1;
                e.bytes += len;
                if bits & CT_TCP_ACK != 0 {
                    e.lan_ack = seg.ack;
                    e.lan_window = scaled_window(seg.window, e.lan_wscale);
                }
                found = Some((e.nat_addr, e.nat_port, e.wan_id, exit, e.flags));
            }
            // The WAN died (UDP, ICMP and TCP still opening move; established TCP stays, see
            // route::established), the route that pinned it changed, or the tuple is being
            // reused: start afresh.
            _ => conntrack::forget(&key, e),
        }
    }
    let (nat_addr, nat_port, wan_id, (wan, next_hop), flags) = match found {
        Some(f) => f,
        None => {
            // Only a packet with a transport header can open a connection.
            if p.fragment == Fragment::Later {
                return Err(Counter::DropFragmentUntracked);
            }
            // Only a SYN opens a TCP connection, as in nf_conntrack: a server's SYN-ACK, a
            // mid-stream ACK after failover or a lone reset gets no mapping of its own.
            if proto == IPPROTO_TCP
                && bits & (CT_TCP_SYN | CT_TCP_ACK | CT_TCP_RST | CT_TCP_FIN) != CT_TCP_SYN
            {
                return Err(Counter::PassTcpNotSyn);
            }
            let hairpin_wan = hairpin::target(&key, p.fragment);
            let lan_id = select::lan_for(ifindex, src, dst, hairpin_wan.is_some(), cfg)?;
            let (wan_id, (wan, next_hop), flags) = match hairpin_wan {
                Some(wan_id) => {
                    let wan = WANS.get(u32::from(wan_id)).ok_or(Counter::DropNoWan)?;
                    (wan_id, (wan, &wan.gateway_mac), CT_FLAG_HAIRPIN)
                }
                None => route::choose(&key, cfg)?,
            };
            if flags & CT_FLAG_HAIRPIN == 0 {
                if *next_hop == [0; 6] {
                    return Err(Counter::PassNoNeighbour);
                }
                if let Err(verdict) = icmp::fits(ctx, &p, wan.mtu, &ingress) {
                    return verdict;
                }
            }
            let lan_wscale = if syn {
                tcp::syn_options(ctx, seg.tcp, wan.mtu)
            } else {
                0
            };
            // SAFETY: bounds-checked in parse::ipv4().
            let lan_mac = unsafe { (*eth).src };
            let first = conntrack::Opening {
                lan_id,
                lan_mac,
                tcp_bits: bits,
                lan_wscale,
                len,
                now,
                flags,
            };
            // Every reason open gives is a refusal of the connection, answered (RFC 5508 REQ-8).
            let e = match conntrack::open(&key, cfg, wan_id, wan, &first) {
                Ok(e) => e,
                Err(reason) => return icmp::refuse(ctx, &p, &ingress, reason),
            };
            // Another CPU may have opened the same connection first, on another WAN (only a
            // balanced one can: a route gives every CPU the same WAN).
            let exit = if e.wan_id == wan_id {
                (wan, next_hop)
            } else {
                let wan = WANS.get(e.wan_id as u32).ok_or(Counter::DropNoWan)?;
                if let Err(verdict) = icmp::fits(ctx, &p, wan.mtu, &ingress) {
                    return verdict;
                }
                (wan, &wan.gateway_mac)
            };
            (e.nat_addr, e.nat_port, e.wan_id, exit, e.flags)
        }
    };

    // A new connection was checked against its WAN's MTU and clamped before it opened.
    if found.is_some() {
        if let Err(verdict) = icmp::fits(ctx, &p, wan.mtu, &ingress) {
            return verdict;
        }
        if syn {
            // A retransmitted SYN: clamped like the first.
            tcp::syn_options(ctx, seg.tcp, wan.mtu);
        }
    }
    if p.fragment == Fragment::First {
        frag::remember(&p, sport, dport);
    }
    // SAFETY: every pointer below was bounds-checked by parse::ipv4() and lan_segment().
    unsafe {
        (*ip).check = csum::replace4((*ip).check, src, nat_addr);
        (*ip).src = nat_addr;
        // A later fragment has no transport header; the first one's checksum update covers
        // the whole datagram.
        if p.fragment != Fragment::Later {
            rewrite_l4(ctx, proto, src, nat_addr, true, nat_port)?;
        }
    }
    if flags & CT_FLAG_HAIRPIN != 0 {
        return hairpin::deliver(ctx, bits);
    }
    count_tx(wan_id, len);
    // SAFETY: bounds-checked in parse::ipv4().
    let action = unsafe { fib::forward(eth, ip, next_hop, &wan.mac, wan_id as u32)? };
    Ok((action, fwd_counter(flags)))
}

/// What a forwarded LAN packet is counted as: balanced, or pinned by a route.
#[inline(always)]
fn fwd_counter(flags: u8) -> Counter {
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
pub unsafe fn rewrite_l4(
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

/// The segment of a WAN packet (ICMP echo reply: the identifier as NAT port); ICMP errors
/// about our connections are translated here.
#[inline(always)]
fn wan_segment(ctx: &XdpContext, p: &Ipv4) -> Segmented {
    if p.fragment == Fragment::Later {
        return later_fragment(p, Counter::PassFragment);
    }
    match p.proto {
        IPPROTO_TCP | IPPROTO_UDP => transport(ctx, p).into(),
        IPPROTO_ICMP => {
            let ih = match parse::icmp(ctx, p) {
                Ok(ih) => ih,
                Err(reason) => return Segmented::Untranslated(reason),
            };
            // SAFETY: bounds-checked by parse::icmp.
            let (kind, id) = unsafe { ((*ih).kind, (*ih).id) };
            match kind {
                ICMP_ECHO_REPLY => Segmented::Connection(Segment::ports(0, id)),
                // An error is small; a fragmented one is not worth translating.
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM
                    if p.fragment == Fragment::Whole =>
                {
                    Segmented::IcmpError(icmp::error_to_lan(ctx, p.eth, p.ip))
                }
                _ => Segmented::Untranslated(Counter::PassUntracked),
            }
        }
        _ => Segmented::Untranslated(Counter::PassUntracked),
    }
}

/// WAN ingress.
#[inline(always)]
pub fn wan_to_lan(ctx: &XdpContext) -> Verdict {
    let p = parse::ipv4(ctx)?;
    let (eth, ip, src, dst, proto) = (p.eth, p.ip, p.src, p.dst, p.proto);
    let seg = match wan_segment(ctx, &p) {
        Segmented::Connection(seg) => seg,
        Segmented::IcmpError(verdict) => return verdict,
        Segmented::Untranslated(reason) => return Err(reason),
    };
    let key = FlowKey::new(src, dst, seg.sport, seg.dport, proto);
    let untracked = if p.fragment == Fragment::Whole {
        Counter::PassUntracked
    } else {
        Counter::PassFragment
    };
    let entry = match CT_IN.get_ptr_mut(&key) {
        Some(entry) => entry,
        None if p.fragment != Fragment::Later => {
            // Unsolicited: reaches a mapping's LAN endpoint only with endpoint-independent
            // filtering; else the kernel's, as always.
            let bits = if proto == IPPROTO_TCP {
                conntrack::tcp_bits(seg.flags)
            } else {
                0
            };
            conntrack::accept(&key, bits, 0).map_err(|e| match e {
                Counter::PassUntracked => untracked,
                e => e,
            })?;
            CT_IN.get_ptr_mut(&key).ok_or(untracked)?
        }
        None => return Err(untracked),
    };
    // SAFETY: a live entry of our map; wan_id never changes.
    let wan = WANS
        .get(u32::from(unsafe { (*entry).wan_id }))
        .ok_or(Counter::PassUntracked)?;
    // SAFETY: bounds-checked in parse::ipv4().
    if !same_mac(unsafe { &(*eth).dst }, &wan.mac) {
        return Err(Counter::PassOtherHost);
    }
    if local::owns(entry) {
        return Err(local::arrived(entry, proto, seg.flags));
    }
    let bits = if proto == IPPROTO_TCP {
        conntrack::tcp_bits(seg.flags)
    } else {
        0
    };
    if bits & CT_TCP_RST != 0 && !conntrack::reset_in_window(&key, entry, seg.seq) {
        return Err(Counter::DropRstOutOfWindow);
    }
    let len = frame_len(ctx);
    // SAFETY: a live entry of our map; concurrent writers only touch counters.
    let entry: CtIn = unsafe {
        let e = &mut *entry;
        e.last_seen_ns = conntrack::now_ns();
        e.tcp_flags |= bits;
        e.packets += 1;
        e.bytes += len;
        *e
    };
    let lan = LANS
        .get(entry.lan_id as u32)
        .ok_or(Counter::PassUntracked)?;
    let ingress = icmp::Ingress {
        mtu: wan.mtu,
        router_addr: wan.addr,
        port: u32::from(entry.wan_id),
    };
    if let Err(verdict) = icmp::fits(ctx, &p, lan.mtu, &ingress) {
        return verdict;
    }
    if bits & CT_TCP_SYN != 0 && p.fragment == Fragment::Whole {
        // The server's SYN-ACK: the LAN host must not send segments the WAN cannot carry.
        tcp::syn_options(ctx, seg.tcp, wan.mtu);
    }
    if p.fragment == Fragment::First {
        frag::remember(&p, seg.sport, seg.dport);
    }
    // SAFETY: bounds-checked in parse::ipv4() and wan_segment().
    unsafe {
        (*ip).check = csum::replace4((*ip).check, dst, entry.lan_addr);
        (*ip).dst = entry.lan_addr;
        if p.fragment != Fragment::Later {
            rewrite_l4(ctx, proto, dst, entry.lan_addr, false, entry.lan_port)?;
        }
    }
    count_rx(entry.wan_id, len);
    // SAFETY: bounds-checked in parse::ipv4().
    let action = unsafe { to_host(eth, ip, &entry, lan)? };
    Ok((action, Counter::FwdIn))
}

/// Forwards a translated frame to the connection's LAN host.
///
/// # Safety
/// `eth` and `ip` point into the frame, bounds-checked by the caller.
#[inline(always)]
pub unsafe fn to_host(
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    entry: &CtIn,
    lan: &LanInfo,
) -> Result<u32, Counter> {
    let port = LAN_DEVMAP_BASE + u32::from(entry.lan_id);
    // SAFETY: the caller's guarantee.
    unsafe { fib::forward(eth, ip, &entry.lan_mac, &lan.mac, port) }
}

#[inline(always)]
pub fn count_rx(wan_id: u8, len: u64) {
    if let Some(stats) = WAN_STATS.get_ptr_mut(wan_id as u32) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*stats).rx_packets += 1;
            (*stats).rx_bytes += len;
        }
    }
}

#[inline(always)]
pub fn count_tx(wan_id: u8, len: u64) {
    if let Some(stats) = WAN_STATS.get_ptr_mut(wan_id as u32) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*stats).tx_packets += 1;
            (*stats).tx_bytes += len;
        }
    }
}
