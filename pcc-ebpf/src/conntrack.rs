//! The conntrack pair: `CT_OUT` (LAN-side tuple) and `CT_IN` (WAN-side tuple).
use core::intrinsics::AtomicOrdering;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
};
use pcc_common::{
    BindKey, Binding, CT_FLAG_HAIRPIN, CT_FLAG_INBOUND, CT_FLAG_UNBOUND, CT_TCP_ACK, CT_TCP_FIN,
    CT_TCP_RST, CT_TCP_SYN, Config, Counter, CtEvent, CtIn, CtOut, FlowKey, MAX_LANS, NatFiltering,
    Owner, PublicKey, WanInfo, expiry, natport::NAT_PORT_TRIES, proto, tcp,
};

use crate::{
    CONFIG, CT_EVENTS, CT_IN, CT_OUT, HOST_CONNECTIONS, LANS, NAT_BIND_IN, NAT_BIND_OUT, RECENT,
    SCRATCH, WAN_STATS, parse, sweep,
};

pub const EEXIST: i32 = 17;
const NOEXIST: u64 = BPF_NOEXIST as u64;

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
    if flags & proto::TCP_SYN != 0 {
        bits |= CT_TCP_SYN;
    }
    if flags & proto::TCP_FIN != 0 {
        bits |= CT_TCP_FIN;
    }
    if flags & proto::TCP_RST != 0 {
        bits |= CT_TCP_RST;
    }
    if flags & proto::TCP_ACK != 0 {
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

/// Forgets a connection: both halves, its expiry slot, its place in its host's count and its
/// reference to its binding. Only the caller whose delete removed the forward half releases,
/// so a connection forgotten at once by the sweep and by a packet is released once. A
/// subprogram that returns nothing: its outcomes do not multiply its callers' paths.
#[inline(never)]
pub fn forget(key: &FlowKey, entry: &CtOut) {
    // Read first: `entry` may be the map's own value, gone once removed.
    let (nat_addr, nat_port, flags, wan_id) =
        (entry.nat_addr, entry.nat_port, entry.flags, entry.wan_id);
    let (slot, token) = (entry.expiry_slot, entry.expiry_token);
    let _ = CT_IN.remove(&key.reply_key(nat_addr, nat_port));
    if CT_OUT.remove(key).is_err() {
        return;
    }
    sweep::free_slot(slot, expiry::slot_owner(token, false));
    release_host(host_count_any(key.src_addr));
    if flags & CT_FLAG_UNBOUND == 0 {
        unbind_connection(key, nat_addr, nat_port, wan_id);
    }
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

/// What the new connection got: its public endpoint, WAN and `CT_FLAG_*`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Opened {
    pub nat_addr: u32,
    pub nat_port: u16,
    pub wan_id: u8,
    pub flags: u8,
}

/// Everything a new connection is made of.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Claim {
    key: FlowKey,
    nat_addr: u32,
    wan_id: u8,
    first: Opening,
    nat_ports: pcc_common::NatPortRange,
    sweep: expiry::Sweep,
}

/// Per-CPU working memory of a new connection (`SCRATCH[0]`). Kept out of the stack: the
/// claim is a global BPF function, whose frame adds to the LAN program's deep one under the
/// 512-byte limit.
#[repr(C)]
pub struct Scratch {
    claim: Claim,
    opened: Opened,
    out: CtOut,
    reply: CtIn,
    owner: Owner,
    binding: Binding,
    endpoint: BindKey,
    public: PublicKey,
    reply_key: FlowKey,
    /// `accept`: the inbound packet's key, and `CT_FLAG_*` of its connection.
    inbound: FlowKey,
    inbound_flags: u8,
}

const CLAIM_NEW: u32 = 0;
const CLAIM_LOST: u32 = 1;
const CLAIM_FULL: u32 = 2;
const CLAIM_NO_PORT: u32 = 3;

