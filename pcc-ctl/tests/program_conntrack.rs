//! The conntrack table run in the kernel on crafted frames (BPF_PROG_TEST_RUN): connections
//! expire by the dataplane's sweep with no controller, a LAN endpoint keeps one public endpoint
//! whatever the remote one (RFC 4787 REQ-1), a host has a connection limit. Needs root.
mod rig;

use std::{
    net::Ipv4Addr,
    thread::sleep,
    time::{Duration, Instant},
};

use pcc_bench::testbed::*;
use pcc_common::{
    BindKey, Counter, CtEvent, FlowKey, NatFiltering, PublicKey,
    conntrack::Timeouts,
    expiry::Sweep,
    packet::{Frame, L4, parse},
    proto::{TCP_ACK, TCP_FIN, TCP_SYN},
};
use pcc_ctl::dataplane::Role;
use rig::*;

impl Rig {
    fn set_timeouts(&mut self, timeouts: Timeouts) {
        let mut config = self.maps.config.get(&0, 0).unwrap();
        config.timeouts = timeouts;
        self.maps.config.set(0, config, 0).unwrap();
    }

    fn set_host_limit(&mut self, n: u32) {
        let mut config = self.maps.config.get(&0, 0).unwrap();
        config.max_connections_per_host = n;
        self.maps.config.set(0, config, 0).unwrap();
    }

    fn host_connections(&self, host: Ipv4Addr) -> u64 {
        self.maps.host_connections(be(host))
    }
}

fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp {
        sport,
        dport,
        payload: vec![7; 4],
        checksum: true,
    }
}

fn key(sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey::new(be(CLIENT), be(SERVER), sport.to_be(), dport.to_be(), proto)
}

/// How long after `started` the connection `key` left the table (polled every 50 ms, for at
/// most 10 s).
fn gone_after(rig: &Rig, key: FlowKey, started: Instant) -> Duration {
    while rig.maps.ct_out.get(&key, 0).is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{key:?} never expired"
        );
        sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

#[test]
fn connections_expire_by_the_dataplanes_sweep_with_no_controller() {
    let mut rig = Rig::new(1024);
    rig.set_timeouts(Timeouts {
        tcp_established: 3600,
        tcp_opening: 4,
        tcp_close: 1,
        udp: 2,
        udp_stream: 3600,
        icmp: 2,
    });
    let wan = rig.expected_wan(CLIENT, SERVER);
    // A TCP connection answered, then closed both ways: it goes after `tcp_close`.
    let (_, out) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_SYN)).bytes(),
    );
    let nat_port = parse(&out).unwrap().sport;
    rig.run(
        Role::Wan,
        &from_server(wan, tcp(80, nat_port, TCP_SYN | TCP_ACK)).bytes(),
    );
    rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_FIN | TCP_ACK)).bytes(),
    );
    rig.run(
        Role::Wan,
        &from_server(wan, tcp(80, nat_port, TCP_FIN | TCP_ACK)).bytes(),
    );
    // An unanswered SYN and an unanswered UDP flow.
    rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, tcp(40001, 80, TCP_SYN)).bytes(),
    );
    rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, udp(5000, 53)).bytes(),
    );
    assert_eq!(rig.maps.ct_out.keys().count(), 3);
    assert_eq!(rig.host_connections(CLIENT), 3);
    assert_eq!(
        rig.maps.bind_in.keys().count(),
        3,
        "one binding per LAN endpoint"
    );
    assert_eq!(
        rig.maps.bind_out.keys().count(),
        0,
        "every port kept: no binding needs finding from its endpoint"
    );

    // The sweep walks every slot once per pass: each connection goes after its timeout and
    // at most one pass (plus a tick of polling) later, never before.
    let late =
        Duration::from_nanos(Sweep::for_connections(1024).pass_ns()) + Duration::from_millis(300);
    let started = Instant::now();
    let closed = gone_after(&rig, key(40000, 80, 6), started);
    let unanswered_udp = gone_after(&rig, key(5000, 53, 17), started);
    let unanswered_syn = gone_after(&rig, key(40001, 80, 6), started);
    for (what, gone, timeout) in [
        ("closed TCP (tcp_close)", closed, 1),
        ("unanswered UDP (udp)", unanswered_udp, 2),
        ("unanswered SYN (tcp_opening)", unanswered_syn, 4),
    ] {
        let timeout = Duration::from_secs(timeout);
        assert!(
            gone >= timeout - Duration::from_millis(100) && gone <= timeout + late,
            "{what} went after {gone:?}, not within {timeout:?} + {late:?}"
        );
    }
    assert_eq!(rig.maps.ct_out.keys().count(), 0);
    assert_eq!(
        rig.maps.ct_in.keys().count(),
        0,
        "every public tuple returned"
    );
    assert_eq!(
        rig.maps.bind_out.keys().count(),
        0,
        "every binding released"
    );
    assert_eq!(
        rig.maps.bind_in.keys().count(),
        0,
        "every NAT port returned"
    );
    assert_eq!(rig.host_connections(CLIENT), 0);
    assert_eq!(rig.maps.ct_events().unwrap()[CtEvent::Expired as usize], 3);
}

