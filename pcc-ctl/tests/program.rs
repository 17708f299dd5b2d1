//! The XDP programs run in the kernel on crafted frames (BPF_PROG_TEST_RUN): exact bytes out,
//! every checksum recomputed from scratch. Needs root (loading BPF).
use std::net::Ipv4Addr;

use pcc_common::{
    Counter, FlowKey, MAX_WANS,
    packet::{Frame, L4, TCP_ACK, TCP_SYN, ipv4_packet, parse},
    slots,
};
use pcc_ctl::{dataplane::Role, testbed::*};

/// The shared test bed, with assertions instead of errors.
struct Rig(TestBed);

impl std::ops::Deref for Rig {
    type Target = TestBed;
    fn deref(&self) -> &TestBed {
        &self.0
    }
}

impl std::ops::DerefMut for Rig {
    fn deref_mut(&mut self) -> &mut TestBed {
        &mut self.0
    }
}

impl Rig {
    fn new(max_connections: u32) -> Rig {
        Rig(TestBed::new(max_connections).expect("program tests load BPF: run them as root"))
    }

    fn run(&mut self, role: Role, frame: &[u8]) -> (u32, Vec<u8>) {
        let (action, out, _) = self.0.run(role, frame).expect("BPF_PROG_TEST_RUN");
        (action, out)
    }

    fn counter(&self, c: Counter) -> u64 {
        self.maps.counters().unwrap()[c as usize]
    }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
        payload: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    }
}

#[test]
fn tcp_connection_is_translated_both_ways() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let (action, out) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_SYN)).bytes(),
    );
    assert_eq!(action, XDP_REDIRECT, "LAN->WAN TCP is redirected");
    let p = parse(&out).expect("IPv4 out");
    assert_eq!(
        (p.dst_mac, p.src_mac),
        (GW_MACS[wan], WAN_MACS[wan]),
        "next hop is the WAN's gateway"
    );
    assert_eq!(
        (p.src, p.dst, p.ttl),
        (WAN_ADDRS[wan], SERVER, 63),
        "source NAT and TTL"
    );
    assert!(
        p.ip_checksum_ok && p.l4_checksum_ok,
        "checksums after NAT: {p:?}"
    );
    assert_eq!(p.dport, 80);
    let nat_port = p.sport;
    assert!(
        rig.nat_ports.contains(nat_port),
        "40000 is the router's own ephemeral range: replaced by {nat_port}"
    );

    let (action, back) = rig.run(
        Role::Wan,
        &from_server(wan, tcp(80, nat_port, TCP_SYN | TCP_ACK)).bytes(),
    );
    assert_eq!(action, XDP_REDIRECT, "the reply is redirected to the LAN");
    let p = parse(&back).unwrap();
    assert_eq!((p.dst_mac, p.src_mac), (CLIENT_MAC, LAN_MAC));
    assert_eq!(
        (p.src, p.dst, p.ttl, p.sport, p.dport),
        (SERVER, CLIENT, 49, 80, 40000)
    );
    assert!(
        p.ip_checksum_ok && p.l4_checksum_ok,
        "checksums after reverse NAT: {p:?}"
    );

    // Later packets of the connection keep the same WAN and port.
    let (_, again) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_ACK)).bytes(),
    );
    let p = parse(&again).unwrap();
    assert_eq!((p.src, p.sport), (WAN_ADDRS[wan], nat_port), "pinned");
    assert_eq!(rig.counter(Counter::FwdOut), 2);
    assert_eq!(rig.counter(Counter::FwdIn), 1);
    let w = rig.maps.wan_counters(wan as u8).unwrap();
    assert_eq!((w.tx_packets, w.rx_packets, w.flows_created), (2, 1, 1));
    let key = FlowKey::new(be(CLIENT), be(SERVER), 40000u16.to_be(), 80u16.to_be(), 6);
    let entry = rig.maps.ct_out.get(&key, 0).unwrap();
    assert_eq!(entry.packets, 2, "the opening SYN counts too");
    assert_eq!(
        entry.tcp_flags,
        pcc_common::CT_TCP_SYN | pcc_common::CT_TCP_ACK,
        "flags seen from the host"
    );
}