/// Records a new connection leaving through `wan`, with the LAN endpoint's binding on that
/// WAN (made now if it has none), once its host is under its connection limit. A full table
/// first makes room by dropping a connection that never got a reply.
///
/// Another CPU racing us on the same new connection wins, and we use its entry.
/// `flows_created` of the WAN counts the connections this call created, not the lost races.
#[inline(always)]
pub fn open(
    key: &FlowKey,
    cfg: &Config,
    wan_id: u8,
    wan: &WanInfo,
    first: &Opening,
) -> Result<Opened, Counter> {
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Counter::DropConntrackFull)?;
    let count = host_count(key.src_addr, first.lan_id);
    admit_host(count, cfg)?;
    // SAFETY: this CPU's scratch; XDP programs do not preempt each other on one CPU.
    unsafe {
        (*scratch).claim = Claim {
            key: *key,
            nat_addr: wan.addr,
            wan_id,
            first: *first,
            nat_ports: cfg.nat_ports,
            sweep: cfg.sweep,
        };
    }
    let mut status = pcc_claim_connection();
    if status == CLAIM_FULL && pcc_early_drop() != 0 {
        status = pcc_claim_connection();
    }
    // SAFETY: as above; written by the claim.
    let opened = unsafe { (*scratch).opened };
    match status {
        CLAIM_NEW => Ok(opened),
        CLAIM_LOST => {
            release_host(count);
            Ok(opened)
        }
        CLAIM_FULL => {
            release_host(count);
            Err(Counter::DropConntrackFull)
        }
        _ => {
            release_host(count);
            Err(Counter::DropNatPortsExhausted)
        }
    }
}

/// Inserts both halves of the new connection in `SCRATCH[0].claim`, with its expiry slot;
/// `SCRATCH[0].opened` says what it got. Returns a `CLAIM_*` status.
///
/// Cilium's order: the reply entry goes in first with `BPF_NOEXIST`, so a public tuple is only
/// ever claimed atomically; the forward entry follows, and the reply entry is rolled back if
/// that fails. A global function (BTF linkage global, hence `no_mangle`): the verifier checks
/// it once on its own, so its many outcomes do not multiply the paths of the LAN program.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pcc_claim_connection() -> u32 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return CLAIM_FULL;
    };
    // SAFETY: this CPU's scratch; XDP programs do not preempt each other on one CPU.
    let scratch = unsafe { &mut *scratch };
    let (nat_port, binding) = match map_endpoint(scratch) {
        Ok(mapped) => mapped,
        Err(status) => return status,
    };
    // Read through the scratch, not copied out: copies of the claim would be spilled to the
    // stack, and this frame adds to the LAN program's.
    let claim = &scratch.claim;
    let (key, nat_addr, wan_id, first) = (&claim.key, claim.nat_addr, claim.wan_id, &claim.first);
    let Some(slot) = sweep::claim_slot(key, claim.sweep.slot_mask) else {
        take_back(key, nat_addr, nat_port, wan_id, binding);
        return CLAIM_FULL;
    };
    let out = &mut scratch.out;
    out.expiry_slot = slot.index;
    out.expiry_token = slot.token;
    out.nat_addr = nat_addr;
    out.nat_port = nat_port;
    out.wan_id = wan_id;
    out.tcp_flags = first.tcp_bits;
    out.lan_mac = first.lan_mac;
    out.flags = first.flags | binding;
    out.lan_wscale = first.lan_wscale;
    out.lan_ack = 0;
    out.lan_window = 0;
    out.created_ns = first.now;
    out.last_seen_ns = first.now;
    out.packets = 1;
    out.bytes = first.len;
    match CT_OUT.insert(key, &*out, NOEXIST) {
        Ok(()) => {
            slot.publish(false);
            remember(key);
            // Counted here, where the entry was created: a CPU that lost the race below
            // opened nothing.
            if let Some(stats) = WAN_STATS.get_ptr_mut(wan_id as u32) {
                // SAFETY: per-CPU slot.
                unsafe { (*stats).flows_created += 1 };
            }
            scratch.opened = Opened {
                nat_addr,
                nat_port,
                wan_id,
                flags: first.flags | binding,
            };
            CLAIM_NEW
        }
        Err(e) => {
            slot.abandon();
            take_back(key, nat_addr, nat_port, wan_id, binding);
            if e as i32 == -EEXIST
                && let Some(winner) = CT_OUT.get_ptr(key)
            {
                // SAFETY: a live entry of our map, read once.
                scratch.opened = unsafe {
                    Opened {
                        nat_addr: (*winner).nat_addr,
                        nat_port: (*winner).nat_port,
                        wan_id: (*winner).wan_id,
                        flags: (*winner).flags,
                    }
                };
                return CLAIM_LOST;
            }
            CLAIM_FULL
        }
    }
}

