//! Hostile and unusual packets on both programs (BPF_PROG_TEST_RUN): each is forwarded
//! correctly, passed to the kernel, or dropped, and counted under its own reason; nothing
//! unsolicited from a WAN is ever redirected to the LAN. Fragmented datagrams are translated
//! whole. Needs root (loading BPF).
use std::net::Ipv4Addr;

use pcc_bench::testbed::{self, *};
use pcc_common::{
    Counter,
    packet::{ETH_P_ARP, ETH_P_IPV6, Frame, L4, parse, reassemble},
    proto::{TCP_ACK, TCP_SYN},
};
use pcc_ctl::dataplane::Role;

fn bed() -> TestBed {
    TestBed::new(1024).expect("loading BPF: run as root")
}

fn run(tb: &mut TestBed, role: Role, frame: &[u8]) -> (u32, Vec<u8>) {
    let (action, out, _) = tb.run(role, frame).expect("BPF_PROG_TEST_RUN");
    (action, out)
}

fn counter(tb: &TestBed, c: Counter) -> u64 {
    tb.maps.counters().expect("STATS")[c as usize]
}

fn udp(sport: u16, dport: u16, payload: usize) -> L4 {
    L4::Udp {
        sport,
        dport,
        payload: (0..payload).map(|i| (i * 7) as u8).collect(),
        checksum: true,
    }
}

fn tcp(sport: u16, dport: u16, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        flags,
        payload: vec![0x55; 32],
    }
}

fn from_client(l4: L4) -> Frame {
    testbed::from_client(CLIENT, CLIENT_MAC, l4)
}

