//! The XDP programs run in the kernel on crafted frames (BPF_PROG_TEST_RUN): exact bytes out,
//! every checksum recomputed from scratch. Needs root (loading BPF).
mod rig;

use std::net::Ipv4Addr;

use pcc_bench::testbed::*;
use pcc_common::{
    Counter, CtEvent, FlowKey, MAX_WANS,
    packet::{Frame, L4, TCP_ACK, TCP_SYN, ipv4_packet, parse},
    slots,
};
use pcc_ctl::dataplane::Role;
use rig::*;

#[test]
fn tcp_connection_is_translated_both_ways() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let syn = from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_SYN));
    let (action, out) = rig.run(Role::Lan, &syn.bytes());
    assert_eq!(action, XDP_REDIRECT, "LAN->WAN TCP is redirected");
    let nat_port = parse(&out).expect("IPv4 out").sport;
    assert_eq!(
        nat_port, 40000,
        "the host's own port is kept when free, the ephemeral range included"
    );
    assert_frame(
        "SYN out: source NAT, WAN MAC to the gateway's, TTL - 1",
        &out,
        &out_via(&syn, wan, nat_port),
    );

    let syn_ack = from_server(wan, tcp(80, nat_port, TCP_SYN | TCP_ACK));
    let (action, back) = rig.run(Role::Wan, &syn_ack.bytes());
    assert_eq!(action, XDP_REDIRECT, "the reply is redirected to the LAN");
    assert_frame(
        "SYN-ACK back: reverse NAT, LAN MAC to the host's, TTL - 1",
        &back,
        &reply_to(&syn_ack, &HOST, 40000),
    );

    // Later packets of the connection keep the same WAN and port.
    let ack = from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_ACK));
    let (_, again) = rig.run(Role::Lan, &ack.bytes());
    assert_frame("ACK out: pinned", &again, &out_via(&ack, wan, nat_port));
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

/// A host that keeps its address but sends from a new MAC (its NIC swapped) mid-connection:
/// the connection stays as it was, and its replies go to the new MAC from then on.
#[test]
fn replies_follow_a_host_that_changes_its_mac() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let udp = |sport, dport, payload: &[u8]| L4::Udp {
        sport,
        dport,
        payload: payload.to_vec(),
        checksum: true,
    };
    let (_, out) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, udp(5000, 53, b"before")).bytes(),
    );
    let nat_port = parse(&out).expect("IPv4 out").sport;
    let answer = from_server(wan, udp(53, nat_port, b"answer"));
    let (_, back) = rig.run(Role::Wan, &answer.bytes());
    assert_frame(
        "answer to the old MAC",
        &back,
        &reply_to(&answer, &HOST, 5000),
    );

    const NEW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
    let moved = Host {
        mac: NEW_MAC,
        ..HOST
    };
    let after = from_client(CLIENT, NEW_MAC, udp(5000, 53, b"after"));
    let (action, out) = rig.run(Role::Lan, &after.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_frame("same connection", &out, &out_via(&after, wan, nat_port));
    let (_, back) = rig.run(Role::Wan, &answer.bytes());
    assert_frame(
        "answer to the new MAC",
        &back,
        &reply_to(&answer, &moved, 5000),
    );
    let w = rig.maps.wan_counters(wan as u8).unwrap();
    assert_eq!(w.flows_created, 1, "no new connection");
}

#[test]
fn udp_keeps_a_free_port_and_a_zero_checksum() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    for checksum in [true, false] {
        let sport = if checksum { 5000 } else { 5001 };
        let query = from_client(
            CLIENT,
            CLIENT_MAC,
            L4::Udp {
                sport,
                dport: 53,
                payload: b"query".to_vec(),
                checksum,
            },
        );
        let (action, out) = rig.run(Role::Lan, &query.bytes());
        assert_eq!(action, XDP_REDIRECT);
        // The expected frames' UDP checksum is 0 exactly when the host sent none.
        assert_frame(
            &format!(
                "query out (checksum {checksum}): a free port outside the router's range is kept"
            ),
            &out,
            &out_via(&query, wan, sport),
        );

        let answer = from_server(
            wan,
            L4::Udp {
                sport: 53,
                dport: sport,
                payload: b"answer".to_vec(),
                checksum,
            },
        );
        let (action, back) = rig.run(Role::Wan, &answer.bytes());
        assert_eq!(action, XDP_REDIRECT);
        assert_frame(
            &format!("answer back (checksum {checksum})"),
            &back,
            &reply_to(&answer, &HOST, sport),
        );
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
    for (sport, host) in [(a.sport, &HOST), (b.sport, &HOST2)] {
        let reply = from_server(
            0,
            L4::Udp {
                sport: 53,
                dport: sport,
                payload: vec![9],
                checksum: true,
            },
        );
        let (action, back) = rig.run(Role::Wan, &reply.bytes());
        assert_eq!(action, XDP_REDIRECT);
        assert_frame(
            &format!("the reply to NAT port {sport} reaches its own host"),
            &back,
            &reply_to(&reply, host, 5000),
        );
    }
}

