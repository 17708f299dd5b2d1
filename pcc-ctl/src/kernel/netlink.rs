//! What the kernel knows about our ports: links, addresses, default routes, neighbours.
//!
//! Uses `rtnetlink` (rust-netlink): a maintained, async (tokio) rtnetlink client with typed
//! messages, instead of parsing `ip` output or hand-rolling netlink attributes.
//!
//! Over 500 lines because it is every request the controller makes of rtnetlink, one method
//! each, behind the one handle: links, addresses, routes, neighbours, events.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context as _, Result, anyhow};
use futures::TryStreamExt as _;
use pcc_common::route::{KernelRoute, Via};
use rtnetlink::{
    Handle, RouteMessageBuilder,
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH},
    packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        address::AddressAttribute,
        link::{InfoKind, LinkAttribute, LinkInfo, State},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourState},
        nsid::{NsidAttribute, NsidMessage},
        route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType},
    },
    sys::{AsyncSocket as _, SocketAddr},
};

/// One network interface as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Operational state up (carrier present).
    pub oper_up: bool,
}

/// An IPv4 address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0),
        )
    }
}

#[derive(Clone)]
/// Why `Netlink::link` found no interface: callers tell "it is gone" (a modem unplugged, a
/// bridge being re-created) from "netlink failed".
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No interface of that name (the kernel answered ENODEV, or nothing).
    #[error("unknown interface {0}")]
    Unknown(String),
    /// The request failed otherwise (the socket, another error from the kernel).
    #[error("cannot read interface {name}")]
    Request {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
}

pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket; its connection task runs on the current tokio runtime.
    pub fn connect() -> Result<Self> {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("cannot open a netlink socket")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// The interface named `name` now.
    pub async fn link(&self, name: &str) -> Result<Link, LinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(LinkError::Unknown(name.to_string())),
            // The kernel's answer to a name it does not know.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                return Err(LinkError::Unknown(name.to_string()));
            }
            Err(source) => {
                return Err(LinkError::Request {
                    name: name.to_string(),
                    source,
                });
            }
        };
        let mut link = Link {
            name: name.to_string(),
            ifindex: msg.header.index,
            mac: [0; 6],
            mtu: 1500,
            oper_up: false,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(&a),
                LinkAttribute::Mtu(m) => link.mtu = m,
                LinkAttribute::OperState(s) => {
                    link.oper_up = matches!(s, State::Up | State::Unknown);
                }
                _ => {}
            }
        }
        Ok(link)
    }

    /// For a veth: its peer's ifindex and, when the peer is in another network namespace, that
    /// namespace's id as seen from ours. `None` for any other kind of interface.
    pub async fn veth_peer(&self, ifindex: u32) -> Result<Option<(u32, Option<i32>)>> {
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        let Some(msg) = links.try_next().await.context("cannot read a link")? else {
            return Ok(None);
        };
        let (mut veth, mut peer, mut nsid) = (false, None, None);
        for attr in msg.attributes {
            match attr {
                LinkAttribute::LinkInfo(infos) => {
                    veth = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                LinkAttribute::Link(i) => peer = Some(i),
                LinkAttribute::LinkNetNsId(id) => nsid = Some(id),
                _ => {}
            }
        }
        Ok(peer.filter(|_| veth).map(|p| (p, nsid)))
    }

    /// The id our namespace gives the network namespace open at `fd`, if it gave it one.
    pub async fn nsid_of(&self, fd: std::os::fd::BorrowedFd<'_>) -> Result<Option<i32>> {
        use std::os::fd::AsRawFd as _;
        let mut msg = NsidMessage::default();
        msg.attributes
            .push(NsidAttribute::Fd(fd.as_raw_fd() as u32));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST;
        let mut replies = self
            .handle
            .clone()
            .request(req)
            .map_err(|e| anyhow!("cannot ask for a namespace id: {e}"))?;
        while let Some(reply) = futures::StreamExt::next(&mut replies).await {
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) = reply.payload {
                return Ok(m.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                    _ => None,
                }));
            }
        }
        Ok(None)
    }

    /// The interface's first IPv4 address.
    pub async fn ipv4_addr(&self, ifindex: u32) -> Result<Option<Ipv4Net>> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute();
        while let Some(msg) = addrs.try_next().await.context("cannot list addresses")? {
            for attr in &msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(addr))
                | AddressAttribute::Address(IpAddr::V4(addr)) = attr
                {
                    return Ok(Some(Ipv4Net {
                        addr: *addr,
                        prefix: msg.header.prefix_len,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// IPv4 default routes through `ifindex` in the main table.
    pub async fn default_routes(&self, ifindex: u32) -> Result<Vec<RouteMessage>> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(filter).execute();
        let mut found = Vec::new();
        while let Some(msg) = routes.try_next().await.context("cannot list routes")? {
            if msg.header.destination_prefix_length != 0 || msg.header.table != 254 {
                continue;
            }
            if msg
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == ifindex))
            {
                found.push(msg);
            }
        }
        Ok(found)
    }

    /// Every IPv4 route of the main table, for the dataplane's mirror of it.
    pub async fn main_routes(&self) -> Result<Vec<KernelRoute>> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(filter).execute();
        let mut found = Vec::new();
        while let Some(msg) = routes.try_next().await.context("cannot list routes")? {
            if let Some(route) = kernel_route(&msg) {
                found.push(route);
            }
        }
        Ok(found)
    }

    pub async fn del_route(&self, route: RouteMessage) -> Result<()> {
        self.handle
            .route()
            .del(route)
            .execute()
            .await
            .context("cannot delete a route")
    }

    /// Adds `route` back; one that is already there is fine.
    pub async fn add_route(&self, mut route: RouteMessage) -> Result<()> {
        // A route dumped while its link was down carries state flags the kernel refuses on
        // input ("Invalid rtm_flags - can not contain DEAD or LINKDOWN").
        route.header.flags.remove(
            RouteFlags::Dead | RouteFlags::Linkdown | RouteFlags::Offload | RouteFlags::Trap,
        );
        match self.handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(anyhow!("cannot add a route: {e}")),
        }
    }

    /// A stream that yields whenever a link, IPv4 address, neighbour or IPv4 route changes:
    /// carrier loss or a new gateway MAC is acted on at once, not at the next poll.
    pub fn events() -> Result<impl futures::Stream<Item = ()> + Unpin> {
        let (mut connection, _handle, messages) =
            rtnetlink::new_connection().context("cannot open a netlink socket for events")?;
        let groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, groups))
            .context("cannot subscribe to netlink events")?;
        tokio::spawn(connection);
        Ok(futures::StreamExt::map(messages, |_| ()))
    }

    /// The gateway of the best (lowest metric) IPv4 default route through `ifindex` in the
    /// main table, as a DHCP client installs it.
    pub async fn default_gateway(&self, ifindex: u32) -> Result<Option<Ipv4Addr>> {
        let mut best: Option<(u32, Ipv4Addr)> = None;
        for msg in self.default_routes(ifindex).await? {
            let (mut oif, mut gateway, mut metric) = (None, None, 0);
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                    RouteAttribute::Priority(p) => metric = *p,
                    _ => {}
                }
            }
            if let (Some(i), Some(g)) = (oif, gateway)
                && i == ifindex
                && best.is_none_or(|(m, _)| metric < m)
            {
                best = Some((metric, g));
            }
        }
        Ok(best.map(|(_, g)| g))
    }

    /// Every IPv4 neighbour entry as (ifindex, address, MAC if resolved): one dump for all the
    /// next hops the dataplane needs.
    pub async fn ipv4_neighbours(&self) -> Result<Vec<(u32, Ipv4Addr, Option<[u8; 6]>)>> {
        let mut neighbours = self.handle.neighbours().get().execute();
        let mut found = Vec::new();
        while let Some(msg) = neighbours
            .try_next()
            .await
            .context("cannot list neighbours")?
        {
            let resolved = !matches!(
                msg.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            );
            let (mut dst, mut mac) = (None, None);
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 && resolved => {
                        mac = Some([l[0], l[1], l[2], l[3], l[4], l[5]]);
                    }
                    _ => {}
                }
            }
            if let Some(dst) = dst {
                found.push((msg.header.ifindex, dst, mac));
            }
        }
        Ok(found)
    }

    /// The MAC of a resolved neighbour, if the kernel has one.
    pub async fn neighbour_mac(&self, ifindex: u32, ip: Ipv4Addr) -> Result<Option<[u8; 6]>> {
        Ok(self
            .ipv4_neighbours()
            .await?
            .into_iter()
            .find(|(i, a, _)| *i == ifindex && *a == ip)
            .and_then(|(_, _, mac)| mac))
    }

    /// Asks the kernel to resolve `ip` and keep it resolved (a "managed" neighbour, Linux
    /// 5.16+): ARP runs in the background even though the fast path never touches the
    /// kernel's neighbour entry, so the gateway MAC stays fresh.
    pub async fn add_managed_neighbour(&self, ifindex: u32, ip: Ipv4Addr) -> Result<()> {
        // No MAC and no state of our own: the kernel refuses "permanent" for a managed entry
        // and resolves it itself.
        let mut req = self
            .handle
            .neighbours()
            .add(ifindex, IpAddr::V4(ip))
            .state(NeighbourState::None)
            .replace();
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        req.execute()
            .await
            .map_err(|e| anyhow!("cannot add a managed neighbour entry for {ip}: {e}"))
    }

    /// Removes the neighbour entry for `ip` (the kernel relearns it on demand).
    pub async fn del_neighbour(&self, ifindex: u32, ip: Ipv4Addr) -> Result<()> {
        let mut neighbours = self.handle.neighbours().get().execute();
        while let Some(msg) = neighbours
            .try_next()
            .await
            .context("cannot list neighbours")?
        {
            let is_it = msg.header.ifindex == ifindex
                && msg
                    .attributes
                    .iter()
                    .any(|a| matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) if *d == ip));
            if is_it {
                self.handle
                    .neighbours()
                    .del(msg)
                    .execute()
                    .await
                    .context("cannot delete neighbour")?;
                break;
            }
        }
        Ok(())
    }
}