#[test]
fn udp_keeps_a_free_port_and_a_zero_checksum() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    for checksum in [true, false] {
        let sport = if checksum { 5000 } else { 5001 };
        let l4 = L4::Udp {
            sport,
            dport: 53,
            payload: b"query".to_vec(),
            checksum,
        };
        let (action, out) = rig.run(Role::Lan, &from_client(CLIENT, CLIENT_MAC, l4).bytes());
        assert_eq!(action, XDP_REDIRECT);
        let p = parse(&out).unwrap();
        assert_eq!(
            (p.src, p.sport),
            (WAN_ADDRS[wan], sport),
            "a free port outside the router's range is kept"
        );
        assert!(p.ip_checksum_ok && p.l4_checksum_ok);
        assert_eq!(
            p.udp_checksum_zero, !checksum,
            "UDP checksum 0 (none) stays 0"
        );

        let reply = L4::Udp {
            sport: 53,
            dport: sport,
            payload: b"answer".to_vec(),
            checksum,
        };
        let (action, back) = rig.run(Role::Wan, &from_server(wan, reply).bytes());
        assert_eq!(action, XDP_REDIRECT);
        let p = parse(&back).unwrap();
        assert_eq!((p.dst, p.dport), (CLIENT, sport));
        assert!(p.ip_checksum_ok && p.l4_checksum_ok);
    }
}

#[test]
fn two_hosts_on_the_same_port_get_distinct_nat_ports() {
    let mut rig = Rig::new(1024);
    // Force both onto one WAN: only wan 0 in the table.
    let mut w = [0; MAX_WANS];
    w[0] = 1;
    rig.maps.slots.set(0, slots::build(&w), 0).unwrap();
    let l4 = || L4::Udp {
        sport: 5000,
        dport: 53,
        payload: vec![1, 2, 3],
        checksum: true,
    };
    let (_, a) = rig.run(Role::Lan, &from_client(CLIENT, CLIENT_MAC, l4()).bytes());
    let (_, b) = rig.run(Role::Lan, &from_client(CLIENT2, CLIENT2_MAC, l4()).bytes());
    let (a, b) = (parse(&a).unwrap(), parse(&b).unwrap());
    assert_eq!((a.src, b.src), (WAN_ADDRS[0], WAN_ADDRS[0]));
    assert_eq!(a.sport, 5000, "the first keeps its port");
    assert_ne!(b.sport, 5000, "the second gets another");
    for (sport, client, mac) in [
        (a.sport, CLIENT, CLIENT_MAC),
        (b.sport, CLIENT2, CLIENT2_MAC),
    ] {
        let reply = L4::Udp {
            sport: 53,
            dport: sport,
            payload: vec![9],
            checksum: true,
        };
        let (action, back) = rig.run(Role::Wan, &from_server(0, reply).bytes());
        assert_eq!(action, XDP_REDIRECT);
        let p = parse(&back).unwrap();
        assert_eq!(
            (p.dst, p.dport, p.dst_mac),
            (client, 5000, mac),
            "each reply reaches its own host"
        );
    }
}

#[test]
fn icmp_echo_translates_the_identifier() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let echo = L4::Icmp {
        kind: 8,
        code: 0,
        rest: [0x9c, 0x40, 0, 1],
        payload: vec![0xab; 32],
    }; // id 40000
    let (action, out) = rig.run(Role::Lan, &from_client(CLIENT, CLIENT_MAC, echo).bytes());
    assert_eq!(action, XDP_REDIRECT);
    let p = parse(&out).unwrap();
    assert!(p.ip_checksum_ok && p.l4_checksum_ok);
    assert_eq!(p.src, WAN_ADDRS[wan]);
    let id = p.sport;
    let mut rest = [0u8; 4];
    rest[..2].copy_from_slice(&id.to_be_bytes());
    rest[3] = 1;
    let reply = L4::Icmp {
        kind: 0,
        code: 0,
        rest,
        payload: vec![0xab; 32],
    };
    let (action, back) = rig.run(Role::Wan, &from_server(wan, reply).bytes());
    assert_eq!(action, XDP_REDIRECT);
    let p = parse(&back).unwrap();
    assert_eq!((p.dst, p.sport), (CLIENT, 40000), "echo reply id restored");
    assert!(p.ip_checksum_ok && p.l4_checksum_ok);
}