#[test]
fn icmp_echo_translates_the_identifier() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let request = from_client(CLIENT, CLIENT_MAC, echo(8, 40000, 1, vec![0xab; 32]));
    let (action, out) = rig.run(Role::Lan, &request.bytes());
    assert_eq!(action, XDP_REDIRECT);
    let id = parse(&out).unwrap().sport;
    assert_frame(
        "echo request out: the identifier plays the port",
        &out,
        &out_via(&request, wan, id),
    );
    let reply = from_server(wan, echo(0, id, 1, vec![0xab; 32]));
    let (action, back) = rig.run(Role::Wan, &reply.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_frame(
        "echo reply back: identifier restored",
        &back,
        &reply_to(&reply, &HOST, 40000),
    );
}

#[test]
fn icmp_errors_about_our_connections_are_translated_inside_too() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    // Each: what the host sends, the error about it (type, code) and how much of the
    // translated packet the error quotes.
    let cases = [
        (
            "UDP: port unreachable, quoting the whole datagram",
            L4::Udp {
                // A privileged port: outside the NAT range, so it is translated.
                sport: 1001,
                dport: 53,
                payload: b"q".to_vec(),
                checksum: true,
            },
            (3, 3),
            usize::MAX,
        ),
        (
            "TCP: fragmentation needed with the next-hop MTU, quoting the IP header and 8 bytes \
             (path-MTU discovery): no TCP checksum quoted",
            tcp(40002, 443, TCP_SYN),
            (3, 4),
            28,
        ),
        (
            "ICMP echo: time exceeded (traceroute)",
            echo(8, 0x1234, 7, vec![0; 8]),
            (11, 0),
            28,
        ),
    ];
    for (n, (what, l4, (kind, code), quoted)) in cases.into_iter().enumerate() {
        let sent = from_client(CLIENT, CLIENT_MAC, l4);
        let (_, out) = rig.run(Role::Lan, &sent.bytes());
        let nat_port = parse(&out).unwrap().sport;
        assert_frame(
            &format!("{what}: sent"),
            &out,
            &out_via(&sent, wan, nat_port),
        );
        let quote = out[14..].iter().take(quoted).copied().collect();
        let err = icmp_error(wan, kind, code, quote);
        let (action, back) = rig.run(Role::Wan, &err.bytes());
        assert_eq!(action, XDP_REDIRECT, "{what}: to the host");
        assert_frame(
            &format!("{what}: outer header to the host, quoted header back to its view"),
            &back,
            &error_to(&err, &HOST, &sent),
        );
        assert_eq!(rig.counter(Counter::FwdIcmpError), n as u64 + 1);
        if n == 0 {
            assert_ne!(nat_port, 1001, "the quoted port was translated");
        }
    }
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
                with_valid_ip_checksum(f)
            },
            XDP_PASS,
            Counter::PassUnsupported,
        ),
    ];
    rig.check_lan_cases(LO, cases);
    assert_eq!(rig.counter(Counter::FwdOut), 0);
}

/// LAN 1 of the two-LAN test bed: its router address, and one host on it.
const LAN1_ADDR: Ipv4Addr = Ipv4Addr::new(198, 19, 20, 1);
const HOST1: Host = Host {
    addr: Ipv4Addr::new(198, 19, 20, 11),
    mac: [0x02, 0, 0, 0, 0, 0x21],
    lan_mac: [0x02, 0, 0, 0, 0, 0x02],
};

