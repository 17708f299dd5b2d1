//! Conntrack garbage collection: expired connections and broken halves are removed, which
//! returns their NAT ports.
use anyhow::Result;
use pcc_common::{CtOut, FlowKey, MAX_WANS, conntrack::Timeouts};

use crate::maps::Maps;

/// Grace before a reply entry without its forward twin counts as orphaned: the dataplane
/// inserts the reply half first, so a fresh connection is briefly in that state.
const ORPHAN_GRACE_NS: u64 = 2_000_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Live connections after this pass.
    pub active: usize,
    pub active_per_wan: [usize; MAX_WANS],
    /// Distinct NAT ports in use per WAN (a port serves one connection per remote endpoint).
    pub nat_ports_per_wan: [usize; MAX_WANS],
    pub expired: usize,
    pub orphans: usize,
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

/// Forgets one connection, both halves, reply half first as the dataplane's `close` does (a
/// reply arriving in between finds no entry, rather than an entry whose forward twin is gone).
/// Every removal of a connection by the controller goes through here.
pub fn forget_connection(maps: &mut Maps, key: &FlowKey, out: &CtOut) {
    let _ = maps
        .ct_in
        .remove(&key.reply_key(out.nat_addr, out.nat_port));
    let _ = maps.ct_out.remove(key);
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

/// One pass over the forward table (and, with `scan_orphans`, the reply table). Keys are
/// collected first and deleted afterwards: deleting while walking a BPF hash with
/// `get_next_key` can restart the walk.
pub fn collect(
    maps: &mut Maps,
    timeouts: &Timeouts,
    now_ns: u64,
    scan_orphans: bool,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    let mut expired: Vec<(FlowKey, CtOut)> = Vec::new();
    let mut dead_out: Vec<FlowKey> = Vec::new();
    let mut dead_in: Vec<FlowKey> = Vec::new();
    let mut ports = std::collections::HashSet::new();
    for item in maps.ct_out.iter() {
        let Ok((key, out)) = item else { continue };
        let reply_key = key.reply_key(out.nat_addr, out.nat_port);
        match maps.ct_in.get(&reply_key, 0) {
            Ok(reply) if !timeouts.expired(key.proto, &out, &reply, now_ns) => {
                report.active += 1;
                if let Some(n) = report.active_per_wan.get_mut(out.wan_id as usize) {
                    *n += 1;
                    if ports.insert((out.wan_id, out.nat_port)) {
                        report.nat_ports_per_wan[out.wan_id as usize] += 1;
                    }
                }
            }
            Ok(_) => {
                report.expired += 1;
                expired.push((key, out));
            }
            Err(_) => {
                report.orphans += 1;
                dead_out.push(key);
            }
        }
    }
    for item in maps.ct_in.iter().take_while(|_| scan_orphans) {
        let Ok((key, reply)) = item else { continue };
        let original = key.original_key(reply.lan_addr, reply.lan_port);
        if maps.ct_out.get(&original, 0).is_err()
            && now_ns.saturating_sub(reply.last_seen_ns) > ORPHAN_GRACE_NS
        {
            report.orphans += 1;
            dead_in.push(key);
        }
    }
    for (key, out) in &expired {
        forget_connection(maps, key, out);
    }
    // Orphans: the half that is left.
    for key in &dead_out {
        let _ = maps.ct_out.remove(key);
    }
    for key in &dead_in {
        let _ = maps.ct_in.remove(key);
    }
    Ok(report)
}
