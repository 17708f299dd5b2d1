//! The routing table decides what is balanced: the controller mirrors the kernel's main IPv4
//! table into the dataplane's `ROUTES` LPM trie, which a new connection consults once.
//!
//! Why a mirror and not `bpf_fib_lookup` (as xdp-forward and Cilium do): on Linux 6.18 the
//! helper answers `BPF_FIB_LKUP_RET_FWD_DISABLED` whenever forwarding is off on the ingress
//! port (also with `BPF_FIB_LOOKUP_DIRECT`), and pcc's normal mode is forwarding off, the
//! dataplane forwarding everything itself; and when it does answer, a default route and a
//! more specific route through the same WAN gateway give the very same result (egress port,
//! next hop, MAC), so it cannot tell "balance this" from "pin this". The mirror can (loxilb's
//! `nh_map`, mwan3's connected set): a destination matching no entry is balanced, as only
//! default routes through WANs are left out.
//!
//! Next hops: a route through a WAN's own gateway uses the WAN's `gateway_mac`, which the
//! controller keeps resolved anyway; any other next hop (a host in the WAN's subnet, another
//! router there) is looked up in `NEIGHBOURS`, which the controller fills from the kernel's
//! neighbour table. A miss is put into `NEIGHBOURS_WANTED` for the controller to resolve.

/// Routes the `ROUTES` trie holds at most (a router's main table: connected subnets, static
/// and VPN routes, not an internet table).
pub const MAX_ROUTES: u32 = 16_384;
/// Next hops `NEIGHBOURS` holds at most.
pub const MAX_NEIGHBOURS: u32 = 1024;
/// Unresolved next hops waiting for the controller (`NEIGHBOURS_WANTED`, LRU).
pub const MAX_NEIGHBOURS_WANTED: u32 = 256;
/// Next hops the controller keeps resolved per WAN (kernel "managed" neighbour entries, which
/// ARP in the background): bounded, so a LAN host scanning a WAN's subnet cannot make the
/// router keep ARPing thousands of addresses.
pub const NEIGHBOURS_PER_WAN: usize = 64;

/// The route is the kernel's: through an interface that is no WAN (a VPN, a tunnel, another
/// LAN, a branch router), a multipath route, or one that drops (blackhole, unreachable,
/// prohibit). pcc passes such connections untouched.
pub const ROUTE_KERNEL: u8 = 1;
/// Through WAN `wan_id`, next hop `gateway` (0: on-link, the destination itself), whose MAC
/// is in `NEIGHBOURS`.
pub const ROUTE_WAN: u8 = 2;
/// Through WAN `wan_id` via the WAN's own gateway: its `gateway_mac` is the next hop.
pub const ROUTE_WAN_GATEWAY: u8 = 3;

/// `ROUTES` value (key: destination prefix, network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Route {
    /// `ROUTE_*`.
    pub kind: u8,
    pub wan_id: u8,
    pub _pad: u16,
    /// Next hop of a `ROUTE_WAN` route (network byte order); 0 on-link.
    pub gateway: u32,
}

impl Route {
    /// Whether new connections matching it leave through a WAN (pinned to it).
    #[inline(always)]
    pub fn through_wan(&self) -> bool {
        self.kind == ROUTE_WAN || self.kind == ROUTE_WAN_GATEWAY
    }

    /// The address whose MAC is the next hop towards `dst` (network byte order), for
    /// `ROUTE_WAN`.
    #[inline(always)]
    pub fn next_hop(&self, dst: u32) -> u32 {
        if self.gateway == 0 { dst } else { self.gateway }
    }
}

/// `NEIGHBOURS` and `NEIGHBOURS_WANTED` key: a next hop on one WAN.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighbourKey {
    /// Network byte order.
    pub addr: u32,
    pub wan_id: u8,
    // Scalar pads, like FlowKey's: no memset call in BPF.
    pad0: u8,
    pad1: u16,
}

impl NeighbourKey {
    #[inline(always)]
    pub const fn new(wan_id: u8, addr: u32) -> Self {
        NeighbourKey {
            addr,
            wan_id,
            pad0: 0,
            pad1: 0,
        }
    }
}

/// `NEIGHBOURS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: [u8; 6],
    pub _pad: u16,
}

const _: () = {
    assert!(size_of::<Route>() == 8);
    assert!(size_of::<NeighbourKey>() == 8);
    assert!(size_of::<Neighbour>() == 8);
};

// SAFETY: `#[repr(C)]` plain data with explicit padding: every byte pattern is valid.
#[cfg(feature = "user")]
impl_pod!(Route, NeighbourKey, Neighbour);

#[cfg(feature = "std")]
pub use mirror::*;

/// The controller's side: which trie entries the kernel's routes call for.
#[cfg(feature = "std")]
mod mirror {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use super::{ROUTE_KERNEL, ROUTE_WAN, ROUTE_WAN_GATEWAY, Route};

