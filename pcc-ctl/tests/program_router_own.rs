//! The router's own connections on the WANs, in the kernel on crafted frames
//! (BPF_PROG_TEST_RUN; sched_cls programs run there too): the TC egress hook records a router
//! socket's tuple, a LAN host's mapping never takes it, its replies and the ICMP errors about it
//! go to the kernel, and a router packet on a tuple a LAN host holds stays in. Needs root.
mod rig;

use std::net::Ipv4Addr;

use pcc_bench::testbed::*;
use pcc_common::{
    CT_TCP_RST, CT_TCP_SYN, Counter, FlowKey, LAN_ROUTER,
    packet::{Frame, L4, parse},
    proto::{TCP_ACK, TCP_RST, TCP_SYN},
};
use pcc_ctl::dataplane::Role;
use rig::*;

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const UDP: u8 = 17;

fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp {
        sport,
        dport,
        payload: b"query".to_vec(),
        checksum: true,
    }
}

/// A packet of the router's own leaving WAN `wan` for `SERVER`, as TC egress sees it.
fn router_out(wan: usize, l4: L4) -> Frame {
    Frame {
        dst_mac: GW_MACS[wan],
        src_mac: WAN_MACS[wan],
        src: WAN_ADDRS[wan],
        dst: SERVER,
        tos: 0,
        ttl: 64,
        id: 7,
        l4,
    }
}

/// The `CT_IN` key of the replies to WAN `wan`'s `local` port from `SERVER`'s `remote` port.
fn reply_key(wan: usize, remote: u16, local: u16, proto: u8) -> FlowKey {
    FlowKey::new(
        be(SERVER),
        be(WAN_ADDRS[wan]),
        remote.to_be(),
        local.to_be(),
        proto,
    )
}

fn egress(rig: &mut Rig, frame: &Frame) -> i32 {
    rig.run_egress(&frame.bytes()).expect("BPF_PROG_TEST_RUN")
}

/// A resolver on the router and a LAN host on the same source port to the same server: the
/// host gets another NAT port, and each gets its own replies.
#[test]
fn a_router_socket_keeps_its_tuple_and_its_replies() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    assert_eq!(
        egress(&mut rig, &router_out(wan, udp(40000, 53))),
        TC_ACT_OK
    );
    assert_eq!(rig.counter(Counter::PassRouterOwnOut), 1);
    let key = reply_key(wan, 53, 40000, UDP);
    let entry = rig
        .maps
        .ct_in
        .get(&key, 0)
        .expect("the router's tuple recorded");
    assert_eq!((entry.lan_id, entry.wan_id), (LAN_ROUTER, wan as u8));

    let sent = from_client(CLIENT, CLIENT_MAC, udp(40000, 53));
    let (action, out) = rig.run(Role::Lan, &sent.bytes());
    assert_eq!(action, XDP_REDIRECT);
    let nat_port = parse(&out).expect("IPv4 out").sport;
    assert_ne!(
        nat_port, 40000,
        "the router's tuple is not the host's to take"
    );

    let (action, _) = rig.run(Role::Wan, &from_server(wan, udp(53, 40000)).bytes());
    assert_eq!(action, XDP_PASS, "the router's answer goes to its kernel");
    assert_eq!(rig.counter(Counter::PassRouterOwn), 1);
    assert_eq!(rig.maps.ct_in.get(&key, 0).unwrap().packets, 1);

    let reply = from_server(wan, udp(53, nat_port));
    let (action, back) = rig.run(Role::Wan, &reply.bytes());
    assert_eq!(action, XDP_REDIRECT, "the host's answer goes to the host");
    assert_frame("the host's reply", &back, &reply_to(&reply, &HOST, 40000));

    assert_eq!(
        egress(&mut rig, &router_out(wan, udp(40000, 53))),
        TC_ACT_OK
    );
    assert_eq!(rig.counter(Counter::PassRouterOwnOut), 2, "refreshed");
}

/// The other order: a LAN host's mapping holds the tuple first, so the router's packet would
/// have its replies go to the host. It stays in, counted; the host's mapping is untouched.
#[test]
fn a_router_packet_on_a_lan_hosts_tuple_stays_in() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let sent = from_client(CLIENT, CLIENT_MAC, udp(41000, 53));
    let (action, out) = rig.run(Role::Lan, &sent.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(parse(&out).unwrap().sport, 41000, "the host keeps its port");

    assert_eq!(
        egress(&mut rig, &router_out(wan, udp(41000, 53))),
        TC_ACT_SHOT
    );
    assert_eq!(rig.counter(Counter::DropRouterTupleTaken), 1);
    let entry = rig
        .maps
        .ct_in
        .get(&reply_key(wan, 53, 41000, UDP), 0)
        .unwrap();
    assert_eq!(entry.lan_id, 0, "still the host's");
    // Another port of the router's towards the same server is fine.
    assert_eq!(
        egress(&mut rig, &router_out(wan, udp(41001, 53))),
        TC_ACT_OK
    );
}

