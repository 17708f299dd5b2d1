//! What the routing table decides, run in the kernel on crafted frames (BPF_PROG_TEST_RUN):
//! balanced under a default route, pinned to a WAN by a more specific route (its connected
//! subnet, a static route) with that route's next hop, the kernel's for a route through any
//! other interface. Exact bytes out; needs root.
mod rig;

use std::net::Ipv4Addr;

use pcc_bench::testbed::*;
use pcc_common::{
    Counter,
    packet::{Frame, parse},
    proto::{TCP_ACK, TCP_SYN},
    route::{NeighbourKey, ROUTE_KERNEL, ROUTE_WAN, ROUTE_WAN_GATEWAY, Route},
};
use pcc_ctl::dataplane::Role;
use rig::*;

/// A host in wan0's connected subnet with its own MAC: the modem's web page.
const MODEM: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
const MODEM_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 3];

fn route(kind: u8, wan_id: u8, gateway: Option<Ipv4Addr>) -> Route {
    Route {
        kind,
        wan_id,
        _pad: 0,
        gateway: gateway.map_or(0, be),
    }
}

/// `sent` to `dst` instead of `SERVER`.
fn to(dst: Ipv4Addr, sent: Frame) -> Frame {
    Frame { dst, ..sent }
}

/// What WAN `wan` must send for `sent` when a route gives the next hop `next_hop_mac`.
fn routed_via(sent: &Frame, wan: usize, nat_port: u16, next_hop_mac: [u8; 6]) -> Frame {
    Frame {
        dst_mac: next_hop_mac,
        ..out_via(sent, wan, nat_port)
    }
}

/// Runs `sent` through the LAN program: it must leave redirected as `want(NAT port)`; returns
/// the NAT port.
fn leaves_as(rig: &mut Rig, what: &str, sent: &Frame, want: impl Fn(u16) -> Frame) -> u16 {
    let (action, out) = rig.run(Role::Lan, &sent.bytes());
    assert_eq!(action, XDP_REDIRECT, "{what}");
    let nat_port = parse(&out).expect("IPv4 out").sport;
    assert_frame(what, &out, &want(nat_port));
    nat_port
}

/// Runs `sent` through the LAN program: it must go to the kernel untouched, counted once as
/// `reason`, with no connection opened.
fn passed_untouched(rig: &mut Rig, sent: &Frame, reason: Counter) {
    let (action, out) = rig.run(Role::Lan, &sent.bytes());
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, sent.bytes(), "passed untouched");
    assert_eq!(rig.counter(reason), 1);
    assert_eq!(rig.maps.ct_out.keys().count(), 0, "no connection opened");
}

#[test]
fn a_destination_only_default_routes_reach_is_balanced_as_before() {
    let mut rig = Rig::new(1024);
    // Routes for other destinations change nothing for this one.
    rig.set_route(Ipv4Addr::new(198, 18, 1, 0), 24, route(ROUTE_WAN, 0, None))
        .unwrap();
    rig.set_route(
        Ipv4Addr::new(198, 19, 251, 0),
        24,
        route(ROUTE_KERNEL, 0, None),
    )
    .unwrap();
    let wan = rig.expected_wan(CLIENT, SERVER);
    let syn = from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_SYN));
    let nat_port = leaves_as(&mut rig, "balanced SYN", &syn, |p| out_via(&syn, wan, p));
    let ack = from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_ACK));
    leaves_as(&mut rig, "balanced ACK", &ack, |_| {
        out_via(&ack, wan, nat_port)
    });
    assert_eq!(
        (
            rig.counter(Counter::FwdOut),
            rig.counter(Counter::FwdRouted)
        ),
        (2, 0)
    );
}

