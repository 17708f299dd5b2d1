//! The controller's view of the conntrack table. Connections expire in the dataplane, each by
//! its own timer, so a dead controller never wedges the table and nothing here races a packet
//! refreshing a connection: the controller counts what is there, removes halves that can
//! never be used again, and forgets connections only where it alone knows they are dead (a
//! WAN that lost its address, a WAN down past the failover grace).
use anyhow::Result;
use pcc_common::{
    BindKey, CT_FLAG_UNBOUND, CtOut, FlowKey, LAN_ROUTER, MAX_WANS, PublicKey, conntrack::Timeouts,
};

use crate::kernel::maps::Maps;

/// Grace before a reply entry without its forward twin counts as orphaned: the dataplane
/// inserts the reply half first, so a fresh connection is briefly in that state.
const ORPHAN_GRACE_NS: u64 = 2_000_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Live connections.
    pub active: usize,
    pub active_per_wan: [usize; MAX_WANS],
    /// Distinct NAT ports in use per WAN (a port serves one LAN endpoint, towards any number
    /// of remote endpoints).
    pub nat_ports_per_wan: [usize; MAX_WANS],
    /// Connections past their idle timeout that the dataplane's sweep has not removed yet
    /// (it passes every slot within `Sweep::pass_ns`: 2 s up to 131 072 connections).
    pub overdue: usize,
    /// Reply halves without a forward half, removed.
    pub orphans: usize,
    /// Endpoint-independent mappings in use.
    pub bindings: usize,
}

/// `CLOCK_MONOTONIC` in ns: the clock `bpf_ktime_get_coarse_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How often (in passes) the reply table is walked for orphans too. Orphans only come from
/// a failure between the two inserts or a half deleted under a packet, so they are rare,
/// and walking `CT_IN` doubles the cost of a pass (every entry costs syscalls).
pub const ORPHAN_SCAN_EVERY: u64 = 8;

/// Forgets one connection from the controller (every removal by the controller goes through
/// here), as the dataplane's `forget` does: both
/// halves, its host's count and its binding's reference. The counts are read, changed and
/// written back (user space has no atomic add on a map value), so a packet of the same host
/// opening a connection at that very moment may be miscounted by one; the controller only
/// forgets connections in rare events.
pub fn forget_connection(maps: &mut Maps, key: &FlowKey, out: &CtOut) {
    let _ = maps
        .ct_in
        .remove(&key.reply_key(out.nat_addr, out.nat_port));
    if maps.ct_out.remove(key).is_err() {
        return;
    }
    if let Some(i) = maps.host_index(key.src_addr)
        && let Ok(n) = maps.host_connections.get(&i, 0)
    {
        let _ = maps.host_connections.set(i, n.saturating_sub(1), 0);
    }
    if out.flags & CT_FLAG_UNBOUND != 0 {
        return;
    }
    let endpoint = BindKey {
        lan_addr: key.src_addr,
        lan_port: key.src_port,
        proto: key.proto,
        wan_id: out.wan_id,
    };
    // The binding is its public endpoint's entry, which holds the references (see
    // `map_endpoint` in pcc-ebpf); one that could not keep the host's port is also found
    // from the endpoint.
    let public = PublicKey {
        nat_addr: out.nat_addr,
        nat_port: out.nat_port,
        proto: key.proto,
        _pad: 0,
    };
    let Ok(mut owner) = maps.bind_in.get(&public, 0) else {
        return;
    };
    if (owner.lan_addr, owner.lan_port, owner.wan_id) != (key.src_addr, key.src_port, out.wan_id) {
        return;
    }
    owner.refs = owner.refs.saturating_sub(1);
    if owner.refs == 0 {
        let _ = maps.bind_in.remove(&public);
        if out.nat_port != key.src_port {
            let _ = maps.bind_out.remove(&endpoint);
        }
    } else {
        let _ = maps.bind_in.insert(public, owner, 0);
    }
}

/// Forgets every connection translated to `nat_addr` (network byte order) on `wan_id`: the
/// WAN lost that address, so their replies can never come back. The hosts' next packets
/// open new connections from the current address (TCP peers then reset the old streams).
/// Returns how many went.
pub fn flush_address(maps: &mut Maps, wan_id: u8, nat_addr: u32) -> usize {
    let gone: Vec<(FlowKey, CtOut)> = maps
        .ct_out
        .iter()
        .flatten()
        .filter(|(_, out)| out.wan_id == wan_id && out.nat_addr == nat_addr)
        .collect();
    for (key, out) in &gone {
        forget_connection(maps, key, out);
    }
    gone.len()
}

/// One pass over the forward table (and, with `scan_orphans`, the reply table): counts what
/// is live and removes orphaned reply halves. Keys are collected first and deleted
/// afterwards: deleting while walking a BPF hash with `get_next_key` can restart the walk.
pub fn collect(
    maps: &mut Maps,
    timeouts: &Timeouts,
    now_ns: u64,
    scan_orphans: bool,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    let mut ports = std::collections::HashSet::new();
    for item in maps.ct_out.iter() {
        let Ok((key, out)) = item else { continue };
        let reply_key = key.reply_key(out.nat_addr, out.nat_port);
        let Ok(reply) = maps.ct_in.get(&reply_key, 0) else {
            continue;
        };
        if timeouts.expired(key.proto, &out, &reply, now_ns) {
            report.overdue += 1;
            continue;
        }
        report.active += 1;
        if let Some(n) = report.active_per_wan.get_mut(out.wan_id as usize) {
            *n += 1;
            if ports.insert((out.wan_id, out.nat_port)) {
                report.nat_ports_per_wan[out.wan_id as usize] += 1;
            }
        }
    }
    report.bindings = maps.bind_in.keys().count();
    let mut dead_in: Vec<FlowKey> = Vec::new();
    for item in maps.ct_in.iter().take_while(|_| scan_orphans) {
        let Ok((key, reply)) = item else { continue };
        // The router's own tuple (TC egress hook) has no forward twin: the dataplane's sweep
        // removes it when idle.
        if reply.lan_id == LAN_ROUTER {
            continue;
        }
        let original = key.original_key(reply.lan_addr, reply.lan_port);
        if maps.ct_out.get(&original, 0).is_err()
            && now_ns.saturating_sub(reply.last_seen_ns) > ORPHAN_GRACE_NS
        {
            report.orphans += 1;
            dead_in.push(key);
        }
    }
    for key in &dead_in {
        let _ = maps.ct_in.remove(key);
    }
    Ok(report)
}
