//! The XDP programs run in the kernel on crafted frames (BPF_PROG_TEST_RUN): exact bytes out,
//! every checksum recomputed from scratch. Needs root (loading BPF).
//!
//! Each test is a fixture table in Katran's style (`rig::Case`): a row is what it shows, the
//! frame in, the XDP action and counter it must end in, and the frame that must come out. The
//! rows of a test run in order on one dataplane, so a reply row finds the connection an
//! earlier row opened; where a row needs what an earlier one chose (a NAT port), the test
//! runs the table in two parts.
mod rig;

use std::net::Ipv4Addr;

use pcc_bench::testbed::*;
use pcc_common::{
    Counter, CtEvent, MAX_WANS,
    packet::{Frame, L4, ipv4_packet, parse},
    proto::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    slots,
};
use pcc_ctl::dataplane::Role;
use rig::*;

fn udp(sport: u16, dport: u16, payload: &[u8]) -> L4 {
    L4::Udp {
        sport,
        dport,
        payload: payload.to_vec(),
        checksum: true,
    }
}

#[test]
fn tcp_connection_is_translated_both_ways() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let syn = from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_SYN));
    let syn_ack = from_server(wan, tcp(80, 40000, TCP_SYN | TCP_ACK));
    let ack = from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, TCP_ACK));
    rig.check(vec![
        // The host's own port is kept when free, the ephemeral range included.
        Case::lan(
            "SYN out: source NAT, WAN MAC to the gateway's, TTL - 1",
            &syn,
        )
        .sends(Counter::FwdOut, out_via(&syn, wan, 40000)),
        Case::wan(
            "SYN-ACK back: reverse NAT, LAN MAC to the host's, TTL - 1",
            &syn_ack,
        )
        .sends(Counter::FwdIn, reply_to(&syn_ack, &HOST, 40000)),
        // Later packets of the connection keep the same WAN and port.
        Case::lan("ACK out: pinned", &ack).sends(Counter::FwdOut, out_via(&ack, wan, 40000)),
    ]);
    assert_eq!(rig.counter(Counter::FwdOut), 2);
    assert_eq!(rig.counter(Counter::FwdIn), 1);
    let w = rig.maps.wan_counters(wan as u8).unwrap();
    assert_eq!((w.tx_packets, w.rx_packets, w.flows_created), (2, 1, 1));
    let key = client_key(40000, 80, IPPROTO_TCP);
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
    const NEW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
    let moved = Host {
        mac: NEW_MAC,
        ..HOST
    };
    let before = from_client(CLIENT, CLIENT_MAC, udp(5000, 53, b"before"));
    let answer = from_server(wan, udp(53, 5000, b"answer"));
    let after = from_client(CLIENT, NEW_MAC, udp(5000, 53, b"after"));
    rig.check(vec![
        Case::lan("query from the old MAC", &before)
            .sends(Counter::FwdOut, out_via(&before, wan, 5000)),
        Case::wan("answer to the old MAC", &answer)
            .sends(Counter::FwdIn, reply_to(&answer, &HOST, 5000)),
        Case::lan("same connection from the new MAC", &after)
            .sends(Counter::FwdOut, out_via(&after, wan, 5000)),
        Case::wan("answer to the new MAC", &answer)
            .sends(Counter::FwdIn, reply_to(&answer, &moved, 5000)),
    ]);
    let w = rig.maps.wan_counters(wan as u8).unwrap();
    assert_eq!(w.flows_created, 1, "no new connection");
}

#[test]
fn udp_keeps_a_free_port_and_a_zero_checksum() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let cases = [true, false].into_iter().flat_map(|checksum| {
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
        let answer = from_server(
            wan,
            L4::Udp {
                sport: 53,
                dport: sport,
                payload: b"answer".to_vec(),
                checksum,
            },
        );
        // The expected frames' UDP checksum is 0 exactly when the host sent none.
        [
            Case::lan(
                format!(
                    "query out (checksum {checksum}): a free port outside the router's range \
                     is kept"
                ),
                &query,
            )
            .sends(Counter::FwdOut, out_via(&query, wan, sport)),
            Case::wan(format!("answer back (checksum {checksum})"), &answer)
                .sends(Counter::FwdIn, reply_to(&answer, &HOST, sport)),
        ]
    });
    rig.check(cases.collect());
}

