//! What the daemon re-reads every second: each WAN's link (carrier, address, MACs, MTU, the
//! gateway's MAC) and its throughput.
use std::net::Ipv4Addr;

use crate::{balance::wan::WanView, kernel::netlink::Netlink, shared::Shared, sync::lock};

pub(super) fn ip_be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

pub(super) fn mtu16(mtu: u32) -> u16 {
    mtu.min(u32::from(u16::MAX)) as u16
}

/// Bits per second per WAN since the previous sample, from the dataplane's counters.
pub(super) fn sample_rates(
    shared: &Shared,
    wans: &[WanView],
    last: &mut [(u64, u64)],
    at: &mut tokio::time::Instant,
) {
    let now = tokio::time::Instant::now();
    let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
    *at = now;
    let maps = lock(&shared.maps);
    let mut rates = lock(&shared.rates);
    for wan in wans {
        let id = wan.wan_id as usize;
        let Ok(c) = maps.wan_counters(wan.wan_id) else {
            continue;
        };
        let (rx, tx) = last[id];
        rates[id] = (
            (c.rx_bytes.saturating_sub(rx)) as f64 * 8.0 / secs,
            (c.tx_bytes.saturating_sub(tx)) as f64 * 8.0 / secs,
        );
        last[id] = (c.rx_bytes, c.tx_bytes);
    }
}

/// Re-reads each WAN's link: carrier, address, MAC, MTU and gateway MAC. Returns whether
/// anything the dataplane sees changed.
pub(super) async fn refresh_links(nl: &Netlink, wans: &mut [WanView]) -> bool {
    let mut changed = false;
    for wan in wans.iter_mut() {
        let link = nl.link(&wan.name).await.ok();
        let (mut addr, mut resolved) = (None, None);
        if let Some(l) = &link {
            addr = nl.ipv4_addr(l.ifindex).await.ok().flatten();
            resolved = nl
                .neighbour_mac(l.ifindex, wan.gateway)
                .await
                .ok()
                .flatten();
        }
        // An entry being resolved again (or failed once: on a line losing 20 % both ways, all
        // six ARP probes of a re-verification fail ~0.2 % of the time) is no proof that the
        // gateway is gone: keep the MAC this interface had and let the probes decide, as they
        // see a dead gateway within 0.6 s. Only while the link stayed up, though: after a
        // carrier loss (a modem swapped) or a lost address the gateway is resolved afresh.
        let known = link
            .as_ref()
            .is_some_and(|l| l.ifindex == wan.info.ifindex && l.oper_up)
            && wan.link_ok
            && addr.is_some()
            && wan.info.gateway_mac != [0; 6];
        let mac = resolved.or(known.then_some(wan.info.gateway_mac));
        let mut info = wan.info;
        info.gateway_mac = mac.unwrap_or([0; 6]);
        if let Some(l) = &link {
            // A new ifindex: the interface was deleted and created again.
            info.ifindex = l.ifindex;
            info.mac = l.mac;
            info.mtu = mtu16(l.mtu);
        }
        if let Some(a) = addr {
            info.addr = ip_be(a.addr);
        }
        wan.link_ok = link.as_ref().is_some_and(|l| l.oper_up) && addr.is_some() && mac.is_some();
        if let Some(l) = &link
            && l.oper_up
            && addr.is_some()
            && resolved.is_none()
        {
            // An address removed and added again flushes the gateway's entry with its
            // "managed" flag: ask for it again, or nothing resolves the gateway.
            let _ = nl.add_managed_neighbour(l.ifindex, wan.gateway).await;
        }
        if info != wan.info {
            changed = true;
            wan.info = info;
        }
    }
    changed
}