/// With two LAN ports, each host's replies leave by its own port with that port's MAC; LAN to
/// LAN is the kernel's; a source on the wrong port is dropped as spoofed (BCP 38), also on
/// a connection its rightful owner has open.
#[test]
fn two_lans_each_get_their_replies_and_keep_their_sources() {
    let mut rig = Rig::new(1024);
    let lan1 = own_port("lan1").expect("a veth port of the test's own (root, iproute2)");
    rig.set_lan(1, lan1, LAN1_ADDR, HOST1.lan_mac).unwrap();
    let udp = |sport| L4::Udp {
        sport,
        dport: 53,
        payload: b"query".to_vec(),
        checksum: true,
    };
    let from_lan1 = |l4| Frame {
        dst_mac: HOST1.lan_mac,
        ..from_client(HOST1.addr, HOST1.mac, l4)
    };
    // A connection from each LAN, each on its own port.
    let mut answers = Vec::new();
    for (host, port, sport) in [(&HOST, LO, 5000), (&HOST1, lan1, 5001)] {
        let query = Frame {
            dst_mac: host.lan_mac,
            ..from_client(host.addr, host.mac, udp(sport))
        };
        let (action, out) = rig.run_on(Role::Lan, port, &query.bytes());
        assert_eq!(action, XDP_REDIRECT, "{} opens a connection", host.addr);
        let wan = rig.expected_wan(host.addr, SERVER);
        assert_frame("query out", &out, &out_via(&query, wan, sport));
        answers.push(from_server(
            wan,
            L4::Udp {
                sport: 53,
                dport: sport,
                payload: b"answer".to_vec(),
                checksum: true,
            },
        ));
    }
    for (answer, host, sport) in [(&answers[0], &HOST, 5000), (&answers[1], &HOST1, 5001)] {
        let (action, back) = rig.run(Role::Wan, &answer.bytes());
        assert_eq!(action, XDP_REDIRECT);
        assert_frame(
            &format!("answer to {}, from its own LAN port's MAC", host.addr),
            &back,
            &reply_to(answer, host, sport),
        );
    }

    rig.check_lan_cases(
        LO,
        vec![
            (
                "LAN 0 to a LAN 1 host",
                Frame {
                    dst: HOST1.addr,
                    ..from_client(CLIENT, CLIENT_MAC, udp(5002))
                }
                .bytes(),
                XDP_PASS,
                Counter::PassLocal,
            ),
            (
                "a LAN 1 source on LAN 0's port",
                from_client(HOST1.addr, HOST1.mac, udp(5003)).bytes(),
                XDP_DROP,
                Counter::DropSpoofed,
            ),
            (
                "a LAN 1 source on LAN 0's port, on its open connection",
                from_client(HOST1.addr, HOST1.mac, udp(5001)).bytes(),
                XDP_DROP,
                Counter::DropSpoofed,
            ),
        ],
    );
    rig.check_lan_cases(
        lan1,
        vec![
            (
                "LAN 1 to a LAN 0 host",
                Frame {
                    dst: CLIENT,
                    ..from_lan1(udp(5004))
                }
                .bytes(),
                XDP_PASS,
                Counter::PassLocal,
            ),
            (
                "LAN 1 to the router's LAN 0 address",
                Frame {
                    dst: LAN_ADDR,
                    ..from_lan1(udp(5005))
                }
                .bytes(),
                XDP_PASS,
                Counter::PassLocal,
            ),
            (
                "a LAN 0 source on LAN 1's port",
                Frame {
                    src: CLIENT,
                    ..from_lan1(udp(5006))
                }
                .bytes(),
                XDP_DROP,
                Counter::DropSpoofed,
            ),
            (
                "a LAN 0 source on LAN 1's port, on its open connection",
                Frame {
                    src: CLIENT,
                    ..from_lan1(udp(5000))
                }
                .bytes(),
                XDP_DROP,
                Counter::DropSpoofed,
            ),
            (
                "LAN 1's own connection goes on",
                from_lan1(udp(5001)).bytes(),
                XDP_REDIRECT,
                Counter::FwdOut,
            ),
        ],
    );
    assert_eq!(
        rig.maps.ct_out.keys().count(),
        2,
        "no other connection opened"
    );

    // LAN 1's answers go through LAN 1's DEVMAP slot: with its port gone they cannot be
    // redirected, while LAN 0's still are.
    ip(&["link", "del", "lan1"]).unwrap();
    assert_eq!(rig.run(Role::Wan, &answers[1].bytes()).0, XDP_DROP);
    assert_eq!(rig.counter(Counter::DropRedirect), 1);
    assert_eq!(rig.run(Role::Wan, &answers[0].bytes()).0, XDP_REDIRECT);
}