/// Undoes `map_endpoint` for a connection that did not open: its reply half, and its
/// reference to its binding unless it was unbound (`binding` is `CT_FLAG_UNBOUND` or 0).
#[inline(always)]
fn take_back(key: &FlowKey, nat_addr: u32, nat_port: u16, wan_id: u8, binding: u8) {
    let _ = CT_IN.remove(&key.reply_key(nat_addr, nat_port));
    if binding == 0 {
        unbind_connection(key, nat_addr, nat_port, wan_id);
    }
}

/// Opens a connection from outside when filtering is endpoint-independent (RFC 4787 REQ-8's
/// "endpoint-independent filtering", einat's full cone): a UDP datagram or a TCP SYN
/// (RFC 5382 allows a SYN to a mapping, for simultaneous open) to a live mapping reaches its
/// LAN endpoint, which may answer. `inbound` is the packet's key as it arrived (remote ->
/// public endpoint). The host's connection limit holds for these too, so a flood from many
/// remote ports cannot fill the table beyond one host's share.
#[inline(always)]
pub fn accept(inbound: &FlowKey, tcp_bits: u8, flags: u8) -> Result<(), Counter> {
    let cfg = CONFIG.get(0).ok_or(Counter::PassUntracked)?;
    let opens = match inbound.proto {
        proto::IPPROTO_UDP => true,
        proto::IPPROTO_TCP => tcp_bits & (CT_TCP_SYN | CT_TCP_ACK | CT_TCP_RST) == CT_TCP_SYN,
        _ => false,
    };
    // Hairpinned packets come from inside: filtering keeps out what the internet sends
    // unasked, and a LAN host reaching another's mapping is what the NAT must allow (RFC 4787
    // REQ-9; RFC 5780's hairpinning test sends from a port the receiver never talked to).
    let filtered = flags & CT_FLAG_HAIRPIN == 0
        && cfg.nat_filtering != NatFiltering::EndpointIndependent as u8;
    if filtered || !opens {
        return Err(Counter::PassUntracked);
    }
    let public = PublicKey::new(inbound.dst_addr, inbound.dst_port, inbound.proto);
    // SAFETY: copied out at once.
    let owner = unsafe { NAT_BIND_IN.get(&public) }
        .copied()
        .ok_or(Counter::PassUntracked)?;
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(Counter::PassUntracked)?;
    let count = host_count(owner.lan_addr, owner.lan_id);
    admit_host(count, cfg)?;
    // SAFETY: this CPU's scratch; XDP programs do not preempt each other on one CPU.
    unsafe {
        (*scratch).inbound = *inbound;
        (*scratch).inbound_flags = flags;
        (*scratch).owner = owner;
        (*scratch).claim.sweep = cfg.sweep;
    }
    match pcc_accept_connection() {
        CLAIM_NEW => {
            count_event(CtEvent::OpenedInbound);
            Ok(())
        }
        CLAIM_LOST => {
            release_host(count);
            Ok(())
        }
        _ => {
            release_host(count);
            Err(Counter::DropConntrackFull)
        }
    }
}