/// An ICMP error from a router on the path, quoting what we sent (after NAT).
fn icmp_error(wan: usize, kind: u8, code: u8, quoted: Vec<u8>) -> Frame {
    let rest = if kind == 3 && code == 4 {
        [0, 0, 0x05, 0x78]
    } else {
        [0; 4]
    }; // next-hop MTU 1400
    Frame {
        dst_mac: WAN_MACS[wan],
        src_mac: GW_MACS[wan],
        src: Ipv4Addr::new(198, 18, 1, 1),
        dst: WAN_ADDRS[wan],
        ttl: 60,
        id: 3,
        l4: L4::Icmp {
            kind,
            code,
            rest,
            payload: quoted,
        },
    }
}

#[test]
fn icmp_errors_about_our_connections_are_translated_inside_too() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    // UDP: port unreachable, quoting the whole datagram.
    let (_, sent) = rig.run(
        Role::Lan,
        &from_client(
            CLIENT,
            CLIENT_MAC,
            L4::Udp {
                sport: 40001,
                dport: 53,
                payload: b"q".to_vec(),
                checksum: true,
            },
        )
        .bytes(),
    );
    let quoted = sent[14..].to_vec();
    let nat_port = parse(&sent).unwrap().sport;
    let (action, back) = rig.run(Role::Wan, &icmp_error(wan, 3, 3, quoted).bytes());
    assert_eq!(action, XDP_REDIRECT, "port unreachable goes to the host");
    let outer = parse(&back).unwrap();
    assert_eq!((outer.dst, outer.dst_mac), (CLIENT, CLIENT_MAC));
    assert!(
        outer.ip_checksum_ok && outer.l4_checksum_ok,
        "outer IP and ICMP checksums: {outer:?}"
    );
    let mut inner_frame = back[..14].to_vec();
    inner_frame.extend_from_slice(&outer.l4[8..]);
    let inner = parse(&inner_frame).unwrap();
    assert_eq!(
        (inner.src, inner.sport, inner.dst, inner.dport),
        (CLIENT, 40001, SERVER, 53),
        "quoted header back to the host's view"
    );
    assert!(
        inner.ip_checksum_ok && inner.l4_checksum_ok,
        "quoted IP and UDP checksums: {inner:?}"
    );
    assert_ne!(nat_port, 40001);
    assert_eq!(rig.counter(Counter::FwdIcmpError), 1);

    // TCP: fragmentation needed quoting only the first 8 bytes (path-MTU discovery).
    let (_, sent) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, tcp(40002, 443, TCP_ACK)).bytes(),
    );
    let quoted = sent[14..14 + 28].to_vec();
    let (action, back) = rig.run(Role::Wan, &icmp_error(wan, 3, 4, quoted).bytes());
    assert_eq!(
        action, XDP_REDIRECT,
        "fragmentation needed goes to the host"
    );
    let outer = parse(&back).unwrap();
    assert!(outer.ip_checksum_ok && outer.l4_checksum_ok);
    assert_eq!(&outer.l4[4..8], &[0, 0, 0x05, 0x78], "the MTU survives");
    let q = &outer.l4[8..];
    assert_eq!(&q[12..16], &CLIENT.octets(), "quoted source");
    assert_eq!(u16::from_be_bytes([q[20], q[21]]), 40002, "quoted port");
    assert_eq!(
        pcc_common::csum::checksum(&q[..20]),
        0,
        "quoted IP checksum"
    );

    // ICMP echo: time exceeded (traceroute).
    let echo = L4::Icmp {
        kind: 8,
        code: 0,
        rest: [0x12, 0x34, 0, 7],
        payload: vec![0; 8],
    };
    let (_, sent) = rig.run(Role::Lan, &from_client(CLIENT, CLIENT_MAC, echo).bytes());
    let (action, back) = rig.run(
        Role::Wan,
        &icmp_error(wan, 11, 0, sent[14..14 + 28].to_vec()).bytes(),
    );
    assert_eq!(action, XDP_REDIRECT);
    let outer = parse(&back).unwrap();
    assert!(outer.ip_checksum_ok && outer.l4_checksum_ok);
    let q = &outer.l4[8..];
    assert_eq!(u16::from_be_bytes([q[24], q[25]]), 0x1234, "quoted echo id");
    assert_eq!(
        pcc_common::csum::checksum(&q[20..28]),
        0,
        "quoted echo checksum (8 bytes, no payload)"
    );
}

