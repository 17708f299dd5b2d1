//! The conntrack pair: `CT_OUT` (LAN-side tuple) and `CT_IN` (WAN-side tuple).
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
};
use pcc_common::{
    CT_TCP_ACK, CT_TCP_FIN, CT_TCP_RST, CT_TCP_SYN, Config, Counter, CtIn, CtOut, FlowKey, WanInfo,
    natport::NAT_PORT_TRIES, tcp,
};

use crate::{CT_IN, CT_OUT, WAN_STATS, parse};

pub const EEXIST: i32 = 17;

/// CLOCK_MONOTONIC at jiffy resolution: plenty for idle timeouts in seconds, and cheaper
/// than `bpf_ktime_get_ns` on every packet.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// TCP header flags as `CT_TCP_*` bits.
#[inline(always)]
pub fn tcp_bits(flags: u8) -> u8 {
    let mut bits = 0;
    if flags & parse::TCP_SYN != 0 {
        bits |= CT_TCP_SYN;
    }
    if flags & parse::TCP_FIN != 0 {
        bits |= CT_TCP_FIN;
    }
    if flags & parse::TCP_RST != 0 {
        bits |= CT_TCP_RST;
    }
    if flags & parse::TCP_ACK != 0 {
        bits |= CT_TCP_ACK;
    }
    bits
}

/// Whether a LAN packet starts a new connection on a tuple whose old one was closed by
/// either side (a client reusing its source port): the old translation must not carry over.
/// Only a SYN reads the reply side.
#[inline(always)]
pub fn reopens(key: &FlowKey, entry: &CtOut, bits: u8) -> bool {
    const CLOSED: u8 = CT_TCP_FIN | CT_TCP_RST;
    if bits & (CT_TCP_SYN | CT_TCP_ACK) != CT_TCP_SYN {
        return false;
    }
    if entry.tcp_flags & CLOSED != 0 {
        return true;
    }
    // SAFETY: copied out at once.
    let reply = unsafe { CT_IN.get(&key.reply_key(entry.nat_addr, entry.nat_port)) };
    reply.is_some_and(|r| r.tcp_flags & CLOSED != 0)
}

/// Whether a reset from outside, with sequence number `seq`, may end the connection whose
/// reply entry (`key`) is `reply`: inside the window the LAN host last advertised (RFC 5961),
/// or any reset while the host has acknowledged nothing yet (it answers a SYN: RFC 793 checks
/// its acknowledgment, which the host itself does).
#[inline(always)]
pub fn reset_in_window(key: &FlowKey, reply: *mut CtIn, seq: u32) -> bool {
    // SAFETY: a live entry of our map, read once.
    let CtIn {
        lan_addr, lan_port, ..
    } = unsafe { *reply };
    // SAFETY: copied out at once.
    let Some(out) = (unsafe { CT_OUT.get(&key.original_key(lan_addr, lan_port)) }) else {
        return true;
    };
    out.tcp_flags & CT_TCP_ACK == 0 || tcp::rst_in_window(seq, out.lan_ack, out.lan_window)
}

/// Forgets a connection (both halves).
#[inline(always)]
pub fn close(key: &FlowKey, entry: &CtOut) {
    let _ = CT_IN.remove(&key.reply_key(entry.nat_addr, entry.nat_port));
    let _ = CT_OUT.remove(key);
}

/// A host that sends from another MAC than its connection knew (a NIC swapped under the same
/// address) gets the replies there from now on, as the kernel's ARP would send them.
#[inline(always)]
pub fn follow_host_mac(key: &FlowKey, entry: &mut CtOut, mac: &[u8; 6]) {
    if parse::same_mac(&entry.lan_mac, mac) {
        return;
    }
    entry.lan_mac = *mac;
    if let Some(reply) = CT_IN.get_ptr_mut(&key.reply_key(entry.nat_addr, entry.nat_port)) {
        // SAFETY: a live entry of our map; only this field is written.
        unsafe { (*reply).lan_mac = *mac };
    }
}

/// What the packet that opens a connection says about it.
#[derive(Clone, Copy)]
pub struct Opening {
    pub lan_id: u8,
    /// The host's MAC, for the replies.
    pub lan_mac: [u8; 6],
    /// `CT_TCP_*` of the opening packet.
    pub tcp_bits: u8,
    /// The window scale of the host's SYN (0 for anything else).
    pub lan_wscale: u8,
    /// Its frame length, counted in the connection's bytes.
    pub len: u64,
    pub now: u64,
    /// `CT_FLAG_*` of the new connection.
    pub flags: u8,
}

/// Records a new connection leaving through `wan`, choosing its NAT port.
///
/// Cilium's order: the reply entry goes in first with `BPF_NOEXIST`, so a port is only ever
/// claimed atomically; the forward entry follows, and the reply entry is rolled back if that
/// fails. Another CPU racing us on the same new connection wins, and we use its entry.
/// `flows_created` of the WAN counts the connections this call created, not the lost races.
#[inline(always)]
pub fn open(
    key: &FlowKey,
    cfg: &Config,
    wan_id: u8,
    wan: &WanInfo,
    first: &Opening,
) -> Result<CtOut, Counter> {
    let Opening {
        lan_id,
        lan_mac,
        tcp_bits,
        lan_wscale,
        len,
        now,
        flags,
    } = *first;
    let reply = CtIn {
        lan_addr: key.src_addr,
        lan_port: key.src_port,
        lan_id,
        tcp_flags: 0,
        lan_mac,
        wan_id,
        _pad: 0,
        last_seen_ns: now,
        packets: 0,
        bytes: 0,
    };
    let orig_port = u16::from_be(key.src_port);
    let mut nat_port = None;
    for attempt in 0..NAT_PORT_TRIES {
        // SAFETY: helper without arguments.
        let random = unsafe { bpf_get_prandom_u32() };
        let port = cfg.nat_ports.candidate(orig_port, attempt, random).to_be();
        match CT_IN.insert(&key.reply_key(wan.addr, port), &reply, BPF_NOEXIST as u64) {
            Ok(()) => {
                nat_port = Some(port);
                break;
            }
            Err(e) if e as i32 == -EEXIST => continue,
            Err(_) => return Err(Counter::DropConntrackFull),
        }
    }
    let nat_port = nat_port.ok_or(Counter::DropNatPortsExhausted)?;
    let out = CtOut {
        nat_addr: wan.addr,
        nat_port,
        wan_id,
        tcp_flags: tcp_bits,
        lan_mac,
        flags,
        lan_wscale,
        lan_ack: 0,
        lan_window: 0,
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
        bytes: len,
    };
    match CT_OUT.insert(key, &out, BPF_NOEXIST as u64) {
        Ok(()) => {
            // Counted here, where the entry was created: a CPU that lost the race below
            // opened nothing.
            if let Some(stats) = WAN_STATS.get_ptr_mut(wan_id as u32) {
                // SAFETY: per-CPU slot.
                unsafe { (*stats).flows_created += 1 };
            }
            Ok(out)
        }
        Err(e) => {
            let _ = CT_IN.remove(&key.reply_key(wan.addr, nat_port));
            if e as i32 == -EEXIST
                && let Some(winner) = CT_OUT.get_ptr(key)
            {
                // SAFETY: a live entry of our own map; read once.
                return Ok(unsafe { *winner });
            }
            Err(Counter::DropConntrackFull)
        }
    }
}
