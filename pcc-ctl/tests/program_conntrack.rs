//! The conntrack table run in the kernel on crafted frames (BPF_PROG_TEST_RUN): connections
//! expire by their own timers with no controller, a LAN endpoint keeps one public endpoint
//! whatever the remote one (RFC 4787 REQ-1), a host has a connection limit. Needs root.
mod rig;

use std::{net::Ipv4Addr, thread::sleep, time::Duration};

use pcc_common::{
    BindKey, Counter, CtEvent, FlowKey,
    conntrack::Timeouts,
    packet::{L4, TCP_ACK, TCP_FIN, TCP_SYN, parse},
};
use pcc_ctl::{dataplane::Role, testbed::*};
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
        self.maps.host_connections.get(&be(host), 0).unwrap_or(0)
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

#[test]
fn connections_expire_by_their_own_timers_with_no_controller() {
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
    // A TCP connection answered, then closed both ways: its timer, armed for the opening
    // timeout, is moved to `tcp_close` by the FINs.
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
        rig.maps.bind_out.keys().count(),
        3,
        "one binding per LAN endpoint"
    );

    sleep(Duration::from_millis(1600));
    assert!(
        rig.maps.ct_out.get(&key(40000, 80, 6), 0).is_err(),
        "closed TCP went after tcp_close"
    );
    assert_eq!(rig.maps.ct_out.keys().count(), 2);
    sleep(Duration::from_millis(1000));
    assert!(
        rig.maps.ct_out.get(&key(5000, 53, 17), 0).is_err(),
        "unanswered UDP went after udp"
    );
    sleep(Duration::from_millis(1800));
    assert_eq!(
        rig.maps.ct_out.keys().count(),
        0,
        "unanswered SYN went after tcp_opening"
    );
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
    // Refreshed every 300 ms for 2.4 s: its timer fires, finds it fresh, and re-arms.
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
        let frame = pcc_common::packet::Frame {
            dst: server,
            ..frame
        };
        assert_eq!(rig.run(Role::Lan, &frame.bytes()).0, XDP_REDIRECT);
    }
    let mut seen: [Option<u16>; 2] = [None, None];
    for (server, wan) in &wans {
        let frame = from_client(CLIENT, CLIENT_MAC, udp(40000, 3478));
        let frame = pcc_common::packet::Frame {
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
    let on_that_wan = wans.iter().filter(|(_, w)| *w == wans[0].1).count() as u64;
    assert_eq!(binding.refs, on_that_wan, "one reference per connection");
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
