//! Failover that kills nothing needlessly, run in the kernel on crafted frames
//! (BPF_PROG_TEST_RUN): an established TCP connection keeps leaving by its WAN while the WAN
//! is down (its replies keep coming back), while UDP and a TCP connection still opening move
//! to a live WAN; after `--failover-grace` the controller's reset goes to the LAN host and the
//! connection is forgotten. Exact bytes out; needs root.
mod rig;

use std::net::Ipv4Addr;

use pcc_bench::testbed::*;
use pcc_common::{
    Counter,
    failover::{Endpoint, reset_frame},
    packet::{Frame, L4, TcpSegment, parse},
    proto::{IPPROTO_TCP, TCP_ACK, TCP_SYN},
};
use pcc_ctl::{
    dataplane::Role,
    failover::{Resets, reset_wan},
};
use rig::*;

/// A TCP segment from `sport` to port 443 acknowledging `ack`.
fn segment(sport: u16, flags: u8, ack: u32) -> L4 {
    L4::TcpFull(TcpSegment {
        sport,
        dport: 443,
        seq: 1_000,
        ack,
        flags,
        window: 512,
        options: vec![],
        payload: if flags & TCP_SYN == 0 {
            b"keystroke".to_vec()
        } else {
            vec![]
        },
    })
}

fn udp() -> L4 {
    L4::Udp {
        sport: 5000,
        dport: 53,
        payload: vec![1],
        checksum: true,
    }
}

impl Rig {
    /// Sends `frame` from the LAN: it must be forwarded; returns what left.
    fn forwarded(&mut self, what: &str, frame: &Frame) -> Vec<u8> {
        let (action, out) = self.run(Role::Lan, &frame.bytes());
        assert_eq!(action, XDP_REDIRECT, "{what}");
        out
    }

    /// Sends `frame` from the LAN: it must be passed to the kernel, counted as `counter`.
    fn passed(&mut self, what: &str, frame: &Frame, counter: Counter) {
        self.check_lan_cases(LO, vec![(what, frame.bytes(), XDP_PASS, counter)]);
    }

    /// Opens a TCP connection of the client from `sport` to `dst` and has the server answer
    /// it, so the client acknowledges `ack`; returns the NAT port.
    fn established(&mut self, dst: Ipv4Addr, sport: u16, ack: u32) -> u16 {
        let wan = self.expected_wan(CLIENT, dst);
        let syn = Frame {
            dst,
            ..from_client(CLIENT, CLIENT_MAC, segment(sport, TCP_SYN, 0))
        };
        let nat_port = parse(&self.forwarded("SYN", &syn)).unwrap().sport;
        let syn_ack = Frame {
            src: dst,
            ..from_server(wan, tcp(443, nat_port, TCP_SYN | TCP_ACK))
        };
        assert_eq!(self.run(Role::Wan, &syn_ack.bytes()).0, XDP_REDIRECT);
        let ack = Frame {
            dst,
            ..from_client(CLIENT, CLIENT_MAC, segment(sport, TCP_ACK, ack))
        };
        self.forwarded("ACK", &ack);
        nat_port
    }

    fn set_wan(&mut self, wan: usize, change: impl FnOnce(&mut pcc_common::WanInfo)) {
        let mut info = self.maps.wans.get(&(wan as u32), 0).unwrap();
        change(&mut info);
        self.maps.wans.set(wan as u32, info, 0).unwrap();
    }
}