#[test]
fn unsolicited_and_unknown_wan_traffic_goes_to_the_kernel() {
    let mut rig = Rig::new(1024);
    let (action, _) = rig.run(Role::Wan, &from_server(0, tcp(80, 40000, TCP_SYN)).bytes());
    assert_eq!(
        action, XDP_PASS,
        "no connection: the kernel decides, the dataplane never forwards"
    );
    let to_lan = Frame {
        dst: CLIENT,
        ..from_server(0, tcp(80, 40000, TCP_SYN))
    };
    assert_eq!(rig.run(Role::Wan, &to_lan.bytes()).0, XDP_PASS);
    let quoted = ipv4_packet(
        WAN_ADDRS[0],
        SERVER,
        64,
        1,
        17,
        &[0x13, 0x88, 0, 53, 0, 8, 0, 0],
    );
    assert_eq!(
        rig.run(Role::Wan, &icmp_error(0, 3, 3, quoted).bytes()).0,
        XDP_PASS,
        "error about no connection"
    );
    assert_eq!(rig.counter(Counter::PassUntracked), 3);
    assert_eq!(rig.counter(Counter::FwdIn), 0);
}

#[test]
fn lan_traffic_the_fast_path_does_not_own_is_passed_or_dropped_and_counted() {
    let mut rig = Rig::new(1024);
    let udp = || L4::Udp {
        sport: 5000,
        dport: 53,
        payload: vec![1],
        checksum: true,
    };
    let cases: Vec<(&str, Vec<u8>, u32, Counter)> = vec![
        (
            "ARP",
            {
                let mut f = from_client(CLIENT, CLIENT_MAC, udp()).bytes();
                f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
                f
            },
            XDP_PASS,
            Counter::PassNotIpv4,
        ),
        (
            "TTL 1",
            Frame {
                ttl: 1,
                ..from_client(CLIENT, CLIENT_MAC, udp())
            }
            .bytes(),
            XDP_PASS,
            Counter::PassTtl,
        ),
        (
            "to the router",
            Frame {
                dst: LAN_ADDR,
                ..from_client(CLIENT, CLIENT_MAC, udp())
            }
            .bytes(),
            XDP_PASS,
            Counter::PassLocal,
        ),
        (
            "to a WAN address",
            Frame {
                dst: WAN_ADDRS[1],
                ..from_client(CLIENT, CLIENT_MAC, udp())
            }
            .bytes(),
            XDP_PASS,
            Counter::PassLocal,
        ),
        (
            "multicast",
            Frame {
                dst: Ipv4Addr::new(239, 1, 1, 1),
                ..from_client(CLIENT, CLIENT_MAC, udp())
            }
            .bytes(),
            XDP_PASS,
            Counter::PassLocal,
        ),
        (
            "spoofed source",
            Frame {
                src: Ipv4Addr::new(198, 18, 77, 1),
                ..from_client(CLIENT, CLIENT_MAC, udp())
            }
            .bytes(),
            XDP_DROP,
            Counter::DropSpoofed,
        ),
        (
            "Ethernet header only",
            from_client(CLIENT, CLIENT_MAC, udp()).bytes()[..14].to_vec(),
            XDP_DROP,
            Counter::DropRunt,
        ),
        (
            "truncated IP",
            from_client(CLIENT, CLIENT_MAC, udp()).bytes()[..30].to_vec(),
            XDP_DROP,
            Counter::DropRunt,
        ),
        (
            "GRE",
            {
                let mut f = from_client(CLIENT, CLIENT_MAC, udp()).bytes();
                f[23] = 47;
                f
            },
            XDP_PASS,
            Counter::PassUnsupported,
        ),
    ];
    for (what, frame, want, counter) in cases {
        let before = rig.counter(counter);
        let (action, _) = rig.run(Role::Lan, &frame);
        assert_eq!(action, want, "{what}");
        assert_eq!(
            rig.counter(counter),
            before + 1,
            "{what} counted as {counter:?}"
        );
    }
    assert_eq!(rig.counter(Counter::FwdOut), 0);
}

#[test]
fn a_full_conntrack_table_drops_new_connections_and_keeps_old_ones() {
    let mut rig = Rig::new(16);
    let mut opened = 0;
    for port in 0..40u16 {
        let (action, _) = rig.run(
            Role::Lan,
            &from_client(CLIENT, CLIENT_MAC, tcp(2000 + port, 80, TCP_SYN)).bytes(),
        );
        if action == XDP_REDIRECT {
            opened += 1;
        } else {
            assert_eq!(action, XDP_DROP);
        }
    }
    assert!(
        (12..=16).contains(&opened),
        "{opened} connections fit a 16-entry table"
    );
    assert_eq!(rig.counter(Counter::DropConntrackFull), 40 - opened);
    let (action, _) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, tcp(2000, 80, TCP_ACK)).bytes(),
    );
    assert_eq!(action, XDP_REDIRECT, "an existing connection still flows");
}