#[test]
fn a_full_table_drops_unanswered_connections_first_and_never_answered_ones() {
    let mut rig = Rig::new(16);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let syn = |port: u16| from_client(CLIENT, CLIENT_MAC, tcp(port, 80, TCP_SYN)).bytes();
    // Ten answered connections (their ports are free, so they are kept).
    for port in 2000..2010u16 {
        assert_eq!(rig.run(Role::Lan, &syn(port)).0, XDP_REDIRECT);
        let syn_ack = from_server(wan, tcp(80, port, TCP_SYN | TCP_ACK));
        assert_eq!(rig.run(Role::Wan, &syn_ack.bytes()).0, XDP_REDIRECT);
    }
    // Forty unanswered ones: once the table is full, each new one pushes out an older one
    // that never got a reply.
    for port in 3000..3040u16 {
        assert_eq!(
            rig.run(Role::Lan, &syn(port)).0,
            XDP_REDIRECT,
            "SYN from {port}"
        );
    }
    let events = rig.maps.ct_events().unwrap();
    let early = events[CtEvent::EarlyDropped as usize];
    assert!(
        (24..=40).contains(&early),
        "{early} unanswered connections dropped to make room"
    );
    assert_eq!(rig.counter(Counter::DropConntrackFull), 0);
    for port in 2000..2010u16 {
        let key = FlowKey::new(be(CLIENT), be(SERVER), port.to_be(), 80u16.to_be(), 6);
        assert!(rig.maps.ct_out.get(&key, 0).is_ok(), "answered {port} kept");
        let ack = from_client(CLIENT, CLIENT_MAC, tcp(port, 80, TCP_ACK));
        assert_eq!(
            rig.run(Role::Lan, &ack.bytes()).0,
            XDP_REDIRECT,
            "{port} flows"
        );
    }
    // A table of answered connections only: a new one is refused.
    for port in 4000..4040u16 {
        if rig.run(Role::Lan, &syn(port)).0 != XDP_REDIRECT {
            break;
        }
        let syn_ack = from_server(wan, tcp(80, port, TCP_SYN | TCP_ACK));
        rig.run(Role::Wan, &syn_ack.bytes());
    }
    assert!(
        rig.counter(Counter::DropConntrackFull) > 0,
        "refused when full of answered ones"
    );
    for port in 2000..2010u16 {
        let ack = from_client(CLIENT, CLIENT_MAC, tcp(port, 80, TCP_ACK));
        assert_eq!(
            rig.run(Role::Lan, &ack.bytes()).0,
            XDP_REDIRECT,
            "{port} still flows"
        );
    }
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

/// Only a SYN opens a TCP connection (nf_conntrack's rule): a server's SYN-ACK, a
/// mid-stream ACK after failover, a FIN or a lone reset matching nothing get no mapping.
#[test]
fn only_a_syn_opens_a_tcp_connection() {
    use pcc_common::packet::{TCP_FIN, TCP_RST};
    let mut rig = Rig::new(1024);
    let cases = [
        ("reset", TCP_RST),
        ("reset-ack", TCP_RST | TCP_ACK),
        ("mid-stream ACK", TCP_ACK),
        ("server's SYN-ACK", TCP_SYN | TCP_ACK),
        ("FIN", TCP_FIN | TCP_ACK),
        ("SYN+RST", TCP_SYN | TCP_RST),
    ]
    .into_iter()
    .map(|(what, flags)| {
        let frame = from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, flags)).bytes();
        (what, frame, XDP_PASS, Counter::PassTcpNotSyn)
    })
    .collect();
    rig.check_lan_cases(LO, cases);
    assert_eq!(rig.maps.ct_out.keys().count(), 0, "no conntrack entry");
    let (action, _) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_SYN)).bytes(),
    );
    assert_eq!((action, rig.maps.ct_out.keys().count()), (XDP_REDIRECT, 1));
}