#[test]
fn established_tcp_stays_on_a_down_wan_while_udp_moves() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    let nat_port = rig.established(SERVER, 40000, 7_000);
    let opening = from_client(CLIENT, CLIENT_MAC, segment(40001, TCP_SYN, 0));
    rig.forwarded("a SYN never answered", &opening);
    let datagram = from_client(CLIENT, CLIENT_MAC, udp());
    rig.forwarded("UDP", &datagram);

    // The internet beyond the gateway dies (health): the WAN is down.
    rig.set_wan(wan, |w| w.flags = 0);
    let fwd = rig.counter(Counter::FwdOut);
    let data = from_client(CLIENT, CLIENT_MAC, segment(40000, TCP_ACK, 7_000));
    let out = rig.forwarded("TCP on the down WAN", &data);
    assert_frame(
        "established TCP keeps its WAN and NAT port",
        &out,
        &out_via(&data, wan, nat_port),
    );
    assert_eq!(rig.counter(Counter::FwdOut), fwd + 1);
    let reply = from_server(wan, tcp(443, nat_port, TCP_ACK));
    let (action, back) = rig.run(Role::Wan, &reply.bytes());
    assert_eq!(action, XDP_REDIRECT, "its replies still come back");
    assert_frame("the reply", &back, &reply_to(&reply, &HOST, 40000));

    let out = rig.forwarded("UDP on the down WAN", &datagram);
    assert_eq!(parse(&out).unwrap().src, WAN_ADDRS[1 - wan], "UDP moves");
    let out = rig.forwarded("the retransmitted SYN", &opening);
    assert_eq!(
        parse(&out).unwrap().src,
        WAN_ADDRS[1 - wan],
        "a TCP connection still opening moves"
    );

    // The link goes too (no gateway MAC): the segment is dropped, the connection stays.
    rig.set_wan(wan, |w| w.gateway_mac = [0; 6]);
    let cases = vec![(
        "TCP on a WAN without a gateway MAC",
        data.bytes(),
        XDP_DROP,
        Counter::DropWanLinkDown,
    )];
    rig.check_lan_cases(LO, cases);
    let key = client_key(40000, 443, IPPROTO_TCP);
    assert_eq!(rig.maps.ct_out.get(&key, 0).unwrap().wan_id as usize, wan);

    // Back: the connection carries on where it was.
    rig.set_wan(wan, |w| {
        w.gateway_mac = GW_MACS[wan];
        w.flags = pcc_common::WAN_FLAG_UP;
    });
    let out = rig.forwarded("TCP once the WAN is back", &data);
    assert_frame("same WAN, same port", &out, &out_via(&data, wan, nat_port));

    // Down with another address (a new DHCP lease): it can never send from the old one.
    rig.set_wan(wan, |w| {
        w.flags = 0;
        w.addr = be(Ipv4Addr::new(198, 18, 1, 99));
    });
    rig.passed(
        "TCP on a down WAN that lost its address: forgotten",
        &data,
        Counter::PassTcpNotSyn,
    );
}

#[test]
fn after_the_grace_the_host_gets_a_reset_and_the_connection_is_forgotten() {
    let mut rig = Rig::new(1024);
    let wan = rig.expected_wan(CLIENT, SERVER);
    rig.established(SERVER, 40000, 0x1122_3344);
    let opening = from_client(CLIENT, CLIENT_MAC, segment(40001, TCP_SYN, 0));
    rig.forwarded("a SYN never answered", &opening);
    rig.forwarded("UDP", &from_client(CLIENT, CLIENT_MAC, udp()));
    // A server the hash puts on the other WAN.
    let elsewhere = (20..250)
        .map(|i| Ipv4Addr::new(203, 0, 113, i))
        .find(|&s| rig.expected_wan(CLIENT, s) != wan)
        .expect("a server on the other WAN");
    rig.established(elsewhere, 40002, 5);
    assert_eq!(rig.maps.ct_out.keys().count(), 4);

    rig.set_wan(wan, |w| w.flags = 0);
    let mut sent = Vec::new();
    let done = reset_wan(&mut rig.maps, wan as u8, &mut |ifindex, frame| {
        sent.push((ifindex, frame.to_vec()));
        Ok(())
    });
    assert_eq!(
        done,
        Resets {
            forgotten: 2,
            sent: 1,
            failed: 0
        },
        "both TCP connections forgotten, the established one reset"
    );
    let host = Endpoint {
        mac: CLIENT_MAC,
        addr: CLIENT,
        port: 40000,
    };
    let remote = Endpoint {
        mac: LAN_MAC,
        addr: SERVER,
        port: 443,
    };
    assert_eq!(
        sent,
        vec![(LO, reset_frame(host, remote, 0x1122_3344))],
        "out of the LAN port, to the host, from the server, at the host's RCV.NXT"
    );
    assert_eq!(
        (
            rig.maps.ct_out.keys().count(),
            rig.maps.ct_in.keys().count()
        ),
        (2, 2),
        "UDP and the other WAN's connection stay, both halves"
    );

    // The host's next segment opens nothing; its new SYN opens on the live WAN.
    let data = from_client(CLIENT, CLIENT_MAC, segment(40000, TCP_ACK, 0x1122_3344));
    assert_eq!(rig.run(Role::Lan, &data.bytes()).0, XDP_PASS);
    let syn = from_client(CLIENT, CLIENT_MAC, segment(40000, TCP_SYN, 0));
    let out = rig.forwarded("the host's new SYN", &syn);
    assert_eq!(parse(&out).unwrap().src, WAN_ADDRS[1 - wan]);
}