#[test]
fn two_hosts_on_the_same_port_get_distinct_nat_ports() {
    let mut rig = Rig::new(1024);
    // Force both onto one WAN: only wan 0 in the table.
    let mut w = [0; MAX_WANS];
    w[0] = 1;
    rig.maps.slots.set(0, slots::build(&w), 0).unwrap();
    let a = from_client(CLIENT, CLIENT_MAC, udp(5000, 53, &[1, 2, 3]));
    let b = from_client(CLIENT2, CLIENT2_MAC, udp(5000, 53, &[1, 2, 3]));
    let b_out = b.clone();
    let out = rig.check(vec![
        Case::lan("the first keeps its port", &a).sends(Counter::FwdOut, out_via(&a, 0, 5000)),
        Case::lan("the second gets another", &b)
            .sends_with_nat_port(Counter::FwdOut, move |port| out_via(&b_out, 0, port)),
    ]);
    let b_port = parse(&out[1]).unwrap().sport;
    assert_ne!(b_port, 5000, "the second gets another");
    let replies = [(5000, &HOST), (b_port, &HOST2)].map(|(sport, host)| {
        let reply = from_server(0, udp(53, sport, &[9]));
        Case::wan(
            format!("the reply to NAT port {sport} reaches its own host"),
            &reply,
        )
        .sends(Counter::FwdIn, reply_to(&reply, host, 5000))
    });
    rig.check(replies.into());
}

#[test]
fn icmp_echo_translates_the_identifier() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let request = from_client(CLIENT, CLIENT_MAC, echo(8, 40000, 1, vec![0xab; 32]));
    let sent = request.clone();
    let out = rig.check(vec![
        Case::lan("echo request out: the identifier plays the port", &request)
            .sends_with_nat_port(Counter::FwdOut, move |id| out_via(&sent, wan, id)),
    ]);
    let id = parse(&out[0]).unwrap().sport;
    let reply = from_server(wan, echo(0, id, 1, vec![0xab; 32]));
    rig.check(vec![
        Case::wan("echo reply back: identifier restored", &reply)
            .sends(Counter::FwdIn, reply_to(&reply, &HOST, 40000)),
    ]);
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
            // A privileged port: outside the NAT range, so it is translated.
            udp(1001, 53, b"q"),
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
        let host_sent = sent.clone();
        let out = rig.check(vec![
            Case::lan(format!("{what}: sent"), &sent)
                .sends_with_nat_port(Counter::FwdOut, move |port| out_via(&host_sent, wan, port)),
        ]);
        let nat_port = parse(&out[0]).unwrap().sport;
        let quote = out[0][14..].iter().take(quoted).copied().collect();
        let err = icmp_error(wan, kind, code, quote);
        rig.check(vec![
            Case::wan(
                format!("{what}: outer header to the host, quoted header back to its view"),
                &err,
            )
            .sends(Counter::FwdIcmpError, error_to(&err, &HOST, &sent)),
        ]);
        assert_eq!(rig.counter(Counter::FwdIcmpError), n as u64 + 1);
        if n == 0 {
            assert_ne!(nat_port, 1001, "the quoted port was translated");
        }
    }
}

#[test]
fn unsolicited_and_unknown_wan_traffic_goes_to_the_kernel() {
    let mut rig = Rig::new(1024);
    let quoted = ipv4_packet(
        WAN_ADDRS[0],
        SERVER,
        64,
        1,
        17,
        &[0x13, 0x88, 0, 53, 0, 8, 0, 0],
    );
    rig.check(vec![
        Case::wan(
            "no connection: the kernel decides, the dataplane never forwards",
            from_server(0, tcp(80, 40000, TCP_SYN)),
        )
        .passed(Counter::PassUntracked),
        Case::wan(
            "to a LAN address",
            Frame {
                dst: CLIENT,
                ..from_server(0, tcp(80, 40000, TCP_SYN))
            },
        )
        .passed(Counter::PassUntracked),
        Case::wan("error about no connection", icmp_error(0, 3, 3, quoted))
            .passed(Counter::PassUntracked),
    ]);
    assert_eq!(rig.counter(Counter::PassUntracked), 3);
    assert_eq!(rig.counter(Counter::FwdIn), 0);
}