/// A main-table IPv4 route as the mirror needs it; `None` for other tables and for what is
/// no route to a destination (local, broadcast, multicast entries).
fn kernel_route(msg: &RouteMessage) -> Option<KernelRoute> {
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let (mut dst, mut oif, mut gateway, mut metric, mut hops) =
        (Ipv4Addr::UNSPECIFIED, None, None, 0, None);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(nh) => {
                hops = Some(nh.iter().map(|h| h.interface_index).collect());
            }
            _ => {}
        }
    }
    let via = match msg.header.kind {
        RouteType::Unicast => match (hops, oif) {
            (Some(hops), _) => Via::Multipath(hops),
            (None, Some(oif)) => Via::Dev { oif, gateway },
            (None, None) => Via::Nowhere,
        },
        RouteType::BlackHole | RouteType::Unreachable | RouteType::Prohibit | RouteType::Throw => {
            Via::Nowhere
        }
        _ => return None,
    };
    Some(KernelRoute {
        dst,
        prefix: msg.header.destination_prefix_length,
        metric,
        via,
    })
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::route::RouteNextHop;

    use super::*;

    fn message(
        table: u8,
        kind: RouteType,
        prefix: u8,
        attributes: Vec<RouteAttribute>,
    ) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header.table = table;
        msg.header.kind = kind;
        msg.header.destination_prefix_length = prefix;
        msg.attributes = attributes;
        msg
    }

    #[test]
    fn main_table_routes_are_read_as_the_mirror_needs_them() {
        let dst = |a: [u8; 4]| RouteAttribute::Destination(RouteAddress::Inet(a.into()));
        let static_route = message(
            254,
            RouteType::Unicast,
            32,
            vec![
                dst([203, 0, 113, 7]),
                RouteAttribute::Oif(4),
                RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(198, 18, 2, 1))),
                RouteAttribute::Priority(10),
            ],
        );
        assert_eq!(
            kernel_route(&static_route),
            Some(KernelRoute {
                dst: Ipv4Addr::new(203, 0, 113, 7),
                prefix: 32,
                metric: 10,
                via: Via::Dev {
                    oif: 4,
                    gateway: Some(Ipv4Addr::new(198, 18, 2, 1))
                },
            })
        );
        let default = message(254, RouteType::Unicast, 0, vec![RouteAttribute::Oif(3)]);
        assert_eq!(
            kernel_route(&default).map(|r| (r.dst, r.prefix, r.via)),
            Some((
                Ipv4Addr::UNSPECIFIED,
                0,
                Via::Dev {
                    oif: 3,
                    gateway: None
                }
            ))
        );
        let hops = (3..5)
            .map(|i| {
                let mut hop = RouteNextHop::default();
                hop.interface_index = i;
                hop
            })
            .collect();
        let ecmp = message(
            254,
            RouteType::Unicast,
            8,
            vec![RouteAttribute::MultiPath(hops)],
        );
        assert_eq!(
            kernel_route(&ecmp).map(|r| r.via),
            Some(Via::Multipath(vec![3, 4]))
        );
        let blackhole = message(254, RouteType::BlackHole, 8, vec![dst([10, 0, 0, 0])]);
        assert_eq!(kernel_route(&blackhole).map(|r| r.via), Some(Via::Nowhere));
        // Another table (a VRF's, given as an attribute past 255), and the local table's
        // entries, are not the main table's routes.
        let vrf = message(
            252,
            RouteType::Unicast,
            24,
            vec![RouteAttribute::Table(1000), RouteAttribute::Oif(3)],
        );
        assert_eq!(kernel_route(&vrf), None);
        assert_eq!(
            kernel_route(&message(255, RouteType::Local, 32, vec![])),
            None
        );
        assert_eq!(
            kernel_route(&message(254, RouteType::Broadcast, 32, vec![])),
            None
        );
    }

    #[test]
    fn netmask_from_prefix() {
        let net = |prefix| Ipv4Net {
            addr: Ipv4Addr::UNSPECIFIED,
            prefix,
        };
        assert_eq!(net(24).netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(net(32).netmask(), Ipv4Addr::BROADCAST);
        assert_eq!(net(0).netmask(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(net(30).netmask(), Ipv4Addr::new(255, 255, 255, 252));
    }
}