#[test]
fn a_connection_in_use_is_not_expired() {
    let mut rig = Rig::new(1024);
    rig.set_timeouts(Timeouts {
        udp: 1,
        udp_stream: 1,
        ..Timeouts::default()
    });
    // Refreshed every 300 ms for 2.4 s: the sweep passes it and finds it fresh each time.
    for _ in 0..8 {
        let (action, _) = rig.run(
            Role::Lan,
            &from_client(CLIENT, CLIENT_MAC, udp(5000, 53)).bytes(),
        );
        assert_eq!(action, XDP_REDIRECT);
        sleep(Duration::from_millis(300));
    }
    assert!(
        rig.maps.ct_out.get(&key(5000, 53, 17), 0).is_ok(),
        "a live flow stays"
    );
    assert_eq!(rig.counter(Counter::FwdOut), 8);
    assert_eq!(
        rig.maps
            .wan_counters(rig.expected_wan(CLIENT, SERVER) as u8)
            .unwrap()
            .flows_created,
        1
    );
}

#[test]
fn a_lan_endpoint_keeps_its_public_endpoint_for_every_remote_one() {
    let mut rig = Rig::new(1024);
    let wans = (0..8u8)
        .map(|i| {
            let server = Ipv4Addr::new(203, 0, 113, 20 + i);
            (server, rig.expected_wan(CLIENT, server))
        })
        .collect::<Vec<_>>();
    // Another host holds port 40000 first on every WAN: the client's endpoint gets another
    // port, the same one towards every server through a WAN.
    for wan in 0..2usize {
        let server = (0..8u8)
            .map(|i| Ipv4Addr::new(203, 0, 113, 20 + i))
            .find(|s| rig.expected_wan(CLIENT2, *s) == wan)
            .expect("a server on each WAN");
        let frame = from_client(CLIENT2, CLIENT2_MAC, udp(40000, 3478));
        let frame = Frame {
            dst: server,
            ..frame
        };
        assert_eq!(rig.run(Role::Lan, &frame.bytes()).0, XDP_REDIRECT);
    }
    let mut seen: [Option<u16>; 2] = [None, None];
    for (server, wan) in &wans {
        let frame = from_client(CLIENT, CLIENT_MAC, udp(40000, 3478));
        let frame = Frame {
            dst: *server,
            ..frame
        };
        let (action, out) = rig.run(Role::Lan, &frame.bytes());
        assert_eq!(action, XDP_REDIRECT);
        let out = parse(&out).unwrap();
        assert_ne!(out.sport, 40000, "the other host's port is not shared");
        match seen[*wan] {
            None => seen[*wan] = Some(out.sport),
            Some(port) => assert_eq!(out.sport, port, "same mapping towards {server}"),
        }
    }
    let binding = rig
        .maps
        .bind_out
        .get(
            &BindKey {
                lan_addr: be(CLIENT),
                lan_port: 40000u16.to_be(),
                proto: 17,
                wan_id: wans[0].1 as u8,
            },
            0,
        )
        .unwrap();
    let held = rig
        .maps
        .bind_in
        .get(
            &PublicKey {
                nat_addr: binding.nat_addr,
                nat_port: binding.nat_port,
                proto: 17,
                _pad: 0,
            },
            0,
        )
        .unwrap();
    assert_eq!(
        (held.lan_addr, held.lan_port),
        (be(CLIENT), 40000u16.to_be())
    );
    let on_that_wan = wans.iter().filter(|(_, w)| *w == wans[0].1).count() as u64;
    assert_eq!(held.refs, on_that_wan, "one reference per connection");
}

#[test]
fn a_host_over_its_connection_limit_is_refused_and_others_are_not() {
    let mut rig = Rig::new(1024);
    rig.set_host_limit(5);
    for port in 0..8u16 {
        let sent = from_client(CLIENT, CLIENT_MAC, tcp(30000 + port, 80, TCP_SYN));
        let (action, out) = rig.run(Role::Lan, &sent.bytes());
        assert_eq!(action, XDP_REDIRECT);
        if port < 5 {
            assert_eq!(parse(&out).unwrap().dst, SERVER, "SYN {port} leaves");
        } else {
            // Refused: "administratively prohibited" back to the host (RFC 5508 REQ-8).
            assert_frame(
                "refused",
                &out,
                &unreachable_from(&sent, LAN_ADDR, 13, [0; 4]),
            );
        }
    }
    assert_eq!(rig.counter(Counter::DropHostConnectionLimit), 3);
    assert_eq!(rig.counter(Counter::IcmpProhibitedSent), 3);
    assert_eq!(rig.host_connections(CLIENT), 5);
    let (action, _) = rig.run(
        Role::Lan,
        &from_client(CLIENT2, CLIENT2_MAC, tcp(30000, 80, TCP_SYN)).bytes(),
    );
    assert_eq!(action, XDP_REDIRECT, "another host is not limited");
    let (action, _) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, tcp(30000, 80, TCP_ACK)).bytes(),
    );
    assert_eq!(action, XDP_REDIRECT, "the limited host's connections go on");
}