/// Inserts both halves of the inbound connection `SCRATCH[0].inbound` to the endpoint of
/// `SCRATCH[0].owner`, with a reference to its binding and an expiry slot. A global
/// function, like the claim.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pcc_accept_connection() -> u32 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return CLAIM_FULL;
    };
    // SAFETY: this CPU's scratch; XDP programs do not preempt each other on one CPU.
    let scratch = unsafe { &mut *scratch };
    let (inbound, owner, now) = (&scratch.inbound, &scratch.owner, now_ns());
    let reply = &mut scratch.reply;
    reply.lan_addr = owner.lan_addr;
    reply.lan_port = owner.lan_port;
    reply.lan_id = owner.lan_id;
    reply.tcp_flags = 0;
    reply.lan_mac = owner.lan_mac;
    reply.wan_id = owner.wan_id;
    reply.last_seen_ns = now;
    reply.packets = 0;
    reply.bytes = 0;
    match CT_IN.insert(inbound, &*reply, NOEXIST) {
        Ok(()) => {}
        Err(e) if e as i32 == -EEXIST => return CLAIM_LOST,
        Err(_) => return CLAIM_FULL,
    }
    let key = inbound.original_key(owner.lan_addr, owner.lan_port);
    let Some(slot) = sweep::claim_slot(&key, scratch.claim.sweep.slot_mask) else {
        let _ = CT_IN.remove(inbound);
        return CLAIM_FULL;
    };
    let endpoint = BindKey {
        lan_addr: owner.lan_addr,
        lan_port: owner.lan_port,
        proto: inbound.proto,
        wan_id: owner.wan_id,
    };
    let mut flags = scratch.inbound_flags | CT_FLAG_INBOUND;
    let public = PublicKey::new(inbound.dst_addr, inbound.dst_port, inbound.proto);
    match NAT_BIND_IN.get_ptr_mut(&public) {
        // SAFETY: a live entry; the count is only changed atomically.
        Some(held) if holds(held, &endpoint) => unsafe { atomic_add(&raw mut (*held).refs, 1) },
        _ => flags |= CT_FLAG_UNBOUND,
    }
    let out = &mut scratch.out;
    out.expiry_slot = slot.index;
    out.expiry_token = slot.token;
    out.nat_addr = inbound.dst_addr;
    out.nat_port = inbound.dst_port;
    out.wan_id = owner.wan_id;
    out.tcp_flags = 0;
    out.lan_mac = owner.lan_mac;
    out.flags = flags;
    out.lan_wscale = 0;
    out.lan_ack = 0;
    out.lan_window = 0;
    out.created_ns = now;
    out.last_seen_ns = now;
    out.packets = 0;
    out.bytes = 0;
    match CT_OUT.insert(&key, &*out, NOEXIST) {
        Ok(()) => {
            slot.publish(false);
            remember(&key);
            CLAIM_NEW
        }
        Err(e) => {
            slot.abandon();
            let _ = CT_IN.remove(inbound);
            if flags & CT_FLAG_UNBOUND == 0 {
                unbind(&endpoint, inbound.dst_addr, inbound.dst_port);
            }
            if e as i32 == -EEXIST {
                CLAIM_LOST
            } else {
                CLAIM_FULL
            }
        }
    }
}

