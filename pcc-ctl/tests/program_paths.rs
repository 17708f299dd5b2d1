//! The paths a router meets outside the lab, run in the kernel on crafted frames
//! (BPF_PROG_TEST_RUN): MTUs smaller than the LAN's ("fragmentation needed" built by the
//! dataplane, MSS clamped both ways), ICMP errors from the LAN translated out, and resets that
//! only count inside the window. Exact bytes out; needs root.
mod rig;

use std::net::Ipv4Addr;

use pcc_bench::testbed::*;
use pcc_common::{
    CT_TCP_RST, CT_TCP_SYN, Counter, FlowKey,
    packet::{Frame, L4, TcpSegment, mss_option, parse},
    proto::{IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_RST, TCP_SYN},
};
use pcc_ctl::dataplane::Role;
use rig::*;

impl Rig {
    /// Every WAN's MTU becomes `mtu` (a PPPoE line: 1492).
    fn set_wan_mtu(&mut self, mtu: u16) {
        for i in 0..2u32 {
            let mut wan = self.maps.wans.get(&i, 0).unwrap();
            wan.mtu = mtu;
            self.maps.wans.set(i, wan, 0).unwrap();
        }
    }

    fn set_lan_mtu(&mut self, mtu: u16) {
        let mut lan = self.maps.lans.get(&0, 0).unwrap();
        lan.mtu = mtu;
        self.maps.lans.set(0, lan, 0).unwrap();
    }
}

/// UDP from the client whose IPv4 packet is `tot_len` bytes long.
fn udp_of(tot_len: usize) -> L4 {
    L4::Udp {
        sport: 5000,
        dport: 53,
        payload: vec![0x5a; tot_len - 28],
        checksum: true,
    }
}

/// `frame` with the IPv4 don't-fragment bit cleared (the fixtures set it, as hosts doing
/// path-MTU discovery do) and the header checksum made valid again.
fn without_df(mut frame: Vec<u8>) -> Vec<u8> {
    frame[20] &= !0x40;
    with_valid_ip_checksum(frame)
}

/// The "fragmentation needed" `sender_frame` must bring back from `router`, carrying `mtu`
/// (RFC 1191).
fn frag_needed(sender_frame: &Frame, router: Ipv4Addr, mtu: u16) -> Frame {
    let [hi, lo] = mtu.to_be_bytes();
    unreachable_from(sender_frame, router, 4, [0, 0, hi, lo])
}

#[test]
fn df_packets_over_the_wan_mtu_get_fragmentation_needed_from_the_dataplane() {
    let mut rig = Rig::new(1024);
    rig.set_wan_mtu(1492);
    let big = from_client(CLIENT, CLIENT_MAC, udp_of(1500));
    let (action, out) = rig.run(Role::Lan, &big.bytes());
    assert_eq!(action, XDP_REDIRECT, "answered back out of the LAN port");
    assert_frame(
        "the first packet of a connection",
        &out,
        &frag_needed(&big, LAN_ADDR, 1492),
    );
    assert_eq!(rig.counter(Counter::AnsweredFragNeeded), 1);
    assert_eq!(rig.maps.ct_out.keys().count(), 0, "it opened nothing");

    let fits = from_client(CLIENT, CLIENT_MAC, udp_of(1492));
    assert_eq!(
        rig.run(Role::Lan, &fits.bytes()).0,
        XDP_REDIRECT,
        "1492 fits"
    );
    let (action, out) = rig.run(Role::Lan, &big.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_frame(
        "a packet of an open connection",
        &out,
        &frag_needed(&big, LAN_ADDR, 1492),
    );

    let cases = vec![(
        "no DF: pcc does not fragment, and never hands it to the kernel's own route",
        without_df(big.bytes()),
        XDP_DROP,
        Counter::DropOverMtu,
    )];
    rig.check_lan_cases(LO, cases);
}

#[test]
fn replies_over_the_lan_mtu_get_fragmentation_needed_towards_the_server() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let (_, out) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, udp_of(100)).bytes(),
    );
    let nat_port = parse(&out).unwrap().sport;
    rig.set_lan_mtu(1400);
    let reply = from_server(
        wan,
        L4::Udp {
            sport: 53,
            dport: nat_port,
            payload: vec![7; 1472],
            checksum: true,
        },
    );
    let (action, out) = rig.run(Role::Wan, &reply.bytes());
    assert_eq!(action, XDP_REDIRECT, "answered back out of the WAN port");
    assert_frame(
        "from the WAN's address, quoting the reply as the server sent it",
        &out,
        &frag_needed(&reply, WAN_ADDRS[wan], 1400),
    );
    assert_eq!(rig.counter(Counter::AnsweredFragNeeded), 1);
}