#[test]
fn lan_traffic_the_fast_path_does_not_own_is_passed_or_dropped_and_counted() {
    let mut rig = Rig::new(1024);
    let sent = || from_client(CLIENT, CLIENT_MAC, udp(5000, 53, &[1]));
    rig.check(vec![
        Case::lan("ARP", {
            let mut f = sent().bytes();
            f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            f
        })
        .passed(Counter::PassNotIpv4),
        Case::lan("TTL 1", Frame { ttl: 1, ..sent() }).passed(Counter::PassTtl),
        Case::lan(
            "to the router",
            Frame {
                dst: LAN_ADDR,
                ..sent()
            },
        )
        .passed(Counter::PassLocal),
        Case::lan(
            "to a WAN address",
            Frame {
                dst: WAN_ADDRS[1],
                ..sent()
            },
        )
        .passed(Counter::PassLocal),
        Case::lan(
            "multicast",
            Frame {
                dst: Ipv4Addr::new(239, 1, 1, 1),
                ..sent()
            },
        )
        .passed(Counter::PassLocal),
        Case::lan(
            "spoofed source",
            Frame {
                src: Ipv4Addr::new(198, 18, 77, 1),
                ..sent()
            },
        )
        .dropped(Counter::DropSpoofed),
        Case::lan("Ethernet header only", sent().bytes()[..14].to_vec()).dropped(Counter::DropRunt),
        Case::lan("truncated IP", sent().bytes()[..30].to_vec()).dropped(Counter::DropRunt),
        Case::lan("GRE", {
            let mut f = sent().bytes();
            f[23] = 47;
            with_valid_ip_checksum(f)
        })
        .passed(Counter::PassUnsupported),
    ]);
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
    let query = |sport| udp(sport, 53, b"query");
    let from_lan0 = |l4| from_client(CLIENT, CLIENT_MAC, l4);
    let from_lan1 = |l4| Frame {
        dst_mac: HOST1.lan_mac,
        ..from_client(HOST1.addr, HOST1.mac, l4)
    };
    let (out0, out1) = (from_lan0(query(5000)), from_lan1(query(5001)));
    let (wan0, wan1) = (
        rig.expected_wan(HOST.addr, SERVER),
        rig.expected_wan(HOST1.addr, SERVER),
    );
    let answers = [
        from_server(wan0, udp(53, 5000, b"answer")),
        from_server(wan1, udp(53, 5001, b"answer")),
    ];
    rig.check(vec![
        // A connection from each LAN, each on its own port.
        Case::lan(format!("{} opens a connection", HOST.addr), &out0)
            .sends(Counter::FwdOut, out_via(&out0, wan0, 5000)),
        Case::lan(format!("{} opens a connection", HOST1.addr), &out1)
            .on(lan1)
            .sends(Counter::FwdOut, out_via(&out1, wan1, 5001)),
        Case::wan(
            format!("answer to {}, from its own LAN port's MAC", HOST.addr),
            &answers[0],
        )
        .sends(Counter::FwdIn, reply_to(&answers[0], &HOST, 5000)),
        Case::wan(
            format!("answer to {}, from its own LAN port's MAC", HOST1.addr),
            &answers[1],
        )
        .sends(Counter::FwdIn, reply_to(&answers[1], &HOST1, 5001)),
        // LAN 0's port.
        Case::lan(
            "LAN 0 to a LAN 1 host",
            Frame {
                dst: HOST1.addr,
                ..from_lan0(query(5002))
            },
        )
        .passed(Counter::PassLocal),
        Case::lan(
            "a LAN 1 source on LAN 0's port",
            from_client(HOST1.addr, HOST1.mac, query(5003)),
        )
        .dropped(Counter::DropSpoofed),
        Case::lan(
            "a LAN 1 source on LAN 0's port, on its open connection",
            from_client(HOST1.addr, HOST1.mac, query(5001)),
        )
        .dropped(Counter::DropSpoofed),
        // LAN 1's port.
        Case::lan(
            "LAN 1 to a LAN 0 host",
            Frame {
                dst: CLIENT,
                ..from_lan1(query(5004))
            },
        )
        .on(lan1)
        .passed(Counter::PassLocal),
        Case::lan(
            "LAN 1 to the router's LAN 0 address",
            Frame {
                dst: LAN_ADDR,
                ..from_lan1(query(5005))
            },
        )
        .on(lan1)
        .passed(Counter::PassLocal),
        Case::lan(
            "a LAN 0 source on LAN 1's port",
            Frame {
                src: CLIENT,
                ..from_lan1(query(5006))
            },
        )
        .on(lan1)
        .dropped(Counter::DropSpoofed),
        Case::lan(
            "a LAN 0 source on LAN 1's port, on its open connection",
            Frame {
                src: CLIENT,
                ..from_lan1(query(5000))
            },
        )
        .on(lan1)
        .dropped(Counter::DropSpoofed),
        Case::lan("LAN 1's own connection goes on", from_lan1(query(5001)))
            .on(lan1)
            .redirected(Counter::FwdOut),
    ]);
    assert_eq!(
        rig.maps.ct_out.keys().count(),
        2,
        "no other connection opened"
    );

    // LAN 1's answers go through LAN 1's DEVMAP slot: with its port gone they cannot be
    // redirected, while LAN 0's still are.
    ip(&["link", "del", "lan1"]).unwrap();
    rig.check(vec![
        Case::wan("an answer to LAN 1, its port gone", &answers[1]).dropped(Counter::DropRedirect),
        Case::wan("an answer to LAN 0", &answers[0]).redirected(Counter::FwdIn),
    ]);
    assert_eq!(rig.counter(Counter::DropRedirect), 1);
}