/// The NAT port of a new connection, with its reply entry inserted: the LAN endpoint's binding
/// on this WAN when it has one (RFC 4787 REQ-1, RFC 5382 REQ-1: the same public endpoint
/// whatever the remote one), else a new binding, on the host's own port when free (port
/// preservation) and else on a random one. Returns `CT_FLAG_UNBOUND` as the second value when
/// the connection holds no reference to a binding, or a `CLAIM_*` failure.
///
/// Every binding is its public endpoint's `NAT_BIND_IN` entry, which holds the references;
/// only a binding that could not keep the host's port is also in `NAT_BIND_OUT`, to be found
/// from the LAN endpoint. A preserved binding is found where it must be, on the host's own
/// port: a new endpoint costs one binding insert, not two.
#[inline(always)]
fn map_endpoint(scratch: &mut Scratch) -> Result<(u16, u8), u32> {
    let claim = &scratch.claim;
    let (key, nat_addr, wan_id, first) = (&claim.key, claim.nat_addr, claim.wan_id, &claim.first);
    let reply = &mut scratch.reply;
    reply.lan_addr = key.src_addr;
    reply.lan_port = key.src_port;
    reply.lan_id = first.lan_id;
    reply.tcp_flags = 0;
    reply.lan_mac = first.lan_mac;
    reply.wan_id = wan_id;
    reply.last_seen_ns = first.now;
    reply.packets = 0;
    reply.bytes = 0;
    scratch.endpoint = BindKey {
        lan_addr: key.src_addr,
        lan_port: key.src_port,
        proto: key.proto,
        wan_id,
    };
    let endpoint = &scratch.endpoint;
    // SAFETY: copied out at once.
    if let Some(bound) = unsafe { NAT_BIND_OUT.get(endpoint) }.copied() {
        scratch.public = PublicKey::new(bound.nat_addr, bound.nat_port, key.proto);
        if bound.nat_addr == nat_addr
            && let Some(held) = NAT_BIND_IN.get_ptr_mut(&scratch.public)
            && holds(held, endpoint)
        {
            return reuse(scratch, held, bound.nat_port);
        }
        // Bound to an address the WAN no longer has, or its public endpoint is gone.
        drop_binding(endpoint, bound.nat_addr, bound.nat_port);
    }
    let claim = &scratch.claim;
    let owner = &mut scratch.owner;
    owner.lan_addr = key.src_addr;
    owner.lan_port = key.src_port;
    owner.lan_id = first.lan_id;
    owner.wan_id = wan_id;
    owner.lan_mac = first.lan_mac;
    owner.refs = 1;
    let orig_port = u16::from_be(key.src_port);
    for attempt in 0..NAT_PORT_TRIES {
        // SAFETY: helper without arguments.
        let random = unsafe { bpf_get_prandom_u32() };
        let port = claim
            .nat_ports
            .candidate(orig_port, attempt, random)
            .to_be();
        scratch.public = PublicKey::new(nat_addr, port, key.proto);
        let public = &scratch.public;
        let preserved = port == key.src_port;
        match NAT_BIND_IN.insert(public, &*owner, NOEXIST) {
            Ok(()) => {}
            Err(e) if e as i32 == -EEXIST => {
                // The host's own port, held: by this very endpoint (its preserved binding),
                // or by another one.
                if preserved
                    && let Some(held) = NAT_BIND_IN.get_ptr_mut(public)
                    && holds(held, &scratch.endpoint)
                {
                    return reuse(scratch, held, port);
                }
                continue;
            }
            Err(_) => return Err(CLAIM_FULL),
        }
        scratch.reply_key = key.reply_key(nat_addr, port);
        match CT_IN.insert(&scratch.reply_key, &*reply, NOEXIST) {
            Ok(()) => {}
            Err(e) => {
                let _ = NAT_BIND_IN.remove(public);
                // A tuple the router itself uses towards this remote endpoint.
                if e as i32 == -EEXIST {
                    continue;
                }
                return Err(CLAIM_FULL);
            }
        }
        if preserved {
            return Ok((port, 0));
        }
        let binding = &mut scratch.binding;
        binding.nat_addr = nat_addr;
        binding.nat_port = port;
        return match NAT_BIND_OUT.insert(&scratch.endpoint, &*binding, NOEXIST) {
            Ok(()) => Ok((port, 0)),
            // Another CPU bound the endpoint at this very moment (or the binding table is
            // full): this connection keeps its port towards its remote end, unbound.
            Err(_) => {
                let _ = NAT_BIND_IN.remove(&scratch.public);
                Ok((port, CT_FLAG_UNBOUND))
            }
        };
    }
    Err(CLAIM_NO_PORT)
}

/// Whether the public endpoint whose `NAT_BIND_IN` entry is `held` belongs to `endpoint`.
#[inline(always)]
fn holds(held: *const Owner, endpoint: &BindKey) -> bool {
    // SAFETY: a live entry of our map; these fields never change.
    let (lan_addr, lan_port, wan_id) =
        unsafe { ((*held).lan_addr, (*held).lan_port, (*held).wan_id) };
    lan_addr == endpoint.lan_addr && lan_port == endpoint.lan_port && wan_id == endpoint.wan_id
}