    /// Where a kernel route sends its packets.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Via {
        /// Out of one interface, through `gateway` or on-link.
        Dev { oif: u32, gateway: Option<Ipv4Addr> },
        /// Spread over several next hops (their interfaces).
        Multipath(Vec<u32>),
        /// Dropped by the kernel (blackhole, unreachable, prohibit) or handed on (throw).
        Nowhere,
    }

    /// One IPv4 route of the kernel's main table, as the controller reads it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct KernelRoute {
        pub dst: Ipv4Addr,
        pub prefix: u8,
        /// Lower wins among routes to the same prefix, as in the kernel.
        pub metric: u32,
        pub via: Via,
    }

    /// A WAN as the mirror needs it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct WanPort {
        pub wan_id: u8,
        pub ifindex: u32,
        /// Its gateway (the one its `gateway_mac` belongs to).
        pub gateway: Ipv4Addr,
    }

    /// A trie key: the destination's network address (host bits cleared) and prefix length.
    pub type Prefix = (Ipv4Addr, u8);

    fn network(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        Ipv4Addr::from(u32::from(addr) & mask)
    }

    /// The `ROUTES` entries `routes` call for. A destination no entry matches is balanced, so
    /// default routes through WANs are left out; everything more specific is in, pinned to its
    /// WAN or left to the kernel. A best default route through another interface (a VPN that
    /// takes all traffic) is an entry too: then the kernel's route for every destination is
    /// not a WAN's, and nothing is balanced.
    pub fn desired(routes: &[KernelRoute], wans: &[WanPort]) -> BTreeMap<Prefix, Route> {
        // The kernel's choice among routes to the same prefix: the lowest metric.
        let mut best: BTreeMap<Prefix, &KernelRoute> = BTreeMap::new();
        for r in routes.iter().filter(|r| r.prefix <= 32) {
            let key = (network(r.dst, r.prefix), r.prefix);
            if best.get(&key).is_none_or(|b| r.metric < b.metric) {
                best.insert(key, r);
            }
        }
        let wan_of = |oif: u32| wans.iter().find(|w| w.ifindex == oif && oif != 0);
        let mut out = BTreeMap::new();
        for (key, r) in best {
            let kernel = Route {
                kind: ROUTE_KERNEL,
                ..Route::default()
            };
            let entry = match &r.via {
                Via::Dev { oif, gateway } => match wan_of(*oif) {
                    Some(_) if key.1 == 0 => continue,
                    Some(wan) => pinned(wan, *gateway),
                    None => kernel,
                },
                // An ECMP default over WANs is what pcc balances anyway; a specific one cannot
                // be pinned to one WAN.
                Via::Multipath(oifs) if key.1 == 0 && oifs.iter().all(|o| wan_of(*o).is_some()) => {
                    continue;
                }
                Via::Multipath(_) | Via::Nowhere => kernel,
            };
            out.insert(key, entry);
        }
        out
    }

    fn pinned(wan: &WanPort, gateway: Option<Ipv4Addr>) -> Route {
        let (kind, gateway) = match gateway {
            Some(g) if g == wan.gateway => (ROUTE_WAN_GATEWAY, 0),
            Some(g) => (ROUTE_WAN, u32::from_ne_bytes(g.octets())),
            None => (ROUTE_WAN, 0),
        };
        Route {
            kind,
            wan_id: wan.wan_id,
            _pad: 0,
            gateway,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const WAN0: WanPort = WanPort {
        wan_id: 0,
        ifindex: 10,
        gateway: Ipv4Addr::new(198, 18, 1, 1),
    };
    const WAN1: WanPort = WanPort {
        wan_id: 1,
        ifindex: 11,
        gateway: Ipv4Addr::new(198, 18, 2, 1),
    };
    const LAN: u32 = 20;
    const VPN: u32 = 30;

    fn route(dst: [u8; 4], prefix: u8, metric: u32, via: Via) -> KernelRoute {
        KernelRoute {
            dst: dst.into(),
            prefix,
            metric,
            via,
        }
    }

    fn dev(oif: u32, gateway: Option<[u8; 4]>) -> Via {
        Via::Dev {
            oif,
            gateway: gateway.map(Ipv4Addr::from),
        }
    }

    fn be(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    /// A router as DHCP leaves it: a default and a connected subnet per WAN, the LAN subnet.
    fn router() -> Vec<KernelRoute> {
        vec![
            route([0, 0, 0, 0], 0, 100, dev(10, Some([198, 18, 1, 1]))),
            route([0, 0, 0, 0], 0, 200, dev(11, Some([198, 18, 2, 1]))),
            route([198, 18, 1, 0], 24, 0, dev(10, None)),
            route([198, 18, 2, 0], 24, 0, dev(11, None)),
            route([198, 19, 10, 0], 24, 0, dev(LAN, None)),
        ]
    }

    #[test]
    fn defaults_through_wans_are_balanced_and_connected_subnets_pinned() {
        let got = desired(&router(), &[WAN0, WAN1]);
        let want: Vec<(Prefix, Route)> = vec![
            (
                (Ipv4Addr::new(198, 18, 1, 0), 24),
                Route {
                    kind: ROUTE_WAN,
                    wan_id: 0,
                    ..Route::default()
                },
            ),
            (
                (Ipv4Addr::new(198, 18, 2, 0), 24),
                Route {
                    kind: ROUTE_WAN,
                    wan_id: 1,
                    ..Route::default()
                },
            ),
            (
                (Ipv4Addr::new(198, 19, 10, 0), 24),
                Route {
                    kind: ROUTE_KERNEL,
                    ..Route::default()
                },
            ),
        ];
        assert_eq!(got.into_iter().collect::<Vec<_>>(), want);
    }

    #[test]
    fn static_routes_pin_to_their_wan_with_their_next_hop() {
        let mut routes = router();
        // An ISP-only service through wan1's own gateway, and a subnet behind another router
        // in wan0's subnet.
        routes.push(route(
            [203, 0, 113, 7],
            32,
            0,
            dev(11, Some([198, 18, 2, 1])),
        ));
        routes.push(route(
            [203, 0, 113, 64],
            26,
            0,
            dev(10, Some([198, 18, 1, 9])),
        ));
        let got = desired(&routes, &[WAN0, WAN1]);
        assert_eq!(
            got[&(Ipv4Addr::new(203, 0, 113, 7), 32)],
            Route {
                kind: ROUTE_WAN_GATEWAY,
                wan_id: 1,
                ..Route::default()
            }
        );
        let via_router = got[&(Ipv4Addr::new(203, 0, 113, 64), 26)];
        assert_eq!(
            (via_router.kind, via_router.wan_id, via_router.gateway),
            (ROUTE_WAN, 0, be([198, 18, 1, 9]))
        );
        assert_eq!(
            via_router.next_hop(be([203, 0, 113, 70])),
            be([198, 18, 1, 9])
        );
        assert_eq!(
            got[&(Ipv4Addr::new(198, 18, 1, 0), 24)].next_hop(be([198, 18, 1, 3])),
            be([198, 18, 1, 3]),
            "on-link: the destination is the next hop"
        );
    }

    #[test]
    fn other_interfaces_drops_and_multipath_are_the_kernels() {
        let mut routes = router();
        routes.push(route(
            [198, 19, 251, 0],
            24,
            0,
            dev(VPN, Some([198, 19, 250, 2])),
        ));
        routes.push(route([10, 0, 0, 0], 8, 0, Via::Nowhere));
        routes.push(route([203, 0, 113, 0], 28, 0, Via::Multipath(vec![10, 11])));
        let got = desired(&routes, &[WAN0, WAN1]);
        for (prefix, len) in [
            ([198, 19, 251, 0], 24),
            ([10, 0, 0, 0], 8),
            ([203, 0, 113, 0], 28),
        ] {
            assert_eq!(
                got[&(Ipv4Addr::from(prefix), len)].kind,
                ROUTE_KERNEL,
                "{prefix:?}"
            );
        }
    }

    #[test]
    fn the_lowest_metric_wins_and_host_bits_are_cleared() {
        let mut routes = router();
        // The same prefix through a VPN (preferred) and wan0; given with host bits set.
        routes.push(route([198, 19, 251, 9], 24, 50, dev(10, None)));
        routes.push(route([198, 19, 251, 0], 24, 10, dev(VPN, None)));
        let got = desired(&routes, &[WAN0, WAN1]);
        assert_eq!(
            got[&(Ipv4Addr::new(198, 19, 251, 0), 24)].kind,
            ROUTE_KERNEL
        );
        assert!(
            !got.keys()
                .any(|(a, _)| *a == Ipv4Addr::new(198, 19, 251, 9))
        );
    }

    #[test]
    fn a_default_route_through_a_vpn_takes_everything_from_the_balancer() {
        let mut routes = router();
        routes.push(route([0, 0, 0, 0], 0, 5, dev(VPN, None)));
        let got = desired(&routes, &[WAN0, WAN1]);
        assert_eq!(got[&(Ipv4Addr::UNSPECIFIED, 0)].kind, ROUTE_KERNEL);
        // Behind the WAN defaults (a demoted or backup VPN), it changes nothing.
        let mut routes = router();
        routes.push(route([0, 0, 0, 0], 0, 1000, dev(VPN, None)));
        assert!(!desired(&routes, &[WAN0, WAN1]).contains_key(&(Ipv4Addr::UNSPECIFIED, 0)));
        // An ECMP default over the WANs is balanced.
        let routes = vec![route([0, 0, 0, 0], 0, 0, Via::Multipath(vec![10, 11]))];
        assert!(desired(&routes, &[WAN0, WAN1]).is_empty());
    }
}