#[test]
fn frames_bigger_than_their_own_port_are_super_frames_for_the_kernel() {
    let mut rig = Rig::new(1024);
    let super_frame = from_client(CLIENT, CLIENT_MAC, udp_of(3000));
    let cases = vec![(
        "larger than the LAN port's MTU: a TSO super-frame of a veth peer in generic mode",
        super_frame.bytes(),
        XDP_PASS,
        Counter::PassOversize,
    )];
    rig.check_lan_cases(LO, cases);
}

/// A SYN from `sport` with `options`.
fn syn_with(sport: u16, flags: u8, options: Vec<u8>) -> L4 {
    L4::TcpFull(TcpSegment {
        sport,
        dport: 443,
        seq: 7_000,
        ack: 0,
        flags,
        window: 64_240,
        options,
        payload: vec![],
    })
}

/// `l4` (a [`L4::TcpFull`]) with its options replaced.
fn with_options(l4: &L4, options: Vec<u8>) -> L4 {
    let L4::TcpFull(seg) = l4 else {
        panic!("not a full TCP segment")
    };
    L4::TcpFull(TcpSegment {
        options,
        ..seg.clone()
    })
}

#[test]
fn the_mss_of_syns_is_clamped_to_the_wan_mtu_both_ways() {
    let mut rig = Rig::new(1024);
    rig.set_wan_mtu(1492);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let sack_ws = [4, 2, 1, 3, 3, 7];
    let cases = [
        // (what, options sent, options the WAN must carry)
        (
            "MSS first, as Linux, Windows and macOS send it",
            [&mss_option(1460)[..], &sack_ws].concat(),
            [&mss_option(1452)[..], &sack_ws].concat(),
        ),
        (
            "MSS at an odd offset: its value straddles two checksum words",
            [&[1][..], &mss_option(1460), &[1, 1, 1]].concat(),
            [&[1][..], &mss_option(1452), &[1, 1, 1]].concat(),
        ),
        (
            "a smaller MSS is left alone",
            mss_option(1200).to_vec(),
            mss_option(1200).to_vec(),
        ),
        (
            "no MSS option: nothing to clamp",
            sack_ws.to_vec(),
            sack_ws.to_vec(),
        ),
    ];
    for (n, (what, sent_opts, want_opts)) in cases.into_iter().enumerate() {
        let sent = from_client(
            CLIENT,
            CLIENT_MAC,
            syn_with(41000 + n as u16, TCP_SYN, sent_opts),
        );
        let (action, out) = rig.run(Role::Lan, &sent.bytes());
        assert_eq!(action, XDP_REDIRECT, "{what}");
        let nat_port = parse(&out).unwrap().sport;
        let want = Frame {
            l4: with_options(&sent.l4, want_opts),
            ..sent.clone()
        };
        assert_frame(what, &out, &out_via(&want, wan, nat_port));
    }
    let key = client_key(41000, 443, IPPROTO_TCP);
    assert_eq!(
        rig.maps.ct_out.get(&key, 0).unwrap().lan_wscale,
        7,
        "the host's window scale, for the reset check"
    );

    // The server's SYN-ACK: the host must not send what the WAN cannot carry either.
    let (_, out) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, syn_with(42000, TCP_SYN, vec![])).bytes(),
    );
    let nat_port = parse(&out).unwrap().sport;
    let syn_ack = from_server(
        wan,
        L4::TcpFull(TcpSegment {
            sport: 443,
            dport: nat_port,
            seq: 90_000,
            ack: 7_001,
            flags: TCP_SYN | TCP_ACK,
            window: 65_535,
            options: [&mss_option(1460)[..], &[1, 3, 3, 9]].concat(),
            payload: vec![],
        }),
    );
    let (action, back) = rig.run(Role::Wan, &syn_ack.bytes());
    assert_eq!(action, XDP_REDIRECT);
    let want = Frame {
        l4: with_options(&syn_ack.l4, [&mss_option(1452)[..], &[1, 3, 3, 9]].concat()),
        ..syn_ack.clone()
    };
    assert_frame("SYN-ACK to the host", &back, &reply_to(&want, &HOST, 42000));
}

/// A segment of the connection from `sport` to 443.
fn segment(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, window: u16) -> L4 {
    L4::TcpFull(TcpSegment {
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
        options: vec![],
        payload: vec![],
    })
}