impl Rig {
    fn set_filtering(&mut self, filtering: NatFiltering) {
        let mut config = self.maps.config.get(&0, 0).unwrap();
        config.nat_filtering = filtering as u8;
        self.maps.config.set(0, config, 0).unwrap();
    }
}

/// `frame` with its destination (and nothing else) replaced.
fn to(dst: Ipv4Addr, frame: Frame) -> Frame {
    Frame { dst, ..frame }
}

/// The translated frame's addresses and ports, after checking its checksums.
fn endpoints(out: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let p = parse(out).expect("an IPv4 frame");
    assert!(p.ip_checksum_ok && p.l4_checksum_ok, "checksums: {p:?}");
    (p.src, p.sport, p.dst, p.dport)
}

#[test]
fn endpoint_independent_filtering_lets_anyone_reach_a_live_mapping() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let (_, out) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, udp(40000, 3478)).bytes(),
    );
    assert_eq!(endpoints(&out).1, 40000, "the host's port is kept");
    let stranger = Ipv4Addr::new(203, 0, 113, 99);
    let probe = Frame {
        src: stranger,
        ..from_server(wan, udp(9999, 40000))
    };
    assert_eq!(
        rig.run(Role::Wan, &probe.bytes()).0,
        XDP_PASS,
        "address-and-port-dependent by default: the kernel's"
    );
    rig.set_filtering(NatFiltering::EndpointIndependent);
    let (action, out) = rig.run(Role::Wan, &probe.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(endpoints(&out), (stranger, 9999, CLIENT, 40000));
    assert_eq!(
        rig.maps.ct_events().unwrap()[CtEvent::OpenedInbound as usize],
        1
    );
    // The host answers through the connection the probe opened, from its one mapping.
    let answer = to(stranger, from_client(CLIENT, CLIENT_MAC, udp(40000, 9999)));
    let (action, out) = rig.run(Role::Lan, &answer.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(endpoints(&out), (WAN_ADDRS[wan], 40000, stranger, 9999));
    // A port no LAN endpoint holds, and a TCP segment that is no SYN, open nothing.
    let nobody = Frame {
        src: stranger,
        ..from_server(wan, udp(9999, 40001))
    };
    assert_eq!(rig.run(Role::Wan, &nobody.bytes()).0, XDP_PASS);
    let ack = Frame {
        src: stranger,
        ..from_server(wan, tcp(9999, 40000, TCP_ACK))
    };
    assert_eq!(rig.run(Role::Wan, &ack.bytes()).0, XDP_PASS);
}

#[test]
fn a_lan_host_reaches_another_through_its_public_endpoint() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let public = WAN_ADDRS[wan];
    // c1 learns its mapping from a server: port 40000 kept.
    rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, udp(40000, 3478)).bytes(),
    );
    // c2 sends to that public endpoint: delivered to c1, from c2's own mapping, on the LAN.
    let sent = to(public, from_client(CLIENT2, CLIENT2_MAC, udp(5000, 40000)));
    let (action, out) = rig.run(Role::Lan, &sent.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(endpoints(&out), (public, 5000, CLIENT, 40000));
    let p = parse(&out).unwrap();
    assert_eq!((p.dst_mac, p.src_mac, p.ttl), (CLIENT_MAC, LAN_MAC, 63));
    // c1 answers c2's public endpoint: back to c2.
    let answer = to(public, from_client(CLIENT, CLIENT_MAC, udp(40000, 5000)));
    let (action, out) = rig.run(Role::Lan, &answer.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(endpoints(&out), (public, 40000, CLIENT2, 5000));
    assert_eq!(rig.counter(Counter::FwdHairpin), 2);
    assert_eq!(
        rig.counter(Counter::FwdOut),
        1,
        "only the STUN request left"
    );
    // TCP that opens nothing towards a held public endpoint is dropped, not sent out.
    let stray = to(
        public,
        from_client(CLIENT2, CLIENT2_MAC, tcp(5001, 40000, TCP_ACK)),
    );
    assert_eq!(rig.run(Role::Lan, &stray.bytes()).0, XDP_PASS, "not a SYN");
}
