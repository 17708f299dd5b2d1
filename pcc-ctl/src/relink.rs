//! A WAN whose interface went away and came back (a USB modem replugged, a PPPoE session
//! re-established, DHCP handing out a new address or gateway) is followed without a restart:
//! the program is attached to the new interface and its redirect entry points at it, the
//! gateway is learned again from the new default route, and connections translated to an
//! address the WAN no longer has are forgotten, so their hosts start afresh.
use std::net::Ipv4Addr;

use crate::{
    cli::UpArgs,
    conntrack,
    dataplane::{Dataplane, Role},
    health::WanHealth,
    netlink::Netlink,
    pin::Pins,
    up::Shared,
    wan::WanView,
};

/// What a WAN looked like before a link refresh.
#[derive(Clone, Copy)]
pub struct Before {
    pub ifindex: u32,
    pub addr: u32,
}

pub fn snapshot(wans: &[WanView]) -> Vec<Before> {
    wans.iter()
        .map(|w| Before {
            ifindex: w.info.ifindex,
            addr: w.info.addr,
        })
        .collect()
}

/// Acts on what changed since `before`; returns the WANs (by index) whose probers must start
/// afresh: new interfaces (a raw socket stays bound to the interface that went) and new
/// gateways.
pub async fn follow(
    nl: &Netlink,
    shared: &Shared,
    dataplane: &mut Dataplane,
    pins: &Pins,
    args: &UpArgs,
    before: &[Before],
    wans: &mut [WanView],
) -> Vec<usize> {
    let mut restart = Vec::new();
    for (i, (wan, was)) in wans.iter_mut().zip(before).enumerate() {
        let ifindex = wan.info.ifindex;
        if ifindex != was.ifindex && ifindex != 0 {
            restart.push(i);
            log::info!(
                "WAN {} is a new interface (ifindex {ifindex}): attaching to it",
                wan.name
            );
            if let Err(e) = reattach(nl, shared, dataplane, pins, args, wan).await {
                log::warn!("WAN {}: {e:#}", wan.name);
            }
        }
        let readdressed = was.addr != 0 && wan.info.addr != was.addr;
        let unresolved = !wan.link_ok && wan.info.addr != 0;
        if (readdressed || unresolved) && ifindex == was.ifindex && ifindex != 0 {
            // A DHCP renewal may bring a new gateway with the new address, and its default
            // route may come a moment after the address: look again while unresolved.
            match relearn_gateway(nl, shared, args, wan).await {
                Ok(true) => restart.push(i),
                Ok(false) => {}
                Err(e) => log::warn!("WAN {}: {e:#}", wan.name),
            }
        }
        if readdressed {
            let old = Ipv4Addr::from(was.addr.to_ne_bytes());
            let maps = &mut shared.maps.lock().expect("maps lock poisoned");
            let n = conntrack::flush_address(maps, wan.wan_id, was.addr);
            log::info!(
                "WAN {} moved from {old} to {}: {n} connections through the old address ended",
                wan.name,
                Ipv4Addr::from(wan.info.addr.to_ne_bytes())
            );
        }
    }
    restart
}

async fn reattach(
    nl: &Netlink,
    shared: &Shared,
    dataplane: &mut Dataplane,
    pins: &Pins,
    args: &UpArgs,
    wan: &mut WanView,
) -> anyhow::Result<()> {
    let ifindex = wan.info.ifindex;
    dataplane.attach_pinned(
        Role::Wan,
        &wan.name,
        args.xdp_mode,
        &pins.link_path(&wan.name),
    )?;
    shared.maps.lock().expect("maps lock poisoned").devmap.set(
        u32::from(wan.wan_id),
        ifindex,
        None,
        0,
    )?;
    relearn_gateway(nl, shared, args, wan).await?;
    nl.add_managed_neighbour(ifindex, wan.gateway).await
}

/// Takes the gateway of the WAN's default route again (unless `--gateway` gave it); a new one
/// becomes the probe target if the gateway was, and gets its ARP entry kept resolved.
/// Returns whether it changed.
async fn relearn_gateway(
    nl: &Netlink,
    shared: &Shared,
    args: &UpArgs,
    wan: &mut WanView,
) -> anyhow::Result<bool> {
    if args.gateway.iter().any(|(n, _)| *n == wan.name) {
        return Ok(false);
    }
    let ifindex = wan.info.ifindex;
    let Ok(Some(gateway)) = nl.default_gateway(ifindex).await else {
        return Ok(false);
    };
    if gateway == wan.gateway {
        return Ok(false);
    }
    log::info!("WAN {}: gateway {} -> {gateway}", wan.name, wan.gateway);
    wan.gateway = gateway;
    // The old gateway's MAC must not stand in for the new one's until it resolves.
    wan.info.gateway_mac = [0; 6];
    if !args.health.probe.iter().any(|(n, _)| *n == wan.name) {
        let params = args.health.params();
        shared.health.lock().expect("health lock poisoned")[wan.wan_id as usize] =
            WanHealth::new(&[gateway], args.health.probe_quorum as usize, params);
    }
    nl.add_managed_neighbour(ifindex, gateway).await?;
    Ok(true)
}