#[test]
fn a_reset_counts_only_inside_the_window_the_host_advertised() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let host = |l4| from_client(CLIENT, CLIENT_MAC, l4).bytes();
    // The host announces window scale 7: its 100-unit window is 12800 bytes.
    let (_, out) = rig.run(Role::Lan, &host(syn_with(43000, TCP_SYN, vec![1, 3, 3, 7])));
    let nat_port = parse(&out).unwrap().sport;
    let server = |seq, flags| from_server(wan, segment(443, nat_port, seq, 7_001, flags, 5000));
    assert_eq!(
        rig.run(Role::Wan, &server(1_000, TCP_SYN | TCP_ACK).bytes())
            .0,
        XDP_REDIRECT
    );
    rig.run(
        Role::Lan,
        &host(segment(43000, 443, 7_001, 1_001, TCP_ACK, 100)),
    );
    let reply_key = FlowKey::new(
        be(SERVER),
        be(WAN_ADDRS[wan]),
        443u16.to_be(),
        nat_port.to_be(),
        IPPROTO_TCP,
    );
    let reset_seen = |rig: &Rig| rig.maps.ct_in.get(&reply_key, 0).unwrap().tcp_flags & CT_TCP_RST;

    for (what, seq) in [
        ("past the window (blind spoof)", 1_001 + 12_800),
        ("before the window", 1_000),
        ("half the sequence space away", 1_001 + (1 << 31)),
    ] {
        let (action, _) = rig.run(Role::Wan, &server(seq, TCP_RST).bytes());
        assert_eq!(action, XDP_DROP, "{what}");
        assert_eq!(reset_seen(&rig), 0, "{what}: the connection stays open");
    }
    assert_eq!(rig.counter(Counter::DropRstOutOfWindow), 3);

    let (action, _) = rig.run(Role::Wan, &server(1_001 + 12_799, TCP_RST).bytes());
    assert_eq!(
        action, XDP_REDIRECT,
        "inside the window: to the host, which decides"
    );
    assert_ne!(reset_seen(&rig), 0, "and the connection is closing");

    // The host opens the same tuple again after the server's reset: a clean new connection.
    rig.run(Role::Lan, &host(syn_with(43000, TCP_SYN, vec![])));
    let key = client_key(43000, 443, IPPROTO_TCP);
    let out = rig.maps.ct_out.get(&key, 0).unwrap();
    assert_eq!(
        out.tcp_flags, CT_TCP_SYN,
        "reopened, not the old closed state"
    );
}

#[test]
fn a_reset_answering_a_syn_counts_whatever_its_sequence_number() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let (_, out) = rig.run(
        Role::Lan,
        &from_client(CLIENT, CLIENT_MAC, syn_with(44000, TCP_SYN, vec![])).bytes(),
    );
    let nat_port = parse(&out).unwrap().sport;
    let refused = from_server(wan, segment(443, nat_port, 0, 7_001, TCP_RST | TCP_ACK, 0));
    assert_eq!(
        rig.run(Role::Wan, &refused.bytes()).0,
        XDP_REDIRECT,
        "connection refused reaches the host (it checks the acknowledgment itself)"
    );
}

/// An ICMP error of `kind` and `code` quoting `quote`.
fn icmp_error_l4(kind: u8, code: u8, quote: Vec<u8>) -> L4 {
    L4::Icmp {
        kind,
        code,
        rest: [0; 4],
        payload: quote,
    }
}

#[test]
fn icmp_errors_from_the_lan_leave_translated_like_their_connection() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let cases = [
        (
            "UDP: port unreachable from a host that closed its port, quoting the whole datagram",
            L4::Udp {
                sport: 5000,
                dport: 53,
                payload: b"q".to_vec(),
                checksum: true,
            },
            (3, 3),
            usize::MAX,
        ),
        (
            "TCP: time exceeded, IP header and 8 bytes quoted (no TCP checksum)",
            syn_with(45000, TCP_SYN, vec![]),
            (11, 0),
            28,
        ),
    ];
    for (n, (what, l4, (kind, code), quoted)) in cases.into_iter().enumerate() {
        let sent = from_client(CLIENT, CLIENT_MAC, l4.clone());
        let (_, out) = rig.run(Role::Lan, &sent.bytes());
        let nat_port = parse(&out).unwrap().sport;
        let reply_l4 = match l4 {
            L4::TcpFull(s) => segment(443, nat_port, 1, s.seq + 1, TCP_SYN | TCP_ACK, 100),
            _ => with_port(&with_port(&l4, false, nat_port), true, 53),
        };
        let reply = from_server(wan, reply_l4);
        let (action, back) = rig.run(Role::Wan, &reply.bytes());
        assert_eq!(action, XDP_REDIRECT, "{what}: the reply reaches the host");
        // The host quotes what it received.
        let mut quote = back[14..].to_vec();
        quote.truncate(quoted);
        let error = from_client(CLIENT, CLIENT_MAC, icmp_error_l4(kind, code, quote));
        let (action, out) = rig.run(Role::Lan, &error.bytes());
        assert_eq!(action, XDP_REDIRECT, "{what}: out of the connection's WAN");
        // The server must see its own packet quoted, as it sent it but for the TTL.
        let mut want_quote = Frame {
            ttl: reply.ttl - 1,
            ..reply.clone()
        }
        .ip_bytes();
        want_quote.truncate(quoted);
        let want = Frame {
            dst_mac: GW_MACS[wan],
            src_mac: WAN_MACS[wan],
            src: WAN_ADDRS[wan],
            ttl: error.ttl - 1,
            l4: icmp_error_l4(kind, code, want_quote),
            ..error.clone()
        };
        assert_frame(what, &out, &want);
        assert_eq!(rig.counter(Counter::FwdIcmpErrorOut), n as u64 + 1);
    }

    // An error about nothing we know, and one from a source the LAN does not own.
    let unknown = from_server(0, segment(80, 1234, 5, 6, TCP_ACK, 1)).ip_bytes();
    let stray = from_client(
        CLIENT,
        CLIENT_MAC,
        icmp_error_l4(3, 3, unknown[..28].to_vec()),
    );
    let spoofed = Frame {
        src: Ipv4Addr::new(198, 18, 99, 7),
        ..stray.clone()
    };
    let cases = vec![
        (
            "matches no connection: the kernel's (its guard drops it as invalid)",
            stray.bytes(),
            XDP_PASS,
            Counter::PassUntracked,
        ),
        (
            "from outside every LAN subnet",
            spoofed.bytes(),
            XDP_DROP,
            Counter::DropSpoofed,
        ),
    ];
    rig.check_lan_cases(LO, cases);
}