/// Rewrites the IPv4 header checksum after a test edited the header.
fn fix_ip_checksum(f: &mut [u8]) {
    let ihl = usize::from(f[14] & 0xf) * 4;
    f[24..26].copy_from_slice(&[0, 0]);
    let end = (14 + ihl).min(f.len());
    let c = pcc_common::csum::checksum(&f[14..end]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

fn edited(frame: &Frame, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = frame.bytes();
    edit(&mut f);
    fix_ip_checksum(&mut f);
    f
}

/// `frame` under another EtherType: to the parser, no longer IPv4.
fn with_ether_type(frame: &Frame, ether_type: u16) -> Vec<u8> {
    let mut f = frame.bytes();
    f[12..14].copy_from_slice(&ether_type.to_be_bytes());
    f
}

/// Each case: what it is, the frame, the XDP action and the counter it must end in.
type Case = (&'static str, Vec<u8>, u32, Counter);

fn check_cases(tb: &mut TestBed, role: Role, cases: Vec<Case>) {
    for (what, frame, want, reason) in cases {
        eprintln!("case: {what}");
        let before = counter(tb, reason);
        let (action, _) = run(tb, role, &frame);
        assert_eq!(action, want, "{what}: action");
        assert_eq!(
            counter(tb, reason),
            before + 1,
            "{what}: counted as {reason:?}"
        );
    }
}

#[test]
fn hostile_lan_packets_are_each_handled_and_counted() {
    let mut tb = bed();
    let u = || from_client(udp(5000, 53, 16));
    let t = || from_client(tcp(40000, 80, TCP_SYN));
    let cases: Vec<Case> = vec![
        // BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet header, and neither does
        // a NIC hand one to XDP.
        (
            "Ethernet header only",
            u().bytes()[..14].to_vec(),
            XDP_DROP,
            Counter::DropRunt,
        ),
        (
            "IPv4 cut inside its header",
            u().bytes()[..30].to_vec(),
            XDP_DROP,
            Counter::DropRunt,
        ),
        (
            "IP version 6 in an IPv4 frame",
            edited(&u(), |f| f[14] = 0x65),
            XDP_DROP,
            Counter::DropBadIpHeader,
        ),
        (
            "IHL 4",
            edited(&u(), |f| f[14] = 0x44),
            XDP_DROP,
            Counter::DropBadIpHeader,
        ),
        (
            "IHL past the total length",
            edited(&u(), |f| {
                f[14] = 0x4f;
                f[16..18].copy_from_slice(&40u16.to_be_bytes());
            }),
            XDP_DROP,
            Counter::DropBadIpHeader,
        ),
        (
            "total length past the frame",
            edited(&u(), |f| f[16..18].copy_from_slice(&1400u16.to_be_bytes())),
            XDP_DROP,
            Counter::DropBadIpHeader,
        ),
        (
            "total length shorter than the IP header",
            edited(&u(), |f| f[16..18].copy_from_slice(&19u16.to_be_bytes())),
            XDP_DROP,
            Counter::DropBadIpHeader,
        ),
        (
            "total length shorter than the TCP header",
            edited(&t(), |f| f[16..18].copy_from_slice(&30u16.to_be_bytes())),
            XDP_DROP,
            Counter::DropBadTransportHeader,
        ),
        (
            "TCP data offset 4",
            edited(&t(), |f| f[46] = 4 << 4),
            XDP_DROP,
            Counter::DropBadTransportHeader,
        ),
        (
            "TCP data offset past the packet",
            edited(&t(), |f| f[46] = 15 << 4),
            XDP_DROP,
            Counter::DropBadTransportHeader,
        ),
        (
            "UDP length below 8",
            edited(&u(), |f| f[38..40].copy_from_slice(&4u16.to_be_bytes())),
            XDP_DROP,
            Counter::DropBadTransportHeader,
        ),
        (
            "UDP length past the packet",
            edited(&u(), |f| f[38..40].copy_from_slice(&900u16.to_be_bytes())),
            XDP_DROP,
            Counter::DropBadTransportHeader,
        ),
        (
            "TTL 0",
            Frame { ttl: 0, ..u() }.bytes(),
            XDP_PASS,
            Counter::PassTtl,
        ),
        (
            "TTL 1",
            Frame { ttl: 1, ..u() }.bytes(),
            XDP_PASS,
            Counter::PassTtl,
        ),
        (
            "IP options",
            edited(&u(), |f| {
                f[14] = 0x46;
                f.splice(34..34, [1, 1, 1, 0]);
                let tl = u16::from_be_bytes([f[16], f[17]]) + 4;
                f[16..18].copy_from_slice(&tl.to_be_bytes());
            }),
            XDP_PASS,
            Counter::PassIpOptions,
        ),
        (
            "limited broadcast",
            Frame {
                dst: Ipv4Addr::BROADCAST,
                ..u()
            }
            .bytes(),
            XDP_PASS,
            Counter::PassLocal,
        ),
        (
            "LAN subnet broadcast",
            Frame {
                dst: Ipv4Addr::new(198, 19, 10, 255),
                ..u()
            }
            .bytes(),
            XDP_PASS,
            Counter::PassLocal,
        ),
        (
            "multicast",
            Frame {
                dst: Ipv4Addr::new(224, 0, 0, 251),
                ..u()
            }
            .bytes(),
            XDP_PASS,
            Counter::PassLocal,
        ),
        (
            "source outside the LAN (BCP 38)",
            Frame {
                src: Ipv4Addr::new(203, 0, 113, 99),
                ..u()
            }
            .bytes(),
            XDP_DROP,
            Counter::DropSpoofed,
        ),
        (
            "source 0.0.0.0 to a remote host",
            Frame {
                src: Ipv4Addr::UNSPECIFIED,
                ..u()
            }
            .bytes(),
            XDP_DROP,
            Counter::DropSpoofed,
        ),
        (
            "802.1Q tagged",
            {
                let mut f = u().bytes();
                f.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
                f
            },
            XDP_PASS,
            Counter::PassNotIpv4,
        ),
        (
            "IPv6",
            with_ether_type(&u(), ETH_P_IPV6),
            XDP_PASS,
            Counter::PassNotIpv4,
        ),
        (
            "later fragment of a datagram never seen",
            from_client(udp(5001, 53, 3000)).fragments(1480)[1].clone(),
            XDP_DROP,
            Counter::DropFragmentUntracked,
        ),
    ];
    check_cases(&mut tb, Role::Lan, cases);
    assert_eq!(
        counter(&tb, Counter::FwdOut),
        0,
        "nothing above was forwarded"
    );
    // A UDP length shorter than the IP payload is legal (trailing bytes), and forwarded.
    let (action, _) = run(
        &mut tb,
        Role::Lan,
        &edited(&u(), |f| f[38..40].copy_from_slice(&10u16.to_be_bytes())),
    );
    assert_eq!(action, XDP_REDIRECT);
}

#[test]
fn unsolicited_wan_packets_never_reach_the_lan() {
    let mut tb = bed();
    let wan = tb.expected_wan(CLIENT, SERVER);
    // One real connection, so that its NAT port exists.
    let (action, out) = run(
        &mut tb,
        Role::Lan,
        &from_client(tcp(40000, 80, TCP_SYN)).bytes(),
    );
    assert_eq!(action, XDP_REDIRECT);
    let nat_port = parse(&out).expect("NATed SYN").sport;
    let quote = |src: Ipv4Addr, sport: u16| {
        let mut q = pcc_common::packet::ipv4_packet(src, SERVER, 64, 9, 17, &[0; 8]);
        q[20..22].copy_from_slice(&sport.to_be_bytes());
        q[22..24].copy_from_slice(&53u16.to_be_bytes());
        q
    };
    let icmp_error = |quoted: Vec<u8>| L4::Icmp {
        kind: 3,
        code: 3,
        rest: [0; 4],
        payload: quoted,
    };
    let cases: Vec<Case> = vec![
        (
            "unsolicited TCP",
            from_server(wan, tcp(80, 50000, TCP_SYN)).bytes(),
            XDP_PASS,
            Counter::PassUntracked,
        ),
        (
            "unsolicited UDP",
            from_server(wan, udp(53, 50001, 8)).bytes(),
            XDP_PASS,
            Counter::PassUntracked,
        ),
        (
            "unsolicited echo reply",
            from_server(
                wan,
                L4::Icmp {
                    kind: 0,
                    code: 0,
                    rest: [0, 9, 0, 1],
                    payload: vec![0; 8],
                },
            )
            .bytes(),
            XDP_PASS,
            Counter::PassUntracked,
        ),
        (
            "the NAT port from another remote endpoint",
            Frame {
                src: Ipv4Addr::new(203, 0, 113, 66),
                ..from_server(wan, tcp(80, nat_port, TCP_ACK))
            }
            .bytes(),
            XDP_PASS,
            Counter::PassUntracked,
        ),
        (
            "the NAT port from another remote port",
            from_server(wan, tcp(81, nat_port, TCP_ACK)).bytes(),
            XDP_PASS,
            Counter::PassUntracked,
        ),
        (
            "addressed straight to a LAN host",
            Frame {
                dst: CLIENT,
                ..from_server(wan, tcp(80, 40000, TCP_ACK))
            }
            .bytes(),
            XDP_PASS,
            Counter::PassUntracked,
        ),
        (
            "ICMP error quoting no connection",
            from_server(wan, icmp_error(quote(WAN_ADDRS[wan], 61000))).bytes(),
            XDP_PASS,
            Counter::PassUntracked,
        ),
        (
            "ICMP error quoting a LAN address",
            from_server(wan, icmp_error(quote(CLIENT, 40000))).bytes(),
            XDP_PASS,
            Counter::PassUntracked,
        ),
        (
            "later fragment of an unknown datagram",
            from_server(wan, udp(53, nat_port, 3000)).fragments(1480)[1].clone(),
            XDP_PASS,
            Counter::PassFragment,
        ),
        (
            "runt",
            from_server(wan, udp(1, 2, 0)).bytes()[..20].to_vec(),
            XDP_DROP,
            Counter::DropRunt,
        ),
        // What the kernel answers itself, even on the live connection's tuple.
        (
            "ARP",
            with_ether_type(&from_server(wan, tcp(80, nat_port, TCP_ACK)), ETH_P_ARP),
            XDP_PASS,
            Counter::PassNotIpv4,
        ),
        (
            "IPv6",
            with_ether_type(&from_server(wan, tcp(80, nat_port, TCP_ACK)), ETH_P_IPV6),
            XDP_PASS,
            Counter::PassNotIpv4,
        ),
        (
            "TTL 1 on the live connection",
            Frame {
                ttl: 1,
                ..from_server(wan, tcp(80, nat_port, TCP_ACK))
            }
            .bytes(),
            XDP_PASS,
            Counter::PassTtl,
        ),
        (
            "TTL 0 on the live connection",
            Frame {
                ttl: 0,
                ..from_server(wan, tcp(80, nat_port, TCP_ACK))
            }
            .bytes(),
            XDP_PASS,
            Counter::PassTtl,
        ),
    ];
    check_cases(&mut tb, Role::Wan, cases);
    assert_eq!(counter(&tb, Counter::FwdIn), 0, "nothing reached the LAN");
    assert_eq!(counter(&tb, Counter::FwdIcmpError), 0);
}

/// Every fragment of a 4 KB datagram each way is translated, and the translated fragments
/// reassemble into a datagram with a valid checksum, ports and addresses.
#[test]
fn fragmented_udp_is_translated_whole_both_ways() {
    let mut tb = bed();
    let wan = tb.expected_wan(CLIENT, SERVER);
    let out_frags = from_client(udp(5000, 7, 4000)).fragments(1480);
    assert_eq!(out_frags.len(), 3);
    let translated: Vec<Vec<u8>> = out_frags
        .iter()
        .map(|f| {
            let (action, out) = run(&mut tb, Role::Lan, f);
            assert_eq!(action, XDP_REDIRECT, "LAN fragment");
            out
        })
        .collect();
    let whole = parse(&reassemble(&translated).expect("fragments out reassemble")).expect("IPv4");
    assert_eq!((whole.src, whole.dst), (WAN_ADDRS[wan], SERVER));
    assert!(whole.ip_checksum_ok && whole.l4_checksum_ok, "{whole:?}");
    assert_eq!((whole.dport, whole.l4.len()), (7, 4008));
    let nat_port = whole.sport;

    // The echo, fragmented the other way, last fragment first after the first.
    let mut in_frags = from_server(wan, udp(7, nat_port, 4000)).fragments(1480);
    in_frags.swap(1, 2);
    let back: Vec<Vec<u8>> = in_frags
        .iter()
        .map(|f| {
            let (action, out) = run(&mut tb, Role::Wan, f);
            assert_eq!(action, XDP_REDIRECT, "WAN fragment");
            out
        })
        .collect();
    let whole = parse(&reassemble(&back).expect("fragments in reassemble")).expect("IPv4");
    assert_eq!((whole.src, whole.dst, whole.dport), (SERVER, CLIENT, 5000));
    assert!(whole.ip_checksum_ok && whole.l4_checksum_ok, "{whole:?}");
    assert_eq!(back[0][..6], CLIENT_MAC, "to the LAN host's MAC");
}

#[test]
fn fragmented_echo_request_is_translated() {
    let mut tb = bed();
    let echo = L4::Icmp {
        kind: 8,
        code: 0,
        rest: [0x33, 0x44, 0, 1],
        payload: vec![0xab; 3000],
    };
    let frags = from_client(echo).fragments(1480);
    let out: Vec<Vec<u8>> = frags
        .iter()
        .map(|f| {
            let (action, out) = run(&mut tb, Role::Lan, f);
            assert_eq!(action, XDP_REDIRECT);
            out
        })
        .collect();
    let whole = parse(&reassemble(&out).expect("reassembles")).expect("IPv4");
    assert!(whole.ip_checksum_ok && whole.l4_checksum_ok, "{whole:?}");
    assert_eq!(whole.l4.len(), 3008);
}