#[test]
fn a_full_table_drops_unanswered_connections_first_and_never_answered_ones() {
    let mut rig = Rig::new(16);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let syn = |port: u16| from_client(CLIENT, CLIENT_MAC, tcp(port, 80, TCP_SYN));
    let syn_ack = |port: u16| from_server(wan, tcp(80, port, TCP_SYN | TCP_ACK));
    let ack = |port: u16| from_client(CLIENT, CLIENT_MAC, tcp(port, 80, TCP_ACK));
    let answered = 2000..2010u16;
    // Ten answered connections (their ports are free, so they are kept).
    let open = answered.clone().flat_map(|port| {
        [
            Case::lan(format!("SYN from {port}"), syn(port)).redirected(Counter::FwdOut),
            Case::wan(format!("SYN-ACK to {port}"), syn_ack(port)).redirected(Counter::FwdIn),
        ]
    });
    // Forty unanswered ones: once the table is full, each new one pushes out an older one
    // that never got a reply.
    let unanswered = (3000..3040u16)
        .map(|port| Case::lan(format!("SYN from {port}"), syn(port)).redirected(Counter::FwdOut));
    rig.check(open.chain(unanswered).collect());
    let events = rig.maps.ct_events().unwrap();
    let early = events[CtEvent::EarlyDropped as usize];
    assert!(
        (24..=40).contains(&early),
        "{early} unanswered connections dropped to make room"
    );
    assert_eq!(rig.counter(Counter::DropConntrackFull), 0);
    for port in answered.clone() {
        let key = client_key(port, 80, IPPROTO_TCP);
        assert!(rig.maps.ct_out.get(&key, 0).is_ok(), "answered {port} kept");
    }
    let flows = |what: &'static str| -> Vec<Case> {
        answered
            .clone()
            .map(move |port| {
                Case::lan(format!("{port} {what}"), ack(port)).redirected(Counter::FwdOut)
            })
            .collect()
    };
    rig.check(flows("flows"));
    // A table of answered connections only: a new one is refused.
    for port in 4000..4040u16 {
        if rig.run(Role::Lan, &syn(port).bytes()).0 != XDP_REDIRECT {
            break;
        }
        rig.run(Role::Wan, &syn_ack(port).bytes());
    }
    assert!(
        rig.counter(Counter::DropConntrackFull) > 0,
        "refused when full of answered ones"
    );
    rig.check(flows("still flows"));
}

#[test]
fn a_connection_on_a_dead_wan_moves_to_a_live_one() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let query = from_client(CLIENT, CLIENT_MAC, udp(5000, 53, &[1]));
    rig.check(vec![
        Case::lan("opened on its WAN", &query).sends(Counter::FwdOut, out_via(&query, wan, 5000)),
    ]);
    let mut info = rig.maps.wans.get(&(wan as u32), 0).unwrap();
    info.flags = 0;
    rig.maps.wans.set(wan as u32, info, 0).unwrap();
    rig.check(vec![
        Case::lan("re-pinned to the live WAN", &query)
            .sends(Counter::FwdOut, out_via(&query, 1 - wan, 5000)),
    ]);
    let key = client_key(5000, 53, IPPROTO_UDP);
    assert_eq!(
        rig.maps.ct_out.get(&key, 0).unwrap().wan_id as usize,
        1 - wan
    );
}

/// Only a SYN opens a TCP connection (nf_conntrack's rule): a server's SYN-ACK, a
/// mid-stream ACK after failover, a FIN or a lone reset matching nothing get no mapping.
#[test]
fn only_a_syn_opens_a_tcp_connection() {
    let mut rig = Rig::new(1024);
    let sent = |flags| from_client(CLIENT, CLIENT_MAC, tcp(40000, 80, flags));
    let cases = [
        ("reset", TCP_RST),
        ("reset-ack", TCP_RST | TCP_ACK),
        ("mid-stream ACK", TCP_ACK),
        ("server's SYN-ACK", TCP_SYN | TCP_ACK),
        ("FIN", TCP_FIN | TCP_ACK),
        ("SYN+RST", TCP_SYN | TCP_RST),
    ]
    .map(|(what, flags)| Case::lan(what, sent(flags)).passed(Counter::PassTcpNotSyn));
    rig.check(cases.into());
    assert_eq!(rig.maps.ct_out.keys().count(), 0, "no conntrack entry");
    rig.check(vec![
        Case::lan("SYN", sent(TCP_SYN)).redirected(Counter::FwdOut),
    ]);
    assert_eq!(rig.maps.ct_out.keys().count(), 1);
}
