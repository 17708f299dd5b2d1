//! The router's own connections on the WANs. Frames the XDP programs redirect never pass TC
//! egress, so what the `pcc_wan_egress` hook sees leave a WAN from a WAN address comes from
//! the router itself: its own sockets (a DNS resolver, an IKE daemon, the probes, `curl` on
//! the router) or the kernel's masquerade of a LAN packet it forwarded (POSTROUTING runs
//! before TC egress, so the hook sees the translated source). Each such tuple is recorded in
//! `CT_IN` in its reply form with `lan_id == LAN_ROUTER`, as nf_conntrack tracks local flows:
//! a mapping's `BPF_NOEXIST` insert then finds it taken, and `pcc_wan` passes what arrives on
//! it to the kernel. A router packet on a tuple a LAN host's mapping already holds does not
//! leave: its replies would go to the LAN host.
//!
//! Headers are read with `bpf_skb_load_bytes`, which also reaches a header outside the linear
//! part of a socket's buffer and needs no bounds proofs; the router's own packets are not the
//! fast path.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use pcc_common::{
    CT_TCP_ACK, CT_TCP_RST, CT_TCP_SYN, Counter, CtIn, FlowKey, LAN_ROUTER,
    proto::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    CONFIG, CT_IN,
    conntrack::{self, EEXIST},
    count,
    parse::{ETH_LEN, ETH_P_IP, ICMP_ECHO_REQUEST, IP_OFFSET, IcmpHdr, Ipv4Hdr, L4_OFF},
    select, sweep,
};

/// Offset of the EtherType in the Ethernet header.
const ETHER_TYPE_OFF: usize = 12;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFF: usize = 13;
/// Version 4, IHL 5: a header without options (the router's stack sends none of its own).
const IPV4_NO_OPTIONS: u8 = 0x45;

/// TC egress on a WAN: records the router's own tuple, or keeps the packet in when a LAN host's
/// mapping holds it.
#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    let Some((key, bits, wan_id)) = own_tuple(ctx) else {
        return TC_ACT_OK as i32;
    };
    let now = conntrack::now_ns();
    if let Some(e) = CT_IN.get_ptr_mut(&key) {
        return refresh(e, bits, now);
    }
    // A reset with no tuple recorded answers a packet no socket wanted (a port scan): there is
    // nothing to keep apart, and recording it would let the internet fill the table.
    if bits & CT_TCP_RST != 0 {
        return TC_ACT_OK as i32;
    }
    let entry = CtIn {
        lan_addr: 0,
        lan_port: 0,
        lan_id: LAN_ROUTER,
        tcp_flags: bits,
        lan_mac: [0; 6],
        wan_id,
        _pad: 0,
        last_seen_ns: now,
        packets: 0,
        bytes: 0,
    };
    // Expired by the dataplane's sweep like a mapping, controller or not.
    match sweep::record_router_tuple(&key, &entry) {
        Ok(()) => {
            count(Counter::PassRouterOwnOut);
            TC_ACT_OK as i32
        }
        // A LAN host's new connection (or another CPU's packet of ours) got there first.
        Err(e) if e as i32 == -EEXIST => match CT_IN.get_ptr_mut(&key) {
            Some(e) => refresh(e, bits, now),
            None => TC_ACT_OK as i32,
        },
        Err(_) => {
            count(Counter::PassRouterOwnUnrecorded);
            TC_ACT_OK as i32
        }
    }
}

/// An existing entry for the router's packet: refreshed if it is the router's, else the
/// packet stays in.
#[inline(always)]
fn refresh(e: *mut CtIn, bits: u8, now: u64) -> i32 {
    // SAFETY: a live entry of our map; `lan_id` never changes, the rest are plain stores.
    let e = unsafe { &mut *e };
    if e.lan_id != LAN_ROUTER {
        count(Counter::DropRouterTupleTaken);
        return TC_ACT_SHOT as i32;
    }
    // A new connection of the router on a tuple it used before: the old one's FIN or RST
    // must not shorten the new one's life.
    if bits & (CT_TCP_SYN | CT_TCP_ACK) == CT_TCP_SYN {
        e.tcp_flags = bits;
    } else {
        e.tcp_flags |= bits;
    }
    e.last_seen_ns = now;
    count(Counter::PassRouterOwnOut);
    TC_ACT_OK as i32
}

/// The `CT_IN` key of the router's packet (remote, WAN address, remote port, local port), its
/// `CT_TCP_*` bits and the WAN whose address it leaves from: IPv4 TCP, UDP or ICMP echo from a
/// WAN address, with a local port (echo identifier) a mapping could take.
#[inline(always)]
fn own_tuple(ctx: &TcContext) -> Option<(FlowKey, u8, u8)> {
    if ctx.load::<u16>(ETHER_TYPE_OFF).ok()? != ETH_P_IP {
        return None;
    }
    let ip: Ipv4Hdr = ctx.load(ETH_LEN).ok()?;
    // A later fragment carries no ports; its first fragment recorded the tuple.
    if ip.version_ihl != IPV4_NO_OPTIONS || ip.frag_off & IP_OFFSET != 0 {
        return None;
    }
    let cfg = CONFIG.get(0)?;
    let wan_id = select::wan_with_addr(ip.src, cfg)?;
    let (remote_port, local_port, bits) = match ip.proto {
        IPPROTO_TCP => {
            let [local, remote]: [u16; 2] = ctx.load(L4_OFF).ok()?;
            let flags: u8 = ctx.load(L4_OFF + TCP_FLAGS_OFF).ok()?;
            (remote, local, conntrack::tcp_bits(flags))
        }
        IPPROTO_UDP => {
            let [local, remote]: [u16; 2] = ctx.load(L4_OFF).ok()?;
            (remote, local, 0)
        }
        IPPROTO_ICMP => {
            let echo: IcmpHdr = ctx.load(L4_OFF).ok()?;
            if echo.kind != ICMP_ECHO_REQUEST {
                return None;
            }
            // Its reply's key: the identifier plays the local port, the remote port is 0.
            (0, echo.id, 0)
        }
        _ => return None,
    };
    // A port outside the NAT range is never a mapping's: nothing to keep apart.
    if !cfg.nat_ports.contains(u16::from_be(local_port)) {
        return None;
    }
    let key = FlowKey::new(ip.dst, ip.src, remote_port, local_port, ip.proto);
    Some((key, bits, wan_id))
}

/// Whether a `CT_IN` entry is one of the router's own tuples.
#[inline(always)]
pub fn owns(entry: *const CtIn) -> bool {
    // SAFETY: a live entry of our map; `lan_id` never changes.
    unsafe { (*entry).lan_id == LAN_ROUTER }
}

/// A packet arrived on a WAN for the router's own tuple: the entry lives on, and the kernel
/// gets the packet.
#[inline(always)]
pub fn arrived(entry: *mut CtIn, proto: u8, tcp_flags: u8) -> Counter {
    // SAFETY: a live entry of our map; plain stores (a lost update only costs freshness).
    unsafe {
        let e = &mut *entry;
        e.last_seen_ns = conntrack::now_ns();
        if proto == IPPROTO_TCP {
            e.tcp_flags |= conntrack::tcp_bits(tcp_flags);
        }
        e.packets += 1;
    }
    Counter::PassRouterOwn
}