/// A new connection on the endpoint's existing binding (`held`, on `port`): its reply entry,
/// and a reference.
#[inline(always)]
fn reuse(scratch: &mut Scratch, held: *mut Owner, port: u16) -> Result<(u16, u8), u32> {
    let claim = &scratch.claim;
    scratch.reply_key = claim.key.reply_key(claim.nat_addr, port);
    match CT_IN.insert(&scratch.reply_key, &scratch.reply, NOEXIST) {
        Ok(()) => {
            // SAFETY: a live entry; the count is only changed atomically.
            unsafe { atomic_add(&raw mut (*held).refs, 1) };
            Ok((port, 0))
        }
        // The router itself talks to this remote endpoint from the binding's port: another
        // port would be a second mapping for the endpoint (RFC 4787 REQ-1).
        Err(e) if e as i32 == -EEXIST => Err(CLAIM_NO_PORT),
        Err(_) => Err(CLAIM_FULL),
    }
}

/// Removes a binding: its public endpoint, if the endpoint still holds it, and its entry in
/// `NAT_BIND_OUT`.
#[inline(always)]
fn drop_binding(endpoint: &BindKey, nat_addr: u32, nat_port: u16) {
    let public = PublicKey::new(nat_addr, nat_port, endpoint.proto);
    if NAT_BIND_IN
        .get_ptr(&public)
        .is_some_and(|held| holds(held, endpoint))
    {
        let _ = NAT_BIND_IN.remove(&public);
    }
    let _ = NAT_BIND_OUT.remove(endpoint);
}

/// [`unbind`] for the connection `key` (LAN side) on `wan_id`.
#[inline(always)]
fn unbind_connection(key: &FlowKey, nat_addr: u32, nat_port: u16, wan_id: u8) {
    let endpoint = BindKey {
        lan_addr: key.src_addr,
        lan_port: key.src_port,
        proto: key.proto,
        wan_id,
    };
    unbind(&endpoint, nat_addr, nat_port);
}

/// Drops one connection's reference to its binding, the public endpoint `nat_addr:nat_port`;
/// the last one removes it. Two CPUs releasing and taking the last reference at the same
/// instant may remove a binding still in use: its connections keep working (their reply
/// entries hold their tuples), and the endpoint's next connection is bound afresh, most
/// likely to the same port.
#[inline(always)]
fn unbind(endpoint: &BindKey, nat_addr: u32, nat_port: u16) {
    let public = PublicKey::new(nat_addr, nat_port, endpoint.proto);
    let Some(held) = NAT_BIND_IN.get_ptr_mut(&public) else {
        return;
    };
    if !holds(held, endpoint) {
        return;
    }
    // SAFETY: a live entry of our map; the count is only changed atomically.
    let left = unsafe {
        atomic_add(&raw mut (*held).refs, u64::MAX);
        core::ptr::read_volatile(&raw const (*held).refs)
    };
    if left == 0 {
        let _ = NAT_BIND_IN.remove(&public);
        if nat_port != endpoint.lan_port {
            let _ = NAT_BIND_OUT.remove(endpoint);
        }
    }
}

/// Where a host of LAN `lan_id` is counted, if it is (`LanInfo::host_index`).
#[inline(always)]
fn host_count(lan_addr: u32, lan_id: u8) -> Option<*mut u64> {
    let index = LANS.get(u32::from(lan_id))?.host_index(lan_id, lan_addr)?;
    HOST_CONNECTIONS.get_ptr_mut(index)
}

/// Where a LAN host is counted, whichever LAN it is on (a connection does not record it).
#[inline(always)]
fn host_count_any(lan_addr: u32) -> Option<*mut u64> {
    for lan_id in 0..MAX_LANS as u8 {
        if let Some(count) = host_count(lan_addr, lan_id) {
            return Some(count);
        }
    }
    None
}