#[test]
fn a_connection_on_a_dead_wan_moves_to_a_live_one() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let l4 = || L4::Udp {
        sport: 5000,
        dport: 53,
        payload: vec![1],
        checksum: true,
    };
    let (_, out) = rig.run(Role::Lan, &from_client(CLIENT, CLIENT_MAC, l4()).bytes());
    assert_eq!(parse(&out).unwrap().src, WAN_ADDRS[wan]);
    let mut info = rig.maps.wans.get(&(wan as u32), 0).unwrap();
    info.flags = 0;
    rig.maps.wans.set(wan as u32, info, 0).unwrap();
    let (action, out) = rig.run(Role::Lan, &from_client(CLIENT, CLIENT_MAC, l4()).bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        parse(&out).unwrap().src,
        WAN_ADDRS[1 - wan],
        "re-pinned to the live WAN"
    );
    let key = FlowKey::new(be(CLIENT), be(SERVER), 5000u16.to_be(), 53u16.to_be(), 17);
    assert_eq!(
        rig.maps.ct_out.get(&key, 0).unwrap().wan_id as usize,
        1 - wan
    );
}

#[test]
fn a_reset_for_an_unknown_connection_opens_nothing() {
    let mut rig = Rig::new(1024);
    let (action, _) = rig.run(
        Role::Lan,
        &from_client(
            CLIENT,
            CLIENT_MAC,
            tcp(40000, 80, pcc_common::packet::TCP_RST),
        )
        .bytes(),
    );
    assert_eq!(action, XDP_PASS);
    assert_eq!(rig.counter(Counter::PassUntracked), 1);
    assert_eq!(rig.maps.ct_out.keys().count(), 0, "no conntrack entry");
}

/// The garbage collector removes closed and idle connections (returning their NAT ports)
/// and keeps live ones.
#[test]
fn garbage_collection_expires_closed_and_idle_connections() {
    use pcc_common::{conntrack::Timeouts, packet::TCP_FIN};
    use pcc_ctl::conntrack::{collect, monotonic_ns};
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    // An established TCP connection, closed both ways.
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
    // An open one, and a UDP flow.
    rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, tcp(40001, 80, TCP_SYN)).bytes(),
    );
    rig.run(
        Role::Lan,
        &from_client(
            CLIENT,
            CLIENT_MAC,
            L4::Udp {
                sport: 5000,
                dport: 53,
                payload: vec![1],
                checksum: true,
            },
        )
        .bytes(),
    );
    let t = Timeouts::default();
    let now = monotonic_ns();
    let report = collect(&mut rig.maps, &t, now, true).unwrap();
    assert_eq!(
        (report.active, report.expired),
        (3, 0),
        "nothing expires at once: {report:?}"
    );
    let report = collect(&mut rig.maps, &t, now + 11_000_000_000, true).unwrap();
    assert_eq!(
        (report.active, report.expired),
        (2, 1),
        "the closed connection goes after 10 s: {report:?}"
    );
    let report = collect(&mut rig.maps, &t, now + 31_000_000_000, true).unwrap();
    assert_eq!(
        (report.active, report.expired),
        (1, 1),
        "unanswered UDP after 30 s: {report:?}"
    );
    let report = collect(&mut rig.maps, &t, now + 121_000_000_000, true).unwrap();
    assert_eq!(
        (report.active, report.expired),
        (0, 1),
        "unanswered SYN after 120 s: {report:?}"
    );
    assert_eq!(rig.maps.ct_in.keys().count(), 0, "every NAT port returned");
    // A reply half without its twin is an orphan.
    rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, tcp(40002, 80, TCP_SYN)).bytes(),
    );
    let key = FlowKey::new(be(CLIENT), be(SERVER), 40002u16.to_be(), 80u16.to_be(), 6);
    rig.maps.ct_out.remove(&key).unwrap();
    let report = collect(&mut rig.maps, &t, monotonic_ns() + 3_000_000_000, true).unwrap();
    assert_eq!(report.orphans, 1);
    assert_eq!(rig.maps.ct_in.keys().count(), 0);
}
