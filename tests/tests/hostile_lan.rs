//! Hostile frames from the LAN on the wire (scapy on the switch port facing the router, so
//! no bridge between sanitises them): each kind ends in its own `reason` counter, and nothing
//! of it leaves a WAN with a LAN source address, while pcc keeps serving the LAN.

use std::collections::BTreeMap;

use pcc_tests::{Lab, require_root};

/// Sends each kind of bad frame 5 times; argv: interface, router MAC, client address, server.
const HOSTILE_PY: &str = r#"
import sys
from scapy.all import Ether, Dot1Q, IP, IPv6, UDP, TCP, Raw, IPOption_NOP, IPOption_EOL, sendp, conf
conf.verb = 0
iface, mac, me, srv = sys.argv[1:5]
eth = Ether(dst=mac)
# Raw payloads need the IPv4 EtherType spelled out (scapy cannot infer it from bytes).
eth4 = Ether(dst=mac, type=0x0800)
ip = lambda **kw: IP(src=me, dst=srv, **kw)
udp = UDP(sport=7777, dport=7) / Raw(b"x" * 32)
frames = {
    "runt": [eth4 / Raw(b"\x45\x00\x00")],  # IPv4 EtherType, 3 bytes of header
    "bad_ip_header": [
        eth4 / Raw(bytes(ip(ihl=4) / udp)),
        eth4 / Raw(bytes(ip(version=6) / udp)),
        eth4 / Raw(bytes(ip(len=2000) / udp)),
    ],
    "bad_transport_header": [
        eth / ip() / TCP(sport=7777, dport=80, dataofs=3),
        eth / ip() / UDP(sport=7777, dport=7, len=4) / Raw(b"abcd"),
        eth / ip() / UDP(sport=7777, dport=7, len=900) / Raw(b"abcd"),
    ],
    "ip_options": [eth / ip(options=[IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_EOL()]) / udp],
    "ttl_expired": [eth / ip(ttl=1) / udp, eth / ip(ttl=0) / udp],
    "local": [eth / IP(src=me, dst="255.255.255.255") / udp, eth / IP(src=me, dst="224.0.0.251") / udp],
    "spoofed_source": [eth / IP(src="203.0.113.77", dst=srv) / udp],
    "not_ipv4": [eth / Dot1Q(vlan=10) / ip() / udp, eth / IPv6(dst="2001:db8::1") / udp],
    "fragment_untracked": [eth / ip(id=4242, frag=185, flags=0) / Raw(b"y" * 64)],
}
for reason, fs in frames.items():
    for f in fs:
        sendp(f, iface=iface, count=5, inter=0.01)
print(" ".join(f"{r}={5 * len(fs)}" for r, fs in frames.items()))
"#;

#[test]
fn hostile_lan_frames_are_counted_by_reason_and_never_leak() {
    require_root!();
    let lab = Lab::builder()
        .ip_forward(true)
        .build()
        .expect("building the lab");
    lab.start_udp_echo().expect("UDP echo server");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    let before = pcc.metrics().expect("metrics");
    let script = lab.dir().join("hostile.py");
    std::fs::write(&script, HOSTILE_PY).unwrap();
    let mac = lab.mac("router", "lan0").unwrap();
    let sent = lab
        .run(
            "switch",
            &[
                pcc_tests::services_python(),
                &script.to_string_lossy(),
                "p-lan",
                &mac,
                &lab.client_addr(1).to_string(),
                &lab.server_addr(0).to_string(),
            ],
        )
        .expect("sending with scapy");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = pcc.metrics().expect("metrics");
    let sent: BTreeMap<&str, f64> = sent
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect();
    assert_eq!(sent.len(), 9, "{sent:?}");
    eprintln!(
        "counted before {:?}\nafter {:?}",
        before.by_label("pcc_packets_total", "reason"),
        after.by_label("pcc_packets_total", "reason")
    );
    for (reason, n) in &sent {
        let got = after
            .get("pcc_packets_total", &[("reason", reason)])
            .unwrap_or(0.0)
            - before
                .get("pcc_packets_total", &[("reason", reason)])
                .unwrap_or(0.0);
        // `local` and `not_ipv4` also count what the hosts themselves send meanwhile (ARP,
        // IPv6 neighbour discovery is off); everything else is exactly ours.
        if matches!(*reason, "local" | "not_ipv4") {
            assert!(got >= *n, "{reason}: {got} counted, {n} sent");
        } else {
            assert_eq!(got, *n, "{reason}: counted vs sent");
        }
    }
    for i in 0..2 {
        let (p, _) = lab.lan_source_packets(i).unwrap();
        assert_eq!(p, 0, "isp{i} saw {p} packets with a LAN source");
    }
    lab.udp_probe("c1", lab.server_addr(0), 7, 7778, 3)
        .expect("pcc still serves the LAN");
}
