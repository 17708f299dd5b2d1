//! The routing table decides what is balanced. `ROUTES` mirrors the kernel's main table
//! without the default routes through WANs, so a destination that matches nothing is balanced;
//! one routed more specifically through a WAN is pinned to it with the route's next hop; any
//! other is the kernel's. Looked up once per new connection; on the established path only by
//! connections a route pinned (`CT_FLAG_ROUTED`), so balanced ones pay one flag test.
//!
//! Why a mirror and not `bpf_fib_lookup`: see `pcc_common::route`.
use aya_ebpf::maps::lpm_trie::Key;
use pcc_common::{
    CT_FLAG_ROUTED, Config, Counter, CtOut, FlowKey, WanInfo, failover,
    route::{NeighbourKey, ROUTE_WAN_GATEWAY, Route},
};

use crate::{NEIGHBOURS, NEIGHBOURS_WANTED, ROUTES, WANS, conntrack, select};

/// Where a connection leaves: its WAN and the MAC of its next hop.
pub type Exit = (&'static WanInfo, &'static [u8; 6]);

/// The kernel's route for `dst`, unless it is a default route through a WAN.
#[inline(always)]
fn lookup(dst: u32) -> Option<&'static Route> {
    ROUTES.get(Key::new(32, dst))
}

/// The WAN of a new connection, its next hop and its `CT_FLAG_*`: balanced by the slot table
/// when no route more specific than a WAN's default matches; pinned to the WAN of a route
/// that does; the kernel's when that route goes elsewhere.
#[inline(always)]
pub fn choose(key: &FlowKey, cfg: &Config) -> Result<(u8, Exit, u8), Counter> {
    match lookup(key.dst_addr) {
        None => {
            let (wan_id, wan) = select::wan_for(key, cfg)?;
            Ok((wan_id, (wan, &wan.gateway_mac), 0))
        }
        Some(route) if route.through_wan() => {
            Ok((route.wan_id, pinned(route, key.dst_addr)?, CT_FLAG_ROUTED))
        }
        Some(_) => Err(Counter::PassKernelRoute),
    }
}

/// The WAN and next hop of a known connection, or `None` when it must start afresh: a
/// balanced one while its WAN is up (exactly the work it did before routes were consulted),
/// or while it is down if it is TCP the host has acknowledged something on (see
/// `failover::stays_on_down_wan`; the controller resets it after `--failover-grace`); a routed
/// one while the route for its destination still pins it to the same WAN. `proto` is the
/// connection's.
#[inline(always)]
pub fn established(entry: &CtOut, dst: u32, proto: u8) -> Result<Option<Exit>, Counter> {
    if entry.flags & CT_FLAG_ROUTED == 0 {
        let Some(wan) = WANS.get(u32::from(entry.wan_id)) else {
            return Ok(None);
        };
        if wan.is_up() {
            return Ok(Some((wan, &wan.gateway_mac)));
        }
        if wan.ifindex == 0 || !failover::stays_on_down_wan(proto, entry.tcp_flags) {
            return Ok(None);
        }
        // A link down too has no gateway MAC: the host retransmits until it is back.
        if wan.gateway_mac == [0; 6] {
            return Err(Counter::DropWanLinkDown);
        }
        return Ok(Some((wan, &wan.gateway_mac)));
    }
    match lookup(dst) {
        Some(route) if route.through_wan() && route.wan_id == entry.wan_id => {
            pinned(route, dst).map(Some)
        }
        // The route went away or now leads elsewhere.
        _ => Ok(None),
    }
}

/// The WAN a route pins to and the MAC of its next hop. The WAN need not be up: health is
/// about the internet beyond the gateway, and a line whose internet is dead must still reach
/// its modem's web page; it must only still exist.
#[inline(always)]
fn pinned(route: &Route, dst: u32) -> Result<Exit, Counter> {
    let wan = WANS
        .get(u32::from(route.wan_id))
        .filter(|w| w.ifindex != 0)
        .ok_or(Counter::PassKernelRoute)?;
    if route.kind == ROUTE_WAN_GATEWAY {
        if wan.gateway_mac == [0; 6] {
            return Err(Counter::PassNoNeighbour);
        }
        return Ok((wan, &wan.gateway_mac));
    }
    let key = NeighbourKey::new(route.wan_id, route.next_hop(dst));
    // SAFETY: the value is only read; the controller replaces entries whole.
    match unsafe { NEIGHBOURS.get(key) } {
        Some(n) => Ok((wan, &n.mac)),
        None => {
            // The kernel gets this packet (and with forwarding off drops it); the host's
            // retransmission finds the MAC once the controller has resolved it.
            let _ = NEIGHBOURS_WANTED.insert(key, conntrack::now_ns(), 0);
            Err(Counter::PassNoNeighbour)
        }
    }
}