/// Nothing is recorded where no mapping could collide: a port below the NAT range (IKE on
/// 500), a reset answering a packet no socket wanted, another source than a WAN address, an
/// echo reply the router answers a ping with.
#[test]
fn what_the_hook_leaves_alone() {
    let mut rig = Rig::new(1024);
    let cases = [
        ("IKE from port 500", router_out(0, udp(500, 500))),
        (
            "a reset of nothing",
            router_out(0, tcp(40020, 80, TCP_RST | TCP_ACK)),
        ),
        (
            "another source address",
            Frame {
                src: Ipv4Addr::new(198, 18, 9, 9),
                ..router_out(0, udp(40021, 53))
            },
        ),
        (
            "an echo reply",
            router_out(0, echo(0, 40022, 1, vec![0; 8])),
        ),
    ];
    for (what, frame) in cases {
        assert_eq!(egress(&mut rig, &frame), TC_ACT_OK, "{what}");
    }
    assert_eq!(rig.maps.ct_in.keys().count(), 0, "nothing recorded");
    assert_eq!(rig.counter(Counter::PassRouterOwnOut), 0);
}

/// The router's ping (a probe) is recorded by its identifier: its reply and an ICMP error
/// about a packet of the router's go to the kernel, and a LAN host's ping with the same
/// identifier gets another one.
#[test]
fn router_pings_and_errors_about_router_packets_go_to_the_kernel() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    assert_eq!(
        egress(&mut rig, &router_out(wan, echo(8, 40001, 1, vec![0; 8]))),
        TC_ACT_OK
    );
    let (action, _) = rig.run(
        Role::Wan,
        &from_server(wan, echo(0, 40001, 1, vec![0; 8])).bytes(),
    );
    assert_eq!(action, XDP_PASS, "the probe's reply");
    let (_, out) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, echo(8, 40001, 1, vec![])).bytes(),
    );
    assert_ne!(
        parse(&out).unwrap().sport,
        40001,
        "the host's ping gets another identifier"
    );

    let query = router_out(wan, udp(40002, 53));
    assert_eq!(egress(&mut rig, &query), TC_ACT_OK);
    let mut quote = Frame { ttl: 1, ..query }.ip_bytes();
    quote.truncate(28);
    let (action, _) = rig.run(Role::Wan, &icmp_error(wan, 11, 0, quote).bytes());
    assert_eq!(action, XDP_PASS, "time exceeded about the router's query");
    assert_eq!(rig.counter(Counter::PassRouterOwn), 2);
    assert_eq!(rig.counter(Counter::FwdIcmpError), 0);
}

/// TCP flags of both sides are gathered for the expiry; a new SYN on a tuple the router used
/// before starts afresh, so the old connection's reset does not shorten the new one's life.
#[test]
fn a_router_tcp_tuple_reopened_starts_afresh() {
    let mut rig = Rig::new(1024);
    let key = reply_key(0, 80, 40010, 6);
    let flags = |rig: &Rig| rig.maps.ct_in.get(&key, 0).unwrap().tcp_flags;
    assert_eq!(
        egress(&mut rig, &router_out(0, tcp(40010, 80, TCP_SYN))),
        TC_ACT_OK
    );
    assert_eq!(flags(&rig), CT_TCP_SYN);
    assert_eq!(
        egress(&mut rig, &router_out(0, tcp(40010, 80, TCP_RST | TCP_ACK))),
        TC_ACT_OK
    );
    assert_ne!(
        flags(&rig) & CT_TCP_RST,
        0,
        "a reset on a recorded tuple counts"
    );
    assert_eq!(
        egress(&mut rig, &router_out(0, tcp(40010, 80, TCP_SYN))),
        TC_ACT_OK
    );
    assert_eq!(flags(&rig), CT_TCP_SYN);
}

/// A router tuple expires by the dataplane's sweep, like a mapping, with no controller: the
/// port is a mapping's to take again.
#[test]
fn a_router_tuple_expires_by_the_sweep() {
    let mut rig = Rig::new(1024);
    let mut config = rig.maps.config.get(&0, 0).unwrap();
    config.timeouts.udp = 1;
    rig.maps.config.set(0, config, 0).unwrap();
    assert_eq!(egress(&mut rig, &router_out(0, udp(40020, 53))), TC_ACT_OK);
    let key = reply_key(0, 53, 40020, UDP);
    assert!(rig.maps.ct_in.get(&key, 0).is_ok(), "recorded");
    let started = std::time::Instant::now();
    // Within the timeout and one pass of the sweep over every slot.
    let late =
        std::time::Duration::from_nanos(pcc_common::expiry::Sweep::for_connections(1024).pass_ns())
            + std::time::Duration::from_millis(1300);
    while rig.maps.ct_in.get(&key, 0).is_ok() {
        assert!(started.elapsed() < late, "still there after {late:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "gone before the UDP timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        rig.maps.ct_events().unwrap()[pcc_common::CtEvent::Expired as usize],
        1
    );
}
