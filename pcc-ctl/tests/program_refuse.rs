//! Refused new connections, run in the kernel on crafted frames (BPF_PROG_TEST_RUN): the
//! dataplane answers them with ICMP "communication administratively prohibited" (RFC 5508
//! REQ-8) from the router's LAN address, back out of the LAN port, counted under the reason
//! of the refusal, and no faster than its rate limit. Exact bytes out; needs root.
mod rig;

use std::{net::Ipv4Addr, time::Instant};

use pcc_bench::testbed::*;
use pcc_common::{
    Counter, NatPortRange,
    packet::{Frame, L4},
    proto::TCP_SYN,
    ratelimit::ICMP_ANSWER_BURST,
};
use pcc_ctl::dataplane::Role;
use rig::*;

/// Destination unreachable, communication administratively prohibited (RFC 1812 5.2.7.1).
const ADMIN_PROHIBITED: u8 = 13;

impl Rig {
    /// The NAT hands out one port: a second connection from the same source (so through the
    /// same WAN) to the same server, port and protocol finds none (`nat_ports_exhausted`).
    fn with_one_nat_port() -> Rig {
        let mut rig = Rig::new(1024);
        let mut config = rig.maps.config.get(&0, 0).unwrap();
        config.nat_ports = NatPortRange {
            min: 61000,
            max: 61000,
        };
        rig.maps.config.set(0, config, 0).unwrap();
        rig
    }

    /// Opens a connection from `src` that takes the one NAT port.
    fn take_the_port(&mut self, src: Ipv4Addr, l4: L4) {
        let (action, _) = self.run(Role::Lan, &from_client(src, CLIENT_MAC, l4).bytes());
        assert_eq!(action, XDP_REDIRECT, "the first connection takes the port");
    }
}

/// What `sent` must bring back when its connection is refused.
fn prohibited(sent: &Frame) -> Frame {
    unreachable_from(sent, LAN_ADDR, ADMIN_PROHIBITED, [0; 4])
}

fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp {
        sport,
        dport,
        payload: b"hello".to_vec(),
        checksum: true,
    }
}

#[test]
fn a_connection_refused_for_want_of_a_nat_port_is_answered_prohibited() {
    let mut rig = Rig::with_one_nat_port();
    rig.take_the_port(CLIENT, tcp(2000, 80, TCP_SYN));
    rig.take_the_port(CLIENT, udp(2000, 80));
    rig.take_the_port(CLIENT, echo(8, 6, 1, vec![0x61; 32]));
    let refused = [
        ("a TCP SYN", tcp(2001, 80, TCP_SYN)),
        ("a UDP datagram", udp(2002, 80)),
        ("an echo request", echo(8, 7, 1, vec![0x61; 32])),
    ];
    let mut answered = 0;
    for (what, l4) in refused {
        let sent = from_client(CLIENT, CLIENT_MAC, l4);
        let (action, out) = rig.run(Role::Lan, &sent.bytes());
        assert_eq!(
            action, XDP_REDIRECT,
            "{what}: answered back out of the LAN port"
        );
        assert_frame(what, &out, &prohibited(&sent));
        answered += 1;
        assert_eq!(
            rig.counter(Counter::DropNatPortsExhausted),
            answered,
            "{what}"
        );
        assert_eq!(rig.counter(Counter::IcmpProhibitedSent), answered, "{what}");
    }
    assert_eq!(
        rig.maps.ct_out.keys().count(),
        3,
        "only the first of each opened"
    );

    // The first fragment of a datagram carries its ports and is answered, quoting its own
    // header (MF set) and the first 8 bytes of the UDP header.
    let big = from_client(CLIENT, CLIENT_MAC, udp(2003, 80));
    let big = Frame {
        l4: L4::Udp {
            sport: 2003,
            dport: 80,
            payload: vec![0x5a; 100],
            checksum: true,
        },
        ..big
    };
    let first = big.fragments(48).remove(0);
    let (action, out) = rig.run(Role::Lan, &first);
    assert_eq!(action, XDP_REDIRECT, "a first fragment");
    let mut want = prohibited(&big);
    want.l4 = L4::Icmp {
        kind: 3,
        code: ADMIN_PROHIBITED,
        rest: [0; 4],
        payload: first[14..42].to_vec(),
    };
    assert_frame("a first fragment", &out, &want);
    assert_eq!(rig.counter(Counter::IcmpProhibitedSent), answered + 1);
    assert_eq!(rig.counter(Counter::IcmpProhibitedRateLimited), 0);
}

/// No ICMP error to a source that names no single host (RFC 1812 4.3.2.7): the LAN's network
/// and broadcast addresses pass BCP 38 (they lie in the subnet) but are refused silently.
#[test]
fn a_refusal_from_the_lans_network_or_broadcast_address_is_not_answered() {
    for last in [0, 255] {
        let mut rig = Rig::with_one_nat_port();
        let src = Ipv4Addr::new(198, 19, 10, last);
        rig.take_the_port(src, udp(2000, 80));
        let sent = from_client(src, CLIENT_MAC, udp(2001, 80));
        let cases = vec![(
            "refused, from no single host",
            sent.bytes(),
            XDP_DROP,
            Counter::DropNatPortsExhausted,
        )];
        rig.check_lan_cases(LO, cases);
        assert_eq!(rig.counter(Counter::IcmpProhibitedSent), 0);
    }
}

/// Pins the calling thread to CPU 0: the bucket is per CPU, and a test thread that migrated
/// between runs would draw on two.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only read
    // and write the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "sched_setaffinity"
        );
    }
}

#[test]
fn refusals_beyond_the_burst_are_dropped_unanswered() {
    pin_to_cpu0();
    let mut rig = Rig::with_one_nat_port();
    rig.take_the_port(CLIENT, tcp(2000, 80, TCP_SYN));
    // 1000 a second refill: the runs must outpace that for the limit to show.
    let n = 20 * ICMP_ANSWER_BURST as usize;
    let started = Instant::now();
    let mut actions = Vec::with_capacity(n);
    for i in 0..n {
        let sent = from_client(CLIENT, CLIENT_MAC, tcp(3000 + i as u16, 80, TCP_SYN));
        actions.push(rig.run(Role::Lan, &sent.bytes()).0);
    }
    let elapsed_ms = started.elapsed().as_millis() as usize;
    let answered = actions.iter().filter(|&&a| a == XDP_REDIRECT).count();
    let burst = ICMP_ANSWER_BURST as usize;
    assert!(
        actions[..burst].iter().all(|&a| a == XDP_REDIRECT),
        "the first {burst} are answered: {actions:?}"
    );
    // One more an elapsed millisecond (1000 a second), and never more.
    assert!(
        answered <= burst + elapsed_ms + 1,
        "{answered} answered in {elapsed_ms} ms"
    );
    assert!(
        actions.iter().all(|&a| a == XDP_REDIRECT || a == XDP_DROP),
        "{actions:?}"
    );
    assert!(answered < n, "some went unanswered in {elapsed_ms} ms");
    assert_eq!(rig.counter(Counter::DropNatPortsExhausted), n as u64);
    assert_eq!(rig.counter(Counter::IcmpProhibitedSent), answered as u64);
    assert_eq!(
        rig.counter(Counter::IcmpProhibitedRateLimited),
        (n - answered) as u64
    );
}
