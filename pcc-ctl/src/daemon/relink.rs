//! A WAN whose interface went away and came back (a USB modem replugged, a PPPoE session
//! re-established, DHCP handing out a new address or gateway) is followed without a restart:
//! the program is attached to the new interface and its redirect entry points at it, the
//! gateway is learned again from the new default route, and connections translated to an
//! address the WAN no longer has are forgotten, so their hosts start afresh.
//!
//! A LAN interface re-created under the same name (a bridge restarted, a NIC replugged) is
//! followed the same way: the program is attached to the new interface, its redirect entry and
//! `LANS` entry (ifindex, MAC, MTU, address) are rewritten, and the router announces its
//! address with gratuitous ARP, so hosts that cached the old interface's MAC move at once
//! instead of after their ARP entries time out (tens of seconds).
use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _},
};

use anyhow::Context as _;
use pcc_common::{LAN_DEVMAP_BASE, LanInfo};

use crate::{
    balance::{health::WanHealth, wan::WanView},
    config::{Config, XdpMode},
    kernel::{
        conntrack,
        dataplane::{Attached, Dataplane, Role},
        maps::Maps,
        netlink::{Ipv4Net, Link, LinkError, Netlink},
        offload::{Offload, Offloads},
        peer,
        pin::Pins,
    },
    shared::Shared,
    sync::lock,
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
    ports: &mut Ports<'_>,
    config: &Config,
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
            if let Err(e) = reattach(nl, shared, ports, config, wan).await {
                log::warn!("WAN {}: {e:#}", wan.name);
            }
        }
        let readdressed = was.addr != 0 && wan.info.addr != was.addr;
        let unresolved = !wan.link_ok && wan.info.addr != 0;
        if (readdressed || unresolved) && ifindex == was.ifindex && ifindex != 0 {
            // A DHCP renewal may bring a new gateway with the new address, and its default
            // route may come a moment after the address: look again while unresolved.
            match relearn_gateway(nl, shared, config, wan).await {
                Ok(true) => restart.push(i),
                Ok(false) => {}
                Err(e) => log::warn!("WAN {}: {e:#}", wan.name),
            }
        }
        if readdressed {
            let old = Ipv4Addr::from(was.addr.to_ne_bytes());
            let maps = &mut lock(&shared.maps);
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
    ports: &mut Ports<'_>,
    config: &Config,
    wan: &mut WanView,
) -> anyhow::Result<()> {
    let ifindex = wan.info.ifindex;
    ports.attach(Role::Wan, &wan.name, ifindex, config.xdp_mode)?;
    peer::warn_partial_checksums(nl, &wan.name, ifindex).await;
    lock(&shared.maps)
        .devmap
        .set(u32::from(wan.wan_id), ifindex, None, 0)?;
    relearn_gateway(nl, shared, config, wan).await?;
    nl.add_managed_neighbour(ifindex, wan.gateway).await
}

/// Takes the gateway of the WAN's default route again (unless `--gateway` gave it); a new one
/// becomes the probe target if the gateway was, and gets its ARP entry kept resolved.
/// Returns whether it changed.
async fn relearn_gateway(
    nl: &Netlink,
    shared: &Shared,
    config: &Config,
    wan: &mut WanView,
) -> anyhow::Result<bool> {
    let wan_config = &config.wans[usize::from(wan.wan_id)];
    if wan_config.gateway.is_some() {
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
    if wan_config.probe_targets.is_none() {
        lock(&shared.health)[wan.wan_id as usize] =
            WanHealth::new(&[gateway], config.probe_quorum, config.probe);
    }
    nl.add_managed_neighbour(ifindex, gateway).await?;
    Ok(true)
}

/// Gratuitous ARPs sent for a new LAN interface, one a second (like `arping -U -c 3`): one
/// could be lost while the switch learns the new port.
const ANNOUNCEMENTS: u8 = 3;

/// One LAN port as the controller tracks it.
#[derive(Clone, Debug)]
pub struct LanView {
    pub name: String,
    pub lan_id: u32,
    pub info: LanInfo,
    pub net: Ipv4Net,
    /// Gratuitous ARPs still to send once the link is up with an address.
    announce: u8,
    /// Missing at the last look (logged once).
    gone: bool,
}

impl LanView {
    pub fn new(lan_id: u32, link: &Link, net: Ipv4Net) -> Self {
        let mut lan = Self {
            name: link.name.clone(),
            lan_id,
            info: LanInfo::default(),
            net,
            announce: 0,
            gone: false,
        };
        lan.learn(link, Some(net));
        lan
    }

    /// Takes the link's ifindex, MAC and MTU, and the address if it has one (a re-created
    /// interface may get it a moment later: until then the old one stands).
    fn learn(&mut self, link: &Link, net: Option<Ipv4Net>) {
        if let Some(net) = net {
            self.net = net;
        }
        self.info = LanInfo {
            ifindex: link.ifindex,
            addr: u32::from_ne_bytes(self.net.addr.octets()),
            netmask: u32::from_ne_bytes(self.net.netmask().octets()),
            mac: link.mac,
            mtu: link.mtu.min(u32::from(u16::MAX)) as u16,
        };
    }
}

/// Writes a LAN's `LANS` entry and its redirect slot.
pub fn write_lan(maps: &mut Maps, lan: &LanView) -> anyhow::Result<()> {
    maps.lans
        .set(lan.lan_id, lan.info, 0)
        .context("cannot write LANS")?;
    maps.devmap
        .set(LAN_DEVMAP_BASE + lan.lan_id, lan.info.ifindex, None, 0)
        .context("cannot write DEVMAP")
}

/// What attaching to a new interface takes: the programs, their pins, the offloads turned off.
pub struct Ports<'a> {
    pub dataplane: &'a mut Dataplane,
    pub pins: &'a Pins,
    pub offloads: &'a mut Offloads,
}