/// Counts a new connection against its host's limit. A host that is not counted (beyond the
/// first /16 of its LAN) is not held to it; the table's own limit still holds.
#[inline(always)]
fn admit_host(count: Option<*mut u64>, cfg: &Config) -> Result<(), Counter> {
    let Some(count) = count else {
        return Ok(());
    };
    // SAFETY: a live array element; only changed atomically. Two CPUs may both pass at the
    // limit: a host exceeds it by at most one connection per CPU.
    unsafe {
        if core::ptr::read_volatile(count) >= u64::from(cfg.max_connections_per_host) {
            return Err(Counter::DropHostConnectionLimit);
        }
        atomic_add(count, 1);
    }
    Ok(())
}

/// Gives a host's connection back.
#[inline(always)]
fn release_host(count: Option<*mut u64>) {
    if let Some(count) = count {
        // SAFETY: a live array element; only changed atomically.
        unsafe {
            if core::ptr::read_volatile(count) > 0 {
                atomic_add(count, u64::MAX);
            }
        }
    }
}

/// `*p += v` as one atomic instruction (BPF_XADD): the counts are shared by all CPUs. Callers
/// read the value again where they need it.
///
/// # Safety
/// `p` points into a live map value.
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: the caller's guarantee; map values are 8-byte aligned.
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// Connections each CPU opened last, oldest first from `next`: where early drop looks.
pub const RECENT_SLOTS: u32 = 512;
/// Connections early drop looks at before it gives up and the new one is refused: enough to
/// get past a run of answered ones (two lookups each, only while the table is full).
const EARLY_DROP_TRIES: u32 = 64;

#[repr(C)]
pub struct Recent {
    /// Where the next opened connection goes.
    next: u32,
    /// Where early drop looks next.
    sweep: u32,
    keys: [FlowKey; RECENT_SLOTS as usize],
}

#[inline(always)]
fn remember(key: &FlowKey) {
    let Some(recent) = RECENT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; XDP programs do not preempt each other on one CPU.
    unsafe {
        let i = (*recent).next & (RECENT_SLOTS - 1);
        if let Some(slot) = (*recent).keys.get_mut(i as usize) {
            *slot = *key;
        }
        (*recent).next = (*recent).next.wrapping_add(1);
    }
}

/// Makes room in a full table the way nf_conntrack's `early_drop` does: a connection that
/// never got a reply goes, oldest first among those this CPU opened lately. An answered
/// connection is never dropped for a new one. Returns 1 if it made room. A global function,
/// like the claim.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pcc_early_drop() -> u32 {
    u32::from(early_drop())
}

#[inline(always)]
fn early_drop() -> bool {
    let Some(recent) = RECENT.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; XDP programs do not preempt each other on one CPU.
    let recent = unsafe { &mut *recent };
    if recent.next.wrapping_sub(recent.sweep) > RECENT_SLOTS {
        recent.sweep = recent.next.wrapping_sub(RECENT_SLOTS);
    }
    for _ in 0..EARLY_DROP_TRIES {
        if recent.sweep == recent.next {
            return false;
        }
        let i = recent.sweep & (RECENT_SLOTS - 1);
        recent.sweep = recent.sweep.wrapping_add(1);
        let Some(key) = recent.keys.get(i as usize).copied() else {
            return false;
        };
        // SAFETY: copied out at once.
        let Some(out) = (unsafe { CT_OUT.get(&key) }).copied() else {
            continue;
        };
        // SAFETY: copied out at once.
        let replied = if out.flags & CT_FLAG_INBOUND == 0 {
            unsafe { CT_IN.get(&key.reply_key(out.nat_addr, out.nat_port)) }
                .is_some_and(|reply| reply.packets > 0)
        } else {
            // Opened from outside: answered once the LAN host sent.
            out.packets > 0
        };
        if !replied {
            forget(&key, &out);
            count_event(CtEvent::EarlyDropped);
            return true;
        }
    }
    false
}

#[inline(always)]
pub fn count_event(event: CtEvent) {
    if let Some(c) = CT_EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}
