//! The routing table decides what is balanced, and pcc follows its changes without a restart:
//! a static route through a WAN pins new connections to that WAN; one through another
//! interface leaves them to the kernel; removed, they are balanced again. A WAN's connected
//! subnet (here the ISP routers' own addresses) is reached through that WAN only.

use std::{net::Ipv4Addr, time::Duration};

use pcc_tests::{Lab, PccHandle, UdpReply, require_root, wan_of_addr};

/// Source ports of the probes, one per probe.
const SPORT: u16 = 5100;

fn probe(lab: &Lab, server: Ipv4Addr, sport: u16) -> anyhow::Result<UdpReply> {
    lab.udp_probe("c1", server, 7, sport, 2)
}

/// The WAN (0, 1) a server sees a new connection of c1's come from.
fn wan_seen(lab: &Lab, server: Ipv4Addr, sport: u16) -> usize {
    let reply = probe(lab, server, sport).unwrap_or_else(|e| panic!("UDP to {server}: {e:#}"));
    reply
        .seen_addr()
        .and_then(wan_of_addr)
        .unwrap_or_else(|| panic!("{server} saw {}", reply.seen_as))
}

/// Waits out the mirror's refresh (events are acted on within 200 ms).
fn settle() {
    std::thread::sleep(Duration::from_millis(600));
}

fn packets(pcc: &PccHandle, action: &str, reason: &str) -> f64 {
    pcc.metrics()
        .expect("metrics")
        .get(
            "pcc_packets_total",
            &[("action", action), ("reason", reason)],
        )
        .unwrap_or(0.0)
}

#[test]
fn route_changes() {
    require_root!();
    let lab = Lab::builder()
        .clients(1)
        .servers(4)
        .ip_forward(true)
        .build()
        .expect("building the lab");
    lab.start_udp_echo().expect("UDP echo server");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    let server = lab.server_addr(1);
    let balanced = wan_seen(&lab, server, SPORT);
    let other = 1 - balanced;
    eprintln!("{server} is balanced to wan{balanced}");

    // A static route through the other WAN's gateway: new connections follow it.
    let route = format!("{server}/32");
    let gw = lab.isp_addr(other).to_string();
    let wan = format!("wan{other}");
    lab.run(
        "router",
        &["ip", "route", "add", &route, "via", &gw, "dev", &wan],
    )
    .expect("adding a static route");
    settle();
    for i in 1..=3 {
        assert_eq!(
            wan_seen(&lab, server, SPORT + i),
            other,
            "new connection {i} follows the static route through wan{other}"
        );
    }
    assert!(packets(&pcc, "forwarded", "lan_to_wan_routed") >= 3.0);
    let mirrored = pcc
        .metrics()
        .expect("metrics")
        .get("pcc_routes_mirrored", &[])
        .unwrap_or(0.0);
    assert!(mirrored >= 4.0, "routes mirrored: {mirrored}");

    // Removed: balanced again.
    lab.run("router", &["ip", "route", "del", &route])
        .expect("removing the static route");
    settle();
    assert_eq!(wan_seen(&lab, server, SPORT + 10), balanced);

    // Through an interface that is no WAN (a veth standing in for a VPN): the kernel's.
    lab.sh(
        "router",
        "ip link add vpn9 type veth peer name vpn9p && ip link set vpn9 up && \
         ip link set vpn9p up && ip addr add 198.18.250.1/30 dev vpn9 && \
         ip neigh replace 198.18.250.2 lladdr 02:00:00:00:09:09 nud permanent dev vpn9",
    )
    .expect("a non-WAN interface");
    lab.run(
        "router",
        &[
            "ip",
            "route",
            "add",
            &route,
            "via",
            "198.18.250.2",
            "dev",
            "vpn9",
        ],
    )
    .expect("a route through it");
    settle();
    let before = packets(&pcc, "passed", "kernel_route");
    let sent_before = lab
        .link_stats("router", "vpn9")
        .expect("vpn9 stats")
        .tx_packets;
    assert!(
        probe(&lab, server, SPORT + 20).is_err(),
        "nothing answers behind vpn9: the datagram must not leave through a WAN"
    );
    assert!(packets(&pcc, "passed", "kernel_route") > before);
    let sent = lab
        .link_stats("router", "vpn9")
        .expect("vpn9 stats")
        .tx_packets;
    assert!(
        sent > sent_before,
        "the kernel forwarded the connection out of vpn9 ({sent_before} -> {sent} packets)"
    );
    lab.run("router", &["ip", "route", "del", &route])
        .expect("removing the route");
    settle();
    assert_eq!(wan_seen(&lab, server, SPORT + 30), balanced);

    // Each ISP router's own address lies in its WAN's connected subnet: reached through that
    // WAN whatever the hash says (the first echo may go to the kernel while pcc resolves the
    // next hop's MAC).
    for isp in 0..2 {
        let addr = lab.isp_addr(isp);
        let got = lab.ping("c1", addr, 5).expect("ping");
        assert!(got >= 3, "{addr} answered {got} of 5 pings");
    }
    pcc.stop_cleanly().expect("clean stop");
}