#[test]
fn frames_for_other_macs_and_damaged_headers_are_not_ours() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let udp = from_client(CLIENT, CLIENT_MAC, udp_of(100));
    let mut damaged = udp.bytes();
    damaged[22] ^= 0x10; // the TTL, under an unchanged checksum
    let cases = vec![
        (
            "to another host's MAC, seen by a promiscuous LAN port (tcpdump, a bridge member)",
            Frame {
                dst_mac: CLIENT2_MAC,
                ..udp.clone()
            }
            .bytes(),
            XDP_PASS,
            Counter::PassOtherHost,
        ),
        (
            "an ICMP error for another host's MAC: not translated out either",
            Frame {
                dst_mac: CLIENT2_MAC,
                ..from_client(
                    CLIENT,
                    CLIENT_MAC,
                    icmp_error_l4(3, 3, udp.ip_bytes()[..28].to_vec()),
                )
            }
            .bytes(),
            XDP_PASS,
            Counter::PassOtherHost,
        ),
        (
            "IPv4 header checksum wrong: ip_rcv_core drops it too",
            damaged,
            XDP_DROP,
            Counter::DropBadIpChecksum,
        ),
    ];
    rig.check_lan_cases(LO, cases);
    assert_eq!(rig.maps.ct_out.keys().count(), 0, "nothing opened");

    let (_, out) = rig.run(Role::Lan, &udp.bytes());
    let nat_port = parse(&out).unwrap().sport;
    let reply = from_server(
        wan,
        with_port(&with_port(&udp.l4, false, nat_port), true, 53),
    );
    let stray = Frame {
        dst_mac: GW_MACS[1 - wan],
        ..reply.clone()
    };
    let before = rig.counter(Counter::PassOtherHost);
    assert_eq!(
        rig.run(Role::Wan, &stray.bytes()).0,
        XDP_PASS,
        "a WAN frame for another MAC"
    );
    assert_eq!(rig.counter(Counter::PassOtherHost), before + 1);
    assert_eq!(
        rig.run(Role::Wan, &reply.bytes()).0,
        XDP_REDIRECT,
        "the reply itself"
    );
}

#[test]
fn a_connection_whose_wan_changed_address_is_never_sent_from_the_old_one() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let udp = from_client(CLIENT, CLIENT_MAC, udp_of(100));
    let (_, out) = rig.run(Role::Lan, &udp.bytes());
    assert_eq!(parse(&out).unwrap().src, WAN_ADDRS[wan]);
    // DHCP hands the WAN a new address while the flow keeps sending.
    let renumbered = Ipv4Addr::new(198, 18, 1, 77);
    let mut info = rig.maps.wans.get(&(wan as u32), 0).unwrap();
    info.addr = be(renumbered);
    rig.maps.wans.set(wan as u32, info, 0).unwrap();
    let (action, out) = rig.run(Role::Lan, &udp.bytes());
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        parse(&out).unwrap().src,
        renumbered,
        "re-pinned at its next packet, from the WAN's new address"
    );
    let key = client_key(5000, 53, IPPROTO_UDP);
    assert_eq!(
        rig.maps.ct_out.get(&key, 0).unwrap().nat_addr,
        be(renumbered)
    );
    assert_eq!(
        rig.maps.ct_in.keys().count(),
        1,
        "the old reply entry is gone"
    );
}