impl Ports<'_> {
    /// Turns off the offloads that would hide frames from the program (see `offload`), then
    /// attaches `role`'s program to the interface through its pinned link, and on a WAN the
    /// TC egress hook that records the router's own connections.
    pub fn attach(
        &mut self,
        role: Role,
        name: &str,
        ifindex: u32,
        mode: XdpMode,
    ) -> anyhow::Result<Attached> {
        self.offloads.turn_off(name, ifindex, Offload::RxVlan)?;
        if role == Role::Wan {
            self.dataplane
                .attach_egress_pinned(name, &self.pins.egress_link_path(name))?;
        }
        self.dataplane
            .attach_pinned(role, name, mode, &self.pins.link_path(name))
    }
}

/// Re-reads each LAN port and follows what changed; returns the LANs whose subnet changed (the
/// forwarding guard names the subnets).
pub async fn follow_lans(
    nl: &Netlink,
    shared: &Shared,
    ports: &mut Ports<'_>,
    config: &Config,
    lans: &mut [LanView],
) -> Vec<usize> {
    let mut renumbered = Vec::new();
    for (i, lan) in lans.iter_mut().enumerate() {
        let link = match nl.link(&lan.name).await {
            Ok(link) => link,
            Err(LinkError::Unknown(_)) => {
                if !lan.gone {
                    log::warn!(
                        "LAN {} is gone: its hosts are cut off until it comes back",
                        lan.name
                    );
                    lan.gone = true;
                }
                continue;
            }
            // Not a sign that the LAN went: look again at the next refresh.
            Err(e) => {
                log::warn!("LAN {}: {:#}", lan.name, anyhow::Error::from(e));
                continue;
            }
        };
        lan.gone = false;
        let net = nl.ipv4_addr(link.ifindex).await.ok().flatten();
        let before = lan.info;
        let old_net = lan.net;
        lan.learn(&link, net);
        if lan.info.ifindex != before.ifindex {
            log::info!(
                "LAN {} is a new interface (ifindex {}): attaching to it",
                lan.name,
                lan.info.ifindex
            );
            if let Err(e) = ports.attach(Role::Lan, &lan.name, lan.info.ifindex, config.xdp_mode) {
                log::warn!("LAN {}: {e:#}", lan.name);
            }
            peer::warn_partial_checksums(nl, &lan.name, lan.info.ifindex).await;
        }
        if lan.info != before {
            if lan.info.mac != before.mac {
                lan.announce = ANNOUNCEMENTS;
            }
            let maps = &mut lock(&shared.maps);
            if let Err(e) = write_lan(maps, lan) {
                log::warn!("LAN {}: {e:#}", lan.name);
            }
        }
        if lan.net != old_net {
            log::info!(
                "LAN {} is now {}/{} (was {}/{})",
                lan.name,
                lan.net.addr,
                lan.net.prefix,
                old_net.addr,
                old_net.prefix
            );
            renumbered.push(i);
        }
        if lan.announce > 0 && link.oper_up && net.is_some() {
            lan.announce -= 1;
            if let Err(e) = announce(lan) {
                log::warn!("LAN {}: {e:#}", lan.name);
            }
        }
    }
    renumbered
}

/// Sends one gratuitous ARP request for the LAN address from the LAN's MAC (RFC 5227 2.4
/// "announcement"): Linux, Windows and macOS hosts update an entry they have for the address.
fn announce(lan: &LanView) -> anyhow::Result<()> {
    const ETH_P_ARP: u16 = 0x0806;
    let mac = lan.info.mac;
    let ip = lan.net.addr.octets();
    let mut arp = Vec::with_capacity(28);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&ip);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&ip);
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .context("cannot open a packet socket for gratuitous ARP");
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set make it the broadcast address on
    // the LAN interface.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = lan.info.ifindex as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    // SAFETY: arp and sll are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            arp.as_ptr().cast(),
            arp.len(),
            0,
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot send a gratuitous ARP");
    }
    Ok(())
}