#[test]
fn a_wans_connected_subnet_pins_to_it_with_the_hosts_mac() {
    let mut rig = Rig::new(1024);
    // The route pins to wan0 whatever the hash would pick.
    rig.set_route(Ipv4Addr::new(198, 18, 1, 0), 24, route(ROUTE_WAN, 0, None))
        .unwrap();
    rig.set_neighbour(0, MODEM, MODEM_MAC).unwrap();
    let mut nat_port = 0;
    for (what, flags) in [("SYN", TCP_SYN), ("ACK", TCP_ACK)] {
        let sent = to(
            MODEM,
            from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, flags)),
        );
        let what = format!("{what} to the modem: wan0's address, the modem's own MAC");
        nat_port = leaves_as(&mut rig, &what, &sent, |p| {
            routed_via(&sent, 0, p, MODEM_MAC)
        });
    }
    assert_eq!(rig.counter(Counter::FwdRouted), 2);
    assert_eq!(rig.counter(Counter::FwdOut), 0);
    // The modem answers on wan0, from its own MAC.
    let answer = Frame {
        src: MODEM,
        src_mac: MODEM_MAC,
        ..from_server(0, tcp(80, nat_port, TCP_SYN | TCP_ACK))
    };
    let (action, back) = rig.run(Role::Wan, &answer.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_frame(
        "the modem's answer",
        &back,
        &reply_to(&answer, &HOST, 40000),
    );

    // A health-dead wan0 (the internet beyond it down) still reaches its modem.
    let mut wan0 = rig.maps.wans.get(&0, 0).unwrap();
    wan0.flags = 0;
    rig.maps.wans.set(0, wan0, 0).unwrap();
    let ack = to(
        MODEM,
        from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_ACK)),
    );
    leaves_as(&mut rig, "ACK while wan0 is down", &ack, |_| {
        routed_via(&ack, 0, nat_port, MODEM_MAC)
    });
    wan0.flags = pcc_common::WAN_FLAG_UP;
    rig.maps.wans.set(0, wan0, 0).unwrap();

    // The route goes: the connection is over (its next ACK opens nothing), and the host's
    // next SYN is balanced.
    rig.remove_route(Ipv4Addr::new(198, 18, 1, 0), 24).unwrap();
    assert_eq!(rig.run(Role::Lan, &ack.bytes()).0, XDP_PASS);
    assert_eq!(rig.counter(Counter::PassTcpNotSyn), 1);
    let wan = rig.expected_wan(CLIENT, MODEM);
    let syn = to(
        MODEM,
        from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_SYN)),
    );
    leaves_as(&mut rig, "balanced once the route is gone", &syn, |p| {
        out_via(&syn, wan, p)
    });
    assert_eq!(rig.counter(Counter::FwdOut), 1);
}

#[test]
fn a_static_route_through_a_wan_pins_to_it_with_its_next_hop() {
    let mut rig = Rig::new(1024);
    // An ISP-only service through each WAN's own gateway: the WAN the hash would not pick.
    let service = Ipv4Addr::new(203, 0, 113, 53);
    let wan = 1 - rig.expected_wan(CLIENT, service);
    rig.set_route(service, 32, route(ROUTE_WAN_GATEWAY, wan as u8, None))
        .unwrap();
    let sent = to(
        service,
        from_client(CLIENT, CLIENT_MAC, tcp(40001, 443, TCP_SYN)),
    );
    leaves_as(
        &mut rig,
        "through the route's WAN and its gateway",
        &sent,
        |p| out_via(&sent, wan, p),
    );
    // A subnet behind another router in wan0's subnet.
    let router = Ipv4Addr::new(198, 18, 1, 9);
    const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 9];
    let branch = Ipv4Addr::new(203, 0, 113, 66);
    rig.set_route(
        Ipv4Addr::new(203, 0, 113, 64),
        26,
        route(ROUTE_WAN, 0, Some(router)),
    )
    .unwrap();
    rig.set_neighbour(0, router, ROUTER_MAC).unwrap();
    let sent = to(
        branch,
        from_client(CLIENT, CLIENT_MAC, tcp(40002, 22, TCP_SYN)),
    );
    leaves_as(&mut rig, "to the route's gateway", &sent, |p| {
        routed_via(&sent, 0, p, ROUTER_MAC)
    });
    assert_eq!(rig.counter(Counter::FwdRouted), 2);
}

#[test]
fn a_route_through_another_interface_is_the_kernels() {
    let mut rig = Rig::new(1024);
    rig.set_route(
        Ipv4Addr::new(198, 19, 251, 0),
        24,
        route(ROUTE_KERNEL, 0, None),
    )
    .unwrap();
    let sent = to(
        Ipv4Addr::new(198, 19, 251, 7),
        from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_SYN)),
    );
    passed_untouched(&mut rig, &sent, Counter::PassKernelRoute);
}

#[test]
fn a_next_hop_without_a_mac_goes_to_the_kernel_and_is_asked_for() {
    let mut rig = Rig::new(1024);
    rig.set_route(Ipv4Addr::new(198, 18, 1, 0), 24, route(ROUTE_WAN, 0, None))
        .unwrap();
    let sent = to(
        MODEM,
        from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_SYN)),
    );
    passed_untouched(&mut rig, &sent, Counter::PassNoNeighbour);
    let wanted: Vec<NeighbourKey> = rig
        .maps
        .neighbours_wanted
        .keys()
        .map(|k| k.unwrap())
        .collect();
    assert_eq!(wanted, vec![NeighbourKey::new(0, be(MODEM))]);
    // The controller resolved it: the retransmitted SYN goes through.
    rig.set_neighbour(0, MODEM, MODEM_MAC).unwrap();
    leaves_as(&mut rig, "retransmitted SYN", &sent, |p| {
        routed_via(&sent, 0, p, MODEM_MAC)
    });
}
